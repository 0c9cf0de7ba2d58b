"""The training loop: tiny transformers trained from scratch on CPU, with Pythia-like
checkpoint schedules. The runs (presets, architecture, optimiser settings) are configured in
:mod:`.config`; the files a run writes are read and written by :mod:`.runfiles`; the returned
:class:`~svfcheck.emergence.records.RunResult` is in :mod:`.records`.

:func:`train_run` writes ``out_dir/step{N}/`` (``save_pretrained`` model + tokenizer, loadable
with ``AutoModelForCausalLM``/``AutoTokenizer`` and by ``svfcheck.real.models.load_model``) at
every step of :meth:`LMTrainConfig.schedule` — step 0 is the initialisation, dense and
log-spaced early (1, 2, 4, …) then every ``checkpoint_every`` steps — and ``out_dir/run.json``
(config, training curve, checkpoint list, summary). Checkpoint ``N`` holds the weights after
``N`` optimizer updates.

Determinism and resumption: the initial weights come from ``torch.manual_seed(seed)``, every
batch is a function of ``(seed, step)``, dropout is off and the learning rate is a function of
the step, so a run is a pure function of its config (on one machine/thread count). After each
checkpoint, ``out_dir/resume.safetensors`` (weights and AdamW state as tensors; config, step,
curve so far and the optimizer's hyper-parameters as JSON in the header) is replaced atomically;
a rerun continues from it and produces the same checkpoints and ``run.json`` as an
uninterrupted run. No global RNG state is saved because training draws none (verified: the
torch generator is untouched by a training step of every preset). The resume file is never a
pickle: an old ``resume.pt`` (pickle format) is refused, never loaded, since unpickling a
planted file runs arbitrary code. A finished run (``run.json`` with ``"finished": true``) is
never recomputed. Wall-clock timings go to ``out_dir/timing.json`` (not to ``run.json``, which must be
reproducible).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .._validate import pos_int
from . import runfiles
from .config import LMTrainConfig, preset
from .corpus import byte_tokenizer, char_tokenizer, load_corpus
from .records import RunResult, load_run
from .tasks import InductionTask, TextTask, evaluate_induction, evaluate_lm_loss

__all__ = ["train_run", "build_model", "build_tokenizer", "lr_at", "sinusoids"]


def lr_at(cfg: LMTrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio·lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def sinusoids(n_positions: int, dim: int, std: float) -> torch.Tensor:
    """Sinusoidal position table (n_positions, dim) rescaled to standard deviation ``std``."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    t = torch.zeros(n_positions, dim, dtype=torch.float64)
    t[:, 0::2] = torch.sin(pos * freq)
    t[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return (t / t.std() * std).float()


def build_tokenizer(cfg: LMTrainConfig):
    if isinstance(cfg.task, InductionTask):
        return char_tokenizer(cfg.task.n_symbols)
    return byte_tokenizer()


def build_model(cfg: LMTrainConfig):
    """A freshly initialised model for ``cfg`` (initialised under ``torch.manual_seed(cfg.seed)``)."""
    m, t = cfg.model, cfg.task
    torch.manual_seed(cfg.seed)
    if m.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(
            vocab_size=t.vocab_size,
            n_positions=t.context_length,
            n_embd=m.d_model,
            n_layer=m.n_layers,
            n_head=m.n_heads,
            n_inner=m.d_ff,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = GPT2LMHeadModel(conf)
        if m.pos_init_std is not None:
            with torch.no_grad():
                model.transformer.wpe.weight.copy_(sinusoids(t.context_length, m.d_model, m.pos_init_std))
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.d_ff,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_kv_heads or m.n_heads,
        max_position_embeddings=t.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(conf)


def _eval(model, cfg: LMTrainConfig, device, held_out) -> dict:
    if isinstance(cfg.task, InductionTask):
        r = evaluate_induction(model, held_out, device)
        return {"eval_loss": r["loss"], "induction_accuracy": r["accuracy"]}
    return {"eval_loss": evaluate_lm_loss(model, held_out, device)}


def train_run(
    config: LMTrainConfig | str,
    out_dir,
    device: str = "cpu",
    progress: bool = True,
    *,
    stop_after: int | None = None,
    on_checkpoint: Callable[[int, Any], None] | None = None,
    num_threads: int | None = None,
) -> RunResult:
    """Train ``config`` (an :class:`~svfcheck.emergence.config.LMTrainConfig` or a preset name)
    into ``out_dir``.

    Resumes from ``out_dir/resume.safetensors`` when present; returns at once (``skipped=True``)
    when ``out_dir`` already holds the finished run. Raises ``ValueError`` if ``out_dir`` holds a
    run with a different config, a damaged ``run.json``/``timing.json``/resume file, or an old
    pickle-format ``resume.pt`` (never loaded: unpickling can run code). ``stop_after=k`` stops
    (unfinished) after ``k`` new checkpoints — a simulated interruption.
    ``on_checkpoint(step, model)`` is called after each checkpoint is written (the model is in
    eval mode; do not modify it).
    ``num_threads`` sets ``torch.set_num_threads`` for the duration of the run.
    """
    cfg = preset(config) if isinstance(config, str) else config
    if not isinstance(cfg, LMTrainConfig):
        raise ValueError(f"config must be an LMTrainConfig or a preset name, got {type(config).__name__}")
    if stop_after is not None:
        pos_int("stop_after", stop_after)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / runfiles.RUN_FILE
    if run_json.is_file():
        prev = runfiles.read_json(run_json, runfiles.RUN_JSON_ADVICE)
        if prev.get("config") != cfg.to_dict():
            raise ValueError(
                f"{out} already holds a run with a different config; choose another out_dir "
                "or delete it"
            )
        if prev.get("finished"):
            r = load_run(out)
            r.skipped = True
            return r

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        pos_int("num_threads", num_threads)
        torch.set_num_threads(num_threads)
    try:
        return _train(cfg, out, device, progress, stop_after, on_checkpoint)
    finally:
        torch.set_num_threads(old_threads)


def _optimizer(cfg: LMTrainConfig, model) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on biases, norms' gains)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )


def _held_out(cfg: LMTrainConfig):
    if isinstance(cfg.task, InductionTask):
        return cfg.task.eval_batch(cfg.eval_size, cfg.seed)
    return cfg.task.eval_ids(cfg.eval_size)


def _train(cfg: LMTrainConfig, out: Path, device, progress, stop_after, on_checkpoint) -> RunResult:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    c0 = time.process_time()
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg).to(device)
    opt = _optimizer(cfg, model)
    held_out = _held_out(cfg)

    cfg_dict = cfg.to_dict()
    sched_set = set(cfg.schedule())
    log_set = set(cfg.log_steps())
    curve: list[dict] = []
    checkpoints: list[int] = []
    pending: list[float] = []
    start = 0
    resumed_from = None
    resume_path = out / runfiles.RESUME_FILE
    runfiles.refuse_legacy_resume(out)
    # read (and validated) now, so that a damaged file stops the run before any work
    timings = runfiles.read_timings(out)
    if resume_path.is_file():
        st = runfiles.load_resume(resume_path, cfg_dict, model, opt)
        curve, checkpoints, pending = st["curve"], st["checkpoints"], st["pending"]
        start = resumed_from = st["step"]

    extra = {}
    if isinstance(cfg.task, TextTask):
        extra["corpus"] = load_corpus(cfg.task.corpus).summary()

    def write_run_json(finished: bool) -> None:
        runfiles.write_run_json(out, cfg, checkpoints=checkpoints, curve=curve, finished=finished, extra=extra)

    new_ckpts = 0

    def at_step(step: int) -> bool:
        """Log/checkpoint after ``step`` updates; True means stop now (simulated interruption)."""
        nonlocal pending, new_ckpts
        if step not in log_set:
            return False
        entry = {
            "step": step,
            "lr": lr_at(cfg, step - 1) if step > 0 else 0.0,
            "train_loss": (sum(pending) / len(pending)) if pending else None,
            **_eval(model, cfg, device, held_out),
        }
        pending = []
        curve.append(entry)
        if step in sched_set:
            model.eval()
            runfiles.save_checkpoint(out, step, model, tokenizer, entry)
            checkpoints.append(step)
            runfiles.save_resume(
                resume_path,
                {"config": cfg_dict, "step": step, "curve": curve, "checkpoints": checkpoints, "pending": pending},
                model,
                opt,
            )
            write_run_json(finished=False)
            if on_checkpoint is not None:
                on_checkpoint(step, model)
            model.train()
            new_ckpts += 1
            if stop_after is not None and new_ckpts >= stop_after and step < cfg.max_steps:
                return True
        return False

    model.train()
    stopped = False
    if start == 0 and not curve:
        stopped = at_step(0)
    bar = tqdm(
        total=cfg.max_steps, initial=start, disable=not progress, desc=cfg.preset, unit="step"
    )
    step = start
    try:
        while not stopped and step < cfg.max_steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            ids, labels = cfg.task.train_batch(cfg.batch_size, cfg.seed, step)
            ids, labels = ids.to(device), labels.to(device)
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            pending.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step in log_set:
                stopped = at_step(step)
                last = curve[-1]
                post = {"loss": f"{last['eval_loss']:.3f}"}
                if "induction_accuracy" in last:
                    post["acc"] = f"{last['induction_accuracy']:.2f}"
                bar.set_postfix(post)
    finally:
        bar.close()

    finished = step >= cfg.max_steps and not stopped
    if finished:
        write_run_json(finished=True)
        resume_path.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    timings["sessions"].append(
        {
            "from_step": start,
            "to_step": step,
            "wall_time_s": wall,
            "cpu_time_s": time.process_time() - c0,
            "threads": torch.get_num_threads(),
        }
    )
    runfiles.write_timings(out, timings)
    return RunResult(
        out_dir=out,
        config=cfg,
        curve=curve,
        checkpoints=checkpoints,
        finished=finished,
        summary=runfiles.run_summary(cfg, curve) if curve else {},
        resumed_from=resumed_from,
        wall_time_s=wall,
    )
