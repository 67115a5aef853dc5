"""Bound propagation over a ``BoundGraph``: interval (IBP) and linear bounds.

The linear engine runs forward mode over the box's k generators (cheap for the k = 1..4
of semantic tests) to get every intermediate bound, intersected with IBP; then it bounds
the spec ``C y + d`` twice, by folding ``C`` into the forward forms of the last layer and
by one backward (CROWN-style) pass from ``C`` using those intermediate bounds, and keeps
the smaller upper bound. Both are sound, so their minimum is.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import ops
from .forms import LinForm, tolerance, widen
from .graph import BoundGraph


def _input_bounds(center, gens):
    rad = gens.abs().sum(1)
    return center - rad, center + rad


def ibp_bounds(graph: BoundGraph, center: torch.Tensor, gens: torch.Tensor, pad=True):
    """Interval bounds of every node; returns the list of ``(lo, hi)``."""
    rel, abs_ = tolerance(center.dtype) if pad else (0.0, 0.0)
    bounds: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for node in graph.nodes:
        if isinstance(node.op, ops.InputOp):
            bounds.append(_input_bounds(center, gens))
            continue
        lo, hi = node.op.ibp(*(bounds[i] for i in node.inputs))
        bounds.append(widen(lo, hi, rel, abs_))
    return bounds


def linear_bounds(graph: BoundGraph, center: torch.Tensor, gens: torch.Tensor, stop_before_last=False):
    """Forward-mode linear bounds. Returns ``(forms, concrete)`` per node; concrete bounds
    are the intersection of the form's concretisation and IBP, padded for float error.

    With ``stop_before_last`` the output node is skipped (its input forms are enough to
    fold a spec into a final Linear layer)."""
    rel, abs_ = tolerance(center.dtype)
    forms: List[Optional[LinForm]] = []
    conc: List[Tuple[torch.Tensor, torch.Tensor]] = []
    last = len(graph.nodes) - 1
    for j, node in enumerate(graph.nodes):
        if isinstance(node.op, ops.InputOp):
            forms.append(LinForm.input(center, gens))
            conc.append(_input_bounds(center, gens))
            continue
        if stop_before_last and j == last:
            forms.append(None)
            conc.append(None)
            break
        in_forms = [forms[i] for i in node.inputs]
        pre = conc[node.inputs[0]] if node.inputs else None
        f = node.op.linear(*in_forms, pre=pre)
        lo_i, hi_i = node.op.ibp(*(conc[i] for i in node.inputs))
        lo_f, hi_f = f.concretize()
        lo, hi = widen(torch.maximum(lo_i, lo_f), torch.minimum(hi_i, hi_f), rel, abs_)
        forms.append(f)
        conc.append((lo, hi))
    return forms, conc


def _fold_last_linear(graph: BoundGraph, forms, C, d):
    """Upper bound of ``C y + d`` by folding ``C`` into the final Linear layer."""
    node = graph.nodes[-1]
    op = node.op
    h = forms[node.inputs[0]]
    W = C @ op.weight.to(C)  # [N, m, hidden]
    b = d if op.bias is None else d + C @ op.bias.to(C)
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    # upper form of W h: W+ (upper form) + W- (lower form); then maximise over s
    coef = torch.einsum("nmh,nkh->nmk", Wp, h.uw) + torch.einsum("nmh,nkh->nmk", Wn, h.lw)
    const = torch.einsum("nmh,nh->nm", Wp, h.ub) + torch.einsum("nmh,nh->nm", Wn, h.lb) + b
    return const + coef.abs().sum(-1)


def _upper_from_output_form(form: LinForm, C, d):
    n = C.shape[0]
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    coef = torch.einsum("nmo,nko->nmk", Cp, form.uw.reshape(n, form.k, -1)) + \
        torch.einsum("nmo,nko->nmk", Cn, form.lw.reshape(n, form.k, -1))
    const = torch.einsum("nmo,no->nm", Cp, form.ub.reshape(n, -1)) + \
        torch.einsum("nmo,no->nm", Cn, form.lb.reshape(n, -1)) + d
    return const + coef.abs().sum(-1)


def _interval_upper(lo, hi, C, d):
    n = C.shape[0]
    lo, hi = lo.reshape(n, -1), hi.reshape(n, -1)
    return torch.einsum("nmo,no->nm", C.clamp(min=0), hi) + torch.einsum("nmo,no->nm", C.clamp(max=0), lo) + d


def backward_upper(graph: BoundGraph, conc, center, gens, C, d):
    """CROWN-style backward pass from ``C`` using intermediate bounds ``conc``."""
    n, m = C.shape[:2]
    nodes = graph.nodes
    A: List[Optional[torch.Tensor]] = [None] * len(nodes)
    A[-1] = C.reshape(n * m, *nodes[-1].shape)
    const = d.reshape(n * m).clone()
    for j in range(len(nodes) - 1, 0, -1):
        Aj = A[j]
        if Aj is None:
            continue
        node = nodes[j]
        pre = conc[node.inputs[0]] if node.inputs else None
        if isinstance(node.op, ops.MonotoneIBPOp):
            # no linear relaxation: bound this node's contribution by its interval
            lo, hi = conc[j]
            lo, hi = (v.repeat_interleave(m, 0) for v in (lo, hi))
            const = const + (Aj.clamp(min=0) * hi + Aj.clamp(max=0) * lo).reshape(n * m, -1).sum(1)
            A[j] = None
            continue
        in_shapes = [nodes[i].shape for i in node.inputs]
        A_in, c = node.op.backward(Aj, pre=pre, in_shapes=in_shapes)
        if c is not None:
            const = const + c
        for i, a in zip(node.inputs, A_in):
            A[i] = a if A[i] is None else A[i] + a
        A[j] = None
    A0 = A[0].reshape(n, m, -1)
    k = gens.shape[1]
    val = torch.einsum("nmd,nd->nm", A0, center.reshape(n, -1)) + const.reshape(n, m)
    return val + torch.einsum("nmd,nkd->nmk", A0, gens.reshape(n, k, -1)).abs().sum(-1)


def spec_upper_bound(graph: BoundGraph, center, gens, C, d, method="linear", threshold=None):
    """Sound upper bound of every row of ``C y + d`` over the box; ``[N, m]``.

    ``method``: ``"ibp"`` (intervals only) or ``"linear"`` (forward forms, folded spec and a
    backward pass; the minimum of all of them). With ``threshold`` (``[N]``), the costlier
    backward pass runs only for boxes whose forward bound is not already below it.
    """
    C = C.to(center.dtype)
    d = d.to(center.dtype)
    if method == "ibp":
        bounds = ibp_bounds(graph, center, gens)
        last = graph.nodes[-1]
        if isinstance(last.op, ops.LinearOp):
            lo, hi = bounds[last.inputs[0]]
            W = C @ last.op.weight.to(C)
            b = d if last.op.bias is None else d + C @ last.op.bias.to(C)
            return _interval_upper(lo, hi, W, b)
        return _interval_upper(*bounds[-1], C, d)
    forms, conc = linear_bounds(graph, center, gens)
    ub = _upper_from_output_form(forms[-1], C, d)
    ub = torch.minimum(ub, _interval_upper(*conc[-1], C, d))
    if isinstance(graph.nodes[-1].op, ops.LinearOp):
        ub = torch.minimum(ub, _fold_last_linear(graph, forms, C, d))
    need = torch.ones(ub.shape[0], dtype=torch.bool, device=ub.device) if threshold is None else \
        ~(ub.amax(1) < threshold)
    if bool(need.all()):
        return torch.minimum(ub, backward_upper(graph, conc, center, gens, C, d))
    if bool(need.any()):
        sub = [None if b is None else (b[0][need], b[1][need]) for b in conc]
        ub[need] = torch.minimum(ub[need], backward_upper(graph, sub, center[need], gens[need], C[need], d[need]))
    return ub


def output_bounds(graph: BoundGraph, center, gens, method="linear"):
    """Concrete lower/upper bounds of the model's outputs over the box."""
    if method == "ibp":
        return ibp_bounds(graph, center, gens)[-1]
    n = center.shape[0]
    out = int(torch.tensor(graph.output_shape).prod()) if graph.output_shape else 1
    eye = torch.eye(out, dtype=center.dtype, device=center.device)
    C = torch.cat([eye, -eye])[None].expand(n, -1, -1)
    ub = spec_upper_bound(graph, center, gens, C, torch.zeros(n, 2 * out, dtype=center.dtype, device=center.device))
    hi, lo = ub[:, :out], -ub[:, out:]
    return lo.reshape(n, *graph.output_shape), hi.reshape(n, *graph.output_shape)
