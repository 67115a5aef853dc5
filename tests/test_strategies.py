"""hypothesis strategies over latent boxes: drawn points lie in the box, failures shrink
towards the seed, a user's property test catches a non-robust model, and latent_boxes
drives a property test of an engine."""
import pytest
import torch
from hypothesis import find, given, settings, strategies as st
from torch import nn

from pytest_latentaudit import Direction, LatentAuditError, LatentSpace, Prediction, verify_box
from pytest_latentaudit.toolkit.strategies import LatentBox, LatentPoint, latent_boxes, latent_points


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

SEEDS = torch.tensor([[0.3, 1.0, -0.5, 0.0], [0.8, -1.0, 0.2, 0.1], [1.2, 0.0, 0.0, 0.5]])
LABELS = torch.tensor([0, 0, 0])
STYLE = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
SPACE = LatentSpace(directions={"pose": Direction.axis(0), "style": Direction.subspace(STYLE),
                                "light": Direction.vector([0.0, 1.0, 0.0, 1.0])})


def make_head():
    """Class 0 iff z[0] > 0: not robust along axis 0 (seed 0 fails for t < -0.3, seed 1
    for t < -0.8), robust along every direction orthogonal to it."""
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        lin.bias.zero_()
    return lin.eval()


HEAD = make_head()


def _fails(p: LatentPoint) -> bool:
    with torch.no_grad():
        return int(HEAD(p.batch).argmax()) != p.label


@settings(max_examples=60, deadline=None, database=None)
@given(p=latent_points(SPACE, "style", 0.7, (SEEDS, LABELS)))
def test_drawn_points_lie_in_the_box(p):
    i, t, z = p  # unpacks as (seed_index, t, z)
    assert 0 <= i < 3 and len(t) == 2 and p.label == 0
    assert all(abs(v) <= 0.7 for v in t)
    V = SPACE.direction("style").basis(4)
    assert torch.allclose(z, SEEDS[i] + V @ torch.tensor(t), atol=1e-6)
    assert torch.equal(p.z0, SEEDS[i])
    assert "seed_index" in repr(p) and "z=" not in repr(p)


@settings(max_examples=30, deadline=None, database=None)
@given(p=latent_points(None, torch.tensor([3.0, 0.0, 0.0, 4.0]), 0.25, SEEDS))
def test_tensor_direction_without_labels(p):
    assert p.label is None and abs(p.t[0]) <= 0.25
    assert torch.allclose(p.z - p.z0, torch.tensor([0.6, 0.0, 0.0, 0.8]) * p.t[0], atol=1e-6)


def test_direction_resolution_errors():
    with pytest.raises(LatentAuditError, match="is a name"):
        latent_points(None, "pose", 0.5, SEEDS)
    with pytest.raises(LatentAuditError, match="unknown direction"):
        latent_points(SPACE, "nope", 0.5, SEEDS)
    with pytest.raises(LatentAuditError, match="eps"):
        latent_points(SPACE, "pose", -1.0, SEEDS)
    with pytest.raises(LatentAuditError, match="labels"):
        latent_points(SPACE, "pose", 0.5, (SEEDS, torch.tensor([0, 1])))


def test_failures_shrink_towards_the_seed():
    """The minimal failing point is the first seed at (almost) the smallest failing offset,
    not a corner of the box."""
    p = find(latent_points(SPACE, "pose", 1.0, (SEEDS, LABELS)), _fails,
             settings=settings(database=None, max_examples=500))
    assert p.seed_index == 0
    assert -0.3 - 1e-3 <= p.t[0] <= -0.3
    # only seed 1 can fail when seed 0 is excluded: shrinks to its boundary, -0.8
    p = find(latent_points(SPACE, "pose", 1.0, (SEEDS[1:], LABELS[1:])), _fails,
             settings=settings(database=None, max_examples=500))
    assert p.seed_index == 0 and -0.8 - 1e-3 <= p.t[0] <= -0.8


def test_user_property_test_fails_on_a_non_robust_model():
    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(p=latent_points(SPACE, "pose", 1.0, (SEEDS, LABELS)))
    def test_pose_keeps_label(p):  # what a user writes
        assert int(HEAD(p.batch).argmax()) == p.label

    with pytest.raises(AssertionError):
        test_pose_keeps_label()

    @settings(max_examples=50, deadline=None, database=None, derandomize=True)
    @given(p=latent_points(SPACE, "light", 5.0, (SEEDS, LABELS)))
    def test_light_keeps_label(p):  # robust: light is orthogonal to axis 0
        assert int(HEAD(p.batch).argmax()) == p.label

    test_light_keeps_label()


def test_drawing_inside_a_test_with_data():
    """Seeds from fixtures: draw with st.data() inside the test."""

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(data=st.data())
    def check(data):
        p = data.draw(latent_points(SPACE, SPACE.direction("pose"), 1.0, (SEEDS, LABELS)), label="point")
        assert not _fails(p)

    with pytest.raises(AssertionError):
        check()


@settings(max_examples=40, deadline=None, database=None)
@given(box=latent_boxes(5, k=2, max_eps=0.5, min_eps=0.1))
def test_latent_boxes_are_well_formed(box):
    assert isinstance(box, LatentBox) and box.k == 2 and 0.1 <= box.eps <= 0.5
    assert torch.allclose(box.V.T @ box.V, torch.eye(2), atol=1e-5)
    lower, upper = box.bounds()
    x, t = box.sample(64, torch.Generator().manual_seed(0))
    assert torch.all(t.abs() <= box.eps)
    assert torch.all(x >= lower - 1e-5) and torch.all(x <= upper + 1e-5)
    assert box.direction.basis(5).shape == (5, 2)
    if box.axes is not None:  # axis boxes: bounds is the box itself, its corners are points
        assert torch.allclose(upper - lower, 2 * box.eps * box.V.abs().sum(1), atol=1e-6)


def _tiny_net():
    g = torch.Generator().manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for prm in m.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g))
    return m.eval()


NET = _tiny_net()


@settings(max_examples=12, deadline=None, database=None, derandomize=True)
@given(box=latent_boxes(3, k=1, max_eps=0.6, axes_only=True))
def test_engine_property_verified_boxes_have_no_failing_sample(box):
    """A property test of the engines driven by latent_boxes: never a false proof, and
    every counterexample lies in its box and fails."""
    lower, upper = box.bounds()
    with torch.no_grad():
        label = NET(box.z0[None]).argmax(1)
    r = verify_box(NET, lower[None], upper[None], Prediction(label), engine="linear", budget_s=5)
    x, _ = box.sample(256, torch.Generator().manual_seed(0))
    with torch.no_grad():
        keeps = NET(x).argmax(1) == label
    if r.status[0] == "verified":
        assert bool(keeps.all())
    if r.status[0] == "falsified":
        cex = r.counterexamples[0]
        assert torch.all(cex >= lower - 1e-6) and torch.all(cex <= upper + 1e-6)
        with torch.no_grad():
            assert int(NET(cex[None]).argmax()) != int(label)
