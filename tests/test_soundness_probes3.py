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

from test_soundness import assert_bounds_match_flat
from test_soundness_probes2 import _identity_head

from pytest_latentaudit import OutputRange, Prediction, verify_box
from pytest_latentaudit.engines.graph import lower
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
    # refused before: the no_grad trace's bmm against the other's mm
    assert_bounds_match_flat(model, center, gens)


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


# ------------------------------------------------------ the identity head's Prediction(0) box
# Prediction(0) holds on this box for the identity head; a narrow spike at SPIKE (missed by
# every check point) flips it where a forward adds the spike
LOWER, UPPER = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.2, 0.1]])
SPIKE = torch.tensor([1.13, 0.07])


def _spike(x):
    return torch.relu(1 - (x - SPIKE).abs().sum(1, keepdim=True) / 0.003) * 10 * torch.tensor([-1.0, 1.0])


def _violates(y):
    return bool((y[:, 1] >= y[:, 0]).any())


def _assert_not_verified(model, n, what, engines=("ibp", "linear", "bab", "auto")):
    for engine in engines:
        res = verify_box(model, LOWER.repeat(n, 1), UPPER.repeat(n, 1), Prediction(0), engine=engine, device="cpu",
                         budget_s=1)
        assert "verified" not in res.status, (f"{what} ({engine}): claimed a proof for a model whose plain calls "
                                              f"violate the spec; status={res.status} notes={res.notes}")


# ------------------------------------------- 1. a forward that branches on its batch size
class BatchSizeBranch(nn.Module):
    """Adds the spike at some batch sizes only. The trace ran at batch 2, the check points
    (at the check batch's size and one at a time) miss the spike: the user's batch of 3 boxes
    (or one box) takes the other path, and a proof of the batch-2 program is none of it."""

    def __init__(self, how):
        super().__init__()
        self.lin, self.how = _identity_head(), how

    def forward(self, x):
        y = self.lin(x)
        n = x.shape[0]
        if self.how == "branch":  # another op at N > 2
            return y + _spike(x) if n > 2 else y
        if self.how == "scalar":  # the same ops, another literal
            return y + _spike(x) * float(n != 2)
        if self.how == "slice":  # a per-sample slice whose length follows the batch
            return y + torch.cat([torch.zeros(n, 2), _spike(x), torch.zeros(n, 2)], 1)[:, :2 * (n - 1)].reshape(n, -1, 2).sum(1)
        raise ValueError(self.how)


@pytest.mark.parametrize("how", ["branch", "scalar", "slice"])
def test_a_forward_that_branches_on_its_batch_size_is_not_proved(how):
    model = BatchSizeBranch(how).eval()
    n = 3
    with torch.no_grad():
        assert _violates(model(SPIKE.repeat(n, 1)))  # the user's batch of 3 boxes: violated there
        assert not _violates(model(SPIKE.repeat(2, 1)))  # the traced batch: fine
    _assert_not_verified(model, n, f"batch-size branch ({how})")
    if how == "scalar":  # one box: batch 1 takes the spike too
        _assert_not_verified(model, 1, "batch-size branch at one box")


def test_control_a_model_that_uses_its_batch_size_only_for_shapes_is_proved():
    class Shapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = _identity_head()

        def forward(self, x):
            h = x.view(x.shape[0], 1, 2).expand(x.shape[0], 3, 2)
            return self.lin(h.reshape(x.shape[0] * 3, 2)).view(x.shape[0], 3, 2).mean(1)

    for n in (1, 3):
        res = verify_box(Shapes().eval(), LOWER.repeat(n, 1), UPPER.repeat(n, 1), Prediction(0), engine="linear",
                         device="cpu")
        assert res.status == ["verified"] * n, res.notes


# -------------------------------------- 2. state outside the modules: globals, closures, helpers
CALLS = 0
COUNTER = {"n": 0}


class _Helper:
    def __init__(self):
        self.n = 0


class _Tally:  # a class the forward names as a global: its class attribute counts
    n = 0


# a module of the user's (a helpers file, a notebook's module): ``_helpers.calls += 1``
_helpers = __import__("types").ModuleType("latentaudit_probe3_helpers")
_helpers.calls = 0


def _closure_counter():
    n = [0]

    def step():
        n[0] += 1
        return n[0]

    return step


class _HookCounter:
    def __init__(self, helper):
        self.helper = helper

    def pre(self, mod, inp):  # a bound method as a pre-hook: counts in a helper object
        self.helper.n += 1


class CountsOutside(nn.Module):
    """Returns ``-y`` (violated) from its ``limit``-th call on, counting where ``_python_state``
    did not look: a module-level global, a global dict, a closure cell, a helper object. The
    verifier's own calls stay below the limit, so every one of them sees the identity head;
    the user's next calls do not."""

    calls = 0  # a class attribute

    def __init__(self, where, limit):
        super().__init__()
        self.lin, self.where, self.limit = _identity_head(), where, limit
        self.step, self.helper = _closure_counter(), _Helper()
        if where in ("hook_closure", "hook_method"):
            counter = _closure_counter() if where == "hook_closure" else _Helper()

            def hook(mod, inp, out):
                n = counter() if where == "hook_closure" else counter.n
                return -out if n >= self.limit else out

            self.lin.register_forward_hook(hook)
            if where == "hook_method":
                self.lin.register_forward_pre_hook(_HookCounter(counter).pre)

    def count(self):
        global CALLS
        if self.where in ("hook_closure", "hook_method"):
            return -1  # the hook counts (and flips)
        if self.where == "class_attribute":
            type(self).calls += 1
            return type(self).calls
        if self.where == "global":
            CALLS += 1
            return CALLS
        if self.where == "global_class":
            _Tally.n += 1
            return _Tally.n
        if self.where == "module_global":
            _helpers.calls += 1
            return _helpers.calls
        if self.where == "global_dict":
            COUNTER["n"] += 1
            return COUNTER["n"]
        if self.where == "closure":
            return self.step()
        self.helper.n += 1
        return self.helper.n

    def forward(self, x):
        y = self.lin(x)
        return -y if self.count() >= self.limit else y


@pytest.mark.parametrize("where", ["global", "global_dict", "closure", "helper", "class_attribute", "hook_closure",
                                   "hook_method", "global_class", "module_global"])
def test_a_forward_that_counts_its_calls_outside_its_modules_is_not_proved(where):
    model = CountsOutside(where, 10 ** 9).eval()
    for engine in ("ibp", "linear", "bab", "auto"):
        # the verifier makes fewer than 10**4 calls here: all of them see the identity head,
        # and the user's calls from the limit on see -y
        model.limit = max(model.count(), CountsOutside.calls) + 10 ** 4
        res = verify_box(model, LOWER, UPPER, Prediction(0), engine=engine, device="cpu", budget_s=1)
        assert "verified" not in res.status, (where, engine, res.status, res.notes)
        assert any("Python state" in n for n in res.notes), res.notes
    model.limit = 0
    with torch.no_grad():
        assert _violates(model(LOWER))  # as the user's calls from the limit on


def test_control_a_forward_reading_unchanging_globals_is_proved():
    res = verify_box(ReadsGlobals().eval(), LOWER, UPPER, Prediction(0), engine="linear", device="cpu")
    assert res.status == ["verified"], res.notes


SCALE = {"factor": 1.0}
OFFSET = torch.zeros(2)


class ReadsGlobals(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = _identity_head()

    def forward(self, x):
        return self.lin(x) * SCALE["factor"] + OFFSET


# ----------------------------------------------------- 3. a forward that branches on inference mode
class InferenceModeBranch(nn.Module):
    """Adds the spike under ``torch.inference_mode()`` (how a deployment often calls a model),
    where no trace and no check point ran."""

    def __init__(self):
        super().__init__()
        self.lin = _identity_head()

    def forward(self, x):
        y = self.lin(x)
        return y + _spike(x) if torch.is_inference_mode_enabled() else y


def test_a_forward_that_branches_on_inference_mode_is_not_proved():
    model = InferenceModeBranch().eval()
    with torch.inference_mode():
        assert _violates(model(SPIKE[None]))
    with torch.no_grad():
        assert not _violates(model(SPIKE[None]))
    for n in (1, 2, 3):
        _assert_not_verified(model, n, f"inference-mode branch, {n} boxes", engines=("linear", "auto"))


class MakesConstants(nn.Module):
    """Control: tensors made in forward (``torch.tensor``, ``from_numpy``, ``zeros``) and an
    attribute tensor are the same in both modes; nothing branches: proved."""

    def __init__(self):
        super().__init__()
        self.lin, self.c = _identity_head(), torch.zeros(2)

    def forward(self, x):
        import numpy as np

        shift = torch.tensor([0.0, 0.0]) + torch.from_numpy(np.zeros(2, dtype=np.float32)) + torch.zeros(2)
        return self.lin(x) + shift + self.c


def test_control_constants_made_in_forward_are_proved():
    res = verify_box(MakesConstants().eval(), LOWER, UPPER, Prediction(0), engine="linear", device="cpu")
    assert res.status == ["verified"], res.notes
