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
* ``merge_sheets([...])``: the sheets of CI shards joined into one, with conflicts reported.
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

from .records import (EPS_TOL, GuardRecord, PixelCrosscheckRecord, SheetFormatError, TestRecord, largest_proved_eps,
                      parse_records, widest_radius)
from ..core.vocab import PROVED, VERDICTS

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
        if r.nodeid in seen:
            raise SheetFormatError(f"{source}: tests[{i}]: node id {r.nodeid!r} already recorded at "
                                   f"tests[{seen[r.nodeid]}]")
        seen[r.nodeid] = i
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
        recs = sorted(parse_records(list(records)), key=lambda r: r.nodeid)
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
        direction); rebuilt from the records by ``directions_section`` when the sheet has none.
        ``deploy.in_spec``, the exports and ``latentaudit show`` read it through this."""
        dirs = self.data.get("directions")
        if isinstance(dirs, Mapping) and dirs:
            return dict(dirs)
        return directions_section(self.records)

    def directions(self) -> Dict[str, dict]:
        """Per direction: the largest eps proved (by a test or a sweep point), and the verdicts seen."""
        out: Dict[str, dict] = {}
        proved = largest_proved_eps(self.records)
        for t in self.records:
            d = out.setdefault(t.direction, {"proved_eps": proved[t.direction], "tests": 0, "verdicts": {}})
            d["tests"] += 1
            d["verdicts"][t.verdict] = d["verdicts"].get(t.verdict, 0) + 1
        return out


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
    (``{"from": <the earlier sheet's created>}``, the original date kept on later carries)."""
    ran_ids = set(ran_ids) | {r.nodeid for r in ran}
    out = list(ran)
    for r in earlier:
        if r.nodeid in ran_ids or not keep(r):
            continue
        if r.carried_over is None:
            r.carried_over = {"from": earlier_created}
        out.append(r)
    return sorted(out, key=lambda r: r.nodeid)


@dataclass
class MergeResult:
    records: List[TestRecord]
    conflicts: List[str] = field(default_factory=list)
    #: node id -> the name of the sheet its record came from
    sources: Dict[str, str] = field(default_factory=dict)


def merge_sheets(sheets: Sequence[SpecSheet], names: Sequence[str], *, prefer: str = "fail") -> MergeResult:
    """Join the records of several sheets (CI shards). A test recorded by two sheets is a
    *conflict* when the records differ in anything but timing (``TestRecord.comparable``) and
    both ran; a record that ran beats a carried-over one. ``prefer``: ``"fail"`` (report, keep
    the first), ``"first"`` or ``"last"``. Differences in ``settings`` or ``tool.version`` are
    conflicts too."""
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
            if r.nodeid not in chosen:
                chosen[r.nodeid] = (r, name)
                continue
            prev, prev_name = chosen[r.nodeid]
            if prev.ran != r.ran:
                if r.ran:
                    chosen[r.nodeid] = (r, name)
                continue
            if prev.comparable() == r.comparable():
                continue
            if prev.ran:  # both ran and disagree
                what = _difference(prev.comparable(), r.comparable())
                out.conflicts.append(f"{r.nodeid}: recorded by {prev_name} and {name} with different {what}")
            if prefer == "last" or (not prev.ran and not r.ran):
                chosen[r.nodeid] = (r, name)
    out.records = sorted((r for r, _ in chosen.values()), key=lambda r: r.nodeid)
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
    ``direction_info``), ``proved_eps`` (``records.largest_proved_eps``: a test or a sweep point),
    ``certified_radius`` (``records.widest_radius``: the summary of the test that searched the
    widest radius, with its ``nodeid``), ``ranges`` (every test's range and the range at each of
    its sweep radii, ``mean -+ (eps + std)``, with ``eps``, ``nodeid`` and ``verdict``) and
    ``latent_range``: the proved range with the largest eps that stays within the realism limit,
    i.e. the verified operating range a deployer checks inputs against (``None`` when nothing
    along the direction is proved). ``declared`` names without tests get an entry with
    ``proved_eps`` and ``latent_range`` ``None``. ``deploy.in_spec`` reads this section."""
    recs = sorted(parse_records(list(records)), key=lambda r: r.nodeid)
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
        widest = widest_radius(group)
        if widest is not None:
            entry["certified_radius"] = dict(widest.certified_radius or {}, nodeid=widest.nodeid)
        for r in group:
            rng = r.latent_range
            for src in (r.direction_info or {}, rng or {}):
                for key in ("kind", "k", "axis", "basis"):
                    if key in src and key not in entry:
                        entry[key] = src[key]
            _add_validity(entry, r.validity)
            if rng:
                item = {k: rng[k] for k in ("lower", "upper", "mean", "std", "eps", "n_seeds") if k in rng}
                item.setdefault("eps", r.eps)
                item["nodeid"], item["verdict"] = r.nodeid, r.verdict
                entry["ranges"].append(item)
                if "mean" in rng and "std" in rng:  # the range at a sweep radius: mean -+ (eps + std)
                    for p in r.points():
                        if not p.sweep:
                            continue
                        entry["ranges"].append({
                            "lower": [m - p.eps - sd for m, sd in zip(rng["mean"], rng["std"])],
                            "upper": [m + p.eps + sd for m, sd in zip(rng["mean"], rng["std"])],
                            "mean": rng["mean"], "std": rng["std"], "eps": p.eps, "n_seeds": rng.get("n_seeds", 0),
                            "nodeid": r.nodeid, "verdict": p.verdict})
    for entry in out.values():
        entry["ranges"].sort(key=lambda g: (g["eps"], g["nodeid"]))
        limit = entry.get("realism_limit")
        for g in entry["ranges"]:
            if limit is not None and g["eps"] > limit + EPS_TOL:
                g["beyond_realism"] = True
        # never offer a deployer a range that goes beyond where the generator stays realistic
        proved = [g for g in entry["ranges"] if g["verdict"] == PROVED and not g.get("beyond_realism")]
        entry["latent_range"] = max(proved, key=lambda g: g["eps"]) if proved else None
    return dict(sorted(out.items()))


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
