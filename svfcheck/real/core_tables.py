"""The core tables of :class:`~svfcheck.real.svd_cache.SVDCache` (docs/math.md §4.3, §4.5): one
layer's core SVD entries over a contiguous offset range (:class:`_CoreTable`, with the bytes it
holds), the requests :meth:`~svfcheck.real.svd_cache.SVDCache.prepare` takes
(:class:`CoreRequest`, normalised as :class:`_Req` and merged per table by :func:`_merge`), and
the cache's counters (:class:`CoreStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["CoreRequest", "CoreStats"]


@dataclass(eq=False)
class _CoreTable:
    """One layer's core SVDs over the contiguous offset range ``lo .. lo + T − 1``, in the table's
    store dtype (float64; a lean cache's: the dtype asked for), head-major (H, T, ...) so that one
    head's rows are contiguous. Only the (head, Δ) entries marked in ``filled`` (H, T) have been
    computed (or read from disk); the others are allocated (untouched pages cost no memory) and
    never read. ``conv``: per other dtype, the converted copies and the entries they hold;
    ``ctl``: per dtype, ``[key, basis-control table F̂, entries held]``."""

    lo: int
    Ut: torch.Tensor
    S: torch.Tensor
    Vt: torch.Tensor
    F: torch.Tensor
    filled: torch.Tensor
    conv: dict
    ctl: dict

    @property
    def T(self) -> int:
        return self.S.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.S.dtype

    def arrays(self) -> tuple:
        return (self.Ut, self.S, self.Vt, self.F)

    def held_bytes(self) -> int:
        """Bytes of the entries held (computed rows of every array, copy and control table):
        what the table costs in memory, since untouched rows are never paged in."""
        n = int(self.filled.sum())
        held = n * _row_bytes(self.arrays())
        for arrays, have in self.conv.values():
            held += int(have.sum()) * _row_bytes(arrays)
        for _, Fh, have in self.ctl.values():
            held += int(have.sum()) * _row_bytes((Fh,))
        return held


def _row_bytes(arrays) -> int:
    """Bytes of one (head, Δ) row over head-major (H, T, ...) arrays."""
    return sum(a[0, 0].numel() * a.element_size() for a in arrays)


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    """``dst.flat[rows] = src.flat[rows]`` over the (head, Δ) entries of head-major tables
    (H, T, ...), converting the dtype: only those rows' pages are touched."""
    n = dst.shape[0] * dst.shape[1]
    dst.view(n, -1).index_copy_(0, rows, src.reshape(n, -1).index_select(0, rows).to(dst.dtype))


class CoreRequest(NamedTuple):
    """One layer's core entries for :meth:`SVDCache.prepare`, in the argument order of
    :meth:`SVDCache.core_lookup` (a plain tuple in that order works too)."""

    layer: int
    deltas: np.ndarray  # (n,) offsets Δ, one entry each
    dtype: torch.dtype
    heads: np.ndarray  # (n,) the head of each entry
    span: tuple | None  # (lo, hi): an offset range to allocate (not compute), or None
    control: tuple | None  # (key, Q) of the basis-control table, or None


@dataclass
class CoreStats:
    """Where the entries a cache served came from (counted by :meth:`SVDCache.prepare`):
    ``computed`` here, already held in ``memory``, read from ``disk``; ``evicted``: entries
    dropped to stay within a ``room``; ``peak_bytes``: the most bytes held after a prepare."""

    computed: int = 0
    memory: int = 0
    disk: int = 0
    evicted: int = 0
    peak_bytes: int = 0


class _Req(NamedTuple):
    """A normalised request: one entry per (heads[i], deltas[i]); ``span`` already merged."""

    layer: int
    hs: np.ndarray
    ds: np.ndarray
    span: tuple | None
    dtype: torch.dtype
    control: tuple | None


def _merge(reqs: list[_Req], key) -> list[_Req]:
    """One request per table (``key(layer, dtype)``): units of one layer in one round share a
    table, which must be grown once before any of its entries are computed."""
    out: dict = {}
    for r in reqs:
        k = key(r.layer, r.dtype)
        if k not in out:
            out[k] = r
            continue
        o = out[k]
        span = o.span if r.span is None else r.span if o.span is None else (min(o.span[0], r.span[0]), max(o.span[1], r.span[1]))
        out[k] = _Req(o.layer, np.concatenate([o.hs, r.hs]), np.concatenate([o.ds, r.ds]), span, o.dtype,
                      o.control if o.control is not None else r.control)
    return list(out.values())
