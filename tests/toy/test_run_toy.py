"""Entry points and the App. C.3 construction, on tiny budgets (cheap; no marker)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfcheck.toy.anisotropy import anisotropy_experiment, paper_dictionary
from svfcheck.toy.config import ToyConfig
from svfcheck.toy.metrics import one_to_one_alignment
from svfcheck.toy.run import (arrival_step, arrival_step_one_to_one, arrival_trend, one_to_one_over_training,
                              run_default, run_sweeps)


def test_run_default_writes_figures_and_json(tmp_path):
    res = run_default(tmp_path, seeds=(0, 1), steps=60, progress=False)
    data = json.loads((tmp_path / "toy.json").read_text())
    assert data["preset"] == "default" and data["seeds"] == [0, 1] and data["steps"] == 60
    assert len(data["instances"]) == 2
    assert set(data["instances"][0]["summary"]["alignment"]) >= {"query_index", "key_index", "query_free", "key_free"}
    assert isinstance(data["all_aligned"], bool)
    for name, path in res["figures"].items():
        assert (tmp_path / path.split("/")[-1]).exists(), name
    assert {"cosine_heatmaps", "spectrum", "alignment_over_training", "training_dynamics", "sad",
            "sad_over_training"} <= set(res["figures"])
    assert data["training_dynamics"]["panels"][-1]["step"] == 60  # Fig. 3 data in the JSON


def test_module_cli(tmp_path, capsys):
    from svfcheck.toy.__main__ import main

    assert main(["--out", str(tmp_path), "--seeds", "0", "--steps", "20", "--quiet"]) == 0
    assert (tmp_path / "toy.json").exists()
    assert main(["--out", str(tmp_path), "--preset", "nope", "--steps", "5", "--quiet"]) == 2
    assert "argument --preset: invalid choice: 'nope'" in capsys.readouterr().err


def test_run_sweeps_small(tmp_path):
    r = run_sweeps(tmp_path, seeds=(0,), steps=20, p_steps=20, sweeps={"p": (1.0, 0.5), "d_h": (10, 4)},
                   progress=False)
    assert [row["value"] for row in r["sweeps"]["p"]["rows"]] == [1.0, 0.5]
    assert (tmp_path / "sweep_p.png").exists() and (tmp_path / "sweep_p_over_training.png").exists()
    assert (tmp_path / "sweeps.json").exists()
    assert len(r["sweeps"]["p"]["rows"][0]["arrival_steps_one_to_one"]) == 1 and "rho" in r["sweeps"]["p"]["arrival_trend"]


def test_arrival_step():
    traj = {"step": [0, 10, 20, 30], "query_free": [[0.5], [0.95], [0.8], [0.95]], "key_free": [[0.9], [0.95], [0.95], [0.97]]}
    assert arrival_step(traj) == 30
    traj["query_free"][2] = [0.92]
    assert arrival_step(traj) == 10
    assert arrival_step(traj, threshold=0.99) is None


def _snap(cfg, slots, noise=0.0, seed=0):
    """W, U, V with pair t's query feature on u_{slots[t]} and key feature on v_{slots[t]}
    (identity singular bases); every other feature random, plus ``noise`` on the pair features."""
    rng = np.random.default_rng(seed)
    U = V = np.eye(cfg.d)
    W = rng.normal(size=(cfg.d, cfg.n))
    for (a, b, _), j in zip(cfg.pairs_of_interest, slots):
        W[:, a] = np.eye(cfg.d)[j] + noise * rng.normal(size=cfg.d)
        W[:, b] = np.eye(cfg.d)[j] + noise * rng.normal(size=cfg.d)
    return W, U, V


def test_one_to_one_alignment_needs_distinct_indices_any_order():
    cfg = ToyConfig()  # 4 pairs, d = d_h = 10
    # distinct indices in a permuted order: aligned (order is not assumed)
    r = one_to_one_alignment(cfg.pairs_of_interest, *_snap(cfg, [3, 0, 7, 1]), rank=cfg.d_h)
    assert r["value"] == pytest.approx(1.0) and r["assignment"] == [3, 0, 7, 1]
    # pairs 0 and 3 share singular index 0 (query argmax [0, 2, 1, 0]): the matching-free max
    # counts all four as aligned, the one-to-one assignment cannot (one of them gets |cos| ≈ 0)
    W, U, V = _snap(cfg, [0, 2, 1, 0])
    r = one_to_one_alignment(cfg.pairs_of_interest, W, U, V, rank=cfg.d_h)
    assert r["value"] < 0.9 and len(set(r["assignment"])) == 4
    from svfcheck.toy.metrics import pair_alignment
    al = pair_alignment(cfg, W, U, V)
    assert min(al["query_free"]) == pytest.approx(1.0) and al["query_argmax"] == [0, 2, 1, 0]
    # query and key on different indices: not carried by one rank-1 component
    W, U, V = _snap(cfg, [0, 1, 2, 3])
    a, b, _ = cfg.pairs_of_interest[0]
    W[:, b] = np.eye(cfg.d)[5]
    assert one_to_one_alignment(cfg.pairs_of_interest, W, U, V, rank=cfg.d_h)["value"] < 0.9
    # more pairs than singular indices, or none: undefined
    assert np.isnan(one_to_one_alignment(cfg.pairs_of_interest, *_snap(cfg, [0, 1, 2, 3]), rank=3)["value"])
    assert np.isnan(one_to_one_alignment((), *_snap(cfg, [0, 1, 2, 3]), rank=10)["value"])


def test_one_to_one_alignment_is_the_bottleneck_assignment():
    """value = max over injective assignments of the smallest assigned min(query, key) |cos| (brute force)."""
    import itertools

    from svfcheck.toy.metrics import cosine_matrices

    rng = np.random.default_rng(1)
    cfg = ToyConfig()
    for _ in range(50):
        W = rng.normal(size=(10, 20))
        U = np.linalg.qr(rng.normal(size=(10, 10)))[0]
        V = np.linalg.qr(rng.normal(size=(10, 10)))[0]
        cu, cv = cosine_matrices(W, U, V, 6)
        best = max(min(min(cu[a, j], cv[b, j]) for (a, b, _), j in zip(cfg.pairs_of_interest, perm))
                   for perm in itertools.permutations(range(6), 4))
        assert one_to_one_alignment(cfg.pairs_of_interest, W, U, V, rank=6)["value"] == pytest.approx(best, abs=1e-12)


def test_arrival_step_one_to_one_vs_matching_free():
    """Synthetic trajectory: pairs share a singular vector early (matching-free arrives), separate
    later (one-to-one arrives then); a late relapse postpones arrival; snapshots are required."""
    from svfcheck.toy.metrics import pair_alignment

    cfg = ToyConfig()
    slots = [[0, 1, 2, 3], [0, 2, 1, 0], [0, 2, 1, 0], [0, 2, 1, 3], [3, 2, 1, 0], [3, 2, 1, 0]]
    snaps = [_snap(cfg, s, noise=0.05, seed=i) for i, s in enumerate(slots)]
    snaps[0] = (np.random.default_rng(9).normal(size=(10, 20)), np.eye(10), np.eye(10))  # unaligned start
    traj = {"step": [0, 10, 20, 30, 40, 50], "W": np.array([s[0] for s in snaps]),
            "U": np.array([s[1] for s in snaps]), "V": np.array([s[2] for s in snaps])}
    al = [pair_alignment(cfg, *s) for s in snaps]
    traj["query_free"] = [a["query_free"] for a in al]
    traj["key_free"] = [a["key_free"] for a in al]
    assert arrival_step(traj) == 10
    assert arrival_step_one_to_one(traj, cfg) == 30
    assert list(one_to_one_over_training(traj, cfg)[1:3] < 0.9) == [True, True]
    assert arrival_step_one_to_one(traj, cfg, threshold=0.9999) is None
    traj2 = {k: v[:-1] for k, v in traj.items()}
    traj2["W"] = np.concatenate([traj["W"][:-1], traj["W"][1:2]])  # relapse to sharing at the end
    traj2["U"], traj2["V"] = traj["U"], traj["V"]
    traj2["step"] = traj["step"]
    assert arrival_step_one_to_one(traj2, cfg) is None
    assert arrival_step_one_to_one(traj, ToyConfig(pairs=())) is None
    with pytest.raises(ValueError, match="snapshots"):
        arrival_step_one_to_one({"step": [0], "query_free": [[1.0]], "key_free": [[1.0]]}, cfg)


def test_arrival_trend_can_fail():
    """Negative controls of the Fig. 13 assertion (ρ < 0): a decreasing curve passes; the same
    values with p shuffled, a U-shaped curve, or a large p that never arrived fail; a small p
    that never arrived (the paper's step-budget case) is censored and counts for the trend."""
    dec = {1.0: [1000, 1250], 0.5: [1500, 1500], 0.25: [2000, 2750], 0.1: [4000, 5000], 0.05: [9000, 7000]}
    t = arrival_trend(dec)
    assert t["rho"] == pytest.approx(-1.0) and t["rho_per_seed"] < -0.9 and t["not_arrived"] == []
    assert t["mean"][0.05] == 8000 and t["median"][1.0] == 1125
    shuffled = dict(zip([0.25, 0.05, 1.0, 0.5, 0.1], dec.values()))
    assert arrival_trend(shuffled)["rho"] >= 0
    u = {1.0: [3625], 0.5: [1125], 0.25: [2000], 0.1: [4750], 0.05: [1500]}  # the old matching-free curve
    assert arrival_trend(u)["rho"] == pytest.approx(0.0)
    late_big = {**dec, 1.0: [None, 1000]}
    assert arrival_trend(late_big)["rho"] >= 0 and arrival_trend(late_big)["not_arrived"] == [1.0]
    late_small = {**dec, 0.05: [None, None]}
    assert arrival_trend(late_small)["rho"] == pytest.approx(-1.0)
    assert arrival_trend(late_small)["mean"][0.05] is None


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 0.7, 0.95])
def test_paper_dictionary_has_exact_isotropy(eps):
    from svfcheck.theory.dictionaries import isotropy

    A = paper_dictionary(eps, np.random.default_rng(0))
    assert A.shape == (10, 20)
    assert isotropy(A)[1] == pytest.approx(eps, abs=1e-12)
    if eps == 0:
        assert np.allclose(A @ A.T, np.eye(10))
        assert np.allclose(A[:, :8], np.eye(10)[:, :8])


def test_anisotropy_bad_input():
    with pytest.raises(ValueError, match="teacher"):
        anisotropy_experiment(teacher="nope", steps=1)
    with pytest.raises(ValueError, match="eps"):
        anisotropy_experiment(eps_values=(1.0,), steps=1)
    with pytest.raises(ValueError, match="dictionary"):
        anisotropy_experiment(dictionary="x", steps=1)
    with pytest.raises(ValueError, match="eps"):
        paper_dictionary(-0.1, np.random.default_rng(0))


def test_anisotropy_runs_small():
    r = anisotropy_experiment(eps_values=(0.0, 0.5), seeds=(0,), steps=30, teacher="whitened")
    assert [s["eps"] for s in r["summary"]] == [0.0, 0.5]
    assert r["summary"][1]["cos_bound_paper"] is None  # η ≥ 1 there: bound does not apply
    assert all(0 <= row["raw"] <= 1 + 1e-9 and 0 <= row["anti_whitened"] <= 1 + 1e-9 for row in r["rows"])


def test_training_dynamics_data_and_figure(tmp_path):
    """Fig. 3 data from a short real trajectory: panels at the first, last and log-spaced steps;
    each heatmap equals the |cos| matrix recomputed from that step's snapshot; curves cover every
    recorded step; the figure is a PNG."""
    from svfcheck.toy import figures
    from svfcheck.toy.config import ToyConfig, TrainConfig
    from svfcheck.toy.dynamics import training_dynamics
    from svfcheck.toy.train import train_many

    cfg = ToyConfig()
    r = train_many(cfg, seeds=[0], tcfg=TrainConfig(steps=80, record_every=10, progress=False, snapshots=True)).instances[0]
    d = training_dynamics(cfg, r.trajectory, n_panels=4)
    assert [p["step"] for p in d["panels"]][0] == 0 and d["panels"][-1]["step"] == 80
    assert len(d["panels"]) == 4 and d["curves"]["step"] == list(range(0, 81, 10))
    for p in d["panels"]:
        j = r.trajectory["step"].index(p["step"])
        Wn = r.trajectory["W"][j] / np.linalg.norm(r.trajectory["W"][j], axis=0)
        assert np.allclose(p["cos_query"], np.abs(Wn.T @ r.trajectory["U"][j]), atol=1e-12)
        assert np.allclose(p["cos_key"], np.abs(Wn.T @ r.trajectory["V"][j]), atol=1e-12)
        assert p["pair_query_cos"][1] == p["cos_query"][1][1] and p["pair_key_cos"][1] == p["cos_key"][5][1]
    assert np.shape(d["curves"]["top_singular_values"]) == (9, 4)
    path = figures.training_dynamics(d, tmp_path / "dyn.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(d)


def test_training_dynamics_bad_input():
    from svfcheck.toy.config import ToyConfig
    from svfcheck.toy.dynamics import panel_indices, training_dynamics

    with pytest.raises(ValueError, match="snapshots"):
        training_dynamics(ToyConfig(), {"step": [0, 10], "spectrum": [[1.0], [1.0]]})
    with pytest.raises(ValueError, match="n_panels"):
        panel_indices([0, 10, 20], n_panels=1)
    with pytest.raises(ValueError, match="no recorded steps"):
        panel_indices([])
    # interior panel at the geometric middle of (first non-zero record, last): √(10·1000) = 100 → step 40
    assert panel_indices([0, 10, 20, 30, 40, 1000], n_panels=3) == [0, 4, 5]
    assert panel_indices([0, 10, 20], n_panels=4) == [0, 1, 2]
