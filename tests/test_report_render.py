"""The report page as a person sees it: rendered in headless Chromium (scripts/check_report_render.py).

Without Chromium these tests skip with the reason — unless ``SVFCHECK_REQUIRE_CHROMIUM=1``
(CI installs Chromium and sets it), where a missing Chromium is a failure. The default report
is the one tests/test_report.py produces (shared, produced once per session).

Readability has two halves: the figure code draws every report figure with text of at least
9 pt and no wider than the page (test_report_figures_are_drawn_legible, no browser needed), and
the page shows each figure at about its drawn size, wide ones across the page, packed without
holes (the render check's layout rules, which the pre-grid layout fails).
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


def _png(path: Path, size: tuple[float, float] = (3, 2), dpi: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.plot([0, 1], [1, 0])
    ax.set_title(f"{size[0]} x {size[1]} in")
    fig.tight_layout()
    fig.savefig(path, **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    return path


def _report(out, sections):
    """Write a report of ``sections`` (title, builder) into ``out`` instead of the paper's own."""
    saved = paper.SECTIONS
    paper.SECTIONS = sections
    try:
        paper.run_report(out, progress=False)
    finally:
        paper.SECTIONS = saved
    return out


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

    return _report(out, [("Alpha", a), ("Beta", b)])


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
    # two small figures: side by side in the two columns, each a column wide (not thumbnails)
    one, two = secs["Alpha"]["images"]
    assert one["top"] == two["top"] and two["left"] > one["left"] + crr.MIN_FIGURE_PX
    assert min(one["width"], two["width"]) >= crr.MIN_FIGURE_PX


#: The figure rules of the page before the grid (inline-block thumbnails of at most 48%).
OLD_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "figure{display:inline-block;margin:0.5em;max-width:48%}figure img{max-width:100%}"
           "figcaption{font-size:90%;color:#555}")


@pytest.fixture(scope="module")
def layout_report(tmp_path_factory):
    """One section with a narrow, a wide (multi-panel-sized) and another narrow figure, at 110 dpi
    like the report's figures."""
    out = tmp_path_factory.mktemp("layout-report")
    narrow = _png(out / "narrow.png", (5.5, 4.0), dpi=110)
    wide = _png(out / "wide.png", (11.0, 3.0), dpi=110)

    def sec(o, seed, quick, progress):
        return Section("Figures", claims=(Claim("c", "p", "m", True),),
                       figures=(("narrow one", narrow), ("wide strip", wide), ("narrow two", narrow))), {}

    return _report(out, [("Figures", sec)])


def test_wide_figures_span_the_page_and_narrow_ones_pack_beside_each_other(layout_report, chromium, tmp_path):
    res = crr.check_report(layout_report, chromium, tmp_path / "shot.png")
    assert res.ok, res.problems
    cw, cl = res.page["content_width"], res.page["content_left"]
    assert cw == 1100  # the page's max-width at a 1280 px window
    ims = {i["alt"]: i for i in res.page["sections"][0]["images"]}
    n1, wide, n2 = ims["narrow one"], ims["wide strip"], ims["narrow two"]
    # dense grid: the second narrow figure moves up beside the first; the wide one spans below
    assert n1["top"] == n2["top"] < wide["top"]
    assert abs(n1["left"] - cl) <= 1 and n2["left"] > cl + cw / 2 - 20
    assert wide["left"] == pytest.approx(cl, abs=1) and wide["width"] == pytest.approx(cw, abs=1)
    for im in ims.values():  # each shown at about its drawn size (96 CSS px per inch)
        drawn = im["natural_width"] / 110 * 96
        assert crr.MIN_SCALE * drawn <= im["width"] <= 1.1 * drawn, im
        assert im["height"] == pytest.approx(im["width"] * im["natural_height"] / im["natural_width"], rel=0.01)
    assert any("of their drawn size" in n for n in res.notes)


def test_render_check_fails_the_old_thumbnail_layout(layout_report, chromium, tmp_path):
    """The same page with the pre-grid figure CSS: the wide figure is squeezed into a 48% box
    (text at half size) and sits beside a taller narrow one, leaving a hole."""
    def old_page(t: str) -> str:
        t = re.sub(r"<style>.*?</style>", f"<style>{OLD_CSS}</style>", t, flags=re.S)
        return re.sub(r"(<img [^>]*?) width='\d+' height='\d+'", r"\1", t)  # nor the size attributes

    old = _broken_copy(layout_report, tmp_path / "old", old_page)
    res = crr.check_report(old, chromium)
    assert not res.ok
    text = "\n".join(res.problems)
    assert "figure 'wide strip' drawn 11.0 in wide is displayed at 528 px = 50% of its drawn size" in text, text
    assert "wide figure 'wide strip' (11.0 in) is displayed 528 px wide" in text, text
    assert re.search(r"the row of figures 'narrow one', 'wide strip' leaves \d+% of its area empty", text), text
    assert not any("'narrow two'" in p for p in res.problems), res.problems  # a lone last figure is fine


def _im(alt, index, left, top, width, height):
    return {"alt": alt, "index": index, "left": left, "top": top, "width": width, "height": height,
            "figure": {"left": left, "top": top, "width": width, "height": height + 20}}


def test_layout_rules_without_a_browser():
    """layout_problems on hand-made boxes: each rule fails on its own."""
    cw, cl = 1100, 90
    page = lambda *ims: {"content_width": cw, "content_left": cl, "sections": [{"title": "S", "images": list(ims)}]}
    narrow, wide = (5.5, 4.0), (11.0, 3.0)
    good = page(_im("a", 0, cl, 0, 542, 394), _im("b", 1, cl + 558, 0, 542, 394), _im("w", 2, cl, 450, 1100, 300))
    assert crr.layout_problems(good, [narrow, narrow, wide])[0] == []
    # a thumbnail: narrow figure shown 300 px wide
    probs, _ = crr.layout_problems(page(_im("a", 0, cl, 0, 300, 218)), [narrow])
    assert any("displayed 300 px wide, less than 480 px" in p for p in probs) and any("= 57% of its drawn size" in p for p in probs)
    # a wide figure in one column
    probs, _ = crr.layout_problems(page(_im("w", 0, cl, 0, 542, 148), _im("a", 1, cl + 558, 0, 542, 148)), [wide, (5.5, 1.5)])
    assert any("wide figure 'w'" in p and "should span" in p for p in probs), probs
    # a lone narrow figure with more figures after it
    probs, _ = crr.layout_problems(page(_im("a", 0, cl, 0, 542, 394), _im("w", 1, cl, 450, 1100, 300)), [narrow, wide])
    assert probs == ["section 'S': figure 'a' stands alone in its row with an empty column beside it, and more figures follow"]
    # unequal heights side by side
    probs, _ = crr.layout_problems(page(_im("a", 0, cl, 0, 542, 394), _im("b", 1, cl + 558, 0, 542, 150)), [narrow, (5.5, 1.5)])
    assert len(probs) == 1 and "leaves 30% of its area empty" in probs[0], probs


def _report_figures(tmp_path):
    """Draw every figure the report embeds (toy and real-model figure code) from small synthetic
    inputs shaped like the default run's: 20 features, d_h 10, 4 dynamics panels, 6 heads, d_h 64."""
    from types import SimpleNamespace

    import numpy as np

    from svfcheck.real import figures as rf
    from svfcheck.toy import figures as tf

    g = np.random.default_rng(0)
    n, d, T = 20, 10, 41
    steps = list(range(0, 2001, 50))
    summary = {"cos_query": g.random((n, d)), "cos_key": g.random((n, d)), "config": "default",
               "spectrum": np.sort(g.random(d))[::-1] * 7, "target_logits": [24.0, 21.0, 18.0, 15.0]}
    pairs = [(0, 4, 24.0), (1, 5, 21.0), (2, 6, 18.0), (3, 7, 15.0)]
    traj = {"step": steps, "query_index": g.random((T, 4)), "key_index": g.random((T, 4)),
            "loss_rec": 1 + g.random(T), "loss_attn": 0.5 + g.random(T)}
    dyn = {"config": "default", "pairs": [list(p) for p in pairs], "target_logits": summary["target_logits"],
           "panels": [{"step": s, "cos_query": g.random((n, d)).tolist(), "cos_key": g.random((n, d)).tolist()}
                      for s in (0, 150, 600, 2000)],
           "curves": {"step": steps, "loss_rec": list(1 + g.random(T)), "loss_attn": list(0.5 + g.random(T)),
                      "top_singular_values": g.random((T, 4)) * 7, "alignment_index": list(g.random(T)),
                      "alignment_free": list(g.random(T))}}
    sad = {"classes": {c: {"mean": 0.2 + 0.1 * g.random(), "std": 0.05} for c in ("0", "1", "2")}}
    out = [
        tf.cosine_heatmaps(summary, tmp_path / "cos.png"),
        tf.feature_gram(g.normal(size=(d, n)), tmp_path / "gram.png", title="default: feature cosines"),
        tf.spectrum(summary, tmp_path / "spectrum.png", title="default: spectrum of Ω"),
        tf.alignment_over_training(traj, pairs, tmp_path / "training.png", title="default: alignment over training"),
        tf.training_dynamics(dyn, tmp_path / "dyn.png", title="default (seed 0): training dynamics (Fig. 3)"),
        tf.sad_bars(sad, tmp_path / "sad.png", title="default: SAD (Rolls–Tovee S)"),
        tf.sweep_curve(steps, {f"{c} pair(s) present": g.random(T) for c in range(3)}, tmp_path / "sweep.png",
                       xlabel="step", ylabel="mean Rolls–Tovee S", title="default: sparsity of attention decomposition (Fig. 7a)"),
        tf.curves({"p=0.1": (steps, g.random(T))}, tmp_path / "curves.png", xlabel="step"),
    ]

    class Result(SimpleNamespace):
        def __len__(self):
            return len(self.records["layer"])

        def s(self, which="svd"):
            return self.records["rolls_tovee" if which == "svd" else f"rolls_tovee_{which}"]

    P, R = 600, 64
    rec = {"layer": g.integers(0, 30, P), "head": g.integers(0, 9, P), "query_pos": g.integers(0, 15, P),
           "key_pos": g.integers(0, 15, P), "prompt_index": np.zeros(P, int), "attention": g.random(P),
           "relative_attention": 10 * g.random(P), "k": g.integers(1, R, P), "k_rotated": g.integers(1, R, P),
           "terms": g.normal(size=(P, R)), "rolls_tovee": g.random(P), "rolls_tovee_rotated": g.random(P),
           "rolls_tovee_paper_control": g.random(P)}
    heads = sorted({(int(a), int(b)) for a, b in zip(rec["layer"], rec["head"])})
    res = Result(model="smollm2-135m", records=rec, singular_values_dim=R,
                 per_head=[{"layer": a, "head": b, "mean_attention": float(g.random())} for a, b in heads])
    out += [rf.decomposition_bars(res, tmp_path / "bars.png"), rf.k_histograms(res, tmp_path / "k.png"),
            rf.sparsity_vs_controls(res, tmp_path / "s.png", res)]
    return out


def test_report_figures_are_drawn_legible(tmp_path, monkeypatch):
    """Every text of every report figure (tick labels, titles, legends, colorbars) is at least 9 pt
    at the drawn size, and no figure is drawn wider than the page shows at MIN_SCALE — with the
    page showing each figure at >= MIN_SCALE of its drawn size, its text reads as >= ~8.5 pt."""
    import matplotlib.figure
    from matplotlib.text import Text

    from svfcheck.reports.html import COLUMN_INCHES

    seen: dict[str, tuple[tuple[float, float], list[tuple[float, str]]]] = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **k):
        save(fig, path, *a, **k)  # draws: tick labels exist afterwards
        texts = [(t.get_fontsize(), t.get_text()) for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        seen[Path(path).name] = (tuple(fig.get_size_inches()), texts)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    paths = _report_figures(tmp_path)
    assert sorted(seen) == sorted(p.name for p in paths)
    page_in = 1100 / crr.CSS_PX_PER_INCH
    for name, ((w, _h), texts) in seen.items():
        assert texts, name
        small = sorted({(size, txt) for size, txt in texts if size < 9})
        assert not small, f"{name}: text under 9 pt: {small[:8]}"
        assert w <= page_in / crr.MIN_SCALE, f"{name} is drawn {w:.1f} in wide; the page is {page_in:.1f} in"
        # a narrow figure fits a column at full size; a wide one is about the page's width
        assert w <= COLUMN_INCHES or w >= 0.9 * page_in, f"{name}: {w:.1f} in is neither a column nor the page wide"


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
