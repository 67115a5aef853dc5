"""Planted cases and property tests of the seventh adversarial soundness hunt (CROWN with
float64 coefficients on float32 graphs, the backward passes' rounding at the coefficients'
unit roundoff, the ops added in session 13, random mixes of them). Each test named after a
finding is a wrong verdict or a bound that misses the model's own output, minimised; it
fails on the code it was found on. The property tests found nothing more and stay as guards."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_latentaudit import OutputRange, verify_box
from pytest_latentaudit.engines.bounds import output_bounds, spec_upper_bound
from pytest_latentaudit.engines.graph import get_graph

BOUND_ENGINES = ["auto", "ibp", "linear", "bab"]
METHODS = [("ibp", False), ("linear", False), ("crown", False), ("crown", True)]


# ----------------------------------- 1. backward coefficients below float32's normal range
D_HUGE = 256


class UnderflowingPath(nn.Module):
    """``lost = (W3 W2) x`` with every weight ``1e-23`` and inputs near ``1e38``: each product
    ``W3 W2`` is ``1e-46``, below float32's subnormal range, while the path's value is
    ``256 * 256 * 1e-46 * 1e38 = 6.5e-4``. ``spike`` adds ``1e-3`` in a narrow window of the
    first input (no centre or corner shows it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(D_HUGE, D_HUGE, bias=False)
        self.b = nn.Linear(D_HUGE, 1, bias=False)
        with torch.no_grad():
            self.a.weight.fill_(1e-23)
            self.b.weight.fill_(1e-23)

    def forward(self, x):
        lost = self.b(self.a(x))
        t = x[:, :1] * 1e-36 - 100.0  # [-1, 1] over the box
        spike = torch.relu(1 - 1000 * (t - 0.37).abs()) * 1e-3
        return lost + spike


def _huge_box():
    lo = torch.full((1, D_HUGE), 1e38)
    hi = lo.clone()
    lo[0, 0], hi[0, 0] = 1e38 - 1e36, 1e38 + 1e36
    return lo, hi


@pytest.mark.parametrize("engine", BOUND_ENGINES)
def test_backward_coefficients_that_underflow_are_not_a_proof(engine):
    """Planted: ``y`` reaches 1.65e-3 at ``x_0 = 1.0037e38``; spec ``y <= 1.3e-3``. The float32
    backward pass computed ``A W2`` as 0 (each product ``1e-46`` rounds to 0 in float32), so
    the lost path vanished from its bound: upper bound 3e-8 for outputs of 6.5e-4, and the
    linear engine, branch and bound and auto "verified" the spec. ``our_radius`` bounds our
    rounding relative to each number, which fails below the normal range; each backward step
    now also charges ``(2 d_out + 4) eta sum |x|`` for its products and sums below it
    (``bounds._underflow_charge``)."""
    m = UnderflowingPath()
    lo, hi = _huge_box()
    x = lo.clone()
    x[0, 0] = 1.0037e38
    with torch.no_grad():
        assert float(m(x)) > 1.6e-3 and float(m((lo + hi) / 2)) < 7e-4
    res = verify_box(m, lo, hi, OutputRange(upper=[1.3e-3]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y <= 1.3e-3 where y = 1.65e-3"


@pytest.mark.parametrize("method,precise", METHODS)
def test_backward_bounds_of_an_underflowing_path_contain_its_outputs(method, precise):
    """The same path without the spike: every method's bounds contain the model's outputs at
    the box's corners and centre (before: linear and CROWN gave the upper bound 3e-8 for
    outputs of 6.5e-4, float64 coefficients too, as the float32 pass's bound was kept)."""
    m = nn.Sequential(nn.Linear(D_HUGE, D_HUGE, bias=False), nn.Linear(D_HUGE, 1, bias=False))
    with torch.no_grad():
        m[0].weight.fill_(1e-23)
        m[1].weight.fill_(1e-23)
    center = torch.full((1, D_HUGE), 1e38)
    gens = torch.zeros(1, 1, D_HUGE)
    gens[0, 0, 0] = 1e36
    pts = torch.cat([center, center + gens[:, 0], center - gens[:, 0]])
    with torch.no_grad():
        y = m(pts).double()
    graph = get_graph(m, (D_HUGE,))
    lo, hi = output_bounds(graph, center.double(), gens.double(), method=method, precise=precise)
    assert bool((y >= lo.double()).all() and (y <= hi.double()).all()), (method, precise, y.tolist(), lo, hi)


@pytest.mark.parametrize("method", ["ibp", "linear", "crown"])
def test_a_folded_spec_row_that_underflows_is_counted(method):
    """``C y`` with ``C = 1e-20`` after a last layer of weights ``1e-28`` on inputs near
    ``1e38``: ``C W`` is ``1e-48``, 0 in float32, and the folds of the spec into the last layer
    (interval and forward-form) bounded ``C y`` (2.6e-8) by 8e-13. Folds now charge what
    ``C W`` and ``C b`` lose below the normal range (``bounds._fold_underflow``)."""
    m = nn.Sequential(nn.Linear(D_HUGE, D_HUGE, bias=False), nn.ReLU(), nn.Linear(D_HUGE, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(D_HUGE))
        m[2].weight.fill_(1e-28)
    center = torch.full((1, D_HUGE), 1e38)
    gens = torch.zeros(1, 1, D_HUGE)
    gens[0, 0, 0] = 1e36
    pts = torch.cat([center, center + gens[:, 0], center - gens[:, 0]])
    with torch.no_grad():
        cy = 1e-20 * m(pts).double()
    C = torch.full((1, 1, 1), 1e-20, dtype=torch.float64)
    ub = spec_upper_bound(get_graph(m, (D_HUGE,)), center.double(), gens.double(), C,
                          torch.zeros(1, 1, dtype=torch.float64), method=method)
    assert float(ub) >= float(cy.max()), (float(ub), float(cy.max()))
