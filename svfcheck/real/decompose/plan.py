"""One plan per layer: everything a layer's route reads (docs/math.md §4.3–§4.4).

:func:`plan_layers` builds, in the caller's thread, one :class:`LayerPlan` per analysed layer:
the route it takes, its pairs, the capture's tensors of that layer, the options, and what the
route reads from the :class:`~svfcheck.real.svd_cache.SVDCache`. The core entries the layers'
pairs use are computed first — all layers' new ones in one pooled run
(:meth:`~svfcheck.real.svd_cache.SVDCache.prepare`, every core busy even when each layer needs
only a few) — and then looked up once per layer (:class:`CacheReads`: factors, converted
copies of entries computed earlier in another dtype, the basis-control table). A route then
only reads its plan, so the layers can run side by side on one thread each.
:func:`layer_inputs` projects the layer's hidden states (on the route's own thread).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..capture import Capture
from ..heads import LayerHeads, ModelHeads
from ..svd_cache import CoreRequest, LayerFactors, SVDCache
from .rope import _pair_offsets
from .types import Pairs


@dataclass(frozen=True, eq=False)
class Options:
    """The choices of one :func:`~svfcheck.real.decompose.decompose` call that the plans need."""

    basis: str  # "pair" or "zero"
    method: str  # "auto" (fast route where it applies) or "general"
    per_key: bool  # RoPE / QK-norm layers take the per-key route (per_key or keep_key_terms)
    dtype: torch.dtype
    seed: int  # the controls' seed: also the key of the cache's basis-control table
    chunk: int  # pairs per batch in the per-key route
    rotations: tuple | None  # the controls' Haar matrices (controls._control_rotations), None without


@dataclass(frozen=True, eq=False)
class LayerCapture:
    """The capture's tensors of one layer (views, not copies): B prompts of n tokens."""

    hidden: torch.Tensor  # (B, n, d): the attention module's input
    visible: torch.Tensor  # (B, n, n) bool: key k visible to query i
    attn: torch.Tensor  # (B, H, n, n): the model's attention probabilities
    cos: torch.Tensor | None  # (B, n, rotary_dim), None without RoPE
    sin: torch.Tensor | None

    @staticmethod
    def of(cap: Capture, layer: int) -> "LayerCapture":
        return LayerCapture(cap.hidden[layer], cap.visible[layer], cap.attn[layer], cap.cos[layer], cap.sin[layer])


@dataclass(frozen=True, eq=False)
class CacheReads:
    """What a layer's route reads from the cache, looked up in the caller's thread. The fast
    route: ``basis``; the others: the rest (``control_table`` only for the summed route with
    controls in a RoPE layer)."""

    basis: tuple | None = None  # (U, S, V) at Δ = 0: (H, D, R), (H, R), (H, D, R), float64
    factors: LayerFactors | None = None
    tables: tuple | None = None  # (Ũ, S, Ṽ, F) in dtype, head-major (H, T, ...), T the table's offsets
    slot: np.ndarray | None = None  # (len(pairs),) each of the layer's pairs' row in the tables (0 elsewhere)
    control_table: torch.Tensor | None = None  # F̂ (H, T, d_h, R): SVDCache.control_table


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """Everything one layer's route reads (it writes :class:`~svfcheck.real.decompose.output._Out`).

    ``idx``: the layer's pairs, indices into ``pairs`` and into the output rows.
    ``rotations``: this layer's ``(basis Q, paper Q₁, paper Q₂)`` of the rotation controls,
    each (H, R, R), or ``None`` without controls."""

    layer: int
    lh: LayerHeads
    route: str  # "fast", "per_key" or "summed"
    idx: np.ndarray
    pairs: Pairs
    cap: LayerCapture
    dtype: torch.dtype
    chunk: int
    rotations: tuple | None
    cached: CacheReads

    @property
    def rd(self) -> int:
        """The rotary width (0 without RoPE)."""
        return 0 if self.lh.rotary is None else self.lh.rotary.rotary_dim


def plan_layers(heads: ModelHeads, cap: Capture, pairs: Pairs, cache: SVDCache, opts: Options, units=None,
                room: int | None = None) -> list[LayerPlan]:
    """One :class:`LayerPlan` per layer of ``pairs`` (ascending), or per unit of ``units``
    (``(layer, idx)`` with ``idx`` some of that layer's pairs: docs/math.md §4.5), the cache
    filled — its tables within ``room`` bytes when given — and read.

    Cold core SVDs run on every core inside :meth:`~svfcheck.real.svd_cache.SVDCache.prepare`;
    call this in the caller's thread, before the routes run side by side."""
    R = heads.layers[0].head_dim
    if units is None:
        units = [(int(l), np.flatnonzero(pairs.layer == l)) for l in np.unique(pairs.layer)]
    plans = []
    for l, idx in units:
        l = int(l)
        lh = heads.layers[l]
        if lh.head_dim != R:
            raise ValueError("all layers must share one head dimension")
        rot = None if opts.rotations is None else tuple(Q[l] for Q in opts.rotations)
        plans.append(LayerPlan(l, lh, _route(lh, opts), idx, pairs, LayerCapture.of(cap, l), opts.dtype, opts.chunk, rot,
                               CacheReads()))
    requests = [_core_request(p, cap.positions, opts) for p in plans]
    cache.prepare([r for r in requests if r is not None], room=room)
    return [replace(p, cached=_read_cache(cache, p, r)) for p, r in zip(plans, requests)]


def _route(lh: LayerHeads, opts: Options) -> str:
    """Soft-capped layers always take the per-key route: the cap's factor κ_ik depends on the
    query and the key together, so the keys cannot be summed before the basis is applied
    (docs/math.md §3.21)."""
    if lh.softcap is not None:
        return "per_key"
    if opts.method == "auto" and lh.rotary is None and not lh.qk_norm:
        return "fast"
    return "per_key" if opts.per_key else "summed"


def _core_request(plan: LayerPlan, positions: torch.Tensor, opts: Options) -> CoreRequest | None:
    """The core entries the layer's route will look up (``None`` for the fast route): the pairs'
    offsets and heads, the prompt's offset span, and — for the summed route's basis control —
    the control table's key and rotations, so new entries come with their F̂ rows."""
    if plan.route == "fast":
        return None
    pairs, idx, lh = plan.pairs, plan.idx, plan.lh
    d, span = _pair_offsets(positions, plan.cap.visible, pairs.prompt[idx], pairs.query_pos[idx], pairs.key_pos[idx],
                            opts.basis == "pair" and lh.rotary is not None)
    ctl = plan.route == "summed" and plan.rotations is not None and lh.rotary is not None
    return CoreRequest(plan.layer, d, plan.dtype, pairs.head[idx], span, (opts.seed, plan.rotations[0]) if ctl else None)


def _read_cache(cache: SVDCache, plan: LayerPlan, request: CoreRequest | None) -> CacheReads:
    """After :meth:`~svfcheck.real.svd_cache.SVDCache.prepare`: everything the layer's route
    reads from ``cache``, so that the route only reads."""
    l = plan.layer
    if request is None:
        return CacheReads(basis=cache.basis(l))
    factors = cache.factors(l)
    r = request
    *tables, rows = cache.core_lookup(l, r.deltas, r.dtype, heads=r.heads, span=r.span, control=r.control)
    control = cache.control_table(l, r.dtype, *r.control) if r.control is not None else None
    slot = np.zeros(len(plan.pairs), dtype=np.int64)
    slot[plan.idx] = rows.numpy()
    return CacheReads(factors=factors, tables=tuple(tables), slot=slot, control_table=control)


@dataclass(frozen=True, eq=False)
class LayerInputs:
    """What both RoPE / QK-norm routes read of one layer's tokens, in the plan's dtype: queries
    ``A`` (B, H, n, d_h; raw, or with QK-norm ``L_q a = g ⊙ P a``, the normed query before its
    1/σ) and keys ``K`` (B, Hkv, n, d_h; raw, or with QK-norm ``P b``, centred for a LayerNorm,
    without gain), ``Z = Q_kᵀx̃`` (B, Hkv, n, d_h), ``Y = Q_qᵀx̃`` (B, H, n, d_h; paper control
    only) and with QK-norm the per-token σ of the queries ``rq`` (B, H, n) and keys ``rk``
    (B, Hkv, n) — per head, or shared by a token's heads with ``norm_scope="all"``
    (docs/math.md §3.12, §3.19)."""

    A: torch.Tensor
    K: torch.Tensor
    Z: torch.Tensor
    Y: torch.Tensor | None
    rq: torch.Tensor | None
    rk: torch.Tensor | None


def layer_inputs(plan: LayerPlan) -> LayerInputs:
    """The layer's :class:`LayerInputs` (a few GEMMs: call on the route's thread)."""
    lh, f, dtype = plan.lh, plan.cached.factors, plan.dtype
    A, K = _layer_inputs(lh, plan.cap.hidden, f, dtype)
    Z = K @ f.R_k_inv.to(dtype)  # (B, Hkv, n, dh): Q_kᵀ x̃
    Y = A @ f.R_q_inv.to(dtype) if plan.rotations is not None else None  # Q_qᵀ x̃
    rq = rk = None
    if lh.qk_norm:
        if lh.norm_center:  # LayerNorm: P = I − 11ᵀ/d_h (Z and Y above stay raw: P is folded into F)
            A, K = A - A.mean(-1, keepdim=True), K - K.mean(-1, keepdim=True)
        rq, rk = _rms(A, lh.norm_eps, lh.norm_scope), _rms(K, lh.norm_eps, lh.norm_scope)
        A = A * head_gain(lh.q_gain, dtype)
    return LayerInputs(A, K, Z, Y, rq, rk)


def head_gain(g: torch.Tensor, dtype) -> torch.Tensor:
    """A QK-norm gain in ``dtype``, broadcastable against (B, heads, n, d_h): (d_h,) shared by the
    heads, or (heads, d_h) per head."""
    g = g.to(dtype)
    return g if g.dim() == 1 else g[:, None, :]


def _aug(X: torch.Tensor, lh: LayerHeads, dtype) -> torch.Tensor:
    """``x̃ = [x; 1]`` with biases (docs/math.md §3.1), else ``x``, in ``dtype``."""
    X = X.to(dtype)
    if lh.has_bias:
        X = torch.cat([X, torch.ones(*X.shape[:-1], 1, dtype=dtype)], -1)
    return X


def _rms(x: torch.Tensor, eps: float, scope: str = "head") -> torch.Tensor:
    """σ (B, heads, n) of ``x`` (B, heads, n, d_h): over each head's coordinates, or with
    ``scope="all"`` over the token's whole projection (all heads), shared by its heads."""
    if scope == "all":
        return torch.sqrt(x.pow(2).mean((1, 3)) + eps)[:, None, :].expand(x.shape[:3])
    return torch.sqrt(x.pow(2).mean(-1) + eps)


def _layer_inputs(lh: LayerHeads, X: torch.Tensor, f: LayerFactors, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw queries (B, H, n, d_h) and keys (B, Hkv, n, d_h) in ``dtype``."""
    X = _aug(X, lh, dtype)
    A = torch.einsum("bnd,hde->bhne", X, f.W_Q.to(dtype))
    K = torch.einsum("bnd,hde->bhne", X, f.W_K.to(dtype))
    return A, K
