"""The pytest plugin (entry point ``pytest11``), driven with ``pytester``: one item per
(spec, condition) with readable ids, failures showing measured figure and threshold, JUnit XML,
spec errors as collection errors naming the file, and no effect without ``--svf-spec``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

EXACT = """\
    [[condition]]
    name = "exact"
    kind = "max_reconstruction_error"
    bound = 1e-5
    """
# measured 1.8e-7 on the tiny float64 llama (model's float32 RoPE tables); see test_gate_cli.py
IMPOSSIBLE = """\
    [[condition]]
    name = "sad_rotated"
    kind = "sad_effect_vs_random_init"
    control = "rotated"
    margin = 0.4
    """
# two random initialisations differ in SAD effect by ~0.0003 [-0.02, 0.02] (measured), never by 0.4


def test_plugin_is_registered_and_inert_without_option(pytester):
    pytester.makepyfile("def test_one():\n    assert True\n")
    pytester.path.joinpath("x.toml").write_text("not a spec at all [[[")
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)  # the .toml is not collected without --svf-spec
    help_ = pytester.runpytest("--help")
    assert "--svf-spec=PATH" in help_.stdout.str()


def test_one_item_per_condition_with_junit(pytester, tiny_folder, tiny_spec):
    specs = pytester.mkdir("specs")
    (specs / "tiny.toml").write_text(tiny_spec(tiny_folder, EXACT + IMPOSSIBLE))
    pytester.makepyfile("def test_not_collected():\n    assert False\n")
    xml = pytester.path / "out.xml"
    res = pytester.runpytest("--svf-spec", str(specs), "--junitxml", str(xml), "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)  # the project's own test file is not collected
    out = res.stdout.str()
    assert "specs/tiny.toml::exact PASSED" in out and "specs/tiny.toml::sad_rotated FAILED" in out
    res.stdout.fnmatch_lines(["*tiny / condition failed: sad_rotated: FAIL: measured * (pass when > 0.4000); effect difference*"])
    root = ET.parse(xml).getroot()
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    assert set(cases) == {"exact", "sad_rotated"}
    assert cases["exact"].find("failure") is None
    failure = cases["sad_rotated"].find("failure")
    assert failure is not None and "pass when > 0.4000" in (failure.get("message", "") + (failure.text or ""))
    props = {p.get("name"): p.get("value") for p in cases["exact"].iter("property")}
    assert props["verdict"] == "PASS" and props["threshold"] == "1e-05" and float(props["measured"]) < 1e-5


def test_explicit_paths_are_collected_alongside_specs(pytester, tiny_folder, tiny_spec):
    (pytester.path / "only.toml").write_text(tiny_spec(tiny_folder, EXACT, baseline=False))
    pytester.makepyfile(test_mine="def test_mine():\n    assert True\n")
    res = pytester.runpytest("test_mine.py", "--svf-spec", "only.toml", "-p", "no:cacheprovider", "--strict-markers")
    res.assert_outcomes(passed=2)
    # spec items carry the registered `svf_spec` marker
    res = pytester.runpytest("test_mine.py", "--svf-spec", "only.toml", "-p", "no:cacheprovider", "-m", "not svf_spec")
    res.assert_outcomes(passed=1, deselected=1)


def test_spec_error_is_a_collection_error_naming_the_file_and_key(pytester):
    bad = pytester.path / "broken.toml"
    bad.write_text('[model]\nname = "minilm-l6"\n[task]\nkind = "ioi"\nn_prompts = 1\n'
                   '[[condition]]\nkind = "median_k_at_most"\nbound = 0\n')
    res = pytester.runpytest("--svf-spec", str(bad), "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.assert_outcomes(errors=1)
    out = res.stdout.str()
    assert "ERROR collecting broken.toml" in out
    assert f"spec error: {bad}: condition[0].bound: got 0, out of range; expected a number >= 1" in out


def test_missing_spec_path_is_a_usage_error(pytester):
    res = pytester.runpytest("--svf-spec", "nowhere/")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "--svf-spec: nowhere: no such file or directory" in res.stderr.str()


def test_evaluation_error_errors_the_items(pytester, tiny_folder, tiny_spec):
    """A median-k bound above d_h (16) can only be seen once the model is loaded: every item
    of that spec fails with the spec error."""
    (pytester.path / "k.toml").write_text(tiny_spec(tiny_folder, EXACT + '[[condition]]\nname = "k"\nkind = "median_k_at_most"\nbound = 17\n'))
    res = pytester.runpytest("--svf-spec", "k.toml", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=2)
    out = res.stdout.str()
    for item in ("exact", "k"):  # every item of the spec reports the error
        assert f"k::{item} _" in out
    # count in the failure reports only: the short summary (-ra) may repeat the message,
    # truncated or not depending on the terminal width (it is untruncated in CI)
    body = out.split("short test summary info")[0]
    assert body.count("k.toml: condition[1].bound: got 17, but") == 2 and "has d_h = 16" in body


def test_unsupported_architecture_fails_each_item_in_one_line(pytester, unsupported_folder, tiny_spec):
    """A model the decomposition does not support (tiny OPT) is a spec error: each condition
    fails with the reason, without a traceback (it used to print ~900 lines)."""
    from svfcheck.real.heads import SUPPORTED_ARCHITECTURES

    (pytester.path / "opt.toml").write_text(tiny_spec(unsupported_folder, EXACT + IMPOSSIBLE))
    res = pytester.runpytest("--svf-spec", "opt.toml", "-p", "no:cacheprovider")
    res.assert_outcomes(failed=2)
    out = res.stdout.str() + res.stderr.str()
    assert "Traceback" not in out and len(res.outlines) + len(res.errlines) < 60, out
    body = res.stdout.str().split("short test summary info")[0]
    reasons = [line for line in body.splitlines() if line.startswith("opt / spec error: ")]  # spec name / kind
    assert len(reasons) == 2, body  # one line per item
    for line in reasons:
        assert f"{pytester.path / 'opt.toml'}: model.name: " in line
        assert "(OPTForCausalLM) has architecture 'opt', which the decomposition does not support" in line
        assert "expected a model of a supported architecture: " + ", ".join(sorted(SUPPORTED_ARCHITECTURES)) in line


def test_specs_run_in_parallel_under_xdist(pytester, tiny_folder, tiny_spec):
    """``pytest --svf-spec DIR -n 2``: both xdist workers collect the same items (ids are the
    spec path and condition name), each item runs once, verdicts as without xdist."""
    specs = pytester.mkdir("specs")
    for i in range(3):
        (specs / f"tiny{i}.toml").write_text(tiny_spec(tiny_folder, EXACT, baseline=False, n_prompts=1 + i))
    (specs / "bad.toml").write_text(tiny_spec(tiny_folder, EXACT + IMPOSSIBLE))
    res = pytester.runpytest_subprocess("--svf-spec", str(specs), "-n", "2", "--dist", "loadfile", "-v",
                                        "-p", "no:cacheprovider")
    res.assert_outcomes(passed=4, failed=1)
    out = res.stdout.str()
    assert "created: 2/2 workers" in out, out
    for i in range(3):
        assert f"specs/tiny{i}.toml::exact" in out
    res.stdout.fnmatch_lines(["*FAILED specs/bad.toml::sad_rotated*", "*measured * (pass when > 0.4000)*"])
    # --dist loadfile: both conditions of bad.toml ran on one worker (its model analysed once)
    import re

    workers = set(re.findall(r"\[(gw\d)\] \[ *\d+%\] \w+ specs/bad\.toml::", out))
    assert len(workers) == 1, out
