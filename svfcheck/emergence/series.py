"""A checkpoint series — an ordered list of (training step, model locator) — as an input.

Sources:

- :meth:`CheckpointSeries.from_pythia` — hub model ``EleutherAI/pythia-*`` at revisions
  ``step{N}`` (only the locators are built; nothing touches the network until
  :meth:`CheckpointSeries.load`).
- :meth:`CheckpointSeries.from_folder` — a folder of ``step{N}/`` subfolders, each in
  ``save_pretrained`` format (``config.json`` + weights + tokenizer), or a manifest JSON.
- :meth:`CheckpointSeries.from_run` — a training run of :func:`svfcheck.emergence.train_run`
  (its ``run.json``, read by :func:`svfcheck.emergence.runfiles.read_run`, lists the
  checkpoints and carries the training curve).

Manifest format (a ``.json`` file, or ``checkpoints.json`` inside a folder)::

    {"format": "svfcheck-checkpoints/1", "name": "my-series",
     "checkpoints": [{"step": 0, "path": "init"},                 # folder, relative to the manifest
                     {"step": 1000, "model": "org/model", "revision": "step1000"}]}  # hub

SPEC strings (:func:`parse_series`, used by the CLI):

- ``pythia:EleutherAI/pythia-160m@0,1000,143000`` — Pythia revisions ``step0``, ``step1000``…;
  ``pythia:EleutherAI/pythia-160m`` alone uses :func:`pythia_steps` (all 154 checkpoints);
  ``@0-143000/8`` picks 8 log-spaced valid Pythia steps between the bounds.
- ``hub:ORG/MODEL@rev1=STEP1,rev2=STEP2`` — any hub model with named revisions.
- ``model:NAME[@REVISION][#STEP]`` — one model as a one-checkpoint series at ``STEP``
  (default 0): an offline name (its packaged weights, resolved to their folder so that they
  are hashed like any checkpoint), a local folder or a hub id (``@REVISION``, default
  ``main``). For a sweep over models rather than over training (final weights of several
  models, each against its random initialisation).
- ``run:DIR`` — a training run; ``DIR`` alone (an existing path) is a run if it holds
  ``run.json``, else a folder of ``step{N}`` checkpoints or a manifest ``.json`` file.

Every series is validated: steps are non-negative ints, unique and strictly increasing, every
local checkpoint folder exists and holds ``config.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._validate import is_int
from .runfiles import read_run

__all__ = ["Checkpoint", "CheckpointSeries", "parse_series", "pythia_steps", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "svfcheck-checkpoints/1"
_STEP_DIR = re.compile(r"^step(\d+)$")


def pythia_steps() -> list[int]:
    """Pythia's 154 checkpoint steps: 0, 1, 2, 4, …, 512, then 1000, 2000, …, 143000."""
    return [0] + [2**k for k in range(10)] + list(range(1000, 143001, 1000))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: ``locator`` is a local folder path or a hub id; ``revision`` the hub
    revision (None for folders)."""

    step: int
    locator: str
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return self.revision is None

    def to_dict(self) -> dict:
        return {"step": self.step, "locator": self.locator, "revision": self.revision}


@dataclass(frozen=True)
class CheckpointSeries:
    """Ordered checkpoints (strictly increasing steps). ``metadata`` carries what the source
    knows (e.g. a run's training curve)."""

    name: str
    checkpoints: tuple[Checkpoint, ...]
    source: str = "custom"
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        if not self.checkpoints:
            raise ValueError(f"checkpoint series {self.name!r} is empty")
        steps = [c.step for c in self.checkpoints]
        bad = [s for s in steps if not is_int(s) or s < 0]
        if bad:
            raise ValueError(f"checkpoint steps must be non-negative ints, got {bad!r}")
        dup = sorted({s for s in steps if steps.count(s) > 1})
        if dup:
            raise ValueError(f"checkpoint steps must be unique; duplicated: {dup}")
        if steps != sorted(steps):
            raise ValueError(f"checkpoint steps must be in increasing order, got {steps}")
        for c in self.checkpoints:
            if c.is_local:
                p = Path(c.locator)
                if not p.is_dir():
                    raise ValueError(f"checkpoint folder for step {c.step} does not exist: {p}")
                if not (p / "config.json").is_file():
                    raise ValueError(
                        f"checkpoint folder for step {c.step} has no config.json (not a "
                        f"save_pretrained folder): {p}"
                    )

    # ---- access ---------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __getitem__(self, i: int) -> Checkpoint:
        return self.checkpoints[i]

    def at(self, step: int) -> Checkpoint:
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise KeyError(f"no checkpoint at step {step} in series {self.name!r}; steps: {self.steps}")

    def subset(self, steps: Sequence[int]) -> "CheckpointSeries":
        """The checkpoints at ``steps`` (each must exist)."""
        return CheckpointSeries(
            self.name, tuple(self.at(s) for s in sorted(steps)), self.source, self.metadata
        )

    def first_middle_last(self) -> "CheckpointSeries":
        s = self.steps
        return self.subset(sorted({s[0], s[len(s) // 2], s[-1]}))

    def load(self, step: int, **kwargs: Any):
        """Load the model at ``step`` through ``svfcheck.real.models.load_model`` (eager
        attention, eval mode); ``kwargs`` are passed on (e.g. ``progress=False``)."""
        from svfcheck.real.models import load_model

        c = self.at(step)
        return load_model(c.locator, revision=c.revision, **kwargs)

    def to_dict(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "source": self.source,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
        }

    def write_manifest(self, path) -> Path:
        """Write a manifest JSON (absolute local paths) readable by :meth:`from_manifest`."""
        p = Path(path)
        entries = []
        for c in self.checkpoints:
            if c.is_local:
                entries.append({"step": c.step, "path": str(Path(c.locator).resolve())})
            else:
                entries.append({"step": c.step, "model": c.locator, "revision": c.revision})
        p.write_text(json.dumps({"format": MANIFEST_FORMAT, "name": self.name, "checkpoints": entries}, indent=1) + "\n")
        return p

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def from_pythia(
        cls, model_id: str = "EleutherAI/pythia-160m", steps: Sequence[int] | None = None, strict: bool = True
    ) -> "CheckpointSeries":
        """Pythia revisions ``step{N}`` of ``model_id`` (default: all :func:`pythia_steps`).
        ``strict`` rejects steps that Pythia did not save (there is no network to ask)."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a non-empty hub id, got {model_id!r}")
        steps = pythia_steps() if steps is None else list(steps)
        if strict:
            valid = set(pythia_steps())
            bad = [s for s in steps if s not in valid]
            if bad:
                raise ValueError(
                    f"steps {bad} are not Pythia checkpoints (Pythia saved step 0, powers of two "
                    "up to 512, and every 1000 steps up to 143000); pass strict=False for other "
                    "models with the same revision naming"
                )
        cks = tuple(Checkpoint(s, model_id, f"step{s}") for s in steps)
        return cls(name=model_id, checkpoints=cks, source="hub")

    @classmethod
    def from_folder(cls, path) -> "CheckpointSeries":
        """``path``: a manifest ``.json`` file, a folder holding ``checkpoints.json``, or a
        folder of ``step{N}/`` save_pretrained subfolders."""
        p = Path(path)
        if p.is_file():
            return cls.from_manifest(p)
        if not p.is_dir():
            raise ValueError(f"checkpoint folder does not exist: {p}")
        if (p / "checkpoints.json").is_file():
            return cls.from_manifest(p / "checkpoints.json")
        found = []
        for child in p.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        if not found:
            raise ValueError(
                f"{p} holds no step{{N}}/ checkpoint folders and no checkpoints.json manifest"
            )
        found.sort()
        return cls(
            name=p.name,
            checkpoints=tuple(Checkpoint(s, str(d)) for s, d in found),
            source="folder",
        )

    @classmethod
    def from_manifest(cls, path) -> "CheckpointSeries":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read checkpoint manifest {p}: {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{p} is not a checkpoint manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
        entries = d.get("checkpoints")
        if not isinstance(entries, list):
            raise ValueError(f"{p}: \"checkpoints\" must be a list")
        cks = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "step" not in e:
                raise ValueError(f"{p}: checkpoint #{i} must be an object with a \"step\"")
            if ("path" in e) == ("model" in e):
                raise ValueError(f"{p}: checkpoint #{i} needs exactly one of \"path\" or \"model\"")
            if "path" in e:
                loc = Path(e["path"])
                if not loc.is_absolute():
                    loc = p.parent / loc
                cks.append(Checkpoint(e["step"], str(loc)))
            else:
                cks.append(Checkpoint(e["step"], e["model"], e.get("revision") or f"step{e['step']}"))
        return cls(name=d.get("name", p.stem), checkpoints=tuple(cks), source="manifest")

    @classmethod
    def from_run(cls, run_dir) -> "CheckpointSeries":
        """The checkpoints of a training run (its ``run.json``); ``metadata`` holds the run's
        config, curve and summary so the task metric can share the time axis."""
        r = read_run(run_dir)
        cks = tuple(Checkpoint(s, str(Path(run_dir) / f"step{s}")) for s in r["checkpoints"])
        return cls(
            name=r["config"].preset,
            checkpoints=cks,
            source="run",
            metadata={
                "run_dir": str(run_dir),
                "finished": r["finished"],
                "config": r["config"].to_dict(),
                "curve": r["curve"],
                "summary": r["summary"],
            },
        )


def _parse_steps(text: str, spec: str) -> list[int]:
    m = re.fullmatch(r"(\d+)-(\d+)/(\d+)", text)
    if m:
        lo, hi, n = map(int, m.groups())
        if lo >= hi or n < 2:
            raise ValueError(f"bad step range {text!r} in {spec!r}: need LO<HI and N>=2")
        valid = [s for s in pythia_steps() if lo <= s <= hi]
        if len(valid) <= n:
            return valid
        import numpy as np

        targets = np.geomspace(max(lo, 1), hi, n - (1 if lo == 0 else 0))
        out = {0} if lo == 0 else set()
        for t in targets:
            out.add(min(valid, key=lambda v: abs(np.log1p(v) - np.log1p(t))))
        return sorted(out)
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"bad step list {text!r} in {spec!r}: expected comma-separated ints") from None


def _model_series(spec: str) -> CheckpointSeries:
    """``model:NAME[@REVISION][#STEP]``: one model as a one-checkpoint series (module docstring)."""
    body, hash_, step_text = spec[len("model:"):].partition("#")
    name, at, revision = body.partition("@")
    name = name.strip()
    if not name or (at and not revision.strip()):
        raise ValueError(f"{spec!r}: expected model:NAME[@REVISION][#STEP], e.g. model:smollm2-135m or "
                         "model:EleutherAI/pythia-160m@step143000#143000")
    step = 0
    if hash_:
        if not step_text.strip().isdigit():
            raise ValueError(f"{spec!r}: the step after '#' must be a non-negative whole number, got {step_text!r}")
        step = int(step_text)
    from svfcheck.real.errors import ModelLoadError
    from svfcheck.real.models import model_location

    try:
        locator, rev = model_location(name, revision.strip() or None)
    except ModelLoadError as exc:  # a bad SPEC is a ValueError here, naming the SPEC
        raise ValueError(f"{spec!r}: {exc}") from None
    label = name.rstrip("/").rsplit("/", 1)[-1]
    return CheckpointSeries(label, (Checkpoint(step, locator, rev),), source="model")


def parse_series(spec: str) -> CheckpointSeries:
    """Parse a SPEC string (module docstring) into a validated :class:`CheckpointSeries`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty checkpoint SPEC; e.g. 'pythia:EleutherAI/pythia-160m@0,1000,143000' or a folder")
    spec = spec.strip()
    if spec.startswith("pythia:"):
        body = spec[len("pythia:"):]
        model, _, steps = body.partition("@")
        if not model:
            raise ValueError(f"no model id in {spec!r}; e.g. pythia:EleutherAI/pythia-160m@0,143000")
        return CheckpointSeries.from_pythia(model, _parse_steps(steps, spec) if steps else None)
    if spec.startswith("hub:"):
        model, _, revs = spec[len("hub:"):].partition("@")
        if not model or not revs:
            raise ValueError(f"{spec!r}: expected hub:ORG/MODEL@REV=STEP,REV=STEP")
        cks = []
        for item in revs.split(","):
            rev, eq, step = item.partition("=")
            if not eq or not step.strip().isdigit():
                raise ValueError(f"{spec!r}: bad revision item {item!r}; expected REV=STEP")
            cks.append(Checkpoint(int(step), model, rev))
        return CheckpointSeries(model, tuple(cks), source="hub")
    if spec.startswith("model:"):
        return _model_series(spec)
    if spec.startswith("run:"):
        return CheckpointSeries.from_run(spec[len("run:"):])
    if spec.startswith("folder:"):
        return CheckpointSeries.from_folder(spec[len("folder:"):])
    p = Path(spec)
    if not p.exists():
        raise ValueError(
            f"checkpoint SPEC {spec!r} is neither an existing path nor one of "
            "'pythia:MODEL[@STEPS]', 'hub:MODEL@REV=STEP,...', 'run:DIR', 'folder:DIR'"
        )
    if p.is_dir() and (p / "run.json").is_file():
        return CheckpointSeries.from_run(p)
    return CheckpointSeries.from_folder(p)
