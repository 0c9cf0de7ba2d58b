"""The compiled per-pair loops (svfcheck.real.kernels) against references written from their
definitions with torch ops.

Tolerances: float64 inputs, sums of at most 2·d_h products: 1e-13 × the sum of |summands|
(a sequential sum of n terms is within n·u·Σ|summands|, u = 1.1e-16, n ≤ 32 here). Float32
inputs are checked against the float64 reference with the same bound at float32's u
(``2·n·u32·Σ|summands|``). Errors from a wrong row layout, a wrong table row or a missing
factor are O(1) relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real import kernels
from svfcheck.real.decompose.gate import _gate

DH, R, P, T = 8, 8, 6, 4


def _rot_half(x, rd):
    h = rd // 2
    return torch.cat([-x[..., h:rd], x[..., :h]], dim=-1)


def _g_rows(q, F, rd, halves):
    """``G = D_q F`` (e × R): the query side of ``λ_kr = cs_k · G[:, r]`` as the per-key route
    defines it — rows ``q⊙F`` for the cos and pass-through coordinates, ``rot(q)⊙F`` for the
    −sin ones; with ``halves`` (each angle shared by dims t and t + rd/2) the two rows of one
    angle are added."""
    qF = q[:, None] * F
    rF = _rot_half(q, rd)[:rd, None] * F[:rd]
    if not halves:
        return torch.cat([qF, rF], 0)  # cos (rd), pass-through (dh − rd), −sin (rd)
    h = rd // 2
    return torch.cat([qF[:h] + qF[h:rd], qF[rd:], rF[:h] + rF[h:rd]], 0)


def _inputs(dtype, rd, halves, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = DH if halves else DH + rd
    Mk = torch.randn(P, e, R, generator=g, dtype=torch.float64)
    F = torch.randn(T, DH, R, generator=g, dtype=torch.float64)
    q = torch.randn(P, DH, generator=g, dtype=torch.float64)
    safe = torch.rand(T, R, generator=g, dtype=torch.float64) + 0.5
    slots = np.array([2, 0, 2, 3, 1, 2], dtype=np.int64)
    return Mk, F, q, safe, slots, e


def _run_query_side(Mk, F, q, safe, slots, rd, halves, dtype, want_xd=True):
    n = lambda t: t.to(dtype).contiguous().numpy()  # noqa: E731
    tsum = np.empty((P, R), dtype=n(Mk).dtype)
    XD = np.empty((P, DH, R) if want_xd else (0, 0, 0), dtype=tsum.dtype)
    kernels.query_side_sums(n(Mk), n(F), slots, n(q), n(safe), rd, halves, tsum, XD)
    return tsum, XD


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rd,halves", [(8, True), (4, True), (8, False), (4, False)])
def test_query_side_sums_match_the_definition(rd, halves, dtype):
    Mk, F, q, safe, slots, e = _inputs(dtype, rd, halves)
    tsum, XD = _run_query_side(Mk, F, q, safe, slots, rd, halves, dtype)
    u = torch.finfo(dtype).eps
    for p, t in enumerate(slots):
        G = _g_rows(q[p], F[t], rd, halves)
        ref = (G * Mk[p]).sum(0)
        bound = 4 * (e + DH) * u * (G * Mk[p]).abs().sum(0)
        np.testing.assert_array_less(np.abs(tsum[p] - ref.numpy()), bound.numpy() + 1e-300)
        # X is what Σ_e F[e, r]·X[e, r] = tsum_r makes it: the tsum of F = 1 on row a alone
        for a in range(DH):
            Fa = torch.zeros(DH, R, dtype=torch.float64)
            Fa[a] = 1.0
            Ga = _g_rows(q[p], Fa, rd, halves)
            x_ref = (Ga * Mk[p]).sum(0) * safe[t]
            np.testing.assert_array_less(np.abs(XD[p, a] - x_ref.numpy()),
                                         (4 * (e + DH) * u * ((Ga * Mk[p]).abs().sum(0) * safe[t])).numpy() + 1e-300)


def test_query_side_sums_without_xd_gives_the_same_sums():
    Mk, F, q, safe, slots, _ = _inputs(torch.float64, 8, True)
    a, _ = _run_query_side(Mk, F, q, safe, slots, 8, True, torch.float64)
    b, XD = _run_query_side(Mk, F, q, safe, slots, 8, True, torch.float64, want_xd=False)
    assert XD.shape[0] == 0
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_dots_and_vecmats_read_each_pairs_table_row(dtype):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(P, DH, R, generator=g, dtype=torch.float64)
    Tab = torch.randn(T, DH, R, generator=g, dtype=torch.float64)
    y = torch.randn(P, DH, generator=g, dtype=torch.float64)
    slots = np.array([3, 3, 0, 1, 2, 0], dtype=np.int64)
    u = torch.finfo(dtype).eps
    n = lambda t: t.to(dtype).contiguous().numpy()  # noqa: E731
    got = np.empty((P, R), dtype=n(A).dtype)
    kernels.row_dots(n(A), n(Tab), slots, got)
    ref = (Tab[slots] * A).sum(1)
    np.testing.assert_array_less(np.abs(got - ref.numpy()), (4 * DH * u * (Tab[slots] * A).abs().sum(1)).numpy())
    Y = torch.stack([y, y.flip(0), -2 * y], 1)  # K = 3 row vectors per pair
    got3 = np.empty((P, 3, R), dtype=got.dtype)
    kernels.row_vecmats(n(Y), n(Tab), slots, got3)
    ref = torch.einsum("pkd,pdr->pkr", Y, Tab[slots])
    bound = 4 * DH * u * torch.einsum("pkd,pdr->pkr", Y.abs(), Tab[slots].abs())
    np.testing.assert_array_less(np.abs(got3 - ref.numpy()), bound.numpy())


@pytest.mark.parametrize("rd", [8, 4])
@pytest.mark.parametrize("inverse", [False, True])
def test_rope_rows_is_the_models_rotation_of_each_row(rd, inverse):
    from svfcheck.real.decompose.rope import _rope

    g = torch.Generator().manual_seed(4)
    n = 9
    x = torch.randn(P, DH, generator=g, dtype=torch.float64)
    ang = torch.rand(n, rd // 2, generator=g, dtype=torch.float64) * 6
    cos, sin = torch.cat([ang.cos(), ang.cos()], 1), torch.cat([ang.sin(), ang.sin()], 1)
    idx = np.array([8, 0, 3, 3, 5, 1], dtype=np.int64)
    out = np.empty((P, DH))
    kernels.rope_rows(x.numpy(), cos.numpy(), sin.numpy(), idx, inverse, out)
    np.testing.assert_array_equal(out, _rope(x, cos[idx], sin[idx], inverse=inverse).numpy())
    # and it is a rotation: the inverse undoes it
    back = np.empty((P, DH))
    kernels.rope_rows(out, cos.numpy(), sin.numpy(), idx, not inverse, back)
    np.testing.assert_allclose(back, x.numpy(), rtol=0, atol=1e-14)


def test_prefix_rows_is_the_row_by_row_cumulative_sum():
    a = np.random.default_rng(2).standard_normal((9, 5))
    want = a.copy()
    for k in range(1, 9):
        want[k] = want[k] + want[k - 1]
    kernels.prefix_rows(a)
    np.testing.assert_array_equal(a, want)
    b = np.ones((4, 3), dtype=np.float32)
    kernels.prefix_rows(b)
    np.testing.assert_array_equal(b[:, 0], [1, 2, 3, 4])


def _gate_reference(LG, LA, qs, vis, att, j, lg_j, csum):
    """The summed route's gate as torch ops (what decompose computed before the kernel)."""
    ar = torch.arange(LG.shape[0])
    lg = qs[:, None] * LG
    vf = vis.to(LG.dtype)
    m = vf.sum(-1)
    rel_row = lg[ar, j] - ((lg * vf).sum(-1) - lg[ar, j]) / (m - 1)
    lg = lg.clone()
    lg[ar, j] = lg_j
    err = torch.maximum(_gate(lg, vis, att), (csum - rel_row).abs())
    amax = (qs.abs()[:, None] * LA).masked_fill(~vis, 0.0).amax(-1)
    return err, amax


def _gate_inputs(seed=3, n=7):
    g = torch.Generator().manual_seed(seed)
    LG = torch.randn(P, n, generator=g, dtype=torch.float64)
    LA = LG.abs() + torch.rand(P, n, generator=g, dtype=torch.float64)
    qs = torch.rand(P, generator=g, dtype=torch.float64) + 0.1
    qs[1] = -qs[1]
    vis = torch.rand(P, n, generator=g) < 0.7
    j = torch.tensor([0, 2, 3, 1, 6, 4])
    vis[torch.arange(P), j] = True
    vis[:, 5] = True  # at least 2 visible keys per row
    att = torch.softmax(torch.randn(P, n, generator=g, dtype=torch.float64).masked_fill(~vis, float("-inf")), -1)
    att[0, 5] = 0.0  # a zero attention is skipped, not log(0)
    lg_j = qs * LG[torch.arange(P), j] + 1e-3 * torch.randn(P, generator=g, dtype=torch.float64)
    csum = torch.randn(P, generator=g, dtype=torch.float64)
    return LG, LA, qs, vis, att, j, lg_j, csum


def _run_gate(LG, LA, qs, vis, att, j, lg_j, csum):
    err, amax = np.empty(P), np.empty(P)
    kernels.gate_rows(LG.numpy(), LA.numpy(), qs.numpy(), vis.numpy(), att.numpy(), j.numpy(), lg_j.numpy(),
                      csum.numpy(), err, amax)
    return err, amax


def test_gate_rows_matches_the_torch_gate():
    args = _gate_inputs()
    err, amax = _run_gate(*args)
    ref_err, ref_amax = _gate_reference(*args)
    np.testing.assert_allclose(err, ref_err.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(amax, ref_amax.numpy())
    # invisible keys do not count, however large their logits
    LG, LA, qs, vis, att, j, lg_j, csum = args
    k = int(torch.nonzero(~vis[2])[0])
    LG2, LA2 = LG.clone(), LA.clone()
    LG2[2, k], LA2[2, k] = 1e6, 1e6
    err2, amax2 = _run_gate(LG2, LA2, qs, vis, att, j, lg_j, csum)
    np.testing.assert_array_equal(err2, err)
    np.testing.assert_array_equal(amax2, amax)


def test_gate_rows_propagates_nan():
    LG, LA, qs, vis, att, j, lg_j, csum = _gate_inputs()
    LG = LG.clone()
    LG[3, j[3]] = float("nan")  # a visible key of row 3
    err, amax = _run_gate(LG, LA, qs, vis, att, j, lg_j, csum)
    assert np.isnan(err[3]) and np.isnan(amax[3])
    assert np.isfinite(np.delete(err, 3)).all()
    lg_j = lg_j.clone()
    lg_j[4] = float("nan")
    err, _ = _run_gate(LG, LA, qs, vis, att, j, lg_j, csum)
    assert np.isnan(err[4])
    LA = LA.clone()
    k = int(torch.nonzero(vis[1])[-1])
    LA[1, k] = float("nan")  # only the |summand| scale of a visible key
    _, amax = _run_gate(LG, LA, qs, vis, att, j, lg_j, csum)
    assert np.isnan(amax[1])
