"""Train the sprite VAE and shape head on CPU and write weights/sprites.pt (+ README.md).

    python examples/sprites/train.py             # train, measure, save (about 1.5-2 min on 2 idle cores)
    python examples/sprites/train.py --measure   # only re-measure the shipped weights

Two phases:
1. VAE + head jointly. Latent axes 0..4 regress the standardized factors (so each axis
   *is* a factor), axes 5..11 are free VAE dimensions, and the classification loss pushes
   shape identity into those free axes. A cross-covariance penalty keeps the free axes
   uncorrelated with the factors, so moving along a factor axis is the only way to
   change that factor.
2. Head alone, on frozen latent means with mild Gaussian noise: smooth for small latent
   steps (what the proved tests need) without being trained to survive large ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import (  # noqa: E402
    AUDIT_DATA_SEED,
    AUDIT_N,
    FACTOR_AXES,
    FREE_AXES,
    N_FACTORS,
    WEIGHTS_PATH,
    SpriteVAE,
    audit_seeds,
    load_models,
    make_head,
)
from sprites_data import make_sprites, standardize  # noqa: E402

SEED = 0
N_TRAIN, TRAIN_DATA_SEED = 30000, 0
N_TEST, TEST_DATA_SEED = 2000, 1
VAE_EPOCHS, HEAD_EPOCHS, BATCH = 20, 30, 128
FACTOR_NOISE = 0.1  # fixed posterior std on the factor axes while training the decoder
HEAD_NOISE = 0.1  # latent noise std for head training (robust to ~0.1, not to ~1)
W_FACTOR, W_KL, W_CLS, W_DECORR = 100.0, 1.0, 20.0, 50.0
KL_WARMUP = 3  # epochs of linearly rising KL weight, so the free axes open up before they are squeezed

# eps values (latent units = factor standard deviations) reported for each direction.
MEASURE_EPS = {
    "rotation": (0.1, 0.25, 0.5, 1.0),
    "scale": (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
    "x": (0.1, 0.5, 1.0),
    "y": (0.1, 0.5, 1.0),
    "brightness": (0.1, 0.25, 0.5, 1.0),
}
N_ALONG = 200  # points sampled per seed along [-eps, eps]


def cross_cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return a.T @ b / (a.shape[0] - 1)


def train_vae(vae, head, images, labels, factors_std, log):
    steps_per_epoch = len(images) // BATCH
    opt = torch.optim.Adam(list(vae.parameters()) + list(head.parameters()), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=VAE_EPOCHS * steps_per_epoch
    )
    free = list(FREE_AXES)
    for epoch in range(VAE_EPOCHS):
        vae.train()
        head.train()
        perm = torch.randperm(len(images))
        tot = {}
        for i in range(steps_per_epoch):
            w_kl = W_KL * min(1.0, (epoch * steps_per_epoch + i + 1) / (KL_WARMUP * steps_per_epoch))
            idx = perm[i * BATCH : (i + 1) * BATCH]
            x, y, f = images[idx], labels[idx], factors_std[idx]
            mu, logvar = vae.encode(x)
            std = torch.cat(
                [torch.full_like(mu[:, :N_FACTORS], FACTOR_NOISE), torch.exp(0.5 * logvar[:, free])],
                dim=1,
            )
            z = mu + std * torch.randn_like(mu)
            recon = F.binary_cross_entropy(vae.decoder(z), x, reduction="sum") / len(x)
            factor = ((mu[:, :N_FACTORS] - f) ** 2).sum(1).mean()
            lv = logvar[:, free]
            kl = 0.5 * (mu[:, free] ** 2 + lv.exp() - 1 - lv).sum(1).mean()
            # The head reads the mean (as at test time): free-axis samples start as pure
            # noise, which would stall the class signal for many epochs.
            cls = F.cross_entropy(head(mu + HEAD_NOISE * torch.randn_like(mu)), y)
            decorr = (cross_cov(mu[:, free], f) ** 2).sum()
            loss = recon + W_FACTOR * factor + w_kl * kl + W_CLS * cls + W_DECORR * decorr
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for k, v in (("recon", recon), ("factor", factor), ("kl", kl), ("cls", cls), ("decorr", decorr)):
                tot[k] = tot.get(k, 0.0) + v.item()
        log(f"vae epoch {epoch + 1:2d}: " + " ".join(f"{k}={v / steps_per_epoch:.4f}" for k, v in tot.items()))


def train_head(head, z, labels, log):
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, HEAD_EPOCHS)
    for epoch in range(HEAD_EPOCHS):
        head.train()
        perm = torch.randperm(len(z))
        tot = 0.0
        for i in range(0, len(z), BATCH):
            idx = perm[i : i + BATCH]
            zi = z[idx] + HEAD_NOISE * torch.randn_like(z[idx])
            loss = F.cross_entropy(head(zi), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            log(f"head epoch {epoch + 1:2d}: ce={tot / len(z):.4f}")


@torch.no_grad()
def evaluate(encoder, decoder, head, images, labels, factors_std):
    z = encoder(images)
    acc = (head(z).argmax(1) == labels).float().mean().item()
    r2 = {}
    for name, axis in FACTOR_AXES.items():
        t = factors_std[:, axis]
        r2[name] = 1 - ((z[:, axis] - t) ** 2).mean().item() / t.var().item()
    mse = ((decoder(z) - images) ** 2).mean().item()
    return acc, r2, mse


@torch.no_grad()
def measure(head, z, labels, log):
    """Per direction and eps: fraction of seeds whose prediction stays the label at all
    N_ALONG evenly spaced points of [-eps, eps] along that axis (sampling, not a proof)."""
    results = {}
    ts = torch.linspace(-1.0, 1.0, N_ALONG)
    for name, eps_list in MEASURE_EPS.items():
        axis = FACTOR_AXES[name]
        for eps in eps_list:
            pts = z[:, None, :].repeat(1, N_ALONG, 1)
            pts[:, :, axis] += eps * ts
            pred = head(pts.reshape(-1, z.shape[1])).argmax(1).view(len(z), N_ALONG)
            frac = (pred == labels[:, None]).all(1).float().mean().item()
            results[(name, eps)] = frac
            log(f"  {name:10s} eps={eps:<4}: prediction never changes for {frac:6.1%} of {len(z)} seeds")
    return results


def write_readme(path, info, results):
    lines = [
        "# Sprite example weights",
        "",
        "`sprites.pt` holds the state dicts of `models.SpriteVAE` (`vae`) and `models.make_head()`",
        "(`head`). It was produced, CPU only, by",
        "",
        "    python examples/sprites/train.py",
        "",
        f"- seeds: torch/numpy seed {SEED}; training data `make_sprites({N_TRAIN}, seed={TRAIN_DATA_SEED})`,"
        f" test data `make_sprites({N_TEST}, seed={TEST_DATA_SEED})`",
        f"- {VAE_EPOCHS} epochs VAE + head, then {HEAD_EPOCHS} epochs head on frozen latents"
        f" (Gaussian latent noise std {HEAD_NOISE})",
        f"- training time: {info['time']:.0f} s wall, {info['cpu']:.0f} s CPU, {info['threads']} torch threads"
        f" (torch {torch.__version__}, {platform.machine()}; 5-min load average at the end"
        f" {info['load']:.1f}, of which this run is up to {info['threads']})",
        f"- head accuracy on encoded images: train {info['train_acc']:.2%}, test {info['test_acc']:.2%}",
        "- factor axes, R^2 on the test set: "
        + ", ".join(f"{k} (axis {FACTOR_AXES[k]}) {v:.3f}" for k, v in info["r2"].items()),
        f"- decoder reconstruction MSE on the test set: {info['mse']:.4f}",
        "",
        f"Sampling check on the audit seeds (`models.audit_seeds()`: {info['n_seeds']} correctly"
        " classified codes of",
        f"`make_sprites({AUDIT_N}, seed={AUDIT_DATA_SEED})`): fraction of seeds whose predicted class never changes at"
        f" {N_ALONG}",
        "evenly spaced points of `z0 + t * e_axis`, `t in [-eps, eps]` (eps in factor std units):",
        "",
        "| direction | eps | never changes |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {eps} | {frac:.1%} |" for (name, eps), frac in results.items()]
    lines += [
        "",
        "Training is seeded and single-process, but floating-point results can differ across",
        "torch versions and thread counts, so a retrain may give slightly different numbers.",
        "",
    ]
    path.write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="only measure the shipped weights")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    if not args.measure:
        t0, c0 = time.time(), time.process_time()
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        images, labels, factors = make_sprites(N_TRAIN, seed=TRAIN_DATA_SEED)
        factors_std = torch.from_numpy(standardize(factors))
        log(f"generated {N_TRAIN} training sprites in {time.time() - t0:.1f} s")
        vae, head = SpriteVAE(), make_head()
        train_vae(vae, head, images, labels, factors_std, log)
        vae.eval()
        with torch.no_grad():
            z_train = torch.cat([vae.encoder(images[i : i + 1000]) for i in range(0, N_TRAIN, 1000)])
        train_head(head, z_train, labels, log)
        elapsed, cpu = time.time() - t0, time.process_time() - c0
        WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"vae": vae.state_dict(), "head": head.state_dict()}, WEIGHTS_PATH)
        log(f"trained in {elapsed:.0f} s wall, {cpu:.0f} s CPU; saved {WEIGHTS_PATH} ({WEIGHTS_PATH.stat().st_size / 1e6:.2f} MB)")

    encoder, decoder, head = load_models()
    info = {"threads": args.threads}
    if not args.measure:
        # Wall time is only meaningful on an idle machine; the load average says whether it was.
        info.update(time=elapsed, cpu=cpu, load=os.getloadavg()[1])
        info["train_acc"] = (head(z_train).argmax(1) == labels).float().mean().item()
    test_images, test_labels, test_factors = make_sprites(N_TEST, seed=TEST_DATA_SEED)
    acc, r2, mse = evaluate(
        encoder, decoder, head, test_images, test_labels, torch.from_numpy(standardize(test_factors))
    )
    info.update(test_acc=acc, r2=r2, mse=mse)
    log(f"test accuracy {acc:.2%}; factor R^2 " + ", ".join(f"{k}={v:.3f}" for k, v in r2.items()))
    log(f"test reconstruction MSE {mse:.4f}")

    z, seed_labels = audit_seeds(encoder, head)
    info["n_seeds"] = len(z)
    log(f"audit seeds: {len(z)} correctly classified of {AUDIT_N}")
    results = measure(head, z, seed_labels, log)
    if not args.measure:
        write_readme(WEIGHTS_PATH.parent / "README.md", info, results)


if __name__ == "__main__":
    main()
