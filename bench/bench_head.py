"""Benchmark 1: an AuditAI-style latent head (5 Linear layers with ReLU, latent 128,
width 512, 10 classes), 256 seeds, a box of +-eps on 2 latent dims, random weights.

Prints, measured in one run on this machine: time and decided fraction for a plain
forward pass, the native engines (IBP, linear, branch and bound via engine="auto") and
auto_LiRPA (IBP, CROWN, alpha-CROWN), and ratios against the forward pass and CROWN.

    python bench/bench_head.py [--seeds 256] [--eps 0.05] [--budget 10] [--device auto]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pytest_latentaudit import Prediction, verify_box
from pytest_latentaudit.api import resolve_device


def head(latent=128, width=512, depth=5, classes=10, seed=0, init=None):
    """The reference head; ``init(linear)`` may re-initialise each Linear layer."""
    torch.manual_seed(seed)
    layers, i = [], latent
    for _ in range(depth - 1):
        layers += [nn.Linear(i, width), nn.ReLU()]
        i = width
    layers.append(nn.Linear(i, classes))
    if init is not None:
        with torch.no_grad():
            for m in layers:
                if isinstance(m, nn.Linear):
                    init(m)
    return nn.Sequential(*layers).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--dims", type=int, default=2)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-lirpa", action="store_true")
    ap.add_argument("--lirpa-methods", default="ibp,crown,alpha-crown")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    model = head().to(dev)
    torch.manual_seed(1)
    z = torch.randn(args.seeds, 128, device=dev)
    with torch.no_grad():
        labels = model(z).argmax(1)
    lower, upper = z.clone(), z.clone()
    lower[:, : args.dims] -= args.eps
    upper[:, : args.dims] += args.eps
    spec = Prediction(labels)
    verify_box(model, lower[:4], upper[:4], Prediction(labels[:4]), engine="linear", device=dev)  # warm-up

    rows = []
    with torch.no_grad():
        _, t_fwd = timed(lambda: model(z), dev)
        _, t_fwd = timed(lambda: model(z), dev)
    rows.append(("forward pass", t_fwd, None, None))
    for engine in ("ibp", "linear", "auto"):
        r, t = timed(lambda: verify_box(model, lower, upper, spec, engine=engine, device=dev,
                                        budget_s=args.budget), dev)
        rows.append((f"native {engine}", t, r.counts(), r))
    if not args.no_lirpa:
        for method in args.lirpa_methods.split(","):
            try:
                r, t = timed(lambda: verify_box(model, lower, upper, spec, engine=f"auto_lirpa:{method}",
                                                device=dev, budget_s=600), dev)
                rows.append((f"auto_LiRPA {method}", t, r.counts(), r))
            except Exception as exc:  # report and go on: a benchmark must print what it has
                rows.append((f"auto_LiRPA {method}", float("nan"), {"error": str(exc)[:60]}, None))

    crown = next((r for r in rows if r[0] == "auto_LiRPA crown" and r[2] and "error" not in r[2]), None)
    print(f"device={dev} seeds={args.seeds} eps={args.eps} dims={args.dims} budget={args.budget}s "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'method':22s} {'seconds':>9s} {'x fwd':>9s} {'/CROWN':>8s} {'verified':>9s} {'falsified':>9s} "
          f"{'unknown':>8s} {'seeds/s':>9s}")
    for name, t, counts, _ in rows:
        if counts and "error" in counts:
            print(f"{name:22s} error: {counts['error']}")
            continue
        v = counts or {}
        ratio_c = f"{t / crown[1]:.3f}" if crown else "-"
        print(f"{name:22s} {t:9.3f} {t / t_fwd:9.1f} {ratio_c:>8s} {v.get('verified', ''):>9} "
              f"{v.get('falsified', ''):>9} {v.get('unknown', ''):>8} {args.seeds / t:9.0f}")


if __name__ == "__main__":
    main()
