"""Bad input, as a new or hostile user gives it, to every subcommand, the gate and the pytest plugin.

Each row is one distinct mistake: the command line (``{name}`` placeholders are paths the
``world`` fixture makes), the exit code it must give and the words its message must contain —
the offending flag, file or value, so that the user knows what to change. Every row also
asserts that no traceback is printed: a user error is a message, never a crash report.

Exit codes (README, "Exit codes"): 2 for every user error here; the pytest plugin follows
pytest's own codes (4 usage error, 1 a failed item).

Most rows call ``svfcheck.cli.main`` in-process (one second each instead of a Python start-up
with torch); ``test_console_script_prints_no_traceback`` runs a few through the installed
``svfcheck`` script, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from svfcheck.cli import main
from tests._tiny_models import ioi_word_tokenizer, save_tiny_folder, save_unsupported_folder


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]  # each must appear in stderr (after placeholder substitution)
    code: int = 2
    env: dict = field(default_factory=dict)


def C(id_, argv: str, *needles: str, code: int = 2, **env) -> Case:
    return Case(id_, tuple(argv.split()), needles, code, env)


SPEC = """\
[model]
name = "{model}"
[task]
kind = "text"
n_prompts = {n_prompts}
prompt_tokens = 24
[pairs]
heads = "all"
selection = "top"
[[condition]]
kind = "max_reconstruction_error"
bound = 1e-6
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Paths the rows refer to: tiny models (good and broken), files, folders, specs."""
    root = tmp_path_factory.mktemp("bad_input")
    tok = ioi_word_tokenizer()
    w: dict[str, Path | str] = {"tmp": root / "out"}
    w["small"] = save_tiny_folder(root / "small", "gpt2", tok, n_layer=2, n_head=4, n_embd=32)
    w["llama12"] = save_tiny_folder(root / "llama12", "llama", tok, num_hidden_layers=12, num_attention_heads=12,
                                    num_key_value_heads=12, hidden_size=48, intermediate_size=64)
    w["nonames"] = save_tiny_folder(root / "nonames", "gpt2", ioi_word_tokenizer(with_names=False),
                                    n_layer=2, n_head=4, n_embd=32)
    w["opt"] = save_unsupported_folder(root / "opt", tok)
    nan = Path(save_tiny_folder(root / "nan", "gpt2", tok, n_layer=2, n_head=4, n_embd=32))
    from safetensors.torch import load_file, save_file

    sd = load_file(nan / "model.safetensors")
    k = next(k for k in sd if k.endswith("attn.c_attn.weight"))
    sd[k][0, 0] = float("nan")
    save_file(sd, nan / "model.safetensors", metadata={"format": "pt"})
    w["nan"] = nan
    notok = root / "notok"
    shutil.copytree(w["small"], notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    w["notok"] = notok
    badcfg = root / "badcfg"
    shutil.copytree(w["small"], badcfg)
    (badcfg / "config.json").write_text("{not json")
    w["badcfg"] = badcfg
    w["file"] = root / "a-file.txt"
    Path(w["file"]).write_text("x")
    w["under_file"] = Path(w["file"]) / "sub"
    w["folder"] = root / "a-folder"
    Path(w["folder"]).mkdir()
    w["missing"] = root / "missing.txt"
    w["binary"] = root / "binary.txt"
    Path(w["binary"]).write_bytes(b"\xff\xfe\x00\x81" * 64)
    w["empty"] = root / "empty.txt"
    Path(w["empty"]).write_text("   \n")
    w["long"] = root / "long.txt"
    Path(w["long"]).write_text(" ".join(["When Mary and John went to the store, John gave a drink to Mary."] * 40))
    w["weights"] = Path(w["small"]) / "model.safetensors"
    for name, n in (("spec", 2), ("spec_many", 99999999999)):
        w[name] = root / f"{name}.toml"
        Path(w[name]).write_text(SPEC.format(model=w["small"], n_prompts=n))
    w["spec_budget"] = root / "budget.toml"
    Path(w["spec_budget"]).write_text(SPEC.format(model=w["small"], n_prompts=2) + "[analysis]\nmemory_budget_gb = 0\n")
    w["spec_notoml"] = root / "notoml.toml"
    Path(w["spec_notoml"]).write_text("[model\nname = ")
    w["spec_badkey"] = root / "badkey.toml"
    Path(w["spec_badkey"]).write_text(SPEC.format(model=w["small"], n_prompts=2).replace("[pairs]", "[pairs]\nheadz = 3"))
    w["spec_missing"] = root / "no-such-spec.toml"
    for name, file, text in (("planted", "resume.pt", b"\x80\x04cos\nsystem\n"), ("badrun", "run.json", b"{garbage")):
        (root / name / "run").mkdir(parents=True)
        (root / name / "run" / file).write_bytes(text)
        w[name] = root / name
    w["spec_opt"] = root / "opt.toml"
    Path(w["spec_opt"]).write_text(SPEC.format(model=w["opt"], n_prompts=2))
    _dictionaries(root, w)
    _plans(root, w)
    return {k: str(v) for k, v in w.items()}


def _plans(root: Path, w: dict) -> None:
    """Sweep plans for `svfcheck sweep`: one good (never run by a row: each row fails first), one per mistake."""
    good = '[[series]]\nname = "r"\nsource = "run:{run}"\n[[analysis]]\nname = "a"\ntask = "induction"\n'
    plans = {"plan_good": good,
             "plan_preset": '[[series]]\nname = "r"\npreset = "gpt5"\n[[analysis]]\nname = "a"\ntask = "text"\n',
             "plan_nospec": f'[[analysis]]\nname = "s"\nspec = "{w["spec_missing"]}"\n'}
    plans["plan_badkey"] = good.replace('source = "run:{run}"\n', 'source = "run:{run}"\nsteps = [0, 0]\n')
    plans["plan_unsaved_steps"] = ('[[series]]\nname = "r"\npreset = "induction-gpt2"\ntrain = { max_steps = 50 }\n'
                                   'steps = [3, 50]\n[[analysis]]\nname = "a"\ntask = "induction"\n')
    plans["plan_bad_resources"] = good.replace('task = "induction"\n', 'task = "induction"\nresources = { num_gpus = -1 }\n')
    for name, text in plans.items():
        w[name] = root / f"{name}.toml"
        Path(w[name]).write_text(text.replace("{run}", str(root / "badrun" / "run")))


def _dictionaries(root: Path, w: dict) -> None:
    """Feature dictionaries for `svfcheck readout --dictionary` ({small} has d_model = 32)."""
    import numpy as np
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    arrays = {"dict_wrong": rng.standard_normal((20, 33)), "dict_square": rng.standard_normal((32, 32)),
              "dict_nan": rng.standard_normal((20, 32)), "dict_zero": rng.standard_normal((20, 32)),
              "dict_const": rng.standard_normal((20, 32))}
    arrays["dict_nan"][3, 5] = np.nan
    arrays["dict_zero"][2] = 0.0
    arrays["dict_const"][7] = 0.25  # constant: LayerNorm removes it
    for name, a in arrays.items():
        w[name] = root / f"{name}.npy"
        np.save(w[name], a)
    w["dict_pickle"] = root / "dict_pickle.npy"
    np.save(w["dict_pickle"], np.array([{"W": 1}], dtype=object), allow_pickle=True)
    w["dict_pt"] = root / "dict.pt"
    Path(w["dict_pt"]).write_bytes(b"not a tensor")
    w["dict_two"] = root / "dict_two.safetensors"
    save_file({"a": torch.ones(4, 32), "b": torch.ones(32, 6)}, str(w["dict_two"]))


NO_CUDA = not torch.cuda.is_available()

CASES = [
    # ---------------------------------------------------------------- report
    C("report-seed-negative", "report --seed -1", "--seed", "'-1'"),
    C("report-seed-float", "report --seed 1e23", "--seed", "1e23"),
    C("report-seed-word", "report --seed abc", "--seed", "abc"),
    C("report-seed-2^32", "report --seed 4294967296", "--seed", "4294967296"),
    C("report-out-is-file", "report --out {file}", "--out", "{file}"),
    C("report-out-under-file", "report --out {under_file}", "--out", "{under_file}"),
    C("report-unknown-flag", "report --bogus", "--bogus"),
    # ---------------------------------------------------------------- theory
    C("theory-seed-negative", "theory --seed -5", "--seed", "'-5'"),
    C("theory-out-is-file", "theory --out {file}", "--out", "{file}"),
    C("theory-out-under-file", "theory --out {under_file}", "--out", "{under_file}"),
    Case("theory-out-empty", ("theory", "--out", ""), ("--out is empty",)),
    # ---------------------------------------------------------------- sad: the model
    C("sad-no-model", "sad", "--model"),
    C("sad-unknown-name", "sad --model no-such-model-xyz --out {tmp}", "no-such-model-xyz", "smollm2-135m"),
    C("sad-typo-of-offline-name", "sad --model smollm2-135 --out {tmp}", "smollm2-135", "did you mean"),
    C("sad-missing-folder", "sad --model ./no/such/folder --out {tmp}", "./no/such/folder"),
    C("sad-model-is-file", "sad --model {weights} --out {tmp}", "{weights}", "file"),
    C("sad-model-no-tokenizer", "sad --model {notok} --out {tmp}", "{notok}", "tokenizer"),
    C("sad-model-bad-config", "sad --model {badcfg} --out {tmp}", "{badcfg}", "config.json"),
    C("sad-model-nan-weights", "sad --model {nan} --out {tmp}", "non-finite", "attn.c_attn.weight"),
    C("sad-offline-with-revision", "sad --model minilm-l6 --revision step1 --out {tmp}", "step1", "minilm-l6"),
    C("sad-unsupported-architecture", "sad --model {opt} --out {tmp}", "'opt'", "supported", "llama"),
    C("sad-names-not-single-tokens", "sad --model {nonames} --out {tmp}", "single tokens"),
    C("sad-cache-is-file", "sad --model smollm2-135m --out {tmp}", "SVFCHECK_CACHE", "{file}", SVFCHECK_CACHE="{file}"),
    C("sad-cache-under-file", "sad --model smollm2-135m --out {tmp}", "SVFCHECK_CACHE", "{under_file}",
      SVFCHECK_CACHE="{under_file}"),
    # ---------------------------------------------------------------- sad: numbers
    C("sad-n-prompts-zero", "sad --model {small} --n-prompts 0 --out {tmp}", "--n-prompts", "'0'"),
    C("sad-n-prompts-huge", "sad --model {small} --n-prompts 99999999999 --out {tmp}", "--n-prompts", "99999999999"),
    C("sad-n-prompts-word", "sad --model {small} --n-prompts many --out {tmp}", "--n-prompts", "many"),
    C("sad-prompt-tokens-2", "sad --model {small} --task text --prompt-tokens 2 --out {tmp}", "--prompt-tokens", "'2'"),
    C("sad-prompt-tokens-huge", "sad --model {small} --task text --prompt-tokens 99999999999 --out {tmp}",
      "--prompt-tokens", "99999999999"),
    C("sad-seed-negative", "sad --model {small} --seed -1 --out {tmp}", "--seed", "'-1'"),
    C("sad-seed-float", "sad --model {small} --seed 1e23 --out {tmp}", "--seed", "1e23"),
    # ---------------------------------------------------------------- sad: heads and pairs
    C("sad-head-no-dot", "sad --model {small} --head 9 --out {tmp}", "--head", "'9'"),
    C("sad-head-words", "sad --model {small} --head a.b --out {tmp}", "--head", "'a.b'"),
    C("sad-head-layer-range", "sad --model {small} --head 2.0 --out {tmp}", "layer=2", "layers 0..1"),
    C("sad-head-head-range", "sad --model {small} --head 0.4 --out {tmp}", "head=4", "heads 0..3"),
    C("sad-heads-choice", "sad --model {small} --heads bogus --out {tmp}", "--heads", "'bogus'"),
    C("sad-paper-no-table", "sad --model {small} --heads paper --out {tmp}", "no published IOI head table", "{small}"),
    C("sad-paper-wrong-arch", "sad --model {llama12} --heads paper --circuit gpt2 --out {tmp}", "'gpt2'", "llama",
      "discover"),
    C("sad-paper-unknown-circuit", "sad --model {small} --heads paper --circuit nope --out {tmp}", "'nope'"),
    C("sad-circuit-without-paper", "sad --model {small} --circuit gpt2 --out {tmp}", "--circuit", "--heads paper"),
    C("sad-selection-choice", "sad --model {small} --selection bogus --out {tmp}", "--selection", "'bogus'"),
    C("sad-dtype-choice", "sad --model {small} --dtype float16 --out {tmp}", "--dtype", "'float16'"),
    C("sad-baseline-choice", "sad --model {small} --baseline trained --out {tmp}", "--baseline", "'trained'"),
    # ---------------------------------------------------------------- sad: task and text
    C("sad-task-choice", "sad --model {small} --task bogus --out {tmp}", "--task", "'bogus'"),
    C("sad-text-file-missing", "sad --model {small} --task text --text-file {missing} --out {tmp}",
      "--text-file", "{missing}"),
    C("sad-text-file-folder", "sad --model {small} --task text --text-file {folder} --out {tmp}",
      "--text-file", "{folder}", "folder"),
    C("sad-text-file-binary", "sad --model {small} --task text --text-file {binary} --out {tmp}",
      "--text-file", "{binary}", "UTF-8"),
    C("sad-text-file-empty", "sad --model {small} --task text --text-file {empty} --out {tmp}",
      "--text-file", "{empty}", "no text"),
    C("sad-text-file-without-text-task", "sad --model {small} --text-file {long} --out {tmp}", "--text-file", "--task text"),
    C("sad-text-too-short", "sad --model {small} --task text --n-prompts 50 --out {tmp}", "too short", "50 prompts"),
    C("sad-prompt-beyond-positions", "sad --model {small} --task text --text-file {long} --prompt-tokens 200 "
      "--n-prompts 1 --out {tmp}", "200 tokens", "128 positions", "--prompt-tokens"),
    # ---------------------------------------------------------------- sad: memory budget, core cache
    C("sad-memory-budget-zero", "sad --model {small} --memory-budget 0 --out {tmp}", "--memory-budget", "'0'"),
    C("sad-memory-budget-negative", "sad --model {small} --memory-budget -1 --out {tmp}", "--memory-budget", "'-1'"),
    C("sad-memory-budget-absurd", "sad --model {small} --memory-budget 1e9 --out {tmp}", "--memory-budget", "'1e9'",
      "4096"),
    C("sad-memory-budget-nan", "sad --model {small} --memory-budget nan --out {tmp}", "--memory-budget", "'nan'"),
    C("sad-memory-budget-word", "sad --model {small} --memory-budget lots --out {tmp}", "--memory-budget", "'lots'"),
    C("sad-core-cache-is-file", "sad --model {small} --out {tmp}", "SVFCHECK_CORE_CACHE", "{file}", "is a file",
      SVFCHECK_CORE_CACHE="{file}"),
    C("sad-core-cache-under-file", "sad --model {small} --out {tmp}", "SVFCHECK_CORE_CACHE", "{file}",
      SVFCHECK_CORE_CACHE="{under_file}"),
    C("sad-core-cache-size-negative", "sad --model {small} --out {tmp}", "SVFCHECK_CORE_CACHE_GB", "'-2'",
      SVFCHECK_CORE_CACHE_GB="-2"),
    # ---------------------------------------------------------------- sad: output
    C("sad-out-is-file", "sad --model {small} --out {file}", "--out", "{file}"),
    C("sad-out-under-file", "sad --model {small} --out {under_file}", "--out", "{under_file}"),
    # ---------------------------------------------------------------- toy
    C("toy-no-out", "toy", "--out"),
    C("toy-seeds-word", "toy --out {tmp} --seeds a", "--seeds", "'a'"),
    C("toy-seeds-bad-item", "toy --out {tmp} --seeds 1,x", "--seeds", "'x'"),
    C("toy-seeds-negative", "toy --out {tmp} --seeds -1", "--seeds", "'-1'"),
    C("toy-seeds-repeated", "toy --out {tmp} --seeds 0,0", "--seeds", "repeats"),
    C("toy-steps-huge", "toy --out {tmp} --steps 99999999999999", "--steps", "99999999999999"),
    C("toy-steps-zero", "toy --out {tmp} --steps 0", "--steps", "'0'"),
    C("toy-preset-unknown", "toy --out {tmp} --preset nope", "--preset", "'nope'", "single-pair"),
    C("toy-workers-zero", "toy --out {tmp} --workers 0", "--workers", "'0'"),
    C("toy-out-is-file", "toy --out {file}", "--out", "{file}"),
    C("toy-out-under-file", "toy --out {under_file} --steps 5", "--out", "{under_file}"),
    # ---------------------------------------------------------------- emergence
    C("emergence-no-source", "emergence --out {tmp}", "--run", "--checkpoints"),
    C("emergence-both-sources", "emergence --run induction-gpt2 --checkpoints {small} --out {tmp}", "--checkpoints"),
    C("emergence-unknown-preset", "emergence --run nope --out {tmp}", "'nope'", "induction-gpt2"),
    C("emergence-run-without-out", "emergence --run induction-gpt2", "--out"),
    C("emergence-out-is-file", "emergence --run induction-gpt2 --out {file}", "--out", "{file}"),
    C("emergence-steps-zero", "emergence --run induction-gpt2 --out {tmp} --steps 0", "--steps", "'0'"),
    C("emergence-seed-negative", "emergence --run induction-gpt2 --out {tmp} --seed -1", "--seed", "'-1'"),
    C("emergence-n-prompts-zero", "emergence --run induction-gpt2 --out {tmp} --n-prompts 0", "--n-prompts", "'0'"),
    C("emergence-n-boot-word", "emergence --run induction-gpt2 --out {tmp} --n-boot lots", "--n-boot", "'lots'"),
    C("emergence-threads-zero", "emergence --run induction-gpt2 --out {tmp} --threads 0", "--threads", "'0'"),
    C("emergence-heads-bad", "emergence --run induction-gpt2 --out {tmp} --heads 4.x", "--heads", "'4.x'"),
    C("emergence-heads-paper-not-ioi", "emergence --run induction-gpt2 --out {tmp} --heads paper", "--heads paper",
      "--task ioi"),
    C("emergence-task-choice", "emergence --run induction-gpt2 --out {tmp} --task bogus", "--task", "'bogus'"),
    C("emergence-planted-pickle", "emergence --run induction-gpt2 --out {planted} --train-only",
      "{planted}/run/resume.pt", "Delete it"),
    C("emergence-damaged-run-json", "emergence --run induction-gpt2 --out {badrun} --train-only", "{badrun}/run/run.json"),
    C("emergence-damaged-run-as-series", "emergence --checkpoints {badrun}/run --out {tmp}", "{badrun}/run/run.json"),
    C("emergence-checkpoints-missing", "emergence --checkpoints {missing} --out {tmp}", "{missing}"),
    C("emergence-checkpoints-not-a-series", "emergence --checkpoints {folder} --out {tmp}", "{folder}"),
    C("emergence-checkpoints-bad-steps", "emergence --checkpoints pythia:EleutherAI/pythia-160m@0,banana",
      "banana"),
    pytest.param(C("emergence-device-cuda", "emergence --run induction-gpt2 --out {tmp} --device cuda", "--device",
                   "cuda"), marks=pytest.mark.skipif(not NO_CUDA, reason="a CUDA device is present")),
    C("emergence-device-bogus", "emergence --run induction-gpt2 --out {tmp} --device toaster", "--device", "toaster"),
    # ---------------------------------------------------------------- gate
    C("gate-no-spec", "gate", "SPEC"),
    C("gate-spec-missing", "gate {spec_missing}", "{spec_missing}"),
    C("gate-spec-device-file", "gate /dev/null", "/dev/null", "not a regular file"),
    C("gate-spec-not-toml", "gate {spec_notoml}", "{spec_notoml}"),
    C("gate-spec-unknown-key", "gate {spec_badkey}", "{spec_badkey}", "headz"),
    C("gate-spec-n-prompts-huge", "gate {spec_many}", "{spec_many}", "n_prompts"),
    C("gate-spec-memory-budget-zero", "gate {spec_budget}", "{spec_budget}", "analysis.memory_budget_gb", "0.01"),
    C("gate-unsupported-architecture", "gate {spec_opt}", "{spec_opt}", "'opt'", "supported"),
    C("gate-json-is-folder", "gate {spec} --json {folder}", "--json", "{folder}"),
    C("gate-json-under-file", "gate {spec} --json {under_file}/g.json", "--json", "{under_file}"),
    C("gate-out-is-file", "gate {spec} --out {file}", "--out", "{file}"),
    C("gate-unknown-flag", "gate {spec} --bogus", "--bogus"),
    # ---------------------------------------------------------------- readout
    C("readout-no-model", "readout --out {tmp}", "--model"),
    C("readout-no-out", "readout --model {small}", "--out"),
    C("readout-unknown-model", "readout --model no-such-model-xyz --out {tmp}", "no-such-model-xyz", "smollm2-135m"),
    C("readout-unsupported-architecture", "readout --model {opt} --out {tmp}", "'opt'", "supported"),
    C("readout-nan-weights", "readout --model {nan} --out {tmp}", "non-finite", "attn.c_attn.weight"),
    C("readout-out-is-file", "readout --model {small} --out {file}", "--out", "{file}"),
    C("readout-heads-word", "readout --model {small} --heads 0.x --out {tmp}", "--heads", "'0.x'"),
    C("readout-head-layer-range", "readout --model {small} --heads 2.0 --out {tmp}", "layer 2 is out of range", "layers 0..1"),
    C("readout-head-head-range", "readout --model {small} --heads 0.4 --out {tmp}", "head 4 is out of range", "heads 0..3"),
    C("readout-layer-star-range", "readout --model {small} --heads 5.* --out {tmp}", "--heads 5.*", "layers 0..1"),
    C("readout-top-r-zero", "readout --model {small} --top-r 0 --out {tmp}", "--top-r", "'0'"),
    C("readout-top-r-above-dh", "readout --model {small} --top-r 9 --out {tmp}", "--top-r 9", "d_h = 8"),
    C("readout-top-tokens-huge", "readout --model {small} --top-tokens 5000 --out {tmp}", "--top-tokens", "5000"),
    C("readout-top-tokens-above-vocab", "readout --model {small} --top-tokens 999 --out {tmp}", "--top-tokens 999",
      "vocabulary"),
    C("readout-dictionary-missing", "readout --model {small} --dictionary {missing} --out {tmp}", "--dictionary",
      "{missing}", "no such file"),
    C("readout-dictionary-folder", "readout --model {small} --dictionary {folder} --out {tmp}", "--dictionary", "folder"),
    C("readout-dictionary-pickle", "readout --model {small} --dictionary {dict_pickle} --out {tmp}", "--dictionary",
      "{dict_pickle}", "allow_pickle=False"),
    C("readout-dictionary-pt", "readout --model {small} --dictionary {dict_pt} --out {tmp}", "{dict_pt}",
      "unsupported type '.pt'"),
    C("readout-dictionary-wrong-d-model", "readout --model {small} --dictionary {dict_wrong} --out {tmp}", "{dict_wrong}",
      "(20, 33)", "d_model = 32"),
    C("readout-dictionary-square", "readout --model {small} --dictionary {dict_square} --out {tmp}", "square",
      "--dictionary-layout"),
    C("readout-dictionary-nan", "readout --model {small} --dictionary {dict_nan} --out {tmp}", "{dict_nan}", "non-finite",
      "features [3]"),
    C("readout-dictionary-zero-row", "readout --model {small} --dictionary {dict_zero} --out {tmp}", "all-zero",
      "features [2]"),
    C("readout-dictionary-constant-row", "readout --model {small} --dictionary {dict_const} --out {tmp}", "vanish",
      "[7]", "ln_1"),
    C("readout-dictionary-several-keys", "readout --model {small} --dictionary {dict_two} --out {tmp}", "2 tensors",
      "--dictionary-key"),
    C("readout-dictionary-unknown-key", "readout --model {small} --dictionary {dict_two} --dictionary-key nope --out {tmp}",
      "'nope'", "a, b"),
    C("readout-dictionary-key-alone", "readout --model {small} --dictionary-key a --out {tmp}", "--dictionary-key",
      "only applies with --dictionary"),
    C("sweep-no-plan", "sweep --out {tmp}", "PLAN", "required"),
    C("sweep-no-out", "sweep {plan_good}", "--out"),
    C("sweep-missing-plan", "sweep {missing} --out {tmp}", "PLAN", "{missing}", "no such file"),
    C("sweep-plan-is-folder", "sweep {folder} --out {tmp}", "PLAN", "folder"),
    C("sweep-plan-not-toml", "sweep {spec_notoml} --out {tmp}", "{spec_notoml}", "malformed TOML"),
    C("sweep-plan-bad-key", "sweep {plan_badkey} --out {tmp}", "series[0].steps", "distinct"),
    C("sweep-plan-unknown-preset", "sweep {plan_preset} --out {tmp}", "series[0].preset", "'gpt5'", "induction-gpt2"),
    C("sweep-plan-unsaved-steps", "sweep {plan_unsaved_steps} --out {tmp}", "series[0].steps", "no checkpoint at steps [3]",
      "[0, 1, 2, 4, 8, 16, 32, 50]"),
    C("sweep-plan-bad-analysis-resources", "sweep {plan_bad_resources} --out {tmp}", "analysis[0].resources.num_gpus",
      "in [0, 64]"),
    C("sweep-plan-missing-spec", "sweep {plan_nospec} --out {tmp}", "analysis[0].spec", "no-such-spec.toml"),
    C("sweep-out-is-file", "sweep {plan_good} --out {file}", "--out", "{file}", "not a folder"),
    C("sweep-unknown-engine", "sweep {plan_good} --out {tmp} --engine dask", "--engine", "'dask'"),
    C("sweep-address-without-ray", "sweep {plan_good} --out {tmp} --address 127.0.0.1:1", "--address", "--engine ray"),
    C("sweep-bad-num-cpus", "sweep {plan_good} --out {tmp} --num-cpus 0", "--num-cpus"),
]


def _fill(text: str, world: dict[str, str]) -> str:
    return text.format(**world)


def _run(case: Case, world, capsys, monkeypatch) -> tuple[int, str, str]:
    for k, v in case.env.items():
        monkeypatch.setenv(k, _fill(v, world))
    argv = [_fill(a, world) for a in case.argv]
    if argv and argv[0] in ("report", "sad", "toy", "emergence", "gate", "readout"):
        argv.insert(1, "--no-progress" if argv[0] == "emergence" else "--quiet")
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_table_is_large_and_its_rows_distinct():
    ids = [(c.values[0] if hasattr(c, "values") else c).id for c in CASES]
    argvs = [(c.values[0] if hasattr(c, "values") else c) for c in CASES]
    assert len(ids) == len(set(ids)) >= 60
    assert len({(c.argv, tuple(sorted(c.env.items()))) for c in argvs}) == len(argvs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_error(case, world, capsys, monkeypatch, tmp_path):
    world = dict(world, tmp=str(tmp_path / "out"))
    rc, out, err = _run(case, world, capsys, monkeypatch)
    assert rc == case.code, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    for needle in case.needles:
        assert _fill(needle, world) in err, f"{needle!r} not named in:\n{err}"
    assert "Traceback" not in err + out
    assert "Loading weights" not in err  # --quiet silences transformers' bars too
    assert not (tmp_path / "out" / "sad.json").exists()


# ----------------------------------------------------------------------------- the installed script

SCRIPT_CASES = [
    C("script-report-seed", "report --seed -1", "--seed"),
    C("script-sad-out-is-file", "sad --model {small} --out {file}", "--out", "{file}"),
    C("script-sad-text-file-folder", "sad --model {small} --task text --text-file {folder} --out {tmp}", "--text-file"),
    C("script-gate-json-folder", "gate {spec} --json {folder}", "--json"),
    C("script-readout-dictionary-pickle", "readout --model {small} --dictionary {dict_pickle} --out {tmp}", "allow_pickle=False"),
]


@pytest.mark.parametrize("case", SCRIPT_CASES, ids=lambda c: c.id)
def test_console_script_prints_no_traceback(case, world, tmp_path):
    """The ``svfcheck`` entry point as installed: the same exit code and message, no traceback."""
    world = dict(world, tmp=str(tmp_path / "out"))
    script = Path(sys.executable).with_name("svfcheck")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "svfcheck.cli"]
    r = subprocess.run(cmd + [_fill(a, world) for a in case.argv], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == case.code, r.stderr
    for needle in case.needles:
        assert _fill(needle, world) in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


# ----------------------------------------------------------------------------- the pytest plugin


def test_plugin_missing_spec_is_a_usage_error(pytester, world):
    r = pytester.runpytest_inprocess("--svf-spec", world["spec_missing"], "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert world["spec_missing"] in err and "--svf-spec" in err
    assert "Traceback" not in err + r.stdout.str()


def test_plugin_bad_spec_is_a_collection_error_naming_the_key(pytester, world):
    r = pytester.runpytest_inprocess("--svf-spec", world["spec_badkey"], "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the session
    text = r.stdout.str()
    assert world["spec_badkey"] in text and "headz" in text
    assert "Traceback" not in text


def test_plugin_spec_with_unusable_model_fails_its_item_in_one_line(pytester, world, tmp_path):
    spec = tmp_path / "nan.toml"
    spec.write_text(textwrap.dedent(SPEC.format(model=world["nan"], n_prompts=2)))
    r = pytester.runpytest_inprocess("--svf-spec", str(spec), "-p", "no:cacheprovider")
    r.assert_outcomes(failed=1)
    text = r.stdout.str()
    assert "non-finite" in text and "Traceback" not in text
    assert len(text.splitlines()) < 60
