"""Planted false proofs found by the second adversarial soundness hunt.

Each test builds a model and a box where a plain forward pass of the model violates the
spec (the test checks that itself), and requires that no box is ``verified``; the controls
next to them must still be proved, so a fix by refusing everything fails here too.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from pytest_latentaudit import Prediction, verify_box

ALLOWED = {"verified", "falsified", "unknown"}
BUDGET = 1.0


def _identity_head():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return lin


# Prediction(0) holds on this box for the identity head (y0 = x0 >= 1 > 0.1 >= x1 = y1),
# and fails wherever a forward returns -y instead.
LOWER, UPPER = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.2, 0.1]])
POINT = torch.tensor([[1.1, 0.05]])


def _violates(y):
    y = y.reshape(-1)
    return bool(y[1] >= y[0])


def _run(model, engine="linear"):
    res = verify_box(model, LOWER, UPPER, Prediction(0), engine=engine, device="cpu", budget_s=BUDGET)
    assert set(res.status) <= ALLOWED
    for s, x in zip(res.status, res.counterexamples):
        if s == "falsified":  # a counterexample must be in the box (its plain call may be another draw)
            x = x.reshape(LOWER.shape)
            assert bool((LOWER <= x).all() and (x <= UPPER).all())
    return res


def _assert_not_verified(res, what):
    assert "verified" not in res.status, (f"{what}: claimed a proof for a model whose plain calls violate the spec; "
                                          f"status={res.status} notes={res.notes}")


# ------------------------------------------------------------ 1. random draws in forward
class DrawsInForward(nn.Module):
    """Returns ``-y`` (Prediction(0) violated) when a draw from a global generator falls
    below ``p``: each plain call is another draw, so a trace (one draw, baked in) is a
    proof of nothing. From the seeds in ``SEEDS`` the first 60 draws are all above ``p``, so
    the verifier's own calls (the traces, the check points) never see the flip."""

    def __init__(self, source, p=0.05):
        super().__init__()
        self.lin, self.source, self.p = _identity_head(), source, p

    def draw(self):
        if self.source == "random":
            return random.random()
        if self.source == "numpy":
            return float(np.random.uniform())
        return torch.rand(1).tolist()[0]  # torch's generator, read into Python: no random op in the graph

    def forward(self, x):
        y = self.lin(x)
        return -y if self.draw() < self.p else y


SEEDS = {"random": (random.seed, 24), "numpy": (np.random.seed, 26), "torch": (torch.manual_seed, 9)}


@pytest.mark.parametrize("source", ["random", "numpy", "torch"])
def test_a_forward_that_draws_random_numbers_is_not_proved(source):
    model = DrawsInForward(source).eval()
    seed_fn, seed = SEEDS[source]
    state_r, state_np, state_t = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_fn(seed)
        with torch.no_grad():  # honesty: plain calls on a point of the box do violate, some of the time
            assert any(_violates(model(POINT)) for _ in range(300))
        for engine in ("linear", "auto"):
            seed_fn(seed)
            _assert_not_verified(_run(model, engine), f"{source} draws in forward ({engine})")
    finally:
        random.setstate(state_r)
        np.random.set_state(state_np)
        torch.set_rng_state(state_t)


def test_a_forward_without_draws_leaves_the_generators_alone():
    """Control: a deterministic model is proved, and the lowering's calls move no generator."""
    model = nn.Sequential(_identity_head()).eval()
    random.seed(5)
    before = random.getstate(), torch.get_rng_state()
    res = _run(model)
    assert res.status == ["verified"], res.notes
    random.seed(5)
    assert random.getstate() == before[0]


# ------------------------------------------------- 2. state held in tensors or containers
class CountsInState(nn.Module):
    """Counts its calls somewhere other than a plain Python scalar and returns ``-y`` after
    ``after`` of them: the verifier's calls are fine, the user's later ones are not."""

    def __init__(self, how, after=1000):
        super().__init__()
        self.lin, self.how, self.after = _identity_head(), how, after
        self.count = torch.zeros(())  # a plain tensor attribute, not a buffer
        self.state = {"calls": 0}
        self.log = []

    def forward(self, x):
        y = self.lin(x)
        if self.how in ("tensor_in_place", "tensor_rebound"):
            if self.how == "tensor_in_place":
                self.count += 1
            else:
                self.count = self.count + 1
            flip = (self.count > self.after).to(y.dtype)  # no Python branch: traceable
            return y * (1 - 2 * flip)
        if self.how == "dict":
            self.state["calls"] += 1
            calls = self.state["calls"]
        else:
            self.log.append(1)
            calls = len(self.log)
        return -y if calls > self.after else y


@pytest.mark.parametrize("how", ["tensor_in_place", "tensor_rebound", "dict", "list"])
def test_a_forward_that_counts_in_a_tensor_or_container_is_not_proved(how):
    model = CountsInState(how).eval()
    res = _run(model)
    _assert_not_verified(res, f"call counter in a {how}")
    # honesty: once the counter passes `after`, a plain call on a point of the box violates
    with torch.no_grad():
        for _ in range(model.after + 1):
            y = model(POINT)
    assert _violates(y)


def test_old_style_spectral_norm_is_still_proved():
    """Control: ``torch.nn.utils.spectral_norm`` (and weight_norm) rebind the module's
    ``weight`` tensor on every call, to the same values: not a state change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.nn.utils.spectral_norm(model[0])
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
        model[2].bias.copy_(torch.tensor([1.0, -1.0]))
    model.eval()
    res = verify_box(model, LOWER, LOWER + 1e-3, Prediction(int(model(LOWER).argmax())), engine="linear",
                     device="cpu", budget_s=5.0)
    assert res.status == ["verified"], res.notes


# ------------------------------------------ 3. auto_LiRPA bounding another function
class SpatialMean(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))  # any spatial size: a pooling parsed to another size still runs


# auto_LiRPA 0.3 parses these poolings without the attribute that matters (ceil_mode,
# count_include_pad=False, dilation), and its bound of that other function missed the
# bright bottom-right pixel the real pooling sees.
LIRPA_POOLS = {
    "avg_ceil_mode": lambda: nn.AvgPool2d(2, ceil_mode=True),
    "avg_count_include_pad": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "max_dilation": lambda: nn.MaxPool2d(2, stride=1, dilation=2),
}
# upper bounds of the spatial mean that auto_LiRPA 0.3 "proved" (its bound: 0.0, 0.049, 0.25)
LIRPA_UPPER = {"avg_ceil_mode": 0.125, "avg_count_include_pad": 0.063, "max_dilation": 0.625}


@pytest.mark.parametrize("pool", sorted(LIRPA_POOLS))
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_auto_lirpa_does_not_prove_a_pooling_it_parses_differently(pool, method):
    from pytest_latentaudit import OutputRange
    from pytest_latentaudit.engines.lirpa_compat import auto_lirpa_version

    if auto_lirpa_version() is None:
        pytest.skip("auto_LiRPA is not installed")
    model = nn.Sequential(LIRPA_POOLS[pool](), SpatialMean()).eval()
    lower = torch.zeros(1, 1, 3, 3)
    upper = lower.clone()
    upper[0, 0, 2, 2] = 1.0  # one pixel varies
    spec = OutputRange(upper=LIRPA_UPPER[pool])
    with torch.no_grad():  # honesty: the box's corner violates
        assert float(model(upper)) > LIRPA_UPPER[pool]
    res = verify_box(model, lower, upper, spec, engine=f"auto_lirpa:{method}", device="cpu", budget_s=BUDGET)
    _assert_not_verified(res, f"auto_LiRPA {method} on {pool}")
    for s, x in zip(res.status, res.counterexamples):
        if s == "falsified":
            assert bool((lower <= x).all() and (x <= upper).all())
            assert float(model(x.reshape(lower.shape))) > LIRPA_UPPER[pool]


def test_auto_lirpa_still_proves_a_pooling_it_parses_right():
    """Control: plain average pooling (no ceil_mode, padding counted) passes the parse check.
    (Stride = kernel and no padding: with overlapping or padded windows 0.3's CROWN pass is of
    another function, and the pooling is refused; tests/test_soundness_probes4.py.)"""
    from pytest_latentaudit import OutputRange
    from pytest_latentaudit.engines.lirpa_compat import auto_lirpa_version

    if auto_lirpa_version() is None:
        pytest.skip("auto_LiRPA is not installed")
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.AvgPool2d(2), SpatialMean()).eval()
    lower = torch.zeros(1, 1, 4, 4)
    upper = lower + 0.01
    with torch.no_grad():
        top = float(model(upper).max()) + 1.0
    res = verify_box(model, lower, upper, OutputRange(upper=top), engine="auto_lirpa:crown", device="cpu",
                     budget_s=5.0)
    assert res.status == ["verified"], res.notes
