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
