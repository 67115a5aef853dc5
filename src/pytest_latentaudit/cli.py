"""``latentaudit``: read spec sheets without running tests.

    latentaudit show SHEET            per-test table and per-direction proved range
    latentaudit diff OLD NEW [--fail] regressions between two runs (exit 1 with --fail)
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .report import summary_table
from .specsheet import SpecSheet

_RANK = {"proved": 2, "unproven": 1, "violated": 0}


def cmd_show(args) -> int:
    sheet = SpecSheet.load(args.sheet)
    d = sheet.data
    commit = d.get("commit") or {}
    print(f"spec sheet {args.sheet}: {d['tool']['name']} {d['tool']['version']}, created {d.get('created', '?')}"
          + (f", commit {commit.get('id', '')[:10]}{' (dirty)' if commit.get('dirty') else ''}" if commit else ""))
    for line in summary_table(sheet.tests):
        print(line)
    print()
    print("per direction (largest eps with a proved test):")
    section = d.get("directions") or {}
    for name, info in sorted(sheet.directions().items()):
        proved = "none" if info["proved_eps"] is None else f"{info['proved_eps']:g}"
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(info["verdicts"].items()))
        extra = ""
        entry = section.get(name) or {}
        if entry.get("realism_limit") is not None:
            rng = entry.get("latent_range") or {}
            deploy = "none" if not rng else f"{rng.get('eps', 0):g}"
            extra = f"; realistic up to eps={entry['realism_limit']:.3g}, deployable range up to eps={deploy}"
        print(f"  {name}: proved up to eps={proved} ({verdicts}){extra}")
    return 0


def diff_sheets(old: SpecSheet, new: SpecSheet) -> List[str]:
    """Regressions: a test whose verdict got worse or whose verified fraction dropped."""
    before = {t["nodeid"]: t for t in old.tests}
    out = []
    for t in new.tests:
        o = before.get(t["nodeid"])
        if o is None:
            continue
        if _RANK.get(t["verdict"], 0) < _RANK.get(o["verdict"], 0):
            out.append(f"{t['nodeid']}: verdict {o['verdict']} -> {t['verdict']}")
        elif t["verified_fraction"] + 1e-12 < o["verified_fraction"]:
            out.append(f"{t['nodeid']}: verified fraction {o['verified_fraction']:.3f} -> {t['verified_fraction']:.3f}")
    gone = sorted(set(before) - {t["nodeid"] for t in new.tests})
    out += [f"{n}: test missing from the new sheet" for n in gone]
    return out


def cmd_diff(args) -> int:
    regressions = diff_sheets(SpecSheet.load(args.old), SpecSheet.load(args.new))
    if not regressions:
        print("no regressions")
        return 0
    print(f"{len(regressions)} regression(s):")
    for r in regressions:
        print(f"  {r}")
    return 1 if args.fail else 0


def cmd_html(args) -> int:
    from pathlib import Path

    from .html_report import render_html

    sheet = SpecSheet.load(args.sheet)
    kw = {"title": args.title} if args.title else {}
    out = render_html(sheet.data, args.out, images=not args.no_images, base_dir=Path(args.sheet).parent, **kw)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from . import exports

    sheet = SpecSheet.load(args.sheet)
    if args.format == "mct":
        out = exports.write_model_card(sheet.data, args.out, name=args.name)
    else:
        out = exports.write_model_index(sheet.data, args.out, args.name)
    print(f"wrote {out}")
    return 0


def cmd_coverage(args) -> int:
    from .coverage import coverage_gate, coverage_summary

    declared = args.declared.split(",") if args.declared else None
    cov = coverage_summary(SpecSheet.load(args.sheet).data, declared)
    ok, msg = coverage_gate(cov, args.fail_under or 0.0)
    print(msg)
    for name, d in cov["per_direction"].items():
        proved = "-" if d["proved_eps"] is None else f"{d['proved_eps']:g}"
        print(f"  {name}: {d['status']} ({d['tests']} tests, proved up to eps={proved})")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="latentaudit", description="Read pytest-latentaudit spec sheets.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("show", help="print a spec sheet as a table")
    p.add_argument("sheet")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("diff", help="list regressions from OLD to NEW")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--fail", action="store_true", help="exit 1 when there are regressions")
    p.set_defaults(fn=cmd_diff)
    p = sub.add_parser("html", help="render a spec sheet as one static HTML page")
    p.add_argument("sheet")
    p.add_argument("out")
    p.add_argument("--no-images", action="store_true", help="no charts or counterexample pictures")
    p.add_argument("--title")
    p.set_defaults(fn=cmd_html)
    p = sub.add_parser("export", help="export a spec sheet as a model card")
    p.add_argument("sheet")
    p.add_argument("out")
    p.add_argument("--format", choices=("mct", "hf"), default="mct",
                   help="mct: Model Card Toolkit JSON; hf: Hugging Face model-index YAML")
    p.add_argument("--name", help="model name")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("coverage", help="semantic coverage of a spec sheet")
    p.add_argument("sheet")
    p.add_argument("--fail-under", type=float, metavar="PCT", help="exit 1 below this percentage proved")
    p.add_argument("--declared", help="comma-separated declared directions (default: from the sheet)")
    p.set_defaults(fn=cmd_coverage)

    # latentaudit guard SHEET DATA: both deployment guards on a batch (implemented in guard.py,
    # imported only when the command runs: it needs numpy)
    def cmd_guard(args) -> int:
        from .guard import run_guard_command

        return run_guard_command(args)

    p = sub.add_parser("guard", help="deployment guards on a batch: in verified range, in distribution, accuracy")
    p.add_argument("sheet", help="spec sheet JSON (its guard is looked up beside it: SHEET.guard.json)")
    p.add_argument("data", help=".npz with z [N, d]; optional labels [N], pred [N] and feature:<layer> arrays")
    p.add_argument("--guard", help="the Deep Validation guard JSON (default: beside the sheet, if present)")
    p.add_argument("--range-only", action="store_true", help="check the verified range only")
    p.add_argument("--eps", type=float, help="check the range recorded at this radius (default: largest proved)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_guard)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (OSError, ValueError) as exc:
        print(f"latentaudit: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
