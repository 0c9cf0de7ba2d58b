"""Training data for the emergence runs: a synthetic induction task and a byte-level text task.

**Induction** (:class:`InductionTask`). A sequence is
``[BOS] p_1..p_P r_1..r_L g_1..g_G r_1..r_L f_1..f_M``: a random prefix of
``P ∈ [0, max_prefix]`` tokens, the block, a random gap of ``G ∈ [0, max_gap]`` tokens, the block
again, filler. The prefix and gap (both 0 by default) move the copies to random absolute
positions and random distances apart, which defeats heads that read tokens from fixed
absolute or relative positions (a shortcut a 2-layer GPT-2 with learned positions finds on
the plain task); with them the induction circuit is needed but forms much more slowly (see
:mod:`svfcheck.emergence.train`). The block is
``L`` random tokens from ids ``1..n_symbols`` (prefix and block tokens are all distinct: a
random partial permutation; ``distinct=False`` draws with replacement); the filler pads to
the fixed context ``1 + max_prefix + 2·max_len + max_gap``. ``L`` is
drawn per sequence from ``[min_len, max_len]`` **(choice**: a varying ``L`` makes "copy the
token ``L`` back" useless, so only content-based induction — find the earlier occurrence of the
current token and copy its successor — solves the task). Scored predictions: the second-copy
tokens ``r_2..r_L`` (predicted at positions ``S+1..S+L-1``, ``S = P+L+G``); ``r_1`` of the second copy is not
scored because nothing marks where the first copy ends. With distinct block tokens the
successor of every token is unique, so a perfect induction circuit scores accuracy 1 **(choice**:
with repeats inside the block ≈30 % of the targets would be ambiguous). Chance accuracy is ``1/n_symbols``
(``1/vocab`` for logits over the whole vocabulary).

**Text** (:class:`TextTask`). Random windows of ``context - 1`` bytes of the offline corpus
(:mod:`svfcheck.emergence.corpus`) with ``<bos>`` prepended; the last ``val_fraction`` of the
corpus is held out for evaluation (fixed, evenly spaced windows).

Batches are pure functions of ``(seed, step)`` (a fresh ``np.random.Generator`` per call), so an
interrupted run that resumes at step ``N`` sees exactly the batches an uninterrupted one sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._validate import is_int as _is_int
from .corpus import BYTE_OFFSET, CHAR_ALPHABET, load_corpus

__all__ = [
    "InductionBatch",
    "InductionTask",
    "TextTask",
    "induction_metrics",
    "evaluate_induction",
    "evaluate_lm_loss",
    "step_generator",
    "repeated_sequences",
]

_EVAL_STREAM = 2**62  # stream of the held-out data (training step s uses stream s)


def step_generator(seed: int, stream: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, stream)`` — numpy's PCG64 seeded with the
    pair through ``SeedSequence``, so distinct pairs give independent streams (torch's CPU
    generator keeps only the low 32 bits of a seed, which would make streams collide)."""
    return np.random.default_rng([int(seed), int(stream)])


def _randint(g: np.random.Generator, lo: int, hi: int, shape) -> torch.Tensor:
    """Uniform ints in [lo, hi) as a torch long tensor."""
    return torch.from_numpy(g.integers(lo, hi, size=shape, dtype=np.int64))


@dataclass(frozen=True)
class InductionBatch:
    """``input_ids`` (B, T); ``lengths`` (B,) the block length L of each row (the first copy
    starts after a random prefix, see :class:`InductionTask`); ``score_mask``
    (B, T) True at positions whose *next-token* prediction is scored (targets r_2..r_L of the
    second copy)."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    score_mask: torch.Tensor
    distances: torch.Tensor  # (B,) L + G: how far back the first copy of each token is

    @property
    def targets(self) -> torch.Tensor:
        """(B, T) next-token targets (the last position has none: filled with -100)."""
        t = torch.full_like(self.input_ids, -100)
        t[:, :-1] = self.input_ids[:, 1:]
        return t


@dataclass(frozen=True)
class InductionTask:
    """Repeated random-token sequences (module docstring). Token id 0 is ``<bos>``."""

    n_symbols: int = 64
    min_len: int = 8
    max_len: int = 24
    loss_on_repeat_only: bool = False
    distinct: bool = True
    max_prefix: int = 0
    max_gap: int = 0

    def __post_init__(self):
        if not _is_int(self.n_symbols) or not 2 <= self.n_symbols <= len(CHAR_ALPHABET):
            raise ValueError(
                f"InductionTask.n_symbols must be an int in [2, {len(CHAR_ALPHABET)}], "
                f"got {self.n_symbols!r}"
            )
        if not _is_int(self.min_len) or self.min_len < 2:
            raise ValueError(f"InductionTask.min_len must be an int >= 2, got {self.min_len!r}")
        if not _is_int(self.max_len) or self.max_len < self.min_len:
            raise ValueError(
                f"InductionTask.max_len must be an int >= min_len={self.min_len}, got {self.max_len!r}"
            )
        if not _is_int(self.max_prefix) or self.max_prefix < 0:
            raise ValueError(f"InductionTask.max_prefix must be an int >= 0, got {self.max_prefix!r}")
        if not _is_int(self.max_gap) or self.max_gap < 0:
            raise ValueError(f"InductionTask.max_gap must be an int >= 0, got {self.max_gap!r}")
        n_head = self.max_prefix + self.max_len + self.max_gap
        if self.distinct and n_head > self.n_symbols:
            raise ValueError(
                f"InductionTask.max_prefix + max_len + max_gap = {n_head} exceeds "
                f"n_symbols={self.n_symbols}: prefix, block and gap tokens are distinct "
                "(use distinct=False or more symbols)"
            )

    kind = "induction"

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 1

    @property
    def context_length(self) -> int:
        return 1 + self.max_prefix + 2 * self.max_len + self.max_gap

    def sample(self, batch_size: int, generator: np.random.Generator, length: int | None = None) -> InductionBatch:
        """``batch_size`` sequences; ``length`` fixes L for every row (else L is random)."""
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if length is not None and not (_is_int(length) and self.min_len <= length <= self.max_len):
            raise ValueError(f"length must be in [{self.min_len}, {self.max_len}], got {length!r}")
        T = self.context_length
        B = batch_size
        ids = _randint(generator, 1, self.n_symbols + 1, (B, T))
        n_head = self.max_prefix + self.max_len + self.max_gap
        if self.distinct:  # prefix + block + gap: distinct tokens (a partial permutation)
            perm = np.argsort(generator.random((B, self.n_symbols)), axis=1)[:, :n_head] + 1
            ids[:, 1 : 1 + n_head] = torch.from_numpy(perm)
        if length is None:
            lengths = _randint(generator, self.min_len, self.max_len + 1, (B,))
        else:
            lengths = torch.full((B,), length, dtype=torch.long)
        prefixes = _randint(generator, 0, self.max_prefix + 1, (B,))
        gaps = _randint(generator, 0, self.max_gap + 1, (B,))
        ids[:, 0] = 0
        pos = torch.arange(T)[None, :]
        L, P, G = lengths[:, None], prefixes[:, None], gaps[:, None]
        # first copy at P+1..P+L, gap P+L+1..P+L+G, second copy at S+1..S+L with S = P+L+G
        S = P + L + G
        if self.max_gap:  # the gap takes distinct tokens from the end of the permutation
            gsrc = (pos - (P + L) + self.max_prefix + self.max_len).clamp(0, T - 1)
            in_gap = (pos > P + L) & (pos <= S)
            ids = torch.where(in_gap, ids.gather(1, gsrc), ids)
        second = (pos > S) & (pos <= S + L)
        src = (pos - L - G).clamp(min=0)
        ids = torch.where(second, ids.gather(1, src), ids)
        score = (pos >= S + 1) & (pos <= S + L - 1)
        return InductionBatch(input_ids=ids, lengths=lengths, score_mask=score, distances=lengths + gaps)

    def train_batch(self, batch_size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of training step ``step``; labels are -100 where not trained
        (only the scored second-copy targets when ``loss_on_repeat_only``)."""
        b = self.sample(batch_size, step_generator(seed, step))
        labels = b.input_ids.clone()
        if self.loss_on_repeat_only:
            keep = torch.zeros_like(b.score_mask)
            keep[:, 1:] = b.score_mask[:, :-1]
            labels[~keep] = -100
        return b.input_ids, labels

    def eval_batch(self, batch_size: int, seed: int) -> InductionBatch:
        return self.sample(batch_size, step_generator(seed, _EVAL_STREAM))


def repeated_sequences(
    n_symbols: int, length: int, batch_size: int, generator: np.random.Generator
) -> torch.Tensor:
    """``[BOS] r_1..r_L r_1..r_L`` with distinct ids ``r_j`` in ``1..n_symbols`` (B, 1 + 2L)."""
    if length > n_symbols:
        raise ValueError(f"length={length} exceeds n_symbols={n_symbols} (block tokens are distinct)")
    r = torch.from_numpy(np.argsort(generator.random((batch_size, n_symbols)), axis=1)[:, :length] + 1)
    bos = torch.zeros(batch_size, 1, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def induction_metrics(logits: torch.Tensor, batch: InductionBatch) -> dict:
    """Accuracy (argmax) and mean cross-entropy (nats) on the scored positions."""
    if logits.shape[:2] != batch.input_ids.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match input_ids {tuple(batch.input_ids.shape)}"
        )
    mask = batch.score_mask.to(logits.device)
    tgt = batch.targets.to(logits.device)[mask]
    lg = logits[mask].float()
    acc = (lg.argmax(-1) == tgt).float().mean()
    loss = F.cross_entropy(lg, tgt)
    return {"accuracy": float(acc), "loss": float(loss), "n": int(mask.sum())}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@torch.no_grad()
def evaluate_induction(model, batch: InductionBatch, device="cpu", chunk: int = 256) -> dict:
    """:func:`induction_metrics` of ``model`` on ``batch`` (evaluated in chunks, no grad)."""
    was = model.training
    model.eval()
    try:
        outs = [
            _logits(model, batch.input_ids[i : i + chunk].to(device)).float().cpu()
            for i in range(0, batch.input_ids.shape[0], chunk)
        ]
    finally:
        model.train(was)
    return induction_metrics(torch.cat(outs), batch)


@torch.no_grad()
def evaluate_lm_loss(model, ids: torch.Tensor, device="cpu", chunk: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over all positions but the first target (<bos>)."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    try:
        for i in range(0, ids.shape[0], chunk):
            x = ids[i : i + chunk].to(device)
            lg = _logits(model, x)[:, :-1].float()
            tgt = x[:, 1:]
            tot += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="sum"))
            n += tgt.numel()
    finally:
        model.train(was)
    return tot / n


@dataclass(frozen=True)
class TextTask:
    """Byte-level language modelling on the offline corpus (module docstring)."""

    context_length: int = 128
    val_fraction: float = 0.1
    corpus: str = "pydoc-topics"

    kind = "text"

    def __post_init__(self):
        if not _is_int(self.context_length) or self.context_length < 8:
            raise ValueError(f"TextTask.context_length must be an int >= 8, got {self.context_length!r}")
        if not isinstance(self.val_fraction, float) or not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"TextTask.val_fraction must be a float in (0, 0.5), got {self.val_fraction!r}")

    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256

    def _splits(self):
        return load_corpus(self.corpus).split(self.val_fraction)

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        n = self.context_length - 1
        idx = starts[:, None] + torch.arange(n)[None, :]
        body = data[idx].long() + BYTE_OFFSET
        bos = torch.zeros(starts.shape[0], 1, dtype=torch.long)
        return torch.cat([bos, body], dim=1)

    def train_batch(self, batch_size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of training step ``step`` (labels = input_ids)."""
        train, _ = self._splits()
        hi = len(train) - (self.context_length - 1)
        starts = _randint(step_generator(seed, step), 0, hi, (batch_size,))
        ids = self._windows(train, starts)
        return ids, ids

    def eval_ids(self, n_windows: int) -> torch.Tensor:
        """``n_windows`` evenly spaced held-out windows (deterministic, seed-free)."""
        _, val = self._splits()
        hi = len(val) - (self.context_length - 1)
        starts = torch.linspace(0, hi - 1, n_windows).long()
        return self._windows(val, starts)
