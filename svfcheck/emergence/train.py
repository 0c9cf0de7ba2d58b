"""Train tiny transformers from scratch on CPU, with Pythia-like checkpoint schedules.

Presets (:func:`preset`):

- ``induction-gpt2`` — a 2-layer, 4-head ``GPT2LMHeadModel`` (d=128, d_h=32, MLP 512, learned
  absolute positions, context 25, vocab 33) on :class:`~svfcheck.emergence.tasks.InductionTask`
  (32 symbols, blocks of 4–12 distinct tokens, loss on the scored second-copy targets only
  **(choice**: the other positions are pure noise and only slow the circuit down)), 1000 steps
  of batch 64, AdamW lr 3e-3 (warmup 50, cosine to 3e-4). Held-out accuracy on the repeated
  half goes from ≤ chance (1/33) at step 0 through 0.5 at step ≈125 to ≈0.99 at step 1000,
  and layer-0 heads acquire induction-pattern scores ≈0.45 (≈0.09 at step 0). Caveat
  (measured): this is *not* the textbook circuit — no previous-token head forms; the layer-0
  heads read tokens at position-dependent offsets and the MLPs finish the job (accuracy drops
  to ≈0.7 when a random prefix or gap is inserted). ``InductionTask(max_prefix=.., max_gap=..)``
  defeats that shortcut, but in the runs we could afford it learned too slowly (prefix 0–8 +
  gap 0–12, 48 symbols: accuracy ≈0.43 at step 900, ≈0.32 with sinusoidal position init
  ``ModelSpec.pos_init_std=0.02``; no head with induction score > 0.25 yet) — longer training
  is future work.
- ``induction-llama`` — the classic circuit: a 2-layer, 4-head ``LlamaForCausalLM`` with RoPE
  (d=64, d_h=16, SwiGLU 256, no GQA) on the shortcut-proof induction task (48 symbols, blocks
  of 4–12 tokens after a random prefix of 0–8 tokens and with a random gap of 0–12 tokens,
  context 45), 1000 steps of batch 64, lr 3e-3, loss on the repeated half only. Measured
  (seed 0): accuracy 0 at step 0, ≥ 0.5 by step 450, 0.99 by step 512, 1.0 at step 1000; at the
  end a layer-0 previous-token head (score ≈0.71) and layer-1 induction heads (scores ≈0.97,
  0.96, 0.85) — the previous-token → induction (K-composition) circuit. Relative positions
  (RoPE) are what make it form quickly where learned absolute positions did not. ≈70 s CPU.
- ``text-llama`` — a 2-layer ``LlamaForCausalLM`` with RoPE and GQA (4 query heads, 2 kv heads,
  d=64, d_h=16, SwiGLU 192, context 128, vocab 259) on the byte-level offline corpus
  (:mod:`svfcheck.emergence.corpus`), 500 steps of batch 32, lr 3e-3: held-out loss falls from
  ln 259 ≈ 5.5 to ≈ 1.55 nats/byte.

:func:`train_run` writes ``out_dir/step{N}/`` (``save_pretrained`` model + tokenizer, loadable
with ``AutoModelForCausalLM``/``AutoTokenizer`` and by ``svfcheck.real.models.load_model``) at
every step of :meth:`TrainConfig.schedule` — step 0 is the initialisation, dense and
log-spaced early (1, 2, 4, …) then every ``checkpoint_every`` steps — and ``out_dir/run.json``
(config, training curve, checkpoint list, summary). Checkpoint ``N`` holds the weights after
``N`` optimizer updates.

Determinism and resumption: the initial weights come from ``torch.manual_seed(seed)``, every
batch is a function of ``(seed, step)``, dropout is off and the learning rate is a function of
the step, so a run is a pure function of its config (on one machine/thread count). After each
checkpoint, ``out_dir/resume.safetensors`` (weights and AdamW state as tensors; config, step,
curve so far and the optimizer's hyper-parameters as JSON in the header) is replaced atomically;
a rerun continues from it and produces the same checkpoints and ``run.json`` as an
uninterrupted run. No global RNG state is saved because training draws none (verified: the
torch generator is untouched by a training step of every preset). The resume file is never a
pickle: an old ``resume.pt`` (pickle format) is refused, never loaded, since unpickling a
planted file runs arbitrary code. A finished run (``run.json`` with ``"finished": true``) is
never recomputed. Wall-clock timings go to ``out_dir/timing.json`` (not to ``run.json``, which must be
reproducible).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .corpus import byte_tokenizer, char_tokenizer, load_corpus
from .tasks import InductionTask, TextTask, evaluate_induction, evaluate_lm_loss

__all__ = [
    "ModelSpec",
    "TrainConfig",
    "RunResult",
    "PRESETS",
    "preset",
    "build_model",
    "build_tokenizer",
    "train_run",
    "load_run",
    "lr_at",
    "RUN_FORMAT",
]

RUN_FORMAT = "svfcheck-run/1"
RESUME_FILE = "resume.safetensors"
LEGACY_RESUME_FILE = "resume.pt"
RESUME_FORMAT = 1  # layout of the JSON under RESUME_KEY in the resume file's header
RESUME_KEY = "svfcheck_resume"
JUMP_THRESHOLD = 0.5  # induction accuracy marking "induction has formed" (chance ≈ 1/65)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pos_int(name: str, x) -> None:
    if not _is_int(x) or x < 1:
        raise ValueError(f"{name} must be a positive int, got {x!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the trained model. ``arch``: ``gpt2`` or ``llama``;
    ``n_kv_heads`` (llama only) < ``n_heads`` gives GQA. ``pos_init_std`` (gpt2 only): initialise
    the learned position embeddings with sinusoids (Vaswani et al.) scaled to this standard
    deviation instead of GPT-2's N(0, 0.02) (they stay trainable); None keeps GPT-2's init."""

    arch: str = "gpt2"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    n_kv_heads: int | None = None
    rope_theta: float = 10000.0
    pos_init_std: float | None = None

    def __post_init__(self):
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"ModelSpec.arch must be 'gpt2' or 'llama', got {self.arch!r}")
        if self.pos_init_std is not None:
            if self.arch != "gpt2":
                raise ValueError("ModelSpec.pos_init_std applies to arch='gpt2' (learned positions) only")
            if not (isinstance(self.pos_init_std, (int, float)) and self.pos_init_std > 0):
                raise ValueError(f"ModelSpec.pos_init_std must be > 0 or None, got {self.pos_init_std!r}")
        for f in ("d_model", "n_layers", "n_heads", "d_ff"):
            _pos_int(f"ModelSpec.{f}", getattr(self, f))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelSpec.d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.arch == "gpt2" and self.n_kv_heads is not None:
            raise ValueError("ModelSpec.n_kv_heads is only supported for arch='llama' (GPT-2 has no GQA)")
        if self.n_kv_heads is not None:
            _pos_int("ModelSpec.n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"ModelSpec.n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}"
                )
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ValueError(f"ModelSpec.rope_theta must be > 0, got {self.rope_theta!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``checkpoint_steps`` empty → the default schedule (see
    :meth:`schedule`); otherwise the explicit list (must contain 0 and ``max_steps``)."""

    preset: str
    model: ModelSpec
    task: InductionTask | TextTask
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    log_every: int = 25
    eval_size: int = 256
    checkpoint_every: int = 100
    checkpoint_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.model, ModelSpec):
            raise ValueError(f"TrainConfig.model must be a ModelSpec, got {type(self.model).__name__}")
        if not isinstance(self.task, (InductionTask, TextTask)):
            raise ValueError(
                f"TrainConfig.task must be an InductionTask or TextTask, got {type(self.task).__name__}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be a non-negative int, got {self.seed!r}")
        for f in ("max_steps", "batch_size", "log_every", "eval_size", "checkpoint_every"):
            _pos_int(f"TrainConfig.{f}", getattr(self, f))
        if not _is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"TrainConfig.warmup_steps must be an int in [0, max_steps={self.max_steps}], "
                f"got {self.warmup_steps!r}"
            )
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"TrainConfig.lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for f in ("beta1", "beta2"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"TrainConfig.{f} must be in [0, 1), got {v!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be > 0, got {self.grad_clip!r}")
        cs = tuple(self.checkpoint_steps)
        object.__setattr__(self, "checkpoint_steps", cs)
        if cs:
            if any(not _is_int(s) for s in cs):
                raise ValueError(f"TrainConfig.checkpoint_steps must be ints, got {cs!r}")
            if list(cs) != sorted(set(cs)):
                raise ValueError(f"TrainConfig.checkpoint_steps must be strictly increasing, got {cs!r}")
            if cs[0] != 0 or cs[-1] != self.max_steps:
                raise ValueError(
                    "TrainConfig.checkpoint_steps must start at 0 (the initialisation) and end at "
                    f"max_steps={self.max_steps}, got {cs!r}"
                )

    def schedule(self) -> tuple[int, ...]:
        """Checkpoint steps: 0, powers of two (Pythia-like dense early part), every
        ``checkpoint_every`` steps, and ``max_steps``."""
        if self.checkpoint_steps:
            return self.checkpoint_steps
        s = {0, self.max_steps}
        p = 1
        while p < self.max_steps:
            s.add(p)
            p *= 2
        s.update(range(self.checkpoint_every, self.max_steps, self.checkpoint_every))
        return tuple(sorted(s))

    def log_steps(self) -> tuple[int, ...]:
        """Steps with a curve entry: every ``log_every`` steps plus every checkpoint."""
        s = set(range(0, self.max_steps + 1, self.log_every)) | set(self.schedule())
        return tuple(sorted(s))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["task"]["kind"] = self.task.kind
        d["checkpoint_steps"] = list(self.checkpoint_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        task = dict(d.pop("task"))
        kind = task.pop("kind", None)
        task_cls = {"induction": InductionTask, "text": TextTask}.get(kind)
        if task_cls is None:
            raise ValueError(f"unknown task kind {kind!r} in run config")
        model = ModelSpec(**d.pop("model"))
        d["checkpoint_steps"] = tuple(d.get("checkpoint_steps", ()))
        return cls(model=model, task=task_cls(**task), **d)


PRESETS: dict[str, TrainConfig] = {
    "induction-gpt2": TrainConfig(
        preset="induction-gpt2",
        model=ModelSpec(arch="gpt2", d_model=128, n_layers=2, n_heads=4, d_ff=512),
        task=InductionTask(n_symbols=32, min_len=4, max_len=12, loss_on_repeat_only=True),
        max_steps=1000,
        batch_size=64,
        lr=3e-3,
        warmup_steps=50,
        log_every=25,
        eval_size=256,
        checkpoint_every=100,
    ),
    "induction-llama": TrainConfig(
        preset="induction-llama",
        model=ModelSpec(arch="llama", d_model=64, n_layers=2, n_heads=4, d_ff=256),
        task=InductionTask(n_symbols=48, min_len=4, max_len=12, max_prefix=8, max_gap=12, loss_on_repeat_only=True),
        max_steps=1000,
        batch_size=64,
        lr=3e-3,
        warmup_steps=50,
        log_every=50,
        eval_size=256,
        checkpoint_every=100,
    ),
    "text-llama": TrainConfig(
        preset="text-llama",
        model=ModelSpec(arch="llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
        task=TextTask(context_length=128),
        max_steps=500,
        batch_size=32,
        lr=3e-3,
        warmup_steps=50,
        log_every=25,
        eval_size=64,
        checkpoint_every=100,
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A named preset (``induction-gpt2``, ``induction-llama``, ``text-llama``) with fields replaced by
    ``overrides`` (e.g. ``max_steps=200``, ``seed=1``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio·lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def sinusoids(n_positions: int, dim: int, std: float) -> torch.Tensor:
    """Sinusoidal position table (n_positions, dim) rescaled to standard deviation ``std``."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    t = torch.zeros(n_positions, dim, dtype=torch.float64)
    t[:, 0::2] = torch.sin(pos * freq)
    t[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return (t / t.std() * std).float()


def build_tokenizer(cfg: TrainConfig):
    if isinstance(cfg.task, InductionTask):
        return char_tokenizer(cfg.task.n_symbols)
    return byte_tokenizer()


def build_model(cfg: TrainConfig):
    """A freshly initialised model for ``cfg`` (initialised under ``torch.manual_seed(cfg.seed)``)."""
    m, t = cfg.model, cfg.task
    torch.manual_seed(cfg.seed)
    if m.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(
            vocab_size=t.vocab_size,
            n_positions=t.context_length,
            n_embd=m.d_model,
            n_layer=m.n_layers,
            n_head=m.n_heads,
            n_inner=m.d_ff,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = GPT2LMHeadModel(conf)
        if m.pos_init_std is not None:
            with torch.no_grad():
                model.transformer.wpe.weight.copy_(sinusoids(t.context_length, m.d_model, m.pos_init_std))
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.d_ff,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_kv_heads or m.n_heads,
        max_position_embeddings=t.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(conf)


@dataclass
class RunResult:
    """Outcome of :func:`train_run` / :func:`load_run`. ``curve``: one dict per logged step
    (``step``, ``lr``, ``train_loss`` (mean over the updates since the previous entry; None at
    step 0), ``eval_loss``, and for induction ``induction_accuracy``). ``skipped``: the run was
    already finished and nothing was computed."""

    out_dir: Path
    config: TrainConfig
    curve: list[dict]
    checkpoints: list[int]
    finished: bool
    summary: dict = field(default_factory=dict)
    skipped: bool = False
    resumed_from: int | None = None
    wall_time_s: float = 0.0

    def checkpoint_dir(self, step: int) -> Path:
        if step not in self.checkpoints:
            raise ValueError(f"no checkpoint at step {step}; have {self.checkpoints}")
        return self.out_dir / f"step{step}"

    def series(self):
        from .series import CheckpointSeries

        return CheckpointSeries.from_run(self.out_dir)


def _json_dump_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _eval(model, cfg: TrainConfig, device, held_out) -> dict:
    if isinstance(cfg.task, InductionTask):
        r = evaluate_induction(model, held_out, device)
        return {"eval_loss": r["loss"], "induction_accuracy": r["accuracy"]}
    return {"eval_loss": evaluate_lm_loss(model, held_out, device)}


def _summary(cfg: TrainConfig, curve: list[dict]) -> dict:
    last = curve[-1]
    s: dict[str, Any] = {"final_step": last["step"], "final_eval_loss": last["eval_loss"]}
    if isinstance(cfg.task, InductionTask):
        s["initial_induction_accuracy"] = curve[0]["induction_accuracy"]
        s["final_induction_accuracy"] = last["induction_accuracy"]
        s["chance_accuracy"] = 1.0 / cfg.task.vocab_size
        jump = next((e["step"] for e in curve if e["induction_accuracy"] >= JUMP_THRESHOLD), None)
        s["induction_jump_step"] = jump
        s["induction_jump_threshold"] = JUMP_THRESHOLD
    else:
        s["initial_eval_loss"] = curve[0]["eval_loss"]
    return s


_RUN_JSON_ADVICE = "delete it and rerun the training to rebuild it, or choose another output folder (--out)"


def _read_json(path: Path, advice: str) -> dict:
    """The JSON object in ``path``; a damaged file (truncated, not JSON, not an object) is a
    ``ValueError`` naming the file and what to do (``advice``), not a raw decoder traceback."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); {advice}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); {advice}")
    return d


def load_run(out_dir) -> RunResult:
    """Read a run folder's ``run.json`` (finished or not)."""
    out = Path(out_dir)
    p = out / "run.json"
    if not p.is_file():
        raise ValueError(f"{out} holds no run.json — not an svfcheck training run (or not started)")
    d = _read_json(p, _RUN_JSON_ADVICE)
    if d.get("format") != RUN_FORMAT:
        raise ValueError(f"{p} has format {d.get('format')!r}, expected {RUN_FORMAT!r}")
    try:
        return RunResult(
            out_dir=out,
            config=TrainConfig.from_dict(d["config"]),
            curve=list(d["curve"]),
            checkpoints=list(d["checkpoints"]),
            finished=bool(d["finished"]),
            summary=d.get("summary", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p} is damaged ({type(exc).__name__}: {exc}); {_RUN_JSON_ADVICE}") from None


_RESUME_ADVICE = "delete it to restart the run from step 0, or choose another output folder (--out)"
_TIMING_ADVICE = "delete it (it only records wall-clock times) or choose another output folder (--out)"


def _save_resume(path: Path, state: dict, model, opt) -> None:
    """Write the resume file atomically: model weights (``model.<name>``) and AdamW state
    (``optim.<param index>.<field>``) as safetensors tensors; ``state`` (config, step, curve, …),
    the optimizer's param_groups and the state field names as JSON in the header metadata."""
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    fields = {}
    for i, st in sd["state"].items():
        fields[str(i)] = sorted(st)
        for f, v in st.items():
            if not isinstance(v, torch.Tensor):  # AdamW keeps tensors only
                raise TypeError(f"optimizer state {i}.{f} is a {type(v).__name__}, not a tensor")
            tensors[f"optim.{i}.{f}"] = v.detach().cpu().clone()
    meta = {"format": RESUME_FORMAT, **state, "param_groups": sd["param_groups"], "optim_state": fields}
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={RESUME_KEY: json.dumps(meta)})
    os.replace(tmp, path)


def _load_resume(path: Path, cfg_dict: dict, model, opt) -> dict:
    """Restore ``model`` and ``opt`` from the resume file at ``path`` and return its JSON state
    (``step``, ``curve``, ``checkpoints``, ``pending``). A damaged file is a ``ValueError``
    naming it; a file of another config is refused."""
    from safetensors import SafetensorError, safe_open

    def damaged(why: str) -> ValueError:
        return ValueError(f"{path} is damaged or not an svfcheck resume file ({why}); {_RESUME_ADVICE}")

    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(RESUME_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    if header is None:
        raise damaged(f"no {RESUME_KEY!r} metadata")
    try:
        st = json.loads(header)
    except ValueError as exc:
        raise damaged(f"metadata is not JSON: {exc}") from None
    if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
        got = st.get("format") if isinstance(st, dict) else None
        raise damaged(f"format {got!r}, expected {RESUME_FORMAT}")
    if st.get("config") != cfg_dict:
        raise ValueError(
            f"{path} belongs to a run with a different config; choose another out_dir or delete it"
        )
    try:
        step, curve, checkpoints, pending = st["step"], st["curve"], st["checkpoints"], st["pending"]
        groups, fields = st["param_groups"], st["optim_state"]
        if not (_is_int(step) and isinstance(curve, list) and isinstance(checkpoints, list)
                and isinstance(pending, list) and isinstance(groups, list) and isinstance(fields, dict)):
            raise TypeError("bad field types")
        names = [f"model.{k}" for k in model.state_dict()]
        names += [f"optim.{i}.{f}" for i, fs in fields.items() for f in fs]
        missing = sorted(set(names) - set(tensors))
        extra = sorted(set(tensors) - set(names))
        if missing or extra:
            raise KeyError(f"missing tensors {missing[:3]}, unexpected tensors {extra[:3]}")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        for g in groups:
            g["betas"] = tuple(g["betas"])  # JSON made the tuple a list
        state = {int(i): {f: tensors[f"optim.{i}.{f}"] for f in fs} for i, fs in fields.items()}
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: shape mismatch
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    return {"step": step, "curve": curve, "checkpoints": checkpoints, "pending": pending}


def _save_checkpoint(out: Path, step: int, model, tokenizer, metrics: dict) -> None:
    final = out / f"step{step}"
    tmp = out / f".tmp-step{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from ..real.models import hf_progress_bars

    with hf_progress_bars(False):
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "svfcheck_checkpoint.json").write_text(
        json.dumps({"format": RUN_FORMAT, "step": step, "metrics": metrics}, indent=1) + "\n"
    )
    if final.exists():  # left over from a crash after the rename but before the resume file
        shutil.rmtree(final)
    os.replace(tmp, final)


def train_run(
    config: TrainConfig | str,
    out_dir,
    device: str = "cpu",
    progress: bool = True,
    *,
    stop_after: int | None = None,
    on_checkpoint: Callable[[int, Any], None] | None = None,
    num_threads: int | None = None,
) -> RunResult:
    """Train ``config`` (a :class:`TrainConfig` or a preset name) into ``out_dir``.

    Resumes from ``out_dir/resume.safetensors`` when present; returns at once (``skipped=True``)
    when ``out_dir`` already holds the finished run. Raises ``ValueError`` if ``out_dir`` holds a
    run with a different config, a damaged ``run.json``/``timing.json``/resume file, or an old
    pickle-format ``resume.pt`` (never loaded: unpickling can run code). ``stop_after=k`` stops
    (unfinished) after ``k`` new checkpoints — a simulated interruption.
    ``on_checkpoint(step, model)`` is called after each checkpoint is written (the model is in
    eval mode; do not modify it).
    ``num_threads`` sets ``torch.set_num_threads`` for the duration of the run.
    """
    cfg = preset(config) if isinstance(config, str) else config
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"config must be a TrainConfig or a preset name, got {type(config).__name__}")
    if stop_after is not None:
        _pos_int("stop_after", stop_after)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = cfg.to_dict()
    run_json = out / "run.json"
    if run_json.is_file():
        prev = _read_json(run_json, _RUN_JSON_ADVICE)
        if prev.get("config") != cfg_dict:
            raise ValueError(
                f"{out} already holds a run with a different config; choose another out_dir "
                "or delete it"
            )
        if prev.get("finished"):
            r = load_run(out)
            r.skipped = True
            return r

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        _pos_int("num_threads", num_threads)
        torch.set_num_threads(num_threads)
    try:
        return _train(cfg, cfg_dict, out, device, progress, stop_after, on_checkpoint)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg, cfg_dict, out, device, progress, stop_after, on_checkpoint) -> RunResult:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    c0 = time.process_time()
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    if isinstance(cfg.task, InductionTask):
        held_out = cfg.task.eval_batch(cfg.eval_size, cfg.seed)
    else:
        held_out = cfg.task.eval_ids(cfg.eval_size)

    schedule = cfg.schedule()
    sched_set = set(schedule)
    log_set = set(cfg.log_steps())
    curve: list[dict] = []
    checkpoints: list[int] = []
    pending: list[float] = []
    start = 0
    resumed_from = None
    resume_path = out / RESUME_FILE
    legacy = out / LEGACY_RESUME_FILE
    if legacy.exists() and not resume_path.exists():
        raise ValueError(
            f"{legacy} is an old pickle-format resume file; svfcheck never loads it because "
            "unpickling a file can run arbitrary code. Delete it to restart this run from step 0, "
            "or choose another output folder (--out)"
        )
    timing_path = out / "timing.json"
    # read (and validated) now, so that a damaged file stops the run before any work
    timings = _read_json(timing_path, _TIMING_ADVICE) if timing_path.is_file() else {"sessions": []}
    if not isinstance(timings.get("sessions"), list):
        raise ValueError(f'{timing_path} is damaged (no "sessions" list); {_TIMING_ADVICE}')
    if resume_path.is_file():
        st = _load_resume(resume_path, cfg_dict, model, opt)
        curve, checkpoints, pending = st["curve"], st["checkpoints"], st["pending"]
        start = resumed_from = st["step"]

    extra = {}
    if isinstance(cfg.task, TextTask):
        extra["corpus"] = load_corpus(cfg.task.corpus).summary()

    def write_run_json(finished: bool) -> None:
        _json_dump_atomic(
            out / "run.json",
            {
                "format": RUN_FORMAT,
                "finished": finished,
                "config": cfg_dict,
                "checkpoints": checkpoints,
                "curve": curve,
                "summary": _summary(cfg, curve) if curve else {},
                "environment": {
                    "torch": torch.__version__.split("+")[0],
                    "python": ".".join(map(str, sys.version_info[:2])),
                },
                **extra,
            },
        )

    new_ckpts = 0

    def at_step(step: int) -> bool:
        """Log/checkpoint after ``step`` updates; True means stop now (simulated interruption)."""
        nonlocal pending, new_ckpts
        if step not in log_set:
            return False
        entry = {
            "step": step,
            "lr": lr_at(cfg, step - 1) if step > 0 else 0.0,
            "train_loss": (sum(pending) / len(pending)) if pending else None,
            **_eval(model, cfg, device, held_out),
        }
        pending = []
        curve.append(entry)
        if step in sched_set:
            model.eval()
            _save_checkpoint(out, step, model, tokenizer, entry)
            checkpoints.append(step)
            _save_resume(
                resume_path,
                {"config": cfg_dict, "step": step, "curve": curve, "checkpoints": checkpoints, "pending": pending},
                model,
                opt,
            )
            write_run_json(finished=False)
            if on_checkpoint is not None:
                on_checkpoint(step, model)
            model.train()
            new_ckpts += 1
            if stop_after is not None and new_ckpts >= stop_after and step < cfg.max_steps:
                return True
        return False

    model.train()
    stopped = False
    if start == 0 and not curve:
        stopped = at_step(0)
    bar = tqdm(
        total=cfg.max_steps, initial=start, disable=not progress, desc=cfg.preset, unit="step"
    )
    step = start
    try:
        while not stopped and step < cfg.max_steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            ids, labels = cfg.task.train_batch(cfg.batch_size, cfg.seed, step)
            ids, labels = ids.to(device), labels.to(device)
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            pending.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step in log_set:
                stopped = at_step(step)
                last = curve[-1]
                post = {"loss": f"{last['eval_loss']:.3f}"}
                if "induction_accuracy" in last:
                    post["acc"] = f"{last['induction_accuracy']:.2f}"
                bar.set_postfix(post)
    finally:
        bar.close()

    finished = step >= cfg.max_steps and not stopped
    if finished:
        write_run_json(finished=True)
        resume_path.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    timings["sessions"].append(
        {
            "from_step": start,
            "to_step": step,
            "wall_time_s": wall,
            "cpu_time_s": time.process_time() - c0,
            "threads": torch.get_num_threads(),
        }
    )
    _json_dump_atomic(timing_path, timings)
    return RunResult(
        out_dir=out,
        config=cfg,
        curve=curve,
        checkpoints=checkpoints,
        finished=finished,
        summary=_summary(cfg, curve) if curve else {},
        resumed_from=resumed_from,
        wall_time_s=wall,
    )
