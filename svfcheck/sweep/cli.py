"""``svfcheck sweep PLAN.toml --out DIR [--engine local|ray] [--address ADDR]``.

Runs a sweep plan (``plans/README.md``): models × checkpoints × analyses × seeds, each one
task, on this process (``--engine local``, the default) or on Ray (``--engine ray``: a local
cluster started for the run, or the cluster at ``--address``, e.g. after ``ray start
--head``). Finished tasks are stored under ``DIR/tasks`` by key and never recomputed: rerun
the same command after a kill or a failure. Writes ``DIR/sweep.parquet`` (the merged
dataset), ``DIR/sweep.json`` (plan, tasks, failures, duplicate checkpoints, timings) and
figures. Exit 0 when every task finished, 1 when some failed (listed, with the tasks skipped
because they needed them), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json

from ..cliargs import bounded_int, input_file, parse_args, prepare_out_dir, run_guarded


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="svfcheck sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", metavar="PLAN", help="a sweep plan (.toml); e.g. plans/smoke.toml")
    p.add_argument("--out", required=True, help="output folder (reused to resume)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="where tasks run (default: local)")
    p.add_argument("--address", default=None, help="--engine ray: join the Ray cluster at ADDR (e.g. 127.0.0.1:6379)")
    p.add_argument("--num-cpus", type=bounded_int(1, 4096), default=None,
                   help="--engine ray without --address: CPUs of the local cluster (default: all)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parse_args(p, argv)
    if isinstance(args, int):
        return args
    return run_guarded("svfcheck sweep", lambda: _run(args))


def _run(args) -> int:
    from .driver import run_sweep
    from .plan import load_plan

    input_file(args.plan, "PLAN")
    plan = load_plan(args.plan)
    if args.address is not None and args.engine != "ray":
        raise ValueError("--address joins a Ray cluster; add --engine ray")
    out = prepare_out_dir(args.out)
    r = run_sweep(plan, out, engine=args.engine, address=args.address, num_cpus=args.num_cpus,
                  figures=not args.no_figures, progress=not args.quiet)
    d = r.data
    print(json.dumps({k: d[k] for k in ("n_tasks", "n_computed", "n_reused", "n_failed", "n_rows", "seconds")}
                     | {"dataset": str(out / d["dataset"]), "duplicates": d["duplicates"]}, indent=1))
    for f in r.failures:
        print(f"svfcheck sweep: FAILED {f['label']}: {f['error']}")
    for s in d["skipped"]:
        what = f"{s['analysis']} / {s['series']}" if "analysis" in s else f"series {s['series']}"
        print(f"svfcheck sweep: SKIPPED {what}: {s['reason']}")
    return 1 if r.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
