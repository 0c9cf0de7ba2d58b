"""What a training run leaves behind, in memory: :class:`RunResult` (returned by
:func:`~svfcheck.emergence.train.train_run` and :func:`load_run`) and, through
:meth:`RunResult.series`, its checkpoints as a :class:`~svfcheck.emergence.series.CheckpointSeries`.

The files themselves are read and written by :mod:`.runfiles`. Dependencies point one way:
records → series → runfiles → config (series never imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import LMTrainConfig
from .runfiles import read_run
from .series import CheckpointSeries

__all__ = ["RunResult", "load_run"]


@dataclass
class RunResult:
    """Outcome of :func:`~svfcheck.emergence.train.train_run` / :func:`load_run`. ``curve``: one
    dict per logged step (``step``, ``lr``, ``train_loss`` (mean over the updates since the
    previous entry; None at step 0), ``eval_loss``, and for induction ``induction_accuracy``).
    ``skipped``: the run was already finished and nothing was computed."""

    out_dir: Path
    config: LMTrainConfig
    curve: list[dict]
    checkpoints: list[int]
    finished: bool
    summary: dict = field(default_factory=dict)
    skipped: bool = False
    resumed_from: int | None = None
    wall_time_s: float = 0.0

    def checkpoint_dir(self, step: int) -> Path:
        if step not in self.checkpoints:
            raise ValueError(f"no checkpoint at step {step}; have {self.checkpoints}")
        return self.out_dir / f"step{step}"

    def series(self) -> CheckpointSeries:
        return CheckpointSeries.from_run(self.out_dir)


def load_run(out_dir) -> RunResult:
    """Read a run folder's ``run.json`` (finished or not)."""
    out = Path(out_dir)
    return RunResult(out_dir=out, **read_run(out))
