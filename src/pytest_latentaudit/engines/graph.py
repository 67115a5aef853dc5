"""Lower a user's model into a graph of bound operators, and check it against the model.

Lowering traces ``model(x)`` itself with ``make_fx`` (real tensors, ATen level), over
``torch.func.functional_call`` so that parameters and buffers are graph inputs. Tracing
the call, not ``forward``, records everything that runs: forward hooks and pre-hooks on
any module, keyword arguments made explicit in each ATen op's schema (``alpha=``,
``rounding_mode=``), Python attributes read in ``forward`` (baked into the trace), and
one spelling per op (``F.linear``, ``nn.Linear`` and ``x @ W.T + b`` all arrive as
``addmm``). Every data-dependent node maps through ``registry.HANDLERS``; anything else
is refused by name. Data-dependent control flow (``if x.sum() > 0``) fails the trace
itself, and so is refused too.

There is no graph cache: each audit lowers the model as it is at that moment (a traced
graph of a 5x512 head costs about 20 ms), so a module swapped, a slope changed or weights
edited in place can never meet a stale graph. And before any proof counts, ``check``
bounds zero-width boxes at sample points with the graph and requires the model's own
forward output to lie inside them (see api.py).
"""
from __future__ import annotations

import contextlib
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from . import ops
from .ops import UnsupportedLayer

TRACE_BATCH = 2


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
    #: (params) -> {fx node: value} for the constant part of the trace
    const_env: Optional[Callable] = None
    params: Optional[Dict[str, torch.Tensor]] = None
    dtype: Optional[torch.dtype] = None
    device: Optional[torch.device] = None
    notes: List[str] = field(default_factory=list)
    #: float32 products of the ops in this graph may have their inputs rounded (TF32 or
    #: bfloat16, ``reduced_float32_inputs``) on its device: then our own bound arithmetic is
    #: done in float64 (bind), as the radii of our rounding assume full float32 products
    reduced_float32: bool = False

    @property
    def out_index(self) -> int:
        return len(self.nodes) - 1

    def bind(self, params=None, dtype=torch.float64, device=None, detach=True, rounding=True) -> "BoundGraph":
        """Evaluate the ops' constants from ``params`` (default: the model's parameters at
        lowering time, which are the live tensors). ``detach=False`` keeps autograd, for
        certified training through the same operators. ``rounding=False`` drops the
        floating-point error radii: never for proofs; for training, where the bound is a
        loss, not a claim, and to measure what float soundness costs."""
        if device is not None:
            mm_in, conv_in = reduced_float32_inputs(device)
            self.reduced_float32 = mm_in > 0 or (conv_in > 0 and any(isinstance(n.op, ops.ConvOp)
                                                                      for n in self.nodes))
        if dtype == torch.float32 and self.reduced_float32:
            dtype = torch.float64  # float64 products are never rounded to TF32 or bfloat16
        env = self.const_env(self.params if params is None else params)
        for node in self.nodes:
            node.op.bind(env, dtype=dtype, device=device, detach=detach)
            node.op.rounding = rounding
        self.dtype, self.device = dtype, device
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        vals: List[Optional[torch.Tensor]] = []
        for node in self.nodes:
            if isinstance(node.op, ops.InputOp):
                vals.append(x)
            else:
                vals.append(node.op.forward(*(vals[i] for i in node.inputs)))
        return vals[-1]

    def as_dtype(self, dtype) -> "BoundGraph":
        if dtype != self.dtype:
            self.bind(dtype=dtype, device=self.device)
        return self

    def consumers(self) -> List[List[int]]:
        out: List[List[int]] = [[] for _ in self.nodes]
        for j, node in enumerate(self.nodes):
            for i in node.inputs:
                out[i].append(j)
        return out

    def describe(self) -> str:
        return "\n".join(f"{j}: {n.op!r} <- {n.inputs} {n.shape}" for j, n in enumerate(self.nodes))


# ----------------------------------------------------------------------- unit roundoff
_UNIT = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
         torch.bfloat16: 2.0 ** -8}


def _roundoffs(dtype, device) -> Tuple[float, float, float, float]:
    """(u_elementwise, u_matmul_in, u_conv_in, u_accumulate) for the model's evaluation.

    float32 on CUDA may round matmul/conv inputs to TF32 (10-bit mantissa) or bfloat16
    when torch allows it (``allow_tf32`` flags, ``set_float32_matmul_precision``)."""
    u = _UNIT.get(dtype)
    if u is None:
        raise UnsupportedLayer("model", f"parameters of dtype {dtype}")
    mm_in = conv_in = 0.0
    if dtype == torch.float32:
        mm_in, conv_in = reduced_float32_inputs(device)
    return u, mm_in, conv_in, u


#: input rounding of a float32 product under each reduced-precision setting
_REDUCED = {"high": 2.0 ** -11, "medium": 2.0 ** -8, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8}


def _setting(path: str):
    """A precision setting of torch by dotted path (``None`` where this torch lacks it);
    ``"unreadable"`` where reading it raises (torch refuses to answer once the legacy and
    the new TF32 APIs have both been used)."""
    obj = torch
    try:
        for part in path.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return None
    except RuntimeError:
        return "unreadable"
    return obj


def reduced_float32_inputs(device) -> Tuple[float, float]:
    """``(matmul, convolution)``: how coarsely float32 matmul and convolution inputs may be
    rounded on ``device`` under torch's current settings (TF32: ``2^-11``, bfloat16: ``2^-8``;
    0: full float32). Both the legacy flags (``allow_tf32``, ``set_float32_matmul_precision``)
    and the newer ``fp32_precision`` settings are read; a setting torch will not report counts
    as the coarsest. The model's own products and our bound arithmetic on that device both
    run under these settings (see ``BoundGraph.reduced_float32``)."""
    cuda = device is not None and torch.device(device).type == "cuda"
    backend = "cuda.matmul" if cuda else "mkldnn.matmul"
    conv_backend = ("cudnn", "cudnn.conv") if cuda else ("mkldnn", "mkldnn.conv")
    mm = ["get_float32_matmul_precision", "backends.fp32_precision", f"backends.{backend}.fp32_precision"]
    if not cuda:
        mm.append("backends.mkldnn.fp32_precision")
    cv = ["backends.fp32_precision"] + [f"backends.{b}.fp32_precision" for b in conv_backend]

    def level(paths, legacy_flag=None):
        low = 0.0
        for path in paths:
            v = _setting(path)
            if callable(v):
                try:
                    v = v()
                except RuntimeError:
                    v = "unreadable"
            if v == "unreadable":
                return 2.0 ** -8
            low = max(low, _REDUCED.get(v, 0.0) if isinstance(v, str) else 0.0)
        if cuda and legacy_flag is not None:
            flag = _setting(legacy_flag)
            if flag == "unreadable" or flag is True:
                low = max(low, 2.0 ** -11 if flag is True else 2.0 ** -8)
        return low

    return level(mm, "backends.cuda.matmul.allow_tf32"), level(cv, "backends.cudnn.allow_tf32")


# ---------------------------------------------------------------------------- lowering
class _Ctx:
    """What a registry handler sees of one fx node."""

    def __init__(self, lw: "_Lowering", n: torch.fx.Node):
        self.lw, self.n = lw, n
        self.target = n.target
        schema = n.target._schema
        self.schema = schema
        self.schema_names = [a.name for a in schema.arguments]
        self.values: Dict[str, object] = {}
        self.defaults: Dict[str, object] = {}
        for i, a in enumerate(schema.arguments):
            if i < len(n.args) and not a.kwarg_only:
                v = n.args[i]
            elif a.name in n.kwargs:
                v = n.kwargs[a.name]
            elif a.has_default_value():
                v = a.default_value
            else:
                v = None
            self.values[a.name] = v
            self.defaults[a.name] = a.default_value if a.has_default_value() else _NODEFAULT
        self.used: set = set()
        self.name = f"{lw.scope_of(n)}{n.target}"
        self.batch = TRACE_BATCH
        self.u_elem, self.u_matmul, self.u_conv = lw.u, lw.u, lw.u
        self.u_in_matmul, self.u_in_conv = lw.mm_in, lw.conv_in

    # -- arguments
    def raw(self, name):
        self.used.add(name)
        return self.values[name]

    def arg(self, name):
        """A literal argument (a Python value, never data)."""
        v = self.raw(name)
        if isinstance(v, torch.fx.Node):
            if self.lw.depends[v]:
                raise UnsupportedLayer(self.name, f"data-dependent argument {name!r}")
            v = self.lw.values[v]
            if torch.is_tensor(v) and v.numel() == 1:
                v = v.item()
        return v

    def is_data(self, v) -> bool:
        return isinstance(v, torch.fx.Node) and self.lw.depends[v]

    def data_arg(self, name) -> torch.fx.Node:
        v = self.raw(name)
        if not self.is_data(v):
            raise UnsupportedLayer(self.name, f"argument {name!r} is expected to carry the input")
        return v

    def value_of(self, name):
        v = self.values[name]
        return self.lw.values[v] if isinstance(v, torch.fx.Node) else v

    def const_ref(self, name, optional=False):
        """The constant argument ``name`` as a function of the bound environment."""
        v = self.raw(name)
        if v is None:
            if optional:
                return lambda env: None
            raise UnsupportedLayer(self.name, f"missing argument {name!r}")
        if self.is_data(v):
            raise UnsupportedLayer(self.name, f"argument {name!r} depends on the input (a product of two tensors)")
        if isinstance(v, torch.fx.Node):
            self.lw.needed.add(v)
            return lambda env: env[v]
        return lambda env: v

    def const_arg(self, name):
        """A constant tensor argument fixed at trace time (an index, not a parameter)."""
        v = self.raw(name)
        if self.is_data(v):
            raise UnsupportedLayer(self.name, f"argument {name!r} depends on the input")
        return self.lw.values[v] if isinstance(v, torch.fx.Node) else v

    def check_per_sample(self, name):
        from .registry import _per_sample_const

        _per_sample_const(self, self.value_of(name))

    # -- shapes
    def _first_data(self):
        for a in self.n.all_input_nodes:
            if self.lw.depends[a]:
                return a
        raise UnsupportedLayer(self.name, "no data input")

    def in_value(self):
        return self.lw.values[self._first_data()]

    def rank(self) -> int:
        return self.in_value().dim()

    def in_shape(self):
        return tuple(self.in_value().shape[1:])

    def in_shape_full(self):
        return tuple(self.in_value().shape)

    def out_value(self):
        return self.lw.values[self.n]

    def out_rank(self) -> int:
        v = self.out_value()
        return (v[0] if isinstance(v, (tuple, list)) else v).dim()

    def out_shape(self):
        return tuple(self.out_value().shape[1:])

    def returns_tuple(self) -> bool:
        return isinstance(self.out_value(), (tuple, list))

    # -- results
    def emit(self, op, inputs) -> int:
        return self.lw.emit(op, [self.lw.index_of(i) for i in inputs], self.n)

    def alias(self, fxnode) -> int:
        return self.lw.index_of(fxnode)

    def tuple_outputs(self, outs, refuse=None):
        """Outputs of a tuple-valued op, picked by ``getitem``: an index, or (op, input)."""
        self.lw.tuples[self.n] = (outs, refuse or {})
        return None


_NODEFAULT = object()


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - tensors, odd types: treat as different
        return False


class _Lowering:
    def __init__(self, gm: torch.fx.GraphModule, values, depends, u, mm_in, conv_in, scopes):
        self.gm, self.values, self.depends = gm, values, depends
        self.u, self.mm_in, self.conv_in = u, mm_in, conv_in
        self.scopes = scopes
        self.nodes: List[Node] = []
        self.index: Dict[torch.fx.Node, int] = {}
        self.tuples: Dict[torch.fx.Node, tuple] = {}
        self.needed: set = set()
        self.merged: set = set()  # products whose rows are (batch x positions): _merged_batch_dense
        self.row_products: set = set()  # einsum's bmm of [1, batch x rows, k]: _merged_batch_bmm

    def scope_of(self, n) -> str:
        s = self.scopes.get(n.name)
        return f"{s}: " if s else ""

    def index_of(self, v):
        if isinstance(v, int):
            return v
        if v not in self.index:
            raise UnsupportedLayer(str(v), "an input that was not lowered")
        return self.index[v]

    def emit(self, op, inputs, fxn) -> int:
        self.nodes.append(Node(op, list(inputs), None))  # shapes: from a forward pass in lower()
        return len(self.nodes) - 1


def _fx_nodes_needed(graph: torch.fx.Graph, out_node) -> set:
    """Nodes the output depends on (dead code, like unused hook results, is skipped). An eval
    ``rrelu_with_noise`` reads only its input: its ``noise`` (an ``empty_like`` the kernel
    neither reads nor writes outside training) is no ancestor."""
    return _ancestors([out_node], _read_inputs)


def _eval_rrelu(n) -> bool:
    """Whether fx node ``n`` is ``rrelu_with_noise`` with ``training=False``: the deterministic
    leaky ReLU of slope ``(lower + upper) / 2`` (``nn.RReLU`` in eval mode); in training it draws
    a slope per element and stays a random op."""
    if n.op != "call_function" or n.target is not getattr(getattr(_aten, "rrelu_with_noise", None), "default", None):
        return False
    training = n.args[4] if len(n.args) > 4 else n.kwargs.get("training", False)
    generator = n.args[5] if len(n.args) > 5 else n.kwargs.get("generator", None)
    return training is False and generator is None


def _read_inputs(n) -> list:
    if _eval_rrelu(n):
        return [a for i, a in enumerate(n.args) if i != 1 and isinstance(a, torch.fx.Node)] + \
            [v for k, v in n.kwargs.items() if k != "noise" and isinstance(v, torch.fx.Node)]
    return list(n.all_input_nodes)


def _detached(named: Dict[str, torch.Tensor], keep_grad: bool = False) -> Dict[str, torch.Tensor]:
    """The parameters and buffers detached for a trace, one detached tensor per original: tied
    weights (one Parameter under two names) must stay one object, or ``functional_call``
    refuses them ("got multiple values for keys ... which are tied")."""
    one: Dict[int, torch.Tensor] = {}
    out = {}
    for k, v in named.items():
        if id(v) not in one:
            d = v.detach()
            one[id(v)] = d.requires_grad_(v.requires_grad) if keep_grad else d
        out[k] = one[id(v)]
    return out


def lower(model: nn.Module, example: torch.Tensor, other_batch: Optional[int] = None) -> BoundGraph:
    """Lower ``model`` on per-sample inputs shaped like ``example[0]`` into a BoundGraph.

    ``other_batch``: a batch size the model is also traced at (the user's number of boxes;
    api.py passes it), whose program must be the batch-``TRACE_BATCH`` one with the batch
    dimension scaled (``_same_up_to_batch``): a forward that branches on its batch size is
    another function at the user's batch than the one lowered.

    Raises ``UnsupportedLayer`` naming the first op without a sound bound operator."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from .registry import HANDLERS

    if not isinstance(model, nn.Module):
        raise UnsupportedLayer(type(model).__name__, "not a torch.nn.Module: proofs need a module")
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    dtypes = {p.dtype for p in named.values() if p.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else (example.dtype if not dtypes else None)
    if dtype is None:
        raise UnsupportedLayer(type(model).__name__, "parameters of mixed floating dtypes")
    device = example.device
    u, mm_in, conv_in, _ = _roundoffs(dtype, device)
    x = example.to(dtype)
    if x.shape[0] != TRACE_BATCH:
        x = torch.cat([x[:1]] * TRACE_BATCH) if x.shape[0] < TRACE_BATCH else x[:TRACE_BATCH]
    x = x.detach().clone()
    names = list(named)

    def fn(params, inp):
        # the tracer sets torch.fx's "tracing" flag; a forward that reads it (to skip a check,
        # or as nn.MultiheadAttention does, to leave its fused path) would be traced on a
        # path that a plain call does not take
        with _not_fx_tracing():
            return torch.func.functional_call(model, params, (inp,))

    escapes: List[tuple] = []
    state = _python_state(model)
    rng = _rng_states()
    try:
        with torch.no_grad(), _EscapeRecorder(escapes), _one_fake_mode():
            gm = make_fx(fn, tracing_mode="real")(_detached(named), x)
        # a user's plain call runs with autograd on and parameters that require grad, this
        # trace without either: a forward that branches on torch.is_grad_enabled() or on a
        # tensor's requires_grad is a different function in each mode
        with torch.enable_grad(), _EscapeRecorder(escapes), _one_fake_mode():
            live = _detached(named, keep_grad=True)
            gm_grad = make_fx(fn, tracing_mode="real")(live, x)
        gm_other = None
        if other_batch is not None and int(other_batch) != TRACE_BATCH and int(other_batch) >= 1:
            xb = torch.cat([x] * (int(other_batch) // TRACE_BATCH + 1))[:int(other_batch)]
            with torch.no_grad(), _EscapeRecorder(escapes), _one_fake_mode():
                gm_other = make_fx(fn, tracing_mode="real")(_detached(named), xb)
    except UnsupportedLayer:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing raises many types; we refuse by name
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err = UnsupportedLayer(type(model).__name__, f"could not be traced ({msg[:200]})")
        err.untraceable = True
        raise err from exc

    # a counter the traces moved (a global, a class attribute) also differs between them:
    # name the cause before the programs' difference
    _refuse_state_changes(model, state)
    if not _same_trace(gm, gm_grad):
        raise UnsupportedLayer(type(model).__name__, "computes a different function with autograd on than under "
                               "torch.no_grad (forward branches on the grad mode or on requires_grad)")
    if gm_other is not None:
        why = _same_up_to_batch(gm, gm_other, int(other_batch))
        if why is not None:
            raise UnsupportedLayer(type(model).__name__, f"computes another program at batch size {int(other_batch)} "
                                   f"than at {TRACE_BATCH} ({why}): a forward that depends on its batch size")
    why = _inference_mode_differs(model, x)
    if why is not None:
        raise UnsupportedLayer(type(model).__name__, why)
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    param_ph, x_ph = placeholders[:-1], placeholders[-1]
    if len(param_ph) != len(names):
        raise UnsupportedLayer(type(model).__name__, "parameters could not be matched to the trace")
    out_node = next(n for n in graph.nodes if n.op == "output")
    outs = out_node.args[0]
    if isinstance(outs, (tuple, list)):
        if len(outs) != 1:
            raise UnsupportedLayer(type(model).__name__, "the model must return a single tensor")
        outs = outs[0]
    if not isinstance(outs, torch.fx.Node):
        raise UnsupportedLayer(type(model).__name__, "the model must return a tensor")

    # values of every node on the example, and which nodes carry the input
    values: Dict[torch.fx.Node, object] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            values[n] = out = super().run_node(n)
            return out

    with torch.no_grad():
        _Recorder(gm).run(_detached(named), x)
    depends = _carries_input(graph, x_ph)
    if not depends[outs]:
        raise UnsupportedLayer(type(model).__name__, "the output does not depend on the input")
    # the plain call runs in the grad-on trace's mode (the same program as ``gm`` up to
    # ``_canonical``'s rewrites, which may take other ops: bmm there, view, mm, view here)
    why = _plain_call_differs(model, x, gm_grad.graph,
                              [n for n in gm_grad.graph.nodes if n.op == "placeholder"][-1])
    if why is not None:
        raise UnsupportedLayer(type(model).__name__, why)
    drawn = _rng_drawn(rng)
    if drawn:
        raise UnsupportedLayer(type(model).__name__, f"forward draws random numbers ({', '.join(drawn)}'s global "
                               f"generator): each call draws anew, and a trace bakes in one draw")
    _refuse_state_changes(model, state)
    for what, node in escapes:
        # a value read into Python (numpy, tolist, ...) escapes the trace: whatever the model
        # did with it (a branch, a Python-side computation) is baked in for the example only
        if node is None or depends.get(node, False):
            err = UnsupportedLayer(type(model).__name__, f"reads values of the input into Python ({what}) in "
                                   f"forward: data-dependent control flow cannot be traced")
            err.untraceable = True
            raise err

    try:
        return _lower_nodes(gm, graph, values, depends, x, x_ph, param_ph, names, outs, named, dtype, device,
                            u, mm_in, conv_in)
    except UnsupportedLayer as exc:
        where = getattr(exc, "target", None)
        if where is None:
            raise
        layer = _locate(model, x, where)
        if layer is None:
            raise
        raise UnsupportedLayer(layer, f"{exc.what}; op {where}") from None


#: nn.Module's own bookkeeping (parameter, buffer, module and hook dicts): not model state
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
#: containers held by a module are compared up to this depth and length (longer: by length)
_STATE_DEPTH, _STATE_LEN = 3, 1000
#: tensors held as plain attributes are compared by value up to this size (larger: by identity)
_STATE_NUMEL = 1 << 20
_SKIP = object()


def _state_value(v, depth: int = 0):
    """A snapshot of one attribute for ``_state_changes``: scalars as they are, tensors (not
    parameters or buffers: those are graph inputs, and writes into them are refused by the
    trace) by value, containers item by item; anything else (functions, modules, objects)
    is ``_SKIP``."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if torch.is_tensor(v):
        small = v.numel() <= _STATE_NUMEL
        return ("tensor", v, ops.versions(v), v.detach().clone() if small else None)
    if isinstance(v, (list, tuple, dict, set, frozenset)):
        if depth >= _STATE_DEPTH or len(v) > _STATE_LEN:
            return ("container", type(v), len(v))
        if isinstance(v, dict):
            items = [(k, _state_value(x, depth + 1)) for k, x in v.items() if isinstance(k, (bool, int, float, str))]
            return ("dict", type(v), len(v), tuple(i for i in items if i[1] is not _SKIP))
        if isinstance(v, (set, frozenset)):
            return ("set", type(v), frozenset(x for x in v if isinstance(x, (bool, int, float, str))), len(v))
        items = [_state_value(x, depth + 1) for x in v]
        return ("seq", type(v), tuple(i if i is not _SKIP else ("skipped",) for i in items))
    return _other_state(v, depth)


def _other_state(v, depth: int):
    """``_state_value`` of the other holders a counter can live in: a deque (item by item), a
    bytearray or array.array (by bytes), a NumPy array or scalar (by value; arrays over
    ``_STATE_NUMEL`` elements by shape and identity), an itertools iterator (by its repr, which
    shows ``count``'s and ``repeat``'s state); anything else is ``_SKIP``."""
    import array
    import collections

    if isinstance(v, collections.deque):
        if depth >= _STATE_DEPTH or len(v) > _STATE_LEN:
            return ("container", type(v), len(v))
        return ("seq", type(v), tuple(i if i is not _SKIP else ("skipped",) for i in
                                      (_state_value(x, depth + 1) for x in v)))
    if isinstance(v, (bytearray, array.array)):
        if len(v) > _STATE_NUMEL:
            return ("container", type(v), len(v))
        return ("bytes", type(v), getattr(v, "typecode", None), bytes(v))
    mod = type(v).__module__
    if mod == "numpy":
        if type(v).__name__ == "ndarray":
            if v.size > _STATE_NUMEL:
                return ("ndarray", tuple(v.shape), str(v.dtype), id(v))
            return ("ndarray", tuple(v.shape), str(v.dtype), v.tobytes())
        if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # int64, bool_, ...: by value
            return ("npscalar", str(v.dtype), v.tobytes())
        return _SKIP
    if mod == "itertools":
        return ("repr", type(v), repr(v))
    return _SKIP


def _registry_state(m: nn.Module) -> tuple:
    """The keys of a module's own registries (hooks of every kind, parameters, buffers,
    submodules): a forward that registers a hook or a buffer on each call (a counter kept in
    the registry) changes them. Their values are not compared: parameters and buffers are graph
    inputs, and hooks run in the trace."""
    return tuple((k, tuple(v.keys())) for k, v in sorted(vars(m).items())
                 if k in _MODULE_INTERNALS and isinstance(v, dict))


def _refuse_state_changes(model: nn.Module, before: Dict[str, object]) -> None:
    changed = _state_changes(before, _python_state(model))
    if changed:
        raise UnsupportedLayer(type(model).__name__, f"forward changes the module's Python state "
                               f"({', '.join(changed[:3])}): a proof of these calls says nothing of the next")


def _python_state(model: nn.Module) -> Dict[str, object]:
    """What the model's modules hold besides parameters and buffers: plain Python scalars
    (numbers, strings, flags), tensors held as plain attributes, and containers of them; and
    what their code reaches outside them (``_code_state``: globals, closure cells, helper
    objects), and the keys of the modules' hook, parameter, buffer and submodule registries. A
    forward that counts its calls (in an attribute, a dict, a list, a deque, a tensor, a NumPy
    array, a global, a closure or a hook registry) or flips a flag is another function on every
    call."""
    from torch.nn.modules import module as _mm

    out: Dict[str, object] = _code_state(model)
    out["global hook registries"] = tuple((k, tuple(getattr(_mm, k).keys())) for k in sorted(vars(_mm))
                                          if k.startswith("_global_") and isinstance(getattr(_mm, k), dict))
    for name, m in model.named_modules(remove_duplicate=False):
        out[f"{name or type(m).__name__} (registries)"] = _registry_state(m)
        for k, v in vars(m).items():
            if k in _MODULE_INTERNALS and not (v is None or isinstance(v, (bool, int, float, str))):
                continue
            s = _state_value(v)
            if s is not _SKIP:
                out[f"{name or type(m).__name__}.{k}"] = s
    return out


#: functions and objects followed from a forward's code, at most (a bound on the scan's cost)
_CODE_REACH = 200


#: top-level packages whose code is never the user's
_LIBRARY_ROOTS = ("builtins", "torch", "numpy", "typing", "functools", "abc", "collections", "contextlib",
                  "pytest_latentaudit")


def _user_code(obj) -> bool:
    """Whether ``obj`` (a function, a class) is the user's code, not torch's, NumPy's or Python's."""
    mod = getattr(obj, "__module__", None) or ""
    return not (mod == "builtins" or mod.split(".")[0] in _LIBRARY_ROOTS)


def _installed(module_name: str) -> bool:
    """Whether a module is the standard library's or an installed package's (by its file)."""
    import sys

    if module_name.split(".")[0] in sys.stdlib_module_names:
        return True
    f = getattr(sys.modules.get(module_name), "__file__", None) or ""
    return "site-packages" in f or "dist-packages" in f


def _own_module(mod) -> bool:
    """A Python module of the user's own code (a helpers file beside the tests, a module made
    at run time), whose functions and values a forward reads as ``helpers.fn`` or
    ``helpers.SCALE``; not torch's and the like, the standard library's or an installed package's."""
    name = getattr(mod, "__name__", None) or ""
    return isinstance(name, str) and name.split(".")[0] not in _LIBRARY_ROOTS and not _installed(name)


def _plain_object(v) -> bool:
    """An instance of a user's class that is not a module, function, class or Python module."""
    import types

    return hasattr(v, "__dict__") and not isinstance(v, (nn.Module, type, types.ModuleType, types.FunctionType,
                                                         types.MethodType, torch.Tensor)) \
        and _user_code(type(v))


def _own_class(cls) -> bool:
    """A class of the user's own code: not torch's and the like (``_user_code``), not the standard
    library's or an installed package's, except the plain namespaces that hold settings."""
    mod = (getattr(cls, "__module__", None) or "").split(".")[0]
    if cls.__name__ in ("SimpleNamespace", "Namespace") and mod in ("types", "argparse"):
        return True
    return _user_code(cls) and not _installed(getattr(cls, "__module__", None) or "")


def _code_state(model: nn.Module, functions: Optional[list] = None, raw: bool = False) -> Dict[str, object]:
    """State a forward can keep outside its modules' own attributes: the globals its code names
    (a module-level counter, a dict of flags), the cells its closures hold, and the attributes
    of plain helper objects (instances of the user's classes) that modules, globals or cells
    hold. Followed from the user's methods of every module's class (not torch's), the
    functions and bound methods modules hold, and every forward hook and pre-hook (the
    modules' and the global ones), through the user's functions they name, up to
    ``_CODE_REACH`` functions and objects; snapshots as ``_state_value``'s. ``functions``: a
    list that is given every user function reached (``program_digest`` hashes their code).
    ``raw`` (``program_digest``'s walk): the values themselves instead of snapshots; objects of
    the standard library's and installed packages' classes other than namespaces are not
    entered (a ``logging.Logger``'s caches change as the process logs), and a helper object's
    class methods are followed too. Sets ``out["reach capped"]`` when the walk stopped short."""
    import functools
    import types

    from torch.nn.modules import module as _mm

    out: Dict[str, object] = {}
    seen: set = set()
    todo: list = []
    plain = _plain_object if not raw else (lambda v: _plain_object(v) and _own_class(type(v)))

    def add(v, where):
        if id(v) in seen or len(seen) >= _CODE_REACH:
            if len(seen) >= _CODE_REACH:
                out["reach capped"] = True
            return
        if isinstance(v, functools.partial):
            seen.add(id(v))
            add(v.func, where)
            for a in (*v.args, *v.keywords.values()):
                visit_value(a, f"{where}.partial")
            return
        if isinstance(v, types.MethodType):
            add(v.__func__, where)
            if plain(v.__self__):
                add(v.__self__, where)
            return
        if isinstance(v, (staticmethod, classmethod)):
            add(v.__func__, where)
            return
        if isinstance(v, property):
            for f in (v.fget, v.fset):
                if f is not None:
                    add(f, where)
            return
        if isinstance(v, types.FunctionType) and _user_code(v):
            seen.add(id(v))
            todo.append(v)
        elif plain(v):
            seen.add(id(v))
            for k, x in list(vars(v).items()):
                visit_value(x, f"{where}.{k}")
            if raw:  # its class's code, as a module's
                for cls in type(v).__mro__:
                    if _user_code(cls):
                        for k, f in vars(cls).items():
                            if isinstance(f, (types.FunctionType, staticmethod, classmethod, property)):
                                add(f, f"{where} {cls.__name__}.{k}")

    def visit_class(cls, where):
        # a class the code names (``State.n += 1``, ``Helper.apply(x)``, ``Act()(x)``): its
        # methods are code the forward runs, its class attributes state it reads or keeps
        if id(cls) in seen or not _own_class(cls):
            return
        seen.add(id(cls))
        for c in cls.__mro__:
            if not _own_class(c):
                continue
            for k, v in vars(c).items():
                if isinstance(v, (types.FunctionType, staticmethod, classmethod, property)):
                    add(v, f"{where} {c.__name__}.{k}")
                elif not (k.startswith("__") and k.endswith("__")):
                    visit_value(v, f"{where} class {c.__name__}.{k}")

    def visit_module(mod, wanted, where, depth=0):
        # ``helpers.fn(x)``, ``helpers.SCALE``, ``pkg.sub.fn``: the attributes of the user's
        # own module that the code names (co_names holds attribute names as well as globals)
        if depth > 3 or not _own_module(mod):
            return
        for a in sorted(wanted):
            if a in vars(mod) and (id(mod), a) not in seen:
                seen.add((id(mod), a))
                x = vars(mod)[a]
                if isinstance(x, types.ModuleType):
                    visit_module(x, wanted, f"{where}.{a}", depth + 1)
                else:
                    visit_value(x, f"{where}.{a}")

    def visit_value(x, where):
        if isinstance(x, (types.FunctionType, types.MethodType, functools.partial)) or plain(x):
            add(x, where)
            return
        if isinstance(x, type):
            visit_class(x, where)
        st = _state_value(x)
        if raw and st is not _SKIP:
            st = x
        if st is not _SKIP:
            key, j = where, 1
            while key in out:  # two closures of one function: each its own entry
                j += 1
                key = f"{where} #{j}"
            out[key] = st

    def names(code):
        yield from code.co_names
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                yield from names(c)

    for name, m in model.named_modules(remove_duplicate=False):
        label = name or type(m).__name__
        for cls in type(m).__mro__:
            if not _user_code(cls):
                continue
            for k, v in vars(cls).items():
                if isinstance(v, (types.FunctionType, staticmethod, classmethod, property)):
                    add(v, f"{cls.__name__}.{k}")
                elif not (k.startswith("__") and k.endswith("__")):  # class attributes (a shared counter)
                    visit_value(v, f"class {cls.__name__}.{k}")
        for k, v in vars(m).items():
            if k not in _MODULE_INTERNALS:
                if isinstance(v, (types.FunctionType, types.MethodType, functools.partial)) or plain(v):
                    add(v, f"{label}.{k}")
        for d in (m._forward_hooks, m._forward_pre_hooks):
            for h in list(d.values()):
                add(h, f"{label} hook")
    for d in (getattr(_mm, "_global_forward_hooks", {}), getattr(_mm, "_global_forward_pre_hooks", {})):
        for h in list(d.values()):
            add(h, "global hook")
    while todo:
        f = todo.pop()
        if functions is not None:
            functions.append(f)
        where = getattr(f, "__qualname__", "function")
        g = f.__globals__
        wanted = set(names(f.__code__))
        for n in sorted(wanted):  # sorted: the same walk in every process
            if n in g:
                if isinstance(g[n], types.ModuleType):
                    visit_module(g[n], wanted, f"global {n} (of {where})")
                else:
                    visit_value(g[n], f"global {n} (of {where})")
        for cn, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            visit_value(v, f"closure cell {cn} (of {where})")
        for v in (f.__defaults__ or ()) + tuple((f.__kwdefaults__ or {}).values()):
            visit_value(v, f"default argument (of {where})")
    return out


def program_digest(model: nn.Module) -> str:
    """sha256 of what a model computes besides its weights: per module its name, class and
    ``extra_repr`` (a LeakyReLU's slope), its plain scalar attributes (a ``scale`` read in
    forward) and its hooks; the code of every user function ``_code_state`` reaches (the
    forwards, hooks and helpers: their bytecode and constants), and the plain values that
    code reads from globals, closures and helper objects. With the weights' bytes it is a
    model's fingerprint: a record proved for a forward that has since changed (an activation
    swapped, a constant edited, a hook added) must not count for the model as it is now.
    Deterministic across processes (no ids, version counters or set orders)."""
    import hashlib

    from torch.nn.modules import module as _mm

    functions: list = []
    state = _code_state(model, functions, raw=True)
    h = hashlib.sha256()

    def put(*parts):
        for x in parts:
            h.update(_canon(x).encode())
            h.update(b"\x00")

    for name, m in model.named_modules(remove_duplicate=False):
        try:
            extra = re.sub(r"0x[0-9a-fA-F]+", "0x", m.extra_repr())  # an object's repr shows its address
        except Exception:  # noqa: BLE001 - a user's extra_repr that fails: the class stands for it
            extra = "?"
        attrs = {k: v for k, v in vars(m).items() if k not in _MODULE_INTERNALS or
                 (k != "training" and (v is None or isinstance(v, (bool, int, float, str))))}
        put("module", name, _qualname(type(m)), extra, attrs)
        for reg in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs",
                    "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks"):
            d = getattr(m, reg, None)
            if isinstance(d, dict):
                put(reg, tuple(_hook_name(v) for v in d.values()), len(d))
    for reg in sorted(k for k in vars(_mm) if k.startswith("_global_") and isinstance(getattr(_mm, k), dict)):
        put(reg, tuple(_hook_name(v) for v in getattr(_mm, reg).values()))
    for key in sorted((getattr(f, "__module__", "") or "", f.__qualname__, _code_digest(f.__code__)) for f in functions):
        put("function", *key)
    for k in sorted(state):
        put("state", k, state[k])
    return h.hexdigest()


def _qualname(t) -> str:
    return f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', type(t).__name__)}"


def _hook_name(v) -> str:
    """A hook registry's value (a hook, or True for a flag keyed by a handle id) by what it is."""
    if isinstance(v, bool):
        return repr(v)
    try:
        f = getattr(v, "__func__", v)
        return _qualname(f) if isinstance(getattr(f, "__qualname__", None), str) else _qualname(type(v))
    except Exception:  # noqa: BLE001 - an object whose attribute lookup raises: its class names it
        return _qualname(type(v))


def _code_digest(code) -> str:
    """A code object by its bytecode, names and constants (nested code objects included), not
    by its file or line: the same function moved in its file keeps its digest."""
    import types

    consts = tuple(_code_digest(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return _canon((code.co_code, code.co_names, code.co_argcount, code.co_kwonlyargcount, consts))


def _canon(v, depth: int = 0) -> str:
    """A deterministic text of a value: scalars by repr, containers item by item (dicts and sets
    sorted), tensors and arrays by dtype, shape and bytes, other objects by their type (an
    itertools iterator or an object array too: their reprs and bytes hold addresses); never an
    id or a version counter. A tensor whose bytes cannot be read (quantized, sparse, meta) is
    its dtype and shape."""
    import array
    import collections
    import hashlib

    import numpy as np

    if depth > 8:
        return "..."
    if v is None or isinstance(v, (bool, int, float, str, bytes, bytearray)):
        return repr(v)
    if torch.is_tensor(v):
        try:
            t = v.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
            digest = hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()[:16]
        except Exception:  # noqa: BLE001 - layouts and dtypes without plain bytes
            digest = "?"
        return f"tensor({v.dtype},{tuple(v.shape)},{digest})"
    if isinstance(v, np.ndarray):
        if v.dtype.hasobject:
            return f"array(object,{v.shape})"
        return f"array({v.dtype},{v.shape},{hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]})"
    if isinstance(v, np.generic):
        return f"{v.dtype}:{v.tobytes().hex()}" if not v.dtype.hasobject else "npobject"
    if isinstance(v, array.array):
        return f"array.array({v.typecode},{v.tobytes().hex()})"
    if isinstance(v, (list, tuple, collections.deque)):
        return type(v).__name__ + "(" + ",".join(_canon(x, depth + 1) for x in v) + ")"
    if isinstance(v, (set, frozenset)):
        return "{" + ",".join(sorted(_canon(x, depth + 1) for x in v)) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(sorted(f"{_canon(k, depth + 1)}:{_canon(x, depth + 1)}" for k, x in v.items())) + "}"
    if isinstance(v, type):
        return _qualname(v)
    return _qualname(type(v))


def _same_state(a, b) -> bool:
    """Whether two ``_state_value`` snapshots are equal (NaN equals NaN, tensors by value
    where both were copied, else by identity and version counter)."""
    if isinstance(a, tuple) and isinstance(b, tuple) and a and b and a[0] == "tensor" == b[0]:
        ta, tb = a[3], b[3]
        if ta is not None and tb is not None:
            return ta.shape == tb.shape and ta.dtype == tb.dtype and ta.device == tb.device and \
                bool(torch.equal(ta, tb) or (ta.is_floating_point() and
                                             bool(((ta == tb) | (ta.isnan() & tb.isnan())).all())))
        return a[1] is b[1] and a[2] == b[2] and a[2] is not None
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - odd values: treat as different
        return False


def _state_changes(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    """The attributes of ``after`` that are new or hold another value (NaN equals NaN here)."""
    return [k for k, v in after.items() if k not in before or not _same_state(before[k], v)]


def _rng_states() -> Dict[str, object]:
    """The global random number generators a forward can draw from outside ATen's random
    ops (which the trace refuses): Python's ``random``, NumPy's legacy global one, and
    torch's own (a draw turned into a Python value, ``torch.rand(1).tolist()``, is baked
    into the trace)."""
    import random
    import sys

    out: Dict[str, object] = {"random": random.getstate(), "torch": torch.get_rng_state()}
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            out["numpy.random"] = np.random.get_state()
        except Exception:  # noqa: BLE001 - a numpy without the legacy global generator
            pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch.cuda"] = torch.cuda.get_rng_state_all()
    return out


def _rng_drawn(before: Dict[str, object]) -> List[str]:
    """The generators of ``before`` (``_rng_states``) that have moved since; each is put
    back where it was, so the verifier's calls do not shift the user's random streams."""
    import random
    import sys

    now = _rng_states()
    moved = []

    def same(a, b):
        if torch.is_tensor(a) or torch.is_tensor(b):
            return torch.is_tensor(a) and torch.is_tensor(b) and bool(torch.equal(a, b))
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if type(a).__module__ == "numpy" or type(b).__module__ == "numpy":
            import numpy

            return bool(numpy.array_equal(a, b))
        return a == b

    for key, v in before.items():
        if key in now and not same(v, now[key]):
            moved.append(key)
            if key == "random":
                random.setstate(v)
            elif key == "torch":
                torch.set_rng_state(v)
            elif key == "numpy.random":
                sys.modules["numpy"].random.set_state(v)
            elif key == "torch.cuda":
                torch.cuda.set_rng_state_all(v)
    return moved


def _one_fake_mode():
    """One fake-tensor mode for a trace's metadata: without one, make_fx builds a new mode
    (and records a Python stack) for every node, half of a small model's trace time."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode

        return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except Exception:  # noqa: BLE001 - a torch without these internals: the slower default
        return contextlib.nullcontext()


@contextlib.contextmanager
def _not_fx_tracing():
    """torch.fx's tracing flag off for the model's own code under the tracer, restored after."""
    st = getattr(torch.fx, "_symbolic_trace", None)
    if st is None or not hasattr(st, "_is_fx_tracing_flag"):
        yield
        return
    old = st._is_fx_tracing_flag
    st._is_fx_tracing_flag = False
    try:
        yield
    finally:
        st._is_fx_tracing_flag = old


def _op_key(name: str) -> str:
    """One spelling for an ATen op's name and its autograd node's: ``_native_batch_norm_legit_
    no_training`` and ``NativeBatchNormBackward0`` are both ``batchnorm``; ``relu_`` is ``relu``."""
    key = re.sub(r"Backwards?\d*$", "", name).replace("_", "").lower()
    if key == "reshapealias":  # autograd's name for some views traced as view (matmul's reshape)
        return "view"
    key = _OP_ALIASES.get(key, key)
    return "batchnorm" if "batchnorm" in key else key


#: ATen ops traced under another name than their autograd node's (key as ``_op_key`` makes it):
#: ``F.logsigmoid`` traces as ``log_sigmoid_forward``, autograd records ``LogSigmoidBackward0``
_OP_ALIASES = {"logsigmoidforward": "logsigmoid"}


#: ATen ops whose results autograd never records as depending on the input
_NOT_RECORDED = {"detach", "liftfreshcopy",
                 # constants shaped like their input (``torch.zeros_like(h)``, ``h.new_ones(n)``)
                 "zeroslike", "oneslike", "fulllike", "emptylike", "newzeros", "newones", "newfull", "newempty"}
#: views that only alias their input (autograd may record them as AsStrided instead)
_ALIASING = {"view", "unsafeview", "asstrided", "alias", "reshape", "expand", "squeeze", "unsqueeze", "t",
             "transpose", "permute", "slice", "select", "split", "splitwithsizes", "unbind", "narrow"}


def _plain_call_differs(model: nn.Module, x: torch.Tensor, graph: torch.fx.Graph, x_ph) -> Optional[str]:
    """Why the trace is not the program a plain call runs, or None. The call ``model(x)``
    with autograd on, outside any tracer, records every differentiable op that its output
    took from the input (autograd's graph); the traced ops on that path must be the same
    ones. A forward that notices the tracer (a dispatch or torch-function mode, a flag) and
    takes another path there is caught here, wherever in the box the paths differ, where the
    check points see only where they look. Ops are compared by name, not by their constants:
    one that changes only a constant when traced is left to the check points (docs/engines.md)."""
    ops_trace: Counter = Counter()
    grad_dep: Dict[torch.fx.Node, bool] = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            grad_dep[n] = n is x_ph
            continue
        val = n.meta.get("val")
        val = val[0] if isinstance(val, (tuple, list)) and val else val
        floating = isinstance(val, torch.Tensor) and val.is_floating_point()
        name = _op_key(n.target._overloadpacket.__name__) if hasattr(n.target, "_overloadpacket") else None
        grad_dep[n] = floating and name not in _NOT_RECORDED and n.op == "call_function" and \
            any(grad_dep.get(a, False) for a in n.all_input_nodes)
        if grad_dep[n] and name is not None:
            ops_trace[name] += 1
    try:
        # autograd records nothing in inference mode: leave it for this one call
        with torch.inference_mode(False), torch.enable_grad():
            # a non-leaf copy, so a forward that writes into its input in place still runs
            xg = x.detach().clone().requires_grad_(True)
            xin = xg * 1
            base = xin.grad_fn
            y = model(xin)
    except Exception as exc:  # noqa: BLE001 - the traces ran; a plain call that fails is refused
        return f"a plain call on the trace's example failed ({type(exc).__name__})"
    if isinstance(y, (tuple, list)) and y:
        y = y[0]
    if not torch.is_tensor(y):
        return None  # the lowering refuses outputs that are not tensors
    ops_plain: Counter = Counter()
    if y.grad_fn is not None:
        reach: Dict[int, bool] = {}
        stack = [(y.grad_fn, False)]
        while stack:  # iterative post-order: deep models overflow a recursion
            fn_, done = stack.pop()
            k = id(fn_)
            if done:
                r = fn_ is base or any(nxt is not None and reach.get(id(nxt), False) for nxt, _ in fn_.next_functions)
                reach[k] = r
                if r and fn_ is not base:
                    ops_plain[_op_key(type(fn_).__name__)] += 1
                continue
            if k in reach:
                continue
            reach[k] = False
            stack.append((fn_, True))
            if fn_ is not base:
                stack.extend((nxt, False) for nxt, _ in fn_.next_functions if nxt is not None and id(nxt) not in reach)
    if ops_plain == ops_trace:
        return None
    wild = ops_plain.pop("copyslices", 0)
    if wild:
        # an in-place op on a view is recorded as CopySlices (the op's name hidden) and the
        # view as AsStrided: compare without the aliasing views, each CopySlices one op
        for c in (ops_plain, ops_trace):
            for key in _ALIASING:
                c.pop(key, None)
        if not (ops_plain - ops_trace) and sum((ops_trace - ops_plain).values()) == wild:
            return None
    more = ", ".join(f"{k} x{v}" for k, v in sorted((ops_plain - ops_trace).items()))
    less = ", ".join(f"{k} x{v}" for k, v in sorted((ops_trace - ops_plain).items()))
    return (f"runs other ops in a plain call than when traced (a forward that notices the tracer, or "
            f"ops under no_grad/detach in forward): plain call only [{more}], trace only [{less}]")


def _live_nodes(gm: torch.fx.GraphModule) -> list:
    """The nodes that can affect the result (ancestors of the output and of impure nodes), in order."""
    nodes = list(gm.graph.nodes)
    live = _ancestors([n for n in nodes if n.op == "output" or n.is_impure()])
    return [n for n in nodes if n in live]


def _program(gm: torch.fx.GraphModule) -> list:
    """The nodes that can affect the result (ancestors of the output and of impure nodes),
    in order, with arguments as positions: autograd adds dead ``detach`` nodes (the saved
    outputs of relu, sigmoid, ...) to a trace with grad on, and they change nothing."""
    keep = _live_nodes(gm)
    pos = {n: i for i, n in enumerate(keep)}
    return [(n.op, str(n.target), repr(torch.fx.node.map_arg((n.args, n.kwargs), lambda m: ("node", pos[m]))))
            for n in keep]


_aten = torch.ops.aten
#: ops that return their first argument's values when the shape is unchanged
_SAME_SHAPE = {_aten.view.default, _aten._unsafe_view.default, _aten.reshape.default, _aten.expand.default}
_RESHAPES = {_aten.view.default, _aten._unsafe_view.default, _aten.reshape.default}


def _value_clone(n: torch.fx.Node) -> bool:
    """A ``clone`` of one tensor into a contiguous (or the same) layout: its values are its input's."""
    return n.op == "call_function" and n.target is _aten.clone.default and len(n.args) == 1 and \
        set(n.kwargs) <= {"memory_format"} and \
        n.kwargs.get("memory_format", torch.contiguous_format) in (torch.contiguous_format, torch.preserve_format)


def _canonical(gm: torch.fx.GraphModule, table: dict) -> Optional[tuple]:
    """The program of ``gm`` up to rewrites that keep every value: a view, reshape or expand to
    the same shape and a ``clone`` are their input; ``view``, ``_unsafe_view`` and ``reshape``
    are one op; and ``x @ W`` for a 2-d constant-or-data ``W`` at every position of ``x`` is one
    op whether torch computed it as ``bmm(x, W expanded over x's leading dim)`` or as ``view(mm(
    view(x, [-1, in]), W), [*x.shape[:-1], out])`` (``torch.matmul`` picks by the weight's
    ``requires_grad``). Nodes are interned in ``table`` (shared by the two programs compared),
    so two programs have the same result ids exactly when their rewritten expressions are the
    same. None where a node mutates (aliasing makes the rewrites unsafe): compare exactly."""
    ids: Dict[torch.fx.Node, int] = {}
    info: Dict[int, tuple] = {}

    def intern(key, shape, kind=None, args=()):
        i = table.setdefault(key, len(table))
        info.setdefault(i, (kind, args, shape))
        return i

    def shape_of(n):
        v = n.meta.get("val")
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    placeholders = 0
    roots = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            ids[n] = intern(("placeholder", placeholders), shape_of(n))
            placeholders += 1
            continue
        if n.op == "get_attr":
            ids[n] = intern(("get_attr", n.target), shape_of(n))
            continue
        if n.op == "output":
            roots.append(("output", repr(torch.fx.node.map_arg(n.args, lambda m: ids[m]))))
            continue
        if n.op != "call_function":
            return None
        schema = getattr(n.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return None
        shape = shape_of(n)
        a0 = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        s0 = shape_of(a0) if a0 is not None else None
        if a0 is not None and shape is not None and shape == s0 and (
                (n.target in _SAME_SHAPE and not n.kwargs and len(n.args) == 2) or _value_clone(n)):
            ids[n] = ids[a0]
            continue
        target = "reshape" if n.target in _RESHAPES else str(n.target)
        dense = None
        if n.target is _aten.bmm.default and len(n.args) == 2 and not n.kwargs:
            x_id, m_id = ids[n.args[0]], ids[n.args[1]]
            kind, margs, mshape = info[m_id]
            xs = info[x_id][2]
            if kind == str(_aten.expand.default) and xs is not None and len(xs) == 3 and mshape is not None:
                w_shape = info[margs[0]][2]
                if w_shape is not None and len(w_shape) == 2 and mshape == (xs[0], *w_shape) and w_shape[0] == xs[2]:
                    dense = (x_id, margs[0])
        elif target == "reshape" and a0 is not None and shape is not None:
            kind, margs, _ = info[ids[a0]]
            if kind == str(_aten.mm.default):
                v_kind, v_args, v_shape = info[margs[0]]
                if v_kind == "reshape":
                    xs, w_shape = info[v_args[0]][2], info[margs[1]][2]
                    if xs is not None and w_shape is not None and len(xs) >= 3 and len(w_shape) == 2 and \
                            v_shape == (math.prod(xs[:-1]), xs[-1]) and w_shape[0] == xs[-1] and \
                            shape == (*xs[:-1], w_shape[1]):
                        dense = (v_args[0], margs[1])
        if dense is not None:
            ids[n] = intern(("matmul_last", *dense), shape, "matmul_last", dense)
            continue
        arg_ids = tuple(ids[m] for m in n.all_input_nodes)
        key = (target, repr(torch.fx.node.map_arg((n.args, n.kwargs), lambda m: ("node", ids[m]))))
        ids[n] = intern(key, shape, target, tuple(ids[m] for m in n.args if isinstance(m, torch.fx.Node))
                        if n.args else arg_ids)
        if n.is_impure():
            roots.append(("impure", ids[n]))
    return tuple(roots)


_SIZES: Dict[str, frozenset] = {}


def _sizes_of(schema) -> frozenset:
    """The arguments of an ATen schema typed ``SymInt`` (sizes, slice bounds: what may scale
    with the batch); Python's view of a schema prints them as ``int``, its text does not."""
    key = str(schema)
    out = _SIZES.get(key)
    if out is None:
        head = key.split(") ->")[0].split("(", 1)[-1]
        out = frozenset(name for typ, name in re.findall(r"([\w\[\]?()!|]+) (\w+)(?:=[^,]*)?(?:,|$)", head)
                        if "SymInt" in typ)
        _SIZES[key] = out
    return out


_DETACH = {_aten.detach.default, _aten.detach_.default}


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """The torch functions a call runs (top level: what runs inside one is not seen), each
    with its arguments: tensors made by an earlier call as that call's output, other tensors
    (the input, parameters, attributes) by identity, everything else by value."""

    def __init__(self, known=()):
        super().__init__()
        # the input, parameters and buffers: by their place in ``known`` (each call may get its
        # own copy of the input)
        self.known = {id(t): i for i, t in enumerate(known)}
        self.calls: list = []
        self.made: Dict[int, tuple] = {}
        self.keep: list = []  # the tensors made, alive: their ids are not reused during the call

    def enc(self, v, depth=0):
        if torch.is_tensor(v):
            if id(v) in self.made:
                return ("made", self.made[id(v)])
            if id(v) in self.known:
                return ("known", self.known[id(v)], tuple(v.shape), v.dtype)
            if v.numel() > 4096:
                return ("tensor", id(v), tuple(v.shape), v.dtype)
            # a tensor made outside torch's functions (torch.from_numpy, an attribute): by value
            return ("value", tuple(v.shape), v.dtype, tuple(v.detach().reshape(-1).tolist()))
        if isinstance(v, (list, tuple)) and depth < 4:
            return (type(v).__name__, tuple(self.enc(x, depth + 1) for x in v))
        if isinstance(v, dict) and depth < 4:
            return ("dict", tuple((repr(k), self.enc(x, depth + 1)) for k, x in v.items()))
        if v is None or isinstance(v, (bool, int, float, str, complex)):
            return (type(v).__name__, repr(v))
        return ("object", repr(v))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        idx = len(self.calls)
        self.calls.append((getattr(func, "__qualname__", None) or repr(func), self.enc((args, kwargs))))
        outs = out if isinstance(out, (list, tuple)) else (out,)
        for j, t in enumerate(outs):
            if torch.is_tensor(t):
                self.made[id(t)] = (idx, j)
                self.keep.append(t)
        return out


def _inference_mode_differs(model: nn.Module, x: torch.Tensor) -> Optional[str]:
    """Why ``model(x)`` under ``torch.inference_mode()`` (how a deployment often calls it) is not
    the call made under ``torch.no_grad()``, or None: the torch functions the two calls run,
    with their arguments (``_CallRecorder``), must be the same. Traces cannot compare the two
    modes op for op (inference mode dispatches some ops to their decompositions: nearest
    upsampling as ``arange`` and indexing), the functions a forward calls can; a forward that
    branches on ``torch.is_inference_mode_enabled()`` changes a call or an argument."""
    recs = []
    known = [x, *model.parameters(), *model.buffers()]
    for mode in (torch.no_grad, torch.inference_mode):
        xi = x.clone()  # each call on the same input: a forward may write into it in place
        rec = _CallRecorder([xi, *known[1:]])
        try:
            with mode(), rec:
                model(xi)
        except Exception as exc:  # noqa: BLE001 - the traces ran; a call that fails in one mode is refused
            return f"a call under torch.{mode.__name__}() failed ({type(exc).__name__})"
        recs.append(rec.calls)
    a, b = recs
    if a == b:
        return None
    i = next((j for j, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
    what = lambda c, j: c[j][0] if j < len(c) else "nothing"  # noqa: E731
    return (f"computes another function under torch.inference_mode() than under torch.no_grad() (call {i}: "
            f"{what(b, i)} against {what(a, i)}): a forward that branches on the inference mode")


def _batch_normal(gm: torch.fx.GraphModule):
    """The live nodes of ``gm`` without its clones (``{clone: its input}`` besides), where no
    node mutates: how torch spells a reshape depends on the strides, which differ at batch 1
    (``clone, _unsafe_view`` at batch 2 is one ``view`` there), and a clone keeps the values."""
    live = _live_nodes(gm)
    keep, rep = [], {}
    for n in live:  # detach keeps the values (inference mode adds a detach_ to each tensor constant)
        if n.op == "call_function" and n.target in _DETACH and len(n.args) == 1 and not n.kwargs and \
                isinstance(n.args[0], torch.fx.Node):
            rep[n] = rep.get(n.args[0], n.args[0])
        else:
            keep.append(n)
    if any(n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False) for n in keep):
        return keep, rep
    live, keep = keep, []
    for n in live:
        if _value_clone(n) and isinstance(n.args[0], torch.fx.Node):
            rep[n] = rep.get(n.args[0], n.args[0])
            continue
        keep.append(n)
    return keep, rep


#: ops whose size list leads with the batch where it scales (``x.view(B, -1)``, ``w.expand(B, d)``)
_BATCH_SIZED = {getattr(getattr(_aten, o), v) for o, v in (
    ("view", "default"), ("_unsafe_view", "default"), ("reshape", "default"), ("expand", "default"),
    ("repeat", "default"), ("zeros", "default"), ("ones", "default"), ("empty", "memory_format"),
    ("full", "default"), ("new_zeros", "default"), ("new_ones", "default"), ("new_empty", "default"),
    ("new_full", "default"), ("empty_strided", "default")) if hasattr(getattr(_aten, o, None), v)}

_GROUP_NORM = getattr(getattr(_aten, "native_group_norm", None), "default", None)

_SQUEEZES = {getattr(_aten.squeeze, o) for o in ("default", "dim", "dims") if hasattr(_aten.squeeze, o)} | \
    {_aten.unsqueeze.default}
#: layout ops a chain of which may collapse into one reshape (``_collapse_reshapes``)
_LAYOUT = _RESHAPES | _SQUEEZES | {_aten.permute.default}
_LAYOUT_NUMEL = 1 << 22


def _collapse_reshapes(live: list, rep: dict, data: dict, batch: int):
    """``live`` (from ``_batch_normal``) with chains of layout ops (views, reshapes, (un)squeezes,
    permutes) collapsed into their effect, however the ops spelled it: einsum permutes the batch
    dim among size-1 dims at batch 1, and its weight's dims otherwise than at batch 2. Each link's
    effect is computed exactly, on an index tensor of the chain's root (``arange`` of its size),
    from the trace's own ops and arguments; the chain's end is then ``root.flatten()[index]``. An
    end is collapsed, ``{end: (root, kind, key)}``, when its index says what it computes whatever
    the batch size:
    * ``"order"``: the index is ``arange`` (a reshape of the root; einsum's ``[1, batch x rows, k]``
      operand), key None: the same program when the roots and the (batch-scaled) shapes pair up;
    * ``"const"``: the root is a constant: key the whole index (the same values exactly when equal);
    * ``"sample"``: the root carries the input, the end's leading dim is the batch and sample ``b``'s
      index is sample 0's shifted by ``b`` samples' elements (no element crosses samples): key sample
      0's index, the per-sample map.
    A layout node is dropped (``rep`` maps it to its root) when each of its users is a dropped
    layout node or a collapsed end; every other node stays as it was. Where a node mutates,
    nothing is collapsed."""
    if any(n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False) for n in live):
        return live, rep, {}
    rep = dict(rep)
    live_set = set(live)

    def layout(n):
        return n in live_set and n.op == "call_function" and n.target in _LAYOUT and bool(n.args) and \
            isinstance(n.args[0], torch.fx.Node) and not n.kwargs

    root: Dict[torch.fx.Node, torch.fx.Node] = {}
    idx: Dict[torch.fx.Node, Optional[torch.Tensor]] = {}
    for n in live:  # in order: a chain's earlier links first
        if not layout(n):
            continue
        src = rep.get(n.args[0], n.args[0])
        if src in root:
            root[n], base = root[src], idx[src]
        else:
            v = src.meta.get("val")
            root[n] = src
            base = torch.arange(v.numel()).reshape(v.shape) \
                if isinstance(v, torch.Tensor) and v.numel() <= _LAYOUT_NUMEL else None
        try:  # a view replayed as a reshape: the same values, whatever the index tensor's strides
            op = _aten.reshape.default if n.target in _RESHAPES else n.target
            idx[n] = None if base is None else op(base, *n.args[1:])
        except Exception:  # noqa: BLE001 - an op we cannot replay: its chain is not collapsed
            idx[n] = None

    def kind(n):
        t = idx.get(n)
        if t is None:
            return None
        if bool(torch.equal(t.reshape(-1), torch.arange(t.numel()))):
            return "order", None
        if not data.get(root[n], False):
            return "const", t
        if t.dim() >= 1 and t.shape[0] == batch and t.numel() % batch == 0:
            per = t.numel() // batch
            shift = torch.arange(batch).reshape(batch, *([1] * (t.dim() - 1))) * per
            if bool(torch.equal(t - shift, t[:1].expand_as(t))):
                return "sample", t[0]
        return None

    def users_of(n, depth=0):  # through the clones and detaches ``_batch_normal`` dropped
        out = []
        for u in n.users:
            if u in live_set:
                out.append(u)
            elif u in rep:
                out.extend(users_of(u, depth + 1) if depth < 8 else [u])
        return out

    users = {n: users_of(n) for n in live}
    ends = {}
    for n in root:
        if not all(layout(u) for u in users[n]):
            k = kind(n)
            if k is not None:
                ends[n] = (root[n], *k)
    dropped: set = set()
    for n in reversed(live):
        if n in root and users[n] and all(layout(u) and (u in dropped or u in ends) for u in users[n]):
            dropped.add(n)
            rep[n] = root[n]
    keep = [n for n in live if n not in dropped]
    return keep, rep, {n: e for n, e in ends.items() if n not in dropped}


def _kept(rep: dict, m):
    """The node a dropped clone or layout op ``m`` stands for (``rep``: dropped -> its source)."""
    while m in rep:
        m = rep[m]
    return m


def _rows_of_one_product(n, rep, ends) -> bool:
    """``n`` is einsum's ``[1, batch x rows, k]`` operand of a ``bmm`` (a reshape whose users are
    all that bmm's first argument) or that ``bmm`` itself (``_merged_batch_bmm``'s pattern)."""
    if n.op != "call_function":
        return False
    if n.target is _aten.bmm.default:
        src = n.args[0] if n.args else None
        return isinstance(src, torch.fx.Node) and _rows_of_one_product(rep.get(src, src), rep, ends)
    return ((n in ends and ends[n][1] == "order") or n.target in _RESHAPES) and bool(n.users) and all(
        u.op == "call_function" and u.target is _aten.bmm.default and u.args[0] is n and u.args[1] is not n
        for u in n.users)


def _same_up_to_batch(a: torch.fx.GraphModule, b: torch.fx.GraphModule, batch: int) -> Optional[str]:
    """Why trace ``b`` (of batch size ``batch``) is not trace ``a`` (of ``TRACE_BATCH``) with the
    batch scaled, or None. The live nodes must pair up in order with the same targets and
    inputs; the batch entry (the first) of a size list (view, reshape, expand, a factory) and a
    bound of a slice of dim 0 must be the same or scaled with the batch (``a = TRACE_BATCH q``,
    ``b = batch q``), as must every dimension of a node's shape, the leading dimension of a
    node that carries the input scaled and a constant shaped like the batch kept so (not
    reduced over it or moved off the leading dim); every other literal (a scalar of a product,
    a flag, a roll's shift, a slice bound of another dim) and every constant the same. So
    ``y * x.shape[0]``, ``x.reshape(2, -1)``, ``x[:, B]``, ``w[:B].sum(0)`` and any branch on
    the batch size that changes an op or a literal are caught, wherever in the box it acts."""
    def carries(gm):  # on the whole graph: a node behind a dropped clone carries the input too
        return _carries_input(gm.graph, [n for n in gm.graph.nodes if n.op == "placeholder"][-1])

    data, data_b = carries(a), carries(b)
    (la, ra), (lb, rb) = _batch_normal(a), _batch_normal(b)
    la, ra, reshape_a = _collapse_reshapes(la, ra, data, TRACE_BATCH)
    lb, rb, reshape_b = _collapse_reshapes(lb, rb, data_b, batch)
    if len(la) != len(lb):
        return f"{len(la)} live ops against {len(lb)}"
    pa, pb = {n: i for i, n in enumerate(la)}, {n: i for i, n in enumerate(lb)}
    for r, p in ((ra, pa), (rb, pb)):
        for n, src in r.items():
            # a dropped clone is its input, a dropped layout op (or a clone of one) its chain's root
            p[n] = p[_kept(r, src)]

    def scaled(u, v) -> bool:
        return u == v or (u * batch == v * TRACE_BATCH and u % TRACE_BATCH == 0)

    def shapes(n):
        v = n.meta.get("val")
        vs = v if isinstance(v, (tuple, list)) else [v]
        return [tuple(t.shape) if isinstance(t, torch.Tensor) else ("value", repr(t)) for t in vs]

    def same_arg(u, v, sized) -> bool:
        # sized: "lead" (a size list whose first entry, the batch, may scale), "rows" (einsum's
        # [1, batch x rows, k]: the second), "bound" (a slice bound on dim 0), "batch" (the batch
        # size itself: group norm's N) or False (the same)
        if isinstance(u, torch.fx.Node) or isinstance(v, torch.fx.Node):
            return isinstance(u, torch.fx.Node) and isinstance(v, torch.fx.Node) and pa.get(u) == pb.get(v) \
                and pa.get(u) is not None
        if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
            at = 1 if sized == "rows" else 0 if sized == "lead" else None
            return type(u) is type(v) and len(u) == len(v) and all(
                same_arg(p, q, "bound" if i == at else False) for i, (p, q) in enumerate(zip(u, v)))
        if sized == "bound" and type(u) is int and type(v) is int:
            return scaled(u, v)
        if sized == "batch" and type(u) is int and type(v) is int:
            return u == TRACE_BATCH and v == batch
        return type(u) is type(v) and _same(u, v)

    def sized_as(n, name, rows=False):
        # where a literal may scale with the batch: the batch entry (the first) of a size list
        # (view, reshape, expand, a factory), or a bound of a slice of dim 0. Anywhere else a
        # literal that is the batch size at one batch and another number at the other picks
        # other elements (``x[:, B]``, ``torch.roll(x, B, 1)``, ``w[:, :B] @ v[:B]``)
        if name not in _sizes_of(n.target._schema):
            return False
        if n.target in _BATCH_SIZED and name in ("size", "shape", "repeats"):
            return "rows" if rows and n.target in _RESHAPES else "lead"
        if n.target is _GROUP_NORM and name == "N":
            return "batch"  # group norm's N is the batch size itself, at either trace
        if n.target is _aten.slice.Tensor and name in ("start", "end"):
            d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            return "bound" if d == 0 else False
        return False

    def target(n, reshapes):
        return "reshape" if n.target in _RESHAPES or n in reshapes else n.target

    def rows_scaled(p, q) -> bool:
        # [1, batch x rows, k]: the batch moved into the rows of one matrix product
        return len(p) == len(q) == 3 and p[0] == q[0] == 1 and isinstance(p[1], int) and isinstance(q[1], int) \
            and p[1] % TRACE_BATCH == 0 and p[1] * batch == q[1] * TRACE_BATCH and p[2] == q[2]

    batch_led: Dict[torch.fx.Node, bool] = {}  # nodes of ``a`` whose leading dim is the batch

    for na, nb in zip(la, lb):
        if na.op != nb.op or target(na, reshape_a) != target(nb, reshape_b):
            return f"{na.target} against {nb.target}"
        sa, sb = shapes(na), shapes(nb)
        if len(sa) != len(sb) or any(len(p) != len(q) or not all(
                (isinstance(i, int) and isinstance(j, int) and scaled(i, j)) or i == j for i, j in zip(p, q))
                for p, q in zip(sa, sb)):
            return f"{na.target} gives shapes {sa} against {sb}"
        if data[na] and any(p and isinstance(p[0], int) and (p[0] * batch != q[0] * TRACE_BATCH or p[1:] != q[1:])
                            and not (_rows_of_one_product(na, ra, reshape_a)
                                     and _rows_of_one_product(nb, rb, reshape_b) and rows_scaled(p, q))
                            for p, q in zip(sa, sb)):
            # a node that carries the input: its leading dimension is the batch (or the batch
            # times positions, ``_merged_batch_dense``; or the rows of one einsum product,
            # ``_merged_batch_bmm``), every other one per sample
            return f"{na.target} does not keep the batch dimension apart ({sa} against {sb})"
        lead = batch_led[na] = any(p and q and isinstance(p[0], int) and p[0] != q[0] for p, q in zip(sa, sb))
        ins = [reshape_a[na][0]] if na in reshape_a else na.all_input_nodes
        if not data[na] and not lead and any(batch_led.get(_kept(ra, m), False) for m in ins):
            # a constant shaped like the batch (``torch.ones(B, 1)``, ``w[:B]``) is one row per
            # sample; reduced over the batch or moved off the leading dim it is a number that
            # depends on the batch size (``w[:B].sum(0)``)
            return f"{na.target} makes a constant of the batch size"
        if na in reshape_a or nb in reshape_b:
            # a collapsed chain of layout ops: its root's elements picked by an index that the
            # kind and key determine (``_collapse_reshapes``), the shapes checked above
            ea, eb = reshape_a.get(na), reshape_b.get(nb)
            if ea is None or eb is None or pa.get(ea[0]) is None or pa.get(ea[0]) != pb.get(eb[0]) \
                    or ea[1] != eb[1] or (ea[2] is not None and not (
                        eb[2] is not None and ea[2].shape == eb[2].shape and bool(torch.equal(ea[2], eb[2])))):
                return f"{na.target} moves the elements of another tensor, or others"
            continue
        if na.op == "get_attr":
            if not _same_constant(getattr(a, na.target, None), getattr(b, nb.target, None)):
                return f"constant {na.target} differs"
            continue
        if na.op != "call_function":
            if na.op == "output" and not same_arg(na.args, nb.args, False):
                return "another output"
            continue
        schema = getattr(na.target, "_schema", None)
        if schema is None:
            if not (same_arg(na.args, nb.args, False) and same_arg(na.kwargs, nb.kwargs, False)):
                return f"{na.target} with other arguments"
            continue
        if len(na.args) != len(nb.args) or set(na.kwargs) != set(nb.kwargs):
            return f"{na.target} with other arguments"
        # einsum's [1, batch x rows, k] operand of one bmm, not collapsed (a graph that mutates)
        rows = _rows_of_one_product(na, ra, reshape_a) and _rows_of_one_product(nb, rb, reshape_b)
        for i, (u, v) in enumerate(zip(na.args, nb.args)):
            arg = schema.arguments[i] if i < len(schema.arguments) else None
            if not same_arg(u, v, arg is not None and sized_as(na, arg.name, rows)):
                return f"{na.target} with argument {arg.name if arg is not None else i} {u!r} against {v!r}"
        for k in na.kwargs:
            if not same_arg(na.kwargs[k], nb.kwargs[k], sized_as(na, k, rows)):
                return f"{na.target} with {k}={na.kwargs[k]!r} against {nb.kwargs[k]!r}"
    return None


def _same_trace(a: torch.fx.GraphModule, b: torch.fx.GraphModule) -> bool:
    """Whether two traces of one model are the same program: the same live nodes and equal
    constants, or (``_canonical``) the same values computed by differently spelled ops."""
    if a.code != b.code and _program(a) != _program(b):
        table: dict = {}
        ca = _canonical(a, table)
        if ca is None or ca != _canonical(b, table):
            return False
    attrs = {n.target for g in (a, b) for n in g.graph.nodes if n.op == "get_attr"}
    return all(_same_constant(getattr(a, t, None), getattr(b, t, None)) for t in attrs)


def _same_constant(u, v) -> bool:
    """Whether two traces' constants (``get_attr`` values) are equal: tensors of one dtype and
    shape and equal values, anything else equal (or the same object)."""
    if torch.is_tensor(u) or torch.is_tensor(v):
        return torch.is_tensor(u) and torch.is_tensor(v) and u.dtype == v.dtype and u.shape == v.shape \
            and torch.equal(u, v)
    return u is v or u == v


#: Tensor methods that hand a tensor's values to Python without an ATen op, so make_fx's
#: real-mode trace neither records nor refuses them (``.item()`` and ``bool()`` are refused
#: by make_fx itself; these are not): ``if x.numpy().max() > 0.7`` would be baked in.
_ESCAPES = tuple(getattr(torch.Tensor, n) for n in (
    "numpy", "tolist", "__array__", "data_ptr", "untyped_storage", "storage", "_typed_storage", "__dlpack__",
    "item") if hasattr(torch.Tensor, n))


def _escape_node(t):
    """The fx node of tensor ``t`` in the trace under way; None where it cannot be told."""
    try:
        from torch.fx.experimental.proxy_tensor import get_proxy_slot

        mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY)
        if mode is None:
            return None
        slot = get_proxy_slot(t, mode.tracer, None)
        return None if slot is None else slot.proxy.node
    except Exception:  # noqa: BLE001 - a torch without these internals: treat as unknown
        return None


class _EscapeRecorder(torch.overrides.TorchFunctionMode):
    """Records, during the trace, every read of a tensor's values into Python (``_ESCAPES``)
    with the fx node of the tensor read (None: unknown, refused); ``lower`` refuses the
    model when a read tensor depends on the input."""

    def __init__(self, out: List[tuple]):
        super().__init__()
        self.out = out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _ESCAPES and args and torch.is_tensor(args[0]):
            node = _escape_node(args[0])
            name = getattr(func, "__name__", str(func))
            self.out.append((f"Tensor.{name}", node))
        return func(*args, **(kwargs or {}))


def untraceable(model: nn.Module, example: torch.Tensor) -> Optional[str]:
    """Why a trace of ``model(example)`` cannot stand for the model on other inputs (it
    reads the input's values into Python, or data-dependent control flow fails the trace),
    or None. Other bound engines that trace the model (auto_LiRPA's ``jit.trace``) bake such
    branches in just the same; an op without a native bound operator is no reason here."""
    try:
        lower(model, example)
    except UnsupportedLayer as exc:
        if getattr(exc, "untraceable", False):
            return str(exc.what)
    return None


def _locate(model: nn.Module, x, target) -> Optional[str]:
    """The module (path and type) that first runs ATen op ``target``: re-runs the model
    with global module hooks and a dispatch mode; only used to name a refused op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {id(m): n for n, m in model.named_modules()}
    stack: List[nn.Module] = []
    found: List[nn.Module] = []

    class _Finder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is target and not found and stack:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def _push(m, i):
        stack.append(m)

    def _pop(m, i, o):  # returns None: a forward hook's return value would replace the output
        if stack:
            stack.pop()

    pre = torch.nn.modules.module.register_module_forward_pre_hook(_push)
    post = torch.nn.modules.module.register_module_forward_hook(_pop)
    try:
        with torch.no_grad(), _Finder():
            model(x)
    except Exception:  # noqa: BLE001 - naming is best effort
        pass
    finally:
        pre.remove()
        post.remove()
    if not found:
        return None
    m = found[0]
    path = names.get(id(m), "")
    return f"{path or '<model>'} ({type(m).__name__})"


def _lower_nodes(gm, graph, values, depends, x, x_ph, param_ph, names, outs, named, dtype, device, u, mm_in, conv_in):
    from .registry import HANDLERS

    live = _fx_nodes_needed(graph, outs)
    for n in graph.nodes:
        # a random op (torch.rand inside forward, a random mask): each call of the model
        # draws anew, so no bound of one draw is a bound of the model as it runs
        if n in live and n.op == "call_function" and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()) \
                and not _eval_rrelu(n):
            raise UnsupportedLayer(str(n.target), "a random op in forward (each call draws anew)")
    order = {n: i for i, n in enumerate(graph.nodes)}
    _check_mutations(graph, order, depends)
    lw = _Lowering(gm, values, depends, u, mm_in, conv_in, {})
    inp = ops.InputOp("input")
    inp.u = u  # the model is fed its own dtype: the input rounding of a box point (bounds._input_slack)
    lw.nodes.append(Node(inp, [], tuple(x.shape[1:])))
    lw.index[x_ph] = 0
    for n in graph.nodes:
        if n not in live or not depends[n] or n is x_ph:
            continue
        v = values[n]
        if n.op != "call_function":
            raise UnsupportedLayer(n.name, f"unexpected node kind {n.op}")
        if n.target is operator.getitem:
            src, j = n.args
            if src not in lw.tuples:
                raise UnsupportedLayer(n.name, f"indexing the result of {src.target}")
            outs_map, refuse = lw.tuples[src]
            if j in refuse:
                raise UnsupportedLayer(str(src.target), f"uses {refuse[j]}")
            if j not in outs_map:
                raise UnsupportedLayer(str(src.target), f"uses output {j}")
            o = outs_map[j]
            if isinstance(o, tuple):
                op, inp = o
                op.u = lw.u
                lw.index[n] = lw.emit(op, [lw.index_of(inp)], n)
            else:
                lw.index[n] = o
            continue
        if isinstance(v, (tuple, list)):
            ok = all(torch.is_tensor(t) for t in v)
        else:
            ok = torch.is_tensor(v)
        if not ok:
            raise UnsupportedLayer(n.name, f"data-dependent Python value from {n.target}")
        lead = v[0] if isinstance(v, (tuple, list)) else v
        if (lead.dim() == 0 or lead.shape[0] != TRACE_BATCH) and n not in lw.merged:
            if _merged_batch_dense(lw, n, values, live) or _merged_batch_bmm(lw, n, values, live):
                continue
            raise UnsupportedLayer(str(n.target), "an op that changes the batch dimension")
        handler = HANDLERS.get(n.target)
        if handler is None:
            exc = UnsupportedLayer(str(n.target), "no bound operator for this op")
            exc.target = n.target
            raise exc
        try:
            idx = _lower_one(lw, n, handler, order, live)
        except UnsupportedLayer as exc:
            exc.target = n.target
            raise
        if idx is not None:
            lw.index[n] = idx
        elif n not in lw.tuples:
            raise UnsupportedLayer(str(n.target), "handler produced nothing")
    return _finish(lw, outs, graph, depends, param_ph, names, gm, named, x, dtype, device)


def _merged_batch_dense(lw, n, values, live) -> bool:
    """``nn.Linear`` (or ``x @ W``) on an input of more than two dims traces as ``view`` to
    ``[batch * positions, in]``, ``addmm``/``mm``, and ``view`` back to ``[batch, *positions,
    out]``. The rows of the product are then the positions of the batch, each its own dot
    product, so the three are one dense op over the last dimension of the unflattened input.
    True when ``n`` is the first view of exactly that pattern (the view is then an alias of its
    input and the product is lowered as a dense op on it); anything else is left to the caller
    to refuse. A view is what the registry lowers as one (``registry._view``)."""
    from .registry import HANDLERS, _addmm, _mm, _view

    if HANDLERS.get(n.target) is not _view or not n.args or not isinstance(n.args[0], torch.fx.Node):
        return False
    src = n.args[0]
    sv, v = values.get(src), values.get(n)
    if not (torch.is_tensor(sv) and torch.is_tensor(v)) or sv.dim() < 3 or sv.shape[0] != TRACE_BATCH:
        return False
    if tuple(v.shape) != (sv[..., 0].numel(), sv.shape[-1]) or src not in lw.index:
        return False
    users = [u for u in n.users if u in live]
    if len(users) != 1:
        return False
    mm = users[0]
    kind = HANDLERS.get(mm.target)
    if kind is _addmm:
        ok = len(mm.args) >= 3 and mm.args[1] is n and mm.args[0] is not n and mm.args[2] is not n
    elif kind is _mm:
        ok = len(mm.args) == 2 and mm.args[0] is n and mm.args[1] is not n
    else:
        ok = False
    if not ok or any(lw.depends.get(a, False) for a in mm.all_input_nodes if a is not n):
        return False  # the weight (and bias) must be constants of the model
    back = [u for u in mm.users if u in live]
    mv = values.get(mm)
    if len(back) != 1 or HANDLERS.get(back[0].target) is not _view or not torch.is_tensor(mv) or back[0].args[0] is not mm:
        return False
    bv = values.get(back[0])
    if not torch.is_tensor(bv) or tuple(bv.shape) != (*sv.shape[:-1], mv.shape[-1]):
        return False
    lw.index[n] = lw.index[src]
    lw.merged.add(mm)
    return True


def _merged_batch_bmm(lw, n, values, live) -> bool:
    """``torch.einsum`` of a data tensor with a constant matrix (``"bi,ij->bj"``, ``"bpi,ij->bpj"``,
    ``"bi,i->b"``) traces as a ``view`` of the (permuted) data to ``[1, batch x rows, k]``, a ``bmm``
    with the constant viewed as ``[1, k, m]``, and a ``view`` back to ``[batch, ...]``. A view keeps
    the row-major order, so sample ``b``'s elements are rows ``b R .. (b + 1) R - 1`` (``R`` rows a
    sample), each its own dot product with the same matrix: per sample, a reshape to ``[R, k]``
    and one dense op over the last dimension. True when ``n`` is the first view of exactly that
    pattern (it is then lowered as that reshape, and the ``bmm`` as the dense op by
    ``registry._bmm``); anything else is left to the caller to refuse."""
    from .registry import HANDLERS, _bmm, _view

    if HANDLERS.get(n.target) is not _view or not n.args or not isinstance(n.args[0], torch.fx.Node):
        return False
    src = n.args[0]
    sv, v = values.get(src), values.get(n)
    if not (torch.is_tensor(sv) and torch.is_tensor(v)) or sv.dim() < 2 or sv.shape[0] != TRACE_BATCH \
            or src not in lw.index or v.dim() != 3 or v.shape[0] != 1 or v.shape[1] % TRACE_BATCH:
        return False
    rows, k = v.shape[1] // TRACE_BATCH, v.shape[2]
    users = [u for u in n.users if u in live]
    if len(users) != 1 or HANDLERS.get(users[0].target) is not _bmm:
        return False
    mm = users[0]
    if len(mm.args) != 2 or mm.kwargs or mm.args[0] is not n or not isinstance(mm.args[1], torch.fx.Node) \
            or lw.depends.get(mm.args[1], True):
        return False  # the matrix must be a constant of the model
    wv, mv = values.get(mm.args[1]), values.get(mm)
    if not (torch.is_tensor(wv) and torch.is_tensor(mv)) or wv.dim() != 3 or wv.shape[0] != 1 or wv.shape[1] != k:
        return False
    back = [u for u in mm.users if u in live]
    if len(back) != 1 or HANDLERS.get(back[0].target) is not _view or back[0].args[0] is not mm:
        return False
    bv = values.get(back[0])
    if not torch.is_tensor(bv) or bv.dim() < 1 or bv.shape[0] != TRACE_BATCH or bv.numel() != mv.numel():
        return False
    per = (rows, k)
    lw.index[n] = lw.emit(ops.LinearMapOp(f"{lw.scope_of(n)}{n.target}", lambda x: x.reshape(x.shape[0], *per),
                                          "reshape"), [lw.index[src]], n)
    lw.merged.add(mm)
    lw.row_products.add(mm)
    return True


def _returns_alias(n) -> bool:
    """Whether fx node ``n``'s value shares memory with its first argument (a view, an
    in-place op, or an item of a view op's tuple)."""
    if n.op != "call_function":
        return False
    if n.target is operator.getitem:
        return bool(n.args) and isinstance(n.args[0], torch.fx.Node) and _returns_alias(n.args[0])
    schema = getattr(n.target, "_schema", None)
    if schema is None or not schema.returns:
        return False
    return schema.returns[0].alias_info is not None


def _check_mutations(graph, order, depends) -> None:
    """In-place ops are bounded as their out-of-place twins. That is only right when nothing
    reads the memory they wrote through another node: a view of it taken before (``h[:, 1]
    .relu_()`` writes into ``h``; ``h[:, 1] = v`` is a dead ``copy_`` into a view of ``h``),
    its base, or the tensor itself before the op. Such a write is refused, live or dead, as
    is a write into a parameter or buffer (a model whose state changes as it runs)."""
    alias_users: Dict[torch.fx.Node, List[torch.fx.Node]] = {}
    for n in graph.nodes:
        if _returns_alias(n) and n.args and isinstance(n.args[0], torch.fx.Node):
            alias_users.setdefault(n.args[0], []).append(n)

    def family(root):
        out, stack = set(), [root]
        while stack:
            v = stack.pop()
            if v in out:
                continue
            out.add(v)
            stack.extend(alias_users.get(v, []))
        return out

    for n in graph.nodes:
        if n.op != "call_function" or n.target is operator.getitem:
            continue
        schema = getattr(n.target, "_schema", None)
        if schema is None or not schema.is_mutable:
            continue
        for i, a in enumerate(schema.arguments):
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            v = n.args[i] if i < len(n.args) else n.kwargs.get(a.name)
            if not isinstance(v, torch.fx.Node):
                continue
            base = v
            while _returns_alias(base) and base.args and isinstance(base.args[0], torch.fx.Node):
                base = base.args[0]
            if base.op == "placeholder" and not depends.get(base, False):
                raise UnsupportedLayer(str(n.target), "an in-place write into a parameter or buffer in forward "
                                       "(the model changes as it runs)")
            if not depends.get(v, False):
                continue
            stale = family(base) - family(n)
            for s_ in stale:
                if any(order[r] > order[n] for r in s_.users):
                    raise UnsupportedLayer(str(n.target), "an in-place op whose memory is read again through "
                                           "another tensor (a view of it, its base, or the tensor itself)")


def _lower_one(lw, n, handler, order, live):
    """Run one node's handler and check that it consumed (or left at default) every argument."""
    schema = n.target._schema
    first_written = bool(schema.arguments) and schema.arguments[0].alias_info is not None and \
        schema.arguments[0].alias_info.is_write
    if schema.is_mutable and (first_written or not _eval_rrelu(n)):
        # in-place ops are bounded as their out-of-place twin, which is only right when
        # nothing reads the mutated tensor's old node afterwards (an eval rrelu writes only
        # its unread noise, never its input)
        first = n.args[0]
        later = [u_ for u_ in first.users if u_ is not n and order[u_] > order[n] and u_ in live]
        if later:
            raise UnsupportedLayer(str(n.target), "an in-place op whose input is read again")
    ctx = _Ctx(lw, n)
    idx = handler(ctx)
    for a in schema.arguments:
        if a.name in ctx.used:
            continue
        dv = ctx.defaults[a.name]
        if dv is _NODEFAULT or not _same(ctx.values[a.name], dv):
            raise UnsupportedLayer(ctx.name, f"argument {a.name}={ctx.values[a.name]!r} is not handled")
    return idx


def _finish(lw, outs, graph, depends, param_ph, names, gm, named, x, dtype, device):
    if outs not in lw.index:
        raise UnsupportedLayer(str(outs), "the output was not lowered")
    out_idx = lw.index[outs]
    if out_idx != len(lw.nodes) - 1:  # the output is not the last node: an identity
        lw.nodes.append(Node(ops.LinearMapOp("output", lambda t: t, "identity"), [out_idx], None))
    if out_idx == 0:
        raise UnsupportedLayer("output", "the model returns its input unchanged")

    # the constant part of the trace, re-evaluated at every bind from the live parameters
    const_nodes = [n for n in graph.nodes if not depends[n] and n.op != "output" and n in _ancestors(lw.needed)]

    def const_env(params):
        env: Dict[torch.fx.Node, object] = {}
        ph = dict(zip(param_ph, names))
        for n in const_nodes:
            if n.op == "placeholder":
                env[n] = params[ph[n]]
            elif n.op == "get_attr":
                env[n] = getattr(gm, n.target)
            else:
                args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
                env[n] = n.target(*args, **kwargs)
        return env

    g = BoundGraph(lw.nodes, tuple(x.shape[1:]), None, const_env=const_env, params=named)
    g.bind(dtype=dtype, device=device)
    x = x.to(g.dtype)  # float64 where our float32 products may be rounded (bind): shapes only
    vals: List[torch.Tensor] = []
    with torch.no_grad():
        for node in g.nodes:
            vals.append(x if not node.inputs and isinstance(node.op, ops.InputOp)
                        else node.op.forward(*(vals[i] for i in node.inputs)))
            node.shape = tuple(vals[-1].shape[1:])
            if vals[-1].shape[0] != TRACE_BATCH:
                raise UnsupportedLayer(node.op.name, "an op that changes the batch dimension")
    g.output_shape = g.nodes[-1].shape
    return g


def _ancestors(nodes, inputs=lambda n: n.all_input_nodes) -> set:
    """``nodes`` and every node they read, through ``inputs`` (a node's inputs)."""
    out, stack = set(), list(nodes)
    while stack:
        n = stack.pop()
        if n in out:
            continue
        out.add(n)
        stack.extend(inputs(n))
    return out


def _carries_input(graph: torch.fx.Graph, x_ph) -> Dict[torch.fx.Node, bool]:
    """Per node of ``graph``: whether it depends on the input placeholder ``x_ph``."""
    out: Dict[torch.fx.Node, bool] = {}
    for n in graph.nodes:
        out[n] = n is x_ph or any(out.get(a, False) for a in n.all_input_nodes)
    return out


def program(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """The ATen program ``model`` runs on ``x`` (make_fx, under no_grad, parameters as
    inputs), as ``lower`` traces it; for comparing two models' programs (``same_program``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))

    def fn(params, inp):
        with _not_fx_tracing():
            return torch.func.functional_call(model, params, (inp,))

    with torch.no_grad(), _one_fake_mode():
        return make_fx(fn, tracing_mode="real")(_detached(named), x.detach().clone())


def same_program(a: torch.fx.GraphModule, b: torch.fx.GraphModule) -> bool:
    """Whether two ``program`` traces are the same program (live nodes and constants)."""
    return _same_trace(a, b)


def warm_tracer() -> None:
    """Import what ``make_fx`` imports on its first use (``torch._dynamo``: about a second on
    a CPU, once per process). Callers run it before their budget's clock starts, so the first
    latent test of a process (of each xdist worker) does not spend its budget on an import.
    The import adds a warning filter (sympy's, for its deprecations): the user's filters are
    put back as they were."""
    import warnings

    with warnings.catch_warnings():
        import torch._dynamo  # noqa: F401


def get_graph(model: nn.Module, input_shape=None, dtype=None, device=None, example=None,
              other_batch: Optional[int] = None) -> BoundGraph:
    """Lower ``model`` as it is now and bind its constants in ``dtype``, the bound
    arithmetic's precision (default: the model's own float dtype; every op counts the
    rounding of this arithmetic too). ``example`` (a batch of inputs) guides the trace;
    zeros of ``input_shape`` otherwise."""
    if example is None:
        p = next(iter(list(model.parameters()) + list(model.buffers())), None) if isinstance(model, nn.Module) else None
        example = torch.zeros((TRACE_BATCH, *input_shape), dtype=p.dtype if p is not None and p.is_floating_point()
                              else torch.float32, device=device)
    g = lower(model, example, other_batch=other_batch)
    if dtype is None:
        dtype = g.dtype if g.dtype in (torch.float32, torch.float64) else torch.float32
    return g.bind(dtype=dtype, device=device if device is not None else example.device)


# Name kept for callers that traced with an explicit input shape.
def trace(model: nn.Module, input_shape, dtype=None, device=None) -> BoundGraph:
    return get_graph(model, input_shape, dtype=dtype, device=device)
