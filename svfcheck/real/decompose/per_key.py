"""The per-key route: every visible key's d_h terms (docs/math.md §3.9, §3.12, §4.4). Taken with
``per_key=True`` or ``keep_key_terms=True``; the gate then compares the per-key reconstructed
logits themselves (§3.14)."""

from __future__ import annotations

import numpy as np
import torch

from ..svd import safe_singular_values
from .gate import _gate
from .output import _Out, _rel
from .plan import LayerPlan, layer_inputs
from .rope import _rope, _rot_half
from .types import Pairs


def _groups(idx: np.ndarray, pairs: Pairs, chunk: int):
    """Split ``idx`` into chunks of pairs sharing (prompt, head)."""
    key = pairs.prompt[idx] * 1_000_000 + pairs.head[idx]
    order = np.argsort(key, kind="stable")
    idx, key = idx[order], key[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    for g in np.split(idx, cuts):
        for s0 in range(0, len(g), chunk):
            yield g[s0 : s0 + chunk]


def _rows(t: torch.Tensor, h: int, inv: torch.Tensor) -> torch.Tensor:
    """Rows ``inv`` of head ``h`` of a head-major table (H, T, ...), gathered through its flat 2-D
    view (several times faster than ``t[h].index_select(0, inv)`` on a 3-D slice); the per-key
    route's gathers (the summed route reads the flat tables in place)."""
    H, T = t.shape[:2]
    return t.view(H * T, -1).index_select(0, inv + h * T).view(len(inv), *t.shape[2:])


def _cap(lg: torch.Tensor, cap: float | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(κ, capped logits)`` of pre-cap logits ``lg`` under the soft cap ``cap·tanh(ℓ/cap)``:
    ``κ = capped/ℓ`` ∈ (0, 1] (1 at ℓ = 0), the positive factor by which the cap scales all
    of a logit's terms (docs/math.md §3.21); ``(None, lg)`` without a cap."""
    if cap is None:
        return None, lg
    lc = cap * torch.tanh(lg / cap)
    kappa = torch.where(lg == 0, torch.ones_like(lg), lc / torch.where(lg == 0, torch.ones_like(lg), lg))
    return kappa, lc


def _per_key_layer(plan: LayerPlan, out: _Out) -> None:
    """Per-pair basis (RoPE offsets) and/or per-key QK-norm factors; soft-capped layers.

    Pairs are grouped by (prompt, head) so every per-key product is one GEMM over all keys:
    ``λ_pkr = x̃_iᵀΩ(Δ_k)v_r = cos_k·(q̂_p⊙F_pr) − sin_k·(rot(q̂_p)⊙F_pr)`` with
    ``F_pr = G_k R_kᵀ ṽ_r`` and ``β_pkr = v_rᵀx̃_k = z_k·ṽ_r``. With a logit cap the terms are
    those of the pre-cap logit; relative attention and both controls weight key k's terms by
    ``κ_ik`` (:func:`_cap`), and the gate compares the capped logits (docs/math.md §3.21).
    """
    lh, pairs, cap, dtype, rd = plan.lh, plan.pairs, plan.cap, plan.dtype, plan.rd
    L = layer_inputs(plan)
    A, Z, Y, rq, rk = L.A, L.Z, L.Y, L.rq, L.rk
    kv, slot = plan.cached.factors.kv_index, plan.cached.slot
    Ut_all, S_all, Vt_all, F_all = plan.cached.tables
    for ii in _groups(plan.idx, pairs, plan.chunk):
        b0, h0 = int(pairs.prompt[ii[0]]), int(pairs.head[ii[0]])
        g0 = int(kv[h0])
        i = torch.as_tensor(pairs.query_pos[ii])
        j = torch.as_tensor(pairs.key_pos[ii])
        P = len(ii)
        ar = torch.arange(P)
        inv = torch.as_tensor(slot[ii])
        Ut, S, Vt, F = (_rows(t, h0, inv) for t in (Ut_all, S_all, Vt_all, F_all))  # (P, dh, R)
        # F: G_k W̃_Kᵀ v_r in head space, cached per (layer, Δ)
        qh = A[b0, h0, i]  # (P, dh)
        if rd:
            cos, sin = cap.cos[b0].to(dtype), cap.sin[b0].to(dtype)  # (n, rd)
            qh = _rope(qh, cos[i], sin[i])
            cs = torch.cat([torch.ones(cos.shape[0], qh.shape[1], dtype=dtype), -sin], 1)
            cs[:, :rd] = cos
            G = torch.cat([qh[:, :, None] * F, _rot_half(qh, rd)[:, :, None] * F[:, :rd]], 1)
            lam = torch.einsum("ke,per->pkr", cs, G)  # one GEMM over all keys
        else:
            lam = qh[:, None, :] @ F  # (P, 1, R), the same for every key
        beta = torch.einsum("ke,per->pkr", Z[b0, g0], Vt)  # (P, n, R)
        if lh.qk_norm:
            nu = lh.scale / (rq[b0, h0, i][:, None] * rk[b0, g0][None, :])  # (P, n)
            t = nu[..., None] * lam * beta
        else:
            nu = torch.full((P, 1), lh.scale, dtype=dtype)
            t = lam * beta
            t.mul_(lh.scale)
        vrow = cap.visible[b0, i]
        vf = vrow.to(dtype)
        m = vf.sum(-1)
        tj = t[ar, j]
        lg = t.sum(-1)  # the (pre-cap) logits
        kappa, lc = _cap(lg, lh.softcap)
        wv = vf if kappa is None else vf * kappa  # each key's weight in the relative terms: κ_ik
        kj = 1.0 if kappa is None else kappa[ar, j][:, None]
        out.terms[ii] = tj.numpy()
        out.c[ii] = _rel(kj * tj, torch.einsum("pkr,pk->pr", t, wv), m).numpy()
        out.S[ii] = S.numpy()
        att = cap.attn[b0, h0, i].to(dtype)
        out.err[ii] = _gate(lc, vrow, att).numpy()
        out.amax[ii] = t.abs().sum(-1).masked_fill(~vrow, 0.0).amax(-1).numpy()
        out.logit[ii] = lg[ar, j].numpy()
        out.capped[ii] = lc[ar, j].numpy()
        out.att[ii] = att[ar, j].numpy()
        if out.key_terms is not None:
            for q, p in enumerate(ii):
                out.key_terms[p] = t[q][vrow[q]].numpy()
        del t
        if plan.rotations is not None:
            Qb, Q1, Q2 = (Q[h0] for Q in plan.rotations)
            safe = safe_singular_values(S)
            # basis control: (λ/s)Q ⊙ (sβ)Q per key, with s folded into Q
            tr = (lam @ (Qb[None] / safe[:, :, None])) * (beta @ (safe[:, :, None] * Qb[None]))
            if lh.qk_norm:
                tr *= nu[..., None]
            else:
                tr.mul_(lh.scale)
            out.cr[ii] = _rel(kj * tr[ar, j], torch.einsum("pkr,pk->pr", tr, wv), m).numpy()
            del tr
            mu = (Y[b0, h0, i][:, None, :] @ Ut)[:, 0]  # (P, R): u_rᵀ x̃_i
            # paper control is linear in the key side: relative key vector first, then rotate
            wv = nu * wv if lh.qk_norm else lh.scale * wv
            nj = nu[ar, j] if lh.qk_norm else torch.full((P,), lh.scale, dtype=dtype)
            bj = kj * nj[:, None] * beta[ar, j]
            rel = _rel(bj, torch.einsum("pkr,pk->pr", beta, wv), m)
            out.cp[ii] = ((mu @ Q1) * S * (rel @ Q2)).numpy()
