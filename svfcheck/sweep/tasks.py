"""A plan's tasks and their keys.

The sweep runs in three stages, each a set of independent tasks (:class:`Task`):

1. ``train`` — one per preset series: train the run into ``OUT/runs/NAME`` (resumable).
2. ``heads`` — one per (task analysis, series): the heads the analysis follows, identified at
   the series' final checkpoint by attention pattern (never by index), as SAD over training
   does (:func:`svfcheck.emergence.head_sets.identify_heads`).
3. ``checkpoint`` — one per (analysis, series, seed, step); ``random-init`` — one per
   (analysis, series, seed): the same analysis on the seeded random initialisation of the
   series' architecture (the reference band of the figures); ``spec`` — one per (gate spec,
   seed).

A task's **key** is a SHA-256 over everything that determines its result: its kind and
inputs, the content hashes of the checkpoints it reads (config and weight files; a hub
checkpoint's id and revision), the key of the stage it builds on and the svfcheck version.
A finished task is stored under its key (:mod:`svfcheck.sweep.store`) and never recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import AnalysisPlan, Plan, Resources, SeriesPlan

__all__ = ["Task", "train_tasks", "resolve_series", "heads_tasks", "analysis_tasks", "digest"]

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
                           "run_dir": str(_run_dir(out, s)), "gpu": plan.resources.num_gpus > 0}, plan.resources))
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


def _applies(a: AnalysisPlan, s: SeriesPlan) -> bool:
    return a.task is not None and (not a.series or s.name in a.series)


def heads_tasks(plan: Plan, out: Path, skip: set[str] = frozenset()) -> list[Task]:
    """Stage 2: one per (task analysis, series) except the series in ``skip`` (not trained)."""
    tasks = []
    for a in plan.analyses:
        for s in plan.series:
            if not _applies(a, s) or s.name in skip:
                continue
            src = series_source(s, out)
            series = resolve_series(src, s.steps)
            settings = _settings(a, None)
            key = digest({"kind": "heads", "series": _fingerprint(series), "settings": settings})
            steps = s.steps if isinstance(s.steps, str) else list(s.steps)
            tasks.append(Task("heads", f"heads {a.name} / {s.name}", key,
                              {"analysis": a.name, "series": s.name, "source": src, "steps": steps,
                               "settings": settings}, plan.resources))
    return tasks


def analysis_tasks(plan: Plan, out: Path, heads: dict[tuple[str, str], tuple[str, dict]],
                   skip: set[str] = frozenset()) -> list[Task]:
    """Stage 3. ``heads[(analysis, series)] = (heads task key, its result)``; pairs without
    heads (their identification failed) and the series in ``skip`` get no tasks."""
    tasks = []
    for a in plan.analyses:
        if a.spec is not None:
            text = a.spec.read_bytes()
            for seed in plan.seeds:
                key = digest({"kind": "spec", "spec_sha256": hashlib.sha256(text).hexdigest(), "seed": seed})
                tasks.append(Task("spec", f"spec {a.name} seed {seed}", key,
                                  {"analysis": a.name, "spec": str(a.spec), "seed": seed}, plan.resources))
            continue
        for s in plan.series:
            if not _applies(a, s) or s.name in skip or (a.name, s.name) not in heads:
                continue
            hkey, hres = heads[(a.name, s.name)]
            src = series_source(s, out)
            series = resolve_series(src, s.steps)
            fp = _fingerprint(series)
            steps = s.steps if isinstance(s.steps, str) else list(s.steps)
            for seed in plan.seeds:
                settings = _settings(a, seed)
                common = {"analysis": a.name, "series": s.name, "source": src, "steps": steps, "settings": settings,
                          "heads": hres["heads"], "seed": seed}
                for ck, cfp in zip(series, fp["checkpoints"]):
                    key = digest({"kind": "checkpoint", "heads_key": hkey, "checkpoint": cfp, "settings": settings})
                    tasks.append(Task("checkpoint", f"{a.name} / {s.name} step {ck.step} seed {seed}", key,
                                      {**common, "step": ck.step}, plan.resources))
                key = digest({"kind": "random-init", "heads_key": hkey, "settings": settings})
                tasks.append(Task("random-init", f"{a.name} / {s.name} random init seed {seed}", key,
                                  {**common, "step": None}, plan.resources))
    return tasks
