"""The gradient-free falsifier: finds violations of non-differentiable models that the
gradient attack misses, never reports a point outside the box, respects the deadline."""
import time

import numpy as np
import pytest
import torch
from torch import nn

from pytest_latentaudit import Direction, Prediction
from pytest_latentaudit.engines import blackbox, falsify
from pytest_latentaudit.engines.problem import Problem


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


class Staircase(nn.Module):
    """Class 1 only where floor(8 z0) == 6, i.e. z0 in [0.75, 0.875): a flat (zero
    gradient) margin that is violated on an interior sliver away from centre and corners."""

    def forward(self, z):
        s = torch.floor(8 * z[:, 0])
        y1 = -(s - 6).abs()
        return torch.stack([torch.full_like(y1, -0.5), y1], 1)


def _problem(model, z, V, eps, labels):
    n, k = z.shape[0], V.shape[1]
    tl = torch.full((n, k), -eps)
    return Problem(model, z, V, tl, -tl, Prediction(), labels)


def _axis_problem(model, n=32, eps=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g)
    z[:, 0] = (torch.rand(n, generator=g) - 0.5) * 0.4  # seeds near 0: class 0 there
    V = torch.zeros(1, 1, 5)
    V[0, 0, 0] = 1.0
    return _problem(model, z, V, eps, torch.zeros(n, dtype=torch.long))


def _check_found(problem, idx, found, tl, tu):
    assert found.mask.shape == (idx.numel(),) and found.t.shape == (idx.numel(), problem.k)
    assert torch.all(found.t >= tl) and torch.all(found.t <= tu)  # every reported offset is in its box
    m = found.mask
    if bool(m.any()):
        with torch.no_grad():
            y = problem.model_forward(problem.point(idx[m], found.t[m]))
        assert not bool(problem.holds(y, idx[m]).any())
        assert torch.allclose(found.x[m], problem.point(idx[m], found.t[m]))


def test_finds_violations_of_a_staircase_model_with_zero_gradients():
    p = _axis_problem(Staircase())
    idx = torch.arange(p.n)
    bb = blackbox.attack(p, idx, p.tl, p.tu, generator=torch.Generator().manual_seed(0))
    _check_found(p, idx, bb, p.tl, p.tu)
    assert int(bb.mask.sum()) == p.n  # every seed is violated on a sliver of 1/16 of its box
    # the gradient attack sees zero gradients everywhere: it must fall back to random moves
    # rather than stall at its starts (it used to find at most half of these)
    grad = falsify.attack(p, idx, p.tl, p.tu, generator=torch.Generator().manual_seed(0))
    _check_found(p, idx, grad, p.tl, p.tu)
    assert int(grad.mask.sum()) > p.n // 2
    z_cex = p.x0[:, 0] + bb.t[:, 0]
    assert torch.all((z_cex >= 0.75) & (z_cex < 0.875))


def test_finds_violations_without_the_random_phase_by_compass_steps():
    """samples=0: only centre, corners and coordinate steps of halving size."""
    p = _axis_problem(Staircase())
    idx = torch.arange(p.n)
    bb = blackbox.attack(p, idx, p.tl, p.tu, samples=0, restarts=2, steps=30,
                         generator=torch.Generator().manual_seed(1))
    _check_found(p, idx, bb, p.tl, p.tu)
    assert int(bb.mask.sum()) >= p.n - 2


def test_numpy_model_in_a_two_dimensional_subspace():
    """A quantised numpy MLP (round to a 0.5 grid), called through as_torch_model: no
    torch graph at all. Found points are real and inside the box; it finds at least what
    uniform sampling finds with more forward passes."""
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(8, 16)), rng.normal(size=(16, 4))

    def quantised(x):
        h = np.maximum(x @ W1, 0.0)
        return np.round(2 * (h @ W2) / 4) / 2

    model = blackbox.as_torch_model(quantised)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(48, 8, generator=g)
    labels = torch.as_tensor(quantised(z.numpy()).argmax(1))
    V = Direction.subspace(torch.eye(8)[:, :2]).basis(8).T.reshape(1, 2, 8)
    p = _problem(model, z, V, 0.4, labels)
    idx = torch.arange(p.n)
    bb = blackbox.attack(p, idx, p.tl, p.tu, generator=torch.Generator().manual_seed(0))
    _check_found(p, idx, bb, p.tl, p.tu)
    smp = falsify.sample(p, idx, p.tl, p.tu, 400, generator=torch.Generator().manual_seed(0))
    assert int(bb.mask.sum()) >= int(smp.mask.sum()) > 0
    # a seed that is not found keeps a point inside its box too (checked above) and is not
    # reported; what sampling found must be found (ties count: holds, not margin > 0)
    assert bool((bb.mask | ~smp.mask).all())


class Ramp(nn.Module):
    """margin = z0 - 1: violated (a tie counts) exactly from z0 = 1 on."""

    def forward(self, z):
        return torch.stack([torch.ones_like(z[:, 0]), z[:, 0]], 1)


def test_never_reports_a_point_outside_the_box_and_counts_ties():
    z = torch.zeros(6, 3)
    V = torch.zeros(1, 1, 3)
    V[0, 0, 0] = 1.0
    labels = torch.zeros(6, dtype=torch.long)
    # sub-boxes that stop just short of the violation, and ones that reach it exactly
    tl = torch.tensor([[-1.0], [0.0], [0.5], [-2.0], [0.9], [0.99]])
    tu = torch.tensor([[0.999], [0.9999], [0.99999], [1.0], [1.0], [1.5]])
    p = Problem(Ramp(), z, V, tl, tu, Prediction(), labels)
    idx = torch.arange(6)
    bb = blackbox.attack(p, idx, tl, tu, generator=torch.Generator().manual_seed(0))
    _check_found(p, idx, bb, tl, tu)
    assert bb.mask.tolist() == [False, False, False, True, True, True]
    assert torch.all(bb.t[3:5, 0] == 1.0)  # the tie at the corner: Prediction fails on ties


def test_subset_of_seeds_and_sub_boxes():
    p = _axis_problem(Staircase(), n=16)
    idx = torch.tensor([3, 5, 11])
    tl, tu = torch.tensor([[0.0], [-1.0], [0.0]]), torch.tensor([[1.0], [0.0], [0.3]])
    bb = blackbox.attack(p, idx, tl, tu, generator=torch.Generator().manual_seed(0))
    _check_found(p, idx, bb, tl, tu)
    reach = (p.x0[idx, 0] + tu[:, 0] >= 0.75) & (p.x0[idx, 0] + tl[:, 0] < 0.875)
    assert bb.mask.tolist() == reach.tolist()
    empty = blackbox.attack(p, idx[:0], tl[:0], tu[:0])
    assert empty.mask.numel() == 0


class Slow(nn.Module):
    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        time.sleep(self.delay)
        return torch.stack([z[:, 0] * 0 + 1.0, -torch.ones_like(z[:, 0])], 1)  # never violated


def test_respects_the_deadline():
    slow = Slow(0.02)
    p = _axis_problem(slow, n=8)
    idx = torch.arange(p.n)
    t0 = time.perf_counter()
    bb = blackbox.attack(p, idx, p.tl, p.tu, steps=10_000, restarts=8, deadline=t0 + 0.3, chunk_rows=16,
                         generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - t0
    assert not bool(bb.mask.any())
    assert elapsed < 0.3 + 0.5  # one batch past the deadline at most, plus the confirm pass
    # a deadline already gone: the concrete check of centre and corners, then stop
    slow.calls = 0
    blackbox.attack(p, idx, p.tl, p.tu, steps=10_000, deadline=time.perf_counter() - 1.0)
    assert slow.calls <= 2  # one batch and the confirming forward pass


def test_same_signature_as_the_gradient_attack():
    p = _axis_problem(Staircase(), n=4)
    idx = torch.arange(4)
    kwargs = dict(steps=5, restarts=2, deadline=None, generator=torch.Generator().manual_seed(0), method="sign")
    a, b = falsify.attack(p, idx, p.tl, p.tu, **kwargs), blackbox.attack(p, idx, p.tl, p.tu, **kwargs)
    for f in (a, b):
        assert isinstance(f, falsify.Found)
    assert a.t.shape == b.t.shape and a.x.shape == b.x.shape and a.margin.shape == b.margin.shape
