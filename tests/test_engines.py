"""Engine-level checks that need no pytester: exact segments against dense sampling,
native bounds against auto_LiRPA on the same queries, and the ladder's rungs."""
import copy
import math

import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch import nn

from pytest_latentaudit import Accuracy, Direction, Prediction, audit, verify_box
from pytest_latentaudit.engines.bounds import output_bounds, spec_upper_bound
from pytest_latentaudit.engines.graph import trace
from pytest_latentaudit.engines.segment import NotPiecewiseLinear, certify


def _mlp(seed, d_in=6, width=24, depth=3, n_out=4, act=nn.ReLU):
    torch.manual_seed(seed)
    layers, i = [], d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(i, width), act()]
        i = width
    layers.append(nn.Linear(i, n_out))
    return nn.Sequential(*layers).eval()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), span=st.floats(0.05, 3.0), leaky=st.booleans())
def test_exact_segment_fraction_matches_dense_sampling(seed, span, leaky):
    net = _mlp(seed, act=(lambda: nn.LeakyReLU(0.2)) if leaky else nn.ReLU)
    g = trace(net, (6,))
    torch.manual_seed(seed + 1)
    z, v = torch.randn(5, 6), torch.randn(5, 6)
    with torch.no_grad():
        labels = net(z).argmax(1)
    tl, tu = torch.full((5,), -span), torch.full((5,), span)
    res = certify(g, z, v, tl, tu, Prediction(), labels)
    ts = torch.linspace(-span, span, 40001, dtype=torch.float64)
    with torch.no_grad():
        y = net((z[:, None].double() + ts[None, :, None] * v[:, None].double()).float())
    holds = (y.gather(2, labels[:, None, None].expand(-1, ts.numel(), 1))[..., 0] >
             y.scatter(2, labels[:, None, None].expand(-1, ts.numel(), 1), -math.inf).amax(2))
    dense = holds.double().mean(1)
    # a grid of step 2*span/40000 can misjudge at most about one grid cell per breakpoint
    slack = (res.n_pieces.double() + 2) * 2.0 / 40000
    assert torch.all((dense - res.fraction).abs() <= slack + 1e-6), (dense, res.fraction)
    for i, ivs in enumerate(res.bad_intervals):  # failing sub-intervals really fail
        for lo, hi in ivs:
            if hi - lo > 1e-6:
                mid = torch.tensor([(lo + hi) / 2])
                with torch.no_grad():
                    out = net((z[i] + mid[:, None] * v[i]).float())
                assert int(out.argmax()) != int(labels[i]) or out[0, labels[i]] <= out[0].max()


def test_exact_engine_rejects_non_piecewise_linear():
    g = trace(_mlp(0, act=nn.Tanh), (6,))
    with pytest.raises(NotPiecewiseLinear, match="not piecewise linear"):
        certify(g, torch.zeros(1, 6), torch.ones(1, 6), torch.tensor([-1.0]), torch.tensor([1.0]), Prediction(),
                torch.tensor([0]))


def test_exact_engine_in_audit_decides_every_seed_and_reports_fractions():
    net = _mlp(3)
    torch.manual_seed(4)
    z = torch.randn(16, 6)
    with torch.no_grad():
        labels = net(z).argmax(1)
    res = audit(net, (z, labels), direction=Direction.axis(1), eps=1.5, spec=Accuracy(0.5), engine="exact")
    assert res.counts["unknown"] == 0
    assert res.segment_fraction is not None and len(res.segment_fraction) == 16
    for i, s in enumerate(res.status):
        f = res.segment_fraction[i]
        assert (f == 1.0) if s == "verified" else (f < 1.0)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_native_and_auto_lirpa_agree_on_the_same_queries(method):
    """Both engines are sound: every sample lies in both boxes, so they must overlap;
    the native linear engine should not be much looser than auto_LiRPA CROWN."""
    from pytest_latentaudit.engines.lirpa import lirpa_spec_bounds  # must run in CI: no skip

    net = _mlp(7, d_in=8, width=32, depth=4)
    g = trace(net, (8,))
    torch.manual_seed(8)
    c = torch.randn(6, 8)
    G = torch.zeros(6, 2, 8)
    G[:, 0, 0], G[:, 1, 3] = 0.1, 0.1
    eye = torch.eye(4)
    C = torch.cat([eye, -eye])[None].expand(6, -1, -1)
    lo_n, hi_n = output_bounds(g, c, G, method="ibp" if method == "ibp" else "linear")
    rad = G.abs().sum(1)
    lb, ub = lirpa_spec_bounds(net, c - rad, c + rad, C[:, :4], method=method)
    s = torch.rand(4000, 6, 2) * 2 - 1
    with torch.no_grad():
        y = net((c[None] + torch.einsum("snk,nkd->snd", s, G)).reshape(-1, 8)).reshape(4000, 6, 4)
    for lo, hi in ((lo_n, hi_n), (lb, ub)):
        assert torch.all(y >= lo - 1e-5) and torch.all(y <= hi + 1e-5)
    assert torch.all(lo_n <= ub + 1e-5) and torch.all(lb <= hi_n + 1e-5)
    if method == "crown":
        assert float((hi_n - lo_n).mean()) <= 1.5 * float((ub - lb).mean()) + 1e-6


def test_auto_lirpa_engine_runs_through_verify_box():
    net = _mlp(11)
    torch.manual_seed(12)
    z = torch.randn(8, 6)
    with torch.no_grad():
        labels = net(z).argmax(1)
    lower, upper = z - 1e-3, z + 1e-3
    r = verify_box(net, lower, upper, Prediction(labels), engine="auto_lirpa:crown")
    native = verify_box(net, lower, upper, Prediction(labels), engine="linear")
    assert r.engine == "auto_lirpa:crown"
    assert r.counts()["unknown"] == 0 and r.counts()["verified"] >= 6
    assert r.status == native.status  # both decide every box here, so they must agree
    for s, rung in zip(r.status, r.rung):
        assert rung == ("auto_lirpa:crown" if s == "verified" else "attack")


def test_auto_lirpa_engine_bounds_a_decoder_into_a_cnn():
    # the engine runs auto_LiRPA in float64; 0.3 failed on conv layers there (a float32
    # tensor of its own), so every CNN fell back to attacks and nothing was verified
    from test_lirpa_backend import dcgan_pipeline

    model = dcgan_pipeline()
    torch.manual_seed(3)
    z = torch.randn(4, 8)
    with torch.no_grad():
        labels = model(z).argmax(1)
    lower, upper = z.clone(), z.clone()
    lower[:, 2] -= 0.05
    upper[:, 2] += 0.05
    r = verify_box(model, lower, upper, Prediction(labels), engine="auto_lirpa:crown", budget_s=20)
    native = verify_box(model, lower, upper, Prediction(labels), engine="linear", budget_s=20)
    assert not any("auto_LiRPA" in n for n in r.notes), r.notes
    assert bool(torch.isfinite(r.bound).all())
    assert r.counts()["verified"] == native.counts()["verified"] == 4
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_auto_lirpa_engine_bounds_sigmoid_and_tanh_networks(act):
    # 0.3 makes its Sigmoid/Tanh tangent tables in torch's default dtype: in the engine's
    # float64 every such network failed and fell back to attacks
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 3)).eval()
    z = torch.randn(8, 4)
    with torch.no_grad():
        labels = net(z).argmax(1)
    r = verify_box(net, z - 0.01, z + 0.01, Prediction(labels), engine="auto_lirpa:crown", budget_s=20)
    native = verify_box(net, z - 0.01, z + 0.01, Prediction(labels), engine="linear", budget_s=20)
    assert not any("auto_LiRPA" in n for n in r.notes), r.notes
    assert r.counts()["verified"] == native.counts()["verified"] == 8
    assert torch.get_default_dtype() == torch.float32


def test_ladder_reports_the_rung_that_decided_each_seed():
    net = _mlp(5, d_in=16, width=64, depth=4)
    torch.manual_seed(6)
    z = torch.randn(64, 16)
    with torch.no_grad():
        labels = net(z).argmax(1)
    res = audit(net, (z, labels), direction=Direction.subspace(torch.eye(16)[:, :2]), eps=0.3,
                spec=Accuracy(0.5), budget_s=30)
    rungs = res.rungs()
    assert sum(rungs.values()) == res.counts["verified"] + res.counts["falsified"]
    assert set(rungs) <= {"attack", "ibp", "linear", "bab", "bab-attack", "sampling", "exact", "replay", "blackbox"}
    for s, r in zip(res.status, res.rung):
        assert (r == "") == (s == "unknown")


def test_branch_and_bound_never_verifies_a_box_with_a_narrow_violation():
    """A 1-D net whose label flips only on a sliver of the box: BaB must not verify it."""
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        # y1 - y0 = relu(x - 0.501) + relu(0.499 - x) - 0.0015: negative only on (0.4975, 0.5025)
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([-0.501, 0.499]))
        net[2].weight.copy_(torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.0015, 0.0]))
    lower, upper = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    for engine in ("bab", "auto", "linear", "ibp"):
        r = verify_box(net, lower, upper, Prediction(torch.tensor([1])), engine=engine, budget_s=5)
        assert r.status[0] != "verified", engine
    r = verify_box(net, lower, upper, Prediction(torch.tensor([1])), engine="bab", budget_s=5)
    assert r.status[0] == "falsified"
    x = r.counterexamples[0]
    assert 0.0 <= float(x) <= 1.0
    assert int(net(x[None]).argmax()) == 0


@pytest.mark.parametrize("body", ["torch.cat([x, x], 1)", "x + x - 0.5 * x", "x - x"])
def test_a_tensor_used_twice_by_one_op_is_traced_as_written(body):
    """The graph must compute what the model computes: repeated arguments are kept."""
    ns = {}
    exec(f"import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n"
         f"        return {body}\n", ns)
    model = nn.Sequential(nn.Linear(3, 4), ns["M"](), nn.ReLU(), nn.Linear(8 if "cat" in body else 4, 2)).eval()
    g = trace(model, (3,))
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(g.forward(x).float(), model(x), atol=1e-6)
    G = torch.zeros(5, 1, 3)
    G[:, 0, 0] = 0.2
    lo, hi = output_bounds(g, x, G)
    s = torch.rand(500, 5, 1) * 2 - 1
    with torch.no_grad():
        y = model((x[None] + torch.einsum("snk,nkd->snd", s, G)).reshape(-1, 3)).reshape(500, 5, 2)
    assert torch.all(y >= lo - 1e-5) and torch.all(y <= hi + 1e-5)


def test_alpha_crown_is_sound_and_no_looser_than_crown():
    """Optimised lower slopes: every iterate is a bound, the kept minimum is below CROWN's
    and above every sampled margin."""
    from pytest_latentaudit.engines import bounds as B
    from pytest_latentaudit.engines.graph import get_graph

    net = _mlp(5, d_in=6, width=32, depth=4, n_out=4)
    torch.manual_seed(5)
    n, k = 6, 3
    z = torch.randn(n, 6)
    G = torch.zeros(n, k, 6)
    G[:, range(k), range(k)] = 0.4
    with torch.no_grad():
        lab = net(z).argmax(1)
    eye = torch.eye(4, dtype=torch.float64)
    C = eye[None] - eye[lab][:, None]
    d = torch.zeros(n, 4, dtype=torch.float64)
    d[range(n), lab] = -1
    g = get_graph(net, (6,))
    _, conc = B.linear_bounds(g, z, G)
    crown = B.backward_upper(g, conc, z, G, C, d)
    alpha = B.alpha_crown(g, conc, z, G, C, d, steps=15)
    assert bool((alpha <= crown + 1e-9).all())
    assert bool((alpha < crown - 1e-6).any()), "the optimisation should gain somewhere"
    s = torch.rand(3000, n, k) * 2 - 1
    x = z[None].repeat(3000, 1, 1)
    x[..., :k] += s * 0.4
    with torch.no_grad():
        y = net(x.reshape(-1, 6)).reshape(3000, n, 4).double()
    margins = torch.einsum("nmo,sno->snm", C, y) + d
    assert bool((margins.amax(0) <= alpha).all())
    assert all(nd.op.alpha_slope is None for nd in g.nodes if hasattr(nd.op, "alpha_slope"))


def test_crown_with_rounding_off_is_the_exact_arithmetic_bound_and_below_the_sound_one():
    """``bind(rounding=False)`` (the measure of what float soundness costs) bounds the exact
    function: CROWN runs (it crashed on the missing radius), its bound holds on samples of
    the float64 model, and the float-sound bound is never tighter."""
    from pytest_latentaudit.engines import bounds as B
    from pytest_latentaudit.engines.graph import get_graph

    net = _mlp(7, d_in=6, width=96, depth=4, n_out=4)  # > 64 unstable neurons: the upper-first path
    torch.manual_seed(7)
    n, k = 4, 3
    z = torch.randn(n, 6, dtype=torch.float64)
    G = torch.zeros(n, k, 6, dtype=torch.float64)
    G[:, range(k), range(k)] = 1.5
    with torch.no_grad():
        lab = net(z.float()).argmax(1)
    eye = torch.eye(4, dtype=torch.float64)
    C = eye[None] - eye[lab][:, None]
    d = torch.zeros(n, 4, dtype=torch.float64)
    g = get_graph(net, (6,))
    try:
        g.bind(dtype=torch.float32, rounding=False)
        exact = B.spec_upper_bound(g, z, G, C, d, method="crown")
    finally:
        g.bind(dtype=torch.float32, rounding=True)
    sound = B.spec_upper_bound(g, z, G, C, d, method="crown")
    assert bool((sound >= exact).all())
    s = torch.rand(2000, n, k, dtype=torch.float64) * 2 - 1
    x = z[None].repeat(2000, 1, 1)
    x[..., :k] += s * 1.5
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        y = net64(x.reshape(-1, 6)).reshape(2000, n, 4)
    rows = torch.einsum("nmo,sno->snm", C, y) + d
    assert bool((rows <= exact[None] + 1e-9).all())


@pytest.mark.parametrize("chunk", [1, 24 * 96, 5 * 96 * 96])
def test_crown_refinement_in_chunks_of_boxes_is_the_one_chunk_bound(monkeypatch, chunk):
    """``_crown_refine`` splits the boxes into chunks on a CPU (``REFINE_CHUNK`` numbers of
    backward rows each): every chunk size, down to one box per chunk and a last chunk
    shorter than the others, gives each box the bounds the one-chunk pass gives it, and
    they hold on samples of the model."""
    from pytest_latentaudit.engines import bounds as B
    from pytest_latentaudit.engines.graph import get_graph

    net = _mlp(11, d_in=6, width=96, depth=4, n_out=4)  # > 64 unstable neurons: both refine paths
    torch.manual_seed(11)
    n, k = 7, 3
    z = torch.randn(n, 6)
    G = torch.zeros(n, k, 6)
    G[:, range(k), range(k)] = torch.linspace(0.2, 1.5, n)[:, None]
    g = get_graph(net, (6,))
    monkeypatch.setattr(B, "REFINE_CHUNK", 1 << 40)
    _, whole = B.linear_bounds(g, z, G, crown=True)
    monkeypatch.setattr(B, "REFINE_CHUNK", chunk)
    _, parts = B.linear_bounds(g, z, G, crown=True)
    _, loose = B.linear_bounds(g, z, G)
    assert any(bool((a[1] < b[1] - 1e-6).any()) for a, b in zip(whole, loose)), "CROWN should tighten somewhere"
    for (lo1, hi1), (lo2, hi2) in zip(whole, parts):
        # float32 coefficients: a chunk's products may round otherwise. A neuron the upper
        # pass shows dead gets no lower pass (its ReLU is exact), whichever path a chunk takes
        assert torch.allclose(hi1, hi2, rtol=1e-6, atol=1e-6)
        live = hi1 > 0
        assert torch.allclose(lo1[live], lo2[live], rtol=1e-6, atol=1e-6)
    s = torch.rand(2000, n, k) * 2 - 1
    x = z[None].repeat(2000, 1, 1)
    x[..., :k] += s * G[:, range(k), range(k)][None]
    with torch.no_grad():
        y = net(x.reshape(-1, 6)).reshape(2000, n, 4).double()
    assert bool((y <= parts[-1][1][None]).all()) and bool((y >= parts[-1][0][None]).all())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), span=st.floats(0.01, 2.0), leaky=st.booleans(),
       depth=st.integers(2, 5))
def test_backward_cuts_hold_on_samples_and_never_loosen_the_bound(seed, k, span, leaky, depth):
    """A backward pass with cuts through the forward forms: rows that leave at a cut (here:
    all of them at the first, with an infinite threshold) get a bound that holds on samples
    of the float32 model; with no row leaving, the result is the plain pass's or smaller."""
    from pytest_latentaudit.engines import bounds as B
    from pytest_latentaudit.engines.graph import get_graph

    net = _mlp(seed, d_in=6, width=32, depth=depth, n_out=5, act=(lambda: nn.LeakyReLU(0.1)) if leaky else nn.ReLU)
    gen = torch.Generator().manual_seed(seed)
    n = 3
    z = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    G = torch.zeros(n, k, 6, dtype=torch.float64)
    G[:, range(k), range(k)] = span
    C = torch.randn(n, 4, 5, generator=gen, dtype=torch.float64)
    d = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    g = get_graph(net, (6,))
    c32, G32, C32, d32 = z.float(), G.float(), C.float(), d.float()
    forms, conc = B.linear_bounds(g, c32, G32)
    plain = B.backward_upper(g, conc, c32, G32, C32, d32)
    at_first_cut = B.backward_upper(g, conc, c32, G32, C32, d32, forms=forms,
                                    threshold=torch.full((n,), torch.inf))
    no_exit = B.backward_upper(g, conc, c32, G32, C32, d32, forms=forms, threshold=torch.full((n,), -torch.inf))
    per_row = B.backward_upper(g, conc, c32, G32, C32, d32, forms=forms,
                               threshold=torch.randn(n, 4, generator=gen, dtype=torch.float64))
    assert bool((no_exit <= plain).all())
    s = torch.rand(4000, n, k, generator=gen, dtype=torch.float64) * 2 - 1
    s[:2 ** k] = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * k).reshape(-1, 1, k)
    x = (z[None] + torch.einsum("snk,nkd->snd", s, G)).float()
    with torch.no_grad():
        y = net(x.reshape(-1, 6)).reshape(-1, n, 5).double()
    rows = (torch.einsum("nmo,sno->snm", C32.double(), y) + d32.double()).amax(0)
    for name, ub in [("plain", plain), ("first cut", at_first_cut), ("no exit", no_exit), ("per row", per_row)]:
        assert bool((rows <= ub).all()), (name, float((rows - ub).max()))


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_backward_with_few_unstable_neurons_matches_the_general_form(slope):
    """The backward step that touches only the unstable columns (at most a quarter) gives the
    general form's ``A+ au + A- al`` and ``A+ . cu``."""
    from pytest_latentaudit.engines import ops

    op = ops.LeakyReLUOp("r", slope) if slope else ops.ReLUOp("r")
    gen = torch.Generator().manual_seed(3)
    n, m, D = 4, 5, 64
    sign = torch.where(torch.rand(n, D, generator=gen) < 0.5, -1.0, 1.0)
    lo = sign * (torch.rand(n, D, generator=gen) + 0.3) - 0.1  # stable: active or dead
    hi = lo + torch.rand(n, D, generator=gen) * 0.2
    hi[:, :9], lo[:, :9] = lo[:, :9].abs() + 0.5, -lo[:, :9].abs() - 0.5  # a few unstable neurons per box
    perm = torch.stack([torch.randperm(D, generator=gen) for _ in range(n)])  # at different places
    lo, hi = lo.gather(1, perm), hi.gather(1, perm)
    assert 0 < int(((lo < 0) & (hi > 0)).sum(1).max()) <= D // 4
    A = torch.randn(n * m, D, generator=gen)
    (A_in,), const = op.backward(A, pre=[(lo, hi)])
    al, _, au, cu = (v.double() for v in op.relax(lo, hi))
    A3 = A.double().reshape(n, m, D)
    ref = (A3.clamp(min=0) * au[:, None] + A3.clamp(max=0) * al[:, None]).reshape(n * m, D)
    cref = torch.einsum("nmd,nd->nm", A3.clamp(min=0), cu).reshape(-1)
    assert torch.allclose(A_in.double(), ref, atol=1e-6)
    assert torch.allclose(const.double(), cref, atol=1e-5)


def test_a_relaxation_is_recomputed_after_an_in_place_change_of_its_bounds():
    from pytest_latentaudit.engines import ops

    op = ops.ReLUOp("r")
    lo, hi = torch.tensor([[-1.0, 0.5]]), torch.tensor([[1.0, 2.0]])
    first = [v.clone() for v in op.relaxed(lo, hi)]
    assert op.relaxed(lo, hi)[2] is op.relaxed(lo, hi)[2]  # remembered
    lo.add_(1.5)  # now both neurons are active: slope 1, no intercept
    au, cu = op.relaxed(lo, hi)[2:]
    assert not torch.equal(au, first[2]) and bool((au == 1).all()) and bool((cu == 0).all())


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_cut_through_forward_forms_is_the_exact_maximum_up_to_rounding(k):
    """``_cut_upper`` bounds ``a . x`` over ``l(s) <= x <= u(s)``, ``s`` in the unit box: the
    exact maximum is ``max over corners s of sum(a+ u(s) + a- l(s))`` (affine in ``s``); the
    cut must be above it, by no more than its rounding slack."""
    from pytest_latentaudit.engines.bounds import _cut_upper
    from pytest_latentaudit.engines.forms import LinForm

    gen = torch.Generator().manual_seed(k)
    n, m, D = 3, 5, 40
    lw, uw = torch.randn(n, k, D, generator=gen), torch.randn(n, k, D, generator=gen)
    lb = torch.randn(n, D, generator=gen)
    ub = lb + 3 + torch.rand(n, D, generator=gen)  # u(s) >= l(s) on the whole box
    A = torch.randn(n * m, D, generator=gen)
    const = torch.randn(n * m, generator=gen, dtype=torch.float64)
    cut = _cut_upper([None] * 4, [A, None], [LinForm(lw, lb, uw, ub), None], const, const.abs(), n, m)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * k).reshape(-1, k)
    a = A.double().reshape(n, m, D)
    u = lb.double()[None] * 0 + ub.double()[None] + torch.einsum("ck,nkd->cnd", corners, uw.double())
    lo = lb.double()[None] + torch.einsum("ck,nkd->cnd", corners, lw.double())
    exact = (torch.einsum("nmd,cnd->cnm", a.clamp(min=0), u) + torch.einsum("nmd,cnd->cnm", a.clamp(max=0), lo)).amax(0)
    exact = exact + const.reshape(n, m)
    assert bool((cut >= exact).all())
    assert float((cut - exact).max()) <= 5e-4 * float(exact.abs().max())  # the float32 slack, no more


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus])
def test_spec_deviation_bounds_the_float32_model_against_the_exact_function(act):
    """``segment.spec_deviation`` (what the auto_LiRPA engine adds to a bound of the exact
    function): on samples of the box, ``|C (y_float32 - y_float64)|`` never exceeds it, for
    ReLU and for smooth activations (whose slopes may exceed 1 and whose kernels round);
    the weights are scaled up so that the rounding is large enough to see."""
    from pytest_latentaudit.engines.graph import get_graph
    from pytest_latentaudit.engines.segment import spec_deviation

    net = _mlp(5, d_in=6, width=48, depth=4, n_out=4, act=act)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    gen = torch.Generator().manual_seed(1)
    n, k = 3, 2
    z = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    G = torch.zeros(n, k, 6, dtype=torch.float64)
    G[:, range(k), range(k)] = 0.3
    C = torch.randn(n, 5, 4, generator=gen, dtype=torch.float64)
    g = get_graph(net, (6,))
    for crown in (False, True):
        dev = spec_deviation(g, z.float(), G.float(), C.float(), crown=crown)
        s = torch.rand(3000, n, k, generator=gen, dtype=torch.float64) * 2 - 1
        x = (z[None] + torch.einsum("snk,nkd->snd", s, G)).float()  # the float32 points the model sees
        with torch.no_grad():
            y32 = net(x.reshape(-1, 6)).double()
            y64 = copy.deepcopy(net).double()(x.reshape(-1, 6).double())
        diff = torch.einsum("nmo,sno->snm", C, (y32 - y64).reshape(-1, n, 4)).abs().amax(0)
        assert bool((diff <= dev).all()), (act.__name__, crown, float((diff - dev).max()))
        assert bool((diff > 0).any())  # the test sees rounding at all


def test_spec_deviation_falls_back_where_an_op_has_no_signed_rule():
    from pytest_latentaudit.engines.graph import get_graph
    from pytest_latentaudit.engines.segment import spec_deviation

    net = nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 3)).eval()
    g = get_graph(net, (16,))
    z = torch.randn(2, 16)
    G = torch.zeros(2, 1, 16)
    G[:, 0, 0] = 0.1
    dev = spec_deviation(g, z, G, torch.randn(2, 2, 3))
    assert dev.shape == (2, 2) and bool(torch.isfinite(dev).all()) and bool((dev > 0).all())


def _float32_sums(terms32, bias32, order):
    """``bias + sum(terms)`` summed in float32 one addition at a time in ``order`` (a name),
    or as a pairwise tree: the orders a BLAS kernel might use, and the adversarial one where
    the partial sums climb to the sum of the positive terms before the negative ones come."""
    t = terms32
    if order == "pairwise":
        t = torch.cat([t, bias32[..., None]], -1)
        while t.shape[-1] > 1:
            if t.shape[-1] % 2:
                t = torch.cat([t, torch.zeros_like(t[..., :1])], -1)
            t = t[..., 0::2] + t[..., 1::2]
        return t[..., 0]
    if order == "reversed":
        t = t.flip(-1)
    elif order == "positives_first":
        t = t.sort(-1, descending=True).values
    elif order == "small_first":
        t = t.gather(-1, t.abs().argsort(-1))
    s = bias32.clone()
    for j in range(t.shape[-1]):
        s = s + t[..., j]
    return s


@pytest.mark.parametrize("case", ["mixed", "relu_input", "one_sign", "cancelling"])
def test_dense_rounding_radius_covers_float32_sums_in_any_order(case):
    """The model's rounding radius of a dense layer (``DenseOp.model_radius``: the summation
    tree bound ``gamma max(P, N)`` where the terms have both signs, never above ``gamma sum
    |terms|``) against float32 dot products summed by the BLAS kernel and in four other orders,
    each against the exact sum of the same float32 values. In the cancelling case (+-1000
    terms, positives first) the error reaches about a twentieth of the bound: the bound is the
    worst case of every rounding going one way, which real sums do not reach; the test shows
    that no order exceeds it, and that the sharper bound is below the general one."""
    from pytest_latentaudit.engines import ops
    from pytest_latentaudit.engines.graph import get_graph

    gen = torch.Generator().manual_seed(3)
    n, d_in, d_out = 6, 301, 24
    W = torch.randn(d_out, d_in, generator=gen)
    b = torch.randn(d_out, generator=gen)
    c = torch.randn(n, d_in, generator=gen)
    w = torch.rand(n, d_in, generator=gen) * 0.2
    if case == "relu_input":  # a ReLU layer's outputs: non-negative inputs, weights of both signs
        c = c.abs()
        w = torch.minimum(w, c)
    elif case == "one_sign":  # every term positive: max(P, N) is the whole sum, no gain
        W, b, c = W.abs(), b.abs(), c.abs() + 1
        w = torch.minimum(w, c - 0.5)
    elif case == "cancelling":  # +-1000 terms that cancel: large partial sums, a small result
        W = torch.where(torch.arange(d_in) % 2 == 0, 1.0, -1.0).expand(d_out, d_in).clone()
        W[:, 0] = 0.0
        b = torch.zeros(d_out)
        c = 1000 + torch.rand(n, d_in, generator=gen)
        w = torch.full((n, d_in), 1e-3)
    lo, hi = c - w, c + w
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    g = get_graph(nn.Sequential(lin).eval(), (d_in,))
    op = next(nd.op for nd in g.nodes if isinstance(nd.op, ops.DenseOp))
    mag, R = op.model_radius([(lo.to(g.dtype), hi.to(g.dtype))])
    general = (2 * op.u_in + ops.gamma(op.fan + 4, op.u)) * mag
    assert bool((R <= general * (1 + 1e-6) + 1e-30).all())
    if case != "one_sign":
        assert bool((R < 0.75 * general).all()), float((R / general).max())  # the sharper bound is in use

    worst = 0.0
    s = torch.rand(64, n, d_in, generator=gen)
    pts = (lo + (hi - lo) * torch.where(s < 0.25, 0.0, torch.where(s > 0.75, 1.0, s))).float()  # corners too
    terms32 = pts[:, :, None, :] * W.float()  # [S, n, out, in]: each product rounded to float32
    exact = (pts.double()[:, :, None, :] * W.double()).sum(-1) + b.double()
    for order in ("blas", "forward", "reversed", "positives_first", "small_first", "pairwise"):
        if order == "blas":
            y32 = lin(pts.reshape(-1, d_in)).detach().reshape(-1, n, d_out)
        else:
            y32 = _float32_sums(terms32, b.float().expand(*terms32.shape[:-1]).contiguous(), order)
        err = (y32.double() - exact).abs()
        assert bool((err <= R.double()).all()), (case, order, float((err / R.double()).max()))
        worst = max(worst, float((err / R.double()).max()))
    assert worst > 0  # rounding is seen at all
    if case == "cancelling":
        assert worst > 0.03, worst  # the adversarial order comes near the bound


def test_reduced_float32_matmul_precision_is_counted_and_our_arithmetic_goes_float64(monkeypatch):
    """Under ``set_float32_matmul_precision("high")`` torch may round float32 matmul inputs to
    TF32 (2^-11): the model's dense ops count it (``u_in``), and as our own float32 products
    would be rounded too, the graph binds in float64 and backward passes keep float64
    coefficients. A setting torch refuses to report counts as the coarsest (bfloat16)."""
    from pytest_latentaudit.engines import graph as G
    from pytest_latentaudit.engines import ops

    net = _mlp(2, d_in=6, width=16, depth=2, n_out=3)
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        g = G.get_graph(net, (6,))
        dense = [nd.op for nd in g.nodes if isinstance(nd.op, ops.DenseOp)]
        assert dense and all(op.u_in == 2.0 ** -11 for op in dense)
        assert g.reduced_float32 and g.dtype == torch.float64
        seen = []
        orig = ops.DenseOp.backward
        monkeypatch.setattr(ops.DenseOp, "backward", lambda self, A, *a, **k: seen.append(A.dtype) or orig(self, A, *a, **k))
        G_ = torch.zeros(4, 1, 6)
        G_[:, 0, 0] = 0.1
        ub_high = spec_upper_bound(g, z, G_, torch.randn(4, 2, 3), torch.zeros(4, 2), method="crown")
        assert seen and set(seen) == {torch.float64}
        # a float64 model too: its own products are full float64, but our fast passes are float32
        g64 = G.get_graph(copy.deepcopy(net).double(), (6,))
        assert g64.reduced_float32 and all(nd.op.u_in == 0 for nd in g64.nodes)
        seen.clear()
        spec_upper_bound(g64, z.double(), G_.double(), torch.randn(4, 2, 3).double(), torch.zeros(4, 2).double(),
                         method="crown")
        assert seen and set(seen) == {torch.float64}
        assert torch.get_float32_matmul_precision() == "high"  # the user's setting is left as it was
    finally:
        torch.set_float32_matmul_precision(before)
    g0 = G.get_graph(net, (6,))
    assert not g0.reduced_float32 and g0.dtype == torch.float32
    assert all(nd.op.u_in == 0 for nd in g0.nodes)
    assert bool(torch.isfinite(ub_high).all())

    def refuse():
        raise RuntimeError("mix of the legacy and new APIs")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", refuse)
    assert G.reduced_float32_inputs("cpu")[0] == 2.0 ** -8


def test_verify_box_under_inference_mode_matches_a_plain_run():
    """Tensors made under ``torch.inference_mode`` track no version counters: the per-op caches
    (relaxations, dense radii) then remember nothing instead of raising, and the result is the
    same as outside."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 200), nn.ReLU(), nn.Linear(200, 160), nn.ReLU(), nn.Linear(160, 3)).eval()
    z = torch.randn(6, 4)
    with torch.no_grad():
        lab = m(z).argmax(1)
    plain = verify_box(m, z - 0.05, z + 0.05, Prediction(lab), engine="linear", budget_s=10)
    with torch.inference_mode():
        inf = verify_box(m, z - 0.05, z + 0.05, Prediction(lab), engine="linear", budget_s=10)
    assert inf.status == plain.status and plain.counts()["verified"] > 0


def test_dense_radius_cache_misses_after_an_in_place_edit():
    """The dense radius is remembered per input bounds, weights and bias (identity and version
    counters): an in-place edit of any of them between two calls gives a fresh radius."""
    from pytest_latentaudit.engines import ops
    from pytest_latentaudit.engines.graph import get_graph

    lin = nn.Linear(200, 8)
    g = get_graph(nn.Sequential(lin).eval(), (200,))
    op = next(nd.op for nd in g.nodes if isinstance(nd.op, ops.DenseOp))
    lo = torch.randn(3, 200, dtype=g.dtype)
    hi = lo + 0.1
    first = op.model_radius([(lo, hi)])[1].clone()
    assert op.model_radius([(lo, hi)])[1] is op.model_radius([(lo, hi)])[1]  # remembered
    with torch.no_grad():
        op.bias.add_(1e4)  # a bias edit alone
    after_bias = op.model_radius([(lo, hi)])[1]
    assert bool((after_bias > first).all())
    with torch.no_grad():
        hi.add_(5.0)  # the bounds edited in place
    assert bool((op.model_radius([(lo, hi)])[1] > after_bias).all())


def _selected_forms(form, al, cl, au, cu):
    """The activation forms' rule as first written: both products of each side, then the
    one a slope's sign selects (a negative slope maps the other side's form)."""
    lwa, lwb = form.lw * al.unsqueeze(1), form.uw * al.unsqueeze(1)
    uwa, uwb = form.uw * au.unsqueeze(1), form.lw * au.unsqueeze(1)
    pos_l, pos_u = (al >= 0), (au >= 0)
    return (torch.where(pos_l.unsqueeze(1), lwa, lwb), torch.where(pos_l, form.lb * al, form.ub * al) + cl,
            torch.where(pos_u.unsqueeze(1), uwa, uwb), torch.where(pos_u, form.ub * au, form.lb * au) + cu)


def _random_form(seed, dtype, n=7, k=3, d=11):
    from pytest_latentaudit.engines.forms import LinForm

    g = torch.Generator().manual_seed(seed)
    lw = torch.randn(n, k, d, generator=g, dtype=dtype)
    uw = lw + torch.rand(n, k, d, generator=g, dtype=dtype) * 0.1
    lb = torch.randn(n, d, generator=g, dtype=dtype)
    return LinForm(lw, lb, uw, lb + torch.rand(n, d, generator=g, dtype=dtype)), g


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), slope=st.sampled_from([0.0, 0.01, 0.3, 1.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
@example(seed=2067, slope=0.0, dtype=torch.float64)  # a draw with no stable neuron of its own
def test_relu_forward_forms_are_the_selection_rule_bitwise(seed, slope, dtype):
    """ReLUOp.linear drops the selections (its slopes are never negative): it must give
    exactly the general rule's forms, or it is another relaxation."""
    from pytest_latentaudit.engines import ops

    form, _ = _random_form(seed, dtype)
    # both kinds of neuron in every draw: one stable (far above 0), one across 0
    form.lb[:, 0] += 100
    form.ub[:, 0] += 100
    form.lb[:, 1], form.ub[:, 1] = 0.0, 0.01
    lo, hi = form.concretize()
    op = ops.LeakyReLUOp("r", slope) if slope else ops.ReLUOp("r")
    op.u_ours = ops.unit(dtype)
    fast = op.linear(form, pre=[(lo, hi)])
    for a, b in zip((fast.lw, fast.lb, fast.uw, fast.ub), _selected_forms(form, *op.relaxed(lo, hi))):
        assert torch.equal(a, b)
    assert bool(((lo < 0) & (hi > 0)).any()) and bool(((lo >= 0) | (hi <= 0)).any())  # both kinds occur


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), signs=st.sampled_from(["mixed", "nonneg", "neg"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_activation_forward_forms_select_the_form_by_the_slopes_sign_bitwise(seed, signs, dtype):
    """ActivationOp.linear selects the form before the product, and skips the selection
    when every slope is >= 0: the same numbers as the rule of selecting products."""
    from pytest_latentaudit.engines import ops

    form, g = _random_form(seed, dtype)
    shape = form.lb.shape
    slopes = [torch.randn(shape, generator=g, dtype=dtype) for _ in range(2)]
    if signs != "mixed":
        slopes = [s.abs() * (1 if signs == "nonneg" else -1) for s in slopes]
    lines = (slopes[0], torch.randn(shape, generator=g, dtype=dtype), slopes[1],
             torch.randn(shape, generator=g, dtype=dtype))

    class Lines(ops.ActivationOp):
        def relax(self, lo, hi):
            return lines

    lo, hi = form.concretize()
    out = Lines("f").linear(form, pre=[(lo, hi)])
    for a, b in zip((out.lw, out.lb, out.uw, out.ub), _selected_forms(form, *lines)):
        assert torch.equal(a, b)
