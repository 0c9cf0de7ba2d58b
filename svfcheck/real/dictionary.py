"""Dictionary alignment: singular vectors of a head against a user's feature dictionary
(docs/math.md §5.3–§5.4).

A dictionary is a matrix of directions in the residual stream, shape (n_features, d_model) or
(d_model, n_features) (:func:`orient_dictionary` decides by d_model and refuses a square or
mismatched matrix), loaded by :func:`load_dictionary` from ``.safetensors`` or ``.npy`` (never
a pickle). :func:`dictionary_alignment` maps its directions into each head's input space by the
linear part of the layer's input norm (:func:`~svfcheck.real.readouts.input_norm_maps`),
then :func:`alignment_scores` compares them with the top singular vectors, raw and in the
whitened form of Theorem 1 (``u ∝ Σ_A⁻¹a``, docs/math.md §2.3, §5.3), with
permutation-free, sign-invariant scores and a seeded random baseline (§5.4).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln

from svfcheck.theory.dictionaries import MAX_CONDITION

from .heads import cached_heads
from .readout_norms import input_norm_maps, unwrap_model
from .readouts import head_basis, resolve_heads

__all__ = [
    "LAYOUTS",
    "load_dictionary",
    "orient_dictionary",
    "whitened_detectors",
    "expected_abs_cos",
    "alignment_scores",
    "dictionary_alignment",
]

LAYOUTS = ("auto", "rows", "columns")
#: A mapped direction shorter than this fraction of its input (relative to the largest gain)
#: vanished through the norm (LayerNorm removes the mean: a constant direction reaches no head).
_VANISH = 1e-10


def orient_dictionary(X, d_model: int, layout: str = "auto", source: str = "the dictionary") -> np.ndarray:
    """``X`` as a float64 (n_features, d_model) matrix of finite, nonzero directions.

    ``layout``: ``"rows"`` (features are rows), ``"columns"`` or ``"auto"`` (the axis of
    length d_model holds the coordinates; a square d_model×d_model matrix is ambiguous and
    refused). Raises ``ValueError`` naming ``source`` and what to do."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; choose one of {', '.join(LAYOUTS)}")
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{source} has dtype {X.dtype}; it must hold real numbers (float or int)")
    if X.ndim != 2:
        raise ValueError(f"{source} has shape {X.shape}; it must be a 2-d matrix (n_features, d_model={d_model}) "
                         f"or (d_model, n_features)")
    rows_ok, cols_ok = X.shape[1] == d_model, X.shape[0] == d_model
    if layout == "auto":
        if rows_ok and cols_ok:
            raise ValueError(f"{source} is square ({d_model}×{d_model}), so it is ambiguous which axis holds the features; "
                             "say so: layout='rows' (features are rows) or 'columns' (CLI: --dictionary-layout)")
        if not (rows_ok or cols_ok):
            raise ValueError(f"{source} has shape {X.shape}, but neither axis has the model's d_model = {d_model}; "
                             "give residual-stream directions of this model, shape (n_features, d_model)")
        layout = "rows" if rows_ok else "columns"
    elif not (rows_ok if layout == "rows" else cols_ok):
        axis = 1 if layout == "rows" else 0
        raise ValueError(f"{source} has shape {X.shape}: with layout={layout!r} axis {axis} must have d_model = {d_model}")
    X = np.ascontiguousarray(X if layout == "rows" else X.T, dtype=np.float64)  # one memory layout: same rounding
    if X.shape[0] == 0:
        raise ValueError(f"{source} has no features (shape {X.shape}); give at least one direction")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise ValueError(f"{source} has non-finite values (NaN or inf) in {bad.size} feature(s), e.g. features "
                         f"{bad[:10].tolist()}; remove or fix them")
    zero = np.flatnonzero(np.linalg.norm(X, axis=1) == 0)
    if zero.size:
        raise ValueError(f"{source} has {zero.size} all-zero feature(s), e.g. features {zero[:10].tolist()}; a zero "
                         "vector has no direction: drop them")
    return X


def load_dictionary(path, d_model: int, *, key: str | None = None, layout: str = "auto") -> np.ndarray:
    """Load a dictionary from ``.safetensors`` (tensor ``key``; optional when the file holds one)
    or ``.npy`` (read with ``allow_pickle=False``: pickles are refused, never executed).

    Returns:
        float64 array (n_features, d_model), oriented and checked by :func:`orient_dictionary`.

    Raises:
        ValueError: missing or unreadable file, another format, a pickled ``.npy``, a missing
            or unspecified key, and every check of :func:`orient_dictionary`.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ValueError(f"dictionary file {p} {what}; give a .safetensors or .npy file of directions (n_features, d_model)")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        X, name = _load_safetensors(p, key)
    elif suffix == ".npy":
        if key is not None:
            raise ValueError(f"a key ({key!r}) was given for {p}, but a .npy file holds one array; drop the key")
        X, name = _load_npy(p), str(p)
    else:
        raise ValueError(f"dictionary file {p}: unsupported type {p.suffix or '(no suffix)'!r}; save the directions as "
                         ".safetensors or .npy (pickle-based formats such as .pt and .pkl are refused)")
    return orient_dictionary(X, d_model, layout, source=name)


def _load_safetensors(p: Path, key: str | None) -> tuple[np.ndarray, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
            if not keys:
                raise ValueError(f"dictionary file {p} holds no tensors")
            if key is None:
                if len(keys) > 1:
                    raise ValueError(f"dictionary file {p} holds {len(keys)} tensors ({', '.join(sorted(keys)[:10])}); "
                                     "choose one with key=... (CLI: --dictionary-key)")
                key = keys[0]
            elif key not in keys:
                raise ValueError(f"dictionary file {p} has no tensor {key!r}; it holds {', '.join(sorted(keys)[:10])}")
            t = f.get_tensor(key)
    except ValueError:
        raise
    except Exception as exc:  # safetensors' own error type for a damaged header
        raise ValueError(f"dictionary file {p} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if t.is_complex():
        raise ValueError(f"{p} [{key}] has complex dtype {t.dtype}; it must hold real numbers")
    return t.double().numpy(), f"{p} [{key}]"


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"dictionary file {p} is not a plain numeric .npy array: numpy would have to unpickle it, which "
                             "svfcheck never does (allow_pickle=False); save the directions as numbers, e.g. "
                             "np.save(path, X.astype(np.float32))") from None
        raise ValueError(f"dictionary file {p} is not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"dictionary file {p} is not a readable .npy array ({type(exc).__name__}: {exc})") from None


def _unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def whitened_detectors(D: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows ``w_j = Σ_A⁺ a_j`` for unit rows ``a_j`` of ``D`` (n, d), ``Σ_A = Dᵀ D`` (the frame
    operator of docs/math.md §2.1 with features as rows); ``Σ_A⁺`` inverts the eigenvalues above
    ``λ_max/MAX_CONDITION`` (a full inverse when the dictionary spans R^d, else the dual frame
    within its span). Returns ``(W, {"rank", "d", "condition"})``."""
    lam, Q = np.linalg.eigh(D.T @ D)
    keep = lam > lam[-1] / MAX_CONDITION
    inv = (Q[:, keep] / lam[keep]) @ Q[:, keep].T
    info = {"rank": int(keep.sum()), "d": int(D.shape[1]), "condition": float(lam[-1] / lam[keep][0])}
    return D @ inv, info


def expected_abs_cos(d: int) -> float:
    """``E|cos|`` between a fixed unit vector and a uniformly random one in R^d:
    ``Γ(d/2) / (√π Γ((d+1)/2))`` (≈ √(2/(πd)); 2/π at d = 2)."""
    return float(math.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / math.sqrt(math.pi))


def _table(C: np.ndarray, top_matches: int) -> dict:
    """Scores of a cosine matrix C (r, n): sign-invariant (|C|), permutation-free."""
    A = np.abs(C)
    rows, cols = linear_sum_assignment(A, maximize=True)
    k = min(top_matches, C.shape[1])
    best = np.argsort(-A, axis=1, kind="stable")[:, :k]
    return {
        "mean_max_abs_cos": float(A.max(axis=1).mean()),
        "max_abs_cos": A.max(axis=1).tolist(),
        "mean_abs_cos": float(A.mean()),
        "matching": {"mean_abs_cos": float(A[rows, cols].mean()),
                     "pairs": [{"index": int(i), "feature": int(j), "cos": float(C[i, j])} for i, j in zip(rows, cols)]},
        "best": [[{"feature": int(j), "cos": float(C[i, j])} for j in best[i]] for i in range(C.shape[0])],
    }


def _cosines(X: np.ndarray, F: np.ndarray) -> np.ndarray:
    """cos between the columns of X (d, r) and the rows of F (n, d): (r, n); a zero column gives 0."""
    nx = np.linalg.norm(X, axis=0)
    Xn = X / np.where(nx > 0, nx, 1.0)
    return Xn.T @ _unit_rows(F).T


def _frame_null(Dn: np.ndarray, W: np.ndarray, r: int, samples: int, seed: int) -> dict:
    """Scores of Haar-random orthonormal r-frames in R^d against the given directions (raw: ``Dn``,
    whitened: the detectors ``W``), averaged over ``samples`` frames."""
    d = Dn.shape[1]
    rng = np.random.default_rng(seed)
    acc = {"raw": [], "whitened": []}
    for _ in range(samples):
        Z, R = np.linalg.qr(rng.standard_normal((d, r)))
        Z = Z * np.sign(np.diag(R))
        for form, F in (("raw", Dn), ("whitened", W)):
            acc[form].append(_summary(_cosines(Z, F)))
    return {form: _mean_summary(v) for form, v in acc.items()}


def _summary(C: np.ndarray) -> tuple[float, float]:
    """(mean_r max_j |c_rj|, one-to-one matching mean |c|) of a cosine matrix."""
    A = np.abs(C)
    rows, cols = linear_sum_assignment(A, maximize=True)
    return float(A.max(axis=1).mean()), float(A[rows, cols].mean())


def _mean_summary(values: list) -> dict:
    m = np.mean(np.asarray(values), axis=0)
    return {"mean_max_abs_cos": float(m[0]), "matching_mean_abs_cos": float(m[1])}


def _dictionary_null(bases: list, n: int, nm, samples: int, seed: int) -> list[dict]:
    """Per head basis (``U``, ``V``: (d, r) each, as (U, V) pairs), the scores of ``samples``
    Gaussian dictionaries of n directions, sent through the same norm map ``nm`` (None: as
    given), against the head's own singular vectors. One set of random dictionaries per call,
    shared by the heads (the layer's), seeded by ``seed``."""
    d = bases[0][0].shape[0]
    rng = np.random.default_rng([seed, 1])
    acc = [{side: {"raw": [], "whitened": []} for side in ("query", "key")} for _ in bases]
    for _ in range(samples):
        R = rng.standard_normal((n, d))
        R = R if nm is None else nm.apply(R)
        keep = np.linalg.norm(R, axis=1) > 0
        Rn = _unit_rows(R[keep])
        W, _ = whitened_detectors(Rn)
        for a, (U, V) in zip(acc, bases):
            for side, X in (("query", U), ("key", V)):
                a[side]["raw"].append(_summary(_cosines(X, Rn)))
                a[side]["whitened"].append(_summary(_cosines(X, W)))
    return [{side: {form: _mean_summary(v) for form, v in a[side].items()} for side in a} for a in acc]


def alignment_scores(U: np.ndarray, V: np.ndarray, D: np.ndarray, *, top_matches: int = 5,
                     baseline_samples: int = 32, seed: int = 0) -> dict:
    """Cosines of singular vectors with dictionary directions, raw and whitened (docs/math.md §5.3–§5.4).

    Args:
        U, V: (d, r) query- and key-side singular vectors (their residual-stream part; need
            not be unit: cosines normalise).
        D: (n, d) dictionary directions in the same space (rows; normalised here).
        top_matches: best features listed per singular vector.
        baseline_samples: Haar-random r-frames of the random baseline (0: none); ``seed`` seeds them.

    Returns:
        ``{"query": {"raw": T, "whitened": T}, "key": {...}, "whitening": {"rank", "d",
        "condition"}, "random_baseline": {"expected_abs_cos", "samples", "random_frames":
        {"raw" | "whitened": {"mean_max_abs_cos", "matching_mean_abs_cos"}}}}`` (random frames:
        Haar-random orthonormal r-frames in place of U, V; absent with 0 samples); each table T has ``mean_max_abs_cos`` (mean
        over singular vectors of max_j |cos|), ``max_abs_cos`` (r,), ``mean_abs_cos`` (over all
        r×n), ``matching`` (the one-to-one assignment maximising Σ|cos|, linear_sum_assignment:
        ``mean_abs_cos`` and ``pairs``) and ``best`` (per singular vector, the ``top_matches``
        features by |cos|, with signed cos). Every score uses |cos|, so flipping (u_r, v_r)
        changes only the signs in ``pairs`` and ``best``.
    """
    U, V, D = (np.asarray(x, dtype=np.float64) for x in (U, V, D))
    if U.ndim != 2 or U.shape != V.shape:
        raise ValueError(f"U and V must be (d, r) matrices of the same shape; got {U.shape} and {V.shape}")
    D = orient_dictionary(D, U.shape[0], "rows")
    if isinstance(top_matches, bool) or not isinstance(top_matches, (int, np.integer)) or top_matches < 1:
        raise ValueError(f"top_matches={top_matches!r} must be a whole number >= 1")
    if isinstance(baseline_samples, bool) or not isinstance(baseline_samples, (int, np.integer)) or baseline_samples < 0:
        raise ValueError(f"baseline_samples={baseline_samples!r} must be a whole number >= 0")
    Dn = _unit_rows(D)
    W, info = whitened_detectors(Dn)
    out = {side: {"raw": _table(_cosines(X, Dn), top_matches), "whitened": _table(_cosines(X, W), top_matches)}
           for side, X in (("query", U), ("key", V))}
    out["whitening"] = info
    out["random_baseline"] = {"expected_abs_cos": expected_abs_cos(D.shape[1]), "samples": int(baseline_samples)}
    if baseline_samples:
        out["random_baseline"]["random_frames"] = _frame_null(Dn, W, U.shape[1], baseline_samples, seed)
    return out


def dictionary_alignment(model, dictionary, heads: Iterable | None = None, *, top_r: int = 4, top_matches: int = 5,
                         through_norm: bool = True, layout: str = "auto", baseline_samples: int = 32,
                         seed: int = 0) -> list[dict]:
    """Align the top singular vectors of heads with a feature dictionary (docs/math.md §5.3–§5.4).

    Args:
        model: a :class:`~svfcheck.real.models.LoadedModel` or a supported ``transformers`` model.
        dictionary: (n_features, d_model) or (d_model, n_features) residual-stream directions
            (see :func:`orient_dictionary`, ``layout``), e.g. from :func:`load_dictionary`.
        heads: (layer, head) pairs; ``None``: every head of layer 0.
        top_r: singular vectors per head, 1..d_h.
        through_norm: map the directions into the head's input space by the linear part of the
            layer's input norm (gain, LayerNorm centering); ``False``: they are head-input
            directions already.
        top_matches, baseline_samples, seed: see :func:`alignment_scores`.

    Returns:
        One dict per head: ``layer``, ``head``, ``kv_head``, ``singular_values`` (r,),
        ``bias_fraction`` (per side, (r,)), ``norm`` (the map applied), and the
        :func:`alignment_scores` fields ``query``, ``key``, ``whitening``, ``random_baseline``;
        the latter also holds ``random_dictionaries``: per side and form, the mean scores of
        ``baseline_samples`` Gaussian dictionaries of the same size sent through the same norm map,
        against this head's singular vectors — the null for "this dictionary aligns better than
        a random one would", which, unlike random frames, keeps what the norm's gains and the
        head's own geometry share (docs/math.md §5.4).
        Singular vectors enter by their first d_model coordinates (the bias coordinate of an
        augmented basis is left out).

    Raises:
        ValueError: a bad dictionary (shape, NaN, zero rows, a direction that vanishes through
            the norm), a head out of range, ``top_r`` outside 1..d_h.
    """
    module, _ = unwrap_model(model)
    mh = cached_heads(module)
    d = mh.layers[0].d_model
    D = orient_dictionary(dictionary, d, layout)
    pairs = resolve_heads(mh, heads)
    bases = [head_basis(mh, layer, head, top_r) for layer, head in pairs]
    maps = input_norm_maps(module) if through_norm else None
    out, per_layer = [], {}
    for b in bases:
        if b.layer not in per_layer:
            nm = maps[b.layer] if maps else None
            Dl, norm_name = _mapped(D, nm, b.layer)
            group = [(x.U[:d], x.V[:d]) for x in bases if x.layer == b.layer]
            nulls = _dictionary_null(group, D.shape[0], nm, baseline_samples, seed) if baseline_samples else None
            per_layer[b.layer] = (Dl, norm_name, iter(nulls or []))
        Dl, norm_name, nulls = per_layer[b.layer]
        scores = alignment_scores(b.U[:d], b.V[:d], Dl, top_matches=top_matches, baseline_samples=baseline_samples, seed=seed)
        if baseline_samples:
            scores["random_baseline"]["random_dictionaries"] = next(nulls)
        out.append({"layer": b.layer, "head": b.head, "kv_head": b.kv_head, "singular_values": b.S.tolist(),
                    "bias_fraction": {"query": (b.U[d:] ** 2).sum(0).tolist() if b.augmented else [0.0] * b.r,
                                      "key": (b.V[d:] ** 2).sum(0).tolist() if b.augmented else [0.0] * b.r},
                    "norm": norm_name, **scores})
    return out


def _mapped(D: np.ndarray, nm, layer: int) -> tuple[np.ndarray, str]:
    """The dictionary mapped through a layer's :class:`~svfcheck.real.readouts.NormMap` (None: as given)."""
    if nm is None:
        return D, "none (directions given in the head's input space)"
    M = nm.apply(D)
    gmax = 1.0 if nm.gain is None else float(np.max(np.abs(nm.gain)))
    gone = np.flatnonzero(np.linalg.norm(M, axis=1) <= _VANISH * gmax * np.linalg.norm(D, axis=1))
    if gone.size:
        raise ValueError(f"{gone.size} dictionary feature(s) (e.g. {gone[:10].tolist()}) vanish through layer {layer}'s "
                         f"input norm {nm.name} (LayerNorm removes the mean, so a constant direction never reaches the "
                         "head); drop them, or pass through_norm=False for head-input directions")
    return M, nm.name
