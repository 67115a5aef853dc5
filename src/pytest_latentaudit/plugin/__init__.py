"""pytest entry point: options, the ``latent`` marker, the ``latent_audit`` fixture and
reporting hooks. Kept thin: one latent test is a ``runner.TestRunner``, the session end is
``session.LatentSession.finish``; nothing here imports torch or numpy, so loading the plugin
stays cheap for suites that never use it."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from .options import OPTIONS, UsageError, check_device_available, from_config
from ..core.vocab import (DEVICES, ESTIMATED, ESTIMATED_ACTIONS, PRECISIONS, PROVED, UNPROVEN, UNPROVEN_ACTIONS,
                    VIOLATED)

SESSION_KEY = pytest.StashKey["LatentSession"]()
#: the JSON records of the test's ``latent_audit`` calls so far (one per call)
RECORD_KEY = pytest.StashKey[list]()
START_KEY = pytest.StashKey[dict]()

MARKER_DOC = ("latent(direction, eps, spec, engine=None, budget=None, device=None, unproven=None, estimated=None, "
              "precision=None, attack='sign'|'adam'|'blackbox', sweep=[eps, ...], radius=True, validity=True): "
              "a semantic unit test run by the latent_audit fixture: the spec must hold for every variation of at "
              "most eps along the named direction of the latent space. sweep records extra radii for the "
              "spec sheet's curve without changing pass/fail; radius records each seed's largest certified "
              "radius (up to 2*eps); validity records continuity and realism checks of the direction "
              "(with a decoder) and warns on problems. The audit, the sweep, the radius search and the validity "
              "checks share one budget (--latent-budget seconds per latent test). Keyword arguments override the "
              "--latent-* options for this test; any other keyword is an error.")


def pytest_addoption(parser):
    group = parser.getgroup("latentaudit", "semantic unit tests (pytest-latentaudit)")
    flags = {
        "engine": dict(metavar="ENGINE"), "device": dict(metavar="|".join(DEVICES)),
        "budget": dict(metavar="SECONDS"), "spec_sheet": dict(metavar="PATH"),
        "unproven": dict(metavar="|".join(UNPROVEN_ACTIONS)), "estimated": dict(metavar="|".join(ESTIMATED_ACTIONS)),
        "seed": dict(metavar="INT"), "artifacts": dict(metavar="DIR"), "precision": dict(metavar="|".join(PRECISIONS)),
        "report": dict(metavar="PATH"), "coverage_fail_under": dict(metavar="PCT"),
        "compare": dict(metavar="OLD_SHEET"), "progress": dict(metavar="auto|on|off"),
        "threads": dict(metavar="auto|keep|N"),
    }
    for name, (help_, default) in OPTIONS.items():
        flag = "--latent-" + name.replace("_", "-")
        group.addoption(flag, dest=f"latent_{name}", default=None,
                        # argparse %-formats help texts ("10% of it" crashed pytest --help)
                        help=f"{help_} (default: {default or 'none'}; ini: latent_{name})".replace("%", "%%"),
                        **flags[name])
        parser.addini(f"latent_{name}", help_, default="")
    group.addoption("--latent-junit-properties", dest="latent_junit_properties", action="store_true",
                    default=False, help="add per-test <properties> (verdict, counts) to JUnit XML; strict "
                                        "xunit2 validators reject them, so they are off by default")
    parser.addini("latent_space_fixture", "name of the fixture that provides the LatentSpace",
                  default="latent_space")


def pytest_addhooks(pluginmanager):
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def registry(config, kind: str) -> dict:
    """Engines or falsifiers registered by conftests/plugins (later registrations win)."""
    hook = getattr(config.hook, f"pytest_latentaudit_{kind}")
    out: dict = {}
    for part in reversed(hook()):
        out.update(part or {})
    return out


def pytest_configure(config):
    config.addinivalue_line("markers", MARKER_DOC)
    try:
        settings = from_config(config, extra_engines=tuple(registry(config, "engines")))
        check_device_available(settings.device)
    except UsageError as exc:
        raise pytest.UsageError(f"pytest-latentaudit: {exc}") from None
    from .session import LatentSession

    ls = LatentSession(settings, Path(str(config.rootpath)), config=config)
    config.stash[SESSION_KEY] = ls
    config.pluginmanager.register(_SessionHooks(config, ls), "latentaudit-session")
    config.pluginmanager.register(_VerdictWords(config), "latentaudit-verdict-words")


def pytest_report_header(config):
    session = config.stash.get(SESSION_KEY, None)
    return session.settings.header() if session else None


_MISSING = object()
_WARM = {"done": False}


def _warm_up() -> None:
    """Once per process, after collection: the first graph lowering of a process costs seconds
    of torch start-up that no test's budget (or pytest-timeout limit) should pay."""
    if _WARM["done"]:
        return
    _WARM["done"] = True
    try:
        import torch

        from ..api import audit
        from ..core.latent import Direction
        from ..core.specs import Invariance

        audit(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), torch.ones(1, 2),
              direction=Direction.axis(0), eps=0.1, spec=Invariance(), engine="linear", device="cpu", budget_s=1.0)
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def _time_left(item):
    """``(seconds, what)`` until pytest-timeout stops this test, or ``(None, None)``."""
    pm = item.config.pluginmanager
    if not pm.hasplugin("timeout"):
        return None, None
    try:
        import pytest_timeout

        settings = pytest_timeout._get_item_settings(item)
    except Exception:  # noqa: BLE001 - another version: fall back to the option
        timeout = getattr(item.config.option, "timeout", None)
        settings = None
    else:
        timeout = settings.timeout
    if not timeout or timeout <= 0:
        return None, None
    starts = item.stash.get(START_KEY, {})
    func_only = bool(getattr(settings, "func_only", False))
    start = starts.get("call" if func_only else "protocol", starts.get("call", time.perf_counter()))
    return timeout - (time.perf_counter() - start), f"the pytest-timeout limit ({timeout:g} s)"


class LatentAudit:
    """What the ``latent_audit`` fixture returns: call it with the model and the seeds."""

    def __init__(self, request):
        self._request = request

    def __call__(self, model, seeds, labels=None, **overrides):
        request = self._request
        session = request.config.stash[SESSION_KEY]
        marker = request.node.get_closest_marker("latent")
        kwargs = dict(marker.kwargs) if marker else {}
        if marker and marker.args:
            pytest.fail("@pytest.mark.latent takes keyword arguments only (direction=..., eps=..., spec=...)",
                        pytrace=False)
        own = [m for m in getattr(request.node, "own_markers", []) if m.name == "latent"]
        if len(own) > 1:
            # only the closest would run: the test would pass with the other's requirement unchecked
            said = "; ".join(", ".join(f"{k}={v!r}" for k, v in m.kwargs.items() if k in ("direction", "eps", "spec"))
                             for m in own)
            pytest.fail(f"{len(own)} @pytest.mark.latent markers on this test ({said}): one test checks one "
                        f"marker's requirement; write one test per requirement (or call latent_audit(model, seeds, "
                        f"direction=..., eps=..., spec=...) once per requirement under one marker)", pytrace=False)
        name = session.settings.latent_space_fixture
        try:
            space = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            space = _MISSING
        if space is _MISSING:  # failed outside the except block so the message shows once
            pytest.fail(f"latent_audit needs a fixture named {name!r} that returns a LatentSpace "
                        f"(define it in conftest.py, or set the ini option latent_space_fixture)", pytrace=False)
        from ..core.errors import LatentAuditError
        from ..core.latent import LatentSpace
        from ..sheet.records import TestRecord

        if not isinstance(space, LatentSpace):
            pytest.fail(f"fixture {name!r} returned {type(space).__name__}, not a LatentSpace", pytrace=False)
        left, what = _time_left(request.node)
        done = request.node.stash.get(RECORD_KEY, None)
        if done is None:
            done = request.node.stash[RECORD_KEY] = []
        call = len(done) + 1  # the second call of a test keeps its own record (``call`` 2)
        model_key = _model_key(request, model)
        runner = session.runner(request.node.nodeid, kwargs, space, model, seeds, labels, overrides=overrides,
                                cache=getattr(request.config, "cache", None),
                                engines=registry(request.config, "engines"),
                                falsifiers=registry(request.config, "falsifiers"), time_left=left, timeout_note=what,
                                call=call)
        error = None
        from .runner import torch_threads, xdist_workers

        try:
            runner.prepare()
            from .progress import for_test

            runner.progress = for_test(request.config, runner.settings.progress, request.node.nodeid,
                                       runner.settings.budget, t0=runner.started)
            with torch_threads(runner.settings.threads, xdist_workers(request.config)):
                result, record, settings = runner.run()
        except (LatentAuditError, UsageError, TypeError, ValueError) as exc:
            error = f"latent_audit: {exc}"
        except BaseException as exc:  # pytest-timeout's Failed, KeyboardInterrupt: record what finished
            partial = runner.partial_record(exc)
            if partial is not None:
                partial.model_key = model_key
                if call > 1:
                    partial.call = call
                _keep_record(done, partial, call)
            raise
        finally:
            if runner.progress is not None:  # erased before pytest writes the outcome
                runner.progress.close()
        if error is not None:
            pytest.fail(error, pytrace=False)
        record.model_key = model_key
        if call > 1:
            record.call = call
        before = record.to_json()
        data = copy.deepcopy(before)  # the hook's own copy: nothing it does reaches ``record``
        request.config.hook.pytest_latentaudit_record(record=data, item=request.node)
        changed = _hook_changes(before, data)
        hooked = None
        if not changed:
            try:  # what a hook added lands in the record's ``extra``; what it changed is checked
                hooked = TestRecord.from_json(data, "record (after pytest_latentaudit_record hooks)")
            except LatentAuditError as exc:
                changed = str(exc)
        if hooked is None:  # the audit's own record goes to the sheet; the test fails
            _keep_record(done, record, call)
            _junit_properties(request.node, session, done)
            pytest.fail(f"latent_audit: {changed}", pytrace=False)
        record = hooked
        _keep_record(done, record, call)
        _junit_properties(request.node, session, done)
        if record.vacuous is not None:
            import warnings

            from ..sheet.records import VacuousSpecWarning

            warnings.warn(VacuousSpecWarning(
                f"{record.spec_text or record.spec_kind} along {record.direction!r} at eps={record.eps:g} holds "
                f"vacuously ({record.vacuous}): the test passes but proves no operating range; the spec sheet "
                f"marks it vacuous"), stacklevel=2)
        from ..report.terminal import failure_message

        msg = lambda: failure_message(record, sheet=settings.spec_sheet,  # noqa: E731
                                      image_base=settings.spec_sheet.parent if settings.spec_sheet else None)
        if record.verdict == VIOLATED:
            pytest.fail(msg(), pytrace=False)
        if record.verdict in (UNPROVEN, ESTIMATED):
            action = settings.unproven if record.verdict == UNPROVEN else settings.estimated
            if action == "xfail":
                pytest.xfail(msg())
            elif action == "skip":
                pytest.skip(msg())
            elif action == "fail":
                pytest.fail(msg(), pytrace=False)
        return result


def _model_key(request, model) -> str:
    """Which model this is across retraining (``TestRecord.model_key``, read by the staleness
    rule ``records.mark_stale``): the fixture that gave it (``fixture:head``, with the index of
    its parameter when parametrized), else its class."""
    for name, value in (getattr(request.node, "funcargs", None) or {}).items():
        if value is model and name not in ("request", "latent_audit"):
            key = f"fixture:{name}"
            callspec = getattr(request.node, "callspec", None)
            if callspec is not None and name in getattr(callspec, "indices", {}):
                key += f"[{callspec.indices[name]}]"
            return key
    cls = type(model)
    return f"class:{cls.__module__}.{cls.__qualname__}"


def _keep_record(done: list, record, call: int) -> None:
    """Stash ``record`` as the JSON record of call ``call``; a second call gives the first
    ``call`` 1, so the sheet keys both (``TestRecord.key``)."""
    if call == 2 and done and done[0].get("call") is None:
        done[0]["call"] = 1
    data = record.to_json()
    del done[call - 1:]
    done.append(data)


#: what a ``pytest_latentaudit_record`` hook may change of a record it is handed: add fields
#: (any name that is not a record field), append notes, and set a pixel cross-check
_HOOK_APPENDS = ("notes",)
_HOOK_SETS = ("pixel_crosscheck",)


def _hook_changes(before: dict, after) -> "str | None":
    """None, or a message naming the record fields a hook changed (the verdict, the counts,
    the range, ...: what the audit found; a hook adds fields, it never edits findings)."""
    import json
    from dataclasses import fields as dc_fields

    from ..sheet.records import TestRecord

    if not isinstance(after, dict):
        return "a pytest_latentaudit_record hook replaced the record with a non-dict"
    known = {f.name for f in dc_fields(TestRecord)} - {"extra"} | set(TestRecord._DERIVED)
    same = lambda a, b: json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)  # noqa: E731
    bad = []
    for key in sorted(known | set(before)):
        if key not in known and key in after:
            continue  # an earlier field a hook is free to have added
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if old is _MISSING and new is _MISSING:
            continue
        if key in _HOOK_APPENDS and isinstance(new, list) and isinstance(old, list) and same(new[:len(old)], old):
            continue
        if key in _HOOK_SETS and old in (_MISSING, None):
            continue
        if old is _MISSING or new is _MISSING or not same(old, new):
            bad.append(key)
    if not bad:
        return None
    bad.sort(key=lambda k: k != "verdict")  # the verdict first: what a reader needs to see
    what = ", ".join(repr(k) for k in bad)
    detail = ""
    if "verdict" in bad:
        detail = f" ({before.get('verdict')} -> {after.get('verdict')})"
    return (f"pytest_latentaudit_record hook changed {what}{detail}: a hook may add fields (and append notes), "
            f"not change what the audit found; the spec sheet keeps the audit's record")


def _junit_properties(node, session, done: list) -> None:
    """``--latent-junit-properties``: one ``latent_verdict`` per test case, the worst of its
    calls (with its direction, eps and counts), and ``latent_calls`` when more than one."""
    if not session.settings.junit_properties or not done:
        return
    from ..core.vocab import verdict_rank

    node.user_properties[:] = [(k, v) for k, v in node.user_properties if not str(k).startswith("latent_")]
    worst = min(done, key=lambda d: verdict_rank(d.get("verdict")))
    for key in ("verdict", "eps", "direction"):
        node.user_properties.append((f"latent_{key}", worst.get(key)))
    for key, val in (worst.get("counts") or {}).items():
        node.user_properties.append((f"latent_{key}", val))
    if len(done) > 1:
        node.user_properties.append(("latent_calls", len(done)))


@pytest.fixture
def latent_audit(request):
    """Run the semantic test declared by ``@pytest.mark.latent`` on ``(model, seeds)``.

    ``latent_audit(model, seeds)`` with seeds ``(z, labels)`` proves or falsifies the spec,
    records the result in the spec sheet and fails the test on a violated (or, by default,
    unproven) verdict. Returns the ``AuditResult``.
    """
    return LatentAudit(request)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    item.stash[START_KEY] = {"protocol": time.perf_counter()}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield
    # the first latent test of a process whose torch came in with its fixtures (not at
    # collection): warm up now, in its setup, so neither its call nor its budget pays for it
    import sys

    if not _WARM["done"] and "torch" in sys.modules and item.get_closest_marker("latent") is not None:
        _warm_up()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    item.stash.setdefault(START_KEY, {})["call"] = time.perf_counter()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when == "call":
        records = item.stash.get(RECORD_KEY, None)
        if records:
            # travels with the report, so xdist workers need no extra channel; one call: its
            # record, as before; several: the list
            report.latentaudit = records[0] if len(records) == 1 else list(records)
        if records is not None:
            del item.stash[RECORD_KEY]  # a rerun (pytest-rerunfailures) makes its own


class _VerdictWords:
    """With ``-v``: the verdict and counts beside a latent test's outcome on its live line
    (``PASSED [proved: 16/16 verified]``). Only the line pytest writes while the report is
    logged: the short summary (``-r``) and other callers of ``pytest_report_teststatus`` keep
    pytest's own word, so tools that parse ``PASSED nodeid`` lines are not confused."""

    def __init__(self, config):
        self.config = config
        self.logging = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_logreport(self, report):
        self.logging = report
        try:
            yield
        finally:
            self.logging = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_teststatus(self, report, config):
        outcome = yield
        if report is not self.logging or report.when != "call":
            return
        from .progress import case_verbosity

        if case_verbosity(config) <= 0:
            return
        data = getattr(report, "latentaudit", None)
        res = outcome.get_result()
        if not data or not res or len(res) != 3:
            return
        from ..sheet.records import TestRecord
        from ..report.terminal import verdict_badge

        try:
            from ..core.vocab import verdict_rank

            recs = [TestRecord.from_json(d, report.nodeid) for d in (data if isinstance(data, list) else [data])]
            badge = verdict_badge(min(recs, key=lambda r: verdict_rank(r.verdict)))  # the worst call
        except Exception:  # noqa: BLE001 - a malformed record is reported at session end
            return
        category, letter, word = res
        if isinstance(word, tuple) and len(word) == 2 and word[0]:
            word = (f"{word[0]} {badge}", word[1])
        elif isinstance(word, str) and word:
            word = f"{word} {badge}"
        else:
            return
        outcome.force_result((category, letter, word))


class _SessionHooks:
    """Controller-side hooks bound to one config (pytester runs nest sessions in-process)."""

    def __init__(self, config, latent_session):
        self.config = config
        self.ls = latent_session

    # -------------------------------------------------------------- what ran, what did not
    def pytest_deselected(self, items):
        ids = [i.nodeid for i in items]
        self.ls.deselected_ids.update(ids)
        out = getattr(self.config, "workeroutput", None)
        if out is not None:  # xdist worker: tell the controller
            out["latentaudit_deselected"] = sorted(set(out.get("latentaudit_deselected", [])) | set(ids))

    def pytest_collection_finish(self, session):
        self._collected([i.nodeid for i in session.items])
        # warm up torch's tracer once per process (xdist: per worker), outside every test and its
        # timeout, when latent tests will run and the suite imported torch anyway
        import sys

        if "torch" in sys.modules and any(i.get_closest_marker("latent") for i in session.items):
            _warm_up()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        self._collected(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        out = getattr(node, "workeroutput", None) or {}
        self.ls.deselected_ids.update(out.get("latentaudit_deselected", []))
        if out.get("latentaudit_torch") and not self.ls.torch_of_tests:
            self.ls.torch_of_tests = dict(out["latentaudit_torch"])

    def _collected(self, ids):
        self.ls.collected_ids.update(ids)
        self.ls.collected_files.update(i.split("::", 1)[0] for i in ids)

    def pytest_runtest_logreport(self, report):
        if report.when == "setup" and report.failed:
            self.ls.ran_ids.add(report.nodeid)
        if report.when != "call":
            return
        self.ls.attempt(report.nodeid)
        data = getattr(report, "latentaudit", None)
        if data is None:
            self.ls.drop(report.nodeid)  # the last attempt wins, even when it left no record
            return
        from ..sheet.records import SheetFormatError, TestRecord

        try:
            recs = [TestRecord.from_json(d, report.nodeid) for d in (data if isinstance(data, list) else [data])]
        except SheetFormatError as exc:  # a hook wrote something unreadable
            self.ls.error(f"latentaudit: the record of {report.nodeid} is malformed: {exc}")
            return
        xfail = hasattr(report, "wasxfail")
        outcome = "failed" if report.outcome == "rerun" else report.outcome
        for rec in recs:
            rec.outcome = ("xfailed" if report.skipped else "xpassed") if xfail else outcome
        self.ls.add(recs)

    # -------------------------------------------------------------- the end
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput"):
            # xdist worker: records travel with the reports; the controller writes the sheet, and
            # may never import torch itself, so the worker says which torch ran the tests
            from ..sheet.specsheet import torch_info

            self.config.workeroutput["latentaudit_torch"] = torch_info()
            return
        status = session.exitstatus
        interrupted = {pytest.ExitCode.INTERRUPTED: "interrupted",
                       pytest.ExitCode.INTERNAL_ERROR: "stopped by an internal error"}.get(status)
        try:
            _junit_suite_properties(self.config, self.ls.records)
        except Exception as exc:  # noqa: BLE001
            self.ls.error(f"latentaudit: JUnit properties: {type(exc).__name__}: {exc}")
        try:
            failed = self.ls.finish(interrupted=interrupted)
        except Exception as exc:  # noqa: BLE001 - never lose the JUnit XML or the summary
            self.ls.error(f"latentaudit: session end failed: {type(exc).__name__}: {exc}")
            failed = True
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if hasattr(config, "workerinput") or not (self.ls.records or self.ls.messages or self.ls.carried):
            return
        from ..report.terminal import claim_lines, cut_short_lines, summary_table

        tr = terminalreporter
        tr.section("latent audit summary")
        if self.ls.records:
            for line in summary_table(self.ls.records):
                tr.write_line(line)
        for line in cut_short_lines(self.ls.records):
            tr.write_line(line, yellow=True)
        if self.ls.carried:
            tr.write_line(f"{len(self.ls.carried)} test(s) did not run: their records are carried over from the "
                          f"earlier spec sheet (marked carried_over)")
        for line in claim_lines(self.ls.sheet_records or self.ls.records):
            tr.write_line(line, yellow=True)
        if self.ls.written:
            tr.write_line(f"spec sheet: {self.ls.written}")
        for line, failed in self.ls.messages:
            tr.write_line(line, red=failed, bold=failed)


def _junit_suite_properties(config, records):
    if not records:
        return
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - very old pytest
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return

    verdicts = {}
    for r in records:
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
    xml.add_global_property("latentaudit_tests", len(records))
    for v in (PROVED, VIOLATED, UNPROVEN, ESTIMATED):
        xml.add_global_property(f"latentaudit_{v}", verdicts.get(v, 0))
    for r in records:
        c = r.counts
        xml.add_global_property(f"latentaudit:{r.key}",
                                f"{r.verdict} direction={r.direction} eps={r.eps:g} "
                                f"verified={c.verified} falsified={c.falsified} unknown={c.unknown}")
