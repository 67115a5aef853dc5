"""Semantic coverage and run-to-run regressions, on spec sheets read by ``specsheet.read_sheet``
(typed ``records.TestRecord`` objects; no torch, no numpy).

*Semantic coverage* answers the QA question "which declared directions have tests, at which
radii, for which specs, and what did they prove":

    summary = coverage_summary(sheet, declared=["pose", "light", "expression"])
    summary["percent_proved"], summary["untested"], summary["matrix"]["cells"]
    ok, message = coverage_gate(summary, fail_under_pct=75)

A direction counts as **proved** when it has at least one latent test and every latent test
along it is proved (a sweep's points add cells to the matrix but the test-level verdict is
what a test asserts). The percentage is over the union of declared and tested directions.

``compare(old, new)`` (``compare_sheets`` for the regressions alone) lists regressions between
two runs, comparing only tests that ran in ``new``: a worse verdict, a lower verified fraction,
a test that disappeared, a worse point of a radius sweep, a smaller largest proved radius per
direction and spec, a smaller certified radius. ``latentaudit diff`` and ``--latent-compare``
both call it, so they always agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .records import EPS_TOL, TestRecord, largest_proved_eps, radius_stat
from .specsheet import models_of, read_sheet
from ..core.vocab import PROVED, UNTESTED, VERDICT_RANK, is_worse, worst

__all__ = ["VERDICT_RANK", "coverage_summary", "coverage_gate", "compare", "Comparison", "compare_sheets",
           "format_regression", "regressions_gate", "comparison_lines", "radius_points"]

def radius_points(rec: Mapping) -> List[dict]:
    """A JSON record's points as dicts (``TestRecord.points``, for callers holding JSON)."""
    r = rec if isinstance(rec, TestRecord) else TestRecord.from_json(rec)
    return [{"eps": p.eps, "verdict": p.verdict, "counts": p.counts.to_json(), "verified_fraction": p.verified_fraction,
             "n_seeds": p.n_seeds, "sweep": p.sweep} for p in r.points()]


def _declared(data: Mapping, records: Sequence[TestRecord], declared: Optional[Iterable[str]]) -> List[str]:
    if declared is not None:
        return sorted({str(d) for d in declared})
    names = set((data.get("directions") or {}).keys())
    names.update((data.get("coverage") or {}).get("directions_declared") or [])
    for r in records:
        names.update(r.declared_directions)
    return sorted(names)


# ------------------------------------------------------------------------ coverage
def coverage_summary(sheet, declared: Optional[Iterable[str]] = None) -> dict:
    """Coverage of ``sheet`` (dict, ``SpecSheet``, path or list of test records).

    ``declared``: the directions the LatentSpace declares (default: the sheet's ``directions``
    section and the records' ``declared_directions``). Returns::

        {"directions_declared": [...], "directions_tested": [...], "directions_proved": [...],
         "untested": [...], "percent_proved": float,
         "counts": {"declared", "tested", "proved", "untested", "tests"},
         "per_direction": {name: {"status", "declared", "tests", "verdicts", "proved_eps", "max_eps",
                                  "stale", "vacuous"}},
         "matrix": {"directions": [...], "specs": [...], "radii": [...],
                    "cells": [{"direction", "spec", "eps", "verdict", "verdicts", "verified_fraction",
                               "nodeids"}]},
         "models": {fingerprint: {"names", "directions_proved", "untested", "percent_proved",
                                  "counts", "per_direction": {name: {"status", "proved_eps", "tests"}}}}}

    ``status`` of a direction: ``untested``, or the worst verdict of its tests
    (``violated`` < ``unproven`` < ``estimated`` < ``proved``) as they may claim it
    (``TestRecord.claimed``): a stale record (proved for an older model) counts as ``unproven``,
    a vacuous one is left out (unless every test is vacuous: ``unproven``). ``proved_eps``
    follows the same rule (``records.largest_proved_eps``); ``stale`` / ``vacuous`` count them.
    A matrix cell's ``verdict`` is the worst claimed one (its ``verdicts`` count the recorded
    verdicts; ``stale`` / ``vacuous`` list node ids).

    ``models``: the same summary for each model the records are about (``specsheet.models_of``:
    by fingerprint, stale records left out), over the same declared directions: with two models
    tested along ``pose``, the direction-wide ``proved_eps`` is the larger of theirs, and only
    this block says which model that radius is proved for."""
    sh = read_sheet(sheet)
    out = _summary(sh.data, sh.records, declared)
    out["models"] = {fp: {"names": m["names"], **_model_part(_summary(sh.data, m["records"], out["directions_declared"]))}
                     for fp, m in models_of(sh.records).items()}
    return out


def _model_part(s: Mapping) -> dict:
    return {"directions_proved": s["directions_proved"], "untested": s["untested"],
            "percent_proved": s["percent_proved"], "counts": s["counts"],
            "per_direction": {n: {"status": d["status"], "proved_eps": d["proved_eps"], "tests": d["tests"]}
                              for n, d in s["per_direction"].items()}}


def _summary(data: Mapping, records: Sequence[TestRecord], declared: Optional[Iterable[str]]) -> dict:
    decl = _declared(data, records, declared)
    per: Dict[str, dict] = {}
    cells: Dict[Tuple[str, str, float], dict] = {}
    proved_eps = largest_proved_eps(records)
    for r in records:
        name = r.direction
        d = per.setdefault(name, {"tests": 0, "verdicts": {}, "proved_eps": proved_eps[name], "max_eps": None,
                                  "stale": 0, "vacuous": 0, "_claimed": [], "_all": []})
        d["tests"] += 1
        d["verdicts"][r.verdict] = d["verdicts"].get(r.verdict, 0) + 1
        d["stale"] += r.stale is not None
        d["vacuous"] += r.vacuous is not None
        # the records rule: a stale record counts as unproven, a vacuous one claims nothing
        d["_all"].append(r.claimed())
        if r.vacuous is None:
            d["_claimed"].append(r.claimed())
        kind = r.spec_kind
        for p in r.points():
            eps = p.eps
            d["max_eps"] = eps if d["max_eps"] is None else max(d["max_eps"], eps)
            key = (name, kind, round(eps, 12))
            c = cells.setdefault(key, {"direction": name, "spec": kind, "eps": eps, "verdict": p.claimed,
                                       "verdicts": {}, "verified_fraction": None, "nodeids": []})
            c["verdicts"][p.verdict] = c["verdicts"].get(p.verdict, 0) + 1
            c["verdict"] = worst([c["verdict"], p.claimed])
            vf = p.verified_fraction
            c["verified_fraction"] = vf if c["verified_fraction"] is None else min(c["verified_fraction"], vf)
            if r.nodeid not in c["nodeids"]:
                c["nodeids"].append(r.nodeid)
            for flag, on in (("stale", r.stale is not None), ("vacuous", r.vacuous is not None)):
                if on and r.nodeid not in c.setdefault(flag, []):
                    c[flag].append(r.nodeid)
    tested = sorted(per)
    universe = sorted(set(decl) | set(tested))
    for name in universe:
        d = per.setdefault(name, {"tests": 0, "verdicts": {}, "proved_eps": None, "max_eps": None, "stale": 0,
                                  "vacuous": 0, "_claimed": [], "_all": []})
        d["declared"] = name in decl
        claimed, every = d.pop("_claimed"), d.pop("_all")
        d["status"] = (worst(claimed or every) if d["tests"] else UNTESTED)
    proved = [n for n in universe if per[n]["status"] == PROVED]
    untested = [n for n in universe if per[n]["status"] == UNTESTED]
    pct = 100.0 * len(proved) / len(universe) if universe else 0.0
    ordered = sorted(cells.values(), key=lambda c: (c["direction"], c["spec"], c["eps"]))
    return {
        "directions_declared": decl,
        "directions_tested": tested,
        "directions_proved": proved,
        "untested": untested,
        "percent_proved": round(pct, 6),
        "counts": {"declared": len(decl), "tested": len(tested), "proved": len(proved),
                   "untested": len(untested), "directions": len(universe), "tests": len(records)},
        "per_direction": {n: dict(per[n]) for n in universe},
        "matrix": {"directions": universe, "specs": sorted({c["spec"] for c in ordered}),
                   "radii": sorted({c["eps"] for c in ordered}), "cells": ordered},
    }


def coverage_gate(summary: Mapping, fail_under_pct: float) -> Tuple[bool, str]:
    """``(ok, message)``: ok when ``percent_proved >= fail_under_pct``."""
    need = float(fail_under_pct)
    c = summary["counts"]
    pct = float(summary["percent_proved"])
    if c["directions"] == 0:
        ok = need <= 0
        return ok, ("latent coverage: no latent directions declared or tested"
                    + ("" if ok else f" (required {need:g}% proved)"))
    ok = pct + 1e-9 >= need
    head = (f"latent coverage: {c['proved']}/{c['directions']} directions proved ({pct:.1f}%)"
            f"{' >= ' if ok else ' < '}required {need:g}%")
    details = []
    if summary["untested"]:
        details.append("untested: " + ", ".join(summary["untested"]))
    weak = [(n, d) for n, d in summary["per_direction"].items() if d["status"] not in (PROVED, UNTESTED)]
    if weak:
        details.append("not proved: " + ", ".join(f"{n} ({d['status']})" for n, d in weak))
    return ok, head + ("; " + "; ".join(details) if details else "")


# ------------------------------------------------------------------------ regressions
def _reg(kind, message, *, direction=None, nodeid=None, eps=None, old=None, new=None, spec=None) -> dict:
    return {"kind": kind, "direction": direction, "spec": spec, "nodeid": nodeid, "eps": eps, "old": old,
            "new": new, "message": message}


def _radius_regression(old_cr, new_cr, radius_tol, *, label, direction, nodeid=None, eps=None) -> Optional[dict]:
    """A shrunk median (else mean) certified radius; only comparable when both searched the
    same range (``eps_max``), since the search caps every radius."""
    stat, before = radius_stat(old_cr)
    if before is None:
        return None
    stat2, after = radius_stat(new_cr)
    if after is None:
        return _reg("certified_radius", f"{label}: certified radius no longer recorded ({stat} was {before:.4g})",
                    direction=direction, nodeid=nodeid, eps=eps, old=before, new=None)
    o_max, n_max = (old_cr or {}).get("eps_max"), (new_cr or {}).get("eps_max")
    if o_max is not None and n_max is not None and abs(float(o_max) - float(n_max)) > 1e-12:
        return None
    if stat2 == stat and after + radius_tol < before:
        return _reg("certified_radius", f"{label}: {stat} certified radius {before:.4g} -> {after:.4g}",
                    direction=direction, nodeid=nodeid, eps=eps, old=before, new=after)
    return None


@dataclass
class Comparison:
    """What ``compare`` found: the regressions, the tests compared, and the baseline's tests
    that did not run in the new sheet (carried over: listed, never regressions)."""

    regressions: List[dict] = field(default_factory=list)
    compared: List[str] = field(default_factory=list)
    not_run: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.regressions


_ORDER = ["verdict", "missing_test", "proved_eps", "sweep_verdict", "certified_radius", "verified_fraction",
          "sweep_verified_fraction"]


def compare(old, new, *, tol: float = 1e-12, radius_tol: float = 1e-9) -> Comparison:
    """Compare two sheets (dicts, ``SpecSheet`` or paths) like pytest-benchmark compares runs:
    only tests that *ran* in ``new`` are compared. A record of ``new`` marked ``carried_over``
    (its test did not run: deselected, another shard's file) is listed in ``not_run``. A test of
    ``old`` that is absent from ``new`` altogether (deleted, or it ran and left no record) is a
    ``missing_test`` regression. ``latentaudit diff`` and ``--latent-compare`` both call this.

    Regression kinds: ``verdict``, ``verified_fraction``, ``missing_test``, ``sweep_verdict``,
    ``sweep_verified_fraction``, ``proved_eps`` (per direction and spec kind, over every record
    of ``new``, so tests that did not run keep their radius), ``certified_radius`` (per test,
    and per direction from the ``directions`` section; compared when both runs searched the
    same ``eps_max``). Each is ``{"kind", "direction", "spec", "nodeid", "eps", "old", "new",
    "message"}``; the list is worst kind first."""
    o_sheet, n_sheet = read_sheet(old, source="old sheet"), read_sheet(new, source="new sheet")
    o_tests = {r.key: r for r in o_sheet.records}
    n_all = {r.key: r for r in n_sheet.records}
    n_tests = {k: r for k, r in n_all.items() if r.ran}
    comp = Comparison(not_run=sorted(k for k, r in n_all.items() if not r.ran and k in o_tests))
    out = comp.regressions
    for nodeid, t in sorted(n_tests.items()):
        o = o_tests.get(nodeid)
        if o is None:
            continue
        comp.compared.append(nodeid)
        d, eps, kind = t.direction, t.eps, t.spec_kind
        if is_worse(t.verdict, o.verdict):
            out.append(_reg("verdict", f"{nodeid}: verdict {o.verdict} -> {t.verdict}", direction=d,
                            nodeid=nodeid, eps=eps, old=o.verdict, new=t.verdict, spec=kind))
        elif t.verified_fraction + tol < o.verified_fraction:
            out.append(_reg("verified_fraction", f"{nodeid}: verified fraction {o.verified_fraction:.3f} -> "
                            f"{t.verified_fraction:.3f}", direction=d, nodeid=nodeid, eps=eps,
                            old=o.verified_fraction, new=t.verified_fraction, spec=kind))
        o_sweep = {round(p.eps, 12): p for p in o.sweep}
        for p in t.sweep:
            q = o_sweep.get(round(p.eps, 12))
            if q is None or abs(p.eps - eps) <= EPS_TOL:
                continue
            if is_worse(p.verdict, q.verdict):
                out.append(_reg("sweep_verdict", f"{nodeid} at eps={p.eps:g}: verdict {q.verdict} -> {p.verdict}",
                                direction=d, nodeid=nodeid, eps=p.eps, old=q.verdict, new=p.verdict, spec=kind))
            elif p.verified_fraction + tol < q.verified_fraction:
                out.append(_reg("sweep_verified_fraction", f"{nodeid} at eps={p.eps:g}: verified fraction "
                                f"{q.verified_fraction:.3f} -> {p.verified_fraction:.3f}", direction=d,
                                nodeid=nodeid, eps=p.eps, old=q.verified_fraction, new=p.verified_fraction,
                                spec=kind))
        if o.certified_radius:
            reg = _radius_regression(o.certified_radius, t.certified_radius, radius_tol, label=nodeid,
                                     direction=d, nodeid=nodeid, eps=eps)
            if reg:
                out.append(reg)
    for nodeid in sorted(set(o_tests) - set(n_all)):
        o = o_tests[nodeid]
        out.append(_reg("missing_test", f"{nodeid}: test missing from the new sheet", direction=o.direction,
                        nodeid=nodeid, eps=o.eps, old=o.verdict, new=None, spec=o.spec_kind))
    key = lambda r: (r.direction, r.spec_kind)  # noqa: E731
    o_pe, n_pe = largest_proved_eps(o_tests.values(), key), largest_proved_eps(n_all.values(), key)
    tested_now = {r.direction for r in n_tests.values()}
    # keys of the baseline's tests that ran again: a test edited to another direction or spec
    # kind takes its proof away from its old key, which then counts as "nothing proved"
    rerun = {key(o) for nodeid, o in o_tests.items() if nodeid in n_tests}
    for (d, kind), before in sorted(o_pe.items()):
        if before is None:
            continue  # never proved
        if (d, kind) not in rerun and ((d, kind) not in n_pe or d not in tested_now):
            continue  # none of its tests ran again: not run (carried over), or missing (reported as such)
        after = n_pe.get((d, kind))
        if after is None or after + EPS_TOL < before:
            now = "nothing proved" if after is None else f"eps={after:g}"
            out.append(_reg("proved_eps", f"direction {d!r} ({kind}): proved up to eps={before:g} -> {now}",
                            direction=d, spec=kind, eps=before, old=before, new=after))
    o_dirs, n_dirs = o_sheet.data.get("directions") or {}, n_sheet.data.get("directions") or {}  # as recorded
    for d in sorted(set(o_dirs) & set(n_dirs) & tested_now):  # untested now: reported as missing tests
        reg = _radius_regression((o_dirs[d] or {}).get("certified_radius"), (n_dirs[d] or {}).get("certified_radius"),
                                 radius_tol, label=f"direction {d!r}", direction=d)
        if reg:
            out.append(reg)
    out.sort(key=lambda r: _ORDER.index(r["kind"]))
    return comp


def compare_sheets(old, new, *, tol: float = 1e-12, radius_tol: float = 1e-9) -> List[dict]:
    """The regressions of ``compare(old, new)``, worst kind first."""
    return compare(old, new, tol=tol, radius_tol=radius_tol).regressions


def format_regression(reg: Mapping) -> str:
    return str(reg["message"])


def comparison_lines(comp: Comparison, what: str = "the previous spec sheet") -> Tuple[bool, List[str]]:
    """``(ok, lines)`` for a terminal: the regressions, then the tests not run (not compared)."""
    if comp.regressions:
        lines = [f"{len(comp.regressions)} regression(s) against {what}:"]
        lines += ["  " + format_regression(r) for r in comp.regressions]
    else:
        lines = [f"no regressions against {what} ({len(comp.compared)} test(s) compared)"]
    if comp.not_run:
        lines.append(f"{len(comp.not_run)} test(s) of the baseline not run (not compared): "
                     + ", ".join(comp.not_run[:10]) + (" ..." if len(comp.not_run) > 10 else ""))
    return comp.ok, lines


def regressions_gate(regressions: Sequence[Mapping]) -> Tuple[bool, List[str]]:
    """``(ok, lines)`` for a terminal summary: ok when there are no regressions."""
    if not regressions:
        return True, ["no regressions against the previous spec sheet"]
    return False, [f"{len(regressions)} regression(s) against the previous spec sheet:"] + [
        "  " + format_regression(r) for r in regressions]
