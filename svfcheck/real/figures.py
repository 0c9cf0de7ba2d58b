"""Figures of a SAD run (matplotlib, Agg backend).

- :func:`decomposition_bars` — per-pair relative-attention contributions by singular index
  (like the paper's Fig. 8), for a few chosen pairs;
- :func:`k_histograms` — reconstruction count k per head, SVD basis vs basis control (Fig. 9a);
- :func:`sparsity_vs_controls` — mean Rolls–Tovee S in the SVD basis vs both controls with 99%
  intervals, trained and (if given) random-init.

Sizes: the report (:mod:`svfcheck.reports.html`) shows a figure at about its drawn size, so
single-panel figures are drawn :data:`NARROW` wide (one column of the page), multi-panel ones
:data:`WIDE` wide (the full page), and all text is at least 9 pt (:data:`RC`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats
from ..figstyle import NARROW, RC, WIDE, legible, pyplot

__all__ = ["decomposition_bars", "k_histograms", "sparsity_vs_controls", "write_figures", "chosen_pairs",
           "NARROW", "WIDE", "RC"]



def _grid(n: int, cols: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels at most ``cols`` wide."""
    c = max(1, min(n, cols))
    return -(-max(1, n) // c), c


def chosen_pairs(result, n: int = 4) -> list[int]:
    """Indices of up to ``n`` pairs from distinct heads with the largest attention,
    preferring queries at position >= 3 (a query at position 1 sees only 2 keys)."""
    r = result.records
    score = np.where(r["query_pos"] >= 3, r["attention"], r["attention"] - 2.0)
    order = np.argsort(-score, kind="stable")
    out, seen = [], set()
    for p in order:
        h = (int(r["layer"][p]), int(r["head"][p]))
        if h in seen or r["k"][p] < 0:
            continue
        seen.add(h)
        out.append(int(p))
        if len(out) == n:
            break
    return out


@legible
def decomposition_bars(result, path, n: int = 4) -> Path:
    """One bar panel per chosen pair, two panels a row (:data:`WIDE`; one pair: :data:`NARROW`)."""
    plt = pyplot()
    idx = chosen_pairs(result, n)
    r = result.records
    rows, cols = _grid(len(idx), 2)
    fig, axes = plt.subplots(rows, cols, figsize=(NARROW * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(idx):]:
        ax.set_axis_off()
    for i, (ax, p) in enumerate(zip(axes.flat, idx)):
        c = r["terms"][p]
        ax.bar(np.arange(1, c.size + 1), c, color=np.where(c >= 0, "tab:blue", "tab:red"))
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(
            f"L{r['layer'][p]}H{r['head'][p]} prompt {r['prompt_index'][p]} q={r['query_pos'][p]}→k={r['key_pos'][p]}:\n"
            f"a={r['attention'][p]:.2f}, rel. attn={r['relative_attention'][p]:.2f}, k={r['k'][p]}, S={r['rolls_tovee'][p]:.2f}",
        )
        if i % cols == 0:
            ax.set_ylabel("contribution")
        if i + cols >= len(idx):  # bottom panel of its column
            ax.set_xlabel("singular index")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def k_histograms(result, path, max_heads: int = 6) -> Path:
    """One histogram per head, three a row, :data:`WIDE` wide (one head: :data:`NARROW`)."""
    plt = pyplot()
    r = result.records
    heads = [(h["layer"], h["head"]) for h in sorted(result.per_head, key=lambda h: -h.get("mean_attention", 0))][:max_heads]
    rows, cols = _grid(len(heads), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(NARROW if cols == 1 else WIDE, 3.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(heads):]:
        ax.set_axis_off()
    R = result.singular_values_dim
    bins = np.arange(0.5, R + 1.5, max(1, R // 32))
    for i, (ax, (l, h)) in enumerate(zip(axes.flat, heads)):
        m = (r["layer"] == l) & (r["head"] == h)
        k, kr = r["k"][m], r["k_rotated"][m]
        ax.hist(k[k >= 0], bins=bins, alpha=0.7, label="SVD basis")
        ax.hist(kr[kr >= 0], bins=bins, alpha=0.5, label="rotated basis")
        ax.set_title(f"L{l}H{h} (n={int(m.sum())})")
        if i + cols >= len(heads):  # bottom panel of its column
            ax.set_xlabel("k")
        if i % cols == 0:
            ax.set_ylabel("pairs")
    axes[0, 0].legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def sparsity_vs_controls(result, path, baseline=None) -> Path:
    plt = pyplot()
    runs = [("trained", result)] + ([("random init", baseline)] if baseline is not None else [])
    fig, ax = plt.subplots(figsize=(NARROW, 4.0))
    width = 0.25
    for j, which in enumerate(("svd", "rotated", "paper_control")):
        xs, ys, lo, hi = [], [], [], []
        for i, (_, res) in enumerate(runs):
            e = stats.bootstrap_mean(res.s(which), n_boot=2000, level=0.99, seed=0)
            xs.append(i + (j - 1) * width)
            ys.append(e.estimate)
            lo.append(e.estimate - e.low)
            hi.append(e.high - e.estimate)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label={"svd": "SVD basis", "rotated": "basis control (a)",
                                                                "paper_control": "paper control (b)"}[which])
    ax.set_xticks(range(len(runs)), [f"{n}\n({len(r)} pairs)" for n, r in runs])
    ax.set_ylabel("mean Rolls–Tovee S\n(lower = sparser)")
    ax.set_title(result.model)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False, columnspacing=1.0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(out_dir, result, baseline=None) -> list[Path]:
    """All three figures (plus the random-init decomposition bars if given) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        decomposition_bars(result, out / "decomposition_bars.png"),
        k_histograms(result, out / "k_histograms.png"),
        sparsity_vs_controls(result, out / "sparsity_vs_controls.png", baseline),
    ]
    if baseline is not None:
        paths.append(decomposition_bars(baseline, out / "decomposition_bars_random_init.png"))
    return paths
