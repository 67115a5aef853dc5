"""Bound operators: one class per kind of op, each with its forward pass, interval bound
(IBP), forward-mode linear bound, backward (CROWN-style) step and floating-point error
radius side by side. The lowering (registry.py) maps every ATen op the model runs onto
one of these.

Conventions: tensors are batched ``[N, *S]``; ``ibp`` maps ``(lo, hi)`` pairs; ``linear``
maps ``LinForm`` objects (see forms.py); ``backward(A, pre, in_shapes)`` maps a
coefficient tensor ``A`` ``[B, *S_out]`` over this op's output to ``(A_in_list, const)``
over its inputs, where ``const`` ``[B]`` is the constant picked up. Backward bounds
``max C y`` (upper bounds only), so a relaxation takes its upper line where ``A >= 0``
and its lower line where ``A < 0``. ``pre`` is the list of the inputs' concrete bounds.

Floating point (docs/engines.md has the argument): bounds are computed in float64 for
the exact real function of the model's float32 (or float64) weights. ``radius(pre)``
returns, per output element, a bound on how far the model's *own* evaluation of this op
(in its dtype, on its device: unit roundoff ``self.u``) and our float64 evaluation can be
from the exact value, given inputs in ``pre``. The bound passes add it outward, so what
they bound is every value the user's float32 forward pass can produce. For a dot product
of ``n`` terms the classical bound ``|fl(sum) - sum| <= gamma_n sum |terms|`` is used
with ``gamma_n = n u / (1 - n u)`` (any summation order, FMA or not).

Constants (weights, biases, scalars) are not copied at trace time: each op names them in
``self.consts`` as functions of the constant environment, and ``bind`` evaluates them,
so the same graph serves verification (float64, detached) and certified training
(the live parameters, differentiable).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .forms import LinForm, over_gens

U64 = 2.0 ** -53
_UNIT = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def unit(dtype) -> float:
    """Unit roundoff of ``dtype``."""
    return _UNIT[dtype]


_SMALLEST_NORMAL = {2.0 ** -24: 2.0 ** -126, 2.0 ** -53: 2.0 ** -1022, 2.0 ** -11: 2.0 ** -14, 2.0 ** -8: 2.0 ** -126}


def underflow(u: float) -> float:
    """Absolute error of one rounding below the normal range, for the dtype of unit
    roundoff ``u``: the smallest normal number (covers flush-to-zero too)."""
    return _SMALLEST_NORMAL.get(u, 2.0 ** -126)


#: the largest finite number of the dtype of unit roundoff ``u``
_LARGEST = {2.0 ** -24: float(torch.finfo(torch.float32).max), 2.0 ** -53: float(torch.finfo(torch.float64).max),
            2.0 ** -11: float(torch.finfo(torch.float16).max), 2.0 ** -8: float(torch.finfo(torch.bfloat16).max)}


def largest(u: float) -> float:
    """The largest finite number of the dtype of unit roundoff ``u`` (float32's if unknown)."""
    return _LARGEST.get(u, _LARGEST[2.0 ** -24])


def overflow_guard(r: torch.Tensor, mag: torch.Tensor, u: float) -> torch.Tensor:
    """``r``, or ``inf`` where the model's evaluation (dtype of unit roundoff ``u``) may
    overflow: relative error bounds hold only below the dtype's largest number, and a sum
    whose terms' magnitudes ``mag`` reach it may round to inf (or give inf - inf = nan) in
    the model while our bound arithmetic (float32 for a float16 model) stays finite."""
    return torch.where(mag + r >= largest(u), torch.full_like(r, torch.inf), r)


def tiny(dtype) -> float:
    return torch.finfo(dtype).tiny


def gamma(n: int, u: float) -> float:
    """``n u / (1 - n u)``: the rounding-error factor of an ``n``-term dot product."""
    nu = n * u
    if nu >= 0.5:
        return float("inf")
    return nu / (1 - nu)


class UnsupportedLayer(Exception):
    """Raised when an op has no bound operator (or uses an argument it cannot honour)."""

    def __init__(self, name: str, what: str):
        self.layer = name
        self.what = what
        super().__init__(f"layer {name!r} ({what}) is not supported by the native bound engines")


def versions(*ts) -> Optional[tuple]:
    """The version counters of ``ts`` (a cache key with the tensors' identities), or None where
    a tensor tracks none (made under ``torch.inference_mode``): then nothing is remembered, as
    an in-place change could not be told."""
    try:
        return tuple(t._version for t in ts)
    except RuntimeError:
        return None


def rowdot(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_d A[n, m, d] v[n, d]``, ``[n, m]``: a product and a sum, several times faster on
    CPU than ``einsum``/``bmm``, which take a slow batched matrix-vector path here. The same
    roundings (products, then a sum of ``d`` terms in some order) as those, so the error
    factors written for them hold."""
    return (A * v[:, None, :]).sum(-1)


def _mag(b):
    return torch.maximum(b[0].abs(), b[1].abs())


class BoundOp:
    """Base class. ``name`` names the op in messages (module path and ATen op)."""

    n_inputs = 1
    #: the linear step is exact or a sound relaxation; False: "IBP constant only"
    has_linear = True
    #: piecewise linear with breakpoints at ``kinks`` of its (single) input: exact engine
    piecewise_linear = False
    kinks: Sequence[float] = ()
    #: terms summed per output element (0: no arithmetic, e.g. reshapes and slices)
    fan = 0

    def __init__(self, name: str):
        self.name = name
        self.u = 2.0 ** -24  # unit roundoff of the model's own evaluation (set by the lowering)
        self.u_in = 0.0  # rounding of the inputs before the products (TF32 on CUDA), else 0
        self.u_ours = U64  # unit roundoff of our own bound arithmetic (the bound dtype; set by bind)
        #: count floating-point error (radii); False only for training and for measuring its cost
        self.rounding = True
        self.consts: Dict[str, Callable] = {}

    # -- constants
    def bind(self, env, dtype=None, device=None, detach=True):
        for attr, fn in self.consts.items():
            v = fn(env)
            if torch.is_tensor(v):
                if detach:
                    v = v.detach()
                if v.is_floating_point() and dtype is not None:
                    v = v.to(dtype=dtype)
                if device is not None:
                    v = v.to(device=device)
            setattr(self, attr, v)
        if dtype is not None:
            self.u_ours = unit(dtype)
        self.__dict__.pop("_relaxed", None)  # relaxations depend on the bound dtype
        self.__dict__.pop("_radius_cache", None)  # and radii on the constants
        self._bound()
        return self

    def _bound(self):
        """Derived constants, recomputed after each bind."""

    # -- semantics
    def forward(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError

    def ibp(self, *bounds):  # pragma: no cover - abstract
        raise NotImplementedError

    def linear(self, *forms, pre=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, A, pre=None, in_shapes=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def loose(self, lo, hi):
        """Which elements of an input with bounds ``[lo, hi]`` this op relaxes inexactly (a
        tighter input bound can tighten its lines there): the neurons CROWN intermediate
        bounds refine. Here (max pooling and what has no relaxation): those whose interval
        contains 0 strictly. Activations and products say where their lines have a gap."""
        return (lo < 0) & (hi > 0)

    def magnitude(self, *mags):
        """Bound of ``sum |terms|`` per output element given input magnitudes (fan > 0)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def our_radius(self, pre, u: float, d_out: int) -> Optional[torch.Tensor]:
        """Bound on the rounding of a backward step done in a lower precision (unit
        roundoff ``u``, e.g. float32 for speed): ``|A_in - fl(A_in)| . |x|`` and the
        constant's sum, per output element, to be weighted by ``|A|``. None: exact."""
        if self.fan == 0 or not self.rounding:
            return None
        # each entry of A_in (and the constant A . b) sums d_out products
        return gamma(d_out + 2, u) * self.magnitude(*[_mag(b) for b in pre])

    def radius(self, pre, ours: bool = True, ours_pre=None) -> Optional[torch.Tensor]:
        """Error radius of this op's output for inputs in ``pre`` (None: exact): the
        model's rounding, and with ``ours`` the rounding of our own evaluation in the
        bound dtype (products, the mid/radius split, the bias add), for inputs of
        magnitudes ``ours_pre`` where that differs (forward forms: their own magnitudes)."""
        if self.fan == 0 or not self.rounding:
            return None
        if ours and ours_pre is not None and not self.sharp_rounding():
            # one magnitude does for both (it dominates the concrete bounds'): one product less
            pre, ours_pre = ours_pre, None
        mag, R = self.model_radius(pre)
        if ours:
            m = mag if ours_pre is None else self.magnitude(*[_mag(b) for b in ours_pre])
            R = R + gamma(self.fan + 6, self.u_ours) * m + (2 * self.fan + 6) * underflow(self.u_ours)
        return overflow_guard(R, mag, self.u)

    def sharp_rounding(self) -> bool:
        """Whether ``model_radius`` is sharper than ``gamma_fan`` times the magnitude (then it
        is worth its extra products at the concrete input bounds)."""
        return False

    def model_radius(self, pre):
        """``(magnitude, radius of the model's own rounding)`` for inputs in ``pre``: the
        dot-product bound ``gamma_fan sum |terms|`` (and TF32's rounding of the inputs)."""
        mag = self.magnitude(*[_mag(b) for b in pre])
        # relative bounds hold only for normal numbers: a product or sum that underflows
        # (gradual underflow, or flushed to zero) is off by up to the smallest normal
        # number, whatever its size: 0.7 * 2**-146 is 0.75 * 2**-146 in float32
        under = (2 * self.fan + 4) * underflow(self.u)
        return mag, (2 * self.u_in + gamma(self.fan + 4, self.u)) * mag + under

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _like(t, A):
    """``t`` in ``A``'s dtype (backward passes may run in float32 for speed)."""
    return t if t is None or not torch.is_tensor(t) or t.dtype == A.dtype else t.to(A.dtype)


def _vjp(fn, A, in_shape):
    """Transpose of a per-sample linear map, applied to the rows of ``A``."""
    dummy = torch.zeros((A.shape[0], *in_shape), dtype=A.dtype, device=A.device)
    _, vjp_fn = torch.func.vjp(fn, dummy)
    return vjp_fn(A)[0]


# --------------------------------------------------------------------------- structure
class InputOp(BoundOp):
    n_inputs = 0


class LinearMapOp(BoundOp):
    """A per-sample linear map with non-negative coefficients and no bias: reshape,
    slice, select, index_select, permute, expand, pooling and upsampling, mean and sum.
    Lower maps to lower and upper to upper. ``fan`` > 0 for maps that add numbers
    (their float error is ``gamma_fan * map(|x|)``); 0 for pure data movement."""

    piecewise_linear = True

    def __init__(self, name: str, fn, desc: str = "", fan: int = 0):
        super().__init__(name)
        self.fn = fn
        self.desc = desc
        self.fan = fan

    def forward(self, x):
        return self.fn(x)

    def ibp(self, b):
        return self.fn(b[0]), self.fn(b[1])

    def linear(self, form, pre=None):
        return form.map_positive(self.fn)

    def backward(self, A, pre=None, in_shapes=None):
        return [_vjp(self.fn, A, in_shapes[0])], None

    def magnitude(self, m):
        return self.fn(m)

    def our_radius(self, pre, u, d_out):
        # a transpose can sum entries (expand, repeat, overlapping windows)
        m = _mag(pre[0])
        return gamma(m[0].numel() + d_out + 4, u) * self.fn(m)


class InterpolationOp(LinearMapOp):
    """Linear/bilinear upsampling (``fn`` runs the model's own ATen op). Its weights are
    computed by the model's kernel in the model's dtype: the source coordinate
    ``scale * (dst + 0.5) - 0.5`` carries an absolute error of a few ulps of the *input
    size* (4 u (n + 2) is generous), so an interpolation weight can be off by that much,
    not by a few ulps of itself: with 65536 positions and values +-1000 the float32 output
    is off by 2.6. Per output, the error is at most ``2 sum_d |d lambda_d|`` times the
    largest ``|x|`` among the neighbours (a rounded coordinate can also move the floor by
    one), plus the arithmetic of the weighted sum; ``magnitude`` is that neighbourhood
    maximum (interpolated from a 5-wide windowed max, so it covers every neighbour)."""

    def __init__(self, name: str, fn, in_spatial):
        self.in_spatial = tuple(int(v) for v in in_spatial)
        fan = 8 * sum(n + 2 for n in self.in_spatial) + 16
        super().__init__(name, fn, "interpolate", fan=fan)

    def magnitude(self, m):
        nd = len(self.in_spatial)
        pool = F.max_pool1d if nd == 1 else F.max_pool2d
        return self.fn(pool(m, 5, stride=1, padding=2))


class AffineOp(BoundOp):
    """``y = lin(x, W) + b`` with ``lin`` linear in both ``x`` and ``W``."""

    piecewise_linear = True

    def __init__(self, name):
        super().__init__(name)
        self.weight = None
        self.bias = None

    def lin(self, x, w):  # pragma: no cover - abstract
        raise NotImplementedError

    def bias_term(self):
        return 0.0 if self.bias is None else self._bias_view(self.bias)

    def _bias_view(self, b):
        return b

    def _bound(self):
        self.wabs = self.weight.abs()
        self.babs = None if self.bias is None else self._bias_view(self.bias).abs()

    def forward(self, x):
        return self.lin(x, self.weight) + self.bias_term()

    def magnitude(self, m):
        out = self.lin(m, self.wabs)
        return out if self.babs is None else out + self.babs

    def ibp(self, b):
        lo, hi = b
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        m, r = self.forward(mid), self.lin(rad, self.wabs)
        return m - r, m + r

    def linear(self, form, pre=None):
        # Coefficients and constants go through the layer as one batch of k + 1 rows, and
        # W+ a + W- b = W (a + b) / 2 + |W| (a - b) / 2 halves the products needed.
        w = self.weight
        bias = self.bias_term()
        if form.exact:
            rows = torch.cat([form.lw, form.lb.unsqueeze(1)], 1)
            out = over_gens(lambda x: self.lin(x, w), rows)
            lw, lb = out[:, :-1], out[:, -1] + bias
            return LinForm(lw, lb, lw, lb, exact=True)
        mid = torch.cat([form.lw + form.uw, (form.lb + form.ub).unsqueeze(1)], 1) / 2
        dif = torch.cat([form.lw - form.uw, (form.lb - form.ub).unsqueeze(1)], 1) / 2
        a = over_gens(lambda x: self.lin(x, w), mid)
        b = over_gens(lambda x: self.lin(x, self.wabs), dif)
        lo, up = a + b, a - b
        return LinForm(lo[:, :-1], lo[:, -1] + bias, up[:, :-1], up[:, -1] + bias)

    def backward(self, A, pre=None, in_shapes=None):
        w = _like(self.weight, A)
        A_in = _vjp(lambda x: self.lin(x, w), A, in_shapes[0])
        const = None
        if self.bias is not None:
            b = _like(self._bias_view(self.bias), A)
            const = (A * b).reshape(A.shape[0], -1).sum(1)
        return [A_in], const


#: fan-in from which a dense layer bounds its rounding by the summation-tree rule
SHARP_MIN_FAN = 128


class DenseOp(AffineOp):
    """``x @ W.T + b`` over the last dimension (Linear, addmm, mm, matmul by a constant)."""

    def lin(self, x, w):
        return x @ w.T

    def _bound(self):
        super()._bound()
        self._w_low = None
        self.fan = self.weight.shape[1] + (self.bias is not None)

    def _model_radius(self, lo, hi):
        """``(magnitude, the model's rounding radius)`` for inputs in ``[lo, hi]``, remembered
        for the last pair of bounds (the passes of one CROWN refinement ask for the same node's
        radius many times); keyed like ``ActivationOp.relaxed``, and on the weight's and bias's."""
        w, b = self.weight, self.bias
        v = versions(lo, hi, w) if b is None else versions(lo, hi, w, b)
        c = self.__dict__.get("_radius_cache")
        if v is not None and c is not None and c[0] is lo and c[1] is hi and c[2] is w and c[3] is b and c[4] == v:
            return c[5]
        mag = self.magnitude(_mag((lo, hi)))
        g = gamma(self.fan + 4, self.u)
        tree = (1 + self.u) * (1 + 2 * self.u_in) * g * self.largest_signed_sum(lo, hi, mag) + self.u * mag
        under = (2 * self.fan + 4) * underflow(self.u)
        out = (mag, torch.minimum(g * mag, tree) + 2 * self.u_in * mag + under)
        self._radius_cache = None if v is None else (lo, hi, w, b, v, out)
        return out

    def largest_signed_sum(self, lo, hi, mag):
        """A bound of ``max(P, N)`` for inputs in ``[lo, hi]``, where ``P`` and ``N`` are the sums
        of a dot product's positive and of its negative terms (the bias a term too). Per term,
        ``max(w x, 0) <= w+ hi+ + w- lo-`` and ``max(-w x, 0) <= w+ lo- + w- hi+`` (``hi+ =
        max(hi, 0)``, ``lo- = max(-lo, 0)``), so ``P + N <= S = |W| (hi+ + lo-) + |b|`` and
        ``P - N`` is bounded by ``D = W (hi+ - lo-) + b``: ``max(P, N) <= (S + |D|) / 2``. Two
        products (one when no input changes sign, as after a ReLU: then ``S`` is ``mag``); our
        own rounding of them is a few ``u`` of ``S``, added."""
        hp, ln = hi.clamp(min=0), (-lo).clamp(min=0)
        D = (hp - ln) @ self.weight.T
        if self.bias is not None:
            D = D + self.bias
        if bool((ln == 0).all()) or bool((hp == 0).all()):
            S = mag  # |W| max(hi+, lo-) + |b| = |W| (hi+ + lo-) + |b| when one of them is 0
        else:
            S = self.magnitude(hp + ln)
        return (S + D.abs()) / 2 + gamma(self.fan + 4, self.u_ours) * S

    def sharp_rounding(self) -> bool:
        # below this fan-in the rounding is small next to any margin, and the extra products
        # cost more than they give (on a 50-wide network, a fifth of the linear bound's rate)
        return self.fan >= SHARP_MIN_FAN

    def model_radius(self, pre):
        """As ``BoundOp.model_radius``, sharper (for fan-ins of ``SHARP_MIN_FAN`` or more). However a
        BLAS kernel orders and groups a dot product's additions (a tree of roundings, fused
        multiply-adds or not), every partial sum it rounds is the exact sum of a subset of the
        (rounded) terms, so it lies in ``[-N, P]``: by induction over the tree the sums' error
        is at most ``gamma_{fan-1} max(P, N)`` (each rounding adds ``u`` times a partial sum
        plus the errors below it, and ``(1+u)^a (1+u)^b`` bounds the product of two
        subtrees), and rounding the products themselves adds ``u sum |w_j x_j|``. With terms
        of both signs (a ReLU layer's input times weights of either sign) ``max(P, N)`` is
        about half of ``sum |w_j x_j|``, which the general bound multiplies by
        ``gamma_fan``; the smaller of the two bounds is taken."""
        if len(pre) != 1 or not self.sharp_rounding():
            return super().model_radius(pre)
        return self._model_radius(*pre[0])

    def backward(self, A, pre=None, in_shapes=None):
        if A.dim() == 2:  # explicit transpose: faster than a vjp for the dense layers of heads
            if A.dtype != self.weight.dtype:
                if getattr(self, "_w_low", None) is None or self._w_low.dtype != A.dtype:
                    self._w_low = self.weight.to(A.dtype)
                    self._b_low = None if self.bias is None else self.bias.to(A.dtype)
                w, b = self._w_low, self._b_low
            else:
                w, b = self.weight, self.bias
            return [A @ w], None if b is None else A @ b
        return super().backward(A, pre, in_shapes)


class ConvOp(AffineOp):
    """``aten.convolution``: Conv1d/Conv2d and their transposes, any stride/padding/groups."""

    def __init__(self, name, transposed, kw):
        super().__init__(name)
        self.transposed, self.kw = transposed, kw

    def lin(self, x, w):
        nd = x.dim() - 2
        if self.transposed:
            fn = F.conv_transpose1d if nd == 1 else F.conv_transpose2d
        else:
            fn = F.conv1d if nd == 1 else F.conv2d
        return fn(x, w, None, **self.kw)

    def _bias_view(self, b):
        return b.view(1, -1, *([1] * (self.weight.dim() - 2)))

    def _bound(self):
        super()._bound()
        w = self.weight
        # transposed: weight [C_in, C_out/g, *k]; each output sums over C_in/g channels
        per = w.shape[0] // self.kw["groups"] if self.transposed else w.shape[1]
        self.fan = per * int(math.prod(w.shape[2:])) + (self.bias is not None)


class _LerpSpanGuard:
    """For ``lerp``'s operators: ATen's kernel (CPU and CUDA) forms ``e - s`` first (``s + w (e -
    s)`` or ``e - (e - s)(1 - w)``), which overflows to inf where ``|s| + |e|`` reaches the
    largest number even when ``(1 - w) s + w e`` is far from it, and without a fused
    multiply-add so does ``(e - s)(1 - w)`` where ``|1 - w| (|s| + |e|)`` does: no bound there."""

    def radius(self, pre, ours: bool = True, ours_pre=None):
        R = super().radius(pre, ours, ours_pre)
        if R is None:
            return None
        span = self.lerp_span(pre) * (1 + 4 * self.u_ours)
        return overflow_guard(R, span, self.u)


class ChannelAffineOp(AffineOp):
    """Elementwise ``x * s + t`` (BatchNorm in eval mode, per-channel scaling; ``s`` and
    ``t`` broadcast against the per-sample shape). ``fan`` is the number of float
    operations the model's kernel rounds (``n_ops``)."""

    #: extra rounded terms per element (batch norm: ``|mean s| + |b|``, which the kernel
    #: rounds and which cancel in the shift ``t = b - mean s``: mean 1e4 and bias 1e4 s
    #: give t = 0 and rounding errors of 1e-3); None: only ``|x s| + |t|``
    terms = None

    def __init__(self, name, n_ops=2):
        super().__init__(name)
        self.n_ops = n_ops

    def magnitude(self, m):
        out = super().magnitude(m)
        return out if self.terms is None else out + self.terms

    def lin(self, x, w):
        return x * w

    def _bound(self):
        super()._bound()
        self.fan = self.n_ops

    def backward(self, A, pre=None, in_shapes=None):
        A_in = A * _like(self.weight, A)  # the scale may have broadcast the input up: summed back below
        const = None
        if self.bias is not None:
            const = (A * _like(self.bias, A)).reshape(A.shape[0], -1).sum(1)
        return [_sum_to(A_in, (A.shape[0], *in_shapes[0]))], const


class LerpAffineOp(_LerpSpanGuard, ChannelAffineOp):
    """``lerp`` with one data end and a constant other end (``other_abs``: its magnitude, per
    sample): affine, guarded against the kernel's overflow of ``e - s``."""

    def __init__(self, name, n_ops=12):
        super().__init__(name, n_ops=n_ops)

    def lerp_span(self, pre):
        # (e - s) (1 - w) of the w >= 0.5 branch, unfused: |1 - w| > 1 for w < 0
        return (_mag(pre[0]) + self.other_abs) * self.span_scale


def _sum_to(t, shape):
    if tuple(t.shape) == tuple(shape):
        return t
    return t.sum_to_size(*shape)


class AddConstOp(ChannelAffineOp):
    """``x + c`` for a constant tensor or scalar (one rounding)."""

    def __init__(self, name):
        super().__init__(name, n_ops=1)

    def _bound(self):
        self.weight = torch.ones((), dtype=self.bias.dtype, device=self.bias.device)
        super()._bound()


class WeightedSumOp(BoundOp):
    """``a * x + b * y`` for two data tensors (residual adds, ``add(alpha=)``, ``sub``)."""

    n_inputs = 2
    piecewise_linear = True
    fan = 2

    def __init__(self, name, a: float = 1.0, b: float = 1.0):
        super().__init__(name)
        self.a, self.b = float(a), float(b)
        # a product by alpha != +-1 is one more rounding in the model's kernel
        self.fan = 2 + (abs(self.a) != 1) + (abs(self.b) != 1)

    def forward(self, x, y):
        return self.a * x + self.b * y

    def ibp(self, p, q):
        def scale(c, b):
            return (c * b[0], c * b[1]) if c >= 0 else (c * b[1], c * b[0])

        (l1, h1), (l2, h2) = scale(self.a, p), scale(self.b, q)
        return l1 + l2, h1 + h2

    def linear(self, f, g, pre=None):
        def scale(c, h):
            if c >= 0:
                return c * h.lw, c * h.lb, c * h.uw, c * h.ub
            return c * h.uw, c * h.ub, c * h.lw, c * h.lb

        a, b = scale(self.a, f), scale(self.b, g)
        return LinForm(a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], exact=f.exact and g.exact)

    def backward(self, A, pre=None, in_shapes=None):
        out = []
        for c, s in zip((self.a, self.b), in_shapes):
            out.append(_sum_to(c * A, (A.shape[0], *s)))
        return out, None

    def magnitude(self, m1, m2):
        return abs(self.a) * m1 + abs(self.b) * m2


class LerpSumOp(_LerpSpanGuard, WeightedSumOp):
    """``lerp(s, e, w)`` of two data ends and a number weight: ``(1 - w) s + w e``, guarded
    against the kernel's overflow of ``e - s``."""

    def lerp_span(self, pre):
        return (_mag(pre[0]) + _mag(pre[1])) * max(1.0, abs(self.a))  # a = 1 - w


class CatOp(BoundOp):
    """``torch.cat`` along a non-batch dimension (``dim`` is >= 1)."""

    piecewise_linear = True

    def __init__(self, name, n_inputs, dim):
        super().__init__(name)
        self.n_inputs = n_inputs
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)

    def ibp(self, *bs):
        return torch.cat([b[0] for b in bs], self.dim), torch.cat([b[1] for b in bs], self.dim)

    def linear(self, *fs, pre=None):
        d = self.dim
        return LinForm(torch.cat([f.lw for f in fs], d + 1), torch.cat([f.lb for f in fs], d),
                       torch.cat([f.uw for f in fs], d + 1), torch.cat([f.ub for f in fs], d),
                       exact=all(f.exact for f in fs))

    def backward(self, A, pre=None, in_shapes=None):
        sizes = [s[self.dim - 1] for s in in_shapes]
        return list(torch.split(A, sizes, dim=self.dim)), None


# --------------------------------------------------------------------- activations
class ActivationOp(BoundOp):
    """An elementwise function with a linear relaxation ``relax(lo, hi) -> (al, cl, au,
    cu)``: ``al x + cl <= f(x) <= au x + cu`` on ``[lo, hi]``, for the model's float
    evaluation of ``f`` too (its error is folded into the intercepts)."""

    #: sup |f'| and |f(0)|: bound the magnitude of relaxation terms (our rounding)
    lipschitz = 1.0
    f0 = 0.0
    monotone = True

    def f(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        return self.f(x)

    def loose(self, lo, hi):
        """A piecewise-linear function's lines are exact on an interval without a kink
        inside; any other function's are inexact on every interval of positive width."""
        if not self.piecewise_linear:
            return hi > lo
        out = torch.zeros_like(lo, dtype=torch.bool)
        for k in self.kinks:
            out |= (lo < k) & (hi > k)
        return out

    def lipschitz_on(self, lo, hi):
        """A bound of ``|f'|`` on ``[lo, hi]`` (a number, or a tensor like ``lo``): the float
        deviation's carry factor (segment.py); ``lipschitz`` where that is global."""
        return self.lipschitz

    def f_err(self, lo, hi):
        """Bound on |fl(f(x)) - f(x)| over [lo, hi], the model's kernel and ours (0: exact)."""
        return 0.0

    def ibp(self, b):
        lo, hi = b
        e = self.f_err(lo, hi)
        if self.monotone:
            return self.f(lo) - e, self.f(hi) + e
        _, cl, _, cu = self.relax_slope(lo, hi, torch.zeros_like(lo))
        return cl, cu

    def relax(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def relaxed(self, lo, hi):
        """``relax(lo, hi)``, remembered for the last pair of bounds: the forward pass, the
        error radius and the backward step of a node all relax the same bounds. Keyed on the
        tensors themselves and their version counters, so an in-place change misses."""
        v = versions(lo, hi)
        c = self.__dict__.get("_relaxed")
        if v is not None and c is not None and c[0] is lo and c[1] is hi and c[2] == v:
            return c[3]
        out = self.relax(lo, hi)
        self._relaxed = None if v is None else (lo, hi, v, out)
        return out

    def _pad(self, lo, hi, al, cl, au, cu):
        """Outward padding of intercepts: the model's error of f plus our rounding in
        evaluating the lines (a few float64 ulps of the terms)."""
        m = torch.maximum(lo.abs(), hi.abs())
        ours = 8 * self.u_ours * ((al.abs() + au.abs()) * m + cl.abs() + cu.abs()) + tiny(lo.dtype)
        e = self.f_err(lo, hi) + ours
        return al, cl - e, au, cu + e

    def linear(self, form, pre=None):
        al, cl, au, cu = self.relaxed(*pre[0])
        # a slope may be negative (non-monotone f): then the other form bounds the product.
        # The form is selected before the product (the same numbers as selecting products),
        # and not at all where every slope is >= 0: a select on [N, k, D] costs several products
        pos_l, pos_u = (al >= 0), (au >= 0)
        if bool(pos_l.all()):
            lw_in, lb_in = form.lw, form.lb
        else:
            lw_in, lb_in = torch.where(pos_l.unsqueeze(1), form.lw, form.uw), torch.where(pos_l, form.lb, form.ub)
        if bool(pos_u.all()):
            uw_in, ub_in = form.uw, form.ub
        else:
            uw_in, ub_in = torch.where(pos_u.unsqueeze(1), form.uw, form.lw), torch.where(pos_u, form.ub, form.lb)
        return LinForm(lw_in * al.unsqueeze(1), lb_in * al + cl, uw_in * au.unsqueeze(1), ub_in * au + cu)

    def our_radius(self, pre, u, d_out):
        # slopes rounded to A's dtype and the products: a few u of |a| |x|; intercepts
        # rounded and summed over d_out terms into the constant
        al, cl, au, cu = self.relaxed(*pre[0])
        m = _mag(pre[0])
        return 3 * u * (al.abs() + au.abs()) * m + gamma(d_out + 2, u) * (cl.abs() + cu.abs())

    def backward(self, A, pre=None, in_shapes=None):
        al, cl, au, cu = self.relaxed(*pre[0])
        n = al.shape[0]
        m = A.shape[0] // n  # A rows are grouped per box: [n * m, *S]; broadcast, not repeat
        A3 = A.reshape(n, m, -1)
        al, cl, au, cu = (_like(v, A).reshape(n, 1, -1) for v in (al, cl, au, cu))
        Ap, An = A3.clamp(min=0), A3.clamp(max=0)
        A_in = (Ap * au + An * al).reshape(A.shape)
        const = (Ap * cu + An * cl).sum(2).reshape(-1)
        return [A_in], const


class ReLUOp(ActivationOp):
    """ReLU and LeakyReLU (slope in [0, 1]). ReLU is exact in floating point; a leaky ReLU's
    negative side is not (``f_err``), and its lines are padded by that error."""

    piecewise_linear = True
    kinks = (0.0,)
    negative_slope = 0.0
    #: optimised lower slopes (alpha-CROWN), ``[n, m or 1, D]`` in [0, 1], set by
    #: bounds.alpha_crown for the duration of its passes; every value gives a sound line
    alpha_slope = None

    def f(self, x):
        return F.relu(x) if self.negative_slope == 0 else F.leaky_relu(x, self.negative_slope)

    def f_err(self, lo, hi):
        # the kernel computes fl(x * fl(a)) for x < 0: the slope rounded to the model's dtype
        # and the product rounded (up to 1.2 u of |a x| measured on float32, 2 u + u^2 in all),
        # or an underflow; and our own a x in the bound dtype. ReLU's max(x, 0) is exact.
        a = self.negative_slope
        if a == 0:
            return 0.0
        e = (3 * self.u + 2 * self.u_ours) * a * (-lo).clamp(min=0) + underflow(self.u)
        return torch.where(lo < 0, e, torch.zeros_like(e))

    def our_radius(self, pre, u, d_out):
        al, cl, au, cu = self.relaxed(*pre[0])
        m = _mag(pre[0])
        r = 3 * u * (1 + au.abs()) * m + gamma(d_out + 2, u) * cu.abs()  # |al| <= 1 for any alpha
        return r if self.negative_slope == 0 else r + gamma(d_out + 2, u) * cl.abs()

    def relax(self, lo, hi):
        # upper: chord through (lo, f(lo)) and (hi, f(hi)); lower: slope 1 or the negative
        # slope (whichever leaves the smaller area); exact on stable neurons.
        a = self.negative_slope
        active, dead = lo >= 0, hi <= 0
        unstable = ~(active | dead)
        width = (hi - lo).clamp(min=tiny(lo.dtype))
        flo, fhi = self.f(lo), self.f(hi)
        one = torch.ones_like(lo)
        stable_slope = torch.where(active, one, one * a)
        au = torch.where(unstable, (fhi - flo) / width, stable_slope)
        cu = torch.where(unstable, flo - au * lo, torch.zeros_like(lo))
        al = torch.where(unstable, torch.where(hi > -lo, one, one * a), stable_slope)
        cl = torch.zeros_like(lo)
        # only the chord is computed with rounding; stable lines are exact
        m = torch.maximum(lo.abs(), hi.abs())
        cu = cu + torch.where(unstable, 8 * self.u_ours * (au.abs() * m + cu.abs()) + tiny(lo.dtype),
                              torch.zeros_like(cu))
        if self.negative_slope != 0:  # the leaky side's rounding, on every neuron that has one
            e = self.f_err(lo, hi)
            cl, cu = cl - e, cu + e
        return al, cl, au, cu

    def linear(self, form, pre=None):
        # the general form with its selections dropped: both slopes lie in [a, 1] with a >= 0,
        # so each line takes its own side's form, and ReLU's lower intercept is 0 (the same
        # products and sums, bitwise; a third of the elementwise passes on [N, k, D])
        al, cl, au, cu = self.relaxed(*pre[0])
        lb = form.lb * al if self.negative_slope == 0 else form.lb * al + cl
        return LinForm(form.lw * al.unsqueeze(1), lb, form.uw * au.unsqueeze(1), form.ub * au + cu)

    def backward(self, A, pre=None, in_shapes=None):
        # ReLU's lower intercept is 0: A_in = A al + A+ (au - al), const = A+ . cu (fewer passes
        # over A than the general form; A is the largest tensor of a backward pass); a leaky
        # ReLU's padded lower intercept adds A- . cl
        lo, hi = pre[0]
        al, cl, au, cu = self.relaxed(lo, hi)
        n = al.shape[0]
        m = A.shape[0] // n
        A3 = A.reshape(n, m, -1)
        leaky = self.negative_slope != 0
        if self.alpha_slope is None and not leaky:
            uns = ((lo < 0) & (hi > 0)).reshape(n, -1)
            U = int(uns.sum(1).max()) if uns.numel() else 0
            if 4 * U <= uns.shape[1]:
                return self._backward_few_unstable(A, A3, al, au, cu, uns, U)
        al, au, cu = (_like(v, A).reshape(n, 1, -1) for v in (al, au, cu))
        if self.alpha_slope is not None:
            # any lower line through the origin with slope in [a, 1] is below the (leaky) ReLU
            a = self.negative_slope
            unstable = ((lo < 0) & (hi > 0)).reshape(n, 1, -1)
            al = torch.where(unstable, a + (1 - a) * self.alpha_slope.to(A.dtype), al)
        Ap = A3.clamp(min=0)
        A_in = (A3 * al).addcmul_(Ap, au - al)  # in place on our own product: one big tensor less
        const = rowdot(Ap, cu[:, 0])
        if leaky:
            const = const + rowdot(A3.clamp(max=0), _like(cl, A).reshape(n, -1))
        return [A_in.reshape(A.shape)], const.reshape(-1)

    def _backward_few_unstable(self, A, A3, al, au, cu, uns, U):
        """The same pass when at most a quarter of a ReLU's neurons are unstable (the usual case
        near a proof): a stable neuron's line is exact (``al = au``, ``cu = 0``), so one
        product ``A al`` does for all, and only the ``U`` unstable columns of each box (a
        gather) take the ``A+ (au - al)`` and ``A+ . cu`` terms. The same roundings as the
        general form (a product, then one addition), so ``our_radius`` covers it."""
        n, m, D = A3.shape
        A_in = A3 * _like(al, A).reshape(n, 1, D)
        if U == 0:
            return [A_in.reshape(A.shape)], torch.zeros(n * m, dtype=A.dtype, device=A.device)
        idx = torch.argsort(uns.to(torch.int8), dim=1, descending=True, stable=True)[:, :U]  # unstable first
        valid = uns.gather(1, idx)
        # the gap in A's dtype, as the general form takes it: in the bound dtype, a leaky ReLU's
        # au - a (0.4 - 0.1) rounds at float32's unit roundoff, which float64 coefficients'
        # our_radius does not count (the chord's 8-ulp padding happened to cover it)
        gap = torch.where(valid, (_like(au, A) - _like(al, A)).reshape(n, D).gather(1, idx),
                          torch.zeros((), dtype=A.dtype, device=A.device))
        cu_u = torch.where(valid, cu.reshape(n, D).gather(1, idx), torch.zeros((), dtype=cu.dtype))
        cols = idx[:, None, :].expand(n, m, U)
        Ap = A3.gather(2, cols).clamp(min=0)  # [n, m, U]
        A_in.scatter_add_(2, cols, Ap * gap[:, None, :])  # A_in is our own product
        const = rowdot(Ap, _like(cu_u, A)).reshape(-1)
        return [A_in.reshape(A.shape)], const


class LeakyReLUOp(ReLUOp):
    def __init__(self, name, negative_slope):
        super().__init__(name)
        self.negative_slope = float(negative_slope)


class SampledActivationOp(ActivationOp):
    """Any scalar function with a bound ``f2`` on ``|f''|`` away from its ``kinks``.

    Slopes are the chord's; intercepts are the min and max of ``g(x) = f(x) - s x`` over
    a grid of ``GRID`` points plus the kinks, widened by ``f2 h^2 / 8``: where ``g``'s
    extreme is inside a piece, ``g' = 0`` there and the nearest grid point is within
    ``h / 2``, so ``g`` differs by at most ``f2 (h/2)^2 / 2``. Sound for every slope;
    exact for piecewise-linear ``f`` (``f2 = 0``).
    """

    GRID = 9
    f2 = 0.0
    #: relative error of the model's own kernel for f, in units of its unit roundoff
    ulps = 0.0

    def f_err(self, lo, hi):
        if self.ulps == 0:
            return 0.0
        fm = torch.maximum(self.f(lo).abs(), self.f(hi).abs())
        if not self.monotone:
            fm = (self.f0 + self.lipschitz * torch.maximum(lo.abs(), hi.abs()))
        # a result below the normal range (flushed, or subnormal) is off by up to the model
        # dtype's smallest normal number: float16's is 6e-5, far above float32's
        return overflow_guard(self.ulps * (self.u + self.u_ours) * fm + max(tiny(lo.dtype), underflow(self.u)), fm,
                              self.u)

    def relax(self, lo, hi):
        w = hi - lo
        s = torch.where(w > 1e-6, (self.f(hi) - self.f(lo)) / w.clamp(min=tiny(w.dtype)), torch.zeros_like(w))
        return self.relax_slope(lo, hi, s)

    def relax_slope(self, lo, hi, s):
        G = self.GRID
        steps = torch.linspace(0, 1, G, dtype=lo.dtype, device=lo.device)
        shape = (G,) + (1,) * lo.dim()
        pts = [lo + (hi - lo) * steps.view(shape)]
        for k in self.kinks:
            pts.append(torch.clamp(torch.full_like(lo, k), lo, hi)[None])
        x = torch.cat(pts)
        g = self.f(x) - s * x
        h = (hi - lo) / (G - 1)
        slack = self.f2 * h * h / 8
        cl, cu = g.amin(0) - slack, g.amax(0) + slack
        return self._pad(lo, hi, s, cl, s, cu)


def _act(name_, fn, *, f2, kinks=(), monotone=True, lipschitz=1.0, f0=0.0, ulps=8.0, pl=False):
    """A SampledActivationOp subclass for one function (f2: sup |f''| off the kinks)."""
    attrs = dict(f=lambda self, x: fn(self, x), f2=f2, kinks=kinks, monotone=monotone, lipschitz=lipschitz,
                 f0=f0, ulps=ulps, piecewise_linear=pl)
    return type(name_, (SampledActivationOp,), attrs)


SigmoidOp = _act("SigmoidOp", lambda s, x: torch.sigmoid(x), f2=0.0963, lipschitz=0.25, f0=0.5)
TanhOp = _act("TanhOp", lambda s, x: torch.tanh(x), f2=0.7699)
GeluOp = _act("GeluOp", lambda s, x: F.gelu(x), f2=0.7979, monotone=False, lipschitz=1.13)
GeluTanhOp = _act("GeluTanhOp", lambda s, x: F.gelu(x, approximate="tanh"), f2=0.85, monotone=False, lipschitz=1.13)
SiluOp = _act("SiluOp", lambda s, x: F.silu(x), f2=0.5, monotone=False, lipschitz=1.1)
AbsOp = _act("AbsOp", lambda s, x: x.abs(), f2=0.0, kinks=(0.0,), monotone=False, ulps=0.0, pl=True)
# sup |f''| and sup |f'| measured on a 2e-5 grid over [-40, 40] in float64 (mish 0.6442 and
# 1.0885, erf 0.9679 and 1.1284 = 2 / sqrt(pi)), rounded up; torch's float32 kernels are within
# 1.7 ulps of (|x| + f0) (mish, sin, cos) and 1.2 ulps relatively (erf) on [-1e7, 1e7]: 8 counted
MishOp = _act("MishOp", lambda s, x: F.mish(x), f2=0.65, monotone=False, lipschitz=1.1)
ErfOp = _act("ErfOp", lambda s, x: torch.erf(x), f2=0.97, lipschitz=1.129)


class _UnitRangeOp(SampledActivationOp):
    """A function with values in ``[-1, 1]`` (sin, cos): intervals are clipped to it (plus
    the kernel's few ulps), since the curvature slack of a wide interval is not."""

    f2, monotone, lipschitz, ulps = 1.0, False, 1.0, 8.0

    def ibp(self, b):
        lo, hi = super().ibp(b)
        m = 1 + 8 * (self.u + self.u_ours)
        return lo.clamp(min=-m), hi.clamp(max=m)


SinOp = type("SinOp", (_UnitRangeOp,), dict(f=lambda self, x: torch.sin(x), f0=0.0))
CosOp = type("CosOp", (_UnitRangeOp,), dict(f=lambda self, x: torch.cos(x), f0=1.0))


class ClampOp(SampledActivationOp):
    """``clamp``/``hardtanh``/``relu6``: piecewise linear with kinks at the limits."""

    piecewise_linear = True
    ulps = 0.0

    def __init__(self, name, lo=None, hi=None):
        super().__init__(name)
        self.lo, self.hi = lo, hi
        self.kinks = tuple(v for v in (lo, hi) if v is not None)
        self.f0 = max(abs(v) for v in self.kinks) if self.kinks else 0.0

    def f(self, x):
        return torch.clamp(x, self.lo, self.hi)


class EluOp(SampledActivationOp):
    """``elu``/``selu``/``celu``: ``scale * (x if x > 0 else alpha (exp(input_scale x) - 1))``."""

    kinks = (0.0,)
    ulps = 8.0

    def __init__(self, name, alpha=1.0, scale=1.0, input_scale=1.0):
        super().__init__(name)
        if not float(input_scale) >= 0:
            # for x < 0 the curve is scale alpha (exp(input_scale x) - 1): with input_scale < 0
            # it grows like exp(|input_scale x|), so neither f2 nor lipschitz below bounds it
            raise UnsupportedLayer(name, f"elu with input_scale={input_scale} (unbounded curvature)")
        self.alpha, self.scale, self.input_scale = float(alpha), float(scale), float(input_scale)
        self.f2 = abs(self.scale * self.alpha) * self.input_scale ** 2
        self.lipschitz = abs(self.scale) * max(1.0, abs(self.alpha * self.input_scale))
        self.monotone = self.scale >= 0 and self.alpha * self.input_scale >= 0
        self.f0 = 0.0

    def f(self, x):
        return torch.ops.aten.elu(x, self.alpha, self.scale, self.input_scale)


class SoftplusOp(SampledActivationOp):
    """``softplus(beta, threshold)``; torch returns ``x`` above ``threshold / beta``,
    a jump of at most ``log1p(exp(-threshold)) / beta``, counted as error."""

    ulps = 8.0

    def __init__(self, name, beta=1.0, threshold=20.0):
        super().__init__(name)
        if beta <= 0:
            raise UnsupportedLayer(name, f"softplus with beta={beta}")
        self.beta, self.threshold = float(beta), float(threshold)
        self.f2 = self.beta / 4
        self.kinks = (self.threshold / self.beta,)
        self.jump = math.log1p(math.exp(-self.threshold)) / self.beta * 1.0001
        self.f0 = math.log(2) / self.beta

    def f(self, x):
        return F.softplus(x, self.beta, self.threshold)

    def f_err(self, lo, hi):
        return super().f_err(lo, hi) + self.jump


class CurvedOp(ActivationOp):
    """A monotone elementwise function that is convex or concave on its domain: ``exp``,
    ``log``, ``sqrt``, ``rsqrt`` and ``reciprocal``. Outside the domain (``log`` of an interval
    reaching 0, ``reciprocal`` of one containing 0, ...) the model's value is nan or infinite
    and the bounds are ``(-inf, inf)``: never a proof there.

    Relaxation on ``[lo, hi]`` (both lines sound for any rounded slope): on the chord's side
    the slope ``s`` is the chord's and the intercept the extreme of ``g(x) = f(x) - s x`` at
    an end of the interval (a convex ``g`` takes its maximum, a concave one its minimum, at an
    end); on the tangent's side the slope ``s = fl(f'(t))`` at the midpoint ``t``, and the
    intercept ``g(t)`` moved by ``|f'(t) - s| max|x - t|`` (convexity: ``g(x) >= g(t) + g'(t)
    (x - t)``), our error of ``f'(t)`` counted as ``DERIV_ULPS`` ulps. Where the lines would be
    infinite (overflow, domain) the slope is 0 and the intercepts the interval bound.

    Floating point: the model's kernel for ``f`` is taken to be within ``ulps`` ulps of
    ``|f|`` (plus ``abs_ulps`` ulps of 1 and the smallest normal number for underflow), and
    so is ours in the bound dtype; that error is folded into the intercepts (``f_err``), as
    for the other activations."""

    DERIV_ULPS = 16.0
    ulps = 8.0
    abs_ulps = 0.0
    #: the function's values are >= 0 on the domain (exp, sqrt, rsqrt)
    nonneg = False

    def df(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def domain(self, lo, hi):
        return torch.ones_like(lo, dtype=torch.bool)

    def increasing(self) -> bool:
        return True

    def convex(self, lo, hi):  # pragma: no cover - abstract
        raise NotImplementedError

    def _safe(self, lo, hi, ok):
        """``lo, hi`` with the out-of-domain elements moved to a point of the domain (their
        values are masked afterwards; this only keeps nan out of the arithmetic)."""
        one = torch.ones_like(lo)
        return torch.where(ok, lo, one), torch.where(ok, hi, one)

    def f_err(self, lo, hi):
        fm = torch.maximum(self.f(lo).abs(), self.f(hi).abs())  # monotone: |f| is largest at an end
        e = self.ulps * (self.u + self.u_ours) * fm + self.abs_ulps * (self.u + self.u_ours) + \
            2 * max(tiny(lo.dtype), underflow(self.u))
        return overflow_guard(e, fm, self.u)

    def ibp(self, b):
        lo, hi = b
        ok = self.domain(lo, hi)
        sl, sh = self._safe(lo, hi, ok)
        flo, fhi = self.f(sl), self.f(sh)
        if not self.increasing():
            flo, fhi = fhi, flo
        # the error at each end from |f| there: f - K u |f| and f + K u |f| are monotone like
        # f, so the extremes of the model's values are at the ends (an overflow at one end,
        # exp of a large upper bound, leaves the other end finite)
        at_min, at_max = (sl, sh) if self.increasing() else (sh, sl)
        out_lo, out_hi = flo - self.f_err(at_min, at_min), fhi + self.f_err(at_max, at_max)
        if self.nonneg:
            out_lo = out_lo.clamp(min=0)
        inf = torch.full_like(lo, torch.inf)
        out_lo = torch.where(ok & ~torch.isnan(out_lo), out_lo, -inf)
        out_hi = torch.where(ok & ~torch.isnan(out_hi), out_hi, inf)
        return out_lo, out_hi

    def relax(self, lo, hi):
        ok = self.domain(lo, hi)
        lo, hi = self._safe(lo, hi, ok)
        w = hi - lo
        flo, fhi = self.f(lo), self.f(hi)
        s_ch = torch.where(w > 0, (fhi - flo) / w.clamp(min=tiny(w.dtype)), torch.zeros_like(w))
        t = lo + w / 2
        ft = self.f(t)
        # f'(t) in float64, then rounded once: in the bound dtype itself an intermediate can
        # overflow or underflow (reciprocal's 1 / (t t) is -0.0 in float32 for t > 2e19, and
        # rsqrt's at t > 1e37), and a slope of 0 there makes the "tangent" the constant f(t),
        # above f on half the interval. The slack below holds only for a normal slope.
        s_tg = self.df(t.double()).to(t.dtype)
        abnormal = ~(torch.isfinite(s_tg) & (s_tg.abs() >= tiny(t.dtype)))
        # the chord side: the extreme of g at the two ends
        g_lo, g_hi = flo - s_ch * lo, fhi - s_ch * hi
        ch_max, ch_min = torch.maximum(g_lo, g_hi), torch.minimum(g_lo, g_hi)
        # the tangent side: g(t), moved by our error of f'(t) over the half-width
        slack = self.DERIV_ULPS * self.u_ours * s_tg.abs() * (w / 2) + \
            8 * self.u_ours * (ft.abs() + (s_tg * t).abs())
        g_t = ft - s_tg * t
        vex = self.convex(lo, hi)
        al = torch.where(vex, s_tg, s_ch)
        cl = torch.where(vex, g_t - slack, ch_min)
        au = torch.where(vex, s_ch, s_tg)
        cu = torch.where(vex, ch_max, g_t + slack)
        al, cl, au, cu = self._pad(lo, hi, al, cl, au, cu)
        bad = ~(ok & torch.isfinite(al) & torch.isfinite(au) & torch.isfinite(cl) & torch.isfinite(cu)) | abnormal
        if bool(bad.any()):
            ilo, ihi = self.ibp((lo, hi))  # lo, hi are in the domain here
            inf = torch.full_like(lo, torch.inf)
            ilo, ihi = torch.where(ok, ilo, -inf), torch.where(ok, ihi, inf)
            zero = torch.zeros_like(lo)
            al, au = torch.where(bad, zero, al), torch.where(bad, zero, au)
            cl, cu = torch.where(bad, ilo, cl), torch.where(bad, ihi, cu)
        return al, cl, au, cu

    def linear(self, form, pre=None):
        # where a line is the constant interval bound (slope 0, the intercept maybe infinite),
        # take it as it is: 0 times an infinite form would be nan
        f = super().linear(form, pre)
        al, cl, au, cu = self.relaxed(*pre[0])
        zl, zu = al == 0, au == 0
        zero = torch.zeros((), dtype=f.lw.dtype, device=f.lw.device)
        return LinForm(torch.where(zl.unsqueeze(1), zero, f.lw), torch.where(zl, cl, f.lb),
                       torch.where(zu.unsqueeze(1), zero, f.uw), torch.where(zu, cu, f.ub))

    def backward(self, A, pre=None, in_shapes=None):
        al, cl, au, cu = self.relaxed(*pre[0])
        n = al.shape[0]
        m = A.shape[0] // n
        A3 = A.reshape(n, m, -1)
        al, cl, au, cu = (_like(v, A).reshape(n, 1, -1) for v in (al, cl, au, cu))
        Ap, An = A3.clamp(min=0), A3.clamp(max=0)
        A_in = (Ap * au + An * al).reshape(A.shape)
        zero = torch.zeros((), dtype=A.dtype, device=A.device)
        # a zero coefficient on an infinite intercept picks up nothing (not 0 * inf = nan)
        const = (torch.where(Ap == 0, zero, Ap * cu) + torch.where(An == 0, zero, An * cl)).sum(2).reshape(-1)
        return [A_in], const

    def lipschitz_on(self, lo, hi):
        # |f'| is monotone on the domain for these functions: its largest value is at an end;
        # outside the domain (or at sqrt's 0) there is none: inf
        ok = self.domain(lo, hi)
        sl, sh = self._safe(lo, hi, ok)
        # in float64 (as in relax: the bound dtype's f' can underflow to 0), rounded up into it
        L64 = torch.maximum(self.df(sl.double()).abs(), self.df(sh.double()).abs()) * (1 + self.DERIV_ULPS * self.u_ours)
        L64 = torch.where(torch.isnan(L64), torch.full_like(L64, torch.inf), L64)
        L = L64.to(sl.dtype)
        L = torch.where(L.double() < L64, torch.nextafter(L, torch.full_like(L, torch.inf)), L)
        return torch.where(ok, L, torch.full_like(L, torch.inf))

    def our_radius(self, pre, u, d_out):
        al, cl, au, cu = self.relaxed(*pre[0])
        m = _mag(pre[0])
        # slopes are 0 where an intercept is infinite: keep 0 * inf out of the magnitude
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        return 3 * u * (al.abs() + au.abs()) * m + gamma(d_out + 2, u) * (cl.abs() + cu.abs())


class ExpOp(CurvedOp):
    """``exp``: convex, increasing. 8 ulps for the model's kernel (Sleef's ``expf`` is within
    1 ulp on CPU, CUDA's ``expf`` within 2), as for the other transcendental kernels."""

    nonneg = True

    def f(self, x):
        return torch.exp(x)

    def df(self, x):
        return torch.exp(x)

    def convex(self, lo, hi):
        return torch.ones_like(lo, dtype=torch.bool)


class LogOp(CurvedOp):
    """``log``: concave, increasing, on ``lo > 0``. 8 ulps of ``|log x|`` and 8 ulps of 1
    (near ``x = 1`` the result is small: an absolute floor covers a kernel that is accurate
    only relative to ``log`` of the exponent's scale)."""

    abs_ulps = 8.0

    def f(self, x):
        return torch.log(x)

    def df(self, x):
        return 1.0 / x

    def domain(self, lo, hi):
        return lo > 0

    def convex(self, lo, hi):
        return torch.zeros_like(lo, dtype=torch.bool)


class SqrtOp(CurvedOp):
    """``sqrt``: concave, increasing, on ``lo >= 0``. IEEE ``sqrt`` is correctly rounded (half
    an ulp, on CPU and, by default, CUDA); 4 ulps are charged."""

    ulps = 4.0
    nonneg = True

    def f(self, x):
        return torch.sqrt(x)

    def df(self, x):
        return 0.5 / torch.sqrt(x)

    def domain(self, lo, hi):
        return lo >= 0

    def convex(self, lo, hi):
        return torch.zeros_like(lo, dtype=torch.bool)


class RsqrtOp(CurvedOp):
    """``rsqrt``: convex, decreasing, on ``lo > 0``. torch computes ``1 / sqrt(x)`` on CPU (two
    correctly rounded operations) and CUDA's ``rsqrtf`` is within 2 ulps: 8 ulps charged."""

    nonneg = True
    monotone = False  # ``monotone`` means non-decreasing where it is read (segment.py)

    def f(self, x):
        return torch.rsqrt(x)

    def df(self, x):
        return -0.5 * torch.rsqrt(x) / x

    def domain(self, lo, hi):
        return lo > 0

    def increasing(self) -> bool:
        return False

    def convex(self, lo, hi):
        return torch.ones_like(lo, dtype=torch.bool)


class ReciprocalOp(CurvedOp):
    """``1 / x``: decreasing on an interval of one sign (``lo > 0``: convex; ``hi < 0``:
    concave); an interval containing 0 has no bound. IEEE division is correctly rounded; 4
    ulps charged."""

    ulps = 4.0
    monotone = False  # decreasing: ``monotone`` means non-decreasing where it is read (segment.py)

    def f(self, x):
        return torch.reciprocal(x)

    def df(self, x):
        return -torch.reciprocal(x * x)

    def domain(self, lo, hi):
        return (lo > 0) | (hi < 0)

    def increasing(self) -> bool:
        return False

    def convex(self, lo, hi):
        return lo > 0


class Expm1Op(CurvedOp):
    """``expm1(x) = exp(x) - 1``: convex, increasing, values in ``(-1, inf)``. The kernel is
    accurate relative to ``|f|`` near 0 too (float32 against float64 on 1e6 points of
    ``[-100, 88.7]`` and of ``[-1e-6, 1e-6]``, contiguous, strided and small tensors: within 1.5
    ulps; CUDA's ``expm1f`` is documented within 1): 8 ulps of ``|f|`` charged, as for ``exp``."""

    def f(self, x):
        return torch.expm1(x)

    def df(self, x):
        return torch.exp(x)

    def convex(self, lo, hi):
        return torch.ones_like(lo, dtype=torch.bool)


class Exp2Op(CurvedOp):
    """``exp2(x) = 2^x``: convex, increasing. Measured within 1.2 ulps of ``|f|`` on normal
    results (1e6 float32 points of ``[-126, 128]``; CUDA's ``exp2f`` is documented within 2):
    8 ulps charged, as for ``exp``."""

    nonneg = True

    def f(self, x):
        return torch.exp2(x)

    def df(self, x):
        return math.log(2.0) * torch.exp2(x)

    def convex(self, lo, hi):
        return torch.ones_like(lo, dtype=torch.bool)


class Log1pOp(CurvedOp):
    """``log1p(x) = log(1 + x)``: concave, increasing, on ``lo > -1`` (at or below -1 the
    model's value is ``-inf`` or nan: no bound). The kernel is accurate relative to ``|f|``
    near 0 (float32 against float64 on 1e6 points of ``[-1 + 1e-6, 1]``, ``[-1e-6, 1e-6]`` and
    ``[0, 1e30]``: within 1.05 ulps; CUDA's ``log1pf`` is documented within 1): 8 ulps of
    ``|f|`` charged, and no absolute floor (unlike ``log``, whose result near ``x = 1`` is a
    difference)."""

    def f(self, x):
        return torch.log1p(x)

    def df(self, x):
        return 1.0 / (1.0 + x)

    def domain(self, lo, hi):
        return lo > -1

    def convex(self, lo, hi):
        return torch.zeros_like(lo, dtype=torch.bool)


class LogSigmoidOp(CurvedOp):
    """``logsigmoid(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|))``: concave and increasing
    on the whole line (``f' = sigmoid(-x)`` in ``(0, 1)``, ``f'' = -sigmoid(x) sigmoid(-x)``), so
    the chord is below it and every tangent above. The kernel (CPU and CUDA) computes that form:
    two terms of one sign, ``exp`` and ``log1p`` within a few ulps; 8 ulps of ``|f|`` and, as for
    ``log``, 8 ulps of 1 are charged (for ``x >> 0`` the result is a tiny ``-exp(-x)``)."""

    abs_ulps = 8.0

    def f(self, x):
        return F.logsigmoid(x)

    def df(self, x):
        return torch.sigmoid(-x)

    def convex(self, lo, hi):
        return torch.zeros_like(lo, dtype=torch.bool)


class NegOp(BoundOp):
    """``-x`` (exact): lower and upper swap, so infinite bounds stay infinite (not nan)."""

    def forward(self, x):
        return -x

    def ibp(self, b):
        return -b[1], -b[0]

    def linear(self, f, pre=None):
        return LinForm(-f.uw, -f.ub, -f.lw, -f.lb, exact=f.exact)

    def backward(self, A, pre=None, in_shapes=None):
        return [-A], None


class FillOp(BoundOp):
    """A constant shaped by its input (``zeros_like``, ``full_like``, ``new_ones``, ``fill_``):
    every sample gets ``value`` (per-sample, in the model's dtype, as the model's op wrote it)
    whatever the input holds; exact, its input only gives the batch size."""

    piecewise_linear = True

    def forward(self, x):
        return self.value.to(x.dtype).expand(x.shape[0], *self.value.shape)

    def ibp(self, b):
        v = self.forward(b[0])
        return v, v

    def linear(self, f, pre=None):
        lb = self.forward(f.lb)
        lw = lb.new_zeros((lb.shape[0], f.k, *lb.shape[1:]))
        return LinForm(lw, lb, lw, lb, exact=True)

    def backward(self, A, pre=None, in_shapes=None):
        const = (A * self.value.to(A.dtype)).reshape(A.shape[0], -1).sum(1)
        return [A.new_zeros((A.shape[0], *in_shapes[0]))], const

    def loose(self, lo, hi):
        return torch.zeros_like(lo, dtype=torch.bool)

    def our_radius(self, pre, u, d_out):
        # the model's op is exact, but the backward constant sums A * value over the sample's
        # elements in the coefficients' dtype
        if not self.rounding:
            return None
        lo = pre[0][0]
        v = self.forward(lo).abs()
        return gamma(max(d_out, v[0].numel()) + 2, u) * v


# ------------------------------------------------------------- fused normalisation kernels
class FusedRoundingOp(BoundOp):
    """The identity on its first input, whose ``radius`` is the float error of a *fused*
    kernel (LayerNorm, softmax, log_softmax) that the graph before it bounds as the exact
    real function through a decomposition whose ops charge no model rounding (``u = 0``
    there: the model never evaluates them). The other inputs are nodes of that decomposition
    whose bounds the error bound needs (the kernel's input, the centred values, the
    variance); they get zero coefficients backward. ``u`` is the model's unit roundoff."""

    fan = 1  # not a sum: makes the bound passes ask for the radius

    def __init__(self, name, n_inputs):
        super().__init__(name)
        self.n_inputs = n_inputs

    def forward(self, *xs):
        return xs[0]

    def clip(self, pre):
        """Bounds of the exact output known a priori (softmax in [0, 1], a LayerNorm output
        within ``|g| sqrt(n - 1)`` of its bias), or None: intersected with the decomposition's."""
        return None

    def ibp(self, *bs):
        c = self.clip(bs)
        if c is None:
            return bs[0]
        return torch.maximum(bs[0][0], c[0]), torch.minimum(bs[0][1], c[1])

    def linear(self, *forms, pre=None):
        f = forms[0]
        c = self.clip(pre)
        if c is None:
            return f
        # where a form's constant is infinite (an overflow inside the decomposition), the
        # a-priori bound as a constant form: an infinite constant would be nan further on
        bl, bu = ~torch.isfinite(f.lb), ~torch.isfinite(f.ub)
        if not bool(bl.any() or bu.any()):
            return f
        zero = torch.zeros((), dtype=f.lw.dtype, device=f.lw.device)
        return LinForm(torch.where(bl.unsqueeze(1), zero, f.lw), torch.where(bl, c[0].expand_as(f.lb), f.lb),
                       torch.where(bu.unsqueeze(1), zero, f.uw), torch.where(bu, c[1].expand_as(f.ub), f.ub))

    def backward(self, A, pre=None, in_shapes=None):
        out = [A] + [torch.zeros((A.shape[0], *s), dtype=A.dtype, device=A.device) for s in in_shapes[1:]]
        return out, None

    def our_radius(self, pre, u, d_out):
        return None  # no arithmetic of ours

    def radius(self, pre, ours: bool = True, ours_pre=None):
        if not self.rounding:
            return None
        R = self.kernel_radius(pre)
        # our own evaluation of the bound (a few dozen roundings, polynomial of degree <= 3 in
        # the rounded quantities): 256 ulps of it, and the smallest normal number
        R = R * (1 + 256 * self.u_ours) + 4 * tiny(R.dtype)
        return torch.where(torch.isnan(R), torch.full_like(R, torch.inf), R)

    def kernel_radius(self, pre):  # pragma: no cover - abstract
        raise NotImplementedError


class LayerNormRoundingOp(FusedRoundingOp):
    """The float error of ``native_layer_norm``'s kernel over the normalised ``dims`` (``n``
    elements): inputs ``(y, x, c, v)``, with ``y`` the exact output, ``x`` the kernel's
    input, ``c = x - mean`` and ``v = var + eps`` (exact, bounded by the decomposition).

    The argument (``u`` the model's unit roundoff, ``M`` the row's ``max |x|``):
    * the mean: any summation order, Welford's updates included, ``|mu_fl - mu| <= E_mu =
      gamma_{3n+8} M`` (a sum of ``n`` terms and a division, Welford's ``n`` updates of three
      roundings each);
    * the variance: ``|var_fl - var| <= E_var = 8 gamma_{2n+8} M^2``, relative to the
      *magnitude* ``mean(x^2) <= M^2``, not to ``var``: the one-pass formula ``E[x^2] - mu^2``
      is off by about ``4 gamma_n M^2``, the two-pass one and Welford's (what torch uses on CPU
      and CUDA) by less; the variance itself may be far smaller (a near-constant row), so
      its relative error is unbounded and only ``v = var + eps >= eps`` keeps ``rstd`` finite.
      ``dv = E_var + 2 u v_hi`` adds the rounding of ``var + eps``;
    * ``rstd = v^-1/2``: with ``v_lo - dv > 0`` (else no bound: inf), ``R = (v_lo - dv)^-1/2``
      bounds the exact and the computed argument's ``rstd``, ``|rstd(v + dv) - rstd(v)| <=
      dv R^3 / 2`` (mean value theorem) and the kernel's ``1 / sqrt`` (or ``rsqrt``, CUDA) is
      within 8 ulps: ``|rstd_fl - rstd| <= E_r = dv R^3 / 2 + 8 u R``;
    * the output ``((x rstd_fl - mu_fl rstd_fl) g + b)``, each product and sum rounded (or
      fused): ``|t_fl - c rstd| <= C E_r + E_mu R' + u (2 M + E_mu) R' + u T`` with ``C >= |c|``,
      ``R' = R + E_r``, ``T = (C + E_mu) R' + u (2 M + E_mu) R'`` (the roundings of ``x r`` and
      ``mu r``, which cancel in their difference: relative to ``|x| r``, not to ``|c| r``), and
      the affine step adds ``2 u |g| T + u |b|``, scaled by ``|g|``, with a factor ``1 + 8 u``
      for the second-order terms.
    * Where ``v_lo - dv <= 0`` there is no relative bound: then the kernel's clamp of its
      variance at 0 gives ``rstd_fl <= (eps (1 - 2u))^-1/2 (1 + 8u)`` and the radius is the
      exact output's magnitude plus a bound of the model's (finite, and wide)."""

    def __init__(self, name, dims, n, eps, has_weight, has_bias):
        super().__init__(name, 4)
        self.dims, self.n, self.eps = tuple(dims), int(n), float(eps)
        self.has_weight, self.has_bias = has_weight, has_bias
        self.weight = self.bias = None

    def clip(self, pre):
        # sum_i ((x_i - mean) rstd)^2 = n var / (var + eps) < n and sum_i (x_i - mean) = 0 give
        # |(x_i - mean) rstd| <= sqrt(n - 1): the exact output is within |g| sqrt(n - 1) of b
        yb = pre[0]
        r = math.sqrt(max(self.n - 1, 0)) * (1 + 8 * self.u_ours)
        g = 1.0 if self.weight is None else self.weight.abs()
        b = 0.0 if self.bias is None else self.bias
        lo = (b - g * r) - 8 * self.u_ours * (abs(b) + g * r) - tiny(yb[0].dtype)
        hi = (b + g * r) + 8 * self.u_ours * (abs(b) + g * r) + tiny(yb[0].dtype)
        return torch.as_tensor(lo, dtype=yb[0].dtype).expand_as(yb[0]), \
            torch.as_tensor(hi, dtype=yb[0].dtype).expand_as(yb[0])

    def _statistics(self, pre):
        """``(M, C, E_mu, R, E_r, ok)``: the row's ``max |x|``, ``|x - mean|``, the mean's and
        rstd's float errors and the bound ``R`` of rstd (``ok``: a relative bound holds), as
        the docstring derives them; layer and group norm share them."""
        _, xb, cb, vb = pre
        u, n, dims = self.u, self.n, self.dims
        M = _mag(xb).amax(dims, keepdim=True)
        C = _mag(cb)
        v_lo, v_hi = vb
        E_mu = gamma(3 * n + 8, u) * M
        dv = 8 * gamma(2 * n + 8, u) * M * M + 2 * u * v_hi.abs()
        base = v_lo - dv
        ok = base > 0
        R = torch.where(ok, torch.rsqrt(torch.where(ok, base, torch.ones_like(base))), torch.full_like(base, torch.inf))
        E_r = dv * R * R * R / 2 + 8 * u * R
        return M, C, E_mu, R, E_r, ok

    def kernel_radius(self, pre):
        u = self.u
        M, C, E_mu, R, E_r, ok = self._statistics(pre)
        R2 = R + E_r
        T = (C + E_mu) * R2 + u * (2 * M + E_mu) * R2
        E_t = C * E_r + E_mu * R2 + u * (2 * M + E_mu) * R2 + u * T
        g = 1.0 if self.weight is None else self.weight.abs()
        b = 0.0 if self.bias is None else self.bias.abs()
        E = g * (E_t + 2 * u * (1 + u) * T) + u * b
        E = E * (1 + 8 * u) + 8 * underflow(u)
        if not bool(ok.all()):
            # no relative bound (var + eps may be below the variance's error): the kernel clamps
            # its variance at 0 (CPU: max(var, 0); Welford's M2 sums non-negative terms), so
            # rstd_fl <= (eps (1 - 2u))^-1/2 (1 + 8u), and the model's output is within
            # |g| T_eps + |b| of 0; the radius covers the exact output's magnitude plus that
            R_eps = (1 + 8 * u) / math.sqrt(self.eps * (1 - 2 * u))
            T_eps = (C + E_mu) * R_eps * (1 + u) + u * (2 * M + E_mu) * R_eps
            crude = _mag(pre[0]) + (g * T_eps * (1 + 4 * u) + b * (1 + 2 * u)) * (1 + 8 * u) + 8 * underflow(u)
            E = torch.where(ok, E, crude)
            T = torch.where(ok, T, T_eps)
        return overflow_guard(E.expand(C.shape).clone(), g * T + b, u)


class GroupNormRoundingOp(LayerNormRoundingOp):
    """The float error of ``native_group_norm``'s kernel, in the grouped view ``[G, n]`` of a
    sample (``n = C / G * HxW``; ``weight``/``bias`` expanded to that view). Mean, variance
    and ``rstd`` as for layer norm (``LayerNormRoundingOp``: any summation order, Welford's
    included). The output step differs: the kernel folds the affine into a per-channel scale
    and shift, ``S = rstd_fl g``, ``B = b - S mu_fl``, ``y = x S + B`` (CPU and CUDA, either
    memory format; fused or not), so its roundings are relative to ``|x| |S|`` and
    ``|mu| |S|``, which cancel in ``x S - mu S``, and to ``|b|`` twice:
    ``|y_fl - y| <= |g| (C E_r + E_mu R' + u R' (C + 3 M + 2 E_mu)(1 + u)^2 + 3 u T) + 2 u (1 + u) |b|``
    (``T >= |(x - mu) rstd|``). Without a relative bound (``var + eps`` below its error) the
    crude bound takes ``|x S| + |mu S| <= (2 M + E_mu) R_eps |g|``."""

    def kernel_radius(self, pre):
        u = self.u
        M, C, E_mu, R, E_r, ok = self._statistics(pre)
        R2 = R + E_r
        T = (C + E_mu) * R2
        g = 1.0 if self.weight is None else self.weight.abs()
        b = 0.0 if self.bias is None else self.bias.abs()
        E_t = C * E_r + E_mu * R2 + u * (C + 3 * M + 2 * E_mu) * R2 * (1 + u) ** 2 + 3 * u * T
        E = g * E_t + 2 * u * (1 + u) * b
        E = E * (1 + 8 * u) + 8 * underflow(u)
        if not bool(ok.all()):
            R_eps = (1 + 8 * u) / math.sqrt(self.eps * (1 - 2 * u))
            T_eps = (2 * M + E_mu) * R_eps * (1 + u) ** 3
            crude = _mag(pre[0]) + (g * T_eps + b * (1 + u) ** 2) * (1 + 8 * u) + 8 * underflow(u)
            E = torch.where(ok, E, crude)
            T = torch.where(ok, T, T_eps)
        return overflow_guard(E.expand(C.shape).clone(), g * T + b, u)


class VectorNormRoundingOp(FusedRoundingOp):
    """The float error of ``linalg_vector_norm`` (ord 2) over ``n`` elements: input ``y``,
    the exact norm ``r`` (bounded by its decomposition, square, sum, sqrt). However the kernel
    orders, groups, scales (BLAS ``nrm2`` divides by a running maximum) or accumulates in a
    wider type, the sum of squares it takes is within ``theta = gamma_{2n+4}`` of
    ``S = r^2`` relatively (at most two roundings per term and one per addition), and
    ``|sqrt(S (1 +- theta)) - r| <= theta r``; the final ``sqrt`` (or division) adds
    ``u (1 + theta) r``; squares below the normal range add up to ``n`` smallest normal
    numbers to ``S``, so ``sqrt`` of that to ``r``; and where ``S`` may overflow (``r^2``
    near the dtype's largest number) the model's value may be inf: no bound."""

    def __init__(self, name, n):
        super().__init__(name, 1)
        self.n = int(n)

    def clip(self, pre):
        yb = pre[0]
        return torch.zeros_like(yb[0]), torch.full_like(yb[1], torch.inf)

    def kernel_radius(self, pre):
        u, n = self.u, self.n
        R = _mag(pre[0])
        theta = gamma(2 * n + 4, u)
        E = theta * R * (1 + u) + u * (1 + theta) * R + math.sqrt((n + 1) * underflow(u)) * 2
        return overflow_guard(E, R * R * (1 + theta) * 2, u)


class SoftmaxRoundingOp(FusedRoundingOp):
    """The float error of ``_softmax`` / ``_log_softmax`` over dimension ``dim`` (``n``
    elements): inputs ``(y, x)``, ``y`` the exact output (bounded by the decomposition) and
    ``x`` the kernel's input. The kernel (CPU and CUDA alike): ``m = max x`` (exact),
    ``z_j = fl(x_j - m)``, ``e_j = exp(z_j)``, ``S = sum e_j``, then ``e_i / S`` (or ``e_i * (1 /
    S)``) for softmax and ``z_i - log S`` (or ``x_i - (m + log S)``) for log_softmax.

    * Each term: ``|fl(x_j - m) - (x_j - m)| <= u Z`` with ``Z = max_j x_hi - min_j x_lo``
      (``>= |x_j - m|``), so ``exp`` of it is off by ``exp(u Z) - 1 <= 1.01 u Z`` relatively
      (``Z`` capped where ``exp`` underflows: such terms are below the smallest normal number
      and count as absolute error), and the vectorised ``exp`` (torch's CPU softmax takes its
      fast ``exp_u20``) by ``EXP_ULPS`` ulps: ``|e_j - exp(z_j)| <= eps exp(z_j)``, ``eps = EXP_ULPS
      u + 1.01 u Z``.
    * The sum of positive terms: relative error ``eta <= eps + gamma_{n+2} (1 + eps)``.
    * Softmax: ``|s_fl - s| <= s ((1 + eps)(1 + gamma_2) / (1 - eta) - 1)``, ``s`` its upper bound.
    * Log-softmax: ``|log S_fl - log S| <= eta / (1 - eta)`` plus 8 ulps of ``log S + 1`` for the
      kernel (``log S <= log n``); the subtractions round at most ``3 u (M + Z + log n)``, with
      ``M = max |x|`` (``x_i - (m + log S)`` rounds ``m + log S`` relative to ``|m|``).
    * Terms that underflow: ``(4 n + 8)`` smallest normal numbers, absolute."""

    #: ulps of the kernel's exp: torch's vectorised ``exp_u20`` on CPU (a faster polynomial,
    #: documented there as within 20 ulps), ``expf`` on CUDA (2 ulps): 32 charged
    EXP_ULPS = 32.0
    #: softmax's decomposition takes ``exp(min(x_j - x_i, CAP))`` (registry): ``exp(-CAP)`` added
    CAP = 60.0

    def __init__(self, name, dim, n, log):
        super().__init__(name, 2)
        self.dim, self.n, self.log = int(dim), int(n), bool(log)

    def clip(self, pre):
        yb, xb = pre
        dt = yb[0].dtype
        if not self.log:  # softmax is in [0, 1]
            return torch.zeros_like(yb[0]), torch.ones_like(yb[1])
        # log_softmax: x_i - max_j x_j - log n <= y_i <= 0
        top = xb[1].amax(self.dim, keepdim=True)
        a = xb[0] - top
        logn = math.log(self.n) * (1 + 1e-6) + 1e-6
        lo = a - logn - 8 * self.u_ours * (xb[0].abs() + top.abs() + logn) - tiny(dt)
        return lo, torch.zeros_like(yb[1])

    def kernel_radius(self, pre):
        yb, xb = pre
        u, n, d = self.u, self.n, self.dim
        Z = xb[1].amax(d, keepdim=True) - xb[0].amin(d, keepdim=True)
        zcap = -math.log(underflow(u)) + 1.0
        eps = self.EXP_ULPS * u + 1.01 * u * Z.clamp(max=zcap)
        eta = eps + gamma(n + 2, u) * (1 + eps)
        ok = eta < 0.5
        eta_s = torch.where(ok, eta, torch.zeros_like(eta))
        under = (4 * n + 8) * underflow(u)
        if not self.log:
            rel = (1 + eps) * (1 + gamma(2, u)) / (1 - eta_s) - 1
            R = _mag(yb) * rel + under + math.exp(-self.CAP)
        else:
            logn = math.log(n) * (1 + 1e-6) + 1e-6
            M = _mag(xb).amax(d, keepdim=True)
            dL = eta_s / (1 - eta_s) + 8 * u * (logn + 1) + 8 * u
            R = (dL + 3 * u * (1 + u) * (M + Z + logn) + under).expand(yb[0].shape)
        R = torch.where(ok, R, torch.full_like(R, torch.inf))
        return R.expand(yb[0].shape).clone()


class MaxPoolOp(BoundOp):
    # our_radius: the selection is exact; the constant's sum is bounded like an activation's
    """Max over windows (max pooling without padding, ``amax``). ``windows(x)`` is a
    linear selection ``[N, *S] -> [N, *S_out, W]``. Relaxation: the upper line is the
    constant max of the windows' upper bounds (exact when one element dominates: then
    both lines select it); the lower line selects the element with the largest lower bound."""

    def __init__(self, name, windows, out_shape):
        super().__init__(name)
        self.windows = windows
        self.out_shape = out_shape

    def forward(self, x):
        return self.windows(x).amax(-1)

    def our_radius(self, pre, u, d_out):
        return gamma(d_out + 4, u) * 2 * self.forward(_mag(pre[0]))

    def ibp(self, b):
        return self.forward(b[0]), self.forward(b[1])

    def _select(self, lo, hi):
        wl, wh = self.windows(lo), self.windows(hi)
        j = wl.argmax(-1, keepdim=True)
        best_lo = wl.gather(-1, j)
        others_hi = wh.scatter(-1, j, torch.full_like(best_lo, -torch.inf)).amax(-1, keepdim=True)
        dominant = (best_lo >= others_hi)[..., 0]  # the max is exactly the selected input
        return j, dominant, wh.amax(-1)

    def _pick(self, x, j):
        """The selected element of each window (``j`` has x's batch): linear in x."""
        return self.windows(x).gather(-1, j)[..., 0]

    def linear(self, form, pre=None):
        lo, hi = pre[0]
        j, dominant, upper = self._select(lo, hi)
        n, k = form.lw.shape[:2]
        jj = j.repeat_interleave(k, 0)
        lw = self._pick(form.lw.reshape(n * k, *form.lw.shape[2:]), jj).reshape(n, k, *self.out_shape)
        lb = self._pick(form.lb, j)
        uw_sel = self._pick(form.uw.reshape(n * k, *form.uw.shape[2:]), jj).reshape(n, k, *self.out_shape)
        ub_sel = self._pick(form.ub, j)
        dm = dominant.unsqueeze(1)
        uw = torch.where(dm, uw_sel, torch.zeros_like(uw_sel))
        ub = torch.where(dominant, ub_sel, upper)
        return LinForm(lw, lb, uw, ub)

    def backward(self, A, pre=None, in_shapes=None):
        lo, hi = pre[0]
        j, dominant, upper = self._select(lo, hi)
        rep = A.shape[0] // lo.shape[0]
        if rep > 1:
            j, dominant, upper = (v.repeat_interleave(rep, 0) for v in (j, dominant, upper))
        Ap, An = A.clamp(min=0), A.clamp(max=0)
        use_sel = An + torch.where(dominant, Ap, torch.zeros_like(Ap))  # coefficients on x_j
        const = torch.where(dominant, torch.zeros_like(Ap), Ap * _like(upper, A)).reshape(A.shape[0], -1).sum(1)
        in_shape = in_shapes[0]

        def pick(x):
            return self._pick(x, j)

        return [_vjp(pick, use_sel, in_shape)], const


# ------------------------------------------------------------------- products of data
class BilinearOp(BoundOp):
    """``x * y`` for two data tensors (broadcast against each other, e.g. a squeeze-and-
    excitation gate ``[N, C, 1, 1] * [N, C, H, W]``): the gated products of GLU, SE blocks
    and ``sigmoid(g(x)) * h(x)``.

    Relaxation on the box ``[lx, ux] x [ly, uy]`` of the operands' concrete bounds (McCormick):
    two planes with slopes ``(a, b)`` per element, ``a x + b y + cl <= x y <= a x + b y + cu``,
    with the slopes those of the average of the two McCormick planes on each side,
    ``a = (ly + uy) / 2``, ``b = (lx + ux) / 2`` (the average of two sound planes is sound; here
    it is the linearisation at the box centre, ``x y = a x + b y - a b + dx dy`` with
    ``|dx dy| <= rx ry``), and the intercepts the exact extremes of ``x y - a x - b y`` over the
    box: a bilinear function takes them at the four corners, so whatever ``a`` and ``b`` are
    (rounded or not) the lines are sound once the corner values are padded by our rounding.

    Floating point: the model rounds a product once, ``|fl(xy) - xy| <= u |xy|`` (plus the
    smallest normal number for underflow), and so do our corner products in IBP: the radius
    (``fan = 1``, ``magnitude = |x| |y|``) covers both. Our products of slopes and forms
    (forward mode) and the backward step's ``A * a`` summed over the ``group`` output elements
    that broadcast onto one input element are covered by the ``ours`` part of the radius
    (``3 gamma_{group + 6}`` of ``|x| |y|``, which bounds ``|a| |x| + |b| |y| + |c|``) or, in a
    float32 backward pass, by ``our_radius``."""

    n_inputs = 2
    fan = 1

    def __init__(self, name: str, out_shape, in_shapes):
        super().__init__(name)
        self.out_shape = tuple(out_shape)
        n_out = int(math.prod(self.out_shape))
        #: output elements that broadcast onto one element of each input (summed in backward)
        self.groups = tuple(max(1, n_out // max(1, int(math.prod(s)))) for s in in_shapes)
        self.group = max(self.groups)

    def loose(self, lo, hi):
        """The McCormick planes have a gap wherever an operand's interval has width."""
        return hi > lo

    def forward(self, x, y):
        return x * y

    @staticmethod
    def _corners(p, q):
        (lx, ux), (ly, uy) = p, q
        return torch.stack(torch.broadcast_tensors(lx * ly, lx * uy, ux * ly, ux * uy))

    def ibp(self, p, q):
        c = self._corners(p, q)
        lo, hi = c.amin(0), c.amax(0)
        # 0 * inf is nan: no bound there
        lo = torch.where(torch.isnan(lo), torch.full_like(lo, -torch.inf), lo)
        hi = torch.where(torch.isnan(hi), torch.full_like(hi, torch.inf), hi)
        return lo, hi

    def magnitude(self, mx, my):
        return mx * my

    def radius(self, pre, ours: bool = True, ours_pre=None) -> Optional[torch.Tensor]:
        if not self.rounding:
            return None
        mag, R = self.model_radius(pre)
        if ours:
            m = mag if ours_pre is None else self.magnitude(*[_mag(b) for b in ours_pre])
            R = R + 3 * gamma(self.group + 6, self.u_ours) * m + (2 * self.group + 16) * underflow(self.u_ours)
        return overflow_guard(R, mag, self.u)

    #: which sound planes (every choice is sound: the intercepts are the exact corner extremes)
    planes = "avg"
    #: forward mode also tries the single McCormick planes, per element
    forward_choice = True

    def _slopes(self, p, q):
        (lx, ux), (ly, uy) = p, q
        if self.planes == "lirpa":
            return ly, lx, uy, lx
        a, b = (ly + uy) / 2, (lx + ux) / 2
        return a, b, a, b

    def _intercepts(self, p, q, a, b):
        """The min and max of ``x y - a x - b y`` over the box, padded by our rounding: a
        bilinear function's extremes on a box are at its corners."""
        (lx, ux), (ly, uy) = p, q
        xs, ys = (lx, lx, ux, ux), (ly, uy, ly, uy)
        g = torch.stack(torch.broadcast_tensors(*[x * y - a * x - b * y for x, y in zip(xs, ys)]))
        mx, my = _mag(p), _mag(q)
        e = 8 * self.u_ours * (mx * my + a.abs() * mx + b.abs() * my) + 4 * underflow(self.u_ours) + tiny(lx.dtype)
        return g.amin(0) - e, g.amax(0) + e

    def relax(self, p, q):
        """``(alx, aly, cl, aux, auy, cu)`` shaped like the output: ``alx x + aly y + cl <= x y
        <= aux x + auy y + cu`` for every ``x`` in ``p`` and ``y`` in ``q``."""
        alx, aly, aux, auy = self._slopes(p, q)
        cl, cu = self._intercepts(p, q, alx, aly)
        if not (aux is alx and auy is aly):  # other upper slopes: their own corner extremes
            _, cu = self._intercepts(p, q, aux, auy)
        out = list(torch.broadcast_tensors(alx, aly, cl, aux, auy, cu))
        bad = ~torch.stack([torch.isfinite(v) for v in out]).all(0)
        if bool(bad.any()):  # infinite bounds: no line (a constant infinite intercept)
            zero = torch.zeros_like(out[0])
            for i in (0, 1, 3, 4):
                out[i] = torch.where(bad, zero, out[i])
            out[2] = torch.where(bad, torch.full_like(zero, -torch.inf), out[2])
            out[5] = torch.where(bad, torch.full_like(zero, torch.inf), out[5])
        return tuple(out)

    def relaxed(self, p, q):
        """``relax(p, q)`` remembered for the last bounds (as ``ActivationOp.relaxed``)."""
        ts = (p[0], p[1], q[0], q[1])
        v = versions(*ts)
        c = self.__dict__.get("_relaxed")
        if v is not None and c is not None and all(x is y for x, y in zip(c[0], ts)) and c[1] == v:
            return c[2]
        out = self.relax(p, q)
        self._relaxed = None if v is None else (ts, v, out)
        return out

    @staticmethod
    def _times(c, f, lower: bool):
        """A lower (``lower``) or upper form of ``c * x`` from x's form ``f``: ``(w, b)``."""
        pos, pos1, c1 = c >= 0, (c >= 0).unsqueeze(1), c.unsqueeze(1)
        if lower:
            return torch.where(pos1, c1 * f.lw, c1 * f.uw), torch.where(pos, c * f.lb, c * f.ub)
        return torch.where(pos1, c1 * f.uw, c1 * f.lw), torch.where(pos, c * f.ub, c * f.lb)

    def _side(self, f, g, ax, ay, c, lower: bool):
        w1, b1 = self._times(ax, f, lower)
        w2, b2 = self._times(ay, g, lower)
        return w1 + w2, b1 + b2 + c

    def linear(self, f, g, pre=None):
        """Forward mode: the default planes, and on each side the two single McCormick planes
        as well; per element the form whose concretisation over the box is tightest is kept
        (every candidate is a sound plane, so any choice is)."""
        alx, aly, cl, aux, auy, cu = self.relaxed(*pre)
        lw, lb = self._side(f, g, alx, aly, cl, True)
        uw, ub = self._side(f, g, aux, auy, cu, False)
        if self.forward_choice:
            (lx, ux), (ly, uy) = pre
            if bool(torch.isfinite(lx).all() and torch.isfinite(ux).all() and torch.isfinite(ly).all()
                    and torch.isfinite(uy).all()):
                # lower planes through (lx, ly) and (ux, uy); upper through (lx, uy) and (ux, ly)
                for (ax, ay), lower in (((ly, lx), True), ((uy, ux), True), ((uy, lx), False), ((ly, ux), False)):
                    ax, ay = torch.broadcast_tensors(ax, ay)
                    ax, ay = ax.expand_as(alx), ay.expand_as(alx)
                    c = self._intercepts(pre[0], pre[1], ax, ay)[0 if lower else 1]
                    w, b = self._side(f, g, ax, ay, c, lower)
                    if lower:
                        better = (b - w.abs().sum(1)) > (lb - lw.abs().sum(1))
                        lw, lb = torch.where(better.unsqueeze(1), w, lw), torch.where(better, b, lb)
                    else:
                        better = (b + w.abs().sum(1)) < (ub + uw.abs().sum(1))
                        uw, ub = torch.where(better.unsqueeze(1), w, uw), torch.where(better, b, ub)
        return LinForm(lw, lb, uw, ub)

    def our_radius(self, pre, u, d_out):
        # A * slope rounded (the slope rounded to A's dtype too) and summed over the broadcast
        # group, for each input; the intercepts' products summed over d_out terms into the constant
        alx, aly, cl, aux, auy, cu = self.relaxed(*pre)
        mx, my = _mag(pre[0]), _mag(pre[1])
        return gamma(self.group + 4, u) * ((alx.abs() + aux.abs()) * mx + (aly.abs() + auy.abs()) * my) + \
            gamma(d_out + 2, u) * (cl.abs() + cu.abs())

    def backward(self, A, pre=None, in_shapes=None):
        alx, aly, cl, aux, auy, cu = self.relaxed(*pre)
        n = alx.shape[0]
        m = A.shape[0] // n  # rows grouped per box: [n * m, *S]
        A3 = A.reshape(n, m, -1)
        alx, aly, cl, aux, auy, cu = (_like(v, A).reshape(n, 1, -1) for v in (alx, aly, cl, aux, auy, cu))
        Ap, An = A3.clamp(min=0), A3.clamp(max=0)
        # backward bounds from above: the upper plane where A >= 0, the lower one where A < 0
        Ax = (Ap * aux + An * alx).reshape(A.shape)
        Ay = (Ap * auy + An * aly).reshape(A.shape)
        const = (Ap * cu + An * cl).sum(2).reshape(-1)
        return [_sum_to(Ax, (A.shape[0], *in_shapes[0])), _sum_to(Ay, (A.shape[0], *in_shapes[1]))], const


class SquareOp(ActivationOp):
    """``x * x`` (the same tensor twice) and ``x ** 2``: convex, so the chord is above and a
    tangent below. Both lines take the chord's slope ``s = lo + hi`` (the tangent at the
    midpoint has it too); the lower intercept is ``min_x x^2 - s x = -s^2 / 4`` (the global
    minimum, sound for any rounded ``s``), the upper one the larger of ``x^2 - s x`` at the two
    ends (a convex function's maximum on an interval), padded by our rounding. The model's
    kernel rounds once for ``x * x`` (``ulps`` 2 here); ``pow`` is taken at 8 ulps like other
    elementwise kernels (torch computes ``x ** 2`` as ``x * x``)."""

    monotone = False
    f0 = 0.0

    def __init__(self, name, ulps: float = 2.0):
        super().__init__(name)
        self.ulps = float(ulps)

    def f(self, x):
        return x * x

    def f_err(self, lo, hi):
        m = torch.maximum(lo.abs(), hi.abs())
        fm = m * m
        return overflow_guard(self.ulps * (self.u + self.u_ours) * fm + 2 * max(tiny(lo.dtype), underflow(self.u)),
                              fm, self.u)

    def ibp(self, b):
        lo, hi = b
        m = torch.maximum(lo.abs(), hi.abs())
        least = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        e = self.f_err(lo, hi)
        return (least * least - e).clamp(min=0), m * m + e

    def relax(self, lo, hi):
        s = lo + hi
        cl = -(s * s) / 4
        cu = torch.maximum(lo * lo - s * lo, hi * hi - s * hi)
        al, cl, au, cu = self._pad(lo, hi, s, cl, s, cu)
        # the padding counts our rounding of the lines' terms; |cl| is not among them here
        extra = 4 * self.u_ours * (s * s / 4 + lo * lo + hi * hi)
        cl, cu = cl - extra, cu + extra
        bad = ~(torch.isfinite(cl) & torch.isfinite(cu) & torch.isfinite(s))
        if bool(bad.any()):
            zero = torch.zeros_like(s)
            al = au = torch.where(bad, zero, s)
            cl = torch.where(bad, torch.full_like(cl, -torch.inf), cl)
            cu = torch.where(bad, torch.full_like(cu, torch.inf), cu)
        return al, cl, au, cu


class PowOp(SampledActivationOp):
    """``x ** n`` for an integer ``n >= 3`` (the square is ``SquareOp``): odd ``n`` increasing
    (convex above 0, concave below), even ``n`` convex with its minimum 0 at 0. The sampled
    relaxation (chord slope, grid-and-kink intercepts with 0 as a kink), its curvature slack from
    ``|f''| <= n (n - 1) M^(n-2)`` on the interval, ``M = max(|lo|, |hi|)``, and ``|f| <= M^n``,
    ``|f'| <= n M^(n-1)`` there. The kernel computes ``x * x * x`` for ``n = 3`` (two roundings:
    measured within 2 ulps of ``|f|``) and ``pow`` otherwise (within 1 ulp for n = 4 to 8),
    against float64 on 1e6 float32 points of ``[-2, 2]`` to ``[-1e12, 1e12]``: 8 ulps of
    ``M^n`` charged, and the underflow floor; an overflow leaves no bound."""

    kinks = (0.0,)
    ulps = 8.0

    def __init__(self, name, n: int):
        super().__init__(name)
        self.n = int(n)
        self.monotone = self.n % 2 == 1

    def f(self, x):
        return torch.pow(x, self.n)

    def _m(self, lo, hi):
        return torch.maximum(lo.abs(), hi.abs())

    def f_err(self, lo, hi):
        fm = self._m(lo, hi) ** self.n
        return overflow_guard(self.ulps * (self.u + self.u_ours) * fm + 2 * max(tiny(lo.dtype), underflow(self.u)),
                              fm, self.u)

    def lipschitz_on(self, lo, hi):
        L = self.n * self._m(lo, hi) ** (self.n - 1)
        return L * (1 + 16 * self.u_ours)

    def relax_slope(self, lo, hi, s):
        # the base relaxation (its global f2 is 0 here) widened by this interval's curvature bound
        al, cl, au, cu = super().relax_slope(lo, hi, s)
        n = self.n
        h = (hi - lo) / (self.GRID - 1)
        slack = n * (n - 1) * self._m(lo, hi) ** (n - 2) * h * h / 8
        slack = slack * (1 + 16 * self.u_ours)
        return al, cl - slack, au, cu + slack

    def ibp(self, b):
        lo, hi = b
        e = self.f_err(lo, hi)
        flo, fhi = self.f(lo), self.f(hi)
        if self.monotone:
            return flo - e, fhi + e
        top = torch.maximum(flo, fhi)
        bot = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(flo, fhi))
        return (bot - e).clamp(min=0), top + e


class HardsigmoidOp(SampledActivationOp):
    """``hardsigmoid(x) = clamp(x + 3, 0, 6) / 6``: piecewise linear, kinks at -3 and 3. The
    kernel rounds ``x + 3`` and the scaling by 1/6 (relative errors of ``f``): 8 ulps."""

    kinks = (-3.0, 3.0)
    piecewise_linear = True
    lipschitz = 1.0 / 6.0
    f0 = 0.5
    ulps = 8.0

    def f(self, x):
        return F.hardsigmoid(x)


class HardswishOp(SampledActivationOp):
    """``hardswish(x) = x clamp(x + 3, 0, 6) / 6``: 0 below -3, ``x`` above 3, the quadratic
    ``x (x + 3) / 6`` between (``f'' = 1/3``), kinks at -3 and 3; not monotone, ``|f'| <= 1.5``,
    ``|f(x)| <= |x|``. The sampled relaxation (chord slope, grid extremes widened by
    ``f2 h^2 / 8``) is sound for it (docstring of ``SampledActivationOp``)."""

    kinks = (-3.0, 3.0)
    f2 = 1.0 / 3.0
    monotone = False
    lipschitz = 1.5
    f0 = 0.0
    ulps = 8.0

    def f(self, x):
        return F.hardswish(x)


class PReLUOp(SampledActivationOp):
    """``prelu(x, w)``: ``x`` where ``x > 0``, ``w x`` elsewhere, ``w`` a learned constant per
    channel (any sign or size: the slope may exceed 1, making the function concave, or be
    negative). Piecewise linear with a kink at 0, so the sampled relaxation is exact in its
    intercepts for every slope. The model rounds ``w x`` once (2 ulps of ``max(1, |w|) |x|``)."""

    kinks = (0.0,)
    monotone = False
    f0 = 0.0
    ulps = 2.0

    def __init__(self, name):
        super().__init__(name)
        self.weight = None

    def _bound(self):
        self.lipschitz = max(1.0, float(self.weight.detach().abs().max())) if self.weight.numel() else 1.0

    def f(self, x):
        w = self.weight.to(x.dtype)
        return torch.where(x > 0, x, w * x)
