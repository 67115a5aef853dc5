"""scikit-learn's bundled handwritten digits (8x8, 1797 images, no download) and two
attributes measured on the images themselves.

* **thickness**: ink mass, the summed intensity of the image (thicker strokes, more ink);
* **slant**: the shear of the image's second moments, ``-mu11 / mu02`` (how far the
  centre of each row moves right per row upwards; > 0 leans right), the quantity that
  classic deskewing removes.

Both are computed from pixels, so they can be measured on decoded images too: that is
how the directions found from them are checked (validity.check_independence).
"""
from __future__ import annotations

import numpy as np
import torch

SPLIT_SEED = 0
N_TEST = 450
SIDE = 8


def load(split: str = "train"):
    """``(images [N, 1, 8, 8] float32 in [0, 1], labels [N] int64)`` for ``"train"`` (1347
    images) or ``"test"`` (450), a fixed stratified split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    idx = np.arange(len(x))
    tr, te = train_test_split(idx, test_size=N_TEST, random_state=SPLIT_SEED, stratify=d.target)
    sel = {"train": tr, "test": te}[split]
    return torch.from_numpy(x[sel][:, None]), torch.from_numpy(d.target[sel].astype(np.int64))


_R, _C = np.meshgrid(np.arange(SIDE, dtype=np.float32), np.arange(SIDE, dtype=np.float32), indexing="ij")


def ink(images) -> torch.Tensor:
    """Ink mass: summed intensity per image (pixels in [0, 1]; 64 pixels)."""
    x = torch.as_tensor(images).reshape(-1, SIDE * SIDE)
    return x.sum(1)


def slant(images) -> torch.Tensor:
    """Moment-based shear ``-mu11 / mu02``: x shift of the row centres per row upwards."""
    x = torch.as_tensor(images).reshape(-1, SIDE, SIDE).clamp(min=0)
    r = torch.as_tensor(_R)
    c = torch.as_tensor(_C)
    m = x.sum((1, 2)).clamp(min=1e-6)
    rbar = (x * r).sum((1, 2)) / m
    cbar = (x * c).sum((1, 2)) / m
    dr = r[None] - rbar[:, None, None]
    dc = c[None] - cbar[:, None, None]
    mu11 = (x * dr * dc).sum((1, 2)) / m
    mu02 = (x * dr * dr).sum((1, 2)) / m
    return -mu11 / mu02.clamp(min=1e-6)


ATTRIBUTES = {"thickness": ink, "slant": slant}


# ------------------------------------------------------------------------ augmentation
def _shift_rows(x: torch.Tensor, shear: torch.Tensor) -> torch.Tensor:
    """Shear: row r moves right by ``shear * (center - r)`` pixels (linear interpolation)."""
    import torch.nn.functional as F

    n = x.shape[0]
    rows = torch.arange(SIDE, dtype=x.dtype)
    shift = shear[:, None] * ((SIDE - 1) / 2 - rows)[None]  # [n, 8] pixels, > 0: right
    cols = torch.arange(SIDE, dtype=x.dtype)
    src = cols[None, None, :] - shift[:, :, None]  # sample column for each output pixel
    gx = (2 * src + 1) / SIDE - 1  # align_corners=False coordinates
    gy = ((2 * rows + 1) / SIDE - 1)[None, :, None].expand(n, SIDE, SIDE)
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _morph(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thicken (amount > 0: towards a cross-shaped dilation) or thin (< 0: erosion)."""
    import torch.nn.functional as F

    p = F.pad(x, (1, 1, 1, 1))
    nb = torch.stack([p[..., 1:-1, 1:-1], p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]])
    dil, ero = nb.max(0).values, nb.min(0).values
    a = amount[:, None, None, None]
    return torch.where(a > 0, x + a * (dil - x), x + (-a) * (ero - x)).clamp(0, 1)


def augment(x: torch.Tensor, generator: torch.Generator, max_shear: float = 0.3, max_morph: float = 0.5):
    """Random slant and stroke-thickness variations (so the generative model sees plenty
    of both within every class): shear ``U(-max_shear, max_shear)`` pixels per row, then a
    partial dilation / erosion of strength ``U(-max_morph, max_morph)``."""
    n = x.shape[0]
    shear = (torch.rand(n, generator=generator) * 2 - 1) * max_shear
    amount = (torch.rand(n, generator=generator) * 2 - 1) * max_morph
    return _morph(_shift_rows(x, shear), amount)
