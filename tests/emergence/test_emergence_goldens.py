"""``emergence.json`` of ``svfcheck emergence --run induction-gpt2`` (the session's shared run,
trained once by the ``induction_run`` fixture) against its recorded golden (tests/_goldens.py):
per-step summaries with their intervals, heads found, contrast, task metric."""

from __future__ import annotations

import json

import pytest

from tests._goldens import check_json

pytestmark = pytest.mark.gpu


def test_induction_gpt2_emergence_golden(induction_cli, request):
    code, out, _ = induction_cli
    assert code == 0
    check_json("emergence-induction-gpt2", json.loads((out / "emergence.json").read_text()), request)
