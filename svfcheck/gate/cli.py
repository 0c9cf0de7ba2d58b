"""``svfcheck gate SPEC...``: evaluate analysis specs; the exit code gates CI.

Exit codes: 0 every condition of every spec passed; 1 at least one condition failed; 2 bad
input (a spec that does not parse or validate, a path that does not exist, a model that
cannot be loaded, bad command-line arguments, a ``--json``/``--out`` location that cannot be
written — checked before any model is loaded) — the message on stderr names the file, the
key and the expected form; 3 the gate itself crashed while evaluating (a bug or an
environment problem, traceback on stderr) — distinct from 1 so that CI never mistakes a broken
gate for a failed analysis, or the reverse. All specs are validated before any model is loaded, so a typo
fails in a second, not after the first analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from ..cliargs import UsageError, parse_args, prepare_out_dir, prepare_out_file
from .spec import SpecError, load_spec, spec_files

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="svfcheck gate",
        description="Evaluate TOML analysis specs (model, task, pairs, pass conditions; see analyses/README.md). "
        "Exit 0 when every condition passes, 1 when one fails, 2 on a bad spec or argument, 3 when the gate itself crashes.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a spec file or a directory of *.toml specs")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON to FILE")
    p.add_argument("--out", metavar="DIR", default=None, help="write gate.json and gate.png into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--check", action="store_true", help="only validate the specs (no model is loaded)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the gate; returns the exit code (0 pass, 1 a condition failed, 2 bad input, 3 crash)."""
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # argparse: --help (0) or a usage error (2)
        return args
    try:
        files = spec_files(args.specs)
    except SpecError as e:
        print(f"svfcheck gate: error: {e}", file=sys.stderr)
        return 2
    specs, errors = [], []
    for f in files:
        try:
            specs.append(load_spec(f))
        except SpecError as e:
            errors.append(e)
    if errors:
        for e in errors:
            print(f"svfcheck gate: spec error: {e}", file=sys.stderr)
        return 2
    try:  # the report's locations, before any model is loaded: a bad path must not cost the analysis
        json_path = prepare_out_file(args.json, "--json") if args.json else None
        out = prepare_out_dir(args.out) if args.out else None
    except UsageError as e:
        print(f"svfcheck gate: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        for s in specs:
            print(f"{s.path}: OK ({len(s.conditions)} condition(s): {', '.join(c.name for c in s.conditions)})")
        return 0

    from .evaluate import evaluate_specs, results_json
    from .report import summary_table, write_figure

    try:
        results, errors = evaluate_specs(specs, progress=not args.quiet)
    except Exception as e:  # not a verdict on the model: say so with its own exit code
        traceback.print_exc()
        print(f"svfcheck gate: internal error while evaluating ({type(e).__name__}: {e}); "
              "no condition was decided — exit 3", file=sys.stderr)
        return 3
    if results:
        print(summary_table(results))
    for e in errors:
        print(f"svfcheck gate: spec error: {e}", file=sys.stderr)
    doc = results_json(results, errors)
    written = []
    try:
        if json_path is not None:
            json_path.write_text(json.dumps(doc, indent=1) + "\n")
            written.append(str(json_path))
        if out is not None:
            (out / "gate.json").write_text(json.dumps(doc, indent=1) + "\n")
            written += [str(out / "gate.json"), str(write_figure(results, out / "gate.png"))]
    except OSError as e:  # the location changed under us (deleted, filled up): the user's path, not a verdict
        print(f"svfcheck gate: error: could not write the report to {e.filename or args.json or args.out}: "
              f"{e.strerror or e} — the verdicts above stand, but exit 2 because the report is missing", file=sys.stderr)
        return 2
    if written:
        print("wrote " + ", ".join(written))
    if errors:
        return 2
    return 0 if doc["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
