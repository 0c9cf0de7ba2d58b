"""The ratio-table command (benchmarks/ratios.py) on synthetic pytest-benchmark runs (no timing)."""

from __future__ import annotations

import json
import os

import pytest

import ratios

RUN = {
    "datetime": "2026-11-22T04:00:00",
    "benchmarks": [
        {
            "group": None,
            "name": "test_svd_route[cholesky-gpt2]",
            "fullname": "benchmarks/test_svd_speed.py::test_svd_route[cholesky-gpt2]",
            "extra_info": {"ratio_vs_dense": 0.01, "ratio_vs_three_svd": 0.6, "target_max_ratio_vs_dense": 0.02,
                           "target_max_ratio_vs_three_svd": 0.5, "seconds_same_run": 0.1, "shape": "gpt2"},
        },
        {
            "group": "decompose",
            "name": "test_decompose_speed_rope",
            "fullname": "benchmarks/test_decompose_speed.py::test_decompose_speed_rope",
            "extra_info": {"ratio_vs_forward": 2.5, "cold_ratio_vs_forward": 40.0, "ratio_vs_note": "not a number"},
        },
    ],
}


def test_rows_pick_every_ratio_and_its_target():
    rows = ratios.ratio_rows(RUN)
    got = {(r["benchmark"], r["key"]): r for r in rows}
    # 2 svd ratios + 2 numeric decompose ratios; targets and non-numeric values are not rows
    assert set(got) == {
        ("test_svd_route[cholesky-gpt2]", "ratio_vs_dense"),
        ("test_svd_route[cholesky-gpt2]", "ratio_vs_three_svd"),
        ("test_decompose_speed_rope", "ratio_vs_forward"),
        ("test_decompose_speed_rope", "cold_ratio_vs_forward"),
    }
    dense = got[("test_svd_route[cholesky-gpt2]", "ratio_vs_dense")]
    assert (dense["group"], dense["baseline"], dense["ratio"], dense["target_max"], dense["met"]) == ("svd_speed", "dense", 0.01, 0.02, True)
    assert got[("test_svd_route[cholesky-gpt2]", "ratio_vs_three_svd")]["met"] is False  # 0.6 > 0.5
    cold = got[("test_decompose_speed_rope", "cold_ratio_vs_forward")]
    assert (cold["group"], cold["variant"], cold["baseline"], cold["met"]) == ("decompose", "cold", "forward", None)


def test_table_lists_ratios_and_verdicts():
    table = ratios.format_table(ratios.ratio_rows(RUN))
    lines = table.splitlines()
    assert lines[0].split() == ["group", "benchmark", "ratio", "value", "reads", "as", "target", "met"]
    assert len(lines) == 2 + 4
    dense = next(line for line in lines if "ratio_vs_dense" in line)
    assert "100.0x faster" in dense and "<= 0.02" in dense and dense.endswith("yes")
    assert next(line for line in lines if "ratio_vs_three_svd" in line).endswith("NO")
    assert "40.00 forward passes" in next(line for line in lines if "cold_ratio_vs_forward" in line)


def test_main_defaults_to_the_newest_saved_run(tmp_path, capsys):
    machine = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    old, new = machine / "0001_baseline.json", machine / "0002_x.json"
    old.write_text(json.dumps({"benchmarks": [{"name": "stale_run_bench", "extra_info": {"ratio_vs_a": 1.0}}]}))
    new.write_text(json.dumps(RUN))
    os.utime(old, (1, 1))  # the older file by mtime
    assert ratios.main(["--root", str(tmp_path / ".benchmarks")]) == 0
    out = capsys.readouterr().out
    assert "0002_x.json" in out and "ratio_vs_dense" in out and "stale_run_bench" not in out.split("\n", 1)[1]
    assert ratios.main([str(old), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["benchmark"] for r in data["rows"]] == ["stale_run_bench"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no saved benchmark run"),
        (lambda p: (p / "x.json").write_text("{not json"), "is not JSON"),
        (lambda p: (p / "x.json").write_text("[1, 2]"), "not a pytest-benchmark run"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, setup, message):
    setup(tmp_path)
    assert ratios.main(["--root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert ratios.main([str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
