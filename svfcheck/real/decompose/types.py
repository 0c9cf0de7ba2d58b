"""The decomposition's public types: the analysed pairs and the per-pair results
(docs/math.md §3.2–§3.5, §3.7, §3.14)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class Pairs:
    """Analysed pairs, parallel int arrays of equal length P."""

    prompt: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    query_pos: np.ndarray
    key_pos: np.ndarray

    @staticmethod
    def of(prompt, layer, head, query_pos, key_pos) -> "Pairs":
        arrs = [np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (prompt, layer, head, query_pos, key_pos)]
        P = max(a.shape[0] for a in arrs)
        arrs = [np.broadcast_to(a, (P,)).copy() for a in arrs]
        return Pairs(*arrs)

    def __len__(self) -> int:
        return self.prompt.shape[0]


@dataclass(frozen=True, eq=False)
class Decomposition:
    """Per-pair results (arrays of length P; ``(P, R)`` for per-term arrays, R = d_h).

    ``terms``: t_r(i, j) (SVD order); ``contributions``: c_r(j) (relative attention terms);
    ``logit`` = Σ terms (scaled, with the QK-norm factor); ``capped_logit``: the logit after the
    layer's soft cap ``cap·tanh(logit/cap)`` (Gemma-2; equal to ``logit`` without a cap: the
    terms always sum to the pre-cap logit, while relative attention and the gate use the
    capped one, docs/math.md §3.21); ``relative_attention`` = Σ c;
    ``attention``: the model's a_ij; ``keys``: visible key positions per pair; ``k`` is -1
    where ``relative_attention <= 0`` (undefined); Rolls–Tovee is NaN for an all-zero row. ``reconstruction_error`` per pair is the
    max over visible keys of |log_softmax(reconstructed logits) − log(model attention)|; in the
    summed route (RoPE / QK-norm layers, default) the reconstructed logits are the query's
    logits recomputed from the extracted weights with ``Σ_r t_r(i, j)`` at the analysed key, and
    the error also covers |Σ_r c_r − ℓ̃_j| (the relative total over the keys, see
    :func:`~svfcheck.real.decompose.summed._summed_layer`). ``term_abs_max``: the summand scale A of
    :func:`~svfcheck.real.decompose.gate_tolerance`.
    ``*_rotated``: basis control (a); ``rolls_tovee_paper_control``: paper control (b).
    """

    pairs: Pairs
    basis: str
    attention: np.ndarray
    logit: np.ndarray
    relative_attention: np.ndarray
    terms: np.ndarray
    contributions: np.ndarray
    singular_values: np.ndarray
    n_keys: np.ndarray
    keys: tuple[np.ndarray, ...]
    rolls_tovee: np.ndarray
    k: np.ndarray
    contributions_rotated: np.ndarray | None
    rolls_tovee_rotated: np.ndarray | None
    k_rotated: np.ndarray | None
    contributions_paper_control: np.ndarray | None
    rolls_tovee_paper_control: np.ndarray | None
    reconstruction_error: np.ndarray
    max_reconstruction_error: float
    key_terms: tuple[np.ndarray, ...] | None = None  # per pair (m, R) when requested
    term_abs_max: np.ndarray | None = None  # per pair: max over visible keys k of Σ_r |t_r(i, k)|
    capped_logit: np.ndarray | None = None  # per pair: the logit after a soft cap (= logit without one)


@dataclass(frozen=True)
class DecomposeOptions:
    """How :func:`~svfcheck.real.decompose.decompose` works.

    Args:
        basis: ``"pair"`` (SVD of Ω(Δ_j), exact eq. 1 at the analysed key) or ``"zero"``
            (Ω(0), paper App. D; docs/math.md §3.10); identical for RoPE-free layers.
        controls: also compute both rotation controls (§3.7).
        seed: the controls' seed: one Haar matrix per (layer, head) and control, the same for
            every prompt.
        dtype: the decomposition's arithmetic (the core SVDs are float64 whatever it is).
        method: ``"auto"`` (fast route for RoPE-free, QK-norm-free layers) or ``"general"``.
        keep_key_terms: also return every visible key's terms per pair (memory: P·m·d_h);
            implies ``per_key``.
        per_key: in RoPE / QK-norm layers, form every visible key's d_h terms (``m·d_h`` per
            pair; the gate then compares the per-key reconstructed logits themselves) instead
            of the default summed route, which needs the other keys only through their sum
            (about 4× fewer operations on SmolLM2; same numbers to rounding, tested).
            Soft-capped layers always take the per-key route (docs/math.md §3.21).
        chunk: pairs per batch in the per-key route (default: about 4M elements per tensor).
        threads: how many layers are decomposed side by side, each on one thread (``None``:
            every core this process may use, :func:`~svfcheck.real.threads.svd_workers`; ``1``:
            one after another in the caller's thread). Independent single-threaded streams run
            better than one stream on two intra-op threads and stay fast on busy cores; the
            results do not depend on ``threads`` (tested). The core SVDs are computed first, in
            the caller's thread, on all cores; torch's thread setting is restored afterwards.
        memory_budget: bytes the decomposition may hold beyond its inputs and outputs: the
            core tables and the routes' scratch (docs/math.md §4.5). The pairs then run in
            rounds whose cores and scratch fit, and the cache evicts tables between them; the
            results are the same (tested). ``None``: one round, nothing evicted.
    """

    basis: str = "pair"
    controls: bool = True
    seed: int = 0
    dtype: torch.dtype = torch.float64
    method: str = "auto"
    keep_key_terms: bool = False
    per_key: bool = False
    chunk: int | None = None
    threads: int | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if self.basis not in ("pair", "zero"):
            raise ValueError(f"basis must be 'pair' or 'zero'; got {self.basis!r}")
        if self.method not in ("auto", "general"):
            raise ValueError(f"method must be 'auto' or 'general'; got {self.method!r}")
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1):
            raise ValueError(f"threads must be >= 1 or None; got {t!r}")
        b = self.memory_budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1):
            raise ValueError(f"memory_budget must be a positive number of bytes or None; got {b!r}")
