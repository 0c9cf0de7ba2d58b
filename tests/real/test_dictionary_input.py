"""Dictionary files and bad input (docs/math.md §5.3): what loads, and every refusal names its cause.

Pickles are never executed: a planted ``.npy`` pickle whose unpickling would create a file is
refused and the file never appears.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from svfcheck.real.dictionary import alignment_scores, dictionary_alignment, load_dictionary, orient_dictionary

D_MODEL = 8


def _save_safetensors(path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: torch.as_tensor(v).contiguous() for k, v in tensors.items()}, str(path))


@pytest.fixture
def X():
    return np.random.default_rng(0).standard_normal((5, D_MODEL)).astype(np.float32)


def test_npy_rows_columns_and_ints_load_as_float64_rows(tmp_path, X):
    np.save(tmp_path / "rows.npy", X)
    np.save(tmp_path / "cols.npy", X.T)
    np.save(tmp_path / "ints.npy", np.arange(2 * D_MODEL).reshape(2, D_MODEL) + 1)
    for name in ("rows", "cols"):
        got = load_dictionary(tmp_path / f"{name}.npy", D_MODEL)
        assert got.dtype == np.float64 and got.shape == (5, D_MODEL)
        np.testing.assert_array_equal(got, X.astype(np.float64))
    assert load_dictionary(tmp_path / "ints.npy", D_MODEL)[1, 0] == D_MODEL + 1


def test_safetensors_one_key_several_keys_and_bf16(tmp_path, X):
    _save_safetensors(tmp_path / "one.safetensors", {"W_dec": X})
    np.testing.assert_array_equal(load_dictionary(tmp_path / "one.safetensors", D_MODEL), X.astype(np.float64))
    _save_safetensors(tmp_path / "two.safetensors", {"W_dec": X, "W_enc": 2 * X.T})
    np.testing.assert_array_equal(load_dictionary(tmp_path / "two.safetensors", D_MODEL, key="W_enc"), 2 * X.astype(np.float64))
    _save_safetensors(tmp_path / "bf16.safetensors", {"d": torch.from_numpy(X).to(torch.bfloat16)})
    got = load_dictionary(tmp_path / "bf16.safetensors", D_MODEL)
    np.testing.assert_allclose(got, X, rtol=2 ** -7)  # bfloat16 keeps 8 significant bits


def test_a_pickled_npy_is_refused_and_never_executed(tmp_path):
    canary = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    (tmp_path / "evil.npy").write_bytes(pickle.dumps(Evil()))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for name in ("evil.npy", "objects.npy"):
        with pytest.raises(ValueError, match="allow_pickle=False") as e:
            load_dictionary(tmp_path / name, D_MODEL)
        assert name in str(e.value)
    assert not canary.exists()


@pytest.mark.parametrize("make, kw, match", [
    (lambda d: d / "missing.npy", {}, "does not exist"),
    (lambda d: d, {}, "is a folder"),
    (lambda d: (d / "w.pt").write_bytes(b"x") and d / "w.pt", {}, "unsupported type '.pt'"),
    (lambda d: (d / "w").write_bytes(b"x") and d / "w", {}, r"unsupported type '\(no suffix\)'"),
    (lambda d: (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!") and d / "bad.safetensors",
     {}, "not a readable safetensors file"),
    (lambda d: np.save(d / "ok.npy", np.ones((2, D_MODEL))) or d / "ok.npy", {"key": "W"}, "drop the key"),
    (lambda d: _save_safetensors(d / "two.safetensors", {"a": np.ones((2, D_MODEL)), "b": np.ones((3, D_MODEL))})
     or d / "two.safetensors", {}, r"holds 2 tensors \(a, b\).*--dictionary-key"),
    (lambda d: _save_safetensors(d / "one.safetensors", {"a": np.ones((2, D_MODEL))}) or d / "one.safetensors",
     {"key": "nope"}, "no tensor 'nope'; it holds a"),
    (lambda d: _save_safetensors(d / "c.safetensors", {"a": torch.ones(2, D_MODEL, dtype=torch.complex64)})
     or d / "c.safetensors", {}, "complex"),
])
def test_bad_files_are_named(tmp_path, make, kw, match):
    with pytest.raises(ValueError, match=match):
        load_dictionary(make(tmp_path), D_MODEL, **kw)


def test_a_truncated_npy_is_named(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((3, D_MODEL), dtype=np.float32))
    b = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(b[:-10])
    with pytest.raises(ValueError, match="t.npy is not a readable .npy array"):
        load_dictionary(tmp_path / "t.npy", D_MODEL)


def _with(fn):
    X = np.random.default_rng(1).standard_normal((6, D_MODEL))
    fn(X)
    return X


@pytest.mark.parametrize("X, kw, match", [
    (_with(lambda X: X.__setitem__((2, 3), np.nan)), {}, r"non-finite values \(NaN or inf\) in 1 feature\(s\), e.g. features \[2\]"),
    (_with(lambda X: X.__setitem__((4, 0), np.inf)), {}, r"features \[4\]"),
    (_with(lambda X: X.__setitem__(1, 0.0)), {}, r"1 all-zero feature\(s\), e.g. features \[1\]"),
    (np.ones((6, D_MODEL + 1)), {}, r"shape \(6, 9\), but neither axis has the model's d_model = 8"),
    (np.ones((D_MODEL, D_MODEL)), {}, r"square \(8×8\).*layout='rows'.*--dictionary-layout"),
    (np.ones((D_MODEL, 6)), {"layout": "rows"}, r"layout='rows' axis 1 must have d_model = 8"),
    (np.ones((6, D_MODEL)), {"layout": "columns"}, r"layout='columns' axis 0 must have d_model = 8"),
    (np.ones((6, D_MODEL)), {"layout": "sideways"}, "choose one of auto, rows, columns"),
    (np.ones(D_MODEL), {}, r"shape \(8,\); it must be a 2-d matrix"),
    (np.ones((2, 3, D_MODEL)), {}, "2-d matrix"),
    (np.ones((0, D_MODEL)), {}, "no features"),
    (np.ones((2, D_MODEL), dtype=complex), {}, "complex128; it must hold real numbers"),
    (np.array([["a"] * D_MODEL]), {}, "must hold real numbers"),
])
def test_bad_dictionaries_are_named(X, kw, match):
    with pytest.raises(ValueError, match=match):
        orient_dictionary(X, D_MODEL, **kw)


def test_a_constant_direction_vanishes_through_layernorm(tiny_models):
    """GPT-2's ln_1 removes the mean: a constant direction never reaches the head. RMSNorm (Llama)
    keeps it; without the norm map it is an ordinary direction."""
    gpt2, llama = tiny_models("gpt2"), tiny_models("llama")
    D = np.vstack([np.random.default_rng(2).standard_normal((3, 32)), np.full(32, 0.7)])
    with pytest.raises(ValueError, match=r"1 dictionary feature\(s\) \(e.g. \[3\]\) vanish through layer 1's input norm h.1.ln_1"):
        dictionary_alignment(gpt2, D, [(1, 0)], top_r=2)
    dictionary_alignment(gpt2, D, [(1, 0)], top_r=2, through_norm=False, baseline_samples=0)
    dictionary_alignment(llama, D, [(1, 0)], top_r=2, baseline_samples=0)


@pytest.mark.parametrize("heads, top_r, match", [
    ([(0, 4)], 2, r"head 4 is out of range; layer 0 has heads 0\.\.3"),
    ([(5, 0)], 2, r"layer 5 is out of range"),
    ([(0, 0)], 9, r"top_r=9 must be a whole number from 1 to the head dimension d_h = 8"),
    ([(0, 0)], 0, "d_h = 8"),
])
def test_bad_heads_and_ranks_are_named(heads, top_r, match, tiny_models):
    D = np.random.default_rng(3).standard_normal((10, 32))
    with pytest.raises(ValueError, match=match):
        dictionary_alignment(tiny_models("gpt2"), D, heads, top_r=top_r)


def test_alignment_scores_bad_input():
    U = np.linalg.qr(np.random.default_rng(4).standard_normal((6, 2)))[0]
    D = np.random.default_rng(5).standard_normal((4, 6))
    with pytest.raises(ValueError, match="same shape"):
        alignment_scores(U, U[:, :1], D)
    with pytest.raises(ValueError, match=r"shape \(4, 5\): with layout='rows' axis 1 must have d_model = 6"):
        alignment_scores(U, U, D[:, :5])
    with pytest.raises(ValueError, match="top_matches=0"):
        alignment_scores(U, U, D, top_matches=0)
    with pytest.raises(ValueError, match="baseline_samples=-1"):
        alignment_scores(U, U, D, baseline_samples=-1)
    out = alignment_scores(U, U, D[:1], baseline_samples=0)  # fewer features than singular vectors
    assert len(out["query"]["raw"]["matching"]["pairs"]) == 1 and "random_frames" not in out["random_baseline"]
