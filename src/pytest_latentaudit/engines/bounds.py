"""Bound propagation over a ``BoundGraph``: interval (IBP) and linear bounds.

Arithmetic is in the graph's bound dtype (float32 for float32 models, float64 for float64
models), its own rounding counted: every node's bounds are widened by the op's error radius (``op.radius``): the model's own float32 rounding of
that op and ours, so the bounds contain every value the user's float forward pass can
produce on the box, not only the exact real function (docs/engines.md).

The linear engine runs forward mode over the box's k generators (cheap for the k = 1..4
of semantic tests) to get every intermediate bound, intersected with IBP; then it bounds
the spec ``C y + d`` by folding ``C`` into the forward forms of the last layer and by one
backward (CROWN-style) pass from ``C`` using those intermediate bounds, and keeps the
smaller upper bound. All are sound, so their minimum is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from . import ops
from .forms import LinForm
from .graph import BoundGraph
from .ops import gamma, rowdot, tiny, underflow, unit


def _input_slack(center, gens, u_in=2.0 ** -24):
    """The box arrives as float64 centre and generators, rounded to the bound dtype: a
    few ulps of it (and of the input dtype's rounding of a box point, ``u_in``: the model
    is fed ``x0 + V t`` rounded to its input dtype, float16/bfloat16 for a low-precision
    model, whose rounding float32's unit roundoff does not cover) cover that. Below the input
    dtype's normal range that rounding is absolute, not relative (a float32 input of
    ``1.4 * 2**-149`` is ``2**-149``, or 0 where denormals are flushed): its smallest normal
    number is added, whatever the bound dtype (float64 bounds have a far smaller one)."""
    u = max(unit(center.dtype), 2.0 ** -24, u_in)
    return 4 * u * (center.abs() + gens.abs().sum(1)) + max(tiny(center.dtype), underflow(u_in))


def _input_u(graph_or_nodes) -> float:
    """Unit roundoff of the dtype the model is fed (the lowering sets it on the input op)."""
    nodes = getattr(graph_or_nodes, "nodes", graph_or_nodes)
    return float(getattr(nodes[0].op, "u", 2.0 ** -24))


def _input_bounds(center, gens, u_in=2.0 ** -24):
    rad = gens.abs().sum(1)
    e = _input_slack(center, gens, u_in)
    return center - rad - e, center + rad + e


def _as_graph_dtype(graph, *ts):
    dt = graph.dtype or torch.float64
    return tuple(t.to(dt) for t in ts)


def _in_bounds(bounds, node):
    return [bounds[i] for i in node.inputs]


def _widen(lo, hi, R):
    if R is None:
        return lo, hi
    return lo - R, hi + R


def ibp_bounds(graph: BoundGraph, center: torch.Tensor, gens: torch.Tensor, pad=True):
    """Interval bounds of every node (with error radii unless ``pad=False``)."""
    center, gens = _as_graph_dtype(graph, center, gens)
    bounds: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for node in graph.nodes:
        if isinstance(node.op, ops.InputOp):
            bounds.append(_input_bounds(center, gens, node.op.u) if pad else
                          (center - gens.abs().sum(1), center + gens.abs().sum(1)))
            continue
        pre = _in_bounds(bounds, node)
        lo, hi = node.op.ibp(*pre)
        bounds.append(_widen(lo, hi, node.op.radius(pre)) if pad else (lo, hi))
    return bounds


def _form_magnitude(f: LinForm):
    """A bound of ``|x|`` from a form that dominates its concretisation (for radii)."""
    m = torch.maximum(f.lb.abs() + f.lw.abs().sum(1), f.ub.abs() + f.uw.abs().sum(1))
    return (-m, m)


def linear_bounds(graph: BoundGraph, center: torch.Tensor, gens: torch.Tensor, stop_before_last=False,
                  crown=False, precise=False):
    """Forward-mode linear bounds. Returns ``(forms, concrete)`` per node; concrete bounds
    are the intersection of the form's concretisation and IBP, each widened by the
    node's error radius. With ``crown``, the inputs of relaxations behind an earlier
    relaxation are tightened by backward (CROWN) passes on their unstable neurons, where
    forward mode loses tightness layer by layer. With ``stop_before_last`` the output
    node is skipped."""
    center, gens = _as_graph_dtype(graph, center, gens)
    feeds = _feeds_relaxation(graph) if crown else None
    forms: List[Optional[LinForm]] = []
    conc: List[Tuple[torch.Tensor, torch.Tensor]] = []
    charges = StepCharges(graph, conc) if crown else None  # shared by every layer's refinement
    last = len(graph.nodes) - 1
    for j, node in enumerate(graph.nodes):
        op = node.op
        if isinstance(op, ops.InputOp):
            forms.append(LinForm.input(center, gens, _input_slack(center, gens, op.u)))
            conc.append(_input_bounds(center, gens, op.u))
            continue
        if stop_before_last and j == last:
            forms.append(None)
            conc.append(None)
            break
        in_forms = [forms[i] for i in node.inputs]
        pre = _in_bounds(conc, node)
        f = op.linear(*in_forms, pre=pre)
        if op.fan:
            # the model's rounding depends on its inputs' values (inside ``pre``), our own
            # evaluation of the forms on their coefficients: that part takes the forms'
            # magnitudes, which dominate the concrete bounds' (these are intersected with the
            # forms), so one radius covers the forms and the interval bound alike
            R = op.radius(pre, ours_pre=[_form_magnitude(g) for g in in_forms])
            R_ibp = R
            if R is not None:
                f = LinForm(f.lw, f.lb - R, f.uw, f.ub + R)
        else:
            R_ibp = None
        lo_i, hi_i = _widen(*op.ibp(*pre), R_ibp)
        lo_f, hi_f = f.concretize()
        forms.append(f)
        conc.append((torch.maximum(lo_i, lo_f), torch.minimum(hi_i, hi_f)))
        if feeds is not None and feeds[j]:
            conc[j] = _crown_refine(graph, conc, center, gens, j, precise=precise, charges=charges)
    return forms, conc


def _fold_last_linear(graph: BoundGraph, forms, conc, C, d):
    """Upper bound of ``C y + d`` by folding ``C`` into the final dense layer."""
    node = graph.nodes[-1]
    op = node.op
    h = forms[node.inputs[0]]
    W = C @ op.weight.to(C)  # [N, m, hidden]
    b = d if op.bias is None else d + C @ op.bias.to(C)
    Wp, Wn = W.clamp(min=0), W.clamp(max=0)
    coef = torch.einsum("nmh,nkh->nmk", Wp, h.uw) + torch.einsum("nmh,nkh->nmk", Wn, h.lw)
    const = rowdot(Wp, h.ub) + rowdot(Wn, h.lb) + b
    R = op.radius([conc[node.inputs[0]]])
    mag = _form_magnitude(h)[1]
    slack = _weighted(C, R) + \
        gamma(W.shape[-1] + h.k + 6, unit(W.dtype)) * (rowdot(W.abs(), mag) + b.abs()) + \
        _fold_underflow(C, mag, h.k)
    return const + coef.abs().sum(-1) + slack


def _fold_underflow(C, mag, k):
    """``[N, 1]``: what ``W = C W_last`` (and ``C b``) lose below the normal range of their
    dtype, as in a backward step (``_underflow_charge``): each entry sums ``out`` products of
    ``C``'s row with the layer's weights, off by ``(2 out + 4) eta`` absolutely, and multiplies
    an input of magnitude ``mag``; the products with the forms' coefficients and constants add
    ``eta`` each. A spec row of ``1e-20`` on a layer of weights ``1e-28`` made every ``W``
    entry 0, and the fold's bound 8e-13 for ``C y`` of 2.6e-8 (inputs near ``1e38``)."""
    eta = underflow(unit(C.dtype))
    out = C.shape[-1]
    n = mag.shape[0]
    tot = mag.reshape(n, -1).double().sum(1, keepdim=True)
    return (eta * (2 * out + 4) * (tot + 1) + eta * 2 * (k + 2) * mag[0].numel()) * (1 + 2.0 ** -40)


def _weighted(C, R):
    """``|C| . R`` per row (0 without a radius)."""
    if R is None:
        return torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)
    return rowdot(C.abs(), R.reshape(R.shape[0], -1))


def _upper_from_output_form(form: LinForm, C, d):
    n = C.shape[0]
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    coef = torch.einsum("nmo,nko->nmk", Cp, form.uw.reshape(n, form.k, -1)) + \
        torch.einsum("nmo,nko->nmk", Cn, form.lw.reshape(n, form.k, -1))
    const = rowdot(Cp, form.ub.reshape(n, -1)) + rowdot(Cn, form.lb.reshape(n, -1)) + d
    mag = _form_magnitude(form)[1].reshape(n, -1)
    slack = gamma(C.shape[-1] + form.k + 6, unit(C.dtype)) * (rowdot(C.abs(), mag) + d.abs()) + \
        2 * (C.shape[-1] * (form.k + 2) + 2) * underflow(unit(C.dtype))  # products below the normal range
    return const + coef.abs().sum(-1) + slack


def _interval_upper(lo, hi, C, d):
    n = C.shape[0]
    lo, hi = lo.reshape(n, -1), hi.reshape(n, -1)
    val = rowdot(C.clamp(min=0), hi) + rowdot(C.clamp(max=0), lo) + d
    mag = torch.maximum(lo.abs(), hi.abs())
    return val + gamma(C.shape[-1] + 6, unit(C.dtype)) * (rowdot(C.abs(), mag) + d.abs()) + \
        2 * (C.shape[-1] + 2) * underflow(unit(C.dtype))  # products below the normal range


def radii(graph: BoundGraph, conc) -> List[Optional[torch.Tensor]]:
    """Error radius of every node given the concrete bounds of its inputs."""
    return [None if not node.inputs else node.op.radius(_in_bounds(conc, node)) for node in graph.nodes]


def backward_bound(graph: BoundGraph, conc, center, gens, start: int, A_start, d, fast=False, forms=None,
                   threshold=None, precise=False, charges: Optional["StepCharges"] = None, rows=slice(None)):
    """CROWN-style backward pass: an upper bound of ``A_start . x_start + d`` over the box,
    for ``A_start`` ``[n, m, *S_start]`` (rows per box) and ``d`` ``[n, m]``, using the
    intermediate bounds ``conc`` of the nodes before ``start``.

    Each node's error radius enters as ``|A_j| . R_j``: the rounding of the model and of
    our own products ``A W`` (``|A W - fl(A W)| |h| <= gamma |A| |W| |h|``, inside R).
    On a float32 graph the coefficients ``A`` travel in float32 (twice the speed, half the
    memory); each op then adds ``op.our_radius`` for float32 rounding, and constants are
    summed in float64. Only there (``fast`` is kept for callers and decides nothing):
    ``our_radius`` counts rounding relative to each number, which holds only inside
    float32's normal range, and a float64 graph's weights and slopes can lie outside it (a
    float64 model's ``1 / h`` at ``h = 5e30`` has slope ``-4e-62``, which float32 flushes to
    0: that term of the bound was lost).

    ``precise``: float64 coefficients on a float32 graph too. Our rounding of ``A W`` then
    costs ``2^-53`` per product instead of ``2^-24``: in float32 it is as large as the model's
    own rounding, and through CROWN's intermediate bounds it compounds (the 5x512 head at
    eps 0.5, k 4: 136 of 256 boxes verified with float32 coefficients, 156 with float64, 167
    with no rounding counted at all), at about twice the time.

    With ``forms`` (the forward forms of the nodes) and ``threshold`` (``[n]`` per box or
    ``[n, m]`` per row), before each costly step (an affine layer) the pass also bounds its
    rows through the forms of the nodes it has reached (a cut of the graph, ``_cut_upper``);
    a row whose bound is below its threshold there leaves the pass, so the layers nearer the
    input, where forward forms are still tight, are paid only for the rows that need them.
    Every row's result is the smallest bound it got (a cut's or the full pass's).

    ``charges`` (a ``StepCharges`` of the bounds that ``conc[rows]`` slices): each step's
    rounding charge taken from it instead of computed here; not with cuts, which drop boxes."""
    n, m = A_start.shape[:2]
    nodes = graph.nodes
    # float32 coefficients only for a float32 graph (its numbers are float32 already), and
    # where float32 products are full float32 (no TF32/bfloat16); ``precise``: float64 ones
    fast = graph.dtype == torch.float32 and not graph.reduced_float32 and not precise
    A: List[Optional[torch.Tensor]] = [None] * len(nodes)
    A[start] = A_start.reshape(n * m, *nodes[start].shape)
    if fast:
        A[start] = A[start].float()
    elif precise:
        A[start] = A[start].double()
    const = d.reshape(n * m).to(torch.float64).clone()  # constants are summed in float64
    const_abs = const.abs()
    cuts = forms is not None and threshold is not None
    if cuts and charges is not None:
        raise ValueError("backward_bound: charges are sliced by box, and cuts drop boxes")
    if cuts:
        dev = A_start.device
        out = torch.full((n, m), torch.inf, dtype=torch.float64, device=dev)
        best = torch.full((n, m), torch.inf, dtype=torch.float64, device=dev)
        thr = (threshold[:, None].expand(n, m) if threshold.dim() == 1 else threshold).to(torch.float64)
        alive = torch.arange(n, device=dev)  # the boxes still in the pass
        pos = torch.arange(m, device=dev).expand(n, m)  # the rows still in the pass, per box
    for j in range(start, 0, -1):
        Aj = A[j]
        if Aj is None:
            continue
        node = nodes[j]
        if cuts and j < start and isinstance(node.op, ops.AffineOp) and _worth_a_cut(node.op):
            u = _cut_upper(nodes, A, forms, const, const_abs, n, m)
            if u is not None:
                best = torch.minimum(best, u)
                left = ~(best < thr)
                rem = left.sum(1)
                m2 = int(rem.max())
                keep = rem > 0
                n2 = int(keep.sum())
                if m2 == 0 or (4 * m2 <= 3 * m) or (16 * n2 <= 15 * n):
                    _record(out, alive, pos, best)
                    if m2 == 0:
                        return out
                    # the rows still open first in each box, the boxes with none left dropped
                    order = torch.argsort(left.to(torch.int8), dim=1, descending=True, stable=True)[:, :m2][keep]
                    A = [None if a is None else _rows(a, n, m, keep, order) for a in A]
                    const = const.reshape(n, m)[keep].gather(1, order).reshape(-1)
                    const_abs = const_abs.reshape(n, m)[keep].gather(1, order).reshape(-1)
                    best, thr, pos = (x[keep].gather(1, order) for x in (best, thr, pos))
                    conc = [None if b is None else (b[0][keep], b[1][keep]) for b in conc]
                    forms = _forms_of(forms, keep)
                    center, gens, alive = center[keep], gens[keep], alive[keep]
                    n, m = n2, m2
                    Aj = A[j]
        pre = _in_bounds(conc, node)
        if charges is not None:
            Rf, e = charges.step(j, Aj.dtype, int(Aj[0].numel()), rows)
        else:
            Rf, e = step_charge(node.op, pre, Aj.dtype, int(Aj[0].numel()), n)
        if Rf is not None:
            # |A| R = |A R| as R >= 0: one product, in place abs, a sum (no |A| kept); a sum of
            # non-negative terms in A's dtype, and R rounded to it (rounded up by the factor)
            s = (Aj.reshape(n, m, -1) * Rf[:, None, :]).abs_().sum(-1).reshape(-1).double()
            ua = unit(Aj.dtype)
            s = s * (1 + gamma(Rf.shape[1] + 4, ua)) * (1 + 2 * ua)
            const = const + s
            const_abs = const_abs + s
        in_shapes = [nodes[i].shape for i in node.inputs]
        A_in, c = node.op.backward(Aj, pre=pre, in_shapes=in_shapes)
        if c is not None:
            c = c.double()
            const, const_abs = const + c, const_abs + c.abs()
        if e is not None:
            e = e.repeat_interleave(m)
            const, const_abs = const + e, const_abs + e
        for i, a in zip(node.inputs, A_in):
            A[i] = a if A[i] is None else A[i] + a
        A[j] = None
    full = _input_step(nodes, A[0], const, const_abs, center, gens, n, m)
    if not cuts:
        return full
    _record(out, alive, pos, torch.minimum(best, full))
    return out


def step_charge(op, pre, dtype, d_out: int, n: int):
    """``(R, e)``: what a backward step over ``op`` (inputs in ``pre``, ``n`` boxes) with
    coefficients of ``dtype`` charges: ``R`` ``[n, D_in]`` in ``dtype`` (or None), to be
    weighted by ``|A|``, is the model's rounding and ours (the products of the step in
    ``dtype``: each entry of ``A_in`` sums ``d_out`` of them), whatever dtype the forward
    bounds were computed in; ``e`` ``[n]`` (or None) is the underflow charge per row
    (``_underflow_charge``). ``R`` rounded to ``dtype`` may have rounded down: the pass's
    ``|A| R`` sum is scaled up by ``(1 + 2u)`` for it."""
    R = op.radius(pre, ours=False)
    Ro = None
    if op.rounding:
        Ro = op.our_radius(pre, unit(dtype), d_out)
        R = Ro if R is None else (R if Ro is None else R + Ro)
    if R is not None:
        R = R.reshape(n, -1).to(dtype)
    e = _underflow_charge(unit(dtype), d_out, pre, n) if op.rounding and Ro is not None else None
    return R, e


class StepCharges:
    """Each node's ``step_charge`` for every box of one set of intermediate bounds, computed
    once and sliced per chunk of boxes. CROWN's refinement runs a backward pass per layer and
    per chunk of boxes over the same earlier nodes, whose bounds no longer change: computing
    their charges in every pass took an eighth of the 5x512 head's CROWN time, in small
    serial ops. An entry is remembered with the bound tensors it was computed from (identity
    and version counters), so bounds replaced or changed in place are charged anew."""

    def __init__(self, graph: BoundGraph, conc):
        self.graph, self.conc = graph, conc
        self._memo = {}

    def _full(self, key, j, compute):
        pre = _in_bounds(self.conc, self.graph.nodes[j])
        ts = [t for b in pre for t in b]
        v = ops.versions(*ts)
        hit = self._memo.get(key)
        if hit is not None and v is not None and hit[1] == v and all(a is b for a, b in zip(hit[0], ts)):
            return hit[2]
        out = compute(pre)
        self._memo[key] = (ts, v, out) if v is not None else None
        return out

    def step(self, j: int, dtype, d_out: int, rows=slice(None)):
        """``step_charge`` of node ``j`` for the boxes ``rows``."""
        n = self.conc[0][0].shape[0]
        R, e = self._full(("step", j, dtype, d_out), j,
                          lambda pre: step_charge(self.graph.nodes[j].op, pre, dtype, d_out, n))
        return (None if R is None else R[rows]), (None if e is None else e[rows])

    def model(self, j: int, rows=slice(None)):
        """``op.radius(pre, ours=False)`` of node ``j`` (the model's own rounding) for ``rows``."""
        R = self._full(("model", j), j, lambda pre: self.graph.nodes[j].op.radius(pre, ours=False))
        return None if R is None else R[rows]


def _underflow_charge(u, d_out, pre, n):
    """``[n]``: the absolute rounding of one backward step in coefficients of unit roundoff
    ``u`` below that dtype's normal range, which ``our_radius`` (relative to each number)
    does not count. A product or sum whose result is subnormal, or flushed to 0, is off by up
    to the smallest normal number ``eta``, however small its factors were; an entry of
    ``A_in`` sums at most ``d_out`` products (each input element is read by at most the
    ``d_out`` output elements), so it is off by ``(2 d_out + 4) eta``, and that error
    multiplies the input's value: ``(2 d_out + 4) eta sum |x|`` per row, with ``|x|`` from the
    inputs' bounds, and ``(4 d_out + 8) eta`` for the constant's products and the ``|A| R``
    sum. Negligible on any ordinary network (1e-29 for 1000 inputs of size 1000 in
    float32), but without it a float32 pass whose coefficients fall below ``2^-126`` in
    front of inputs near ``1e38`` loses their contribution: ``(W3 W2) x`` with weights
    ``1e-23`` and ``x`` 1e38 gave an upper bound of 3e-8 for outputs of 6.5e-4."""
    eta = underflow(u)
    tot = torch.zeros(n, dtype=torch.float64, device=pre[0][0].device) if pre else 0.0
    for b in pre:
        # an input element without a finite bound adds nothing here: every op's our_radius is
        # then infinite (or nan, no bound) already, except a curved op's, whose slopes are 0
        # there, so its products with it are exact zeros (exp of [-inf, 0] keeps its bound)
        m = ops._mag(b).reshape(n, -1).double()
        tot = tot + torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device)).sum(1)
    return (eta * (2 * d_out + 4) * tot + eta * (4 * d_out + 8)) * (1 + 2.0 ** -40)


#: a cut costs about ten small tensor ops: before an affine layer of fewer weights than this
#: (a 6x50 network's) the layer itself costs less than the cut, which is then skipped
CUT_MIN_WEIGHTS = 128 * 128


def _worth_a_cut(op) -> bool:
    w = getattr(op, "weight", None)
    return w is None or w.numel() >= CUT_MIN_WEIGHTS


def _first_cut_runs(graph: BoundGraph) -> bool:
    """Whether a backward pass from the output cuts before the first affine layer it meets."""
    for node in reversed(graph.nodes[:-1]):
        if isinstance(node.op, ops.AffineOp):
            return _worth_a_cut(node.op)
    return False


def _rows(a, n, m, keep, order):
    """Rows ``order`` (``[n2, m2]``) of the boxes ``keep`` of ``a`` ``[n * m, *S]``."""
    S = a.shape[1:]
    a = a.reshape(n, m, -1)[keep]
    return a.gather(1, order[:, :, None].expand(-1, -1, a.shape[2])).reshape(-1, *S)


def _record(out, alive, pos, bound):
    """``out[box, row] = min(out, bound)`` for the rows ``pos`` of the boxes ``alive``."""
    sub = out[alive]
    out[alive] = sub.scatter_reduce(1, pos, bound, "amin")


def _input_step(nodes, A0, const, const_abs, center, gens, n, m):
    """The last step of a backward pass, at the input, in float64: exact products of the
    float32 values, few roundings."""
    A0 = A0.reshape(n, m, -1).double()
    k = gens.shape[1]
    c0 = center.reshape(n, -1).double()
    G0 = gens.reshape(n, k, -1).double()
    val = rowdot(A0, c0) + const.reshape(n, m)
    spread = torch.einsum("nmd,nkd->nmk", A0, G0).abs().sum(-1)
    e_in = _input_slack(center, gens, _input_u(nodes)).reshape(n, -1).double()  # the input's rounding slack
    absA = A0.abs()
    mag = rowdot(absA, c0.abs()) + torch.einsum("nmd,nkd->nmk", absA, G0.abs()).sum(-1) + \
        const_abs.reshape(n, m)
    slack = rowdot(absA, e_in) + \
        gamma(A0.shape[-1] + k + 2 * len(nodes) + 6, unit(torch.float64)) * mag + \
        4 * (A0.shape[-1] * (k + 2) + 2) * underflow(unit(torch.float64))  # float64 products below its normal range
    return val + spread + slack


def backward_upper(graph: BoundGraph, conc, center, gens, C, d, forms=None, threshold=None, precise=False):
    """Upper bound of every row of ``C y + d`` by a backward pass from the output."""
    return backward_bound(graph, conc, center, gens, len(graph.nodes) - 1, C, d, forms=forms, threshold=threshold,
                          precise=precise)


def _cut_upper(nodes, A, forms, const, const_abs, n, m):
    """Upper bound of ``sum_i A_i . x_i + const`` over the box, for the nodes ``i`` with
    pending coefficients, through their forward forms (``lw s + lb <= x_i <= uw s + ub``
    for every ``s`` in the unit box). Per ``s``, ``a.x <= a.mid(s) + |a|.rad(s)`` with
    ``mid, rad`` the forms' midpoint and half-gap (affine in ``s``); the terms are summed
    per ``s`` and then maximised over ``s``. ``None`` when a pending node has no form.

    The products run in the coefficients' dtype (float32 on a float32 graph: a cut only
    decides which rows may leave the pass early, so a few ulps of looseness cost little).
    Each of the ``2k + 2`` dot products (length ``D``, any order) and the rounding of mid
    and rad is within ``gamma_{D+1} |a| . M`` of exact, ``M`` the forms' absolute sum (it
    dominates every column); ``|a| . M`` itself is computed to within ``2 gamma``: so
    ``(2k + 4) gamma_{D+2k+8}`` of the computed ``|a| . M`` covers them all; underflow adds
    ``2 (2k + 4)`` smallest normals per term (each of the ``2k + 4`` dot products, its products
    and its sums flushed or not); the float64 sums of the constants add their own ``gamma``."""
    val = const.reshape(n, m).clone()
    cabs = const_abs.reshape(n, m)
    coef, mag = None, None
    length = 0
    for i, Ai in enumerate(A):
        if Ai is None:
            continue
        f = forms[i]
        if f is None:
            return None
        k = f.k
        a = Ai.reshape(n, m, -1)
        dt = a.dtype
        uw, lw = f.uw.reshape(n, k, -1).to(dt), f.lw.reshape(n, k, -1).to(dt)
        ub, lb = f.ub.reshape(n, 1, -1).to(dt), f.lb.reshape(n, 1, -1).to(dt)
        mid = torch.cat([ub + lb, uw + lw], 1) / 2  # [n, 1 + k, D]: constant, then per generator
        rad = torch.cat([(ub - lb) / 2, (uw - lw) / 2, ub.abs() + lb.abs() + (uw.abs() + lw.abs()).sum(1, keepdim=True)],
                        1)  # [n, 2 + k, D]: half-gaps, then M
        am = torch.bmm(a, mid.transpose(1, 2)).double()  # [n, m, 1 + k]
        ar = torch.bmm(a.abs(), rad.transpose(1, 2)).double()  # [n, m, 2 + k]
        c_i = am[..., 1:] + ar[..., 1:-1]
        coef = c_i if coef is None else coef + c_i
        val = val + am[..., 0] + ar[..., 0]
        mag = ar[..., -1] if mag is None else mag + ar[..., -1]
        length += a.shape[-1] + k
    if coef is None:
        return None
    val = val + coef.abs().sum(-1)
    kk = coef.shape[-1]
    return val + (2 * kk + 4) * gamma(length + 2 * kk + 8, unit(dt)) * mag + 2 * (2 * kk + 4) * length * tiny(dt) + \
        gamma(2 * len(nodes) + 12, unit(torch.float64)) * (cabs + val.abs() + mag)


def _round_out(lo, hi, dtype):
    """``lo``/``hi`` in ``dtype``, rounded outward (a lower bound never rounds up)."""
    lo_r, hi_r = lo.to(dtype), hi.to(dtype)
    if dtype == lo.dtype:
        return lo_r, hi_r
    lo_r = torch.where(lo_r.to(lo.dtype) > lo, torch.nextafter(lo_r, torch.full_like(lo_r, -torch.inf)), lo_r)
    hi_r = torch.where(hi_r.to(hi.dtype) < hi, torch.nextafter(hi_r, torch.full_like(hi_r, torch.inf)), hi_r)
    return lo_r, hi_r


def alpha_crown(graph: BoundGraph, conc, center, gens, C, d, steps: int = 20, lr: float = 0.25,
                deadline: float = float("inf"), threshold=None):
    """alpha-CROWN on the final spec bound: the lower slopes of unstable ReLUs become
    parameters (one per box, spec row and neuron) optimised by Adam to lower the backward
    bound, intermediate bounds fixed. Every iterate is a sound bound, so the result is
    the elementwise minimum over the iterations. Stops early at ``deadline`` or when every
    box is below ``threshold``."""
    import time

    center, gens = _as_graph_dtype(graph, center, gens)
    n, m = C.shape[:2]
    relus = [j for j, nd in enumerate(graph.nodes) if isinstance(nd.op, ops.ReLUOp)]
    params = {}
    for j in relus:
        lo, hi = conc[graph.nodes[j].inputs[0]]
        al0 = (hi > -lo).float().reshape(n, 1, -1)  # start from the usual choice
        params[j] = torch.logit(al0.expand(n, m, -1).clamp(0.05, 0.95)).clone().requires_grad_(True)
    # the plain CROWN bound is the first iterate (the sigmoid never reaches its 0/1 slopes)
    best = backward_bound(graph, conc, center, gens, len(graph.nodes) - 1, C, d)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    try:
        for _ in range(steps):
            for j in relus:
                graph.nodes[j].op.alpha_slope = torch.sigmoid(params[j])
            with torch.enable_grad():
                ub = backward_bound(graph, conc, center, gens, len(graph.nodes) - 1, C, d)
                best = torch.minimum(best, ub.detach())
                if threshold is not None and bool((best.amax(1) < threshold).all()):
                    break
                if time.perf_counter() > deadline:
                    break
                opt.zero_grad()
                ub.sum().backward()
            opt.step()
    finally:
        for j in relus:
            graph.nodes[j].op.alpha_slope = None
    return best


#: the ops whose linear step is a relaxation that tighter input bounds tighten
RELAXING = (ops.ActivationOp, ops.MaxPoolOp, ops.BilinearOp)


def _feeds_relaxation(graph: BoundGraph) -> List[bool]:
    """Nodes whose bounds decide a relaxation (inputs of activations and max pooling) and
    that lie behind an earlier relaxation (before it, forward mode is already exact)."""
    relaxing = [isinstance(nd.op, RELAXING) for nd in graph.nodes]
    behind = [False] * len(graph.nodes)
    for j, nd in enumerate(graph.nodes):
        behind[j] = any(behind[i] or relaxing[i] for i in nd.inputs)
    feeds = [False] * len(graph.nodes)
    for j, nd in enumerate(graph.nodes):
        if relaxing[j]:
            for i in nd.inputs:
                feeds[i] = behind[i]
    # a node that only moves its input's elements (an expand, a reshape, a slice) is refined
    # through that input: a backward pass from one of its elements is the pass from the element
    # it copies, so the bounds are the same, and the input has each element once (a
    # LayerNorm's rsqrt is one number per row, its expand one per feature)
    for j in range(len(graph.nodes) - 1, 0, -1):
        nd = graph.nodes[j]
        if feeds[j] and _moves(nd.op) and len(nd.inputs) == 1:
            feeds[j], feeds[nd.inputs[0]] = False, True
    return feeds


def _moves(op) -> bool:
    """A linear map that only moves (copies, drops, pads with 0) its input's elements."""
    return isinstance(op, ops.LinearMapOp) and op.fan == 0


def _crown_refine(graph: BoundGraph, conc, center, gens, j, precise=False, charges=None):
    """``_crown_refine_all`` in chunks of boxes whose backward rows stay near
    ``REFINE_CHUNK`` numbers on a CPU: the rows of a wide layer for every box are hundreds of
    megabytes, which the allocator maps fresh and the kernel faults in page by page for
    every product (a fifth of the time on the 5x512 head, and serial in the kernel);
    chunks a few megabytes large are reused from the heap. A GPU takes one chunk."""
    lo = conc[j][0]
    n = lo.shape[0]
    charges = StepCharges(graph, conc) if charges is None else charges
    if lo.device.type != "cpu" or n <= 1:
        return _crown_refine_all(graph, conc, center, gens, j, precise, charges)
    width = lo[0].numel() * max((conc[i][0][0].numel() for i in graph.nodes[j].inputs), default=1)
    step = max(1, REFINE_CHUNK // max(1, width))
    if n <= step:
        return _crown_refine_all(graph, conc, center, gens, j, precise, charges)
    parts = [_crown_refine_all(graph, [(a[s:s + step], b[s:s + step]) for a, b in conc[:j + 1]],
                               center[s:s + step], gens[s:s + step], j, precise, charges, slice(s, s + step))
             for s in range(0, n, step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


#: numbers per chunk of CROWN's backward rows on a CPU (``_crown_refine``)
REFINE_CHUNK = 1 << 20


def _crown_refine_all(graph: BoundGraph, conc, center, gens, j, precise=False, charges=None, rows=slice(None)):
    """Tighten node ``j``'s bounds on its unstable neurons (lower < 0 < upper) with a
    backward pass per neuron, over the bounds of the nodes before it. With many unstable
    neurons (``UPPER_FIRST_MIN``) that only (leaky) ReLUs read, upper bounds come first: a
    neuron they show dead needs no lower bound (its relaxation is exact whatever its lower
    bound), so the lower pass takes only the others (about a quarter fewer rows on the deep
    layers of a wide head). With few, one pass bounds both sides: on small networks a second
    pass costs more in per-layer overhead than it saves. ``charges``: a ``StepCharges`` of
    the bounds that ``conc`` is the slice ``rows`` of (every box's when None)."""
    lo, hi = conc[j]
    n = lo.shape[0]
    flo, fhi = lo.reshape(n, -1), hi.reshape(n, -1)
    uns = _loose(graph, lo, hi, j).reshape(n, -1)
    U = int(uns.sum(1).max()) if uns.numel() else 0
    if U == 0:
        return lo, hi
    order = torch.argsort(uns.to(torch.int8), dim=1, descending=True, stable=True)[:, :U]  # unstable first
    valid = uns.gather(1, order)
    if U < UPPER_FIRST_MIN or not _only_relus_read(graph, j):
        # few neurons (small networks, shallow layers): one pass for both sides costs less
        # than two passes' per-layer overhead
        ones = torch.ones(U, dtype=lo.dtype, device=lo.device)
        ub = _neuron_bounds(graph, conc, center, gens, j, torch.cat([order, order], 1),
                            torch.cat([valid, valid], 1), torch.cat([ones, -ones]), precise, charges, rows)
        new_lo, new_hi = _round_out(-ub[:, U:], ub[:, :U], lo.dtype)
        fhi = _tighten(fhi, order, valid, new_hi, upper=True)
        flo = _tighten(flo, order, valid, new_lo, upper=False)
        return flo.reshape(lo.shape), fhi.reshape(hi.shape)
    ub = _neuron_bounds(graph, conc, center, gens, j, order, valid, 1.0, precise, charges, rows)
    _, new_hi = _round_out(ub, ub, lo.dtype)
    fhi = _tighten(fhi, order, valid, new_hi, upper=True)
    need = valid & (new_hi > 0)
    U2 = int(need.sum(1).max())
    if U2 == 0:
        return flo.reshape(lo.shape), fhi.reshape(hi.shape)
    pick = torch.argsort(need.to(torch.int8), dim=1, descending=True, stable=True)[:, :U2]
    order, need = order.gather(1, pick), need.gather(1, pick)
    ub = _neuron_bounds(graph, conc, center, gens, j, order, need, -1.0, precise, charges, rows)  # bounds of -x
    new_lo, _ = _round_out(-ub, -ub, lo.dtype)
    flo = _tighten(flo, order, need, new_lo, upper=False)
    return flo.reshape(lo.shape), fhi.reshape(hi.shape)


def _loose(graph: BoundGraph, lo, hi, j):
    """The neurons of node ``j`` that some relaxation reading it relaxes inexactly (``op.loose``:
    a ReLU's unstable neurons, every neuron of positive width under a smooth activation, a
    square or a product, those around a kink of a piecewise-linear one); a reader without a
    relaxation adds none."""
    out = _loose_for(graph, lo, hi, j)
    return (lo < 0) & (hi > 0) if out is None else out


def _loose_for(graph: BoundGraph, lo, hi, j):
    """``_loose`` of the relaxations reading node ``j``, directly or through ops that move its
    elements (their masks pulled back to the elements they copy); None where none does."""
    out = None
    for r, nd in enumerate(graph.nodes):
        if j not in nd.inputs:
            continue
        if isinstance(nd.op, RELAXING):
            m = nd.op.loose(lo, hi)
        elif _moves(nd.op) and len(nd.inputs) == 1:
            m_r = _loose_for(graph, nd.op.fn(lo), nd.op.fn(hi), r)
            if m_r is None:
                continue
            m = ops._vjp(nd.op.fn, m_r.to(lo.dtype), lo.shape[1:]) > 0
        else:
            continue
        out = m if out is None else out | m
    return out


def _tighten(flat, order, valid, new, upper: bool):
    """``flat`` ``[n, D]`` with ``new`` ``[n, U]`` at positions ``order`` where ``valid``:
    the smaller of the two for an upper bound, the larger for a lower one."""
    fill = torch.full_like(new, torch.inf if upper else -torch.inf)
    return flat.scatter_reduce(1, order, torch.where(valid, new, fill), "amin" if upper else "amax")


#: below this many unstable neurons in a node, CROWN bounds both sides in one pass
UPPER_FIRST_MIN = 64


def _only_relus_read(graph: BoundGraph, j: int) -> bool:
    readers = [nd for nd in graph.nodes if j in nd.inputs]
    return bool(readers) and all(isinstance(nd.op, ops.ReLUOp) for nd in readers)


def _neuron_bounds(graph: BoundGraph, conc, center, gens, j, order, valid, s, precise=False, charges=None,
                   rows=slice(None)):
    """Upper bounds of ``s * x_i`` for the neurons ``order`` of node ``j`` (rows where
    ``valid`` is false are zero rows, their bounds unused), by one backward pass; ``s`` is
    +-1, or a tensor of signs per row."""
    n, U = order.shape
    lo = conc[j][0]
    sign = valid.to(lo.dtype) * s
    op = graph.nodes[j].op
    if isinstance(op, ops.DenseOp) and len(graph.nodes[j].shape) == 1:
        # the first backward step of a one-hot row is a row of W: gather it instead of a
        # product (exact), with the bias and the node's own error radius as constants
        A = op.weight[order].mul_(sign[:, :, None].to(op.weight.dtype))  # [n, U, D_in]; the gather is a copy
        R = op.radius(_in_bounds(conc, graph.nodes[j]), ours=False) if charges is None else charges.model(j, rows)
        const = torch.zeros(n, U, dtype=torch.float64, device=lo.device) if R is None else \
            R.gather(1, order).double() * sign.double().abs()  # no radius when rounding is off
        if op.bias is not None:
            const = const + op.bias[order].double() * sign.double()
        return _no_nan(backward_bound(graph, conc, center, gens, graph.nodes[j].inputs[0], A, const, precise=precise,
                                      charges=charges, rows=rows))
    D = lo.reshape(n, -1).shape[1]
    A = torch.zeros(n, U, D, dtype=lo.dtype, device=lo.device).scatter_(2, order[:, :, None], sign[:, :, None])
    zeros = torch.zeros(n, U, dtype=torch.float64, device=lo.device)
    return _no_nan(backward_bound(graph, conc, center, gens, j, A.reshape(n, U, *graph.nodes[j].shape), zeros,
                                  precise=precise, charges=charges, rows=rows))


@dataclass
class StageCount:
    """How many boxes each costly stage of ``spec_upper_bound`` bounded (a count of the
    work, not of the clock: branch and bound sizes its rounds by it)."""

    crown: int = 0


def _no_nan(u):
    """A bound that came out nan (``0 * inf`` where an op's bound is infinite: a log of an
    interval reaching 0, an overflow) is no bound: inf, so the others' minimum is kept."""
    return torch.nan_to_num(u, nan=torch.inf)


def spec_upper_bound(graph: BoundGraph, center, gens, C, d, method="linear", threshold=None, crown=None,
                     count: Optional[StageCount] = None, precise: bool = False):
    """Sound upper bound of every row of ``C y + d`` over the box; ``[N, m]``.

    ``method``: ``"ibp"`` (intervals only), ``"linear"`` (forward forms, folded spec and a
    backward pass; the minimum of all of them) or ``"crown"`` (the same, then for boxes
    still open CROWN intermediate bounds on unstable neurons and another backward pass:
    tighter, and much costlier per box). ``crown`` overrides the method's choice. With
    ``threshold`` (``[N]``), each costlier stage runs only for boxes not already below it.
    ``count`` (a ``StageCount``) is told how many boxes reached the CROWN stage.
    ``precise``: the CROWN stage's backward passes in float64 coefficients (``backward_bound``).
    """
    dt = graph.dtype or torch.float64
    center, gens = center.to(dt), gens.to(dt)
    C, d, C_err = _spec_in(C, d, dt)
    if crown is None:
        crown = method == "crown"
    last = graph.nodes[-1]
    dense_last = isinstance(last.op, ops.DenseOp) and len(last.shape) == 1
    if method == "ibp":
        bounds = ibp_bounds(graph, center, gens)
        ub = _no_nan(_interval_upper(*bounds[-1], C, d))
        if dense_last:
            lo, hi = bounds[last.inputs[0]]
            W = C @ last.op.weight.to(C)
            b = d if last.op.bias is None else d + C @ last.op.bias.to(C)
            R = last.op.radius([bounds[last.inputs[0]]])
            fold = _interval_upper(lo, hi, W, b) + _weighted(C, R) + \
                _fold_underflow(C, torch.maximum(lo.abs(), hi.abs()), 0)
            ub = torch.minimum(ub, _no_nan(fold))
        return ub.double() + _spec_residual(C_err, bounds[-1])
    forms, conc = linear_bounds(graph, center, gens)
    residual = _spec_residual(C_err, conc[-1])
    ub = _no_nan(_upper_from_output_form(forms[-1], C, d))
    ub = torch.minimum(ub, _no_nan(_interval_upper(*conc[-1], C, d)))
    # the stages below bound the rounded spec: it must beat the threshold by the residual
    thr = None if threshold is None else (threshold.double() - residual.amax(1)).to(dt)
    if dense_last and (thr is None or not _first_cut_runs(graph)):
        # with a threshold the backward pass's first cut gives a bound of this kind, and
        # only for the boxes that need it
        ub = torch.minimum(ub, _no_nan(_fold_last_linear(graph, forms, conc, C, d)))
    ub = ub.double()  # backward passes return float64

    def open_(u):
        return torch.ones(u.shape[0], dtype=torch.bool, device=u.device) if thr is None else \
            ~(u.amax(1) < thr.double())

    need = open_(ub)
    if bool(need.all()):  # every box: no copies of every node's bounds and forms
        ub = torch.minimum(ub, _no_nan(backward_upper(graph, conc, center, gens, C, d, forms=forms, threshold=thr)))
    elif bool(need.any()):
        sub = [(b[0][need], b[1][need]) for b in conc]
        ub[need] = torch.minimum(ub[need], _no_nan(backward_upper(graph, sub, center[need], gens[need], C[need],
                                                                  d[need], forms=_forms_of(forms, need),
                                                                  threshold=_at(thr, need))))
    need = open_(ub) if crown else torch.zeros_like(need)
    if bool(need.any()):
        # what stays open: CROWN intermediate bounds on the unstable neurons, then backward
        if count is not None:
            count.crown += int(need.sum())
        forms2, conc2 = linear_bounds(graph, center[need], gens[need], crown=True, precise=precise)
        ub[need] = torch.minimum(ub[need], _no_nan(backward_upper(graph, conc2, center[need], gens[need], C[need],
                                                                  d[need], forms=forms2, threshold=_at(thr, need),
                                                                  precise=precise)))
    return ub + residual


def _spec_in(C, d, dt):
    """The spec rows in the bound dtype, and what that rounding costs. ``d`` is rounded up
    (a larger offset bounds the row above); ``C`` to nearest, its error ``|C - C_dt|``
    (None where every entry is exact, as in the 0/+-1 rows of class and range specs) is
    charged by ``_spec_residual``: ``C y <= C_dt y + |C - C_dt| |y|``."""
    C64, d64 = C.double(), d.double()
    if dt == torch.float64:
        return C64, d64, None
    Cl, dl = C64.to(dt), d64.to(dt)
    dl = torch.where(dl.double() < d64, torch.nextafter(dl, torch.full_like(dl, torch.inf)), dl)
    err = (C64 - Cl.double()).abs()
    return Cl, dl, (err if bool((err > 0).any()) else None)


def _spec_residual(C_err, out_bounds):
    """``|C - C_dt| . max|y|`` per row over the output's bounds (float64, rounded up)."""
    lo, hi = out_bounds
    n = lo.shape[0]
    if C_err is None:
        return torch.zeros(n, 1, dtype=torch.float64, device=lo.device)
    mag = torch.maximum(lo.abs(), hi.abs()).reshape(n, -1).double()
    return rowdot(C_err, mag) * (1 + 2.0 ** -40) + 2.0 ** -1000


def _forms_of(forms, idx):
    """The forward forms of the boxes ``idx`` (a mask or indices)."""
    return [None if f is None else LinForm(f.lw[idx], f.lb[idx], f.uw[idx], f.ub[idx], exact=f.exact) for f in forms]


def _at(t, idx):
    return None if t is None else t[idx]


def output_bounds(graph: BoundGraph, center, gens, method="linear", precise: bool = False):
    """Concrete lower/upper bounds of the model's outputs over the box (``method`` and
    ``precise`` as ``spec_upper_bound`` takes them)."""
    dt = graph.dtype or torch.float64
    center, gens = center.to(dt), gens.to(dt)
    if method == "ibp":
        return ibp_bounds(graph, center, gens)[-1]
    n = center.shape[0]
    out = int(torch.tensor(graph.output_shape).prod()) if graph.output_shape else 1
    eye = torch.eye(out, dtype=center.dtype, device=center.device)
    C = torch.cat([eye, -eye])[None].expand(n, -1, -1)
    ub = spec_upper_bound(graph, center, gens, C, torch.zeros(n, 2 * out, dtype=center.dtype, device=center.device),
                          method=method, precise=precise)
    hi, lo = ub[:, :out], -ub[:, out:]
    return lo.reshape(n, *graph.output_shape), hi.reshape(n, *graph.output_shape)


#: check points also run through the model one at a time
SINGLE_CHECKS = 8


def check_graph(graph: BoundGraph, model_forward, points: torch.Tensor) -> Optional[str]:
    """The trace check: bound zero-width boxes at ``points`` with the graph (error radii
    included) and require the model's own forward output there to lie inside. ``None``
    when it does; otherwise a note naming the point and the size of the disagreement."""
    p64 = points.to(graph.dtype or torch.float64)
    gens = torch.zeros((p64.shape[0], 1, *p64.shape[1:]), dtype=p64.dtype, device=p64.device)
    with torch.no_grad():
        lo, hi = ibp_bounds(graph, p64, gens)[-1]
        y = model_forward(points)
    with torch.enable_grad():  # and as a user's plain call runs it, autograd on
        y_grad = model_forward(points).detach()
    lo, hi = lo.reshape(y.shape[0], -1), hi.reshape(y.shape[0], -1)
    if lo.shape != y.shape or y_grad.shape != y.shape:
        return f"the lowered graph gives outputs shaped {tuple(lo.shape[1:])}, the model {tuple(y_grad.shape[1:])}"
    lo, hi, y, y_grad = lo.double(), hi.double(), y.to(torch.float64), y_grad.to(torch.float64)
    bad = ~((y >= lo) & (y <= hi)) | ~torch.isfinite(y)
    y = torch.where(bad, y, y_grad)  # the output the note reports: no_grad's where it is off, else grad-on's
    bad |= ~((y_grad >= lo) & (y_grad <= hi)) | ~torch.isfinite(y_grad)
    # and one point at a time (the batch size of a re-check, and of a user calling the model
    # on one input): a forward that depends on the batch size was traced at another one
    with torch.no_grad():
        for i in range(min(points.shape[0], SINGLE_CHECKS)):
            yi = model_forward(points[i:i + 1]).to(torch.float64)
            if yi.shape != y[i:i + 1].shape:
                return f"the model gives outputs shaped {tuple(yi.shape[1:])} on one input, {tuple(y.shape[1:])} on a batch"
            bad[i] |= ~((yi[0] >= lo[i]) & (yi[0] <= hi[i])) | ~torch.isfinite(yi[0])
            y[i] = torch.where(bad[i], yi[0], y[i])
    if not bool(bad.any()):
        return None
    gap = torch.where(bad, torch.maximum(lo - y, y - hi), torch.zeros_like(y))
    i = int(bad.any(1).nonzero()[0])
    return (f"the lowered graph disagrees with the model's forward pass at check point {i} "
            f"(by up to {float(gap[i].max()):.3g} on output {int(gap[i].argmax())}): no proof is claimed")
