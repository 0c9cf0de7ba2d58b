"""A plan's tasks and their keys.

The tasks form a small dependency graph (:class:`Task`); the driver submits each one as soon
as the task it builds on has finished, so one series' analyses run while another still trains:

- ``train`` — one per preset series (:func:`train_tasks`): train the run into
  ``OUT/runs/NAME`` (resumable).
- ``heads`` — one per (task analysis, series) (:func:`heads_task`), once the series is trained
  (or at once, for a series of existing checkpoints): the heads the analysis follows,
  identified at the series' final checkpoint by attention pattern (never by index), as SAD over
  training does (:func:`svfcheck.emergence.head_sets.identify_heads`).
- ``checkpoint`` — one per (analysis, series, seed, step) and ``random-init`` — one per
  (analysis, series, seed): the same analysis on the seeded random initialisation of the
  series' architecture (the reference band of the figures) (:func:`checkpoint_tasks`, once
  the pair's heads are known); ``spec`` — one per (gate spec, seed) (:func:`spec_tasks`,
  independent of everything else).

A task's **key** is a SHA-256 over everything that determines its result: its kind and
inputs, the content hashes of the checkpoints it reads (config and weight files; a hub
checkpoint's id and revision), the key of the task it builds on and the svfcheck version.
A finished task is stored under its key (:mod:`svfcheck.sweep.store`) and never recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import AnalysisPlan, Plan, Resources, SeriesPlan

__all__ = ["Task", "train_tasks", "resolve_series", "applies", "heads_task", "spec_tasks", "checkpoint_tasks",
           "digest"]

KINDS = ("train", "heads", "checkpoint", "random-init", "spec")


def digest(obj: Any) -> str:
    """SHA-256 (32 hex digits) of ``obj`` as canonical JSON, salted with the svfcheck version."""
    from .. import __version__

    blob = json.dumps({"svfcheck": __version__, "obj": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Task:
    """One unit of work: ``kind`` (:data:`KINDS`), a readable ``label``, its ``key``, the JSON
    ``payload`` its function reads (:mod:`svfcheck.sweep.work`) and its ``resources``."""

    kind: str
    label: str
    key: str
    payload: dict = field(hash=False, compare=False)
    resources: Resources = field(default_factory=Resources, compare=False)


def _run_dir(out: Path, s: SeriesPlan) -> Path:
    return out / "runs" / s.name


def train_tasks(plan: Plan, out: Path) -> list[Task]:
    from ..emergence.config import preset

    tasks = []
    for s in plan.series:
        if s.preset is None:
            continue
        cfg = preset(s.preset, **dict(s.train)).to_dict()
        tasks.append(Task("train", f"train {s.name}", digest({"kind": "train", "config": cfg}),
                          {"series": s.name, "preset": s.preset, "train": dict(s.train),
                           "run_dir": str(_run_dir(out, s)), "gpu": plan.train_resources(s).num_gpus > 0},
                          plan.train_resources(s)))
    return tasks


def series_source(s: SeriesPlan, out: Path) -> str:
    """The series SPEC a worker reads: the run folder of a preset series, else its source."""
    return f"run:{_run_dir(out, s)}" if s.preset is not None else s.source


def resolve_series(source: str, steps):
    """``source`` (a series SPEC) narrowed to ``steps`` (``"all"``, ``"first-middle-last"`` or
    a list): a :class:`~svfcheck.emergence.series.CheckpointSeries`."""
    from ..emergence.series import parse_series

    series = parse_series(source)
    if steps == "all":
        return series
    if steps == "first-middle-last":
        return series.first_middle_last()
    missing = sorted(set(steps) - set(series.steps))
    if missing:
        raise ValueError(f"series {series.name!r} has no checkpoints at steps {missing}; it has {series.steps}")
    return series.subset(list(steps))


def _fingerprint(series) -> dict:
    from ..emergence.sweep_key import _series_fingerprint

    fp = _series_fingerprint(series)
    cfg = (series.metadata or {}).get("config")
    if cfg is not None:  # a run's task (e.g. the induction task's symbols) shapes its prompts
        fp["run_config"] = cfg
    return fp


def _settings(a: AnalysisPlan, seed: int | None) -> dict:
    from ..emergence.settings import EmergenceSettings

    d = EmergenceSettings(task=a.task, **dict(a.settings)).to_dict()
    if seed is None:
        d.pop("seed")
    else:
        d["seed"] = seed
    return d


def applies(a: AnalysisPlan, s: SeriesPlan) -> bool:
    """Whether task analysis ``a`` runs on series ``s`` (a spec analysis runs on no series)."""
    return a.task is not None and (not a.series or s.name in a.series)


def heads_task(plan: Plan, out: Path, a: AnalysisPlan, s: SeriesPlan) -> Task:
    """Head identification for task analysis ``a`` on series ``s`` (whose checkpoints must
    exist: a preset series once it is trained)."""
    src = series_source(s, out)
    series = resolve_series(src, s.steps)
    settings = _settings(a, None)
    key = digest({"kind": "heads", "series": _fingerprint(series), "settings": settings})
    steps = s.steps if isinstance(s.steps, str) else list(s.steps)
    return Task("heads", f"heads {a.name} / {s.name}", key,
                {"analysis": a.name, "series": s.name, "source": src, "steps": steps, "settings": settings},
                plan.analysis_resources(a))


def spec_tasks(plan: Plan, a: AnalysisPlan) -> list[Task]:
    """One task per seed for spec analysis ``a`` (keyed by the spec file's bytes)."""
    text = a.spec.read_bytes()
    tasks = []
    for seed in plan.seeds:
        key = digest({"kind": "spec", "spec_sha256": hashlib.sha256(text).hexdigest(), "seed": seed})
        tasks.append(Task("spec", f"spec {a.name} seed {seed}", key,
                          {"analysis": a.name, "spec": str(a.spec), "seed": seed}, plan.analysis_resources(a)))
    return tasks


def checkpoint_tasks(plan: Plan, out: Path, a: AnalysisPlan, s: SeriesPlan, heads_key: str,
                     heads_result: dict) -> list[Task]:
    """Task analysis ``a`` on series ``s`` once its heads are known (``heads_key``: the heads
    task's key, ``heads_result``: its result): per seed, each checkpoint, then the random init."""
    src = series_source(s, out)
    series = resolve_series(src, s.steps)
    fp = _fingerprint(series)
    steps = s.steps if isinstance(s.steps, str) else list(s.steps)
    tasks = []
    for seed in plan.seeds:
        settings = _settings(a, seed)
        common = {"analysis": a.name, "series": s.name, "source": src, "steps": steps, "settings": settings,
                  "heads": heads_result["heads"], "seed": seed}
        for ck, cfp in zip(series, fp["checkpoints"]):
            key = digest({"kind": "checkpoint", "heads_key": heads_key, "checkpoint": cfp, "settings": settings})
            tasks.append(Task("checkpoint", f"{a.name} / {s.name} step {ck.step} seed {seed}", key,
                              {**common, "step": ck.step}, plan.analysis_resources(a)))
        key = digest({"kind": "random-init", "heads_key": heads_key, "settings": settings})
        tasks.append(Task("random-init", f"{a.name} / {s.name} random init seed {seed}", key,
                          {**common, "step": None}, plan.analysis_resources(a)))
    return tasks
