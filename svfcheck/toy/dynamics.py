"""Training dynamics of one toy instance (paper Fig. 3), computed from its recorded trajectory.

:func:`training_dynamics` turns a trajectory recorded with ``TrainConfig(snapshots=True)`` into
the data the Fig. 3 figure (:func:`svfcheck.toy.figures.training_dynamics`) draws — and that
tests assert on: for a few recorded steps, the |cos| heatmaps of every feature against every
left (query side) and right (key side) singular vector of Ω = W_Q W_Kᵀ; and at every recorded
step the losses, the top singular values and the index-matched and matching-free alignment.
"""

from __future__ import annotations

import numpy as np

from .config import ToyConfig
from .metrics import cosine_matrices

__all__ = ["panel_indices", "training_dynamics"]


def panel_indices(steps, n_panels: int = 4) -> list[int]:
    """Indices of ``n_panels`` recorded steps for the heatmaps: the first (the initialisation),
    the last, and in between log-spaced steps (alignment arrives early and then settles, so a
    linear spacing would spend the panels on the flat end)."""
    steps = np.asarray(steps, dtype=float)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError("the trajectory has no recorded steps")
    if not isinstance(n_panels, (int, np.integer)) or n_panels < 2:
        raise ValueError(f"n_panels must be an integer >= 2 (first and last step); got {n_panels!r}")
    if steps.size <= n_panels:
        return list(range(steps.size))
    lo = steps[1] if steps[1] > 0 else 1.0
    targets = np.geomspace(lo, steps[-1], n_panels)[1:-1]
    idx = {0, steps.size - 1}
    for t in targets:
        free = [j for j in range(1, steps.size - 1) if j not in idx]
        if free:
            idx.add(min(free, key=lambda j: abs(np.log(steps[j]) - np.log(t))))
    return sorted(idx)


def training_dynamics(cfg: ToyConfig, trajectory: dict, n_panels: int = 4) -> dict:
    """Fig. 3 data of one instance (JSON-friendly lists).

    ``panels``: for each chosen step, ``cos_query`` (n × d_h: |cos(w_i, u_r)|) and ``cos_key``
    (|cos(w_i, v_r)|) from the snapshot of W, U, V at that step, and the index-matched |cos| of
    each pair of interest read off those matrices. ``curves``: at every recorded step, L_rec,
    L_attn, the top singular values (one per pair of interest, at least 1) and the mean
    index-matched / matching-free alignment (the smaller of the query and key means).
    """
    for key in ("W", "U", "V"):
        if key not in trajectory:
            raise ValueError("the trajectory has no snapshots of W, U, V; train with TrainConfig(snapshots=True)")
    steps = [int(s) for s in trajectory["step"]]
    pairs = cfg.pairs_of_interest
    rank = cfg.d_h
    panels = []
    for j in panel_indices(steps, n_panels):
        cu, cv = cosine_matrices(np.asarray(trajectory["W"][j]), np.asarray(trajectory["U"][j]),
                                 np.asarray(trajectory["V"][j]), rank)
        panels.append({
            "step": steps[j],
            "cos_query": cu.tolist(),
            "cos_key": cv.tolist(),
            "pair_query_cos": [float(cu[a, t]) for t, (a, _b, _v) in enumerate(pairs) if t < rank],
            "pair_key_cos": [float(cv[b, t]) for t, (_a, b, _v) in enumerate(pairs) if t < rank],
        })
    k = max(1, min(len(pairs), rank))
    spec = np.asarray(trajectory["spectrum"], dtype=float)[:, :k]

    def _mean_min(qname, kname):
        q = np.asarray(trajectory[qname], dtype=float)
        kk = np.asarray(trajectory[kname], dtype=float)
        if q.ndim != 2 or q.shape[1] == 0:
            return [None] * len(steps)
        return np.minimum(np.nanmean(q, axis=1), np.nanmean(kk, axis=1)).tolist()

    return {
        "config": cfg.name,
        "pairs": [[a, b, v] for a, b, v in pairs],
        "panels": panels,
        "curves": {
            "step": steps,
            "loss_rec": [float(x) for x in trajectory["loss_rec"]],
            "loss_attn": [float(x) for x in trajectory["loss_attn"]],
            "top_singular_values": spec.tolist(),
            "alignment_index": _mean_min("query_index", "key_index"),
            "alignment_free": _mean_min("query_free", "key_free"),
        },
        "target_logits": [v for _, _, v in pairs[:k]],
    }
