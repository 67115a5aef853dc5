"""Typed spec-sheet records and the rules read from them, written once.

A *test record* is what one latent test leaves in the spec sheet (``TestRecord``); its JSON
form is the ``$defs/test`` object of ``schema/spec-sheet.schema.json``. Records travel as
JSON dicts (pytest reports, xdist, files) and are parsed here, once, wherever a rule reads
them: the plugin, the CLI, coverage, comparison and the exports all use these classes
instead of ``dict.get`` with defaults.

The rules:

* ``TestRecord.points()``: a record's ``(eps, verdict, counts)`` points, its own and its
  sweep's (the one place sweep points are read);
* ``largest_proved_eps(records, key)``: the largest eps proved per direction (or per any
  key), sweep points included;
* what a record may **claim** (``Point.claimed``, ``TestRecord.claims_proof``): a record
  counts towards a proved eps, an operating range, a direction's coverage status and the
  deployment guard only when it is neither *stale* nor *vacuous*:

  - ``mark_stale(records)`` (applied by ``parse_records``, so by every reader): a record
    carried over from an earlier run is stale when a record of the same model that ran in the
    run that wrote the sheet has another fingerprint (the model was retrained or edited since
    it was proved); a stale mark is kept until this run says otherwise;
  - ``TestRecord.vacuous``: the spec holds whatever the model does (``at_least=0``, no seeds,
    an ``OutputRange`` without bounds, a ``Linear`` whose rows are constants <= 0, ...);
* ``TestRecord.key``: what identifies a record in a sheet (the node id, and the call index when
  one test called ``latent_audit`` more than once);
* ``vocab.verdict_rank`` / ``vocab.is_worse``: the verdict ordering.

Pure Python, no torch or numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..core.errors import LatentAuditError, LatentAuditWarning
from ..core.vocab import OUTCOMES, PROVED, STATUSES, UNPROVEN, VERDICTS

__all__ = ["SheetFormatError", "VacuousSpecWarning", "Counts", "SweepPoint", "CounterexampleRecord", "Point", "TestRecord",
           "PixelCrosscheckRecord", "GuardRecord", "radius_stat", "widest_radius",
           "parse_records", "largest_proved_eps", "spec_kind", "TIMING_FIELDS", "EPS_TOL", "mark_stale",
           "vacuity", "model_identity"]

#: two radii closer than this are the same radius
EPS_TOL = 1e-12
#: fields that differ between two runs of the same test on the same inputs
TIMING_FIELDS = ("seconds",)


class SheetFormatError(LatentAuditError):
    """A file or dict is not a spec sheet (or a record is malformed); the message names where."""


class VacuousSpecWarning(LatentAuditWarning):
    """A latent test's spec holds whatever the model does (``vacuity``): the test passes, but the
    spec sheet counts it towards no operating range."""


# ------------------------------------------------------------------ field checks
def _fail(where: str, msg: str):
    raise SheetFormatError(f"{where}: {msg}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(d: Mapping, key: str, where: str, *, default=None, required=False, lo=None, hi=None,
         allow_none=False, nan_as_none=False) -> Optional[float]:
    """A number field. ``nan_as_none``: for numbers that only describe (a counterexample's
    margin, a failing bound, a time), NaN, like null, means "not known" (hand-edited or older
    sheets; strict JSON writes null). Never used for a field a verdict or range is read from."""
    if nan_as_none and key in d and _is_num(d[key]) and math.isnan(d[key]):
        d = {**d, key: None}
    if key not in d or (d[key] is None and (allow_none or not required)):
        if required and not (allow_none and key in d):
            _fail(where, f"missing {key!r}")
        return default
    v = d[key]
    if not _is_num(v) or math.isnan(v):
        _fail(where, f"{key!r} must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(where, f"{key!r} must lie in [{lo}, {hi}], got {v!r}")
    return float(v)


def _int(d: Mapping, key: str, where: str, *, default=None, required=False, lo=None) -> Optional[int]:
    if key not in d or d[key] is None:
        if required:
            _fail(where, f"missing {key!r}")
        return default
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool):
        _fail(where, f"{key!r} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        _fail(where, f"{key!r} must be >= {lo}, got {v!r}")
    return v


def _str(d: Mapping, key: str, where: str, *, default=None, required=False, choices=None) -> Optional[str]:
    if key not in d or d[key] is None:
        if required:
            _fail(where, f"missing {key!r}")
        return default
    v = d[key]
    if not isinstance(v, str):
        _fail(where, f"{key!r} must be a string, got {v!r}")
    if choices is not None and v not in choices:
        _fail(where, f"{key!r} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _obj(d: Mapping, key: str, where: str) -> Optional[dict]:
    v = d.get(key) if isinstance(d, Mapping) else None
    if v is None:
        return None
    if not isinstance(v, Mapping):
        _fail(where, f"{key!r} must be an object, got {type(v).__name__}")
    return dict(v)


def _list(d: Mapping, key: str, where: str) -> list:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        _fail(where, f"{key!r} must be a list, got {type(v).__name__}")
    return list(v)


def _mapping(d, where: str) -> Mapping:
    if not isinstance(d, Mapping):
        _fail(where, f"must be an object, got {type(d).__name__}")
    return d


def _extra(d: Mapping, cls) -> dict:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k not in known}


def _numbers(v, where: str, key: str) -> List[float]:
    if not isinstance(v, (list, tuple)) or not all(_is_num(x) and math.isfinite(x) for x in v):
        _fail(where, f"{key!r} must be a list of finite numbers")
    return [float(x) for x in v]


def _latent_range(d: Mapping, where: str) -> Optional[dict]:
    """A test's deployment range (``deploy.latent_ranges(..., with_basis=True)``), checked: the
    range guard (``deploy.in_spec``) reads ``lower``/``upper`` and the basis keys ``kind``,
    ``k``, ``axis`` / ``basis`` from it, so they must agree with each other."""
    rng = _obj(d, "latent_range", where)
    if rng is None:
        return None
    where = f"{where}.latent_range"
    for key in ("lower", "upper"):
        if key not in rng:
            _fail(where, f"missing {key!r}")
    k = len(_numbers(rng["lower"], where, "lower"))
    for key in ("upper", "mean", "std"):
        if key in rng and len(_numbers(rng[key], where, key)) != k:
            _fail(where, f"{key!r} has {len(rng[key])} coordinate(s), 'lower' has {k}")
    kind = _str(rng, "kind", where, choices=("axis", "vector", "subspace"))
    if _int(rng, "k", where, lo=1, default=k) != k:
        _fail(where, f"'k' is {rng['k']} but the range has {k} coordinate(s)")
    _int(rng, "axis", where, lo=0)
    if kind == "axis" and "axis" not in rng:
        _fail(where, "an axis direction needs 'axis'")
    if rng.get("basis") is not None:
        rows = rng["basis"]
        if not isinstance(rows, list) or not rows:
            _fail(where, "'basis' must be a [d][k] list of rows")
        for row in rows:
            if len(_numbers(row, where, "basis")) != k:
                _fail(where, f"'basis' rows must have k={k} entries")
    return rng


# ------------------------------------------------------------------ parts of a record
@dataclass
class Counts:
    verified: int = 0
    falsified: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.verified + self.falsified + self.unknown

    def to_json(self) -> dict:
        return {"verified": self.verified, "falsified": self.falsified, "unknown": self.unknown}

    @classmethod
    def from_json(cls, d, where: str) -> "Counts":
        d = _mapping(d, where)
        vals = {k: _int(d, k, where, required=True, lo=0) for k in STATUSES}
        return cls(**vals)  # type: ignore[arg-type]


@dataclass
class SweepPoint:
    """The audit of the same test at another radius (recorded for the curve, never pass/fail)."""

    eps: float
    verdict: str
    counts: Counts
    verified_fraction: float
    evidence: Optional[str] = None
    estimate: Optional[dict] = None
    segment: Optional[dict] = None
    seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"eps": self.eps, "verdict": self.verdict, "evidence": self.evidence, "counts": self.counts.to_json(),
               "verified_fraction": self.verified_fraction}
        for key in ("estimate", "segment", "seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.evidence is None:
            del out["evidence"]
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d, where: str) -> "SweepPoint":
        d = _mapping(d, where)
        counts = Counts.from_json(d["counts"], f"{where}.counts") if d.get("counts") is not None else Counts()
        n = counts.total
        return cls(eps=_num(d, "eps", where, required=True, lo=0), verdict=_str(d, "verdict", where, required=True,
                                                                                choices=VERDICTS),
                   counts=counts,
                   verified_fraction=_num(d, "verified_fraction", where, lo=0, hi=1,
                                          default=(counts.verified / n if n else 1.0)),
                   evidence=_str(d, "evidence", where), estimate=_obj(d, "estimate", where),
                   segment=_obj(d, "segment", where), seconds=_num(d, "seconds", where, lo=0, nan_as_none=True),
                   extra=_extra(d, cls))


@dataclass
class CounterexampleRecord:
    seed_index: int
    offset: List[float]
    #: how far the spec is violated at the point (> 0); None when not known (NaN/null in a sheet)
    margin: Optional[float]
    offset_eps: List[float] = field(default_factory=list)
    predicted: Optional[int] = None
    expected: Optional[int] = None
    #: PNG strip (nominal decoding ... counterexample), relative to the sheet's folder
    image: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"seed_index": self.seed_index, "offset": self.offset, "offset_eps": self.offset_eps,
               "predicted": self.predicted, "expected": self.expected, "margin": self.margin}
        if self.image is not None:
            out["image"] = self.image
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d, where: str) -> "CounterexampleRecord":
        d = _mapping(d, where)
        offset = _list(d, "offset", where)
        if not all(_is_num(v) for v in offset):
            _fail(where, "'offset' must be a list of numbers")
        return cls(seed_index=_int(d, "seed_index", where, required=True, lo=0), offset=[float(v) for v in offset],
                   margin=_num(d, "margin", where, required=True, allow_none=True, nan_as_none=True),
                   offset_eps=[float(v) for v in _list(d, "offset_eps", where)],
                   predicted=_int(d, "predicted", where), expected=_int(d, "expected", where),
                   image=_str(d, "image", where), extra=_extra(d, cls))


@dataclass
class PixelCrosscheckRecord:
    """``guard.pixel_crosscheck(...).to_dict()`` as a record (AuditAI section 4.5): how many of
    the latent-proved seeds a pixel-space attack within ``eps`` (L-inf) still breaks. It
    describes the proof's reach; it never changes a verdict. ``$defs/pixel_crosscheck``."""

    eps: float
    n_proved: int
    n_attackable: int
    fraction_attackable: Optional[float]
    attack: str = "pgd"
    norm: str = "linf"
    n_seeds: Optional[int] = None
    n_attackable_at_nominal: Optional[int] = None
    direction: Optional[str] = None
    latent_eps: Optional[float] = None
    nodeid: Optional[str] = None
    counterexamples: List[dict] = field(default_factory=list)
    #: steps, step_size, restarts, seed, clip, label_source, ...
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: Dict[str, Any] = {"kind": "pixel_crosscheck", "attack": self.attack, "norm": self.norm, "eps": self.eps}
        out.update(self.extra)
        out.update({"n_proved": self.n_proved, "n_attackable": self.n_attackable,
                    "fraction_attackable": self.fraction_attackable})
        for key in ("n_seeds", "n_attackable_at_nominal", "direction", "latent_eps", "nodeid"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["counterexamples"] = [dict(c) for c in self.counterexamples]
        return out

    @classmethod
    def from_json(cls, d, where: str) -> "PixelCrosscheckRecord":
        d = _mapping(getattr(d, "to_dict", lambda: d)(), where)  # a guard.PixelCheck passes as it is
        _str(d, "kind", where, choices=("pixel_crosscheck",))
        n_proved = _int(d, "n_proved", where, required=True, lo=0)
        n_att = _int(d, "n_attackable", where, required=True, lo=0)
        if n_att > n_proved:  # type: ignore[operator]
            _fail(where, f"'n_attackable' ({n_att}) exceeds 'n_proved' ({n_proved})")
        cxs = _list(d, "counterexamples", where)
        if not all(isinstance(c, Mapping) for c in cxs):
            _fail(where, "'counterexamples' must be a list of objects")
        return cls(eps=_num(d, "eps", where, required=True, lo=0), n_proved=n_proved, n_attackable=n_att,
                   fraction_attackable=_num(d, "fraction_attackable", where, lo=0, hi=1, allow_none=True),
                   attack=_str(d, "attack", where, default="pgd"), norm=_str(d, "norm", where, default="linf"),
                   n_seeds=_int(d, "n_seeds", where, lo=0),
                   n_attackable_at_nominal=_int(d, "n_attackable_at_nominal", where, lo=0),
                   direction=_str(d, "direction", where), latent_eps=_num(d, "latent_eps", where, lo=0),
                   nodeid=_str(d, "nodeid", where), counterexamples=[dict(c) for c in cxs],
                   extra={k: v for k, v in _extra(d, cls).items() if k != "kind"})


@dataclass
class GuardRecord:
    """The sheet's top-level ``guard`` entry (``guard.DeepValidationGuard.sheet_entry``): the
    Deep Validation guard stored beside the sheet. ``$defs/guard``."""

    threshold: float
    layers: List[dict]
    classes: List[Any]
    kind: str = "deep_validation"
    #: the guard's JSON beside the sheet (relative to the sheet's folder)
    path: Optional[str] = None
    #: format, format_version, target_false_alarm, held_out_false_alarm, n_held_out, sha256, ...
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: Dict[str, Any] = {"kind": self.kind, "threshold": self.threshold, "layers": [dict(L) for L in self.layers],
                               "classes": list(self.classes)}
        out.update(self.extra)
        if self.path is not None:
            out["path"] = self.path
        return out

    @classmethod
    def from_json(cls, d, where: str) -> "GuardRecord":
        d = _mapping(getattr(d, "sheet_entry", lambda: d)(), where)  # a DeepValidationGuard passes as it is
        layers = _list(d, "layers", where)
        for i, L in enumerate(layers):
            L = _mapping(L, f"{where}.layers[{i}]")
            _str(L, "name", f"{where}.layers[{i}]", required=True)
            _int(L, "width", f"{where}.layers[{i}]", lo=1)
        return cls(threshold=_num(d, "threshold", where, required=True), layers=[dict(L) for L in layers],
                   classes=_list(d, "classes", where), kind=_str(d, "kind", where, default="deep_validation"),
                   path=_str(d, "path", where), extra=_extra(d, cls))


@dataclass(frozen=True)
class Point:
    """One radius of a record: its own (``sweep=False``) or a sweep point."""

    eps: float
    verdict: str
    counts: Counts
    verified_fraction: float
    n_seeds: int
    sweep: bool
    evidence: Optional[str] = None
    estimate: Optional[dict] = None
    #: the verdict as it counts for what the sheet claims (``TestRecord.claimed``): ``unproven``
    #: for a stale record, and for a vacuous one that is proved; else the verdict
    claimed: Optional[str] = None


def spec_kind(spec: Optional[Mapping], spec_text: Optional[str] = None) -> str:
    """The spec's kind (``accuracy``, ``invariance``, ...): how specs are grouped in coverage,
    comparison and exports."""
    if isinstance(spec, Mapping) and spec.get("kind"):
        return str(spec["kind"])
    return str(spec_text or "spec")


# ------------------------------------------------------------------ the record
@dataclass
class TestRecord:
    """One latent test's entry in the spec sheet (see docs/spec-sheet.md for every field)."""

    __test__ = False  # not a pytest test class

    nodeid: str
    direction: str
    eps: float
    verdict: str
    counts: Counts = field(default_factory=Counts)
    n_seeds: int = 0
    verified_fraction: float = 1.0
    at_least: float = 1.0
    spec: Optional[dict] = None
    spec_text: Optional[str] = None
    direction_info: Optional[dict] = None
    evidence: Optional[str] = None
    engine: Optional[str] = None
    rungs: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    budget: Optional[float] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    seed: Optional[int] = None
    model_fingerprint: Optional[str] = None
    failing_bound: Optional[float] = None
    counterexamples: List[CounterexampleRecord] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    segment: Optional[dict] = None
    estimate: Optional[dict] = None
    declared_directions: List[str] = field(default_factory=list)
    # -- deployment and direction checks (absent when not computed)
    latent_range: Optional[dict] = None
    data_fingerprint: Optional[str] = None
    validity: Optional[dict] = None
    # -- extra radii
    sweep: List[SweepPoint] = field(default_factory=list)
    certified_radius: Optional[dict] = None
    #: the pixel-space cross-check of this test's proved seeds (``guard.pixel_crosscheck``,
    #: added by a ``pytest_latentaudit_record`` hook or the caller); describes, never decides
    pixel_crosscheck: Optional[PixelCrosscheckRecord] = None
    # -- how the run went
    #: what the shared budget cut short (``"sweep eps=0.5"``, ``"certified radius"``, ...)
    cut_short: List[str] = field(default_factory=list)
    #: set when the test was stopped before its audit finished (pytest-timeout, Ctrl-C)
    interrupted: Optional[dict] = None
    outcome: Optional[str] = None
    #: how many times the test ran in its session (pytest-rerunfailures); the last attempt wins
    attempts: Optional[int] = None
    #: this test did not run in the session that wrote the sheet: the record is the earlier
    #: sheet's, kept so a subset run does not shrink the sheet (``{"from": created}``)
    carried_over: Optional[dict] = None
    #: which model this is across retraining (the fixture that gave it, ``fixture:head``, or its
    #: class): a carried-over record is stale when a re-run record of the same model has another
    #: fingerprint. A ``model_name`` field (set by a record hook) takes precedence.
    model_key: Optional[str] = None
    #: the call index (1, 2, ...) when the test called ``latent_audit`` more than once
    call: Optional[int] = None
    #: set on a carried-over record whose model has changed since it was proved (``mark_stale``):
    #: ``{"model_fingerprint": <the model's fingerprint now>, "reason": ...}``
    stale: Optional[dict] = None
    #: fields added by ``pytest_latentaudit_record`` hooks (and by newer versions)
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.pixel_crosscheck is not None and not isinstance(self.pixel_crosscheck, PixelCrosscheckRecord):
            # a guard.PixelCheck or its to_dict(): checked like a sheet's
            self.pixel_crosscheck = PixelCrosscheckRecord.from_json(self.pixel_crosscheck, "pixel_crosscheck")

    # ---------------------------------------------------------------- rules
    @property
    def spec_kind(self) -> str:
        return spec_kind(self.spec, self.spec_text)

    @property
    def ran(self) -> bool:
        """False for a record carried over from an earlier sheet."""
        return self.carried_over is None

    @property
    def key(self) -> str:
        """The record's key in a sheet: the node id, with `` (call N)`` when the test called
        ``latent_audit`` more than once (each call has its own record)."""
        return self.nodeid if self.call is None else f"{self.nodeid} (call {self.call})"

    @property
    def vacuous(self) -> Optional[str]:
        """Why the spec holds whatever the model does (``vacuity``), or None."""
        return vacuity(self)

    @property
    def claims_proof(self) -> bool:
        """Whether this record's proved points count towards a proved eps, an operating range
        and the deployment guard: neither stale nor vacuous."""
        return self.stale is None and self.vacuous is None

    def claimed(self, verdict: Optional[str] = None) -> str:
        """``verdict`` (default: the record's) as it counts for what the sheet claims about the
        current model: ``unproven`` when the record is stale (it says nothing about the model as
        it is now) or when a vacuous spec is proved (it proves nothing); else the verdict."""
        v = self.verdict if verdict is None else verdict
        if self.stale is not None or (self.vacuous is not None and v == PROVED):
            return UNPROVEN
        return v

    def points(self) -> List[Point]:
        """This record's radii: its own point, then its sweep's other radii (the record's own
        point wins at its eps), sorted by eps. The one reader of sweep points."""
        own = Point(self.eps, self.verdict, self.counts, self.verified_fraction, self.n_seeds, False, self.evidence,
                    self.estimate, self.claimed())
        pts = [own]
        for p in self.sweep:
            if abs(p.eps - self.eps) <= EPS_TOL:
                continue
            pts.append(Point(p.eps, p.verdict, p.counts, p.verified_fraction, self.n_seeds, True, p.evidence,
                             p.estimate, self.claimed(p.verdict)))
        return sorted(pts, key=lambda p: p.eps)

    # ---------------------------------------------------------------- JSON
    _OPTIONAL = ("latent_range", "data_fingerprint", "validity", "certified_radius", "interrupted", "outcome",
                 "attempts", "carried_over", "model_key", "call", "stale")
    #: written for readers, recomputed on load (never read back)
    _DERIVED = ("vacuous",)

    def to_json(self) -> dict:
        out: Dict[str, Any] = {
            "nodeid": self.nodeid, "direction": self.direction, "direction_info": self.direction_info,
            "eps": self.eps, "spec": self.spec if self.spec is not None else {"kind": self.spec_kind},
            "spec_text": self.spec_text if self.spec_text is not None else self.spec_kind,
            "verdict": self.verdict, "evidence": self.evidence or self.verdict, "n_seeds": self.n_seeds,
            "counts": self.counts.to_json(), "verified_fraction": self.verified_fraction, "at_least": self.at_least,
            "engine": self.engine, "rungs": dict(self.rungs), "seconds": self.seconds, "budget": self.budget,
            "device": self.device, "precision": self.precision, "seed": self.seed,
            "model_fingerprint": self.model_fingerprint, "failing_bound": self.failing_bound,
            "counterexamples": [c.to_json() for c in self.counterexamples], "notes": list(self.notes),
            "segment": self.segment, "estimate": self.estimate, "declared_directions": list(self.declared_directions),
        }
        for key in ("engine", "device", "precision", "seed"):
            if out[key] is None:
                del out[key]
        if self.sweep:
            out["sweep"] = [p.to_json() for p in self.sweep]
        if self.cut_short:
            out["cut_short"] = list(self.cut_short)
        for key in self._OPTIONAL:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pixel_crosscheck is not None:
            out["pixel_crosscheck"] = self.pixel_crosscheck.to_json()
        vac = self.vacuous
        if vac is not None:
            out["vacuous"] = vac
        out.update(self.extra)
        return out

    def comparable(self) -> dict:
        """The JSON form without what differs between two runs of the same test on the same
        inputs (timing, where pictures were written, how it was collected): what shard merging
        and run-to-run identity compare."""
        d = self.to_json()
        for key in TIMING_FIELDS + ("outcome", "attempts", "carried_over", "stale"):
            d.pop(key, None)
        for p in d.get("sweep") or []:
            for key in TIMING_FIELDS:
                p.pop(key, None)
        for c in d.get("counterexamples") or []:
            c.pop("image", None)
        return d

    @classmethod
    def from_json(cls, d, where: str = "record") -> "TestRecord":
        """Parse (and check) a record's JSON form; ``SheetFormatError`` names the bad field."""
        d = _mapping(d, where)
        counts = Counts.from_json(d["counts"], f"{where}.counts") if d.get("counts") is not None else Counts()
        n = _int(d, "n_seeds", where, lo=0, default=counts.total)
        spec = _obj(d, "spec", where)
        if spec is not None and spec.get("kind") is not None and not isinstance(spec["kind"], str):
            _fail(f"{where}.spec", "'kind' must be a string")
        direction = d.get("direction")
        if direction is None:
            _fail(where, "missing 'direction'")
        if not isinstance(direction, (str, int)) or isinstance(direction, bool):
            _fail(where, f"'direction' must be a string, got {direction!r}")
        rungs = _obj(d, "rungs", where) or {}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in rungs.values()):
            _fail(where, "'rungs' must map rung names to integers")
        at_least_default = float(spec["at_least"]) if spec and _is_num(spec.get("at_least")) else 1.0
        try:
            sweep = [SweepPoint.from_json(p, f"{where}.sweep[{i}]") for i, p in enumerate(_list(d, "sweep", where))]
            cexs = [CounterexampleRecord.from_json(c, f"{where}.counterexamples[{i}]")
                    for i, c in enumerate(_list(d, "counterexamples", where))]
        except (KeyError, TypeError) as exc:  # pragma: no cover - the checks above name the field
            raise SheetFormatError(f"{where}: malformed ({exc})") from None
        pixel = d.get("pixel_crosscheck")
        pixel = None if pixel is None else PixelCrosscheckRecord.from_json(pixel, f"{where}.pixel_crosscheck")
        notes = _list(d, "notes", where)
        declared = _list(d, "declared_directions", where)
        cut = _list(d, "cut_short", where)
        return cls(
            nodeid=_str(d, "nodeid", where, required=True), direction=str(direction),
            eps=_num(d, "eps", where, required=True, lo=0), verdict=_str(d, "verdict", where, required=True,
                                                                         choices=VERDICTS),
            counts=counts, n_seeds=n,
            verified_fraction=_num(d, "verified_fraction", where, lo=0, hi=1,
                                   default=(counts.verified / n if n else 1.0)),
            at_least=_num(d, "at_least", where, lo=0, hi=1, default=at_least_default),
            spec=spec, spec_text=_str(d, "spec_text", where), direction_info=_obj(d, "direction_info", where),
            evidence=_str(d, "evidence", where), engine=_str(d, "engine", where), rungs=dict(rungs),
            seconds=_num(d, "seconds", where, lo=0, default=0.0, nan_as_none=True),
            budget=_num(d, "budget", where, allow_none=True),
            device=_str(d, "device", where), precision=_str(d, "precision", where), seed=_int(d, "seed", where),
            model_fingerprint=_str(d, "model_fingerprint", where),
            failing_bound=_num(d, "failing_bound", where, allow_none=True, nan_as_none=True),
            counterexamples=cexs, notes=[str(x) for x in notes], segment=_obj(d, "segment", where),
            estimate=_obj(d, "estimate", where), declared_directions=[str(x) for x in declared],
            latent_range=_latent_range(d, where), data_fingerprint=d.get("data_fingerprint"),
            validity=_obj(d, "validity", where), sweep=sweep, certified_radius=_obj(d, "certified_radius", where),
            cut_short=[str(x) for x in cut], interrupted=_obj(d, "interrupted", where),
            outcome=_str(d, "outcome", where, choices=OUTCOMES), attempts=_int(d, "attempts", where, lo=1),
            carried_over=_obj(d, "carried_over", where), pixel_crosscheck=pixel,
            model_key=_str(d, "model_key", where), call=_int(d, "call", where, lo=1), stale=_stale(d, where),
            extra={k: v for k, v in _extra(d, cls).items() if k not in cls._DERIVED},
        )


def _stale(d: Mapping, where: str) -> Optional[dict]:
    st = _obj(d, "stale", where)
    if st is not None:
        _str(st, "model_fingerprint", f"{where}.stale")
        _str(st, "reason", f"{where}.stale")
    return st


# ------------------------------------------------------------------ what a record may claim
def _all_zero(rows) -> bool:
    try:
        return all(float(v) == 0.0 for row in rows for v in (row if isinstance(row, (list, tuple)) else [row]))
    except (TypeError, ValueError):
        return False


def _flat(v) -> list:
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _flat(item)]
    return [v]


def vacuity(rec: "TestRecord") -> Optional[str]:
    """Why ``rec``'s spec holds whatever the model does (so a proof of it proves no operating
    range), or None. Read from the record's JSON alone (the spec's ``to_json``), so it applies to
    any sheet: ``at_least`` 0 (a fraction of seeds >= 0 always holds); an
    ``OutputRange`` with neither bound finite; a ``Linear`` spec with no rows, or whose rows
    ``C y + d`` are constants (``C`` zero) that are <= 0; ``PredictionNotIn([])``."""
    # (no seeds would be vacuous too, but the audit refuses them: a record without seed counts is
    # a hand-written or minimal one, not a vacuous test)
    if rec.at_least <= 0:
        return f"at_least={rec.at_least:g}: a fraction of seeds >= 0 holds whatever the model does"
    spec = rec.spec if isinstance(rec.spec, Mapping) else {}
    kind = spec.get("kind")
    if kind == "output_range" and ("lower" in spec or "upper" in spec):
        bounds = [b for key in ("lower", "upper") for b in _flat(spec.get(key))]
        if all(not (_is_num(b) and math.isfinite(b)) for b in bounds):
            return "OutputRange without a finite bound: every output is in range"
    if kind == "linear" and "C" in spec and "d" in spec:
        C, d = spec.get("C"), _flat(spec.get("d"))
        if isinstance(C, list) and (not C or _all_zero(C)) and all(_is_num(v) and v <= 0 for v in d):
            return "Linear spec whose rows C y + d are constants <= 0: it holds for every output"
    if kind == "prediction_not_in" and isinstance(spec.get("classes"), list) and not spec["classes"]:
        return "PredictionNotIn([]): no class is excluded"
    return None


def model_identity(rec: "TestRecord") -> Optional[str]:
    """Which model ``rec`` is about, across retraining: a ``model_name`` field (a record hook's,
    the name the HTML report shows), else ``model_key`` (the plugin's: the fixture that gave the
    model, or its class); None for records written before either existed."""
    name = rec.extra.get("model_name")
    if isinstance(name, str) and name:
        return "name:" + name
    return rec.model_key


def mark_stale(records: Sequence["TestRecord"]) -> List["TestRecord"]:
    """THE staleness rule (in place; returns ``records``). A record that ran in the run that
    wrote the sheet is never stale. A carried-over record with a fingerprint is stale when
    records of the same model (``model_identity``) ran and none of them has its fingerprint:
    that model was retrained or edited since, and the record describes it as it was. When no
    record of its model ran, the earlier judgement (its ``stale`` mark, or none) stands.
    A record with no model identity (older sheets) counts as the same model as every record
    that ran: the conservative reading. Records without a fingerprint (plain callables) can
    never be shown to be stale."""
    current: Dict[Optional[str], set] = {}
    every: set = set()
    for r in records:
        if r.ran:
            r.stale = None
            if r.model_fingerprint:
                current.setdefault(model_identity(r), set()).add(r.model_fingerprint)
                every.add(r.model_fingerprint)
    for r in records:
        if r.ran or not r.model_fingerprint:
            continue
        ident = model_identity(r)
        now = every if ident is None else current.get(ident)
        if not now:
            continue  # no evidence in this run: keep what an earlier run decided
        if r.model_fingerprint in now:
            r.stale = None
            continue
        fp = sorted(now)[0]
        what = "the model" if ident is None else f"the model ({ident.split(':', 1)[-1]})"
        r.stale = {"model_fingerprint": fp,
                   "reason": f"proved for an older model ({r.model_fingerprint}); {what} now has fingerprint {fp} "
                             f"in the tests that ran: re-run this test"}
        if len(now) > 1:
            r.stale["model_fingerprints"] = sorted(now)
    return list(records)


def parse_records(items: Iterable, where: str = "tests") -> List[TestRecord]:
    """``TestRecord`` objects from JSON dicts (records already parsed pass through), with the
    staleness rule (``mark_stale``) applied over them: every reader of a sheet goes through it."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise SheetFormatError(f"{where}: must be a list of test records, got {type(items).__name__}")
    recs = [r if isinstance(r, TestRecord) else TestRecord.from_json(r, f"{where}[{i}]")
            for i, r in enumerate(items)]
    return mark_stale(recs)


def largest_proved_eps(records: Iterable[TestRecord],
                       key: Callable[[TestRecord], Hashable] = lambda r: r.direction) -> Dict[Any, Optional[float]]:
    """Per ``key`` (default: the direction), the largest eps at which a test *or a point of its
    sweep* is proved and may claim it (``Point.claimed``: not stale, not vacuous); None where
    nothing is. ``latentaudit show``, coverage (and through it the HTML report), the directions
    section (the deployment guard) and the comparison of two sheets all call this."""
    out: Dict[Any, Optional[float]] = {}
    for r in records:
        k = key(r)
        best = out.get(k)
        for p in r.points():
            if p.claimed == PROVED and (best is None or p.eps > best):
                best = p.eps
        out[k] = best
    return out


# ------------------------------------------------------------------ certified-radius summaries
def radius_stat(cr: Optional[Mapping]) -> Tuple[Optional[str], Optional[float]]:
    """The number a certified-radius summary (``deploy.certified_radius_summary``) is read by:
    ``("median", q["median"])`` (older sheets: ``p50``), else ``("mean", mean)``; ``(None, None)``
    when it has neither. Comparison, the report and the exports read a radius through this."""
    if not isinstance(cr, Mapping):
        return None, None
    q = cr.get("quantiles") if isinstance(cr.get("quantiles"), Mapping) else {}
    for key in ("median", "p50"):
        if _finite_num(q.get(key)):
            return "median", float(q[key])
    if _finite_num(cr.get("mean")):
        return "mean", float(cr["mean"])
    return None, None


def _finite_num(v) -> bool:
    return _is_num(v) and math.isfinite(v)


def widest_radius(records: Iterable[TestRecord]) -> Optional[TestRecord]:
    """The record whose certified-radius search represents a group of tests (a direction, a
    spec kind): the widest search (largest ``eps_max``), then a proved one, then the first by
    node id. None when no record searched (stale records do not count: ``mark_stale``)."""
    best, best_key = None, None
    for r in sorted(records, key=lambda r: r.key):
        cr = r.certified_radius
        if not cr or r.stale is not None:  # a stale record's radii are the old model's
            continue
        cap = cr.get("eps_max")
        key = (float(cap) if _finite_num(cap) else 0.0, r.verdict == PROVED)
        if best_key is None or key > best_key:
            best, best_key = r, key
    return best
