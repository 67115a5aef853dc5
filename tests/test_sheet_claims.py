"""What the spec sheet may claim: one rule (``records.claims``) read by the plugin, the CLI,
the reports, coverage and the deployment guard.

* A carried-over record of a model that has since changed (a re-run test of the same model
  now has another fingerprint) is **stale**: kept, shown, never part of a proved range.
* A test that calls ``latent_audit`` twice keeps both records (``call`` 1 and 2); its outcome
  and JUnit verdict are the worst of them.
* Merging shards never raises a claim: two differing records of one test and model keep the
  worse.
* A ``pytest_latentaudit_record`` hook may add fields, never change what the audit found.
* A spec that holds whatever the model does (``Accuracy(at_least=0)``, an empty ``Linear``) is
  **vacuous**: it proves no operating range.
"""
from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import pytest
from conftest import MODES, PROJECT_CONFTEST, load_sheet, mode_args, records_by_test, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
from pytest_latentaudit import cli
from pytest_latentaudit.plugin import _warm_up
from pytest_latentaudit.sheet import deploy, schema
from pytest_latentaudit.sheet.coverage import coverage_summary
from pytest_latentaudit.sheet.records import TestRecord, parse_records
from pytest_latentaudit.sheet.specsheet import SpecSheet, merge_sheets, read_sheet

_warm_up()

# ``head`` is "retrained" by writing another scale to scale.txt: positive scaling keeps every
# prediction (ReLU is positively homogeneous), so verdicts stay, the fingerprint changes.
CONFTEST = PROJECT_CONFTEST + '''

@pytest.fixture
def head():
    import pathlib
    import torch

    h = make_head()
    f = pathlib.Path(__file__).with_name("scale.txt")
    s = float(f.read_text()) if f.exists() else 1.0
    with torch.no_grad():
        for p in h.parameters():
            p.mul_(s)
    return h


@pytest.fixture
def other_head():
    return make_head()


@pytest.fixture
def edited_head():
    # "edited" by writing hook.txt: a forward hook doubles the logits (every prediction kept),
    # the weights stay as they are
    import pathlib

    h = make_head()
    if pathlib.Path(__file__).with_name("hook.txt").exists():
        h.register_forward_hook(lambda mod, inp, out: out * 2)
    return h
'''

FILES = {
    "test_pose.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
        def test_pose_a(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
    "test_light.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="light", eps=1.0, spec=Accuracy(), radius=False, validity=False)
        def test_light_a(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
    "test_other.py": '''
        import pytest
        from pytest_latentaudit import Invariance

        @pytest.mark.latent(direction="style", eps=0.5, spec=Invariance(), radius=False, validity=False)
        def test_other_style(latent_audit, other_head, seeds):
            latent_audit(other_head, seeds[0])
    ''',
}


def schema_available() -> bool:
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


def run(pytester, mode, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-engine", "linear", *mode_args(mode),
                                        *args)


# ------------------------------------------------------------------ 1. stale records
@pytest.mark.parametrize("mode", MODES)
def test_carried_records_of_a_retrained_model_are_stale_and_prove_nothing(pytester, mode, capsys):
    write_project(pytester.path, FILES, conftest=CONFTEST)
    p = pytester.path
    assert run(pytester, mode, "--latent-spec-sheet", "sheet.json").ret == 0
    full = load_sheet(p / "sheet.json")
    assert full["directions"]["light"]["latent_range"] is not None
    assert full["directions"]["light"]["proved_eps"] == 1.0
    old_fp = records_by_test(full)["test_light_a"]["model_fingerprint"]

    (p / "scale.txt").write_text("2.0")  # retrain `head`
    sub = run(pytester, mode, "-k", "pose", "--latent-spec-sheet", "sheet.json", "--latent-report", "r.html",
              "--junitxml", "j.xml")
    assert sub.ret == 0, sub.stdout.str()
    out = sub.stdout.str()
    sheet = load_sheet(p / "sheet.json")
    recs = records_by_test(sheet)
    new_fp = recs["test_pose_a"]["model_fingerprint"]
    assert new_fp != old_fp
    light = recs["test_light_a"]
    assert light["carried_over"] and light["model_fingerprint"] == old_fp
    assert light["stale"]["model_fingerprint"] == new_fp and "re-run" in light["stale"]["reason"]
    assert "stale" not in recs["test_other_style"]  # another model: nothing says it changed
    assert "stale" not in recs["test_pose_a"]
    # the operating range is the current model's only
    assert sheet["directions"]["light"]["latent_range"] is None
    assert sheet["directions"]["light"]["proved_eps"] is None
    assert all(g["stale"] for g in sheet["directions"]["light"]["ranges"])
    assert sheet["directions"]["style"]["proved_eps"] == 0.5
    assert sheet["directions"]["pose"]["latent_range"] is not None
    assert sheet["summary"]["stale"] == 1
    if schema_available():
        schema.validate(sheet)
    cov = coverage_summary(p / "sheet.json")
    assert cov["per_direction"]["light"]["proved_eps"] is None
    assert cov["per_direction"]["light"]["status"] != "proved" and "light" not in cov["directions_proved"]
    assert cov["per_direction"]["light"]["stale"] == 1
    z = [[1.0, 0.5, 0.0]]
    ok = deploy.in_spec(p / "sheet.json", z)
    assert "light" not in ok and "pose" in ok
    with pytest.raises(deploy.DeployError, match="light"):
        deploy.in_spec(p / "sheet.json", z, directions=["light"])
    # the terminal, the HTML report and `latentaudit show` say so
    assert "1 carried-over record(s) are stale" in out and "test_light.py::test_light_a" in out
    html = (p / "r.html").read_text()
    assert "stale" in html and "proved for an older model" in html
    capsys.readouterr()
    assert cli.main(["show", str(p / "sheet.json")]) == 0
    shown = capsys.readouterr().out
    assert "test_light_a !" in shown and "stale" in shown
    assert "light: proved up to eps=none" in shown
    # JUnit XML is about this run's tests only
    cases = {tc.get("name") for tc in ElementTree.parse(p / "j.xml").iter("testcase")}
    assert cases == {"test_pose_a"}

    # a run of another model's test only: the mark stays (nothing says `head` changed back)
    run(pytester, mode, "-k", "other", "--latent-spec-sheet", "sheet.json")
    again = records_by_test(load_sheet(p / "sheet.json"))
    assert again["test_light_a"]["stale"]["model_fingerprint"] == new_fp
    assert "stale" not in again["test_pose_a"]  # carried now, but of the current model
    assert load_sheet(p / "sheet.json")["directions"]["light"]["latent_range"] is None

    # re-running the stale test clears it
    run(pytester, mode, "-k", "light", "--latent-spec-sheet", "sheet.json")
    final = load_sheet(p / "sheet.json")
    assert not any(r.get("stale") for r in final["tests"])
    assert final["directions"]["light"]["proved_eps"] == 1.0 and final["directions"]["light"]["latent_range"]


EDITED = {
    "test_e_pose.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
        def test_e_pose(latent_audit, edited_head, seeds):
            latent_audit(edited_head, seeds)
    ''',
    "test_e_light.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="light", eps=1.0, spec=Accuracy(), radius=False, validity=False)
        def test_e_light(latent_audit, edited_head, seeds):
            latent_audit(edited_head, seeds)
    ''',
}


@pytest.mark.parametrize("mode", MODES)
def test_carried_records_of_a_model_whose_forward_changed_are_stale(pytester, mode):
    """Same weights, another forward (a hook added): the fingerprint covers the program, so the
    carried record proves nothing for the model as it is now; without the edit a subset run
    (another xdist worker, another process) marks nothing."""
    write_project(pytester.path, EDITED, conftest=CONFTEST)
    p = pytester.path
    assert run(pytester, mode, "--latent-spec-sheet", "sheet.json").ret == 0
    old_fp = records_by_test(load_sheet(p / "sheet.json"))["test_e_light"]["model_fingerprint"]
    assert run(pytester, mode, "-k", "e_pose", "--latent-spec-sheet", "sheet.json").ret == 0
    same = load_sheet(p / "sheet.json")
    assert not any(r.get("stale") for r in same["tests"])
    assert records_by_test(same)["test_e_pose"]["model_fingerprint"] == old_fp
    (p / "hook.txt").write_text("on")
    assert run(pytester, mode, "-k", "e_pose", "--latent-spec-sheet", "sheet.json").ret == 0
    sheet = load_sheet(p / "sheet.json")
    recs = records_by_test(sheet)
    assert recs["test_e_pose"]["model_fingerprint"] != old_fp
    assert recs["test_e_light"]["stale"]["model_fingerprint"] == recs["test_e_pose"]["model_fingerprint"]
    assert sheet["directions"]["light"]["proved_eps"] is None


def _rec(nodeid, fp, *, carried=False, model_name=None, verdict="proved", eps=0.5, direction="light", **kw):
    d = {"nodeid": nodeid, "direction": direction, "eps": eps, "spec": {"kind": "accuracy", "at_least": 1.0},
         "verdict": verdict, "n_seeds": 4, "counts": {"verified": 4 if verdict == "proved" else 0,
                                                      "falsified": 0 if verdict == "proved" else 4, "unknown": 0},
         "verified_fraction": 1.0 if verdict == "proved" else 0.0, "at_least": 1.0, "model_fingerprint": fp,
         "latent_range": {"lower": [-1.0], "upper": [1.0], "mean": [0.0], "std": [0.5], "eps": eps,
                          "n_seeds": 4, "kind": "axis", "k": 1, "axis": 0}}
    if carried:
        d["carried_over"] = {"from": "2024-01-01T00:00:00+00:00"}
    if model_name:
        d["model_name"] = model_name
    d.update(kw)
    return d


def test_an_older_sheet_without_stale_marks_is_read_under_the_rule():
    """A sheet written before the rule (no ``stale``, no ``model_key``, a directions section
    that counted the old model's record): loading it applies the rule and rebuilds the section."""
    old = {"schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0.0.9"},
           "tests": [_rec("t.py::test_light", "sha256:old", carried=True),
                     _rec("t.py::test_pose", "sha256:new", direction="pose")]}
    old["directions"] = {"light": {"proved_eps": 0.5, "latent_range": dict(old["tests"][0]["latent_range"],
                                                                           nodeid="t.py::test_light"),
                                   "ranges": [], "kind": "axis", "axis": 0},
                         "pose": {"proved_eps": 0.5, "latent_range": dict(old["tests"][1]["latent_range"]),
                                  "ranges": [], "kind": "axis", "axis": 0}}
    sh = read_sheet(old)
    light = {r.nodeid: r for r in sh.records}["t.py::test_light"]
    assert light.stale is not None and not light.claims_proof
    assert sh.direction_entries()["light"]["latent_range"] is None
    ok = deploy.in_spec(old, [[0.0, 0.0]])
    assert "light" not in ok and "pose" in ok
    assert coverage_summary(old)["per_direction"]["light"]["proved_eps"] is None


def test_stale_rule_by_model_identity():
    recs = parse_records([
        _rec("a.py::t1", "sha256:v2", model_name="glasses"),
        _rec("a.py::t2", "sha256:v1", carried=True, model_name="glasses"),   # glasses changed: stale
        _rec("a.py::t3", "sha256:n1", carried=True, model_name="nominal"),   # no evidence: current
        _rec("a.py::t4", "sha256:v2", carried=True, model_name="glasses"),   # same fingerprint: current
        _rec("a.py::t5", None, carried=True, model_name="glasses"),          # not a Module: unknown
    ])
    stale = {r.nodeid: r.stale for r in recs}
    assert stale["a.py::t2"] and stale["a.py::t2"]["model_fingerprint"] == "sha256:v2"
    assert stale["a.py::t3"] is None and stale["a.py::t4"] is None and stale["a.py::t5"] is None
    # a re-run that shows the old fingerprint again clears the mark
    back = parse_records([_rec("a.py::t1", "sha256:v1", model_name="glasses"),
                          dict(recs[1].to_json())])
    assert back[1].stale is None


# ------------------------------------------------------------------ 2. two calls in one test
TWO_CALLS = {
    "test_twice.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="light", eps=1.0, spec=Accuracy(), radius=False, validity=False)
        def test_twice_bad(latent_audit, head, seeds):
            latent_audit(head, seeds)                       # proved
            latent_audit(head, seeds, direction="pose", eps=2.5)   # violated

        @pytest.mark.latent(direction="light", eps=1.0, spec=Accuracy(), radius=False, validity=False)
        def test_twice_good(latent_audit, head, seeds):
            latent_audit(head, seeds)
            latent_audit(head, seeds, direction="pose", eps=0.5)

        @pytest.mark.latent(direction="light", eps=1.0, spec=Accuracy(), radius=False, validity=False)
        def test_once(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
}


@pytest.mark.parametrize("mode", MODES)
def test_two_latent_audit_calls_keep_two_records_and_the_worst_verdict(pytester, mode, capsys):
    write_project(pytester.path, TWO_CALLS)
    p = pytester.path
    res = run(pytester, mode, "--latent-spec-sheet", "sheet.json", "--junitxml", "j.xml",
              "--latent-junit-properties")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.assert_outcomes(passed=2, failed=1)
    sheet = load_sheet(p / "sheet.json")
    by = {}
    for r in sheet["tests"]:
        by.setdefault(r["nodeid"].split("::")[-1], []).append(r)
    assert [(r["call"], r["direction"], r["verdict"]) for r in by["test_twice_bad"]] == [
        (1, "light", "proved"), (2, "pose", "violated")]
    assert [(r["call"], r["verdict"]) for r in by["test_twice_good"]] == [(1, "proved"), (2, "proved")]
    assert len(by["test_once"]) == 1 and "call" not in by["test_once"][0]
    assert all(r["outcome"] == "failed" for r in by["test_twice_bad"])
    assert sheet["summary"]["tests"] == 5
    if schema_available():
        schema.validate(sheet)
    # the sheet loads (distinct keys), and merging it with itself is no conflict
    assert len(read_sheet(p / "sheet.json").records) == 5
    capsys.readouterr()
    assert cli.main(["merge", str(p / "sheet.json"), str(p / "sheet.json"), "-o", str(p / "m.json")]) == 0
    assert len(load_sheet(p / "m.json")["tests"]) == 5
    # JUnit: one verdict per test case, the worst of its calls
    cases = {tc.get("name"): tc for tc in ElementTree.parse(p / "j.xml").iter("testcase")}
    props = lambda name: [(e.get("name"), e.get("value")) for e in cases[name].iter("property")]  # noqa: E731
    assert [v for k, v in props("test_twice_bad") if k == "latent_verdict"] == ["violated"]
    assert [v for k, v in props("test_twice_good") if k == "latent_verdict"] == ["proved"]
    assert cases["test_twice_bad"].find("failure") is not None
    # a -k re-run of one of them replaces both its records
    run(pytester, mode, "-k", "twice_good", "--latent-spec-sheet", "sheet.json")
    again = load_sheet(p / "sheet.json")
    good = [r for r in again["tests"] if r["nodeid"].endswith("test_twice_good")]
    assert [r["call"] for r in good] == [1, 2] and not any(r.get("carried_over") for r in good)
    bad = [r for r in again["tests"] if r["nodeid"].endswith("test_twice_bad")]
    assert len(bad) == 2 and all(r.get("carried_over") for r in bad)


# ------------------------------------------------------------------ 3. merging shards
def _sheet(*tests, settings=None):
    return SpecSheet.build([TestRecord.from_json(t) for t in tests], tool_version="0", commit={}, machine={},
                           settings=settings or {})


def test_merge_never_raises_a_claim(tmp_path, capsys):
    good = _rec("t.py::test_a", "sha256:m")
    bad = _rec("t.py::test_a", "sha256:m", verdict="violated")
    a, b = _sheet(good), _sheet(bad)
    # the API's default keeps the worse record (and reports the conflict)
    res = merge_sheets([a, b], ["a", "b"])
    assert res.conflicts and res.records[0].verdict == "violated"
    res = merge_sheets([b, a], ["b", "a"])
    assert res.records[0].verdict == "violated"
    # --prefer first/last cannot pick the better of two records of one model
    for order, prefer in (([a, b], "first"), ([b, a], "last")):
        res = merge_sheets(order, ["x", "y"], prefer=prefer)
        assert res.records[0].verdict == "violated", prefer
        assert any("kept the worse" in c for c in res.conflicts)
    # nor can a sweep point of the kept record claim more than the other record's point
    a2 = _rec("t.py::test_b", "sha256:m", sweep=[{"eps": 1.0, "verdict": "violated",
                                                  "counts": {"verified": 0, "falsified": 4, "unknown": 0}}])
    b2 = _rec("t.py::test_b", "sha256:m", verdict="unproven",
              counts={"verified": 2, "falsified": 0, "unknown": 2}, verified_fraction=0.5,
              sweep=[{"eps": 1.0, "verdict": "proved", "counts": {"verified": 4, "falsified": 0, "unknown": 0}}])
    res = merge_sheets([_sheet(a2), _sheet(b2)], ["a", "b"], prefer="worse")
    kept = res.records[0]
    assert kept.verdict == "unproven" and [p.verdict for p in kept.sweep] == ["violated"]
    # two carried-over records that differ: the worse too (was: the last)
    c1 = _rec("t.py::test_c", "sha256:m", carried=True, verdict="violated")
    c2 = _rec("t.py::test_c", "sha256:m", carried=True)
    res = merge_sheets([_sheet(c1), _sheet(c2)], ["a", "b"])
    assert res.records[0].verdict == "violated"
    # the CLI: --prefer worse writes the worse record; default still refuses
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    a.save(pa), b.save(pb)
    capsys.readouterr()
    assert cli.main(["merge", str(pa), str(pb), "-o", str(tmp_path / "m.json")]) == 1
    assert cli.main(["merge", str(pb), str(pa), "-o", str(tmp_path / "m.json"), "--prefer", "worse"]) == 0
    assert load_sheet(tmp_path / "m.json")["tests"][0]["verdict"] == "violated"
    assert cli.main(["merge", str(pa), str(pb), "-o", str(tmp_path / "m.json"), "--prefer", "first"]) == 0
    assert load_sheet(tmp_path / "m.json")["tests"][0]["verdict"] == "violated"
    assert "kept the worse" in capsys.readouterr().err


# ------------------------------------------------------------------ 4. the record hook
HOOK_CONFTEST = PROJECT_CONFTEST + '''

def pytest_latentaudit_record(record, item):
    record["owner"] = "team"                       # adding a field: fine
    if "flip" in item.name:
        record["verdict"] = "proved"
        record["counts"] = {"verified": 4, "falsified": 0, "unknown": 0}
    if "widen" in item.name and record.get("latent_range"):
        record["latent_range"]["upper"][0] += 100.0   # in place, nested
'''

HOOK_FILES = {
    "test_hook.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(), radius=False, validity=False)
        def test_flip(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
        def test_widen(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
        def test_plain(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
}


@pytest.mark.parametrize("mode", MODES)
def test_record_hook_may_add_fields_but_not_change_findings(pytester, mode):
    write_project(pytester.path, HOOK_FILES, conftest=HOOK_CONFTEST)
    res = run(pytester, mode, "--latent-spec-sheet", "sheet.json", "--junitxml", "j.xml")
    res.assert_outcomes(passed=1, failed=2)
    out = res.stdout.str()
    assert "pytest_latentaudit_record hook changed 'verdict'" in out
    assert "pytest_latentaudit_record hook changed 'latent_range'" in out
    recs = records_by_test(load_sheet(pytester.path / "sheet.json"))
    assert recs["test_flip"]["verdict"] == "violated" and recs["test_flip"]["counts"]["falsified"] == 4
    assert recs["test_widen"]["latent_range"]["upper"][0] < 50
    assert recs["test_plain"]["owner"] == "team" and recs["test_plain"]["verdict"] == "proved"
    cases = {tc.get("name"): tc for tc in ElementTree.parse(pytester.path / "j.xml").iter("testcase")}
    assert cases["test_flip"].find("failure") is not None and cases["test_plain"].find("failure") is None


# ------------------------------------------------------------------ 5. vacuous specs
VACUOUS = {
    "test_vacuous.py": '''
        import pytest
        from pytest_latentaudit import Accuracy

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
        def test_pose_real(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(at_least=0), radius=False, validity=False)
        def test_pose_vacuous(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(at_least=0.5), radius=False, validity=False)
        def test_tilt_half(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
}


@pytest.mark.parametrize("mode", MODES)
def test_vacuous_spec_proves_no_range_and_ranges_name_their_spec(pytester, mode, capsys):
    write_project(pytester.path, VACUOUS)
    p = pytester.path
    res = run(pytester, mode, "--latent-spec-sheet", "sheet.json", "-W", "always")
    assert res.ret == 0, res.stdout.str()
    out = res.stdout.str()
    assert "VacuousSpecWarning" in out and "at_least=0" in out
    sheet = load_sheet(p / "sheet.json")
    recs = records_by_test(sheet)
    assert recs["test_pose_vacuous"]["verdict"] == "proved"  # the test asked for nothing and got it
    assert "at_least=0" in recs["test_pose_vacuous"]["vacuous"]
    assert "vacuous" not in recs["test_pose_real"]
    pose = sheet["directions"]["pose"]
    assert pose["proved_eps"] == 0.5 and pose["latent_range"]["eps"] == 0.5
    assert pose["latent_range"]["spec_text"] == "Accuracy(at_least=1)" or "1" in pose["latent_range"]["spec_text"]
    assert pose["latent_range"]["at_least"] == 1.0
    assert [g for g in pose["ranges"] if g["nodeid"].endswith("vacuous")][0]["vacuous"]
    tilt = sheet["directions"]["tilt"]
    assert tilt["latent_range"]["at_least"] == 0.5  # the range says what it is a range of
    cov = coverage_summary(p / "sheet.json")
    assert cov["per_direction"]["pose"]["proved_eps"] == 0.5
    assert cov["per_direction"]["pose"]["vacuous"] == 1
    capsys.readouterr()
    assert cli.main(["show", str(p / "sheet.json")]) == 0
    shown = capsys.readouterr().out
    assert "vacuous" in shown and "pose: proved up to eps=0.5" in shown


def test_vacuity_rule():
    mk = lambda **kw: TestRecord.from_json(_rec("t.py::t", "sha256:x", **kw))  # noqa: E731
    assert mk().vacuous is None
    assert "at_least=0" in mk(at_least=0.0, spec={"kind": "accuracy", "at_least": 0.0}).vacuous
    assert mk(spec={"kind": "output_range", "lower": None, "upper": None}).vacuous
    assert mk(spec={"kind": "linear", "C": [[0.0, 0.0]], "d": [-1.0]}).vacuous
    assert mk(spec={"kind": "linear", "C": [[1.0, 0.0]], "d": [-1.0]}).vacuous is None
    assert mk(spec={"kind": "prediction_not_in", "classes": []}).vacuous
