"""Sparsity metrics of an attention-logit decomposition (docs/math.md §3.3–§3.5), shared by toy and real models.

All functions act on the last axis and broadcast over leading axes, for numpy arrays or
torch tensors converted with ``np.asarray``.

- :func:`relative_contributions` — the term-wise relative attention ``c_r(j)``.
- :func:`rolls_tovee` — ``S(c) = (mean|c|)^2 / mean(c^2)``; 1 flat, 1/d_h one-hot.
- :func:`reconstruction_count` — smallest number of the largest terms whose sum reaches the total.
- :func:`haar_orthogonal` — seeded Haar-random orthogonal matrices for the rotation controls.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "relative_contributions",
    "rolls_tovee",
    "reconstruction_count",
    "haar_orthogonal",
]


def relative_contributions(terms: np.ndarray, key: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Term-wise relative attention of key ``key`` against the other visible keys.

    ``terms`` has shape ``(..., m, R)``: for each of the m visible keys the R terms of its logit.
    Returns ``c[..., r] = terms[..., key, r] - mean_{k != key} terms[..., k, r]`` (shape ``(..., R)``),
    which sums over r to the relative attention ``l~_key`` (docs/math.md §3.3).
    ``keys`` optionally restricts the average to a subset of rows (indices into axis -2);
    ``key`` must then be one of them.
    """
    t = np.asarray(terms)
    if t.ndim < 2:
        raise ValueError(f"terms must have shape (..., m, R); got shape {t.shape}")
    if keys is not None:
        keys = np.asarray(keys, dtype=int)
        if key not in set(keys.tolist()):
            raise ValueError(f"key {key} is not among the visible keys {keys.tolist()}")
        key = int(np.flatnonzero(keys == key)[0])
        t = t[..., keys, :]
    m = t.shape[-2]
    if m < 2:
        raise ValueError(f"relative attention needs at least 2 visible keys; got m={m}")
    if not -m <= key < m:
        raise ValueError(f"key index {key} out of range for m={m} keys")
    own = t[..., key, :]
    others = (t.sum(axis=-2) - own) / (m - 1)
    return own - others


def rolls_tovee(c: np.ndarray) -> np.ndarray:
    """Rolls–Tovee sparsity ``(mean|c|)^2 / mean(c^2)`` over the last axis.

    Equals 1 for a flat vector and ``1/R`` for a one-hot vector of length R. Lower is sparser.
    An all-zero vector has no defined sparsity: a ``ValueError`` is raised rather than a NaN.
    """
    c = np.asarray(c, dtype=np.float64)
    if c.shape[-1] == 0:
        raise ValueError("rolls_tovee of an empty vector is undefined")
    sq = np.mean(c * c, axis=-1)
    if np.any(sq == 0):
        raise ValueError("rolls_tovee is undefined for an all-zero vector (no contributions)")
    return np.mean(np.abs(c), axis=-1) ** 2 / sq


def reconstruction_count(c: np.ndarray, total: np.ndarray | float | None = None, rtol: float = 1e-9) -> np.ndarray:
    """Smallest k such that the k largest terms of ``c`` sum to at least ``total``.

    ``total`` defaults to ``c.sum(-1)`` (exact decompositions). It must be positive: k is only
    defined for a key whose relative attention is above zero (docs/math.md §3.5); a non-positive
    total raises ``ValueError``. Float round-off is guarded by accepting a partial sum that
    falls short of the total by at most ``rtol * sum|c|`` (the size of the summation error).
    If even all terms fall short (possible when ``c`` is a non-exact control decomposition)
    the count is ``R + 1``, meaning "not reconstructible".
    """
    c = np.asarray(c, dtype=np.float64)
    tot = c.sum(axis=-1) if total is None else np.broadcast_to(np.asarray(total, dtype=np.float64), c.shape[:-1])
    if np.any(tot <= 0):
        raise ValueError("reconstruction_count needs a positive total (relative attention > 0)")
    s = np.negative(c)  # the terms descending, negated: sorted in place (no second copy)
    s.sort(axis=-1)
    partial = np.negative(np.cumsum(s, axis=-1), out=s)  # negation is exact: the sums of the descending terms
    slack = rtol * np.abs(c).sum(axis=-1)
    reached = partial >= (tot - slack)[..., None]
    r = c.shape[-1]
    k = np.where(reached.any(axis=-1), reached.argmax(axis=-1) + 1, r + 1)
    return k


def haar_orthogonal(n: int, rng: np.random.Generator, size: tuple[int, ...] = ()) -> np.ndarray:
    """Haar-distributed orthogonal matrices of shape ``size + (n, n)`` (QR of a Gaussian with sign fix)."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    g = rng.standard_normal(size + (n, n))
    q, r = np.linalg.qr(g)
    d = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    d[d == 0] = 1.0
    return q * d[..., None, :]
