"""Exact certification along 1-D latent segments (ExactLine / GCert style).

On a segment ``x(t) = x0 + t v``, ``t in [tl, tu]``, a network made of affine layers and
ReLU/LeakyReLU is piecewise linear in ``t``. We walk the graph on a growing set of points
per seed: affine layers map points exactly, and at each ReLU we insert the points where a
pre-activation crosses zero between two neighbours (it is affine there), interpolating
every live tensor at the new points. At the output, each spec row is affine on each piece,
so the set where the spec fails is computed exactly: a union of sub-intervals.

A seed is ``verified`` when every breakpoint's spec margin, plus a bound on how far the
model's own float evaluation can stray from the exact function on the segment
(``float_slack``), is below ``-tol`` (the max of affine rows over a piece is reached at an
end), and ``falsified`` by the worst point of a failing sub-interval, confirmed by a plain
forward pass like any counterexample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from . import ops
from .graph import BoundGraph

class NotPiecewiseLinear(Exception):
    pass


def _times(L, v):
    """``L * v`` with ``0`` where ``v`` is 0 (an infinite ``L``, a function without a bounded
    slope there, carries no error that is not there: no nan)."""
    if not torch.is_tensor(L):
        return L * v
    return torch.where(v == 0, torch.zeros((), dtype=v.dtype, device=v.device), L * v)


def _kinked(op) -> bool:
    return bool(op.kinks)


def check_piecewise_linear(graph: BoundGraph) -> None:
    for node in graph.nodes[1:]:
        if not node.op.piecewise_linear:
            raise NotPiecewiseLinear(f"layer {node.op.name!r} ({type(node.op).__name__}) is not piecewise linear")
        if _kinked(node.op) and node.op.lipschitz > 1.0:
            raise NotPiecewiseLinear(f"layer {node.op.name!r}: slopes above 1")


def margin_deviation(graph: BoundGraph, center, gens, C, crown=False) -> torch.Tensor:
    """Per box and spec row, a bound on ``|c . (y_fl - y)|`` over the whole box, by a
    backward pass of *interval* coefficients: the error ``e_j`` an op adds (its radius
    ``R_j``) reaches the output through ``J_j``, a product of the layers' matrices and of
    each ReLU's slope, which is exact (0, 1 or the leaky slope) on neurons stable on the
    box (their bounds cover the float values too) and somewhere in ``[a, 1]`` on the
    others. ``[A_lo, A_hi]`` encloses every such ``c J_j``, so ``sum_j max|A| . R_j``
    bounds the deviation, with the layers' signs kept (no ``|W|`` product per layer)."""
    from .bounds import _input_slack, _input_u, linear_bounds

    center, gens = center.to(graph.dtype), gens.to(graph.dtype)
    _, conc = linear_bounds(graph, center, gens, crown=crown)
    n, m = C.shape[:2]
    nodes = graph.nodes
    Alo: list = [None] * len(nodes)
    Ahi: list = [None] * len(nodes)
    Alo[-1] = Ahi[-1] = C.to(center.dtype).reshape(n * m, *nodes[-1].shape)
    slack = torch.zeros(n * m, dtype=torch.float64, device=center.device)

    def add(i, lo, hi):
        Alo[i] = lo if Alo[i] is None else Alo[i] + lo
        Ahi[i] = hi if Ahi[i] is None else Ahi[i] + hi

    for j in range(len(nodes) - 1, 0, -1):
        lo, hi = Alo[j], Ahi[j]
        if lo is None:
            continue
        node, op = nodes[j], nodes[j].op
        pre = [conc[i] for i in node.inputs]
        R = op.radius(pre)
        amax = torch.maximum(lo.abs(), hi.abs())
        if R is not None:
            slack = slack + (amax.reshape(n, m, -1) * R.reshape(n, 1, -1)).sum(2).reshape(-1).double()
        shapes = [nodes[i].shape for i in node.inputs]
        if isinstance(op, ops.AffineOp):
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
            w, wabs = ops._like(op.weight, mid), ops._like(op.wabs, mid)
            mid_in = ops._vjp(lambda x: op.lin(x, w), mid, shapes[0])
            rad_in = ops._vjp(lambda x: op.lin(x, wabs), rad, shapes[0])
            add(node.inputs[0], mid_in - rad_in, mid_in + rad_in)
        elif isinstance(op, (ops.LinearMapOp, ops.CatOp)):  # non-negative maps keep the order
            los, _ = op.backward(lo, pre=pre, in_shapes=shapes)
            his, _ = op.backward(hi, pre=pre, in_shapes=shapes)
            for i, a, b in zip(node.inputs, los, his):
                add(i, a, b)
        elif isinstance(op, ops.WeightedSumOp):
            for i, c, sh in zip(node.inputs, (op.a, op.b), shapes):
                a, b = (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
                add(i, a.sum_to_size(a.shape[0], *sh), b.sum_to_size(b.shape[0], *sh))
        elif isinstance(op, ops.ReLUOp):
            a = op.negative_slope
            lo_in, hi_in = pre[0]
            rep = lambda v: v.repeat_interleave(m, 0) if m > 1 else v  # noqa: E731
            active, dead = rep(lo_in >= 0), rep(hi_in <= 0)
            s_lo = torch.where(active, lo, torch.where(dead, a * lo, torch.minimum(lo, a * lo)))
            s_hi = torch.where(active, hi, torch.where(dead, a * hi, torch.maximum(hi, a * hi)))
            add(node.inputs[0], s_lo, s_hi)
            e = op.f_err(*pre[0])  # a leaky ReLU's own rounding (0 for ReLU)
            if torch.is_tensor(e):
                slack = slack + (amax.reshape(n, m, -1) * e.to(amax.dtype).reshape(n, 1, -1)).sum(2).reshape(-1).double()
        elif isinstance(op, ops.ActivationOp) and node.shape == nodes[node.inputs[0]].shape:
            # any other elementwise f: the secant slope between the float and the exact input
            # is in [0, L] (monotone f) or [-L, L], L = sup |f'|; the kernel's own error of f
            # over the input's bounds (which hold both values) enters here too
            L = op.lipschitz_on(*pre[0])  # a number, or per element (exp, log, reciprocal, ...)
            if torch.is_tensor(L):
                L = L.to(lo.dtype).repeat_interleave(m, 0) if m > 1 else L.to(lo.dtype)
            if op.monotone:  # non-decreasing: the secant slope is in [0, L]
                add(node.inputs[0], _times(L, lo.clamp(max=0)), _times(L, hi.clamp(min=0)))
            else:
                add(node.inputs[0], -_times(L, amax), _times(L, amax))
            e = op.f_err(*pre[0])
            if torch.is_tensor(e) or e:
                e = torch.as_tensor(e, dtype=amax.dtype, device=amax.device).expand(pre[0][0].shape)
                slack = slack + (amax.reshape(n, m, -1) * e.reshape(n, 1, -1)).sum(2).reshape(-1).double()
        else:
            raise ops.UnsupportedLayer(op.name, "no signed float-deviation rule for this op")
        Alo[j] = Ahi[j] = None
    # the input's own rounding, and a generous allowance for our float64 walk
    e_in = _input_slack(center, gens, _input_u(graph)).reshape(n, 1, -1).double()
    amax0 = torch.maximum(Alo[0].abs(), Ahi[0].abs()).reshape(n, m, -1).double()
    return slack.reshape(n, m) + (amax0 * e_in).sum(2)


def spec_deviation(graph: BoundGraph, center, gens, C, crown=False) -> torch.Tensor:
    """Per box and spec row, a bound on ``|c . (y_fl - y)|``, the model's float evaluation
    against the exact function over the whole box: the smaller of ``|C| . float_deviation``
    and the signed ``margin_deviation`` (far tighter on deep networks; where an op has no
    signed rule, the first alone). ``crown``: CROWN intermediate bounds for the signed pass
    (fewer unstable neurons, so narrower slope intervals: on a 5x512 head at eps 0.05 the
    deviation falls from about 0.06 to 0.004)."""
    n, m = C.shape[:2]
    dev = float_deviation(graph, center, gens).reshape(n, -1)
    out = torch.einsum("nmo,no->nm", C.abs().double(), dev.double())  # float64: a float32 sum could round down
    out = torch.nan_to_num(out, nan=torch.inf)  # 0 * inf where an op has no bound: no bound
    try:
        signed = margin_deviation(graph, center, gens, C.reshape(n, m, -1), crown=crown)
    except ops.UnsupportedLayer:
        return out
    return torch.minimum(out, torch.nan_to_num(signed, nan=torch.inf))


def float_deviation(graph: BoundGraph, center, gens) -> torch.Tensor:
    """Per box, a bound on ``|y_fl - y|``: the model's float evaluation against the exact
    function, over the whole box. Errors enter at each op (its radius) and are carried
    forward with Lipschitz factors (|W| for affine ops, 1 for ReLU-like kinks, ``sup |f'|``
    plus the kernel's own error for smooth activations), which is sound whatever the
    activation pattern. An op without a rule raises ``UnsupportedLayer``."""
    from .bounds import _input_bounds, _input_u, linear_bounds, radii

    _, conc = linear_bounds(graph, center, gens)
    R = radii(graph, conc)
    lo0, hi0 = _input_bounds(center, gens, _input_u(graph))
    D: list = [((hi0 - lo0) / 2 - gens.abs().sum(1)).abs()]
    for j, node in enumerate(graph.nodes[1:], start=1):
        op, ds = node.op, [D[i] for i in node.inputs]
        if isinstance(op, ops.AffineOp):
            d = op.lin(ds[0], op.wabs)
        elif isinstance(op, ops.LinearMapOp):
            d = op.fn(ds[0])
        elif isinstance(op, ops.WeightedSumOp):
            d = abs(op.a) * ds[0] + abs(op.b) * ds[1]
        elif isinstance(op, ops.CatOp):
            d = torch.cat(ds, op.dim)
        elif isinstance(op, ops.ReLUOp):
            # a neuron dead on the whole box (its bounds cover the float value too) passes
            # the negative slope's share of the error; any other passes at most all of it
            lo_in, hi_in = conc[node.inputs[0]]
            d = torch.where(hi_in <= 0, op.negative_slope * ds[0], ds[0])
            e = op.f_err(lo_in, hi_in)  # and a leaky ReLU's own rounding (0 for ReLU)
            if torch.is_tensor(e):
                d = d + e.to(d.dtype)
        elif isinstance(op, ops.MaxPoolOp):  # |max a - max b| <= max |a - b|
            d = op.forward(ds[0])
        elif isinstance(op, ops.ActivationOp):
            # |fl(f(a)) - f(b)| <= |fl(f(a)) - f(a)| + L |a - b|: the kernel's error of f over
            # the input's bounds (which hold the float value) plus the carried error
            lo_in, hi_in = conc[node.inputs[0]]
            d = _times(op.lipschitz_on(lo_in, hi_in), ds[0]) + op.f_err(lo_in, hi_in)
        else:
            raise ops.UnsupportedLayer(op.name, "no float-deviation rule for this op")
        D.append(d if R[j] is None else d + R[j])
    return D[-1]


@dataclass
class SegmentResult:
    """Per seed: breakpoints ``t`` and outputs there, the exact fraction of the segment
    where the spec holds, and the failing sub-intervals."""

    fraction: torch.Tensor  # [N]
    bad_intervals: List[List[Tuple[float, float]]]
    max_margin: torch.Tensor  # [N] max spec margin over breakpoints (exact function)
    float_slack: torch.Tensor  # [N] bound on how far the float32 model's margin can exceed it
    worst_t: torch.Tensor  # [N] t where the margin is largest
    n_pieces: torch.Tensor  # [N]


def _refine(seed: torch.Tensor, t: torch.Tensor, vals: Dict[int, torch.Tensor], pre: torch.Tensor):
    """Insert zero crossings of ``pre`` ([P, *S]) between neighbouring points of a seed."""
    P = t.shape[0]
    if P < 2:
        return seed, t, vals
    a, b = pre[:-1].reshape(P - 1, -1), pre[1:].reshape(P - 1, -1)
    same = (seed[:-1] == seed[1:])[:, None]
    cross = same & (((a < 0) & (b > 0)) | ((a > 0) & (b < 0)))
    if not bool(cross.any()):
        return seed, t, vals
    rows, cols = torch.nonzero(cross, as_tuple=True)
    frac = a[rows, cols] / (a[rows, cols] - b[rows, cols])
    t_new = t[rows] + frac * (t[rows + 1] - t[rows])
    # dedupe crossings at the same place (many neurons can flip together)
    key = torch.stack([rows.to(t.dtype), t_new])
    uniq = torch.unique(key, dim=1)
    rows_u, t_u = uniq[0].long(), uniq[1]
    lam = ((t_u - t[rows_u]) / (t[rows_u + 1] - t[rows_u]).clamp(min=1e-300)).clamp(0, 1)
    new_vals = {}
    for j, v in vals.items():
        shape = [-1] + [1] * (v.dim() - 1)
        ins = v[rows_u] + lam.view(shape) * (v[rows_u + 1] - v[rows_u])
        new_vals[j] = torch.cat([v, ins])
    seed = torch.cat([seed, seed[rows_u]])
    t = torch.cat([t, t_u])
    order = torch.argsort(t, stable=True)  # then a stable sort by seed: (seed, t) order
    order = order[torch.argsort(seed[order], stable=True)]
    return seed[order], t[order], {j: v[order] for j, v in new_vals.items()}


def walk(graph: BoundGraph, x0: torch.Tensor, v: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor):
    """Breakpoints and outputs along each seed's segment. ``x0`` ``[N, *S]``, ``v`` ``[N, *S]``."""
    check_piecewise_linear(graph)
    n = x0.shape[0]
    dt = torch.float64  # breakpoints are solved in double precision
    graph = graph.as_dtype(dt)
    seed = torch.arange(n, device=x0.device).repeat_interleave(2)
    t = torch.stack([tl, tu], 1).reshape(-1).to(dt)
    x0d, vd = x0.to(dt), v.to(dt)
    consumers = graph.consumers()
    remaining = [len(c) for c in consumers]
    vals: Dict[int, torch.Tensor] = {0: x0d[seed] + t.view([-1] + [1] * (x0.dim() - 1)) * vd[seed]}
    for j, node in enumerate(graph.nodes):
        if j == 0:
            continue
        ins = [vals[i] for i in node.inputs]
        for k in node.op.kinks:  # the op is affine between its kinks: insert the crossings
            seed, t, vals = _refine(seed, t, vals, ins[0] - k)
            ins = [vals[i] for i in node.inputs]
        vals[j] = node.op.forward(*ins)
        for i in node.inputs:  # free tensors nobody needs any more
            remaining[i] -= 1
            if remaining[i] == 0 and i != 0:
                vals.pop(i, None)
    return seed, t, vals[len(graph.nodes) - 1]


def _row_groups(spec, labels, n_out: int, n: int, device, dtype):
    """Violation = OR over groups of AND over the group's rows (``row >= 0``); rows are
    ``[N, G, R, n_out]`` coefficient tensors with offsets ``[N, G, R]``."""
    from ..core.specs import ConfidentTargeted, Linear, Prediction, PredictionNotIn

    eye = torch.eye(n_out, dtype=dtype, device=device)
    if isinstance(spec, Prediction):
        lab = labels
        C = eye[None] - eye[lab][:, None, :]  # [N, n_out, n_out]; the label's own row is 0
        C = C.unsqueeze(2)  # one row per group
        d = torch.zeros(n, n_out, 1, dtype=dtype, device=device)
        d[torch.arange(n), lab] = -1.0  # disable the label's own (zero) row: 0 - 1 < 0
        return C, d
    if isinstance(spec, PredictionNotIn):
        banned = torch.tensor(spec.classes, device=device)
        allowed = torch.tensor([c for c in range(n_out) if c not in spec.classes], device=device)
        C = eye[banned][:, None, :] - eye[allowed][None, :, :]  # [B, A, n_out]
        return C[None].expand(n, -1, -1, -1), torch.zeros(n, *C.shape[:2], dtype=dtype, device=device)
    if isinstance(spec, ConfidentTargeted):  # violated iff f_t - f_j - c >= 0 for every j != t
        others = torch.tensor([c for c in range(n_out) if c != spec.target], device=device)
        C = (eye[spec.target][None] - eye[others])[None]  # one group, all rows
        d = torch.full((1, 1, others.numel()), -spec.margin_c, dtype=dtype, device=device)
        return C[None].expand(n, -1, -1, -1), d.expand(n, -1, -1)
    if isinstance(spec, Linear):  # includes OutputRange
        spec._check(torch.zeros(1, n_out))
        C = spec.C.to(device=device, dtype=dtype)[:, None, :]
        d = spec.d.to(device=device, dtype=dtype)[:, None]
        return C[None].expand(n, -1, -1, -1), d[None].expand(n, -1, -1)
    raise NotPiecewiseLinear(f"the exact segment engine does not handle {spec.describe()}")


def certify(graph: BoundGraph, x0, v, tl, tu, spec, labels=None) -> SegmentResult:
    seed, t, y = walk(graph, x0, v, tl, tu)
    n = x0.shape[0]
    y = y.reshape(y.shape[0], -1)
    C, d = _row_groups(spec, labels, y.shape[1], n, y.device, y.dtype)
    vals = torch.einsum("pgro,po->pgr", C[seed], y) + d[seed]  # [P, G, R]
    margin = vals.min(2).values.max(1).values  # violated where > 0 (>= 0 for ties)
    fraction = torch.zeros(n, dtype=torch.float64)
    bad: List[List[Tuple[float, float]]] = [[] for _ in range(n)]
    max_m = torch.full((n,), -torch.inf, dtype=torch.float64)
    worst_t = torch.zeros(n, dtype=torch.float64)
    pieces = torch.zeros(n, dtype=torch.long)
    seed_c, t_c, vals_c, m_c = seed.cpu(), t.cpu(), vals.cpu(), margin.cpu()
    bounds = torch.searchsorted(seed_c, torch.arange(n + 1))
    for i in range(n):
        s, e = int(bounds[i]), int(bounds[i + 1])
        ts, vs, ms = t_c[s:e], vals_c[s:e], m_c[s:e]
        j = int(ms.argmax())
        max_m[i], worst_t[i] = ms[j], ts[j]
        if vs.shape[0] > 1 and vs.shape[2] > 1:
            # a group of several rows (AND) is violated where all are >= 0: on a piece the
            # min of affine rows is concave and may peak inside it, so bound it by the rows'
            # end values: min_r max(f_r(a), f_r(b)) >= max_t min_r f_r(t)
            piece_up = torch.maximum(vs[:-1], vs[1:]).min(2).values.max(1).values
            max_m[i] = max(float(max_m[i]), float(piece_up.max()))
        pieces[i] = max(e - s - 1, 0)
        length = float(ts[-1] - ts[0])
        if length <= 0:
            fraction[i] = float(ms.max() < 0)
            continue
        intervals = []
        a_t, b_t = ts[:-1], ts[1:]
        va, vb = vs[:-1], vs[1:]  # [Q, G, R]
        # per row, the sub-interval of each piece where the row is >= 0 (affine in t)
        lam_lo = torch.zeros_like(va)
        lam_hi = torch.ones_like(va)
        slope = vb - va
        root = torch.where(slope != 0, -va / torch.where(slope != 0, slope, torch.ones_like(slope)),
                           torch.zeros_like(va))
        inc, dec, flat = slope > 0, slope < 0, slope == 0
        lam_lo = torch.where(inc, root.clamp(0, 1), lam_lo)
        lam_hi = torch.where(dec, root.clamp(0, 1), lam_hi)
        empty_flat = flat & (va < 0)
        lam_lo = torch.where(empty_flat, torch.ones_like(lam_lo), lam_lo)
        lam_hi = torch.where(empty_flat, torch.zeros_like(lam_hi), lam_hi)
        # AND over a group's rows: intersect; OR over groups: union (per piece)
        g_lo, g_hi = lam_lo.max(2).values, lam_hi.min(2).values  # [Q, G]
        for q in range(a_t.shape[0]):
            lo_q, hi_q = g_lo[q], g_hi[q]
            ok = hi_q > lo_q
            if not bool(ok.any()):
                continue
            width = float(b_t[q] - a_t[q])
            segs = sorted(zip((a_t[q] + lo_q[ok] * width).tolist(), (a_t[q] + hi_q[ok] * width).tolist()))
            for lo_, hi_ in segs:
                if intervals and lo_ <= intervals[-1][1]:
                    intervals[-1] = (intervals[-1][0], max(intervals[-1][1], hi_))
                else:
                    intervals.append((lo_, hi_))
        bad_len = sum(h - l for l, h in intervals)
        fraction[i] = 1.0 - bad_len / length
        bad[i] = intervals
    # how far the float model can stray from the exact function, per seed, in margin units
    dt = torch.float64
    c = x0.to(dt) + v.to(dt) * ((tl + tu).to(dt) / 2).view([-1] + [1] * (x0.dim() - 1))
    G = (v.to(dt) * ((tu - tl).to(dt) / 2).view([-1] + [1] * (x0.dim() - 1))).unsqueeze(1)
    slack = spec_deviation(graph, c, G, C.reshape(n, -1, C.shape[-1])).amax(1)
    # our own float64 walk (interpolated breakpoints): a generous relative allowance
    ymax = torch.zeros(n, dtype=y.dtype, device=y.device).scatter_reduce(0, seed, y.abs().amax(1), "amax")
    slack = slack + 1e-12 * (1 + ymax) * C.abs().sum(-1).amax(2).amax(1)
    return SegmentResult(fraction=fraction, bad_intervals=bad, max_margin=max_m, worst_t=worst_t, n_pieces=pieces,
                         float_slack=slack.cpu().double())
