"""Planted cases of the third adversarial soundness hunt, and the false refusal it fixed.

``nn.Linear`` (or ``x @ W``) on a *transposed* 3-d input: ``torch.matmul`` computes it with
``bmm`` (the weight expanded over the batch) when the weight does not require grad, as in the
``torch.no_grad`` trace, and as ``view, mm, view`` when it does, as in a user's plain call. The
two traces are one program up to ``graph._canonical``'s value-keeping rewrites, and the ``bmm``
lowers to the same dense op over the last dimension; a forward that really computes another
function in each mode is still refused.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from test_soundness import assert_inside, forward_all, sample_box

from pytest_latentaudit import OutputRange, Prediction, verify_box
from pytest_latentaudit.engines.bounds import output_bounds
from pytest_latentaudit.engines.graph import get_graph, lower
from pytest_latentaudit.engines.ops import UnsupportedLayer

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENGINES = ["ibp", "linear", "bab", "auto", "auto_lirpa:crown"]
ALLOWED = {"verified", "falsified", "unknown"}


def _act(kind):
    return {"relu": nn.ReLU(), "tanh": nn.Tanh()}[kind]


class Transposed(nn.Module):
    """The flat input viewed as ``[N, d, P]`` (channels first), transposed to ``[N, P, d]``, a
    Linear (or ``@ W.T``) at every position, an activation, then a head on the flattened
    positions."""

    def __init__(self, P, d, w, act, matmul, frozen, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.P, self.d, self.matmul = P, d, matmul
        self.fc = nn.Linear(d, w)
        self.act = act
        self.out = nn.Linear(P * w, 3)
        with torch.no_grad():
            for m in (self.fc, self.out):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5 * 1.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
        if frozen:  # then both traces take torch.matmul's bmm path
            for p in self.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        xt = x.view(x.shape[0], self.d, self.P).transpose(1, 2)
        h = xt @ self.fc.weight.T + self.fc.bias if self.matmul else self.fc(xt)
        return self.out(self.act(h).flatten(1))

    def flat(self):
        """The same function with 2-d ops only: the transpose folded into the columns of a
        block-diagonal first layer."""
        P, d, w = self.P, self.d, self.fc.out_features
        B = torch.block_diag(*[self.fc.weight.detach()] * P)  # columns: position-major p * d + i
        src = torch.tensor([p * d + i for i in range(d) for p in range(P)])  # input column i * P + p
        first = nn.Linear(P * d, P * w)
        with torch.no_grad():
            first.weight.copy_(B[:, src])
            first.bias.copy_(self.fc.bias.repeat(P))
        return nn.Sequential(first, self.act, self.out).eval()


def test_the_flat_twin_computes_the_model():
    m = Transposed(3, 2, 4, nn.ReLU(), False, False, 1).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.allclose(m(x), m.flat()(x), atol=1e-5)


@FAST
@given(P=st.integers(2, 3), d=st.integers(1, 3), w=st.integers(2, 5), act=st.sampled_from(["relu", "tanh"]),
       matmul=st.booleans(), frozen=st.booleans(), seed=st.integers(0, 2 ** 31 - 1), eps=st.floats(0.0, 1.0))
def test_linear_on_a_transposed_input_is_lowered_and_sound(P, d, w, act, matmul, frozen, seed, eps):
    model = Transposed(P, d, w, _act(act), matmul, frozen, seed).eval()
    g = torch.Generator().manual_seed(seed + 3)
    center = torch.randn(2, P * d, generator=g)
    gens = torch.randn(2, 2, P * d, generator=g) * eps / 2
    graph = get_graph(model, (P * d,))  # refused before: the no_grad trace's bmm, the other's mm
    flat = get_graph(model.flat(), (P * d,))
    y = forward_all(model, sample_box(center, gens))
    for method in ("ibp", "linear"):
        lo, hi = output_bounds(graph, center, gens, method=method)
        assert_inside(y, lo, hi)
        lo_f, hi_f = output_bounds(flat, center, gens, method=method)
        tol = 1e-4 * (1 + hi_f.abs() + lo_f.abs())
        assert bool(((lo - lo_f).abs() <= tol).all()) and bool(((hi - hi_f).abs() <= tol).all())


def _dense_points(model, lo, up, n=4000, seed=2):
    x = lo + torch.rand(n, lo.shape[1], generator=torch.Generator().manual_seed(seed)) * (up - lo)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * lo.shape[1]).reshape(-1, lo.shape[1])
    x = torch.cat([x, lo + corners * (up - lo)])
    with torch.no_grad():
        y_off = model(x)
    y_on = model(x).detach()  # as a plain call runs it (autograd on, a weight that requires grad: mm)
    return x, y_off, y_on


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
def test_transposed_linear_verdicts_are_sound(engine, frozen):
    """Every engine: a far spec is proved (auto_LiRPA may decline the graph: then no proof,
    never a wrong one); a spec between the centre's output and the largest sampled one is
    never proved, and any counterexample is in the box and really violates."""
    model = Transposed(3, 2, 4, nn.ReLU(), False, frozen, 7).eval()
    z = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    lo, up = z - 0.3, z + 0.3
    x, y_off, y_on = _dense_points(model, lo, up)
    with torch.no_grad():
        y_c = float(model(z)[0, 0])
    top = float(torch.maximum(y_off, y_on)[:, 0].max())
    assert top > y_c + 1e-3
    far = verify_box(model, lo, up, OutputRange(upper=[top + 1.0, 1e6, 1e6]), engine=engine, device="cpu",
                     budget_s=3)
    if not engine.startswith("auto_lirpa"):
        assert far.status == ["verified"], far.notes
    mid = (y_c + top) / 2
    res = verify_box(model, lo, up, OutputRange(upper=[mid, 1e6, 1e6]), engine=engine, device="cpu", budget_s=3)
    assert set(res.status) <= ALLOWED and res.status != ["verified"], (res.status, res.notes)
    if res.status == ["falsified"]:
        cex = res.counterexamples[0]
        assert bool(((cex >= lo[0]) & (cex <= up[0])).all())
        with torch.no_grad():
            assert float(model(cex[None])[0, 0]) > mid
    if engine == "auto":
        assert res.status == ["falsified"], res.notes


class TransposedGradBranch(nn.Module):
    """The transposed Linear with autograd on (a plain call), another weight's under
    ``torch.no_grad`` (where a verifier traces): two functions, refused however matmul spells
    each."""

    def __init__(self, how):
        super().__init__()
        torch.manual_seed(3)
        self.fc, self.fc2, self.out, self.how = nn.Linear(2, 4), nn.Linear(2, 4), nn.Linear(12, 2), how

    def forward(self, x):
        xt = x.view(x.shape[0], 2, 3).transpose(1, 2)
        other = torch.is_grad_enabled() if self.how == "grad_mode" else self.fc.weight.requires_grad
        fc = self.fc if other else self.fc2
        return self.out(torch.relu(fc(xt)).flatten(1))


@pytest.mark.parametrize("how", ["grad_mode", "requires_grad"])
def test_a_transposed_linear_that_branches_on_the_grad_mode_is_refused(how):
    model = TransposedGradBranch(how).eval()
    with pytest.raises(UnsupportedLayer, match="different function with autograd on"):
        lower(model, torch.randn(2, 6))
    lo = torch.randn(1, 6)
    res = verify_box(model, lo, lo + 0.1, Prediction(0), engine="linear", device="cpu", budget_s=1)
    assert res.status != ["verified"], res.notes
    assert any("different function with autograd on" in n for n in res.notes), res.notes


class SameWeightBothModes(nn.Module):
    """Control: the same product spelled ``fc(x^T)`` in one mode and ``x^T @ W^T + b`` in the
    other is one function (and one program up to the rewrites): proved."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.fc, self.out = nn.Linear(2, 4), nn.Linear(12, 2)

    def forward(self, x):
        xt = x.view(x.shape[0], 2, 3).transpose(1, 2)
        return self.out(torch.relu(self.fc(xt)).flatten(1))


def test_control_the_transposed_linear_is_proved():
    model = SameWeightBothModes().eval()
    lo = torch.randn(2, 6)
    with torch.no_grad():
        y = model(lo)
    res = verify_box(model, lo, lo + 1e-3, OutputRange(upper=[float(y.max()) + 1.0] * 2), engine="linear",
                     device="cpu")
    assert res.status == ["verified"] * 2, res.notes
