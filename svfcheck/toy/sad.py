"""Sparse attention decomposition (SAD) in the toy model (paper §5, Fig. 5, 6, 7a, App. F).

For a query token ``x_r`` and keys ``x_{s_1..s_m}`` the logit of key k splits into the SVD terms
``t_r(k) = (x_rᵀu_ρ) s_ρ (v_ρᵀ x_{s_k})``, ρ = 1..d_h (docs/math.md §3.2, §3.16). The relative
attention of the attended key j splits term-wise into
``c_ρ(j) = t_ρ(j) − mean_{k≠j} t_ρ(k)`` (:func:`svfcheck.metrics.relative_contributions`),
and its sparsity is the Rolls–Tovee ``S(c)`` (:func:`svfcheck.metrics.rolls_tovee`).

Probe contexts **(choice**, the paper's exact sampling was not given): every token is drawn
from the training distribution with *all features of interest removed*; then for a class-k
context, k distinct pairs of interest t are chosen at random and feature ``a_t`` is switched on
in the query and ``b_t`` in key j = 0 with strengths U[0,1) (the training distribution given
presence). Class 0 = no feature of interest anywhere (App. F), class 1 = exactly one pair
(Fig. 5), class 2 = two pairs. Fig. 6: over class-1 contexts with pair t, the correlation of
``c_t(j)`` with the strength product ``f^r_{a_t} f^s_{b_t}``.
"""

from __future__ import annotations

import numpy as np

from svfcheck.metrics import relative_contributions, rolls_tovee

from .config import ToyConfig
from .metrics import omega_svd

__all__ = ["probe_contexts", "toy_contributions", "toy_sad", "toy_sad_over_training"]


def probe_contexts(cfg: ToyConfig, n_samples: int, k: int, rng: np.random.Generator):
    """Strengths ``fq`` (S, n), ``fk`` (S, m, n) and the chosen pair indices (S, k) for class k."""
    pairs = cfg.pairs_of_interest
    if k > len(pairs):
        raise ValueError(f"class {k} needs {k} pairs of interest; the config has {len(pairs)}")
    S, n, m = n_samples, cfg.n, cfg.m

    def draw(shape):
        u = rng.random(shape)
        if cfg.strengths == "binary":
            return (u < cfg.p).astype(float)
        return np.where(u < cfg.p, u / cfg.p, 0.0)

    fq = draw((S, n))
    fk = draw((S, m, n))
    tgt = list(cfg.target_features)
    fq[:, tgt] = 0.0
    fk[:, :, tgt] = 0.0
    chosen = np.stack([rng.choice(len(pairs), size=k, replace=False) for _ in range(S)]) if k else np.zeros((S, 0), int)
    for s in range(S):
        for t in chosen[s]:
            a, b, _ = pairs[t]
            fq[s, a] = rng.random() if cfg.strengths == "uniform" else 1.0
            fk[s, 0, b] = rng.random() if cfg.strengths == "uniform" else 1.0
    return fq, fk, chosen


def toy_contributions(W, U, S, V, fq, fk, rank: int) -> np.ndarray:
    """Relative-attention contributions ``c`` (samples, rank) of key 0 in the SVD basis."""
    xq = fq @ W.T  # (S, d)
    xk = fk @ W.T  # (S, m, d)
    left = xq @ U[:, :rank]  # (S, R)
    right = xk @ V[:, :rank]  # (S, m, R)
    terms = left[:, None, :] * S[None, None, :rank] * right  # (S, m, R)
    return relative_contributions(terms, key=0)


def toy_sad(cfg: ToyConfig, weights: dict, n_samples: int = 2000, seed: int = 0, classes=(0, 1, 2),
            U=None, S=None, V=None) -> dict:
    """Rolls–Tovee S per class and the Fig. 6 correlations, for one instance."""
    W = np.asarray(weights["W"], dtype=np.float64)
    if U is None:
        U, S, V = omega_svd(weights["WQ"], weights["WK"])
    rank = cfg.d_h
    rng = np.random.default_rng(seed)
    out: dict = {"classes": {}, "correlation": {}}
    for k in classes:
        if k > len(cfg.pairs_of_interest):
            continue
        fq, fk, chosen = probe_contexts(cfg, n_samples, k, rng)
        c = toy_contributions(W, U, S, V, fq, fk, rank)
        ok = np.mean(c * c, axis=-1) > 0
        s = rolls_tovee(c[ok])
        out["classes"][str(k)] = {"mean": float(s.mean()), "std": float(s.std()), "median": float(np.median(s)),
                                  "count": int(ok.sum())}
        if k == 1:
            pairs = cfg.pairs_of_interest
            for t in range(min(len(pairs), rank)):
                sel = chosen[:, 0] == t
                if sel.sum() < 3:
                    continue
                a, b, _ = pairs[t]
                prod = fq[sel, a] * fk[sel, 0, b]
                ct = c[sel, t]
                r = np.corrcoef(ct, prod)[0, 1] if ct.std() > 0 and prod.std() > 0 else float("nan")
                out["correlation"][str(t)] = float(r)
            out["fig6_samples"] = {"product": (fq[chosen[:, 0] == 0, pairs[0][0]] * fk[chosen[:, 0] == 0, 0, pairs[0][1]]).tolist()[:300],
                                   "contribution": c[chosen[:, 0] == 0, 0].tolist()[:300]}
    return out


def toy_sad_over_training(cfg: ToyConfig, trajectory: dict, n_samples: int = 500, seed: int = 0) -> dict:
    """Mean S per class at every snapshot of a trajectory recorded with ``snapshots=True`` (Fig. 7a)."""
    if "W" not in trajectory:
        raise ValueError("the trajectory has no snapshots; train with TrainConfig(snapshots=True)")
    res = {"step": list(trajectory["step"]), "classes": {}}
    for j in range(len(res["step"])):
        W, U, V = trajectory["W"][j], trajectory["U"][j], trajectory["V"][j]
        S = np.asarray(trajectory["spectrum"][j])
        r = toy_sad(cfg, {"W": W}, n_samples=n_samples, seed=seed, U=U, S=S, V=V)
        for k, v in r["classes"].items():
            res["classes"].setdefault(k, []).append(v["mean"])
    return res
