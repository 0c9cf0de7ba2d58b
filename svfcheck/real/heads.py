"""Exact per-head query/key extraction from ``transformers`` models (docs/math.md §3.1, §3.9–§3.12, §3.17–§3.21).

:func:`extract_heads` reads, for every attention layer, the query/key maps, biases, rotary
spec, the module's own attention scale, the GQA key-head mapping, QK-norm gains and the
sliding window, into frozen dataclasses; the per-family readers live in
:mod:`svfcheck.real.families`. Conventions (all heads, all architectures):

- the *raw* query of head h at token x is ``a = W_Q[h]^T x + b_Q[h]`` (``W_Q[h]`` is d×d_h);
  the raw key of key head g is ``b = W_K[g]^T x + b_K[g]``;
- with QK-norm, ``a -> g_q ⊙ P a / σ(a)`` with ``P`` the identity (RMSNorm) or the centring
  ``I − 11ᵀ/d_h`` (LayerNorm), ``σ(a) = sqrt(mean((P a)^2) + eps)`` over the head (or, for
  OLMo-2, over the token's whole projection);
- with RoPE (rotate-half convention, first ``rotary_dim`` dims), ``a -> R(pos) a``; models that
  rotate interleaved pairs have their head coordinates permuted at extraction (§3.18);
- logit ``ℓ = scale · <a, b>`` after those maps, soft-capped to ``cap·tanh(ℓ/cap)`` where the
  model does (§3.21). Query head h uses key head ``h // (n_heads // n_kv_heads)``.
"""

from __future__ import annotations

import weakref

import torch

from .head_types import LayerHeads, ModelHeads, RotarySpec, norm_maps, rope_matrix

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
    "norm_maps",
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
    "gemma2": "Gemma2Attention",
    "qwen3": "Qwen3Attention",
    "olmo2": "Olmo2Attention",
    "phi3": "Phi3Attention",
    "gptj": "GPTJAttention",
    "cohere": "CohereAttention",
    "stablelm": "StableLmAttention",
    "granite": "GraniteAttention",
    "smollm3": "SmolLM3Attention",
}


def _attention_modules(model, cls_name: str) -> list:
    mods = [m for m in model.modules() if type(m).__name__ == cls_name]
    if not mods:
        raise ValueError(f"no {cls_name} modules found in {type(model).__name__}")
    return mods


def _rotary_module(model):
    for m in model.modules():
        if type(m).__name__.endswith("RotaryEmbedding"):
            return m
    raise ValueError(f"no rotary embedding module found in {type(model).__name__}")


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

    Raises ``ValueError`` for an unsupported architecture (naming the supported ones), for an
    attention option that cannot be decomposed exactly (naming the option) and for NaN/inf
    weights (naming the layer).
    """
    from .families import EXTRACTORS, ROPE_FREE

    model_type, config = architecture_of(model)
    mods = attention_modules(model)
    rot = _rotary_module(model) if model_type not in ROPE_FREE else None
    layers = []
    with torch.no_grad():
        for idx, mod in enumerate(mods):
            lh = EXTRACTORS[model_type](mod, idx, config, rot)
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
