"""Spec semantics (holds / margin / rows), verdict logic and Direction bases."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_latentaudit import (Accuracy, Direction, Invariance, LatentAuditError, LatentSpace, Linear,
                                OutputRange, Prediction, PredictionNotIn, audit, verify_box)
from pytest_latentaudit.api import PROVED, UNPROVEN, VIOLATED, decide_verdict
from pytest_latentaudit.core.specs import as_spec, spec_from_json

FAST = settings(max_examples=25, deadline=None)


def outputs(n_out=4, n=3):
    return st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=n * n_out,
                    max_size=n * n_out).map(lambda v: torch.tensor(v).reshape(n, n_out))


def rows_value(spec, y_center, y, labels=None):
    C, d = spec.rows(y_center, labels)
    return (torch.einsum("nmo,no->nm", C, y) + d).amax(1)


# ------------------------------------------------------------------------ Prediction
def test_prediction_margin_and_holds():
    y = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    spec = Prediction(0)
    assert spec.margin(y).tolist() == [-1.0, 5.0]
    assert spec.holds(y).tolist() == [True, False]
    # one label per box
    per_box = Prediction(torch.tensor([0, 1]))
    assert per_box.holds(y).tolist() == [True, True]
    assert per_box.margin(y).tolist() == [-1.0, -4.0]
    with pytest.raises(ValueError):
        Prediction(torch.tensor([0, 1, 2])).margin(y)


def test_prediction_tie_is_violation():
    """argmax tie-breaking must not decide a spec: a tie violates Prediction and PredictionNotIn."""
    y = torch.tensor([[1.0, 1.0, 0.0]])
    assert not bool(Prediction(0).holds(y)[0])
    assert not bool(Prediction(1).holds(y)[0])
    assert bool(Prediction(0).holds(torch.tensor([[1.0, 0.999, 0.0]]))[0])
    assert not bool(PredictionNotIn([1]).holds(y)[0])
    assert bool(PredictionNotIn([2]).holds(y)[0])


def test_prediction_tie_is_never_proved():
    # a box whose output is a constant tie: the rows give exactly 0, which is not a proof
    y = torch.tensor([[1.0, 1.0]])
    assert float(rows_value(Prediction(0), y, y)[0]) == 0.0


@FAST
@given(y=outputs(), yc=outputs(), lab=st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_prediction_rows_equal_margin(y, yc, lab):
    labels = torch.tensor(lab)
    spec = Prediction(labels)
    r = rows_value(spec, yc, y)
    assert torch.allclose(r, spec.margin(y), atol=1e-5)
    proved = r < 0
    assert bool((spec.holds(y) | ~proved).all())
    assert bool(((y.argmax(1) == labels) | ~proved).all())


# ------------------------------------------------------------------- PredictionNotIn
def test_prediction_not_in():
    y = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [0.0, 1.0, 4.0]])
    spec = PredictionNotIn([1, 2])
    assert spec.holds(y).tolist() == [True, False, False]
    assert spec.margin(y).tolist() == [-1.0, 5.0, 4.0]
    with pytest.raises(ValueError):
        PredictionNotIn([])
    with pytest.raises(ValueError):
        PredictionNotIn([0, 1, 2]).margin(y)


@FAST
@given(y=outputs(5), yc=outputs(5), banned=st.sets(st.integers(0, 4), min_size=1, max_size=4))
def test_prediction_not_in_rows_imply_holds(y, yc, banned):
    spec = PredictionNotIn(sorted(banned))
    proved = rows_value(spec, yc, y) < 0
    assert bool((spec.holds(y) | ~proved).all())
    pred = y.argmax(1)
    for i in torch.nonzero(proved).reshape(-1).tolist():
        assert int(pred[i]) not in banned
    # at the centre itself the rows are exactly the margin against the best allowed class
    assert torch.allclose(rows_value(spec, yc, yc), spec.margin(yc), atol=1e-5)


# ----------------------------------------------------------------- OutputRange/Linear
def test_output_range_scalar_and_per_output():
    y = torch.tensor([[0.5, -0.5], [1.5, 0.0], [0.0, -1.0]])
    assert OutputRange(-1.0, 1.0).holds(y).tolist() == [True, False, True]  # bounds are inclusive
    assert OutputRange(lower=-0.75).holds(y).tolist() == [True, True, False]
    assert OutputRange(upper=1.0).holds(y).tolist() == [True, False, True]
    per = OutputRange(lower=[0.0, -2.0], upper=[2.0, 0.0])
    assert per.holds(y).tolist() == [True, True, True]
    assert OutputRange(lower=[0.0, -0.75], upper=[2.0, 0.0]).holds(y).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        OutputRange()
    for bad in (float("nan"), float("inf"), [0.0, float("nan")]):  # a NaN bound made every point violate
        with pytest.raises(ValueError, match="finite"):
            OutputRange(upper=bad)
        with pytest.raises(ValueError, match="finite"):
            OutputRange(lower=bad)


@FAST
@given(y=outputs(3), lo=st.floats(-5, 0, width=32), width=st.floats(0, 10, width=32))
def test_output_range_holds_and_rows(y, lo, width):
    hi = lo + width
    spec = OutputRange(lo, hi)
    expect = ((y >= lo) & (y <= hi)).all(1)
    assert spec.holds(y).tolist() == expect.tolist()
    proved = rows_value(spec, y, y) < 0
    assert bool((expect | ~proved).all())


@FAST
@given(y=outputs(3), C=st.lists(st.floats(-3, 3, width=32), min_size=6, max_size=6),
       d=st.lists(st.floats(-3, 3, width=32), min_size=2, max_size=2))
def test_linear_spec(y, C, d):
    C = torch.tensor(C).reshape(2, 3)
    d = torch.tensor(d)
    spec = Linear(C, d)
    exact = [max(sum(Fraction(float(C[r, j])) * Fraction(float(yi[j])) for j in range(3)) + Fraction(float(d[r]))
                 for r in range(2)) for yi in y]
    scale = [float(sum(abs(float(C[r, j]) * float(yi[j])) for r in range(2) for j in range(3)) + 6) for yi in y]
    holds = spec.holds(y).tolist()
    for h, e, s in zip(holds, exact, scale):
        if e <= 0:
            assert h, f"holds on exact margin {float(e)}"
        elif e > 1e-12 * s:  # past the float64 evaluation's own error: a violation
            assert not h, f"violation of exact margin {float(e)} missed"
    Cr, dr = spec.rows(y)
    assert Cr.shape == (3, 2, 3) and dr.shape == (3, 2)
    assert torch.allclose(rows_value(spec, y, y).double(), (y.double() @ C.double().T + d.double()).amax(1))


def test_linear_and_range_keep_the_numbers_written():
    """The spec is the one written: 0.7 and 1.0000000001 are not rounded to float32 (to
    0.69999999 and 1.0), so float64 outputs between the two are judged against the bound given."""
    spec = Linear([[1.0, -1.0]], [0.7])
    assert spec.C.dtype == spec.d.dtype == torch.float64 and float(spec.d[0]) == 0.7
    y = torch.tensor([[1.00000000005], [1.0000000002]], dtype=torch.float64)
    assert OutputRange(upper=1.0000000001).holds(y).tolist() == [True, False]
    assert OutputRange(lower=1.0000000001).holds(y).tolist() == [False, True]
    # float32 outputs: y0 - y1 + 0.7 = +2.3e-9 exactly, but -9.6e-9 with 0.7 rounded to float32
    y1 = float(torch.nextafter(torch.tensor(0.7), torch.tensor(1.0)))
    y32 = torch.tensor([[5e-8, y1]])
    assert spec.holds(y32).tolist() == [False]
    assert float(spec.margin(y32)) > 0


def test_linear_holds_is_not_decided_by_a_rounding():
    """A margin inside the float64 evaluation's own error is not a violation (no false
    counterexample): exactly ``1e16 + 1 - 1e16 - 1 = 0`` holds, though float64 sums give 1 or -1."""
    y = torch.tensor([[1e16, 1.0, -1e16]], dtype=torch.float64)
    spec = Linear([[1.0, 1.0, 1.0]], [-1.0])
    assert spec.holds(y).tolist() == [True]
    assert Linear([[1.0, 1.0, 1.0]], [-1.0 + 2 ** -40]).holds(y).tolist() == [True]  # within the error
    assert Linear([[1.0, 1.0, 1.0]], [100.0]).holds(y).tolist() == [False]  # a real violation of 99


def test_linear_spec_errors():
    assert Linear([1.0, -1.0]).C.shape == (1, 2)  # one row given as a vector
    with pytest.raises(ValueError):
        Linear([[1.0, 0.0]], [0.0, 1.0])
    with pytest.raises(ValueError):
        Linear([[float("nan"), 0.0]])
    with pytest.raises(ValueError):
        Linear(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError):
        Linear([[1.0, 0.0]]).holds(torch.zeros(1, 3))


@pytest.mark.parametrize("spec", [Prediction(2), PredictionNotIn([0, 3]), OutputRange(-1.0, [1.0, 2.0]),
                                  Linear([[1.0, -1.0]], [0.5]), Accuracy(0.9), Invariance(0.5)],
                         ids=lambda s: s.kind)
def test_spec_json_roundtrip(spec):
    back = spec_from_json(spec.to_json())
    assert type(back) is type(spec)
    assert back.to_json() == spec.to_json()
    assert back.describe() == spec.describe()


def test_as_spec_rejects_non_specs():
    with pytest.raises(TypeError, match="spec must be one of"):
        as_spec("accuracy")
    with pytest.raises(ValueError):
        spec_from_json({"kind": "nope"})


# ------------------------------------------------------------- Accuracy/Invariance
@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_fraction_validated(q):
    with pytest.raises(ValueError):
        Accuracy(q)
    with pytest.raises(ValueError):
        Invariance(q)


def test_seed_specs():
    labels, nominal = torch.tensor([1, 0]), torch.tensor([0, 0])
    acc = Accuracy(0.5).seed_spec(labels, nominal)
    inv = Invariance().seed_spec(labels, nominal)
    assert isinstance(acc, Prediction) and acc.label.tolist() == [1, 0]
    assert isinstance(inv, Prediction) and inv.label.tolist() == [0, 0]
    assert Accuracy().needs_labels and not Invariance().needs_labels


@pytest.mark.parametrize("n, verified, falsified, q, expected", [
    (10, 10, 0, 1.0, PROVED),
    (10, 9, 1, 1.0, VIOLATED),
    (10, 9, 0, 1.0, UNPROVEN),
    (10, 8, 2, 0.8, PROVED),
    (10, 7, 3, 0.8, VIOLATED),
    (10, 7, 2, 0.8, UNPROVEN),
    (10, 0, 10, 0.0, PROVED),
    (3, 2, 0, 2 / 3, PROVED),  # float rounding of q must not turn this into unproven
    (3, 1, 1, 2 / 3, UNPROVEN),
    (3, 1, 2, 2 / 3, VIOLATED),
])
def test_decide_verdict(n, verified, falsified, q, expected):
    assert decide_verdict(n, verified, falsified, q) == expected


def sign_head(bare=False):
    """Class 0 iff z0 > 0 (logits z0 and -z0)."""
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        m.bias.zero_()
    return m if bare else nn.Sequential(m)


def test_bare_linear_head_is_provable():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    r = audit(sign_head(bare=True), z, direction=Direction.axis(1), eps=0.3, spec=Invariance(), budget_s=10)
    assert r.notes == []
    assert r.verdict == PROVED


def test_accuracy_fraction_over_seeds():
    z = torch.tensor([[1.0, 0.0], [0.2, 0.0]])  # the second seed crosses the boundary at eps 0.5
    labels = torch.tensor([0, 0])
    kw = dict(direction=Direction.axis(0), eps=0.5, budget_s=10)
    r = audit(sign_head(), z, labels, spec=Accuracy(at_least=0.5), **kw)
    assert r.status == ["verified", "falsified"] and r.verdict == PROVED
    r = audit(sign_head(), z, labels, spec=Accuracy(at_least=1.0), **kw)
    assert r.verdict == VIOLATED
    assert r.counterexamples[0].seed_index == 1 and r.counterexamples[0].expected == 0
    assert r.counterexamples[0].predicted == 1


def test_accuracy_uses_labels_invariance_does_not():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    wrong = torch.tensor([1, 0])
    kw = dict(direction=Direction.axis(1), eps=0.3, budget_s=10)
    assert audit(sign_head(), z, wrong, spec=Invariance(), **kw).verdict == PROVED
    r = audit(sign_head(), z, wrong, spec=Accuracy(), **kw)
    assert r.verdict == VIOLATED and r.counts["falsified"] == 2
    with pytest.raises(LatentAuditError, match="needs labels"):
        audit(sign_head(), z, None, spec=Accuracy(), **kw)


# ------------------------------------------------------------------------ Direction
def test_axis_basis():
    V = Direction.axis(2).basis(4)
    assert V.shape == (4, 1) and V[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(LatentAuditError, match="out of range"):
        Direction.axis(4).basis(4)
    for bad in (-1, 1.5):
        with pytest.raises(LatentAuditError):
            Direction.axis(bad)


def test_vector_basis_normalised_and_oriented():
    v = torch.tensor([0.0, -3.0, 4.0])
    V = Direction.vector(v).basis(3)
    assert V.shape == (3, 1)
    assert torch.allclose(V[:, 0], v / 5, atol=1e-6)  # unit length, same orientation as v


@FAST
@given(seed=st.integers(0, 2 ** 31 - 1), dim=st.integers(2, 6), k=st.integers(1, 4))
def test_subspace_basis_orthonormal_and_spans(seed, dim, k):
    k = min(k, dim)
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, k, generator=g, dtype=torch.float64)
    V = Direction.subspace(A).basis(dim, dtype=torch.float64)
    assert V.shape == (dim, k)
    assert torch.allclose(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-9)
    # same span: projecting the user's columns onto the basis gives them back
    assert torch.allclose(V @ (V.T @ A), A, atol=1e-8)
    assert Direction.subspace(A).k == k


@pytest.mark.parametrize("make, match", [
    (lambda: Direction.vector([1.0, 0.0]), "expected shape"),
    (lambda: Direction.vector([1.0, float("nan"), 0.0]), "NaN"),
    (lambda: Direction.vector([0.0, 0.0, 0.0]), "dependent"),
    (lambda: Direction.subspace([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]), "dependent"),
    (lambda: Direction.subspace([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), "columns"),
    (lambda: Direction.subspace(torch.zeros(3, 1, 1)), "expected shape"),
    (lambda: Direction.subspace([[1.0, float("inf")], [0.0, 1.0], [0.0, 0.0]]), "NaN"),
])
def test_direction_errors(make, match):
    with pytest.raises(LatentAuditError, match=match):
        make().basis(3)


def test_latent_space_directions():
    space = LatentSpace(directions={"pose": Direction.axis(0)})
    assert space.direction("pose").name == "pose"
    with pytest.raises(LatentAuditError, match="unknown direction 'nope'.*pose"):
        space.direction("nope")
    with pytest.raises(LatentAuditError, match="must be a Direction"):
        LatentSpace(directions={"pose": 0})
    with pytest.raises(LatentAuditError, match="no decoder"):
        space.decode(torch.zeros(1, 3))


def test_audit_direction_forms_agree():
    """A name, a Direction and a raw vector for the same direction give the same result."""
    z = torch.tensor([[1.0, 0.0], [0.3, 0.0]])
    space = LatentSpace(directions={"d": Direction.vector([1.0, 1.0])})
    kw = dict(eps=0.5, spec=Invariance(), budget_s=10)
    a = audit(sign_head(), z, direction="d", latent_space=space, **kw)
    b = audit(sign_head(), z, direction=Direction.vector([1.0, 1.0]), **kw)
    c = audit(sign_head(), z, direction=torch.tensor([2.0, 2.0]), **kw)
    assert a.status == b.status == c.status == ["verified", "falsified"]
    for r in (a, b, c):
        (cex,) = r.counterexamples
        assert abs(cex.offset[0]) <= 0.5 + 1e-6
        assert cex.z[0] * cex.z0[0] <= 0  # the sign of z0 flipped: really a counterexample
    with pytest.raises(LatentAuditError, match="pass latent_space"):
        audit(sign_head(), z, direction="d", **kw)
    assert math.isclose(a.eps, 0.5)


# ------------------------------------------------------------ audit input checks
def test_audit_rejects_bad_labels():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    for labels in (torch.tensor([0, -1]), torch.tensor([0, 2])):
        with pytest.raises(LatentAuditError, match="label"):
            audit(sign_head(), z, labels, direction=Direction.axis(0), eps=0.1, spec=Accuracy())
    with pytest.raises(LatentAuditError, match="2 seeds but 3 labels"):
        audit(sign_head(), z, torch.tensor([0, 1, 1]), direction=Direction.axis(0), eps=0.1, spec=Accuracy())
    # fractional labels were truncated to a class (0.5 -> 0) and proved against it
    with pytest.raises(LatentAuditError, match="class indices"):
        audit(sign_head(), z, torch.tensor([0.5, 1.0]), direction=Direction.axis(0), eps=0.1, spec=Accuracy())
    with pytest.raises(ValueError, match="class indices"):
        verify_box(sign_head(), z, z + 0.1, Prediction(torch.tensor([0.5, 1.0])))
    audit(sign_head(), z, torch.tensor([0.0, 1.0]), direction=Direction.axis(0), eps=0.1, spec=Accuracy())  # whole


@pytest.mark.parametrize("budget", [-1.0, 0.0, float("nan"), "soon"])
def test_bad_budget_is_a_usage_error(budget):
    """A negative budget ended every box unknown; a NaN one meant no limit."""
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(LatentAuditError, match="budget"):
        verify_box(sign_head(), z, z + 0.1, Prediction(torch.tensor([0, 1])), budget_s=budget)
    with pytest.raises(LatentAuditError, match="budget"):
        audit(sign_head(), z, torch.tensor([0, 1]), direction=Direction.axis(0), eps=0.1, spec=Accuracy(),
              budget_s=budget)


def test_no_seeds_or_boxes_is_a_usage_error():
    """A proof over no seeds proves nothing: an empty batch is a usage error, not 'proved'."""
    with pytest.raises(LatentAuditError, match="seed"):
        audit(sign_head(), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), direction=Direction.axis(0),
              eps=0.1, spec=Accuracy())
    with pytest.raises(LatentAuditError):
        verify_box(sign_head(), torch.zeros(0, 2), torch.zeros(0, 2), Prediction(0))


def _certified_radius():
    from pytest_latentaudit import api

    return getattr(api, "certified_radius", None)


@pytest.mark.skipif(_certified_radius() is None, reason="no certified_radius in this version")
def test_certified_radius_matches_the_boundary():
    z = torch.tensor([[1.0, 0.0], [-0.5, 0.0], [0.25, 3.0]])
    r = _certified_radius()(sign_head(), z, direction=Direction.axis(0), spec=Invariance(), eps_max=2.0)
    # the decision boundary is z0 = 0: the largest certified radius is |z0| (up to bisection)
    for got, want in zip(r.tolist(), [1.0, 0.5, 0.25]):
        assert want - 2.0 / 2 ** 10 - 1e-6 <= got <= want + 1e-6  # sound: never beyond the boundary


@pytest.mark.skipif(_certified_radius() is None, reason="no certified_radius in this version")
@pytest.mark.parametrize("extra", [pytest.param(nn.BatchNorm1d(2), id="batchnorm-train"),
                                   pytest.param(nn.Softmax(dim=1), id="softmax")])
def test_certified_radius_never_crashes(extra):
    model = nn.Sequential(sign_head(), extra).train()
    z = torch.tensor([[1.0, 0.0], [-0.5, 0.0]])
    r = _certified_radius()(model, z, direction=Direction.axis(0), spec=Invariance(), eps_max=2.0)
    assert r.shape == (2,) and bool((r >= 0).all())
    assert model.training


class _ReadsMode(nn.Module):
    def forward(self, x):
        return x if self.training else x * 1.0


def test_a_model_in_training_mode_is_proved_in_eval_mode_and_says_so():
    """Dropout and BatchNorm (and a user's ``if self.training``) differ by mode: the note says
    the verdict is of eval mode; a model in training mode whose forwards ignore the mode, and a
    model in eval mode, get no note."""
    from pytest_latentaudit import verify_box

    lo, hi = torch.tensor([[0.5, -0.1]]), torch.tensor([[0.6, 0.1]])
    for extra, noted in ((nn.Dropout(0.5), "1 (Dropout)"), (_ReadsMode(), "1 (_ReadsMode)"), (nn.Identity(), None)):
        model = nn.Sequential(sign_head(), extra).train()
        for res in (verify_box(model, lo, hi, Prediction(0), engine="linear"),
                    audit(model, torch.tensor([[0.55, 0.0]]), direction=Direction.axis(1), eps=0.1,
                          spec=Invariance(), engine="linear")):
            mode = [n for n in res.notes if "training mode" in n]
            if noted is None:
                assert not mode, res.notes
            else:
                assert len(mode) == 1 and "eval mode" in mode[0] and noted.split()[0] in mode[0], res.notes
        assert model.training and model[1].training
        model.eval()
        assert not [n for n in verify_box(model, lo, hi, Prediction(0), engine="linear").notes if "training" in n]


# ------------------------------------------------------------ bad input: named problem, named fix
class _Wrap(nn.Module):
    """sign_head's logits passed through ``post`` (a model that returns the wrong thing)."""

    def __init__(self, post):
        super().__init__()
        self.head, self.post = sign_head(bare=True), post

    def forward(self, z):
        return self.post(self.head(z))


_Z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]])
_Y = torch.tensor([0, 1, 0])
_AX = dict(direction=Direction.axis(0), eps=0.1, budget_s=5)
BAD_MODEL_INPUT = {
    "wrong batch": (lambda: audit(_Wrap(lambda y: y[:1]), (_Z, _Y), spec=Accuracy(), **_AX),
                    r"returned shape \(1, 2\) for a batch of 3 inputs: the first dimension must be the batch.*\[N, classes\]"),
    "scalar": (lambda: audit(_Wrap(lambda y: y.sum()), (_Z, _Y), spec=Accuracy(), **_AX),
               r"returned a scalar for a batch of 3 inputs.*\.sum\(\) or \.mean\(\)"),
    "dict": (lambda: audit(_Wrap(lambda y: {"logits": y}), (_Z, _Y), spec=Accuracy(), **_AX),
             r"returned a dict \(keys 'logits'\).*lambda z: model\(z\)\['logits'\]"),
    "None": (lambda: audit(_Wrap(lambda y: None), (_Z, _Y), spec=Accuracy(), **_AX),
             r"returned None for a batch of 3 inputs.*missing 'return'"),
    "one output": (lambda: audit(_Wrap(lambda y: y[:, :1]), (_Z, _Y), spec=Accuracy(), **_AX),
                   r"compares classes but the model has 1 output.*OutputRange or Linear"),
    "int outputs": (lambda: audit(_Wrap(lambda y: y.argmax(1, keepdim=True).expand(-1, 2)), (_Z, _Y),
                                  spec=Accuracy(), **_AX), r"torch.int64 outputs.*before any argmax"),
    "box: None": (lambda: verify_box(_Wrap(lambda y: None), _Z - 0.1, _Z + 0.1, Prediction(0)),
                  r"returned None for a batch of 3 inputs"),
    "box: wrong batch": (lambda: verify_box(_Wrap(lambda y: y[:1]), _Z - 0.1, _Z + 0.1, Prediction(0)),
                         r"returned shape \(1, 2\) for a batch of 3 inputs"),
    "Prediction label": (lambda: audit(sign_head(), _Z, spec=Prediction(2), **_AX),
                         r"Prediction label\(s\) 2 out of range for a model with 2 outputs \(classes 0\.\.1\)"),
    "Prediction labels": (lambda: verify_box(sign_head(), _Z - 0.1, _Z + 0.1, Prediction(torch.tensor([0, -1, 5]))),
                          r"Prediction label\(s\) -1, 5 out of range for a model with 2 outputs"),
    "PredictionNotIn": (lambda: audit(sign_head(), _Z, spec=PredictionNotIn([1, 3]), **_AX),
                        r"PredictionNotIn class\(es\) 3 out of range for a model with 2 outputs.*class indices"),
    "box: PredictionNotIn": (lambda: verify_box(sign_head(), _Z - 0.1, _Z + 0.1, PredictionNotIn([2])),
                             r"PredictionNotIn class\(es\) 2 out of range"),
    "Linear width": (lambda: audit(sign_head(), _Z, spec=Linear([[1.0, 0.0, 0.0]]), **_AX),
                     r"Linear spec: C has 3 columns but the model has 2 outputs; C must be \[rows, 2\]"),
    "seeds [N, 1, d]": (lambda: audit(sign_head(), (_Z[:, None, :], _Y), spec=Accuracy(), **_AX),
                        r"seeds shaped \(3, 1, 2\) = \[N, 1, latent_dim\].*z\.squeeze\(1\)"),
    "device gpu": (lambda: audit(sign_head(), (_Z, _Y), spec=Accuracy(), device="gpu", **_AX),
                   r"unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    "box: device gpu": (lambda: verify_box(sign_head(), _Z - 0.1, _Z + 0.1, Prediction(0), device="gpu"),
                        r"unknown device 'gpu'"),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_INPUT))
def test_bad_input_is_a_latent_audit_error_naming_the_fix(case):
    call, message = BAD_MODEL_INPUT[case]
    with pytest.raises(LatentAuditError, match=message):
        call()
