"""One static, offline HTML page for a spec sheet.

    render_html(sheet, "out/report.html")

Everything is inside the file: inline CSS, pictures as base64 ``data:`` URIs, no JavaScript,
no network. Sections: summary, semantic coverage matrix (direction x radius x spec),
per direction the verified / falsified / unknown fraction of seeds against eps (a stacked bar
chart when matplotlib is installed, a table with CSS bars otherwise), the deployment latent
range and certified-radius histogram when the sheet records them, counterexample image
strips, and a table of every test. Written atomically.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .coverage import VERDICT_RANK, coverage_summary, radius_points
from .deploy import directions_section
from .images import write_atomic

__all__ = ["render_html", "build_html"]

MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_CEX_IMAGES_PER_TEST = 5
DOT = " \u00b7 "

# verified / falsified / unknown in charts; verdict badge colours (text, background)
C_VERIFIED, C_FALSIFIED, C_UNKNOWN = "#2e9d57", "#d93f33", "#c4c8cc"
VERDICT_STYLE = {
    "proved": ("#146c2e", "#e3f3e8"),
    "violated": ("#a5221a", "#fbe6e4"),
    "unproven": ("#7a4f00", "#fff1cf"),
    "estimated": ("#1a56a8", "#e5eefc"),
    "untested": ("#5a5f66", "#eef0f2"),
}
CHART_LEGEND = (f'Fraction of seeds at each radius: <span class="sw" style="background:{C_VERIFIED}"></span>verified'
                f'<span class="sw" style="background:{C_UNKNOWN}"></span>undecided'
                f'<span class="sw" style="background:{C_FALSIFIED}"></span>falsified; '
                f'dashed line: the fraction the spec needs; mark on top: the verdict.')
VERDICT_MARK = {"proved": "\u2713", "violated": "\u2717", "unproven": "?", "estimated": "\u2248", "untested": "\u2013"}

CSS = """
:root { --fg:#1f2328; --muted:#5a6270; --line:#d8dde3; --soft:#f6f8fa; --accent:#3b5bdb; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:#fff; font:15px/1.5 -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
header.top { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.2px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 0 0 6px; }
.sub { color: var(--muted); font-size: 13.5px; }
.sub code, td code { font-size: 12.5px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  background: var(--soft); padding: 1px 4px; border-radius: 4px; }
nav.toc { margin: 10px 0 0; font-size: 13.5px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 16px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fff; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .5px; }
.card .v { font-size: 24px; font-weight: 650; }
.card.proved .v { color:#146c2e } .card.violated .v { color:#a5221a } .card.unproven .v { color:#7a4f00 }
.card.estimated .v { color:#1a56a8 }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12.5px; font-weight: 600;
  white-space: nowrap; }
.legend { font-size: 12.5px; color: var(--muted); margin: 6px 0 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.matrix td.cell { text-align: center; white-space: nowrap; font-weight: 600; }
table.matrix td.empty { color: #b0b6bd; text-align: center; }
table.matrix th.rowh { background: #fff; }
.dir { border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px; margin: 14px 0; }
.dir .meta { color: var(--muted); font-size: 13.5px; margin-bottom: 8px; }
.plots { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.plots figure { margin: 0; display: table; }
.plots figcaption { display: table-caption; caption-side: bottom; max-width: none; }
img.chart { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; max-width: 560px; }
figcaption .sw { display:inline-block; width:11px; height:11px; border-radius:2px; vertical-align:-1px; margin:0 4px 0 8px; }
.bar { margin-top: 4px; display: flex; width: 180px; height: 12px; border-radius: 3px; overflow: hidden; background: #eef0f2; }
.bar span { display: block; height: 100%; }
.strips { display: flex; flex-wrap: wrap; gap: 16px; }
.strips figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff; }
.strips img { display: block; image-rendering: pixelated; height: 56px; width: auto; }
.cex { margin: 12px 0 18px; }
.chips span { display: inline-block; background: #eef0f2; border-radius: 6px; padding: 1px 8px; margin: 0 4px 4px 0;
  font-size: 13px; }
.note { color: var(--muted); font-size: 13px; }
td.notes { min-width: 170px; }
table.tests td { padding: 6px 7px; }
table.tests .note { white-space: nowrap; }
table.tests td.notes { white-space: normal; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; margin: 0; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
footer { margin-top: 40px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted); font-size: 12.5px; }
"""


# ------------------------------------------------------------------------ small helpers
def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _badge(verdict: str) -> str:
    fg, bg = VERDICT_STYLE.get(verdict, VERDICT_STYLE["untested"])
    return (f'<span class="badge" style="color:{fg};background:{bg}">'
            f'{_e(VERDICT_MARK.get(verdict, ""))} {_e(verdict)}</span>')


def _pct(x) -> str:
    return "\u2013" if x is None else f"{100 * float(x):.1f}%"


def _g(x) -> str:
    return "\u2013" if x is None else f"{float(x):g}"


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
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.12,
                facecolor="white")
    return _png_uri(buf.getvalue())


def _fractions(counts: Mapping, n: Optional[int]) -> Tuple[float, float, float]:
    v, f, u = (int(counts.get(k, 0)) for k in ("verified", "falsified", "unknown"))
    tot = n if n else (v + f + u)
    if not tot:
        return 0.0, 0.0, 0.0
    return v / tot, f / tot, u / tot


def _series(records: Sequence[Mapping]) -> Dict[str, List[dict]]:
    """Per spec kind: points sorted by eps, counts summed over the tests at the same eps."""
    out: Dict[str, Dict[float, dict]] = {}
    for r in records:
        kind = (r.get("spec") or {}).get("kind") or "spec"
        for p in radius_points(r):
            key = round(p["eps"], 12)
            pt = out.setdefault(kind, {}).setdefault(key, {"eps": p["eps"], "counts": {"verified": 0, "falsified": 0,
                                                                                           "unknown": 0},
                                                           "n": 0, "verdict": p["verdict"], "at_least": [],
                                                           "tests": 0})
            c = p.get("counts") or {}
            for k in pt["counts"]:
                pt["counts"][k] += int(c.get(k, 0))
            pt["n"] += int(p.get("n_seeds") or sum(int(c.get(k, 0)) for k in pt["counts"]))
            pt["tests"] += 1
            if r.get("at_least") is not None:
                pt["at_least"].append(float(r["at_least"]))
            if VERDICT_RANK.get(p["verdict"], 1) < VERDICT_RANK.get(pt["verdict"], 1):
                pt["verdict"] = p["verdict"]
    return {k: [v[e] for e in sorted(v)] for k, v in sorted(out.items())}


# ------------------------------------------------------------------------ charts
def _fraction_chart(Figure, name: str, series: Dict[str, List[dict]]) -> str:
    kinds = list(series)
    widths = [max(2.6, 0.62 * len(series[k]) + 1.2) for k in kinds]
    fig = Figure(figsize=(min(11.0, sum(widths) + 0.7), 3.0))
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, kind in zip(axes, kinds):
        pts = series[kind]
        x = list(range(len(pts)))
        fr = [_fractions(p["counts"], p["n"]) for p in pts]
        ver = [f[0] for f in fr]
        fal = [f[1] for f in fr]
        unk = [f[2] for f in fr]
        ax.bar(x, ver, color=C_VERIFIED, width=0.62, label="verified")
        ax.bar(x, unk, bottom=ver, color=C_UNKNOWN, width=0.62, label="unknown")
        ax.bar(x, fal, bottom=[a + b for a, b in zip(ver, unk)], color=C_FALSIFIED, width=0.62, label="falsified")
        for xi, p in zip(x, pts):
            for q in sorted(set(p["at_least"])):
                ax.plot([xi - 0.38, xi + 0.38], [q, q], color="#1f2328", lw=1.6, ls=(0, (3, 1.5)))
            ax.text(xi, 1.03, VERDICT_MARK.get(p["verdict"], "?"), ha="center", va="bottom", fontsize=11,
                    color=VERDICT_STYLE.get(p["verdict"], VERDICT_STYLE["untested"])[0], fontweight="bold")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{p['eps']:g}" for p in pts], fontsize=9)
        ax.set_xlim(-0.6, len(pts) - 0.4)
        ax.set_ylim(0, 1.14)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_yticklabels(["0", "25%", "50%", "75%", "100%"], fontsize=9)
        ax.set_xlabel("eps (latent units)", fontsize=9)
        ax.set_title(kind, fontsize=10, loc="left")
        ax.grid(axis="y", color="#e6e8eb", lw=0.8)
        ax.set_axisbelow(True)
        for s in ("top", "right"):
            ax.spines[s].set_visible(False)
    axes[0].set_ylabel("fraction of seeds", fontsize=9)
    fig.subplots_adjust(wspace=0.12)
    return _fig_uri(fig)


def _histogram_chart(Figure, hist: Mapping, proved_eps: Optional[float] = None) -> str:
    from matplotlib.ticker import MaxNLocator

    edges, counts = [float(e) for e in hist["edges"]], [int(c) for c in hist["counts"]]
    fig = Figure(figsize=(3.7, 2.6))
    ax = fig.subplots()
    lefts = edges[:-1]
    ws = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(lefts, counts, width=ws, align="edge", color="#5b7fd6", edgecolor="white", lw=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(counts + [1]) * 1.25)
    if proved_eps is not None:
        ax.axvline(proved_eps, color=C_VERIFIED, lw=1.5, ls=(0, (4, 2)))
        ax.text(proved_eps, ax.get_ylim()[1], " proved eps", color=C_VERIFIED, fontsize=8, va="top", ha="left")
    ax.set_xlabel("certified radius (latent units)", fontsize=9)
    ax.set_ylabel("seeds", fontsize=9)
    ax.tick_params(labelsize=8.5)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    return _fig_uri(fig)


# ------------------------------------------------------------------------ tables
def _css_bar(counts: Mapping, n) -> str:
    v, f, u = _fractions(counts, n)
    return ('<div class="bar" role="img" aria-label="verified {0}, unknown {1}, falsified {2}">'
            '<span style="width:{3:.2f}%;background:{4}"></span><span style="width:{5:.2f}%;background:{6}"></span>'
            '<span style="width:{7:.2f}%;background:{8}"></span></div>').format(
        _pct(v), _pct(u), _pct(f), 100 * v, C_VERIFIED, 100 * u, C_UNKNOWN, 100 * f, C_FALSIFIED)


def _fraction_table(series: Dict[str, List[dict]]) -> str:
    rows = []
    for kind, pts in series.items():
        for p in pts:
            v, f, u = _fractions(p["counts"], p["n"])
            need = ", ".join(f"\u2265 {_pct(q)}" for q in sorted(set(p["at_least"]))) or "\u2013"
            rows.append(f"<tr><td>{_e(kind)}</td><td class=num>{_g(p['eps'])}</td><td class=num>{_pct(v)}</td>"
                        f"<td class=num>{_pct(f)}</td><td class=num>{_pct(u)}</td><td>{_css_bar(p['counts'], p['n'])}"
                        f"</td><td class=num>{_e(need)}</td><td>{_badge(p['verdict'])}</td></tr>")
    return ('<div class="scroll"><table class="fractions" style="width:auto"><thead><tr><th>spec</th><th class=num>eps</th>'
            '<th class=num>verified</th><th class=num>falsified</th><th class=num>unknown</th><th>seeds</th>'
            '<th class=num>needs</th><th>verdict</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")


def _range_table(rng: Mapping) -> str:
    rows = []
    means, stds = rng.get("mean") or [], rng.get("std") or []
    for i, (lo, hi) in enumerate(zip(rng["lower"], rng["upper"])):
        m = means[i] if i < len(means) else None
        s = stds[i] if i < len(stds) else None
        rows.append(f"<tr><td class=num>{i}</td><td class=num>{float(lo):.4g}</td><td class=num>{float(hi):.4g}</td>"
                    f"<td class=num>{'' if m is None else f'{float(m):.4g}'}</td>"
                    f"<td class=num>{'' if s is None else f'{float(s):.4g}'}</td></tr>")
    return ('<table class="range" style="width:auto"><thead><tr><th class=num>coordinate</th><th class=num>lower</th>'
            '<th class=num>upper</th><th class=num>seed mean</th><th class=num>seed std</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _histogram_table(hist: Mapping) -> str:
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    rows = "".join(f"<tr><td class=num>[{float(a):.3g}, {float(b):.3g})</td><td class=num>{int(c)}</td></tr>"
                   for a, b, c in zip(edges[:-1], edges[1:], counts))
    return ('<table class="histogram" style="width:auto"><thead><tr><th class=num>radius</th><th class=num>seeds</th>'
            '</tr></thead><tbody>' + rows + "</tbody></table>")


def _coverage_section(cov: Mapping) -> str:
    c = cov["counts"]
    m = cov["matrix"]
    radii = m["radii"]
    by_key = {(x["direction"], x["spec"], round(x["eps"], 12)): x for x in m["cells"]}
    specs_per_dir: Dict[str, List[str]] = {}
    for x in m["cells"]:
        specs_per_dir.setdefault(x["direction"], [])
        if x["spec"] not in specs_per_dir[x["direction"]]:
            specs_per_dir[x["direction"]].append(x["spec"])
    head = "".join(f"<th class=num>{_g(e)}</th>" for e in radii)
    rows = []
    for d in m["directions"]:
        status = cov["per_direction"][d]["status"]
        specs = specs_per_dir.get(d) or [None]
        for i, spec in enumerate(specs):
            cells = []
            for e in radii:
                x = by_key.get((d, spec, round(e, 12))) if spec else None
                if x is None:
                    cells.append('<td class="empty">\u00b7</td>')
                    continue
                fg, bg = VERDICT_STYLE.get(x["verdict"], VERDICT_STYLE["untested"])
                tip = f"{x['verdict']}: " + ", ".join(x["nodeids"])
                cells.append(f'<td class="cell" style="color:{fg};background:{bg}" title="{_e(tip)}">'
                             f'{_e(VERDICT_MARK.get(x["verdict"], ""))} {_pct(x["verified_fraction"])}</td>')
            if not radii:
                cells.append('<td class="empty">\u00b7</td>')
            dcell = (f'<th class="rowh" rowspan="{len(specs)}"><a href="#dir-{_e(d)}">{_e(d)}</a><br>{_badge(status)}</th>'
                     if i == 0 else "")
            rows.append(f"<tr>{dcell}<td>{_e(spec or 'no tests')}</td>{''.join(cells)}</tr>")
    untested = "".join(f"<span>{_e(u)}</span>" for u in cov["untested"]) or "<span>none</span>"
    return (f'<h2 id="coverage">Semantic coverage</h2>'
            f'<p><b>{c["proved"]} of {c["directions"]}</b> directions proved ({cov["percent_proved"]:.1f}%): '
            f'{c["tested"]} tested, {c["declared"]} declared. A direction counts as proved when every latent test '
            f'along it is proved.</p>'
            f'<p class="chips">Untested: {untested}</p>'
            f'<p class="legend">Cells: worst verdict at that radius and the lowest verified fraction of seeds. '
            f'Columns: eps (latent units).</p>'
            f'<div class="scroll"><table class="matrix"><thead><tr><th>direction</th><th>spec</th>{head or "<th></th>"}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


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


def _radius_caption(cr: Mapping) -> str:
    n = cr.get("n", sum(int(c) for c in cr["histogram"]["counts"]))
    qs = ", ".join(f"{k} {float(v):.3g}" for k, v in (cr.get("quantiles") or {}).items() if v is not None)
    src = str(cr.get("nodeid", "")).split("::")[-1]
    searched = f", searched up to {float(cr['eps_max']):g}" if cr.get("eps_max") is not None else ""
    return (f"Largest certified radius per seed (latent units; {n} seeds{searched}"
            f"{', from ' + src if src else ''}){': ' + qs if qs else ''}.")


def _cex_caption(c: Mapping) -> str:
    off = ", ".join(f"{float(o):+.3g}" for o in c.get("offset") or [])
    off_eps = ", ".join(f"{float(o):+.2f}" for o in c.get("offset_eps") or [])
    exp = "" if c.get("expected") is None else f", expected {c['expected']}"
    return (f"seed {c.get('seed_index')}: offset ({off}) = ({off_eps}) eps; predicted {c.get('predicted')}{exp}; "
            f"margin {float(c.get('margin', 0)):.3g}")


def _counterexamples_section(tests: Sequence[Mapping], images: bool, base_dir: Optional[Path]) -> str:
    blocks = []
    for r in tests:
        cexs = [c for c in r.get("counterexamples") or [] if c.get("image")]
        if not cexs:
            continue
        figs = []
        for c in cexs[:MAX_CEX_IMAGES_PER_TEST]:
            cap = _e(_cex_caption(c))
            if images:
                uri, why = _image_uri(c["image"], base_dir)
                if uri:
                    figs.append(f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
                    continue
                figs.append(f'<figure><figcaption>{cap}<br><span class="note">{_e(why)}</span></figcaption></figure>')
            else:
                figs.append(f'<figure><figcaption>{cap}<br><code>{_e(c["image"])}</code></figcaption></figure>')
        blocks.append(f'<div class="cex"><h3>{_e(r["nodeid"])} {_badge(r["verdict"])}</h3>'
                      f'<p class="note">{_e(r.get("spec_text", ""))} along {_e(r["direction"])!s}, eps={_g(r["eps"])}. '
                      f'Each strip walks from the seed\'s nominal decoding (left) to the counterexample (right), '
                      f're-checked by a plain forward pass.</p><div class="strips">{"".join(figs)}</div></div>')
    if not blocks:
        return ""
    return '<h2 id="counterexamples">Counterexamples</h2>' + "".join(blocks)


def _tests_table(tests: Sequence[Mapping]) -> str:
    show_evidence = any(r.get("evidence") and r["evidence"] != r["verdict"] for r in tests)
    rows = []
    for r in tests:
        c = r.get("counts") or {}
        name = str(r["nodeid"]).split("::")[-1]
        notes = []
        if r.get("failing_bound") is not None and c.get("unknown"):
            notes.append(f"failing bound {float(r['failing_bound']):.3g}")
        if r.get("estimate"):
            est = r["estimate"]
            notes.append(f"estimate {_pct(est.get('fraction'))} [{_pct(est.get('lower'))}, {_pct(est.get('upper'))}] "
                         f"at {float(est.get('confidence', 0)) * 100:g}% confidence, {est.get('samples')} samples")
        if r.get("segment"):
            notes.append(f"exact: mean {_pct(r['segment'].get('mean_fraction'))} of each segment holds")
        if r.get("sweep"):
            notes.append(f"sweep over {len(r['sweep'])} radii")
        cr = r.get("certified_radius") or {}
        med = (cr.get("quantiles") or {}).get("median", (cr.get("quantiles") or {}).get("p50"))
        if med is not None:
            notes.append(f"certified radius: median {float(med):.3g}"
                         + (f" (searched up to {float(cr['eps_max']):g})" if cr.get("eps_max") is not None else ""))
        notes += [str(n) for n in r.get("notes") or []]
        rungs = ", ".join(f"{k} {v}" for k, v in sorted((r.get("rungs") or {}).items()))
        ev = f'<td>{_e(r.get("evidence", ""))}</td>' if show_evidence else ""
        rows.append(
            f'<tr><td title="{_e(r["nodeid"])}"><code>{_e(name)}</code></td><td>{_e(r["direction"])}</td>'
            f'<td class=num>{_g(r["eps"])}</td><td>{_e(r.get("spec_text", ""))}</td><td>{_badge(r["verdict"])}</td>'
            f'<td>{_e(r.get("outcome", ""))}</td>'
            f'<td class=num>{c.get("verified", 0)} / {c.get("falsified", 0)} / {c.get("unknown", 0)}</td>'
            f'<td class=num>{_pct(r.get("verified_fraction"))} <span class=note>(\u2265 {_pct(r.get("at_least"))})</span></td>'
            f'{ev}<td>{_e(r.get("engine", ""))}{"<br><span class=note>" + _e(rungs) + "</span>" if rungs else ""}</td>'
            f'<td class=num>{float(r.get("seconds", 0)):.2f}</td><td class="note notes">{_e("; ".join(notes))}</td></tr>')
    return ('<h2 id="tests">All latent tests</h2><div class="scroll"><table class="tests"><thead><tr>'
            '<th>test</th><th>direction</th><th class=num>eps</th><th>spec</th><th>verdict</th><th>outcome</th>'
            '<th class=num title="verified / falsified / undecided seeds">seeds v / f / u</th>'
            '<th class=num>verified (needs)</th>' + ("<th>evidence</th>" if show_evidence else "")
            + '<th>engine</th><th class=num>s</th><th>notes</th>'
            '</tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")


def _kv(d: Mapping) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in d.items() if v not in (None, "", {}))
    return f'<dl class="kv">{items}</dl>'


# ------------------------------------------------------------------------ the page
def build_html(sheet, images: bool = True, *, title: Optional[str] = None, base_dir=None,
               declared: Optional[Iterable[str]] = None) -> str:
    """The report as a string. ``images``: embed charts and counterexample PNGs (False: tables
    and paths only). ``base_dir``: where relative counterexample image paths are resolved
    (default: the current directory). ``declared``: directions the LatentSpace declares
    (default: what the sheet records)."""
    data = getattr(sheet, "data", sheet)
    if isinstance(data, (str, Path)):
        with open(data, encoding="utf-8") as f:
            data = json.load(f)
    base = Path(base_dir) if base_dir is not None else None
    tests = sorted(data.get("tests") or [], key=lambda r: r["nodeid"])
    cov = coverage_summary(data, declared)
    Figure = _matplotlib() if images else None
    summary = data.get("summary") or {}
    verdicts = summary.get("verdicts") or {}
    seeds = summary.get("seeds") or {}
    tool = data.get("tool") or {}
    commit = data.get("commit") or {}
    models = data.get("models") or []
    title = title or "Latent audit report"

    sub = [f"{_e(tool.get('name', 'pytest-latentaudit'))} {_e(tool.get('version', ''))}",
           f"created {_e(data.get('created', '?'))}"]
    if commit.get("id"):
        sub.append(f"commit <code>{_e(commit['id'][:12])}</code>{' (dirty)' if commit.get('dirty') else ''}"
                   f"{' on ' + _e(commit['branch']) if commit.get('branch') else ''}")
    if models:
        sub.append("model" + ("s " if len(models) > 1 else " ") + ", ".join(f"<code>{_e(m)}</code>" for m in models))

    cards = [("tests", summary.get("tests", len(tests)), "")]
    for v in ("proved", "violated", "unproven", "estimated"):
        if verdicts.get(v) or v in ("proved", "violated"):
            cards.append((v, verdicts.get(v, 0), v))
    cards.append(("directions proved", f"{cov['counts']['proved']}/{cov['counts']['directions']}", ""))
    cards.append(("seeds verified", f"{seeds.get('verified', 0)}/{sum(int(x) for x in seeds.values()) if seeds else 0}",
                  ""))
    card_html = "".join(f'<div class="card {cls}"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
                        for k, v, cls in cards)

    dir_sections = []
    dirs = data.get("directions") or directions_section(tests, cov["directions_declared"])
    by_dir: Dict[str, List[Mapping]] = {}
    for r in tests:
        by_dir.setdefault(str(r["direction"]), []).append(r)
    for name in cov["matrix"]["directions"]:
        recs = by_dir.get(name, [])
        entry = dirs.get(name) or {}
        info = dict(recs[0].get("direction_info") or {}) if recs else {}
        info.update({k: entry[k] for k in ("kind", "k", "axis") if k in entry})
        pd = cov["per_direction"][name]
        meta = []
        if info.get("kind"):
            meta.append(f"{_e(info['kind'])}" + (f" {info['axis']}" if info.get("axis") is not None else "")
                        + (f", k={info['k']}" if info.get("k", 1) != 1 else ""))
        if pd["tests"]:
            meta.append(f"{pd['tests']} test{'s' if pd['tests'] != 1 else ''}")
            meta.append(f"proved up to eps={_g(pd['proved_eps'])}" if pd["proved_eps"] is not None else "nothing proved")
        else:
            meta.append("declared, no tests")
        parts = [f'<div class="dir" id="dir-{_e(name)}"><h3>{_e(name)} {_badge(pd["status"])}</h3>'
                 f'<div class="meta">{DOT.join(meta)}</div>']
        if not recs:
            parts.append('<p class="note">No latent test along this direction.</p>')
        else:
            series = _series(recs)
            plots = []
            if Figure is not None:
                uri = _fraction_chart(Figure, name, series)
                plots.append(f'<figure><img class="chart" src="{uri}" alt="verified, unknown and falsified fraction '
                             f'of seeds against eps along {_e(name)}"><figcaption>{CHART_LEGEND}</figcaption></figure>')
            cr = entry.get("certified_radius") or {}
            if cr.get("histogram") and cr["histogram"].get("counts"):
                cap = _radius_caption(cr)
                if Figure is not None:
                    plots.append(f'<figure><img class="chart" src="{_histogram_chart(Figure, cr["histogram"], pd["proved_eps"])}" '
                                 f'alt="certified radius histogram"><figcaption>{_e(cap)}</figcaption></figure>')
                else:
                    plots.append(f'<figure>{_histogram_table(cr["histogram"])}<figcaption>{_e(cap)}</figcaption></figure>')
            if Figure is None:
                parts.append(_fraction_table(series))
            if plots:
                parts.append(f'<div class="plots">{"".join(plots)}</div>')
        rng = entry.get("latent_range")
        if rng:
            parts.append(f'<p style="margin:12px 0 4px"><b>Deployment range</b> (in spec when the latent code\'s '
                         f'coordinates along {_e(name)} lie inside; mean \u00b1 (eps + std) over {rng.get("n_seeds", "?")} '
                         f'seeds, eps={_g(rng.get("eps"))}):</p>' + _range_table(rng))
        if entry.get("validity"):
            parts.append("<p style='margin:12px 0 4px'><b>Validity checks</b></p>" + _kv(entry["validity"]))
        parts.append("</div>")
        dir_sections.append("".join(parts))

    legend = (f'<div class="legend">Verdicts: {_badge("proved")} {_badge("violated")} {_badge("unproven")} '
              f'{_badge("estimated")} {_badge("untested")}</div>')
    toc = ('<nav class="toc"><a href="#coverage">Coverage</a><a href="#directions">Directions</a>'
           + ('<a href="#counterexamples">Counterexamples</a>' if any(r.get("counterexamples") for r in tests) else "")
           + '<a href="#tests">All tests</a><a href="#run">Run</a></nav>')
    settings = data.get("settings") or {}
    machine = data.get("machine") or {}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body = [
        f'<header class="top"><h1>{_e(title)}</h1><div class="sub">{DOT.join(sub)}</div>{toc}</header>',
        f'<section class="cards">{card_html}</section>', legend,
        _coverage_section(cov),
        '<h2 id="directions">Directions</h2>' + "".join(dir_sections),
        _counterexamples_section(tests, images, base),
        _tests_table(tests),
        f'<h2 id="run">Run</h2><div class="plots"><div><h3>Settings</h3>{_kv(settings)}</div>'
        f'<div><h3>Machine</h3>{_kv(machine)}</div></div>',
        f'<footer>Generated {now} by pytest-latentaudit from a spec sheet (schema version '
        f'{_e(data.get("schema_version", "?"))}). Verified = a sound bound proves the spec on the seed\'s whole box; '
        f'falsified = a concrete point in the box breaks it (re-checked by a plain forward pass); unknown = neither '
        f'within the budget.</footer>',
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(b for b in body if b) + "\n</main>\n</body>\n</html>\n")


def render_html(sheet, path, images: bool = True, **kw) -> Path:
    """Write the report for ``sheet`` (dict, ``SpecSheet`` or path) to ``path`` atomically and
    return the path. Keyword arguments go to ``build_html`` (``title``, ``base_dir``, ``declared``)."""
    path = Path(path)
    write_atomic(path, build_html(sheet, images, **kw).encode("utf-8"))
    return path
