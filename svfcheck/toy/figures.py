"""Matplotlib figures of the toy model (Agg backend; every function writes one PNG and returns its path).

- :func:`cosine_heatmaps` — |cos| of every feature with every left/right singular vector (Fig. 2/11).
- :func:`feature_gram` — |cos| between features (Fig. 1).
- :func:`spectrum` — singular values against the target logits.
- :func:`alignment_over_training` — per-pair index-matched |cos| and losses vs step.
- :func:`training_dynamics` — Fig. 3: heatmaps at several steps + losses, spectrum, alignment.
- :func:`sweep_curve` — a metric against a swept parameter (App. A figures, Fig. 4).
- :func:`curves` — several series, each with its own x (e.g. runs of different lengths).

Sizes: the report (:mod:`svfcheck.reports.html`) shows a figure at about its drawn size —
single-panel figures are drawn :data:`NARROW` wide (one column of the page), multi-panel ones
:data:`WIDE` wide (the full page) — and all text is at least 9 pt (:data:`RC`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..figstyle import NARROW, RC, WIDE, legible  # noqa: E402

__all__ = ["cosine_heatmaps", "feature_gram", "spectrum", "alignment_over_training", "training_dynamics",
           "sweep_curve", "curves", "sad_bars", "NARROW", "WIDE", "RC"]

#: Height of a single-panel figure (all equal, so two side by side in the report leave no gap).
_H = 4.0


def _step(n: int, most: int) -> int:
    """Tick spacing that puts at most ``most`` ticks on an axis of ``n`` cells."""
    return max(1, -(-n // max(1, most)))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def cosine_heatmaps(summary: dict, path, title: str = "") -> Path:
    cu = np.asarray(summary["cos_query"])
    cv = np.asarray(summary["cos_key"])
    fig, axes = plt.subplots(1, 2, figsize=(WIDE, min(0.2 * cu.shape[0] + 1.6, 9.0)), layout="constrained")
    for ax, M, name in ((axes[0], cu, "left singular vectors u (query)"), (axes[1], cv, "right singular vectors v (key)")):
        im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xlabel(name)
        ax.set_ylabel("feature")
        ax.set_xticks(range(0, M.shape[1], _step(M.shape[1], 16)))
        ax.set_yticks(range(0, M.shape[0], _step(M.shape[0], 24)))
    fig.colorbar(im, ax=axes, shrink=0.8, label="|cos|")
    fig.suptitle(title or f"{summary.get('config', '')}: features vs singular vectors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def feature_gram(W: np.ndarray, path, title: str = "") -> Path:
    Wn = W / np.maximum(np.linalg.norm(W, axis=0, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(NARROW, _H))
    im = ax.imshow(Wn.T @ Wn, vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(im, ax=ax, label="cos(w_i, w_j)")
    ax.set_title(title or "feature cosines")
    return _save(fig, path)


@legible
def spectrum(summary: dict, path, title: str = "") -> Path:
    S = np.asarray(summary["spectrum"])
    tl = np.asarray(summary["target_logits"])
    fig, ax = plt.subplots(figsize=(NARROW, _H))
    ax.bar(np.arange(len(S)), S, color="C0", label="singular values of Ω")
    if len(tl):
        ax.plot(np.arange(len(tl)), tl, "o--", color="C3", label="target logits Λ (sorted)")
    ax.set_xlabel("index")
    ax.legend()
    ax.set_title(title or "spectrum")
    return _save(fig, path)


@legible
def alignment_over_training(traj: dict, pairs, path, title: str = "") -> Path:
    steps = np.asarray(traj["step"])
    q = np.asarray(traj["query_index"], dtype=float)
    k = np.asarray(traj["key_index"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(WIDE, _H))
    for t in range(q.shape[1]):
        a, b = pairs[t][0], pairs[t][1]
        axes[0].plot(steps, q[:, t], color=f"C{t}", label=f"|cos(w{a}, u{t})|")
        axes[0].plot(steps, k[:, t], "--", color=f"C{t}", label=f"|cos(w{b}, v{t})|")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_xlabel("step")
    axes[0].legend(ncol=2)
    axes[0].set_title("alignment (index-matched)")
    axes[1].semilogy(steps, traj["loss_rec"], label="L_rec")
    axes[1].semilogy(steps, traj["loss_attn"], label="L_attn")
    axes[1].set_xlabel("step")
    axes[1].legend()
    fig.suptitle(title)
    return _save(fig, path)


@legible
def sweep_curve(x, ys: dict, path, xlabel: str, ylabel: str = "mean |cos|", logx: bool = False, title: str = "",
                bands: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(NARROW, _H))
    for i, (name, y) in enumerate(ys.items()):
        ax.plot(x, y, "o-", color=f"C{i}", label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


@legible
def sad_bars(sad: dict, path, title: str = "") -> Path:
    cls = sorted(sad["classes"])
    means = [sad["classes"][c]["mean"] for c in cls]
    stds = [sad["classes"][c]["std"] for c in cls]
    fig, ax = plt.subplots(figsize=(NARROW, _H))
    ax.bar([f"{c} pair(s)" for c in cls], means, yerr=stds, color=["C7", "C0", "C1"][: len(cls)])
    ax.set_ylabel("Rolls–Tovee S (lower = sparser)")
    ax.set_title(title or "SAD in the toy model")
    return _save(fig, path)


@legible
def training_dynamics(data: dict, path, title: str = "") -> Path:
    """Fig. 3 from :func:`svfcheck.toy.dynamics.training_dynamics` data: one column per chosen
    step with |cos| heatmaps of features × left singular vectors (top row, query side) and ×
    right singular vectors (middle row, key side), the pairs of interest outlined at their
    index-matched cells; bottom row: losses, top singular values (dotted: target logits) and
    alignment over all recorded steps. Drawn :data:`WIDE` wide (the report's full width)."""
    panels = data["panels"]
    cur = data["curves"]
    k = len(panels)
    n = len(panels[0]["cos_query"])
    hm = min(0.13 * n + 0.9, 4.5)  # height of one heatmap row: ~9 pt per feature tick at most every other row
    fig = plt.figure(figsize=(WIDE, 2 * hm + 3.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2 * hm, 3.2])
    hm_axes = top.subplots(2, k, squeeze=False)
    im = None
    for c, pnl in enumerate(panels):
        for r, (key, side) in enumerate((("cos_query", "u (query)"), ("cos_key", "v (key)"))):
            ax = hm_axes[r, c]
            M = np.asarray(pnl[key])
            im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
            for t, (a, b, _v) in enumerate(data["pairs"]):
                if t < M.shape[1]:
                    row = a if r == 0 else b
                    ax.add_patch(plt.Rectangle((t - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
            ax.set_title(f"step {pnl['step']}: {side}")
            ax.set_yticks(range(0, M.shape[0], _step(M.shape[0], 12)))
            ax.set_xticks(range(0, M.shape[1], _step(M.shape[1], 24 // max(k, 4))))
            if r == 1:
                ax.set_xlabel("singular index")
            if c == 0:
                ax.set_ylabel("feature")
    if im is not None:
        top.colorbar(im, ax=hm_axes, shrink=0.6, label="|cos|", location="right")
    steps = np.asarray(cur["step"])
    axes = bottom.subplots(1, 3)
    ax = axes[0]
    ax.semilogy(steps, np.maximum(cur["loss_rec"], 1e-12), label="L_rec")
    ax.semilogy(steps, np.maximum(cur["loss_attn"], 1e-12), label="L_attn")
    ax.set_xlabel("step")
    ax.set_title("losses")
    ax.legend()
    ax = axes[1]
    S = np.asarray(cur["top_singular_values"], dtype=float)
    for t in range(S.shape[1]):
        ax.plot(steps, S[:, t], color=f"C{t}", label=f"s{t}")
        if t < len(data["target_logits"]):
            ax.axhline(data["target_logits"][t], color=f"C{t}", ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_title("top singular values (dotted: Λ)")
    ax.legend(ncol=2)
    ax = axes[2]
    for key, lab in (("alignment_index", "index-matched"), ("alignment_free", "matching-free")):
        y = np.array([np.nan if v is None else v for v in cur[key]], dtype=float)
        ax.plot(steps, y, label=lab)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_title("mean pair |cos| (min of query, key)")
    ax.legend()
    fig.suptitle(title or f"{data.get('config', '')}: training dynamics (Fig. 3)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@legible
def curves(series: dict, path, xlabel: str, ylabel: str = "", title: str = "") -> Path:
    """One line per ``name: (x, y)`` — each series with its own x values."""
    fig, ax = plt.subplots(figsize=(NARROW, _H))
    for i, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, "-", color=f"C{i}", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)
