"""All-heads SVD of ``Ω = W̃_Q M W̃_Kᵀ`` by the factored route (docs/math.md §4).

``M`` is the d_h×d_h middle matrix: identity, or ``G_q R_Δ G_k`` with RoPE offset Δ and
QK-norm gains. Routes (all return the same U, S, V up to round-off):

- ``"cholesky"`` (default, fastest): ``W = Q R`` with ``R`` the Cholesky factor of the Gram
  ``WᵀW``; ``Q`` is never formed, ``U = W_Q R_q⁻¹ Ũ``.
- ``"qr"``: reduced QR ``W = Q R``; ``U = Q_q Ũ``.
- ``"dense"``: reference; forms the D×D matrix per head and takes its SVD (slow).
- ``"three_svd"``: TransformerLens ``FactoredMatrix.svd`` style (SVD of A, of B, of the middle).

In both factored routes the core ``C = R_q M R_kᵀ = Ũ S Ṽᵀ`` and ``V = W_K R_k⁻¹ Ṽ``.
Biases enter through the augmented coordinate ``x̃ = [x; 1]`` (D = d + 1).

The per-(layer, head, Δ) core cache the decomposition reads (docs/math.md §4.3) is
:mod:`svfcheck.real.svd_cache`.

**Sign convention**: for every r the entry of largest magnitude of ``u_r`` (first one on a
tie) is made positive, and ``v_r`` is flipped with it, so ``u_r s_r v_rᵀ`` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .heads import LayerHeads, ModelHeads, norm_maps, rope_matrix

__all__ = [
    "ROUTES",
    "HeadsSVD",
    "factor",
    "factored_svd",
    "dense_svd",
    "three_svd",
    "sign_fix",
    "middle_matrix",
    "all_heads_svd",
    "safe_singular_values",
    "core_svd",
    "CORE_SVD_ORTH_TOL",
]

ROUTES = ("cholesky", "qr", "dense", "three_svd")


@dataclass(frozen=True, eq=False)
class HeadsSVD:
    """SVD of every head: ``Ω[l, h] = U[l, h] diag(S[l, h]) V[l, h]ᵀ``.

    ``U``, ``V``: (L, H, D, d_h); ``S``: (L, H, d_h) descending. ``augmented``: D = d + 1,
    the last coordinate multiplies the constant 1 of ``x̃ = [x; 1]``. ``delta``: RoPE offset.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    augmented: bool
    route: str
    delta: int
    layers: tuple[int, ...]


def sign_fix(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the sign convention (largest-|.| entry of each u_r positive) over the last two axes."""
    idx = U.abs().argmax(dim=-2, keepdim=True)
    sgn = torch.sign(torch.gather(U, -2, idx))
    sgn = torch.where(sgn == 0, torch.ones_like(sgn), sgn)
    return U * sgn, V * sgn


def factor(W: torch.Tensor, route: str = "cholesky") -> tuple[torch.Tensor | None, torch.Tensor]:
    """``W = Q R`` (R upper triangular, d_h×d_h) over leading batch axes. Returns ``(Q, R)``;
    ``Q`` is ``None`` for the Cholesky route (never formed)."""
    if route == "qr":
        Q, R = torch.linalg.qr(W, mode="reduced")
        return Q, R
    if route == "cholesky":
        G = W.transpose(-1, -2) @ W
        L, info = torch.linalg.cholesky_ex(G)
        if bool((info != 0).any()):
            raise np.linalg.LinAlgError("Gram matrix not positive definite (rank-deficient W); use route='qr'")
        return None, L.transpose(-1, -2)
    raise ValueError(f"factor route must be 'cholesky' or 'qr'; got {route!r}")


def safe_singular_values(S: torch.Tensor) -> torch.Tensor:
    """``S`` with zeros replaced by 1: the divisor the basis control uses when it moves ``s_r``
    between the two sides of a term (a zero singular value's term is 0 either way)."""
    return torch.where(S > 0, S, torch.ones_like(S))


#: Certificate of :func:`core_svd`'s fast route: max |(ŨᵀŨ − I)_ab| allowed. With V orthonormal
#: (eigh) and Ũ = C V S⁻¹, ``C = Ũ S Vᵀ`` holds to rounding, so ‖ŨᵀŨ − I‖₂ ≤ d_h·tol bounds
#: the backward error: every singular value within d_h·tol·σ_max (Weyl) — 6.4e-11·σ_max at
#: d_h = 64 (LAPACK's gesdd: a small multiple of u·σ_max). Cores failing it take gesdd.
CORE_SVD_ORTH_TOL = 1e-12


def core_svd(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Ũ, S, Ṽ)`` with ``C = Ũ diag(S) Ṽᵀ`` (S descending) for a batch of small float64
    cores (..., d_h, d_h), about 2× faster than ``torch.linalg.svd`` (LAPACK gesdd) at d_h = 64.

    Ṽ and S² come from the symmetric eigendecomposition of the Gram ``CᵀC`` (Ṽ orthonormal to
    rounding, which is all the decomposition's exactness needs), ``Ũ = C Ṽ S⁻¹``. Squaring C
    loses accuracy in the small singular values of ill-conditioned cores, so each result is
    certified: ``max|ŨᵀŨ − I| ≤`` :data:`CORE_SVD_ORTH_TOL` (a backward-error bound, see
    there), and the cores that fail it — ill-conditioned or rank-deficient ones (measured on
    SmolLM2-135M, every third layer: 64% of layer 0's cores, whose condition numbers reach
    ~4e3, 0–15% elsewhere) — are recomputed with ``torch.linalg.svd``. Per matrix, so batching and chunking
    do not change any result."""
    if C.shape[0] == 0:
        return C.clone(), C.new_zeros(C.shape[:-1]), C.clone()
    ev, V = torch.linalg.eigh(C.transpose(-1, -2) @ C)
    ev, V = ev.flip(-1), V.flip(-1)
    S = ev.clamp_min(0).sqrt()
    U = (C @ V).div_(safe_singular_values(S)[..., None, :])
    eye = torch.eye(C.shape[-1], dtype=C.dtype)
    err = (U.transpose(-1, -2) @ U - eye).abs().amax((-2, -1))
    bad = ~(err <= CORE_SVD_ORTH_TOL)  # also NaN
    if bool(bad.any()):
        Ub, Sb, Vhb = torch.linalg.svd(C[bad])
        U[bad], S[bad], V[bad] = Ub, Sb, Vhb.transpose(-1, -2)
    return U, S, V


def _apply_inv(W: torch.Tensor, Q: torch.Tensor | None, R: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``W R⁻¹ X`` (= ``Q X``)."""
    if Q is not None:
        return Q @ X.to(Q.dtype)
    Y = torch.linalg.solve_triangular(R.to(X.dtype), X, upper=True)
    return W @ Y.to(W.dtype)


def factored_svd(
    WQ: torch.Tensor,
    WK: torch.Tensor,
    middle: torch.Tensor | None = None,
    route: str = "cholesky",
    core_dtype: torch.dtype | None = None,
    kv_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``WQ · middle · WKᵀ`` without forming it. ``WQ`` (..., H, D, d_h); ``WK``
    (..., Hkv, D, d_h) factored once per key head and mapped by ``kv_index`` (H,) when given.
    ``middle`` broadcasts against (..., H, d_h, d_h). Returns sign-fixed ``U, S, V``."""
    Qq, Rq = factor(WQ, route)
    Qk, Rk = factor(WK, route)
    if kv_index is not None:
        Rk = Rk[..., kv_index, :, :]
        Qk = None if Qk is None else Qk[..., kv_index, :, :]
        WK = WK[..., kv_index, :, :]
    cd = core_dtype or WQ.dtype
    C = Rq.to(cd)
    if middle is not None:
        C = C @ middle.to(cd)
    C = C @ Rk.to(cd).transpose(-1, -2)
    Ut, S, Vth = torch.linalg.svd(C)
    U = _apply_inv(WQ, Qq, Rq, Ut)
    V = _apply_inv(WK, Qk, Rk, Vth.transpose(-1, -2))
    U, V = sign_fix(U, V)
    return U, S.to(WQ.dtype), V


def dense_svd(WQ, WK, middle=None, kv_index=None, dtype=None):
    """Reference: form ``Ω`` (D×D) head by head and take its SVD; top d_h triplets."""
    if kv_index is not None:
        WK = WK[..., kv_index, :, :]
    dt = dtype or WQ.dtype
    lead = WQ.shape[:-2]
    dh = WQ.shape[-1]
    wq = WQ.reshape(-1, *WQ.shape[-2:]).to(dt)
    wk = WK.expand(*lead, *WK.shape[-2:]).reshape(-1, *WK.shape[-2:]).to(dt)
    mid = None if middle is None else torch.as_tensor(middle).to(dt).expand(*lead, dh, dh).reshape(-1, dh, dh)
    Us, Ss, Vs = [], [], []
    for i in range(wq.shape[0]):
        a = wq[i] if mid is None else wq[i] @ mid[i]
        omega = a @ wk[i].T
        u, s, vh = torch.linalg.svd(omega)
        Us.append(u[:, :dh])
        Ss.append(s[:dh])
        Vs.append(vh[:dh].T)
    U = torch.stack(Us).reshape(*lead, -1, dh)
    V = torch.stack(Vs).reshape(*lead, -1, dh)
    S = torch.stack(Ss).reshape(*lead, dh)
    U, V = sign_fix(U, V)
    return U, S, V


def three_svd(WQ, WK, middle=None, kv_index=None):
    """TransformerLens-style: SVD(A), SVD(B), SVD of the small middle (``FactoredMatrix.svd``)."""
    if kv_index is not None:
        WK = WK[..., kv_index, :, :]
    A = WQ if middle is None else WQ @ middle.to(WQ.dtype)
    B = WK.transpose(-1, -2)
    Ua, Sa, Vha = torch.linalg.svd(A, full_matrices=False)
    Ub, Sb, Vhb = torch.linalg.svd(B, full_matrices=False)
    mid = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
    Um, Sm, Vhm = torch.linalg.svd(mid)
    U = Ua @ Um
    V = Vhb.transpose(-1, -2) @ Vhm.transpose(-1, -2)
    U, V = sign_fix(U, V)
    return U, Sm, V


def middle_matrix(lh: LayerHeads, delta: int | np.ndarray = 0) -> torch.Tensor | None:
    """``G_q R_Δ G_k`` (float64) for offsets ``delta`` — shape (d_h, d_h) for a scalar, else
    (n_Δ, d_h, d_h); ``None`` when the layer has neither RoPE nor QK-norm. A QK-norm that is not
    one diagonal for every head (per-head gains, LayerNorm's centring; docs/math.md §3.19) gives
    ``L_q[h]ᵀ R_Δ L_k[h]`` per query head (:func:`~svfcheck.real.heads.norm_maps`): shape
    (n_heads, d_h, d_h), or (n_Δ, n_heads, d_h, d_h)."""
    if lh.rotary is None and not lh.qk_norm:
        return None
    scalar = np.ndim(delta) == 0
    M = rope_matrix(lh.rotary, lh.head_dim, np.atleast_1d(delta))
    if lh.norm_shared:
        M = lh.q_gain.double()[:, None] * M * lh.k_gain.double()[None, :]
    elif lh.qk_norm:
        Lq, Lk = norm_maps(lh)
        M = Lq.transpose(-1, -2)[None] @ M[:, None] @ Lk[None]
    return M[0] if scalar else M


def all_heads_svd(
    heads: ModelHeads,
    *,
    route: str = "cholesky",
    delta: int = 0,
    core_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
) -> HeadsSVD:
    """SVD of every head's ``Ω̃(Δ) = W̃_Q G_q R_Δ G_k W̃_Kᵀ`` batched over [layer, head] (with
    per-head QK-norm maps ``W̃_Q L_qᵀ R_Δ L_k W̃_Kᵀ``, docs/math.md §3.19).

    Requires uniform layers (same shapes); ``dtype`` casts the weights first (default: model
    dtype). ``core_dtype=torch.float64`` does the small core SVD in float64.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown SVD route {route!r}; choose one of {ROUTES}")
    if not heads.uniform:
        raise ValueError("layers differ in shape; call per layer with layer_svd")
    pairs = [lh.augmented(dtype) for lh in heads.layers]
    WQ = torch.stack([p[0] for p in pairs])
    WK = torch.stack([p[1] for p in pairs])
    lh0 = heads.layers[0]
    kv = torch.as_tensor(lh0.kv_head(np.arange(lh0.n_heads)))
    mids = [middle_matrix(lh, delta) for lh in heads.layers]
    ref = next((m for m in mids if m is not None), None)
    if ref is not None:  # a RoPE-free layer among RoPE ones (NoPE): the identity
        mids = [torch.eye(lh0.head_dim, dtype=torch.float64).expand(ref.shape) if m is None else m for m in mids]
    if mids[0] is not None:  # (L, 1, d_h, d_h) shared by the heads, or (L, H, d_h, d_h) per head
        middle = torch.stack(mids)
        middle = (middle if middle.dim() == 4 else middle[:, None]).to(WQ.dtype if core_dtype is None else core_dtype)
    else:
        middle = None
    with torch.no_grad():
        if route in ("cholesky", "qr"):
            U, S, V = factored_svd(WQ, WK, middle, route=route, core_dtype=core_dtype, kv_index=kv)
        elif route == "dense":
            U, S, V = dense_svd(WQ, WK, middle, kv_index=kv, dtype=core_dtype)
        else:
            U, S, V = three_svd(WQ, WK, middle, kv_index=kv)
    return HeadsSVD(U, S, V, lh0.has_bias, route, int(delta), tuple(range(heads.n_layers)))

