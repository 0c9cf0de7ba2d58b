"""The `svfcheck` command: subcommands write what they promise; bad input exits 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys


from svfcheck.cli import main


def test_theory_writes_json_with_every_result(tmp_path):
    assert main(["theory", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "theory.json").read_text())
    assert set(data) >= {"theorem1", "corollary1", "theorem2", "theorem3"}
    assert data["theorem2"]["violations"] == 0
    # the recorded tightness is a measured ratio in (0, 1], not a placeholder
    assert 0 < data["theorem2"]["worst_sin_over_delta"] <= 1


def test_no_subcommand_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "svfcheck.cli"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "COMMAND" in r.stderr or "required" in r.stderr


def test_help_lists_subcommands():
    r = subprocess.run([sys.executable, "-m", "svfcheck.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("report", "theory"):
        assert cmd in r.stdout


def test_toy_subcommand_trains_and_writes_json(tmp_path):
    # 200 steps: the wiring is under test here, not alignment (tests/toy covers that)
    assert main(["toy", "--out", str(tmp_path), "--steps", "200", "--seeds", "0,1", "--quiet"]) == 0
    data = json.loads((tmp_path / "toy.json").read_text())
    assert data["preset"] == "default" and data["seeds"] == [0, 1] and data["steps"] == 200
    assert (tmp_path / "default_cosines.png").stat().st_size > 0


def test_toy_unknown_preset_exits_2(tmp_path, capsys):
    assert main(["toy", "--out", str(tmp_path), "--preset", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "'nope'" in err and "single-pair" in err  # the flag, the value, the choices
