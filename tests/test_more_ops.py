"""Ops of decoders and classifiers that had no bound operator: Mish, erf, sin, cos
(``SampledActivationOp``s: curvature and slope bounds, the kernel's ulps), PixelShuffle /
PixelUnshuffle and reflection / replication padding (selections of each sample's entries).

Each relaxation lies on the right side of the float32 and float64 function on random
intervals; every engine's bounds contain the sampled outputs of random networks using them;
verdicts are checked by sampling; a bound just below the sampled maximum is never proved; and
small boxes are proved (before, these networks got falsification only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from test_norm_softmax import _bounds, assert_relaxation_holds
from test_products import check_bounds_contain_samples, check_output_range_near_the_maximum, check_prediction_boxes

from pytest_latentaudit import Prediction, verify_box
from pytest_latentaudit.engines import ops
from pytest_latentaudit.engines.bounds import ibp_bounds
from pytest_latentaudit.engines.graph import get_graph

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACTS = {"mish": ops.MishOp, "erf": ops.ErfOp, "sin": ops.SinOp, "cos": ops.CosOp}


@pytest.mark.parametrize("kind", sorted(ACTS))
def test_relaxations_hold_on_random_intervals(kind):
    """Both lines and the interval of each op contain the float32 and float64 function on
    random intervals (narrow, wide, degenerate, far from 0)."""
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64):
        op = ACTS[kind]("x")
        op.u = op.u_ours = ops.unit(dt)
        lo = (torch.randn(4000, generator=g) * 6).to(dt)
        lo[:400] *= 200
        hi = lo + (torch.rand(4000, generator=g) ** 3 * 12).to(dt)
        hi[:200] = lo[:200]
        assert_relaxation_holds(op, lo, hi, g, kind)
    if kind in ("sin", "cos"):  # a wide interval is clipped to the range, not to the curvature slack
        il, ih = op.ibp((torch.tensor([-1e3], dtype=dt), torch.tensor([1e3], dtype=dt)))
        assert float(il) >= -1.01 and float(ih) <= 1.01


class OpNet(nn.Module):
    """``d`` -> a 2 x 4 x 4 image -> one of the ops -> conv -> linear."""

    def __init__(self, kind, d, n_out):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(d, 32)
        c_in = {"pixel_shuffle": 2, "pixel_unshuffle": 8}.get(kind, 2)
        self.conv = nn.Conv2d(c_in, 2, 3, padding=1)
        side = {"pixel_shuffle": 8, "pixel_unshuffle": 2, "reflect": 6, "replicate": 6, "adaptive_max": 3}.get(kind, 4)
        self.out = nn.Linear(2 * side * side if kind not in ("reflect", "replicate") else 2 * 4 * 4, n_out)

    def forward(self, x):
        k = self.kind
        h = self.inp(x)
        if k in ACTS:
            h = {"mish": F.mish, "erf": torch.erf, "sin": torch.sin, "cos": torch.cos}[k](h)
        elif k == "normalize":  # a cosine head: unit-norm features (norm clamped below at 1e-12)
            h = F.normalize(h, dim=1) * 4
        elif k == "norm_gate":
            h = h * torch.sigmoid(h.reshape(-1, 2, 16).norm(dim=2, keepdim=True) - 2).repeat(1, 1, 16).flatten(1)
        h = h.reshape(-1, 2, 4, 4)
        if k == "pixel_shuffle":
            h = F.pixel_shuffle(h.reshape(-1, 8, 2, 2), 2).repeat(1, 1, 2, 2)  # [2, 8, 8]... via 4x4 tiles
            h = h[:, :2]
        elif k == "pixel_unshuffle":
            h = F.pixel_unshuffle(h, 2)  # [8, 2, 2]
        elif k == "adaptive_max":  # overlapping windows of unequal sizes (4 -> 3)
            h = F.adaptive_max_pool2d(h, (3, 3))
        elif k in ("reflect", "replicate"):
            h = F.pad(h, (1, 1, 1, 1), mode=k)  # [2, 6, 6]; the conv below keeps 6x6, then crop
        h = torch.relu(self.conv(h))
        if k in ("reflect", "replicate"):
            h = h[:, :, 1:5, 1:5]
        return self.out(h.flatten(1))


KINDS = sorted(ACTS) + ["pixel_shuffle", "pixel_unshuffle", "reflect", "replicate", "normalize", "norm_gate",
                         "adaptive_max"]


@st.composite
def op_nets(draw, max_in=3):
    kind = draw(st.sampled_from(KINDS))
    d = draw(st.integers(1, max_in))
    n_out = draw(st.integers(2, 3))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    torch.manual_seed(seed)
    return OpNet(kind, d, n_out).to(dtype).eval(), d, n_out, seed, dtype


@pytest.mark.parametrize("kind", KINDS)
def test_each_op_is_lowered_and_computes_the_model(kind):
    torch.manual_seed(0)
    model = OpNet(kind, 3, 3).eval()
    graph = get_graph(model, (3,))
    x = torch.randn(5, 3)
    lo, hi = ibp_bounds(graph, x, torch.zeros(5, 1, 3))[-1]
    with torch.no_grad():
        y = model(x).double()
    assert bool(((lo <= y) & (y <= hi)).all())
    assert float((hi - lo).max()) < 1e-3  # a point box: only rounding wide


@FAST
@given(data=st.data(), net=op_nets())
def test_every_method_contains_the_sampled_outputs(data, net):
    model, d, n_out, seed, dtype = net
    check_bounds_contain_samples(model, d, seed, dtype, half=data.draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])))


@FAST
@given(data=st.data(), net=op_nets(), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_verify_box_sound(data, net, engine):
    model, d, n_out, seed, dtype = net
    check_prediction_boxes(model, d, n_out, seed, dtype, engine, half=data.draw(st.floats(0.0, 0.5)))


@FAST
@given(data=st.data(), net=op_nets(max_in=2), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_a_bound_near_the_sampled_maximum_is_never_falsely_proved(data, net, engine):
    model, d, _, seed, dtype = net
    check_output_range_near_the_maximum(model, d, seed, dtype, engine, side=data.draw(st.floats(0.01, 0.5)),
                                        q=data.draw(st.sampled_from([-0.01, 0.0, 1e-4, 0.05])))


@pytest.mark.parametrize("kind", KINDS)
def test_small_boxes_are_verified(kind):
    torch.manual_seed(1)
    model = OpNet(kind, 4, 3).eval()
    z = torch.randn(12, 4)
    with torch.no_grad():
        labels = model(z).argmax(1)
    res = verify_box(model, z - 1e-3, z + 1e-3, Prediction(labels), engine="auto", budget_s=5.0)
    assert not any("not supported" in n for n in res.notes), res.notes
    assert res.counts()["verified"] >= 10, (res.counts(), res.notes)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.sampled_from([1, 2, 7, 64, 1000]),
       scale=st.sampled_from([1e-25, 1e-20, 1e-3, 1.0, 1e3, 1e17, 1e19]), dims=st.sampled_from([(1,), (2,), (1, 2)]))
def test_vector_norm_kernel_rounding_is_covered(seed, n, scale, dims):
    """Zero-width boxes from squares below the normal range to sums near float32's overflow:
    the float32 kernel's norm lies inside the IBP and linear bounds (infinite where the
    model's sum of squares may overflow)."""
    class Norm(nn.Module):
        def forward(self, x):
            return x.norm(dim=dims, keepdim=True).flatten(1)

    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(6, 2, n, generator=g)).float()
    model = Norm()
    graph = get_graph(model, (2, n))
    with torch.no_grad():
        y = model(x).double()
    gens = torch.zeros(6, 1, 2, n)
    lo, hi = ibp_bounds(graph, x, gens)[-1]
    assert bool(((lo <= y) & (y <= hi)).all()), float(torch.maximum(lo - y, y - hi).max())
    lo, hi = _bounds(graph, x, gens, "linear")
    assert bool(((lo <= y) & (y <= hi)).all())
    if 1e-3 <= scale <= 1e3:  # ordinary magnitudes: the rounding wide (gamma_2N, and our float32 arithmetic)
        N = n * (2 if 1 in dims else 1)
        assert bool(((hi - lo) <= 32 * (2 * N + 4) * 2.0 ** -24 * (1 + y.abs())).all())


@pytest.mark.parametrize("fn, why", [(lambda h: h.norm(p=1, dim=1, keepdim=True), "order"),
                                     (lambda h: torch.linalg.vector_norm(h, ord=float("inf"), dim=1, keepdim=True),
                                      "order"),
                                     (lambda h: h.norm() * h, "every dimension|batch")])
def test_other_vector_norms_are_refused(fn, why):
    class M(nn.Module):
        def forward(self, x):
            return fn(x)

    with pytest.raises(ops.UnsupportedLayer, match=why):
        get_graph(M(), (4,))


def test_pixel_shuffle_that_would_take_the_batch_as_channels_is_refused():
    """On a ``[batch, C, H]`` tensor torch's pixel shuffle reads the batch as the channels:
    samples would mix, and no proof may be given."""

    class Mix(nn.Module):
        def forward(self, x):  # x [N, 4, 2]: pixel_shuffle takes (C=N, H=4, W=2)
            return F.pixel_unshuffle(x.reshape(-1, 4, 2), 2).reshape(x.shape[0], -1)

    model = Mix()
    x = torch.randn(4, 8)
    with torch.no_grad():
        y = model(x)
    res = verify_box(model, x - 1e-3, x + 1e-3, Prediction(y.argmax(1)), engine="auto", budget_s=2.0)
    assert "verified" not in res.status
    assert any("pixel" in n or "batch" in n or "traced" in n for n in res.notes), res.notes
