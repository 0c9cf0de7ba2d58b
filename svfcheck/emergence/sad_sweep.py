"""SAD over training: the same prompts, heads and pairs at every checkpoint (paper Fig. 7b, 8, 9b).

:func:`sad_over_training` analyses a :class:`~svfcheck.emergence.series.CheckpointSeries`:

1. **Prompts** are fixed by the settings (seeded), identical at every checkpoint: induction
   sequences of the run's :class:`~svfcheck.emergence.tasks.InductionTask`; IOI prompts
   (:func:`svfcheck.tasks.ioi.generate_ioi_prompts`); or held-out windows of the offline corpus.
2. **Heads** are chosen once, at the *final* checkpoint, by attention pattern — never by index —
   and the same head set is used at every step: induction / previous-token heads by
   :func:`svfcheck.emergence.heads.head_scores`; IOI heads from the paper's table
   (:func:`svfcheck.tasks.circuits.paper_circuit`, e.g. Pythia-160M Table 2) or, without a
   table, :func:`svfcheck.tasks.selection.discover_heads`; text: previous-token heads by mean
   attention ``i → i-1``. Explicit heads may be given instead.
3. **Pairs** (``selection``): ``"task"`` — training-independent pairs fixed by the task
   structure: an induction head's query in the repeated half → the induction target
   (``i - d + 1``, the token after the earlier copy); a previous-token head's query ``i`` →
   ``i - 1``; an IOI head's labelled positions (S1, S1+1, IO, S2, END); a head of a role
   without such a rule (e.g. ``chosen``) its top-attended key; ``"top"`` — each query's
   top-attended non-first key in the chosen heads (as many pairs at every step). With
   ``all_heads`` every other head is analysed too (role ``"other"``, top-attended key).
4. **Per checkpoint** one forward pass per batch (:func:`svfcheck.real.capture.capture`) and the
   exact decomposition (:func:`svfcheck.real.decompose.decompose`) with both rotation controls;
   summaries overall and per role: mean Rolls–Tovee S in the SVD basis and under both controls
   (99% bootstrap intervals of each mean), the SAD effect ``mean(S_control − S_svd)`` with
   intervals, median k. Results are keyed by step through :func:`svfcheck.emergence.sweep.sweep`
   (resumable; a finished step is never recomputed; the sweep key hashes the settings, the
   head set, the prompts, the checkpoints' config and weight files and the tokenizer's
   vocabulary, so a rerun over another series or tokenizer in the same folder is refused).
5. **Contrast** final vs first checkpoint (step 0 = the initialisation of our runs) through
   :func:`svfcheck.real.sad.contrast`, overall and per role.

Outputs in ``out_dir``: ``sad_sweep.json`` (per-step raw results), ``emergence.json`` (all
figure data, settings, heads, contrast — a pure function of the inputs), ``timing.json``
(wall-clock per step; not in ``emergence.json`` so that reruns are byte-identical) and the
figures of :mod:`svfcheck.emergence.figures`.

This module is the driver; the parts live by concern: :mod:`.settings` (settings, head sets,
per-task defaults), :mod:`.prompts` (point 1), :mod:`.head_sets` (point 2), :mod:`.pairs`
(point 3), :mod:`.checkpoint` and :mod:`.summaries` (point 4; the capture → select → decompose
loop is :func:`svfcheck.real.sad_step.decompose_batches`, shared with
:func:`svfcheck.real.sad.analyze`), :mod:`.sweep_key` (the resume key) and :mod:`.contrast`
(point 5).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._validate import is_int as _is_int
from .checkpoint import _analyze_checkpoint
from .contrast import _contrast
from .head_sets import _heads_from_arg, identify_heads
from .prompts import build_prompts
from .series import CheckpointSeries
from .settings import EMERGENCE_FORMAT, OTHER, OVERALL, SELECTIONS, TASKS, EmergenceSettings, HeadSet, default_settings
from .summaries import _summary as _summary  # re-exported (tests)
from .sweep import sweep
from .sweep_key import _key
from .sweep_key import _series_fingerprint as _series_fingerprint  # re-exported (tests)
from .sweep_key import _tokenizer_fingerprint as _tokenizer_fingerprint  # re-exported (tests)

__all__ = [
    "EmergenceSettings",
    "EmergenceResult",
    "HeadSet",
    "sad_over_training",
    "default_settings",
    "identify_heads",
    "build_prompts",
    "TASKS",
    "SELECTIONS",
    "EMERGENCE_FORMAT",
]


@dataclass
class EmergenceResult:
    """``data`` is the content of ``emergence.json``; ``figures`` the written figure paths;
    ``timing`` the per-step wall-clock record (also in ``timing.json``)."""

    out_dir: Path
    data: dict
    figures: list[Path]
    timing: dict

    def contrast(self, role: str = OVERALL) -> dict:
        return self.data["contrast"][role]

    def summary(self, step: int, role: str = OVERALL) -> dict:
        return self.data["steps"][str(step)][role]



def sad_over_training(
    series: CheckpointSeries,
    out_dir,
    settings: EmergenceSettings | None = None,
    *,
    heads=None,
    figures: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> EmergenceResult:
    """Analyse every checkpoint of ``series`` into ``out_dir`` (module docstring).

    ``heads``: None (identify at the final checkpoint by pattern), a :class:`HeadSet`, a dict
    ``role -> [(layer, head), ...]``, or a list of :class:`~svfcheck.tasks.circuits.CircuitHead`.
    ``stop_after=k`` raises a RuntimeError after ``k`` newly analysed steps (a simulated kill,
    for tests; the ``k`` finished steps are kept in ``sad_sweep.json``).
    """
    settings = settings or EmergenceSettings()
    if not isinstance(series, CheckpointSeries):
        raise ValueError(f"series must be a CheckpointSeries, got {type(series).__name__}")
    if stop_after is not None and (not _is_int(stop_after) or stop_after < 1):
        raise ValueError(f"stop_after must be a positive int, got {stop_after!r}")
    if settings.task == "ioi" and settings.ioi_heads == "paper" and heads is None:
        from ..tasks.circuits import PAPER_CIRCUITS

        if (settings.circuit or series.name) not in PAPER_CIRCUITS:
            raise ValueError(
                f"no paper head table for series {series.name!r}; give circuit= one of {sorted(PAPER_CIRCUITS)} "
                "or use ioi_heads='discover'"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..real.sad import single_thread

    # one intra-op thread: these many small ops are far slower with 2+ threads on a busy machine
    with _hf_bars(progress), single_thread():
        return _run(series, out, settings, heads, figures, progress, stop_after)


class _hf_bars:
    """Silence transformers' weight-loading bars unless ``progress``."""

    def __init__(self, progress: bool):
        self.progress = progress

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.was = hf_logging.is_progress_bar_enabled()
        if not self.progress:
            hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self.was:
            hf_logging.enable_progress_bar()
        return False


def _run(series, out, settings, heads, figures, progress, stop_after) -> EmergenceResult:
    from .figures import write_emergence_figures

    final = series.steps[-1]
    t0 = time.perf_counter()
    lm_final = series.load(final, progress=False)
    prompts = build_prompts(settings, lm_final.tokenizer, series, lm_final.model.config.vocab_size)
    hs = _heads_from_arg(heads, settings)
    if hs is None:
        hs = identify_heads(lm_final, settings, series, prompts, step=final)
    from ..tasks.selection import validate_heads_for as _vh

    for hl in hs.roles.values():
        _vh(hl, lm_final.model.config)
    t_heads = time.perf_counter() - t0
    examples = [(r, *hl[0]) for r, hl in hs.roles.items()]
    key = _key(settings, hs, prompts, series, lm_final.tokenizer)
    timing: dict[str, Any] = {"heads_and_prompts_s": t_heads, "steps": {}}
    done = [0]

    def fn(ck):
        t = time.perf_counter()
        lm = lm_final if ck.step == final else series.load(ck.step, progress=False)
        tm = {"load_s": time.perf_counter() - t}
        r = _analyze_checkpoint(lm, settings, hs, prompts, examples, tm)
        tm["total_s"] = time.perf_counter() - t
        timing["steps"][str(ck.step)] = tm
        done[0] += 1
        if stop_after is not None and done[0] > stop_after:
            raise _Interrupted(f"simulated interruption after {stop_after} step(s)")
        return r

    # the final checkpoint first is not needed: sweep() walks the series in order
    res = sweep(series, fn, out / "sad_sweep.json", key=key, progress=progress)
    role_names = [OVERALL] + list(hs.roles) + ([OTHER] if settings.all_heads else [])
    first, last = series.steps[0], final
    data: dict[str, Any] = {
        "format": EMERGENCE_FORMAT,
        "series": series.to_dict(),
        "settings": settings.to_dict(),
        "key": key,
        "heads": hs.to_dict(),
        "n_prompts": len(prompts),
        "roles": role_names,
        "steps": {str(s): res[s]["summary"] for s in series.steps},
        "per_head": {str(s): res[s]["per_head"] for s in series.steps},
        "examples": {"first_step": first, "last_step": last,
                     "first": res[first]["examples"], "last": res[last]["examples"]},
        "max_reconstruction_error": max(res[s]["max_reconstruction_error"] for s in series.steps),
        "contrast": {"first_step": first, "last_step": last,
                     **_contrast(res[first], res[last], role_names, settings.n_boot_contrast, settings.seed)},
        "task_metric": _task_metric(series),
    }
    figs = write_emergence_figures(out, data) if figures else []
    (out / "emergence.json").write_text(json.dumps(data, indent=1) + "\n")
    timing["total_s"] = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    return EmergenceResult(out, data, figs, timing)


class _Interrupted(RuntimeError):
    """A simulated kill of the sweep (``stop_after``)."""


def _task_metric(series: CheckpointSeries) -> dict | None:
    """The run's training curve (loss / induction accuracy) on the step axis, if known."""
    curve = (series.metadata or {}).get("curve")
    if not curve:
        return None
    out = {"step": [e["step"] for e in curve], "eval_loss": [e["eval_loss"] for e in curve]}
    if all("induction_accuracy" in e for e in curve):
        out["induction_accuracy"] = [e["induction_accuracy"] for e in curve]
    return out
