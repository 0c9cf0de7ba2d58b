"""Theorem 3 (feature orthogonalization), as stated in docs/math.md §2.6.

Fixed ``M = s1 u1 v1ᵀ + s2 u2 v2ᵀ`` (orthonormal u's, v's); ``a1 = u1``, ``b1 = v1`` fixed;
``a2``, ``b2`` trainable unit vectors. Context c ∈ {1, 2}: query ``a_c``, keys ``{b1, b2}``;
student gap ``g_c = a_cᵀ M (b_c − b_{3−c})``; teacher gap ``γ_c`` is the same with
``a2 = u2, b2 = v2`` (so ``γ = (s1, s2)``). Two-key cross-entropy
``CE_c = −σ(γ_c) log σ(g_c) − (1−σ(γ_c)) log σ(−g_c)``; interference
``I = (a1ᵀa2)² + (b1ᵀb2)²``; ``J = Σ_c CE_c + λ I``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .dictionaries import haar_orthogonal

__all__ = [
    "Rank2Setting",
    "make_setting",
    "theorem3_terms",
    "theorem3_objective",
    "theorem3_grad",
    "minimize_theorem3",
    "feasible_comparison",
]


@dataclass
class Rank2Setting:
    """The fixed rank-2 matrix and its factors."""

    u1: np.ndarray
    u2: np.ndarray
    v1: np.ndarray
    v2: np.ndarray
    s1: float
    s2: float

    @property
    def M(self) -> np.ndarray:
        return self.s1 * np.outer(self.u1, self.v1) + self.s2 * np.outer(self.u2, self.v2)


def make_setting(d: int, s1: float, s2: float, rng: np.random.Generator) -> Rank2Setting:
    """Random orthonormal ``u1 ⊥ u2``, ``v1 ⊥ v2`` in R^d; needs d ≥ 2 and s1, s2 > 0."""
    if int(d) != d or d < 2:
        raise ValueError(f"Theorem 3 needs dimension d >= 2; got d={d}")
    for name, s in (("s1", s1), ("s2", s2)):
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"singular value {name} must be finite and > 0; got {s}")
    U, V = haar_orthogonal(d, rng), haar_orthogonal(d, rng)
    return Rank2Setting(U[:, 0], U[:, 1], V[:, 0], V[:, 1], float(s1), float(s2))


def _check_lam(lam: float, allow_zero: bool = False) -> float:
    ok = np.isfinite(lam) and (lam > 0 or (allow_zero and lam == 0))
    if not ok:
        raise ValueError(
            f"interference weight lambda must be finite and > 0 (Theorem 3 needs a positive "
            f"penalty); got {lam}"
        )
    return float(lam)


def _bce(gamma, g):
    # −σ(γ) log σ(g) − (1−σ(γ)) log σ(−g), with log σ(x) = −log(1 + e^{−x}).
    t = expit(gamma)
    return t * np.logaddexp(0.0, -g) + (1.0 - t) * np.logaddexp(0.0, g)


def theorem3_terms(a2, b2, st: Rank2Setting) -> dict:
    """Gaps ``g``, teacher gaps ``γ``, per-context CE and interference ``I`` (a2, b2 used as given)."""
    a2 = np.asarray(a2, dtype=np.float64)
    b2 = np.asarray(b2, dtype=np.float64)
    M = st.M
    a1, b1 = st.u1, st.v1
    g = np.array([a1 @ M @ (b1 - b2), a2 @ M @ (b2 - b1)])
    gamma = np.array([a1 @ M @ (b1 - st.v2), st.u2 @ M @ (st.v2 - b1)])
    ce = _bce(gamma, g)
    interference = float((a1 @ a2) ** 2 + (b1 @ b2) ** 2)
    return {"g": g, "gamma": gamma, "ce": ce, "CE": float(ce.sum()), "I": interference}


def theorem3_objective(a2, b2, st: Rank2Setting, lam: float, allow_zero: bool = False) -> float:
    """``J = Σ_c CE_c + λ I``."""
    t = theorem3_terms(a2, b2, st)
    return t["CE"] + _check_lam(lam, allow_zero) * t["I"]


def theorem3_grad(a2, b2, st: Rank2Setting, lam: float):
    """Euclidean gradient of ``J`` in (a2, b2), treating them as free vectors."""
    t = theorem3_terms(a2, b2, st)
    M = st.M
    a1, b1 = st.u1, st.v1
    r = expit(t["g"]) - expit(t["gamma"])  # dCE_c/dg_c
    ga = r[1] * (M @ (b2 - b1)) + 2 * lam * (a1 @ a2) * a1
    gb = -r[0] * (M.T @ a1) + r[1] * (M.T @ a2) + 2 * lam * (b1 @ b2) * b1
    return ga, gb


def minimize_theorem3(
    st: Rank2Setting,
    lam: float,
    rng: np.random.Generator,
    n_starts: int = 6,
    gtol: float = 1e-12,
    allow_zero: bool = False,
) -> dict:
    """Minimize ``J`` over unit ``a2``, ``b2`` from ``n_starts`` random starts (plus three
    sign-flip restarts from the best); return the best.

    Parametrization ``a2 = x/‖x‖``, ``b2 = y/‖y‖`` with L-BFGS-B on (x, y) and the chain rule
    ``∂J/∂x = (I − a2a2ᵀ) ∂J/∂a2 / ‖x‖``; the result is on the sphere by construction.
    ``allow_zero=True`` permits λ = 0 (a control outside the theorem: no penalty, no
    orthogonalization).
    """
    lam = _check_lam(lam, allow_zero)
    d = st.u1.size

    def fun(z):
        x, y = z[:d], z[d:]
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        a2, b2 = x / nx, y / ny
        ga, gb = theorem3_grad(a2, b2, st, lam)
        gx = (ga - (a2 @ ga) * a2) / nx
        gy = (gb - (b2 @ gb) * b2) / ny
        return theorem3_objective(a2, b2, st, lam, allow_zero), np.concatenate([gx, gy])

    def run(z0):
        res = minimize(fun, z0, jac=True, method="L-BFGS-B",
                       options={"gtol": gtol, "ftol": 0.0, "maxiter": 2000})
        x, y = res.x[:d], res.x[d:]
        a2, b2 = x / np.linalg.norm(x), y / np.linalg.norm(y)
        t = theorem3_terms(a2, b2, st)
        return {"a2": a2, "b2": b2, "J": t["CE"] + lam * t["I"], "CE": t["CE"], "I": t["I"],
                "iterations": int(res.nit), "grad_norm": float(np.linalg.norm(res.jac))}

    runs = [run(rng.standard_normal(2 * d)) for _ in range(n_starts)]
    # Sign-flip restarts: I is invariant under a2 → −a2, b2 → −b2 but the gaps are not, and
    # on the circle (d = 2) the wrong-sign configurations are separate local minima that all
    # random starts can fall into. Restart from the three reflections of the best run.
    top = min(runs, key=lambda r: r["J"])
    for sa, sb in ((-1, 1), (1, -1), (-1, -1)):
        runs.append(run(np.concatenate([sa * top["a2"], sb * top["b2"]])))
    best = min(runs, key=lambda r: r["J"])
    return {**best, "starts": [r["J"] for r in runs]}


def feasible_comparison(st: Rank2Setting, rng: np.random.Generator):
    """A random feasible comparison pair: unit ``a2 ⊥ a1``, ``b2 ⊥ b1`` (so ``I = 0``)."""
    def perp(x, e):
        for _ in range(2):  # twice: one pass loses orthogonality when x is nearly parallel to e
            x = x - (x @ e) * e
            x = x / np.linalg.norm(x)
        return x

    return perp(rng.standard_normal(st.u1.size), st.u1), perp(rng.standard_normal(st.v1.size), st.v1)
