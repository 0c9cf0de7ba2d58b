"""Which pairs are analysed and which keys their queries see (docs/math.md §3.6, §3.13):
listing (:func:`top_attended_pairs`), validation against a capture, visible keys per pair."""

from __future__ import annotations

import numpy as np
import torch

from ...tasks.selection import top_keys
from ..capture import Capture
from ..heads import ModelHeads
from .types import Pairs


def top_attended_pairs(cap: Capture, layers=None, heads=None, skip_first: bool = True) -> Pairs:
    """Every real query's top-attended visible key (excluding position 0 when ``skip_first``)
    in the given layers/heads (docs/math.md §3.6), by the one rule
    :func:`svfcheck.tasks.selection.top_keys`. Queries with no eligible key, or seeing fewer
    than 2 keys, are skipped.

    Args:
        cap: a capture of B prompts of n tokens: per layer ``attn`` (B, H, n, n) and ``visible``
            (B, n, n), ``token_mask`` (B, n).
        layers: the layers to list (default: every layer).
        heads: the heads to list in each of them (default: every head).
        skip_first: never pick key position 0 (the attention sink).

    Returns:
        The P pairs, :class:`~svfcheck.real.decompose.Pairs` (arrays (P,)), by layer, head,
        prompt and query.
    """
    out = []
    L = cap.n_layers
    for l in range(L) if layers is None else layers:
        best, ok = top_keys(cap.attn[l], cap.visible[l][:, None], skip_first=skip_first)  # (B, H, n) each
        ok &= cap.token_mask[:, None]
        for h in range(best.shape[1]) if heads is None else heads:
            b, i = torch.nonzero(ok[:, h], as_tuple=True)
            out.append(np.stack([b.numpy(), np.full(len(b), l), np.full(len(b), h), i.numpy(), best[b, h, i].numpy()]))
    arr = np.concatenate(out, axis=1) if out else np.zeros((5, 0), dtype=np.int64)
    return Pairs.of(*arr)


def _validate(heads: ModelHeads, cap: Capture, pairs: Pairs) -> None:
    if cap.n_layers != heads.n_layers:
        raise ValueError(f"capture has {cap.n_layers} layers, heads {heads.n_layers}")
    B, n = cap.token_mask.shape
    if len(pairs) == 0:
        raise ValueError("no pairs to decompose")
    for name, arr, hi in (("prompt", pairs.prompt, B), ("query_pos", pairs.query_pos, n), ("key_pos", pairs.key_pos, n)):
        bad = (arr < 0) | (arr >= hi)
        if bad.any():
            raise IndexError(f"{name} {int(arr[bad][0])} out of range 0..{hi - 1}")
    for l in np.unique(pairs.layer):
        heads.layer(int(l))
        hs = pairs.head[pairs.layer == l]
        heads.check(int(l), int(hs.max()))
        heads.check(int(l), int(hs.min()))
    tm = cap.token_mask[pairs.prompt, pairs.query_pos]
    if not bool(tm.all()):
        raise ValueError("some query positions are padding tokens")
    for l in np.unique(pairs.layer):
        s = pairs.layer == l
        vis = cap.visible[int(l)][pairs.prompt[s], pairs.query_pos[s], pairs.key_pos[s]]
        if not bool(vis.all()):
            k = int(np.flatnonzero(~vis.numpy())[0])
            raise ValueError(
                f"pair (prompt {pairs.prompt[s][k]}, layer {l}, query {pairs.query_pos[s][k]}, key "
                f"{pairs.key_pos[s][k]}): the key is not visible to the query"
            )
        m = cap.visible[int(l)][pairs.prompt[s], pairs.query_pos[s]].sum(-1)
        if bool((m < 2).any()):
            raise ValueError("relative attention needs at least 2 visible keys; some queries see only 1")


def _visible_keys(cap: Capture, pairs: Pairs) -> tuple[list[np.ndarray], np.ndarray]:
    """Per pair, the key positions visible to its query (ascending), and their counts.

    Where a (layer, prompt) mask is a prefix run (:func:`_prefix_run`: causal attention, also
    padded) each pair's keys are a read-only view of one shared ``arange`` (tens of thousands
    of pairs per prompt: much cheaper than one array each); other masks (sliding windows,
    arbitrary) take their own array per pair."""
    keys: list = [None] * len(pairs)
    n_keys = np.zeros(len(pairs), dtype=np.int64)
    ar = np.arange(cap.token_mask.shape[1])
    ar.flags.writeable = False
    for l in np.unique(pairs.layer):
        sel_l = np.flatnonzero(pairs.layer == l)
        for b in np.unique(pairs.prompt[sel_l]):
            sel = sel_l[pairs.prompt[sel_l] == b]
            vis = cap.visible[int(l)][int(b)]
            run = _prefix_run(vis)
            if run is not None:
                s, cnt = run[0], run[1].numpy()
                for q, c in zip(sel.tolist(), cnt[pairs.query_pos[sel]].tolist()):
                    keys[q] = ar[s : s + c]
                n_keys[sel] = cnt[pairs.query_pos[sel]]
                continue
            rows = vis[pairs.query_pos[sel]].numpy()  # (p, n)
            r, c = np.nonzero(rows)
            cnt = rows.sum(1)
            for q, ks in zip(sel, np.split(c, np.cumsum(cnt)[:-1])):
                keys[q] = ks
            n_keys[sel] = cnt
    return keys, n_keys


def _prefix_run(vis: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """``(s, cnt)`` when every query i of the boolean mask ``vis`` (n_query, n_key) sees exactly
    the keys ``s .. s + cnt[i] − 1`` (causal attention, also with left padding; bidirectional
    with right padding), else ``None``."""
    n = vis.shape[-1]
    cnt = vis.sum(-1)
    seen = torch.nonzero(vis.any(0))
    s = int(seen[0]) if len(seen) else 0
    ar = torch.arange(n)
    if torch.equal(vis, (ar[None, :] >= s) & (ar[None, :] < s + cnt[:, None])):
        return s, cnt
    return None
