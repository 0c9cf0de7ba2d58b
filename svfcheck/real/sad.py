"""The real-model SAD pipeline: prompts → capture → pair selection → decomposition → summaries.

:func:`analyze` runs one model on a prompt set and returns a :class:`SADResult` (per-pair
records, per-head and overall summaries, the reconstruction gate); :func:`contrast` compares a
trained model with its seeded random initialisation (docs/math.md §3.8: a rotation control
alone is not evidence); :meth:`SADResult.to_json` gives the ``sad.json`` that ``svfcheck sad``
writes.

Head sets: ``"all"`` (every head), ``"paper"`` (the paper's table, :func:`paper_circuit`),
``"discover"`` (:func:`discover_heads` on the same IOI prompts) or an explicit list of
``(layer, head)`` / :class:`CircuitHead`. Selection: ``"top"`` (every query's top-attended
non-first key — independent of training), ``"threshold"`` (attention ≥ 1/m) or ``"circuit"``
(the heads' labelled IOI positions; the default for paper/discovered heads).
Effects are ``mean(S_control − S_svd)`` with percentile-bootstrap 99% intervals.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..stats import json_float
from ..tasks.circuits import CircuitHead, paper_circuit
from ..tasks.prompts import Prompt, as_prompts
from ..tasks.selection import (
    Positions,
    circuit_pairs,
    discovered_circuit,
    threshold_pairs,
    top_key_pairs,
    validate_heads,
)
from .capture import pad_batches, pad_id
from .decompose import Pairs
from .heads import cached_heads
from .models import LoadedModel
from .sad_step import BatchSAD, StepOptions, decompose_batches, default_dtype, discover_on_batches
from .settings import SADSettings
from .threads import single_thread

__all__ = ["single_thread", "pair_rows", "SADResult", "Contrast", "analyze", "contrast"]

LEVEL = 0.99
CONTROLS = ("rotated", "paper_control")  # basis control (a), paper control (b)

def _progress(it, total, desc, on):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def _circuit(model_name: str, config) -> tuple[CircuitHead, ...]:
    try:
        return paper_circuit(model_name, config)
    except KeyError as e:
        raise ValueError(e.args[0] + " (for a local copy of one of them pass circuit= / --circuit gpt2 or EleutherAI/pythia-160m)") from None


def _head_spec(heads) -> tuple[str, list | None]:
    """(mode, head list) of validated ``SADSettings.heads``: a mode name, or ``"list"``."""
    return (heads, None) if isinstance(heads, str) else ("list", list(heads))


@dataclass
class SADResult:
    """Per-pair records (parallel arrays, see :data:`PAIR_FIELDS`) and summaries of one model."""

    model: str
    architecture: str
    random_init: bool
    seed: int | None
    prompts: list[Prompt]
    heads_mode: str
    selection: str
    circuit: tuple[CircuitHead, ...] | None
    records: dict[str, np.ndarray]
    keys: list[np.ndarray | None]  # per pair when not every key up to / around the query
    singular_values_dim: int
    max_reconstruction_error: float
    n_dropped: int  # pairs with an undefined Rolls–Tovee (all-zero terms), excluded from stats
    summary: dict[str, Any]
    per_head: list[dict[str, Any]]
    settings: dict[str, Any]

    def __len__(self) -> int:
        return len(self.records["layer"])

    def valid(self) -> np.ndarray:
        r = self.records
        return np.isfinite(r["rolls_tovee"]) & np.isfinite(r["rolls_tovee_rotated"]) & np.isfinite(r["rolls_tovee_paper_control"])

    def s(self, which: str = "svd", role: str | None = None) -> np.ndarray:
        """S over valid pairs: ``svd``, ``rotated`` or ``paper_control``; only the pairs of
        head role ``role`` (circuit selection) when given."""
        key = "rolls_tovee" if which == "svd" else f"rolls_tovee_{which}"
        m = self.valid()
        if role is not None:
            m = m & (self.records["role"] == role)
        return self.records[key][m]

    def write_pairs(self, path: str | os.PathLike) -> Path:
        """The per-pair results as a Parquet file (:mod:`svfcheck.real.pair_table`)."""
        from .pair_table import write_pairs

        return write_pairs(self.records, self.keys, path)

    def roles(self) -> list[str]:
        """Head roles present among the pairs (circuit selection), sorted."""
        return sorted({str(r) for r in self.records["role"] if r})

    def to_json(self, pairs_file: str | None = None) -> dict[str, Any]:
        """The ``sad.json`` content (plain JSON types).

        Without ``pairs_file``, ``pairs`` is a list of one dict per pair (``pairs_format:
        "rows"``, floats to 7 digits); with it, the document names the Parquet pair file
        instead (``pairs_format: "parquet"``, ``pairs_file``; written by :meth:`write_pairs`,
        schema in :mod:`svfcheck.real.pair_table`), so that it stays small at any number of
        pairs. :func:`pair_rows` reads the pairs of either form.
        """
        r = self.records
        ints = ("prompt_index", "layer", "head", "query_pos", "key_pos")
        pairs: Any = None
        if pairs_file is None:
            pairs = []
            for p in range(len(self)):
                row = {f: int(r[f][p]) for f in ints}
                row.update({
                    "attention": json_float(r["attention"][p]),
                    "relative_attention": json_float(r["relative_attention"][p]),
                    "terms": [json_float(x) for x in r["terms"][p]],
                    "k": int(r["k"][p]),
                    "rolls_tovee": json_float(r["rolls_tovee"][p]),
                    "k_rotated": int(r["k_rotated"][p]),
                    "rolls_tovee_rotated": json_float(r["rolls_tovee_rotated"][p]),
                    "rolls_tovee_paper_control": json_float(r["rolls_tovee_paper_control"][p]),
                })
                if r["role"][p]:
                    row["role"] = str(r["role"][p])
                if self.keys[p] is not None:
                    row["keys"] = [int(x) for x in self.keys[p]]
                pairs.append(row)
        where = {"pairs_format": "rows", "pairs": pairs} if pairs_file is None else {
            "pairs_format": "parquet", "pairs_file": str(pairs_file)}
        return {
            "model": self.model,
            "architecture": self.architecture,
            "random_init": self.random_init,
            "seed": self.seed,
            "settings": self.settings,
            "heads": self.heads_mode,
            "selection": self.selection,
            "circuit": None if self.circuit is None else [
                {"layer": c.layer, "head": c.head, "role": c.role, "query": c.query, "key": c.key, "name": c.name}
                for c in self.circuit
            ],
            "prompts": [
                {"text": p.text, "token_ids": list(p.token_ids), **({"positions": p.positions} if p.positions else {})}
                for p in self.prompts
            ],
            "n_pairs": len(self),
            "n_dropped": self.n_dropped,
            **where,
            "summary": self.summary,
            "per_head": self.per_head,
            "p_values": {c: self.summary[f"wilcoxon_{c}"]["p_value"] for c in CONTROLS},
            "max_reconstruction_error": self.max_reconstruction_error,
        }


def pair_rows(doc: dict[str, Any], folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The per-pair rows of a ``sad.json`` document (see :meth:`SADResult.to_json`): in-line
    rows; a Parquet pair file (``pairs_file``, relative to ``folder``, the folder of the
    ``sad.json``; non-finite floats are NaN there, ``null`` in-line); or the column form
    earlier versions wrote with ``--compact``."""
    fmt = doc.get("pairs_format", "rows")
    if fmt == "parquet":
        from .pair_table import read_pairs

        f = Path(doc["pairs_file"])
        if not f.is_absolute():
            if folder is None:
                raise ValueError(f"the pairs are in {f}, relative to the sad.json's folder: pass folder=")
            f = Path(folder) / f
        return read_pairs(f)
    pairs = doc["pairs"]
    if fmt == "rows":
        return list(pairs)
    if fmt != "columns":
        raise ValueError(f"unknown pairs_format {fmt!r}; expected 'rows', 'parquet' or 'columns'")
    n = len(pairs["layer"])
    rows = []
    for p in range(n):
        row = {f: v[p] for f, v in pairs.items() if f not in ("role", "keys")}
        for f in ("role", "keys"):
            if pairs[f][p] is not None:
                row[f] = pairs[f][p]
        rows.append(row)
    return rows


#: The decomposition fields :func:`analyze` reads (``StepOptions.keep``).
_KEEP = ("attention", "relative_attention", "contributions", "k", "rolls_tovee", "k_rotated", "rolls_tovee_rotated",
         "rolls_tovee_paper_control", "keys")


def _by_layer(cap, b: int, fn, head_pairs, **kw) -> list:
    """``fn``'s pairs (:func:`~svfcheck.tasks.selection.top_key_pairs` or
    :func:`~svfcheck.tasks.selection.threshold_pairs`) of the batch's row ``b``, in the order
    one call over every layer gives — by (layer, head) in ``head_pairs`` order (all heads:
    ascending), then ``fn``'s order within a head — but one layer at a time, on views of the
    capture: no stacked copy of every layer's attention, and ``fn``'s temporaries are one
    layer's (docs/math.md §4.5)."""
    n = int(cap.token_mask[b].sum())
    L, H = cap.n_layers, cap.attn[0].shape[1]
    order = [(l, h) for l in range(L) for h in range(H)] if head_pairs is None else [tuple(x) for x in head_pairs]
    per: dict = {}
    for l in sorted({l for l, _ in order}):
        hs = None if head_pairs is None else [(0, h) for ll, h in order if ll == l]
        got = fn(cap.attn[l][b, :, :n, :n][None], cap.visible[l][b, :n, :n][None, None], heads=hs, prompt_index=b, **kw)
        for p in got.pairs:
            per.setdefault((l, p.head), []).append(dataclasses.replace(p, layer=l))
    return [p for lh in order for p in per.get(lh, [])]


def _effect(e: stats.Effect) -> dict[str, Any]:
    return {"estimate": e.estimate, "low": e.low, "high": e.high, "level": e.level, "n": e.n,
            "n_other": e.n_other, "n_boot": e.n_boot, "seed": e.seed}


def _summ(rec: dict[str, np.ndarray], sel: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    s, sr, sp = rec["rolls_tovee"][sel], rec["rolls_tovee_rotated"][sel], rec["rolls_tovee_paper_control"][sel]
    k, kr = rec["k"][sel], rec["k_rotated"][sel]
    out: dict[str, Any] = {"n_pairs": int(sel.sum())}
    if out["n_pairs"] == 0:
        return out
    out.update({
        "mean_s_svd": float(s.mean()),
        "mean_s_rotated": float(sr.mean()),
        "mean_s_paper_control": float(sp.mean()),
        "median_k": float(np.median(k[k >= 0])) if (k >= 0).any() else None,
        "median_k_rotated": float(np.median(kr[kr >= 0])) if (kr >= 0).any() else None,
        "mean_attention": float(rec["attention"][sel].mean()),
    })
    for c, sc in (("rotated", sr), ("paper_control", sp)):
        out[f"effect_{c}"] = _effect(stats.paired_effect(sc, s, n_boot=n_boot, level=LEVEL, seed=seed))
        w = stats.wilcoxon_svd_lower(s, sc)
        out[f"wilcoxon_{c}"] = {"p_value": w.p_value, "statistic": w.statistic, "n": w.n, "n_nonzero": w.n_nonzero}
    return out


def analyze(
    loaded: LoadedModel,
    prompts,
    settings: SADSettings | None = None,
    *,
    progress: bool = True,
    threads: int | None = None,
    **overrides: Any,
) -> SADResult:
    """SAD of ``loaded`` on ``prompts``: select pairs, decompose them exactly, summarise.

    Args:
        loaded: a model from :func:`~svfcheck.real.models.load_model` (trained or random init).
        prompts: IOI prompts, strings, token-id lists or :class:`~svfcheck.tasks.prompts.Prompt`.
        settings: what to analyse (:class:`~svfcheck.real.settings.SADSettings`; default
            settings when ``None``); ``overrides`` replace single fields, e.g.
            ``analyze(lm, prompts, heads="discover", seed=1)``.
        progress: progress bars.
        threads: layers decomposed side by side, one thread each (``None``: every core; ``1``:
            one after another; the numbers do not depend on it); forward passes use torch's
            setting.
    Returns:
        :class:`SADResult`: per-pair records (P pairs: positions, terms (P, d_h), k, S with both
        controls), the model summary with 99% bootstrap intervals, per-head summaries.
    """
    st = (settings or SADSettings()).replace(**overrides) if overrides else (settings or SADSettings())
    heads, selection, circuit, discover_top, seed = st.heads, st.selection, st.circuit, st.discover_top, st.seed
    dtype, basis, batch_size, n_boot, n_boot_head = st.torch_dtype, st.basis, st.batch_size, st.n_boot, st.n_boot_head
    model, tok = loaded.model, loaded.tokenizer
    mh = cached_heads(model)
    L, H = mh.n_layers, mh.layers[0].n_heads
    ps = as_prompts(tok, prompts)
    mode, hl = _head_spec(heads)
    if selection is None:
        selection = "circuit" if mode in ("paper", "discover") or (hl and isinstance(hl[0], CircuitHead)) else "top"
    table: tuple[CircuitHead, ...] | None = None
    if mode == "paper":
        table = _circuit(circuit or loaded.name, model.config)
    elif mode == "list":
        if isinstance(hl[0], CircuitHead):
            table = tuple(hl)
        else:
            hl = [tuple(int(v) for v in h) for h in hl]
            validate_heads(hl, L, H)
    if table is not None:
        validate_heads(table, L, H)
    if selection == "circuit" or mode in ("paper", "discover"):
        bad = [n for n, p in enumerate(ps) if not p.ioi]
        if bad and (selection == "circuit" or mode == "discover"):
            raise ValueError(f"heads={heads!r} with selection={selection!r} needs IOI prompts (labelled positions); prompts {bad[:5]} have none")
    if selection == "circuit" and mode == "all":
        raise ValueError("selection='circuit' needs a head table: heads='paper', 'discover' or a list of CircuitHead")
    if dtype is None:
        dtype = default_dtype(mh)
    batches = list(pad_batches([p.token_ids for p in ps], batch_size, pad_id(tok)))

    caps: dict[int, Any] = {}  # discovery's captures, reused by the SAD pass (one forward per batch)
    if mode == "discover":
        found = discover_on_batches(model, mh, _progress(batches, len(batches), f"{loaded.name}: discover heads", progress),
                                    [p.positions for p in ps], discover_top, captures=caps)
        table = discovered_circuit(found)
    head_pairs = None if mode == "all" else ([(c.layer, c.head) for c in table] if table is not None else hl)
    if head_pairs is not None:
        head_pairs = list(dict.fromkeys(head_pairs))

    cols = {k: [] for k in ("prompt_index", "layer", "head", "query_pos", "key_pos", "attention", "relative_attention",
                             "terms", "k", "rolls_tovee", "k_rotated", "rolls_tovee_rotated", "rolls_tovee_paper_control", "role")}
    keys: list[np.ndarray | None] = []
    causal = [mh.layers[l].causal for l in range(L)]

    def select(s, ids, mask, cap):
        sel = []
        for b in range(ids.shape[0]):
            if selection == "circuit":
                attn, vis = cap.prompt_views(b)
                sel.extend(circuit_pairs(attn, Positions(ps[s + b].positions), table, vis, prompt_index=b).pairs)
            elif selection == "top":
                sel.extend(_by_layer(cap, b, top_key_pairs, head_pairs, skip_first=True))
            else:
                sel.extend(_by_layer(cap, b, threshold_pairs, head_pairs))
        if not sel:
            return None
        return Pairs.of(*np.array([[q.prompt_index, q.layer, q.head, q.query, q.key] for q in sel]).T), sel

    def collect(r: BatchSAD):
        d, pairs, sel = r.decomposition, r.pairs, r.payload
        for p, q in enumerate(sel):
            n = int(r.mask[q.prompt_index].sum())
            default = np.arange(q.query + 1) if causal[q.layer] else np.arange(n)
            kp = d.keys[p]
            keys.append(None if np.array_equal(kp, default) else kp)
        cols["prompt_index"].append(pairs.prompt + r.start)
        for a, b in (("layer", "layer"), ("head", "head"), ("query_pos", "query_pos"), ("key_pos", "key_pos")):
            cols[a].append(getattr(pairs, b))
        cols["attention"].append(d.attention)
        cols["relative_attention"].append(d.relative_attention)
        cols["terms"].append(d.contributions)
        cols["k"].append(d.k)
        cols["rolls_tovee"].append(d.rolls_tovee)
        cols["k_rotated"].append(d.k_rotated)
        cols["rolls_tovee_rotated"].append(d.rolls_tovee_rotated)
        cols["rolls_tovee_paper_control"].append(d.rolls_tovee_paper_control)
        cols["role"].append(np.array([q.role for q in sel], dtype=object))

    options = StepOptions(basis=basis, seed=seed, dtype=dtype, threads=threads, memory_budget_gb=st.memory_budget_gb,
                          keep=_KEEP, progress=progress)
    totals = decompose_batches(model, mh, _progress(batches, len(batches), f"{loaded.name}: SAD", progress), select,
                               collect, options, captures=caps)
    max_err = totals.max_reconstruction_error
    if not cols["layer"]:
        raise ValueError("no pairs were selected (prompts too short for the chosen heads/selection?)")
    rec = {k: np.concatenate(v) for k, v in cols.items()}
    ok = np.isfinite(rec["rolls_tovee"]) & np.isfinite(rec["rolls_tovee_rotated"]) & np.isfinite(rec["rolls_tovee_paper_control"])
    summary = _summ(rec, ok, n_boot, seed)
    if summary["n_pairs"] == 0:
        raise ValueError("every selected pair has all-zero terms; nothing to analyse")
    per_head = []
    lh_arr = rec["layer"] * H + rec["head"]
    for code in _progress(np.unique(lh_arr), None, f"{loaded.name}: per-head stats", progress):
        m = ok & (lh_arr == code)
        if m.sum() < 2:
            continue
        roles = sorted({r for r in rec["role"][m] if r})
        per_head.append({"layer": int(code // H), "head": int(code % H), "roles": roles, **_summ(rec, m, n_boot_head, seed)})
    settings = {"dtype": str(dtype).replace("torch.", ""), "basis": basis, "seed": seed, "level": LEVEL,
                "n_boot": n_boot, "n_boot_per_head": n_boot_head, "batch_size": batch_size,
                "circuit_name": (circuit or loaded.name) if mode == "paper" else None}
    return SADResult(
        model=loaded.name, architecture=loaded.architecture, random_init=loaded.random_init, seed=loaded.seed,
        prompts=ps, heads_mode=mode, selection=selection, circuit=table, records=rec, keys=keys,
        singular_values_dim=mh.layers[0].head_dim, max_reconstruction_error=max_err, n_dropped=int((~ok).sum()),
        summary=summary, per_head=per_head, settings=settings,
    )


@dataclass(frozen=True)
class Contrast:
    """Trained vs random-init: per control the difference of SAD effects (trained − random),
    the effects themselves, and ``S_svd`` trained − random (all with percentile-bootstrap intervals
    at the ``level`` given to :func:`contrast`, 99% by default)."""

    effect_difference: dict[str, stats.Effect]
    effect_trained: dict[str, stats.Effect]
    effect_random: dict[str, stats.Effect]
    s_svd_difference: stats.Effect
    p_trained: dict[str, float]
    p_random: dict[str, float]
    n_trained: int = 0
    n_random: int = 0
    # per head role (circuit selection): the same contrast on that role's pairs; a role with
    # fewer than ``min_role_pairs`` valid pairs in either model maps to a reason string
    per_role: dict[str, "Contrast | str"] = field(default_factory=dict)

    def passes(self) -> bool:
        """SAD effect larger in the trained model for both controls (interval above 0) and
        S_svd lower (interval below 0)."""
        return all(e.low > 0 for e in self.effect_difference.values()) and self.s_svd_difference.high < 0

    def to_json(self) -> dict[str, Any]:
        return {
            "n_trained": self.n_trained,
            "n_random": self.n_random,
            "effect_difference": {c: _effect(e) for c, e in self.effect_difference.items()},
            "effect_trained": {c: _effect(e) for c, e in self.effect_trained.items()},
            "effect_random": {c: _effect(e) for c, e in self.effect_random.items()},
            "s_svd_difference": _effect(self.s_svd_difference),
            "p_trained": self.p_trained,
            "p_random": self.p_random,
            "passes": self.passes(),
            "per_role": {r: (c if isinstance(c, str) else c.to_json()) for r, c in self.per_role.items()},
        }

    def lines(self) -> list[str]:
        out = []
        for c in CONTROLS:
            out.append(
                f"{c:>13}: effect trained {self.effect_trained[c]}  random {self.effect_random[c]}  "
                f"difference {self.effect_difference[c]}  p trained {self.p_trained[c]:.2e} random {self.p_random[c]:.2e}"
            )
        out.append(f"S_svd trained - random: {self.s_svd_difference}")
        for r, c in self.per_role.items():
            if isinstance(c, str):
                out.append(f"role {r}: {c}")
                continue
            d = "  ".join(f"{k} {c.effect_difference[k]}" for k in CONTROLS)
            out.append(f"role {r} ({c.n_trained} / {c.n_random} pairs): {'PASS' if c.passes() else 'FAIL'}  "
                       f"effect difference {d}  S_svd trained - random {c.s_svd_difference}")
        return out


def contrast(
    trained: SADResult, random: SADResult, *, n_boot: int = 10_000, seed: int = 0, level: float = LEVEL,
    per_role: bool = True, min_role_pairs: int = 10,
) -> Contrast:
    """Compare a trained model with its random initialisation on their valid pairs, with
    percentile-bootstrap intervals at ``level`` (default 99%).

    ``per_role``: also contrast each head role (name mover, S-inhibition, induction, ...)
    present in both results (circuit selection labels pairs with their head's role); roles
    with fewer than ``min_role_pairs`` valid pairs in either model are listed with the reason.
    """
    out = _contrast(trained, random, None, n_boot, seed, level)
    if per_role and hasattr(trained, "roles") and hasattr(random, "roles"):  # duck-typed samples have none
        roles = sorted(set(trained.roles()) | set(random.roles()))
        per: dict[str, Contrast | str] = {}
        for r in roles:
            nt, nr = len(trained.s("svd", r)), len(random.s("svd", r))
            if min(nt, nr) < min_role_pairs:
                per[r] = f"not contrasted: {nt} trained / {nr} random valid pairs (< {min_role_pairs})"
            else:
                per[r] = _contrast(trained, random, r, n_boot, seed, level)
        out = dataclasses.replace(out, per_role=per)
    return out


def _contrast(trained: SADResult, random: SADResult, role: str | None, n_boot: int, seed: int, level: float) -> Contrast:
    ed, et, er, pt, pr = {}, {}, {}, {}, {}
    kw = {} if role is None else {"role": role}
    st, sr = trained.s("svd", **kw), random.s("svd", **kw)
    for c in CONTROLS:
        ct, cr = trained.s(c, **kw), random.s(c, **kw)
        ed[c] = stats.effect_difference(ct, st, cr, sr, n_boot=n_boot, level=level, seed=seed)
        et[c] = stats.paired_effect(ct, st, n_boot=n_boot, level=level, seed=seed)
        er[c] = stats.paired_effect(cr, sr, n_boot=n_boot, level=level, seed=seed)
        pt[c] = stats.wilcoxon_svd_lower(st, ct).p_value
        pr[c] = stats.wilcoxon_svd_lower(sr, cr).p_value
    sd = stats.mean_difference(st, sr, n_boot=n_boot, level=level, seed=seed)
    return Contrast(ed, et, er, sd, pt, pr, n_trained=len(st), n_random=len(sr))
