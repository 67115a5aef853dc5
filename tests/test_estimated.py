"""The ``estimated`` verdict: no proof attempted (engine falsify), so only sampling
evidence exists; the user decides with --latent-estimated (or the marker's ``estimated=``)
whether it passes."""
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

# the same estimated test once per action, chosen by the marker (one run covers them all)
BY_MARKER = '''
@pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(at_least=0.9), engine="falsify", estimated="{action}")
def test_light_sampled_{action}(latent_audit, head, seeds):
    latent_audit(head, seeds)
'''

OUTCOME = {"fail": "failed", "pass": "passed", "xfail": "xfailed", "skip": "skipped"}
# per mode, the action given on the command line; the marker gives the other three
CLI_ACTION = {"serial": "xfail", "xdist": "pass"}


@pytest.mark.parametrize("mode", MODES)
def test_estimated_verdict_follows_the_option(pytester, mode):
    cli_action = CLI_ACTION[mode]
    marked = [a for a in OUTCOME if a != cli_action]
    write_project(pytester.path, {"test_est.py": TESTS + "".join(BY_MARKER.format(action=a) for a in marked)})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", "--latent-spec-sheet", "sheet.json",
                                          "--latent-estimated", cli_action, *mode_args(mode))
    # the violated test always fails; each estimated one follows its option
    expected = {"failed": 1}
    for a in OUTCOME:
        expected[OUTCOME[a]] = expected.get(OUTCOME[a], 0) + 1
    result.assert_outcomes(**expected)
    sheet = json.loads((pytester.path / "sheet.json").read_text())
    recs = {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}
    names = {cli_action: "test_light_sampled", **{a: f"test_light_sampled_{a}" for a in marked}}
    out = result.stdout.str()
    for action, name in names.items():
        est = recs[name]
        assert est["outcome"] == OUTCOME[action], (action, est["outcome"])
        assert est["verdict"] == "estimated" and est["evidence"] == "estimated"
        e = est["estimate"]
        assert e["confidence"] == 0.99 and e["samples"] > 0
        assert 0.9 <= e["lower"] <= e["fraction"] <= e["upper"] <= 1.0
        assert est["counts"]["verified"] == 0  # nothing was proved: the evidence is statistical
    # the message says what the evidence is, wherever the outcome is reported
    anchors = {"fail": f"_ {names['fail']} _", "xfail": f"XFAIL test_est.py::{names['xfail']} - latent spec ESTIMATED",
               "skip": "SKIPPED [1] "}
    for action, anchor in anchors.items():
        assert anchor in out, (action, out[-3000:])
        block = "\n".join(out[out.index(anchor):].splitlines()[:6])  # (xdist adds a "[gw0] linux" line)
        assert "latent spec ESTIMATED" in block and "sampling evidence:" in block, (action, block)
        assert "estimated, not proved" in block, (action, block)
    # sampling evidence never rescues a violated test
    assert recs["test_pose_sampled_violated"]["verdict"] == "violated"
    assert recs["test_pose_sampled_violated"]["outcome"] == "failed"


def test_bad_estimated_option_is_a_usage_error(pytester):
    write_project(pytester.path, {"test_est.py": TESTS})
    result = pytester.runpytest_inprocess("--latent-estimated", "maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "estimated" in result.stderr.str() and "maybe" in result.stderr.str()
