"""The auto_LiRPA backend: soundness, tightness, generator support, import hygiene,
and that the user's model comes back untouched."""

import gc
import itertools
import os
import subprocess
import sys
import textwrap
import weakref

import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import pytest_latentaudit  # noqa: E402
from pytest_latentaudit.engines import lirpa_compat  # noqa: E402

# The backend must run wherever the README's set-up ran (CI included): a missing
# auto_LiRPA is an error here, not a skip.
lirpa_compat.import_auto_lirpa()

from pytest_latentaudit.engines import lirpa  # noqa: E402
from pytest_latentaudit.engines.lirpa import LIRPA_METHODS, LirpaUnsupported, lirpa_spec_bounds  # noqa: E402

TOL = 1e-5
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    # These models are tiny: extra intra-op threads buy nothing, and on a busy 2-core
    # machine they oversubscribe the CPU (measured 10-30x slowdowns of small ops).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------
# helpers


def make_mlp(seed, d_in, widths, d_out, activation):
    torch.manual_seed(seed)
    layers, prev = [], d_in
    for w in widths:
        layers += [nn.Linear(prev, w), activation()]
        prev = w
    layers.append(nn.Linear(prev, d_out))
    return nn.Sequential(*layers).eval()


def samples_in_box(lower, upper, n=200, seed=0):
    """[S, N, *shape]: n uniform points per row, plus every corner when there are few."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((n, *lower.shape), generator=g)
    pts = [lower + u * (upper - lower)]
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    d = flat_l.shape[1]
    if d <= 6:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))  # [2^d, d]
        c = flat_l + corners[:, None, :] * (flat_u - flat_l)  # [2^d, N, d]
        pts.append(c.reshape(-1, *lower.shape))
    return torch.cat(pts)


def spec_values(model, C, pts):
    s, n = pts.shape[:2]
    with torch.no_grad():
        out = model(pts.reshape(s * n, *pts.shape[2:])).reshape(s, n, -1)
    return torch.einsum("nmo,sno->snm", C, out)


def assert_sound(model, lower, upper, C, lb, ub, tol=TOL):
    vals = spec_values(model, C, samples_in_box(lower, upper))
    assert lb.shape == ub.shape == vals.shape[1:]
    assert bool((lb <= ub + tol).all())
    below = (lb - tol - vals).clamp(min=0).max().item()
    above = (vals - ub - tol).clamp(min=0).max().item()
    assert below == 0 and above == 0, f"bounds violated by {max(below, above):.3g}"


@st.composite
def mlp_problems(draw, activations=(nn.ReLU, nn.Tanh, nn.Sigmoid)):
    seed = draw(st.integers(0, 2**16))
    d_in = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    d_out = draw(st.integers(1, 3))
    activation = draw(st.sampled_from(activations))
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(seed + 1)
    center = torch.randn(n, d_in, generator=g)
    # some coordinates fixed (radius 0), like a box along a few latent directions
    radius = torch.rand(n, d_in, generator=g) * draw(st.sampled_from([0.01, 0.3, 1.5]))
    radius = radius * (torch.rand(n, d_in, generator=g) > 0.25)
    C = torch.randn(n, m, d_out, generator=g)
    model = make_mlp(seed, d_in, widths, d_out, activation)
    return model, center - radius, center + radius, C


# --------------------------------------------------------------------------------------
# (a) soundness, (b) tightness


@SETTINGS
@given(mlp_problems())
def test_bounds_are_sound_on_random_mlps(problem):
    model, lower, upper, C = problem
    for method in LIRPA_METHODS:
        lb, ub = lirpa_spec_bounds(model, lower, upper, C, method, alpha_iters=5)
        assert_sound(model, lower, upper, C, lb, ub)


@SETTINGS
@given(mlp_problems(activations=(nn.ReLU,)))
def test_crown_family_at_least_as_tight_as_ibp(problem):
    model, lower, upper, C = problem
    ibp_lb, ibp_ub = lirpa_spec_bounds(model, lower, upper, C, "ibp")
    for method in ("crown", "crown-ibp", "alpha-crown"):
        lb, ub = lirpa_spec_bounds(model, lower, upper, C, method, alpha_iters=5)
        assert bool((lb >= ibp_lb - TOL).all()) and bool((ub <= ibp_ub + TOL).all()), method


def exact_linear_bounds(model, lower, upper, C):
    """Exact range of C @ f(x) over the box for an affine f: center value +- |C J| r."""
    center, radius = (lower + upper) / 2, (upper - lower) / 2
    rows = []
    for i in range(lower.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None]).flatten(), center[i])
        cj = C[i] @ jac.reshape(jac.shape[0], -1)  # [m, d]
        mid = C[i] @ model(center[i][None]).flatten()
        dev = cj.abs() @ radius[i].flatten()
        rows.append((mid - dev, mid + dev))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def test_crown_is_exact_on_affine_generators_with_padded_transposed_convs():
    # No nonlinearity, so CROWN must be exact: checks the matrix-mode ConvTranspose2d
    # patch (padding, output_padding) to float precision, not just soundness.
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(3, 2 * 3 * 3), nn.Unflatten(1, (2, 3, 3)),
        nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1),                    # 3 -> 6
        nn.ConvTranspose2d(3, 1, 3, stride=2, padding=1, output_padding=1),  # 6 -> 12
        nn.Flatten(), nn.Linear(144, 4),
    ).eval()
    lower = torch.randn(2, 3)
    upper = lower + torch.tensor([[0.5, 0.0, 0.2], [0.1, 0.1, 0.1]])
    C = torch.randn(2, 3, 4)
    lb, ub = lirpa_spec_bounds(model, lower, upper, C, "crown")
    elb, eub = exact_linear_bounds(model, lower, upper, C)
    scale = 1 + eub.abs().max().item()
    assert torch.allclose(lb, elb, atol=1e-5 * scale) and torch.allclose(ub, eub, atol=1e-5 * scale)


# --------------------------------------------------------------------------------------
# (c) a DCGAN-style decoder composed with a small CNN classifier


class Decoder(nn.Module):
    def __init__(self, latent=8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, 8 * 4 * 4), nn.Unflatten(1, (8, 4, 4)),
            nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),  # 8x8
            nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1), nn.Sigmoid(),  # 16x16
        )

    def forward(self, z):
        return self.net(z)


def dcgan_pipeline(seed=0, latent=8):
    torch.manual_seed(seed)
    decoder = Decoder(latent)
    bn = decoder.net[3]
    with torch.no_grad():  # non-trivial running statistics, as after training
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    classifier = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    return nn.Sequential(decoder, classifier).eval()


@pytest.mark.parametrize("dtype", [None, torch.float64])
@pytest.mark.parametrize("method", ["crown", "ibp"])
def test_dcgan_decoder_into_cnn_is_sound_along_a_latent_direction(method, dtype):
    # dtype float64 is how the engine calls it: auto_LiRPA 0.3 then made the sparse rows of
    # a conv's unstable neurons in float32 and failed (every CNN fell back to attacks)
    model = dcgan_pipeline()
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(2, 8, generator=g)
    lower, upper = z0.clone(), z0.clone()
    lower[:, 2] -= 0.3  # a 1-D box: latent coordinate 2 varies, the rest is fixed
    upper[:, 2] += 0.3
    C = torch.tensor([[[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]]).repeat(2, 1, 1)  # class-0 margins
    before = torch.get_default_dtype()
    lb, ub = lirpa_spec_bounds(model, lower, upper, C, method, dtype=dtype)
    assert torch.get_default_dtype() == before
    assert lb.dtype == (dtype or torch.float32)
    assert_sound(model, lower, upper, C, lb.float(), ub.float())
    if method == "crown":
        ibp_lb, ibp_ub = lirpa_spec_bounds(model, lower, upper, C, "ibp")
        assert bool(((ub - lb) <= (ibp_ub - ibp_lb) + TOL).all())


def test_unsupported_layer_is_reported_by_name():
    model = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1)).eval()
    with pytest.raises(LirpaUnsupported, match=r"GELU"):
        lirpa_spec_bounds(model, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 1, 1))


# --------------------------------------------------------------------------------------
# (d) import hygiene


def _run_python(code):
    src = os.path.dirname(os.path.dirname(os.path.abspath(pytest_latentaudit.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_compat_import_is_lazy_and_leaves_global_state_alone():
    _run_python(
        """
        import sys, warnings, logging
        from pytest_latentaudit.engines import lirpa_compat, lirpa
        assert "torch" not in sys.modules, "importing the backend imported torch"
        assert "auto_LiRPA" not in sys.modules

        import torch  # a user's process has torch already
        filters = list(warnings.filters)
        handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
        limit = sys.getrecursionlimit()
        jit = torch._C._jit_set_profiling_executor(True), torch._C._jit_set_profiling_mode(True)
        torch._C._jit_set_profiling_executor(jit[0]); torch._C._jit_set_profiling_mode(jit[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = lirpa_compat.import_auto_lirpa()
        assert mod is sys.modules["auto_LiRPA"] and lirpa_compat.import_auto_lirpa() is mod
        assert warnings.filters == filters, "auto_LiRPA's warning filters leaked"
        assert logging.getLogger().handlers == handlers and logging.getLogger().level == level
        assert sys.getrecursionlimit() == limit
        assert (torch._C._jit_set_profiling_executor(jit[0]), torch._C._jit_set_profiling_mode(jit[1])) == jit
        assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
        # import-time stand-ins are gone again
        assert "tqdm" not in sys.modules or hasattr(sys.modules["tqdm"], "__file__")
        assert "numpy.lib.arraysetops" not in sys.modules or hasattr(sys.modules["numpy.lib.arraysetops"], "__file__")
        print(lirpa_compat.applied_patches())
        """
    )


def test_missing_auto_lirpa_gives_install_hint():
    _run_python(
        """
        import sys
        sys.modules["auto_LiRPA"] = None  # blocks the import, as if it were not installed
        from pytest_latentaudit.engines import lirpa_compat
        try:
            lirpa_compat.import_auto_lirpa()
        except ImportError as exc:
            assert "pip install --no-deps auto_LiRPA==0.3" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        """
    )


# --------------------------------------------------------------------------------------
# (e) the user's model is not touched


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [(id(p), p.requires_grad, p.device, p.dtype) for p in model.parameters()],
    )


@pytest.mark.parametrize("method", LIRPA_METHODS)
def test_user_model_and_inputs_are_left_untouched(method):
    model = dcgan_pipeline(seed=2)
    model[0].net[0].weight.requires_grad_(False)  # a mix of frozen and trainable weights
    before = _snapshot(model)
    lower = torch.randn(2, 8).requires_grad_(True)
    upper = (lower.detach() + 0.05).requires_grad_(True)
    C = torch.randn(2, 1, 3)

    lb, ub = lirpa_spec_bounds(model, lower, upper, C, method, alpha_iters=2)

    after = _snapshot(model)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[2] == after[2]
    assert all(p.grad is None for p in model.parameters())
    assert not lb.requires_grad and not ub.requires_grad
    assert lower.grad is None and upper.grad is None


def test_cache_reuses_rebuilds_on_weight_change_and_releases_models():
    model = make_mlp(0, 3, [6], 2, nn.ReLU)
    lower, upper, C = torch.zeros(4, 3), torch.ones(4, 3), torch.eye(2).repeat(4, 1, 1)
    lirpa_spec_bounds(model, lower, upper, C)
    (entry,) = lirpa._CACHE[model].values()
    lirpa_spec_bounds(model, lower[:2], upper[:2], C[:2])  # another batch size: same graph
    assert list(lirpa._CACHE[model].values()) == [entry]

    with torch.no_grad():
        model[-1].bias += 1.0  # in-place edit, as an optimizer step would do
    lb, _ = lirpa_spec_bounds(model, lower, upper, C)
    assert lirpa._CACHE[model][entry.key] is not entry  # rebuilt with the new weights
    assert_sound(model, lower, upper, C, lb, lirpa_spec_bounds(model, lower, upper, C)[1])

    ref = weakref.ref(model)
    del model, entry
    gc.collect()
    assert ref() is None, "the cache kept the model alive"


def test_argument_checks():
    model = make_mlp(0, 2, [3], 2, nn.ReLU)
    box = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="method"):
        lirpa_spec_bounds(model, *box, torch.ones(1, 1, 2), "beta-crown")
    with pytest.raises(ValueError, match="output columns"):
        lirpa_spec_bounds(model, *box, torch.ones(1, 1, 5))
    with pytest.raises(ValueError, match="empty box"):
        lirpa_spec_bounds(model, box[1], box[0], torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="eval mode"):
        lirpa_spec_bounds(model.train(), *box, torch.ones(1, 1, 2))


class _MadeConstant(nn.Module):
    """A forward that makes a float tensor without a dtype: float32 0.1 in the user's model."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x * torch.tensor(0.1))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_constant_made_in_forward_is_the_users_not_the_compute_dtypes():
    # auto_LiRPA builds in the compute dtype (float64) as torch's default; traced there,
    # torch.tensor(0.1) is float64 0.1, not the float32 0.1 the model multiplies by, and CROWN's
    # exact bound of this linear model fell 3e-6 short of the model's maximum
    model = _MadeConstant().eval()
    lo, hi = torch.full((1, 2), 1000.0), torch.full((1, 2), 1001.0)
    C = torch.ones(1, 1, 1)
    true_max = float((hi.double() * torch.tensor(0.1).double()).sum())  # float32 0.1, exactly
    try:
        _, ub = lirpa_spec_bounds(model, lo, hi, C, "crown", dtype=torch.float64)
    except LirpaUnsupported as exc:
        assert "without a dtype" in str(exc)
    else:
        assert float(ub) >= true_max, (float(ub), true_max)
