"""The one SAD pipeline: a model (and its seeded random initialisation), prompts and
:class:`~svfcheck.real.settings.SADSettings` → trained result, baseline result and their
contrast (docs/math.md §3.8: controls alone are not evidence; the contrast with the random
initialisation is).

The CLI (``svfcheck sad``), the gate (``svfcheck gate``, one run per spec, analyses shared
between specs through an :class:`AnalysisMemo`) and the report's real-model section run SAD
through :func:`run_sad`, so a change to the handoff between the two analyses or to the
contrast is made here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import LoadedModel
from .sad import LEVEL, Contrast, SADResult, analyze, contrast
from .settings import SADSettings

__all__ = ["SADRun", "run_sad", "baseline_settings", "AnalysisMemo", "PAIRS_FILE", "PAIRS_FILE_RANDOM"]

PAIRS_FILE, PAIRS_FILE_RANDOM = "pairs.parquet", "pairs-random-init.parquet"


@dataclass(frozen=True)
class SADRun:
    """A trained model's SAD result, and (with a baseline) its random init's and the contrast."""

    settings: SADSettings
    trained: SADResult
    random: SADResult | None = None
    contrast: Contrast | None = None
    _levels: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, settings: SADSettings, trained: SADResult, random: SADResult | None = None) -> SADRun:
        """A run from its analyses: the contrast (when ``random`` is given) with
        ``settings.n_boot`` resamples and ``settings.seed`` at 99%."""
        if random is None:
            return cls(settings, trained)
        return cls(settings, trained, random, contrast(trained, random, n_boot=settings.n_boot, seed=settings.seed))

    def contrast_at(self, level: float) -> Contrast:
        """The trained-vs-random contrast with intervals at ``level``: :attr:`contrast` itself
        at the default 99%, else computed once (overall only, with the run's ``n_boot`` and
        ``seed``) and kept. ``ValueError`` when the run has no baseline."""
        if self.random is None:
            raise ValueError("this SAD run has no random-init baseline to contrast with")
        if level == LEVEL:
            return self.contrast
        if level not in self._levels:
            self._levels[level] = contrast(self.trained, self.random, n_boot=self.settings.n_boot,
                                           seed=self.settings.seed, level=level, per_role=False)
        return self._levels[level]

    def to_json(self, pairs_files: tuple[str, str] | None = None) -> dict[str, Any]:
        """The ``sad.json`` document: the trained result, plus ``baseline_random_init`` and
        ``contrast`` when a baseline was analysed (see :meth:`SADResult.to_json`); the pairs
        in-line, or named by ``pairs_files`` = (trained file, random-init file)."""
        doc = self.trained.to_json(None if pairs_files is None else pairs_files[0])
        if self.random is not None:
            doc["baseline_random_init"] = self.random.to_json(None if pairs_files is None else pairs_files[1])
            doc["contrast"] = self.contrast.to_json()
        return doc

    def write(self, out_dir) -> Path:
        """``out_dir/sad.json`` (the summary) with the pairs in ``pairs.parquet`` (and
        ``pairs-random-init.parquet``); returns the ``sad.json`` path."""
        import json

        out = Path(out_dir)
        files = (PAIRS_FILE, PAIRS_FILE_RANDOM)
        self.trained.write_pairs(out / files[0])
        if self.random is not None:
            self.random.write_pairs(out / files[1])
        path = out / "sad.json"
        tmp = out / ".sad.json.tmp"
        tmp.write_text(json.dumps(self.to_json(files)) + "\n")
        tmp.replace(path)
        return path


def baseline_settings(trained: SADResult, settings: SADSettings) -> SADSettings:
    """Settings for the random init: the same, except that heads discovered on the trained model
    are handed over (a random network has no IOI circuit to discover; the contrast compares the
    same heads and positions)."""
    if trained.heads_mode != "discover":
        return settings
    if trained.selection == "circuit":
        return settings.replace(heads=tuple(trained.circuit))
    return settings.replace(heads=tuple((c.layer, c.head) for c in trained.circuit))


class AnalysisMemo:
    """Analyses already made, keyed by what determines them: the model's identity (name,
    revision, folder, random init and its seed, parameter dtype), the prompts' token ids and
    the settings. The gate keeps one across specs, so two specs that analyse the same model
    on the same prompts with the same settings analyse it once (and a spec's baseline is
    shared with another spec's identical baseline)."""

    def __init__(self) -> None:
        self._done: dict[tuple, SADResult] = {}

    @staticmethod
    def key(loaded: LoadedModel, prompts, settings: SADSettings) -> tuple:
        from ..tasks.prompts import as_prompts

        dtype = str(next(loaded.model.parameters()).dtype)
        ids = tuple((p.token_ids, tuple(sorted((p.positions or {}).items()))) for p in as_prompts(loaded.tokenizer, prompts))
        return (loaded.name, loaded.revision, loaded.path, loaded.random_init, loaded.seed, dtype, ids, settings)

    def analyze(self, loaded: LoadedModel, prompts, settings: SADSettings, **kw: Any) -> SADResult:
        """:func:`~svfcheck.real.sad.analyze`, or the result of an identical earlier call."""
        k = self.key(loaded, prompts, settings)
        if k not in self._done:
            self._done[k] = analyze(loaded, prompts, settings, **kw)
        return self._done[k]

    def __len__(self) -> int:
        return len(self._done)


def run_sad(
    loaded: LoadedModel,
    prompts,
    settings: SADSettings,
    *,
    random: LoadedModel | None = None,
    progress: bool = True,
    threads: int | None = None,
    memo: AnalysisMemo | None = None,
) -> SADRun:
    """SAD of ``loaded`` and, when ``random`` is given, of ``random`` on the same prompts with
    :func:`baseline_settings`, contrasted with ``settings.n_boot`` resamples and ``settings.seed``
    (99% intervals; :meth:`SADRun.contrast_at` for another level).

    Args:
        loaded: the trained model.
        prompts: as for :func:`~svfcheck.real.sad.analyze`.
        settings: what to analyse.
        random: the seeded random initialisation of the same architecture
            (``load_model(name, random_init=True, seed=...)``), or ``None`` for no baseline.
        memo: reuse (and keep) analyses made earlier with the same model, prompts and settings.
    Returns:
        :class:`SADRun`.
    """
    run = (memo or AnalysisMemo()).analyze
    res = run(loaded, prompts, settings, progress=progress, threads=threads)
    base = None if random is None else run(random, prompts, baseline_settings(res, settings), progress=progress,
                                           threads=threads)
    return SADRun.of(settings, res, base)
