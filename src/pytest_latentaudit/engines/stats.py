"""Statistics for sampling evidence: exact binomial (Clopper-Pearson) intervals, per-box
estimates of the fraction of a latent box where a spec holds, and the ``estimated`` test
verdict. See ``docs/falsification.md`` for the definitions and why they are sound.

The Beta quantiles come from ``scipy.special.betaincinv`` (a declared dependency), imported
when an interval is first computed, as torch is (only ``estimate_box_fraction`` needs it):
loading the plugin imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.vocab import (ESTIMATED, FALSIFIED, PROVED, UNKNOWN, UNPROVEN, VERIFIED, VIOLATED,  # noqa: F401
                          decide_verdict)


def beta_ppf(p, a, b) -> np.ndarray:
    """Quantile function of the Beta(a, b) distribution (float64, vectorised)."""
    from scipy import special

    return np.asarray(special.betaincinv(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                         np.asarray(p, np.float64)), dtype=np.float64)


# ----------------------------------------------------------------- Clopper-Pearson
def _check_conf(confidence: float) -> float:
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return c


def clopper_pearson_arrays(k, n, confidence: float = 0.99, sided: str = "two") -> Tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`clopper_pearson`; ``k`` and ``n`` broadcast."""
    c = _check_conf(confidence)
    if sided not in ("two", "lower", "upper"):
        raise ValueError(f"sided must be 'two', 'lower' or 'upper', got {sided!r}")
    k, n = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64))
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n) or np.any(k != np.floor(k)) or np.any(n != np.floor(n)):
        raise ValueError("clopper_pearson needs integers 0 <= k <= n")
    tail = (1.0 - c) / 2 if sided == "two" else 1.0 - c
    lower = np.zeros(k.shape)
    upper = np.ones(k.shape)
    # dedupe: many boxes share the same (k, n)
    pairs = np.stack([k.reshape(-1), n.reshape(-1)], 1) if k.size else np.zeros((0, 2))
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    uk, un = uniq[:, 0], uniq[:, 1]
    lo_u, hi_u = np.zeros(uk.shape), np.ones(uk.shape)
    if sided in ("two", "lower"):
        m = (uk > 0) & (un > 0)
        if m.any():
            lo_u[m] = beta_ppf(tail, uk[m], un[m] - uk[m] + 1)
    if sided in ("two", "upper"):
        m = (uk < un) & (un > 0)
        if m.any():
            hi_u[m] = beta_ppf(1.0 - tail, uk[m] + 1, un[m] - uk[m])
    lower.reshape(-1)[:] = lo_u[inv]
    upper.reshape(-1)[:] = hi_u[inv]
    return lower, upper


def clopper_pearson(k: int, n: int, confidence: float = 0.99, *, sided: str = "two") -> Tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval for a binomial proportion.

    ``k`` successes out of ``n`` trials. ``sided="two"`` (default): ``P(p < lower) <=
    (1-c)/2`` and ``P(p > upper) <= (1-c)/2``, so the interval covers ``p`` with
    probability ``>= confidence`` for every ``p``. ``"lower"``/``"upper"``: a one-sided
    bound at level ``confidence`` (the other end is 1 or 0). ``n == 0`` gives ``(0, 1)``.
    """
    lo, hi = clopper_pearson_arrays(k, n, confidence, sided)
    return float(lo), float(hi)


# ----------------------------------------------------------------- per-box estimates
@dataclass
class BoxEstimate:
    """Per box ``j`` (seed ``idx[j]``): ``holds[j]`` of ``n_samples`` uniform points of the
    box satisfy the spec; ``fraction = holds / n_samples`` and its Clopper-Pearson
    interval ``[lower, upper]`` at ``confidence`` for the true fraction of the box (by
    volume) where the spec holds. ``cex_t[j]`` is the offset of the worst violating
    sample (largest margin; nan where none): a plain-forward-pass counterexample."""

    idx: Any  # torch.LongTensor [n]
    holds: Any  # torch.LongTensor [n]
    n_samples: int
    fraction: Any  # torch.float64 [n]
    lower: Any
    upper: Any
    confidence: float
    cex_t: Any  # [n, k]
    cex_margin: Any  # [n]

    @property
    def violated(self):
        """Boxes with at least one violating sample."""
        return self.holds < self.n_samples

    def holds_by_seed(self, n_seeds: int) -> List[Optional[int]]:
        """``holds`` as a length-``n_seeds`` list (``None`` for seeds not sampled), the form
        :func:`estimated_verdict` takes."""
        out: List[Optional[int]] = [None] * n_seeds
        for i, h in zip(self.idx.tolist(), self.holds.tolist()):
            out[int(i)] = int(h)
        return out


def estimate_box_fraction(problem, idx=None, n_samples: int = 1024, confidence: float = 0.99, generator=None,
                          tl=None, tu=None, *, chunk_rows: int = 65536) -> BoxEstimate:
    """Estimate, per box, the fraction of the box where the spec holds.

    ``problem`` is an ``engines.problem.Problem``; ``idx`` the seeds (default: all);
    ``tl``/``tu`` sub-boxes of those seeds (default: the problem's boxes). Each box gets
    ``n_samples`` independent uniform points ``t``; each is checked with a plain forward
    pass (``problem.holds``), so the count of holding samples is Binomial(n_samples, f)
    with f the true fraction, and the Clopper-Pearson interval is exact.
    """
    import torch

    _check_conf(confidence)
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    dev = problem.tl.device
    if idx is None:
        idx = torch.arange(problem.n, device=dev)
    idx = torch.as_tensor(idx, dtype=torch.long, device=dev).reshape(-1)
    tl = problem.tl[idx] if tl is None else tl
    tu = problem.tu[idx] if tu is None else tu
    n, k = idx.numel(), problem.k
    holds = torch.zeros(n, dtype=torch.long, device=dev)
    best_m = torch.full((n,), -torch.inf, dtype=tl.dtype, device=dev)
    best_t = torch.full((n, k), torch.nan, dtype=tl.dtype, device=dev)
    per = max(1, chunk_rows // max(n, 1))
    done = 0
    ar = torch.arange(n, device=dev)
    with torch.no_grad():
        while done < n_samples and n:
            r = min(per, n_samples - done)
            u = torch.rand(r, n, k, generator=generator, dtype=tl.dtype).to(dev)
            t = (tl[None] + (tu - tl)[None] * u).reshape(r * n, k)
            t = torch.maximum(torch.minimum(t, tu.repeat(r, 1)), tl.repeat(r, 1))
            rep = idx.repeat(r)
            y = problem.model_forward(problem.point(rep, t))
            ok = problem.holds(y, rep).reshape(r, n)
            m = problem.margin(y, rep).reshape(r, n)
            holds += ok.sum(0)
            m_bad = torch.where(ok, torch.full_like(m, -torch.inf), m)
            a = m_bad.argmax(0)
            mv = m_bad[a, ar]
            better = (~ok).any(0) & ((mv > best_m) | torch.isinf(best_m))
            best_m = torch.where(better, mv, best_m)
            best_t = torch.where(better[:, None], t.reshape(r, n, k)[a, ar], best_t)
            done += r
    lo, hi = clopper_pearson_arrays(holds.cpu().numpy(), n_samples, confidence)
    frac = holds.double().cpu() / n_samples
    return BoxEstimate(idx=idx, holds=holds, n_samples=n_samples, fraction=frac,
                       lower=torch.from_numpy(lo), upper=torch.from_numpy(hi), confidence=float(confidence),
                       cex_t=best_t, cex_margin=best_m)


# ----------------------------------------------------------------- test verdict
DEFINITION = ("A = mean over seeds of the fraction of the seed's box (by volume) where the spec holds, i.e. "
              "the probability that a uniformly chosen seed moved by a uniformly random offset in its box "
              "satisfies the spec; verified seeds count 1 exactly, the others are sampled")


def _decide(n, verified, falsified, at_least):
    """``vocab.decide_verdict``, with None where it says unproven (sampling may say more)."""
    v = decide_verdict(n, verified, falsified, at_least)
    return None if v == UNPROVEN else v


def estimated_verdict(status: Sequence[str], holds: Sequence[Optional[int]], samples: int, at_least: float,
                      confidence: float = 0.99) -> Dict[str, Any]:
    """The test verdict with sampling evidence (definitions in docs/falsification.md).

    ``status``: per-seed ``verified``/``falsified``/``unknown``. ``holds``: per seed, how
    many of its ``samples`` uniform points satisfied the spec (``None`` for verified seeds,
    whose value is ignored; every other seed must have been sampled with the same
    ``samples``). A sampled violation is a plain-forward-pass counterexample, so an
    ``unknown`` seed with ``holds < samples`` counts as falsified.

    Verdict, first match wins:

    * ``proved``: verified fraction >= ``at_least`` (sound bounds; no statistics);
    * ``violated``: even if every seed not falsified were fine, the falsified ones push
      accuracy below ``at_least`` (concrete counterexamples; no statistics);
    * ``estimated``: the Clopper-Pearson lower bound of A (the sampled accuracy, see
      ``DEFINITION``) at ``confidence`` is >= ``at_least``;
    * ``unproven``: otherwise.

    Returns ``{verdict, fraction, lower, upper, confidence, samples, ...}`` where
    ``fraction`` is the point estimate of A and ``[lower, upper]`` its two-sided interval
    (so ``A >= lower`` holds with probability >= ``confidence``); ``samples`` is the total
    number of sampled points. ``seed_lower`` and ``violation_mass``: with probability >=
    ``confidence``, every seed that is verified or had no sampled violation fails on less
    than ``violation_mass`` of its box (a union bound over the sampled seeds), and those
    seeds are a fraction ``seed_lower`` of all.
    """
    c = _check_conf(confidence)
    q = float(at_least)
    samples = int(samples)
    n = len(status)
    if len(holds) != n:
        raise ValueError(f"got {n} statuses but {len(holds)} sample counts")
    verified = falsified = 0
    sampled_holds = 0
    n_sampled = 0
    clean = 0
    by_sampling = 0
    for s, h in zip(status, holds):
        if s == VERIFIED:
            verified += 1
            continue
        if s not in (FALSIFIED, UNKNOWN):
            raise ValueError(f"unknown per-seed status {s!r}")
        if h is None:
            raise ValueError("every seed that is not verified needs a sample count (the estimate would be biased)")
        h = int(h)
        if not 0 <= h <= samples:
            raise ValueError(f"sample count {h} is outside [0, {samples}]")
        n_sampled += 1
        sampled_holds += h
        if s == FALSIFIED:
            falsified += 1
        elif h < samples:
            falsified += 1
            by_sampling += 1
        else:
            clean += 1
    if n_sampled and samples < 1:
        raise ValueError("samples must be >= 1")
    # A = (verified + sum_{sampled} f_i) / n; the sampled part by Clopper-Pearson
    m = n_sampled * samples
    lo_s, hi_s = clopper_pearson(sampled_holds, m, c) if m else (1.0, 1.0)
    frac_s = sampled_holds / m if m else 1.0
    if n:
        fraction = (verified + n_sampled * frac_s) / n
        lower = (verified + n_sampled * lo_s) / n
        upper = (verified + n_sampled * hi_s) / n
    else:
        fraction = lower = upper = 1.0
    alpha = 1.0 - c
    if clean and samples:
        # union bound over every sampled seed (a set fixed before sampling, so the bound is
        # valid whatever the statuses say afterwards): P(some sampled seed failing on >= delta
        # of its box has no failing sample) <= n_sampled * (1 - delta)^samples = alpha
        violation_mass = 1.0 - (alpha / n_sampled) ** (1.0 / samples)
    else:
        violation_mass = 0.0
    verdict = _decide(n, verified, falsified, q)
    if verdict is None:
        verdict = ESTIMATED if lower >= q - 1e-12 else UNPROVEN
    return {
        "verdict": verdict, "fraction": fraction, "lower": lower, "upper": upper, "confidence": c,
        "samples": m, "samples_per_seed": samples, "at_least": q, "n": n,
        "verified": verified, "falsified": falsified, "falsified_by_sampling": by_sampling,
        "unknown": n - verified - falsified, "clean": clean,
        "seed_lower": (verified + clean) / n if n else 1.0, "violation_mass": violation_mass,
        "definition": DEFINITION,
    }
