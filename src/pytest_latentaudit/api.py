"""Public entry points usable without pytest: ``verify_box`` and ``audit``."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from .engines.bounds import check_graph
from .engines.graph import TRACE_BATCH, get_graph, warm_tracer
from .engines.ladder import ENGINES, FALSIFIED, UNKNOWN, VERIFIED, Ladder
from .engines.ops import UnsupportedLayer
from .engines.problem import Problem
from .core.errors import LatentAuditError
from .core.latent import Direction, LatentSpace, direction_label
from .core.specs import (Accuracy, ConfidentTargeted, Invariance, Linear, OutputRange, Prediction, PredictionNotIn,
                         Spec, as_spec, class_indices)
from .core.vocab import (ATTACKS, ESTIMATED, LIRPA_PREFIX, PROVED, UNPROVEN, VIOLATED, decide_verdict,  # noqa: F401
                         parse_budget)


# ----------------------------------------------------------------------------- results
@dataclass
class BoxResult:
    """Per-box outcome of ``verify_box``."""

    status: List[str]
    counterexamples: List[Optional[torch.Tensor]]
    rung: List[str]
    bound: torch.Tensor  # proven upper bound of the worst spec row per box (< 0 means proved)
    seconds: float
    engine: str
    notes: List[str] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        return {s: self.status.count(s) for s in (VERIFIED, FALSIFIED, UNKNOWN)}


@dataclass
class Counterexample:
    seed_index: int
    offset: List[float]  # t, in latent units along the direction's basis
    offset_eps: List[float]  # t / eps
    predicted: Optional[int]
    expected: Optional[int]
    margin: float
    z: Optional[torch.Tensor] = None  # the counterexample latent code
    z0: Optional[torch.Tensor] = None  # its seed

    def to_json(self) -> dict:
        return {"seed_index": self.seed_index, "offset": self.offset, "offset_eps": self.offset_eps,
                "predicted": self.predicted, "expected": self.expected, "margin": self.margin}


@dataclass
class AuditResult:
    verdict: str
    status: List[str]
    rung: List[str]
    n: int
    at_least: float
    seconds: float
    engine: str
    direction: str
    eps: float
    spec: str
    counterexamples: List[Counterexample]
    bound: List[float]
    notes: List[str] = field(default_factory=list)
    #: exact engine: per seed, the fraction of the segment where the spec holds, and
    #: the failing sub-intervals of t (None where the exact engine did not run)
    segment_fraction: Optional[List[Optional[float]]] = None
    bad_intervals: Optional[List[list]] = None
    #: sampling evidence (stats.estimated_verdict): fraction of the seeds' boxes where the
    #: spec holds, with a Clopper-Pearson interval; drives the ``estimated`` verdict
    estimate: Optional[dict] = None
    #: the budget stopped the proof attempt before it ran out of work (``Outcome.cut``)
    cut_by_budget: bool = False

    @property
    def counts(self) -> Dict[str, int]:
        return {s: self.status.count(s) for s in (VERIFIED, FALSIFIED, UNKNOWN)}

    @property
    def verified_fraction(self) -> float:
        return self.counts[VERIFIED] / self.n if self.n else 1.0

    @property
    def worst(self) -> Optional[Counterexample]:
        return max(self.counterexamples, key=lambda c: c.margin) if self.counterexamples else None

    def rungs(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s, r in zip(self.status, self.rung):
            if s != UNKNOWN:
                out[r] = out.get(r, 0) + 1
        return out

    def failing_bound(self) -> Optional[float]:
        """The largest proven bound among seeds not verified (> 0: the proof fell short)."""
        vals = [b for b, s in zip(self.bound, self.status) if s != VERIFIED and math.isfinite(b)]
        return max(vals) if vals else None


# --------------------------------------------------------------------------- helpers
def resolve_device(device: Any = "auto") -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LatentAuditError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatentAuditError("device 'cuda' was requested but CUDA is not available on this machine "
                               "(use --latent-device auto or cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise LatentAuditError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


@contextlib.contextmanager
def _eval_mode(model):
    """Run the model in eval mode (bounds assume BatchNorm statistics and no dropout) and
    restore each module's flag afterwards."""
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, f in flags:
            m.training = f


def _mode_note(model) -> List[str]:
    """A note when the model came in training mode and some module's forward reads its mode
    (dropout, BatchNorm's batch statistics, a user's ``if self.training``): the verdicts are of
    the model in eval mode, as ``_eval_mode`` runs it, not of the mode it was in."""
    if not isinstance(model, torch.nn.Module):
        return []
    reads = []
    for name, m in model.named_modules():
        fwd = getattr(type(m), "forward", None)
        code = getattr(fwd, "__code__", None)
        if m.training and code is not None and "training" in code.co_names:
            reads.append(name or type(m).__name__)
    if not reads:
        return []
    more = f" and {len(reads) - 3} more" if len(reads) > 3 else ""
    return [f"the model was in training mode and {', '.join(reads[:3])}{more} behave differently in it: "
            f"the verdicts are of the model in eval mode (model.eval(): running statistics, no dropout), "
            f"as deployments run it; its modes are restored"]


def _on_device(model, device: torch.device):
    """The model on ``device`` without moving the user's copy."""
    if not isinstance(model, torch.nn.Module):
        return model
    p = next(iter(list(model.parameters()) + list(model.buffers())), None)
    if p is None or p.device == device:
        return model
    return copy.deepcopy(model).to(device)


def _input_dtype(model, like=None) -> torch.dtype:
    """The dtype the model is fed: its floating parameters' (float64 models get float64
    inputs), else the input's own floating dtype, else float32."""
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    if torch.is_tensor(like) and like.is_floating_point():
        return like.dtype
    return torch.float32


def _round_into(t: torch.Tensor, dtype, device, up: bool) -> torch.Tensor:
    """``t`` in ``dtype``, rounded up (``up``) or down where the conversion is inexact: the
    nearest ``dtype`` number at or above (below) each value."""
    ref = t.to(device=device, dtype=torch.float64)  # exact for every float dtype below it
    out = t.to(device=device, dtype=dtype)
    bad = out.double() < ref if up else out.double() > ref
    if bool(bad.any()):
        out = torch.where(bad, torch.nextafter(out, torch.full_like(out, torch.inf if up else -torch.inf)), out)
    return out


def _check_finite(name, t):
    if not torch.isfinite(t).all():
        raise LatentAuditError(f"{name} contains NaN or inf")


def _check_model(model):
    if isinstance(model, torch.nn.Module):
        params = {name for name, _ in model.named_parameters()}
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            what = "parameter" if name in params else "buffer"
            if p.is_inference():
                # any op on it outside inference mode fails (isfinite with autograd on raises a
                # RuntimeError about out= arguments), and so would the user's own training step
                raise LatentAuditError(
                    f"model {what} {name!r} was created under torch.inference_mode() (an inference tensor, "
                    f"which autograd and in-place updates refuse outside it); build or load the model outside "
                    f"inference_mode, or replace its parameters by clones made outside it")
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise LatentAuditError(f"model parameter {name!r} contains NaN or inf")
    elif not callable(model):
        raise LatentAuditError(f"model must be an nn.Module or a callable, got {type(model).__name__}")


def _plain_outputs(model, x: torch.Tensor, what: str) -> torch.Tensor:
    """``model(x)`` as ``[n, outputs]`` (``_logits``), in halves of the batch when it does not
    fit in memory; a model that fails on ``x`` is a ``LatentAuditError`` naming ``what``."""
    from .engines.memory import on_halves

    try:
        # a clone: a forward that writes into its input in place (``x.add_(1)``) must not move the
        # user's box or seeds (``lower`` and ``z`` can be the user's own tensors), nor ours
        return on_halves(lambda sl: _logits(model(x[sl].clone()), sl.stop - sl.start), x.shape[0], torch.cat)
    except LatentAuditError:
        raise
    except Exception as exc:  # the user's model rejects these inputs: say so clearly
        raise LatentAuditError(f"the model failed on {what} (shape {tuple(x.shape)}): {exc}") from exc


def _logits(y, n: int) -> torch.Tensor:
    """The model's output for a batch of ``n`` inputs as ``[n, outputs]``, or a
    ``LatentAuditError`` that names what it returned and what to change."""
    if isinstance(y, (tuple, list)) and y and torch.is_tensor(y[0]):
        y = y[0]  # (logits, extras): the first element, as the engines bound it
    fix = "forward() must return the logits tensor, one row per input: [N, classes]"
    if y is None:
        raise LatentAuditError(f"the model returned None for a batch of {n} inputs; {fix} (a missing 'return'?)")
    if isinstance(y, Mapping):
        keys = ", ".join(repr(k) for k in list(y)[:5])
        first = repr(next(iter(y), "logits"))
        raise LatentAuditError(f"the model returned a dict (keys {keys}); {fix}: wrap it, e.g. "
                               f"lambda z: model(z)[{first}]")
    if not torch.is_tensor(y):
        raise LatentAuditError(f"the model returned {type(y).__name__}, not a tensor; {fix}")
    if y.dim() == 0:
        raise LatentAuditError(f"the model returned a scalar for a batch of {n} inputs; {fix} (did it reduce over "
                               f"the batch, e.g. with .sum() or .mean()?)")
    if y.shape[0] != n:
        raise LatentAuditError(f"the model returned shape {tuple(y.shape)} for a batch of {n} inputs: the first "
                               f"dimension must be the batch ({n}); {fix}")
    if not y.is_floating_point():
        raise LatentAuditError(f"the model returned {y.dtype} outputs; {fix} (floating point, before any argmax)")
    return y.reshape(n, -1)


_CLASSIFICATION = (Accuracy, Invariance, Prediction, PredictionNotIn, ConfidentTargeted)


def _check_spec_outputs(spec: Spec, n_out: int, labels=None) -> None:
    """Class indices of ``spec`` (and ``labels``) must name outputs of the model; a spec about
    classes needs at least two of them."""
    if isinstance(spec, _CLASSIFICATION) and n_out < 2:
        raise LatentAuditError(f"{spec.describe()} compares classes but the model has {n_out} output; return one "
                               f"logit per class (for a single score use OutputRange or Linear)")

    def check(what, idx, fix):
        try:
            idx = class_indices(idx)
        except ValueError as exc:
            raise LatentAuditError(f"{what}: {exc}; {fix}") from None
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_out):
            bad = sorted({int(i) for i in idx.tolist() if i < 0 or i >= n_out})[:5]
            raise LatentAuditError(f"{what} {', '.join(map(str, bad))} out of range for a model with {n_out} outputs "
                                   f"(classes 0..{n_out - 1}); {fix}")

    if labels is not None and (spec.needs_labels or isinstance(spec, Prediction)):
        check("label(s)", labels, "labels are class indices of the model's outputs")
    if isinstance(spec, Prediction) and spec.label is not None:
        check("Prediction label(s)", spec.label, "pass class indices of the model's outputs")
    if isinstance(spec, PredictionNotIn):
        check("PredictionNotIn class(es)", spec.classes, "list class indices of the model's outputs")
    if isinstance(spec, ConfidentTargeted):
        check("ConfidentTargeted target", [spec.target], "pass a class index of the model's outputs")
    if isinstance(spec, OutputRange):
        try:  # builds its rows for this width: per-output bounds of another length are an error here
            spec._check(torch.zeros(1, n_out, dtype=torch.float64))
        except ValueError as exc:
            raise LatentAuditError(str(exc)) from None
    if isinstance(spec, Linear) and getattr(spec, "C", None) is not None and spec.C.shape[1] != n_out:
        raise LatentAuditError(f"Linear spec: C has {spec.C.shape[1]} columns but the model has {n_out} outputs; "
                               f"C must be [rows, {n_out}]")


def _check_points(problem: Problem, max_boxes: int = 32, generator=None) -> torch.Tensor:
    """Points of the boxes being verified for the trace check: centre, corners (k <= 4)
    and random interior points of up to ``max_boxes`` boxes spread over the batch."""
    n, k = problem.n, problem.k
    idx = torch.linspace(0, n - 1, min(n, max_boxes)).round().long().unique().to(problem.tl.device)
    units = [torch.zeros(1, k, dtype=torch.float64)]
    if k <= 4:
        units.append(torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * k).reshape(-1, k))
    units.append(torch.rand(2, k, generator=generator, dtype=torch.float64) * 2 - 1)
    U = torch.cat(units).to(problem.tl.device)
    tl, tu = problem.tl[idx], problem.tu[idx]
    t = ((tl + tu) / 2)[:, None] + ((tu - tl) / 2)[:, None] * U[None]
    rows = idx.repeat_interleave(U.shape[0])
    return problem.point(rows, t.reshape(-1, k))


def _before_the_clock(model, engine: str) -> None:
    """One-time imports a call will need, done before its budget starts counting: the
    tracer's (for a module whose bounds we lower) and auto_LiRPA's (for its engines)."""
    if engine == "falsify" or not isinstance(model, torch.nn.Module):
        return
    warm_tracer()
    if engine.startswith(LIRPA_PREFIX):
        from .engines.lirpa_compat import import_auto_lirpa

        try:
            import_auto_lirpa()
        except ImportError:
            pass  # the engine says so in its notes


def _graph_or_note(model, problem: Problem, device, notes):
    """The bound graph of ``model`` as it runs now, or None (with a note) when no proof
    may be claimed: an op without a sound bound operator, a plain callable, or a graph
    that disagrees with the model's own forward pass on points of these boxes."""
    if not isinstance(model, torch.nn.Module):
        notes.append("the model is a plain callable, not an nn.Module: no proof is possible without the module; "
                     "falsification and sampling only")
        return None
    try:
        # traced at the user's batch size too (at 1 when that is the trace's own): a forward
        # that branches on its batch size is another function there
        graph = get_graph(model, problem.input_shape, device=device, example=problem.x0[:2].to(problem.x_dtype),
                          other_batch=problem.n if problem.n != TRACE_BATCH else 1)
    except UnsupportedLayer as exc:
        notes.append(f"{exc}; falling back to falsification only (no proof possible)")
        return None
    # a private generator: the user's global RNG state is left alone
    msg = check_graph(graph, problem.model_forward, _check_points(problem, generator=_generator(0x7ACE)))
    if msg is not None:
        notes.append(f"{msg}; falling back to falsification only")
        return None
    return graph


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF)
    return g


def _split_spec(spec: Spec, n: int, device):
    """Per-box labels out of a spec so sub-boxes can index them."""
    if isinstance(spec, (Accuracy, Invariance)):
        raise LatentAuditError(f"{spec.describe()} is a test-level spec; use it with audit() or the "
                               f"latent marker. For boxes use Prediction(labels).")
    if isinstance(spec, Prediction):
        from .core.specs import _as_labels

        if spec.label is None:
            raise LatentAuditError("Prediction() needs a label (an int or one per box)")
        return Prediction(), _as_labels(spec.label, n, device)
    return spec, None


def _run_ladder(model, problem, input_shape, device, engine, budget_s, seed, precision, notes, replay=None,
                attack="sign", bound_factory=None, falsifier=None, progress=None,
                t_start: Optional[float] = None):
    # the budget counts from the caller's start (``t_start``: input checks, the first forward
    # pass and lowering the graph are part of the call the budget is for)
    if bound_factory is None and engine.startswith(LIRPA_PREFIX):
        from .engines.lirpa import LIRPA_METHODS

        method = engine.partition(":")[2]
        if engine.partition(":")[0] != LIRPA_PREFIX or method not in ("",) + LIRPA_METHODS:
            # a misspelt method ran falsification only, with no note saying why
            raise LatentAuditError(f"unknown engine {engine!r}; the auto_LiRPA engines are "
                                   f"{', '.join(LIRPA_PREFIX + ':' + m for m in LIRPA_METHODS)}")
    start = time.perf_counter() if t_start is None else t_start
    deadline = start + (budget_s if budget_s is not None else float("inf"))
    bound_fn, graph = None, None
    name = engine
    if bound_factory is not None:  # an engine registered through the pytest_latentaudit_engines hook
        bound_fn = bound_factory(model, problem, notes)
        name = engine if bound_fn is not None else "falsify"
    elif engine.startswith(LIRPA_PREFIX):
        from .engines.lirpa_engine import make_bound_fn

        # the checked native lowering bounds the model's float rounding around auto_LiRPA's bound
        rounding_graph = _graph_or_note(model, problem, device, notes)
        bound_fn = make_bound_fn(model, problem, engine, notes, graph=rounding_graph)
        name = engine if bound_fn is not None else "falsify"
    elif engine != "falsify":
        graph = _graph_or_note(model, problem, device, notes)
    if engine not in ENGINES and not engine.startswith(LIRPA_PREFIX) and bound_factory is None:
        raise LatentAuditError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)} "
                               f"or auto_lirpa:<ibp|crown|crown-ibp|alpha-crown>")
    # ``name``: the engine asked for, or "falsify" where an external engine gave no bounds
    ladder = Ladder(problem, graph, engine=name, deadline=deadline,
                    generator=_generator(seed), precision=precision, bound_fn=bound_fn, replay=replay,
                    attack_method=attack, attack_fn=falsifier, progress=progress)
    return ladder.run(), name


# ------------------------------------------------------------------------ verify_box
def verify_box(model, lower, upper, spec, *, engine: str = "auto", device="auto", budget_s: Optional[float] = None,
               seed: int = 0, precision: str = "float32", progress=None) -> BoxResult:
    """Decide ``spec`` on each box ``[lower[i], upper[i]]`` (shapes ``[N, *input_shape]``).

    ``progress``: an optional ``fn(rung, decided, total)`` called as the proof ladder moves on
    (rung names such as ``"ibp"``, ``"linear"``, ``"bab"``; boxes decided so far, out of N).

    Only the coordinates that vary in some box become bound-propagation coordinates, so a
    box that moves 2 of 128 latent dims costs a few forward passes per bound.
    """
    budget_s = check_budget(budget_s)
    _before_the_clock(model, engine)
    t0 = time.perf_counter()
    spec = as_spec(spec)
    dev = resolve_device(device)
    x_dtype = _input_dtype(model, lower)
    lower_in, upper_in = torch.as_tensor(lower), torch.as_tensor(upper)
    if lower_in.shape != upper_in.shape or lower_in.dim() < 2 or lower_in.shape[0] == 0:
        raise LatentAuditError(f"lower and upper must both be [N, *input_shape] with N >= 1; got "
                               f"{tuple(lower_in.shape)} and {tuple(upper_in.shape)}")
    _check_finite("lower", lower_in)
    _check_finite("upper", upper_in)
    if (lower_in > upper_in).any():
        raise LatentAuditError("lower > upper in some box")
    # the model is fed x_dtype: the box's inputs are the x_dtype numbers inside [lower, upper],
    # so the bounds are rounded inwards (to nearest, fl32(0.3) > 0.3 put a point outside a
    # float64 box in it, and a violation there was reported as a counterexample of the box)
    lower = _round_into(lower_in, x_dtype, dev, up=True)
    upper = _round_into(upper_in, x_dtype, dev, up=False)
    empty = lower > upper
    if bool(empty.any()):
        # a coordinate that holds no x_dtype number (a point, or a sliver, given in float64,
        # as the unperturbed coordinates of a float64 seed are) is the x_dtype number nearest
        # to it: the one input a cast of the user's value feeds the model there
        lower = torch.where(empty, lower_in.to(device=dev, dtype=x_dtype), lower)
        upper = torch.where(empty, upper_in.to(device=dev, dtype=x_dtype), upper)
    _check_model(model)
    n, shape = lower.shape[0], tuple(lower.shape[1:])
    with _eval_mode(model), torch.no_grad():  # one plain forward pass: what the model returns, checked
        y_lo = _plain_outputs(_on_device(model, dev), lower, "the boxes' lower corners")
    _check_spec_outputs(spec, y_lo.shape[1])
    box_spec, labels = _split_spec(spec, n, dev)
    flat_w = (upper - lower).reshape(n, -1)
    dims = torch.nonzero((flat_w > 0).any(0)).reshape(-1)
    if dims.numel() == 0:
        dims = torch.zeros(1, dtype=torch.long, device=dev)  # point boxes: one zero-width coordinate
    k, D = dims.numel(), flat_w.shape[1]
    V = torch.zeros(1, k, D, device=dev, dtype=x_dtype)
    V[0, torch.arange(k), dims] = 1.0
    # the box exactly as given: float64 centre and a half-width rounded up until
    # centre -+ half reaches both of the user's bounds
    lo64, hi64 = lower.double(), upper.double()
    x0 = (lo64 + hi64) / 2
    half = torch.maximum(hi64 - x0, x0 - lo64).reshape(n, -1)[:, dims]
    half = torch.nextafter(half, torch.full_like(half, torch.inf))
    notes: List[str] = _mode_note(model)
    with _eval_mode(model):
        m = _on_device(model, dev)
        problem = Problem(m, x0, V.reshape(1, k, *shape), -half, half, box_spec, labels,
                          clamp_lower=lower, clamp_upper=upper, x_dtype=x_dtype)
        out, name = _run_ladder(m, problem, shape, dev, engine, budget_s, seed, precision, notes,
                                progress=progress, t_start=t0)
    return BoxResult(out.status, out.cex_x, out.rung, out.bound.cpu(), time.perf_counter() - t0, name,
                     notes + out.notes)


# ----------------------------------------------------------------------------- audit
def _as_seeds(seeds, labels):
    if isinstance(seeds, tuple) and len(seeds) == 2:  # the documented (z, labels) pair
        seeds, pair_labels = seeds
        labels = labels if labels is not None else pair_labels
    z = torch.as_tensor(seeds)
    if not z.is_floating_point():
        z = z.float()
    if z.dim() < 2:
        raise LatentAuditError(f"seeds must be latent codes shaped [N, latent_dim]; got shape {tuple(z.shape)}")
    if z.dim() == 3 and z.shape[1] == 1:
        raise LatentAuditError(f"seeds shaped {tuple(z.shape)} = [N, 1, latent_dim]: latent codes are [N, latent_dim]; "
                               f"drop the middle dimension (z.squeeze(1), or torch.cat of the [1, d] codes instead "
                               f"of torch.stack)")
    if z.shape[0] == 0:
        raise LatentAuditError("no seeds: a semantic test needs at least one latent code")
    if labels is not None:
        try:
            labels = class_indices(labels)
        except ValueError as exc:
            raise LatentAuditError(str(exc)) from None
        if labels.numel() != z.shape[0]:
            raise LatentAuditError(f"got {z.shape[0]} seeds but {labels.numel()} labels")
    return z, labels


def _direction_basis(direction, latent_space: Optional[LatentSpace], dim: int, dev):
    """The direction's orthonormal basis in float64 (the caller rounds it once, to the model's
    input dtype): a float32 basis is another segment for a float64 model (a unit vector's
    float32 rounding turns it by about 1e-8), whose points are not the user's box."""
    f64 = torch.float64
    if isinstance(direction, str):
        if latent_space is None:
            raise LatentAuditError(f"direction {direction!r} is a name; pass latent_space= to resolve it")
        d = latent_space.direction(direction)
        return d.basis(dim, dtype=f64, device=dev), direction
    if isinstance(direction, Direction):
        return direction.basis(dim, dtype=f64, device=dev), direction_label(direction)
    if direction is None:
        raise LatentAuditError("audit needs a direction")
    V = torch.as_tensor(direction, dtype=f64)
    return Direction.subspace(V if V.dim() == 2 else V.reshape(-1, 1)).basis(dim, dtype=f64, device=dev), \
        direction_label(direction)


def check_eps(eps) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise LatentAuditError(f"eps must be a number, got {eps!r}") from None
    if math.isnan(e) or math.isinf(e) or e < 0:
        raise LatentAuditError(f"eps must be a finite number >= 0, got {eps!r}")
    return e


def check_budget(budget_s) -> Optional[float]:
    """``budget_s`` as seconds, or None (no limit): ``vocab.parse_budget``, as a usage error."""
    try:
        return parse_budget(budget_s)
    except ValueError as exc:
        raise LatentAuditError(f"budget_s: {exc}") from None


@dataclass
class _Prepared:
    model: Any
    z: torch.Tensor
    Vt: torch.Tensor
    box_spec: Spec
    box_labels: Optional[torch.Tensor]
    dname: str
    dev: torch.device

    @property
    def n(self) -> int:
        return self.z.shape[0]

    @property
    def k(self) -> int:
        return self.Vt.shape[1]

    @property
    def input_shape(self):
        return tuple(self.z.shape[1:])


def _prepare(model, seeds, labels, direction, spec: Spec, latent_space, device) -> _Prepared:
    """Validate an audit's inputs and build the per-seed box spec (labels resolved)."""
    dev = resolve_device(device)
    z, labels = _as_seeds(seeds, labels)
    _check_finite("seeds", z)
    _check_model(model)
    if spec.needs_labels and labels is None:
        raise LatentAuditError(f"{spec.describe()} needs labels: pass seeds as (z, labels)")
    z = z.to(device=dev, dtype=_input_dtype(model, z))
    labels = None if labels is None else labels.to(dev)
    n, dim = z.shape[0], int(z[0].numel())
    V, dname = _direction_basis(direction, latent_space, dim, dev)
    V = V.to(z.dtype)
    with _eval_mode(model):
        m = _on_device(model, dev)
        with torch.no_grad():
            y0 = _plain_outputs(m, z, "the seeds")
    _check_spec_outputs(spec, y0.shape[1], labels if spec.needs_labels else None)
    seed_spec = spec.seed_spec(labels, y0.argmax(1))
    if isinstance(seed_spec, Prediction):
        box_spec = Prediction()
        box_labels = torch.as_tensor(seed_spec.label, device=dev).long().reshape(-1)
    else:
        box_spec, box_labels = seed_spec, None
    return _Prepared(m, z, V.T.reshape(1, V.shape[1], *z.shape[1:]), box_spec, box_labels, dname, dev)


def certified_radius(model, seeds, labels=None, direction=None, spec: Spec = None, *, eps_max: float,
                     iters: int = 10, latent_space: Optional[LatentSpace] = None, device="auto",
                     engine: str = "linear", precision: str = "float32",
                     budget_s: Optional[float] = None) -> torch.Tensor:
    """Per seed, the largest radius (within ``eps_max / 2**iters``) whose box a sound bound
    verifies; 0 where not even the smallest box is proved. AuditAI's iterative search for the
    largest verified set, by bisection on all seeds at once. Bounds only: no attacks."""
    budget_s = check_budget(budget_s)
    spec = as_spec(spec if spec is not None else Invariance())
    eps_max = check_eps(eps_max)
    if engine not in ("ibp", "linear"):
        raise LatentAuditError("certified_radius uses engine 'ibp' or 'linear'")
    prep = _prepare(model, seeds, labels, direction, spec, latent_space, device)
    deadline = time.perf_counter() + (budget_s if budget_s is not None else float("inf"))
    lo = torch.zeros(prep.n, device=prep.dev)
    hi = torch.full((prep.n,), eps_max, device=prep.dev)

    def verified_at(r):
        tl = -r[:, None].expand(-1, prep.k).contiguous()
        problem = Problem(prep.model, prep.z, prep.Vt, tl, -tl, prep.box_spec, prep.box_labels)
        ladder = Ladder(problem, graph, engine=engine, precision=precision)
        ladder.run_bound("ibp", "ibp")
        if engine == "linear":
            ladder.run_bound("linear", "linear")
        return torch.tensor([s == VERIFIED for s in ladder.status], device=prep.dev)

    with _eval_mode(model):
        tl = -hi[:, None].expand(-1, prep.k).contiguous()
        graph = _graph_or_note(prep.model, Problem(prep.model, prep.z, prep.Vt, tl, -tl, prep.box_spec,
                                                   prep.box_labels), prep.dev, [])
        if graph is None:
            return lo.cpu()  # nothing can be certified without a checked bound graph
        top = verified_at(hi)
        lo = torch.where(top, hi, lo)
        for _ in range(iters):
            if bool(top.all()) or time.perf_counter() > deadline:
                break
            mid = (lo + hi) / 2
            ok = verified_at(mid) | top
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo.cpu()


def audit(model, seeds, labels=None, direction=None, eps: float = 0.0, spec: Spec = None, *,
          latent_space: Optional[LatentSpace] = None, engine: str = "auto", device="auto",
          budget_s: Optional[float] = None, seed: int = 0, precision: str = "float32",
          replay: Optional[Sequence] = None, attack: str = "sign", confidence: float = 0.99,
          bound_factory=None, falsifier=None, progress=None) -> AuditResult:
    """Run a semantic unit test: every seed ``z0`` moved by ``V t``, ``t in [-eps, eps]^k``.

    ``seeds`` is ``[N, latent_dim]`` (or a ``(z, labels)`` pair); ``direction`` a
    ``Direction``, a name declared by ``latent_space`` or a ``[d]``/``[d, k]`` tensor.
    ``replay``: ``[(seed_index, t)]`` counterexamples of an earlier run, re-checked first.
    ``attack``: ``"sign"`` (PGD), ``"adam"`` or ``"blackbox"`` (gradient-free).
    ``confidence``: of the sampling interval behind an ``estimated`` verdict.
    ``bound_factory`` / ``falsifier``: a custom engine / attack (see hooks.py), used under
    the names ``engine`` / ``attack``.
    ``progress``: an optional ``fn(rung, decided, total)`` (seeds decided so far, out of N),
    called as the proof ladder moves on; it only observes.
    """
    budget_s = check_budget(budget_s)
    if attack not in ATTACKS and falsifier is None:
        raise LatentAuditError(f"unknown attack {attack!r}; use sign, adam or blackbox")
    _before_the_clock(model, engine)
    t0 = time.perf_counter()
    spec = as_spec(spec if spec is not None else Invariance())
    eps = check_eps(eps)
    prep = _prepare(model, seeds, labels, direction, spec, latent_space, device)
    notes: List[str] = _mode_note(model)
    with _eval_mode(model):
        tl = torch.full((prep.n, prep.k), -eps, dtype=torch.float64, device=prep.dev)  # the eps asked for, not its float32 rounding
        problem = Problem(prep.model, prep.z, prep.Vt, tl, -tl, prep.box_spec, prep.box_labels)
        out, name = _run_ladder(prep.model, problem, prep.input_shape, prep.dev, engine, budget_s, seed, precision,
                                notes, replay=replay, attack=attack, bound_factory=bound_factory,
                                falsifier=falsifier, progress=progress, t_start=t0)
    z, n, box_labels, dname = prep.z, prep.n, prep.box_labels, prep.dname

    cexs: List[Counterexample] = []
    for i, s in enumerate(out.status):
        if s != FALSIFIED:
            continue
        x = out.cex_x[i]
        with torch.no_grad(), _eval_mode(model):
            y = problem.model_forward(x[None])
        t = out.cex_t[i].tolist()
        cexs.append(Counterexample(
            seed_index=i, offset=t, offset_eps=[v / eps if eps else 0.0 for v in t],
            predicted=int(y.argmax(1)), expected=None if box_labels is None else int(box_labels[i]),
            margin=float(out.cex_margin[i]), z=x.detach().cpu(), z0=z[i].detach().cpu()))
    counts = {s: out.status.count(s) for s in (VERIFIED, FALSIFIED)}
    verdict = decide_verdict(n, counts[VERIFIED], counts[FALSIFIED], spec.at_least)
    estimate = None
    if out.sample_holds is not None:
        from .engines.stats import estimated_verdict

        estimate = estimated_verdict(out.status, out.sample_holds, out.sample_n, spec.at_least, confidence)
        if verdict == UNPROVEN and estimate["verdict"] == ESTIMATED:
            verdict = ESTIMATED
    return AuditResult(verdict=verdict, status=out.status, rung=out.rung, n=n, at_least=spec.at_least,
                       seconds=time.perf_counter() - t0, engine=name, direction=dname, eps=eps,
                       spec=spec.describe(), counterexamples=cexs, bound=out.bound.cpu().tolist(),
                       notes=notes + out.notes, estimate=estimate, cut_by_budget=bool(out.cut), **_segment_fields(out))


def _segment_fields(out) -> dict:
    if out.fraction is None or bool(torch.isnan(out.fraction).all()):
        return {}
    frac = [None if math.isnan(f) else f for f in out.fraction.tolist()]
    return {"segment_fraction": frac, "bad_intervals": out.bad_intervals}
