"""User errors found while evaluating a spec are that spec's errors (exit 2), not crashes (exit 3).

A model the decomposition does not support (a tiny OPT), a model folder without weights, IOI
prompts the tokenizer cannot make, a head table or head list that does not fit the model:
``evaluate_specs`` records a ``SpecError`` for the spec and goes on with the others. Any other
exception is a bug of the gate and propagates (``svfcheck gate`` exits 3).
"""

from __future__ import annotations

import json
import shutil

import pytest

from svfcheck.gate.cli import main
from svfcheck.gate.evaluate import evaluate_specs
from svfcheck.gate.spec import load_spec
from svfcheck.real.heads import SUPPORTED_ARCHITECTURES

EXACT = """\
    [[condition]]
    kind = "max_reconstruction_error"
    bound = 1e-5
    """
# measured 1.8e-7 on the tiny float64 llama (model's float32 RoPE tables); see test_gate_cli.py


def test_unsupported_architecture_is_a_spec_error_and_the_other_spec_still_runs(
        tiny_folder, unsupported_folder, tiny_spec, write_spec, tmp_path, capsys):
    bad = write_spec(tiny_spec(unsupported_folder, EXACT, baseline=False), "a-opt.toml")  # evaluated first
    good = write_spec(tiny_spec(tiny_folder, EXACT, baseline=False), "b-good.toml")
    rc = main([str(bad), str(good), "--quiet", "--json", str(tmp_path / "g.json")])
    cap = capsys.readouterr()
    assert rc == 2, cap.err
    assert "internal error" not in cap.err and "Traceback" not in cap.err
    assert "1/1 conditions passed" in cap.out and "PASS" in cap.out  # the good spec's result is shown
    msg = (f"{bad}: model.name: {unsupported_folder!r} (OPTForCausalLM) has architecture 'opt', which the "
           "decomposition does not support; expected a model of a supported architecture: "
           + ", ".join(sorted(SUPPORTED_ARCHITECTURES)))
    assert f"svfcheck gate: spec error: {msg}\n" in cap.err
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["passed"] is False and doc["n_specs"] == 2
    assert [s["file"] for s in doc["specs"]] == [str(good)] and doc["specs"][0]["passed"] is True
    assert doc["errors"] == [{"file": str(bad), "key": "model.name", "message": msg}]


def test_user_errors_during_evaluation_are_per_spec_errors(tiny_folder, unsupported_folder, tiny_spec,
                                                          write_spec, tmp_path):
    no_weights = tmp_path / "no-weights"  # config and tokenizer, but no model.safetensors
    shutil.copytree(tiny_folder, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    ioi = f'[model]\nname = "{tiny_folder}"\n[task]\nkind = "ioi"\nn_prompts = 2\n' + EXACT
    cases = {  # file -> (spec text, key, fragment of the message)
        "opt.toml": (tiny_spec(unsupported_folder, EXACT, baseline=False), "model.name",
                     "has architecture 'opt', which the decomposition does not support"),
        "no-weights.toml": (tiny_spec(str(no_weights), EXACT, baseline=False), "model.name", "could not load weights"),
        # the paragraph tokenizer has no IOI names: generate_ioi_prompts raises IOIError
        "ioi.toml": (ioi, "task.kind", "cannot make IOI prompts with the tokenizer of"),
        # GPT-2's head table (layers up to 10) on a 2-layer model: analyze raises ValueError
        "paper.toml": (tiny_spec(tiny_folder, EXACT, baseline=False).replace('heads = "all"', 'heads = "paper"\ncircuit = "gpt2"'),
                       "pairs", "the analysis rejected the pair settings"),
        "head.toml": (tiny_spec(tiny_folder, EXACT, baseline=False).replace('heads = "all"', "heads = [[0, 0], [5, 1]]"),
                      "pairs.heads[1]", "head [5, 1] is outside"),
    }
    specs = [load_spec(write_spec(text, name)) for name, (text, _, _) in cases.items()]
    good = load_spec(write_spec(tiny_spec(tiny_folder, EXACT, baseline=False), "good.toml"))
    results, errors = evaluate_specs(specs + [good], progress=False)
    assert [r.spec.path for r in results] == [good.path] and results[0].passed
    got = {e.file.rsplit("/", 1)[1]: e for e in errors}
    assert sorted(got) == sorted(cases)
    for name, (_, key, fragment) in cases.items():
        assert got[name].key == key and fragment in str(got[name]), str(got[name])


@pytest.mark.parametrize("module, func, exc", [
    ("svfcheck.real.pipeline", "analyze", IndexError),  # IndexError is no user error: head lists are checked first
    ("svfcheck.real.pipeline", "analyze", RuntimeError),
    ("svfcheck.real.heads", "cached_heads", RuntimeError),
])
def test_other_exceptions_are_gate_bugs_and_propagate(module, func, exc, tiny_folder, tiny_spec, write_spec,
                                                      monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise exc("simulated bug")

    monkeypatch.setattr(f"{module}.{func}", broken)
    path = write_spec(tiny_spec(tiny_folder, EXACT, baseline=False))
    with pytest.raises(exc, match="simulated bug"):
        evaluate_specs([load_spec(path)], progress=False)
    assert main([str(path), "--quiet"]) == 3
    assert f"internal error while evaluating ({exc.__name__}: simulated bug)" in capsys.readouterr().err
