"""Minimum distance between polynomial paths over t in [0, 1], vectorised over path pairs."""

from __future__ import annotations

import numpy as np

GRID = np.linspace(0.0, 1.0, 257)
MAX_TERMS = 9
GRID_POWERS = GRID[:, None] ** np.arange(MAX_TERMS)  # (grid, terms)


def min_path_distances(path: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """Minimum over t in [0, 1] of |path(t) - other(t)| for each of ``others``.

    Paths are coefficient rows (lowest degree first, one column per axis). The squared distance
    is sampled on a 257-point grid for all pairs at once, then refined by one parabolic step
    around each grid minimum (within ~1e-7 of brute force on these smooth degree-8 polynomials).
    """
    if not others:
        return np.zeros(0)
    # The same float operations as before (np.square summed over the last axis: numpy adds a
    # length-3 axis left to right), in fewer and cheaper numpy calls: no slow reduction over a
    # tiny axis, row minima and neighbours by flat indexing.
    count, size = len(others), GRID.size
    try:
        stacked = np.asarray(others, dtype=float)
    except ValueError:  # paths of different degrees
        stacked = None
    if stacked is not None and stacked.ndim == 3 and stacked.shape[1] >= len(path):
        terms = stacked.shape[1]
        diff = stacked + 0.0  # as the zeros the other paths were added to (-0.0 becomes 0.0)
    else:
        terms = max(len(path), *(len(o) for o in others))
        diff = np.zeros((count, terms, 3))
        for k, other in enumerate(others):
            diff[k, : len(other)] += other
    if len(path) == terms:
        diff -= path
    else:
        diff[:, : len(path)] -= path
    e = GRID_POWERS[:, :terms] @ diff  # (k, grid, 3)
    e *= e
    flat = (e[..., 0] + e[..., 1] + e[..., 2]).reshape(-1)  # squared distance, (k, grid) rows
    rows = np.arange(0, count * size, size)
    first = flat.reshape(count, size).argmin(axis=1)
    lowest = flat[rows + first]  # the row minima
    best = np.minimum(np.maximum(first, 1), size - 2)
    at = best + rows
    left, mid, right = flat[at - 1], flat[at], flat[at + 1]
    curvature = left - 2 * mid + right
    bowl = curvature > 0
    shift = np.where(bowl, 0.5 * (left - right) / np.where(bowl, curvature, 1), 0)
    h = GRID[1] - GRID[0]
    t = np.minimum(np.maximum(GRID[best] + np.minimum(np.maximum(shift, -1), 1) * h, 0.0), 1.0)
    r = np.einsum("kt,ktc->kc", t[:, None] ** np.arange(terms), diff)
    rx, ry, rz = r[:, 0], r[:, 1], r[:, 2]
    return np.sqrt(np.minimum(rx * rx + ry * ry + rz * rz, lowest))
