"""Exact per-head query/key extraction from ``transformers`` models (docs/math.md §3.1, §3.9–§3.12).

:func:`extract_heads` reads, for every attention layer, the query/key maps, biases, rotary
spec, the module's own attention scale, the GQA key-head mapping, QK-norm gains and the
sliding window, into frozen dataclasses. Conventions (all heads, all architectures):

- the *raw* query of head h at token x is ``a = W_Q[h]^T x + b_Q[h]`` (``W_Q[h]`` is d×d_h);
  the raw key of key head g is ``b = W_K[g]^T x + b_K[g]``;
- with QK-norm, ``a -> g_q ⊙ a / rms(a)`` with ``rms(a) = sqrt(mean(a^2) + eps)``;
- with RoPE (HF rotate-half convention, first ``rotary_dim`` dims), ``a -> R(pos) a``;
- logit ``ℓ = scale · <a, b>`` after those maps. Query head h uses key head
  ``h // (n_heads // n_kv_heads)``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "RotarySpec",
    "LayerHeads",
    "ModelHeads",
    "extract_heads",
    "rope_matrix",
    "architecture_of",
    "attention_modules",
    "cached_heads",
]

#: model_type -> attention module class name (self-attention only).
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "gpt2": "GPT2Attention",
    "gpt_neox": "GPTNeoXAttention",
    "llama": "LlamaAttention",
    "mistral": "MistralAttention",
    "qwen2": "Qwen2Attention",
    "gemma3_text": "Gemma3Attention",
    "bert": "BertSelfAttention",
}


@dataclass(frozen=True, eq=False)
class RotarySpec:
    """RoPE of one layer: rotate-half convention on the first ``rotary_dim`` head dims.

    Rotation angle of pair t (t < rotary_dim/2, dims t and t + rotary_dim/2) at position p is
    ``p * inv_freq[t]``; cos and sin are multiplied by ``attention_scaling`` (rotary dims only).
    """

    rotary_dim: int
    inv_freq: np.ndarray  # (rotary_dim // 2,) float64
    attention_scaling: float = 1.0
    rope_type: str = "default"
    convention: str = "rotate_half"


@dataclass(frozen=True, eq=False)
class LayerHeads:
    """Query/key maps of all heads of one attention layer (tensors in the model's dtype)."""

    layer: int
    W_Q: torch.Tensor  # (n_heads, d, d_h)
    W_K: torch.Tensor  # (n_kv_heads, d, d_h)
    b_Q: torch.Tensor | None  # (n_heads, d_h)
    b_K: torch.Tensor | None  # (n_kv_heads, d_h)
    scale: float
    rotary: RotarySpec | None
    q_gain: torch.Tensor | None  # (d_h,) effective QK-norm gain (Gemma: 1 + w)
    k_gain: torch.Tensor | None
    norm_eps: float | None
    sliding_window: int | None
    causal: bool

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


def _attention_modules(model, cls_name: str) -> list:
    mods = [m for m in model.modules() if type(m).__name__ == cls_name]
    if not mods:
        raise ValueError(f"no {cls_name} modules found in {type(model).__name__}")
    return mods


def _split_rows(weight: torch.Tensor, n: int, d_h: int) -> torch.Tensor:
    """nn.Linear weight (n*d_h, d) -> (n, d, d_h) per-head maps."""
    return weight.detach().reshape(n, d_h, weight.shape[1]).transpose(1, 2).clone()


def _split_bias(bias: torch.Tensor | None, n: int, d_h: int) -> torch.Tensor | None:
    return None if bias is None else bias.detach().reshape(n, d_h).clone()


def _rotary_module(model):
    for m in model.modules():
        if type(m).__name__.endswith("RotaryEmbedding"):
            return m
    raise ValueError(f"no rotary embedding module found in {type(model).__name__}")


def _rotary_spec(rot, layer_type: str | None, rotary_dim: int) -> RotarySpec:
    if layer_type is not None and hasattr(rot, f"{layer_type}_inv_freq"):
        inv = getattr(rot, f"{layer_type}_inv_freq")
        scaling = getattr(rot, f"{layer_type}_attention_scaling")
        rtype = getattr(rot, "rope_type", {}).get(layer_type, "default") if isinstance(getattr(rot, "rope_type", None), dict) else "default"
    else:
        inv, scaling, rtype = rot.inv_freq, rot.attention_scaling, getattr(rot, "rope_type", "default")
    inv = inv.detach().double().cpu().numpy().copy()
    if 2 * inv.shape[0] != rotary_dim:
        raise ValueError(f"rotary embedding has {inv.shape[0]} frequencies, expected rotary_dim/2 = {rotary_dim // 2}")
    if rtype not in ("default", "linear", "llama3", "yarn", "longrope"):
        raise ValueError(f"RoPE type {rtype!r} is not supported (position-dependent frequencies)")
    return RotarySpec(rotary_dim=rotary_dim, inv_freq=inv, attention_scaling=float(scaling), rope_type=str(rtype))


def _layer(model_type: str, mod, idx: int, config, rot) -> LayerHeads:
    if model_type == "gpt2":
        d = mod.embed_dim
        H, dh = mod.num_heads, mod.head_dim
        w, b = mod.c_attn.weight.detach(), mod.c_attn.bias  # Conv1D: y = x @ w + b, w (d, 3d)
        wq = w[:, :d].reshape(d, H, dh).permute(1, 0, 2).clone()
        wk = w[:, d : 2 * d].reshape(d, H, dh).permute(1, 0, 2).clone()
        bq = None if b is None else b.detach()[:d].reshape(H, dh).clone()
        bk = None if b is None else b.detach()[d : 2 * d].reshape(H, dh).clone()
        return LayerHeads(idx, wq, wk, bq, bk, float(mod.scaling), None, None, None, None, None, True)
    if model_type == "gpt_neox":
        dh = mod.head_size
        w = mod.query_key_value.weight.detach()  # (3d, d), rows per head: [q | k | v] blocks of d_h
        H = w.shape[0] // (3 * dh)
        blocks = w.reshape(H, 3, dh, w.shape[1])
        wq, wk = blocks[:, 0].transpose(1, 2).clone(), blocks[:, 1].transpose(1, 2).clone()
        b = mod.query_key_value.bias
        bq = bk = None
        if b is not None:
            bb = b.detach().reshape(H, 3, dh)
            bq, bk = bb[:, 0].clone(), bb[:, 1].clone()
        rs = _rotary_spec(rot, None, int(mod.rotary_ndims))
        return LayerHeads(idx, wq, wk, bq, bk, float(mod.scaling), rs, None, None, None, None, True)
    if model_type in ("llama", "mistral", "qwen2", "gemma3_text"):
        dh = mod.head_dim
        H = mod.q_proj.weight.shape[0] // dh
        Hkv = mod.k_proj.weight.shape[0] // dh
        wq, wk = _split_rows(mod.q_proj.weight, H, dh), _split_rows(mod.k_proj.weight, Hkv, dh)
        bq, bk = _split_bias(mod.q_proj.bias, H, dh), _split_bias(mod.k_proj.bias, Hkv, dh)
        layer_type = getattr(mod, "layer_type", None)
        rs = _rotary_spec(rot, layer_type, dh)
        window = getattr(mod, "sliding_window", None)
        if model_type == "mistral":
            window = getattr(config, "sliding_window", None)
        qg = kg = eps = None
        if model_type == "gemma3_text":
            qg = (1.0 + mod.q_norm.weight.detach().double()).to(wq.dtype)
            kg = (1.0 + mod.k_norm.weight.detach().double()).to(wq.dtype)
            eps = float(mod.q_norm.eps)
            if float(mod.k_norm.eps) != eps:
                raise ValueError("q_norm and k_norm eps differ; not supported")
        causal = bool(getattr(mod, "is_causal", True))
        return LayerHeads(idx, wq, wk, bq, bk, float(mod.scaling), rs, qg, kg, eps, None if window is None else int(window), causal)
    if model_type == "bert":
        dh = mod.attention_head_size
        H = mod.num_attention_heads
        pet = getattr(config, "position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(f"BERT position_embedding_type={pet!r} adds non-bilinear terms; only 'absolute' is supported")
        wq, wk = _split_rows(mod.query.weight, H, dh), _split_rows(mod.key.weight, H, dh)
        bq, bk = _split_bias(mod.query.bias, H, dh), _split_bias(mod.key.bias, H, dh)
        return LayerHeads(idx, wq, wk, bq, bk, float(mod.scaling), None, None, None, None, None, bool(mod.is_causal))
    raise AssertionError(model_type)  # pragma: no cover


def _check_finite(lh: LayerHeads) -> None:
    for name in ("W_Q", "W_K", "b_Q", "b_K", "q_gain", "k_gain"):
        t = getattr(lh, name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"layer {lh.layer}: {name} contains NaN or inf weights")


def architecture_of(model) -> tuple[str, object]:
    """``(model_type, config)`` of a supported model; ``ValueError`` naming the supported ones."""
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    if mt == "gemma3" and hasattr(config, "text_config"):
        mt, config = "gemma3_text", config.text_config
    if mt not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {mt!r} ({type(model).__name__}); supported: "
            + ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        )
    return mt, config


def attention_modules(model) -> list:
    """The self-attention modules of ``model`` in layer order (index = layer)."""
    mt, _ = architecture_of(model)
    mods = _attention_modules(model, SUPPORTED_ARCHITECTURES[mt])
    if mt == "gpt2":
        mods = [m for m in mods if not m.is_cross_attention]
    return mods


def extract_heads(model) -> ModelHeads:
    """Extract every attention layer's query/key maps from a ``transformers`` model.

    Raises ``ValueError`` for an unsupported architecture (naming the supported ones) and for
    NaN/inf weights (naming the layer).
    """
    model_type, config = architecture_of(model)
    mods = attention_modules(model)
    rot = _rotary_module(model) if model_type not in ("gpt2", "bert") else None
    layers = []
    with torch.no_grad():
        for idx, mod in enumerate(mods):
            lh = _layer(model_type, mod, idx, config, rot)
            _check_finite(lh)
            if lh.n_heads % lh.n_kv_heads:
                raise ValueError(f"layer {idx}: {lh.n_heads} query heads not divisible by {lh.n_kv_heads} kv heads")
            layers.append(lh)
    return ModelHeads(architecture=model_type, layers=tuple(layers))


_HEADS: "weakref.WeakKeyDictionary[object, tuple[tuple, ModelHeads]]" = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    return tuple((p.data_ptr(), p._version) for m in attention_modules(model) for p in m.parameters())


def cached_heads(model) -> ModelHeads:
    """:func:`extract_heads` cached per model, keyed by weight identity: re-extracted when any
    attention parameter is replaced or modified in place. Reuse the returned object so that
    :func:`svfcheck.real.svd_cache.svd_cache` (keyed by it) is reused too."""
    fp = _fingerprint(model)
    hit = _HEADS.get(model)
    if hit is not None and hit[0] == fp:
        return hit[1]
    heads = extract_heads(model)
    _HEADS[model] = (fp, heads)
    return heads
