"""Measure the deployment guards on the digits example: do they tell error-inducing corner
cases from clean digits?

    python examples/digits/guard_eval.py              # ~1 minute on one CPU thread; prints the tables
    python examples/digits/guard_eval.py --write-doc  # also rewrites the results in docs/guard.md
                                                      # and docs/img/digits-guard-roc.png

What it does (Deep Validation, Wu 2021 ch. 3, and AuditAI section 2.4 / 4.5, at 8x8 scale):

1. Data: the example's fixed split (1347 training, 450 test digits). The 450 test digits are
   split in half (stratified, seed 0): *calibration* (225, the held-out clean data that sets the
   threshold) and *evaluation* (225, the clean inputs of the ROC curves).
2. Guards, for each shipped head (certified and nominal):
   * the range guard: AuditAI's verified range per direction, computed the way the plugin
     records it (``deploy.latent_ranges`` over the 450 test seeds at the radius of the proved
     certified tests: thickness 1.0, slant 0.9, style 0.5), or read from ``--sheet`` (a spec
     sheet of ``pytest examples/digits``); its continuous score is ``deploy.range_score``;
   * the Deep Validation guard (``guard.fit_guard``) on the correctly classified training
     digits: one OneClassSVM (nu 0.1, gamma "scale") per (layer, predicted class) over the
     latent code, the encoder's two ReLU layers and the head's three ReLU layers, threshold at
     a 5% false alarm on the calibration half; and the same over the latent code and head
     layers only (what a guard can do from latent codes alone);
   * both: flagged when either guard flags; continuous score ``max(range score,
     (d - median_cal) / (threshold - median_cal))`` (1 is each guard's own boundary).
3. Corner cases: metamorphic transformations of the correctly classified evaluation digits:
   brightness (+beta), contrast (x alpha, up and down), rotation, shear, scale (up and down),
   translation (four directions), every pair of those six, and the complement 1 - x. Strength
   by grid search: per digit and family the levels are tried from mild to strong and the
   mildest variant that changes the head's prediction away from the label is kept (at most
   one corner case per digit and family). Images are 8x8 in [0, 1]; geometric transforms are
   ``scipy.ndimage.affine_transform`` (bilinear, zero padding) about the image centre.
4. Reported: ROC-AUC (``sklearn.metrics.roc_auc_score``) of each guard's score for corner cases
   (positive) against the clean evaluation digits; the detection rate at the threshold and the
   false alarm on the clean evaluation digits; per family; a shifted deployment batch (each
   evaluation digit once clean and once per family at a random grid strength) with accuracy
   inside vs outside each guard (AuditAI's table 3); the pixel-space cross-check (section 4.5)
   of the seeds the certified head proves along thickness (1.0) and slant (0.9).
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from digits_data import load  # noqa: E402
from digits_models import direction_objects, load as load_weights  # noqa: E402

from pytest_latentaudit import Accuracy, audit  # noqa: E402
from pytest_latentaudit.sheet import deploy  # noqa: E402
from pytest_latentaudit.sheet import guard as G  # noqa: E402


DOC = ROOT / "docs" / "guard.md"
PLOT = ROOT / "docs" / "img" / "digits-guard-roc.png"
BEGIN, END = "<!-- guard_eval:begin -->", "<!-- guard_eval:end -->"
PROVED_EPS = {"thickness": 1.0, "slant": 0.9, "style": 0.5}  # the certified head's proved tests
CENTER = 3.5


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------ transformations
def _lin(a, b, n):
    return [float(v) for v in np.linspace(a, b, n)]


# family -> list of levels (mild to strong), each a list of variants (parameter dicts)
FAMILIES = {
    "brightness": [[{"beta": b}] for b in _lin(0.05, 0.6, 12)],
    "contrast": [[{"alpha": u}, {"alpha": d}] for u, d in zip(_lin(1.2, 4.0, 8), _lin(0.85, 0.15, 8))],
    "rotation": [[{"angle": a}, {"angle": -a}] for a in _lin(5, 60, 12)],
    "shear": [[{"shear": s}, {"shear": -s}] for s in _lin(0.05, 0.6, 12)],
    "scale": [[{"scale": u}, {"scale": d}] for u, d in zip(_lin(1.1, 1.8, 8), _lin(0.9, 0.5, 8))],
    "translation": [[{"shift": (0.0, t)}, {"shift": (0.0, -t)}, {"shift": (t, 0.0)}, {"shift": (-t, 0.0)}]
                    for t in _lin(0.25, 2.5, 10)],
}
PAIR_LEVELS = 4  # pairs: levels 2, 4, 6, 8 (capped) of each family, 4 x 4 combinations


def pair_family(a: str, b: str):
    la, lb = FAMILIES[a], FAMILIES[b]
    pick = lambda L: [L[min(len(L) - 1, 2 * i + 1)] for i in range(PAIR_LEVELS)]  # noqa: E731
    combos = sorted(itertools.product(range(PAIR_LEVELS), range(PAIR_LEVELS)), key=lambda ij: (sum(ij), ij))
    pa, pb = pick(la), pick(lb)
    return [[{**va, **vb} for va in pa[i] for vb in pb[j]] for i, j in combos]


def all_families():
    fams = dict(FAMILIES)
    for a, b in itertools.combinations(FAMILIES, 2):
        fams[f"{a}+{b}"] = pair_family(a, b)
    fams["complement"] = [[{"complement": True}]]
    return fams


def transform(x: np.ndarray, p: dict) -> np.ndarray:
    """``x`` [N, 8, 8] in [0, 1] -> transformed copy (geometry first, then intensity, clipped)."""
    from scipy import ndimage

    A = np.eye(2)
    t = np.zeros(2)
    if "angle" in p:
        th = np.deg2rad(p["angle"])
        A = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ A
    if "shear" in p:  # row r moves right by shear * (centre - r), as digits_data's augmentation
        A = np.array([[1.0, 0.0], [-p["shear"], 1.0]]) @ A
    if "scale" in p:
        A = p["scale"] * A
    if "shift" in p:
        t = np.asarray(p["shift"], dtype=float)
    out = x
    if not (np.allclose(A, np.eye(2)) and not t.any()):
        M = np.linalg.inv(A)
        c = np.array([CENTER, CENTER])
        off = c - M @ (c + t)
        M3 = np.eye(3)
        M3[1:, 1:] = M
        out = ndimage.affine_transform(x, M3, offset=np.r_[0.0, off], order=1, mode="constant", cval=0.0)
    if "alpha" in p:
        out = out * p["alpha"]
    if "beta" in p:
        out = out + p["beta"]
    if p.get("complement"):
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def describe(p: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def classify(encoder, head, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(encoder(torch.from_numpy(x[:, None]))).argmax(1).numpy()


def corner_cases(encoder, head, x: np.ndarray, y: np.ndarray, families):
    """Per family: the mildest error-inducing variant of each correctly classified digit."""
    ok = classify(encoder, head, x) == y
    out = {}
    for fam, levels in families.items():
        todo = np.flatnonzero(ok)
        found_idx, found_x, found_p, found_level = [], [], [], []
        for li, level in enumerate(levels):
            for p in level:
                if todo.size == 0:
                    break
                xt = transform(x[todo], p)
                wrong = classify(encoder, head, xt) != y[todo]
                found_idx += todo[wrong].tolist()
                found_x.append(xt[wrong])
                found_p += [p] * int(wrong.sum())
                found_level += [li + 1] * int(wrong.sum())
                todo = todo[~wrong]
        out[fam] = {"idx": np.asarray(found_idx, dtype=np.int64), "p": found_p, "n_seeds": int(ok.sum()),
                    "level": np.asarray(found_level), "n_levels": len(levels),
                    "x": np.concatenate(found_x) if found_x else np.zeros((0, 8, 8), np.float32)}
    return out


def shifted_batch(x: np.ndarray, families, rng, mild: float = 0.5):
    """Each digit once per family at a random strength from the milder ``mild`` fraction of the
    family's levels (variant uniform over them)."""
    xs, fam_of = [], []
    for fam, levels in families.items():
        variants = [p for level in levels[:max(1, int(round(len(levels) * mild)))] for p in level]
        pick = rng.integers(0, len(variants), size=len(x))
        for k in np.unique(pick):
            sel = np.flatnonzero(pick == k)
            xs.append((sel, transform(x[sel], variants[k])))
            fam_of += [fam] * len(sel)
    idx = np.concatenate([s for s, _ in xs])
    return np.concatenate([t for _, t in xs]), idx, fam_of


# ------------------------------------------------------------------------ scores
def dv_scores(g, head, encoder, x: np.ndarray):
    f, pred = G.guard_features(g, head, x=torch.from_numpy(x[:, None]), encoder=encoder)
    return g.score(f, pred), pred, f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--sheet", help="spec sheet of `pytest examples/digits` for the range guard "
                                    "(default: ranges computed as the plugin records them)")
    ap.add_argument("--target", type=float, default=0.05, help="target false alarm (default 0.05)")
    ap.add_argument("--write-doc", action="store_true",
                    help="rewrite the results section of docs/guard.md and the plot")
    ap.add_argument("--json", help="also write every number to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.model_selection import train_test_split

    t_start = time.time()
    w = load_weights()
    enc, dec = w["encoder"], w["decoder"]
    x_tr, y_tr = load("train")
    x_te, y_te = load("test")
    y_tr, y_te = y_tr.numpy(), y_te.numpy()
    with torch.no_grad():
        z_te = enc(x_te)
    cal, ev = train_test_split(np.arange(len(y_te)), test_size=0.5, random_state=0, stratify=y_te)
    xe, ye = x_te.numpy()[ev, 0], y_te[ev]
    dirs = direction_objects(w["directions"])
    if args.sheet:
        sheet = json.loads(Path(args.sheet).read_text())
        sheet_src = f"spec sheet {args.sheet}"
    else:
        V = {"thickness": dirs["thickness"], "slant": dirs["slant"],
             "style": np.stack([w["directions"]["thickness"].numpy(), w["directions"]["slant"].numpy()], 1)}
        ranges = {n: deploy.latent_ranges(z_te, PROVED_EPS[n], V[n], with_basis=True) for n in PROVED_EPS}
        sheet = {"directions": {n: {"latent_range": dict(r, verdict="proved")} for n, r in ranges.items()}}
        sheet_src = "ranges computed from the 450 test seeds (deploy.latent_ranges)"
    families = all_families()
    results = {"meta": {"sheet": sheet_src, "target_false_alarm": args.target, "n_train": int(len(y_tr)),
                        "n_calibration": int(len(cal)), "n_eval": int(len(ev)), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": args.threads}, "heads": {}}

    for head_name in ("certified", "nominal"):
        head = w["heads"][head_name]
        t0 = time.time()
        guards = {
            "dv_all": G.fit_guard(head, None, y_tr, encoder=enc, x=x_tr, held_out=(None, y_te[cal], x_te[cal]),
                                  target_false_alarm=args.target),
            "dv_latent_head": G.fit_guard(head, None, y_tr, encoder=enc, x=x_tr, encoder_layers=(),
                                          held_out=(z_te[cal], y_te[cal]), target_false_alarm=args.target),
        }
        fit_s = time.time() - t0
        cc = corner_cases(enc, head, xe, ye, families)
        cx = np.concatenate([c["x"] for c in cc.values()])
        cfam = np.concatenate([[f] * len(c["idx"]) for f, c in cc.items()]) if len(cx) else np.zeros(0, str)
        log(f"[{head_name}] guards fitted in {fit_s:.1f} s; {len(cx)} corner cases from "
            f"{cc['brightness']['n_seeds']} correctly classified evaluation digits ({time.time() - t0:.1f} s)")
        allx = np.concatenate([xe, cx])
        positive = np.r_[np.zeros(len(xe), bool), np.ones(len(cx), bool)]
        with torch.no_grad():
            z_all = enc(torch.from_numpy(allx[:, None])).numpy()
        scores, flags = {}, {}
        rs = deploy.range_score(sheet, z_all)["all"]
        scores["range"] = rs
        flags["range"] = ~deploy.in_spec(sheet, z_all)["all"]
        per_layer = {}
        for gname, g in guards.items():
            sc, _, _ = dv_scores(g, head, enc, allx)
            scores[gname] = sc["joint"]
            flags[gname] = ~sc["in_distribution"]
            if gname == "dv_all":
                per_layer = {L: float(roc_auc_score(positive, v)) for L, v in sc["layers"].items()}
        scores["both"] = G.combined_score(rs, scores["dv_all"], guards["dv_all"])
        flags["both"] = flags["range"] | flags["dv_all"]
        summary = {}
        for k in scores:
            summary[k] = {"auc": float(roc_auc_score(positive, scores[k])) if positive.any() else None,
                          "detected": float(flags[k][positive].mean()) if positive.any() else None,
                          "false_alarm_eval": float(flags[k][~positive].mean())}
        by_family = {}
        for fam in families:
            m = np.r_[np.zeros(len(xe), bool), cfam == fam]
            if m.sum() == 0:
                by_family[fam] = {"n": 0}
                continue
            sel = m | ~positive
            by_family[fam] = {"n": int(m.sum()), **{k: float(roc_auc_score(m[sel], scores[k][sel])) for k in
                                                     ("range", "dv_latent_head", "dv_all")},
                              "detected_dv_all": float(flags["dv_all"][m].mean()),
                              "median_level": float(np.median(cc[fam]["level"])), "n_levels": cc[fam]["n_levels"]}
        # a shifted deployment batch: accuracy inside vs outside each guard
        xs, si, _ = shifted_batch(xe, families, np.random.default_rng(0))
        bx = np.concatenate([xe, xs])
        by = np.r_[ye, ye[si]]
        with torch.no_grad():
            bz = enc(torch.from_numpy(bx[:, None]))
        reps = {}
        for gname in ("dv_all", "dv_latent_head"):
            gg = guards[gname]
            f, pred = G.guard_features(gg, head, x=torch.from_numpy(bx[:, None]), encoder=enc)
            data = {"z": bz.numpy(), "pred": pred, "labels": by,
                    **{G.FEATURE_PREFIX + k: v for k, v in f.items() if k != "z"}}
            reps[gname] = G.guard_report(sheet, data, guard=gg)
        ablation = {}
        if head_name == "certified":  # how much does nu matter?
            for nu in (0.05, 0.2, 0.5):
                ga = G.fit_guard(head, None, y_tr, encoder=enc, x=x_tr, held_out=(None, y_te[cal], x_te[cal]),
                                 target_false_alarm=args.target, nu=nu)
                sa, _, _ = dv_scores(ga, head, enc, allx)
                ablation[str(nu)] = {"auc": float(roc_auc_score(positive, sa["joint"])),
                                     "detected": float((~sa["in_distribution"])[positive].mean()),
                                     "false_alarm_eval": float((~sa["in_distribution"])[~positive].mean())}
        results["heads"][head_name] = {
            "nu_ablation": ablation,
            "fit_seconds": fit_s, "guard": guards["dv_all"].sheet_entry(),
            "guard_latent_head": guards["dv_latent_head"].sheet_entry(),
            "n_clean_eval": int(len(xe)), "n_corner_cases": int(len(cx)),
            "corner_seed_digits": int(cc["brightness"]["n_seeds"]),
            "clean_eval_accuracy": float(np.mean(classify(enc, head, xe) == ye)),
            "summary": summary, "per_layer_auc": per_layer, "by_family": by_family,
            "shifted_batch": reps["dv_all"], "shifted_batch_latent_head": reps["dv_latent_head"],
            "examples": {f: [describe(p) for p in c["p"][:3]] for f, c in cc.items()},
        }
        if head_name == "certified":
            results["roc"] = {k: [a.tolist() for a in roc_curve(positive, scores[k])[:2]] for k in scores}
        log(f"[{head_name}] ROC-AUC: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in summary.items()))

    # ------------------------------------------------------------------ pixel-space cross-check
    t0 = time.time()
    head = w["heads"]["certified"]
    clf = torch.nn.Sequential(enc, head).eval()
    pix = []
    for dname in ("thickness", "slant"):
        r = audit(head, (z_te, torch.as_tensor(y_te)), direction=dirs[dname], eps=PROVED_EPS[dname],
                  spec=Accuracy(at_least=0.0), budget_s=120)
        for e in (0.02, 0.05, 0.1):
            pc = G.pixel_crosscheck(clf, dec, z_te, y_te, eps=e, proved=r, steps=40, restarts=1, seed=0,
                                    direction=dname, latent_eps=PROVED_EPS[dname])
            pix.append(pc.to_dict(max_counterexamples=3))
    results["pixel_crosscheck"] = pix
    log(f"pixel cross-check: {time.time() - t0:.1f} s")
    results["meta"]["seconds"] = time.time() - t_start

    md = render(results)
    print()
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.write_doc:
        text = DOC.read_text()
        a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOC.write_text(text[:a] + "\n" + md + "\n" + text[b:])
        plot(results)
        log(f"wrote {DOC} and {PLOT}")
    log(f"total {time.time() - t_start:.0f} s")


NAMES = {"range": "range (AuditAI)", "dv_latent_head": "Deep Validation: z + head layers",
         "dv_all": "Deep Validation: z + encoder + head layers", "both": "both (range or DV, all layers)"}


def _p(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def render(res) -> str:
    m = res["meta"]
    L = [f"Measured by `python examples/digits/guard_eval.py` (Python {m['python']}, torch {m['torch']}, "
         f"{m['threads']} thread(s), {m['seconds']:.0f} s). Range guard: {m['sheet']}. Deep Validation fitted on "
         f"the correctly classified of {m['n_train']} training digits, threshold at a {m['target_false_alarm']:.0%} "
         f"false alarm on {m['n_calibration']} held-out clean test digits; evaluated on the other "
         f"{m['n_eval']} test digits and their corner cases.", ""]
    L += ["### Telling error-inducing corner cases from clean digits", "",
          "| head | corner cases | guard | ROC-AUC | corner cases flagged | false alarm (clean eval) |",
          "|---|---|---|---|---|---|"]
    for hn, h in res["heads"].items():
        for k, v in h["summary"].items():
            L.append(f"| {hn} | {h['n_corner_cases']} from {h['corner_seed_digits']} digits | {NAMES[k]} | "
                     f"{v['auc']:.3f} | {_p(v['detected'])} | {_p(v['false_alarm_eval'])} |")
    ab = res["heads"]["certified"]["nu_ablation"]
    L += ["", "The SVMs' `nu` (default 0.1), certified head, all layers: " + ", ".join(
        f"nu {k}: ROC-AUC {v['auc']:.3f}, {_p(v['detected'])} flagged, {_p(v['false_alarm_eval'])} false alarm"
        for k, v in ab.items()) + "."]
    L += ["", "Per family (certified head; ROC-AUC against the same clean digits; level: the median grid level, "
          "mild to strong, at which a digit first turned into an error):", "",
          "| family | corner cases | median level | range | DV z + head | DV all layers | flagged (DV all) |",
          "|---|---|---|---|---|---|---|"]
    for fam, v in res["heads"]["certified"]["by_family"].items():
        if not v["n"]:
            L.append(f"| {fam} | 0 | - | - | - | - | - |")
            continue
        L.append(f"| {fam} | {v['n']} | {v['median_level']:g} of {v['n_levels']} | {v['range']:.3f} | "
                 f"{v['dv_latent_head']:.3f} | {v['dv_all']:.3f} | {_p(v['detected_dv_all'])} |")
    pl = res["heads"]["certified"]["per_layer_auc"]
    L += ["", "One layer alone (certified head, DV discrepancy of that layer): "
          + ", ".join(f"`{k}` {v:.3f}" for k, v in pl.items()) + ".", ""]
    L += ["### Accuracy inside vs outside the guards on a shifted batch", "",
          "Each evaluation digit once clean and once per family at a random strength from the milder half of "
          "the family's grid "
          "(AuditAI's table 3, with Deep Validation beside it):", "",
          "| head | batch | accuracy | guard | fraction inside | accuracy inside | accuracy outside | errors flagged | ROC-AUC (errors) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for hn, h in res["heads"].items():
        for key, label, gs in (("shifted_batch", "", ("range",)),
                               ("shifted_batch_latent_head", "z + head", ("distribution", "both")),
                               ("shifted_batch", "all layers", ("distribution", "both"))):
            rep = h[key]
            acc = rep["accuracy"]
            for g in gs:
                a = acc[g]
                frac = rep["range"]["fraction_in"] if g == "range" else rep[g]["fraction_in"]
                name = "range" if g == "range" else (f"DV ({label})" if g == "distribution" else f"range and DV ({label})")
                L.append(f"| {hn} | {rep['n']} | {_p(acc['overall'])} | {name} | {_p(frac)} | "
                         f"{_p(a['inside']['accuracy'])} | {_p(a['outside']['accuracy'])} | {_p(a['errors_flagged'])} | "
                         f"{a['auc_errors']:.3f} |")
    L += ["", "### Pixel-space cross-check (AuditAI section 4.5)", "",
          "Certified head; seeds proved in latent space (all 450 test digits audited, `Accuracy`); PGD on "
          "`head(encoder(x))` around the decoded seed `decoder(z)`, 40 sign steps + 1 random restart:", "",
          "| direction (latent eps) | L-inf budget | latent-proved seeds | attackable in pixel space | of them already wrong at decoder(z) |",
          "|---|---|---|---|---|"]
    for pc in res["pixel_crosscheck"]:
        L.append(f"| {pc['direction']} ({pc['latent_eps']:g}) | {pc['eps']:g} | {pc['n_proved']} | "
                 f"{pc['n_attackable']} ({_p(pc['fraction_attackable'])}) | {pc['n_attackable_at_nominal']} |")
    L += ["", f"![ROC curves, certified head](img/{PLOT.name})"]
    return "\n".join(L)


def plot(res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    summ = res["heads"]["certified"]["summary"]
    for k, (fpr, tpr) in res["roc"].items():
        ax.plot(fpr, tpr, label=f"{NAMES[k]} (AUC {summ[k]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false alarm rate (clean test digits)")
    ax.set_ylabel("detection rate (error-inducing corner cases)")
    ax.set_title("Digits, certified head: guards vs corner cases")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
