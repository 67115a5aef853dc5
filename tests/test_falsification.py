"""Falsification behaviour users rely on: confident targeted failing tests meet their
margin, counterexamples replay across runs, and a seed reproduces a counterexample."""
import json
import textwrap

import pytest
import torch
from torch import nn

from pytest_latentaudit import ConfidentTargeted, Direction, audit

from conftest import MODES, mode_args, write_project


def _head(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


# on this head 60 seeds can reach class 2 at all, 9 by a lead of 0.5, none by 2.0
@pytest.mark.parametrize("margin,n_reachable", [(0.0, 60), (0.5, 9), (2.0, 0)])
def test_confident_targeted_counterexamples_meet_their_margin(margin, n_reachable):
    head = _head()
    torch.manual_seed(1)
    z = torch.randn(64, 4)
    V = torch.eye(4)[:, :2]
    res = audit(head, z, direction=Direction.subspace(V), eps=2.0,
                spec=ConfidentTargeted(target=2, margin=margin), engine="falsify", budget_s=20)
    for c in res.counterexamples:
        with torch.no_grad():
            y = head(c.z[None])[0]
        lead = float(y[2] - y[:2].max())
        assert lead > margin - 1e-6  # f_t(x) - max_{y != t} f_y(x) > c, re-checked here
        assert c.predicted == 2
        assert all(abs(o) <= 2.0 + 1e-6 for o in c.offset)
    # the truth on a dense grid of the 2-D box: seeds where some point leads by > margin
    g = torch.linspace(-2.0, 2.0, 81)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        y = head(z[:, None, :] + (grid @ V.T)[None]).reshape(64, -1, 3)
    reachable = ((y[..., 2] - y[..., :2].amax(-1)) > margin + 1e-3).any(1)
    assert int(reachable.sum()) == n_reachable  # the setting is what this test claims
    found = torch.zeros(64, dtype=torch.bool)
    found[[c.seed_index for c in res.counterexamples]] = True
    assert int((found & reachable).sum()) >= 0.9 * int(reachable.sum())


def test_confident_targeted_proof_is_sound():
    head = _head(3)
    torch.manual_seed(4)
    z = torch.randn(32, 4)
    res = audit(head, z, direction=Direction.axis(0), eps=0.3, spec=ConfidentTargeted(target=1, margin=1.0))
    ts = torch.linspace(-0.3, 0.3, 601)
    for i, s in enumerate(res.status):
        if s == "verified":
            pts = z[i][None].repeat(601, 1)
            pts[:, 0] += ts
            with torch.no_grad():
                y = head(pts)
            lead = y[:, 1] - torch.maximum(y[:, 0], y[:, 2])
            assert float(lead.max()) <= 1.0 + 1e-5


def test_the_same_seed_reproduces_the_same_counterexample():
    from pytest_latentaudit import Accuracy

    head = _head(5)
    torch.manual_seed(6)
    z = torch.randn(48, 4)
    with torch.no_grad():
        labels = head(z).argmax(1)
    a, b, c = (audit(head, (z, labels), direction=Direction.subspace(torch.eye(4)[:, 1:4]), eps=1.5,
                     spec=Accuracy(0.5), engine="falsify", seed=seed) for seed in (7, 7, 8))
    assert a.counterexamples, "this box has violations"
    assert [x.seed_index for x in a.counterexamples] == [x.seed_index for x in b.counterexamples]
    for x, y in zip(a.counterexamples, b.counterexamples):
        assert x.offset == y.offset  # bit-identical
    # another seed explores from other random starts, and finds real violations too
    assert c.counterexamples


REPLAY_TESTS = textwrap.dedent('''
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="pose", eps=3.0, spec=Accuracy(at_least=0.5), engine="{engine}")
    def test_pose_violated(latent_audit, head, seeds):
        latent_audit(head, seeds)
''')


@pytest.mark.parametrize("mode", MODES)
def test_counterexamples_replay_from_the_cache_on_the_next_run(pytester, mode):
    write_project(pytester.path, {"test_replay.py": REPLAY_TESTS.format(engine="falsify")})
    args = ["--latent-spec-sheet", "sheet.json", *mode_args(mode)]
    first = pytester.runpytest_inprocess(*args)
    first.assert_outcomes(failed=1)
    rec1 = json.loads((pytester.path / "sheet.json").read_text())["tests"][0]
    assert rec1["counts"]["falsified"] > 0 and "replay" not in rec1["rungs"]
    cache = list((pytester.path / ".pytest_cache" / "v" / "latentaudit" / "counterexamples").iterdir())
    assert cache, "counterexamples are stored in pytest's cache (under a hash of the node id)"
    second = pytester.runpytest_inprocess(*args)
    second.assert_outcomes(failed=1)
    rec2 = json.loads((pytester.path / "sheet.json").read_text())["tests"][0]
    # every stored counterexample is re-checked first and still fails: decided by replay
    assert rec2["rungs"].get("replay", 0) == rec1["counts"]["falsified"]
    assert rec2["counts"]["falsified"] >= rec1["counts"]["falsified"]
    # with the cache off nothing is replayed
    third = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    rec3 = json.loads((pytester.path / "sheet.json").read_text())["tests"][0]
    assert "replay" not in rec3["rungs"]


class _BatchSpike(nn.Module):
    """Class 1 wins near ``x0 = 0.3`` only when the batch holds more than one point: a
    forward that depends on its batch size (refused for proofs), whose "violations" the
    point alone does not reproduce."""

    def forward(self, x):
        bump = torch.relu(0.05 - (x[:, :1] - 0.3).abs()) * 100.0 * float(x.shape[0] > 1)
        return torch.cat([torch.ones_like(x[:, :1]), bump], 1)


def test_a_counterexample_must_violate_on_its_own():
    from pytest_latentaudit import Prediction, verify_box

    lower, upper = torch.zeros(3, 2), torch.ones(3, 2)  # three boxes: candidates come in batches
    res = verify_box(_BatchSpike(), lower, upper, Prediction(0), engine="auto", budget_s=2)
    assert res.status == ["unknown"] * 3, res.status  # nothing a user could re-check alone
    # the control: the same bump in every batch size is falsified, and the point alone violates
    class Spike(_BatchSpike):
        def forward(self, x):
            bump = torch.relu(0.05 - (x[:, :1] - 0.3).abs()) * 100.0
            return torch.cat([torch.ones_like(x[:, :1]), bump], 1)

    res = verify_box(Spike(), lower, upper, Prediction(0), engine="auto", budget_s=2)
    assert res.status == ["falsified"] * 3
    for cex in res.counterexamples:
        assert int(Spike()(cex.reshape(1, -1)).argmax(1)) == 1
