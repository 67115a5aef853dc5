"""The spec-sheet JSON Schema, semantic coverage, the coverage gate and run-to-run regressions."""
from __future__ import annotations

import copy
import json
import sys

import pytest
from conftest import load_sheet, shared_run

from pytest_latentaudit.sheet import deploy
from pytest_latentaudit.sheet import schema
from pytest_latentaudit.sheet.coverage import compare_sheets, coverage_gate, coverage_summary, regressions_gate


# a project that produces every kind of record: proved, violated (with counterexample
# images), unproven (xfail), a Linear spec and PredictionNotIn on a subset of the seeds
PROJECT = {"test_cov.py": '''
    import pytest
    from pytest_latentaudit import Accuracy, Invariance, Linear, PredictionNotIn

    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(at_least=1.0))
    def test_pose_proved(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(at_least=0.75))
    def test_pose_violated(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="light", eps=0.5, spec=Invariance(), engine="falsify", unproven="xfail")
    def test_light_unproven(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="style", eps=0.3, spec=Linear([[1.0, -1.0]], [0.0]))
    def test_style_linear(latent_audit, head, seeds):
        z, y = seeds
        latent_audit(head, z[y == 1])

    @pytest.mark.latent(direction="light", eps=0.2, spec=PredictionNotIn([1]))
    def test_light_not_in(latent_audit, head, seeds):
        z, y = seeds
        latent_audit(head, z[y == 0])
'''}


@pytest.fixture(scope="module")
def real_sheet(tmp_path_factory):
    result, root = shared_run(tmp_path_factory, "coverage-project", PROJECT, "--latent-spec-sheet", "out/sheet.json")
    assert result.ret == 1, "\n".join(result.outlines + result.errlines)  # test_pose_violated fails
    return load_sheet(root / "out" / "sheet.json")


def enriched(sheet: dict) -> dict:
    """``sheet`` with every optional field the schema allows: directions with ranges, certified
    radii and validity, sweeps, evidence, estimates, segment summaries, fingerprints, coverage."""
    s = copy.deepcopy(sheet)
    z = [[1.0, 0.5, 0.0], [-1.0, 0.0, 0.3], [1.5, -0.2, 0.1], [-2.0, 0.1, 0.1]]
    V = {"pose": 0, "light": [0.0, 1.0, 1.0], "style": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]}
    for r in s["tests"]:
        r["latent_range"] = deploy.latent_ranges(z, r["eps"], V[r["direction"]], with_basis=True)
        r["declared_directions"] = ["light", "pose", "style", "tilt"]
        r["evidence"] = r["verdict"]
        r["data_fingerprint"] = deploy.data_fingerprint(z)
    r = next(t for t in s["tests"] if t["nodeid"].endswith("::test_pose_proved"))
    r["sweep"] = [{"eps": 0.1, "verdict": "proved", "counts": {"verified": 4, "falsified": 0, "unknown": 0},
                   "verified_fraction": 1.0, "evidence": "exact",
                   "segment": {"seeds": 4, "mean_fraction": 1.0, "min_fraction": 1.0, "exact": True}},
                  {"eps": 3.0, "verdict": "estimated", "counts": {"verified": 0, "falsified": 0, "unknown": 4},
                   "verified_fraction": 0.0, "evidence": "estimated",
                   "estimate": {"fraction": 0.9, "lower": 0.8, "upper": 0.95, "confidence": 0.95, "samples": 500}}]
    r["estimate"] = {"fraction": 0.97, "lower": 0.93, "upper": 0.99, "confidence": 0.95, "samples": 2000,
                     "method": "clopper-pearson"}
    s["directions"] = deploy.directions_section(s["tests"], declared=["light", "pose", "style", "tilt"])
    s["directions"]["pose"]["certified_radius"] = deploy.certified_radius_summary([0.5, 0.7, 1.0, 1.2])
    s["directions"]["pose"]["validity"] = {"jacobian_bound": 3.2}
    s["data_fingerprint"] = deploy.data_fingerprint(z)
    s["coverage"] = coverage_summary(s)
    return s


# ------------------------------------------------------------------------ schema
def test_real_sheet_validates(real_sheet):
    verdicts = {t["nodeid"].split("::")[-1]: t["verdict"] for t in real_sheet["tests"]}
    assert verdicts == {"test_pose_proved": "proved", "test_pose_violated": "violated",
                        "test_light_unproven": "unproven", "test_style_linear": "proved",
                        "test_light_not_in": "proved"}
    assert any(c.get("image") for t in real_sheet["tests"] for c in t["counterexamples"])
    schema.validate(real_sheet)
    # the range guard's keys the session writes (deploy.latent_ranges with_basis) are in the schema
    rng = next(t["latent_range"] for t in real_sheet["tests"] if t.get("latent_range"))
    assert rng["kind"] in ("axis", "vector", "subspace") and rng["k"] == len(rng["lower"])
    bad = copy.deepcopy(real_sheet)
    next(t for t in bad["tests"] if t.get("latent_range"))["latent_range"]["kind"] = "cone"
    with pytest.raises(schema.SheetValidationError, match="cone"):
        schema.validate(bad)


def test_enriched_sheet_validates(real_sheet):
    schema.validate(enriched(real_sheet))


def test_schema_is_valid_draft_2020_12():
    jsonschema = pytest.importorskip("jsonschema")
    s = schema.load_schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


@pytest.mark.parametrize("path, value, where", [
    (("tests", 0, "verdict"), "maybe", "$.tests[0].verdict"),
    (("tests", 0, "counts", "verified"), -1, "$.tests[0].counts.verified"),
    (("tests", 0, "verified_fraction"), 1.5, "$.tests[0].verified_fraction"),
    (("tests", 0, "evidence"), "vibes", "$.tests[0].evidence"),
    (("tool", "name"), "other-tool", "$.tool.name"),
    (("schema_version",), "1", "$.schema_version"),
])
def test_invalid_sheets_are_rejected_with_a_path(real_sheet, path, value, where):
    bad = copy.deepcopy(real_sheet)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(schema.SheetValidationError) as info:
        schema.validate(bad)
    assert where in str(info.value)


def test_missing_required_record_field(real_sheet):
    bad = copy.deepcopy(real_sheet)
    del bad["tests"][1]["counts"]
    with pytest.raises(schema.SheetValidationError, match=r"\$\.tests\[1\]: 'counts' is a required property"):
        schema.validate(bad)


def test_validate_without_jsonschema_says_so(real_sheet, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(schema.SchemaUnavailable, match="pip install jsonschema"):
        schema.validate(real_sheet)


# ------------------------------------------------------------------------ coverage
def rec(nodeid, direction, eps, verdict, kind="accuracy", verified=4, falsified=0, unknown=0, sweep=None):
    n = verified + falsified + unknown
    r = {"nodeid": nodeid, "direction": direction, "eps": eps, "verdict": verdict, "spec": {"kind": kind},
         "n_seeds": n, "counts": {"verified": verified, "falsified": falsified, "unknown": unknown},
         "verified_fraction": verified / n if n else 1.0, "at_least": 1.0}
    if sweep:
        r["sweep"] = sweep
    return r


def sheet_of(*records, **extra):
    return {"schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0"}, "tests": list(records),
            **extra}


def test_coverage_summary_by_hand():
    s = sheet_of(rec("t::a", "pose", 0.5, "proved"),
                 rec("t::b", "pose", 1.0, "violated", verified=1, falsified=3),
                 rec("t::c", "light", 0.5, "proved"),
                 rec("t::d", "light", 0.5, "proved", kind="invariance"),
                 rec("t::e", "style", 0.2, "unproven", verified=2, unknown=2),
                 rec("t::f", "custom", 0.1, "proved"))
    cov = coverage_summary(s, declared=["pose", "light", "style", "expression"])
    assert cov["directions_declared"] == ["expression", "light", "pose", "style"]
    assert cov["directions_tested"] == ["custom", "light", "pose", "style"]
    assert cov["directions_proved"] == ["custom", "light"]
    assert cov["untested"] == ["expression"]
    assert cov["percent_proved"] == pytest.approx(40.0)  # 2 of the 5 declared-or-tested
    assert cov["counts"] == {"declared": 4, "tested": 4, "proved": 2, "untested": 1, "directions": 5, "tests": 6}
    pd = cov["per_direction"]
    assert pd["pose"]["status"] == "violated" and pd["pose"]["proved_eps"] == 0.5 and pd["pose"]["max_eps"] == 1.0
    assert pd["style"]["status"] == "unproven" and pd["expression"]["status"] == "untested"
    assert pd["custom"]["declared"] is False and pd["pose"]["declared"] is True
    m = cov["matrix"]
    assert m["radii"] == [0.1, 0.2, 0.5, 1.0] and m["specs"] == ["accuracy", "invariance"]
    cells = {(c["direction"], c["spec"], c["eps"]): c for c in m["cells"]}
    assert cells[("pose", "accuracy", 1.0)]["verdict"] == "violated"
    assert cells[("pose", "accuracy", 1.0)]["verified_fraction"] == 0.25
    assert cells[("light", "invariance", 0.5)]["nodeids"] == ["t::d"]
    assert ("expression", "accuracy", 0.5) not in cells


def test_coverage_cells_take_the_worst_verdict_and_sweeps():
    sweep = [{"eps": 0.25, "verdict": "proved", "counts": {"verified": 4, "falsified": 0, "unknown": 0},
              "verified_fraction": 1.0},
             {"eps": 2.0, "verdict": "violated", "counts": {"verified": 0, "falsified": 4, "unknown": 0},
              "verified_fraction": 0.0}]
    s = sheet_of(rec("t::a", "pose", 0.5, "proved", sweep=sweep), rec("t::b", "pose", 0.5, "unproven", unknown=1))
    cov = coverage_summary(s)
    cells = {c["eps"]: c for c in cov["matrix"]["cells"]}
    assert sorted(cells) == [0.25, 0.5, 2.0]
    assert cells[0.5]["verdict"] == "unproven" and cells[0.5]["verdicts"] == {"proved": 1, "unproven": 1}
    assert cells[2.0]["verdict"] == "violated"  # from the sweep
    # the direction's status comes from test verdicts, the proved radius from sweeps too
    assert cov["per_direction"]["pose"]["status"] == "unproven"
    assert cov["per_direction"]["pose"]["proved_eps"] == 0.5


def test_declared_directions_from_the_sheet(real_sheet):
    s = enriched(real_sheet)
    cov = coverage_summary(s)  # declared: the records' declared_directions and the directions section
    assert cov["directions_declared"] == ["light", "pose", "style", "tilt"]
    assert cov["untested"] == ["tilt"]
    assert cov["directions_proved"] == ["style"]  # pose has a violation, light an unproven test
    assert coverage_summary(real_sheet["tests"])["directions_tested"] == ["light", "pose", "style"]


def test_coverage_gate():
    cov = coverage_summary(sheet_of(rec("t::a", "pose", 0.5, "proved"), rec("t::b", "light", 0.5, "violated")),
                           declared=["pose", "light", "style", "hue"])
    assert cov["percent_proved"] == 25.0
    ok, msg = coverage_gate(cov, 25)
    assert ok and "1/4 directions proved (25.0%) >= required 25%" in msg
    ok, msg = coverage_gate(cov, 50)
    assert not ok
    assert "1/4 directions proved (25.0%) < required 50%" in msg
    assert "untested: hue, style" in msg and "not proved: light (violated)" in msg
    assert coverage_gate(cov, 0)[0]
    empty = coverage_summary(sheet_of())
    assert coverage_gate(empty, 0) == (True, "latent coverage: no latent directions declared or tested")
    ok, msg = coverage_gate(empty, 10)
    assert not ok and "no latent directions" in msg


# ------------------------------------------------------------------------ regressions
def test_identical_and_improved_runs_have_no_regressions(real_sheet):
    assert compare_sheets(real_sheet, copy.deepcopy(real_sheet)) == []
    better = copy.deepcopy(real_sheet)
    for t in better["tests"]:
        t["verdict"], t["verified_fraction"] = "proved", 1.0
    assert compare_sheets(real_sheet, better) == []
    assert regressions_gate([]) == (True, ["no regressions against the previous spec sheet"])


def test_planted_regressions_are_detected(real_sheet, tmp_path):
    old = enriched(real_sheet)
    new = copy.deepcopy(old)
    tests = {t["nodeid"].split("::")[-1]: t for t in new["tests"]}
    tests["test_pose_proved"]["verdict"] = "unproven"                  # verdict regression
    tests["test_pose_proved"]["sweep"][0]["verdict"] = "violated"       # sweep point regression
    tests["test_light_not_in"]["verified_fraction"] = 0.5              # fraction drop, same verdict
    new["tests"].remove(tests["test_style_linear"])                    # a test disappeared
    new["directions"]["pose"]["certified_radius"]["quantiles"]["median"] = 0.1  # a direction's radius shrank
    tests["test_pose_violated"]["certified_radius"]["quantiles"]["median"] = 0.01  # and one test's
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(old))
    new_path.write_text(json.dumps(new))
    regs = compare_sheets(old_path, new_path)
    kinds = {(r["kind"], (r["nodeid"] or "").split("::")[-1] or r["direction"]) for r in regs}
    assert kinds == {("verdict", "test_pose_proved"), ("sweep_verdict", "test_pose_proved"),
                     ("verified_fraction", "test_light_not_in"), ("missing_test", "test_style_linear"),
                     ("proved_eps", "pose"), ("certified_radius", "pose"),
                     ("certified_radius", "test_pose_violated")}
    by_kind = {r["kind"]: r for r in regs if r["nodeid"] is None or r["kind"] != "certified_radius"}
    assert by_kind["verdict"]["old"] == "proved" and by_kind["verdict"]["new"] == "unproven"
    assert by_kind["proved_eps"]["old"] == 0.5 and by_kind["proved_eps"]["new"] is None
    assert by_kind["sweep_verdict"]["eps"] == 0.1
    assert by_kind["certified_radius"]["old"] == pytest.approx(0.85) and by_kind["certified_radius"]["new"] == 0.1
    assert regs[0]["kind"] == "verdict"  # worst kinds first
    for r in regs:
        assert set(r) == {"kind", "direction", "spec", "nodeid", "eps", "old", "new", "message"} and r["message"]
    ok, lines = regressions_gate(regs)
    assert not ok and lines[0] == "7 regression(s) against the previous spec sheet:"


def test_proved_radius_regression_per_direction_and_spec():
    old = sheet_of(rec("t::a", "pose", 0.5, "proved"), rec("t::b", "pose", 1.0, "proved"))
    new = sheet_of(rec("t::a", "pose", 0.5, "proved"), rec("t::c", "pose", 0.8, "unproven", unknown=1))
    kinds = [r["kind"] for r in compare_sheets(old, new)]
    assert kinds == ["missing_test", "proved_eps"]
    msg = [r for r in compare_sheets(old, new) if r["kind"] == "proved_eps"][0]["message"]
    assert msg == "direction 'pose' (accuracy): proved up to eps=1 -> eps=0.5"


def test_a_test_moved_to_another_direction_or_spec_takes_its_proof_with_it():
    """The only test proving accuracy along pose is edited to another spec kind (or direction)
    and a far smaller eps: per test its verdict is unchanged, but nothing proves accuracy along
    pose any more, which is a regression (it passed before: the key was skipped as if missing)."""
    old = sheet_of(rec("t::a", "pose", 0.5, "proved"))
    for new in (sheet_of(rec("t::a", "pose", 0.01, "proved", kind="invariance")),
                sheet_of(rec("t::a", "light", 0.01, "proved"))):
        regs = compare_sheets(old, new)
        assert [r["message"] for r in regs] == ["direction 'pose' (accuracy): proved up to eps=0.5 -> nothing proved"]
    # a test of the key that did not run (carried over) still keeps its radius: nothing compared
    carried = dict(rec("t::a", "pose", 0.5, "proved"), carried_over={"from": "earlier"})
    assert compare_sheets(old, sheet_of(carried, rec("t::b", "pose", 0.1, "proved", kind="invariance"))) == []


def test_real_sheet_end_to_end(real_sheet, tmp_path):
    """The sheet of a real run renders, exports and answers the deployment question."""
    from pytest_latentaudit.report import exports
    from pytest_latentaudit.report.html import render_html

    s = enriched(real_sheet)
    text = render_html(s, tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,iVBORw0KGgo") >= 2  # counterexample strips from the decoder
    for t in s["tests"]:
        assert t["nodeid"].split("::")[-1] in text
    if "jsonschema" in sys.modules or pytest.importorskip("jsonschema"):
        schema.validate_model_card(exports.to_model_card(s))
    assert exports.to_model_index(s, task_type="image-classification")["model-index"][0]["results"]
    ok = deploy.in_spec(s, [[0.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    assert ok["pose"].tolist() == [True, False] and set(ok) == {"pose", "light", "style", "all"}


def test_certified_radius_compared_only_over_the_same_search_range():
    def with_radius(median, eps_max):
        r = rec("t::a", "pose", 0.5, "proved")
        r["certified_radius"] = {"eps_max": eps_max, "mean": median, "quantiles": {"median": median},
                                 "histogram": {"edges": [0.0, eps_max], "counts": [4]}}
        return sheet_of(r)

    regs = compare_sheets(with_radius(0.9, 1.0), with_radius(0.6, 1.0))
    assert [(r["kind"], r["old"], r["new"]) for r in regs] == [("certified_radius", 0.9, 0.6)]
    assert regs[0]["message"] == "t::a: median certified radius 0.9 -> 0.6"
    assert compare_sheets(with_radius(0.9, 2.0), with_radius(0.6, 1.0)) == []  # searched a different range
    assert compare_sheets(with_radius(0.6, 1.0), with_radius(0.9, 1.0)) == []  # grew: fine
