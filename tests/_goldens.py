"""Golden results: the numbers of fixed-seed runs, recorded once, compared on every run.

A refactor must keep every number: the same pairs, per-pair terms and k, summaries and
intervals. ``pytest --record-goldens`` (with the golden tests selected) writes the files under
``tests/goldens/``; otherwise each golden test compares its fresh result with the file and fails
on the first difference, naming the JSON path. A golden test whose file is missing fails.

Comparison rules (:func:`assert_json_close`): keys, list lengths, strings, booleans and integers
exactly; floats to ``rtol`` (default 1e-6 relative, with ``atol`` for values near zero). Today's
numbers are bit-identical run to run; the tolerance leaves room for a change of summation order
in a float32 route (unit round-off 6e-8; sums over thousands of pairs drift by a few dozen ulps),
not for a change of result. Keys that hold wall-clock times, machine facts or output paths are
skipped (:func:`volatile`). Per-pair data is kept as arrays (npz): pair identity and k exactly; attention,
relative attention and the three Rolls–Tovee values as float32 (``sad.json`` holds 7 significant
digits); the full terms of every ``TERM_STRIDE``-th pair.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "goldens"
TERM_STRIDE = 50  # pairs whose full term vectors are kept
PAIR_INTS = ("prompt_index", "layer", "head", "query_pos", "key_pos", "k", "k_rotated")
PAIR_FLOATS = ("attention", "relative_attention", "rolls_tovee", "rolls_tovee_rotated", "rolls_tovee_paper_control")


# Keys whose values are wall-clock times, machine facts or output paths: never compared.
_VOLATILE = frozenset({"seconds", "date", "python", "torch", "device", "figures", "timing", "out", "run", "path", "locator"})


def volatile(key: str) -> bool:
    """A key holding a time (``seconds``, ``*_s``, ``*per_second``), a machine fact or a path."""
    return key in _VOLATILE or key.endswith("_s") or "per_second" in key


def recording(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--record-goldens"))


def assert_json_close(got: Any, want: Any, *, rtol: float = 1e-6, atol: float = 1e-12,
                      ignore=volatile, path: str = "") -> None:
    """``got`` equals ``want`` (see module doc); AssertionError names the first differing path."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: {type(got).__name__} instead of an object"
        keys_w = {k for k in want if not ignore(k)}
        keys_g = {k for k in got if not ignore(k)}
        assert keys_g == keys_w, f"{path}: keys differ: missing {sorted(keys_w - keys_g)}, new {sorted(keys_g - keys_w)}"
        for k in sorted(keys_w):
            assert_json_close(got[k], want[k], rtol=rtol, atol=atol, ignore=ignore, path=f"{path}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: list of {len(want)} expected, got {got!r:.80}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_close(g, w, rtol=rtol, atol=atol, ignore=ignore, path=f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        if math.isnan(want) or math.isinf(want):
            assert repr(float(got)) == repr(want), f"{path}: {got} != {want}"
        else:
            assert math.isclose(got, want, rel_tol=rtol, abs_tol=atol), f"{path}: {got!r} != {want!r} (rtol {rtol})"
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"


def _jsonable(doc: Any) -> Any:
    return json.loads(json.dumps(doc, default=float))


def check_json(name: str, doc: Any, request: pytest.FixtureRequest, **kw) -> None:
    """Record ``doc`` as ``tests/goldens/<name>.json`` or compare with it."""
    path = GOLDEN_DIR / f"{name}.json"
    doc = _jsonable(doc)
    if recording(request):
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return
    assert path.is_file(), f"golden {path} is missing: record it with pytest --record-goldens"
    assert_json_close(doc, json.loads(path.read_text()), path=name, **kw)


def _pair_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    out = {f: np.array([r[f] for r in rows], dtype=np.int64) for f in PAIR_INTS}
    out.update({f: np.array([np.nan if r[f] is None else r[f] for r in rows], dtype=np.float32) for f in PAIR_FLOATS})
    out["terms_sample"] = np.array([rows[i]["terms"] for i in range(0, len(rows), TERM_STRIDE)], dtype=np.float64)
    return out


def check_sad(name: str, doc: dict, request: pytest.FixtureRequest, *, rtol: float = 1e-6, folder=None) -> None:
    """A ``sad.json`` document (trained and, when present, its random-init baseline) against
    ``<name>.json`` (everything but the pairs) and ``<name>.npz`` (the pairs, read in-line or
    from the pair files in ``folder`` by ``pair_rows``). Where the pairs are kept (in-line rows
    or a pair file) is not part of the golden: ``pairs_format`` and ``pairs_file`` are skipped."""
    from svfcheck.real.sad import pair_rows

    parts = {"trained": doc}
    if "baseline_random_init" in doc:
        parts["random_init"] = doc["baseline_random_init"]
    arrays = {}
    for part, d in parts.items():
        arrays.update({f"{part}.{k}": v for k, v in _pair_arrays(pair_rows(d, folder)).items()})
    where = ("pairs", "pairs_format", "pairs_file")
    meta = {k: v for k, v in doc.items() if k not in (*where, "baseline_random_init")}
    if "random_init" in parts:
        meta["baseline_random_init"] = {k: v for k, v in parts["random_init"].items() if k not in where}
    path = GOLDEN_DIR / f"{name}.npz"
    if recording(request):
        GOLDEN_DIR.mkdir(exist_ok=True)
        np.savez_compressed(path, **arrays)
    else:
        assert path.is_file(), f"golden {path} is missing: record it with pytest --record-goldens"
        with np.load(path) as want:
            assert set(want.files) == set(arrays), f"{name}.npz: fields differ"
            for k in sorted(arrays):
                g, w = arrays[k], want[k]
                assert g.shape == w.shape, f"{name}.npz/{k}: shape {g.shape} != {w.shape}"
                if g.dtype.kind == "i":
                    bad = np.flatnonzero(g != w)
                    assert not bad.size, f"{name}.npz/{k}: {bad.size} pairs differ, first at row {bad[0]}: {g[bad[0]]} != {w[bad[0]]}"
                else:  # 7-digit values (float32) and term samples: rtol, atol relative to the largest value
                    scale = float(np.nanmax(np.abs(w))) if w.size else 0.0
                    np.testing.assert_allclose(g, w, rtol=max(rtol, 2e-6), atol=1e-6 * scale, err_msg=f"{name}.npz/{k}")
    check_json(name, meta, request, rtol=rtol)
