"""Members' probabilities for a volume, stored per segment: uint8 in the box where any member sees it.

A 512 x 512 x 300 CT with 20 segments and three members would take 18 GB as float32 probability
volumes. :class:`CaseProbs` keeps, per segment, one box on the model grid (where some member's
probability is at least ``floor``, default 0.02) holding every member's probability as uint8
(p x 255): a liver is stored over the liver's box, a small node over its own. Sliding-window
inference fills it slab by slab (:class:`SparseBuilder`), never holding more than one slab of
float probabilities, and the detector reads one segment at a time on the native grid
(:meth:`CaseProbs.crop`, resampled when the model spacing differs from the volume's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.volume.preprocess import axis_coords, resample_box

__all__ = ["CaseProbs", "SparseBuilder", "merge_members", "save_case_probs", "load_case_probs", "Box",
           "box_slices", "bounding_box", "union_box", "DEFAULT_FLOOR"]

DEFAULT_FLOOR = 0.02
"""Probabilities below this are stored as 0 (outside every segment's box)."""

Box = tuple[int, int, int, int, int, int]
"""(z0, y0, x0, z1, y1, x1), end exclusive."""


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    return slice(box[0], box[3]), slice(box[1], box[4]), slice(box[2], box[5])


def bounding_box(mask: np.ndarray) -> Box | None:
    """The box of a bool (Z, Y, X) mask's true voxels, or None when empty."""
    if not mask.any():
        return None
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return (out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1])


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both (None counts as empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), max(a[4], b[4]), max(a[5], b[5]))


def _quantise(p: np.ndarray) -> np.ndarray:
    if p.dtype == np.uint8:
        return p
    return np.clip(np.rint(np.asarray(p, np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class CaseProbs:
    """Every member's probability of every segment of one case, boxed per segment (see the module doc)."""

    model_shape: tuple[int, int, int]
    native_shape: tuple[int, int, int]
    n_members: int
    boxes: list[Box | None]
    """Per segment: its box on the model grid, None when no member sees it anywhere."""
    data: list[np.ndarray | None]
    """Per segment: uint8 (members, box) probabilities x 255."""

    @property
    def n_classes(self) -> int:
        return len(self.boxes)

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.data if d is not None)

    @classmethod
    def from_dense(cls, probs: np.ndarray, native_shape: tuple[int, int, int] | None = None,
                   floor: float = DEFAULT_FLOOR) -> CaseProbs:
        """From (members, K, Z, Y, X) probabilities (float in [0, 1] or uint8 x 255) on the model grid."""
        q = _quantise(np.asarray(probs))
        if q.ndim != 5:
            raise ValueError(f"probabilities must be (members, K, Z, Y, X), got {q.shape}")
        m, k = q.shape[:2]
        shape = tuple(int(s) for s in q.shape[2:])
        lvl = int(np.ceil(floor * 255))
        boxes: list[Box | None] = []
        data: list[np.ndarray | None] = []
        for c in range(k):
            b = bounding_box(np.asarray((q[:, c] >= lvl).any(0)))
            boxes.append(b)
            data.append(None if b is None else np.ascontiguousarray(
                np.where(q[:, c][(slice(None),) + box_slices(b)] >= lvl, q[:, c][(slice(None),) + box_slices(b)], 0)))
        return cls(shape, tuple(native_shape or shape), m, boxes, data)  # type: ignore[arg-type]

    def model_block(self, c: int, box: Box) -> np.ndarray:
        """uint8 (members, box) of segment ``c`` on the model grid (zeros outside its stored box)."""
        z0, y0, x0, z1, y1, x1 = box
        out = np.zeros((self.n_members, z1 - z0, y1 - y0, x1 - x0), np.uint8)
        b, d = self.boxes[c], self.data[c]
        if b is None or d is None:
            return out
        lo = [max(box[a], b[a]) for a in range(3)]
        hi = [min(box[a + 3], b[a + 3]) for a in range(3)]
        if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
            return out
        out[:, lo[0] - z0:hi[0] - z0, lo[1] - y0:hi[1] - y0, lo[2] - x0:hi[2] - x0] = \
            d[:, lo[0] - b[0]:hi[0] - b[0], lo[1] - b[1]:hi[1] - b[1], lo[2] - b[2]:hi[2] - b[2]]
        return out

    def native_box(self, c: int, margin: int = 0) -> Box | None:
        """Segment ``c``'s stored box mapped to the native grid (grown by ``margin`` voxels, clipped)."""
        b = self.boxes[c]
        if b is None:
            return None
        out = []
        for a in range(3):
            r = self.native_shape[a] / self.model_shape[a]
            out.append((max(0, int(np.floor(b[a] * r)) - margin),
                        min(self.native_shape[a], int(np.ceil(b[a + 3] * r)) + margin)))
        return (out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1])

    def crop(self, c: int, box: Box, *, as_uint8: bool = False) -> np.ndarray:
        """Segment ``c``'s probabilities (members, box) on a box of the native grid: float32 in [0, 1]
        (or uint8 x 255 with ``as_uint8``), resampled linearly when the grids differ."""
        if tuple(self.model_shape) == tuple(self.native_shape):
            block = self.model_block(c, box)
            return block if as_uint8 else block.astype(np.float32) / 255.0
        nb = box_slices(box)
        lo, hi = [], []
        for a in range(3):
            co = axis_coords(nb[a].start, nb[a].stop, self.native_shape[a], self.model_shape[a])
            lo.append(max(0, int(np.floor(co.min()))))
            hi.append(min(self.model_shape[a], int(np.floor(co.max())) + 2))
        block = self.model_block(c, (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])).astype(np.float32) / 255.0
        out = np.clip(resample_box(block, (lo[0], lo[1], lo[2]), nb, self.native_shape, self.model_shape), 0.0, 1.0)
        return _quantise(out) if as_uint8 else out

    def dense(self, c: int) -> np.ndarray:
        """Segment ``c`` on the whole native grid, (members, Z, Y, X) float32 (for small volumes, baselines)."""
        z, y, x = self.native_shape
        return self.crop(c, (0, 0, 0, z, y, x))


class SparseBuilder:
    """Collects one member's probabilities slab by slab (model grid) into a :class:`CaseProbs`."""

    def __init__(self, model_shape: tuple[int, int, int], n_classes: int,
                 native_shape: tuple[int, int, int] | None = None, floor: float = DEFAULT_FLOOR):
        self.model_shape = tuple(model_shape)
        self.native_shape = tuple(native_shape or model_shape)
        self.k = n_classes
        self.lvl = int(np.ceil(floor * 255))
        self.parts: list[list[tuple[Box, np.ndarray]]] = [[] for _ in range(n_classes)]

    def add(self, z0: int, block: np.ndarray) -> None:
        """Probabilities (K, dz, Y, X) of slices ``z0 .. z0 + dz - 1`` (float in [0, 1] or uint8)."""
        q = _quantise(np.asarray(block))
        for c in range(self.k):
            b = bounding_box(q[c] >= self.lvl)
            if b is None:
                continue
            sub = q[c][box_slices(b)]
            self.parts[c].append(((b[0] + z0, b[1], b[2], b[3] + z0, b[4], b[5]),
                                  np.ascontiguousarray(np.where(sub >= self.lvl, sub, 0))))

    def build(self) -> CaseProbs:
        boxes: list[Box | None] = []
        data: list[np.ndarray | None] = []
        for c in range(self.k):
            box: Box | None = None
            for b, _d in self.parts[c]:
                box = union_box(box, b)
            boxes.append(box)
            if box is None:
                data.append(None)
                continue
            arr = np.zeros((1, box[3] - box[0], box[4] - box[1], box[5] - box[2]), np.uint8)
            for b, d in self.parts[c]:
                tgt = arr[0, b[0] - box[0]:b[3] - box[0], b[1] - box[1]:b[4] - box[1], b[2] - box[2]:b[5] - box[2]]
                np.maximum(tgt, d, out=tgt)
            data.append(arr)
            self.parts[c] = []
        return CaseProbs(self.model_shape, self.native_shape, 1, boxes, data)  # type: ignore[arg-type]


def merge_members(parts: list[CaseProbs]) -> CaseProbs:
    """One :class:`CaseProbs` per member (same grids) -> one with all members, in this order."""
    if not parts:
        raise ValueError("no members")
    first = parts[0]
    for p in parts:
        if p.model_shape != first.model_shape or p.n_classes != first.n_classes:
            raise ValueError("members' probabilities are on different grids")
    boxes: list[Box | None] = []
    data: list[np.ndarray | None] = []
    for c in range(first.n_classes):
        box: Box | None = None
        for p in parts:
            box = union_box(box, p.boxes[c])
        boxes.append(box)
        data.append(None if box is None else np.concatenate([p.model_block(c, box) for p in parts]))
    return CaseProbs(first.model_shape, first.native_shape, sum(p.n_members for p in parts), boxes, data)


def save_case_probs(path: str | Path, probs: list[CaseProbs], **arrays: np.ndarray) -> Path:
    """Every case's :class:`CaseProbs` (and extra named arrays) in one compressed npz."""
    out: dict[str, np.ndarray] = {f"extra_{k}": np.asarray(v) for k, v in arrays.items()}
    meta = []
    for i, p in enumerate(probs):
        meta.append({"model_shape": list(p.model_shape), "native_shape": list(p.native_shape),
                     "n_members": p.n_members, "boxes": [None if b is None else list(b) for b in p.boxes]})
        for c, d in enumerate(p.data):
            if d is not None:
                out[f"p{i}_{c}"] = d
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)  # type: ignore[arg-type]
    return path


def load_case_probs(path: str | Path) -> tuple[list[CaseProbs], dict[str, np.ndarray]]:
    """What :func:`save_case_probs` wrote: (probabilities per case, the extra arrays by name)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        probs = [CaseProbs(tuple(m["model_shape"]), tuple(m["native_shape"]), int(m["n_members"]),  # type: ignore[arg-type]
                           [None if b is None else tuple(b) for b in m["boxes"]],
                           [z[f"p{i}_{c}"] if b is not None else None for c, b in enumerate(m["boxes"])])
                 for i, m in enumerate(meta)]
        extra = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
    return probs, extra
