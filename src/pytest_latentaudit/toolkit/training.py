"""Certified training through the shared latent space (AuditAI, section 2.3).

A latent head ``f_d: Z -> Y`` is trained so that the semantic unit tests it will face hold
*provably*: besides the task loss on the seeds it minimises a loss on sound bounds of its
logits over each seed's latent box ``z + V t, t in [-eps, eps]^k`` (the same box that
``pytest_latentaudit.audit`` later verifies)::

    L = L_task + gamma * L_spec          (AuditAI: L_task + gamma L_spec + delta L_gen)

or, CROWN-IBP style, ``kappa * L_task + (1 - kappa) * L_spec``. Plain torch, usable from any
training loop::

    from pytest_latentaudit.toolkit.training import EpsSchedule, certified_loss

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

Bounds. One engine serves proofs and training: the head is lowered once (per head, input
shape and module structure) into the verifier's ``BoundGraph`` (``engines.graph.lower``,
which traces the call ``head(z)`` itself, hooks included), and every call binds the graph's
constants to the head's *live* parameters with autograd kept
(``graph.bind(dtype=<the parameters' dtype>, detach=False)``), then runs
``engines.bounds`` on it. So the bounds are the verifier's own, error radii included, and
differentiable with respect to the parameters and to ``z``:

* ``"ibp"``: ``engines.bounds.spec_upper_bound(method="ibp")`` (interval bounds, the spec
  folded into the last dense layer).
* ``"crown-ibp"``: CROWN-IBP (Zhang et al., 2019): ``engines.bounds.backward_upper`` from the
  spec rows over ``engines.bounds.ibp_bounds``; ``beta`` mixes it with the IBP bound
  (``beta * crown_ibp + (1 - beta) * ibp``; CROWN-IBP ramps beta from 1 to 0).
* ``"linear"``: ``engines.bounds.spec_upper_bound(method="linear", crown=False)``: forward-mode
  linear bounds over the box's k generators, then the minimum of the folded, interval and
  backward bounds (the proof ladder's linear rung, without its per-neuron CROWN
  refinement of boxes that stay open).
* ``"auto_lirpa:ibp"`` / ``"auto_lirpa:crown-ibp"`` / ``"auto_lirpa:crown"``: auto_LiRPA's
  implementation (optional; ``pytest_latentaudit.engines.lirpa_compat.import_auto_lirpa``).

The bounds are of the head in eval mode (dropout off, batch norm on its running
statistics), as audits see it. The spec loss uses the CROWN-IBP margin formulation by
default: with the rows the verifier proves for ``Prediction`` (``specs.Prediction.rows``:
``C = e_j - e_y``, one row per wrong class j), ``u_j >= max (y_j - y_y)`` over the box, and
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

from ..engines import bounds as EB
from ..engines.graph import TRACE_BATCH, BoundGraph, lower
from ..engines.ops import UnsupportedLayer
from ..core.errors import LatentAuditError
from ..core.latent import Direction
from ..core.specs import Prediction

__all__ = [
    "METHODS", "EpsSchedule", "certified_loss", "spec_loss", "margin_bounds", "margin_upper_bounds",
    "logit_bounds", "interval_bounds", "bound_gap", "verified_fraction", "margin_matrix", "box",
    "layers_of", "bound_graph", "AUDITAI_HPARAMS",
]

METHODS = ("ibp", "crown-ibp", "linear", "auto_lirpa:ibp", "auto_lirpa:crown-ibp", "auto_lirpa:crown")

#: Hyper-parameters reported by AuditAI (Bharadhwaj et al., ICLR 2022, appendix A.3) for
#: its latent heads: 5 fully connected ReLU layers, auto_LiRPA CROWN-IBP, Adam.
AUDITAI_HPARAMS = {"optimizer": "Adam", "lr": 5e-4, "epochs": 100, "warmup_epochs": 5,
                   "method": "crown-ibp", "head": "5 fully connected layers with ReLU"}

DirectionLike = Union[Direction, torch.Tensor, Sequence[float]]


# ------------------------------------------------------------------------------ graphs
_SCALARS = (bool, int, float, str, type(None))


def _plain_attrs(m: nn.Module) -> tuple:
    """A module's plain Python settings (slopes, dims, flags): baked into a trace."""
    out = []
    for k, v in vars(m).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _SCALARS) or (isinstance(v, tuple) and all(isinstance(x, _SCALARS) for x in v)):
            out.append((k, v))
    return tuple(out)


def _fingerprint(head: nn.Module, z: torch.Tensor) -> tuple:
    """What a lowered graph depends on besides the parameters' values: the input shape, the
    module tree (identity, type, hooks, plain attributes of every module) and the identity,
    dtype, device and shape of every parameter and buffer."""
    from torch.nn.modules import module as _m

    mods = tuple((id(m), type(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks), _plain_attrs(m))
                 for m in head.modules())
    tensors = tuple((name, id(t), t.dtype, t.device, tuple(t.shape)) for name, t in
                    list(head.named_parameters(remove_duplicate=False)) +
                    list(head.named_buffers(remove_duplicate=False)))
    hooks = (tuple(getattr(_m, "_global_forward_hooks", {})), tuple(getattr(_m, "_global_forward_pre_hooks", {})))
    return (tuple(z.shape[1:]), z.dtype, str(z.device), mods, tensors, hooks, torch.get_float32_matmul_precision())


# head -> (fingerprint, graph, submodules). Weak keys: a head can be garbage-collected; the
# graph holds the parameters and the entry the submodules, so no id in the key is reused.
_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _eval_modes(head: nn.Module):
    modes = [(m, m.training) for m in head.modules()]
    head.eval()
    return modes


def _restore(modes):
    for m, was in modes:
        m.training = was


def _lower_checked(head: nn.Module, z: torch.Tensor) -> BoundGraph:
    """Lower the head (in eval mode, as audits see it) and check the graph against the
    head's own forward pass, as the audit does (``engines.bounds.check_graph``)."""
    modes = _eval_modes(head)
    try:
        x = z[:TRACE_BATCH].detach()
        graph = lower(head, x)
        graph.bind(dtype=_bound_dtype(x.dtype), device=x.device)  # as audits bind it
        msg = EB.check_graph(graph, head, x)
    finally:
        _restore(modes)
    if msg is not None:
        raise UnsupportedLayer(type(head).__name__, msg)
    return graph


def _bound_dtype(dtype):
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def bound_graph(head: nn.Module, z: torch.Tensor) -> BoundGraph:
    """The verifier's ``BoundGraph`` of ``head`` on latent codes shaped like ``z`` ``[N, d]``,
    bound to the head's live parameters with autograd kept, in the parameters' dtype: the
    graph every bound of this module is computed on. Lowered once per head and structure
    (a module, hook, parameter or buffer swapped, or a plain attribute changed, lowers
    again); bound afresh on every call, so the parameters' current values are used.

    Raises ``UnsupportedLayer`` naming the first layer without a bound operator."""
    if not isinstance(head, nn.Module):
        raise UnsupportedLayer(type(head).__name__, "certified training needs an nn.Module")
    key = _fingerprint(head, z)
    try:
        hit = _GRAPHS.get(head)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == key:
        graph = hit[1]
    else:
        graph = _lower_checked(head, z)
        try:
            _GRAPHS[head] = (key, graph, [m for m in head.modules() if m is not head])
        except TypeError:
            pass
    return graph.bind(dtype=_bound_dtype(z.dtype), device=z.device, detach=False)


def layers_of(head: nn.Module, z: Optional[torch.Tensor] = None) -> list:
    """The bound operators (``engines.ops``) the head is lowered to, in order (the input
    node left out). ``z``: example latent codes ``[N, d]``; by default zeros sized by the
    head's first ``nn.Linear``. Raises ``UnsupportedLayer`` naming the first layer
    without a bound operator."""
    if z is None:
        first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None) \
            if isinstance(head, nn.Module) else None
        if first is None:
            raise LatentAuditError("layers_of: pass example latent codes z (the head has no nn.Linear to size them)")
        z = torch.zeros(TRACE_BATCH, first.in_features, dtype=first.weight.dtype, device=first.weight.device)
    z, _, _ = _prepare(head, z)
    return [node.op for node in bound_graph(head, z).nodes[1:]]


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
    the rows the verifier proves for ``Prediction`` / ``Accuracy`` (``specs.Prediction.rows``)."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    y = torch.zeros(labels.numel(), n_classes, dtype=dtype, device=labels.device)
    return Prediction(labels).rows(y)[0]


def _logit_rows(n: int, n_out: int, dtype, device):
    """Rows ``+e_i`` then ``-e_i``: upper bounds of every logit, then of its negation."""
    eye = torch.eye(n_out, dtype=dtype, device=device)
    return torch.cat([eye, -eye])[None].expand(n, -1, -1)


# ----------------------------------------------------------------------------- bounds
def _n_out(graph: BoundGraph) -> int:
    return int(math.prod(graph.output_shape)) if graph.output_shape else 1


def interval_bounds(head: nn.Module, center: torch.Tensor, gens: torch.Tensor, graph: Optional[BoundGraph] = None):
    """IBP bounds ``(lo, hi)`` of every node of the head's graph, input first
    (differentiable): ``engines.bounds.ibp_bounds`` on ``bound_graph(head, center)``."""
    graph = graph if graph is not None else bound_graph(head, center)
    return EB.ibp_bounds(graph, center, gens)


def _spec_upper(head, graph, center, gens, C, d, method: str, beta: float = 1.0):
    """Sound upper bound ``[N, m]`` of every row of ``C y + d`` over the box (differentiable),
    in ``center``'s dtype."""
    if method.startswith("auto_lirpa"):
        return _lirpa_spec_upper(head, center, gens, C, d, method)
    if method == "ibp":
        ub = EB.spec_upper_bound(graph, center, gens, C, d, method="ibp")
    elif method == "crown-ibp":
        ub = EB.backward_upper(graph, EB.ibp_bounds(graph, center, gens), center, gens, C, d)
        if beta < 1.0:
            ibp = EB.spec_upper_bound(graph, center, gens, C, d, method="ibp")
            ub = beta * ub + (1.0 - beta) * ibp.to(ub.dtype)
    elif method == "linear":
        ub = EB.spec_upper_bound(graph, center, gens, C, d, method="linear", crown=False)
    else:
        raise LatentAuditError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    return ub.to(center.dtype)


def _prepare(head, z, dtype=None):
    p = next(iter(head.parameters()), None) if isinstance(head, nn.Module) else None
    dtype = dtype or (p.dtype if p is not None else torch.float32)
    device = p.device if p is not None else z.device
    z = torch.as_tensor(z).to(device=device, dtype=dtype)
    if z.dim() != 2:
        raise LatentAuditError(f"latent codes must be [N, latent_dim]; got shape {tuple(z.shape)}")
    return z, dtype, device


def _graph_and_classes(head, z, method):
    """The bound graph (None for auto_LiRPA) and the number of outputs."""
    if method.startswith("auto_lirpa"):
        with torch.no_grad():
            return None, head(z[:1]).reshape(1, -1).shape[1]
    graph = bound_graph(head, z)
    return graph, _n_out(graph)


def _zeros(C):
    return torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)


def _margin_box(head, z, labels, V, eps, method):
    """The box of one direction around each seed, the margin rows ``y_j - y_label`` and the
    graph they are bounded on."""
    z, dtype, device = _prepare(head, z)
    (_, basis), = _bases(V, z.shape[1], dtype, device)[:1]
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    graph, n_classes = _graph_and_classes(head, z, method)
    center, G = box(z, basis, float(eps))
    return graph, center, G, margin_matrix(labels, n_classes, dtype)


def margin_upper_bounds(head: nn.Module, z: torch.Tensor, labels: torch.Tensor, V: DirectionLike, eps: float,
                        method: str = "crown-ibp", beta: float = 1.0) -> torch.Tensor:
    """Upper bounds ``[N, n_classes - 1]`` of ``y_j - y_label`` (every wrong class j) over
    ``z + V t``, ``|t| <= eps``, for one direction (differentiable w.r.t. the head's
    parameters and ``z``). All ``< 0`` for a seed means its label is proved on its box."""
    graph, center, G, C = _margin_box(head, z, labels, V, eps, method)
    return _spec_upper(head, graph, center, G, C, _zeros(C), method, beta)


def margin_bounds(head, z, labels, V, eps, method="crown-ibp", beta=1.0):
    """Lower and upper bounds of the margins ``y_j - y_label`` (``[N, n_classes - 1]`` each)."""
    graph, center, G, C = _margin_box(head, z, labels, V, eps, method)
    CC = torch.cat([C, -C], 1)
    ub = _spec_upper(head, graph, center, G, CC, _zeros(CC), method, beta)
    m = C.shape[1]
    return -ub[:, m:], ub[:, :m]


def logit_bounds(head: nn.Module, z: torch.Tensor, V: DirectionLike, eps: float, method: str = "ibp",
                 beta: float = 1.0):
    """Lower and upper bounds ``[N, n_out]`` of every logit over the boxes (differentiable)."""
    z, dtype, device = _prepare(head, z)
    (_, basis), = _bases(V, z.shape[1], dtype, device)[:1]
    center, G = box(z, basis, float(eps))
    graph, n_out = _graph_and_classes(head, z, method)
    if method == "ibp":
        lo, hi = EB.ibp_bounds(graph, center, G)[-1]
        return lo.reshape(z.shape[0], -1).to(dtype), hi.reshape(z.shape[0], -1).to(dtype)
    C = _logit_rows(z.shape[0], n_out, dtype, device)
    ub = _spec_upper(head, graph, center, G, C, _zeros(C), method, beta)
    return -ub[:, n_out:], ub[:, :n_out]


def bound_gap(head, z, labels, V, eps, method="crown-ibp", beta=1.0) -> torch.Tensor:
    """Mean width (upper minus lower bound) of the margins ``y_j - y_label`` over the boxes:
    how loose the bounds are; certified training shrinks it."""
    lo, hi = margin_bounds(head, z, labels, V, eps, method, beta)
    return (hi - lo).mean()


# ------------------------------------------------------------------------------ losses
def _spec_loss_one(head, graph, z, labels, basis, eps, method, form, beta, n_classes):
    dtype, device = z.dtype, z.device
    center, G = box(z, basis, eps)
    if form == "margin":
        C = margin_matrix(labels, n_classes, dtype)
        ub = _spec_upper(head, graph, center, G, C, _zeros(C), method, beta)
        # CE with logits 0 for the label and u_j for the others: log(1 + sum_j exp(u_j))
        zhat = torch.cat([torch.zeros_like(ub[:, :1]), ub], 1)
        return F.cross_entropy(zhat, torch.zeros_like(labels), reduction="none"), ub
    if form == "logits":
        C = _logit_rows(z.shape[0], n_classes, dtype, device)
        ub = _spec_upper(head, graph, center, G, C, _zeros(C), method, beta)
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
    if method not in METHODS:
        raise LatentAuditError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    bases = _bases(V, z.shape[1], dtype, device)
    eps_l = _eps_list(eps, [n for n, _ in bases])
    losses, bounds = [], {}
    y0 = graph = n_classes = None
    for (name, basis), e in zip(bases, eps_l):
        if e == 0 and not return_bounds:
            if y0 is None:
                y0 = head(z)
            losses.append(F.cross_entropy(y0, labels, reduction="none"))  # the box is the seed
            continue
        if n_classes is None:
            graph, n_classes = _graph_and_classes(head, z, method)
        loss, ub = _spec_loss_one(head, graph, z, labels, basis, e, method, form, beta, n_classes)
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
    """Fraction of seeds whose label the engine's bound proves on the box (no splitting, no
    final proof margin: a quick training monitor; use ``pytest_latentaudit.audit`` for a
    verdict)."""
    modes = _eval_modes(head)
    try:
        ub = margin_upper_bounds(head, z, labels, V, eps, method)
        z2, _, device = _prepare(head, z)
        lab = torch.as_tensor(labels, device=device).long().reshape(-1)
        ok = (ub < 0).all(1) & (head(z2).argmax(1) == lab)
        return int(ok.sum()) / max(1, ok.numel())
    finally:
        _restore(modes)


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
    from ..engines.lirpa_compat import import_auto_lirpa

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
    key = (id(head), tuple(V.reshape(-1).tolist()), center.dtype, str(center.device), _fingerprint(head, center))
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
