"""The static HTML report: content, offline-ness, fallbacks, and a headless-browser look."""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pytest_latentaudit.sheet import deploy
from pytest_latentaudit.report import html as html_report
from pytest_latentaudit.report import images
from pytest_latentaudit.report.html import build_html, render_html
from pytest_latentaudit.report.images import save_strip


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


def _text(el) -> str:
    return " ".join(el.text_content().split())


def test_report_with_matplotlib(sheet, tmp_path):
    pytest.importorskip("matplotlib")
    lxml_html = pytest.importorskip("lxml.html")
    path = render_html(sheet, tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    p = check_html(text)
    doc = lxml_html.fromstring(text)
    # pose has four radii (two tests, two sweep points): an eps curve; light has one radius per
    # spec kind and no radius search: no curve. Plus pose's certified-radius histogram.
    charts = doc.xpath('//img[@class="chart"]')
    assert len(charts) == 2 and all(c.get("src").startswith("data:image/png;base64,") for c in charts)
    assert [c.get("alt").split(" along ")[-1] for c in charts] == ["pose", "pose"]
    assert "certified radius histogram" in charts[1].get("alt")
    assert not doc.xpath('//table[contains(@class, "fractions")]')
    # counterexample strip embedded; the missing one explained
    strips = doc.xpath('//div[@class="strips"]//img')
    assert len(strips) == 1 and strips[0].get("src").startswith("data:image/png;base64,iVBORw0KGgo")
    assert "image not found:" in text and "gone.png" in text
    # the full tests table and the coverage matrix
    rows = doc.xpath('//table[@class="tests"]/tbody/tr')
    assert len(rows) == 4
    matrix = doc.xpath('//table[contains(@class, "matrix")]')[0]
    assert [th.text_content() for th in matrix.xpath("./thead/tr/th")][2:] == ["0.25", "0.3", "0.5", "0.6", "1", "2"]
    assert "tilt" in matrix.text_content() and "no tests" in matrix.text_content()
    assert "<b>0 of 3</b> directions proved" in text  # pose violated, light unproven, tilt untested
    # deployment range of the proved direction, in a sentence (one coordinate)
    assert "in spec at deployment when its coordinate along pose lies in [" in text
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
    assert len(tables) == 2  # light and pose (directions in name order)
    pose_rows = [[td.text_content() for td in tr.xpath("./td")] for tr in tables[1].xpath("./tbody/tr")]
    assert [(r[1], r[2], r[3], r[4]) for r in pose_rows] == [("0.25", "100.0%", "0.0%", "0.0%"),
                                                             ("0.5", "100.0%", "0.0%", "0.0%"),
                                                             ("1", "50.0%", "0.0%", "50.0%"),
                                                             ("2", "25.0%", "75.0%", "0.0%")]
    hist = doc.xpath('//table[contains(@class, "histogram")]')  # certified radius as a table
    # the summary's range ends at the largest radius: that seed "reached the cap"
    assert hist and [" ".join(td.text_content() for td in tr.xpath("./td"))
                     for tr in hist[0].xpath("./tbody/tr")][-1] == "\u2265 1.4 (the cap) 1"
    assert len(doc.xpath('//div[@class="strips"]//img')) == 1  # counterexamples still embedded


def test_report_without_images(sheet, tmp_path):
    text = build_html(sheet, images=False)
    check_html(text)
    assert "data:image" not in text
    assert "pose-seed0.png" in text  # the path is listed instead
    assert 'class="fractions' in text


def test_minimal_and_empty_sheets(tmp_path):
    check_html(build_html({"schema_version": 1, "tests": []}))
    assert "No latent tests in this sheet." in build_html({"schema_version": 1, "tests": []})
    bare = {"schema_version": 1, "tests": [rec("test_a", "pose", 0.1, "proved")]}
    text = build_html(bare, images=False)
    check_html(text)
    assert "test_a" in text and "Deployment range" not in text


def test_accepts_a_path_and_relative_images(sheet, tmp_path):
    for t in sheet["tests"]:
        for c in t["counterexamples"]:
            c["image"] = os.path.relpath(c["image"], tmp_path)
    src = tmp_path / "sheet.json"
    src.write_text(json.dumps(sheet))
    text = build_html(str(src), base_dir=tmp_path)
    assert text.count("data:image/png;base64,iVBORw0KGgo") >= 1 and "image not found: cex/gone.png" in text


# ------------------------------------------------------------------ reads at a glance
def test_outcome_aware_expected_violations_are_not_failures(sheet):
    lxml_html = pytest.importorskip("lxml.html")
    for t in sheet["tests"]:
        t["outcome"] = "xfailed" if t["verdict"] != "proved" else "passed"
    doc = lxml_html.fromstring(build_html(sheet, images=False))
    head = _text(doc.xpath('//section[contains(@class, "headline")]')[0])
    assert "All 4 latent tests went as declared: 2 passed, 2 expected violations (strict xfail)" in head
    assert doc.xpath('//section[contains(@class, "headline") and contains(@class, "t-ok")]')
    # the violated test's badge is the muted "expected" one, and its outcome says so
    big = [tr for tr in doc.xpath('//table[@class="tests"]/tbody/tr') if "test_pose_big" in _text(tr)][0]
    assert big.xpath('.//span[contains(@class, "badge") and contains(@class, "expected")]')
    assert "expected (xfail)" in _text(big) and not big.xpath('.//span[contains(@class, "t-fail")]')
    cards = {_text(c.xpath('./div[@class="k"]')[0]): _text(c.xpath('./div[@class="v"]')[0])
             for c in doc.xpath('//div[@class="card" or starts-with(@class, "card ")]')}
    assert cards["failed"] == "0" and cards["expected (xfail)"] == "2" and cards["passed"] == "2"
    # one real failure turns the headline red and names it
    sheet["tests"][1]["outcome"] = "failed"
    doc = lxml_html.fromstring(build_html(sheet, images=False))
    head = doc.xpath('//section[contains(@class, "headline")]')[0]
    assert "t-fail" in head.get("class") and "1 of 4 latent tests failed: test_pose_big." in _text(head)
    # a record without an outcome (older sheets, audit() results): what the default options do
    for t in sheet["tests"]:
        t.pop("outcome")
    assert "2 of 4 latent tests failed" in build_html(sheet, images=False)  # the violated and the unproven


def test_grouped_by_model_with_names(sheet):
    lxml_html = pytest.importorskip("lxml.html")
    for t in sheet["tests"]:
        t["model_fingerprint"] = "sha256:" + ("aa" if t["direction"] == "pose" else "bb") * 16
    sheet["tests"][2]["model_name"] = "certified head"  # a light test names its model
    sheet.pop("directions")  # per model, the sections are computed from the model's records
    doc = lxml_html.fromstring(build_html(sheet, images=False))
    models = doc.xpath('//section[@class="model"]')
    assert [m.get("id") for m in models] == ["m1", "m2"]  # in the order of their first test's node id
    titles = [_text(m.xpath("./h2")[0]) for m in models]
    assert titles[0].startswith("certified head sha256:bbbb") and titles[1].startswith("Model 2 sha256:aaaa")
    # each model has its own coverage matrix and direction panels
    assert [len(m.xpath('.//table[contains(@class, "matrix")]')) for m in models] == [1, 1]
    assert [[d.get("id") for d in m.xpath('.//div[contains(@class, "dir ")]')] for m in models] == \
        [["m1-light"], ["m2-pose"]]
    assert "0 of 3 directions proved" in _text(models[1])
    # the overview names both, with a chip per declared direction
    cards = doc.xpath('//div[contains(@class, "mcard")]')
    assert len(cards) == 2 and "certified head" in _text(cards[0])
    assert [_text(c.xpath('./span[@class="d"]')[0]) for c in cards[1].xpath('.//*[@class="chip"]')] == \
        ["light", "pose", "tilt"]
    # the tests table names each test's model
    rows = doc.xpath('//table[@class="tests"]/tbody/tr')
    assert sorted(_text(r.xpath("./td")[1]) for r in rows) == ["certified head", "certified head", "model 2", "model 2"]


def test_eps_curve_whenever_more_than_one_radius():
    pytest.importorskip("matplotlib")
    lxml_html = pytest.importorskip("lxml.html")
    one = {"schema_version": 1, "tests": [rec("test_a", "pose", 0.1, "proved")]}
    doc = lxml_html.fromstring(build_html(one))
    assert not doc.xpath('//img[@class="chart"]')  # one radius, no radius search: the table row says it all
    two = {"schema_version": 1, "tests": [rec("test_a", "pose", 0.1, "proved"), rec("test_b", "pose", 0.4, "violated",
                                                                                   v=1, f=3, outcome="failed")]}
    doc = lxml_html.fromstring(build_html(two))
    assert len(doc.xpath('//img[@class="chart"]')) == 1
    searched = {"schema_version": 1, "tests": [rec("test_a", "pose", 0.1, "proved", certified_radius=deploy.
                                                   certified_radius_summary([0.05, 0.2, 0.2, 0.2], 0.2, bins=4))]}
    doc = lxml_html.fromstring(build_html(searched))
    assert len(doc.xpath('//img[@class="chart"]')) == 2  # the radius search is a curve; and its histogram


def test_certified_radius_is_honest_about_the_search_cap(monkeypatch):
    cr = deploy.certified_radius_summary([0.0, 0.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1.0, bins=5)
    assert cr["histogram"]["counts"][-1] == 8
    lo, hi = html_report._at_cap(cr)
    assert lo <= 8 == hi and lo >= 7  # the p10 quantile is at the cap: at least 10 - ceil(0.9) seeds
    assert html_report._at_cap(dict(cr, at_cap=8)) == (8, 8)  # exact when the summary records it
    # the curve of seeds certified at each radius: sound (the last step counts only those at the cap)
    surv = html_report._survival(dict(cr, at_cap=8))
    assert surv["cap"] == 1.0 and surv["ys"][0] == 0.9 and surv["ys"][-1] == 0.8
    cap_text = html_report._radius_caption(dict(cr, at_cap=8))
    assert "8 of 10 reached the cap: their radius is at least 1, the search stopped there" in cap_text
    assert "Median 1 (the cap)" in cap_text and "1 near 0" in cap_text
    _no_matplotlib(monkeypatch)
    rec_ = rec("test_a", "pose", 0.5, "proved", certified_radius=dict(cr, at_cap=8))
    text = build_html({"schema_version": 1, "tests": [rec_]})
    lxml_html = pytest.importorskip("lxml.html")
    rows = [" ".join(_text(td) for td in tr.xpath("./td"))
            for tr in lxml_html.fromstring(text).xpath('//table[contains(@class, "histogram")]/tbody/tr')]
    assert rows[-2:] == ["[0.8, 1) 0", "\u2265 1 (the cap) 8"]


def test_validity_in_sentences():
    val = {"direction": "pose", "eps": 2.0, "ok": False,
           "continuity": {"ok": True, "problems": [], "jump_ratio": 1.7, "deviation_median": 0.15,
                          "thresholds": {"max_jump_ratio": 8.0, "max_deviation": 0.5}},
           "independence": None,
           "realism": {"ok": False, "method": "knn", "eps": 0.75, "eps_max": 3.0, "saturated": False,
                       "allowed_outside": 0.1,
                       "problems": ["eps=2 is beyond its realism limit 0.75 (knn): about 66% of the boxes ..."]}}
    text = build_html({"schema_version": 1, "tests": [rec("test_a", "pose", 2.0, "proved", validity=val)]},
                      images=False)
    assert "Continuous at eps=2: decoding changes smoothly along pose; its steepest step is 1.7\u00d7 the median " \
           "step (limit 8\u00d7)" in text
    assert "Independence was not checked (no attribute probes)." in text
    assert "Not realistic at eps=2: decoded samples stay like the data only up to eps\u22480.75 (knn; beyond it more " \
           "than 10% of the boxes reach latent codes unlike the data), so the deployable range stops there." in text
    assert "ok True" not in text and "problems" not in text and "[]" not in text


def test_missing_and_nan_numbers_render_as_dashes(sheet, tmp_path):
    t = sheet["tests"][1]
    t["counterexamples"][0]["margin"] = float("nan")
    t["counterexamples"][1]["margin"] = None
    t["failing_bound"] = float("nan")
    t["seconds"] = None
    t["estimate"] = {"fraction": None, "lower": float("nan"), "upper": 1.0, "confidence": None, "samples": None}
    sheet["tests"][0]["verified_fraction"] = None
    text = build_html(sheet)
    check_html(text)
    assert "margin \u2013" in text and not re.search(r"\bnan\b", text.replace(str(tmp_path), ""), re.I)


def test_cli_html_renders_sheets_with_nan_margins(sheet, tmp_path):
    from pytest_latentaudit import cli

    sheet["tests"][1]["counterexamples"][0]["margin"] = float("nan")
    sheet["tests"][1]["counterexamples"][1]["margin"] = None
    src = tmp_path / "sheet.json"
    src.write_text(json.dumps(sheet))
    assert cli.main(["html", str(src), str(tmp_path / "r.html")]) == 0
    assert "margin \u2013" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_templates_are_package_data():
    tpl = os.path.join(os.path.dirname(html_report.__file__), "templates")
    assert sorted(n for n in os.listdir(tpl) if n.endswith(".j2")) == ["report.css.j2", "report.html.j2"]
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(html_report.__file__)))))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "report/templates/*.j2" in project["tool"]["setuptools"]["package-data"]["pytest_latentaudit"]
    assert any(d.lower().startswith("jinja2") for d in project["project"]["dependencies"])


# ------------------------------------------------------------------ labelled counterexample strips
def test_labelled_counterexample_strip(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    frames = [np.full((1, 8, 8), v) for v in np.linspace(0.1, 0.9, 4)]
    offsets = [[0.0], [0.3], [0.6], [0.9]]
    path, meta = images.save_counterexample_strip(tmp_path / "s.png", frames, offsets, [3, 3, 7, 7], expected=3,
                                                  direction="slant", seed_index=4)
    assert [m["predicted"] for m in meta] == [3, 3, 7, 7] and [m["bad"] for m in meta] == [False, False, True, True]
    assert meta[2]["offset"] == [0.6]
    labels = images.frame_labels(offsets, [3, 3, 7, 7], 3)
    assert [lab["text"] for lab in labels] == ["nominal\npred 3", "t=+0.3\npred 3", "t=+0.6\npred 7", "t=+0.9\npred 7"]
    im = np.asarray(Image.open(path).convert("RGB")).astype(int)
    plain = images.strip(frames)
    assert im.shape[0] > plain.shape[0] + 30  # a title line and a label row
    red = (np.abs(im - [200, 40, 30]).sum(axis=2) < 40).sum()
    assert red > 200  # the two frames that predict 7 are framed and labelled in red
    # without Pillow: the plain strip, still a PNG
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images, "pillow_available", lambda: False)
        p2, _ = images.save_counterexample_strip(tmp_path / "p.png", frames, offsets, [3, 3, 7, 7], expected=3)
    assert np.array_equal(np.asarray(Image.open(p2)), plain[:, :, 0])


def test_strip_without_labels_is_unchanged_and_nan_safe(tmp_path):
    frames = [np.full((6, 6), np.nan), np.ones((6, 6))]
    p = save_strip(tmp_path / "x.png", frames)
    assert p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_report_labels_strip_ends_and_reads_frames(sheet):
    lxml_html = pytest.importorskip("lxml.html")
    doc = lxml_html.fromstring(build_html(sheet))
    fig = doc.xpath('//div[@class="strips"]//figure')[0]
    ends = [_text(s) for s in fig.xpath('.//div[@class="ends"]/span')]
    assert ends == ["nominal \u00b7 expected 0", "t=(-2) \u00b7 predicted 1"]
    assert "seed 0 \u00b7 offset (-2) = (-1.00) eps \u00b7 predicted 1, expected 0 \u00b7 margin 3" in _text(fig)
    sheet["tests"][1]["counterexamples"][0]["frames"] = [{"offset": [0.0], "predicted": 0, "bad": False}]
    doc = lxml_html.fromstring(build_html(sheet))
    assert not doc.xpath('//div[@class="strips"]//div[@class="ends"]')  # a labelled strip needs no end labels


# ------------------------------------------------------------------ what a person sees
def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH: install it (apt-get install chromium) to screenshot the report")
    return browser


MEASURE_JS = """<script>
window.addEventListener('load', function () {
  var d = document.documentElement, bad = [];
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > d.clientWidth + 1) bad.push(el.tagName + '.' + el.className);
    var cs = getComputedStyle(el);
    if ((cs.overflowX == 'auto' || cs.overflowX == 'scroll') && el.scrollWidth > el.clientWidth + 1)
      bad.push('scrolls:' + el.tagName + '.' + el.className);
  });
  var p = document.createElement('pre'); p.id = 'measure';
  p.textContent = JSON.stringify({scrollWidth: d.scrollWidth, clientWidth: d.clientWidth, overflow: bad.slice(0, 10)});
  document.body.appendChild(p);
});
</script>"""


def _browser(browser, tmp_path, *args, timeout=90):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.skip(f"chromium did not finish within {timeout} s")


def test_headless_browser_screenshot_fits_1280(sheet, tmp_path):
    browser = _chromium()
    # long names and notes must wrap inside their cells
    sheet["tests"][3]["notes"] = ["a-very-long-unbroken-note-" * 12, "and a long sentence " * 30]
    sheet["tests"][0]["nodeid"] = "tests/" + "deeply/nested/" * 8 + "test_faces.py::test_" + "long_name_" * 12
    report = render_html(sheet, tmp_path / "report.html")
    # 1. layout at 1280 px: no horizontal scroll of the page, nothing scrolls sideways inside it
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE_JS + "</body>"), encoding="utf-8")
    proc = _browser(browser, tmp_path, "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom",
                    probe.resolve().as_uri())
    m = re.search(r'<pre id="measure">([^<]*)</pre>', proc.stdout)
    assert m, proc.stderr[-2000:]
    layout = json.loads(html.unescape(m.group(1)))
    assert layout["clientWidth"] == 1280
    assert layout["scrollWidth"] <= 1280, layout
    assert layout["overflow"] == [], layout
    # 2. the screenshot: a page with text, badges and charts, not a blank one
    png = tmp_path / "shot.png"
    proc = _browser(browser, tmp_path, f"--screenshot={png}", "--window-size=1280,1600", report.resolve().as_uri())
    assert png.exists(), proc.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    Image = pytest.importorskip("PIL.Image")
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[:2] == (1600, 1280)
    colours = np.unique(im.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, badges, charts: not a blank page
    # the verdict colours made it to the screen (green of "proved" badges and bars)
    assert ((np.abs(im.astype(int) - [0x2E, 0x9D, 0x57]).sum(axis=2)) < 30).sum() > 300
