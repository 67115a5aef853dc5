"""``latentaudit``: read spec sheets without running tests.

    latentaudit show SHEET            per-test table and per-direction proved range
    latentaudit diff OLD NEW [--fail] regressions between two runs (exit 1 with --fail)
    latentaudit html SHEET OUT        a static, offline HTML report
    latentaudit export SHEET OUT      a model card: --format mct (Model Card Toolkit JSON) or
                                      --format hf --task TASK (Hugging Face model-index; JSON,
                                      YAML or README front matter by OUT's suffix)
    latentaudit coverage SHEET        semantic coverage (--fail-under PCT: a gate)
    latentaudit merge A B ... -o OUT  join the sheets of CI shards (conflicts: exit 1)
    latentaudit guard SHEET DATA      deployment guards on a batch
    latentaudit --version

Exit codes: 0 fine; 1 regressions (``diff --fail``), a failed gate or merge conflicts; 2 a
file that cannot be read or is not a spec sheet (one ``latentaudit: ...`` line on stderr), a
usage error, or no command.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

from .report.terminal import summary_table
from .sheet.specsheet import read_sheet

def cmd_show(args) -> int:
    sheet = read_sheet(args.sheet)
    d = sheet.data
    commit = d.get("commit") or {}
    print(f"spec sheet {args.sheet}: {d['tool']['name']} {d['tool']['version']}, created {d.get('created', '?')}"
          + (f", commit {commit.get('id', '')[:10]}{' (dirty)' if commit.get('dirty') else ''}" if commit else ""))
    for line in summary_table(sheet.records):
        print(line)
    carried = [r for r in sheet.records if not r.ran]
    stale = [r for r in sheet.records if r.stale is not None]
    vacuous = [r for r in sheet.records if r.vacuous is not None]
    if carried:
        print(f"({len(carried)} test(s) carried over from an earlier run: marked * in the table)")
    if stale:
        print(f"({len(stale)} stale: proved for an older model, re-run them; marked ! in the table; they prove no "
              f"range of the current model)")
    if vacuous:
        print(f"({len(vacuous)} vacuous: the spec holds whatever the model does (" + "; ".join(
            sorted({r.vacuous for r in vacuous})) + "); marked ~ in the table; they prove no range)")
    print()
    print("per direction (largest eps proved by a test or a sweep point that is neither stale nor vacuous):")
    section = sheet.direction_entries()
    for name, info in sorted(sheet.directions().items()):
        proved = "none" if info["proved_eps"] is None else f"{info['proved_eps']:g}"
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(info["verdicts"].items()))
        extra = ""
        entry = section.get(name) or {}
        if entry.get("realism_limit") is not None:
            rng = entry.get("latent_range") or {}
            deploy = "none" if not rng else f"{rng.get('eps', 0):g}"
            extra = f"; realistic up to eps={entry['realism_limit']:.3g}, deployable range up to eps={deploy}"
        rng = entry.get("latent_range") or {}
        if rng and rng.get("spec_text"):
            extra += f"; operating range for {rng['spec_text']}"
        print(f"  {name}: proved up to eps={proved} ({verdicts}){extra}")
        models = entry.get("models") or {}
        if len(models) > 1:  # one operating range per model (deploy.in_spec(model=...), guard --model)
            for key, sub in models.items():
                mr = sub.get("latent_range") or {}
                what = "none" if not mr else f"eps={mr.get('eps', 0):g}" + (
                    f" for {mr['spec_text']}" if mr.get("spec_text") else "")
                names = f" ({', '.join(sub.get('names') or [])})" if sub.get("names") else ""
                pe = sub.get("proved_eps")
                print(f"    model {key}{names}: proved up to eps={'none' if pe is None else f'{pe:g}'}, "
                      f"operating range {what}")
    return 0


def diff_sheets(old, new) -> List[str]:
    """Regression messages from ``old`` to ``new`` (``coverage.compare``, as ``--latent-compare``)."""
    from .sheet.coverage import compare

    return [r["message"] for r in compare(old, new).regressions]


def cmd_diff(args) -> int:
    from .sheet.coverage import compare, format_regression

    comp = compare(read_sheet(args.old), read_sheet(args.new))
    if not comp.regressions:
        print("no regressions")
    else:
        print(f"{len(comp.regressions)} regression(s):")
        for r in comp.regressions:
            print(f"  {format_regression(r)}")
    if comp.not_run:
        print(f"not run in {args.new} (carried over, not compared): {len(comp.not_run)} test(s)")
        for n in comp.not_run:
            print(f"  {n}")
    return 1 if (args.fail and comp.regressions) else 0


def cmd_html(args) -> int:
    from pathlib import Path

    from .report.html import render_html

    sheet = read_sheet(args.sheet)
    kw = {"title": args.title} if args.title else {}
    out = render_html(sheet, args.out, images=not args.no_images, base_dir=Path(args.sheet).parent, **kw)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from .report import exports

    if args.format == "hf" and not args.task:
        print("latentaudit: export --format hf needs --task, the Hugging Face task id of the model (e.g. "
              + ", ".join(exports.HF_TASK_EXAMPLES) + "): a spec sheet does not say what the model's inputs are",
              file=sys.stderr)
        return 2
    sheet = read_sheet(args.sheet)
    if args.format == "mct":
        out = exports.write_model_card(sheet.data, args.out, name=args.name)
    else:
        out = exports.write_model_index(sheet.data, args.out, args.name, task_type=args.task)
    print(f"wrote {out}")
    return 0


def version() -> str:
    """The installed distribution's version (``importlib.metadata``); the package's own
    ``__version__`` when it runs from a source tree that is not installed."""
    from importlib import metadata

    try:
        return metadata.version("pytest-latentaudit")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def no_command(ap: argparse.ArgumentParser, commands: List[Tuple[str, str]]) -> int:
    """What ``latentaudit`` with no command prints (stderr, exit 2): the commands, one a line."""
    width = max(len(name) for name, _ in commands)
    lines = [ap.format_usage().rstrip(), "", "latentaudit reads pytest-latentaudit spec sheets. Commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in commands]
    lines += ["", "Run 'latentaudit COMMAND --help' for a command's arguments; 'latentaudit --version'."]
    print("\n".join(lines), file=sys.stderr)
    return 2


def cmd_coverage(args) -> int:
    from .sheet.coverage import coverage_gate, coverage_summary

    declared = args.declared.split(",") if args.declared else None
    cov = coverage_summary(read_sheet(args.sheet), declared)
    ok, msg = coverage_gate(cov, args.fail_under or 0.0)
    print(msg)
    models = cov["models"] if len(cov["models"]) > 1 else {}
    for name, d in cov["per_direction"].items():
        proved = "-" if d["proved_eps"] is None else f"{d['proved_eps']:g}"
        print(f"  {name}: {d['status']} ({d['tests']} tests, proved up to eps={proved})")
        # with several models the direction-wide radius is the largest of theirs: say whose
        for fp, m in models.items():
            md = m["per_direction"].get(name)
            if md and md["tests"]:
                mp = "-" if md["proved_eps"] is None else f"{md['proved_eps']:g}"
                print(f"    {fp} ({', '.join(m['names']) or 'unnamed'}): {md['status']} "
                      f"({md['tests']} tests, proved up to eps={mp})")
    return 0 if ok else 1


def cmd_merge(args) -> int:
    """Join the sheets of CI shards: one record per test (a record that ran beats one carried
    over), image paths re-anchored to the output, summary, directions and coverage rebuilt."""
    from pathlib import Path

    from . import __version__
    from .sheet.specsheet import SpecSheet, _relpath, merge_sheets, relative_image_paths

    sheets = [read_sheet(p) for p in args.sheets]
    prefer = args.prefer or "fail"
    result = merge_sheets(sheets, list(args.sheets), prefer=prefer)
    for line in result.conflicts:
        print(f"conflict: {line}", file=sys.stderr)
    if result.conflicts and prefer == "fail":
        print(f"latentaudit: {len(result.conflicts)} conflict(s); nothing written (resolve with --prefer worse, "
              f"or first|last)", file=sys.stderr)
        return 1
    out = Path(args.out)
    for r in result.records:
        relative_image_paths([r], Path(result.sources[r.key]).parent, out.parent)
    first = sheets[0].data
    extra = {}
    # the sheet-level guard (the first shard's that has one, its file path re-anchored to the
    # output) and every shard's pixel cross-checks (each once)
    with_guard = [(sh, p) for sh, p in zip(sheets, args.sheets) if sh.guard is not None]
    if with_guard:
        sh, p = with_guard[0]
        g = sh.guard
        if g.path is not None:
            g.path = _relpath(Path(p).parent / g.path, out.parent)
        extra["guard"] = g
    pixel = []
    for sh in sheets:
        for pc in sh.data.get("pixel_crosscheck") or []:
            if pc not in pixel:
                pixel.append(pc)
    if pixel:
        extra["pixel_crosscheck"] = pixel
    merged = SpecSheet.build(result.records, tool_version=__version__, settings=dict(first.get("settings") or {}),
                             machine=first.get("machine") or None, commit=first.get("commit") or {}, **extra)
    merged.save(out)
    carried = sum(1 for r in result.records if not r.ran)
    print(f"merged {len(sheets)} sheet(s) into {out}: {len(result.records)} test(s)"
          + (f", {carried} carried over" if carried else "")
          + (f"; {len(result.conflicts)} conflict(s) resolved with --prefer {prefer}" if result.conflicts else ""))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="latentaudit", description="Read pytest-latentaudit spec sheets.")
    ap.add_argument("--version", action="version", version=f"latentaudit (pytest-latentaudit) {version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    commands: List[Tuple[str, str]] = []  # (name, help): listed when no command is given

    def add(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's keyword
        commands.append((name, help))
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")

    p = add("show", help="print a spec sheet as a table")
    p.add_argument("sheet")
    p.set_defaults(fn=cmd_show)
    p = add("diff", help="list regressions from OLD to NEW")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--fail", action="store_true", help="exit 1 when there are regressions")
    p.set_defaults(fn=cmd_diff)
    p = add("html", help="render a spec sheet as one static HTML page")
    p.add_argument("sheet")
    p.add_argument("out")
    p.add_argument("--no-images", action="store_true", help="no charts or counterexample pictures")
    p.add_argument("--title")
    p.set_defaults(fn=cmd_html)
    p = add("export", help="export a spec sheet as a model card")
    p.add_argument("sheet")
    p.add_argument("out")
    p.add_argument("--format", choices=("mct", "hf"), default="mct",
                   help="mct: Model Card Toolkit JSON; hf: Hugging Face model-index, written by OUT's suffix as "
                        "JSON (.json), YAML (.yaml, .yml) or README front matter (.md)")
    p.add_argument("--task", metavar="TASK", help="hf: the Hugging Face task id of the model (required with "
                                                   "--format hf), e.g. image-classification, tabular-classification")
    p.add_argument("--name", help="model name")
    p.set_defaults(fn=cmd_export)
    p = add("coverage", help="semantic coverage of a spec sheet")
    p.add_argument("sheet")
    p.add_argument("--fail-under", type=float, metavar="PCT", help="exit 1 below this percentage proved")
    p.add_argument("--declared", help="comma-separated declared directions (default: from the sheet)")
    p.set_defaults(fn=cmd_coverage)
    p = add("merge", help="join the spec sheets of CI shards into one")
    p.add_argument("sheets", nargs="+", metavar="SHEET")
    p.add_argument("-o", "--out", required=True, help="the merged sheet")
    p.add_argument("--prefer", choices=("worse", "first", "last"),
                   help="resolve conflicts (a test recorded differently by two shards) and write: worse keeps the "
                        "record that claims less; first / last pick a side, but of one model (the same "
                        "fingerprint) the worse is kept whatever is asked, so a merge never raises a claim; "
                        "default: report them, write nothing and exit 1")
    p.set_defaults(fn=cmd_merge)
    # latentaudit guard SHEET DATA: both deployment guards on a batch (implemented in guard.py,
    # imported only when the command runs: it needs numpy)
    def cmd_guard(args) -> int:
        from .sheet.guard import run_guard_command

        return run_guard_command(args)

    p = add("guard", help="deployment guards on a batch: in verified range, in distribution, accuracy")
    p.add_argument("sheet", help="spec sheet JSON (its guard is looked up beside it: SHEET.guard.json)")
    p.add_argument("data", help=".npz with z [N, d]; optional labels [N], pred [N] and feature:<layer> arrays")
    p.add_argument("--guard", help="the Deep Validation guard JSON (default: beside the sheet, if present)")
    p.add_argument("--range-only", action="store_true", help="check the verified range only")
    p.add_argument("--eps", type=float, help="check the proved range recorded at this radius (default: largest proved)")
    p.add_argument("--model", metavar="FINGERPRINT_OR_NAME",
                   help="whose verified ranges: needed when the sheet's tests ran on several models (latentaudit show "
                        "lists them)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_guard)
    args = ap.parse_args(argv)
    if args.cmd is None:
        return no_command(ap, commands)
    try:
        return args.fn(args)
    except (OSError, ValueError) as exc:  # unreadable, or not a spec sheet (SheetFormatError)
        print(f"latentaudit: {exc}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a field the structural check let through
        print(f"latentaudit: malformed input ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
