"""Synthetic images with shapes to segment (tests and ``labelqa demo --task segmentation``).

Every image has a smooth textured background with noise and one to three non-overlapping objects:
class 1 ``disc`` (discs and ellipses, bright), class 2 ``box`` (rectangles, a little darker, striped).
"""

from __future__ import annotations

import numpy as np

from models.seg.data import SegDataset

__all__ = ["make_shape_masks", "write_shape_dataset", "SHAPE_CLASSES"]

SHAPE_CLASSES = ("disc", "box")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.normal(0.0, 1.0, (size, size)), sigma=max(scale, 1), mode="wrap")


def _object(rng: np.random.Generator, cls: int, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    r = rng.uniform(0.09, 0.17) * size
    cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
    if cls == 1:
        ry, rx = r * rng.uniform(0.75, 1.25), r * rng.uniform(0.75, 1.25)
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(ang) + dx * np.sin(ang), -dy * np.sin(ang) + dx * np.cos(ang)
        return (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
    hy, hx = r * rng.uniform(0.7, 1.1), r * rng.uniform(0.7, 1.1)
    return (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)


def make_shape_masks(n: int, size: int = 64, seed: int = 0, n_classes: int = 2) -> SegDataset:
    """``n`` images (``size`` x ``size``) with label maps: 1..3 objects each, classes drawn from the first
    ``n_classes`` of :data:`SHAPE_CLASSES`; deterministic in ``seed``."""
    if not 1 <= n_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"n_classes must be 1..{len(SHAPE_CLASSES)}, not {n_classes}")
    if size < 16:
        raise ValueError(f"size must be >= 16, not {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    images = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        tex = _smooth_noise(rng, size, size // 10)
        bg = 0.3 + 0.06 * tex / (tex.std() + 1e-9)
        lab = np.zeros((size, size), np.int64)
        n_obj = int(rng.integers(1, 4))
        for j in range(n_obj):
            cls = 1 + (j + i) % n_classes if j < n_classes else int(rng.integers(1, n_classes + 1))
            for _try in range(20):
                m = _object(rng, cls, size, yy, xx)
                grown = m | np.roll(m, 2, 0) | np.roll(m, -2, 0) | np.roll(m, 2, 1) | np.roll(m, -2, 1)
                if not np.any(grown & (lab > 0)):
                    lab[m] = cls
                    break
        img = bg.copy()
        img[lab == 1] += rng.uniform(0.52, 0.6)
        stripes = 0.05 * np.sin(xx * 1.3 + rng.uniform(0, 6))
        img[lab == 2] += rng.uniform(0.27, 0.32) + stripes[lab == 2]
        img += rng.normal(0.0, 0.04, img.shape)
        images[i] = np.clip(img, 0.0, 1.0)
        masks[i] = lab
    return SegDataset(images, masks, list(SHAPE_CLASSES[:n_classes]), [f"shape{i:04d}" for i in range(n)])


def write_shape_dataset(out, n: int, size: int = 64, seed: int = 0, n_classes: int = 2):
    """Write :func:`make_shape_masks` as a segmentation data set folder: ``out/images/*.png`` (8-bit grey),
    ``out/masks/*.png`` (label values 1..K) and ``out/classes.txt``; returns the data set."""
    from pathlib import Path

    from PIL import Image

    d = make_shape_masks(n, size, seed, n_classes)
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for stem, img, m in zip(d.stems, d.images, d.masks, strict=True):
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    (root / "classes.txt").write_text("\n".join(d.class_names) + "\n")
    return d
