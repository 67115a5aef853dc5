"""``--latent-threads``: a pytest-xdist worker runs its latent tests with its share of the cores
(torch's default of a thread per core in every worker oversubscribes them, and bound
propagation's many small ops then crawl), the user's count comes back after each test, and
``keep`` / a number / ``OMP_NUM_THREADS`` are obeyed; with and without xdist."""
from __future__ import annotations

import os
import textwrap

import pytest
from conftest import PROJECT_CONFTEST, write_project

from pytest_latentaudit.plugin.runner import thread_count

@pytest.mark.parametrize("setting, current, workers, env, cpus, want", [
    ("auto", 2, 2, {}, 2, 1),  # two workers on two cores: one thread each
    ("auto", 16, 2, {}, 16, 8),
    ("auto", 4, 2, {}, 16, None),  # already within its share
    ("auto", 2, None, {}, 2, None),  # not an xdist worker: torch's count stays
    ("auto", 2, None, {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"}, 2, None),  # inherited env
    ("auto", 2, 1, {}, 2, None),
    ("auto", 2, 2, {"OMP_NUM_THREADS": "2"}, 2, None),  # the user chose
    ("auto", 2, 2, {"MKL_NUM_THREADS": "2"}, 2, None),
    ("auto", 2, 3, {}, 2, 1),  # more workers than cores: at least 1
    ("keep", 2, 2, {}, 2, None),
    (3, 2, None, {}, 2, 3),  # a number, also outside xdist
    (2, 2, 2, {}, 2, None),  # already that
])
def test_thread_count_rule(setting, current, workers, env, cpus, want):
    assert thread_count(setting, current, workers, env=env, cpus=cpus) == want


SPY = PROJECT_CONFTEST + textwrap.dedent('''

    import os as _os


    def _log(line):
        with open(_os.environ["THREADS_LOG"], "a") as f:
            f.write(line + "\\n")


    def _spy_engine(model, problem, notes):
        import torch

        _log(f"inside {torch.get_num_threads()}")
        return None  # no bounds: falsification only, so the test is unproven (xfail below)


    def pytest_latentaudit_engines():
        return {"spy": _spy_engine}
''')

TESTS = '''
    import torch
    import pytest
    from pytest_latentaudit import Accuracy
    from conftest import _log


    @pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(), engine="spy", unproven="xfail", radius=False)
    @pytest.mark.parametrize("i", [0, 1])
    def test_spied(latent_audit, head, seeds, i):
        _log(f"before {torch.get_num_threads()}")
        try:
            latent_audit(head, seeds)
        finally:
            _log(f"after {torch.get_num_threads()}")
'''


def _run(pytester, monkeypatch, *args):
    log = pytester.path / "threads.log"
    monkeypatch.setenv("THREADS_LOG", str(log))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the suite's inner runs set it: not here
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    write_project(pytester.path, {"test_spy.py": TESTS}, conftest=SPY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)
    result.assert_outcomes(xfailed=2)
    lines = [ln.split() for ln in log.read_text().splitlines()]
    seen = {}
    for kind, n in lines:
        seen.setdefault(kind, []).append(int(n))
    assert len(seen["before"]) == len(seen["inside"]) == len(seen["after"]) == 2, lines
    return seen


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_xdist_workers_get_their_share_of_the_cores_and_give_it_back(pytester, monkeypatch):
    seen = _run(pytester, monkeypatch, "-n", "2")
    share = max(1, _cpus() // 2)
    for before, inside in zip(seen["before"], seen["inside"]):
        assert inside == (share if before > share else before)
    assert seen["after"] == seen["before"]


def test_keep_leaves_the_workers_threads_alone(pytester, monkeypatch):
    seen = _run(pytester, monkeypatch, "-n", "2", "--latent-threads", "keep")
    assert seen["inside"] == seen["before"] == seen["after"]


@pytest.mark.parametrize("mode", ["serial", "xdist"])
def test_a_number_is_used_and_the_count_comes_back(pytester, monkeypatch, mode):
    seen = _run(pytester, monkeypatch, *(["-n", "2"] if mode == "xdist" else []), "--latent-threads", "3")
    assert seen["inside"] == [3, 3]
    assert seen["after"] == seen["before"]


def test_without_xdist_auto_changes_nothing(pytester, monkeypatch):
    seen = _run(pytester, monkeypatch)
    assert seen["inside"] == seen["before"] == seen["after"]
