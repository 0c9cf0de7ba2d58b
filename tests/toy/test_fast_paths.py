"""The trainer's fast paths give the reference numbers (cheap; no marker).

- data: per-step float32 uniforms drawn straight into the batch (``ToyModel._draw_uniform``)
  are bit for bit the strengths of the raw 64-bit path (``_draw_raw`` + ``_strengths``, still
  used with RoPE) — the per-instance data stream did not change;
- gradient: the Ω = W_Q W_Kᵀ form of the head gradient and the Λ-support target of
  ``losses_and_grads`` equal autograd through ``losses`` for Λ supports that are not a prefix
  range, Λ = 0, a dense Λ, and after ``Lam`` is modified in place (the cached support);
- optimizer: the trainer's FusedAdamW is torch's fused AdamW bit for bit, follows PyTorch's
  per-tensor AdamW to float32 rounding, and the trainer's lr schedule is LambdaLR's bit for bit.
"""

from __future__ import annotations

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
