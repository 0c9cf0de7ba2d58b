"""`svfcheck sad` end to end on tiny random local model folders (no download, no hub).

The folders hold a randomly initialised GPT-2 / GPT-NeoX with 12 layers x 12 heads (so the
paper's GPT-2 and Pythia-160M head tables fit) and a word-level tokenizer over the IOI task's
own words (tests/_tiny_models.py). Expected values come from the model's own attention output and
from the IOI generator, never from the pipeline under test.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from svfcheck.cli import main
from svfcheck.real.models import tiny_random_model
from svfcheck.tasks import ioi
from svfcheck.tasks.circuits import GPT2_IOI_PAPER_HEADS, PYTHIA160M_IOI_HEADS
from tests._tiny_models import ioi_word_tokenizer, save_tiny_folder

PAIR_FIELDS = (
    "prompt_index", "layer", "head", "query_pos", "key_pos", "attention", "relative_attention", "terms",
    "k", "rolls_tovee", "k_rotated", "rolls_tovee_rotated", "rolls_tovee_paper_control",
)
def _sad_json(out):
    """``out/sad.json`` with the pairs read from its pair files into ``pairs`` (as the old
    in-line form), for the trained model and the random-init baseline."""
    from svfcheck.real.sad import pair_rows

    doc = json.loads((out / "sad.json").read_text())
    for part in (doc, doc.get("baseline_random_init")):
        if part is not None:
            part["pairs"] = pair_rows(part, out)
    return doc


TOP_FIELDS = ("model", "architecture", "prompts", "pairs", "summary", "per_head", "p_values", "max_reconstruction_error")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tok = ioi_word_tokenizer()
    root = tmp_path_factory.mktemp("tiny")
    return {
        "gpt2": save_tiny_folder(root / "gpt2", "gpt2", tok, n_layer=12, n_head=12, n_embd=96),
        "gpt_neox": save_tiny_folder(root / "neox", "gpt_neox", tok, num_hidden_layers=12, num_attention_heads=12,
                                     hidden_size=96, intermediate_size=192),
        "small": save_tiny_folder(root / "small", "gpt2", tok, n_layer=2, n_head=4, n_embd=32),
        "no_names": save_tiny_folder(root / "nonames", "gpt2", ioi_word_tokenizer(with_names=False),
                                     n_layer=2, n_head=4, n_embd=32),
        "tok": tok,
    }


def run(argv, capsys):
    rc = main(["sad", "--quiet", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sad_json_has_every_field_and_matches_the_model(folders, tmp_path, capsys):
    out = tmp_path / "o"
    rc, so, se = run(["--model", folders["small"], "--task", "ioi", "--n-prompts", "3", "--seed", "1",
                      "--out", str(out), "--baseline", "random-init"], capsys)
    assert rc == 0, se
    assert "pairs" in so and "max reconstruction error" in so
    doc = _sad_json(out)
    for f in TOP_FIELDS:
        assert f in doc, f
    assert doc["architecture"] == "gpt2" and doc["model"] == folders["small"]
    assert set(doc["p_values"]) == {"rotated", "paper_control"}
    assert "baseline_random_init" in doc and "contrast" in doc
    # prompts: the IOI generator's own text and token ids
    want = ioi.generate_ioi_prompts(folders["tok"], 3, seed=1)
    assert [p["text"] for p in doc["prompts"]] == [p.text for p in want]
    assert [p["token_ids"] for p in doc["prompts"]] == [list(p.token_ids) for p in want]
    # every query of every head has its top-attended non-first key: 144 heads x (n-1) queries
    assert len(doc["pairs"]) == sum(8 * (len(p.token_ids) - 1) for p in want)
    for row in doc["pairs"]:
        for f in PAIR_FIELDS:
            assert f in row, f
        assert len(row["terms"]) == 8  # d_h = 32 / 4
        assert "keys" not in row  # causal GPT-2 without padding: every key up to the query
    assert doc["max_reconstruction_error"] < 1e-5  # float32 model, float64 decomposition
    # independent check against the model's own attention: relative attention from log a
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders["small"], attn_implementation="eager").eval()
    rng = np.random.default_rng(0)
    for row in rng.choice(doc["pairs"], 20, replace=False):
        ids = torch.tensor([doc["prompts"][row["prompt_index"]]["token_ids"]])
        with torch.no_grad():
            att = model(ids, output_attentions=True).attentions[row["layer"]][0, row["head"], row["query_pos"]].double()
        la = torch.log(att[: row["query_pos"] + 1])
        j, m = row["key_pos"], row["query_pos"] + 1
        rel = float(la[j] - (la.sum() - la[j]) / (m - 1))
        assert row["attention"] == pytest.approx(float(att[j]), rel=1e-5)
        assert sum(row["terms"]) == pytest.approx(rel, abs=1e-4)
        assert row["relative_attention"] == pytest.approx(rel, abs=1e-4)
    for f in ("decomposition_bars.png", "k_histograms.png", "sparsity_vs_controls.png"):
        assert (out / f).stat().st_size > 1000


@pytest.mark.parametrize("arch,circuit,table", [
    ("gpt2", "gpt2", GPT2_IOI_PAPER_HEADS),
    ("gpt_neox", "EleutherAI/pythia-160m", PYTHIA160M_IOI_HEADS),
])
def test_paper_heads_at_paper_positions(folders, tmp_path, capsys, arch, circuit, table):
    out = tmp_path / "o"
    rc, so, se = run(["--model", folders[arch], "--heads", "paper", "--circuit", circuit, "--n-prompts", "4",
                      "--out", str(out)], capsys)
    assert rc == 0, se
    doc = _sad_json(out)
    assert doc["architecture"] == arch and doc["selection"] == "circuit"
    want = ioi.generate_ioi_prompts(folders["tok"], 4, seed=0)
    expected = sorted(
        (n, h.layer, h.head, p.positions[h.query], p.positions[h.key]) for n, p in enumerate(want) for h in table
    )
    got = sorted((r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in doc["pairs"])
    assert got == expected
    assert {r["role"] for r in doc["pairs"]} == {h.role for h in table}
    assert doc["max_reconstruction_error"] < 1e-5


def test_text_task(folders, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["While Anne and Mary were at the store, Anne gave a ring to Mary."] * 20))
    rc, so, se = run(["--model", folders["small"], "--task", "text", "--text-file", str(text), "--n-prompts", "2",
                      "--prompt-tokens", "20", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, se
    doc = _sad_json(tmp_path / "o")
    assert [len(p["token_ids"]) for p in doc["prompts"]] == [20, 20]


@pytest.mark.parametrize("argv,message", [
    (["--model", "no-such-model-xyz"], "smollm2-135m"),
    (["--head", "2.0"], "out of range"),
    (["--head", "0.4"], "out of range"),
    (["--heads", "paper"], "no published IOI head table"),
    (["--task", "text", "--n-prompts", "50"], "too short"),
])
def test_bad_input_exits_2(folders, tmp_path, capsys, argv, message):
    if argv[0] != "--model":
        argv = ["--model", folders["small"], *argv]
    rc, so, se = run([*argv, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert message in se, se
    assert not (tmp_path / "o" / "sad.json").exists()


def test_names_not_single_tokens_exit_2(folders, tmp_path, capsys):
    rc, so, se = run(["--model", folders["no_names"], "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "single tokens" in se, se


def test_prompt_too_short_is_a_clear_error(folders, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Anne")
    rc, so, se = run(["--model", folders["small"], "--task", "text", "--text-file", str(text), "--n-prompts", "1",
                      "--prompt-tokens", "2", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--prompt-tokens" in se and "'2'" in se and "from 3" in se, se


def test_text_task_defaults_to_the_built_in_passage(folders, tmp_path, capsys):
    rc, so, se = run(["--model", folders["small"], "--task", "text", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, se
    doc = _sad_json(tmp_path / "o")
    assert len(doc["prompts"]) >= 1 and all(len(p["token_ids"]) == 64 for p in doc["prompts"])


def test_discovered_heads_with_random_baseline(folders, tmp_path, capsys):
    rc, so, se = run(["--model", folders["small"], "--heads", "discover", "--n-prompts", "3", "--baseline", "random-init",
                      "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, se
    doc = _sad_json(tmp_path / "o")
    assert doc["heads"] == "discover" and doc["selection"] == "circuit"
    table = {(c["layer"], c["head"], c["query"], c["key"]) for c in doc["circuit"]}
    assert len(table) >= 4  # one or more heads per role
    base = doc["baseline_random_init"]
    # the random model is analysed on the trained model's discovered heads and positions
    assert {(c["layer"], c["head"], c["query"], c["key"]) for c in base["circuit"]} == table
    assert [(r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in base["pairs"]] == [
        (r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in doc["pairs"]]


def test_zero_prompts_exit_2(folders, tmp_path, capsys):
    rc, so, se = run(["--model", folders["small"], "--n-prompts", "0", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "argument --n-prompts: '0' is out of range" in se, se


# --------------------------------------------------------------------------- sad.json + pair files


@pytest.fixture(scope="module")
def paper_runs(folders, tmp_path_factory):
    """`svfcheck sad` on the GPT-2-shaped folder with the paper's heads and a random-init
    baseline: ``{"full": (sad.json doc with the pairs read in, stdout, folder)}``.
    ``--seed 3`` so the random initialisation differs from the folder's (seed-0) weights."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("paper_runs") / "full"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["sad", "--quiet", "--model", folders["gpt2"], "--heads", "paper", "--circuit", "gpt2",
                   "--n-prompts", "12", "--seed", "3", "--baseline", "random-init", "--out", str(out)])
    assert rc == 0, err.getvalue()
    return {"full": (_sad_json(out), buf.getvalue(), out)}


def test_sad_json_is_a_summary_and_the_pairs_are_parquet(paper_runs):
    """sad.json names its pair files instead of holding the pairs; each file has one row per
    pair with the documented schema, roles where the circuit gives them, and the random init's
    pairs are the same (prompt, head, query, key) positions."""
    import pyarrow.parquet as pq

    from svfcheck.real.pair_table import PAIRS_FORMAT

    doc, so, out = paper_runs["full"]
    raw = json.loads((out / "sad.json").read_text())
    assert (raw["pairs_format"], raw["pairs_file"]) == ("parquet", "pairs.parquet") and "pairs" not in raw
    base = raw["baseline_random_init"]
    assert (base["pairs_format"], base["pairs_file"]) == ("parquet", "pairs-random-init.parquet")
    t = pq.read_table(out / "pairs.parquet")
    assert t.num_rows == raw["n_pairs"] == len(doc["pairs"]) > 0
    assert t.schema.metadata[b"svfcheck.format"] == PAIRS_FORMAT.encode()
    terms = t.schema.field("terms").type
    assert terms.list_size == len(doc["pairs"][0]["terms"]) == 8 and str(terms.value_type) == "double"
    assert {r.get("role") for r in doc["pairs"]} == {h.role for h in GPT2_IOI_PAPER_HEADS}
    pos = [(r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in doc["pairs"]]
    assert pos == [(r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"])
                   for r in doc["baseline_random_init"]["pairs"]]
    assert "pairs.parquet" in so
    # a person can open sad.json: it does not grow with the pairs' terms
    assert (out / "sad.json").stat().st_size < (out / "pairs.parquet").stat().st_size * 4


def test_pair_rows_rejects_unknown_format_and_needs_the_folder():
    from svfcheck.real.sad import pair_rows

    with pytest.raises(ValueError, match="unknown pairs_format 'csv'"):
        pair_rows({"pairs_format": "csv", "pairs": {}})
    with pytest.raises(ValueError, match="relative to the sad.json's folder: pass folder="):
        pair_rows({"pairs_format": "parquet", "pairs_file": "pairs.parquet"})


def test_a_file_that_is_not_a_pair_file_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from svfcheck.real.pair_table import read_pairs

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not an svfcheck pair file"):
        read_pairs(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable Parquet pair file"):
        read_pairs(tmp_path / "junk.parquet")


def test_per_role_contrast_in_json_and_printout(paper_runs):
    """With paper heads and a random-init baseline, contrast.per_role has every table role,
    each contrasted on exactly that role's pairs, and the printout has one line per role."""
    from svfcheck import stats

    doc, so, _ = paper_runs["full"]
    per = doc["contrast"]["per_role"]
    roles = {h.role for h in GPT2_IOI_PAPER_HEADS}
    assert set(per) == roles
    base = doc["baseline_random_init"]
    for role, c in per.items():
        n = 12 * sum(h.role == role for h in GPT2_IOI_PAPER_HEADS)  # one pair per (prompt, head)
        s_t = np.array([r["rolls_tovee"] for r in doc["pairs"] if r.get("role") == role])
        s_r = np.array([r["rolls_tovee"] for r in base["pairs"] if r.get("role") == role])
        assert c["n_trained"] == c["n_random"] == len(s_t) == len(s_r) == n, (role, c)
        assert set(c["effect_difference"]) == {"rotated", "paper_control"}
        assert f"role {role} ({n} / {n} pairs)" in so
        # the role's S_svd difference is the overall statistic restricted to the role's pairs
        sd = stats.mean_difference(s_t, s_r, n_boot=10_000, level=0.99, seed=3)
        assert c["s_svd_difference"]["estimate"] == pytest.approx(sd.estimate, rel=1e-5, abs=1e-6)
        assert c["s_svd_difference"]["low"] == pytest.approx(sd.low, rel=1e-5, abs=1e-6)
    # the random initialisation really is another model (not the folder's weights again)
    assert doc["pairs"][0]["attention"] != base["pairs"][0]["attention"]


def test_role_with_too_few_pairs_is_reported_not_dropped(small_lm):
    from svfcheck.real.sad import analyze, contrast
    from svfcheck.tasks.circuits import CircuitHead

    prompts = ioi.generate_ioi_prompts(small_lm.tokenizer, 3, seed=0)
    table = [CircuitHead(1, 2, "name mover", "END", "IO"), CircuitHead(0, 1, "induction", "S2", "S1+1")]
    tr = analyze(small_lm, prompts, heads=table, n_boot=200, n_boot_head=100, progress=False)
    con = contrast(tr, tr, n_boot=200, min_role_pairs=4)
    assert set(con.per_role) == {"name mover", "induction"}
    assert all(isinstance(v, str) and "3 trained / 3 random valid pairs (< 4)" in v for v in con.per_role.values())
    assert any("role induction: not contrasted" in line for line in con.lines())
    con = contrast(tr, tr, n_boot=200, min_role_pairs=3)
    assert con.per_role["induction"].n_trained == 3
    assert contrast(tr, tr, n_boot=200, per_role=False).per_role == {}


# --------------------------------------------------------------------------- bad input (exit 2)


def test_unsupported_architecture_exits_2(folders, tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    tok = folders["tok"]
    torch.manual_seed(0)
    m = OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                 num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64))
    m.save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    rc, so, se = run(["--model", str(tmp_path / "opt"), "--n-prompts", "1", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "unsupported architecture 'opt'" in se and "gpt2" in se, se


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_exit_2(folders, tmp_path, capsys, bad):
    tok = folders["tok"]
    model = tiny_random_model("gpt2", seed=0, vocab_size=len(tok), n_layer=2, n_head=4, n_embd=32)
    with torch.no_grad():
        model.transformer.h[1].attn.c_attn.weight[0, 5] = bad
    model.save_pretrained(tmp_path / "bad")
    tok.save_pretrained(tmp_path / "bad")
    rc, so, se = run(["--model", str(tmp_path / "bad"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "NaN/inf" in se and "transformer.h.1.attn.c_attn.weight" in se, se


def test_revision_of_a_local_folder_exits_2(folders, tmp_path, capsys):
    rc, so, se = run(["--model", folders["small"], "--revision", "step1", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "revision='step1'" in se and "local folder" in se, se


def test_revision_that_does_not_exist_exits_2(folders, tmp_path, capsys, monkeypatch):
    """A hub id whose requested revision is missing: simulated with an offline hub cache that
    holds only ``main`` of a tiny repo (no network)."""
    from pathlib import Path

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snap = cache / "models--svfcheck-test--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in Path(folders["small"]).iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--svfcheck-test--tiny" / "refs").mkdir()
    (cache / "models--svfcheck-test--tiny" / "refs" / "main").write_text("a" * 40)
    rc, so, se = run(["--model", "svfcheck-test/tiny", "--n-prompts", "1", "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, se  # the cached main revision loads, so the next failure is the revision's
    rc, so, se = run(["--model", "svfcheck-test/tiny", "--revision", "step999", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "revision 'step999' of 'svfcheck-test/tiny' does not exist" in se, se


# --------------------------------------------------------------------------- bad input (library)


@pytest.fixture(scope="module")
def small_lm(folders):
    from svfcheck.real.models import load_model

    return load_model(folders["small"], progress=False)


@pytest.mark.parametrize("kw,prompts,message", [
    ({}, [[5, 6]], "prompt 0 has 2 token"),
    ({}, [], "no prompts given"),
    ({"heads": "some"}, None, "heads must be one of ('all', 'paper', 'discover')"),
    ({"heads": []}, None, "heads is an empty list"),
    ({"heads": [(0, 4)]}, None, "out of range"),
    ({"heads": [(2, 0)]}, None, "out of range"),
    ({"selection": "best"}, None, "selection must be one of ('top', 'threshold', 'circuit')"),
    ({"selection": "circuit"}, None, "needs a head table"),
    ({"heads": "discover"}, "text", "needs IOI prompts"),
    ({"heads": "paper"}, None, "no published IOI head table"),
])
def test_analyze_bad_input_is_a_clear_error(small_lm, kw, prompts, message):
    from svfcheck.real.sad import analyze

    if prompts is None:
        prompts = ioi.generate_ioi_prompts(small_lm.tokenizer, 2, seed=0)
    elif prompts == "text":
        prompts = ["Anne gave a ring to Mary at the store"]
    with pytest.raises((ValueError, IndexError), match=re.escape(message)):
        analyze(small_lm, prompts, progress=False, **kw)


def test_discovery_captures_are_reused_by_the_sad_pass(small_lm, monkeypatch):
    """heads='discover' runs one forward pass per batch in all: the SAD pass reuses the
    captures of head discovery (sad_step.discover_on_batches → decompose_batches)."""
    import svfcheck.real.sad_step as step
    from svfcheck.real.sad import analyze

    calls = []
    real = step.capture

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(step, "capture", counting)
    prompts = ioi.generate_ioi_prompts(small_lm.tokenizer, 5, seed=0)
    res = analyze(small_lm, prompts, heads="discover", batch_size=2, n_boot=200, n_boot_head=100, progress=False)
    assert len(res) > 0 and res.heads_mode == "discover"
    assert len(calls) == 3  # ceil(5 / 2) batches, each captured once


def test_basis_flag_reaches_the_decomposition(folders, tmp_path):
    """--basis zero (Ω(0) for every pair, paper App. D) on a RoPE model: recorded in the
    settings, the same pairs, other terms than the exact per-offset basis (--basis pair)."""
    docs = {}
    for basis in ("pair", "zero"):
        out = tmp_path / basis
        assert main(["sad", "--quiet", "--model", folders["gpt_neox"], "--task", "text", "--n-prompts", "2",
                     "--prompt-tokens", "12", "--basis", basis, "--out", str(out)]) == 0
        docs[basis] = _sad_json(out)
    p, z = docs["pair"], docs["zero"]
    assert (p["settings"]["basis"], z["settings"]["basis"]) == ("pair", "zero")
    pos = [(r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in p["pairs"]]
    assert pos == [(r["prompt_index"], r["layer"], r["head"], r["query_pos"], r["key_pos"]) for r in z["pairs"]]
    # pairs at offset 0 share the basis; at other offsets the rotary part of Ω(Δ) differs from Ω(0)
    far = [i for i, r in enumerate(p["pairs"]) if r["query_pos"] - r["key_pos"] >= 2]
    diff = max(max(abs(a - b) for a, b in zip(p["pairs"][i]["terms"], z["pairs"][i]["terms"])) for i in far)
    assert far and diff > 1e-3, diff
