"""Planted cases and property tests of the ninth adversarial soundness hunt (the model as the
user runs it: contexts, parametrizations and stateful modules, forwards the trace could misread,
spec edge cases, engines cross-checked on random networks). Each test named after a finding is a
wrong verdict, minimised; it fails on the code it was found on. Controls show the ordinary case
is still proved; the property tests guard the areas where the hunt found nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_latentaudit import Accuracy, Direction, LatentAuditError, Linear, OutputRange, Prediction, audit, verify_box


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


# ------------------------------------------------ 2. spec inputs that crashed with torch's errors
def _three_outputs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3)).eval()


@pytest.mark.parametrize("spec, says", [
    (lambda: OutputRange(upper=[1.0, 2.0]), "upper has 2 values but the model has 3 outputs"),
    (lambda: Prediction("cat"), "class indices"),
    (lambda: Prediction(float("nan")), "class indices"),
    (lambda: Prediction(float("inf")), "class indices"),
    (lambda: Prediction(1e20), "class indices"),
])
def test_bad_spec_arguments_are_a_latent_audit_error(spec, says):
    """Found: per-output ``OutputRange`` bounds of the wrong length were a bare ``RuntimeError``
    from ``expand``; a string label a ``TypeError`` from ``torch.as_tensor``; an infinite label an
    ``OverflowError``; NaN ``cannot convert float NaN to integer``. Each is now a
    ``LatentAuditError`` that says what to pass (1e20, out of range, already was one)."""
    m = _three_outputs()
    with pytest.raises(LatentAuditError, match=says):
        verify_box(m, torch.zeros(2, 2), torch.ones(2, 2) * 0.01, spec(), budget_s=1)


def test_a_misspelt_auto_lirpa_method_is_an_error_not_a_silent_falsify_run():
    """Found: ``engine="auto_lirpa:foo"`` under a budget ran falsification only, with no note
    saying why (without one, a ``ValueError`` from inside the auto_LiRPA engine)."""
    with pytest.raises(LatentAuditError, match="auto_lirpa:crown"):
        verify_box(_three_outputs(), torch.zeros(1, 2), torch.ones(1, 2), Prediction(0), engine="auto_lirpa:foo",
                   budget_s=1)


def test_control_per_output_ranges_and_integer_labels_still_work():
    m = _three_outputs()
    lo, hi = torch.zeros(2, 2), torch.ones(2, 2) * 0.01
    y = m(lo)
    r = verify_box(m, lo, hi, OutputRange(lower=(y.min(0).values - 1).tolist(), upper=(y.max(0).values + 1).tolist()),
                   budget_s=2)
    assert r.status == ["verified", "verified"]
    lab = y.argmax(1)
    for labels in (lab, lab.tolist(), lab.double(), lab.int()):
        assert verify_box(m, lo, hi, Prediction(labels), budget_s=2).status == ["verified", "verified"]


# ------------------------------------------------ 3. tied weights (a false refusal)
class TiedHead(nn.Module):
    """``c`` shares ``b``'s weight (one Parameter under two names)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.o = nn.Linear(2, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.c.weight = self.b.weight

    def forward(self, x):
        return self.o(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_tied_weights_are_lowered_and_bounded_as_they_run():
    """Found: a model with tied weights was refused (``functional_call got multiple values for
    keys ['b.weight', 'c.weight'], which are tied``): the trace passed each name its own detached
    copy. Now one copy per Parameter: the model is proved, and bounded with the shared weight as
    it is now (edited through one of its names, both uses change)."""
    m = TiedHead().eval()
    lo, hi = torch.tensor([[-0.3, 0.1]]), torch.tensor([[0.4, 0.5]])
    X = lo + (hi - lo) * torch.rand(4000, 2, generator=torch.Generator().manual_seed(0))
    for edit in (1.0, 3.0):
        with torch.no_grad():
            m.b.weight.mul_(edit)
            top = float(m(X)[:, 0].max())
        C = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        r = verify_box(m, lo, hi, Linear(C, [-(top + 0.05 * (1 + abs(top)))]), budget_s=3)
        assert r.status == ["verified"], r.notes
        r = verify_box(m, lo, hi, Linear(C, [-(top - 1e-3)]), budget_s=3)
        assert r.status == ["falsified"]


# ------------------------------------------------------------- property tests and guards
import torch.nn.utils.parametrize as parametrize  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.nn.utils import parametrizations  # noqa: E402


def _row0(n_out, thr):
    C = torch.zeros(1, n_out, dtype=torch.float64)
    C[0, 0] = 1
    return Linear(C, [-thr])


def _sampled_range(m, lo, hi, n=4000, seed=0):
    u = torch.rand(n, lo.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = (lo.double() + (hi - lo).double() * u).to(lo.dtype)
    with torch.no_grad():
        y = m(X)[:, 0].double()
    return float(y.max()), float(y.min())


class _Sym(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


def _parametrized(kind):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    if kind == "weight_norm":
        parametrizations.weight_norm(m[0])
        parametrizations.weight_norm(m[2], dim=1)
    elif kind == "spectral_norm":
        parametrizations.spectral_norm(m[2])
    elif kind == "old_spectral_norm":
        torch.nn.utils.spectral_norm(m[2])
    elif kind == "orthogonal":
        parametrizations.orthogonal(m[2])
    else:
        parametrize.register_parametrization(m[2], "weight", _Sym())
    return m.eval()


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "old_spectral_norm", "orthogonal", "custom"])
def test_property_parametrized_weights_are_bounded_as_they_run(kind):
    """Hunted: parametrizations (``weight_norm``, ``spectral_norm`` new and old, ``orthogonal``, a
    custom ``register_parametrization``, also under ``parametrize.cached()``) bounded with stale or
    original weights. Each threshold just below the sampled maximum is falsified, one above it proved."""
    m = _parametrized(kind)
    lo, hi = torch.tensor([[-0.3, 0.1]]), torch.tensor([[0.4, 0.5]])
    top, bottom = _sampled_range(m, lo, hi)
    for ctx in (parametrize.cached, torch.no_grad):
        with ctx():
            r = verify_box(m, lo, hi, _row0(2, top - 1e-4 * (1 + abs(top))), budget_s=2)
            assert r.status == ["falsified"]
            r = verify_box(m, lo, hi, _row0(2, top + 0.05 * (1 + top - bottom)), budget_s=2)
            assert r.status == ["verified"], r.notes


class _ConvNet(nn.Module):
    """A latent code to a small image, a conv (odd stride/dilation/groups/padding mode) or a
    transposed conv (output_padding), a pooling or an upsampling, a head; plus a narrow spike."""

    def __init__(self, d, C, H, first, second, p, w, height):
        super().__init__()
        self.C, self.H = C, H
        self.inp = nn.Linear(d, C * H * H)
        self.body = nn.Sequential(first, nn.ReLU(), second, nn.Tanh())
        n = self.body(torch.zeros(1, C, H, H)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, 3))
        self.register_buffer("p", p)
        self.w, self.height = w, height

    def forward(self, x):
        y = self.head(self.body(self.inp(x).reshape(-1, self.C, self.H, self.H)))
        sp = self.height * torch.relu(1 - (x - self.p).abs().sum(1, keepdim=True) / self.w)
        return y + torch.cat([sp, sp * 0, sp * 0], 1)


_FIRST = [lambda C: nn.Conv2d(C, 2 * C, 3, stride=2, dilation=1, padding=1, groups=C, padding_mode="reflect"),
          lambda C: nn.Conv2d(C, 2, 2, stride=1, dilation=2, padding=1, padding_mode="circular"),
          lambda C: nn.ConvTranspose2d(C, 2, 3, stride=2, output_padding=1)]
_SECOND = [lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
           lambda: nn.MaxPool2d(2, stride=1, dilation=2, ceil_mode=True),
           lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)]  # 3: GroupNorm


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2 ** 16), d=st.integers(1, 3), first=st.integers(0, 2), second=st.integers(0, 3),
       where=st.floats(-0.9, 0.9))
def test_property_a_narrow_spike_in_a_random_conv_net_is_never_proved(seed, d, first, second, where):
    """Hunted: engines against dense sampling on random small conv nets (30 nets, 360 verdicts,
    engines ibp / linear / crown / bab / auto / auto_LiRPA ibp and crown, zero tolerance), and 60
    planted spikes of relative width 1e-4: no proof of a false threshold, every counterexample in
    its box and violating. The spike here is planted where no sample of the threshold sees it."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    c, r = torch.randn(1, d, generator=g), torch.rand(1, d, generator=g) * 0.3 + 0.01
    lo, hi = c - r, c + r
    p = (c + r * where)[0]
    first_layer = _FIRST[first](2)
    second_layer = _SECOND[second]() if second < 3 else nn.GroupNorm(1, 4 if first == 0 else 2)
    m = _ConvNet(d, 2, 6, first_layer, second_layer, p, float(r.min()) * 1e-4, 0.0).eval()
    top, bottom = _sampled_range(m, lo, hi, seed=seed)
    thr = top + 0.02 * (1 + top - bottom)
    m.height = 2 * (thr - bottom) + 1
    with torch.no_grad():
        assert float(m(p[None])[0, 0]) > thr
    for engine in ("auto", "bab"):
        res = verify_box(m, lo, hi, _row0(3, thr), engine=engine, budget_s=1)
        assert res.status[0] != "verified", engine
        if res.status[0] == "falsified":
            x = res.counterexamples[0].reshape(lo.shape)
            with torch.no_grad():
                assert bool(((x >= lo) & (x <= hi)).all()) and float(m(x)[0, 0]) > thr
    m.height = 0.0
    assert verify_box(m, lo, hi, _row0(3, thr), budget_s=2).status[0] in ("verified", "unknown")
