"""Configuration of a training run: the model architecture (:class:`LMSpec`), the run
(:class:`LMTrainConfig`: task, optimiser, schedule, checkpoint steps) and the named presets.

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
  ``LMSpec.pos_init_std=0.02``; no head with induction score > 0.25 yet) — longer training
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

The training itself is :func:`svfcheck.emergence.train.train_run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .._validate import is_int, pos_int
from .tasks import InductionTask, TextTask

__all__ = ["LMSpec", "LMTrainConfig", "PRESETS", "preset"]


@dataclass(frozen=True)
class LMSpec:
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
            raise ValueError(f"LMSpec.arch must be 'gpt2' or 'llama', got {self.arch!r}")
        if self.pos_init_std is not None:
            if self.arch != "gpt2":
                raise ValueError("LMSpec.pos_init_std applies to arch='gpt2' (learned positions) only")
            if not (isinstance(self.pos_init_std, (int, float)) and self.pos_init_std > 0):
                raise ValueError(f"LMSpec.pos_init_std must be > 0 or None, got {self.pos_init_std!r}")
        for f in ("d_model", "n_layers", "n_heads", "d_ff"):
            pos_int(f"LMSpec.{f}", getattr(self, f))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"LMSpec.d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.arch == "gpt2" and self.n_kv_heads is not None:
            raise ValueError("LMSpec.n_kv_heads is only supported for arch='llama' (GPT-2 has no GQA)")
        if self.n_kv_heads is not None:
            pos_int("LMSpec.n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"LMSpec.n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}"
                )
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ValueError(f"LMSpec.rope_theta must be > 0, got {self.rope_theta!r}")


@dataclass(frozen=True)
class LMTrainConfig:
    """One training run. ``checkpoint_steps`` empty → the default schedule (see
    :meth:`schedule`); otherwise the explicit list (must contain 0 and ``max_steps``)."""

    preset: str
    model: LMSpec
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
        if not isinstance(self.model, LMSpec):
            raise ValueError(f"LMTrainConfig.model must be an LMSpec, got {type(self.model).__name__}")
        if not isinstance(self.task, (InductionTask, TextTask)):
            raise ValueError(
                f"LMTrainConfig.task must be an InductionTask or TextTask, got {type(self.task).__name__}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"LMTrainConfig.seed must be a non-negative int, got {self.seed!r}")
        for f in ("max_steps", "batch_size", "log_every", "eval_size", "checkpoint_every"):
            pos_int(f"LMTrainConfig.{f}", getattr(self, f))
        if not is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"LMTrainConfig.warmup_steps must be an int in [0, max_steps={self.max_steps}], "
                f"got {self.warmup_steps!r}"
            )
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"LMTrainConfig.lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"LMTrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"LMTrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for f in ("beta1", "beta2"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"LMTrainConfig.{f} must be in [0, 1), got {v!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"LMTrainConfig.grad_clip must be > 0, got {self.grad_clip!r}")
        cs = tuple(self.checkpoint_steps)
        object.__setattr__(self, "checkpoint_steps", cs)
        if cs:
            if any(not is_int(s) for s in cs):
                raise ValueError(f"LMTrainConfig.checkpoint_steps must be ints, got {cs!r}")
            if list(cs) != sorted(set(cs)):
                raise ValueError(f"LMTrainConfig.checkpoint_steps must be strictly increasing, got {cs!r}")
            if cs[0] != 0 or cs[-1] != self.max_steps:
                raise ValueError(
                    "LMTrainConfig.checkpoint_steps must start at 0 (the initialisation) and end at "
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
    def from_dict(cls, d: dict) -> "LMTrainConfig":
        d = dict(d)
        task = dict(d.pop("task"))
        kind = task.pop("kind", None)
        task_cls = {"induction": InductionTask, "text": TextTask}.get(kind)
        if task_cls is None:
            raise ValueError(f"unknown task kind {kind!r} in run config")
        model = LMSpec(**d.pop("model"))
        d["checkpoint_steps"] = tuple(d.get("checkpoint_steps", ()))
        return cls(model=model, task=task_cls(**task), **d)


PRESETS: dict[str, LMTrainConfig] = {
    "induction-gpt2": LMTrainConfig(
        preset="induction-gpt2",
        model=LMSpec(arch="gpt2", d_model=128, n_layers=2, n_heads=4, d_ff=512),
        task=InductionTask(n_symbols=32, min_len=4, max_len=12, loss_on_repeat_only=True),
        max_steps=1000,
        batch_size=64,
        lr=3e-3,
        warmup_steps=50,
        log_every=25,
        eval_size=256,
        checkpoint_every=100,
    ),
    "induction-llama": LMTrainConfig(
        preset="induction-llama",
        model=LMSpec(arch="llama", d_model=64, n_layers=2, n_heads=4, d_ff=256),
        task=InductionTask(n_symbols=48, min_len=4, max_len=12, max_prefix=8, max_gap=12, loss_on_repeat_only=True),
        max_steps=1000,
        batch_size=64,
        lr=3e-3,
        warmup_steps=50,
        log_every=50,
        eval_size=256,
        checkpoint_every=100,
    ),
    "text-llama": LMTrainConfig(
        preset="text-llama",
        model=LMSpec(arch="llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
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


def preset(name: str, **overrides) -> LMTrainConfig:
    """A named preset (``induction-gpt2``, ``induction-llama``, ``text-llama``) with fields replaced by
    ``overrides`` (e.g. ``max_steps=200``, ``seed=1``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
