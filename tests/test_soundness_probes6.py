"""Planted cases of the sixth adversarial soundness hunt (ops with unusual arguments, models
and directions of unusual shapes, engines cross-checked). Each test named ``test_...`` after a
finding is a wrong verdict or a crash found by the hunt, minimised; it fails on the code it
was found on. Controls show the ordinary use of the same op is still proved."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_latentaudit import OutputRange, verify_box

BOUND_ENGINES = ["auto", "ibp", "linear", "bab"]


def _spike(x, c=0.37, w=1000.0):
    """Height 1, half-width ``1 / w`` at ``x = c``: no sample point of the trace check hits it."""
    return torch.relu(1 - w * (x - c).abs())


def _unit_box():
    return torch.zeros(1, 1), torch.ones(1, 1)


# --------------------------------------------- 1. max pooling with a one-element kernel_size
class OneElementKernelPool(nn.Module):
    """``F.max_pool2d(h, (2,))`` on ``[N, 1, 2, 5]``: ATen reads the one-element kernel_size
    (and the stride it defaults to) as 2x2, so output column 1 is the max of input columns 2
    and 3, which hold ``-spike``; column 4 holds 0."""

    def forward(self, x):
        row = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]).expand(1, 1, 2, 5)
        h = -_spike(x).reshape(-1, 1, 1, 1) * row
        return F.max_pool2d(h, (2,))[:, 0, 0, 1:2]


@pytest.mark.parametrize("engine", BOUND_ENGINES)
def test_max_pooling_with_a_one_element_kernel_size_is_not_proved(engine):
    """Planted: ``y = -spike`` reaches -1 at x = 0.37; spec ``y >= -0.5`` on ``[0, 1]``. The
    handler took a kernel_size of length 1 for a 1-d window along the height and reshaped the
    unfolded rows into windows, which for a width of 5 made output column 1 the max over
    columns 2, 3 *and 4* (a constant 0): IBP, linear bounds and branch and bound all "proved"
    ``y >= 0``. The trace check's points miss the spike, where only the graph differs. (A
    width that is a multiple of 2 happened to give the right windows; other shapes, and
    ``[N, H, W]`` inputs, crashed.) kernel_size, stride, padding and dilation of one element
    are now read as ATen reads them, both spatial dims."""
    m = OneElementKernelPool()
    with torch.no_grad():
        assert float(m(torch.tensor([[0.37]]))) == -1.0
    lo, hi = _unit_box()
    res = verify_box(m, lo, hi, OutputRange(lower=[-0.5]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y >= -0.5 where y = -1"
    assert verify_box(m, lo, hi, OutputRange(lower=[-1.5]), engine=engine, budget_s=3).status == ["verified"]


class UnbatchedPool(nn.Module):
    """``F.max_pool2d`` of ``[N, 2, 2]``: torch's unbatched ``[C, H, W]``, one channel per sample."""

    def forward(self, x):
        h = -_spike(x).reshape(-1, 1, 1) * torch.tensor([[0.0, 0.0], [0.0, 1.0]])
        return F.max_pool2d(h - 0.25, 2).reshape(-1, 1)


@pytest.mark.parametrize("engine", BOUND_ENGINES)
def test_max_pooling_of_an_unbatched_shape_gives_a_verdict_not_a_crash(engine):
    """Planted: ``y = max(-0.25, -0.25, -0.25, -0.25 - spike) = -0.25`` everywhere. The windows
    assumed a channel dim and the reshape's RuntimeError escaped ``verify_box``; now a sample
    of ``[N, H, W]`` is pooled as one channel, and ``y >= -0.3`` is proved (``y <= -0.3`` is not)."""
    m = UnbatchedPool()
    lo, hi = _unit_box()
    assert verify_box(m, lo, hi, OutputRange(lower=[-0.3]), engine=engine, budget_s=3).status == ["verified"]
    assert verify_box(m, lo, hi, OutputRange(upper=[-0.3]), engine=engine, budget_s=3).status[0] != "verified"


def test_control_max_pooling_with_a_full_kernel_size_is_proved():
    """Control: ``nn.MaxPool2d(2)`` (kernel_size [2, 2] in the trace) of the same rows is proved."""

    class Full(nn.Module):
        def forward(self, x):
            h = _spike(x).reshape(-1, 1, 1, 1) * torch.ones(1, 1, 2, 4)
            return nn.MaxPool2d(2)(h)[:, 0, 0, :1]

    lo, hi = _unit_box()
    assert verify_box(Full(), lo, hi, OutputRange(upper=[1.01]), engine="linear", budget_s=3).status == ["verified"]


# ------------------------------------- 2. clamp limits the float32 kernel rounds to float32
@pytest.fixture
def reduced_matmul_precision():
    """``torch.set_float32_matmul_precision("high")`` (common in training scripts): float32
    products may take TF32/bfloat16 inputs, so the bound arithmetic runs in float64."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


_LIMIT = 500000017.0  # float32 has no such number: a float32 kernel clamps at 500000032.0


class ClampAtAnUnrepresentableLimit(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        h = -1e9 * _spike(x)
        if self.how == "clamp":
            return torch.clamp(h, min=-_LIMIT)
        return F.hardtanh(h, -_LIMIT, _LIMIT)


@pytest.mark.parametrize("how", ["clamp", "hardtanh"])
@pytest.mark.parametrize("engine", BOUND_ENGINES)
def test_clamp_at_a_limit_float32_cannot_hold_is_not_proved(reduced_matmul_precision, engine, how):
    """Planted: ``y = clamp(-1e9 spike, min=-500000017)`` is ``-500000032`` at x = 0.37 (the
    kernel converts the limit to float32); spec ``y >= -500000018`` on ``[0, 1]``. With the
    bound graph in float64 (reduced-precision matmul settings, TF32 on CUDA) ``ClampOp``
    clamped at the limit as written, which the model never does, and every bound engine
    "proved" the spec with a margin of 1. The handler now converts the limits as the kernel
    does."""
    m = ClampAtAnUnrepresentableLimit(how)
    with torch.no_grad():
        assert float(m(torch.tensor([[0.37]]))) == -500000032.0
    lo, hi = _unit_box()
    res = verify_box(m, lo, hi, OutputRange(lower=[-_LIMIT - 1]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y >= -500000018 where y = -500000032"
    assert verify_box(m, lo, hi, OutputRange(lower=[-_LIMIT - 100]), engine=engine, budget_s=3).status == ["verified"]


def test_control_clamp_at_ordinary_limits_is_proved(reduced_matmul_precision):
    """Control: ``clamp(1 - 2 spike, min=0.25, max=0.75)`` is proved to stay in ``[0.24, 0.76]``."""

    class Ordinary(nn.Module):
        def forward(self, x):
            return torch.clamp(1 - 2 * _spike(x), min=0.25, max=0.75)

    lo, hi = _unit_box()
    res = verify_box(Ordinary(), lo, hi, OutputRange(lower=[0.24], upper=[0.76]), engine="linear", budget_s=3)
    assert res.status == ["verified"]


# ----------------------- 3. a tangent slope that overflows or underflows in float32 bounds
class FarReciprocal(nn.Module):
    """``1e20 / (1e19 + 1e20 spike)``: 10 off the spike, 1/1.1 on it. The reciprocal's
    input reaches 1.1e20, whose square overflows float32."""

    def forward(self, x):
        return 1e20 * torch.reciprocal(1e19 + 1e20 * _spike(x))


class FarRsqrt(nn.Module):
    """``1e19 rsqrt(1e37 + 1e38 spike)``: 3.16 off the spike, 0.953 on it."""

    def forward(self, x):
        return 1e19 * torch.rsqrt(1e37 + 1e38 * _spike(x))


class ConfidentSoftmax(nn.Module):
    """The probability of the losing class of two, with a logit gap of 44 to 50 (the spike),
    scaled by 2**70: 91.9 off the spike, 0.228 on it."""

    def forward(self, x):
        z = torch.cat([0 * _spike(x), 44 + 6 * _spike(x)], 1)
        return torch.softmax(z, dim=1)[:, :1] * 2.0 ** 70


@pytest.mark.parametrize("engine", ["auto", "linear", "bab"])
@pytest.mark.parametrize("model, wrong, right", [(FarReciprocal, 1.2, 0.8), (FarRsqrt, 1.1, 0.9),
                                                 (ConfidentSoftmax, 0.3, 0.2)],
                         ids=["reciprocal", "rsqrt", "softmax"])
def test_a_tangent_whose_slope_leaves_float32s_range_is_not_proved(engine, model, wrong, right):
    """Planted: each model's minimum is on the spike (1/1.1, 0.953, 0.228), spec ``y >= wrong``
    above it. The convex ops' lower line is a tangent at the midpoint ``t`` with slope
    ``f'(t)`` computed in the bound dtype: float32 on CPU, where reciprocal's ``-1 / (t t)``
    is ``-0.0`` for ``t > 2e19`` (and rsqrt's ``-rsqrt(t) / (2 t)`` underflows to 0 for
    ``t > 1e37``), so the "tangent" was the constant ``f(t)``, above ``f`` on the upper half
    of the interval; linear bounds and branch and bound proved ``y >= 1.66`` (and 1.29,
    0.45). IBP (monotone ends) was right. ``f'(t)`` is now evaluated in float64 and a slope
    outside the bound dtype's normal range falls back to the interval bounds."""
    m = model()
    lo, hi = _unit_box()
    res = verify_box(m, lo, hi, OutputRange(lower=[wrong]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y >= {wrong} above the true minimum"
    assert verify_box(m, lo, hi, OutputRange(lower=[right]), engine=engine, budget_s=3).status == ["verified"]


# ----------------------------------- 4. box points that round into float32's subnormal range
_SUB = 2.0 ** -149  # float32's smallest subnormal


class SubnormalGrid(nn.Module):
    """``p = x 2**149`` counts float32 subnormals; ``y = relu(1 - 2 |p1 - 1| - |p2 - 2|)`` is 1 at
    ``x = (1, 2) 2**-149`` and at most 0 at every other float32 point near it."""

    def forward(self, x):
        p = x * 2.0 ** 75 * 2.0 ** 74
        return torch.relu(1 - 2 * (p[:, :1] - 1).abs() - (p[:, 1:2] - 2).abs())


def test_box_points_rounded_to_a_subnormal_input_are_bounded(reduced_matmul_precision):
    """Planted: seed ``(2, 2) 2**-149`` moved by ``t in [-0.6, 0.6]^2 2**-149``: the model is fed
    ``x0 + t`` rounded to float32, which is ``(1, 2) 2**-149`` for ``t1 < -0.5``, where ``y = 1``;
    spec ``y <= 0.5``. The bound engines took the input box with a slack of a few float32 ulps
    relative to ``|x|`` and float64's smallest normal number, which below float32's normal range
    does not cover its (absolute) rounding: with float64 bounds (reduced-precision matmul
    settings) IBP, linear bounds, branch and bound and auto_LiRPA IBP all proved ``p1 >= 1.4``
    and the spec. The slack now adds the input dtype's smallest normal number."""
    from pytest_latentaudit.api import audit

    m = SubnormalGrid()
    with torch.no_grad():
        assert float(m(torch.tensor([[_SUB, 2 * _SUB]]))) == 1.0
    z = torch.full((1, 2), 2 * _SUB)
    for engine in BOUND_ENGINES + ["auto_lirpa:ibp"]:
        res = audit(m, z, direction=torch.eye(2), eps=0.6 * _SUB, spec=OutputRange(upper=[0.5]), engine=engine,
                    budget_s=3)
        assert res.status[0] != "verified", f"{engine} proved y <= 0.5 where a box point gives y = 1"


def test_control_a_box_near_zero_in_the_normal_range_is_proved(reduced_matmul_precision):
    """Control: the same spec on ``y = relu(1 - |x 1e30 - 2|)`` near ``x = 3e-30`` (normal float32
    numbers) is proved: ``y`` is 0 there."""
    from pytest_latentaudit.api import audit

    class Normal(nn.Module):
        def forward(self, x):
            return torch.relu(1 - (x * 1e30 - 2).abs())

    z = torch.full((1, 1), 3e-30)
    res = audit(Normal(), z, direction=torch.eye(1), eps=1e-31, spec=OutputRange(upper=[0.5]), engine="linear",
                budget_s=3)
    assert res.status == ["verified"]


# ------------------------- 5. CROWN refinement of a float64 model in float32 coefficients
class Float64Reciprocal(nn.Module):
    """A float64 model: ``q = 1e30 / (1e30 + 1e31 spike) - 0.95`` (from 0.05 down to -0.859 on
    the spike), ``y = relu(relu(-q) - 0.6)``: 0 off the spike, 0.259 on it."""

    def forward(self, x):
        q = 1e30 / (1e30 + 1e31 * _spike(x)) - 0.95
        return torch.relu(torch.relu(-q) - 0.6)


@pytest.mark.parametrize("engine", ["auto", "linear", "bab"])
def test_crown_refinement_of_a_float64_model_keeps_slopes_below_float32s_range(engine):
    """Planted: spec ``y <= 0.1`` on ``[0, 1]`` (float64 box), violated on the spike. CROWN's
    refinement of the inner ReLU's input ran its backward rows in float32 (``fast``) for any
    graph, also a float64 one: the reciprocal's tangent slope ``-1 / t^2 = -3.3e-62`` became 0
    there, its intercept ``2 / t`` stayed, and the refined bounds claimed ``-q <= 0.617`` (it
    reaches 0.859); the outer ReLU then looked nearly dead, and linear bounds, branch and bound
    and auto proved ``y <= 0.026``. Float32 coefficients are now used on float32 graphs only."""
    m = Float64Reciprocal()
    lo, hi = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    with torch.no_grad():
        assert float(m(torch.tensor([[0.37]], dtype=torch.float64))) > 0.25
    res = verify_box(m, lo, hi, OutputRange(upper=[0.1]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y <= 0.1 where y = 0.259"
    assert verify_box(m, lo, hi, OutputRange(upper=[0.3]), engine=engine, budget_s=3).status == ["verified"]
