"""Hand-computable checks of the SAD metrics in svfcheck.metrics (docs/math.md §3.3–§3.5)."""

from __future__ import annotations

import numpy as np
import pytest

from svfcheck.metrics import haar_orthogonal, reconstruction_count, relative_contributions, rolls_tovee


class TestRollsTovee:
    def test_flat_vector_is_one(self):
        assert rolls_tovee(np.full(8, 3.0)) == pytest.approx(1.0, abs=1e-15)

    def test_one_hot_is_one_over_length(self):
        c = np.zeros(64)
        c[17] = -2.5  # sign must not matter
        assert rolls_tovee(c) == pytest.approx(1 / 64, abs=1e-15)

    def test_hand_value(self):
        # c = (1, -1, 2, 0): mean|c| = 1, mean c^2 = 6/4 -> S = 1 / 1.5
        assert rolls_tovee(np.array([1.0, -1.0, 2.0, 0.0])) == pytest.approx(2 / 3, abs=1e-15)

    def test_scale_invariant_and_batched(self):
        c = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
        np.testing.assert_allclose(rolls_tovee(c), rolls_tovee(1e3 * c), rtol=1e-14)
        np.testing.assert_allclose(rolls_tovee(c), [(2.0**2) / (14 / 3), 1 / 3], rtol=1e-14)

    def test_all_zero_raises(self):
        with pytest.raises(ValueError, match="all-zero"):
            rolls_tovee(np.zeros(4))

    def test_all_zero_row_in_a_batch_raises(self):
        # one undefined row must not come back as a NaN among valid values
        with pytest.raises(ValueError, match="all-zero"):
            rolls_tovee(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]]))


class TestReconstructionCount:
    def test_one_dominant_term(self):
        assert reconstruction_count(np.array([0.1, 5.0, -0.2, 0.05])) == 1

    def test_needs_all_positive_terms_when_negatives_present(self):
        # total = 1; sorted desc 0.6, 0.5, 0.4, -0.5 -> partial sums 0.6, 1.1 -> k = 2
        assert reconstruction_count(np.array([0.4, -0.5, 0.6, 0.5])) == 2

    def test_flat(self):
        assert reconstruction_count(np.full(5, 0.2)) == 5

    def test_ties_round_off_guard(self):
        # exact sum reached only by all terms; float cumsum of 0.1's differs from sum() by ulps
        c = np.full(10, 0.1)
        assert reconstruction_count(c) == 10

    def test_explicit_total_not_reached(self):
        # a non-exact control decomposition whose terms cannot reach the total -> R + 1
        assert reconstruction_count(np.array([0.1, 0.2]), total=1.0) == 3

    def test_nonpositive_total_raises(self):
        with pytest.raises(ValueError, match="positive total"):
            reconstruction_count(np.array([0.5, -1.0]))

    def test_batched(self):
        c = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
        np.testing.assert_array_equal(reconstruction_count(c), [1, 3])

    @pytest.mark.parametrize("total, k", [(0.5, 1), (0.75, 2), (1.0, 3), (np.nextafter(1.0, 2.0), 4)])
    def test_exact_boundary_without_slack(self, total, k):
        # dyadic terms: every partial sum (0.5, 0.75, 1.0) is exact, so with rtol = 0 a partial
        # sum *equal* to the total reaches it (>=); one ulp above the sum of all terms is R + 1
        assert reconstruction_count(np.array([0.25, 0.5, 0.25]), total=total, rtol=0.0) == k


class TestRelativeContributions:
    def test_hand_example(self):
        terms = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])  # 3 keys, 2 terms
        c = relative_contributions(terms, key=0)
        np.testing.assert_allclose(c, [1 - 4.0, 0 - 3.0])

    def test_sums_to_relative_logit(self):
        rng = np.random.default_rng(0)
        terms = rng.standard_normal((7, 5))
        logits = terms.sum(-1)
        for j in range(7):
            rel = logits[j] - (logits.sum() - logits[j]) / 6
            assert relative_contributions(terms, j).sum() == pytest.approx(rel, abs=1e-12)

    def test_key_subset(self):
        terms = np.arange(12.0).reshape(4, 3)
        c = relative_contributions(terms, key=2, keys=np.array([0, 2]))
        np.testing.assert_allclose(c, terms[2] - terms[0])
        with pytest.raises(ValueError, match="not among the visible keys"):
            relative_contributions(terms, key=1, keys=np.array([0, 2]))

    def test_single_key_raises(self):
        with pytest.raises(ValueError, match="at least 2"):
            relative_contributions(np.ones((1, 4)), key=0)


def test_haar_orthogonal_is_orthogonal_seeded_and_unbiased():
    q = haar_orthogonal(6, np.random.default_rng(1), size=(2000,))
    eye = np.eye(6)
    np.testing.assert_allclose(q @ np.swapaxes(q, -1, -2), np.broadcast_to(eye, q.shape), atol=1e-12)
    np.testing.assert_array_equal(q[0], haar_orthogonal(6, np.random.default_rng(1), size=(2000,))[0])
    # Haar: E[Q] = 0. Without the sign fix, QR's convention biases the diagonal positive.
    # Each entry has variance 1/6; the mean of 2000 has sd 0.0091, so 0.05 is > 5 sd.
    assert np.abs(q.mean(axis=0)).max() < 0.05
