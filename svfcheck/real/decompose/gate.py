"""The exactness gate (docs/math.md §3.14) and its float32 tolerance (§3.15)."""

from __future__ import annotations

import numpy as np
import torch

from .types import Decomposition


def _gate(logits: torch.Tensor, vis: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Per row max |log_softmax(logits over visible) − log attn| over visible keys with attn > 0."""
    lg = logits.masked_fill(~vis, float("-inf"))
    ls = torch.log_softmax(lg, -1)
    ok = vis & (attn > 0)
    d = (ls - torch.log(attn.clamp_min(1e-300))).abs().masked_fill(~ok, 0.0)
    return d.amax(-1)


def gate_tolerance(
    d: Decomposition, dtype: torch.dtype = torch.float32, *, c_floor: float = 8.0, c_sum: float = 4.0
) -> np.ndarray:
    """Per-pair rounding bound on ``d.reconstruction_error`` when the model or the
    decomposition runs in ``dtype`` (use the coarser of the two): ``u·(c_floor + c_sum·√R·A)``
    with ``u = eps(dtype)``, ``R = d_h`` and ``A = d.term_abs_max`` (per pair, the largest
    ``Σ_r |t_r(i, k)|`` over visible keys — measured, not assumed; in the summed route, which
    does not form per-key terms, the larger of ``Σ_r |t_r(i, j)|`` and the largest
    ``scale·ν·Σ_e |q̂_e k̂_e|`` over visible keys, the summands of the recomputed logits).

    Summed route: its relative total ``Σ_r c_r`` sums the m keys in another order; averaged
    over m − 1 keys its rounding is below the per-logit bound (random-rounding model:
    ``≈ √(e·d_h/m)·u·A`` against ``4√R·u·A``), so the same bound covers it.

    Derivation. The reference is the model's own attention row ``a_i·`` (its eager softmax
    output), the reconstruction is ``log_softmax(Σ_r t_r(i, ·))``. (1) Each logit is a sum of
    R products, in the model (``q·k`` over d_h coordinates) and here (R SVD terms); with the
    usual random-rounding model of a length-R sum (Higham, √n rule) each is off by at most
    ``≈ √R·u·Σ|summands|``; we use the measured ``Σ_r |t_r|`` for both sums and take one
    extra factor 2 for the two sources: ``|δℓ_k| ≤ 2√R·u·A``. (2) ``log_softmax`` is
    1-Lipschitz per coordinate in the max norm up to the shift: ``|δ log a_k| ≤ |δℓ_k| +
    max_k' |δℓ_k'| ≤ 2·max|δℓ|`` → ``c_sum = 4``. (3) The model's softmax (exp, a sum, a
    division) and our log of it add a floor of a few u even for tiny logits (measured 2u on
    tiny float32 models, 8u on Gemma3's QK-norm) → ``c_floor = 8``. Mishandled weights or
    RoPE offsets give errors of order 1 (≫ this bound), which the gate tests check.

    Args:
        d: a decomposition of P pairs (its ``term_abs_max`` (P,); ``ValueError`` without it).
        dtype: the coarser of the model's and the decomposition's dtype.
        c_floor: the constant floor, in units of u.
        c_sum: the factor of ``√R·u·A``.

    Returns:
        (P,) float64: the bound per pair.
    """
    if d.term_abs_max is None:
        raise ValueError("this Decomposition has no term_abs_max; recompute it with decompose()")
    u = torch.finfo(dtype).eps
    # terms may be absent from a decomposition put together from only some fields (sad_groups)
    R = next(a.shape[1] for a in (getattr(d, f, None) for f in ("terms", "contributions", "singular_values")) if a is not None)
    return u * (c_floor + c_sum * np.sqrt(R) * d.term_abs_max)
