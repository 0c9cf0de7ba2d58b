"""The one SAD pipeline: a model (and its seeded random initialisation), prompts and
:class:`~svfcheck.real.settings.SADSettings` → trained result, baseline result and their
contrast (docs/math.md §3.8: controls alone are not evidence; the contrast with the random
initialisation is).

The CLI (``svfcheck sad``) and the report's real-model section run SAD through
:func:`run_sad`, so a change to the handoff between the two analyses or to the contrast is
made here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import LoadedModel
from .sad import Contrast, SADResult, analyze, contrast
from .settings import SADSettings

__all__ = ["SADRun", "run_sad", "baseline_settings"]


@dataclass(frozen=True)
class SADRun:
    """A trained model's SAD result, and (with a baseline) its random init's and the contrast."""

    settings: SADSettings
    trained: SADResult
    random: SADResult | None = None
    contrast: Contrast | None = None

    def to_json(self, compact: bool = False) -> dict[str, Any]:
        """The ``sad.json`` document: the trained result, plus ``baseline_random_init`` and
        ``contrast`` when a baseline was analysed (see :meth:`SADResult.to_json`)."""
        doc = self.trained.to_json(compact=compact)
        if self.random is not None:
            doc["baseline_random_init"] = self.random.to_json(compact=compact)
            doc["contrast"] = self.contrast.to_json()
        return doc


def baseline_settings(trained: SADResult, settings: SADSettings) -> SADSettings:
    """Settings for the random init: the same, except that heads discovered on the trained model
    are handed over (a random network has no IOI circuit to discover; the contrast compares the
    same heads and positions)."""
    if trained.heads_mode != "discover":
        return settings
    if trained.selection == "circuit":
        return settings.replace(heads=tuple(trained.circuit))
    return settings.replace(heads=tuple((c.layer, c.head) for c in trained.circuit))


def run_sad(
    loaded: LoadedModel,
    prompts,
    settings: SADSettings,
    *,
    random: LoadedModel | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> SADRun:
    """SAD of ``loaded`` and, when ``random`` is given, of ``random`` on the same prompts with
    :func:`baseline_settings`, contrasted with ``settings.n_boot`` resamples and ``settings.seed``.

    Args:
        loaded: the trained model.
        prompts: as for :func:`~svfcheck.real.sad.analyze`.
        settings: what to analyse.
        random: the seeded random initialisation of the same architecture
            (``load_model(name, random_init=True, seed=...)``), or ``None`` for no baseline.
    Returns:
        :class:`SADRun`.
    """
    res = analyze(loaded, prompts, settings, progress=progress, threads=threads)
    if random is None:
        return SADRun(settings, res)
    base = analyze(random, prompts, baseline_settings(res, settings), progress=progress, threads=threads)
    return SADRun(settings, res, base, contrast(res, base, n_boot=settings.n_boot, seed=settings.seed))
