"""Shared helpers for the pytest-latentaudit test suite.

* ``PROJECT_CONFTEST`` / ``write_project``: a small pytester project whose conftest.py
  defines a ``latent_space`` fixture (tiny decoder Linear -> Sigmoid -> Unflatten to
  1x4x4 and four named directions), a tiny ReLU ``head`` whose class depends only on
  latent coordinate 0, and a ``seeds`` fixture.
* ``run_pytest``: run pytest in a subprocess on a directory and return a
  ``pytest.RunResult`` (used by module-scoped fixtures that share one expensive run
  between many assertions; pytester itself is function-scoped); ``shared_run``: the same,
  once per session even under xdist (the workers share it).
* ``MODES`` / ``mode_args``: every integration test runs without xdist and with ``-n 2``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
JUNIT_XSD = HERE / "data" / "junit-10.xsd"

MODES = ["serial", "xdist"]


def mode_args(mode: str):
    return ["-n", "2"] if mode == "xdist" else []


# The head: logits y0 = z0 + 0.1(relu(z1) + relu(-z1)), y1 = -z0 + 0.1(...), so the
# predicted class is 0 iff z0 > 0 and nothing but z0 matters. Seeds have |z0| >= 1, so a
# test along an axis other than 0 holds for every eps, and along axis 0 it holds exactly
# for eps < min |z0| = 1 and is violated for every seed once eps > max |z0| = 2.
# torch is imported inside the fixtures, as a lazy user's conftest would: the xdist controller
# (which loads conftest.py but runs no test) then never imports torch, which saves about
# 3 CPU-seconds per inner ``-n 2`` run and shows the controller's side of the plugin needs none.
PROJECT_CONFTEST = textwrap.dedent('''
    import pytest

    LATENT_DIM = 3


    def make_head():
        import torch
        from torch import nn

        lin1, lin2 = nn.Linear(3, 4), nn.Linear(4, 2)
        with torch.no_grad():
            lin1.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]))
            lin1.bias.zero_()
            lin2.weight.copy_(torch.tensor([[1.0, -1.0, 0.1, 0.1], [-1.0, 1.0, 0.1, 0.1]]))
            lin2.bias.zero_()
        return nn.Sequential(lin1, nn.ReLU(), lin2)


    def make_decoder():
        import torch
        from torch import nn

        g = torch.Generator().manual_seed(0)
        lin = nn.Linear(LATENT_DIM, 16)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(16, LATENT_DIM, generator=g))
            lin.bias.copy_(torch.randn(16, generator=g))
        return nn.Sequential(lin, nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).eval()


    @pytest.fixture(scope="session")
    def latent_space():
        from pytest_latentaudit import Direction, LatentSpace

        return LatentSpace(decoder=make_decoder(), directions={
            "pose": Direction.axis(0),
            "light": Direction.vector([0.0, 1.0, 1.0]),
            "tilt": Direction.vector([1.0, 1.0, 0.0]),
            "style": Direction.subspace([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        })


    @pytest.fixture
    def head():
        return make_head()


    @pytest.fixture
    def seeds():
        import torch

        z = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 0.0, 0.3], [1.5, -0.2, 0.1], [-2.0, 0.1, 0.1]])
        return z, torch.tensor([0, 1, 0, 1])
''')


def write_project(root: Path, files: dict, conftest: str = PROJECT_CONFTEST) -> Path:
    """Write ``conftest.py`` and ``files`` (name -> dedented source) under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if conftest is not None:
        (root / "conftest.py").write_text(conftest)
    for name, src in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src))
    return root


# Speed only: hypothesis's pytest plugin imports all of hypothesis in every session's terminal
# summary (about 0.8 s of CPU per pytest process); the projects the suite runs never use it.
LEAN_ADDOPTS = "-p no:hypothesispytest"
# Speed only: one torch thread in the runs the suite starts. Their xdist workers share the two
# cores with this suite's own workers, and torch's default (a thread per core) spins on the tiny
# ops of the test projects; the plugin never reads or sets the thread count.
LEAN_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _lean_inner_pytest(request):
    """Inner pytest runs (pytester, in-process or subprocess, and their xdist workers) skip
    the hypothesis plugin; pytester clears PYTEST_ADDOPTS when it starts, so set it after."""
    if "pytester" not in request.fixturenames:
        yield
        return
    # torch's tracer imports much of torch (dynamo, sympy) on its first use in a process and
    # registers operators then: do it before pytester snapshots sys.modules, never inside an
    # in-process run (that restores sys.modules, and a second import would register them again),
    # whatever order the tests run in
    # (the same for the package's modules that an in-process run would otherwise import first)
    import pytest_latentaudit.api  # noqa: F401
    import pytest_latentaudit.core.latent  # noqa: F401
    import pytest_latentaudit.plugin.session  # noqa: F401
    import pytest_latentaudit.core.specs  # noqa: F401
    from pytest_latentaudit.plugin import _warm_up

    _warm_up()
    request.getfixturevalue("pytester")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTEST_ADDOPTS", LEAN_ADDOPTS)
    for key, value in LEAN_ENV.items():
        mp.setenv(key, value)
    yield
    mp.undo()


def run_pytest(cwd: Path, *args: str, env: dict | None = None, timeout: float = 240) -> pytest.RunResult:
    """``python -m pytest *args`` in ``cwd`` (a subprocess), as a ``RunResult``."""
    full_env = dict(os.environ)
    full_env.pop("PYTEST_ADDOPTS", None)
    full_env.pop("PYTEST_XDIST_WORKER", None)
    full_env.update(LEAN_ENV)
    full_env.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *LEAN_ADDOPTS.split(),
                           *map(str, args)],
                          cwd=str(cwd), capture_output=True, text=True, env=full_env, timeout=timeout)
    return pytest.RunResult(proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines(),
                            time.perf_counter() - t0)


def load_sheet(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def records_by_test(sheet: dict) -> dict:
    """Spec-sheet records keyed by the test function name (last part of the node id)."""
    return {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}


def shared_run(tmp_path_factory, name: str, files: dict, *args: str,
               conftest: str = PROJECT_CONFTEST) -> tuple[pytest.RunResult, Path]:
    """``run_pytest(root, *args)`` on a project written from ``files``, once per session:
    ``(RunResult, root)``. Under xdist the workers share it (the first to ask runs it, the
    others wait for it, then read its result and use its files), so that a module-scoped
    fixture built on it costs one run in the suite, not one per worker that needs it."""
    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above every worker's own
    root, done = base / f"shared-{name}", base / f"shared-{name}.json"
    with FileLock(str(done) + ".lock"):
        if not done.exists():
            write_project(root, files, conftest)
            r = run_pytest(root, *args)
            done.write_text(json.dumps({"ret": int(r.ret), "outlines": r.outlines, "errlines": r.errlines,
                                        "duration": r.duration}))
    d = json.loads(done.read_text())
    return pytest.RunResult(d["ret"], d["outlines"], d["errlines"], d["duration"]), root


# ---------------------------------------------------------------- order of this suite
# Wall-clock budget checks (a test call within 3.3 s, ...) go last instead: run next to the
# pytester runs with xdist (which oversubscribe the cores) they overshoot under load.
TIMING_MODULES = {"test_budget", "test_bab"}


def _slowness(item) -> int:
    if getattr(getattr(item, "module", None), "__name__", "") in TIMING_MODULES:
        return 3
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("mode") == "xdist":
        return 0
    if "pytester" in item.fixturenames:
        return 1
    return 2


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Speed only (every test still runs): under xdist the slow tests (pytester runs with
    xdist workers, then the other pytester runs) go out first, so that none of them starts
    last and ends the run alone; the wall-clock budget tests go last. Without xdist the order
    stays pytest's."""
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts alike, as xdist requires
        items.sort(key=_slowness)  # stable


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Speed only: small batches on a shared, busy CPU are many times faster with one thread, and
    under xdist each worker has a core of its own (with torch's default of one thread per core,
    two workers oversubscribe the cores and spin). For every test of this suite's processes; the
    runs it starts (subprocesses, xdist workers) get ``LEAN_ENV`` for the same reason. (Some
    modules still name it in ``pytest.mark.usefixtures("one_torch_thread")``, from when they
    opted in one by one.)"""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hat_model(a, w, n_in=1):
    """Two logits: y0 = w / 4 and y1 = a hat of height w / 2 on [a, a + w] along x0, over
    ``n_in`` inputs: label 0 is violated exactly on (a + w / 4, a + 3 w / 4)."""
    import torch
    from torch import nn

    l1, l2 = nn.Linear(n_in, 3), nn.Linear(3, 2)
    with torch.no_grad():
        l1.weight.zero_()
        l1.weight[:, 0] = 1.0
        l1.bias.copy_(torch.tensor([-a, -a - w / 2, -a - w]))
        l2.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 1.0]]))
        l2.bias.copy_(torch.tensor([w / 4, 0.0]))
    return nn.Sequential(l1, nn.ReLU(), l2).eval()
