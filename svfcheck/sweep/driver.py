"""The sweep driver: a plan → its tasks, each submitted to an engine as soon as the task it
builds on has finished (:mod:`svfcheck.sweep.tasks`) → ``OUT/`` with the stored task results,
the merged dataset, ``sweep.json`` and figures.

Finished tasks (found in the store under their key) are never recomputed, so a rerun after a
kill or a failure only runs what is missing; a failed task is reported and the tasks that need
it are skipped (with the reason), while everything else completes. The merged dataset lists
tasks in plan order, whatever order they finished in, so it does not depend on the engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import duplicate_checkpoints, rows_from_results, write_parquet
from .engines import Outcome, make_engine
from .plan import Plan
from .store import ResultStore
from .tasks import Task, applies, checkpoint_tasks, heads_task, spec_tasks, train_tasks
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


class _Graph:
    """The sweep's tasks as they are released: stored results are reused (releasing what they
    feed at once), the rest go to the engine; a finished task releases the tasks that build on
    it. ``order[key]`` places each task in plan order for the merged dataset."""

    def __init__(self, plan: Plan, out: Path, store: ResultStore, progress: bool):
        self.plan, self.out, self.store, self.progress = plan, out, store, progress
        self.series = {s.name: (i, s) for i, s in enumerate(plan.series)}
        self.analyses = {a.name: (i, a) for i, a in enumerate(plan.analyses)}
        self.tasks: dict[str, Task] = {}
        self.order: dict[str, tuple] = {}
        self.done: dict[str, dict] = {}
        self.log: list[dict] = []
        self.skipped: list[tuple[tuple, dict]] = []
        self.n_submitted = self.n_finished = 0

    def start(self) -> list[Task]:
        """The tasks that need nothing: training, specs, and head identification of the
        series that need no training."""
        first: list[tuple[tuple, Task]] = []
        for t in train_tasks(self.plan, self.out):
            first.append(((0, 0, self.series[t.payload["series"]][0], 0), t))
        for ai, a in enumerate(self.plan.analyses):
            if a.spec is not None:
                first += [((2, ai, 0, i), t) for i, t in enumerate(spec_tasks(self.plan, a))]
        for _, s in self.series.values():
            if s.preset is None:
                first += self._heads(s)
        return self._release(first, "start")

    def _heads(self, s) -> list[tuple[tuple, Task]]:
        si = self.series[s.name][0]
        return [((1, ai, si, 0), heads_task(self.plan, self.out, a, s))
                for ai, a in enumerate(self.plan.analyses) if applies(a, s)]

    def _follow_ups(self, t: Task, result: dict) -> list[tuple[tuple, Task]]:
        if t.kind == "train":
            return self._heads(self.series[t.payload["series"]][1])
        if t.kind == "heads":
            ai, a = self.analyses[t.payload["analysis"]]
            si, s = self.series[t.payload["series"]]
            return [((2, ai, si, i), c) for i, c in enumerate(checkpoint_tasks(self.plan, self.out, a, s, t.key, result))]
        return []

    def _release(self, tasks: list[tuple[tuple, Task]], why: str) -> list[Task]:
        """Register ``tasks``; return those to run (the others were stored, and what they feed
        is released in turn)."""
        todo, queue, reused = [], list(tasks), 0
        while queue:
            order, t = queue.pop(0)
            self.tasks[t.key], self.order[t.key] = t, order
            r = self.store.get(t)
            if r is None:
                todo.append(t)
                continue
            reused += 1
            self.done[t.key] = r
            self.log.append({"kind": t.kind, "label": t.label, "key": t.key, "status": "reused"})
            queue += self._follow_ups(t, r)
        self.n_submitted += len(todo)
        if self.progress and (todo or reused):
            print(f"svfcheck sweep: {why}: {len(todo)} task(s) to run, {reused} already done", file=sys.stderr,
                  flush=True)
        return todo

    def on_done(self, o: Outcome) -> list[Task]:
        t = o.task
        self.n_finished += 1
        entry = {"kind": t.kind, "label": t.label, "key": t.key, "seconds": round(o.seconds, 3), "attempts": o.attempts}
        if o.result is None:
            entry.update(status="failed", error=o.error)
            if t.kind == "train":
                self.skipped.append((self.order[t.key], {"series": t.payload["series"],
                                                         "reason": "its training task failed"}))
            elif t.kind == "heads":
                self.skipped.append((self.order[t.key], {"analysis": t.payload["analysis"],
                                                         "series": t.payload["series"],
                                                         "reason": "head identification failed"}))
        else:
            self.store.put(t, o.result, o.seconds, o.attempts)
            self.done[t.key] = o.result
            entry["status"] = "computed"
        self.log.append(entry)
        if self.progress:
            what = "FAILED: " + str(o.error) if o.result is None else f"{o.seconds:.1f} s"
            print(f"svfcheck sweep: [{self.n_finished}/{self.n_submitted}] {t.label}: {what}", file=sys.stderr,
                  flush=True)
        return [] if o.result is None else self._release(self._follow_ups(t, o.result), f"after {t.label}")


LOCK_NAME = ".sweep.lock"


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold ``OUT/.sweep.lock`` for the sweep: a second sweep into the same folder (which would
    train the same runs into the same run folders at once) is refused, naming the process that
    holds it. The lock is the kernel's (``flock``), so it goes away with a killed driver. A
    symlink planted in its place is refused, never followed (the pid is written into the file)."""
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise ValueError(f"cannot use {path} as the sweep's lock file ({e.strerror or e}); remove it, "
                         "or give the sweep another --out") from None
    fh = os.fdopen(fd, "r+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(f"another svfcheck sweep ({holder}) is running into {out}; wait for it to finish, "
                             "or give this one another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def run_sweep(plan: Plan, out_dir, *, engine: str = "local", address: str | None = None,
              num_cpus: int | None = None, figures: bool = True, progress: bool = True) -> SweepResult:
    """Run ``plan`` into ``out_dir`` on ``engine`` (``local`` or ``ray``; ``address`` joins a
    running Ray cluster, ``num_cpus`` sizes a local one). Returns :class:`SweepResult`; failed
    tasks are in ``result.failures`` (the sweep itself does not raise for them). ``ValueError``
    when another sweep is running into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _run(plan, out, engine, address, num_cpus, figures, progress)


def _run(plan: Plan, out: Path, engine: str, address: str | None, num_cpus: int | None, figures: bool,
         progress: bool) -> SweepResult:
    t0 = time.perf_counter()
    eng = make_engine(engine, address, num_cpus)
    graph = _Graph(plan, out, ResultStore(out), progress)
    try:
        eng.check_requests(plan.resource_requests())
        first = graph.start()
        if first:
            eng.run(run_task, first, graph.on_done)
    finally:
        eng.close()
    keys = sorted(graph.tasks, key=graph.order.__getitem__)
    results = [(graph.tasks[k], graph.done[k]) for k in keys if k in graph.done]
    log = graph.log
    skipped = [e for _, e in sorted(graph.skipped, key=lambda x: x[0])]
    dups = duplicate_checkpoints(results)
    rows = rows_from_results(results, dups)
    write_parquet(rows, out / "sweep.parquet")
    failures = [e for e in log if e["status"] == "failed"]
    data: dict[str, Any] = {
        "format": SWEEP_FORMAT, "plan": plan.to_json(), "engine": eng.name, "address": address,
        "n_tasks": len(keys), "n_computed": sum(e["status"] == "computed" for e in log),
        "n_reused": sum(e["status"] == "reused" for e in log), "n_failed": len(failures),
        "tasks": log, "failures": failures, "skipped": skipped, "duplicates": dups,
        "dataset": "sweep.parquet", "n_rows": len(rows), "seconds": round(time.perf_counter() - t0, 3),
    }
    if figures:
        from .figures import write_sweep_figures

        data["figures"] = [p.name for p in write_sweep_figures(out, rows)]
    (out / "sweep.json").write_text(json.dumps(data, indent=1) + "\n")
    return SweepResult(out, data, rows)
