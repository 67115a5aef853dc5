"""Benchmark: what a second thread gives, project against auto_LiRPA 0.3 CROWN, in one run.

The head and seeds of ``bench_matrix.py`` (5 Linear layers 128 -> 512 x4 -> 10, ReLU, 256
seeds, +-eps on the first k latent dims, spec: the nominal prediction). For each cell and
each thread count (``torch.set_num_threads``, switched within this one process): the
project's ``verify_box(engine="auto")`` seconds and one CROWN ``compute_bounds`` (building
the BoundedModule excluded, as in ``bench_matrix.py``), ``--repeat`` rounds with the thread
counts interleaved in each round (on this shared 2-core machine one call moves by 10-30%
between runs, and a drift over minutes would otherwise favour one count): prints the median
seconds per thread count, the gain (median at the first count / median at the last) with
the range of the per-round gains, and the project's serial part: the lowering and trace
checks (``_graph_or_note``), which are Python and do not use threads.

    python bench/bench_threads.py [--cells 0.05:1,0.05:2,0.05:4,0.25:4,0.5:2] [--threads 1,2]
                                  [--seeds 256] [--budget 30] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_matrix import box, build, crown, lirpa03_module, spec_rows


def project_seconds(model, lower, upper, labels, budget):
    """``(seconds, counts, serial seconds)`` of one ``verify_box`` call. ``serial``: time spent
    lowering and checking the graph."""
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
        t = time.perf_counter()
        r = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=budget)
        return time.perf_counter() - t, r.counts(), sum(spent)
    finally:
        api._graph_or_note = original


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="0.05:1,0.05:2,0.05:4,0.25:4,0.5:2", help="eps:k,...")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--budget", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, thread counts interleaved in each")
    args = ap.parse_args(argv)
    from pytest_latentaudit import Prediction, verify_box

    cells = [(float(e), int(k)) for e, k in (c.split(":") for c in args.cells.split(","))]
    threads = [int(t) for t in args.threads.split(",")]
    model, z, labels = build(args.seeds)
    C, d = spec_rows(model, z, labels)
    al = lirpa03_module()
    for n in threads:  # warm-up at every count: the first call at a new count starts its thread pool
        torch.set_num_threads(n)
        verify_box(model, *box(z, 0.05, 1), Prediction(labels), engine="auto", budget_s=5)
    rows = []
    for eps, k in cells:
        lower, upper = box(z, eps, k)
        row = {"eps": eps, "k": k, "proj": {n: [] for n in threads}, "crown": {n: [] for n in threads},
               "serial": {n: [] for n in threads}, "counts": {}}
        for _ in range(args.repeat):
            for n in threads:
                torch.set_num_threads(n)
                s, counts, serial = project_seconds(model, lower, upper, labels, args.budget)
                _, tb, _ = crown(al, model, lower, upper, C, d)
                row["proj"][n].append(s)
                row["serial"][n].append(serial)
                row["crown"][n].append(tb)
                row["counts"][n] = counts
        rows.append(row)
        print(f"  done eps={eps} k={k}", flush=True)

    med = statistics.median
    print(f"\nhead 128-512x4-10, seeds={z.shape[0]}, budget={args.budget}s, torch {torch.__version__}; "
          f"threads {args.threads} switched in one process, {args.repeat} rounds; medians")
    a, b = threads[0], threads[-1]

    def gains(xs):
        per = [x / y for x, y in zip(xs[a], xs[b])]
        return f"{med(xs[a]) / med(xs[b]):5.2f} ({min(per):.2f}-{max(per):.2f})"

    hdr = (f"{'eps':>5s} {'k':>2s} | " + " ".join(f"{'proj@' + str(n):>8s}" for n in threads) +
           f" {'gain (range)':>16s} {'serial@' + str(a):>9s} {'serial@' + str(b):>9s} | " +
           " ".join(f"{'CROWN@' + str(n):>8s}" for n in threads) + f" {'gain (range)':>16s} | decided")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        dec = " ".join(f"{r['counts'][n]['verified'] + r['counts'][n]['falsified']}" for n in threads)
        print(f"{r['eps']:5.2f} {r['k']:2d} | " + " ".join(f"{med(r['proj'][n]):8.3f}" for n in threads) +
              f" {gains(r['proj'])} {med(r['serial'][a]):9.3f} {med(r['serial'][b]):9.3f} | " +
              " ".join(f"{med(r['crown'][n]):8.2f}" for n in threads) + f" {gains(r['crown'])} | {dec}")
    print("proj@n / CROWN@n: median seconds with n threads; gain: median at the first thread count / at the last "
          "(range: the per-round gains); serial: seconds of lowering and trace checks inside the project's call")


if __name__ == "__main__":
    main()
