"""One implementation of each rule: the typed records and the shipped schema agree, the
vocabulary is spelled once, the largest proved eps counts sweep points everywhere, sheets are
loaded (and rejected) in one place, and ``latentaudit diff`` agrees with ``--latent-compare``."""
from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
from conftest import MODES, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit.plugin import _warm_up

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run
from pytest_latentaudit import cli
from pytest_latentaudit.sheet import schema
from pytest_latentaudit.core import vocab
from pytest_latentaudit.sheet.coverage import compare, coverage_summary
from pytest_latentaudit.sheet.records import (CounterexampleRecord, Counts, PixelCrosscheckRecord, SheetFormatError,
                                        SweepPoint, TestRecord, largest_proved_eps)
from pytest_latentaudit.sheet.specsheet import SpecSheet, read_sheet


def full_record(**changes) -> TestRecord:
    """A record with every field set."""
    r = TestRecord(
        nodeid="tests/test_x.py::test_pose", direction="pose", eps=0.5, verdict="proved",
        counts=Counts(3, 1, 0), n_seeds=4, verified_fraction=0.75, at_least=0.75,
        spec={"kind": "accuracy", "at_least": 0.75}, spec_text="Accuracy(at_least=0.75)",
        direction_info={"kind": "axis", "k": 1, "axis": 0}, evidence="proved", engine="auto",
        rungs={"ibp": 3, "attack": 1}, seconds=0.25, budget=3.0, device="cpu", precision="float32", seed=7,
        model_fingerprint="sha256:ab", failing_bound=None,
        counterexamples=[CounterexampleRecord(seed_index=2, offset=[0.4], offset_eps=[0.8], predicted=1, expected=0,
                                              margin=0.3, image="sheet-counterexamples/x.png")],
        notes=["a note"], segment={"seeds": 4, "mean_fraction": 1.0, "min_fraction": 1.0, "exact": True},
        estimate={"fraction": 0.9, "lower": 0.8, "upper": 0.95, "confidence": 0.99, "samples": 100},
        declared_directions=["light", "pose"],
        latent_range={"lower": [-1.0], "upper": [1.0], "mean": [0.0], "std": [0.5], "eps": 0.5, "n_seeds": 4,
                      "kind": "axis", "k": 1, "axis": 0},
        data_fingerprint="sha256:cd", validity={"direction": "pose", "eps": 0.5, "ok": True},
        sweep=[SweepPoint(eps=0.3, verdict="proved", counts=Counts(4, 0, 0), verified_fraction=1.0, evidence="proved",
                          seconds=0.1)],
        certified_radius={"n": 4, "eps_max": 1.0, "mean": 0.5, "quantiles": {"median": 0.5},
                          "histogram": {"edges": [0.0, 1.0], "counts": [4]}},
        pixel_crosscheck=PixelCrosscheckRecord(
            eps=0.05, n_proved=3, n_attackable=1, fraction_attackable=1 / 3, n_seeds=4, n_attackable_at_nominal=0,
            direction="pose", latent_eps=0.5, nodeid="tests/test_x.py::test_pose",
            counterexamples=[{"seed": 1, "label": 0, "predicted": 1, "linf": 0.05, "margin": 0.1, "at_nominal": False}],
            extra={"steps": 40, "step_size": 0.003, "restarts": 1, "seed": 0, "clip": [0.0, 1.0],
                   "label_source": "labels"}),
        cut_short=["certified radius (searched 2/4 seeds)"],
        interrupted={"reason": "pytest-timeout (Timeout >5.0s)", "stage": "certified radius", "after_s": 4.0},
        outcome="failed", attempts=2, carried_over={"from": "2026-01-01T00:00:00+00:00"},
        extra={"owner": "team-vision"})
    return dataclasses.replace(r, **changes)


# ------------------------------------------------------------------ vocabulary
def test_vocabulary_is_spelled_once():
    from pytest_latentaudit import api
    from pytest_latentaudit.plugin import options
    from pytest_latentaudit.engines import ladder

    assert (api.PROVED, api.VIOLATED, api.UNPROVEN, api.ESTIMATED) == (
        vocab.PROVED, vocab.VIOLATED, vocab.UNPROVEN, vocab.ESTIMATED)
    assert (ladder.VERIFIED, ladder.FALSIFIED, ladder.UNKNOWN) == vocab.STATUSES
    assert tuple(ladder.ENGINES) == vocab.ENGINES == options.ENGINE_CHOICES
    assert options.LIRPA_METHODS is vocab.LIRPA_METHODS
    s = schema.load_schema()["$defs"]
    assert set(s["verdict"]["enum"]) == set(vocab.VERDICTS)
    assert set(s["evidence"]["enum"]) == set(vocab.EVIDENCE)
    assert set(s["test"]["properties"]["outcome"]["enum"]) == set(vocab.OUTCOMES)


def test_one_verdict_ranking():
    assert vocab.is_worse("violated", "estimated") and vocab.is_worse("unproven", "estimated")
    assert not vocab.is_worse("estimated", "unproven") and not vocab.is_worse("proved", "violated")
    assert vocab.worst(["proved", "estimated", "unproven"]) == "unproven"
    from pytest_latentaudit.sheet import coverage
    from pytest_latentaudit.report import html as html_report

    assert coverage.VERDICT_RANK is vocab.VERDICT_RANK and html_report.VERDICT_RANK is vocab.VERDICT_RANK


# ------------------------------------------------------------------ typed records and the schema
def test_record_round_trip_and_schema():
    pytest.importorskip("jsonschema")
    r = full_record()
    data = r.to_json()
    assert TestRecord.from_json(json.loads(json.dumps(data))) == r
    sheet = SpecSheet.build([r, full_record(nodeid="tests/test_x.py::test_b", carried_over=None)], tool_version="0")
    schema.validate(sheet.data)
    assert sheet.data["summary"]["carried_over"] == 1
    assert sheet.data["tests"][1]["owner"] == "team-vision"  # a hook's field survives


def test_every_record_field_is_in_the_schema():
    defs = schema.load_schema()["$defs"]
    for cls, name in ((TestRecord, "test"), (SweepPoint, "sweep_point"), (CounterexampleRecord, "counterexample"),
                      (Counts, "counts"), (PixelCrosscheckRecord, "pixel_crosscheck")):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        assert names <= set(defs[name]["properties"]), (name, names - set(defs[name]["properties"]))


@pytest.mark.parametrize("change, message", [
    ({"eps": "big"}, r"tests\[0\]: 'eps' must be a number"),
    ({"eps": -1}, r"'eps' must lie in"),
    ({"verdict": "maybe"}, r"'verdict' must be one of proved"),
    ({"counts": {"verified": 1}}, r"tests\[0\]\.counts: missing 'falsified'"),
    ({"counts": [1, 2, 3]}, r"tests\[0\]\.counts: must be an object"),
    ({"sweep": [{"eps": 0.1}]}, r"tests\[0\]\.sweep\[0\]: missing 'verdict'"),
    ({"counterexamples": ["x"]}, r"counterexamples\[0\]: must be an object"),
    ({"nodeid": None}, r"missing 'nodeid'"),
    # the range guard's keys (deploy.in_spec reads them): checked against each other
    ({"latent_range": {"lower": [-1.0], "upper": [1.0, 2.0]}}, r"latent_range: 'upper' has 2 coordinate\(s\)"),
    ({"latent_range": {"lower": [-1.0], "upper": [1.0], "kind": "axis"}}, r"latent_range: an axis direction needs"),
    ({"latent_range": {"lower": [0.0], "upper": [1.0], "kind": "vector", "k": 1, "basis": [[1.0, 0.0]]}},
     r"'basis' rows must have k=1"),
    ({"latent_range": {"lower": [0.0], "upper": [1.0], "kind": "cone"}}, r"'kind' must be one of axis"),
    ({"pixel_crosscheck": {"eps": 0.1, "n_proved": 1, "n_attackable": 2, "fraction_attackable": 1.0}},
     r"pixel_crosscheck: 'n_attackable' \(2\) exceeds 'n_proved' \(1\)"),
])
def test_malformed_records_name_the_field(change, message):
    good = full_record().to_json()
    bad = {"schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0"}, "tests": [dict(good, **change)]}
    with pytest.raises(SheetFormatError, match=message):
        read_sheet(bad)


@pytest.mark.parametrize("data, message", [
    ([], "is not a latentaudit spec sheet"),
    ({"schema_version": 1, "tests": {"a": 1}}, "'tests' must be a list"),
    ({"schema_version": "1", "tests": []}, "'schema_version' must be an integer"),
    ({"schema_version": 1, "tests": [], "directions": [1]}, "'directions' must map"),
    ({"schema_version": 1, "tests": [], "summary": "x"}, "'summary' must be an object"),
])
def test_structurally_wrong_sheets(tmp_path, data, message):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    with pytest.raises(SheetFormatError, match=message):
        read_sheet(p)


def test_duplicate_records_are_rejected():
    r = full_record().to_json()
    with pytest.raises(SheetFormatError, match="already recorded"):
        read_sheet({"schema_version": 1, "tests": [r, r]})


# ------------------------------------------------------------------ the largest proved eps
def _sheet_with_sweep():
    """The issue's case: the test is proved at 0.1, its sweep proves 0.3."""
    r = full_record(nodeid="t.py::test_a", eps=0.1, carried_over=None, interrupted=None, cut_short=[],
                    sweep=[SweepPoint(eps=0.3, verdict="proved", counts=Counts(4, 0, 0), verified_fraction=1.0),
                           SweepPoint(eps=0.6, verdict="unproven", counts=Counts(2, 0, 2), verified_fraction=0.5)])
    return SpecSheet.build([r], tool_version="0", commit={})


def test_largest_proved_eps_is_one_rule(tmp_path, capsys):
    from pytest_latentaudit.report.html import build_html

    sheet = _sheet_with_sweep()
    assert largest_proved_eps(sheet.records) == {"pose": 0.3}
    assert sheet.directions()["pose"]["proved_eps"] == 0.3
    assert coverage_summary(sheet)["per_direction"]["pose"]["proved_eps"] == 0.3
    assert sheet.data["directions"]["pose"]["proved_eps"] == 0.3
    assert "proved up to eps=0.3" in build_html(sheet.data, images=False)
    p = sheet.save(tmp_path / "s.json")
    assert cli.main(["show", str(p)]) == 0
    # the operating range says which spec (and threshold) it is a range of
    assert ("  pose: proved up to eps=0.3 (proved 1); operating range for Accuracy(at_least=0.75)"
            in capsys.readouterr().out.splitlines())


def test_radius_summary_has_one_quantile_rule():
    from pytest_latentaudit.sheet import deploy
    from pytest_latentaudit.plugin import session

    assert not hasattr(session, "radius_summary")  # the session records deploy.certified_radius_summary
    s = deploy.certified_radius_summary([0.5, 0.7, 1.0, 1.2], 2.0)
    assert s["quantiles"]["median"] == pytest.approx(0.85) and s["n"] == 4


# ------------------------------------------------------------------ diff and --latent-compare agree
def _indented_block(lines):
    """The lines indented under a header, up to the first that is not (what follows, e.g.
    pytest's untruncated failure messages under CI=true, is not part of the list)."""
    block = []
    for line in lines:
        if not line.startswith("  "):
            break
        block.append(line.strip())
    return sorted(block)


def _regressions_of_compare(out: str):
    return _indented_block(out.split("regression(s) against the baseline", 1)[1].splitlines()[1:])


def _regressions_of_diff(out: str):
    return _indented_block(out.splitlines()[1:])


PAIR_OLD = '''
    import pytest
    from pytest_latentaudit import Accuracy, Invariance

    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False)
    def test_a(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(at_least=0.9), engine="falsify", radius=False)
    def test_estimated(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(), engine="falsify", radius=False)
    def test_unproven(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''


@pytest.mark.parametrize("mode", MODES)
def test_diff_and_compare_report_the_same_regressions(pytester, mode, capsys):
    """estimated -> violated is a regression, unproven -> estimated is not (the CLI's old table
    had no ``estimated``), proved -> violated is, and the proved radius of 'pose' shrank."""
    write_project(pytester.path, {"test_pair.py": PAIR_OLD})
    args = ["-p", "no:cacheprovider", "--latent-estimated", "pass", "--latent-unproven", "xfail", *mode_args(mode)]
    first = pytester.runpytest_inprocess(*args, "--latent-spec-sheet", "old.json")
    assert first.ret == 0, first.stdout.str()
    old = load_sheet(pytester.path / "old.json")
    verdicts = {r["nodeid"].split("::")[-1]: r["verdict"] for r in old["tests"]}
    assert verdicts == {"test_a": "proved", "test_estimated": "estimated", "test_unproven": "unproven"}
    new_src = (PAIR_OLD.replace('eps=0.5, spec=Accuracy(), radius=False)\n    def test_a',
                                'eps=2.5, spec=Accuracy(), radius=False)\n    def test_a')
               .replace('direction="light", eps=0.5', 'direction="pose", eps=3.0')
               .replace('direction="tilt", eps=0.5, spec=Accuracy(), engine="falsify"',
                        'direction="light", eps=0.5, spec=Accuracy(at_least=0.9), engine="falsify"'))
    write_project(pytester.path, {"test_pair.py": new_src})
    second = pytester.runpytest_inprocess(*args, "--latent-spec-sheet", "new.json", "--latent-compare", "old.json")
    assert second.ret == pytest.ExitCode.TESTS_FAILED
    out = second.stdout.str()
    from_plugin = _regressions_of_compare(out)
    capsys.readouterr()
    assert cli.main(["diff", str(pytester.path / "old.json"), str(pytester.path / "new.json"), "--fail"]) == 1
    from_cli = _regressions_of_diff(capsys.readouterr().out)
    assert from_plugin == from_cli, (from_plugin, from_cli)
    assert any(re.search(r"test_estimated: verdict estimated -> violated", x) for x in from_cli)
    assert any(re.search(r"test_a: verdict proved -> violated", x) for x in from_cli)
    assert not any("test_unproven" in x for x in from_cli)  # unproven -> estimated: better
    new = load_sheet(pytester.path / "new.json")
    assert {r["nodeid"].split("::")[-1]: r["verdict"] for r in new["tests"]}["test_unproven"] == "estimated"


def test_compare_function_is_shared():
    """``cli.diff_sheets`` is ``coverage.compare``'s messages."""
    sheet = _sheet_with_sweep()
    worse = copy.deepcopy(sheet.data)
    worse["tests"][0]["verdict"] = "estimated"
    assert cli.diff_sheets(sheet, worse) == [r["message"] for r in compare(sheet, worse).regressions]
    assert cli.diff_sheets(sheet, worse) == ["t.py::test_a: verdict proved -> estimated"]


def test_unknown_margins_read_as_none_and_print_as_unknown():
    from pytest_latentaudit.report.terminal import failure_message

    d = full_record().to_json()
    d["counterexamples"][0]["margin"] = float("nan")
    d["failing_bound"] = float("nan")
    r = TestRecord.from_json(d)
    assert r.counterexamples[0].margin is None and r.failing_bound is None
    assert "(margin unknown; re-checked" in failure_message(r)
    d["counterexamples"][0].pop("margin")
    with pytest.raises(SheetFormatError, match=r"counterexamples\[0\]: missing 'margin'"):
        TestRecord.from_json(d)
