"""DAVIS palette masks and per-object statistics (pure numpy/Pillow)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image


def davis_palette() -> list[int]:
    """The standard PASCAL VOC / DAVIS palette: index 1 = (128,0,0), 2 = (0,128,0), ..."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


PALETTE = davis_palette()


def save_mask(ids: np.ndarray, path: Path | BinaryIO) -> None:
    """Write an 8-bit palette ("P" mode) PNG: 0 = background, 1..K = objects."""
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(PALETTE)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def encode_mask(ids: np.ndarray) -> bytes:
    """``save_mask``'s PNG as bytes."""
    buf = io.BytesIO()
    save_mask(ids, buf)
    return buf.getvalue()


def object_stats(ids: np.ndarray, num_objects: int) -> list[dict]:
    """Per object 1..K: visible pixel count and bounding box [x0, y0, x1, y1] (inclusive) or None."""
    counts = np.bincount(ids.ravel(), minlength=num_objects + 1)
    stats = []
    for k in range(1, num_objects + 1):
        if counts[k] == 0:
            stats.append({"pixels": 0, "bbox": None})
            continue
        rows = np.flatnonzero((ids == k).any(axis=1))
        cols = np.flatnonzero((ids == k).any(axis=0))
        stats.append({"pixels": int(counts[k]),
                      "bbox": [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]})
    return stats
