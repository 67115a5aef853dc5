"""Branch and bound that makes progress seed by seed, within its budget (issue 10).

* the decided count never falls as the budget grows, and a seed verified with a small
  budget is verified with a larger one (wall clock, and a deterministic clock that makes
  the prefix property exact);
* a planted narrow violation is never verified;
* splitting proves what one linear bound cannot;
* the budget holds: the ladder ends within 5% of ``budget_s`` plus one batch;
* a seed whose sub-boxes multiply without end does not starve the others.
"""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from conftest import hat_model

from pytest_latentaudit import Prediction, verify_box
from pytest_latentaudit.engines.ladder import Ladder
from pytest_latentaudit.engines.problem import Problem
from pytest_latentaudit.core.specs import Prediction as PredictionSpec


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def mlp(n_in=5, width=50, depth=6, classes=3, seed=0):
    torch.manual_seed(seed)
    layers, i = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(i, width), nn.ReLU()]
        i = width
    layers.append(nn.Linear(i, classes))
    return nn.Sequential(*layers).eval()


def boxes(model, n, eps, k=2, n_in=5, seed=1):
    """``n`` seeds, each a box of +-eps on the first ``k`` inputs, labelled by the model."""
    torch.manual_seed(seed)
    z = torch.randn(n, n_in)
    with torch.no_grad():
        labels = model(z).argmax(1)
    lower, upper = z.clone(), z.clone()
    lower[:, :k] -= eps
    upper[:, :k] += eps
    return lower, upper, labels


def sets(res):
    return ({i for i, s in enumerate(res.status) if s == "verified"},
            {i for i, s in enumerate(res.status) if s == "falsified"})


@pytest.fixture(scope="module")
def hard():
    """32 seeds that each need tens to hundreds of sub-boxes (a second or so in all)."""
    model = mlp(width=20)
    lower, upper, labels = boxes(model, 32, 16.0)
    verify_box(model, lower[:2], upper[:2], Prediction(labels[:2]), engine="bab", device="cpu", budget_s=1)
    return model, lower, upper, labels


# --------------------------------------------------------------- (a) monotone
def test_decided_count_does_not_fall_as_the_budget_grows(hard):
    model, lower, upper, labels = hard
    small = verify_box(model, lower, upper, Prediction(labels), engine="bab", device="cpu", budget_s=0.3, seed=3)
    large = verify_box(model, lower, upper, Prediction(labels), engine="bab", device="cpu", budget_s=3.0, seed=3)
    v1, f1 = sets(small)
    v2, f2 = sets(large)
    assert v1 <= v2 and f1 <= f2
    assert len(v2) + len(f2) >= len(v1) + len(f1)


class TickClock:
    """A clock that advances one tick per reading: the budget becomes an amount of work,
    so a run is exactly repeatable and the prefix property can be checked exactly."""

    def __init__(self, tick=1e-3):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def test_a_larger_budget_runs_a_longer_prefix_of_the_same_work(hard, monkeypatch):
    model, lower, upper, labels = hard
    spec = Prediction(labels)

    def run(budget):
        clock = TickClock()
        monkeypatch.setattr(time, "perf_counter", clock)
        try:
            res = verify_box(model, lower, upper, spec, engine="bab", device="cpu", budget_s=budget, seed=5)
        finally:
            monkeypatch.undo()
        return res, clock.t

    full, used = run(1e6)  # how much of the clock the whole search reads
    assert full.counts()["unknown"] == 0
    budgets = [f * used for f in (0.3, 0.6, 0.8, 0.9)]
    results = [run(b)[0] for b in budgets] + [full]
    counts = [len(v) + len(f) for v, f in map(sets, results)]
    for (v1, f1), (v2, f2) in zip(map(sets, results), map(sets, results[1:])):
        assert v1 <= v2 and f1 <= f2, counts
    assert counts == sorted(counts) and counts[0] < counts[-1]
    # the clock decides only how far it got: the same budget gives the same result
    again = run(budgets[2])[0]
    assert again.status == results[2].status and torch.equal(again.bound, results[2].bound)


def synthetic_ladder(need, deadline, max_boxes=2_000_000, costly=None):
    """A ladder over ``len(need)`` seeds whose engine proves a sub-box of seed ``i`` once
    its widest side is at most ``need[i]`` (a loose but sound bound elsewhere); the spec
    holds everywhere, so no attack ends a seed. Returns the ladder and the log of bounded
    seeds. ``costly``: a ``TickClock`` that each bounded sub-box advances by a second, every
    box counted as one that needed the CROWN stage (as on a wide head at a large eps)."""
    n, k = need.numel(), 2
    held = []
    model = nn.Sequential(nn.Linear(k, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, 0.0]))  # label 0 holds everywhere
    log = []

    def bound_fn(idx, btl, btu, C, d):
        log.append(idx.clone())
        if costly is not None:
            costly.t += float(idx.numel())
            held[0].stage_count.crown += idx.numel()
        w = (btu - btl).amax(1)
        ub = torch.where(w <= need[idx].to(w), -torch.ones_like(w), torch.ones_like(w))
        return ub[:, None].expand(-1, C.shape[1]).to(btl.dtype)

    problem = Problem(model, torch.zeros(n, k), torch.eye(k)[None], -torch.ones(n, k), torch.ones(n, k),
                      PredictionSpec(), torch.zeros(n, dtype=torch.long))
    ladder = Ladder(problem, None, engine="bab", bound_fn=bound_fn, deadline=deadline,
                    generator=torch.Generator().manual_seed(0), max_boxes=max_boxes)
    held.append(ladder)
    return ladder, log


def test_seeds_are_decided_one_after_another(monkeypatch):
    """A ramp, not a cliff: with 300 seeds of three difficulties (30, 126 and 510 bounded
    sub-boxes each), the decided count grows steadily with the budget, nested at every
    step, and a quarter of the work already decides a good share of the seeds."""
    need = torch.tensor([0.5, 0.25, 0.125]).repeat(100)

    def run(ticks):
        clock = TickClock(1.0)
        monkeypatch.setattr(time, "perf_counter", clock)
        try:
            ladder, log = synthetic_ladder(need, clock() + ticks)
            ladder.run_bab()
        finally:
            monkeypatch.undo()
        return {i for i, s in enumerate(ladder.status) if s == "verified"}, clock.t, sum(map(len, log))

    full, used, work = run(1e9)
    assert len(full) == need.numel()
    runs = [run(f * used) for f in torch.linspace(0.05, 0.95, 10).tolist()]
    decided = [len(v) for v, _, _ in runs] + [len(full)]
    for (v1, _, _), (v2, _, _) in zip(runs, runs[1:] + [(full, 0, 0)]):
        assert v1 <= v2, decided
    assert len(set(decided)) >= 8, decided  # many steps, not one jump at the end
    quarter = next(v for (v, _, w) in runs if w >= 0.25 * work)
    assert len(quarter) >= 0.15 * need.numel(), decided


def test_costly_sub_boxes_still_decide_seed_after_seed(monkeypatch):
    """Where every sub-box needs the costly CROWN stage (tens of milliseconds each on a
    5x512 head at eps 1.0, k 4), rounds of a thousand sub-boxes and a first quota for every
    seed before any seed's second one outlast the budget: 256 seeds, every one closing
    after about 130 bounded sub-boxes, and a budget for a tenth of all that work decided
    none. Rounds sized in work units and the easiest seeds' deeper passes first must
    decide seeds while the budget lasts, the more the larger the budget."""
    need = torch.full((256,), 0.25)

    def run(budget):
        clock = TickClock(1e-6)
        monkeypatch.setattr(time, "perf_counter", clock)
        try:
            ladder, log = synthetic_ladder(need, clock() + budget, costly=clock)
            ladder.run_bab()
        finally:
            monkeypatch.undo()
        return {i for i, s in enumerate(ladder.status) if s == "verified"}, sum(map(len, log))

    full, work = run(1e9)
    assert len(full) == need.numel()
    tenth, fifth = run(0.1 * work)[0], run(0.2 * work)[0]
    assert len(tenth) >= 0.04 * need.numel(), (len(tenth), work)
    assert tenth <= fifth and len(fifth) >= 1.5 * len(tenth), (len(tenth), len(fifth))


# ------------------------------------------------------------ (b) soundness


@pytest.mark.parametrize("engine", ["bab", "auto"])
@pytest.mark.parametrize("a,w", [(0.61, 2e-3), (0.137, 5e-4)])
def test_planted_narrow_violation_is_never_verified(engine, a, w):
    model = hat_model(a, w, n_in=2)
    with torch.no_grad():
        assert int(model(torch.tensor([[a + w / 2, 0.0]])).argmax()) == 1  # the violation is real
    # the hole next to seeds that verify: it must not be verified at any budget
    lower = torch.tensor([[0.0, -1.0], [0.0, -1.0]])
    upper = torch.tensor([[1.0, 1.0], [a - 0.05, 1.0]])
    for budget in (0.2, 1.0):
        res = verify_box(model, lower, upper, Prediction(0), engine=engine, device="cpu", budget_s=budget)
        assert res.status[0] in ("falsified", "unknown")
        if res.status[0] == "falsified":
            x = float(res.counterexamples[0][0, 0]) if res.counterexamples[0].dim() > 1 \
                else float(res.counterexamples[0][0])
            assert a + w / 4 - 1e-6 <= x <= a + 3 * w / 4 + 1e-6
        if budget >= 1.0:
            assert res.status[1] == "verified"


# ---------------------------------------------------------- (c) completeness
def test_bab_proves_what_one_linear_bound_cannot():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    z = torch.randn(1, 2)
    label = model(z).argmax(1)
    linear_failed = 0
    for eps in (0.2, 0.4, 0.8):
        lin = verify_box(model, z - eps, z + eps, Prediction(label), engine="linear", device="cpu", budget_s=5)
        bab = verify_box(model, z - eps, z + eps, Prediction(label), engine="bab", device="cpu", budget_s=5)
        assert lin.status[0] in ("verified", "unknown")
        assert bab.status[0] == "verified"
        linear_failed += lin.status[0] == "unknown"
        if lin.status[0] == "unknown":
            assert bab.rung[0] == "bab"
            assert float(bab.bound[0]) < 0 <= float(lin.bound[0])  # the split bound proves it
    assert linear_failed >= 1


# ------------------------------------------------------------- (d) budget
@pytest.mark.flaky(reruns=2)  # wall-clock: a busy machine can steal the time
@pytest.mark.parametrize("engine", ["bab", "auto"])
def test_the_budget_holds_on_a_hard_problem(hard, engine, monkeypatch):
    model = hard[0]
    lower, upper, labels = boxes(model, 256, 64.0)  # many seconds of splitting
    batches = [0.0]  # seconds of each batched bound call: "one batch" of overshoot is allowed
    entered = []
    chunked, run_bab = Ladder.chunked_upper, Ladder.run_bab

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return chunked(self, *args, **kwargs)
        finally:
            batches.append(time.perf_counter() - t0)

    def bab(self, *args, **kwargs):
        entered.append(len(batches))
        return run_bab(self, *args, **kwargs)

    monkeypatch.setattr(Ladder, "chunked_upper", timed)
    monkeypatch.setattr(Ladder, "run_bab", bab)
    budget = 1.0
    t = time.perf_counter()
    res = verify_box(model, lower, upper, Prediction(labels), engine=engine, device="cpu", budget_s=budget)
    wall = time.perf_counter() - t
    assert wall <= 1.05 * budget + max(batches) + 0.1, (wall, max(batches))
    assert res.counts()["unknown"] > 0  # it was cut short, not finished
    assert entered and len(batches) > entered[0]  # and branch and bound had the budget at the end


# --------------------------------------------------- fairness between seeds
def test_a_seed_whose_boxes_multiply_does_not_starve_the_others():
    """Seed 0 never closes (its engine bound is loose everywhere, and the spec holds, so no
    attack can end it); seeds 1..12 close once their sub-boxes are narrow enough. The
    others must all be verified, seed 0 must stay unknown, and it may not take the lion's
    share of the work before they are done."""
    n = 13
    need = torch.tensor([1e-9] + [0.3 - 0.01 * i for i in range(1, n)])  # width that closes
    ladder, log = synthetic_ladder(need, time.perf_counter() + 20, max_boxes=20_000)
    ladder.run_bab()
    assert ladder.status[0] == "unknown"
    assert ladder.status[1:] == ["verified"] * (n - 1)
    assert any("20000 open sub-boxes" in note for note in ladder.notes)
    seen = torch.cat(log)
    done_at = max(int(torch.nonzero(seen == i).max()) for i in range(1, n))  # last box of the others
    share = float((seen[: done_at + 1] == 0).double().mean())
    assert share < 0.5, share
