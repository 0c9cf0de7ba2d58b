"""Entry points: :func:`run_default` (the CLI's ``svfcheck toy --out DIR``) and :func:`run_preset`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import figures
from .config import TrainConfig, preset
from .dynamics import training_dynamics
from .metrics import check_alignment, one_to_one_alignment
from .sad import toy_sad, toy_sad_over_training
from .train import train_many

__all__ = ["run_default", "run_preset", "run_sweeps", "arrival_step", "arrival_step_one_to_one", "arrival_trend",
           "one_to_one_over_training", "to_jsonable"]


def to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def run_preset(
    name: str,
    out_dir,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    steps: int = 10_000,
    progress: bool = True,
    device: str = "cpu",
    check: dict | None = None,
) -> dict:
    """Train a preset for every seed (one batched model), write PNG figures + ``toy.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset(name)
    t0 = time.perf_counter()
    res = train_many(cfg, seeds=seeds, tcfg=TrainConfig(steps=steps, progress=progress, snapshots=True,
                                                        record_every=max(1, steps // 40)), device=device)
    seconds = time.perf_counter() - t0
    check = check or {}
    instances = []
    for r in res.instances:
        chk = check_alignment(r.summary, **check)
        instances.append({**r.to_json(), "check": {"ok": chk.ok, "failures": chk.failures}})
    first = res.instances[0]
    # Per seed, with the probe seeded like tests/toy (seed = instance seed): the Fig. 7a
    # ordering is a per-model claim, so every instance is measured, not only the first.
    sads = [toy_sad(cfg, r.weights, n_samples=2000, seed=r.seed) for r in res.instances] if cfg.pairs else None
    sad = sads[0] if sads else None
    figs = {
        "cosine_heatmaps": figures.cosine_heatmaps(first.summary, out / f"{name}_cosines.png",
                                                   title=f"{name} (seed {first.seed}): |cos| features × singular vectors"),
        "feature_gram": figures.feature_gram(first.weights["W"], out / f"{name}_feature_cosines.png",
                                             title=f"{name}: feature cosines"),
        "spectrum": figures.spectrum(first.summary, out / f"{name}_spectrum.png", title=f"{name}: spectrum of Ω"),
        "alignment_over_training": figures.alignment_over_training(
            first.trajectory, cfg.pairs_of_interest, out / f"{name}_training.png", title=f"{name}: alignment over training"),
    }
    dyn = training_dynamics(cfg, first.trajectory)
    figs["training_dynamics"] = figures.training_dynamics(
        dyn, out / f"{name}_dynamics.png", title=f"{name} (seed {first.seed}): training dynamics (Fig. 3)")
    sad_traj = None
    if sad is not None:
        figs["sad"] = figures.sad_bars(sad, out / f"{name}_sad.png", title=f"{name}: SAD (Rolls–Tovee S)")
        sad_traj = toy_sad_over_training(cfg, first.trajectory, n_samples=300, seed=0)
        figs["sad_over_training"] = figures.sweep_curve(
            sad_traj["step"], {f"{k} pair(s) present": v for k, v in sorted(sad_traj["classes"].items())},
            out / f"{name}_sad_over_training.png", xlabel="step", ylabel="mean Rolls–Tovee S",
            title=f"{name}: sparsity of attention decomposition (Fig. 7a)")
    qi = np.array([r.summary["alignment"]["query_index"] for r in res.instances], dtype=float)
    ki = np.array([r.summary["alignment"]["key_index"] for r in res.instances], dtype=float)
    result = {
        "preset": name,
        "config": {"n": cfg.n, "d": cfg.d, "d_h": cfg.d_h, "lam": cfg.lam, "m": cfg.m, "p": cfg.p,
                   "pairs": [list(t) for t in cfg.pairs_of_interest]},
        "seeds": list(seeds),
        "steps": steps,
        "seconds": seconds,
        "instance_steps_per_second": res.instance_steps / seconds,
        "all_aligned": all(i["check"]["ok"] for i in instances),
        "mean_query_cos": float(np.nanmean(qi)) if qi.size else None,
        "mean_key_cos": float(np.nanmean(ki)) if ki.size else None,
        "instances": instances,
        "sad": sad,
        "sad_per_seed": None if sads is None else {str(r.seed): x["classes"] for r, x in zip(res.instances, sads)},
        "sad_over_training": sad_traj,
        "training_dynamics": dyn,
        "figures": {k: str(v) for k, v in figs.items()},
    }
    result = to_jsonable(result)
    (out / "toy.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def run_default(out_dir, seeds: Sequence[int] = (0, 1, 2), steps: int = 10_000, progress: bool = True,
                device: str = "cpu") -> dict:
    """Train the paper's default config (Table 1) for ``seeds`` in one batched model.

    Writes ``default_*.png`` (cosine heatmaps, feature cosines, spectrum, training dynamics,
    SAD) and ``toy.json`` into ``out_dir`` and returns the same dict. ``all_aligned`` is the
    alignment claim: every seed passes :func:`~svfcheck.toy.metrics.check_alignment` (mean
    index-matched |cos| ≥ 0.9 for query and key features, top-4 singular values ordered like Λ).
    """
    return run_preset("default", out_dir, seeds=seeds, steps=steps, progress=progress, device=device)


def _first_stable(steps, ok):
    """First of ``steps`` from which ``ok`` holds at every later record; None if never."""
    ok = np.asarray(ok, dtype=bool)
    bad = np.flatnonzero(~ok)
    j = int(bad[-1]) + 1 if bad.size else 0
    return int(steps[j]) if j < len(ok) else None


def arrival_step(traj: dict, threshold: float = 0.9):
    """First recorded step from which the matching-free mean |cos| (the smaller of the query and
    key means over the pairs) stays ≥ ``threshold`` to the end of training; None if never.

    Matching-free: two pairs may count as aligned with the *same* singular vector (seen at low p).
    For "every pair of interest has arrived" use :func:`arrival_step_one_to_one`."""
    q = np.asarray(traj["query_free"], dtype=float)
    k = np.asarray(traj["key_free"], dtype=float)
    if q.ndim != 2 or q.shape[1] == 0:  # no pairs of interest (e.g. Λ = 0)
        return None
    return _first_stable(traj["step"], np.minimum(q.mean(1), k.mean(1)) >= threshold)


def one_to_one_over_training(traj: dict, cfg) -> np.ndarray:
    """Per record, :func:`~svfcheck.toy.metrics.one_to_one_alignment` ``value`` of ``cfg``'s
    pairs of interest (needs a trajectory recorded with ``TrainConfig(snapshots=True)``)."""
    if not all(k in traj for k in ("W", "U", "V")):
        raise ValueError("one-to-one alignment over training needs W, U, V snapshots "
                         "(train with TrainConfig(snapshots=True))")
    pairs = cfg.pairs_of_interest
    return np.array([one_to_one_alignment(pairs, W, U, V, cfg.d_h)["value"]
                     for W, U, V in zip(traj["W"], traj["U"], traj["V"])], dtype=float)


def arrival_step_one_to_one(traj: dict, cfg, threshold: float = 0.9):
    """Arrival of alignment of *all* pairs of interest: first recorded step from which there is,
    at every later record, a one-to-one assignment of the pairs to distinct singular indices (any
    order) with every pair's query and key |cos| ≥ ``threshold``
    (:func:`~svfcheck.toy.metrics.one_to_one_alignment`); None if never (or no pairs).

    Why this and not :func:`arrival_step`: "all four pairs are aligned" means each pair is carried
    by a rank-1 component u_j v_jᵀ of Ω; one component cannot carry two different feature pairs,
    so two pairs sharing a singular vector (which the matching-free max counts as two aligned
    pairs) have not both arrived. Index order is not assumed (at low p the singular values need
    not be ordered like Λ), and each pair — not only the mean over pairs — must be aligned.
    This is also the early-stop rule of ``TrainConfig.stop_aligned``."""
    if not cfg.pairs_of_interest:
        return None
    return _first_stable(traj["step"], one_to_one_over_training(traj, cfg) >= threshold)


def arrival_trend(arrivals: dict) -> dict:
    """Fig. 13 trend: does alignment arrive earlier the larger p?

    ``arrivals``: ``{p: [arrival step per seed, None if it never arrived within the budget]}``.
    Returns per p the seed ``mean`` / ``median`` (None if a seed did not arrive), ``not_arrived``
    (the p values with a seed that did not arrive) and Spearman ρ between p and the seed-mean
    arrival (``rho``) and between p and every seed's arrival (``rho_per_seed``). A seed that did
    not arrive is *censored*, not failed: it arrives after every recorded step, so it enters the
    rank correlation as +inf (later than every seed that arrived; ties among censored). That is
    what the paper attributes to its step budget at low p, and it counts *for* the trend there —
    but a censored large p counts against it. The trend holds if ``rho < 0`` (nan: undefined,
    e.g. no p value arrived).
    """
    from scipy.stats import spearmanr

    ps = sorted(arrivals, reverse=True)
    mean, median, not_arrived = {}, {}, []
    for p in ps:
        a = list(arrivals[p])
        ok = len(a) > 0 and all(x is not None for x in a)
        mean[p] = float(np.mean(a)) if ok else None
        median[p] = float(np.median(a)) if ok else None
        if not ok:
            not_arrived.append(p)

    def inf(x):
        return np.inf if x is None else float(x)

    def rho_(x, y):  # nan if undefined (fewer than 2 points or a constant side, e.g. nothing arrived)
        return float(spearmanr(x, y).statistic) if len(set(x)) > 1 and len(set(y)) > 1 else float("nan")

    rho = rho_(ps, [inf(mean[p]) for p in ps])
    rho_seed = rho_([p for p in ps for _ in arrivals[p]], [inf(x) for p in ps for x in arrivals[p]])
    return {"mean": mean, "median": median, "not_arrived": not_arrived, "rho": rho, "rho_per_seed": rho_seed}


SWEEPS = {
    "p": (1.0, 0.5, 0.25, 0.1, 0.05),
    "lam": (1.0, 4.0, 10.0, 40.0, 100.0),
    "n": (10, 15, 20, 25, 30),
    "d_h": (10, 8, 6, 4),
    "m": (2, 4, 8),
}


def run_sweeps(out_dir, seeds: Sequence[int] = (0,), steps: int = 10_000, p_steps: int = 80_000,
               sweeps: dict | None = None, workers: int = 1, progress: bool = True, device: str = "cpu",
               p_stop: float | None = 0.9, p_patience: int = 5_000) -> dict:
    """App. A robustness sweeps of the default config; writes ``sweep_*.png`` and ``sweeps.json``.

    For each swept value: final matching-free and index-matched mean |cos| (seed mean) and the
    arrival step of alignment (:func:`arrival_step`; for p also :func:`arrival_step_one_to_one`
    and the Fig. 13 :func:`arrival_trend` of it). The p sweep has the paper's budget of up
    to ``p_steps`` (80k) steps, each p value stopping early once aligned and stable
    (``TrainConfig.stop_aligned=p_stop`` — one-to-one alignment — for ``p_patience`` steps;
    ``p_stop=None``: no early stop).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweeps = SWEEPS if sweeps is None else sweeps
    D = preset("default")
    result: dict = {"seeds": list(seeds), "steps": steps, "p_steps": p_steps, "sweeps": {}}
    for key, values in sweeps.items():
        field = {"lam": "lam", "p": "p", "n": "n", "d_h": "d_h", "m": "m"}[key]
        cfgs = [D.with_(**{field: v}, name=f"{key}={v}") for v in values]
        t0 = time.perf_counter()
        if key == "p":
            tcfg = TrainConfig(steps=p_steps, progress=progress, record_every=250, stop_aligned=p_stop,
                               stop_patience=max(250, p_patience), snapshots=True)  # W, U, V: one-to-one arrival
        else:
            tcfg = TrainConfig(steps=steps, progress=progress, record_every=250)
        res = train_many(cfgs, seeds=seeds, tcfg=tcfg, device=device, workers=workers, separate_configs=key == "p")
        rows = []
        for v, c in zip(values, cfgs):
            rs = [r for r in res.instances if r.config == c]
            free = [min(np.mean(r.summary["alignment"]["query_free"]), np.mean(r.summary["alignment"]["key_free"]))
                    for r in rs]
            idx = [min(np.nanmean(r.summary["alignment"]["query_index"]), np.nanmean(r.summary["alignment"]["key_index"]))
                   for r in rs]
            arr = [arrival_step(r.trajectory) for r in rs]
            row = {"value": v, "matching_free": float(np.mean(free)), "index_matched": float(np.mean(idx)),
                   "arrival_steps": arr, "steps_trained": [int(r.trajectory["step"][-1]) for r in rs],
                   "aligned": all(check_alignment(r.summary, ordered=False, matching_free=True).ok for r in rs)}
            if key == "p":
                row["arrival_steps_one_to_one"] = [arrival_step_one_to_one(r.trajectory, c) for r in rs]
            rows.append(row)
        result["sweeps"][key] = {"rows": rows, "seconds": time.perf_counter() - t0}
        if key == "p":  # Fig. 13 trend on the one-to-one arrival (arrival_trend)
            result["sweeps"][key]["arrival_trend"] = arrival_trend(
                {r["value"]: r["arrival_steps_one_to_one"] for r in rows})
        xs = [r["value"] for r in rows]
        figures.sweep_curve(xs, {"matching-free": [r["matching_free"] for r in rows],
                                 "index-matched": [r["index_matched"] for r in rows]},
                            out / f"sweep_{key}.png", xlabel=key, logx=key in ("p", "lam"),
                            title=f"alignment vs {key} (seed mean)")
        if key == "p":
            curves = {}
            for c in cfgs:  # first seed; each p has its own length (early stop)
                r = next(r for r in res.instances if r.config == c)
                q = np.asarray(r.trajectory["query_free"], dtype=float).mean(1)
                k = np.asarray(r.trajectory["key_free"], dtype=float).mean(1)
                curves[c.name] = (r.trajectory["step"], np.minimum(q, k))
            figures.curves(curves, out / "sweep_p_over_training.png", xlabel="step",
                           ylabel="matching-free mean |cos|", title="alignment over training by p (Fig. 13)")
    result = to_jsonable(result)
    (out / "sweeps.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
