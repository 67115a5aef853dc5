"""Benchmark 3: cost of the native linear bound against number of seeds, width, depth
and k (number of latent dims that move). One run, one machine; times are medians of 3.

    python bench/bench_scaling.py
"""
from __future__ import annotations

import statistics
import time

import torch

from bench_head import head
from pytest_latentaudit import Prediction
from pytest_latentaudit.engines.bounds import spec_upper_bound
from pytest_latentaudit.engines.graph import trace


def run(seeds=256, width=512, depth=5, k=2, latent=128, eps=0.05):
    """Median time of one sound linear bound of the spec over all seeds (the engine alone:
    no attacks, no splitting), and of one forward pass; plus the fraction it verifies."""
    model = head(latent, width, depth)
    torch.manual_seed(1)
    z = torch.randn(seeds, latent)
    with torch.no_grad():
        y = model(z)
    C, d = Prediction(y.argmax(1)).rows(y)
    graph = trace(model, (latent,))
    G = torch.zeros(seeds, k, latent)
    G[:, torch.arange(k), torch.arange(k)] = eps
    times, fwd = [], []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            ub = spec_upper_bound(graph, z, G, C, d)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            model(z)
            fwd.append(time.perf_counter() - t)
    verified = float((ub.amax(1) < 0).double().mean())
    return statistics.median(times), statistics.median(fwd), verified


def main():
    base = dict(seeds=256, width=512, depth=5, k=2)
    sweeps = {"seeds": [64, 128, 256, 512, 1024], "width": [128, 256, 512, 1024], "depth": [3, 5, 7, 9],
              "k": [1, 2, 3, 4, 8]}
    torch.set_num_threads(1)  # stable timings on a shared machine; ratios are what matter
    print(f"native linear bound (IBP + forward-mode linear over k coordinates + backward from the spec), "
          f"base {base}, eps 0.05, 1 thread")
    for name, values in sweeps.items():
        print(f"\n{name:>6s} {'seconds':>8s} {'x fwd':>7s} {'ms/seed':>8s} {'verified':>9s}")
        for v in values:
            kw = dict(base, **{name: v})
            t, f, ver = run(**kw)
            print(f"{v:>6} {t:8.3f} {t / f:7.1f} {1e3 * t / kw['seeds']:8.3f} {ver:9.2f}")


if __name__ == "__main__":
    main()
