"""Capture what each attention module actually sees and returns (docs/math.md §3.1, §3.13).

:func:`capture` runs the model once with hooks on every self-attention module and records,
per layer: the module's input hidden states (the post-norm residual, exactly what the
query/key projections read), the RoPE ``(cos, sin)`` it was given (in the rotate-half layout
of svfcheck's head coordinates, :func:`rotate_half_tables`), the mask it used (as the set of
visible keys per query) and its attention probabilities (eager attention).
:func:`pad_batches` turns ragged prompts into the right-padded ``(input_ids, attention_mask)``
batches that :func:`capture` expects.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .heads import ModelHeads, RotarySpec, _rotary_module, attention_modules, extract_heads

__all__ = ["Capture", "capture", "visible_from_spec", "pad_batches", "pad_id", "rotate_half_tables"]


@dataclass(frozen=True, eq=False)
class Capture:
    """Activations of one batch. Per layer l (tuples indexed by layer):

    - ``hidden[l]`` (B, n, d): attention input; ``attn[l]`` (B, H, n, n): probabilities;
    - ``visible[l]`` (B, n, n) bool: key k visible to query i (model mask ∩ non-padding);
    - ``cos[l]``, ``sin[l]`` (B, n, rotary_dim) or ``None`` without RoPE.

    ``positions`` (B, n) are the position ids used; ``token_mask`` (B, n) marks real tokens.
    """

    input_ids: torch.Tensor
    token_mask: torch.Tensor
    positions: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    attn: tuple[torch.Tensor, ...]
    visible: tuple[torch.Tensor, ...]
    cos: tuple[torch.Tensor | None, ...]
    sin: tuple[torch.Tensor | None, ...]

    @property
    def n_layers(self) -> int:
        return len(self.hidden)

    @property
    def batch(self) -> int:
        return self.input_ids.shape[0]

    def prompt_views(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``b``'s real tokens across layers: attention (L, H, n, n) and visibility
        (L, 1, n, n), n = its number of real tokens (the shapes pair selection takes)."""
        n = int(self.token_mask[b].sum())
        attn = torch.stack([a[b, :, :n, :n] for a in self.attn])
        vis = torch.stack([v[b, :n, :n] for v in self.visible])[:, None]
        return attn, vis


def pad_id(tokenizer) -> int:
    """The id :func:`pad_batches` pads with: the tokenizer's pad token, else 0 (padded positions
    are masked out, so the choice never reaches a result)."""
    p = getattr(tokenizer, "pad_token_id", None)
    return 0 if p is None else int(p)


def pad_batches(
    prompts: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Right-padded batches of ragged token-id prompts, ready for :func:`capture`.

    Yields ``(start, input_ids, attention_mask)`` per batch of at most ``batch_size`` prompts:

    - ``input_ids`` (b, n) ``torch.long``: row ``r`` holds prompt ``start + r`` in positions
      ``0 .. len - 1`` followed by ``pad_id`` up to ``n``, the length of the longest prompt *in
      that batch* (each batch is only as wide as it needs to be);
    - ``attention_mask`` (b, n) ``torch.long``: 1 on the prompt's tokens, 0 on the padding.

    Ordering: batches follow the input order and rows within a batch too, so row ``r`` of the
    batch starting at ``start`` is ``prompts[start + r]``; every batch holds exactly
    ``batch_size`` prompts except possibly the last. Padding is always on the right, so real
    tokens keep position ids ``0 .. len - 1`` (what :func:`capture` assumes) and eager attention
    never sees a query row with no visible key.

    The input is checked up front (not on the first ``next``): ``ValueError`` for no prompts,
    an empty prompt or ``batch_size < 1``.
    """
    try:
        size = operator.index(batch_size)
    except TypeError:
        size = 0
    if isinstance(batch_size, bool) or size < 1:
        raise ValueError(f"pad_batches: batch_size must be a positive integer, got {batch_size!r}")
    rows = [tuple(int(t) for t in p) for p in prompts]
    if not rows:
        raise ValueError("pad_batches: no prompts given")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"pad_batches: prompts {empty[:5]} have no tokens")
    return _pad_batches(rows, size, int(pad_id))


def _pad_batches(rows: list[tuple[int, ...]], batch_size: int, pad_id: int):
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        n = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for b, r in enumerate(chunk):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = 1
        yield s, ids, mask


def visible_from_spec(causal: bool, window: int | None, token_mask: torch.Tensor) -> torch.Tensor:
    """Visible keys (B, n, n) from causal/window rules and key padding (fallback when the
    model passes no mask): ``k <= i`` if causal, ``i - k < window``, key is a real token."""
    B, n = token_mask.shape
    i = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    vis = torch.ones(n, n, dtype=torch.bool)
    if causal:
        vis &= k <= i
    if window is not None:
        vis &= (i - k) < window
    return vis[None] & token_mask.bool()[:, None, :]


def _mask_to_visible(mask, B: int, n: int) -> torch.Tensor | None:
    if mask is None or not torch.is_tensor(mask):
        return None
    m = mask
    if m.dim() == 4:
        if m.shape[1] != 1:
            raise ValueError(f"per-head attention masks (shape {tuple(m.shape)}) are not supported")
        m = m[:, 0]
    if m.dim() == 2:
        m = m[:, None, :]
    m = m[..., -n:]
    if m.dtype == torch.bool:
        vis = m
    else:
        vis = m > torch.finfo(m.dtype).min / 2
    return vis.expand(B, n, n)


def rotate_half_tables(spec: RotarySpec, pe) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``position_embeddings`` a RoPE module received, as ``(cos, sin)`` (..., rotary_dim)
    in svfcheck's rotate-half layout (docs/math.md §3.18): GPT-J's ``(sin, cos)`` with one entry
    per pair is duplicated over the two halves; tables of an interleaved model (entries 2t and
    2t + 1 for pair t) are reordered by the spec's ``head_order``, the permutation the
    extraction applied to the head coordinates."""
    if spec.tables == "sin_cos_half":
        s, c = pe
        return torch.cat([c, c], -1), torch.cat([s, s], -1)
    c, s = pe
    if spec.head_order is not None:
        order = torch.as_tensor(spec.head_order)
        c, s = c.index_select(-1, order), s.index_select(-1, order)
    return c, s


def _check_rope_length(heads: ModelHeads, n: int) -> None:
    """``ValueError`` before the forward pass when a prompt is longer than a length-dependent
    RoPE (``dynamic``, ``longrope``) keeps its extracted frequencies for (docs/math.md §3.20)."""
    for lh in heads.layers:
        r = lh.rotary
        if r is not None and r.max_positions is not None and n > r.max_positions:
            raise ValueError(
                f"layer {lh.layer}: {r.rope_type!r} RoPE changes its frequencies for prompts longer than "
                f"{r.max_positions} tokens (this batch has {n}); svfcheck decomposes it exactly only up to that "
                f"length: use prompts of at most {r.max_positions} tokens"
            )


def _check_rope_state(model, heads: ModelHeads) -> None:
    """``ValueError`` when a length-dependent RoPE module rotated the batch with frequencies other
    than the extracted ones: a ``dynamic`` module rescaled by an earlier, longer prompt keeps its
    rescaled frequencies for prompts up to that length (docs/math.md §3.20). Compared exactly
    with the module's own buffer after the forward pass."""
    layers = [lh for lh in heads.layers if lh.rotary is not None and lh.rotary.state_attr is not None]
    if not layers:
        return
    rot = _rotary_module(model)
    for lh in layers:
        used = getattr(rot, lh.rotary.state_attr).detach().double().cpu().numpy()
        if not np.array_equal(used, lh.rotary.inv_freq):
            r = lh.rotary
            raise ValueError(
                f"layer {lh.layer}: the {r.rope_type!r} RoPE module rotated this batch with frequencies other than "
                f"its original ones (an earlier prompt longer than {r.max_positions} tokens rescaled them, and the "
                "module keeps them for shorter prompts); svfcheck decomposes it exactly only with its original "
                f"frequencies: reload the model, or first run it on a prompt shorter than {r.max_positions} tokens, "
                "which restores them"
            )


_POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions")


def position_limit(model) -> int | None:
    """Longest input the model can take: the size of its learned position table (GPT-2's
    ``wpe``, BERT's ``position_embeddings``), read from the module itself; ``None`` for models
    without one (RoPE), whose context is not bounded by a table."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            return int(mod.num_embeddings)
    return None


def check_inputs(model, input_ids: torch.Tensor) -> None:
    """``ValueError`` for inputs the model cannot take — longer than its position table, or
    token ids outside its vocabulary — instead of torch's "index out of range in self"."""
    n = int(input_ids.shape[-1])
    limit = position_limit(model)
    if limit is not None and n > limit:
        raise ValueError(
            f"a prompt of {n} tokens is longer than the model's position table ({limit} positions, "
            "special tokens included); use shorter prompts (--prompt-tokens) or a model with a longer context"
        )
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= emb.num_embeddings:
            raise ValueError(
                f"token id {hi if hi >= emb.num_embeddings else lo} is outside the model's vocabulary "
                f"(0..{emb.num_embeddings - 1}); were the prompts tokenized with another tokenizer?"
            )


def capture(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    heads: ModelHeads | None = None,
) -> Capture:
    """Run ``model`` once on ``input_ids`` (B, n) and capture every attention layer.

    The model must use eager attention (``attn_implementation="eager"``) so that it returns
    attention probabilities; otherwise ``ValueError``. Position ids are the model default
    (``0..n-1``), so pad on the right (as :func:`pad_batches` does): real tokens then keep the
    positions ``0..len-1`` they have in the unpadded prompt, while left padding would shift them
    by the padding. A NaN/inf in a real token's attention row is a ``ValueError``; so is a prompt
    longer than a length-dependent RoPE (``dynamic``, ``longrope``) holds its frequencies for.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise ValueError(
            f"capture needs eager attention (got {impl!r}); load the model with "
            'attn_implementation="eager" or call model.set_attn_implementation("eager")'
        )
    heads = heads if heads is not None else extract_heads(model)
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)[None]
    check_inputs(model, input_ids)
    B, n = input_ids.shape
    _check_rope_length(heads, n)
    token_mask = torch.ones(B, n, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool()
    mods = attention_modules(model)
    if len(mods) != heads.n_layers:
        raise ValueError(f"model has {len(mods)} attention layers but heads describe {heads.n_layers}")
    rec: dict[int, dict] = {i: {} for i in range(len(mods))}
    handles = []

    def pre(idx):
        def hook(module, args, kwargs):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            rec[idx]["hidden"] = hs.detach()
            rec[idx]["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 and torch.is_tensor(args[1]) else None)
            rec[idx]["pe"] = kwargs.get("position_embeddings")

        return hook

    def post(idx):
        def hook(module, args, kwargs, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                raise RuntimeError(f"layer {idx}: the attention module returned no attention probabilities")
            rec[idx]["attn"] = w.detach()

        return hook

    for i, m in enumerate(mods):
        handles.append(m.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(m.register_forward_hook(post(i), with_kwargs=True))
    try:
        kw = {"input_ids": input_ids}
        if attention_mask is not None:
            kw["attention_mask"] = torch.as_tensor(attention_mask)
        with torch.no_grad():
            model(**kw)
    finally:
        for h in handles:
            h.remove()
    _check_rope_state(model, heads)
    hidden, attn, visible, cos, sin = [], [], [], [], []
    for i in range(len(mods)):
        r = rec[i]
        lh = heads.layers[i]
        hidden.append(r["hidden"])
        attn.append(r["attn"])
        if not bool(torch.isfinite(r["attn"].transpose(1, 2)[token_mask]).all()):
            raise RuntimeError(
                f"layer {i}: the model's attention probabilities of real tokens contain NaN/inf "
                "(left padding with eager attention does this; pad on the right)"
            )
        vis = _mask_to_visible(r["mask"], B, n)
        if vis is None:
            vis = visible_from_spec(lh.causal, lh.sliding_window, token_mask)
        visible.append(vis & token_mask[:, None, :])
        pe = r["pe"]
        if lh.rotary is not None:
            if pe is None:
                raise RuntimeError(f"layer {i}: RoPE layer received no position_embeddings")
            c, s = rotate_half_tables(lh.rotary, pe)
            cos.append(c.detach().expand(B, n, -1))
            sin.append(s.detach().expand(B, n, -1))
        else:
            cos.append(None)
            sin.append(None)
    positions = torch.arange(n)[None].expand(B, n)
    return Capture(input_ids, token_mask, positions, tuple(hidden), tuple(attn), tuple(visible), tuple(cos), tuple(sin))
