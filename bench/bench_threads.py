"""Benchmark: what a second thread gives, project against auto_LiRPA 0.3 CROWN, in one run.

The head and seeds of ``bench_matrix.py`` (5 Linear layers 128 -> 512 x4 -> 10, ReLU, 256
seeds, +-eps on the first k latent dims, spec: the nominal prediction). For each cell and
each thread count (``torch.set_num_threads``, switched within this one process): the
project's ``verify_box(engine="auto")`` seconds (the median of ``--repeat`` calls for cells
that take under 2 s, else one call) and one CROWN ``compute_bounds`` (building the
BoundedModule excluded, as in ``bench_matrix.py``). Prints seconds per thread count and the
gain (seconds at the first count / seconds at the last), and the project's serial part: the
lowering and trace checks (``_graph_or_note``), which are Python and do not use threads.

    python bench/bench_threads.py [--cells 0.05:1,0.05:2,0.05:4,0.25:4,0.5:2] [--threads 1,2]
                                  [--seeds 256] [--budget 30] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_matrix import box, build, crown, lirpa03_module, spec_rows


def project_seconds(model, lower, upper, labels, budget, repeat):
    """``(seconds, counts, serial seconds)`` of ``verify_box``: median of ``repeat`` calls when
    the first takes under 2 s. ``serial``: time spent lowering and checking the graph."""
    import pytest_latentaudit.api as api
    from pytest_latentaudit import Prediction, verify_box

    spent = []
    original = api._graph_or_note

    def timed_graph(*a, **kw):
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    api._graph_or_note = timed_graph
    try:
        times, r = [], None
        for i in range(repeat):
            t = time.perf_counter()
            r = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=budget)
            times.append(time.perf_counter() - t)
            if times[0] >= 2.0:
                break
    finally:
        api._graph_or_note = original
    return statistics.median(times), r.counts(), statistics.median(spent)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="0.05:1,0.05:2,0.05:4,0.25:4,0.5:2", help="eps:k,...")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from pytest_latentaudit import Prediction, verify_box

    cells = [(float(e), int(k)) for e, k in (c.split(":") for c in args.cells.split(","))]
    threads = [int(t) for t in args.threads.split(",")]
    model, z, labels = build(args.seeds)
    C, d = spec_rows(model, z, labels)
    al = lirpa03_module()
    torch.set_num_threads(threads[0])
    verify_box(model, *box(z[:4], 0.05, 1), Prediction(labels[:4]), engine="auto", budget_s=5)  # warm-up
    rows = []
    for eps, k in cells:
        lower, upper = box(z, eps, k)
        row = {"eps": eps, "k": k, "proj": {}, "crown": {}, "serial": {}, "counts": {}}
        for n in threads:
            torch.set_num_threads(n)
            s, counts, serial = project_seconds(model, lower, upper, labels, args.budget, args.repeat)
            _, tb, _ = crown(al, model, lower, upper, C, d)
            row["proj"][n], row["counts"][n], row["serial"][n], row["crown"][n] = s, counts, serial, tb
        rows.append(row)
        print(f"  done eps={eps} k={k}", flush=True)

    print(f"\nhead 128-512x4-10, seeds={z.shape[0]}, budget={args.budget}s, torch {torch.__version__}; "
          f"threads {args.threads} switched in one process")
    a, b = threads[0], threads[-1]
    hdr = (f"{'eps':>5s} {'k':>2s} | " + " ".join(f"{'proj@' + str(n):>8s}" for n in threads) +
           f" {'gain':>5s} {'serial@' + str(a):>9s} {'serial@' + str(b):>9s} | " +
           " ".join(f"{'CROWN@' + str(n):>8s}" for n in threads) + f" {'gain':>5s} | decided")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        dec = " ".join(f"{r['counts'][n]['verified'] + r['counts'][n]['falsified']}" for n in threads)
        print(f"{r['eps']:5.2f} {r['k']:2d} | " + " ".join(f"{r['proj'][n]:8.3f}" for n in threads) +
              f" {r['proj'][a] / r['proj'][b]:5.2f} {r['serial'][a]:9.3f} {r['serial'][b]:9.3f} | " +
              " ".join(f"{r['crown'][n]:8.2f}" for n in threads) +
              f" {r['crown'][a] / r['crown'][b]:5.2f} | {dec}")
    print("proj@n / CROWN@n: seconds with n threads; gain: seconds at the first thread count / at the last; "
          "serial: seconds of lowering and trace checks inside the project's call")


if __name__ == "__main__":
    main()
