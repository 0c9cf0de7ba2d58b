"""The extracted query/key maps of a model's attention layers, as frozen dataclasses
(:class:`RotarySpec`, :class:`LayerHeads`, :class:`ModelHeads`), and the two maps every route
derives from them (:func:`rope_matrix`, :func:`norm_maps`). :mod:`svfcheck.real.heads`
extracts them (with the per-family readers of :mod:`svfcheck.real.families`) and re-exports
these names; conventions in docs/math.md §3.1, §3.9–§3.12."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RotarySpec", "LayerHeads", "ModelHeads", "rope_matrix", "norm_maps"]


@dataclass(frozen=True, eq=False)
class RotarySpec:
    """RoPE of one layer: rotate-half convention on the first ``rotary_dim`` head dims.

    Rotation angle of pair t (t < rotary_dim/2, dims t and t + rotary_dim/2) at position p is
    ``p * inv_freq[t]``; cos and sin are multiplied by ``attention_scaling`` (rotary dims only).

    ``convention`` is the model's own pairing: ``"rotate_half"`` or ``"interleaved"`` (pairs
    2t, 2t+1: GPT-J, Cohere). svfcheck's head coordinates are always rotate-half: for an
    interleaved model the extraction permuted the head coordinates (``head_order[c]`` is the
    model's coordinate of svfcheck's coordinate c; ``None``: identity) and the capture converts
    the tables (docs/math.md §3.18). ``tables``: the layout of the ``position_embeddings`` the
    module receives — ``"cos_sin"`` (``(cos, sin)``, rotary_dim wide, in the model's pairing) or
    ``"sin_cos_half"`` (GPT-J: ``(sin, cos)``, one entry per pair). ``max_positions``: for RoPE
    whose frequencies change with the prompt length (``dynamic``, ``longrope``), the longest
    prompt for which ``inv_freq`` holds (docs/math.md §3.20), and ``state_attr`` the rotary
    module's attribute holding the frequencies it rotates with (checked after every capture);
    ``None``: any length.
    """

    rotary_dim: int
    inv_freq: np.ndarray  # (rotary_dim // 2,) float64
    attention_scaling: float = 1.0
    rope_type: str = "default"
    convention: str = "rotate_half"
    tables: str = "cos_sin"
    head_order: np.ndarray | None = None
    max_positions: int | None = None
    state_attr: str | None = None


@dataclass(frozen=True, eq=False)
class LayerHeads:
    """Query/key maps of all heads of one attention layer (tensors in the model's dtype).

    QK-norm (docs/math.md §3.12, §3.19): ``q_gain`` (d_h,) shared by the heads or (n_heads, d_h)
    per head (``k_gain`` likewise with n_kv_heads); ``norm_center``: LayerNorm's mean
    subtraction; ``norm_scope``: ``"head"`` (σ over each head's d_h coordinates) or ``"all"``
    (OLMo-2: over the token's whole projection, one σ shared by its heads). ``softcap``: the
    logit cap of §3.21, ``None`` without.
    """

    layer: int
    W_Q: torch.Tensor  # (n_heads, d, d_h)
    W_K: torch.Tensor  # (n_kv_heads, d, d_h)
    b_Q: torch.Tensor | None  # (n_heads, d_h)
    b_K: torch.Tensor | None  # (n_kv_heads, d_h)
    scale: float
    rotary: RotarySpec | None
    q_gain: torch.Tensor | None  # (d_h,) or (n_heads, d_h): effective QK-norm gain (Gemma: 1 + w)
    k_gain: torch.Tensor | None  # (d_h,) or (n_kv_heads, d_h)
    norm_eps: float | None
    sliding_window: int | None
    causal: bool
    norm_center: bool = False
    norm_scope: str = "head"
    softcap: float | None = None

    def __post_init__(self) -> None:
        if self.norm_scope not in ("head", "all"):
            raise ValueError(f"norm_scope must be 'head' or 'all'; got {self.norm_scope!r}")
        if self.norm_scope == "all" and self.norm_center:
            raise ValueError("a QK LayerNorm over the whole projection (mean over all heads) is not supported")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive; got {self.softcap!r}")

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[1]

    @property
    def head_dim(self) -> int:
        return self.W_Q.shape[2]

    @property
    def has_bias(self) -> bool:
        return self.b_Q is not None or self.b_K is not None

    @property
    def qk_norm(self) -> bool:
        return self.q_gain is not None

    @property
    def norm_shared(self) -> bool:
        """QK-norm whose map ``g ⊙ ·`` is one diagonal for every head (RMSNorm with a (d_h,) gain:
        Gemma3, Qwen3): the middle matrix ``G_q R_Δ G_k`` is then shared by the heads."""
        return self.qk_norm and self.q_gain.dim() == 1 and self.k_gain.dim() == 1 and not self.norm_center

    def kv_head(self, head: int | np.ndarray) -> int | np.ndarray:
        """Key head used by query head ``head`` (GQA): ``head // (n_heads // n_kv_heads)``."""
        return head // (self.n_heads // self.n_kv_heads)

    def check_head(self, head: int) -> int:
        if not 0 <= int(head) < self.n_heads:
            raise IndexError(f"head {head} out of range: layer {self.layer} has heads 0..{self.n_heads - 1}")
        return int(head)

    def augmented(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W̃_Q, W̃_K)``: ``[W; b^T]`` (d+1 rows) when the layer has q or k biases, else ``W``.

        Per head, ``x̃^T W̃ = x^T W + b`` with ``x̃ = [x; 1]``.
        """
        wq, wk = self.W_Q, self.W_K
        if dtype is not None:
            wq, wk = wq.to(dtype), wk.to(dtype)
        if not self.has_bias:
            return wq, wk
        bq = torch.zeros(wq.shape[0], wq.shape[2], dtype=wq.dtype) if self.b_Q is None else self.b_Q.to(wq.dtype)
        bk = torch.zeros(wk.shape[0], wk.shape[2], dtype=wk.dtype) if self.b_K is None else self.b_K.to(wk.dtype)
        return torch.cat([wq, bq[:, None, :]], dim=1), torch.cat([wk, bk[:, None, :]], dim=1)


@dataclass(frozen=True, eq=False)
class ModelHeads:
    """All attention layers of a model, as extracted by :func:`extract_heads`."""

    architecture: str
    layers: tuple[LayerHeads, ...]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer(self, layer: int) -> LayerHeads:
        if not 0 <= int(layer) < len(self.layers):
            raise IndexError(f"layer {layer} out of range: the model has layers 0..{len(self.layers) - 1}")
        return self.layers[int(layer)]

    def check(self, layer: int, head: int) -> tuple[int, int]:
        """Validate a (layer, head) pair; raises IndexError naming the valid range."""
        lh = self.layer(layer)
        return int(layer), lh.check_head(head)

    @property
    def uniform(self) -> bool:
        """True when every layer has the same shapes and bias/norm structure (stackable)."""
        l0 = self.layers[0]
        return all(
            (l.W_Q.shape, l.W_K.shape, l.has_bias, l.qk_norm) == (l0.W_Q.shape, l0.W_K.shape, l0.has_bias, l0.qk_norm)
            for l in self.layers
        )


def rope_matrix(rotary: RotarySpec | None, head_dim: int, deltas) -> torch.Tensor:
    """``R_Δ`` (float64, shape ``(len(deltas), d_h, d_h)``) with ``R(p_i)^T R(p_j) = R_{p_j - p_i}``.

    Includes ``attention_scaling**2`` on the rotary block; identity on pass-through dims.
    """
    deltas = torch.as_tensor(np.asarray(deltas, dtype=np.float64))
    n = deltas.shape[0]
    out = torch.eye(head_dim, dtype=torch.float64).repeat(n, 1, 1)
    if rotary is None:
        return out
    half = rotary.rotary_dim // 2
    ang = deltas[:, None] * torch.as_tensor(rotary.inv_freq, dtype=torch.float64)[None, :]
    a2 = rotary.attention_scaling**2
    c, s = a2 * torch.cos(ang), a2 * torch.sin(ang)
    t = torch.arange(half)
    # R v = v*cos + rotate_half(v)*sin: (v_t, v_{t+h}) -> (c v_t - s v_{t+h}, s v_t + c v_{t+h})
    out[:, t, t] = c
    out[:, t + half, t + half] = c
    out[:, t, t + half] = -s
    out[:, t + half, t] = s
    return out


def norm_maps(lh: LayerHeads) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_q, L_k)`` float64, each (n_heads, d_h, d_h): the linear part of each query head's
    QK-norm, ``L = diag(g) P`` (``P = I − 11ᵀ/d_h`` with ``norm_center``, else I), and that of
    its key head (GQA-mapped), so that the normed query is ``L_q a / σ(a)`` and the middle matrix
    is ``L_qᵀ R_Δ L_k`` (docs/math.md §3.19)."""
    H, dh = lh.n_heads, lh.head_dim
    kv = torch.as_tensor(lh.kv_head(np.arange(H)))
    P = torch.eye(dh, dtype=torch.float64)
    if lh.norm_center:
        P = P - 1.0 / dh
    gq, gk = lh.q_gain.double(), lh.k_gain.double()
    gq = gq.expand(H, dh) if gq.dim() == 1 else gq
    gk = gk.expand(lh.n_kv_heads, dh) if gk.dim() == 1 else gk
    return gq[:, :, None] * P, gk[kv][:, :, None] * P
