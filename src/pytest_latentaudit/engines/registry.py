"""The op registry: every ATen op a lowered model runs maps, through exactly one handler
here, onto bound operators (ops.py).

A handler reads its arguments by schema name through ``ctx.arg``; after it returns, any
argument it did not read must still hold its schema default, or the op is refused
(``UnsupportedLayer`` naming it). So a keyword or mode a handler does not implement
(``alpha=``, ``rounding_mode=``, ``ceil_mode=True``...) can never be silently dropped.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from . import ops
from .ops import UnsupportedLayer

aten = torch.ops.aten

#: ATen overload -> handler(ctx)
HANDLERS: Dict[object, Callable] = {}


def register(*overloads):
    def deco(fn):
        for o in overloads:
            HANDLERS[o] = fn
        return fn

    return deco


def _ov(packet, *names):
    """The overloads of an op packet that exist in this torch version."""
    out = []
    for n in names:
        o = getattr(packet, n, None)
        if o is not None:
            out.append(o)
    return out


def supported_ops() -> List[str]:
    return sorted({str(o) for o in HANDLERS})


# ----------------------------------------------------------------------------- shapes
def _dim(ctx, d, rank=None):
    """A non-batch dimension index (>= 1) of the data input; refuses the batch dim."""
    rank = ctx.rank() if rank is None else rank
    d = int(d)
    d = d + rank if d < 0 else d
    if d == 0:
        raise UnsupportedLayer(ctx.name, "an op across the batch dimension")
    return d


def _per_sample_const(ctx, v):
    """A constant that broadcasts against per-sample tensors: a leading batch axis of size 1
    is dropped; a constant shaped like the traced batch depends on it and is refused."""
    if not torch.is_tensor(v):
        return v
    rank = ctx.out_rank()
    if v.dim() == rank:
        if v.shape[0] != 1:
            raise UnsupportedLayer(ctx.name, "a constant with a batch-sized leading dimension")
        v = v[0]
    elif v.dim() > rank:
        raise UnsupportedLayer(ctx.name, "a constant of higher rank than the data")
    return v


def _shape_fn(fn, desc, fan=0):
    return lambda ctx: ctx.emit(ops.LinearMapOp(ctx.name, fn, desc, fan=fan), [ctx.data_arg("self")])


@register(*_ov(aten.view, "default"), *_ov(aten._unsafe_view, "default"), *_ov(aten.view_copy, "default"))
def _view(ctx):
    ctx.arg("size")
    shape = ctx.out_shape()
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.reshape(x.shape[0], *shape), "reshape"),
                    [ctx.data_arg("self")])


@register(*_ov(aten.expand, "default"), *_ov(aten.expand_copy, "default"))
def _expand(ctx):
    size = list(ctx.arg("size"))
    ctx.arg("implicit")
    in_rank = ctx.rank()
    if len(size) == in_rank and size[0] not in (-1, ctx.batch):
        raise UnsupportedLayer(ctx.name, "expand that changes the batch dimension")
    if len(size) != in_rank:
        raise UnsupportedLayer(ctx.name, "expand that adds leading dimensions")
    per = list(ctx.out_shape())
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.expand(x.shape[0], *per), "expand"),
                    [ctx.data_arg("self")])


@register(*_ov(aten.unsqueeze, "default"))
def _unsqueeze(ctx):
    d = int(ctx.arg("dim"))
    d = d + ctx.out_rank() if d < 0 else d
    if d == 0:
        raise UnsupportedLayer(ctx.name, "unsqueeze before the batch dimension")
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.unsqueeze(d), "unsqueeze"), [ctx.data_arg("self")])


@register(*_ov(aten.squeeze, "default", "dim", "dims"))
def _squeeze(ctx):
    # squeeze the dims that were size 1 at trace time, never the batch (which may be 1 later)
    if "dim" in ctx.schema_names:
        dims = ctx.arg("dim")
        dims = [dims] if isinstance(dims, int) else list(dims)
    else:
        dims = [i for i, s in enumerate(ctx.in_value().shape) if s == 1 and i > 0]
    dims = tuple(_dim(ctx, d) for d in dims)
    shape = ctx.out_shape()
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.reshape(x.shape[0], *shape), f"squeeze{dims}"),
                    [ctx.data_arg("self")])


@register(*_ov(aten.permute, "default"), *_ov(aten.permute_copy, "default"))
def _permute(ctx):
    dims = [int(d) % ctx.rank() for d in ctx.arg("dims")]
    if dims[0] != 0:
        raise UnsupportedLayer(ctx.name, "permute that moves the batch dimension")
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.permute(*dims), "permute"), [ctx.data_arg("self")])


@register(*_ov(aten.transpose, "int"))
def _transpose(ctx):
    a, b = _dim(ctx, ctx.arg("dim0")), _dim(ctx, ctx.arg("dim1"))
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.transpose(a, b), "transpose"), [ctx.data_arg("self")])


@register(*_ov(aten.t, "default"))
def _t(ctx):
    if ctx.rank() == 2:
        raise UnsupportedLayer(ctx.name, ".t() of a [batch, features] tensor swaps the batch dimension")
    return ctx.alias(ctx.data_arg("self"))


@register(*_ov(aten.slice, "Tensor"), *_ov(aten.slice_copy, "Tensor"))
def _slice(ctx):
    d = _dim(ctx, ctx.arg("dim"))
    start, end, step = ctx.arg("start"), ctx.arg("end"), ctx.arg("step")
    idx = (slice(None),) * d + (slice(start, end, step),)
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x[idx], f"slice(dim={d})"), [ctx.data_arg("self")])


@register(*_ov(aten.select, "int"), *_ov(aten.select_copy, "int"))
def _select(ctx):
    d, i = _dim(ctx, ctx.arg("dim")), int(ctx.arg("index"))
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.select(d, i), f"select(dim={d})"), [ctx.data_arg("self")])


@register(*_ov(aten.index_select, "default"))
def _index_select(ctx):
    d = _dim(ctx, ctx.arg("dim"))
    index = ctx.const_arg("index")
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.index_select(d, index.to(x.device)), "index_select"),
                    [ctx.data_arg("self")])


@register(*_ov(aten.flip, "default"))
def _flip(ctx):
    dims = [_dim(ctx, d) for d in ctx.arg("dims")]
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.flip(dims), "flip"), [ctx.data_arg("self")])


@register(*_ov(aten.repeat, "default"))
def _repeat(ctx):
    reps = list(ctx.arg("repeats"))
    if len(reps) != ctx.rank() or reps[0] != 1:
        raise UnsupportedLayer(ctx.name, "repeat along the batch dimension")
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: x.repeat(*reps), "repeat"), [ctx.data_arg("self")])


@register(*_ov(aten.constant_pad_nd, "default"))
def _pad(ctx):
    pad, value = list(ctx.arg("pad")), float(ctx.arg("value"))
    if len(pad) > 2 * (ctx.rank() - 1):
        raise UnsupportedLayer(ctx.name, "padding of the batch dimension")
    i = ctx.emit(ops.LinearMapOp(ctx.name, lambda x: F.pad(x, pad), "pad"), [ctx.data_arg("self")])
    if value == 0:
        return i
    in_shape = ctx.in_shape()
    op = ops.AddConstOp(ctx.name + ".value")
    op.consts["bias"] = lambda env: F.pad(torch.zeros(in_shape, dtype=torch.float64), pad, value=value)
    return ctx.emit(op, [i])


@register(*_ov(aten.pixel_shuffle, "default"), *_ov(aten.pixel_unshuffle, "default"))
def _pixel_shuffle(ctx):
    """``PixelShuffle``/``PixelUnshuffle``: a permutation of each sample's entries (over its
    last three dims: a ``[batch, C, H]`` input would take the batch as channels)."""
    up = ctx.target in _ov(aten.pixel_shuffle, "default")
    r = int(ctx.arg("upscale_factor" if up else "downscale_factor"))
    if ctx.rank() < 4:
        raise UnsupportedLayer(ctx.name, "pixel shuffle of a tensor without [batch, C, H, W] dims")
    op = aten.pixel_shuffle.default if up else aten.pixel_unshuffle.default
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: op(x, r), "pixel_shuffle"), [ctx.data_arg("self")])


_EDGE_PADS = {getattr(getattr(aten, f"{kind}_pad{d}d"), "default"): d
              for kind in ("reflection", "replication") for d in (1, 2, 3)
              if hasattr(getattr(aten, f"{kind}_pad{d}d", None), "default")}


@register(*_EDGE_PADS)
def _edge_pad(ctx):
    """Reflection and replication padding: every output entry is one input entry (of the
    same sample: the op pads only the last 1, 2 or 3 dims), so the map is a selection; the
    model's own op runs it."""
    d = _EDGE_PADS[ctx.target]
    pad = [int(v) for v in ctx.arg("padding")]
    if ctx.rank() < d + 1:
        raise UnsupportedLayer(ctx.name, "padding of the batch dimension")
    op = ctx.target
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: op(x, pad), "pad"), [ctx.data_arg("self")])


@register(*_ov(aten.clone, "default"), *_ov(aten.detach, "default"), *_ov(aten.alias, "default"))
def _identity(ctx):
    if "memory_format" in ctx.schema_names:
        ctx.arg("memory_format")
    return ctx.alias(ctx.data_arg("self"))


@register(*_ov(aten._to_copy, "default"))
def _to_copy(ctx):
    for k in ("dtype", "layout", "device", "pin_memory", "non_blocking", "memory_format"):
        ctx.arg(k)
    if ctx.out_value().dtype != ctx.in_value().dtype:
        raise UnsupportedLayer(ctx.name, f"a dtype change to {ctx.out_value().dtype} inside the model")
    return ctx.alias(ctx.data_arg("self"))


# --------------------------------------------------------------------------- tuples
@register(*_ov(aten.split, "Tensor"), *_ov(aten.split_with_sizes, "default"), *_ov(aten.unbind, "int"))
def _split(ctx):
    d = _dim(ctx, ctx.arg("dim"))
    for k in ("split_size", "split_sizes", "chunks"):
        if k in ctx.schema_names:
            ctx.arg(k)
    x = ctx.data_arg("self")
    parts = ctx.out_value()
    unbind = ctx.target in _ov(aten.unbind, "int")
    outs, start = {}, 0
    for j, p in enumerate(parts):
        size = 1 if unbind else p.shape[d]
        s0 = start
        if unbind:
            fn = (lambda s: lambda t: t.select(d, s))(s0)
        else:
            fn = (lambda s, n: lambda t: t.narrow(d, s, n))(s0, size)
        outs[j] = (ops.LinearMapOp(f"{ctx.name}[{j}]", fn, "split"), x)
        start += size
    return ctx.tuple_outputs(outs)


# ------------------------------------------------------------------------ affine ops
def _dense(ctx, x, w_fn, b_fn, fan_hint=None):
    op = ops.DenseOp(ctx.name)
    op.u = ctx.u_matmul
    op.u_in = ctx.u_in_matmul  # TF32/bfloat16 rounding of the inputs when torch allows it
    op.consts["weight"] = w_fn
    op.consts["bias"] = b_fn
    return ctx.emit(op, [x])


@register(*_ov(aten.addmm, "default"))
def _addmm(ctx):
    x = ctx.data_arg("mat1")
    W = ctx.const_ref("mat2")
    b = ctx.const_ref("self")
    beta, alpha = ctx.arg("beta"), ctx.arg("alpha")
    bias_val = ctx.value_of("self")
    if torch.is_tensor(bias_val) and bias_val.dim() == 2 and bias_val.shape[0] != 1:
        raise UnsupportedLayer(ctx.name, "addmm with a batch-shaped bias")
    if alpha != 1:
        # the kernel scales the sum of its products (or one factor) by alpha: folded into W,
        # the products' underflow (2**-149 each in float32) would be counted unscaled, and an
        # alpha * W that underflows or a product that overflows before the scaling not at all
        raise UnsupportedLayer(ctx.name, f"addmm with alpha={alpha!r} (only alpha=1 is bounded)")
    return _dense(ctx, x, lambda env: W(env).T,
                  lambda env: (beta * b(env)).reshape(-1) if torch.is_tensor(b(env)) else None)


@register(*_ov(aten.mm, "default"))
def _mm(ctx):
    x = ctx.data_arg("self")
    W = ctx.const_ref("mat2")
    return _dense(ctx, x, lambda env: W(env).T, lambda env: None)


def _broadcast_weight(ctx, node):
    """The 2-d constant ``W`` ([in, out]) when fx node ``node`` is ``W`` expanded along a new
    leading (batch) dimension, through same-shape views: the ``mat2`` that ``torch.matmul`` hands
    to ``bmm`` for ``x @ W`` (or a Linear) on a 3-d input it does not fold into ``mm`` (a
    transposed one, with a weight that does not require grad). Then every batch item is
    multiplied by the same ``W``, whatever its values; a weight that is anything else (a
    tensor per batch item, data) is refused."""
    lw = ctx.lw
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and HANDLERS.get(node.target) is _view \
            and node.args and isinstance(node.args[0], torch.fx.Node) and torch.is_tensor(lw.values.get(node)) \
            and tuple(lw.values[node].shape) == tuple(lw.values.get(node.args[0], torch.empty(0)).shape):
        node = node.args[0]  # a view to the same shape: the same tensor
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _ov(aten.expand, "default")
            and node.args and isinstance(node.args[0], torch.fx.Node)):
        return None
    src, out = node.args[0], lw.values.get(node)
    sv = lw.values.get(src)
    if lw.depends.get(src, True) or not (torch.is_tensor(sv) and torch.is_tensor(out)) or out.dim() != 3:
        return None
    if sv.dim() != 2 or tuple(sv.shape) != tuple(out.shape[1:]):
        return None  # only a 2-d weight broadcast whole over the batch (not expanded within itself)
    return src


@register(*_ov(aten.bmm, "default"))
def _bmm(ctx):
    """``bmm(x, W expanded over the batch)``: ``x @ W`` at every position of ``[N, P, in]``, a
    dense op over the last dimension (the same op ``_merged_batch_dense`` makes of the
    ``view, mm, view`` that the same product traces as when the weight requires grad)."""
    x = ctx.data_arg("self")
    m2 = ctx.raw("mat2")
    if ctx.is_data(m2):
        raise UnsupportedLayer(ctx.name, "a product of two tensors")
    if ctx.n in ctx.lw.row_products:
        # einsum's [1, batch x rows, k] @ [1, k, m] (graph._merged_batch_bmm): x is already each
        # sample's [rows, k], and the matrix one constant
        W = ctx.const_ref("mat2")
        return _dense(ctx, x, lambda env: W(env)[0].T, lambda env: None)
    src = _broadcast_weight(ctx, m2)
    if src is None or ctx.rank() != 3:
        raise UnsupportedLayer(ctx.name, "bmm with a weight that is not one matrix broadcast over the batch")
    ctx.lw.needed.add(src)
    return _dense(ctx, x, lambda env: env[src].T, lambda env: None)


@register(*_ov(aten.convolution, "default"))
def _convolution(ctx):
    x = ctx.data_arg("input")
    W, b = ctx.const_ref("weight"), ctx.const_ref("bias", optional=True)
    transposed = bool(ctx.arg("transposed"))
    nd = ctx.value_of("weight").dim() - 2
    if nd not in (1, 2):
        raise UnsupportedLayer(ctx.name, f"{nd}-d convolution")
    kw = dict(stride=list(ctx.arg("stride")), padding=list(ctx.arg("padding")), dilation=list(ctx.arg("dilation")),
              groups=int(ctx.arg("groups")))
    out_pad = list(ctx.arg("output_padding"))
    if transposed:
        kw["output_padding"] = out_pad
    elif any(out_pad):
        raise UnsupportedLayer(ctx.name, "output_padding on a forward convolution")
    op = ops.ConvOp(ctx.name, transposed, kw)
    op.u = ctx.u_conv
    op.u_in = ctx.u_in_conv  # cuDNN's TF32 (on by default for convolutions on CUDA)
    op.consts["weight"] = W
    op.consts["bias"] = b
    return ctx.emit(op, [x])


def _batch_norm(ctx, eps):
    x = ctx.data_arg("input")
    w, b = ctx.const_ref("weight", optional=True), ctx.const_ref("bias", optional=True)
    mean, var = ctx.const_ref("running_mean"), ctx.const_ref("running_var")
    if ctx.value_of("running_mean") is None:
        raise UnsupportedLayer(ctx.name, "batch norm without running statistics")
    ctx.arg("momentum")
    rank = ctx.rank()

    def view(v):
        return v.reshape(-1, *([1] * (rank - 2)))

    def scale(env):
        s = 1.0 / torch.sqrt(var(env).double() + eps)
        return view(s if w(env) is None else s * w(env).double())

    def shift(env):
        s = 1.0 / torch.sqrt(var(env).double() + eps)
        s = s if w(env) is None else s * w(env).double()
        t = -mean(env).double() * s
        return view(t if b(env) is None else t + b(env).double())

    def terms(env):
        # what the kernel rounds besides x * scale: mean * scale and the bias (their
        # difference, the exact shift, can be far smaller than either)
        s = 1.0 / torch.sqrt(var(env).double() + eps)
        s = s if w(env) is None else s * w(env).double()
        t = (mean(env).double() * s).abs()
        return view(t if b(env) is None else t + b(env).double().abs())

    op = ops.ChannelAffineOp(ctx.name, n_ops=6)  # (x - mean) * invstd * w + b, invstd = rsqrt(var + eps)
    op.u = ctx.u_elem
    op.consts["weight"] = scale
    op.consts["bias"] = shift
    op.consts["terms"] = terms
    i = ctx.emit(op, [x])
    return ctx.tuple_outputs({0: i}) if ctx.returns_tuple() else i


@register(*_ov(aten._native_batch_norm_legit_no_training, "default"))
def _bn_no_training(ctx):
    return _batch_norm(ctx, float(ctx.arg("eps")))


@register(*_ov(aten.native_batch_norm, "default"), *_ov(aten.cudnn_batch_norm, "default"),
          *_ov(aten.miopen_batch_norm, "default"), *_ov(aten._native_batch_norm_legit, "default"))
def _bn(ctx):
    if ctx.arg("training"):
        raise UnsupportedLayer(ctx.name, "batch norm in training mode (call model.eval())")
    key = "eps" if "eps" in ctx.schema_names else "epsilon"
    return _batch_norm(ctx, float(ctx.arg(key)))


def _affine_const(ctx, x, w, b, n_ops, name=None):
    """``x * w + b`` with constants ``w``, ``b`` (functions of the environment), ``x`` an fx node
    or an index lowered already; ``name``: a step of a longer rewrite (default the op's)."""
    op = ops.ChannelAffineOp(name or ctx.name, n_ops=n_ops)
    op.u = ctx.u_elem
    op.consts["weight"] = w
    op.consts["bias"] = b
    return ctx.emit(op, [x])


def _as_double(v):
    return v.double() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)


@register(*_ov(aten.add, "Tensor", "Scalar"), *_ov(aten.sub, "Tensor", "Scalar"), *_ov(aten.rsub, "Tensor", "Scalar"),
          *_ov(aten.add_, "Tensor", "Scalar"), *_ov(aten.sub_, "Tensor", "Scalar"))
def _add(ctx):
    alpha = ctx.arg("alpha")
    name = ctx.target.overloadpacket.__name__.rstrip("_")
    # y = s1 * self + s2 * other
    s1, s2 = {"add": (1.0, alpha), "sub": (1.0, -alpha), "rsub": (-alpha, 1.0)}[name]
    a, b = ctx.raw("self"), ctx.raw("other")
    da, db = ctx.is_data(a), ctx.is_data(b)
    if da and db:
        return ctx.emit(ops.WeightedSumOp(ctx.name, s1, s2), [a, b])
    x, sx, c, sc = (a, s1, "other", s2) if da else (b, s2, "self", s1)
    cref = ctx.const_ref(c)
    ctx.check_per_sample(c)
    n_ops = 1 + (abs(sx) != 1) + (abs(sc) != 1)
    return _affine_const(ctx, x, lambda env: _as_double(sx),
                         lambda env: sc * _as_double(_per_sample_const(ctx, cref(env))), n_ops)


@register(*_ov(aten.mul, "Tensor", "Scalar"), *_ov(aten.mul_, "Tensor", "Scalar"))
def _mul(ctx):
    a, b = ctx.raw("self"), ctx.raw("other")
    if ctx.is_data(a) and ctx.is_data(b):
        return _data_product(ctx, a, b)
    x, c = (a, "other") if ctx.is_data(a) else (b, "self")
    cref = ctx.const_ref(c)
    ctx.check_per_sample(c)
    return _affine_const(ctx, x, lambda env: _as_double(_per_sample_const(ctx, cref(env))), lambda env: None, 1)


def _data_operand(ctx, node, what):
    """The value of a data tensor entering ``what`` (a product or a division of data): a float
    tensor of the output's dtype, with the output's rank and batch size (each sample's factor
    is its own; broadcasting one sample's factor across the batch would couple the boxes)."""
    v, out = ctx.lw.values[node], ctx.out_value()
    if not (torch.is_tensor(v) and v.is_floating_point() and v.dtype == out.dtype):
        raise UnsupportedLayer(ctx.name, f"{what} of data tensors of different or non-float dtypes")
    if v.dim() != out.dim() or v.shape[0] != out.shape[0]:
        raise UnsupportedLayer(ctx.name, f"{what} of data tensors that broadcasts across the batch dimension")
    return v


def _data_product(ctx, a, b):
    """``a * b`` with both factors carrying the input: the square of one tensor
    (``SquareOp``) or a McCormick-relaxed product (``BilinearOp``), broadcasting included."""
    va, vb, out = _data_operand(ctx, a, "a product"), _data_operand(ctx, b, "a product"), ctx.out_value()
    if ctx.lw.index_of(a) == ctx.lw.index_of(b):
        return _elementwise_node(ctx, ops.SquareOp(ctx.name, ulps=2.0), a)
    op = ops.BilinearOp(ctx.name, out.shape[1:], [va.shape[1:], vb.shape[1:]])
    op.u = ctx.u_elem
    return ctx.emit(op, [a, b])


@register(*_ov(aten.pow, "Tensor_Scalar"))
def _pow(ctx):
    """``x ** n``: the square (``SquareOp``), or ``PowOp`` for an integer ``n`` in 3 to 8 (the
    exponents whose kernels were measured); other exponents are refused."""
    e = ctx.arg("exponent")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or float(e) not in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0):
        raise UnsupportedLayer(ctx.name, f"a power with exponent {e!r} (only integers 2 to 8 are bounded)")
    x = ctx.data_arg("self")
    v = ctx.lw.values[x]
    if not v.is_floating_point() or v.dtype != ctx.out_value().dtype:
        raise UnsupportedLayer(ctx.name, "a power of a non-float tensor")
    if int(e) == 2:
        return _elementwise_node(ctx, ops.SquareOp(ctx.name, ulps=8.0), x)
    return _elementwise_node(ctx, ops.PowOp(ctx.name, int(e)), x)


@register(*_ov(aten.glu, "default"))
def _glu(ctx):
    # glu(x, dim) = a * sigmoid(b), a and b the two halves of x along dim
    d = _dim(ctx, ctx.arg("dim"))
    x = ctx.data_arg("self")
    v = ctx.lw.values[x]
    h = v.shape[d] // 2
    if v.shape[d] % 2:
        raise UnsupportedLayer(ctx.name, "glu over an odd-sized dimension")
    first = ctx.emit(ops.LinearMapOp(ctx.name + ".a", lambda t: t.narrow(d, 0, h), "glu half"), [x])
    second = ctx.emit(ops.LinearMapOp(ctx.name + ".b", lambda t: t.narrow(d, h, h), "glu half"), [x])
    gate = _elementwise_node(ctx, ops.SigmoidOp(ctx.name + ".sigmoid"), second)
    shape = list(v.shape[1:])
    shape[d - 1] = h
    op = ops.BilinearOp(ctx.name, shape, [shape, shape])
    op.u = ctx.u_elem
    return ctx.emit(op, [first, gate])


def _elementwise_node(ctx, op, x):
    """Emit elementwise ``op`` on fx node ``x``, with the unit roundoff of elementwise kernels."""
    op.u = ctx.u_elem
    return ctx.emit(op, [x])


@register(*_ov(aten.div, "Tensor", "Scalar", "Tensor_mode", "Scalar_mode"), *_ov(aten.div_, "Tensor", "Scalar"))
def _div(ctx):
    if "rounding_mode" in ctx.schema_names:
        mode = ctx.arg("rounding_mode")
        if mode is not None:
            raise UnsupportedLayer(ctx.name, f"division with rounding_mode={mode!r} (piecewise constant)")
    a, b = ctx.raw("self"), ctx.raw("other")
    if ctx.is_data(b):
        return _data_division(ctx, a, b)
    cref = ctx.const_ref("other")
    ctx.check_per_sample("other")
    return _affine_const(ctx, a, lambda env: 1.0 / _as_double(_per_sample_const(ctx, cref(env))), lambda env: None, 1)


def _data_division(ctx, a, b):
    """``a / b`` with ``b`` carrying the input: ``a * reciprocal(b)``, a McCormick product
    (``BilinearOp``) when ``a`` carries the input too, a product by a constant otherwise. The
    model rounds the quotient once (IEEE division); the reciprocal node charges its own
    kernel's rounding and the product one more (``|x| |1/y|``), which covers it."""
    vb, out = _data_operand(ctx, b, "a division"), ctx.out_value()
    r = _elementwise_node(ctx, ops.ReciprocalOp(ctx.name + ".reciprocal"), b)
    if ctx.is_data(a):
        va = _data_operand(ctx, a, "a division")
        op = ops.BilinearOp(ctx.name, out.shape[1:], [va.shape[1:], vb.shape[1:]])
        op.u = ctx.u_elem
        return ctx.emit(op, [a, r])
    cref = ctx.const_ref("self")
    ctx.check_per_sample("self")
    return _affine_const(ctx, r, lambda env: _as_double(_per_sample_const(ctx, cref(env))), lambda env: None, 1)


@register(*_ov(aten.reciprocal, "default"), *_ov(aten.reciprocal_, "default"))
def _reciprocal(ctx):
    return _elementwise(ctx, ops.ReciprocalOp(ctx.name))


@register(*_ov(aten.exp, "default"), *_ov(aten.exp_, "default"))
def _exp(ctx):
    return _elementwise(ctx, ops.ExpOp(ctx.name))


@register(*_ov(aten.log, "default"), *_ov(aten.log_, "default"))
def _log(ctx):
    return _elementwise(ctx, ops.LogOp(ctx.name))


@register(*_ov(aten.expm1, "default"), *_ov(aten.expm1_, "default"))
def _expm1(ctx):
    return _elementwise(ctx, ops.Expm1Op(ctx.name))


@register(*_ov(aten.exp2, "default"), *_ov(aten.exp2_, "default"))
def _exp2(ctx):
    return _elementwise(ctx, ops.Exp2Op(ctx.name))


@register(*_ov(aten.log1p, "default"), *_ov(aten.log1p_, "default"))
def _log1p(ctx):
    return _elementwise(ctx, ops.Log1pOp(ctx.name))


@register(*_ov(aten.sqrt, "default"), *_ov(aten.sqrt_, "default"))
def _sqrt(ctx):
    return _elementwise(ctx, ops.SqrtOp(ctx.name))


@register(*_ov(aten.rsqrt, "default"), *_ov(aten.rsqrt_, "default"))
def _rsqrt(ctx):
    return _elementwise(ctx, ops.RsqrtOp(ctx.name))


@register(*_ov(aten.log_sigmoid_forward, "default"))
def _log_sigmoid_forward(ctx):
    """``F.logsigmoid``: traced as ``log_sigmoid_forward`` (the output and a buffer for the
    backward pass, which nothing may read)."""
    out = _elementwise(ctx, ops.LogSigmoidOp(ctx.name))
    return ctx.tuple_outputs({0: out}, refuse={1: "log_sigmoid_forward's backward buffer"})


@register(*_ov(aten.neg, "default"))
def _neg(ctx):
    return _affine_const(ctx, ctx.data_arg("self"), lambda env: _as_double(-1.0), lambda env: None, 0)


@register(*_ov(aten.zeros_like, "default"), *_ov(aten.ones_like, "default"), *_ov(aten.full_like, "default"),
          *_ov(aten.new_zeros, "default"), *_ov(aten.new_ones, "default"), *_ov(aten.new_full, "default"),
          *_ov(aten.fill, "Scalar"), *_ov(aten.fill_, "Scalar"), *_ov(aten.zero_, "default"))
def _fill(ctx):
    """A constant shaped by the input (``torch.zeros_like(h)``, ``h.new_ones(n)``, ``h.fill_(1)``):
    its value is the traced one, which no input value changes (the batch-scaled trace checks
    that a size argument follows the batch)."""
    for name in ("fill_value", "value", "size", "dtype", "layout", "device", "pin_memory", "memory_format"):
        if name in ctx.values:
            ctx.raw(name)
    if ctx.is_data(ctx.values.get("fill_value")) or ctx.is_data(ctx.values.get("value")):
        raise UnsupportedLayer(ctx.name, "a fill value that depends on the input")
    v = ctx.out_value()
    if not (torch.is_tensor(v) and v.is_floating_point()) or v.dim() == 0:
        raise UnsupportedLayer(ctx.name, "a constant that is not a floating tensor with a batch dimension")
    if not bool((v == v[:1]).all() | (v.isnan().all())):
        raise UnsupportedLayer(ctx.name, "a constant that differs between samples")
    per_sample = v[0].detach().clone()
    op = ops.FillOp(ctx.name)
    op.consts["value"] = lambda env: per_sample
    return ctx.emit(op, [ctx.data_arg("self")])


# ---------------------------------------------------------------------- activations
def _elementwise(ctx, op, arg="self"):
    return _elementwise_node(ctx, op, ctx.data_arg(arg))


@register(*_ov(aten.relu, "default"), *_ov(aten.relu_, "default"))
def _relu(ctx):
    return _elementwise(ctx, ops.ReLUOp(ctx.name))


@register(*_ov(aten.leaky_relu, "default"), *_ov(aten.leaky_relu_, "default"))
def _leaky(ctx):
    return _leaky_slope(ctx, float(ctx.arg("negative_slope")))


@register(*_ov(aten.rrelu_with_noise, "default"))
def _rrelu(ctx):
    """``nn.RReLU`` / ``F.rrelu`` in eval mode: ``leaky_relu(x, (lower + upper) / 2)`` (the
    kernel's own rule, the mean in float64); its ``noise`` is neither read nor written. In
    training each call draws a slope per element: refused (the lowering refuses it as a random
    op before any handler runs)."""
    if ctx.arg("training"):
        raise UnsupportedLayer(ctx.name, "rrelu in training mode (a random slope per call)")
    ctx.raw("noise")  # an empty_like buffer the eval kernel leaves alone
    return _leaky_slope(ctx, (float(ctx.arg("lower")) + float(ctx.arg("upper"))) / 2)


def _leaky_slope(ctx, a):
    if 0.0 <= a <= 1.0:
        return _elementwise(ctx, ops.LeakyReLUOp(ctx.name, a))
    op = ops._act("LeakyReLUAnySlope", lambda s, x: F.leaky_relu(x, a), f2=0.0, kinks=(0.0,), monotone=a >= 0,
                  lipschitz=max(1.0, abs(a)), ulps=1.0, pl=True)(ctx.name)
    return _elementwise(ctx, op)


def _kernel_scalar(ctx, v):
    """A scalar argument as the model's kernel uses it: converted to the data's dtype (a
    float32 clamp at 500000017.0 clamps at 500000032.0). Our bound arithmetic may run in
    another dtype (float64 under reduced-precision matmul settings, float32 for a float16
    model), where the unconverted value is another function."""
    if v is None:
        return None
    dt = ctx.in_value().dtype
    return float(torch.tensor(float(v), dtype=dt)) if dt.is_floating_point else float(v)


@register(*_ov(aten.hardtanh, "default"), *_ov(aten.hardtanh_, "default"))
def _hardtanh(ctx):
    return _elementwise(ctx, ops.ClampOp(ctx.name, _kernel_scalar(ctx, ctx.arg("min_val")),
                                         _kernel_scalar(ctx, ctx.arg("max_val"))))


@register(*_ov(aten.clamp, "default"), *_ov(aten.clamp_, "default"), *_ov(aten.clamp_min, "default"),
          *_ov(aten.clamp_max, "default"))
def _clamp(ctx):
    names = ctx.schema_names
    lo = ctx.arg("min") if "min" in names else None
    hi = ctx.arg("max") if "max" in names else None
    for v in (lo, hi):
        if v is not None and not isinstance(v, (int, float)):
            raise UnsupportedLayer(ctx.name, "clamp with tensor limits")
    return _elementwise(ctx, ops.ClampOp(ctx.name, _kernel_scalar(ctx, lo), _kernel_scalar(ctx, hi)))


@register(*_ov(aten.sigmoid, "default"), *_ov(aten.sigmoid_, "default"))
def _sigmoid(ctx):
    return _elementwise(ctx, ops.SigmoidOp(ctx.name))


@register(*_ov(aten.tanh, "default"), *_ov(aten.tanh_, "default"))
def _tanh(ctx):
    return _elementwise(ctx, ops.TanhOp(ctx.name))


@register(*_ov(aten.gelu, "default"), *_ov(aten.gelu_, "default"))
def _gelu(ctx):
    approx = ctx.arg("approximate")
    cls = {"none": ops.GeluOp, "tanh": ops.GeluTanhOp}.get(approx)
    if cls is None:
        raise UnsupportedLayer(ctx.name, f"gelu(approximate={approx!r})")
    return _elementwise(ctx, cls(ctx.name))


@register(*_ov(aten.silu, "default"), *_ov(aten.silu_, "default"))
def _silu(ctx):
    return _elementwise(ctx, ops.SiluOp(ctx.name))


@register(*_ov(aten.mish, "default"), *_ov(aten.mish_, "default"))
def _mish(ctx):
    return _elementwise(ctx, ops.MishOp(ctx.name))


@register(*_ov(aten.erf, "default"), *_ov(aten.erf_, "default"))
def _erf(ctx):
    return _elementwise(ctx, ops.ErfOp(ctx.name))


@register(*_ov(aten.sin, "default"), *_ov(aten.sin_, "default"))
def _sin(ctx):
    return _elementwise(ctx, ops.SinOp(ctx.name))


@register(*_ov(aten.cos, "default"), *_ov(aten.cos_, "default"))
def _cos(ctx):
    return _elementwise(ctx, ops.CosOp(ctx.name))


@register(*_ov(aten.elu, "default"), *_ov(aten.elu_, "default"))
def _elu(ctx):
    return _elementwise(ctx, ops.EluOp(ctx.name, float(ctx.arg("alpha")), float(ctx.arg("scale")),
                                       float(ctx.arg("input_scale"))))


@register(*_ov(aten.celu, "default"), *_ov(aten.celu_, "default"))
def _celu(ctx):
    """``celu(x, a) = max(0, x) + min(0, a (exp(x / a) - 1))``: ATen's kernel is
    ``elu(x, a, 1, 1 / a)`` (the reciprocal in double), bitwise on 1e6 float32 samples, within
    2.8 ulps of ``|f|`` against float64 for ``a`` in 0.1 to 2 (``expm1``: relative near 0);
    ELU's operator (8 ulps, ``f'' <= 1 / a``). ``a <= 0`` is refused (torch divides by it; a
    negative one makes the curve grow without bound)."""
    a = float(ctx.arg("alpha"))
    if not a > 0:
        raise UnsupportedLayer(ctx.name, f"celu with alpha={a!r}")
    return _elementwise(ctx, ops.EluOp(ctx.name, a, 1.0, 1.0 / a))


@register(*_ov(aten.softshrink, "default"))
def _softshrink(ctx):
    """``softshrink(x, l)``: ``x - l`` above ``l``, ``x + l`` below ``-l``, 0 between; continuous,
    piecewise linear, non-decreasing, kinks at ``+-l`` (``l`` as the kernel uses it, in the data's
    dtype; torch refuses ``l < 0``). The kernel rounds ``x -+ l`` once: measured within 1 ulp of
    ``|f|`` on 1e6 float32 samples (exact zeros between the kinks), 2 charged."""
    if ctx.in_value().dtype not in (torch.float32, torch.float64):
        # reduced-precision kernels compute in float32 with lambd converted to float32, not to the data's dtype
        raise UnsupportedLayer(ctx.name, f"softshrink of a {ctx.in_value().dtype} tensor")
    lam = _kernel_scalar(ctx, ctx.arg("lambd"))
    if not lam >= 0:
        raise UnsupportedLayer(ctx.name, f"softshrink with lambd={lam!r}")
    op = ops._act("SoftshrinkOp", lambda s, x: F.softshrink(x, lam), f2=0.0, kinks=(-lam, lam), f0=0.0,
                  ulps=2.0, pl=True)(ctx.name)
    return _elementwise(ctx, op)


@register(*_ov(aten.softplus, "default"))
def _softplus(ctx):
    return _elementwise(ctx, ops.SoftplusOp(ctx.name, float(ctx.arg("beta")), float(ctx.arg("threshold"))))


@register(*_ov(aten.hardsigmoid, "default"), *_ov(aten.hardsigmoid_, "default"))
def _hardsigmoid(ctx):
    return _elementwise(ctx, ops.HardsigmoidOp(ctx.name))


@register(*_ov(aten.hardswish, "default"), *_ov(aten.hardswish_, "default"))
def _hardswish(ctx):
    return _elementwise(ctx, ops.HardswishOp(ctx.name))


@register(*_ov(aten._prelu_kernel, "default"))
def _prelu(ctx):
    w = ctx.const_ref("weight")
    ctx.check_per_sample("weight")
    op = ops.PReLUOp(ctx.name)
    op.consts["weight"] = lambda env: _as_double(_per_sample_const(ctx, w(env)))
    return _elementwise(ctx, op)


@register(*_ov(aten.abs, "default"), *_ov(aten.abs_, "default"))
def _abs(ctx):
    return _elementwise(ctx, ops.AbsOp(ctx.name))


@register(*_ov(aten.maximum, "default"), *_ov(aten.minimum, "default"))
def _max_min(ctx):
    is_max = ctx.target in _ov(aten.maximum, "default")
    a, b = ctx.raw("self"), ctx.raw("other")
    if ctx.is_data(a):
        return _extreme(ctx, a, b, "other", is_max, ctx.name)
    return _extreme(ctx, b, a, "self", is_max, ctx.name)


def _extreme(ctx, x, other, other_name, is_max, name):
    """``maximum(x, other)`` / ``minimum(x, other)``, ``x`` carrying the input (an fx node or an
    index of a node lowered already), ``other`` data too or a constant tensor (schema argument
    ``other_name``: a buffer, a literal, a clamp limit). Exact rewrites onto ReLU's relaxation:
    ``max(a, b) = a + relu(b - a)``, ``min(a, b) = a - relu(a - b)``; with a constant ``c``,
    ``max(x, c) = c + relu(x - c)`` and ``min(x, c) = c - relu(c - x)``. The model's op is exact (a
    selection); the subtractions and additions here charge roundings it does not make, so the
    bounds only widen. A constant is used as the kernel uses it: converted to the output's dtype
    (a float64 0-dim limit of a float32 tensor is compared in float32)."""
    lw = ctx.lw
    xi = lw.index_of(x)
    if ctx.is_data(other):
        d = lw.emit(ops.WeightedSumOp(name + ".diff", -1.0 if is_max else 1.0, 1.0 if is_max else -1.0),
                    [xi, lw.index_of(other)], ctx.n)
        r = lw.emit(ops.ReLUOp(name + ".relu"), [d], ctx.n)
        return lw.emit(ops.WeightedSumOp(name, 1.0, 1.0 if is_max else -1.0), [xi, r], ctx.n)
    out, xv = ctx.out_value(), ctx.in_value()
    cval = ctx.value_of(other_name)
    if not (torch.is_tensor(cval) and not cval.is_complex() and out.is_floating_point() and out.dtype == xv.dtype):
        raise UnsupportedLayer(name, "maximum/minimum/clamp with a limit that is not a real tensor of the data's "
                               "dtype after promotion")
    _per_sample_const(ctx, cval)
    c_of = _const_in_dtype(ctx, other_name, out.dtype)
    sign = 1.0 if is_max else -1.0
    # max: d = x - c, out = c + relu(d); min: d = c - x, out = c - relu(d)
    d = _affine_const(ctx, xi, lambda env: _as_double(sign), lambda env: -sign * c_of(env), 1, name=name + ".diff")
    r = lw.emit(ops.ReLUOp(name + ".relu"), [d], ctx.n)
    return _affine_const(ctx, r, lambda env: _as_double(sign), c_of, 1, name=name)


@register(*_ov(aten.clamp, "Tensor"), *_ov(aten.clamp_, "Tensor"), *_ov(aten.clamp_min, "Tensor"),
          *_ov(aten.clamp_max, "Tensor"))
def _clamp_tensor(ctx):
    """``clamp`` with tensor limits (constants or data): ``min(max(x, lo), hi)``, torch's order
    (where ``lo > hi`` the result is ``hi``), each step ``_extreme``."""
    cur = ctx.data_arg("self")
    names = ctx.schema_names
    lo = ctx.raw("min") if "min" in names else None
    hi = ctx.raw("max") if "max" in names else None
    if lo is None and hi is None:
        raise UnsupportedLayer(ctx.name, "clamp without limits")
    if lo is not None:
        cur = _extreme(ctx, cur, lo, "min", True, ctx.name + (".min" if hi is not None else ""))
    if hi is not None:
        cur = _extreme(ctx, cur, hi, "max", False, ctx.name)
    return cur


# ------------------------------------------------------------------ pooling / reductions
def _reduce_dims(ctx, dims):
    rank = ctx.rank()
    if dims is None or len(dims) == 0:
        raise UnsupportedLayer(ctx.name, "a reduction over every dimension (the batch included)")
    return sorted(_dim(ctx, d, rank) for d in dims)


@register(*_ov(aten.mean, "dim"), *_ov(aten.sum, "dim_IntList"))
def _mean_sum(ctx):
    dims, keep = _reduce_dims(ctx, ctx.arg("dim")), bool(ctx.arg("keepdim"))
    if ctx.arg("dtype") is not None:
        raise UnsupportedLayer(ctx.name, "a reduction with a dtype change")
    is_mean = ctx.target in _ov(aten.mean, "dim")
    shape = ctx.in_shape_full()
    n = int(math.prod(shape[d] for d in dims))
    fn = (lambda x: x.mean(dims, keepdim=keep)) if is_mean else (lambda x: x.sum(dims, keepdim=keep))
    op = ops.LinearMapOp(ctx.name, fn, "mean" if is_mean else "sum", fan=n + 1)
    op.u = ctx.u_elem
    return ctx.emit(op, [ctx.data_arg("self")])


@register(*_ov(aten.avg_pool2d, "default"))
def _avg_pool(ctx):
    k = list(ctx.arg("kernel_size"))
    kw = dict(stride=list(ctx.arg("stride")) or None, padding=list(ctx.arg("padding")),
              ceil_mode=bool(ctx.arg("ceil_mode")), count_include_pad=bool(ctx.arg("count_include_pad")))
    two = ctx.target in _ov(aten.avg_pool2d, "default")
    if two:
        div = ctx.arg("divisor_override")
        if div is not None and not div > 0:
            # torch takes any non-zero divisor: a negative one is a map with negative
            # coefficients, which a LinearMapOp (lower to lower, upper to upper) is not
            raise UnsupportedLayer(ctx.name, f"average pooling with divisor_override={div!r} (not positive)")
        kw["divisor_override"] = div
    fn = (lambda x: F.avg_pool2d(x, k, **kw)) if two else (lambda x: F.avg_pool1d(x, k, **kw))
    window = _pair(k, "kernel_size", ctx) if two else k  # a one-element 2-d kernel is k x k
    op = ops.LinearMapOp(ctx.name, fn, "avg_pool", fan=int(math.prod(window)) + 1)
    op.u = ctx.u_elem
    return ctx.emit(op, [ctx.data_arg("self")])


@register(*_ov(aten._adaptive_avg_pool2d, "default"))
def _adaptive_avg(ctx):
    size = list(ctx.arg("output_size"))
    two = ctx.target in _ov(aten._adaptive_avg_pool2d, "default")
    in_sp = ctx.in_shape()[-len(size):]  # the spatial dims (an unbatched [C, H, W] sample has no channel dim)
    fan = int(math.prod(math.ceil(i / o) + 1 for i, o in zip(in_sp, size))) + 1
    fn = (lambda x: F.adaptive_avg_pool2d(x, size)) if two else (lambda x: F.adaptive_avg_pool1d(x, size))
    op = ops.LinearMapOp(ctx.name, fn, "adaptive_avg_pool", fan=fan)
    op.u = ctx.u_elem
    return ctx.emit(op, [ctx.data_arg("self")])


def _upsample_call(ctx):
    """The data argument and a function that runs this very ATen op with the model's own
    arguments (output size, scale factors, align_corners): scale factors that are not
    ``out / in`` map coordinates differently from a size-only call."""
    data = "input" if "input" in ctx.schema_names else "self"
    names = [a.name for a in ctx.schema.arguments]
    rest = [ctx.arg(k) for k in names[1:]]
    target = ctx.target
    x = ctx.data_arg(data)

    def call(t):
        return target(t, *rest)

    return x, call


@register(*_ov(aten.upsample_nearest2d, "default", "vec"), *_ov(aten.upsample_nearest1d, "default", "vec"),
          *_ov(aten._upsample_nearest_exact2d, "default", "vec"), *_ov(aten._upsample_nearest_exact1d, "default", "vec"))
def _upsample_nearest(ctx):
    # The source index of each output is computed by the kernel in the model's dtype
    # (float32: a rounded scale), which for some sizes picks another source element than a
    # float64 evaluation would. Ask the kernel itself: run it in the model's dtype on the
    # positions 0..n-1, then bound the op as that exact selection.
    x, call = _upsample_call(ctx)
    v = ctx.in_value()
    sp = tuple(v.shape[2:])
    n = int(math.prod(sp))
    if n >= 2 ** 24 or v.dtype not in (torch.float32, torch.float64):
        raise UnsupportedLayer(ctx.name, "nearest upsampling of this size or dtype")
    pos = torch.arange(n, dtype=v.dtype, device=v.device).reshape(1, 1, *sp)
    with torch.no_grad():
        src = call(pos).round().long().reshape(-1)
    out_sp = tuple(ctx.out_shape()[1:])

    def fn(t):
        flat = t.reshape(*t.shape[:2], -1)
        return flat.index_select(2, src.to(t.device)).reshape(*t.shape[:2], *out_sp)

    return ctx.emit(ops.LinearMapOp(ctx.name, fn, "upsample"), [x])


@register(*_ov(aten.upsample_bilinear2d, "default", "vec"), *_ov(aten.upsample_linear1d, "default", "vec"))
def _upsample_linear(ctx):
    x, call = _upsample_call(ctx)
    in_sp = tuple(ctx.in_shape()[1:])
    return ctx.emit(ops.InterpolationOp(ctx.name, call, in_sp), [x])


def _pair(v, what, ctx):
    """A 2-d pooling size as ATen reads it: one number stands for both spatial dims."""
    v = [int(e) for e in v]
    if len(v) == 1:
        return v * 2
    if len(v) != 2:
        raise UnsupportedLayer(ctx.name, f"2-d pooling with {what}={v!r}")
    return v


@register(*_ov(aten.max_pool2d_with_indices, "default"))
def _max_pool(ctx):
    # ATen's 2-d pooling takes a one-element kernel_size, stride, padding or dilation as both
    # dims ((2,) pools 2x2 windows): read each the same way, never as a 1-d window
    k = _pair(ctx.arg("kernel_size"), "kernel_size", ctx)
    stride = _pair(list(ctx.arg("stride")) or k, "stride", ctx)
    pad, dil = _pair(ctx.arg("padding"), "padding", ctx), _pair(ctx.arg("dilation"), "dilation", ctx)
    if ctx.arg("ceil_mode") or any(pad):
        raise UnsupportedLayer(ctx.name, "max pooling with padding or ceil_mode (no sound linear relaxation here)")
    x = ctx.data_arg("self")
    out_shape = tuple(ctx.out_shape() if not ctx.returns_tuple() else ctx.out_value()[0].shape[1:])
    if ctx.rank() not in (3, 4):
        raise UnsupportedLayer(ctx.name, f"2-d max pooling of a rank-{ctx.rank()} tensor")
    # a [N, H, W] input is torch's unbatched [C, H, W]: each sample is one channel
    unbatched = ctx.rank() == 3

    def windows(t):
        if unbatched:
            t = t.unsqueeze(1)
        n, c = t.shape[:2]
        u = F.unfold(t, k, dilation=dil, stride=stride)  # [n, c*kh*kw, L]
        u = u.reshape(n, c, k[0] * k[1], -1).transpose(2, 3)
        return u.reshape(n, *out_shape, k[0] * k[1])

    i = ctx.emit(ops.MaxPoolOp(ctx.name, windows, out_shape), [x])
    return ctx.tuple_outputs({0: i}, refuse={1: "the indices of max pooling"}) if ctx.returns_tuple() else i


def _adaptive_windows(n_in: int, n_out: int):
    """torch's adaptive pooling windows along one dim: ``[floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out))`` for output ``i``."""
    return [(i * n_in // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


@register(*_ov(aten.adaptive_max_pool2d, "default"))
def _adaptive_max(ctx):
    """Adaptive max pooling of ``[N, C, H, W]`` (1-d pooling arrives unsqueezed to that;
    torch's unbatched ``[C, H, W]`` form is refused): each output is the max of its window
    (``_adaptive_windows``); windows of unequal sizes are padded with their own first entry
    (the max is unchanged), so one ``MaxPoolOp`` takes them all."""
    size = [int(v) for v in ctx.arg("output_size")]
    x = ctx.data_arg("self")
    v = ctx.lw.values[x]
    if v.dim() != 4:
        raise UnsupportedLayer(ctx.name, "adaptive max pooling of a tensor without [batch, C, H, W] dims")
    H, W = int(v.shape[2]), int(v.shape[3])
    wins = []
    for h0, h1 in _adaptive_windows(H, size[0]):
        for w0, w1 in _adaptive_windows(W, size[1]):
            wins.append([a * W + b for a in range(h0, h1) for b in range(w0, w1)])
    K = max(len(w) for w in wins)
    index = torch.tensor([w + [w[0]] * (K - len(w)) for w in wins], dtype=torch.long)
    out_shape = tuple(ctx.out_value()[0].shape[1:])

    def windows(t):
        flat = t.flatten(2)[..., index.to(t.device)]  # [n, c, oh * ow, K]
        return flat.reshape(*t.shape[:2], *size, K)

    i = ctx.emit(ops.MaxPoolOp(ctx.name, windows, out_shape), [x])
    return ctx.tuple_outputs({0: i}, refuse={1: "the indices of max pooling"})


def _reduction_windows(ctx, dim_overload):
    """``(windows, out_shape)`` of a max/min reduction (``amax``/``amin`` over ``dim``, or the
    ``max.dim``/``min.dim`` overload): each output element's entries as the last dimension."""
    dims = [ctx.arg("dim")] if ctx.target in dim_overload else list(ctx.arg("dim"))
    dims = _reduce_dims(ctx, dims)
    ctx.arg("keepdim")  # handled: the output's own shape says whether the dims are kept
    rest = [d for d in range(ctx.rank()) if d not in dims]
    out_shape = tuple(ctx.out_value()[0].shape[1:] if ctx.returns_tuple() else ctx.out_shape())

    def windows(t):
        p = t.permute(*rest, *dims)
        return p.reshape(t.shape[0], *out_shape, -1)

    return windows, out_shape


@register(*_ov(aten.amax, "default"), *_ov(aten.max, "dim"))
def _amax(ctx):
    windows, out_shape = _reduction_windows(ctx, _ov(aten.max, "dim"))
    i = ctx.emit(ops.MaxPoolOp(ctx.name, windows, out_shape), [ctx.data_arg("self")])
    return ctx.tuple_outputs({0: i}, refuse={1: "argmax indices"}) if ctx.returns_tuple() else i


@register(*_ov(aten.amin, "default"), *_ov(aten.min, "dim"))
def _amin(ctx):
    """``amin`` / ``min(dim)``: ``-amax(-x)``, the negations exact, the max as ``_amax``'s."""
    windows, out_shape = _reduction_windows(ctx, _ov(aten.min, "dim"))
    neg = ctx.emit(ops.NegOp(ctx.name + ".neg"), [ctx.data_arg("self")])
    mx = ctx.lw.emit(ops.MaxPoolOp(ctx.name + ".max", windows, out_shape), [neg], ctx.n)
    i = ctx.lw.emit(ops.NegOp(ctx.name), [mx], ctx.n)
    return ctx.tuple_outputs({0: i}, refuse={1: "argmin indices"}) if ctx.returns_tuple() else i


@register(*_ov(aten.roll, "default"))
def _roll(ctx):
    """``torch.roll`` over non-batch dims: a permutation of each sample's entries (without dims it
    rolls the flattened tensor, across samples: refused)."""
    dims = list(ctx.arg("dims"))
    shifts = [int(v) for v in ctx.arg("shifts")]
    if not dims:
        raise UnsupportedLayer(ctx.name, "roll of the flattened tensor (across the batch)")
    dims = [_dim(ctx, d) for d in dims]
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: torch.roll(x, shifts, dims), "roll"), [ctx.data_arg("self")])


@register(*_ov(aten.channel_shuffle, "default"))
def _channel_shuffle(ctx):
    """``nn.ChannelShuffle``: a permutation of dim 1 (the channels) within each sample."""
    g = int(ctx.arg("groups"))
    op = ctx.target
    return ctx.emit(ops.LinearMapOp(ctx.name, lambda x: op(x, g), "channel_shuffle"), [ctx.data_arg("self")])


@register(*_ov(aten.cumsum, "default"))
def _cumsum(ctx):
    """``cumsum`` over a non-batch dim: each output a sum of up to ``n`` inputs (non-negative
    coefficients), rounded as a sum of ``n`` terms in any order."""
    d = _dim(ctx, ctx.arg("dim"))
    if ctx.arg("dtype") is not None:
        raise UnsupportedLayer(ctx.name, "a cumulative sum with a dtype change")
    n = int(ctx.in_shape_full()[d])
    op = ops.LinearMapOp(ctx.name, lambda x: torch.cumsum(x, d), "cumsum", fan=n + 1)
    op.u = ctx.u_elem
    return ctx.emit(op, [ctx.data_arg("self")])


def _joined_parts(ctx, what):
    """The tensors of a cat/stack (all carrying the input) and its non-batch dim."""
    parts = list(ctx.raw("tensors"))
    if not all(ctx.is_data(p) for p in parts):
        raise UnsupportedLayer(ctx.name, f"{what} with constant parts")
    return parts, _dim(ctx, ctx.arg("dim"), rank=ctx.out_rank())


@register(*_ov(aten.cat, "default"))
def _cat(ctx):
    parts, d = _joined_parts(ctx, "torch.cat")
    return ctx.emit(ops.CatOp(ctx.name, len(parts), d), parts)


@register(*_ov(aten.stack, "default"))
def _stack(ctx):
    parts, d = _joined_parts(ctx, "torch.stack")
    ups = [ctx.emit(ops.LinearMapOp(f"{ctx.name}.unsqueeze{j}", lambda x: x.unsqueeze(d), "unsqueeze"), [p])
           for j, p in enumerate(parts)]
    return ctx.emit(ops.CatOp(ctx.name, len(parts), d), ups)


# ---------------------------------------------------------------- normalisation kernels
def _internal(op):
    """An op of a fused kernel's decomposition: the model never evaluates it, so it charges
    no model rounding (``u = 0``; our own rounding still counts); the kernel's rounding is
    the ``FusedRoundingOp`` at the end."""
    op.u = 0.0
    return op


def _normalise(ctx, nm, x, dims, n, eps, full):
    """The exact ``(x - mean) / sqrt(var + eps)`` over ``dims`` (``n`` elements) of a sample
    shaped ``full``, as layer and group norm decompose it: ``mean`` (linear), ``c = x - mean``,
    ``var = mean(c^2)``, ``+ eps``, ``rsqrt``, the product ``c * rstd`` (McCormick), no model
    rounding inside. Returns the output, ``c`` and ``var + eps`` (the rounding op's inputs)."""

    def expand(t):
        return t.expand(t.shape[0], *full)

    mean = ctx.emit(_internal(ops.LinearMapOp(nm + ".mean", lambda t: t.mean(dims, keepdim=True), "mean", fan=n + 1)),
                    [x])
    mean_e = ctx.emit(ops.LinearMapOp(nm + ".mean.expand", expand, "expand"), [mean])
    c = ctx.emit(_internal(ops.WeightedSumOp(nm + ".centre", 1.0, -1.0)), [x, mean_e])
    sq = ctx.emit(_internal(ops.SquareOp(nm + ".square", ulps=2.0)), [c])
    var = ctx.emit(_internal(ops.LinearMapOp(nm + ".var", lambda t: t.mean(dims, keepdim=True), "mean", fan=n + 1)),
                   [sq])
    add = _internal(ops.AddConstOp(nm + ".eps"))
    add.consts["bias"] = lambda env: torch.tensor(eps, dtype=torch.float64)
    ve = ctx.emit(add, [var])
    # the exact var + eps is >= eps: a clamp just below it keeps the exact value and keeps our
    # rounding of the mean of squares (relative to its largest value) from reaching 0
    ve = ctx.emit(_internal(ops.ClampOp(nm + ".eps.floor", eps * (1 - 1e-6), None)), [ve])
    r = ctx.emit(_internal(ops.RsqrtOp(nm + ".rsqrt")), [ve])
    r_e = ctx.emit(ops.LinearMapOp(nm + ".rsqrt.expand", expand, "expand"), [r])
    y = ctx.emit(_internal(ops.BilinearOp(nm + ".normalise", full, [full, full])), [c, r_e])
    return y, c, ve


@register(*_ov(aten.native_layer_norm, "default"))
def _layer_norm(ctx):
    """``native_layer_norm``: the exact function through ``mean`` (linear), ``c = x - mean``,
    ``var = mean(c^2)``, ``+ eps``, ``rsqrt``, the product ``c * rstd`` (McCormick) and the
    affine ``* weight + bias``, then the fused kernel's float error
    (``ops.LayerNormRoundingOp``). Only the normalised output may be used (not the saved mean
    and rstd)."""
    x = ctx.data_arg("input")
    shape = [int(v) for v in ctx.arg("normalized_shape")]
    w, b = ctx.const_ref("weight", optional=True), ctx.const_ref("bias", optional=True)
    eps = float(ctx.arg("eps"))
    v = ctx.lw.values[x]
    out = ctx.out_value()[0]
    rank, nd = v.dim(), len(shape)
    if nd == 0 or nd >= rank or tuple(v.shape[rank - nd:]) != tuple(shape):
        raise UnsupportedLayer(ctx.name, "layer norm over the batch dimension or a mismatched shape")
    if not (v.is_floating_point() and out.dtype == v.dtype):
        raise UnsupportedLayer(ctx.name, "layer norm with a dtype change")
    for name in ("weight", "bias"):
        val = ctx.value_of(name)
        if torch.is_tensor(val) and val.dtype != v.dtype:
            raise UnsupportedLayer(ctx.name, f"layer norm with a {name} of another dtype")
    if eps <= 0:
        raise UnsupportedLayer(ctx.name, f"layer norm with eps={eps!r} (rstd unbounded)")
    dims = tuple(range(rank - nd, rank))
    n = int(math.prod(shape))
    full = tuple(v.shape[1:])
    nm = ctx.name

    y, c, ve = _normalise(ctx, nm, x, dims, n, eps, full)
    has_w, has_b = ctx.value_of("weight") is not None, ctx.value_of("bias") is not None
    if has_w or has_b:
        aff = _internal(ops.ChannelAffineOp(nm + ".affine", n_ops=2))
        aff.consts["weight"] = (lambda env: w(env).double()) if has_w else (lambda env: _as_double(1.0))
        aff.consts["bias"] = (lambda env: b(env).double()) if has_b else (lambda env: None)
        y = ctx.emit(aff, [y])
    fin = ops.LayerNormRoundingOp(nm, dims, n, eps, has_w, has_b)
    fin.u = ctx.u_elem
    fin.consts["weight"] = (lambda env: w(env).double()) if has_w else (lambda env: None)
    fin.consts["bias"] = (lambda env: b(env).double()) if has_b else (lambda env: None)
    i = ctx.emit(fin, [y, x, c, ve])
    return ctx.tuple_outputs({0: i}, refuse={1: "the mean saved by layer norm", 2: "the rstd saved by layer norm"})


@register(*_ov(aten.native_group_norm, "default"))
def _group_norm(ctx):
    """``native_group_norm`` (``nn.GroupNorm``): the sample ``[C, *spatial]`` viewed as
    ``[G, n]`` (``n = C / G * HxW``), then layer norm's exact decomposition over the last
    dimension (``_layer_norm``), the per-channel affine expanded to that view, the fused
    kernel's float error (``ops.GroupNormRoundingOp``), and the view back. Only the
    normalised output may be used (not the saved mean and rstd)."""
    x = ctx.data_arg("input")
    G = int(ctx.arg("group"))
    eps = float(ctx.arg("eps"))
    ctx.arg("N"), ctx.arg("C"), ctx.arg("HxW")
    w, b = ctx.const_ref("weight", optional=True), ctx.const_ref("bias", optional=True)
    v = ctx.lw.values[x]
    out = ctx.out_value()[0]
    if v.dim() < 2 or G < 1 or v.shape[1] % G:
        raise UnsupportedLayer(ctx.name, "group norm whose channels do not split into its groups")
    if not (v.is_floating_point() and out.dtype == v.dtype):
        raise UnsupportedLayer(ctx.name, "group norm with a dtype change")
    for name in ("weight", "bias"):
        val = ctx.value_of(name)
        if torch.is_tensor(val) and (val.dtype != v.dtype or val.shape != (v.shape[1],)):
            raise UnsupportedLayer(ctx.name, f"group norm with a {name} of another dtype or shape")
    if eps <= 0:
        raise UnsupportedLayer(ctx.name, f"group norm with eps={eps!r} (rstd unbounded)")
    full = tuple(v.shape[1:])
    Cn = int(v.shape[1])
    n = int(math.prod(full)) // G
    per = n * G // Cn  # elements per channel (HxW)
    nm = ctx.name

    def grouped(t):  # a per-channel [C] constant in the grouped view [G, n]
        return t.double().reshape(G, Cn // G, 1).expand(G, Cn // G, per).reshape(G, n)

    xg = ctx.emit(ops.LinearMapOp(nm + ".groups", lambda t: t.reshape(t.shape[0], G, n), "reshape"), [x])
    y, c, ve = _normalise(ctx, nm, xg, (2,), n, eps, (G, n))
    has_w, has_b = ctx.value_of("weight") is not None, ctx.value_of("bias") is not None
    if has_w or has_b:
        aff = _internal(ops.ChannelAffineOp(nm + ".affine", n_ops=2))
        aff.consts["weight"] = (lambda env: grouped(w(env))) if has_w else (lambda env: _as_double(1.0))
        aff.consts["bias"] = (lambda env: grouped(b(env))) if has_b else (lambda env: None)
        y = ctx.emit(aff, [y])
    fin = ops.GroupNormRoundingOp(nm, (2,), n, eps, has_w, has_b)
    fin.u = ctx.u_elem
    fin.consts["weight"] = (lambda env: grouped(w(env))) if has_w else (lambda env: None)
    fin.consts["bias"] = (lambda env: grouped(b(env))) if has_b else (lambda env: None)
    yf = ctx.emit(fin, [y, xg, c, ve])
    i = ctx.emit(ops.LinearMapOp(nm + ".ungroup", lambda t: t.reshape(t.shape[0], *full), "reshape"), [yf])
    return ctx.tuple_outputs({0: i}, refuse={1: "the mean saved by group norm", 2: "the rstd saved by group norm"})


@register(*_ov(aten.linalg_vector_norm, "default"))
def _vector_norm(ctx):
    """``linalg_vector_norm`` of order 2 over non-batch dims (``x.norm(dim=...)``,
    ``F.normalize``): the exact ``sqrt(sum(x^2))`` through a square, a sum and ``sqrt`` (no
    model rounding inside), then the kernel's float error (``ops.VectorNormRoundingOp``).
    Other orders, a norm over everything (the batch included) and a dtype change are refused."""
    x = ctx.data_arg("self")
    order = ctx.arg("ord")
    if not isinstance(order, (int, float)) or float(order) != 2.0:
        raise UnsupportedLayer(ctx.name, f"vector norm of order {order!r} (only 2 is bounded)")
    if ctx.arg("dtype") is not None:
        raise UnsupportedLayer(ctx.name, "vector norm with a dtype change")
    dims, keep = ctx.arg("dim"), bool(ctx.arg("keepdim"))
    v = ctx.lw.values[x]
    if not v.is_floating_point() or ctx.out_value().dtype != v.dtype:
        raise UnsupportedLayer(ctx.name, "vector norm with a dtype change")
    if dims is None or len(list(dims)) == 0:
        raise UnsupportedLayer(ctx.name, "a vector norm over every dimension (the batch's too)")
    rank = v.dim()
    ds = tuple(sorted({_dim(ctx, d, rank) for d in dims}))
    n = int(math.prod(int(v.shape[d]) for d in ds))
    nm = ctx.name
    sq = ctx.emit(_internal(ops.SquareOp(nm + ".square", ulps=2.0)), [x])
    tot = ctx.emit(_internal(ops.LinearMapOp(nm + ".sum", lambda t: t.sum(ds, keepdim=keep), "sum", fan=n + 1)),
                   [sq])
    # the exact sum of squares is >= 0: a floor at 0 keeps it, and keeps our rounding of the
    # sum (relative to its terms) from taking sqrt's domain below 0 (no bound at all there)
    tot = ctx.emit(_internal(ops.ClampOp(nm + ".floor", 0.0, None)), [tot])
    r = ctx.emit(_internal(ops.SqrtOp(nm + ".sqrt")), [tot])
    fin = ops.VectorNormRoundingOp(nm, n)
    fin.u = ctx.u_elem
    return ctx.emit(fin, [r])


#: most elements of a softmax's pairwise differences (n^2 per row) per sample
SOFTMAX_MAX_PAIRS = 1 << 20


@register(*_ov(aten._softmax, "default"), *_ov(aten._log_softmax, "default"))
def _softmax(ctx):
    """``softmax``/``log_softmax`` over ``dim`` (``n`` elements), as the exact function
    ``s_i = 1 / sum_j exp(x_j - x_i)`` and ``log s_i = -log sum_j exp(x_j - x_i)``: the pairwise
    differences (linear, exact in the forms, 0 on the diagonal), ``exp``, a sum (``>= 1``:
    its diagonal term), then ``reciprocal`` or ``-log``; no model rounding inside, and the fused
    kernel's float error at the end (``ops.SoftmaxRoundingOp``)."""
    x = ctx.data_arg("self")
    if ctx.arg("half_to_float"):
        raise UnsupportedLayer(ctx.name, "softmax with half_to_float (a dtype change)")
    v = ctx.lw.values[x]
    if not v.is_floating_point() or ctx.out_value().dtype != v.dtype:
        raise UnsupportedLayer(ctx.name, "softmax with a dtype change")
    rank = v.dim()
    d = _dim(ctx, ctx.arg("dim"), rank)
    n = int(v.shape[d])
    if int(math.prod(v.shape[1:])) * n > SOFTMAX_MAX_PAIRS:
        raise UnsupportedLayer(ctx.name, f"softmax over {n} elements of a large tensor (n^2 pairwise differences)")
    log = ctx.target in _ov(aten._log_softmax, "default")
    nm = ctx.name
    last = ctx.emit(ops.LinearMapOp(nm + ".movedim", lambda t: t.movedim(d, -1), "movedim"), [x])
    xj = ctx.emit(ops.LinearMapOp(nm + ".x_j", lambda t: t.unsqueeze(-2).expand(*t.shape[:-1], n, n), "expand"),
                  [last])
    xi = ctx.emit(ops.LinearMapOp(nm + ".x_i", lambda t: t.unsqueeze(-1).expand(*t.shape[:-1], n, n), "expand"),
                  [last])
    diff = ctx.emit(_internal(ops.WeightedSumOp(nm + ".diff", 1.0, -1.0)), [xj, xi])
    if not log:
        # s' = 1 / sum exp(min(d, CAP)) >= s, and where a difference exceeds CAP both are below
        # exp(-CAP): |s - s'| <= exp(-CAP), charged by SoftmaxRoundingOp; keeps exp finite in
        # float32 bound arithmetic (its overflow would leave no bound)
        diff = ctx.emit(_internal(ops.ClampOp(nm + ".cap", None, ops.SoftmaxRoundingOp.CAP)), [diff])
    e = ctx.emit(_internal(ops.ExpOp(nm + ".exp")), [diff])
    tot = ctx.emit(_internal(ops.LinearMapOp(nm + ".sum", lambda t: t.sum(-1), "sum", fan=n + 1)), [e])
    if log:
        lg = ctx.emit(_internal(ops.LogOp(nm + ".log")), [tot])
        y = ctx.emit(ops.NegOp(nm + ".neg"), [lg])
    else:
        y = ctx.emit(_internal(ops.ReciprocalOp(nm + ".reciprocal")), [tot])
    back = ctx.emit(ops.LinearMapOp(nm + ".movedim_back", lambda t: t.movedim(-1, d), "movedim"), [y])
    fin = ops.SoftmaxRoundingOp(nm, d, n, log)
    fin.u = ctx.u_elem
    return ctx.emit(fin, [back, x])


# ---------------------------------------------------------------- constant-mask selection
def _const_mask(ctx, name):
    """The boolean mask of a ``where``/``masked_fill`` (schema argument ``name``): a constant (a
    buffer, a literal, a tensor built from constants), per sample. A mask computed from the
    input (``x > 0``) is a data-dependent selection: refused (its comparison is refused first)."""
    v = ctx.raw(name)
    if ctx.is_data(v):
        raise UnsupportedLayer(ctx.name, "torch.where / masked_fill with a data-dependent mask")
    m = ctx.value_of(name)
    if not (torch.is_tensor(m) and m.dtype == torch.bool):
        raise UnsupportedLayer(ctx.name, "torch.where / masked_fill with a mask that is not a boolean tensor")
    return _per_sample_const(ctx, m).detach().clone()


def _select(ctx, mask, a, a_name, b, b_name):
    """``where(mask, a, b)`` for a constant ``mask``, one or both of ``a``, ``b`` carrying the
    input (the others constant tensors, schema arguments ``a_name``/``b_name``): an exact
    per-element selection, no arithmetic in the model's kernel. Each data operand goes through
    ``t -> where(mask, t, 0)`` (resp. ``where(mask, 0, t)``), a linear map with coefficients 0
    and 1 (``LinearMapOp``, broadcasting the operand up to the output's shape), and the
    constant operand, converted to the output's dtype as the kernel uses it, is added where it
    is selected; ``t + 0`` is exact, so these steps charge no model rounding (``u = 0``)."""
    out = ctx.out_value()
    if not (torch.is_tensor(out) and out.is_floating_point()):
        raise UnsupportedLayer(ctx.name, "torch.where / masked_fill with a non-float result")
    dt, shape = out.dtype, tuple(out.shape[1:])
    keep = {a_name: mask, b_name: ~mask}
    parts, const = [], None
    for node, nm in ((a, a_name), (b, b_name)):
        sel = keep[nm]
        if ctx.is_data(node):
            _data_like_out(ctx, node, "torch.where / masked_fill")

            def fn(t, sel=sel):
                s = sel.to(t.device)
                return torch.where(s, t, torch.zeros((), dtype=t.dtype, device=t.device)).expand(t.shape[0], *shape)

            op = ops.LinearMapOp(f"{ctx.name}.{nm}", fn, "where selection")
            parts.append(ctx.lw.emit(op, [ctx.lw.index_of(node)], ctx.n))
        else:
            cv = ctx.value_of(nm)
            if torch.is_tensor(cv):
                if cv.is_complex() or not (cv.dtype == dt or cv.dim() == 0):
                    raise UnsupportedLayer(ctx.name, "torch.where / masked_fill with a constant of another dtype")
                _per_sample_const(ctx, cv)
            elif not isinstance(cv, (int, float)) or isinstance(cv, bool):
                raise UnsupportedLayer(ctx.name, f"torch.where / masked_fill with the value {cv!r}")
            const = (sel, _const_in_dtype(ctx, nm, dt))
    if len(parts) == 2:
        op = ops.WeightedSumOp(ctx.name, 1.0, 1.0)
        op.u = 0.0  # one term of each sum is 0: exact
        return ctx.lw.emit(op, parts, ctx.n)
    (i,) = parts
    if const is None:
        return i
    sel, c_of = const

    def bias(env, sel=sel, c_of=c_of):
        c = c_of(env)  # the kernel's value of the constant
        s = sel.to(c.device)
        return torch.where(s, c, torch.zeros((), dtype=c.dtype, device=c.device)).expand(shape)

    add = ops.AddConstOp(ctx.name)
    add.consts["bias"] = bias
    add.u = 0.0  # x + 0 and 0 + c are exact: the kernel selects
    return ctx.lw.emit(add, [i], ctx.n)


@register(*_ov(aten.where, "self", "ScalarOther", "ScalarSelf", "Scalar"))
def _where(ctx):
    """``torch.where(mask, a, b)`` with a constant mask (``_select``)."""
    mask = _const_mask(ctx, "condition")
    a, b = ctx.raw("self"), ctx.raw("other")
    if not (ctx.is_data(a) or ctx.is_data(b)):
        raise UnsupportedLayer(ctx.name, "torch.where without a data operand")
    return _select(ctx, mask, a, "self", b, "other")


@register(*_ov(aten.masked_fill, "Scalar", "Tensor"), *_ov(aten.masked_fill_, "Scalar", "Tensor"))
def _masked_fill(ctx):
    """``x.masked_fill(mask, value)`` = ``where(mask, value, x)``, a constant mask; a value
    that depends on the input is selected as data too."""
    mask = _const_mask(ctx, "mask")
    ctx.data_arg("self")
    return _select(ctx, mask, ctx.raw("value"), "value", ctx.raw("self"), "self")


# ------------------------------------------------ addcmul / lerp with constant extra operands
def _const_operand(ctx, name, dt):
    """A constant tensor operand ``name`` as a function of the environment, per sample, in the
    output's dtype ``dt`` as the kernel converts it, then float64 (a 0-dim float64 literal of a
    float32 op is used in float32; another dtype of higher rank would change the result's)."""
    v = ctx.value_of(name)
    if torch.is_tensor(v):
        if v.is_complex() or not (v.dtype == dt or v.dim() == 0):
            raise UnsupportedLayer(ctx.name, f"a constant {name!r} of another dtype")
        ctx.check_per_sample(name)
    elif isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UnsupportedLayer(ctx.name, f"a constant {name!r} that is not a real number or tensor")
    return _const_in_dtype(ctx, name, dt)


def _const_in_dtype(ctx, name, dt):
    """THE value of constant argument ``name`` (a tensor, per sample, or a number) as the kernel
    uses it: converted to the output's dtype ``dt``, then float64; a function of the environment."""
    ref = ctx.const_ref(name)

    def value(env):
        c = ref(env)
        c = _per_sample_const(ctx, c) if torch.is_tensor(c) else torch.tensor(float(c), dtype=dt)
        return _as_double(c.to(dt))

    return value


def _data_like_out(ctx, node, what):
    """The dtype of data operand ``node`` of an op whose float output it makes elementwise:
    refused where the dtype changes or the operand broadcasts across the batch."""
    v, out = ctx.lw.values[node], ctx.out_value()
    if not (torch.is_tensor(out) and out.is_floating_point() and torch.is_tensor(v) and v.dtype == out.dtype):
        raise UnsupportedLayer(ctx.name, f"{what} with a dtype change")
    if v.dim() != out.dim() or v.shape[0] != out.shape[0]:
        raise UnsupportedLayer(ctx.name, f"{what} that broadcasts across the batch dimension")
    return out.dtype


def _data_of_out_dtype(ctx, node, what):
    """``_data_like_out``, for kernels whose scalars were measured in float32 and float64 only."""
    _data_like_out(ctx, node, what)
    out = ctx.out_value()
    if out.dtype not in (torch.float32, torch.float64):
        # reduced-precision kernels take their scalars in float32 (opmath), not in the data's dtype
        raise UnsupportedLayer(ctx.name, f"{what} of a {out.dtype} tensor")
    return out.dtype


@register(*_ov(aten.addcmul, "default"), *_ov(aten.addcmul_, "default"))
def _addcmul(ctx):
    """``addcmul(s, t1, t2, value=v) = s + v t1 t2`` with one of ``s``, ``t1``, ``t2`` carrying the
    input and the others constant: affine in the data (``ChannelAffineOp``; ``v`` in the data's
    dtype, as the kernel converts it). The kernel rounds ``v t1``, the product and the sum (or
    fuses them): measured within 2 ulps of ``|s| + |v t1 t2|`` on 1e6 float32 samples; 3
    rounded operations are charged on that magnitude. Two data operands (a product of data)
    are refused."""
    names = ("self", "tensor1", "tensor2")
    nodes = {k: ctx.raw(k) for k in names}
    data = [k for k in names if ctx.is_data(nodes[k])]
    if len(data) != 1:
        raise UnsupportedLayer(ctx.name, "addcmul with more than one data operand (a product of data tensors)")
    d = data[0]
    dt = _data_of_out_dtype(ctx, nodes[d], "addcmul")
    v = _kernel_scalar(ctx, ctx.arg("value"))
    cs = {k: _const_operand(ctx, k, dt) for k in names if k != d}

    def v_t1(env):  # the kernel's fl(v * t1) of a constant t1, in the data's dtype
        return _as_double(torch.tensor(v, dtype=dt) * cs["tensor1"](env).to(dt))

    # the kernel evaluates s + (v * t1) * t2 in that order (CPU and CUDA): its intermediate
    # v * t1 may overflow or be subnormal where v * t1 * t2 is neither; products of constants
    # are formed as the kernel rounds them, and with the data in t1, v * t1 is its own op
    if d == "self":
        return _affine_const(ctx, nodes[d], lambda env: _as_double(1.0),
                             lambda env: _as_double((v_t1(env).to(dt) * cs["tensor2"](env).to(dt))), 3)
    if d == "tensor2":
        return _affine_const(ctx, nodes[d], v_t1, lambda env: cs["self"](env), 3)
    i = _affine_const(ctx, nodes[d], lambda env: _as_double(v), lambda env: None, 1, name=f"{ctx.name}.value")
    return _affine_const(ctx, i, lambda env: cs["tensor2"](env), lambda env: cs["self"](env), 2)


@register(*_ov(aten.lerp, "Scalar", "Tensor"), *_ov(aten.lerp_, "Scalar", "Tensor"))
def _lerp(ctx):
    """``lerp(s, e, w) = s + w (e - s)`` with a constant weight (a number, or a constant tensor,
    in the data's dtype as the kernel converts it): ``(1 - w) s + w e``, affine in the data. The
    kernel (CPU and CUDA share ATen's ``lerp``) computes ``s + w (e - s)`` for ``|w| < 0.5`` and
    ``e - (e - s)(1 - w)`` otherwise, so its error is a few roundings of ``|1 - w| |s| + |w|
    |e|`` (at most 3 times that magnitude per rounding, for ``w <= -0.5``; measured within 4.4
    ulps on 1e6 float32 samples for weights from -3 to 7): 12 rounded operations are charged on
    it. Both ``s`` and ``e`` data with a number weight: a weighted sum; with a tensor weight, or
    a weight that depends on the input (a product of data), refused."""
    s_node, e_node, w_node = ctx.raw("self"), ctx.raw("end"), ctx.raw("weight")
    if ctx.is_data(w_node):
        raise UnsupportedLayer(ctx.name, "lerp with a data-dependent weight (a product of data tensors)")
    ds, de = ctx.is_data(s_node), ctx.is_data(e_node)
    x = s_node if ds else e_node
    dt = _data_of_out_dtype(ctx, x, "lerp")
    w = _const_operand(ctx, "weight", dt)
    if ds and de:
        _data_of_out_dtype(ctx, e_node, "lerp")
        if torch.is_tensor(ctx.value_of("weight")):
            raise UnsupportedLayer(ctx.name, "lerp of two data tensors with a tensor weight")
        wv = float(w(None))
        op = ops.LerpSumOp(ctx.name, 1.0 - wv, wv)
        op.u = ctx.u_elem
        op.fan = 12
        return ctx.emit(op, [s_node, e_node])
    # the kernel forms e - s first: LerpAffineOp has no bound where |s| + |e| may overflow
    c = _const_operand(ctx, "end" if ds else "self", dt)
    op = ops.LerpAffineOp(ctx.name, n_ops=12)
    op.u = ctx.u_elem
    if ds:
        op.consts["weight"] = lambda env: 1.0 - w(env)
        op.consts["bias"] = lambda env: w(env) * c(env)
    else:
        op.consts["weight"] = lambda env: w(env)
        op.consts["bias"] = lambda env: (1.0 - w(env)) * c(env)
    op.consts["other_abs"] = lambda env: c(env).abs()
    op.consts["span_scale"] = lambda env: (1.0 - w(env)).abs().clamp(min=1.0)
    return ctx.emit(op, [x])


# ------------------------------------------------------------------------ refusals
_REFUSED = {
    "native_dropout": "dropout in training mode (call model.eval())",
}
for _name, _why in _REFUSED.items():
    _packet = getattr(aten, _name, None)
    if _packet is None:
        continue
    for _o in _packet.overloads():
        HANDLERS[getattr(_packet, _o)] = (lambda why: lambda ctx: (_ for _ in ()).throw(
            UnsupportedLayer(ctx.name, why)))(_why)
