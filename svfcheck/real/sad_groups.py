"""One batch of the SAD pipeline decomposed within the memory budget (docs/math.md §4.5).

:class:`_Runner` is what :func:`svfcheck.real.sad_step.decompose_batches` calls per batch. Without
a budget it is :func:`~svfcheck.real.decompose.decompose` as is. With one it decomposes the
batch's pairs in *layer groups* whose per-pair outputs take at most a quarter of the budget, each
group within what is left of it (rounds, :mod:`svfcheck.real.decompose.budget`) on the pipeline's
lean core cache (:func:`~svfcheck.real.svd_cache.pipeline_cache`, with the disk store of
:func:`~svfcheck.real.core_disk.default_disk`); it puts together only the fields the caller reads
(``StepOptions.keep``) and drops each group's captured attention once its layers are done. Every
pair's numbers are those of one call over the whole batch (a layer's pairs are decomposed
together either way; tested). A progress bar says how far it is and where the cores came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .capture import Capture
from .decompose import Decomposition, Pairs, decompose
from .decompose.budget import BudgetError
from .heads import ModelHeads
from .svd_cache import pipeline_cache

__all__ = ["output_bytes", "GB"]

GB = 2**30
#: Share of the budget one layer group's per-pair outputs may take; cores and scratch get the rest.
_OUT_SHARE = 0.25
_PAIR_FIELDS = ("prompt", "layer", "head", "query_pos", "key_pos")


def output_bytes(n_pairs: int, R: int) -> int:
    """Bytes of a decomposition's per-pair outputs (:class:`~svfcheck.real.decompose.Decomposition`:
    five (P, R) float64 arrays, about sixteen (P,) ones and each pair's key list)."""
    return n_pairs * ((5 * R + 16) * 8 + 160)


def _drop_attention(cap: Capture, layers) -> Capture:
    """``cap`` without the attention of ``layers`` (decomposed: no longer read)."""
    gone = set(int(l) for l in layers)
    return dataclasses.replace(cap, attn=tuple(None if l in gone else a for l, a in enumerate(cap.attn)))


class _Merged:
    """A batch's decomposition put together from its layer groups' (only the fields ``keep``)."""

    def __init__(self, pairs: Pairs, keep):
        self.pairs, self.keep, self.P = pairs, keep, len(pairs)
        self.cols: dict = {}
        self.max_err = 0.0
        self.basis = None

    def add(self, idx: np.ndarray, d: Decomposition) -> None:
        self.basis = d.basis
        self.max_err = max(self.max_err, d.max_reconstruction_error)
        for f in dataclasses.fields(Decomposition):
            name = f.name
            if name in ("pairs", "basis", "max_reconstruction_error") or (self.keep is not None and name not in self.keep):
                continue
            v = getattr(d, name)
            if v is None:
                self.cols[name] = None
            elif isinstance(v, tuple):
                col = self.cols.setdefault(name, [None] * self.P)
                for q, p in enumerate(idx.tolist()):
                    col[p] = v[q]
            else:
                if name not in self.cols:
                    self.cols[name] = np.empty((self.P, *v.shape[1:]), dtype=v.dtype)
                self.cols[name][idx] = v

    def result(self) -> Decomposition:
        kw = {f.name: None for f in dataclasses.fields(Decomposition)}
        kw.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in self.cols.items()})
        kw.update(pairs=self.pairs, basis=self.basis, max_reconstruction_error=self.max_err)
        return Decomposition(**kw)


class _Runner:
    """Decomposes the batches of one :func:`~svfcheck.real.sad_step.decompose_batches` call."""

    def __init__(self, heads: ModelHeads, options, dtype):
        self.heads, self.o, self.dtype = heads, options, dtype
        self.budget = None if options.memory_budget_gb is None else int(options.memory_budget_gb * GB)
        self.cache = None
        if self.budget is not None:
            from .core_disk import default_disk

            self.cache = pipeline_cache(heads, default_disk() if options.core_cache else None)
            self.start = dataclasses.replace(self.cache.stats)

    def _groups(self, pairs: Pairs) -> list[np.ndarray]:
        """The batch's pairs in layer groups (ascending layers) whose outputs fit their share."""
        R = self.heads.layers[0].head_dim
        groups, cur, n = [], [], 0
        for l in np.unique(pairs.layer):
            idx = np.flatnonzero(pairs.layer == l)
            if cur and output_bytes(n + len(idx), R) > _OUT_SHARE * self.budget:
                groups.append(np.concatenate(cur))
                cur, n = [], 0
            cur.append(idx)
            n += len(idx)
        groups.append(np.concatenate(cur))
        return groups

    def _bar(self, total: int, label: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"{label}: decomposing", unit="pair", leave=False, disable=not self.o.progress)

    def _note(self, bar, layer: int) -> None:
        s, s0 = self.cache.stats, self.start
        bar.set_postfix_str(f"layer {layer + 1}/{self.heads.n_layers} · cores {s.computed - s0.computed:,} computed, "
                            f"{s.memory - s0.memory:,} in memory, {s.disk - s0.disk:,} from disk", refresh=False)

    def __call__(self, box: list, pairs: Pairs, label: str) -> Decomposition:
        """The decomposition of ``pairs`` of the capture in ``box`` (a one-item list the capture
        is taken out of, so that its attention can go as the layers are done)."""
        cap: Capture = box.pop()
        o = self.o
        kw = dict(basis=o.basis, controls=True, seed=o.seed, dtype=self.dtype, threads=o.threads)
        if self.budget is None:
            return decompose(self.heads, cap, pairs, **kw)
        R = self.heads.layers[0].head_dim
        groups = self._groups(pairs)
        merged = None if len(groups) == 1 else _Merged(pairs, o.keep)
        with self._bar(len(pairs), label) as bar:
            for g in groups:
                sub = pairs if merged is None else Pairs.of(*(getattr(pairs, f)[g] for f in _PAIR_FIELDS))

                def step(idx, sub=sub):
                    self._note(bar, int(sub.layer[idx].max()) if len(idx) else 0)
                    bar.update(len(idx))

                out = output_bytes(len(g), R)
                try:
                    d = decompose(self.heads, cap, sub, cache=self.cache, memory_budget=max(1, self.budget - out),
                                  on_round=step, **kw)
                except BudgetError as e:  # say it in the user's terms: their budget, what took it
                    ls = np.unique(sub.layer)
                    where = f"layer {ls[0]}" if len(ls) == 1 else f"layers {ls[0]}-{ls[-1]}"
                    raise BudgetError(
                        f"a memory budget of {self.budget / GB:.3g} GB is too small for this analysis: the per-pair "
                        f"results of {where} ({len(g):,} pairs) take {out / GB:.3g} GB of it "
                        f"and the smallest piece of their decomposition needs {e.need / GB:.3g} GB more; raise the "
                        f"memory budget (--memory-budget, memory_budget_gb) to at least "
                        f"{1.25 * (out + e.need) / GB:.2g} GB", e.need) from None
                if merged is None:
                    return d
                merged.add(g, d)
                del d
                cap = _drop_attention(cap, np.unique(sub.layer))
        return merged.result()
