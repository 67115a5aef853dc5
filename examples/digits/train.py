"""Train the digits example on CPU and write weights/digits.pt (+ weights/README.md).

    python examples/digits/train.py              # about a minute or two on one CPU thread
    python examples/digits/train.py --measure    # only re-measure the shipped weights

Steps (all seeded):
1. A small VAE on the 1347 training digits, with a class loss on the latent mean (the
   shared encoder of AuditAI's ``f = f_d o e``; its auxiliary classifier is discarded).
2. Two semantic directions from attributes measured on the images (digits_data.py):
   ``thickness`` (ink mass) and ``slant`` (moment shear), each the unit normal of a linear
   probe fitted *within* digit classes (``directions.fit_probe(..., groups=labels)``), then
   orthogonalised (``directions.orthogonalise``). Validity checks (continuity,
   independence measured on decoded images, realism limit) are recorded.
3. Two heads on the frozen latent means, same architecture, same initialisation, same
   optimiser (Adam, lr 5e-4, as in AuditAI): ``nominal`` (cross-entropy only) and
   ``certified`` (``training.certified_loss`` with CROWN-IBP over both directions at
   ``EPS``, 5 plain warm-up epochs, then eps and kappa ramped linearly).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits_data import ATTRIBUTES, augment, load  # noqa: E402
from digits_models import LATENT_DIM, N_CLASSES, WEIGHTS_PATH, DigitVAE, direction_objects, make_head  # noqa: E402

from pytest_latentaudit import Accuracy, audit  # noqa: E402
from pytest_latentaudit.toolkit import directions as dirs  # noqa: E402
from pytest_latentaudit.toolkit import validity  # noqa: E402
from pytest_latentaudit.toolkit.training import AUDITAI_HPARAMS, EpsSchedule, certified_loss  # noqa: E402

SEED = 0
VAE_EPOCHS, VAE_LR, BATCH = 200, 2e-3, 64
W_CLS, BETA_KL = 0.5, 0.1  # a light class loss on the latent mean; a light KL keeps stroke detail
HEAD_EPOCHS, HEAD_LR = 100, AUDITAI_HPARAMS["lr"]  # Adam, lr 5e-4 (AuditAI)
WARMUP, RAMP = AUDITAI_HPARAMS["warmup_epochs"], 40  # 5 plain epochs (AuditAI), then a linear ramp
KAPPA_END = 0.2  # weight of the clean loss at the end of the ramp (CROWN-IBP's kappa)
METHOD = "crown-ibp"
P_ORIGINAL = 0.25  # VAE batches: a quarter original digits, the rest with random slant / thickness
MAX_SHEAR, MAX_MORPH = 0.3, 0.25  # augmentation ranges (pixels per row; dilation / erosion strength)
N_PROBE_COPIES = 4  # augmented copies of the training set the probes are fitted on (plus the originals)
EPS = 1.0  # the nominal radius along each direction, in latent units


def log(msg):
    print(msg, flush=True)


def train_vae(x, y):
    torch.manual_seed(SEED)
    vae = DigitVAE()
    aux = torch.nn.Sequential(torch.nn.Linear(LATENT_DIM, 64), torch.nn.ReLU(), torch.nn.Linear(64, N_CLASSES))
    opt = torch.optim.Adam(list(vae.parameters()) + list(aux.parameters()), lr=VAE_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, VAE_EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(VAE_EPOCHS):
        vae.train()
        perm = torch.randperm(len(x), generator=gen)
        tot = np.zeros(3)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = x[idx], y[idx]
            keep = torch.rand(len(idx), generator=gen) < P_ORIGINAL
            xb = torch.where(keep[:, None, None, None], xb, augment(xb, gen, MAX_SHEAR, MAX_MORPH))
            mu, logvar = vae.encode(xb)
            zs = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec = F.binary_cross_entropy(vae.decoder(zs), xb, reduction="sum") / len(xb)
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()
            cls = F.cross_entropy(aux(mu), yb)
            loss = rec + BETA_KL * min(1.0, (epoch + 1) / 20) * kl + W_CLS * cls
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += np.array([rec.item(), kl.item(), cls.item()]) * len(idx)
        sched.step()
        if (epoch + 1) % 50 == 0:
            r, k, c = tot / len(x)
            log(f"vae epoch {epoch + 1:3d}: recon {r:.2f} kl {k:.2f} cls {c:.3f}")
    return vae.eval()


def probe_set(encoder, images, labels):
    """The training images plus augmented copies, encoded: (z, images, labels)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    xs = [images] + [augment(images, gen, MAX_SHEAR, MAX_MORPH) for _ in range(N_PROBE_COPIES)]
    x = torch.cat(xs)
    with torch.no_grad():
        z = encoder(x)
    return z, x, labels.repeat(len(xs))


def find_directions(z, images, labels):
    probes = {name: dirs.fit_probe(z, fn(images), groups=labels, name=name) for name, fn in ATTRIBUTES.items()}
    found = dirs.orthogonalise({name: p.direction() for name, p in probes.items()})
    return probes, found


def train_head(z, y, mode, eps=EPS, directions=None, epochs=HEAD_EPOCHS, seed=SEED, method=METHOD,
               kappa_end=KAPPA_END, quiet=False):
    """One head on frozen latents; ``mode`` is ``"nominal"`` or ``"certified"``."""
    torch.manual_seed(seed)
    head = make_head()
    opt = torch.optim.Adam(head.parameters(), lr=HEAD_LR)
    sched = EpsSchedule(eps=eps, warmup_epochs=WARMUP, ramp_epochs=RAMP, kappa_end=kappa_end)
    gen = torch.Generator().manual_seed(seed)
    n = len(z)
    for epoch in range(epochs):
        head.train()
        perm = torch.randperm(n, generator=gen)
        tot, ver = 0.0, 0.0
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            if mode == "nominal":
                loss = F.cross_entropy(head(z[idx]), y[idx])
                parts = {"verified": float("nan")}
            else:
                p = i / n
                loss, parts = certified_loss(head, z[idx], y[idx], directions, sched(epoch, p), method=method,
                                             kappa=sched.kappa_at(epoch, p), return_parts=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            ver += parts["verified"] * len(idx)
        if not quiet and (epoch + 1) % 25 == 0:
            extra = "" if mode == "nominal" else f" eps {sched(epoch, 1.0):.2f} batch-verified {ver / n:.1%}"
            log(f"{mode} head epoch {epoch + 1:3d}: loss {tot / n:.4f}{extra}")
    return head.eval()


@torch.no_grad()
def accuracy(head, z, y):
    return float((head(z).argmax(1) == y).float().mean())


def measure(encoder, decoder, heads, vectors, eps, x_tr, y_tr, x_te, y_te):
    """Clean accuracy, validity checks and verified accuracy at eps for each head/direction."""
    with torch.no_grad():
        z_tr, z_te = encoder(x_tr), encoder(x_te)
    d = direction_objects(vectors)
    info = {"acc": {}, "verified": {}, "validity": {}}
    for name, head in heads.items():
        info["acc"][name] = {"train": accuracy(head, z_tr, y_tr), "test": accuracy(head, z_te, y_te)}
    for dname, direction in d.items():
        cont = validity.check_continuity(decoder, z_te, direction, eps, warn=False)
        ind = validity.check_independence(z_te, direction, eps, ATTRIBUTES, decoder=decoder, target=dname,
                                          warn=False)
        real = validity.realism_limit(z_tr, direction, z_te, method="knn", eps=eps, warn=False)
        info["validity"][dname] = {"continuity": cont, "independence": ind, "realism": real}
        for name, head in heads.items():
            t0 = time.time()
            r = audit(head, (z_te, y_te), direction=direction, eps=eps, spec=Accuracy(at_least=0.0), budget_s=120)
            info["verified"][(name, dname)] = (r.verified_fraction, r.counts, time.time() - t0)
    return info


def write_readme(path, info, meta):
    v = info["validity"]
    lines = [
        "# Digits example weights",
        "",
        "`digits.pt` holds the state dicts of `digits_models.DigitVAE` (`vae`) and of two `digits_models.make_head()`",
        "heads (`heads.nominal`, `heads.certified`), the unit direction vectors (`directions`), the",
        "nominal radius `eps` and `meta`. It was produced, CPU only, by",
        "",
        "    python examples/digits/train.py",
        "",
        f"- data: `sklearn.datasets.load_digits`, stratified split (seed 0): {meta['n_train']} training and"
        f" {meta['n_test']} test images",
        f"- VAE: {VAE_EPOCHS} epochs, Adam lr {VAE_LR} (cosine), batch {BATCH}, latent dim {LATENT_DIM},"
        f" class loss weight {W_CLS} on the latent mean; test reconstruction MSE {meta['mse']:.4f}",
        f"- directions: linear probes fitted within digit classes on the training latents, then"
        f" orthogonalised (thickness first). Within-class R^2: "
        + ", ".join(f"{k} {p['fit']:.2f}" for k, p in meta["probes"].items())
        + "; attribute change per latent unit along the direction: "
        + ", ".join(f"{k} {p['gain']:.3g}" for k, p in meta["probes"].items())
        + " (ink in pixel units of [0, 1], slant in pixels per row)",
        f"- heads: {HEAD_EPOCHS} epochs, Adam lr {HEAD_LR}, batch {BATCH}, same initialisation (seed {SEED});"
        f" certified: `certified_loss(method=\"{METHOD}\")` over both directions at eps {meta['eps']},"
        f" {WARMUP} warm-up epochs, eps and kappa (1 -> {KAPPA_END}) ramped over {RAMP} epochs",
        f"- training time ({meta['threads']} torch thread(s), torch {torch.__version__}, {platform.machine()}):"
        f" VAE {meta['time']['vae']:.0f} s, nominal head {meta['time']['nominal']:.0f} s,"
        f" certified head {meta['time']['certified']:.0f} s",
        "",
        "| head | train accuracy | test accuracy |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {a['train']:.1%} | {a['test']:.1%} |" for k, a in info["acc"].items()]
    lines += [
        "",
        f"Verified accuracy on the {meta['n_test']} test seeds at eps = {meta['eps']} (`pytest_latentaudit.audit`,"
        " engine auto; misclassified seeds count as not verified):",
        "",
        "| head | direction | verified | falsified | unknown | verified accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for (h, d), (frac, counts, _) in info["verified"].items():
        lines.append(f"| {h} | {d} | {counts['verified']} | {counts['falsified']} | {counts['unknown']} |"
                     f" {frac:.1%} |")
    lines += ["", "Validity of the directions (validity.py) at eps = " f"{meta['eps']}:", "",
              "| direction | realism limit (knn) | jump ratio | path deviation | own attribute change (std)"
              " | other attribute change (std) |", "|---|---|---|---|---|---|"]
    for dname, c in v.items():
        other = [n for n in c["independence"]["probes"] if n != dname][0]
        lines.append(f"| {dname} | {c['realism']['eps']:.2f} | {c['continuity']['jump_ratio']:.2f} |"
                     f" {c['continuity']['deviation_median']:.2f} |"
                     f" {c['independence']['probes'][dname]['effect']:.2f} |"
                     f" {other}: {c['independence']['probes'][other]['effect']:.2f} |")
    lines += ["", "Training is seeded and single-threaded, but floating-point results can differ across torch",
              "versions and machines, so a retrain may give slightly different numbers; check the eps and",
              "`at_least` values in `test_digits.py` against this file if you retrain.", ""]
    path.write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="only measure the shipped weights")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these models are tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(SEED)
    x_tr, y_tr = load("train")
    x_te, y_te = load("test")

    if not args.measure:
        meta = {"threads": args.threads, "time": {}, "n_train": len(x_tr), "n_test": len(x_te), "eps": EPS}
        t0 = time.time()
        vae = train_vae(x_tr, y_tr)
        meta["time"]["vae"] = time.time() - t0
        encoder, decoder = vae.encoder.eval(), vae.decoder
        with torch.no_grad():
            z_tr = encoder(x_tr)
            meta["mse"] = float(((decoder(encoder(x_te)) - x_te) ** 2).mean())
        probes, found = find_directions(*probe_set(encoder, x_tr, y_tr))
        meta["probes"] = {k: {"fit": p.fit, "gain": p.gain} for k, p in probes.items()}
        vectors = {k: d.basis(LATENT_DIM)[:, 0].clone() for k, d in found.items()}
        log("directions: " + ", ".join(f"{k} (within-class R^2 {p.fit:.2f}, gain {p.gain:.3g})"
                                       for k, p in probes.items()))
        t0 = time.time()
        nominal = train_head(z_tr, y_tr, "nominal")
        meta["time"]["nominal"] = time.time() - t0
        t0 = time.time()
        certified = train_head(z_tr, y_tr, "certified", directions=found)
        meta["time"]["certified"] = time.time() - t0
        WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"vae": vae.state_dict(), "heads": {"nominal": nominal.state_dict(),
                                                        "certified": certified.state_dict()},
                    "directions": vectors, "eps": EPS, "meta": meta}, WEIGHTS_PATH)
        log(f"saved {WEIGHTS_PATH} ({WEIGHTS_PATH.stat().st_size / 1e6:.2f} MB)")

    from digits_models import load as load_weights

    w = load_weights()
    meta = w["meta"]
    info = measure(w["encoder"], w["decoder"], w["heads"], w["directions"], w["eps"], x_tr, y_tr, x_te, y_te)
    for name, a in info["acc"].items():
        log(f"{name} head: train accuracy {a['train']:.1%}, test accuracy {a['test']:.1%}")
    for (h, d), (frac, counts, secs) in info["verified"].items():
        log(f"  {h:9s} {d:9s} eps={w['eps']}: verified accuracy {frac:.1%} {counts} ({secs:.1f} s)")
    for dname, c in info["validity"].items():
        log(f"  {dname}: realism limit {c['realism']['eps']:.2f}, continuity ok={c['continuity']['ok']}, "
            f"independence {({k: round(v['effect'], 2) for k, v in c['independence']['probes'].items()})}")
    if not args.measure:
        write_readme(WEIGHTS_PATH.parent / "README.md", info, meta)


if __name__ == "__main__":
    main()
