"""Pinhole camera math matching Blender's: the camera looks down its -Z axis with +Y up.

Orientation follows ``(look_at - location).to_track_quat('-Z', 'Y')``: -Z tracks the target and
the camera's +Y leans towards world +Z. ``fov`` is Blender's camera angle with sensor fit AUTO,
i.e. it spans the larger image dimension.
"""

from __future__ import annotations

import numpy as np

WORLD_UP = np.array([0.0, 0.0, 1.0])


def look_at_rotation(location: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-from-camera rotation matrices (..., 3, 3); columns are the camera's x, y, z axes."""
    # np.linalg.norm's and np.cross's arithmetic, written out (the same floats; those two
    # functions' argument handling cost more than the arithmetic on a video's frames)
    forward = np.asarray(target, float) - np.asarray(location, float)
    forward /= np.sqrt(np.add.reduce(forward * forward, axis=-1, keepdims=True))
    f0, f1, f2 = forward[..., 0], forward[..., 1], forward[..., 2]
    u0, u1, u2 = WORLD_UP
    rot = np.empty(forward.shape + (3,))  # columns x, y, -forward
    x, y = rot[..., 0], rot[..., 1]
    x[..., 0], x[..., 1], x[..., 2] = f1 * u2 - f2 * u1, f2 * u0 - f0 * u2, f0 * u1 - f1 * u0
    x /= np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True))
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y[..., 0], y[..., 1], y[..., 2] = x1 * f2 - x2 * f1, x2 * f0 - x0 * f2, x0 * f1 - x1 * f0
    np.negative(forward, out=rot[..., 2])
    return rot


def focal_pixels(fov: float, width: int, height: int) -> float:
    return 0.5 * max(width, height) / np.tan(0.5 * fov)


def project(points: np.ndarray, location: np.ndarray, rotation: np.ndarray, fov: float,
            width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points (..., 3) to pixel column, row (origin top-left) and depth.

    ``location``/``rotation`` broadcast against ``points`` (e.g. one camera per frame).
    Depth is the distance along the viewing direction; points behind the camera have depth <= 0.
    """
    rel = np.asarray(points, float) - location
    cam = np.einsum("...ji,...j->...i", rotation, rel)  # R^T @ rel
    depth = -cam[..., 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    f = focal_pixels(fov, width, height)
    col = 0.5 * width + f * cam[..., 0] / safe
    row = 0.5 * height - f * cam[..., 1] / safe
    return col, row, depth
