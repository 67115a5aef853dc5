"""The session controller, ``LatentSession``: collects one record per test from the reports
(the last attempt wins under pytest-rerunfailures; xdist workers need no extra channel), and at
the end writes the spec sheet (never after an interrupted run; a subset run keeps the earlier
sheet's other tests, marked carried over), the HTML report, and runs the coverage and compare
gates. Nothing at session end raises: an error becomes one clear line in the terminal summary
and a failing exit status. Each latent test is a ``runner.TestRunner``.

Importing this module imports neither torch nor numpy.
"""
from __future__ import annotations

import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import __version__
from ..sheet.records import SheetFormatError, TestRecord
from .options import Settings
from .runner import Budget, TestRunner


class LatentSession:
    def __init__(self, settings: Settings, rootdir: Path, config=None):
        self.settings = settings
        self.config = config  # only for the pytest_latentaudit_sheet / _export hooks
        self.rootdir = rootdir
        self._records: Dict[str, List[TestRecord]] = {}  # node id -> the last attempt's records (one per call)
        self._attempts: Dict[str, int] = {}
        self.ran_ids: Set[str] = set()  # tests that ran (with or without a record)
        self.collected_ids: Set[str] = set()
        self.deselected_ids: Set[str] = set()
        self.collected_files: Set[str] = set()
        self.written: Optional[Path] = None
        self.sheet = None
        self.messages: List[Tuple[str, bool]] = []  # (line, is_failure) for the terminal summary
        self.failed = False
        self.lags: Dict[Any, float] = {}  # what stages overran by / cost, learned per process (see Budget)
        self._validity: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.carried: List[TestRecord] = []
        #: torch's version and device where the tests ran (from xdist workers; else this process's)
        self.torch_of_tests: Dict[str, Any] = {}

    @property
    def records(self) -> List[TestRecord]:
        """The records of the tests that ran (the last attempt; one per ``latent_audit`` call),
        sorted by node id and call."""
        return [r for k in sorted(self._records) for r in self._records[k]]

    @property
    def sheet_records(self) -> List[TestRecord]:
        """The records of the sheet this session built (its own and those carried over, with the
        records rule applied); empty before ``finish``."""
        return self.sheet.records if self.sheet is not None else []

    # ---------------------------------------------------------------- fixture side
    def runner(self, nodeid: str, marker: Dict[str, Any], latent_space, model, seeds, labels=None, **kw) -> TestRunner:
        return TestRunner(self, nodeid, marker, latent_space, model, seeds, labels, **kw)

    def run(self, nodeid: str, marker: Dict[str, Any], latent_space, model, seeds, labels=None,
            overrides: Optional[Dict[str, Any]] = None, cache=None, engines=None, falsifiers=None) -> tuple:
        """Run the audit of one test; returns ``(AuditResult, TestRecord, Settings)``."""
        r = self.runner(nodeid, marker, latent_space, model, seeds, labels, overrides=overrides, cache=cache,
                        engines=engines, falsifiers=falsifiers)
        r.prepare()
        return r.run()

    @staticmethod
    def _validity_key(direction: str, eps: float, seeds) -> tuple:
        """The checks depend on the seeds (the realism limit is measured around them), so two
        tests along one direction and eps with other seeds must not share a report: which test
        came first in a process (serial vs xdist) would decide what the second records."""
        from ..sheet.deploy import data_fingerprint

        z = seeds[0] if isinstance(seeds, tuple) and len(seeds) == 2 else seeds
        try:
            fp = data_fingerprint(z)
        except Exception:  # noqa: BLE001 - unhashable seeds: the check itself reports them
            fp = None
        return direction, eps, fp

    def validity_cached(self, space, direction, eps, seeds=None) -> bool:
        try:
            return self._validity_key(direction, eps, seeds) in self._validity.get(space, {})
        except TypeError:
            return False

    def validity(self, latent_space, direction: str, eps: float, seeds, budget: Optional[Budget] = None):
        """Continuity and realism of the direction at this eps (once per session, latent space,
        direction/eps and seeds); problems are also emitted as DirectionValidityWarning in the test."""
        from ..toolkit.validity import validity_report

        try:
            cache = self._validity.setdefault(latent_space, {})
        except TypeError:  # not weak-referenceable: no caching
            cache = {}
        key = self._validity_key(direction, eps, seeds)
        if key not in cache:
            data = getattr(latent_space, "data_latents", None)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    rep = validity_report(latent_space, direction, eps, seeds, data_latents=data, warn=True)
                except Exception as exc:  # a check must never break the test it describes
                    rep = {"direction": direction, "eps": eps, "ok": None, "error": str(exc)}
            took = time.perf_counter() - t0
            self.lags["validity"] = max(took, 0.8 * self.lags.get("validity", 0.0))
            cache[key] = (rep, [(w.message, w.category) for w in caught])
        rep, warns = cache[key]
        for message, category in warns:  # re-emitted in every test that uses this direction
            warnings.warn(message, category, stacklevel=5)  # the user's test function
        return rep

    # ---------------------------------------------------------------- controller side
    def attempt(self, nodeid: str) -> None:
        """A test's call phase ran (once per attempt under pytest-rerunfailures)."""
        self._attempts[nodeid] = self._attempts.get(nodeid, 0) + 1
        self.ran_ids.add(nodeid)

    def add(self, records) -> None:
        """A test's records, one per ``latent_audit`` call (the latest attempt replaces an earlier
        one: pytest-rerunfailures)."""
        records = [records] if isinstance(records, TestRecord) else list(records)
        if not records:
            return
        nodeid = records[0].nodeid
        n = self._attempts.get(nodeid, 1)
        for record in records:
            if n > 1:
                record.attempts = n
        self._records[nodeid] = records
        self.ran_ids.add(nodeid)

    def drop(self, nodeid: str) -> None:
        """A later attempt of ``nodeid`` left no record: the earlier attempt's is no longer its."""
        self._records.pop(nodeid, None)

    def error(self, line: str) -> None:
        self.messages.append((line, True))
        self.failed = True

    def _settings_json(self) -> dict:
        s = self.settings
        return {"engine": s.engine, "device": s.device, "budget": s.budget, "seed": s.seed, "unproven": s.unproven,
                "estimated": s.estimated, "precision": s.precision}

    def _keep(self, rec: TestRecord) -> bool:
        """Does a test that did not run still exist? Deselected, or collected but never run (``-x``
        stopped the run, skipped at setup): yes. In a file this session collected but not among
        its items: deleted (or renamed). In a file not collected at all: yes while the file exists."""
        if rec.nodeid in self.deselected_ids or rec.nodeid in self.collected_ids:
            return True
        file = rec.nodeid.split("::", 1)[0]
        if file in self.collected_files:
            return False
        return (self.rootdir / file).exists()

    def _merged(self, earlier: List[TestRecord], created: Optional[str]) -> List[TestRecord]:
        from ..sheet.specsheet import carry_over

        return carry_over(self.records, earlier, ran_ids=self.ran_ids, keep=self._keep, earlier_created=created)

    def finish(self, interrupted: Optional[str] = None) -> bool:
        """Everything at session end, none of which raises: compare baseline, spec sheet, hooks,
        HTML report, coverage and compare gates. True when the run must fail."""
        from ..sheet.specsheet import SpecSheet, machine_info, read_sheet

        s = self.settings
        if interrupted:
            self.messages.append((f"spec sheet not written: the run was {interrupted} (any earlier sheet is "
                                  f"kept unchanged)", True))
            return True
        baseline = None
        if s.compare is not None:  # read first: it may be the file about to be replaced
            try:
                baseline = read_sheet(s.compare, source=f"baseline {s.compare}")
            except FileNotFoundError:
                self.messages.append((f"latent compare: no baseline at {s.compare} yet; nothing compared", False))
            except (OSError, SheetFormatError) as exc:
                self.error(f"latent compare: cannot use the baseline: {exc}")
        earlier = None
        if s.spec_sheet is not None and s.spec_sheet.exists():
            try:
                earlier = read_sheet(s.spec_sheet, source=f"earlier sheet {s.spec_sheet}")
            except (OSError, SheetFormatError) as exc:
                self.messages.append((f"spec sheet: the earlier {s.spec_sheet} is unreadable ({exc}); "
                                      f"it is replaced by this run's", False))
        records = self._merged(earlier.records if earlier else [], earlier.data.get("created") if earlier else None)
        self.carried = [r for r in records if not r.ran]
        try:
            self.sheet = SpecSheet.build(records, tool_version=__version__, rootdir=self.rootdir,
                                         settings=self._settings_json(),
                                         machine=machine_info(self.torch_of_tests or None))
        except Exception as exc:  # noqa: BLE001
            self.error(f"spec sheet: could not be built: {type(exc).__name__}: {exc}")
            return True
        hook = None if self.config is None else self.config.hook
        self._guard("pytest_latentaudit_sheet hook", lambda: hook and hook.pytest_latentaudit_sheet(
            sheet=self.sheet.data, config=self.config))
        if s.spec_sheet is not None:
            def save():
                self.written = self.sheet.save(s.spec_sheet)
            self._guard(f"cannot write the spec sheet {s.spec_sheet}", save)
        if hook is not None:
            self._guard("pytest_latentaudit_export hook", lambda: hook.pytest_latentaudit_export(
                sheet=self.sheet.data, path=self.written, config=self.config))
        data = self.sheet.data
        if s.report is not None:
            def report():
                from ..report.html import render_html

                base = s.spec_sheet.parent if s.spec_sheet else None
                self.messages.append((f"latent report: {render_html(data, s.report, base_dir=base)}", False))
            self._guard(f"cannot write the HTML report {s.report}", report)
        if s.coverage_fail_under is not None:
            def gate():
                from ..sheet.coverage import coverage_gate, coverage_summary

                ok, msg = coverage_gate(data.get("coverage") or coverage_summary(data), s.coverage_fail_under)
                self.messages.append((msg, not ok))
                self.failed = self.failed or not ok
            self._guard("latent coverage", gate)
        if baseline is not None:
            def compare():
                from ..sheet.coverage import compare, comparison_lines

                # the baseline's tests that did not run count as carried over, not missing
                view = self._merged(list(baseline.records), baseline.data.get("created"))
                new = SpecSheet.build(view, tool_version=__version__, commit={}, machine={},
                                      settings=self._settings_json())
                ok, lines = comparison_lines(compare(baseline, new), f"the baseline {s.compare.name}")
                self.messages.extend((line, not ok and "not run (not compared)" not in line) for line in lines)
                self.failed = self.failed or not ok
            self._guard("latent compare", compare)
        return self.failed

    def _guard(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - nothing at session end may lose JUnit XML or the summary
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.error(f"latentaudit: {what}: {type(exc).__name__}: {detail}")
