"""``svfcheck gate`` end to end on a tiny random local model (seconds, no download): exit codes
0/1/2, the summary table, JSON and figure output, errors found once the model is loaded, and
the exactness condition failing under a deliberately corrupted decomposition (wrong GQA kv
group) — the tiny model has 4 query heads sharing 2 kv heads, like SmolLM2's 9/3.
"""

from __future__ import annotations

import json

import pytest

from svfcheck.cli import main as svfcheck_main
from svfcheck.gate.cli import main

EXACT = """\
    [[condition]]
    kind = "max_reconstruction_error"
    bound = 1e-5
    """
# float64 tiny model + float64 decomposition: measured 1.8e-7, from the model's own float32 RoPE
# tables (built in float32 even in a float64 model); 1e-5 as in tests/real/test_real_gate.py.

SAD_IMPOSSIBLE = """\
    [[condition]]
    kind = "sad_effect_vs_random_init"
    control = "rotated"
    margin = 0.4
    """
# two random initialisations differ in SAD effect by far less than 0.4 (S lies in [1/16, 1]).


def test_passing_spec_exits_0_and_writes_json_and_figure(tiny_folder, tiny_spec, write_spec, tmp_path, capsys):
    spec = write_spec(tiny_spec(tiny_folder, EXACT, baseline=False), "exact.toml")
    out = tmp_path / "out"
    rc = main([str(spec), "--quiet", "--json", str(tmp_path / "g.json"), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "max_reconstruction_error" in stdout and "PASS" in stdout and "1/1 conditions passed" in stdout
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc == json.loads((out / "gate.json").read_text())
    assert doc["passed"] is True and doc["n_failed"] == 0 and doc["errors"] == []
    (cond,) = doc["specs"][0]["conditions"]
    assert cond["verdict"] == "PASS" and cond["threshold"] == 1e-5 and 0 <= cond["measured"] < 1e-5
    assert doc["specs"][0]["analysis"]["n_pairs"] == 4 * 8 * 23  # 4 prompts x 8 heads x 23 queries with a non-first key
    assert (out / "gate.png").stat().st_size > 5000


def test_failing_condition_exits_1_with_measured_and_threshold(tiny_folder, tiny_spec, write_spec, capsys):
    spec = write_spec(tiny_spec(tiny_folder, EXACT + SAD_IMPOSSIBLE), "sad.toml")
    rc = svfcheck_main(["gate", str(spec), "--quiet"])  # through the main CLI
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "1/2 conditions passed" in out
    fail = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert len(fail) == 1 and "sad_effect_rotated" in fail[0] and "pass when > 0.4000" in fail[0]
    assert "effect difference (model - random init)" in fail[0]


def test_bad_spec_exits_2_before_loading_anything(tmp_path, write_spec, capsys):
    good = write_spec('[model]\nname = "./nowhere"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                      '[[condition]]\nkind = "max_reconstruction_error"\nbound = 0.1\n', "good.toml")
    bad = write_spec('[model]\nname = "minilm-l6"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                     '[[condition]]\nkind = "max_reconstruction_error"\nbound = -1\n', "bad.toml")
    rc = main([str(good), str(bad), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 2
    assert f"{bad}: condition[0].bound: got -1, out of range; expected a number in (0, 1]" in cap.err
    assert "nowhere" not in cap.err + cap.out  # the valid spec was not evaluated (no model load attempted)


@pytest.mark.parametrize("argv, fragment", [
    (["/no/such/spec.toml"], "no such file or directory"),
    (["--bogus-option", "x.toml"], "unrecognized arguments"),
    ([], "the following arguments are required: SPEC"),
])
def test_bad_arguments_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_check_mode_validates_without_loading(write_spec, capsys):
    spec = write_spec('[model]\nname = "./nowhere"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                      '[[condition]]\nkind = "max_reconstruction_error"\nbound = 0.1\n')
    assert main([str(spec), "--check"]) == 0
    assert "OK (1 condition(s): max_reconstruction_error)" in capsys.readouterr().out


def test_unloadable_model_exits_2_naming_model_name(write_spec, capsys):
    spec = write_spec('[model]\nname = "./nowhere"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                      '[[condition]]\nkind = "max_reconstruction_error"\nbound = 0.1\n')
    assert main([str(spec), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{spec}: model.name: cannot load './nowhere'" in err and "does not exist" in err and "expected an offline name" in err


def test_errors_seen_after_loading_exit_2(tiny_folder, tiny_spec, write_spec, capsys):
    """A median-k bound above d_h (16) and a text too short for the prompts are spec errors."""
    k = tiny_spec(tiny_folder, EXACT + '[[condition]]\nkind = "median_k_at_most"\nbound = 20\n')
    short = tiny_spec(tiny_folder, EXACT, baseline=False, n_prompts=50)
    rc = main([str(write_spec(k, "k.toml")), str(write_spec(short, "short.toml")), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "k.toml: condition[1].bound: got 20, but" in err and "d_h = 16" in err and "expected a number in [1, 16]" in err
    assert "short.toml: task.n_prompts: text has" in err and "too short for 50 prompts of 24 tokens" in err


def _wrong_kv_group(self, head):
    """Corruption: query head h reads the *next* kv group instead of h // (H / H_kv)."""
    return (head // (self.n_heads // self.n_kv_heads) + 1) % self.n_kv_heads


def test_corrupted_kv_group_fails_exactness_tiny(tiny_folder, tiny_spec, write_spec, monkeypatch, capsys):
    """Negative control of the exactness condition on the tiny GQA model: the same spec passes
    with the true head extraction (test above) and fails when query heads use the wrong kv group."""
    from svfcheck.real.heads import LayerHeads

    spec = write_spec(tiny_spec(tiny_folder, EXACT, baseline=False), "exact.toml")
    monkeypatch.setattr(LayerHeads, "kv_head", _wrong_kv_group)
    rc = main([str(spec), "--quiet", "--json", str(spec.with_suffix(".json"))])
    out = capsys.readouterr().out
    assert rc == 1, out
    (cond,) = json.loads(spec.with_suffix(".json").read_text())["specs"][0]["conditions"]
    print(f"\ncorrupted kv group: max reconstruction error {cond['measured']:.3g} (bound 1e-5)")
    assert cond["verdict"] == "FAIL" and cond["measured"] > 1e-3  # an O(1)-ish error, not round-off


def test_crash_during_evaluation_exits_3_not_1(write_spec, monkeypatch, capsys):
    """A crash inside the evaluation is not a failed condition: exit 3 with the cause on
    stderr (an exit 1 would read in CI as 'the model failed the gate')."""
    import svfcheck.gate.evaluate as ev

    def boom(*a, **k):
        raise RuntimeError("simulated engine bug")

    monkeypatch.setattr(ev, "evaluate_specs", boom)
    path = write_spec('[model]\nname = "./nowhere"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                      '[[condition]]\nkind = "max_reconstruction_error"\nbound = 0.1\n')
    assert main([str(path), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "simulated engine bug" in err
