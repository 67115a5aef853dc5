"""The static HTML report: content, offline-ness, fallbacks, and a headless-browser look."""
from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pytest_latentaudit import deploy
from pytest_latentaudit.html_report import build_html, render_html
from pytest_latentaudit.images import save_strip

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class TagChecker(html.parser.HTMLParser):
    """Balanced, properly nested tags; collects every src/href."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.urls, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(text: str) -> TagChecker:
    p = TagChecker()
    p.feed(text)
    p.close()
    assert text.startswith("<!DOCTYPE html>")
    assert not p.errors, p.errors[:5]
    assert not p.stack, p.stack
    return p


def rec(name, direction, eps, verdict, v=4, f=0, u=0, kind="accuracy", **extra):
    n = v + f + u
    return {"nodeid": f"tests/test_faces.py::{name}", "direction": direction, "eps": eps, "verdict": verdict,
            "spec": {"kind": kind, "at_least": 0.75}, "spec_text": f"{kind}(at_least=0.75)", "n_seeds": n,
            "counts": {"verified": v, "falsified": f, "unknown": u}, "verified_fraction": v / n, "at_least": 0.75,
            "engine": "auto", "rungs": {"ibp": v}, "seconds": 0.25, "outcome": "passed", "failing_bound": None,
            "counterexamples": [], "notes": [], "segment": None, **extra}


@pytest.fixture
def sheet(tmp_path):
    frames = [np.full((1, 6, 6), v) for v in np.linspace(0, 1, 4)]
    img = save_strip(tmp_path / "cex" / "pose-seed0.png", frames)
    cex = {"seed_index": 0, "offset": [-2.0], "offset_eps": [-1.0], "predicted": 1, "expected": 0, "margin": 3.0,
           "image": str(img)}
    missing = dict(cex, seed_index=1, image=str(tmp_path / "cex" / "gone.png"))
    tests = [
        rec("test_pose_small", "pose", 0.5, "proved",
            sweep=[{"eps": 0.25, "verdict": "proved", "counts": {"verified": 4, "falsified": 0, "unknown": 0},
                    "verified_fraction": 1.0},
                   {"eps": 1.0, "verdict": "unproven", "counts": {"verified": 2, "falsified": 0, "unknown": 2},
                    "verified_fraction": 0.5}]),
        rec("test_pose_big", "pose", 2.0, "violated", v=1, f=3, outcome="failed", counterexamples=[cex, missing]),
        rec("test_light", "light", 0.3, "proved", kind="invariance"),
        rec("test_<script>alert(1)</script>", "light", 0.6, "unproven", v=2, u=2, outcome="xfailed",
            failing_bound=0.125, notes=["a note & <b>markup</b>"]),
    ]
    for t in tests:
        t["latent_range"] = deploy.latent_ranges([[1.0, 0.0], [-1.0, 0.5]], t["eps"], 0, with_basis=True)
        t["declared_directions"] = ["light", "pose", "tilt"]
    directions = deploy.directions_section(tests, declared=["light", "pose", "tilt"])
    directions["pose"]["certified_radius"] = deploy.certified_radius_summary(np.linspace(0.2, 1.4, 40), bins=6)
    return {"schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0.1.0"},
            "created": "2026-01-01T00:00:00+00:00", "commit": {"id": "0123456789abcdef", "dirty": False},
            "machine": {"python": "3.11", "cpu_count": 2}, "settings": {"engine": "auto", "budget": 60.0},
            "models": ["sha256:00ff"], "summary": {"tests": 4, "verdicts": {"proved": 2, "violated": 1, "unproven": 1},
                                                   "seeds": {"verified": 11, "falsified": 3, "unknown": 2}},
            "tests": tests, "directions": directions}


def _no_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)


def test_report_with_matplotlib(sheet, tmp_path):
    pytest.importorskip("matplotlib")
    lxml_html = pytest.importorskip("lxml.html")
    path = render_html(sheet, tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    p = check_html(text)
    doc = lxml_html.fromstring(text)
    # one fraction chart per tested direction and the certified-radius histogram
    charts = doc.xpath('//img[@class="chart"]')
    assert len(charts) == 3 and all(c.get("src").startswith("data:image/png;base64,") for c in charts)
    assert not doc.xpath('//table[contains(@class, "fractions")]')
    # counterexample strip embedded; the missing one explained
    strips = doc.xpath('//div[@class="strips"]//img')
    assert len(strips) == 1 and strips[0].get("src").startswith("data:image/png;base64,iVBORw0KGgo")
    assert "image not found:" in text and "gone.png" in text
    # the full tests table and the coverage matrix
    rows = doc.xpath('//table[contains(@class, "tests")]/tbody/tr')
    assert len(rows) == 4
    matrix = doc.xpath('//table[contains(@class, "matrix")]')[0]
    assert [th.text_content() for th in matrix.xpath("./thead/tr/th")][2:] == ["0.25", "0.3", "0.5", "0.6", "1", "2"]
    assert "tilt" in matrix.text_content() and "no tests" in matrix.text_content()
    assert "<b>0 of 3</b> directions proved" in text  # pose violated, light unproven, tilt untested
    # deployment range table of the proved direction
    assert doc.xpath('//table[contains(@class, "range")]')
    # offline: only inline pictures and in-page anchors, no scripts
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in p.urls), p.urls
    assert "script" not in p.tags and "<script>alert" not in text and "&lt;script&gt;alert(1)" in text
    # atomic write: no temporary files left behind
    assert sorted(os.listdir(path.parent)) == ["report.html"]


def test_report_without_matplotlib(sheet, tmp_path, monkeypatch):
    lxml_html = pytest.importorskip("lxml.html")
    _no_matplotlib(monkeypatch)
    text = render_html(sheet, tmp_path / "report.html").read_text(encoding="utf-8")
    check_html(text)
    doc = lxml_html.fromstring(text)
    assert not doc.xpath('//img[@class="chart"]')
    tables = doc.xpath('//table[contains(@class, "fractions")]')
    assert len(tables) == 2  # pose and light
    pose_rows = [[td.text_content() for td in tr.xpath("./td")] for tr in tables[1].xpath("./tbody/tr")]
    assert [(r[1], r[2], r[3], r[4]) for r in pose_rows] == [("0.25", "100.0%", "0.0%", "0.0%"),
                                                             ("0.5", "100.0%", "0.0%", "0.0%"),
                                                             ("1", "50.0%", "0.0%", "50.0%"),
                                                             ("2", "25.0%", "75.0%", "0.0%")]
    assert doc.xpath('//table[contains(@class, "histogram")]')  # certified radius as a table
    assert len(doc.xpath('//div[@class="strips"]//img')) == 1  # counterexamples still embedded


def test_report_without_images(sheet, tmp_path):
    text = build_html(sheet, images=False)
    check_html(text)
    assert "data:image" not in text
    assert "pose-seed0.png" in text  # the path is listed instead
    assert 'class="fractions"' in text


def test_minimal_and_empty_sheets(tmp_path):
    check_html(build_html({"schema_version": 1, "tests": []}))
    bare = {"schema_version": 1, "tests": [rec("test_a", "pose", 0.1, "proved")]}
    text = build_html(bare, images=False)
    check_html(text)
    assert "test_a" in text and "Deployment range" not in text


def test_accepts_a_path_and_relative_images(sheet, tmp_path):
    import json

    for t in sheet["tests"]:
        for c in t["counterexamples"]:
            c["image"] = os.path.relpath(c["image"], tmp_path)
    src = tmp_path / "sheet.json"
    src.write_text(json.dumps(sheet))
    text = build_html(str(src), base_dir=tmp_path)
    assert text.count("data:image/png;base64,iVBORw0KGgo") >= 1 and "image not found: cex/gone.png" in text


def test_headless_browser_screenshot(sheet, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH: install it (apt-get install chromium) to screenshot the report")
    report = render_html(sheet, tmp_path / "report.html")
    png = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,1600",
           report.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 90 s")
    assert png.exists(), proc.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    try:
        from PIL import Image
    except ImportError:
        return
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[:2] == (1600, 1200)
    colours = np.unique(im.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, badges, charts: not a blank page
    # the verdict colours made it to the screen (green of "proved" chart bars)
    assert ((np.abs(im.astype(int) - [0x2E, 0x9D, 0x57]).sum(axis=2)) < 30).sum() > 500
