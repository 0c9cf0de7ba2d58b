"""Theorem 2 (approximate alignment) bounds, angles and anti-whitening (docs/math.md §2.5).

With ``Σ = c(I + E)``, ``‖E‖₂ ≤ ε < 1``: ``δ = ε/(1−ε)``, ``η = 2δ + δ²``; the paper's bound
``max(sin∠(u,a*), sin∠(v,b*)) ≤ η/(1−η)`` (needs ``η < 1``) and the tighter rank-1 bound
``sin∠(u,a*) ≤ δ`` (with ``ε_A``; likewise for ``v`` with ``ε_B``).
"""

from __future__ import annotations

import numpy as np

from .dictionaries import check_dictionary, frame_operator, isotropy

__all__ = [
    "EPS_MAX_PAPER",
    "RATIO_FLOOR",
    "delta_bound",
    "theorem2_bounds",
    "sin_angle",
    "anti_whiten",
    "theorem2_observed",
]

#: ``η < 1`` iff ``ε < 1 − 1/√2``.
EPS_MAX_PAPER = float(1.0 - 1.0 / np.sqrt(2.0))
#: Bounds below this are round-off level (ε ~ 1e-16 for tight frames); tightness ratios are
#: reported only above it.
RATIO_FLOOR = 1e-8


def delta_bound(eps: float) -> float:
    """``δ = ε/(1−ε)`` (Neumann bound on ‖(I+E)⁻¹ − I‖); needs ``0 ≤ ε < 1``."""
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"isotropy eps must be a finite number >= 0; got eps={eps}")
    if eps >= 1:
        raise ValueError(
            f"isotropy eps={eps} >= 1: the Neumann series for (I+E)^-1 needs eps < 1 "
            "(the frame operator may be singular); Theorem 2 does not apply"
        )
    return eps / (1.0 - eps)


def theorem2_bounds(eps: float) -> tuple[float, float, float]:
    """``(δ, η, η/(1−η))`` for isotropy ``ε``; raises ValueError unless ``0 ≤ ε`` and ``η < 1``."""
    delta = delta_bound(eps)
    eta = 2.0 * delta + delta * delta
    if eta >= 1:
        raise ValueError(
            f"eta = 2δ+δ² = {eta:.6g} >= 1 for eps={eps}: the paper's bound η/(1−η) needs η < 1, "
            f"i.e. eps < 1 − 1/√2 ≈ {EPS_MAX_PAPER:.6f}; use the rank-1 bound delta_bound(eps) instead"
        )
    return delta, eta, eta / (1.0 - eta)


def sin_angle(u, v) -> float:
    """Sign-invariant ``sin∠(u, v)`` between two nonzero vectors (stable for small angles)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        raise ValueError("sin_angle needs nonzero vectors")
    u, v = u / nu, v / nv
    r = u - np.dot(u, v) * v  # rejection of u from the line through v
    return float(min(1.0, np.linalg.norm(r)))


def anti_whiten(A, u) -> np.ndarray:
    """``Σ_A u / ‖Σ_A u‖`` (App. C.3); for the Theorem 1 minimizer this is ``±a*``."""
    w = frame_operator(A) @ np.asarray(u, dtype=np.float64)
    return w / np.linalg.norm(w)


def theorem2_observed(A, B, i: int, j: int, beta: float = 1.0) -> dict:
    """Observed alignment of the Theorem 1 minimizer's top singular pair vs the Theorem 2 bounds.

    SVD of ``M* = β Σ_A⁻¹ a_i b_jᵀ Σ_B⁻¹``; ``ε = max(ε_A, ε_B)``. Returns sines, ε's, δ's,
    the paper bound (``nan`` when η ≥ 1) and tightness ratios ``sin/bound`` (``nan`` where
    the bound is below :data:`RATIO_FLOOR`, i.e. at round-off level).
    """
    A = check_dictionary(A, "A")
    B = check_dictionary(B, "B")
    x = np.linalg.solve(frame_operator(A), A[:, i])
    y = np.linalg.solve(frame_operator(B), B[:, j])
    U, S, Vt = np.linalg.svd(float(beta) * np.outer(x, y))
    u, v = U[:, 0], Vt[0]
    sin_u, sin_v = sin_angle(u, A[:, i]), sin_angle(v, B[:, j])
    eps_a, eps_b = isotropy(A)[1], isotropy(B)[1]
    eps = max(eps_a, eps_b)
    delta_a, delta_b = delta_bound(eps_a), delta_bound(eps_b)
    try:
        delta, eta, paper = theorem2_bounds(eps)
    except ValueError:
        delta, eta, paper = delta_bound(eps), float("nan"), float("nan")
    worst = max(sin_u, sin_v)
    ratios = [s / dl for s, dl in ((sin_u, delta_a), (sin_v, delta_b)) if dl >= RATIO_FLOOR]
    return {
        "sin_u": sin_u,
        "sin_v": sin_v,
        "eps_A": eps_a,
        "eps_B": eps_b,
        "eps": eps,
        "delta_A": delta_a,
        "delta_B": delta_b,
        "delta": delta,
        "eta": eta,
        "paper_bound": paper,
        "ratio_paper": worst / paper if paper >= RATIO_FLOOR else float("nan"),
        "ratio_delta": max(ratios) if ratios else float("nan"),
        "s2_over_s1": float(S[1] / S[0]) if len(S) > 1 else 0.0,
        "anti_whitened_sin": max(sin_angle(anti_whiten(A, u), A[:, i]),
                                 sin_angle(anti_whiten(B, v), B[:, j])),
    }
