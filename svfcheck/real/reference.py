"""Straightforward per-pair reference decomposition (dense numpy float64, Python loop).

Used as an independent oracle in tests and as the "plain loop" baseline in benchmarks. For
one pair it forms the d×d matrices explicitly: the model's rotation matrices from the
captured ``cos, sin``, ``Ω_ik = W̃_Q L_qᵀ R_iᵀ R_k L_k W̃_Kᵀ``, the basis ``Ω(Δ)`` with ``R_Δ``
from ``Δ · inv_freq`` built element by element, its SVD (``numpy.linalg.svd``), and the terms
``t_r(i,k) = scale · ν_ik · (x̃_iᵀ Ω_ik v_r)(v_rᵀ x̃_k)``; relative contributions come from
:func:`svfcheck.metrics.relative_contributions`. QK-norm enters as its maps ``L = diag(g) P``
(per head, with LayerNorm's centring P) and ``ν_ik = 1/(σ(a_i) σ(b_k))`` (σ per head or over
the token's whole projection), a soft cap as the weights ``κ_ik`` of the relative terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import relative_contributions
from .capture import Capture
from .heads import ModelHeads

__all__ = ["PairReference", "reference_pair", "rotation_from_cos_sin", "rope_delta_reference"]


@dataclass(frozen=True, eq=False)
class PairReference:
    keys: np.ndarray  # visible key positions
    terms: np.ndarray  # (m, R)
    contributions: np.ndarray  # (R,)
    logits: np.ndarray  # (m,)
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray


def rotation_from_cos_sin(cos: np.ndarray, sin: np.ndarray, head_dim: int) -> np.ndarray:
    """The model's rotation matrix at one position: ``R v = v*cos + rotate_half(v)*sin`` on
    the first ``len(cos)`` dims, identity on the rest."""
    rd = cos.shape[0]
    h = rd // 2
    R = np.eye(head_dim)
    J = np.zeros((rd, rd))
    for t in range(h):
        J[t, t + h] = -1.0  # rotate_half(v)[t] = -v[t+h]
        J[t + h, t] = 1.0  # rotate_half(v)[t+h] = v[t]
    R[:rd, :rd] = np.diag(cos) + np.diag(sin) @ J
    return R


def rope_delta_reference(inv_freq: np.ndarray, scaling: float, head_dim: int, delta: float) -> np.ndarray:
    """``R_Δ`` built pair by pair: block (t, t+h) = a²·[[cos, −sin], [sin, cos]](Δ·inv_freq[t])."""
    R = np.eye(head_dim)
    h = inv_freq.shape[0]
    for t in range(h):
        th = delta * inv_freq[t]
        c, s = scaling**2 * np.cos(th), scaling**2 * np.sin(th)
        R[t, t], R[t, t + h], R[t + h, t], R[t + h, t + h] = c, -s, s, c
    return R


def _norm_parts(lh, head: int, g: int, X: np.ndarray, W_all: tuple) -> tuple:
    """``(L_q, L_k, σ_q(x_t), σ_k(x_t))`` of one pair's heads: the norm maps ``diag(g) P`` and
    per-token σ over all tokens t (ones without QK-norm), written out here in numpy."""
    dh = lh.head_dim
    if not lh.qk_norm:
        return np.eye(dh), np.eye(dh), np.ones(X.shape[0]), np.ones(X.shape[0])
    P = np.eye(dh) - (1.0 / dh if lh.norm_center else 0.0)
    gq, gk = lh.q_gain.double().numpy(), lh.k_gain.double().numpy()
    gq = gq if gq.ndim == 1 else gq[head]
    gk = gk if gk.ndim == 1 else gk[g]

    def sigma(W, h):  # W: (heads, D, dh) augmented maps
        proj = np.einsum("td,hde->hte", X, W) @ P  # every head's centred projection
        sq = proj**2
        return np.sqrt((sq.mean((0, 2)) if lh.norm_scope == "all" else sq[h].mean(-1)) + lh.norm_eps)

    return np.diag(gq) @ P, np.diag(gk) @ P, sigma(W_all[0], head), sigma(W_all[1], g)


def _augmented_all(lh, X_aug: bool) -> tuple:
    wq, wk = lh.W_Q.double().numpy(), lh.W_K.double().numpy()
    if X_aug:
        bq = np.zeros((wq.shape[0], lh.head_dim)) if lh.b_Q is None else lh.b_Q.double().numpy()
        bk = np.zeros((wk.shape[0], lh.head_dim)) if lh.b_K is None else lh.b_K.double().numpy()
        wq, wk = np.concatenate([wq, bq[:, None]], 1), np.concatenate([wk, bk[:, None]], 1)
    return wq, wk


def reference_pair(heads: ModelHeads, cap: Capture, prompt: int, layer: int, head: int, query: int, key: int, basis: str = "pair") -> PairReference:
    """Dense float64 decomposition of one pair (see module docstring). With a soft cap the terms
    are those of the pre-cap logits and the contributions weight key k by ``κ_ik`` (capped over
    pre-cap logit), docs/math.md §3.21."""
    lh = heads.layer(layer)
    g = lh.kv_head(head)
    X = cap.hidden[layer][prompt].double().numpy()
    if lh.has_bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    W_all = _augmented_all(lh, lh.has_bias)
    wq, wk = W_all[0][head], W_all[1][g]
    dh = lh.head_dim
    Lq, Lk, sq, sk = _norm_parts(lh, head, g, X, W_all)
    keys = np.flatnonzero(cap.visible[layer][prompt, query].numpy())
    pos = cap.positions[prompt].numpy()

    def rot(p):
        if lh.rotary is None:
            return np.eye(dh)
        return rotation_from_cos_sin(cap.cos[layer][prompt, p].double().numpy(), cap.sin[layer][prompt, p].double().numpy(), dh)

    delta = (pos[key] - pos[query]) if basis == "pair" else 0
    RD = np.eye(dh) if lh.rotary is None else rope_delta_reference(lh.rotary.inv_freq, lh.rotary.attention_scaling, dh, delta)
    omega_b = wq @ Lq.T @ RD @ Lk @ wk.T
    U, S, Vh = np.linalg.svd(omega_b)
    U, S, V = U[:, :dh], S[:dh], Vh[:dh].T
    xi = X[query]
    Ri = rot(query)
    terms = np.zeros((len(keys), dh))
    for a, k in enumerate(keys):
        omega_ik = wq @ Lq.T @ Ri.T @ rot(k) @ Lk @ wk.T
        nu = 1.0 / (sq[query] * sk[k])
        for r in range(dh):
            terms[a, r] = lh.scale * nu * (xi @ omega_ik @ V[:, r]) * (V[:, r] @ X[k])
    logits = terms.sum(1)
    w = np.ones(len(keys))
    if lh.softcap is not None:
        capped = lh.softcap * np.tanh(logits / lh.softcap)
        w = np.where(logits == 0, 1.0, capped / np.where(logits == 0, 1.0, logits))
    c = relative_contributions(terms * w[:, None], int(np.flatnonzero(keys == key)[0]))
    return PairReference(keys, terms, c, logits, U, S, V)
