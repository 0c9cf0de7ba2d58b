"""Sweeps: models × checkpoints × analyses × seeds as independent, resumable tasks, run in
this process or on Ray, merged into one Parquet dataset.

:mod:`.plan` (the TOML plan), :mod:`.tasks` (tasks, what each waits for, and their keys), :mod:`.work`
(what a task computes), :mod:`.engines` (local and Ray), :mod:`.store` (atomic per-task
results), :mod:`.dataset` (the merged rows, duplicate checkpoints, Parquet), :mod:`.figures`,
:mod:`.driver` (:func:`run_sweep`) and :mod:`.cli` (``svfcheck sweep``).
"""

from .plan import PlanError, load_plan

__all__ = ["PlanError", "load_plan"]
