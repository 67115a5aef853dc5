"""Models the native engines refused although a sound bound is easy (false refusals), now
bounded: for each, a planted narrow violation that must not be proved (falsified or unknown,
never verified) and an easy box that is now verified. The per-op containment tests are the
registry examples in tests/test_ops_registry.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_latentaudit import Prediction, verify_box


def _not_proved(m, lo, hi, label=0, budget_s=3):
    r = verify_box(m, lo, hi, Prediction(label), engine="auto", budget_s=budget_s)
    assert r.status != ["verified"], r.notes
    assert not any("not supported" in n for n in r.notes), r.notes  # bounded, not refused
    if r.status == ["falsified"]:
        x = r.counterexamples[0].reshape(lo.shape)
        assert bool(((x >= lo) & (x <= hi)).all())
        with torch.no_grad():
            y = m(x)
        assert int(y.argmax(1)) != label or float(y[0, label]) <= float(y[0].max())
    return r


def _proved(m, lo, hi, label=0, budget_s=5):
    r = verify_box(m, lo, hi, Prediction(label), engine="auto", budget_s=budget_s)
    assert r.status == ["verified"], r.notes
    assert not any("not supported" in n for n in r.notes), r.notes
    return r


# ------------------------------------------------ 1. maximum / minimum / clamp with constant tensors
class _Spike(nn.Module):
    """Logits ``(0.5, 1000 g(x))``: class 1 wins only where ``g(x) > 5e-4``."""

    def __init__(self, g, c):
        super().__init__()
        self.g = g
        self.register_buffer("c", torch.tensor([c]))

    def forward(self, x):
        return torch.cat([torch.full_like(x, 0.5), 1000 * self.g(self, x)], 1)


_SPIKES = {
    # x in [0, 1]; each g is > 5e-4 only on a sliver at one end of the box: (g, c, the bad end)
    "maximum_buffer": (lambda s, x: torch.maximum(x, s.c) - s.c, 0.999, 1.0),
    "maximum_literal": (lambda s, x: torch.maximum(torch.tensor([0.999]), x) - 0.999, 0.0, 1.0),
    "minimum_buffer": (lambda s, x: s.c - torch.minimum(x, s.c), 0.001, 0.0),
    "clamp_tensor": (lambda s, x: torch.clamp(x, min=s.c, max=s.c + 1) - s.c, 0.999, 1.0),
    "clamp_max_tensor": (lambda s, x: s.c - x.clamp_max(s.c), 0.001, 0.0),
}


@pytest.mark.parametrize("kind", sorted(_SPIKES))
def test_a_narrow_violation_through_a_constant_maximum_is_not_proved(kind):
    g, c, bad = _SPIKES[kind]
    m = _Spike(g, c).eval()
    with torch.no_grad():
        assert int(m(torch.tensor([[bad]])).argmax(1)) == 1  # the violation is real
    _not_proved(m, torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("kind", sorted(_SPIKES))
def test_a_constant_maximum_is_now_verified_on_an_easy_box(kind):
    g, c, _ = _SPIKES[kind]
    m = _Spike(g, c).eval()
    # away from the sliver: [0.2, 0.8] keeps every g at 0
    _proved(m, torch.full((1, 1), 0.2), torch.full((1, 1), 0.8))


# ------------------------------------------------ 2. F.logsigmoid (traced as log_sigmoid_forward)
class _Edge(nn.Module):
    """Logits ``(0.5, 1000 (f(x) - f(1)) + 0.501)`` for an increasing ``f``: class 1 wins only on
    a sliver at ``x = 1`` (a few 1e-6 wide), so any bound that misses ``f(1)`` by 1e-6 proves it."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        f1 = self.f(torch.ones(1, 1, dtype=x.dtype))
        return torch.cat([torch.full_like(x, 0.5), 1000 * (self.f(x) - f1) + 0.501], 1)


_EDGES = {
    "logsigmoid": F.logsigmoid,
    "logsigmoid_module": nn.LogSigmoid(),
    "logsigmoid_scaled": lambda x: F.logsigmoid(20 * x - 5),
    # eval rrelu (slope 0.2 below 0): the sliver at x = 1 through its negative side
    "rrelu_eval": lambda x: -nn.RReLU(0.1, 0.3).eval()(-x),
    # celu (ELU's operator, input_scale 1 / alpha): increasing, the edge on its curved side too
    "celu": lambda x: F.celu(x, 0.5),
    "celu_curved_side": lambda x: F.celu(x - 1.5, 0.3),
    "celu_module": lambda x: nn.CELU(2.0)(3 * x - 2),
    # expm1, exp2 (convex), log1p (concave, domain > -1), increasing
    "expm1": torch.expm1,
    "expm1_small": lambda x: 1e4 * torch.expm1(1e-4 * x),
    "exp2": lambda x: torch.exp2(4 * x - 2),
    "log1p": torch.log1p,
    "log1p_near_the_pole": lambda x: 1e-3 * torch.log1p(x - 1 + 1e-3),
    # softshrink (non-decreasing, kinks at +-lambda): the edge on its sloped side, and a kink inside
    "softshrink": lambda x: F.softshrink(x, 0.3),
    "softshrink_module": lambda x: nn.Softshrink(0.5)(2 * x - 1),
    # integer powers: odd (increasing through the inflection at 0), even (increasing where x < 2)
    "cube": lambda x: x ** 3,
    "cube_across_zero": lambda x: torch.pow(2 * x - 1.2, 3),
    "pow4_decreasing_side": lambda x: -((x - 2) ** 4),
    "pow7": lambda x: (x + 0.5) ** 7,
    # addcmul / lerp with constant extra operands: affine, increasing in x here
    "addcmul": lambda x: torch.addcmul(torch.tensor([0.25]), x, torch.tensor([3.0]), value=0.7),
    "addcmul_self": lambda x: torch.addcmul(x, torch.tensor([2.0]), torch.tensor([-0.1])),
    "lerp": lambda x: torch.lerp(x, torch.tensor([5.0]), 0.3),
    "lerp_end": lambda x: torch.lerp(torch.tensor([-1.0]), x, torch.tensor([0.9])),
    "lerp_extrapolating": lambda x: torch.lerp(torch.tensor([2.0]), x, 3.0),
}


@pytest.mark.parametrize("kind", sorted(_EDGES))
def test_a_violation_at_the_edge_through_an_increasing_op_is_not_proved(kind):
    m = _Edge(_EDGES[kind]).eval()
    with torch.no_grad():
        assert int(m(torch.ones(1, 1)).argmax(1)) == 1
    _not_proved(m, torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("kind", sorted(_EDGES))
def test_an_increasing_op_is_now_verified_on_an_easy_box(kind):
    m = _Edge(_EDGES[kind]).eval()
    _proved(m, torch.zeros(1, 1), torch.full((1, 1), 0.5))


def test_logsigmoid_bounds_hold_in_a_wide_network():
    """logsigmoid between two wide random layers, many boxes: verified only where sampling
    agrees (a planted contradiction would show as a verified box with a violating sample)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 32), nn.LogSigmoid(), nn.Linear(32, 32), nn.LogSigmoid(), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 3)
    with torch.no_grad():
        lab = m(x).argmax(1)
    r = verify_box(m, x - 0.05, x + 0.05, Prediction(lab), budget_s=5)
    assert not any("not supported" in n for n in r.notes), r.notes
    assert r.status.count("verified") >= 32
    s = x[None] + (torch.rand(2000, 64, 3) * 0.1 - 0.05)
    with torch.no_grad():
        ok = (m(s.reshape(-1, 3)).argmax(1).reshape(2000, 64) == lab).all(0)
    for i, st_ in enumerate(r.status):
        if st_ == "verified":
            assert bool(ok[i])


class _LogSigmoidWhenTraced(nn.Module):
    """``logsigmoid(x)`` under a tracer, ``logsigmoid(x) + relu(x - 0.999) * 1000`` in a plain call."""

    def forward(self, x):
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        y = F.logsigmoid(x)
        if _get_current_dispatch_mode() is None:
            y = y + F.relu(x - 0.999) * 1000
        return torch.cat([torch.full_like(x, 0.0), y], 1)


def test_the_logsigmoid_alias_keeps_the_plain_call_check():
    """The name alias (log_sigmoid_forward is autograd's LogSigmoid) matches only that op: a
    forward that adds ops in a plain call is still refused by the plain-call check."""
    r = verify_box(_LogSigmoidWhenTraced(), torch.zeros(1, 1), torch.ones(1, 1), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("plain call" in n for n in r.notes), r.notes


# ------------------------------------------------ 3. nn.RReLU in eval mode (deterministic)
class _RReLUNet(nn.Module):
    def __init__(self, training_flag):
        super().__init__()
        self.training_flag = training_flag

    def forward(self, x):
        # logits (0.5, 0.49 + rrelu(x - 1)): eval slope 0.2 keeps class 0 on [0, 1]; any slope
        # a training call may draw (up to 0.3) as well, so only randomness itself is at stake
        return torch.cat([torch.full_like(x, 0.5), 0.49 + F.rrelu(x - 1, 0.1, 0.3, training=self.training_flag)], 1)


def test_rrelu_in_eval_mode_is_verified():
    _proved(_RReLUNet(False), torch.zeros(1, 1), torch.ones(1, 1))


def test_rrelu_drawing_its_slopes_stays_refused():
    """``F.rrelu(training=True)`` draws a slope per element on every call: no bound of one draw
    is a bound of the model as it runs, so it is refused (never verified)."""
    r = verify_box(_RReLUNet(True), torch.zeros(1, 1), torch.ones(1, 1), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("random" in n for n in r.notes), r.notes


def test_an_rrelu_module_in_training_mode_is_audited_in_eval_mode_with_a_note():
    """As for dropout: a model that comes in training mode is verified in eval mode (how it is
    deployed), with the note saying so; its mode is restored."""
    m = nn.Sequential(nn.Linear(1, 2), nn.RReLU(0.1, 0.3), nn.Linear(2, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        m[2].bias.copy_(torch.tensor([0.1, 0.0]))
    m.train()
    r = verify_box(m, torch.zeros(1, 1), torch.ones(1, 1), Prediction(0), budget_s=3)
    assert r.status == ["verified"], r.notes
    assert any("training mode" in n for n in r.notes), r.notes
    assert m.training and m[1].training


# ------------------------------------------------ 4. torch.einsum with a constant matrix
class _EinsumHead(nn.Module):
    def __init__(self, eq="bi,ij->bj", scale=1.0, shift=0.0):
        super().__init__()
        self.eq = eq
        self.register_buffer("W", torch.tensor([[scale, -scale]]))
        self.shift = shift

    def forward(self, x):
        if self.eq == "bpi,ij->bpj":
            return torch.einsum(self.eq, x[:, None], self.W)[:, 0] + torch.tensor([0.0, self.shift])
        return torch.einsum(self.eq, x, self.W) + torch.tensor([0.0, self.shift])


@pytest.mark.parametrize("eq", ["bi,ij->bj", "bpi,ij->bpj", "...i,ij->...j"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_einsum_with_a_constant_matrix_is_verified_at_every_batch_size(eq, n):
    """einsum traces as a view to ``[1, n x rows, k]``, a bmm and a view back (the batch moved
    into the rows of one product; at batch 1 other permutes): bounded as a dense op per sample."""
    m = _EinsumHead(eq).eval()  # logits (x, -x): class 0 on x > 0
    lo, hi = torch.full((n, 1), 0.1), torch.full((n, 1), 1.0)
    r = verify_box(m, lo, hi, Prediction(torch.zeros(n, dtype=torch.long)), budget_s=3)
    assert r.status == ["verified"] * n, r.notes


@pytest.mark.parametrize("n", [1, 3])
def test_a_violation_at_the_edge_through_einsum_is_not_proved(n):
    """einsum's ``(x, -x)``, then logits ``(0.5, 1000 (x - 1) + 0.501)``: class 1 wins only on
    ``x > 1 - 1e-6``; on ``[0, 0.9]`` class 0 is proved."""
    m = nn.Sequential(_EinsumHead().eval(), _Affine([[0.0, 0.0], [1000.0, 0.0]], [0.5, -999.499])).eval()
    with torch.no_grad():
        assert int(m(torch.ones(1, 1)).argmax(1)) == 1
        assert int(m(torch.full((1, 1), 0.999)).argmax(1)) == 0
    labels = torch.zeros(n, dtype=torch.long)
    r = verify_box(m, torch.zeros(n, 1), torch.ones(n, 1), Prediction(labels), budget_s=3)
    assert "verified" not in r.status, r.notes
    assert not any("not supported" in x for x in r.notes), r.notes
    r = verify_box(m, torch.zeros(n, 1), torch.full((n, 1), 0.9), Prediction(labels), budget_s=3)
    assert r.status == ["verified"] * n, r.notes


class _Affine(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", torch.tensor(w))
        self.register_buffer("b", torch.tensor(b))

    def forward(self, y):
        return y @ self.w.T + self.b


class _MixesSamplesAtBatch4(nn.Module):
    """An einsum-shaped product whose rows, at batch 4 only, come from other samples: a view to
    ``[2, 2, 1]``, a swap of those dims (pure layout ops) and the ``[1, 4, 1]`` operand. At batch 2
    the same ops keep every sample's row."""

    def __init__(self, where):
        super().__init__()
        self.where = where
        self.register_buffer("W", torch.tensor([[[1.0, -1.0]]]))

    def forward(self, x):
        n = x.shape[0]
        if self.where == "rows":  # the product's [1, 4, 1] operand
            h = x.reshape(2, 2, 1).permute(1, 0, 2).reshape(1, 4, 1) if n == 4 else x.reshape(1, n, 1)
            return torch.bmm(h, self.W).reshape(n, 2)
        # "batch": each sample's 2 x 2 transposed, and at batch 4 the samples reordered too (a
        # [4, 4] tensor with the same transpose in each row, but rows of other samples)
        x4 = x.expand(n, 4)
        if n == 4:
            h = x4.reshape(2, 2, 2, 2).permute(1, 0, 3, 2).reshape(4, 4)
        else:
            h = x4.reshape(n, 2, 2).permute(0, 2, 1).reshape(n, 4)
        return torch.cat([h[:, :1], -h[:, :1]], 1)


@pytest.mark.parametrize("where", ["rows", "batch"])
def test_a_batch_size_that_mixes_the_rows_of_an_einsum_product_is_refused(where):
    """The collapsed layout chains keep the batch-size check: at batch 4 the chain moves rows
    across samples (its index is no per-sample map), so the programs differ, and the boxes whose
    rows come from samples of the other class are not proved."""
    m = _MixesSamplesAtBatch4(where).eval()
    x = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    with torch.no_grad():
        assert m(x)[1, 0] < 0  # box 1 gets sample 2's row: violated there
    labels = torch.tensor([0, 0, 1, 1])
    r = verify_box(m, x - 0.1, x + 0.1, Prediction(labels), budget_s=3)
    assert r.status[1] != "verified" and r.status[2] != "verified", (r.status, r.notes)
    assert any("batch size 4" in n for n in r.notes), r.notes
    # the control: at batch 2 and 3 the rows stay each sample's, and the product is bounded
    for k in (2, 3):
        r = verify_box(m, x[:k] - 0.1, x[:k] + 0.1, Prediction(labels[:k]), budget_s=3)
        assert r.status == ["verified"] * k, r.notes


# ------------------------------------------------ 5. roll, channel shuffle, cumsum, amin / min(dim)
class _Layout(nn.Module):
    """``x [N, 1]`` spread to 4 features ``(x, 0, 0, 0)``, then ``op``; logits ``(0.5, 1000 (g - 1) +
    0.501)`` with ``g`` the feature the op should carry ``x`` to: class 1 wins on ``x > 1 - 1e-6``."""

    def __init__(self, op, pick):
        super().__init__()
        self.op, self.pick = op, pick
        self.register_buffer("e", torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, x):
        h = self.op(x * self.e)
        g = h.reshape(h.shape[0], -1)[:, self.pick:self.pick + 1]
        return torch.cat([torch.full_like(g, 0.5), 1000 * (g - 1) + 0.501], 1)


_LAYOUTS = {
    "roll": (lambda h: torch.roll(h, 1, 1), 1),
    "roll_2d": (lambda h: torch.roll(h.view(-1, 2, 2), (1, 1), (1, 2)), 3),
    "channel_shuffle": (lambda h: nn.ChannelShuffle(2)(h.view(-1, 4, 1, 1)), 0),
    "cumsum": (lambda h: torch.cumsum(h, 1), 3),
    # amin of (x, x + 1, x + 2, x + 3) is x; min(dim) too
    "amin": (lambda h: (h[:, :1] + torch.arange(4.0)).amin(1, keepdim=True), 0),
    "min_dim": (lambda h: (h[:, :1] + torch.arange(4.0)).min(1, keepdim=True).values, 0),
}


@pytest.mark.parametrize("kind", sorted(_LAYOUTS))
def test_a_violation_at_the_edge_through_a_layout_op_is_not_proved(kind):
    m = _Layout(*_LAYOUTS[kind]).eval()
    with torch.no_grad():
        assert int(m(torch.ones(1, 1)).argmax(1)) == 1
        assert int(m(torch.full((1, 1), 0.999)).argmax(1)) == 0
    _not_proved(m, torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("kind", sorted(_LAYOUTS))
def test_a_layout_op_is_now_verified_on_an_easy_box(kind):
    m = _Layout(*_LAYOUTS[kind]).eval()
    _proved(m, torch.zeros(1, 1), torch.full((1, 1), 0.9))


def test_roll_without_dims_stays_refused():
    """``torch.roll(h, 1)`` rolls the flattened tensor: one sample's entry moves into the next."""
    m = _Layout(lambda h: torch.roll(h, 1), 1).eval()
    r = verify_box(m, torch.zeros(2, 1), torch.full((2, 1), 0.9), Prediction(torch.zeros(2, dtype=torch.long)),
                   budget_s=2)
    assert "verified" not in r.status
    assert any("not supported" in n for n in r.notes), r.notes


# ------------------------------------------------ 5. torch.where / masked_fill with a constant mask
class _Masked(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        self.register_buffer("m", torch.tensor([True, False, True]))
        self.register_buffer("c", torch.tensor([5.0, -7.0, 9.0]))

    def forward(self, x):
        return self.f(self, x.expand(x.shape[0], 3))[:, :1]


_SELECTIONS = {
    "where_buffer": lambda s, x: torch.where(s.m, x, s.c),
    "where_literal": lambda s, x: torch.where(s.m, x, 0.25),
    "where_other_side": lambda s, x: torch.where(~s.m, s.c, x),
    "masked_fill": lambda s, x: x.masked_fill(~s.m, 3.0),
    "masked_fill_tensor": lambda s, x: x.masked_fill(~s.m, torch.tensor(3.0)),
    "where_two_data": lambda s, x: torch.where(s.m, x, x * 5 - 2),
}


@pytest.mark.parametrize("kind", sorted(_SELECTIONS))
def test_a_violation_at_the_edge_through_a_constant_mask_is_not_proved(kind):
    m = _Edge(_Masked(_SELECTIONS[kind])).eval()
    with torch.no_grad():
        assert int(m(torch.ones(1, 1)).argmax(1)) == 1
        assert int(m(torch.full((1, 1), 0.99999)).argmax(1)) == 0
    _not_proved(m, torch.zeros(1, 1), torch.ones(1, 1))


@pytest.mark.parametrize("kind", sorted(_SELECTIONS))
def test_a_constant_mask_is_now_verified_on_an_easy_box(kind):
    m = _Edge(_Masked(_SELECTIONS[kind])).eval()
    _proved(m, torch.zeros(1, 1), torch.full((1, 1), 0.9))


def test_a_constant_fill_value_is_selected_exactly():
    """Where the mask selects the constant, the output is that constant (rounded to float32 as
    the kernel converts it): 0.1 in float64 is selected as float32's 0.1, a margin of 1.5e-9."""
    c32 = float(torch.tensor(0.1, dtype=torch.float32))

    class M(nn.Module):
        def forward(self, x):
            y = torch.where(torch.tensor([False]), x, torch.tensor(0.1, dtype=torch.float64))
            return torch.cat([torch.full_like(y, c32), y], 1)

    # class 0 ties class 1 exactly: never proved (a tie is a violation), falsified or unknown
    r = verify_box(M(), torch.zeros(1, 1), torch.ones(1, 1), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert not any("not supported" in n for n in r.notes), r.notes


@pytest.mark.parametrize("how", ["where", "masked_fill"])
def test_a_number_filled_into_a_float64_model_is_its_float64_value(how):
    """A Python number selected by a constant mask of a float64 model is that number in float64
    (the kernel's): the bounds were made of it converted to torch's default dtype first
    (float32's -0.30000001192 for -0.3), so zero-width bounds excluded the model's own -0.3."""
    from pytest_latentaudit.engines.bounds import output_bounds
    from pytest_latentaudit.engines.graph import get_graph

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("m", torch.tensor([True, False, True]))

        def forward(self, x):
            return x.masked_fill(self.m, -0.3) if how == "masked_fill" else torch.where(self.m, -0.3, x)

    m = M().double().eval()
    g = get_graph(m, (3,), example=torch.zeros(2, 3, dtype=torch.float64))
    c = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m(c)
    for method in ("ibp", "linear", "crown"):
        lo, hi = output_bounds(g, c, torch.zeros(4, 1, 3, dtype=torch.float64), method=method)
        assert bool((lo <= y).all() and (y <= hi).all()), (method, lo[0], y[0], hi[0])


@pytest.mark.parametrize("how", ["where", "masked_fill"])
def test_a_data_dependent_mask_stays_refused(how):
    def f(s, x):
        mask = x > 0.5
        return torch.where(mask, x, 0.0) if how == "where" else x.masked_fill(mask, 0.0)

    m = _Edge(_Masked(f)).eval()
    r = verify_box(m, torch.zeros(1, 1), torch.full((1, 1), 0.4), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("not supported" in n for n in r.notes), r.notes


def test_log1p_at_its_pole_is_not_proved():
    """``-log1p(x - 1) = -log(x)`` is ``+inf`` at ``x = 0``: class 1 wins only below ``e^-20``
    (a sliver at the edge of the box); the interval reaching -1 has no bound."""

    class M(nn.Module):
        def forward(self, x):
            return torch.cat([torch.full_like(x, 20.0), -torch.log1p(x - 1)], 1)

    m = M()
    with torch.no_grad():
        assert int(m(torch.zeros(1, 1)).argmax(1)) == 1
    _not_proved(m, torch.zeros(1, 1), torch.full((1, 1), 0.3))
    _proved(m, torch.full((1, 1), 0.01), torch.full((1, 1), 0.3))


@pytest.mark.parametrize("e", [2.5, 9, -1, 0.5])
def test_other_powers_stay_refused(e):
    m = _Edge(lambda x: (x + 1) ** e).eval()
    r = verify_box(m, torch.zeros(1, 1), torch.full((1, 1), 0.5), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("not supported" in n for n in r.notes), r.notes


@pytest.mark.parametrize("how", ["addcmul", "lerp_weight", "lerp_weight_tensor"])
def test_products_of_data_through_addcmul_and_lerp_stay_refused(how):
    f = {"addcmul": lambda x: torch.addcmul(x, x, x),
         "lerp_weight": lambda x: torch.lerp(torch.zeros_like(x), torch.ones_like(x), x),
         "lerp_weight_tensor": lambda x: torch.lerp(x, 2 * x, torch.tensor([0.3]))}[how]
    m = _Edge(f).eval()
    r = verify_box(m, torch.zeros(1, 1), torch.full((1, 1), 0.5), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("not supported" in n for n in r.notes), r.notes


@pytest.mark.parametrize("how", ["softshrink", "lerp", "addcmul"])
def test_scalar_parameters_of_reduced_precision_kernels_stay_refused(how):
    """float16 kernels take ``lambd``, ``weight`` and ``value`` in float32 (opmath), not in the
    data's dtype: not modelled, refused."""
    f = {"softshrink": lambda x: F.softshrink(x, 0.3), "lerp": lambda x: torch.lerp(x, torch.full_like(x, 2.0), 0.3),
         "addcmul": lambda x: torch.addcmul(x, torch.tensor([2.0], dtype=x.dtype), torch.tensor([0.1], dtype=x.dtype),
                                            value=0.3)}[how]

    class M(nn.Module):
        def forward(self, x):
            return torch.cat([torch.full_like(x, 5.0), f(x)], 1)

    r = verify_box(M().half(), torch.zeros(1, 1).half(), torch.full((1, 1), 0.5).half(), Prediction(0), budget_s=2)
    assert r.status != ["verified"]
    assert any("not supported" in n and "float16 tensor" in n for n in r.notes), r.notes
