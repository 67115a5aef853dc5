"""Trace a user's ``nn.Module`` (torch.fx) into a graph of bound operators.

The graph is a topologically ordered list of nodes, each an operator from ops.py with the
indices of its tensor inputs. Shapes are recorded on a concrete example so that reshapes
written with ``x.size(0)`` or ``-1`` become fixed per-sample reshapes.
"""
from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .ops import UnsupportedLayer


@dataclass
class Node:
    op: ops.BoundOp
    inputs: List[int]
    shape: Tuple[int, ...]  # per-sample shape of this node's output


@dataclass
class BoundGraph:
    nodes: List[Node]
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]

    @property
    def out_index(self) -> int:
        return len(self.nodes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals: List[Optional[torch.Tensor]] = []
        for node in self.nodes:
            if isinstance(node.op, ops.InputOp):
                vals.append(x)
            else:
                vals.append(node.op.forward(*(vals[i] for i in node.inputs)))
        return vals[-1]

    def to(self, dtype=None, device=None) -> "BoundGraph":
        for node in self.nodes:
            node.op.to(dtype=dtype, device=device)
        return self

    def as_dtype(self, dtype) -> "BoundGraph":
        """A copy in ``dtype`` (cached on this graph); the original is left as it is."""
        cache = self.__dict__.setdefault("_dtype_copies", {})
        if dtype not in cache:
            import copy

            g = copy.copy(self)
            g.nodes = [Node(copy.deepcopy(n.op), n.inputs, n.shape) for n in self.nodes]
            g.__dict__["_dtype_copies"] = {}
            cache[dtype] = g.to(dtype=dtype)
        return cache[dtype]

    def consumers(self) -> List[List[int]]:
        out: List[List[int]] = [[] for _ in self.nodes]
        for j, node in enumerate(self.nodes):
            for i in node.inputs:
                out[i].append(j)
        return out


# ----------------------------------------------------------------------------- tracing
_ACTIVATION_MODULES = {nn.ReLU: ops.ReLUOp, nn.Sigmoid: ops.SigmoidOp, nn.Tanh: ops.TanhOp}
_ACTIVATION_FUNCS = {
    torch.relu: ops.ReLUOp, F.relu: ops.ReLUOp, torch.sigmoid: ops.SigmoidOp, F.sigmoid: ops.SigmoidOp,
    torch.tanh: ops.TanhOp, F.tanh: ops.TanhOp,
}
_ACTIVATION_METHODS = {"relu": ops.ReLUOp, "sigmoid": ops.SigmoidOp, "tanh": ops.TanhOp}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "view_as", "reshape_as"}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_POSITIVE_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Upsample,
                     nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


def _reshape_fn(shape):
    return lambda x: x.reshape(x.shape[0], *shape)


class _Tracer(torch.fx.Tracer):
    # keep every torch.nn module as one call so layers are named in messages
    def is_leaf_module(self, m, qualname):
        return type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential)


def trace(model: nn.Module, input_shape: Tuple[int, ...], dtype=torch.float32, device=None) -> BoundGraph:
    """Build a ``BoundGraph`` for ``model`` on per-sample inputs of ``input_shape``.

    Raises ``UnsupportedLayer`` naming the first layer without a bound operator.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedLayer(type(model).__name__, "not a torch.nn.Module; only falsification applies")
    if type(model).__module__.startswith("torch.nn") and not isinstance(model, nn.Sequential):
        model = nn.Sequential(model)  # a bare layer (nn.Linear): trace it as a leaf, not through F.linear
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; we report and fall back
        raise UnsupportedLayer(type(model).__name__, f"not traceable by torch.fx: {exc}") from exc
    gm = torch.fx.GraphModule(model, fx_graph)
    modules = dict(model.named_modules())

    # concrete values of every fx node, to learn shapes and which nodes are data-dependent
    example = torch.zeros((2, *input_shape), dtype=dtype, device=device)
    values: Dict[torch.fx.Node, object] = {}
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayer(type(model).__name__, f"forward takes {len(placeholders)} inputs; expected one tensor")

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            values[n] = out = super().run_node(n)
            return out

    with torch.no_grad():
        _Recorder(gm).run(example)

    depends: Dict[torch.fx.Node, bool] = {}
    shape_nodes: set = set()
    index: Dict[torch.fx.Node, int] = {}
    nodes: List[Node] = []

    def shape_of(n):
        return tuple(values[n].shape[1:])

    def add(op, inputs, fxn):
        v = values[fxn]
        if not torch.is_tensor(v) or v.dim() == 0 or v.shape[0] != 2:
            raise UnsupportedLayer(op.name, "changes the batch dimension")
        nodes.append(Node(op, [index[i] for i in inputs], shape_of(fxn)))
        index[fxn] = len(nodes) - 1

    def const(a):
        """Value of a non-data argument (a tensor constant or a Python number)."""
        if isinstance(a, torch.fx.Node):
            return values[a]
        return a

    def is_data(a):
        return isinstance(a, torch.fx.Node) and depends.get(a, False)

    for n in fx_graph.nodes:
        args = list(n.args)
        depends[n] = n.op == "placeholder" or any(depends.get(a, False) for a in n.all_input_nodes)
        if n.op == "placeholder":
            nodes.append(Node(ops.InputOp("input"), [], tuple(input_shape)))
            index[n] = 0
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, torch.fx.Node) or out not in index:
                raise UnsupportedLayer("output", "the model must return a single tensor")
            if index[out] != len(nodes) - 1:  # output is not the last node: add an identity
                nodes.append(Node(ops.PositiveLinearOp("output", lambda x: x), [index[out]], shape_of(out)))
            break
        if not depends[n]:
            continue  # constants and size arithmetic: folded into the ops that use them
        val = values[n]
        if not torch.is_tensor(val):
            if _is_shape_arithmetic(n, shape_nodes):
                shape_nodes.add(n)
                continue  # e.g. x.size(0): only feeds reshape arguments, recorded as shapes
            # .item(), .tolist(), torch.sort's tuple...: freezing their trace value would be unsound
            raise UnsupportedLayer(n.name, f"data-dependent Python value from {_target_name(n)}")
        # tensor arguments in call order, repeats kept: x + x and cat([x, x]) take x twice
        ordered: List[torch.fx.Node] = []
        torch.fx.node.map_arg((n.args, n.kwargs), lambda a: ordered.append(a) or a)
        data_args = [a for a in ordered if is_data(a) and torch.is_tensor(values[a])]
        name = str(n.target) if n.op == "call_module" else n.name
        op = _make_op(n, name, modules, data_args, args, const, values)
        add(op, data_args[: op.n_inputs], n)

    return BoundGraph(nodes, tuple(input_shape), nodes[-1].shape)


_SHAPE_METHODS = {"size", "dim", "numel"}
_SHAPE_ATTRS = {"shape", "ndim"}


def _target_name(n) -> str:
    t = n.target
    return f".{t}()" if n.op == "call_method" else getattr(t, "__name__", str(t))


def _is_shape_arithmetic(n, shape_nodes) -> bool:
    """Whether a non-tensor value only describes shapes: x.size(), x.shape, x.dim() and
    indexing or integer arithmetic on those (all fixed for a fixed per-sample shape)."""
    if n.op == "call_method" and n.target in _SHAPE_METHODS:
        return True
    if n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] in _SHAPE_ATTRS:
        return True
    data_in = n.all_input_nodes
    return (n.op == "call_function" and n.target in (operator.getitem, operator.mul, operator.add, operator.sub,
                                                        operator.floordiv, operator.truediv)
            and bool(data_in) and all(a in shape_nodes or a.op == "get_attr" for a in data_in
                                      if a.op != "placeholder") and not any(a.op == "placeholder" for a in data_in))


def _make_op(n, name, modules, data_args, args, const, values):
    out_shape = tuple(values[n].shape[1:])
    if n.op == "call_module":
        m = modules[n.target]
        t = type(m)
        if isinstance(m, nn.Linear):
            return ops.LinearOp(name, m.weight, m.bias)
        if isinstance(m, nn.Conv2d):
            return ops.Conv2dOp(name, m)
        if isinstance(m, nn.ConvTranspose2d):
            return ops.ConvTranspose2dOp(name, m)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return ops.BatchNormOp(name, m)
        if t in _ACTIVATION_MODULES:
            return _ACTIVATION_MODULES[t](name)
        if isinstance(m, nn.LeakyReLU):
            return ops.LeakyReLUOp(name, m.negative_slope)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return ops.PositiveLinearOp(name, _reshape_fn(out_shape), t.__name__)
        if isinstance(m, _IDENTITY_MODULES):
            return ops.PositiveLinearOp(name, lambda x: x, t.__name__)
        if isinstance(m, _POSITIVE_MODULES):
            if isinstance(m, nn.Upsample) and m.mode not in ("nearest", "linear", "bilinear"):
                raise UnsupportedLayer(name, f"Upsample(mode={m.mode!r})")
            return ops.PositiveLinearOp(name, m, t.__name__)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
            return ops.MonotoneIBPOp(name, m)
        raise UnsupportedLayer(name, t.__name__)

    target = n.target
    if n.op == "call_method":
        if target in _ACTIVATION_METHODS:
            return _ACTIVATION_METHODS[target](name)
        if target in _RESHAPE_METHODS:
            return ops.PositiveLinearOp(name, _reshape_fn(out_shape), target)
        if target in _IDENTITY_METHODS:
            return ops.PositiveLinearOp(name, lambda x: x, target)
        if target in ("permute", "transpose"):
            return _permute_op(name, n, args, values)
        if target in ("add", "sub", "mul", "div"):
            target = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[target]
        else:
            raise UnsupportedLayer(name, f"tensor method .{target}()")

    # call_function (or arithmetic methods mapped above)
    if target in _ACTIVATION_FUNCS:
        return _ACTIVATION_FUNCS[target](name)
    if target is F.leaky_relu:
        slope = n.kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
        return ops.LeakyReLUOp(name, float(slope))
    if target is torch.flatten:
        return ops.PositiveLinearOp(name, _reshape_fn(out_shape), "flatten")
    if target in (torch.reshape,):
        return ops.PositiveLinearOp(name, _reshape_fn(out_shape), "reshape")
    if target in (F.avg_pool2d, F.adaptive_avg_pool2d, F.interpolate):
        fargs, fkw = args[1:], dict(n.kwargs)
        if target is F.interpolate and fkw.get("mode", "nearest") not in ("nearest", "bilinear", "linear"):
            raise UnsupportedLayer(name, f"interpolate(mode={fkw.get('mode')!r})")
        fargs = [const(a) for a in fargs]
        return ops.PositiveLinearOp(name, lambda x: target(x, *fargs, **fkw), target.__name__)
    if target in (F.max_pool2d,):
        fargs = [const(a) for a in args[1:]]
        fkw = dict(n.kwargs)
        return ops.MonotoneIBPOp(name, lambda x: target(x, *fargs, **fkw))
    if target is torch.cat:
        dim = n.kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if any(not isinstance(a, torch.fx.Node) or a not in data_args for a in args[0]):
            raise UnsupportedLayer(name, "torch.cat with constant parts")
        return ops.CatOp(name, len(args[0]), int(dim))
    if target is operator.neg or target is torch.neg:
        return ops.ScaleOp(name, -1.0)
    if target in (operator.add, torch.add, operator.sub, torch.sub):
        sign = 1.0 if target in (operator.add, torch.add) else -1.0
        a, b = args[0], args[1]
        if len(data_args) == 2:
            return ops.AddOp(name, sign)
        if isinstance(a, torch.fx.Node) and a in data_args:
            return ops.AddConstOp(name, sign * torch.as_tensor(const(b)))
        # constant - x: handled as x * (-1) + c would need two ops; keep it explicit
        raise UnsupportedLayer(name, "constant minus tensor (write -x + c)") if sign < 0 else \
            ops.AddConstOp(name, torch.as_tensor(const(a)))
    if target in (operator.mul, torch.mul):
        a, b = args[0], args[1]
        if len(data_args) == 2:
            raise UnsupportedLayer(name, "product of two data-dependent tensors")
        c = const(b) if (isinstance(a, torch.fx.Node) and a in data_args) else const(a)
        return ops.ScaleOp(name, c)
    if target in (operator.truediv, torch.div):
        a, b = args[0], args[1]
        if len(data_args) == 2 or not (isinstance(a, torch.fx.Node) and a in data_args):
            raise UnsupportedLayer(name, "division by a data-dependent tensor")
        return ops.ScaleOp(name, 1.0 / torch.as_tensor(const(b), dtype=torch.float32))
    raise UnsupportedLayer(name, f"function {getattr(target, '__name__', target)}")


def _permute_op(name, n, args, values):
    if n.target == "permute":
        dims = args[1:] if not isinstance(args[1], (tuple, list)) else args[1]
        dims = [int(d) for d in dims]
    else:
        d0, d1 = int(args[1]), int(args[2])
        ndim = values[n].dim()
        dims = list(range(ndim))
        dims[d0], dims[d1] = dims[d1], dims[d0]
    if dims[0] != 0:
        raise UnsupportedLayer(name, "permute/transpose that moves the batch dimension")
    return ops.PositiveLinearOp(name, lambda x: x.permute(*dims), "permute")


# ------------------------------------------------------------------------------ cache
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module):
    # parameters may be trained between audits: key the cache on their versions
    return tuple((p.data_ptr(), p._version) for p in list(model.parameters()) + list(model.buffers()))


def get_graph(model: nn.Module, input_shape, dtype=torch.float32, device=None) -> BoundGraph:
    """``trace`` with a per-model cache, invalidated when parameters change."""
    key = (tuple(input_shape), dtype, str(device), _fingerprint(model), model.training)
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:
        per_model = {}
    g = per_model.get(key)
    if g is None:
        per_model.clear()
        g = trace(model, tuple(input_shape), dtype=torch.float32, device=None).to(dtype=dtype, device=device)
        per_model[key] = g
    return g
