"""Session-scoped training runs and their SAD analyses, shared by every emergence test file
(each preset is trained once per session; the analyses reuse the runs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from svfcheck.emergence import config, train
from svfcheck.emergence.tasks import InductionTask

PROBE_SEED = 99


def _probe(task: InductionTask) -> torch.Tensor:
    return task.sample(8, np.random.default_rng(PROBE_SEED)).input_ids


@pytest.fixture(scope="session")
def induction_run(tmp_path_factory, device):
    """The default induction-gpt2 run (result, {step: probe logits}, probe ids)."""
    cfg = config.preset("induction-gpt2")
    out = tmp_path_factory.mktemp("induction") / "run"
    probe = _probe(cfg.task)
    logits = {}

    def grab(step, model):
        with torch.no_grad():
            logits[step] = model(input_ids=probe.to(device)).logits.cpu()

    result = train.train_run(cfg, out, device=device, progress=False, on_checkpoint=grab, num_threads=1)
    return result, logits, probe


@pytest.fixture(scope="session")
def induction_llama_run(tmp_path_factory, device):
    """The induction-llama run (RoPE, shortcut-proof task: the classic circuit forms)."""
    out = tmp_path_factory.mktemp("induction_llama") / "run"
    return train.train_run(config.preset("induction-llama"), out, device=device, progress=False, num_threads=1)


@pytest.fixture(scope="session")
def llama_run(tmp_path_factory, device):
    """The default text-llama run."""
    out = tmp_path_factory.mktemp("llama") / "run"
    return train.train_run(config.preset("text-llama"), out, device=device, progress=False, num_threads=1)


@pytest.fixture(scope="session")
def induction_cli(tmp_path_factory, induction_run):
    """``svfcheck emergence --run induction-gpt2 --out DIR`` with the session's finished run
    copied into ``DIR/run`` (the CLI skips training a finished run and analyses it).
    Returns (exit code, DIR, stdout)."""
    import contextlib
    import io

    from svfcheck.cli import main

    r, _, _ = induction_run
    out = tmp_path_factory.mktemp("induction_cli")
    shutil.copytree(r.out_dir, out / "run")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["emergence", "--run", "induction-gpt2", "--out", str(out), "--no-progress"])
    return code, out, buf.getvalue()
