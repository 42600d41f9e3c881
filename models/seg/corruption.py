"""Planted mask errors: the six ways ``labelqa evaluate --task segmentation``, the demo and tests corrupt a mask.

Each operation changes one class of a label map (0 background, 1..K classes) by a visible amount and
maps to the :class:`~models.verdict.MaskErrorKind` the detector should report:

==============  ======================  =====================================================
operation       kind                    what it does
==============  ======================  =====================================================
erode           boundary_too_tight      erode one class (smallest disc radius removing >= 30%)
dilate          boundary_too_loose      dilate one class into background (>= 30% more area)
shift           shifted                 move one class by 8-15% of the image size
drop_component  missing_structure       delete one connected component (larger ones likelier)
add_blob        spurious_structure      paint an ellipse (r 10-16% of the size, >= 30% of the class) on background
wrong_class     wrong_segment_type      relabel one component as another class (K >= 2 only)
==============  ======================  =====================================================

Label corruptions (class flips) live in ``models.corruption``, which also owns the allowed rate range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.corruption import check_noise_rate
from models.verdict import MaskErrorKind

__all__ = ["CORRUPTIONS", "DEFAULT_KINDS", "MaskCorruption", "corrupt_mask", "corrupt_masks", "applicable"]

CORRUPTIONS: dict[str, MaskErrorKind] = {
    "erode": MaskErrorKind.BOUNDARY_TOO_TIGHT,
    "dilate": MaskErrorKind.BOUNDARY_TOO_LOOSE,
    "shift": MaskErrorKind.SHIFTED,
    "drop_component": MaskErrorKind.MISSING_STRUCTURE,
    "add_blob": MaskErrorKind.SPURIOUS_STRUCTURE,
    "wrong_class": MaskErrorKind.WRONG_SEGMENT_TYPE,
}
"""Corruption operation -> the kind of error it plants."""

DEFAULT_KINDS = tuple(CORRUPTIONS)
MIN_CHANGE = 0.3
"""Erosion and dilation change at least this share of the class's area (when the structure allows)."""


@dataclass(frozen=True)
class MaskCorruption:
    """One planted error: which mask, which operation, the kind, the class changed, how many pixels."""

    index: int
    op: str
    kind: MaskErrorKind
    class_index: int
    changed_pixels: int

    def to_row(self) -> dict:
        return {"index": self.index, "op": self.op, "kind": str(self.kind), "class_index": self.class_index,
                "changed_pixels": self.changed_pixels}


def _disc(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy * yy + xx * xx <= r * r


def _present(mask: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(mask) if c > 0]


def applicable(mask: np.ndarray, op: str, n_classes: int) -> bool:
    """Whether ``op`` can change ``mask`` (erode, dilate, shift, drop_component and wrong_class need a structure)."""
    if op not in CORRUPTIONS:
        raise ValueError(f"unknown mask corruption {op!r}; one of {', '.join(CORRUPTIONS)}")
    if op == "add_blob":
        return bool(np.any(mask == 0))
    if op == "wrong_class":
        return n_classes >= 2 and bool(_present(mask))
    return bool(_present(mask))


def _erode(b: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    area, out = b.sum(), b
    for r in range(1, max(2, min(b.shape) // 12) + 1):
        e = binary_erosion(b, structure=_disc(r), border_value=1)
        if not e.any():
            break
        out = e
        if area - e.sum() >= MIN_CHANGE * area:
            break
    return out if out is not b else binary_erosion(b, structure=_disc(1), border_value=1)


def _dilate(b: np.ndarray, free: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    area, out = b.sum(), b
    for r in range(1, max(2, min(b.shape) // 12) + 1):
        out = binary_dilation(b, structure=_disc(r)) & (free | b)
        if out.sum() - area >= MIN_CHANGE * area:
            break
    return out


def _components(b: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy.ndimage import label

    lab, n = label(b, structure=np.ones((3, 3), bool))
    return lab, int(n)


def _ellipse(shape: tuple[int, int], rng: np.random.Generator, area: int = 0) -> np.ndarray:
    h, w = shape
    r = min(max(rng.uniform(0.1, 0.16) * min(h, w), np.sqrt(MIN_CHANGE * area / np.pi)), 0.2 * min(h, w))
    ry, rx = max(r * rng.uniform(0.7, 1.3), 1.5), max(r * rng.uniform(0.7, 1.3), 1.5)
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _apply(mask: np.ndarray, op: str, rng: np.random.Generator, n_classes: int) -> tuple[np.ndarray, int]:
    out = mask.copy()
    if op == "add_blob":
        cls = int(rng.integers(1, n_classes + 1))
        from scipy.ndimage import binary_dilation

        near = binary_dilation(mask > 0, structure=_disc(2))
        area = int((mask == cls).sum())
        blob = _ellipse(mask.shape, rng, area)
        for _ in range(40):
            if not np.any(blob & near):
                break
            blob = _ellipse(mask.shape, rng, area)
        out[blob & (mask == 0)] = cls
        return out, cls
    cls = int(rng.choice(_present(mask)))
    b = mask == cls
    if op == "erode":
        out[b & ~_erode(b)] = 0
    elif op == "dilate":
        out[_dilate(b, mask == 0) & ~b] = cls
    elif op == "shift":
        h, w = mask.shape
        mag = max(2.0, rng.uniform(0.08, 0.15) * min(h, w))
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = int(round(mag * np.sin(ang))), int(round(mag * np.cos(ang)))
        moved = np.zeros_like(b)
        ys, xs = np.nonzero(b)
        ys, xs = ys + dy, xs + dx
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        moved[ys[ok], xs[ok]] = True
        out[b] = 0
        out[moved & (out == 0)] = cls
    elif op in ("drop_component", "wrong_class"):
        lab, n = _components(b)
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
        comp = 1 + int(rng.choice(n, p=areas / areas.sum()))
        if op == "drop_component":
            out[lab == comp] = 0
        else:
            others = [c for c in range(1, n_classes + 1) if c != cls]
            out[lab == comp] = int(rng.choice(others))
    return out, cls


def corrupt_mask(mask: np.ndarray, kind: str, rng: np.random.Generator, *, n_classes: int | None = None) -> np.ndarray:
    """A corrupted copy of one label map (0 background, 1..K).

    Parameters
    ----------
    mask : (H, W) int label map.
    kind : an operation of :data:`CORRUPTIONS` (``erode``, ``dilate``, ``shift``, ``drop_component``,
        ``add_blob``, ``wrong_class``).
    rng : the generator that draws the class, component, radius, offset.
    n_classes : K (default: the largest label in the mask, at least 1).

    Raises
    ------
    ValueError
        An unknown operation, or one that cannot change this mask (e.g. erode an empty mask).
    """
    m = np.asarray(mask, dtype=np.int64)
    k = max(int(m.max(initial=0)), 1) if n_classes is None else int(n_classes)
    if not applicable(m, kind, k):
        raise ValueError(f"mask corruption {kind!r} cannot change this mask (classes present: {_present(m)}, K={k})")
    return _apply(m, kind, rng, k)[0]


def corrupt_masks(masks: np.ndarray, rate: float, kinds: tuple[str, ...] | list[str] = DEFAULT_KINDS, seed: int = 0,
                  *, n_classes: int | None = None) -> tuple[np.ndarray, list[MaskCorruption]]:
    """Corrupt exactly ``round(rate * N)`` label maps, the operations taken in turn from ``kinds``.

    A mask an operation cannot change gets the next operation that can (the record says which was
    applied); a mask none can change is replaced by another. ``wrong_class`` is left out with one class.

    Returns
    -------
    (corrupted label maps (N, H, W), records sorted by index)
    """
    check_noise_rate(rate)
    masks = np.asarray(masks, dtype=np.int64)
    k = max(int(masks.max(initial=0)), 1) if n_classes is None else int(n_classes)
    ops = [o for o in kinds if o != "wrong_class" or k >= 2]
    for o in kinds:
        if o not in CORRUPTIONS:
            raise ValueError(f"unknown mask corruption {o!r}; one of {', '.join(CORRUPTIONS)}")
    if not ops:
        raise ValueError(f"none of the corruptions {list(kinds)} applies to masks with {k} class(es)")
    rng = np.random.default_rng(seed + 2_000_029)
    n_target = int(round(rate * len(masks)))
    out = masks.copy()
    records: list[MaskCorruption] = []
    for i in rng.permutation(len(masks)):
        if len(records) == n_target:
            break
        want = len(records) % len(ops)
        for j in range(len(ops)):
            op = ops[(want + j) % len(ops)]
            if applicable(masks[i], op, k):
                new, cls = _apply(masks[i], op, rng, k)
                changed = int(np.sum(new != masks[i]))
                if changed:
                    out[i] = new
                    records.append(MaskCorruption(int(i), op, CORRUPTIONS[op], cls, changed))
                    break
    return out, sorted(records, key=lambda r: r.index)
