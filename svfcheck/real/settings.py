"""The settings of one SAD analysis, in one frozen, validated, serialisable object.

:class:`SADSettings` is what :func:`svfcheck.real.sad.analyze` and
:func:`svfcheck.real.pipeline.run_sad` take; the CLI, the gate and the report build one instead
of passing a dozen keywords. ``to_json``/``from_json`` round-trip it, and ``to_toml`` writes the
gate's ``[pairs]`` and ``[analysis]`` tables, which the gate reads back as the same settings.
The gate's spec parser builds these settings at pytest collection time, so this module
imports only the standard library (torch on demand, for :attr:`SADSettings.torch_dtype`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["SADSettings", "HEAD_MODES", "SELECTIONS", "BASES", "DTYPES", "DEFAULT_MEMORY_BUDGET_GB"]

HEAD_MODES = ("all", "paper", "discover")
#: The decomposition's default memory budget (docs/math.md §4.5), and the accepted range: below
#: 0.01 GB even a small model's smallest unit of work does not fit; above 4096 GB is no budget.
DEFAULT_MEMORY_BUDGET_GB = 2.0
MIN_MEMORY_BUDGET_GB, MAX_MEMORY_BUDGET_GB = 0.01, 4096.0
SELECTIONS = ("top", "threshold", "circuit")
BASES = ("pair", "zero")
DTYPES = ("float32", "float64")


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be a whole number {rng}; got {v!r}")


@dataclass(frozen=True)
class SADSettings:
    """What to analyse and how (everything but the model and the prompts).

    Args:
        heads: ``"all"``, ``"paper"`` (the published IOI table of ``circuit`` or the model's
            name), ``"discover"`` (IOI heads found on the prompts) or a tuple of
            ``(layer, head)`` / :class:`~svfcheck.tasks.circuits.CircuitHead`.
        selection: ``"top"`` (each query's top-attended non-first key), ``"threshold"``
            (attention ≥ 1/m) or ``"circuit"`` (a head table's IOI positions); ``None`` picks
            ``"circuit"`` for paper/discover/CircuitHead lists, else ``"top"``.
        circuit: head-table name for ``heads="paper"``.
        discover_top: heads per IOI role for ``heads="discover"``.
        seed: seeds the rotation controls and the bootstraps.
        dtype: ``"float32"``/``"float64"`` of the decomposition; ``None``: float64 without RoPE
            or QK-norm, else float32 (docs/math.md §3.15).
        basis: ``"pair"`` (Ω(Δ) of each pair's own offset) or ``"zero"`` (Ω(0), docs/math.md §3.10).
        batch_size: prompts per forward pass.
        n_boot: bootstrap resamples of the model summary; ``n_boot_head`` per head.
        memory_budget_gb: GB the decomposition may hold beyond the model, its captured
            activations and the per-pair results (its core tables and working arrays,
            docs/math.md §4.5), at any context length and number of prompts. It changes no
            result, so it is not part of ``sad.json``'s settings; a larger one keeps more
            cores in memory (fewer recomputed or read from disk). ``None`` (Python only, no spec
            form): no budget, every core held and none stored on disk.
    """

    heads: str | tuple = "all"
    selection: str | None = None
    circuit: str | None = None
    discover_top: int = 3
    seed: int = 0
    dtype: str | None = None
    basis: str = "pair"
    batch_size: int = 8
    n_boot: int = 10_000
    n_boot_head: int = 1_000
    memory_budget_gb: float | None = DEFAULT_MEMORY_BUDGET_GB

    def __post_init__(self) -> None:
        h = self.heads
        if isinstance(h, str):
            if h not in HEAD_MODES:
                raise ValueError(f"heads must be one of {HEAD_MODES} or a list of heads; got {h!r}")
        else:
            hs = tuple(x if hasattr(x, "layer") else tuple(int(v) for v in x) for x in h)
            if not hs:
                raise ValueError("heads is an empty list")
            object.__setattr__(self, "heads", hs)
        if self.selection is not None and self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS} or None; got {self.selection!r}")
        if type(self.dtype).__module__ == "torch" and str(self.dtype).startswith("torch."):  # a torch.dtype
            object.__setattr__(self, "dtype", str(self.dtype).replace("torch.", ""))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} or None; got {self.dtype!r}")
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}; got {self.basis!r}")
        _int("discover_top", self.discover_top, 1)
        _int("seed", self.seed, 0, 2**32 - 1)
        _int("batch_size", self.batch_size, 1)
        _int("n_boot", self.n_boot, 100)
        _int("n_boot_head", self.n_boot_head, 100)
        b = self.memory_budget_gb
        if b is None:
            return
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not MIN_MEMORY_BUDGET_GB <= b <= MAX_MEMORY_BUDGET_GB:
            raise ValueError(f"memory_budget_gb must be a number of GB in [{MIN_MEMORY_BUDGET_GB:g}, {MAX_MEMORY_BUDGET_GB:g}]; "
                             f"got {b!r}")
        object.__setattr__(self, "memory_budget_gb", float(b))

    @property
    def torch_dtype(self):
        """``torch.float32``/``torch.float64``, or None (the pipeline's default)."""
        if self.dtype is None:
            return None
        import torch

        return getattr(torch, self.dtype)

    def replace(self, **changes: Any) -> SADSettings:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.heads, str):
            d["heads"] = [list(h) if not hasattr(h, "layer") else {"layer": h.layer, "head": h.head, "role": h.role,
                                                                     "query": h.query, "key": h.key, "name": h.name}
                          for h in self.heads]
        return d

    def to_toml(self) -> str:
        """The ``[pairs]`` and ``[analysis]`` tables of an analysis spec (``analyses/README.md``)
        that :func:`svfcheck.gate.spec.load_spec` reads back as these settings
        (``Spec.settings``). ``ValueError`` for what a spec cannot say: a head table of
        :class:`~svfcheck.tasks.circuits.CircuitHead` rows, or ``n_boot_head`` other than the
        gate's ``min(n_boot, 1000)``."""
        if not isinstance(self.heads, str) and any(hasattr(h, "layer") for h in self.heads):
            raise ValueError("a spec's heads are a mode or [layer, head] pairs; a CircuitHead table has no TOML form")
        if self.memory_budget_gb is None:
            raise ValueError("a spec always has a memory budget (memory_budget_gb); these settings have none")
        if self.n_boot_head != min(self.n_boot, 1000):
            raise ValueError(f"a spec sets per-head bootstraps to min(n_boot, 1000) = {min(self.n_boot, 1000)}; "
                             f"these settings have n_boot_head = {self.n_boot_head}")
        heads = f'"{self.heads}"' if isinstance(self.heads, str) else "[" + ", ".join(f"[{l}, {h}]" for l, h in self.heads) + "]"
        pairs = [f"heads = {heads}"]
        pairs += [f'{k} = "{v}"' for k, v in (("selection", self.selection), ("circuit", self.circuit)) if v is not None]
        pairs.append(f"discover_top = {self.discover_top}")
        analysis = ([f'dtype = "{self.dtype}"'] if self.dtype is not None else []) + [
            f'basis = "{self.basis}"', f"seed = {self.seed}", f"n_boot = {self.n_boot}", f"batch_size = {self.batch_size}",
            f"memory_budget_gb = {self.memory_budget_gb!r}"]
        return "[pairs]\n" + "\n".join(pairs) + "\n\n[analysis]\n" + "\n".join(analysis) + "\n"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SADSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SAD settings {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("heads"), list):
            from ..tasks.circuits import CircuitHead

            d["heads"] = tuple(CircuitHead(**h) if isinstance(h, dict) else tuple(h) for h in d["heads"])
        return cls(**d)
