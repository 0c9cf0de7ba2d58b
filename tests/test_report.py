"""`svfcheck report`: the README's main job writes a page and JSON a reader and a program can use."""

from __future__ import annotations

import json
import re

import pytest

from svfcheck.reports import paper
from svfcheck.reports.html import Claim, Section


def _fake_section(out, seed, quick, progress):
    return Section("fake", claims=(Claim("c1", "p", "m", True), Claim("c2", "p", "m", False))), {"x": 1}


def _crashing_section(out, seed, quick, progress):
    raise RuntimeError("boom in section")


def test_crashed_section_is_reported_not_swallowed(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "SECTIONS", [("fake", _fake_section), ("crash", _crashing_section)])
    r = paper.run_report(tmp_path, progress=False)
    assert (r["n_claims"], r["n_passed"], r["n_errors"]) == (2, 1, 1)
    assert "boom in section" in r["sections"]["crash"]["error"]
    page = (tmp_path / "index.html").read_text()
    assert "boom in section" in page and page.count("FAIL") == 1 and page.count("PASS") == 1
    assert json.loads((tmp_path / "report.json").read_text())["n_errors"] == 1


def test_cli_exit_code_reflects_failed_claims_and_crashes(tmp_path, monkeypatch):
    from svfcheck.cli import main

    monkeypatch.setattr(paper, "SECTIONS", [("fake", _fake_section)])
    assert main(["report", "--out", str(tmp_path), "--quiet"]) == 0  # a failed claim is a result
    assert main(["report", "--out", str(tmp_path), "--quiet", "--strict"]) == 1
    monkeypatch.setattr(paper, "SECTIONS", [("crash", _crashing_section)])
    assert main(["report", "--out", str(tmp_path), "--quiet"]) == 1  # a crash is not


_DEFAULT_REPORT: dict = {}


def default_report(tmp_path_factory):
    """``(folder, report dict)`` of the default report, produced once per test session and
    shared with tests/test_report_render.py (which renders the same page in Chromium)."""
    if "run" not in _DEFAULT_REPORT:
        out = tmp_path_factory.mktemp("default-report")
        _DEFAULT_REPORT["run"] = (out, paper.run_report(out, seed=0, progress=False))
    return _DEFAULT_REPORT["run"]


REAL = "Real models: sparse attention decomposition (paper §5)"


def test_real_section_is_in_the_default_report():
    assert [t for t, _ in paper.SECTIONS][-1] == REAL


@pytest.mark.gpu
def test_default_report_reproduces_theory_toy_and_real_model_claims(tmp_path_factory):
    """The README's first command on its built-in default: every claim passes, figures embedded."""
    tmp_path, r = default_report(tmp_path_factory)
    failed = [c["claim"] for c in r["claims"] if not c["passed"]]
    assert r["n_errors"] == 0, {k: v.get("error") for k, v in r["sections"].items()}
    # Known, measured non-reproduction (see tests/toy/test_toy_alignment.py::test_sad_ordering):
    # seed 0 has S(0 pairs) 0.153 < S(2 pairs) 0.154 after 10k steps. Any other failure fails.
    known = {"Toy SAD (Fig. 7a): two pairs present is still sparser than none (every seed)"}
    assert set(failed) <= known, failed
    # real-model section: per model (SmolLM2 IOI, MiniLM text, Gemma-3 IOI) exactness, two
    # control contrasts and S_svd — 4 claims each, all of which must pass (measured: all pass)
    real = [c for c in r["claims"] if c["section"] == REAL]
    assert len(real) == 12, [c["claim"] for c in real]
    assert all(c["passed"] for c in real), [c for c in real if not c["passed"]]
    sad = r["sections"][REAL]
    for name in ("smollm2-135m", "minilm-l6", "gemma3-270m"):
        m = sad["models"][name]
        assert min(m["n_pairs"].values()) >= 500, m["n_pairs"]
        assert m["contrast"]["passes"] is True
        assert max(m["max_reconstruction_error"].values()) < sad["exact_bound"]
        # readouts of the shown heads (those of the decomposition figure's pairs): 2 singular triples
        # each, 5 tokens per pole, singular values in decreasing order per head
        heads = {(x["layer"], x["head"]) for x in m["readouts"]}
        assert 1 <= len(heads) <= 4 and len(m["readouts"]) == 2 * len(heads)
        for x in m["readouts"]:
            assert all(len(x[k]) == 5 for k in ("query_top", "query_bottom", "key_top", "key_bottom"))
        for lh in heads:
            sv = [x["singular_value"] for x in m["readouts"] if (x["layer"], x["head"]) == lh]
            assert sv == sorted(sv, reverse=True) and sv[-1] > 0
    assert r["n_claims"] >= 7 + 12
    page = (tmp_path / "index.html").read_text()
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) >= 4 + 6
    assert "Theorem 2" in page and "Toy model" in page and REAL in page and "smollm2-135m" in page
    assert "singular vectors read" in page  # the readout table is on the page
    assert [p["title"] for p in r["page"]] == [t for t, _ in paper.SECTIONS]


@pytest.mark.gpu
def test_default_report_golden(tmp_path_factory, request):
    """Every claim's measured figure and verdict, and every section's data, as recorded
    (tests/_goldens.py): a refactor must not move a number of the main job."""
    from tests._goldens import check_json

    _, r = default_report(tmp_path_factory)
    check_json("report-default", {k: r[k] for k in ("claims", "n_claims", "n_passed", "n_errors", "sections", "page")},
               request)
