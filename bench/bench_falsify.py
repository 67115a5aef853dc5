"""Benchmark 4: how many truly violated seeds do the falsifiers find, at what cost?

Models where the truth per seed is known: ReLU heads along a 1-D latent direction, where
``engines.segment.certify`` computes exactly the set of offsets that violate the spec
(``Prediction`` of the seed's nominal class). A seed is *truly violated* when that set has
positive length. Models: the AuditAI-style reference head (5 Linear layers with ReLU,
latent 128, width 512, 10 classes, random weights) and a small head (latent 16, width 64,
3 layers). ``eps`` is chosen (bisection on the exact truth) so that about ``--share`` of
the seeds are violated.

Falsifiers compared on the same problem: ``falsify.attack`` (gradient, default settings,
more restarts, Adam), the ladder's sequence of attack calls, ``falsify.sample`` (uniform
sampling) with the same number of forward-pass equivalents as the default attack, and
``blackbox.attack`` (gradient-free). Cost is counted by a wrapper around the model:
rows through a forward pass, and rows through a backward pass (counted as 2 forward
passes each: the usual rule of thumb for a backward to the input). Every reported point
is re-checked by the falsifier itself; here it is also checked against the exact truth
(a found seed that the exact engine says holds would be a soundness bug: "false+").

    python bench/bench_falsify.py [--seeds 256] [--small-seeds 2048] [--shares 0.5,0.15]
                                  [--device cpu] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from bench_head import head as reference_head  # scripts in bench/ run with bench/ on sys.path
from pytest_latentaudit.engines import blackbox, falsify
from pytest_latentaudit.engines.graph import trace
from pytest_latentaudit.engines.problem import Problem
from pytest_latentaudit.engines.segment import certify
from pytest_latentaudit.core.specs import Prediction


def _he(linear):
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    linear.bias.zero_()


def head(latent, width, depth, classes=10, seed=0):
    """Random weights with He (Kaiming) initialisation and zero biases. (PyTorch's default
    Linear init shrinks activations layer by layer: at depth 5 every seed is predicted as
    the same class and almost nothing changes along any direction, a useless benchmark.)"""
    return reference_head(latent, width, depth, classes, seed, init=_he)


class Counting(nn.Module):
    """Counts rows through forward and backward passes of the wrapped model."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.fwd = 0
        self.bwd = 0

    def reset(self):
        self.fwd = self.bwd = 0

    def _count_bwd(self, g):
        self.bwd += g.shape[0]

    def forward(self, x):
        y = self.net(x)
        self.fwd += x.shape[0]
        if y.requires_grad:
            y.register_hook(self._count_bwd)
        return y

    @property
    def cost(self) -> int:
        """Forward-pass equivalents: a backward row counts as 2 forward rows."""
        return self.fwd + 2 * self.bwd


#: a violation is "narrow" when it covers less than this fraction of the segment
NARROW = 0.01


def truth(graph, z, v, eps, labels):
    """Per seed: truly violated (a failing set of positive length), the failing fraction of
    the segment, and whether the failing set is interior (touches neither end)."""
    n = z.shape[0]
    tl = torch.full((n,), -eps, dtype=torch.float64)
    res = certify(graph, z, v.expand(n, -1), tl, -tl, Prediction(), labels)
    bad_mass = 1.0 - res.fraction
    violated = bad_mass > 1e-12
    tol = 1e-9 * eps
    interior = torch.tensor([bool(iv) and all(-eps + tol < lo and hi < eps - tol for lo, hi in iv)
                             for iv in res.bad_intervals], dtype=torch.bool)
    return violated, bad_mass, interior & violated


def pick_eps(graph, z, v, labels, share, lo=0.01, hi=30.0, iters=10):
    """Bisection on log(eps) for a violated share close to ``share`` (on up to 48 seeds)."""
    zs, ls = z[:48], labels[:48]
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        frac = float(truth(graph, zs, v, mid, ls)[0].double().mean())
        if frac < share:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def run_method(name, fn, counter, n, violated, bad_mass, interior, device):
    counter.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    found = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    mask = found.mask.cpu()
    hit = int((mask & violated).sum())
    false_pos = int((mask & ~violated).sum())
    missed = violated & ~mask
    miss_mass = statistics.median(bad_mass[missed].tolist()) if bool(missed.any()) else float("nan")
    narrow = violated & (bad_mass < NARROW)
    return {"narrow": f"{int((mask & narrow).sum())}/{int(narrow.sum())}",
            "interior": f"{int((mask & interior).sum())}/{int(interior.sum())}",
            "name": name, "found": int(mask.sum()), "hit": hit, "false_pos": false_pos,
            "rate": hit / max(int(violated.sum()), 1), "sec": sec, "fwd": counter.fwd, "bwd": counter.bwd,
            "cost_per_seed": counter.cost / n, "miss_mass": miss_mass}


def bench_model(label, net, latent, n_seeds, share, device, quick=False, seed=0, eps=None):
    gen_seed = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(n_seeds, latent, generator=gen_seed)
    v = torch.randn(latent, generator=gen_seed)
    v = v / v.norm()
    with torch.no_grad():
        labels = net(z).argmax(1)
    graph = trace(net, (latent,))
    t0 = time.perf_counter()
    eps = pick_eps(graph, z, v[None], labels, share) if eps is None else eps
    violated, bad_mass, interior = truth(graph, z, v[None], eps, labels)
    t_exact = time.perf_counter() - t0
    n_viol = int(violated.sum())

    counter = Counting(net.to(device)).to(device)
    zd, ld = z.to(device), labels.to(device)
    V = v.to(device).reshape(1, 1, latent)
    tl = torch.full((n_seeds, 1), -eps, device=device)
    problem = Problem(counter, zd, V, tl, -tl, Prediction(), ld)
    idx = torch.arange(n_seeds, device=device)

    def g():
        return torch.Generator().manual_seed(seed + 2)

    def run(name, fn):
        return run_method(name, fn, counter, n_seeds, violated, bad_mass, interior, device)

    def attack(steps, restarts, method="sign"):
        return lambda: falsify.attack(problem, idx, problem.tl, problem.tu, steps=steps, restarts=restarts,
                                      generator=g(), method=method)

    def sample_like(row):
        n_s = max(1, int(round(row["cost_per_seed"])))
        r = run(f"  sample {n_s}/seed (same cost)", lambda: falsify.sample(
            problem, idx, problem.tl, problem.tu, n_s, generator=g()))
        row["vs_sample"] = row["hit"] / r["hit"] if r["hit"] else float("inf")
        return r

    def ladder_rungs():
        # the ladder's falsification calls, in order, each on the seeds still open
        gen = g()
        out_mask = torch.zeros(n_seeds, dtype=torch.bool, device=device)
        for steps, restarts in ((0, 1), (10, 2), (30, 4)):
            open_ = torch.nonzero(~out_mask).reshape(-1)
            if open_.numel() == 0:
                break
            f = falsify.attack(problem, open_, problem.tl[open_], problem.tu[open_], steps=steps,
                               restarts=restarts, generator=gen)
            out_mask[open_[f.mask]] = True
        return falsify.Found(out_mask, None, None, None)

    plan = [("attack 0x1 (centre + corners)", attack(0, 1)),
            ("attack sign 5x1", attack(5, 1)),
            ("attack sign 20x4 (default)", attack(20, 4)),
            ("blackbox 20x4 (default)", lambda: blackbox.attack(problem, idx, problem.tl, problem.tu,
                                                                generator=g()))]
    if not quick:
        plan += [("attack adam 20x4", attack(20, 4, "adam")),
                 ("attack sign 20x16", attack(20, 16)),
                 ("ladder rungs 0x1 + 10x2 + 30x4", ladder_rungs),
                 ("blackbox 40x8, 128 samples", lambda: blackbox.attack(
                     problem, idx, problem.tl, problem.tu, steps=40, restarts=8, samples=128, generator=g()))]
    rows = []
    for name, fn in plan:
        r = run(name, fn)
        rows.append(r)
        rows.append(sample_like(r))

    print(f"\n== {label}: {n_seeds} seeds, 1-D random unit direction, eps={eps:.4g}; exact truth "
          f"(segment engine, {t_exact:.1f}s incl. eps search): {n_viol} truly violated "
          f"({n_viol / n_seeds:.0%}), {int(interior.sum())} of them interior; median violated mass: "
          f"{statistics.median(bad_mass[violated].tolist()) if n_viol else float('nan'):.3g}")
    print(f"{'falsifier':34s} {'found':>5s} {'false+':>6s} {'detect':>7s} {'narrow':>7s} {'interior':>8s} "
          f"{'x sample':>8s} {'fwd-eq/seed':>11s} {'time s':>7s} {'miss mass':>9s}")
    for r in rows:
        ratio = f"{r['vs_sample']:8.2f}" if "vs_sample" in r else f"{'':8s}"
        print(f"{r['name']:34s} {r['found']:5d} {r['false_pos']:6d} {r['rate']:7.1%} {r['narrow']:>7s} "
              f"{r['interior']:>8s} {ratio} {r['cost_per_seed']:11.1f} {r['sec']:7.2f} {r['miss_mass']:9.3g}")
    default = next(r for r in rows if r["name"].startswith("attack sign 20x4"))
    print(f"target (default attack finds >= 95% of truly violated seeds): "
          f"{'met' if default['rate'] >= 0.95 else 'NOT met'} ({default['rate']:.1%}); "
          f"vs uniform sampling at equal cost: x{default['vs_sample']:.2f} overall, narrow {default['narrow']} "
          f"against {rows[rows.index(default) + 1]['narrow']}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=256, help="seeds for the reference head")
    ap.add_argument("--small-seeds", type=int, default=2048,
                    help="seeds for the small head (cheap: more seeds, more narrow and interior violations)")
    ap.add_argument("--models", default="reference,small")
    ap.add_argument("--shares", default="0.5,0.15",
                    help="target shares of truly violated seeds, one table each (small shares: narrow violations)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="default budgets only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=None, help="fixed eps (default: chosen for --shares)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine more threads make small batches "
                         "much slower and the times meaningless)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print("cost: forward-pass equivalents per seed = (forward rows + 2 x backward rows) / seeds; "
          "'detect' = found / truly violated; 'x sample' = hits relative to uniform sampling with the same "
          "cost (the row below each falsifier); 'interior' = found / truly violated among seeds whose "
          "failing set touches neither end of the segment; 'narrow' = found / truly violated among seeds "
          "whose violated fraction of the "
          f"segment is < {NARROW:g}; 'miss mass' = median violated fraction among missed seeds")
    models = args.models.split(",")
    for share in [float(x) for x in args.shares.split(",")]:
        if "reference" in models:
            bench_model("reference head (128 -> 4x512 ReLU -> 10)", head(128, 512, 5, seed=args.seed), 128,
                        args.seeds, share, dev, args.quick, args.seed, args.eps)
        if "small" in models:
            bench_model("small head (16 -> 2x64 ReLU -> 10)", head(16, 64, 3, seed=args.seed), 16,
                        args.small_seeds, share, dev, args.quick, args.seed, args.eps)


if __name__ == "__main__":
    main()
