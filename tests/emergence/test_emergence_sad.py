"""SAD over training (paper Fig. 7b, 8, 9b): svfcheck.emergence.sad_sweep, its figures and the CLI.

Fast tests (unmarked) use tiny random GPT-2 checkpoints written here; ``gpu`` tests reuse the
session's trained runs (tests/emergence/conftest.py) and a tiny 12x12 GPT-NeoX saved as fake
Pythia checkpoints. Expected values come from the tokens, the task generator, the IOI
generator and the models' own attention output, never from the pipeline under test.

Tolerances / thresholds:
- contrasts use the library's 99% percentile-bootstrap intervals (10,000 resamples); the
  assertion is only that the interval of the difference excludes 0 on the predicted side;
- "head found by pattern": a trained induction head puts ≥ 0.3 attention on the induction
  target on fresh repeated sequences, an untrained one ≈ 1/position ≤ 0.2 (uniform attention).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from svfcheck.emergence import sad_sweep as ss
from svfcheck.emergence.corpus import char_tokenizer
from svfcheck.emergence.series import CheckpointSeries
from svfcheck.real.models import tiny_random_model
from tests._tiny_models import ioi_word_tokenizer, save_tiny_folder

FAST = ss.EmergenceSettings(task="induction", n_prompts=4, head_sequences=8, n_boot=200, n_boot_contrast=200)


# ---------------------------------------------------------------- tiny folder series (fast)


@pytest.fixture(scope="module")
def tiny_series(tmp_path_factory):
    """Three random tiny GPT-2 checkpoints (different seeds) with the induction char tokenizer."""
    root = tmp_path_factory.mktemp("tiny_series")
    tok = char_tokenizer(32)
    for step, seed in ((0, 0), (5, 1), (10, 2)):
        m = tiny_random_model("gpt2", seed, vocab_size=33, n_positions=32, bos_token_id=0, eos_token_id=0,
                              pad_token_id=0)
        m.save_pretrained(root / f"step{step}")
        tok.save_pretrained(root / f"step{step}")
    return CheckpointSeries.from_folder(root)


def _sweep(path):
    return json.loads((path / "sad_sweep.json").read_text())


def test_task_pairs_follow_the_token_structure(tiny_series, tmp_path):
    r = ss.sad_over_training(tiny_series, tmp_path, FAST, progress=False, figures=False)
    sw = _sweep(tmp_path)
    assert sw["complete"] and list(sw["results"]) == ["0", "5", "10"]
    roles = r.data["heads"]["roles"]
    assert set(roles) == {"induction", "previous token"} and all(len(v) == 2 for v in roles.values())
    prompts = ss.build_prompts(FAST, None, tiny_series, 33)
    for step in ("0", "10"):
        p = sw["results"][step]["pairs"]
        n_ind = 0
        for role, b, q, k, l, h in zip(p["role"], p["prompt"], p["query"], p["key"], p["layer"], p["head"]):
            ids = prompts[b].ids
            assert [l, h] in roles[role]
            if role == "previous token":
                assert k == q - 1
            else:  # induction target: the key's predecessor is the query's token, earlier on
                assert role == "induction" and k < q and ids[k - 1] == ids[q]
                n_ind += 1
        # every second-copy token of every prompt, for each of the 2 induction heads
        assert n_ind == 2 * sum(pr.meta["L"] for pr in prompts)
    # the same pairs at every step (training-independent selection)
    a, b = sw["results"]["0"]["pairs"], sw["results"]["10"]["pairs"]
    assert all(a[f] == b[f] for f in ("role", "prompt", "layer", "head", "query", "key"))
    # summaries: S in [0, 1]; effect = mean(S_control - S_svd) recomputed from the stored pairs
    s = r.data["steps"]["10"]["overall"]
    sv, sr = np.array(b["s_svd"], dtype=float), np.array(b["s_rotated"], dtype=float)
    ok = np.isfinite(sv) & np.isfinite(sr) & np.isfinite(np.array(b["s_paper_control"], dtype=float))
    assert s["n_pairs"] == ok.sum() > 0
    assert s["effect_rotated"]["estimate"] == pytest.approx((sr[ok] - sv[ok]).mean(), abs=1e-6)  # 7-digit JSON
    assert 0 <= s["s_svd"]["low"] <= s["s_svd"]["estimate"] <= s["s_svd"]["high"] <= 1
    assert r.data["contrast"]["first_step"] == 0 and r.data["contrast"]["last_step"] == 10
    assert r.data["max_reconstruction_error"] < 1e-6  # float64 decomposition reproduces the model


def test_sweep_resumes_after_a_kill_and_gives_identical_json(tiny_series, tmp_path):
    with pytest.raises(RuntimeError, match="simulated interruption"):
        ss.sad_over_training(tiny_series, tmp_path / "a", FAST, progress=False, stop_after=1)
    sw = _sweep(tmp_path / "a")
    assert not sw["complete"] and list(sw["results"]) == ["0"]
    assert not (tmp_path / "a" / "emergence.json").exists()
    ra = ss.sad_over_training(tiny_series, tmp_path / "a", FAST, progress=False)
    assert list(ra.timing["steps"]) == ["5", "10"]  # step 0 was not recomputed
    rb = ss.sad_over_training(tiny_series, tmp_path / "b", FAST, progress=False)
    assert list(rb.timing["steps"]) == ["0", "5", "10"]
    for f in ("emergence.json", "sad_sweep.json"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text(), f
    for f in ("sparsity_vs_step.png", "k_vs_step.png", "decomposition_first_last.png"):
        assert (tmp_path / "a" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = ss.sad_over_training(tiny_series, tmp_path / "a", FAST, progress=False)
    assert again.timing["steps"] == {}  # a finished sweep is never recomputed
    assert (tmp_path / "a" / "emergence.json").read_text() == (tmp_path / "b" / "emergence.json").read_text()
    with pytest.raises(ValueError, match="different analysis"):  # the key hashes the settings
        ss.sad_over_training(tiny_series, tmp_path / "a", replace(FAST, n_prompts=5), progress=False)


def _copy_series(series: CheckpointSeries, root: Path, steps=None) -> CheckpointSeries:
    """A copy of ``series``' step folders (``steps``: only these) under ``root/<same folder
    name>``, so the copy has the same series name, at other paths and with new mtimes."""
    src = Path(series[0].locator).parent
    for c in series:
        if steps is None or c.step in steps:
            shutil.copytree(c.locator, root / src.name / Path(c.locator).name)
    return CheckpointSeries.from_folder(root / src.name)


def test_resume_key_covers_the_checkpoints_and_the_tokenizer(tiny_series, tmp_path, monkeypatch):
    """A rerun into the same folder resumes only over the same checkpoint contents and the same
    tokenizer. Each refused series keeps the name and the final checkpoint of the original, so
    the heads and prompt ids (chosen at the final step) and the old key are unchanged: only the
    series/tokenizer fingerprint can tell them apart."""
    from svfcheck.emergence import corpus

    out = tmp_path / "out"
    ss.sad_over_training(tiny_series, out, FAST, progress=False, figures=False)
    sweep_file = out / "sad_sweep.json"
    before = sweep_file.read_text()

    # accepted: byte-identical checkpoints at other paths resume with nothing recomputed
    same = _copy_series(tiny_series, tmp_path / "same")
    assert same.name == tiny_series.name and same.steps == tiny_series.steps
    r = ss.sad_over_training(same, out, FAST, progress=False, figures=False)
    assert r.timing["steps"] == {} and sweep_file.read_text() == before

    fewer = _copy_series(tiny_series, tmp_path / "fewer", steps=(0, 10))  # step 5 dropped

    edited = _copy_series(tiny_series, tmp_path / "edited")  # one weight of step 5 nudged
    w = Path(edited.at(5).locator) / "model.safetensors"
    with safe_open(str(w), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, w, metadata=meta)

    retok = _copy_series(tiny_series, tmp_path / "retok")  # same ids 0..32, other characters
    tok = char_tokenizer(32)
    monkeypatch.setattr(corpus, "CHAR_ALPHABET", corpus.CHAR_ALPHABET[32:] + corpus.CHAR_ALPHABET[:32])
    other_tok = corpus.char_tokenizer(32)
    assert len(other_tok) == len(tok) and set(other_tok.get_vocab()) != set(tok.get_vocab())
    for c in retok:
        other_tok.save_pretrained(c.locator)

    for other in (fewer, edited, retok):
        assert other.name == tiny_series.name
        with pytest.raises(ValueError, match="different analysis") as e:
            ss.sad_over_training(other, out, FAST, progress=False, figures=False)
        msg = str(e.value)
        assert str(sweep_file) in msg and "--out" in msg and "delete it" in msg
        assert sweep_file.read_text() == before  # refused before anything was written


def test_series_and_tokenizer_fingerprints():
    """Hub checkpoints are identified by model id and revision (nothing is downloaded); the
    tokenizer by class and vocabulary."""
    from svfcheck.emergence.series import parse_series

    a = ss._series_fingerprint(parse_series("pythia:EleutherAI/pythia-160m@0,1000"))
    assert a["checkpoints"][1] == {"step": 1000, "model": "EleutherAI/pythia-160m", "revision": "step1000"}
    assert a != ss._series_fingerprint(parse_series("pythia:EleutherAI/pythia-70m@0,1000"))
    assert a != ss._series_fingerprint(parse_series("hub:EleutherAI/pythia-160m@step0=0,main=1000"))
    t32 = ss._tokenizer_fingerprint(char_tokenizer(32))
    assert t32 == ss._tokenizer_fingerprint(char_tokenizer(32))
    assert t32 != ss._tokenizer_fingerprint(char_tokenizer(31))


def test_damaged_sweep_file_names_the_file(tiny_series, tmp_path):
    (tmp_path / "sad_sweep.json").write_text('{"format": "svfcheck-sweep/1", "resu')
    with pytest.raises(ValueError, match="damaged") as e:
        ss.sad_over_training(tiny_series, tmp_path, FAST, progress=False, figures=False)
    assert str(tmp_path / "sad_sweep.json") in str(e.value) and "--out" in str(e.value)


def test_top_selection_and_explicit_heads(tiny_series, tmp_path):
    st = replace(FAST, selection="top")
    r = ss.sad_over_training(tiny_series, tmp_path, st, heads={"chosen": [(1, 3)]}, progress=False, figures=False)
    assert r.data["heads"]["roles"] == {"chosen": [[1, 3]]} and r.data["heads"]["identified_at"] is None
    p = _sweep(tmp_path)["results"]["5"]["pairs"]
    model = tiny_series.load(5, progress=False).model
    prompts = ss.build_prompts(st, None, tiny_series, 33)
    ids = torch.tensor([list(x.ids) for x in prompts])
    with torch.no_grad():
        att = model(input_ids=ids, output_attentions=True).attentions[1][:, 3]  # (B, T, T)
    for b, q, k in zip(p["prompt"], p["query"], p["key"]):
        row = att[b, q, 1 : q + 1]
        assert k == 1 + int(row.argmax())  # top-attended non-first key, from the model's own attention
    assert len(p["query"]) == len(prompts) * (ids.shape[1] - 1)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"task": "nope"}, "task must be"),
        ({"selection": "all"}, "selection must be"),
        ({"n_prompts": 0}, "n_prompts"),
        ({"n_boot": 10}, "n_boot"),
        ({"seed": -1}, "seed"),
        ({"text_tokens": 2}, "text_tokens"),
        ({"basis": "x"}, "basis"),
        ({"dtype": "float16"}, "dtype"),
        ({"ioi_heads": "x"}, "ioi_heads"),
    ],
)
def test_settings_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ss.EmergenceSettings(**kw)


def test_bad_inputs_are_clear_errors(tiny_series, tmp_path):
    with pytest.raises(ValueError, match="CheckpointSeries"):
        ss.sad_over_training("not a series", tmp_path, FAST)
    with pytest.raises(ValueError, match="out of range"):
        ss.sad_over_training(tiny_series, tmp_path, FAST, heads={"x": [(5, 0)]}, progress=False)
    with pytest.raises(ValueError, match="LAYER|layer, head"):
        ss.sad_over_training(tiny_series, tmp_path, FAST, heads={"x": [(1,)]}, progress=False)
    with pytest.raises(ValueError, match="heads must be"):
        ss.sad_over_training(tiny_series, tmp_path, FAST, heads=[1, 2], progress=False)
    with pytest.raises(ValueError, match="stop_after"):
        ss.sad_over_training(tiny_series, tmp_path, FAST, stop_after=0)
    with pytest.raises(ValueError, match="paper head table"):
        ss.sad_over_training(tiny_series, tmp_path, ss.EmergenceSettings(task="ioi", ioi_heads="paper"),
                             progress=False)
    with pytest.raises(ValueError, match="task must be"):
        ss.default_settings("vision")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--run", "nope", "--out", "X"], "unknown preset"),
        (["--run", "induction-gpt2"], "--out DIR is required"),
        (["--run", "induction-gpt2", "--out", "X", "--n-prompts", "0"], "argument --n-prompts: '0' is out of range"),
        (["--checkpoints", "TINY", "--out", "X", "--task", "induction", "--heads", "4-1"], "bad head"),
        (["--checkpoints", "TINY", "--out", "X", "--task", "induction", "--heads", "paper"], "needs --task ioi"),
        (["--checkpoints", "TINY", "--out", "X", "--task", "ioi", "--heads", "pattern"], "for ioi use"),
        (["--checkpoints", "TINY", "--out", "X", "--task", "ioi", "--heads", "paper"], "no paper head table"),
        (["--checkpoints", "TINY", "--out", "X", "--task", "ioi", "--heads", "0.1"], "--selection top"),
    ],
)
def test_cli_bad_input_exits_2(argv, match, tiny_series, tmp_path, capsys):
    from svfcheck.cli import main

    folder = str(tiny_series[0].locator).rsplit("/", 1)[0]
    argv = [folder if a == "TINY" else (str(tmp_path / "o") if a == "X" else a) for a in argv]
    assert main(["emergence", *argv]) == 2
    assert match in capsys.readouterr().err


def test_cli_analyses_a_folder_series(tiny_series, tmp_path, capsys):
    from svfcheck.cli import main

    folder = str(tiny_series[0].locator).rsplit("/", 1)[0]
    argv = ["emergence", "--checkpoints", folder, "--out", str(tmp_path), "--task", "induction",
            "--n-prompts", "3", "--n-boot", "200", "--no-progress", "--heads", "induction=1.0,1.2;previous token=0.3"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["heads"] == {"induction": [[1, 0], [1, 2]], "previous token": [[0, 3]]}
    assert set(out["steps"]) == {"0", "5", "10"}
    d = json.loads((tmp_path / "emergence.json").read_text())
    assert d["n_prompts"] == 3 and d["settings"]["n_boot"] == 200


# ---------------------------------------------------------------- trained runs (gpu)


def _contrast_line(c):
    ed = {k: f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in c["effect_difference"].items()}
    sd = c["s_svd_difference"]
    return f"effect diff {ed}; S_svd final-init {sd['estimate']:.3f} [{sd['low']:.3f}, {sd['high']:.3f}]"


def _report(d):
    steps = [int(s) for s in d["steps"]]
    for s in (steps[0], steps[len(steps) // 2], steps[-1]):
        for role in d["roles"]:
            x = d["steps"][str(s)][role]
            print(f"step {s:5d} {role:>15}: S svd {x['s_svd']['estimate']:.3f}  rotated "
                  f"{x['s_rotated']['estimate']:.3f}  paper {x['s_paper_control']['estimate']:.3f}  "
                  f"k {x['median_k']} vs {x['median_k_rotated']}  (n={x['n_pairs']})")
    for role in d["roles"]:
        print(f"contrast {role}: {_contrast_line(d['contrast'][role])}")


@pytest.mark.gpu
def test_induction_run_cli_writes_figures_and_json(induction_cli):
    code, out, stdout = induction_cli
    assert code == 0
    for f in ("sparsity_vs_step.png", "k_vs_step.png", "decomposition_first_last.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((out / "emergence.json").read_text())
    assert d["format"] == ss.EMERGENCE_FORMAT and d["series"]["name"] == "induction-gpt2"
    run = json.loads((out / "run" / "run.json").read_text())
    assert [int(s) for s in d["steps"]] == run["checkpoints"]
    assert d["task_metric"]["induction_accuracy"] == [e["induction_accuracy"] for e in run["curve"]]
    assert '"skipped": true' in stdout  # the finished session run was not retrained
    t = json.loads((out / "timing.json").read_text())
    per = [v["total_s"] for v in t["steps"].values()]
    fwd = [v["forward_s"] for v in t["steps"].values()]
    dec = [v["decompose_s"] for v in t["steps"].values()]
    print(f"analysis per checkpoint: median {np.median(per):.2f}s (forward {np.median(fwd):.3f}s, decompose "
          f"{np.median(dec):.3f}s); heads+prompts {t['heads_and_prompts_s']:.1f}s; total {t['total_s']:.1f}s")
    _report(d)


@pytest.mark.gpu
def test_induction_sparsity_arrives_with_training(induction_cli):
    _, out, _ = induction_cli
    d = json.loads((out / "emergence.json").read_text())
    first, last = str(d["contrast"]["first_step"]), str(d["contrast"]["last_step"])
    assert first == "0"
    for role in ("overall", "induction", "previous token"):
        c = d["contrast"][role]
        assert c["s_svd_difference"]["high"] < 0, (role, _contrast_line(c))  # S_svd final below init
        for ctl in ("rotated", "paper_control"):
            assert c["effect_difference"][ctl]["low"] > 0, (role, ctl, _contrast_line(c))
        assert d["steps"][last][role]["s_svd"]["high"] < d["steps"][first][role]["s_svd"]["low"]


@pytest.mark.gpu
def test_induction_heads_found_by_attention_pattern(induction_run, induction_cli):
    """The chosen induction heads are those that attend to the induction target on fresh
    repeated sequences (measured here from the model's attention), and relabelling the heads
    of a layer (a function-preserving permutation) moves the choice with them."""
    from svfcheck.emergence.tasks import repeated_sequences

    r, _, _ = induction_run
    _, out, _ = induction_cli
    d = json.loads((out / "emergence.json").read_text())
    chosen = [tuple(h) for h in d["heads"]["roles"]["induction"]]
    ser = r.series()
    L = 10
    ids = repeated_sequences(32, L, 32, np.random.default_rng(5))  # [BOS] r r, distinct tokens

    def scores(model):
        with torch.no_grad():
            att = model(input_ids=ids, output_attentions=True).attentions
        q = torch.arange(L + 1, 2 * L + 1)
        return np.array([[float(a[:, h, q, q - L + 1].mean()) for h in range(a.shape[1])] for a in att])

    final = ser.load(ser.steps[-1], progress=False)
    s1, s0 = scores(final.model), scores(ser.load(0, progress=False).model)
    best = np.unravel_index(np.argmax(s1), s1.shape)
    print("induction-target attention final:", s1.round(3).tolist(), "init max", s0.max().round(3))
    assert tuple(int(x) for x in best) in chosen
    assert s1[best] >= 0.3 and s0.max() <= 0.2

    # permute the heads of the best head's layer: same function, the chosen index must follow
    layer = int(best[0])
    attn = final.model.transformer.h[layer].attn
    H, dh = attn.num_heads, attn.head_dim
    perm = torch.roll(torch.arange(H), 1)  # new head j = old head perm[j]
    idx = torch.cat([perm[j] * dh + torch.arange(dh) for j in range(H)])
    d_model = H * dh
    with torch.no_grad():
        W, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D (d, 3d): [q | k | v]
        cols = torch.cat([idx + i * d_model for i in range(3)])
        W.copy_(W[:, cols].clone())
        b.copy_(b[cols].clone())
        attn.c_proj.weight.copy_(attn.c_proj.weight[idx].clone())
    s1p = scores(final.model)
    np.testing.assert_allclose(s1p[layer], s1[layer][perm.numpy()], atol=1e-5)  # really a relabelling
    hs = ss.identify_heads(final, ss.default_settings("induction"), ser, None)
    old = {(l, h) for l, h in chosen}
    inv = {int(perm[j]): j for j in range(H)}
    expect = {(l, inv[h]) if l == layer else (l, h) for l, h in old}
    assert set(hs.roles["induction"]) == expect


@pytest.mark.gpu
def test_classic_circuit_sparsity_arrives_with_training(induction_llama_run, tmp_path):
    """induction-llama (RoPE, classic circuit): the heads chosen by pattern are the layer-1
    induction heads and the layer-0 previous-token heads, and both roles show the contrast."""
    r = ss.sad_over_training(induction_llama_run.series(), tmp_path, ss.default_settings("induction"),
                             progress=False)
    d = r.data
    _report(d)
    roles = d["heads"]["roles"]
    assert all(l == 1 for l, _ in roles["induction"]) and all(l == 0 for l, _ in roles["previous token"])
    for role in ("overall", "induction", "previous token"):
        c = d["contrast"][role]
        assert c["s_svd_difference"]["high"] < 0, (role, _contrast_line(c))
        for ctl in ("rotated", "paper_control"):
            assert c["effect_difference"][ctl]["low"] > 0, (role, ctl, _contrast_line(c))


@pytest.mark.gpu
def test_text_llama_sparsity_arrives_with_training(llama_run, tmp_path):
    st = ss.default_settings("text", n_prompts=8)
    r = ss.sad_over_training(llama_run.series(), tmp_path, st, progress=False)
    d = r.data
    _report(d)
    t = r.timing["steps"]
    print(f"text-llama analysis per checkpoint: median {np.median([v['total_s'] for v in t.values()]):.2f}s "
          f"(forward {np.median([v['forward_s'] for v in t.values()]):.3f}s, decompose "
          f"{np.median([v['decompose_s'] for v in t.values()]):.3f}s)")
    assert d["task_metric"]["eval_loss"][-1] < d["task_metric"]["eval_loss"][0]
    for role in ("overall", "previous token"):
        c = d["contrast"][role]
        assert c["s_svd_difference"]["high"] < 0, (role, _contrast_line(c))
        for ctl in ("rotated", "paper_control"):
            assert c["effect_difference"][ctl]["low"] > 0, (role, ctl, _contrast_line(c))


# ---------------------------------------------------------------- hub path (gpu)


@pytest.mark.gpu
def test_pythia_hub_path_end_to_end(tmp_path, monkeypatch, capsys):
    """`svfcheck emergence --checkpoints pythia:EleutherAI/pythia-160m@0,1000,143000 --task ioi
    --heads paper` on fake Pythia revisions: tiny random GPT-NeoX models with Pythia-160M's
    12 layers x 12 heads saved locally, the hub loader monkeypatched to those folders."""
    import svfcheck.real.models as models
    from svfcheck.cli import main
    from svfcheck.tasks.circuits import PYTHIA160M_IOI_HEADS
    from svfcheck.tasks.ioi import generate_ioi_prompts

    tok = ioi_word_tokenizer()  # every IOI name is one token
    folders = {}
    for i, step in enumerate((0, 1000, 143000)):
        folders[f"step{step}"] = tmp_path / f"step{step}"
        save_tiny_folder(folders[f"step{step}"], "gpt_neox", tok, seed=i, num_hidden_layers=12,
                         num_attention_heads=12, hidden_size=96, intermediate_size=192)
    real_load = models.load_model
    calls = []

    def fake_load(name, *, revision=None, **kw):
        calls.append((name, revision))
        assert name == "EleutherAI/pythia-160m"
        return real_load(str(folders[revision]), **kw)

    monkeypatch.setattr(models, "load_model", fake_load)
    out = tmp_path / "out"
    argv = ["emergence", "--checkpoints", "pythia:EleutherAI/pythia-160m@0,1000,143000", "--out", str(out),
            "--task", "ioi", "--heads", "paper", "--n-prompts", "6", "--n-boot", "500", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert {r for _, r in calls} == {"step0", "step1000", "step143000"}
    d = json.loads((out / "emergence.json").read_text())
    table = [(c.layer, c.head, c.role, c.query, c.key) for c in PYTHIA160M_IOI_HEADS]
    assert [(c["layer"], c["head"], c["role"], c["query"], c["key"]) for c in d["heads"]["circuit"]] == table
    prompts = generate_ioi_prompts(tok, 6, seed=d["settings"]["prompt_seed"], min_names=4)
    sw = json.loads((out / "sad_sweep.json").read_text())
    for step in ("0", "1000", "143000"):
        p = sw["results"][step]["pairs"]
        got = sorted(zip(p["prompt"], p["layer"], p["head"], p["query"], p["key"]))
        want = sorted((b, l, h, pr.positions[q], pr.positions[k]) for b, pr in enumerate(prompts)
                      for l, h, _, q, k in table)
        assert got == want  # Table 2's pairs at the IOI generator's labelled positions
        assert np.isfinite(np.array(p["s_svd"], dtype=float)).all()
    assert set(d["roles"]) == {"overall", "previous token", "induction", "name mover", "s-inhibition",
                               "copy suppression"}
    assert "effect_difference" in d["contrast"]["overall"]
    assert d["max_reconstruction_error"] < 1e-3  # float32 RoPE path reproduces the model's attention


def test_shared_index_bootstrap_agrees_with_stats_module():
    """The per-step summary's intervals vs svfcheck.stats (independent resampling): same
    estimates exactly, bounds within 15% of the interval width (Monte-Carlo error of 4,000
    resamples at the 0.5% / 99.5% quantiles is a few % of the width)."""
    from svfcheck import stats

    g = np.random.default_rng(3)
    s = g.uniform(0.05, 0.4, 600)
    sr = s + g.normal(0.1, 0.1, 600)
    sp = s + g.normal(0.02, 0.1, 600)
    k = g.integers(1, 9, 600)
    out = ss._summary(s, sr, sp, k, k + 1, 4000, 0)
    for name, ref in (("s_svd", stats.bootstrap_mean(s, n_boot=4000, level=0.99, seed=1)),
                      ("effect_rotated", stats.paired_effect(sr, s, n_boot=4000, level=0.99, seed=1)),
                      ("effect_paper_control", stats.paired_effect(sp, s, n_boot=4000, level=0.99, seed=1))):
        got = out[name]
        width = ref.high - ref.low
        assert got["estimate"] == pytest.approx(ref.estimate, abs=1e-12)
        assert abs(got["low"] - ref.low) < 0.15 * width and abs(got["high"] - ref.high) < 0.15 * width
    assert out["median_k"] == float(np.median(k)) and out["median_k_rotated"] == float(np.median(k + 1))
