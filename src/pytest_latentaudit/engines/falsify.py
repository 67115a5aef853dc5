"""Falsification inside a latent box: projected gradient ascent on the spec margin, plus
corners and uniform samples. Every candidate is re-checked with a plain forward pass of
the user's model before it counts; only then is a seed ``falsified``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .problem import Problem


@dataclass
class Found:
    """Confirmed counterexamples: ``mask[i]`` says box ``i`` has one at ``t[i]``/``x[i]``."""

    mask: torch.Tensor
    t: torch.Tensor
    x: torch.Tensor
    margin: torch.Tensor


def confirm(problem: Problem, idx: torch.Tensor, t: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor):
    """Re-evaluate candidate points with a plain forward pass; return (ok mask, x, margin, t).

    ``t`` is clamped into the box first so a counterexample is always inside it.
    """
    t = torch.maximum(torch.minimum(t, tu), tl)
    x = problem.point(idx, t)
    with torch.no_grad():
        y = problem.model_forward(x)
        ok = ~problem.holds(y, idx)
        margin = problem.margin(y, idx)
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

    rep_idx = idx.repeat(R)
    u = U.repeat_interleave(n, 0).clone()  # [R * n, k]
    mid_r, half_r = mid.repeat(R, 1), half.repeat(R, 1)

    def evaluate(u_):
        t_ = mid_r + half_r * u_
        return t_, problem.margin(problem.model_forward(problem.point(rep_idx, t_)), rep_idx)

    def record(t_, m_):
        nonlocal best_t, best_m
        m_ = m_.detach().reshape(R, n)
        r_best = m_.argmax(0)
        cand = m_.gather(0, r_best[None])[0]
        better = cand > best_m
        best_m = torch.where(better, cand, best_m)
        best_t = torch.where(better[:, None], t_.detach().reshape(R, n, k)[r_best, torch.arange(n)], best_t)

    step = 0.5
    m1 = torch.zeros_like(u)
    m2 = torch.zeros_like(u)
    for it in range(steps + 1):
        u.requires_grad_(True)
        with torch.enable_grad():
            t_, m = evaluate(u)
            grad = None
            if it < steps and m.requires_grad:
                (grad,) = torch.autograd.grad(m.sum(), u)
        record(t_, m)
        if bool((best_m > 0).all()) or it == steps or (deadline is not None and time.perf_counter() > deadline):
            break
        if grad is None:  # the model is not differentiable: fall back to random moves
            grad = torch.randn(u.shape, generator=generator, dtype=dt).to(dev)
        with torch.no_grad():
            if method == "adam":
                m1 = 0.9 * m1 + 0.1 * grad
                m2 = 0.999 * m2 + 0.001 * grad * grad
                upd = (m1 / (1 - 0.9 ** (it + 1))) / ((m2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-12)
                u = (u + 0.2 * upd).clamp(-1.0, 1.0)
            else:
                u = (u + step * grad.sign()).clamp(-1.0, 1.0)
        step = max(step * 0.85, 0.02)
    u = u.detach()

    cand = best_m > 0
    ok, x, margin, t = confirm(problem, idx, best_t, tl, tu)
    found = cand & ok
    return Found(found, t, x, margin)


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
    return Found((best_m > 0) & ok, t, x, margin)
