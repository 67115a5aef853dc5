"""Benchmark: a 5-input family of 6x50 ReLU networks with linear output properties,
shaped like the ACAS Xu benchmark of VNN-COMP 2021; the project against alpha-beta-CROWN.

Networks (built here, nothing downloaded): 5 inputs -> 6 hidden layers of 50 ReLU -> 5
outputs, trained for a few seconds each (fixed seeds, one thread, so the weights are
the same every run on a given torch) on a smooth synthetic ACAS-like function: inputs
(distance rho, angle theta, heading psi, own speed, intruder speed) on the normalised
ACAS box, outputs 5 advisory *costs* (clear of conflict COC, weak left/right, strong
left/right; the advisory is the argmin). 4 networks differ in the function's
parameters (like ACAS's tau / previous-advisory networks).

Each network is written two ways, with the same weights and bit-identical outputs:
  * ``plain``: ``r = (x - mu) / sd`` then the Linear/ReLU stack;
  * ``cat``: the same, then ``r = torch.cat([r[:, :1], r[:, 1:]], 1)`` (slicing and
    ``torch.cat``, as ordinary model code does) before the stack.

16 instances: VNN-COMP 2021 ACAS properties 1-4 (their normalised input boxes) on each
network. Properties (the spec must hold on the whole box):
  * P1: COC cost <= t. t is set per network from a dense sample of the box (above the
    sampled max on three networks, a hard proof; just below it on one, a falsification).
    Project: ``Linear(C=[[1,0,0,0,0]], d=[-t])``. Unsafe region: ``y0 >= t``.
  * P2: COC cost is not the maximal one. Project: ``PredictionNotIn([0])``.
    Unsafe: ``y0 >= y_j`` for every j (one AND clause of 4 rows).
  * P3, P4: COC cost is not the minimal one (the network does advise). The instance's
    model outputs ``-cost`` (last layer negated: exact in floating point), so this is
    again ``PredictionNotIn([0])``; unsafe: ``-y0 >= -y_j`` for every j.
  ``Linear(C, d)`` (every row of ``C y + d <= 0``) is a conjunction, so it expresses P1;
  P2-P4 hold on a disjunction (some other output beats COC), which is what
  ``PredictionNotIn`` is.

Columns, from one run: the project, ``verify_box(model, lower, upper, spec,
engine="auto", budget_s=--timeout)`` on both model variants; alpha-beta-CROWN
(``ABCrownSolver`` from its Python API, config as its exp_configs/vnncomp21/acasxu.yaml:
input split, CROWN bounds, clip-n-verify; device cpu, ``attack.pgd_restarts`` lowered to
``--pgd-restarts``, ``bab.timeout`` = --timeout) under the anchor venv on the variants of
``--abcrown-variants``, all instances in one worker process. Every counterexample either
side reports is re-checked here on the model (inside the box, and the property violated
in float32); a 'verified' on one side against a confirmed counterexample on the other
is a WRONG answer and is flagged.

    python bench/bench_acas.py [--timeout 5] [--instances 0-15] [--abcrown-variants cat]
                               [--pgd-restarts 50] [--no-abcrown] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent

# VNN-COMP 2021 ACAS Xu input boxes (normalised inputs), properties 1-4.
DOMAIN_LO = [-0.3284228772, -0.5, -0.5, -0.5, -0.5]
DOMAIN_HI = [0.6798577687, 0.5, 0.5, 0.5, 0.5]
BOXES = {
    1: ([0.6, -0.5, -0.5, 0.45, -0.5], [0.6798577687, 0.5, 0.5, 0.5, -0.45]),
    2: ([0.6, -0.5, -0.5, 0.45, -0.5], [0.6798577687, 0.5, 0.5, 0.5, -0.45]),
    3: ([-0.3035311561, -0.0095492966, 0.4933803236, 0.3, 0.3],
        [-0.2985528119, 0.0095492966, 0.5, 0.5, 0.5]),
    4: ([-0.3035311561, -0.0095492966, 0.0, 0.3181818182, 0.0833333333],
        [-0.2985528119, 0.0095492966, 0.0, 0.5, 0.1666666667]),
}
N_NETS = 4
WIDTH, DEPTH = 50, 6
COC_GAIN = [0.5, 0.3, 0.3, 0.2]  # per network: how much the COC cost rises with the threat
COC_OFFSET = [0.6, 0.75, 0.775, 0.9]  # per network: COC cost offset
P1_GAP = {0: 0.08, 1: 0.03, 2: 0.01, 3: -0.01}  # P1 threshold: sampled max of y0 + gap * its range


# ----------------------------------------------------------------------------------
# The only place that would touch project internals: none are needed here (public API).
def project_verify(model, lower, upper, spec, budget_s):
    from pytest_latentaudit import verify_box

    return verify_box(model, lower, upper, spec, engine="auto", budget_s=budget_s)
# ----------------------------------------------------------------------------------


class AcasNet(nn.Module):
    """``(x - mu) / sd`` then 6 x 50 ReLU; ``variant="cat"`` adds slicing and torch.cat."""

    def __init__(self, variant: str = "plain"):
        super().__init__()
        assert variant in ("plain", "cat")
        self.variant = variant
        lo, hi = torch.tensor(DOMAIN_LO), torch.tensor(DOMAIN_HI)
        self.register_buffer("mu", (lo + hi) / 2)
        self.register_buffer("sd", (hi - lo) / 2)
        layers, i = [], 5
        for _ in range(DEPTH):
            layers += [nn.Linear(i, WIDTH), nn.ReLU()]
            i = WIDTH
        layers.append(nn.Linear(i, 5))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        r = (x - self.mu) / self.sd
        if self.variant == "cat":
            r = torch.cat([r[:, :1], r[:, 1:]], 1)
        return self.net(r)


def target(x, s: int):
    """The synthetic ACAS-like cost function of network ``s`` (smooth, 5 -> 5)."""
    g = torch.Generator().manual_seed(1000 + s)
    lo, hi = torch.tensor(DOMAIN_LO), torch.tensor(DOMAIN_HI)
    u = (x - (lo + hi) / 2) / ((hi - lo) / 2)  # [-1, 1]^5
    rho = (u[:, 0] + 1) / 2
    theta, psi = math.pi * u[:, 1], math.pi * u[:, 2]
    v_own, v_int = u[:, 3], u[:, 4]
    tau = 2.0 + 1.5 * s / (N_NETS - 1)  # how fast the threat decays with distance
    closing = 1 + 0.3 * (v_int - v_own * torch.cos(psi))
    threat = torch.exp(-tau * rho) * (1 + 0.5 * torch.cos(theta)) * (1 + 0.3 * torch.cos(psi - theta)) * closing
    side = torch.sin(theta)
    y = torch.stack([
        COC_GAIN[s] * 2.0 * threat + 0.15 * v_int - 0.1 * v_own + COC_OFFSET[s],
        threat * (1 - 0.6 * side) + 0.3,
        threat * (1 + 0.6 * side) + 0.3,
        0.6 * threat * (1 - 0.9 * side) + 0.6,
        0.6 * threat * (1 + 0.9 * side) + 0.6,
    ], 1)
    # per-network wiggles and offsets
    W = torch.randn(5, 5, generator=g) * 1.5
    ph = torch.rand(5, generator=g) * 2 * math.pi
    a = torch.rand(5, generator=g) * 0.15
    return y + a * torch.sin(u @ W.T + ph)


def sample_box(lo, hi, n, g):
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    return lo + (hi - lo) * torch.rand(n, lo.numel(), generator=g)


def train(s: int, steps: int = 1500):
    """Train network ``s`` (deterministic: fixed seeds, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(s)
        model = AcasNet("plain")
        g = torch.Generator().manual_seed(s)
        # the whole domain, plus extra samples in the property boxes (where it matters)
        parts = [sample_box(DOMAIN_LO, DOMAIN_HI, 16384, g)]
        parts += [sample_box(*BOXES[p], 2048, g) for p in (1, 3, 4)]
        X = torch.cat(parts)
        Y = target(X, s)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            idx = torch.randint(0, X.shape[0], (512,), generator=g)
            loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            mse = float(((model(X) - Y) ** 2).mean())
    finally:
        torch.set_num_threads(threads)
    return model.eval(), mse


def negated(model):
    """The same network with outputs ``-y`` (last Linear negated: exact in floating point)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.net[-1].weight.neg_()
        m.net[-1].bias.neg_()
    return m


def with_variant(model, variant):
    m = AcasNet(variant)
    m.load_state_dict(model.state_dict())
    return m.eval()


def make_instances(nets):
    """16 instances: dicts with net, prop, negate flag, box, threshold and the unsafe region."""
    out = []
    g = torch.Generator().manual_seed(7)
    for s, model in enumerate(nets):
        for p in (1, 2, 3, 4):
            lo, hi = (torch.tensor(v, dtype=torch.float32) for v in BOXES[p])
            inst = {"id": len(out), "net": s, "prop": p, "negate": p in (3, 4), "lower": lo, "upper": hi}
            if p == 1:
                with torch.no_grad():
                    y0 = model(sample_box(lo, hi, 200_000, g))[:, 0]
                t = float(y0.max() + P1_GAP[s] * (y0.max() - y0.min()))
                inst["t"] = t
                inst["C_unsafe"] = torch.tensor([[-1.0, 0, 0, 0, 0]])
                inst["d_unsafe"] = torch.tensor([-t])
            else:
                C = torch.zeros(4, 5)
                C[:, 0] = -1.0
                C[torch.arange(4), torch.arange(1, 5)] = 1.0  # y_j - y_0 <= 0: COC is (one of) the max
                inst["C_unsafe"], inst["d_unsafe"] = C, torch.zeros(4)
            out.append(inst)
    return out


def project_spec(inst):
    from pytest_latentaudit import Linear, PredictionNotIn

    if inst["prop"] == 1:
        return Linear([[1.0, 0, 0, 0, 0]], [-inst["t"]])
    return PredictionNotIn([0])


def violation(inst, y):
    """Margin of the unsafe region at outputs ``y`` [n, 5]: >= 0 means the property fails
    (P1: y0 - t > 0; P2-4: COC is a maximum, ties included, as PredictionNotIn counts them)."""
    if inst["prop"] == 1:
        return y[:, 0] - inst["t"]
    return y[:, 0] - y[:, 1:].max(1).values


def confirm(model, inst, x):
    """Is ``x`` a real counterexample (in the box, property violated in float32)?
    Returns (confirmed, float32 margin, float64 margin)."""
    x = torch.as_tensor(x, dtype=torch.float32).reshape(1, 5)
    inside = bool(((x >= inst["lower"]) & (x <= inst["upper"])).all())
    with torch.no_grad():
        m32 = float(violation(inst, model(x))[0])
        m64 = float(violation(inst, copy.deepcopy(model).double()(x.double()))[0])
    viol = m32 > 0 if inst["prop"] == 1 else m32 >= 0
    return inside and viol, m32, m64


# -------------------------------------------------------------------- abcrown worker
def abcrown_worker(inp: str, out: str):
    """Under the anchor venv, cwd alpha-beta-CROWN's complete_verifier/."""
    import yaml
    from api import ABCrownSolver, ConfigBuilder, VerificationSpec

    torch.set_num_threads(1)
    job = torch.load(inp, weights_only=False)
    with open("exp_configs/vnncomp21/acasxu.yaml") as fh:
        base = yaml.safe_load(fh)
    base["general"] = {k: v for k, v in base.get("general", {}).items() if k not in ("root_path", "csv_name")}
    results = []
    for run in job["runs"]:
        model = AcasNet(run["variant"])
        model.load_state_dict(run["state_dict"])
        model.eval()
        cex_path = str(Path(out).parent / f"cex_{run['key']}.txt")
        Path(cex_path).unlink(missing_ok=True)
        cfg = ConfigBuilder.from_defaults().update(base).set(
            general__device="cpu", general__save_adv_example=True, general__show_adv_example=False,
            attack__cex_path=cex_path, attack__pgd_restarts=job["pgd_restarts"], bab__timeout=job["timeout"])
        spec = VerificationSpec.build_spec(lower=run["lower"][None], upper=run["upper"][None],
                                           clauses=[[(run["C_unsafe"], run["d_unsafe"])]])
        t = time.perf_counter()
        try:
            res = ABCrownSolver(spec, model, config=cfg).solve()
            status = res.status
        except Exception as exc:  # report, go on
            status = f"error: {type(exc).__name__}: {str(exc)[:80]}"
        wall = time.perf_counter() - t
        cex = None
        if Path(cex_path).exists():
            vals = re.findall(r"\(X_(\d+)\s+([-+0-9.eE]+)\)", Path(cex_path).read_text())
            cex = torch.tensor([float(v) for _, v in sorted(vals, key=lambda a: int(a[0]))], dtype=torch.float32)
        results.append({"key": run["key"], "status": status, "s": wall, "cex": cex})
        print(f"abcrown {run['key']}: {status} {wall:.2f}s", flush=True)
    torch.save({"results": results}, out)


def abcrown_kind(status: str) -> str:
    if status == "safe" or status.startswith("safe"):
        return "verified"
    if status.startswith("unsafe"):
        return "falsified"
    if status.startswith("error"):
        return "error"
    return "unknown"


def parse_range(s: str, n: int):
    ids = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            ids += list(range(int(a), int(b) + 1))
        elif part:
            ids.append(int(part))
    return [i for i in ids if 0 <= i < n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=5.0, help="per-instance budget (both sides)")
    ap.add_argument("--instances", default="0-15")
    ap.add_argument("--variants", default="plain,cat", help="model variants for the project")
    ap.add_argument("--abcrown-variants", default="cat", help="model variants for alpha-beta-CROWN")
    ap.add_argument("--pgd-restarts", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1500, help="training steps per network")
    ap.add_argument("--no-abcrown", action="store_true")
    ap.add_argument("--anchor-log", help="keep the alpha-beta-CROWN worker's output in this file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: instances 0,5,10,15 (P1-P4), timeout 2 s (unless given)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return abcrown_worker(*args.worker)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        if "--instances" not in given:
            args.instances = "0,5,10,15"
        if "--timeout" not in given:
            args.timeout = 2.0
    import anchors

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    trained = [train(s, args.steps) for s in range(N_NETS)]
    t_train = time.perf_counter() - t
    nets = [m for m, _ in trained]
    insts = make_instances(nets)
    chosen = [insts[i] for i in parse_range(args.instances, len(insts))]
    variants = [v for v in args.variants.split(",") if v]
    ab_variants = [] if args.no_abcrown else [v for v in args.abcrown_variants.split(",") if v]

    def model_for(inst, variant):
        m = nets[inst["net"]]
        return with_variant(negated(m) if inst["negate"] else m, variant)

    # warm-up: tracing and first-call costs stay out of the first instance's time
    project_verify(model_for(chosen[0], "plain"), chosen[0]["lower"][None], chosen[0]["upper"][None],
                   project_spec(chosen[0]), 0.5)
    rows = {i["id"]: {"inst": i} for i in chosen}
    for inst in chosen:
        for v in variants:
            m = model_for(inst, v)
            r = project_verify(m, inst["lower"][None], inst["upper"][None], project_spec(inst), args.timeout)
            cex = r.counterexamples[0]
            rows[inst["id"]][f"p_{v}"] = {"kind": r.status[0], "s": r.seconds, "rung": r.rung[0],
                                          "cex": None if cex is None else cex.reshape(-1).cpu()}
            print(f"  project {v} #{inst['id']} P{inst['prop']} net{inst['net']}: {r.status[0]} "
                  f"{r.seconds:.2f}s ({r.rung[0]})", file=sys.stderr, flush=True)

    ab_note = ""
    if ab_variants:
        if anchors.anchor_python() is None or anchors.abcrown_dir() is None:
            ab_note = anchors.missing_message("alpha-beta-CROWN")
            ab_variants = []
        else:
            with tempfile.TemporaryDirectory(prefix="bench_acas_") as tmp:
                runs = []
                for inst in chosen:
                    for v in ab_variants:
                        m = model_for(inst, v)
                        runs.append({"key": f"{inst['id']}_{v}", "variant": v, "state_dict": m.state_dict(),
                                     "lower": inst["lower"], "upper": inst["upper"],
                                     "C_unsafe": inst["C_unsafe"], "d_unsafe": inst["d_unsafe"]})
                inp, out = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
                log = Path(args.anchor_log) if args.anchor_log else Path(tmp) / "worker.log"
                torch.save({"runs": runs, "timeout": args.timeout, "pgd_restarts": args.pgd_restarts}, inp)
                t = time.perf_counter()
                rc = anchors.run_worker(Path(__file__).resolve(), ["--worker", str(inp), str(out)],
                                        abcrown=True, log=log)
                wall = time.perf_counter() - t
                if rc == 0:
                    for r in torch.load(out, weights_only=False)["results"]:
                        i, v = r["key"].split("_")
                        rows[int(i)][f"a_{v}"] = {"kind": abcrown_kind(r["status"]), "s": r["s"],
                                                  "rung": r["status"], "cex": r["cex"]}
                    ab_note = (f"alpha-beta-CROWN (anchor venv): one worker, {wall:.0f}s wall including "
                               f"start-up; config acasxu.yaml, cpu, pgd_restarts={args.pgd_restarts}")
                else:
                    ab_note = f"alpha-beta-CROWN worker failed (rc={rc}); see above"
                    ab_variants = []

    # cross-check every counterexample on the model, then look for contradictions
    cols = [f"p_{v}" for v in variants] + [f"a_{v}" for v in ab_variants]
    wrong = []
    for row in rows.values():
        inst = row["inst"]
        confirmed_cex = []
        for c in cols:
            e = row.get(c)
            if e is None:
                continue
            e["confirmed"] = None
            if e["kind"] == "falsified":
                if e["cex"] is None:
                    e["confirmed"] = False
                else:
                    v = c.split("_")[1]
                    ok, m32, m64 = confirm(model_for(inst, v), inst, e["cex"])
                    e["confirmed"], e["m32"], e["m64"] = ok, m32, m64
                if e["confirmed"]:
                    confirmed_cex.append(c)
                else:
                    wrong.append((inst["id"], c, "reported falsified but its counterexample does not check"))
        for c in cols:
            e = row.get(c)
            if e is not None and e["kind"] == "verified" and confirmed_cex:
                wrong.append((inst["id"], c, f"verified, but {','.join(confirmed_cex)} has a confirmed counterexample"))

    print(f"\nACAS-like family: {N_NETS} nets 5-{'x'.join([str(WIDTH)] * DEPTH)}-5 ReLU, trained {t_train:.1f}s "
          f"total (final MSE {', '.join(f'{mse:.4f}' for _, mse in trained)}); per-instance timeout "
          f"{args.timeout}s; threads={torch.get_num_threads()}, torch {torch.__version__}")
    if ab_note:
        print(ab_note)
    names = {"p": "project", "a": "abcrown"}
    hdr = f"{'#':>3s} {'prop':>4s} {'net':>3s} {'t':>7s} | " + " | ".join(
        f"{names[c[0]] + ' ' + c[2:]:>18s}" for c in cols)
    print(hdr)
    print("-" * len(hdr))
    short = {"verified": "verified", "falsified": "falsified", "unknown": "unknown", "error": "ERROR"}
    for row in rows.values():
        inst = row["inst"]
        t_s = f"{inst['t']:7.3f}" if "t" in inst else f"{'':>7s}"
        cells = []
        for c in cols:
            e = row.get(c)
            if e is None:
                cells.append(f"{'-':>18s}")
                continue
            flag = "" if e.get("confirmed") in (None, True) else "!"
            cells.append(f"{short[e['kind']] + flag:>10s} {e['s']:6.2f}s")
        print(f"{inst['id']:3d} {'P' + str(inst['prop']):>4s} {inst['net']:3d} {t_s} | " + " | ".join(cells))
    print("-" * len(hdr))
    for row in rows.values():  # how each side decided, and the re-checked counterexample margins
        parts = []
        for c in cols:
            e = row.get(c)
            if e is None:
                continue
            extra = f" cex margin f32 {e['m32']:+.2e} f64 {e['m64']:+.2e}" if "m32" in e else ""
            if e["kind"] == "falsified" and not e.get("confirmed"):
                extra += " NOT CONFIRMED"
            parts.append(f"{names[c[0]][0]}-{c[2:]}: {e['rung'] or e['kind']}{extra}")
        print(f"    #{row['inst']['id']:<3d} " + "; ".join(parts))
    tot = []
    for c in cols:
        es = [row[c] for row in rows.values() if c in row]
        dec = sum(e["kind"] in ("verified", "falsified") for e in es)
        ver = sum(e["kind"] == "verified" for e in es)
        secs = sum(e["s"] for e in es)
        tot.append(f"{names[c[0]]} {c[2:]}: decided {dec}/{len(es)} ({ver} verified, {dec - ver} falsified), "
                   f"{secs:.1f}s total")
    print("\n".join(tot))
    p_cols = [c for c in cols if c.startswith("p_")]
    a_cols = [c for c in cols if c.startswith("a_")]
    if p_cols and a_cols:
        for pc in p_cols:
            for ac in a_cols:
                both = [r for r in rows.values() if pc in r and ac in r]
                tp = sum(r[pc]["s"] for r in both)
                ta = sum(r[ac]["s"] for r in both)
                print(f"time ratio {names['p']} {pc[2:]} / abcrown {ac[2:]}: {tp / ta:.2f} "
                      f"(over {len(both)} instances)")
    if wrong:
        print("\n" + "!" * 72)
        print(f"!!! WRONG ANSWERS: {len(wrong)}")
        for i, c, why in wrong:
            print(f"!!!   instance #{i} {names[c[0]]} {c[2:]}: {why}")
        print("!" * 72)
    else:
        print("wrong answers: 0 (every reported counterexample re-checked on the model; no 'verified' "
              "against a confirmed counterexample)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
