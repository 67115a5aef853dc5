"""Products of two data tensors (``BilinearOp``, McCormick planes) and squares (``SquareOp``):
two branches multiplied, ``x * x`` and ``x ** 2``, sigmoid gating, GLU and squeeze-and-excitation
blocks (a ``[N, C, 1, 1] * [N, C, H, W]`` broadcast). Every engine's bounds must hold every
sampled output (box corners included) of the model's own float forward pass, in float32 and
float64; a planted narrow violation must be falsified and never verified, and a bound safely
above the maximum must be verified (the relaxation is usable, not vacuous)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from test_soundness import assert_inside, forward_all, sample_box

from pytest_latentaudit import OutputRange, Prediction, verify_box
from pytest_latentaudit.engines import ops
from pytest_latentaudit.engines.bounds import ibp_bounds, output_bounds
from pytest_latentaudit.engines.graph import get_graph
from pytest_latentaudit.engines.ops import UnsupportedLayer

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ["two_branches", "square", "pow", "gate", "glu", "se", "chain", "hard"]


class ProductNet(nn.Module):
    """A small network with a product of data tensors of one ``kind`` in it."""

    def __init__(self, kind, d, w, n_out):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(d, w), nn.Linear(d, w)
        self.g = nn.Linear(d, 2 * w)
        self.im = nn.Linear(d, 2 * 9)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 3)
        self.out = nn.Linear(3 * 9 if kind == "se" else w, n_out)
        self.prelu = nn.PReLU(w)
        with torch.no_grad():  # slopes of either sign, some above 1 (concave pieces)
            self.prelu.weight.uniform_(-1.5, 2.0)

    def forward(self, x):
        k = self.kind
        if k == "two_branches":
            h = self.a(x) * torch.tanh(self.b(x))
        elif k == "square":
            h = self.a(x)
            h = h * h - F.relu(self.b(x))
        elif k == "pow":
            h = self.a(x) ** 2 + torch.square(self.b(x))
        elif k == "gate":
            h = torch.sigmoid(self.a(x)) * self.b(x)
        elif k == "glu":
            h = F.glu(self.g(x), dim=1)
        elif k == "se":
            f = F.relu(self.conv(self.im(x).reshape(-1, 2, 3, 3)))
            s = torch.sigmoid(self.fc(f.mean((2, 3)))).reshape(-1, 3, 1, 1)
            h = (f * s).flatten(1)
        elif k == "hard":  # Hardswish, Hardsigmoid and PReLU, gated
            h = F.hardswish(3 * self.a(x)) * F.hardsigmoid(3 * self.b(x)) + self.prelu(2 * self.a(x))
        else:  # chain: a product of a product, with the first factor read twice
            p = self.a(x) * self.b(x)
            h = p * torch.tanh(p) + self.a(x)
        return self.out(h)


def _samples(center, gens):
    """``sample_box`` (random points, every corner, the centre) in the boxes' dtype."""
    return sample_box(center.float(), gens.float()).to(center.dtype) if center.dtype == torch.float32 else \
        _samples64(center, gens)


def _samples64(center, gens, n_samples=256):
    n, k = gens.shape[:2]
    s = torch.rand(n_samples, n, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * k).reshape(-1, 1, k)
    s = torch.cat([s, corners.expand(-1, n, k), torch.zeros(1, n, k, dtype=torch.float64)])
    return center[None] + torch.einsum("rnk,nkd->rnd", s, gens.reshape(n, k, -1)).reshape(s.shape[0], *center.shape)


def product_net(kind, d, w, n_out, seed, dtype=torch.float32, scale=1.0):
    torch.manual_seed(seed)
    m = ProductNet(kind, d, w, n_out)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m.to(dtype).eval()


@st.composite
def product_nets(draw, max_in=3):
    kind = draw(st.sampled_from(KINDS))
    d = draw(st.integers(1, max_in))
    w = draw(st.integers(1, 5))
    n_out = draw(st.integers(2, 3))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([1.0, 2.0]))
    return product_net(kind, d, w, n_out, seed, dtype, scale), d, n_out, seed, dtype


@FAST
@given(data=st.data(), net=product_nets())
def test_output_bounds_contain_sampled_products(data, net):
    model, d, n_out, seed, dtype = net
    g = torch.Generator().manual_seed(seed)
    k = data.draw(st.integers(1, 3))
    half = data.draw(st.floats(0.0, 0.5))
    center = torch.randn(2, d, generator=g).to(dtype)
    gens = (torch.randn(2, k, d, generator=g) * half / k).to(dtype)
    graph = get_graph(model, (d,), dtype=dtype)
    y = forward_all(model, _samples(center, gens))
    for method in ("ibp", "linear"):
        lo, hi = output_bounds(graph, center, gens, method=method)
        assert_inside(y.double(), lo, hi, rtol=0.0)


def _check_box_result(model, spec, labels, lower, upper, res, g):
    n = lower.shape[0]
    u = torch.rand(512, *lower.shape, generator=g).to(lower.dtype)
    x = torch.cat([lower[None] + u * (upper - lower)[None], lower[None], upper[None]])
    if lower.shape[1] <= 3:  # every corner
        for bits in range(2 ** lower.shape[1]):
            sel = torch.tensor([(bits >> i) & 1 for i in range(lower.shape[1])], dtype=torch.bool)
            x = torch.cat([x, torch.where(sel, upper, lower)[None]])
    y = forward_all(model, x)
    R = y.shape[0]
    margin = spec.margin(y.reshape(R * n, -1), None if labels is None else labels.repeat(R)).reshape(R, n).double()
    worst = margin.amax(0)
    finite = torch.isfinite(res.bound)
    assert bool((worst[finite] <= res.bound[finite]).all()), "a sampled margin exceeds the proven bound"
    for i, s in enumerate(res.status):
        if s == "verified":
            assert float(margin[:, i].max()) <= 0, f"box {i} verified but a sampled point violates"
        if s == "falsified":
            cex = res.counterexamples[i]
            assert cex is not None
            assert bool((cex >= lower[i]).all() and (cex <= upper[i]).all()), "counterexample outside its box"
            with torch.no_grad():
                yc = model(cex[None].to(lower.dtype))
            lab = None if labels is None else labels[i:i + 1]
            assert not bool(spec.holds(yc, lab)[0]), "counterexample does not violate the spec"


def check_prediction_boxes(model, d, n_out, seed, dtype, engine, half, spread=1.0):
    """Three random boxes (side up to ``2 half``, centres ``spread`` N(0, 1)) with a mostly
    correct label each, proved or falsified by ``engine``: every verdict checked by sampling
    (``_check_box_result``). Shared by the property tests of each family of ops."""
    g = torch.Generator().manual_seed(seed + 1)
    n = 3
    lower = (torch.randn(n, d, generator=g) * spread).to(dtype)
    upper = lower + (torch.rand(n, d, generator=g) * 2 * half).to(dtype)
    with torch.no_grad():
        pred = model((lower + upper) / 2).argmax(1)
    labels = torch.where(torch.rand(n, generator=g) < 0.8, pred, torch.randint(0, n_out, (n,), generator=g))
    spec = Prediction(labels)
    res = verify_box(model, lower, upper, spec, engine=engine, budget_s=0.3, seed=seed)
    assert not any("not supported" in note for note in res.notes), res.notes
    _check_box_result(model, spec, labels, lower, upper, res, g)


def check_bounds_contain_samples(model, d, seed, dtype, half, methods=("ibp", "linear", "crown", "crown64")):
    """Three axis boxes of half-width ``half`` around N(0, 1) centres: the sampled outputs of
    the model's own forward pass (random points, corners, centre) lie inside each method's
    output bounds, with no tolerance. Shared by the property tests of each family of ops."""
    from test_norm_softmax import _bounds  # (it imports this module)

    g = torch.Generator().manual_seed(seed)
    center = torch.randn(3, d, generator=g).to(dtype)
    gens = torch.diag_embed(torch.full((3, d), half, dtype=dtype))
    graph = get_graph(model, (d,))
    y = forward_all(model, sample_box(center.float(), gens.float()).to(dtype)).double()
    for method in methods:
        lo, hi = ibp_bounds(graph, center, gens)[-1] if method == "ibp" else _bounds(graph, center, gens, method)
        assert_inside(y, lo, hi, rtol=0.0)


def check_output_range_near_the_maximum(model, d, seed, dtype, engine, side, q):
    """An OutputRange bound placed among the sampled outputs of two random boxes (side up to
    ``side``), ``q`` of the outputs' scale above (``q > 0``) or below their sampled maximum:
    never a false proof, counterexamples real."""
    g = torch.Generator().manual_seed(seed + 2)
    lower = torch.randn(2, d, generator=g).to(dtype)
    upper = lower + (torch.rand(2, d, generator=g) * side).to(dtype)
    x = _samples((lower + upper) / 2, torch.diag_embed((upper - lower) / 2))
    y = forward_all(model, x).double()
    top = y.amax(0)  # [2, n_out]
    spec = OutputRange(upper=(top.amax(0) + q * (1 + top.abs().amax(0))).tolist())
    res = verify_box(model, lower, upper, spec, engine=engine, budget_s=0.3, seed=seed)
    assert not any("not supported" in note for note in res.notes), res.notes
    _check_box_result(model, spec, None, lower, upper, res, g)


@FAST
@given(data=st.data(), net=product_nets(), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_verify_box_sound_on_products(data, net, engine):
    model, d, n_out, seed, dtype = net
    check_prediction_boxes(model, d, n_out, seed, dtype, engine, half=data.draw(st.floats(0.0, 0.5)))


@FAST
@given(data=st.data(), net=product_nets(max_in=2), engine=st.sampled_from(["ibp", "linear", "bab", "auto"]))
def test_output_range_near_the_sampled_maximum(data, net, engine):
    """An OutputRange bound placed among the sampled outputs: never a false proof."""
    model, d, n_out, seed, dtype = net
    check_output_range_near_the_maximum(model, d, seed, dtype, engine, side=data.draw(st.floats(0.0, 1.0)),
                                        q=data.draw(st.sampled_from([-1e-3, 1e-3, 0.05])))


# ----------------------------------------------------------------- planted violations
class Bump(nn.Module):
    """``(x0 - c) * (c - x0)`` through two separate affine branches (a product of two data
    tensors, not recognisable as a square), plus ``0.1 x1 * x1``: at most ``0.1 x1^2``, reached
    only at ``x0 = c``."""

    def __init__(self, c, square="mul"):
        super().__init__()
        self.p, self.q = nn.Linear(2, 1), nn.Linear(2, 1)
        self.square = square
        with torch.no_grad():
            self.p.weight.copy_(torch.tensor([[1.0, 0.0]]))
            self.p.bias.fill_(-c)
            self.q.weight.copy_(torch.tensor([[-1.0, 0.0]]))
            self.q.bias.fill_(c)

    def forward(self, x):
        x1 = x[:, 1:2]
        sq = x1 * x1 if self.square == "mul" else x1 ** 2
        return self.p(x) * self.q(x) + 0.1 * sq


@SLOW
@given(c=st.floats(0.1, 0.9), square=st.sampled_from(["mul", "pow"]),
       engine=st.sampled_from(["bab", "auto", "linear", "ibp"]))
def test_planted_narrow_violation_is_found_and_never_verified(c, square, engine):
    model = Bump(c, square).eval()
    lower, upper = torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0, 0.5]])  # x1 fixed: maximum 0.025 at x0 = c
    grid = torch.stack([torch.linspace(0, 1, 20001), torch.full((20001,), 0.5)], 1)
    with torch.no_grad():
        top = float(model(grid).max())
    # just below the sampled maximum: violated only where (x0 - c)^2 < 1e-6
    res = verify_box(model, lower, upper, OutputRange(upper=top - 1e-6), engine=engine, budget_s=2.0)
    assert get_graph(model, (2,)) is not None  # the product is bounded, not refused
    assert res.status[0] != "verified"
    if engine in ("bab", "auto"):
        assert res.status[0] == "falsified"
    if res.status[0] == "falsified":
        cex = res.counterexamples[0]
        assert bool((cex >= lower[0]).all() and (cex <= upper[0]).all())
        with torch.no_grad():
            assert float(model(cex[None])) > top - 1e-6  # re-checked by a plain forward pass
        assert abs(float(cex[0]) - c) < 2e-3


@pytest.mark.parametrize("engine", ["bab", "auto"])
@pytest.mark.parametrize("square", ["mul", "pow"])
def test_bound_safely_above_the_maximum_is_verified(engine, square):
    model = Bump(0.3, square).eval()
    lower, upper = torch.tensor([[0.0, 0.4]]), torch.tensor([[1.0, 0.6]])  # max 0.1 * 0.36 = 0.036
    res = verify_box(model, lower, upper, OutputRange(upper=0.04), engine=engine, budget_s=5.0)
    assert res.status == ["verified"]


def test_one_linear_bound_proves_what_intervals_cannot():
    """``x y - x y'`` with two product nodes of the same factors: intervals subtract the two
    ranges ([1, 4] - [1, 4]), the linear relaxation cancels the planes' slopes and keeps only
    their gap (``2 rx ry = 0.5``): the linear engine proves ``<= 0.6`` without splitting."""

    class Diff(nn.Module):
        def forward(self, x):
            u, v = x[:, :1], x[:, 1:]
            return u * v - (u + 0.0) * (v + 0.0)

    model = Diff().eval()
    graph = get_graph(model, (2,))
    assert [type(n.op).__name__ for n in graph.nodes].count("BilinearOp") == 2
    lower, upper = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])
    spec = OutputRange(upper=0.6, lower=-0.6)
    assert verify_box(model, lower, upper, spec, engine="ibp", budget_s=1.0).status != ["verified"]
    assert verify_box(model, lower, upper, spec, engine="linear", budget_s=1.0).status == ["verified"]


# ------------------------------------------------------------------ float rounding
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), scale=st.sampled_from([1.0, 1e3, 1e6, 1e-20]),
       kind=st.sampled_from(["two_branches", "square", "se", "glu"]))
def test_float32_rounding_of_products_is_covered(seed, scale, kind):
    """Zero-width boxes (the trace check's case) at large and tiny magnitudes: the model's own
    float32 product lies inside the bounds, which are only the rounding radii wide."""
    model = product_net(kind, 3, 4, 2, seed, torch.float32, 1.0)
    with torch.no_grad():
        model.out.weight.mul_(scale)
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(8, 3, generator=g) * 3
    graph = get_graph(model, (3,))
    with torch.no_grad():
        y = model(c).double()
    gens = torch.zeros(8, 1, 3)
    lo, hi = ibp_bounds(graph, c, gens)[-1]
    assert bool((lo <= y).all() and (y <= hi).all())
    for method in ("linear",):
        lo, hi = output_bounds(graph, c, gens, method=method)
        assert bool((lo <= y).all() and (y <= hi).all())


def test_bilinear_radius_covers_one_float32_rounding():
    """|fl32(x y) - x y| <= u |x y|: the op's radius is at least that, elementwise."""
    op = ops.BilinearOp("mul", (4,), [(4,), (4,)])
    op.u = 2.0 ** -24
    op.u_ours = 2.0 ** -53
    x = torch.tensor([[1.0 + 2 ** -23, 3.0, -7.0, 1e30]], dtype=torch.float64)
    y = torch.tensor([[1.0 + 2 ** -23, 1 / 3, 5.0, 1e10]], dtype=torch.float64)
    R = op.radius([(x, x), (y, y)])
    exact = x * y
    fl = (x.float() * y.float()).double()
    assert bool(((fl - exact).abs() <= R).all())
    assert float(R[0, 3]) == float("inf")  # 1e40 overflows float32: no finite bound


def test_products_of_other_dtypes_and_powers_are_refused():
    class Pow(nn.Module):  # integer powers 2 to 8 are bounded (PowOp); not 2.5
        def forward(self, x):
            return x ** 2.5

    with pytest.raises(UnsupportedLayer, match="exponent"):
        get_graph(Pow().eval(), (2,))
    res = verify_box(Pow().eval(), torch.zeros(1, 2), torch.ones(1, 2) * 0.1, OutputRange(upper=1.0),
                     engine="auto", budget_s=0.5)
    assert res.status[0] != "verified"

    class BatchMix(nn.Module):  # a product across the batch dimension (x[0] broadcast)
        def forward(self, x):
            return x * x.sum(0, keepdim=True)

    with pytest.raises(UnsupportedLayer):
        get_graph(BatchMix().eval(), (2,))


def test_square_of_the_same_tensor_uses_the_square_relaxation():
    class Sq(nn.Module):
        def forward(self, x):
            return x * x.clone() + x.pow(2)

    graph = get_graph(Sq().eval(), (2,))
    kinds = [type(n.op).__name__ for n in graph.nodes]
    assert kinds.count("SquareOp") == 2 and "BilinearOp" not in kinds
    # x^2 on [-1, 1]: the lower line of the square is the tangent 0, not a McCormick plane (-1)
    lo, hi = output_bounds(graph, torch.zeros(1, 2), torch.eye(2)[None], method="linear")
    assert float(lo.min()) > -1e-5 and float(hi.max()) < 2.0 + 1e-5


# --------------------------------------------------------------- auto_LiRPA cross-check
LIRPA_KINDS = ["two_branches", "square", "gate"]


@pytest.mark.parametrize("kind", LIRPA_KINDS)
def test_tightness_against_auto_lirpa(kind):
    """Both sound on sampled points; how tight ours is against auto_LiRPA CROWN is printed."""
    from pytest_latentaudit.engines import lirpa_compat
    from pytest_latentaudit.engines.lirpa import lirpa_spec_bounds

    lirpa_compat.import_auto_lirpa()  # installed with the project: an error here, not a skip

    model = product_net(kind, 3, 5, 2, 7)
    g = torch.Generator().manual_seed(3)
    center = torch.randn(4, 3, generator=g)
    half = torch.full((4, 3), 0.2)
    lower, upper = center - half, center + half
    C = torch.eye(2)[None].expand(4, 2, 2)
    try:
        llb, lub = lirpa_spec_bounds(model, lower, upper, C, "crown")
    except Exception as exc:  # noqa: BLE001 - 0.3 may not parse an op: only ours is then checked
        pytest.skip(f"auto_LiRPA 0.3 does not bound this model: {exc}")
    graph = get_graph(model, (3,))
    lo, hi = output_bounds(graph, center, torch.diag_embed(half), method="linear")
    x = sample_box(center, torch.diag_embed(half))
    y = forward_all(model, x).double()
    assert_inside(y, lo, hi, rtol=0.0)
    assert_inside(y, llb.double(), lub.double(), rtol=1e-5)
    ours, theirs = float((hi - lo).mean()), float((lub - llb).double().mean())
    print(f"{kind}: mean width ours {ours:.4g}, auto_LiRPA crown {theirs:.4g}, sampled {float((y.amax(0) - y.amin(0)).mean()):.4g}")
    res = verify_box(model, lower, upper, Prediction(model(center).argmax(1)), engine="auto_lirpa:crown", budget_s=1.0)
    _check_box_result(model, Prediction(model(center).argmax(1)), model(center).argmax(1), lower, upper, res,
                      torch.Generator().manual_seed(0))
