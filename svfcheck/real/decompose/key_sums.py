"""The summed route's key side (docs/math.md §3.13, §4.4): per query, sums over its visible
keys (:func:`_key_sums`: prefix sums under causal masks, else one GEMM), and per (prompt, kv
head) of a layer everything the route reads of the keys (:func:`_key_side`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .. import kernels
from .layout import PairOrder
from .pairs import _prefix_run
from .plan import LayerPlan
from .rope import RopeTables, _key_features, _rope


def _key_sums(vis: torch.Tensor, O: torch.Tensor, wz: torch.Tensor, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, sums over its visible keys: ``N_i = Σ_k vis_ik O_k`` (O_k = cs_k ⊗ z_k
    flattened) and ``Σ_k vis_ik z_k``, for the boolean mask ``vis`` (n_query, n_key).

    When every query sees a run of keys starting at one common key s (causal attention, also
    with left padding) the sums are prefix sums: one cumulative sum over the keys, O(n·E)
    instead of the O(n²·E) GEMM.
    Any other mask (sliding window, bidirectional with padding, arbitrary) takes one GEMM each.
    ``overwrite``: ``O`` is the caller's scratch and may hold the prefix sums afterwards (saves
    a 2 MB copy per call)."""
    n = vis.shape[-1]
    run = _prefix_run(vis)
    if run is not None:
        s, cnt = run
        ar = torch.arange(n)
        outs = []
        for t, own in ((O, overwrite), (wz, False)):
            # row by row (compiled): ~7x faster than torch.cumsum over dim 0 (or the GEMM) here
            a = t[s:].numpy() if own and t.is_contiguous() else t[s:].numpy().copy()
            kernels.prefix_rows(a)
            C = torch.from_numpy(a)
            if not torch.equal(cnt, ar + 1):  # not query i seeing keys 0..i: pick each query's prefix
                C = C.index_select(0, (cnt - 1).clamp_min(0)).masked_fill_((cnt == 0)[:, None], 0.0)
            outs.append(C)
        return outs[0], outs[1]
    vf = vis.to(O.dtype)
    return vf @ O, vf @ wz


class KeyGroup(NamedTuple):
    """The keys of one (prompt, kv head) of a layer, n of them, in the plan's dtype."""

    cs: torch.Tensor | None  # (n, e) key features cs_k (RoPE; rope._key_features), else None
    krot: torch.Tensor  # (n, d_h) the model's keys: rotated, QK-normed
    kabs: torch.Tensor  # |krot|
    zsum: torch.Tensor  # (n, d_h) per query, Σ over its visible keys of w_k z_k
    wz: torch.Tensor  # (n, d_h) w_k z_k (w_k = 1/rms(k_k) with QK-norm, else 1)


@dataclass(frozen=True, eq=False)
class KeySide:
    """The key side of a layer's summed route, per (prompt, kv head) ``key = b·Hkv + g``.

    ``N`` (n_keys, n, e·d_h): per key and query i, ``N_i = Σ_{k visible to i} w_k cs_k ⊗ z_k``
    (row ``nrow[p]`` of ``N.view(-1, e·d_h)`` is pair p's); ``groups`` [(start, stop, key,
    head)]: the runs of pairs of one (prompt, head) in the :class:`~svfcheck.real.decompose.layout.PairOrder`; ``e``:
    the key-feature width (d_h with ``halves``, d_h + rd without, 1 without RoPE)."""

    N: torch.Tensor
    sums: dict  # key -> KeyGroup
    ukeys: np.ndarray  # the keys, in N's order
    nrow: np.ndarray  # (P,)
    groups: list
    e: int
    halves: bool


def _key_side(plan: LayerPlan, order: PairOrder, Kn: torch.Tensor, Wz: torch.Tensor, rope: RopeTables | None) -> KeySide:
    """The key side of the layer's pairs ``order``, from the model's (normed, unrotated) keys
    ``Kn`` and the weighted ``Wz = w·Z`` (B, Hkv, n, d_h); ``rope``: the layer's rotations
    (``None`` without RoPE). Built once per (prompt, kv head), N stacked for one gather."""
    dh, rd, dtype = plan.lh.head_dim, plan.rd, plan.dtype
    nkv = plan.cached.factors.kv_index.numel()
    n = plan.cap.visible.shape[-1]
    halves = rope.halves if rd else False
    gkey = order.b * plan.lh.n_heads + order.h
    gcut = np.flatnonzero(np.diff(gkey)) + 1
    kvk = order.b * nkv + order.g
    ukeys, kid = np.unique(kvk, return_inverse=True)
    e = (dh if halves else dh + rd) if rd else 1  # key-feature width (rope._key_features)
    Nst = torch.empty(len(ukeys), n, e * dh, dtype=dtype)
    sums: dict = {}
    for k, key in enumerate(ukeys.tolist()):
        b0, g0 = divmod(key, nkv)
        vis = plan.cap.visible[b0]  # (n, n)
        if rd:
            cs = _key_features(rope.cos[b0], rope.sin[b0], rd, dh, halves)
            torch.mul(cs[:, :, None], Wz[b0, g0][:, None, :], out=Nst[k].view(n, e, dh))
            krot = _rope(Kn[b0, g0], rope.cos[b0], rope.sin[b0])
            N, zs = _key_sums(vis, Nst[k], Wz[b0, g0], overwrite=True)  # O is our scratch: Nst[k]
        else:
            cs, krot = None, Kn[b0, g0]
            N, zs = _key_sums(vis, Wz[b0, g0], Wz[b0, g0])
        if N.data_ptr() != Nst[k].data_ptr():
            Nst[k].copy_(N)
        sums[key] = KeyGroup(cs, krot, krot.abs(), zs, Wz[b0, g0])
    groups = [(int(a), int(z), int(kvk[a]), int(order.h[a])) for a, z in zip(np.r_[0, gcut], np.r_[gcut, len(order)])]
    return KeySide(Nst, sums, ukeys, kid * n + order.i, groups, e, halves)
