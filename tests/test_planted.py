"""Planted-violation soundness suite (in the spirit of SoundnessBench).

Every test builds a small model and a box that *contains* a point violating the spec,
confirms that point inside the test with a plain forward pass of the model (so the test
itself is honest: the point is in the box and really violates), then asks ``verify_box``
or ``audit`` and requires that no box is ``verified`` ("falsified" and "unknown" are both
fine) and that nothing raises. Most violations are planted where a falsifier is unlikely to
land (spikes of width 1e-4..1e-6, a single corner, a rounding artefact): an engine that
proves something about a *different* function than the one the model computes (a stale
graph, a dropped hook or keyword argument, exact instead of float32 arithmetic, a box
rounded inwards) is caught by these, not by broad violations that the concrete check
finds first.

A few controls (easy models, small boxes) must be ``verified``, so an engine that always
answers "unknown" fails the suite too. Wherever an engine says ``falsified`` its
counterexample is re-checked here as well: inside the box and violating.

Classes of planted violations:
 1. forward hooks / forward pre-hooks (root module and submodule)
 2. dropped keyword arguments (add/sub ``alpha``, ``div(rounding_mode=...)``)
 3. models mutated between two calls (submodule, slope, Python attribute, weights, buffer)
 4. float32 cancellation around large biases
 5. mixed-scale boxes with the violation exactly at the user's ``lower`` corner
 6. narrow ReLU spikes in 2-4 dimensional boxes
 7. margins of exactly 0 and +-1e-6
 8. layers and model kinds that used to crash (pooling, raw Parameters, float64,
    plain callables, slicing) must give an honest verdict
 9. spikes along non-axis directions and subspaces through ``audit``
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pytest_latentaudit import (Accuracy, Direction, Invariance, Linear, OutputRange, Prediction, PredictionNotIn,
                                audit, verify_box)

ALLOWED = {"verified", "falsified", "unknown"}
BUDGET = 1.0  # seconds per call where a sound engine may have to run out its budget
SPIKE_BUDGET = 2.0  # narrow spikes (and false proofs that need branch and bound to appear)
BAB_BUDGET = 5.0  # where a wrong proof needs a few thousand sub-boxes; a sound engine ends early
CONTROL_BUDGET = 5.0  # controls: a working engine proves them in well under a second
NARROW = 1e-5  # spike width used where the class of bug, not the width, is under test

# A spike centre inside the unit box, away from its centre, its corners and dyadic points.
C_IN = (0.3712, 0.6143, 0.2291, 0.8237)


# --------------------------------------------------------------------------- checkers
# Written here, independently of the library's spec classes, so a wrong `holds` in the
# library cannot make a planted point look harmless.
def viol_prediction(label):
    def check(y):
        others = torch.cat([y[:label], y[label + 1:]])
        return bool(others.max() >= y[label])  # a tie is a violation
    return check


def viol_not_in(classes, n_out):
    def check(y):
        banned = torch.zeros(n_out, dtype=torch.bool)
        banned[list(classes)] = True
        return bool(y[banned].max() >= y[~banned].max())  # a tie may go to a banned class
    return check


def viol_range(lower=None, upper=None):
    def check(y):
        lo_bad = lower is not None and bool((y < lower).any())
        hi_bad = upper is not None and bool((y > upper).any())
        return lo_bad or hi_bad
    return check


def forward(model, x):
    """Plain forward pass of one point ``x`` (per-sample shape) -> flat output."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        y = model(x[None])
    if isinstance(y, (tuple, list)):
        y = y[0]
    return y.reshape(-1)


def plant(model, x, lower, upper, violates):
    """The test's own honesty check: ``x`` lies in the box and violates the spec."""
    x = torch.as_tensor(x)
    lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
    assert x.shape == lower.shape == upper.shape
    assert bool((lower <= x).all() and (x <= upper).all()), "planted point is not inside the box"
    y = forward(model, x)
    assert violates(y), f"planted point does not violate: model output {y.tolist()}"


def holds_everywhere_sampled(model, lower, upper, violates, n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
    u = torch.rand((n, *lower.shape), generator=g, dtype=lower.dtype)
    xs = lower + u * (upper - lower)
    return not any(violates(forward(model, x)) for x in xs)


def run_box(model, lower, upper, spec, violates, engine="auto", budget_s=BUDGET, **kw):
    """verify_box on one box ``[lower, upper]`` (per-sample shapes); sanity of the result:
    statuses in the allowed set, every counterexample inside the box and violating."""
    lo, hi = torch.as_tensor(lower)[None], torch.as_tensor(upper)[None]
    res = verify_box(model, lo, hi, spec, engine=engine, device="cpu", budget_s=budget_s, **kw)
    assert len(res.status) == 1
    assert set(res.status) <= ALLOWED, res.status
    for s, x in zip(res.status, res.counterexamples):
        if s == "falsified":
            assert x is not None, "falsified without a counterexample"
            x = x.detach().cpu().to(lo.dtype).reshape(lo.shape[1:])
            assert bool((lo[0] <= x).all() and (x <= hi[0]).all()), "counterexample outside the box"
            assert violates(forward(model, x)), "counterexample does not violate the spec"
    return res


def assert_not_verified(res, what=""):
    assert "verified" not in res.status, (
        f"{what}: claimed a proof for a box that holds a planted violation; "
        f"status={res.status} rung={getattr(res, 'rung', None)} notes={res.notes}")


def assert_verified(res, what=""):
    assert res.status == ["verified"] * len(res.status), (
        f"{what}: control (a model that is fine on an easy box) not verified; "
        f"status={res.status} notes={res.notes}")


# ----------------------------------------------------------------------- model parts
def spike_linears(center, width):
    """Two Linear layers such that ``s(x) = relu(L2(relu(L1(x))))`` is ~1 at ``center`` and
    exactly 0 unless ``|x_i - center_i| < width`` for every i (a product of triangles,
    realised as ``relu(sum_i tri_i(x_i) - (d - 1))``)."""
    c = [float(v) for v in center]
    d = len(c)
    L1, L2 = nn.Linear(d, 3 * d), nn.Linear(3 * d, 1)
    W1, b1, W2 = torch.zeros(3 * d, d), torch.zeros(3 * d), torch.zeros(1, 3 * d)
    for i in range(d):
        for j, (off, coef) in enumerate(((-width, 1.0), (0.0, -2.0), (width, 1.0))):
            W1[3 * i + j, i] = 1.0
            b1[3 * i + j] = -(c[i] + off)
            W2[0, 3 * i + j] = coef / width
    with torch.no_grad():
        L1.weight.copy_(W1)
        L1.bias.copy_(b1)
        L2.weight.copy_(W2)
        L2.bias.fill_(-(d - 1.0))
    return L1, L2


def linear(in_f, out_f, W, b):
    m = nn.Linear(in_f, out_f)
    with torch.no_grad():
        m.weight.copy_(torch.as_tensor(W, dtype=torch.float32).reshape(out_f, in_f))
        m.bias.copy_(torch.as_tensor(b, dtype=torch.float32).reshape(out_f))
    return m


def spike_head(center, width, gain):
    """``y = [1, gain * s(x)]``: with gain 3 class 1 wins on the spike (Prediction(0) is
    violated there and nowhere else); with gain -3 (or a spike outside the box) Prediction(0)
    holds on the whole box and interval bounds prove it."""
    L1, L2 = spike_linears(center, width)
    return nn.Sequential(L1, nn.ReLU(), L2, nn.ReLU(), linear(1, 2, [0.0, gain], [1.0, 0.0])).eval()


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


def unit_box(d):
    return torch.zeros(d), torch.ones(d)


P0 = Prediction(0)
V0 = viol_prediction(0)


# ------------------------------------------------------------------------ 0. controls
def test_control_spike_outside_the_box_is_verified():
    lo, hi = unit_box(2)
    model = spike_head([c + 2.0 for c in C_IN[:2]], NARROW, 3.0)
    assert holds_everywhere_sampled(model, lo, hi, V0)
    assert_verified(run_box(model, lo, hi, P0, V0, budget_s=CONTROL_BUDGET), "spike outside the box")


def test_control_negative_spike_is_verified():
    lo, hi = unit_box(2)
    model = spike_head(C_IN[:2], NARROW, -3.0)
    assert holds_everywhere_sampled(model, lo, hi, V0)
    assert_verified(run_box(model, lo, hi, P0, V0, budget_s=CONTROL_BUDGET), "negative-gain spike")


@pytest.mark.parametrize("engine", ["ibp", "linear", "bab", "auto"])
def test_control_small_box_around_a_confident_point_is_verified(engine):
    model = nn.Sequential(linear(2, 3, [[1, 0], [0, 1], [1, -1]], [0.1, -0.2, 0.0]), nn.ReLU(),
                          linear(3, 2, [[1, 0, 1], [0, 1, -1]], [1.0, 0.0])).eval()
    x0 = f32([0.5, 0.3])
    lo, hi = x0 - 0.01, x0 + 0.01
    assert holds_everywhere_sampled(model, lo, hi, V0)
    assert_verified(run_box(model, lo, hi, P0, V0, engine=engine, budget_s=CONTROL_BUDGET),
                    f"small box, engine {engine}")


@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_control_audit_easy_segment_is_verified(engine):
    model = nn.Sequential(linear(2, 3, [[1, 0], [0, 1], [1, -1]], [0.1, -0.2, 0.0]), nn.ReLU(),
                          linear(3, 2, [[1, 0, 1], [0, 1, -1]], [1.0, 0.0])).eval()
    z = torch.tensor([[0.5, 0.3], [0.6, 0.2]])
    res = audit(model, z, torch.zeros(2, dtype=torch.long), direction=Direction.vector(torch.tensor([0.6, 0.8])),
                eps=0.01, spec=Accuracy(at_least=1.0), engine=engine, device="cpu", budget_s=CONTROL_BUDGET)
    assert res.status == ["verified"] * 2, (res.status, res.notes)
    assert res.verdict == "proved"


def test_control_audit_far_seeds_are_verified():
    model = spike_head([0.5] * 4, 1e-4, 3.0)
    z = torch.full((3, 4), -2.0) + torch.arange(3.0)[:, None] * 0.1
    res = audit(model, z, torch.zeros(3, dtype=torch.long), direction=Direction.axis(2), eps=0.05,
                spec=Accuracy(at_least=1.0), engine="auto", device="cpu", budget_s=CONTROL_BUDGET)
    assert res.status == ["verified"] * 3, (res.status, res.notes)
    assert res.verdict == "proved"


# -------------------------------------------------------------------------- 1. hooks
class FlipSecond(nn.Module):
    """Negates logit 1 (a custom module: traced through, not a leaf)."""

    def forward(self, x):
        return x * torch.tensor([1.0, -1.0])


def _hook_case(name):
    """(base model, attach(model) -> handle, narrow?) for each hook variant. The base model
    satisfies Prediction(0) on the unit box; the hooked one violates it."""
    inside_neg = lambda: spike_head(C_IN[:2], NARROW, -3.0)  # noqa: E731  spike in box, gain -3: fine
    outside_pos = lambda: spike_head([c + 2.0 for c in C_IN[:2]], NARROW, 3.0)  # noqa: E731
    flip = torch.tensor([1.0, -1.0])
    if name == "forward_hook_root_flip_logit":
        return inside_neg(), lambda m: m.register_forward_hook(lambda mod, i, o: o * flip), True
    if name == "forward_hook_submodule_flip_logit":
        return inside_neg(), lambda m: m[4].register_forward_hook(lambda mod, i, o: o * flip), True
    if name == "forward_hook_root_add_offset":
        return inside_neg(), lambda m: m.register_forward_hook(lambda mod, i, o: o + torch.tensor([0.0, 2.0])), False
    if name == "forward_hook_submodule_negate":
        return inside_neg(), lambda m: m[4].register_forward_hook(lambda mod, i, o: -o), False
    if name == "pre_hook_root_shift_input":
        return outside_pos(), lambda m: m.register_forward_pre_hook(lambda mod, args: (args[0] + 2.0,)), True
    if name == "pre_hook_submodule_shift_input":
        return outside_pos(), lambda m: m[0].register_forward_pre_hook(lambda mod, args: (args[0] + 2.0,)), True
    if name == "pre_hook_last_layer_offset":
        return outside_pos(), lambda m: m[4].register_forward_pre_hook(lambda mod, args: args[0] + 1.0), False
    raise AssertionError(name)


HOOK_CASES = ["forward_hook_root_flip_logit", "forward_hook_submodule_flip_logit", "forward_hook_root_add_offset",
              "forward_hook_submodule_negate", "pre_hook_root_shift_input", "pre_hook_submodule_shift_input",
              "pre_hook_last_layer_offset"]


@pytest.mark.parametrize("when", ["hooked_before_first_call", "hooked_after_a_proof"])
@pytest.mark.parametrize("case", HOOK_CASES)
def test_hook_that_changes_the_output_is_part_of_the_model(case, when):
    lo, hi = unit_box(2)
    model, attach, narrow = _hook_case(case)
    if when == "hooked_after_a_proof":
        assert_verified(run_box(model, lo, hi, P0, V0, budget_s=CONTROL_BUDGET), f"{case}: un-hooked model")
    else:
        assert_verified(run_box(copy.deepcopy(model), lo, hi, P0, V0, budget_s=CONTROL_BUDGET),
                        f"{case}: un-hooked copy")
    attach(model)
    x = f32(C_IN[:2]) if narrow else f32([0.9, 0.1])
    plant(model, x, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0), case)


class GradModeBranch(nn.Module):
    """A spike head whose spike flips sign in one grad mode: a user's plain call runs with
    autograd on, ``torch.no_grad`` (where a verifier traces) without it."""

    def __init__(self, flip_with_grad):
        super().__init__()
        self.head, self.flip_with_grad = spike_head(C_IN[:2], 1e-2, -3.0), flip_with_grad

    def forward(self, x):
        y = self.head(x)
        if torch.is_grad_enabled() == self.flip_with_grad:
            y = y * torch.tensor([1.0, -1.0])
        return y


@pytest.mark.parametrize("flip_with_grad", [True, False])
def test_a_forward_that_branches_on_the_grad_mode_is_not_proved(flip_with_grad):
    lo, hi = unit_box(2)
    model = GradModeBranch(flip_with_grad).eval()
    x = f32(C_IN[:2])
    with torch.set_grad_enabled(flip_with_grad):  # the mode in which the spike violates
        y = model(x[None]).detach().reshape(-1)
    assert V0(y), y.tolist()
    res = run_box(model, lo, hi, P0, V0, budget_s=SPIKE_BUDGET)
    assert_not_verified(res, f"grad-mode branch (flip with grad: {flip_with_grad})")
    # nor a counterexample: in the other mode the point is fine, and either may be the user's
    assert res.status == ["unknown"], (res.status, res.notes)


class BroadGradModeBranch(nn.Module):
    """``[1, -2]`` (class 0) with autograd on, ``[1, 2]`` (class 1) under ``torch.no_grad``, on
    the whole box: every point violates in one mode and none in the other."""

    def forward(self, x):
        y = x[:, :1] * 0 + torch.tensor([1.0, -2.0])
        return y if torch.is_grad_enabled() else y * torch.tensor([1.0, -1.0])


def test_a_counterexample_must_violate_with_autograd_on_and_off():
    lo, hi = unit_box(2)
    model = BroadGradModeBranch().eval()
    with torch.no_grad():
        assert V0(model(f32(C_IN[:2])[None]).reshape(-1))
    assert not V0(model(f32(C_IN[:2])[None]).detach().reshape(-1))
    res = verify_box(model, lo[None], hi[None], P0, device="cpu", budget_s=BUDGET)
    assert res.status == ["unknown"], (res.status, res.notes)


class RequiresGradBranch(nn.Module):
    """Flips the spike's sign where a tensor requires grad, as it does in a user's plain
    call (the parameters require grad, autograd is on) and did not in the traces, whose
    parameters were detached, nor at the check points, run under ``torch.no_grad``."""

    def __init__(self, what):
        super().__init__()
        self.head, self.what = spike_head(C_IN[:2], 1e-2, -3.0), what

    def forward(self, x):
        y = self.head(x)
        flag = y.requires_grad if self.what == "activation" else self.head[-1].weight.requires_grad
        if flag:
            y = y * torch.tensor([1.0, -1.0])
        return y


@pytest.mark.parametrize("what", ["activation", "parameter"])
def test_a_forward_that_branches_on_requires_grad_is_not_proved(what):
    lo, hi = unit_box(2)
    model = RequiresGradBranch(what).eval()
    x = f32(C_IN[:2])
    y = model(x[None]).detach().reshape(-1)  # a plain call: autograd on
    assert V0(y), y.tolist()
    res = run_box(model, lo, hi, P0, V0, budget_s=SPIKE_BUDGET)
    assert_not_verified(res, f"requires_grad branch ({what})")


def _tracer_seen(how, x):
    """Ways a forward can notice that it is being traced rather than called."""
    if how == "fx_flag":
        return torch.fx._symbolic_trace.is_fx_tracing()
    if how == "dispatch_mode":
        return len(torch.utils._python_dispatch._get_current_dispatch_mode_stack()) > 0
    return torch._C._is_torch_function_mode_enabled()


class TracerAware(nn.Module):
    """The spike head, whose plain calls flip the spike's sign but whose traces do not (a
    model "that behaves under test"); ``in_place`` does the flip in place on a view."""

    def __init__(self, how, in_place=False):
        super().__init__()
        self.head, self.how, self.in_place = spike_head(C_IN[:2], 1e-2, -3.0), how, in_place

    def forward(self, x):
        y = self.head(x)
        if not _tracer_seen(self.how, x):
            if self.in_place:
                y = y * 1.0
                y[:, 1:].neg_()
            else:
                y = y * torch.tensor([1.0, -1.0])
        return y


@pytest.mark.parametrize("how, in_place", [("fx_flag", False), ("dispatch_mode", False), ("function_mode", False),
                                           ("dispatch_mode", True)])
def test_a_forward_that_notices_the_tracer_is_not_proved(how, in_place):
    lo, hi = unit_box(2)
    model = TracerAware(how, in_place).eval()
    y = model(f32(C_IN[:2])[None]).detach().reshape(-1)
    assert V0(y), y.tolist()
    for engine in ("auto", "linear"):
        res = run_box(model, lo, hi, P0, V0, engine=engine, budget_s=SPIKE_BUDGET)
        assert_not_verified(res, f"tracer-aware forward ({how}, in place: {in_place}, {engine})")


class CountingForward(nn.Module):
    """Counts its calls in a Python attribute and flips the spike's sign after ``after`` of
    them: the first calls, a verifier's, are fine; the user's thousandth is not."""

    def __init__(self, after=1000):
        super().__init__()
        self.head, self.calls, self.after = spike_head(C_IN[:2], 1e-2, -3.0), 0, after

    def forward(self, x):
        self.calls += 1
        y = self.head(x)
        return y * torch.tensor([1.0, -1.0]) if self.calls > self.after else y


def test_a_forward_that_counts_its_calls_is_not_proved():
    lo, hi = unit_box(2)
    model = CountingForward().eval()
    res = run_box(model, lo, hi, P0, V0, budget_s=BUDGET)
    assert_not_verified(res, "stateful forward")
    assert any("Python state" in n for n in res.notes), res.notes
    model.calls = model.after  # and the next plain call violates
    assert V0(forward(model, f32(C_IN[:2])))


class ClampsItsInput(nn.Module):
    """Clamps its input in place (the plain-call check must still run it: a leaf that
    requires grad cannot be written in place)."""

    def __init__(self):
        super().__init__()
        self.lin = linear(2, 2, [[1, 0], [0, 1]], [1.0, 0.0])

    def forward(self, x):
        x.clamp_(0.0, 0.5)
        return self.lin(x)


def test_control_a_forward_that_writes_its_input_in_place_is_verified():
    lo, hi = unit_box(2)
    res = run_box(ClampsItsInput().eval(), lo, hi, P0, V0, budget_s=CONTROL_BUDGET)
    assert_verified(res, "in-place clamp of the input")
    # and its counterexamples are the points fed, not what the forward clamped them to
    lo, hi = f32([0.6, 0.6]), f32([1.0, 1.0])  # y = [1.5, 0.5] everywhere: class 0, so
    res = run_box(ClampsItsInput().eval(), lo, hi, Prediction(1), viol_prediction(1), budget_s=BUDGET)
    assert res.status == ["falsified"], (res.status, res.notes)  # run_box checks the point is in the box


# --------------------------------------------------------------- 2. dropped arguments
class DroppedArg(nn.Module):
    """A spike ``s`` ``[N, 1]`` and a data-dependent constant ``a = [1, 0]`` combined by an
    op whose keyword argument decides the spike's sign: honouring the argument, the model
    violates Prediction(0) on (or right around) the spike; read without it, it is fine."""

    def __init__(self, kind, width=NARROW):
        super().__init__()
        self.kind = kind
        self.L1, self.L2 = spike_linears(C_IN[:2], width)
        self.const = linear(2, 2, [[0, 0], [0, 0]], [1.0, 0.0])  # [1, 0], but data-dependent
        self.neg = linear(1, 2, [0.0, -3.0], [0.0, 0.0])  # v -> [0, -3 v]
        self.pos = linear(1, 2, [0.0, 3.0], [0.0, 0.0])  # v -> [0, 3 v]
        self.e1 = linear(1, 2, [0.0, 1.0], [0.0, 0.0])  # v -> [0, v]

    def forward(self, x):
        s = torch.relu(self.L2(torch.relu(self.L1(x))))
        a = self.const(x)
        if self.kind == "torch_add_alpha_minus_1":  # a - [0, -3s] = [1, 3s]; read as a + b: [1, -3s]
            return torch.add(a, self.neg(s), alpha=-1)
        if self.kind == "method_add_alpha_2":  # [1, -3s] + 2 [0, 3s] = [1, 3s]; read as a + b: [1, 0]
            return (a + self.neg(s)).add(self.pos(s), alpha=2.0)
        if self.kind == "torch_sub_alpha_3":  # [1, -3s] - 3 [0, -3s] = [1, 6s]; read as a - b: [1, 0]
            return torch.sub(a + self.neg(s), self.neg(s), alpha=3)
        if self.kind == "div_floor":  # q = floor(-s) = -1 on 0 < s <= 1: y1 = 3 - 3s; read as -s: y1 = 0
            q = torch.div(s * -2.0, 2, rounding_mode="floor")
            return a + self.e1(-3.0 * q - 3.0 * s)
        if self.kind == "div_trunc":  # q = trunc(s) = 0 for s < 1: y1 = 3s; read as s: y1 = 0
            q = torch.div(s * 2.0, 2, rounding_mode="trunc")
            return a + self.e1(3.0 * s - 3.0 * q)
        raise AssertionError(self.kind)


DROPPED = ["torch_add_alpha_minus_1", "method_add_alpha_2", "torch_sub_alpha_3", "div_floor", "div_trunc"]


def _dropped_point(kind, width=NARROW):
    c = f32(C_IN[:2])
    if kind in ("div_floor", "div_trunc"):  # the violation sits where 0 < s < 2/3 (or 1/3 < s < 1)
        return c + f32([0.5 * width, 0.0])
    return c


@pytest.mark.parametrize("engine", ["auto", "linear"])
@pytest.mark.parametrize("kind", DROPPED)
def test_dropped_keyword_argument_is_honoured(kind, engine):
    lo, hi = unit_box(2)
    model = DroppedArg(kind).eval()
    plant(model, _dropped_point(kind), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine), f"{kind} ({engine})")


@pytest.mark.parametrize("kind", DROPPED)
def test_dropped_keyword_argument_on_a_segment_exact_engine(kind):
    """The same models on a 1-D box (only x0 varies, x1 fixed at the spike): the exact
    engine decides the traced graph completely, so a dropped argument shows at once."""
    c = f32(C_IN[:2])
    lo, hi = c.clone(), c.clone()
    lo[0], hi[0] = 0.0, 1.0
    model = DroppedArg(kind).eval()
    plant(model, _dropped_point(kind), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine="exact"), f"{kind} (exact, 1-D)")


# ------------------------------------------------------------ 3. mutation between calls
class GainAttr(nn.Module):
    """``y = [1, gain * s]`` with ``gain`` a plain Python float read in forward."""

    def __init__(self, gain):
        super().__init__()
        self.L1, self.L2 = spike_linears(C_IN[:2], NARROW)
        self.head = linear(1, 2, [0.0, 1.0], [1.0, 0.0])
        self.gain = gain

    def forward(self, x):
        s = torch.relu(self.L2(torch.relu(self.L1(x))))
        return self.head(self.gain * s)


class GainBuffer(nn.Module):
    """``y = [1, gain * s]`` with ``gain`` a registered buffer."""

    def __init__(self, gain):
        super().__init__()
        self.L1, self.L2 = spike_linears(C_IN[:2], NARROW)
        self.head = linear(1, 2, [0.0, 1.0], [1.0, 0.0])
        self.register_buffer("gain", torch.tensor([gain]))

    def forward(self, x):
        s = torch.relu(self.L2(torch.relu(self.L1(x))))
        return self.head(s * self.gain)


def _mutation_case(name):
    """(model that satisfies Prediction(0) on the unit box, mutate(model)) per variant; after
    the mutation a narrow spike at C_IN violates it."""
    if name == "replace_relu_with_identity":
        # t = relu(-s) = 0 (s >= 0), y1 = -3 t = 0; without that ReLU, y1 = 3 s: the spike
        L1, L2 = spike_linears(C_IN[:2], NARROW)
        m = nn.Sequential(L1, nn.ReLU(), L2, nn.ReLU(), linear(1, 1, [-1.0], [0.0]), nn.ReLU(),
                          linear(1, 2, [0.0, -3.0], [1.0, 0.0])).eval()

        def mutate(m):
            m[5] = nn.Identity()
        return m, mutate
    if name == "replace_identity_with_sign_flip":
        m = nn.Sequential(*spike_head(C_IN[:2], NARROW, -3.0), nn.Identity()).eval()

        def mutate(m):
            m[5] = FlipSecond()
        return m, mutate
    if name == "leaky_relu_slope_changed":
        # t = leaky(-s): slope 0 gives t = 0 (fine); slope 0.5 gives y1 = -3 t = 1.5 s (the spike)
        L1, L2 = spike_linears(C_IN[:2], NARROW)
        m = nn.Sequential(L1, nn.ReLU(), L2, nn.ReLU(), linear(1, 1, [-1.0], [0.0]), nn.LeakyReLU(0.0),
                          linear(1, 2, [0.0, -3.0], [1.0, 0.0])).eval()

        def mutate(m):
            m[5].negative_slope = 0.5
        return m, mutate
    if name == "python_float_attribute_changed":
        def mutate(m):
            m.gain = 3.0
        return GainAttr(-3.0).eval(), mutate
    if name == "weights_via_data_copy":
        def mutate(m):
            m[4].weight.data.copy_(torch.tensor([[0.0], [3.0]]))
        return spike_head(C_IN[:2], NARROW, -3.0), mutate
    if name == "weights_via_no_grad_copy":
        def mutate(m):
            with torch.no_grad():
                m[4].weight.copy_(torch.tensor([[0.0], [3.0]]))
        return spike_head(C_IN[:2], NARROW, -3.0), mutate
    if name == "bias_via_data_assignment":
        def mutate(m):  # a new tensor behind the same Parameter: class 1 wins everywhere but off the spike
            m[4].bias.data = torch.tensor([1.0, 0.0])
            m[4].weight.data = torch.tensor([[0.0], [3.0]])
        return spike_head(C_IN[:2], NARROW, -3.0), mutate
    if name == "buffer_edited_in_place":
        def mutate(m):
            m.gain.mul_(-1.0)
        return GainBuffer(-3.0).eval(), mutate
    raise AssertionError(name)


MUTATIONS = ["replace_relu_with_identity", "replace_identity_with_sign_flip", "leaky_relu_slope_changed",
             "python_float_attribute_changed", "weights_via_data_copy", "weights_via_no_grad_copy",
             "bias_via_data_assignment", "buffer_edited_in_place"]


@pytest.mark.parametrize("case", MUTATIONS)
def test_model_mutated_between_two_calls(case):
    lo, hi = unit_box(2)
    model, mutate = _mutation_case(case)
    assert holds_everywhere_sampled(model, lo, hi, V0, n=500)
    assert_verified(run_box(model, lo, hi, P0, V0, budget_s=CONTROL_BUDGET), f"{case}: before the mutation")
    mutate(model)
    plant(model, f32(C_IN[:2]), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0), f"{case}: after the mutation")


# --------------------------------------------------------- 4. float32 cancellation
ULP_1E4 = 2.0 ** -10  # spacing of float32 numbers in [8192, 16384)


def cancellation_model(m, C, d=1):
    """``T(x) = C - sum_i |x_i - m_i|`` (small, computed exactly enough in float32), then
    ``H = T + 1e4`` and ``y = H - 1e4``. In exact arithmetic ``y = T``; in float32, ``H`` is
    rounded to a multiple of 2**-10, so at ``x = m`` with ``C = 1.5 ulp + 1e-5`` the model
    outputs ``2 ulp`` (~4.8e-4 above the exact value)."""
    W1 = torch.zeros(2 * d, d)
    b1 = torch.zeros(2 * d)
    for i in range(d):
        W1[2 * i, i], W1[2 * i + 1, i] = 1.0, -1.0
        b1[2 * i], b1[2 * i + 1] = -m[i], m[i]
    return nn.Sequential(linear(d, 2 * d, W1, b1), nn.ReLU(), linear(2 * d, 1, -torch.ones(2 * d), [C]),
                         linear(1, 1, [1.0], [1e4]), linear(1, 1, [1.0], [-1e4])).eval()


@pytest.mark.parametrize("engine,sign,gap,d", [
    ("auto", +1, 2e-4, 1), ("auto", +1, 1.2e-4, 1), ("auto", +1, 3e-4, 1), ("auto", -1, 2e-4, 1),
    ("linear", +1, 2e-4, 1), ("bab", +1, 2e-4, 1), ("exact", -1, 3e-4, 1),
    ("auto", +1, 2e-4, 2), ("auto", -1, 3e-4, 2),
])
def test_float32_cancellation_around_large_biases(engine, sign, gap, d):
    m = [0.3, 0.7][:d]
    C = 1.5 * ULP_1E4 + 1e-5
    exact_extreme = float(f32(C))  # max of T (sign +1) / -min (sign -1), attained at x = m
    if sign > 0:
        model = cancellation_model(m, C, d)
        spec, violates = OutputRange(upper=exact_extreme + gap), viol_range(upper=exact_extreme + gap)
    else:  # mirrored: T = -C + sum |x - m|, spec on the lower side
        model = cancellation_model(m, C, d)
        with torch.no_grad():
            model[2].weight.neg_()
            model[2].bias.neg_()
        spec, violates = OutputRange(lower=-exact_extreme - gap), viol_range(lower=-exact_extreme - gap)
    lo, hi = unit_box(d)
    x = f32(m)
    # exact arithmetic on the stored parameters: at x = m both ReLUs are 0, so y(m) = T(m) =
    # the bias of model[2] = +-fl(C): inside the spec by `gap`, and every other point is even
    # further inside (T has its extreme at m)
    exact = float(model[2].bias.detach())
    assert exact == sign * exact_extreme
    y = float(forward(model, x))
    assert abs(y - exact) > gap, f"float32 output {y} is not off the exact value {exact}"
    plant(model, x, lo, hi, violates)
    assert_not_verified(run_box(model, lo, hi, spec, violates, engine=engine),
                        f"cancellation ({engine}, sign {sign}, gap {gap}, d={d})")


# --------------------------------------------------------------- 5. mixed-scale boxes
def corner_model(lower, big, tiny, kind):
    """``h = relu(x - lower)`` (0 at the lower corner exactly, > 0 elsewhere in the box);
    kind "tie": logits ``[100 h_big + 1e3 h_tiny, 0]`` tie only at ``lower`` (Prediction(0));
    kind "range": ``y = 100 h_big + 1e3 h_tiny - 1e-7`` is < 0 only next to ``lower``
    (OutputRange(lower=0))."""
    W2 = torch.zeros(2)
    W2[big], W2[tiny] = 100.0, 1e3
    first = linear(2, 2, torch.eye(2), -lower)
    if kind == "tie":
        head = linear(2, 2, torch.stack([W2, torch.zeros(2)]), [0.0, 0.0])
    else:
        head = linear(2, 1, W2, [-1e-7])
    return nn.Sequential(first, nn.ReLU(), head).eval()


# 1e4: the nominal case. 3333.3 and 1234.5: upper values for which the float32 centre and
# half-width of the box, (lower + upper) / 2 and (upper - lower) / 2, give a box whose lower
# edge rounds *above* the user's lower = 0.05 (by ~4.9e-5): a proof must still cover `lower`.
MIXED = [(big, hi, "tie") for big in (0, 1) for hi in (1e4, 3333.3, 1234.5)] + \
    [(0, hi, "range") for hi in (1e4, 3333.3, 1234.5)]


@pytest.mark.parametrize("big,big_hi,kind", MIXED)
def test_mixed_scale_box_violation_exactly_at_lower_corner(big, big_hi, kind):
    tiny = 1 - big
    lower, upper = torch.zeros(2), torch.zeros(2)
    lower[big], upper[big] = 0.05, big_hi
    lower[tiny], upper[tiny] = 1e-7, 3e-7
    model = corner_model(lower, big, tiny, kind)
    if kind == "tie":
        spec, violates = P0, V0
    else:
        spec, violates = OutputRange(lower=0.0), viol_range(lower=0.0)
    plant(model, lower.clone(), lower, upper, violates)
    # and only there: a step of 1e-3 inwards along the big coordinate is fine
    inside = lower.clone()
    inside[big] += 1e-3
    assert not violates(forward(model, inside))
    assert_not_verified(run_box(model, lower, upper, spec, violates, budget_s=BAB_BUDGET),
                        f"mixed scale {big_hi} ({kind})")


# ------------------------------------------------------------------ 6. narrow spikes
@pytest.mark.parametrize("d,width", [(2, 1e-4), (2, 1e-6), (3, 1e-5), (3, 1e-6), (4, 1e-4), (4, 1e-5)])
def test_narrow_spike_flips_the_argmax(d, width):
    # a box that is not the unit cube, spike off-centre and off the corners
    lo = torch.tensor([-0.5, 0.0, 0.1, -1.0][:d])
    hi = torch.tensor([0.5, 1.0, 0.4, 2.0][:d])
    frac = torch.tensor([0.3712, 0.6143, 0.2291, 0.8237][:d])
    c = lo + frac * (hi - lo)
    model = spike_head(c.tolist(), width, 3.0)
    plant(model, c, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, budget_s=SPIKE_BUDGET), f"spike d={d} width={width}")


@pytest.mark.parametrize("engine", ["ibp", "linear", "bab"])
def test_narrow_spike_every_bound_engine(engine):
    lo, hi = unit_box(3)
    model = spike_head(C_IN[:3], 1e-5, 3.0)
    plant(model, f32(C_IN[:3]), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine, budget_s=SPIKE_BUDGET), engine)


def test_narrow_spike_prediction_not_in():
    lo, hi = unit_box(2)
    model = spike_head(C_IN[:2], 1e-6, 3.0)
    violates = viol_not_in([1], 2)
    plant(model, f32(C_IN[:2]), lo, hi, violates)
    assert_not_verified(run_box(model, lo, hi, PredictionNotIn([1]), violates, budget_s=SPIKE_BUDGET))


# ------------------------------------------------------------ 7. margins 0 and +-1e-6
def margin_model(m, beta):
    """Logits ``[sum_i |x_i - m_i| + beta, 0]``: at ``x = m`` the margin of class 0 is
    exactly ``beta`` (all terms exact in float32 there: the ReLUs are 0)."""
    d = len(m)
    W1 = torch.zeros(2 * d, d)
    b1 = torch.zeros(2 * d)
    for i in range(d):
        W1[2 * i, i], W1[2 * i + 1, i] = 1.0, -1.0
        b1[2 * i], b1[2 * i + 1] = -m[i], m[i]
    return nn.Sequential(linear(d, 2 * d, W1, b1), nn.ReLU(),
                         linear(2 * d, 2, torch.stack([torch.ones(2 * d), torch.zeros(2 * d)]), [beta, 0.0])).eval()


MARGIN_CONFIGS = [(1, "auto"), (1, "exact"), (1, "linear"), (2, "auto"), (2, "bab")]


@pytest.mark.parametrize("d,engine", MARGIN_CONFIGS)
@pytest.mark.parametrize("beta", [0.0, -1e-6], ids=["tie", "violated_by_1e-6"])
def test_margin_zero_or_violated_by_1e_6(beta, d, engine):
    m = [0.3712, 0.6143][:d]
    lo, hi = unit_box(d)
    model = margin_model(m, beta)
    x = f32(m)
    y = forward(model, x)
    assert float(y[0] - y[1]) == pytest.approx(beta, abs=1e-9)
    plant(model, x, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine), f"beta={beta}, d={d}, {engine}")


def test_tie_at_a_point_prediction_not_in():
    lo, hi = unit_box(2)
    model = margin_model([0.3712, 0.6143], 0.0)
    violates = viol_not_in([1], 2)
    plant(model, f32([0.3712, 0.6143]), lo, hi, violates)
    assert_not_verified(run_box(model, lo, hi, PredictionNotIn([1]), violates))


@pytest.mark.parametrize("d,engine", [(1, "auto"), (1, "exact"), (2, "auto")])
def test_margin_holding_by_1e_6_gives_an_honest_answer(d, engine):
    """Holds everywhere (in float32 too: a sum of non-negative terms and 1e-6). Any verdict
    is acceptable; a counterexample would be checked by run_box and cannot exist."""
    m = [0.3712, 0.6143][:d]
    lo, hi = unit_box(d)
    model = margin_model(m, 1e-6)
    assert float(forward(model, f32(m))[0]) > 0
    res = run_box(model, lo, hi, P0, V0, engine=engine)
    assert res.status[0] in ALLOWED


# ---------------------------------------------- 8. former crashes -> honest verdicts
def maxpool2d_model():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # channel 0: x, channel 1: -x
        conv.weight[1, 0, 1, 1] = -1.0
        conv.bias.zero_()
    head = nn.Linear(8, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1, 0] = 1.0  # logit 1: the pooled max of channel 0 over the top-left 2x2 block
        head.bias.copy_(torch.tensor([0.5, 0.0]))
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), head).eval()


def maxpool1d_model():
    conv = nn.Conv1d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    head = linear(3, 2, [[0, 0, 0], [1, 0, 0]], [0.5, 0.0])
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), head).eval()


@pytest.mark.parametrize("engine", ["linear", "auto"])
@pytest.mark.parametrize("planted", [True, False])
@pytest.mark.parametrize("pool", ["MaxPool2d", "MaxPool1d"])
def test_maxpool_model_gives_a_verdict(pool, planted, engine):
    if pool == "MaxPool2d":
        model, shape, hot, cold = maxpool2d_model(), (1, 4, 4), (0, 0, 0), (0, 1, 1)
    else:
        model, shape, hot, cold = maxpool1d_model(), (1, 6), (0, 0), (0, 1)
    lo, hi = torch.zeros(shape), torch.zeros(shape)
    hi[hot] = 1.0 if planted else 0.3
    hi[cold] = 0.2
    if planted:
        x = torch.zeros(shape)
        x[hot] = 0.8  # logit 1 = 0.8 > 0.5
        plant(model, x, lo, hi, V0)
        assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine), f"{pool} ({engine})")
    else:
        assert holds_everywhere_sampled(model, lo, hi, V0, n=300)
        run_box(model, lo, hi, P0, V0, engine=engine)  # any honest status, no exception


class ParamAdd(nn.Module):
    """``x + self.bias`` with an ``nn.Parameter`` used directly in forward."""

    def __init__(self, spike):
        super().__init__()
        self.spike = spike
        if spike:
            self.L1, self.L2 = spike_linears(C_IN[:2], NARROW)
            self.head = linear(1, 2, [0.0, 3.0], [0.0, 0.0])
            self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))
        else:
            self.lin = linear(2, 2, [[1, 0], [0, 0]], [0.0, 0.0])
            self.bias = nn.Parameter(torch.tensor([0.0, 0.5]))

    def forward(self, x):
        if self.spike:
            return self.head(torch.relu(self.L2(torch.relu(self.L1(x))))) + self.bias
        return self.lin(x) + self.bias  # [x0, 0.5]


@pytest.mark.parametrize("engine", ["exact", "auto"])
@pytest.mark.parametrize("case", ["broad_violation", "spike_violation", "fine"])
def test_parameter_used_directly_in_forward(case, engine):
    c = f32(C_IN[:2])
    lo, hi = c.clone(), c.clone()
    lo[0], hi[0] = 0.0, 1.0  # a segment along x0 (the exact engine needs k = 1)
    if case == "broad_violation":
        model = ParamAdd(spike=False).eval()
        x = c.clone()
        x[0] = 0.3  # y0 = 0.3 < 0.5
    elif case == "spike_violation":
        model, x = ParamAdd(spike=True).eval(), c
    else:
        model = ParamAdd(spike=False).eval()
        lo[0] = 0.6  # y0 >= 0.6 > 0.5
        assert holds_everywhere_sampled(model, lo, hi, V0, n=300)
        run_box(model, lo, hi, P0, V0, engine=engine)
        return
    plant(model, x, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine), f"{case} ({engine})")


def float64_model():
    """``y = [x0, x1 + relu(x0 + x1 - 1)]`` in float64."""
    return nn.Sequential(linear(2, 3, [[1, 0], [0, 1], [1, 1]], [0.0, 0.0, -1.0]), nn.ReLU(),
                         linear(3, 2, [[1, 0, 0], [0, 1, 1]], [0.0, 0.0])).double().eval()


@pytest.mark.parametrize("planted", [True, False])
def test_float64_model_verify_box(planted):
    model = float64_model()
    lo = torch.tensor([0.6, 0.0], dtype=torch.float64)
    hi = torch.tensor([0.9, 0.7 if planted else 0.3], dtype=torch.float64)
    if planted:
        plant(model, torch.tensor([0.61, 0.69], dtype=torch.float64), lo, hi, V0)
        assert_not_verified(run_box(model, lo, hi, P0, V0), "float64 model")
    else:
        assert holds_everywhere_sampled(model, lo, hi, V0, n=300)
        run_box(model, lo, hi, P0, V0)


@pytest.mark.parametrize("engine", ["auto", "exact"])
def test_float64_model_audit(engine):
    model = float64_model()
    z = torch.tensor([[0.8, 0.1], [0.8, 0.4]], dtype=torch.float64)
    eps = 0.25
    # seed 1 moved along axis 1 by +0.2: y = [0.8, 0.6 + relu(0.4)] = [0.8, 1.0] -> class 1
    x = z[1] + torch.tensor([0.0, 0.2], dtype=torch.float64)
    plant(model, x, z[1] - torch.tensor([0, eps], dtype=torch.float64),
          z[1] + torch.tensor([0, eps], dtype=torch.float64), V0)
    res = audit(model, z, torch.zeros(2, dtype=torch.long), direction=Direction.axis(1), eps=eps,
                spec=Accuracy(at_least=1.0), engine=engine, device="cpu", budget_s=BUDGET)
    assert set(res.status) <= ALLOWED
    assert res.status[1] != "verified", (res.status, res.notes)
    assert res.verdict != "proved"


@pytest.mark.parametrize("case", ["broad_violation", "spike_violation", "fine"])
def test_plain_callable_model(case):
    lo, hi = unit_box(2)
    if case == "spike_violation":
        head = spike_head(C_IN[:2], NARROW, 3.0)
        x = f32(C_IN[:2])
    else:
        head = nn.Sequential(linear(2, 2, [[1, 0], [0, 0]], [0.0, 0.5])).eval()  # [x0, 0.5]
        x = f32([0.2, 0.5])
        if case == "fine":
            lo = f32([0.6, 0.0])
    model = lambda x: head(x)  # noqa: E731
    if case == "fine":
        assert holds_everywhere_sampled(model, lo, hi, V0, n=300)
        run_box(model, lo, hi, P0, V0)
        return
    plant(model, x, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0), f"callable, {case}")


class Sliced(nn.Module):
    """Features ``F = [1, 3s, 5, 0]``; the model returns ``[F0, F1]`` (a narrow violation of
    Prediction(0) on the spike) through slicing ops. Reading the wrong half (``[5, 0]``)
    would be fine everywhere."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.L1, self.L2 = spike_linears(C_IN[:2], NARROW)
        self.feat = linear(1, 4, [0.0, 3.0, 0.0, 0.0], [1.0, 0.0, 5.0, 0.0])

    def forward(self, x):
        F = self.feat(torch.relu(self.L2(torch.relu(self.L1(x)))))
        k = self.kind
        if k == "getitem_slices":
            return torch.cat([F[:, :1], F[:, 1:2]], dim=1)
        if k == "cat_of_two_heads":
            return torch.cat([F[:, 0:1], F[:, 1:2] * 1.0], 1)
        if k == "chunk":
            return F.chunk(2, dim=1)[0]
        if k == "split":
            return torch.split(F, 2, dim=1)[0]
        if k == "split_sizes":
            a, b, _ = F.split([1, 1, 2], dim=1)
            return torch.cat([a, b], dim=1)
        if k == "select":
            return torch.stack([F.select(1, 0), F.select(1, 1)], dim=1)
        if k == "narrow":
            return F.narrow(1, 0, 2)
        raise AssertionError(k)


@pytest.mark.parametrize("kind", ["getitem_slices", "cat_of_two_heads", "chunk", "split", "split_sizes", "select",
                                  "narrow"])
def test_slicing_models_give_an_honest_verdict(kind):
    lo, hi = unit_box(2)
    model = Sliced(kind).eval()
    plant(model, f32(C_IN[:2]), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, budget_s=1.0), kind)


def test_slicing_model_on_fine_box_gives_a_verdict():
    lo, hi = unit_box(2)
    model = Sliced("getitem_slices").eval()
    with torch.no_grad():
        model.feat.weight.neg_()  # F1 = -3 s: fine everywhere
    assert holds_everywhere_sampled(model, lo, hi, V0, n=300)
    run_box(model, lo, hi, P0, V0, budget_s=1.0)


# ---------------------------------------------------- 9. direction boxes through audit
V_DIR = torch.tensor([0.5, -0.5, 0.5, 0.5])  # a unit vector, not an axis (exact in float32)
V_SUB = torch.tensor([[0.5, 0.5], [0.5, -0.5], [0.5, 0.5], [0.5, -0.5]])  # orthonormal columns


def _audit_spike(V, t_star, width, eps, engine, spec):
    z0 = torch.tensor([0.1, 0.2, -0.3, 0.4])
    Vm = V.reshape(4, -1)
    c = z0 + Vm @ t_star  # the spike centre: on the planted seed's box
    model = spike_head(c.tolist(), width, 3.0)
    assert bool((t_star.abs() <= eps).all())
    x = z0 + Vm @ t_star
    assert V0(forward(model, x)), "planted point does not violate"
    assert not V0(forward(model, z0)), "the seed itself must be fine (its nominal class is 0)"
    # two far seeds (every coordinate far below the spike) that are fine: controls
    z = torch.stack([z0, z0 - 3.0, z0 - 3.5])
    direction = Direction.subspace(V) if V.dim() == 2 else Direction.vector(V)
    res = audit(model, z, torch.zeros(3, dtype=torch.long), direction=direction, eps=eps, spec=spec, engine=engine,
                device="cpu", budget_s=SPIKE_BUDGET)
    assert set(res.status) <= ALLOWED
    for cex in res.counterexamples:  # honest counterexamples: on the seed's box and violating
        assert cex.z is not None
        off = cex.z.reshape(-1) - z[cex.seed_index]
        t = Vm.T @ off  # V has orthonormal columns
        assert bool((t.abs() <= eps * (1 + 1e-5) + 1e-6).all()), "counterexample outside the box"
        assert torch.allclose(Vm @ t, off, atol=1e-5), "counterexample off the direction"
        assert V0(forward(model, cex.z.reshape(-1))), "counterexample does not violate"
    assert res.status[0] != "verified", f"planted seed verified: {res.status} {res.notes}"
    assert res.verdict != "proved"
    if engine != "exact":
        # the far seeds only see inactive first-layer ReLUs: interval bounds prove them at once
        # (the exact engine has its own easy control below: weights of 1/width are not easy)
        assert res.status[1:] == ["verified", "verified"], f"control seeds: {res.status} {res.notes}"
    return res


@pytest.mark.parametrize("width", [1e-4, 1e-6])
@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_audit_spike_along_a_vector_direction(engine, width):
    _audit_spike(V_DIR, torch.tensor([0.3137]), width, 0.5, engine, Accuracy(at_least=1.0))


def test_audit_spike_along_a_vector_direction_invariance():
    _audit_spike(V_DIR, torch.tensor([-0.2719]), 1e-5, 0.5, "auto", Invariance())


@pytest.mark.parametrize("engine", ["auto", "bab"])
def test_audit_spike_in_a_2d_subspace(engine):
    _audit_spike(V_SUB, torch.tensor([0.1561, -0.2749]), 1e-4, 0.5, engine, Accuracy(at_least=1.0))


# ------------------------------------------------- 10. values read into Python in forward
class PythonBranch(nn.Module):
    """``y = x`` except on a narrow spike of ``x_0``, where a Python-side test of the input's
    values (``numpy``, ``tolist``, ``np.asarray``) flips the first logit. make_fx's real-mode
    trace does not see the read, so it bakes in the branch taken at the trace example."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.lin = linear(2, 2, [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])

    def _values(self, x):
        import numpy as np

        if self.how == "numpy":
            return x.detach().cpu().numpy()[:, 0].tolist()
        if self.how == "tolist":
            return [r[0] for r in x.tolist()]
        return [float(r[0]) for r in np.asarray(x.detach())]

    def forward(self, x):
        y = self.lin(x)
        if any(0.7 < v < 0.7001 for v in self._values(x)):
            y = y * torch.tensor([-1.0, 1.0])
        return y


@pytest.mark.parametrize("how", ["numpy", "tolist", "asarray"])
@pytest.mark.parametrize("engine", ["ibp", "linear", "auto"])
def test_python_branch_on_the_input_values_is_refused(how, engine):
    model = PythonBranch(how).eval()
    lower, upper = torch.tensor([0.0, -0.5]), torch.tensor([1.0, -0.5])
    plant(model, torch.tensor([0.70005, -0.5]), lower, upper, V0)
    assert_not_verified(run_box(model, lower, upper, P0, V0, engine=engine), f"python branch ({how})")


def test_python_read_of_a_parameter_is_still_provable():
    class ParamRead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = linear(2, 2, [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])

        def forward(self, x):
            scale = float(self.lin.weight.detach().numpy()[0, 0])  # a constant: fine to read
            return self.lin(x) * scale

    res = run_box(ParamRead().eval(), torch.tensor([0.0, -0.5]), torch.tensor([1.0, -0.5]), P0, V0,
                  budget_s=CONTROL_BUDGET)
    assert_verified(res, "reading a parameter's value into Python")


# ------------------------------------------------------------- 11. the auto_LiRPA engine
def _need_auto_lirpa():
    from pytest_latentaudit.engines.lirpa_compat import import_auto_lirpa

    try:
        import_auto_lirpa()
    except ImportError as exc:
        pytest.skip(f"auto_LiRPA unavailable: {exc}")


@pytest.mark.parametrize("engine", ["auto_lirpa:crown", "auto_lirpa:ibp"])
def test_auto_lirpa_python_branch_is_refused(engine):
    _need_auto_lirpa()
    model = PythonBranch("tolist").eval()
    lower, upper = torch.tensor([0.0, -0.5]), torch.tensor([1.0, -0.5])
    plant(model, torch.tensor([0.70005, -0.5]), lower, upper, V0)
    assert_not_verified(run_box(model, lower, upper, P0, V0, engine=engine), "auto_LiRPA, python branch")


class SpikeGainAttr(nn.Module):
    """``[1, g * s(x)]`` with the spike's gain ``g`` a plain Python attribute read in forward."""

    def __init__(self, g):
        super().__init__()
        self.L1, self.L2 = spike_linears(C_IN[:2], 1e-4)
        self.g = g

    def forward(self, x):
        s = torch.relu(self.L2(torch.relu(self.L1(x))))
        return torch.cat([s * 0 + 1, self.g * s], 1)


def test_auto_lirpa_python_attribute_changed_between_two_calls():
    _need_auto_lirpa()
    model = SpikeGainAttr(-3.0).eval()
    lo, hi = unit_box(2)
    # the first call is a control: a control's budget (building the BoundedModule and the
    # parse checks count against it, about a second on a loaded CI machine)
    first = run_box(model, lo, hi, P0, V0, engine="auto_lirpa:crown", budget_s=CONTROL_BUDGET)
    assert first.status == ["verified"], first.notes
    model.g = 3.0  # now class 1 wins on the spike; the BoundedModule of the first call is stale
    plant(model, f32(C_IN[:2]), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine="auto_lirpa:crown"), "auto_LiRPA, stale attribute")


def test_auto_lirpa_engine_on_a_plain_callable_gives_a_verdict():
    def f(x):
        return torch.cat([x[:, :1] * 0 + 1, x[:, 1:]], 1)

    res = run_box(f, torch.zeros(2), torch.full((2,), 0.5), P0, V0, engine="auto_lirpa:crown")
    assert res.status == ["unknown"], res.status


# ------------------------------------------------ 12. random and batch-dependent forwards
class RandomFlip(nn.Module):
    """``y = x``, but one call in ``1 / p`` (a draw of ``torch.rand`` inside forward) flips
    the sign of the first logit: the model as it runs violates Prediction(0) on some calls."""

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.lin = linear(2, 2, [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])

    def forward(self, x):
        flip = (torch.rand(()) < self.p).float()
        return self.lin(x) * (1 - 2 * flip * torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("engine", ["ibp", "linear", "auto"])
def test_random_op_in_forward_is_refused(engine):
    model = RandomFlip(0.05).eval()
    lower, upper = torch.tensor([0.2, -0.5]), torch.tensor([1.0, -0.5])
    with torch.no_grad():
        ys = model(torch.tensor([[0.5, -0.5]]).expand(2000, 2))  # one draw per call: call it often
        flips = [bool(model(torch.tensor([[0.5, -0.5]]))[0, 0] < 0) for _ in range(400)]
    assert any(flips), "the planted random flip never happened"
    del ys
    torch.manual_seed(0)
    res = run_box(model, lower, upper, P0, lambda y: False, engine=engine)  # counterexamples are random too
    assert_not_verified(res, "random op in forward")


class BatchOfOne(nn.Module):
    """Flips the first logit when called on a batch of one input (the trace runs batches)."""

    def __init__(self):
        super().__init__()
        self.lin = linear(2, 2, [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])

    def forward(self, x):
        y = self.lin(x)
        return y * torch.tensor([-1.0, 1.0]) if x.shape[0] == 1 else y


@pytest.mark.parametrize("engine", ["ibp", "linear", "auto"])
def test_forward_that_depends_on_the_batch_size(engine):
    model = BatchOfOne().eval()
    lower, upper = torch.tensor([0.2, -0.5]), torch.tensor([1.0, -0.5])
    plant(model, torch.tensor([0.5, -0.5]), lower, upper, V0)  # plant() runs a batch of one
    assert_not_verified(run_box(model, lower, upper, P0, V0, engine=engine), "batch-size dependent forward")


# ------------------------------------------------------ 13. upsampling in float32
UP_L = 65536  # long inputs: the kernel's float32 source coordinate is off by ulps of ~UP_L
UP_W = 2 ** -12  # spike half-width


def _tri(t, c, w):
    return (torch.relu(t - c + w) - 2 * torch.relu(t - c) + torch.relu(t - c - w)) / w


class UpsampleSpikes(nn.Module):
    """Two narrow spikes along z_0: at spike A the output is ``K`` (exact arithmetic, a
    margin of e/2 below the spec's bound U); at spike B it is one element of a linear x3
    upsampling of ``+-1000`` (exact value ``U - 2e/3``) whose float32 value is off by ``e``
    (~2.6) through the rounded interpolation weights, so it exceeds U there."""

    def __init__(self, j, K):
        super().__init__()
        pat = torch.ones(UP_L)
        pat[1::2] = -1.0
        self.lin = nn.Linear(1, UP_L, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(1000.0 * pat[:, None])
        self.j, self.K = j, K

    def forward(self, z):
        t = z[:, :1]
        s_a, s_b = _tri(t, 0.0037, UP_W), _tri(t, -0.0061, UP_W)
        up = torch.nn.functional.interpolate(self.lin(s_b).reshape(-1, 1, UP_L), scale_factor=3, mode="linear")
        return up[:, 0, self.j:self.j + 1] + s_a * self.K


@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_linear_upsampling_float32_weights_along_a_segment(engine):
    F_ = torch.nn.functional
    pat = torch.ones(UP_L)
    pat[1::2] = -1.0
    x = (1000.0 * pat).reshape(1, 1, UP_L)
    y32 = F_.interpolate(x, scale_factor=3, mode="linear")
    y64 = F_.interpolate(x.double(), scale_factor=3, mode="linear")
    err = y32.double() - y64
    j = int((err * (y64 > 100)).argmax())
    exact, e = float(y64[0, 0, j]), float(err[0, 0, j])
    assert e > 1.0, f"float32 interpolation error only {e}"
    U = exact + e / 3
    model = UpsampleSpikes(j, exact + e / 6).eval()
    spec = OutputRange(upper=U)
    z_bad = torch.tensor([-0.0061, 0.0])
    assert float(forward(model, z_bad)) > U, "planted point does not violate"
    res = audit(model, torch.zeros(1, 2), None, Direction.axis(0), 0.01, spec, engine=engine, device="cpu",
                budget_s=BAB_BUDGET)
    assert "verified" not in res.status, f"false proof through float32 upsampling: {res.status} {res.rung}"


@pytest.mark.parametrize("size_in,size_out,mode", [(3157, 12419, "nearest"), (2123, 8377, "nearest-exact")])
def test_nearest_upsampling_selects_what_the_float32_kernel_selects(size_in, size_out, mode):
    from pytest_latentaudit.engines.bounds import check_graph
    from pytest_latentaudit.engines.graph import get_graph

    class Up(nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x.reshape(-1, 1, size_in), size=size_out, mode=mode).flatten(1)

    model = Up()
    x = torch.arange(size_in, dtype=torch.float32)[None].expand(2, -1).contiguous()
    g = get_graph(model, (size_in,), dtype=torch.float64, example=x)  # as the exact segment walk binds it
    assert check_graph(g, lambda t: model(t), x) is None, "the lowered graph selects other source elements"


# ------------------------------------------------------------- 14. float32 underflow
class UnderflowSpikes(nn.Module):
    """Spike A: output 0.71 (no underflow). Spike B: ``((0.7 s) 2**-146) 2**73 2**73``: the
    middle product is subnormal in float32 (8 representable steps), so the model outputs
    0.75 where the exact value is 0.7; OutputRange(upper=0.72) fails on B's peak only."""

    def forward(self, z):
        t = z[:, :1]
        s_a, s_b = _tri(t, 0.0037, UP_W), _tri(t, -0.0061, UP_W)
        return ((s_b * 0.7) * 2.0 ** -146) * 2.0 ** 73 * 2.0 ** 73 + s_a * 0.71


@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_subnormal_product_along_a_segment(engine):
    model = UnderflowSpikes().eval()
    spec = OutputRange(upper=0.72)
    assert float(forward(model, torch.tensor([-0.0061, 0.0]))) > 0.72, "planted point does not violate"
    res = audit(model, torch.zeros(1, 2), None, Direction.axis(0), 0.01, spec, engine=engine, device="cpu",
                budget_s=BAB_BUDGET)
    assert "verified" not in res.status, f"false proof through a subnormal product: {res.status} {res.rung}"


# ------------------------------------------------------ 15. batch norm's own rounding
@pytest.mark.parametrize("seed", range(4))
def test_batch_norm_whose_shift_cancels_is_bounded_as_it_runs(seed):
    """mean ~1e4 and bias = mean * scale: the exact shift is ~0, but the kernel rounds
    terms of 1e4 (``b - mean * alpha``), so its output is off by ~1e-3 at every point: the
    lowered graph must still contain the model's output at points (else every box is
    refused, and with a kernel that computes ``(x - mean) * invstd`` the error vanishes at
    ``x = 0`` and a proof can be false)."""
    import random

    from pytest_latentaudit.engines.bounds import check_graph
    from pytest_latentaudit.engines.graph import get_graph

    rng = random.Random(seed)
    bn = nn.BatchNorm1d(1, eps=1e-5).eval()
    with torch.no_grad():
        bn.running_mean.fill_(1e4 * rng.uniform(0.5, 2))
        bn.running_var.fill_(rng.uniform(0.1, 10))
        bn.weight.fill_(rng.uniform(0.5, 2))
        s = float(bn.weight.double() / torch.sqrt(bn.running_var.double() + 1e-5))
        bn.bias.fill_(float(bn.running_mean.double()) * s)
    model = nn.Sequential(nn.Flatten(), bn).eval()
    x = torch.linspace(0, 1, 64)[:, None]
    g = get_graph(model, (1,), example=x[:2])
    assert check_graph(g, lambda t: model(t), x) is None


def test_model_returning_a_dict_gets_a_usage_error_not_an_attribute_error():
    from pytest_latentaudit.core.errors import LatentAuditError

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return {"logits": self.lin(x)}

    with pytest.raises(LatentAuditError, match="returned a dict"):
        verify_box(DictOut(), torch.zeros(1, 2), torch.ones(1, 2), P0, device="cpu", budget_s=BUDGET)
    with pytest.raises(LatentAuditError, match="returned a dict"):
        audit(DictOut(), torch.zeros(1, 2), None, Direction.axis(0), 0.1, Invariance(), device="cpu", budget_s=BUDGET)


# ------------------------------------------------------------ 16. writes through views
class ViewWrite(nn.Module):
    """``h = [0.5 - 0.6 s, 0.2 - 3 s]`` (s: the spike), then an in-place write through a
    view of ``h`` clamps ``h_1`` at 0: off the spike nothing changes (``h_1 >= 0``); on it
    ``h_1 = 0 > h_0``. Bounded as an out-of-place op on the view, the write is lost (and a
    ``h[:, 1] = ...`` assignment is a dead ``copy_`` into the view)."""

    def __init__(self, how):
        super().__init__()
        self.L1, self.L2 = spike_linears(C_IN[:2], 1e-4)
        self.head = linear(1, 2, [-0.6, -3.0], [0.5, 0.2])
        self.how = how

    def forward(self, x):
        h = self.head(torch.relu(self.L2(torch.relu(self.L1(x)))))
        if self.how == "slice":
            h[:, 1:].relu_()
        elif self.how == "select":
            h[:, 1].relu_()
        elif self.how == "flat_view":
            h.view(-1)[1::2].relu_()
        elif self.how == "clamp_":
            h[:, 1:].clamp_(min=0)
        else:
            h[:, 1] = torch.relu(h[:, 1])
        return h


@pytest.mark.parametrize("how", ["slice", "select", "flat_view", "clamp_", "setitem"])
def test_in_place_write_through_a_view(how):
    model = ViewWrite(how).eval()
    lo, hi = unit_box(2)
    plant(model, f32(C_IN[:2]), lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, budget_s=SPIKE_BUDGET), f"write through a view ({how})")


def test_in_place_relu_on_a_reshaped_tensor_is_still_provable():
    class ViewRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = linear(2, 4, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0])

        def forward(self, x):
            h = self.lin(x).view(-1, 2, 2)
            torch.nn.functional.relu(h, inplace=True)
            return h.flatten(1)

    res = run_box(ViewRelu().eval(), torch.zeros(2), torch.full((2,), 0.5), P0, V0, budget_s=CONTROL_BUDGET)
    assert_verified(res, "in-place ReLU on a view whose base is not read again")


# ------------------------------------------------ 17. the eps asked for, not a rounding of it
@pytest.mark.parametrize("engine", ["auto", "bab"])
def test_audit_box_reaches_the_eps_asked_for(engine):
    """``eps = 0.7`` rounds *down* in float32 (to 0.69999998807907). Seed ``z0 = fl32(-0.7)``:
    the box's upper end ``z0 + 0.7 = 1.19e-8`` is a float32 number where ``y1 = 1e9 x > 5``
    (a violation), while every point of the rounded box has ``x <= 0`` (fine). A box built
    from the float32 eps is a proof about a smaller box than the one asked for."""
    model = nn.Sequential(linear(1, 1, [1.0], [0.0]), nn.ReLU(), linear(1, 2, [0.0, 1e9], [5.0, 0.0])).eval()
    eps = 0.7
    z0 = f32([-0.7])
    assert float(f32(eps)) < eps
    x = torch.tensor([float(z0) + eps], dtype=torch.float64).float()  # on the box, exactly
    assert float(x) > 0 and float(x) - float(z0) == pytest.approx(eps, abs=1e-12)
    assert V0(forward(model, x)), "planted point does not violate"
    assert not V0(forward(model, z0 + f32(eps)))  # the rounded box's end is fine
    res = audit(model, z0[None], torch.zeros(1, dtype=torch.long), Direction.axis(0), eps, Accuracy(at_least=1.0),
                engine=engine, device="cpu", budget_s=BAB_BUDGET)
    assert res.status != ["verified"], f"proof of a box shrunk to the float32 eps: {res.status} {res.rung}"
    for cex in res.counterexamples:
        assert V0(forward(model, cex.z.reshape(-1)))
        assert abs(float(cex.z.reshape(-1)[0].double() - z0.double())) <= eps * (1 + 1e-12)


# ------------------------------------------------ 18. overflow in a low-precision model
class OverflowTent(nn.Module):
    """``t`` a tent of half-width 0.05 at 0.3 (one ReLU layer: interval bounds are tight),
    ``y1 = ((t A) B) C`` with ``A B = max / 0.99`` of the dtype and ``A B C = 30``: in exact
    arithmetic ``y1 <= 30 < 40 = y0``; in the model's dtype ``(t A) B`` overflows to inf on the
    tent's top (``t > 0.99``) and ``y1 = inf``. Bounds computed in float32 for a float16 model
    (or a bfloat16 one, whose largest number is below float32's) never see the overflow."""

    def __init__(self, dtype):
        super().__init__()
        c, w = 0.3, 0.05
        top = float(torch.finfo(dtype).max)
        self.A = 64.0
        self.B = float(torch.tensor(top / 0.99 / self.A, dtype=dtype))
        self.C = float(torch.tensor(30.0 / (self.A * self.B), dtype=dtype))
        self.a = linear(1, 2, [1.0, -1.0], [-c, c])
        self.b = linear(2, 1, [-1.0 / w, -1.0 / w], [1.0])
        self.k = linear(1, 1, [0.0], [40.0])

    def forward(self, x):
        t = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.cat([self.k(x), ((t * self.A) * self.B) * self.C], 1)


@pytest.mark.parametrize("dtype,engine", [(torch.float16, "ibp"), (torch.float16, "auto"), (torch.bfloat16, "auto")])
def test_overflow_to_inf_in_a_low_precision_model(dtype, engine):
    model = OverflowTent(dtype).to(dtype).eval()
    lo, hi = torch.zeros(1, dtype=dtype), torch.ones(1, dtype=dtype)
    x = torch.tensor([0.3], dtype=dtype)
    assert torch.isinf(forward(model, x)[1]), "the planted point does not overflow"
    plant(model, x, lo, hi, V0)
    assert_not_verified(run_box(model, lo, hi, P0, V0, engine=engine, budget_s=BAB_BUDGET), f"overflow ({dtype})")


# ------------------------------------- 19. auto_LiRPA bounds the exact function, not the model
@pytest.mark.parametrize("sign,gap,d", [(-1, 2e-4, 1), (+1, 3e-4, 2)])
def test_auto_lirpa_bound_covers_the_models_float32_rounding(sign, gap, d):
    """Section 4's cancellation model through auto_LiRPA's alpha-CROWN (which computes in
    float64): its bound is of the exact function, ~4.8e-4 below what the float32 model
    outputs at ``x = m``. The native bound on the model's rounding must be added to it."""
    _need_auto_lirpa()
    test_float32_cancellation_around_large_biases("auto_lirpa:alpha-crown", sign, gap, d)


# ------------------------------------------ 20. underflow of a smooth activation in float16
def test_a_float16_sigmoid_that_underflows_is_inside_the_bounds():
    """float16's sigmoid at -17 is its smallest subnormal (6e-8) where the exact value is 4e-8;
    times 60000 that is off by 1.4e-3, which an activation error of a few float16 ulps of
    the output (plus float32's smallest normal) misses: the trace check then finds the graph's
    bounds disagreeing with the model. The model dtype's own smallest normal covers it."""
    from pytest_latentaudit.engines.bounds import check_graph
    from pytest_latentaudit.engines.graph import get_graph

    model = nn.Sequential(nn.Sigmoid(), nn.Linear(1, 1)).half().eval()
    with torch.no_grad():
        model[1].weight.fill_(60000.0)
        model[1].bias.zero_()
    x = torch.linspace(-17.1, -17.0, 5, dtype=torch.float16)[:, None]
    with torch.no_grad():
        assert float(model(x).float().min()) > 3.5e-3 > 60000 * float(torch.sigmoid(x.float()).max())
    g = get_graph(model, (1,))
    assert check_graph(g, model, x) is None


# --------------------------------------------- 21. addmm's alpha scales the products' underflow
class _ScaledAddmm(nn.Module):
    """``addmm(b, x, W, alpha)``: the kernel forms the products of ``x`` and ``W``, then
    scales; the bound engines folded ``alpha`` into ``W``."""

    def __init__(self, W, alpha):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32).reshape(1, 1))
        self.b = nn.Parameter(torch.zeros(1))
        self.alpha = alpha

    def forward(self, x):
        return torch.addmm(self.b, x, self.W, alpha=self.alpha)


def test_addmm_alpha_does_not_hide_the_products_underflow():
    """``h(x) = 4 - 0.7 s(x)`` with a narrow spike ``s``, then ``addmm(0, h, 2**-149,
    alpha=2**60)``, then times ``2**80``: exactly ``h 2**-9 >= 3.3 * 2**-9`` on the whole
    box, but the float32 product ``3.3 * 2**-149`` is subnormal and rounds to ``3 * 2**-149``,
    so at the spike the model outputs ``3 * 2**-9``, below ``lower = 3.2 * 2**-9`` (off the
    spike ``h = 4`` and the product is exact, so the trace check sees nothing). Folding alpha
    into the weight (``2**-89``, normal) left the model's underflow, 2**60 times larger, out."""
    L1, L2 = spike_linears(C_IN[:1], NARROW)
    model = nn.Sequential(L1, nn.ReLU(), L2, nn.Hardtanh(0.0, 1.0), linear(1, 1, [-0.7], [4.0]),
                          _ScaledAddmm(2.0 ** -149, 2.0 ** 60), linear(1, 1, [2.0 ** 80], [0.0])).eval()
    lower = 3.2 * 2.0 ** -9
    spec, violates = OutputRange(lower=lower), viol_range(lower=lower)
    lo, hi = unit_box(1)
    plant(model, f32(C_IN[:1]), lo, hi, violates)
    assert holds_everywhere_sampled(model, lo, hi, violates, n=200)  # a falsifier's samples miss it
    for engine in ("linear", "ibp"):  # budgets that a first, cold call cannot run out
        assert_not_verified(run_box(model, lo, hi, spec, violates, engine=engine, budget_s=CONTROL_BUDGET),
                            f"addmm alpha=2**60 on subnormal products ({engine})")


# ------------------------------------------- 10. spec constants: the numbers written, not float32's
class _Const(nn.Module):
    """A model whose output is the constant ``value`` (in ``dtype``), whatever the input."""

    def __init__(self, value, dtype=torch.float32):
        super().__init__()
        self.lin = nn.Linear(2, len(value)).to(dtype)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.copy_(torch.as_tensor(value, dtype=dtype))

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("engine", ["auto", "linear", "ibp"])
def test_float64_output_range_is_checked_against_the_bound_written(engine):
    """A float64 model outputs ``1.00000000005`` and ``upper = 1.0000000001``: it holds. The
    spec kept ``upper`` as a float32 (``1.0``), so every point became a counterexample."""
    upper = 1.0000000001
    model = _Const([1.00000000005], torch.float64).eval()
    lo, hi = torch.zeros(2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    violates = viol_range(upper=upper)
    assert not violates(forward(model, lo))
    res = run_box(model, lo, hi, OutputRange(upper=upper), violates, engine=engine)
    assert res.status != ["falsified"], "a counterexample of the float32-rounded bound, not of the spec"
    # and past the bound written, it is a violation
    model = _Const([1.0000000002], torch.float64).eval()
    plant(model, lo, lo, hi, violates)
    assert run_box(model, lo, hi, OutputRange(upper=upper), violates, engine=engine).status == ["falsified"]


def test_linear_spec_offset_is_the_one_written():
    """``y = [5e-8, 0.70000005]`` (float32) violates ``y0 - y1 + 0.7 <= 0`` by 2.3e-9; with ``d``
    rounded to float32 (0.69999999) it held, so the violation was neither found nor refused."""
    y1 = float(torch.nextafter(torch.tensor(0.7), torch.tensor(1.0)))
    model = _Const([5e-8, y1]).eval()
    lo, hi = unit_box(2)
    C, d = [[1.0, -1.0]], [0.7]

    def violates(y):  # exact: float32 outputs are exact in float64, and so is this difference
        return float(y[0]) - float(y[1]) + 0.7 > 0

    plant(model, f32([0.5, 0.5]), lo, hi, violates)
    res = run_box(model, lo, hi, Linear(C, d), violates, engine="auto")
    assert res.status == ["falsified"], (res.status, res.notes)


# ------------------------------- 22. a low-precision model is fed its dtype's rounding of a point
@pytest.mark.parametrize("dtype,eps", [(torch.bfloat16, 0.006), (torch.float16, 0.0006)])
@pytest.mark.parametrize("engine", ["ibp", "auto"])
def test_low_precision_input_rounding_of_a_segment_point(dtype, eps, engine):
    """``audit`` feeds the model ``z0 + t`` rounded to the model's dtype: for bfloat16 at
    ``z0 = 1``, ``t = 0.006`` the model sees ``1.0078125`` (its spacing at 1 is 2^-7), above
    ``upper = 1 + 1.3 eps``. The bounds padded the box by a few float32 ulps only, so a ReLU
    (exact: no later radius to cover it) was proved below ``upper`` on the exact segment."""
    model = nn.Sequential(nn.ReLU()).eval()
    z0 = torch.tensor([1.0], dtype=dtype)
    upper = 1.0 + 1.3 * eps
    x = torch.tensor([1.0 + eps], dtype=torch.float64).to(dtype)  # what the model is fed at t = eps
    violates = lambda y: bool((y.double() > upper).any())  # noqa: E731  (a bf16 compare rounds upper)
    assert violates(forward(model, x)), "the rounded end of the segment does not violate"
    res = audit(model, z0[None], None, direction=Direction.axis(0), eps=eps, spec=OutputRange(upper=upper),
                engine=engine, device="cpu", budget_s=BUDGET)
    assert res.status != ["verified"], (f"proof that misses the {dtype} rounding of the input: "
                                        f"{res.status} {res.rung} {res.notes}")
    for cex in res.counterexamples:
        assert violates(forward(model, cex.z.reshape(-1).to(dtype)))


# ------------------------------------ 23. a float64 box for a float32 model: its float32 points
def _run_box64(model, lo, hi):
    """run_box for a float64 box and a float32 model: a counterexample is a float32 input
    inside the float64 box that violates."""
    res = verify_box(model, lo[None], hi[None], P0, device="cpu", budget_s=SPIKE_BUDGET)
    for s, x in zip(res.status, res.counterexamples):
        if s == "falsified":
            assert x.dtype == torch.float32
            x = x.reshape(lo.shape)
            assert bool((lo <= x.double()).all() and (x.double() <= hi).all()), f"counterexample {x} outside the box"
            assert V0(forward(model, x))
    return res


def test_float64_box_is_rounded_into_itself_for_a_float32_model():
    """``upper = 0.3`` (float64) rounds to nearest as ``fl32(0.3) = 0.30000001192 > 0.3``: the
    box grew by half an ulp, and a spike at that one float32 number (outside the box the user
    wrote) came back as the box's counterexample. The model is fed float32, so the box's
    inputs are the float32 numbers in ``[0, 0.3]``: its bounds are rounded inwards."""
    out = f32([0.3])
    assert float(out) > 0.3
    inside = torch.nextafter(out, f32([0.0]))  # the largest float32 number of the box
    lo, hi = torch.zeros(1, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    model = spike_head([float(out)], 2e-8, 3.0)
    assert V0(forward(model, out)) and not V0(forward(model, inside))
    res = _run_box64(model, lo, hi)
    assert res.status != ["falsified"], "a counterexample outside the float64 box"
    # a spike on the box's own last float32 number is still found
    model = spike_head([float(inside)], 2e-8, 3.0)
    plant(model, inside, lo, hi, V0)
    assert_not_verified(_run_box64(model, lo, hi), "spike at the float32 upper end")
    # a coordinate that holds no float32 number (a float64 point) is the float32 number a cast
    # of it feeds the model: fl32(0.3), where the first model's spike is
    model = spike_head([float(out)], 2e-8, 3.0)
    res = verify_box(model, hi[None], hi[None], P0, device="cpu", budget_s=BUDGET)
    assert res.status == ["falsified"] and float(res.counterexamples[0].reshape(-1)[0]) == float(out), res.status
