"""The summed route's per-query sums over visible keys (``decompose.key_sums._key_sums``): prefix sums
for runs of keys from one common start (causal, left padding, bidirectional with padding),
one GEMM for any other mask — both against a plain loop over each query's visible keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real.decompose.key_sums import _key_sums

N = 12


def _masks() -> dict[str, torch.Tensor]:
    ar = torch.arange(N)
    causal = ar[None, :] <= ar[:, None]
    pad = 3  # left padding: keys < 3 never visible, queries < 3 see nothing
    left = causal & (ar[None, :] >= pad) & (ar[:, None] >= pad)
    window = causal & (ar[:, None] - ar[None, :] < 4)  # sliding window of 4 keys
    bidir_right_pad = (ar[None, :] < 9).expand(N, N).clone()  # every query sees keys 0..8
    bidir_left_pad = (ar[None, :] >= 2).expand(N, N).clone()
    gaps = causal.clone()
    gaps[:, 5] = False  # a key nobody sees in the middle: not a run
    rand = torch.rand(N, N, generator=torch.Generator().manual_seed(0)) < 0.5
    return dict(causal=causal, left_pad=left, window=window, bidir_right_pad=bidir_right_pad,
                bidir_left_pad=bidir_left_pad, gaps=gaps, random=rand, empty=torch.zeros(N, N, dtype=torch.bool))


@pytest.mark.parametrize("name", list(_masks()))
def test_key_sums_equal_a_loop_over_visible_keys(name):
    """Float64, so the only difference is summation order: 1e-12 relative to the summands'
    scale. A mask wrongly taken for a prefix run (window, gaps, random) would include keys the
    query cannot see and miss this by O(1)."""
    vis = _masks()[name]
    g = torch.Generator().manual_seed(1)
    O = torch.randn(N, 7, dtype=torch.float64, generator=g)
    wz = torch.randn(N, 3, dtype=torch.float64, generator=g)
    N_i, zs = _key_sums(vis, O, wz)
    want_N = torch.stack([O[vis[i]].sum(0) for i in range(N)])
    want_z = torch.stack([wz[vis[i]].sum(0) for i in range(N)])
    assert N_i.shape == want_N.shape and zs.shape == want_z.shape
    np.testing.assert_allclose(N_i.numpy(), want_N.numpy(), rtol=0, atol=1e-12 * N)
    np.testing.assert_allclose(zs.numpy(), want_z.numpy(), rtol=0, atol=1e-12 * N)
