"""Planted 3-D mask errors: how ``labelqa evaluate --task segmentation --dims 3``, tests and the detector's
simulations corrupt a segment of a volume.

Each operation changes one segment of a label map (Z, Y, X) (0 background, 1..K) by a visible
amount and maps to the :class:`~models.verdict.MaskErrorKind` the detector should report. Sizes are
relative to the structure (its extent and volume), so the same error is as visible on a
hippocampus as on a liver; morphology uses ellipsoids in mm, so thick slices are respected.

==============  ======================  ===========================================================
operation       kind                    what it does
==============  ======================  ===========================================================
erode           boundary_too_tight      erode the segment (smallest ellipsoid removing >= 30%)
dilate          boundary_too_loose      dilate it into background (>= 30% more volume)
shift           shifted                 move it in-plane by 15-30% of its extent in that direction
shift_slices    shifted_slices          move it across slices by 12-25% of its slice extent (>= 2)
drop_slices     missing_slices          erase a run of slices holding 25-40% of it: at one end, or a gap
extra_slices    extra_slices            continue its cross-section near one end past it (+25-40%, >= 2 slices)
drop_component  missing_structure       delete one 3-D connected component (larger ones likelier)
add_blob        spurious_structure      paint an ellipsoid (>= 30% of the segment's volume) apart from it
wrong_class     wrong_segment_type      relabel one component as another segment (K >= 2 only)
==============  ======================  ===========================================================

The binary operations (:func:`corrupt_binary`) are what the detector corrupts its consensus with to
learn its cut and its Dice predictor without ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.corruption import check_noise_rate
from models.verdict import MaskErrorKind
from models.volume.data import Spacing

__all__ = ["VOLUME_CORRUPTIONS", "DEFAULT_VOLUME_KINDS", "BINARY_OPS", "VolumeCorruption", "applicable_volume",
           "corrupt_binary", "corrupt_volume", "corrupt_volumes", "slice_extent", "shift_mask"]

VOLUME_CORRUPTIONS: dict[str, MaskErrorKind] = {
    "erode": MaskErrorKind.BOUNDARY_TOO_TIGHT,
    "dilate": MaskErrorKind.BOUNDARY_TOO_LOOSE,
    "shift": MaskErrorKind.SHIFTED,
    "shift_slices": MaskErrorKind.SHIFTED_SLICES,
    "drop_slices": MaskErrorKind.MISSING_SLICES,
    "extra_slices": MaskErrorKind.EXTRA_SLICES,
    "drop_component": MaskErrorKind.MISSING_STRUCTURE,
    "add_blob": MaskErrorKind.SPURIOUS_STRUCTURE,
    "wrong_class": MaskErrorKind.WRONG_SEGMENT_TYPE,
}
"""Corruption operation -> the kind of error it plants."""

DEFAULT_VOLUME_KINDS = tuple(VOLUME_CORRUPTIONS)
BINARY_OPS = tuple(o for o in VOLUME_CORRUPTIONS if o != "wrong_class")
"""The operations that need only the segment itself (``wrong_class`` needs another segment)."""
MIN_CHANGE = 0.3
"""Erosion, dilation and blobs change at least this share of the segment's volume (when it allows)."""

_CONN = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class VolumeCorruption:
    """One planted error: which case, which operation, the kind, the segment changed, how many voxels."""

    index: int
    op: str
    kind: MaskErrorKind
    class_index: int
    changed_voxels: int

    def to_row(self) -> dict:
        return {"index": self.index, "op": self.op, "kind": str(self.kind), "class_index": self.class_index,
                "changed_voxels": self.changed_voxels}


def slice_extent(b: np.ndarray) -> tuple[int, int] | None:
    """(first slice, last slice + 1) holding any of ``b``, or None when empty."""
    zs = np.flatnonzero(b.any(axis=(1, 2)))
    return (int(zs[0]), int(zs[-1]) + 1) if len(zs) else None


def _ellipsoid(r_mm: float, spacing: Spacing) -> np.ndarray:
    h = [int(np.floor(r_mm / s)) for s in spacing]
    zz, yy, xx = np.mgrid[-h[0]:h[0] + 1, -h[1]:h[1] + 1, -h[2]:h[2] + 1]
    d = sum((g * s / max(r_mm, 1e-9)) ** 2 for g, s in zip((zz, yy, xx), spacing, strict=True))
    return d <= 1.0 + 1e-9


def _erode(b: np.ndarray, spacing: Spacing) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    area, out, step = int(b.sum()), b, min(spacing)
    for k in range(1, 12):
        st = _ellipsoid(k * step, spacing)
        e = binary_erosion(b, structure=st, border_value=1)
        if not e.any():
            break
        out = e
        if area - e.sum() >= MIN_CHANGE * area:
            break
    return out


def _dilate(b: np.ndarray, free: np.ndarray, spacing: Spacing) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    area, out, step = int(b.sum()), b, min(spacing)
    for k in range(1, 12):
        out = binary_dilation(b, structure=_ellipsoid(k * step, spacing)) & (free | b)
        if out.sum() - area >= MIN_CHANGE * area:
            break
    return out


def shift_mask(b: np.ndarray, d: tuple[int, int, int]) -> np.ndarray:
    """``b`` moved by ``d`` = (slices, rows, columns) voxels; what leaves the grid is lost."""
    out = np.zeros_like(b)
    src, dst = [], []
    for n, s in zip(b.shape, d, strict=True):
        if abs(s) >= n:
            return out
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = b[tuple(src)]
    return out


def _components(b: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy.ndimage import label

    lab, n = label(b, structure=_CONN)
    return lab, int(n)


def _extent(b: np.ndarray, axis: int) -> int:
    idx = np.flatnonzero(b.any(axis=tuple(a for a in range(3) if a != axis)))
    return int(idx[-1] - idx[0] + 1) if len(idx) else 0


def _slice_run(b: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(first slice, count) of a run holding 25-40% of the segment's volume: at its start, its end, or a gap."""
    z0, z1 = slice_extent(b)  # type: ignore[misc]
    area = b.sum(axis=(1, 2)).astype(np.float64)[z0:z1]
    want = rng.uniform(0.25, 0.4) * area.sum()
    where = rng.choice(["start", "end", "middle"]) if z1 - z0 >= 5 else rng.choice(["start", "end"])
    if where == "middle":
        lo = hi = int(rng.integers(1, z1 - z0 - 1))
        while area[lo:hi + 1].sum() < want and (lo > 1 or hi < z1 - z0 - 2):
            if hi < z1 - z0 - 2 and (lo <= 1 or rng.random() < 0.5):
                hi += 1
            else:
                lo -= 1
        return z0 + lo, hi - lo + 1
    cum = np.cumsum(area if where == "start" else area[::-1])
    n = min(int(np.searchsorted(cum, want)) + 1, z1 - z0 - 1)
    return (z0, n) if where == "start" else (z1 - n, n)


def _applicable_binary(b: np.ndarray, op: str) -> bool:
    if op == "add_blob":
        return bool((~b).any())
    if not b.any():
        return False
    ext = slice_extent(b)
    assert ext is not None
    if op == "drop_slices":
        return ext[1] - ext[0] >= 3
    if op == "extra_slices":
        return ext[0] >= 2 or b.shape[0] - ext[1] >= 2
    if op == "shift_slices":
        return b.shape[0] >= 3
    return True


def _blob(shape: tuple[int, ...], spacing: Spacing, volume_mm3: float, avoid: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid of about ``MIN_CHANGE x volume_mm3`` (at least 8% of the grid's extent) centred where it
    keeps clear of ``avoid`` (grown by two voxels) and of the grid's border; smaller where there is no room."""
    from scipy.ndimage import binary_dilation, distance_transform_edt

    ext_mm = [n * s for n, s in zip(shape, spacing, strict=True)]
    r = max(np.cbrt(3 * MIN_CHANGE * max(volume_mm3, 1.0) / (4 * np.pi)) * rng.uniform(1.0, 1.3),
            0.08 * min(ext_mm), 1.5 * max(spacing))
    r = min(r, 0.3 * max(ext_mm))
    near = binary_dilation(avoid, structure=_CONN, iterations=2) if avoid.any() else avoid
    room = distance_transform_edt(~near, sampling=spacing) if near.any() else np.full(shape, np.inf)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for g, n, s in zip((zz, yy, xx), shape, spacing, strict=True):  # keep inside the grid too
        room = np.minimum(room, np.minimum(g + 1, n - g) * s)
    ok = np.flatnonzero(room.ravel() >= r)
    if len(ok):
        centre = np.unravel_index(int(ok[int(rng.integers(len(ok)))]), shape)
    else:
        centre = np.unravel_index(int(np.argmax(room)), shape)
        r = max(float(room[centre]), 0.75 * max(spacing))
    radii = [r * rng.uniform(0.8, 1.0) for _ in spacing]
    e = (((zz - centre[0]) * spacing[0] / radii[0]) ** 2 + ((yy - centre[1]) * spacing[1] / radii[1]) ** 2
         + ((xx - centre[2]) * spacing[2] / radii[2]) ** 2) <= 1.0
    return e & ~near


def corrupt_binary(b: np.ndarray, op: str, rng: np.random.Generator, spacing: Spacing = (1.0, 1.0, 1.0),
                   free: np.ndarray | None = None) -> np.ndarray | None:
    """One segment (bool (Z, Y, X)) corrupted by ``op`` (not ``wrong_class``), or None when ``op`` cannot change it.

    ``free``: where the segment may grow (default: wherever it is not).
    """
    if op not in BINARY_OPS:
        raise ValueError(f"unknown binary mask corruption {op!r}; one of {', '.join(BINARY_OPS)}")
    b = np.asarray(b, bool)
    if not _applicable_binary(b, op):
        return None
    free = ~b if free is None else (free & ~b)
    if op == "erode":
        out = _erode(b, spacing)
    elif op == "dilate":
        out = _dilate(b, free, spacing)
    elif op == "shift":
        ang = rng.uniform(0, 2 * np.pi)
        along = abs(np.sin(ang)) * _extent(b, 1) + abs(np.cos(ang)) * _extent(b, 2)  # extent in that direction
        mag = max(2.0, rng.uniform(0.15, 0.3) * along)
        out = shift_mask(b, (0, int(round(mag * np.sin(ang))), int(round(mag * np.cos(ang)))))
    elif op == "shift_slices":
        mag = max(2, int(round(rng.uniform(0.12, 0.25) * _extent(b, 0))))
        mag = min(mag, b.shape[0] - 1)
        out = shift_mask(b, (int(mag * rng.choice([-1, 1])), 0, 0))
    elif op == "drop_slices":
        out = b.copy()
        s0, n = _slice_run(b, rng)
        out[s0:s0 + n] = False
    elif op == "extra_slices":
        z0, z1 = slice_extent(b)  # type: ignore[misc]
        area = b.sum(axis=(1, 2)).astype(np.float64)
        ends = [e for e, room in (("end", b.shape[0] - z1), ("start", z0)) if room >= 2]
        end = ends[int(rng.integers(len(ends)))]
        tail = max(1, (z1 - z0) // 3)  # the structure's cross-section near that end carries on
        rep = (z1 - tail + int(np.argmax(area[z1 - tail:z1]))) if end == "end" \
            else (z0 + int(np.argmax(area[z0:z0 + tail])))
        want = rng.uniform(0.25, 0.4) * area.sum()
        n = max(2, int(np.ceil(want / max(area[rep], 1.0))))
        n = min(n, max(2, int(0.6 * (z1 - z0))), b.shape[0] - z1 if end == "end" else z0)
        out = b.copy()
        if end == "end":
            out[z1:z1 + n] = b[rep][None] & free[z1:z1 + n]
        else:
            out[z0 - n:z0] = b[rep][None] & free[z0 - n:z0]
    elif op == "drop_component":
        lab, n = _components(b)
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
        out = b & (lab != 1 + int(rng.choice(n, p=areas / areas.sum())))
    else:  # add_blob
        vol = float(b.sum()) * float(np.prod(spacing)) if b.any() else 0.01 * float(np.prod(b.shape) * np.prod(spacing))
        out = b | (_blob(b.shape, spacing, vol, ~free | b, rng) & free)
    return out if np.any(out != b) else None


def applicable_volume(labels: np.ndarray, op: str, n_classes: int, cls: int | None = None) -> bool:
    """Whether ``op`` can change segment ``cls`` (any segment when None) of a label map."""
    if op not in VOLUME_CORRUPTIONS:
        raise ValueError(f"unknown mask corruption {op!r}; one of {', '.join(VOLUME_CORRUPTIONS)}")
    classes = [cls] if cls is not None else [c for c in range(1, n_classes + 1) if np.any(labels == c)]
    if op == "add_blob" and cls is None:
        return bool(np.any(labels == 0))
    if op == "wrong_class":
        return n_classes >= 2 and any(np.any(labels == c) for c in classes)
    return any(_applicable_binary(labels == c, op) for c in classes)


def corrupt_volume(labels: np.ndarray, op: str, rng: np.random.Generator, *, n_classes: int | None = None,
                   spacing: Spacing = (1.0, 1.0, 1.0), cls: int | None = None) -> tuple[np.ndarray, int]:
    """A corrupted copy of a label map (Z, Y, X) and the segment changed (1..K).

    Raises
    ------
    ValueError
        An unknown operation, or one that cannot change this label map.
    """
    lab = np.asarray(labels)
    k = max(int(lab.max(initial=0)), 1) if n_classes is None else int(n_classes)
    if lab.ndim != 3:
        raise ValueError(f"a label map must be (slices, rows, columns), got {lab.shape}")
    if not applicable_volume(lab, op, k, cls):
        raise ValueError(f"mask corruption {op!r} cannot change this label map (K={k})")
    present = [c for c in range(1, k + 1) if np.any(lab == c)]
    if cls is None:
        if op == "add_blob":
            cls = int(rng.integers(1, k + 1))
        else:
            ok = [c for c in present if op == "wrong_class" or _applicable_binary(lab == c, op)]
            cls = int(rng.choice(ok))
    out = lab.copy()
    b = lab == cls
    if op == "wrong_class":
        comp, n = _components(b)
        areas = np.bincount(comp.ravel(), minlength=n + 1)[1:].astype(np.float64)
        pick = 1 + int(rng.choice(n, p=areas / areas.sum()))
        out[comp == pick] = int(rng.choice([c for c in range(1, k + 1) if c != cls]))
        return out, cls
    new = corrupt_binary(b, op, rng, spacing, free=(lab == 0))
    if new is None:
        raise ValueError(f"mask corruption {op!r} cannot change segment {cls}")
    out[b & ~new] = 0
    out[new & ~b & (lab == 0)] = cls  # a segment moved onto another keeps the other
    return out, cls


def corrupt_volumes(labels: list[np.ndarray], rate: float, kinds: tuple[str, ...] | list[str] = DEFAULT_VOLUME_KINDS,
                    seed: int = 0, *, n_classes: int | None = None,
                    spacings: list[Spacing] | None = None) -> tuple[list[np.ndarray], list[VolumeCorruption]]:
    """Corrupt one segment in exactly ``round(rate * N)`` cases, the operations taken in turn from ``kinds``.

    A case an operation cannot change gets the next operation that can (the record says which was
    applied). ``wrong_class`` is left out with one class.

    Returns
    -------
    (label maps, the corrupted ones replaced; records sorted by case index)
    """
    check_noise_rate(rate)
    k = max(max((int(m.max(initial=0)) for m in labels), default=1), 1) if n_classes is None else int(n_classes)
    for o in kinds:
        if o not in VOLUME_CORRUPTIONS:
            raise ValueError(f"unknown mask corruption {o!r}; one of {', '.join(VOLUME_CORRUPTIONS)}")
    ops = [o for o in kinds if o != "wrong_class" or k >= 2]
    if not ops:
        raise ValueError(f"none of the corruptions {list(kinds)} applies to masks with {k} class(es)")
    spacings = spacings or [(1.0, 1.0, 1.0)] * len(labels)
    rng = np.random.default_rng(seed + 2_000_029)
    n_target = int(round(rate * len(labels)))
    out = list(labels)
    records: list[VolumeCorruption] = []
    for i in rng.permutation(len(labels)):
        if len(records) == n_target:
            break
        want = len(records) % len(ops)
        for j in range(len(ops)):
            op = ops[(want + j) % len(ops)]
            if applicable_volume(labels[i], op, k):
                try:
                    new, cls = corrupt_volume(labels[i], op, rng, n_classes=k, spacing=spacings[i])
                except ValueError:
                    continue
                changed = int(np.sum(new != labels[i]))
                if changed:
                    out[i] = new
                    records.append(VolumeCorruption(int(i), op, VOLUME_CORRUPTIONS[op], cls, changed))
                    break
    return out, sorted(records, key=lambda r: r.index)
