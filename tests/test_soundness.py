"""Soundness of the native engines, checked against sampling on random small networks.

A verifier's one job is never to claim a false proof: every sampled point of a box must
lie inside its bounds, a verified box may hold no sampled violation, a counterexample must
lie in its box and really violate the spec, and branch and bound may drop no sub-box.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import hat_model

from pytest_latentaudit import Direction, Invariance, OutputRange, Prediction, audit, verify_box
from pytest_latentaudit.api import decide_verdict
from pytest_latentaudit.engines.bounds import _spec_in, _spec_residual, output_bounds, spec_upper_bound
from pytest_latentaudit.engines.graph import get_graph

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------- random nets
class Residual(nn.Module):
    """``x + act(W x + b)`` (or ``x - ...``): exercises AddOp with a shared input."""

    def __init__(self, d, act, sign):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.act = act
        self.sign = sign

    def forward(self, x):
        h = self.act(self.lin(x))
        return x + h if self.sign > 0 else x - h


def _act(kind):
    return {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[kind]


@st.composite
def nets(draw, max_in=4):
    in_dim = draw(st.integers(1, max_in))
    n_out = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    blocks = draw(st.lists(st.tuples(st.sampled_from(["linear", "residual", "batchnorm"]),
                                     st.sampled_from(["relu", "leaky", "tanh", "sigmoid"]),
                                     st.integers(2, 6)), min_size=1, max_size=3))
    g = torch.Generator().manual_seed(seed)
    layers, d = [], in_dim
    for kind, act, width in blocks:
        if kind == "linear":
            layers += [nn.Linear(d, width), _act(act)]
            d = width
        elif kind == "residual":
            layers.append(Residual(d, _act(act), sign=1 if width % 2 else -1))
        else:
            bn = nn.BatchNorm1d(d)
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(d, generator=g))
                bn.running_var.copy_(torch.rand(d, generator=g) * 2 + 0.1)
                bn.weight.copy_(torch.randn(d, generator=g))
                bn.bias.copy_(torch.randn(d, generator=g))
            layers += [bn, _act(act)]
    layers.append(nn.Linear(d, n_out))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / max(1, m.in_features) ** 0.5 * 1.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model.eval(), in_dim, n_out, seed


@st.composite
def boxes(draw, in_dim, n=2):
    """Centre ``[n, in_dim]`` and ``k`` random generators ``[n, k, in_dim]`` scaled by eps."""
    k = draw(st.integers(1, 3))
    eps = draw(st.floats(0.0, 2.0))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    center = torch.randn(n, in_dim, generator=g)
    gens = torch.randn(n, k, in_dim, generator=g) * eps / k
    return center, gens


def sample_box(center, gens, n_samples=256, seed=0):
    """Random points and all corners of each zonotope box ``c + sum_j s_j G_j``."""
    g = torch.Generator().manual_seed(seed)
    n, k = gens.shape[:2]
    s = torch.rand(n_samples, n, k, generator=g) * 2 - 1
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * k).reshape(-1, 1, k).expand(-1, n, k)
    s = torch.cat([s, corners, torch.zeros(1, n, k)])
    x = center[None] + torch.einsum("rnk,nkd->rnd", s, gens.reshape(n, k, -1)).reshape(s.shape[0], *center.shape)
    return x  # [R, n, *S]


def forward_all(model, x):
    R, n = x.shape[:2]
    with torch.no_grad():
        y = model(x.reshape(R * n, *x.shape[2:]))
    return y.reshape(R, n, *y.shape[1:])


def assert_inside(y, lo, hi, rtol=1e-5):
    tol = rtol * (1 + y.abs())
    below = y < lo[None] - tol
    above = y > hi[None] + tol
    assert not bool(below.any()), f"sample below lower bound by {float((lo[None] - y).max()):.3g}"
    assert not bool(above.any()), f"sample above upper bound by {float((y - hi[None]).max()):.3g}"


# ------------------------------------------------------------- (a) and (b): bounds
@FAST
@given(data=st.data(), net=nets())
def test_output_bounds_contain_samples_and_linear_is_tighter(data, net):
    model, in_dim, n_out, _ = net
    center, gens = data.draw(boxes(in_dim))
    graph = get_graph(model, (in_dim,))
    lo_i, hi_i = output_bounds(graph, center, gens, method="ibp")
    lo_l, hi_l = output_bounds(graph, center, gens, method="linear")
    assert lo_i.shape == lo_l.shape == (2, n_out)
    y = forward_all(model, sample_box(center, gens))
    assert_inside(y, lo_i, hi_i)
    assert_inside(y, lo_l, hi_l)
    tol = 1e-5 * (1 + torch.maximum(lo_i.abs(), hi_i.abs()))
    assert bool((lo_l >= lo_i - tol).all()), "linear lower bound looser than IBP"
    assert bool((hi_l <= hi_i + tol).all()), "linear upper bound looser than IBP"


def test_bounds_are_tight_on_a_point():
    """A zero-width box: bounds collapse to the model output (they are not trivially wide)."""
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    c = torch.randn(2, 3)
    gens = torch.zeros(2, 1, 3)
    graph = get_graph(model, (3,))
    with torch.no_grad():
        y = model(c)
    for method in ("ibp", "linear"):
        lo, hi = output_bounds(graph, c, gens, method=method)
        lo, hi = lo.float(), hi.float()  # bounds are float64
        assert torch.allclose(lo, y, atol=1e-4) and torch.allclose(hi, y, atol=1e-4)
        assert bool((lo <= y).all() and (y <= hi).all())


# ---------------------------------------------------------------- (c) verify_box
@FAST
@given(data=st.data(), net=nets(max_in=3), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_verify_box_sound(data, net, engine):
    model, in_dim, n_out, seed = net
    g = torch.Generator().manual_seed(seed + 1)
    n = 3
    lower = torch.randn(n, in_dim, generator=g)
    width = torch.rand(n, in_dim, generator=g) * data.draw(st.floats(0.0, 1.5))
    width[:, data.draw(st.integers(0, in_dim - 1))] = 0.0  # one fixed coordinate
    upper = lower + width
    with torch.no_grad():
        centre_pred = model((lower + upper) / 2).argmax(1)
    labels = torch.where(torch.rand(n, generator=g) < 0.8, centre_pred, torch.randint(0, n_out, (n,), generator=g))
    spec = Prediction(labels)
    res = verify_box(model, lower, upper, spec, engine=engine, budget_s=0.25, seed=seed)
    assert len(res.status) == n and set(res.status) <= {"verified", "falsified", "unknown"}

    u = torch.rand(512, n, in_dim, generator=g)
    x = lower[None] + u * (upper - lower)[None]
    x = torch.cat([x, lower[None], upper[None]])
    y = forward_all(model, x)
    R = y.shape[0]
    margin = spec.margin(y.reshape(R * n, -1), labels.repeat(R)).reshape(R, n)
    # the reported bound is a proven upper bound of the spec margin over the whole box
    worst = margin.amax(0)
    finite = torch.isfinite(res.bound)
    assert bool((worst[finite] <= res.bound[finite] + 1e-5 * (1 + res.bound[finite].abs())).all()), \
        "a sampled margin exceeds the proven bound"
    for i, s in enumerate(res.status):
        if s == "verified":
            assert float(margin[:, i].max()) < 0, f"box {i} verified but a sampled point violates"
        if s == "falsified":
            cex = res.counterexamples[i]
            assert cex is not None
            assert bool((cex >= lower[i]).all() and (cex <= upper[i]).all()), "counterexample outside its box"
            with torch.no_grad():
                yc = model(cex[None])
            assert not bool(spec.holds(yc, labels[i:i + 1])[0]), "counterexample does not violate the spec"


@FAST
@given(data=st.data(), net=nets(max_in=4), spec_kind=st.sampled_from(["invariance", "accuracy"]),
       engine=st.sampled_from(["linear", "bab", "auto", "falsify"]))
def test_audit_sound(data, net, spec_kind, engine):
    model, dim, n_out, seed = net
    g = torch.Generator().manual_seed(seed + 2)
    n = 3
    z = torch.randn(n, dim, generator=g)
    k = data.draw(st.integers(1, min(3, dim)))
    direction = Direction.axis(data.draw(st.integers(0, dim - 1))) if k == 1 and data.draw(st.booleans()) \
        else Direction.subspace(torch.randn(dim, k, generator=g))
    eps = data.draw(st.floats(0.0, 1.0))
    labels = torch.randint(0, n_out, (n,), generator=g)
    from pytest_latentaudit import Accuracy

    spec = Invariance() if spec_kind == "invariance" else Accuracy()
    r = audit(model, z, labels, direction=direction, eps=eps, spec=spec, engine=engine, budget_s=0.5, seed=seed)
    with torch.no_grad():
        nominal = model(z).argmax(1)
    expected = nominal if spec_kind == "invariance" else labels
    V = direction.basis(dim)
    k = V.shape[1]

    t = (torch.rand(512, n, k, generator=g) * 2 - 1) * eps
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * k).reshape(-1, 1, k).expand(-1, n, k) * eps
    t = torch.cat([t, corners])
    x = z[None] + torch.einsum("rnk,dk->rnd", t, V)
    y = forward_all(model, x)
    R = y.shape[0]
    worst = Prediction(expected.repeat(R)).margin(y.reshape(R * n, -1)).reshape(R, n).amax(0)
    for i, b in enumerate(r.bound):
        if b != float("inf"):
            assert float(worst[i]) <= b + 1e-5 * (1 + abs(b)), "a sampled margin exceeds the proven bound"
    for i, s in enumerate(r.status):
        if s == "verified":
            yi = y[:, i]
            others = yi.clone()
            others[:, expected[i]] = -torch.inf
            assert bool((yi[:, expected[i]] > others.amax(1)).all()), f"seed {i} verified but a sample violates"
    falsified = [i for i, s in enumerate(r.status) if s == "falsified"]
    assert sorted(c.seed_index for c in r.counterexamples) == falsified
    for c in r.counterexamples:
        assert all(abs(v) <= eps * (1 + 1e-6) + 1e-7 for v in c.offset), "offset outside [-eps, eps]"
        assert torch.allclose(c.z, z[c.seed_index] + V @ torch.tensor(c.offset), atol=1e-5)
        with torch.no_grad():
            yc = model(c.z[None])[0]
        others = yc.clone()
        others[expected[c.seed_index]] = -torch.inf
        assert float(others.max()) >= float(yc[expected[c.seed_index]]), "counterexample keeps the label"
        assert c.expected is None or c.expected == int(expected[c.seed_index])
    assert r.verdict == decide_verdict(n, r.counts["verified"], r.counts["falsified"], spec.at_least)


# ------------------------------------------------------- (d) branch and bound


@SLOW
@given(a=st.floats(0.05, 0.9), w=st.floats(1e-3, 2e-2), engine=st.sampled_from(["bab", "auto", "linear", "ibp"]))
def test_narrow_violation_never_verified(a, w, engine):
    model = hat_model(a, w)
    with torch.no_grad():
        assert int(model(torch.tensor([[a + w / 2]])).argmax()) == 1  # the violation is real
    lower, upper = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    res = verify_box(model, lower, upper, Prediction(0), engine=engine, budget_s=1.0)
    assert res.status[0] != "verified"
    if res.status[0] == "falsified":
        x = float(res.counterexamples[0][0])
        assert a + w / 4 - 1e-6 <= x <= a + 3 * w / 4 + 1e-6


def test_bab_proves_what_intervals_cannot_and_keeps_the_hole():
    """2-D: the violation sits in a tiny region; all other sub-boxes verify. Branch and bound
    must end at falsified (or unknown), never at verified, while the same box without the
    hole is proved by splitting."""
    a, w = 0.61, 2e-3
    model = hat_model(a, w, n_in=2)
    lower, upper = torch.tensor([[0.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    res = verify_box(model, lower, upper, Prediction(0), engine="bab", budget_s=3.0)
    assert res.status[0] in ("falsified", "unknown")
    # the region left of the hole is provable, but not by one interval pass over [0, a]
    left = torch.tensor([[a - 0.3, 1.0]])
    res_ibp = verify_box(model, lower, left, Prediction(0), engine="ibp", budget_s=3.0)
    res_bab = verify_box(model, lower, left, Prediction(0), engine="bab", budget_s=3.0)
    assert res_bab.status[0] == "verified"
    assert res_ibp.status[0] in ("verified", "unknown")


def test_data_dependent_python_scalar_is_not_frozen():
    a, w = 0.5123, 1e-3

    class ScaledHat(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(1, 3), nn.Linear(3, 1)
            with torch.no_grad():
                self.l1.weight.fill_(1.0)
                self.l1.bias.copy_(torch.tensor([-a, -a - w / 2, -a - w]))
                self.l2.weight.copy_(torch.tensor([[1.0, -2.0, 1.0]]) * (2 / w))
                self.l2.bias.zero_()

        def forward(self, x):
            s = x.tolist()[0][0]  # a data-dependent Python float
            return self.l2(torch.relu(self.l1(x))) * s * 2

    model = ScaledHat()
    peak = torch.tensor([[a + w / 2]])
    with torch.no_grad():
        assert float(model(peak)) > 0.5  # a point of the box outside the range
    res = verify_box(model, torch.tensor([[0.0]]), torch.tensor([[1.0]]), OutputRange(-0.5, 0.5), engine="linear")
    assert res.status[0] != "verified"


# ----------------------------------------------------------- (e) decoder graphs
def decoder_classifier(seed):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, 2 * 4 * 4), nn.Unflatten(1, (2, 4, 4)),
        nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1),  # 3 x 8 x 8
        nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid(),
        nn.AvgPool2d(2),  # 4 x 4 x 4
        nn.Upsample(scale_factor=2, mode="nearest"),  # 4 x 8 x 8
        nn.Conv2d(4, 2, 3, stride=2, padding=1), nn.Tanh(),  # 2 x 4 x 4
        nn.Flatten(), nn.Linear(32, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        bn = model[3]
        bn.running_mean.copy_(torch.randn(3, generator=g))
        bn.running_var.copy_(torch.rand(3, generator=g) + 0.2)
    return model.eval()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_decoder_graph_bounds_sound(seed, data):
    model = decoder_classifier(seed)
    center, gens = data.draw(boxes(3))
    graph = get_graph(model, (3,))
    y = forward_all(model, sample_box(center, gens, n_samples=64))
    lo_i, hi_i = output_bounds(graph, center, gens, method="ibp")
    lo_l, hi_l = output_bounds(graph, center, gens, method="linear")
    assert_inside(y, lo_i, hi_i)
    assert_inside(y, lo_l, hi_l)
    tol = 1e-5 * (1 + torch.maximum(lo_i.abs(), hi_i.abs()))
    assert bool((lo_l >= lo_i - tol).all()) and bool((hi_l <= hi_i + tol).all())


def test_decoder_graph_audit_sound():
    model = decoder_classifier(3)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, generator=g)
    direction = Direction.subspace(torch.randn(3, 2, generator=g))
    r = audit(model, z, direction=direction, eps=0.05, spec=Invariance(), engine="bab", budget_s=20.0)
    assert r.notes == [], r.notes  # every layer of this graph has a bound operator
    assert r.counts["verified"] >= 1  # small eps: the bounds must prove something
    V = direction.basis(3)
    with torch.no_grad():
        nominal = model(z).argmax(1)
        for i, s in enumerate(r.status):
            if s == "verified":
                t = (torch.rand(256, 2, generator=g) * 2 - 1) * 0.05
                assert bool((model(z[i] + t @ V.T).argmax(1) == nominal[i]).all())


# ------------------------------------------------------ unsupported layers: no proof
class SoftmaxHead(nn.Module):
    def __init__(self, out=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
        self.out = nn.Softmax(dim=1) if out is None else out

    def forward(self, x):
        return self.out(self.body(x))


class _Atan(nn.Module):
    def forward(self, x):
        return torch.atan(x)


@pytest.mark.parametrize("engine", ["auto", "ibp", "linear", "bab"])
def test_unsupported_layer_never_proves(engine):
    """atan (no bound operator) on the logits: at eps 1e-4 the prediction is kept, but the
    engines must fall back to falsification (a note names the layer), never prove."""
    torch.manual_seed(0)
    model = SoftmaxHead(_Atan()).eval()
    z = torch.randn(3, 2)
    r = audit(model, z, direction=Direction.axis(0), eps=1e-4, spec=Invariance(), engine=engine, budget_s=2.0)
    assert r.counts["verified"] == 0 and r.verdict != "proved"
    assert any("_Atan" in n or "'out'" in n for n in r.notes), r.notes
    res = verify_box(model, z - 1e-4, z + 1e-4, Prediction(model(z).argmax(1)), engine=engine, budget_s=2.0)
    assert "verified" not in res.status
    assert any("_Atan" in n or "'out'" in n for n in res.notes), res.notes


@pytest.mark.parametrize("engine", ["auto", "ibp", "linear", "bab"])
def test_softmax_head_is_proved(engine):
    """Softmax has a bound operator now (tests/test_norm_softmax.py): the same head with
    softmax probabilities out is proved at eps 1e-4, with no note of an unsupported layer."""
    torch.manual_seed(0)
    model = SoftmaxHead().eval()
    z = torch.randn(3, 2)
    r = audit(model, z, direction=Direction.axis(0), eps=1e-4, spec=Invariance(), engine=engine, budget_s=2.0)
    assert not any("not supported" in n for n in r.notes), r.notes
    assert r.counts["verified"] == 3 and r.verdict == "proved"


# ------------------------------------------------- spec rows rounded to the bound dtype
@FAST
@given(seed=st.integers(0, 2 ** 31 - 1), scale=st.sampled_from([1.0, 1e3, 1e7]))
def test_spec_rows_rounded_to_float32_are_charged(seed, scale):
    """A float32 graph bounds ``C_32 y + d_32``; ``C y + d <= C_32 y + d_32 + |C - C_32| max|y|``
    must hold exactly for every ``y`` in the output's bounds (``d`` rounds up, the rest is the
    residual), for rows that float32 cannot represent."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(2, 2, 3, generator=g, dtype=torch.float64) * scale
    d = torch.randn(2, 2, generator=g, dtype=torch.float64) * scale
    lo = torch.randn(2, 3, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(2, 3, generator=g, dtype=torch.float64)
    Cl, dl, err = _spec_in(C, d, torch.float32)
    assert Cl.dtype == dl.dtype == torch.float32 and err is not None
    res = _spec_residual(err, (lo.float(), hi.float()))
    for _ in range(20):
        y = (lo + torch.rand(2, 3, generator=g, dtype=torch.float64) * (hi - lo)).float().double()
        y = torch.minimum(torch.maximum(y, lo.float().double()), hi.float().double())
        for n in range(2):
            for r in range(2):
                exact = sum(Fraction(float(C[n, r, j])) * Fraction(float(y[n, j])) for j in range(3)) + \
                    Fraction(float(d[n, r]))
                rounded = sum(Fraction(float(Cl[n, r, j])) * Fraction(float(y[n, j])) for j in range(3)) + \
                    Fraction(float(dl[n, r]))
                assert exact <= rounded + Fraction(float(res[n, r])), (n, r)
    # exact rows (class and range specs) cost nothing
    assert _spec_in(torch.tensor([[[1.0, -1.0]]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                    torch.float32)[2] is None


def test_float32_graph_bounds_rows_float32_cannot_hold():
    """On a point, the float32 graph's bound of ``C y + d`` with ``C`` of 1e4 and fractions no
    float32 has, and ``d`` set so the exact value is 0, stays at or above 0 for every method."""
    g = torch.Generator().manual_seed(3)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    graph = get_graph(m, (3,))
    x = torch.randn(4, 3, generator=g)
    C = torch.randn(4, 2, 3, generator=g, dtype=torch.float64) * 1e4 + \
        torch.rand(4, 2, 3, generator=g, dtype=torch.float64) * 1e-3
    with torch.no_grad():
        y = m(x).double()
    d = -torch.einsum("nmo,no->nm", C, y)
    for method in ("ibp", "linear", "crown"):
        ub = spec_upper_bound(graph, x.double(), torch.zeros(4, 1, 3, dtype=torch.float64), C, d, method=method)
        assert bool((ub >= -1e-9 * C.abs().sum(-1)).all()), method


# ------------------------------------------------- Linear over positions (3-d inputs)
class PerPosition(nn.Module):
    """``nn.Linear`` (and ``x @ W``) applied at every position of ``[N, P, d]``: torch traces
    it as view to ``[N * P, d]``, addmm, view back, which the lowering fuses into one dense op
    over the last dimension; the rows of the product are positions, never mixed batch items."""

    def __init__(self, P, d, w, act, matmul, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.P, self.d, self.matmul = P, d, matmul
        self.fc = nn.Linear(d, w)
        self.act = act
        self.W = nn.Parameter(torch.randn(w, w, generator=g) / w ** 0.5)
        self.out = nn.Linear(P * w, 3)
        with torch.no_grad():
            for m in (self.fc, self.out):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5 * 1.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)

    def forward(self, x):
        h = self.act(self.fc(x.view(x.shape[0], self.P, self.d)))
        h = self.act(h @ self.W) if self.matmul else h
        return self.out(h.flatten(1))

    def flat(self):
        """The same function with 2-d ops only (block-diagonal weights), for a cross-check."""
        P, w = self.P, self.fc.out_features
        first = nn.Linear(P * self.d, P * w)
        with torch.no_grad():
            first.weight.copy_(torch.block_diag(*[self.fc.weight] * P))
            first.bias.copy_(self.fc.bias.repeat(P))
        layers = [first, self.act]
        if self.matmul:
            mid = nn.Linear(P * w, P * w, bias=False)
            with torch.no_grad():
                mid.weight.copy_(torch.block_diag(*[self.W.T] * P))
            layers += [mid, self.act]
        return nn.Sequential(*layers, self.out).eval()


@FAST
@given(P=st.integers(2, 3), d=st.integers(1, 3), w=st.integers(2, 5), act=st.sampled_from(["relu", "tanh"]),
       matmul=st.booleans(), seed=st.integers(0, 2 ** 31 - 1), eps=st.floats(0.0, 1.0))
def test_linear_over_positions_is_lowered_and_sound(P, d, w, act, matmul, seed, eps):
    model = PerPosition(P, d, w, _act(act), matmul, seed).eval()
    g = torch.Generator().manual_seed(seed + 3)
    center = torch.randn(2, P * d, generator=g)
    gens = torch.randn(2, 2, P * d, generator=g) * eps / 2
    assert_bounds_match_flat(model, center, gens)


def assert_bounds_match_flat(model, center, gens):
    """``model``'s IBP and linear bounds contain sampled outputs and match those of its flat
    block-diagonal twin ``model.flat()`` (their float radii differ a little: the flat layers'
    fan-in counts the zero blocks)."""
    shape = tuple(center.shape[1:])
    graph, flat = get_graph(model, shape), get_graph(model.flat(), shape)
    y = forward_all(model, sample_box(center, gens))
    for method in ("ibp", "linear"):
        lo, hi = output_bounds(graph, center, gens, method=method)
        assert_inside(y, lo, hi)
        lo_f, hi_f = output_bounds(flat, center, gens, method=method)
        tol = 1e-4 * (1 + hi_f.abs() + lo_f.abs())
        assert bool(((lo - lo_f).abs() <= tol).all()) and bool(((hi - hi_f).abs() <= tol).all())


def test_linear_over_positions_keeps_a_narrow_violation():
    """Between the box centre's output and the largest sampled one: a violation that exists
    (a sampled point shows it) is never proved away; far above the largest, it is proved."""
    model = PerPosition(2, 2, 4, nn.ReLU(), True, 7).eval()
    z = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    lo, up = z - 0.3, z + 0.3
    x = lo + torch.rand(20000, 4, generator=torch.Generator().manual_seed(2)) * (up - lo)
    with torch.no_grad():
        y_c, y = model(z)[0, 0].item(), model(x)[:, 0]
    top = float(y.max())
    assert top > y_c + 1e-3  # the box has room above its centre
    spec = OutputRange(upper=[(y_c + top) / 2, 1e6, 1e6])
    res = verify_box(model, lo, up, spec, engine="auto", budget_s=5)
    assert res.status[0] == "falsified"
    cex = res.counterexamples[0]
    assert bool(((cex >= lo[0]) & (cex <= up[0])).all())
    with torch.no_grad():
        assert float(model(cex[None])[0, 0]) > (y_c + top) / 2
    far = verify_box(model, lo, up, OutputRange(upper=[top + 0.5, 1e6, 1e6]), engine="auto", budget_s=5)
    assert far.status == ["verified"], far.notes
