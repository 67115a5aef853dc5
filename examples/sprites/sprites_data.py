"""Procedural sprites: small grayscale shapes with known generative factors.

Every image is drawn from six factors, so tests can talk about "rotation" or "scale"
and mean exactly that:

- ``shape``      class label: 0 = square, 1 = ellipse, 2 = triangle
- ``rotation``   degrees in [-30, 30]   (a square repeats every 90 degrees and a
                 triangle every 120, so the range stays well inside one period)
- ``scale``      in [0.15, 0.8]; all shapes have the same area at the same scale,
                 so size alone says nothing about the class
- ``x``, ``y``   shape centre in [-0.3, 0.3] (image spans [-1, 1]; a shape at most touches the border)
- ``brightness`` foreground intensity in [0.35, 1.0] on a black background

Pure numpy and deterministic given the seed. Edges are anti-aliased by rendering on a
supersampled grid and averaging down.
"""
from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 32
SHAPES = ("square", "ellipse", "triangle")

# Uniform ranges of the continuous factors (the order is the latent-axis order).
FACTOR_RANGES = {
    "rotation": (-30.0, 30.0),
    "scale": (0.15, 0.8),
    "x": (-0.3, 0.3),
    "y": (-0.3, 0.3),
    "brightness": (0.35, 1.0),
}
FACTOR_NAMES = tuple(FACTOR_RANGES)

# Shape geometry in units of `scale`, chosen so that the three shapes have equal area (1.0).
_SQUARE_HALF = 0.5
_ELLIPSE_AXES = (0.7, 0.455)  # pi * 0.7 * 0.455 ~= 1.0
_TRIANGLE_INRADIUS = (1.0 / (3.0 * np.sqrt(3.0))) ** 0.5  # area = 3*sqrt(3)*r^2 = 1.0
_TRIANGLE_NORMALS = np.array(
    [[np.cos(a), np.sin(a)] for a in np.deg2rad([-90.0, 30.0, 150.0])]
)


def factor_stats(name: str) -> tuple[float, float]:
    """Mean and std of a uniform factor: the latent axes store (f - mean) / std."""
    lo, hi = FACTOR_RANGES[name]
    return (lo + hi) / 2.0, (hi - lo) / np.sqrt(12.0)


def standardize(factors: dict[str, np.ndarray]) -> np.ndarray:
    """[n, 5] array of standardized factors in FACTOR_NAMES order."""
    cols = []
    for name in FACTOR_NAMES:
        mean, std = factor_stats(name)
        cols.append((np.asarray(factors[name], dtype=np.float64) - mean) / std)
    return np.stack(cols, axis=1).astype(np.float32)


def _shape_mask(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if k == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF
    if k == 1:
        return (u / _ELLIPSE_AXES[0]) ** 2 + (v / _ELLIPSE_AXES[1]) ** 2 <= 1.0
    inside = np.ones(u.shape, dtype=bool)
    for nx, ny in _TRIANGLE_NORMALS:
        inside &= nx * u + ny * v <= _TRIANGLE_INRADIUS
    return inside


def render(shape, rotation, scale, x, y, brightness, *, size=IMAGE_SIZE, supersample=3):
    """Render a batch of sprites from factor arrays of equal length -> [n, size, size] float32."""
    shape = np.asarray(shape, dtype=np.int64)
    rotation, scale, x, y = (np.asarray(a, dtype=np.float64) for a in (rotation, scale, x, y))
    brightness = np.asarray(brightness, dtype=np.float32)
    n = shape.shape[0]
    m = size * supersample
    # Sub-pixel centres on [-1, 1]; y grows upward so "triangle points up" reads naturally.
    coords = (np.arange(m) + 0.5) / m * 2.0 - 1.0
    gx, gy = np.meshgrid(coords, -coords)
    out = np.empty((n, size, size), dtype=np.float32)
    chunk = 256  # bounds memory: chunk * m * m floats per temporary
    for k in range(len(SHAPES)):
        idx_k = np.flatnonzero(shape == k)
        for s in range(0, idx_k.size, chunk):
            idx = idx_k[s : s + chunk]
            th = np.deg2rad(rotation[idx])[:, None, None]
            sc = scale[idx][:, None, None]
            dx = gx[None] - x[idx][:, None, None]
            dy = gy[None] - y[idx][:, None, None]
            # Rotate the grid by -theta into the shape's own frame, then unscale.
            c, sn = np.cos(th), np.sin(th)
            u = (c * dx + sn * dy) / sc
            v = (-sn * dx + c * dy) / sc
            mask = _shape_mask(k, u, v).astype(np.float32)
            cov = mask.reshape(-1, size, supersample, size, supersample).mean(axis=(2, 4))
            out[idx] = cov * brightness[idx][:, None, None]
    return out


def sample_factors(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), size=n)
    factors = {name: rng.uniform(lo, hi, size=n) for name, (lo, hi) in FACTOR_RANGES.items()}
    return labels, factors


def make_sprites(n: int, seed: int):
    """n sprites from `seed` -> (images [n,1,32,32] float32 in [0,1], labels [n] long,
    factors: dict name -> [n] float64 array in original units)."""
    labels, factors = sample_factors(n, seed)
    images = render(labels, **factors)
    return (
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels).long(),
        factors,
    )


if __name__ == "__main__":
    # Quick look: `python examples/sprites/sprites_data.py out.png` writes a contact sheet.
    import sys

    imgs, labels, _ = make_sprites(64, seed=0)
    grid = imgs.reshape(8, 8, 32, 32).permute(0, 2, 1, 3).reshape(256, 256).numpy()
    path = sys.argv[1] if len(sys.argv) > 1 else "sprites_preview.png"
    from PIL import Image

    Image.fromarray((grid * 255).astype(np.uint8)).resize((512, 512), Image.NEAREST).save(path)
    print(f"wrote {path}; labels: {labels.view(8, 8).tolist()}")
