"""The norms between the residual stream and a head, as maps of directions (docs/math.md §5.2–§5.3).

:func:`norm_map` identifies the linear part of a norm module — a per-coordinate gain after an
optional mean removal — on the module itself; :func:`input_norm_maps` gives it for every
layer's input norm (``ln_1`` / ``input_layernorm``; identity for post-norm BERT and for blocks
without one, e.g. OLMo-2), :func:`final_norm_map` for the final norm. Used by the token readouts
(:mod:`svfcheck.real.readouts`) and the dictionary alignment (:mod:`svfcheck.real.dictionary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .heads import architecture_of, attention_modules, cached_heads

__all__ = ["NormMap", "norm_map", "input_norms", "input_norm_maps", "final_norm_map", "bert_embeddings", "unwrap_model"]

#: The block attribute holding the input norm of a pre-norm architecture (a block with neither,
#: e.g. OLMo-2, which norms the outputs of its sublayers, feeds the residual stream to the head).
_INPUT_NORM_ATTRS = ("input_layernorm", "ln_1")
_FINAL_NORM_NAMES = ("ln_f", "final_layer_norm", "norm")
#: A candidate linear map must reproduce the norm's output direction on random probes to this.
_PROBE_COS = 1 - 1e-6


@dataclass(frozen=True, eq=False)
class NormMap:
    """The linear part of a norm acting on directions: ``a ↦ gain ⊙ (a − mean(a)·1)`` (centering
    only for LayerNorm). The per-token factor ``1/σ`` is positive and LayerNorm's bias is a
    constant offset, so neither changes a direction (docs/math.md §5.3). ``gain`` None: identity."""

    name: str
    gain: np.ndarray | None
    center: bool

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Map the rows of ``X`` (n, d) (or one vector (d,))."""
        X = np.asarray(X, dtype=np.float64)
        if self.center:
            X = X - X.mean(axis=-1, keepdims=True)
        return X if self.gain is None else X * self.gain


def unwrap_model(model):
    """``(module, tokenizer or None)`` of a :class:`~svfcheck.real.models.LoadedModel` or a bare module."""
    if hasattr(model, "model") and hasattr(model, "tokenizer") and isinstance(model.model, torch.nn.Module):
        return model.model, model.tokenizer
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a transformers model or a LoadedModel (svfcheck.load_model); got {type(model).__name__}")
    return model, None


# ----------------------------------------------------------------------------- norms


def norm_map(norm: torch.nn.Module | None, name: str, d: int) -> NormMap:
    """The :class:`NormMap` of a norm module (``None``: identity), identified on the module itself.

    Candidates, in order: a gain equal to the module's ``weight``, to ``1 + weight`` (Gemma's
    RMSNorm), to ``N(1) − N(0)`` (measured), or none; with mean removal when the module maps a
    constant vector to ``N(0)`` (LayerNorm, Cohere's LayerNorm). The first candidate whose map
    reproduces ``N(x) − N(0)`` in direction on two random probes (cos > 1 − 1e-6) is taken, so
    the map is that of the module as the model applies it (e.g. in its own precision). Raises
    ``ValueError`` when none does: the module is not a per-coordinate gain of the (centred) input
    up to a positive factor per token."""
    if norm is None:
        return NormMap("identity", None, False)
    p = next(norm.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    g = torch.Generator().manual_seed(0)
    probes = torch.randn(2, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        zero = norm(torch.zeros(1, d, dtype=dtype)).double()[0]
        const = (norm(torch.ones(1, d, dtype=dtype)).double()[0] - zero).numpy()
        got = (norm(probes.to(dtype)).double() - zero).numpy()
    center = bool(np.linalg.norm(const) <= 1e-6 * np.linalg.norm(got[0]))
    w = getattr(norm, "weight", None)
    gains = []
    if isinstance(w, torch.Tensor) and tuple(w.shape) == (d,):
        w = w.detach().double().numpy().copy()
        gains += [w, 1.0 + w]
    if not center:
        gains.append(const.copy())
    gains.append(None)
    for gain in gains:
        nm = NormMap(name, gain, center)
        want = nm.apply(probes.numpy())
        cos = np.sum(got * want, 1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-300)
        if bool(np.all(cos > _PROBE_COS)):
            return nm
    raise ValueError(f"the norm {name} ({type(norm).__name__}) does not act on directions as a per-coordinate gain "
                     "(after an optional mean removal); readouts of this architecture are not supported")


def _named(model) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def bert_embeddings(model):
    for n, m in model.named_modules():
        if n.split(".")[-1] == "embeddings" and hasattr(m, "LayerNorm") and hasattr(m, "word_embeddings"):
            return n, m
    raise ValueError(f"no BERT embeddings module found in {type(model).__name__}")


def input_norms(model) -> list[tuple[str, torch.nn.Module | None]]:
    """Per layer, (name, module) of the norm between the residual stream and the head: the
    attention's block's ``input_layernorm`` / ``ln_1``; ``("none", None)`` for a block without
    one (OLMo-2); for post-norm BERT the embeddings LayerNorm (see :func:`input_norm_maps`)."""
    arch, _ = architecture_of(model)
    mods = attention_modules(model)
    if arch == "bert":
        name, emb = bert_embeddings(model)
        return [(f"{name}.LayerNorm", emb.LayerNorm)] * len(mods)
    names = _named(model)
    out = []
    for mod in mods:
        block = names[id(mod)].rpartition(".")[0]
        parent = model.get_submodule(block)
        attr = next((a for a in _INPUT_NORM_ATTRS if isinstance(getattr(parent, a, None), torch.nn.Module)), None)
        out.append(("none (the block has no input norm)", None) if attr is None else (f"{block}.{attr}", getattr(parent, attr)))
    return out


def input_norm_maps(model) -> list[NormMap]:
    """Per layer, the linear part of the map from a residual-stream direction to the head's
    input: the block's input norm (``ln_1`` / ``input_layernorm``). BERT is post-norm: its
    residual stream *is* the head input, so the map is the identity at every layer."""
    model, _ = unwrap_model(model)
    arch, _ = architecture_of(model)
    norms = input_norms(model)
    d = cached_heads(model).layers[0].d_model
    if arch == "bert":
        return [NormMap("identity (post-norm: the residual stream is the head input)", None, False)] * len(norms)
    return [norm_map(m, n, d) for n, m in norms]


def final_norm_map(model) -> NormMap:
    """The linear part of the model's final norm (``ln_f``, ``final_layer_norm``, ``norm``);
    identity when there is none."""
    model, _ = unwrap_model(model)
    for n, m in model.named_modules():
        parts = n.split(".")
        if parts[-1] in _FINAL_NORM_NAMES and not any(p.isdigit() for p in parts):
            return norm_map(m, n, cached_heads(model).layers[0].d_model)
    return NormMap("identity", None, False)
