"""The files of a training run folder: every read and write of them is here.

Layout of ``out_dir`` (written by :func:`svfcheck.emergence.train.train_run`):

- ``step{N}/`` (:func:`save_checkpoint`) — ``save_pretrained`` model + tokenizer, loadable with
  ``AutoModelForCausalLM``/``AutoTokenizer`` and by ``svfcheck.real.models.load_model``, plus
  ``svfcheck_checkpoint.json`` (step and curve entry); written to ``.tmp-step{N}`` and renamed.
- ``run.json`` (:func:`write_run_json`, :func:`read_run`) — config, training curve, checkpoint
  list, summary (:func:`run_summary`), ``"finished"``. Reproducible: a pure function of the
  config (no timings, no paths).
- ``resume.safetensors`` (:func:`save_resume`, :func:`load_resume`) — weights and AdamW state as
  tensors; config, step, curve so far and the optimizer's hyper-parameters as JSON in the
  header; replaced atomically after each checkpoint and deleted when the run finishes. Never a
  pickle: an old ``resume.pt`` (pickle format) is refused, never loaded
  (:func:`refuse_legacy_resume`), since unpickling a planted file runs arbitrary code.
- ``timing.json`` (:func:`read_timings`, :func:`write_timings`) — wall-clock and CPU time of
  every session.

A damaged file is a ``ValueError`` naming the file and what to do, never a raw decoder traceback.
Imports :mod:`.config` and :mod:`.tasks` from this package (and ``svfcheck.real.models`` when
saving a checkpoint), never :mod:`.series` or :mod:`.records`: :mod:`.series` reads runs through
:func:`read_run`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from .._validate import is_int
from .config import LMTrainConfig
from .tasks import InductionTask

__all__ = [
    "RUN_FORMAT",
    "RUN_FILE",
    "RESUME_FILE",
    "LEGACY_RESUME_FILE",
    "RESUME_FORMAT",
    "RESUME_KEY",
    "TIMING_FILE",
    "JUMP_THRESHOLD",
    "run_summary",
    "read_json",
    "dump_json_atomic",
    "read_run",
    "write_run_json",
    "read_timings",
    "write_timings",
    "refuse_legacy_resume",
    "save_resume",
    "load_resume",
    "save_checkpoint",
]

RUN_FORMAT = "svfcheck-run/1"
RUN_FILE = "run.json"
TIMING_FILE = "timing.json"
RESUME_FILE = "resume.safetensors"
LEGACY_RESUME_FILE = "resume.pt"
RESUME_FORMAT = 1  # layout of the JSON under RESUME_KEY in the resume file's header
RESUME_KEY = "svfcheck_resume"
JUMP_THRESHOLD = 0.5  # induction accuracy marking "induction has formed" (chance ≈ 1/65)

RUN_JSON_ADVICE = "delete it and rerun the training to rebuild it, or choose another output folder (--out)"
RESUME_ADVICE = "delete it to restart the run from step 0, or choose another output folder (--out)"
TIMING_ADVICE = "delete it (it only records wall-clock times) or choose another output folder (--out)"


# ---- JSON ------------------------------------------------------------------------------------
def dump_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, advice: str) -> dict:
    """The JSON object in ``path``; a damaged file (truncated, not JSON, not an object) is a
    ``ValueError`` naming the file and what to do (``advice``), not a raw decoder traceback."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); {advice}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); {advice}")
    return d


# ---- run.json --------------------------------------------------------------------------------
def run_summary(cfg: LMTrainConfig, curve: list[dict]) -> dict:
    """The ``summary`` of ``run.json``: final step and loss, and for induction the accuracy at
    the start and end and the first logged step at or above :data:`JUMP_THRESHOLD`."""
    last = curve[-1]
    s: dict[str, Any] = {"final_step": last["step"], "final_eval_loss": last["eval_loss"]}
    if isinstance(cfg.task, InductionTask):
        s["initial_induction_accuracy"] = curve[0]["induction_accuracy"]
        s["final_induction_accuracy"] = last["induction_accuracy"]
        s["chance_accuracy"] = 1.0 / cfg.task.vocab_size
        jump = next((e["step"] for e in curve if e["induction_accuracy"] >= JUMP_THRESHOLD), None)
        s["induction_jump_step"] = jump
        s["induction_jump_threshold"] = JUMP_THRESHOLD
    else:
        s["initial_eval_loss"] = curve[0]["eval_loss"]
    return s


def write_run_json(out: Path, cfg: LMTrainConfig, *, checkpoints: list[int], curve: list[dict],
                   finished: bool, extra: dict) -> None:
    """Write ``out/run.json`` atomically; ``extra`` (e.g. the corpus summary) goes at the end."""
    dump_json_atomic(
        out / RUN_FILE,
        {
            "format": RUN_FORMAT,
            "finished": finished,
            "config": cfg.to_dict(),
            "checkpoints": checkpoints,
            "curve": curve,
            "summary": run_summary(cfg, curve) if curve else {},
            "environment": {
                "torch": torch.__version__.split("+")[0],
                "python": ".".join(map(str, sys.version_info[:2])),
            },
            **extra,
        },
    )


def read_run(out_dir) -> dict:
    """Read and check a run folder's ``run.json`` (finished or not). Returns the fields of
    :class:`~svfcheck.emergence.records.RunResult` it holds: ``config`` (an
    :class:`~svfcheck.emergence.config.LMTrainConfig`), ``curve``, ``checkpoints``, ``finished``,
    ``summary``. A missing, foreign or damaged file is a ``ValueError`` naming it."""
    out = Path(out_dir)
    p = out / RUN_FILE
    if not p.is_file():
        raise ValueError(f"{out} holds no run.json — not an svfcheck training run (or not started)")
    d = read_json(p, RUN_JSON_ADVICE)
    if d.get("format") != RUN_FORMAT:
        raise ValueError(f"{p} has format {d.get('format')!r}, expected {RUN_FORMAT!r}")
    try:
        return {
            "config": LMTrainConfig.from_dict(d["config"]),
            "curve": list(d["curve"]),
            "checkpoints": list(d["checkpoints"]),
            "finished": bool(d["finished"]),
            "summary": d.get("summary", {}),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p} is damaged ({type(exc).__name__}: {exc}); {RUN_JSON_ADVICE}") from None


# ---- timing.json -----------------------------------------------------------------------------
def read_timings(out: Path) -> dict:
    """``out/timing.json`` (``{"sessions": [...]}``; a fresh one when absent), checked."""
    path = out / TIMING_FILE
    timings = read_json(path, TIMING_ADVICE) if path.is_file() else {"sessions": []}
    if not isinstance(timings.get("sessions"), list):
        raise ValueError(f'{path} is damaged (no "sessions" list); {TIMING_ADVICE}')
    return timings


def write_timings(out: Path, timings: dict) -> None:
    dump_json_atomic(out / TIMING_FILE, timings)


# ---- resume.safetensors ----------------------------------------------------------------------
def refuse_legacy_resume(out: Path) -> None:
    """Raise if ``out`` holds an old pickle-format ``resume.pt`` and no ``resume.safetensors``."""
    legacy = out / LEGACY_RESUME_FILE
    if legacy.exists() and not (out / RESUME_FILE).exists():
        raise ValueError(
            f"{legacy} is an old pickle-format resume file; svfcheck never loads it because "
            "unpickling a file can run arbitrary code. Delete it to restart this run from step 0, "
            "or choose another output folder (--out)"
        )


def save_resume(path: Path, state: dict, model, opt) -> None:
    """Write the resume file atomically: model weights (``model.<name>``) and AdamW state
    (``optim.<param index>.<field>``) as safetensors tensors; ``state`` (config, step, curve, …),
    the optimizer's param_groups and the state field names as JSON in the header metadata."""
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    fields = {}
    for i, st in sd["state"].items():
        fields[str(i)] = sorted(st)
        for f, v in st.items():
            if not isinstance(v, torch.Tensor):  # AdamW keeps tensors only
                raise TypeError(f"optimizer state {i}.{f} is a {type(v).__name__}, not a tensor")
            tensors[f"optim.{i}.{f}"] = v.detach().cpu().clone()
    meta = {"format": RESUME_FORMAT, **state, "param_groups": sd["param_groups"], "optim_state": fields}
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={RESUME_KEY: json.dumps(meta)})
    os.replace(tmp, path)


def load_resume(path: Path, cfg_dict: dict, model, opt) -> dict:
    """Restore ``model`` and ``opt`` from the resume file at ``path`` and return its JSON state
    (``step``, ``curve``, ``checkpoints``, ``pending``). A damaged file is a ``ValueError``
    naming it; a file of another config is refused."""
    from safetensors import SafetensorError, safe_open

    def damaged(why: str) -> ValueError:
        return ValueError(f"{path} is damaged or not an svfcheck resume file ({why}); {RESUME_ADVICE}")

    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(RESUME_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    if header is None:
        raise damaged(f"no {RESUME_KEY!r} metadata")
    try:
        st = json.loads(header)
    except ValueError as exc:
        raise damaged(f"metadata is not JSON: {exc}") from None
    if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
        got = st.get("format") if isinstance(st, dict) else None
        raise damaged(f"format {got!r}, expected {RESUME_FORMAT}")
    if st.get("config") != cfg_dict:
        raise ValueError(
            f"{path} belongs to a run with a different config; choose another out_dir or delete it"
        )
    try:
        step, curve, checkpoints, pending = st["step"], st["curve"], st["checkpoints"], st["pending"]
        groups, fields = st["param_groups"], st["optim_state"]
        if not (is_int(step) and isinstance(curve, list) and isinstance(checkpoints, list)
                and isinstance(pending, list) and isinstance(groups, list) and isinstance(fields, dict)):
            raise TypeError("bad field types")
        names = [f"model.{k}" for k in model.state_dict()]
        names += [f"optim.{i}.{f}" for i, fs in fields.items() for f in fs]
        missing = sorted(set(names) - set(tensors))
        extra = sorted(set(tensors) - set(names))
        if missing or extra:
            raise KeyError(f"missing tensors {missing[:3]}, unexpected tensors {extra[:3]}")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        for g in groups:
            g["betas"] = tuple(g["betas"])  # JSON made the tuple a list
        state = {int(i): {f: tensors[f"optim.{i}.{f}"] for f in fs} for i, fs in fields.items()}
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: shape mismatch
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    return {"step": step, "curve": curve, "checkpoints": checkpoints, "pending": pending}


# ---- step{N}/ --------------------------------------------------------------------------------
def save_checkpoint(out: Path, step: int, model, tokenizer, metrics: dict) -> None:
    """Write ``out/step{step}/`` (model, tokenizer, ``svfcheck_checkpoint.json``) atomically."""
    final = out / f"step{step}"
    tmp = out / f".tmp-step{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from ..real.models import hf_progress_bars

    with hf_progress_bars(False):
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "svfcheck_checkpoint.json").write_text(
        json.dumps({"format": RUN_FORMAT, "step": step, "metrics": metrics}, indent=1) + "\n"
    )
    if final.exists():  # left over from a crash after the rename but before the resume file
        shutil.rmtree(final)
    os.replace(tmp, final)
