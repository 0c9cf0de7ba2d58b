"""One checkpoint of SAD over training: the fixed prompts through the model, the task's pairs
(:mod:`svfcheck.emergence.pairs`) decomposed exactly with both rotation controls by the
pipeline's shared step (:func:`svfcheck.real.sad_step.decompose_batches`, on one intra-op
thread), then the checkpoint's summaries (:mod:`svfcheck.emergence.summaries`) and the Fig. 8
examples."""

from __future__ import annotations

import time

import numpy as np

from ..stats import json_float
from .pairs import _pairs_for_prompt
from .prompts import _Prompt
from .settings import EmergenceSettings, HeadSet
from .summaries import _checkpoint_summary

__all__: list[str] = []


def _analyze_checkpoint(loaded, settings: EmergenceSettings, heads: HeadSet, prompts: list[_Prompt],
                        examples: list[tuple[str, int, int]], timing: dict) -> dict:
    """Decompose every selected pair at one checkpoint; summaries overall and per role.

    ``examples``: (role, layer, head) whose last pair in prompt 0 is kept for Fig. 8;
    ``timing`` receives ``forward_s``, ``decompose_s`` and ``stats_s``."""
    from ..real.capture import pad_batches, pad_id
    from ..real.decompose import Pairs
    from ..real.heads import cached_heads
    from ..real.sad_step import BatchSAD, StepOptions, decompose_batches, default_dtype

    model = loaded.model
    mh = cached_heads(model)
    L, H = mh.n_layers, mh.layers[0].n_heads
    options = StepOptions.of(settings.analysis, single_thread=True)
    dtype = default_dtype(mh) if options.dtype is None else options.dtype
    every = [(l, h) for l in range(L) for h in range(H)]
    cols: dict[str, list] = {k: [] for k in ("role", "prompt", "layer", "head", "query", "key", "attention",
                                              "s_svd", "s_rotated", "s_paper_control", "k", "k_rotated")}
    ex_out: dict[str, dict] = {}

    def select(s, ids, mask, cap):
        rows = []  # (role, batch row, layer, head, query, key)
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            attn = [cap.attn[l][b, :, :n, :n] for l in range(L)]
            vis = [cap.visible[l][b, :n, :n] for l in range(L)]
            rows += _pairs_for_prompt(settings, heads, prompts[s + b], attn, vis, n, b, every)
        if not rows:
            return None
        arr = np.array([r[1:] for r in rows], dtype=np.int64)
        return Pairs.of(arr[:, 2], arr[:, 0], arr[:, 1], arr[:, 3], arr[:, 4]), rows

    def collect(r: BatchSAD):
        s, pairs, rows, d = r.start, r.pairs, r.payload, r.decomposition
        cols["role"] += [x[0] for x in rows]
        cols["prompt"].append(pairs.prompt + s)
        cols["layer"].append(pairs.layer)
        cols["head"].append(pairs.head)
        cols["query"].append(pairs.query_pos)
        cols["key"].append(pairs.key_pos)
        cols["attention"].append(d.attention)
        cols["s_svd"].append(d.rolls_tovee)
        cols["s_rotated"].append(d.rolls_tovee_rotated)
        cols["s_paper_control"].append(d.rolls_tovee_paper_control)
        cols["k"].append(d.k)
        cols["k_rotated"].append(d.k_rotated)
        _collect_examples(ex_out, examples, rows, s, d)

    batches = pad_batches([p.ids for p in prompts], settings.batch_size, pad_id(loaded.tokenizer))
    totals = decompose_batches(model, mh, batches, select, collect, options)
    if not cols["layer"]:
        raise ValueError("no pairs were selected at this checkpoint (prompts too short for the heads?)")
    t0 = time.perf_counter()
    summ = _checkpoint_summary(cols, settings, heads)
    timing.update({"forward_s": totals.forward_s, "decompose_s": totals.decompose_s,
                   "stats_s": time.perf_counter() - t0})
    return {"summary": summ["summary"], "per_head": summ["per_head"], "examples": ex_out,
            "n_dropped": summ["n_dropped"], "max_reconstruction_error": totals.max_reconstruction_error,
            "dtype": str(dtype).replace("torch.", ""), "pairs": summ["pairs"]}


def _collect_examples(ex_out: dict, examples, rows, s: int, d) -> None:
    """Fig. 8: the last pair of each example head in prompt 0 (``rows`` of the batch starting
    at prompt ``s``, ``d`` their decomposition)."""
    for p, r in enumerate(rows):
        key = f"{r[0]}:{r[1]}.{r[2]}"
        if (r[0], r[1], r[2]) in examples and r[3] + s == 0:
            ex_out[key] = {"role": r[0], "layer": r[1], "head": r[2], "prompt": int(r[3] + s),
                           "query": r[4], "key": r[5], "attention": json_float(d.attention[p]),
                           "relative_attention": json_float(d.relative_attention[p]),
                           "contributions": [json_float(x) for x in d.contributions[p]],
                           "contributions_rotated": [json_float(x) for x in d.contributions_rotated[p]],
                           "k": int(d.k[p]), "k_rotated": int(d.k_rotated[p]),
                           "rolls_tovee": json_float(d.rolls_tovee[p]),
                           "rolls_tovee_rotated": json_float(d.rolls_tovee_rotated[p])}
