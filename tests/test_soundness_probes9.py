"""Planted cases and property tests of the ninth adversarial soundness hunt (the model as the
user runs it: contexts, parametrizations and stateful modules, forwards the trace could misread,
spec edge cases, engines cross-checked on random networks). Each test named after a finding is a
wrong verdict, minimised; it fails on the code it was found on. Controls show the ordinary case
is still proved; the property tests guard the areas where the hunt found nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_latentaudit import Accuracy, Direction, Prediction, audit, verify_box


# ------------------------------------------------ 1. a forward that writes into its input
class AddsToItsInput(nn.Module):
    """``x.add_(1)``, then ``y = (x_0 - c, 0)``: a plain call on a fresh ``x`` returns
    ``(x_0 + 1 - c, 0)`` (and moves the caller's tensor by 1)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        x.add_(1.0)
        return torch.cat([x[:, :1] - self.c, x[:, :1] * 0], 1)


@pytest.mark.parametrize("engine", ["auto", "ibp", "bab"])
def test_a_forward_that_writes_into_its_input_does_not_move_the_box(engine):
    """Found: ``verify_box`` ran its first plain forward (on the boxes' lower corners) on the
    user's own ``lower`` tensor, and ``audit`` on the user's seeds; a forward that writes into its
    input (``x.add_(1)``) moved them, so the box proved was ``[lower + 1, upper]`` and the seeds
    ``z + 1``. Here ``y_0 = x_0 + 1 - 1.5 < 0 = y_1`` at ``x = 0``, in the box and at the seeds:
    ``verify_box`` said ``verified`` and ``audit`` ``proved`` (every seed misclassified). Now the
    model gets a copy on that call too, and the user's tensors are left as they were."""
    m = AddsToItsInput(1.5)
    assert m(torch.zeros(1, 2))[0, 0] < 0  # the spec fails at the box's lower corner
    lo, hi = torch.zeros(1, 2), torch.ones(1, 2)
    r = verify_box(m, lo, hi, Prediction(0), engine=engine, budget_s=2)
    assert r.status == ["falsified"], r.notes
    assert bool((lo == 0).all())
    x = r.counterexamples[0].reshape(1, 2)
    assert bool(((x >= 0) & (x <= 1)).all()) and m(x.clone())[0, 0] <= 0
    z = torch.zeros(2, 2)
    r = audit(m, (z, torch.zeros(2, dtype=torch.long)), direction=Direction.axis(1), eps=0.1,
              spec=Accuracy(at_least=1.0), engine=engine, budget_s=2)
    assert r.verdict == "violated", r.status
    assert bool((z == 0).all())


def test_control_a_forward_that_writes_into_its_input_is_proved():
    """The in-place add is bounded as an add (its out-of-place twin), on the user's box."""
    m = AddsToItsInput(0.5)
    lo = torch.zeros(1, 2)
    r = verify_box(m, lo, torch.ones(1, 2), Prediction(0), budget_s=5)
    assert r.status == ["verified"], r.notes
    assert bool((lo == 0).all())
