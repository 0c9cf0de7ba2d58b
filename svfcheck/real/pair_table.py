"""Per-pair results as a columnar file: one Parquet row per analysed (prompt, layer, head,
query, key) pair, next to ``sad.json`` (which stays a summary a person can open).

Schema (:data:`PAIR_SCHEMA`; a program or DuckDB reads the file directly):

=============================  ==========================  ==============================================
column                         type                        meaning
=============================  ==========================  ==============================================
``prompt_index``               int32                       prompt (index into ``sad.json``'s ``prompts``)
``layer``, ``head``            int32                       the head
``query_pos``, ``key_pos``     int32                       token positions of the pair
``attention``                  float64                     the model's attention of the pair
``relative_attention``         float64                     ``attention · m`` (m: keys the query sees)
``terms``                      fixed_size_list<float64>    the logit's terms over the head's singular
                                                           pairs (length ``n_terms``: d_h, +1 with biases)
``k``                          int32                       reconstruction count in the SVD basis
``rolls_tovee``                float64                     Rolls–Tovee S of the terms
``k_rotated``                  int32                       k under the basis rotation control
``rolls_tovee_rotated``        float64                     S under the basis rotation control
``rolls_tovee_paper_control``  float64                     S under the paper's control
``role``                       string (null)               the head's IOI role (circuit selection)
``keys``                       list<int32> (null)          the keys the query sees, where not all of 0..q
=============================  ==========================  ==============================================

The file's metadata carries ``svfcheck.format`` = :data:`PAIRS_FORMAT` and ``n_terms``.
Floats are stored exactly (``sad.json``'s old in-line rows rounded them to 7 digits).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PAIRS_FORMAT", "pair_schema", "write_pairs", "read_pairs"]

PAIRS_FORMAT = "svfcheck-pairs/1"
INTS = ("prompt_index", "layer", "head", "query_pos", "key_pos")
FLOATS = ("attention", "relative_attention")
AFTER_TERMS = (("k", "int32"), ("rolls_tovee", "float64"), ("k_rotated", "int32"), ("rolls_tovee_rotated", "float64"),
               ("rolls_tovee_paper_control", "float64"))


def pair_schema(n_terms: int):
    import pyarrow as pa

    fields = [(f, pa.int32()) for f in INTS] + [(f, pa.float64()) for f in FLOATS]
    fields.append(("terms", pa.list_(pa.float64(), n_terms)))
    fields += [(f, getattr(pa, t)()) for f, t in AFTER_TERMS]
    fields += [("role", pa.string()), ("keys", pa.list_(pa.int32()))]
    return pa.schema(fields, metadata={"svfcheck.format": PAIRS_FORMAT, "n_terms": str(n_terms)})


def write_pairs(records: dict[str, Any], keys: list, path: str | os.PathLike) -> Path:
    """Write a result's per-pair ``records`` (:attr:`SADResult.records`) and ``keys`` to
    ``path`` atomically (a temporary file in the same folder, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    terms = np.asarray(records["terms"], dtype=np.float64)
    n, n_terms = terms.shape if terms.ndim == 2 else (len(records["layer"]), 0)
    schema = pair_schema(n_terms)
    cols: dict[str, Any] = {f: np.asarray(records[f], dtype=np.int32) for f in INTS}
    cols.update({f: np.asarray(records[f], dtype=np.float64) for f in FLOATS})
    cols["terms"] = pa.FixedSizeListArray.from_arrays(pa.array(terms.reshape(-1)), n_terms)
    for f, t in AFTER_TERMS:
        cols[f] = np.asarray(records[f], dtype=np.int32 if t == "int32" else np.float64)
    cols["role"] = pa.array([str(r) if r else None for r in records["role"]], pa.string())
    cols["keys"] = pa.array([None if k is None else [int(x) for x in k] for k in keys], pa.list_(pa.int32()))
    table = pa.Table.from_pydict(cols, schema=schema)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a pair file, as dicts in the form of ``sad.json``'s in-line rows (``role``
    and ``keys`` only where set). ``ValueError`` for a file that is not a pair file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet pair file ({e})") from None
    meta = table.schema.metadata or {}
    if meta.get(b"svfcheck.format") != PAIRS_FORMAT.encode():
        raise ValueError(f"{path}: not an svfcheck pair file (format {meta.get(b'svfcheck.format')!r}, "
                         f"expected {PAIRS_FORMAT!r})")
    rows = table.to_pylist()
    for r in rows:
        for f in ("role", "keys"):
            if r[f] is None:
                del r[f]
    return rows
