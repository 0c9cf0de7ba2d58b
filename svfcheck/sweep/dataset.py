"""The merged dataset of a sweep: one row per (series, step, analysis, seed, role or head,
metric), from the stored task results, as a Parquet file (``sweep.parquet``).

Columns (schema :data:`SCHEMA`): ``kind`` (``checkpoint``, ``random-init``, ``contrast``,
``train``, ``spec``), ``series``, ``analysis``, ``seed``, ``step`` (null for a random init),
``role`` (``overall``, a head role, ``L{layer}H{head}`` for one head, ``task`` for the
training curve, a condition name for a spec), ``metric``, ``value``, ``low``/``high`` (the 99%
percentile-bootstrap interval where there is one), ``n`` (pairs), ``weights_sha256`` and
``excluded`` (the checkpoint serves the same weights as an earlier step of its series:
reported, kept in the table, left out of curves and contrasts).

Rows are sorted, and nothing in them depends on the engine, the number of workers or the
wall clock (timings live in ``sweep.json``), so two runs of a plan give equal tables.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["rows_from_results", "duplicate_checkpoints", "write_parquet", "read_parquet", "SCHEMA_FIELDS"]

SCHEMA_FIELDS = (("kind", "string"), ("series", "string"), ("analysis", "string"), ("seed", "int64"),
                 ("step", "int64"), ("role", "string"), ("metric", "string"), ("value", "float64"),
                 ("low", "float64"), ("high", "float64"), ("n", "int64"), ("weights_sha256", "string"),
                 ("excluded", "bool_"))
_INTERVALS = ("s_svd", "s_rotated", "s_paper_control", "effect_rotated", "effect_paper_control")
_SCALARS = ("median_k", "median_k_rotated", "mean_k", "mean_k_rotated")
_HEAD = ("mean_s_svd", "mean_s_rotated", "mean_s_paper_control", "mean_attention")


def duplicate_checkpoints(results: list[tuple[Any, dict]]) -> list[dict]:
    """Steps of a series whose weights equal an earlier step's (``same_as``), from the
    ``checkpoint`` results' ``weights_sha256``."""
    seen: dict[str, dict[int, str]] = defaultdict(dict)
    for t, r in results:
        if t.kind == "checkpoint":
            seen[t.payload["series"]][t.payload["step"]] = r["weights_sha256"]
    out = []
    for series, by_step in sorted(seen.items()):
        first: dict[str, int] = {}
        for step in sorted(by_step):
            h = by_step[step]
            if h in first:
                out.append({"series": series, "step": step, "same_as": first[h], "weights_sha256": h})
            else:
                first[h] = step
    return out


def _row(where: tuple, role, metric, value, low=None, high=None, n=None, sha=None, excluded=False) -> dict:
    """One row; ``where`` = (kind, series, analysis, seed, step)."""
    f = (lambda x: None if x is None else float(x))
    kind, series, analysis, seed, step = where
    return {"kind": kind, "series": series, "analysis": analysis, "seed": seed, "step": step, "role": role,
            "metric": metric, "value": f(value), "low": f(low), "high": f(high), "n": n, "weights_sha256": sha,
            "excluded": bool(excluded)}


def _summary_rows(kind, p: dict, r: dict, excluded: bool) -> list[dict]:
    rows = []
    key = (kind, p["series"], p["analysis"], p["seed"], p["step"])
    sha = r.get("weights_sha256")
    for role, s in sorted(r["summary"].items()):
        for m in _INTERVALS:
            if m in s:
                e = s[m]
                rows.append(_row(key, role, m, e["estimate"], e["low"], e["high"], e["n"], sha, excluded))
        for m in _SCALARS:
            if s.get(m) is not None:
                rows.append(_row(key, role, m, s[m], n=s["n_pairs"], sha=sha, excluded=excluded))
    for h in r["per_head"]:
        for m in _HEAD:
            rows.append(_row(key, f"L{h['layer']}H{h['head']}", m, h[m], n=h["n_pairs"], sha=sha, excluded=excluded))
    rows.append(_row(key, "overall", "max_reconstruction_error", r["max_reconstruction_error"], sha=sha,
                     excluded=excluded))
    return rows


def _contrast_rows(groups: dict, excluded: set) -> list[dict]:
    """Final vs first (non-duplicate) checkpoint of each (analysis, series, seed)."""
    from ..emergence.contrast import _contrast
    from ..emergence.settings import OVERALL

    rows = []
    for (analysis, series, seed), by_step in sorted(groups.items()):
        steps = [s for s in sorted(by_step) if (series, s) not in excluded]
        if len(steps) < 2:
            continue
        (_, first), (tl, last) = by_step[steps[0]], by_step[steps[-1]]
        settings = tl.payload["settings"]
        roles = [OVERALL] + sorted(k for k in last["summary"] if k != OVERALL)
        c = _contrast(first, last, roles, settings["n_boot_contrast"], settings["seed"])
        for role in roles:
            if "skipped" in c[role]:
                continue
            for name, e in [("s_svd_difference", c[role]["s_svd_difference"])] + [
                    (f"effect_difference_{k}", v) for k, v in sorted(c[role]["effect_difference"].items())]:
                rows.append(_row(("contrast", series, analysis, seed, steps[-1]), role, name, e["estimate"], e["low"],
                                 e["high"], e["n"]))
            rows.append(_row(("contrast", series, analysis, seed, steps[-1]), role, "first_step", steps[0]))
    return rows


def rows_from_results(results: list[tuple[Any, dict]], duplicates: list[dict]) -> list[dict]:
    """All rows of the merged dataset, sorted."""
    excluded = {(d["series"], d["step"]) for d in duplicates}
    rows: list[dict] = []
    groups: dict[tuple, dict] = defaultdict(dict)
    for t, r in results:
        p = t.payload
        if t.kind in ("checkpoint", "random-init"):
            ex = t.kind == "checkpoint" and (p["series"], p["step"]) in excluded
            rows += _summary_rows(t.kind, p, r, ex)
            if t.kind == "checkpoint":
                groups[(p["analysis"], p["series"], p["seed"])][p["step"]] = (t, r)
        elif t.kind == "train":
            for e in r["curve"]:
                for m in ("eval_loss", "induction_accuracy"):
                    if e.get(m) is not None:
                        rows.append(_row(("train", p["series"], None, None, e["step"]), "task", m, e[m],
                                         excluded=(p["series"], e["step"]) in excluded))
        elif t.kind == "spec":
            model = r["model"]["model"]
            for c in r["conditions"]:
                for m in ("measured", "threshold", "baseline_measured"):
                    if c.get(m) is not None:
                        rows.append(_row(("spec", model, p["analysis"], p["seed"], None), c["condition"], m, c[m]))
                rows.append(_row(("spec", model, p["analysis"], p["seed"], None), c["condition"], "passed",
                                 1.0 if c["passed"] else 0.0))
    rows += _contrast_rows(groups, excluded)
    order = [k for k, _ in SCHEMA_FIELDS]
    return sorted(rows, key=lambda r: tuple((v is None, v if v is not None else 0) if not isinstance(v, str)
                                            else (False, v) for v in (r[k] for k in order)))


def write_parquet(rows: list[dict], path: Path) -> Path:
    """``rows`` as Parquet with :data:`SCHEMA_FIELDS`, written atomically."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(k, getattr(pa, t)()) for k, t in SCHEMA_FIELDS])
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
