"""The SAD pipeline's per-batch step: capture → select pairs → decompose, written once.

:func:`decompose_batches` is the loop that :func:`svfcheck.real.sad.analyze` (one model) and
:func:`svfcheck.emergence.sad_sweep.sad_over_training` (every checkpoint of a series) share:
for each padded batch it captures the model's activations (or takes a capture made earlier,
e.g. by head discovery), asks the caller's ``select`` for the batch's pairs, decomposes them
exactly with both rotation controls (:func:`svfcheck.real.decompose.decompose`) and hands a
:class:`BatchSAD` to the caller's ``on_batch``, which keeps what it needs (its own per-pair
columns, examples); the maximum reconstruction error and the time spent are returned. With a
memory budget (``StepOptions.memory_budget_gb``, docs/math.md §4.5) each batch is decomposed
by :mod:`svfcheck.real.sad_groups` on the pipeline's lean core cache, in layer groups and
rounds that fit, with the persistent core cache of docs/math.md §4.6 and a progress bar.

:func:`default_dtype` is the decomposition dtype when none is asked for (docs/math.md §3.15).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .capture import Capture, capture
from .decompose import Decomposition, Pairs
from .heads import ModelHeads
from .sad_groups import _Runner
from .threads import single_thread
from ..tasks.selection import Positions, discover_heads

__all__ = ["default_dtype", "StepOptions", "BatchSAD", "StepTotals", "decompose_batches", "discover_on_batches"]

Batch = tuple[int, torch.Tensor, torch.Tensor]  # (index of the batch's first prompt, input_ids, attention_mask)
SelectFn = Callable[[int, torch.Tensor, torch.Tensor, Capture], "tuple[Pairs, Any] | None"]


def default_dtype(heads: ModelHeads) -> torch.dtype:
    """float64 when no layer has RoPE or QK-norm (the fast route is cheap), else float32."""
    return torch.float64 if all(lh.rotary is None and not lh.qk_norm for lh in heads.layers) else torch.float32


@dataclass(frozen=True)
class StepOptions:
    """How each batch's pairs are decomposed (always with both rotation controls).

    ``dtype`` None: :func:`default_dtype`. ``threads``: layers side by side
    (:func:`~svfcheck.real.decompose.decompose`). ``single_thread``: run the decomposition on one
    intra-op thread (:func:`~svfcheck.real.threads.single_thread`). ``memory_budget_gb``: the
    decomposition's memory budget (docs/math.md §4.5; ``None``: unbounded, as
    :func:`~svfcheck.real.decompose.decompose` alone). ``core_cache``: with a budget, read and
    write core entries on disk (:func:`~svfcheck.real.core_disk.default_disk`, docs/math.md §4.6).
    ``keep``: the :class:`~svfcheck.real.decompose.Decomposition` fields the caller reads
    (``None``: all); when a batch is decomposed in layer groups only these are put together,
    the others are ``None``. ``progress``: a progress bar per batch."""

    basis: str = "pair"
    seed: int = 0
    dtype: torch.dtype | None = None
    threads: int | None = None
    single_thread: bool = False
    memory_budget_gb: float | None = None
    core_cache: bool = True
    keep: tuple[str, ...] | None = None
    progress: bool = False

    @classmethod
    def of(cls, settings, *, threads: int | None = None, single_thread: bool = False, **kw: Any) -> StepOptions:
        """The step options of :class:`~svfcheck.real.settings.SADSettings` ``settings``."""
        return cls(basis=settings.basis, seed=settings.seed, dtype=settings.torch_dtype, threads=threads,
                   single_thread=single_thread, memory_budget_gb=settings.memory_budget_gb, **kw)


@dataclass(frozen=True, eq=False)
class BatchSAD:
    """One batch's result: ``pairs`` (``pairs.prompt`` is the row in the batch; add ``start``
    for the prompt's index), the ``payload`` ``select`` returned with them (e.g. roles),
    and their :class:`~svfcheck.real.decompose.Decomposition`."""

    start: int
    ids: torch.Tensor
    mask: torch.Tensor
    pairs: Pairs
    payload: Any
    decomposition: Decomposition


@dataclass
class StepTotals:
    """Over all batches: the largest reconstruction error, pairs decomposed, and seconds in the
    forward passes (``forward_s``) and in selection, decomposition and ``on_batch``
    (``decompose_s``)."""

    max_reconstruction_error: float = 0.0
    n_pairs: int = 0
    forward_s: float = 0.0
    decompose_s: float = 0.0


def decompose_batches(
    model: torch.nn.Module,
    heads: ModelHeads,
    batches: Iterable[Batch],
    select: SelectFn,
    on_batch: Callable[[BatchSAD], None],
    options: StepOptions,
    *,
    captures: dict[int, Capture] | None = None,
) -> StepTotals:
    """Capture, select and decompose every batch; ``on_batch`` gets each non-empty result.

    Args:
        model, heads: the model and its :func:`~svfcheck.real.heads.cached_heads`.
        batches: ``(start, input_ids, attention_mask)`` as from
            :func:`~svfcheck.real.capture.pad_batches`.
        select: ``select(start, input_ids, attention_mask, capture)`` → ``(Pairs, payload)``
            or None when the batch has no pairs (skipped).
        on_batch: called with each batch's :class:`BatchSAD`, in batch order.
        options: :class:`StepOptions`.
        captures: captures made earlier, by ``start``; each is used instead of a forward pass
            and removed from the dict (so its memory goes with the batch).
    """
    dtype = default_dtype(heads) if options.dtype is None else options.dtype
    totals = StepTotals()
    run = _Runner(heads, options, dtype)
    for start, ids, mask in batches:
        t0 = time.perf_counter()
        cap = captures.pop(start) if captures and start in captures else capture(model, ids, mask, heads=heads)
        totals.forward_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        sel = select(start, ids, mask, cap)
        if sel is None:
            continue
        pairs, payload = sel
        box = [cap]
        del cap  # the runner drops each layer group's attention once decomposed
        with single_thread() if options.single_thread else contextlib.nullcontext():
            d = run(box, pairs, f"prompts {start}-{start + ids.shape[0] - 1}")
        totals.max_reconstruction_error = max(totals.max_reconstruction_error, d.max_reconstruction_error)
        totals.n_pairs += len(pairs)
        on_batch(BatchSAD(start, ids, mask, pairs, payload, d))
        totals.decompose_s += time.perf_counter() - t0
    return totals


def discover_on_batches(model, heads: ModelHeads, batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                        positions: list[dict[str, int]], top: int, captures: dict[int, Capture] | None = None) -> dict:
    """IOI heads found by attention pattern (:func:`svfcheck.tasks.selection.discover_heads`)
    on the prompts of ``batches``, one forward pass per batch.

    Args:
        batches: ``(start, input_ids, attention_mask)`` as from
            :func:`~svfcheck.real.capture.pad_batches`, in prompt order.
        positions: each prompt's labelled IOI positions, in the same order.
        top: heads kept per role.
        captures: when given, each batch's capture is stored under its ``start`` so the SAD
            pass (:func:`decompose_batches`) reuses it instead of a second forward pass.
    Returns:
        ``{role: (HeadScore, ...)}``.
    """
    attns, vis = [], []
    for s, ids, mask in batches:
        cap = capture(model, ids, mask, heads=heads)
        if captures is not None:
            captures[s] = cap
        for b in range(ids.shape[0]):
            a, v = cap.prompt_views(b)
            attns.append(a)
            vis.append(v)
    return discover_heads(attns, [Positions(p) for p in positions], vis, top=top)
