"""Fused per-pair loops of the summed decomposition route (numba, compiled on first use).

The summed route (:func:`svfcheck.real.decompose.summed._summed_layer`) needs, per analysed pair p,
a few elementwise passes over d_h×R matrices that read rows of the per-(head, Δ) core
tables: the query side of the key sums, and contractions with ``F``, ``F̂`` and ``Ũ``. As
torch ops those are a dozen passes over (P, d_h, R) temporaries plus a gather (a copy) of
every table row a pair uses; here each pair's rows are read in place and every temporary
stays in cache (over ten times faster than the torch ops; benchmarks/README.md). The
GEMM-shaped products (``N_i Ṽ``, ``X D Q``) stay in torch (MKL), which runs them faster than
compiled loops.

Every loop accumulates each output in a fixed order (over the table row's first axis), so
the results are deterministic and do not depend on batching or threads. The loops release
the GIL (the layers run side by side on threads, :mod:`svfcheck.real.threads`). Arguments are
numpy views of contiguous tensors; shapes are checked by the callers' construction (no bounds
checks in compiled code), and ``slots`` must index rows of the table.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["query_side_sums", "slot_group_sums", "row_dots", "row_vecmats", "rope_rows", "prefix_rows", "gate_rows"]


@njit(nogil=True, cache=True)
def _query_x(M, q, p, rd, halves, x):  # pragma: no cover - compiled
    """``x = D_q(q[p])ᵀ M`` (d_h × R) for one pair's key-sum matrix M (e × R), in the row layouts
    of :func:`query_side_sums`; the one place this formula is written."""
    R = M.shape[1]
    dh = q.shape[1]
    h = rd // 2
    if halves:
        o_s = h + dh - rd  # first −sin row
        for a in range(h):
            qa = q[p, a]
            qb = q[p, a + h]
            for r in range(R):
                mc = M[a, r]
                ms = M[o_s + a, r]
                x[a, r] = qa * mc - qb * ms
                x[a + h, r] = qb * mc + qa * ms
        for a in range(rd, dh):
            qa = q[p, a]
            for r in range(R):
                x[a, r] = qa * M[h + a - rd, r]
    else:
        for a in range(rd):
            qa = q[p, a]
            qr = -q[p, a + h] if a < h else q[p, a - h]  # rot_half(q)[a]
            for r in range(R):
                x[a, r] = qa * M[a, r] + qr * M[dh + a, r]
        for a in range(rd, dh):
            qa = q[p, a]
            for r in range(R):
                x[a, r] = qa * M[a, r]


@njit(nogil=True, cache=True)
def query_side_sums(Mk, F, slots, q, safe, rd, halves, tsum, XD):  # pragma: no cover - compiled
    """For every pair p (table row ``t = slots[p]``): ``X = D_q(q_p)ᵀ Mk[p]`` (d_h × R), the
    query side of the key sums (see :func:`_query_x`: per rotary pair of dims
    (a, a + rd/2) the cos and −sin rows of Mk combine with the rotated query, pass-through rows
    are scaled by q), then ``tsum[p, r] = Σ_e F[t, e, r] X[e, r]`` and, when ``XD`` has rows,
    ``XD[p] = X diag(safe[t])``.

    ``Mk``: (P, e, R) with row layout [cos (h), pass-through (d_h − rd), −sin (h)] when
    ``halves`` (h = rd/2, e = d_h) else [cos (rd), pass-through, −sin (rd)] (e = d_h + rd);
    ``F``: (T, d_h, R); ``q``: (P, d_h); ``safe``: (T, R); ``tsum``: (P, R); ``XD``: (P, d_h, R)
    or empty."""
    P = Mk.shape[0]
    R = Mk.shape[2]
    dh = q.shape[1]
    want_xd = XD.shape[0] > 0
    x = np.empty((dh, R), Mk.dtype)
    for p in range(P):
        t = slots[p]
        _contract(Mk[p], F, t, q, p, rd, halves, x, tsum, p)  # leaves X in x
        if want_xd:
            for a in range(dh):
                for r in range(R):
                    XD[p, a, r] = x[a, r] * safe[t, r]


@njit(nogil=True, cache=True)
def row_dots(A, T, slots, out):  # pragma: no cover - compiled
    """``out[p, r] = Σ_e T[slots[p], e, r] A[p, e, r]`` (A: (P, E, R), T: (n_rows, E, R))."""
    P, E, R = A.shape
    for p in range(P):
        t = slots[p]
        for r in range(R):
            out[p, r] = 0.0
        for e in range(E):
            for r in range(R):
                out[p, r] += T[t, e, r] * A[p, e, r]


@njit(nogil=True, cache=True)
def row_vecmats(y, T, slots, out):  # pragma: no cover - compiled
    """``out[p, k, r] = Σ_d y[p, k, d] T[slots[p], d, r]`` (y: (P, K, D), T: (n_rows, D, R),
    out: (P, K, R)): K row vectors per pair times the pair's table row, read once."""
    P, K, D = y.shape
    R = T.shape[2]
    for p in range(P):
        t = slots[p]
        for k in range(K):
            for r in range(R):
                out[p, k, r] = 0.0
        for d in range(D):
            for k in range(K):
                yd = y[p, k, d]
                for r in range(R):
                    out[p, k, r] += yd * T[t, d, r]


@njit(nogil=True, cache=True)
def rope_rows(x, cos, sin, idx, inverse, out):  # pragma: no cover - compiled
    """``out[p] = R(idx[p]) x[p]`` (``inverse``: its transpose), the model's rotate-half RoPE
    on the first ``rd = cos.shape[1]`` dims with the captured tables' row ``idx[p]``:
    ``x[:rd]·cos + sgn·rot_half(x)·sin``, the other dims copied (x, out: (P, d_h))."""
    P, dh = x.shape
    rd = cos.shape[1]
    h = rd // 2
    sgn = -1.0 if inverse else 1.0
    for p in range(P):
        t = idx[p]
        for a in range(rd):
            ra = -x[p, a + h] if a < h else x[p, a - h]
            out[p, a] = x[p, a] * cos[t, a] + (sgn * ra) * sin[t, a]
        for a in range(rd, dh):
            out[p, a] = x[p, a]


@njit(nogil=True, cache=True)
def prefix_rows(a):  # pragma: no cover - compiled
    """In place: ``a[k] += a[k − 1]`` for k = 1, 2, … (a 2-D array's cumulative sum over rows,
    each row added in order: the same additions as a row-by-row numpy loop)."""
    for k in range(1, a.shape[0]):
        for c in range(a.shape[1]):
            a[k, c] += a[k - 1, c]


@njit(nogil=True, cache=True)
def gate_rows(LG, LA, qs, vis, att, j, lg_j, csum, err, amax):  # pragma: no cover - compiled
    """The summed route's gate for each pair p (query row of the recomputed logits):

    - ``ℓ_k = qs[p]·LG[p, k]`` over the visible keys k (``vis[p]``), its relative logit at the
      analysed key ``ℓ̃ = ℓ_j − (Σ_k ℓ_k − ℓ_j)/(m − 1)``;
    - with ``ℓ_j`` replaced by ``lg_j[p]`` (eq. 1's sum of terms), ``max_k |log_softmax(ℓ)_k −
      log att[p, k]|`` over visible keys with ``att > 0``;
    - ``err[p]`` = the larger of that and ``|csum[p] − ℓ̃|``; ``amax[p] = max_k |qs[p]|·LA[p, k]``
      over visible keys (the summand scale of ``gate_tolerance``).

    Reductions accumulate in float64. A NaN anywhere in a row makes that row's outputs NaN."""
    P, n = LG.shape
    nan = np.nan
    for p in range(P):
        s = qs[p]
        sa = abs(s)
        jp = j[p]
        bad = False
        tot = 0.0
        m = 0
        am = 0.0
        mx = -np.inf
        for k in range(n):
            if vis[p, k]:
                v = s * LG[p, k]
                tot += v
                m += 1
                a = sa * LA[p, k]
                if a != a or v != v:
                    bad = True
                if a > am:
                    am = a
                if k == jp:
                    v = lg_j[p]
                    if v != v:
                        bad = True
                if v > mx:
                    mx = v
        lj = s * LG[p, jp]
        rel = lj - (tot - lj) / (m - 1)
        se = 0.0
        for k in range(n):
            if vis[p, k]:
                v = lg_j[p] if k == jp else s * LG[p, k]
                se += np.exp(v - mx)
        lse = mx + np.log(se)
        e = abs(csum[p] - rel)
        if e != e:
            bad = True
        for k in range(n):
            if vis[p, k] and att[p, k] > 0:
                v = lg_j[p] if k == jp else s * LG[p, k]
                d = abs(v - lse - np.log(att[p, k]))
                if d != d:
                    bad = True
                if d > e:
                    e = d
        err[p] = nan if bad else e
        amax[p] = nan if bad else am


@njit(nogil=True, cache=True)
def _contract(M, F, t, q, p, rd, halves, x, out, o):  # pragma: no cover - compiled
    """``out[o, r] = Σ_a F[t, a, r] X[a, r]`` with ``X = D_q(q[p])ᵀ M`` (:func:`_query_x`, into
    the scratch ``x``), M: (e, R)."""
    _query_x(M, q, p, rd, halves, x)
    for r in range(x.shape[1]):
        out[o, r] = 0.0
    for a in range(x.shape[0]):
        for r in range(x.shape[1]):
            out[o, r] += F[t, a, r] * x[a, r]


@njit(nogil=True, cache=True)
def slot_group_sums(BB, cs, s0, ptr, order, last, q, F, Fh, tslots, rd, halves, tsum, trsum):  # pragma: no cover
    """The key sums of pairs that share a basis, by prefix over the keys in that basis.

    For every group g of pairs with one table row ``tslots[g]`` (pairs ``order[ptr[g]:ptr[g+1]]``
    by ascending last visible key), ``Mk_p = Σ_{k = s0}^{last[p]} cs_k ⊗ β_gk`` with
    ``β_gk = BB[k, 0, g]`` (the key's weighted z_k through the group's Ṽ) is accumulated key by
    key as the group's queries advance — 2·e·R operations per key instead of e·d_h·R per pair
    — and ``tsum[p] = Σ_e F·(D_q Mk_p)`` as in :func:`query_side_sums`. With ``BB.shape[1] == 2``
    also ``trsum[p] = Σ_e F̂·(D_q M̂k_p)`` from ``β̂_gk = BB[k, 1, g]`` (through ``Ṽ D Q``: the
    basis control's ``X D Q``). Requires every query to see the keys s0..last (a prefix mask)."""
    G = BB.shape[2]
    K = BB.shape[1]
    R = BB.shape[3]
    e = cs.shape[1]
    acc1 = np.empty((e, R), BB.dtype)
    acc2 = np.empty((e, R), BB.dtype)
    x = np.empty((q.shape[1], R), BB.dtype)
    for g in range(G):
        acc1[:, :] = 0.0
        acc2[:, :] = 0.0
        k = s0
        t = tslots[g]
        for ix in range(ptr[g], ptr[g + 1]):
            p = order[ix]
            while k <= last[p]:
                for a in range(e):
                    c = cs[k, a]
                    for r in range(R):
                        acc1[a, r] += c * BB[k, 0, g, r]
                if K == 2:
                    for a in range(e):
                        c = cs[k, a]
                        for r in range(R):
                            acc2[a, r] += c * BB[k, 1, g, r]
                k += 1
            _contract(acc1, F, t, q, p, rd, halves, x, tsum, p)
            if K == 2:
                _contract(acc2, Fh, t, q, p, rd, halves, x, trsum, p)
