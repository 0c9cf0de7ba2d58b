"""Figures of SAD over training (matplotlib, Agg backend), drawn from ``emergence.json`` data.

- ``sparsity_vs_step.png`` (paper Fig. 7b): mean Rolls–Tovee S vs training step in the SVD
  basis and under both rotation controls, 99% bootstrap bands, one panel per role plus
  overall, with the task metric (induction accuracy or held-out loss) on a twin axis;
- ``k_vs_step.png`` (Fig. 9b): median reconstruction count k, SVD basis vs basis control;
- ``decomposition_first_last.png`` (Fig. 8): relative-attention contributions by singular
  index for one head per role at the first and last checkpoint.

Every figure is a function of the JSON data alone, so a reader can redraw it from the file.
All text is at least 9 pt (:data:`RC`, as in the report's figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figstyle import legible, pyplot

__all__ = ["write_emergence_figures", "sparsity_vs_step", "k_vs_step", "decomposition_first_last"]


_BASES = (("s_svd", "SVD basis", "C0"), ("s_rotated", "basis control (a)", "C1"),
          ("s_paper_control", "paper control (b)", "C2"))


def _x(steps):
    return np.asarray(steps, dtype=float)


def _axis(ax, steps):
    if max(steps) > 0 and (len(steps) > 2 and steps[1] * 20 < steps[-1]):
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("training step")


def _metric(ax, data):
    tm = data.get("task_metric")
    if not tm:
        return
    tw = ax.twinx()
    if "induction_accuracy" in tm:
        tw.plot(tm["step"], tm["induction_accuracy"], color="k", ls=":", lw=1, label="induction accuracy")
        tw.set_ylabel("induction accuracy")
        tw.set_ylim(0, 1.02)
    else:
        tw.plot(tm["step"], tm["eval_loss"], color="k", ls=":", lw=1, label="held-out loss")
        tw.set_ylabel("held-out loss (nats)")
    tw.legend(loc="upper right")


@legible
def sparsity_vs_step(data: dict, path) -> Path:
    plt = pyplot()
    steps = [int(s) for s in data["steps"]]
    roles = data["roles"]
    fig, axes = plt.subplots(1, len(roles), figsize=(5.5 * len(roles), 4.0), squeeze=False)
    for ax, role in zip(axes[0], roles):
        rows = [data["steps"][str(s)].get(role, {}) for s in steps]
        ok = [i for i, r in enumerate(rows) if r.get("n_pairs", 0) > 0]
        x = _x([steps[i] for i in ok])
        for key, label, color in _BASES:
            m = np.array([rows[i][key]["estimate"] for i in ok])
            lo = np.array([rows[i][key]["low"] for i in ok])
            hi = np.array([rows[i][key]["high"] for i in ok])
            ax.plot(x, m, marker="o", ms=3, color=color, label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.25)
        _axis(ax, steps)
        ax.set_ylabel("mean Rolls–Tovee S (lower = sparser)")
        n = rows[ok[-1]]["n_pairs"] if ok else 0
        ax.set_title(f"{role} ({n} pairs)")
        ax.legend(loc="lower left")
        _metric(ax, data)
    fig.suptitle(f"{data['series']['name']}: sparsity over training (99% bootstrap bands)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@legible
def k_vs_step(data: dict, path) -> Path:
    plt = pyplot()
    steps = [int(s) for s in data["steps"]]
    roles = data["roles"]
    fig, axes = plt.subplots(1, len(roles), figsize=(5.5 * len(roles), 4.0), squeeze=False)
    for ax, role in zip(axes[0], roles):
        rows = [data["steps"][str(s)].get(role, {}) for s in steps]
        for key, label, color in (("median_k", "SVD basis", "C0"), ("median_k_rotated", "basis control (a)", "C1")):
            pts = [(steps[i], r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=color, label=label)
        _axis(ax, steps)
        ax.set_ylabel("median k (largest terms\nreaching rel. attention)")
        ax.set_title(role)
        ax.legend(loc="lower left")
        _metric(ax, data)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@legible
def decomposition_first_last(data: dict, path) -> Path:
    plt = pyplot()
    ex = data["examples"]
    keys = sorted(set(ex["first"]) & set(ex["last"]))
    if not keys:
        keys = sorted(set(ex["first"]) | set(ex["last"]))
    fig, axes = plt.subplots(max(1, len(keys)), 2, figsize=(11, 3.1 * max(1, len(keys))), squeeze=False)
    for row, k in enumerate(keys):
        for col, which in enumerate(("first", "last")):
            ax = axes[row][col]
            e = ex[which].get(k)
            if e is None:
                ax.set_axis_off()
                continue
            c = np.array([np.nan if v is None else v for v in e["contributions"]])
            cr = np.array([np.nan if v is None else v for v in e["contributions_rotated"]])
            idx = np.arange(len(c))
            ax.bar(idx - 0.2, c, width=0.4, color="C0", label="SVD basis")
            ax.bar(idx + 0.2, cr, width=0.4, color="C1", alpha=0.7, label="basis control")
            ax.axhline(0, color="k", lw=0.5)
            step = ex[f"{which}_step"]
            ax.set_title(f"step {step} · {e['role']} head {e['layer']}.{e['head']} · q{e['query']}→k{e['key']} "
                         f"(k={e['k']} vs {e['k_rotated']})")
            ax.set_xlabel("singular index r")
            ax.set_ylabel("contribution to\nrelative attention")
            if row == 0 and col == 0:
                ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_emergence_figures(out_dir, data: dict) -> list[Path]:
    """All three figures into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    return [
        sparsity_vs_step(data, out / "sparsity_vs_step.png"),
        k_vs_step(data, out / "k_vs_step.png"),
        decomposition_first_last(data, out / "decomposition_first_last.png"),
    ]
