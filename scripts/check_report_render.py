#!/usr/bin/env python3
"""Render an ``svfcheck report`` page in headless Chromium and check it as a reader would see it.

Usage::

    python scripts/check_report_render.py REPORT_DIR [--screenshot PNG] [--chromium PATH] [--json]

What it does:

1. Reads ``REPORT_DIR/report.json`` — its ``page`` list says what each section must show
   (claims, tables, figures) — and ``REPORT_DIR/index.html``.
2. Renders a copy of the page with a small probe script appended (``--dump-dom``, headless):
   after the ``load`` event the probe records, section by section (each ``<h2>`` up to the
   next), the tables with their row counts, PASS/FAIL verdict cells and every image's decoded
   size (``naturalWidth``/``naturalHeight``, ``complete``) and laid-out size.
3. Takes a full-page screenshot of the unmodified page (``--screenshot``, default
   ``REPORT_DIR/render.png``) and checks it is a PNG of the expected width that is not blank.
4. Compares: every section of ``report.json`` is on the page, with a claims table of the right
   number of rows, the right number of data tables (each with rows) and of figures, and every
   figure decoded with a non-zero size and is laid out with a non-zero size.
5. Checks the figures are readable and packed (the probe records each ``<img>``'s and its
   ``<figure>``'s laid-out box and the page's content box; the drawn size of each figure comes
   from its PNG: pixels over the ``pHYs`` dpi, 100 dpi without one):

   - every figure is displayed at least :data:`MIN_FIGURE_PX` CSS px wide;
   - every figure is displayed at least :data:`MIN_SCALE` of its drawn size (96 CSS px per
     inch), so text drawn at 9 pt reads as ≥ ~8.5 pt — a 12-panel strip squeezed into a
     column fails this;
   - a figure too wide to be shown at :data:`MIN_SCALE` in half the content width spans the
     full content width;
   - figures are packed: in each section, the figures side by side (a "row": boxes that overlap
     vertically) cover at least 1 − :data:`MAX_ROW_HOLE` of the content width × the row's
     height, and only a section's last row may hold a single figure that does not span.

Exit status: 0 all present; 1 something missing (each problem printed); 2 bad input (no such
report, no Chromium). Chromium runs with a fresh profile and no network features:
``--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
--disable-background-networking --disable-component-update --disable-sync``.
Chromium is found as ``$SVFCHECK_CHROMIUM``, ``chromium``, ``chromium-browser`` or
``google-chrome`` on PATH (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from svfcheck.reports.html import png_inches  # the page's own reading of a figure's drawn size

__all__ = ["find_chromium", "check_report", "layout_problems", "png_inches", "RenderCheck", "ChromiumMissing", "main"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WIDTH = 1280
MAX_HEIGHT = 16_000  # screenshots taller than this are cropped (Chromium's own limit is ~16k px)
PROBE_ID = "svfcheck-render-probe"
MIN_FIGURE_PX = 480  # at WIDTH: the page's content is 1100 px, a column ~542 px
MIN_SCALE = 0.95  # displayed width / drawn width (96 CSS px per inch)
MAX_ROW_HOLE = 0.25  # largest empty fraction of a row of figures (content width × row height)
CSS_PX_PER_INCH = 96.0
EDGE_PX = 2.0  # tolerance for "spans the content width"

PROBE = """
<pre id="%s" style="display:none"></pre>
<script>
window.addEventListener('load', function () {
  var sections = [], cur = null;
  var kids = document.body.children;
  for (var i = 0; i < kids.length; i++) {
    var el = kids[i];
    if (el.id === '%s' || el.tagName === 'SCRIPT') continue;
    if (el.tagName === 'H2') { cur = {title: el.textContent, claims_rows: null, tables: [], images: [], verdicts: [], errors: 0}; sections.push(cur); continue; }
    if (!cur) continue;
    if (el.tagName === 'TABLE') {
      var rows = el.tBodies.length ? el.tBodies[0].rows.length : 0;
      if (el.classList.contains('claims')) {
        cur.claims_rows = rows;
        var v = el.querySelectorAll('td.pass, td.fail');
        for (var j = 0; j < v.length; j++) cur.verdicts.push(v[j].textContent);
      } else {
        cur.tables.push({caption: el.caption ? el.caption.textContent : '', rows: rows});
      }
    }
    if (el.tagName === 'PRE' && el.classList.contains('error')) cur.errors++;
    var imgs = el.tagName === 'IMG' ? [el] : el.querySelectorAll('img');
    for (var k = 0; k < imgs.length; k++) {
      var im = imgs[k], r = im.getBoundingClientRect();
      var f = (im.closest && im.closest('figure')) || im, fr = f.getBoundingClientRect();
      cur.images.push({alt: im.alt, complete: im.complete, natural_width: im.naturalWidth,
                       natural_height: im.naturalHeight, width: r.width, height: r.height,
                       index: Array.prototype.indexOf.call(document.images, im),
                       left: r.left + window.scrollX, top: r.top + window.scrollY,
                       figure: {left: fr.left + window.scrollX, top: fr.top + window.scrollY,
                                width: fr.width, height: fr.height}});
    }
  }
  var b = document.body, bs = getComputedStyle(b), br = b.getBoundingClientRect();
  var pl = parseFloat(bs.paddingLeft) || 0, pr = parseFloat(bs.paddingRight) || 0;
  document.getElementById('%s').textContent = JSON.stringify({
    title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
    verdict: (document.getElementById('verdict') || {}).textContent || '',
    content_left: br.left + window.scrollX + pl, content_width: b.clientWidth - pl - pr,
    scroll_height: document.documentElement.scrollHeight, sections: sections});
});
</script>
""" % (PROBE_ID, PROBE_ID, PROBE_ID)


class ChromiumMissing(RuntimeError):
    """No Chromium executable was found."""


@dataclass
class RenderCheck:
    """Outcome: ``problems`` is empty when every expected section, table and figure rendered."""

    problems: list[str]
    page: dict
    screenshot: Path | None
    screenshot_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "screenshot": str(self.screenshot) if self.screenshot else None,
                "screenshot_size": self.screenshot_size, "page": self.page, "notes": self.notes}


def find_chromium(explicit: str | None = None) -> str:
    """Path of a Chromium executable; :class:`ChromiumMissing` with install advice if none."""
    for cand in (explicit, os.environ.get("SVFCHECK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and (shutil.which(cand) or (Path(cand).is_file() and os.access(cand, os.X_OK))):
            return shutil.which(cand) or cand
    raise ChromiumMissing(
        "no Chromium found (tried $SVFCHECK_CHROMIUM, chromium, chromium-browser, google-chrome); "
        "install it (Debian/Ubuntu: `apt-get install -y chromium`) or pass --chromium PATH"
    )


def _run(chromium: str, args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"chromium failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


_IMG = re.compile(r"<img\b[^>]*>", re.I)
_SRC = re.compile(r"""\bsrc\s*=\s*(['"])data:image/png;base64,([^'"]*)\1""", re.I)


def _drawn_inches(page_html: str) -> list[tuple[float, float] | None]:
    """Drawn size of every ``<img>`` of the page in document order (``document.images``)."""
    out = []
    for tag in _IMG.findall(page_html):
        m = _SRC.search(tag)
        try:
            out.append(png_inches(base64.b64decode(m.group(2))) if m else None)
        except ValueError:
            out.append(None)
    return out


def layout_problems(page: dict, drawn: list[tuple[float, float] | None]) -> tuple[list[str], list[str]]:
    """(problems, notes) of the figures' sizes and packing; see the module docstring, step 5.

    ``page`` is the probe's record, ``drawn`` the drawn size (inches) of each ``document.images``
    entry."""
    problems: list[str] = []
    notes: list[str] = []
    cw, cl = float(page.get("content_width") or 0), float(page.get("content_left") or 0)
    if cw <= 0:
        return ["the page's content width could not be measured"], notes
    scales = []
    for s in page["sections"]:
        t = s["title"]
        shown = [im for im in s["images"] if im["width"] > 0 and im["height"] > 0]
        for im in shown:
            size = drawn[im["index"]] if 0 <= im.get("index", -1) < len(drawn) else None
            if im["width"] < MIN_FIGURE_PX:
                problems.append(f"section {t!r}: figure {im['alt']!r} is displayed {im['width']:.0f} px wide, "
                                f"less than {MIN_FIGURE_PX} px")
            if size is None:
                continue
            drawn_px = size[0] * CSS_PX_PER_INCH
            scale = im["width"] / drawn_px
            scales.append(scale)
            if scale < MIN_SCALE:
                problems.append(f"section {t!r}: figure {im['alt']!r} drawn {size[0]:.1f} in wide is displayed at "
                                f"{im['width']:.0f} px = {scale:.0%} of its drawn size (text shrinks alike), "
                                f"less than {MIN_SCALE:.0%}")
            if drawn_px * MIN_SCALE > cw / 2 and (im["width"] < cw - EDGE_PX or abs(im["left"] - cl) > EDGE_PX):
                problems.append(f"section {t!r}: wide figure {im['alt']!r} ({size[0]:.1f} in) is displayed "
                                f"{im['width']:.0f} px wide at x={im['left'] - cl:.0f}; it should span the content "
                                f"width ({cw:.0f} px)")
        rows: list[list[dict]] = []
        for im in sorted(shown, key=lambda im: im["figure"]["top"]):
            f = im["figure"]
            if rows and f["top"] < max(g["figure"]["top"] + g["figure"]["height"] for g in rows[-1]) - 1:
                rows[-1].append(im)
            else:
                rows.append([im])
        for i, row in enumerate(rows):
            boxes = [im["figure"] for im in row]
            top = min(b["top"] for b in boxes)
            height = max(b["top"] + b["height"] for b in boxes) - top
            filled = sum(min(b["width"], cw) * b["height"] for b in boxes)
            hole = 1 - filled / (cw * height) if height > 0 else 0.0
            spans = any(b["width"] >= cw - EDGE_PX for b in boxes)
            names = ", ".join(repr(im["alt"]) for im in row)
            if len(row) == 1 and not spans:
                if i < len(rows) - 1:
                    problems.append(f"section {t!r}: figure {names} stands alone in its row with an empty column "
                                    f"beside it, and more figures follow")
                continue
            if hole > MAX_ROW_HOLE:
                problems.append(f"section {t!r}: the row of figures {names} leaves {hole:.0%} of its area empty "
                                f"(more than {MAX_ROW_HOLE:.0%}): figures of unequal height side by side")
    if scales:
        notes.append(f"figures displayed at {min(scales):.0%}–{max(scales):.0%} of their drawn size")
    return problems, notes


def _blank(path: Path) -> bool:
    """True when the screenshot has (almost) a single colour."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(path))
    return float(np.asarray(img)[..., :3].std()) < 1e-3


def check_report(report_dir: Path, chromium: str | None = None, screenshot: Path | None = None, timeout: float = 120) -> RenderCheck:
    """Render ``report_dir/index.html`` headless and compare it with ``report_dir/report.json``.

    ValueError for a missing or malformed report; :class:`ChromiumMissing` without Chromium."""
    report_dir = Path(report_dir)
    index, rjson = report_dir / "index.html", report_dir / "report.json"
    for p in (index, rjson):
        if not p.is_file():
            raise ValueError(f"{p} not found; produce the report with `svfcheck report --out {report_dir}`")
    report = json.loads(rjson.read_text())
    expected = report.get("page")
    if not isinstance(expected, list):
        raise ValueError(f"{rjson} has no 'page' list (written by svfcheck >= this version); re-run `svfcheck report`")
    exe = find_chromium(chromium)
    screenshot = Path(screenshot) if screenshot else report_dir / "render.png"
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="svfcheck-render-") as tmp:
        tmp = Path(tmp)
        text = index.read_text()
        if "</body>" not in text:
            raise ValueError(f"{index} has no </body>; not a report page")
        probe = tmp / "probe.html"
        probe.write_text(text.replace("</body>", PROBE + "</body>", 1))
        dom = _run(exe, [f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp / "profile-dom", timeout).stdout
        m = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', dom, re.S)
        if not m or not m.group(1).strip():
            return RenderCheck([f"the page did not finish rendering (no probe output in the DOM dump of {index})"], {}, None)
        page = json.loads(html.unescape(m.group(1)))
        drawn = _drawn_inches(text)
        height = max(200, min(MAX_HEIGHT, int(page["scroll_height"]) + 20))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _run(exe, [f"--screenshot={screenshot}", f"--window-size={WIDTH},{height}", "--virtual-time-budget=10000",
                   index.resolve().as_uri()], tmp / "profile-shot", timeout)
    notes = []
    size = None
    if not screenshot.is_file() or screenshot.stat().st_size == 0:
        problems.append(f"no screenshot written to {screenshot}")
    else:
        size = _png_size(screenshot)
        if size[0] != WIDTH:
            problems.append(f"screenshot is {size[0]} px wide, expected {WIDTH}")
        if _blank(screenshot):
            problems.append(f"screenshot {screenshot} is blank (a single colour)")
        if page["scroll_height"] + 20 > MAX_HEIGHT:
            notes.append(f"page is {page['scroll_height']} px tall; screenshot cropped at {MAX_HEIGHT} px")
    if not page.get("h1"):
        problems.append("no <h1> title on the page")
    got = {s["title"]: s for s in page["sections"]}
    for exp in expected:
        t = exp["title"]
        s = got.get(t)
        if s is None:
            problems.append(f"section {t!r} is not on the page")
            continue
        if exp["error"] != (s["errors"] > 0):
            problems.append(f"section {t!r}: error box {'missing' if exp['error'] else 'present'}")
        if exp["n_claims"]:
            if s["claims_rows"] != exp["n_claims"]:
                problems.append(f"section {t!r}: claims table has {s['claims_rows']} rows, expected {exp['n_claims']}")
            if len(s["verdicts"]) != exp["n_claims"] or not set(s["verdicts"]) <= {"PASS", "FAIL"}:
                problems.append(f"section {t!r}: verdict cells {s['verdicts']}")
        if len(s["tables"]) != exp["n_tables"]:
            problems.append(f"section {t!r}: {len(s['tables'])} data tables, expected {exp['n_tables']}")
        for tb in s["tables"]:
            if tb["rows"] < 1:
                problems.append(f"section {t!r}: table {tb['caption']!r} has no rows")
        if len(s["images"]) != exp["n_figures"]:
            problems.append(f"section {t!r}: {len(s['images'])} figures, expected {exp['n_figures']}")
        for im in s["images"]:
            if not (im["complete"] and im["natural_width"] > 0 and im["natural_height"] > 0):
                problems.append(f"section {t!r}: figure {im['alt']!r} did not decode "
                                f"(complete={im['complete']}, {im['natural_width']}x{im['natural_height']})")
            elif im["width"] <= 0 or im["height"] <= 0:
                problems.append(f"section {t!r}: figure {im['alt']!r} is laid out with zero size")
    lp, ln = layout_problems(page, drawn)
    problems.extend(lp)
    notes.extend(ln)
    extra = sorted(set(got) - {e["title"] for e in expected})
    if extra:
        notes.append(f"sections on the page but not in report.json: {extra}")
    return RenderCheck(problems, page, screenshot, size, notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", help="folder with index.html and report.json (from `svfcheck report --out DIR`)")
    ap.add_argument("--screenshot", help="where to write the screenshot PNG (default: REPORT_DIR/render.png)")
    ap.add_argument("--chromium", help="Chromium executable (default: $SVFCHECK_CHROMIUM or chromium on PATH)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        res = check_report(Path(args.report_dir), args.chromium, Path(args.screenshot) if args.screenshot else None)
    except (ValueError, ChromiumMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_json(), indent=2))
    else:
        n_img = sum(len(s["images"]) for s in res.page.get("sections", []))
        n_tab = sum(len(s["tables"]) + (s["claims_rows"] is not None) for s in res.page.get("sections", []))
        print(f"rendered {len(res.page.get('sections', []))} sections, {n_tab} tables, {n_img} figures; "
              f"screenshot {res.screenshot} {res.screenshot_size}")
        for n in res.notes:
            print(f"note: {n}")
        for p in res.problems:
            print(f"PROBLEM: {p}")
        print("OK" if res.ok else f"{len(res.problems)} problem(s)")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
