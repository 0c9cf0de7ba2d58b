"""Heavy toy-model checks of the paper's claims (docs/math.md §1). Marked ``gpu``; pass on CPU.

Trained models come from the session fixtures in ``conftest.py`` (each trained once).
Thresholds are the claims' acceptance thresholds (|cos| ≥ 0.9 for alignment) unless a comment
states another with its reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfcheck.toy.config import ToyConfig
from svfcheck.toy.metrics import check_alignment, rope_band_energy, summarize
from svfcheck.toy.model import ToyModel
from svfcheck.toy.run import arrival_step, arrival_step_one_to_one, arrival_trend
from svfcheck.toy.sad import toy_sad

from svfcheck.toy.run import SWEEPS

DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # as in conftest.toy_main
LAMBDAS, NS, DHS, MS, PS = SWEEPS["lam"], SWEEPS["n"], SWEEPS["d_h"], SWEEPS["m"], SWEEPS["p"]
P_BUDGET = 80_000  # as in conftest.P_STEPS

pytestmark = pytest.mark.gpu

DEFAULT = ToyConfig()


def _fig(chk):
    return json.dumps(chk.figures, default=float)


# ---- default config (paper Table 1, Fig. 2/3/11/18) ------------------------------------------

@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_default_all_four_pairs_align(toy_main, seed):
    """Mean index-matched |cos| ≥ 0.9 for query and key features; top-4 singular values ordered like Λ
    (and each pair's best singular index is its own: one-to-one)."""
    s = toy_main["default"][seed].summary
    chk = check_alignment(s, min_mean_cos=0.9, ordered=True)
    assert chk.ok, f"seed {seed}: {chk.failures} {_fig(chk)}"


def test_default_mean_over_seeds(toy_main):
    q = np.mean([toy_main["default"][s].summary["alignment"]["query_index"] for s in DEFAULT_SEEDS])
    k = np.mean([toy_main["default"][s].summary["alignment"]["key_index"] for s in DEFAULT_SEEDS])
    assert q >= 0.9 and k >= 0.9, (q, k)


def test_default_nontarget_features_orthogonal(toy_main):
    """Fig. 1c: non-target features orthogonal to the target features. Tolerance |cos| ≤ 0.05
    (2.9° from orthogonal; Fig. 1c shows no visible interference), over non-target features with
    at least 10% of the largest feature norm (dropped features have no meaningful direction)."""
    for s in DEFAULT_SEEDS:
        o = toy_main["default"][s].summary["orthogonality"]
        assert o["max_abs_cos"] <= 0.05, (s, o["max_abs_cos"])


# ---- single pair (Fig. 1b, 2a) ------------------------------------------------------------

@pytest.mark.parametrize("seed", (0, 1))
def test_single_pair(toy_main, seed):
    """One dominant singular value (s_0/s_1 ≥ 10 — "only a single large singular value"),
    |cos(w_0,u_0)| ≥ 0.95 and |cos(w_1,v_0)| ≥ 0.95, w_0 and w_1 orthogonal to the other
    features (|cos| ≤ 0.05, same tolerance and norm cut-off as the default test)."""
    r = toy_main["single-pair"][seed]
    s = r.summary
    chk = check_alignment(s, min_mean_cos=0.95, min_each_cos=0.95, min_gap=10.0)
    assert chk.ok, f"{chk.failures} {_fig(chk)}"
    assert s["alignment"]["pairs"][0][:2] == [0, 1]
    assert s["orthogonality"]["max_abs_cos"] <= 0.05, s["orthogonality"]["max_abs_cos"]


# ---- 100 features, 20 pairs (paper §4) -----------------------------------------------------

def _f100_check(summary):
    """All 20 pairs align, matching-free: every pair's query and key feature has |cos| ≥ 0.9 with
    some singular vector. 0.9 is the alignment threshold, applied to every pair (not the
    mean) because the claim is that *all* pairs align; by chance (random unit vectors in R^50
    against 50 orthonormal directions) the max |cos| is ≈ 0.4, so 0.9 is far from chance.
    Matching-free because the two lowest-logit pairs may share one singular vector (measured:
    pairs 18 and 19 both on index 18 after 10k steps, s_19 ≈ 0.16), so index order is not
    asserted."""
    return check_alignment(summary, min_mean_cos=0.9, min_each_cos=0.9, ordered=False, matching_free=True)


def test_100_features_all_20_pairs_align(toy_main, record_property):
    r = toy_main["100-features"][0]
    al = r.summary["alignment"]
    record_property("f100_alignment", json.dumps(
        {"query_free": al["query_free"], "key_free": al["key_free"], "query_argmax": al["query_argmax"],
         "key_argmax": al["key_argmax"], "spectrum": r.summary["spectrum"][:22]}, default=float))
    assert len(al["pairs"]) == 20
    chk = _f100_check(r.summary)
    assert chk.ok, f"{chk.failures} {_fig(chk)}"


def test_100_features_negative_control_untrained_fails():
    from svfcheck.toy.config import preset

    cfg = preset("100-features")
    s = summarize(cfg, ToyModel([cfg], [0]).instance_weights(0))
    assert not _f100_check(s).ok


# ---- negative controls -------------------------------------------------------------------

@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_negative_control_untrained_fails(seed):
    s = summarize(DEFAULT, ToyModel([DEFAULT], [seed]).instance_weights(0))
    assert not check_alignment(s, min_mean_cos=0.9, ordered=True).ok
    assert not check_alignment(s, min_mean_cos=0.9, ordered=False, matching_free=True).ok


def test_negative_control_lambda0_fails(toy_main):
    """A head trained with Λ = 0 (uniform target attention), judged against the default pairs,
    must fail the very assertions the default model passes."""
    w = toy_main["lambda0"][0].weights
    s = summarize(DEFAULT, w)
    chk = check_alignment(s, min_mean_cos=0.9, ordered=True)
    assert not chk.ok, _fig(chk)
    assert not check_alignment(s, min_mean_cos=0.9, ordered=False, matching_free=True).ok
    assert not check_alignment(s, min_mean_cos=0.95, min_each_cos=0.95, min_gap=10.0, n_pairs=1).ok


# ---- App. A sweeps (matching-free) ---------------------------------------------------------

def _sweep_ok(summary):
    return check_alignment(summary, min_mean_cos=0.9, ordered=False, matching_free=True)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_lambda_sweep(toy_main, lam):
    r = toy_main["default"][0] if lam == 4.0 else toy_main[f"lam{lam:g}"][0]
    chk = _sweep_ok(r.summary)
    assert chk.ok, f"λ={lam}: {chk.failures} {_fig(chk)}"


@pytest.mark.parametrize("n", NS)
def test_n_sweep(toy_main, n):
    r = toy_main["default"][0] if n == 20 else toy_main[f"n{n}"][0]
    chk = _sweep_ok(r.summary)
    assert chk.ok, f"n={n}: {chk.failures} {_fig(chk)}"


@pytest.mark.parametrize("d_h", DHS)
def test_head_dim_sweep(toy_main, d_h):
    r = toy_main["default"][0] if d_h == 10 else toy_main[f"dh{d_h}"][0]
    chk = _sweep_ok(r.summary)
    assert chk.ok, f"d_h={d_h}: {chk.failures} {_fig(chk)}"


@pytest.mark.parametrize("m", MS)
def test_context_length_sweep(toy_main, m):
    r = toy_main["default"][0] if m == 4 else toy_main[f"m{m}"][0]
    chk = _sweep_ok(r.summary)
    assert chk.ok, f"m={m}: {chk.failures} {_fig(chk)}"


@pytest.mark.parametrize("p", PS)
def test_p_sweep_final_alignment(toy_psweep, p):
    for seed, r in toy_psweep[f"p{p:g}"].items():
        chk = _sweep_ok(r.summary)
        assert chk.ok, f"p={p} seed {seed}: {chk.failures} {_fig(chk)}"


def _p_arrivals(toy_psweep):
    """Per p and seed: one-to-one arrival (the asserted one), matching-free arrival (recorded for
    comparison), the step training stopped at."""
    per_seed = {}
    for p in PS:
        per_seed[p] = {s: {"one_to_one": arrival_step_one_to_one(r.trajectory, r.config),
                           "matching_free": arrival_step(r.trajectory),
                           "stopped_at": int(r.trajectory["step"][-1])}
                       for s, r in toy_psweep[f"p{p:g}"].items()}
    return per_seed


def _p_trends(toy_psweep, record_property):
    import os
    from pathlib import Path

    per_seed = _p_arrivals(toy_psweep)
    trends = {m: arrival_trend({p: [v[m] for v in per_seed[p].values()] for p in PS})
              for m in ("one_to_one", "matching_free")}
    rec = {"per_seed": per_seed, "trend": trends}
    record_property("arrival_step_by_p", json.dumps(rec, default=float))
    out = os.environ.get("SVFCHECK_TOY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "p_sweep_arrival.json").write_text(json.dumps(rec, indent=1, default=float))
    return per_seed, trends


# Fig. 13, measured with scripts/p_sweep_arrival.py (= this fixture's training: 80k budget, record
# every 250, one-to-one early stop, 5k patience, one worker), seeds 0-9. One-to-one arrival
# step per seed ("-": not aligned one-to-one within 80k steps):
#   p = 1:    4250 3500 3500 3750 4000 | 3750 4500 3000 4000 3250   mean 3750, median 3750
#   p = 0.5:  1250 1500 2500 1000 1250 | 1750 1750 2000 1250 1000   mean 1525, median 1375
#   p = 0.25: 2750 1750 1250 1750 -    | -    -    2250 1000 -      6/10 arrived (mean of those 1792)
#   p = 0.1:  -    -    -    -    -    | -    -    -    -    -      0/10 (trained all 80k steps; at the
#   p = 0.05: -    -    -    -    -    | -    -    -    -    -      0/10  end two pairs share a singular vector)
# Spearman ρ(p, seed-mean arrival), censored as later than the budget (run.arrival_trend):
# ρ = -0.78 (seed means; per seed -0.67); seeds 0-1 only (this fixture): ρ = -0.67. The trend holds
# in that sense: p ≥ 0.5 always aligns within ~5k steps, p = 0.25 in 6/10 seeds, p ≤ 0.1 never. It
# rests on the censored low p: of the 120 orderings of the five p values, 50% give ρ < 0 and 10%
# give ρ ≤ -0.78. Among the p values that arrived it is reversed at the top: p = 1 is slower
# than p = 0.5 in every seed (min 3000 > max 2500) — see test_p_sweep_arrival_monotone_in_p.
# Matching-free arrival on the same runs, seeds 0-9: p=1 4000 3250 3250 3500 3750 3500 4250 2750
# 3750 3000 | 0.5 1000 1250 2250 1000 1250 1750 1500 1750 1250 1000 | 0.25 2500 1500 1250 1750 3750
# 1000 1250 2000 1000 1000 | 0.1 8500 1000 1250 46750 1000 1250 4750 1500 2000 16750 | 0.05 37000
# 1500 58000 60000 1250 64000 37500 1000 52750 43000; seed means 3500/1400/1700/8475/35600,
# ρ = -0.70 (per seed -0.15; so on these 80k-step runs it would pass too, not a negative control): it counts
# pairs sharing a singular vector as aligned (query argmax e.g. [0, 2, 1, 0] at p = 0.05 after
# 80k steps), which is why the asserted metric is one-to-one (decided before these numbers; see
# run.arrival_step_one_to_one). The previous xfail (matching-free seed means 3625/1125/2000/4750/
# 1500, ρ = 0.00, seeds 0-1) used a matching-free early stop that ended training as soon as the
# shared alignment had held 5k steps, so its "stays aligned to the end" was read at ~6-13k steps.
# Negative controls of the assertion (synthetic, tests/toy/test_run_toy.py::
# test_arrival_trend_can_fail): p shuffled, a U-shaped curve (the old one: ρ = 0) or a large p
# that never arrives make it fail.
def test_p_sweep_alignment_arrives_earlier_for_larger_p(toy_psweep, record_property):
    """Fig. 13: alignment arrives earlier in training the larger p. Asserted as a negative rank
    correlation between p and the seed-mean arrival step over the whole swept range, with the
    arrival of *all four pairs one-to-one* (:func:`~svfcheck.toy.run.arrival_step_one_to_one`:
    first recorded step from which every pair has its own singular index, any order, with query
    and key |cos| ≥ 0.9). A p whose seeds do not all arrive within the 80k budget is not a failure
    (the paper ties that to its step budget): it is censored — ranked after every p that arrived
    (:func:`~svfcheck.toy.run.arrival_trend`) — and listed. The curve (both metrics, all seeds) is
    recorded (``arrival_step_by_p`` property; ``p_sweep_arrival.json`` in ``$SVFCHECK_TOY_OUT``)."""
    per_seed, trends = _p_trends(toy_psweep, record_property)
    t = trends["one_to_one"]
    assert len(t["not_arrived"]) < len(PS), f"no p value aligned one-to-one within the budget: {per_seed}"
    assert t["rho"] < 0, (f"one-to-one arrival by p (seed mean): {t['mean']}, not arrived within "
                          f"{P_BUDGET} steps: {t['not_arrived']}; Spearman ρ = {t['rho']:.2f}; {per_seed}")


_MONOTONE_XFAIL = ("Fig. 13 is not monotone at the top of the range: dense tokens (p = 1, every feature in "
                   "every token) align one-to-one later than p = 0.5 — seeds 0-9: p=1 4250 3500 3500 3750 4000 3750 4500 "
                   "3000 4000 3250 (mean 3750), p=0.5 1250 1500 2500 1000 1250 1750 1750 2000 1250 1000 "
                   "(mean 1525); p=0.25 6/10 arrived, p<=0.1 0/10 within 80k steps")


@pytest.mark.xfail(strict=True, reason=_MONOTONE_XFAIL)
def test_p_sweep_arrival_monotone_in_p(toy_psweep, record_property):
    """The strong reading of Fig. 13: the seed-mean one-to-one arrival never increases with p
    (censored p values, which did not arrive within the budget, count as latest)."""
    per_seed, trends = _p_trends(toy_psweep, record_property)
    mean = trends["one_to_one"]["mean"]
    inf = [np.inf if mean[p] is None else mean[p] for p in sorted(PS)]  # increasing p
    assert all(b <= a for a, b in zip(inf, inf[1:])), f"seed-mean one-to-one arrival by p: {mean}"


# ---- App. E: over capacity ---------------------------------------------------------------

@pytest.mark.parametrize("seed", (0, 1))
def test_over_capacity_high_logit_pairs_one_to_one(toy_main, seed):
    """10 pairs on a head of dimension 5: the top d_h − 1 = 4 pairs (highest logits) align one-to-one
    with singular indices 0..3 (index-matched mean |cos| ≥ 0.9, ordered); the last singular vector
    is where the paper finds the low-logit pairs collapse, so it is not asserted."""
    s = toy_main["over-capacity"][seed].summary
    chk = check_alignment(s, min_mean_cos=0.9, ordered=True, n_pairs=4)
    assert chk.ok, f"{chk.failures} {_fig(chk)}"


# ---- App. D: RoPE ------------------------------------------------------------------------

def test_rope_position_independent_pairs_align(toy_main):
    """Alignment with the singular vectors of Ω(0) = W_Q W_Kᵀ for the position-independent pairs."""
    r = toy_main["rope"][0]
    chk = check_alignment(r.summary, min_mean_cos=0.9, ordered=False, matching_free=True)
    assert chk.ok, f"{chk.failures} {_fig(chk)}"


def test_rope_band_allocation(toy_main, record_property):
    """App. D, Fig. 22: the positional pair (6, 7) is encoded in band 1 (period ≈ context) and the
    position-independent pairs in the slow bands 2–4. Threshold: ≥ 0.9 of the feature's head
    encoding energy (W_Qᵀw for query features, W_Kᵀw for key features) in those bands
    ("allocated to the band"; chosen after a 2-seed pilot measured ≥ 0.99 — see the report)."""
    r = toy_main["rope"][0]
    e = rope_band_energy(r.config, r.weights)
    record_property("rope_band_energy", json.dumps(e))
    q, k = np.asarray(e["query"]), np.asarray(e["key"])
    assert np.allclose(q.sum(1), 1.0)
    (a_pos, b_pos, _v, band), = r.config.rope.positional
    assert q[a_pos, band] >= 0.9 and k[b_pos, band] >= 0.9, (q[a_pos], k[b_pos])
    for a, b, _ in r.config.pairs:
        assert q[a, 2:].sum() >= 0.9 and k[b, 2:].sum() >= 0.9, (a, b, q[a], k[b])


# ---- §5 / App. F: sparse attention decomposition in the toy ---------------------------------

# Measured after 10k steps (n_samples 2000, probe seed = model seed), mean S for 0 / 1 / 2 pairs:
#   seed 0: 0.166 / 0.100 / 0.154   seed 1: 0.265 / 0.100 / 0.155   seed 2: 0.247 / 0.100 / 0.155
#   seed 3: 0.187 / 0.100 / 0.154   seed 4: 0.199 / 0.100 / 0.155
# Seed 0's margin S(0) − S(2) is thin: with the earlier trainer (autograd, token-major data:
# same seeds and distribution, other draws) it was 0.153 vs 0.154 and this was a strict xfail.
# Class 0 is decomposed over the leftover singular values, which weight decay shrinks until one
# of them dominates, so S(0) drifts down late in training (default_sad_over_training.png).


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_sad_ordering(toy_main, seed):
    """Fig. 7a: mean Rolls–Tovee S with one pair present < two pairs < no pair."""
    r = toy_main["default"][seed]
    sad = toy_sad(r.config, r.weights, n_samples=2000, seed=seed)
    S = {k: v["mean"] for k, v in sad["classes"].items()}
    assert S["1"] < S["2"] < S["0"], S


def test_sad_contribution_tracks_strength_product(toy_main):
    """Fig. 6: a singular vector's contribution correlates with the feature-strength product.
    Threshold r ≥ 0.9 (the paper shows a near-linear scatter)."""
    r = toy_main["default"][0]
    sad = toy_sad(r.config, r.weights, n_samples=2000, seed=0)
    assert sad["correlation"] and min(sad["correlation"].values()) >= 0.9, sad["correlation"]


# ---- App. C.3: anisotropy ----------------------------------------------------------------

@pytest.mark.parametrize("teacher", ("toy", "whitened"))
def test_anisotropy_antiwhitening_helps(toy_aniso, teacher):
    """Anti-whitened alignment ≥ raw alignment at every ε (seed means). Slack 0.01 for the
    optimisation noise of a finite run at ε = 0, where the two are equal in theory."""
    for row in toy_aniso[teacher]["summary"]:
        assert row["anti_mean"] >= row["raw_mean"] - 0.01, row


@pytest.mark.parametrize("teacher", ("toy", "whitened"))
def test_anisotropy_theorem2_bound(toy_aniso, teacher):
    """Observed raw alignment respects the Theorem 2 lower bound √(1−(η/(1−η))²) wherever η < 1.

    The bound is about the exact minimiser; the trained head is within optimisation error of
    it. That error is measured, not chosen: at ε = 0 the theory gives |cos| = 1 exactly, so
    ``1 − raw_min(ε=0)`` (≈1e-5 here) is the slack allowed at every ε."""
    rows = toy_aniso[teacher]["summary"]
    eps0 = [r for r in rows if r["eps"] == 0.0]
    assert eps0, "the sweep must include ε = 0 to measure the optimisation error"
    slack = 1.0 - eps0[0]["raw_min"]
    assert slack < 1e-3, f"training did not converge at ε = 0 (|cos| = {eps0[0]['raw_min']})"
    checked = 0
    for row in rows:
        if row["cos_bound_paper"] is None:
            continue
        checked += 1
        assert row["raw_min"] >= row["cos_bound_paper"] - slack, row
    assert checked >= 2


def test_anisotropy_rank1_bound_whitened(toy_aniso):
    """docs/math.md §2.5: the minimiser is exactly rank 1, so the tighter bound sin∠(u, a*) ≤ δ = ε/(1−ε)
    holds wherever δ < 1 (ε < 0.5) — checked in the theorem's own (whitened-teacher) setting,
    with the same measured optimisation slack as above."""
    rows = toy_aniso["whitened"]["summary"]
    slack = 1.0 - next(r for r in rows if r["eps"] == 0.0)["raw_min"]
    checked = 0
    for row in rows:
        if row["delta"] is None or row["delta"] >= 1:
            continue
        checked += 1
        assert row["raw_min"] >= row["cos_bound_rank1"] - slack, row
    assert checked >= 4


# ---- Fig. 3: training dynamics -----------------------------------------------------------

def test_training_dynamics_fig3_from_trajectory(toy_main, record_property):
    """The Fig. 3 figure's data comes from the real recorded trajectory: at step 0 the pairs of
    interest are not aligned (mean index-matched |cos| < 0.9, the claim's own threshold, on both
    sides), at the last step they are (≥ 0.9), and the last heatmaps equal the final model's
    |cos| matrices computed independently by ``summarize`` (same float64 SVD of the same weights:
    tolerance 1e-6 for SVD round-off; |cos| is sign-free)."""
    from svfcheck.toy.dynamics import training_dynamics

    r = toy_main["default"][0]
    d = training_dynamics(r.config, r.trajectory)
    first, last = d["panels"][0], d["panels"][-1]
    record_property("fig3_panel_pair_cos", json.dumps(
        {p["step"]: [round(float(np.mean(p["pair_query_cos"])), 3), round(float(np.mean(p["pair_key_cos"])), 3)]
         for p in d["panels"]}))
    assert first["step"] == 0 and last["step"] == r.trajectory["step"][-1] and len(d["panels"]) >= 3
    assert np.mean(first["pair_query_cos"]) < 0.9 and np.mean(first["pair_key_cos"]) < 0.9, first
    assert np.mean(last["pair_query_cos"]) >= 0.9 and np.mean(last["pair_key_cos"]) >= 0.9
    assert np.allclose(last["cos_query"], r.summary["cos_query"], atol=1e-6)
    assert np.allclose(last["cos_key"], r.summary["cos_key"], atol=1e-6)
    curves = d["curves"]
    assert curves["alignment_index"][0] < 0.9 <= curves["alignment_index"][-1]
    # the top singular value grows from its initial size towards the largest target logit (24)
    assert curves["top_singular_values"][-1][0] > 3 * curves["top_singular_values"][0][0]
