"""``latentaudit show`` / ``latentaudit diff`` on spec sheets from a real run, and the
atomic write of ``SpecSheet.save``."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_sheet, shared_run

from pytest_latentaudit import SpecSheet
from pytest_latentaudit import cli as cli_mod
from pytest_latentaudit.core import files as files_mod
from pytest_latentaudit.sheet.specsheet import SCHEMA_VERSION

CLI_PROJECT = {
    "test_sheet.py": '''
        import pytest
        from pytest_latentaudit import Accuracy, Invariance


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy())
        def test_pose_small(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.25, spec=Accuracy())
        def test_pose_smaller(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy())
        def test_pose_large(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="style", eps=1.0, spec=Invariance())
        def test_style(latent_audit, head, seeds):
            latent_audit(head, seeds[0])
    ''',
}


@pytest.fixture(scope="module")
def sheet_path(tmp_path_factory):
    result, root = shared_run(tmp_path_factory, "cli-project", CLI_PROJECT, "--latent-spec-sheet", "sheet.json")
    result.assert_outcomes(passed=3, failed=1)
    return root / "sheet.json"


@pytest.fixture
def sheets(sheet_path, tmp_path):
    """``(old, new_data, write_new)``: a copy of the real sheet and a mutable copy of its data."""
    old = tmp_path / "old.json"
    shutil.copy(sheet_path, old)
    data = load_sheet(sheet_path)

    def write_new(d):
        p = tmp_path / "new.json"
        p.write_text(json.dumps(d))
        return p

    return old, data, write_new


def by_name(data, name):
    return next(t for t in data["tests"] if t["nodeid"].endswith("::" + name))


def main(capsys, *argv):
    code = cli_mod.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_show(sheet_path, capsys):
    code, out, _ = main(capsys, "show", sheet_path)
    assert code == 0
    assert f"spec sheet {sheet_path}: pytest-latentaudit" in out
    lines = out.splitlines()
    for name, outcome, verdict in [("test_pose_small", "passed", "proved"), ("test_pose_smaller", "passed", "proved"),
                                   ("test_pose_large", "failed", "violated"), ("test_style", "passed", "proved")]:
        assert any(re.match(rf"test_sheet\.py::{name} +{outcome} .* {verdict} ", line) for line in lines), name
    # the 4-seed validity checks run (they crashed before): the realism limit is reported too
    pose = [line for line in lines if line.startswith("  pose: ")]
    assert len(pose) == 1 and pose[0].startswith("  pose: proved up to eps=0.5 (proved 2, violated 1)"), pose
    style = [line for line in lines if line.startswith("  style: ")]
    assert len(style) == 1 and style[0].startswith("  style: proved up to eps=1 (proved 1)"), style
    assert re.search(r"; realistic up to eps=[0-9.]+, deployable range up to eps=", style[0]), style


def test_console_script_exit_codes(sheets, tmp_path):
    old, data, write_new = sheets
    by_name(data, "test_style")["verdict"] = "violated"
    new = write_new(data)
    exe = Path(sys.executable).with_name("latentaudit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pytest_latentaudit.cli"]
    show = subprocess.run(cmd + ["show", str(old)], capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "test_style" in show.stdout
    same = subprocess.run(cmd + ["diff", str(old), str(old), "--fail"], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "no regressions" in same.stdout
    diff = subprocess.run(cmd + ["diff", str(old), str(new), "--fail"], capture_output=True, text=True, timeout=60)
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "test_style: verdict proved -> violated" in diff.stdout
    missing = subprocess.run(cmd + ["show", str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("latentaudit: ")
    version = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout == f"latentaudit (pytest-latentaudit) {cli_mod.version()}\n"


def test_version_is_the_installed_distributions(capsys):
    from importlib import metadata

    import pytest_latentaudit

    try:
        expected = metadata.version("pytest-latentaudit")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        expected = pytest_latentaudit.__version__
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"latentaudit (pytest-latentaudit) {expected}\n"


def test_no_command_lists_the_commands(capsys):
    code, out, err = main(capsys)
    assert code == 2 and out == ""
    assert "required" not in err and err.startswith("usage: latentaudit")
    listed = re.findall(r"^  (\w+) +\S", err, re.M)
    assert listed == ["show", "diff", "html", "export", "coverage", "merge", "guard"], err
    assert "  export    export a spec sheet as a model card" in err
    assert "'latentaudit COMMAND --help'" in err


def test_export_hf_by_suffix_with_the_task_given(sheet_path, tmp_path, capsys):
    from pytest_latentaudit.report import exports

    expected = exports.to_model_index(sheet_path, "org/m", task_type="tabular-classification")
    code, out, _ = main(capsys, "export", sheet_path, tmp_path / "index.json", "--format", "hf", "--task",
                        "tabular-classification", "--name", "org/m")
    assert code == 0 and out == f"wrote {tmp_path / 'index.json'}\n"
    assert json.loads((tmp_path / "index.json").read_text()) == expected  # JSON, not YAML, in a .json name
    assert {r["task"]["type"] for r in expected["model-index"][0]["results"]} == {"tabular-classification"}
    code, _, _ = main(capsys, "export", sheet_path, tmp_path / "README.md", "--format", "hf", "--task",
                      "tabular-classification", "--name", "org/m")
    text = (tmp_path / "README.md").read_text()
    assert code == 0 and text.startswith("---\nmodel-index:\n") and "image-classification" not in text
    # no task: one clear line, exit 2, nothing written; an unknown suffix likewise
    code, _, err = main(capsys, "export", sheet_path, tmp_path / "x.json", "--format", "hf")
    assert code == 2 and "needs --task" in err and len(err.strip().splitlines()) == 1
    code, _, err = main(capsys, "export", sheet_path, tmp_path / "x.txt", "--format", "hf", "--task", "t")
    assert code == 2 and err.startswith("latentaudit: ") and "say the format by the file name" in err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.txt").exists()


def test_diff_detects_planted_verdict_regression(sheets, capsys):
    old, data, write_new = sheets
    by_name(data, "test_pose_small")["verdict"] = "violated"
    new = write_new(data)
    code, out, _ = main(capsys, "diff", old, new, "--fail")
    assert code == 1
    # the same regressions --latent-compare reports: the verdict, and the direction's proved radius
    assert "2 regression(s):" in out
    assert "test_sheet.py::test_pose_small: verdict proved -> violated" in out
    assert "direction 'pose' (accuracy): proved up to eps=0.5 -> eps=0.25" in out
    code, out, _ = main(capsys, "diff", old, new)  # without --fail: reported, exit 0
    assert code == 0 and "test_pose_small" in out


def test_diff_proved_to_unproven_is_a_regression(sheets, capsys):
    old, data, write_new = sheets
    by_name(data, "test_style")["verdict"] = "unproven"
    code, out, _ = main(capsys, "diff", old, write_new(data), "--fail")
    assert code == 1 and "test_style: verdict proved -> unproven" in out


def test_diff_verified_fraction_drop(sheets, capsys):
    old, data, write_new = sheets
    t = by_name(data, "test_pose_small")
    t["verified_fraction"] = 0.75
    t["counts"] = {"verified": 3, "falsified": 0, "unknown": 1}
    code, out, _ = main(capsys, "diff", old, write_new(data), "--fail")
    assert code == 1 and "test_pose_small: verified fraction 1.000 -> 0.750" in out


def test_diff_missing_test_and_improvements(sheets, capsys):
    old, data, write_new = sheets
    data["tests"] = [t for t in data["tests"] if not t["nodeid"].endswith("::test_pose_smaller")]
    by_name(data, "test_pose_large")["verdict"] = "proved"  # an improvement is not a regression
    extra = copy.deepcopy(by_name(data, "test_style"))
    extra["nodeid"] = "test_sheet.py::test_new_one"
    extra["verdict"] = "violated"  # a new test is not a regression either
    data["tests"].append(extra)
    code, out, _ = main(capsys, "diff", old, write_new(data), "--fail")
    assert code == 1
    assert out.splitlines()[1:] == ["  test_sheet.py::test_pose_smaller: test missing from the new sheet"]


def test_diff_no_regressions(sheets, capsys):
    old, data, write_new = sheets
    code, out, _ = main(capsys, "diff", old, write_new(data), "--fail")
    assert code == 0 and out.strip() == "no regressions"


def test_cli_rejects_bad_sheets(tmp_path, sheet_path, capsys):
    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    code, _, err = main(capsys, "show", not_json)
    assert code == 2 and err.startswith("latentaudit: ")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    code, _, err = main(capsys, "show", other)
    assert code == 2 and "is not a latentaudit spec sheet" in err
    future = load_sheet(sheet_path)
    future["schema_version"] = SCHEMA_VERSION + 1
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(future))
    code, _, err = main(capsys, "diff", sheet_path, newer)
    assert code == 2 and "upgrade pytest-latentaudit" in err
    with pytest.raises(SystemExit):
        cli_mod.main(["frobnicate"])
    capsys.readouterr()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tests"][0].update(eps="big"), r"tests\[0\]: 'eps' must be a number"),
    (lambda d: d["tests"][0].pop("verdict"), r"tests\[0\]: missing 'verdict'"),
    (lambda d: d["tests"][1].update(counts={"verified": "3"}), r"tests\[1\]\.counts: 'verified' must be an integer"),
    (lambda d: d["tests"][0].update(sweep={"eps": 1}), r"tests\[0\]: 'sweep' must be a list"),
    (lambda d: d.update(tests={"a": 1}), r"'tests' must be a list"),
    (lambda d: d.update(directions=[1, 2]), r"'directions' must map direction names to objects"),
    (lambda d: d["tests"].append(dict(d["tests"][0])), r"already recorded"),
])
@pytest.mark.parametrize("command", ["show", "diff", "diff-new", "coverage", "html", "export"])
def test_structurally_wrong_sheets_exit_2(sheet_path, tmp_path, capsys, change, message, command):
    """A file that parses as JSON but is no spec sheet: one clear line, exit 2 (distinct from
    ``diff --fail``'s 1), no traceback."""
    data = load_sheet(sheet_path)
    change(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    argv = {"show": ["show", bad], "diff": ["diff", bad, sheet_path, "--fail"],
            "diff-new": ["diff", sheet_path, bad, "--fail"], "coverage": ["coverage", bad],
            "html": ["html", bad, tmp_path / "r.html"], "export": ["export", bad, tmp_path / "card.json"]}[command]
    code, out, err = main(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("latentaudit: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert "Traceback" not in err


# ------------------------------------------------------------------ atomic writes
def _sheet():
    return SpecSheet.build([], tool_version="9.9.9", settings={"engine": "auto"})


def _leftovers(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name != "sheet.json")


@pytest.fixture
def old_sheet(tmp_path):
    p = tmp_path / "sheet.json"
    p.write_text('{"old": true}\n')
    return p


def test_save_then_load_roundtrip(tmp_path):
    p = _sheet().save(tmp_path / "sub" / "sheet.json")
    assert SpecSheet.load(p).data["tool"]["version"] == "9.9.9"
    assert _leftovers(p.parent) == []


def test_save_keeps_old_file_when_rename_fails(old_sheet, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(files_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        _sheet().save(old_sheet)
    monkeypatch.undo()
    assert old_sheet.read_text() == '{"old": true}\n'
    assert _leftovers(old_sheet.parent) == []  # the temp file is cleaned up


def test_save_keeps_old_file_when_write_fails_midway(old_sheet, monkeypatch):
    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(files_mod.os, "fsync", boom)  # after the data was (partly) written
    with pytest.raises(OSError, match="fsync failed"):
        _sheet().save(old_sheet)
    monkeypatch.undo()
    assert old_sheet.read_text() == '{"old": true}\n'
    assert _leftovers(old_sheet.parent) == []


def test_save_keeps_old_file_when_serialisation_fails(old_sheet, monkeypatch):
    sheet = _sheet()
    sheet.data["tests"] = [{"nodeid": "x", "bad": object()}]
    with pytest.raises(TypeError):
        sheet.save(old_sheet)
    assert old_sheet.read_text() == '{"old": true}\n'

    def boom(*a, **k):
        raise ValueError("serializer exploded")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(ValueError, match="exploded"):
        _sheet().save(old_sheet)
    monkeypatch.undo()
    assert old_sheet.read_text() == '{"old": true}\n'
    assert _leftovers(old_sheet.parent) == []


def test_directions_summary():
    recs = []
    for eps, verdict in [(0.1, "proved"), (0.5, "proved"), (1.0, "violated"), (0.7, "unproven")]:
        recs.append({"nodeid": f"t::{eps}", "direction": "pose", "eps": eps, "verdict": verdict,
                     "counts": {"verified": 1, "falsified": 0, "unknown": 0}})
    recs.append({"nodeid": "t::x", "direction": "light", "eps": 0.2, "verdict": "violated",
                 "counts": {"verified": 0, "falsified": 1, "unknown": 0}})
    sheet = SpecSheet.build(recs, tool_version="0")
    d = sheet.directions()
    assert d["pose"] == {"proved_eps": 0.5, "tests": 4, "verdicts": {"proved": 2, "violated": 1, "unproven": 1}}
    assert d["light"]["proved_eps"] is None
    assert sheet.data["summary"]["seeds"] == {"verified": 4, "falsified": 1, "unknown": 0}
    assert [t["nodeid"] for t in sheet.tests] == sorted(r["nodeid"] for r in recs)
