"""Benchmark: decisiveness on general networks (not the reference head), the project against
auto_LiRPA 0.3 CROWN (and alpha-CROWN on a sample), measured in one run.

Families (small, CPU-friendly, ``torch.manual_seed(s)`` before the layers; seeds
``torch.manual_seed(100 + s); torch.randn(--seeds, latent)``; the box is +-eps on the first k
latent dims; spec: the nominal prediction is kept; 1 thread):

* ``cnn1`` / ``cnn3``: a fixed linear decoder ``latent 8 -> 1x16x16`` (``3x16x16``, orthonormal
  columns times 4) into a CNN (Conv2d/ReLU/AvgPool2d, Conv2d/BatchNorm2d (eval, random
  statistics)/ReLU/MaxPool2d, Linear/ReLU, Linear to 10 classes);
* ``dcgan``: a DCGAN-style decoder (Linear/ReLU, ConvTranspose2d/BatchNorm2d/ReLU, ConvTranspose2d,
  Sigmoid, 16x16) into the ``cnn1`` classifier;
* ``tanh`` / ``sigmoid`` / ``gelu`` / ``leaky``: MLPs latent 16 -> 3 x 128 -> 10;
* ``resmlp``: latent 16 -> 128, two blocks ``x + W2 relu(W1 x)``, ReLU, 10;
* ``bnmlp``: latent 16 -> 3 x (Linear 128, BatchNorm1d eval, ReLU) -> 10;
* ``lnmlp``: latent 16 -> 3 x (Linear 128, LayerNorm, ReLU) -> 10 (auto_LiRPA 0.3 cannot build
  LayerNorm: its columns say so).

eps per cell: unless given (``--eps``), the first of a geometric grid where CROWN verifies at
most 75% of the seeds, and the one before it (so each cell is informative). Per cell: CROWN's
verified count and seconds (one ``compute_bounds``; building the BoundedModule excluded), and
``verify_box(engine="auto", budget_s=CROWN's seconds)``: verified/falsified/unknown, seconds, the
rungs that decided, and the seeds CROWN verified that the project left unknown.

    python bench/bench_families.py [--families cnn1,tanh,...] [--seeds 48] [--k 2] [--alpha 16]
"""
from __future__ import annotations

import argparse
import collections
import copy
import time

import torch
from torch import nn

from bench_matrix import box, lirpa03_module, spec_rows

LATENT = {"cnn1": 8, "cnn3": 8, "dcgan": 8}
LAST_BUILD = [0.0]  # seconds auto_LiRPA took to build its BoundedModule in the last crown_bound


class Reshape(nn.Module):
    """``x.reshape(-1, *shape)`` (auto_LiRPA 0.3 cannot parse ``nn.Unflatten``)."""

    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(-1, *self.shape)


class Residual(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))

    def forward(self, x):
        return x + self.f(x)


def _bn_stats(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _classifier(ch):
    return nn.Sequential(
        nn.Conv2d(ch, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def family(name: str, s: int = 0):
    torch.manual_seed(s)
    lat = LATENT.get(name, 16)
    if name in ("cnn1", "cnn3"):
        ch = 1 if name == "cnn1" else 3
        dec = nn.Linear(lat, ch * 16 * 16)
        q, _ = torch.linalg.qr(torch.randn(ch * 16 * 16, lat))
        dec.weight.data.copy_(4 * q)
        dec.bias.data.uniform_(-0.5, 0.5)
        model = nn.Sequential(dec, Reshape(ch, 16, 16), _classifier(ch))
    elif name == "dcgan":
        dec = nn.Sequential(
            nn.Linear(lat, 32 * 4 * 4), nn.ReLU(), Reshape(32, 4, 4),
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())
        model = nn.Sequential(dec, _classifier(1))
    elif name in ("tanh", "sigmoid", "gelu", "leaky"):
        act = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
               "leaky": lambda: nn.LeakyReLU(0.1)}[name]
        layers, i = [], lat
        for _ in range(3):
            layers += [nn.Linear(i, 128), act()]
            i = 128
        model = nn.Sequential(*layers, nn.Linear(128, 10))
    elif name == "resmlp":
        model = nn.Sequential(nn.Linear(lat, 128), Residual(128), Residual(128), nn.ReLU(), nn.Linear(128, 10))
    elif name in ("bnmlp", "lnmlp"):
        norm = (lambda: nn.BatchNorm1d(128)) if name == "bnmlp" else (lambda: nn.LayerNorm(128))
        layers, i = [], lat
        for _ in range(3):
            layers += [nn.Linear(i, 128), norm(), nn.ReLU()]
            i = 128
        model = nn.Sequential(*layers, nn.Linear(128, 10))
    else:
        raise ValueError(name)
    _bn_stats(model)
    return model.eval(), lat


def crown_bound(al, model, lower, upper, C, d, method="CROWN"):
    net = copy.deepcopy(model).eval()
    t = time.perf_counter()
    bm = al.BoundedModule(net, torch.zeros_like(lower[:1]), device="cpu")
    LAST_BUILD[0] = time.perf_counter() - t
    ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    x = al.BoundedTensor((lower + upper) / 2, ptb)
    t = time.perf_counter()
    with torch.no_grad() if method == "CROWN" else torch.enable_grad():
        _, ub = bm.compute_bounds(x=(x,), C=C, method=method)
    return (ub.detach() + d).amax(1), time.perf_counter() - t


def pick_eps(al, model, z, k, C, d, grid):
    """The largest eps of ``grid`` (ascending) where CROWN verifies at least a quarter and at
    most three quarters of the seeds; else the one closest to half."""
    best, score = grid[0], 2.0
    for eps in grid:
        lo, hi = box(z, eps, k)
        ub, _ = crown_bound(al, model, lo, hi, C, d)
        frac = float((ub < 0).double().mean())
        if abs(frac - 0.5) < score:
            best, score = eps, abs(frac - 0.5)
        if frac < 0.25:
            break
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="cnn1,cnn3,dcgan,tanh,sigmoid,gelu,leaky,resmlp,bnmlp,lnmlp")
    ap.add_argument("--seeds", type=int, default=48)
    ap.add_argument("--k", default="2,4")
    ap.add_argument("--eps", type=float, default=None, help="one eps for every cell (default: picked per cell)")
    ap.add_argument("--alpha", type=int, default=16, help="seeds of the alpha-CROWN sample (0: none)")
    ap.add_argument("--min-budget", type=float, default=2.0,
                    help="the second project run's budget: max(3 x CROWN s, this)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--lirpa", default="0.3", choices=["0.3", "native"],
                    help="0.3: PyPI's through the project's compatibility import; native: the auto_LiRPA "
                         "this python imports (the anchor venv's 0.7.1: run the script with that python)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from pytest_latentaudit import Prediction, verify_box

    if args.lirpa == "native":
        import auto_LiRPA as al
    else:
        al = lirpa03_module()
    print(f"auto_LiRPA {al.__version__}")
    grid = [0.01 * 1.5 ** i for i in range(16)]
    rows = []
    for name in args.families.split(","):
        model, lat = family(name)
        torch.manual_seed(100)
        z = torch.randn(args.seeds, lat)
        with torch.no_grad():
            labels = model(z).argmax(1)
        C, d = spec_rows(model, z, labels)
        verify_box(model, *box(z[:4], 0.01, 1), Prediction(labels[:4]), budget_s=2)  # warm-up
        for k in [int(x) for x in args.k.split(",")]:
            try:
                eps = args.eps or pick_eps(al, model, z, k, C, d, grid)
                lower, upper = box(z, eps, k)
                ub, tc = crown_bound(al, model, lower, upper, C, d)
                tbuild = LAST_BUILD[0]
                cv = ub < 0
                ncv = int(cv.sum())
            except Exception as exc:  # noqa: BLE001 - 0.3 cannot build some ops (GELU's Erf, LayerNorm)
                why = type(exc).__name__
                eps = args.eps or 0.1
                lower, upper = box(z, eps, k)
                cv, ncv, tc, tbuild = None, None, None, None
            av = None
            if cv is not None and args.alpha:
                try:
                    ua, ta = crown_bound(al, model, lower[:args.alpha], upper[:args.alpha], C[:args.alpha],
                                         d[:args.alpha], method="CROWN-Optimized")
                    av = (int((ua < 0).sum()), int(cv[:args.alpha].sum()), ta)
                except Exception:  # noqa: BLE001 - 0.3's alpha-CROWN fails on max pooling
                    av = None
            runs, r0 = [], None
            for budget in ([tc] if tc else []) + [max(3 * (tc or 0), args.min_budget)]:
                t = time.perf_counter()
                r = verify_box(model, lower, upper, Prediction(labels), engine=args.engine, budget_s=budget)
                runs.append((budget, time.perf_counter() - t, r.counts()))
                r0 = r0 if runs[1:] else r
            budget, s, c = runs[-1]
            rungs = collections.Counter(g for g, st in zip(r0.rung, r0.status) if st != "unknown")
            missed = [] if cv is None else [i for i in range(args.seeds) if cv[i] and r0.status[i] == "unknown"]
            wrong = [] if cv is None else [i for i in range(args.seeds) if cv[i] and r.status[i] == "falsified"]
            assert not wrong, f"CROWN verified seeds the project falsified: {wrong}"
            rows.append((name, k, eps, ncv, tc, tbuild, av, runs, dict(rungs), missed))
            print(f"  {name} k={k} eps={eps:.4g}: CROWN {ncv} in {tc}, project {c} in {s:.2f} s "
                  f"{dict(rungs)} missed {missed}", flush=True)

    print(f"\nseeds {args.seeds}, 1 thread, torch {torch.__version__}")
    print("| net | k | eps | CROWN v | CROWN s (build s) | alpha-CROWN v (CROWN v) / s, sample | at CROWN s: v/f/u, s | "
          "budget s | v/f/u | s | decided by | CROWN-verified left unknown |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def vfu(c):
        return f"{c['verified']}/{c['falsified']}/{c['unknown']}"

    for name, k, eps, ncv, tc, tbuild, av, runs, rungs, missed in rows:
        cr = ("n/a", "") if ncv is None else (str(ncv), f"{tc:.2f} ({tbuild:.2f})")
        a = "" if av is None else f"{av[0]} ({av[1]}) / {av[2]:.1f}, {args.alpha}"
        at = "" if len(runs) == 1 else f"{vfu(runs[0][2])}, {runs[0][1]:.2f}"
        budget, s, c = runs[-1]
        print(f"| {name} | {k} | {eps:.4g} | {cr[0]} | {cr[1]} | {a} | {at} | {budget:.2f} | {vfu(c)} | {s:.2f} | "
              f"{', '.join(f'{g} {n}' for g, n in sorted(rungs.items()))} | {len(missed)} |")


if __name__ == "__main__":
    main()
