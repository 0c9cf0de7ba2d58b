"""Frozen, validated configurations of the toy model (docs/math.md §1, paper §3 and App. A/D/E).

:class:`ToyConfig` describes one model instance (shapes, data distribution, target logits Λ,
loss weight λ). :class:`TrainConfig` describes the optimisation. Both validate themselves in
``__post_init__`` and raise ``ValueError`` with a message naming the offending field.

Λ is stored sparsely as ``pairs``: a tuple of ``(a, b, value)`` triples meaning
``Λ[a, b] = value`` (query feature ``a``, key feature ``b``). The *pairs of interest* are the
non-zero entries ordered by value, largest first; pair ``t`` is expected to align with
singular index ``t`` (docs/math.md §1.4). Use :meth:`ToyConfig.from_matrix` to build a config from a
dense ``n×n`` Λ (its shape is checked).

Named presets (:func:`preset`):

- ``default`` — paper Table 1: n=20, d=10, d_h=10, λ=4, m=4, p=0.52,
  Λ[0,4]=24, Λ[1,5]=21, Λ[2,6]=18, Λ[3,7]=15.
- ``single-pair`` — n=20, d=10, d_h=10, one pair Λ[0,1]=24 **(choice**: the paper gives no
  value; 24 is the default config's largest logit).
- ``100-features`` — n=100, d=50, d_h=50, 20 pairs Λ[i, i+20] = 30 − i for i = 0..19
  **(choice**: the paper only says "linearly declining"; 30 → 11 keeps the default's spacing
  of the same order and the smallest logit ≈ the default's smallest).
- ``rope`` — App. D: n=20, d=10, d_h=10, RoPE with base 10000 over positions 0..39 (band 1's
  period 2π·10000^{0.2} ≈ 39.7 ≈ the context length, as in the paper); position-independent
  pairs (0,3)=24, (1,4)=21, (2,5)=18 and one positional pair (6,7) with strength 15 whose
  target term is ``15 f_6 f_7 cos(θ_1 Δ)`` (θ_1 the band-1 frequency) **(choice** for the
  lost values).
- ``over-capacity`` — App. E: n=20, d=10, d_h=5 and K=10 pairs (t, t+10), Λ_t = 3·(1 + K − t)
  (linearly declining 33 → 6) **(choice**: the paper's exact values were lost).
  :func:`over_capacity` builds any K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .._validate import is_int_like as _is_int

__all__ = [
    "RopeConfig",
    "ToyConfig",
    "TrainConfig",
    "PRESETS",
    "preset",
    "over_capacity",
    "linear_pairs",
]


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position encoding of the toy head (App. D).

    Positions of the query and of every key are drawn uniformly from ``0..context-1``;
    band ``k`` (head coordinates ``2k, 2k+1``) rotates by ``θ_k = base^{-2k/d_h}`` per position.
    ``positional`` holds ``(a, b, value, band)`` triples: target term
    ``value · f_a f_b · cos(θ_band · (pos_key − pos_query))``.
    """

    base: float = 10000.0
    context: int = 40
    positional: tuple[tuple[int, int, float, int], ...] = ((6, 7, 15.0, 1),)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 1):
            raise ValueError(f"rope.base must be a finite number > 1; got {self.base}")
        if not _is_int(self.context) or self.context < 1:
            raise ValueError(f"rope.context must be a positive integer; got {self.context!r}")
        object.__setattr__(self, "positional", tuple(tuple(t) for t in self.positional))
        for t in self.positional:
            if len(t) != 4:
                raise ValueError(f"rope.positional entries must be (a, b, value, band); got {t!r}")
            a, b, v, band = t
            if not (_is_int(a) and _is_int(b) and _is_int(band)):
                raise ValueError(f"rope.positional indices must be integers; got {t!r}")
            if not math.isfinite(float(v)):
                raise ValueError(f"rope.positional value must be finite; got {t!r}")

    def theta(self, d_h: int) -> np.ndarray:
        k = np.arange(d_h // 2)
        return self.base ** (-2.0 * k / d_h)


@dataclass(frozen=True)
class ToyConfig:
    """One toy-model instance: shapes, data distribution and target (docs/math.md §1).

    ``n`` features in ``d`` token dimensions, head dimension ``d_h`` (≤ d), ``m`` keys per
    query, feature probability ``p`` ∈ (0, 1], loss weight ``lam`` (λ) ≥ 0, ``n_keys`` key
    tokens per step (queries per step = ``n_keys // m``), ``pairs`` = sparse Λ.
    ``strengths``: ``"uniform"`` — f_i = Bernoulli(p)·U[0,1) (docs/math.md §1.1, Elhage et al.);
    ``"binary"`` — f_i = Bernoulli(p) (the theorems' setting, docs/math.md §2.1; used by App. C.3).
    """

    n: int = 20
    d: int = 10
    d_h: int = 10
    lam: float = 4.0
    m: int = 4
    p: float = 0.52
    pairs: tuple[tuple[int, int, float], ...] = ((0, 4, 24.0), (1, 5, 21.0), (2, 6, 18.0), (3, 7, 15.0))
    n_keys: int = 1024
    rope: RopeConfig | None = None
    strengths: str = "uniform"
    name: str = "default"

    def __post_init__(self) -> None:
        if self.strengths not in ("uniform", "binary"):
            raise ValueError(f"strengths must be 'uniform' (Bernoulli(p)·U[0,1)) or 'binary' (Bernoulli(p)); got {self.strengths!r}")
        for f in ("n", "d", "d_h", "m", "n_keys"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{f} must be a positive integer; got {v!r}")
        if self.d > self.n:
            # not forbidden by the paper, but the toy model is about n >= d (superposition)
            raise ValueError(f"d={self.d} > n={self.n}: the toy model needs at least as many features as dimensions")
        if self.d_h > self.d:
            raise ValueError(f"d_h={self.d_h} > d={self.d}: the head dimension cannot exceed the token dimension")
        if self.m < 2:
            raise ValueError(f"m={self.m}: softmax over keys needs at least 2 keys per query")
        if self.n_keys < self.m:
            raise ValueError(f"n_keys={self.n_keys} < m={self.m}: not even one query per step")
        p = float(self.p)
        if not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise ValueError(f"p={self.p} must lie in (0, 1]")
        lam = float(self.lam)
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"lam={self.lam} must be a finite number >= 0")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "lam", lam)
        pairs = []
        seen = set()
        for t in self.pairs:
            t = tuple(t)
            if len(t) != 3:
                raise ValueError(f"pairs entries must be (a, b, value); got {t!r}")
            a, b, v = t
            if not (_is_int(a) and _is_int(b)):
                raise ValueError(f"pair indices must be integers; got {t!r}")
            if not (0 <= a < self.n and 0 <= b < self.n):
                raise ValueError(f"pair of interest {(a, b)} lies beyond the n={self.n} features")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"Λ[{a},{b}]={v} is not finite")
            if (a, b) in seen:
                raise ValueError(f"pair {(a, b)} given twice")
            seen.add((a, b))
            if v != 0.0:
                pairs.append((int(a), int(b), v))
        object.__setattr__(self, "pairs", tuple(pairs))
        if self.rope is not None:
            if not isinstance(self.rope, RopeConfig):
                raise ValueError(f"rope must be a RopeConfig or None; got {type(self.rope).__name__}")
            if self.d_h % 2:
                raise ValueError(f"RoPE needs an even head dimension; got d_h={self.d_h}")
            for a, b, _v, band in self.rope.positional:
                if not (0 <= a < self.n and 0 <= b < self.n):
                    raise ValueError(f"positional pair {(a, b)} lies beyond the n={self.n} features")
                if not 0 <= band < self.d_h // 2:
                    raise ValueError(f"positional band {band} out of range for d_h={self.d_h} ({self.d_h // 2} bands)")

    # ---- derived quantities ------------------------------------------------------------
    @property
    def n_queries(self) -> int:
        return self.n_keys // self.m

    @property
    def Lambda(self) -> np.ndarray:
        """Dense Λ (n×n, float64)."""
        L = np.zeros((self.n, self.n))
        for a, b, v in self.pairs:
            L[a, b] = v
        return L

    @property
    def pairs_of_interest(self) -> tuple[tuple[int, int, float], ...]:
        """Non-zero Λ entries, largest value first (ties: by position); pair t ↔ singular index t."""
        return tuple(sorted(self.pairs, key=lambda t: (-t[2], t[0], t[1])))

    @property
    def target_features(self) -> tuple[int, ...]:
        s = {a for a, _, _ in self.pairs} | {b for _, b, _ in self.pairs}
        if self.rope is not None:
            s |= {a for a, _, _, _ in self.rope.positional} | {b for _, b, _, _ in self.rope.positional}
        return tuple(sorted(s))

    @property
    def shape_key(self) -> tuple:
        """Instances with equal shape keys can share one batched model without padding."""
        return (self.n, self.d, self.d_h, self.m, self.n_keys, self.rope)

    def with_(self, **kw) -> "ToyConfig":
        return replace(self, **kw)

    @classmethod
    def from_matrix(cls, Lambda, **kw) -> "ToyConfig":
        """Build a config from a dense Λ; its shape must be (n, n)."""
        L = np.asarray(Lambda, dtype=np.float64)
        n = kw.get("n", cls.n)
        if L.shape != (n, n):
            raise ValueError(f"Λ must have shape (n, n) = ({n}, {n}); got {L.shape}")
        if not np.all(np.isfinite(L)):
            raise ValueError("Λ has non-finite entries")
        pairs = tuple((int(a), int(b), float(L[a, b])) for a, b in zip(*np.nonzero(L)))
        return cls(pairs=pairs, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, cosine decay of the learning rate from ``lr`` to 0 over ``steps``.

    ``weight_decay`` 0.01 is PyTorch's AdamW default **(choice**: the paper says only "AdamW").
    ``record_every`` — trajectory interval (steps); ``chunk`` — steps of data drawn at once.
    ``train_features=False`` freezes W and b and drops L_rec (head-only training, App. C.3).
    ``threads``: torch intra-op threads during training (restored afterwards); ``None`` keeps
    the current setting. Default 1: the per-step ops are tiny, and with 2 OpenMP threads on a
    loaded 2-core machine a step was measured 20–50× slower (thread hand-off stalls).
    ``manual_grad``: use the model's hand-derived gradient
    (:meth:`~svfcheck.toy.model.ToyModel.losses_and_grads`, several times cheaper per instance in
    a batch) instead of autograd; RoPE models always use autograd.
    ``stop_aligned``: early stop (``None``: off). Training ends before ``steps`` once every
    instance's one-to-one alignment (:func:`svfcheck.toy.metrics.one_to_one_alignment`: every
    pair of interest on its own singular index, any order, query and key |cos| ≥ the value),
    read at each record, has stayed ≥ ``stop_aligned`` at every record for
    the last ``stop_patience`` steps ("until results stabilize", docs/math.md §1.3). The cosine
    schedule still spans ``steps``; the trajectory ends at the stopping step.
    """

    steps: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 0.01
    cosine: bool = True
    record_every: int = 250
    chunk: int = 50
    train_features: bool = True
    snapshots: bool = False
    progress: bool = True
    threads: int | None = 1
    manual_grad: bool = True
    stop_aligned: float | None = None
    stop_patience: int = 5_000

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer; got {self.steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number; got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {self.weight_decay}")
        if not _is_int(self.record_every) or self.record_every < 1:
            raise ValueError(f"record_every must be a positive integer; got {self.record_every!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None; got {self.threads!r}")
        if not _is_int(self.chunk) or self.chunk < 1:
            raise ValueError(f"chunk must be a positive integer; got {self.chunk!r}")
        if self.stop_aligned is not None and not (0.0 < float(self.stop_aligned) <= 1.0):
            raise ValueError(f"stop_aligned must be a |cos| threshold in (0, 1] or None; got {self.stop_aligned!r}")
        if not _is_int(self.stop_patience) or self.stop_patience < self.record_every:
            raise ValueError(f"stop_patience must be an integer >= record_every ({self.record_every}) steps; "
                             f"got {self.stop_patience!r}")


def linear_pairs(k: int, offset: int, hi: float, step: float) -> tuple[tuple[int, int, float], ...]:
    """Pairs ``(t, t+offset)`` with values ``hi − step·t`` for t = 0..k−1."""
    return tuple((t, t + offset, float(hi - step * t)) for t in range(k))


def over_capacity(k: int = 10, n: int = 20, d: int = 10, d_h: int = 5, scale: float = 3.0, **kw) -> ToyConfig:
    """App. E: ``k`` pairs (t, t+k) with Λ_t = scale·(1 + k − t) on a head of dimension ``d_h``."""
    if not _is_int(k) or k < 1 or 2 * k > n:
        raise ValueError(f"over_capacity needs 1 <= k <= n/2 pairs; got k={k}, n={n}")
    pairs = tuple((t, t + k, float(scale * (1 + k - t))) for t in range(k))
    return ToyConfig(n=n, d=d, d_h=d_h, pairs=pairs, name=kw.pop("name", f"over-capacity-{k}"), **kw)


PRESETS: dict[str, ToyConfig] = {
    "default": ToyConfig(),
    "single-pair": ToyConfig(pairs=((0, 1, 24.0),), name="single-pair"),
    "100-features": ToyConfig(n=100, d=50, d_h=50, pairs=linear_pairs(20, 20, 30.0, 1.0), name="100-features"),
    "rope": ToyConfig(
        pairs=((0, 3, 24.0), (1, 4, 21.0), (2, 5, 18.0)),
        rope=RopeConfig(),
        name="rope",
    ),
    "over-capacity": over_capacity(10, name="over-capacity"),
}


def preset(name: str, **overrides) -> ToyConfig:
    """A named preset, optionally with fields replaced (validated again)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown toy preset {name!r}; choose from {sorted(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg
