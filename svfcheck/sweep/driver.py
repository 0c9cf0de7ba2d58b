"""The sweep driver: a plan → its tasks, stage by stage, on an engine → ``OUT/`` with the
stored task results, the merged dataset, ``sweep.json`` and figures.

Finished tasks (found in the store under their key) are never recomputed, so a rerun after a
kill or a failure only runs what is missing; a stage's failed tasks are reported and the
tasks that need them are skipped (with the reason), while everything else completes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import duplicate_checkpoints, rows_from_results, write_parquet
from .engines import Outcome, make_engine
from .plan import Plan
from .store import ResultStore
from .tasks import Task, analysis_tasks, heads_tasks, train_tasks
from .work import run_task

__all__ = ["SweepResult", "run_sweep", "SWEEP_FORMAT"]

SWEEP_FORMAT = "svfcheck-sweep/1"


@dataclass
class SweepResult:
    """``data``: the content of ``sweep.json``; ``rows``: the merged dataset's rows."""

    out_dir: Path
    data: dict
    rows: list[dict]

    @property
    def failures(self) -> list[dict]:
        return self.data["failures"]


class _Stage:
    """Runs one stage's tasks: stored results are reused, the rest go to the engine."""

    def __init__(self, store: ResultStore, engine, log: list, progress: bool):
        self.store, self.engine, self.log, self.progress = store, engine, log, progress

    def __call__(self, name: str, tasks: list[Task]) -> dict[str, dict]:
        done: dict[str, dict] = {}
        todo = []
        for t in tasks:
            r = self.store.get(t)
            if r is None:
                todo.append(t)
            else:
                done[t.key] = r
                self.log.append({"kind": t.kind, "label": t.label, "key": t.key, "status": "reused"})
        if self.progress:
            print(f"svfcheck sweep: {name}: {len(tasks)} task(s), {len(done)} already done, running {len(todo)}",
                  file=sys.stderr, flush=True)
        n = [0]

        def on_done(o: Outcome) -> None:
            n[0] += 1
            entry = {"kind": o.task.kind, "label": o.task.label, "key": o.task.key, "seconds": round(o.seconds, 3),
                     "attempts": o.attempts}
            if o.result is None:
                entry.update(status="failed", error=o.error)
            else:
                self.store.put(o.task, o.result, o.seconds, o.attempts)
                done[o.task.key] = o.result
                entry["status"] = "computed"
            self.log.append(entry)
            if self.progress:
                what = "FAILED: " + str(o.error) if o.result is None else f"{o.seconds:.1f} s"
                print(f"svfcheck sweep: [{n[0]}/{len(todo)}] {o.task.label}: {what}", file=sys.stderr, flush=True)

        if todo:
            self.engine.run(run_task, todo, on_done)
        return done


def run_sweep(plan: Plan, out_dir, *, engine: str = "local", address: str | None = None,
              num_cpus: int | None = None, figures: bool = True, progress: bool = True) -> SweepResult:
    """Run ``plan`` into ``out_dir`` on ``engine`` (``local`` or ``ray``; ``address`` joins a
    running Ray cluster, ``num_cpus`` sizes a local one). Returns :class:`SweepResult`; failed
    tasks are in ``result.failures`` (the sweep itself does not raise for them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    eng = make_engine(engine, address, num_cpus)
    log: list[dict] = []
    skipped: list[dict] = []
    stage = _Stage(ResultStore(out), eng, log, progress)
    try:
        trains = train_tasks(plan, out)
        trained = stage("train", trains)
        failed_series = {t.payload["series"] for t in trains if t.key not in trained}
        heads_all = heads_tasks(plan, out, skip=failed_series)
        heads_done = stage("heads", heads_all)
        heads = {(t.payload["analysis"], t.payload["series"]): (t.key, heads_done[t.key])
                 for t in heads_all if t.key in heads_done}
        for s in sorted(failed_series):
            skipped.append({"series": s, "reason": "its training task failed"})
        for t in heads_all:
            if t.key not in heads_done:
                skipped.append({"analysis": t.payload["analysis"], "series": t.payload["series"],
                                "reason": "head identification failed"})
        analyses = analysis_tasks(plan, out, heads, skip=failed_series)
        analysed = stage("analyses", analyses)
    finally:
        eng.close()
    every = trains + heads_all + analyses
    results = [(t, r) for t in every for r in [trained.get(t.key) or heads_done.get(t.key) or analysed.get(t.key)]
               if r is not None]
    dups = duplicate_checkpoints(results)
    rows = rows_from_results(results, dups)
    write_parquet(rows, out / "sweep.parquet")
    failures = [e for e in log if e["status"] == "failed"]
    data: dict[str, Any] = {
        "format": SWEEP_FORMAT, "plan": plan.to_json(), "engine": eng.name, "address": address,
        "n_tasks": len(every), "n_computed": sum(e["status"] == "computed" for e in log),
        "n_reused": sum(e["status"] == "reused" for e in log), "n_failed": len(failures),
        "tasks": log, "failures": failures, "skipped": skipped, "duplicates": dups,
        "dataset": "sweep.parquet", "n_rows": len(rows), "seconds": round(time.perf_counter() - t0, 3),
    }
    if figures:
        from .figures import write_sweep_figures

        data["figures"] = [p.name for p in write_sweep_figures(out, rows)]
    (out / "sweep.json").write_text(json.dumps(data, indent=1) + "\n")
    return SweepResult(out, data, rows)
