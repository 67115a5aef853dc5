"""Reproduce the *shape* of AuditAI's tables 1, 4 and 5 on the digits example.

    python examples/digits/reproduce_tables.py            # ~5 minutes on one CPU thread
    python examples/digits/reproduce_tables.py --seeds 1  # shipped heads only (~2 minutes)

AuditAI reports the verified error (1 - verified accuracy over held-out seeds) of each
unit test for eps from 25% to 150-200% of a nominal eps, for heads trained with
CROWN-IBP (tables 1, 4, 5: "training the classifier with the same eps"; table 6 / A.5:
one head trained at the nominal eps, verified at every eps). Here, per direction
(thickness, slant):

* table A (tables 4/5 and 6): the nominal head and the certified head trained at the
  nominal eps, verified at every eps; mean +- standard deviation over ``--seeds``
  training seeds (seed 0 are the shipped weights; the VAE and directions are fixed);
* table B (table 1): a certified head trained at each eps, verified at that eps;
* table C: the same heads at the nominal eps under each proof engine (IBP alone, linear
  bounds, and the default ladder, which for a 1-d direction ends in exact segment
  certification): how much the bound matters.

Verified accuracy comes from ``pytest_latentaudit.audit`` with ``Accuracy`` on all 450
test digits (misclassified ones count as errors). Writes docs/digits-results.md and
docs/img/digits-verified-error.png.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import train as T  # noqa: E402
from digits_data import ATTRIBUTES, load  # noqa: E402
from digits_models import direction_objects, load as load_weights  # noqa: E402

from pytest_latentaudit import Accuracy, audit  # noqa: E402
from pytest_latentaudit.toolkit import validity  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DOC = ROOT / "docs" / "digits-results.md"
PLOT = ROOT / "docs" / "img" / "digits-verified-error.png"


def log(msg):
    print(msg, flush=True)


def verified_error(head, z, y, direction, eps, engine="auto"):
    r = audit(head, (z, y), direction=direction, eps=eps, spec=Accuracy(at_least=0.0), engine=engine, budget_s=120)
    return 1.0 - r.verified_fraction, r.counts


def fmt(vals, digits=3):
    vals = np.asarray(vals, dtype=float)
    if vals.size == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds for table A (default 3; 1 = shipped only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-table-b", action="store_true", help="skip training one certified head per eps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    w = load_weights()
    eps0 = w["eps"]
    x_tr, y_tr = load("train")
    x_te, y_te = load("test")
    with torch.no_grad():
        z_tr, z_te = w["encoder"](x_tr), w["encoder"](x_te)
    dirs = direction_objects(w["directions"])
    eps_list = [f * eps0 for f in FRACTIONS]

    # ---------------------------------------------------------------- heads (table A)
    heads = {"nominal": [w["heads"]["nominal"]], "certified": [w["heads"]["certified"]]}
    train_time = {"nominal": [w["meta"]["time"]["nominal"]], "certified": [w["meta"]["time"]["certified"]]}
    for seed in range(1, args.seeds):
        for kind in ("nominal", "certified"):
            t0 = time.time()
            h = T.train_head(z_tr, y_tr, kind, eps=eps0, directions=dirs, seed=seed, quiet=True)
            train_time[kind].append(time.time() - t0)
            heads[kind].append(h)
            log(f"trained {kind} head, seed {seed}: {train_time[kind][-1]:.0f} s, "
                f"test accuracy {T.accuracy(h, z_te, y_te):.1%}")
    clean = {k: [T.accuracy(h, z_te, y_te) for h in hs] for k, hs in heads.items()}

    table_a = {}  # (direction, kind) -> [[err per seed] per eps]
    for dname, d in dirs.items():
        for kind, hs in heads.items():
            rows = []
            for e in eps_list:
                rows.append([verified_error(h, z_te, y_te, d, e)[0] for h in hs])
            table_a[(dname, kind)] = rows
            log(f"table A {dname:9s} {kind:9s}: " + "  ".join(fmt(r) for r in rows))

    # ------------------------------------------------------------------------ table B
    table_b, b_acc, b_time = {}, {}, {}
    if not args.no_table_b:
        for f, e in zip(FRACTIONS, eps_list):
            if f == 1.0:
                h, secs = heads["certified"][0], train_time["certified"][0]
            else:
                t0 = time.time()
                h = T.train_head(z_tr, y_tr, "certified", eps=e, directions=dirs, seed=0, quiet=True)
                secs = time.time() - t0
            b_acc[f], b_time[f] = T.accuracy(h, z_te, y_te), secs
            for dname, d in dirs.items():
                table_b[(dname, f)] = verified_error(h, z_te, y_te, d, e)[0]
            log(f"table B eps {e:.2f} ({f:.0%}): trained {secs:.0f} s, accuracy {b_acc[f]:.1%}, verified error "
                + ", ".join(f"{dn} {table_b[(dn, f)]:.3f}" for dn in dirs))

    # ------------------------------------------------------------------------ table C
    table_c = {}
    engine_time = {}
    for dname, d in dirs.items():
        for kind in ("nominal", "certified"):
            for engine in ("ibp", "linear", "auto"):
                t0 = time.time()
                table_c[(dname, kind, engine)] = verified_error(heads[kind][0], z_te, y_te, d, eps0, engine)[0]
                engine_time[(dname, kind, engine)] = time.time() - t0

    # ------------------------------------------------------------- realism / ranges
    realism, ranges, indep = {}, {}, {}
    for dname, d in dirs.items():
        realism[dname] = validity.realism_limit(z_tr, d, z_te, method="knn", warn=False)
        indep[dname] = validity.check_independence(z_te, d, eps0, ATTRIBUTES, decoder=w["decoder"], target=dname,
                                                   warn=False)
        s = (z_te @ d.basis(z_te.shape[1])[:, 0]).numpy()
        ranges[dname] = (float(s.mean() - eps0 - s.std()), float(s.mean() + eps0 + s.std()))

    total = time.time() - t_start
    write_doc(args, w, eps0, clean, train_time, table_a, table_b, b_acc, b_time, table_c, engine_time, realism,
              indep, ranges, total)
    plot(eps0, table_a, table_b, realism, clean)
    log(f"wrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)} in {total:.0f} s")


def write_doc(args, w, eps0, clean, train_time, table_a, table_b, b_acc, b_time, table_c, engine_time, realism,
              indep, ranges, total):
    meta = w["meta"]
    dnames = list(realism)
    head_cells = [f"ε = {f * eps0:g} ({f:.0%})" for f in FRACTIONS]

    def mark(dname, f):
        return "†" if f * eps0 > realism[dname]["eps"] + 1e-9 else ""

    L = [
        "# Digits: verified error against eps, nominal vs certified training",
        "",
        "The shape of AuditAI's tables 1, 4 and 5 (Bharadhwaj et al., ICLR 2022) on scikit-learn's",
        "handwritten digits, produced by `python examples/digits/reproduce_tables.py`"
        f"{'' if args.seeds == 3 else f' --seeds {args.seeds}'} in {total / 60:.1f} minutes"
        f" ({args.threads} torch thread(s), torch {torch.__version__}, {platform.machine()}, a shared 2-core CPU).",
        "",
        "Setup (see `examples/digits/README.md`): a VAE with an 8-d latent space, two semantic directions",
        "found by within-class linear probes of attributes measured on the images (`thickness` = ink mass,",
        "`slant` = moment shear; orthogonalised), and two latent heads with the same architecture",
        "(8-64-64-64-10 ReLU), initialisation and optimiser (Adam, lr 5e-4, 100 epochs): **nominal**",
        "(cross-entropy) and **certified** (`training.certified_loss`, CROWN-IBP over both directions at",
        f"the nominal eps = {eps0:g}; 5 warm-up epochs, then eps and kappa ramped over 40 epochs).",
        "",
        "**Verified error** = 1 - verified accuracy over the 450 held-out test digits (misclassified",
        "digits count as errors), from `pytest_latentaudit.audit(head, (z, labels), direction, eps,",
        "Accuracy(...))`. For a 1-d direction and a ReLU head the default engine ends in exact segment",
        "certification, so every seed is decided (0 unknown) and the verified error is the true error",
        "on the latent segment, not an artefact of loose bounds (table C shows what cheaper bounds say).",
        "Lower is better.",
        "",
        "## Clean accuracy and training time",
        "",
        f"| head | test accuracy (mean ± std over {args.seeds} seed(s)) | training time per head |",
        "|---|---|---|",
    ]
    for kind in ("nominal", "certified"):
        L.append(f"| {kind} | {fmt(np.array(clean[kind]) * 100, 1)} % | {fmt(train_time[kind], 0)} s |")
    L += [
        "",
        f"VAE training: {meta['time']['vae']:.0f} s. Times are wall-clock seconds on this machine (CPU only);"
        " the certified head's",
        "extra cost is one CROWN-IBP bound per direction per batch.",
        "",
        f"## Table A: one head per training recipe, verified at every eps (mean ± std over {args.seeds} seed(s))",
        "",
        "As AuditAI's tables 4 and 5 (their nominal eps marked 100%) and table 6 (a head certified at one",
        f"eps, verified at all). † marks radii beyond the direction's realism limit (below): there more",
        "than 10% of the boxes reach latent codes unlike the data, so a spec sheet must not claim them.",
        "",
        "| direction | training | " + " | ".join(head_cells) + " |",
        "|---|---|" + "---|" * len(FRACTIONS),
    ]
    for dname in dnames:
        for kind in ("nominal", "certified"):
            cells = [fmt(v) + mark(dname, f) for v, f in zip(table_a[(dname, kind)], FRACTIONS)]
            L.append(f"| {dname} | {kind} | " + " | ".join(cells) + " |")
    if table_b:
        L += [
            "",
            "## Table B: a certified head trained at each eps, verified at that eps (seed 0)",
            "",
            "As AuditAI's table 1 (\"training the classifier with the same eps\").",
            "",
            "| | " + " | ".join(head_cells) + " |",
            "|---|" + "---|" * len(FRACTIONS),
        ]
        for dname in dnames:
            L.append(f"| {dname} | " + " | ".join(f"{table_b[(dname, f)]:.3f}{mark(dname, f)}" for f in FRACTIONS)
                     + " |")
        L.append("| clean accuracy | " + " | ".join(f"{b_acc[f]:.1%}" for f in FRACTIONS) + " |")
        L.append("| training time | " + " | ".join(f"{b_time[f]:.0f} s" for f in FRACTIONS) + " |")
    L += [
        "",
        f"## Table C: the proof engine matters (shipped heads, eps = {eps0:g})",
        "",
        "| direction | head | IBP only | linear bounds | default ladder (exact 1-d) |",
        "|---|---|---|---|---|",
    ]
    for dname in dnames:
        for kind in ("nominal", "certified"):
            cells = [f"{table_c[(dname, kind, e)]:.3f} ({engine_time[(dname, kind, e)]:.1f} s)"
                     for e in ("ibp", "linear", "auto")]
            L.append(f"| {dname} | {kind} | " + " | ".join(cells) + " |")
    L += [
        "",
        "## Validity of the directions and the deployment range",
        "",
        "| direction | realism limit (kNN, 10% of boxes outside) | own attribute change at ε = "
        f"{eps0:g} (std) | other attribute change (std) | AuditAI range of the direction coordinate |",
        "|---|---|---|---|---|",
    ]
    for dname in dnames:
        other = [n for n in indep[dname]["probes"] if n != dname][0]
        lo, hi = ranges[dname]
        L.append(f"| {dname} | {realism[dname]['eps']:.2f} | {indep[dname]['probes'][dname]['effect']:.2f} |"
                 f" {other}: {indep[dname]['probes'][other]['effect']:.2f} | [{lo:.2f}, {hi:.2f}] |")
    L += [
        "",
        "The range is AuditAI's deployment check `[mean - eps - std, mean + eps + std]` of `v . z` over the",
        "seeds: an input whose code projects outside it is outside the spec sheet's claims.",
        "",
        "## Reading the numbers",
        "",
    ]
    L += observations(eps0, table_a, table_b, table_c, clean, realism, dnames)
    L += ["", "![verified error against eps](img/digits-verified-error.png)", "",
          "The same heads as pytest tests (`pytest examples/digits -o testpaths=`): `examples/digits/test_digits.py`",
          "proves the certified head's slant and style specs and records the nominal head's violations as",
          "`xfail(strict=True)`.", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(L))


def observations(eps0, table_a, table_b, table_c, clean, realism, dnames):
    i100, i200 = FRACTIONS.index(1.0), FRACTIONS.index(2.0)
    out = []
    for dname in dnames:
        n, c = table_a[(dname, "nominal")], table_a[(dname, "certified")]
        out.append(f"- **{dname}**: verified error grows with eps for both heads; at 100% (eps = {eps0:g}) nominal"
                   f" {np.mean(n[i100]):.3f} vs certified {np.mean(c[i100]):.3f}, at 200% {np.mean(n[i200]):.3f}"
                   f" vs {np.mean(c[i200]):.3f}.")
    out.append(f"- Clean accuracy: nominal {np.mean(clean['nominal']):.1%}, certified {np.mean(clean['certified']):.1%}"
               " (the verified error at 25% is close to the clean error: most mistakes are misclassified seeds).")
    out.append("- Unlike AuditAI's heads, the nominal head here is already fairly robust along these within-class"
               " directions at small eps; the certified head's advantage grows with eps, and it keeps the curve"
               " flat up to the nominal eps it was trained for.")
    ibp = [table_c[(d, "certified", "ibp")] for d in dnames]
    span = f"{min(ibp):.2f}" if abs(max(ibp) - min(ibp)) < 0.005 else f"{min(ibp):.2f}-{max(ibp):.2f}"
    out.append(f"- IBP alone proves almost nothing at eps = {eps0:g} (verified error {span} for"
               " the certified head, trained with CROWN-IBP, whose final bound is the linear CROWN pass): the"
               " bound used for training and the one used for proofs should match; forward-mode linear bounds"
               " are nearly exact for these 1-d boxes.")
    out.append("- Radii marked † exceed the realism limit; AuditAI's human study likewise found generated images"
               " realistic only up to a fraction of their nominal latent range.")
    return out


def plot(eps0, table_a, table_b, realism, clean):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dnames = list(realism)
    x = np.array(FRACTIONS) * 100
    fig, axes = plt.subplots(1, len(dnames), figsize=(5.2 * len(dnames), 3.8), sharey=True)
    for ax, dname in zip(np.atleast_1d(axes), dnames):
        for kind, color in (("nominal", "tab:red"), ("certified", "tab:blue")):
            vals = np.array(table_a[(dname, kind)])
            m = vals.mean(1)
            ax.plot(x, m, "o-", color=color, label=f"{kind} (trained at 100%)")
            if vals.shape[1] > 1:
                s = vals.std(1, ddof=1)
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
        if table_b:
            ax.plot(x, [table_b[(dname, f)] for f in FRACTIONS], "s--", color="tab:green",
                    label="certified, trained at each eps")
        ax.axhline(1 - np.mean(clean["nominal"]), color="gray", lw=0.8, ls=":", label="nominal clean error")
        lim = realism[dname]["eps"] / eps0 * 100
        ax.axvline(lim, color="black", lw=0.8, ls="--")
        ax.text(lim, ax.get_ylim()[1] * 0.95 if ax.get_ylim()[1] > 0 else 0.2, " realism limit", fontsize=8,
                va="top")
        ax.set_title(f"{dname} (nominal eps = {eps0:g})")
        ax.set_xlabel("eps, % of nominal")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("verified error (1 - verified accuracy)")
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


if __name__ == "__main__":
    main()
