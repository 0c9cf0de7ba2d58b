"""Per-pair outputs, accumulated by index as the layers' routes fill them (:class:`_Out`), and
their metrics: relative attention and its terms (:func:`_rel`), k and Rolls–Tovee S
(docs/math.md §3.3–§3.5, §3.7)."""

from __future__ import annotations

import numpy as np
import torch

from ...metrics import reconstruction_count, rolls_tovee
from .types import Decomposition, Pairs


def _rel(t_pair: torch.Tensor, t_sum: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Relative terms ``c = t_j − (Σ_k t_k − t_j)/(m − 1)`` (docs/math.md §3.3): ``t_pair`` (P, R)
    at the analysed key, ``t_sum`` (P, R) summed over the m (P,) visible keys."""
    return t_pair - (t_sum - t_pair) / (m - 1)[..., None]


def _rt(c: np.ndarray) -> np.ndarray:
    """Rolls–Tovee per row; NaN for an all-zero row (e.g. a zero query vector)."""
    out = np.full(c.shape[0], np.nan)
    ok = np.any(c != 0, axis=-1)
    if ok.any():
        out[ok] = rolls_tovee(c[ok])
    return out


class _Out:
    """Accumulates per-pair outputs by index: each layer's route writes its own pairs' rows (so
    layers can run side by side), then :meth:`metrics` of those rows; :meth:`result` at the end."""

    def __init__(self, P: int, R: int, controls: bool, keep: bool):
        z = lambda *s: np.zeros(s)  # noqa: E731
        self.terms, self.c, self.S = z(P, R), z(P, R), z(P, R)
        self.logit, self.err, self.att = z(P), z(P), z(P)
        self.capped = z(P)  # the logit after a soft cap (= logit without one)
        self.amax = z(P)  # max over visible keys of Σ_r |t_r(i, k)|
        self.cr = z(P, R) if controls else None
        self.cp = z(P, R) if controls else None
        self.key_terms: list | None = [None] * P if keep else None
        # per-pair metrics of the contributions, filled by :meth:`metrics`
        self.rel, self.rt = z(P), z(P)
        self.k = np.full(P, -1, dtype=np.int64)
        self.kr = np.full(P, -1, dtype=np.int64) if controls else None
        self.rtr = z(P) if controls else None
        self.rtp = z(P) if controls else None

    def metrics(self, rows: np.ndarray) -> None:
        """Relative attention, k and Rolls–Tovee S (SVD basis and controls) of ``rows``, once their
        contributions are in: row by row, so any split of the pairs gives the same values. k is
        defined only where relative attention is positive (-1 elsewhere)."""
        c = self.c[rows]
        rel = self.rel[rows] = c.sum(-1)
        pos = rel > 0
        if pos.any():
            self.k[rows[pos]] = reconstruction_count(c[pos])
        self.rt[rows] = _rt(c)
        if self.cr is not None:
            cr = self.cr[rows]
            if pos.any():
                self.kr[rows[pos]] = reconstruction_count(cr[pos], rel[pos])
            self.rtr[rows], self.rtp[rows] = _rt(cr), _rt(self.cp[rows])

    def result(self, pairs: Pairs, basis: str, keys: list, n_keys: np.ndarray) -> Decomposition:
        """The :class:`~.types.Decomposition` of ``pairs`` (every row filled), with each pair's
        visible ``keys`` and their counts ``n_keys``."""
        return Decomposition(
            pairs=pairs,
            basis=basis,
            attention=self.att,
            logit=self.logit,
            capped_logit=self.capped,
            relative_attention=self.rel,
            terms=self.terms,
            contributions=self.c,
            singular_values=self.S,
            n_keys=n_keys,
            keys=tuple(keys),
            rolls_tovee=self.rt,
            k=self.k,
            contributions_rotated=self.cr,
            rolls_tovee_rotated=self.rtr,
            k_rotated=self.kr,
            contributions_paper_control=self.cp,
            rolls_tovee_paper_control=self.rtp,
            reconstruction_error=self.err,
            max_reconstruction_error=float(self.err.max()),
            key_terms=None if self.key_terms is None else tuple(self.key_terms),
            term_abs_max=self.amax,
        )
