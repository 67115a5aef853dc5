"""Paths and caches: ini paths are relative to the rootdir (command-line paths to the
invocation directory), counterexample pictures are stored relative to the sheet, replay-cache
keys are hashes (a node id is never a path), and a malformed cache entry is dropped with a
warning instead of failing its test on every run."""
from __future__ import annotations

import json
import re

import pytest
from conftest import MODES, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit.plugin import _warm_up
from pytest_latentaudit.plugin.runner import cache_key

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run

TESTS = '''
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(at_least=0.5), radius=False, validity=False)
    @pytest.mark.parametrize("tag", ["../../../../../../../escaped"])
    def test_violated(latent_audit, head, seeds, tag):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(), radius=False, validity=False)
    def test_proved(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''
VIOLATED_ID = "test_cache.py::test_violated[../../../../../../../escaped]"


@pytest.mark.parametrize("mode", MODES)
def test_ini_paths_are_relative_to_the_rootdir(pytester, mode, monkeypatch):
    write_project(pytester.path, {"tests/test_cache.py": TESTS})
    (pytester.path / "tox.ini").write_text("[pytest]\nlatent_spec_sheet = out/sheet.json\n"
                                           "latent_report = out/report.html\n")
    sub = pytester.path / "somewhere" / "deeper"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), str(pytester.path / "tests"),
                                          "--latent-artifacts", "pics")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert (pytester.path / "out" / "sheet.json").is_file() and (pytester.path / "out" / "report.html").is_file()
    assert not (sub / "out").exists()
    # the command-line path is the invocation directory's; the sheet stores it relative to itself
    rec = next(r for r in load_sheet(pytester.path / "out" / "sheet.json")["tests"] if "violated" in r["nodeid"])
    images = [c["image"] for c in rec["counterexamples"] if c.get("image")]
    assert images and all(i.startswith("../somewhere/deeper/pics/") for i in images), images
    assert all((pytester.path / "out" / i).is_file() for i in images)


MALFORMED = [
    "not json at all {",
    json.dumps("a string"),
    json.dumps([{"seed_index": 0, "offset": [0.1]}]),  # the old (raw node id) format
    json.dumps({"nodeid": VIOLATED_ID, "counterexamples": [{"seed_index": 99, "offset": [0.1]}]}),
    json.dumps({"nodeid": VIOLATED_ID, "counterexamples": [{"seed_index": 0, "offset": [0.1, 0.2]}]}),
    json.dumps({"nodeid": VIOLATED_ID, "counterexamples": [{"seed_index": 0, "offset": ["x"]}]}),
    json.dumps({"nodeid": "someone else", "counterexamples": []}),
]


@pytest.mark.parametrize("mode", MODES)
def test_replay_cache_keys_are_hashed_and_malformed_entries_dropped_with_a_warning(pytester, mode):
    """(One project, one first run for both: the runs after it rewrite its cache entry.)"""
    write_project(pytester.path, {"test_cache.py": TESTS})
    result = pytester.runpytest_inprocess(*mode_args(mode))
    result.assert_outcomes(passed=1, failed=1)
    # the replay-cache keys are hashes
    entries = list((pytester.path / ".pytest_cache" / "v" / "latentaudit" / "counterexamples").iterdir())
    assert entries and all(re.fullmatch(r"[0-9a-f]{32}", p.name) for p in entries), entries
    stored = json.loads((pytester.path / ".pytest_cache" / "v" / cache_key(VIOLATED_ID)).read_text())
    assert stored["nodeid"] == VIOLATED_ID and stored["counterexamples"]
    # nothing named after the test, inside the cache or out of it (a raw key would climb out of it)
    assert not list(pytester.path.rglob("*escaped*"))
    assert not list(pytester.path.parent.parent.glob("escaped*")) and not list(pytester.path.parent.glob("escaped*"))

    # a malformed cache entry is dropped with a warning
    entry = pytester.path / ".pytest_cache" / "v" / cache_key(VIOLATED_ID)
    for text in (MALFORMED if mode == "serial" else MALFORMED[3:4]):  # xdist: the workers read it alike
        entry.write_text(text)
        result = pytester.runpytest_inprocess(*mode_args(mode), "-W", "always::pytest_latentaudit.CacheWarning")
        result.assert_outcomes(passed=1, failed=1)  # the same outcomes: the violated test fails for its verdict
        out = result.stdout.str()
        assert "latent spec VIOLATED" in out
        if text.startswith("not json"):
            assert "CacheWarning" not in out  # pytest's cache itself ignores unreadable JSON
        else:
            assert "CacheWarning" in out and "dropped the malformed replay-cache entry" in out, text
        fresh = json.loads(entry.read_text())  # rewritten by the run
        assert fresh["nodeid"] == VIOLATED_ID and all(len(c["offset"]) == 1 for c in fresh["counterexamples"])
