"""Exact sparse attention decomposition of real-model attention logits (docs/math.md §3.2, §3.9–§3.15).

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
Other layers (RoPE, QK-norm) take the *summed* route by default: what is reported needs the
other keys only through ``Σ_k t_r(i, k)``, which is bilinear in key-side data and so is summed
over keys before the pair's basis is applied (:func:`_summed_layer`); ``per_key=True`` forms
every key's d_h terms instead (:func:`_general_layer`; also used for ``keep_key_terms``).
Both give the same numbers to rounding (tested); the summed route is ~5× cheaper on SmolLM2
(its per-pair loops compiled, :mod:`svfcheck.real.kernels`; pairs sharing a basis with many
others in their (prompt, head) sum their keys in that basis once, :func:`_rotary_sums`; each
layer's pairs in one pass, :func:`_summed_layer`).

Rotation controls (seeded, one Haar matrix per (layer, head) for each control):
(a) basis control — left ``x̃_iᵀ U Q``, right ``Qᵀ S Vᵀ x̃_k`` (same totals);
(b) paper control — ``U Q₁``, ``V Q₂`` with the original S (different matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..metrics import haar_orthogonal, reconstruction_count, rolls_tovee
from .capture import Capture
from .heads import LayerHeads, ModelHeads
from .svd import SVDCache, safe_singular_values, svd_cache
from . import kernels
from .threads import parallel_map

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
    max over visible keys of |log_softmax(reconstructed logits) − log(model attention)|; in the
    summed route (RoPE / QK-norm layers, default) the reconstructed logits are the query's
    logits recomputed from the extracted weights with ``Σ_r t_r(i, j)`` at the analysed key, and
    the error also covers |Σ_r c_r − ℓ̃_j| (the relative total over the keys, see
    :func:`_summed_layer`). ``term_abs_max``: the summand scale A of :func:`gate_tolerance`.
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
        # per-pair metrics of the contributions, filled by :meth:`metrics`
        self.rel, self.rt = z(P), z(P)
        self.k = np.full(P, -1, dtype=np.int64)
        self.kr = np.full(P, -1, dtype=np.int64) if controls else None
        self.rtr = z(P) if controls else None
        self.rtp = z(P) if controls else None

    def metrics(self, rows: np.ndarray) -> None:
        """Relative attention, k and Rolls–Tovee S (SVD basis and controls) of ``rows``, once their
        contributions are in: row by row, so any split of the pairs gives the same values. k is
        defined only where relative attention is positive (-1 elsewhere)."""
        c = self.c[rows]
        rel = self.rel[rows] = c.sum(-1)
        pos = rel > 0
        if pos.any():
            self.k[rows[pos]] = reconstruction_count(c[pos])
        self.rt[rows] = _rt(c)
        if self.cr is not None:
            cr = self.cr[rows]
            if pos.any():
                self.kr[rows[pos]] = reconstruction_count(cr[pos], rel[pos])
            self.rtr[rows], self.rtp[rows] = _rt(cr), _rt(self.cp[rows])


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


def _pair_offsets(cap: Capture, l: int, pos, b, i, j, basis: str, rotary: bool) -> tuple[np.ndarray, tuple | None]:
    """Basis offsets Δ = pos_j − pos_i of the pairs, and the smallest and largest offset any
    visible (query, key) of this capture has (``None`` without a per-pair basis): the per-layer
    core table is contiguous, so allocating that span once means later prompts of this length
    never grow (and copy) it; only the entries the pairs use are computed."""
    if basis != "pair" or not rotary:
        return np.zeros(len(b), dtype=np.int64), None
    d = (pos[b, j] - pos[b, i]).numpy()
    diff = pos[:, None, :] - pos[:, :, None]  # (B, n_query, n_key)
    vis = cap.visible[l]
    big = torch.iinfo(diff.dtype).max
    lo = int(torch.where(vis, diff, torch.full_like(diff, big)).min())
    hi = int(torch.where(vis, diff, torch.full_like(diff, -big)).max())
    return d, (lo, hi)


@dataclass(frozen=True, eq=False)
class _Layer:
    """What both RoPE / QK-norm routes read of one layer: raw queries ``A`` (with the QK-norm
    query gain applied) and keys ``K``, ``Z = Q_kᵀx̃`` and ``Y = Q_qᵀx̃`` (paper control only),
    the QK-norm rms of queries/keys, the rotary width, the kv-head map, the layer's core tables
    (head-major ``(Ũ, S, Ṽ, F)``) and each pair's row in them (``slot``, indexed by pair)."""

    A: torch.Tensor
    K: torch.Tensor
    Z: torch.Tensor
    Y: torch.Tensor | None
    rq: torch.Tensor | None
    rk: torch.Tensor | None
    rd: int
    kv: torch.Tensor
    tables: tuple
    slot: np.ndarray


class _Request(NamedTuple):
    """One layer's core entries, in the argument order of
    :meth:`~svfcheck.real.svd.SVDCache.prepare` (and ``core_lookup``)."""

    layer: int
    deltas: np.ndarray
    dtype: torch.dtype
    heads: np.ndarray
    span: tuple | None
    control: tuple | None  # (key, Q) of the basis-control table, or None


def _layer_request(lh, l, idx, pairs, cap, Qs, dtype, basis, seed, route) -> _Request | None:
    """The core entries the layer's route will look up, as a request for
    :meth:`~svfcheck.real.svd.SVDCache.prepare` / ``core_lookup`` (``None`` for the fast route):
    the pairs' offsets and heads, the prompt's offset span, and — for the summed route's basis
    control — the control table's key and rotations, so new entries come with their F̂ rows."""
    if route == "fast":
        return None
    d, span = _pair_offsets(cap, l, cap.positions, pairs.prompt[idx], pairs.query_pos[idx], pairs.key_pos[idx],
                            basis, lh.rotary is not None)
    ctl = route == "summed" and Qs is not None and lh.rotary is not None
    return _Request(l, d, dtype, pairs.head[idx], span, (seed, Qs[0][l]) if ctl else None)


def _prepare_layer(lh, l, cache, request: _Request | None):
    """After :meth:`~svfcheck.real.svd.SVDCache.prepare`: everything else the layer's route
    reads from ``cache`` (factors, converted copies of entries computed earlier in another
    dtype, the basis-control table), so that the route only reads. Returns the route's
    ``core_lookup`` (tables, rows), or ``None`` for the fast route."""
    if request is None:
        cache.basis(l)
        return None
    cache.factors(l)
    r = request
    *tables, rows = cache.core_lookup(l, r.deltas, r.dtype, heads=r.heads, span=r.span, control=r.control)
    if r.control is not None:
        cache.control_table(l, r.dtype, *r.control)
    return tuple(tables), rows


def _layer_setup(lh, l, idx, pairs, cap, cache, Qs, dtype, looked) -> _Layer:
    f = cache.factors(l)
    A, K = _layer_inputs(lh, cap.hidden[l], f, dtype)
    Z = K @ f.R_k_inv.to(dtype)  # (B, Hkv, n, dh): Q_kᵀ x̃
    Y = A @ f.R_q_inv.to(dtype) if Qs is not None else None  # Q_qᵀ x̃
    rq = rk = None
    if lh.qk_norm:
        rq, rk = _rms(A, lh.norm_eps), _rms(K, lh.norm_eps)
        A = A * lh.q_gain.to(dtype)
    rd = 0 if lh.rotary is None else lh.rotary.rotary_dim
    # all core SVDs this layer needs, looked up once, in the caller's thread (_prepare_layer)
    tables, rows = looked
    slot = np.zeros(len(pairs), dtype=np.int64)
    slot[idx] = rows.numpy()
    return _Layer(A, K, Z, Y, rq, rk, rd, f.kv_index, tuple(tables), slot)


def _general_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, chunk, looked):
    """Per-pair basis (RoPE offsets) and/or per-key QK-norm factors.

    Pairs are grouped by (prompt, head) so every per-key product is one GEMM over all keys:
    ``λ_pkr = x̃_iᵀΩ(Δ_k)v_r = cos_k·(q̂_p⊙F_pr) − sin_k·(rot(q̂_p)⊙F_pr)`` with
    ``F_pr = G_k R_kᵀ ṽ_r`` and ``β_pkr = v_rᵀx̃_k = z_k·ṽ_r``.
    """
    L = _layer_setup(lh, l, idx, pairs, cap, cache, Qs, dtype, looked)
    A, kv, Z, Y, rq, rk, rd, slot = L.A, L.kv, L.Z, L.Y, L.rq, L.rk, L.rd, L.slot
    Ut_all, S_all, Vt_all, F_all = L.tables
    for ii in _groups(idx, pairs, chunk):
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
            safe = safe_singular_values(S)
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


def _duplicated_halves(cos, sin, rd: int) -> bool:
    """Whether the captured tables repeat each angle over dims t and t + rd/2 exactly (HF's
    rotate-half tables do), so the key side needs one copy of each angle."""
    h = rd // 2
    return bool(torch.equal(cos[..., :h], cos[..., h:rd]) and torch.equal(sin[..., :h], sin[..., h:rd]))


def _key_features(cos, sin, rd: int, dh: int, halves: bool):
    """Key-side coordinates ``cs_k`` (n, e) such that ``λ_kr = cs_k · G_p[:, r]`` (see
    :func:`~svfcheck.real.kernels.query_side_sums`): ``[cos_k, 1, −sin_k]`` over (rotary, pass-through, rotary)
    dims, or with ``halves`` (HF duplicates each angle over dims t and t + rd/2) only one
    copy of each angle, e = d_h. Without RoPE (rd = 0) ``λ`` does not depend on the key: e = 1."""
    n = cos.shape[0] if cos is not None else None
    if rd == 0:
        return None
    h = rd // 2
    ones = torch.ones(n, dh - rd, dtype=cos.dtype)
    if halves:
        return torch.cat([cos[:, :h], ones, -sin[:, :h]], 1)
    return torch.cat([cos, ones, -sin], 1)


def _rotary_sums(qh, sums, groups, Nflat, nrow, i_np, sl, rows, heads_at, Vt_all, F_all, Fh_all, safe_all, Qb, rd, halves,
                 dtype):
    """Per pair of one layer (head-major order, ``heads_at`` = [(head, start, stop)]):
    ``Σ_e F·(D_q N_i Ṽ)`` (the key sum of its terms, before the query scale) and, with the basis
    control's rotations ``Qb`` (H, R, R), ``Σ_e F̂·(D_q N_i Ṽ D Q)``.

    Pairs whose table row is shared by at least :data:`_SLOT_GROUP_MIN` pairs of their
    (prompt, head) group (``groups`` = [(start, stop, key, head)], ``sums[key]`` its key side;
    prefix masks only) take :func:`~svfcheck.real.kernels.slot_group_sums`: the keys'
    ``w_k z_k`` through the row's Ṽ (and Ṽ D Q) in one GEMM for all such rows, then prefix
    accumulation. All others of the layer together: one ``N_i Ṽ`` product per pair (``N_i`` =
    row ``nrow`` of ``Nflat``; one bmm over their gathered N and Ṽ rows, or per head one GEMM
    when each head has a single basis), the query side, ``X D Q`` in one GEMM per head and its
    contraction with F̂ (:func:`~svfcheck.real.kernels.query_side_sums`,
    :func:`~svfcheck.real.kernels.row_dots`, which read the tables' flat rows ``rows`` in
    place). Both give the same sums to rounding (tested)."""
    P, dh = qh.shape
    H, T = Vt_all.shape[:2]
    R = Vt_all.shape[-1]
    tsum = torch.empty(P, R, dtype=dtype)
    trsum = torch.empty(P, R, dtype=dtype) if Qb is not None else None
    done = np.zeros(P, dtype=bool)
    e = Nflat.shape[1] // dh
    for s0, s1, key, h0 in groups:
        cs, _, _, _, pre, wz = sums[key]
        if pre is None:
            continue
        gs = sl[s0:s1]
        big = np.bincount(gs)[gs] >= _SLOT_GROUP_MIN
        if not big.any():
            continue
        st, last_q = pre
        last = last_q[i_np[s0:s1]]
        bp = np.flatnonzero(big)
        order = bp[np.lexsort((last[bp], gs[bp]))]  # by row, then by last key
        so = gs[order]
        cut = np.flatnonzero(so[1:] != so[:-1]) + 1
        urows = so[np.concatenate([[0], cut])]
        ptr = np.concatenate([[0], cut, [len(so)]]).astype(np.int64)
        Vg = Vt_all[h0].index_select(0, torch.as_tensor(urows))  # (G, dh, R)
        W = [Vg] + ([(Vg * safe_all[h0][urows][:, None, :]) @ Qb[h0]] if Qb is not None else [])
        kmax = int(last[bp].max()) + 1
        BB = (wz[:kmax] @ torch.stack(W, 1).permute(2, 1, 0, 3).reshape(dh, -1)).view(kmax, len(W), len(urows), R)
        ts = tsum[s0:s1]
        kernels.slot_group_sums(BB.numpy(), cs.numpy(), int(st), ptr, order, last, qh[s0:s1].numpy(), F_all[h0].numpy(),
                                (Fh_all if Qb is not None else F_all)[h0].numpy(), urows, rd, halves,
                                ts.numpy(), (trsum[s0:s1] if Qb is not None else ts).numpy())
        done[s0:s1] |= big
    rest = np.flatnonzero(~done)
    if not len(rest):
        return tsum, trsum
    all_rest = len(rest) == P
    Pr = len(rest)
    rr = rows[rest]
    qr = qh if all_rest else qh[torch.as_tensor(rest)]
    # the rest pairs, still head-major: each head's are a contiguous run, taken in chunks of at
    # most _REST_CHUNK pairs through preallocated scratch (the temporaries stay in cache: one
    # product over all of a layer's pairs at once ran ~1.5× slower, memory-bound)
    hcut = [(hh, int(np.searchsorted(rest, a)), int(np.searchsorted(rest, z))) for hh, a, z in heads_at]
    Vflat, Fflat, sflat = Vt_all.view(H * T, dh, R), F_all.view(H * T, dh, R), safe_all.view(H * T, R)
    Fhflat = Fh_all.view(H * T, dh, R) if Qb is not None else None
    C = min(_REST_CHUNK, Pr)
    Vb, Mb = torch.empty(C, dh, R, dtype=dtype), torch.empty(C, e, R, dtype=dtype)
    XD = torch.empty((C, dh, R) if Qb is not None else (0, 0, 0), dtype=dtype)
    XQ = torch.empty_like(XD)
    ts = tsum if all_rest else torch.empty(Pr, R, dtype=dtype)
    tr = (trsum if all_rest else torch.empty(Pr, R, dtype=dtype)) if Qb is not None else None
    nrow_r = nrow[rest]
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
            kernels.query_side_sums(Mb[:c].numpy(), Fflat.numpy(), rr[a:z], qr[a:z].numpy(), sflat.numpy(), rd, halves,
                                    ts[a:z].numpy(), XD[:c].numpy())
            if Qb is not None:
                torch.mm(XD[:c].view(-1, R), Qb[hh], out=XQ[:c].view(-1, R))
                kernels.row_dots(XQ[:c].numpy(), Fhflat.numpy(), rr[a:z], tr[a:z].numpy())
    if not all_rest:
        tsum[torch.as_tensor(rest)] = ts
        if Qb is not None:
            trsum[torch.as_tensor(rest)] = tr
    return tsum, trsum


def _rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, idx: np.ndarray, inverse: bool = False):
    """:func:`_rope` of each row ``x[p]`` with the tables' row ``idx[p]`` (compiled, no gathers)."""
    out = torch.empty_like(x)
    kernels.rope_rows(x.contiguous().numpy(), cos.numpy(), sin.numpy(), idx, inverse, out.numpy())
    return out


def _rows(t: torch.Tensor, h: int, inv: torch.Tensor) -> torch.Tensor:
    """Rows ``inv`` of head ``h`` of a head-major table (H, T, ...), gathered through its flat 2-D
    view (several times faster than ``t[h].index_select(0, inv)`` on a 3-D slice); the per-key
    route's gathers (the summed route reads the flat tables in place)."""
    H, T = t.shape[:2]
    return t.view(H * T, -1).index_select(0, inv + h * T).view(len(inv), *t.shape[2:])


def _take(t: torch.Tensor, i: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """Rows ``i`` of ``t``: a view when they are consecutive (the usual case: one pair per query,
    queries in order), else gathered into ``out[:len(i)]`` (preallocated scratch)."""
    c = len(i)
    if c and i[-1] - i[0] == c - 1 and (np.diff(i) == 1).all():
        return t[int(i[0]) : int(i[0]) + c]
    return torch.index_select(t, 0, torch.as_tensor(i), out=out[:c])


def _prefix_run(vis: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """``(s, cnt)`` when every query i of the boolean mask ``vis`` (n_query, n_key) sees exactly
    the keys ``s .. s + cnt[i] − 1`` (causal attention, also with left padding; bidirectional
    with right padding), else ``None``."""
    n = vis.shape[-1]
    cnt = vis.sum(-1)
    seen = torch.nonzero(vis.any(0))
    s = int(seen[0]) if len(seen) else 0
    ar = torch.arange(n)
    if torch.equal(vis, (ar[None, :] >= s) & (ar[None, :] < s + cnt[:, None])):
        return s, cnt
    return None


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


def _summed_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, seed, looked):
    """Per-pair basis (RoPE offsets) and/or per-key QK-norm factors, without per-key terms.

    Everything reported depends on the other keys only through ``Σ_k t_r(i, k)`` (relative
    attention, both controls), which is bilinear in key-side data, so it is summed over keys
    *before* the pair's basis is applied: with ``λ_kr = cs_k · G_p[:, r]`` and
    ``β_kr = z_k · ṽ_r``, ``Σ_k w_k λ_kr β_kr = Σ_e G_p[e, r] (N_i ṽ_r)_e`` where
    ``N_i = Σ_{k visible to i} w_k cs_k ⊗ z_k`` (e × d_h) is shared by every pair of query i
    (one GEMM of the visibility mask with the keys' outer products). The basis control is
    ``Σ_k (λ_k Q')_r (β_k Q'')_r = (Q'ᵀ K_p Q'')_rr`` with ``K_p = G_pᵀ N_i Ṽ_p = F_pᵀ X_p``
    (R × R), evaluated without forming K_p as ``Σ_e (F_p Q')_er (X_p Q'')_er``: ``F_p Q'`` is
    cached per (layer, head, Δ) (:meth:`~svfcheck.real.svd.SVDCache.control_table`) and
    ``X_p Q''`` is one GEMM over all pairs of the head. Cost per pair ≈ 2·e·d_h·R (+ 2·d_h·R² with
    the control) instead of m·(e + 2d_h)·R·2 for the per-key route.

    Gate: the model's logits of query i over its visible keys are recomputed from the extracted
    weights and the captured inputs (rotated, QK-normed query and keys: basis-free), the analysed
    key's logit replaced by ``Σ_r t_r(i, j)``; the error is the larger of (1) max over visible
    keys of |log_softmax(those logits) − log(model attention)| and (2) |Σ_r c_r − ℓ̃_j| with ℓ̃_j
    the relative logit of those logits — so both reported sums (eq. 1 at j, and the relative
    total over the keys) are checked against the model's own attention.

    Layout: the layer's pairs are taken together, head-major (then by prompt and query), so that
    each head's pairs and each (prompt, head) group are contiguous runs: the products with a
    head's own matrices (its Q's, ``G_k R_kᵀ``) are one GEMM per head on views, the compiled loops
    run once for the layer over the tables' flat (head·T + row) rows, and the key side is built
    once per (prompt, kv head). This is faster than one pass per (prompt, head) group, provided
    the per-pair products are cut into group-sized chunks (:data:`_REST_CHUNK`)."""
    L = _layer_setup(lh, l, idx, pairs, cap, cache, Qs, dtype, looked)
    A, kv, Z, Y, rq, rk, rd, slot = L.A, L.kv, L.Z, L.Y, L.rq, L.rk, L.rd, L.slot
    Ut_all, S_all, Vt_all, F_all = L.tables
    Fh_all = cache.control_table(l, dtype, seed, Qs[0][l]) if (Qs is not None and rd) else None
    safe_all = safe_singular_values(S_all) if Fh_all is not None else S_all  # S_all: a placeholder, unread
    if lh.qk_norm:
        Kn = L.K * lh.k_gain.to(dtype) / rk[..., None]  # the model's normed key
        Wz = Z / rk[..., None]  # key weight 1/rms(k_k) folded into z_k
    else:
        Kn, Wz = L.K, Z
    dh = lh.head_dim
    H, T, R = S_all.shape
    B, n = cap.token_mask.shape
    halves = _duplicated_halves(cap.cos[l], cap.sin[l], rd) if rd else False
    if rd:  # the model's rotations in dtype, and F's shared factor: F = G_k R_kᵀ Ṽ (svd.LayerFactors.GRkT)
        cos_l, sin_l = cap.cos[l].to(dtype), cap.sin[l].to(dtype)
        cosf, sinf = cos_l.reshape(B * n, -1), sin_l.reshape(B * n, -1)
        GRkT = cache.factors(l).GRkT.to(dtype)
    # the layer's pairs head-major, then by prompt and query: every head's pairs and every
    # (prompt, head) group are contiguous runs, so per-head products work on views and
    # everything else runs once for the layer
    ii = idx[np.lexsort((pairs.query_pos[idx], pairs.prompt[idx], pairs.head[idx]))]
    P = len(ii)
    b_np, h_np, i_np, j_np = pairs.prompt[ii], pairs.head[ii], pairs.query_pos[ii], pairs.key_pos[ii]
    g_np = kv.numpy()[h_np]
    b, h, i, j, g = (torch.as_tensor(x) for x in (b_np, h_np, i_np, j_np, g_np))
    sl = slot[ii]  # each pair's row in its head's table
    rows = h_np * T + sl  # ... and in the flat (H·T, ...) tables, read in place by the compiled loops
    cut = np.flatnonzero(np.diff(h_np)) + 1
    heads_at = [(int(h_np[a]), int(a), int(z)) for a, z in zip(np.r_[0, cut], np.r_[cut, P])]
    gkey = b_np * H + h_np
    gcut = np.flatnonzero(np.diff(gkey)) + 1
    # key side per (prompt, kv head): N (prefix or masked sums of w_k cs_k ⊗ z_k), the key features
    # cs, the rotated (normed) keys and their |.|, Σ z, the prefix run; N stacked for one gather
    kvk = b_np * kv.numel() + g_np
    ukeys, kid = np.unique(kvk, return_inverse=True)
    e = (dh if halves else dh + rd) if rd else 1  # key-feature width (_key_features)
    Nst = torch.empty(len(ukeys), n, e * dh, dtype=dtype)
    sums: dict = {}
    for k, key in enumerate(ukeys.tolist()):
        b0, g0 = divmod(key, kv.numel())
        vis = cap.visible[l][b0]  # (n, n)
        if rd:
            cs = _key_features(cos_l[b0], sin_l[b0], rd, dh, halves)
            torch.mul(cs[:, :, None], Wz[b0, g0][:, None, :], out=Nst[k].view(n, e, dh))
            krot = _rope(Kn[b0, g0], cos_l[b0], sin_l[b0])
            N, zs = _key_sums(vis, Nst[k], Wz[b0, g0], overwrite=True)  # O is our scratch: Nst[k]
            run = _prefix_run(vis)
            pre = None if run is None else (run[0], (run[0] + run[1] - 1).numpy())  # first, last key per query
        else:
            cs, krot, pre = None, Kn[b0, g0], None
            N, zs = _key_sums(vis, Wz[b0, g0], Wz[b0, g0])
        if N.data_ptr() != Nst[k].data_ptr():
            Nst[k].copy_(N)
        sums[key] = (cs, krot, krot.abs(), zs, pre, Wz[b0, g0])
    groups = [(int(a), int(z), int(kvk[a]), int(h_np[a])) for a, z in zip(np.r_[0, gcut], np.r_[gcut, P])]
    nrow = kid * n + i_np  # each pair's N_i row of Nst
    vrow = cap.visible[l][b, i]  # (P, n)
    m = vrow.to(dtype).sum(-1)
    qh = A[b, h, i]  # (P, dh)
    Qb = Qs[0][l] if Qs is not None else None
    if rd:  # Σ_k w_k λ_kᵀβ_k = Fᵀ X with X = D_qᵀ N_i Ṽ (the query side applied to Mk, no G formed)
        qh = _rope_rows(qh, cosf, sinf, b_np * n + i_np)
        tsum_raw, trsum_raw = _rotary_sums(qh, sums, groups, Nst.view(-1, e * dh), nrow, i_np, sl, rows, heads_at,
                                           Vt_all, F_all, Fh_all, safe_all, Qb, rd, halves, dtype)
        qj = _rope_rows(qh, cosf, sinf, b_np * n + j_np, inverse=True)
        # λ_jr = (R_jᵀ q̂)·F_r = ((R_jᵀ q̂) G_k R_kᵀ)·ṽ_r: through Ṽ with β below (F not read)
        wj = torch.empty_like(qj)
        for hh, a, z in heads_at:
            wj[a:z] = qj[a:z] @ GRkT[hh]
    else:  # no RoPE: λ does not depend on the key (e = 1) and each head has one basis row
        Nr = Nst.view(-1, dh).index_select(0, torch.as_tensor(nrow))  # (P, dh): N_i
        Mk, G = torch.empty(P, R, dtype=dtype), torch.empty(P, R, dtype=dtype)
        for _, a, z in heads_at:
            t0 = int(rows[a])
            Mk[a:z] = Nr[a:z] @ Vt_all.view(H * T, dh, R)[t0]  # N_i ṽ_r
            G[a:z] = qh[a:z] @ F_all.view(H * T, dh, R)[t0]
        lam_j = G
    zj = Z[b, g, j]  # (P, dh)
    # β at j, for the paper control Σ_visible β, and λ_j (RoPE): one pass over Ṽ
    zsum = torch.stack([sums[k][3] for k in ukeys.tolist()]).view(-1, dh)[torch.as_tensor(nrow)] if Qs is not None else None
    vecs = [zj] + ([zsum] if Qs is not None else []) + ([wj] if rd else [])
    bb = torch.empty(P, len(vecs), R, dtype=dtype)  # (P, 1-3, R), Ṽ's rows read in place
    kernels.row_vecmats(torch.stack(vecs, 1).numpy(), Vt_all.view(H * T, dh, R).numpy(), rows, bb.numpy())
    beta_j = bb[:, 0]
    beta_sum = bb[:, 1] if Qs is not None else None
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
    att = cap.attn[l][b, h, i].to(dtype)
    LG, LA = torch.empty(P, n, dtype=dtype), torch.empty(P, n, dtype=dtype)
    for a, z, key, _ in groups:
        _, krot, kabs, _, _, _ = sums[key]
        torch.mm(qh[a:z], krot.T, out=LG[a:z])
        torch.mm(qh[a:z].abs(), kabs.T, out=LA[a:z])
    err, a_row = np.empty(P), np.empty(P)
    kernels.gate_rows(LG.numpy(), LA.numpy(), qs.numpy(), vrow.numpy(), att.numpy(), j_np, lg_j.numpy(),
                      c.sum(-1).numpy(), err, a_row)
    out.err[ii] = err
    out.amax[ii] = np.maximum(a_row, tj.abs().sum(-1).numpy())
    out.logit[ii] = lg_j.numpy()
    out.att[ii] = att[torch.arange(P), j].numpy()
    if Qs is not None:
        Q1, Q2 = Qs[1][l], Qs[2][l]
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


_ROTATIONS: dict = {}  # (seed, layer shapes, dtype) -> the controls' Haar matrices (a few calls' worth)


def _control_rotations(heads: ModelHeads, seed: int, dtype) -> tuple:
    """The seeded Haar matrices of both controls, ``(basis, paper Q₁, paper Q₂)``, each a list
    over layers of (n_heads, d_h, d_h): drawn in a fixed order from ``default_rng(seed)``, so
    the same seed gives the same rotations for every prompt; cached (drawing them costs ~90 QRs
    for a 30-layer model, comparable to a forward pass)."""
    key = (int(seed), tuple((lh.head_dim, lh.n_heads) for lh in heads.layers), dtype)
    if key not in _ROTATIONS:
        rng = np.random.default_rng(seed)
        qs = tuple(
            [torch.as_tensor(haar_orthogonal(lh.head_dim, rng, size=(lh.n_heads,))).to(dtype) for lh in heads.layers]
            for _ in range(3)
        )
        if len(_ROTATIONS) >= 8:
            _ROTATIONS.pop(next(iter(_ROTATIONS)))
        _ROTATIONS[key] = qs
    return _ROTATIONS[key]


def _visible_keys(cap: Capture, pairs: Pairs) -> tuple[list[np.ndarray], np.ndarray]:
    """Per pair, the key positions visible to its query (ascending), and their counts.

    Where a (layer, prompt) mask is a prefix run (:func:`_prefix_run`: causal attention, also
    padded) each pair's keys are a read-only view of one shared ``arange`` (tens of thousands
    of pairs per prompt: much cheaper than one array each); other masks (sliding windows,
    arbitrary) take their own array per pair."""
    keys: list = [None] * len(pairs)
    n_keys = np.zeros(len(pairs), dtype=np.int64)
    ar = np.arange(cap.token_mask.shape[1])
    ar.flags.writeable = False
    for l in np.unique(pairs.layer):
        sel_l = np.flatnonzero(pairs.layer == l)
        for b in np.unique(pairs.prompt[sel_l]):
            sel = sel_l[pairs.prompt[sel_l] == b]
            vis = cap.visible[int(l)][int(b)]
            run = _prefix_run(vis)
            if run is not None:
                s, cnt = run[0], run[1].numpy()
                for q, c in zip(sel.tolist(), cnt[pairs.query_pos[sel]].tolist()):
                    keys[q] = ar[s : s + c]
                n_keys[sel] = cnt[pairs.query_pos[sel]]
                continue
            rows = vis[pairs.query_pos[sel]].numpy()  # (p, n)
            r, c = np.nonzero(rows)
            cnt = rows.sum(1)
            for q, ks in zip(sel, np.split(c, np.cumsum(cnt)[:-1])):
                keys[q] = ks
            n_keys[sel] = cnt
    return keys, n_keys


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
    per_key: bool = False,
    chunk: int | None = None,
    threads: int | None = None,
) -> Decomposition:
    """Decompose the logits of ``pairs`` exactly into d_h SVD terms (see module docstring).

    ``basis``: ``"pair"`` (SVD of Ω(Δ_j)) or ``"zero"`` (Ω(0)); identical for RoPE-free layers.
    ``method``: ``"auto"`` (fast path for RoPE-free, QK-norm-free layers) or ``"general"``.
    ``cache`` defaults to the shared per-model :func:`svd_cache` (core SVDs per (layer, head, Δ)).
    ``keep_key_terms`` also returns every visible key's terms per pair (memory: P·m·d_h).
    ``per_key``: in RoPE / QK-norm layers, form every visible key's d_h terms (``m·d_h`` per
    pair; the gate then compares the per-key reconstructed logits themselves) instead of the
    default summed route, which needs the other keys only through their sum (about 4× fewer
    operations on SmolLM2; same numbers to rounding, tested). Implied by ``keep_key_terms``.
    ``chunk``: pairs per batch in the per-key path (default: about 4M elements per tensor).
    ``threads``: how many layers are decomposed side by side, each on one thread (default
    ``None``: every core this process may use, :func:`~svfcheck.real.threads.svd_workers`;
    ``1``: one after another in the caller's thread). The work is a few GEMMs and compiled
    loops per layer (per (prompt, head) in the per-key route), which run better as independent
    single-threaded streams than as one stream on two intra-op threads — and, with no per-op
    synchronisation, they stay fast on busy cores. The results do not depend on ``threads``
    (every layer is computed on one thread; tested). The core SVDs are computed first, in the caller's thread, on all cores
    (see :mod:`svfcheck.real.threads`); torch's thread setting is restored afterwards.
    """
    if basis not in ("pair", "zero"):
        raise ValueError(f"basis must be 'pair' or 'zero'; got {basis!r}")
    if method not in ("auto", "general"):
        raise ValueError(f"method must be 'auto' or 'general'; got {method!r}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be >= 1 or None; got {threads!r}")
    if not isinstance(pairs, Pairs):
        pairs = Pairs.of(*pairs)
    _validate(heads, cap, pairs)
    check_rotary(heads, cap)
    cache = cache if cache is not None else svd_cache(heads)
    R = heads.layers[0].head_dim
    P = len(pairs)
    Qs = _control_rotations(heads, seed, dtype) if controls else None
    out = _Out(P, R, controls, keep_key_terms)
    if chunk is None:
        chunk = max(1, 4_000_000 // (cap.token_mask.shape[1] * R))
    plan = []
    for l in np.unique(pairs.layer):
        l = int(l)
        lh = heads.layers[l]
        if lh.head_dim != R:
            raise ValueError("all layers must share one head dimension")
        idx = np.flatnonzero(pairs.layer == l)
        if method == "auto" and lh.rotary is None and not lh.qk_norm:
            route = "fast"
        else:
            route = "per_key" if (per_key or keep_key_terms) else "summed"
        plan.append((l, lh, idx, route))
    with torch.no_grad():
        # 1. fill the cache in this thread (cold core SVDs run on every core inside), so that
        # 2. the layers, which then only read it, can run side by side on one thread each
        # (the new core SVDs of all layers in one pooled run: a few per layer still use every core)
        requests = [_layer_request(lh, l, idx, pairs, cap, Qs, dtype, basis, seed, route) for l, lh, idx, route in plan]
        cache.prepare([r for r in requests if r is not None])
        looked = [_prepare_layer(lh, l, cache, r) for (l, lh, _, _), r in zip(plan, requests)]

        def run(item):
            (l, lh, idx, route), lk = item
            with torch.no_grad():
                if route == "fast":
                    _fast_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype)
                elif route == "per_key":
                    _general_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, chunk, lk)
                else:
                    _summed_layer(lh, l, idx, pairs, cap, cache, Qs, out, dtype, basis, seed, lk)
                out.metrics(idx)  # per row: here, on the layer's worker, instead of after all layers

        parallel_map(run, list(zip(plan, looked)), workers=threads)
    keys, n_keys = _visible_keys(cap, pairs)
    return Decomposition(
        pairs=pairs,
        basis=basis,
        attention=out.att,
        logit=out.logit,
        relative_attention=out.rel,
        terms=out.terms,
        contributions=out.c,
        singular_values=out.S,
        n_keys=n_keys,
        keys=tuple(keys),
        rolls_tovee=out.rt,
        k=out.k,
        contributions_rotated=out.cr,
        rolls_tovee_rotated=out.rtr,
        k_rotated=out.kr,
        contributions_paper_control=out.cp,
        rolls_tovee_paper_control=out.rtp,
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
    ``Σ_r |t_r(i, k)|`` over visible keys — measured, not assumed; in the summed route, which
    does not form per-key terms, the larger of ``Σ_r |t_r(i, j)|`` and the largest
    ``scale·ν·Σ_e |q̂_e k̂_e|`` over visible keys, the summands of the recomputed logits).

    Summed route: its relative total ``Σ_r c_r`` sums the m keys in another order; averaged
    over m − 1 keys its rounding is below the per-logit bound (random-rounding model:
    ``≈ √(e·d_h/m)·u·A`` against ``4√R·u·A``), so the same bound covers it.

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
