"""Probe round 12: false proofs through the bound operators added for addcmul and lerp.

ATen's kernels round intermediates that the affine lowering of these ops never forms:

* ``addcmul(s, t1, t2, value=v)`` computes ``s + (v * t1) * t2``: with the data in ``t1``, the
  product ``v * t1`` may overflow float32 (to inf) while ``v * t2 * t1`` is small, or fall into
  the subnormal range (an absolute error up to 2**-150, multiplied by ``|t2|``). The lowering
  charged 3 roundings relative to ``|s| + |v t1 t2|`` and proved ``out <= 1e10`` of a model
  that returns inf at an in-box point.
* ``lerp(s, e, w)`` computes ``s + w (e - s)`` (``|w| < 0.5``) or ``e - (e - s)(1 - w)``: ``e - s``
  may overflow where ``(1 - w) s + w e`` is far from it; the lowering proved ``out >= -1e38`` of
  a model returning -inf (one data end and a constant, two data ends, a tensor weight).

The planted violations are narrow (|x - 0.6| < 3e-4 of the box [-1, 1]), away from the corners
and the centre. Each model's value there is checked by a plain forward pass.
"""
import pytest
import torch
import torch.nn as nn

import pytest_latentaudit as pla
from pytest_latentaudit.core.specs import OutputRange
from pytest_latentaudit.engines.bounds import output_bounds
from pytest_latentaudit.engines.graph import get_graph


class M(nn.Module):
    def __init__(self, f, **bufs):
        super().__init__()
        self.f = f
        for k, v in bufs.items():
            self.register_buffer(k, v)

    def forward(self, x):
        return self.f(self, x)


def _bump(x):  # 1 at x = 0.6, 0 outside |x - 0.6| > 0.01
    return torch.relu(1 - (x - 0.6).abs() * 100)


CASES = {
    "addcmul_t1_overflow": (lambda s, x: torch.addcmul(s.c, _bump(x) * 3.45, s.t2, value=1e38),
                            dict(c=torch.tensor([0.0]), t2=torch.tensor([1e-30])), OutputRange(upper=1e10)),
    "lerp_start_data": (lambda s, x: torch.lerp(_bump(x) * 1.95e38, s.e, 0.25),
                        dict(e=torch.tensor([-1.5e38])), OutputRange(lower=-1e38)),
    "lerp_end_data": (lambda s, x: torch.lerp(s.e, _bump(x) * 1.95e38, 0.25),
                      dict(e=torch.tensor([-1.5e38])), OutputRange(upper=1e38)),
    "lerp_two_data": (lambda s, x: torch.lerp(_bump(x) * 1.95e38, _bump(x) * 0 - 1.5e38, 0.25),
                      dict(), OutputRange(lower=-1e38)),
    "lerp_tensor_weight": (lambda s, x: torch.lerp(_bump(x) * 1.95e38, s.e, s.w),
                           dict(e=torch.tensor([-1.5e38]), w=torch.tensor([0.25])), OutputRange(lower=-1e38)),
}


def _model(name):
    f, bufs, spec = CASES[name]
    return M(f, **bufs).eval(), spec


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_intermediate_overflow_is_not_bounded(name):
    m, _ = _model(name)
    with torch.no_grad():
        y = m(torch.tensor([[0.6]])).double()
    assert not bool(torch.isfinite(y).all())  # the planted violation is real
    g = get_graph(m, (1,), example=torch.zeros(2, 1))
    c, G = torch.zeros(1, 1), torch.ones(1, 1, 1)
    for method in ("ibp", "linear", "crown"):
        lo, hi = output_bounds(g, c, G, method=method)
        # no bound (the engines report one past float32's range as +-inf, nan or the float64
        # maximum): not both ends within float32's range
        big = float(torch.finfo(torch.float32).max)
        assert not bool(((lo >= -big) & (hi <= big)).all()), (name, method, lo, hi)


@pytest.mark.parametrize("name", ["addcmul_t1_overflow", "lerp_start_data", "lerp_two_data"])
def test_kernel_intermediate_overflow_is_not_proved(name):
    m, spec = _model(name)
    for engine in ("ibp", "auto"):
        r = pla.verify_box(m, torch.tensor([[-1.0]]), torch.tensor([[1.0]]), spec, engine=engine, budget_s=10)
        assert r.status[0] != "verified", (name, engine)


def test_addcmul_subnormal_intermediate_is_charged():
    """``v * t1`` subnormal: ``fl(v t1)`` is off by up to 2**-150, then multiplied by ``|t2|`` =
    1e30 (an absolute 7e-16 on values of 1e-10, far above 3 ulps of them)."""
    m = M(lambda s, x: torch.addcmul(s.c, x, s.t2, value=1e-30), c=torch.tensor([0.0]), t2=torch.tensor([1e30])).eval()
    gen = torch.Generator().manual_seed(0)
    pts = (torch.rand(512, 1, generator=gen) * 2e-10 + 1e-11).float()
    with torch.no_grad():
        y = m(pts).double()
    g = get_graph(m, (1,), example=pts[:2])
    G = torch.zeros(512, 1, 1)
    assert bool(((y - pts.double()).abs() > 1e-17).any())  # the kernel's error is real
    for method in ("ibp", "linear", "crown"):
        lo, hi = output_bounds(g, pts, G, method=method)
        assert bool((lo <= y).all()) and bool((y <= hi).all()), (method, float((lo - y).max()), float((y - hi).max()))


def test_addcmul_lerp_easy_boxes_still_proved():
    """Control: ordinary magnitudes are proved (the guard only bites near the largest float)."""
    m = M(lambda s, x: torch.addcmul(s.c, x, s.t2, value=0.5) + torch.lerp(x, s.c, 0.3),
          c=torch.tensor([1.0]), t2=torch.tensor([2.0])).eval()
    r = pla.verify_box(m, torch.tensor([[-1.0]]), torch.tensor([[1.0]]), OutputRange(upper=3.8), engine="ibp", budget_s=10)
    assert r.status[0] == "verified"


_NEAR_MAX = {
    "lerp_w0.3": lambda s, x: torch.lerp(x, s.c, 0.3),
    "lerp_w0.7_end_data": lambda s, x: torch.lerp(s.c, x, 0.7),
    "lerp_two_data": lambda s, x: torch.lerp(x, -x.flip(1), 0.4),
    "addcmul_t1": lambda s, x: torch.addcmul(s.c * 1e-30, x, s.c * 1e-40, value=30.0),
    "addcmul_t2": lambda s, x: torch.addcmul(s.c * 1e-30, s.c * 1e-38, x, value=30.0),
}


@pytest.mark.parametrize("name", sorted(_NEAR_MAX))
def test_addcmul_lerp_bounds_hold_near_the_largest_float(name):
    """Boxes of magnitudes 1e37 to 3e38 (zero-width and narrow): every bound within float32's
    range holds the model's value, inf included (a finite bound of an inf value is a false
    proof)."""
    gen = torch.Generator().manual_seed(3)
    cst = torch.sign(torch.randn(4, generator=gen)) * (1.0 + 2.3 * torch.rand(4, generator=gen)) * 1e38
    m = M(_NEAR_MAX[name], c=cst).eval()
    n = 256
    c = (torch.sign(torch.randn(n, 4, generator=gen)) * 10 ** (37 + 1.5 * torch.rand(n, 4, generator=gen))).float()
    c = c.clamp(-3.3e38, 3.3e38)
    w = c.abs().double() * 10 ** (-8 * torch.rand(n, 4, generator=gen, dtype=torch.float64))
    w[: n // 2] = 0
    G = torch.diag_embed(w)
    t = torch.rand(64, n, 4, generator=gen, dtype=torch.float64) * 2 - 1
    x = (c.double()[None] + t * w[None]).float()
    x = torch.maximum(torch.minimum(x, (c.double() + w).float()), (c.double() - w).float())
    g = get_graph(m, (4,), example=c[:2])
    with torch.no_grad():
        y = m(x.reshape(-1, 4)).reshape(64, n, 4).double()
    big = float(torch.finfo(torch.float32).max)
    for method in ("ibp", "linear", "crown"):
        lo, hi = output_bounds(g, c.double(), G, method=method)
        bounded = (lo >= -big) & (hi <= big)  # both ends within range: a claimed bound
        bad = bounded[None] & ~((y >= lo[None]) & (y <= hi[None]))
        assert not bool(bad.any()), (name, method, int(bad.sum()))


def test_lerp_unfused_product_overflow_is_not_bounded():
    """``w < -0.5``: ATen's ``e - (e - s)(1 - w)``; without a fused multiply-add (a build or
    device that does not contract it) ``(e - s)(1 - w)`` = 3.6e38 overflows at ``x = 0.6``, where
    ``(1 - w) s + w e`` = -2.4e38 (this CPU fuses it; the unfused formula, op by op, is -inf)."""
    e = torch.tensor([1.2e38])
    m = M(lambda s, x: torch.lerp(1e37 * (1 - _bump(x)), s.e, -2.0), e=e).eval()
    s0 = 1e37 * (1 - _bump(torch.tensor([[0.6]])))
    assert not bool(torch.isfinite(e - (e - s0) * (1 - torch.tensor(-2.0))).all())
    g = get_graph(m, (1,), example=torch.zeros(2, 1))
    big = float(torch.finfo(torch.float32).max)
    for method in ("ibp", "linear", "crown"):
        lo, hi = output_bounds(g, torch.zeros(1, 1), torch.ones(1, 1, 1), method=method)
        assert not bool(((lo >= -big) & (hi <= big)).all()), (method, lo, hi)
