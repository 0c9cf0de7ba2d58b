"""Readable output of a gate run: the summary table (stdout) and a figure (matplotlib, Agg).

The table has one row per (spec, condition): measured figure, the comparison and threshold
it must satisfy, PASS/FAIL, and the random-init baseline's figure where there is one. The
figure shows, per condition, the measured value against its threshold, coloured by verdict.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import SpecResult, _fmt

__all__ = ["summary_table", "write_figure"]


def summary_table(results: list[SpecResult]) -> str:
    """Fixed-width table, one row per condition, then a totals line."""
    rows = [("spec", "condition", "measured", "pass when", "baseline", "verdict")]
    for r in results:
        for c in r.conditions:
            rows.append((r.spec.name, c.condition, _fmt(c.measured), f"{c.comparison} {_fmt(c.threshold)}",
                         _fmt(c.baseline_measured), c.verdict + ("" if c.discriminating in (None, True) else " (non-discriminating)")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = sum(len(r.conditions) for r in results)
    failed = [(r, c) for r in results for c in r.conditions if not c.passed]
    lines.append("")
    lines.append(f"{n - len(failed)}/{n} conditions passed in {len(results)} spec(s)")
    for r, c in failed:
        lines.append(f"FAIL {r.spec.name} / {c.line()}")
    return "\n".join(lines)


def write_figure(results: list[SpecResult], path: str | Path) -> Path:
    """One panel per condition: the measured figure (dot; for the contrasts the estimate with
    its interval, the gated bound being the interval end), the threshold (dashed) and, for
    median k, the random-init baseline (triangle). Green PASS, red FAIL; log axis for errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [(r.spec.name, c) for r in results for c in r.conditions]
    n = max(1, len(conds))
    fig, axes = plt.subplots(n, 1, figsize=(7, 0.95 * n + 0.6), squeeze=False)
    for ax, (spec, c) in zip(axes[:, 0], conds):
        colour = "tab:green" if c.passed else "tab:red"
        xs = [v for v in (c.measured, c.threshold, c.baseline_measured if c.kind == "median_k_at_most" else None) if v is not None]
        f = c.figures
        if "low" in f and "high" in f:
            est = f["estimate"]
            ax.errorbar([est], [0], xerr=[[est - f["low"]], [f["high"] - est]], fmt="o", color=colour, capsize=4,
                        label=f"estimate, {100 * f['level']:g}% interval")
            xs += [f["low"], f["high"], 0.0]
        elif c.measured is not None:
            ax.plot([c.measured], [0], "o", color=colour, ms=8, label="measured")
        if c.kind == "median_k_at_most" and c.baseline_measured is not None:
            ax.plot([c.baseline_measured], [0], "k^", ms=7, label="random init")
        if c.threshold is not None:
            ax.axvline(c.threshold, color="k", ls="--", lw=1, label=f"threshold (pass when {c.comparison})")
        if c.kind == "max_reconstruction_error" and all(v > 0 for v in xs):
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 10, max(xs) * 10)
        elif xs:
            lo, hi = min(xs), max(xs)
            pad = 0.1 * (hi - lo or 1.0)
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_yticks([])
        ax.set_title(f"{spec}: {c.condition} — {c.verdict}: measured {_fmt(c.measured)}, pass when {c.comparison} {_fmt(c.threshold)}",
                     fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
