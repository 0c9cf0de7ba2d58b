"""The fixed prompt set of SAD over training (identical at every checkpoint): induction
sequences of the run's task, IOI prompts, or held-out windows of the offline corpus."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .series import CheckpointSeries
from .settings import EmergenceSettings

__all__ = ["build_prompts"]


@dataclass(frozen=True)
class _Prompt:
    ids: tuple[int, ...]
    meta: dict  # induction: s1, L, d, end; ioi: positions


def _induction_task(series: CheckpointSeries, vocab_size: int):
    from .tasks import InductionTask

    cfg = series.metadata.get("config") if series.metadata else None
    if cfg and cfg.get("task", {}).get("kind") == "induction":
        t = dict(cfg["task"])
        t.pop("kind")
        return InductionTask(**t)
    n = min(vocab_size - 1, 64)
    if n < 8:
        raise ValueError(f"vocabulary of {vocab_size} tokens is too small for the induction task (need >= 9)")
    return InductionTask(n_symbols=n, min_len=4, max_len=min(12, n))


def build_prompts(settings: EmergenceSettings, tokenizer, series: CheckpointSeries, vocab_size: int) -> list[_Prompt]:
    """The fixed prompt set of ``settings`` (identical for every checkpoint)."""
    if settings.task == "induction":
        from .tasks import step_generator

        task = _induction_task(series, vocab_size)
        b = task.sample(settings.n_prompts, step_generator(settings.prompt_seed, 0))
        first = b.score_mask.float().argmax(dim=1)  # S + 1: first token of the second copy
        out = []
        for r in range(settings.n_prompts):
            L, d, s1 = int(b.lengths[r]), int(b.distances[r]), int(first[r])
            out.append(_Prompt(tuple(int(x) for x in b.input_ids[r]), {"s1": s1, "L": L, "d": d}))
        return out
    if settings.task == "ioi":
        from ..tasks.ioi import generate_ioi_prompts

        ps = generate_ioi_prompts(tokenizer, settings.n_prompts, seed=settings.prompt_seed, min_names=4)
        return [_Prompt(tuple(int(t) for t in p.token_ids), {"positions": dict(p.positions)}) for p in ps]
    from ..tasks.prompts import text_prompts
    from .corpus import load_corpus

    _, val = load_corpus().split(0.1)
    text = bytes(val.tolist()).decode("utf-8", errors="ignore")
    rng = np.random.default_rng(settings.prompt_seed)
    ps = text_prompts(tokenizer, text, settings.n_prompts * 4, settings.text_tokens)
    pick = sorted(rng.choice(len(ps), size=settings.n_prompts, replace=False).tolist())
    return [_Prompt(ps[i].token_ids, {}) for i in pick]
