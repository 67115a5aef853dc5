"""Falsification inside a latent box: projected gradient ascent on the spec margin, plus
corners and uniform samples. Every candidate is re-checked with a plain forward pass of
the user's model before it counts; only then is a seed ``falsified``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from .memory import is_oom
from .problem import Problem


@dataclass
class Found:
    """Confirmed counterexamples: ``mask[i]`` says box ``i`` has one at ``t[i]``/``x[i]``."""

    mask: torch.Tensor
    t: torch.Tensor
    x: torch.Tensor
    margin: torch.Tensor

    @staticmethod
    def cat(parts) -> "Found":
        """The results of consecutive slices of boxes as one."""
        return Found(*(torch.cat([getattr(f, a) for f in parts]) for a in ("mask", "t", "x", "margin")))


def confirm(problem: Problem, idx: torch.Tensor, t: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor):
    """Re-evaluate candidate points with a plain forward pass; return (ok mask, x, margin, t).

    ``t`` is clamped into the box first so a counterexample is always inside it; a row of ``t``
    that is not finite is no point at all (clamping keeps a NaN a NaN): it falsifies nothing,
    whoever proposed it (a replayed offset, a registered falsifier, an attack). A point
    counts only if it violates in the batch under ``no_grad`` and with autograd on, and on
    its own (a batch of one, as the user re-checks it).
    """
    finite = torch.isfinite(t).all(1)
    t = torch.where(torch.isfinite(t), t, (tl + tu) / 2)
    t = torch.maximum(torch.minimum(t, tu), tl)
    x = problem.point(idx, t)
    with torch.no_grad():
        y = problem.model_forward(x)
        ok = ~problem.holds(y, idx) & finite
        margin = problem.margin(y, idx)
    if bool(ok.any()):
        # and as a plain call runs it, autograd on: a forward that is another function in the
        # two modes has a counterexample only where both violate
        with torch.enable_grad():
            y_grad = problem.model_forward(x).detach()
        with torch.no_grad():
            ok &= ~problem.holds(y_grad, idx)
    if bool(ok.any()):
        # and alone, as a user re-checking the point runs it: a batch of one may take other
        # kernels (a violation by the batch kernel's rounding) or, in a forward that depends
        # on its batch size, another path; either way the point alone would not violate
        with torch.no_grad():
            for j in torch.nonzero(ok).reshape(-1).tolist():
                ok[j] = not bool(problem.holds(problem.model_forward(x[j:j + 1]), idx[j:j + 1]).all())
    return ok, x, margin, t


def attack(problem: Problem, idx: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor, *, steps: int = 20, restarts: int = 4,
           deadline: Optional[float] = None, generator: Optional[torch.Generator] = None,
           method: str = "sign") -> Found:
    """Search for counterexamples in the boxes ``[tl, tu]`` of seeds ``idx``.

    Starts: the box centre (the seed itself for a fresh box), all corners (k <= 3) and
    random points; then gradient ascent on the margin in box-normalised coordinates:
    ``method="sign"`` (PGD with signed steps shrinking from half the box) or ``"adam"``.
    """
    if method not in ("sign", "adam"):
        raise ValueError(f"unknown attack method {method!r}; use 'sign' or 'adam'")
    n = idx.numel()
    k = problem.k
    dev, dt = tl.device, tl.dtype
    best_t = (tl + tu) / 2
    best_m = torch.full((n,), -torch.inf, dtype=dt, device=dev)

    starts = [torch.zeros(1, k, dtype=dt, device=dev)]  # centre, in unit coordinates u in [-1, 1]
    if k <= 3:
        corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=dt, device=dev)] * k).reshape(-1, k)
        starts.append(corners)
    n_rand = max(restarts - 1, 0)
    if n_rand:
        starts.append(torch.rand(n_rand, k, generator=generator, dtype=dt).to(dev) * 2 - 1)
    U = torch.cat(starts)  # [R, k]
    R = U.shape[0]
    mid, half = (tl + tu) / 2, (tu - tl) / 2

    # rows are (start r, box j); `box` maps each row to its box so found boxes leave the batch
    box = torch.arange(n, device=dev).repeat(R)
    u = U.repeat_interleave(n, 0).clone()
    m1, m2 = torch.zeros_like(u), torch.zeros_like(u)
    step = 0.5
    differentiable = True
    for it in range(steps + 1):
        with torch.enable_grad():
            u.requires_grad_(differentiable)
            t_ = mid[box] + half[box] * u
            m = problem.margin(problem.model_forward(problem.point(idx[box], t_)), idx[box])
            grad = None
            if it < steps and m.requires_grad:
                try:
                    (grad,) = torch.autograd.grad(m.sum(), u)
                except RuntimeError as exc:
                    # a forward that runs but has no backward: an in-place op on a tensor
                    # autograd saved (``torch.sigmoid(h).mul_(2)``), an op without a derivative;
                    # the user's plain call never differentiates, so the attack moves at random
                    if is_oom(exc):
                        raise
                    differentiable = False
        u = u.detach()
        m = m.detach()
        # best row per box (scatter-max over rows)
        cur = torch.full((n,), -torch.inf, dtype=dt, device=dev).scatter_reduce(0, box, m, "amax")
        better = cur > best_m
        if bool(better.any()):
            is_best = (m == cur[box]) & better[box]
            rows = torch.nonzero(is_best).reshape(-1)
            best_t[box[rows]] = t_.detach()[rows]
            best_m = torch.where(better, cur, best_m)
        open_ = ~(best_m >= 0)[box]  # a tie may already violate: confirm() decides
        if it == steps or not bool(open_.any()) or (deadline is not None and time.perf_counter() > deadline):
            break
        box, u, m1, m2 = box[open_], u[open_], m1[open_], m2[open_]
        g = None if grad is None else grad[open_]
        if g is None:
            g = torch.randn(u.shape, generator=generator, dtype=dt).to(dev)  # not differentiable: random moves
        flat = (g.abs().sum(1) == 0)[:, None]  # flat margin (dead ReLUs, rounding): move at random
        if bool(flat.any()):
            g = torch.where(flat, torch.randn(u.shape, generator=generator, dtype=dt).to(dev), g)
        if method == "adam":
            m1 = 0.9 * m1 + 0.1 * g
            m2 = 0.999 * m2 + 0.001 * g * g
            upd = (m1 / (1 - 0.9 ** (it + 1))) / ((m2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-12)
            u = (u + 0.2 * upd).clamp(-1.0, 1.0)
        else:
            u = (u + step * g.sign()).clamp(-1.0, 1.0)
        step = max(step * 0.85, 0.02)

    ok, x, margin, t = confirm(problem, idx, best_t, tl, tu)
    return Found((best_m >= 0) & ok, t, x, margin)


def sample(problem: Problem, idx: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor, n_samples: int,
           generator=None) -> Found:
    """Uniform samples in each box (a cheap falsifier and the statistical fallback)."""
    n, k = idx.numel(), problem.k
    best_m = torch.full((n,), -torch.inf, dtype=tl.dtype, device=tl.device)
    best_t = (tl + tu) / 2
    chunk = max(1, 65536 // max(n, 1))
    done = 0
    with torch.no_grad():
        while done < n_samples:
            r = min(chunk, n_samples - done)
            u = torch.rand(r, n, k, generator=generator, dtype=tl.dtype).to(tl.device)
            t = tl[None] + (tu - tl)[None] * u
            rep = idx.repeat(r)
            m = problem.margin(problem.model_forward(problem.point(rep, t.reshape(r * n, k))), rep).reshape(r, n)
            a = m.argmax(0)
            mv = m.gather(0, a[None])[0]
            better = mv > best_m
            best_m = torch.where(better, mv, best_m)
            best_t = torch.where(better[:, None], t[a, torch.arange(n)], best_t)
            done += r
    ok, x, margin, t = confirm(problem, idx, best_t, tl, tu)
    return Found((best_m >= 0) & ok, t, x, margin)
