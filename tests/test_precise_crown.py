"""CROWN with float64 coefficients on a float32 graph (``spec_upper_bound(precise=True)``) and
the ladder's second CROWN pass that uses it (``Ladder.run_crown_precise``).

Our own float32 rounding of the backward products is counted as large as the model's, and
through CROWN's intermediate bounds it compounds: on wide networks it alone can keep a box a
little above its threshold open. The precise pass must be sound (its bounds contain the
model's outputs), tighter, and reached by the ladder for exactly such boxes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from pytest_latentaudit import OutputRange, verify_box
from pytest_latentaudit.engines import bounds as B
from pytest_latentaudit.engines import ladder as ladder_mod
from pytest_latentaudit.engines.forms import tolerance
from pytest_latentaudit.engines.graph import get_graph


def _mlp(d_in, width, depth, seed, n_out=3):
    torch.manual_seed(seed)
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, n_out)).eval()


def _axis_gens(n, k, d, eps):
    gens = torch.zeros(n, k, d, dtype=torch.float64)
    for i in range(k):
        gens[:, i, i] = eps
    return gens


def _samples(center, gens, n=2000, seed=0):
    """Random points, and every corner, of the boxes (float32, as the model is fed)."""
    g = torch.Generator().manual_seed(seed)
    N, k, _ = gens.shape
    s = torch.rand(n, N, k, generator=g, dtype=torch.float64) * 2 - 1
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * k).reshape(-1, 1, k)
    s = torch.cat([s, corners.expand(-1, N, k)])
    return (center[None] + torch.einsum("snk,nkd->snd", s, gens)).float()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([16, 64, 192]), depth=st.integers(2, 4),
       k=st.integers(1, 4), eps=st.sampled_from([0.05, 0.3, 1.0]))
def test_precise_crown_contains_the_model_and_is_no_looser(seed, width, depth, k, eps):
    """Random ReLU networks and boxes: every sampled float32 output (corners too) lies inside
    the precise bounds, with no tolerance; and on average they are no looser than the float32
    ones."""
    m = _mlp(8, width, depth, seed)
    center = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed)).double()
    gens = _axis_gens(3, k, 8, eps)
    g = get_graph(m, (8,))
    with torch.no_grad():
        x = _samples(center, gens, n=300, seed=seed)
        y = m(x.reshape(-1, 8)).reshape(x.shape[0], 3, -1).double()
    lo32, hi32 = B.output_bounds(g, center, gens, method="crown")
    lo, hi = B.output_bounds(g, center, gens, method="crown", precise=True)
    assert bool((y >= lo).all()) and bool((y <= hi).all()), float(torch.maximum(lo - y, y - hi).max())
    # not elementwise: a neuron's bound nearer 0 can flip an adaptive ReLU slope (hypothesis
    # found a lower bound 0.0036 looser on a width of 4.5, the mean width 0.1% tighter)
    assert float((hi - lo).mean()) <= float((hi32 - lo32).mean()) * (1 + 1e-3) + 1e-9


def test_precise_crown_is_tighter_on_a_wide_network():
    """4 x 256 ReLU, 4 perturbed dims: float64 coefficients shrink the bound of every output
    by a part of what float32 rounding adds (measured: 2e-3 on widths near 1)."""
    m = _mlp(64, 256, 4, seed=0)
    center = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).double()
    gens = _axis_gens(4, 4, 64, 1.0)
    g = get_graph(m, (64,))
    _, hi32 = B.output_bounds(g, center, gens, method="crown")
    _, hi = B.output_bounds(g, center, gens, method="crown", precise=True)
    assert bool((hi < hi32).all())
    assert float((hi32 - hi).min()) > 1e-4


def _between(m, center, gens):
    """An upper limit for output 0 that the precise CROWN bound proves, with the ladder's
    tolerance to spare, and the float32 one does not."""
    g = get_graph(m, (center.shape[1],))
    _, hi32 = B.output_bounds(g, center, gens, method="crown")
    _, hi64 = B.output_bounds(g, center, gens, method="crown", precise=True)
    with torch.no_grad():
        y_c = m(center.float()).double()
    rel, abs_ = tolerance(torch.float32)
    tol = rel * 10 * (1 + float(y_c.abs().amax())) + abs_
    u32, u64 = float(hi32[0, 0]), float(hi64[0, 0])
    assert (u32 - u64) / 2 > 3 * tol, "the network no longer shows the float32 rounding gap"
    return (u32 + u64) / 2 + tol


def test_the_ladder_proves_with_float64_coefficients_what_float32_rounding_keeps_open(monkeypatch):
    """A limit between the two CROWN bounds: the ladder's second CROWN pass proves it at the
    root (rung ``crown``); with that pass switched off, CROWN's rung leaves it open and only
    splitting (if anything) decides it, so the rung is not ``crown``."""
    m = _mlp(64, 256, 4, seed=0, n_out=1)
    z = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    eps = 1.0
    lower, upper = z.clone(), z.clone()
    lower[:, :4] -= eps
    upper[:, :4] += eps
    gens = _axis_gens(1, 4, 64, eps)
    limit = _between(m, z.double(), gens)
    spec = OutputRange(upper=[limit])
    res = verify_box(m, lower, upper, spec, engine="auto", budget_s=20, seed=0)
    assert res.status == ["verified"] and res.rung == ["crown"], (res.status, res.rung, res.notes)

    monkeypatch.setattr(ladder_mod.Ladder, "run_crown_precise", lambda self: None)
    res = verify_box(m, lower, upper, spec, engine="auto", budget_s=3, seed=0)
    assert res.rung != ["crown"], (res.status, res.rung)


def _above_the_sampled_maximum(m, lower, upper):
    """Limits a little above every output's sampled maximum over the boxes: no attack finds a
    violation, and on wide boxes no bound at the root proves them."""
    g = torch.Generator().manual_seed(5)
    x = lower + (upper - lower) * torch.rand(4000, *lower.shape, generator=g, dtype=lower.dtype)
    with torch.no_grad():
        y = m(x.reshape(-1, lower.shape[1]))
    top = y.amax(0)
    return (top + 0.05 * (1 + top.abs())).tolist()


def test_the_precise_pass_goes_likeliest_first_and_stops_when_it_stops_paying(monkeypatch):
    """The second pass takes only root boxes CROWN bounded and left open, in ``likely_first``
    order, ``PROBE_BOXES`` at a time, and stops after a chunk that verified fewer than
    ``PROBE_SHARE`` of its boxes: here none verify, so exactly one chunk is bounded."""
    m = _mlp(8, 32, 3, seed=3)
    n = 40
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    lower, upper = z - 2.0, z + 2.0  # wide: nothing is proved at the root
    calls, first = [], []
    original = ladder_mod.Ladder._bound_boxes

    def spy(self, idx, method, rung):
        calls.append((method, idx.tolist(), self.crowned[idx].tolist(), [self.status[i] for i in idx.tolist()]))
        if method == ladder_mod.PRECISE_CROWN and not first:
            u = self.undecided()
            u = u[self.crowned[u]]
            first.append((u.numel(), self.likely_first(u)[:idx.numel()].tolist()))
        return original(self, idx, method, rung)

    monkeypatch.setattr(ladder_mod.Ladder, "_bound_boxes", spy)
    spec = OutputRange(upper=_above_the_sampled_maximum(m, lower, upper))
    verify_box(m, lower, upper, spec, engine="auto", budget_s=4, seed=0)
    precise = [c for c in calls if c[0] == ladder_mod.PRECISE_CROWN]
    crown = [c for c in calls if c[0] == "crown"]
    assert crown, "the CROWN rung ran"
    assert len(precise) == 1, [len(c[1]) for c in precise]
    method, idx, crowned, status = precise[0]
    open_crowned, likeliest = first[0]
    assert open_crowned > ladder_mod.PROBE_BOXES, "more boxes were open than one chunk takes"
    assert len(idx) == ladder_mod.PROBE_BOXES and all(crowned) and set(status) == {"unknown"}
    assert idx == likeliest


def test_no_precise_pass_on_a_float64_graph(monkeypatch):
    """A float64 model's backward passes already use float64 coefficients: no second pass."""
    m = _mlp(8, 32, 3, seed=3).double()
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    original = ladder_mod.Ladder._bound_boxes
    monkeypatch.setattr(ladder_mod.Ladder, "_bound_boxes",
                        lambda self, idx, method, rung: (seen.append(method), original(self, idx, method, rung))[1])
    spec = OutputRange(upper=_above_the_sampled_maximum(m, z - 2.0, z + 2.0))
    verify_box(m, z - 2.0, z + 2.0, spec, engine="auto", budget_s=3, seed=0)
    assert "crown" in seen and ladder_mod.PRECISE_CROWN not in seen
