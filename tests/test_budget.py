"""One budget per latent test: the audit, the sweep, the certified-radius search and the
validity checks share ``--latent-budget`` seconds, the whole test call ends within 10% of it,
and the record and the terminal say what was cut short."""
from __future__ import annotations

import textwrap
from xml.etree import ElementTree

import pytest
from conftest import MODES, PROJECT_CONFTEST, load_sheet, mode_args, write_project

import pytest_latentaudit.api  # noqa: F401  (see test_plugin.py: shared modules for in-process runs)
import pytest_latentaudit.core.latent  # noqa: F401
import pytest_latentaudit.plugin.session  # noqa: F401
import pytest_latentaudit.core.specs  # noqa: F401
from pytest_latentaudit.plugin import _warm_up
from pytest_latentaudit.plugin.runner import Budget

_warm_up()  # torch's tracer registers operators once per process: not inside an in-process run

# a head too large to prove or falsify every seed in 3 s: the budget decides what is done
BIG = textwrap.dedent('''

    @pytest.fixture
    def big_head():
        import torch
        from torch import nn

        g = torch.Generator().manual_seed(0)
        layers, d = [], 3
        for w in (256, 256, 256):
            lin = nn.Linear(d, w)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(w, d, generator=g) / d ** 0.5)
                lin.bias.zero_()
            layers += [lin, nn.ReLU()]
            d = w
        out = nn.Linear(d, 4)
        with torch.no_grad():
            out.weight.copy_(torch.randn(4, d, generator=g) / d ** 0.5)
        return nn.Sequential(*layers, out)


    @pytest.fixture
    def big_seeds(big_head):
        import torch

        z = torch.randn(48, 3, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return z, big_head(z).argmax(1)
''')

TESTS = '''
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="style", eps=0.6, spec=Accuracy(), budget=3, sweep=[0.3, 1.2])
    def test_big_everything(latent_audit, big_head, big_seeds):
        latent_audit(big_head, big_seeds)

    @pytest.mark.latent(direction="style", eps=0.6, spec=Accuracy(), budget=3, radius=False)
    def test_big_audit_only(latent_audit, big_head, big_seeds):
        latent_audit(big_head, big_seeds)

    @pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(), budget=10, sweep=[0.25, 1.0])
    def test_small_everything(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''


# a wall-clock bound: another process on the same cores can steal the time (pytest-rerunfailures)
@pytest.mark.flaky(reruns=2)
@pytest.mark.parametrize("mode", MODES)
def test_budget_3_test_call_ends_within_3_3_s(pytester, mode):
    write_project(pytester.path, {"test_budget_use.py": TESTS}, conftest=PROJECT_CONFTEST + BIG)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), "--latent-spec-sheet",
                                          "sheet.json", "--junitxml", "junit.xml", "-o", "junit_duration_report=call",
                                          "--latent-unproven", "xfail")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    calls = {tc.get("name"): float(tc.get("time")) for tc in ElementTree.parse(pytester.path / "junit.xml").iter("testcase")}
    assert set(calls) == {"test_big_everything", "test_big_audit_only", "test_small_everything"}
    for name, seconds in calls.items():
        assert seconds <= (11.0 if "small" in name else 3.3), (name, seconds, result.stdout.str())
    recs = {r["nodeid"].split("::")[-1]: r for r in load_sheet(pytester.path / "sheet.json")["tests"]}
    big = recs["test_big_everything"]
    assert big["budget"] == 3 and big["seconds"] <= 3.3
    assert big["cut_short"], big  # 3 s is not enough for this head: something was cut, and said so
    assert f"test_big_everything: budget 3 s cut short {', '.join(big['cut_short'])}" in result.stdout.str()
    only = recs["test_big_audit_only"]  # the deadline stopped the audit with seeds undecided: said so
    assert any(c.startswith("audit (") and "undecided at its deadline" in c for c in only["cut_short"]), only
    small = recs["test_small_everything"]  # enough budget: nothing cut, every extra recorded
    assert "cut_short" not in small and [p["eps"] for p in small["sweep"]] == [0.25, 1.0]
    assert small["certified_radius"]["n"] == 4 and small["validity"]["direction"] == "light"


def test_budget_grants():
    b = Budget(10.0, lags={}, model_key="m")
    assert b.grant(0.6) == pytest.approx(6.0 / 1.5, abs=0.05)  # an unmeasured engine may run 50% over
    b.observe("audit", 4.0, 3.0)  # finished early: teaches nothing
    assert b.factor() == 1.5
    b.observe("audit", 4.0, 5.0)  # ran 25% past its grant
    assert b.factor() == pytest.approx(1.25) and b.grant(0.6) == pytest.approx(6.0 / 1.25, abs=0.05)
    b.observe("audit", 4.0, 4.0)
    assert b.factor() == pytest.approx(1.0)  # decays slowly, never below 1
    b.observe("audit", 1.0, 100.0)
    assert b.factor() == 3.0  # capped
    assert Budget(10.0, lags=b.lags, model_key="other").factor() == 1.5  # learned per model
    assert Budget(None).grant(0.6) is None
    late = Budget(1.0, start=0.0)  # started long ago: nothing left
    assert late.grant(1.0) == 0.0 and late.left() < 0
    n = Budget(3.0, lags={})
    n.saw_call(2.0)
    assert n.min_call() is None  # no model key: nothing learned
    m = Budget(3.0, lags={}, model_key="m")
    m.saw_call(2.0)
    m.saw_call(1.0)
    assert m.min_call() == 1.0


def test_first_latent_test_is_warm_when_torch_comes_with_its_fixtures(pytester):
    """torch imported only inside a fixture (not at collection): the tracer is still warmed up in
    the first latent test's setup, before its call and its budget start."""
    pytester.makeconftest('''
        import pytest


        @pytest.fixture(scope="session")
        def latent_space():
            import torch  # noqa: F401  (first import of torch in this process)
            from pytest_latentaudit import Direction, LatentSpace
            return LatentSpace(directions={"pose": Direction.axis(0)})
    ''')
    pytester.makepyfile(test_lazy='''
        import sys

        import pytest
        from pytest_latentaudit import Accuracy


        def test_plain():
            assert "torch" not in sys.modules


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy(), budget=5)
        def test_first_latent(latent_space, latent_audit):
            from pytest_latentaudit import plugin

            assert plugin._WARM["done"], "the tracer was not warmed up before the first latent call"
            import torch
            head = torch.nn.Linear(2, 2)
            with torch.no_grad():  # class 0 iff z0 > 0: holds on the box, the falsifier cannot prove it
                head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
                head.bias.zero_()
            latent_audit(head, (torch.tensor([[1.0, 0.0]]), torch.tensor([0])), engine="falsify",
                         unproven="xfail")
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1, xfailed=1)


def test_first_library_call_does_not_spend_its_budget_on_the_tracer_import():
    """Outside pytest too: the tracer's one-time import (torch._dynamo, about a second) comes
    before verify_box's clock, so a fresh process's first call with a half-second budget still
    proves a tiny network (before: 0 of 4, the budget gone before the first bound), and the
    import leaves the warning filters as they were."""
    import subprocess
    import sys

    code = textwrap.dedent('''
        import sys
        import warnings
        import torch
        from torch import nn
        from pytest_latentaudit import Prediction, verify_box
        assert "torch._dynamo" not in sys.modules
        filters = list(warnings.filters)
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        z = torch.randn(4, 4)
        r = verify_box(m, z - 1e-3, z + 1e-3, Prediction(m(z).argmax(1)), engine="linear", budget_s=0.5)
        assert warnings.filters == filters, "the tracer's import changed the warning filters"
        print(r.counts()["verified"], r.seconds)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    verified, seconds = out.stdout.split()
    assert int(verified) == 4, out.stdout
    assert float(seconds) < 0.5


def test_a_budget_too_short_for_any_bound_says_so():
    """An unknown verdict whose budget ran out before the first bound names the budget, so
    a user does not read it as a bound that failed."""
    import torch
    from torch import nn

    from pytest_latentaudit import Prediction, verify_box

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    z = torch.randn(8, 4)
    labels = model(z).argmax(1)
    res = verify_box(model, z - 1e-3, z + 1e-3, Prediction(labels), budget_s=1e-6)
    assert "verified" not in res.status
    assert any("budget ran out before any box was bounded" in n for n in res.notes), res.notes
    ok = verify_box(model, z - 1e-3, z + 1e-3, Prediction(labels), budget_s=10)
    assert ok.counts()["verified"] == 8 and not any("budget ran out" in n for n in ok.notes), ok.notes
