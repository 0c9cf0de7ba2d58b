"""The summed route's layout of a layer's pairs (docs/math.md §4.4): head-major, then by prompt
and query, so that every head's pairs and every (prompt, head) group are contiguous runs —
the products with a head's own matrices are one GEMM per head on views, and the compiled
loops run once for the layer over the tables' flat (head·T + row) rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .plan import LayerPlan


@dataclass(frozen=True, eq=False)
class PairOrder:
    """A layer's P pairs in the summed route's order; every array (P,) int64."""

    ii: np.ndarray  # the pairs' indices (into ``pairs`` and the output rows), in this order
    b: np.ndarray  # prompt
    h: np.ndarray  # head
    i: np.ndarray  # query position
    j: np.ndarray  # key position
    g: np.ndarray  # kv head
    sl: np.ndarray  # each pair's row in its head's table
    rows: np.ndarray  # ... and in the flat (H·T, ...) tables, read in place by the compiled loops
    heads_at: list  # [(head, start, stop)]: each head's run

    def __len__(self) -> int:
        return len(self.ii)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """``(b, h, i, j, g)`` as tensors (sharing the arrays' memory), for indexing."""
        return tuple(torch.as_tensor(x) for x in (self.b, self.h, self.i, self.j, self.g))


def _pair_order(plan: LayerPlan) -> PairOrder:
    pairs, idx = plan.pairs, plan.idx
    T = plan.cached.tables[1].shape[1]
    ii = idx[np.lexsort((pairs.query_pos[idx], pairs.prompt[idx], pairs.head[idx]))]
    h = pairs.head[ii]
    sl = plan.cached.slot[ii]
    cut = np.flatnonzero(np.diff(h)) + 1
    heads_at = [(int(h[a]), int(a), int(z)) for a, z in zip(np.r_[0, cut], np.r_[cut, len(ii)])]
    g = plan.cached.factors.kv_index.numpy()[h]
    return PairOrder(ii, pairs.prompt[ii], h, pairs.query_pos[ii], pairs.key_pos[ii], g, sl, h * T + sl, heads_at)
