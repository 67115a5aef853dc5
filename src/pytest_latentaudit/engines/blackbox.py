"""Gradient-free falsification for models that are not differentiable or not traceable
(quantised heads, ``torch.round``/``argmax`` inside, numpy code behind a callable).

Search per seed over the box ``t in [tl, tu]`` in unit coordinates ``u in [-1, 1]^k``:

1. **random search**: the centre, the corners (k <= 3) and ``samples`` uniform points;
2. **compass search** from the ``restarts`` best points found: try ``u +- h e_j`` for
   every coordinate ``j`` (finite-difference coordinate steps), move to the best if it
   raises the spec margin, else halve ``h``; a start whose step falls below ``h_min`` is
   re-drawn uniformly (so a flat, piecewise-constant margin still gets explored).

All seeds are searched in one batch; a seed leaves the batch as soon as one of its points
violates the spec (``problem.holds`` is false, so ties count, as the spec says), and the
deadline is checked before every batch. Every reported point is clamped into the box and
re-checked with ``falsify.confirm`` (a plain forward pass) before it counts.

The signature mirrors ``falsify.attack`` so the ladder can call either.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from . import falsify
from .falsify import Found
from .problem import Problem


def as_torch_model(fn: Callable, dtype=None) -> Callable:
    """Wrap a function on numpy arrays (``[N, *S] -> [N, n_out]``) as a callable on torch
    tensors, for audits of models that are plain numpy code."""
    import numpy as np

    def model(x: torch.Tensor) -> torch.Tensor:
        y = fn(x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(y), dtype=dtype or x.dtype).to(x.device)

    model.__name__ = getattr(fn, "__name__", "numpy_model")
    return model


class _Search:
    """Book-keeping shared by the two phases: per seed the best margin and point, and the
    first confirmed-by-spec violation."""

    def __init__(self, problem: Problem, idx, tl, tu, deadline, chunk_rows):
        self.p, self.idx = problem, idx
        self.mid, self.half = (tl + tu) / 2, (tu - tl) / 2
        self.tl, self.tu = tl, tu
        n = idx.numel()
        dt, dev = tl.dtype, tl.device
        self.found = torch.zeros(n, dtype=torch.bool, device=dev)
        self.found_t = self.mid.clone()
        self.best_m = torch.full((n,), -torch.inf, dtype=dt, device=dev)
        self.best_t = self.mid.clone()
        self.deadline = deadline
        self.chunk_rows = chunk_rows
        self.evals = 0

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def evaluate(self, pos: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Margins at unit points ``u`` ``[M, k]`` of seeds ``idx[pos]``; records violations
        and bests. Returns margins ``[M]`` (``-inf`` where a chunk was skipped for time)."""
        M = pos.numel()
        out = torch.full((M,), -torch.inf, dtype=self.mid.dtype, device=self.mid.device)
        for s in range(0, M, self.chunk_rows):
            if s and self.out_of_time():
                break
            sl = slice(s, s + self.chunk_rows)
            ps, us = pos[sl], u[sl]
            t = self.mid[ps] + self.half[ps] * us
            t = torch.maximum(torch.minimum(t, self.tu[ps]), self.tl[ps])
            rep = self.idx[ps]
            with torch.no_grad():
                y = self.p.model_forward(self.p.point(rep, t))
                m = self.p.margin(y, rep).to(out.dtype)
                bad = ~self.p.holds(y, rep)
            self.evals += ps.numel()
            m = torch.nan_to_num(m, nan=-torch.inf)
            out[sl] = m
            order = torch.argsort(m, descending=True)
            ps_o = ps[order]
            # the first occurrence of each seed in descending-margin order is its best
            uniq, inv = torch.unique(ps_o, return_inverse=True)
            pos_first = torch.full((uniq.numel(),), ps_o.numel(), dtype=torch.long, device=ps.device)
            pos_first.scatter_reduce_(0, inv, torch.arange(ps_o.numel(), device=ps.device), reduce="amin")
            rows = order[pos_first]
            cand_m, cand_t = m[rows], t[rows]
            better = cand_m > self.best_m[uniq]
            self.best_m[uniq] = torch.where(better, cand_m, self.best_m[uniq])
            self.best_t[uniq] = torch.where(better[:, None], cand_t, self.best_t[uniq])
            if bool(bad.any()):
                b = torch.nonzero(bad).reshape(-1)
                new = ~self.found[ps[b]]
                b = b[new]
                if b.numel():
                    # one violating point per seed: the one with the largest margin
                    bo = b[torch.argsort(m[b], descending=True)]
                    seeds_b = ps[bo]
                    u_s, inv_s = torch.unique(seeds_b, return_inverse=True)
                    firsts = torch.full((u_s.numel(),), bo.numel(), dtype=torch.long, device=ps.device)
                    firsts.scatter_reduce_(0, inv_s, torch.arange(bo.numel(), device=ps.device), reduce="amin")
                    rows_b = bo[firsts]
                    self.found[u_s] = True
                    self.found_t[u_s] = t[rows_b]
        return out


def attack(problem: Problem, idx: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor, *, steps: int = 20,
           restarts: int = 4, deadline: Optional[float] = None, generator: Optional[torch.Generator] = None,
           samples: Optional[int] = None, h_min: float = 1.0 / 64, chunk_rows: int = 65536,
           method: str = "compass") -> Found:
    """Gradient-free search for counterexamples in the boxes ``[tl, tu]`` of seeds ``idx``.

    ``samples`` uniform points per seed (default ``32 * k``) seed the search; then
    ``steps`` compass iterations (``2 k`` forward passes each) from each of the
    ``restarts`` best points. Forward passes only, no gradients: per seed at most
    ``1 + 2^k (k <= 3) + samples + restarts * steps * 2 k`` evaluations. ``method`` is
    accepted for signature compatibility with ``falsify.attack`` and ignored.
    """
    n, k = idx.numel(), problem.k
    dev, dt = tl.device, tl.dtype
    if n == 0:
        empty = torch.zeros(0, k, dtype=dt, device=dev)
        return Found(torch.zeros(0, dtype=torch.bool, device=dev), empty,
                     torch.zeros(0, *problem.input_shape, device=dev), torch.zeros(0, dtype=dt, device=dev))
    samples = 32 * k if samples is None else int(samples)
    S = _Search(problem, idx, tl, tu, deadline, chunk_rows)

    def rand(m):
        return (torch.rand(m, k, generator=generator, dtype=dt) * 2 - 1).to(dev)

    # --- phase 1: centre, corners, uniform samples --------------------------------
    fixed = [torch.zeros(1, k, dtype=dt, device=dev)]
    if k <= 3:
        fixed.append(torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=dt, device=dev)] * k).reshape(-1, k))
    F = torch.cat(fixed)
    ar = torch.arange(n, device=dev)
    pos0 = ar.repeat(F.shape[0])
    u0 = F.repeat_interleave(n, 0)
    m0 = S.evaluate(pos0, u0)
    pos_all, u_all, m_all = [pos0], [u0], [m0]
    done_s = 0
    per_batch = max(1, chunk_rows // n)
    while done_s < samples and not S.out_of_time():
        active = torch.nonzero(~S.found).reshape(-1)
        if active.numel() == 0:
            break
        r = min(per_batch, samples - done_s)
        pos = active.repeat(r)
        u = rand(pos.numel())
        m = S.evaluate(pos, u)
        pos_all.append(pos), u_all.append(u), m_all.append(m)
        done_s += r

    # --- phase 2: compass search from the best starts of each open seed --------------
    if steps > 0 and restarts > 0 and not S.out_of_time() and not bool(S.found.all()):
        P, U, Mg = torch.cat(pos_all), torch.cat(u_all), torch.cat(m_all)
        open_ = ~S.found[P]
        P, U, Mg = P[open_], U[open_], Mg[open_]
        # top `restarts` points per seed: sort by (seed, -margin), take the first r of each
        order = torch.argsort(Mg, descending=True, stable=True)
        order = order[torch.argsort(P[order], stable=True)]
        P, U, Mg = P[order], U[order], Mg[order]
        starts_at = torch.searchsorted(P, P, right=False)
        rank = torch.arange(P.numel(), device=dev) - starts_at
        keep = rank < restarts
        pos, u, m = P[keep], U[keep].clone(), Mg[keep].clone()
        h = torch.full((pos.numel(),), 0.5, dtype=dt, device=dev)
        dirs = torch.cat([torch.eye(k, dtype=dt, device=dev), -torch.eye(k, dtype=dt, device=dev)])  # [2k, k]
        for _ in range(steps):
            alive = ~S.found[pos]
            if not bool(alive.any()) or S.out_of_time():
                break
            pos, u, m, h = pos[alive], u[alive], m[alive], h[alive]
            cand = (u[:, None, :] + h[:, None, None] * dirs[None]).clamp(-1.0, 1.0)  # [A, 2k, k]
            A = pos.numel()
            mc = S.evaluate(pos.repeat_interleave(2 * k), cand.reshape(A * 2 * k, k)).reshape(A, 2 * k)
            best_c, j = mc.max(1)
            up = best_c > m
            u = torch.where(up[:, None], cand[torch.arange(A, device=dev), j], u)
            m = torch.where(up, best_c, m)
            h = torch.where(up, h, h / 2)
            # a start that stopped improving is re-drawn at random (plateaus, local maxima)
            stale = h < h_min
            if bool(stale.any()):
                ns = int(stale.sum())
                u[stale] = rand(ns)
                m[stale] = -torch.inf
                h[stale] = 0.5

    t = torch.where(S.found[:, None], S.found_t, S.best_t)
    ok, x, margin, t = falsify.confirm(problem, idx, t, tl, tu)
    return Found(S.found & ok, t, x, margin)
