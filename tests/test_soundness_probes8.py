"""Planted cases and property tests of the eighth adversarial soundness hunt (the user's path:
audits along non-axis directions, models of other dtypes, state that changes between calls,
global hooks, degenerate boxes, tiny budgets). Each test named after a finding is a wrong
verdict, minimised; it fails on the code it was found on. Controls show the ordinary case is
still proved; the property tests guard the areas where the hunt found nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_latentaudit import Direction, Invariance, audit


# ------------------------------ 1. a float64 model audited along a float32-rounded direction
V13 = torch.tensor([1.0, 3.0], dtype=torch.float64)


def _exact_unit(v):
    return v / v.norm()


class OffTheLine(nn.Module):
    """A float64 model that keeps its nominal class (1) on the line through 0 along ``(1, 3)``
    and loses it anywhere more than ``1e-12`` off that line. On the exact segment (float64
    points ``t * unit(v)``) the largest distance from the line is about 6e-17."""

    def __init__(self):
        super().__init__()
        u = _exact_unit(V13)
        self.n = nn.Parameter(torch.stack([-u[1], u[0]]).reshape(1, 2))  # the line's normal

    def forward(self, z):
        bad = 1e15 * torch.relu((z @ self.n.T).abs() - 1e-12)
        return torch.cat([bad - 1.0, bad * 0], 1)


def test_a_float64_model_is_audited_along_its_float64_direction():
    """Found: ``audit`` took the direction's basis in float32 (``Direction.basis``'s default)
    and fed a float64 model ``z0 + fl32(unit(v)) t``: for ``v = (1, 3)`` the float32 unit vector
    is turned by 9.4e-9 rad, so its points leave the user's segment by 9.4e-9 * |t|, a million
    times float64's rounding. A model that differs there got counterexamples that are not in
    the box (every seed ``falsified``, verdict ``violated``) where the spec holds on the whole
    segment. Now the basis is taken in float64 and rounded once, to the model's dtype."""
    m = OffTheLine().double()
    u = _exact_unit(V13)
    t = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    with torch.no_grad():
        assert bool((m(t[:, None] * u[None]).argmax(1) == 1).all())  # the spec holds on the segment
    z0 = torch.zeros(3, 2, dtype=torch.float64)
    for engine in ("falsify", "auto"):
        r = audit(m, z0, direction=Direction.vector(V13), eps=1.0, spec=Invariance(), engine=engine, budget_s=5)
        assert r.counts["falsified"] == 0, (engine, [c.offset for c in r.counterexamples])
        assert r.verdict != "violated"
    # a direction passed as a float64 tensor is not rounded to float32 either
    r = audit(m, z0, direction=V13, eps=1.0, spec=Invariance(), engine="falsify", budget_s=5)
    assert r.counts["falsified"] == 0


def test_control_a_float64_model_along_a_vector_direction_is_proved_and_falsified():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    z0 = torch.randn(4, 2, dtype=torch.float64)
    r = audit(m, z0, direction=Direction.vector(V13), eps=0.01, spec=Invariance(), budget_s=10)
    assert r.verdict == "proved", r.status
    # and a real violation is still found: across the line, along (3, -1)
    r = audit(OffTheLine().double(), torch.zeros(1, 2, dtype=torch.float64),
              direction=Direction.vector(torch.tensor([3.0, -1.0], dtype=torch.float64)), eps=0.5,
              spec=Invariance(), engine="falsify", budget_s=5)
    assert r.verdict == "violated"
