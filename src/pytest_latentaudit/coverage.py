"""Semantic coverage and run-to-run regressions, on plain spec-sheet dicts (no torch).

*Semantic coverage* answers the QA question "which declared directions have tests, at which
radii, for which specs, and what did they prove":

    summary = coverage_summary(sheet, declared=["pose", "light", "expression"])
    summary["percent_proved"], summary["untested"], summary["matrix"]["cells"]
    ok, message = coverage_gate(summary, fail_under_pct=75)

A direction counts as **proved** when it has at least one latent test and every latent test
along it is proved (a sweep's points add cells to the matrix but the test-level verdict is
what a test asserts). The percentage is over the union of declared and tested directions.

``compare_sheets(old, new)`` lists regressions between two runs: a worse verdict, a lower
verified fraction, a test that disappeared, a worse point of a radius sweep, a smaller
largest proved radius per direction and spec, a smaller certified radius.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = ["VERDICT_RANK", "coverage_summary", "coverage_gate", "compare_sheets", "format_regression",
           "regressions_gate", "radius_points"]

#: worse verdicts rank lower
VERDICT_RANK = {"violated": 0, "unproven": 1, "estimated": 2, "proved": 3}
_EPS_TOL = 1e-12


def _rank(v) -> int:
    return VERDICT_RANK.get(v, 1)


def _data(sheet) -> dict:
    """A sheet dict from a dict, a ``SpecSheet``, a path, or a bare list of records."""
    if isinstance(sheet, (str, Path)):
        with open(sheet, encoding="utf-8") as f:
            sheet = json.load(f)
    if isinstance(sheet, (list, tuple)):
        return {"tests": list(sheet)}
    data = getattr(sheet, "data", sheet)
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a spec sheet (dict, SpecSheet, path or list of records), got {type(sheet).__name__}")
    return dict(data)


def _spec_kind(rec: Mapping) -> str:
    spec = rec.get("spec")
    if isinstance(spec, Mapping) and spec.get("kind"):
        return str(spec["kind"])
    return str(rec.get("spec_text") or "spec")


def radius_points(rec: Mapping) -> List[dict]:
    """A record's ``(eps, verdict, counts, verified_fraction)`` points: its own, then the sweep's
    points at other radii (the record's own point wins at its eps)."""
    own = {"eps": float(rec["eps"]), "verdict": rec["verdict"], "counts": rec.get("counts") or {},
           "verified_fraction": rec.get("verified_fraction"), "n_seeds": rec.get("n_seeds"), "sweep": False}
    pts = [own]
    for p in rec.get("sweep") or []:
        if abs(float(p["eps"]) - own["eps"]) <= _EPS_TOL:
            continue
        pts.append({"eps": float(p["eps"]), "verdict": p["verdict"], "counts": p.get("counts") or {},
                    "verified_fraction": p.get("verified_fraction"), "n_seeds": rec.get("n_seeds"),
                    "sweep": True})
    return sorted(pts, key=lambda p: p["eps"])




def _declared(data: Mapping, declared: Optional[Iterable[str]]) -> List[str]:
    if declared is not None:
        return sorted({str(d) for d in declared})
    names = set((data.get("directions") or {}).keys())
    cov = data.get("coverage") or {}
    names.update(cov.get("directions_declared") or [])
    for r in data.get("tests") or []:
        names.update(r.get("declared_directions") or [])
    return sorted(names)


# ------------------------------------------------------------------------ coverage
def coverage_summary(sheet, declared: Optional[Iterable[str]] = None) -> dict:
    """Coverage of ``sheet`` (dict, ``SpecSheet``, path or list of test records).

    ``declared``: the directions the LatentSpace declares (default: the sheet's ``directions``
    section and the records' ``declared_directions``). Returns::

        {"directions_declared": [...], "directions_tested": [...], "directions_proved": [...],
         "untested": [...], "percent_proved": float,
         "counts": {"declared", "tested", "proved", "untested", "tests"},
         "per_direction": {name: {"status", "declared", "tests", "verdicts", "proved_eps", "max_eps"}},
         "matrix": {"directions": [...], "specs": [...], "radii": [...],
                    "cells": [{"direction", "spec", "eps", "verdict", "verdicts", "verified_fraction",
                               "nodeids"}]}}

    ``status`` of a direction: ``untested``, or the worst verdict of its tests
    (``violated`` < ``unproven`` < ``estimated`` < ``proved``)."""
    data = _data(sheet)
    records = list(data.get("tests") or [])
    decl = _declared(data, declared)
    per: Dict[str, dict] = {}
    cells: Dict[Tuple[str, str, float], dict] = {}
    for r in records:
        name = str(r["direction"])
        d = per.setdefault(name, {"tests": 0, "verdicts": {}, "proved_eps": None, "max_eps": None})
        d["tests"] += 1
        d["verdicts"][r["verdict"]] = d["verdicts"].get(r["verdict"], 0) + 1
        kind = _spec_kind(r)
        for p in radius_points(r):
            eps = p["eps"]
            d["max_eps"] = eps if d["max_eps"] is None else max(d["max_eps"], eps)
            if p["verdict"] == "proved" and (d["proved_eps"] is None or eps > d["proved_eps"]):
                d["proved_eps"] = eps
            key = (name, kind, round(eps, 12))
            c = cells.setdefault(key, {"direction": name, "spec": kind, "eps": eps, "verdict": p["verdict"],
                                       "verdicts": {}, "verified_fraction": None, "nodeids": []})
            c["verdicts"][p["verdict"]] = c["verdicts"].get(p["verdict"], 0) + 1
            if _rank(p["verdict"]) < _rank(c["verdict"]):
                c["verdict"] = p["verdict"]
            vf = p.get("verified_fraction")
            if vf is not None:
                c["verified_fraction"] = vf if c["verified_fraction"] is None else min(c["verified_fraction"], vf)
            if r.get("nodeid") and r["nodeid"] not in c["nodeids"]:
                c["nodeids"].append(r["nodeid"])
    tested = sorted(per)
    universe = sorted(set(decl) | set(tested))
    for name in universe:
        d = per.setdefault(name, {"tests": 0, "verdicts": {}, "proved_eps": None, "max_eps": None})
        d["declared"] = name in decl
        d["status"] = (min(d["verdicts"], key=_rank) if d["tests"] else "untested")
    proved = [n for n in universe if per[n]["status"] == "proved"]
    untested = [n for n in universe if per[n]["status"] == "untested"]
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
    weak = [(n, d) for n, d in summary["per_direction"].items() if d["status"] not in ("proved", "untested")]
    if weak:
        details.append("not proved: " + ", ".join(f"{n} ({d['status']})" for n, d in weak))
    return ok, head + ("; " + "; ".join(details) if details else "")


# ------------------------------------------------------------------------ regressions
def _reg(kind, message, *, direction=None, nodeid=None, eps=None, old=None, new=None, spec=None) -> dict:
    return {"kind": kind, "direction": direction, "spec": spec, "nodeid": nodeid, "eps": eps, "old": old,
            "new": new, "message": message}


def _proved_eps(records: Sequence[Mapping]) -> Dict[Tuple[str, str], Optional[float]]:
    out: Dict[Tuple[str, str], Optional[float]] = {}
    for r in records:
        key = (str(r["direction"]), _spec_kind(r))
        out.setdefault(key, None)
        for p in radius_points(r):
            if p["verdict"] == "proved" and (out[key] is None or p["eps"] > out[key]):
                out[key] = p["eps"]
    return out


def _radius_stat(cr: Optional[Mapping]) -> Tuple[Optional[str], Optional[float]]:
    if not cr:
        return None, None
    q = cr.get("quantiles") or {}
    for key in ("median", "p50"):
        if q.get(key) is not None:
            return "median", float(q[key])
    if cr.get("mean") is not None:
        return "mean", float(cr["mean"])
    return None, None


def _radius_regression(old_cr, new_cr, radius_tol, *, label, direction, nodeid=None, eps=None) -> Optional[dict]:
    """A shrunk median (else mean) certified radius; only comparable when both searched the
    same range (``eps_max``), since the search caps every radius."""
    stat, before = _radius_stat(old_cr)
    if before is None:
        return None
    stat2, after = _radius_stat(new_cr)
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


def compare_sheets(old, new, *, tol: float = 1e-12, radius_tol: float = 1e-9) -> List[dict]:
    """Regressions from ``old`` to ``new`` (dicts, ``SpecSheet`` or paths), worst first by kind.

    Each regression is ``{"kind", "direction", "spec", "nodeid", "eps", "old", "new", "message"}``
    with ``kind`` one of ``verdict``, ``verified_fraction``, ``missing_test``, ``sweep_verdict``,
    ``sweep_verified_fraction``, ``proved_eps``, ``certified_radius`` (per test, and per direction
    from the ``directions`` section; compared when both runs searched the same ``eps_max``)."""
    od, nd = _data(old), _data(new)
    o_tests = {r["nodeid"]: r for r in od.get("tests") or []}
    n_tests = {r["nodeid"]: r for r in nd.get("tests") or []}
    out: List[dict] = []
    for nodeid, t in sorted(n_tests.items()):
        o = o_tests.get(nodeid)
        if o is None:
            continue
        d, eps = str(t["direction"]), float(t["eps"])
        if _rank(t["verdict"]) < _rank(o["verdict"]):
            out.append(_reg("verdict", f"{nodeid}: verdict {o['verdict']} -> {t['verdict']}", direction=d,
                            nodeid=nodeid, eps=eps, old=o["verdict"], new=t["verdict"], spec=_spec_kind(t)))
        elif (t.get("verified_fraction") is not None and o.get("verified_fraction") is not None
              and t["verified_fraction"] + tol < o["verified_fraction"]):
            out.append(_reg("verified_fraction", f"{nodeid}: verified fraction {o['verified_fraction']:.3f} -> "
                            f"{t['verified_fraction']:.3f}", direction=d, nodeid=nodeid, eps=eps,
                            old=o["verified_fraction"], new=t["verified_fraction"], spec=_spec_kind(t)))
        o_sweep = {round(float(p["eps"]), 12): p for p in o.get("sweep") or []}
        for p in t.get("sweep") or []:
            q = o_sweep.get(round(float(p["eps"]), 12))
            if q is None or abs(float(p["eps"]) - eps) <= _EPS_TOL:
                continue
            pe = float(p["eps"])
            if _rank(p["verdict"]) < _rank(q["verdict"]):
                out.append(_reg("sweep_verdict", f"{nodeid} at eps={pe:g}: verdict {q['verdict']} -> {p['verdict']}",
                                direction=d, nodeid=nodeid, eps=pe, old=q["verdict"], new=p["verdict"],
                                spec=_spec_kind(t)))
            elif (p.get("verified_fraction") is not None and q.get("verified_fraction") is not None
                  and p["verified_fraction"] + tol < q["verified_fraction"]):
                out.append(_reg("sweep_verified_fraction", f"{nodeid} at eps={pe:g}: verified fraction "
                                f"{q['verified_fraction']:.3f} -> {p['verified_fraction']:.3f}", direction=d,
                                nodeid=nodeid, eps=pe, old=q["verified_fraction"], new=p["verified_fraction"],
                                spec=_spec_kind(t)))
    for nodeid in sorted(set(o_tests) - set(n_tests)):
        o = o_tests[nodeid]
        out.append(_reg("missing_test", f"{nodeid}: test missing from the new sheet", direction=str(o["direction"]),
                        nodeid=nodeid, eps=float(o["eps"]), old=o["verdict"], new=None, spec=_spec_kind(o)))
    o_pe, n_pe = _proved_eps(list(o_tests.values())), _proved_eps(list(n_tests.values()))
    for (d, kind), before in sorted(o_pe.items()):
        if before is None or (d, kind) not in n_pe:
            continue  # never proved, or the whole direction/spec vanished (reported as missing tests)
        after = n_pe[(d, kind)]
        if after is None or after + _EPS_TOL < before:
            now = "nothing proved" if after is None else f"eps={after:g}"
            out.append(_reg("proved_eps", f"direction {d!r} ({kind}): proved up to eps={before:g} -> {now}",
                            direction=d, spec=kind, eps=before, old=before, new=after))
    for nodeid, t in sorted(n_tests.items()):
        o = o_tests.get(nodeid)
        if o is not None and o.get("certified_radius"):
            reg = _radius_regression(o["certified_radius"], t.get("certified_radius"), radius_tol, label=nodeid,
                                     direction=str(t["direction"]), nodeid=nodeid, eps=float(t["eps"]))
            if reg:
                out.append(reg)
    o_dirs, n_dirs = od.get("directions") or {}, nd.get("directions") or {}
    tested_now = {str(t["direction"]) for t in n_tests.values()}
    for d in sorted(set(o_dirs) & set(n_dirs) & tested_now):  # untested now: reported as missing tests
        reg = _radius_regression((o_dirs[d] or {}).get("certified_radius"), (n_dirs[d] or {}).get("certified_radius"),
                                 radius_tol, label=f"direction {d!r}", direction=d)
        if reg:
            out.append(reg)
    order = ["verdict", "missing_test", "proved_eps", "sweep_verdict", "certified_radius", "verified_fraction",
             "sweep_verified_fraction"]
    return sorted(out, key=lambda r: order.index(r["kind"]))


def format_regression(reg: Mapping) -> str:
    return str(reg["message"])


def regressions_gate(regressions: Sequence[Mapping]) -> Tuple[bool, List[str]]:
    """``(ok, lines)`` for a terminal summary: ok when there are no regressions."""
    if not regressions:
        return True, ["no regressions against the previous spec sheet"]
    return False, [f"{len(regressions)} regression(s) against the previous spec sheet:"] + [
        "  " + format_regression(r) for r in regressions]
