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
        r = audit(m, z0, direction=Direction.vector(V13), eps=1.0, spec=Invariance(), engine=engine, budget_s=2)
        assert r.counts["falsified"] == 0, (engine, [c.offset for c in r.counterexamples])
        assert r.verdict != "violated"
    # a direction passed as a float64 tensor is not rounded to float32 either
    r = audit(m, z0, direction=V13, eps=1.0, spec=Invariance(), engine="falsify", budget_s=2)
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


# ------------------------------------------------------------- property tests and guards
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook  # noqa: E402

from pytest_latentaudit import Prediction, verify_box  # noqa: E402
from pytest_latentaudit.engines.bounds import output_bounds  # noqa: E402
from pytest_latentaudit.engines.graph import get_graph  # noqa: E402


class Spiked(nn.Module):
    """A small ReLU head where class 0 wins by about 1, plus a spike of height ``H w`` (class 1
    wins) in the l1 ball of radius ``w`` around ``p``: no centre or corner of the box sees it."""

    def __init__(self, d, p, w, H, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1, self.l2 = nn.Linear(d, 16), nn.Linear(16, 2)
        with torch.no_grad():
            for q in self.parameters():
                q.copy_(torch.randn(q.shape, generator=g) * 0.1)
            self.l2.bias.copy_(torch.tensor([1.0, 0.0]))
        self.register_buffer("p", p.clone())
        self.w, self.H = w, H

    def forward(self, x):
        sp = torch.relu(self.w - (x - self.p).abs().sum(1, keepdim=True)) * self.H
        return self.l2(torch.relu(self.l1(x))) + torch.cat([-sp, sp], 1)


def _violates(m, x):
    with torch.no_grad():
        y = m(x.reshape(1, -1))
    return not bool(y[0, 0] > y[0, 1])


def _check_verdicts(m, lo, hi, engines, budget):
    spiked = _violates(m, m.p)
    for e in engines:
        r = verify_box(m, lo, hi, Prediction(0), engine=e, budget_s=budget)
        s = r.status[0]
        assert not (s == "verified" and spiked), (e, budget)
        if s == "falsified":
            x = r.counterexamples[0]
            assert bool(((x >= lo[0]) & (x <= hi[0])).all()) and _violates(m, x), e
    return s


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(d=st.integers(1, 3), seed=st.integers(0, 2 ** 16), where=st.floats(-0.8, 0.8),
       budget=st.sampled_from([1e-6, 1e-3, 0.02]))
def test_property_a_tiny_budget_never_proves_a_planted_spike(d, seed, where, budget):
    """Hunted: a budget that runs out inside a rung (1 microsecond to 20 ms) turning into
    ``verified``. 48 boxes by hand and these found none: cut work stays open."""
    g = torch.Generator().manual_seed(seed)
    c, r = torch.randn(1, d, generator=g), torch.rand(1, d, generator=g) * 0.5 + 0.01
    p = c[0] + r[0] * where
    w = float(r.min()) * 1e-3
    m = Spiked(d, p, w, 4.0 / w, seed=seed).eval()
    assert _violates(m, p)
    _check_verdicts(m, c - r, c + r, ("auto", "bab", "linear"), budget)


def test_state_changed_between_two_calls_is_bounded_as_it_is_now():
    """Hunted: a stale graph or auto_LiRPA copy after the model object changed between two
    calls (a Python attribute read in forward, a ``.data`` edit that bumps no version counter,
    a hook added and removed). Each call bounds the model as it is then."""
    d, w = 2, 1e-4
    lo, hi = torch.full((1, d), -0.2), torch.full((1, d), 0.2)
    m = Spiked(d, torch.tensor([0.0731, -0.1123]), w, 0.0, seed=1).eval()
    engines = ("auto", "linear", "auto_lirpa:crown")
    assert _check_verdicts(m, lo, hi, ("auto",), 5) == "verified"  # control: no spike, proved
    m.H = 4.0 / w  # a Python attribute
    _check_verdicts(m, lo, hi, engines, 3)
    m.H = 0.0
    m.l2.bias.data[0] = -5.0  # no version bump
    _check_verdicts(m, lo, hi, engines, 3)
    m.l2.bias.data[0] = 1.0
    h = m.register_forward_hook(lambda mod, i, o: o * torch.tensor([-1.0, 1.0]))
    r = verify_box(m, lo, hi, Prediction(0), engine="auto", budget_s=3)
    assert r.status == ["falsified"]
    h.remove()
    assert _check_verdicts(m, lo, hi, ("auto",), 5) == "verified"


def _bounds_hold(m, lo, hi, n=3000, methods=("ibp", "linear", "crown"), extra=None, seed=0):
    """Every sampled output inside each method's bounds (a NaN bound is no bound, not a miss)."""
    d = lo.shape[1]
    g = get_graph(m, (d,), example=torch.cat([lo, hi]))
    u = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = (lo.double() + (hi - lo).double() * u).to(lo.dtype)
    X = torch.maximum(torch.minimum(X, hi), lo)
    if extra is not None:
        X = torch.cat([X, extra.to(lo.dtype)])
    with torch.no_grad():
        Y = m(X).reshape(X.shape[0], -1).double()
    c, G = (lo.double() + hi.double()) / 2, torch.diag_embed((hi.double() - lo.double()) / 2)
    for meth in methods:
        L, H = (b.reshape(1, -1).double() for b in output_bounds(g, c, G, method=meth))
        miss = (L > Y) | (H < Y)
        assert not bool(miss.any()), (meth, float(torch.nan_to_num(torch.maximum(L - Y, Y - H)).max()))


def test_global_module_hooks_are_bounded():
    """Hunted: forward hooks and pre-hooks registered for every module
    (``register_module_forward_hook``, ``always_call``, ``with_kwargs``) left out of the bound.
    The spike they add (at x_0 = 0.3051) lies inside every bound."""
    lo, hi = torch.zeros(1, 2), torch.ones(1, 2)
    spike_pt = torch.tensor([[0.3051, 0.5]])

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            s = torch.relu(0.005 - (inp[0][:, :1] - 0.3051).abs()) * 1e4
            return out + torch.cat([-s, s], 1)

    def prehook(mod, inp):
        if isinstance(mod, nn.Linear):
            return (inp[0] + torch.relu(0.005 - (inp[0][:, :1] - 0.3051).abs()) * 1e4,)

    for reg in (lambda: register_module_forward_hook(hook), lambda: register_module_forward_hook(hook, always_call=True),
                lambda: register_module_forward_pre_hook(prehook)):
        h = reg()
        try:
            torch.manual_seed(0)
            m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
            _bounds_hold(m, lo, hi, extra=spike_pt)
        finally:
            h.remove()


_ACTS = [nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, lambda: nn.LayerNorm(12), lambda: nn.Softmax(1), nn.ELU,
         nn.Softplus]


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(dt=st.sampled_from([torch.float16, torch.bfloat16]), act=st.integers(0, len(_ACTS) - 1),
       d=st.integers(1, 3), seed=st.integers(0, 2 ** 16), scale=st.sampled_from([0.5, 1.5, 3.5]),
       big=st.booleans())
def test_property_low_precision_models_bounds_contain_their_outputs(dt, act, d, seed, scale, big):
    """Hunted: float16 / bfloat16 models on CPU (the model's unit roundoff 2^-11 / 2^-8 per op,
    overflow past 65504). 36 random networks by hand and these: every output inside the bounds.
    (IBP of float16 LayerNorm/softmax networks gives NaN bounds where an intermediate interval
    overflows: no bound, never a proof.)"""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, 12), _ACTS[act](), nn.Linear(12, 12), _ACTS[act](), nn.Linear(12, 3))
    with torch.no_grad():
        for q in m.parameters():
            q.copy_(torch.randn(q.shape, generator=g) * scale)
    m = m.to(dt).eval()
    c = torch.randn(1, d, generator=g) * (11.0 if big else 1.0)
    r = torch.rand(1, d, generator=g) * 0.3
    _bounds_hold(m, (c - r).to(dt), (c + r).to(dt), n=1000, seed=seed)
