"""Softmax objectives and the Theorem 1 teacher / closed-form minimizer (docs/math.md §2.1–§2.3).

Distributions and logits live on the last axis. ``0·log 0 = 0`` throughout.
"""

from __future__ import annotations

import numpy as np

from .dictionaries import check_dictionary, frame_operator

__all__ = [
    "softmax",
    "log_softmax",
    "entropy",
    "kl_divergence",
    "cross_entropy",
    "cross_entropy_logits",
    "teacher_matrix",
    "theorem1_minimizer",
    "context_features",
    "context_logits",
    "objective",
    "objective_grad",
    "objective_hessian",
    "population_objective",
]


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """Stable ``log softmax``: subtract the max before exponentiating."""
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(x, axis: int = -1) -> np.ndarray:
    """Stable softmax."""
    return np.exp(log_softmax(x, axis=axis))


def _xlogy(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x * np.log(y)
    return np.where(x == 0, 0.0, out)


def entropy(p) -> np.ndarray:
    """Shannon entropy ``H(p) = −Σ p log p`` (nats)."""
    return -np.sum(_xlogy(p, p), axis=-1)


def cross_entropy(p, q) -> np.ndarray:
    """``CE(p, q) = −Σ p log q`` (inf where q = 0 < p)."""
    return -np.sum(_xlogy(p, q), axis=-1)


def kl_divergence(p, q) -> np.ndarray:
    """``KL(p‖q) = Σ p (log p − log q)``, computed directly (not as CE − H)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = p * (np.log(p) - np.log(q))
    return np.sum(np.where(p == 0, 0.0, t), axis=-1)


def cross_entropy_logits(target_logits, student_logits) -> np.ndarray:
    """``CE(softmax(target), softmax(student))`` from logits, stably."""
    return -np.sum(softmax(target_logits) * log_softmax(student_logits), axis=-1)


def teacher_matrix(A, B, i: int, j: int, beta: float = 1.0) -> np.ndarray:
    """``M_T = β Σ_A⁻¹ a_i b_jᵀ Σ_B⁻¹`` (whitened feature detectors of the target pair)."""
    A = check_dictionary(A, "A")
    B = check_dictionary(B, "B")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must live in the same R^d; got {A.shape} and {B.shape}")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite; got {beta}")
    x = np.linalg.solve(frame_operator(A), A[:, i])
    y = np.linalg.solve(frame_operator(B), B[:, j])
    return float(beta) * np.outer(x, y)


def theorem1_minimizer(A, B, i: int, j: int, beta: float = 1.0) -> dict:
    """Theorem 1 closed form: ``M``, predicted singular vectors ``u``, ``v`` and value ``s``.

    ``u = Σ_A⁻¹a_i/‖·‖``, ``v = sign(β) Σ_B⁻¹b_j/‖·‖``, ``s = |β|‖Σ_A⁻¹a_i‖‖Σ_B⁻¹b_j‖``, so
    ``M = s u vᵀ`` exactly.
    """
    M = teacher_matrix(A, B, i, j, beta)
    x = np.linalg.solve(frame_operator(A), np.asarray(A, dtype=np.float64)[:, i])
    y = np.linalg.solve(frame_operator(B), np.asarray(B, dtype=np.float64)[:, j])
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    sgn = 1.0 if beta >= 0 else -1.0
    return {"M": M, "u": x / nx, "v": sgn * y / ny, "s": abs(float(beta)) * nx * ny}


def context_features(Q, K) -> np.ndarray:
    """``X[c, t] = vec(q_c k_{c,t}ᵀ)`` (row-major), so that logits are ``X @ vec(M)``."""
    Q = np.asarray(Q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    C, m, d = K.shape
    return (Q[:, None, :, None] * K[:, :, None, :]).reshape(C, m, d * d)


def context_logits(M, Q, K) -> np.ndarray:
    """Logits ``ℓ[c, t] = q_cᵀ M k_{c,t}``, shape (C, m)."""
    return np.einsum("cd,de,cme->cm", np.asarray(Q, float), np.asarray(M, float), np.asarray(K, float))


def _weights(C: int, weights) -> np.ndarray:
    if weights is None:
        return np.full(C, 1.0 / C)
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def objective(M, Q, K, teacher_logits, weights=None) -> float:
    """``J(M)``: (weighted) mean over contexts of ``CE(softmax(teacher), softmax(q Mᵀ k))``."""
    L = context_logits(M, Q, K)
    ce = cross_entropy_logits(teacher_logits, L)
    return float(np.dot(_weights(len(ce), weights), ce))


def objective_grad(M, Q, K, teacher_logits, weights=None) -> np.ndarray:
    """``∇_M J = Σ_c w_c Σ_t (π_t − π*_t) q_c k_{c,t}ᵀ``."""
    L = context_logits(M, Q, K)
    r = softmax(L) - softmax(teacher_logits)
    w = _weights(len(L), weights)
    return np.einsum("c,ct,cd,cte->de", w, r, np.asarray(Q, float), np.asarray(K, float))


def objective_hessian(M, X, teacher_logits=None, weights=None) -> np.ndarray:
    """Hessian of ``J`` in ``vec(M)``: ``Σ_c w_c X_cᵀ (diag π − π πᵀ) X_c`` (X from context_features)."""
    d2 = X.shape[-1]
    pi = softmax(X @ np.asarray(M, float).reshape(d2))
    w = _weights(len(X), weights)
    Xw = np.einsum("ct,ctx->cx", pi, X)
    H = np.einsum("c,ct,ctx,cty->xy", w, pi, X, X) - np.einsum("c,cx,cy->xy", w, Xw, Xw)
    return 0.5 * (H + H.T)


def population_objective(M, A, B, i: int, j: int, beta: float, p: float, m: int) -> float:
    """Exact population ``J(M)`` for the whitened teacher, by enumerating every context.

    Feasible only for tiny dictionaries (``2^{n + m·n'}`` contexts, at most 2^16).
    """
    from .sampling import enumerate_contexts

    Q, K, w = enumerate_contexts(A, B, p, m)
    T = context_logits(teacher_matrix(A, B, i, j, beta), Q, K)
    return objective(M, Q, K, T, weights=w)
