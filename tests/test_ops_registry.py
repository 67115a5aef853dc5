"""Per-op soundness, generated from the registry: every handled ATen op appears in at
least one small model below, and for each model hypothesis draws weights and boxes and
checks that (1) the lowered graph computes what the model computes and (2) every
sampled output of the model's own float32 forward pass lies inside the IBP and linear
bounds (and backward bounds through ``output_bounds``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_latentaudit.engines import registry
from pytest_latentaudit.engines.bounds import output_bounds
from pytest_latentaudit.engines.graph import get_graph


class Fn(nn.Module):
    """A small model: Linear(d, 8) -> body -> Linear(., 3), body written as ordinary code."""

    def __init__(self, body, d=3, mid=8, out_in=None, shape=None):
        super().__init__()
        self.pre = nn.Linear(d, mid)
        self.body = body
        self.shape = shape
        self.post = nn.LazyLinear(3) if out_in is None else nn.Linear(out_in, 3)

    def forward(self, x):
        h = self.pre(x)
        if self.shape is not None:
            h = h.reshape(h.shape[0], *self.shape)
        h = self.body(h)
        return self.post(h.reshape(h.shape[0], -1))


class L(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


# name -> (model builder, ops it exercises (informational))
EXAMPLES = {
    "relu": lambda: Fn(nn.ReLU()),
    "leaky": lambda: Fn(nn.LeakyReLU(0.2)),
    "leaky_steep": lambda: Fn(L(lambda h: F.leaky_relu(h, 1.5))),
    # rrelu in eval mode: leaky_relu with slope (lower + upper) / 2 (in [0, 1], above 1, negative);
    # the residual reads its input again (rrelu_with_noise writes only its noise buffer)
    "rrelu_eval": lambda: Fn(L(lambda h: torch.cat([nn.RReLU(0.1, 0.3).eval()(h) + h, F.rrelu(h, 1.2, 1.6),
                                                     F.rrelu(h, -0.5, -0.1)], 1)), out_in=24),
    "hardtanh_relu6": lambda: Fn(L(lambda h: F.relu6(h) + F.hardtanh(h, -0.5, 0.5))),
    "clamp": lambda: Fn(L(lambda h: torch.clamp(h, -0.3, 0.4) + h.clamp_min(0.1) - h.clamp_max(0.2))),
    "sigmoid_tanh": lambda: Fn(L(lambda h: torch.sigmoid(h) * 2 + torch.tanh(h))),
    "gelu": lambda: Fn(L(lambda h: F.gelu(h) + F.gelu(h, approximate="tanh"))),
    "silu_elu_softplus": lambda: Fn(L(lambda h: F.silu(h) + F.elu(h, 0.7) + F.softplus(h, 2.0) + F.selu(h))),
    # celu = elu(x, a, 1, 1 / a): small and large alpha, wide inputs
    "celu": lambda: Fn(L(lambda h: torch.cat([F.celu(h, 0.3), F.celu(4 * h, 2.5), nn.CELU()(h)], 1)), out_in=24),
    # softshrink: kinks at +-lambda, small, large and zero lambda
    "softshrink": lambda: Fn(L(lambda h: torch.cat([F.softshrink(h, 0.3), nn.Softshrink(1.5)(3 * h),
                                                    F.softshrink(h, 0.0)], 1)), out_in=24),
    "softshrink_sum": lambda: Fn(L(lambda h: (F.softshrink(h, 0.3) - 0.6 * h).sum(1, keepdim=True)), out_in=1),
    # integer powers 3 to 8 (odd: increasing; even: convex), the curvature from the interval
    "int_powers": lambda: Fn(L(lambda h: torch.cat([h ** 3, torch.pow(h, 4.0), (2 * h) ** 5, h.pow(6), h ** 7,
                                                    (h / 2) ** 8], 1)), out_in=48),
    "abs": lambda: Fn(L(lambda h: h.abs())),
    # log_sigmoid_forward (concave, increasing: chord below, tangent above), wide inputs too
    "logsigmoid": lambda: Fn(L(lambda h: torch.cat([F.logsigmoid(h), nn.LogSigmoid()(30 * h)], 1)), out_in=16),
    # constants shaped by the data: their value whatever the input
    "fills": lambda: Fn(L(lambda h: h * torch.full_like(h, 0.3) + torch.zeros_like(h) - torch.ones_like(h)
                          + h.new_full(h.shape, 1e-3) + h.new_zeros(h.shape) + h.new_ones(h.shape)
                          + F.relu(h).clone().fill_(0.7) - torch.ones_like(h).zero_() + torch.fill(h, 0.2))),
    "max_min": lambda: Fn(L(lambda h: torch.maximum(h[:, :4], h[:, 4:]) - torch.minimum(h[:, :4], h[:, 4:])),
                          out_in=4),
    # maximum/minimum/clamp against constant tensors (a buffer, a float64 literal, limits that
    # broadcast the input up) and clamp with data limits: c + relu(x - c) and c - relu(c - x)
    "max_min_const": lambda: Fn(_MaxMinConst()),
    # torch.where / masked_fill with a constant mask (a buffer, a literal; constant or data
    # operands, broadcast up, a float64 0-dim fill value): an exact per-element selection
    "where_const": lambda: Fn(_WhereConst()),
    # addcmul / lerp with constant extra operands (buffers, literals, weights of either sign and
    # beyond [0, 1], a tensor weight, data on either side, two data ends): affine in the data
    "addcmul_lerp": lambda: Fn(_AddcmulLerp()),
    "slices": lambda: Fn(L(lambda h: torch.cat([h[:, :2], h.narrow(1, 3, 2), h.select(1, 5)[:, None],
                                                h.index_select(1, torch.tensor([0, 7]))], 1)), out_in=7),
    "split_chunk": lambda: Fn(L(lambda h: torch.cat([*h.split(3, dim=1)[:2], *h.chunk(2, dim=1)], 1)), out_in=14),
    "unbind_stack": lambda: Fn(L(lambda h: torch.stack(h.unbind(1)[:3], dim=1)), out_in=3),
    "add_alpha": lambda: Fn(L(lambda h: torch.add(h, h.relu(), alpha=-0.5) + torch.sub(h, 1.0, alpha=2)
                               + h.add(h * 2, alpha=3.0))),
    "rsub_neg_div": lambda: Fn(L(lambda h: (1.0 - h) + (-h) / 3 + h / torch.tensor(2.0))),
    "mul_const": lambda: Fn(L(lambda h: h * torch.linspace(-1, 1, 8) + 0.5 * h)),
    "mean_sum": lambda: Fn(L(lambda h: torch.cat([h.mean(1, keepdim=True), h.sum(-1, keepdim=True)], 1)), out_in=2),
    "amax_max": lambda: Fn(L(lambda h: torch.cat([h.amax(-1, keepdim=True), h.max(1, keepdim=True).values], 1)),
                           out_in=2),
    "view_permute": lambda: Fn(L(lambda h: h.view(h.shape[0], 2, 4).permute(0, 2, 1).transpose(1, 2)
                                 .flatten(1).unsqueeze(1).squeeze(1)), out_in=8),
    "expand_repeat_flip": lambda: Fn(L(lambda h: torch.cat([h[:, :1].expand(-1, 3), h.repeat(1, 2).flip(1)], 1)),
                                     out_in=19),
    # roll, channel shuffle (permutations within a sample), cumsum (sums), amin / min(dim) (-max(-x))
    "roll_shuffle_cumsum_amin": lambda: Fn(L(lambda h: torch.cat([
        torch.roll(h, 2, 1), torch.roll(h.view(h.shape[0], 2, 4), (1, -1), (1, 2)).flatten(1),
        nn.ChannelShuffle(2)(h.view(h.shape[0], 4, 2)).flatten(1), torch.cumsum(h, 1),
        torch.cumsum(h.view(h.shape[0], 2, 4), -1).flatten(1), h.amin(1, keepdim=True),
        h.min(1, keepdim=True).values, h.view(h.shape[0], 2, 4).amin((1, 2))[:, None]], 1)), out_in=43),
    "pad": lambda: Fn(L(lambda h: F.pad(h, (1, 2)) + F.pad(h, (2, 1), value=0.5)), out_in=11),
    "conv1d_pool": lambda: Fn(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.MaxPool1d(2), nn.AvgPool1d(1),
                                            nn.AdaptiveAvgPool1d(2)), shape=(1, 8), out_in=4),
    "conv2d_bn": lambda: Fn(nn.Sequential(nn.Conv2d(1, 2, 2, padding=1), nn.BatchNorm2d(2).eval(), nn.Tanh(),
                                          nn.MaxPool2d(2), nn.Upsample(scale_factor=2),
                                          nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1)), shape=(1, 2, 4), out_in=2),
    "convtranspose_bilinear": lambda: Fn(nn.Sequential(nn.ConvTranspose2d(2, 1, 2, stride=2), nn.ReLU(),
                                                       nn.Upsample(scale_factor=2, mode="bilinear")),
                                         shape=(2, 2, 2), out_in=64),
    "bn1d_dropout": lambda: Fn(nn.Sequential(nn.BatchNorm1d(8).eval(), nn.Dropout(0.3).eval(), nn.ReLU())),
    "parameter_in_forward": lambda: Fn(_ParamAdd()),
    "reshape_noncontiguous": lambda: Fn(L(lambda h: h.reshape(h.shape[0], 2, 4).transpose(1, 2).reshape(h.shape[0], 8))),
    "linear_without_bias": lambda: Fn(nn.Sequential(nn.Linear(8, 5, bias=False), nn.ReLU()), out_in=5),
    "split_sizes": lambda: Fn(L(lambda h: torch.cat(h.split([3, 5], dim=1)[::-1], 1))),
    "upsample_1d": lambda: Fn(nn.Sequential(nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=2, mode="linear"),
                                            nn.Upsample(scale_factor=2, mode="nearest-exact")), shape=(1, 8), out_in=64),
    "nearest_exact_2d": lambda: Fn(nn.Upsample(scale_factor=2, mode="nearest-exact"), shape=(2, 2, 2), out_in=32),
    "hooks": lambda: _hooked(),
    # products of two data tensors (McCormick), squares, and the gates built from them
    "products": lambda: Fn(L(lambda h: torch.cat([h[:, :4] * torch.tanh(h[:, 4:]), h[:, :4] * h[:, :4],
                                                   h[:, 4:] ** 2, F.glu(h, 1)], 1)), out_in=16),
    "squeeze_excite": lambda: Fn(_SqueezeExcite(), shape=(2, 2, 2), out_in=8),
    "hard_prelu": lambda: Fn(nn.Sequential(nn.Hardswish(), _PReLUWide(), nn.Hardsigmoid())),
    "bmm_transposed": lambda: _bmm_transposed(),
    # einsum with a constant matrix: view to [1, batch x rows, k], bmm, view back (graph._merged_batch_bmm)
    "einsum_const": lambda: Fn(_EinsumConst(), out_in=29),
    # elementwise exp, log, sqrt, rsqrt, reciprocal and division by a data tensor (domains kept
    # positive: softplus + 0.1), LayerNorm, softmax and log_softmax (tests/test_norm_softmax.py)
    "exp_log_sqrt": lambda: Fn(L(lambda h: torch.cat([torch.exp(h), torch.log(F.softplus(h) + 0.1),
                                                       torch.sqrt(F.softplus(h)), torch.rsqrt(F.softplus(h) + 0.1),
                                                       torch.reciprocal(F.softplus(h) + 0.1)], 1)), out_in=40),
    # expm1 and exp2 (convex, increasing), log1p (concave, increasing on > -1; here > -0.9)
    "expm1_log1p_exp2": lambda: Fn(L(lambda h: torch.cat([torch.expm1(h), torch.log1p(F.softplus(h) - 0.9),
                                                           torch.exp2(3 * h), torch.expm1(-20 * h.abs()),
                                                           torch.log1p(1e-3 * h.abs())], 1)), out_in=40),
    "log1p": lambda: Fn(L(lambda h: torch.log1p(h.abs() - 0.95))),
    "div_data": lambda: Fn(L(lambda h: torch.cat([h / (F.softplus(h) + 0.5), 2.0 / (torch.sigmoid(h) + 0.5)], 1)),
                           out_in=16),
    "layer_norm": lambda: Fn(nn.Sequential(nn.LayerNorm(8), nn.ReLU(), nn.LayerNorm(8, elementwise_affine=False))),
    "layer_norm_2d": lambda: Fn(nn.LayerNorm((2, 4)), shape=(2, 4), out_in=8),
    "softmax": lambda: Fn(L(lambda h: torch.cat([F.softmax(h, 1), F.log_softmax(h, -1),
                                                  F.softmax(h.view(-1, 2, 4), 1).flatten(1)], 1)), out_in=24),
    # GroupNorm, Mish, erf, sin, cos, pixel (un)shuffle, edge padding (tests/test_group_norm.py,
    # tests/test_more_ops.py)
    "vector_norm": lambda: Fn(L(lambda h: torch.cat([F.normalize(h, dim=1), h.norm(dim=-1, keepdim=True)], 1)),
                              out_in=9),
    "adaptive_max_pool": lambda: Fn(L(lambda h: torch.cat([F.adaptive_max_pool2d(h, (2, 3)).flatten(1),
                                                            F.adaptive_max_pool1d(h.flatten(2), 3).flatten(1)], 1)),
                                    shape=(2, 2, 2), out_in=18),
    "full_slice_alias": lambda: Fn(L(lambda h: h[:, :8] * 2)),  # a slice of everything is aten.alias
    "group_norm": lambda: Fn(nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU(), nn.GroupNorm(1, 4, affine=False)),
                             shape=(4, 2), out_in=8),
    "mish_erf_sin_cos": lambda: Fn(L(lambda h: torch.cat([F.mish(h), torch.erf(h), torch.sin(h), torch.cos(h)], 1)),
                                   out_in=32),
    "pixel_shuffle": lambda: Fn(L(lambda h: F.pixel_unshuffle(F.pixel_shuffle(h, 2), 2)), shape=(8, 1, 1), out_in=8),
    "edge_pads": lambda: Fn(L(lambda h: torch.cat([F.pad(h, (1, 1), mode="reflect").flatten(1),
                                                   F.pad(h, (2, 1), mode="replicate").flatten(1),
                                                   F.pad(h[:, None], (1, 1, 1, 0), mode="reflect").flatten(1),
                                                   F.pad(h[:, None], (0, 1, 1, 1), mode="replicate").flatten(1),
                                                   F.pad(h[:, None, None], (1, 1, 0, 1, 1, 0),
                                                         mode="replicate").flatten(1),
                                                   F.pad(h[:, None, None], (1, 1, 1, 1, 0, 0),
                                                         mode="reflect").flatten(1)], 1)),
                          shape=(2, 4)),
}


class _SqueezeExcite(nn.Module):
    """``x * sigmoid(fc(mean(x)))``: a ``[N, C, 1, 1] * [N, C, H, W]`` product."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3)))).reshape(-1, 2, 1, 1)


class _MaxMinConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.linspace(-0.5, 0.5, 8))

    def forward(self, h):
        c = self.c
        return (torch.maximum(h, c) - torch.minimum(torch.tensor(0.2, dtype=torch.float64), h)
                + torch.clamp(h, min=c - 0.3, max=c + 0.3) + h.clamp_max(c) + h.clamp_min(c * 2)
                + torch.maximum(h[:, :1], c) + torch.clamp(h, min=h.flip(1), max=c + 1))


class _WhereConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("m", torch.tensor([True, False, True, True, False, False, True, False]))
        self.register_buffer("c", torch.linspace(-2.0, 2.0, 8))

    def forward(self, h):
        m, c = self.m, self.c
        return (torch.where(m, h, c) + torch.where(m, 0.5, h) + torch.where(~m, h, 3.0)
                + h.masked_fill(m, -1.5) + h.masked_fill(m[None], torch.tensor(0.25, dtype=torch.float64))
                + torch.where(m, h, h.flip(1) * 2) + torch.where(m, h[:, :1], c)
                + torch.where(torch.tensor([False, True, True, False, True, False, False, True]), F.relu(h), c))


class _AddcmulLerp(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.linspace(-2.0, 3.0, 8))
        self.register_buffer("w", torch.linspace(-0.8, 1.6, 8))

    def forward(self, h):
        c, w = self.c, self.w
        return (torch.addcmul(c, h, c, value=0.3) + torch.addcmul(h, c, c, value=-1.7) + torch.addcmul(c, c, h)
                + torch.lerp(h, c, 0.3) + torch.lerp(c, h, -0.7) + torch.lerp(h, c, 2.5) + torch.lerp(h, c, w)
                + torch.lerp(c, h[:, :1], w) + torch.lerp(h, h.flip(1), 0.8) + torch.lerp(h, F.relu(h), -0.6))


class _EinsumConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("W", torch.randn(8, 5))
        self.P = nn.Parameter(torch.randn(5, 8))

    def forward(self, h):
        W = self.W
        return torch.cat([torch.einsum("bi,ij->bj", h, W),
                          torch.einsum("bpi,ij->bpj", h.view(h.shape[0], 2, 4), W[:4]).flatten(1),
                          torch.einsum("bi,ji->bj", h, self.P), torch.einsum("ij,bj->bi", W.t(), F.relu(h)),
                          torch.einsum("bi,i->b", h, W[:, 0])[:, None],
                          torch.einsum("...i,ij->...j", h, W[:, :3])], 1)


def _PReLUWide():
    """A PReLU with per-channel slopes of either sign, some above 1."""
    p = nn.PReLU(8)
    with torch.no_grad():
        p.weight.copy_(torch.linspace(-1.5, 2.0, 8))
    return p


def _bmm_transposed():
    """``x^T @ W`` on ``[N, 2, 4]`` with a weight that does not require grad: torch.matmul
    computes it with ``bmm`` (``W`` expanded over the batch), not ``view, mm, view``."""
    W = torch.randn(2, 3)
    return Fn(L(lambda h: h.view(h.shape[0], 2, 4).transpose(1, 2) @ W), out_in=12)


class _ParamAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(8))
        self.scale = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, h):
        return F.relu(h * self.scale + self.bias)


def _hooked():
    m = Fn(nn.ReLU())
    m.pre.register_forward_hook(lambda mod, i, o: o * 1.5 - 0.25)
    m.register_forward_pre_hook(lambda mod, i: (i[0] + 0.1,))
    return m


# handlers that no CPU example can reach, with the reason
UNREACHED = {
    "aten.cudnn_batch_norm.default": "CUDA only",
    "aten.miopen_batch_norm.default": "ROCm only",
    "aten._native_batch_norm_legit.default": "other backends' eval batch norm; training mode is refused",
    "aten._native_batch_norm_legit_no_training.default": "other backends' eval batch norm",
    "aten._to_copy.default": "only dtype changes dispatch it, and those are refused (test_planted)",
}


def _build(name, seed):
    torch.manual_seed(seed)
    m = EXAMPLES[name]()
    m(torch.zeros(2, 3))  # materialise lazy layers
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_every_registered_op_has_an_example():
    from torch.fx.experimental.proxy_tensor import make_fx

    seen = set()
    for name in EXAMPLES:
        m = _build(name, 0)
        gm = make_fx(lambda x: m(x), tracing_mode="real")(torch.randn(2, 3))
        seen |= {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    refused = {str(o) for o in registry.HANDLERS
               if o.overloadpacket.__name__ in {k for k in registry._REFUSED}}
    # in-place and *_copy spellings share a handler with an op seen above
    def twin_seen(op):
        base = op.replace("_.", ".").replace("_copy.", ".")
        return base in seen or any(s.startswith(base.rsplit(".", 1)[0] + ".") for s in seen)

    missing = [o for o in registry.supported_ops()
               if o not in seen and o not in refused and o not in UNREACHED and not twin_seen(o)]
    assert not missing, f"registry ops without a soundness example: {missing}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.floats(0.0, 1.0), k=st.integers(1, 3))
def test_op_bounds_contain_the_model(name, seed, width, k):
    m = _build(name, seed)
    gen = torch.Generator().manual_seed(seed)
    n = 3
    c = torch.randn(n, 3, generator=gen)
    G = torch.zeros(n, k, 3)
    for j in range(k):
        G[:, j, j] = width * torch.rand(n, generator=gen)
    g = get_graph(m, (3,), example=c[:2])
    with torch.no_grad():
        assert torch.allclose(g.forward(c).float(), m(c), atol=1e-4, rtol=1e-4)
        s = torch.rand(400, n, k, generator=gen) * 2 - 1
        s[:4] = torch.tensor([-1.0, 1.0])[torch.randint(0, 2, (4, n, k), generator=gen)]  # corners too
        x = (c[None].double() + torch.einsum("snk,nkd->snd", s.double(), G.double())).float()
        y = m(x.reshape(-1, 3)).reshape(400, n, -1).double()
    for method in ("ibp", "linear", "crown", "crown64"):  # crown64: float64 backward coefficients
        precise = method == "crown64"
        lo, hi = output_bounds(g, c, G, method="crown" if precise else method, precise=precise)
        assert bool((y >= lo.reshape(1, n, -1)).all()), (name, method, float((lo.reshape(1, n, -1) - y).max()))
        assert bool((y <= hi.reshape(1, n, -1)).all()), (name, method, float((y - hi.reshape(1, n, -1)).max()))


# the elementwise ops bounded in place of a refusal, one at a time: (the model's call, the range
# of interval ends drawn); their lines and interval bounds must contain the float32 kernel's values
_KERNELS = {
    "softshrink": (lambda x: F.softshrink(x, 0.3), (-1.0, 1.0)),
    "softshrink_wide": (lambda x: F.softshrink(x, 1.5), (-4.0, 4.0)),
    "softshrink_far": (lambda x: F.softshrink(x, 0.3), (-100.0, 100.0)),  # x -+ l rounded
    "celu": (lambda x: F.celu(x, 0.3), (-3.0, 1.0)),
    "celu_wide": (lambda x: F.celu(x, 2.5), (-40.0, 5.0)),
    "expm1": (torch.expm1, (-3.0, 3.0)),
    "expm1_small": (torch.expm1, (-1e-5, 1e-5)),
    "exp2": (torch.exp2, (-20.0, 20.0)),
    "log1p": (torch.log1p, (-0.999, 2.0)),
    "log1p_small": (torch.log1p, (-1e-5, 1e-5)),
    "cube": (lambda x: x ** 3, (-3.0, 3.0)),
    "cube_far": (lambda x: x ** 3, (-1e4, 1e4)),
    "pow4": (lambda x: torch.pow(x, 4), (-2.0, 2.0)),
    "pow5_far": (lambda x: x ** 5, (-300.0, 300.0)),
    "pow8": (lambda x: x ** 8, (-3.0, 3.0)),
}


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_new_elementwise_lines_contain_the_float32_kernel(name):
    from pytest_latentaudit.engines import ops

    fn, (a, b) = _KERNELS[name]
    g = get_graph(L(fn), (4,), example=torch.zeros(2, 4))
    op = g.nodes[-1].op
    op.u, op.u_ours = ops.unit(torch.float32), ops.unit(torch.float64)
    gen = torch.Generator().manual_seed(0)
    e = (a + (b - a) * torch.rand(2, 256, generator=gen, dtype=torch.float64)).float().double()
    lo, hi = e.min(0).values, e.max(0).values
    lo[:8] = hi[:8] = e[0, :8]  # points too
    t = torch.rand(2000, 256, generator=gen, dtype=torch.float64)
    x = (lo + (hi - lo) * t).float()
    x = torch.cat([x, lo.float()[None], hi.float()[None]])
    y = fn(x).double()  # the model's own float32 values
    xd = x.double()
    al, cl, au, cu = op.relaxed(lo, hi)
    assert bool((y >= al * xd + cl).all()), float((al * xd + cl - y).max())
    assert bool((y <= au * xd + cu).all()), float((y - au * xd - cu).max())
    ilo, ihi = op.ibp((lo, hi))
    assert bool((y >= ilo).all()) and bool((y <= ihi).all())


class _Affine8(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        g = torch.Generator().manual_seed(5)
        self.register_buffer("c", (torch.randn(8, generator=g) * torch.exp(torch.randn(8, generator=g) * 4)))

    def forward(self, x):
        return self.f(self, x)


_AFFINE_KERNELS = {
    "lerp_near_1": lambda s, x: torch.lerp(x, s.c, 1 - 1e-7),
    "lerp_minus_0.7": lambda s, x: torch.lerp(x, s.c, -0.7),
    "lerp_end_data": lambda s, x: torch.lerp(s.c, x, 0.4999),
    "lerp_tensor_weight": lambda s, x: torch.lerp(x, s.c, torch.linspace(-0.9, 1.9, 8)),
    "lerp_two_data": lambda s, x: torch.lerp(x, x.flip(1) * 3, -0.7),
    "addcmul": lambda s, x: torch.addcmul(s.c, x, s.c, value=0.3),
    "addcmul_self_data": lambda s, x: torch.addcmul(x, s.c, s.c, value=-2.7),
}


@pytest.mark.parametrize("name", sorted(_AFFINE_KERNELS))
def test_addcmul_lerp_bounds_contain_the_float32_kernel_at_points(name):
    """Zero-width boxes at 512 points of wide magnitudes (cancellation in ``(1 - w) x + w c``):
    every bound holds the model's float32 value, so the kernel's rounding is charged."""
    m = _Affine8(_AFFINE_KERNELS[name]).eval()
    gen = torch.Generator().manual_seed(1)
    c = (torch.randn(512, 8, generator=gen) * torch.exp(torch.randn(512, 8, generator=gen) * 4)).float()
    G = torch.zeros(512, 1, 8)
    g = get_graph(m, (8,), example=c[:2])
    with torch.no_grad():
        y = m(c).double()
    for method in ("ibp", "linear", "crown", "crown64"):
        precise = method == "crown64"
        lo, hi = output_bounds(g, c, G, method="crown" if precise else method, precise=precise)
        assert bool((y >= lo).all()), (name, method, float((lo - y).max()))
        assert bool((y <= hi).all()), (name, method, float((y - hi).max()))
