"""One static, offline HTML page for a spec sheet.

    render_html(sheet, "out/report.html")

Everything is inside the file: inline CSS, pictures as base64 ``data:`` URIs, no JavaScript,
no network. The page is rendered from Jinja2 templates (``templates/report.html.j2``) with
data prepared here. It reads at a glance:

* a headline that says whether the run went as declared, counting pytest outcomes (a strict
  ``xfail`` test whose violation is expected is *expected*, not a red failure);
* one block per **model** (the records' ``model_fingerprint``, and ``model_name`` when a
  record carries one): its semantic coverage matrix and, per direction, the verified /
  undecided / falsified fraction of seeds against eps (a curve when more than one radius is
  known: the tests' radii, sweep points and the certified-radius search), the certified-radius
  histogram with its search cap, the deployment range and the validity checks in sentences;
* labelled counterexample strips and a table of every test that fits a 1280 px window.

Charts need matplotlib; without it the same numbers are tables with small CSS bars.
Written atomically. Sheets with missing or NaN numbers (margins, bounds, times) render with a
dash in their place.
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..sheet.coverage import coverage_summary
from ..core.files import write_atomic
from ..sheet.records import CounterexampleRecord, Counts, TestRecord, radius_stat, widest_radius
from .terminal import pct
from ..sheet.specsheet import directions_section, read_sheet
from ..core.vocab import ESTIMATED, PROVED, UNPROVEN, UNTESTED, VERDICT_RANK, VERDICTS, VIOLATED, is_worse

__all__ = ["render_html", "build_html", "VERDICT_RANK"]

TEMPLATES = Path(__file__).parent / "templates"
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_CEX_IMAGES_PER_TEST = 5
DOT = " \u00b7 "

# verified / falsified / unknown in charts
C_VERIFIED, C_FALSIFIED, C_UNKNOWN = "#2e9d57", "#d93f33", "#c4c8cc"
C_EXPECTED, C_CAP = "#6b5ca5", "#8a9099"
VERDICT_MARK = {PROVED: "\u2713", VIOLATED: "\u2717", UNPROVEN: "?", ESTIMATED: "\u2248", UNTESTED: "\u2013"}
VERDICT_TEXT_COLOUR = {PROVED: "#146c2e", VIOLATED: "#a5221a", UNPROVEN: "#7a4f00", ESTIMATED: "#1a56a8",
                       UNTESTED: "#5a5f66"}

# pytest outcome -> (words, tone); tones: ok, expected, fail, xpass, skip
OUTCOMES = {
    "passed": ("passed", "ok"),
    "xfailed": ("expected (xfail)", "expected"),
    "xpassed": ("xpassed", "xpass"),
    "failed": ("failed", "fail"),
    "error": ("error", "fail"),
    "skipped": ("skipped", "skip"),
}
TONE_RANK = {"fail": 0, "xpass": 1, "expected": 2, "skip": 3, "ok": 4}


# ------------------------------------------------------------------------ numbers that may be missing
def _num(x) -> Optional[float]:
    """A finite float, or None for None / NaN / inf / anything that is not a number."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x, default: int = 0) -> int:
    v = _num(x)
    return default if v is None else int(v)


_pct = pct  # one percentage format (report.pct)


def _g(x, spec: str = "g") -> str:
    v = _num(x)
    return "\u2013" if v is None else format(v, spec)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(s)).strip("-") or "x"


# ------------------------------------------------------------------------ outcomes and tones
def _outcome(r: TestRecord) -> Tuple[str, str]:
    """(words, tone) of a record's pytest outcome; without one, what the default options do
    with its verdict (proved passes, everything else fails)."""
    if r.outcome in OUTCOMES:
        return OUTCOMES[r.outcome]
    return ("\u2013", "ok") if r.verdict == PROVED else ("\u2013", "fail")


def _tone(r: TestRecord) -> str:
    return _outcome(r)[1]


def _worst_tone(tones: Iterable[str]) -> str:
    ts = list(tones)
    return min(ts, key=lambda t: TONE_RANK.get(t, 0)) if ts else "ok"


def _badge(verdict: str, tone: str = "") -> dict:
    """A verdict badge: a violation that pytest expected (xfail) is drawn muted and says so."""
    verdict = str(verdict or UNTESTED)
    expected = tone == "expected" and verdict != PROVED
    return {"verdict": verdict, "mark": VERDICT_MARK.get(verdict, ""), "expected": expected}


# ------------------------------------------------------------------------ matplotlib
def _matplotlib():
    """matplotlib's ``Figure`` (no pyplot, no global backend), or None when not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.1,
                facecolor="white")
    return _png_uri(buf.getvalue())


def _style_axes(ax):
    ax.tick_params(labelsize=8.5)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.grid(axis="y", color="#e6e8eb", lw=0.8)
    ax.set_axisbelow(True)


# ------------------------------------------------------------------------ series per model and direction
def _fractions(counts: Counts, n) -> Tuple[float, float, float]:
    v, f, u = counts.verified, counts.falsified, counts.unknown
    tot = _int(n) or counts.total
    if not tot:
        return 0.0, 0.0, 0.0
    return v / tot, f / tot, u / tot


def _series(records: Sequence[TestRecord]) -> Dict[str, List[dict]]:
    """Per spec kind: the radii of the records (``TestRecord.points``: their own eps and sweep
    points) sorted by eps, counts summed over the tests at the same eps, the worst verdict and
    the tone of its tests."""
    out: Dict[str, Dict[float, dict]] = {}
    for r in records:
        for p in r.points():
            pt = out.setdefault(r.spec_kind, {}).setdefault(round(p.eps, 12), {
                "eps": p.eps, "counts": Counts(), "n": 0, "verdict": p.verdict, "at_least": [], "tones": [],
                "sweep": True})
            pt["counts"] = Counts(pt["counts"].verified + p.counts.verified, pt["counts"].falsified + p.counts.falsified,
                                  pt["counts"].unknown + p.counts.unknown)
            pt["n"] += p.n_seeds or p.counts.total
            pt["at_least"].append(r.at_least)
            pt["tones"].append(_tone(r))
            pt["sweep"] = pt["sweep"] and p.sweep
            if is_worse(p.verdict, pt["verdict"]):
                pt["verdict"] = p.verdict
    result = {}
    for kind, pts in sorted(out.items()):
        rows = []
        for e in sorted(pts):
            p = pts[e]
            v, f, u = _fractions(p["counts"], p["n"])
            p["counts"] = p["counts"].to_json()
            p.update(v=v, f=f, u=u, tone=_worst_tone(p["tones"]), badge=_badge(p["verdict"], _worst_tone(p["tones"])),
                     needs=", ".join(f"\u2265 {_pct(q)}" for q in sorted(set(p["at_least"]))) or "\u2013")
            rows.append(p)
        result[kind] = rows
    return result


def _at_cap(cr: Mapping) -> Tuple[int, int]:
    """How many seeds reached the radius search's cap (their radius is at least ``eps_max``: the
    search stopped there), as ``(at least, at most)``: exact when the summary records
    ``at_cap``, else bounded by the quantiles (a quantile at the cap) and the last bin."""
    hist = cr.get("histogram") or {}
    counts = [_int(c) for c in hist.get("counts") or []]
    last = counts[-1] if counts else 0
    if cr.get("at_cap") is not None:
        k = _int(cr["at_cap"])
        return k, k
    cap = _num(cr.get("eps_max"))
    n = _int(cr.get("n")) or sum(counts)
    if cap is None or cap <= 0 or not n:
        return 0, last
    qs = cr.get("quantiles") or {}
    lo = 0
    for name, p in (("min", 0.0), ("p10", 0.1), ("p25", 0.25), ("median", 0.5), ("p50", 0.5), ("p75", 0.75),
                    ("p90", 0.9), ("max", 1.0)):
        q = _num(qs.get(name))
        if q is not None and q >= cap * (1 - 1e-6):
            lo = max(lo, n - int(math.ceil(p * (n - 1))))
            break
    return min(lo, last), last


def _survival(cr: Mapping) -> Optional[dict]:
    """The fraction of seeds certified by bounds alone at each radius, from the radius search's
    histogram: on ``(e_i, e_i+1]`` the seeds whose certified radius is at least ``e_i+1`` (a
    sound lower bound; the last step counts only the seeds known to reach the cap)."""
    hist = cr.get("histogram") or {}
    edges = [_num(e) for e in hist.get("edges") or []]
    counts = [_int(c) for c in hist.get("counts") or []]
    if len(edges) < 2 or len(counts) != len(edges) - 1 or any(e is None for e in edges):
        return None
    n = sum(counts)
    if not n:
        return None
    lo, _ = _at_cap(cr)
    b = len(counts)
    ys = [sum(counts[i + 1:]) / n for i in range(b - 1)] + [lo / n]
    return {"xs": edges[:-1] + [edges[-1]], "ys": ys + [ys[-1]], "cap": edges[-1], "n": n}


def _eps_chart(Figure, kinds: List[dict]) -> str:
    """Per spec kind: stacked verified / undecided / falsified fractions against eps (an area
    through the measured radii, a bar where only one is known), the fraction the spec needs,
    the verdict at each radius and, when recorded, the certified-radius curve and its cap."""
    n = len(kinds)
    w = 4.9 if n == 1 else max(3.0, min(4.4, 9.4 / n))
    fig = Figure(figsize=(w * n + 0.2, 2.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, k in zip(axes, kinds):
        pts, surv = k["points"], k["survival"]
        xs = [p["eps"] for p in pts]
        xmax = max(xs + ([surv["cap"]] if surv else []) + [1e-9])
        ver = [p["v"] for p in pts]
        unk = [p["u"] for p in pts]
        fal = [p["f"] for p in pts]
        if len(pts) >= 2:
            ax.stackplot(xs, ver, unk, fal, colors=[C_VERIFIED, C_UNKNOWN, C_FALSIFIED], alpha=0.25, lw=0)
            ax.plot(xs, [a + b for a, b in zip(ver, unk)], color="#8a9099", lw=1.1, marker="o", ms=3.2, zorder=3)
            ax.plot(xs, ver, color=C_VERIFIED, lw=2.0, marker="o", ms=4.6, zorder=4)
        # zoom in when every fraction shown is high (the verdict turns on a few percent)
        shown = ver + [q for p in pts for q in p["at_least"]] + (surv["ys"] if surv else [])
        lo = math.floor((min(shown) - 0.05) * 10) / 10 if shown and min(shown) >= 0.6 else 0.0
        head = 1.0 + 0.12 * (1.0 - lo)
        bw = 0.035 * xmax
        for p in pts:  # a narrow stacked bar at each measured radius
            ax.bar([p["eps"]], [p["v"]], width=bw, color=C_VERIFIED, zorder=2)
            ax.bar([p["eps"]], [p["u"]], bottom=[p["v"]], width=bw, color=C_UNKNOWN, zorder=2)
            ax.bar([p["eps"]], [p["f"]], bottom=[p["v"] + p["u"]], width=bw, color=C_FALSIFIED, zorder=2)
            colour = C_EXPECTED if p["badge"]["expected"] else VERDICT_TEXT_COLOUR.get(p["verdict"], "#5a5f66")
            ax.text(p["eps"], 1.0 + 0.02 * (1.0 - lo), VERDICT_MARK.get(p["verdict"], "?"), ha="center",
                    va="bottom", fontsize=11,
                    color=colour, fontweight="bold")
        needs = sorted({q for p in pts for q in p["at_least"]})
        if len(needs) == 1:  # one requirement: a line across
            ax.axhline(needs[0], color="#1f2328", lw=1.1, ls=(0, (4, 2)), zorder=5)
        else:  # several: each radius's own, next to its bar
            for p in pts:
                for q in set(p["at_least"]):
                    ax.plot([p["eps"] - 0.06 * xmax, p["eps"] + 0.06 * xmax], [q, q], color="#1f2328", lw=1.3,
                            ls=(0, (3, 1.5)), zorder=5)
        if surv:
            ax.step(surv["xs"], surv["ys"], where="post", color="#0f5c2b", lw=1.5, ls=(0, (2, 1.2)), zorder=4)
            ax.axvline(surv["cap"], color=C_CAP, lw=1.0, ls=":", zorder=1)
            ax.text(surv["cap"], lo + 0.02 * (1.0 - lo), "search cap ", rotation=90, ha="right", va="bottom",
                    fontsize=7.5, color=C_CAP, clip_on=True)
        ax.set_xlim(0, xmax * 1.06)
        ax.set_ylim(lo, head)
        ticks = [t / 100 for t in range(0, 101, 25 if lo == 0 else (5 if lo >= 0.8 else 10)) if t / 100 >= lo - 1e-9]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{100 * t:.0f}%" for t in ticks])
        ax.set_xlabel("eps (latent units)", fontsize=9)
        ax.set_title(k["kind"], fontsize=10, loc="left")
        _style_axes(ax)
    axes[0].set_ylabel("fraction of seeds", fontsize=9)
    fig.subplots_adjust(wspace=0.1)
    return _fig_uri(fig)


def _histogram_chart(Figure, cr: Mapping, proved_eps: Optional[float]) -> str:
    """Largest certified radius per seed; seeds that reached the search cap are a separate,
    hatched bar beyond it ("at least the cap"), not a peak inside the range."""
    from matplotlib.ticker import MaxNLocator

    edges = [float(_num(e) or 0.0) for e in cr["histogram"]["edges"]]
    counts = [_int(c) for c in cr["histogram"]["counts"]]
    lo, _ = _at_cap(cr)
    cap = edges[-1]
    body = counts[:-1] + [counts[-1] - lo]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    fig = Figure(figsize=(3.9, 2.45))
    ax = fig.subplots()
    ax.bar(edges[:-1], body, width=widths, align="edge", color="#5b7fd6", edgecolor="white", lw=0.8)
    top = max(body + [lo, 1])
    if lo:
        wcap = widths[-1] if widths else cap / 10
        ax.bar([cap + 0.15 * wcap], [lo], width=wcap, align="edge", color="#c9d5f2", edgecolor="#5b7fd6",
               hatch="///", lw=0.8)
        ax.text(cap + 0.65 * wcap, lo + 0.02 * top, "\u2265 cap", ha="center", va="bottom", fontsize=8,
                color="#3a4f8f")
    ax.axvline(cap, color=C_CAP, lw=1.0, ls=":")
    ax.set_ylim(0, top * 1.28)
    ax.text(cap, top * 1.26, "search cap ", ha="right", va="top", fontsize=7.5, color=C_CAP)
    if proved_eps is not None:
        ax.axvline(proved_eps, color=C_VERIFIED, lw=1.4, ls=(0, (4, 2)))
        ax.text(proved_eps, top * 1.12, " proved eps", color=C_VERIFIED, fontsize=7.5, va="top", ha="left")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, cap * 1.3 if cap > 0 else 1)
    ax.set_xlabel("largest certified radius (latent units)", fontsize=9)
    ax.set_ylabel("seeds", fontsize=9)
    _style_axes(ax)
    return _fig_uri(fig)


def _radius_caption(cr: Mapping) -> str:
    counts = [_int(c) for c in (cr.get("histogram") or {}).get("counts") or []]
    n = _int(cr.get("n")) or sum(counts)
    cap = _num(cr.get("eps_max"))
    lo, hi = _at_cap(cr)
    src = str(cr.get("nodeid", "")).split("::")[-1]
    stat, med = radius_stat(cr)
    parts = [f"Largest certified radius per seed ({n} seeds" + (f" of {src}" if src else "")
             + (f", searched up to {cap:g}" if cap is not None else "") + ")."]
    if cap is not None and hi:
        if lo == hi:
            reach = f"{lo} of {n}"
        elif lo:
            reach = f"{lo}\u2013{hi} of {n}"
        else:
            reach = f"up to {hi} of {n}"
        parts.append(f"{reach[:1].upper()}{reach[1:]} reached the cap: their radius is at least {cap:g}, the search "
                     f"stopped there.")
    if med is not None:
        parts.append(f"{stat.capitalize()} {med:.3g}" + (" (the cap)" if cap is not None and med >= cap * (1 - 1e-6) else "")
                     + ".")
    if counts and counts[0]:
        parts.append(f"{counts[0]} near 0 (not even a small box certified: falsified or misclassified seeds).")
    return " ".join(parts)


# ------------------------------------------------------------------------ sentences
def _validity_sentences(val: Optional[Mapping], entry_validity: Optional[Mapping], direction: str,
                        test_eps: Optional[float]) -> List[dict]:
    """The generator validity checks of a direction as sentences (``{"ok": bool|None, "text"}``)."""
    out: List[dict] = []
    if not isinstance(val, Mapping):
        if isinstance(entry_validity, Mapping) and entry_validity:
            probs = [str(p) for p in entry_validity.get("problems") or []]
            eps = _g(entry_validity.get("eps"))
            if probs:
                out += [{"ok": False, "text": p[:1].upper() + p[1:] + ("" if p.endswith(".") else ".")}
                        for p in probs]
            elif entry_validity.get("ok"):
                out.append({"ok": True, "text": f"The generator validity checks passed at eps={eps}."})
        return out
    if val.get("error"):
        return [{"ok": None, "text": f"The validity checks could not run: {val['error']}."}]
    eps = _num(val.get("eps")) if _num(val.get("eps")) is not None else test_eps
    at = f" at eps={eps:g}" if eps is not None else ""
    c = val.get("continuity")
    if isinstance(c, Mapping):
        th = c.get("thresholds") or {}
        if c.get("ok", not c.get("problems")):
            bits = []
            if _num(c.get("jump_ratio")) is not None:
                lim = _num(th.get("max_jump_ratio"))
                bits.append(f"its steepest step is {_g(c['jump_ratio'], '.2g')}\u00d7 the median step"
                            + (f" (limit {lim:g}\u00d7)" if lim is not None else ""))
            if _num(c.get("deviation_median")) is not None:
                lim = _num(th.get("max_deviation"))
                bits.append(f"the decoded path deviates {_g(c['deviation_median'], '.2g')} from a straight morph"
                            + (f" (limit {lim:g})" if lim is not None else ""))
            out.append({"ok": True, "text": f"Continuous{at}: decoding changes smoothly along {direction}"
                        + (f"; {' and '.join(bits)}" if bits else "") + "."})
        else:
            out += [{"ok": False, "text": f"Not continuous{at}: {p}."} for p in c.get("problems") or []]
    else:
        out.append({"ok": None, "text": "Continuity was not checked (no decoder)."})
    ind = val.get("independence")
    if isinstance(ind, Mapping):
        if ind.get("ok", not ind.get("problems")):
            names = [n for n in (ind.get("probes") or {}) if n != ind.get("target")]
            out.append({"ok": True, "text": f"Independent{at}: moving along {direction} leaves the other probed "
                        f"attributes" + (f" ({', '.join(map(str, names))})" if names else "") + " nearly unchanged."})
        else:
            out += [{"ok": False, "text": f"Entangled{at}: {p}."} for p in ind.get("problems") or []]
    else:
        out.append({"ok": None, "text": "Independence was not checked (no attribute probes)."})
    real = val.get("realism")
    if isinstance(real, Mapping):
        limit, top = _num(real.get("eps")), _num(real.get("eps_max"))
        method = real.get("method") or "knn"
        if real.get("saturated"):
            out.append({"ok": True, "text": "Realistic over the whole range searched"
                        + (f" (up to eps={top:.3g}, {method})" if top is not None else "")
                        + ": decoded boxes stay like the data."})
        elif limit is not None:
            allowed = _num(real.get("allowed_outside", real.get("max_outside")))
            beyond = f"beyond it more than {allowed:.0%} of the boxes reach latent codes unlike the data" \
                if allowed is not None else "beyond it the boxes leave the data"
            if eps is not None and eps > limit:
                out.append({"ok": False, "text": f"Not realistic at eps={eps:g}: decoded samples stay like the data "
                            f"only up to eps\u2248{limit:.3g} ({method}; {beyond}), so the deployable range stops "
                            f"there."})
            else:
                out.append({"ok": True, "text": f"Realistic up to eps\u2248{limit:.3g} ({method}; {beyond})"
                            + (f"; this test's eps={eps:g} is inside." if eps is not None else ".")})
        for p in real.get("problems") or []:
            if not any(str(p) in s["text"] for s in out) and not (eps is not None and limit is not None
                                                                 and eps > limit):
                out.append({"ok": False, "text": str(p)})
    return out


def _range_view(rng: Optional[Mapping], direction: str) -> Optional[dict]:
    if not isinstance(rng, Mapping) or not rng.get("lower"):
        return None
    lower, upper = list(rng.get("lower") or []), list(rng.get("upper") or [])
    means, stds = list(rng.get("mean") or []), list(rng.get("std") or [])
    rows = [{"i": i, "lower": _g(lo, ".4g"), "upper": _g(hi, ".4g"),
             "mean": _g(means[i], ".4g") if i < len(means) else "", "std": _g(stds[i], ".4g") if i < len(stds) else ""}
            for i, (lo, hi) in enumerate(zip(lower, upper))]
    src = str(rng.get("nodeid", "")).split("::")[-1]
    what = (f"its coordinate along {direction} lies in [{rows[0]['lower']}, {rows[0]['upper']}]" if len(rows) == 1
            else f"its {len(rows)} coordinates along {direction} lie inside the ranges below")
    text = (f"An input is in spec at deployment when {what}: mean \u00b1 (eps + std) over "
            f"{_int(rng.get('n_seeds'), 0) or '?'} seeds at the proved eps={_g(rng.get('eps'))}"
            + (f" of {src}" if src else "") + ".")
    return {"text": text, "rows": rows if len(rows) > 1 else []}


def _cex_view(c: CounterexampleRecord, images: bool, base_dir: Optional[Path]) -> dict:
    off = ", ".join(_g(o, "+.3g") for o in c.offset)
    off_eps = ", ".join(_g(o, "+.2f") for o in c.offset_eps)
    pred, exp = c.predicted, c.expected
    bits = [f"seed {c.seed_index}", f"offset ({off}) = ({off_eps}) eps" if off_eps else f"offset ({off})"]
    if pred is not None:
        bits.append(f"predicted {pred}" + (f", expected {exp}" if exp is not None else ""))
    margin = _num(c.margin)
    bits.append(f"margin {margin:.3g}" if margin is not None else "margin \u2013")
    caption = DOT.join(bits)
    fig = {"caption": caption, "uri": None, "why": "", "path": str(c.image), "left": "", "right": "",
           "labelled": bool(c.extra.get("frames"))}
    if not fig["labelled"]:  # an unlabelled strip: label its two ends
        fig["left"] = "nominal" + (f" \u00b7 expected {exp}" if exp is not None else "")
        fig["right"] = f"t=({off})" + (f" \u00b7 predicted {pred}" if pred is not None else "")
    if images:
        fig["uri"], fig["why"] = _image_uri(str(c.image), base_dir)
    return fig


def _image_uri(path: str, base_dir: Optional[Path]) -> Tuple[Optional[str], str]:
    p = Path(path)
    if not p.is_absolute():
        p = (base_dir or Path.cwd()) / p
    try:
        if p.stat().st_size > MAX_IMAGE_BYTES:
            return None, f"image too large to embed: {path}"
        data = p.read_bytes()
    except OSError:
        return None, f"image not found: {path}"
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None, f"not a PNG: {path}"
    return _png_uri(data), ""


def _notes(r: TestRecord) -> List[str]:
    notes = []
    if r.stale is not None:
        notes.append(f"stale: proved for an older model ({_short_fp(r.model_fingerprint)}; the model is now "
                     f"{_short_fp(r.stale.get('model_fingerprint'))}): counts towards no range; re-run this test")
    if r.vacuous is not None:
        notes.append(f"vacuous: {r.vacuous}; proves no operating range")
    fb = _num(r.failing_bound)
    if fb is not None and r.counts.unknown:
        notes.append(f"failing bound {fb:.3g} (a proof needs < 0)")
    est = r.estimate
    if isinstance(est, Mapping) and est:
        conf = _num(est.get("confidence"))
        notes.append(f"sampled: {_pct(est.get('fraction'))} [{_pct(est.get('lower'))}, {_pct(est.get('upper'))}]"
                     + (f" ({conf * 100:g}%" if conf is not None else " (")
                     + (f", {est.get('samples')} samples)" if est.get("samples") is not None else ")"))
    seg = r.segment
    if isinstance(seg, Mapping) and seg:
        notes.append(f"exact: {_pct(seg.get('mean_fraction'))} of each segment holds (mean)")
    if r.sweep:
        notes.append(f"sweep over {len(r.sweep)} radii")
    cr = r.certified_radius or {}
    stat, med = radius_stat(cr)
    if med is not None:
        cap = _num(cr.get("eps_max"))
        at_cap = cap is not None and med >= cap * (1 - 1e-6)
        notes.append(f"radius: {stat} {med:.3g}" + (" = cap" if at_cap else (f", cap {cap:g}" if cap is not None
                                                                              else "")))
    if r.pixel_crosscheck is not None and r.pixel_crosscheck.fraction_attackable is not None:
        pc = r.pixel_crosscheck
        notes.append(f"pixel cross-check: {pc.n_attackable}/{pc.n_proved} proved seeds attackable within "
                     f"L-inf {pc.eps:g}")
    notes += [str(n) for n in r.notes]
    return notes


# ------------------------------------------------------------------------ the page's data
def _matrix_view(cov: Mapping, tone_of: Mapping[str, str], prefix: str) -> dict:
    m = cov["matrix"]
    radii = list(m["radii"])
    by_key = {(x["direction"], x["spec"], round(float(x["eps"]), 12)): x for x in m["cells"]}
    specs_per_dir: Dict[str, List[str]] = {}
    for x in m["cells"]:
        specs_per_dir.setdefault(x["direction"], [])
        if x["spec"] not in specs_per_dir[x["direction"]]:
            specs_per_dir[x["direction"]].append(x["spec"])
    rows = []
    for d in m["directions"]:
        pd = cov["per_direction"][d]
        specs = specs_per_dir.get(d) or [None]
        dtone = _worst_tone(tone_of.get(n, "ok") for x in m["cells"] if x["direction"] == d for n in x["nodeids"])
        for i, spec in enumerate(specs):
            cells = []
            for e in radii:
                x = by_key.get((d, spec, round(float(e), 12))) if spec else None
                if x is None:
                    cells.append(None)
                    continue
                tone = _worst_tone(tone_of.get(n, "ok") for n in x["nodeids"])
                cells.append({"badge": _badge(x["verdict"], tone), "fraction": _pct(x["verified_fraction"]),
                              "tip": f"{x['verdict']}: " + ", ".join(x["nodeids"])})
            rows.append({"direction": d, "first": i == 0, "rowspan": len(specs), "spec": spec or "no tests",
                         "href": f"#{prefix}-{_slug(d)}" if spec else "",
                         "status": _badge(pd["status"], dtone), "cells": cells})
    return {"radii": [_g(e) for e in radii], "rows": rows}


def _direction_panel(name: str, recs: List[TestRecord], entry: Mapping, pd: Mapping, prefix: str, Figure,
                     want_tables: bool) -> dict:
    info = dict(recs[0].direction_info or {}) if recs else {}
    info.update({k: entry[k] for k in ("kind", "k", "axis") if k in entry})
    tones = [_tone(r) for r in recs]
    tone = _worst_tone(tones)
    meta = []
    if info.get("kind"):
        meta.append(f"{info['kind']}" + (f" {info['axis']}" if info.get("axis") is not None else "")
                    + (f", k={info['k']}" if info.get("k", 1) not in (1, None) else ""))
    meta.append(f"{len(recs)} test{'s' if len(recs) != 1 else ''}")
    meta.append(f"proved up to eps={_g(pd.get('proved_eps'))}" if pd.get("proved_eps") is not None
                else "nothing proved")
    if entry.get("realism_limit") is not None:
        meta.append(f"realistic up to eps\u2248{_g(entry['realism_limit'], '.3g')}")
    series = _series(recs)
    # the certified-radius curve of each spec kind: the test that searched the widest range
    survivals: Dict[str, dict] = {}
    for kind in series:
        drawable = [r for r in recs if r.spec_kind == kind and r.certified_radius
                    and _survival(r.certified_radius) is not None]
        best = widest_radius(drawable)
        if best is not None:
            survivals[kind] = _survival(best.certified_radius)  # type: ignore[arg-type]
    kinds = [{"kind": k, "points": pts, "survival": survivals.get(k)} for k, pts in series.items()]
    curve = any(len(k["points"]) > 1 or k["survival"] for k in kinds)
    panel: Dict[str, Any] = {
        "name": name, "id": f"{prefix}-{_slug(name)}", "status": _badge(pd.get("status", "untested"), tone),
        "tone": tone,
        "meta": DOT.join(meta), "chart": None, "fractions": None, "hist": None, "hist_table": None,
        "hist_caption": None, "range": _range_view(entry.get("latent_range"), name), "validity": [],
        "survival": any(k["survival"] for k in kinds),
        "tests": [_test_row(r) for r in recs],
    }
    if Figure is not None and curve:
        panel["chart"] = _eps_chart(Figure, kinds)
    if want_tables:
        panel["fractions"] = [dict(p, kind=k) for k, pts in series.items() for p in pts]
    cr = entry.get("certified_radius") or {}
    if isinstance(cr, Mapping) and (cr.get("histogram") or {}).get("counts"):
        panel["hist_caption"] = _radius_caption(cr)
        if Figure is not None:
            panel["hist"] = _histogram_chart(Figure, cr, _num(pd.get("proved_eps")))
        else:
            h = cr["histogram"]
            lo, _ = _at_cap(cr)
            edges = list(h.get("edges") or [])
            counts = [_int(c) for c in h.get("counts") or []]
            rows = [{"bin": f"[{_g(a, '.3g')}, {_g(b, '.3g')})", "count": c} for a, b, c in
                    zip(edges[:-1], edges[1:], counts)]
            if rows and lo:
                rows[-1]["count"] = counts[-1] - lo
                rows.append({"bin": f"\u2265 {_g(edges[-1], '.3g')} (the cap)", "count": lo})
            panel["hist_table"] = rows
    # validity: the full report of the test with the largest eps that has one
    with_val = [r for r in recs if isinstance(r.validity, Mapping)]
    best = max(with_val, key=lambda r: r.eps) if with_val else None
    panel["validity"] = _validity_sentences(best.validity if best else None, entry.get("validity"), name,
                                            best.eps if best else None)
    return panel


def _test_row(r: TestRecord) -> dict:
    c = r.counts
    v, f, u = _fractions(c, r.n_seeds)
    words, tone = _outcome(r)
    nodeid = r.key
    file, _, name = nodeid.rpartition("::")
    rungs = ", ".join(f"{k} {val}" for k, val in sorted(r.rungs.items()))
    spec = str(r.spec_text or r.spec_kind)
    return {"nodeid": nodeid, "name": name or nodeid, "file": file, "direction": r.direction,
            "name_parts": _break_parts(name or nodeid), "spec_wrapped": spec.replace("(", "(\u200b"),
            "eps": _g(r.eps), "spec": spec, "badge": _badge(r.verdict, tone), "outcome": words, "tone": tone,
            "counts": (c.verified, c.falsified, c.unknown),
            "bar": (100 * v, 100 * u, 100 * f), "verified": _pct(r.verified_fraction),
            "needs": _pct(r.at_least), "engine": str(r.engine or ""), "rungs": rungs,
            "seconds": _g(r.seconds, ".2f"), "notes": _notes(r), "evidence": str(r.evidence or ""),
            "model": ""}


def _break_parts(name: str) -> List[str]:
    """A test name cut after ``_``, ``[``, ``-``, ``/``, ``::``: where a narrow cell may wrap it (``<wbr>``)."""
    return [p for p in re.split(r"(?<=[_\[\-/:.])", name) if p]


def _short_fp(fp: Optional[str]) -> str:
    return "" if not fp else str(fp).split(":", 1)[-1][:12]


def build_html(sheet, images: bool = True, *, title: Optional[str] = None, base_dir=None,
               declared: Optional[Iterable[str]] = None) -> str:
    """The report as a string. ``images``: embed charts and counterexample PNGs (False: tables
    and paths only). ``base_dir``: where relative counterexample image paths are resolved
    (default: the current directory). ``declared``: directions the LatentSpace declares
    (default: what the sheet records)."""
    sh = read_sheet(sheet)  # the one loader: a path, a dict or a SpecSheet, checked
    data = sh.data
    base = Path(base_dir) if base_dir is not None else None
    tests = sorted(sh.records, key=lambda r: r.nodeid)
    Figure = _matplotlib() if images else None
    declared = None if declared is None else sorted({str(d) for d in declared})
    tone_of = {r.key: _tone(r) for r in tests}
    for r in tests:  # matrix cells list node ids: a test with several calls takes its worst tone
        if r.key != r.nodeid:
            tone_of[r.nodeid] = _worst_tone([tone_of.get(r.nodeid, "ok"), tone_of[r.key]])

    # ---- models: one block each (fingerprint, and a name when a record gives one)
    groups: Dict[Optional[str], List[TestRecord]] = {}
    for r in tests:
        groups.setdefault(r.model_fingerprint or None, []).append(r)
    if not groups:
        groups[None] = []
    sheet_dirs = data.get("directions") if isinstance(data.get("directions"), Mapping) else None
    models = []
    for gi, (fp, recs) in enumerate(groups.items(), 1):
        names = [str(r.extra["model_name"]) for r in recs if r.extra.get("model_name")]
        name = Counter(names).most_common(1)[0][0] if names else None
        label = name or (f"model {gi}" if len(groups) > 1 else "model")
        if len(groups) == 1:
            cov = coverage_summary(sh, declared)
            dirs = sheet_dirs or directions_section(recs, cov["directions_declared"])
        else:
            cov = coverage_summary(recs, declared)
            dirs = directions_section(recs, cov["directions_declared"])
        prefix = f"m{gi}"
        by_dir: Dict[str, List[TestRecord]] = {}
        for r in recs:
            by_dir.setdefault(r.direction, []).append(r)
        panels = []
        for d in cov["matrix"]["directions"]:
            if by_dir.get(d):
                panels.append(_direction_panel(d, by_dir[d], dirs.get(d) or {}, cov["per_direction"][d], prefix,
                                               Figure, Figure is None))
        chips = []
        for d in cov["matrix"]["directions"]:
            pd = cov["per_direction"][d]
            t = _worst_tone(tone_of.get(r.key, "ok") for r in by_dir.get(d, []))
            if not by_dir.get(d):
                chips.append({"name": d, "badge": _badge(UNTESTED), "detail": UNTESTED, "href": ""})
                continue
            detail = (f"proved to {_g(pd['proved_eps'])}" if pd.get("proved_eps") is not None else "nothing proved")
            if pd["status"] != PROVED:
                worst = min(by_dir[d], key=lambda r: VERDICT_RANK.get(r.verdict, VERDICT_RANK[UNPROVEN]))
                detail = f"{pd['status']} at {_g(worst.eps)}" + (
                    f", proved to {_g(pd['proved_eps'])}" if pd.get("proved_eps") is not None else "")
            chips.append({"name": d, "badge": _badge(pd["status"], t), "detail": detail,
                          "href": f"#{prefix}-{_slug(d)}", "tone": t})
        oc = Counter(_tone(r) for r in recs)
        files = sorted({r.nodeid.rpartition("::")[0] for r in recs} - {""})
        c = cov["counts"]
        models.append({
            "id": prefix, "label": label, "name": name, "fingerprint": fp or "", "short": _short_fp(fp),
            "tests": len(recs), "files": files, "tone": _worst_tone(oc) if recs else "ok",
            "outcomes": _outcome_words(oc), "coverage": {
                "proved": c["proved"], "directions": c["directions"], "tested": c["tested"],
                "declared": c["declared"], "percent": _g(cov.get("percent_proved"), ".1f"),
                "untested": list(cov.get("untested") or [])},
            "matrix": _matrix_view(cov, tone_of, prefix), "panels": panels, "chips": chips,
            "test_names": [r.nodeid.rpartition("::")[2] for r in recs][:8]
            + (["\u2026"] if len(recs) > 8 else []),
        })
    label_of = {r.key: m["label"] for m, (_, recs) in zip(models, groups.items()) for r in recs}

    # ---- counterexamples, all tests
    cex_blocks = []
    for m, (_, recs) in zip(models, groups.items()):
        for r in recs:
            cexs = [c for c in r.counterexamples if c.image]
            if not cexs:
                continue
            row = _test_row(r)
            cex_blocks.append({"row": row, "model": m["label"], "open": r.verdict != PROVED,
                               "text": f"{row['spec']} along {row['direction']}, eps={row['eps']}",
                               "figs": [_cex_view(c, images, base) for c in cexs[:MAX_CEX_IMAGES_PER_TEST]]})
    rows = []
    for r in tests:
        row = _test_row(r)
        row["model"] = label_of.get(r.key, "")
        rows.append(row)
    show_evidence = any(r.evidence and r.evidence != r.verdict for r in tests)
    cex_blocks.sort(key=lambda b: not b["open"])  # tests that were not proved first

    # ---- headline and cards
    summary = data.get("summary") if isinstance(data.get("summary"), Mapping) else {}
    oc_all = Counter(_tone(r) for r in tests)
    failed = [row for row in rows if row["tone"] == "fail"]
    n = len(tests)
    if not n:
        headline = {"tone": "skip", "text": "No latent tests in this sheet."}
    elif failed:
        names = ", ".join(row["name"] for row in failed[:6]) + (", \u2026" if len(failed) > 6 else "")
        headline = {"tone": "fail", "text": f"{len(failed)} of {n} latent test{'s' if n != 1 else ''} failed: {names}."}
    else:
        headline = {"tone": "ok", "text": f"All {n} latent test{'s' if n != 1 else ''} went as declared: "
                    f"{_outcome_words(oc_all)}."}
    verdicts = Counter(r.verdict for r in tests)
    seeds: Counter = Counter()
    for r in tests:
        seeds.update(r.counts.to_json())
    cards = [{"k": "tests", "v": n, "cls": ""}, {"k": "passed", "v": oc_all.get("ok", 0), "cls": "ok"}]
    if oc_all.get("expected"):
        cards.append({"k": "expected (xfail)", "v": oc_all["expected"], "cls": "expected"})
    cards.append({"k": "failed", "v": oc_all.get("fail", 0), "cls": "fail" if oc_all.get("fail") else ""})
    for k, words in (("skip", "skipped"), ("xpass", "xpassed")):
        if oc_all.get(k):
            cards.append({"k": words, "v": oc_all[k], "cls": ""})
    cards.append({"k": PROVED, "v": verdicts.get(PROVED, 0), "cls": ""})
    cards.append({"k": "seeds verified", "v": f"{seeds.get('verified', 0)}/{sum(seeds.values())}", "cls": ""})
    if len(models) > 1:
        cards.append({"k": "models", "v": len(models), "cls": ""})

    tool = data.get("tool") if isinstance(data.get("tool"), Mapping) else {}
    commit = data.get("commit") if isinstance(data.get("commit"), Mapping) else {}
    commit = {"id": str(commit.get("id") or ""), "dirty": bool(commit.get("dirty")),
              "branch": str(commit.get("branch") or "")}
    sub = [f"{tool.get('name', 'pytest-latentaudit')} {tool.get('version', '')}".strip(),
           f"created {data.get('created', '?')}"]
    verdict_line = ", ".join(f"{verdicts[v]} {v}" for v in VERDICTS if verdicts.get(v))
    stale = [r for r in tests if r.stale is not None]
    if stale:  # the records rule: what no longer describes the model
        verdict_line += (f". {len(stale)} stale record{'s' if len(stale) != 1 else ''} (proved for an older model; "
                         f"re-run {'them' if len(stale) != 1 else 'it'}): "
                         + ", ".join(r.key.rpartition('::')[2] for r in stale[:6])
                         + (", …" if len(stale) > 6 else "") + "; they count towards no range")
    ctx = {
        "title": title or "Latent audit report", "sub": sub, "commit": commit, "headline": headline,
        "verdict_line": verdict_line, "cards": cards, "models": models, "cex_blocks": cex_blocks, "rows": rows,
        "show_evidence": show_evidence, "images": images, "multi_model": len(models) > 1, "charts": Figure is not None,
        "settings": _kv(data.get("settings")), "machine": _kv(data.get("machine")),
        "schema_version": data.get("schema_version", "?"), "summary": summary,
        "now": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "colours": {"verified": C_VERIFIED, "unknown": C_UNKNOWN, "falsified": C_FALSIFIED},
    }
    return _env().get_template("report.html.j2").render(**ctx)


def _outcome_words(oc: Mapping[str, int]) -> str:
    parts = []
    for tone, one, many in (("ok", "passed", "passed"), ("expected", "expected violation (strict xfail)",
                                                         "expected violations (strict xfail)"),
                            ("fail", "failed", "failed"), ("xpass", "passed unexpectedly (xpass)",
                                                          "passed unexpectedly (xpass)"),
                            ("skip", "skipped", "skipped")):
        k = oc.get(tone, 0)
        if k:
            parts.append(f"{k} {one if k == 1 else many}")
    return ", ".join(parts) or "no tests"


def _kv(d) -> List[Tuple[str, str]]:
    if not isinstance(d, Mapping):
        return []
    return [(str(k), str(v)) for k, v in d.items() if v not in (None, "", {}, [])]


_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return _ENV


def render_html(sheet, path, images: bool = True, **kw) -> Path:
    """Write the report for ``sheet`` (dict, ``SpecSheet`` or path) to ``path`` atomically and
    return the path. Keyword arguments go to ``build_html`` (``title``, ``base_dir``, ``declared``)."""
    path = Path(path)
    write_atomic(path, build_html(sheet, images, **kw).encode("utf-8"))
    return path
