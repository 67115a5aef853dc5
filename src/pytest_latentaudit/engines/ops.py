"""Bound operators: one class per layer type, each with its forward pass, interval bound
(IBP), forward-mode linear bound and backward (CROWN-style) step side by side.

Conventions: tensors are batched ``[N, *S]``; ``ibp`` maps ``(lo, hi)`` pairs; ``linear``
maps ``LinForm`` objects (see forms.py); ``backward(A, bounds)`` maps a coefficient tensor
``A`` ``[B, *S_out]`` over this op's output to ``(A_in_list, const)`` over its inputs,
where ``const`` ``[B]`` is the constant term picked up (biases, relaxation intercepts).
Backward is used to bound ``max C y`` (upper bounds only), so a relaxation picks its upper
line where ``A >= 0`` and its lower line where ``A < 0``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .forms import LinForm, over_gens


class BoundOp:
    """Base class. ``name`` is the layer's qualified name, for messages."""

    n_inputs = 1
    #: the linear step is exact or a sound relaxation; False means "IBP constant only"
    has_linear = True

    def __init__(self, name: str):
        self.name = name

    def forward(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError

    def ibp(self, *bounds):  # pragma: no cover - abstract
        raise NotImplementedError

    def linear(self, *forms, pre=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, A, pre=None, in_shapes=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, dtype=None, device=None):
        for key, val in vars(self).items():
            if isinstance(val, torch.Tensor):
                setattr(self, key, val.to(device=device, dtype=dtype if val.is_floating_point() else None))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# --------------------------------------------------------------------------- structure
class InputOp(BoundOp):
    n_inputs = 0


class PositiveLinearOp(BoundOp):
    """A linear map with non-negative weights and no bias: reshape, flatten, pooling,
    nearest upsampling, identity. Lower maps to lower and upper to upper."""

    def __init__(self, name: str, fn, desc: str = ""):
        super().__init__(name)
        self.fn = fn
        self.desc = desc

    def forward(self, x):
        return self.fn(x)

    def ibp(self, b):
        return self.fn(b[0]), self.fn(b[1])

    def linear(self, form, pre=None):
        return form.map_positive(self.fn)

    def backward(self, A, pre=None, in_shapes=None):
        return [_vjp(self.fn, A, in_shapes[0])], None


def _vjp(fn, A, in_shape):
    """Transpose of a per-sample linear map, applied to the rows of ``A``."""
    dummy = torch.zeros((A.shape[0], *in_shape), dtype=A.dtype, device=A.device)
    _, vjp_fn = torch.func.vjp(fn, dummy)
    return vjp_fn(A)[0]


class AffineOp(BoundOp):
    """``y = lin(x, W) + b`` with ``lin`` linear in both ``x`` and ``W`` (Linear, Conv2d,
    ConvTranspose2d, BatchNorm in eval mode)."""

    def __init__(self, name, weight, bias):
        super().__init__(name)
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self._split = None

    def lin(self, x, w):  # pragma: no cover - abstract
        raise NotImplementedError

    def bias_term(self, like):
        return 0.0 if self.bias is None else self._bias_view()

    def _bias_view(self):
        return self.bias

    def _parts(self):
        if self._split is None or self._split[0].dtype != self.weight.dtype or self._split[0].device != self.weight.device:
            w = self.weight
            self._split = (w.clamp(min=0), w.clamp(max=0), w.abs())
        return self._split

    def forward(self, x):
        return self.lin(x, self.weight) + self.bias_term(x)

    def ibp(self, b):
        lo, hi = b
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        _, _, wabs = self._parts()
        m, r = self.forward(mid), self.lin(rad, wabs)
        return m - r, m + r

    def linear(self, form, pre=None):
        # Coefficients and constants go through the layer as one batch of k + 1 rows, and
        # W+ a + W- b = W (a + b) / 2 + |W| (a - b) / 2 halves the products needed.
        w = self.weight
        bias = self.bias_term(form.lb)
        if form.exact:
            rows = torch.cat([form.lw, form.lb.unsqueeze(1)], 1)
            out = over_gens(lambda x: self.lin(x, w), rows)
            lw, lb = out[:, :-1], out[:, -1] + bias
            return LinForm(lw, lb, lw, lb, exact=True)
        _, _, wabs = self._parts()
        mid = torch.cat([form.lw + form.uw, (form.lb + form.ub).unsqueeze(1)], 1) / 2
        dif = torch.cat([form.lw - form.uw, (form.lb - form.ub).unsqueeze(1)], 1) / 2
        a = over_gens(lambda x: self.lin(x, w), mid)
        b = over_gens(lambda x: self.lin(x, wabs), dif)
        lo, up = a + b, a - b
        return LinForm(lo[:, :-1], lo[:, -1] + bias, up[:, :-1], up[:, -1] + bias)

    def backward(self, A, pre=None, in_shapes=None):
        A_in = _vjp(lambda x: self.lin(x, self.weight), A, in_shapes[0])
        const = None
        if self.bias is not None:
            b = self._bias_view()
            const = (A * b).reshape(A.shape[0], -1).sum(1) if torch.is_tensor(b) else None
        return [A_in], const


class LinearOp(AffineOp):
    def lin(self, x, w):
        return x @ w.T

    def backward(self, A, pre=None, in_shapes=None):
        # explicit transpose: faster than a vjp for the dense layers of latent heads
        const = None if self.bias is None else A @ self.bias
        return [A @ self.weight], const


class Conv2dOp(AffineOp):
    def __init__(self, name, module):
        super().__init__(name, module.weight, module.bias)
        if module.padding_mode != "zeros":
            raise UnsupportedLayer(name, f"Conv2d with padding_mode={module.padding_mode!r}")
        self.kw = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                       groups=module.groups)

    def lin(self, x, w):
        return F.conv2d(x, w, None, **self.kw)

    def _bias_view(self):
        return self.bias.view(1, -1, 1, 1)


class ConvTranspose2dOp(AffineOp):
    def __init__(self, name, module):
        super().__init__(name, module.weight, module.bias)
        self.kw = dict(stride=module.stride, padding=module.padding, output_padding=module.output_padding,
                       groups=module.groups, dilation=module.dilation)

    def lin(self, x, w):
        return F.conv_transpose2d(x, w, None, **self.kw)

    def _bias_view(self):
        return self.bias.view(1, -1, 1, 1)


class BatchNormOp(AffineOp):
    """BatchNorm in eval mode: a per-channel affine map ``x * s + t``."""

    def __init__(self, name, module):
        if module.training or not module.track_running_stats or module.running_mean is None:
            raise UnsupportedLayer(name, "BatchNorm in training mode (call model.eval())")
        s = 1.0 / torch.sqrt(module.running_var.detach() + module.eps)
        t = -module.running_mean.detach() * s
        if module.affine:
            s = s * module.weight.detach()
            t = t * module.weight.detach() + module.bias.detach()
        super().__init__(name, s, t)

    def _view(self, v, x):
        return v.view(1, -1, *([1] * (x.dim() - 2)))

    def lin(self, x, w):
        return x * self._view(w, x)

    def bias_term(self, like):
        return self._view(self.bias, like)

    def backward(self, A, pre=None, in_shapes=None):
        return [A * self._view(self.weight, A)], (A * self._view(self.bias, A)).reshape(A.shape[0], -1).sum(1)


class ScaleOp(AffineOp):
    """Multiplication by a constant scalar or broadcastable tensor (``x * c``, ``x / c``)."""

    def __init__(self, name, factor):
        super().__init__(name, torch.as_tensor(factor, dtype=torch.float32), None)

    def lin(self, x, w):
        return x * w

    def backward(self, A, pre=None, in_shapes=None):
        return [A * self.weight], None


class AddConstOp(BoundOp):
    """``x + c`` for a constant tensor or scalar."""

    def __init__(self, name, const):
        super().__init__(name)
        self.const = torch.as_tensor(const, dtype=torch.float32)

    def forward(self, x):
        return x + self.const

    def ibp(self, b):
        return b[0] + self.const, b[1] + self.const

    def linear(self, form, pre=None):
        c = self.const
        lb = form.lb + c
        ub = lb if form.exact else form.ub + c
        return LinForm(form.lw, lb, form.uw, ub, exact=form.exact)

    def backward(self, A, pre=None, in_shapes=None):
        c = self.const.expand(A.shape[1:]) if self.const.dim() else self.const
        return [A], (A * c).reshape(A.shape[0], -1).sum(1)


class AddOp(BoundOp):
    """Sum of two tensors (residual connections); ``sign=-1`` gives subtraction."""

    n_inputs = 2

    def __init__(self, name, sign: float = 1.0):
        super().__init__(name)
        self.sign = sign

    def forward(self, x, y):
        return x + self.sign * y

    def ibp(self, a, b):
        if self.sign > 0:
            return a[0] + b[0], a[1] + b[1]
        return a[0] - b[1], a[1] - b[0]

    def linear(self, a, b, pre=None):
        if self.sign > 0:
            return LinForm(a.lw + b.lw, a.lb + b.lb, a.uw + b.uw, a.ub + b.ub, exact=a.exact and b.exact)
        return LinForm(a.lw - b.uw, a.lb - b.ub, a.uw - b.lw, a.ub - b.lb, exact=a.exact and b.exact)

    def backward(self, A, pre=None, in_shapes=None):
        return [A, self.sign * A], None


class CatOp(BoundOp):
    """``torch.cat`` along a non-batch dimension."""

    def __init__(self, name, n_inputs, dim):
        super().__init__(name)
        self.n_inputs = n_inputs
        if dim == 0:
            raise UnsupportedLayer(name, "torch.cat along the batch dimension")
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)

    def ibp(self, *bs):
        return torch.cat([b[0] for b in bs], self.dim), torch.cat([b[1] for b in bs], self.dim)

    def linear(self, *fs, pre=None):
        d = self.dim
        dw = d + 1 if d > 0 else d  # coefficients carry k at dim 1; negative dims index alike
        return LinForm(torch.cat([f.lw for f in fs], dw), torch.cat([f.lb for f in fs], d),
                       torch.cat([f.uw for f in fs], dw), torch.cat([f.ub for f in fs], d),
                       exact=all(f.exact for f in fs))

    def backward(self, A, pre=None, in_shapes=None):
        sizes = [s[self.dim - 1 if self.dim > 0 else self.dim] for s in in_shapes]
        d = self.dim if self.dim > 0 else A.dim() + self.dim
        return list(torch.split(A, sizes, dim=d)), None


# --------------------------------------------------------------------- activations
class ActivationOp(BoundOp):
    """A monotone non-decreasing elementwise function with a linear relaxation.

    ``relax(lo, hi)`` returns slopes and intercepts ``(al, cl, au, cu)`` with
    ``al x + cl <= f(x) <= au x + cu`` on ``[lo, hi]`` and ``al, au >= 0``.
    """

    def f(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        return self.f(x)

    def ibp(self, b):
        return self.f(b[0]), self.f(b[1])

    def relax(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def linear(self, form, pre=None):
        al, cl, au, cu = self.relax(*pre)
        lw = form.lw * al.unsqueeze(1)
        uw = form.uw * au.unsqueeze(1)
        return LinForm(lw, form.lb * al + cl, uw, form.ub * au + cu)

    def backward(self, A, pre=None, in_shapes=None):
        al, cl, au, cu = self.relax(*pre)
        n = al.shape[0]
        rep = A.shape[0] // n  # A rows are grouped per box: [n * m, *S]
        if rep > 1:
            al, cl, au, cu = (v.repeat_interleave(rep, 0) for v in (al, cl, au, cu))
        Ap, An = A.clamp(min=0), A.clamp(max=0)
        A_in = Ap * au + An * al
        const = (Ap * cu + An * cl).reshape(A.shape[0], -1).sum(1)
        return [A_in], const


class ReLUOp(ActivationOp):
    negative_slope = 0.0

    def f(self, x):
        return F.relu(x)

    def relax(self, lo, hi):
        # upper: chord through (lo, f(lo)) and (hi, f(hi)); lower: slope 0 or 1
        # (whichever leaves the smaller area), both exact on stable neurons.
        a = self.negative_slope
        lo_c, hi_c = torch.minimum(lo, hi), torch.maximum(lo, hi)
        active, dead = lo_c >= 0, hi_c <= 0
        unstable = ~(active | dead)
        width = (hi_c - lo_c).clamp(min=1e-12)
        flo, fhi = self.f(lo_c), self.f(hi_c)
        au = torch.where(unstable, (fhi - flo) / width, torch.where(active, 1.0, a).to(lo.dtype))
        cu = torch.where(unstable, flo - au * lo_c, torch.zeros_like(lo))
        al = torch.where(unstable, torch.where(hi_c > -lo_c, 1.0, a).to(lo.dtype),
                         torch.where(active, 1.0, a).to(lo.dtype))
        cl = torch.zeros_like(lo)
        return al, cl, au, cu


class LeakyReLUOp(ReLUOp):
    def __init__(self, name, negative_slope):
        super().__init__(name)
        if not (0.0 <= negative_slope <= 1.0):
            raise UnsupportedLayer(name, f"LeakyReLU with negative_slope={negative_slope} outside [0, 1]")
        self.negative_slope = float(negative_slope)

    def f(self, x):
        return F.leaky_relu(x, self.negative_slope)


class SCurveOp(ActivationOp):
    """Sigmoid and Tanh: parallel-chord relaxation.

    Both lines take the chord's slope ``s``; their intercepts are the exact min and max of
    ``g(x) = f(x) - s x`` on ``[lo, hi]``. ``g' = f' - s`` vanishes only where
    ``f'(x) = s`` (two points, ``+-x*``, since ``f'`` is even and unimodal), so the extremes
    lie among ``lo, hi, +-x*``: sound by construction, tight for narrow intervals.
    """

    def relax(self, lo, hi):
        lo_c, hi_c = torch.minimum(lo, hi), torch.maximum(lo, hi)
        width = hi_c - lo_c
        # any slope in [0, max f'] gives sound lines, since the intercepts below are exact
        # for that slope; the chord's slope is the tight choice.
        s = ((self.f(hi_c) - self.f(lo_c)) / width.clamp(min=1e-12)).clamp(min=0.0, max=self.dmax)
        s = torch.where(width < 1e-6, self.df(lo_c), s)
        xs = self.inv_df(s)
        cands = [lo_c, hi_c, xs.clamp(lo_c, hi_c), (-xs).clamp(lo_c, hi_c)]
        g = torch.stack([self.f(c) - s * c for c in cands])
        cl, cu = g.min(0).values, g.max(0).values
        pad = 1e-6 * (1 + s * torch.maximum(lo_c.abs(), hi_c.abs()))  # float error of f(c) - s c
        return s, cl - pad, s, cu + pad


class SigmoidOp(SCurveOp):
    dmax = 0.25

    def f(self, x):
        return torch.sigmoid(x)

    def df(self, x):
        y = torch.sigmoid(x)
        return y * (1 - y)

    def inv_df(self, s):
        # sigma (1 - sigma) = s  ->  sigma = (1 + sqrt(1 - 4 s)) / 2, x = logit(sigma)
        r = torch.sqrt((1 - 4 * s).clamp(min=0))
        sig = ((1 + r) / 2).clamp(max=1 - 1e-7)
        return torch.log(sig) - torch.log1p(-sig)


class TanhOp(SCurveOp):
    dmax = 1.0

    def f(self, x):
        return torch.tanh(x)

    def df(self, x):
        return 1 - torch.tanh(x) ** 2

    def inv_df(self, s):
        r = torch.sqrt((1 - s).clamp(min=0)).clamp(max=1 - 1e-7)
        return torch.atanh(r)


class MonotoneIBPOp(BoundOp):
    """A monotone op without a linear relaxation here (max pooling): IBP bounds only,
    turned into a constant linear form. Sound, just loose."""

    has_linear = False

    def __init__(self, name, fn):
        super().__init__(name)
        self.fn = fn

    def forward(self, x):
        return self.fn(x)

    def ibp(self, b):
        return self.fn(b[0]), self.fn(b[1])

    def linear(self, form, pre=None):
        lo, hi = self.fn(pre[0]), self.fn(pre[1])
        zeros = torch.zeros((lo.shape[0], form.k, *lo.shape[1:]), dtype=lo.dtype, device=lo.device)
        return LinForm(zeros, lo, zeros, hi)


class UnsupportedLayer(Exception):
    """Raised when a layer has no bound operator. The message names the layer."""

    def __init__(self, name: str, what: str):
        self.layer = name
        self.what = what
        super().__init__(f"layer {name!r} ({what}) is not supported by the native bound engines")
