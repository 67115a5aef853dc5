"""Benchmark 2: a black-box audit of classifier o decoder: a DCGAN-style decoder
(Linear -> ConvTranspose2d + BatchNorm + ReLU -> ConvTranspose2d -> Sigmoid, 32x32
images) feeding a small CNN classifier, one latent direction.

Prints native vs auto_LiRPA CROWN (conv_mode="matrix"): time, tightness (mean width of
the proven bound on the spec margin) and decided fraction, all measured in one run.

    python bench/bench_decoder.py [--seeds 32] [--eps 0.02] [--latent 32]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pytest_latentaudit import Prediction, verify_box


def models(latent=32, seed=0):
    torch.manual_seed(seed)
    decoder = nn.Sequential(
        nn.Linear(latent, 64 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (64, 4, 4)),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())
    classifier = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))
    for bn in (decoder[4], decoder[7]):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return nn.Sequential(decoder, classifier).eval()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    model = models(args.latent).to(args.device)
    torch.manual_seed(1)
    z = torch.randn(args.seeds, args.latent, device=args.device)
    with torch.no_grad():
        labels = model(z).argmax(1)  # also the warm-up
        t = time.perf_counter()
        for _ in range(5):
            model(z)
        t_fwd = (time.perf_counter() - t) / 5
    lower, upper = z.clone(), z.clone()
    lower[:, 0] -= args.eps
    upper[:, 0] += args.eps
    spec = Prediction(labels)
    print(f"decoder+classifier, seeds={args.seeds}, eps={args.eps} on 1 latent dim, device={args.device}, "
          f"threads={torch.get_num_threads()}; forward pass {t_fwd * 1e3:.1f} ms")
    print(f"{'method':22s} {'seconds':>8s} {'x fwd':>8s} {'verified':>9s} {'falsified':>9s} {'unknown':>8s} "
          f"{'mean bound':>11s}")
    for engine in ("ibp", "linear", "exact", "auto", "auto_lirpa:crown"):
        t = time.perf_counter()
        try:
            r = verify_box(model, lower, upper, spec, engine=engine, device=args.device, budget_s=120)
        except Exception as exc:  # print and go on: a benchmark must show what it has
            print(f"{engine:22s} error: {str(exc)[:80]}")
            continue
        dt = time.perf_counter() - t
        c = r.counts()
        finite = r.bound[torch.isfinite(r.bound)]
        mb = f"{float(finite.mean()):.4f}" if finite.numel() else "-"
        print(f"{engine:22s} {dt:8.2f} {dt / t_fwd:8.0f} {c['verified']:9d} {c['falsified']:9d} {c['unknown']:8d} "
              f"{mb:>11s}")


if __name__ == "__main__":
    main()
