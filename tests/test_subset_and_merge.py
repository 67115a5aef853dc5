"""Compare like pytest-benchmark, and shards.

* Only tests that ran are compared: a ``-k`` subset run against the full sheet exits 0 and
  lists the deselected tests as not run; the subset run does not shrink the sheet (the
  other tests' records are carried over, marked); a full run refreshes them; a deleted
  test's record goes.
* ``latentaudit merge A.json B.json -o sheet.json``: two shards give the sheet of one serial
  run (timing aside); conflicting records are reported.
"""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import MODES, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit import cli
from pytest_latentaudit.plugin import _warm_up
from pytest_latentaudit.sheet.specsheet import read_sheet

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run

FILES = {
    "test_one.py": '''
        import pytest
        from pytest_latentaudit import Accuracy, Invariance

        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), sweep=[0.25, 1.5])
        def test_one_a(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(at_least=0.5), radius=False)
        def test_one_b(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
    "test_two.py": '''
        import pytest
        from pytest_latentaudit import Invariance

        @pytest.mark.latent(direction="style", eps=1.0, spec=Invariance())
        def test_two_a(latent_audit, head, seeds):
            latent_audit(head, seeds[0])
    ''',
}
ALL = {"test_one_a", "test_one_b", "test_two_a"}


def run(pytester, mode, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), *args)


def names(sheet, carried=None):
    return {r["nodeid"].split("::")[-1] for r in sheet["tests"]
            if carried is None or bool(r.get("carried_over")) == carried}


@pytest.mark.parametrize("mode", MODES)
def test_subset_compare_exits_0_and_keeps_the_full_sheet_deleted_tests_go(pytester, mode, capsys):
    write_project(pytester.path, FILES)
    full = run(pytester, mode, "--latent-spec-sheet", "full.json")
    assert full.ret == pytest.ExitCode.TESTS_FAILED  # test_one_b is violated
    before = load_sheet(pytester.path / "full.json")
    assert names(before) == ALL and names(before, carried=True) == set()

    sub = run(pytester, mode, "-k", "one_a", "--latent-spec-sheet", "full.json", "--latent-compare", "full.json")
    assert sub.ret == pytest.ExitCode.OK, sub.stdout.str()
    out = sub.stdout.str()
    assert "no regressions against the baseline full.json (1 test(s) compared)" in out
    assert "2 test(s) of the baseline not run (not compared): test_one.py::test_one_b, test_two.py::test_two_a" in out
    assert "2 test(s) did not run: their records are carried over" in out
    after = load_sheet(pytester.path / "full.json")
    assert names(after) == ALL  # the subset run did not shrink the sheet
    assert names(after, carried=True) == {"test_one_b", "test_two_a"}
    carried = {r["nodeid"].split("::")[-1]: r for r in after["tests"]}
    assert carried["test_two_a"]["carried_over"] == {"from": before["created"]}
    old = {r["nodeid"]: r for r in before["tests"]}
    for r in after["tests"]:
        if r.get("carried_over"):
            assert {k: v for k, v in r.items() if k != "carried_over"} == old[r["nodeid"]]
    assert after["summary"]["tests"] == 3 and after["summary"]["carried_over"] == 2
    # `latentaudit diff` agrees: nothing regressed, two not run; `show` marks carried-over records
    capsys.readouterr()
    assert cli.main(["diff", str(pytester.path / "full.json"), str(pytester.path / "full.json"), "--fail"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no regressions") and "(carried over, not compared): 2 test(s)" in out
    assert cli.main(["show", str(pytester.path / "full.json")]) == 0
    out = capsys.readouterr().out
    assert "test_one_b *" in out and "test_two_a *" in out and "test_one_a *" not in out
    assert "(2 test(s) carried over from an earlier run: marked * in the table)" in out

    # a second subset run keeps the original date
    run(pytester, mode, "-k", "two_a", "--latent-spec-sheet", "full.json")
    again = {r["nodeid"].split("::")[-1]: r for r in load_sheet(pytester.path / "full.json")["tests"]}
    assert again["test_one_b"]["carried_over"] == {"from": before["created"]} and "carried_over" not in again["test_two_a"]
    assert again["test_one_a"]["carried_over"] == {"from": after["created"]}  # it ran in the first subset run

    # (the same project on: deleted tests go, other files stay; and a carried-over record of a
    # test that runs again is replaced by a fresh one)
    _deleted_tests_go_other_files_stay(pytester, mode, "full.json")
    fresh = {r["nodeid"].split("::")[-1]: r for r in load_sheet(pytester.path / "full.json")["tests"]}
    assert "carried_over" not in fresh["test_one_a"]


def _deleted_tests_go_other_files_stay(pytester, mode, sheet_name):
    """After a full run wrote ``sheet_name``: delete test_one_b from its file, and run only
    that file (test_two.py is not collected)."""
    src = (pytester.path / "test_one.py").read_text()
    (pytester.path / "test_one.py").write_text(src.split("@pytest.mark.latent(direction=\"pose\", eps=2.5")[0])
    result = run(pytester, mode, "test_one.py", "--latent-spec-sheet", sheet_name, "--latent-compare", sheet_name)
    sheet = load_sheet(pytester.path / sheet_name)
    assert names(sheet) == {"test_one_a", "test_two_a"} and names(sheet, carried=True) == {"test_two_a"}
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the deleted test is missing: a regression
    assert "test_one.py::test_one_b: test missing from the new sheet" in result.stdout.str()


def _comparable(sheet: dict) -> dict:
    """The sheet without timing and where-it-ran fields (created, machine, image paths, seconds)."""
    recs = [r.comparable() for r in read_sheet(sheet).records]
    top = {k: v for k, v in sheet.items() if k not in ("created", "machine", "tests")}
    return {"tests": recs, **top}


@pytest.mark.parametrize("mode", MODES)
def test_two_merged_shards_equal_one_serial_run(pytester, mode, capsys, tmp_path):
    write_project(pytester.path, FILES)
    run(pytester, "serial", "--latent-spec-sheet", "serial/sheet.json")
    run(pytester, mode, "test_one.py", "--latent-spec-sheet", "shard-a/sheet.json")
    run(pytester, mode, "test_two.py", "--latent-spec-sheet", "shard-b/sheet.json")
    p = pytester.path
    capsys.readouterr()
    assert cli.main(["merge", str(p / "shard-a/sheet.json"), str(p / "shard-b/sheet.json"),
                     "-o", str(p / "merged/sheet.json")]) == 0
    assert "merged 2 sheet(s) into" in capsys.readouterr().out
    serial, merged = load_sheet(p / "serial/sheet.json"), load_sheet(p / "merged/sheet.json")
    assert _comparable(merged) == _comparable(serial)
    images = [c["image"] for r in merged["tests"] for c in r["counterexamples"] if c.get("image")]
    assert images and all((p / "merged" / i).is_file() for i in images)  # re-anchored to the merged sheet
    # the order of the shards does not matter
    assert cli.main(["merge", str(p / "shard-b/sheet.json"), str(p / "shard-a/sheet.json"),
                     "-o", str(tmp_path / "ba.json")]) == 0
    assert _comparable(load_sheet(tmp_path / "ba.json")) == _comparable(serial)


def test_merge_reports_conflicts(tmp_path, pytester, capsys):
    write_project(pytester.path, FILES)
    run(pytester, "serial", "test_two.py", "--latent-spec-sheet", "a.json")
    a = load_sheet(pytester.path / "a.json")
    b = json.loads(json.dumps(a))
    b["tests"][0]["verdict"] = "violated"
    (tmp_path / "b.json").write_text(json.dumps(b))
    shutil.copy(pytester.path / "a.json", tmp_path / "a.json")
    out = tmp_path / "m.json"
    capsys.readouterr()
    assert cli.main(["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "conflict: test_two.py::test_two_a: recorded by" in err and "verdicts (proved vs violated)" in err
    assert "nothing written" in err and not out.exists()
    assert cli.main(["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out),
                     "--prefer", "last"]) == 0
    assert load_sheet(out)["tests"][0]["verdict"] == "violated"
    # the same record twice (a shard re-run) is no conflict; a carried-over copy loses to one that ran
    c = json.loads(json.dumps(a))
    c["tests"][0]["seconds"] = 99.0
    c["tests"][0]["verdict"] = "unproven"
    c["tests"][0]["carried_over"] = {"from": "earlier"}
    (tmp_path / "c.json").write_text(json.dumps(c))
    assert cli.main(["merge", str(tmp_path / "c.json"), str(tmp_path / "a.json"), str(tmp_path / "a.json"),
                     "-o", str(out)]) == 0
    assert load_sheet(out)["tests"][0]["verdict"] == "proved" and "carried_over" not in load_sheet(out)["tests"][0]
    # a sheet that is not one: exit 2
    (tmp_path / "bad.json").write_text("[]")
    assert cli.main(["merge", str(tmp_path / "a.json"), str(tmp_path / "bad.json"), "-o", str(out)]) == 2
