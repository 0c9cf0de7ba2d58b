"""Print the same-run ratios of a saved pytest-benchmark run as a table (or JSON).

Absolute times on a shared, noisy machine mean little; every benchmark here also times its
baseline in the same run and records ``[<variant>_]ratio_vs_<baseline>`` in ``extra_info``
(seconds of the benchmarked thing / seconds of the baseline: < 1 is faster than the baseline;
against ``forward`` it is the cost in forward passes of the model). The project's targets are recorded
as ``target_max_<ratio key>``.

Usage::

    .venv/bin/python benchmarks/ratios.py                      # newest run under .benchmarks/
    .venv/bin/python benchmarks/ratios.py .benchmarks/Linux-CPython-3.11-64bit/0001_baseline.json
    .venv/bin/python benchmarks/ratios.py --json               # machine-readable rows

Runs are saved by ``pytest benchmarks --benchmark-enable --benchmark-autosave`` (see
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["RATIO_KEY", "newest_run", "ratio_rows", "format_table", "main"]

#: ``ratio_vs_dense``, ``cold_ratio_vs_forward``, ... (but not ``target_max_...``)
RATIO_KEY = re.compile(r"^(?:(?P<variant>[a-z0-9_]+?)_)?ratio_vs_(?P<baseline>[a-z0-9_]+)$")


def newest_run(root: Path = Path(".benchmarks")) -> Path:
    """The most recently written saved run under ``root`` (pytest-benchmark's storage)."""
    runs = sorted(Path(root).glob("**/*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not runs:
        raise FileNotFoundError(
            f"no saved benchmark run under {root}/; create one with "
            "`pytest benchmarks --benchmark-enable --benchmark-autosave` or pass a run's JSON path"
        )
    return runs[-1]


def _group(bench: dict) -> str:
    if bench.get("group"):
        return str(bench["group"])
    full = str(bench.get("fullname", bench.get("name", "?")))
    return Path(full.split("::")[0]).stem.removeprefix("test_")


def ratio_rows(run: dict) -> list[dict]:
    """One row per (benchmark, ratio key): group, benchmark, key, variant, baseline, ratio,
    target (max) and whether it is met. ValueError if ``run`` is not a pytest-benchmark run."""
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        raise ValueError("not a pytest-benchmark run: expected a JSON object with a 'benchmarks' list")
    rows = []
    for b in run["benchmarks"]:
        info = b.get("extra_info") or {}
        for key in sorted(info):
            m = RATIO_KEY.match(key)
            if not m or key.startswith("target_"):
                continue
            value = info[key]
            if not isinstance(value, int | float):
                continue
            target = info.get(f"target_max_{key}")
            rows.append({
                "group": _group(b),
                "benchmark": str(b.get("name", "?")),
                "key": key,
                "variant": m.group("variant") or "",
                "baseline": m.group("baseline"),
                "ratio": float(value),
                "target_max": None if target is None else float(target),
                "met": None if target is None else bool(value <= target),
            })
    return rows


def _reads(r: dict) -> str:
    x = r["ratio"]
    if r["baseline"] == "forward":
        return f"{x:.2f} forward passes"
    if r["baseline"] == "weights":
        return f"{x:.2f}x the weights' bytes"
    if x <= 0:
        return "n/a"
    return f"{1 / x:.1f}x faster" if x < 1 else f"{x:.2f}x the baseline's time"


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table: group, benchmark, ratio key, ratio, how it reads, target, met."""
    header = ("group", "benchmark", "ratio", "value", "reads as", "target", "met")
    body = [
        (r["group"], r["benchmark"], r["key"], f"{r['ratio']:.4g}", _reads(r),
         "" if r["target_max"] is None else f"<= {r['target_max']:.4g}",
         "" if r["met"] is None else ("yes" if r["met"] else "NO"))
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in body]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a saved run's JSON (default: newest under --root)")
    p.add_argument("--root", default=".benchmarks", help="pytest-benchmark storage folder (default: .benchmarks)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)
    try:
        path = Path(args.run) if args.run else newest_run(Path(args.root))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; pass a saved run's JSON (see .benchmarks/)")
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}); pass a pytest-benchmark run file") from None
        rows = ratio_rows(run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"run": str(path), "rows": rows}, indent=2))
    else:
        print(f"{path} ({run.get('datetime', '?')}; ratio = seconds / seconds of the baseline timed in the same run)")
        print(format_table(rows) if rows else "(no ratio_vs_* entries in extra_info)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
