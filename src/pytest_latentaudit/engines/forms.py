"""Bound representations shared by the native engines.

A box is parametrised by its centre and ``k`` generators: ``x = c + sum_j s_j G_j`` with
``s in [-1, 1]^k``. For a latent direction ``V`` and ``t in [tl, tu]``,
``c = z0 + V (tl + tu) / 2`` and ``G_j = V_j (tu_j - tl_j) / 2``. Semantic tests have
k = 1..4, so carrying ``k`` coefficients per neuron costs a handful of forward passes.

``LinForm`` holds sound affine lower/upper bounds of a tensor ``[N, *S]`` over ``s``:
``lw . s + lb <= x <= uw . s + ub`` with ``lw, uw`` shaped ``[N, k, *S]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinForm:
    lw: torch.Tensor
    lb: torch.Tensor
    uw: torch.Tensor
    ub: torch.Tensor
    #: lower and upper forms are the same object (no relaxation applied yet)
    exact: bool = False

    @classmethod
    def input(cls, center: torch.Tensor, gens: torch.Tensor, slack=None) -> "LinForm":
        if slack is None:
            return cls(gens, center, gens, center, exact=True)
        return cls(gens, center - slack, gens, center + slack)

    @property
    def k(self) -> int:
        return self.lw.shape[1]

    def concretize(self):
        """Interval bounds over ``s``, rounded outward: the sums over k round, by at most
        ``gamma_{k+2}`` of the absolute terms."""
        from .ops import gamma, tiny, unit

        sl, su = self.lw.abs().sum(1), self.uw.abs().sum(1)
        g = gamma(self.k + 2, unit(self.lb.dtype))
        lo = self.lb - sl
        hi = self.ub + su
        return lo - g * (self.lb.abs() + sl) - tiny(lo.dtype), hi + g * (self.ub.abs() + su) + tiny(hi.dtype)

    def map_positive(self, fn) -> "LinForm":
        """Apply an elementwise-monotone linear map (reshape, pooling, upsampling)."""
        lw = _over_gens(fn, self.lw)
        lb = fn(self.lb)
        if self.exact:
            return LinForm(lw, lb, lw, lb, exact=True)
        return LinForm(lw, lb, _over_gens(fn, self.uw), fn(self.ub))


def _over_gens(fn, w: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample map to ``[N, k, *S]`` by folding k into the batch."""
    n, k = w.shape[:2]
    out = fn(w.reshape(n * k, *w.shape[2:]))
    return out.reshape(n, k, *out.shape[1:])


over_gens = _over_gens


def tolerance(dtype: torch.dtype):
    """(relative, absolute) float-error margin used for bounds in ``dtype``.

    float32 has ~6e-8 unit round-off; a network of depth L and width n can accumulate
    about L * sqrt(n) of it. 1e-5 relative covers deep/wide heads with a wide margin.
    """
    if dtype == torch.float64:
        return 1e-12, 1e-12
    return 1e-5, 1e-6
