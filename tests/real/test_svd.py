"""Factored all-heads SVD against a dense numpy float64 SVD of the same head."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from svfcheck.real.heads import extract_heads
from svfcheck.real.reference import rope_delta_reference
from svfcheck.real.svd import (
    ROUTES,
    all_heads_svd,
    dense_svd,
    factor,
    factored_svd,
    three_svd,
)
from svfcheck.real.svd_cache import SVDCache

ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "bert",
         # added families: per-head QK-norm maps (qwen3 shared, olmo2/cohere/stablelm per head, with
         # LayerNorm's centring), interleaved rotary (gptj, cohere), a NoPE layer (smollm3)
         "qwen3", "olmo2", "cohere", "stablelm", "gptj", "smollm3", "phi3", "gemma2")


def _dense_omega(lh, h, delta):
    """Ω̃(Δ) of head h formed explicitly in numpy float64 (independent of svfcheck.real.svd)."""
    g = h // (lh.n_heads // lh.n_kv_heads)
    wq, wk = lh.W_Q[h].double().numpy(), lh.W_K[g].double().numpy()
    if lh.has_bias:
        bq = np.zeros(lh.head_dim) if lh.b_Q is None else lh.b_Q[h].double().numpy()
        bk = np.zeros(lh.head_dim) if lh.b_K is None else lh.b_K[g].double().numpy()
        wq, wk = np.vstack([wq, bq]), np.vstack([wk, bk])
    mid = np.eye(lh.head_dim)
    if lh.rotary is not None:
        mid = rope_delta_reference(lh.rotary.inv_freq, lh.rotary.attention_scaling, lh.head_dim, delta)
    if lh.qk_norm:  # the norm maps diag(g)·P per head (P: LayerNorm's centring), docs/math.md §3.19
        P = np.eye(lh.head_dim) - (1.0 / lh.head_dim if lh.norm_center else 0.0)
        gq, gk = lh.q_gain.double().numpy(), lh.k_gain.double().numpy()
        gq, gk = (gq if gq.ndim == 1 else gq[h]), (gk if gk.ndim == 1 else gk[g])
        mid = (np.diag(gq) @ P).T @ mid @ (np.diag(gk) @ P)
    return wq @ mid @ wk.T


def _assert_same_svd(U, S, V, omega, rtol_s, tol_vec):
    """Singular values (relative), and each singular direction sign-invariantly via principal
    angles (only where the singular value is separated from its neighbours)."""
    Ud, Sd, Vdh = np.linalg.svd(omega)
    r = S.shape[0]
    Ud, Sd, Vd = Ud[:, :r], Sd[:r], Vdh[:r].T
    np.testing.assert_allclose(S, Sd, rtol=rtol_s, atol=rtol_s * Sd[0])
    gaps = np.minimum(np.abs(np.diff(np.r_[np.inf, Sd])), np.abs(np.diff(np.r_[Sd, -np.inf])))
    for k in range(r):
        if gaps[k] < 1e-3 * Sd[0] or Sd[k] < 1e-8 * Sd[0]:
            continue
        for A, B in ((U, Ud), (V, Vd)):
            ang = scipy.linalg.subspace_angles(A[:, [k]], B[:, [k]])
            assert ang.max() < tol_vec, (k, ang)
    # whole subspaces (sign- and rotation-invariant) of the nonzero singular values: a zero one's
    # vectors are arbitrary (a QK LayerNorm's centring makes Ω rank d_h − 1, docs/math.md §3.19)
    nz = Sd > 1e-8 * Sd[0]
    assert scipy.linalg.subspace_angles(U[:, nz], Ud[:, nz]).max() < tol_vec
    assert scipy.linalg.subspace_angles(V[:, nz], Vd[:, nz]).max() < tol_vec


@pytest.mark.parametrize("route", ["cholesky", "qr"])
@pytest.mark.parametrize("arch", ARCHS)
def test_factored_svd_equals_dense_float64(arch, route, tiny_models):
    heads = extract_heads(tiny_models(arch))
    for delta in (0, 5):
        res = all_heads_svd(heads, route=route, delta=delta, core_dtype=torch.float64)
        for l, lh in enumerate(heads.layers):
            for h in range(lh.n_heads):
                omega = _dense_omega(lh, h, delta)
                _assert_same_svd(res.U[l, h].numpy(), res.S[l, h].numpy(), res.V[l, h].numpy(), omega, 1e-10, 1e-8)
                # reconstruction without the d×d matrix ever formed by the route
                rec = res.U[l, h].numpy() @ np.diag(res.S[l, h].numpy()) @ res.V[l, h].numpy().T
                np.testing.assert_allclose(rec, omega, atol=1e-12 * np.abs(omega).max())


@pytest.mark.parametrize("route", ROUTES)
def test_all_routes_agree_and_follow_the_sign_convention(route, tiny_models):
    heads = extract_heads(tiny_models("qwen2"))
    ref = all_heads_svd(heads, route="dense", delta=3)
    res = all_heads_svd(heads, route=route, delta=3)
    torch.testing.assert_close(res.S, ref.S, rtol=1e-10, atol=0)
    torch.testing.assert_close(res.U, ref.U, rtol=0, atol=1e-10)  # same signs as the dense route
    torch.testing.assert_close(res.V, ref.V, rtol=0, atol=1e-10)
    idx = res.U.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(res.U, -2, idx) > 0).all())


def test_sign_convention_is_deterministic_under_weight_sign_flip(tiny_models):
    """Ω is unchanged when W_Q and W_K flip sign together: U, V must be identical."""
    heads = extract_heads(tiny_models("gpt2"))
    wq, wk = heads.layers[0].augmented()
    a = factored_svd(wq, wk)
    b = factored_svd(-wq, -wk)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_gqa_key_heads_factored_once_equal_explicit_repeat(tiny_models):
    lh = extract_heads(tiny_models("llama")).layers[0]
    wq, wk = lh.augmented()
    kv = torch.tensor([lh.kv_head(h) for h in range(lh.n_heads)])
    U, S, V = factored_svd(wq, wk, kv_index=kv)
    U2, S2, V2 = factored_svd(wq, wk[kv])
    torch.testing.assert_close(S, S2, rtol=1e-12, atol=0)
    torch.testing.assert_close(V, V2, rtol=0, atol=1e-10)
    # negative control: a wrong kv mapping gives different singular values
    U3, S3, V3 = factored_svd(wq, wk, kv_index=kv.flip(0))
    assert (S3 - S).abs().max() > 1e-3


def test_biases_enter_through_the_augmented_coordinate(tiny_models):
    heads = extract_heads(tiny_models("qwen2"))
    res = all_heads_svd(heads)
    assert res.augmented and res.U.shape[-2] == heads.layers[0].d_model + 1
    lh = heads.layers[0]
    omega = _dense_omega(lh, 1, 0)
    x = np.random.default_rng(0).standard_normal((2, lh.d_model))
    xt = np.hstack([x, np.ones((2, 1))])
    q = x[0] @ lh.W_Q[1].numpy() + lh.b_Q[1].numpy()
    k = x[1] @ lh.W_K[0].numpy() + lh.b_K[0].numpy()
    assert xt[0] @ omega @ xt[1] == pytest.approx(q @ k, rel=1e-10)
    U, S, V = (t[0, 1].numpy() for t in (res.U, res.S, res.V))
    assert xt[0] @ U @ np.diag(S) @ V.T @ xt[1] == pytest.approx(q @ k, rel=1e-9)


def test_three_svd_and_dense_helpers_agree_with_float64_reference():
    g = torch.Generator().manual_seed(0)
    wq = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    wk = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    Sref = np.stack([np.linalg.svd(wq[i].numpy() @ wk[i].numpy().T, compute_uv=False)[:8] for i in range(3)])
    for fn in (dense_svd, three_svd, factored_svd):
        U, S, V = fn(wq, wk)
        np.testing.assert_allclose(S.numpy(), Sref, rtol=1e-12)


def test_cache_returns_same_cores_as_all_heads_svd(tiny_models):
    heads = extract_heads(tiny_models("gemma3_text"))
    cache = SVDCache(heads)
    H = heads.layers[2].n_heads
    Ut, S, Vt = cache.core(2, [0, 7, 7, 2])
    assert len(cache) == 3 * H  # one SVD per (head, distinct offset), none for the range between
    ref = all_heads_svd(heads, delta=7, core_dtype=torch.float64)
    torch.testing.assert_close(S[1], ref.S[2], rtol=1e-12, atol=0)
    torch.testing.assert_close(S[1], S[2], rtol=0, atol=0)
    cache.core(2, [7, 3])
    assert len(cache) == 4 * H  # 7 reused, 3 computed
    cache.core(2, [-2])
    assert len(cache) == 5 * H  # range extended to -2..7, only -2 computed
    torch.testing.assert_close(cache.core(2, [7])[1][0], S[1], rtol=0, atol=0)  # moved with the growth


def test_rank_deficient_and_bad_route_raise():
    w = torch.zeros(10, 4, dtype=torch.float64)
    w[:, :2] = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(np.linalg.LinAlgError, match="route='qr'"):
        factor(w, "cholesky")
    with pytest.raises(ValueError, match="cholesky"):
        factor(w, "lu")
    with pytest.raises(ValueError, match="unknown SVD route"):
        all_heads_svd(extract_heads(_tiny_gpt2()), route="svd")


def _tiny_gpt2():
    import transformers as tf

    return tf.GPT2Model(tf.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))


def test_batched_svd_is_bit_identical_to_one_call(monkeypatch):
    """Chunked over threads (each chunk single-threaded) == one torch.linalg.svd call, bit for
    bit: each matrix's SVD is computed alone, so chunking cannot change it. Also the worker
    count knob and its validation."""
    from svfcheck.real.threads import batched_map, batched_svd, svd_workers

    C = torch.randn(300, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = torch.linalg.svd(C)
    for workers in (1, 2, 3):
        got = batched_svd(C, workers=workers, min_chunk=8)
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    small = batched_svd(C[:5], workers=4)  # below 2·min_chunk: one call in the caller's thread
    # blocked, into preallocated outputs: the same bits for any block size and worker count
    for workers, block in ((1, 7), (3, 16), (2, None)):
        out = (torch.full_like(want[0], float("nan")), torch.full_like(want[1], float("nan")),
               torch.full_like(want[2], float("nan")))
        got = batched_map(torch.linalg.svd, C, workers=workers, min_chunk=8, out=out, block=block)
        assert all(g is o for g, o in zip(got, out))
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    with pytest.raises(ValueError, match="out's leading axes"):
        batched_map(torch.linalg.svd, C, out=(torch.empty(3, 16, 16),))
    assert torch.equal(small[1], want[1][:5])
    monkeypatch.setenv("SVFCHECK_SVD_WORKERS", "3")
    assert svd_workers() == 3
    monkeypatch.setenv("SVFCHECK_SVD_WORKERS", "0")
    with pytest.raises(ValueError, match="SVFCHECK_SVD_WORKERS must be >= 1"):
        svd_workers()


def test_core_tables_do_not_depend_on_the_worker_count(monkeypatch, tiny):
    """The per-(layer, Δ) core SVDs, their sign convention and ``F`` run per chunk on the worker
    threads (``batched_map``): the tables must be bit-identical for 1 and 3 workers (a chunk-
    dependent step, e.g. a head index taken from the chunk position, would break this), and
    mismatched leading axes are refused."""
    from svfcheck.real.heads import extract_heads
    from svfcheck.real.svd_cache import SVDCache
    from svfcheck.real.threads import batched_map

    heads = extract_heads(tiny.model("gemma3_text"))
    tables = []
    for workers in ("1", "3"):
        monkeypatch.setenv("SVFCHECK_SVD_WORKERS", workers)
        tables.append(SVDCache(heads).core_lookup(1, np.arange(-100, 101), torch.float64)[:4])
    H, n = tables[0][0].shape[:2]
    assert n == 201 and H * n >= 3 * 64  # enough rows for 3 chunks of batched_map's min_chunk
    for a, b in zip(*tables):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="leading axes differ"):
        batched_map(torch.add, torch.zeros(3), torch.zeros(4))


def test_batched_jobs_cover_every_row_once_and_spread_small_jobs_over_workers():
    """Several jobs' rows as one range cut per worker: every row of every job is written once
    (a block boundary or job boundary handled wrong leaves a NaN or writes twice), blocks never
    exceed ``block`` rows, and six jobs of 20 rows (each too small to split on its own) still
    run on both workers."""
    import threading

    from svfcheck.real.threads import batched_jobs

    sizes = [20, 20, 1, 20, 0, 20, 20, 20]
    outs = [torch.full((m,), float("nan")) for m in sizes]
    hits = [torch.zeros(m) for m in sizes]
    seen, blocks = set(), []
    both = threading.Barrier(2, timeout=20)  # each worker's first block waits for the other's

    def job(j):
        def fn(x, rows):
            name = threading.current_thread().name
            if name not in seen and name != threading.main_thread().name:
                seen.add(name)
                both.wait()  # one thread doing all the work never gets past this
            seen.add(name)
            blocks.append(len(rows))
            outs[j][rows] = x * 2
            hits[j][rows] += 1
        return fn, (torch.arange(sizes[j], dtype=torch.float32) + 100 * j, torch.arange(sizes[j]))

    batched_jobs([job(j) for j in range(len(sizes))], workers=2, block=7, min_chunk=16)
    for j, m in enumerate(sizes):
        assert torch.equal(outs[j], 2 * (torch.arange(m, dtype=torch.float32) + 100 * j))
        assert torch.equal(hits[j], torch.ones(m))
    assert max(blocks) <= 7 and len(seen) == 2
    seen.clear()
    batched_jobs([job(2)], workers=2, block=7)  # 1 row: in the caller's thread
    assert seen == {threading.current_thread().name}


def test_prepare_of_several_layers_equals_one_lookup_per_layer(tiny):
    """:meth:`SVDCache.prepare` (all layers' new entries in one pooled run) fills the same
    entries with the same bits as one ``core_lookup`` per layer, float32 copies and basis-control
    rows included, and computes nothing already there."""
    from svfcheck.real.heads import extract_heads
    from svfcheck.real.svd_cache import SVDCache

    heads = extract_heads(tiny.model("gemma3_text"))
    H = heads.layers[0].n_heads
    Q = torch.linalg.qr(torch.randn(H, heads.layers[0].head_dim, heads.layers[0].head_dim, dtype=torch.float64))[0]
    reqs = [(l, np.array([3, -2, 3, 7]) + l, torch.float32, [0, H - 1, 1, 0], (-10, 12), (5, Q)) for l in range(heads.n_layers)]
    one, many = SVDCache(heads), SVDCache(heads)
    want = [one.core_lookup(l, d, dt, heads=hs, span=sp, control=c) for l, d, dt, hs, sp, c in reqs]
    many.prepare(reqs)
    distinct = sum(len(set(zip(hs, d.tolist()))) for _, d, _, hs, _, _ in reqs)
    assert len(many) == len(one) == distinct
    many.prepare(reqs)  # nothing new
    assert len(many) == len(one)
    for (l, d, dt, hs, sp, _), w in zip(reqs, want):
        got = many.core_lookup(l, d, dt, heads=hs, span=sp)
        for g, e in zip(got[:4], w[:4]):
            for h, r in zip(hs, w[4].tolist()):
                assert torch.equal(g[h, r], e[h, r])
        fh1, fh2 = one.control_table(l, dt, 5, Q), many.control_table(l, dt, 5, Q)
        for h, r in zip(hs, w[4].tolist()):
            assert torch.equal(fh1[h, r], fh2[h, r])


def _cores_with_spectrum(s: np.ndarray, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n cores ``Q₁ diag(s) Q₂ᵀ`` with Haar Q's and a known spectrum (descending)."""
    from svfcheck.metrics import haar_orthogonal

    rng = np.random.default_rng(seed)
    q1, q2 = (torch.as_tensor(haar_orthogonal(len(s), rng, size=(n,))) for _ in range(2))
    S = torch.as_tensor(np.sort(s)[::-1].copy()).expand(n, -1)
    return (q1 * S[:, None, :]) @ q2.transpose(-1, -2), S


@pytest.mark.parametrize(
    "kind, s",
    [
        ("well conditioned", np.linspace(1.0, 0.05, 16)),
        # Gram route alone: σ_min off by 3.7e-9 relative with ŨᵀŨ − I ≈ 7e-9 (a certificate
        # looser than that passes it), and by ~1e-3 at κ = 1e7
        ("moderately ill conditioned", np.geomspace(1.0, 1e-4, 16)),
        ("ill conditioned", np.geomspace(1.0, 1e-7, 16)),
        ("rank deficient", np.r_[np.linspace(2.0, 0.5, 13), 0.0, 0.0, 0.0]),
    ],
)
def test_core_svd_is_an_accurate_svd_or_falls_back_to_gesdd(kind, s):
    """core_svd (Gram eigendecomposition, certified) against cores of known spectrum: every
    singular value within 1e-13·σ_max absolute and 1e-9 relative where σ > 0 (the Gram route
    alone misses the relative bound by orders of magnitude for the ill-conditioned cores: a
    missing or too-loose certificate fails it), C = Ũ S Ṽᵀ and orthonormal Ũ, Ṽ to 1e-12,
    subspaces (|cos| of singular vectors, distinct σ) equal to torch.linalg.svd's."""
    from svfcheck.real.svd import core_svd

    C, S_true = _cores_with_spectrum(s, 40, seed=3)
    U, S, V = core_svd(C)
    eye = torch.eye(C.shape[-1], dtype=torch.float64)
    assert (S[:, :-1] >= S[:, 1:]).all()
    err = (S - S_true).abs()
    assert float(err.max()) <= 1e-13 * float(S_true.max())
    pos = S_true > 0
    assert float((err[pos] / S_true[pos]).max()) <= 1e-9
    assert float(((U * S[:, None, :]) @ V.transpose(-1, -2) - C).abs().max()) <= 1e-12 * float(S_true.max())
    assert float((V.transpose(-1, -2) @ V - eye).abs().max()) <= 1e-12
    assert float((U.transpose(-1, -2) @ U - eye).abs().max()) <= 1e-12
    Ur, _, Vhr = torch.linalg.svd(C)
    k = int(pos[0].sum())  # the null space is a subspace, not vectors
    cos = (V[..., :k] * Vhr.transpose(-1, -2)[..., :k]).sum(-2).abs()
    assert float((1 - cos).abs().max()) <= 1e-8
    cosu = (U[..., :k] * Ur[..., :k]).sum(-2).abs()
    assert float((1 - cosu).abs().max()) <= 1e-8


def test_core_svd_decides_per_core():
    """A core's result does not depend on its batch neighbours (so the cache's chunking and
    blocking cannot change a table), in particular not on whether a neighbour fell back."""
    from svfcheck.real.svd import core_svd

    good, _ = _cores_with_spectrum(np.linspace(1.0, 0.1, 8), 5, seed=4)
    bad, _ = _cores_with_spectrum(np.geomspace(1.0, 1e-9, 8), 5, seed=5)
    mixed = torch.cat([good[:2], bad[:3], good[2:], bad[3:]])
    alone = [core_svd(good), core_svd(bad)]
    together = core_svd(mixed)
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (0, 2), (0, 3), (0, 4), (1, 3), (1, 4)]
    for row, (which, r) in enumerate(order):
        for got, want in zip(together, alone[which]):
            assert torch.equal(got[row], want[r])
    assert core_svd(good[:0])[1].shape == (0, 8)
