"""Quality gate: every object visible in frame 0 and in view for most frames.

``geometric_gate`` is the cheap pre-render check on bounding spheres; ``mask_gate`` checks the
rendered masks (pixel counts per object and frame).
"""

from __future__ import annotations

import numpy as np

from farm.model.camera import focal_pixels, look_at_rotation, project
from farm.model.presets import QualityGate
from farm.model.spec import VideoSpec, eval_poly

NEAR = 0.1
MAX_CHECKED_FRAMES = 64  # the visibility fraction is estimated on at most this many frames
OCCLUDER_SHRINK = 0.5  # a nearer object's sphere counts as solid only within half its radius


def object_discs(spec: VideoSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Projected bounding discs per (object, checked frame): column, row, radius px, depth.

    Checked frames are frame 0 and evenly spaced frames up to MAX_CHECKED_FRAMES.
    """
    t = spec.frame_times()
    if len(t) > MAX_CHECKED_FRAMES:
        t = t[np.linspace(0, len(t) - 1, MAX_CHECKED_FRAMES).round().astype(int)]
    width, height = spec.resolution
    count = len(spec.objects)
    polys = [spec.camera.location_poly, spec.camera.look_at_poly,
             *(o.location_poly for o in spec.objects), *(o.scale_poly for o in spec.objects)]
    try:  # all polys of one degree (generated specs): eval_poly's arithmetic in one matmul
        coeffs = np.asarray(polys, dtype=float)  # (2 + 2K, terms, 3)
    except ValueError:
        coeffs = None
    if coeffs is not None and coeffs.ndim == 3:
        values = (t[..., None] ** np.arange(coeffs.shape[1])) @ coeffs
    else:
        values = np.stack([eval_poly(p, t) for p in polys])
    cam_loc = values[0]
    rot = look_at_rotation(cam_loc, values[1])
    centers = values[2:2 + count]  # (K, F, 3)
    scales = np.abs(values[2 + count:]).max(axis=-1)
    radius = scales * np.array([o.radius for o in spec.objects])[:, None]
    col, row, depth = project(centers, cam_loc, rot, spec.camera.fov, width, height)
    rad_px = focal_pixels(spec.camera.fov, width, height) * radius / np.maximum(depth, NEAR)
    return col, row, rad_px, depth


def _visible_area(col, row, rad, depth, width: int, height: int) -> np.ndarray:
    """Approximate on-screen pixel area of discs (disc area times the clipped-box fraction)."""
    x0, x1 = np.clip(col - rad, 0, width), np.clip(col + rad, 0, width)
    y0, y1 = np.clip(row - rad, 0, height), np.clip(row + rad, 0, height)
    box = (2 * rad) ** 2
    frac = np.where(box > 0, (x1 - x0) * (y1 - y0) / np.maximum(box, 1e-9), 0)
    return np.where(depth > NEAR, np.pi * rad**2 * frac, 0.0)


def geometric_gate(spec: VideoSpec, gate: QualityGate) -> str | None:
    """None if the spec passes, else the reason it is rejected."""
    width, height = spec.resolution
    col, row, rad, depth = object_discs(spec)
    area = _visible_area(col, row, rad, depth, width, height)
    min_px = gate.min_pixels(width, height)
    # occluded[k, m]: object m is nearer than k in frame 0 and its inner disc covers k's disc
    c, r, d, rad0 = col[:, 0], row[:, 0], depth[:, 0], rad[:, 0]
    gap = np.hypot(c[:, None] - c[None, :], r[:, None] - r[None, :]) + rad0[:, None]
    occluded = (gap <= OCCLUDER_SHRINK * rad0[None, :]) & (d[None, :] > NEAR) & \
        (d[None, :] < d[:, None])
    in_view = (area > 0).mean(axis=1)
    for k in range(len(spec.objects)):
        if area[k, 0] < min_px:
            return f"object {k + 1} is out of view in frame 0"
        if occluded[k].any():
            return f"object {k + 1} is hidden behind object {int(np.argmax(occluded[k])) + 1} in frame 0"
        if in_view[k] < gate.min_visible_frames_fraction:
            return f"object {k + 1} is in view in only {in_view[k]:.0%} of frames"
    return None


def mask_gate(pixel_counts: np.ndarray, gate: QualityGate, width: int, height: int) -> str | None:
    """Check rendered masks: ``pixel_counts`` is (frames, objects) visible pixels per object."""
    min_px = gate.min_pixels(width, height)
    for k, count in enumerate(pixel_counts[0]):
        if count < min_px:
            return f"object {k + 1} has {int(count)} pixels in frame 0 (minimum {min_px})"
    visible = (pixel_counts > 0).mean(axis=0)
    for k, frac in enumerate(visible):
        if frac < gate.min_visible_frames_fraction:
            return f"object {k + 1} is visible in only {frac:.0%} of frames"
    return None
