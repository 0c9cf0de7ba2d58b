"""A training run folder's files are never trusted blindly (svfcheck.emergence.runfiles, written by .train).

- The resume state is a safetensors file (tensors + JSON header), never a pickle: a planted
  ``resume.pt`` is refused unread, and pickle bytes planted as ``resume.safetensors`` are a
  clean "damaged file" error. The payload used here is armed — unpickling it creates a sentinel
  file, which each test checks did not happen (and the last step of the first test shows the
  payload does fire when unpickled, so the check can fail).
- Damaged ``resume.safetensors``, ``run.json`` and ``timing.json`` are ``ValueError``s that name
  the file and say what to do, not decoder tracebacks.

Fast (unmarked): a 2-layer d=32 GPT-2 trained for a few steps on CPU (< 1 s).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from svfcheck.emergence import config, records, runfiles, train

TINY = config.preset(
    "induction-gpt2",
    model=config.LMSpec(arch="gpt2", d_model=32, n_layers=2, n_heads=2, d_ff=64),
    batch_size=8,
    eval_size=16,
    max_steps=8,
    warmup_steps=2,
    log_every=2,
    checkpoint_every=4,
)


def _train(out, **kw):
    return train.train_run(TINY, out, progress=False, num_threads=1, **kw)


class _Payload:
    """Unpickling this creates the file ``path`` (stands in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A TINY run stopped after 2 checkpoints (steps 0, 1): run.json + resume.safetensors."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    r = _train(out, stop_after=2)
    assert not r.finished and r.checkpoints == [0, 1]
    return out


@pytest.fixture
def run_copy(interrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    return out


def _path_in_message(path) -> str:
    return re.escape(str(path))


def test_planted_pickle_resume_pt_is_never_loaded(run_copy, tmp_path):
    """An old-format resume.pt beside an unfinished run (its resume.safetensors gone) is refused
    without being read; the error names the file, the reason and what to do."""
    sentinel = tmp_path / "PWNED"
    (run_copy / "resume.safetensors").unlink()
    legacy = run_copy / "resume.pt"
    torch.save({"model": _Payload(sentinel)}, legacy)
    with pytest.raises(ValueError, match=_path_in_message(legacy)) as e:
        _train(run_copy)
    msg = str(e.value)
    assert "pickle" in msg and "never loads" in msg and "Delete it" in msg and "--out" in msg
    assert not sentinel.exists()
    assert legacy.exists()  # refused, not silently deleted
    # the payload is armed: the old loader (weights_only=False) would have run it
    torch.load(legacy, weights_only=False)["model"].close()
    assert sentinel.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_bytes_as_resume_safetensors_fail_cleanly(run_copy, tmp_path, how):
    sentinel = tmp_path / "PWNED"
    planted = run_copy / "resume.safetensors"
    with open(planted, "wb") as f:
        if how == "torch.save":
            torch.save(_Payload(sentinel), f)
        else:
            pickle.dump(_Payload(sentinel), f)
    with pytest.raises(ValueError, match=_path_in_message(planted)) as e:
        _train(run_copy)
    assert "damaged" in str(e.value) and "delete it" in str(e.value)
    assert not sentinel.exists()


def _rewrite(path, drop: str | None = None, meta=None):
    """Rewrite the resume file without tensor ``drop`` and/or with header metadata ``meta``."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}
        old = f.metadata()
    save_file(tensors, path, metadata=old if meta is None else meta)


def _damage(path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no metadata":
        _rewrite(path, meta={})
    elif how == "metadata not json":
        _rewrite(path, meta={runfiles.RESUME_KEY: "{not json"})
    elif how == "missing tensor":
        _rewrite(path, drop="optim.0.exp_avg")
    elif how == "wrong format":
        with safe_open(str(path), framework="pt") as f:
            st = json.loads(f.metadata()[runfiles.RESUME_KEY])
        st["format"] = 99
        _rewrite(path, meta={runfiles.RESUME_KEY: json.dumps(st)})
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["garbage", "truncated", "empty", "no metadata", "metadata not json", "missing tensor", "wrong format"]
)
def test_damaged_resume_file_names_the_file(run_copy, how):
    path = run_copy / "resume.safetensors"
    _damage(path, how)
    with pytest.raises(ValueError, match=_path_in_message(path)) as e:
        _train(run_copy)
    assert "damaged" in str(e.value) and "delete it to restart the run" in str(e.value)


def test_resume_file_round_trips_model_and_optimizer_exactly(tmp_path):
    """What load_resume restores equals what save_resume saw (tensors bit-equal, param_groups
    equal with their Python types) — the basis of the bit-identical resume."""
    model = train.build_model(TINY)
    opt = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.01},
         {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99),
    )
    for step in range(3):
        ids, labels = TINY.task.train_batch(4, 0, step)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    state = {"config": TINY.to_dict(), "step": 3, "curve": [{"step": 2, "eval_loss": 0.1 + 0.2}],
             "checkpoints": [0, 2], "pending": [1.0 / 3]}
    path = tmp_path / "resume.safetensors"
    runfiles.save_resume(path, state, model, opt)

    other = replace(TINY, seed=5)
    model2 = train.build_model(other)  # other initial weights, so the load must overwrite them
    assert not torch.equal(model2.lm_head.weight, model.lm_head.weight)
    opt2 = torch.optim.AdamW(
        [{"params": [p for p in model2.parameters() if p.dim() >= 2]},
         {"params": [p for p in model2.parameters() if p.dim() < 2]}],
        lr=0.5,
    )
    got = runfiles.load_resume(path, TINY.to_dict(), model2, opt2)
    assert got == {k: state[k] for k in ("step", "curve", "checkpoints", "pending")}
    a, b = model.state_dict(), model2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = opt.state_dict(), opt2.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert all(type(g["betas"]) is tuple for g in sb["param_groups"])
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        assert all(torch.equal(sa["state"][i][f], sb["state"][i][f]) for f in sa["state"][i])
    with pytest.raises(ValueError, match="different config"):
        runfiles.load_resume(path, other.to_dict(), model2, opt2)


def test_training_draws_no_global_rng():
    """Why no RNG state is saved: a training step (dropout off, batches from (seed, step))
    leaves torch's global generator untouched, so a resumed run needs none."""
    model = train.build_model(TINY)
    model.train()
    before = torch.get_rng_state().clone()
    ids, labels = TINY.task.train_batch(4, 0, 0)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("content", ["{\"format\": \"svfcheck-run/1\", \"fini", "", "[1, 2]", "\x00\xff"])
def test_damaged_run_json_names_the_file(run_copy, content):
    p = run_copy / "run.json"
    p.write_bytes(content.encode("latin-1"))
    for call in (lambda: _train(run_copy), lambda: records.load_run(run_copy)):
        with pytest.raises(ValueError, match=_path_in_message(p)) as e:
            call()
        assert "damaged" in str(e.value) and "delete it" in str(e.value)


def test_run_json_missing_fields_names_the_file(run_copy):
    p = run_copy / "run.json"
    d = json.loads(p.read_text())
    del d["curve"]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=_path_in_message(p)):
        records.load_run(run_copy)


def test_damaged_timing_json_names_the_file_before_training(run_copy):
    p = run_copy / "timing.json"
    p.write_text('{"sessions": [')
    before = (run_copy / "resume.safetensors").read_bytes()
    with pytest.raises(ValueError, match=_path_in_message(p)) as e:
        _train(run_copy)
    assert "wall-clock" in str(e.value)
    assert (run_copy / "resume.safetensors").read_bytes() == before  # refused before any training
    assert not (run_copy / "step2").exists()


def test_intact_copy_resumes_and_finishes(run_copy):
    """The control for the tests above: the undamaged copy resumes at step 1 and finishes."""
    r = _train(run_copy)
    assert r.finished and r.resumed_from == 1 and r.checkpoints == list(TINY.schedule())
    assert not (run_copy / "resume.safetensors").exists()
    assert len(json.loads((run_copy / "timing.json").read_text())["sessions"]) == 2
