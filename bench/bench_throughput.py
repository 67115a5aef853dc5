"""Benchmark: how fast the engine bounds sub-boxes, and what a budget buys.

Part 1, throughput: sub-boxes bounded per second on a 6x50 ReLU 5-input network
(network 0 of bench_acas.py, plain variant), for each kind of bound of the engine's
internal ``spec_upper_bound`` (``ibp``; ``linear``: forward forms, folded spec and a
backward pass), on batches of 1000-10000 random sub-boxes of the ACAS property-1 input
box (each side 1/8 of the box's, the size branch and bound works on after ~15 splits),
with the property-1 spec row and with 4 rows (``y_j - y_0``, j = 1..4: a cost probe). Reference rates from the
same run: a plain forward pass of the box centres, and auto_LiRPA 0.3 CROWN in this
process (one ``compute_bounds`` per batch; on the Linear/ReLU stack over the normalised
box, as 0.3 fails on the model's own normalisation). Times are the best of --repeats.

Part 2, decided versus budget: ``verify_box(engine="auto", budget_s=B)`` for B in
--budgets, counting decided (verified + falsified) boxes: on the AuditAI-style head
(bench_matrix.py's seeds) at eps 1.0, k 2 (``--head-cell``: another eps,k, e.g. 1.0,4 where
every sub-box needs CROWN), and on bench_acas.py's 16 instances (per-instance budget B;
``--instances none`` skips them).

    python bench/bench_throughput.py [--sizes 1000,2000,5000,10000] [--budgets 1,2,5,10,20]
                                     [--seeds 256] [--acas-variant plain] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


# ----------------------------------------------------------------------------------
# The only place that touches project internals (engine APIs are being rewritten).
def make_bounder(model, input_shape):
    """``bound(center [N, *S], gens [N, k, *S], C [N, m, out], d [N, m], method) -> [N, m]``:
    a sound upper bound of every row of ``C y + d`` over each box ``center + gens^T t``,
    ``t in [-1, 1]^k``. The graph is built here, once, outside the timings."""
    from pytest_latentaudit.engines.bounds import spec_upper_bound
    from pytest_latentaudit.engines.graph import get_graph

    graph = get_graph(model, tuple(input_shape))

    def bound(center, gens, C, d, method):
        return spec_upper_bound(graph, center, gens, C, d, method=method)

    return bound


def lirpa03_module():
    from pytest_latentaudit.engines.lirpa_compat import import_auto_lirpa

    return import_auto_lirpa()
# ----------------------------------------------------------------------------------


def sub_boxes(lo, hi, n, frac, g):
    """``n`` random sub-boxes of ``[lo, hi]`` with sides ``frac`` of the box's: centre,
    generators ``[n, 5, 5]`` (one per dim), lower and upper corners."""
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    half = (hi - lo) * frac / 2
    center = lo + half + (hi - lo - 2 * half) * torch.rand(n, lo.numel(), generator=g)
    gens = torch.diag_embed(half.expand(n, -1)).clone()
    return center, gens, center - half, center + half


def best_of(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def throughput(args):
    import copy

    import bench_acas as A

    model, _ = A.train(0, args.steps)
    insts = A.make_instances([model])
    p1 = insts[0]
    bound = make_bounder(model, (5,))
    al = None
    if not args.no_lirpa:
        try:
            al = lirpa03_module()
        except ImportError as exc:
            print(f"[skip] auto_LiRPA 0.3: {exc}")
    g = torch.Generator().manual_seed(0)
    specs = {
        "P1 (1 row)": (torch.tensor([[1.0, 0, 0, 0, 0]]), torch.tensor([-p1["t"]])),
        "4 rows": (insts[1]["C_unsafe"], torch.zeros(4)),  # y_j - y_0 <= 0, j = 1..4 (a cost probe)
    }
    print(f"\nPart 1: sub-boxes bounded per second, 6x50 ReLU 5-input net (bench_acas net 0), sub-box sides "
          f"{args.frac} of the P1 box; best of {args.repeats}; threads={torch.get_num_threads()}")
    hdr = f"{'spec':>12s} {'boxes':>6s} | {'forward/s':>10s} | {'ibp/s':>10s} {'proved':>6s} | " \
          f"{'linear/s':>10s} {'proved':>6s} | {'CROWN0.3/s':>10s} {'proved':>6s} | {'lin/ibp':>7s} {'lin/CROWN':>9s}"
    print(hdr)
    print("-" * len(hdr))
    for name, (C0, d0) in specs.items():
        for n in args.sizes:
            center, gens, lower, upper = sub_boxes(p1["lower"], p1["upper"], n, args.frac, g)
            C = C0[None].expand(n, -1, -1).contiguous()
            d = d0[None].expand(n, -1).contiguous()
            with torch.no_grad():
                t_fwd, _ = best_of(lambda: model(center), args.repeats)
                rates, proved = {}, {}
                for method in ("ibp", "linear"):
                    t, ub = best_of(lambda: bound(center, gens, C, d, method), args.repeats)
                    rates[method], proved[method] = n / t, float((ub.amax(1) < 0).float().mean())
            if al is not None:
                # auto_LiRPA 0.3 fails on the model's normalisation ``(x - mu) / sd`` (a shape
                # error in its backward pass): it bounds the Linear/ReLU stack on the image box
                # ``[(lower - mu) / sd, (upper - mu) / sd]`` instead (the same set of inputs).
                net = copy.deepcopy(model.net)
                nl, nu = (lower - model.mu) / model.sd, (upper - model.mu) / model.sd
                bm = al.BoundedModule(net, torch.zeros_like(nl), device="cpu")
                ptb = al.PerturbationLpNorm(norm=float("inf"), x_L=nl, x_U=nu)
                x = al.BoundedTensor((nl + nu) / 2, ptb)
                with torch.no_grad():
                    t, (_, ub) = best_of(lambda: bm.compute_bounds(x=(x,), C=C, method="CROWN"), args.repeats)
                rates["crown"], proved["crown"] = n / t, float(((ub + d).amax(1) < 0).float().mean())
            cr = f"{rates['crown']:10.0f} {proved['crown']:6.2f}" if "crown" in rates else f"{'-':>10s} {'-':>6s}"
            ratio = f"{rates['linear'] / rates['crown']:9.2f}" if "crown" in rates else f"{'-':>9s}"
            print(f"{name:>12s} {n:6d} | {n / t_fwd:10.0f} | {rates['ibp']:10.0f} {proved['ibp']:6.2f} | "
                  f"{rates['linear']:10.0f} {proved['linear']:6.2f} | {cr} | "
                  f"{rates['linear'] / rates['ibp']:7.2f} {ratio}")
    print("proved: share of the sub-boxes whose bound proves the spec; X/s: sub-boxes per second; "
          "lin/ibp, lin/CROWN: ratios of rates")


def budget_curve(args):
    from pytest_latentaudit import Prediction, verify_box

    import bench_acas as A
    import bench_matrix as M

    print("\nPart 2: decided (verified + falsified) versus budget, verify_box(engine='auto')")
    model, z, labels = M.build(args.seeds)
    eps, k = args.head_cell
    lower, upper = M.box(z, eps, k)
    verify_box(model, lower[:2], upper[:2], Prediction(labels[:2]), engine="auto", budget_s=1)  # warm-up
    head_rows = []
    for b in args.budgets:
        r = verify_box(model, lower, upper, Prediction(labels), engine="auto", budget_s=b)
        c = r.counts()
        head_rows.append((b, c, r.seconds))
        print(f"  head budget {b}: {c} {r.seconds:.1f}s", file=sys.stderr, flush=True)

    nets = [A.train(s, args.steps)[0] for s in range(A.N_NETS)] if args.instances != "none" else []
    insts = [i for i in A.make_instances(nets) if i["id"] in A.parse_range(args.instances, 16)] if nets else []
    acas_rows = []
    for b in args.budgets:
        dec = ver = 0
        secs = 0.0
        for inst in insts:
            m = nets[inst["net"]]
            m = A.with_variant(A.negated(m) if inst["negate"] else m, args.acas_variant)
            r = A.project_verify(m, inst["lower"][None], inst["upper"][None], A.project_spec(inst), b)
            dec += r.status[0] in ("verified", "falsified")
            ver += r.status[0] == "verified"
            secs += r.seconds
        acas_rows.append((b, dec, ver, secs))
        print(f"  acas budget {b}: decided {dec}/{len(insts)} {secs:.1f}s", file=sys.stderr, flush=True)

    n = z.shape[0]
    print(f"{'budget s':>8s} | {f'head eps {eps:g} k {k} (' + str(n) + ' seeds)':>34s} | "
          f"{'acas-like ' + args.acas_variant + ' (' + str(len(insts)) + ' instances)':>34s}")
    print(f"{'':>8s} | {'decided':>8s} {'v/f/u':>13s} {'seconds':>10s} | {'decided':>8s} {'verified':>9s} "
          f"{'seconds':>15s}")
    for (b, c, s), (_, dec, ver, secs) in zip(head_rows, acas_rows):
        vfu = f"{c['verified']}/{c['falsified']}/{c['unknown']}"
        print(f"{b:8g} | {c['verified'] + c['falsified']:8d} {vfu:>13s} {s:10.1f} | {dec:8d} {ver:9d} "
              f"{secs:15.1f}")
    print("seconds: wall time actually used (head: one call over all seeds; acas: sum over instances, "
          "each with that budget)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,2000,5000,10000")
    ap.add_argument("--frac", type=float, default=0.125, help="sub-box side as a fraction of the P1 box's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budgets", default="1,2,5,10,20")
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--instances", default="0-15", help="bench_acas instances for part 2, or none")
    ap.add_argument("--head-cell", default="1.0,2", help="eps,k of the head for part 2")
    ap.add_argument("--acas-variant", default="plain", choices=["plain", "cat"])
    ap.add_argument("--steps", type=int, default=1500, help="bench_acas training steps per network")
    ap.add_argument("--no-lirpa", action="store_true")
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 1000,2000, 1 repeat, budgets 1,2, 32 seeds, instances 0,5,10,15")
    args = ap.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        for opt, val in (("sizes", "1000,2000"), ("repeats", 1), ("budgets", "1,2"), ("seeds", 32),
                         ("instances", "0,5,10,15")):
            if f"--{opt}" not in given:
                setattr(args, opt, val)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    args.budgets = [float(b) for b in str(args.budgets).split(",")]
    e, kk = str(args.head_cell).split(",")
    args.head_cell = (float(e), int(kk))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    if args.part in ("1", "both"):
        throughput(args)
    if args.part in ("2", "both"):
        budget_curve(args)


if __name__ == "__main__":
    main()
