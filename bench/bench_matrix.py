"""Benchmark: the AuditAI-style head over an (eps x k) matrix, project against CROWN.

Model and seeds as in the shared ANCHORS.md: ``bench_head.head()`` (5 Linear layers
128 -> 512 x4 -> 10 with ReLU, built right after ``torch.manual_seed(0)``), then
``z = torch.randn(256, 128)`` from the same generator (``--seeds n`` takes the first n
rows). Box: +-eps on the first k latent dims. Spec: the nominal prediction is kept,
``Prediction(labels=model(z).argmax(1))``. One thread.

Columns, all measured in this one run:
  * a plain forward pass of the head on the seeds;
  * the project: ``verify_box(engine="auto", budget_s=--budget)`` (after a warm-up call),
    seconds and verified / falsified / unknown;
  * auto_LiRPA 0.3 CROWN, in this process (the PyPI release, through the project's
    compatibility import): one ``compute_bounds(method="CROWN")`` with the spec matrix;
  * auto_LiRPA 0.7.1 CROWN, the same call under the anchor venv (a worker subprocess,
    all cells in one worker); skipped with a message when the anchors are absent.
CROWN columns time ``compute_bounds`` only (building the BoundedModule is shown apart);
a seed is verified by CROWN when every row of its upper bound is < 0. CROWN is a single
incomplete bound: it never falsifies. Ratios are project seconds / CROWN seconds.

    python bench/bench_matrix.py [--eps 0.05,0.25,0.5,1.0] [--k 1,2,4] [--seeds 256]
                                 [--budget 30] [--quick] [--no-anchor] [--no-lirpa03] [--at-crown]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------
# The only place that touches project internals (engine APIs are being rewritten).
def lirpa03_module():
    """auto_LiRPA 0.3 as the project imports it (with its torch-2.x compatibility patches)."""
    from pytest_latentaudit.engines.lirpa_compat import import_auto_lirpa

    return import_auto_lirpa()
# ----------------------------------------------------------------------------------


def build(n_seeds: int):
    from bench_head import head  # bench/ is on sys.path for scripts run from it

    model = head()  # torch.manual_seed(0) inside, then the layers
    z = torch.randn(256, 128)[:n_seeds]
    with torch.no_grad():
        labels = model(z).argmax(1)
    return model, z, labels


def box(z, eps, k):
    lower, upper = z.clone(), z.clone()
    lower[:, :k] -= eps
    upper[:, :k] += eps
    return lower, upper


def spec_rows(model, z, labels):
    """``C [N, 9, 10]``, ``d [N, 9]`` of the spec, from the public spec class."""
    from pytest_latentaudit import Prediction

    with torch.no_grad():
        y = model(z)
    return Prediction(labels).rows(y, labels)


def crown(al, model, lower, upper, C, d):
    """One CROWN bound of ``C y`` over the boxes; returns (verified mask, bound s, build s)."""
    net = copy.deepcopy(model).eval()
    t = time.perf_counter()
    bm = al.BoundedModule(net, torch.zeros_like(lower), device="cpu")
    t_build = time.perf_counter() - t
    ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    x = al.BoundedTensor((lower + upper) / 2, ptb)
    t = time.perf_counter()
    with torch.no_grad():
        _, ub = bm.compute_bounds(x=(x,), C=C, method="CROWN")
    t_bound = time.perf_counter() - t
    return ((ub + d).amax(1) < 0), t_bound, t_build


def worker(inp: str, out: str):
    """Under the anchor venv: CROWN with that venv's auto_LiRPA on every saved cell."""
    import auto_LiRPA as al

    torch.set_num_threads(1)
    job = torch.load(inp, weights_only=False)
    model, _, _ = build(1)
    model.load_state_dict(job["state_dict"])
    res = []
    for cell in job["cells"]:
        v, tb, tbuild = crown(al, model, cell["lower"], cell["upper"], cell["C"], cell["d"])
        res.append({"verified": int(v.sum()), "s": tb, "build_s": tbuild})
        print(f"cell eps={cell['eps']} k={cell['k']}: {res[-1]}", flush=True)
    torch.save({"version": al.__version__, "torch": torch.__version__, "cells": res}, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eps", default="0.05,0.25,0.5,1.0")
    ap.add_argument("--k", default="1,2,4")
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--budget", type=float, default=30.0, help="project budget_s per cell")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 32 seeds, eps 0.05,1.0, k 1,4, budget 2 s (unless given)")
    ap.add_argument("--no-anchor", action="store_true", help="skip auto_LiRPA 0.7.1 (anchor venv)")
    ap.add_argument("--no-lirpa03", action="store_true", help="skip in-process auto_LiRPA 0.3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--at-crown", action="store_true",
                    help="where the project ran longer than auto_LiRPA 0.3 CROWN, run it again with "
                         "CROWN's time as its budget and show what it decided by then")
    ap.add_argument("--anchor-log", help="keep the auto_LiRPA 0.7.1 worker's output in this file")
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--seeds" not in given:
            args.seeds = 32
        if "--eps" not in given:
            args.eps = "0.05,1.0"
        if "--k" not in given:
            args.k = "1,4"
        if "--budget" not in given:
            args.budget = 2.0
    torch.set_num_threads(args.threads)
    from pytest_latentaudit import Prediction, verify_box

    import anchors

    eps_list = [float(e) for e in args.eps.split(",")]
    k_list = [int(k) for k in args.k.split(",")]
    model, z, labels = build(args.seeds)
    n = z.shape[0]

    with torch.no_grad():  # forward pass: best of 5
        fwd = []
        for _ in range(5):
            t = time.perf_counter()
            model(z)
            fwd.append(time.perf_counter() - t)
    t_fwd = min(fwd)
    lo, up = box(z[:4], 0.05, 1)
    verify_box(model, lo, up, Prediction(labels[:4]), engine="auto", budget_s=5)  # warm-up (tracing)

    al03 = None
    if not args.no_lirpa03:
        try:
            al03 = lirpa03_module()
        except ImportError as exc:
            print(f"[skip] auto_LiRPA 0.3 in-process: {exc}")

    C, d = spec_rows(model, z, labels)
    cells = []
    for eps in eps_list:
        for k in k_list:
            lower, upper = box(z, eps, k)
            r = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=args.budget)
            cell = {"eps": eps, "k": k, "lower": lower, "upper": upper, "C": C, "d": d,
                    "proj_s": r.seconds, "proj": r.counts()}
            if al03 is not None:
                v, tb, tbuild = crown(al03, model, lower, upper, C, d)
                cell["c03"] = {"verified": int(v.sum()), "s": tb, "build_s": tbuild}
                if args.at_crown:
                    # the matrix's bar: decided >= CROWN's verified count within CROWN's time
                    if r.seconds > tb:
                        r2 = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=tb)
                        cell["at_crown"] = r2.counts()
                    else:
                        cell["at_crown"] = r.counts()
            cells.append(cell)
            print(f"  done eps={eps} k={k}: project {r.seconds:.2f}s {r.counts()}", file=sys.stderr, flush=True)

    anchor_note = ""
    if args.no_anchor:
        anchor_note = "auto_LiRPA 0.7.1: skipped (--no-anchor)"
    elif anchors.anchor_python() is None:
        anchor_note = anchors.missing_message("auto_LiRPA 0.7.1 CROWN")
    else:
        with tempfile.TemporaryDirectory(prefix="bench_matrix_") as tmp:
            inp, out = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
            log = Path(args.anchor_log) if args.anchor_log else Path(tmp) / "worker.log"
            torch.save({"state_dict": model.state_dict(),
                        "cells": [{key: c[key] for key in ("eps", "k", "lower", "upper", "C", "d")}
                                  for c in cells]}, inp)
            t = time.perf_counter()
            rc = anchors.run_worker(Path(__file__).resolve(), ["--worker", str(inp), str(out)], log=log)
            wall = time.perf_counter() - t
            if rc == 0:
                res = torch.load(out, weights_only=False)
                for c, a in zip(cells, res["cells"]):
                    c["c07"] = a
                anchor_note = (f"auto_LiRPA {res['version']} (anchor venv, torch {res['torch']}): "
                               f"one worker process, {wall:.1f}s wall including start-up")
            else:
                anchor_note = f"auto_LiRPA 0.7.1 worker failed (rc={rc}); see above"

    print(f"\nhead 128-512x4-10, seeds={n}, threads={torch.get_num_threads()}, project budget={args.budget}s, "
          f"torch {torch.__version__}; forward pass {t_fwd * 1e3:.2f} ms")
    if anchor_note:
        print(anchor_note)
    hdr = (f"{'eps':>5s} {'k':>2s} | {'proj s':>7s} {'v/f/u':>11s} {'x fwd':>8s} | {'0.3 s':>7s} {'v':>4s} "
           f"{'p/0.3':>7s} | {'0.7.1 s':>7s} {'v':>4s} {'p/0.7.1':>7s} | {'0.7/0.3':>7s}")
    print(hdr)
    print("-" * len(hdr))

    def fmt(c, key):
        a = c.get(key)
        if a is None:
            return f"{'-':>7s} {'-':>4s} {'-':>7s}"
        return f"{a['s']:7.2f} {a['verified']:>4d} {c['proj_s'] / a['s']:7.2f}"

    for c in cells:
        p = c["proj"]
        vfu = f"{p['verified']}/{p['falsified']}/{p['unknown']}"
        r = (f"{c['c07']['s'] / c['c03']['s']:7.2f}" if "c07" in c and "c03" in c else f"{'-':>7s}")
        print(f"{c['eps']:5.2f} {c['k']:2d} | {c['proj_s']:7.2f} {vfu:>11s} {c['proj_s'] / t_fwd:8.0f} | "
              f"{fmt(c, 'c03')} | {fmt(c, 'c07')} | {r}")
    builds = [f"0.3 {max(c['c03']['build_s'] for c in cells):.2f}s" if any("c03" in c for c in cells) else "",
              f"0.7.1 {max(c['c07']['build_s'] for c in cells):.2f}s" if any("c07" in c for c in cells) else ""]
    builds = [b for b in builds if b]
    if builds:
        print(f"(CROWN seconds exclude building the BoundedModule: at most {', '.join(builds)} per cell)")
    print("v/f/u: verified/falsified/unknown of the seeds; x fwd: project seconds / forward-pass seconds; "
          "p/X: project seconds / CROWN X seconds")
    if any("at_crown" in c for c in cells):
        print("\nwithin auto_LiRPA 0.3 CROWN's time (the project's budget = CROWN's seconds where it ran longer):")
        for c in cells:
            a = c.get("at_crown")
            if a is not None:
                dec = a["verified"] + a["falsified"]
                ok = "met" if dec >= c["c03"]["verified"] else "NOT met"
                print(f"  eps {c['eps']:4.2f} k {c['k']}: decided {dec} ({a['verified']} verified) in "
                      f"{c['c03']['s']:.2f}s; CROWN verified {c['c03']['verified']}: {ok}")


if __name__ == "__main__":
    main()
