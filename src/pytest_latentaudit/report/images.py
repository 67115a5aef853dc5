"""Counterexample pictures: strips from the nominal decoding to the counterexample, as PNG.

``strip`` puts decoder outputs (``[C, H, W]`` or ``[H, W]`` arrays in [0, 1]; other ranges are
min-max scaled) side by side; a minimal PNG encoder (zlib + struct) keeps that dependency-free.
With Pillow installed (the ``plots`` / ``examples`` extras) a strip can carry labels: a title
line and, under each frame, its offset along the direction and what the model predicted there,
frames whose prediction differs from the expected class in red with a red border::

    frames = frame_labels(offsets, predicted, expected)     # one label per frame
    save_strip(path, images, frames, title="seed 4 along 'pose': expected 3")

or in one call, returning the per-frame data for the spec sheet::

    path, frames = save_counterexample_strip(path, images, offsets, predicted, expected, direction="pose")

Without Pillow the strip is written unlabelled (the HTML report labels its two ends).
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.files import write_atomic

__all__ = ["strip", "encode_png", "write_atomic", "save_strip", "frame_labels", "save_counterexample_strip",
           "pillow_available"]

#: a label: text (lines separated by newlines), or ``(text, bad)`` where ``bad`` marks the
#: frame (red text and border: the prediction differs from the expected class)
Label = Union[str, Tuple[str, bool], dict]

TEXT, BAD, MUTED = (31, 35, 40), (200, 40, 30), (90, 98, 112)


def _to_hwc(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 1:
        side = int(round(a.size ** 0.5))
        a = a.reshape(side, -1) if side * side == a.size else a.reshape(1, -1)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 2:
        a = a[:, :, None]
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    if a.min() < 0 or a.max() > 1:
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo if hi > lo else 1.0)
    return a


def _tiles(images, scale: int = 0) -> Tuple[List[np.ndarray], int]:
    tiles = [_to_hwc(im) for im in images]
    if not tiles:
        raise ValueError("a strip needs at least one image")
    h = max(t.shape[0] for t in tiles)
    scale = scale or max(1, 96 // h)
    c = max(t.shape[2] for t in tiles)
    out = []
    for t in tiles:
        if t.shape[2] != c:
            t = np.repeat(t, c, axis=2)
        if t.shape[0] < h:
            t = np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=1.0)
        out.append(t)
    return out, scale


def strip(images, pad: int = 2, scale: int = 0) -> np.ndarray:
    """Images side by side with a gap, upscaled (nearest) to about 96 px high; uint8 HWC."""
    tiles, scale = _tiles(images, scale)
    c = tiles[0].shape[2]
    h = tiles[0].shape[0]
    gap = np.ones((h, pad, c))
    parts = []
    for i, t in enumerate(tiles):
        parts.append(t)
        if i + 1 < len(tiles):
            parts.append(gap)
    out = np.concatenate(parts, axis=1)
    out = np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


# ------------------------------------------------------------------ labels (Pillow)
def pillow_available() -> bool:
    try:
        import PIL.ImageDraw  # noqa: F401
    except ImportError:
        return False
    return True


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _norm_label(label: Label) -> Tuple[str, bool]:
    if isinstance(label, dict):
        return str(label.get("text", "")), bool(label.get("bad", False))
    if isinstance(label, tuple):
        return str(label[0]), bool(label[1])
    return ("" if label is None else str(label)), False


def labelled_strip(images, labels: Optional[Sequence[Label]] = None, *, title: Optional[str] = None,
                   pad: int = 2, scale: int = 0) -> np.ndarray:
    """``strip`` with a title line above and one label under each frame (Pillow); a frame whose
    label is marked bad gets a red border and red text. Without Pillow: the plain strip."""
    tiles, scale = _tiles(images, scale)
    if not pillow_available() or (not labels and not title):
        return strip(images, pad=pad, scale=scale)
    from PIL import Image, ImageDraw

    labels = [_norm_label(x) for x in (labels or [])]
    labels += [("", False)] * (len(tiles) - len(labels))
    big = [(np.clip(np.repeat(np.repeat(t, scale, 0), scale, 1), 0, 1) * 255).round().astype(np.uint8)
           for t in tiles]
    th, tw = big[0].shape[:2]
    fs = 12
    font, tfont = _font(fs), _font(fs + 1)
    gap = 8
    # frames at least wide enough for their labels
    probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))

    def text_w(s, f):
        box = probe.multiline_textbbox((0, 0), s, font=f, spacing=2) if s else (0, 0, 0, 0)
        return box[2] - box[0], box[3] - box[1]

    cell = max([tw] + [text_w(t, font)[0] + 6 for t, _ in labels])
    label_h = max([text_w(t, font)[1] for t, _ in labels] + [fs]) + 8
    title_h = (text_w(title, tfont)[1] + 10) if title else 0
    border = 2
    width = len(big) * (cell + 2 * border) + (len(big) - 1) * gap + 8
    if title:
        width = max(width, text_w(title, tfont)[0] + 12)
    height = title_h + th + 2 * border + label_h + 6
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill=TEXT, font=tfont)
    x = 4
    for tile, (text, bad) in zip(big, labels):
        img = Image.fromarray(tile[:, :, 0] if tile.shape[2] == 1 else tile[:, :, :3])
        ox = x + border + (cell - tw) // 2
        oy = title_h + border
        if bad:
            draw.rectangle([ox - border, oy - border, ox + tw + border - 1, oy + th + border - 1], fill=BAD)
        canvas.paste(img.convert("RGB"), (ox, oy))
        if text:
            w, _ = text_w(text, font)
            draw.multiline_text((x + border + (cell - w) // 2, title_h + th + 2 * border + 4), text,
                                fill=BAD if bad else TEXT, font=font, spacing=2, align="center")
        x += cell + 2 * border + gap
    return np.asarray(canvas, dtype=np.uint8)


def _fmt_offset(off) -> str:
    vals = [float(v) for v in np.atleast_1d(np.asarray(off, dtype=np.float64)).reshape(-1)]
    if len(vals) == 1:
        return f"{vals[0]:+.3g}"
    if len(vals) <= 2:
        return "(" + ", ".join(f"{v:+.2g}" for v in vals) + ")"
    return f"|t|={math.sqrt(sum(v * v for v in vals)):.3g}"


def frame_labels(offsets, predicted=None, expected=None) -> List[dict]:
    """One label per frame: its offset along the direction (``t``, latent units) and, when
    ``predicted`` is given, the model's class there; ``bad`` when it differs from ``expected``.
    Returns ``[{"offset": [...], "predicted": int|None, "bad": bool, "text": str}]`` (JSON-ready)."""
    offs = [np.atleast_1d(np.asarray(o, dtype=np.float64)).reshape(-1) for o in offsets]
    preds = [None] * len(offs) if predicted is None else [None if p is None else int(p) for p in predicted]
    if len(preds) != len(offs):
        raise ValueError(f"{len(offs)} offsets but {len(preds)} predictions")
    out = []
    for i, (o, p) in enumerate(zip(offs, preds)):
        bad = p is not None and expected is not None and p != int(expected)
        lines = ["t=" + _fmt_offset(o) if i else "nominal"]
        if p is not None:
            lines.append(f"pred {p}")
        out.append({"offset": [float(v) for v in o], "predicted": p, "bad": bool(bad), "text": "\n".join(lines)})
    return out


# ------------------------------------------------------------------ PNG
def encode_png(img: np.ndarray) -> bytes:
    h, w, c = img.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))




def save_strip(path: Path, images, labels: Optional[Sequence[Label]] = None, *, title: Optional[str] = None) -> Path:
    """Write the strip of ``images`` as a PNG (atomically); with ``labels`` / ``title`` and Pillow,
    labelled (``labelled_strip``)."""
    img = labelled_strip(images, labels, title=title) if (labels or title) else strip(images)
    write_atomic(path, encode_png(img))
    return Path(path)


def save_counterexample_strip(path: Path, images, offsets, predicted=None, expected=None, *,
                              direction: Optional[str] = None, seed_index: Optional[int] = None) -> Tuple[Path, list]:
    """The counterexample strip in one call: ``images`` decoded at ``offsets`` (nominal first,
    the counterexample last), labelled with each frame's offset and predicted class against
    ``expected``. Returns ``(path, frames)``; ``frames`` is ``frame_labels``' JSON list without
    the text, for the counterexample record (``"frames"``), so a report can label the strip too."""
    frames = frame_labels(offsets, predicted, expected)
    bits = []
    if seed_index is not None:
        bits.append(f"seed {seed_index}")
    if direction:
        bits.append(f"along {direction!r}")
    title = " ".join(bits)
    if expected is not None:
        title = (title + ": " if title else "") + f"expected {int(expected)}"
    p = save_strip(path, images, [(f["text"], f["bad"]) for f in frames], title=title or None)
    return p, [{k: f[k] for k in ("offset", "predicted", "bad")} for f in frames]
