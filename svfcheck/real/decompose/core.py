"""The decomposition driver, :func:`decompose` (docs/math.md §3.2, §3.9–§3.15, §4.4): checks
its input, plans every layer (``plan``), runs each layer's route side by side (``fast``,
``per_key``, ``summed``) into one output (``output``)."""

from __future__ import annotations

import numpy as np
import torch

from ..capture import Capture
from ..heads import ModelHeads
from ..svd_cache import SVDCache, svd_cache
from ..threads import parallel_map
from .controls import _control_rotations
from .fast import _fast_layer
from .output import _Out
from .pairs import _validate, _visible_keys
from .per_key import _per_key_layer
from .plan import LayerPlan, Options, plan_layers
from .rope import check_rotary
from .summed import _summed_layer
from .types import Decomposition, Pairs

#: Each plan's route (:attr:`LayerPlan.route`) and the function that runs it.
_ROUTES = {"fast": _fast_layer, "per_key": _per_key_layer, "summed": _summed_layer}


def decompose(
    heads: ModelHeads,
    cap: Capture,
    pairs: Pairs,
    *,
    basis: str = "pair",
    controls: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    cache: SVDCache | None = None,
    method: str = "auto",
    keep_key_terms: bool = False,
    per_key: bool = False,
    chunk: int | None = None,
    threads: int | None = None,
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
        basis: ``"pair"`` (SVD of Ω(Δ_j), exact eq. 1 at the analysed key) or ``"zero"``
            (Ω(0), paper App. D; §3.10); identical for RoPE-free layers.
        controls: also compute both rotation controls (§3.7).
        seed: the controls' seed: one Haar matrix per (layer, head) and control, the same for
            every prompt.
        dtype: the decomposition's arithmetic (the core SVDs are float64 whatever it is).
        cache: the core SVDs per (layer, head, Δ); default the shared per-model
            :func:`~svfcheck.real.svd_cache.svd_cache`.
        method: ``"auto"`` (fast route for RoPE-free, QK-norm-free layers) or ``"general"``.
        keep_key_terms: also return every visible key's terms per pair (memory: P·m·d_h);
            implies ``per_key``.
        per_key: in RoPE / QK-norm layers, form every visible key's d_h terms (``m·d_h`` per
            pair; the gate then compares the per-key reconstructed logits themselves) instead
            of the default summed route, which needs the other keys only through their sum
            (about 4× fewer operations on SmolLM2; same numbers to rounding, tested).
        chunk: pairs per batch in the per-key route (default: about 4M elements per tensor).
        threads: how many layers are decomposed side by side, each on one thread (default
            ``None``: every core this process may use,
            :func:`~svfcheck.real.threads.svd_workers`; ``1``: one after another in the
            caller's thread). The work is a few GEMMs and compiled loops per layer (per
            (prompt, head) in the per-key route), which run better as independent
            single-threaded streams than as one stream on two intra-op threads — and, with no
            per-op synchronisation, they stay fast on busy cores. The results do not depend on
            ``threads`` (every layer is computed on one thread; tested). The core SVDs are
            computed first, in the caller's thread, on all cores (see
            :mod:`svfcheck.real.threads`); torch's thread setting is restored afterwards.

    Returns:
        The :class:`~svfcheck.real.decompose.Decomposition`, per pair in the order of
        ``pairs``: ``terms``, ``contributions``, ``singular_values`` (P, R);
        ``logit``, ``relative_attention``, ``attention``, ``rolls_tovee``, ``k`` (−1 where
        relative attention ≤ 0), ``n_keys``, ``reconstruction_error``, ``term_abs_max``
        (P,); ``keys``: P arrays (m_p,) of visible key positions. With ``controls``:
        ``contributions_rotated``, ``contributions_paper_control`` (P, R) and
        ``rolls_tovee_rotated``, ``k_rotated``, ``rolls_tovee_paper_control`` (P,) (else
        ``None``). With ``keep_key_terms``: ``key_terms``, P arrays (m_p, R).

    Raises:
        ValueError: a bad option, or input as described under Args.
        IndexError: a prompt, layer, head, query or key index out of range.
    """
    if basis not in ("pair", "zero"):
        raise ValueError(f"basis must be 'pair' or 'zero'; got {basis!r}")
    if method not in ("auto", "general"):
        raise ValueError(f"method must be 'auto' or 'general'; got {method!r}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be >= 1 or None; got {threads!r}")
    if not isinstance(pairs, Pairs):
        pairs = Pairs.of(*pairs)
    _validate(heads, cap, pairs)
    check_rotary(heads, cap)
    cache = cache if cache is not None else svd_cache(heads)
    R = heads.layers[0].head_dim
    P = len(pairs)
    Qs = _control_rotations(heads, seed, dtype) if controls else None
    out = _Out(P, R, controls, keep_key_terms)
    if chunk is None:
        chunk = max(1, 4_000_000 // (cap.token_mask.shape[1] * R))
    opts = Options(basis, method, per_key or keep_key_terms, dtype, seed, chunk, Qs)
    with torch.no_grad():
        # 1. plan every layer in this thread, filling the cache (cold core SVDs run on every core
        # inside; the new core SVDs of all layers in one pooled run: a few per layer still use
        # every core) and reading it, so that
        # 2. the layers, whose routes then only read their plan, can run side by side on one
        # thread each
        plans = plan_layers(heads, cap, pairs, cache, opts)
        parallel_map(lambda plan: _run(plan, out), plans, workers=threads)
    keys, n_keys = _visible_keys(cap, pairs)
    return out.result(pairs, basis, keys, n_keys)


def _run(plan: LayerPlan, out: _Out) -> None:
    """One layer: its route, then the metrics of its rows (on the layer's worker)."""
    with torch.no_grad():
        _ROUTES[plan.route](plan, out)
        out.metrics(plan.idx)  # per row: here, on the layer's worker, instead of after all layers
