"""Planted cases of the fourth adversarial soundness hunt (auto_LiRPA backend on CNNs, products,
branch and bound, lowering checks). Each test is a false proof, a wrong verdict or a crash
found by the hunt, minimised; it fails on the code it was found on."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_latentaudit import OutputRange, Prediction, verify_box


def _dense_max(model, lo, hi, n=200001):
    """Max of the (single) output over a dense grid of the box's only varying coordinate."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    x = (lo.double() + t * (hi - lo).double()).to(lo.dtype)
    with torch.no_grad():
        return float(model(x).reshape(n, -1)[:, 0].max())


# ------------------------------------------------------------- 1. auto_LiRPA's jit tracer
class JitTracerAware(nn.Module):
    """A ReLU head plus a narrow spike (height 10, width 2e-3 at x0 = 0.37) that a forward
    leaves out when it runs under ``torch.jit.trace`` (``torch.jit.is_tracing()``, which real
    code uses to skip asserts or take export-friendly paths). auto_LiRPA 0.3 parses the model
    with ``jit.trace``: it bounds the spike-free function; the parse check's points (corners,
    centre, 8 random) miss the spike, and make_fx's native trace (which has the spike) only
    supplies the float-rounding slack."""

    def __init__(self, how="is_tracing"):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.how = nn.Linear(2, 8), nn.Linear(8, 1), how

    def forward(self, x):
        y = self.l2(F.relu(self.l1(x)))
        tracing = torch.jit.is_tracing() if self.how == "is_tracing" else torch._C._get_tracing_state() is not None
        if not tracing:
            y = y + 10 * F.relu(1 - 1000 * (x[:, :1] - 0.37).abs())
        return y


@pytest.mark.parametrize("how", ["is_tracing", "tracing_state"])
@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:ibp"])
def test_auto_lirpa_a_forward_that_notices_jit_trace_is_not_proved(engine, how):
    model = JitTracerAware(how).eval()
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert _dense_max(model, lo, hi) > 9.0  # the spike, as the user's model runs
    res = verify_box(model, lo, hi, OutputRange(upper=[0.5]), engine=engine, budget_s=5)
    assert res.status[0] != "verified", "auto_LiRPA proved the jit-traced function, not the model"


# ------------------------------------------------- 2. auto_LiRPA and LeakyReLU outside [0, 1]
def _leaky_valley(slope):
    """``y = 1e-3 (leaky(u) - k u)``, ``u = 1000 (x - 0.3137)``: with a negative slope ``leaky``
    is a V (k = 0), with a slope above 1 it is concave (k between 1 and the slope): either way
    ``y`` has its extreme 0 at the interior point x = 0.3137, and the spec (``y >= 1e-3`` for
    the V, ``y <= -1e-3`` for the peak) fails only within 2e-6 of it. auto_LiRPA 0.3's
    BoundLeakyRelu assumes a slope in [0, 1] (monotone, convex): its bounds of both are wrong
    (the parse check compares forward values only, which are right)."""
    k = 0.0 if slope < 0 else 1.5
    m = nn.Sequential(nn.Linear(1, 2), nn.LeakyReLU(slope), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1000.0)
        m[0].bias.copy_(torch.tensor([-313.7, -313.7 - 5000.0]))  # neuron 2: < 0 on the box, leaky = slope v
        m[2].weight.copy_(torch.tensor([[1e-3, -1e-3 * k / slope]]))
        m[2].bias.fill_(-1e-3 * k * 5000.0)
    return m


@pytest.mark.parametrize("slope", [-0.5, 2.0])
@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:crown-ibp", "auto_lirpa:alpha-crown"])
def test_auto_lirpa_leaky_relu_with_a_slope_outside_0_1_is_not_proved(engine, slope):
    model = _leaky_valley(slope)
    lo, hi = torch.tensor([[-1.0]]), torch.tensor([[1.0]])
    x = torch.tensor([[0.3137]])
    with torch.no_grad():
        y = float(model(x))
    spec = OutputRange(lower=[1e-3]) if slope < 0 else OutputRange(upper=[-1e-3])
    assert (y < 1e-3) if slope < 0 else (y > -1e-3), y  # the spec fails at x = 0.3137
    res = verify_box(model, lo, hi, spec, engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"auto_LiRPA 0.3 proved a LeakyReLU({slope}) spec that fails at x = 0.3137"


# ------------------------------------- 3. auto_LiRPA's AvgPool2d backward with overlap or padding
def _hat_into_avgpool(kernel, stride, padding):
    """A hat of height 10 and half-width 1e-3 at t = 0.37 (three ReLUs) written into the last
    pixel of a 6x6 image, average pooling, and a head reading the last pooled position only:
    ``y`` reaches 10 / kernel^2 at t = 0.37 and is 0 elsewhere. auto_LiRPA 0.3's
    ``BoundAveragePool.bound_backward`` on a dense A (a Linear head's rows) upsamples A by the
    kernel size, as if the stride were the kernel and there were no padding: with overlapping
    windows or padding, the head's row lands on the wrong pixels (cropped away here), so CROWN
    says ``y <= 0`` and the intersection with IBP keeps it."""
    m = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 36), nn.Unflatten(1, (1, 6, 6)),
                      nn.AvgPool2d(kernel, stride, padding), nn.Flatten())
    with torch.no_grad():
        n = m(torch.zeros(1, 1)).shape[1]
    m.append(nn.Linear(n, 1))
    with torch.no_grad():
        m[0].weight.fill_(1000.0)
        m[0].bias.copy_(torch.tensor([-369.0, -370.0, -371.0]))
        m[2].weight.zero_()
        m[2].bias.zero_()
        m[2].weight[35] = torch.tensor([10.0, -20.0, 10.0])
        m[6].weight.zero_()
        m[6].bias.zero_()
        m[6].weight[0, n - 1] = 1.0
    return m.eval()


@pytest.mark.parametrize("pool", [(2, 1, 0), (3, 1, 1), (2, 2, 1)])
@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:crown-ibp", "auto_lirpa:alpha-crown"])
def test_auto_lirpa_avgpool_with_overlap_or_padding_is_not_proved(engine, pool):
    model = _hat_into_avgpool(*pool)
    lo, hi = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    with torch.no_grad():
        assert float(model(torch.tensor([[0.37]]))) > 1.1  # the spec y <= 1 fails at t = 0.37
    res = verify_box(model, lo, hi, OutputRange(upper=[1.0]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"auto_LiRPA 0.3 CROWN through AvgPool2d{pool} proved a false spec"


# ------------------------------------------ 4. auto_LiRPA bounds a float64 copy of the model
class DtypeAware(nn.Module):
    """The spike of section 1, present when the forward runs in float32 (``x.dtype``, torch's
    default dtype, or ``torch.finfo(x.dtype)`` deciding, as mixed-precision code does). The
    backend bounds a private copy cast to float64, under float64 as the default dtype: the copy
    computes the spike-free function, the parse check compares the parse with that copy, and the
    native float32 graph (which has the spike) only supplies the rounding slack."""

    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.how = nn.Linear(2, 8), nn.Linear(8, 1), how

    def forward(self, x):
        y = self.l2(F.relu(self.l1(x)))
        if self.how == "dtype":
            on = x.dtype == torch.float32
        elif self.how == "default_dtype":
            on = torch.get_default_dtype() == torch.float32
        else:
            on = torch.finfo(x.dtype).eps > 1e-10
        if on:
            y = y + 10 * F.relu(1 - 1000 * (x[:, :1] - 0.37).abs())
        return y


@pytest.mark.parametrize("how", ["dtype", "default_dtype", "finfo"])
@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:ibp"])
def test_auto_lirpa_a_forward_that_depends_on_its_dtype_is_not_proved(engine, how):
    model = DtypeAware(how).eval()
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert _dense_max(model, lo, hi) > 9.0  # the user's float32 model has the spike
    res = verify_box(model, lo, hi, OutputRange(upper=[0.5]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", "auto_LiRPA proved the float64 copy's function, not the float32 model"


# ----------------------------------------------- 5. a call counter in the modules' hook registry
def _spike(x):
    return 10 * F.relu(1 - 1000 * (x[:, :1] - 0.37).abs())


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(2, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


class HookRegistryCounter(_Head):
    """Each call registers a (no-op) forward hook on a submodule, and the spike switches on once
    the registry holds more than 1000: a call counter kept in ``_forward_hooks``, which the
    state comparison (attributes, dicts, lists of the modules; globals; closures) does not look
    at. The verifier's dozen calls see no spike; the user's thousandth does."""

    def forward(self, x):
        self.l2.register_forward_hook(lambda mod, args, out: None)
        return super().forward(x) + _spike(x) * float(len(self.l2._forward_hooks) > 1000)


@pytest.mark.parametrize("engine", ["auto", "linear", "bab"])
def test_a_forward_that_counts_its_calls_in_the_hook_registry_is_not_proved(engine):
    model = HookRegistryCounter().eval()
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    res = verify_box(model, lo, hi, OutputRange(upper=[0.5]), engine=engine, budget_s=3)
    with torch.no_grad():
        for _ in range(1000):
            model(torch.tensor([[0.37, 0.0]]))
    assert _dense_max(model, lo, hi) > 9.0  # the user's later calls break the spec
    assert res.status[0] != "verified", "a forward whose hook registry counts its calls was proved"


# ---------------------------------------- 6. crash: an instance-level forward closing over the model
def test_auto_lirpa_instance_forward_closing_over_the_model_gives_a_verdict_not_a_crash():
    """``model.forward = lambda x: orig(x)`` (a wrapper set on the instance, as monkey-patching
    code does): ``copy.deepcopy`` keeps the lambda, which still calls the *user's* float32 model,
    so the backend's float64 copy fails inside ``_build`` (``work(center)``, outside the
    try that turns failures into LirpaUnsupported) and verify_box raises RuntimeError ("mat1 and
    mat2 must have the same dtype")."""
    model = _Head().eval()
    orig = model.forward
    model.forward = lambda x: orig(x)
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    res = verify_box(model, lo, hi, OutputRange(upper=[0.5]), engine="auto_lirpa:crown", budget_s=3)
    assert res.status[0] in {"verified", "falsified", "unknown"}


# ----------------------------------------------- 7. auto_LiRPA's Gather with repeated indices
class DuplicateSelect(nn.Module):
    """``r = relu(sum(x) - 7.9)`` on ``[0, 1]^8`` (non-zero only near the all-ones corner, where
    it reaches 0.1; zero gradient elsewhere, and 8 dims are too many for the corner check),
    selected twice with ``index_select`` and summed: ``y = 2 r <= 0.2``. auto_LiRPA 0.3's
    ``BoundGather.bound_backward`` scatters A back with ``scatter_`` (not an add), so the two
    copies' rows overwrite each other and CROWN bounds ``r``, not ``2 r``: it proves
    ``y <= 0.15``, which fails at the corner."""

    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(8, 2), nn.Linear(2, 1)
        with torch.no_grad():
            self.a.weight.fill_(1.0)
            self.a.bias.fill_(-7.9)
            self.o.weight.fill_(1.0)
            self.o.bias.zero_()
        self.register_buffer("idx", torch.tensor([0, 0]))

    def forward(self, x):
        return self.o(F.relu(self.a(x)).index_select(1, self.idx))


@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:crown-ibp", "auto_lirpa:alpha-crown"])
def test_auto_lirpa_index_select_with_a_repeated_index_is_not_proved(engine):
    model = DuplicateSelect().eval()
    lo, hi = torch.zeros(1, 8), torch.ones(1, 8)
    with torch.no_grad():
        assert float(model(hi)) > 0.15  # the corner breaks y <= 0.15
    res = verify_box(model, lo, hi, OutputRange(upper=[0.15]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", "auto_LiRPA 0.3's Gather with a repeated index proved a false spec"


# ------------------------------- 8. call counters in containers the state comparison does not read
import array as _array  # noqa: E402
import collections as _collections  # noqa: E402
import itertools as _itertools  # noqa: E402

import numpy as _np  # noqa: E402

_COUNT = _itertools.count()
_DEQUE: "_collections.deque" = _collections.deque()
_NP = _np.zeros(1)
_BYTES = bytearray()
_ARRAY = _array.array("i")


class CountsInContainers(_Head):
    """A call counter kept in a global ``itertools.count``, ``deque``, NumPy array, ``bytearray``
    or ``array.array``, or in a submodule's forward pre-hook registry; the spike switches on
    after 1000 calls. The state comparison reads numbers, strings, tensors, lists, tuples, dicts
    and sets (and user-class helpers), not these, so the verifier's calls look stateless."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "itertools.count":
            n = next(_COUNT)
        elif self.how == "deque":
            _DEQUE.append(1)
            n = len(_DEQUE)
        elif self.how == "numpy":
            _NP[0] += 1
            n = float(_NP[0])
        elif self.how == "bytearray":
            _BYTES.append(1)
            n = len(_BYTES)
        elif self.how == "array":
            _ARRAY.append(1)
            n = len(_ARRAY)
        else:  # "pre_hooks"
            self.l1.register_forward_pre_hook(lambda mod, args: None)
            n = len(self.l1._forward_pre_hooks)
        return super().forward(x) + _spike(x) * float(n > 1000)


@pytest.mark.parametrize("how", ["itertools.count", "deque", "numpy", "bytearray", "array", "pre_hooks"])
def test_a_forward_that_counts_its_calls_in_an_unread_container_is_not_proved(how):
    model = CountsInContainers(how).eval()
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    res = verify_box(model, lo, hi, OutputRange(upper=[0.5]), engine="auto", budget_s=3)
    with torch.no_grad():
        for _ in range(1000):
            model(torch.tensor([[0.37, 0.0]]))
    assert _dense_max(model, lo, hi) > 9.0  # the user's later calls break the spec
    assert res.status[0] != "verified", f"a forward counting its calls in a {how} was proved"


# ------------------------- 9. auto_LiRPA's patches mode: grouped or dilated convs behind another conv
def _conv_chain(kind, seed):
    torch.manual_seed(seed)
    if kind == "dilation":
        layers = [nn.Conv2d(1, 2, 1), nn.Conv2d(2, 3, 2, padding=1, dilation=2), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU()]
    else:
        layers = [nn.Conv2d(1, 2, 1), nn.Conv2d(2, 4, 2, groups=2), nn.ReLU()]
    body = nn.Sequential(*layers, nn.Flatten()).eval()
    with torch.no_grad():
        n = body(torch.zeros(1, 1, 7, 7)).shape[1]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(n, 2)).eval()


def _pgd_max(model, lo, hi, fn, n=4000, steps=60, seed=0):
    """Largest ``fn(model(x))`` found in the box (sampling, then signed-gradient ascent)."""
    g = torch.Generator().manual_seed(seed)
    x = lo + torch.rand(n, *lo.shape[1:], generator=g) * (hi - lo)
    with torch.no_grad():
        v = fn(model(x))
    z, best = x[v.topk(16).indices].clone(), float(v.max())
    for _ in range(steps):
        z.requires_grad_(True)
        grad, = torch.autograd.grad(fn(model(z)).sum(), z)
        with torch.no_grad():
            z = torch.minimum(torch.maximum(z + 0.05 * (hi - lo) * grad.sign(), lo), hi)
            best = max(best, float(fn(model(z)).max()))
    return best


@pytest.mark.parametrize("kind, seed, thr", [("groups", 1, 0.1995), ("dilation", 5, 0.4379), ("dilation", 1, -0.2044)])
def test_auto_lirpa_grouped_or_dilated_conv_in_patches_mode_is_not_proved(kind, seed, thr):
    """Conv2d(1, 2, 1) then a conv with ``groups=2`` or ``dilation=2``, ReLU, a head; the spec
    ``y0 - y1 <= thr``. The backend bounds CNNs in auto_LiRPA's default patches mode (no
    ConvTranspose2d), and 0.3's ``BoundConv.bound_backward`` on Patches A calls
    ``conv_transpose2d(patches, weight, stride=...)`` without ``groups`` or ``dilation``: the
    intermediate bounds of the grouped/dilated conv's outputs (for the ReLU relaxation) are of
    another convolution, and the proved bound is below values the model takes (matrix mode,
    which passes both, is sound on the same model). Nothing is attacked: the bound proves it
    right after the centre check."""
    from pytest_latentaudit import Linear

    model = _conv_chain(kind, seed)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 1, 7, 7, generator=g)
    lo, hi = x0 - 0.3, x0 + 0.3
    margin = lambda y: y[:, 0] - y[:, 1]  # noqa: E731
    assert _pgd_max(model, lo, hi, margin) > thr + 1e-3  # the spec fails in the box
    res = verify_box(model, lo, hi, Linear([[1.0, -1.0]], [-thr]), engine="auto_lirpa:crown", budget_s=3)
    assert res.status[0] != "verified", f"auto_LiRPA 0.3's patches mode proved a false spec through a {kind} conv"
