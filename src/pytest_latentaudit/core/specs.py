"""Specs: what must hold on every point of a latent box.

Each spec answers three questions about a batch of model outputs ``y`` ``[N, n_out]``:

* ``holds(y, labels)`` -- the plain check used to re-evaluate counterexamples;
* ``margin(y, labels)`` -- a differentiable violation score (``> 0`` where violated,
  ``holds`` is ``margin <= 0`` up to ties) that attacks maximise;
* ``rows(y_center, labels)`` -- a matrix ``C`` ``[N, m, n_out]`` and offset ``d``
  ``[N, m]`` such that ``C y + d <= 0`` for every row implies the spec holds. Bound
  engines prove ``max(C y + d) < 0`` over the box, so the spec is folded into the last
  layer and per-box labels cost nothing.

``Accuracy`` and ``Invariance`` are *test-level* specs: per seed they are ``Prediction`` of
the seed's label (or of its nominal prediction) and the test verdict compares the verified
fraction with ``at_least``.

This module imports torch lazily so that test files can import the specs while the plugin
stays light.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence


def _torch():
    import torch

    return torch


def _check_fraction(name: str, q: float) -> float:
    q = float(q)
    if not (0.0 <= q <= 1.0) or math.isnan(q):
        raise ValueError(f"{name}: at_least must be a fraction in [0, 1], got {q!r}")
    return q


class Spec:
    """Base class. Subclasses set ``kind`` and implement the three methods."""

    kind = "spec"
    #: test-level threshold on the fraction of seeds that must hold
    at_least: float = 1.0
    #: whether per-seed labels are required
    needs_labels = False

    def describe(self) -> str:
        return self.kind

    def to_json(self) -> dict:
        return {"kind": self.kind, "at_least": self.at_least}

    # -- per-seed semantics -------------------------------------------------------
    def seed_spec(self, labels, nominal_predictions) -> "Spec":
        """The per-box spec used for each seed of an audit."""
        return self

    def holds(self, y, labels=None):
        return self.margin(y, labels) <= 0

    def margin(self, y, labels=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def rows(self, y_center, labels=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


def class_indices(labels, device=None):
    """``labels`` as a flat long tensor of class indices; ``ValueError`` for fractional ones
    (``.long()`` would truncate 0.5 to class 0)."""
    torch = _torch()
    try:
        t = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        # a string, a ragged list, an object: torch's own message does not say what was wrong
        raise ValueError(f"labels must be class indices (integers), got {labels!r:.80}") from None
    if not (t.is_floating_point() or t.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                                                torch.int64)):
        raise ValueError(f"labels must be class indices (integers), got a {t.dtype} tensor")
    # NaN and inf too: .long() turns them into arbitrary integers (or an OverflowError later)
    if t.is_floating_point() and not bool((torch.isfinite(t) & (t == t.round()) & (t.abs() < 2.0 ** 62)).all()):
        raise ValueError(f"labels must be class indices (integers), got {t.reshape(-1)[:4].tolist()}")
    return t.long().reshape(-1)


def _as_labels(labels, n: int, device):
    if labels is None:
        raise ValueError("this spec needs one label per box")
    t = class_indices(labels, device)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} labels for {n} boxes")
    return t


class Prediction(Spec):
    """The predicted class (argmax) is ``label`` everywhere in the box.

    ``label`` may be an int or a tensor with one label per box. The prediction counts as
    kept only when the label's logit is *strictly* larger than every other logit, so a tie
    is a violation (argmax tie-breaking must not decide a proof).
    """

    kind = "prediction"

    def __init__(self, label=None):
        self.label = label

    def _labels(self, y, labels):
        return _as_labels(self.label if labels is None else labels, y.shape[0], y.device)

    def describe(self) -> str:
        if self.label is None:
            return "Prediction(label per seed)"
        try:
            return f"Prediction({int(self.label)})"
        except (TypeError, ValueError):
            return "Prediction(labels per box)"

    def to_json(self) -> dict:
        d = {"kind": self.kind}
        try:
            d["label"] = int(self.label)
        except (TypeError, ValueError):
            d["label"] = "per-box"
        return d

    def holds(self, y, labels=None):
        return self.margin(y, labels) < 0  # a tie is a violation

    def margin(self, y, labels=None):
        torch = _torch()
        lab = self._labels(y, labels)
        true = y.gather(1, lab[:, None])[:, 0]
        other = y.clone()
        other.scatter_(1, lab[:, None], -torch.inf)
        return other.max(dim=1).values - true

    def rows(self, y_center, labels=None):
        torch = _torch()
        n, k = y_center.shape
        lab = self._labels(y_center, labels)
        eye = torch.eye(k, dtype=y_center.dtype, device=y_center.device)
        C = eye[None].expand(n, k, k) - eye[lab][:, None, :]  # row j: y_j - y_label
        keep = torch.ones(n, k, dtype=torch.bool, device=y_center.device)
        keep[torch.arange(n), lab] = False
        C = C[keep].reshape(n, k - 1, k)
        return C, torch.zeros(n, k - 1, dtype=y_center.dtype, device=y_center.device)


class PredictionNotIn(Spec):
    """The predicted class is never one of ``classes`` (e.g. never "speed limit")."""

    kind = "prediction_not_in"

    def __init__(self, classes: Sequence[int]):
        self.classes = [int(c) for c in classes]
        if not self.classes:
            raise ValueError("PredictionNotIn needs at least one class")

    def describe(self) -> str:
        return f"PredictionNotIn({self.classes})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "classes": self.classes}

    def _split(self, y):
        torch = _torch()
        banned = torch.zeros(y.shape[1], dtype=torch.bool, device=y.device)
        banned[self.classes] = True
        if bool(banned.all()):
            raise ValueError("PredictionNotIn bans every class")
        return banned

    def holds(self, y, labels=None):
        return self.margin(y, labels) < 0  # a tie may be broken towards a banned class

    def margin(self, y, labels=None):
        banned = self._split(y)
        return y[:, banned].max(dim=1).values - y[:, ~banned].max(dim=1).values

    def rows(self, y_center, labels=None):
        # Sufficient condition: the best allowed class at the box centre beats every
        # banned class on the whole box. Branch and bound re-picks it per sub-box.
        torch = _torch()
        banned = self._split(y_center)
        allowed_scores = y_center.masked_fill(banned[None], -torch.inf)
        j0 = allowed_scores.argmax(dim=1)
        n, k = y_center.shape
        eye = torch.eye(k, dtype=y_center.dtype, device=y_center.device)
        b_idx = torch.nonzero(banned).reshape(-1)
        C = eye[b_idx][None].expand(n, -1, -1) - eye[j0][:, None, :]
        return C, torch.zeros(n, b_idx.numel(), dtype=y_center.dtype, device=y_center.device)


class ConfidentTargeted(Spec):
    """The model never predicts ``target`` with a lead of more than ``margin`` over every
    other class (Dunn et al.'s *confident targeted* failing tests: a counterexample is a
    point with ``f_t(x) - max_{y != t} f_y(x) > margin``). For "never confuses stop sign
    with speed limit", audit stop-sign seeds with ``target=speed_limit``."""

    kind = "confident_targeted"

    def __init__(self, target: int, margin: float = 0.0):
        self.target = int(target)
        self.margin_c = float(margin)
        if math.isnan(self.margin_c):
            raise ValueError("ConfidentTargeted: margin must be a number")

    def describe(self) -> str:
        return f"ConfidentTargeted(target={self.target}, margin={self.margin_c:g})"

    def to_json(self) -> dict:
        return {"kind": self.kind, "target": self.target, "margin": self.margin_c}

    def _check(self, y):
        if not 0 <= self.target < y.shape[1]:
            raise ValueError(f"ConfidentTargeted: target {self.target} is out of range for {y.shape[1]} outputs")

    def margin(self, y, labels=None):
        torch = _torch()
        self._check(y)
        others = y.clone()
        others[:, self.target] = -torch.inf
        return y[:, self.target] - others.max(dim=1).values - self.margin_c

    def holds(self, y, labels=None):
        return self.margin(y, labels) <= 0

    def rows(self, y_center, labels=None):
        # Sufficient: the best other class at the box centre stays within `margin` of the
        # target on the whole box (branch and bound re-picks it per sub-box).
        torch = _torch()
        self._check(y_center)
        n, k = y_center.shape
        others = y_center.clone()
        others[:, self.target] = -torch.inf
        j0 = others.argmax(dim=1)
        eye = torch.eye(k, dtype=y_center.dtype, device=y_center.device)
        C = (eye[self.target][None] - eye[j0])[:, None, :]
        return C, torch.full((n, 1), -self.margin_c, dtype=y_center.dtype, device=y_center.device)


class Linear(Spec):
    """Every row of ``C y + d <= 0`` (AuditAI's general form ``F(x, y) <= 0``)."""

    kind = "linear"

    def __init__(self, C, d=None):
        # float64, as given: a float32 copy would change the spec itself (0.7 -> 0.69999999,
        # an output range's bound -> its nearest float), and a counterexample of the rounded
        # spec need not violate the one written
        torch = _torch()
        C = torch.as_tensor(C, dtype=torch.float64)
        if C.dim() == 1:
            C = C[None]
        if C.dim() != 2:
            raise ValueError(f"Linear spec: C must be [m, n_out], got shape {tuple(C.shape)}")
        d = torch.zeros(C.shape[0], dtype=torch.float64) if d is None else \
            torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        if d.numel() != C.shape[0]:
            raise ValueError(f"Linear spec: d has {d.numel()} entries for {C.shape[0]} rows of C")
        if not (torch.isfinite(C).all() and torch.isfinite(d).all()):
            raise ValueError("Linear spec: C and d must be finite")
        self.C, self.d = C, d

    def describe(self) -> str:
        return f"Linear(C[{self.C.shape[0]}x{self.C.shape[1]}], d)"

    def to_json(self) -> dict:
        return {"kind": self.kind, "C": self.C.tolist(), "d": self.d.tolist()}

    def _check(self, y):
        if y.shape[1] != self.C.shape[1]:
            raise ValueError(
                f"Linear spec: C has {self.C.shape[1]} columns but the model has {y.shape[1]} outputs")

    def _values(self, y):
        """``(C y + d, y, C, d)`` in float64 (a float32 model's outputs are exact there)."""
        self._check(y)
        y = y.double()
        C, d = self.C.to(y), self.d.to(y)
        return y @ C.T + d, y, C, d

    def margin(self, y, labels=None):
        """``max_row(C y + d)`` in float64."""
        return self._values(y)[0].max(dim=1).values

    def holds(self, y, labels=None):
        # violated only where the float64 evaluation's margin exceeds its own rounding error
        # (gamma_{n+1} of the terms' magnitudes): a rounding must not make a counterexample
        torch = _torch()
        vals, y, C, d = self._values(y)
        n = C.shape[1] + 1
        u = 2.0 ** -53
        err = (2 * n * u / (1 - 2 * n * u)) * (y.abs() @ C.abs().T + d.abs()) + n * 2.0 ** -1074
        over = vals - err
        return ~(over > 0).any(dim=1) & ~torch.isnan(over).any(dim=1)

    def rows(self, y_center, labels=None):
        self._check(y_center)
        n = y_center.shape[0]
        C, d = self.C.to(y_center), self.d.to(y_center)
        return C[None].expand(n, -1, -1), d[None].expand(n, -1)


class OutputRange(Linear):
    """Every output stays within ``[lower, upper]`` (scalars or one value per output)."""

    kind = "output_range"

    def __init__(self, lower=None, upper=None):
        if lower is None and upper is None:
            raise ValueError("OutputRange needs lower and/or upper")
        torch = _torch()
        for name, v in (("lower", lower), ("upper", upper)):
            if v is not None and not bool(torch.isfinite(torch.as_tensor(v, dtype=torch.float64)).all()):
                raise ValueError(f"OutputRange: {name} must be finite numbers (None for no {name} bound), got {v!r}")
        self.lower, self.upper = lower, upper
        self._built_for: Optional[int] = None

    def describe(self) -> str:
        return f"OutputRange({self.lower}, {self.upper})"

    def to_json(self) -> dict:
        torch = _torch()
        conv = lambda v: None if v is None else torch.as_tensor(v).tolist()  # noqa: E731
        return {"kind": self.kind, "lower": conv(self.lower), "upper": conv(self.upper)}

    def _check(self, y):
        # Build C for the model's output width on first use.
        n_out = y.shape[1]
        if self._built_for == n_out:
            return
        torch = _torch()
        eye = torch.eye(n_out, dtype=torch.float64)
        Cs, ds = [], []
        for name, v in (("upper", self.upper), ("lower", self.lower)):
            size = 0 if v is None else torch.as_tensor(v).numel()
            if size not in (0, 1, n_out):
                # expand() would raise a bare RuntimeError about sizes
                raise ValueError(f"OutputRange: {name} has {size} values but the model has {n_out} outputs; pass "
                                 f"one number, or one per output")
        if self.upper is not None:
            u = torch.as_tensor(self.upper, dtype=torch.float64).reshape(-1).expand(n_out)
            Cs.append(eye), ds.append(-u)
        if self.lower is not None:
            lo = torch.as_tensor(self.lower, dtype=torch.float64).reshape(-1).expand(n_out)
            Cs.append(-eye), ds.append(lo)
        self.C, self.d = torch.cat(Cs), torch.cat(ds)
        self._built_for = n_out


@dataclass(repr=False)
class Accuracy(Spec):
    """At least a fraction ``at_least`` of the seeds keep their label on the whole box."""

    at_least: float = 1.0
    kind = "accuracy"
    needs_labels = True

    def __post_init__(self):
        self.at_least = _check_fraction("Accuracy", self.at_least)

    def describe(self) -> str:
        return f"Accuracy(at_least={self.at_least:g})"

    def seed_spec(self, labels, nominal_predictions):
        return Prediction(labels)


@dataclass(repr=False)
class Invariance(Spec):
    """The prediction stays the seed's nominal prediction (no labels needed)."""

    at_least: float = 1.0
    kind = "invariance"

    def __post_init__(self):
        self.at_least = _check_fraction("Invariance", self.at_least)

    def describe(self) -> str:
        return f"Invariance(at_least={self.at_least:g})"

    def seed_spec(self, labels, nominal_predictions):
        return Prediction(nominal_predictions)


def spec_from_json(d: dict) -> Spec:
    """Rebuild a spec from ``to_json`` output (used by spec-sheet tooling)."""
    kind = d.get("kind")
    if kind == "accuracy":
        return Accuracy(d.get("at_least", 1.0))
    if kind == "invariance":
        return Invariance(d.get("at_least", 1.0))
    if kind == "confident_targeted":
        return ConfidentTargeted(d["target"], d.get("margin", 0.0))
    if kind == "prediction_not_in":
        return PredictionNotIn(d["classes"])
    if kind == "output_range":
        return OutputRange(d.get("lower"), d.get("upper"))
    if kind == "linear":
        return Linear(d["C"], d["d"])
    if kind == "prediction":
        return Prediction(d.get("label") if d.get("label") != "per-box" else None)
    raise ValueError(f"unknown spec kind {kind!r}")


def as_spec(spec: Any) -> Spec:
    if isinstance(spec, Spec):
        return spec
    raise TypeError(
        f"spec must be one of Accuracy, Invariance, Prediction, PredictionNotIn, ConfidentTargeted, "
        f"OutputRange, Linear; got {type(spec).__name__}")
