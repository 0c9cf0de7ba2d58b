"""The ``svfcheck`` command.

Subcommands:
  report   run a compact version of the whole paper on built-in defaults; write index.html + report.json
  toy      train a toy-model preset (paper §3-4); write figures + toy.json
  theory   numerical summary of the theorems (Theorem 1–3) as JSON
  sad      sparse attention decomposition of a real model (IOI or text prompts); write sad.json + figures
  emergence  train a small LM with checkpoints (or take a checkpoint series) and track SAD over training
  gate     evaluate TOML analysis specs (CI gating of model analyses); exit 1 when a condition fails
  readout  what heads' top singular vectors mean: top tokens per pole, dictionary alignment; write readouts.json
  sweep    checkpoints x analyses x seeds as resumable tasks, locally or on Ray; one merged Parquet dataset
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cliargs import (
    MAX_PROMPT_TOKENS,
    MAX_PROMPTS,
    SEED_MAX,
    UsageError,
    bounded_float,
    bounded_int,
    input_file,
    parse_args,
    prepare_out_dir,
    run_guarded,
)
from .real.settings import DEFAULT_MEMORY_BUDGET_GB, MAX_MEMORY_BUDGET_GB, MIN_MEMORY_BUDGET_GB  # standard library only

SEED = bounded_int(0, SEED_MAX)

__all__ = ["main", "build_parser"]


def _cmd_report(args: argparse.Namespace) -> int:
    from svfcheck.reports.paper import run_report

    prepare_out_dir(args.out)
    result = run_report(Path(args.out), seed=args.seed, progress=not args.quiet, quick=args.quick)
    print(f"wrote {Path(args.out) / 'index.html'} and {Path(args.out) / 'report.json'}")
    print(f"{result['n_passed']} of {result['n_claims']} claims reproduced; {result['n_errors']} section(s) failed to run")
    if result["n_errors"]:
        return 1
    return 1 if args.strict and result["n_passed"] < result["n_claims"] else 0


def _cmd_theory(args: argparse.Namespace) -> int:
    from svfcheck.theory.summary import theory_summary

    out = prepare_out_dir(args.out) if args.out is not None else None
    summary = theory_summary(seed=args.seed)
    text = json.dumps(summary, indent=2, sort_keys=True)
    if out is not None:
        (out / "theory.json").write_text(text + "\n")
        print(f"wrote {out / 'theory.json'}")
    else:
        print(text)
    return 0


def _cmd_sad(args: argparse.Namespace) -> int:
    from svfcheck.real.core_disk import default_disk
    from svfcheck.real.figures import write_figures
    from svfcheck.real.models import load_model
    from svfcheck.real.pipeline import run_sad
    from svfcheck.real.settings import SADSettings
    from svfcheck.tasks.ioi import generate_ioi_prompts
    from svfcheck.tasks.prompts import DEFAULT_TEXT, text_prompts

    heads = tuple(_layer_head(h) for h in args.head) if args.head else args.heads
    if args.circuit is not None and args.heads != "paper":
        raise UsageError(f"--circuit {args.circuit} only applies with --heads paper (got --heads {args.heads})")
    if args.text_file is not None:
        if args.task != "text":
            raise UsageError(f"--text-file only applies with --task text (got --task {args.task})")
        text_file = input_file(args.text_file, "--text-file")
    settings = SADSettings(heads=heads, selection=args.selection, circuit=args.circuit, seed=args.seed, dtype=args.dtype,
                           basis=args.basis, memory_budget_gb=args.memory_budget)
    default_disk()  # a core cache location that cannot be used is a usage error before any work
    out = prepare_out_dir(args.out)  # before the analysis: a bad --out must not cost a finished analysis
    progress = not args.quiet
    lm = load_model(args.model, revision=args.revision, progress=progress)
    if args.task == "ioi":
        prompts = generate_ioi_prompts(lm.tokenizer, args.n_prompts or 8, seed=args.seed)
    else:
        text = _read_text(text_file) if args.text_file else DEFAULT_TEXT
        n = args.n_prompts
        if n is None:  # as many chunks as the text holds, at most 8
            n_tok = len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
            n = max(1, min(8, n_tok // max(args.prompt_tokens, 1)))
        prompts = text_prompts(lm.tokenizer, text, n, args.prompt_tokens)
    rl = None
    if args.baseline == "random-init":
        rl = load_model(args.model, revision=args.revision, random_init=True, seed=args.seed, progress=progress)
    run = run_sad(lm, prompts, settings, random=rl, progress=progress)
    sad_json = run.write(out)
    res, base = run.trained, run.random
    figs = write_figures(out, res, base)
    s = res.summary
    print(f"{res.model} ({res.architecture}): {s['n_pairs']} pairs, heads={res.heads_mode}, selection={res.selection}")
    print(f"  mean S: SVD {s['mean_s_svd']:.4f}  basis control {s['mean_s_rotated']:.4f}  paper control {s['mean_s_paper_control']:.4f}")
    print(f"  median k: SVD {s['median_k']}  rotated {s['median_k_rotated']}")
    for c in ("rotated", "paper_control"):
        e = s[f"effect_{c}"]
        print(f"  effect {c}: {e['estimate']:.4f} [{e['low']:.4f}, {e['high']:.4f}] (99%)  Wilcoxon p={s[f'wilcoxon_{c}']['p_value']:.2e}")
    print(f"  max reconstruction error {res.max_reconstruction_error:.2e}")
    if base is not None:
        print(f"random init: {len(base)} pairs, mean S SVD {base.summary['mean_s_svd']:.4f}")
        for line in run.contrast.lines():
            print("  " + line)
    pair_files = "pairs.parquet" + (" and pairs-random-init.parquet" if base is not None else "")
    print(f"wrote {sad_json} (summary; the pairs in {pair_files}) and {len(figs)} figures")
    return 0


def _layer_head(text: str) -> tuple[int, int]:
    a, dot, b = text.strip().partition(".")
    if not dot or not a.isdigit() or not b.isdigit():
        raise UsageError(f"--head takes LAYER.HEAD with whole numbers, e.g. 9.6; got {text!r}")
    return int(a), int(b)


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--text-file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UsageError(f"--text-file {path}: the file holds no text")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svfcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("report", help="run the paper's checks on built-in defaults; write index.html + report.json")
    r.add_argument("--out", default="svfcheck-report", help="output directory (default: svfcheck-report)")
    r.add_argument("--seed", type=SEED, default=0, help="seed for every random choice (default: 0)")
    r.add_argument("--quick", action="store_true", help="smaller budgets (for smoke tests); claims may then fail")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--strict", action="store_true", help="exit 1 when any claim is not reproduced (default: only when a section crashes)")
    r.set_defaults(func=_cmd_report)

    # `svfcheck toy ...` is handed whole to `python -m svfcheck.toy` (see main); listed here for --help.
    sub.add_parser("toy", add_help=False, help="train a toy model preset; write figures + toy.json (svfcheck toy --help)")

    # `svfcheck emergence|gate ...` are handed whole to their modules' main (see main).
    sub.add_parser("emergence", add_help=False,
                   help="train + analyse SAD over checkpoints (svfcheck emergence --help)")
    sub.add_parser("gate", add_help=False, help="evaluate analysis specs; exit 1 on a failed condition (svfcheck gate --help)")
    sub.add_parser("sweep", add_help=False,
                   help="run a sweep plan (checkpoints x analyses x seeds) locally or on Ray (svfcheck sweep --help)")
    sub.add_parser("readout", add_help=False,
                   help="top tokens of heads' singular vectors, dictionary alignment (svfcheck readout --help)")

    t = sub.add_parser("theory", help="numerical summary of Theorems 1-3 (JSON)")
    t.add_argument("--out", default=None, help="directory for theory.json (default: print to stdout)")
    t.add_argument("--seed", type=SEED, default=0, help="seed of the sampled checks (default: 0)")
    t.set_defaults(func=_cmd_theory)

    s = sub.add_parser("sad", help="sparse attention decomposition of a real model; write sad.json + figures")
    s.add_argument("--model", required=True, help="offline name (smollm2-135m, minilm-l6, gemma3-270m), local folder or hub id")
    s.add_argument("--revision", default=None, help="hub revision, e.g. step143000 for Pythia")
    s.add_argument("--task", choices=("ioi", "text"), default="ioi", help="IOI prompts or chunks of plain text (default: ioi)")
    s.add_argument("--n-prompts", type=bounded_int(1, MAX_PROMPTS), default=None,
                   help="number of prompts (default: 8 for ioi; for text as many chunks as fit, at most 8)")
    s.add_argument("--prompt-tokens", type=bounded_int(3, MAX_PROMPT_TOKENS), default=64, help="tokens per text prompt (--task text; default: 64)")
    s.add_argument("--text-file", default=None, help="text for --task text (default: a built-in passage)")
    s.add_argument("--seed", type=SEED, default=0, help="seed for prompts, controls, bootstraps and random init (default: 0)")
    s.add_argument("--out", default="svfcheck-sad", help="output directory (default: svfcheck-sad)")
    s.add_argument("--heads", choices=("all", "paper", "discover"), default="all",
                   help="every head, the paper's table (GPT-2, Pythia-160M) or discovered IOI heads (default: all)")
    s.add_argument("--head", action="append", default=None, metavar="LAYER.HEAD", help="analyse only these heads (repeatable)")
    s.add_argument("--circuit", default=None, help="head table for --heads paper when --model is a local copy: gpt2 or EleutherAI/pythia-160m")
    s.add_argument("--selection", choices=("top", "threshold", "circuit"), default=None,
                   help="pairs: top-attended non-first key per query, attention >= 1/m, or the circuit's IOI positions "
                        "(default: circuit for paper/discover, else top)")
    s.add_argument("--baseline", choices=("random-init",), default=None, help="also analyse a seeded random initialisation and contrast")
    s.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="decomposition dtype (default: float64 without RoPE/QK-norm, else float32)")
    s.add_argument("--basis", choices=("pair", "zero"), default="pair",
                   help="singular basis of each pair: pair = the SVD of Ω(Δ) at the pair's own offset (exact), "
                        "zero = Ω(0) for every pair (the paper's App. D approximation under RoPE; default: pair)")
    s.add_argument("--memory-budget", type=bounded_float(MIN_MEMORY_BUDGET_GB, MAX_MEMORY_BUDGET_GB, " of GB"),
                   default=DEFAULT_MEMORY_BUDGET_GB, metavar="GB",
                   help="memory the decomposition may use beyond the model and its activations, at any context "
                        f"length (default: {DEFAULT_MEMORY_BUDGET_GB:g}); results do not depend on it. Core SVDs are "
                        "also kept on disk (SVFCHECK_CORE_CACHE=off to turn off, SVFCHECK_CORE_CACHE_GB to bound)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_sad)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from svfcheck.real.models import ModelLoadError

    return (ModelLoadError,)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["toy"]:
        from svfcheck.toy.__main__ import main as toy_main

        return toy_main(argv[1:])
    if argv[:1] == ["emergence"]:
        from svfcheck.emergence.cli import main as emergence_main

        return emergence_main(argv[1:])
    if argv[:1] == ["gate"]:
        from svfcheck.gate.cli import main as gate_main

        return gate_main(argv[1:])
    if argv[:1] == ["sweep"]:
        from svfcheck.sweep.cli import main as sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["readout"]:
        from svfcheck.readout_cli import main as readout_main

        return readout_main(argv[1:])
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return run_guarded(f"svfcheck {args.command}", lambda: args.func(args), _user_errors())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
