"""The decomposition within a memory budget (docs/math.md §4.5): which pairs run together.

With ``DecomposeOptions.memory_budget`` a decomposition runs in *rounds*. Each round is a set of
*units* — a layer's pairs, or those of a group of its heads sharing a key head, or of one head,
or of one head over a range of offsets — whose core entries (held in the
:class:`~svfcheck.real.svd_cache.SVDCache` while the round runs) plus the scratch of the units
running at once (one per worker) fit in the budget; the cache evicts tables to make room
(:meth:`~svfcheck.real.svd_cache.SVDCache.prepare` with ``room``). A unit's entries are counted
exactly (its pairs' distinct (head, Δ)), its scratch estimated from the route's array shapes
(:func:`scratch_bytes`). Splitting a layer by heads changes no number: every route works per
head and per (prompt, head) group, and the summed route's per-pair products are chunked within
each head (tested bit for bit); splitting one head by offsets, the last resort, regroups the
per-pair products of a head and can move a result by float rounding (docs/math.md §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture import Capture
from ..heads import LayerHeads, ModelHeads
from ..svd_cache import SVDCache
from .plan import Options, _route
from .rope import _pair_offsets
from .types import Pairs

__all__ = ["Unit", "Round", "plan_rounds", "scratch_bytes", "BudgetError"]

#: Margin on the scratch estimate: allocator slack and temporaries the formulas leave out
#: (checked against the measured peak in benchmarks/test_context_scaling.py).
_SLACK = 1.25


#: At most this many offset ranges per head: each piece recomputes the layer's projected tokens
#: and key sums, so a budget that needs more is refused rather than run at a crawl.
_MAX_PARTS = 16


class BudgetError(ValueError):
    """The budget cannot hold even the smallest unit of this decomposition; ``need``: the bytes
    that smallest unit needs (its cores and scratch)."""

    def __init__(self, message: str, need: int = 0):
        super().__init__(message)
        self.need = int(need)


@dataclass(frozen=True, eq=False)
class Unit:
    """Pairs decomposed together: ``idx`` (into ``pairs``), all of ``layer``; ``entries`` core
    entries they use (0 on the fast route); ``scratch`` the route's estimated working bytes."""

    layer: int
    idx: np.ndarray
    entries: int
    scratch: int


@dataclass(frozen=True, eq=False)
class Round:
    """Units run side by side, their cores held at once; ``room``: the bytes the cache's tables
    may hold while they run (the budget less the scratch of the units running at once)."""

    units: tuple[Unit, ...]
    room: int


def scratch_bytes(lh: LayerHeads, route: str, B: int, n: int, P: int, n_kv: int, dtype: torch.dtype) -> int:
    """Estimated bytes one unit's route allocates (docs/math.md §4.5): ``P`` pairs of prompts
    with ``B`` rows of ``n`` tokens, ``n_kv`` (prompt, key head) key sides. Every array of the
    route whose size grows with the input: the layer's projected tokens, the key sides ``N``
    (n × e·d_h each), each pair's row of attention, logits and their |.| (P × n), the per-pair
    R-vectors, the shared-basis sums (≤ n × n/24 × 2R per group) — times :data:`_SLACK`."""
    isz = torch.empty(0, dtype=dtype).element_size()
    dh, H, Hkv, D = lh.head_dim, lh.n_heads, lh.n_kv_heads, lh.d_model + int(lh.has_bias)
    tokens = B * n * (D + dh * (3 * H + 4 * Hkv)) * isz
    rows = P * n * (1 + 4 + 3 * isz)
    vecs = P * dh * 32 * isz + P * 96
    if route == "fast":
        return int(_SLACK * (tokens + 3 * B * H * n * n * isz + rows + vecs))
    if route == "per_key":
        chunk = min(P, max(1, 4_000_000 // (n * dh)))
        return int(_SLACK * (tokens + rows + vecs + 8 * chunk * n * dh * isz))
    e = dh + (0 if lh.rotary is None else lh.rotary.rotary_dim)
    keys = n_kv * n * (e * dh + e + 4 * dh) * isz
    groups = (n * 2 * (n // 24) * dh + min(P, 128) * 5 * dh * e) * isz
    return int(_SLACK * (tokens + keys + rows + vecs + groups))


def _unit(heads: ModelHeads, cap: Capture, pairs: Pairs, opts: Options, layer: int, idx: np.ndarray) -> Unit:
    lh = heads.layers[layer]
    route = _route(lh, opts)
    b = pairs.prompt[idx]
    B = len(np.unique(b))
    n = cap.token_mask.shape[1]
    n_kv = len(np.unique(b * lh.n_kv_heads + lh.kv_head(pairs.head[idx])))
    entries = 0
    if route != "fast":
        d, _ = _pair_offsets(cap.positions, cap.visible[layer], b, pairs.query_pos[idx], pairs.key_pos[idx],
                             opts.basis == "pair" and lh.rotary is not None)
        entries = len(np.unique(np.stack([pairs.head[idx], d], 1), axis=0))
    return Unit(layer, idx, entries, scratch_bytes(lh, route, B, n, len(idx), n_kv, opts.dtype))


def _split(heads: ModelHeads, cap: Capture, pairs: Pairs, opts: Options, layer: int, idx: np.ndarray,
           cost, budget: int, workers: int = 1) -> list[Unit]:
    """The layer's pairs ``idx`` as units that fit ``budget`` each: the whole layer, else groups
    of heads sharing a key head, else single heads, else one head's offsets in ranges. A layer
    that would fill a round alone (more than ``budget / workers``) is cut into its key-head
    groups when they are that small, so that a round still keeps every worker busy."""
    whole = _unit(heads, cap, pairs, opts, layer, idx)
    lh = heads.layers[layer]
    if cost(whole) <= budget // max(1, workers) or _route(lh, opts) == "fast":
        return [whole]
    h = pairs.head[idx]
    groups = [_unit(heads, cap, pairs, opts, layer, idx[lh.kv_head(h) == k]) for k in np.unique(lh.kv_head(h))]
    if len(groups) > 1 and all(cost(u) <= budget // max(1, workers) for u in groups):
        return groups
    if cost(whole) <= budget:
        return [whole]
    for units in (groups, [_unit(heads, cap, pairs, opts, layer, idx[h == k]) for k in np.unique(h)]):
        if all(cost(u) <= budget for u in units):
            return units
    out = []
    for u in units:  # one head each; too big ones split by offset ranges
        out += [u] if cost(u) <= budget else _by_offsets(heads, cap, pairs, opts, u, cost, budget)
    return out


def _by_offsets(heads: ModelHeads, cap: Capture, pairs: Pairs, opts: Options, u: Unit, cost, budget: int) -> list[Unit]:
    lh = heads.layers[u.layer]
    d, _ = _pair_offsets(cap.positions, cap.visible[u.layer], pairs.prompt[u.idx], pairs.query_pos[u.idx],
                         pairs.key_pos[u.idx], opts.basis == "pair" and lh.rotary is not None)
    offsets = np.unique(d)
    parts = 2
    while True:
        cuts = np.array_split(offsets, parts)
        units = [_unit(heads, cap, pairs, opts, u.layer, np.sort(u.idx[(d >= c[0]) & (d <= c[-1])])) for c in cuts if len(c)]
        if all(cost(x) <= budget for x in units):
            return units
        if parts >= min(len(offsets), _MAX_PARTS):
            need = max(cost(x) for x in units)
            raise BudgetError(f"a memory budget of {budget / 2**30:.3g} GB is too small for this decomposition: one head "
                              f"of layer {u.layer} cut into {parts} ranges of offsets still needs {need / 2**30:.3g} GB "
                              "per piece; raise the budget", need)
        parts *= 2


def plan_rounds(heads: ModelHeads, cap: Capture, pairs: Pairs, cache: SVDCache, opts: Options, budget: int,
                workers: int) -> list[Round]:
    """The rounds of a decomposition of ``pairs`` within ``budget`` bytes (see the module
    docstring): units in layer order, packed greedily while their entries plus the scratch of
    the ``workers`` largest units of the round fit. :class:`BudgetError` when a single entry
    with its scratch does not fit."""
    ctl = opts.rotations is not None

    def cost(u: Unit) -> int:
        return u.entries * cache.entry_bytes(u.layer, opts.dtype, ctl) + u.scratch

    units: list[Unit] = []
    for l in np.unique(pairs.layer):
        units += _split(heads, cap, pairs, opts, int(l), np.flatnonzero(pairs.layer == l), cost, budget, workers)
    rounds, cur = [], []

    def fits(us: list[Unit]) -> int:
        scr = sum(sorted((u.scratch for u in us), reverse=True)[:workers])
        return budget - scr - sum(cost(u) - u.scratch for u in us)

    for u in units:
        if cur and fits(cur + [u]) < 0:
            rounds.append(cur)
            cur = []
        cur.append(u)
    rounds.append(cur)
    return [Round(tuple(us), budget - sum(sorted((u.scratch for u in us), reverse=True)[:workers])) for us in rounds]
