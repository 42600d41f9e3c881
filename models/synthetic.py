"""Synthetic labelled images whose class is a visible shape in a known place (tests, tuning)."""

from __future__ import annotations

import numpy as np

from models.data import LabelledImages

__all__ = ["shape_mask", "make_shapes"]


def shape_mask(cls: int, size: int) -> np.ndarray:
    """Boolean (size, size) region that defines class ``cls`` (0: top-left square, 1: bottom-right
    disc, 2: top-right bar, 3: bottom-left cross)."""
    yy, xx = np.mgrid[:size, :size]
    q = size // 4
    if cls == 0:
        return (yy >= q // 2) & (yy < q // 2 + q) & (xx >= q // 2) & (xx < q // 2 + q)
    if cls == 1:
        cy = cx = size - q
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (q * 0.6) ** 2
    if cls == 2:
        return (yy >= q // 2) & (yy < q // 2 + q // 2) & (xx >= size - q * 2) & (xx < size - q // 2)
    if cls == 3:
        cy, cx = size - q, q
        horizontal = (np.abs(yy - cy) <= 1) & (np.abs(xx - cx) <= q // 2)
        return horizontal | ((np.abs(xx - cx) <= 1) & (np.abs(yy - cy) <= q // 2))
    raise ValueError(cls)


def make_shapes(n: int, n_classes: int = 2, size: int = 32, seed: int = 0, groups: tuple[str, ...] = ("all",)
                ) -> LabelledImages:
    """n images: smooth noise background + the class shape (with small jitter) at its place."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    imgs = np.empty((n, size, size), dtype=np.float32)
    for i, c in enumerate(labels):
        bg = rng.normal(0.3, 0.08, (size, size))
        m = np.roll(shape_mask(int(c), size), shift=tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        img = bg + m * rng.uniform(0.45, 0.6)
        imgs[i] = np.clip(img, 0, 1)
    return LabelledImages(imgs, labels.astype(np.int64), [f"class{c}" for c in range(n_classes)],
                          [groups[i % len(groups)] for i in range(n)])
