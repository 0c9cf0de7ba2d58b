"""Exact sparse attention decomposition of real-model attention logits (MATH.md §3, eq. 1).

For an analysed pair (prompt b, layer l, head h, query i, key j) the head's logit against every
visible key k is split into d_h terms ``t_r(i, k) = scale · ν_ik · x̃_iᵀ Ω(Δ_k) v_r v_rᵀ x̃_k``
where ``Ω(Δ) = W̃_Q G_q R_Δ G_k W̃_Kᵀ`` and ``v_r`` are the right singular vectors of the
*basis* matrix: ``Ω(Δ_j)`` (``basis="pair"``, exact eq. 1 at k = j) or ``Ω(0)``
(``basis="zero"``, paper App. D). ``ν_ik = 1/(rms(q_i) rms(k_k))`` with QK-norm, else 1.
Since ``span{v_r}`` is the column span of ``W̃_K``, ``Σ_r t_r(i,k) = ℓ_ik`` exactly for every k.

Rotations are the model's own (captured ``cos, sin``); the basis offset Δ is exact in
float64 (``Δ · inv_freq``). Terms are computed in head space from the factorisation
``W̃ = Q R`` (``v_rᵀx̃ = ṽ_rᵀ R_k^{-T} b``), never forming a d×d matrix.

RoPE-free layers without QK-norm take a fast path: one SVD per head, terms as
``α_ir s_r β_kr`` for all tokens at once (cost ≈ the attention part of a forward pass).

Rotation controls (seeded, one Haar matrix per (layer, head) for each control):
(a) basis control — left ``x̃_iᵀ U Q``, right ``Qᵀ S Vᵀ x̃_k`` (same totals);
(b) paper control — ``U Q₁``, ``V Q₂`` with the original S (different matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import haar_orthogonal, reconstruction_count, rolls_tovee
from .capture import Capture
from .heads import LayerHeads, ModelHeads
from .svd import SVDCache, svd_cache
from .threads import num_threads

__all__ = ["Pairs", "Decomposition", "decompose", "top_attended_pairs", "check_rotary", "gate_tolerance"]


@dataclass(frozen=True, eq=False)
class Pairs:
    """Analysed pairs, parallel int arrays of equal length P."""

    prompt: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    query_pos: np.ndarray
    key_pos: np.ndarray

    @staticmethod
    def of(prompt, layer, head, query_pos, key_pos) -> "Pairs":
        arrs = [np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (prompt, layer, head, query_pos, key_pos)]
        P = max(a.shape[0] for a in arrs)
        arrs = [np.broadcast_to(a, (P,)).copy() for a in arrs]
        return Pairs(*arrs)

    def __len__(self) -> int:
        return self.prompt.shape[0]


@dataclass(frozen=True, eq=False)
class Decomposition:
    """Per-pair results (arrays of length P; ``(P, R)`` for per-term arrays, R = d_h).

    ``terms``: t_r(i, j) (SVD order); ``contributions``: c_r(j) (relative attention terms);
    ``logit`` = Σ terms (scaled, with the QK-norm factor); ``relative_attention`` = Σ c;
    ``attention``: the model's a_ij; ``keys``: visible key positions per pair; ``k`` is -1
    where ``relative_attention <= 0`` (undefined); Rolls–Tovee is NaN for an all-zero row. ``reconstruction_error`` per pair is the
    max over visible keys of |log_softmax(reconstructed logits) − log(model attention)|.
    ``*_rotated``: basis control (a); ``rolls_tovee_paper_control``: paper control (b).
    """

    pairs: Pairs
    basis: str
    attention: np.ndarray
    logit: np.ndarray
    relative_attention: np.ndarray
    terms: np.ndarray
    contributions: np.ndarray
    singular_values: np.ndarray
    n_keys: np.ndarray
    keys: tuple[np.ndarray, ...]
    rolls_tovee: np.ndarray
    k: np.ndarray
    contributions_rotated: np.ndarray | None
    rolls_tovee_rotated: np.ndarray | None
    k_rotated: np.ndarray | None
    contributions_paper_control: np.ndarray | None
    rolls_tovee_paper_control: np.ndarray | None
    reconstruction_error: np.ndarray
    max_reconstruction_error: float
    key_terms: tuple[np.ndarray, ...] | None = None  # per pair (m, R) when requested
    term_abs_max: np.ndarray | None = None  # per pair: max over visible keys k of Σ_r |t_r(i, k)|


def top_attended_pairs(cap: Capture, layers=None, heads=None, skip_first: bool = True) -> Pairs:
    """Every real query's top-attended visible key (excluding position 0 when ``skip_first``)
    in the given layers/heads (default all). Queries with no eligible key are skipped."""
    out = []
    L = cap.n_layers
    for l in range(L) if layers is None else layers:
        A = cap.attn[l].clone()
        vis = cap.visible[l].clone()
        if skip_first:
            vis[..., 0] = False
        A = torch.where(vis[:, None], A, torch.full_like(A, -1.0))
        H = A.shape[1]
        hs = range(H) if heads is None else heads
        for h in hs:
            best = A[:, h].argmax(-1)  # (B, n)
            ok = vis.any(-1) & cap.token_mask & (cap.visible[l].sum(-1) >= 2)
            b, i = torch.nonzero(ok, as_tuple=True)
            out.append(np.stack([b.numpy(), np.full(len(b), l), np.full(len(b), h), i.numpy(), best[b, i].numpy()]))
    arr = np.concatenate(out, axis=1) if out else np.zeros((5, 0), dtype=np.int64)
    return Pairs.of(*arr)


def _rot_half(x: torch.Tensor, rd: int) -> torch.Tensor:
    h = rd // 2
    return torch.cat([-x[..., h:rd], x[..., :h]], dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The model's rotation (``inverse``: its transpose) on the first ``cos.shape[-1]`` dims."""
    rd = cos.shape[-1]
    r = _rot_half(x, rd)
    sgn = -1.0 if inverse else 1.0
    rot = x[..., :rd] * cos + sgn * r * sin
    return torch.cat([rot, x[..., rd:]], dim=-1)


def check_rotary(heads: ModelHeads, cap: Capture, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` if a captured ``cos/sin`` is not ``a·cos(pos·inv_freq)`` (e.g. dynamic
    RoPE), which would make the per-offset basis R_Δ wrong."""
    for l, lh in enumerate(heads.layers):
        if lh.rotary is None:
            continue
        if cap.cos[l] is None or cap.cos[l].shape[-1] != lh.rotary.rotary_dim:
            got = None if cap.cos[l] is None else cap.cos[l].shape[-1]
            raise ValueError(f"layer {l}: captured RoPE covers {got} dims, the spec {lh.rotary.rotary_dim}")
        ang = cap.positions[..., None].double() * torch.as_tensor(lh.rotary.inv_freq)
        ang = torch.cat([ang, ang], -1)
        a = lh.rotary.attention_scaling
        err = max(float((cap.cos[l].double() - a * torch.cos(ang)).abs().max()), float((cap.sin[l].double() - a * torch.sin(ang)).abs().max()))
        if err > atol * max(1.0, float(cap.positions.max())) * a:
            raise ValueError(f"layer {l}: captured RoPE cos/sin differ from the extracted spec by {err:.2e}")


def _rt(c: np.ndarray) -> np.ndarray:
    """Rolls–Tovee per row; NaN for an all-zero row (e.g. a zero query vector)."""
    out = np.full(c.shape[0], np.nan)
    ok = np.any(c != 0, axis=-1)
    if ok.any():
        out[ok] = rolls_tovee(c[ok])
    return out


def _validate(heads: ModelHeads, cap: Capture, pairs: Pairs) -> None:
    if cap.n_layers != heads.n_layers:
        raise ValueError(f"capture has {cap.n_layers} layers, heads {heads.n_layers}")
    B, n = cap.token_mask.shape
    if len(pairs) == 0:
        raise ValueError("no pairs to decompose")
    for name, arr, hi in (("prompt", pairs.prompt, B), ("query_pos", pairs.query_pos, n), ("key_pos", pairs.key_pos, n)):
        bad = (arr < 0) | (arr >= hi)
        if bad.any():
            raise IndexError(f"{name} {int(arr[bad][0])} out of range 0..{hi - 1}")
    for l in np.unique(pairs.layer):
        heads.layer(int(l))
        hs = pairs.head[pairs.layer == l]
        heads.check(int(l), int(hs.max()))
        heads.check(int(l), int(hs.min()))
    tm = cap.token_mask[pairs.prompt, pairs.query_pos]
    if not bool(tm.all()):
        raise ValueError("some query positions are padding tokens")
    for l in np.unique(pairs.layer):
        s = pairs.layer == l
        vis = cap.visible[int(l)][pairs.prompt[s], pairs.query_pos[s], pairs.key_pos[s]]
        if not bool(vis.all()):
            k = int(np.flatnonzero(~vis.numpy())[0])
            raise ValueError(
                f"pair (prompt {pairs.prompt[s][k]}, layer {l}, query {pairs.query_pos[s][k]}, key "
                f"{pairs.key_pos[s][k]}): the key is not visible to the query"
            )
        m = cap.visible[int(l)][pairs.prompt[s], pairs.query_pos[s]].sum(-1)
        if bool((m < 2).any()):
            raise ValueError("relative attention needs at least 2 visible keys; some queries see only 1")


def _layer_inputs(lh: LayerHeads, X: torch.Tensor, f, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw queries (B, H, n, d_h) and keys (B, Hkv, n, d_h) in ``dtype``."""
    X = _aug(X, lh, dtype)
    A = torch.einsum("bnd,hde->bhne", X, f.W_Q.to(dtype))
    K = torch.einsum("bnd,hde->bhne", X, f.W_K.to(dtype))
    return A, K


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(x.pow(2).mean(-1) + eps)


def _rel(t_pair: torch.Tensor, t_sum: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return t_pair - (t_sum - t_pair) / (m - 1)[..., None]


class _Out:
    """Accumulates per-pair outputs by index."""

    def __init__(self, P: int, R: int, controls: bool, keep: bool):
        z = lambda *s: np.zeros(s)  # noqa: E731
        self.terms, self.c, self.S = z(P, R), z(P, R), z(P, R)
        self.logit, self.err, self.att = z(P), z(P), z(P)
        self.amax = z(P)  # max over visible keys of Σ_r |t_r(i, k)|
        self.cr = z(P, R) if controls else None
        self.cp = z(P, R) if controls else None
        self.key_terms: list | None = [None] * P if keep else None


def _gate(logits: torch.Tensor, vis: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Per row max |log_softmax(logits over visible) − log attn| over visible keys with attn > 0."""
    lg = logits.masked_fill(~vis, float("-inf"))
    ls = torch.log_softmax(lg, -1)
    ok = vis & (attn > 0)
    d = (ls - torch.log(attn.clamp_min(1e-300))).abs().masked_fill(~ok, 0.0)
    return d.amax(-1)


def _aug(X: torch.Tensor, lh: LayerHeads, dtype) -> torch.Tensor:
    X = X.to(dtype)
    if lh.has_bias:
        X = torch.cat([X, torch.ones(*X.shape[:-1], 1, dtype=dtype)], -1)
    return X


def _fast_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype):
    """RoPE-free, QK-norm-free layer: one basis per head, all tokens at once."""
    U, S, V = (t.to(dtype) for t in cache.basis(l))
    X = _aug(cap.hidden[l], lh, dtype)
    alpha = torch.einsum("bnd,hdr->bhnr", X, U)  # u_rᵀ x̃
    beta = torch.einsum("bnd,hdr->bhnr", X, V)  # v_rᵀ x̃
    vis = cap.visible[l].to(dtype)  # (B, n, n)
    bsum = vis[:, None] @ beta  # (B, H, n, R): Σ_visible k β_k
    m = cap.visible[l].sum(-1).to(dtype)  # (B, n)
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
    vrow = cap.visible[l][b, i]
    att = cap.attn[l][b, h, i].to(dtype)
    out.err[idx] = _gate(lg, vrow, att).numpy()
    lg_abs = (sc * (alpha.abs() * S[None, :, None, :]) @ beta.abs().transpose(-1, -2))[b, h, i]
    out.amax[idx] = lg_abs.masked_fill(~vrow, 0.0).amax(-1).numpy()
    out.logit[idx] = lg[torch.arange(len(b)), j].numpy()
    out.att[idx] = att[torch.arange(len(b)), j].numpy()
    if out.key_terms is not None:
        for q, p in enumerate(idx):
            out.key_terms[p] = (sc * (a_p[q] * s[q]) * beta[b[q], h[q]][vrow[q]]).numpy()
    if Qs is not None:  # rotate all tokens per head (one GEMM each), then gather the pairs
        Qb, Q1, Q2 = Qs[0][l], Qs[1][l], Qs[2][l]
        bS = beta * S[None, :, None, :]
        aQ, bSQ = alpha @ Qb, bS @ Qb
        out.cr[idx] = (sc * aQ[b, h, i] * _rel(bSQ[b, h, j], (vis[:, None] @ bSQ)[b, h, i], m[b, i])).numpy()
        aQ1, bQ2 = alpha @ Q1, beta @ Q2
        out.cp[idx] = (sc * aQ1[b, h, i] * s * _rel(bQ2[b, h, j], (vis[:, None] @ bQ2)[b, h, i], m[b, i])).numpy()


def _groups(idx: np.ndarray, pairs: Pairs, chunk: int):
    """Split ``idx`` into chunks of pairs sharing (prompt, head)."""
    key = pairs.prompt[idx] * 1_000_000 + pairs.head[idx]
    order = np.argsort(key, kind="stable")
    idx, key = idx[order], key[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    for g in np.split(idx, cuts):
        for s0 in range(0, len(g), chunk):
            yield g[s0 : s0 + chunk]


def _general_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, chunk):
    """Per-pair basis (RoPE offsets) and/or per-key QK-norm factors.

    Pairs are grouped by (prompt, head) so every per-key product is one GEMM over all keys:
    ``λ_pkr = x̃_iᵀΩ(Δ_k)v_r = cos_k·(q̂_p⊙F_pr) − sin_k·(rot(q̂_p)⊙F_pr)`` with
    ``F_pr = G_k R_kᵀ ṽ_r`` and ``β_pkr = v_rᵀx̃_k = z_k·ṽ_r``.
    """
    f = cache.factors(l)
    A, K = _layer_inputs(lh, cap.hidden[l], f, dtype)
    kv = f.kv_index
    Z = K @ f.R_k_inv.to(dtype)  # (B, Hkv, n, dh): Q_kᵀ x̃
    Y = A @ f.R_q_inv.to(dtype) if Qs is not None else None  # Q_qᵀ x̃
    if lh.qk_norm:
        rq, rk = _rms(A, lh.norm_eps), _rms(K, lh.norm_eps)
        A = A * lh.q_gain.to(dtype)
    pos = cap.positions
    rd = 0 if lh.rotary is None else lh.rotary.rotary_dim
    # all core SVDs this layer needs, looked up once
    b_all, i_all, j_all = (pairs.prompt[idx], pairs.query_pos[idx], pairs.key_pos[idx])
    d_all = (pos[b_all, j_all] - pos[b_all, i_all]).numpy() if basis == "pair" else np.zeros(len(idx), dtype=np.int64)
    Ut_all, S_all, Vt_all, F_all, rows = cache.core_lookup(l, d_all, dtype)
    slot = np.zeros(len(pairs), dtype=np.int64)
    slot[idx] = rows.numpy()
    for ii in _groups(idx, pairs, chunk):
        b0, h0 = int(pairs.prompt[ii[0]]), int(pairs.head[ii[0]])
        g0 = int(kv[h0])
        i = torch.as_tensor(pairs.query_pos[ii])
        j = torch.as_tensor(pairs.key_pos[ii])
        P = len(ii)
        ar = torch.arange(P)
        inv = torch.as_tensor(slot[ii])
        Ut, S, Vt = Ut_all[inv, h0], S_all[inv, h0], Vt_all[inv, h0]  # (P, dh, R)
        F = F_all[inv, h0]  # (P, dh, R): G_k W̃_Kᵀ v_r in head space, cached per (layer, Δ)
        qh = A[b0, h0, i]  # (P, dh)
        if rd:
            cos, sin = cap.cos[l][b0].to(dtype), cap.sin[l][b0].to(dtype)  # (n, rd)
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
        vrow = cap.visible[l][b0, i]
        vf = vrow.to(dtype)
        m = vf.sum(-1)
        tj = t[ar, j]
        out.terms[ii] = tj.numpy()
        out.c[ii] = _rel(tj, torch.einsum("pkr,pk->pr", t, vf), m).numpy()
        out.S[ii] = S.numpy()
        lg = t.sum(-1)
        att = cap.attn[l][b0, h0, i].to(dtype)
        out.err[ii] = _gate(lg, vrow, att).numpy()
        out.amax[ii] = t.abs().sum(-1).masked_fill(~vrow, 0.0).amax(-1).numpy()
        out.logit[ii] = lg[ar, j].numpy()
        out.att[ii] = att[ar, j].numpy()
        if out.key_terms is not None:
            for q, p in enumerate(ii):
                out.key_terms[p] = t[q][vrow[q]].numpy()
        del t
        if Qs is not None:
            Qb, Q1, Q2 = Qs[0][l][h0], Qs[1][l][h0], Qs[2][l][h0]
            safe = torch.where(S > 0, S, torch.ones_like(S))
            # basis control: (λ/s)Q ⊙ (sβ)Q per key, with s folded into Q
            tr = (lam @ (Qb[None] / safe[:, :, None])) * (beta @ (safe[:, :, None] * Qb[None]))
            if lh.qk_norm:
                tr *= nu[..., None]
            else:
                tr.mul_(lh.scale)
            out.cr[ii] = _rel(tr[ar, j], torch.einsum("pkr,pk->pr", tr, vf), m).numpy()
            del tr
            mu = (Y[b0, h0, i][:, None, :] @ Ut)[:, 0]  # (P, R): u_rᵀ x̃_i
            # paper control is linear in the key side: relative key vector first, then rotate
            wv = nu * vf if lh.qk_norm else lh.scale * vf
            nj = nu[ar, j] if lh.qk_norm else torch.full((P,), lh.scale, dtype=dtype)
            bj = nj[:, None] * beta[ar, j]
            rel = _rel(bj, torch.einsum("pkr,pk->pr", beta, wv), m)
            out.cp[ii] = ((mu @ Q1) * S * (rel @ Q2)).numpy()


def decompose(
    heads: ModelHeads,
    cap: Capture,
    pairs: Pairs,
    *,
    basis: str = "pair",
    controls: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    cache: SVDCache | None = None,
    method: str = "auto",
    keep_key_terms: bool = False,
    chunk: int | None = None,
    threads: int | None = None,
) -> Decomposition:
    """Decompose the logits of ``pairs`` exactly into d_h SVD terms (see module docstring).

    ``basis``: ``"pair"`` (SVD of Ω(Δ_j)) or ``"zero"`` (Ω(0)); identical for RoPE-free layers.
    ``method``: ``"auto"`` (fast path for RoPE-free, QK-norm-free layers) or ``"general"``.
    ``cache`` defaults to the shared per-model :func:`svd_cache` (core SVDs per (layer, Δ)).
    ``keep_key_terms`` also returns every visible key's terms per pair (memory: P·m·d_h).
    ``chunk``: pairs per batch in the general path (default: about 4M elements per tensor).
    ``threads``: torch intra-op threads while decomposing (default ``None``: the caller's
    setting). The work is a few large GEMMs per (prompt, head): on free cores 2 threads are
    ~2x faster (warm SmolLM2 prompt 3.1 s vs 6.1 s), on oversubscribed cores 1 thread is
    (5.0 s vs 12.3 s). The core SVDs always run on one thread (see :mod:`svfcheck.real.threads`).
    """
    if basis not in ("pair", "zero"):
        raise ValueError(f"basis must be 'pair' or 'zero'; got {basis!r}")
    if method not in ("auto", "general"):
        raise ValueError(f"method must be 'auto' or 'general'; got {method!r}")
    if not isinstance(pairs, Pairs):
        pairs = Pairs.of(*pairs)
    _validate(heads, cap, pairs)
    check_rotary(heads, cap)
    cache = cache if cache is not None else svd_cache(heads)
    R = heads.layers[0].head_dim
    P = len(pairs)
    Qs = None
    if controls:
        rng = np.random.default_rng(seed)
        Qs = tuple(
            [torch.as_tensor(haar_orthogonal(lh.head_dim, rng, size=(lh.n_heads,))).to(dtype) for lh in heads.layers]
            for _ in range(3)
        )
    out = _Out(P, R, controls, keep_key_terms)
    if chunk is None:
        chunk = max(1, 4_000_000 // (cap.token_mask.shape[1] * R))
    with torch.no_grad(), num_threads(threads):
        for l in np.unique(pairs.layer):
            l = int(l)
            lh = heads.layers[l]
            idx = np.flatnonzero(pairs.layer == l)
            if lh.head_dim != R:
                raise ValueError("all layers must share one head dimension")
            if method == "auto" and lh.rotary is None and not lh.qk_norm:
                _fast_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype)
            else:
                _general_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, chunk)
    keys = []
    for p in range(P):
        keys.append(torch.nonzero(cap.visible[int(pairs.layer[p])][pairs.prompt[p], pairs.query_pos[p]])[:, 0].numpy())
    rel = out.c.sum(-1)
    pos = rel > 0
    k = np.full(P, -1, dtype=np.int64)
    if pos.any():
        k[pos] = reconstruction_count(out.c[pos])
    kr = rtr = rtp = None
    if controls:
        kr = np.full(P, -1, dtype=np.int64)
        if pos.any():
            kr[pos] = reconstruction_count(out.cr[pos], rel[pos])
        rtr, rtp = _rt(out.cr), _rt(out.cp)
    return Decomposition(
        pairs=pairs,
        basis=basis,
        attention=out.att,
        logit=out.logit,
        relative_attention=rel,
        terms=out.terms,
        contributions=out.c,
        singular_values=out.S,
        n_keys=np.array([len(x) for x in keys]),
        keys=tuple(keys),
        rolls_tovee=_rt(out.c),
        k=k,
        contributions_rotated=out.cr,
        rolls_tovee_rotated=rtr,
        k_rotated=kr,
        contributions_paper_control=out.cp,
        rolls_tovee_paper_control=rtp,
        reconstruction_error=out.err,
        max_reconstruction_error=float(out.err.max()),
        key_terms=None if out.key_terms is None else tuple(out.key_terms),
        term_abs_max=out.amax,
    )


def gate_tolerance(
    d: Decomposition, dtype: torch.dtype = torch.float32, *, c_floor: float = 8.0, c_sum: float = 4.0
) -> np.ndarray:
    """Per-pair rounding bound on ``d.reconstruction_error`` when the model or the
    decomposition runs in ``dtype`` (use the coarser of the two): ``u·(c_floor + c_sum·√R·A)``
    with ``u = eps(dtype)``, ``R = d_h`` and ``A = d.term_abs_max`` (per pair, the largest
    ``Σ_r |t_r(i, k)|`` over visible keys — measured, not assumed).

    Derivation. The reference is the model's own attention row ``a_i·`` (its eager softmax
    output), the reconstruction is ``log_softmax(Σ_r t_r(i, ·))``. (1) Each logit is a sum of
    R products, in the model (``q·k`` over d_h coordinates) and here (R SVD terms); with the
    usual random-rounding model of a length-R sum (Higham, √n rule) each is off by at most
    ``≈ √R·u·Σ|summands|``; we use the measured ``Σ_r |t_r|`` for both sums and take one
    extra factor 2 for the two sources: ``|δℓ_k| ≤ 2√R·u·A``. (2) ``log_softmax`` is
    1-Lipschitz per coordinate in the max norm up to the shift: ``|δ log a_k| ≤ |δℓ_k| +
    max_k' |δℓ_k'| ≤ 2·max|δℓ|`` → ``c_sum = 4``. (3) The model's softmax (exp, a sum, a
    division) and our log of it add a floor of a few u even for tiny logits (measured 2u on
    tiny float32 models, 8u on Gemma3's QK-norm) → ``c_floor = 8``. Mishandled weights or
    RoPE offsets give errors of order 1 (≫ this bound), which the gate tests check.
    """
    if d.term_abs_max is None:
        raise ValueError("this Decomposition has no term_abs_max; recompute it with decompose()")
    u = torch.finfo(dtype).eps
    R = d.terms.shape[1]
    return u * (c_floor + c_sum * np.sqrt(R) * d.term_abs_max)
