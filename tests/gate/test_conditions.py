"""Condition logic on hand-made per-pair records (no model): pass/fail boundaries, the
discrimination rule, the minimum pair count, and checks that need the model's shape.

Records with constant S per model make every bootstrap interval degenerate (low = high =
estimate), so expected figures are exact arithmetic on the constants, not pipeline output.
Such records cannot tell which end of its interval a condition reads; the tests at the end
give the model's S a spread so that the 99% interval straddles the margin.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from svfcheck.gate.evaluate import Evaluator, _judge
from svfcheck.gate.spec import SpecError, load_spec
from svfcheck.real.pipeline import SADRun

SPEC = """\
[model]
name = "smollm2-135m"
[task]
kind = "ioi"
n_prompts = 1
[pairs]
min_pairs = {min_pairs}
[analysis]
n_boot = 1000
[baseline]
seed = 0
[[condition]]
kind = "sad_effect_vs_random_init"
control = "rotated"
margin = {margin}
[[condition]]
kind = "sad_effect_vs_random_init"
control = "paper_control"
margin = {margin}
[[condition]]
kind = "s_svd_below_random_init"
margin = {margin}
[[condition]]
kind = "median_k_at_most"
heads = [[0, 1]]
bound = {bound}
[[condition]]
kind = "median_k_at_most"
name = "median_k_all"
bound = {bound}
[[condition]]
kind = "max_reconstruction_error"
bound = {err_bound}
"""


class FakeResult:
    """Duck-typed SADResult: ``n`` pairs of head (0, 1) then ``n`` of head (0, 2)."""

    def __init__(self, n, s_svd, s_rot, s_paper, k_named, k_other, err=1e-7):
        self.records = {
            "layer": np.zeros(2 * n, dtype=np.int64),
            "head": np.array([1] * n + [2] * n),
            "rolls_tovee": np.full(2 * n, s_svd),
            "rolls_tovee_rotated": np.full(2 * n, s_rot),
            "rolls_tovee_paper_control": np.full(2 * n, s_paper),
            "k": np.array([k_named] * n + [k_other] * n),
        }
        self.summary = {"n_pairs": 2 * n}
        self.max_reconstruction_error = err

    def __len__(self):
        return len(self.records["k"])

    def valid(self):
        return np.ones(len(self), dtype=bool)

    def s(self, which="svd"):
        return self.records["rolls_tovee" if which == "svd" else f"rolls_tovee_{which}"]


def _spec(write_spec, margin=0.1, bound=3, err_bound=1e-5, min_pairs=500):
    return load_spec(write_spec(SPEC.format(margin=margin, bound=bound, err_bound=err_bound, min_pairs=min_pairs)))


def _judge_all(spec, model, base):
    run = SADRun.of(spec.settings, model, base)
    return {c.name: _judge(spec, c, run) for c in spec.conditions}


# dyadic constants, so every mean and difference is exact in binary floating point:
# model effects rotated 0.5 - 0.25 = 0.25, paper 0.375 - 0.25 = 0.125;
# baseline effects 0.5625 - 0.5 = 0.0625, 0.53125 - 0.5 = 0.03125
MODEL = dict(s_svd=0.25, s_rot=0.5, s_paper=0.375, k_named=2, k_other=6)
BASE = dict(s_svd=0.5, s_rot=0.5625, s_paper=0.53125, k_named=5, k_other=5)
N = 600  # pairs per head: 600 named-head pairs, 1200 in all (min_pairs 500)


def test_trained_like_records_pass_with_exact_figures(write_spec):
    spec = _spec(write_spec, margin=0.09, bound=3)
    r = _judge_all(spec, FakeResult(N, **MODEL), FakeResult(N, **BASE))
    assert r["sad_effect_rotated"].passed and r["sad_effect_rotated"].measured == 0.25 - 0.0625
    assert r["sad_effect_paper_control"].passed and r["sad_effect_paper_control"].measured == 0.125 - 0.03125
    assert r["s_svd_below_random_init"].passed and r["s_svd_below_random_init"].measured == 0.25 - 0.5
    named = r["median_k_L0H1"]
    assert named.passed and named.measured == 2 and named.baseline_measured == 5 and named.discriminating
    # over all pairs the model's median is (2 + 6) / 2 = 4 > 3: fails on the model itself
    assert not r["median_k_all"].passed and r["median_k_all"].measured == 4
    assert r["max_reconstruction_error"].passed and r["max_reconstruction_error"].measured == 1e-7
    assert r["sad_effect_rotated"].threshold == 0.09 and r["s_svd_below_random_init"].threshold == -0.09


def test_margins_are_strict_boundaries(write_spec):
    """Difference 0.1875 (rotated) must exceed the margin: 0.1875 itself fails, 0.1874 passes."""
    model, base = FakeResult(N, **MODEL), FakeResult(N, **BASE)
    at = _judge_all(_spec(write_spec, margin=0.1875), model, base)
    below = _judge_all(_spec(write_spec, margin=0.1874), model, base)
    assert not at["sad_effect_rotated"].passed and below["sad_effect_rotated"].passed
    # S_svd difference -0.25 must be below -margin
    assert not _judge_all(_spec(write_spec, margin=0.25), model, base)["s_svd_below_random_init"].passed
    assert _judge_all(_spec(write_spec, margin=0.2499), model, base)["s_svd_below_random_init"].passed


def test_random_init_against_itself_fails_every_sad_condition(write_spec):
    """A model indistinguishable from its baseline (difference exactly 0) fails the relative
    conditions even with margin 0, and the absolute median-k condition as non-discriminating."""
    spec = _spec(write_spec, margin=0.0, bound=5)
    same = FakeResult(N, **BASE)
    r = _judge_all(spec, same, FakeResult(N, **BASE))
    for name in ("sad_effect_rotated", "sad_effect_paper_control", "s_svd_below_random_init"):
        assert not r[name].passed, r[name].line()
        assert r[name].measured == pytest.approx(0.0, abs=1e-12)
    k = r["median_k_L0H1"]
    assert k.measured == 5 <= 5 and not k.passed and k.discriminating is False
    assert "NON-DISCRIMINATING" in k.detail
    assert r["max_reconstruction_error"].passed and r["max_reconstruction_error"].discriminating is None


def test_non_discriminating_median_k_fails_even_when_the_model_meets_it(write_spec):
    spec = _spec(write_spec, bound=3)
    base = dict(BASE, k_named=3)  # the random init also has median k 3 on head (0, 1)
    r = _judge_all(spec, FakeResult(N, **MODEL), FakeResult(N, **base))["median_k_L0H1"]
    assert r.measured == 2 and r.baseline_measured == 3
    assert not r.passed and "NON-DISCRIMINATING: random init median k = 3 also <= 3" in r.detail


def test_too_few_pairs_fail_sad_conditions_only(write_spec):
    """200 named-head pairs: below min_pairs 500 for the named-head median; 400 pairs in all <
    500 for the contrasts. Exactness is not a statistical claim and still passes."""
    spec = _spec(write_spec, margin=0.1, bound=3)
    r = _judge_all(spec, FakeResult(200, **MODEL), FakeResult(200, **BASE))
    for name in ("sad_effect_rotated", "s_svd_below_random_init", "median_k_L0H1"):
        assert not r[name].passed and "too few pairs" in r[name].detail, r[name].line()
    assert r["max_reconstruction_error"].passed
    ok = _judge_all(_spec(write_spec, margin=0.1, bound=3, min_pairs=200), FakeResult(200, **MODEL), FakeResult(200, **BASE))
    assert ok["sad_effect_rotated"].passed and ok["median_k_L0H1"].passed


def test_reconstruction_error_bound_is_strict(write_spec):
    spec = _spec(write_spec, err_bound=1e-5)
    for err, ok in ((9.9e-6, True), (1e-5, False), (0.3, False)):
        r = _judge_all(spec, FakeResult(N, **MODEL, err=err), FakeResult(N, **BASE))["max_reconstruction_error"]
        assert r.passed is ok and r.measured == err


def test_named_heads_without_pairs_is_a_spec_error(write_spec):
    spec = load_spec(write_spec(SPEC.format(margin=0.1, bound=3, err_bound=1e-5, min_pairs=1).replace("[[0, 1]]", "[[0, 7]]")))
    cond = next(c for c in spec.conditions if c.kind == "median_k_at_most")
    with pytest.raises(SpecError, match=r"condition\[3\]\.heads: no analysed pair of the named heads"):
        _judge(spec, cond, SADRun.of(spec.settings, FakeResult(10, **MODEL), FakeResult(10, **BASE)))


def test_bounds_and_heads_checked_against_the_loaded_model(write_spec):
    """Tiny llama: 2 layers x 4 heads, d_h = 16."""
    from svfcheck.real.models import tiny_random_model

    lm = types.SimpleNamespace(model=tiny_random_model("llama", seed=0), name="tiny")
    ev = Evaluator(progress=False)
    ev._check_against_model(_spec(write_spec, bound=16), lm)  # bound = d_h is allowed
    with pytest.raises(SpecError, match=r"condition\[3\]\.bound: got 17, but tiny has d_h = 16") as ei:
        ev._check_against_model(_spec(write_spec, bound=17), lm)
    assert "expected a number in [1, 16]" in str(ei.value)
    bad = load_spec(write_spec(SPEC.format(margin=0.1, bound=3, err_bound=1e-5, min_pairs=1).replace("[[0, 1]]", "[[0, 1], [2, 0]]")))
    with pytest.raises(SpecError, match=r"condition\[3\]\.heads\[1\]: head \[2, 0\] is outside tiny \(2 layers x 4 heads\)"):
        ev._check_against_model(bad, lm)


# Intervals with spread. The model's S alternates between two dyadic values (mean exact, SD
# 0.125) over 1200 pairs, the baseline is constant, so the difference's 99% bootstrap interval
# has half-width about 2.576 * 0.125 / sqrt(1200) = 0.0093 around an exact estimate (measured
# with n_boot = 1000, seed 0: rotated [0.1785, 0.1973] around 0.1875; S_svd [-0.2590, -0.2402]
# around -0.25). Each margin sits halfway between the gated end and the estimate, ~0.0045 from
# both, i.e. ~8 standard errors of a 1000-resample 0.5% quantile (~0.0006) — so the verdict
# does not hinge on the resampling. Reading the other end, or the estimate, flips the verdict.
# Tolerances below: width > 0.015 (expected 0.0186) asserts a real interval; the margin must
# sit > 0.003 (~5 quantile standard errors) inside it, so the straddle itself is asserted.
SPREAD = np.tile([-0.125, 0.125], N)  # 2 * N = 1200 pairs, mean 0, SD 0.125


def test_sad_effect_reads_the_lower_end_of_a_straddling_interval(write_spec):
    """Effect difference 0.1875 [~0.178, ~0.197] for both controls (paper: 0.46875 - 0.25 -
    0.03125), margin 0.183 inside: FAIL by the lower end (documented), where the upper end or
    the estimate would PASS."""
    spec = _spec(write_spec, margin=0.183)
    model = FakeResult(N, **dict(MODEL, s_rot=0.5 + SPREAD, s_paper=0.46875 + SPREAD))
    r = _judge_all(spec, model, FakeResult(N, **BASE))
    for name in ("sad_effect_rotated", "sad_effect_paper_control"):
        c = r[name]
        f = c.figures
        assert f["estimate"] == 0.1875 and f["high"] - f["low"] > 0.015, c.line()  # a real interval
        assert f["low"] < 0.183 - 0.003 and f["estimate"] > 0.183 + 0.003, c.line()  # the margin straddled
        assert not c.passed and c.measured == f["low"] and c.threshold == 0.183, c.line()


def test_s_svd_below_reads_the_upper_end_of_a_straddling_interval(write_spec):
    """S_svd difference -0.25 [~-0.259, ~-0.240], -margin = -0.245 inside: FAIL by the upper
    end (documented), where the lower end or the estimate would PASS."""
    spec = _spec(write_spec, margin=0.245)
    model = FakeResult(N, **dict(MODEL, s_svd=0.25 + SPREAD))
    c = _judge_all(spec, model, FakeResult(N, **BASE))["s_svd_below_random_init"]
    f = c.figures
    assert f["estimate"] == -0.25 and f["high"] - f["low"] > 0.015, c.line()
    assert f["low"] < -0.245 - 0.003 and f["high"] > -0.245 + 0.003, c.line()  # the threshold straddled
    assert not c.passed and c.measured == f["high"] and c.threshold == -0.245, c.line()


def test_interval_conditions_pass_with_spread_when_the_gated_end_clears_the_margin(write_spec):
    """The same spread records pass once the margin is below the gated end (0.17 < ~0.178 for
    the rotated effect, -0.235 > ~-0.240 for S_svd): spread alone does not fail a condition."""
    rot = _judge_all(_spec(write_spec, margin=0.17), FakeResult(N, **dict(MODEL, s_rot=0.5 + SPREAD)),
                     FakeResult(N, **BASE))["sad_effect_rotated"]
    svd = _judge_all(_spec(write_spec, margin=0.235), FakeResult(N, **dict(MODEL, s_svd=0.25 + SPREAD)),
                     FakeResult(N, **BASE))["s_svd_below_random_init"]
    assert rot.passed and rot.measured == rot.figures["low"] > 0.17, rot.line()
    assert svd.passed and svd.measured == svd.figures["high"] < -0.235, svd.line()
