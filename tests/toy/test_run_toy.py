"""Entry points and the App. C.3 construction, on tiny budgets (cheap; no marker)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfcheck.toy.anisotropy import anisotropy_experiment, paper_dictionary
from svfcheck.toy.run import arrival_step, run_default, run_sweeps


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
    assert "unknown toy preset" in capsys.readouterr().err


def test_run_sweeps_small(tmp_path):
    r = run_sweeps(tmp_path, seeds=(0,), steps=20, p_steps=20, sweeps={"p": (1.0, 0.5), "d_h": (10, 4)},
                   progress=False)
    assert [row["value"] for row in r["sweeps"]["p"]["rows"]] == [1.0, 0.5]
    assert (tmp_path / "sweep_p.png").exists() and (tmp_path / "sweep_p_over_training.png").exists()
    assert (tmp_path / "sweeps.json").exists()


def test_arrival_step():
    traj = {"step": [0, 10, 20, 30], "query_free": [[0.5], [0.95], [0.8], [0.95]], "key_free": [[0.9], [0.95], [0.95], [0.97]]}
    assert arrival_step(traj) == 30
    traj["query_free"][2] = [0.92]
    assert arrival_step(traj) == 10
    assert arrival_step(traj, threshold=0.99) is None


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
