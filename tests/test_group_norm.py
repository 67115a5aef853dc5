"""GroupNorm (``native_group_norm``): the sample viewed as ``[G, n]``, layer norm's exact
decomposition, the per-channel affine, and the fused kernel's float error
(``ops.GroupNormRoundingOp``: the kernel folds the affine into ``y = x S + B``).

The float32 kernel's output (CPU, both memory formats) must lie inside every engine's bounds on
zero-width boxes at large magnitudes and on near-constant groups; every engine's bounds contain
the sampled outputs of random GroupNorm networks; verdicts are checked by sampling; a bound just
below the sampled maximum is never proved; and small boxes are proved (the bound is usable)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from test_norm_softmax import _bounds
from test_products import check_bounds_contain_samples, check_output_range_near_the_maximum, check_prediction_boxes

from pytest_latentaudit import Prediction, verify_box
from pytest_latentaudit.engines.bounds import ibp_bounds
from pytest_latentaudit.engines.graph import get_graph

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class GN(nn.Module):
    """GroupNorm alone on ``[C, *spatial]`` inputs, random affine (or none)."""

    def __init__(self, C, G, eps=1e-5, affine=True, channels_last=False):
        super().__init__()
        self.gn = nn.GroupNorm(G, C, eps=eps, affine=affine)
        self.channels_last = channels_last
        if affine:
            with torch.no_grad():
                self.gn.weight.uniform_(-2, 2)
                self.gn.bias.uniform_(-1, 1)

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.gn(x).flatten(1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), G=st.sampled_from([1, 2, 4]), spatial=st.sampled_from([(3,), (2, 2), (3, 5)]),
       mean=st.sampled_from([0.0, 1.0, 1e3, -1e4]), std=st.sampled_from([0.0, 1e-6, 1e-3, 1.0, 30.0, 1e3]),
       eps=st.sampled_from([1e-12, 1e-5, 1e-2]), affine=st.booleans(), channels_last=st.booleans())
def test_group_norm_kernel_rounding_is_covered(seed, G, spatial, mean, std, eps, affine, channels_last):
    """Zero-width boxes: the float32 kernel's output lies inside the IBP and linear bounds, which
    are then only the rounding radius wide (or wider, where no relative bound holds)."""
    if channels_last and len(spatial) != 2:
        channels_last = False
    torch.manual_seed(seed)
    C = 8
    model = GN(C, G, eps, affine, channels_last).eval()
    g = torch.Generator().manual_seed(seed)
    shape = (C, *spatial)
    x = (mean + std * torch.randn(8, *shape, generator=g)).float()
    # a per-channel offset too: group statistics over channels of different levels
    x = x + (mean * 0.01 * torch.randn(1, C, *([1] * len(spatial)), generator=g)).float()
    graph = get_graph(model, shape)
    with torch.no_grad():
        y = model(x).double()
    gens = torch.zeros(8, 1, *shape)
    lo, hi = ibp_bounds(graph, x, gens)[-1]
    assert bool(((lo <= y) & (y <= hi)).all()), float(torch.maximum(lo - y, y - hi).max())
    lo, hi = _bounds(graph, x, gens, "linear")
    assert bool(((lo <= y) & (y <= hi)).all()), float(torch.maximum(lo - y, y - hi).max())


def test_group_norm_radius_is_about_layer_norms_on_the_same_rows():
    """GroupNorm with one group over ``[C, H, W]`` is LayerNorm over ``(C, H, W)``: on ordinary
    inputs (mean 0, spread 1) its rounding radius (the extra terms of the folded affine)
    is within 1.5x of LayerNorm's, and both contain the kernels' outputs."""
    torch.manual_seed(0)
    gn = GN(8, 1).eval()
    ln = nn.Sequential(nn.LayerNorm((8, 3, 3)), nn.Flatten()).eval()
    with torch.no_grad():
        ln[0].weight.copy_(gn.gn.weight[:, None, None].expand(8, 3, 3))
        ln[0].bias.copy_(gn.gn.bias[:, None, None].expand(8, 3, 3))
    x = torch.randn(16, 8, 3, 3)
    widths = []
    for model in (gn, ln):
        graph = get_graph(model, (8, 3, 3))
        lo, hi = ibp_bounds(graph, x, torch.zeros(16, 1, 8, 3, 3))[-1]
        with torch.no_grad():
            y = model(x).double()
        assert bool(((lo <= y) & (y <= hi)).all())
        widths.append(float((hi - lo).max()))
    assert widths[0] <= 1.5 * widths[1], widths
    assert widths[0] < 1e-2


class GNNet(nn.Module):
    """conv -> GroupNorm -> SiLU -> conv -> GroupNorm (no affine) -> ReLU -> linear: a VAE
    decoder block's ops."""

    def __init__(self, d, n_out, G, affine=True):
        super().__init__()
        self.d = d
        self.inp = nn.Linear(d, 8 * 2 * 2)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.g1 = nn.GroupNorm(G, 8, affine=affine)
        self.c2 = nn.Conv2d(8, 4, 1)
        self.g2 = nn.GroupNorm(min(G, 4), 4, affine=False)
        self.out = nn.Linear(16, n_out)
        if affine:
            with torch.no_grad():
                self.g1.weight.uniform_(-1.5, 1.5)
                self.g1.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.inp(x).reshape(-1, 8, 2, 2)
        h = nn.functional.silu(self.g1(self.c1(h)))
        h = torch.relu(self.g2(self.c2(h)))
        return self.out(h.flatten(1))


@st.composite
def gn_nets(draw, max_in=3):
    d = draw(st.integers(1, max_in))
    n_out = draw(st.integers(2, 3))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    G = draw(st.sampled_from([1, 2, 4, 8]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    torch.manual_seed(seed)
    model = GNNet(d, n_out, G, affine=draw(st.booleans())).to(dtype).eval()
    return model, d, n_out, seed, dtype


@FAST
@given(data=st.data(), net=gn_nets())
def test_every_method_contains_the_sampled_outputs(data, net):
    model, d, n_out, seed, dtype = net
    check_bounds_contain_samples(model, d, seed, dtype, half=data.draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3])))


@FAST
@given(data=st.data(), net=gn_nets(), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_verify_box_sound_on_group_norm_nets(data, net, engine):
    model, d, n_out, seed, dtype = net
    check_prediction_boxes(model, d, n_out, seed, dtype, engine, half=data.draw(st.floats(0.0, 0.5)))


@FAST
@given(data=st.data(), net=gn_nets(max_in=2), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_a_bound_near_the_sampled_maximum_is_never_falsely_proved(data, net, engine):
    model, d, _, seed, dtype = net
    check_output_range_near_the_maximum(model, d, seed, dtype, engine, side=data.draw(st.floats(0.01, 0.5)),
                                        q=data.draw(st.sampled_from([-0.01, 0.0, 1e-4, 0.05])))


@pytest.mark.parametrize("G", [1, 2, 8])
def test_small_boxes_of_group_norm_nets_are_verified(G):
    """The bound is usable: most small boxes of random GroupNorm networks are proved (before
    GroupNorm had a bound operator, none were: falsification only)."""
    torch.manual_seed(G)
    model = GNNet(4, 3, G).eval()
    z = torch.randn(16, 4)
    with torch.no_grad():
        labels = model(z).argmax(1)
    res = verify_box(model, z - 1e-3, z + 1e-3, Prediction(labels), engine="auto", budget_s=5.0)
    assert not any("not supported" in n for n in res.notes), res.notes
    assert res.counts()["verified"] >= 14, (res.counts(), res.notes)
