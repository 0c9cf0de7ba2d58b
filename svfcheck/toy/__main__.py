"""``python -m svfcheck.toy --out DIR``: train the default toy model, write figures + toy.json.

Options: ``--preset NAME`` (default, single-pair, 100-features, rope, over-capacity),
``--seeds 0,1,2``, ``--steps N``, ``--sweeps`` (also run the App. A sweeps into DIR/sweeps),
``--anisotropy`` (also App. C.3 into DIR/anisotropy.json), ``--workers K``, ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cliargs import SEED_MAX, bounded_int, int_list, parse_args, prepare_out_dir, run_guarded
from .config import PRESETS

# The paper's longest run (App. A) is 80k steps; a million is a generous ceiling that still
# fails fast on a typo such as 99999999999999 instead of starting a run that never ends.
MAX_STEPS = 1_000_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svfcheck toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--seeds", type=int_list(0, SEED_MAX), default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=10_000,
                   help=f"training steps per seed (default 10000, at most {MAX_STEPS})")
    p.add_argument("--sweeps", action="store_true", help="also run the App. A sweeps (minutes)")
    p.add_argument("--anisotropy", action="store_true", help="also run the App. C.3 experiment")
    p.add_argument("--workers", type=bounded_int(1, 64), default=1, help="processes for --sweeps (default 1)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return run_guarded("svfcheck toy", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from .run import run_preset, run_sweeps, to_jsonable

    seeds = args.seeds
    out = prepare_out_dir(args.out)
    res = run_preset(args.preset, out, seeds=seeds, steps=args.steps, progress=not args.quiet)
    print(f"wrote {out / 'toy.json'}; all seeds aligned: {res['all_aligned']} "
          f"(mean |cos| query {res['mean_query_cos']:.3f}, key {res['mean_key_cos']:.3f}; {res['seconds']:.1f} s)")
    if args.sweeps:
        run_sweeps(out / "sweeps", seeds=seeds[:1], workers=args.workers, progress=not args.quiet)
        print(f"wrote {out / 'sweeps' / 'sweeps.json'}")
    if args.anisotropy:
        from .anisotropy import anisotropy_experiment

        a = {t: anisotropy_experiment(teacher=t, progress=not args.quiet) for t in ("toy", "whitened")}
        for v in a.values():
            for row in v["rows"]:
                row.pop("A", None)
        (out / "anisotropy.json").write_text(json.dumps(to_jsonable(a), indent=1) + "\n")
        print(f"wrote {out / 'anisotropy.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
