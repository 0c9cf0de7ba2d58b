"""Session-scoped trained toy models shared by the heavy (``gpu``) toy tests.

Each fixture trains its whole set of instances once (batched; on CPU split over
``TOY_WORKERS`` processes, default 2 = the CI core count) and caches the results for every
assertion. Budgets: 10k steps for every App. A configuration and the 100-feature preset (the
paper's Fig. 3 run is 10k steps); the p sweep gets the paper's budget of up to 80k steps with
an early stop once aligned and stable (every instance one-to-one aligned — each pair of interest
on its own singular index, any order, query and key |cos| ≥ 0.9, the alignment claim's
threshold — at every record for 5k steps; each p value stops on its own);
4k head-only steps for App. C.3.
"""

from __future__ import annotations

import os

import pytest

from svfcheck.toy.config import TrainConfig, preset
from svfcheck.toy.run import SWEEPS

STEPS = 10_000
P_STEPS = 80_000  # budget; early stop below
P_STOP = 0.9
P_PATIENCE = 5_000
ANISO_STEPS = 4_000

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
LAMBDAS = SWEEPS["lam"]  # 1 .. 100: two orders of magnitude around the default 4
NS = SWEEPS["n"]  # d .. 3d
DHS = SWEEPS["d_h"]
MS = SWEEPS["m"]
PS = SWEEPS["p"]  # exponential steps in [0.05, 1]
P_SEEDS = (0, 1)


def _workers(device: str) -> int:
    if device != "cpu":
        return 1
    return max(1, int(os.environ.get("TOY_WORKERS", min(2, os.cpu_count() or 1))))


def _index(res):
    out: dict = {}
    for r in res.instances:
        out.setdefault(r.config.name, {})[r.seed] = r
    return out


def _dump(name: str, payload, instances: bool = True) -> None:
    """With ``SVFCHECK_TOY_OUT=DIR`` set, write the fixture's measured figures to DIR/name.json."""
    out = os.environ.get("SVFCHECK_TOY_OUT")
    if not out:
        return
    import json
    from pathlib import Path

    from svfcheck.toy.run import arrival_step, to_jsonable

    if instances:
        data = {}
        for cname, seeds in payload.items():
            if cname.startswith("_"):
                data[cname] = seeds
                continue
            data[cname] = {str(s): {**r.to_json(trajectory=False), "arrival_step": arrival_step(r.trajectory)}
                           for s, r in seeds.items()}
    else:
        data = payload
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.json").write_text(json.dumps(to_jsonable(data), indent=1))


@pytest.fixture(scope="session")
def toy_main(device):
    """Default (5 seeds), single pair, Λ=0, λ/n/d_h/m sweeps, over-capacity, RoPE, 100 features: one call."""
    from svfcheck.toy.train import train_many

    D = preset("default")
    items = [(D, s) for s in DEFAULT_SEEDS]
    items += [(preset("single-pair"), s) for s in (0, 1)]
    items += [(D.with_(pairs=(), name="lambda0"), 0)]
    items += [(D.with_(lam=lam, name=f"lam{lam:g}"), 0) for lam in LAMBDAS if lam != D.lam]
    items += [(D.with_(n=n, name=f"n{n}"), 0) for n in NS if n != D.n]
    items += [(D.with_(d_h=h, name=f"dh{h}"), 0) for h in DHS if h != D.d_h]
    items += [(D.with_(m=m, name=f"m{m}"), 0) for m in MS if m != D.m]
    items += [(preset("over-capacity"), s) for s in (0, 1)]
    items += [(preset("rope"), 0)]
    items += [(preset("100-features"), 0)]
    res = train_many(items, seeds=None, tcfg=TrainConfig(steps=STEPS, progress=False, record_every=250,
                                                        snapshots=True),  # W, U, V per record: Fig. 3 data
                     device=device, workers=_workers(device))
    idx = _index(res)
    idx["_seconds"] = res.seconds
    _dump("toy_main", idx)
    return idx


@pytest.fixture(scope="session")
def toy_psweep(device):
    from svfcheck.toy.train import train_many

    D = preset("default")
    cfgs = [D.with_(p=p, name=f"p{p:g}") for p in PS]
    # snapshots: W, U, V per record for the one-to-one arrival step (run.arrival_step_one_to_one)
    res = train_many(cfgs, seeds=P_SEEDS, tcfg=TrainConfig(steps=P_STEPS, progress=False, record_every=250,
                                                          stop_aligned=P_STOP, stop_patience=P_PATIENCE,
                                                          snapshots=True),
                     device=device, workers=_workers(device), separate_configs=True)
    idx = _index(res)
    idx["_seconds"] = res.seconds
    _dump("toy_psweep", idx)
    return idx


@pytest.fixture(scope="session")
def toy_aniso(device):
    from svfcheck.toy.anisotropy import anisotropy_experiment

    import time

    t0 = time.perf_counter()
    res = {t: anisotropy_experiment(teacher=t, seeds=(0, 1, 2), steps=ANISO_STEPS, device=device)
           for t in ("toy", "whitened")}
    _dump("toy_aniso", {**res, "_seconds": time.perf_counter() - t0}, instances=False)
    return res
