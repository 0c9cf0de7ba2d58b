"""The summed route, the default for RoPE / QK-norm layers (docs/math.md §3.14, §4.4): what is
reported needs the other keys only through ``Σ_k t_r(i, k)``, which is bilinear in key-side
data and so is summed over keys before the pair's basis is applied. Same numbers as the
per-key route to rounding (tested), ~5× cheaper on SmolLM2."""

from __future__ import annotations

import numpy as np
import torch

from .. import kernels
from ..svd import safe_singular_values
from .key_sums import _key_side
from .layout import _pair_order
from .output import _Out, _rel
from .plan import LayerPlan, head_gain, layer_inputs
from .rope import RopeTables, _rope_rows
from .rotary_sums import _rotary_sums


def _summed_layer(plan: LayerPlan, out: _Out) -> None:
    """Per-pair basis (RoPE offsets) and/or per-key QK-norm factors, without per-key terms.

    Everything reported depends on the other keys only through ``Σ_k t_r(i, k)`` (relative
    attention, both controls), which is bilinear in key-side data, so it is summed over keys
    *before* the pair's basis is applied: with ``λ_kr = cs_k · G_p[:, r]`` and
    ``β_kr = z_k · ṽ_r``, ``Σ_k w_k λ_kr β_kr = Σ_e G_p[e, r] (N_i ṽ_r)_e`` where
    ``N_i = Σ_{k visible to i} w_k cs_k ⊗ z_k`` (e × d_h) is shared by every pair of query i
    (one GEMM of the visibility mask with the keys' outer products). The basis control is
    ``Σ_k (λ_k Q')_r (β_k Q'')_r = (Q'ᵀ K_p Q'')_rr`` with ``K_p = G_pᵀ N_i Ṽ_p = F_pᵀ X_p``
    (R × R), evaluated without forming K_p as ``Σ_e (F_p Q')_er (X_p Q'')_er``: ``F_p Q'`` is
    cached per (layer, head, Δ) (:meth:`~svfcheck.real.svd_cache.SVDCache.control_table`) and
    ``X_p Q''`` is one GEMM over all pairs of the head. Cost per pair ≈ 2·e·d_h·R (+ 2·d_h·R² with
    the control) instead of m·(e + 2d_h)·R·2 for the per-key route.

    Gate: the model's logits of query i over its visible keys are recomputed from the extracted
    weights and the captured inputs (rotated, QK-normed query and keys: basis-free), the analysed
    key's logit replaced by ``Σ_r t_r(i, j)``; the error is the larger of (1) max over visible
    keys of |log_softmax(those logits) − log(model attention)| and (2) |Σ_r c_r − ℓ̃_j| with ℓ̃_j
    the relative logit of those logits — so both reported sums (eq. 1 at j, and the relative
    total over the keys) are checked against the model's own attention.

    Layout (:mod:`~svfcheck.real.decompose.layout`): the layer's pairs are taken together,
    head-major (then by prompt and query), so that each head's pairs and each (prompt, head)
    group are contiguous runs: the products with a head's own matrices (its Q's, ``G_k R_kᵀ``)
    are one GEMM per head on views, the compiled loops run once for the layer over the tables'
    flat (head·T + row) rows, and the key side is built once per (prompt, kv head). This is
    faster than one pass per (prompt, head) group, provided the per-pair products are cut into
    group-sized chunks (:data:`~svfcheck.real.decompose.rotary_sums._REST_CHUNK`).

    Key side: :func:`~svfcheck.real.decompose.key_sums._key_side`; per-pair key sums in the
    pair's basis (RoPE): :func:`~svfcheck.real.decompose.rotary_sums._rotary_sums`."""
    lh, cap, dtype, rd = plan.lh, plan.cap, plan.dtype, plan.rd
    L = layer_inputs(plan)
    A, Z, Y, rq, rk = L.A, L.Z, L.Y, L.rq, L.rk
    Ut_all, S_all, Vt_all, F_all = plan.cached.tables
    controls = plan.rotations is not None
    if lh.qk_norm:
        Kn = L.K * head_gain(lh.k_gain, dtype) / rk[..., None]  # the model's normed key
        Wz = Z / rk[..., None]  # key weight 1/rms(k_k) folded into z_k
    else:
        Kn, Wz = L.K, Z
    dh = lh.head_dim
    H, T, R = S_all.shape
    B, n = cap.visible.shape[:2]
    rope = None
    if rd:  # the model's rotations in dtype, and F's shared factor: F = G_k R_kᵀ Ṽ (svd_cache.LayerFactors.GRkT)
        rope = RopeTables.of(cap.cos, cap.sin, rd, dtype)
        cosf, sinf = rope.cos.reshape(B * n, -1), rope.sin.reshape(B * n, -1)
        GRkT = plan.cached.factors.GRkT.to(dtype)
    # the layer's pairs head-major, then by prompt and query (layout.PairOrder), and the key
    # side per (prompt, kv head): N (prefix or masked sums of w_k cs_k ⊗ z_k), the key features
    # cs, the rotated (normed) keys and their |.|, Σ z (key_sums.KeySide)
    order = _pair_order(plan)
    keys = _key_side(plan, order, Kn, Wz, rope)
    ii, rows, heads_at, P = order.ii, order.rows, order.heads_at, len(order)
    b_np, i_np, j_np = order.b, order.i, order.j
    b, h, i, j, g = order.tensors()
    vrow = cap.visible[b, i]  # (P, n)
    m = vrow.to(dtype).sum(-1)
    qh = A[b, h, i]  # (P, dh)
    if rd:  # Σ_k w_k λ_kᵀβ_k = Fᵀ X with X = D_qᵀ N_i Ṽ (the query side applied to Mk, no G formed)
        qh = _rope_rows(qh, cosf, sinf, b_np * n + i_np)
        tsum_raw, trsum_raw = _rotary_sums(plan, order, keys, qh)
        qj = _rope_rows(qh, cosf, sinf, b_np * n + j_np, inverse=True)
        # λ_jr = (R_jᵀ q̂)·F_r = ((R_jᵀ q̂) G_k R_kᵀ)·ṽ_r: through Ṽ with β below (F not read)
        wj = torch.empty_like(qj)
        for hh, a, z in heads_at:
            wj[a:z] = qj[a:z] @ GRkT[hh]
    else:  # no RoPE: λ does not depend on the key (e = 1) and each head has one basis row
        Nr = keys.N.view(-1, dh).index_select(0, torch.as_tensor(keys.nrow))  # (P, dh): N_i
        Mk, G = torch.empty(P, R, dtype=dtype), torch.empty(P, R, dtype=dtype)
        for _, a, z in heads_at:
            t0 = int(rows[a])
            Mk[a:z] = Nr[a:z] @ Vt_all.view(H * T, dh, R)[t0]  # N_i ṽ_r
            G[a:z] = qh[a:z] @ F_all.view(H * T, dh, R)[t0]
        lam_j = G
    zj = Z[b, g, j]  # (P, dh)
    # β at j, for the paper control Σ_visible β, and λ_j (RoPE): one pass over Ṽ
    zsum = torch.stack([keys.sums[k].zsum for k in keys.ukeys.tolist()]).view(-1, dh)[torch.as_tensor(keys.nrow)] if controls else None
    vecs = [zj] + ([zsum] if controls else []) + ([wj] if rd else [])
    bb = torch.empty(P, len(vecs), R, dtype=dtype)  # (P, 1-3, R), Ṽ's rows read in place
    kernels.row_vecmats(torch.stack(vecs, 1).numpy(), Vt_all.view(H * T, dh, R).numpy(), rows, bb.numpy())
    beta_j = bb[:, 0]
    beta_sum = bb[:, 1] if controls else None
    if rd:
        lam_j = bb[:, -1]
    if lh.qk_norm:
        qs = lh.scale / rq[b, h, i]  # (P,): scale/rms(q_i); key factor 1/rms(k) is in Wz and Kn
        nj = qs / rk[b, g, j]
    else:
        qs = torch.full((P,), lh.scale, dtype=dtype)
        nj = qs
    tj = nj[:, None] * lam_j * beta_j
    tsum = qs[:, None] * (tsum_raw if rd else G * Mk)
    c = _rel(tj, tsum, m)
    S = S_all.view(H * T, R)[torch.as_tensor(rows)]  # (P, R)
    out.terms[ii] = tj.numpy()
    out.c[ii] = c.numpy()
    out.S[ii] = S.numpy()
    # gate: the model's logits of query i, recomputed basis-free, with eq. 1 at the analysed key
    # (kernels.gate_rows: the masked reductions of those rows and of their |summands|)
    lg_j = tj.sum(-1)
    att = cap.attn[b, h, i].to(dtype)
    LG, LA = torch.empty(P, n, dtype=dtype), torch.empty(P, n, dtype=dtype)
    for a, z, key, _ in keys.groups:
        krot, kabs = keys.sums[key].krot, keys.sums[key].kabs
        torch.mm(qh[a:z], krot.T, out=LG[a:z])
        torch.mm(qh[a:z].abs(), kabs.T, out=LA[a:z])
    err, a_row = np.empty(P), np.empty(P)
    kernels.gate_rows(LG.numpy(), LA.numpy(), qs.numpy(), vrow.numpy(), att.numpy(), j_np, lg_j.numpy(),
                      c.sum(-1).numpy(), err, a_row)
    out.err[ii] = err
    out.amax[ii] = np.maximum(a_row, tj.abs().sum(-1).numpy())
    out.logit[ii] = lg_j.numpy()
    out.capped[ii] = out.logit[ii]  # no soft cap on this route (plan._route)
    out.att[ii] = att[torch.arange(P), j].numpy()
    if controls:
        Qb, Q1, Q2 = plan.rotations
        safe = safe_singular_values(S)
        # basis control: left (λ/s)Q, right (sβ)Q per key; summed over keys it is
        # diag(Qᵀ D⁻¹ K D Q) with K = Fᵀ X (R × R, never formed) and D = diag(s):
        # = Σ_e F̂[e, r]·(X D Q)[e, r] with F̂ = F D⁻¹ Q cached per (layer, head, Δ) and
        # X D Q one GEMM per head over its pairs (Q is the head's)
        lq, bq = lam_j / safe, beta_j * safe
        mu = torch.empty(P, 1, R, dtype=dtype)  # u_rᵀ x̃_i, Ũ's rows read in place
        kernels.row_vecmats(Y[b, h, i][:, None].numpy(), Ut_all.view(H * T, dh, R).numpy(), rows, mu.numpy())
        mu = mu[:, 0]
        relb = _rel(nj[:, None] * beta_j, qs[:, None] * beta_sum, m)
        trj, cp = torch.empty(P, R, dtype=dtype), torch.empty(P, R, dtype=dtype)
        trsum = trsum_raw.mul_(qs[:, None]) if rd else torch.empty(P, R, dtype=dtype)
        for hh, a, z in heads_at:
            trj[a:z] = nj[a:z, None] * (lq[a:z] @ Qb[hh]) * (bq[a:z] @ Qb[hh])
            if not rd:  # K = Gᵀ Mk has rank 1 (e = 1)
                trsum[a:z] = qs[a:z, None] * ((G[a:z] / safe[a:z]) @ Qb[hh]) * ((Mk[a:z] * safe[a:z]) @ Qb[hh])
            cp[a:z] = (mu[a:z] @ Q1[hh]) * S[a:z] * (relb[a:z] @ Q2[hh])
        out.cr[ii] = _rel(trj, trsum, m).numpy()
        out.cp[ii] = cp.numpy()
