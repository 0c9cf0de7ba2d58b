"""Choose the (query, key) pairs to analyse, and discover IOI heads.

Inputs are per-prompt attention probabilities ``attn`` of shape ``[n_layers, n_heads, q, k]``
and a boolean ``visible`` mask (which keys each query can see: causal, padding, sliding
window) broadcastable to that shape (``[q, k]``, ``[n_layers, 1, q, k]``, ...). Pass the
mask explicitly: when it is omitted it is inferred as ``attn > 0``, which miscounts m if a
visible key's attention underflows to exactly 0.

Selectors:

- :func:`top_key_pairs` — every query's top-attended key (optionally skipping the first
  token / attention sink). Independent of training, so it selects as many pairs in a
  randomly initialised model as in a trained one.
- :func:`threshold_pairs` — every key with attention ≥ a threshold (default 1/m per query,
  m = number of visible keys; the paper's 2024 code used 0.5 and skipped the first token).
- :func:`circuit_pairs` — a head table's heads at an IOI prompt's labelled positions.
- :func:`discover_heads` — rank heads by IOI role scores when no circuit is published.

Queries that see fewer than 2 keys (relative attention is undefined) are never selected;
each selector reports how many it skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from svfcheck.tasks.circuits import (
    INDUCTION,
    NAME_MOVER,
    PREVIOUS_TOKEN,
    S_INHIBITION,
    CircuitHead,
)


@dataclass(frozen=True)
class Pair:
    """One analysed (query, key) pair of one head in one prompt."""

    prompt_index: int
    layer: int
    head: int
    query: int
    key: int
    attention: float
    n_visible: int  # m, the number of keys the query can see
    role: str = ""


@dataclass(frozen=True)
class Selection:
    """Selected pairs plus what was skipped and why (counts per reason)."""

    pairs: tuple[Pair, ...]
    n_queries: int  # (layer, head, query) triples examined
    skipped: dict[str, int] = field(default_factory=dict, hash=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def __add__(self, other: Selection) -> Selection:
        skipped = dict(self.skipped)
        for k, v in other.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        return Selection(self.pairs + other.pairs, self.n_queries + other.n_queries, skipped)


def _check_attn(attn: torch.Tensor, visible: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if attn.ndim != 4:
        raise ValueError(f"attn must have shape [n_layers, n_heads, q, k], got {tuple(attn.shape)}")
    if visible is None:
        visible = attn > 0
    visible = visible.to(torch.bool)
    try:
        visible = torch.broadcast_to(visible, attn.shape)
    except RuntimeError:
        raise ValueError(
            f"visible mask of shape {tuple(visible.shape)} does not broadcast to attn {tuple(attn.shape)}"
        ) from None
    return attn, visible


def validate_heads(heads: Iterable[tuple[int, int] | CircuitHead], n_layers: int, n_heads: int) -> None:
    """Raise ValueError naming the valid range if a (layer, head) is out of range."""
    for h in heads:
        layer, head = (h.layer, h.head) if isinstance(h, CircuitHead) else h
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head (layer={layer}, head={head}) is out of range for this model: layers "
                f"0..{n_layers - 1}, heads 0..{n_heads - 1}"
            )


def validate_heads_for(heads: Iterable[tuple[int, int] | CircuitHead], config) -> None:
    """:func:`validate_heads` against a ``transformers`` config (or a model's ``.config``)."""
    config = getattr(config, "config", config)
    validate_heads(heads, config.num_hidden_layers, config.num_attention_heads)


def _head_list(heads, n_layers, n_heads) -> list[tuple[int, int]]:
    if heads is None:
        return [(l, h) for l in range(n_layers) for h in range(n_heads)]
    heads = [(h.layer, h.head) if isinstance(h, CircuitHead) else tuple(h) for h in heads]
    validate_heads(heads, n_layers, n_heads)
    return heads


@dataclass(frozen=True)
class Positions:
    """Labelled positions (``{"S1": 3, ...}``) as the object :func:`circuit_pairs` and
    :func:`discover_heads` take (anything with ``.positions``)."""

    positions: dict[str, int]


def top_keys(attn: torch.Tensor, visible: torch.Tensor, *, skip_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The one rule for "each query's top-attended key": the visible key (other than key 0 when
    ``skip_first``) with the largest attention, the earliest on ties; a query qualifies when it
    sees at least 2 keys and has a candidate.

    Args:
        attn: attention probabilities (..., Q, K), any leading dims (layers, batch, heads).
        visible: bool (..., Q, K) broadcastable to ``attn``: key k visible to query q.
    Returns:
        ``(best, ok)``, both (..., Q): the chosen key per query (meaningless where not ok) and
        whether the query qualifies.
    """
    visible = visible.expand_as(attn) if visible.shape != attn.shape else visible
    cand = visible.clone()
    if skip_first:
        cand[..., 0] = False
    best = torch.where(cand, attn, torch.full_like(attn, -1.0)).argmax(-1)  # first maximum
    ok = (visible.sum(-1) >= 2) & cand.any(-1)
    return best, ok


def top_key_pairs(
    attn: torch.Tensor,
    visible: torch.Tensor | None = None,
    *,
    skip_first: bool = True,
    heads: Sequence[tuple[int, int]] | None = None,
    prompt_index: int = 0,
) -> Selection:
    """Every query's top-attended key (excluding key 0 when ``skip_first``).

    Queries that see fewer than 2 keys are skipped (counted under ``"fewer_than_2_keys"``;
    with ``skip_first`` a query that sees only key 0 is one of them). Ties go to the
    earliest key. Pairs are ordered by head (in ``heads`` order), then query.
    """
    attn, visible = _check_attn(attn, visible)
    L, H, Q, _ = attn.shape
    hl = _head_list(heads, L, H)
    m = visible.sum(-1)  # [L, H, Q]
    best, ok = top_keys(attn, visible, skip_first=skip_first)
    best_att = attn.gather(-1, best[..., None])[..., 0]
    pairs, skipped = [], 0
    for layer, head in hl:
        okh = ok[layer, head]
        skipped += int((~okh).sum())
        qs = torch.nonzero(okh).flatten()
        for i, j, a, mi in zip(qs.tolist(), best[layer, head, qs].tolist(),
                               best_att[layer, head, qs].tolist(), m[layer, head, qs].tolist()):
            pairs.append(Pair(prompt_index, layer, head, i, j, a, mi))
    return Selection(tuple(pairs), len(hl) * Q, {"fewer_than_2_keys": skipped})


def threshold_pairs(
    attn: torch.Tensor,
    visible: torch.Tensor | None = None,
    *,
    threshold: float | None = None,
    skip_first: bool = False,
    heads: Sequence[tuple[int, int]] | None = None,
    prompt_index: int = 0,
) -> Selection:
    """Every visible key with attention ≥ ``threshold`` (None: ≥ 1/m for each query).

    The paper's 2024 code: ``threshold=0.5, skip_first=True``. Queries with fewer than 2
    visible keys are skipped (``"fewer_than_2_keys"``); queries where no key passes are
    counted under ``"no_key_above_threshold"``.
    """
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    attn, visible = _check_attn(attn, visible)
    L, H, Q, _ = attn.shape
    hl = _head_list(heads, L, H)
    m = visible.sum(-1)
    few = m < 2
    thr = 1.0 / m.clamp(min=1).to(torch.float64) if threshold is None else torch.full(m.shape, threshold, dtype=torch.float64)
    ok = visible & (attn.to(torch.float64) >= thr[..., None]) & ~few[..., None]
    if skip_first:
        ok[..., 0] = False
    none = ~few & ~ok.any(-1)
    pairs, n_few, n_none = [], 0, 0
    for layer, head in hl:
        n_few += int(few[layer, head].sum())
        n_none += int(none[layer, head].sum())
        idx = torch.nonzero(ok[layer, head])
        if not len(idx):
            continue
        qs, ks = idx[:, 0], idx[:, 1]
        for i, j, a, mi in zip(qs.tolist(), ks.tolist(), attn[layer, head, qs, ks].tolist(),
                               m[layer, head, qs].tolist()):
            pairs.append(Pair(prompt_index, layer, head, i, j, a, mi))
    return Selection(tuple(pairs), len(hl) * Q, {"fewer_than_2_keys": n_few, "no_key_above_threshold": n_none})


def circuit_pairs(
    attn: torch.Tensor,
    prompt,
    heads: Sequence[CircuitHead],
    visible: torch.Tensor | None = None,
    *,
    prompt_index: int = 0,
) -> Selection:
    """The pairs of a head table (:mod:`svfcheck.tasks.circuits`) at ``prompt.positions``.

    A pair whose key is not visible to its query is an error (the prompt does not fit).
    """
    attn, visible = _check_attn(attn, visible)
    L, H, Q, K = attn.shape
    validate_heads(heads, L, H)
    pairs = []
    for ch in heads:
        i, j = prompt.positions[ch.query], prompt.positions[ch.key]
        if not (0 <= i < Q and 0 <= j < K):
            raise ValueError(
                f"positions {ch.query}={i}, {ch.key}={j} are outside the attention tensor ({Q}x{K})"
            )
        if not bool(visible[ch.layer, ch.head, i, j]):
            raise ValueError(f"key {ch.key}={j} is not visible to query {ch.query}={i} in head {ch}")
        m = int(visible[ch.layer, ch.head, i].sum())
        if m < 2:
            raise ValueError(f"query {ch.query}={i} sees only {m} key(s); relative attention needs 2")
        pairs.append(
            Pair(prompt_index, ch.layer, ch.head, i, j, float(attn[ch.layer, ch.head, i, j]), m, ch.role)
        )
    return Selection(tuple(pairs), len(heads), {})


# --------------------------------------------------------------------------- discovery

# role -> (query label, key label); previous-token is scored on every position i -> i-1.
DISCOVERY_ROLES: dict[str, tuple[str, str]] = {
    NAME_MOVER: ("END", "IO"),
    S_INHIBITION: ("END", "S2"),
    INDUCTION: ("S2", "S1+1"),
    PREVIOUS_TOKEN: ("i", "i-1"),
}


@dataclass(frozen=True)
class HeadScore:
    """A head's mean attention for one role, next to the uniform baseline mean 1/m."""

    layer: int
    head: int
    role: str
    score: float
    uniform: float
    query: str
    key: str

    def as_circuit_head(self) -> CircuitHead:
        if self.role == PREVIOUS_TOKEN:
            return CircuitHead(self.layer, self.head, self.role, "S1+1", "S1", "discovered")
        return CircuitHead(self.layer, self.head, self.role, self.query, self.key, "discovered")


def discovered_circuit(found: dict[str, tuple[HeadScore, ...]]) -> tuple[CircuitHead, ...]:
    """The heads of :func:`discover_heads` as a head table for :func:`circuit_pairs`
    (previous-token heads analysed at S1+1→S1)."""
    return tuple(hs.as_circuit_head() for role in found for hs in found[role])


def role_scores(
    attns: Sequence[torch.Tensor],
    prompts: Sequence,
    visibles: Sequence[torch.Tensor] | None = None,
    *,
    text_attns: Sequence[torch.Tensor] | None = None,
) -> dict[str, tuple[torch.Tensor, float]]:
    """Per role, the ``[n_layers, n_heads]`` mean attention score and its uniform baseline.

    IOI roles average ``attn[:, :, q, k]`` at the labelled positions over ``prompts``;
    previous-token averages ``attn[:, :, i, i-1]`` over i ≥ 1 of ``text_attns`` (ordinary text;
    default: the IOI prompts themselves).
    """
    if len(attns) != len(prompts) or not attns:
        raise ValueError(f"need one attention tensor per prompt, got {len(attns)} for {len(prompts)}")
    shape = attns[0].shape[:2]
    out: dict[str, tuple[torch.Tensor, float]] = {}
    for role, (ql, kl) in DISCOVERY_ROLES.items():
        if role == PREVIOUS_TOKEN:
            continue
        acc, base = torch.zeros(shape, dtype=torch.float64), 0.0
        for n, (a, p) in enumerate(zip(attns, prompts)):
            a, vis = _check_attn(a, None if visibles is None else visibles[n])
            if a.shape[:2] != shape:
                raise ValueError(f"attention tensor {n} has shape {tuple(a.shape)}, expected {tuple(shape)} heads")
            i, j = p.positions[ql], p.positions[kl]
            acc += a[:, :, i, j].double()
            base += float((1.0 / vis[:, :, i].sum(-1).double()).mean())
        out[role] = (acc / len(attns), base / len(attns))
    texts = attns if text_attns is None else text_attns
    acc, base, cnt = torch.zeros(shape, dtype=torch.float64), 0.0, 0
    for a in texts:
        a, vis = _check_attn(a, None)
        if a.shape[-2] < 2:
            raise ValueError(f"previous-token score needs texts of >= 2 tokens, got {a.shape[-2]}")
        Q = a.shape[-2]
        idx = torch.arange(1, Q)
        acc += a[:, :, idx, idx - 1].double().sum(-1)
        base += float((1.0 / vis[:, :, 1:].sum(-1).double()).mean(-1).mean()) * (Q - 1)
        cnt += Q - 1
    out[PREVIOUS_TOKEN] = (acc / cnt, base / cnt)
    return out


def discover_heads(
    attns: Sequence[torch.Tensor],
    prompts: Sequence,
    visibles: Sequence[torch.Tensor] | None = None,
    *,
    text_attns: Sequence[torch.Tensor] | None = None,
    top: int = 3,
) -> dict[str, tuple[HeadScore, ...]]:
    """The ``top`` heads per IOI role (name mover END→IO, S-inhibition END→S2, induction
    S2→S1+1, previous-token i→i−1), ranked by mean attention (ties: lower layer, head).

    A head is listed under every role it ranks in; compare ``score`` with ``uniform`` to
    see whether the head attends more than a uniform head would.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    out = {}
    for role, (scores, base) in role_scores(attns, prompts, visibles, text_attns=text_attns).items():
        L, H = scores.shape
        flat = [(-float(scores[l, h]), l, h) for l in range(L) for h in range(H)]
        flat.sort()
        ql, kl = DISCOVERY_ROLES[role]
        out[role] = tuple(HeadScore(l, h, role, -s, base, ql, kl) for s, l, h in flat[:top])
    return out
