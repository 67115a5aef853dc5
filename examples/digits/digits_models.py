"""Digit VAE with a shared latent space, two latent heads (nominal and certified), and the
semantic directions found in that space. Everything loads from ``weights/digits.pt``.

``f = f_d o e`` as in AuditAI: the encoder ``e`` (the VAE's mean) is shared by the
generative model (decoder ``g``) and the classifier; the audits and certified training
only bound the small head ``f_d``: ``Linear(8, 64) - ReLU - Linear(64, 64) - ReLU -
Linear(64, 64) - ReLU - Linear(64, 10)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from torch import nn

LATENT_DIM = 8
N_CLASSES = 10
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digits.pt"


class DigitVAE(nn.Module):
    """MLP VAE on 8x8 images: ``encode(x) -> (mu, logvar)``, ``decoder(z) -> [n, 1, 8, 8]``."""

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = 256):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2),
                                   nn.ReLU())
        self.mu = nn.Linear(hidden // 2, latent_dim)
        self.logvar = nn.Linear(hidden // 2, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden),
                                     nn.ReLU(), nn.Linear(hidden, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))

    @property
    def encoder(self) -> nn.Sequential:
        """Deterministic encoder image -> latent mean (shares weights with the VAE)."""
        return nn.Sequential(self.trunk, self.mu)

    def encode(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


def make_head(latent_dim: int = LATENT_DIM, hidden: int = 64) -> nn.Sequential:
    """The digit classifier on the latent code (AuditAI uses 5 fully connected ReLU layers;
    4 suffice here)."""
    return nn.Sequential(
        nn.Linear(latent_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, N_CLASSES),
    )


def load(path: str | Path = WEIGHTS_PATH) -> dict:
    """Everything in the weights file: ``encoder``, ``decoder``, ``heads`` (``nominal``,
    ``certified``), ``directions`` (``{name: unit vector [8]}``), ``eps`` (the nominal
    radius the certified head was trained for) and ``meta`` (how they were made)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train it with `python examples/digits/train.py`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    vae = DigitVAE()
    vae.load_state_dict(state["vae"])
    vae.eval()
    heads = {}
    for name, sd in state["heads"].items():
        h = make_head()
        h.load_state_dict(sd)
        heads[name] = h.eval()
    for m in [vae, *heads.values()]:
        for p in m.parameters():
            p.requires_grad_(False)
    return {"vae": vae, "encoder": vae.encoder.eval(), "decoder": vae.decoder, "heads": heads,
            "directions": {k: v.clone() for k, v in state["directions"].items()}, "eps": float(state["eps"]),
            "meta": state.get("meta", {})}


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return encoder(images)


def direction_objects(vectors: Dict[str, torch.Tensor]):
    from pytest_latentaudit import Direction

    return {name: Direction.vector(v, name=name) for name, v in vectors.items()}
