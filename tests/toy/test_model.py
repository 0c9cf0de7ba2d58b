"""Batched model, data, determinism, batch independence, non-finite handling (cheap; no marker)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.toy.config import ToyConfig, TrainConfig, preset
from svfcheck.toy.model import ToyModel
from svfcheck.toy.train import NonFiniteLossError, train, train_many

FAST = dict(progress=False, record_every=10)


def test_shapes_and_padding_masks():
    cfgs = [ToyConfig(), ToyConfig(n=30, d_h=6), ToyConfig(n=12, d_h=4, p=0.2)]
    m = ToyModel(cfgs, [0, 1, 2])
    assert m.W.shape == (3, 10, 30) and m.WQ.shape == (3, 10, 10) and m.b.shape == (3, 30)
    b = m.next_batch(4)
    assert b.fq.shape == (3, 256, 30) and b.fk.shape == (3, 256, 4, 30)
    # padded features never present, padded weights exactly zero
    assert torch.all(b.fq[0, :, 20:] == 0) and torch.all(b.fk[2, :, :, 12:] == 0)
    assert torch.all(m.W[0, :, 20:] == 0) and torch.all(m.WQ[1, :, 6:] == 0)
    train(m, TrainConfig(steps=30, **FAST))
    assert torch.all(m.W[0, :, 20:] == 0) and torch.all(m.W[2, :, 12:] == 0)
    assert torch.all(m.b[0, 20:] == 0)
    assert torch.all(m.WQ[1, :, 6:] == 0) and torch.all(m.WK[2, :, 4:] == 0)
    assert m.instance_weights(2)["W"].shape == (10, 12)
    assert m.instance_weights(1)["WQ"].shape == (10, 6)


def test_incompatible_instances_rejected():
    with pytest.raises(ValueError, match="share d, m"):
        ToyModel([ToyConfig(), ToyConfig(m=2)], [0, 1])
    with pytest.raises(ValueError, match="seeds"):
        ToyModel([ToyConfig()], [0, 1])
    with pytest.raises(ValueError, match="at least one"):
        ToyModel([], [])


@pytest.mark.parametrize("p", [0.52, 0.1, 1.0])
def test_strength_distribution(p):
    m = ToyModel([ToyConfig(p=p)], [3])
    f = torch.cat([b.fk.reshape(-1, 20) for b in m.draw(10)])
    present = (f > 0).float().mean().item()
    assert abs(present - p) < 0.01
    vals = f[f > 0]
    assert abs(vals.mean().item() - 0.5) < 0.01  # U[0,1) given presence
    assert vals.max() < 1.0


def test_binary_strengths():
    m = ToyModel([ToyConfig(strengths="binary", p=0.3)], [0])
    f = m.next_batch(2).fk
    assert set(torch.unique(f).tolist()) <= {0.0, 1.0}


def test_losses_match_formula():
    """L_rec and L_attn of the batched forward equal a direct per-instance computation."""
    cfg = ToyConfig(n=20)
    m = ToyModel([cfg, cfg.with_(p=0.3)], [0, 1])
    b = m.next_batch(1)
    L_rec, L_attn = m.losses(b)
    for i in range(2):
        W, bias, WQ, WK = (getattr(m, k)[i].detach().double() for k in ("W", "b", "WQ", "WK"))
        fq, fk = b.fq[i].double(), b.fk[i].double()
        f = torch.cat([fq, fk.reshape(-1, 20)])
        rec = torch.relu(f @ W.T @ W + bias)
        assert torch.isclose(L_rec[i].double(), ((f - rec) ** 2).sum(1).mean(), rtol=1e-4)
        Om = WQ @ WK.T
        logits = torch.einsum("qd,de,qme->qm", fq @ W.T, Om, fk @ W.T)
        tgt = torch.einsum("qa,ab,qmb->qm", fq, torch.as_tensor(cfg.Lambda), fk)
        ce = -(torch.softmax(tgt, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()
        assert torch.isclose(L_attn[i].double(), ce, rtol=1e-4)


def test_deterministic_given_seed():
    a = train_many(ToyConfig(), seeds=[7], tcfg=TrainConfig(steps=40, **FAST)).instances[0]
    b = train_many(ToyConfig(), seeds=[7], tcfg=TrainConfig(steps=40, **FAST)).instances[0]
    for k in ("W", "b", "WQ", "WK"):
        assert np.array_equal(a.weights[k], b.weights[k])
    c = train_many(ToyConfig(), seeds=[8], tcfg=TrainConfig(steps=40, **FAST)).instances[0]
    assert not np.allclose(a.weights["W"], c.weights["W"])


def test_instance_independent_of_batch():
    """An instance trained alone or inside a padded batch with other configs follows the same path.

    Tolerance 1e-4 (float32 weights of size ~0.3–1): the batch only changes float re-association
    inside the matmuls (padding adds exact zeros)."""
    tc = TrainConfig(steps=60, **FAST)
    alone = train_many(ToyConfig(), seeds=[5], tcfg=tc).instances[0]
    mix = train_many([ToyConfig(n=30, d_h=6, p=0.2), ToyConfig(), ToyConfig(lam=40.0)], seeds=[5], tcfg=tc,
                     pad="all").instances
    assert train_many([ToyConfig(n=30), ToyConfig()], seeds=[5], tcfg=TrainConfig(steps=1, **FAST), pad="all").groups == 1
    batched = mix[1]
    for k in ("W", "b", "WQ", "WK"):
        assert np.allclose(alone.weights[k], batched.weights[k], atol=1e-4), k
    # the other instances really are different
    assert not np.allclose(mix[2].weights["WQ"], batched.weights["WQ"], atol=1e-3)


def test_train_many_groups_by_shape_and_keeps_order():
    cfgs = [ToyConfig(m=2), ToyConfig(), ToyConfig(d_h=4), ToyConfig(m=2, p=0.3)]
    res = train_many(cfgs, seeds=[0, 1], tcfg=TrainConfig(steps=3, **FAST))
    assert res.groups == 2
    assert [(r.config, r.seed) for r in res.instances] == [(c, s) for c in cfgs for s in (0, 1)]
    assert res.instances[4].weights["WQ"].shape == (10, 4)
    traj = res.instances[0].trajectory
    assert traj["step"][0] == 0 and traj["step"][-1] == 3
    assert len(traj["spectrum"][0]) == 10


def test_workers_give_same_results_and_pairs_api():
    """Parallel sub-batches (spawned processes) reproduce the serial results (same tolerance)."""
    tc = TrainConfig(steps=20, **FAST)
    items = [(ToyConfig(), 0), (ToyConfig(p=0.3), 1), (ToyConfig(d_h=4), 2), (ToyConfig(m=2), 3)]
    serial = train_many(items, seeds=None, tcfg=tc)
    par = train_many(items, seeds=None, tcfg=tc, workers=2)
    for a, b in zip(serial.instances, par.instances):
        assert (a.config, a.seed) == (b.config, b.seed)
        for k in ("W", "WQ", "WK"):
            assert np.allclose(a.weights[k], b.weights[k], atol=1e-4)
    with pytest.raises(ValueError, match="workers"):
        train_many(ToyConfig(), tcfg=tc, workers=0)
    with pytest.raises(ValueError, match="pad"):
        train_many(ToyConfig(), tcfg=tc, pad="yes")


def test_trajectory_records_every_k():
    r = train_many(ToyConfig(), seeds=[0], tcfg=TrainConfig(steps=25, record_every=10, progress=False, snapshots=True)).instances[0]
    assert r.trajectory["step"] == [0, 10, 20, 25]
    assert r.trajectory["W"].shape == (4, 10, 20) and r.trajectory["U"].shape == (4, 10, 10)
    assert len(r.trajectory["query_index"][0]) == 4


def test_nonfinite_loss_stops_with_last_good_state():
    """An absurd learning rate drives the loss to inf/NaN: training stops with a clear error
    and the last state whose loss was finite."""
    m = ToyModel([ToyConfig(), ToyConfig(lam=0.5)], [0, 1])
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step") as ei:
        train(m, TrainConfig(steps=200, lr=1e25, cosine=False, weight_decay=0.0, **FAST))
    err = ei.value
    assert err.step >= 1
    for k, v in err.state.items():
        assert np.all(np.isfinite(v)), k
    assert isinstance(err.trajectory, dict) and err.instances


@pytest.mark.parametrize("manual", [True, False], ids=["manual-grad", "autograd"])
def test_nonfinite_injected(monkeypatch, manual):
    """Deterministic variant: the loss of instance 1 turns NaN at step 7 (both gradient paths)."""
    m = ToyModel([ToyConfig(), ToyConfig()], [0, 1])
    name = "losses_and_grads" if manual else "losses"
    orig = getattr(m, name)
    calls = {"n": 0}

    def losses(batch, reconstruction=True):
        L_rec, L_attn = orig(batch, reconstruction)
        calls["n"] += 1
        if calls["n"] == 8:
            L_attn = L_attn.clone()
            L_attn[1] = float("nan")
        return L_rec, L_attn

    monkeypatch.setattr(m, name, losses)
    tc = TrainConfig(steps=50, cosine=False, manual_grad=manual, **FAST)
    with pytest.raises(NonFiniteLossError) as ei:
        train(m, tc)
    assert calls["n"] == 8, "the patched loss was not the one the trainer used"
    err = ei.value
    assert err.step == 7 and err.instances == [1]
    assert "instance(s) [1]" in str(err)
    # last good state = the parameters after 6 updates (their loss was finite), not the current ones
    ref = ToyModel([ToyConfig(), ToyConfig()], [0, 1])
    train(ref, TrainConfig(steps=6, cosine=False, manual_grad=manual, **FAST))
    for k in ("W", "b", "WQ", "WK"):
        assert np.array_equal(err.state[k], getattr(ref, k).detach().numpy()), k
    assert not np.array_equal(err.state["WQ"], m.WQ.detach().numpy())


def _autograd_grads(m, batch, reconstruction=True):
    for P in (m.W, m.b, m.WQ, m.WK):
        P.grad = None
    L_rec, L_attn = m.losses(batch, reconstruction=reconstruction)
    (L_rec + m.lam * L_attn).sum().backward()
    out = {k: None if getattr(m, k).grad is None else getattr(m, k).grad.clone() for k in ("W", "b", "WQ", "WK")}
    for P in (m.W, m.b, m.WQ, m.WK):
        P.grad = None
    return L_rec.detach(), L_attn.detach(), out


@pytest.mark.parametrize("case", ["padded-batch", "teacher", "head-only"])
def test_manual_gradient_equals_autograd(case):
    """The trainer's hand-derived backward pass (losses_and_grads) gives autograd's losses and
    gradients. Catches a wrong derivative, a missing λ or 2/T factor, a mix-up of query and key
    layouts, or a padded feature leaking gradient. Tolerance: rtol 1e-4 of each gradient's largest
    entry (float32; both sum ~10^3 products in a different order). A non-zero bias makes the ReLU
    mask non-trivial."""
    if case == "teacher":
        rng = np.random.default_rng(0)
        cfgs = [ToyConfig(strengths="binary", pairs=())] * 2
        m = ToyModel(cfgs, [0, 1], teacher=rng.standard_normal((2, 10, 10)))
    else:
        cfgs = [ToyConfig(), ToyConfig(n=30, d_h=6, p=0.2), ToyConfig(n=12, d_h=4, lam=40.0, m=4)]
        m = ToyModel(cfgs, [0, 1, 2])
    with torch.no_grad():
        m.b.copy_(0.3 * torch.randn(m.b.shape, generator=torch.Generator().manual_seed(0)) * m.feat_mask)
    recon = case != "head-only"
    if case == "head-only":
        m.W.requires_grad_(False)
        m.b.requires_grad_(False)
    batch = m.next_batch(2)
    L_rec, L_attn, ref = _autograd_grads(m, batch, recon)
    L_rec2, L_attn2 = m.losses_and_grads(batch, reconstruction=recon)
    assert torch.allclose(L_rec, L_rec2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(L_attn, L_attn2, rtol=1e-5, atol=1e-6)
    for k, g in ref.items():
        got = getattr(m, k).grad
        if g is None:
            assert got is None, k
            continue
        assert got is not None, k
        assert torch.allclose(got, g, rtol=0, atol=1e-4 * float(g.abs().max())), (k, float((got - g).abs().max()))
    if case == "padded-batch":  # padded features / head columns get exactly zero gradient
        assert torch.all(m.W.grad[0, :, 20:] == 0) and torch.all(m.b.grad[2, 12:] == 0)
        assert torch.all(m.WQ.grad[1, :, 6:] == 0) and torch.all(m.WK.grad[2, :, 4:] == 0)


def test_manual_gradient_rejects_rope():
    m = ToyModel([preset("rope")], [0])
    with pytest.raises(ValueError, match="RoPE"):
        m.losses_and_grads(m.next_batch(1))


def test_batch_views_match_feature_major_layout():
    """fq/fk (used by the autograd path and the SAD code) are views of fT with key j of query q at
    token Q + j·Q + q; both gradient paths must see the same contexts."""
    m = ToyModel([ToyConfig()], [0])
    b = m.next_batch(1)
    Q = m.Q
    assert torch.equal(b.fq[0, 5], b.fT[0, :, 5])
    assert torch.equal(b.fk[0, 7, 2], b.fT[0, :, Q + 2 * Q + 7])


def test_manual_and_autograd_training_agree():
    """Training with either gradient path follows the same trajectory (float32 re-association
    only; tolerance as in test_instance_independent_of_batch)."""
    a = train_many(ToyConfig(), seeds=[3], tcfg=TrainConfig(steps=40, **FAST)).instances[0]
    b = train_many(ToyConfig(), seeds=[3], tcfg=TrainConfig(steps=40, manual_grad=False, **FAST)).instances[0]
    for k in ("W", "b", "WQ", "WK"):
        assert np.allclose(a.weights[k], b.weights[k], atol=1e-4), k


def test_presets_run_one_step():
    for name in ("default", "single-pair", "rope", "over-capacity"):
        r = train_many(preset(name), seeds=[0], tcfg=TrainConfig(steps=2, **FAST)).instances[0]
        assert np.isfinite(r.trajectory["loss_attn"][-1])


def test_early_stop_when_aligned_and_stable():
    """stop_aligned ends training once every instance's one-to-one alignment has stayed at or
    above the threshold for stop_patience steps; until then the run is the unstopped run (same
    trajectory prefix); an unreachable threshold trains the full budget."""
    tc = dict(steps=60, record_every=10, progress=False)
    full = train_many(ToyConfig(), seeds=[0, 1], tcfg=TrainConfig(**tc)).instances
    # a random head already has one-to-one |cos| > 0.05 (4 pairs on 10 directions), so a 0.05
    # threshold holds from step 0 and training stops after the 20-step patience
    early_res = train_many(ToyConfig(), seeds=[0, 1], tcfg=TrainConfig(stop_aligned=0.05, stop_patience=20, **tc))
    early = early_res.instances
    # throughput counts the steps actually taken (2 instances x 20), not the 60-step budget
    assert early_res.instance_steps == 40
    for e, f in zip(early, full):
        assert e.trajectory["step"] == [0, 10, 20]
        assert np.allclose(e.trajectory["query_free"], f.trajectory["query_free"][:3], atol=1e-5)
    never = train_many(ToyConfig(), seeds=[0], tcfg=TrainConfig(stop_aligned=1.0, stop_patience=20, **tc)).instances[0]
    assert never.trajectory["step"][-1] == 60
    # Λ = 0 has no pairs to align: never stops early
    none = train_many(ToyConfig(pairs=()), seeds=[0], tcfg=TrainConfig(stop_aligned=0.05, stop_patience=20, **tc))
    assert none.instances[0].trajectory["step"][-1] == 60


def test_separate_configs_groups():
    tc = TrainConfig(steps=2, progress=False, record_every=1)
    cfgs = [ToyConfig(p=0.5), ToyConfig(p=0.2)]
    assert train_many(cfgs, seeds=[0, 1], tcfg=tc).groups == 1
    res = train_many(cfgs, seeds=[0, 1], tcfg=tc, separate_configs=True)
    assert res.groups == 2 and [(r.config.p, r.seed) for r in res.instances] == [(0.5, 0), (0.5, 1), (0.2, 0), (0.2, 1)]


@pytest.mark.parametrize("n", [20, 21])
def test_data_independent_of_chunk_size(n):
    """The trainer draws raw randomness several steps at a time; the strengths of every step must
    not depend on how many steps are drawn at once. Covers both sampling paths: an even number of
    draws per step (64-bit raw draws) and an odd one (n = 21 features × 255 tokens, 85 queries
    with 2 keys each: numpy's float32 path)."""
    for cfg in (ToyConfig(n=n), ToyConfig(n=n, m=2, n_keys=170)):
        a = ToyModel([cfg], [4])
        b = ToyModel([cfg], [4])
        fa = [a.next_batch(1).fT for _ in range(5)]
        fb = [b.next_batch(3).fT for _ in range(5)]
        for x, y in zip(fa, fb):
            assert torch.equal(x, y)
