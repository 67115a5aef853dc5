"""pytest entry point: options, the ``latent`` marker, the ``latent_audit`` fixture and
reporting hooks. Kept thin: the work happens in session.py / api.py, and nothing here
imports torch, so loading the plugin stays cheap for suites that never use it."""
from __future__ import annotations

from pathlib import Path

import pytest

from .options import OPTIONS, UsageError, from_config

SESSION_KEY = pytest.StashKey["LatentSession"]()
RECORD_KEY = pytest.StashKey[dict]()

MARKER_DOC = ("latent(direction, eps, spec, engine=None, budget=None, device=None, unproven=None, estimated=None, "
              "precision=None, attack='sign'|'adam'|'blackbox', sweep=[eps, ...], radius=True, validity=True): "
              "a semantic unit test run by the latent_audit fixture: the spec must hold for every variation of at "
              "most eps along the named direction of the latent space. sweep records extra radii for the "
              "spec sheet's curve without changing pass/fail; radius records each seed's largest certified "
              "radius (up to 2*eps); validity records continuity and realism checks of the direction "
              "(with a decoder) and warns on problems. Keyword arguments override the --latent-* options for this test.")


def pytest_addoption(parser):
    group = parser.getgroup("latentaudit", "semantic unit tests (pytest-latentaudit)")
    flags = {
        "engine": dict(metavar="ENGINE"), "device": dict(metavar="auto|cpu|cuda"),
        "budget": dict(metavar="SECONDS"), "spec_sheet": dict(metavar="PATH"),
        "unproven": dict(metavar="fail|xfail|skip"), "estimated": dict(metavar="pass|fail|xfail|skip"), "seed": dict(metavar="INT"),
        "artifacts": dict(metavar="DIR"), "precision": dict(metavar="float32|float64"),
        "report": dict(metavar="PATH"), "coverage_fail_under": dict(metavar="PCT"),
        "compare": dict(metavar="OLD_SHEET"),
    }
    for name, (help_, default) in OPTIONS.items():
        flag = "--latent-" + name.replace("_", "-")
        group.addoption(flag, dest=f"latent_{name}", default=None,
                        help=f"{help_} (default: {default or 'none'}; ini: latent_{name})", **flags[name])
        parser.addini(f"latent_{name}", help_, default="")
    group.addoption("--latent-junit-properties", dest="latent_junit_properties", action="store_true",
                    default=False, help="add per-test <properties> (verdict, counts) to JUnit XML; strict "
                                        "xunit2 validators reject them, so they are off by default")
    parser.addini("latent_space_fixture", "name of the fixture that provides the LatentSpace",
                  default="latent_space")


def pytest_addhooks(pluginmanager):
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


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
    except UsageError as exc:
        raise pytest.UsageError(f"pytest-latentaudit: {exc}") from None
    from .session import LatentSession

    ls = LatentSession(settings, Path(str(config.rootpath)), config=config)
    config.stash[SESSION_KEY] = ls
    config.pluginmanager.register(_SessionHooks(config, ls), "latentaudit-session")


def pytest_report_header(config):
    session = config.stash.get(SESSION_KEY, None)
    return session.settings.header() if session else None


_MISSING = object()


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
            raise pytest.UsageError("@pytest.mark.latent takes keyword arguments only "
                                    "(direction=..., eps=..., spec=...)")
        name = session.settings.latent_space_fixture
        try:
            space = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            space = _MISSING
        if space is _MISSING:  # failed outside the except block so the message shows once
            pytest.fail(f"latent_audit needs a fixture named {name!r} that returns a LatentSpace "
                        f"(define it in conftest.py, or set the ini option latent_space_fixture)", pytrace=False)
        from .latent import LatentAuditError, LatentSpace

        if not isinstance(space, LatentSpace):
            pytest.fail(f"fixture {name!r} returned {type(space).__name__}, not a LatentSpace", pytrace=False)
        error = None
        try:
            result, record, settings = session.run(request.node.nodeid, kwargs, space, model, seeds, labels,
                                                   overrides, cache=getattr(request.config, "cache", None),
                                                   engines=registry(request.config, "engines"),
                                                   falsifiers=registry(request.config, "falsifiers"))
        except (LatentAuditError, UsageError, TypeError, ValueError) as exc:
            error = f"latent_audit: {exc}"
        if error is not None:
            pytest.fail(error, pytrace=False)
        request.config.hook.pytest_latentaudit_record(record=record, item=request.node)
        request.node.stash[RECORD_KEY] = record
        if session.settings.junit_properties:
            for key in ("verdict", "eps", "direction"):
                request.node.user_properties.append((f"latent_{key}", record[key]))
            for key, val in record["counts"].items():
                request.node.user_properties.append((f"latent_{key}", val))
        from .report import failure_message

        if record["verdict"] == "violated":
            pytest.fail(failure_message(record), pytrace=False)
        if record["verdict"] in ("unproven", "estimated"):
            action = settings.unproven if record["verdict"] == "unproven" else settings.estimated
            msg = failure_message(record)
            if action == "xfail":
                pytest.xfail(msg)
            elif action == "skip":
                pytest.skip(msg)
            elif action == "fail":
                pytest.fail(msg, pytrace=False)
        return result


@pytest.fixture
def latent_audit(request):
    """Run the semantic test declared by ``@pytest.mark.latent`` on ``(model, seeds)``.

    ``latent_audit(model, seeds)`` with seeds ``(z, labels)`` proves or falsifies the spec,
    records the result in the spec sheet and fails the test on a violated (or, by default,
    unproven) verdict. Returns the ``AuditResult``.
    """
    return LatentAudit(request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = item.stash.get(RECORD_KEY, None)
    if record is not None and call.when == "call":
        # travels with the report, so xdist workers need no extra channel
        report.latentaudit = record


class _SessionHooks:
    """Controller-side hooks bound to one config (pytester runs nest sessions in-process)."""

    def __init__(self, config, latent_session):
        self.config = config
        self.ls = latent_session

    def pytest_runtest_logreport(self, report):
        record = getattr(report, "latentaudit", None)
        if record is None or report.when != "call":
            return
        rec = dict(record)
        xfail = hasattr(report, "wasxfail")
        rec["outcome"] = ("xfailed" if report.skipped else "xpassed") if xfail else report.outcome
        self.ls.add(rec)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput"):
            return  # xdist worker: records travel with the reports; the controller writes
        _junit_suite_properties(self.config, self.ls.records)
        self.ls.written = self.ls.write_sheet()
        if self.ls.finish() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if hasattr(config, "workerinput") or not (self.ls.records or self.ls.messages):
            return
        from .report import summary_table

        tr = terminalreporter
        tr.section("latent audit summary")
        if self.ls.records:
            for line in summary_table(sorted(self.ls.records, key=lambda r: r["nodeid"])):
                tr.write_line(line)
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
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    xml.add_global_property("latentaudit_tests", len(records))
    for v in ("proved", "violated", "unproven", "estimated"):
        xml.add_global_property(f"latentaudit_{v}", verdicts.get(v, 0))
    for r in sorted(records, key=lambda r: r["nodeid"]):
        c = r["counts"]
        xml.add_global_property(f"latentaudit:{r['nodeid']}",
                                f"{r['verdict']} direction={r['direction']} eps={r['eps']:g} "
                                f"verified={c['verified']} falsified={c['falsified']} unknown={c['unknown']}")
