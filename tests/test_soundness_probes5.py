"""Planted cases of the fifth adversarial soundness hunt (chunked CROWN refinement, products
and divisions of data tensors, norm/softmax ops at extreme scales, branch and bound under a
budget, falsification). Each test named ``test_...`` after a finding is a wrong verdict or a
crash found by the hunt, minimised; it fails on the code it was found on. The property tests
at the end guard the areas where the hunt found nothing (they would fail on a bug there)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_latentaudit import OutputRange, verify_box
from pytest_latentaudit.api import audit
from pytest_latentaudit.engines.falsify import Found


def _identity_head():
    m = nn.Sequential(nn.Linear(1, 1)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.fill_(0.0)
    return m


# ------------------------------------------------- 1. a registered falsifier's points
def _claims_everything(problem, idx, tl, tu, **kw):
    """A registered falsifier (the ``pytest_latentaudit_falsifiers`` hook's signature) that
    claims every box has a counterexample at its centre, where the spec holds."""
    n = idx.numel()
    t = (tl + tu) / 2
    return Found(torch.ones(n, dtype=torch.bool), t, problem.point(idx, t), torch.ones(n, dtype=tl.dtype))


def _claims_outside(problem, idx, tl, tu, **kw):
    """Claims a point far outside each box (t = 100 tu), where the spec is violated: the box
    itself holds the spec everywhere."""
    n = idx.numel()
    t = tu * 100
    return Found(torch.ones(n, dtype=torch.bool), t, problem.point(idx, t), torch.ones(n, dtype=tl.dtype))


def _claims_nan(problem, idx, tl, tu, **kw):
    n = idx.numel()
    t = torch.full_like(tl, float("nan"))
    return Found(torch.ones(n, dtype=torch.bool), t, problem.point(idx, (tl + tu) / 2), torch.ones(n, dtype=tl.dtype))


@pytest.mark.parametrize("liar", [_claims_everything, _claims_outside, _claims_nan])
def test_a_registered_falsifiers_points_are_rechecked(liar):
    """Planted: ``y = x`` on seeds 0 moved by ``t in [-0.1, 0.1]``, spec ``y <= 5`` (true
    everywhere), audited with a registered falsifier that claims counterexamples: at the box
    centre (where ``y = 0``), far outside the box, or at a nan offset. The hookspec promises
    "its points are re-checked with a plain forward pass like any counterexample"; the
    ladder took the falsifier's mask as it came (``Ladder._mark_falsified``), so the audit's
    verdict was ``violated`` with counterexamples that satisfy the spec."""
    m = _identity_head()
    z = torch.zeros(2, 1)
    res = audit(m, (z, torch.zeros(2)), direction=torch.ones(1), eps=0.1, spec=OutputRange(upper=[5.0]),
                engine="falsify", attack="liar", falsifier=liar, budget_s=3)
    assert "falsified" not in res.status, "a falsifier's unconfirmed point falsified a box where the spec holds"
    assert res.verdict != "violated"
    # with the bound engines too the boxes are proved, whatever the falsifier claims
    res = audit(m, (z, torch.zeros(2)), direction=torch.ones(1), eps=0.1, spec=OutputRange(upper=[5.0]),
                engine="auto", attack="liar", falsifier=liar, budget_s=3)
    assert res.status == ["verified", "verified"] and res.verdict == "proved"


def test_a_registered_falsifiers_true_points_still_falsify():
    """Control: a registered falsifier whose point does violate (``y = x <= 0.05`` fails at
    ``t = 0.1``) falsifies, and the counterexample is the re-checked point inside the box."""
    m = _identity_head()
    z = torch.zeros(2, 1)

    def right_end(problem, idx, tl, tu, **kw):
        n = idx.numel()
        return Found(torch.ones(n, dtype=torch.bool), tu.clone(), problem.point(idx, tu), torch.ones(n, dtype=tl.dtype))

    res = audit(m, (z, torch.zeros(2)), direction=torch.ones(1), eps=0.1, spec=OutputRange(upper=[0.05]),
                engine="falsify", attack="end", falsifier=right_end, budget_s=3)
    assert res.status == ["falsified", "falsified"] and res.verdict == "violated"
    for c in res.counterexamples:
        assert abs(c.offset[0]) <= 0.1 and float(c.z[0]) > 0.05


# ---------------------------------------- 2. a forward that runs but cannot be differentiated
class InplaceOnASavedOutput(nn.Module):
    """``2 sigmoid(4 x)`` written as inference code often is: ``torch.sigmoid(h).mul_(2)``, an
    in-place op on the output sigmoid's backward needs. A plain call (what the user runs) works,
    with autograd on or off; only a backward pass through it fails."""

    def forward(self, x):
        return torch.sigmoid(4 * x).mul_(2)


@pytest.mark.parametrize("engine", ["auto", "falsify", "ibp", "bab", "linear"])
def test_a_forward_without_a_backward_gives_a_verdict_not_a_crash(engine):
    """Planted: ``y = 2 sigmoid(4 x)`` on ``[-1, 1]`` (maximum 1.964 at x = 1, 2 sigmoid(0) = 1 at
    the centre), spec ``y <= 1.9``: violated on ``x > 0.73``, which the bounds cannot prove and
    the centre does not show. The gradient attack called ``torch.autograd.grad`` through the
    model and the in-place op's RuntimeError escaped ``verify_box``: a crash on a model every
    plain call runs. The attack now moves at random where the model has no backward (and the
    corners it starts from find this one)."""
    from pytest_latentaudit import verify_box

    m = InplaceOnASavedOutput()
    lo, hi = torch.tensor([[-1.0]]), torch.tensor([[1.0]])
    res = verify_box(m, lo, hi, OutputRange(upper=[1.9]), engine=engine, budget_s=5)
    assert res.status == ["falsified"]
    cx = res.counterexamples[0]
    assert float(cx) >= -1.0 and float(cx) <= 1.0 and float(m(cx[None])) > 1.9
    if engine != "falsify":
        assert verify_box(m, lo, hi, OutputRange(upper=[2.05]), engine=engine, budget_s=5).status == ["verified"]


# ------------------------------------------------- 3. average pooling with a negative divisor
class NegativeDivisorPool(nn.Module):
    """A spike ``h = relu(1 - 1000 |x - 0.37|)`` (height 1, width 2e-3) through
    ``avg_pool2d(..., divisor_override=-1)``: torch takes any non-zero divisor, so ``y = -h``."""

    def forward(self, x):
        h = torch.relu(1 - 1000 * (x - 0.37).abs())
        return torch.nn.functional.avg_pool2d(h.reshape(-1, 1, 1, 1), 1, divisor_override=-1).reshape(-1, 1)


@pytest.mark.parametrize("engine", ["auto", "ibp", "linear", "bab", "auto_lirpa:ibp"])
def test_average_pooling_with_a_negative_divisor_is_not_proved(engine):
    """Planted: ``y = -h`` reaches -1 at x = 0.37; spec ``y >= -0.5`` on ``[0, 1]``. The
    lowering made the pooling a ``LinearMapOp`` (a map with non-negative coefficients: lower
    bound to lower, upper to upper), so its interval was reversed, ``[0, -1]``, and IBP
    "proved" ``y >= 0``. The trace check's points (corners, centre, random) all miss the
    spike, where the negative error radius would have shown it. A non-positive divisor is now
    refused."""
    m = NegativeDivisorPool()
    with torch.no_grad():
        assert float(m(torch.tensor([[0.37]]))) == -1.0
    res = verify_box(m, torch.zeros(1, 1), torch.ones(1, 1), OutputRange(lower=[-0.5]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y >= -0.5 where y = -1"


# ------------------------------- 4. auto_LiRPA: pooling attributes its parse drops, at a spike
class SpikePool(nn.Module):
    """A spike ``h`` (height 1, width 2e-3 at x = 0.37) spread by a bias-free Linear into an
    image and pooled with an attribute auto_LiRPA 0.3 parses without: ``divisor_override=1``
    (a 2x2 sum: ``y = 4 h``) or ``count_include_pad=False`` (a padded 3x3 window holding ``h``
    and 3 counted zeros: ``y = h / 4``; 0.3 divides by 9)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.up = nn.Linear(1, 4 if how == "divisor" else 9, bias=False)
        with torch.no_grad():
            self.up.weight.zero_()
            if how == "divisor":
                self.up.weight.fill_(1.0)
            else:
                self.up.weight[0] = 1.0

    def forward(self, x):
        h = torch.relu(1 - 1000 * (x - 0.37).abs())
        F = torch.nn.functional
        if self.how == "divisor":
            return F.avg_pool2d(self.up(h).reshape(-1, 1, 2, 2), 2, divisor_override=1).flatten(1)
        img = self.up(h).reshape(-1, 1, 3, 3)
        return F.avg_pool2d(img, 3, stride=3, padding=1, count_include_pad=False)[:, :, 0, 0].reshape(-1, 1)


@pytest.mark.parametrize("how, thr", [("divisor", 2.0), ("count_pad", 0.2)])
@pytest.mark.parametrize("engine", ["auto_lirpa:ibp", "auto_lirpa:crown"])
def test_auto_lirpa_pooling_attributes_it_drops_are_refused_even_where_the_parse_check_agrees(engine, how, thr):
    """Planted: ``y`` reaches 4 (sum) or 0.25 (``count_include_pad=False``) at x = 0.37 only;
    spec ``y <= thr`` (2 and 0.2) on ``[0, 1]``. auto_LiRPA 0.3 parses the pooling without the
    attribute (an average: at most 1, or 1/9) and IBP "proved" the spec; the parse check, meant
    to catch exactly these attributes (probes2), compares outputs at the box's corners, centre
    and 8 random points, all off the spike, where both functions are 0. The attributes are now
    read from the model's ATen program and such a pooling is refused."""
    from pytest_latentaudit.engines.lirpa_compat import auto_lirpa_version

    if auto_lirpa_version() is None:
        pytest.skip("auto_LiRPA is not installed")
    m = SpikePool(how).eval()
    with torch.no_grad():
        assert float(m(torch.tensor([[0.37]]))) > thr
    res = verify_box(m, torch.zeros(1, 1), torch.ones(1, 1), OutputRange(upper=[thr]), engine=engine, budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y <= {thr} of a pooling it parsed without {how}"
    # the native engines bound these poolings as they are: the spike is found
    assert verify_box(m, torch.zeros(1, 1), torch.ones(1, 1), OutputRange(upper=[thr]), budget_s=5).status == ["falsified"]


# ------------------------------------------------------------ 5. elu with a negative input_scale
class EluNegativeInputScale(nn.Module):
    """``aten.elu(x, alpha=1, scale=1, input_scale=-1) + 29.5 x``: for ``x < 0`` the elu part is
    ``exp(-x) - 1`` (convex, 147 at x = -5), and 29.5 x cancels its chord on ``[-5, 0]``, so the
    sum dips to -71.34 at x = -3.385 (``-ln 29.5``)."""

    def forward(self, x):
        return torch.ops.aten.elu(x, 1.0, 1.0, -1.0) + 29.5 * x


@pytest.mark.parametrize("engine", ["linear", "auto", "bab"])
def test_elu_with_a_negative_input_scale_is_not_proved(engine):
    """Planted: spec ``y >= -71`` on ``[-5, 0]``, violated around x = -3.385 (minimum -71.34).
    ``EluOp`` took ``f2 = |scale alpha| input_scale^2`` for the curvature, which bounds
    ``|f''|`` only for ``input_scale >= 0`` (then ``exp(input_scale x) <= 1`` on x < 0); with
    -1 it is ``exp(-x)``, 148 at x = -5. The grid relaxation's slack ``f2 h^2 / 8`` (0.05) was
    far short of the dip of the chord's residual between grid points (0.9), and the linear
    bound "proved" ``y >= -70.5``. A negative input_scale is now refused."""
    m = EluNegativeInputScale()
    xs = torch.linspace(-5, 0, 200001)[:, None]
    with torch.no_grad():
        assert float(m(xs).min()) < -71.3
    res = verify_box(m, torch.full((1, 1), -5.0), torch.zeros(1, 1), OutputRange(lower=[-71.0]), engine=engine,
                     budget_s=3)
    assert res.status[0] != "verified", f"{engine} proved y >= -71 where y reaches -71.34"


def test_control_elu_and_selu_are_still_proved():
    """Control: ``elu`` (input_scale 1) and ``selu`` keep their relaxation: a bound just below
    the minimum of ``selu(x) + x`` on ``[-3, 1]`` is proved."""
    class Net(nn.Module):
        def forward(self, x):
            return torch.nn.functional.selu(x) + torch.nn.functional.elu(x, 0.5) + x

    net = Net()
    xs = torch.linspace(-3, 1, 200001)[:, None]
    with torch.no_grad():
        low = float(net(xs).min())
    res = verify_box(net, torch.full((1, 1), -3.0), torch.ones(1, 1), OutputRange(lower=[low - 0.05]), budget_s=10)
    assert res.status == ["verified"], res.notes


# ============================================================ property tests (nothing found)
class _MixedNet(nn.Module):
    """ReLU layers behind a product, a softmax, a LayerNorm and a max pooling: every kind of
    relaxation ``_crown_refine`` tightens the inputs of."""

    def __init__(self, d=3, w=12):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, w), nn.Linear(d, w), nn.Linear(w, w)
        self.ln = nn.LayerNorm(w)
        self.e, self.out = nn.Linear(w, w), nn.Linear(w // 2 + w, 3)

    def forward(self, x):
        F = torch.nn.functional
        h = F.relu(self.a(x)) * torch.tanh(self.b(x))
        h = F.relu(self.c(h)) + F.softmax(self.c(h), dim=1)
        g = self.ln(F.relu(self.e(h)))
        p = F.max_pool1d(F.relu(g)[:, None], 2).flatten(1)
        return self.out(torch.cat([p, F.relu(self.e(g))], 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_property_chunked_crown_refinement_on_mixed_relaxations(monkeypatch, seed):
    """Area 1 (``_crown_refine``'s chunks): on a graph with products, softmax, LayerNorm and max
    pooling before ReLUs, chunks of one box, of three and the whole batch give every node the
    same bounds up to float32 rounding of the backward products, and they hold on samples of
    the model."""
    from pytest_latentaudit.engines import bounds as B
    from pytest_latentaudit.engines.graph import get_graph

    torch.manual_seed(seed)
    net = _MixedNet().eval()
    g = get_graph(net, (3,))
    n = 7
    c = torch.randn(n, 3, dtype=torch.float64)
    G = torch.zeros(n, 3, 3, dtype=torch.float64)
    G[:, range(3), range(3)] = torch.linspace(0.05, 0.6, n, dtype=torch.float64)[:, None]
    monkeypatch.setattr(B, "REFINE_CHUNK", 1 << 40)
    _, whole = B.linear_bounds(g, c, G, crown=True)
    for chunk in (1, 3 * 12 * 12):
        monkeypatch.setattr(B, "REFINE_CHUNK", chunk)
        _, parts = B.linear_bounds(g, c, G, crown=True)
        for (l1, h1), (l2, h2) in zip(whole, parts):
            # float32 backward coefficients: a chunk's products may round otherwise (a few ulps)
            assert torch.allclose(h1, h2, rtol=1e-5, atol=1e-5) and torch.allclose(l1, l2, rtol=1e-5, atol=1e-5)
    s = torch.rand(4000, n, 3, dtype=torch.float64) * 2 - 1
    x = (c[None] + s * torch.diagonal(G, dim1=1, dim2=2)[None]).float()
    with torch.no_grad():
        y = net(x.reshape(-1, 3)).reshape(4000, n, 3).double()
    lo, hi = parts[-1]
    assert bool((y <= hi[None]).all() and (y >= lo[None]).all())


@pytest.mark.parametrize("budget", [0.2, 0.6])
def test_property_bab_cut_by_the_budget_never_verifies_a_violating_seed(budget):
    """Area 4 (branch and bound cut mid-round): 16 boxes of a ReLU net, the threshold at the
    median of their dense-grid maxima (so half the seeds violate, some by a hair); under small
    budgets that stop the search part-way, no violating seed is verified and no holding one
    falsified, and every counterexample lies in its box and violates."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 1)).eval()
    n = 16
    c = torch.randn(n, 2)
    r = torch.rand(n, 1) * 0.5 + 0.05
    lo, hi = c - r, c + r
    ts = torch.cartesian_prod(torch.linspace(0, 1, 201), torch.linspace(0, 1, 201))
    with torch.no_grad():
        M = net((lo[:, None] + ts[None] * (hi - lo)[:, None]).reshape(-1, 2)).reshape(n, -1).max(1).values
    thr = float(M.median())
    for engine in ("bab", "auto"):
        res = verify_box(net, lo, hi, OutputRange(upper=[thr]), engine=engine, budget_s=budget)
        for i, (s, x) in enumerate(zip(res.status, res.counterexamples)):
            if s == "verified":
                assert float(M[i]) <= thr, f"seed {i} verified, its grid maximum {float(M[i])} > {thr}"
            if s == "falsified":
                with torch.no_grad():
                    assert bool((x >= lo[i]).all() and (x <= hi[i]).all()) and float(net(x[None])) > thr
