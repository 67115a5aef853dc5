"""A leaky ReLU's negative side is not exact in floating point: the kernel computes
``fl(x * fl(a))`` (the slope rounded to the model's dtype, then the product rounded), up to
1.2 unit roundoffs of ``|a x|`` away from ``a x`` on float32. Its lines, IBP bounds and the
exact-segment engine's float deviation used ``a x`` as exact (found by a helper's review;
no false proof was built from it, as later ops' charges covered it, which is no proof):
each must contain the model's own float32 values."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pytest_latentaudit.engines import ops

# fl32(0.01) < 0.01 (the model lies above a x), fl32(0.1) > 0.1 (below), 0.5 exact
SLOPES = [0.01, 0.1, 0.3, 0.5]


def _points(lo, hi, n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand((n,) + lo.shape, generator=g, dtype=torch.float64)
    x = (lo + (hi - lo) * t).to(torch.float32)  # float32 points of the interval (its ends are float32 numbers)
    return torch.minimum(torch.maximum(x, lo.float()), hi.float())


def _intervals():
    # dead, dead, across, across, active; float32 numbers, so the ends are points of the box
    lo = torch.tensor([-3.0, -7.0, -0.75, -2.0, 0.5], dtype=torch.float32).double()
    hi = torch.tensor([-0.1, -1.0, 0.375, 5.0, 2.0], dtype=torch.float32).double()
    return lo, hi


@pytest.mark.parametrize("a", SLOPES)
def test_leaky_relu_lines_and_ibp_contain_the_float32_kernel(a):
    op = ops.LeakyReLUOp("leaky", a)
    op.u, op.u_ours = ops.unit(torch.float32), ops.unit(torch.float64)
    lo, hi = _intervals()
    x = _points(lo, hi)
    y = F.leaky_relu(x, a).double()  # the model's own values, float32 kernel
    xd = x.double()
    al, cl, au, cu = op.relaxed(lo, hi)
    assert bool((y >= al * xd + cl).all()), float((al * xd + cl - y).max())
    assert bool((y <= au * xd + cu).all()), float((y - au * xd - cu).max())
    ilo, ihi = op.ibp((lo, hi))
    assert bool((y >= ilo).all()) and bool((y <= ihi).all())
    # and at the interval ends themselves, where a dead neuron's line is tight
    for v in (lo, hi):
        yv = F.leaky_relu(v.float(), a).double()
        vd = v.float().double()
        assert bool((yv >= al * vd + cl).all()) and bool((yv <= au * vd + cu).all())


def test_the_kernel_is_not_exact_on_the_negative_side():
    """The premise: without the padding, a dead neuron's line ``a x`` misses the model."""
    x = -torch.rand(100_000, generator=torch.Generator().manual_seed(1)) * 10
    for a in (0.01, 0.1):
        assert bool((F.leaky_relu(x, a).double() != x.double() * a).any())


@pytest.mark.parametrize("a", SLOPES)
def test_leaky_relu_linear_and_backward_forms_contain_the_float32_kernel(a):
    """The forward (linear) form and the backward step carry the padded intercepts: both
    bound the model's float32 output at float32 points of the box."""
    from pytest_latentaudit.engines.forms import LinForm

    op = ops.LeakyReLUOp("leaky", a)
    op.u, op.u_ours = ops.unit(torch.float32), ops.unit(torch.float64)
    lo, hi = _intervals()
    # the identity form over t in [-1, 1]: x = c + r t per neuron (k = D generators)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    D = lo.numel()
    form = LinForm(torch.diag(r)[None], c[None].clone(), torch.diag(r)[None], c[None].clone())
    out = op.linear(form, pre=[(lo[None], hi[None])])
    x = _points(lo, hi)
    t = (x.double() - c) / r
    y = F.leaky_relu(x, a).double()
    low = (t @ out.lw[0]) + out.lb[0]
    up = (t @ out.uw[0]) + out.ub[0]
    slack = 1e-12 * (1 + y.abs())  # our own float64 evaluation of the check
    assert bool((y >= low - slack).all()) and bool((y <= up + slack).all())
    # backward: rows +e_i and -e_i bound y_i from above and -y_i from above
    A = torch.cat([torch.eye(D), -torch.eye(D)]).double()
    (A_in,), const = op.backward(A, pre=[(lo[None], hi[None])])
    bound_up = (A_in @ xd_t(x).T).T + const  # [n, 2D]: sound upper bounds of A y at each x
    ay = torch.cat([y, -y], 1)
    assert bool((ay <= bound_up + slack.repeat(1, 2)).all()), float((ay - bound_up).max())


def xd_t(x):
    return x.double()


@pytest.mark.parametrize("a", [0.01, 0.1])
def test_exact_segment_deviation_covers_a_leaky_layer(a):
    """The exact engine's float deviation (``segment.float_deviation``) bounds |fl - exact|
    for a leaky ReLU on its own. (It held before the leaky side's rounding was added there
    too: the input's own rounding, carried at the slope, happened to cover it here; the
    term is what makes it hold by rule.)"""
    from pytest_latentaudit.engines.graph import get_graph
    from pytest_latentaudit.engines.segment import float_deviation

    model = nn.Sequential(nn.LeakyReLU(a)).eval()
    g = get_graph(model, (4,)).bind(dtype=torch.float64)
    center = torch.tensor([[-3.0, -5.0, -1.5, -8.0]], dtype=torch.float64)
    gens = torch.tensor([[[1.0, 2.0, 0.5, 1.0]]], dtype=torch.float64)
    dev = float_deviation(g, center, gens)
    x = (center + gens[:, 0] * (2 * torch.rand(4096, 4, generator=torch.Generator().manual_seed(2),
                                                    dtype=torch.float64) - 1)).to(torch.float32)
    err = (F.leaky_relu(x, a).double() - a * x.double()).abs().amax(0)
    assert bool((err <= dev.reshape(-1)).all()), (err, dev)
