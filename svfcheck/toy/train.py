"""Training of batched toy models (docs/math.md §1.3, paper App. A.1).

- :func:`train` trains one :class:`~svfcheck.toy.model.ToyModel` (all its instances at once):
  AdamW, lr with cosine decay to 0 over ``steps``, ``n_keys`` keys and ``n_keys/m`` queries
  per step per instance, trajectory every ``record_every`` steps, tqdm progress bar.
- :func:`train_many` takes any list of configs × seeds, groups them into batched models by
  shape (:func:`~svfcheck.toy.model.group_compatible`; n and d_h are padded within a group),
  trains each group and returns the results in input order.
- A non-finite loss stops training with :class:`NonFiniteLossError`, which carries the last
  state whose loss was finite (``err.state``, ``err.step``) and the trajectory so far.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .config import ToyConfig, TrainConfig
from .metrics import one_to_one_alignment, pair_alignment, summarize
from .model import ToyModel, group_compatible

__all__ = ["NonFiniteLossError", "InstanceResult", "TrainResult", "train", "train_many", "make_model"]


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN/inf. ``state`` is the last state with a finite loss."""

    def __init__(self, msg: str, step: int, state: dict, trajectory: dict, instances: list[int]):
        super().__init__(msg)
        self.step = step
        self.state = state
        self.trajectory = trajectory
        self.instances = instances


@dataclass
class InstanceResult:
    """One trained instance: config, seed, unpadded weights, summary and trajectory."""

    config: ToyConfig
    seed: int
    weights: dict
    summary: dict
    trajectory: dict = field(default_factory=dict)

    def to_json(self, trajectory: bool = True) -> dict:
        d = {"config": self.config.name, "seed": self.seed, "n": self.config.n, "d": self.config.d,
             "d_h": self.config.d_h, "m": self.config.m, "p": self.config.p, "lam": self.config.lam,
             "summary": self.summary}
        if trajectory:
            d["trajectory"] = {k: v for k, v in self.trajectory.items() if k not in ("W", "U", "V")}
        return d


@dataclass
class TrainResult:
    instances: list[InstanceResult]
    seconds: float
    steps: int
    groups: int

    @property
    def instance_steps(self) -> int:
        """Optimizer steps actually taken, summed over instances (an early stop ends a group
        before ``steps``; its last recorded step is where it stopped)."""
        total = 0
        for r in self.instances:
            st = r.trajectory.get("step") if r.trajectory else None
            total += int(st[-1]) if st is not None and len(st) else self.steps
        return total

    @property
    def steps_per_second(self) -> float:
        """Model steps per second: mean steps actually taken per instance × batched groups."""
        if self.seconds <= 0:
            return float("inf")
        return self.instance_steps / max(len(self.instances), 1) * self.groups / self.seconds


def make_model(configs: Sequence[ToyConfig], seeds: Sequence[int], device="cpu", features=None) -> ToyModel:
    return ToyModel(configs, seeds, device=device, features=features)


def _omega_batch(model: ToyModel):
    with torch.no_grad():
        WQ = (model.WQ * model.head_mask[:, None, :]).double()
        WK = (model.WK * model.head_mask[:, None, :]).double()
        om = WQ @ WK.transpose(1, 2)
        U, S, Vh = torch.linalg.svd(om)
    return U.cpu().numpy(), S.cpu().numpy(), Vh.transpose(1, 2).cpu().numpy()


def _record(model: ToyModel, traj: list[dict], step: int, L_rec, L_attn, snapshots: bool) -> None:
    U, S, V = _omega_batch(model)
    W = model.W.detach().double().cpu().numpy()
    for i, c in enumerate(model.configs):
        al = pair_alignment(c, W[i][:, : c.n], U[i], V[i])
        rec = {
            "step": step,
            "loss_rec": float(L_rec[i]),
            "loss_attn": float(L_attn[i]),
            "spectrum": S[i][: c.d_h].tolist(),
            "query_index": al["query_index"],
            "key_index": al["key_index"],
            "query_free": al["query_free"],
            "key_free": al["key_free"],
        }
        if snapshots:
            rec["W"] = W[i][:, : c.n].copy()
            rec["U"] = U[i][:, : c.d_h].copy()
            rec["V"] = V[i][:, : c.d_h].copy()
        traj[i].append(rec)


def _aligned(model: ToyModel, threshold: float) -> list[bool]:
    """Early-stop criterion at a record, per instance: one-to-one alignment ≥ threshold
    (:func:`~svfcheck.toy.metrics.one_to_one_alignment`: every pair of interest has its own
    singular index, any order, with query and key |cos| ≥ threshold; False without pairs).
    Implies the matching-free mean ≥ threshold (max over indices ≥ the assigned index)."""
    U, _S, V = _omega_batch(model)
    W = model.W.detach().double().cpu().numpy()
    return [bool(one_to_one_alignment(c.pairs_of_interest, W[i][:, : c.n], U[i], V[i], c.d_h)["value"] >= threshold)
            for i, c in enumerate(model.configs)]


def _stack(recs: list[dict]) -> dict:
    out: dict = {}
    for k in recs[0] if recs else []:
        vals = [r[k] for r in recs]
        out[k] = np.asarray(vals) if k in ("W", "U", "V") else vals
    return out


#: AdamW implementation used by :func:`train`: ``"fused"`` (PyTorch's fused AdamW kernel
#: ``torch._fused_adamw_``, one C++ call for all parameters, called directly by
#: :class:`FusedAdamW`) or ``"single"`` (``torch.optim.AdamW``'s default on CPU, the per-tensor
#: loop). Same algorithm and hyper-parameters; the fused kernel orders the float32 operations
#: differently, so trajectories agree to float32 rounding (tests/toy/test_fast_paths.py). Why:
#: on CPU the per-tensor loop is ~25% of a 1-instance step, and ``torch.optim``'s constructor
#: imports ``torch._dynamo`` (~1 s in every fresh process, e.g. each ``train_many`` worker).
ADAMW_IMPL = "fused"


class FusedAdamW:
    """AdamW (decoupled weight decay, β = (0.9, 0.999), ε = 1e-8, no amsgrad: torch's defaults)
    through the kernel ``torch.optim.AdamW(fused=True).step()`` calls, with the same state (step
    counters as float32 scalars, moments zero-initialised) and the same skip of parameters
    without a gradient — bit for bit that optimizer (tested), without its Python machinery.
    ``param_groups[0]["lr"]`` is the learning rate of the next step."""

    def __init__(self, params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.param_groups = [{"lr": float(lr)}]
        self.weight_decay, self.betas, self.eps = float(weight_decay), tuple(betas), float(eps)
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        steps = [self.steps[i] for i in live]
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(
            [self.params[i] for i in live], [self.params[i].grad for i in live],
            [self.exp_avgs[i] for i in live], [self.exp_avg_sqs[i] for i in live], [], steps,
            amsgrad=False, lr=self.param_groups[0]["lr"], beta1=self.betas[0], beta2=self.betas[1],
            weight_decay=self.weight_decay, eps=self.eps, maximize=False, grad_scale=None, found_inf=None,
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def make_optimizer(params, tcfg: TrainConfig):
    """The trainer's AdamW over ``params`` (lr, weight decay from ``tcfg``; see :data:`ADAMW_IMPL`).
    Both kinds expose ``step()``, ``zero_grad()`` and ``param_groups[*]["lr"]``."""
    params = list(params)
    if ADAMW_IMPL not in ("fused", "single"):
        raise ValueError(f"ADAMW_IMPL must be 'fused' or 'single'; got {ADAMW_IMPL!r}")
    fusable = all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
                  and p.device.type in ("cpu", "cuda") for p in params)
    if ADAMW_IMPL == "fused" and fusable and hasattr(torch, "_fused_adamw_"):
        return FusedAdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, foreach=False)


def train(model: ToyModel, tcfg: TrainConfig = TrainConfig(), desc: str = "toy") -> list[InstanceResult]:
    """Train all instances of ``model`` in place; return one :class:`InstanceResult` each."""
    old_threads = torch.get_num_threads()
    if tcfg.threads is not None:
        torch.set_num_threads(tcfg.threads)
    try:
        return _train(model, tcfg, desc)
    finally:
        torch.set_num_threads(old_threads)


def _train(model: ToyModel, tcfg: TrainConfig, desc: str) -> list[InstanceResult]:
    from tqdm.auto import tqdm

    params = [model.W, model.b, model.WQ, model.WK] if tcfg.train_features else [model.WQ, model.WK]
    if not tcfg.train_features:
        model.W.requires_grad_(False)
        model.b.requires_grad_(False)
    opt = make_optimizer(params, tcfg)
    total = tcfg.steps
    manual = tcfg.manual_grad and model.rope is None
    if tcfg.cosine:  # lr with cosine decay to 0 over the steps (set before each optimizer step)
        def lr_at(s: int) -> float:  # what LambdaLR(opt, f) sets for step s: base_lr · f(s)
            return tcfg.lr * (0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        lr_at = None
    traj: list[list[dict]] = [[] for _ in range(model.I)]
    streak: list[int | None] = [None] * model.I  # early stop: first step of the current aligned run
    last_good = model.state()
    L_rec = L_attn = None
    bar = tqdm(total=total, desc=desc, disable=not tcfg.progress, mininterval=1.0, leave=False)
    try:
        for step in range(total + 1):
            batch = model.next_batch(tcfg.chunk, reuse=True)  # dropped after this step: reuse its buffer
            if manual:  # loss and hand-derived gradient in one pass (ToyModel.losses_and_grads)
                L_rec, L_attn = model.losses_and_grads(batch, reconstruction=tcfg.train_features)
            else:
                L_rec, L_attn = model.losses(batch, reconstruction=tcfg.train_features)
            loss_i = L_rec + model.lam * L_attn
            fin = torch.isfinite(loss_i)
            if not bool(fin.all()):
                bad = torch.nonzero(~fin).flatten().tolist()
                trajectory = {i: _stack(traj[i]) for i in range(model.I)}
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} in instance(s) {bad} "
                    f"({[model.configs[i].name for i in bad]}, seeds {[model.seeds[i] for i in bad]}); "
                    f"training stopped, err.state holds the last state with a finite loss (step {step - 1})",
                    step=step, state=last_good, trajectory=trajectory, instances=bad,
                )
            if step % tcfg.record_every == 0 or step == total:
                _record(model, traj, step, L_rec.detach().cpu().numpy(), L_attn.detach().cpu().numpy(), tcfg.snapshots)
                if tcfg.stop_aligned is not None:
                    ok = _aligned(model, tcfg.stop_aligned)
                    for i in range(model.I):
                        if ok[i]:
                            streak[i] = step if streak[i] is None else streak[i]
                        else:
                            streak[i] = None
                    if all(s_ is not None and step - s_ >= tcfg.stop_patience for s_ in streak):
                        break
            if step == total:
                break
            last_good = model.state()
            if not manual:
                opt.zero_grad(set_to_none=True)
                loss_i.sum().backward()
            if lr_at is not None:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
            opt.step()
            bar.update(1)
    finally:
        bar.close()
    out = []
    for i, c in enumerate(model.configs):
        w = model.instance_weights(i)
        out.append(InstanceResult(config=c, seed=model.seeds[i], weights=w, summary=summarize(c, w),
                                  trajectory=_stack(traj[i])))
    return out


def _train_job(configs, seeds, tcfg, device):
    model = ToyModel(configs, seeds, device=device)
    return train(model, tcfg, desc=f"toy ({len(configs)} inst)")


def train_many(
    configs: Sequence[ToyConfig] | ToyConfig,
    seeds: Sequence[int] = (0,),
    tcfg: TrainConfig = TrainConfig(),
    device: str = "cpu",
    pad: str = "head",
    workers: int = 1,
    separate_configs: bool = False,
) -> TrainResult:
    """Train every config × seed; batch instances that share a group shape.

    ``configs`` × ``seeds`` is the full cross product, in order config-major (or pass
    ``seeds=None`` and a list of ``(config, seed)`` pairs). Configs that differ only in p, λ, Λ
    always share a batched model; ``pad="head"`` (default) also pads d_h (cheap: the head is
    small), ``pad="all"`` also pads n (every instance then costs as much as the largest n),
    ``pad="none"`` batches identical shapes only. ``workers > 1`` (CPU only) splits the groups
    into that many roughly equal sub-batches and trains them in parallel processes (spawned,
    one torch thread each); an instance's result does not depend on its sub-batch (see
    :mod:`svfcheck.toy.model`), so this changes wall time only. ``separate_configs=True`` gives
    every distinct config its own batched model (its seeds): with ``TrainConfig.stop_aligned``
    each config then stops as soon as its own instances are aligned and stable.
    """
    if isinstance(configs, ToyConfig):
        configs = [configs]
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    if pad not in ("head", "all", "none"):
        raise ValueError(f"pad must be 'head', 'all' or 'none'; got {pad!r}")
    if seeds is None:
        items = [(c, int(s)) for c, s in configs]
    else:
        items = [(c, s) for c in configs for s in seeds]
    if not items:
        raise ValueError("nothing to train: no configs or no seeds")
    groups: list[list[int]] = []
    for idx, (c, _s) in enumerate(items):
        for g in groups:
            c0 = items[g[0]][0]
            same = {"all": group_compatible(c0, c),
                    "head": group_compatible(c0, c) and c0.n == c.n,
                    "none": c0.shape_key == c.shape_key}[pad]
            if separate_configs:
                same = c0 == c
            if same:
                g.append(idx)
                break
        else:
            groups.append([idx])
    results: list[InstanceResult | None] = [None] * len(items)
    t0 = time.perf_counter()
    if workers == 1 or str(device) != "cpu":
        for gi, g in enumerate(groups):
            model = ToyModel([items[i][0] for i in g], [items[i][1] for i in g], device=device)
            res = train(model, tcfg, desc=f"toy group {gi + 1}/{len(groups)} ({len(g)} inst)")
            for i, r in zip(g, res):
                results[i] = r
        n_jobs = len(groups)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        def cost(i):
            c = items[i][0]
            return c.n * c.n_keys * (1 + 1 / c.m)

        jobs: list[list[int]] = []
        for g in groups:
            k = min(workers, len(g))
            gs = sorted(g, key=cost, reverse=True)
            parts = [[] for _ in range(k)]
            loads = [0.0] * k
            for i in gs:  # greedy balance inside the group (padding: cost of the group max n)
                j = loads.index(min(loads))
                parts[j].append(i)
                loads[j] += 1
            jobs += [sorted(p) for p in parts if p]
        jobs.sort(key=lambda j: -len(j) * max(cost(i) for i in j))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [(j, ex.submit(_train_job, [items[i][0] for i in j], [items[i][1] for i in j], tcfg, device))
                    for j in jobs]
            for j, f in futs:
                for i, r in zip(j, f.result()):
                    results[i] = r
        n_jobs = len(jobs)
    return TrainResult(instances=results, seconds=time.perf_counter() - t0, steps=tcfg.steps, groups=n_jobs)
