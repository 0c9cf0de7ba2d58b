"""Every number unchanged: fixed-seed runs of the main commands against recorded goldens
(``tests/_goldens.py``; record with ``pytest --record-goldens -m gpu -k golden``).

- ``svfcheck sad`` on SmolLM2-135M, IOI, 8 prompts, seed 0, against its random init (RoPE, GQA,
  float32 route) and on MiniLM-L6, prose, 4 × 64 tokens (no RoPE, float64 route);
- ``svfcheck toy`` on the default preset (3 seeds, 10k steps).

The report's claims and ``emergence.json`` of ``--run induction-gpt2`` are compared where their
session fixtures live (``tests/test_report.py``, ``tests/emergence/test_emergence_goldens.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svfcheck.cli import main
from tests._goldens import check_json, check_sad

PROSE = str(Path(__file__).parent / "data" / "prose.txt")

SAD_RUNS = {
    "sad-smollm2-ioi": ["--model", "smollm2-135m", "--task", "ioi", "--n-prompts", "8"],
    "sad-minilm-text": ["--model", "minilm-l6", "--task", "text", "--text-file", PROSE, "--n-prompts", "4",
                        "--prompt-tokens", "64"],
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SAD_RUNS))
def test_sad_golden(name, tmp_path, request):
    rc = main(["sad", "--quiet", *SAD_RUNS[name], "--seed", "0", "--baseline", "random-init", "--out", str(tmp_path)])
    assert rc == 0
    check_sad(name, json.loads((tmp_path / "sad.json").read_text()), request, folder=tmp_path)


@pytest.mark.gpu
def test_toy_default_golden(tmp_path, request):
    assert main(["toy", "--quiet", "--out", str(tmp_path)]) == 0
    check_json("toy-default", json.loads((tmp_path / "toy.json").read_text()), request)


# ----------------------------------------------------------------------------- the comparison itself


@pytest.mark.parametrize("got", [
    {"a": 1.0 + 2e-6, "b": [1, 2], "s": "x"},  # a float beyond rtol 1e-6
    {"a": 1.0, "b": [1, 3], "s": "x"},  # an integer
    {"a": 1.0, "b": [1], "s": "x"},  # a list length
    {"a": 1.0, "b": [1, 2], "s": "y"},  # a string
    {"a": 1.0, "b": [1, 2]},  # a missing key
    {"a": 1.0, "b": [1, 2], "s": "x", "new": 0},  # a new key
    {"a": 1, "b": [1, 2], "s": "x"},  # an int where a float was
])
def test_comparison_catches_every_kind_of_change(got):
    from tests._goldens import assert_json_close

    want = {"a": 1.0, "b": [1, 2], "s": "x"}
    assert_json_close(dict(want, seconds=9.0), want)  # volatile keys aside, equal is equal
    with pytest.raises(AssertionError):
        assert_json_close(got, want)

