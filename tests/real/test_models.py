"""Model loading: tiny configs, local folders, random init, offline names, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from svfcheck.real import model_cache as MC
from svfcheck.real import models as M
from svfcheck.real.models import (
    OFFLINE_MODELS,
    TINY_ARCHITECTURES,
    LoadedModel,
    ModelLoadError,
    load_model,
    tiny_config,
    tiny_random_model,
)

CAUSAL = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma3_text")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(M._locate_minilm()))


def _save_tiny(folder: Path, arch: str, tokenizer, seed: int = 0, poison: str | None = None) -> Path:
    """Write a tiny model of ``arch`` (vocab = the tokenizer's) and the tokenizer to ``folder``."""
    model = tiny_random_model(arch, seed, vocab_size=len(tokenizer))
    if poison is not None:
        with torch.no_grad():
            dict(model.named_parameters())[poison].view(-1)[3] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- tiny configs


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_config_builds_a_working_eager_model(arch):
    cfg = tiny_config(arch)
    assert cfg.model_type == arch
    model = tiny_random_model(arch, seed=0)
    assert not model.training
    ids = torch.randint(0, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    assert len(out.attentions) == n_layers
    assert out.attentions[0].shape == (1, n_heads, 9, 9)
    rows = out.attentions[-1].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    if arch != "bert":  # causal: nothing attends to the future
        assert float(torch.triu(out.attentions[0][0, 0], diagonal=1).abs().max()) == 0.0


def test_tiny_config_features():
    assert tiny_config("gpt_neox").rope_parameters["partial_rotary_factor"] == 0.25  # rotary_pct
    llama = tiny_config("llama")
    assert llama.num_key_value_heads < llama.num_attention_heads  # GQA
    gemma = tiny_config("gemma3_text")
    assert gemma.query_pre_attn_scalar != gemma.head_dim
    assert set(gemma.layer_types) == {"sliding_attention", "full_attention"}
    assert tiny_config("gpt2", n_layer=12, n_head=12, n_embd=48).n_layer == 12
    with pytest.raises(ValueError, match="unknown tiny architecture 'mamba'"):
        tiny_config("mamba")


def test_tiny_random_model_is_seeded():
    a, b, c = (tiny_random_model("llama", s) for s in (3, 3, 4))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


# --------------------------------------------------------------------------- local folders


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "bert"])
def test_local_folder_loads_trained_weights(tmp_path, arch, minilm_tokenizer):
    folder = _save_tiny(tmp_path / arch, arch, minilm_tokenizer, seed=5)
    saved = tiny_random_model(arch, 5, vocab_size=len(minilm_tokenizer)).state_dict()
    lm = load_model(str(folder), progress=False)
    assert isinstance(lm, LoadedModel)
    assert (lm.source, lm.architecture, lm.random_init, lm.seed) == ("local", arch, False, None)
    assert not lm.model.training
    assert lm.model.config._attn_implementation == "eager"
    expected_class = "BertModel" if arch == "bert" else {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}[arch]
    assert type(lm.model).__name__ == expected_class
    got = lm.model.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert len(lm.tokenizer) == len(minilm_tokenizer)


def test_random_init_same_config_seeded_weights(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "m", "llama", minilm_tokenizer, seed=0)
    trained = load_model(str(folder), progress=False)
    r1 = load_model(str(folder), random_init=True, seed=7, progress=False)
    r2 = load_model(str(folder), random_init=True, seed=7, progress=False)
    r3 = load_model(str(folder), random_init=True, seed=8, progress=False)
    assert (r1.random_init, r1.seed, r1.architecture) == (True, 7, "llama")
    assert r1.model.config.to_dict() == trained.model.config.to_dict()
    assert type(r1.model) is type(trained.model)
    w = lambda lm: lm.model.model.layers[1].self_attn.k_proj.weight
    assert torch.equal(w(r1), w(r2))
    assert not torch.equal(w(r1), w(r3))
    assert not torch.equal(w(r1), w(trained))
    assert r1.model.config._attn_implementation == "eager" and not r1.model.training
    assert r1.tokenizer("Then, Simon")["input_ids"] == trained.tokenizer("Then, Simon")["input_ids"]


def test_dtype_is_honoured(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "m", "gpt2", minilm_tokenizer)
    lm = load_model(str(folder), dtype=torch.float64, progress=False)
    assert {p.dtype for p in lm.model.parameters()} == {torch.float64}


# --------------------------------------------------------------------------- bad input


def test_nan_weights_name_the_parameter(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "bad", "gpt2", minilm_tokenizer, poison="transformer.h.1.attn.c_attn.weight")
    with pytest.raises(ModelLoadError, match=r"NaN/inf.*transformer\.h\.1\.attn\.c_attn\.weight"):
        load_model(str(folder), progress=False)


def test_nonexistent_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such" / "model"), progress=False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no-such-model-folder", progress=False)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"), progress=False)


def test_weights_file_instead_of_folder_says_it_is_a_file(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "m", "gpt2", minilm_tokenizer)
    weights = folder / "model.safetensors"
    with pytest.raises(ModelLoadError) as err:
        load_model(str(weights), progress=False)
    msg = str(err.value)
    assert f"{str(weights)!r} is a file, not a model folder" in msg
    assert "save_pretrained" in msg and f"perhaps {str(folder)!r}" in msg
    assert "does not exist" not in msg


def test_gguf_file_instead_of_folder_says_how_to_convert(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"is a file, not a model folder.*convert_gguf\(gguf_path, folder\)"):
        load_model(str(gguf), progress=False)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_folder_without_tokenizer_files_is_an_error_at_load(tmp_path, arch):
    folder = tmp_path / arch
    tiny_random_model(arch, 0).save_pretrained(folder)  # config.json + weights, no tokenizer
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), progress=False)
    msg = str(err.value)
    assert f"no usable tokenizer in {str(folder)!r}" in msg
    assert "holds no tokenizer files (missing: tokenizer.json, tokenizer_config.json, vocab.json" in msg


def test_folder_with_tokenizer_config_but_no_vocabulary(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "m", "bert", minilm_tokenizer)
    for f in ("tokenizer.json", "vocab.txt"):
        (folder / f).unlink(missing_ok=True)
    assert (folder / "tokenizer_config.json").is_file()
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), progress=False)
    msg = str(err.value)
    assert f"no usable tokenizer in {str(folder)!r}" in msg
    assert "holds tokenizer_config.json (missing: tokenizer.json, vocab.json" in msg


@pytest.mark.parametrize("content,expected", [("{not json", "not a readable JSON file"),
                                              ("[1, 2]", "holds a JSON list")])
def test_bad_config_json_names_the_file(tmp_path, minilm_tokenizer, content, expected):
    folder = _save_tiny(tmp_path / "m", "gpt2", minilm_tokenizer)
    (folder / "config.json").write_text(content)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(folder), progress=False)
    msg = str(err.value)
    assert msg.startswith(str(folder / "config.json")) and expected in msg


def test_revision_for_local_folder_or_offline_name_is_an_error(tmp_path, minilm_tokenizer):
    folder = _save_tiny(tmp_path / "m", "gpt2", minilm_tokenizer)
    with pytest.raises(ModelLoadError, match="revision='step1'.*local folder"):
        load_model(str(folder), revision="step1", progress=False)
    with pytest.raises(ModelLoadError, match="revision='step1'.*offline model 'minilm-l6'"):
        load_model("minilm-l6", revision="step1", progress=False)


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M", "minilm", "gemma3-270"])
def test_unknown_offline_looking_name_lists_offline_names(name):
    with pytest.raises(ModelLoadError) as err:
        load_model(name, progress=False)
    msg = str(err.value)
    assert f"unknown model name {name!r}" in msg
    for offline in OFFLINE_MODELS:
        assert offline in msg


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Force offline mode with an empty (or test-populated) hub cache at tmp_path/hub."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name,revision", [("gpt2", None), ("EleutherAI/pythia-160m", "step1000")])
def test_unreachable_hub_says_how_to_get_the_model(offline_hub, name, revision):
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model(name, revision=revision, progress=False)
    msg = str(err.value)
    assert f"could not load {name!r}" in msg
    assert "download it on a machine with network access" in msg
    assert "local folder" in msg
    for offline in OFFLINE_MODELS:
        assert offline in msg
    if revision:
        assert f"--revision {revision}" in msg
    assert time.perf_counter() - t0 < 20, "offline failure must not wait for network retries"


def _fake_hub_repo(cache: Path, repo: str, src: Path, commit: str = "a" * 40) -> None:
    """Lay out ``src``'s files as the hub cache entry of ``repo`` at revision main."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)


def test_hub_id_path_and_missing_revision(offline_hub, tmp_path, minilm_tokenizer):
    src = _save_tiny(tmp_path / "src", "gpt_neox", minilm_tokenizer, seed=2)
    _fake_hub_repo(offline_hub, "svfcheck-test/tiny-neox", src)
    lm = load_model("svfcheck-test/tiny-neox", progress=False)
    assert (lm.source, lm.architecture, lm.path) == ("hub", "gpt_neox", None)
    with pytest.raises(ModelLoadError, match=r"revision 'step999' of 'svfcheck-test/tiny-neox' does not exist"):
        load_model("svfcheck-test/tiny-neox", revision="step999", progress=False)


# --------------------------------------------------------------------------- offline models


@pytest.mark.gpu
def test_minilm_loads_trained_sentence_encoder():
    t0 = time.perf_counter()
    lm = load_model("minilm-l6", progress=False)
    elapsed = time.perf_counter() - t0
    assert (lm.source, lm.architecture) == ("offline-package", "bert")
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (6, 12, 384)
    assert type(lm.model).__name__ == "BertModel"

    def embed(text):
        enc = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h = lm.model(**enc).last_hidden_state[0]
        return torch.nn.functional.normalize(h.mean(0), dim=0)

    same = float(embed("A man is eating food.") @ embed("A man is eating a meal."))
    other = float(embed("A man is eating food.") @ embed("The stock market fell sharply today."))
    print(f"minilm-l6 load {elapsed:.2f} s; cos(similar)={same:.3f} cos(unrelated)={other:.3f}")
    assert same > 0.8 > other + 0.3
    r = load_model("minilm-l6", random_init=True, seed=0, progress=False)
    assert r.model.config.to_dict() == lm.model.config.to_dict()
    assert not torch.equal(r.model.encoder.layer[0].attention.self.query.weight,
                           lm.model.encoder.layer[0].attention.self.query.weight)


@pytest.mark.gpu
def test_smollm2_gguf_conversion_cached_and_exact(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SVFCHECK_CACHE", str(tmp_path / "cache"))
    target = M.converted_folder("smollm2-135m")
    assert str(target).startswith(str(tmp_path / "cache"))
    assert not target.exists()

    # Two processes use the model for the first time concurrently: one converts, the other
    # waits on the lock and loads the finished folder (transformers loading is not thread-safe,
    # so this is tested across processes, which is what a shared cache sees).
    script = (
        "import time, sys; t = time.perf_counter(); "
        "from svfcheck.real.models import load_model; "
        "lm = load_model('smollm2-135m', progress=True); "
        "print('SECONDS', time.perf_counter() - t)"
    )
    env = dict(os.environ, SVFCHECK_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(k)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    first_loads = [float(out.split("SECONDS")[-1]) for out, _ in outs]
    logs = "".join(o + e for o, e in outs)
    assert logs.count("svfcheck: converted SmolLM2-135M-Instruct.Q4_1.gguf") == 1, logs[-3000:]
    marker = target / "svfcheck-conversion.json"
    info = json.loads(marker.read_text())
    leftovers = [p.name for p in target.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    mtime = marker.stat().st_mtime

    t0 = time.perf_counter()
    lm = load_model("smollm2-135m", progress=False)
    cached = time.perf_counter() - t0
    print(f"smollm2-135m conversion {info['seconds']:.1f} s (first-use processes {first_loads[0]:.1f} s, "
          f"{first_loads[1]:.1f} s incl. imports); cached load {cached:.2f} s")
    assert marker.stat().st_mtime == mtime, "second load must not reconvert"
    # no absolute timing assertion: 2 shared cores make wall times vary 10x
    assert (lm.source, lm.architecture) == ("offline-package", "llama")
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)

    enc = lm.tokenizer("The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**enc).logits[0, -1]
    assert lm.tokenizer.decode([int(logits.argmax())]) == " Berlin"

    gguf = M._locate_smollm2()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref_logits = ref(**enc).logits[0, -1]
    err = float((logits - ref_logits).abs().max())
    print(f"max |logit(converted) - logit(GGUF)| = {err:.2e}")
    assert err < 1e-3


@pytest.mark.gpu
def test_gemma3_loads_and_knows_berlin():
    lm = load_model("gemma3-270m")
    assert lm.architecture == "gemma3_text"
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (18, 4, 1)
    enc = lm.tokenizer("The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        top = lm.model(**enc).logits[0, -1].topk(3).indices.tolist()
    words = [lm.tokenizer.decode([t]) for t in top]
    print("gemma3-270m top-3 after 'The capital of Germany is':", words)
    assert " Berlin" in words  # measured: [' the', ' a', ' Berlin'] (GGUF model gives the same)
    # SentencePiece tokenizer with <bos>: the paper prompt's IOI positions, hand-counted
    from svfcheck.tasks.ioi import paper_pythia_prompt

    p = paper_pythia_prompt(lm.tokenizer)
    toks = lm.tokenizer.convert_ids_to_tokens(list(p.token_ids))
    assert toks[:6] == ["<bos>", "Then", ",", "▁Simon", "▁and", "▁Andrew"] and toks[12] == "▁Simon"
    assert p.positions == {"S1": 3, "S1+1": 4, "IO": 5, "S2": 12, "END": 18}
    assert p.answer_token_id == lm.tokenizer.convert_tokens_to_ids("▁Andrew")


# --------------------------------------------------------------------------- conversion cache


def test_finished_conversion_is_reused_and_stale_one_detected(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf file")
    target = tmp_path / "cache" / "converted" / "m-v1"
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
    MC._write_marker(target, gguf)
    # current: returned at once (converting this fake file would raise)
    assert M.convert_gguf(gguf, target, progress=False) == target
    assert MC._conversion_current(target, gguf)
    gguf.write_bytes(b"a different, longer file: the package was upgraded")
    assert not MC._conversion_current(target, gguf)


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF but truncated")
    target = tmp_path / "cache" / "converted" / "broken-v1"
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        M.convert_gguf(gguf, target, progress=False)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []
