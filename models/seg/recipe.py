"""Training recipes that fit the data: the model grid and the number of epochs, chosen from the masks.

A first run on a new data set should not start from members that cannot segment it. Two rules,
fixed before the benchmark's evaluation runs (docs/segmentation.md) and applied when the user gives
no ``--image-size`` / ``--epochs``:

- **grid**: the smallest size of :data:`SIZE_LADDER` at which the thin end of the structures
  (the 10th percentile over non-empty masks of the hydraulic diameter ``4 x area / perimeter``,
  measured on the native grid and scaled by ``size / min(H, W)``) is at least :data:`MIN_THICKNESS_PX`
  pixels across, capped by the largest native short side and by :data:`MAX_SIZE` (CPU cost). The
  hydraulic diameter is a disc's diameter and twice a vessel's width, so one rule covers blobs and
  thin trees.
- **epochs**: as many as give each member about :data:`TARGET_STEPS` optimiser steps with the
  trainer's own batch rule (``models.seg.train``: the batch shrinks until an epoch has
  ``min_steps_per_epoch`` steps), within [:data:`MIN_EPOCHS`, :data:`MAX_EPOCHS`]: small sets get more
  epochs, large ones fewer, and the cost stays near ``TARGET_STEPS x batch`` images per member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SegRecipe", "seg_recipe", "hydraulic_diameter", "choose_image_size", "choose_epochs", "SIZE_LADDER",
           "MIN_THICKNESS_PX", "MAX_SIZE", "TARGET_STEPS", "MIN_EPOCHS", "MAX_EPOCHS"]

SIZE_LADDER = (64, 96, 128, 160, 192, 256)
MIN_THICKNESS_PX = 6.0
"""The thin end of the structures must be this many model pixels across."""
MAX_SIZE = 256
TARGET_STEPS = 300
"""Optimiser steps per member fit (the tiny members came within a few Dice points of their plateau on
one BUSI fold at 270 steps, and on HC18 at 150: docs/segmentation.md)."""
MIN_EPOCHS, MAX_EPOCHS = 10, 80


@dataclass(frozen=True)
class SegRecipe:
    """What the rules chose, and why (one line each, for the results and the log)."""

    image_size: int
    epochs: int
    steps_per_epoch: int
    size_reason: str
    epochs_reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def hydraulic_diameter(mask: np.ndarray) -> float | None:
    """``4 x area / perimeter`` of a bool mask in pixels (perimeter: pixels with a background 4-neighbour);
    None for an empty mask."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask, bool)
    if not m.any():
        return None
    edge = m & ~binary_erosion(m, border_value=0)
    return 4.0 * float(m.sum()) / max(float(edge.sum()), 1.0)


def choose_image_size(masks: Sequence[np.ndarray], n_classes: int | None = None) -> tuple[int, str]:
    """The model grid for native label maps ``masks`` (each (H, W), 0 background, 1..K), by the module's rule."""
    rel = []
    for lab in masks:
        lab = np.asarray(lab)
        k = int(lab.max(initial=0)) if n_classes is None else n_classes
        for c in range(1, k + 1):
            d = hydraulic_diameter(lab == c)
            if d is not None:
                rel.append(d / min(lab.shape))
    cap = min(MAX_SIZE, max((min(np.asarray(m).shape) for m in masks), default=MAX_SIZE))
    ladder = [s for s in SIZE_LADDER if s <= cap] or [min(SIZE_LADDER)]
    if not rel:
        return ladder[0], "no structure in any mask: the smallest grid"
    q10 = float(np.quantile(rel, 0.1))
    for s in ladder:
        if q10 * s >= MIN_THICKNESS_PX:
            return s, (f"thin end of the structures (10th percentile of 4 x area / perimeter) {q10 * s:.1f} px "
                       f"across at {s} px (>= {MIN_THICKNESS_PX:g})")
    s = ladder[-1]
    return s, (f"thin end of the structures only {q10 * s:.1f} px across at {s} px, the largest grid allowed "
               f"(cap {cap}: native size / CPU)")


def choose_epochs(n_train: int, batch_size: int = 16, min_steps_per_epoch: int = 8) -> tuple[int, int, str]:
    """(epochs, steps per epoch, reason) for ``n_train`` training images with the trainer's batch rule."""
    bs = max(2, min(batch_size, max(n_train, 1) // min_steps_per_epoch))
    steps = max(1, math.ceil(n_train / bs))
    ep = int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps))))
    return ep, steps, (f"{steps} steps per epoch (batch {bs}, {n_train} training images): "
                       f"{ep} epochs ~ {ep * steps} steps")


def seg_recipe(masks: Sequence[np.ndarray], *, n_images: int | None = None, folds: int = 4,
               batch_size: int = 16, min_steps_per_epoch: int = 8, n_classes: int | None = None,
               image_size: int | None = None, epochs: int | None = None) -> SegRecipe:
    """The grid and epochs for a data set (native label maps ``masks``); a value the user gave is kept.

    ``n_images`` counts the model's units (e.g. tiles) when they differ from ``len(masks)``; with
    ``folds`` K each member trains on (K - 1) / K of them (K <= 1: on all)."""
    n = len(masks) if n_images is None else n_images
    if image_size is None:
        size, sr = choose_image_size(masks, n_classes)
    else:
        size, sr = int(image_size), "given"
    n_train = n if folds <= 1 else n - n // folds
    ep, steps, er = choose_epochs(n_train, batch_size, min_steps_per_epoch)
    if epochs is not None:
        ep, er = int(epochs), "given"
    return SegRecipe(size, ep, steps, sr, er)
