"""The spec sheet: the verified operating range of a model, per semantic direction.

Plain JSON, written atomically (temp file + rename) so an interrupted run leaves the old
sheet intact. No torch or numpy at import: the CLI and the xdist controller use it.

``read_sheet`` is the one place a sheet is loaded (from a path, a dict, a ``SpecSheet`` or a
bare list of records) and checked for structure: everything else (the CLI, coverage,
comparison, exports, the baseline of ``--latent-compare``) goes through it, so a file that
parses as JSON but is no spec sheet gives one ``SheetFormatError`` naming the bad field.

Subset runs and shards (see docs/spec-sheet.md):

* ``carry_over(ran, earlier, ...)``: the records of a run plus the earlier sheet's records of
  tests that did not run, marked ``carried_over`` (a ``-k`` run does not shrink the sheet);
* ``merge_sheets([...])``: the sheets of CI shards joined into one, with conflicts reported;
  of two differing records of one test and model the worse is kept (a merge never raises a claim).

What a record may claim (stale and vacuous records prove no range) is ``records.mark_stale`` /
``TestRecord.claimed``: ``parse_records`` applies it, so every reader here goes through it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .records import (EPS_TOL, GuardRecord, PixelCrosscheckRecord, SheetFormatError, SweepPoint, TestRecord,
                      largest_proved_eps, model_identity, mark_stale, parse_records, widest_radius)
from ..core.vocab import PROVED, VERDICTS, is_worse

__all__ = ["SCHEMA_VERSION", "SpecSheet", "SheetFormatError", "read_sheet", "check_sheet", "summarize",
           "carry_over", "merge_sheets", "MergeResult", "relative_image_paths", "directions_section"]

SCHEMA_VERSION = 1


def torch_info() -> Dict[str, object]:
    """torch's version and CUDA device in this process, if a test already imported torch (never
    imported here); ``{}`` otherwise."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    info: Dict[str, object] = {"torch": str(torch.__version__), "cuda": bool(torch.cuda.is_available())}
    if info["cuda"]:
        info["gpu"] = str(torch.cuda.get_device_name(0))
    return info


def machine_info(torch_of_tests: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Where the tests ran. ``torch_of_tests``: ``torch_info()`` of the processes that ran them
    (xdist workers; the controller may never import torch); without it, this process's, or at
    least the installed version (read from the package metadata, not by importing torch)."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    found = torch_of_tests or torch_info()
    if not found:
        from importlib import metadata

        try:
            found = {"torch": metadata.version("torch")}
        except metadata.PackageNotFoundError:
            found = {}
    info.update(found)
    return info


def commit_info(cwd: Optional[Path] = None) -> Dict[str, object]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        return {"id": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()), "branch": branch.stdout.strip()}
    except (OSError, subprocess.SubprocessError):
        return {}


# ------------------------------------------------------------------ loading and checking
def check_sheet(data, source: str = "spec sheet", *, require_header: bool = True) -> List[TestRecord]:
    """Check ``data`` is a spec sheet this version reads; return its parsed records.

    ``require_header=False`` accepts an in-memory ``{"tests": [...]}`` without ``schema_version``."""
    if not isinstance(data, Mapping) or "tests" not in data or (require_header and "schema_version" not in data):
        raise SheetFormatError(f"{source} is not a latentaudit spec sheet (expected a JSON object with "
                               f"'schema_version' and 'tests')")
    if "schema_version" in data:
        v = data["schema_version"]
        if not isinstance(v, int) or isinstance(v, bool):
            raise SheetFormatError(f"{source}: 'schema_version' must be an integer, got {v!r}")
        if v > SCHEMA_VERSION:
            raise SheetFormatError(f"{source} has schema version {v}; this tool reads up to {SCHEMA_VERSION}: "
                                   f"upgrade pytest-latentaudit")
    for key in ("tool", "settings", "summary", "commit", "machine", "coverage"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise SheetFormatError(f"{source}: {key!r} must be an object, got {type(data[key]).__name__}")
    dirs = data.get("directions")
    if dirs is not None and (not isinstance(dirs, Mapping)
                             or not all(isinstance(e, Mapping) or e is None for e in dirs.values())):
        raise SheetFormatError(f"{source}: 'directions' must map direction names to objects")
    if data.get("guard") is not None:
        GuardRecord.from_json(data["guard"], f"{source}: guard")
    if data.get("pixel_crosscheck") is not None:
        if not isinstance(data["pixel_crosscheck"], list):
            raise SheetFormatError(f"{source}: 'pixel_crosscheck' must be a list of cross-check results, got "
                                   f"{type(data['pixel_crosscheck']).__name__}")
        for i, p in enumerate(data["pixel_crosscheck"]):
            PixelCrosscheckRecord.from_json(p, f"{source}: pixel_crosscheck[{i}]")
    if not isinstance(data["tests"], list):
        raise SheetFormatError(f"{source}: 'tests' must be a list of test records, got "
                               f"{type(data['tests']).__name__}")
    records = parse_records(data["tests"], where=f"{source}: tests")
    seen: Dict[str, int] = {}
    for i, r in enumerate(records):
        if r.key in seen:
            what = "node id" if r.call is None else "node id and call"
            raise SheetFormatError(f"{source}: tests[{i}]: {what} {r.key!r} already recorded at "
                                   f"tests[{seen[r.key]}]")
        seen[r.key] = i
    return records


def read_sheet(sheet, *, source: Optional[str] = None) -> "SpecSheet":
    """The one sheet loader: a path, a ``SpecSheet``, a dict or a bare list of records, checked.

    Raises ``OSError`` for a file that cannot be read and ``SheetFormatError`` (a
    ``LatentAuditError``, so a ``ValueError``) for anything that is not a spec sheet."""
    if isinstance(sheet, SpecSheet):
        return sheet
    if isinstance(sheet, (str, os.PathLike)):
        path = Path(sheet)
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise SheetFormatError(f"{path} is not JSON ({exc})") from None
        return SpecSheet(data, _records=check_sheet(data, str(source or path)))
    if isinstance(sheet, (list, tuple)):
        data = {"tests": list(sheet)}
        return SpecSheet(data, _records=check_sheet(data, source or "records", require_header=False))
    data = getattr(sheet, "data", sheet)
    if not isinstance(data, Mapping):
        raise SheetFormatError(f"expected a spec sheet (dict, SpecSheet, path or list of records), got "
                               f"{type(sheet).__name__}")
    return SpecSheet(dict(data), _records=check_sheet(data, source or "spec sheet", require_header=False))


class SpecSheet:
    def __init__(self, data: dict, _records: Optional[List[TestRecord]] = None):
        self.data = data  # the JSON form; ``_records``: already checked (not kept: hooks edit ``data``)

    @property
    def records(self) -> List[TestRecord]:
        """The typed test records, parsed from ``data["tests"]`` (which hooks may have edited)."""
        return parse_records(self.data.get("tests") or [])

    @classmethod
    def build(cls, records: Iterable[Union[TestRecord, Mapping]], *, tool_version: str,
              rootdir: Optional[Path] = None, settings: Optional[dict] = None, **header) -> "SpecSheet":
        """A sheet from records (typed or JSON), sorted by node id; ``header``: extra top-level
        fields (``created``, ``machine``, ``commit`` replace the computed ones; ``guard``: a
        ``DeepValidationGuard``, its ``sheet_entry()`` or a ``GuardRecord``; ``pixel_crosscheck``:
        a list of ``PixelCheck`` results, their ``to_dict()`` or ``PixelCrosscheckRecord``s)."""
        recs = sorted(parse_records(list(records)), key=_order)
        if header.get("guard") is not None:
            g = header["guard"]
            header["guard"] = (g if isinstance(g, GuardRecord) else GuardRecord.from_json(g, "guard")).to_json()
        if header.get("pixel_crosscheck") is not None:
            header["pixel_crosscheck"] = [
                (p if isinstance(p, PixelCrosscheckRecord) else PixelCrosscheckRecord.from_json(
                    p, f"pixel_crosscheck[{i}]")).to_json() for i, p in enumerate(header["pixel_crosscheck"])]
        tests = [r.to_json() for r in recs]
        data = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "pytest-latentaudit", "version": tool_version},
            "created": header.pop("created", None) or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": header.pop("machine", None) or machine_info(),
            "commit": header.pop("commit", None) if "commit" in header else commit_info(rootdir),
            "settings": settings or {},
            "models": sorted({r.model_fingerprint for r in recs if r.model_fingerprint}),
            "summary": summarize(recs),
            "tests": tests,
        }
        data.update(header)
        from .coverage import coverage_summary

        declared = sorted({d for r in recs for d in r.declared_directions})
        data["directions"] = directions_section(tests, declared=declared)
        data["coverage"] = coverage_summary(data)
        return cls(data, _records=recs)

    def in_spec(self, z, directions=None, **kw):
        """Deployment guard: which latent codes ``z`` lie in the verified operating range
        (``pytest_latentaudit.sheet.deploy.in_spec``): ``{direction: bool [N], ..., "all": bool [N]}``."""
        from .deploy import in_spec

        return in_spec(self.data, z, directions, **kw)

    @property
    def guard(self) -> Optional[GuardRecord]:
        """The Deep Validation guard stored beside the sheet (top-level ``guard``), if recorded."""
        g = self.data.get("guard")
        return None if g is None else GuardRecord.from_json(g, "guard")

    @property
    def pixel_crosschecks(self) -> List[PixelCrosscheckRecord]:
        """The sheet's pixel-space cross-checks (top-level ``pixel_crosscheck``) and its records'."""
        out = [PixelCrosscheckRecord.from_json(p, f"pixel_crosscheck[{i}]")
               for i, p in enumerate(self.data.get("pixel_crosscheck") or [])]
        return out + [r.pixel_crosscheck for r in self.records if r.pixel_crosscheck is not None]

    @property
    def tests(self) -> List[dict]:
        return self.data.get("tests", [])

    def text(self) -> str:
        return json.dumps(_finite(self.data), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path) -> Path:
        from ..core.files import write_atomic  # numpy: only when a sheet is written

        path = Path(path)
        write_atomic(path, self.text().encode())
        return path

    @classmethod
    def load(cls, path) -> "SpecSheet":
        return read_sheet(Path(path))

    def direction_entries(self) -> Dict[str, dict]:
        """The sheet's ``directions`` section (ranges, bases, proved eps, certified radius per
        direction); rebuilt from the records by ``directions_section`` when the sheet has none,
        or when a stale or vacuous record (the records rule) may have fed its ranges
        (``_section_current``: a sheet written before the rule, or records marked since). ``deploy.in_spec``, the exports and ``latentaudit
        show`` read it through this."""
        dirs = self.data.get("directions")
        if isinstance(dirs, Mapping) and dirs and _section_current(dirs, self.records):
            return dict(dirs)
        recs = self.records
        return directions_section(recs, declared=sorted({d for r in recs for d in r.declared_directions}
                                                        | set(dirs or {})))

    def directions(self) -> Dict[str, dict]:
        """Per direction: the largest eps proved (by a test or a sweep point), and the verdicts seen."""
        out: Dict[str, dict] = {}
        proved = largest_proved_eps(self.records)
        for t in self.records:
            d = out.setdefault(t.direction, {"proved_eps": proved[t.direction], "tests": 0, "verdicts": {}})
            d["tests"] += 1
            d["verdicts"][t.verdict] = d["verdicts"].get(t.verdict, 0) + 1
        return out


def _order(r: TestRecord):
    return (r.nodeid, r.call or 0)


def _section_current(dirs: Mapping, records: List[TestRecord]) -> bool:
    """May this stored ``directions`` section be used as it is? Not when one of its ranges
    comes from a record that may not claim a proof (stale, vacuous: the records rule), or when it
    was written before the rule (its ranges do not say whether they ``prove``) and a direction
    holds such records; nor when it was written before ranges were kept per model (``models``)
    and a direction has fingerprinted records; nor when records of one direction name were
    tested along different bases (a section written before ranges carried their own basis read
    them all in one). A section with nothing to doubt is kept as written."""
    doubtful: Dict[str, set] = {}
    fingerprinted = set()
    bases: Dict[str, list] = {}
    for r in records:
        if not r.claims_proof:
            doubtful.setdefault(r.direction, set()).add(r.nodeid)
        if r.model_fingerprint and r.stale is None:
            fingerprinted.add(r.direction)
        b = record_basis(r)
        seen = bases.setdefault(r.direction, [])
        if b and not any(same_basis(b, o) for o in seen):
            seen.append(b)
    if any(len(seen) > 1 for seen in bases.values()):
        return False  # one name, several directions: where each range is read is rebuilt (``_place_bases``)
    for name, entry in dirs.items():
        if isinstance(entry, Mapping) and name in fingerprinted and "models" not in entry:
            return False  # written before ranges were kept per model: one range may mix models
        if not isinstance(entry, Mapping) or name not in doubtful:
            continue
        items = list(entry.get("ranges") or [])
        if entry.get("latent_range"):
            items.append(entry["latent_range"])
        for g in items:
            if not isinstance(g, Mapping) or "proves" not in g:
                return False
            if g.get("proves") and g.get("nodeid") in doubtful[name]:
                return False
    return True


def _finite(obj):
    """Strict JSON: non-finite floats (an infinite bound, say) become null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def summarize(records: Sequence[Union[TestRecord, Mapping]]) -> dict:
    recs = parse_records(records)
    verdicts: Dict[str, int] = {}
    for r in recs:
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    out = {"tests": len(recs), "verdicts": {v: verdicts[v] for v in VERDICTS if v in verdicts},
           "seeds": {"verified": sum(r.counts.verified for r in recs),
                     "falsified": sum(r.counts.falsified for r in recs),
                     "unknown": sum(r.counts.unknown for r in recs)}}
    carried = sum(1 for r in recs if not r.ran)
    if carried:
        out["carried_over"] = carried
    stale = sum(1 for r in recs if r.stale is not None)
    if stale:
        out["stale"] = stale
    vacuous = sum(1 for r in recs if r.vacuous is not None)
    if vacuous:
        out["vacuous"] = vacuous
    return out


# ------------------------------------------------------------------ image paths
def relative_image_paths(records: Iterable[TestRecord], old_base: Optional[Path], new_base: Path) -> None:
    """Re-anchor counterexample image paths (relative to ``old_base``, or absolute) to be
    relative to ``new_base`` (a sheet's folder), in place."""
    for r in records:
        for c in r.counterexamples:
            if not c.image:
                continue
            p = Path(c.image)
            if not p.is_absolute() and old_base is not None:
                p = old_base / p
            c.image = _relpath(p, new_base)


def _relpath(p: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(base))).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return str(p)


# ------------------------------------------------------------------ subset runs and shards
def carry_over(ran: Sequence[TestRecord], earlier: Sequence[TestRecord], *, ran_ids: Iterable[str],
               keep: Callable[[TestRecord], bool], earlier_created: Optional[str] = None) -> List[TestRecord]:
    """This run's records plus the earlier sheet's records of tests that did not run.

    ``ran_ids``: node ids that ran in this session (with or without a record: a test that ran
    and left none, say an error before its audit, loses its earlier record). ``keep(record)``:
    whether a test that did not run still exists (deselected, or in a file this run did not
    collect); records of deleted tests are dropped. Kept records are marked ``carried_over``
    (``{"from": <the earlier sheet's created>}``, the original date kept on later carries) and,
    when this run shows their model has changed since, ``stale`` (``records.mark_stale``)."""
    ran_ids = set(ran_ids) | {r.nodeid for r in ran}
    out = list(ran)
    for r in earlier:
        if r.nodeid in ran_ids or not keep(r):
            continue
        if r.carried_over is None:
            r.carried_over = {"from": earlier_created}
        out.append(r)
    return sorted(mark_stale(out), key=_order)


@dataclass
class MergeResult:
    records: List[TestRecord]
    conflicts: List[str] = field(default_factory=list)
    #: record key (``TestRecord.key``) -> the name of the sheet its record came from
    sources: Dict[str, str] = field(default_factory=dict)


#: how ``merge_sheets`` may resolve a conflict
PREFER = ("fail", "worse", "first", "last")


def _worse(a: TestRecord, b: TestRecord) -> bool:
    """Does ``a`` claim less than ``b``? A worse verdict; then a lower verified fraction; then a
    smaller largest proved eps over its points."""
    if a.verdict != b.verdict:
        return is_worse(a.verdict, b.verdict)
    if abs(a.verified_fraction - b.verified_fraction) > 1e-12:
        return a.verified_fraction < b.verified_fraction
    pa, pb = largest_proved_eps([a], key=lambda r: 0)[0], largest_proved_eps([b], key=lambda r: 0)[0]
    return (pa or -1.0) < (pb or -1.0)


def _cap_sweep(kept: TestRecord, other: TestRecord) -> bool:
    """Never let the kept record claim more at a sweep radius than the other record of the same
    test and model: a sweep point of ``kept`` better than ``other``'s at the same eps is replaced
    by ``other``'s (in place). True when something was replaced."""
    theirs = {round(p.eps, 12): p for p in other.sweep}
    own = round(other.eps, 12)
    changed = False
    for i, p in enumerate(kept.sweep):
        q = theirs.get(round(p.eps, 12))
        if q is None and round(p.eps, 12) == own:
            q = other
        if q is not None and is_worse(q.verdict, p.verdict):
            kept.sweep[i] = q if isinstance(q, SweepPoint) else SweepPoint(
                eps=p.eps, verdict=q.verdict, counts=q.counts, verified_fraction=q.verified_fraction,
                evidence=q.evidence, estimate=q.estimate)
            changed = True
    return changed


def merge_sheets(sheets: Sequence[SpecSheet], names: Sequence[str], *, prefer: str = "fail") -> MergeResult:
    """Join the records of several sheets (CI shards), one per record key (``TestRecord.key``).

    The rule (docs/spec-sheet.md, "Shards"):

    * identical records (``TestRecord.comparable``: timing, pictures, outcome aside) are one;
    * a record that ran beats a carried-over one;
    * two records that ran and differ are a *conflict* (listed). Of one model (the same
      ``model_fingerprint``) the **worse** is kept whatever ``prefer`` says (``_worse``: verdict,
      then verified fraction, then proved eps), and its sweep points are capped by the other's:
      a merge never claims more than every record of the test supports. Of different models
      (shards that ran different code), ``prefer`` picks: ``"fail"`` and ``"worse"`` keep the
      worse, ``"first"`` / ``"last"`` that side;
    * two carried-over records that differ (no conflict: neither ran) keep the worse of one
      model, else the one carried from the later run.

    ``prefer="fail"`` resolves like ``"worse"`` and reports; the CLI then writes nothing. Differences
    in ``settings`` are conflicts too."""
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {', '.join(PREFER)}, got {prefer!r}")
    chosen: Dict[str, tuple] = {}
    out = MergeResult([])
    base_settings, base_name = None, None
    for sheet, name in zip(sheets, names):
        settings = sheet.data.get("settings") or {}
        if base_settings is None:
            base_settings, base_name = settings, name
        elif settings != base_settings:
            diff = sorted(k for k in set(settings) | set(base_settings) if settings.get(k) != base_settings.get(k))
            out.conflicts.append(f"settings differ between {base_name} and {name}: {', '.join(diff)}")
        for r in sheet.records:
            k = r.key
            if k not in chosen:
                chosen[k] = (r, name)
                continue
            prev, prev_name = chosen[k]
            if prev.ran != r.ran:
                if r.ran:
                    chosen[k] = (r, name)
                continue
            if prev.comparable() == r.comparable():
                continue
            same_model = prev.model_fingerprint == r.model_fingerprint
            worse_new = _worse(r, prev)
            if not prev.ran:  # both carried over: no conflict
                later = str((r.carried_over or {}).get("from") or "") > str((prev.carried_over or {}).get("from") or "")
                take_new = worse_new if same_model else later
            elif same_model or prefer in ("fail", "worse"):
                take_new = worse_new
            else:
                take_new = prefer == "last"
            kept, kept_name, other = (r, name, prev) if take_new else (prev, prev_name, r)
            capped = same_model and _cap_sweep(kept, other)
            if prev.ran:
                what = _difference(prev.comparable(), r.comparable())
                line = f"{k}: recorded by {prev_name} and {name} with different {what}"
                if same_model:
                    line += f"; kept the worse ({kept_name}'s, {kept.verdict})"
                    if prefer in ("first", "last") and kept_name != (prev_name if prefer == "first" else name):
                        line += f", not the {prefer} (a merge never raises a claim of one model)"
                    if capped:
                        line += ", its sweep capped by the other's"
                else:
                    line += (f" of different models ({prev.model_fingerprint} vs {r.model_fingerprint}); kept "
                             f"{kept_name}'s")
                out.conflicts.append(line)
            chosen[k] = (kept, kept_name)
    out.records = sorted((r for r, _ in chosen.values()), key=_order)
    out.sources = {k: name for k, (_, name) in chosen.items()}
    return out


def _difference(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if "verdict" in keys:
        return f"verdicts ({a.get('verdict')} vs {b.get('verdict')})"
    return "fields: " + ", ".join(keys)


# ------------------------------------------------------------------ the directions section
def _new_entry() -> dict:
    return {"proved_eps": None, "latent_range": None, "ranges": []}


def directions_section(records: Iterable[Union[TestRecord, Mapping]],
                       declared: Optional[Iterable[str]] = None) -> Dict[str, dict]:
    """The sheet's top-level ``directions`` section from test records (typed or JSON).

    Per direction: ``kind``, ``k``, ``axis`` or ``basis`` (from the records' ``latent_range`` or
    ``direction_info``), ``proved_eps`` (``records.largest_proved_eps``: a test or a sweep point
    that may claim it), ``proved`` (per spec, ``spec_text``: the largest such eps with its
    ``at_least``), ``certified_radius`` (``records.widest_radius``: the summary of the test that
    searched the widest radius, with its ``nodeid``), ``ranges`` (every test's range and the range
    at each of its sweep radii, ``mean -+ (eps + std)``, with ``eps``, ``nodeid``, ``verdict``,
    the spec it is a range of (``spec``, ``spec_text``, ``at_least``), ``proves`` (the records
    rule ``Point.claimed``: proved, and neither stale nor vacuous) and ``stale`` / ``vacuous``
    when so) and ``latent_range``: the range that ``proves`` with the largest eps that stays
    within the realism limit, i.e. the verified operating range a deployer checks inputs against
    (``None`` when nothing along the direction may claim a proof). ``declared`` names without
    tests get an entry with ``proved_eps`` and ``latent_range`` ``None``. ``deploy.in_spec``
    reads this section."""
    recs = sorted(parse_records(list(records)), key=_order)
    out: Dict[str, dict] = {}
    for name in declared or ():
        out.setdefault(str(name), _new_entry())
    proved_eps = largest_proved_eps(recs)
    by_dir: Dict[str, List[TestRecord]] = {}
    for r in recs:
        by_dir.setdefault(r.direction, []).append(r)
    for name, group in by_dir.items():
        entry = out.setdefault(name, _new_entry())
        entry["proved_eps"] = proved_eps[name]
        by_spec = largest_proved_eps(group, key=lambda r: (r.spec_text or r.spec_kind, r.at_least))
        entry["proved"] = [{"spec_text": st, "at_least": q, "eps": e} for (st, q), e in sorted(by_spec.items())
                           if e is not None]
        widest = widest_radius(group)
        if widest is not None:
            entry["certified_radius"] = dict(widest.certified_radius or {}, nodeid=widest.nodeid)
        # until a range is offered (``_place_bases``): the first record's, one with a range first
        entry["_basis"] = record_basis(next((r for r in group if r.latent_range), group[0]))
        for r in group:
            rng = r.latent_range
            _add_validity(entry, r.validity)
            if not rng:
                continue
            about = {"nodeid": r.nodeid, "spec": r.spec_kind, "spec_text": r.spec_text or r.spec_kind,
                     "at_least": r.at_least}
            if r.model_fingerprint:
                about["model"] = r.model_fingerprint
            if r.call is not None:
                about["call"] = r.call
            if r.stale is not None:
                about["stale"] = True
            if r.vacuous is not None:
                about["vacuous"] = r.vacuous
            for p in r.points():
                if not p.sweep:
                    item = {k: rng[k] for k in ("lower", "upper", "mean", "std", "eps", "n_seeds") if k in rng}
                    item.setdefault("eps", r.eps)
                elif "mean" in rng and "std" in rng:  # the range at a sweep radius: mean -+ (eps + std)
                    item = {"lower": [m - p.eps - sd for m, sd in zip(rng["mean"], rng["std"])],
                            "upper": [m + p.eps + sd for m, sd in zip(rng["mean"], rng["std"])],
                            "mean": rng["mean"], "std": rng["std"], "eps": p.eps, "n_seeds": rng.get("n_seeds", 0)}
                else:
                    continue
                item.update(about, verdict=p.verdict, proves=p.claimed == PROVED)
                item["_basis"] = record_basis(r)
                entry["ranges"].append(item)
    for name, entry in out.items():
        entry["ranges"].sort(key=lambda g: (g["eps"], g["nodeid"], g.get("call") or 0))
        limit = entry.get("realism_limit")
        for g in entry["ranges"]:
            if limit is not None and g["eps"] > limit + EPS_TOL:
                g["beyond_realism"] = True
        # a range proved for one model says nothing about another: one operating range per model,
        # and a direction-wide one only when a single model was tested along the direction (with
        # several, the guard asks which: deploy.in_spec(model=...))
        models = models_of(by_dir.get(name, []))
        for key, sub in models.items():
            sub["proved_eps"] = largest_proved_eps(sub.pop("records")).get(name)
            sub["latent_range"] = operating_range([g for g in entry["ranges"] if range_model(g) == key])
        if models:
            entry["models"] = models
        entry["latent_range"] = operating_range(entry["ranges"]) if len(models) <= 1 else None
        _place_bases(entry)
    return dict(sorted(out.items()))


#: the keys that say which coordinates a direction's ranges are in
BASIS_KEYS = ("kind", "k", "axis", "basis")


def record_basis(r: TestRecord) -> dict:
    """The direction a record was tested along, as the sheet stores it: ``kind``, ``k`` and
    ``axis`` or ``basis``, from its ``latent_range`` (the coordinates its range was computed in),
    else from its ``direction_info``."""
    out = {k: v for k, v in (r.direction_info or {}).items() if k in BASIS_KEYS}
    out.update({k: v for k, v in (r.latent_range or {}).items() if k in BASIS_KEYS})
    return out


def same_basis(a: Mapping, b: Mapping) -> bool:
    """Do two stored bases name the same coordinates? ``kind``, ``k`` and ``axis`` equal, and
    ``basis`` equal within 1e-9 where both store one (a side without it cannot be told apart)."""
    if any(a.get(k) != b.get(k) for k in ("kind", "k", "axis")):
        return False
    ba, bb = a.get("basis"), b.get("basis")
    if ba is None or bb is None:
        return True
    try:
        return len(ba) == len(bb) and all(len(ra) == len(rb) and all(abs(float(x) - float(y)) <= 1e-9
                                                                     for x, y in zip(ra, rb))
                                          for ra, rb in zip(ba, bb))
    except (TypeError, ValueError):
        return False


def _place_bases(entry: dict) -> None:
    """The direction's basis is its operating range's (else its first record's), and every range
    whose record was tested along other coordinates (records of one direction *name* can be
    about different axes: unnamed ``Direction.axis(i)`` are all ``"axis"``, two latent spaces
    may name different axes alike) carries its own: ``deploy.in_spec`` reads a range in the
    coordinates it was computed in (``deploy._range_basis``)."""
    first = entry.pop("_basis", None) or {}
    chosen = entry.get("latent_range")
    if chosen is None:
        offered = [sub.get("latent_range") for sub in (entry.get("models") or {}).values() if sub.get("latent_range")]
        chosen = offered[0] if offered else None
    base = chosen["_basis"] if chosen is not None and "_basis" in chosen else first
    for key in BASIS_KEYS:
        if key in base:
            entry[key] = base[key]
    for g in entry["ranges"]:
        own = g.pop("_basis", None)
        if own and not same_basis(own, base):
            g.update({k: own[k] for k in BASIS_KEYS if k in own})


#: the ``models`` key of ranges (and records) without a model fingerprint (plain callables)
NO_FINGERPRINT = "unfingerprinted"


def range_model(item: Mapping) -> str:
    """Which model a range of the directions section is about: its ``model`` fingerprint."""
    return str(item.get("model") or NO_FINGERPRINT)


def models_of(records: Sequence[TestRecord]) -> Dict[str, dict]:
    """The models (by fingerprint) that a direction's records are about, each with the name a
    user may call it by (``records.model_identity``: a record hook's ``model_name``, else the
    fixture or class) and its records. Stale records are left out: they describe an older
    version of a model that ran, and prove nothing."""
    out: Dict[str, dict] = {}
    for r in records:
        if r.stale is not None:
            continue
        sub = out.setdefault(r.model_fingerprint or NO_FINGERPRINT, {"names": [], "records": []})
        sub["records"].append(r)
        ident = model_identity(r)
        if ident and ident.split(":", 1)[-1] not in sub["names"]:
            sub["names"].append(ident.split(":", 1)[-1])
    return dict(sorted(out.items()))


def operating_range(ranges: Iterable[Mapping]) -> Optional[Mapping]:
    """THE deployable-range rule: of ``ranges`` (items of a direction's ``ranges``, of one
    model), the one that ``proves`` with the largest eps, never one beyond where the generator
    stays realistic, nor one that a stale or vacuous record "proved". None when there is none."""
    proved = [g for g in ranges if g.get("proves") and not g.get("beyond_realism")]
    return max(proved, key=lambda g: g["eps"]) if proved else None


def _add_validity(entry: dict, val: Optional[Mapping]) -> None:
    """Fold one test's validity report into its direction's entry: the most conservative
    realism limit over the tests (a saturated search only says "at least eps_max", which bounds
    nothing), and the problems of every check."""
    if not isinstance(val, Mapping) or not isinstance(val.get("realism"), Mapping):
        return
    real = val["realism"]
    if not real.get("saturated") and real.get("eps") is not None:
        cur = entry.get("realism_limit")
        entry["realism_limit"] = float(real["eps"]) if cur is None else min(cur, float(real["eps"]))
    entry["validity"] = {k: val.get(k) for k in ("ok", "eps") if k in val}
    entry["validity"]["problems"] = [p for c in ("continuity", "independence", "realism")
                                     if isinstance(val.get(c), Mapping) for p in val[c].get("problems", [])]
