"""Benchmark: beyond the reference head, other activations and a deeper net, project against
auto_LiRPA 0.3 CROWN, measured in one run.

Networks: latent 32 -> hidden layers of ``--width`` -> 10 classes, ``torch.manual_seed(0)``
before the layers: Tanh, GELU, Sigmoid (4 layers) and ReLU (``--deep`` layers). Seeds:
``torch.manual_seed(1); torch.randn(--seeds, 32)``; box +-eps on the first k latent dims; spec:
the nominal prediction is kept; 1 thread. Per cell: CROWN's verified count and seconds (one
``compute_bounds``; building the BoundedModule excluded), then the project's
``verify_box(engine="auto")`` twice: with CROWN's seconds as its budget (what it decides in
CROWN's time) and with ``max(3 x CROWN, 5 s)``. auto_LiRPA 0.3 cannot bound GELU (ONNX Erf):
its columns say so.

    python bench/bench_general.py [--seeds 64] [--width 256] [--deep 8]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from bench_matrix import box, crown, lirpa03_module, spec_rows

CELLS = {"tanh": [(0.1, 4), (0.3, 4), (0.3, 2), (1.0, 2)],
         "gelu": [(0.1, 4), (0.3, 4), (0.3, 2), (1.0, 2)],
         "sigmoid": [(0.3, 4), (1.0, 2)],
         "relu": [(0.05, 4), (0.1, 4), (0.2, 4), (0.5, 2)]}


def net(kind: str, depth: int, width: int, latent: int = 32, classes: int = 10):
    torch.manual_seed(0)
    act = {"tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}[kind]
    layers, i = [], latent
    for _ in range(depth - 1):
        layers += [nn.Linear(i, width), act()]
        i = width
    layers.append(nn.Linear(i, classes))
    return nn.Sequential(*layers).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--deep", type=int, default=8, help="layers of the ReLU net")
    ap.add_argument("--kinds", default="tanh,gelu,sigmoid,relu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from pytest_latentaudit import Prediction, verify_box

    al = lirpa03_module()
    rows = []
    for kind in args.kinds.split(","):
        depth = args.deep if kind == "relu" else 4
        model = net(kind, depth, args.width)
        torch.manual_seed(1)
        z = torch.randn(args.seeds, 32)
        with torch.no_grad():
            labels = model(z).argmax(1)
        C, d = spec_rows(model, z, labels)
        verify_box(model, *box(z[:4], 0.01, 1), Prediction(labels[:4]), budget_s=5)  # warm-up
        for eps, k in CELLS[kind]:
            lower, upper = box(z, eps, k)
            try:
                v, tb, _ = crown(al, model, lower, upper, C, d)
                cv = int(v.sum())
            except Exception as exc:  # noqa: BLE001 - 0.3 refuses some ops (GELU's Erf)
                cv, tb = None, None
                why = type(exc).__name__
            runs = []
            for budget in ([tb] if tb else []) + [max(3 * (tb or 0), 5.0)]:
                t = time.perf_counter()
                r = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=budget)
                c = r.counts()
                runs.append((budget, time.perf_counter() - t, c["verified"], c["falsified"], c["unknown"]))
            rows.append((kind, depth, eps, k, cv, tb, runs, None if cv is not None else why))
            print(f"  done {kind} eps={eps} k={k}", flush=True)

    print(f"\nlatent 32, width {args.width}, seeds {args.seeds}, 1 thread, torch {torch.__version__}")
    hdr = (f"{'net':>10s} {'eps':>5s} {'k':>2s} | {'CROWN v':>7s} {'s':>6s} | {'at CROWN s: v/f/u':>18s} | "
           f"{'budget':>6s} {'s':>6s} {'v/f/u':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for kind, depth, eps, k, cv, tb, runs, why in rows:
        name = f"{kind} x{depth}"
        if cv is None:
            crown_cols = f"{'n/a':>7s} {'':>6s}"
            at = f"{'(' + why + ')':>18s}"
        else:
            crown_cols = f"{cv:7d} {tb:6.2f}"
            b, s, v, f, u = runs[0]
            at = f"{f'{v}/{f}/{u}':>18s}"
        b, s, v, f, u = runs[-1]
        print(f"{name:>10s} {eps:5.2f} {k:2d} | {crown_cols} | {at} | {b:6.1f} {s:6.2f} {f'{v}/{f}/{u}':>10s}")
    print("v/f/u: verified/falsified/unknown seeds; 'at CROWN s': the project with auto_LiRPA 0.3 CROWN's "
          "seconds as its budget (the first call of a cell: lowering and trace checks included)")


if __name__ == "__main__":
    main()
