"""Sweep plans (TOML) → validated frozen dataclasses.

A plan names checkpoint series (trained here from an emergence preset, or read from a run
folder, a folder of checkpoints, a manifest, Pythia-style hub revisions or a single model — the sources
``svfcheck emergence --series`` reads), analyses (an emergence task with its settings, or a
gate spec) and seeds; the sweep is their product (:mod:`svfcheck.sweep.tasks`). The format is
documented in ``plans/README.md``. Anything wrong raises :class:`PlanError` naming the file,
the key and the expected form, before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..tomltables import TableError, TableReader, read_toml, show, tname

__all__ = ["PlanError", "Resources", "SeriesPlan", "AnalysisPlan", "Plan", "load_plan", "STEP_CHOICES"]

STEP_CHOICES = ("all", "first-middle-last")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_SEEDS = 1000
MAX_RETRIES = 10


class PlanError(TableError):
    """A problem with a plan file: ``file: key: problem; expected ...``."""


@dataclass(frozen=True)
class Resources:
    """Per-task resources and retries: ``num_cpus`` (> 0), ``num_gpus`` (≥ 0, fractional
    allowed), ``max_retries`` (retries after a task raises, 0–10). The plan's ``[resources]``
    apply to every task; a series' ``resources`` (its training task) and an analysis'
    ``resources`` (its head identification, checkpoint, random-init and spec tasks) override
    them key by key."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SeriesPlan:
    """One checkpoint series: ``preset`` (+ ``train`` overrides; trained into
    ``OUT/runs/NAME``) or ``source`` (a series SPEC, relative paths resolved against the plan's
    folder); ``steps``: ``"all"``, ``"first-middle-last"`` or a list of steps."""

    name: str
    preset: str | None = None
    train: tuple[tuple[str, Any], ...] = ()
    source: str | None = None
    steps: str | tuple[int, ...] = "all"
    resources: Resources | None = None  # its training task's; None: the plan's


@dataclass(frozen=True)
class AnalysisPlan:
    """One analysis: ``task`` (``induction``/``ioi``/``text``) with ``settings`` overrides of
    :class:`~svfcheck.emergence.settings.EmergenceSettings` over the named ``series`` (default:
    all), or ``spec`` (a gate analysis spec, run on the spec's own model)."""

    name: str
    task: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()
    series: tuple[str, ...] = ()
    spec: Path | None = None
    resources: Resources | None = None  # its tasks'; None: the plan's


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    description: str
    resources: Resources
    seeds: tuple[int, ...]
    series: tuple[SeriesPlan, ...]
    analyses: tuple[AnalysisPlan, ...]

    def train_resources(self, s: SeriesPlan) -> Resources:
        """What series ``s``'s training task asks for."""
        return s.resources or self.resources

    def analysis_resources(self, a: AnalysisPlan) -> Resources:
        """What each task of analysis ``a`` asks for."""
        return a.resources or self.resources

    def resource_requests(self) -> list[tuple[str, Resources]]:
        """What each group of tasks asks for, named: every preset series' training, every
        analysis' tasks (an engine checks them all before any work starts)."""
        return ([(f"the training task of series {s.name!r}", self.train_resources(s)) for s in self.series if s.preset]
                + [(f"each task of analysis {a.name!r}", self.analysis_resources(a)) for a in self.analyses])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "file": str(self.path),
            "resources": self.resources.to_json(),
            "seeds": list(self.seeds),
            "series": [{"name": s.name, "preset": s.preset, "train": dict(s.train), "source": s.source,
                        "steps": s.steps if isinstance(s.steps, str) else list(s.steps),
                        "resources": self.train_resources(s).to_json()} for s in self.series],
            "analyses": [{"name": a.name, "task": a.task, "settings": dict(a.settings), "series": list(a.series),
                          "spec": None if a.spec is None else str(a.spec),
                          "resources": self.analysis_resources(a).to_json()} for a in self.analyses],
        }


class _T(TableReader):
    """One table of a plan (the shared checked TOML reader, :mod:`svfcheck.tomltables`)."""

    error = PlanError

    def name(self, k: str = "name") -> str:
        v = self.table.get(k)
        if not isinstance(v, str) or not _NAME.fullmatch(v):
            raise self.err(k, "missing" if v is None else f"got {v!r}",
                           "a name of letters, digits, '.', '_' or '-' (at most 64 characters)")
        return v


def _resources(file: Path, key: str, t: Any, base: Resources = Resources()) -> Resources:
    """The table at ``key``; keys it leaves out come from ``base``."""
    r = _T(file, key, t, ("num_cpus", "num_gpus", "max_retries"))
    return Resources(r.float_("num_cpus", base.num_cpus, lo=0.0, hi=256.0, lo_open=True),
                     r.float_("num_gpus", base.num_gpus, lo=0.0, hi=64.0),
                     r.int_("max_retries", base.max_retries, lo=0, hi=MAX_RETRIES))


def _own_resources(file: Path, r: _T, base: Resources) -> Resources | None:
    return None if "resources" not in r.table else _resources(file, r.key("resources"), r.table["resources"], base)


def _steps(r: _T) -> str | tuple[int, ...]:
    v = r.table.get("steps", "all")
    if isinstance(v, str):
        if v not in STEP_CHOICES:
            raise r.err("steps", f"got {v!r}", f"one of {STEP_CHOICES} or a list of steps")
        return v
    if (not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v)
            or len(set(v)) != len(v)):
        raise r.err("steps", f"got {v!r}", "a non-empty list of distinct non-negative steps")
    return tuple(sorted(v))


def _series(file: Path, i: int, t: Any, base: Resources) -> SeriesPlan:
    r = _T(file, f"series[{i}]", t, ("name", "preset", "train", "source", "steps", "resources"))
    name, preset, source, steps = r.name(), r.str_("preset", None), r.str_("source", None), _steps(r)
    if (preset is None) == (source is None):
        raise r.err("preset", "give exactly one of preset and source",
                    'preset = "induction-gpt2" (trained here) or source = "run:DIR" / "folder:DIR" / a manifest / '
                    '"pythia:MODEL@STEPS" / "model:NAME" (one model: offline name, folder or hub id)')
    train: dict[str, Any] = {}
    if preset is not None:
        from ..emergence.config import PRESETS, LMTrainConfig

        if preset not in PRESETS:
            raise r.err("preset", f"got {preset!r}", "one of " + ", ".join(sorted(PRESETS)))
        tt = _T(file, r.key("train"), r.table.get("train", {}), tuple(
            f.name for f in fields(LMTrainConfig) if f.name not in ("preset", "model", "task")))
        train = dict(tt.table)
        try:
            from ..emergence.config import preset as make

            cfg = make(preset, **train)
        except (TypeError, ValueError) as e:
            raise r.err("train", str(e), "overrides that LMTrainConfig accepts") from None
        missing = [] if isinstance(steps, str) else sorted(set(steps) - set(cfg.schedule()))
        if missing:  # caught here, not after the run has trained
            raise r.err("steps", f"the run will save no checkpoint at steps {missing}",
                        f"steps among its checkpoints {list(cfg.schedule())}, or \"all\" / \"first-middle-last\"")
    elif "train" in r.table:
        raise r.err("train", "only applies to a preset series", "no train table, or preset = ...")
    elif "resources" in r.table:
        raise r.err("resources", "only applies to a preset series (they are its training task's)",
                    "no resources table (an analysis' resources apply to its tasks on this series), or preset = ...")
    if source is not None and source.startswith("model:"):  # a name or hub id; a folder relative to the plan
        model = source[len("model:"):].split("#", 1)[0].split("@", 1)[0]
        if model and not Path(model).is_absolute() and (file.parent / model).is_dir():
            source = "model:" + str((file.parent / model).resolve()) + source[len("model:") + len(model):]
    elif source is not None and not re.match(r"(pythia|hub):", source):
        p = Path(source.split(":", 1)[1] if re.match(r"(run|folder):", source) else source)
        if not p.is_absolute():
            resolved = (file.parent / p).resolve()
            source = (source.split(":", 1)[0] + ":" if re.match(r"(run|folder):", source) else "") + str(resolved)
    return SeriesPlan(name, preset, tuple(sorted(train.items())), source, steps, _own_resources(file, r, base))


def _analysis(file: Path, i: int, t: Any, series_names: set[str], base: Resources) -> AnalysisPlan:
    r = _T(file, f"analysis[{i}]", t, ("name", "task", "settings", "series", "spec", "resources"))
    own = _own_resources(file, r, base)
    name, task, spec = r.name(), r.str_("task", None), r.str_("spec", None)
    if (task is None) == (spec is None):
        raise r.err("task", "give exactly one of task and spec",
                    'task = "induction"/"ioi"/"text" (with [analysis.settings]) or spec = "analyses/x.toml"')
    if spec is not None:
        for k in ("settings", "series"):
            if k in r.table:
                raise r.err(k, "does not apply to a spec analysis (it runs on the spec's own model)", f"no {k} key")
        p = Path(spec) if Path(spec).is_absolute() else (file.parent / spec).resolve()
        from ..gate.spec import SpecError, load_spec

        try:
            load_spec(p)
        except SpecError as e:
            raise r.err("spec", f"the spec does not load: {e}", "a valid analysis spec (analyses/README.md)") from None
        return AnalysisPlan(name, spec=p, resources=own)
    from ..emergence.settings import TASKS, EmergenceSettings

    if task not in TASKS:
        raise r.err("task", f"got {task!r}", f"one of {TASKS}")
    st = _T(file, r.key("settings"), r.table.get("settings", {}),
            tuple(f.name for f in fields(EmergenceSettings) if f.name not in ("task", "seed")))
    try:
        EmergenceSettings(task=task, **st.table)
    except (TypeError, ValueError) as e:
        raise r.err("settings", str(e), "EmergenceSettings fields (the seed comes from the plan's seeds)") from None
    names = r.table.get("series", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise r.err("series", f"got {names!r}", "a list of series names")
    unknown = [n for n in names if n not in series_names]
    if unknown:
        raise r.err("series", f"unknown series {unknown[0]!r}", "names of [[series]] in this plan: "
                    + ", ".join(sorted(series_names)))
    return AnalysisPlan(name, task=task, settings=tuple(sorted(st.table.items())), series=tuple(names), resources=own)


def _unique(file: Path, kind: str, items) -> None:
    seen: dict[str, int] = {}
    for i, x in enumerate(items):
        if x.name in seen:
            raise PlanError(file, f"{kind}[{i}].name", f"{x.name!r} is already the name of {kind}[{seen[x.name]}]",
                            "a unique name")
        seen[x.name] = i


def load_plan(path: str | Path) -> Plan:
    """Parse and validate a plan file; :class:`PlanError` on any problem."""
    file = Path(path).resolve() if Path(path).exists() else Path(path)
    doc = read_toml(file, PlanError, "a path to a plan .toml")
    top = _T(file, "", doc, ("name", "description", "resources", "seeds", "series", "analysis"))
    name = top.name() if "name" in doc else file.stem
    description = top.table.get("description", "")
    if not isinstance(description, str):
        raise top.err("description", f"is {tname(description)}", "a string")
    seeds = doc.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS or len(set(map(str, seeds))) != len(seeds)
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32 for s in seeds)):
        raise PlanError(file, "seeds", f"got {seeds!r}", f"a list of 1 to {MAX_SEEDS} distinct seeds in [0, 2^32)")
    for k, form in (("series", "[[series]] tables (double brackets)"), ("analysis", "[[analysis]] tables")):
        if k in doc and not isinstance(doc[k], list):
            raise PlanError(file, k, f"got {show(doc[k])}", form)
    resources = _resources(file, "resources", doc.get("resources", {}))
    series = tuple(_series(file, i, t, resources) for i, t in enumerate(doc.get("series", [])))
    _unique(file, "series", series)
    analyses = tuple(_analysis(file, i, t, {s.name for s in series}, resources)
                     for i, t in enumerate(doc.get("analysis", [])))
    _unique(file, "analysis", analyses)
    if not analyses:
        raise PlanError(file, "analysis", "no [[analysis]] given", "at least one [[analysis]] with task or spec")
    if any(a.task for a in analyses) and not series:
        raise PlanError(file, "series", "task analyses need checkpoint series, but none is given",
                        "at least one [[series]] with preset or source")
    return Plan(file, name, description, resources, tuple(seeds), series, analyses)
