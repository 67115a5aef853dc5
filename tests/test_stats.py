"""Statistics for sampling evidence: Clopper-Pearson bounds against exact binomial sums and
by simulation, per-box estimates against the exact segment engine, and the ``estimated``
verdict."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from pytest_latentaudit.engines import stats
from pytest_latentaudit.engines.graph import trace
from pytest_latentaudit.engines.problem import Problem
from pytest_latentaudit.engines.segment import certify
from pytest_latentaudit.core.specs import Prediction


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _binom_cdf_exact(k, n, p: Fraction) -> Fraction:
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k + 1))


# ------------------------------------------------------------------ Clopper-Pearson
def test_clopper_pearson_known_values():
    # textbook: 3 of 10 at 95% is (0.0667, 0.6525)
    lo, hi = stats.clopper_pearson(3, 10, 0.95)
    assert lo == pytest.approx(0.06673951, abs=1e-7) and hi == pytest.approx(0.65245285, abs=1e-7)
    # zero / all successes have closed forms: (alpha/2)^(1/n)
    for n in (1, 7, 256, 10_000):
        lo, hi = stats.clopper_pearson(0, n, 0.99)
        assert lo == 0.0 and hi == pytest.approx(1 - 0.005 ** (1 / n), rel=1e-10)
        lo, hi = stats.clopper_pearson(n, n, 0.99)
        assert hi == 1.0 and lo == pytest.approx(0.005 ** (1 / n), rel=1e-10)
    # one-sided: the "rule of three" at 95%, 0 of n: upper ~ 3/n
    _, hi = stats.clopper_pearson(0, 1000, 0.95, sided="upper")
    assert hi == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-10) and 2.9e-3 < hi < 3.0e-3
    assert stats.clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.clopper_pearson(5, 3)
    with pytest.raises(ValueError):
        stats.clopper_pearson(1, 3, confidence=1.0)


@pytest.mark.parametrize("n,k", [(10, 3), (50, 0), (50, 49), (200, 120), (1000, 5), (600, 590)])
def test_clopper_pearson_ends_are_where_the_exact_binomial_tails_equal_alpha(n, k):
    """The defining property, in exact rational arithmetic: at the upper end ``P(Bin(n, hi) <= k)``
    is ``alpha / 2``, at the lower end ``P(Bin(n, lo) >= k)`` is ``alpha / 2`` (so the Beta
    parameters passed to scipy are the right ones, not off by one)."""
    lo, hi = stats.clopper_pearson(k, n, 0.95)
    if k < n:
        assert float(_binom_cdf_exact(k, n, Fraction(hi))) == pytest.approx(0.025, rel=1e-8)
    if k > 0:
        assert float(1 - _binom_cdf_exact(k - 1, n, Fraction(lo))) == pytest.approx(0.025, rel=1e-8)


@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_clopper_pearson_covers_at_the_stated_rate(confidence):
    """2000 binomial draws per (p, n): the interval misses p at most (1 - c) of the time
    (up to 3 binomial standard deviations), and each tail at most (1 - c) / 2."""
    rng = np.random.default_rng(12345)
    draws = 2000
    sigma = math.sqrt(confidence * (1 - confidence) / draws)
    for n in (20, 150):
        for p in (0.003, 0.05, 0.3, 0.5, 0.8, 0.97, 0.999):
            k = rng.binomial(n, p, size=draws)
            lo, hi = stats.clopper_pearson_arrays(k, n, confidence)
            cover = np.mean((lo <= p) & (p <= hi))
            assert cover >= confidence - 3 * sigma, (n, p, cover)
            tail_sigma = math.sqrt((1 - confidence) / 2 * (1 + confidence) / 2 / draws)
            assert np.mean(lo > p) <= (1 - confidence) / 2 + 3 * tail_sigma
            assert np.mean(hi < p) <= (1 - confidence) / 2 + 3 * tail_sigma


# ------------------------------------------------------------------ real model
def _mlp(seed, d_in=6, width=24, depth=3, n_out=4):
    torch.manual_seed(seed)
    layers, i = [], d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(i, width), nn.ReLU()]
        i = width
    layers.append(nn.Linear(i, n_out))
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def segment_truth():
    """A ReLU net, 64 seeds along one direction, and the exact per-seed fraction of the
    segment where the prediction stays the nominal one (the segment engine)."""
    net = _mlp(3)
    torch.manual_seed(4)
    n = 64
    z = torch.randn(n, 6)
    v = torch.randn(6)
    v = v / v.norm()
    with torch.no_grad():
        labels = net(z).argmax(1)
    eps = 2.5
    res = certify(trace(net, (6,)), z, v[None].expand(n, -1), torch.full((n,), -eps), torch.full((n,), eps),
                  Prediction(), labels)
    tl = torch.full((n, 1), -eps)
    problem = Problem(net, z, v.reshape(1, 1, 6), tl, -tl, Prediction(), labels)
    return problem, res.fraction.clone(), res


def test_box_fraction_interval_covers_the_exact_fraction(segment_truth):
    problem, frac, _ = segment_truth
    fractional = (frac > 0) & (frac < 1)
    assert int(fractional.sum()) >= 15  # the test is only meaningful on partly failing seeds
    confidence, reps = 0.9, 6
    misses = trials = 0
    for r in range(reps):
        est = stats.estimate_box_fraction(problem, None, 300, confidence, torch.Generator().manual_seed(r))
        assert est.n_samples == 300 and est.holds.shape == (problem.n,)
        inside = (est.lower <= frac) & (frac <= est.upper)
        misses += int((~inside & fractional).sum())
        trials += int(fractional.sum())
        assert torch.all(inside[frac == 1.0]) and torch.all(inside[frac == 0.0])
        assert torch.all((est.fraction - frac).abs() <= 0.25)
    # misses ~ Binomial(trials, <= 0.1): allow 3 standard deviations
    limit = trials * (1 - confidence) + 3 * math.sqrt(trials * confidence * (1 - confidence))
    assert misses <= limit, (misses, trials)


def test_box_fraction_violations_are_real_counterexamples_in_the_box(segment_truth):
    problem, frac, _ = segment_truth
    idx = torch.arange(0, problem.n, 2)
    est = stats.estimate_box_fraction(problem, idx, 200, 0.99, torch.Generator().manual_seed(7))
    viol = est.violated
    assert bool((viol <= (frac[idx] < 1)).all()) and bool(viol.any())
    t = est.cex_t[viol]
    assert torch.all(t.abs() <= 2.5 + 1e-6)
    x = problem.point(idx[viol], t)
    with torch.no_grad():
        assert not bool(problem.holds(problem.model_forward(x), idx[viol]).any())
    assert torch.isnan(est.cex_t[~viol]).all()
    # sub-boxes: a zero-width box at the seed holds exactly when the seed's prediction does
    est0 = stats.estimate_box_fraction(problem, idx, 5, tl=torch.zeros(idx.numel(), 1),
                                       tu=torch.zeros(idx.numel(), 1))
    assert torch.all(est0.holds == 5)


def test_estimated_verdict_interval_covers_the_exact_sampled_accuracy(segment_truth):
    """Statuses from the exact engine (verified where the whole segment holds); the other
    seeds sampled: the interval of A covers the exact mean fraction at the stated rate."""
    problem, frac, _ = segment_truth
    status = ["verified" if f == 1.0 else "unknown" for f in frac.tolist()]
    A = float(frac.mean())
    idx = torch.tensor([i for i, s in enumerate(status) if s != "verified"])
    confidence, reps, covered = 0.9, 20, 0
    for r in range(reps):
        est = stats.estimate_box_fraction(problem, idx, 64, confidence, torch.Generator().manual_seed(100 + r))
        out = stats.estimated_verdict(status, est.holds_by_seed(problem.n), 64, at_least=0.0,
                                      confidence=confidence)
        assert out["samples"] == 64 * idx.numel() and out["confidence"] == confidence
        covered += out["lower"] <= A <= out["upper"]
    # coverage >= 0.9: P(Bin(20, 0.9) <= 14) ~ 1%
    assert covered >= 15


def test_sampled_accuracy_interval_covers_with_heterogeneous_seeds():
    """The pooled count is a sum of Binomial(n, f_i) with different f_i (Poisson-binomial);
    the Clopper-Pearson interval must still cover A = mean f_i at >= the stated rate."""
    rng = np.random.default_rng(5)
    draws, n_seeds, samples, confidence = 2000, 12, 40, 0.9
    for f in (rng.uniform(0.9, 1.0, n_seeds), np.r_[np.ones(6), np.full(6, 0.5)], rng.beta(0.3, 0.3, n_seeds)):
        A = f.mean()
        k = rng.binomial(samples, f, size=(draws, n_seeds)).sum(1)
        lo, hi = stats.clopper_pearson_arrays(k, n_seeds * samples, confidence)
        cover = np.mean((lo <= A) & (A <= hi))
        assert cover >= confidence - 3 * math.sqrt(confidence * (1 - confidence) / draws), (f, cover)


# ------------------------------------------------------------------ verdict logic
def test_estimated_verdict_cases():
    V, F, U = "verified", "falsified", "unknown"
    # proved: verified fraction reaches at_least; no samples needed for verified seeds
    out = stats.estimated_verdict([V] * 9 + [U], [None] * 9 + [100], 100, at_least=0.9)
    assert out["verdict"] == "proved"
    # violated: concrete counterexamples push accuracy below at_least
    out = stats.estimated_verdict([V] * 7 + [F] * 3, [None] * 7 + [10, 90, 99], 100, at_least=0.9)
    assert out["verdict"] == "violated" and out["falsified"] == 3
    # an unknown seed with a sampled violation counts as falsified
    out = stats.estimated_verdict([V] * 8 + [U, U], [None] * 8 + [99, 100], 100, at_least=0.95)
    assert out["verdict"] == "violated" and out["falsified_by_sampling"] == 1 and out["clean"] == 1
    # estimated: every unknown seed clean, lower bound of A above at_least
    out = stats.estimated_verdict([V] * 5 + [U] * 5, [None] * 5 + [1000] * 5, 1000, at_least=0.99)
    assert out["verdict"] == "estimated"
    lo_s, _ = stats.clopper_pearson(5000, 5000, 0.99)
    assert out["lower"] == pytest.approx((5 + 5 * lo_s) / 10) and out["upper"] == 1.0
    assert out["fraction"] == 1.0 and out["samples"] == 5000 and out["seed_lower"] == 1.0
    # delta with 5 clean seeds, 1000 samples each: 5 (1 - delta)^1000 = 0.01
    assert out["violation_mass"] == pytest.approx(1 - (0.01 / 5) ** (1 / 1000))
    # unproven: too few samples to put the lower bound above at_least
    out = stats.estimated_verdict([U] * 10, [20] * 10, 20, at_least=0.99)
    assert out["verdict"] == "unproven" and out["lower"] < 0.99
    # a falsified seed's samples still count in A
    out = stats.estimated_verdict([U] * 19 + [F], [50] * 19 + [0], 50, at_least=0.9)
    assert out["fraction"] == pytest.approx(0.95) and out["verdict"] in ("estimated", "unproven")
    assert stats.estimated_verdict([], [], 10, at_least=1.0)["verdict"] == "proved"
    with pytest.raises(ValueError, match="sample count"):
        stats.estimated_verdict([U, V], [None, None], 10, at_least=0.5)
    with pytest.raises(ValueError):
        stats.estimated_verdict([U], [11], 10, at_least=0.5)


def test_violation_mass_bound_holds_by_simulation():
    """Seeds failing on exactly the reported violation mass (the worst case) come out
    clean, all of them at once, with probability <= 1 - confidence."""
    rng = np.random.default_rng(9)
    n_unknown, samples, confidence, draws = 10, 100, 0.9, 4000
    status = ["unknown"] * n_unknown
    delta = stats.estimated_verdict(status, [samples] * n_unknown, samples, 0.5, confidence)["violation_mass"]
    clean = rng.binomial(samples, delta, size=(draws, n_unknown)) == 0  # no failing sample
    p_any_clean = clean.any(1).mean()
    assert p_any_clean <= (1 - confidence) + 3 * math.sqrt(0.1 * 0.9 / draws)
