"""Plays well with the plugins users run: one record per test under pytest-rerunfailures (the
last attempt wins, as pytest's JUnit does); a test stopped by pytest-timeout is recorded as
interrupted, and the latent budget stays below the timeout."""
from __future__ import annotations

import pytest
from conftest import MODES, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit.plugin import _warm_up

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run

RERUNS = '''
    import pathlib
    import pytest
    from pytest_latentaudit import Accuracy

    def attempt(name):
        p = pathlib.Path(__file__).parent / f".attempts-{name}"
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        return n

    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False)
    def test_flaky(latent_audit, head, seeds):
        # the first attempt audits a larger radius (violated), the rerun the real one
        n = attempt("flaky")
        latent_audit(head, seeds, eps=2.5 if n == 1 else 0.5)

    @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(), radius=False)
    def test_always_violated(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(), radius=False)
    def test_proved(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''


@pytest.mark.parametrize("mode", MODES)
def test_one_record_per_test_under_reruns(pytester, mode):
    pytest.importorskip("pytest_rerunfailures")
    write_project(pytester.path, {"test_reruns.py": RERUNS})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--reruns", "1", *mode_args(mode),
                                          "--latent-spec-sheet", "sheet.json", "--junitxml", "junit.xml")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("rerun")) == (2, 1, 2), outcomes
    sheet = load_sheet(pytester.path / "sheet.json")
    recs = {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}
    assert len(sheet["tests"]) == 3 and set(recs) == {"test_flaky", "test_always_violated", "test_proved"}
    assert (recs["test_flaky"]["verdict"], recs["test_flaky"]["eps"], recs["test_flaky"]["outcome"],
            recs["test_flaky"]["attempts"]) == ("proved", 0.5, "passed", 2)  # the last attempt wins
    assert (recs["test_always_violated"]["outcome"], recs["test_always_violated"]["attempts"]) == ("failed", 2)
    assert "attempts" not in recs["test_proved"]
    assert sheet["summary"]["tests"] == 3 and sheet["summary"]["verdicts"] == {"proved": 2, "violated": 1}
    summary = result.stdout.str().split("latent audit summary", 1)[1]
    assert summary.count("test_flaky") == 1


TIMEOUTS = '''
    import time
    import pytest
    from torch import nn
    from pytest_latentaudit import Accuracy


    class Slow(nn.Module):
        def __init__(self, inner, seconds):
            super().__init__()
            self.inner, self.seconds = inner, seconds

        def forward(self, z):
            time.sleep(self.seconds)
            return self.inner(z)


    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False)
    def test_killed(latent_audit, head, seeds):
        latent_audit(Slow(head, 30.0), seeds)


    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), sweep=[0.25])
    def test_capped(latent_audit, head, seeds):
        latent_audit(head, seeds)


    @pytest.mark.timeout(30)
    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, budget=5)
    def test_marker_timeout(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_recorded_as_interrupted_and_caps_the_budget(pytester, mode):
    pytest.importorskip("pytest_timeout")
    write_project(pytester.path, {"test_timeouts.py": TIMEOUTS})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--timeout", "4", "--timeout-method", "signal",
                                          *mode_args(mode), "--latent-spec-sheet", "sheet.json")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "Timeout" in out
    recs = {r["nodeid"].split("::")[-1]: r for r in load_sheet(pytester.path / "sheet.json")["tests"]}
    killed = recs["test_killed"]
    assert killed["outcome"] == "failed" and killed["verdict"] == "unproven"
    assert killed["interrupted"]["reason"].startswith("pytest-timeout") and killed["interrupted"]["stage"] == "audit"
    assert killed["counts"] == {"verified": 0, "falsified": 0, "unknown": 4}
    assert killed["cut_short"] == ["audit"]
    assert "test_killed: interrupted (pytest-timeout" in out  # the terminal says what was cut short
    capped = recs["test_capped"]
    assert capped["verdict"] == "proved" and capped["budget"] <= 0.8 * 4
    assert any("budget capped at" in n and "pytest-timeout limit (4 s)" in n for n in capped["notes"])
    assert recs["test_marker_timeout"]["budget"] == 5  # the marker's timeout (30 s) leaves the budget alone
