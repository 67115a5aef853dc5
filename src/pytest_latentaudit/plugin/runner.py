"""One latent test, run by ``TestRunner``.

* ``TestRunner``: one latent test. Checks the marker, then runs the audit, the direction's
  validity checks, the radius sweep and the certified-radius search on **one** budget
  (``--latent-budget`` seconds per latent test; see ``Budget``), with the same engine,
  falsifier, attack and replayed counterexamples for every audit, and builds the test's
  ``records.TestRecord`` (saving counterexample pictures, where a failure is a warning).

Importing this module imports neither torch nor numpy.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import math
import os
import re
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..core.errors import CacheWarning, CounterexampleImageWarning
from ..core.latent import direction_label
from .options import MARKER_KEYWORDS, Settings
from ..sheet.records import CounterexampleRecord, Counts, SweepPoint, TestRecord
from ..core.vocab import ATTACKS, EXACT, LIRPA_PREFIX, NO_RADIUS_ENGINES, PROVED, UNKNOWN, UNPROVEN

if TYPE_CHECKING:  # the session imports this module
    from .session import LatentSession

MAX_COUNTEREXAMPLES = 20
MAX_IMAGES = 5
CACHE_PREFIX = "latentaudit/counterexamples/"

# ------------------------------------------------------------------ the budget split
#: the audit's share of the budget when extras (validity, sweep, radius) are requested; what
#: the audit leaves unused goes to the extras
AUDIT_SHARE = 0.6
#: the sweep's share of what the audit left when a radius search follows
SWEEP_SHARE = 0.6
#: kept back for building the record and saving pictures
RESERVE_SHARE, RESERVE_MAX_S = 0.04, 0.25
#: with pytest-timeout, the budget is at most this fraction of the time the timeout leaves
TIMEOUT_SHARE = 0.8
#: seeds in the certified-radius search's first batch, which measures its cost per seed
RADIUS_PROBE = 2
#: how far past its grant an engine call is assumed to run until measured, and the most it is
#: believed (a larger overrun is the engine's fault, not a reason to starve later calls)
OVERRUN_DEFAULT, OVERRUN_MAX = 1.5, 3.0
#: the validity checks cannot be interrupted: until their cost is known (from an earlier run in
#: this process) they start only with this share of the budget, and at least this many seconds,
#: left (they run once per latent space, direction and eps)
VALIDITY_START_SHARE, VALIDITY_START_MIN_S = 0.5, 5.0


def derive_seed(global_seed: int, nodeid: str) -> int:
    """Per-test seed: stable across runs and workers, different per test."""
    return (int(global_seed) * 1_000_003 + zlib.crc32(nodeid.encode())) & 0x7FFF_FFFF


def cache_key(nodeid: str) -> str:
    """The replay-cache key of a test: a hash, never the raw node id (which may hold ``../``)."""
    return CACHE_PREFIX + hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _segment_summary(result) -> Optional[dict]:
    """Quantitative certification from the exact engine: fraction of each segment that holds."""
    fr = [f for f in (result.segment_fraction or []) if f is not None]
    if not fr:
        return None
    return {"seeds": len(fr), "mean_fraction": sum(fr) / len(fr), "min_fraction": min(fr), "exact": True}


def _estimate_json(est: Optional[dict]) -> Optional[dict]:
    if not est:
        return None
    keys = ("verdict", "fraction", "lower", "upper", "confidence", "samples", "samples_per_seed",
            "seed_lower", "violation_mass")
    return {k: est[k] for k in keys if k in est}


def evidence(result) -> str:
    """How strong the test's evidence is: exact (every seed decided by exact segments),
    proved, violated, or unproven."""
    if result.verdict == PROVED and result.segment_fraction is not None and result.counts[UNKNOWN] == 0:
        return EXACT
    return result.verdict


def _params(module):
    """Parameters of a decoder if it is a module (to decode on its device)."""
    return iter(module.parameters()) if hasattr(module, "parameters") else iter(())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120]


def _image_name(nodeid: str, seed_index: int, offset=()) -> str:
    """The picture's file name names the counterexample (its offset too), so a later run that
    finds another one never overwrites a picture an earlier sheet shows (a sheet kept after an
    interrupted run, another sheet sharing --latent-artifacts) under that sheet's caption."""
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    point = hashlib.sha256(repr([float(v) for v in offset]).encode()).hexdigest()[:8]
    return f"{_safe(nodeid)[:100]}-{digest}-seed{seed_index}-{point}.png"


def _deployment_fields(seeds, labels, direction, latent_space, eps) -> dict:
    """AuditAI's latent range of this test's seeds along its direction, and their fingerprint."""
    from ..sheet.deploy import DeployError, data_fingerprint, latent_ranges

    if isinstance(seeds, tuple) and len(seeds) == 2:
        seeds, pair_labels = seeds
        labels = labels if labels is not None else pair_labels
    if isinstance(direction, str) and latent_space is not None:
        direction = latent_space.directions.get(direction, direction)
    try:
        return {"latent_range": latent_ranges(seeds, eps, direction, with_basis=True),
                "data_fingerprint": data_fingerprint(seeds, labels)}
    except (DeployError, TypeError, ValueError) as exc:  # the audit passed; say why there is no range
        return {"notes": [f"no deployment latent range recorded: {exc}"]}


def _seed_count(seeds) -> Optional[int]:
    z = seeds[0] if isinstance(seeds, tuple) and len(seeds) == 2 else seeds
    try:
        return int(z.shape[0]) if hasattr(z, "shape") else len(z)
    except (TypeError, IndexError):
        return None


def _direction_k(direction, latent_space) -> Optional[int]:
    try:
        if isinstance(direction, str):
            return latent_space.direction(direction).k
        if hasattr(direction, "k"):
            return int(direction.k)
        shape = getattr(direction, "shape", None)
        return 1 if shape is None or len(shape) == 1 else int(shape[1])
    except Exception:  # the audit itself reports bad directions
        return None


def _kind_of(exc: BaseException) -> str:
    msg = str(exc)
    if type(exc).__name__ == "Failed" and msg.startswith("Timeout"):
        return f"pytest-timeout ({msg.split(chr(10))[0]})"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(exc).__name__}: {msg.splitlines()[0] if msg else ''}".rstrip(": ")


# ------------------------------------------------------------------ one budget
class Budget:
    """The clock of one latent test: ``total`` seconds (None: unlimited) from ``start``.

    Stages ask ``grant(fraction)`` for their budget: at most ``fraction`` of the total and never
    more than is left before the deadline, divided by how far past its grant an audit of this
    model (``model_key``) has run in this process (the engines work in chunks and lower the
    graph inside their own clock; up to +85% was measured). The factor starts at
    ``OVERRUN_DEFAULT`` and is learned from calls that ran into their deadline."""

    def __init__(self, total: Optional[float], start: Optional[float] = None, lags: Optional[dict] = None,
                 model_key=None):
        self.total = total
        self.start = time.perf_counter() if start is None else start
        reserve = 0.0 if total is None else min(RESERVE_MAX_S, RESERVE_SHARE * total)
        self.deadline = math.inf if total is None else self.start + total - reserve
        self.lags = lags if lags is not None else {}
        self.model_key = model_key

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def factor(self, kind: str = "audit") -> float:
        return self.lags.get((kind, self.model_key), OVERRUN_DEFAULT)

    def grant(self, fraction: float = 1.0, kind: str = "audit") -> Optional[float]:
        """Seconds to give a stage (None: unlimited); 0 when nothing is left."""
        if self.total is None:
            return None
        left = self.left()
        if left <= 0:
            return 0.0
        return min(fraction * self.total, left) / self.factor(kind)

    def observe(self, kind: str, granted: Optional[float], seconds: float) -> None:
        """Learn the overrun factor from a call that ran into its deadline (a slowly decaying
        maximum, between 1 and ``OVERRUN_MAX``); calls that finished early teach nothing."""
        if granted is None or granted <= 0 or seconds < granted:
            return
        key = (kind, self.model_key)
        ratio = min(OVERRUN_MAX, seconds / granted)
        prev = self.lags.get(key)
        self.lags[key] = ratio if prev is None else max(1.0, ratio, 0.8 * prev)

    def min_call(self) -> Optional[float]:
        """The fastest any audit-like call on this model has been in this process: what a
        sweep point or a radius probe costs at the least (checks, lowering the graph)."""
        return None if self.model_key is None else self.lags.get(("min_call", self.model_key))

    def saw_call(self, seconds: float) -> None:
        if self.model_key is not None:
            key = ("min_call", self.model_key)
            self.lags[key] = min(seconds, self.lags.get(key, math.inf))


# ------------------------------------------------------------------ torch threads
def thread_count(setting, current: int, workers: Optional[int], env=None, cpus: Optional[int] = None) -> Optional[int]:
    """The torch thread count for a latent test (``None``: leave torch's ``current`` as it is).

    ``setting`` is ``--latent-threads``: a number is used as given, ``keep`` never changes
    anything, and ``auto`` gives a pytest-xdist worker (one of ``workers``; ``None`` outside
    xdist) its share of the cores (``cpus // workers``, at least 1) when torch would take more
    and the user chose no count through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``. Why: with
    torch's default of a thread per core in every worker, the workers oversubscribe the cores,
    and OpenMP's waiting threads make the thousands of small ops of a bound propagation 10-50x
    slower (2 workers on 2 cores: a 0.3 s proof took 3-20 s), so the budget, not the engine,
    decides the verdict."""
    if setting == "keep":
        return None
    if isinstance(setting, int):
        return setting if setting != current else None
    env = os.environ if env is None else env
    if workers is None or workers < 2 or env.get("OMP_NUM_THREADS") or env.get("MKL_NUM_THREADS"):
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // workers)
    return share if current > share else None


def xdist_workers(config) -> Optional[int]:
    """How many xdist workers run the session, in a worker (``None`` elsewhere: an environment
    variable would also be inherited by a pytest that a worker's test starts)."""
    info = getattr(config, "workerinput", None)
    if info is None:
        return None
    try:
        return int(info.get("workercount"))
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def torch_threads(setting, workers: Optional[int]):
    """Run the block with ``thread_count``'s torch threads, and put the user's count back after."""
    import torch

    before = torch.get_num_threads()
    n = thread_count(setting, before, workers)
    if n is None:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ one latent test
class TestRunner:
    """Runs one latent test (``prepare`` then ``run``); ``partial_record`` after an interruption."""

    __test__ = False

    def __init__(self, session: "LatentSession", nodeid: str, marker: Dict[str, Any], latent_space, model, seeds,
                 labels=None, overrides: Optional[Dict[str, Any]] = None, cache=None, engines=None, falsifiers=None,
                 time_left: Optional[float] = None, timeout_note: Optional[str] = None, call: int = 1):
        self.session, self.nodeid = session, nodeid
        #: the test's n-th ``latent_audit`` call: its own replay-cache entry from the second on
        self.call = call
        self.cache_id = nodeid if call == 1 else f"{nodeid}#call{call}"
        self.space, self.model, self.seeds, self.labels = latent_space, model, seeds, labels
        self.marker, self.overrides = dict(marker), dict(overrides or {})
        self.cache, self.engines, self.falsifiers = cache, dict(engines or {}), dict(falsifiers or {})
        self.time_left, self.timeout_note = time_left, timeout_note
        self.started = time.perf_counter()  # the budget's clock starts with the fixture's call
        self.stage = "setup"
        self.result = None
        self.record: Optional[TestRecord] = None
        self.cut: List[str] = []
        self.notes: List[str] = []
        #: a ``progress.TestProgress`` (live status on a terminal) or None; set after ``prepare``
        self.progress = None

    def _stage(self, stage: str, **kw) -> None:
        self.stage = stage
        if self.progress is not None:
            self.progress.stage(stage, **kw)

    # ---------------------------------------------------------------- checks
    def prepare(self) -> Settings:
        from ..core.errors import LatentAuditError
        from ..core.specs import as_spec

        kw = dict(self.marker)
        kw.update(self.overrides)
        unknown = sorted(k for k in kw if k not in MARKER_KEYWORDS)
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, MARKER_KEYWORDS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise LatentAuditError(f"@pytest.mark.latent got unknown keyword argument(s) {', '.join(hints)}; "
                                   f"valid keywords: {', '.join(MARKER_KEYWORDS)}")
        missing = [k for k in ("direction", "eps", "spec") if kw.get(k) is None]
        if missing:
            raise LatentAuditError(f"@pytest.mark.latent needs {', '.join(missing)} "
                                   f"(e.g. @pytest.mark.latent(direction='pose', eps=0.1, spec=Accuracy(0.95)))")
        settings = self.session.settings.override(kw, extra_engines=tuple(self.engines))
        attack = kw.get("attack") or "sign"
        if attack not in ATTACKS and attack not in self.falsifiers:
            raise LatentAuditError(f"unknown attack {attack!r}; use {', '.join(ATTACKS)}"
                                   + "".join(f", {n}" for n in sorted(self.falsifiers)))
        self.kw, self.attack, self.spec = kw, attack, as_spec(kw["spec"])
        budget = settings.budget
        if self.time_left is not None:
            cap = max(0.05, TIMEOUT_SHARE * self.time_left)
            if budget is None or cap < budget:
                budget = round(cap, 3)
                self.notes.append(f"budget capped at {budget:g} s by {self.timeout_note or 'the test timeout'}")
        self.settings = settings if budget == settings.budget else _replace(settings, budget=budget)
        self.seed = derive_seed(self.settings.seed, self.nodeid)
        return self.settings

    # ---------------------------------------------------------------- the run
    def run(self) -> Tuple[Any, TestRecord, Settings]:
        from ..api import check_eps

        s, kw = self.settings, self.kw
        from ..sheet.deploy import model_fingerprint

        self.fingerprint = model_fingerprint(self.model)
        budget = self.budget = Budget(s.budget, start=self.started, lags=self.session.lags,
                                      model_key=(self.fingerprint or id(self.model), _direction_k(kw["direction"],
                                                                                                  self.space)))
        eps = check_eps(kw["eps"])
        sweep = sorted({check_eps(r) for r in (kw.get("sweep") or [])} - {eps})
        want_validity = bool(kw.get("validity", True)) and getattr(self.space, "decoder", None) is not None \
            and isinstance(kw["direction"], str) and eps > 0
        want_radius = bool(kw.get("radius", True)) and eps > 0 and self._radius_engine() is not None
        # the sweep and the radius search share what the audit leaves; the validity checks (not
        # interruptible) start only when enough is left, so they take nothing from the audit
        extras = bool(sweep) or want_radius
        replay = self._replay()
        self._stage("audit")
        granted = budget.grant(AUDIT_SHARE if extras else 1.0)
        t0 = time.perf_counter()
        result = self.result = self._audit(eps, granted, replay)
        took = time.perf_counter() - t0
        budget.observe("audit", granted, took)
        budget.saw_call(took)
        undecided = result.counts[UNKNOWN]
        if undecided and getattr(result, "cut_by_budget", False):  # the budget, not the ladder's work, ended it
            self.cut.append(f"audit ({undecided} of {result.n} seeds undecided at its deadline)")
        self._store_replay(result)
        record = self.record = self.make_record(result)
        for key, value in _deployment_fields(self.seeds, self.labels, kw["direction"], self.space, result.eps).items():
            if key == "notes":
                record.notes += value
            else:
                setattr(record, key, value)
        if want_validity:
            self._stage("validity")
            record.validity = self._validity(kw["direction"], result.eps, budget)
        if sweep:
            self._stage("sweep")
            record.sweep = self._sweep(sweep, replay, budget, leave=(1 - SWEEP_SHARE) if want_radius else 0.0)
        if want_radius:
            self._stage("certified radius")
            record.certified_radius = self._radius(max([2 * result.eps] + sweep), budget)
        self.stage = "record"
        record.notes += self.notes
        record.cut_short = list(self.cut)
        record.budget = s.budget
        record.seconds = round(budget.elapsed(), 4)
        return result, record, s

    def _audit_kwargs(self) -> dict:
        s = self.settings
        return dict(latent_space=self.space, engine=s.engine, device=s.device, seed=self.seed, precision=s.precision,
                    attack=self.attack, bound_factory=self.engines.get(s.engine),
                    falsifier=self.falsifiers.get(self.attack), progress=self.progress)

    def _audit(self, eps: float, budget_s: Optional[float], replay):
        from ..api import audit

        return audit(self.model, self.seeds, self.labels, direction=self.kw["direction"], eps=eps, spec=self.spec,
                     budget_s=budget_s, replay=[(i, t) for i, t in replay if max(map(abs, t), default=0) <= eps],
                     **self._audit_kwargs())

    # ---------------------------------------------------------------- replay cache
    def _replay(self) -> List[Tuple[int, list]]:
        """Counterexamples this test found last time (checked first); a malformed entry is
        dropped with a warning (and overwritten after this run)."""
        if self.cache is None:
            return []
        key = cache_key(self.cache_id)
        stored = self.cache.get(key, None)
        if stored is None:
            return []
        n, k = _seed_count(self.seeds), _direction_k(self.kw["direction"], self.space)

        def bad(why):
            warnings.warn(CacheWarning(f"dropped the malformed replay-cache entry {key} of {self.nodeid} ({why}); "
                                       f"it is rewritten after this test"), stacklevel=5)
            return []

        if not isinstance(stored, dict) or stored.get("nodeid") != self.cache_id:
            return bad("not this test's entry")
        items = stored.get("counterexamples")
        if not isinstance(items, list):
            return bad("'counterexamples' is not a list")
        out = []
        for c in items:
            if not isinstance(c, dict):
                return bad("an entry is not an object")
            i, t = c.get("seed_index"), c.get("offset")
            if not isinstance(i, int) or isinstance(i, bool) or i < 0 or (n is not None and i >= n):
                return bad(f"seed index {i!r} out of range")
            if not isinstance(t, list) or not t or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           and math.isfinite(v) for v in t):
                return bad("an offset is not a list of finite numbers")
            if k is not None and len(t) != k:
                return bad(f"an offset has {len(t)} coordinates, the direction has {k}")
            out.append((i, [float(v) for v in t]))
        return out

    def _store_replay(self, result) -> None:
        if self.cache is None:
            return
        try:
            self.cache.set(cache_key(self.cache_id), {"nodeid": self.cache_id, "counterexamples": [
                {"seed_index": c.seed_index, "offset": c.offset} for c in result.counterexamples]})
        except (OSError, TypeError, ValueError) as exc:  # a read-only cache must not fail the test
            warnings.warn(CacheWarning(f"could not store counterexamples for replay: {exc}"), stacklevel=4)

    # ---------------------------------------------------------------- extras
    def _validity(self, direction: str, eps: float, budget: Budget) -> Optional[dict]:
        if not self.session.validity_cached(self.space, direction, eps, self.seeds) and budget.total is not None:
            known = self.session.lags.get("validity")
            need = max(VALIDITY_START_SHARE * budget.total, VALIDITY_START_MIN_S) if known is None else 1.2 * known
            if budget.left() < need:
                self.cut.append("validity checks")
                return None
        return self.session.validity(self.space, direction, eps, self.seeds, budget)

    def _sweep(self, radii: List[float], replay, budget: Budget, leave: float) -> List[SweepPoint]:
        """Extra radii recorded for the verified-fraction curve; they never change pass/fail."""
        out: List[SweepPoint] = []
        for i, r in enumerate(radii):
            granted = None
            if budget.total is not None:
                # this point's even share of what the sweep may use; a point is started only when
                # that share covers the least an audit of this model has taken
                share = (1.0 - leave) * budget.left() / (len(radii) - i)
                granted = max(0.0, share / budget.factor("audit"))
                if granted <= 0.02 * budget.total or share < (budget.min_call() or 0.0):
                    self.cut.append("sweep eps=" + ", ".join(f"{x:g}" for x in radii[i:]))
                    break
            if self.progress is not None:
                self.progress.stage(f"sweep eps={r:g} ({i + 1}/{len(radii)})")
            t0 = time.perf_counter()
            res = self._audit(r, granted, replay)
            budget.observe("audit", granted, time.perf_counter() - t0)
            budget.saw_call(time.perf_counter() - t0)
            out.append(SweepPoint(eps=r, verdict=res.verdict, evidence=evidence(res), counts=Counts(**res.counts),
                                  verified_fraction=res.verified_fraction, seconds=round(res.seconds, 4)))
        return out

    def _radius_engine(self) -> Optional[str]:
        e = self.settings.engine
        if e.startswith(LIRPA_PREFIX) or e in NO_RADIUS_ENGINES:
            return None
        return "ibp" if e == "ibp" else "linear"

    def _radius(self, eps_max: float, budget: Budget) -> Optional[dict]:
        """Distribution of the largest certified radius per seed (bisection, sound bounds),
        searched in batches of seeds so the search stops at the budget; the summary says how
        many seeds were searched (``n``)."""
        from ..api import certified_radius
        from ..sheet.deploy import certified_radius_summary

        z, labels = self.seeds, self.labels
        if isinstance(z, tuple) and len(z) == 2:
            z, pair = z
            labels = labels if labels is not None else pair
        n = _seed_count(z) or 0
        radii: List[float] = []
        # seconds per seed of a search, learned per model (a probe of PROBE seeds first)
        key = ("radius_per_seed", budget.model_key)
        per_seed = self.session.lags.get(key)
        done = 0
        while done < n:
            if budget.total is None:
                size = n
            else:
                left = budget.left()
                if per_seed is None:  # a probe: only when it fits (it costs at least a call)
                    size = min(n, RADIUS_PROBE) if left >= 1.2 * (budget.min_call() or 0.0) and left > 0 else 0
                else:
                    size = min(n - done, int(left / per_seed))
                if size <= 0:
                    break
            if self.progress is not None:
                self.progress.stage("certified radius", total=n, decided=done, what="searched")
            t0 = time.perf_counter()
            part = certified_radius(self.model, z[done:done + size],
                                    None if labels is None else labels[done:done + size],
                                    direction=self.kw["direction"], spec=self.spec, eps_max=eps_max,
                                    latent_space=self.space, device=self.settings.device,
                                    engine=self._radius_engine(), precision=self.settings.precision,
                                    budget_s=None if budget.total is None else max(0.0, budget.left()))
            took = time.perf_counter() - t0
            radii += [float(v) for v in part.tolist()]
            done += size
            est = took / size
            per_seed = est if per_seed is None else max(est, 0.5 * per_seed + 0.5 * est)
        if per_seed is not None:
            self.session.lags[key] = per_seed
        if done < n:
            self.cut.append(f"certified radius (searched {done}/{n} seeds)")
        if not radii:
            return None
        out = certified_radius_summary(radii, eps_max)
        if done < n:
            out["seeds"] = n
        return out

    # ---------------------------------------------------------------- the record
    def make_record(self, result) -> TestRecord:
        s = self.settings
        cexs = sorted(result.counterexamples, key=lambda c: -c.margin)[:MAX_COUNTEREXAMPLES]
        cex_records = [CounterexampleRecord(seed_index=c.seed_index, offset=list(c.offset),
                                            offset_eps=list(c.offset_eps), predicted=c.predicted,
                                            expected=c.expected, margin=c.margin) for c in cexs]
        img_dir = s.artifact_dir()
        if img_dir is not None and self.space is not None and getattr(self.space, "decoder", None) and cexs:
            for c, cr in zip(cexs[:MAX_IMAGES], cex_records):
                cr.image = self._save_image(img_dir, c)
        dinfo = None
        direction = self.kw["direction"]
        if self.space is not None and isinstance(direction, str) and direction in self.space.directions:
            dinfo = self.space.directions[direction].to_json()
        return TestRecord(
            nodeid=self.nodeid, direction=str(result.direction), direction_info=dinfo, eps=result.eps,
            spec=self.spec.to_json(), spec_text=result.spec, verdict=result.verdict, evidence=evidence(result),
            n_seeds=result.n, counts=Counts(**result.counts), verified_fraction=result.verified_fraction,
            at_least=result.at_least, engine=result.engine, rungs=result.rungs(), seconds=round(result.seconds, 4),
            budget=s.budget, device=s.device, precision=s.precision, seed=self.seed,
            model_fingerprint=self.fingerprint, failing_bound=result.failing_bound(),
            counterexamples=cex_records, notes=list(result.notes), segment=_segment_summary(result),
            estimate=_estimate_json(result.estimate),
            declared_directions=sorted(self.space.directions) if self.space is not None else [])

    def _save_image(self, img_dir: Path, cex, frames: int = 6) -> Optional[str]:
        """A strip along the direction: the nominal decoding first, the counterexample last.
        Returns its path relative to the spec sheet's folder (absolute without a sheet); a
        failure is a ``CounterexampleImageWarning``, never a test failure."""
        try:
            import torch

            from ..report.images import save_strip

            alphas = torch.linspace(0, 1, frames)[:, None]
            path_z = cex.z0[None] + alphas * (cex.z - cex.z0)[None]
            with torch.no_grad():
                imgs = self.space.decode(path_z.to(next(_params(self.space.decoder), cex.z).device))
            imgs = imgs.detach().float().cpu().numpy()
            path = save_strip(img_dir / _image_name(self.nodeid, cex.seed_index, cex.offset), list(imgs))
        except Exception as exc:  # noqa: BLE001 - a picture must never fail the test it illustrates
            warnings.warn(CounterexampleImageWarning(
                f"could not save the counterexample image of seed {cex.seed_index} under {img_dir}: "
                f"{type(exc).__name__}: {exc}"), stacklevel=5)
            return None
        sheet = self.settings.spec_sheet
        if sheet is None:
            return str(path)
        from ..sheet.specsheet import _relpath

        return _relpath(path, sheet.parent)

    # ---------------------------------------------------------------- interrupted
    def partial_record(self, exc: BaseException) -> Optional[TestRecord]:
        """The record of a test stopped mid-way (pytest-timeout, Ctrl-C): what finished, marked
        ``interrupted``; before the audit finished, every seed is unknown."""
        if not hasattr(self, "kw"):
            return None  # stopped before its marker was checked: nothing to record
        info = {"reason": _kind_of(exc), "stage": self.stage,
                "after_s": round(self.budget.elapsed(), 3) if hasattr(self, "budget") else 0.0}
        if self.record is not None:
            rec = self.record
            rec.cut_short = list(self.cut) + [self.stage]
        else:
            from ..core.errors import LatentAuditError

            n = _seed_count(self.seeds) or 0
            try:
                eps = float(self.kw["eps"])
            except (TypeError, ValueError):
                eps = 0.0
            if not (eps >= 0 and math.isfinite(eps)):
                eps = 0.0
            try:
                at_least = float(getattr(self.spec, "at_least", 1.0))
            except (TypeError, ValueError, LatentAuditError):  # pragma: no cover
                at_least = 1.0
            d = self.kw["direction"]
            rec = TestRecord(nodeid=self.nodeid, direction=direction_label(d), eps=eps,
                             verdict=UNPROVEN, counts=Counts(unknown=n), n_seeds=n, verified_fraction=0.0,
                             at_least=at_least, spec=self.spec.to_json(), spec_text=self.spec.describe(),
                             engine=self.settings.engine, budget=self.settings.budget, device=self.settings.device,
                             precision=self.settings.precision, seed=self.seed,
                             notes=[f"interrupted during the {self.stage} ({info['reason']}): no verdict was "
                                    f"reached; every seed is recorded as unknown"],
                             declared_directions=sorted(self.space.directions) if self.space is not None else [])
            rec.cut_short = list(self.cut) + [self.stage]
        rec.notes += [n for n in self.notes if n not in rec.notes]
        rec.interrupted = info
        rec.seconds = info["after_s"]
        return rec


def _replace(settings: Settings, **changes) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)
