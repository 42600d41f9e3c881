"""Volume items of the review: one segment of a SEG over a CT/MR series, audited in 3-D, is one worklist item.

What the index keeps of a volume row (:func:`volume_extra`: the series' slices, the key slices worst
first, the slice range, the predicted Dice, the volumes, the 3-D regions, the suggestion's segment),
which source frame a slice is (:func:`slice_source`), where the item page opens (:func:`opening_slice`:
the worst key slice), the given and suggested mask of the segment on one slice
(:class:`VolumeMasks`: each segment read once with the volume reader,
:func:`dicom_io.annotations.seg_volume.read_seg_volumes`, on the series' grid built from its headers,
and kept bit-packed in a bounded cache), and the correction that replaces the whole segment by the
suggestion (:func:`volume_correction`).

Slices are numbered from 0 here and in the API (``slice=k``: the k-th entry of ``slices``, in the
series' order on its grid); the pages and the QA report count from 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.annotations.seg_volume import read_seg_volumes
from dicom_io.results.revision import Correction, RevisionError
from dicom_io.results.seg_out import suggestion_segment_label
from dicom_io.store import InstanceRow
from dicom_io.volumes import series_volume

if TYPE_CHECKING:  # annotation-only types; the writeback module imports this one
    from pydicom.dataset import Dataset
    from pydicom.sr.coding import Code

    from dicom_io.geometry import ImageVolume
    from service.review.writeback import ReviewService

log = logging.getLogger("labelqa.review")

__all__ = [
    "VOLUME_FIELDS",
    "VolumeItemError",
    "VolumeMasks",
    "is_volume_item",
    "volume_extra",
    "volume_item_fields",
    "opening_slice",
    "slice_source",
    "volume_correction",
]

VOLUME_FIELDS = ("dims", "series_uid", "slices", "key_slices", "slice_range", "predicted_dice", "given_mm3",
                 "consensus_mm3", "regions_3d", "suggestion_segment", "hd95", "distance_unit")
"""What the index keeps of a volume row (in the row's extra JSON) besides what every mask row keeps."""


class VolumeItemError(ValueError):
    """A slice or mask of a volume item that cannot be given; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def is_volume_item(item: Mapping[str, Any]) -> bool:
    """Whether a verdict row or worklist item is a segment audited in 3-D (one item for the whole segment)."""
    try:
        return int(item.get("dims") or 2) == 3
    except (TypeError, ValueError):
        return False


def volume_extra(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a volume row the index keeps (JSON-ready); {} for any other row."""
    if not is_volume_item(row):
        return {}
    out = {k: row[k] for k in VOLUME_FIELDS if row.get(k) is not None}
    out["dims"] = 3
    out["slices"] = [[str(u), None if f is None else int(f)] for u, f in (row.get("slices") or [])]
    out["key_slices"] = [int(k) for k in (row.get("key_slices") or [])]
    return out


def volume_item_fields(extra: Mapping[str, Any], *, slices: bool = True) -> dict[str, Any]:
    """The volume fields of an item, from its extra JSON (``dims`` 2 and no others for a 2-D item).
    ``slices`` False leaves the per-slice list out (the worklist: ``n_slices`` says how many)."""
    if not is_volume_item(extra):
        return {"dims": 2}
    out = {k: extra.get(k) for k in VOLUME_FIELDS if k not in ("slices", "series_uid")}
    out["dims"] = 3
    out["n_slices"] = len(extra.get("slices") or [])
    out["volume_series_uid"] = extra.get("series_uid")
    if slices:
        out["slices"] = extra.get("slices") or []
    return out


def opening_slice(item: Mapping[str, Any]) -> int:
    """Where the item page opens: the worst key slice; else the slice of the item's image and frame; else
    the first slice of the given mask; else 0."""
    n = len(item.get("slices") or [])
    for k in item.get("key_slices") or []:
        if 0 <= int(k) < n:
            return int(k)
    for k, (u, f) in enumerate(item.get("slices") or []):
        if u == item.get("image_uid") and (f or None) == (item.get("frame") or None):
            return k
    sr = item.get("slice_range")
    if sr and 0 <= int(sr[0]) < n:
        return int(sr[0])
    return 0


def slice_source(item: Mapping[str, Any], k: int) -> tuple[str, int | None]:
    """(SOP Instance UID, frame or None) of slice ``k`` of a volume item; VolumeItemError when out of range."""
    slices = item.get("slices") or []
    if not is_volume_item(item):
        raise VolumeItemError(f"item {item.get('id')} is one image frame (a 2-D audit): it has no slices")
    if not 0 <= k < len(slices):
        raise VolumeItemError(f"slice {k} is out of range: the series of item {item.get('id')} has {len(slices)} "
                              f"slice(s), 0 to {len(slices) - 1}")
    u, f = slices[k]
    return str(u), None if f is None else int(f)


@dataclass
class _Grid:
    """A series' grid, read from its headers, and the slice of the grid each item slice is."""

    volume: ImageVolume  # without pixels
    order: np.ndarray  # item slice k -> slice of ``volume``


@dataclass
class _Packed:
    bits: np.ndarray  # (slices, ceil(rows * columns / 8)) uint8, in the item's slice order
    shape: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def plane(self, k: int) -> np.ndarray:
        rows, cols = self.shape[1:]
        return np.unpackbits(self.bits[k], count=rows * cols).reshape(rows, cols).astype(bool)

    def volume(self) -> np.ndarray:
        rows, cols = self.shape[1:]
        return np.unpackbits(self.bits, axis=1, count=rows * cols).reshape(self.shape).astype(bool)


class VolumeMasks:
    """The given and suggested masks of volume items, slice by slice.

    Each (SEG, segment) is read once over its series with the volume reader (the reader the audit used,
    so a sparse, shuffled, label-map or resampled SEG shows as it was audited) and kept bit-packed; the
    least recently used are dropped beyond ``max_bytes``. The series' grid comes from the slices'
    headers (no pixels), kept for the ``max_grids`` most recent series. Thread-safe: a segment that
    several requests ask for at once is read once.
    """

    def __init__(self, review: ReviewService, *, max_bytes: int = 256 << 20, max_grids: int = 8) -> None:
        self.review = review
        self.max_bytes = max_bytes
        self.max_grids = max_grids
        self._masks: OrderedDict[tuple[str, int, str], _Packed] = OrderedDict()
        self._grids: OrderedDict[str, _Grid] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int, str], threading.Lock] = {}

    # ------------------------------------------------------------------ the series' grid

    def paths(self, uids: Sequence[str]) -> dict[str, Path]:
        """Stored files of instances (one query to the study store's index; result objects as a fallback)."""

        out: dict[str, Path] = {}
        data_dir = self.review.data_dir
        wanted = list(dict.fromkeys(uids))
        if data_dir is None:
            return out
        try:
            with Session(self.review.engine) as s:
                for i in range(0, len(wanted), 500):
                    q = select(InstanceRow.sop_instance_uid, InstanceRow.path).where(
                        InstanceRow.sop_instance_uid.in_(wanted[i:i + 500]))
                    for uid, rel in s.execute(q):
                        if (data_dir / rel).is_file():
                            out[uid] = data_dir / rel
        except Exception as e:  # noqa: BLE001 - no store tables in this database: the per-UID lookup below
            log.debug("no study index: %s", e)
        for u in wanted:
            if u not in out and (p := self.review.instance_path(u)) is not None:
                out[u] = p
        return out

    def headers(self, item: Mapping[str, Any]) -> dict[str, Dataset]:
        """The headers (no pixel data) of every instance the item's slices are in, by SOP Instance UID."""
        uids = [str(u) for u, _ in item.get("slices") or []]
        paths = self.paths(uids)
        missing = [u for u in dict.fromkeys(uids) if u not in paths]
        if missing:
            raise VolumeItemError(f"{len(missing)} slice(s) of series {item.get('volume_series_uid')} are not in "
                                  f"the store (e.g. {missing[0]})", 404)
        return {u: pydicom.dcmread(p, stop_before_pixels=True) for u, p in paths.items()}

    def grid(self, item: Mapping[str, Any]) -> _Grid:
        """The item's series as a volume without pixels (its geometry) and where each item slice lies on it."""
        slices = item.get("slices") or []
        if not slices:
            raise VolumeItemError(f"item {item.get('id')} has no slices")
        key = hashlib.sha256(json.dumps(slices).encode()).hexdigest()
        with self._lock:
            hit = self._grids.get(key)
            if hit is not None:
                self._grids.move_to_end(key)
                return hit
        headers = self.headers(item)
        volume, issues = series_volume(list(headers.values()), load_pixels=False)
        if volume is None:
            raise VolumeItemError(f"the series of item {item.get('id')} is not a volume: "
                                  + "; ".join(i.message for i in issues))
        order = [volume.slice_index(str(u), None if f is None else int(f)) for u, f in slices]
        if any(k is None for k in order):
            raise VolumeItemError(f"the slices of item {item.get('id')} are not those of its series' grid")
        g = _Grid(volume, np.asarray(order, int))
        with self._lock:
            self._grids[key] = g
            while len(self._grids) > self.max_grids:
                self._grids.popitem(last=False)
        return g

    # ------------------------------------------------------------------ masks

    def _segment(self, item: Mapping[str, Any], seg_uid: str, segment: int) -> _Packed:
        """Segment ``segment`` of SEG ``seg_uid`` on the item's series, packed (read once, then cached)."""
        key = (seg_uid, int(segment), hashlib.sha256(json.dumps(item.get("slices") or []).encode()).hexdigest())
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one read per segment, however many requests ask at once
            with self._lock:
                hit = self._masks.get(key)
            if hit is not None:
                return hit
            g = self.grid(item)
            path = self.review.instance_path(seg_uid)
            if path is None:
                raise VolumeItemError(f"SEG {seg_uid} is not in the store", 404)
            try:
                volumes, issues = read_seg_volumes(path, g.volume, None, segment_numbers=[int(segment)])
            except (OSError, ValueError) as e:  # an unreadable file; the reader itself never raises for bad content
                raise VolumeItemError(f"SEG {seg_uid} cannot be read: {e}") from None
            if not volumes:
                why = "; ".join(i.message for i in issues) or "no such segment"
                raise VolumeItemError(f"segment {segment} of SEG {seg_uid} cannot be read over the series: {why}")
            mask = volumes[0].mask[g.order]
            packed = _Packed(np.packbits(mask.reshape(mask.shape[0], -1), axis=1), tuple(mask.shape))  # type: ignore[arg-type]
            del volumes, mask
            with self._lock:
                self._masks[key] = packed
                total = sum(p.nbytes for p in self._masks.values())
                while total > self.max_bytes and len(self._masks) > 1:
                    _, old = self._masks.popitem(last=False)
                    total -= old.nbytes
                self._loading.pop(key, None)
            log.debug("review: read segment %d of %s over %d slices", segment, seg_uid, packed.shape[0])
            return packed

    def _suggestion_segment(self, item: Mapping[str, Any]) -> int:
        if item.get("suggestion_segment"):
            return int(item["suggestion_segment"])

        path = self.review.instance_path(item["suggestion_uid"])
        if path is None:
            raise VolumeItemError(f"suggestion SEG {item['suggestion_uid']} is not among the results", 404)
        label = suggestion_segment_label(str(item.get("given_label")))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for s in ds.get("SegmentSequence") or []:
            if str(s.get("SegmentLabel", "")) == label:
                return int(s.SegmentNumber)
        raise VolumeItemError(f"suggestion SEG {item['suggestion_uid']} has no segment {label!r}")

    def given(self, item: Mapping[str, Any], k: int) -> np.ndarray:
        """The given segment on slice ``k``: bool (rows, columns); all False where the SEG has no segment
        of the class (the given mask is empty)."""
        slice_source(item, k)
        if not item.get("segment_number"):
            shape = self.grid(item).volume.shape
            return np.zeros(shape[1:], bool)
        return self._segment(item, str(item["annotation_uid"]), int(item["segment_number"])).plane(k)

    def suggested(self, item: Mapping[str, Any], k: int) -> np.ndarray:
        """The suggested (consensus) mask on slice ``k``, from the audit's suggestion SEG: bool (rows, columns)."""
        slice_source(item, k)
        return self._suggested(item).plane(k)

    def suggested_volume(self, item: Mapping[str, Any]) -> np.ndarray:
        """The whole suggested mask over the series, bool (slices, rows, columns) in the item's slice order."""
        return self._suggested(item).volume()

    def _suggested(self, item: Mapping[str, Any]) -> _Packed:
        if not is_volume_item(item):
            raise VolumeItemError(f"item {item.get('id')} is one image frame (a 2-D audit): it has no slices")
        if not item.get("suggestion_uid"):
            raise VolumeItemError(f"item {item.get('id')} has no suggested mask", 404)
        return self._segment(item, str(item["suggestion_uid"]), self._suggestion_segment(item))


def volume_correction(masks: VolumeMasks, item: Mapping[str, Any],
                      label: Code | str | None) -> tuple[Correction, dict[str, Dataset]]:
    """The correction that replaces the whole segment of a volume item by its suggestion, and the headers of
    every slice of its series (the corrected SEG is rebuilt over them): (``Correction``, {UID: header}).
    Raises ``RevisionError`` when the suggestion or the series cannot be read."""
    try:
        mask = masks.suggested_volume(item)
        headers = masks.headers(item)
    except VolumeItemError as e:
        raise RevisionError(str(e)) from None
    slices = tuple((str(u), None if f is None else int(f)) for u, f in item.get("slices") or [])
    return Correction(label, item.get("content_path"), item.get("segment_number"), mask=mask,
                      slices=slices), headers
