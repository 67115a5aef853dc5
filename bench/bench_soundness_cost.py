"""What proofs you can trust cost: lowering, the trace check and the floating-point radii,
each as a share of the bound's own time, on the AuditAI-style head (256 seeds, k = 2,
eps 0.05, one thread), measured in one run.

    python bench/bench_soundness_cost.py [--seeds 256] [--k 2] [--eps 0.05] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_head import head
from pytest_latentaudit.api import _check_points, _generator
from pytest_latentaudit.engines.bounds import check_graph, spec_upper_bound
from pytest_latentaudit.engines.graph import get_graph
from pytest_latentaudit.engines.problem import Problem
from pytest_latentaudit.core.specs import Prediction


def best(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = head().eval()
    z = torch.randn(256, 128)[: a.seeds]
    with torch.no_grad():
        lab = model(z).argmax(1)
    n, k = z.shape[0], a.k
    V = torch.zeros(1, k, 128)
    V[0, range(k), range(k)] = 1.0
    tl = torch.full((n, k), -a.eps, dtype=torch.float64)
    prob = Problem(model, z, V, tl, -tl, Prediction(), lab)
    get_graph(model, (128,), example=z[:2])  # warm-up: the first trace in a process pays imports

    # as an audit lowers it: traced at the seeds' batch size too (graph.lower's other_batch)
    t_lower, g = best(lambda: get_graph(model, (128,), example=z[:2], other_batch=n), a.repeats)
    t_lower2, _ = best(lambda: get_graph(model, (128,), example=z[:2]), a.repeats)
    pts = _check_points(prob, generator=_generator(1))
    t_check, msg = best(lambda: check_graph(g, prob.model_forward, pts), a.repeats)
    assert msg is None, msg
    c, G = prob.center_gens(torch.arange(n), prob.tl, prob.tu)
    with torch.no_grad():
        C, d = prob.rows(model(z), torch.arange(n))
    t_fwd, _ = best(lambda: model(z), a.repeats)
    res = {}
    for rounding in (True, False):
        g.bind(dtype=torch.float32, rounding=rounding)
        for method in ("ibp", "linear"):
            t, ub = best(lambda: spec_upper_bound(g, c, G, C, d, method=method), a.repeats)
            res[(rounding, method)] = (t, int((ub.amax(1) < 0).sum()))
    g.bind(dtype=torch.float32, rounding=True)
    print(f"AuditAI-style head, {n} seeds, k={k}, eps={a.eps}, 1 thread (best of {a.repeats})")
    print(f"  plain forward pass           {t_fwd * 1e3:8.2f} ms")
    print(f"  lowering (make_fx + registry) {t_lower * 1e3:8.2f} ms ({t_lower2 * 1e3:.2f} ms without the "
          f"trace at the seeds' batch size)")
    print(f"  trace check ({pts.shape[0]} points)    {t_check * 1e3:8.2f} ms")
    for method in ("ibp", "linear"):
        (t1, v1), (t0, v0) = res[(True, method)], res[(False, method)]
        print(f"  {method:6s} bound: with radii {t1 * 1e3:8.2f} ms ({v1} proved), without {t0 * 1e3:8.2f} ms "
              f"({v0} proved): radii cost x{t1 / t0:.2f}")
    t_lin = res[(True, "linear")][0]
    print(f"  lowering / linear bound  {t_lower / t_lin:.2f}")
    print(f"  trace check / linear bound {t_check / t_lin:.2f}")


if __name__ == "__main__":
    main()
