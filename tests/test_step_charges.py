"""``bounds.StepCharges``: CROWN's refinement takes each backward step's rounding charge from one
computation per node for all boxes, sliced per chunk. It must give the bounds that computing
the charge in every pass gives, and never serve a charge computed from bounds that have since
been replaced or changed in place."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from pytest_latentaudit.engines import bounds as B
from pytest_latentaudit.engines.graph import get_graph


def _mlp(d_in, width, depth, seed):
    torch.manual_seed(seed)
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 3)).eval()


def _box(n, d, k, eps, seed):
    g = torch.Generator().manual_seed(seed)
    center = torch.randn(n, d, generator=g, dtype=torch.float64)
    gens = torch.zeros(n, k, d, dtype=torch.float64)
    for i in range(k):
        gens[:, i, i] = eps
    return center, gens


class _Fresh(B.StepCharges):
    """Computes every charge anew (what each pass did before the memo)."""

    def _full(self, key, j, compute):
        return compute(B._in_bounds(self.conc, self.graph.nodes[j]))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([8, 48]), depth=st.integers(2, 4),
       eps=st.sampled_from([0.05, 0.5]), precise=st.booleans(), chunk=st.sampled_from([1 << 6, 1 << 20]))
def test_remembered_charges_give_the_bounds_of_charges_computed_in_every_pass(seed, width, depth, eps, precise,
                                                                            chunk):
    """Bitwise the same intermediate bounds, with one chunk and with chunks of a few boxes."""
    m = _mlp(5, width, depth, seed)
    g = get_graph(m, (5,))
    center, gens = _box(7, 5, 2, eps, seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "REFINE_CHUNK", chunk)
        _, got = B.linear_bounds(g, center, gens, crown=True, precise=precise)
        mp.setattr(B, "StepCharges", _Fresh)
        _, want = B.linear_bounds(g, center, gens, crown=True, precise=precise)
    for a, b in zip(got, want):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_charge_is_computed_anew_when_its_bounds_change():
    m = _mlp(4, 16, 2, 0)
    g = get_graph(m, (4,))
    center, gens = _box(3, 4, 2, 0.3, 1)
    _, conc = B.linear_bounds(g, center, gens)
    conc = list(conc)
    j = next(i for i, nd in enumerate(g.nodes) if i > 1 and isinstance(nd.op, B.ops.DenseOp))
    src = g.nodes[j].inputs[0]
    charges = B.StepCharges(g, conc)
    R0, _ = charges.step(j, torch.float32, 16)
    assert R0 is not None and charges.step(j, torch.float32, 16)[0] is not None
    # in place: the version counter moves
    conc[src][1].mul_(4).add_(1)
    R1, _ = charges.step(j, torch.float32, 16)
    want, _ = B.step_charge(g.nodes[j].op, B._in_bounds(conc, g.nodes[j]), torch.float32, 16, 3)
    assert torch.equal(R1, want) and bool((R1 > R0).any())
    # replaced: another tensor object
    conc[src] = (conc[src][0] * 2, conc[src][1] * 2)
    R2, _ = charges.step(j, torch.float32, 16)
    want, _ = B.step_charge(g.nodes[j].op, B._in_bounds(conc, g.nodes[j]), torch.float32, 16, 3)
    assert torch.equal(R2, want) and not torch.equal(R2, R1)
    # the rows of a chunk are the full charge's rows
    assert torch.equal(charges.step(j, torch.float32, 16, slice(1, 3))[0], R2[1:3])


def test_charges_refuse_a_pass_with_cuts():
    m = _mlp(4, 16, 2, 0)
    g = get_graph(m, (4,))
    center, gens = _box(2, 4, 1, 0.1, 0)
    forms, conc = B.linear_bounds(g, center, gens)
    C = torch.eye(3, dtype=torch.float64)[None].expand(2, 3, 3)
    d = torch.zeros(2, 3, dtype=torch.float64)
    try:
        B.backward_bound(g, conc, center, gens, len(g.nodes) - 1, C, d, forms=forms,
                         threshold=torch.zeros(2, dtype=torch.float64), charges=B.StepCharges(g, conc))
    except ValueError as e:
        assert "cuts" in str(e)
    else:
        raise AssertionError("a pass with cuts took sliced charges")
