"""`svfcheck readout` end to end on tiny random local model folders (no download, no hub).

The command must write, in ``readouts.json``, what the library computes for the same model and
heads (the numbers themselves are checked against the model in tests/real/test_readouts.py
and tests/real/test_dictionary_alignment.py), with the tokenizer's own strings, the default
heads (every head of layer 0), ``L.*`` expanded, and a dictionary from .npy or .safetensors.
More bad input: tests/test_bad_input_table.py (rows ``readout-*``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from svfcheck.cli import main
from svfcheck.real.dictionary import dictionary_alignment
from svfcheck.real.models import load_model
from svfcheck.real.readouts import READOUT_NOTES, singular_readouts
from tests._tiny_models import ioi_word_tokenizer, save_tiny_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("readout")
    tok = ioi_word_tokenizer()
    D = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    np.save(root / "dict.npy", D.T)  # (d_model, n): transposed on purpose, detected by d_model
    from safetensors.torch import save_file

    save_file({"W_dec": torch.from_numpy(D), "W_enc": torch.from_numpy(D.T.copy())}, str(root / "sae.safetensors"))
    return {
        "gpt2": save_tiny_folder(root / "gpt2", "gpt2", tok, n_layer=2, n_head=4, n_embd=32),
        "llama": save_tiny_folder(root / "llama", "llama", tok, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, hidden_size=32, intermediate_size=64),
        "npy": str(root / "dict.npy"), "sae": str(root / "sae.safetensors"), "D": D.astype(np.float64), "tok": tok,
    }


def run(argv, capsys):
    rc = main(["readout", "--quiet", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _json(path):
    return json.loads((path / "readouts.json").read_text(encoding="utf-8"))


def test_readout_json_is_what_the_library_computes(folders, tmp_path, capsys):
    out = tmp_path / "o"
    rc, so, se = run(["--model", folders["llama"], "--heads", "1.3,0.*", "--top-r", "3", "--top-tokens", "4",
                      "--dictionary", folders["npy"], "--baseline-samples", "5", "--seed", "3", "--out", str(out)], capsys)
    assert rc == 0, se
    assert f"wrote {out / 'readouts.json'} (5 heads, 15 singular vectors)" in so
    doc = _json(out)
    heads = [(1, 3), (0, 0), (0, 1), (0, 2), (0, 3)]
    assert doc["heads"] == [list(h) for h in heads]
    assert doc["notes"] == READOUT_NOTES and doc["top_r"] == 3 and doc["top_tokens"] == 4
    lm = load_model(folders["llama"], progress=False)
    want = json.loads(json.dumps(singular_readouts(lm, heads, top_r=3, top_tokens=4)))
    assert doc["readouts"] == want
    for row in doc["readouts"]:
        for t in row["query_top"] + row["key_bottom"]:
            assert t["token"] == folders["tok"].decode([t["id"]])
    al = doc["alignment"]
    assert al["dictionary"]["n_features"] == 20 and al["through_norm"] is True
    want_al = json.loads(json.dumps(dictionary_alignment(lm, folders["D"], heads, top_r=3, baseline_samples=5, seed=3)))
    assert al["heads"] == want_al


def test_default_heads_are_layer_0_and_safetensors_keys_work(folders, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, se = run(["--model", folders["gpt2"], "--top-r", "1", "--top-tokens", "2", "--dictionary", folders["sae"],
                     "--dictionary-key", "W_enc", "--baseline-samples", "0", "--out", str(out)], capsys)
    assert rc == 0, se
    doc = _json(out)
    assert doc["heads"] == [[0, h] for h in range(4)]
    assert [(r["layer"], r["head"], r["index"]) for r in doc["readouts"]] == [(0, h, 0) for h in range(4)]
    assert doc["alignment"]["dictionary"]["key"] == "W_enc" and doc["alignment"]["dictionary"]["n_features"] == 20
    assert doc["unembedding"] == "lm_head (tied to the input embeddings)"
    lm = load_model(folders["gpt2"], progress=False)
    want = json.loads(json.dumps(dictionary_alignment(lm, folders["D"], [(0, h) for h in range(4)], top_r=1, baseline_samples=0)))
    assert doc["alignment"]["heads"] == want


def test_summary_lines_name_heads_and_poles(folders, tmp_path, capsys):
    rc = main(["readout", "--model", folders["gpt2"], "--heads", "1.2", "--top-r", "2", "--dictionary", folders["npy"],
               "--baseline-samples", "2", "--out", str(tmp_path / "o")])
    so = capsys.readouterr().out
    assert rc == 0
    assert "1.2 #0 s=" in so and "1.2 #1 s=" in so and "1.2 alignment (one-to-one mean |cos|)" in so


def test_random_init_is_seeded(folders, tmp_path, capsys):
    a, b, c = (tmp_path / x for x in "abc")
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert run(["--model", folders["gpt2"], "--random-init", "--seed", str(seed), "--heads", "0.0", "--top-r", "1",
                    "--out", str(out)], capsys)[0] == 0
    assert _json(a)["random_init"] is True and _json(a)["seed"] == 1
    assert _json(a)["readouts"] == _json(b)["readouts"] != _json(c)["readouts"]


@pytest.mark.parametrize("argv, needles", [
    (["--heads", "0.1,0.1"], ["--heads", "repeats"]),
    (["--heads", ""], ["--heads"]),
    (["--heads", "1.9"], ["head 9 is out of range", "heads 0..3"]),
    (["--top-r", "1.5"], ["--top-r", "'1.5'"]),
    (["--dictionary-layout", "diagonal"], ["--dictionary-layout", "'diagonal'"]),
    (["--dictionary", "{npy}", "--dictionary-layout", "rows"], ["--dictionary", "layout='rows' axis 1 must have d_model = 32"]),
    (["--baseline-samples", "-1"], ["--baseline-samples", "'-1'"]),
])
def test_more_bad_input(folders, tmp_path, capsys, argv, needles):
    argv = [a.format(**folders) for a in argv]
    out = tmp_path / "o"
    rc, so, se = run(["--model", folders["gpt2"], *argv, "--out", str(out)], capsys)
    assert rc == 2, se
    for n in needles:
        assert n in se, se
    assert "Traceback" not in se + so
    assert not (out / "readouts.json").exists()
