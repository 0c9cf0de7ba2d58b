"""Sweep engines: Ray with 2 workers vs in-process, on a smoke-sized plan.

``test_sweep_ray_vs_local`` runs one plan of 12 tasks (two tiny induction runs trained here,
``TRAIN_STEPS`` steps each, then head identification, three checkpoints and a random init per
run) twice in the same run, into fresh folders: in-process (``--engine local``, the baseline)
and on a local Ray cluster with 2 CPUs (the benchmarked function). ``extra_info``:

- ``ray2_ratio_vs_local`` = wall(Ray, cluster start included) / wall(local); the issue's
  target speedup ≥ 1.6× is recorded as ``target_max_ray2_ratio_vs_local`` = 1/1.6;
- ``ray2_steady_ratio_vs_local`` subtracts the cluster's start-up (``ray_start_seconds``,
  timed separately): what a longer sweep tends to;
- ``resume_ratio_vs_first`` = wall(rerun of the finished local sweep: every task reused) /
  wall(first local run); target ≤ 0.05;
- ``overhead_seconds_per_task_local`` / ``_ray``: wall per task of 40 tasks that do nothing,
  through each engine (what the engine costs a task, beyond its work).

With ``--benchmark-disable`` (CI) the plan trains ``TRAIN_STEPS_UNTIMED`` steps: the code
paths run once and the figures are checked to be finite and positive; nothing about time is
asserted.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from svfcheck.sweep.driver import run_sweep
from svfcheck.sweep.engines import LocalEngine, RayEngine
from svfcheck.sweep.plan import Resources, load_plan
from svfcheck.sweep.tasks import Task

SMOKE = Path(__file__).resolve().parents[1] / "plans" / "smoke.toml"
TRAIN_STEPS, TRAIN_STEPS_UNTIMED = 200, 20


def _plan(tmp_path: Path, steps: int) -> Path:
    p = tmp_path / "bench.toml"
    every = max(1, steps // 2)
    p.write_text(SMOKE.read_text().replace("max_steps = 200, checkpoint_every = 100, warmup_steps = 20",
                                           f"max_steps = {steps}, checkpoint_every = {every}, warmup_steps = {min(20, steps)}"))
    return p


def _overhead(engine, n: int = 40) -> float:
    def _noop(kind, payload, num_cpus):  # defined here: Ray pickles a closure by value (workers cannot import this file)
        return {"i": payload["i"]}

    tasks = [Task("checkpoint", str(i), f"k{i}", {"i": i}, Resources(max_retries=0)) for i in range(n)]
    got = []
    t0 = time.perf_counter()
    engine.run(_noop, tasks, got.append)
    dt = time.perf_counter() - t0
    assert sorted(o.result["i"] for o in got) == list(range(n))
    return dt / n


@pytest.mark.gpu
def test_sweep_ray_vs_local(benchmark, tmp_path):
    plan = load_plan(_plan(tmp_path, TRAIN_STEPS_UNTIMED if benchmark.disabled else TRAIN_STEPS))
    t0 = time.perf_counter()
    local = run_sweep(plan, tmp_path / "local", engine="local", progress=False, figures=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_sweep(plan, tmp_path / "local", engine="local", progress=False, figures=False)
    t_resume = time.perf_counter() - t0

    t0 = time.perf_counter()
    eng = RayEngine(num_cpus=2)
    t_start = time.perf_counter() - t0
    try:
        over_ray = _overhead(eng)
    finally:
        eng.close()
    over_local = _overhead(LocalEngine())

    out = iter(range(100))

    def ray_run():
        return run_sweep(plan, tmp_path / f"ray{next(out)}", engine="ray", num_cpus=2, progress=False, figures=False)

    t0 = time.perf_counter()
    ray = benchmark.pedantic(ray_run, rounds=1, iterations=1)
    t_ray = time.perf_counter() - t0
    assert ray.rows == local.rows and ray.data["n_computed"] == local.data["n_computed"] == 12
    info = {
        "local_seconds": t_local, "ray2_seconds": t_ray, "ray_start_seconds": t_start,
        "ray2_ratio_vs_local": t_ray / t_local, "ray2_steady_ratio_vs_local": (t_ray - t_start) / t_local,
        "target_max_ray2_ratio_vs_local": 1 / 1.6,
        "resume_ratio_vs_first": t_resume / t_local, "target_max_resume_ratio_vs_first": 0.05,
        "overhead_seconds_per_task_local": over_local, "overhead_seconds_per_task_ray": over_ray,
        "n_tasks": 12, "train_steps": TRAIN_STEPS_UNTIMED if benchmark.disabled else TRAIN_STEPS,
    }
    benchmark.extra_info.update(info)
    print("\n" + ", ".join(f"{k}={v:.3g}" for k, v in info.items()))
    assert all(math.isfinite(v) and v > 0 for v in info.values())
