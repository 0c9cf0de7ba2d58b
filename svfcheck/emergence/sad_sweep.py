"""SAD over training: the same prompts, heads and pairs at every checkpoint (paper Fig. 7b, 8, 9b).

:func:`sad_over_training` analyses a :class:`~svfcheck.emergence.series.CheckpointSeries`:

1. **Prompts** are fixed by the settings (seeded), identical at every checkpoint: induction
   sequences of the run's :class:`~svfcheck.emergence.tasks.InductionTask`; IOI prompts
   (:func:`svfcheck.tasks.ioi.generate_ioi_prompts`); or held-out windows of the offline corpus.
2. **Heads** are chosen once, at the *final* checkpoint, by attention pattern — never by index —
   and the same head set is used at every step: induction / previous-token heads by
   :func:`svfcheck.emergence.heads.head_scores`; IOI heads from the paper's table
   (:func:`svfcheck.tasks.circuits.paper_circuit`, e.g. Pythia-160M Table 2) or, without a
   table, :func:`svfcheck.tasks.selection.discover_heads`; text: previous-token heads by mean
   attention ``i → i-1``. Explicit heads may be given instead.
3. **Pairs** (``selection``): ``"task"`` — training-independent pairs fixed by the task
   structure: an induction head's query in the repeated half → the induction target
   (``i - d + 1``, the token after the earlier copy); a previous-token head's query ``i`` →
   ``i - 1``; an IOI head's labelled positions (S1, S1+1, IO, S2, END); a head of a role
   without such a rule (e.g. ``chosen``) its top-attended key; ``"top"`` — each query's
   top-attended non-first key in the chosen heads (as many pairs at every step). With
   ``all_heads`` every other head is analysed too (role ``"other"``, top-attended key).
4. **Per checkpoint** one forward pass per batch (:func:`svfcheck.real.capture.capture`) and the
   exact decomposition (:func:`svfcheck.real.decompose.decompose`) with both rotation controls;
   summaries overall and per role: mean Rolls–Tovee S in the SVD basis and under both controls
   (99% bootstrap intervals of each mean), the SAD effect ``mean(S_control − S_svd)`` with
   intervals, median k. Results are keyed by step through :func:`svfcheck.emergence.sweep.sweep`
   (resumable; a finished step is never recomputed; the sweep key hashes the settings, the
   head set, the prompts, the checkpoints' config and weight files and the tokenizer's
   vocabulary, so a rerun over another series or tokenizer in the same folder is refused).
5. **Contrast** final vs first checkpoint (step 0 = the initialisation of our runs) through
   :func:`svfcheck.real.sad.contrast`, overall and per role.

Outputs in ``out_dir``: ``sad_sweep.json`` (per-step raw results), ``emergence.json`` (all
figure data, settings, heads, contrast — a pure function of the inputs), ``timing.json``
(wall-clock per step; not in ``emergence.json`` so that reruns are byte-identical) and the
figures of :mod:`svfcheck.emergence.figures`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import stats
from .._validate import is_int as _is_int
from ..tasks.selection import top_keys
from .series import CheckpointSeries
from .sweep import sweep

__all__ = [
    "EmergenceSettings",
    "EmergenceResult",
    "HeadSet",
    "sad_over_training",
    "identify_heads",
    "build_prompts",
    "TASKS",
    "SELECTIONS",
    "EMERGENCE_FORMAT",
]

EMERGENCE_FORMAT = "svfcheck-emergence/1"
TASKS = ("induction", "ioi", "text")
SELECTIONS = ("task", "top")
LEVEL = 0.99
CONTROLS = ("rotated", "paper_control")
INDUCTION = "induction"
PREVIOUS_TOKEN = "previous token"
OTHER = "other"
OVERALL = "overall"


@dataclass(frozen=True)
class EmergenceSettings:
    """What is analysed at every checkpoint (all of it enters the sweep key).

    ``n_prompts`` prompts from ``prompt_seed``; ``heads_per_role`` heads per role when heads are
    identified by pattern (``head_sequences`` probe sequences from ``head_seed``); ``seed``
    seeds the rotation controls and bootstraps (``n_boot`` resamples per step, ``n_boot_contrast``
    for the final-vs-first contrast). ``text_tokens``: tokens per text prompt. ``circuit``: an IOI
    head-table name (:data:`svfcheck.tasks.circuits.PAPER_CIRCUITS`); None → the series' name
    if it has a table. ``ioi_heads``: ``auto`` (the table if there is one, else discovered heads),
    ``paper`` (a table is required) or ``discover``. ``dtype``: decomposition dtype (None: float64
    without RoPE, float32 with RoPE, as :func:`svfcheck.real.sad.analyze`)."""

    task: str = "induction"
    selection: str = "task"
    n_prompts: int = 32
    prompt_seed: int = 7
    heads_per_role: int = 2
    head_sequences: int = 64
    head_seed: int = 1234
    all_heads: bool = False
    seed: int = 0
    n_boot: int = 2000
    n_boot_contrast: int = 10_000
    basis: str = "pair"
    batch_size: int = 16
    text_tokens: int = 64
    circuit: str | None = None
    ioi_heads: str = "auto"
    dtype: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        for f in ("n_prompts", "heads_per_role", "head_sequences", "batch_size"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise ValueError(f"EmergenceSettings.{f} must be a positive int, got {v!r}")
        for f in ("n_boot", "n_boot_contrast"):
            v = getattr(self, f)
            if not _is_int(v) or v < 100:
                raise ValueError(f"EmergenceSettings.{f} must be an int >= 100, got {v!r}")
        for f in ("prompt_seed", "head_seed", "seed"):
            v = getattr(self, f)
            if not _is_int(v) or v < 0:
                raise ValueError(f"EmergenceSettings.{f} must be a non-negative int, got {v!r}")
        if not _is_int(self.text_tokens) or self.text_tokens < 3:
            raise ValueError(f"EmergenceSettings.text_tokens must be an int >= 3, got {self.text_tokens!r}")
        if self.basis not in ("pair", "zero"):
            raise ValueError(f"basis must be 'pair' or 'zero', got {self.basis!r}")
        if self.ioi_heads not in ("auto", "paper", "discover"):
            raise ValueError(f"ioi_heads must be 'auto', 'paper' or 'discover', got {self.ioi_heads!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadSet:
    """Heads by role: ``roles[role] = ((layer, head), ...)``; ``circuit`` (IOI only) the
    :class:`~svfcheck.tasks.circuits.CircuitHead` table; ``scores`` what the identification
    measured (JSON), ``identified_at`` the step it was measured at (None: given)."""

    roles: dict[str, tuple[tuple[int, int], ...]]
    circuit: tuple | None = None
    scores: dict = field(default_factory=dict)
    identified_at: int | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "roles": {r: [list(h) for h in hs] for r, hs in self.roles.items()},
            "identified_at": self.identified_at,
            "scores": self.scores,
        }
        if self.circuit is not None:
            d["circuit"] = [
                {"layer": c.layer, "head": c.head, "role": c.role, "query": c.query, "key": c.key, "name": c.name}
                for c in self.circuit
            ]
        return d


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class _Prompt:
    ids: tuple[int, ...]
    meta: dict  # induction: s1, L, d, end; ioi: positions


def _induction_task(series: CheckpointSeries, vocab_size: int):
    from .tasks import InductionTask

    cfg = series.metadata.get("config") if series.metadata else None
    if cfg and cfg.get("task", {}).get("kind") == "induction":
        t = dict(cfg["task"])
        t.pop("kind")
        return InductionTask(**t)
    n = min(vocab_size - 1, 64)
    if n < 8:
        raise ValueError(f"vocabulary of {vocab_size} tokens is too small for the induction task (need >= 9)")
    return InductionTask(n_symbols=n, min_len=4, max_len=min(12, n))


def build_prompts(settings: EmergenceSettings, tokenizer, series: CheckpointSeries, vocab_size: int) -> list[_Prompt]:
    """The fixed prompt set of ``settings`` (identical for every checkpoint)."""
    if settings.task == "induction":
        from .tasks import step_generator

        task = _induction_task(series, vocab_size)
        b = task.sample(settings.n_prompts, step_generator(settings.prompt_seed, 0))
        first = b.score_mask.float().argmax(dim=1)  # S + 1: first token of the second copy
        out = []
        for r in range(settings.n_prompts):
            L, d, s1 = int(b.lengths[r]), int(b.distances[r]), int(first[r])
            out.append(_Prompt(tuple(int(x) for x in b.input_ids[r]), {"s1": s1, "L": L, "d": d}))
        return out
    if settings.task == "ioi":
        from ..tasks.ioi import generate_ioi_prompts

        ps = generate_ioi_prompts(tokenizer, settings.n_prompts, seed=settings.prompt_seed, min_names=4)
        return [_Prompt(tuple(int(t) for t in p.token_ids), {"positions": dict(p.positions)}) for p in ps]
    from ..tasks.prompts import text_prompts
    from .corpus import load_corpus

    _, val = load_corpus().split(0.1)
    text = bytes(val.tolist()).decode("utf-8", errors="ignore")
    rng = np.random.default_rng(settings.prompt_seed)
    ps = text_prompts(tokenizer, text, settings.n_prompts * 4, settings.text_tokens)
    pick = sorted(rng.choice(len(ps), size=settings.n_prompts, replace=False).tolist())
    return [_Prompt(ps[i].token_ids, {}) for i in pick]


# --------------------------------------------------------------------------- heads


def _top(a: np.ndarray, k: int) -> tuple[tuple[int, int], ...]:
    idx = np.argsort(-a, axis=None, kind="stable")[:k]
    return tuple((int(i // a.shape[1]), int(i % a.shape[1])) for i in idx)


def identify_heads(loaded, settings: EmergenceSettings, series: CheckpointSeries, prompts, step: int | None = None) -> HeadSet:
    """Heads by role from the attention pattern of ``loaded`` (module docstring, point 2)."""
    model = loaded.model
    k = settings.heads_per_role
    if settings.task == "induction":
        from .heads import head_scores

        task = _induction_task(series, model.config.vocab_size)
        hs = head_scores(model, task, n_sequences=settings.head_sequences, seed=settings.head_seed)
        return HeadSet(
            {INDUCTION: _top(hs.induction, k), PREVIOUS_TOKEN: _top(hs.previous_token, k)},
            scores={"induction": np.round(hs.induction, 5).tolist(),
                    "previous_token": np.round(hs.previous_token, 5).tolist()},
            identified_at=step,
        )
    from ..real.capture import capture, pad_batches
    from ..real.heads import cached_heads

    mh = cached_heads(model)
    pad = _pad_id(loaded.tokenizer)
    if settings.task == "ioi":
        from ..tasks.circuits import PAPER_CIRCUITS, paper_circuit
        from ..tasks.selection import discover_heads, discovered_circuit, validate_heads

        name = settings.circuit or (series.name if series.name in PAPER_CIRCUITS else None)
        if settings.ioi_heads == "paper" and name is None:
            raise ValueError(
                f"no paper head table for series {series.name!r}; give circuit= one of {sorted(PAPER_CIRCUITS)} "
                "or use ioi_heads='discover'"
            )
        if settings.ioi_heads == "discover":
            name = None
        if name is not None:
            try:
                table = paper_circuit(name, model.config)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
            validate_heads(table, mh.n_layers, mh.layers[0].n_heads)
            scores: dict = {"source": f"paper table {name}"}
            at = None
        else:
            attns, vis, pos = [], [], []
            for s, ids, mask in pad_batches([p.ids for p in prompts], settings.batch_size, pad):
                cap = capture(model, ids, mask, heads=mh)
                for b in range(ids.shape[0]):
                    a, v = cap.prompt_views(b)
                    attns.append(a)
                    vis.append(v)
                    pos.append(_Pos(prompts[s + b].meta["positions"]))
            found = discover_heads(attns, pos, vis, top=k)
            table = discovered_circuit(found)
            scores = {r: [{"layer": h.layer, "head": h.head, "score": h.score, "uniform": h.uniform} for h in hs]
                      for r, hs in found.items()}
            at = step
        roles: dict[str, list] = {}
        for c in table:
            roles.setdefault(c.role, [])
            if (c.layer, c.head) not in roles[c.role]:
                roles[c.role].append((c.layer, c.head))
        return HeadSet({r: tuple(v) for r, v in roles.items()}, circuit=tuple(table), scores=scores, identified_at=at)
    # text: previous-token heads by mean attention i -> i-1 on the prompts
    acc = torch.zeros(mh.n_layers, mh.layers[0].n_heads, dtype=torch.float64)
    cnt = 0
    for _, ids, mask in pad_batches([p.ids for p in prompts], settings.batch_size, pad):
        cap = capture(model, ids, mask, heads=mh)
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            q = torch.arange(2, n)
            for l in range(mh.n_layers):
                acc[l] += cap.attn[l][b][:, q, q - 1].double().sum(-1)
            cnt += len(q)
    prev = (acc / max(cnt, 1)).numpy()
    return HeadSet({PREVIOUS_TOKEN: _top(prev, k)}, scores={"previous_token": np.round(prev, 5).tolist()},
                   identified_at=step)


@dataclass(frozen=True)
class _Pos:
    positions: dict


def _pad_id(tok) -> int:
    p = getattr(tok, "pad_token_id", None)
    return 0 if p is None else int(p)


# --------------------------------------------------------------------------- pairs


def _pairs_for_prompt(settings, heads: HeadSet, p: _Prompt, attn, vis, n: int, b: int, all_pairs: list[tuple[str, int, int]]):
    """Append (role, layer, head, batch row, query, key) rows for one prompt."""
    out = []

    def top_key(l, h, q):
        best, ok = top_keys(attn[l][h, q], vis[l][q])
        return int(best) if bool(ok) else None

    def structural(role):
        if settings.task == "induction":
            s1, L, d = p.meta["s1"], p.meta["L"], p.meta["d"]
            if role == INDUCTION:
                return [(q, q - d + 1) for q in range(s1, s1 + L)]
            if role == PREVIOUS_TOKEN:
                return [(q, q - 1) for q in range(2, s1 + L)]
        elif settings.task == "text" and role == PREVIOUS_TOKEN:
            return [(q, q - 1) for q in range(2, n)]
        return None

    queries_all = range(1, n)
    pos = p.meta.get("positions")
    table = {(c.layer, c.head, c.role): c for c in heads.circuit} if heads.circuit is not None else {}
    for role, hl in heads.roles.items():
        for (l, h) in hl:
            if settings.selection == "task":
                if settings.task == "ioi":
                    c = table[(l, h, role)]
                    qk = [(pos[c.query], pos[c.key])]
                else:
                    qk = structural(role)
            else:
                qk = None
            if qk is None:
                if settings.task == "ioi" and (l, h, role) in table:
                    qs = [pos[table[(l, h, role)].query]]
                else:
                    qs = queries_all
                qk = [(q, top_key(l, h, q)) for q in qs]
            for q, k in qk:
                if k is None or int(vis[l][q].sum()) < 2 or not bool(vis[l][q, k]):
                    continue
                out.append((role, l, h, b, q, k))
    if settings.all_heads:
        chosen = {lh for hl in heads.roles.values() for lh in hl}
        for (l, h) in all_pairs:
            if (l, h) in chosen:
                continue
            for q in queries_all:
                k = top_key(l, h, q)
                if k is not None:
                    out.append((OTHER, l, h, b, q, k))
    return out


# --------------------------------------------------------------------------- one checkpoint


def _f(x: float) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.7g}")


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


def _analyze_checkpoint(loaded, settings: EmergenceSettings, heads: HeadSet, prompts: list[_Prompt],
                        examples: list[tuple[str, int, int]], timing: dict) -> dict:
    """Decompose every selected pair at one checkpoint; summaries overall and per role."""
    from ..real.capture import capture, pad_batches
    from ..real.decompose import Pairs, decompose
    from ..real.heads import cached_heads
    from ..real.sad import single_thread

    model = loaded.model
    mh = cached_heads(model)
    L, H = mh.n_layers, mh.layers[0].n_heads
    if settings.dtype is None:
        rope = any(lh.rotary is not None or lh.qk_norm for lh in mh.layers)
        dtype = torch.float32 if rope else torch.float64
    else:
        dtype = getattr(torch, settings.dtype)
    every = [(l, h) for l in range(L) for h in range(H)]
    cols: dict[str, list] = {k: [] for k in ("role", "prompt", "layer", "head", "query", "key", "attention",
                                              "s_svd", "s_rotated", "s_paper_control", "k", "k_rotated")}
    ex_out: dict[str, dict] = {}
    t_fwd = t_dec = 0.0
    max_err = 0.0
    for s, ids, mask in pad_batches([p.ids for p in prompts], settings.batch_size, _pad_id(loaded.tokenizer)):
        t0 = time.perf_counter()
        cap = capture(model, ids, mask, heads=mh)
        t_fwd += time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = []
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            attn = [cap.attn[l][b, :, :n, :n] for l in range(L)]
            vis = [cap.visible[l][b, :n, :n] for l in range(L)]
            rows += _pairs_for_prompt(settings, heads, prompts[s + b], attn, vis, n, b, every)
        if not rows:
            continue
        arr = np.array([r[1:] for r in rows], dtype=np.int64)
        pairs = Pairs.of(arr[:, 2], arr[:, 0], arr[:, 1], arr[:, 3], arr[:, 4])
        with single_thread():
            d = decompose(mh, cap, pairs, basis=settings.basis, controls=True, seed=settings.seed, dtype=dtype)
        max_err = max(max_err, d.max_reconstruction_error)
        cols["role"] += [r[0] for r in rows]
        cols["prompt"].append(arr[:, 2] + s)
        for i, c in enumerate(("layer", "head")):
            cols[c].append(arr[:, i])
        cols["query"].append(arr[:, 3])
        cols["key"].append(arr[:, 4])
        cols["attention"].append(d.attention)
        cols["s_svd"].append(d.rolls_tovee)
        cols["s_rotated"].append(d.rolls_tovee_rotated)
        cols["s_paper_control"].append(d.rolls_tovee_paper_control)
        cols["k"].append(d.k)
        cols["k_rotated"].append(d.k_rotated)
        for p, r in enumerate(rows):  # Fig. 8: the last pair of each example head in prompt 0
            key = f"{r[0]}:{r[1]}.{r[2]}"
            if (r[0], r[1], r[2]) in examples and r[3] + s == 0:
                ex_out[key] = {"role": r[0], "layer": r[1], "head": r[2], "prompt": int(r[3] + s),
                               "query": r[4], "key": r[5], "attention": _f(d.attention[p]),
                               "relative_attention": _f(d.relative_attention[p]),
                               "contributions": [_f(x) for x in d.contributions[p]],
                               "contributions_rotated": [_f(x) for x in d.contributions_rotated[p]],
                               "k": int(d.k[p]), "k_rotated": int(d.k_rotated[p]),
                               "rolls_tovee": _f(d.rolls_tovee[p]),
                               "rolls_tovee_rotated": _f(d.rolls_tovee_rotated[p])}
        t_dec += time.perf_counter() - t0
    if not cols["layer"]:
        raise ValueError("no pairs were selected at this checkpoint (prompts too short for the heads?)")
    t0 = time.perf_counter()
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
    timing.update({"forward_s": t_fwd, "decompose_s": t_dec, "stats_s": time.perf_counter() - t0})
    pairs_json = {
        "role": [str(x) for x in role],
        **{k: [int(x) for x in rec[k]] for k in ("prompt", "layer", "head", "query", "key", "k", "k_rotated")},
        **{k: [_f(x) for x in rec[k]] for k in ("attention", "s_svd", "s_rotated", "s_paper_control")},
    }
    return {"summary": roles, "per_head": per_head, "examples": ex_out, "n_dropped": int((~ok).sum()),
            "max_reconstruction_error": max_err, "dtype": str(dtype).replace("torch.", ""), "pairs": pairs_json}


# --------------------------------------------------------------------------- contrast


class _Sample:
    """Duck-typed stand-in for :class:`svfcheck.real.sad.SADResult` in :func:`contrast`."""

    def __init__(self, pairs: dict, role: str):
        r = np.array(pairs["role"], dtype=object)
        sel = np.ones(len(r), dtype=bool) if role == OVERALL else (r == role)
        vals = {k: np.array([np.nan if v is None else v for v in pairs[k]], dtype=np.float64)[sel]
                for k in ("s_svd", "s_rotated", "s_paper_control")}
        ok = np.isfinite(vals["s_svd"]) & np.isfinite(vals["s_rotated"]) & np.isfinite(vals["s_paper_control"])
        self._v = {k: v[ok] for k, v in vals.items()}

    def __len__(self) -> int:
        return len(self._v["s_svd"])

    def s(self, which: str = "svd", role: str | None = None) -> np.ndarray:
        if role is not None:  # samples are already filtered to one role
            return np.zeros(0)
        return self._v["s_svd" if which == "svd" else f"s_{which}"]

    def roles(self) -> list[str]:
        return []  # per-role contrasts are computed here, one sample per role


def _contrast(first: dict, last: dict, roles, n_boot: int, seed: int) -> dict:
    from ..real.sad import contrast

    out = {}
    for r in roles:
        a, b = _Sample(last["pairs"], r), _Sample(first["pairs"], r)
        if len(a) < 2 or len(b) < 2:
            out[r] = {"skipped": f"too few pairs (final {len(a)}, first {len(b)})"}
            continue
        c = contrast(a, b, n_boot=n_boot, seed=seed).to_json()
        c.pop("per_role", None)
        out[r] = c
    return out


# --------------------------------------------------------------------------- driver


@dataclass
class EmergenceResult:
    """``data`` is the content of ``emergence.json``; ``figures`` the written figure paths;
    ``timing`` the per-step wall-clock record (also in ``timing.json``)."""

    out_dir: Path
    data: dict
    figures: list[Path]
    timing: dict

    def contrast(self, role: str = OVERALL) -> dict:
        return self.data["contrast"][role]

    def summary(self, step: int, role: str = OVERALL) -> dict:
        return self.data["steps"][str(step)][role]


# files of a save_pretrained folder that determine the model (tokenizer files: see _tokenizer_fingerprint)
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _series_fingerprint(series: CheckpointSeries) -> dict:
    """The series' identity for the resume key: its name and, per step, the SHA-256 of each
    local checkpoint's ``config.json`` and weight files (content, not paths or mtimes: a copied
    or moved series still resumes, a retrained or edited one does not; hashing runs at ≈2 GB/s,
    a few ms for our runs' 1–2 MB checkpoints) or a hub checkpoint's model id and revision."""
    cks = []
    for c in series:
        if not c.is_local:
            cks.append({"step": c.step, "model": c.locator, "revision": c.revision})
            continue
        files = sorted(f for f in Path(c.locator).iterdir()
                       if f.is_file() and (f.name == "config.json" or f.suffix in _MODEL_FILE_SUFFIXES))
        cks.append({"step": c.step, "files": {f.name: _sha256_file(f) for f in files}})
    return {"name": series.name, "checkpoints": cks}


def _tokenizer_fingerprint(tokenizer) -> dict | None:
    """The tokenizer's class and a hash of its sorted vocabulary: the same prompt ids under
    another vocabulary are other prompts."""
    if tokenizer is None:
        return None
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"class": type(tokenizer).__name__, "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest()}


def _key(settings: EmergenceSettings, heads: HeadSet, prompts: list[_Prompt], series: CheckpointSeries,
         tokenizer) -> str:
    """The sweep key: a hash of everything a per-step result depends on — settings, heads,
    prompt ids, the checkpoints (:func:`_series_fingerprint`) and the tokenizer."""
    blob = json.dumps({"format": EMERGENCE_FORMAT, "settings": settings.to_dict(), "heads": heads.to_dict(),
                       "prompts": [list(p.ids) for p in prompts], "series": _series_fingerprint(series),
                       "tokenizer": _tokenizer_fingerprint(tokenizer)}, sort_keys=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def _heads_from_arg(heads, settings: EmergenceSettings) -> HeadSet | None:
    if heads is None or isinstance(heads, HeadSet):
        return heads
    if isinstance(heads, dict):
        roles = {}
        for r, hl in heads.items():
            lst = [tuple(int(v) for v in h) for h in hl]
            if not lst or any(len(h) != 2 for h in lst):
                raise ValueError(f"heads for role {r!r} must be a non-empty list of (layer, head), got {hl!r}")
            roles[str(r)] = tuple(lst)
        if settings.task == "ioi" and settings.selection == "task":
            raise ValueError("IOI with selection='task' needs a circuit table (CircuitHead list), not a role dict")
        return HeadSet(roles)
    hl = list(heads)
    if hl and all(hasattr(h, "query") for h in hl):
        roles: dict[str, list] = {}
        for c in hl:
            roles.setdefault(c.role, []).append((c.layer, c.head))
        return HeadSet({r: tuple(dict.fromkeys(v)) for r, v in roles.items()}, circuit=tuple(hl))
    raise ValueError("heads must be a HeadSet, a dict role -> [(layer, head)], or a list of CircuitHead")


def sad_over_training(
    series: CheckpointSeries,
    out_dir,
    settings: EmergenceSettings | None = None,
    *,
    heads=None,
    figures: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> EmergenceResult:
    """Analyse every checkpoint of ``series`` into ``out_dir`` (module docstring).

    ``heads``: None (identify at the final checkpoint by pattern), a :class:`HeadSet`, a dict
    ``role -> [(layer, head), ...]``, or a list of :class:`~svfcheck.tasks.circuits.CircuitHead`.
    ``stop_after=k`` raises a RuntimeError after ``k`` newly analysed steps (a simulated kill,
    for tests; the ``k`` finished steps are kept in ``sad_sweep.json``).
    """
    settings = settings or EmergenceSettings()
    if not isinstance(series, CheckpointSeries):
        raise ValueError(f"series must be a CheckpointSeries, got {type(series).__name__}")
    if stop_after is not None and (not _is_int(stop_after) or stop_after < 1):
        raise ValueError(f"stop_after must be a positive int, got {stop_after!r}")
    if settings.task == "ioi" and settings.ioi_heads == "paper" and heads is None:
        from ..tasks.circuits import PAPER_CIRCUITS

        if (settings.circuit or series.name) not in PAPER_CIRCUITS:
            raise ValueError(
                f"no paper head table for series {series.name!r}; give circuit= one of {sorted(PAPER_CIRCUITS)} "
                "or use ioi_heads='discover'"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..real.sad import single_thread

    # one intra-op thread: these many small ops are far slower with 2+ threads on a busy machine
    with _hf_bars(progress), single_thread():
        return _run(series, out, settings, heads, figures, progress, stop_after)


class _hf_bars:
    """Silence transformers' weight-loading bars unless ``progress``."""

    def __init__(self, progress: bool):
        self.progress = progress

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.was = hf_logging.is_progress_bar_enabled()
        if not self.progress:
            hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self.was:
            hf_logging.enable_progress_bar()
        return False


def _run(series, out, settings, heads, figures, progress, stop_after) -> EmergenceResult:
    from .figures import write_emergence_figures

    final = series.steps[-1]
    t0 = time.perf_counter()
    lm_final = series.load(final, progress=False)
    prompts = build_prompts(settings, lm_final.tokenizer, series, lm_final.model.config.vocab_size)
    hs = _heads_from_arg(heads, settings)
    if hs is None:
        hs = identify_heads(lm_final, settings, series, prompts, step=final)
    from ..tasks.selection import validate_heads_for as _vh

    for hl in hs.roles.values():
        _vh(hl, lm_final.model.config)
    t_heads = time.perf_counter() - t0
    examples = [(r, *hl[0]) for r, hl in hs.roles.items()]
    key = _key(settings, hs, prompts, series, lm_final.tokenizer)
    timing: dict[str, Any] = {"heads_and_prompts_s": t_heads, "steps": {}}
    done = [0]

    def fn(ck):
        t = time.perf_counter()
        lm = lm_final if ck.step == final else series.load(ck.step, progress=False)
        tm = {"load_s": time.perf_counter() - t}
        r = _analyze_checkpoint(lm, settings, hs, prompts, examples, tm)
        tm["total_s"] = time.perf_counter() - t
        timing["steps"][str(ck.step)] = tm
        done[0] += 1
        if stop_after is not None and done[0] > stop_after:
            raise _Interrupted(f"simulated interruption after {stop_after} step(s)")
        return r

    # the final checkpoint first is not needed: sweep() walks the series in order
    res = sweep(series, fn, out / "sad_sweep.json", key=key, progress=progress)
    role_names = [OVERALL] + list(hs.roles) + ([OTHER] if settings.all_heads else [])
    first, last = series.steps[0], final
    data: dict[str, Any] = {
        "format": EMERGENCE_FORMAT,
        "series": series.to_dict(),
        "settings": settings.to_dict(),
        "key": key,
        "heads": hs.to_dict(),
        "n_prompts": len(prompts),
        "roles": role_names,
        "steps": {str(s): res[s]["summary"] for s in series.steps},
        "per_head": {str(s): res[s]["per_head"] for s in series.steps},
        "examples": {"first_step": first, "last_step": last,
                     "first": res[first]["examples"], "last": res[last]["examples"]},
        "max_reconstruction_error": max(res[s]["max_reconstruction_error"] for s in series.steps),
        "contrast": {"first_step": first, "last_step": last,
                     **_contrast(res[first], res[last], role_names, settings.n_boot_contrast, settings.seed)},
        "task_metric": _task_metric(series),
    }
    figs = write_emergence_figures(out, data) if figures else []
    (out / "emergence.json").write_text(json.dumps(data, indent=1) + "\n")
    timing["total_s"] = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    return EmergenceResult(out, data, figs, timing)


class _Interrupted(RuntimeError):
    """A simulated kill of the sweep (``stop_after``)."""


def _task_metric(series: CheckpointSeries) -> dict | None:
    """The run's training curve (loss / induction accuracy) on the step axis, if known."""
    curve = (series.metadata or {}).get("curve")
    if not curve:
        return None
    out = {"step": [e["step"] for e in curve], "eval_loss": [e["eval_loss"] for e in curve]}
    if all("induction_accuracy" in e for e in curve):
        out["induction_accuracy"] = [e["induction_accuracy"] for e in curve]
    return out


def default_settings(task: str, **overrides) -> EmergenceSettings:
    """Sensible defaults per task: induction — structural pairs of the top-2 induction and
    previous-token heads on 32 sequences; text — previous-token pairs of the top-2 previous-token
    heads plus every other head's top-attended key on 16 windows of 64 bytes; ioi — the circuit
    table's labelled pairs on 32 prompts."""
    base = {"induction": EmergenceSettings(task="induction"),
            "text": EmergenceSettings(task="text", n_prompts=16, all_heads=True),
            "ioi": EmergenceSettings(task="ioi")}
    if task not in base:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return replace(base[task], **overrides)
