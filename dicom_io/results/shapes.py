"""Shapes of the flags: where on the source image a flag is, as a closed outline a viewer draws.

- a flagged label: the hot region of the consensus heatmap (the connected region around its peak
  where the saliency is at least half of the peak), scaled from the heatmap's grid to the image's;
- a flagged mask: the largest connected region where the given mask and the model consensus
  disagree.

Outlines follow pixel edges, in DICOM SCOORD image coordinates (PS3.3 C.18.6.1.1: column, row;
0.0\\0.0 is the top left corner of the top left pixel), closed (the first point repeated last),
with collinear points dropped. No DICOM here: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HOT_FRACTION", "largest_component", "hot_region", "region_outline", "scale_outline"]

HOT_FRACTION = 0.5
"""A heatmap pixel is in the hot region when its saliency is at least this fraction of the peak."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (its holes filled); all False when empty."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    labels, n = ndimage.label(m)
    if n == 0:
        return np.zeros_like(m)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)


def hot_region(heat: np.ndarray, fraction: float = HOT_FRACTION) -> np.ndarray:
    """The connected region around the peak of ``heat`` where it reaches ``fraction`` of the peak
    (bool, on the heatmap's grid); all False for a flat or empty map."""
    from scipy import ndimage

    h = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"a heatmap is 2-D, got shape {h.shape}")
    lo, hi = float(h.min()), float(h.max())
    if hi <= lo:
        return np.zeros(h.shape, bool)
    unit = (h - lo) / (hi - lo)
    labels, _ = ndimage.label(unit >= fraction)
    peak = labels[np.unravel_index(int(np.argmax(unit)), unit.shape)]
    return ndimage.binary_fill_holes(labels == peak)


def _loops(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed loops of the boundary edges of ``mask`` (pixel corners as (x, y)), each clockwise on screen."""
    m = np.pad(np.asarray(mask, bool), 1)
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows, cols = np.nonzero(m[1:-1, 1:-1])
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        pr, pc = r + 1, c + 1
        if not m[pr - 1, pc]:
            nxt.setdefault((c, r), []).append((c + 1, r))  # top edge, left to right
        if not m[pr, pc + 1]:
            nxt.setdefault((c + 1, r), []).append((c + 1, r + 1))  # right edge, downwards
        if not m[pr + 1, pc]:
            nxt.setdefault((c + 1, r + 1), []).append((c, r + 1))  # bottom edge, right to left
        if not m[pr, pc - 1]:
            nxt.setdefault((c, r + 1), []).append((c, r))  # left edge, upwards
    loops = []
    while nxt:
        start = min(nxt)
        loop = [start]
        at = start
        while True:
            outs = nxt[at]
            step = outs.pop()
            if not outs:
                del nxt[at]
            if step == start:
                break
            loop.append(step)
            at = step
            if at not in nxt:  # cannot happen for a closed boundary; stop rather than loop forever
                break
        loops.append(loop)
    return loops


def _area(loop: list[tuple[int, int]]) -> float:
    xs = np.array([p[0] for p in loop], float)
    ys = np.array([p[1] for p in loop], float)
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def region_outline(mask: np.ndarray) -> np.ndarray:
    """The outer outline of a bool region as a closed polygon, float (N, 2) of (column, row) pixel-corner
    coordinates, first point repeated last, corners only. Raises ValueError for an empty mask."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"a region is 2-D, got shape {m.shape}")
    if not m.any():
        raise ValueError("an empty region has no outline")
    loop = max(_loops(m), key=_area)
    corners = []
    n = len(loop)
    for i, p in enumerate(loop):
        a, b = loop[i - 1], loop[(i + 1) % n]
        if (p[0] - a[0], p[1] - a[1]) != (b[0] - p[0], b[1] - p[1]):
            corners.append(p)
    corners.append(corners[0])
    return np.asarray(corners, dtype=np.float64)


def scale_outline(points: np.ndarray, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
    """Outline points (column, row) on a (rows, columns) grid ``from_shape`` moved to the grid ``to_shape``
    covering the same image (a heatmap at model resolution onto its source image)."""
    p = np.asarray(points, np.float64).copy()
    p[:, 0] *= to_shape[1] / from_shape[1]
    p[:, 1] *= to_shape[0] / from_shape[0]
    return p
