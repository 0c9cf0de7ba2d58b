"""Fast unit tests of svfcheck.emergence: data, metric, tokenizers, series, configs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from svfcheck.emergence import config, corpus, series, train
from svfcheck.emergence.series import Checkpoint, CheckpointSeries, parse_series, pythia_steps
from svfcheck.emergence.tasks import InductionTask, TextTask, induction_metrics, step_generator


# ---- induction data -------------------------------------------------------------------------
def test_induction_batch_shapes_and_repeat_structure():
    task = InductionTask(n_symbols=20, min_len=4, max_len=10)
    b = task.sample(50, step_generator(3, 7))
    assert b.input_ids.shape == (50, task.context_length) == (50, 21)
    assert b.input_ids.dtype == torch.long
    assert (b.input_ids[:, 0] == 0).all()
    assert ((b.input_ids[:, 1:] >= 1) & (b.input_ids[:, 1:] <= 20)).all()
    assert set(b.lengths.tolist()) <= set(range(4, 11)) and len(set(b.lengths.tolist())) > 1
    for row, L in zip(b.input_ids, b.lengths.tolist()):
        assert torch.equal(row[1 : L + 1], row[L + 1 : 2 * L + 1])
    for mask, L in zip(b.score_mask, b.lengths.tolist()):
        assert mask.nonzero().flatten().tolist() == list(range(L + 1, 2 * L))
    # scored targets are r_2..r_L of the second copy
    tg = b.targets
    row, L = b.input_ids[0], int(b.lengths[0])
    assert tg[0][b.score_mask[0]].tolist() == row[2 : L + 1].tolist()


def test_induction_prefix_and_distinct_tokens():
    task = InductionTask(n_symbols=24, min_len=4, max_len=8, max_prefix=6)
    assert task.context_length == 1 + 6 + 16
    b = task.sample(64, step_generator(0, 2))
    starts = set()
    for row, L, mask in zip(b.input_ids, b.lengths.tolist(), b.score_mask):
        scored = mask.nonzero().flatten().tolist()
        P = scored[0] - L - 1  # first scored position is P+L+1
        starts.add(P)
        assert scored == list(range(P + L + 1, P + 2 * L))
        assert torch.equal(row[P + 1 : P + L + 1], row[P + L + 1 : P + 2 * L + 1])
        head = row[1 : P + L + 1].tolist()
        assert len(set(head)) == len(head)  # prefix + block distinct: successors unique
    assert len(starts) > 3 and min(starts) >= 0 and max(starts) <= 6
    with pytest.raises(ValueError, match="exceeds"):
        InductionTask(n_symbols=10, min_len=4, max_len=8, max_prefix=6)


def test_induction_gap_structure():
    task = InductionTask(n_symbols=40, min_len=3, max_len=8, max_prefix=5, max_gap=9)
    assert task.context_length == 1 + 5 + 16 + 9
    b = task.sample(128, step_generator(1, 0))
    gaps = set()
    for row, L, d, mask in zip(b.input_ids, b.lengths.tolist(), b.distances.tolist(), b.score_mask):
        scored = mask.nonzero().flatten().tolist()
        s1 = scored[0]  # first token of the second copy
        assert scored == list(range(s1, s1 + L - 1))
        assert torch.equal(row[s1 - d : s1 - d + L], row[s1 : s1 + L])
        head = row[1:s1].tolist()  # prefix + block + gap: all distinct
        assert len(set(head)) == len(head)
        gaps.add(d - L)
    assert min(gaps) == 0 and max(gaps) == 9
    with pytest.raises(ValueError, match="max_gap"):
        InductionTask(max_gap=-1)


def test_induction_seeding():
    task = InductionTask()
    a = task.train_batch(8, seed=1, step=5)
    assert torch.equal(a[0], task.train_batch(8, seed=1, step=5)[0])
    assert not torch.equal(a[0], task.train_batch(8, seed=1, step=6)[0])
    assert not torch.equal(a[0], task.train_batch(8, seed=2, step=5)[0])
    assert torch.equal(task.eval_batch(16, 0).input_ids, task.eval_batch(16, 0).input_ids)
    assert not torch.equal(task.eval_batch(8, 0).input_ids, task.train_batch(8, 0, 0)[0])


def test_induction_labels_repeat_only():
    task = InductionTask(n_symbols=10, min_len=3, max_len=6, loss_on_repeat_only=True)
    ids, labels = task.train_batch(4, 0, 0)
    b = task.sample(4, step_generator(0, 0))
    assert torch.equal(ids, b.input_ids)
    # HF shifts labels by one: label at t+1 is the target of position t
    kept = (labels != -100)
    assert torch.equal(kept[:, 1:], b.score_mask[:, :-1])
    assert torch.equal(labels[kept], ids[kept])


def test_induction_metric_perfect_and_random():
    task = InductionTask(n_symbols=16, min_len=4, max_len=12)
    b = task.sample(200, step_generator(0, 1))
    V = task.vocab_size
    perfect = torch.full((*b.input_ids.shape, V), -10.0)
    perfect.scatter_(2, b.targets.clamp(min=0)[..., None], 10.0)
    m = induction_metrics(perfect, b)
    assert m["accuracy"] == 1.0 and m["loss"] < 1e-6
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(*b.input_ids.shape, V, generator=g)
    m = induction_metrics(rnd, b)
    se = math.sqrt((1 / V) * (1 - 1 / V) / m["n"])
    assert abs(m["accuracy"] - 1 / V) < 4 * se
    uniform = torch.zeros(*b.input_ids.shape, V)
    assert induction_metrics(uniform, b)["loss"] == pytest.approx(math.log(V), rel=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        induction_metrics(uniform[:, 1:], b)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_symbols": 1}, "n_symbols"),
        ({"n_symbols": 1000}, "n_symbols"),
        ({"min_len": 1}, "min_len"),
        ({"min_len": 10, "max_len": 5}, "max_len"),
    ],
)
def test_induction_task_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        InductionTask(**kw)


def test_text_task_batches():
    t = TextTask(context_length=32)
    ids, labels = t.train_batch(4, 0, 3)
    assert ids.shape == (4, 32) and (ids[:, 0] == 0).all() and labels is ids
    assert ((ids[:, 1:] >= 3) & (ids[:, 1:] < 259)).all()
    assert torch.equal(ids, t.train_batch(4, 0, 3)[0])
    ev = t.eval_ids(5)
    assert ev.shape == (5, 32)
    text = bytes((ev[0, 1:] - 3).tolist()).decode("utf-8", errors="replace")
    val = corpus.load_corpus().split(0.1)[1]
    assert bytes((ev[0, 1:] - 3).tolist()) in bytes(val.tolist())
    assert len(text) > 0
    with pytest.raises(ValueError, match="context_length"):
        TextTask(context_length=2)


# ---- corpus + tokenizers --------------------------------------------------------------------
def test_corpus_is_offline_english_and_deterministic():
    c = corpus.load_corpus()
    assert c.source.startswith("python-stdlib:")
    assert len(c.text.encode()) >= corpus.MIN_CORPUS_BYTES
    words = c.text.lower().split()
    for w in ("the", "statement", "function", "object"):
        assert words.count(w) > 100
    c2 = corpus.load_corpus.__wrapped__()
    assert c2.sha256 == c.sha256
    tr, va = c.split(0.1)
    assert len(tr) + len(va) == len(c.data)
    with pytest.raises(ValueError, match="source"):
        corpus.load_corpus("web")


def test_byte_tokenizer_roundtrip_and_save_load(tmp_path):
    from transformers import AutoTokenizer

    tok = corpus.byte_tokenizer()
    s = "Hello, wörld’ — x  y\n\ttabs"
    ids = tok(s).input_ids
    assert ids[0] == tok.bos_token_id == 0
    assert ids[1:] == [3 + b for b in s.encode("utf-8")]
    assert tok.decode(ids, skip_special_tokens=True) == s
    assert len(tok) == 259
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(s).input_ids == ids
    assert tok2.decode(ids, skip_special_tokens=True) == s
    assert (tok2.bos_token_id, tok2.eos_token_id, tok2.pad_token_id) == (0, 1, 2)


def test_char_tokenizer_roundtrip_and_save_load(tmp_path):
    from transformers import AutoTokenizer

    tok = corpus.char_tokenizer(64)
    s = corpus.CHAR_ALPHABET[:64][::-3]
    ids = tok(s).input_ids
    assert ids == [0] + [corpus.CHAR_ALPHABET.index(c) + 1 for c in s]
    assert tok.decode(ids, skip_special_tokens=True) == s
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(s).input_ids == ids and len(tok2) == 65
    with pytest.raises(ValueError, match="n_symbols"):
        corpus.char_tokenizer(1)


def test_unigram_entropy():
    assert corpus.unigram_entropy(torch.tensor([1, 1, 1])) == 0.0
    assert corpus.unigram_entropy(torch.arange(8)) == pytest.approx(math.log(8))


# ---- configs ---------------------------------------------------------------------------------
def test_presets_and_schedule():
    cfg = config.preset("induction-gpt2")
    s = cfg.schedule()
    assert s[0] == 0 and s[-1] == cfg.max_steps and list(s) == sorted(set(s))
    assert {1, 2, 4, 8, 16, 32, 64} <= set(s)  # dense, log-spaced early part
    assert set(s) <= set(cfg.log_steps())
    small = config.preset("text-llama", max_steps=10, warmup_steps=2, checkpoint_every=5)
    assert small.schedule() == (0, 1, 2, 4, 5, 8, 10)
    assert config.preset("text-llama", max_steps=10, warmup_steps=2, checkpoint_steps=(0, 3, 10)).schedule() == (0, 3, 10)
    assert config.LMTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    lm = config.preset("text-llama")
    assert config.LMTrainConfig.from_dict(json.loads(json.dumps(lm.to_dict()))) == lm
    assert lm.model.n_kv_heads < lm.model.n_heads


def test_lr_schedule():
    cfg = config.preset("induction-gpt2", max_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert train.lr_at(cfg, 0) == pytest.approx(1e-4)
    assert train.lr_at(cfg, 9) == pytest.approx(1e-3)
    assert train.lr_at(cfg, 10) == pytest.approx(1e-3)
    assert train.lr_at(cfg, 100) == pytest.approx(1e-4)
    lrs = [train.lr_at(cfg, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"lr": -1.0}, "lr"),
        ({"warmup_steps": 10**9}, "warmup_steps"),
        ({"checkpoint_steps": (1, 2, 1500)}, "start at 0"),
        ({"checkpoint_steps": (0, 5, 5, 1500)}, "strictly increasing"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_train_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        config.preset("induction-gpt2", **kw)


def test_model_spec_validation():
    with pytest.raises(ValueError, match="arch"):
        config.LMSpec(arch="rnn")
    with pytest.raises(ValueError, match="divisible"):
        config.LMSpec(d_model=65, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        config.LMSpec(arch="gpt2", n_kv_heads=2)
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        config.LMSpec(arch="llama", n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        config.preset("nope")


def test_build_models():
    g = train.build_model(config.preset("induction-gpt2"))
    assert g.config.model_type == "gpt2" and g.config.n_layer == 2
    assert g.config.vocab_size == config.preset("induction-gpt2").task.vocab_size
    l = train.build_model(config.preset("text-llama"))
    assert l.config.model_type == "llama"
    assert l.config.num_key_value_heads < l.config.num_attention_heads
    # seeded initialisation
    g2 = train.build_model(config.preset("induction-gpt2"))
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values()))


# ---- checkpoint series -----------------------------------------------------------------------
def _fake_ckpt(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")


def test_series_from_folder(tmp_path):
    for s in (100, 0, 20):
        _fake_ckpt(tmp_path / f"step{s}")
    (tmp_path / "other").mkdir()
    ser = CheckpointSeries.from_folder(tmp_path)
    assert ser.steps == [0, 20, 100]
    assert ser.at(20).locator == str(tmp_path / "step20") and ser.at(20).revision is None
    assert parse_series(str(tmp_path)).steps == [0, 20, 100]
    assert parse_series(f"folder:{tmp_path}").steps == [0, 20, 100]
    assert ser.first_middle_last().steps == [0, 20, 100]
    assert len(ser) == 3 and [c.step for c in ser] == [0, 20, 100]
    with pytest.raises(KeyError, match="no checkpoint at step 5"):
        ser.at(5)


def test_series_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CheckpointSeries.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no step"):
        CheckpointSeries.from_folder(tmp_path)
    (tmp_path / "step3").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        CheckpointSeries.from_folder(tmp_path)


def test_series_manifest(tmp_path):
    _fake_ckpt(tmp_path / "init")
    m = {
        "format": series.MANIFEST_FORMAT,
        "name": "mix",
        "checkpoints": [
            {"step": 0, "path": "init"},
            {"step": 1000, "model": "EleutherAI/pythia-70m", "revision": "step1000"},
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(m))
    ser = parse_series(str(tmp_path / "m.json"))
    assert ser.steps == [0, 1000] and ser.name == "mix"
    assert ser.at(0).locator == str(tmp_path / "init")
    assert ser.at(1000).revision == "step1000"
    out = ser.write_manifest(tmp_path / "copy.json")
    assert CheckpointSeries.from_manifest(out) == ser
    m["checkpoints"][1]["step"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="unique"):
        CheckpointSeries.from_folder(tmp_path / "bad.json")
    (tmp_path / "notm.json").write_text("{}")
    with pytest.raises(ValueError, match="not a checkpoint manifest"):
        CheckpointSeries.from_folder(tmp_path / "notm.json")


def test_series_pythia():
    ser = parse_series("pythia:EleutherAI/pythia-160m@0,1000,143000")
    assert ser.steps == [0, 1000, 143000]
    assert [c.revision for c in ser] == ["step0", "step1000", "step143000"]
    assert all(c.locator == "EleutherAI/pythia-160m" and not c.is_local for c in ser)
    assert len(pythia_steps()) == 154 and pythia_steps()[:3] == [0, 1, 2]
    assert parse_series("pythia:EleutherAI/pythia-70m").steps == pythia_steps()
    r = parse_series("pythia:EleutherAI/pythia-160m@0-143000/8").steps
    assert r[0] == 0 and r[-1] == 143000 and set(r) <= set(pythia_steps()) and len(r) <= 8
    with pytest.raises(ValueError, match="increasing order"):
        parse_series("pythia:EleutherAI/pythia-160m@1000,0")
    with pytest.raises(ValueError, match="unique"):
        parse_series("pythia:EleutherAI/pythia-160m@0,0")
    with pytest.raises(ValueError, match="not Pythia checkpoints"):
        parse_series("pythia:EleutherAI/pythia-160m@0,1500")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_series("pythia:EleutherAI/pythia-160m@0,x")
    with pytest.raises(ValueError, match="no model id"):
        parse_series("pythia:@0")
    h = parse_series("hub:org/m@a=0,b=10")
    assert h.steps == [0, 10] and h.at(10).revision == "b"


def test_series_single_model(tmp_path):
    """model:NAME is a one-checkpoint series: an offline name resolves to its packaged folder
    (so its weights are hashed like any checkpoint's), a folder stays a folder, a hub id keeps
    its revision (default main); the step comes after '#'. Bad SPECs name themselves."""
    from svfcheck.real.models import OFFLINE_MODELS

    m = parse_series("model:minilm-l6")
    assert m.steps == [0] and m.name == "minilm-l6" and m.source == "model"
    assert m[0].is_local and m[0].locator == str(OFFLINE_MODELS["minilm-l6"].locate())
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    f = parse_series(f"model:{folder}#500")
    assert f.steps == [500] and f[0].locator == str(folder) and f[0].is_local and f.name == "mine"
    h = parse_series("model:EleutherAI/pythia-160m@step143000#143000")
    assert h.steps == [143000] and h[0].revision == "step143000" and not h[0].is_local and h.name == "pythia-160m"
    assert parse_series("model:org/m")[0].revision == "main"
    for bad, needle in (("model:", "expected model:NAME"), ("model:org/m@", "expected model:NAME"),
                        ("model:minilm-l6#x", "non-negative whole number"), ("model:smollm-135m", "did you mean"),
                        ("model:minilm-l6@v2", "single packaged version"), (f"model:{folder}@v1", "local folder")):
        with pytest.raises(ValueError, match=needle) as e:
            parse_series(bad)
        assert bad in str(e.value)


def test_series_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="neither an existing path"):
        parse_series(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="empty"):
        parse_series("  ")
    with pytest.raises(ValueError, match="no run.json"):
        parse_series(f"run:{tmp_path}")
    with pytest.raises(ValueError, match="empty"):
        CheckpointSeries("x", ())
    with pytest.raises(ValueError, match="non-negative"):
        CheckpointSeries("x", (Checkpoint(-1, "m", "r"),))


def test_series_load_calls_load_model(tmp_path, monkeypatch):
    import svfcheck.real.models as models

    calls = []
    monkeypatch.setattr(models, "load_model", lambda name, **kw: calls.append((name, kw)) or "M")
    ser = parse_series("pythia:EleutherAI/pythia-160m@0,1000")
    assert ser.load(1000, progress=False) == "M"
    assert calls == [("EleutherAI/pythia-160m", {"revision": "step1000", "progress": False})]


def test_sweep_resumes_and_never_recomputes(tmp_path):
    from svfcheck.emergence.sweep import load_sweep, sweep

    for s in (0, 1, 2, 4):
        _fake_ckpt(tmp_path / "ck" / f"step{s}")
    ser = CheckpointSeries.from_folder(tmp_path / "ck")
    calls = []

    def fn(c):
        calls.append(c.step)
        if c.step == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # simulated kill midway
        return {"s": c.step * 0.5}

    with pytest.raises(KeyboardInterrupt):
        sweep(ser, fn, tmp_path / "a.json", key="k")
    assert list(load_sweep(tmp_path / "a.json")["results"]) == ["0", "1"]
    out = sweep(ser, fn, tmp_path / "a.json", key="k")
    assert calls == [0, 1, 2, 2, 4] and out == {s: {"s": s * 0.5} for s in (0, 1, 2, 4)}
    ref = sweep(ser, lambda c: {"s": c.step * 0.5}, tmp_path / "b.json", key="k")
    assert ref == out
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    sweep(ser, fn, tmp_path / "a.json", key="k")
    assert calls == [0, 1, 2, 2, 4]  # finished steps are never recomputed
    with pytest.raises(ValueError, match="different analysis"):
        sweep(ser, fn, tmp_path / "a.json", key="other")


def test_head_scores_shapes_on_random_model():
    from svfcheck.emergence import heads

    cfg = config.preset("induction-gpt2")
    m = train.build_model(cfg)
    s = heads.head_scores(m, cfg.task, n_sequences=4)
    assert s.induction.shape == s.previous_token.shape == (cfg.model.n_layers, cfg.model.n_heads)
    assert ((s.induction >= 0) & (s.induction <= 1)).all()
    assert ((s.previous_token >= 0) & (s.previous_token <= 1)).all()
    r = s.ranked("induction")
    assert len(r) == 8 and r[0][2] >= r[-1][2]
    assert set(s.to_dict()) == {"induction", "previous_token", "length", "n_sequences"}
    with pytest.raises(ValueError, match="kind"):
        s.ranked("nope")


def test_cli_checkpoints(tmp_path, capsys):
    from svfcheck.emergence import cli

    assert cli.main(["--checkpoints", "pythia:EleutherAI/pythia-160m@0,1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["revision"] for c in out["checkpoints"]] == ["step0", "step1000"]
    assert cli.main(["--checkpoints", str(tmp_path / "nope")]) == 2
    assert "neither an existing path" in capsys.readouterr().err


def test_induction_llama_preset_is_shortcut_proof_and_roundtrips():
    cfg = config.preset("induction-llama")
    assert cfg.model.arch == "llama" and cfg.task.max_prefix > 0 and cfg.task.max_gap > 0
    assert cfg.task.context_length == 1 + 8 + 2 * 12 + 12
    assert config.LMTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    m = train.build_model(cfg)
    assert m.config.model_type == "llama" and m.config.max_position_embeddings == cfg.task.context_length
