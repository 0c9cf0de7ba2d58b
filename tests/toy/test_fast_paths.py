"""The trainer's fast paths give the reference numbers (cheap; no marker).

- data: per-step float32 uniforms drawn straight into the batch (``ToyModel._draw_uniform``)
  are bit for bit the strengths of the raw 64-bit path (``_draw_raw`` + ``_strengths``, still
  used with RoPE) — the per-instance data stream did not change; the uniforms, made from raw
  64-bit words, are bit for bit numpy's ``g.random(dtype=float32)`` (even and odd per-step
  counts, padded instances), the strengths made from them in fewer passes are bit for bit
  ``_strengths_from_uniform`` of those uniforms, the trainer's reused batch buffer gives the
  same batches, and the stream's bytes are pinned to those of the code before the raw draw;
- work arrays: ``losses_and_grads``' reused (and shared) work arrays give bit for bit the
  losses, gradients and trained parameters of fresh arrays;
- gradient: the Ω = W_Q W_Kᵀ form of the head gradient and the Λ-support target of
  ``losses_and_grads`` equal autograd through ``losses`` for Λ supports that are not a prefix
  range, Λ = 0, a dense Λ, and after ``Lam`` is modified in place (the cached support);
- optimizer: the trainer's FusedAdamW is torch's fused AdamW bit for bit, follows PyTorch's
  per-tensor AdamW to float32 rounding, and the trainer's lr schedule is LambdaLR's bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib
import math

import numpy as np
import pytest
import torch

from svfcheck.toy.config import ToyConfig, TrainConfig
from svfcheck.toy.model import ToyModel

train_mod = importlib.import_module("svfcheck.toy.train")  # the package re-exports a function ``train``


@pytest.mark.parametrize("cfgs", [
    [ToyConfig()],
    [ToyConfig(), ToyConfig(p=0.2), ToyConfig(n=12, d_h=4)],  # padded batch
    [ToyConfig(n=21, m=2, n_keys=170)],  # odd per-step count (21 × 255)
    [ToyConfig(strengths="binary", p=0.3)],
], ids=["default", "padded", "odd-count", "binary"])
def test_uniform_path_equals_raw_path(cfgs):
    """Exact equality: each strength is the correctly rounded u/p of the same 24 random bits."""
    seeds = list(range(3, 3 + len(cfgs)))
    fast = ToyModel(cfgs, seeds)
    ref = ToyModel(cfgs, seeds)
    got = [fast.next_batch(50).fT for _ in range(7)]
    raw, _ = ref._draw_raw(7)
    for s, f in enumerate(got):
        assert torch.equal(f, ref._strengths(raw[:, s]).contiguous()), s
    assert torch.equal(torch.cat([b.fT for b in fast.draw(2)]), torch.cat([ref.next_batch(1).fT for _ in range(2)]))


# one group: an even per-step count (20 × 255), an odd one (21 × 255) and padding (n = 12, 21)
MIXED_ODD = [ToyConfig(n=20, m=2, n_keys=170), ToyConfig(n=21, m=2, n_keys=170, p=0.3),
             ToyConfig(n=12, m=2, n_keys=170, p=0.8)]


@pytest.mark.parametrize("cfgs", [
    [ToyConfig()] * 3,
    [ToyConfig(), ToyConfig(n=12, d_h=4, p=0.2), ToyConfig(n=30, p=0.9)],  # padded, even counts
    MIXED_ODD,
], ids=["default", "padded", "odd-even-padded"])
def test_raw_word_uniforms_equal_numpy_float32(cfgs):
    """``_draw_uniform`` (64-bit raw words, shifted and scaled) is bit for bit numpy's
    ``g.random(dtype=float32)`` of the same generator, step after step, with zeros (+0) in
    padded rows. Catches swapped low/high halves of a word, a wrong shift, random_raw used for an
    odd count (numpy's buffered spare half-word is then skipped and every later step shifts),
    instances written at the padded rather than their own row length, stale padded rows."""
    seeds = list(range(5, 5 + len(cfgs)))
    fast, ref = ToyModel(cfgs, seeds), ToyModel(cfgs, seeds)  # ref: same generators after init
    T = fast.Q * (1 + fast.m)
    buf = torch.full((fast.I, fast.N, T), float("nan"))
    for step in range(4):
        u = fast._draw_uniform(out=buf if step % 2 else None)
        for i, c in enumerate(cfgs):
            want = ref.gens[i].random((c.n, T), dtype=np.float32)
            assert np.array_equal(u[i, : c.n].numpy().view(np.uint32), want.view(np.uint32)), (step, i)
            assert np.all(u[i, c.n:].numpy().view(np.uint32) == 0), (step, i)


@pytest.mark.parametrize("cfgs", [
    [ToyConfig(), ToyConfig(n=12, d_h=4, p=0.2)],
    MIXED_ODD,
    [ToyConfig(strengths="binary", p=0.3), ToyConfig(strengths="binary", p=0.7)],
], ids=["padded", "odd-even-padded", "binary"])
def test_strengths_from_raw_words_equal_reference(cfgs):
    """``_draw_strengths`` (numpy divides the integers by −p·2²⁴, then threshold and negation) is
    bit for bit ``_strengths_from_uniform`` of numpy's float32 uniforms, signs of zero included;
    ``next_batch(reuse=True)`` (the trainer's) fills one buffer again and again and gives the
    same batches as fresh arrays. Catches a division by p instead of p·2²⁴ or by a rounded
    reciprocal, a presence test that differs from the thresholded quotient at the edge, and a
    reused buffer that keeps data (or padded-row signs) from the step before."""
    seeds = [3, 4, 5][: len(cfgs)]
    fast, ref, fresh = ToyModel(cfgs, seeds), ToyModel(cfgs, seeds), ToyModel(cfgs, seeds)
    ptrs = set()
    for step in range(4):
        got = fast.next_batch(1, reuse=True).fT
        ptrs.add(got.data_ptr())
        want = ref._strengths_from_uniform(ref._draw_uniform())
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), step
        assert torch.equal(fresh.next_batch(1).fT.view(torch.int32), want.view(torch.int32)), step
    assert len(ptrs) == 1  # one buffer, reused
    a, b = fresh.next_batch(1), fresh.next_batch(1)
    assert a.fT.data_ptr() != b.fT.data_ptr() and not torch.equal(a.fT, b.fT)  # default: fresh arrays


def test_data_stream_pinned():
    """The bytes of the first three steps' strengths (padded, even and odd counts) are those the
    code produced before the raw-word draw (sha256 recorded from it): every toy figure depends on
    this stream. numpy's PCG64 stream and IEEE float32 division are platform-independent."""
    groups = {
        "b75e3404188251c3e58ea25381a8a7e5dc7c5e5995cfbdf962da0971d56432c9":
            [ToyConfig(), ToyConfig(n=12, d_h=4, p=0.2), ToyConfig(n=30, p=0.9)],
        "84f86954cc3ab686be9ee6aeca73f81b28dcee737b4d12c38afb834fd997d41a":
            [ToyConfig(n=21, m=2, n_keys=170), ToyConfig(n=20, m=2, n_keys=170, p=0.3)],
    }
    for digest, cfgs in groups.items():
        m = ToyModel(cfgs, [11, 12, 13][: len(cfgs)])
        h = hashlib.sha256()
        for step in range(3):
            h.update(m.next_batch(1, reuse=bool(step % 2)).fT.numpy().tobytes())
        assert h.hexdigest() == digest, [c.name for c in cfgs]


@pytest.mark.parametrize("case", ["default-25", "padded-mixed", "odd-teacher", "head-only"])
def test_reused_work_arrays_change_nothing(monkeypatch, case):
    """``losses_and_grads`` with its reused, partly shared work arrays (``ToyModel._work``) and the
    trainer's reused batch buffer gives bit for bit the losses and gradients of each step, and the
    parameters after a few AdamW steps, of the same code given fresh NaN-filled arrays on every
    call (the real fresh-array path of small batches, ``ToyModel._fresh``, is the plain code). Catches a work array read before it is written in a step (NaN, or the previous step's
    data), two arrays sharing a buffer while both are live, and returned losses or gradients
    aliasing a work array (they would change at the next call)."""
    kw = {}
    if case == "default-25":
        cfgs = [ToyConfig()] * 25
    elif case == "padded-mixed":
        cfgs = [ToyConfig(), ToyConfig(n=30, d_h=6, p=0.2), ToyConfig(n=12, d_h=4, lam=40.0),
                ToyConfig(pairs=((0, 19, 5.0), (12, 3, 8.0)))]
    elif case == "odd-teacher":
        cfgs = [ToyConfig(n=21, m=2, n_keys=170, pairs=()), ToyConfig(n=20, m=2, n_keys=170, pairs=(), p=0.3)]
        kw["teacher"] = np.random.default_rng(0).standard_normal((2, 10, 10))
    else:
        cfgs = [ToyConfig(), ToyConfig(n=12, d_h=4)]
    seeds = list(range(len(cfgs)))
    reused, fresh = ToyModel(cfgs, seeds, **kw), ToyModel(cfgs, seeds, **kw)

    def nan_work(name, shape):
        return torch.full(shape, float("nan"))

    monkeypatch.setattr(fresh, "_work", nan_work)
    for mdl in (reused, fresh):  # work arrays whatever the batch size (small ones use fresh arrays)
        monkeypatch.setattr(mdl, "_WORK_MIN", 0)
    recon = case != "head-only"
    models = (reused, fresh)
    for mdl in models:
        if not recon:
            mdl.W.requires_grad_(False)
            mdl.b.requires_grad_(False)
    params = [[p for p in (mdl.W, mdl.b, mdl.WQ, mdl.WK) if p.requires_grad] for mdl in models]
    opts = [train_mod.FusedAdamW(ps, lr=1e-2, weight_decay=0.01) for ps in params]
    prev = None
    for step in range(4):
        out = []
        for mdl, reuse in ((reused, True), (fresh, False)):
            L = mdl.losses_and_grads(mdl.next_batch(1, reuse=reuse), reconstruction=recon)
            out.append((L, [p.grad for p in (mdl.W, mdl.b, mdl.WQ, mdl.WK)]))
        (La, ga), (Lb, gb) = out
        assert all(torch.equal(x, y) for x, y in zip(La, Lb)), step
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb)), step
        assert all(torch.isfinite(x).all() for x in La)
        if prev is not None:  # the previous step's results were not overwritten by this one
            assert all(torch.equal(x, y) for x, y in zip(prev[0], prev[1])), step
        prev = ([x for x in La] + [g for g in ga if g is not None],
                [x.clone() for x in La] + [g.clone() for g in ga if g is not None])
        for o in opts:
            o.step()
    for x, y in zip(params[0], params[1]):
        assert torch.equal(x, y)


def _grad_check(m: ToyModel):
    """losses_and_grads vs autograd (tolerance as in test_model.test_manual_gradient_equals_autograd:
    rtol 1e-4 of each gradient's largest entry, float32 sums in a different order)."""
    with torch.no_grad():
        m.b.copy_(0.3 * torch.randn(m.b.shape, generator=torch.Generator().manual_seed(0)) * m.feat_mask)
    batch = m.next_batch(1)
    for P in (m.W, m.b, m.WQ, m.WK):
        P.grad = None
    L_rec, L_attn = m.losses(batch)
    (L_rec + m.lam * L_attn).sum().backward()
    ref = {k: getattr(m, k).grad.clone() for k in ("W", "b", "WQ", "WK")}
    for P in (m.W, m.b, m.WQ, m.WK):
        P.grad = None
    L_rec2, L_attn2 = m.losses_and_grads(batch)
    assert torch.allclose(L_rec.detach(), L_rec2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(L_attn.detach(), L_attn2, rtol=1e-5, atol=1e-6)
    for k, g in ref.items():
        got = getattr(m, k).grad
        assert torch.allclose(got, g, rtol=0, atol=1e-4 * float(g.abs().max())), (k, float((got - g).abs().max()))


def test_target_support_and_omega_head_match_autograd():
    scattered = ToyConfig(pairs=((0, 19, 5.0), (12, 3, 8.0), (7, 7, 2.0)))
    dense = ToyConfig.from_matrix(np.random.default_rng(0).uniform(-3, 3, (20, 20)))
    m = ToyModel([scattered, ToyConfig(pairs=()), ToyConfig(d_h=4), dense], [0, 1, 2, 3])
    _grad_check(m)
    only_zero = ToyModel([ToyConfig(pairs=())] * 2, [0, 1])  # Λ = 0 everywhere: zero target
    _grad_check(only_zero)


def test_target_cache_follows_in_place_lambda_change():
    m = ToyModel([ToyConfig()], [0])
    b = m.next_batch(1)
    before = m._target_fT(b.fT)
    with torch.no_grad():
        m.Lam.zero_()
        m.Lam[0, 15, 1] = 10.0  # outside the default pairs' rows and columns
    after = m._target_fT(b.fT)
    expect = (10.0 * b.fT[0, 15, : m.Q])[None, None, :] * b.fT[0, 1, m.Q:].view(m.m, m.Q)
    assert not torch.equal(before, after)
    assert torch.equal(after, expect)


def test_fused_adamw_is_torch_fused_adamw():
    """FusedAdamW is bit for bit ``torch.optim.AdamW(fused=True)`` (same kernel, state and skip of
    gradient-less parameters), under a changing learning rate."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 10, 20), (3, 20), (3, 10, 10)]
    ps_a = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ps_b = [torch.nn.Parameter(p.detach().clone()) for p in ps_a]
    a = train_mod.FusedAdamW(ps_a, lr=1e-2, weight_decay=0.01)
    b = torch.optim.AdamW(ps_b, lr=1e-2, weight_decay=0.01, fused=True)
    for step in range(30):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for pa, pb, gr in zip(ps_a, ps_b, grads):
            pa.grad, pb.grad = gr.clone(), gr.clone()
        if step % 7 == 3:  # a parameter without a gradient is skipped (its step count too)
            ps_a[1].grad = ps_b[1].grad = None
        a.param_groups[0]["lr"] = b.param_groups[0]["lr"] = 1e-2 * (1 - step / 30)
        a.step()
        b.step()
    for pa, pb in zip(ps_a, ps_b):
        assert torch.equal(pa, pb)


def test_trainer_schedule_is_lambdalr(monkeypatch):
    """The trainer sets lr = base · f(step) itself; with the per-tensor AdamW this is bit for bit
    the reference loop with torch.optim.AdamW + LambdaLR (autograd path, no records consume data)."""
    monkeypatch.setattr(train_mod, "ADAMW_IMPL", "single")
    tc = TrainConfig(steps=30, progress=False, record_every=10, manual_grad=False)
    m = ToyModel([ToyConfig(), ToyConfig(p=0.3)], [0, 1])
    train_mod.train(m, tc)
    ref = ToyModel([ToyConfig(), ToyConfig(p=0.3)], [0, 1])
    params = [ref.W, ref.b, ref.WQ, ref.WK]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, foreach=False)
    total = tc.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for _step in range(total):
        L_rec, L_attn = ref.losses(ref.next_batch(tc.chunk))
        opt.zero_grad(set_to_none=True)
        (L_rec + ref.lam * L_attn).sum().backward()
        opt.step()
        sched.step()
    for k in ("W", "b", "WQ", "WK"):
        assert torch.equal(getattr(m, k), getattr(ref, k)), k


def test_fused_adamw_matches_single_tensor(monkeypatch):
    """200 default-config steps: the fused kernel and PyTorch's per-tensor AdamW agree to 1e-6
    (float32 rounding of weights ≤ ~1.2: measured 6e-8; the dynamics amplify rounding slowly,
    ~5e-6 after 2000 steps), and both are deterministic."""
    tc = TrainConfig(steps=200, progress=False, record_every=100)
    out = {}
    for impl in ("single", "fused", "fused"):
        monkeypatch.setattr(train_mod, "ADAMW_IMPL", impl)
        m = ToyModel([ToyConfig(), ToyConfig(n=30, d_h=6, p=0.2)], [0, 1])
        opt = train_mod.make_optimizer([m.WQ], tc)
        assert isinstance(opt, train_mod.FusedAdamW if impl == "fused" else torch.optim.AdamW)
        train_mod.train(m, tc)
        st = m.state()
        if impl in out:
            for k in st:
                assert np.array_equal(st[k], out[impl][k]), k
        out[impl] = st
    for k in out["single"]:
        assert np.allclose(out["single"][k], out["fused"][k], rtol=0, atol=1e-6), k
    assert not np.array_equal(out["single"]["WQ"], ToyModel([ToyConfig()], [0]).WQ.detach().numpy())  # it trained
    monkeypatch.setattr(train_mod, "ADAMW_IMPL", "nope")
    with pytest.raises(ValueError, match="ADAMW_IMPL"):
        train_mod.make_optimizer([m.WQ], tc)
