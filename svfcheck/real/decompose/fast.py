"""The fast route: RoPE-free, QK-norm-free layers, one basis per head (docs/math.md §3.2, §4.4):
terms ``scale·α_ir s_r β_kr`` with ``α = Uᵀx̃``, ``β = Vᵀx̃`` for all tokens at once (cost ≈
the attention part of a forward pass)."""

from __future__ import annotations

import torch

from .gate import _gate
from .output import _Out, _rel
from .plan import LayerPlan, _aug


def _fast_layer(plan: LayerPlan, out: _Out) -> None:
    """RoPE-free, QK-norm-free layer: one basis per head, all tokens at once."""
    lh, idx, pairs, cap, dtype = plan.lh, plan.idx, plan.pairs, plan.cap, plan.dtype
    U, S, V = (t.to(dtype) for t in plan.cached.basis)
    X = _aug(cap.hidden, lh, dtype)
    alpha = torch.einsum("bnd,hdr->bhnr", X, U)  # u_rᵀ x̃
    beta = torch.einsum("bnd,hdr->bhnr", X, V)  # v_rᵀ x̃
    vis = cap.visible.to(dtype)  # (B, n, n)
    bsum = vis[:, None] @ beta  # (B, H, n, R): Σ_visible k β_k
    m = cap.visible.sum(-1).to(dtype)  # (B, n)
    b, h, i, j = (torch.as_tensor(getattr(pairs, a)[idx]) for a in ("prompt", "head", "query_pos", "key_pos"))
    s = S[h]
    a_p, bj = alpha[b, h, i], beta[b, h, j]
    brel = bj - (bsum[b, h, i] - bj) / (m[b, i] - 1)[:, None]
    sc = lh.scale
    out.terms[idx] = (sc * a_p * s * bj).numpy()
    out.c[idx] = (sc * a_p * s * brel).numpy()
    out.S[idx] = s.numpy()
    # gate on the analysed query rows: logits over all keys from the terms, (B, H, n, n)
    lg = (sc * (alpha * S[None, :, None, :]) @ beta.transpose(-1, -2))[b, h, i]
    vrow = cap.visible[b, i]
    att = cap.attn[b, h, i].to(dtype)
    out.err[idx] = _gate(lg, vrow, att).numpy()
    lg_abs = (sc * (alpha.abs() * S[None, :, None, :]) @ beta.abs().transpose(-1, -2))[b, h, i]
    out.amax[idx] = lg_abs.masked_fill(~vrow, 0.0).amax(-1).numpy()
    out.logit[idx] = lg[torch.arange(len(b)), j].numpy()
    out.capped[idx] = out.logit[idx]  # no soft cap on this route (plan._route)
    out.att[idx] = att[torch.arange(len(b)), j].numpy()
    if out.key_terms is not None:
        for q, p in enumerate(idx):
            out.key_terms[p] = (sc * (a_p[q] * s[q]) * beta[b[q], h[q]][vrow[q]]).numpy()
    if plan.rotations is not None:  # rotate all tokens per head (one GEMM each), then gather the pairs
        Qb, Q1, Q2 = plan.rotations
        bS = beta * S[None, :, None, :]
        aQ, bSQ = alpha @ Qb, bS @ Qb
        out.cr[idx] = (sc * aQ[b, h, i] * _rel(bSQ[b, h, j], (vis[:, None] @ bSQ)[b, h, i], m[b, i])).numpy()
        aQ1, bQ2 = alpha @ Q1, beta @ Q2
        out.cp[idx] = (sc * aQ1[b, h, i] * s * _rel(bQ2[b, h, j], (vis[:, None] @ bQ2)[b, h, i], m[b, i])).numpy()
