"""RoPE helpers of the decomposition (docs/math.md §3.9–§3.10): the model's rotation, the
check that captured tables are a fixed-frequency RoPE (:func:`check_rotary`), the pairs' basis
offsets Δ, and the rotary tables and key-side features of the summed route."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import kernels
from ..capture import Capture
from ..heads import ModelHeads


def _rot_half(x: torch.Tensor, rd: int) -> torch.Tensor:
    h = rd // 2
    return torch.cat([-x[..., h:rd], x[..., :h]], dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The model's rotation (``inverse``: its transpose) on the first ``cos.shape[-1]`` dims."""
    rd = cos.shape[-1]
    r = _rot_half(x, rd)
    sgn = -1.0 if inverse else 1.0
    rot = x[..., :rd] * cos + sgn * r * sin
    return torch.cat([rot, x[..., rd:]], dim=-1)


def check_rotary(heads: ModelHeads, cap: Capture, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` if a captured ``cos/sin`` is not ``a·cos(pos·inv_freq)`` (e.g. dynamic
    RoPE), which would make the per-offset basis R_Δ wrong (docs/math.md §3.9).

    Args:
        heads: the model's heads; the layers with RoPE (``LayerHeads.rotary``) are checked.
        cap: the capture: ``positions`` (B, n) and per layer ``cos``, ``sin`` (B, n, rotary_dim).
        atol: the allowed difference, times ``max(1, largest position)`` and the rotation's
            ``attention_scaling``.

    Raises:
        ValueError: a RoPE layer's tables cover the wrong width or differ from the spec.
    """
    for l, lh in enumerate(heads.layers):
        if lh.rotary is None:
            continue
        if cap.cos[l] is None or cap.cos[l].shape[-1] != lh.rotary.rotary_dim:
            got = None if cap.cos[l] is None else cap.cos[l].shape[-1]
            raise ValueError(f"layer {l}: captured RoPE covers {got} dims, the spec {lh.rotary.rotary_dim}")
        ang = cap.positions[..., None].double() * torch.as_tensor(lh.rotary.inv_freq)
        ang = torch.cat([ang, ang], -1)
        a = lh.rotary.attention_scaling
        err = max(float((cap.cos[l].double() - a * torch.cos(ang)).abs().max()), float((cap.sin[l].double() - a * torch.sin(ang)).abs().max()))
        if err > atol * max(1.0, float(cap.positions.max())) * a:
            raise ValueError(f"layer {l}: captured RoPE cos/sin differ from the extracted spec by {err:.2e}")


def _rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, idx: np.ndarray, inverse: bool = False):
    """:func:`_rope` of each row ``x[p]`` with the tables' row ``idx[p]`` (compiled, no gathers)."""
    out = torch.empty_like(x)
    kernels.rope_rows(x.contiguous().numpy(), cos.numpy(), sin.numpy(), idx, inverse, out.numpy())
    return out


def _duplicated_halves(cos, sin, rd: int) -> bool:
    """Whether the captured tables repeat each angle over dims t and t + rd/2 exactly (HF's
    rotate-half tables do), so the key side needs one copy of each angle."""
    h = rd // 2
    return bool(torch.equal(cos[..., :h], cos[..., h:rd]) and torch.equal(sin[..., :h], sin[..., h:rd]))


def _key_features(cos, sin, rd: int, dh: int, halves: bool):
    """Key-side coordinates ``cs_k`` (n, e) such that ``λ_kr = cs_k · G_p[:, r]`` (see
    :func:`~svfcheck.real.kernels.query_side_sums`): ``[cos_k, 1, −sin_k]`` over (rotary, pass-through, rotary)
    dims, or with ``halves`` (HF duplicates each angle over dims t and t + rd/2) only one
    copy of each angle, e = d_h. Without RoPE (rd = 0) ``λ`` does not depend on the key: e = 1."""
    n = cos.shape[0] if cos is not None else None
    if rd == 0:
        return None
    h = rd // 2
    ones = torch.ones(n, dh - rd, dtype=cos.dtype)
    if halves:
        return torch.cat([cos[:, :h], ones, -sin[:, :h]], 1)
    return torch.cat([cos, ones, -sin], 1)


def _pair_offsets(pos: torch.Tensor, vis: torch.Tensor, b, i, j, per_pair: bool) -> tuple[np.ndarray, tuple | None]:
    """Basis offsets Δ = pos_j − pos_i of the pairs (b, i, j) given the position ids ``pos``
    (B, n), and the smallest and largest offset any visible (query, key) of the layer's mask
    ``vis`` (B, n, n) has; zeros and ``None`` without a per-pair basis (``per_pair``: basis
    ``"pair"`` in a RoPE layer). The per-layer core table is contiguous, so allocating that span
    once means later prompts of this length never grow (and copy) it; only the entries the pairs
    use are computed."""
    if not per_pair:
        return np.zeros(len(b), dtype=np.int64), None
    d = (pos[b, j] - pos[b, i]).numpy()
    diff = pos[:, None, :] - pos[:, :, None]  # (B, n_query, n_key)
    big = torch.iinfo(diff.dtype).max
    lo = int(torch.where(vis, diff, torch.full_like(diff, big)).min())
    hi = int(torch.where(vis, diff, torch.full_like(diff, -big)).max())
    return d, (lo, hi)


@dataclass(frozen=True, eq=False)
class RopeTables:
    """A RoPE layer's captured rotations as the summed route reads them: ``cos``, ``sin``
    (B, n, rotary_dim) in the decomposition's dtype, and whether they repeat each angle over
    dims t and t + rd/2 (``halves``, :func:`_duplicated_halves`, decided on the captured
    tables)."""

    cos: torch.Tensor
    sin: torch.Tensor
    halves: bool

    @staticmethod
    def of(cos: torch.Tensor, sin: torch.Tensor, rd: int, dtype: torch.dtype) -> "RopeTables":
        return RopeTables(cos.to(dtype), sin.to(dtype), _duplicated_halves(cos, sin, rd))
