"""Measure when alignment arrives in the App. A p sweep (paper Fig. 13), per seed, both metrics.

Same training as the ``toy_psweep`` fixture of tests/toy/conftest.py: default config with
p ∈ SWEEPS["p"], budget 80k steps, record every 250, early stop once every seed of a p value is
one-to-one aligned (TrainConfig.stop_aligned = 0.9) and stable for 5k steps, one batched model
per p value, ONE worker. Prints and writes (``--out``, JSON) per seed: the one-to-one arrival
(:func:`svfcheck.toy.run.arrival_step_one_to_one`), the matching-free arrival
(:func:`svfcheck.toy.run.arrival_step`), the step training stopped at, the final assignment;
and per metric :func:`svfcheck.toy.run.arrival_trend` (seed mean / median per p, the p values
that did not arrive within the budget, Spearman ρ(p, arrival) with those censored as latest).

    .venv/bin/python scripts/p_sweep_arrival.py --seeds 0 1 2 3 4 --out /tmp/p_arrival.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from svfcheck.toy.config import TrainConfig, preset
from svfcheck.toy.metrics import one_to_one_alignment
from svfcheck.toy.run import SWEEPS, arrival_step, arrival_step_one_to_one, arrival_trend, to_jsonable
from svfcheck.toy.train import train_many


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--ps", type=float, nargs="+", default=list(SWEEPS["p"]))
    ap.add_argument("--steps", type=int, default=80_000)
    ap.add_argument("--patience", type=int, default=5_000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    D = preset("default")
    tcfg = TrainConfig(steps=a.steps, progress=False, record_every=250, stop_aligned=0.9,
                       stop_patience=a.patience, snapshots=True)
    rows = {}
    for p in a.ps:
        cfg = D.with_(p=p, name=f"p{p:g}")
        t0 = time.perf_counter()
        res = train_many([cfg], seeds=a.seeds, tcfg=tcfg, workers=1, separate_configs=True)
        sec = time.perf_counter() - t0
        per = {}
        for r in res.instances:
            t = r.trajectory
            fin = one_to_one_alignment(cfg.pairs_of_interest, t["W"][-1], t["U"][-1], t["V"][-1], cfg.d_h)
            per[r.seed] = {"one_to_one": arrival_step_one_to_one(t, cfg), "matching_free": arrival_step(t),
                           "stopped_at": int(t["step"][-1]), "final_one_to_one": fin["value"],
                           "final_assignment": fin["assignment"],
                           "final_query_argmax": r.summary["alignment"]["query_argmax"],
                           "final_key_argmax": r.summary["alignment"]["key_argmax"]}
        rows[p] = {"seconds": sec, "per_seed": per}
        for m in ("one_to_one", "matching_free"):
            v = [x[m] for x in per.values()]
            rows[p][m] = {"mean": float(np.mean(v)) if None not in v else None,
                          "median": float(np.median(v)) if None not in v else None}
        print(f"p={p:g} ({sec:.0f}s): " + "; ".join(
            f"s{s}: 1to1 {x['one_to_one']} free {x['matching_free']} stop {x['stopped_at']} "
            f"asg {x['final_assignment']} qarg {x['final_query_argmax']}" for s, x in per.items()), flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(to_jsonable({"seeds": a.seeds, "rows": rows}), f, indent=1)
    summary = {}
    for m in ("one_to_one", "matching_free"):
        t = arrival_trend({p: [x[m] for x in rows[p]["per_seed"].values()] for p in rows})
        summary[m] = t
        print(f"{m}: seed means {t['mean']} medians {t['median']} not arrived {t['not_arrived']} "
              f"rho(mean) = {t['rho']:.2f} rho(per seed) = {t['rho_per_seed']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(to_jsonable({"seeds": a.seeds, "rows": rows, "summary": summary}), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
