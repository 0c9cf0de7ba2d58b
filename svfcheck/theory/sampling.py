"""Token sampling in the theory setting (docs/math.md §2.1) and the second moments of Lemma 3.

Every feature index enters each subset independently with probability ``p``. The query is
``q = Σ_{i∈S_0} a_i`` and the keys are ``k_t = Σ_{j∈S_t} b_j`` for t = 1..m.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "check_p",
    "check_m",
    "sample_masks",
    "sample_contexts",
    "all_masks",
    "enumerate_contexts",
    "exact_key_difference_moment",
    "exact_query_moment",
    "mc_key_difference_moment",
    "mc_query_moment",
    "lemma3_key_difference",
    "lemma3_query",
]


def check_p(p) -> float:
    """Validate a feature probability: the theorems need ``0 < p < 1``."""
    p = float(p)
    if not (np.isfinite(p) and 0.0 < p < 1.0):
        raise ValueError(
            f"feature probability p must be in the open interval (0, 1); got p={p} "
            "(at p = 0 or 1 every token is fixed and the second moments are singular)"
        )
    return p


def check_m(m) -> int:
    """Validate the number of keys per context: the theorems need ``m >= 2``."""
    if int(m) != m or m < 2:
        raise ValueError(
            f"number of keys m must be an integer >= 2; got m={m} (softmax over one key is "
            "constant, so the objective carries no information)"
        )
    return int(m)


def sample_masks(n: int, p: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean Bernoulli(p) membership masks, shape ``(size, n)``."""
    p = check_p(p)
    return rng.random((size, n)) < p


def sample_contexts(A, B, p: float, m: int, size: int, rng: np.random.Generator):
    """Sample ``size`` contexts: queries ``Q`` (size, d) and keys ``K`` (size, m, d)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    p, m = check_p(p), check_m(m)
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must live in the same R^d; got {A.shape} and {B.shape}")
    S0 = sample_masks(A.shape[1], p, size, rng).astype(np.float64)
    St = sample_masks(B.shape[1], p, size * m, rng).astype(np.float64)
    Q = S0 @ A.T
    K = (St @ B.T).reshape(size, m, B.shape[0])
    return Q, K


def all_masks(n: int) -> np.ndarray:
    """All ``2^n`` membership masks as a float64 0/1 array, shape ``(2^n, n)``."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=n)), dtype=np.float64)


def _mask_probs(masks: np.ndarray, p: float) -> np.ndarray:
    k = masks.sum(axis=1)
    return p**k * (1.0 - p) ** (masks.shape[1] - k)


def enumerate_contexts(A, B, p: float, m: int, max_contexts: int = 1 << 16):
    """All contexts with their probabilities: ``Q`` (C, d), ``K`` (C, m, d), ``w`` (C,), C = 2^{n+m·n'}."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    p, m = check_p(p), check_m(m)
    n, nb = A.shape[1], B.shape[1]
    count = 2 ** (n + m * nb)
    if count > max_contexts:
        raise ValueError(f"enumeration would need {count} contexts (> max_contexts={max_contexts})")
    mq, mk = all_masks(n), all_masks(nb)
    wq, wk = _mask_probs(mq, p), _mask_probs(mk, p)
    qs, ks = mq @ A.T, mk @ B.T
    idx = np.array(list(itertools.product(range(len(mq)), *[range(len(mk))] * m)))
    Q = qs[idx[:, 0]]
    K = ks[idx[:, 1:]]
    w = wq[idx[:, 0]] * np.prod(wk[idx[:, 1:]], axis=1)
    return Q, K, w


def exact_key_difference_moment(B, p: float, max_n: int = 7) -> np.ndarray:
    """``E[(k_2 − k_1)(k_2 − k_1)ᵀ]`` by summing over all ``4^n`` pairs of key subsets."""
    B = np.asarray(B, dtype=np.float64)
    p = check_p(p)
    n = B.shape[1]
    if n > max_n:
        raise ValueError(f"exact enumeration over 4^n subsets limited to n <= {max_n}; got n={n}")
    masks = all_masks(n)
    w = _mask_probs(masks, p)
    keys = masks @ B.T  # (2^n, d)
    diff = keys[None, :, :] - keys[:, None, :]  # (2^n, 2^n, d)
    ww = w[:, None] * w[None, :]
    return np.einsum("ij,ija,ijb->ab", ww, diff, diff)


def exact_query_moment(A, p: float, max_n: int = 14) -> np.ndarray:
    """``E[q qᵀ]`` by summing over all ``2^n`` query subsets."""
    A = np.asarray(A, dtype=np.float64)
    p = check_p(p)
    n = A.shape[1]
    if n > max_n:
        raise ValueError(f"exact enumeration over 2^n subsets limited to n <= {max_n}; got n={n}")
    masks = all_masks(n)
    w = _mask_probs(masks, p)
    qs = masks @ A.T
    return np.einsum("i,ia,ib->ab", w, qs, qs)


def _mc_moment(X: np.ndarray):
    outer = X[:, :, None] * X[:, None, :]
    mean = outer.mean(axis=0)
    se = outer.std(axis=0, ddof=1) / np.sqrt(X.shape[0])
    return mean, se


def mc_key_difference_moment(B, p: float, size: int, rng: np.random.Generator):
    """Monte Carlo ``E[(k_2 − k_1)(k_2 − k_1)ᵀ]``: (estimate, per-entry standard error)."""
    B = np.asarray(B, dtype=np.float64)
    S = sample_masks(B.shape[1], p, 2 * size, rng).astype(np.float64)
    X = (S[size:] - S[:size]) @ B.T
    return _mc_moment(X)


def mc_query_moment(A, p: float, size: int, rng: np.random.Generator):
    """Monte Carlo ``E[q qᵀ]``: (estimate, per-entry standard error)."""
    A = np.asarray(A, dtype=np.float64)
    X = sample_masks(A.shape[1], p, size, rng).astype(np.float64) @ A.T
    return _mc_moment(X)


def lemma3_key_difference(B, p: float) -> np.ndarray:
    """Lemma 3 closed form ``2p(1−p) Σ_B``."""
    B = np.asarray(B, dtype=np.float64)
    p = check_p(p)
    return 2.0 * p * (1.0 - p) * (B @ B.T)


def lemma3_query(A, p: float) -> np.ndarray:
    """Lemma 3 closed form ``p(1−p) Σ_A + p² (A1)(A1)ᵀ``."""
    A = np.asarray(A, dtype=np.float64)
    p = check_p(p)
    s = A.sum(axis=1)
    return p * (1.0 - p) * (A @ A.T) + p * p * np.outer(s, s)
