"""Readouts: what a head's singular vectors mean in token space (docs/math.md §5.1–§5.2).

For a head (layer l, query head h, key head g = kv(h)) the basis is the SVD of the zero-offset
matrix ``Ω̃(0) = W̃_Q L_qᵀ R_0 L_k W̃_Kᵀ`` (docs/math.md §3.10: with RoPE this is the matrix at
offset Δ = 0; biases through the augmented coordinate ``x̃ = [x; 1]``, §3.1; QK-norm's linear
parts ``L`` in the middle, §3.12, §3.19), read from the model's shared SVD cache (:meth:`SVDCache.basis
<svfcheck.real.svd_cache.SVDCache.basis>`, §4.3) — no second SVD path. Signs: each pair
``(u_r, v_r)`` is canonicalised by :func:`~svfcheck.real.svd.sign_fix`, so flipping both
changes nothing below.

:func:`singular_readouts` scores every token of the vocabulary on the query side
(``α_r(t) = ν_q(t)·x̃_tᵀu_r``) and on the key side (``β_r(t) = ν_k(t)·x̃_tᵀv_r``), where
``x_t`` is the token's embedding passed through the layer's input norm as the model applies
it (``ν`` = 1 without QK-norm, else the per-token ``1/σ`` of §3.12, §3.19), and reports the two
poles: ``*_top`` (largest scores) and ``*_bottom`` (most negative). A query of a pole and a key
of the same pole give a positive term ``scale·α_r s_r β_r``; across poles a negative one.
When the model exposes an unembedding (an ``lm_head`` or tied input embeddings) it also
reports the tokens whose unembedding rows point most along ``u_r`` and ``v_r`` (after the
linear part of the final norm). :data:`READOUT_NOTES` states every convention; the norms as
maps of directions are :mod:`svfcheck.real.readout_norms`; the dictionary alignment
(§5.3–§5.4) is :mod:`svfcheck.real.dictionary`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .heads import ModelHeads, architecture_of, cached_heads
from .readout_norms import NormMap, bert_embeddings, final_norm_map, input_norm_maps, input_norms, norm_map, unwrap_model
from .svd import sign_fix
from .svd_cache import svd_cache

__all__ = [
    "READOUT_NOTES",
    "HeadBasis",
    "NormMap",
    "norm_map",
    "unwrap_model",
    "resolve_heads",
    "head_basis",
    "input_norm_maps",
    "final_norm_map",
    "unembedding",
    "token_readouts",
    "singular_readouts",
]

#: Vocabulary rows embedded, normed and scored at once (bounds memory for 262k-token vocabularies).
_CHUNK = 8192
#: Architectures with absolute position embeddings (left out of the token readouts, §5.2).
_ABSOLUTE_POSITIONS = frozenset({"gpt2", "bert"})

READOUT_NOTES = {
    "basis": "SVD of the zero-offset matrix Ω̃(0) = W̃_Q L_qᵀ R_0 L_k W̃_Kᵀ of query head h and key head kv(h) "
             "(docs/math.md §3.10, §4.3, §5.1): with RoPE the matrix at offset 0; q/k biases through x̃ = [x; 1]; "
             "QK-norm's linear parts L included. Top r triples by singular value.",
    "signs": "each (u_r, v_r) is canonicalised (largest-|.| entry of u_r positive, v_r flipped with it), so the "
             "output does not depend on the sign the SVD returned",
    "token_scores": "query score α_r(t) = ν_q(t)·x̃_tᵀu_r, key score β_r(t) = ν_k(t)·x̃_tᵀv_r; x_t = the layer's input "
                    "norm applied (by the model's own module) to the token embedding (no position embedding; BERT: "
                    "word + token-type-0 embedding through embeddings.LayerNorm; no norm where the block has none, e.g. "
                    "OLMo-2); ν = 1/σ of the raw query/key with QK-norm, else 1 (docs/math.md §3.19, §5.2)",
    "poles": "*_top: largest scores, *_bottom: most negative. A query from query_top and a key from key_top give a "
             "positive term scale·α_r·s_r·β_r (likewise bottom with bottom); a query and a key from opposite poles "
             "give a negative one",
    "token_path": "'layer input': the exact head input of a one-token prompt at layer 0; 'layer input without "
                  "position embedding' (GPT-2, BERT layer 0); 'direct path': deeper layers — the embedding alone "
                  "through layer l's input norm, as if no earlier layer had written to the residual stream",
    "unembedding": "tokens whose unembedding rows W_U[t] have the largest (top) / smallest (bottom) dot product with "
                   "N_f(u_r[:d]) / ‖N_f(u_r[:d])‖ (likewise v_r), N_f the linear part of the final norm; u_r[:d] is "
                   "read as a residual-stream vector (the input norm's gain is not inverted)",
    "softcap": "with logit soft-capping (Gemma-2) the terms are those of the logit before the cap (docs/math.md §3.21)",
}


@dataclass(frozen=True, eq=False)
class HeadBasis:
    """The top ``r`` singular triples of one head's ``Ω̃(0)`` (float64, canonical signs).

    ``U``, ``V``: (D, r) with D = d_model, or d_model + 1 when the layer has q/k biases (last
    coordinate: the constant 1 of ``x̃``); ``S``: (r,) descending. ``scale``: the module's
    attention scale (a term is ``scale·α_r·s_r·β_r``).
    """

    layer: int
    head: int
    kv_head: int
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    d_model: int
    scale: float

    @property
    def r(self) -> int:
        return self.S.shape[0]

    @property
    def augmented(self) -> bool:
        return self.U.shape[0] == self.d_model + 1

    def canonical(self) -> "HeadBasis":
        """The same triples with the sign convention applied (a flipped pair comes back unflipped)."""
        U, V = sign_fix(torch.from_numpy(self.U), torch.from_numpy(self.V))
        return HeadBasis(self.layer, self.head, self.kv_head, U.numpy(), self.S.copy(), V.numpy(),
                         self.d_model, self.scale)


def resolve_heads(heads: ModelHeads, spec: Iterable | None) -> list[tuple[int, int]]:
    """``spec`` as a list of valid (layer, head) pairs; ``None``: every head of layer 0.

    Raises ``ValueError`` naming the pair and the valid range for a layer or head out of range,
    a malformed pair, a repeated pair or an empty list."""
    if spec is None:
        return [(0, h) for h in range(heads.layers[0].n_heads)]
    out: list[tuple[int, int]] = []
    for item in spec:
        try:
            layer, head = item
            ok = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (layer, head))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"a head is a (layer, head) pair of whole numbers, e.g. (0, 3); got {item!r}")
        layer, head = int(layer), int(head)
        if not 0 <= layer < heads.n_layers:
            raise ValueError(f"head {layer}.{head}: layer {layer} is out of range; the model has layers 0..{heads.n_layers - 1}")
        n = heads.layers[layer].n_heads
        if not 0 <= head < n:
            raise ValueError(f"head {layer}.{head}: head {head} is out of range; layer {layer} has heads 0..{n - 1}")
        if (layer, head) in out:
            raise ValueError(f"head {layer}.{head} is listed twice; list each head once")
        out.append((layer, head))
    if not out:
        raise ValueError("no heads given; pass (layer, head) pairs, or None for every head of layer 0")
    return out


def _check_top_r(heads: ModelHeads, layer: int, top_r) -> int:
    d_h = heads.layer(layer).head_dim
    if isinstance(top_r, bool) or not isinstance(top_r, (int, np.integer)) or not 1 <= int(top_r) <= d_h:
        raise ValueError(f"top_r={top_r!r} must be a whole number from 1 to the head dimension d_h = {d_h} "
                         f"(layer {layer} has {d_h} singular values per head)")
    return int(top_r)


def head_basis(heads: ModelHeads, layer: int, head: int, top_r: int) -> HeadBasis:
    """The top ``top_r`` triples of head (layer, head) from the shared SVD cache (docs/math.md §4.3)."""
    (layer, head), = resolve_heads(heads, [(layer, head)])
    r = _check_top_r(heads, layer, top_r)
    lh = heads.layer(layer)
    U, S, V = svd_cache(heads).basis(layer)
    u, v = sign_fix(U[head, :, :r], V[head, :, :r])
    return HeadBasis(layer, head, int(lh.kv_head(head)), u.double().numpy().copy(), S[head, :r].double().numpy().copy(),
                     v.double().numpy().copy(), lh.d_model, float(lh.scale))


def unembedding(model) -> tuple[torch.Tensor | None, str]:
    """``(W_U (V, d), source)``: the output embedding (``lm_head``) or, for a base model whose
    config ties the embeddings, the input embedding matrix; ``(None, reason)`` otherwise."""
    model, _ = unwrap_model(model)
    arch, config = architecture_of(model)
    if arch == "bert":
        return None, "none: encoder model (no unembedding; the MLM head is not part of the loaded model)"
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    if out is not None:
        tied = out.weight is inp.weight
        return out.weight.detach(), "lm_head" + (" (tied to the input embeddings)" if tied else "")
    if getattr(config, "tie_word_embeddings", False) or getattr(model.config, "tie_word_embeddings", False):
        return inp.weight.detach(), "tied input embeddings (no output head loaded; config.tie_word_embeddings)"
    return None, "none: the model has no output head and does not tie its embeddings"


# ----------------------------------------------------------------------------- token scores


def _token_inputs(model, arch: str, norm: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Head inputs ``x_t`` (n, d) float64 of tokens ``ids``: embedding → input norm (module calls)."""
    with torch.no_grad():
        if arch == "bert":
            _, emb = bert_embeddings(model)
            e = emb.word_embeddings(ids) + emb.token_type_embeddings(torch.zeros_like(ids))
        else:
            e = model.get_input_embeddings()(ids)
            mult = getattr(model.config, "embedding_multiplier", None)  # Granite scales the embeddings in its forward
            if mult is not None:
                e = e * mult
        return (e if norm is None else norm(e)).double()


def _token_path(arch: str, layer: int) -> str:
    if layer > 0:
        return "direct path"
    return "layer input without position embedding" if arch in _ABSOLUTE_POSITIONS else "layer input"


def _layer_scores(model, arch: str, heads: ModelHeads, norm, bases: list[HeadBasis]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key scores (V, Σ r) of every vocabulary token for the bases of one layer."""
    lh = heads.layer(bases[0].layer)
    wq, wk = lh.augmented(torch.float64)
    Uc = torch.from_numpy(np.concatenate([b.U for b in bases], axis=1))
    Vc = torch.from_numpy(np.concatenate([b.V for b in bases], axis=1))
    cols = np.cumsum([0] + [b.r for b in bases])
    n_vocab = model.get_input_embeddings().weight.shape[0]
    Q, K = torch.empty(n_vocab, Uc.shape[1], dtype=torch.float64), torch.empty(n_vocab, Uc.shape[1], dtype=torch.float64)
    for lo in range(0, n_vocab, _CHUNK):
        ids = torch.arange(lo, min(n_vocab, lo + _CHUNK))
        x = _token_inputs(model, arch, norm, ids)
        if bases[0].augmented:
            x = torch.cat([x, torch.ones(len(ids), 1, dtype=x.dtype)], dim=1)
        q, k = x @ Uc, x @ Vc
        if lh.qk_norm:  # ν_ik = 1/(σ(a_i)·σ(b_k)) factorises into a query and a key factor (docs/math.md §3.12, §3.19)
            for b, c0, c1 in zip(bases, cols[:-1], cols[1:]):
                q[:, c0:c1] /= _sigma(lh, x, wq, b.head)[:, None]
                k[:, c0:c1] /= _sigma(lh, x, wk, b.kv_head)[:, None]
        Q[lo : lo + len(ids)], K[lo : lo + len(ids)] = q, k
    return Q, K


def _sigma(lh, x: torch.Tensor, W: torch.Tensor, head: int) -> torch.Tensor:
    """QK-norm's per-token σ (n,) of head ``head`` of the maps ``W`` (heads, D, d_h): over the
    head's coordinates (mean removed for a LayerNorm), or over the whole projection, all heads
    together (OLMo-2, ``norm_scope="all"``) (docs/math.md §3.19)."""
    if getattr(lh, "norm_scope", "head") == "all":
        a = torch.einsum("nd,hde->nhe", x, W)
        return torch.sqrt(a.pow(2).mean((1, 2)) + lh.norm_eps)
    a = x @ W[head]
    if getattr(lh, "norm_center", False):
        a = a - a.mean(-1, keepdim=True)
    return torch.sqrt(a.pow(2).mean(-1) + lh.norm_eps)


def _unembed_scores(W: torch.Tensor, fmap: NormMap, D: np.ndarray) -> torch.Tensor:
    """``W_U · N_f(d)/‖N_f(d)‖`` (V, n) for the columns d of ``D`` (d_model, n)."""
    G = fmap.apply(D.T).T
    G = G / np.maximum(np.linalg.norm(G, axis=0, keepdims=True), 1e-300)
    Gt = torch.from_numpy(G)
    return torch.cat([W[lo : lo + _CHUNK].double() @ Gt for lo in range(0, W.shape[0], _CHUNK)])


def _poles(scores: torch.Tensor, k: int, names) -> tuple[list[list[dict]], list[list[dict]]]:
    """Per column: the ``k`` largest and the ``k`` most negative scores as token rows."""
    top = torch.topk(scores, k, dim=0)
    bot = torch.topk(-scores, k, dim=0)

    def rows(idx, val, sign):
        return [[{"id": int(i), "token": names(int(i)), "score": sign * float(v)} for i, v in zip(idx[:, c], val[:, c])]
                for c in range(scores.shape[1])]

    return rows(top.indices, top.values, 1.0), rows(bot.indices, bot.values, -1.0)


def _namer(tokenizer):
    if tokenizer is None:
        return lambda i: None
    n = len(tokenizer)
    return lambda i: tokenizer.decode([i]) if i < n else None


def token_readouts(model, bases: list[HeadBasis], *, tokenizer=None, top_tokens: int = 10) -> list[dict]:
    """Token readouts of given head bases (see :func:`singular_readouts`, which builds them).

    Signs are canonicalised here (:meth:`HeadBasis.canonical`), so bases with flipped pairs give
    the same rows. Returns one dict per (head, singular index), in the order of ``bases``."""
    model, tok = unwrap_model(model)
    tokenizer = tokenizer if tokenizer is not None else tok
    arch, _ = architecture_of(model)
    heads = cached_heads(model)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    if isinstance(top_tokens, bool) or not isinstance(top_tokens, (int, np.integer)) or not 1 <= top_tokens <= n_vocab:
        raise ValueError(f"top_tokens={top_tokens!r} must be a whole number from 1 to the vocabulary size {n_vocab}")
    bases = [b.canonical() for b in bases]
    norms = input_norms(model)
    W_U, source = unembedding(model)
    fmap = final_norm_map(model) if W_U is not None else None
    names = _namer(tokenizer)
    rows: dict[int, list[dict]] = {}
    for layer in sorted({b.layer for b in bases}):
        lb = [(i, b) for i, b in enumerate(bases) if b.layer == layer]
        Q, K = _layer_scores(model, arch, heads, norms[layer][1], [b for _, b in lb])
        qt, qb = _poles(Q, top_tokens, names)
        kt, kb = _poles(K, top_tokens, names)
        ut = ub = vt = vb = None
        if W_U is not None:
            d = bases[0].d_model
            ut, ub = _poles(_unembed_scores(W_U, fmap, np.concatenate([b.U[:d] for _, b in lb], 1)), top_tokens, names)
            vt, vb = _poles(_unembed_scores(W_U, fmap, np.concatenate([b.V[:d] for _, b in lb], 1)), top_tokens, names)
        c = 0
        for i, b in lb:
            rows[i] = []
            for r in range(b.r):
                rows[i].append({
                    "layer": b.layer, "head": b.head, "kv_head": b.kv_head, "index": r,
                    "singular_value": float(b.S[r]), "scale": b.scale,
                    "bias_fraction": {"query": float(b.U[-1, r] ** 2) if b.augmented else 0.0,
                                      "key": float(b.V[-1, r] ** 2) if b.augmented else 0.0},
                    "token_path": _token_path(arch, b.layer), "input_norm": norms[layer][0],
                    "query_top": qt[c], "query_bottom": qb[c], "key_top": kt[c], "key_bottom": kb[c],
                    "unembedding": source,
                    "unembed_u_top": ut and ut[c], "unembed_u_bottom": ub and ub[c],
                    "unembed_v_top": vt and vt[c], "unembed_v_bottom": vb and vb[c],
                })
                c += 1
    return [row for i in range(len(bases)) for row in rows[i]]


def singular_readouts(model, heads: Iterable | None = None, *, tokenizer=None, top_r: int = 4,
                      top_tokens: int = 10) -> list[dict]:
    """Token readouts of the top singular vectors of attention heads (docs/math.md §5.2).

    Args:
        model: a :class:`~svfcheck.real.models.LoadedModel` (its tokenizer is used) or a
            supported ``transformers`` model.
        heads: (layer, head) pairs; ``None``: every head of layer 0.
        tokenizer: names the tokens (default: the LoadedModel's; without one ``token`` is None).
        top_r: singular triples per head, 1..d_h.
        top_tokens: tokens per pole, 1..vocabulary size.

    Returns:
        A JSON-serialisable list, one dict per (head, singular index r): ``layer``, ``head``,
        ``kv_head``, ``index`` (r, 0-based), ``singular_value`` s_r, ``scale``,
        ``bias_fraction`` (share of u_r, v_r on the bias coordinate), ``token_path``,
        ``input_norm``, ``query_top`` / ``query_bottom`` / ``key_top`` / ``key_bottom`` (lists
        of ``{"id", "token", "score"}``, ``top_tokens`` each: scores α_r(t), β_r(t) over the
        vocabulary (V,)), ``unembedding`` (its source) and ``unembed_u_top`` / ``_bottom``,
        ``unembed_v_top`` / ``_bottom`` (None without an unembedding). Conventions:
        :data:`READOUT_NOTES`.

    Raises:
        ValueError: a head out of range, ``top_r`` outside 1..d_h, ``top_tokens`` outside
            1..V, an unsupported architecture.
    """
    module, _ = unwrap_model(model)
    mh = cached_heads(module)
    bases = [head_basis(mh, layer, head, top_r) for layer, head in resolve_heads(mh, heads)]
    return token_readouts(model, bases, tokenizer=tokenizer, top_tokens=top_tokens)
