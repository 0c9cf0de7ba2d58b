"""Exact sparse attention decomposition of real-model attention logits (docs/math.md §3.2, §3.9–§3.15).

For an analysed pair (prompt b, layer l, head h, query i, key j) the head's logit against every
visible key k is split into d_h terms ``t_r(i, k) = scale · ν_ik · x̃_iᵀ Ω(Δ_k) v_r v_rᵀ x̃_k``
where ``Ω(Δ) = W̃_Q G_q R_Δ G_k W̃_Kᵀ`` and ``v_r`` are the right singular vectors of the
*basis* matrix: ``Ω(Δ_j)`` (``basis="pair"``, exact eq. 1 at k = j) or ``Ω(0)``
(``basis="zero"``, paper App. D). ``ν_ik = 1/(rms(q_i) rms(k_k))`` with QK-norm, else 1.
Since ``span{v_r}`` is the column span of ``W̃_K``, ``Σ_r t_r(i,k) = ℓ_ik`` exactly for every k.

Rotations are the model's own (captured ``cos, sin``); the basis offset Δ is exact in
float64 (``Δ · inv_freq``). Terms are computed in head space from the factorisation
``W̃ = Q R`` (``v_rᵀx̃ = ṽ_rᵀ R_k^{-T} b``), never forming a d×d matrix.

Routes (docs/math.md §4.4). RoPE-free layers without QK-norm take a fast path: one SVD per
head, terms as ``α_ir s_r β_kr`` for all tokens at once (cost ≈ the attention part of a
forward pass). Other layers (RoPE, QK-norm) take the *summed* route by default: what is
reported needs the other keys only through ``Σ_k t_r(i, k)``, which is bilinear in key-side
data and so is summed over keys before the pair's basis is applied; ``per_key=True`` forms
every key's d_h terms instead (also used for ``keep_key_terms``, and always for layers with
a logit soft-cap, whose terms are those of the pre-cap logit: docs/math.md §3.21). Both give the same numbers
to rounding (tested); the summed route is ~5× cheaper on SmolLM2 (its per-pair loops
compiled, :mod:`svfcheck.real.kernels`; pairs sharing a basis with many others in their
(prompt, head) sum their keys in that basis once; each layer's pairs in one pass).

Rotation controls (seeded, one Haar matrix per (layer, head) for each control; §3.7):
(a) basis control — left ``x̃_iᵀ U Q``, right ``Qᵀ S Vᵀ x̃_k`` (same totals);
(b) paper control — ``U Q₁``, ``V Q₂`` with the original S (different matrix).

Modules (the public names are re-exported here):

- ``types``: :class:`Pairs`, :class:`Decomposition`;
- ``pairs``: :func:`top_attended_pairs`, validation of pairs against a capture, visible keys;
- ``rope``: the model's rotation, :func:`check_rotary`, basis offsets, the summed route's
  rotary tables and key features;
- ``controls``: the controls' seeded Haar matrices; ``gate``: the exactness gate and
  :func:`gate_tolerance`; ``output``: the per-pair output accumulator and its metrics;
- ``plan``: one ``LayerPlan`` per layer — route, pairs, capture views, options and cache reads,
  built in the caller's thread (the core SVD cache is :mod:`svfcheck.real.svd_cache`);
- routes, each ``(plan, out)``: ``fast``; ``per_key``; ``summed`` with ``layout`` (its pair
  order), ``key_sums`` (its key side) and ``rotary_sums`` (per-pair key sums in the pair's
  basis);
- ``core``: :func:`decompose`, the driver.
"""

from __future__ import annotations

from .core import decompose
from .gate import gate_tolerance
from .pairs import top_attended_pairs
from .rope import check_rotary
from .types import DecomposeOptions, Decomposition, Pairs

__all__ = ["Pairs", "Decomposition", "DecomposeOptions", "decompose", "top_attended_pairs", "check_rotary", "gate_tolerance"]
