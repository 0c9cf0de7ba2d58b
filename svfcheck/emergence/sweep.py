"""Resumable per-checkpoint analysis: results keyed by step in one JSON file.

:func:`sweep` runs ``fn(checkpoint) -> dict`` (JSON-serialisable) over a
:class:`~svfcheck.emergence.series.CheckpointSeries`, writing ``path`` atomically after every
step. A rerun after an interruption computes only the missing steps; a finished step is never
recomputed. The file records a ``key`` (a hash of everything the results depend on: settings,
inputs); a file written under another key is rejected rather than silently mixed. The final
JSON depends only on the results, not on how many sessions produced them (steps are stored in
series order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .series import Checkpoint, CheckpointSeries

__all__ = ["sweep", "load_sweep", "SWEEP_FORMAT"]

SWEEP_FORMAT = "svfcheck-sweep/1"


_ADVICE = "use another output folder (--out) or delete it to start the analysis over"


def load_sweep(path) -> dict:
    """A sweep file's content; a damaged or foreign file is a ValueError naming it."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); {_ADVICE}") from None
    if not isinstance(d, dict) or d.get("format") != SWEEP_FORMAT or not isinstance(d.get("results"), dict):
        got = d.get("format") if isinstance(d, dict) else None
        raise ValueError(f"{path} is not a sweep file (format {got!r}); {_ADVICE}")
    return d


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def sweep(
    series: CheckpointSeries,
    fn: Callable[[Checkpoint], dict],
    path,
    key: Any = None,
    progress: bool = False,
) -> dict[int, dict]:
    """Results of ``fn`` for every checkpoint of ``series``, keyed by step (see module doc)."""
    from tqdm.auto import tqdm

    path = Path(path)
    results: dict[str, dict] = {}
    if path.is_file():
        d = load_sweep(path)
        if d.get("key") != key:
            raise ValueError(
                f"{path} was written for a different analysis or input (key {d.get('key')!r} != "
                f"{key!r}); {_ADVICE}"
            )
        if d.get("series") != series.name:
            raise ValueError(f"{path} belongs to series {d.get('series')!r}, not {series.name!r}; {_ADVICE}")
        results = d["results"]

    def dump(complete: bool) -> None:
        ordered = {str(s): results[str(s)] for s in series.steps if str(s) in results}
        _write(
            path,
            {"format": SWEEP_FORMAT, "series": series.name, "key": key, "steps": series.steps,
             "complete": complete, "results": ordered},
        )

    todo = [c for c in series if str(c.step) not in results]
    for c in tqdm(todo, disable=not progress, desc="checkpoints"):
        r = fn(c)
        results[str(c.step)] = json.loads(json.dumps(r))  # must be JSON-serialisable
        dump(complete=False)
    dump(complete=True)
    return {s: results[str(s)] for s in series.steps}
