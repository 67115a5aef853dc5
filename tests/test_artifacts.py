"""Artifacts that survive ordinary accidents: Ctrl-C never replaces an earlier sheet; an
unwritable sheet or report path and a broken baseline become one clear error line and a
failing exit while the JUnit XML and the terminal summary are still written; a counterexample
picture that cannot be saved is a warning, never a test failure."""
from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from conftest import MODES, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit.plugin import _warm_up

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run

TESTS = '''
    import os
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False)
    def test_a_proved(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="pose", eps=1.2, spec=Accuracy(at_least=0.5), radius=False)
    def test_b_proved_with_counterexamples(latent_audit, head, seeds):
        latent_audit(head, seeds)

    def test_c_stop():
        if os.environ.get("LATENT_CTRL_C"):
            raise KeyboardInterrupt

    @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(), radius=False)
    def test_d_after(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''


def run(pytester, mode, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), *args)


def no_crash(result):
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text and "Traceback (most recent call last)" not in text, text


def junit_cases(path):
    return {tc.get("name") for tc in ElementTree.parse(path).iter("testcase")}


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_keeps_the_earlier_sheet_byte_identical_and_a_missing_baseline_is_a_note_and_image_failure_a_warning(
        pytester, mode, monkeypatch):
    """(The first run is also the image-failure check: like a missing baseline, a picture that
    cannot be saved must leave the exit code at OK, so one run checks both.)"""
    write_project(pytester.path, {"test_art.py": TESTS})
    (pytester.path / "blocker").write_text("not a folder\n")
    first = run(pytester, mode, "--latent-spec-sheet", "sheet.json", "--latent-report", "report.html",
                "--latent-compare", "nope.json", "--latent-artifacts", "blocker/pictures",
                "-W", "always::pytest_latentaudit.CounterexampleImageWarning")
    first.assert_outcomes(passed=4)  # the proved test with counterexamples still passes
    # a missing baseline is a note, not a failure; a picture that cannot be saved is a warning, not a failure
    assert first.ret == pytest.ExitCode.OK
    assert "latent compare: no baseline at" in first.stdout.str()
    out = first.stdout.str()
    assert "CounterexampleImageWarning" in out and "could not save the counterexample image" in out
    rec = {r["nodeid"].split("::")[-1]: r for r in load_sheet(pytester.path / "sheet.json")["tests"]}
    cexs = rec["test_b_proved_with_counterexamples"]["counterexamples"]
    assert rec["test_b_proved_with_counterexamples"]["verdict"] == "proved" and cexs
    assert all("image" not in c for c in cexs)

    sheet, report = pytester.path / "sheet.json", pytester.path / "report.html"
    before, report_before = sheet.read_bytes(), report.read_bytes()
    monkeypatch.setenv("LATENT_CTRL_C", "1")
    args = ("-p", "no:cacheprovider", *mode_args(mode), "--latent-spec-sheet", "sheet.json", "--latent-report",
            "report.html")
    # in-process, with xdist too: pytest (the controller under xdist) turns the KeyboardInterrupt into
    # exit code 2, and no_reraise_ctrlc keeps pytester from re-raising it into this session
    second = pytester.runpytest_inprocess(*args, no_reraise_ctrlc=True)
    assert second.ret == pytest.ExitCode.INTERRUPTED
    assert sheet.read_bytes() == before and report.read_bytes() == report_before
    assert "spec sheet not written: the run was interrupted" in second.stdout.str()
    assert not [p.name for p in pytester.path.iterdir() if p.name.startswith(".sheet.json")]  # no temp files


# Each failure alone without xdist; with xdist (where the controller writes what the workers
# sent) both in one run, each reported once: the runs would differ only by these options.
@pytest.mark.parametrize("mode, what", [("serial", ("sheet",)), ("serial", ("report",)),
                                        ("xdist", ("sheet", "report"))],
                         ids=["serial-sheet", "serial-report", "xdist-sheet-and-report"])
def test_unwritable_path_is_one_error_and_junit_survives(pytester, mode, what):
    write_project(pytester.path, {"test_art.py": TESTS})
    (pytester.path / "blocker").write_text("a file where a folder should be\n")
    target = ["--latent-spec-sheet", "blocker/sheet.json" if "sheet" in what else "out/sheet.json"]
    if "report" in what:
        target += ["--latent-report", "blocker/report.html"]
    result = run(pytester, mode, *target, "--junitxml", "junit.xml")
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    no_crash(result)
    out = result.stdout.str()
    errors = [line for line in result.outlines if line.startswith("latentaudit: cannot write")]
    assert len(errors) == len(what), out
    for artifact, line in zip(what, errors):  # the sheet is written (and fails) before the report
        assert ("the spec sheet" if artifact == "sheet" else "the HTML report") in line
        assert "blocker" in line
    assert "latent audit summary" in out and "test_a_proved" in out.split("latent audit summary")[1]
    assert junit_cases(pytester.path / "junit.xml") == {"test_a_proved", "test_b_proved_with_counterexamples",
                                                         "test_c_stop", "test_d_after"}
    if what == ("report",):  # the sheet itself was written
        assert len(load_sheet(pytester.path / "out" / "sheet.json")["tests"]) == 3


BROKEN_BASELINES = [
    ({"schema_version": 1, "tests": [{"nodeid": "x"}]}, "tests[0]: missing 'direction'"),
    ([1, 2], "is not a latentaudit spec sheet"),
    ({"schema_version": 1, "tests": "all of them"}, "'tests' must be a list"),
]


# Every kind of broken baseline without xdist; with xdist one (the controller reads the
# baseline the same way whatever the workers do; what xdist could change is how often the
# error is reported and whether the JUnit XML survives).
@pytest.mark.parametrize("mode, baseline, message", [("serial", *b) for b in BROKEN_BASELINES] +
                         [("xdist", *BROKEN_BASELINES[0])],
                         ids=["serial-entry", "serial-not-a-sheet", "serial-tests-not-a-list", "xdist-entry"])
def test_broken_baseline_is_one_error_and_junit_survives(pytester, mode, baseline, message):
    write_project(pytester.path, {"test_art.py": TESTS})
    (pytester.path / "old.json").write_text(json.dumps(baseline))
    result = run(pytester, mode, "--latent-spec-sheet", "sheet.json", "--latent-compare", "old.json",
                 "--junitxml", "junit.xml")
    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    no_crash(result)
    errors = [line for line in result.outlines if line.startswith("latent compare: cannot use the baseline")]
    assert len(errors) == 1 and message in errors[0], result.stdout.str()
    assert len(junit_cases(pytester.path / "junit.xml")) == 4
    assert len(load_sheet(pytester.path / "sheet.json")["tests"]) == 3


def test_session_end_hook_errors_do_not_lose_junit(pytester):
    conftest = (pytester.path / "conftest.py")
    write_project(pytester.path, {"test_art.py": TESTS})
    conftest.write_text(conftest.read_text() + '''

def pytest_latentaudit_sheet(sheet, config):
    raise RuntimeError("my exporter is broken")
''')
    result = run(pytester, "serial", "--latent-spec-sheet", "sheet.json", "--junitxml", "junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    no_crash(result)
    assert [line for line in result.outlines
            if "pytest_latentaudit_sheet hook: RuntimeError: my exporter is broken" in line]
    assert len(junit_cases(pytester.path / "junit.xml")) == 4
    assert (pytester.path / "sheet.json").exists()


def test_an_interrupted_run_leaves_the_pictures_of_the_earlier_sheet_alone(pytester, monkeypatch):
    """The earlier sheet is kept after Ctrl-C, and so must be what it shows: a test that ran
    before the interrupt and found other counterexamples wrote its pictures under the names the
    kept sheet points to, so the sheet (and a report rendered from it) showed pictures of
    counterexamples it does not record."""
    write_project(pytester.path, {"test_art.py": TESTS})
    args = ("-p", "no:cacheprovider", "--latent-spec-sheet", "sheet.json")
    assert pytester.runpytest_inprocess(*args).ret == pytest.ExitCode.OK
    sheet = pytester.path / "sheet.json"
    before = sheet.read_bytes()
    cexs = {r["nodeid"].split("::")[-1]: r for r in json.loads(before)["tests"]}[
        "test_b_proved_with_counterexamples"]["counterexamples"]
    pictures = {c["image"]: (pytester.path / c["image"]).read_bytes() for c in cexs if c.get("image")}
    assert pictures
    src = pytester.path / "test_art.py"
    src.write_text(src.read_text().replace("eps=1.2", "eps=1.6"))  # other counterexamples
    monkeypatch.setenv("LATENT_CTRL_C", "1")
    second = pytester.runpytest_inprocess(*args, no_reraise_ctrlc=True)
    assert second.ret == pytest.ExitCode.INTERRUPTED
    assert sheet.read_bytes() == before
    assert {name: (pytester.path / name).read_bytes() for name in pictures} == pictures
