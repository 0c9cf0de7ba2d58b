"""Alignment metrics of a trained toy instance (docs/math.md §1.4; paper Fig. 1, 2, 11, App. C.1).

All functions take unpadded float64 numpy weights of ONE instance (``W`` d×n, ``WQ``/``WK``
d×d_h) and its :class:`~svfcheck.toy.config.ToyConfig`. :func:`summarize` bundles them into a
JSON-friendly dict; :func:`check_alignment` turns a summary into a pass/fail verdict with
reasons (used by the tests *and* by the negative controls, which must fail it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ToyConfig

__all__ = [
    "omega_svd",
    "unit",
    "cosine_matrices",
    "pair_alignment",
    "one_to_one_alignment",
    "isotropy_eps",
    "orthogonality",
    "summarize",
    "AlignmentCheck",
    "check_alignment",
    "rope_band_energy",
]

_TINY = 1e-12


def omega_svd(WQ: np.ndarray, WK: np.ndarray, delta_rot: np.ndarray | None = None):
    """SVD of Ω = W_Q [R] W_Kᵀ (d×d, float64, torch.linalg.svd). Returns U, S, V (columns)."""
    WQ = np.asarray(WQ, dtype=np.float64)
    WK = np.asarray(WK, dtype=np.float64)
    om = WQ @ (delta_rot if delta_rot is not None else np.eye(WQ.shape[1])) @ WK.T
    U, S, Vh = torch.linalg.svd(torch.from_numpy(om))
    return U.numpy(), S.numpy(), Vh.numpy().T


def unit(X: np.ndarray, axis: int = 0) -> np.ndarray:
    nrm = np.linalg.norm(X, axis=axis, keepdims=True)
    return X / np.maximum(nrm, _TINY)


def cosine_matrices(W: np.ndarray, U: np.ndarray, V: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """|cos| between every feature (rows, n) and the first ``rank`` left / right singular vectors."""
    Wn = unit(W)
    return np.abs(Wn.T @ U[:, :rank]), np.abs(Wn.T @ V[:, :rank])


def pair_alignment(cfg: ToyConfig, W, U, V, rank: int | None = None) -> dict:
    """Index-matched and matching-free alignment of every pair of interest (pair t ↔ index t)."""
    rank = cfg.d_h if rank is None else rank
    cu, cv = cosine_matrices(W, U, V, rank)
    pairs = cfg.pairs_of_interest
    out = {"pairs": [[a, b, v] for a, b, v in pairs], "query_index": [], "key_index": [], "query_free": [],
           "key_free": [], "query_argmax": [], "key_argmax": []}
    for t, (a, b, _v) in enumerate(pairs):
        out["query_index"].append(float(cu[a, t]) if t < rank else float("nan"))
        out["key_index"].append(float(cv[b, t]) if t < rank else float("nan"))
        out["query_free"].append(float(cu[a].max()))
        out["key_free"].append(float(cv[b].max()))
        out["query_argmax"].append(int(cu[a].argmax()))
        out["key_argmax"].append(int(cv[b].argmax()))
    return out


def one_to_one_alignment(pairs, W, U, V, rank: int) -> dict:
    """Order-free, one-to-one alignment of the pairs of interest with singular indices.

    "All pairs of interest are aligned" means: every pair t = (a_t, b_t) is carried by its own
    rank-1 component s_j u_j v_jᵀ of Ω, i.e. there is an injective assignment σ of pairs to
    singular indices j < ``rank`` with |cos(w_{a_t}, u_σ(t))| and |cos(w_{b_t}, v_σ(t))| both
    high. The *same* index for query and key (one component carries one pair), *distinct*
    indices for distinct pairs (one rank-1 component cannot carry two different feature pairs:
    two pairs that share a singular vector, as the matching-free max allows at low p, are not
    both aligned), and *no index order* assumed (at low p the order of the singular values need
    not follow Λ). The score of pair t under σ is min(query |cos|, key |cos|); the returned
    ``value`` is the bottleneck max_σ min_t of it — so ``value ≥ 0.9`` iff some one-to-one
    assignment has every pair's query *and* key |cos| ≥ 0.9 (exact: bipartite matching with
    scipy's ``linear_sum_assignment`` on the thresholded score, binary search over the scores).

    ``pairs``: ``cfg.pairs_of_interest`` (a, b, value); ``W`` d×n, ``U``/``V`` d×≥rank (columns).
    Returns ``value`` (nan if there are no pairs or more pairs than ``rank``), ``assignment``
    (σ, list of singular indices, None if undefined), ``query`` / ``key`` (assigned |cos|).
    """
    from scipy.optimize import linear_sum_assignment

    pairs = list(pairs)
    k = len(pairs)
    out = {"value": float("nan"), "assignment": None, "query": [], "key": []}
    if k == 0 or k > rank:
        return out
    cu, cv = cosine_matrices(W, U, V, rank)
    a = [t[0] for t in pairs]
    b = [t[1] for t in pairs]
    score = np.minimum(cu[a], cv[b])  # k × rank

    def matching(thr):
        r, c = linear_sum_assignment((score >= thr).astype(float), maximize=True)
        return c if bool((score[r, c] >= thr).all()) else None

    vals = np.unique(score)  # ascending; the bottleneck is one of them
    lo, hi = 0, len(vals) - 1  # matching(vals[0]) always exists (complete bipartite graph)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if matching(vals[mid]) is not None:
            lo = mid
        else:
            hi = mid - 1
    sigma = matching(vals[lo])
    out["value"] = float(vals[lo])
    out["assignment"] = [int(j) for j in sigma]
    out["query"] = [float(cu[a[t], j]) for t, j in enumerate(sigma)]
    out["key"] = [float(cv[b[t], j]) for t, j in enumerate(sigma)]
    return out


def isotropy_eps(W: np.ndarray) -> tuple[float, float]:
    """(c, ε) of the frame operator Σ = W Wᵀ (App. C.1): c = (λmax+λmin)/2, ε = (λmax−λmin)/(λmax+λmin)."""
    ev = np.linalg.eigvalsh(np.asarray(W, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T)
    lo, hi = float(ev[0]), float(ev[-1])
    return (hi + lo) / 2, (hi - lo) / max(hi + lo, _TINY)


def orthogonality(cfg: ToyConfig, W: np.ndarray, min_norm_frac: float = 0.1) -> dict:
    """Interference of non-target features with target features (Fig. 1b/c).

    ``max_abs_cos``: max |cos(w_t, w_j)| over target t and non-target j whose norm is at least
    ``min_norm_frac`` × the largest feature norm (features the model dropped — norm ≈ 0 — have
    meaningless directions). ``max_proj``: max |⟨w_j, ŵ_t⟩| / max_k ‖w_k‖ over all non-target j
    (norm-weighted, needs no cut-off). Also the same between distinct target features.
    """
    W = np.asarray(W, dtype=np.float64)
    tgt = list(cfg.target_features)
    non = [j for j in range(cfg.n) if j not in tgt]
    norms = np.linalg.norm(W, axis=0)
    big = norms.max()
    Wn = unit(W)
    res = {"target": tgt, "norms": norms.tolist()}
    if not tgt:
        return res
    if non:
        keep = [j for j in non if norms[j] >= min_norm_frac * big]
        C = np.abs(Wn[:, tgt].T @ Wn[:, keep]) if keep else np.zeros((len(tgt), 0))
        P = np.abs(Wn[:, tgt].T @ W[:, non]) / big
        res["max_abs_cos"] = float(C.max()) if C.size else 0.0
        res["max_proj"] = float(P.max())
        res["n_nontarget_kept"] = len(keep)
    G = np.abs(Wn[:, tgt].T @ Wn[:, tgt])
    np.fill_diagonal(G, 0)
    res["target_max_abs_cos"] = float(G.max()) if G.size else 0.0
    return res


def summarize(cfg: ToyConfig, weights: dict, full: bool = True) -> dict:
    """All alignment figures for one instance (JSON-friendly)."""
    W, WQ, WK = weights["W"], weights["WQ"], weights["WK"]
    U, S, V = omega_svd(WQ, WK)
    out = {
        "config": cfg.name,
        "spectrum": S[: cfg.d_h].tolist(),
        "target_logits": [v for _, _, v in cfg.pairs_of_interest],
        "alignment": pair_alignment(cfg, W, U, V),
        "isotropy_eps": isotropy_eps(W)[1],
        "orthogonality": orthogonality(cfg, W),
    }
    if full:
        cu, cv = cosine_matrices(W, U, V, cfg.d_h)
        out["cos_query"] = cu.tolist()
        out["cos_key"] = cv.tolist()
    return out


@dataclass
class AlignmentCheck:
    """Verdict of :func:`check_alignment`: ``ok`` and the reasons it failed (empty if ok)."""

    ok: bool
    failures: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


def check_alignment(
    summary: dict,
    min_mean_cos: float = 0.9,
    min_each_cos: float | None = None,
    ordered: bool = True,
    matching_free: bool = False,
    n_pairs: int | None = None,
    min_gap: float | None = None,
) -> AlignmentCheck:
    """The paper's alignment claim as a reusable assertion.

    - mean index-matched (or, with ``matching_free``, max-over-indices) |cos| of the query
      features ≥ ``min_mean_cos`` and the same for the key features;
    - optionally every single pair ≥ ``min_each_cos``;
    - ``ordered``: the top singular values are strictly decreasing in the order of the target
      logits *and* each pair's best singular index is its own index t (one-to-one);
    - ``min_gap``: singular value of the last pair / next singular value ≥ min_gap
      (a "dominant" spectrum; e.g. one large singular value for a single pair).
    Only the first ``n_pairs`` pairs (largest logits) are checked if given.
    """
    al = summary["alignment"]
    k = len(al["pairs"]) if n_pairs is None else n_pairs
    qk = ("query_free", "key_free") if matching_free else ("query_index", "key_index")
    q = np.array(al[qk[0]][:k], dtype=float)
    kk = np.array(al[qk[1]][:k], dtype=float)
    fails = []
    figs = {"query_mean": float(np.nanmean(q)) if k else float("nan"),
            "key_mean": float(np.nanmean(kk)) if k else float("nan"),
            "query": q.tolist(), "key": kk.tolist(), "spectrum": summary["spectrum"]}
    if k == 0:
        fails.append("no pairs of interest to check")
    if np.any(np.isnan(q)) or np.any(np.isnan(kk)):
        fails.append("a checked pair has no singular index (more pairs than d_h)")
    for name, arr in (("query", q), ("key", kk)):
        mean = float(np.nanmean(arr)) if arr.size else float("nan")
        if not mean >= min_mean_cos:
            fails.append(f"mean {name} |cos| {mean:.3f} < {min_mean_cos}")
        if min_each_cos is not None and arr.size and not np.nanmin(arr) >= min_each_cos:
            fails.append(f"min {name} |cos| {np.nanmin(arr):.3f} < {min_each_cos}")
    S = np.asarray(summary["spectrum"], dtype=float)
    if ordered and k:
        if not np.all(np.diff(S[:k]) < 0):
            fails.append(f"top-{k} singular values not strictly decreasing: {np.round(S[:k], 3).tolist()}")
        tv = np.asarray(summary["target_logits"][:k])
        if not np.all(np.diff(tv) <= 0):
            fails.append("target logits not sorted (internal error)")
        qa = al["query_argmax"][:k]
        ka = al["key_argmax"][:k]
        if list(qa) != list(range(k)) or list(ka) != list(range(k)):
            fails.append(f"pairs not matched one-to-one with singular indices: query {qa}, key {ka}")
    if min_gap is not None and k < len(S):
        gap = S[k - 1] / max(S[k], 1e-300)
        figs["gap"] = float(gap)
        if not gap >= min_gap:
            fails.append(f"singular value gap s_{k - 1}/s_{k} = {gap:.2f} < {min_gap}")
    return AlignmentCheck(ok=not fails, failures=fails, figures=figs)


def rope_band_energy(cfg: ToyConfig, weights: dict) -> dict:
    """App. D, Fig. 22: fraction of each feature's head encoding ``W_Qᵀ w`` (query) and ``W_Kᵀ w``
    (key) that falls in each RoPE band (coordinates 2k, 2k+1). Rows: features; columns: bands."""
    if cfg.rope is None:
        raise ValueError("rope_band_energy needs a RoPE config")
    W = np.asarray(weights["W"], dtype=np.float64)
    out = {}
    for name, M in (("query", weights["WQ"]), ("key", weights["WK"])):
        e = (np.asarray(M, dtype=np.float64).T @ W) ** 2  # (d_h, n)
        band = e.reshape(cfg.d_h // 2, 2, cfg.n).sum(1).T  # (n, bands)
        out[name] = (band / np.maximum(band.sum(1, keepdims=True), _TINY)).tolist()
    return out
