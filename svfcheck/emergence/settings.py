"""What SAD over training analyses: :class:`EmergenceSettings`, :class:`HeadSet`, per-task
defaults (:func:`default_settings`) and the names of tasks, selections and head roles.

Everything here enters the sweep key (:mod:`svfcheck.emergence.sweep_key`). How each
checkpoint's pairs are decomposed and summarised (seed, dtype, basis, batch size, bootstrap
resamples) is the pipeline's :class:`~svfcheck.real.settings.SADSettings`
(:attr:`EmergenceSettings.analysis`), validated there once; the rest — which task, prompts and
heads — is what SAD over training adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._validate import is_int as _is_int
from ..real.settings import SADSettings

__all__ = [
    "EmergenceSettings",
    "HeadSet",
    "default_settings",
    "TASKS",
    "SELECTIONS",
    "EMERGENCE_FORMAT",
]

EMERGENCE_FORMAT = "svfcheck-emergence/1"
TASKS = ("induction", "ioi", "text")
SELECTIONS = ("task", "top")
LEVEL = 0.99
CONTROLS = ("rotated", "paper_control")
INDUCTION = "induction"
PREVIOUS_TOKEN = "previous token"
OTHER = "other"
OVERALL = "overall"


@dataclass(frozen=True)
class EmergenceSettings:
    """What is analysed at every checkpoint (all of it enters the sweep key).

    ``n_prompts`` prompts from ``prompt_seed``; ``heads_per_role`` heads per role when heads are
    identified by pattern (``head_sequences`` probe sequences from ``head_seed``); ``seed``
    seeds the rotation controls and bootstraps (``n_boot`` resamples per step, ``n_boot_contrast``
    for the final-vs-first contrast). ``text_tokens``: tokens per text prompt. ``circuit``: an IOI
    head-table name (:data:`svfcheck.tasks.circuits.PAPER_CIRCUITS`); None → the series' name
    if it has a table. ``ioi_heads``: ``auto`` (the table if there is one, else discovered heads),
    ``paper`` (a table is required) or ``discover``. ``dtype``: decomposition dtype (None:
    :func:`svfcheck.real.sad_step.default_dtype`, float64 without RoPE or QK-norm, else float32,
    as :func:`svfcheck.real.sad.analyze`)."""

    task: str = "induction"
    selection: str = "task"
    n_prompts: int = 32
    prompt_seed: int = 7
    heads_per_role: int = 2
    head_sequences: int = 64
    head_seed: int = 1234
    all_heads: bool = False
    seed: int = 0
    n_boot: int = 2000
    n_boot_contrast: int = 10_000
    basis: str = "pair"
    batch_size: int = 16
    text_tokens: int = 64
    circuit: str | None = None
    ioi_heads: str = "auto"
    dtype: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        for f in ("n_prompts", "heads_per_role", "head_sequences"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise ValueError(f"EmergenceSettings.{f} must be a positive int, got {v!r}")
        if not _is_int(self.n_boot_contrast) or self.n_boot_contrast < 100:
            raise ValueError(f"EmergenceSettings.n_boot_contrast must be an int >= 100, got {self.n_boot_contrast!r}")
        for f in ("prompt_seed", "head_seed"):
            v = getattr(self, f)
            if not _is_int(v) or v < 0:
                raise ValueError(f"EmergenceSettings.{f} must be a non-negative int, got {v!r}")
        if not _is_int(self.text_tokens) or self.text_tokens < 3:
            raise ValueError(f"EmergenceSettings.text_tokens must be an int >= 3, got {self.text_tokens!r}")
        if self.ioi_heads not in ("auto", "paper", "discover"):
            raise ValueError(f"ioi_heads must be 'auto', 'paper' or 'discover', got {self.ioi_heads!r}")
        self.analysis  # noqa: B018 -- seed, dtype, basis, batch_size, n_boot: validated by SADSettings

    @property
    def analysis(self) -> SADSettings:
        """How each checkpoint's pairs are decomposed and summarised, as the pipeline's settings
        (``seed``, ``dtype``, ``basis``, ``batch_size``, ``n_boot``; the heads and pairs are the
        :class:`HeadSet`'s and the task's, not ``SADSettings.heads``/``selection``)."""
        return SADSettings(seed=self.seed, dtype=self.dtype, basis=self.basis, batch_size=self.batch_size,
                           n_boot=self.n_boot, n_boot_head=min(self.n_boot, 1000))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadSet:
    """Heads by role: ``roles[role] = ((layer, head), ...)``; ``circuit`` (IOI only) the
    :class:`~svfcheck.tasks.circuits.CircuitHead` table; ``scores`` what the identification
    measured (JSON), ``identified_at`` the step it was measured at (None: given)."""

    roles: dict[str, tuple[tuple[int, int], ...]]
    circuit: tuple | None = None
    scores: dict = field(default_factory=dict)
    identified_at: int | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "roles": {r: [list(h) for h in hs] for r, hs in self.roles.items()},
            "identified_at": self.identified_at,
            "scores": self.scores,
        }
        if self.circuit is not None:
            d["circuit"] = [
                {"layer": c.layer, "head": c.head, "role": c.role, "query": c.query, "key": c.key, "name": c.name}
                for c in self.circuit
            ]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HeadSet:
        """The inverse of :meth:`to_dict` (a head set handed from one sweep task to another)."""
        circuit = None
        if d.get("circuit") is not None:
            from ..tasks.circuits import CircuitHead

            circuit = tuple(CircuitHead(**c) for c in d["circuit"])
        roles = {r: tuple((int(l), int(h)) for l, h in hs) for r, hs in d["roles"].items()}
        return cls(roles, circuit, dict(d.get("scores") or {}), d.get("identified_at"))


def default_settings(task: str, **overrides) -> EmergenceSettings:
    """Sensible defaults per task: induction — structural pairs of the top-2 induction and
    previous-token heads on 32 sequences; text — previous-token pairs of the top-2 previous-token
    heads plus every other head's top-attended key on 16 windows of 64 bytes; ioi — the circuit
    table's labelled pairs on 32 prompts."""
    base = {"induction": EmergenceSettings(task="induction"),
            "text": EmergenceSettings(task="text", n_prompts=16, all_heads=True),
            "ioi": EmergenceSettings(task="ioi")}
    if task not in base:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return replace(base[task], **overrides)
