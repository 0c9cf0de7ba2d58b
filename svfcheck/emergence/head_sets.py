"""Which heads SAD over training follows: chosen once, by attention pattern, never by index.

:func:`identify_heads` measures them at one checkpoint (the final one): induction /
previous-token heads by :func:`svfcheck.emergence.heads.head_scores`; IOI heads from the
paper's table (:func:`svfcheck.tasks.circuits.paper_circuit`) or, without a table,
:func:`svfcheck.tasks.selection.discover_heads`; text: previous-token heads by mean attention
``i → i-1``. :func:`_heads_from_arg` turns explicitly given heads into a :class:`HeadSet`.
"""

from __future__ import annotations

import numpy as np
import torch

from .prompts import _induction_task
from .series import CheckpointSeries
from .settings import INDUCTION, PREVIOUS_TOKEN, EmergenceSettings, HeadSet

__all__ = ["identify_heads"]


def _top(a: np.ndarray, k: int) -> tuple[tuple[int, int], ...]:
    idx = np.argsort(-a, axis=None, kind="stable")[:k]
    return tuple((int(i // a.shape[1]), int(i % a.shape[1])) for i in idx)


def identify_heads(loaded, settings: EmergenceSettings, series: CheckpointSeries, prompts, step: int | None = None) -> HeadSet:
    """Heads by role from the attention pattern of ``loaded`` (module docstring, point 2)."""
    model = loaded.model
    k = settings.heads_per_role
    if settings.task == "induction":
        from .heads import head_scores

        task = _induction_task(series, model.config.vocab_size)
        hs = head_scores(model, task, n_sequences=settings.head_sequences, seed=settings.head_seed)
        return HeadSet(
            {INDUCTION: _top(hs.induction, k), PREVIOUS_TOKEN: _top(hs.previous_token, k)},
            scores={"induction": np.round(hs.induction, 5).tolist(),
                    "previous_token": np.round(hs.previous_token, 5).tolist()},
            identified_at=step,
        )
    from ..real.capture import capture, pad_batches, pad_id
    from ..real.sad_step import discover_on_batches
    from ..real.heads import cached_heads

    mh = cached_heads(model)
    pad = pad_id(loaded.tokenizer)
    if settings.task == "ioi":
        from ..tasks.circuits import PAPER_CIRCUITS, paper_circuit
        from ..tasks.selection import discovered_circuit, validate_heads

        name = settings.circuit or (series.name if series.name in PAPER_CIRCUITS else None)
        if settings.ioi_heads == "paper" and name is None:
            raise ValueError(
                f"no paper head table for series {series.name!r}; give circuit= one of {sorted(PAPER_CIRCUITS)} "
                "or use ioi_heads='discover'"
            )
        if settings.ioi_heads == "discover":
            name = None
        if name is not None:
            try:
                table = paper_circuit(name, model.config)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
            validate_heads(table, mh.n_layers, mh.layers[0].n_heads)
            scores: dict = {"source": f"paper table {name}"}
            at = None
        else:
            batches = pad_batches([p.ids for p in prompts], settings.batch_size, pad)
            found = discover_on_batches(model, mh, batches, [p.meta["positions"] for p in prompts], k)
            table = discovered_circuit(found)
            scores = {r: [{"layer": h.layer, "head": h.head, "score": h.score, "uniform": h.uniform} for h in hs]
                      for r, hs in found.items()}
            at = step
        roles: dict[str, list] = {}
        for c in table:
            roles.setdefault(c.role, [])
            if (c.layer, c.head) not in roles[c.role]:
                roles[c.role].append((c.layer, c.head))
        return HeadSet({r: tuple(v) for r, v in roles.items()}, circuit=tuple(table), scores=scores, identified_at=at)
    # text: previous-token heads by mean attention i -> i-1 on the prompts
    acc = torch.zeros(mh.n_layers, mh.layers[0].n_heads, dtype=torch.float64)
    cnt = 0
    for _, ids, mask in pad_batches([p.ids for p in prompts], settings.batch_size, pad):
        cap = capture(model, ids, mask, heads=mh)
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            q = torch.arange(2, n)
            for l in range(mh.n_layers):
                acc[l] += cap.attn[l][b][:, q, q - 1].double().sum(-1)
            cnt += len(q)
    prev = (acc / max(cnt, 1)).numpy()
    return HeadSet({PREVIOUS_TOKEN: _top(prev, k)}, scores={"previous_token": np.round(prev, 5).tolist()},
                   identified_at=step)


def _heads_from_arg(heads, settings: EmergenceSettings) -> HeadSet | None:
    if heads is None or isinstance(heads, HeadSet):
        return heads
    if isinstance(heads, dict):
        roles = {}
        for r, hl in heads.items():
            lst = [tuple(int(v) for v in h) for h in hl]
            if not lst or any(len(h) != 2 for h in lst):
                raise ValueError(f"heads for role {r!r} must be a non-empty list of (layer, head), got {hl!r}")
            roles[str(r)] = tuple(lst)
        if settings.task == "ioi" and settings.selection == "task":
            raise ValueError("IOI with selection='task' needs a circuit table (CircuitHead list), not a role dict")
        return HeadSet(roles)
    hl = list(heads)
    if hl and all(hasattr(h, "query") for h in hl):
        roles: dict[str, list] = {}
        for c in hl:
            roles.setdefault(c.role, []).append((c.layer, c.head))
        return HeadSet({r: tuple(dict.fromkeys(v)) for r, v in roles.items()}, circuit=tuple(hl))
    raise ValueError("heads must be a HeadSet, a dict role -> [(layer, head)], or a list of CircuitHead")
