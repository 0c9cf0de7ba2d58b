"""Per-checkpoint summaries of SAD over training: mean Rolls–Tovee S in the SVD basis and under
both rotation controls, the SAD effects ``mean(S_control − S_svd)`` with 99% bootstrap
intervals and median / mean k, overall and per role; per-head means; the per-pair columns
that ``sad_sweep.json`` keeps (and the final-vs-first contrast reads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import stats
from ..stats import json_float
from .settings import LEVEL, OTHER, OVERALL, EmergenceSettings, HeadSet

__all__: list[str] = []


def _eff(est: float, lo: float, hi: float, n: int, n_boot: int) -> dict:
    return {"estimate": float(est), "low": float(lo), "high": float(hi), "level": LEVEL, "n": int(n),
            "n_other": None, "n_boot": int(n_boot)}


def _summary(s, sr, sp, k, kr, n_boot: int, seed: int) -> dict:
    """Means of S (SVD, both controls) and the SAD effects ``mean(S_control − S_svd)`` with 99%
    percentile-bootstrap intervals. One set of resampled pair indices serves all five means (a
    paired bootstrap over pairs; 5x cheaper than resampling each statistic separately)."""
    out: dict[str, Any] = {"n_pairs": int(len(s))}
    if len(s) == 0:
        return out
    cols = np.stack([s, sr, sp, sr - s, sp - s]).astype(np.float64)  # (5, n)
    n = cols.shape[1]
    # (5, chunk, n) floats per chunk: <= 16 MB
    boot = stats.bootstrap_means(cols, n_boot, np.random.default_rng(seed), chunk_elems=400_000)
    lo, hi = stats.percentile_intervals(boot, LEVEL)
    for i, name in enumerate(("s_svd", "s_rotated", "s_paper_control", "effect_rotated", "effect_paper_control")):
        out[name] = _eff(cols[i].mean(), lo[i], hi[i], n, n_boot)
    out["median_k"] = float(np.median(k[k >= 0])) if (k >= 0).any() else None
    out["median_k_rotated"] = float(np.median(kr[kr >= 0])) if (kr >= 0).any() else None
    out["mean_k"] = float(k[k >= 0].mean()) if (k >= 0).any() else None
    out["mean_k_rotated"] = float(kr[kr >= 0].mean()) if (kr >= 0).any() else None
    return out


def _checkpoint_summary(cols: dict[str, list], settings: EmergenceSettings, heads: HeadSet) -> dict:
    """``summary`` (overall and per role), ``per_head``, ``n_dropped`` and the per-pair
    ``pairs`` columns of one checkpoint from its collected columns (``role`` a list of names,
    every other field a list of per-batch arrays)."""
    role = np.array(cols["role"], dtype=object)
    rec = {k: (np.concatenate(v) if k != "role" else role) for k, v in cols.items()}
    ok = np.isfinite(rec["s_svd"]) & np.isfinite(rec["s_rotated"]) & np.isfinite(rec["s_paper_control"])

    def summ(sel):
        m = ok & sel
        return _summary(rec["s_svd"][m], rec["s_rotated"][m], rec["s_paper_control"][m], rec["k"][m],
                        rec["k_rotated"][m], settings.n_boot, settings.seed)

    roles = {OVERALL: summ(np.ones(len(role), dtype=bool))}
    for r in list(heads.roles) + ([OTHER] if settings.all_heads else []):
        roles[r] = summ(role == r)
    per_head = []
    for (l, h) in sorted({(int(a), int(b)) for a, b in zip(rec["layer"], rec["head"])}):
        m = ok & (rec["layer"] == l) & (rec["head"] == h)
        if m.any():
            per_head.append({"layer": l, "head": h, "roles": sorted(set(role[m])), "n_pairs": int(m.sum()),
                             "mean_s_svd": float(rec["s_svd"][m].mean()),
                             "mean_s_rotated": float(rec["s_rotated"][m].mean()),
                             "mean_s_paper_control": float(rec["s_paper_control"][m].mean()),
                             "mean_attention": float(rec["attention"][m].mean())})
    pairs_json = {
        "role": [str(x) for x in role],
        **{k: [int(x) for x in rec[k]] for k in ("prompt", "layer", "head", "query", "key", "k", "k_rotated")},
        **{k: [json_float(x) for x in rec[k]] for k in ("attention", "s_svd", "s_rotated", "s_paper_control")},
    }
    return {"summary": roles, "per_head": per_head, "n_dropped": int((~ok).sum()), "pairs": pairs_json}
