"""Sprite autoencoder with a semantically labelled latent space, plus a shape head.

The latent code has LATENT_DIM = 12 dimensions. Dimensions 0..4 are supervised during
training to equal the *standardized* generative factors (see FACTOR_AXES), so a step of
1.0 along axis 1 means "one standard deviation more scale" and eps is in those units.
Dimensions 5..11 are free VAE dimensions (KL-regularized) that carry what the factors do
not: mostly the shape identity.

All three networks are plain nn.Sequential stacks of standard layers, so bound
propagation (interval / linear relaxations) supports them directly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sprites_data import FACTOR_NAMES, SHAPES, make_sprites

LATENT_DIM = 12
# Latent axis of each standardized factor; the same order as sprites_data.FACTOR_NAMES.
FACTOR_AXES = {name: i for i, name in enumerate(FACTOR_NAMES)}
N_FACTORS = len(FACTOR_AXES)
FREE_AXES = tuple(range(N_FACTORS, LATENT_DIM))
N_CLASSES = len(SHAPES)

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "sprites.pt"
# A second head on the same (shipped) latent space, trained with certified_loss by
# train_certified.py; the VAE stays the one in WEIGHTS_PATH.
CERTIFIED_WEIGHTS_PATH = WEIGHTS_PATH.parent / "sprites_certified.pt"

# Held-out images the audits start from (training uses data seeds 0 and 1).
AUDIT_N, AUDIT_DATA_SEED = 200, 2024


class SpriteVAE(nn.Module):
    """Conv encoder -> (mu, logvar) -> deconv decoder. Only `encoder` and `decoder` are
    needed at test time; `logvar` exists for training noise on the free axes."""

    def __init__(self, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
        )
        self.mu = nn.Linear(128, latent_dim)
        self.logvar = nn.Linear(128, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 8x8
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),  # 16x16
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),  # 32x32
            nn.Sigmoid(),
        )

    @property
    def encoder(self) -> nn.Sequential:
        """Deterministic encoder image -> latent mean (shares weights with the VAE)."""
        return nn.Sequential(self.trunk, self.mu)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


def make_head(latent_dim: int = LATENT_DIM, hidden: int = 64) -> nn.Sequential:
    """Shape classifier on the latent code: the small network the audits bound."""
    return nn.Sequential(
        nn.Linear(latent_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, N_CLASSES),
    )


def load_models(device: str | torch.device = "cpu", path: str | Path = WEIGHTS_PATH):
    """Shipped weights -> (encoder, decoder, head), all in eval mode on `device`.

    encoder: [n,1,32,32] images -> [n,12] latent means; decoder: [n,12] -> [n,1,32,32];
    head: [n,12] -> [n,3] shape logits (square, ellipse, triangle).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; train it with `python examples/sprites/train.py`"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    vae, head = SpriteVAE(), make_head()
    vae.load_state_dict(state["vae"])
    head.load_state_dict(state["head"])
    vae.to(device).eval()
    head.to(device).eval()
    for p in list(vae.parameters()) + list(head.parameters()):
        p.requires_grad_(False)
    return vae.encoder.eval(), vae.decoder, head


def load_certified_head(device: str | torch.device = "cpu", path: str | Path = CERTIFIED_WEIGHTS_PATH):
    """The certified shape head (same architecture as make_head()) in eval mode on `device`:
    [n,12] latent codes of the shipped encoder -> [n,3] logits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; train it with `python examples/sprites/train_certified.py`"
        )
    head = make_head()
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["head"])
    head.to(device).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


@torch.no_grad()
def audit_seeds(encoder: nn.Module, head: nn.Module, n: int = AUDIT_N, seed: int = AUDIT_DATA_SEED):
    """Encode a fixed held-out sprite set -> (z [m,12], labels [m]) keeping only the m <= n
    codes the head classifies correctly (a spec on a misclassified seed is moot)."""
    device = next(encoder.parameters()).device
    images, labels, _ = make_sprites(n, seed=seed)
    z = encoder(images.to(device))
    labels = labels.to(device)
    keep = head(z).argmax(dim=1) == labels
    return z[keep].contiguous(), labels[keep].contiguous()
