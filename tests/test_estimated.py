"""The ``estimated`` verdict: no proof attempted (engine falsify), so only sampling
evidence exists; the user decides with --latent-estimated whether it passes."""
import json

import pytest

from conftest import MODES, mode_args, write_project

TESTS = '''
import pytest
from pytest_latentaudit import Accuracy

@pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(at_least=0.9), engine="falsify")
def test_light_sampled(latent_audit, head, seeds):
    latent_audit(head, seeds)

@pytest.mark.latent(direction="pose", eps=3.0, spec=Accuracy(at_least=0.9), engine="falsify")
def test_pose_sampled_violated(latent_audit, head, seeds):
    latent_audit(head, seeds)
'''


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action,outcome", [("fail", "failed"), ("pass", "passed"), ("xfail", "xfailed"),
                                            ("skip", "skipped")])
def test_estimated_verdict_follows_the_option(pytester, mode, action, outcome):
    write_project(pytester.path, {"test_est.py": TESTS})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--latent-spec-sheet", "sheet.json",
                                           "--latent-estimated", action, *mode_args(mode))
    # the violated test always fails; the estimated one follows the option
    result.assert_outcomes(**({"failed": 2} if outcome == "failed" else {outcome: 1, "failed": 1}))
    sheet = json.loads((pytester.path / "sheet.json").read_text())
    recs = {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}
    est = recs["test_light_sampled"]
    assert est["verdict"] == "estimated" and est["evidence"] == "estimated"
    e = est["estimate"]
    assert e["confidence"] == 0.99 and e["samples"] > 0
    assert 0.9 <= e["lower"] <= e["fraction"] <= e["upper"] <= 1.0
    assert est["counts"]["verified"] == 0  # nothing was proved: the evidence is statistical
    # sampling evidence never rescues a violated test
    assert recs["test_pose_sampled_violated"]["verdict"] == "violated"
    out = result.stdout.str()
    if action in ("fail", "xfail", "skip"):
        assert "sampling evidence:" in out and "estimated, not proved" in out


def test_bad_estimated_option_is_a_usage_error(pytester):
    write_project(pytester.path, {"test_est.py": TESTS})
    result = pytester.runpytest_subprocess("--latent-estimated", "maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "estimated" in result.stderr.str() and "maybe" in result.stderr.str()
