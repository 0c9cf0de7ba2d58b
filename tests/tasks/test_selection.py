"""Pair selection and head discovery on hand-made attention tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from svfcheck.tasks.circuits import (
    INDUCTION,
    NAME_MOVER,
    PREVIOUS_TOKEN,
    S_INHIBITION,
    CircuitHead,
)
from svfcheck.tasks.selection import (
    circuit_pairs,
    discover_heads,
    threshold_pairs,
    top_key_pairs,
    validate_heads,
)

# One head, 3 causal queries:      key 0  key 1  key 2
HAND = torch.tensor([[[[1.0, 0.0, 0.0],
                       [0.7, 0.3, 0.0],
                       [0.5, 0.1, 0.4]]]])
CAUSAL3 = torch.tril(torch.ones(3, 3, dtype=torch.bool))


def _pairs(sel):
    return [(p.layer, p.head, p.query, p.key) for p in sel.pairs]


class TestTopKey:
    def test_skip_first(self):
        sel = top_key_pairs(HAND, CAUSAL3)
        assert _pairs(sel) == [(0, 0, 1, 1), (0, 0, 2, 2)]
        assert [p.attention for p in sel.pairs] == pytest.approx([0.3, 0.4])
        assert [p.n_visible for p in sel.pairs] == [2, 3]
        assert sel.skipped == {"fewer_than_2_keys": 1} and sel.n_queries == 3

    def test_keep_first(self):
        sel = top_key_pairs(HAND, CAUSAL3, skip_first=False)
        assert _pairs(sel) == [(0, 0, 1, 0), (0, 0, 2, 0)]
        assert sel.skipped == {"fewer_than_2_keys": 1}

    def test_ties_go_to_earliest_and_uniform_attention_still_selects(self):
        m = CAUSAL3.float()
        uniform = (m / m.sum(-1, keepdim=True))[None, None]
        sel = top_key_pairs(uniform, CAUSAL3)
        assert _pairs(sel) == [(0, 0, 1, 1), (0, 0, 2, 1)]

    def test_bidirectional_mask_and_heads_subset(self):
        attn = torch.full((2, 2, 3, 3), 1 / 3)
        attn[1, 0, :, 2] = 0.5
        attn[1, 0, :, :2] = 0.25
        sel = top_key_pairs(attn, torch.ones(3, 3, dtype=torch.bool), heads=[(1, 0)], prompt_index=4)
        assert _pairs(sel) == [(1, 0, 0, 2), (1, 0, 1, 2), (1, 0, 2, 2)]
        assert {p.prompt_index for p in sel.pairs} == {4}
        assert sel.skipped == {"fewer_than_2_keys": 0}

    def test_sliding_window_mask_per_layer(self):
        # layer 0: full causal; layer 1: window of 1 key (each query sees only itself)
        vis = torch.stack([CAUSAL3, torch.eye(3, dtype=torch.bool)])[:, None]
        attn = torch.cat([HAND, torch.eye(3)[None, None]])
        sel = top_key_pairs(attn, vis)
        assert _pairs(sel) == [(0, 0, 1, 1), (0, 0, 2, 2)]
        assert sel.skipped == {"fewer_than_2_keys": 4}


class TestThreshold:
    def test_default_one_over_m(self):
        sel = threshold_pairs(HAND, CAUSAL3)
        assert _pairs(sel) == [(0, 0, 1, 0), (0, 0, 2, 0), (0, 0, 2, 2)]
        assert sel.skipped == {"fewer_than_2_keys": 1, "no_key_above_threshold": 0}

    def test_default_skip_first(self):
        sel = threshold_pairs(HAND, CAUSAL3, skip_first=True)
        assert _pairs(sel) == [(0, 0, 2, 2)]
        assert sel.skipped == {"fewer_than_2_keys": 1, "no_key_above_threshold": 1}

    def test_paper_2024_rule(self):
        sel = threshold_pairs(HAND, CAUSAL3, threshold=0.5, skip_first=True)
        assert _pairs(sel) == []
        assert sel.skipped == {"fewer_than_2_keys": 1, "no_key_above_threshold": 2}
        sel = threshold_pairs(HAND, CAUSAL3, threshold=0.35, skip_first=True)
        assert _pairs(sel) == [(0, 0, 2, 2)]

    def test_bad_threshold(self):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            threshold_pairs(HAND, CAUSAL3, threshold=1.5)


class TestValidation:
    def test_head_out_of_range(self):
        with pytest.raises(ValueError, match=r"\(layer=0, head=3\).*layers 0\.\.0, heads 0\.\.0"):
            top_key_pairs(HAND, CAUSAL3, heads=[(0, 3)])
        with pytest.raises(ValueError, match=r"layer=12.*layers 0\.\.11, heads 0\.\.11"):
            validate_heads([CircuitHead(12, 0, NAME_MOVER, "END", "IO")], 12, 12)

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match=r"\[n_layers, n_heads, q, k\]"):
            top_key_pairs(HAND[0], CAUSAL3)
        with pytest.raises(ValueError, match="does not broadcast"):
            top_key_pairs(HAND, torch.ones(4, 4, dtype=torch.bool))


def _prompt(**pos):
    return SimpleNamespace(positions=pos)


class TestCircuitPairs:
    def test_pairs_at_labelled_positions(self):
        g = torch.Generator().manual_seed(0)
        attn = torch.softmax(torch.randn(2, 3, 8, 8, generator=g).masked_fill(~torch.tril(torch.ones(8, 8, dtype=torch.bool)), -1e9), -1)
        p = _prompt(**{"S1": 1, "S1+1": 2, "IO": 3, "S2": 5, "END": 7})
        heads = [CircuitHead(1, 2, NAME_MOVER, "END", "IO"), CircuitHead(0, 1, INDUCTION, "S2", "S1+1")]
        sel = circuit_pairs(attn, p, heads, torch.tril(torch.ones(8, 8, dtype=torch.bool)), prompt_index=2)
        assert _pairs(sel) == [(1, 2, 7, 3), (0, 1, 5, 2)]
        assert [p.attention for p in sel.pairs] == [float(attn[1, 2, 7, 3]), float(attn[0, 1, 5, 2])]
        assert [p.role for p in sel.pairs] == [NAME_MOVER, INDUCTION]
        assert [p.n_visible for p in sel.pairs] == [8, 6]

    def test_invisible_key_and_range_errors(self):
        attn = torch.full((1, 1, 4, 4), 0.25)
        p = _prompt(**{"S1": 0, "S1+1": 1, "IO": 3, "S2": 2, "END": 3})
        causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))
        with pytest.raises(ValueError, match="not visible"):
            circuit_pairs(attn, p, [CircuitHead(0, 0, INDUCTION, "S2", "IO")], causal)
        with pytest.raises(ValueError, match="out of range"):
            circuit_pairs(attn, p, [CircuitHead(1, 0, INDUCTION, "S2", "S1")], causal)


def _discovery_case(seed):
    """3 layers x 4 heads, causal, uniform except planted heads; positions vary by prompt."""
    g = torch.Generator().manual_seed(seed)
    n = 12
    s1 = int(torch.randint(1, 3, (1,), generator=g))
    io = s1 + 2
    s2 = int(torch.randint(io + 2, n - 2, (1,), generator=g))
    end = n - 1
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    attn = (causal.float() / causal.sum(-1, keepdim=True)).expand(3, 4, n, n).clone()

    def plant(l, h, i, j, w=0.9):
        m = int(causal[i].sum())
        attn[l, h, i] = causal[i].float() * (1 - w) / (m - 1)
        attn[l, h, i, j] = w

    plant(2, 1, end, io)  # name mover
    plant(2, 3, end, s2)  # S-inhibition
    plant(1, 2, s2, s1 + 1)  # induction
    for i in range(1, n):
        plant(0, 0, i, i - 1, 0.8)  # previous token
    return attn, _prompt(**{"S1": s1, "S1+1": s1 + 1, "IO": io, "S2": s2, "END": end})


def test_discovery_finds_planted_heads():
    cases = [_discovery_case(s) for s in range(5)]
    attns, prompts = [c[0] for c in cases], [c[1] for c in cases]
    found = discover_heads(attns, prompts, top=2)
    assert (found[NAME_MOVER][0].layer, found[NAME_MOVER][0].head) == (2, 1)
    assert (found[S_INHIBITION][0].layer, found[S_INHIBITION][0].head) == (2, 3)
    assert (found[INDUCTION][0].layer, found[INDUCTION][0].head) == (1, 2)
    assert (found[PREVIOUS_TOKEN][0].layer, found[PREVIOUS_TOKEN][0].head) == (0, 0)
    assert found[NAME_MOVER][0].score == pytest.approx(0.9)
    assert found[PREVIOUS_TOKEN][0].score == pytest.approx(0.8)
    assert found[NAME_MOVER][0].uniform == pytest.approx(1 / 12)  # END sees 12 keys
    assert len(found[NAME_MOVER]) == 2 and found[NAME_MOVER][1].score < 0.9
    ch = found[INDUCTION][0].as_circuit_head()
    assert (ch.layer, ch.head, ch.query, ch.key) == (1, 2, "S2", "S1+1")
    assert found[PREVIOUS_TOKEN][0].as_circuit_head().query == "S1+1"


def test_discovery_bad_input():
    attn, p = _discovery_case(0)
    with pytest.raises(ValueError, match="one attention tensor per prompt"):
        discover_heads([attn], [p, p])
    with pytest.raises(ValueError, match="top must be >= 1"):
        discover_heads([attn], [p], top=0)
    with pytest.raises(ValueError, match=">= 2 tokens"):
        discover_heads([attn], [p], text_attns=[torch.ones(3, 4, 1, 1)])


def test_validate_heads_for_config_and_discovered_circuit():
    from svfcheck.real.models import tiny_config
    from svfcheck.tasks.selection import discovered_circuit, validate_heads_for

    cfg = tiny_config("gpt2")  # 2 layers x 4 heads; GPT-2 names them n_layer / n_head
    validate_heads_for([(1, 3)], cfg)
    with pytest.raises(ValueError, match=r"layers 0\.\.1, heads 0\.\.3"):
        validate_heads_for([(2, 0)], cfg)
    cases = [_discovery_case(s) for s in range(3)]
    found = discover_heads([c[0] for c in cases], [c[1] for c in cases], top=1)
    table = discovered_circuit(found)
    assert {(h.layer, h.head, h.role, h.query, h.key) for h in table} == {
        (2, 1, NAME_MOVER, "END", "IO"), (2, 3, S_INHIBITION, "END", "S2"),
        (1, 2, INDUCTION, "S2", "S1+1"), (0, 0, PREVIOUS_TOKEN, "S1+1", "S1"),
    }
    sel = circuit_pairs(cases[0][0], cases[0][1], table)
    assert len(sel) == 4


def test_top_keys_is_the_one_rule():
    """Hand cases of the shared rule (used by top_key_pairs, the emergence sweep and
    top_attended_pairs): key 0 excluded, ties to the earliest key, a query needs 2 visible keys
    and a candidate."""
    from svfcheck.tasks.selection import top_keys

    attn = torch.tensor([[0.9, 0.1, 0.0, 0.0],  # q0 sees only key 0: no candidate
                         [0.5, 0.5, 0.0, 0.0],  # q1: key 1 (key 0 excluded although tied)
                         [0.2, 0.4, 0.4, 0.0],  # q2: tie 1 vs 2 -> 1
                         [0.1, 0.2, 0.3, 0.4]])  # q3 sees only key 3 (window 1): fewer than 2 keys
    vis = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    best, ok = top_keys(attn, vis)
    assert ok.tolist() == [False, True, True, False]
    assert best[1:3].tolist() == [1, 1]
    best, ok = top_keys(attn, vis, skip_first=False)
    assert ok.tolist() == [False, True, True, False] and best[1:3].tolist() == [0, 1]
    # leading dims broadcast: (heads, Q, K) attention against (Q, K) visibility
    b2, o2 = top_keys(torch.stack([attn, attn.flip(-1)]), vis)
    assert torch.equal(b2[0], top_keys(attn, vis)[0]) and torch.equal(o2[1], o2[0])
