"""Sweeps end to end on real (tiny) training runs: ``plans/smoke.toml`` gives the same merged
table in-process and on a local Ray cluster, and on a cluster joined by address; a rerun
recomputes nothing; a killed driver loses only what was running; checkpoints that serve the
same weights are flagged and left out of curves and contrasts; gate specs run as tasks.

One module fixture trains the smoke plan's two runs in-process (≈ 1 min on 2 cores); the
other tests reuse those runs through ``source = "run:DIR"`` series where they can."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from svfcheck.sweep.dataset import read_parquet
from svfcheck.sweep.driver import run_sweep
from svfcheck.sweep.plan import load_plan

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "plans" / "smoke.toml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "local"
    return run_sweep(load_plan(SMOKE), out, engine="local", progress=False)


def _runs_plan(tmp_path: Path, smoke, name="runs.toml", steps='"first-middle-last"') -> Path:
    """The smoke plan's analysis over the smoke fixture's finished runs (no training)."""
    plan = tmp_path / name
    series = "".join(f'[[series]]\nname = "{s}"\nsource = "run:{smoke.out_dir / "runs" / s}"\nsteps = {steps}\n'
                     for s in ("induction-s0", "induction-s1"))
    plan.write_text('seeds = [0]\n' + series + textwrap.dedent("""\
        [[analysis]]
        name = "induction"
        task = "induction"
        settings = { n_prompts = 8, head_sequences = 32, n_boot = 500, n_boot_contrast = 1000 }
        """))
    return plan


def _steps(run: Path) -> list[int]:
    """The checkpoint steps of a run folder."""
    return sorted(int(p.name.removeprefix("step")) for p in run.iterdir() if p.name.startswith("step"))


def _damaged_copy(run: Path, folder: Path, steps, damaged: int) -> Path:
    """A checkpoint folder with ``run``'s ``steps``, the weights of step ``damaged`` cut to
    1,000 bytes (every load of it fails)."""
    for s in steps:
        shutil.copytree(run / f"step{s}", folder / f"step{s}")
    weights = folder / f"step{damaged}" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def _analysis_rows(rows):
    return [r for r in rows if r["kind"] != "train"]


def test_smoke_plan_runs_locally(smoke):
    d = smoke.data
    assert d["n_failed"] == 0 and d["n_tasks"] == 12 and d["n_computed"] == 12, d["failures"]
    assert {t["kind"] for t in d["tasks"]} == {"train", "heads", "checkpoint", "random-init"}
    assert read_parquet(smoke.out_dir / "sweep.parquet") == smoke.rows
    assert {p for p in d["figures"]} == {"sweep_s_vs_step.png", "sweep_contrast.png"}
    assert all((smoke.out_dir / f).stat().st_size > 10_000 for f in d["figures"])
    # the trained runs show SAD emerging: final-vs-first effect difference > 0 under both controls
    c = {(r["series"], r["metric"]): r for r in smoke.rows if r["kind"] == "contrast" and r["role"] == "overall"}
    for s in ("induction-s0", "induction-s1"):
        for ctl in ("rotated", "paper_control"):
            assert c[(s, f"effect_difference_{ctl}")]["low"] > 0, c[(s, f"effect_difference_{ctl}")]
    # one row per (series, step, analysis, seed, role, metric)
    keys = [(r["kind"], r["series"], r["analysis"], r["seed"], r["step"], r["role"], r["metric"]) for r in smoke.rows]
    assert len(keys) == len(set(keys))


def test_rerun_recomputes_nothing(smoke):
    again = run_sweep(load_plan(SMOKE), smoke.out_dir, engine="local", progress=False, figures=False)
    assert again.data["n_computed"] == 0 and again.data["n_reused"] == 12
    assert again.rows == smoke.rows


def test_ray_local_cluster_gives_the_same_table(smoke, tmp_path):
    r = run_sweep(load_plan(SMOKE), tmp_path / "ray", engine="ray", num_cpus=2, progress=False, figures=False)
    assert r.data["engine"] == "ray" and r.data["n_failed"] == 0 and r.data["n_computed"] == 12
    assert r.rows == smoke.rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _ray_head(num_cpus: int):
    """``ray start --head --block`` on 127.0.0.1 in its own session and temp folder, as a user
    would start one in a shell; yields its address. Stopped by killing its process group, not
    with ``ray stop`` (which would stop every Ray cluster on the machine, a user's too)."""
    ray = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="svfray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", str(num_cpus), "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", str(temp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "ray start --head exited"
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_joined_by_address(smoke, tmp_path, capsys, monkeypatch):
    """As a user would: ``ray start --head`` in a shell, then ``svfcheck sweep --address`` in a
    process that has not used Ray before (no ``RAY_AUTH_MODE`` left by an earlier test's
    ``ray.init``: with a token in ``~/.ray/auth_token`` the head turns token authentication on,
    and a driver that did not would be refused). While that cluster runs, ``--engine ray``
    without ``--address`` still starts a cluster of its own, of the size asked."""
    from svfcheck.sweep.cli import main
    from svfcheck.sweep.engines import RayEngine

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with _ray_head(num_cpus=2) as address:
        own = RayEngine(num_cpus=1)
        try:
            own_cpus = own.ray.cluster_resources().get("CPU")
        finally:
            own.close()
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # that local ray.init set it
        # resources the cluster does not have are refused before any task, naming who asked
        greedy = _runs_plan(tmp_path, smoke, name="greedy.toml")
        greedy.write_text(greedy.read_text().replace('task = "induction"', 'task = "induction"\nresources = { num_gpus = 0.5 }'))
        rc_greedy = main([str(greedy), "--out", str(tmp_path / "greedy"), "--engine", "ray",
                          "--address", address, "--quiet", "--no-figures"])
        greedy_err = capsys.readouterr().err
        rc = main([str(_runs_plan(tmp_path, smoke)), "--out", str(tmp_path / "joined"), "--engine", "ray",
                   "--address", address, "--quiet", "--no-figures"])
    assert own_cpus == 1.0  # its own cluster, not the 2-CPU head (ray.init alone would join the head)
    assert rc_greedy == 2 and not (tmp_path / "greedy" / "tasks").exists()
    assert "each task of analysis 'induction' asks for 0.5 GPU(s) but the Ray cluster has 0" in greedy_err, greedy_err
    assert rc == 0
    d = json.loads((tmp_path / "joined" / "sweep.json").read_text())
    assert d["engine"] == "ray" and d["address"] == address and d["n_computed"] == 10
    # the same analyses of the same checkpoints as the in-process smoke sweep, row for row
    assert read_parquet(tmp_path / "joined" / "sweep.parquet") == _analysis_rows(smoke.rows)


def test_killed_driver_loses_only_running_tasks(tmp_path):
    plan = tmp_path / "kill.toml"
    plan.write_text(SMOKE.read_text().replace("max_steps = 200, checkpoint_every = 100", "max_steps = 80, checkpoint_every = 40"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "svfcheck.cli", "sweep", str(plan), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((out / "tasks" / "train").glob("*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    finished = {p.stem for p in (out / "tasks").rglob("*.json")}
    assert len(finished) >= 1 and not (out / "sweep.json").exists(), "the driver was not killed mid-sweep"
    r = run_sweep(load_plan(plan), out, engine="local", progress=False, figures=False)
    status = {t["key"]: t["status"] for t in r.data["tasks"]}
    assert all(status[k] == "reused" for k in finished)
    assert r.data["n_computed"] == 12 - len(finished) and r.data["n_failed"] == 0


def test_checkpoints_with_the_same_weights_are_flagged_and_excluded(smoke, tmp_path):
    run = smoke.out_dir / "runs" / "induction-s0"
    steps = _steps(run)
    folder = tmp_path / "mirror"
    first, last = steps[0], steps[-1]
    shutil.copytree(run / f"step{first}", folder / f"step{first}")
    shutil.copytree(run / f"step{last}", folder / f"step{last}")
    shutil.copytree(run / f"step{last}", folder / f"step{last + 100}")  # a mirror serving the last weights again
    plan = tmp_path / "dup.toml"
    plan.write_text(textwrap.dedent(f"""\
        [[series]]
        name = "mirror"
        source = "folder:{folder}"
        [[analysis]]
        name = "induction"
        task = "induction"
        settings = {{ n_prompts = 8, head_sequences = 32, n_boot = 500, n_boot_contrast = 1000 }}
        """))
    r = run_sweep(load_plan(plan), tmp_path / "out", engine="local", progress=False, figures=False)
    (dup,) = r.data["duplicates"]
    assert (dup["series"], dup["step"], dup["same_as"]) == ("mirror", last + 100, last)
    rows = [x for x in r.rows if x["kind"] == "checkpoint"]
    assert {x["step"] for x in rows if x["excluded"]} == {last + 100}
    assert not any(x["excluded"] for x in rows if x["step"] != last + 100)
    # the contrast compares the last distinct weights with the first, not the duplicate
    (c,) = [x for x in r.rows if x["kind"] == "contrast" and x["metric"] == "first_step" and x["role"] == "overall"]
    assert c["step"] == last and c["value"] == first


def test_gate_specs_run_as_sweep_tasks(tmp_path, tiny_spec):
    plan = tmp_path / "spec.toml"
    plan.write_text('seeds = [0, 5]\n[[analysis]]\nname = "tiny"\nspec = "tiny.toml"\n')
    r = run_sweep(load_plan(plan), tmp_path / "out", engine="local", progress=False, figures=False)
    assert r.data["n_tasks"] == 2 and r.data["n_failed"] == 0
    rows = {(x["seed"], x["metric"]): x for x in r.rows if x["kind"] == "spec"}
    for seed in (0, 5):
        assert rows[(seed, "passed")]["value"] == 1.0 and rows[(seed, "measured")]["value"] < 1e-5
        assert rows[(seed, "threshold")]["value"] == 1e-5 and rows[(seed, "passed")]["role"] == "max_reconstruction_error"


def test_a_failing_task_is_retried_reported_and_the_rest_complete(smoke, tmp_path, capsys):
    """A checkpoint whose weights file is damaged fails on every attempt (max_retries = 1: two
    attempts); the other checkpoints, the random init and the contrast still come out, and
    the command exits 1 naming the failed task."""
    from svfcheck.sweep.cli import main

    run = smoke.out_dir / "runs" / "induction-s0"
    steps = _steps(run)
    first, mid, last = steps[0], steps[len(steps) // 2], steps[-1]
    folder = _damaged_copy(run, tmp_path / "damaged", [first, mid, last], damaged=mid)
    plan = tmp_path / "fail.toml"
    plan.write_text(textwrap.dedent(f"""\
        [resources]
        max_retries = 1
        [[series]]
        name = "damaged"
        source = "folder:{folder}"
        [[analysis]]
        name = "induction"
        task = "induction"
        settings = {{ n_prompts = 8, head_sequences = 32, n_boot = 500, n_boot_contrast = 1000 }}
        """))
    rc = main([str(plan), "--out", str(tmp_path / "out"), "--quiet", "--no-figures"])
    out = capsys.readouterr().out
    assert rc == 1 and f"FAILED induction / damaged step {mid} seed 0" in out, out
    d = json.loads((tmp_path / "out" / "sweep.json").read_text())
    (f,) = d["failures"]
    assert f["attempts"] == 2 and f["label"] == f"induction / damaged step {mid} seed 0" and f["error"]
    assert d["n_computed"] == 4  # heads, two checkpoints, the random init
    rows = read_parquet(tmp_path / "out" / "sweep.parquet")
    assert {r["step"] for r in rows if r["kind"] == "checkpoint"} == {first, last}
    assert any(r["kind"] == "contrast" and r["metric"] == "first_step" and r["value"] == first for r in rows)


def test_single_models_as_series_give_the_run_numbers(smoke, tmp_path):
    """``source = "model:FOLDER#STEP"``: one model per series (a sweep over models, not over
    training). Each smoke run's final checkpoint, named as a plain model folder, gives the very
    rows its run series gave at that step (same heads, found at that checkpoint; same weights
    hash) and its random-init reference; a relative folder resolves against the plan's folder."""
    series = ""
    for s in ("induction-s0", "induction-s1"):
        run = smoke.out_dir / "runs" / s
        last = max(int(p.parent.name[4:]) for p in run.glob("step*/config.json"))
        local = tmp_path / f"{s}-final"
        shutil.copytree(run / f"step{last}", local)
        series += f'[[series]]\nname = "{s}"\nsource = "model:{local.name}#{last}"\n'
    plan = tmp_path / "models.toml"
    plan.write_text('seeds = [0]\n' + series + textwrap.dedent("""\
        [[analysis]]
        name = "induction"
        task = "induction"
        settings = { n_prompts = 8, head_sequences = 32, n_boot = 500, n_boot_contrast = 1000 }
        """))
    res = run_sweep(load_plan(plan), tmp_path / "out", engine="local", progress=False, figures=False)
    assert res.data["n_failed"] == 0 and res.data["n_tasks"] == 6, res.data["failures"]
    assert {t["kind"] for t in res.data["tasks"]} == {"heads", "checkpoint", "random-init"}
    final = {}
    for r in smoke.rows:
        if r["kind"] == "checkpoint":
            final.setdefault(r["series"], {})[r["step"]] = final.get(r["series"], {}).get(r["step"], []) + [r]
    for s in ("induction-s0", "induction-s1"):
        got = [r for r in res.rows if r["series"] == s and r["kind"] == "checkpoint"]
        want = final[s][max(final[s])]
        assert got, sorted({(r["kind"], r["series"]) for r in res.rows})
        assert got == want
        assert any(r["kind"] == "random-init" and r["series"] == s for r in res.rows)


def test_failed_training_and_heads_skip_only_what_needs_them(smoke, tmp_path, capsys):
    """Three series: one whose run folder is a planted file (its training fails), one whose
    final checkpoint is damaged (head identification fails), one of good checkpoints. The
    first two are reported as failed and the tasks that needed them as skipped, with the
    reason, in plan order; the good series is analysed in full; the command exits 1."""
    from svfcheck.sweep.cli import main

    run = smoke.out_dir / "runs" / "induction-s1"
    steps = _steps(run)
    damaged = _damaged_copy(run, tmp_path / "damaged", steps, damaged=steps[-1])
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "planted").write_text("not a run folder")
    plan = tmp_path / "skip.toml"
    plan.write_text(textwrap.dedent(f"""\
        [resources]
        max_retries = 0
        [[series]]
        name = "planted"
        preset = "induction-gpt2"
        train = {{ max_steps = 20, checkpoint_every = 10, warmup_steps = 5, seed = 0 }}
        [[series]]
        name = "damaged"
        source = "folder:{damaged}"
        [[series]]
        name = "good"
        source = "run:{run}"
        steps = "first-middle-last"
        [[analysis]]
        name = "induction"
        task = "induction"
        settings = {{ n_prompts = 8, head_sequences = 32, n_boot = 500, n_boot_contrast = 1000 }}
        """))
    rc = main([str(plan), "--out", str(out), "--quiet", "--no-figures"])
    printed = capsys.readouterr().out
    assert rc == 1
    d = json.loads((out / "sweep.json").read_text())
    assert [(f["kind"], f["label"]) for f in d["failures"]] == [("train", "train planted"), ("heads", "heads induction / damaged")]
    assert "FileExistsError" in next(f["error"] for f in d["failures"] if f["kind"] == "train")
    assert d["skipped"] == [{"series": "planted", "reason": "its training task failed"},
                            {"analysis": "induction", "series": "damaged", "reason": "head identification failed"}]
    for what in ("SKIPPED series planted: its training task failed",
                 "SKIPPED induction / damaged: head identification failed"):
        assert what in printed, printed
    assert d["n_computed"] == 5 and d["n_failed"] == 2  # good: heads, three checkpoints, the random init
    rows = read_parquet(out / "sweep.parquet")
    assert {r["series"] for r in rows} == {"good"}
    # the good series' rows are the smoke sweep's rows for the same checkpoints, analysis and seed
    same = [r for r in _analysis_rows(smoke.rows) if r["series"] == "induction-s1"]
    assert [{**r, "series": "good"} for r in same] == rows
