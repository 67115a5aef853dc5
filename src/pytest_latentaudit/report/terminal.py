"""Text a person reads: the failure message of one latent test and the session summary.

Works on ``records.TestRecord`` objects (JSON dicts are parsed) so it runs on the xdist
controller and in the CLI without torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Union

from ..sheet.records import TestRecord


def pct(x, missing: str = "\u2013") -> str:
    """A fraction as a percentage with one decimal (``0.953`` -> ``95.3%``); ``missing`` for
    None, NaN, inf or anything not a number. The terminal, the HTML report and the guard
    report all format fractions with this."""
    if isinstance(x, bool) or x is None:
        return missing
    try:
        v = float(x)
    except (TypeError, ValueError):
        return missing
    return f"{100 * v:.1f}%" if math.isfinite(v) else missing


_pct = pct


def _rec(rec: Union[TestRecord, Mapping]) -> TestRecord:
    return rec if isinstance(rec, TestRecord) else TestRecord.from_json(rec)


def counts_line(rec: Union[TestRecord, Mapping]) -> str:
    r = _rec(rec)
    c = r.counts
    return (f"verified {c.verified}/{r.n_seeds} ({_pct(r.verified_fraction)}), falsified {c.falsified}, "
            f"unknown {c.unknown}; needs {_pct(r.at_least)} verified")


def failure_message(rec: Union[TestRecord, Mapping], *, sheet: Optional[Path] = None,
                    image_base: Optional[Path] = None) -> str:
    """The message of a violated / unproven / estimated test. ``sheet``: where the spec sheet
    is written; ``image_base``: the folder image paths are relative to (printed resolved)."""
    r = _rec(rec)
    lines = [
        f"latent spec {r.verdict.upper()}: {r.spec_text or r.spec_kind} along {r.direction!r}, eps={r.eps:g}",
        f"  {counts_line(r)}",
    ]
    est = r.estimate
    if est:
        lines.append(f"  sampling evidence: {est['samples']} sampled variations; the spec holds on "
                     f"{_pct(est['fraction'])} of them, [{_pct(est['lower'])}, {_pct(est['upper'])}] at "
                     f"{_pct(est['confidence'])} confidence (estimated, not proved)")
    if r.rungs:
        lines.append("  decided by: " + ", ".join(f"{k} {v}" for k, v in sorted(r.rungs.items())))
    if r.counterexamples:
        w = r.counterexamples[0]
        off = ", ".join(f"{o:+.4g}" for o in w.offset)
        off_eps = ", ".join(f"{o:+.2f}" for o in w.offset_eps)
        exp = "" if w.expected is None else f", expected {w.expected}"
        lines.append(f"  worst counterexample: seed {w.seed_index}, offset ({off}) = ({off_eps}) eps "
                     f"along {r.direction!r}: predicted {w.predicted}{exp} "
                     f"(margin {'unknown' if w.margin is None else format(w.margin, '.4g')}; "
                     f"re-checked by a plain forward pass)")
        if w.image:
            img = Path(w.image)
            if not img.is_absolute() and image_base is not None:
                img = image_base / img
            lines.append(f"  counterexample image: {img}")
    if r.failing_bound is not None and r.counts.unknown:
        lines.append(f"  failing bound: the best proven upper bound of the spec margin on an unproved seed is "
                     f"{r.failing_bound:.4g} (a proof needs < 0)")
    for note in r.notes:
        lines.append(f"  note: {note}")
    if r.cut_short:
        lines.append(f"  cut short by the budget ({_budget(r.budget)}): {', '.join(r.cut_short)}")
    lines.append(f"  engine {r.engine}, {r.seconds:.2f} s, seed {r.seed}")
    if sheet is not None:
        lines.append(f"  spec sheet: {sheet}")
    return "\n".join(lines)


def _budget(b: Optional[float]) -> str:
    return "no budget" if b is None else f"{b:g} s"


def verdict_badge(rec: Union[TestRecord, Mapping]) -> str:
    """``[proved: 16/16 verified]``, ``[violated: 1/4 verified, 3 falsified]``: what ``-v`` shows
    beside a latent test's outcome."""
    r = _rec(rec)
    c = r.counts
    parts = [f"{c.verified}/{r.n_seeds} verified"]
    if c.falsified:
        parts.append(f"{c.falsified} falsified")
    if c.unknown:
        parts.append(f"{c.unknown} unknown")
    return f"[{r.verdict}: {', '.join(parts)}]"


def summary_table(records: Iterable[Union[TestRecord, Mapping]]) -> List[str]:
    """One row per record, by node id, with the pytest outcome beside the verdict (an expected
    violation shows ``xfailed``, not as a failure); records carried over from an earlier sheet
    are marked ``*`` (their outcome is the earlier run's), stale ones (proved for an older model,
    ``records.mark_stale``) ``!``, vacuous ones (the spec holds whatever the model does) ``~``;
    a test that called ``latent_audit`` more than once has a row per call (``(call N)``)."""
    rows = [("test", "outcome", "direction", "eps", "spec", "verdict", "verified", "falsified", "unknown",
             "seconds")]
    for rec in records:
        r = _rec(rec)
        c = r.counts
        name = r.key + (" !" if r.stale is not None else ("" if r.ran else " *")) + (" ~" if r.vacuous else "")
        rows.append((name, r.outcome or "-", r.direction, f"{r.eps:g}", r.spec_text or r.spec_kind, r.verdict,
                     str(c.verified), str(c.falsified), str(c.unknown), f"{r.seconds:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    fmt = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [fmt(rows[0]), fmt(tuple("-" * w for w in widths))]
    out += [fmt(row) for row in rows[1:]]
    return out


def claim_lines(records: Iterable[TestRecord]) -> List[str]:
    """What the terminal summary says about records that prove no range: stale ones (re-run
    them) and vacuous ones."""
    recs = list(records)
    stale = [r for r in recs if r.stale is not None]
    vac = [r for r in recs if r.vacuous is not None and r.ran]
    out = []
    if stale:
        out.append(f"{len(stale)} carried-over record(s) are stale: proved for an older model (their model has "
                   f"another fingerprint in the tests that ran); they prove no range of the current model, "
                   f"re-run them: " + ", ".join(r.key for r in stale))
    for r in vac:
        out.append(f"{r.key}: vacuous spec ({r.vacuous}); it proves no operating range")
    return out


def cut_short_lines(records: Iterable[TestRecord]) -> List[str]:
    """One line per test whose budget cut something short, or that was interrupted."""
    out = []
    for r in records:
        name = r.key
        if r.interrupted:
            out.append(f"{name}: interrupted ({r.interrupted.get('reason', 'stopped')}) before its audit finished")
        if r.cut_short:
            out.append(f"{name}: budget {_budget(r.budget)} cut short {', '.join(r.cut_short)}")
    return out
