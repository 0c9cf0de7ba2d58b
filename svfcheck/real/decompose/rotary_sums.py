"""The summed route's per-pair key sums in the pair's own basis (docs/math.md §4.4): for
every pair of a RoPE layer ``Σ_k t_r(i, k)`` before the query scale, and the basis control's
``Σ_k`` of its rotated terms, from the key side (:mod:`~svfcheck.real.decompose.key_sums`) and the core tables."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import kernels
from ..svd import safe_singular_values
from .key_sums import KeySide
from .layout import PairOrder
from .pairs import _prefix_run
from .plan import LayerPlan


#: Pairs of one (prompt, head) sharing a basis (table row) from which on their key sums are
#: accumulated key by key in that basis (:func:`~svfcheck.real.kernels.slot_group_sums`: 2·e·R
#: operations per key for the whole group) instead of one N_i Ṽ product per pair (e·d_h·R
#: each); prefix masks only. The accumulation costs about as much as ~20 pairs' products
#: (compiled loops against MKL's GEMMs), hence the threshold. Measured on SmolLM2-135M's
#: top-attended pairs (128 random tokens): 41% of pairs share their (layer, head, Δ) with at
#: least 23 others in their prompt.
_SLOT_GROUP_MIN = 24


#: Pairs per chunk of the summed route's per-pair products (:func:`_rotary_sums`): one
#: (prompt, head) group's worth, so that the gathered rows and products (~16 KB per pair each in
#: float32) stay in cache between the GEMM and the compiled loops that read them.
_REST_CHUNK = 128


def _take(t: torch.Tensor, i: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """Rows ``i`` of ``t``: a view when they are consecutive (the usual case: one pair per query,
    queries in order), else gathered into ``out[:len(i)]`` (preallocated scratch)."""
    c = len(i)
    if c and i[-1] - i[0] == c - 1 and (np.diff(i) == 1).all():
        return t[int(i[0]) : int(i[0]) + c]
    return torch.index_select(t, 0, torch.as_tensor(i), out=out[:c])


class _SumTables(NamedTuple):
    """The layer's tables as the sums read them (head-major, (H, T, ...), T the table's offsets)."""

    Vt: torch.Tensor  # (H, T, d_h, R): Ṽ
    F: torch.Tensor  # (H, T, d_h, R): F = G_k R_kᵀ Ṽ
    Fh: torch.Tensor | None  # (H, T, d_h, R): F̂ = F D⁻¹ Q, the basis control's (None without controls)
    safe: torch.Tensor  # (H, T, R): S with zeros as 1 (with controls; else S, not read)
    Qb: torch.Tensor | None  # (H, R, R): the basis control's rotations


def _sum_tables(plan: LayerPlan) -> _SumTables:
    _, S_all, Vt_all, F_all = plan.cached.tables
    Fh_all = plan.cached.control_table
    safe_all = safe_singular_values(S_all) if Fh_all is not None else S_all  # S_all: a placeholder, unread
    return _SumTables(Vt_all, F_all, Fh_all, safe_all, plan.rotations[0] if plan.rotations is not None else None)


def _rotary_sums(plan: LayerPlan, order: PairOrder, keys: KeySide, qh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per pair of one RoPE layer (``order``: head-major, ``heads_at`` = [(head, start, stop)];
    ``qh`` (P, d_h) the pairs' rotated queries): ``Σ_e F·(D_q N_i Ṽ)`` (the key sum of its terms,
    before the query scale) and, with the basis control's rotations Q (H, R, R), ``Σ_e F̂·(D_q N_i
    Ṽ D Q)``; each (P, R), the second ``None`` without controls.

    Pairs whose table row is shared by at least :data:`_SLOT_GROUP_MIN` pairs of their
    (prompt, head) group (``keys.groups`` = [(start, stop, key, head)], ``keys.sums[key]`` its key
    side; prefix masks only) take :func:`~svfcheck.real.kernels.slot_group_sums`
    (:func:`_slot_group_sums`): the keys' ``w_k z_k`` through the row's Ṽ (and Ṽ D Q) in one GEMM
    for all such rows, then prefix accumulation. All others of the layer together
    (:func:`_rest_sums`): one ``N_i Ṽ`` product per pair (``N_i`` = row ``keys.nrow`` of
    ``keys.N``; one bmm over their gathered N and Ṽ rows, or per head one GEMM when each head has
    a single basis), the query side, ``X D Q`` in one GEMM per head and its contraction with F̂
    (:func:`~svfcheck.real.kernels.query_side_sums`, :func:`~svfcheck.real.kernels.row_dots`,
    which read the tables' flat rows ``order.rows`` in place). Both give the same sums to
    rounding (tested)."""
    tab = _sum_tables(plan)
    P, R = qh.shape[0], tab.Vt.shape[-1]
    tsum = torch.empty(P, R, dtype=plan.dtype)
    trsum = torch.empty(P, R, dtype=plan.dtype) if tab.Qb is not None else None
    done = _slot_group_sums(plan, order, keys, qh, tab, (tsum, trsum))
    rest = np.flatnonzero(~done)
    if len(rest):
        _rest_sums(plan, order, keys, qh, tab, rest, (tsum, trsum))
    return tsum, trsum


def _slot_group_sums(plan: LayerPlan, order: PairOrder, keys: KeySide, qh: torch.Tensor, tab: _SumTables,
                     out: tuple) -> np.ndarray:
    """:func:`_rotary_sums` of the pairs that share their table row with at least
    :data:`_SLOT_GROUP_MIN` others of their (prompt, head) group, written into ``out = (tsum,
    trsum)``; returns which pairs (P,) bool were done."""
    P, dh = qh.shape
    R = tab.Vt.shape[-1]
    tsum, trsum = out
    nkv = plan.cached.factors.kv_index.numel()
    runs: dict = {}
    done = np.zeros(P, dtype=bool)
    for s0, s1, key, h0 in keys.groups:
        b0 = key // nkv
        if b0 not in runs:  # per prompt: its mask's first key and each query's last, if a prefix run
            run = _prefix_run(plan.cap.visible[b0])
            runs[b0] = None if run is None else (run[0], (run[0] + run[1] - 1).numpy())
        pre = runs[b0]
        if pre is None:
            continue
        cs, wz = keys.sums[key].cs, keys.sums[key].wz
        gs = order.sl[s0:s1]
        big = np.bincount(gs)[gs] >= _SLOT_GROUP_MIN
        if not big.any():
            continue
        st, last_q = pre
        last = last_q[order.i[s0:s1]]
        bp = np.flatnonzero(big)
        perm = bp[np.lexsort((last[bp], gs[bp]))]  # by row, then by last key
        so = gs[perm]
        cut = np.flatnonzero(so[1:] != so[:-1]) + 1
        urows = so[np.concatenate([[0], cut])]
        ptr = np.concatenate([[0], cut, [len(so)]]).astype(np.int64)
        Vg = tab.Vt[h0].index_select(0, torch.as_tensor(urows))  # (G, dh, R)
        W = [Vg] + ([(Vg * tab.safe[h0][urows][:, None, :]) @ tab.Qb[h0]] if tab.Qb is not None else [])
        kmax = int(last[bp].max()) + 1
        BB = (wz[:kmax] @ torch.stack(W, 1).permute(2, 1, 0, 3).reshape(dh, -1)).view(kmax, len(W), len(urows), R)
        ts = tsum[s0:s1]
        kernels.slot_group_sums(BB.numpy(), cs.numpy(), int(st), ptr, perm, last, qh[s0:s1].numpy(), tab.F[h0].numpy(),
                                (tab.Fh if tab.Qb is not None else tab.F)[h0].numpy(), urows, plan.rd, keys.halves,
                                ts.numpy(), (trsum[s0:s1] if tab.Qb is not None else ts).numpy())
        done[s0:s1] |= big
    return done


def _rest_sums(plan: LayerPlan, order: PairOrder, keys: KeySide, qh: torch.Tensor, tab: _SumTables, rest: np.ndarray,
               out: tuple) -> None:
    """:func:`_rotary_sums` of the pairs ``rest`` (ascending), one ``N_i Ṽ`` product each,
    written into ``out = (tsum, trsum)``."""
    P, dh = qh.shape
    H, T = tab.Vt.shape[:2]
    R = tab.Vt.shape[-1]
    dtype = plan.dtype
    tsum, trsum = out
    e = keys.e
    Nflat = keys.N.view(-1, e * dh)
    all_rest = len(rest) == P
    Pr = len(rest)
    rr = order.rows[rest]
    qr = qh if all_rest else qh[torch.as_tensor(rest)]
    # the rest pairs, still head-major: each head's are a contiguous run, taken in chunks of at
    # most _REST_CHUNK pairs through preallocated scratch (the temporaries stay in cache: one
    # product over all of a layer's pairs at once ran ~1.5× slower, memory-bound)
    hcut = [(hh, int(np.searchsorted(rest, a)), int(np.searchsorted(rest, z))) for hh, a, z in order.heads_at]
    Vflat, Fflat, sflat = tab.Vt.view(H * T, dh, R), tab.F.view(H * T, dh, R), tab.safe.view(H * T, R)
    Fhflat = tab.Fh.view(H * T, dh, R) if tab.Qb is not None else None
    C = min(_REST_CHUNK, Pr)
    Vb, Mb = torch.empty(C, dh, R, dtype=dtype), torch.empty(C, e, R, dtype=dtype)
    XD = torch.empty((C, dh, R) if tab.Qb is not None else (0, 0, 0), dtype=dtype)
    XQ = torch.empty_like(XD)
    ts = tsum if all_rest else torch.empty(Pr, R, dtype=dtype)
    tr = (trsum if all_rest else torch.empty(Pr, R, dtype=dtype)) if tab.Qb is not None else None
    nrow_r = keys.nrow[rest]
    rr_t = torch.as_tensor(rr)
    Nb = torch.empty(C, e * dh, dtype=dtype)
    for hh, a0, z0 in hcut:
        for a in range(a0, z0, C):
            z = min(z0, a + C)
            c = z - a
            Nr = _take(Nflat, nrow_r[a:z], Nb).view(c, e, dh)
            if bool((rr[a:z] == rr[a]).all()):  # one basis (Δ=0 basis): one plain GEMM, no gather
                torch.mm(Nr.view(-1, dh), Vflat[int(rr[a])], out=Mb[:c].view(-1, R))
            else:
                torch.index_select(Vflat, 0, rr_t[a:z], out=Vb[:c])
                torch.bmm(Nr, Vb[:c], out=Mb[:c])  # (c, e, R): N_i ṽ_r
            kernels.query_side_sums(Mb[:c].numpy(), Fflat.numpy(), rr[a:z], qr[a:z].numpy(), sflat.numpy(), plan.rd, keys.halves,
                                    ts[a:z].numpy(), XD[:c].numpy())
            if tab.Qb is not None:
                torch.mm(XD[:c].view(-1, R), tab.Qb[hh], out=XQ[:c].view(-1, R))
                kernels.row_dots(XQ[:c].numpy(), Fhflat.numpy(), rr[a:z], tr[a:z].numpy())
    if not all_rest:
        tsum[torch.as_tensor(rest)] = ts
        if tab.Qb is not None:
            trsum[torch.as_tensor(rest)] = tr
