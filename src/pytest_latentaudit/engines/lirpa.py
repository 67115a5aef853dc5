"""auto_LiRPA backend: sound bounds on linear specifications ``C @ model(x)`` over boxes.

Entry point: :func:`lirpa_spec_bounds`. auto_LiRPA itself is imported lazily through
:mod:`.lirpa_compat`; torch is imported lazily too, so importing this module is free.

The user's model is never handed to auto_LiRPA. 0.3's BoundedModule moves the model
between devices, toggles its train/eval mode, shares its Parameter objects and flips
their ``requires_grad``, and alpha-CROWN casts the whole graph to float64 and back.
So a private deep copy is bounded instead, cached per model (weakly: the cache never
keeps a model alive) and rebuilt when the model's weights change.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .lirpa_compat import auto_lirpa_version, import_auto_lirpa

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["LIRPA_METHODS", "LirpaUnsupported", "lirpa_spec_bounds", "clear_cache"]

#: Methods accepted by :func:`lirpa_spec_bounds`, loosest and cheapest first.
LIRPA_METHODS: Tuple[str, ...] = ("ibp", "crown-ibp", "crown", "alpha-crown")

# Our names -> compute_bounds(method=...) names. These spellings are accepted by
# auto_LiRPA 0.3 and by later releases alike.
_LIRPA_NAMES = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized"}


class LirpaUnsupported(Exception):
    """auto_LiRPA cannot bound this model (an unsupported layer or op, or a failure
    inside auto_LiRPA). Callers may fall back to another engine."""


# --------------------------------------------------------------------------------------
# Public entry point


def lirpa_spec_bounds(
    model: "nn.Module",
    lower: "torch.Tensor",
    upper: "torch.Tensor",
    C: "torch.Tensor",
    method: str = "crown",
    *,
    conv_mode: Optional[str] = None,
    alpha_iters: int = 20,
    dtype: Optional["torch.dtype"] = None,
) -> Tuple["torch.Tensor", "torch.Tensor"]:
    """Lower and upper bounds ``[N, m]`` of ``C @ model(x)``, valid for every ``x`` in
    the box ``lower[i] <= x <= upper[i]`` of each row ``i``.

    Args:
        model: an ``nn.Module`` in eval mode mapping ``[N, *input_shape]`` to outputs
            with ``n_out`` elements per row (non-flat outputs are flattened).
        lower, upper: ``[N, *input_shape]`` box corners. Computation happens on
            ``lower.device``, in the model's floating dtype.
        C: ``[N, m, n_out]`` specification matrices.
        method: one of :data:`LIRPA_METHODS`. The CROWN family's results are
            intersected with IBP's: both are sound, so is their intersection, and
            CROWN alone is not always tighter than IBP (its adaptive lower ReLU slope
            can lose to plain intervals on wide boxes).
        conv_mode: auto_LiRPA's ``conv_mode``; default ``"matrix"`` when the model
            has a ``ConvTranspose2d`` (0.3's patches mode rejects padded ones), else
            auto_LiRPA's default ``"patches"``.
        alpha_iters: optimisation steps for ``"alpha-crown"``.
        dtype: the dtype auto_LiRPA computes in (a private copy of the model is cast to
            it); default: the model's floating dtype.

    Returns ``(lb, ub)``, detached, on ``lower.device``. Raises :class:`LirpaUnsupported`
    when auto_LiRPA cannot handle the model, ValueError on malformed arguments.
    """
    import torch

    if method not in LIRPA_METHODS:
        raise ValueError(f"method must be one of {LIRPA_METHODS}, got {method!r}")
    if conv_mode not in (None, "patches", "matrix"):
        raise ValueError(f"conv_mode must be None, 'patches' or 'matrix', got {conv_mode!r}")
    _check_eval_mode(model)

    device = lower.device
    dtype = dtype or _floating_dtype(model) or (lower.dtype if lower.is_floating_point() else torch.get_default_dtype())
    lower = _cast_outward(lower.detach(), dtype, -1.0)
    upper = _cast_outward(upper.detach().to(device), dtype, +1.0)
    C = C.detach().to(device=device, dtype=dtype)
    _check_shapes(lower, upper, C)
    if conv_mode is None:
        # 0.3's patches mode drops a conv's groups and dilation (``BoundConv.bound_backward`` on
        # Patches A): matrix mode for those, as for ConvTranspose2d (patches rejects padded ones)
        odd_conv = any(isinstance(m, torch.nn.Conv2d) and (m.groups != 1 or tuple(m.dilation) != (1, 1))
                       for m in model.modules())
        conv_mode = "matrix" if odd_conv or any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules()) \
            else "patches"

    with _LOCK, _recursion_headroom(), _quiet_internal_warnings():
        for attempt in (1, 2):
            entry, fresh = _bounded_for(model, lower, upper, conv_mode)
            _refuse_unsound_nodes(entry, method)
            if C.shape[2] != entry.n_out:
                raise ValueError(f"C has {C.shape[2]} output columns; the model has {entry.n_out} outputs per row")
            try:
                return _compute(entry, lower, upper, C, method, alpha_iters)
            except Exception as exc:
                # A failed run can leave auto_LiRPA's graph half-updated (e.g. alpha
                # tensors sized for the failed call): never reuse it.
                _evict(model, entry)
                if _is_oom(exc):
                    raise
                if fresh or attempt == 2:
                    raise LirpaUnsupported(_describe_failure(entry, exc, f"computing {method} bounds")) from exc
                # A cached graph (built for another batch size, or left in a bad state
                # by an earlier call) gets one retry on a fresh build.
    raise AssertionError("unreachable")


def clear_cache() -> None:
    """Drop every cached BoundedModule (e.g. to free memory between test modules)."""
    with _LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# Bound computation


def _compute(entry: "_Entry", lower, upper, C, method: str, alpha_iters: int):
    import torch

    with torch.no_grad():
        ibp_lb, ibp_ub = _bounds(entry.bounded, lower, upper, C, "ibp")
        if method == "ibp":
            return ibp_lb, ibp_ub
        if method in ("crown", "crown-ibp"):
            lb, ub = _bounds(entry.bounded, lower, upper, C, method)
    if method == "alpha-crown":
        lb, ub = _alpha_crown(entry, lower, upper, C, alpha_iters)
    return torch.max(lb, ibp_lb), torch.min(ub, ibp_ub)


def _bounds(bounded, lower, upper, C, method: str):
    al = import_auto_lirpa()
    ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    x = al.BoundedTensor((lower + upper) / 2, ptb)
    with _default_dtype(lower.dtype):
        lb, ub = bounded.compute_bounds(x=(x,), C=C, method=_LIRPA_NAMES[method])
    return lb.detach(), ub.detach()


# alpha-CROWN keeps, per row, a slope for every (activation neuron, start neuron) pair,
# plus its gradient, Adam moments and best-so-far copies: rows are processed in chunks
# that keep this under the budget (e.g. 5x512 ReLU MLP: ~90 MB per row).
_ALPHA_MEMORY_BUDGET = 2 * 1024**3


def _alpha_crown(entry: "_Entry", lower, upper, C, alpha_iters: int):
    import torch

    rows = _alpha_rows_per_call(entry.bounded, C.shape[1])
    parts = []
    for start in range(0, lower.shape[0], rows):
        chunk = slice(start, start + rows)
        try:
            parts.append(_alpha_chunk(entry, lower[chunk], upper[chunk], C[chunk], alpha_iters))
        except Exception:
            if entry.dense_alpha:
                raise
            # 0.3's sparse intermediate bounds break alpha-CROWN on width-1 layers and
            # on Sigmoid/Tanh (alpha and A sized differently); dense ones are as tight
            # but ~5x slower, so they are the fallback. A failed graph is unusable:
            # rebuild it from the private copy.
            entry.bounded = _new_bounded(entry.work, entry.example, entry.key[3])
            entry.dense_alpha = True
            parts.append(_alpha_chunk(entry, lower[chunk], upper[chunk], C[chunk], alpha_iters))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _alpha_chunk(entry: "_Entry", lower, upper, C, alpha_iters: int):
    import torch

    bounded = entry.bounded
    sparse = bounded.bound_opts.get("sparse_intermediate_bounds")
    bounded.set_bound_opts({"optimize_bound_args": {"iteration": int(alpha_iters)}})
    if entry.dense_alpha:
        bounded.set_bound_opts({"sparse_intermediate_bounds": False})
    try:
        with torch.enable_grad():  # the slopes are optimised by gradient descent
            return _bounds(bounded, lower, upper, C, "alpha-crown")
    finally:
        bounded.set_bound_opts({"sparse_intermediate_bounds": sparse})  # CROWN stays sparse


def _alpha_rows_per_call(bounded, m: int) -> int:
    from math import prod

    try:
        neurons = sum(int(prod(n.output_shape[1:])) for n in bounded.optimizable_activations)
    except (AttributeError, TypeError):  # other auto_LiRPA internals: no chunking
        return 1 << 30
    per_row = 2 * neurons * (neurons + m) * 4 * 8  # float32; x8 for grads, moments, copies
    return max(1, _ALPHA_MEMORY_BUDGET // max(per_row, 1))


# --------------------------------------------------------------------------------------
# BoundedModule cache


@dataclass
class _Entry:
    bounded: Any  # auto_LiRPA.BoundedModule wrapping a private copy of the model
    work: Any  # that copy (after the rewrites below)
    labels: Dict[Any, str]  # module in `work` -> its qualified name in the user's model
    example: Any  # the input it was built with
    fingerprint: Tuple
    n_out: int
    key: Tuple  # (input shape without batch, device, dtype, conv_mode)
    dense_alpha: bool = False  # alpha-CROWN needed dense intermediate bounds (see above)


_LOCK = threading.RLock()  # BoundedModules are stateful: one computation at a time
# model -> {(input shape, device, dtype, conv_mode): _Entry}; weak keys, so a model
# that is garbage-collected takes its copies with it.
_CACHE: "weakref.WeakKeyDictionary[Any, Dict[Tuple, _Entry]]" = weakref.WeakKeyDictionary()


def _bounded_for(model, lower, upper, conv_mode: str) -> Tuple[_Entry, bool]:
    """The cached entry for this model and input layout, or a fresh one (then True).
    The batch size is not part of the key: 0.3's graphs accept any batch size."""
    key = (tuple(lower.shape[1:]), str(lower.device), lower.dtype, conv_mode)
    fingerprint = _fingerprint(model)
    per_model = _CACHE.setdefault(model, {})
    entry = per_model.get(key)
    if entry is not None and entry.fingerprint == fingerprint:
        return entry, False
    entry = _build(model, lower, upper, conv_mode, key, fingerprint)
    per_model[key] = entry
    return entry, True


def _evict(model, entry: _Entry) -> None:
    per_model = _CACHE.get(model)
    if per_model is not None and per_model.get(entry.key) is entry:
        del per_model[entry.key]


def _fingerprint(model) -> Tuple:
    # Changes whenever weights are edited in place (optimizer steps, load_state_dict
    # bump `_version`), replaced, moved, or modules are swapped.
    tensors = tuple(
        (name, id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
        for name, t in list(model.named_parameters()) + list(model.named_buffers())
    )
    return tensors, tuple(id(m) for m in model.modules())


def _build(model, lower, upper, conv_mode: str, key: Tuple, fingerprint: Tuple) -> _Entry:
    import torch

    work, labels = _private_copy(model, lower.device, lower.dtype)
    center = (lower + upper) / 2
    with torch.no_grad():
        try:
            out = work(center)
        except Exception as exc:  # noqa: BLE001 - e.g. a forward set on the instance that still calls the
            if _is_oom(exc):      # user's (float32) model from the float64 copy
                raise
            raise LirpaUnsupported(
                f"the backend's private {lower.dtype} copy of {type(model).__name__} fails on the box "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from exc
    if out.dim() != 2:  # C indexes flat outputs
        work = torch.nn.Sequential(work, torch.nn.Flatten())
        labels[work] = "<flattened output>"
        out = out.flatten(1)
    n_out = out.shape[1]

    entry = _Entry(None, work, labels, center, fingerprint, n_out, key)
    with _capture_lirpa_log() as records:
        try:
            entry.bounded = _new_bounded(work, center, conv_mode)
        except Exception as exc:
            if _is_oom(exc):
                raise
            raise LirpaUnsupported(_describe_failure(entry, exc, "building the bound graph", records)) from exc
    mine = _own_program(model, lower)
    _check_pool_attributes(mine)
    _check_parse(entry, lower, upper)
    _check_program(model, lower, mine)
    _check_tracer_blind(model, lower)
    return entry


#: the torch functions that tell a forward it runs under ``torch.jit.trace``
_TRACING_PROBES = ("_is_tracing", "_get_tracing_state")


def _check_tracer_blind(model, lower) -> None:
    """auto_LiRPA parses ``torch.jit.trace`` of the copy, under which ``torch.jit.is_tracing()``
    is true: a forward that reads it (to skip a check, or to take an export-friendly path) is
    parsed as another program than it runs, and the parse check's few points can miss where
    the two differ. So one plain forward of a copy runs with torch's tracing-state functions
    watched; a read from the user's code (not torch's own, which ``nn.Module`` does on every
    call) is ``LirpaUnsupported``."""
    import sys

    import torch

    seen: List[str] = []
    originals = {name: getattr(torch._C, name) for name in _TRACING_PROBES}

    def watch(name):
        real = originals[name]

        def probe(*args, **kwargs):
            f = sys._getframe(1)
            while f is not None and f.f_globals.get("__name__", "").startswith("torch.jit"):
                f = f.f_back  # torch.jit.is_tracing() itself: its caller is the one asking
            who = "" if f is None else f.f_globals.get("__name__", "")
            if not (who == "torch" or who.startswith(("torch.", "pytest_latentaudit."))):
                seen.append(f"{who or '?'}:{f.f_code.co_name if f is not None else '?'}")
            return real(*args, **kwargs)

        return probe

    twin = copy.deepcopy(model)
    try:
        for name in _TRACING_PROBES:
            setattr(torch._C, name, watch(name))
        with torch.no_grad():
            twin(lower[:2].to(_floating_dtype(model) or torch.get_default_dtype()))
    except Exception:  # noqa: BLE001 - the copy fails on the box: _build's own forward reports that
        pass
    finally:
        for name, real in originals.items():
            setattr(torch._C, name, real)
    if seen:
        raise LirpaUnsupported(
            f"{type(model).__name__}'s forward asks whether it runs under torch.jit.trace ({seen[0]}): auto_LiRPA "
            f"parses such a trace, another program than the model runs, so its bounds would not be of this model")


def _own_program(model, lower):
    """The ATen program the user's model runs (make_fx, in its own dtype) on the box's first
    points, traced once for ``_check_pool_attributes`` and ``_check_program``; None when make_fx
    cannot trace it (such a model has no native graph, which the backend needs for the
    rounding bound, so it gets no proof either way)."""
    import torch

    from .graph import program

    own = _floating_dtype(model) or torch.get_default_dtype()
    try:
        return program(model, lower[:2].to(own))
    except Exception as exc:  # noqa: BLE001 - see above
        if _is_oom(exc):
            raise
        return None


def _check_program(model, lower, mine) -> None:
    """The private copy is cast to the compute dtype (float64), and a forward that looks at its
    dtype (``x.dtype``, torch's default, ``finfo``: mixed-precision code) runs another program
    there than the user's model in its own; the parse check compares the parse with the copy,
    so it cannot see that. Both programs are traced (make_fx, each under its own default dtype)
    and must be the same, else ``LirpaUnsupported``. ``mine``: ``_own_program``'s trace."""
    import torch

    from .graph import program, same_program

    dtype = lower.dtype
    own = _floating_dtype(model) or torch.get_default_dtype()
    if own == dtype and torch.get_default_dtype() == dtype:
        return  # no cast and no other default: the same program
    same = False  # also when make_fx cannot trace the model (mine None): the native lowering says why
    if mine is not None:
        try:
            twin = copy.deepcopy(model).to(dtype)
            with _default_dtype(dtype):
                theirs = program(twin, lower[:2])
            same = same_program(mine, theirs)
        except Exception as exc:  # noqa: BLE001 - the copy make_fx cannot trace: no proof
            if _is_oom(exc):
                raise
    if not same:
        raise LirpaUnsupported(
            f"{type(model).__name__} runs another program in {str(dtype).replace('torch.', '')} (the backend's "
            f"private copy) than in {str(own).replace('torch.', '')} (a forward that looks at its dtype, torch's "
            f"default dtype or finfo): auto_LiRPA's bounds would not be of this model")


#: ATen poolings and the arguments auto_LiRPA 0.3 parses them without, with the values
#: that change nothing (``_check_pool_attributes``)
_POOL_ATTRIBUTES = {
    "avg_pool1d": "avg", "avg_pool2d": "avg", "avg_pool3d": "avg",
    "max_pool1d": "max", "max_pool2d": "max", "max_pool3d": "max",
    "max_pool1d_with_indices": "max", "max_pool2d_with_indices": "max", "max_pool3d_with_indices": "max",
}


def _call_args(node) -> Dict[str, Any]:
    """An fx node's ATen arguments by name, defaults filled in."""
    out: Dict[str, Any] = {}
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _check_pool_attributes(prog) -> None:
    """0.3 parses ``divisor_override``, ``count_include_pad=False`` and ``ceil_mode`` of average
    pooling, and ``dilation`` and ``ceil_mode`` of max pooling, as if they were not there, and
    bounds that other function. The parse check (``_check_parse``) compares outputs at a few
    points only: where the two functions differ on a narrow part of the box (a spike reaching a
    padded corner or a dilated tap) it passes, and the bound of the other function was taken
    for the model's (``divisor_override=1`` proved a sum pooling below its average's bound). So
    the model's ATen program (make_fx, as the native lowering traces it) is read, and such a
    pooling anywhere in it is ``LirpaUnsupported``. ``prog``: ``_own_program``'s trace (None:
    nothing to read)."""
    if prog is None:
        return
    for node in prog.graph.nodes:
        packet = getattr(node.target, "_overloadpacket", None) if node.op == "call_function" else None
        kind = _POOL_ATTRIBUTES.get(getattr(packet, "__name__", ""))
        if kind is None:
            continue
        a = _call_args(node)
        why = None
        if a.get("ceil_mode"):
            why = "ceil_mode=True"
        elif kind == "avg" and a.get("divisor_override") is not None:
            why = f"divisor_override={a['divisor_override']!r}"
        elif kind == "avg" and a.get("count_include_pad") is False and any(int(p) for p in (a.get("padding") or [])):
            why = "count_include_pad=False with padding"
        elif kind == "max" and any(int(d) != 1 for d in (a.get("dilation") or [])):
            why = f"dilation={list(a['dilation'])}"
        if why is not None:
            raise LirpaUnsupported(
                f"auto_LiRPA {auto_lirpa_version()} parses {packet.__name__} with {why} as a pooling without it "
                f"(another function): its bounds would not be of this model")


#: points of the parse check besides the building batch's lower, upper and centre
_PARSE_POINTS = 8


def _check_parse(entry: _Entry, lower, upper) -> None:
    """auto_LiRPA bounds the graph it parsed, not the model: 0.3 drops attributes it does not
    implement (``ceil_mode``, ``count_include_pad=False`` and ``divisor_override`` of average
    pooling, the ``dilation`` of max pooling) and then bounds another function, soundly. So the
    parsed graph's own forward pass must give the private copy's outputs, at the building
    batch's corners and centre and at random points in and around its boxes; where it does not,
    no bound of it is a bound of the model (``LirpaUnsupported``)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0x1A77)
    n = min(lower.shape[0], 4)
    lo, hi = lower[:n], upper[:n]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    shape = (_PARSE_POINTS // 2, *lo.shape)

    def rand(fn):
        return fn(shape, generator=g, dtype=torch.float64).to(device=lo.device, dtype=lo.dtype)

    inside = mid[None] + half[None] * (2 * rand(torch.rand) - 1)
    around = mid[None] + (1 + mid.abs()[None] + half[None]) * rand(torch.randn)
    pts = torch.cat([lo, hi, mid, inside.reshape(-1, *lo.shape[1:]), around.reshape(-1, *lo.shape[1:])])
    with torch.no_grad():
        # the copy as the user's model runs (their default dtype for tensors its forward makes),
        # the parse as it was built and is bounded (the compute dtype as default)
        want = entry.work(pts).reshape(pts.shape[0], -1)
        try:
            with _default_dtype(lo.dtype):
                got = entry.bounded(pts).reshape(pts.shape[0], -1)
        except Exception as exc:  # noqa: BLE001 - 0.3 bakes the building batch's size into some views
            if _is_oom(exc):
                raise
            raise LirpaUnsupported(
                f"auto_LiRPA {auto_lirpa_version()}'s parse of the model fails on a batch of another size than "
                f"the one it was built on ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}): "
                f"its bounds would not be of this model as it runs") from exc
    u = torch.finfo(want.dtype).eps
    tol = 2 ** 20 * u * (1 + want.abs().amax(1, keepdim=True))  # 2e-10 relative in float64
    gap = (got - want).abs() if got.shape == want.shape else None
    if gap is None or not bool((gap <= tol).all()):
        size = "other shapes" if gap is None else f"up to {float(gap.max()):.3g}"
        raise LirpaUnsupported(
            f"auto_LiRPA {auto_lirpa_version()}'s parse of the model computes another function than the model "
            f"({size} apart at check points; pooling with ceil_mode, count_include_pad=False, divisor_override "
            f"or dilation is parsed without them, and a tensor made in forward without a dtype is traced in "
            f"{str(lo.dtype).replace('torch.', '')}): its bounds would not be of this model")


def _refuse_unsound_nodes(entry: _Entry, method: str) -> None:
    """Nodes whose forward is right (so the parse check passes) but whose 0.3 bounds are of
    another function: ``BoundAveragePool``'s backward pass on a dense A upsamples A by the kernel
    size, as if the stride were the kernel and there were no padding (overlapping, strided or
    padded windows get the wrong rows; its interval bounds are right), and ``BoundLeakyRelu``
    relaxes the slope as if it were in [0, 1] (monotone and convex: a negative slope or one above
    1 gets wrong lines, and a negative one wrong intervals too); ``BoundGather``'s backward pass
    scatters A back without adding, so a repeated index keeps only one of its rows."""
    import torch

    for name, node in entry.bounded._modules.items():
        kind = type(node).__name__
        why = None
        if kind == "BoundAveragePool" and method != "ibp":
            k, s, p = (list(map(int, v)) for v in (node.kernel_size, node.stride, node.padding))
            if s != k or any(p):
                why = (f"average pooling with kernel {k}, stride {s}, padding {p} (its linear bounds are only "
                       f"right for stride = kernel and no padding)")
        elif kind == "BoundConv" and entry.key[3] == "patches" and method != "ibp" and (
                int(node.groups) != 1 or list(map(int, node.dilation)) != [1, 1]):
            why = (f"a convolution with groups={int(node.groups)}, dilation={list(map(int, node.dilation))} in patches "
                   f"mode (its backward pass on patches drops both; conv_mode='matrix' keeps them)")
        elif kind == "BoundLeakyRelu" and not 0.0 <= float(node.alpha) <= 1.0:
            why = f"LeakyReLU with slope {float(node.alpha)} (its bounds assume a slope in [0, 1])"
        elif kind in ("BoundGather", "BoundGatherElements") and method != "ibp":
            # the backward pass scatters A back with scatter_ (not an add): rows of a repeated index
            # overwrite each other. A constant gather without repeats is a permutation: exact.
            index = getattr(node, "indices" if kind == "BoundGather" else "index", None)
            if not torch.is_tensor(index):
                why = f"a gather ({kind}) whose indices it did not record"
            elif kind == "BoundGather" and index.reshape(-1).unique().numel() != index.numel():
                why = f"a gather with a repeated index ({index.reshape(-1).tolist()[:8]})"
            elif kind == "BoundGatherElements":
                why = "torch.gather (its backward pass overwrites the rows of repeated indices)"
        if why is not None:
            where = _locate(entry, [_Culprit(kind, name)]).get(name, "")
            raise LirpaUnsupported(f"auto_LiRPA {auto_lirpa_version()} bounds {why}{where} as another function: "
                                   f"its bounds would not be of this model")


def _new_bounded(work, example, conv_mode: str):
    al = import_auto_lirpa()
    with _default_dtype(example.dtype):  # 0.3's tangent tables of Sigmoid/Tanh are made in it
        return al.BoundedModule(work, example, bound_opts={"conv_mode": conv_mode}, device=example.device)


def _private_copy(model, device, dtype):
    """Deep copy of ``model`` prepared for tracing, with its modules' user-facing names."""
    try:
        work = copy.deepcopy(model)
    except Exception as exc:
        raise LirpaUnsupported(
            f"cannot deep-copy {type(model).__name__} ({exc}); the auto_LiRPA backend bounds "
            "a private copy so that it never mutates the model"
        ) from exc
    # deepcopy preserves module order, so names pair up (modules hash by identity)
    labels = {w: name for (name, _), (_, w) in zip(model.named_modules(), work.named_modules())}
    _rewrite_for_tracing(work, labels)
    work.eval()
    work.requires_grad_(False)
    work.to(device=device, dtype=dtype)
    return work, labels


def _rewrite_for_tracing(work, labels: Dict[Any, str]) -> None:
    # Semantics-preserving swaps (the model is in eval mode) for modules that trace
    # to ops auto_LiRPA 0.3 lacks:
    #   nn.Unflatten -> aten::unflatten (an ATen fallback op)  => reshape
    #   nn.Dropout*  -> 0.3 refuses to parse Dropout in eval mode => Identity
    import torch

    dropouts = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)
    for parent in list(work.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Unflatten):
                replacement = _make_unflatten(child.dim, tuple(child.unflattened_size))
            elif isinstance(child, dropouts):
                replacement = torch.nn.Identity()
            else:
                continue
            labels[replacement] = labels.pop(child, child_name)
            setattr(parent, child_name, replacement)


def _make_unflatten(dim: int, sizes: Tuple[int, ...]):
    import torch

    class _Unflatten(torch.nn.Module):
        """nn.Unflatten as a reshape; -1 for the batch keeps it batch-size agnostic."""

        def forward(self, x):
            d = dim % x.dim()
            if d == 0:
                raise ValueError("Unflatten over the batch dimension is not supported")
            return x.reshape((-1, *x.shape[1:d], *sizes, *x.shape[d + 1:]))

    return _Unflatten()


# --------------------------------------------------------------------------------------
# Error reporting


@dataclass
class _Culprit:
    what: str  # op or bound class, e.g. "onnx::Erf" or "BoundSoftplus"
    node: Optional[str]  # auto_LiRPA node name, e.g. "/17"


def _describe_failure(entry: _Entry, exc: BaseException, doing: str, records: Optional[List] = None) -> str:
    version = auto_lirpa_version() or "?"
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    unsupported = _unsupported_from_log(records or [])
    if unsupported:
        where = _locate(entry, unsupported)
        ops = "; ".join(f"{c.what}{where.get(c.node, '')}" for c in unsupported)
        return f"auto_LiRPA {version} does not support {ops} ({doing})"
    # Otherwise the best lead is the bound node that raised (a heuristic: the real
    # culprit can be upstream of it).
    culprits = _culprit_from_traceback(exc)
    where = _locate(entry, culprits)
    at = "".join(f" at {c.what}{where.get(c.node, '')}" for c in culprits)
    msg = f"auto_LiRPA {version} failed {doing}{at}: {detail}"
    if entry.key[3] == "patches" and any("Conv" in c.what for c in culprits):
        msg += "; try conv_mode='matrix'"
    return msg


def _unsupported_from_log(records: List) -> List[_Culprit]:
    # 0.3 logs every unsupported node (logger.error(..., node)) before raising a bare
    # NotImplementedError('There are unsupported operations').
    culprits = []
    for record in records:
        node = record.args[0] if isinstance(record.args, tuple) and record.args else None
        op = getattr(node, "op", None)
        if not op or "unsupported operation" not in str(record.msg):
            continue
        attr = getattr(node, "attr", None) or {}
        if op == "aten::ATen" and isinstance(attr, dict) and "operator" in attr:
            op = f"aten::{attr['operator']}"  # ATen fallback: name the real op
        culprits.append(_Culprit(op, getattr(node, "name", None)))
    return culprits


def _culprit_from_traceback(exc: BaseException) -> List[_Culprit]:
    # The innermost frame running a method of an auto_LiRPA bound node names the op.
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if type(owner).__module__.startswith("auto_LiRPA.operators"):
            found = owner
        tb = tb.tb_next
    if found is None:
        return []
    return [_Culprit(type(found).__name__, getattr(found, "name", None))]


def _locate(entry: _Entry, culprits: List[_Culprit]) -> Dict[Optional[str], str]:
    """Node name -> " in `module.path` (Type)". Tracing records module scopes only when
    torch.jit._trace._trace_module_map is set (as torch.onnx.export does), so trace the
    copy again with it set; debug names match the unscoped build's."""
    wanted = {c.node for c in culprits if c.node}
    if not wanted:
        return {}
    try:
        import torch

        from auto_LiRPA.parse_graph import parse_module

        by_scope = {f"m{i}": m for i, m in enumerate(entry.work.modules())}
        previous = torch.jit._trace._trace_module_map
        torch.jit._trace._trace_module_map = {m: label for label, m in by_scope.items()}
        try:
            nodes_op, _, _, _ = parse_module(entry.work, (entry.example,))
        finally:
            torch.jit._trace._trace_module_map = previous
        found = {}
        for node in nodes_op:
            scope, _, debug = node.name.rpartition("/")  # "m0/m3/m7" + "/" + "17"
            module = by_scope.get(scope.rpartition("/")[2])
            if f"/{debug}" in wanted and module is not None:
                name = entry.labels.get(module, "?") or "<model>"
                found[f"/{debug}"] = f" in `{name}` ({type(module).__name__})"
        return found
    except Exception:  # diagnostics must never mask the real error
        return {}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _capture_lirpa_log:
    """Collect auto_LiRPA's error log records while building (they name unsupported
    ops) instead of printing them: they become the LirpaUnsupported message."""

    def __enter__(self) -> List[logging.LogRecord]:
        self.logger = logging.getLogger("auto_LiRPA")
        self.handler = _ListHandler()
        self.propagate = self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        return self.handler.records

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate


# --------------------------------------------------------------------------------------
# Small helpers


def _is_oom(exc: BaseException) -> bool:
    # Out of memory is a resource problem, not an unsupported model: let it through (the
    # ladder halves its batch). The one test of what counts: ``memory.is_oom``.
    from .memory import is_oom

    return is_oom(exc)


def _check_eval_mode(model) -> None:
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:3]) + (" ..." if len(training) > 3 else "")
        raise ValueError(
            f"model must be in eval mode (bounds are for inference behaviour); in training mode: {shown}"
        )


def _floating_dtype(model):
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _cast_outward(t, dtype, direction: float):
    """``t.to(dtype)``, rounded away from the box (direction -1: down, +1: up) so that a
    narrowing cast (float64 box, float32 model) never shrinks the box."""
    import torch

    out = t.to(dtype)
    if t.dtype == dtype or not t.is_floating_point():
        return out
    back = out.to(t.dtype)
    inward = back > t if direction < 0 else back < t
    return torch.where(inward, torch.nextafter(out, torch.full_like(out, direction * float("inf"))), out)


def _check_shapes(lower, upper, C) -> None:
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    if lower.dim() < 2:
        raise ValueError(f"lower/upper must be [N, *input_shape], got {tuple(lower.shape)}")
    if C.dim() != 3 or C.shape[0] != lower.shape[0]:
        raise ValueError(f"C must be [N={lower.shape[0]}, m, n_out], got {tuple(C.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("lower > upper somewhere: empty box")


class _quiet_internal_warnings(warnings.catch_warnings):
    """Silence warnings raised inside auto_LiRPA (e.g. "Creating an identity matrix
    ... please submit a bug report") and torch's ONNX exporter while tracing: they
    concern internals the user cannot act on. Warnings attributed to user code
    (e.g. TracerWarning about data-dependent control flow) still show."""

    def __enter__(self):
        result = super().__enter__()
        warnings.filterwarnings("ignore", module=r"auto_LiRPA(\.|$)")
        warnings.filterwarnings("ignore", module=r"torch\.onnx(\.|$)")
        return result


class _default_dtype:
    # auto_LiRPA 0.3 makes some of its own tensors in torch's default dtype: the sparse rows
    # of a conv layer's unstable neurons (``torch.zeros(...)`` without a dtype) and the
    # tangent tables of Sigmoid/Tanh, so a float64 bound of a CNN or of a Sigmoid/Tanh
    # network failed. Set for building and bounding only. A tensor the model's forward
    # makes without a dtype (``torch.tensor(0.1)``) is then traced in float64, another
    # constant than the user's: ``_check_parse`` compares against the copy run under the
    # user's default and refuses such a parse.
    def __init__(self, dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        import torch

        self.previous = torch.get_default_dtype()
        if self.dtype in (torch.float32, torch.float64) and self.dtype != self.previous:
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc_info) -> None:
        import torch

        torch.set_default_dtype(self.previous)


class _recursion_headroom:
    # auto_LiRPA walks the graph recursively (3 frames per node or so); deep
    # generators can exceed Python's default limit. Raised only for the call.
    def __enter__(self) -> None:
        self.previous = sys.getrecursionlimit()
        sys.setrecursionlimit(max(self.previous, 10_000))

    def __exit__(self, *exc_info) -> None:
        sys.setrecursionlimit(self.previous)
