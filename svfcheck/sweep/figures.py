"""Figures of a sweep, from the merged dataset's rows: ``sweep_s_vs_step.png`` (mean S in
the SVD basis vs training step, per analysis, one line per series with its 99% interval and
the random initialisation's S as a reference band: paper Fig. 7b across models) and
``sweep_contrast.png`` (final vs first checkpoint: the SAD effect difference under both
rotation controls, per series and seed, with 99% intervals). Steps that repeat an earlier
checkpoint's weights are left out."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..figstyle import NARROW, WIDE, legible, pyplot

__all__ = ["write_sweep_figures"]


def _series_rows(rows, kind, metric="s_svd", role="overall"):
    return [r for r in rows if r["kind"] == kind and r["metric"] == metric and r["role"] == role and not r["excluded"]]


@legible
def _s_vs_step(rows, path: Path) -> Path | None:
    pts = _series_rows(rows, "checkpoint")
    if not pts:
        return None
    analyses = sorted({r["analysis"] for r in pts})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(analyses), figsize=(min(WIDE, NARROW * len(analyses)), 3.6), squeeze=False)
    band = defaultdict(list)
    for r in _series_rows(rows, "random-init"):
        band[(r["analysis"], r["series"])].append(r)
    for ax, a in zip(axes[0], analyses):
        for i, s in enumerate(sorted({r["series"] for r in pts if r["analysis"] == a})):
            color = f"C{i % 10}"
            for seed in sorted({r["seed"] for r in pts if r["analysis"] == a and r["series"] == s}):
                line = sorted((r for r in pts if (r["analysis"], r["series"], r["seed"]) == (a, s, seed)),
                              key=lambda r: r["step"])
                x = [r["step"] for r in line]
                ax.plot(x, [r["value"] for r in line], "-o", ms=3, color=color,
                        label=s if seed == min(r["seed"] for r in pts if r["series"] == s) else None)
                ax.fill_between(x, [r["low"] for r in line], [r["high"] for r in line], color=color, alpha=0.15)
            b = band.get((a, s))
            if b:
                ax.axhspan(min(r["low"] for r in b), max(r["high"] for r in b), color=color, alpha=0.08, hatch="//",
                           label=f"{s} random init")
        ax.set(title=f"{a}: mean S (SVD basis)", xlabel="training step", ylabel="mean Rolls–Tovee S")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def _contrast(rows, path: Path) -> Path | None:
    pts = [r for r in rows if r["kind"] == "contrast" and r["role"] == "overall" and r["metric"].startswith("effect_difference_")]
    if not pts:
        return None
    groups = sorted({(r["analysis"], r["series"], r["seed"]) for r in pts})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(NARROW if len(groups) <= 6 else WIDE, 3.6))
    for j, ctl in enumerate(("rotated", "paper_control")):
        sel = {(r["analysis"], r["series"], r["seed"]): r for r in pts if r["metric"] == f"effect_difference_{ctl}"}
        xs = [i + (j - 0.5) * 0.3 for i in range(len(groups))]
        vals = [sel[g] for g in groups]
        ax.errorbar(xs, [v["value"] for v in vals], yerr=[[v["value"] - v["low"] for v in vals],
                    [v["high"] - v["value"] for v in vals]], fmt="o", capsize=3, label=f"vs {ctl.replace('_', ' ')}")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{a}\n{s} s{seed}" for a, s, seed in groups], rotation=0)
    ax.set(ylabel="SAD effect, final − first", title="final vs first checkpoint (99% intervals)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_figures(out: Path, rows: list[dict]) -> list[Path]:
    made = [_s_vs_step(rows, out / "sweep_s_vs_step.png"), _contrast(rows, out / "sweep_contrast.png")]
    return [p for p in made if p is not None]
