"""``svfcheck emergence``: train (or take) a checkpoint series and track SAD over training.

Usage::

    svfcheck emergence --run induction-gpt2 --out DIR      # train (resume/skip) into DIR/run, analyse into DIR
    svfcheck emergence --run text-llama --out DIR
    svfcheck emergence --run induction-llama --out DIR     # RoPE; the classic prev-token -> induction circuit
    svfcheck emergence --checkpoints SPEC --out DIR [--task induction|ioi|text] [--heads ...]
    svfcheck emergence --checkpoints SPEC                  # only parse + validate, print the series

``--run`` trains the preset (a finished run is not retrained; an interrupted one resumes), then
analyses every checkpoint (:func:`svfcheck.emergence.sad_sweep.sad_over_training`; an
interrupted analysis resumes too) and writes ``emergence.json``, ``sad_sweep.json``,
``timing.json`` and the figures ``sparsity_vs_step.png`` (Fig. 7b), ``k_vs_step.png``
(Fig. 9b), ``decomposition_first_last.png`` (Fig. 8). ``--train-only`` skips the analysis.

``--heads``: ``pattern`` (default for induction/text: identified by attention pattern at the
final checkpoint), ``paper`` (IOI: the paper's table for ``--circuit`` or the series' name,
e.g. Pythia-160M Table 2), ``discover`` (IOI: discovered at the final checkpoint), or an
explicit list ``ROLE=L.H,L.H;ROLE2=L.H`` (``L.H,L.H`` alone: role ``chosen``).
Bad input exits with status 2 and a message.
"""

from __future__ import annotations

import argparse
import json

from ..cliargs import MAX_PROMPTS, SEED_MAX, bounded_int, parse_args, prepare_out_dir, run_guarded

TASK_OF_PRESET = {"induction-gpt2": "induction", "induction-llama": "induction", "text-llama": "text"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="PRESET", help="train a preset: induction-gpt2, induction-llama or text-llama")
    src.add_argument("--checkpoints", metavar="SPEC", help="a checkpoint series SPEC (see svfcheck.emergence.series)")
    p.add_argument("--out", help="output folder (required with --run; with --checkpoints: analyse into it)")
    p.add_argument("--task", choices=("induction", "ioi", "text"), default=None,
                   help="task of the analysis (default: the preset's; ioi for hub/folder series)")
    p.add_argument("--heads", default=None, help="pattern | paper | discover | ROLE=L.H,L.H;ROLE2=L.H")
    p.add_argument("--circuit", default=None, help="IOI head table name, e.g. EleutherAI/pythia-160m")
    p.add_argument("--selection", choices=("task", "top"), default="task",
                   help="pairs: task structure (default) or each query's top-attended key")
    p.add_argument("--n-prompts", type=bounded_int(1, MAX_PROMPTS), default=None, help="prompts analysed at every checkpoint")
    p.add_argument("--heads-per-role", type=bounded_int(1, 1024), default=None, help="heads per role identified by pattern (default 2)")
    p.add_argument("--n-boot", type=bounded_int(1, 1_000_000), default=None, help="bootstrap resamples per step (default 2000)")
    p.add_argument("--steps", type=bounded_int(1, 10_000_000), default=None, help="override max_steps of --run")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX), default=None, help="override the training seed of --run")
    p.add_argument("--train-only", action="store_true", help="--run: train, do not analyse")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=bounded_int(1, 1024), default=None, help="torch threads during training")
    p.add_argument("--no-progress", action="store_true")


def _parse_heads(text: str):
    roles = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        role, eq, lst = part.rpartition("=")
        role = role.strip() if eq else "chosen"
        hs = []
        for item in lst.split(","):
            a, dot, b = item.strip().partition(".")
            if not dot or not a.isdigit() or not b.isdigit():
                raise ValueError(f"bad head {item!r} in --heads {text!r}: expected LAYER.HEAD, e.g. 4.11")
            hs.append((int(a), int(b)))
        roles[role] = hs
    if not roles:
        raise ValueError(f"--heads {text!r} names no heads")
    return roles


def _settings(args, task: str):
    from .sad_sweep import default_settings

    over = {"selection": args.selection}
    for a, f in (("n_prompts", "n_prompts"), ("heads_per_role", "heads_per_role"), ("n_boot", "n_boot")):
        v = getattr(args, a)
        if v is not None:
            over[f] = v
    if args.circuit:
        over["circuit"] = args.circuit
    return default_settings(task, **over)


def _heads_arg(args, task: str):
    h = args.heads
    if h is None or h == "pattern":
        if h == "pattern" and task == "ioi":
            raise ValueError("--heads pattern is for induction/text; for ioi use paper, discover or a list")
        return None, None
    if h == "paper":
        if task != "ioi":
            raise ValueError("--heads paper needs --task ioi (the paper's tables are IOI circuits)")
        return None, "paper"
    if h == "discover":
        if task != "ioi":
            raise ValueError("--heads discover needs --task ioi (use pattern for induction/text)")
        return None, "discover"
    return _parse_heads(h), None


def _plan(args, task: str):
    """The analysis settings and explicit heads of the command line, validated (before any work)."""
    from dataclasses import replace

    settings = _settings(args, task)
    heads, mode = _heads_arg(args, task)
    if mode is not None:
        settings = replace(settings, ioi_heads=mode)
    if heads is not None and task == "ioi" and settings.selection == "task":
        raise ValueError("explicit --heads with --task ioi needs --selection top (labelled pairs come from a table)")
    return settings, heads


def _analyse(series, out, args, plan) -> int:
    from .sad_sweep import sad_over_training

    settings, heads = plan
    r = sad_over_training(series, out, settings, heads=heads, progress=not args.no_progress)
    d = r.data
    lines = {"out": str(out), "figures": [str(p) for p in r.figures], "heads": d["heads"]["roles"], "steps": {}}
    for s in (series.steps[0], series.steps[len(series.steps) // 2], series.steps[-1]):
        row = d["steps"][str(s)]["overall"]
        lines["steps"][s] = {k: round(row[k]["estimate"], 4) for k in ("s_svd", "s_rotated", "s_paper_control")}
    c = d["contrast"]["overall"]
    if "effect_difference" in c:
        lines["contrast_overall"] = {
            "effect_difference": {k: [round(v["estimate"], 4), round(v["low"], 4), round(v["high"], 4)]
                                  for k, v in c["effect_difference"].items()},
            "s_svd_difference": [round(c["s_svd_difference"][k], 4) for k in ("estimate", "low", "high")],
            "passes": c["passes"],
        }
    print(json.dumps(lines, indent=1))
    return 0


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .series import parse_series
    from .config import preset
    from .train import train_run

    if args.checkpoints:
        ser = parse_series(args.checkpoints)
        if not args.out:
            print(json.dumps(ser.to_dict(), indent=1))
            return 0
        prepare_out_dir(args.out)
        task = args.task
        if task is None:
            kind = (ser.metadata.get("config") or {}).get("task", {}).get("kind") if ser.metadata else None
            task = kind or "ioi"
        return _analyse(ser, Path(args.out), args, _plan(args, task))
    if not args.out:
        raise ValueError("--out DIR is required with --run")
    if args.run not in TASK_OF_PRESET:
        raise ValueError(f"unknown preset {args.run!r}; available: {', '.join(sorted(TASK_OF_PRESET))}")
    task = args.task or TASK_OF_PRESET[args.run]
    plan = None if args.train_only else _plan(args, task)
    _check_device(args.device)
    prepare_out_dir(args.out)
    over = {}
    if args.steps is not None:
        over["max_steps"] = args.steps
        over["warmup_steps"] = min(preset(args.run).warmup_steps, args.steps)
    if args.seed is not None:
        over["seed"] = args.seed
    cfg = preset(args.run, **over)
    out = Path(args.out)
    r = train_run(cfg, out / "run", device=args.device, progress=not args.no_progress, num_threads=args.threads)
    print(json.dumps({"run": str(r.out_dir), "finished": r.finished, "skipped": r.skipped,
                      "wall_time_s": round(r.wall_time_s, 1), "summary": r.summary}, indent=1))
    if args.train_only:
        return 0
    return _analyse(r.series(), out, args, plan)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="svfcheck emergence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = parse_args(p, argv)
    if isinstance(args, int):
        return args
    from svfcheck.real.models import ModelLoadError

    return run_guarded("svfcheck emergence", lambda: run(args), (ModelLoadError,))


if __name__ == "__main__":
    raise SystemExit(main())
