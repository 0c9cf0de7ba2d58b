"""The decomposition within a memory budget (docs/math.md §4.5) gives the numbers it gives
without one.

Budgets are set from the planner's own costs of this input, so each case is known to force
what it names: ``layer`` (rounds of whole layers or of key-head groups, tables evicted between
them), ``head`` (layers cut into heads; the largest head just fits) and ``offsets`` (one head's pairs cut into offset
ranges). The first two must be bit-identical to the unbudgeted decomposition (every route works
per head; the cache's entries do not depend on history); cutting a head by offsets regroups its
per-pair products, so there the bound is the rounding of a length-R sum taken twice, 2·√R·u·A per
pair (A = ``term_abs_max``, the summand scale; docs/math.md §3.15), with the gate still passing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real.decompose import Pairs, decompose, gate_tolerance
from svfcheck.real.decompose import budget as bm
from svfcheck.real.decompose import core as dcore
from svfcheck.real.decompose.plan import Options
from svfcheck.real.heads import extract_heads
from svfcheck.real.svd_cache import SVDCache

FIELDS = ("terms", "contributions", "contributions_rotated", "contributions_paper_control", "singular_values",
          "reconstruction_error", "term_abs_max", "logit", "capped_logit", "attention", "relative_attention", "k",
          "k_rotated", "rolls_tovee", "rolls_tovee_rotated", "rolls_tovee_paper_control", "n_keys")
ARCHS = ["llama", "gemma3_text", "gpt_neox", "qwen3", "olmo2", "cohere", "phi3", "gemma2", "gpt2"]


@pytest.fixture(scope="module")
def setup(tiny):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = tiny.problem(arch, n=40, batch=3)[1:]
        return cache[arch]

    return get


def _levels(heads, cap, pairs, dtype):
    """Budgets that force rounds of whole layers, of single heads, and offset ranges."""
    opts = Options("pair", "auto", False, dtype, 3, 100, (None,))
    eb = SVDCache(heads, lean=True).entry_bytes

    def cost(u):
        return u.entries * eb(u.layer, dtype, True) + u.scratch

    layers = [bm._unit(heads, cap, pairs, opts, l, np.flatnonzero(pairs.layer == l)) for l in range(heads.n_layers)]
    hs = [bm._unit(heads, cap, pairs, opts, l, np.flatnonzero((pairs.layer == l) & (pairs.head == h)))
          for l in range(heads.n_layers) for h in range(heads.layers[l].n_heads)]
    head = max(cost(u) for u in hs)
    return {"layer": max(cost(u) for u in layers), "head": head, "offsets": int(0.6 * head)}


def _rounds(monkeypatch):
    seen = []
    real = dcore.plan_rounds

    def spy(*a):
        r = real(*a)
        seen.append(r)
        return r

    monkeypatch.setattr(dcore, "plan_rounds", spy)
    return seen


def _same(got, want, fields=FIELDS):
    for f in fields:
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("level", ["layer", "head"])
@pytest.mark.parametrize("arch", ARCHS)
def test_budget_gives_bit_identical_results(arch, level, dtype, setup, monkeypatch):
    heads, cap, pairs = setup(arch)
    want = decompose(heads, cap, pairs, cache=SVDCache(heads), dtype=dtype, seed=3)
    budget = _levels(heads, cap, pairs, dtype)[level]
    seen = _rounds(monkeypatch)
    cache = SVDCache(heads, lean=True)
    got = decompose(heads, cap, pairs, cache=cache, dtype=dtype, seed=3, memory_budget=budget)
    _same(got, want)
    assert [k.shape == want.keys[i].shape for i, k in enumerate(got.keys)] == [True] * len(pairs)
    rounds = seen[0]
    if arch == "gpt2":  # RoPE-free: fast route, no core table; still one round per layer at most
        assert len(rounds) >= 1
        return
    assert len(rounds) > 1  # the budget did force rounds
    units = [u for r in rounds for u in r.units]
    split = any(len(np.unique(pairs.head[u.idx])) < heads.layers[u.layer].n_heads for u in units)
    if level == "head":
        assert split
    else:  # whole layers, or (to keep both workers busy) whole groups of heads sharing a key head
        for u in units:
            lh = heads.layers[u.layer]
            g = np.unique(lh.kv_head(pairs.head[u.idx]))
            sel = (pairs.layer == u.layer) & np.isin(lh.kv_head(pairs.head), g)
            assert len(u.idx) == sel.sum()
    assert cache.stats.peak_bytes <= budget and all(r.room >= 0 for r in rounds)
    if level == "head":  # tables had to go between rounds (a layer's other heads' entries)
        assert cache.stats.evicted > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gemma2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_budget_cutting_a_head_by_offsets_is_exact_to_rounding(arch, dtype, setup, monkeypatch):
    heads, cap, pairs = setup(arch)
    want = decompose(heads, cap, pairs, cache=SVDCache(heads), dtype=dtype, seed=3)
    seen = _rounds(monkeypatch)
    got = decompose(heads, cap, pairs, cache=SVDCache(heads, lean=True), dtype=dtype, seed=3,
                    memory_budget=_levels(heads, cap, pairs, dtype)["offsets"])
    units = [u for r in seen[0] for u in r.units]
    assert any(np.sum((pairs.layer == u.layer) & (pairs.head == pairs.head[u.idx[0]])) > len(u.idx) for u in units)
    u = torch.finfo(dtype).eps
    bound = 2 * np.sqrt(heads.layers[0].head_dim) * u * want.term_abs_max
    for f in ("terms", "contributions", "contributions_rotated", "contributions_paper_control"):
        err = np.abs(getattr(got, f) - getattr(want, f)).max(-1)
        assert (err <= bound).all(), (f, float((err / bound).max()))
    np.testing.assert_array_equal(got.singular_values, want.singular_values)
    assert (got.reconstruction_error <= gate_tolerance(want, dtype)).all() if dtype == torch.float32 else \
        got.max_reconstruction_error < 1e-5


def test_a_budget_below_the_smallest_piece_is_refused(setup):
    heads, cap, pairs = setup("llama")
    with pytest.raises(bm.BudgetError, match="memory budget of .* too small"):
        decompose(heads, cap, pairs, cache=SVDCache(heads, lean=True), memory_budget=1000)
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        decompose(heads, cap, pairs, memory_budget=0)


def test_eviction_keeps_the_layers_needed_soonest(tiny):
    """Layers are decomposed in ascending order, prompt after prompt: making room for layer 3
    of 5 evicts the layers just behind it (2, then 1: needed last), not layer 4 (needed next)
    nor layer 0 (the next prompt's first) — plain LRU would evict 0 and 1, the next two."""
    from transformers import AutoModel

    cfg = tiny.config("llama")
    cfg.num_hidden_layers = 5
    torch.manual_seed(0)
    heads = extract_heads(AutoModel.from_config(cfg, attn_implementation="eager", dtype=torch.float64).eval())
    cache = SVDCache(heads, lean=True)
    for l in range(5):
        cache.core_lookup(l, np.arange(-5, 1), torch.float32, span=(-20, 0))
    one = cache._core[(0, torch.float32)].held_bytes()
    assert all(t.held_bytes() == one for t in cache._core.values())
    new = np.arange(-12, -6)
    H = heads.layers[3].n_heads
    add = H * len(new) * cache.entry_bytes(3, torch.float32, False)
    cache.prepare([(3, new, torch.float32, None, (-20, 0), None)], room=cache.held_bytes() + add - 3 * one // 2)
    assert sorted(k[0] for k in cache._core) == [0, 3, 4]
    assert cache.stats.evicted == 2 * H * 6 and cache.held_bytes() <= 5 * one + add - 3 * one // 2


def test_pipeline_budget_groups_layers_and_keeps_fields(setup, monkeypatch):
    """decompose_batches with a budget: the batch is decomposed in layer groups (outputs
    within a quarter of the budget), merged back in pair order, only the fields asked for
    kept, each group's attention dropped once decomposed; numbers as without a budget."""
    from svfcheck.real import sad_groups
    from svfcheck.real.sad_step import StepOptions, decompose_batches

    heads, cap, pairs = setup("llama")
    caps = {0: cap}
    got, want = [], []

    def select(s, ids, mask, c):
        return pairs, None

    class Fake:
        def __init__(self, c):
            self.c = c

    monkeypatch.setattr(sad_groups, "_OUT_SHARE", 1e-9)  # one layer per group
    dropped = []
    real = sad_groups._drop_attention
    monkeypatch.setattr(sad_groups, "_drop_attention", lambda c, ls: dropped.append(list(ls)) or real(c, ls))
    keep = ("contributions", "rolls_tovee", "keys")
    opts = StepOptions(seed=3, dtype=torch.float64, memory_budget_gb=1.0, core_cache=False, keep=keep)
    ids = cap.input_ids
    decompose_batches(None, heads, [(0, ids, cap.token_mask.long())], select, lambda r: got.append(r.decomposition), opts,
                      captures=dict(caps))
    decompose_batches(None, heads, [(0, ids, cap.token_mask.long())], select, lambda r: want.append(r.decomposition),
                      StepOptions(seed=3, dtype=torch.float64), captures=dict(caps))
    g, w = got[0], want[0]
    np.testing.assert_array_equal(g.contributions, w.contributions)
    np.testing.assert_array_equal(g.rolls_tovee, w.rolls_tovee)
    assert all(np.array_equal(a, b) for a, b in zip(g.keys, w.keys))
    assert g.terms is None and g.k is None and g.max_reconstruction_error == w.max_reconstruction_error
    assert dropped == [[l] for l in range(heads.n_layers)]
    assert isinstance(g.pairs, Pairs) and len(g.pairs) == len(pairs)


def test_pipeline_budget_too_small_names_the_users_budget_and_what_to_set(setup):
    """A budget the per-pair results leave (almost) nothing of is refused in the user's terms:
    their budget in GB (not the 1 byte left for the decomposition), what the results take, the
    smallest piece's need and a budget that would do; that budget then runs."""
    from svfcheck.real.sad_step import StepOptions, decompose_batches

    heads, cap, pairs = setup("llama")
    R = heads.layers[0].head_dim
    from svfcheck.real.sad_groups import GB, output_bytes

    small = output_bytes(len(pairs), R) / GB  # the results alone fill it
    batch = [(0, cap.input_ids, cap.token_mask.long())]
    opts = StepOptions(seed=3, dtype=torch.float64, memory_budget_gb=small, core_cache=False)
    with pytest.raises(bm.BudgetError) as e:
        decompose_batches(None, heads, batch, lambda *a: (pairs, None), lambda r: None, opts, captures={0: cap})
    msg = str(e.value)
    n0 = int((pairs.layer == 0).sum())  # a quarter of the budget holds less than a layer: one layer per group
    assert f"a memory budget of {small:.3g} GB is too small" in msg and f"layer 0 ({n0:,} pairs)" in msg
    assert e.value.need > 0
    suggested = float(msg.rsplit("at least ", 1)[1].split(" GB")[0])
    got = []
    opts = StepOptions(seed=3, dtype=torch.float64, memory_budget_gb=suggested, core_cache=False)
    decompose_batches(None, heads, batch, lambda *a: (pairs, None), lambda r: got.append(r), opts, captures={0: cap})
    assert len(got) == 1 and len(got[0].decomposition.pairs) == len(pairs)


@pytest.mark.parametrize("which", ["top", "threshold"])
def test_selection_one_layer_at_a_time_gives_the_same_pairs_in_the_same_order(setup, which):
    """analyze selects pairs from views of one layer's attention at a time (no stacked copy of
    every layer's): the same pairs, in the same order, as one call over the stacked prompt —
    for every head and for a head list given out of layer order."""
    from svfcheck.real.sad import _by_layer
    from svfcheck.tasks.selection import threshold_pairs, top_key_pairs

    heads, cap, _ = setup("gemma3_text")  # sliding-window layers: the masks differ by layer
    fn, kw = (top_key_pairs, {"skip_first": True}) if which == "top" else (threshold_pairs, {})
    L, H = heads.n_layers, heads.layers[0].n_heads
    shuffled = [(2, 1), (0, 3), (2, 0), (1, 2), (0, 0)]
    for hl in (None, shuffled):
        for b in range(cap.batch):
            attn, vis = cap.prompt_views(b)
            want = list(fn(attn, vis, heads=hl, prompt_index=b, **kw).pairs)
            got = _by_layer(cap, b, fn, hl, **kw)
            assert got == want and len(want) > 0
            assert {(p.layer, p.head) for p in got} == ({(l, h) for l in range(L) for h in range(H)} if hl is None
                                                        else set(shuffled)) or which == "threshold"
