"""End-to-end training runs (``gpu``-marked: minutes on CPU).

Thresholds:
- induction accuracy at the final checkpoint ≥ 0.95 on 256 held-out sequences (≈3,700 scored
  predictions): block tokens are distinct, so an induction circuit predicts every scored
  token; 0.95 leaves room for a not-yet-perfect circuit but is far above any non-induction
  strategy (guessing among the block's tokens gives ≤ 1/min_len).
- at step 0 the accuracy is within chance (≤ 3/vocab).
- some head's induction score rises by ≥ 0.3 (absolute attention mass) over its step-0 value;
  at initialisation attention is near uniform, so every score is ≈ 1/position ≲ 0.1.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from svfcheck.emergence import config, corpus, heads, series, train

pytestmark = pytest.mark.gpu


def test_induction_accuracy_rises(induction_run):
    r, _, _ = induction_run
    assert r.finished and not r.skipped
    s = r.summary
    print("induction run:", json.dumps(s), f"wall {r.wall_time_s:.1f}s")
    vocab = r.config.task.vocab_size
    assert r.curve[0]["step"] == 0
    assert s["initial_induction_accuracy"] <= 3 / vocab
    assert s["final_induction_accuracy"] >= 0.95
    assert s["induction_jump_step"] is not None and 0 < s["induction_jump_step"] < r.config.max_steps
    assert r.curve[-1]["eval_loss"] < 0.3 * r.curve[0]["eval_loss"]


def test_run_json_and_series(induction_run):
    r, _, _ = induction_run
    d = json.loads((r.out_dir / "run.json").read_text())
    assert d["finished"] and d["checkpoints"] == list(r.config.schedule())
    assert d["config"] == r.config.to_dict()
    assert {"step", "lr", "train_loss", "eval_loss", "induction_accuracy"} <= set(d["curve"][1])
    ser = series.parse_series(str(r.out_dir))
    assert ser.source == "run" and ser.steps == d["checkpoints"]
    assert ser.metadata["curve"] == d["curve"]
    assert not (r.out_dir / "resume.safetensors").exists() and not (r.out_dir / "resume.pt").exists()


def test_series_loads_through_engine_loader(induction_run):
    r, logits, probe = induction_run
    ser = r.series()
    lm = ser.load(r.config.max_steps, progress=False)  # svfcheck.real.models.load_model
    assert lm.source == "local" and lm.architecture == "gpt2"
    with torch.no_grad():
        got = lm.model(input_ids=probe).logits
    # eager attention (the engine's) vs the training run's default kernel: same up to rounding
    torch.testing.assert_close(got, logits[r.config.max_steps], rtol=1e-4, atol=1e-4)


def test_checkpoints_reload_identically(induction_run, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r, logits, probe = induction_run
    for step in (0, r.checkpoints[len(r.checkpoints) // 2], r.config.max_steps):
        m = AutoModelForCausalLM.from_pretrained(r.out_dir / f"step{step}").to(device).eval()
        with torch.no_grad():
            got = m(input_ids=probe.to(device)).logits.cpu()
        assert torch.equal(got, logits[step]), f"step {step}: reloaded logits differ"
    tok = AutoTokenizer.from_pretrained(r.out_dir / f"step{r.config.max_steps}")
    text = tok.decode(probe[0], skip_special_tokens=True)
    assert tok(text).input_ids == probe[0].tolist()


def _head_scores(r, step, device):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(r.out_dir / f"step{step}", attn_implementation="eager")
    return heads.head_scores(m.to(device), r.config.task, device=device)


def test_induction_heads_found_by_pattern(induction_run, device):
    r, _, _ = induction_run
    s0, s1 = _head_scores(r, 0, device), _head_scores(r, r.config.max_steps, device)
    print("induction scores step 0:", s0.induction.round(3).tolist())
    print("induction scores final :", s1.induction.round(3).tolist())
    print("prev-token scores final:", s1.previous_token.round(3).tolist())
    assert s0.induction.max() < 0.2  # near-uniform attention at initialisation
    gain = s1.induction - s0.induction
    assert gain.max() >= 0.3
    (_, _, top), *_ = s1.ranked("induction")
    assert top >= 0.4


@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured: the default induction-gpt2 run reaches ~0.99 accuracy, but its highest "
        "induction-pattern heads (scores ~0.3-0.5) are in layer 0 and no previous-token head "
        "forms (max previous-token score ~0.26, layer 1): within 1000 steps the 2-layer GPT-2 "
        "with learned absolute positions solves the task with layer-0 heads that read tokens at "
        "position-dependent offsets plus the MLPs, not with the classic previous-token -> "
        "induction (K-composition) circuit. Variants with random prefixes/gaps (which defeat "
        "that shortcut) reached only ~0.43 accuracy by step 900 in our CPU budget; the RoPE "
        "preset induction-llama does form the classic circuit (test_classic_induction_circuit_forms_with_rope)."
    ),
)
def test_classic_induction_circuit(induction_run, device):
    r, _, _ = induction_run
    s1 = _head_scores(r, r.config.max_steps, device)
    (li, _, top), *_ = s1.ranked("induction")
    (lp, _, ptop), *_ = s1.ranked("previous_token")
    assert top >= 0.4 and li >= 1
    assert ptop >= 0.4 and lp < li


def test_classic_induction_circuit_forms_with_rope(induction_llama_run, device):
    """induction-llama (RoPE; random prefix and gap, so fixed-offset shortcuts fail): near-perfect
    accuracy through a layer-0 previous-token head feeding layer-1 induction heads, found by
    attention pattern (thresholds as in the module docstring: 0.4 attention mass on the target,
    where a uniform head scores <= ~0.1)."""
    r = induction_llama_run
    s = r.summary
    print("induction-llama:", json.dumps(s), f"wall {r.wall_time_s:.1f}s")
    assert s["initial_induction_accuracy"] <= 3 / r.config.task.vocab_size
    assert s["final_induction_accuracy"] >= 0.95
    s0, s1 = _head_scores(r, 0, device), _head_scores(r, r.config.max_steps, device)
    print("induction scores final :", s1.induction.round(3).tolist())
    print("prev-token scores final:", s1.previous_token.round(3).tolist())
    assert s0.induction.max() < 0.2 and s0.previous_token.max() < 0.2
    (li, _, top), *_ = s1.ranked("induction")
    (lp, _, ptop), *_ = s1.ranked("previous_token")
    assert top >= 0.4 and li >= 1
    assert ptop >= 0.4 and lp < li


def _small(cfg_name: str, **kw):
    """The preset's code path with a much smaller model/batch (resumability is about state)."""
    tiny = config.LMSpec(arch="gpt2", d_model=32, n_layers=2, n_heads=2, d_ff=64)
    return config.preset(cfg_name, model=tiny, batch_size=8, eval_size=32, **kw)


def test_resume_after_interruption_is_identical(tmp_path, device):
    cfg = _small("induction-gpt2", max_steps=40, warmup_steps=5, log_every=5, checkpoint_every=10)
    full = train.train_run(cfg, tmp_path / "full", device=device, progress=False)
    assert full.finished
    part = train.train_run(cfg, tmp_path / "cut", device=device, progress=False, stop_after=4)
    assert not part.finished and part.checkpoints == [0, 1, 2, 4]
    assert (tmp_path / "cut" / "resume.safetensors").exists()
    assert not json.loads((tmp_path / "cut" / "run.json").read_text())["finished"]

    class Crash(RuntimeError):
        pass

    def crash(step, model):
        if step == 16:
            raise Crash()

    with pytest.raises(Crash):
        train.train_run(cfg, tmp_path / "cut", device=device, progress=False, on_checkpoint=crash)
    rest = train.train_run(cfg, tmp_path / "cut", device=device, progress=False)
    assert rest.finished and rest.resumed_from == 16
    a = json.loads((tmp_path / "full" / "run.json").read_text())
    b = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert a == b
    assert (tmp_path / "full" / "run.json").read_text() == (tmp_path / "cut" / "run.json").read_text()
    from safetensors.torch import load_file

    for step in cfg.schedule():
        wa = load_file(tmp_path / "full" / f"step{step}" / "model.safetensors")
        wb = load_file(tmp_path / "cut" / f"step{step}" / "model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"weights differ at step {step}"
    # a finished run is never recomputed
    mtime = (tmp_path / "cut" / "run.json").stat().st_mtime_ns
    again = train.train_run(cfg, tmp_path / "cut", device=device, progress=False)
    assert again.skipped and again.finished and again.curve == rest.curve
    assert (tmp_path / "cut" / "run.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different config"):
        train.train_run(replace(cfg, seed=1), tmp_path / "cut", device=device, progress=False)


def test_text_llama_learns_below_unigram_entropy(llama_run):
    r = llama_run
    cfg = r.config
    # unigram entropy of the corpus bytes, computed independently of the training code
    text = corpus.load_corpus().text.encode("utf-8")
    counts = torch.bincount(torch.tensor(list(text)), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    h1 = float(-(p * p.log()).sum())
    final = r.curve[-1]["eval_loss"]
    print(f"text-llama: unigram entropy {h1:.3f} nats, eval loss {r.curve[0]['eval_loss']:.3f} -> "
          f"{final:.3f}, wall {r.wall_time_s:.1f}s")
    assert r.curve[0]["eval_loss"] > math.log(259) - 0.5  # initialisation: near uniform
    assert final < h1 - 0.5
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(r.out_dir / f"step{cfg.max_steps}")
    assert m.config.model_type == "llama" and m.config.num_key_value_heads < m.config.num_attention_heads
    tok = AutoTokenizer.from_pretrained(r.out_dir / f"step{cfg.max_steps}")
    assert tok.decode(tok("assert x").input_ids, skip_special_tokens=True) == "assert x"
