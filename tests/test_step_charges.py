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


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([8, 48]), depth=st.integers(2, 4),
       eps=st.sampled_from([0.05, 0.5]), precise=st.booleans())
def test_remembered_charges_give_the_bounds_of_charges_computed_in_every_pass(seed, width, depth, eps, precise):
    """One chunk: bitwise the same intermediate bounds as charging every pass anew."""
    m = _mlp(5, width, depth, seed)
    g = get_graph(m, (5,))
    center, gens = _box(7, 5, 2, eps, seed)
    _, got = B.linear_bounds(g, center, gens, crown=True, precise=precise)
    with pytest.MonkeyPatch.context() as mp:
        # no memo: every pass charges its own bounds (``backward_bound`` with charges=None)
        mp.setattr(B, "StepCharges", lambda *a, **k: None)
        _, want = B.linear_bounds(g, center, gens, crown=True, precise=precise)
    for a, b in zip(got, want):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(2, 4), precise=st.booleans())
def test_each_chunk_is_charged_for_its_own_boxes(seed, depth, precise):
    """Chunks of one or two boxes: in every pass, each node's charge taken from the memo is the
    charge of the pass's own bounds (computed on the chunk, so up to the rounding of another
    batch: a formula chosen batch-wide may differ), never another chunk's boxes."""
    m = _mlp(5, 48, depth, seed)
    g = get_graph(m, (5,))
    center, gens = _box(7, 5, 2, 0.5, seed)
    checked = []
    original = B.backward_bound

    def checking(graph, conc, center_, gens_, start, A_start, d, **kw):
        charges, rows = kw.get("charges"), kw.get("rows", slice(None))
        if charges is not None:
            for j in range(start, 0, -1):
                node = graph.nodes[j]
                if not node.inputs:
                    continue
                dt = torch.float64 if precise else torch.float32
                d_out = int(torch.Size(node.shape).numel())
                mine = B.step_charge(node.op, B._in_bounds(conc, node), dt, d_out, center_.shape[0])
                memo = charges.step(j, dt, d_out, rows)
                for x, y in zip(mine, memo):
                    assert (x is None) == (y is None)
                    if x is not None:
                        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-30)
                        checked.append(j)
        return original(graph, conc, center_, gens_, start, A_start, d, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "REFINE_CHUNK", 48 * 48 * 2)  # two boxes a chunk
        mp.setattr(B, "backward_bound", checking)
        B.linear_bounds(g, center, gens, crown=True, precise=precise)
    assert checked


def _same_versions(new, old):
    """``new`` with version counters raised to ``old``'s (in-place additions of 0), so only the
    memo's identity check can tell the two apart."""
    for t, o in zip(new, old):
        while t._version < o._version:
            t.add_(0)
    return new


def test_a_charge_is_computed_anew_when_its_bounds_change():
    m = _mlp(4, 16, 2, 0)
    g = get_graph(m, (4,))
    center, gens = _box(3, 4, 2, 0.3, 1)
    _, conc = B.linear_bounds(g, center, gens)
    conc = list(conc)
    j = next(i for i, nd in enumerate(g.nodes) if i > 1 and isinstance(nd.op, B.ops.DenseOp))
    src = g.nodes[j].inputs[0]
    charges = B.StepCharges(g, conc)

    def want():
        return B.step_charge(g.nodes[j].op, B._in_bounds(conc, g.nodes[j]), torch.float32, 16, 3)[0]

    R0, _ = charges.step(j, torch.float32, 16)
    assert R0 is not None and torch.equal(R0, want())
    # replaced by other tensors with the same version counters: the identity check
    conc[src] = tuple(_same_versions([conc[src][0] * 2, conc[src][1] * 2], conc[src]))
    R1, _ = charges.step(j, torch.float32, 16)
    assert torch.equal(R1, want()) and not torch.equal(R1, R0)
    # changed in place: the version counter check
    conc[src][1].mul_(4).add_(1)
    R2, _ = charges.step(j, torch.float32, 16)
    assert torch.equal(R2, want()) and not torch.equal(R2, R1)
    # the rows of a chunk are the full charge's rows
    assert torch.equal(charges.step(j, torch.float32, 16, slice(1, 3))[0], R2[1:3])


def test_charges_refuse_a_pass_with_cuts():
    m = _mlp(4, 16, 2, 0)
    g = get_graph(m, (4,))
    center, gens = _box(2, 4, 1, 0.1, 0)
    forms, conc = B.linear_bounds(g, center, gens)
    C = torch.eye(3, dtype=torch.float64)[None].expand(2, 3, 3)
    d = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="cuts"):
        B.backward_bound(g, conc, center, gens, len(g.nodes) - 1, C, d, forms=forms,
                         threshold=torch.zeros(2, dtype=torch.float64), charges=B.StepCharges(g, conc))
