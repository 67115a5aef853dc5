"""Planted cases and property tests of the eleventh adversarial soundness hunt (today's lowering:
maximum/minimum/clamp against constants, logsigmoid, eval RReLU, einsum with a constant matrix
and the collapsed layout chains of the batch-size check, roll/ChannelShuffle/cumsum/amin). Each
test named after a finding is a wrong verdict, minimised; it fails on the code it was found on.
Controls show the ordinary case is still proved; the property tests guard the areas where the
hunt found nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pytest_latentaudit import OutputRange, Prediction, verify_box


class Fn(nn.Module):
    def __init__(self, f, **buffers):
        super().__init__()
        self.f = f
        for k, v in buffers.items():
            self.register_buffer(k, v)

    def forward(self, x):
        return self.f(self, x)


def _spike(h):
    """1 at h = 0.3, 0 outside |h - 0.3| >= 1e-3: only a sound bound sees it."""
    return torch.relu(1 - 1000 * (h - 0.3).abs())


# ------------------------------------ 1. a literal that is the batch size, outside the batch dim
_PICK = torch.tensor([[0.0], [0.0], [1.0], [1.0], [0.0], [0.0]])

_BATCH_LITERALS = {
    # a constant computed from slices of the batch's length: 0 at batch 2, 1 at batch 3
    "w[:, :B] @ v[:B]": lambda s, x: _spike(x[:, 3:4] @ (s.w[:, :x.shape[0]] @ s.v[:x.shape[0]])),
    "einsum(x, w[:, :B] @ v[:B])": lambda s, x: _spike(
        torch.einsum("bi,ij->bj", x[:, 3:4], s.w[:, :x.shape[0]] @ s.v[:x.shape[0]])),
    # a batch-shaped constant reduced over the batch: 0 at batch 2, 1 at batch 3
    "v[:B].sum(0)": lambda s, x: _spike(x[:, 3:4] * s.v[:x.shape[0]].sum(0)),
    "ones(B, 1).sum(0) - 2": lambda s, x: _spike(x[:, 3:4] * (torch.ones(x.shape[0], 1).sum(0) - 2)),
    "ones(B, 1).T @ ones(B, 1) - 2": lambda s, x: _spike(
        x[:, 3:4] * (torch.ones(x.shape[0], 1).T @ torch.ones(x.shape[0], 1) - 2)),
    # a per-sample op whose amount is the batch size: column 4 at batch 2, column 3 at batch 3
    "roll(x, B, 1)": lambda s, x: _spike(torch.roll(x, x.shape[0], 1)[:, :1]),
}


@pytest.mark.parametrize("engine", ["auto", "ibp"])
@pytest.mark.parametrize("name", list(_BATCH_LITERALS))
def test_a_literal_that_is_the_batch_size_outside_the_batch_dim_is_refused(name, engine):
    """Found: ``_same_up_to_batch`` let any integer of a size argument scale with the batch
    (``2`` at batch 2, ``3`` at batch 3), and any dimension of a constant's shape. So a slice end,
    a roll's shift or a constant's row count that is the batch size passed as "the same program,
    batch scaled" wherever it acted: ``w[:, :B] @ v[:B]`` is a constant that is 0 at the traced
    batch and 1 at the user's; ``torch.roll(x, B, 1)`` reads another column. Three boxes, the
    spike at x_3 = 0.3 that only batch 3's program has: all engines said ``verified`` of an
    output that is 1 there. Now a literal may scale only as the batch entry of a size list (view,
    reshape, expand, a factory) or a bound of a slice of dim 0, and a constant shaped like the
    batch may not be reduced or moved off its leading dim."""
    m = Fn(_BATCH_LITERALS[name], w=torch.ones(1, 6), v=_PICK)
    lo, hi = torch.zeros(3, 6), torch.ones(3, 6)
    lo[:, 2] = hi[:, 2] = 0.5  # the columns batch 2's program reads: away from the spike
    lo[:, 4] = hi[:, 4] = 0.5
    x = torch.full((3, 6), 0.5)
    x[:, 3] = 0.3  # inside every box, not a corner or the centre
    assert bool((m(x)[:, 0] > 0.9).all())  # the spec fails there, in a plain call
    r = verify_box(m, lo, hi, OutputRange(upper=0.5), engine=engine, budget_s=3)
    assert "verified" not in r.status, r.notes


_BATCH_LEADS = {
    "view(B, -1)": lambda s, x: x.view(x.shape[0], 2, 3).flatten(1) @ s.w6,
    "new_zeros(B, 6) + x": lambda s, x: (x.new_zeros(x.shape[0], 6) + x) @ s.w6,
    "einsum with a constant": lambda s, x: torch.einsum("bi,ij->bj", x, s.w6),
    # an in-place op turns the layout-chain collapse off: einsum's [1, B x rows, k] view is then
    # compared op by op, its rows entry scaled
    "einsum, then an in-place relu": lambda s, x: F.relu(torch.einsum("bi,ij->bj", x, s.w6), inplace=True),
}


@pytest.mark.parametrize("name", list(_BATCH_LEADS))
def test_control_a_batch_size_that_sizes_the_batch_is_still_proved(name):
    """The batch size as the batch entry of a view or a factory, or in einsum's flattened rows,
    is the same program at every batch: proved at three boxes."""
    torch.manual_seed(0)
    m = Fn(_BATCH_LEADS[name], w6=torch.randn(6, 2), w33=torch.randn(3, 3), tok=torch.randn(1, 2))
    lo = torch.randn(3, 6) * 0.1
    hi = lo + 0.01
    with torch.no_grad():
        top = float(max(m(lo).abs().max(), m(hi).abs().max()))
    r = verify_box(m, lo, hi, OutputRange(-top - 1.0, top + 1.0), budget_s=5)
    assert r.status == ["verified"] * 3, r.notes


# ------------------------------------ 2. property tests: today's handlers contain the model
def _contained(m, lo, hi, method, n=256):
    from pytest_latentaudit.engines.bounds import output_bounds
    from pytest_latentaudit.engines.graph import get_graph

    N = lo.shape[0]
    g = get_graph(m, tuple(lo.shape[1:]), dtype=torch.float64, example=lo.clone(), other_batch=N)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    d = r[0].numel()
    gens = torch.diag_embed(r.reshape(N, -1)).reshape(N, d, *lo.shape[1:])
    bl, bh = output_bounds(g, c.double(), gens.double(), method=method)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(N):
        t = torch.rand(n, *lo.shape[1:], generator=gen)
        t[0], t[1] = 0, 1
        pts = lo[i] + (hi[i] - lo[i]) * t
        with torch.no_grad():
            ys = m(pts).double()
        worst = max(worst, float(torch.maximum(bl[i] - ys, ys - bh[i]).max()))
    return worst


_HANDLERS = {
    "maximum(x, c)": lambda s, x: torch.maximum(x, s.c) @ s.w,
    "minimum(c, x)": lambda s, x: torch.minimum(s.c, x) @ s.w,
    "clamp(x, a, b)": lambda s, x: torch.clamp(x, s.c - 0.3, s.c + 0.3) @ s.w,
    "clamp(x, a > b)": lambda s, x: torch.clamp(x, s.c + 0.3, s.c - 0.3) @ s.w,
    "maximum(x, float64 0-dim)": lambda s, x: torch.maximum(x, torch.tensor(0.1, dtype=torch.float64)) @ s.w,
    "maximum broadcast up": lambda s, x: torch.maximum(x[:, :, None], s.c[None, None, :]).flatten(1) @ s.w16,
    "roll(-1)": lambda s, x: torch.roll(torch.relu(x @ s.v), 1, -1) @ s.w,
    "cumsum(-1)": lambda s, x: torch.relu(torch.cumsum(x @ s.v, -1)) @ s.w,
    "amin(-1, keepdim)": lambda s, x: torch.amin(torch.relu(x @ s.v).view(-1, 2, 2), -1, keepdim=True).flatten(1),
    "min(dim=1)": lambda s, x: (x @ s.v).view(-1, 2, 2).min(dim=1).values,
    "channel_shuffle": lambda s, x: F.channel_shuffle((x @ s.v).view(-1, 4, 1), 2).flatten(1) @ s.w,
    "logsigmoid": lambda s, x: F.logsigmoid(3 * x @ s.v) @ s.w,
    "rrelu eval": lambda s, x: F.rrelu(x @ s.v, 0.05, 0.4, training=False) @ s.w,
}


@pytest.mark.parametrize("method", ["ibp", "linear"])
@pytest.mark.parametrize("name", list(_HANDLERS))
def test_property_todays_handlers_contain_the_model(name, method):
    """Sampled outputs (corners included) of three boxes lie inside the bounds of each of
    today's handlers, by both methods (a flipped sign, a wrong constant index or a wrong dim in
    any of them puts samples outside)."""
    torch.manual_seed(3)
    m = Fn(_HANDLERS[name], c=torch.randn(4) * 0.5,
           w=torch.randn(4, 3), w16=torch.randn(16, 3), v=torch.randn(4, 4))
    lo = torch.randn(3, 4) * 0.5
    hi = lo + 0.8
    assert _contained(m, lo, hi, method) <= 0.0


# ------------------------------------ 3. a planted spike through today's piecewise-linear ops
_P, _W = 0.3137, 1e-3


class _Spike(nn.Module):
    """``1000 max(0, amin(x - p + w, p + w - x)) - 0.5`` against 0: class 0 wins only within
    ``5e-4`` of ``p`` (an interior point, not a corner or the centre), through roll, cumsum,
    channel_shuffle, amin / min(dim) and maximum / clamp against a constant buffer."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.register_buffer("z", torch.zeros(1))
        self.register_buffer("pw", torch.tensor([-(_P - _W), _P + _W]))

    def forward(self, x):
        t = torch.cat([x, -x], 1) + self.pw
        if self.variant == "roll":
            t = torch.roll(t, 1, 1)
        if self.variant == "cumsum":
            t = torch.cat([t[:, :1], torch.cumsum(t, 1)[:, 1:] - t[:, :1]], 1)
        if self.variant == "channel_shuffle":
            t = F.channel_shuffle(t.view(-1, 2, 1), 2).flatten(1)
        a = t.min(dim=1, keepdim=True).values if self.variant == "min.dim" else torch.amin(t, 1, keepdim=True)
        s = torch.clamp(a, min=self.z, max=self.z + 1) if self.variant == "clamp" else torch.maximum(a, self.z)
        return torch.cat([s * 1000 - 0.5, torch.zeros_like(s)], 1)


@pytest.mark.parametrize("variant", ["maximum", "roll", "cumsum", "channel_shuffle", "min.dim", "clamp"])
def test_property_a_planted_spike_through_todays_ops_is_never_proved(variant):
    """The spike (1e-3 wide at x = 0.3137) is in the box: no engine proves class 1; branch and
    bound finds it. Control: with the box ending 3.7e-3 before the spike every bound engine
    proves it (so the ops are bounded, not refused)."""
    m = _Spike(variant)
    assert m(torch.tensor([[_P]])).argmax(1).item() == 0  # the spec fails there, in a plain call
    label = torch.tensor([1])
    lo = torch.full((1, 1), -1.0)
    for engine in ("ibp", "linear", "auto", "bab", "exact"):
        r = verify_box(m, lo, torch.full((1, 1), 1.5), Prediction(label), engine=engine, budget_s=5)
        assert r.status != ["verified"], (engine, r.notes)
        if engine == "bab":
            assert r.status == ["falsified"], r.notes
            x = r.counterexamples[0].reshape(1, 1)
            assert -1.0 <= float(x) <= 1.5 and m(x).argmax(1).item() == 0
    for engine in ("ibp", "linear", "auto", "bab"):
        r = verify_box(m, lo, torch.full((1, 1), 0.31), Prediction(label), engine=engine, budget_s=5)
        assert r.status == ["verified"], (engine, r.notes)


class _EinsumSpike(nn.Module):
    """The spike of ``_Spike`` through einsum with constant matrices (``graph._merged_batch_bmm``):
    ``relu(einsum(x, [1, -1]) + b)``, a minimum of the two, ``einsum`` with ``[1000, 0]``."""

    def __init__(self, eq):
        super().__init__()
        self.eq = eq
        self.register_buffer("W", torch.tensor([[1.0, -1.0]]))
        self.register_buffer("b", torch.tensor([-(_P - _W), _P + _W]))
        self.register_buffer("V", torch.tensor([[1000.0, 0.0]]))

    def forward(self, x):
        if self.eq == "bpi,ij->bpj":
            h = torch.einsum(self.eq, x.view(-1, 1, 1), self.W).flatten(1)
        else:
            h = torch.einsum(self.eq, x, self.W)
        h = torch.relu(h + self.b)
        s = torch.minimum(h[:, :1], h[:, 1:])
        return torch.einsum("bi,ij->bj", s, self.V) + torch.tensor([-0.5, 0.0])


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("eq", ["bi,ij->bj", "bpi,ij->bpj"])
def test_property_a_planted_spike_through_einsum_is_never_proved(eq, n):
    """At 1 and 3 boxes (the batch-size check's collapsed chains at work): the spike in the box
    is never proved, branch and bound and the exact engine find it; the box that ends before the
    spike is proved by every engine."""
    m = _EinsumSpike(eq)
    assert m(torch.tensor([[_P]])).argmax(1).item() == 0
    label = torch.zeros(n, dtype=torch.long) + 1
    lo = torch.full((n, 1), -1.0)
    for engine in ("ibp", "linear", "auto", "bab", "exact"):
        r = verify_box(m, lo, torch.full((n, 1), 1.5), Prediction(label), engine=engine, budget_s=5)
        assert "verified" not in r.status, (engine, r.notes)
        if engine in ("bab", "exact"):
            assert r.status == ["falsified"] * n, (engine, r.notes)
        r = verify_box(m, lo, torch.full((n, 1), 0.31), Prediction(label), engine=engine, budget_s=5)
        assert r.status == ["verified"] * n, (engine, r.notes)
