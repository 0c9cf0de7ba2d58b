"""Unit-norm feature dictionaries (docs/math.md §2.1): validation, frame operator, isotropy, samplers.

A dictionary is a float64 array ``A`` of shape ``(d, n)`` whose columns are unit-norm features.
Its frame operator is ``Σ_A = A Aᵀ`` (d×d). It is *tight* (isotropic) when ``Σ_A = c I``.

Samplers take an ``np.random.Generator`` and return float64 arrays that pass
:func:`check_dictionary`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "UNIT_NORM_TOL",
    "MAX_CONDITION",
    "check_dictionary",
    "frame_operator",
    "isotropy",
    "whitened_detectors",
    "haar_orthogonal",
    "random_dictionary",
    "union_of_orthonormal_bases",
    "harmonic_frame",
    "antipodal_frame",
    "tight_frame",
    "near_isotropic",
    "anisotropic",
]

#: Largest allowed ``| ||a_i|| - 1 |``. Columns produced by ``A / norm(A, axis=0)`` in float64
#: are unit to ~1e-16; 1e-8 accepts such columns after modest arithmetic, and rejects any
#: dictionary that was simply never normalised.
UNIT_NORM_TOL = 1e-8
#: Largest allowed condition number of ``Σ_A``. Beyond 1e12 a float64 solve with ``Σ_A`` loses
#: more than 12 of ~16 significant digits, so the whitened detectors are meaningless.
MAX_CONDITION = 1e12


def check_dictionary(A, name: str = "A") -> np.ndarray:
    """Validate a dictionary and return it as a float64 array.

    Raises ``ValueError`` naming the condition for: wrong ndim, empty shape, non-finite entries,
    zero columns, non-unit columns (tolerance :data:`UNIT_NORM_TOL`), and a singular or
    near-singular frame operator (condition number above :data:`MAX_CONDITION`).
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-d array of shape (d, n) with features as columns; got ndim={A.ndim}"
        )
    d, n = A.shape
    if d == 0 or n == 0:
        raise ValueError(f"{name} has an empty shape {A.shape}; need d >= 1 and n >= 1")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} has non-finite entries (nan or inf); fix the features first")
    norms = np.linalg.norm(A, axis=0)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{name} has zero columns at indices {zero.tolist()[:10]}; every feature must be a "
            "unit vector: drop these columns"
        )
    bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOL)
    if bad.size:
        raise ValueError(
            f"{name} has non-unit columns (|norm - 1| > {UNIT_NORM_TOL:g}) at indices "
            f"{bad.tolist()[:10]} (norms {np.round(norms[bad[:3]], 6).tolist()}); normalise with "
            f"{name} / np.linalg.norm({name}, axis=0)"
        )
    lam = np.linalg.eigvalsh(A @ A.T)
    if lam[0] <= 0 or lam[-1] / lam[0] > MAX_CONDITION:
        cond = np.inf if lam[0] <= 0 else lam[-1] / lam[0]
        raise ValueError(
            f"{name} has a singular or near-singular frame operator {name}{name}ᵀ "
            f"(condition number {cond:.3g} > {MAX_CONDITION:g}, n={n}, d={d}); the theory needs "
            f"an invertible frame operator: use at least d features that span R^d"
        )
    return A


def frame_operator(A) -> np.ndarray:
    """The frame operator ``Σ_A = A Aᵀ`` (d×d, float64)."""
    A = np.asarray(A, dtype=np.float64)
    return A @ A.T


def isotropy(A) -> tuple[float, float]:
    """Best ``c`` and smallest ``ε`` with ``Σ_A = c (I + E)``, ``||E||₂ = ε``.

    ``c = (λmax + λmin)/2`` and ``ε = (λmax − λmin)/(λmax + λmin)`` (docs/math.md §2.5, Theorem 2).
    """
    lam = np.linalg.eigvalsh(frame_operator(A))
    lo, hi = float(lam[0]), float(lam[-1])
    if not hi > 0:
        raise ValueError("isotropy needs a nonzero frame operator (all features are zero?)")
    return (hi + lo) / 2.0, (hi - lo) / (hi + lo)


def whitened_detectors(A) -> np.ndarray:
    """Whitened feature detectors ``Σ_A⁻¹ A`` (columns ``Σ_A⁻¹ a_i``); validates ``A``."""
    A = check_dictionary(A)
    return np.linalg.solve(frame_operator(A), A)


def _normalise(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=0, keepdims=True)


def haar_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random d×d orthogonal matrix (QR of a Gaussian with sign correction)."""
    Z = rng.standard_normal((d, d))
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diag(R))


def random_dictionary(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. uniformly random unit vectors in R^d as columns (normalised Gaussians)."""
    _check_dims(d, n)
    return _normalise(rng.standard_normal((d, n)))


def union_of_orthonormal_bases(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` Haar-random orthonormal bases side by side: d×(k·d), ``Σ = k I``."""
    _check_dims(d, k)
    return np.concatenate([haar_orthogonal(d, rng) for _ in range(k)], axis=1)


def harmonic_frame(d: int, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Real harmonic frame: unit-norm tight frame of ``n > d`` vectors in R^d, ``Σ = (n/d) I``.

    Column ``k`` (k = 0..n−1) stacks ``sqrt(2/d)·(cos, sin)(2π j k/n)`` for j = 1..⌊d/2⌋ and,
    when d is odd, a constant entry ``1/sqrt(d)``. Tightness needs the frequencies j and the
    constant to be distinct and non-aliased mod n, which ``n > d`` guarantees (``j + j' ≤ d < n``).
    With ``rng`` the frame is rotated by a Haar-random orthogonal matrix (still tight, unit-norm).
    """
    _check_dims(d, n)
    if n <= d:
        raise ValueError(
            f"harmonic_frame needs n > d (got d={d}, n={n}); for n == d use an orthonormal basis "
            "(union_of_orthonormal_bases(d, 1, rng))"
        )
    k = np.arange(n)
    rows = []
    if d % 2 == 1:
        rows.append(np.full(n, 1.0 / np.sqrt(d)))
    for j in range(1, d // 2 + 1):
        ang = 2.0 * np.pi * j * k / n
        rows.append(np.sqrt(2.0 / d) * np.cos(ang))
        rows.append(np.sqrt(2.0 / d) * np.sin(ang))
    F = np.array(rows)
    if rng is not None:
        F = haar_orthogonal(d, rng) @ F
    return _normalise(F)  # already unit to ~1e-16; removes rounding


def antipodal_frame(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` (even) unit vectors in antipodal pairs ``[F, −F]`` with ``F`` a tight frame of n/2."""
    if n % 2 or n < 2 * d:
        raise ValueError(f"antipodal_frame needs even n >= 2d (got d={d}, n={n})")
    F = tight_frame(d, n // 2, rng)
    return np.concatenate([F, -F], axis=1)


def tight_frame(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random unit-norm tight frame of ``n >= d`` vectors (union of bases when d | n, else harmonic)."""
    _check_dims(d, n)
    if n < d:
        raise ValueError(f"a tight frame in R^{d} needs n >= d features; got n={n}")
    if n % d == 0:
        return union_of_orthonormal_bases(d, n // d, rng)
    F = harmonic_frame(d, n, rng)
    return F[:, rng.permutation(n)]


def near_isotropic(
    d: int,
    n: int,
    eps: float,
    rng: np.random.Generator,
    jitter: float = 0.5,
    tol: float = 1e-12,
) -> np.ndarray:
    """A unit-norm dictionary whose isotropy ε equals ``eps`` (to ``tol``; verified to 1e-9).

    Path: a random tight frame ``F`` (ε = 0) → ``normalise(F + σG)`` with Gaussian ``G``
    (σ ∈ [0, jitter]); if ε at σ = jitter is still below ``eps``, continue along
    ``normalise((I + tS) F_jitter)`` with a random PSD ``S`` of spectrum in [0, 1] including 0,
    whose ε tends to 1 as t → ∞. ε is continuous along the path, so bisection hits ``eps``.
    """
    _check_dims(d, n)
    if not (np.isfinite(eps) and 0 <= eps < 1):
        raise ValueError(f"near_isotropic needs eps in [0, 1); got eps={eps}")
    if n < d:
        raise ValueError(f"near_isotropic needs n >= d features; got d={d}, n={n}")
    F = tight_frame(d, n, rng)
    if eps == 0:
        return F
    if d == 1:
        raise ValueError("in R^1 every dictionary is tight (eps = 0); cannot reach eps > 0")
    G = rng.standard_normal((d, n))

    def path1(s):
        return _normalise(F + s * G)

    if isotropy(path1(jitter))[1] >= eps:
        A = _bisect(path1, 0.0, jitter, eps, tol)
    else:
        base = path1(jitter)
        Q = haar_orthogonal(d, rng)
        r = rng.uniform(0.0, 1.0, d)
        r[0], r[-1] = 0.0, 1.0
        S = (Q * r) @ Q.T

        def path2(t):
            return _normalise(base + t * (S @ base))

        hi = 1.0
        while isotropy(path2(hi))[1] < eps:
            hi *= 2.0
            if hi > 1e12:  # pragma: no cover - ε → 1 along this path
                raise RuntimeError("near_isotropic: could not bracket the requested eps")
        A = _bisect(path2, 0.0, hi, eps, tol)
    got = isotropy(A)[1]
    if abs(got - eps) > 1e-9:  # pragma: no cover - bisection guarantees this
        raise RuntimeError(f"near_isotropic reached eps={got}, wanted {eps}")
    return A


def anisotropic(d: int, n: int, rng: np.random.Generator, condition: float = 100.0) -> np.ndarray:
    """A unit-norm dictionary whose frame operator has condition number ``condition`` exactly.

    ``κ = λmax/λmin`` and ``ε = (κ−1)/(κ+1)``, so this is :func:`near_isotropic` at that ε.
    """
    if not (np.isfinite(condition) and condition >= 1):
        raise ValueError(f"condition must be a finite number >= 1; got {condition}")
    return near_isotropic(d, n, (condition - 1.0) / (condition + 1.0), rng)


def _bisect(path, lo: float, hi: float, eps: float, tol: float) -> np.ndarray:
    A = path(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        A = path(mid)
        e = isotropy(A)[1]
        if abs(e - eps) <= tol:
            return A
        if e < eps:
            lo = mid
        else:
            hi = mid
    return A


def _check_dims(d: int, n: int) -> None:
    if int(d) != d or int(n) != n or d < 1 or n < 1:
        raise ValueError(f"dimensions must be positive integers; got d={d}, n={n}")
