"""Certified training through the shared latent space (AuditAI, section 2.3).

A latent head ``f_d: Z -> Y`` is trained so that the semantic unit tests it will face hold
*provably*: besides the task loss on the seeds it minimises a loss on sound bounds of its
logits over each seed's latent box ``z + V t, t in [-eps, eps]^k`` (the same box that
``pytest_latentaudit.audit`` later verifies)::

    L = L_task + gamma * L_spec          (AuditAI: L_task + gamma L_spec + delta L_gen)

or, CROWN-IBP style, ``kappa * L_task + (1 - kappa) * L_spec``. Plain torch, usable from any
training loop::

    from pytest_latentaudit.training import EpsSchedule, certified_loss

    sched = EpsSchedule(eps=0.5, warmup_epochs=5, ramp_epochs=20)   # AuditAI: 5 warm-up epochs
    opt = torch.optim.Adam(head.parameters(), lr=5e-4)              # AuditAI: Adam, lr 5e-4
    for epoch in range(epochs):
        for i, (z, y) in enumerate(loader):
            eps = sched(epoch, i / len(loader))
            loss = certified_loss(head, z, y, directions, eps, method="crown-ibp")
            opt.zero_grad(); loss.backward(); opt.step()

AuditAI's heads are 5 fully connected ReLU layers trained with auto_LiRPA's CROWN-IBP,
Adam with learning rate 5e-4 and 100 epochs, of which the first 5 are plain (warm-up)
training; the robust part is ramped in gradually (``kappa`` goes from 1 towards its final
value, as in Gowal et al. 2018 and Zhang et al. 2019).

Bounds. The verification engines (``engines/``) copy the weights (detached) when they trace
a model, so they cannot be trained through. This module has its own *differentiable* bound
pass for chains of ``Linear`` / ``ReLU`` / ``LeakyReLU`` / ``Tanh`` / ``Sigmoid`` (plus
``Flatten`` / ``Identity`` / ``Dropout``, which are identities on latent codes), built
from the live parameters and the engines' own relaxations (``ops.*Op.relax``), so its
numbers agree with ``engines.bounds`` (the tests check this to 1e-5):

* ``"ibp"``: interval bound propagation on the box hull, with the spec folded into the
  last Linear layer (``engines.bounds.spec_upper_bound(method="ibp")``).
* ``"crown-ibp"``: CROWN-IBP (Zhang et al., 2019): IBP intermediate bounds, then one
  backward (CROWN) pass from the spec rows; ``beta`` mixes it with the IBP bound
  (``beta * crown_ibp + (1 - beta) * ibp``; CROWN-IBP ramps beta from 1 to 0).
* ``"linear"``: forward-mode linear bounds over the box's k generators (cheap since k is
  1..4 for semantic tests; intersected with IBP at every layer), then the minimum of the
  folded, interval and backward bounds: exactly what ``engines.bounds.spec_upper_bound
  (method="linear")`` proves, so training optimises the verifier's own bound.
* ``"auto_lirpa:ibp"`` / ``"auto_lirpa:crown-ibp"`` / ``"auto_lirpa:crown"``: auto_LiRPA's
  implementation (optional; ``pytest_latentaudit.engines.lirpa_compat.import_auto_lirpa``).

The spec loss uses the CROWN-IBP margin formulation by default: with ``C = e_j - e_y``
(one row per wrong class j), ``u_j >= max (y_j - y_y)`` over the box, and
``L_spec = CE([u_j]_{j != y} with 0 for y, y)``, i.e. ``log(1 + sum_j exp(u_j))``.
``form="logits"`` gives AuditAI's worst-case logit vector instead (lower bound for the
true class, upper bounds for the others), which is looser.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engines import ops
from .engines.ops import UnsupportedLayer
from .latent import Direction, LatentAuditError

__all__ = [
    "METHODS", "EpsSchedule", "certified_loss", "spec_loss", "margin_bounds", "margin_upper_bounds",
    "logit_bounds", "interval_bounds", "bound_gap", "verified_fraction", "margin_matrix", "box",
    "layers_of", "AUDITAI_HPARAMS",
]

METHODS = ("ibp", "crown-ibp", "linear", "auto_lirpa:ibp", "auto_lirpa:crown-ibp", "auto_lirpa:crown")

#: Hyper-parameters reported by AuditAI (Bharadhwaj et al., ICLR 2022, appendix A.3) for
#: its latent heads: 5 fully connected ReLU layers, auto_LiRPA CROWN-IBP, Adam.
AUDITAI_HPARAMS = {"optimizer": "Adam", "lr": 5e-4, "epochs": 100, "warmup_epochs": 5,
                   "method": "crown-ibp", "head": "5 fully connected layers with ReLU"}

DirectionLike = Union[Direction, torch.Tensor, Sequence[float]]


# ----------------------------------------------------------------------------- layers
@dataclass
class _Linear:
    module: nn.Linear
    name: str

    @property
    def weight(self):
        return self.module.weight

    @property
    def bias(self):
        return self.module.bias


@dataclass
class _Act:
    op: ops.ActivationOp
    name: str


_ACTS = {nn.ReLU: lambda n, m: ops.ReLUOp(n), nn.Tanh: lambda n, m: ops.TanhOp(n),
         nn.Sigmoid: lambda n, m: ops.SigmoidOp(n),
         nn.LeakyReLU: lambda n, m: ops.LeakyReLUOp(n, m.negative_slope)}
_IDENTITY = (nn.Identity, nn.Dropout, nn.AlphaDropout, nn.Flatten)
_ACT_FUNCS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
              F.sigmoid: "sigmoid", F.leaky_relu: "leaky_relu"}
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_IDENTITY_FUNCS = {torch.flatten, F.dropout}
_IDENTITY_METHODS = {"flatten", "contiguous", "clone", "view", "reshape"}


def _act_op(kind: str, name: str, slope: float = 0.01):
    if kind == "relu":
        return ops.ReLUOp(name)
    if kind == "tanh":
        return ops.TanhOp(name)
    if kind == "sigmoid":
        return ops.SigmoidOp(name)
    return ops.LeakyReLUOp(name, slope)


def _module_layers(m: nn.Module, name: str, out: list):
    if isinstance(m, nn.Sequential):
        for child_name, child in m.named_children():
            _module_layers(child, f"{name}.{child_name}" if name else child_name, out)
        return
    if isinstance(m, nn.Linear):
        out.append(_Linear(m, name or "linear"))
        return
    for t, make in _ACTS.items():
        if isinstance(m, t):
            out.append(_Act(make(name, m), name))
            return
    if isinstance(m, _IDENTITY):
        if isinstance(m, nn.Flatten) and m.start_dim not in (1, -1):
            raise UnsupportedLayer(name, f"Flatten(start_dim={m.start_dim})")
        return
    if type(m).__module__.startswith("torch.nn"):
        raise UnsupportedLayer(name or type(m).__name__,
                               f"{type(m).__name__} (certified training supports Linear, ReLU, LeakyReLU, "
                               f"Tanh, Sigmoid, Flatten, Identity, Dropout)")
    _traced_layers(m, name, out)


def _traced_layers(m: nn.Module, prefix: str, out: list):
    """A custom module: trace it with torch.fx and accept a chain of supported layers."""
    try:
        gm = torch.fx.symbolic_trace(m)
    except Exception as exc:  # noqa: BLE001 - fx raises many types
        raise UnsupportedLayer(prefix or type(m).__name__, f"not traceable by torch.fx: {exc}") from exc
    modules = dict(m.named_modules())
    last = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if last is not None:
                raise UnsupportedLayer(type(m).__name__, "forward takes more than one input")
            last = n
            continue
        if n.op == "output":
            if n.args[0] is not last:
                raise UnsupportedLayer(type(m).__name__, "output is not the end of a layer chain")
            return
        if n.op == "get_attr":
            raise UnsupportedLayer(f"{prefix}.{n.target}" if prefix else str(n.target),
                                   "uses a parameter directly (only Linear modules are supported)")
        data = [a for a in n.all_input_nodes]
        if data != [last]:
            raise UnsupportedLayer(n.name, "not a chain of layers (branches or constants)")
        qual = f"{prefix}.{n.target}" if prefix and n.op == "call_module" else str(n.target)
        if n.op == "call_module":
            _module_layers(modules[n.target], qual, out)
        elif n.op == "call_function" and n.target in _ACT_FUNCS:
            kind = _ACT_FUNCS[n.target]
            slope = n.kwargs.get("negative_slope", n.args[1] if len(n.args) > 1 else 0.01)
            out.append(_Act(_act_op(kind, n.name, float(slope)), n.name))
        elif n.op == "call_method" and n.target in _ACT_METHODS:
            out.append(_Act(_act_op(_ACT_METHODS[n.target], n.name), n.name))
        elif (n.op == "call_function" and n.target in _IDENTITY_FUNCS) or \
                (n.op == "call_method" and n.target in _IDENTITY_METHODS):
            pass  # identities on [N, d] latent codes; checked by the forward comparison in layers_of
        else:
            what = getattr(n.target, "__name__", n.target)
            raise UnsupportedLayer(n.name, f"{n.op} {what} (certified training supports chains of Linear, "
                                           f"ReLU, LeakyReLU, Tanh, Sigmoid)")
        last = n
    raise UnsupportedLayer(type(m).__name__, "no output")


def layers_of(head: nn.Module) -> list:
    """The head as a list of ``_Linear`` (live parameters) and ``_Act`` (engine relaxations).

    Raises ``UnsupportedLayer`` naming the first layer outside the supported set."""
    if not isinstance(head, nn.Module):
        raise UnsupportedLayer(type(head).__name__, "certified training needs an nn.Module")
    out: list = []
    _module_layers(head, "", out)
    if not out:
        raise UnsupportedLayer(type(head).__name__, "no layers")
    return out


def _check_chain(layers, head, z):
    """Reshape tricks in a custom forward would make the chain wrong: compare once (in eval
    mode, as the bounds assume)."""
    was = head.training
    head.eval()
    try:
        with torch.no_grad():
            y = head(z[:2])
            x = z[:2]
            for layer in layers:
                x = F.linear(x, layer.weight, layer.bias) if isinstance(layer, _Linear) else layer.op.f(x)
    finally:
        head.train(was)
    if y.shape != x.shape or not torch.allclose(y, x, rtol=1e-4, atol=1e-5):
        raise UnsupportedLayer(type(head).__name__, "its forward is not the chain of its layers")


# head -> (structure fingerprint, layers); weak, so a cached head can be garbage-collected
_CHAIN_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, list]]" = weakref.WeakKeyDictionary()


def _structure(head: nn.Module) -> tuple:
    return tuple(id(m) for m in head.modules())


def _layers_checked(head, z):
    key = _structure(head)
    try:
        hit = _CHAIN_CACHE.get(head)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == key:
        return hit[1]
    layers = layers_of(head)
    if not isinstance(head, nn.Sequential):
        _check_chain(layers, head, z)
    try:
        _CHAIN_CACHE[head] = (key, layers)
    except TypeError:
        pass
    return layers


# ------------------------------------------------------------------------------- boxes
def _bases(directions, dim: int, dtype, device) -> List[Tuple[str, torch.Tensor]]:
    """``[(name, V [dim, k])]`` for one direction or a list / dict of them."""
    if isinstance(directions, Mapping):
        items = list(directions.items())
    elif isinstance(directions, (list, tuple)) and directions and \
            (isinstance(directions[0], Direction) or (torch.is_tensor(directions[0]) and directions[0].dim() >= 1)):
        items = [(getattr(d, "name", None) or str(i), d) for i, d in enumerate(directions)]
    else:
        items = [(getattr(directions, "name", None) or "direction", directions)]
    out = []
    for name, d in items:
        if isinstance(d, Direction):
            V = d.basis(dim, dtype=dtype, device=device)
        else:
            t = torch.as_tensor(d, dtype=torch.float64)
            V = Direction.subspace(t if t.dim() == 2 else t.reshape(-1, 1), name=name).basis(
                dim, dtype=dtype, device=device)
        out.append((str(name), V))
    if not out:
        raise LatentAuditError("certified training needs at least one direction")
    return out


def _eps_list(eps, names: List[str]) -> List[float]:
    if isinstance(eps, Mapping):
        missing = [n for n in names if n not in eps]
        if missing:
            raise LatentAuditError(f"eps has no value for direction(s) {missing}")
        vals = [eps[n] for n in names]
    elif isinstance(eps, (list, tuple)):
        if len(eps) != len(names):
            raise LatentAuditError(f"got {len(eps)} eps values for {len(names)} directions")
        vals = list(eps)
    else:
        vals = [eps] * len(names)
    out = []
    for v in vals:
        v = float(v)
        if not math.isfinite(v) or v < 0:
            raise LatentAuditError(f"eps must be a finite number >= 0, got {v!r}")
        out.append(v)
    return out


def box(z: torch.Tensor, V: torch.Tensor, eps: float):
    """Centre ``[N, d]`` and generators ``[N, k, d]`` of the boxes ``z + V t``, ``|t| <= eps``."""
    G = (eps * V.T.to(z))[None].expand(z.shape[0], -1, -1)
    return z, G


def margin_matrix(labels: torch.Tensor, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """``C`` ``[N, n_classes - 1, n_classes]``, row for class j: ``e_j - e_label`` (j != label):
    the rows ``engines`` prove for ``Prediction`` / ``Accuracy``."""
    labels = labels.long().reshape(-1)
    n = labels.numel()
    eye = torch.eye(n_classes, dtype=dtype, device=labels.device)
    C = eye[None].expand(n, n_classes, n_classes) - eye[labels][:, None, :]
    keep = torch.ones(n, n_classes, dtype=torch.bool, device=labels.device)
    keep[torch.arange(n, device=labels.device), labels] = False
    return C[keep].reshape(n, n_classes - 1, n_classes)


# ----------------------------------------------------------------------------- bounds
def _ibp_linear(layer: _Linear, lo, hi):
    W, b = layer.weight, layer.bias
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    m = F.linear(mid, W, b)
    r = F.linear(rad, W.abs())
    return m - r, m + r


def interval_bounds(head: nn.Module, center: torch.Tensor, gens: torch.Tensor, layers=None):
    """IBP bounds ``(lo, hi)`` of the input and every layer's output (differentiable).

    Same numbers as ``engines.bounds.ibp_bounds(graph, center, gens, pad=False)``."""
    layers = layers if layers is not None else _layers_checked(head, center)
    rad = gens.abs().sum(1)
    lo, hi = center - rad, center + rad
    out = [(lo, hi)]
    for layer in layers:
        if isinstance(layer, _Linear):
            lo, hi = _ibp_linear(layer, lo, hi)
        else:
            lo, hi = layer.op.f(lo), layer.op.f(hi)
        out.append((lo, hi))
    return out


def _interval_upper(lo, hi, C, d):
    return torch.einsum("nmo,no->nm", C.clamp(min=0), hi) + torch.einsum("nmo,no->nm", C.clamp(max=0), lo) + d


def _ibp_spec_upper(layers, bounds, C, d):
    last = layers[-1]
    if isinstance(last, _Linear):  # fold C into the last layer: tighter than intervals of y
        lo, hi = bounds[-2]
        W = torch.einsum("nmo,oh->nmh", C, last.weight)
        b = d if last.bias is None else d + C @ last.bias
        return _interval_upper(lo, hi, W, b)
    return _interval_upper(*bounds[-1], C, d)


def _backward_upper(layers, bounds, center, gens, C, d):
    """CROWN backward pass from ``C`` with pre-activation bounds ``bounds`` (input first)."""
    A, const = C, d
    for j in range(len(layers) - 1, -1, -1):
        layer = layers[j]
        if isinstance(layer, _Linear):
            if layer.bias is not None:
                const = const + A @ layer.bias
            A = A @ layer.weight
        else:
            al, cl, au, cu = layer.op.relax(*bounds[j])  # bounds[j]: input of layer j
            al, cl, au, cu = (v[:, None, :] for v in (al, cl, au, cu))
            Ap, An = A.clamp(min=0), A.clamp(max=0)
            const = const + (Ap * cu + An * cl).sum(-1)
            A = Ap * au + An * al
    val = torch.einsum("nmd,nd->nm", A, center) + const
    return val + torch.einsum("nmd,nkd->nmk", A, gens).abs().sum(-1)


def _forward_linear(layers, center, gens):
    """Forward-mode linear bounds of every layer, intersected with IBP (as engines.bounds.
    linear_bounds, without the float padding). Returns forms and concrete bounds."""
    forms = [(gens, center, gens, center, True)]
    rad = gens.abs().sum(1)
    conc = [(center - rad, center + rad)]
    for layer in layers:
        lw, lb, uw, ub, exact = forms[-1]
        plo, phi = conc[-1]
        if isinstance(layer, _Linear):
            W, b = layer.weight, layer.bias
            if exact:
                lw2 = lw @ W.T
                lb2 = F.linear(lb, W, b)
                f = (lw2, lb2, lw2, lb2, True)
            else:
                Wa = W.abs()
                mw, dw = (lw + uw) / 2, (lw - uw) / 2
                mb, db = (lb + ub) / 2, (lb - ub) / 2
                aw, ab = mw @ W.T, F.linear(mb, W, b)
                bw, bb = dw @ Wa.T, db @ Wa.T
                f = (aw + bw, ab + bb, aw - bw, ab - bb, False)
            ilo, ihi = _ibp_linear(layer, plo, phi)
        else:
            al, cl, au, cu = layer.op.relax(plo, phi)
            f = (lw * al[:, None], lb * al + cl, uw * au[:, None], ub * au + cu, False)
            ilo, ihi = layer.op.f(plo), layer.op.f(phi)
        flo = f[1] - f[0].abs().sum(1)
        fhi = f[3] + f[2].abs().sum(1)
        forms.append(f)
        conc.append((torch.maximum(ilo, flo), torch.minimum(ihi, fhi)))
    return forms, conc


def _linear_spec_upper(layers, center, gens, C, d, backward=True):
    forms, conc = _forward_linear(layers, center, gens)
    lw, lb, uw, ub, _ = forms[-1]
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    coef = torch.einsum("nmo,nko->nmk", Cp, uw) + torch.einsum("nmo,nko->nmk", Cn, lw)
    const = torch.einsum("nmo,no->nm", Cp, ub) + torch.einsum("nmo,no->nm", Cn, lb) + d
    out = const + coef.abs().sum(-1)
    out = torch.minimum(out, _interval_upper(*conc[-1], C, d))
    last = layers[-1]
    if isinstance(last, _Linear):
        hlw, hlb, huw, hub, _ = forms[-2]
        W = torch.einsum("nmo,oh->nmh", C, last.weight)
        b = d if last.bias is None else d + C @ last.bias
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        coef = torch.einsum("nmh,nkh->nmk", Wp, huw) + torch.einsum("nmh,nkh->nmk", Wn, hlw)
        const = torch.einsum("nmh,nh->nm", Wp, hub) + torch.einsum("nmh,nh->nm", Wn, hlb) + b
        out = torch.minimum(out, const + coef.abs().sum(-1))
    if backward:
        out = torch.minimum(out, _backward_upper(layers, conc, center, gens, C, d))
    return out


def _spec_upper(head, center, gens, C, d, method: str, beta: float = 1.0):
    """Sound upper bound ``[N, m]`` of every row of ``C y + d`` over the box (differentiable)."""
    if method.startswith("auto_lirpa"):
        return _lirpa_spec_upper(head, center, gens, C, d, method)
    layers = _layers_checked(head, center)
    if method == "ibp":
        return _ibp_spec_upper(layers, interval_bounds(head, center, gens, layers), C, d)
    if method == "crown-ibp":
        bounds = interval_bounds(head, center, gens, layers)
        crown = _backward_upper(layers, bounds, center, gens, C, d)
        if beta >= 1.0:
            return crown
        ibp = _ibp_spec_upper(layers, bounds, C, d)
        return beta * crown + (1.0 - beta) * ibp
    if method == "linear":
        return _linear_spec_upper(layers, center, gens, C, d)
    raise LatentAuditError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")


def _prepare(head, z, dtype=None):
    p = next(iter(head.parameters()), None) if isinstance(head, nn.Module) else None
    dtype = dtype or (p.dtype if p is not None else torch.float32)
    device = p.device if p is not None else z.device
    z = torch.as_tensor(z).to(device=device, dtype=dtype)
    if z.dim() != 2:
        raise LatentAuditError(f"latent codes must be [N, latent_dim]; got shape {tuple(z.shape)}")
    return z, dtype, device


def margin_upper_bounds(head: nn.Module, z: torch.Tensor, labels: torch.Tensor, V: DirectionLike, eps: float,
                        method: str = "crown-ibp", beta: float = 1.0) -> torch.Tensor:
    """Upper bounds ``[N, n_classes - 1]`` of ``y_j - y_label`` (every wrong class j) over
    ``z + V t``, ``|t| <= eps``, for one direction (differentiable w.r.t. the head's
    parameters and ``z``). All ``< 0`` for a seed means its label is proved on its box."""
    center, G, C = _margin_box(head, z, labels, V, eps)
    return _spec_upper(head, center, G, C, torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device), method, beta)


def _margin_box(head, z, labels, V, eps):
    """The box of one direction around each seed and the margin rows ``y_j - y_label``."""
    z, dtype, device = _prepare(head, z)
    (_, basis), = _bases(V, z.shape[1], dtype, device)[:1]
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    with torch.no_grad():
        n_classes = head(z[:1]).reshape(1, -1).shape[1]
    center, G = box(z, basis, float(eps))
    return center, G, margin_matrix(labels, n_classes, dtype)


def margin_bounds(head, z, labels, V, eps, method="crown-ibp", beta=1.0):
    """Lower and upper bounds of the margins ``y_j - y_label`` (``[N, n_classes - 1]`` each)."""
    center, G, C = _margin_box(head, z, labels, V, eps)
    CC = torch.cat([C, -C], 1)
    ub = _spec_upper(head, center, G, CC, torch.zeros(CC.shape[:2], dtype=C.dtype, device=C.device), method, beta)
    m = C.shape[1]
    return -ub[:, m:], ub[:, :m]


def logit_bounds(head: nn.Module, z: torch.Tensor, V: DirectionLike, eps: float, method: str = "ibp",
                 beta: float = 1.0):
    """Lower and upper bounds ``[N, n_out]`` of every logit over the boxes (differentiable)."""
    z, dtype, device = _prepare(head, z)
    (_, basis), = _bases(V, z.shape[1], dtype, device)[:1]
    center, G = box(z, basis, float(eps))
    if method == "ibp":
        lo, hi = interval_bounds(head, center, G)[-1]
        return lo, hi
    with torch.no_grad():
        n_out = head(z[:1]).reshape(1, -1).shape[1]
    eye = torch.eye(n_out, dtype=dtype, device=device)
    C = torch.cat([eye, -eye])[None].expand(z.shape[0], -1, -1)
    ub = _spec_upper(head, center, G, C, torch.zeros(C.shape[:2], dtype=dtype, device=device), method, beta)
    return -ub[:, n_out:], ub[:, :n_out]


def bound_gap(head, z, labels, V, eps, method="crown-ibp", beta=1.0) -> torch.Tensor:
    """Mean width (upper minus lower bound) of the margins ``y_j - y_label`` over the boxes:
    how loose the bounds are; certified training shrinks it."""
    lo, hi = margin_bounds(head, z, labels, V, eps, method, beta)
    return (hi - lo).mean()


# ------------------------------------------------------------------------------ losses
def _spec_loss_one(head, z, labels, basis, eps, method, form, beta, n_classes):
    dtype, device = z.dtype, z.device
    center, G = box(z, basis, eps)
    if form == "margin":
        C = margin_matrix(labels, n_classes, dtype)
        ub = _spec_upper(head, center, G, C, torch.zeros(C.shape[:2], dtype=dtype, device=device), method, beta)
        # CE with logits 0 for the label and u_j for the others: log(1 + sum_j exp(u_j))
        zhat = torch.cat([torch.zeros_like(ub[:, :1]), ub], 1)
        return F.cross_entropy(zhat, torch.zeros_like(labels), reduction="none"), ub
    if form == "logits":
        eye = torch.eye(n_classes, dtype=dtype, device=device)
        C = torch.cat([eye, -eye])[None].expand(z.shape[0], -1, -1)
        ub = _spec_upper(head, center, G, C, torch.zeros(C.shape[:2], dtype=dtype, device=device), method, beta)
        hi, lo = ub[:, :n_classes], -ub[:, n_classes:]
        onehot = F.one_hot(labels, n_classes).bool()
        zhat = torch.where(onehot, lo, hi)
        margins = (hi - lo.gather(1, labels[:, None]))[~onehot].reshape(-1, n_classes - 1)
        return F.cross_entropy(zhat, labels, reduction="none"), margins
    raise LatentAuditError(f"form must be 'margin' or 'logits', got {form!r}")


def spec_loss(head: nn.Module, z: torch.Tensor, labels: torch.Tensor, V, eps, method: str = "crown-ibp", *,
              form: str = "margin", beta: float = 1.0, reduction: str = "mean", return_bounds: bool = False):
    """AuditAI's ``L_spec``: cross-entropy on the worst case over the latent boxes.

    ``V``: a ``Direction``, a ``[d]`` / ``[d, k]`` tensor, or a list / dict of them (one
    unit test each; the loss is averaged over them). ``eps``: one radius, or one per
    direction (sequence or dict keyed like ``V``). ``method``: see ``METHODS``.
    ``form="margin"`` (CROWN-IBP's margin bounds ``C y`` with ``C = e_j - e_y``) or
    ``"logits"`` (AuditAI's worst-case logit vector). With ``return_bounds`` also returns
    ``{direction: margin upper bounds [N, n_classes - 1]}`` (all < 0: proved for that seed).
    """
    z, dtype, device = _prepare(head, z)
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    if labels.numel() != z.shape[0]:
        raise LatentAuditError(f"got {z.shape[0]} latent codes but {labels.numel()} labels")
    bases = _bases(V, z.shape[1], dtype, device)
    eps_l = _eps_list(eps, [n for n, _ in bases])
    y0 = head(z)
    n_classes = y0.reshape(z.shape[0], -1).shape[1]
    losses, bounds = [], {}
    for (name, basis), e in zip(bases, eps_l):
        if e == 0 and not return_bounds:
            losses.append(F.cross_entropy(y0, labels, reduction="none"))  # the box is the seed
            continue
        loss, ub = _spec_loss_one(head, z, labels, basis, e, method, form, beta, n_classes)
        losses.append(loss)
        bounds[name] = ub
    loss = torch.stack(losses).mean(0)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    elif reduction != "none":
        raise LatentAuditError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return (loss, bounds) if return_bounds else loss


def certified_loss(head: nn.Module, z: torch.Tensor, labels: torch.Tensor, V, eps, *, gamma: float = 1.0,
                   kappa: Optional[float] = None, method: str = "crown-ibp", form: str = "margin",
                   beta: float = 1.0, return_parts: bool = False):
    """``L_task + gamma * L_spec`` (AuditAI), or ``kappa * L_task + (1 - kappa) * L_spec``
    when ``kappa`` is given (CROWN-IBP / AuditAI appendix A.1, where it is called chi).

    With ``eps == 0`` (warm-up) only ``L_task`` is computed. ``return_parts`` returns
    ``(loss, {"task", "spec", "verified"})`` with ``verified`` the fraction of the batch
    whose boxes the training bound already proves (for every direction).
    """
    z, dtype, device = _prepare(head, z)
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    logits = head(z)
    task = F.cross_entropy(logits, labels)
    bases = _bases(V, z.shape[1], dtype, device)
    eps_l = _eps_list(eps, [n for n, _ in bases])
    if all(e == 0 for e in eps_l):
        parts = {"task": float(task.detach()), "spec": float("nan"), "verified": float("nan")}
        return (task, parts) if return_parts else task
    spec, bounds = spec_loss(head, z, labels, {n: b for n, b in bases}, dict(zip([n for n, _ in bases], eps_l)),
                             method, form=form, beta=beta, return_bounds=True)
    loss = kappa * task + (1.0 - kappa) * spec if kappa is not None else task + gamma * spec
    if not return_parts:
        return loss
    with torch.no_grad():
        ok = torch.ones(z.shape[0], dtype=torch.bool, device=device)
        ok &= logits.argmax(1) == labels
        for ub in bounds.values():
            ok &= (ub < 0).all(1)
    return loss, {"task": float(task.detach()), "spec": float(spec.detach()), "verified": float(ok.float().mean())}


@torch.no_grad()
def verified_fraction(head: nn.Module, z: torch.Tensor, labels: torch.Tensor, V, eps: float,
                      method: str = "linear") -> float:
    """Fraction of seeds whose label this module's bound proves on the box (no padding for
    float error, no splitting: a quick training monitor; use ``pytest_latentaudit.audit``
    for a verdict)."""
    was = head.training
    head.eval()
    try:
        ub = margin_upper_bounds(head, z, labels, V, eps, method)
        z2, _, device = _prepare(head, z)
        lab = torch.as_tensor(labels, device=device).long().reshape(-1)
        ok = (ub < 0).all(1) & (head(z2).argmax(1) == lab)
        return int(ok.sum()) / max(1, ok.numel())
    finally:
        head.train(was)


# ---------------------------------------------------------------------------- schedule
@dataclass
class EpsSchedule:
    """Warm-up then linear ramp of eps (and of the CROWN-IBP mixing weights).

    ``eps_at(epoch, progress)`` is 0 for the first ``warmup_epochs`` epochs (plain training;
    AuditAI uses 5), then grows linearly to ``eps`` over ``ramp_epochs`` epochs (per step
    when ``progress``, the fraction of the current epoch done, is given) and stays there.
    ``kappa_at`` goes from ``kappa_start`` to ``kappa_end`` (weight of the clean loss) and
    ``beta_at`` from ``beta_start`` to ``beta_end`` (weight of the CROWN-IBP bound against
    IBP) over the same ramp, as in CROWN-IBP (Zhang et al., 2019).
    """

    eps: float
    warmup_epochs: int = 5
    ramp_epochs: int = 10
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 1.0

    def __post_init__(self):
        if not math.isfinite(float(self.eps)) or self.eps < 0:
            raise LatentAuditError(f"EpsSchedule: eps must be finite and >= 0, got {self.eps!r}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise LatentAuditError("EpsSchedule: warmup_epochs and ramp_epochs must be >= 0")

    def fraction(self, epoch: int, progress: float = 0.0) -> float:
        """How far the ramp is, in [0, 1] (0 during warm-up)."""
        return self.eps_at(epoch, progress) / self.eps if self.eps > 0 else float(not self.in_warmup(epoch))

    def in_warmup(self, epoch: int) -> bool:
        return epoch < self.warmup_epochs

    def eps_at(self, epoch: int, progress: float = 0.0) -> float:
        if self.in_warmup(epoch):
            return 0.0
        # the first robust epoch already trains at a small eps (1 / ramp of the target)
        e = float(epoch) + float(progress) - self.warmup_epochs + 1.0
        frac = 1.0 if self.ramp_epochs == 0 else min(1.0, e / self.ramp_epochs)
        return float(self.eps) * frac

    __call__ = eps_at

    def _mix(self, start, end, epoch, progress):
        return start + (end - start) * self.fraction(epoch, progress)

    def kappa_at(self, epoch: int, progress: float = 0.0) -> float:
        return 1.0 if self.in_warmup(epoch) else self._mix(self.kappa_start, self.kappa_end, epoch, progress)

    def beta_at(self, epoch: int, progress: float = 0.0) -> float:
        return self._mix(self.beta_start, self.beta_end, epoch, progress)


# -------------------------------------------------------------------------- auto_LiRPA
class _ShiftedHead(nn.Module):
    """``head(z0 + V t)`` as a function of ``x = [t, z0]``: a box on x with zero width on
    the z0 part is exactly the latent box, so auto_LiRPA keeps the direction's structure."""

    def __init__(self, head: nn.Module, V: torch.Tensor):
        super().__init__()
        self.head = head
        k, d = V.shape[1], V.shape[0]
        self.shift = nn.Linear(k + d, d, bias=False)
        with torch.no_grad():
            self.shift.weight.copy_(torch.cat([V, torch.eye(d, dtype=V.dtype, device=V.device)], 1))
        self.shift.weight.requires_grad_(False)

    def forward(self, x):
        return self.head(self.shift(x))


# (id(head), direction, dtype, device, structure) -> (head, BoundedModule). The BoundedModule
# refers to the head, so weak keys would not help; the cache is kept small instead.
_LIRPA_CACHE: Dict[Tuple, Tuple[nn.Module, object]] = {}
_LIRPA_CACHE_SIZE = 8


def _lirpa_spec_upper(head, center, gens, C, d, method):
    """auto_LiRPA's bound of ``C y + d`` (differentiable: the BoundedModule shares the head's
    parameters). Boxes come from one direction: ``gens`` must be ``eps * V^T``."""
    from .engines.lirpa_compat import import_auto_lirpa

    al = import_auto_lirpa()
    name = {"auto_lirpa:ibp": "IBP", "auto_lirpa:crown-ibp": "CROWN-IBP", "auto_lirpa:crown": "CROWN"}.get(method)
    if name is None:
        raise LatentAuditError(f"unknown auto_LiRPA method {method!r}; choose one of {METHODS[3:]}")
    n, k, dim = gens.shape
    G = gens[0]  # [k, d], rows eps_j V_j
    scale = G.norm(dim=1)
    if bool((scale == 0).any()):
        raise LatentAuditError("auto_LiRPA bounds need eps > 0")
    V = (G / scale[:, None]).T.detach()
    key = (id(head), tuple(V.reshape(-1).tolist()), center.dtype, str(center.device), _structure(head))
    hit = _LIRPA_CACHE.get(key)
    if hit is not None and hit[0] is head:
        bounded = hit[1]
    else:
        wrapper = _ShiftedHead(head, V)
        x0 = torch.cat([torch.zeros(n, k, dtype=center.dtype, device=center.device), center.detach()], 1)
        bounded = al.BoundedModule(wrapper, x0, device=center.device)
        while len(_LIRPA_CACHE) >= _LIRPA_CACHE_SIZE:
            _LIRPA_CACHE.pop(next(iter(_LIRPA_CACHE)))
        _LIRPA_CACHE[key] = (head, bounded)
    zeros = torch.zeros(n, k, dtype=center.dtype, device=center.device)
    x = torch.cat([zeros, center], 1)
    x_L = torch.cat([-scale.expand(n, k), center], 1)
    x_U = torch.cat([scale.expand(n, k), center], 1)
    ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=x_L, x_U=x_U)
    bx = al.BoundedTensor(x, ptb)
    _, ub = bounded.compute_bounds(x=(bx,), C=C, method=name, bound_lower=False)
    return ub + d
