"""The decomposition driver, :func:`decompose` (docs/math.md §3.2, §3.9–§3.15, §4.4): checks
its input, plans every layer (``plan``), runs each layer's route side by side (``fast``,
``per_key``, ``summed``) into one output (``output``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..capture import Capture
from ..heads import ModelHeads
from ..svd_cache import SVDCache, svd_cache
from ..threads import parallel_map, svd_workers
from .budget import plan_rounds
from .controls import _control_rotations
from .fast import _fast_layer
from .output import _Out
from .pairs import _validate, _visible_keys
from .per_key import _per_key_layer
from .plan import LayerPlan, Options, plan_layers
from .rope import check_rotary
from .summed import _summed_layer
from .types import DecomposeOptions, Decomposition, Pairs

#: Each plan's route (:attr:`LayerPlan.route`) and the function that runs it.
_ROUTES = {"fast": _fast_layer, "per_key": _per_key_layer, "summed": _summed_layer}


def decompose(
    heads: ModelHeads,
    cap: Capture,
    pairs: Pairs,
    options: DecomposeOptions | None = None,
    *,
    cache: SVDCache | None = None,
    on_round=None,
    **overrides,
) -> Decomposition:
    """Decompose the logits of ``pairs`` exactly into d_h SVD terms (see the package docstring).

    Per pair (prompt b, layer l, head h, query i, key j) with m visible keys: the d_h terms
    ``t_r(i, j)`` of its logit (docs/math.md §3.2, eq. 1), their relative contributions
    ``c_r(j)`` (§3.3), sparsity S and reconstruction count k (§3.4–§3.5), both rotation
    controls (§3.7) and the exactness gate (§3.14). Each layer takes one route (§4.4): fast
    (RoPE-free, QK-norm-free layers with ``method="auto"``), summed (default otherwise) or
    per-key (``per_key`` / ``keep_key_terms``); all give the same numbers to rounding (tested).

    Args:
        heads: the model's query/key maps (:func:`~svfcheck.real.heads.extract_heads`); every
            analysed layer has head dimension R = d_h (``ValueError`` otherwise).
        cap: one capture (:func:`~svfcheck.real.capture.capture`) of B prompts of n tokens:
            per layer ``hidden`` (B, n, d), ``attn`` (B, H, n, n), ``visible`` (B, n, n) and with
            RoPE ``cos``, ``sin`` (B, n, rotary_dim); these must be a fixed-frequency RoPE
            (:func:`~svfcheck.real.decompose.check_rotary`, ``ValueError`` otherwise).
        pairs: the P analysed pairs, a :class:`~svfcheck.real.decompose.Pairs` (or its five
            int arrays (P,), passed to ``Pairs.of``): every query a real token that sees at
            least 2 keys, every key visible to its query (``ValueError``; an index out of
            range: ``IndexError``).
        options: how to decompose (:class:`~svfcheck.real.decompose.DecomposeOptions`: basis,
            controls, seed, dtype, method, keep_key_terms, per_key, chunk, threads — each field
            documented there); default options when ``None``. ``overrides`` replace single
            fields, e.g. ``decompose(heads, cap, pairs, dtype=torch.float32)``.
        cache: the core SVDs per (layer, head, Δ); default the shared per-model
            :func:`~svfcheck.real.svd_cache.svd_cache`.
        on_round: called after each round (docs/math.md §4.5; one without a memory budget) with
            the indices of the pairs it decomposed (for progress).

    Returns:
        The :class:`~svfcheck.real.decompose.Decomposition`, per pair in the order of
        ``pairs``: ``terms``, ``contributions``, ``singular_values`` (P, R);
        ``logit`` (pre-cap), ``capped_logit`` (after a soft cap, docs/math.md §3.21; = ``logit``
        without one), ``relative_attention``, ``attention``, ``rolls_tovee``, ``k`` (−1 where
        relative attention ≤ 0), ``n_keys``, ``reconstruction_error``, ``term_abs_max``
        (P,); ``keys``: P arrays (m_p,) of visible key positions. With ``controls``:
        ``contributions_rotated``, ``contributions_paper_control`` (P, R) and
        ``rolls_tovee_rotated``, ``k_rotated``, ``rolls_tovee_paper_control`` (P,) (else
        ``None``). With ``keep_key_terms``: ``key_terms``, P arrays (m_p, R).

    Raises:
        ValueError: a bad option, or input as described under Args.
        IndexError: a prompt, layer, head, query or key index out of range.
    """
    o = options or DecomposeOptions()
    if overrides:
        o = replace(o, **overrides)
    basis, controls, seed, dtype, chunk, threads = o.basis, o.controls, o.seed, o.dtype, o.chunk, o.threads
    if not isinstance(pairs, Pairs):
        pairs = Pairs.of(*pairs)
    _validate(heads, cap, pairs)
    check_rotary(heads, cap)
    cache = cache if cache is not None else svd_cache(heads)
    R = heads.layers[0].head_dim
    P = len(pairs)
    Qs = _control_rotations(heads, seed, dtype) if controls else None
    out = _Out(P, R, controls, o.keep_key_terms)
    if chunk is None:
        chunk = max(1, 4_000_000 // (cap.token_mask.shape[1] * R))
    opts = Options(basis, o.method, o.per_key or o.keep_key_terms, dtype, seed, chunk, Qs)
    with torch.no_grad():
        # 1. plan every layer in this thread, filling the cache (cold core SVDs run on every core
        # inside; the new core SVDs of all layers in one pooled run: a few per layer still use
        # every core) and reading it, so that
        # 2. the layers, whose routes then only read their plan, can run side by side on one
        # thread each. Within a memory budget: round by round (docs/math.md §4.5)
        if o.memory_budget is None:
            rounds = [None]
        else:
            workers = svd_workers() if threads is None else threads
            rounds = plan_rounds(heads, cap, pairs, cache, opts, int(o.memory_budget), workers)
        for rnd in rounds:
            units = None if rnd is None else [(u.layer, u.idx) for u in rnd.units]
            plans = plan_layers(heads, cap, pairs, cache, opts, units, None if rnd is None else rnd.room)
            parallel_map(lambda plan: _run(plan, out), plans, workers=threads)
            if on_round is not None:
                on_round(np.concatenate([p.idx for p in plans]) if plans else np.zeros(0, dtype=np.int64))
            del plans  # the tables they read may be evicted by the next round
    keys, n_keys = _visible_keys(cap, pairs)
    return out.result(pairs, basis, keys, n_keys)


def _run(plan: LayerPlan, out: _Out) -> None:
    """One layer: its route, then the metrics of its rows (on the layer's worker)."""
    with torch.no_grad():
        _ROUTES[plan.route](plan, out)
        out.metrics(plan.idx)  # per row: here, on the layer's worker, instead of after all layers
