"""The report page as a person sees it: rendered in headless Chromium (scripts/check_report_render.py).

Without Chromium these tests skip with the reason — unless ``SVFCHECK_REQUIRE_CHROMIUM=1``
(CI installs Chromium and sets it), where a missing Chromium is a failure. The default report
is the one tests/test_report.py produces (shared, produced once per session).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from svfcheck.reports import paper
from svfcheck.reports.html import Claim, Section
from test_report import default_report

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_report_render.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_report_render", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


crr = _load_script()


@pytest.fixture(scope="session")
def chromium():
    try:
        return crr.find_chromium()
    except crr.ChromiumMissing as e:
        if os.environ.get("SVFCHECK_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"SVFCHECK_REQUIRE_CHROMIUM=1 but {e}", pytrace=False)
        pytest.skip(f"render check needs Chromium: {e}")


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """A two-section report (claims, a table, two figures) built by run_report."""
    out = tmp_path_factory.mktemp("small-report")
    fig = _png(out / "f.png")

    def a(o, seed, quick, progress):
        return Section("Alpha", claims=(Claim("c1", "p", "m", True), Claim("c2", "p", "m", False)),
                       tables=(("numbers", ("x", "y"), (("1", "2"), ("3", "4"))),), figures=(("fig one", fig), ("fig two", fig))), {}

    def b(o, seed, quick, progress):
        return Section("Beta", claims=(Claim("c3", "p", "m", True),)), {}

    saved = paper.SECTIONS
    paper.SECTIONS = [("Alpha", a), ("Beta", b)]
    try:
        paper.run_report(out, progress=False)
    finally:
        paper.SECTIONS = saved
    return out


def test_small_report_renders_with_every_section_table_and_figure(small_report, chromium, tmp_path):
    shot = tmp_path / "shot.png"
    res = crr.check_report(small_report, chromium, shot)
    assert res.ok, res.problems
    secs = {s["title"]: s for s in res.page["sections"]}
    assert set(secs) == {"Alpha", "Beta"}
    assert secs["Alpha"]["claims_rows"] == 2 and secs["Alpha"]["verdicts"] == ["PASS", "FAIL"]
    assert [t["rows"] for t in secs["Alpha"]["tables"]] == [2]
    assert [(i["natural_width"], i["natural_height"]) for i in secs["Alpha"]["images"]] == [(300, 200)] * 2  # 3x2 in at 100 dpi
    assert res.screenshot == shot and res.screenshot_size[0] == crr.WIDTH and res.screenshot_size[1] > 400


def _broken_copy(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "report.json").write_text((src / "report.json").read_text())
    (dst / "index.html").write_text(edit((src / "index.html").read_text()))
    return dst


def test_render_check_catches_undecodable_figure_and_missing_section(small_report, chromium, tmp_path):
    # a figure whose data is not a PNG: the <img> is there, but it does not decode
    bad_img = _broken_copy(small_report, tmp_path / "img",
                           lambda t: re.sub(r"base64,[^']+'", "base64,bm90IGEgcG5n'", t, count=1))
    res = crr.check_report(bad_img, chromium)
    assert any("did not decode" in p and "fig one" in p for p in res.problems), res.problems
    # the Beta section (heading and claims table) removed from the page
    no_beta = _broken_copy(small_report, tmp_path / "sec", lambda t: re.sub(r"<h2>Beta</h2>\s*<table class='claims'>.*?</table>", "", t, flags=re.S))
    res = crr.check_report(no_beta, chromium)
    assert res.problems == ["section 'Beta' is not on the page"], res.problems


def test_script_reports_bad_input_clearly(tmp_path, capsys):
    assert crr.main([str(tmp_path)]) == 2
    assert "index.html not found" in capsys.readouterr().err
    (tmp_path / "index.html").write_text("<html><body></body></html>")
    (tmp_path / "report.json").write_text(json.dumps({"claims": []}))
    assert crr.main([str(tmp_path)]) == 2
    assert "no 'page' list" in capsys.readouterr().err


def test_missing_chromium_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("SVFCHECK_CHROMIUM", raising=False)
    with pytest.raises(crr.ChromiumMissing, match="apt-get install -y chromium"):
        crr.find_chromium()


@pytest.mark.gpu
def test_default_report_renders_in_chromium(tmp_path_factory, chromium):
    """The default report (theory, toy, real models) as a reader sees it: every section with
    its claims table, data tables and figures, every figure decoded; screenshot kept next to it."""
    out, r = default_report(tmp_path_factory)
    res = crr.check_report(out, chromium)
    print(f"\nscreenshot: {res.screenshot} {res.screenshot_size}; notes: {res.notes}")
    assert res.ok, res.problems
    titles = [s["title"] for s in res.page["sections"]]
    assert titles == [t for t, _ in paper.SECTIONS]
    n_fig = sum(len(s["images"]) for s in res.page["sections"])
    assert n_fig == sum(p["n_figures"] for p in r["page"]) >= 9
