"""Text a person reads: the failure message of one latent test and the session summary.

Works on plain record dicts (see session.make_record) so it runs on the xdist controller
without torch.
"""
from __future__ import annotations

from typing import Iterable, List


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def counts_line(rec: dict) -> str:
    c, n = rec["counts"], rec["n_seeds"]
    return (f"verified {c['verified']}/{n} ({_pct(rec['verified_fraction'])}), falsified {c['falsified']}, "
            f"unknown {c['unknown']}; needs {_pct(rec['at_least'])} verified")


def failure_message(rec: dict) -> str:
    lines = [
        f"latent spec {rec['verdict'].upper()}: {rec['spec_text']} along {rec['direction']!r}, eps={rec['eps']:g}",
        f"  {counts_line(rec)}",
    ]
    est = rec.get("estimate")
    if est:
        lines.append(f"  sampling evidence: {est['samples']} sampled variations; the spec holds on "
                     f"{_pct(est['fraction'])} of them, [{_pct(est['lower'])}, {_pct(est['upper'])}] at "
                     f"{_pct(est['confidence'])} confidence (estimated, not proved)")
    if rec.get("rungs"):
        lines.append("  decided by: " + ", ".join(f"{k} {v}" for k, v in sorted(rec["rungs"].items())))
    cexs = rec.get("counterexamples") or []
    if cexs:
        w = cexs[0]
        off = ", ".join(f"{o:+.4g}" for o in w["offset"])
        off_eps = ", ".join(f"{o:+.2f}" for o in w["offset_eps"])
        exp = "" if w.get("expected") is None else f", expected {w['expected']}"
        lines.append(f"  worst counterexample: seed {w['seed_index']}, offset ({off}) = ({off_eps}) eps "
                     f"along {rec['direction']!r}: predicted {w['predicted']}{exp} (margin {w['margin']:.4g}; "
                     f"re-checked by a plain forward pass)")
        if w.get("image"):
            lines.append(f"  counterexample image: {w['image']}")
    fb = rec.get("failing_bound")
    if fb is not None and rec["counts"]["unknown"]:
        lines.append(f"  failing bound: the best proven upper bound of the spec margin on an unproved seed is "
                     f"{fb:.4g} (a proof needs < 0)")
    for note in rec.get("notes") or []:
        lines.append(f"  note: {note}")
    lines.append(f"  engine {rec['engine']}, {rec['seconds']:.2f} s, seed {rec['seed']}")
    if rec.get("spec_sheet"):
        lines.append(f"  spec sheet: {rec['spec_sheet']}")
    return "\n".join(lines)


def summary_table(records: Iterable[dict]) -> List[str]:
    rows = [("test", "direction", "eps", "spec", "verdict", "verified", "falsified", "unknown", "seconds")]
    for r in records:
        c = r["counts"]
        rows.append((r["nodeid"].split("::")[-1], str(r["direction"]), f"{r['eps']:g}", r["spec_text"],
                     r["verdict"], str(c["verified"]), str(c["falsified"]), str(c["unknown"]), f"{r['seconds']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    fmt = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [fmt(rows[0]), fmt(tuple("-" * w for w in widths))]
    out += [fmt(row) for row in rows[1:]]
    return out
