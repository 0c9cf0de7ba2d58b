"""The per-(layer, head, Δ) core cache is filled lazily: only the entries asked for are
computed, each on its own, so what the cache holds — and every decomposition read from it —
does not depend on which requests came first or how they were grouped.

Equality here is exact (``assert_array_equal``): every entry is one core's SVD computed by
the same per-matrix code whatever its batch neighbours (tests/real/test_svd.py checks
``core_svd`` and the blocked table build for that), so a wrong (head, Δ) row, a stale
converted copy or a garbage (never computed) entry shows up as an O(1) difference, not as
rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real.decompose import Pairs, decompose
from svfcheck.real.heads import extract_heads
from svfcheck.real import svd_cache as svd
from svfcheck.real.svd_cache import SVDCache


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny.problem("llama", n=16, batch=2)[1:]


def test_core_lookup_computes_only_the_requested_entries(tiny_models):
    heads = extract_heads(tiny_models("gemma3_text"))
    lazy, full = SVDCache(heads), SVDCache(heads)
    H = heads.layers[1].n_heads
    assert H >= 2
    Ut, S, Vt, F, rows = lazy.core_lookup(1, [3, -2, 3], torch.float64, heads=[0, 1, 0], span=(-10, 5))
    assert len(lazy) == 2  # (head 0, Δ 3) and (head 1, Δ −2); the span is allocated, not computed
    assert S.shape[:2] == (H, 16) and rows.tolist() == [13, 8, 13]  # table over −10..5
    ref = full.core_lookup(1, [3, -2], torch.float64)  # every head at both offsets
    assert len(full) == 2 * H
    for got, want in zip((Ut, S, Vt, F), ref[:4]):
        np.testing.assert_array_equal(got[0, 13].numpy(), want[0, ref[4][0]].numpy())
        np.testing.assert_array_equal(got[1, 8].numpy(), want[1, ref[4][1]].numpy())
    # float32 copies: converted entry by entry as they are computed, then grown with the range
    a32 = lazy.core_lookup(1, [3], torch.float32, heads=[0])
    b32 = lazy.core_lookup(1, [-12, 3], torch.float32, heads=[H - 1, H - 1])  # grows: −12..5
    assert len(lazy) == 4 and b32[1].shape[1] == 18
    np.testing.assert_array_equal(a32[1][0, a32[4][0]].numpy(), S[0, 13].float().numpy())
    f64 = lazy.core_lookup(1, [3, -2, -12, 3], torch.float64, heads=[0, 1, H - 1, H - 1])
    assert len(lazy) == 4  # nothing new
    for t32, t64 in zip(b32[:4], f64[:4]):
        for h, r in zip((0, 1, H - 1, H - 1), f64[4].tolist()):
            np.testing.assert_array_equal(t32[h, r].numpy(), t64[h, r].float().numpy())
    np.testing.assert_array_equal(f64[1][1, f64[4][1]].numpy(), ref[1][1, ref[4][1]].numpy())  # moved intact


def test_a_decomposition_computes_one_core_per_head_and_offset_it_uses(llama):
    heads, cap, pairs = llama
    cache = SVDCache(heads)
    copies = []
    with pytest.MonkeyPatch.context() as mp:  # the workers write the copies: none made afterwards
        mp.setattr(svd, "_copy_rows", lambda *a: copies.append(a))
        decompose(heads, cap, pairs, cache=cache, dtype=torch.float32)
    assert copies == []
    for tab in cache._core.values():  # each new entry's float32 copy and control row are held
        assert torch.equal(tab.conv[torch.float32][1], tab.filled) and torch.equal(tab.ctl[torch.float32][2], tab.filled)
    d = cap.positions[pairs.prompt, pairs.key_pos].numpy() - cap.positions[pairs.prompt, pairs.query_pos].numpy()
    used = len(set(zip(pairs.layer.tolist(), pairs.head.tolist(), d.tolist())))
    assert len(cache) == used
    assert used < sum(lh.n_heads for lh in heads.layers) * (2 * cap.token_mask.shape[1] - 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lazily_filled_cache_gives_the_same_decomposition(llama, dtype):
    """Three histories, one answer: a fresh (lazy) cache, whose workers write each new entry's
    float32 copy and basis-control row as they compute it; a cache filled beforehand in float64
    over every head and offset, whose copies and control table are then made afterwards, entry
    by entry; a cache first used for a shuffled third of the pairs (both, in increments)."""
    heads, cap, pairs = llama
    n = cap.token_mask.shape[1]
    fresh = decompose(heads, cap, pairs, cache=SVDCache(heads), dtype=dtype)
    full = SVDCache(heads)
    for l in range(heads.n_layers):
        full.core_lookup(l, np.arange(-(n - 1), n), torch.float64)
    assert all(not tab.conv and not tab.ctl for tab in full._core.values())  # nothing converted yet
    rng = np.random.default_rng(3)
    part = np.sort(rng.permutation(len(pairs))[: len(pairs) // 3])
    first = SVDCache(heads)
    decompose(heads, cap, Pairs.of(*(getattr(pairs, f)[part] for f in ("prompt", "layer", "head", "query_pos", "key_pos"))),
              cache=first, dtype=dtype)
    assert 0 < len(first) < len(full)
    for cache in (full, first):
        got = decompose(heads, cap, pairs, cache=cache, dtype=dtype)
        for f in ("terms", "contributions", "contributions_rotated", "contributions_paper_control",
                  "singular_values", "reconstruction_error"):
            np.testing.assert_array_equal(getattr(got, f), getattr(fresh, f), err_msg=f)
