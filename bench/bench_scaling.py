"""Benchmark 3: cost of the native linear engine against number of seeds, width, depth
and k (number of latent dims that move). One run, one machine; times are medians of 3.

    python bench/bench_scaling.py
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from pytest_latentaudit import Prediction, verify_box


def mlp(latent, width, depth, classes=10):
    torch.manual_seed(0)
    layers, i = [], latent
    for _ in range(depth - 1):
        layers += [nn.Linear(i, width), nn.ReLU()]
        i = width
    layers.append(nn.Linear(i, classes))
    return nn.Sequential(*layers).eval()


def run(seeds=256, width=512, depth=5, k=2, latent=128, eps=0.05, engine="linear"):
    model = mlp(latent, width, depth)
    z = torch.randn(seeds, latent)
    with torch.no_grad():
        labels = model(z).argmax(1)
    lower, upper = z.clone(), z.clone()
    lower[:, :k] -= eps
    upper[:, :k] += eps
    verify_box(model, lower[:2], upper[:2], Prediction(labels[:2]), engine=engine)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        verify_box(model, lower, upper, Prediction(labels), engine=engine)
        times.append(time.perf_counter() - t)
    with torch.no_grad():
        f = []
        for _ in range(3):
            t = time.perf_counter()
            model(z)
            f.append(time.perf_counter() - t)
    return statistics.median(times), statistics.median(f)


def main():
    base = dict(seeds=256, width=512, depth=5, k=2)
    sweeps = {"seeds": [64, 128, 256, 512, 1024], "width": [128, 256, 512, 1024], "depth": [3, 5, 7, 9],
              "k": [1, 2, 3, 4, 8]}
    print(f"native linear engine (IBP + forward-mode linear + backward from the spec), base {base}, "
          f"threads={torch.get_num_threads()}")
    for name, values in sweeps.items():
        print(f"\n{name:>6s} {'seconds':>8s} {'x fwd':>7s} {'s/seed':>9s}")
        for v in values:
            kw = dict(base, **{name: v})
            t, f = run(**kw)
            print(f"{v:>6} {t:8.3f} {t / f:7.1f} {t / kw['seeds']:9.5f}")


if __name__ == "__main__":
    main()
