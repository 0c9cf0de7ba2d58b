"""Per-family readers of attention layers (docs/math.md §3.1, §3.9–§3.12, §3.17–§3.21).

One function per ``config.model_type`` (:data:`EXTRACTORS`), each ``(module, layer index,
config, rotary module) -> LayerHeads``. They read the model's own modules — projection weights
and biases, ``module.scaling``, the rotary module's ``inv_freq`` and ``attention_scaling``, the
norms' weights and eps, the module's sliding window, causality and logit cap — rather than
re-deriving config defaults, so a model's non-default options are what gets decomposed. An
option that the decomposition cannot reproduce exactly is a ``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .head_types import LayerHeads, RotarySpec

__all__ = ["EXTRACTORS", "ROPE_FREE", "ROPE_TYPES"]

#: Architectures without a rotary module.
ROPE_FREE = ("gpt2", "bert")

#: RoPE types with frequencies that do not depend on the position (``dynamic`` and ``longrope``
#: only up to a prompt length, :attr:`~svfcheck.real.heads.RotarySpec.max_positions`).
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "dynamic")


def _split_rows(weight: torch.Tensor, n: int, d_h: int) -> torch.Tensor:
    """nn.Linear weight (n*d_h, d) -> (n, d, d_h) per-head maps."""
    return weight.detach().reshape(n, d_h, weight.shape[1]).transpose(1, 2).clone()


def _split_bias(bias: torch.Tensor | None, n: int, d_h: int) -> torch.Tensor | None:
    return None if bias is None else bias.detach().reshape(n, d_h).clone()


def _projections(mod) -> tuple:
    """``(W_Q, W_K, b_Q, b_K)`` of a module with separate ``q_proj``/``k_proj`` and ``head_dim``."""
    dh = mod.head_dim
    H, Hkv = mod.q_proj.weight.shape[0] // dh, mod.k_proj.weight.shape[0] // dh
    return (_split_rows(mod.q_proj.weight, H, dh), _split_rows(mod.k_proj.weight, Hkv, dh),
            _split_bias(mod.q_proj.bias, H, dh), _split_bias(mod.k_proj.bias, Hkv, dh))


def _rope_limit(rot, rtype: str, layer_type: str | None) -> int | None:
    """The longest prompt for which a length-dependent RoPE keeps its initial frequencies."""
    if rtype == "dynamic":  # rescaled once a prompt exceeds the original length
        return int(rot.original_max_seq_len)
    if rtype == "longrope":  # long factors beyond original_max_position_embeddings
        params = rot.config.rope_parameters
        params = params.get(layer_type, params) if layer_type is not None else params
        return int(params["original_max_position_embeddings"])
    return None


def _rotary_spec(rot, layer_type: str | None, rotary_dim: int, convention: str = "rotate_half") -> RotarySpec:
    """The layer's RoPE, read from the rotary module (per layer type where it has one table per
    type, as Gemma3 does). Length-dependent types (``dynamic``, ``longrope``) take the module's
    original frequencies and the length up to which they hold (docs/math.md §3.20)."""
    prefix = ""
    if layer_type is not None and hasattr(rot, f"{layer_type}_inv_freq"):
        prefix = f"{layer_type}_"
        rtype = rot.rope_type.get(layer_type, "default") if isinstance(getattr(rot, "rope_type", None), dict) else "default"
    else:
        rtype = getattr(rot, "rope_type", "default")
    if rtype not in ROPE_TYPES:
        raise ValueError(f"RoPE type {rtype!r} is not supported (supported: {', '.join(ROPE_TYPES)}); svfcheck "
                         "cannot decompose its rotation exactly: use a model whose rope_type is one of those")
    limit = _rope_limit(rot, rtype, layer_type)
    inv = getattr(rot, f"{prefix}original_inv_freq" if limit is not None else f"{prefix}inv_freq")
    scaling = getattr(rot, f"{prefix}attention_scaling")
    inv = inv.detach().double().cpu().numpy().copy()
    if 2 * inv.shape[0] != rotary_dim:
        raise ValueError(f"rotary embedding has {inv.shape[0]} frequencies, expected rotary_dim/2 = {rotary_dim // 2}")
    order = _interleaved_order(rotary_dim) if convention == "interleaved" else None
    return RotarySpec(rotary_dim=rotary_dim, inv_freq=inv, attention_scaling=float(scaling), rope_type=str(rtype),
                      convention=convention, head_order=order, max_positions=limit,
                      state_attr=None if limit is None else f"{prefix}inv_freq")


def _interleaved_order(rotary_dim: int) -> np.ndarray:
    """The model's coordinate of each rotate-half coordinate over the rotary dims: svfcheck's
    dims t and t + rotary_dim/2 are the model's interleaved pair 2t, 2t + 1 (docs/math.md §3.18)."""
    return np.concatenate([np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2)])


def _permuted(lh_kw: dict, rs: RotarySpec, dh: int) -> dict:
    """``lh_kw`` with every per-coordinate tensor (maps, biases, per-dim gains) in rotate-half
    order (docs/math.md §3.18): the model's coordinate ``head_order[c]`` becomes coordinate c;
    pass-through coordinates keep their place."""
    order = torch.as_tensor(np.concatenate([rs.head_order, np.arange(rs.rotary_dim, dh)]))
    out = dict(lh_kw)
    for name in ("W_Q", "W_K", "b_Q", "b_K", "q_gain", "k_gain"):
        t = out.get(name)
        if t is not None:
            out[name] = t.index_select(-1, order).clone()
    return out


def _norm_eps(norm) -> float:
    eps = getattr(norm, "eps", None)
    return float(norm.variance_epsilon if eps is None else eps)


def _qk_eps(q_norm, k_norm) -> float:
    eps = _norm_eps(q_norm)
    if _norm_eps(k_norm) != eps:
        raise ValueError("q_norm and k_norm eps differ; not supported")
    return eps


def _heads(idx: int, mod, kw: dict) -> LayerHeads:
    """A :class:`LayerHeads` from keyword fields; ``scale`` and ``causal`` from the module."""
    kw.setdefault("scale", float(mod.scaling))
    kw.setdefault("causal", bool(getattr(mod, "is_causal", True)))
    for name in ("rotary", "q_gain", "k_gain", "norm_eps", "sliding_window"):
        kw.setdefault(name, None)
    return LayerHeads(layer=idx, **kw)


def _window(mod) -> int | None:
    w = getattr(mod, "sliding_window", None)
    return None if w is None else int(w)


def _softcap(mod) -> float | None:
    cap = getattr(mod, "attn_logit_softcapping", None)
    return None if cap is None else float(cap)


# ---------- one reader per family ----------


def gpt2(mod, idx, config, rot) -> LayerHeads:
    d = mod.embed_dim
    H, dh = mod.num_heads, mod.head_dim
    w, b = mod.c_attn.weight.detach(), mod.c_attn.bias  # Conv1D: y = x @ w + b, w (d, 3d)
    wq = w[:, :d].reshape(d, H, dh).permute(1, 0, 2).clone()
    wk = w[:, d : 2 * d].reshape(d, H, dh).permute(1, 0, 2).clone()
    bq = None if b is None else b.detach()[:d].reshape(H, dh).clone()
    bk = None if b is None else b.detach()[d : 2 * d].reshape(H, dh).clone()
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, causal=True))


def gpt_neox(mod, idx, config, rot) -> LayerHeads:
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
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, causal=True))


def llama(mod, idx, config, rot) -> LayerHeads:
    """Llama and the families with its attention (Mistral, Qwen2, Granite: ``module.scaling`` is
    Granite's ``attention_multiplier``); any ``rope_scaling`` through :func:`_rotary_spec`."""
    wq, wk, bq, bk = _projections(mod)
    rs = _rotary_spec(rot, getattr(mod, "layer_type", None), mod.head_dim)
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else _window(mod)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs,
                                 sliding_window=None if window is None else int(window)))


def gemma3_text(mod, idx, config, rot) -> LayerHeads:
    """QK RMSNorm with gain ``1 + w`` (docs/math.md §3.12), local/global RoPE, sliding window.
    No soft cap: Gemma3's attention keeps ``attn_logit_softcapping`` but does not apply it."""
    wq, wk, bq, bk = _projections(mod)
    rs = _rotary_spec(rot, getattr(mod, "layer_type", None), mod.head_dim)
    qg = (1.0 + mod.q_norm.weight.detach().double()).to(wq.dtype)
    kg = (1.0 + mod.k_norm.weight.detach().double()).to(wq.dtype)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, q_gain=qg, k_gain=kg,
                                 norm_eps=_qk_eps(mod.q_norm, mod.k_norm), sliding_window=_window(mod)))


def gemma2(mod, idx, config, rot) -> LayerHeads:
    """Logit soft-capping (docs/math.md §3.21), sliding window on alternate layers,
    ``query_pre_attn_scalar`` (in ``module.scaling``)."""
    wq, wk, bq, bk = _projections(mod)
    rs = _rotary_spec(rot, None, mod.head_dim)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, sliding_window=_window(mod),
                                 softcap=_softcap(mod)))


def qwen3(mod, idx, config, rot) -> LayerHeads:
    """Per-head QK RMSNorm with gain ``w`` (not Gemma's ``1 + w``; docs/math.md §3.12)."""
    wq, wk, bq, bk = _projections(mod)
    rs = _rotary_spec(rot, None, mod.head_dim)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs,
                                 q_gain=mod.q_norm.weight.detach().clone(), k_gain=mod.k_norm.weight.detach().clone(),
                                 norm_eps=_qk_eps(mod.q_norm, mod.k_norm), sliding_window=_window(mod)))


def olmo2(mod, idx, config, rot) -> LayerHeads:
    """QK RMSNorm over the whole projection, before the head split (docs/math.md §3.19): one σ
    per token shared by its heads; the gains (one per projection coordinate) split per head."""
    wq, wk, bq, bk = _projections(mod)
    H, Hkv, dh = wq.shape[0], wk.shape[0], mod.head_dim
    rs = _rotary_spec(rot, None, dh)
    qg, kg = mod.q_norm.weight.detach(), mod.k_norm.weight.detach()
    if qg.numel() != H * dh or kg.numel() != Hkv * dh:
        raise ValueError(f"layer {idx}: OLMo-2 q_norm/k_norm cover {qg.numel()}/{kg.numel()} coordinates, "
                         f"expected the whole projections ({H * dh}/{Hkv * dh})")
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, q_gain=qg.reshape(H, dh).clone(),
                                 k_gain=kg.reshape(Hkv, dh).clone(), norm_eps=_qk_eps(mod.q_norm, mod.k_norm),
                                 norm_scope="all"))


def phi3(mod, idx, config, rot) -> LayerHeads:
    """Fused ``qkv_proj`` (rows: all query heads, all key heads, all value heads); partial rotary
    over the rotary module's ``2·len(inv_freq)`` leading dims."""
    dh = mod.head_dim
    w, b = mod.qkv_proj.weight.detach(), mod.qkv_proj.bias
    Hkv = int(mod.num_key_value_heads)
    H = (w.shape[0] - 2 * Hkv * dh) // dh
    q, k = slice(0, H * dh), slice(H * dh, (H + Hkv) * dh)
    wq, wk = _split_rows(w[q], H, dh), _split_rows(w[k], Hkv, dh)
    bq = None if b is None else _split_bias(b.detach()[q], H, dh)
    bk = None if b is None else _split_bias(b.detach()[k], Hkv, dh)
    rs = _rotary_spec(rot, None, 2 * int(rot.inv_freq.numel()))
    window = getattr(config, "sliding_window", None)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs,
                                 sliding_window=None if window is None else int(window)))


def _gptj_rotary(rot, rotary_dim: int) -> RotarySpec:
    """GPT-J's RoPE: no ``inv_freq`` buffer, a table ``[sin | cos](p·f)``; ``f`` is its own
    formula (float32, as the module computes it), checked against the module's table."""
    if int(rot.pos_embd_dim) != rotary_dim:
        raise ValueError(f"GPT-J rotary table covers {rot.pos_embd_dim} dims but the attention rotates {rotary_dim} "
                         "(rotary_dim=None with head_dim != hidden_size?); svfcheck cannot decompose it exactly")
    inv = (1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64) / rotary_dim))).double()
    table = rot.embed_positions.detach().double()[:64]
    ang = torch.arange(table.shape[0], dtype=torch.float64)[:, None] * inv
    if float((table - torch.cat([ang.sin(), ang.cos()], -1)).abs().max()) > 1e-4 * table.shape[0]:
        raise ValueError("GPT-J's rotary table is not sin/cos(p·10000^(-2t/rotary_dim)); svfcheck cannot decompose it exactly")
    return RotarySpec(rotary_dim=rotary_dim, inv_freq=inv.numpy().copy(), convention="interleaved",
                      tables="sin_cos_half", head_order=_interleaved_order(rotary_dim))


def gptj(mod, idx, config, rot) -> LayerHeads:
    """Interleaved rotary (pairs 2t, 2t+1) on the first ``rotary_dim`` dims (docs/math.md §3.18)."""
    dh, H = mod.head_dim, mod.num_attention_heads
    wq, wk = _split_rows(mod.q_proj.weight, H, dh), _split_rows(mod.k_proj.weight, H, dh)
    bq, bk = _split_bias(mod.q_proj.bias, H, dh), _split_bias(mod.k_proj.bias, H, dh)
    rs = _gptj_rotary(rot, dh if mod.rotary_dim is None else int(mod.rotary_dim))
    return _heads(idx, mod, _permuted(dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, causal=True), rs, dh))


def cohere(mod, idx, config, rot) -> LayerHeads:
    """Interleaved rotary (docs/math.md §3.18) and, with ``use_qk_norm``, a per-head QK
    LayerNorm with per-head gains (mean subtraction, no bias; §3.19)."""
    wq, wk, bq, bk = _projections(mod)
    dh = mod.head_dim
    rs = _rotary_spec(rot, None, dh, convention="interleaved")
    kw = dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs)
    if mod.use_qk_norm:
        kw.update(q_gain=mod.q_norm.weight.detach().reshape(wq.shape[0], dh).clone(),
                  k_gain=mod.k_norm.weight.detach().reshape(wk.shape[0], dh).clone(),
                  norm_eps=_qk_eps(mod.q_norm, mod.k_norm), norm_center=True)
    return _heads(idx, mod, _permuted(kw, rs, dh))


def _layernorm_gains(norms, idx: int, name: str, dh: int, dtype) -> tuple[torch.Tensor, float]:
    """Per-head gains (n, d_h) and the eps of a list of ``nn.LayerNorm`` (StableLM's per-head QK
    norm); a LayerNorm bias is refused (docs/math.md §3.19)."""
    gains, eps = [], {float(n.eps) for n in norms}
    for h, n in enumerate(norms):
        if getattr(n, "bias", None) is not None:
            raise ValueError(f"layer {idx}: {name}.norms[{h}] has a bias; a QK LayerNorm bias is added after the "
                             "per-token normalisation, so the logit is not a bilinear form of the token and svfcheck "
                             "cannot decompose it exactly (use a model whose QK LayerNorms have no bias)")
        gains.append(torch.ones(dh, dtype=dtype) if n.weight is None else n.weight.detach())
    if len(eps) != 1:
        raise ValueError(f"layer {idx}: the heads of {name} use different eps; not supported")
    return torch.stack(gains).clone(), eps.pop()


def stablelm(mod, idx, config, rot) -> LayerHeads:
    """Partial rotary (``module.rotary_ndims``), q/k biases and, with ``qk_layernorm``, one
    LayerNorm per head (mean subtraction; docs/math.md §3.19)."""
    wq, wk, bq, bk = _projections(mod)
    dh = mod.head_dim
    rs = _rotary_spec(rot, None, int(mod.rotary_ndims))
    kw = dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs)
    if mod.qk_layernorm:
        qg, eq = _layernorm_gains(mod.q_layernorm.norms, idx, "q_layernorm", dh, wq.dtype)
        kg, ek = _layernorm_gains(mod.k_layernorm.norms, idx, "k_layernorm", dh, wq.dtype)
        if eq != ek:
            raise ValueError("q_layernorm and k_layernorm eps differ; not supported")
        kw.update(q_gain=qg, k_gain=kg, norm_eps=eq, norm_center=True)
    return _heads(idx, mod, kw)


def smollm3(mod, idx, config, rot) -> LayerHeads:
    """Llama attention whose NoPE layers (``module.use_rope`` false, from ``no_rope_layers``) skip
    the rotation: those layers have no rotary spec (docs/math.md §3.20)."""
    wq, wk, bq, bk = _projections(mod)
    rs = _rotary_spec(rot, None, mod.head_dim) if mod.use_rope else None
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, rotary=rs, sliding_window=_window(mod)))


def bert(mod, idx, config, rot) -> LayerHeads:
    dh = mod.attention_head_size
    H = mod.num_attention_heads
    pet = getattr(config, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        raise ValueError(f"BERT position_embedding_type={pet!r} adds non-bilinear terms; only 'absolute' is supported")
    wq, wk = _split_rows(mod.query.weight, H, dh), _split_rows(mod.key.weight, H, dh)
    bq, bk = _split_bias(mod.query.bias, H, dh), _split_bias(mod.key.bias, H, dh)
    return _heads(idx, mod, dict(W_Q=wq, W_K=wk, b_Q=bq, b_K=bk, causal=bool(mod.is_causal)))


#: ``config.model_type`` -> its reader.
EXTRACTORS: dict[str, Callable] = {
    "gpt2": gpt2, "gpt_neox": gpt_neox, "llama": llama, "mistral": llama, "qwen2": llama, "granite": llama,
    "gemma3_text": gemma3_text, "bert": bert, "gemma2": gemma2, "qwen3": qwen3, "olmo2": olmo2, "phi3": phi3,
    "gptj": gptj, "cohere": cohere, "stablelm": stablelm, "smollm3": smollm3,
}
