"""Dictionary alignment scores (docs/math.md §5.3–§5.4) as properties.

- Theorem 1 (§2.3): for any dictionary with invertible Σ_A and any target feature, the closed-form
  singular vector u = Σ_A⁻¹a*/‖·‖ has whitened |cos| = 1 with a* and raw |cos| =
  ⟨Σ_A⁻¹a*, a*⟩/‖Σ_A⁻¹a*‖; on tight frames (Corollary 1) raw and whitened agree everywhere.
- the scores are invariant to signs, scales and order of singular vectors and features;
- the one-to-one matching is optimal (brute force over injective assignments).

References are plain numpy (``solve``, normalised dot products, itertools), never the library.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from svfcheck.real.dictionary import alignment_scores

from .hypothesis_helpers import dictionaries, rngs, tight_frames

pytestmark = pytest.mark.theory

#: cond(Σ_A) ≤ 1e4 (the strategy's bound): the library's eigh pseudo-inverse and numpy's solve
#: agree to ~cond·eps ≈ 1e-12 in the detector direction; 1e-9 leaves a 1e3 margin.
TOL = 1e-9


def _all_cos(T: dict, n: int, r: int) -> np.ndarray:
    """The full signed cosine matrix (r, n) from a table built with top_matches = n."""
    C = np.full((r, n), np.nan)
    for i, row in enumerate(T["best"]):
        for m in row:
            C[i, m["feature"]] = m["cos"]
    assert not np.isnan(C).any()
    return C


@given(A=dictionaries(max_d=6, max_extra=6), data=st.data())
def test_theorem1_singular_vectors_are_whitened_aligned(A, data):
    d, n = A.shape
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
    sign = data.draw(st.sampled_from([1.0, -1.0]))
    Sig = A @ A.T
    x, y = np.linalg.solve(Sig, A[:, i]), np.linalg.solve(Sig, A[:, j])
    u, v = x / np.linalg.norm(x), sign * y / np.linalg.norm(y)
    out = alignment_scores(u[:, None], v[:, None], A.T, top_matches=n, baseline_samples=0)
    for side, k, z in (("query", i, x), ("key", j, y)):
        Cw = _all_cos(out[side]["whitened"], n, 1)[0]
        Cr = _all_cos(out[side]["raw"], n, 1)[0]
        assert abs(abs(Cw[k]) - 1) <= TOL, (side, Cw[k])
        assert abs(abs(Cr[k]) - abs(z @ A[:, k]) / np.linalg.norm(z)) <= TOL, (side, Cr[k])
    assert out["whitening"]["rank"] == d


@given(frame=tight_frames(max_d=5), data=st.data())
def test_tight_frames_raw_equals_whitened(frame, data):
    """Corollary 1: Σ_A = cI, so Σ_A⁻¹a ∝ a and both forms are the same numbers."""
    _, A = frame
    d, n = A.shape
    r = data.draw(st.integers(1, d))
    U = np.linalg.qr(data.draw(rngs()).standard_normal((d, r)))[0]
    out = alignment_scores(U, U, A.T, top_matches=n, baseline_samples=0)
    np.testing.assert_allclose(_all_cos(out["query"]["whitened"], n, r), _all_cos(out["query"]["raw"], n, r), atol=TOL)


@st.composite
def problems(draw, max_d: int = 7, max_n: int = 9):
    """(U, V, D): r ≤ d orthonormal columns on each side and n Gaussian directions in R^d."""
    rng = draw(rngs())
    d = draw(st.integers(2, max_d))
    r = draw(st.integers(1, d))
    n = draw(st.integers(1, max_n).filter(lambda k: k != d))
    U = np.linalg.qr(rng.standard_normal((d, r)))[0]
    V = np.linalg.qr(rng.standard_normal((d, r)))[0]
    return U, V, rng.standard_normal((n, d))


SCORES = ("mean_max_abs_cos", "mean_abs_cos")


@given(p=problems(), data=st.data())
def test_scores_ignore_signs_scales_and_order(p, data):
    U, V, D = p
    d, r = U.shape
    n = D.shape[0]
    rng = data.draw(rngs())
    flip_u, flip_v = rng.choice([-1.0, 1.0], r), rng.choice([-1.0, 1.0], r)
    order, perm = rng.permutation(r), rng.permutation(n)
    scale = rng.choice([-1.0, 1.0], n) * rng.uniform(0.1, 10.0, n)
    a = alignment_scores(U, V, D, baseline_samples=0)
    b = alignment_scores((U * flip_u)[:, order], (V * flip_v)[:, order], (D * scale[:, None])[perm], baseline_samples=0)
    for side in ("query", "key"):
        for form in ("raw", "whitened"):
            x, y = a[side][form], b[side][form]
            for k in SCORES:
                assert y[k] == pytest.approx(x[k], abs=1e-12), (side, form, k)
            assert y["matching"]["mean_abs_cos"] == pytest.approx(x["matching"]["mean_abs_cos"], abs=1e-12)
            np.testing.assert_allclose(np.asarray(y["max_abs_cos"]), np.asarray(x["max_abs_cos"])[order], atol=1e-12)


@given(p=problems(max_d=5, max_n=5))
def test_matching_is_the_best_one_to_one_assignment(p):
    """Brute force: the largest Σ|cos| over injective maps singular vector → feature; and the
    tables' figures against the cosine matrix computed here."""
    U, V, D = p
    r, n = U.shape[1], D.shape[0]
    out = alignment_scores(U, V, D, top_matches=n, baseline_samples=0)
    for side, X in (("query", U), ("key", V)):
        C = np.abs((X / np.linalg.norm(X, axis=0)).T @ (D / np.linalg.norm(D, axis=1, keepdims=True)).T)
        T = out[side]["raw"]
        np.testing.assert_allclose(np.abs(_all_cos(T, n, r)), C, atol=1e-12)
        k = min(r, n)
        if r <= n:
            best = max(sum(C[i, f[i]] for i in range(r)) for f in itertools.permutations(range(n), r))
        else:
            best = max(sum(C[g[j], j] for j in range(n)) for g in itertools.permutations(range(r), n))
        assert T["matching"]["mean_abs_cos"] == pytest.approx(best / k, abs=1e-12)
        assert len({q["feature"] for q in T["matching"]["pairs"]}) == k == len({q["index"] for q in T["matching"]["pairs"]})
        assert T["mean_max_abs_cos"] == pytest.approx(C.max(axis=1).mean(), abs=1e-12)
        assert T["mean_abs_cos"] == pytest.approx(C.mean(), abs=1e-12)
