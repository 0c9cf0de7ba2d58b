"""Spec parsing and validation (no model is loaded): every class of bad input gets a SpecError
naming the file, the dotted key and the expected form; valid specs and the shipped ones parse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from svfcheck.gate.spec import SAD_KINDS, SpecError, load_spec, spec_files

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"

VALID = """\
name = "demo"
description = "a demo"

[model]
name = "smollm2-135m"

[task]
kind = "ioi"
n_prompts = 3

[pairs]
heads = "all"
selection = "top"

[baseline]
seed = 2

[[condition]]
kind = "sad_effect_vs_random_init"
control = "rotated"
margin = 0.05

[[condition]]
kind = "s_svd_below_random_init"

[[condition]]
kind = "median_k_at_most"
heads = [[0, 1], [2, 3]]
bound = 4

[[condition]]
kind = "max_reconstruction_error"
bound = 1e-5
"""


def test_valid_spec_parses_with_defaults(write_spec):
    s = load_spec(write_spec(VALID))
    assert s.name == "demo" and s.description == "a demo"
    assert (s.model.name, s.model.revision, s.model.random_init, s.model.seed, s.model.dtype) == (
        "smollm2-135m", None, False, 0, "float32")
    assert (s.task.kind, s.task.n_prompts, s.task.seed) == ("ioi", 3, 0)
    assert s.settings.heads == "all" and s.settings.selection == "top" and s.min_pairs == 500
    assert s.baseline is not None and s.baseline.seed == 2
    assert [c.name for c in s.conditions] == [
        "sad_effect_rotated", "s_svd_below_random_init", "median_k_L0H1_L2H3", "max_reconstruction_error"]
    c0, c1, c2, c3 = s.conditions
    assert (c0.control, c0.margin, c0.level) == ("rotated", 0.05, 0.99)
    assert (c1.margin, c1.level) == (0.0, 0.99)
    assert c2.heads == ((0, 1), (2, 3)) and c2.bound == 4.0
    assert c3.bound == 1e-5 and not c3.sad and c0.sad and c2.sad
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.model.name = "x"  # frozen


def test_text_file_is_relative_to_the_spec(write_spec, tmp_path):
    (tmp_path / "corpus.txt").write_text("some words " * 50)
    s = load_spec(write_spec("""\
        [model]
        name = "minilm-l6"
        [task]
        kind = "text"
        n_prompts = 2
        prompt_tokens = 10
        text_file = "corpus.txt"
        [[condition]]
        kind = "max_reconstruction_error"
        bound = 0.001
        """))
    assert s.task.text_file == (tmp_path / "corpus.txt").resolve()
    assert s.baseline is None  # no SAD condition: no baseline needed


@pytest.mark.parametrize("path", sorted(ANALYSES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_parse_and_are_gated(path):
    s = load_spec(path)
    kinds = {c.kind for c in s.conditions}
    assert kinds & SAD_KINDS, "a shipped spec must test the SAD prediction"
    assert "max_reconstruction_error" in kinds, "a shipped spec must gate exactness"
    assert s.baseline is not None and not s.model.random_init
    assert s.min_pairs >= 500  # real-model claims need >= 500 pairs (docs/math.md §3.8)
    for c in s.conditions:
        if c.kind in ("sad_effect_vs_random_init", "s_svd_below_random_init"):
            assert c.margin > 0, f"{path.name}: {c.name} has margin 0; seed-to-seed variation could pass it"


def test_shipped_directory_has_the_offline_model_specs():
    names = {p.name for p in spec_files([ANALYSES])}
    assert {"smollm2-135m-ioi.toml", "minilm-l6-text.toml"} <= names


# (replace this text in VALID, with this, expected dotted key, a fragment of the expected form)
BAD = {
    "malformed_toml": ("[task]\nkind = \"ioi\"", "[task]\nkind = \"ioi", None, "valid TOML"),
    "unknown_top_key": ('description = "a demo"', 'description = "a demo"\ncolour = "red"', "colour", "one of name, description"),
    "unknown_model_key": ('name = "smollm2-135m"', 'name = "smollm2-135m"\nrevison = "main"', "model.revison", "one of name, revision"),
    "unknown_condition_key": ("margin = 0.05", "margin = 0.05\nmargn = 0.1", "condition[0].margn", "one of kind, name, control, margin, level"),
    "missing_model_table": ('[model]\nname = "smollm2-135m"\n', "", "model", "[model] with name"),
    "missing_model_name": ('name = "smollm2-135m"', 'seed = 1', "model.name", None),
    "missing_task_n_prompts": ("n_prompts = 3", "seed = 1", "task.n_prompts", None),
    "missing_control": ('control = "rotated"\n', "", "condition[0].control", None),
    "missing_bound": ("bound = 1e-5", "", "condition[3].bound", None),
    "missing_kind": ('kind = "s_svd_below_random_init"', 'margin = 0.1', "condition[1].kind", "one of 'sad_effect_vs_random_init'"),
    "unknown_kind": ('kind = "s_svd_below_random_init"', 'kind = "s_svd_lower"', "condition[1].kind", "one of 'sad_effect_vs_random_init'"),
    "wrong_type_n_prompts": ("n_prompts = 3", 'n_prompts = "3"', "task.n_prompts", "an integer in [1, 10000]"),
    "wrong_type_bool_as_int": ("n_prompts = 3", "n_prompts = true", "task.n_prompts", "an integer"),
    "wrong_type_random_init": ("[baseline]\nseed = 2", '[baseline]\nseed = 2\nrandom_init = "yes"', "baseline.random_init", "true or false"),
    "wrong_type_bound": ("bound = 1e-5", 'bound = "small"', "condition[3].bound", "a number in (0, 1]"),
    "wrong_type_heads": ('heads = "all"', "heads = 5", "pairs.heads", '"all", "paper", "discover" or a list'),
    "bad_head_entry": ("heads = [[0, 1], [2, 3]]", "heads = [[0, 1], [2]]", "condition[2].heads[1]", "[layer, head] pairs"),
    "negative_head": ("heads = [[0, 1], [2, 3]]", "heads = [[0, -1]]", "condition[2].heads[0]", "integers >= 0"),
    "repeated_head": ("heads = [[0, 1], [2, 3]]", "heads = [[0, 1], [0, 1]]", "condition[2].heads", "without repeats"),
    "bad_choice_control": ('control = "rotated"', 'control = "random"', "condition[0].control", "'rotated', 'paper_control'"),
    "bad_choice_dtype": ('name = "smollm2-135m"', 'name = "smollm2-135m"\ndtype = "float16"', "model.dtype", "'float32', 'float64'"),
    "bad_task_kind": ('kind = "ioi"', 'kind = "wiki"', "task.kind", "'ioi', 'text'"),
    "zero_prompts": ("n_prompts = 3", "n_prompts = 0", "task.n_prompts", "an integer in [1, 10000]"),
    "negative_error_bound": ("bound = 1e-5", "bound = -1e-5", "condition[3].bound", "a number in (0, 1]"),
    "zero_error_bound": ("bound = 1e-5", "bound = 0", "condition[3].bound", "a number in (0, 1]"),
    "error_bound_above_one": ("bound = 1e-5", "bound = 2.0", "condition[3].bound", "a number in (0, 1]"),
    "nan_bound": ("bound = 1e-5", "bound = nan", "condition[3].bound", "a number in (0, 1]"),
    "negative_margin": ("margin = 0.05", "margin = -0.05", "condition[0].margin", "a number in [0, 0.5)"),
    "margin_too_large": ("margin = 0.05", "margin = 0.7", "condition[0].margin", "a number in [0, 0.5)"),
    "level_zero": ("margin = 0.05", "margin = 0.05\nlevel = 0", "condition[0].level", "a number in (0, 1)"),
    "level_one": ("margin = 0.05", "margin = 0.05\nlevel = 1.0", "condition[0].level", "a number in (0, 1)"),
    "level_percent": ("margin = 0.05", "margin = 0.05\nlevel = 99", "condition[0].level", "a number in (0, 1)"),
    "median_k_bound_below_one": ("bound = 4", "bound = 0.5", "condition[2].bound", "a number >= 1"),
    "min_pairs_zero": ('selection = "top"', 'selection = "top"\nmin_pairs = 0', "pairs.min_pairs", "an integer >= 1"),
    "sad_without_baseline": ("[baseline]\nseed = 2", "", "baseline", "a [baseline] table with random_init = true"),
    "baseline_not_random": ("[baseline]\nseed = 2", "[baseline]\nrandom_init = false", "baseline.random_init", "random_init = true"),
    "duplicate_condition_names": ('kind = "s_svd_below_random_init"', 'kind = "s_svd_below_random_init"\nname = "sad_effect_rotated"',
                                  "condition[1].name", "a unique name per condition"),
    "condition_single_table": (None, None, "condition", "an array of tables: [[condition]]"),
    "no_conditions": (None, None, "condition", "at least one [[condition]]"),
    "text_keys_on_ioi": ("n_prompts = 3", "n_prompts = 3\nprompt_tokens = 32", "task.prompt_tokens", "no prompt_tokens for IOI prompts"),
    "circuit_selection_all_heads": ('selection = "top"', 'selection = "circuit"', "pairs.selection", 'heads = "paper" or "discover"'),
    "circuit_name_without_paper": ('selection = "top"', 'selection = "top"\ncircuit = "gpt2"', "pairs.circuit", 'heads = "paper"'),
    "model_not_a_table": ('[model]\nname = "smollm2-135m"\n', 'model = "smollm2-135m"\n', "model", "a table [model]"),
}


def _bad_text(case: str) -> str:
    old, new, _, _ = BAD[case]
    if case == "condition_single_table":
        head, _ = VALID.split("[[condition]]", 1)
        return head + '[condition]\nkind = "max_reconstruction_error"\nbound = 0.1\n'
    if case == "no_conditions":
        return VALID.split("[[condition]]", 1)[0].replace("[baseline]\nseed = 2\n", "")
    assert VALID.count(old) == 1, f"test table: {old!r} must occur once in VALID"
    return VALID.replace(old, new)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_key_and_expected_form(write_spec, case):
    _, _, key, form = BAD[case]
    path = write_spec(_bad_text(case), name=f"{case}.toml")
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    msg = str(ei.value)
    assert str(path) in msg and ei.value.file == str(path)
    assert ei.value.key == key, msg
    if key:
        assert f": {key}: " in msg
    assert "; expected " in msg, msg
    if form:
        assert form in msg, msg
    assert isinstance(ei.value, ValueError)


def test_ioi_only_head_modes_reject_text_prompts(write_spec):
    text = VALID.replace('kind = "ioi"', 'kind = "text"').replace('heads = "all"\nselection = "top"', 'heads = "discover"')
    with pytest.raises(SpecError, match=r"pairs\.heads: 'discover' with selection 'circuit' needs IOI prompts"):
        load_spec(write_spec(text))


def test_missing_text_file_is_named(write_spec):
    text = VALID.replace('kind = "ioi"', 'kind = "text"\ntext_file = "nowhere.txt"')
    with pytest.raises(SpecError, match=r"task\.text_file: 'nowhere.txt' does not exist") as ei:
        load_spec(write_spec(text))
    assert "relative to the spec file" in str(ei.value)


def test_not_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="is not UTF-8"):
        load_spec(p)
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.toml")


def test_spec_files_expands_directories_and_rejects_bad_paths(tmp_path):
    (tmp_path / "b.toml").write_text("")
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "notes.md").write_text("")
    assert spec_files([tmp_path]) == [tmp_path / "a.toml", tmp_path / "b.toml"]
    assert spec_files([tmp_path / "a.toml", tmp_path]) == [tmp_path / "a.toml", tmp_path / "b.toml"]  # no duplicates
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, msg in ((empty, "holds no \\*.toml"), (tmp_path / "notes.md", "is not a .toml file"),
                     (tmp_path / "nope", "no such file or directory")):
        with pytest.raises(SpecError, match=msg) as ei:
            spec_files([bad])
        assert str(bad) in str(ei.value) and "expected" in str(ei.value)


def test_plugin_module_is_import_light():
    """The pytest11 plugin is imported by every pytest run: it must not import torch."""
    import subprocess
    import sys

    code = "import sys, svfcheck.gate.pytest_plugin; print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
