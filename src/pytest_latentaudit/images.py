"""Counterexample pictures: nominal | counterexample strips written as PNG.

A minimal PNG encoder (zlib + struct) keeps this dependency-free; decoder outputs are
``[C, H, W]`` or ``[H, W]`` arrays in [0, 1] (other ranges are min-max scaled).
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np


def _to_hwc(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 1:
        side = int(round(a.size ** 0.5))
        a = a.reshape(side, -1) if side * side == a.size else a.reshape(1, -1)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.min() < 0 or a.max() > 1:
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo if hi > lo else 1.0)
    return a


def strip(images, pad: int = 2, scale: int = 0) -> np.ndarray:
    """Images side by side with a gap, upscaled (nearest) to about 96 px high; uint8 HWC."""
    tiles = [_to_hwc(im) for im in images]
    h = max(t.shape[0] for t in tiles)
    scale = scale or max(1, 96 // h)
    c = max(t.shape[2] for t in tiles)
    tiles = [np.repeat(t, c, axis=2) if t.shape[2] != c else t for t in tiles]
    gap = np.ones((h, pad, c))
    parts = []
    for i, t in enumerate(tiles):
        if t.shape[0] < h:
            t = np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=1.0)
        parts.append(t)
        if i + 1 < len(tiles):
            parts.append(gap)
    out = np.concatenate(parts, axis=1)
    out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    h, w, c = img.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file owner-only; keep an existing file's mode, else rw-r--r--
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_strip(path: Path, images) -> Path:
    write_atomic(path, encode_png(strip(images)))
    return Path(path)
