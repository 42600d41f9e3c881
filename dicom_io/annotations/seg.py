"""Labels from Segmentation objects (binary, fractional, label-map), per referenced image frame.

Each SEG frame names its segment (Segment Identification, not for LABELMAP where pixel values are
segment numbers) and its source image frame (Derivation Image -> Source Image Sequence). Frames are
grouped by the source image frame they were derived from; the segments with at least one pixel
inside (fractional: value / Maximum Fractional Value >= ``vocabulary.seg.min_fraction``) are the
segments present there. Segments resolve to classes by Segmented Property Type (class code, alias or
``segment_property_types``), else by Segment Label equal to a class name. One class present -> one
sample (the segment with the largest area gives ``segment_number``; all present masks are kept);
several classes -> ``conflicting_labels``; a referenced image with no segment present -> the
vocabulary's ``seg.absent_class`` when set.

A SEG whose frames carry no source frame reference (e.g. TILED_FULL slide-microscopy SEGs) but that
references exactly one source image labels that whole image (frame None, no masks kept).

The work one SEG may cause is bounded (``[seg]``, :class:`dicom_io.settings.SegSettings`): the
segments it declares and the pixels it decodes are checked from its header before anything is
decoded (:func:`seg_limit_issue`), and the pixels its masks expand to are counted as they are made;
beyond either, the SEG is a ``too_large`` issue record. A label map is expanded per class present
in a frame, never per segment it declares.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    MALFORMED_ANNOTATION,
    NO_IMAGE_REFERENCE,
    NO_LABEL,
    TOO_LARGE,
    UNKNOWN_CODE,
    UNREADABLE_PIXELS,
    IssueRecord,
    LabelRecord,
    MaskRecord,
)
from dicom_io.annotations.sr import _code_of
from dicom_io.settings import SegSettings

if TYPE_CHECKING:
    from dicom_io.vocabulary import Vocabulary

__all__ = [
    "RLE_LOSSLESS", "DEFLATED_IMAGE_FRAME", "segment_frames", "read_seg", "seg_pixel_spacing", "read_seg_masks",
    "seg_limit_issue",
]


def _fg(ds: Dataset, i: int, name: str) -> Sequence | None:
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    if pffg is not None and len(pffg) > i and name in pffg[i]:
        return pffg[i].get(name)
    sfg = ds.get("SharedFunctionalGroupsSequence")
    if sfg and name in sfg[0]:
        return sfg[0].get(name)
    return None


def _source_refs(ds: Dataset, i: int) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for der in _fg(ds, i, "DerivationImageSequence") or []:
        for src in der.get("SourceImageSequence") or []:
            uid = src.get("ReferencedSOPInstanceUID")
            if not uid:
                continue
            frames = src.get("ReferencedFrameNumber")
            if frames in (None, ""):
                out.append((str(uid), None))
            else:
                vals = list(frames) if not isinstance(frames, (int, str)) else [frames]
                out.extend((str(uid), int(f)) for f in vals)
    return out


def _referenced_instances(ds: Dataset) -> list[str]:
    uids = []
    for series in ds.get("ReferencedSeriesSequence") or []:
        for inst in series.get("ReferencedInstanceSequence") or []:
            uid = inst.get("ReferencedSOPInstanceUID")
            if uid and str(uid) not in uids:
                uids.append(str(uid))
    return uids


RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"


def _packbits(data: bytes) -> bytes:
    """Decode one PackBits (DICOM RLE) segment."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        h = data[i]
        i += 1
        if h < 128:
            out += data[i : i + h + 1]
            i += h + 1
        elif h > 128:
            out += bytes(data[i : i + 1]) * (257 - h)
            i += 1
    return bytes(out)


def _seg_pixels(ds: Dataset) -> np.ndarray:
    """All SEG frames; 1-bit RLE and Deflated Image Frame Compression are decoded here when pydicom cannot."""
    try:
        return ds.pixel_array
    except Exception:
        ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        if int(ds.get("BitsAllocated", 0) or 0) != 1 or ts not in (RLE_LOSSLESS, DEFLATED_IMAGE_FRAME):
            raise
    import zlib

    from pydicom.encaps import generate_frames

    rows, cols = int(ds.Rows), int(ds.Columns)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    frames = []
    for data in generate_frames(ds.PixelData, number_of_frames=nframes):
        if ts == RLE_LOSSLESS:
            if int.from_bytes(data[0:4], "little") != 1:
                raise ValueError("1-bit RLE frame with more than one segment")
            raw = _packbits(data[int.from_bytes(data[4:8], "little") :])
        else:
            raw = zlib.decompress(data, -15)
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
        if bits.size < rows * cols:
            raise ValueError(f"frame decodes to {bits.size} bits, {rows * cols} needed")
        frames.append(bits[: rows * cols].reshape(rows, cols))
    return np.stack(frames)


def _frame_segment(ds: Dataset, i: int, nframes: int) -> int | None:
    """The segment number of SEG frame ``i`` (0-based); TILED_FULL without per-frame groups: by frame order."""
    sid = _fg(ds, i, "SegmentIdentificationSequence")
    try:
        if sid is not None:
            return int(sid[0].ReferencedSegmentNumber)
    except (TypeError, IndexError, AttributeError, ValueError):
        pass
    if (
        str(ds.get("DimensionOrganizationType", "")).upper() == "TILED_FULL"
        and "PerFrameFunctionalGroupsSequence" not in ds
    ):
        # PS3.3 C.7.6.17.3: TILED_FULL frames run over tiles, then focal planes, then segments.
        numbers = sorted(int(s.SegmentNumber) for s in ds.get("SegmentSequence") or [] if "SegmentNumber" in s)
        if numbers and nframes % len(numbers) == 0:
            return numbers[i // (nframes // len(numbers))]
    return None


_SEGMENT_SEQUENCE = 0x00620002
_SEGMENT_ITEM_BYTES = 8192  # far more than one Segment Sequence item takes, codes and description included


def seg_limit_issue(ds: Dataset, limits: SegSettings | None = None) -> str | None:
    """Why a SEG is beyond ``limits`` (``[seg]``), from its header alone; None when it is within them.

    The Segment Sequence is not even parsed when its size alone says it holds too many segments.
    """
    from pydicom.dataelem import RawDataElement

    limits = limits or SegSettings()
    elem = ds.get_item(_SEGMENT_SEQUENCE) if _SEGMENT_SEQUENCE in ds else None
    if isinstance(elem, RawDataElement) and elem.value is not None:
        if len(elem.value) > limits.max_segments * _SEGMENT_ITEM_BYTES:
            return (f"its Segment Sequence takes {len(elem.value)} bytes, more than {limits.max_segments} segments "
                    "([seg] max_segments) can")
    if elem is not None:
        n = len(ds.SegmentSequence or [])
        if n > limits.max_segments:
            return f"it declares {n} segments, more than [seg] max_segments = {limits.max_segments}"
    try:
        frames, rows, cols = (int(ds.get(k, d) or d) for k, d in (("NumberOfFrames", 1), ("Rows", 0),
                                                                   ("Columns", 0)))
    except (TypeError, ValueError):
        return None  # a malformed header: the reader says so
    if frames * rows * cols > limits.max_pixels:
        return (f"{frames} frame(s) of {rows} x {cols} pixels ({frames * rows * cols}) are more than "
                f"[seg] max_pixels = {limits.max_pixels}")
    return None


@dataclass(slots=True)
class _ClassInFrame:
    """One class in one source frame of a SEG: its mask on the SEG grid, its segment numbers, the SEG
    frames (1-based) that hold it."""

    mask: np.ndarray
    numbers: list[int] = field(default_factory=list)
    seg_frames: list[int] = field(default_factory=list)


class _OverLimit(Exception):
    """Expanding a SEG's masks would pass ``[seg] max_pixels``."""


class _Expansion:
    """The pixels expanded into masks while reading one SEG, against ``[seg] max_pixels``."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = int(limit)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        self.left -= mask.size
        if self.left < 0:
            raise _OverLimit(f"its masks expand to more than [seg] max_pixels = {self.limit} pixels")
        return mask


def _mask(frame: np.ndarray, n: int, seg_type: str, threshold: float) -> np.ndarray:
    """Segment ``n``'s pixels in one SEG frame (a label map's value n; a binary or fractional frame's own)."""
    if seg_type == "LABELMAP":
        return frame == n
    return frame >= threshold if seg_type == "FRACTIONAL" else frame > 0


def _labelmap_values(frame: np.ndarray, segments: dict[int, tuple[str, str | None]]) -> list[int]:
    """The described segments (not 0) whose value occurs in a label-map frame, ascending."""
    return [n for v in np.unique(frame) if (n := int(v)) != 0 and n in segments]


def segment_frames(ds: Dataset) -> dict[int, list[tuple[str, int | None]]]:
    """Segment number -> source (image UID, frame) of the SEG frames of that segment (header only).

    Label-map SEGs (no per-frame segment) map every segment to every referenced frame.
    """
    out: dict[int, list[tuple[str, int | None]]] = defaultdict(list)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    labelmap = str(ds.get("SegmentationType", "")).upper() == "LABELMAP"
    numbers = [int(s.SegmentNumber) for s in ds.get("SegmentSequence") or [] if "SegmentNumber" in s]
    for i in range(nframes):
        refs = _source_refs(ds, i)
        if labelmap:
            seg_numbers = numbers
        else:
            n = _frame_segment(ds, i, nframes)
            if n is None:
                continue
            seg_numbers = [n]
        for n in seg_numbers:
            for ref in refs:
                if ref not in out[n]:
                    out[n].append(ref)
    return dict(out)


def _observer(ds: Dataset) -> str | None:
    name = ds.get("ContentCreatorName")
    return str(name) if name else None


def _segment_classes(
    ds: Dataset, vocabulary: Vocabulary | None, issues: list[IssueRecord]
) -> dict[int, tuple[str, str | None]]:
    """Segment number -> (description for messages, class name or None) of the Segment Sequence."""
    uid = str(ds.SOPInstanceUID)
    segments: dict[int, tuple[str, str | None]] = {}
    for item in ds.SegmentSequence:
        try:
            n = int(item.SegmentNumber)
        except (AttributeError, TypeError, ValueError):
            issues.append(IssueRecord(MALFORMED_ANNOTATION, "a segment without a valid Segment Number", uid))
            continue
        ptype = _code_of(item.get("SegmentedPropertyTypeCodeSequence"))
        label = str(item.get("SegmentLabel", "") or "").strip()
        cls: str | None = None
        if vocabulary is None:
            cls = label or (ptype[2] if ptype else None)
        else:
            if ptype is not None:
                cls = vocabulary.lookup(ptype[0], ptype[1])
            if cls is None and label and vocabulary.seg.match_segment_label:
                cls = vocabulary.lookup_label(label)
        desc = f"segment {n} {label!r}" + (f" ({ptype[0]} {ptype[1]} {ptype[2]!r})" if ptype else "")
        segments[n] = (desc, cls)
    return segments


def read_seg(
    path: Path | str | Dataset, vocabulary: Vocabulary | None, *, series_images: dict[str, list[str]] | None = None,
    limits: SegSettings | None = None,
) -> tuple[list[LabelRecord], list[IssueRecord]]:
    """Label records (with masks) and issue records of one SEG file (or dataset).

    ``series_images`` (series UID -> single-frame image UIDs in the study): images of a series the SEG
    references but that no SEG frame names (tools such as dcmqi omit empty slices from the SEG and
    its references) count as referenced with no segment present. A SEG beyond ``limits`` (``[seg]``)
    gives a ``too_large`` issue record and no label.
    """
    import pydicom

    limits = limits or SegSettings()
    ds = pydicom.dcmread(path) if isinstance(path, (str, Path)) else path
    uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    issues: list[IssueRecord] = []
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    over = seg_limit_issue(ds, limits)
    if over:
        return [], [IssueRecord(TOO_LARGE, f"SEG not read: {over}", uid)]
    if not ds.get("SegmentSequence"):
        return [], [IssueRecord(MALFORMED_ANNOTATION, "SEG has no Segment Sequence", uid)]

    segments = _segment_classes(ds, vocabulary, issues)

    # Pixels.
    try:
        arr = _seg_pixels(ds)
    except Exception as e:
        return [], [*issues, IssueRecord(UNREADABLE_PIXELS, f"SEG pixel data cannot be decoded: {e}", uid)]
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != nframes:
        return [], [
            *issues,
            IssueRecord(MALFORMED_ANNOTATION, f"{arr.shape[0]} frames decoded, {nframes} declared", uid),
        ]
    threshold = 0.0
    if seg_type == "FRACTIONAL":
        maxv = float(ds.get("MaximumFractionalValue", 255) or 255)
        threshold = (vocabulary.seg.min_fraction if vocabulary is not None else 0.5) * maxv
    referenced = _referenced_instances(ds)

    # frame groups: (image uid, frame) -> segment number -> the SEG frames (0-based) where it has pixels;
    # the masks themselves are made only for the groups that become a record
    groups: dict[tuple[str, int | None], dict[int, list[int]]] = defaultdict(dict)
    unreferenced = 0
    whole_image = None
    for i in range(nframes):
        refs = _source_refs(ds, i)
        if not refs:
            if len(referenced) == 1:
                whole_image = referenced[0]
                refs = [(whole_image, None)]
            else:
                unreferenced += 1
                continue
        frame = arr[i]
        if seg_type == "LABELMAP":
            hits = _labelmap_values(frame, segments)
        else:
            sn = _frame_segment(ds, i, nframes)
            if sn is None:
                unreferenced += 1
                continue
            hit = frame.size and (frame.max() >= threshold if seg_type == "FRACTIONAL" else frame.max() > 0)
            hits = [sn] if hit else []
        for ref in refs:
            g = groups[ref]
            for n in hits:
                g.setdefault(n, []).append(i)
    if unreferenced:
        issues.append(
            IssueRecord(NO_IMAGE_REFERENCE, f"{unreferenced} SEG frame(s) name no source image (frame) or segment", uid)
        )

    # Referenced images with no frame at all: "no segment present".
    if series_images:
        for series in ds.get("ReferencedSeriesSequence") or []:
            for image_uid in series_images.get(str(series.get("SeriesInstanceUID", "")), []):
                if image_uid not in referenced:
                    referenced.append(image_uid)
    for ref_uid in referenced:
        if not any(k[0] == ref_uid for k in groups):
            groups[(ref_uid, None)] = {}

    observer = _observer(ds)
    expand = _Expansion(limits.max_pixels)
    records: list[LabelRecord] = []
    unknown_present: set[int] = set()
    empty_without_class = 0
    try:
        for (image_uid, frame), present in groups.items():
            classes = {c for n in present if (c := segments.get(n, ("", None))[1]) is not None}
            unknown_present.update(n for n in present if segments.get(n, ("", None))[1] is None)
            if not present:
                absent = vocabulary.seg.absent_class if vocabulary is not None else None
                if absent is None:
                    empty_without_class += 1
                    continue
                records.append(LabelRecord(absent, uid, sop, "seg", image_uid, frame, None, None, observer, {}))
                continue
            if len(classes) > 1:
                where = f"image {image_uid}" + ("" if frame is None else f" frame {frame}")
                issues.append(
                    IssueRecord(
                        CONFLICTING_LABELS,
                        f"{where}: segments of different classes present: {', '.join(sorted(classes))}",
                        uid,
                        image_uid,
                    )
                )
                continue
            if not classes:
                continue  # only unknown segments here; reported once below
            cls = classes.pop()
            masks: dict[int, np.ndarray] = {}
            for n, frames in present.items():
                m = expand(_mask(arr[frames[0]], n, seg_type, threshold))
                for j in frames[1:]:
                    m = m | expand(_mask(arr[j], n, seg_type, threshold))
                masks[n] = m.astype(bool, copy=False)
            mine = [n for n in present if segments[n][1] == cls]
            best = max(mine, key=lambda n: int(masks[n].sum()))
            kept = None if whole_image == image_uid and frame is None else masks
            records.append(LabelRecord(cls, uid, sop, "seg", image_uid, frame, None, best, observer, kept))
    except _OverLimit as e:
        return [], [*issues, IssueRecord(TOO_LARGE, f"SEG not read: {e}", uid)]
    for n in sorted(unknown_present):
        if n not in segments:
            issues.append(
                IssueRecord(
                    MALFORMED_ANNOTATION, f"frames use segment {n}, which the Segment Sequence does not describe", uid
                )
            )
        else:
            issues.append(IssueRecord(UNKNOWN_CODE, f"{segments[n][0]} is not in the vocabulary", uid))
    if empty_without_class:
        issues.append(
            IssueRecord(
                NO_LABEL,
                f"{empty_without_class} referenced image frame(s) have no segment and the vocabulary sets no "
                "seg.absent_class",
                uid,
            )
        )
    return records, issues


def seg_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) Pixel Spacing of the SEG frames (shared, else first per-frame Pixel Measures), or None."""
    pm = _fg(ds, 0, "PixelMeasuresSequence")
    try:
        v = pm[0].PixelSpacing if pm else ds.get("PixelSpacing")
        if v is not None and len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0:
            return float(v[0]), float(v[1])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return None


def _frame_position(ds: Dataset, i: int) -> tuple[float, float, float] | None:
    """Image Position (Patient) of SEG frame ``i`` (0-based), or None."""
    pp = _fg(ds, i, "PlanePositionSequence")
    if pp is None:
        return None
    try:
        v = pp[0].ImagePositionPatient
        return float(v[0]), float(v[1]), float(v[2])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _frame_classes(
    ds: Dataset, arr: np.ndarray, i: int, seg_type: str, threshold: float, segments: dict[int, tuple[str, str | None]],
    named: dict[str, list[int]], expand: _Expansion, unknown: set[int],
) -> dict[str, tuple[np.ndarray | None, list[int]]] | None:
    """Class -> (its mask in SEG frame ``i`` (0-based), None when it has no pixel there; its segments).

    A label-map frame names every class of ``named`` and is expanded once per class present in it; a
    binary or fractional frame names its own segment's class; None when the frame names no segment
    (binary/fractional without Segment Identification). Segments present without a class go to
    ``unknown``.
    """
    frame = arr[i]
    if seg_type == "LABELMAP":
        hit: dict[str, list[int]] = {}
        for n in _labelmap_values(frame, segments):
            c = segments[n][1]
            if c is None:
                unknown.add(n)
            else:
                hit.setdefault(c, []).append(n)
        return {c: (expand(np.isin(frame, hit[c]) if len(hit[c]) > 1 else frame == hit[c][0]) if c in hit else None,
                    ns) for c, ns in named.items()}
    sn = _frame_segment(ds, i, arr.shape[0])
    if sn is None:
        return None
    m = expand(_mask(frame, sn, seg_type, threshold))
    c = segments.get(sn, ("", None))[1]
    if c is None:
        if m.any():
            unknown.add(sn)
        return {}
    return {c: (m, [sn])}


def read_seg_masks(
    path: Path | str | Dataset,
    vocabulary: Vocabulary | None,
    *,
    series_images: dict[str, list[str]] | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    limits: SegSettings | None = None,
) -> tuple[list[MaskRecord], list[IssueRecord]]:
    """Masks of one SEG per (source image frame, class), on the SEG grid, and issue records.

    Every source frame the SEG refers to (per-frame Derivation Image references, the Referenced Series
    instances and, with ``series_images``, the other single-frame images of a referenced series) gets
    one record per expected class: ``classes`` when given, else the vocabulary's classes except
    ``seg.absent_class``, else (no vocabulary) the classes of this SEG's segments; without ``classes``,
    classes present in a frame but not expected (e.g. the absent class) are added. A class with no
    pixel in a frame gets an all-False mask. Segments of the same class are united; FRACTIONAL pixels
    count from ``seg.min_fraction`` of the Maximum Fractional Value on; LABELMAP pixel values are
    segment numbers. A SEG beyond ``limits`` (``[seg]``) gives a ``too_large`` issue record and no
    mask. Never raises for a broken SEG.
    """
    import pydicom

    limits = limits or SegSettings()
    ds = pydicom.dcmread(path) if isinstance(path, (str, Path)) else path
    uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    issues: list[IssueRecord] = []
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    over = seg_limit_issue(ds, limits)
    if over:
        return [], [IssueRecord(TOO_LARGE, f"SEG not read: {over}", uid)]
    if not ds.get("SegmentSequence"):
        return [], [IssueRecord(MALFORMED_ANNOTATION, "SEG has no Segment Sequence", uid)]
    segments = _segment_classes(ds, vocabulary, issues)
    try:
        arr = _seg_pixels(ds)
    except Exception as e:  # decoders raise many types
        return [], [*issues, IssueRecord(UNREADABLE_PIXELS, f"SEG pixel data cannot be decoded: {e}", uid)]
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != nframes:
        return [], [*issues, IssueRecord(MALFORMED_ANNOTATION, f"{arr.shape} decoded, {nframes} frame(s) declared",
                                         uid)]
    threshold = 0.0
    if seg_type == "FRACTIONAL":
        maxv = float(ds.get("MaximumFractionalValue", 255) or 255)
        threshold = (vocabulary.seg.min_fraction if vocabulary is not None else 0.5) * maxv
    grid = (int(arr.shape[1]), int(arr.shape[2]))
    seg_classes = [c for _, c in segments.values() if c is not None]
    of_class = {c: sorted(n for n, (_, k) in segments.items() if k == c) for c in set(seg_classes)}
    named = {c: ns for c, ns in ((c, [n for n in ns if n != 0]) for c, ns in of_class.items()) if ns}

    # (image uid, frame) -> class -> its mask, segment numbers and SEG frame numbers there
    groups: dict[tuple[str, int | None], dict[str, _ClassInFrame]] = {}
    unreferenced = 0
    unknown: set[int] = set()
    expand = _Expansion(limits.max_pixels)
    try:
        for i in range(nframes):
            refs = _source_refs(ds, i)
            present = _frame_classes(ds, arr, i, seg_type, threshold, segments, named, expand, unknown) if refs \
                else None
            if present is None:
                unreferenced += 1
                continue
            for ref in refs:
                g = groups.setdefault(ref, {})
                for cls, (m, numbers) in present.items():
                    entry = g.get(cls)
                    if entry is None:
                        entry = g[cls] = _ClassInFrame(expand(np.zeros(grid, bool)))
                    if m is not None:
                        entry.mask = entry.mask | m
                        entry.seg_frames.append(i + 1)
                    entry.numbers.extend(n for n in numbers if n not in entry.numbers)
    except _OverLimit as e:
        return [], [*issues, IssueRecord(TOO_LARGE, f"SEG not read: {e}", uid)]
    if unreferenced:
        issues.append(IssueRecord(
            NO_IMAGE_REFERENCE, f"{unreferenced} SEG frame(s) name no source image frame or segment: no masks read "
            "from them", uid))
    for n in sorted(unknown):  # the same words as read_seg's: read_study says each once
        if n in segments:
            issues.append(IssueRecord(UNKNOWN_CODE, f"{segments[n][0]} is not in the vocabulary", uid))
        else:
            issues.append(IssueRecord(
                MALFORMED_ANNOTATION, f"frames use segment {n}, which the Segment Sequence does not describe", uid))

    referenced = _referenced_instances(ds)
    if series_images:
        for series in ds.get("ReferencedSeriesSequence") or []:
            for image_uid in series_images.get(str(series.get("SeriesInstanceUID", "")), []):
                if image_uid not in referenced:
                    referenced.append(image_uid)
    for ref_uid in referenced:
        if not any(k[0] == ref_uid for k in groups):
            groups[(ref_uid, None)] = {}

    if classes is not None:
        expected = list(classes)
    elif vocabulary is not None:
        absent = vocabulary.seg.absent_class
        expected = [c for c in vocabulary.class_names if c != absent]
    else:
        expected = list(dict.fromkeys(seg_classes))
    observer, spacing = _observer(ds), seg_pixel_spacing(ds)
    records: list[MaskRecord] = []
    for (image_uid, frame), g in groups.items():
        for cls in [*expected, *(c for c in g if c not in expected and classes is None)]:
            entry = g.get(cls)
            mask, numbers, seg_frames = ((entry.mask, entry.numbers, entry.seg_frames) if entry is not None
                                         else (np.zeros(grid, bool), of_class.get(cls, []), []))
            numbers = sorted(numbers)
            areas = {n: 0 for n in numbers}
            if len(numbers) > 1:  # the main segment: the largest area in this frame
                for j in seg_frames:
                    f = arr[j - 1]
                    if seg_type == "LABELMAP":
                        counts = np.bincount(f.ravel())
                        for n in areas:
                            areas[n] += int(counts[n]) if n < len(counts) else 0
                    elif (sn := _frame_segment(ds, j - 1, nframes)) is not None and sn in areas:
                        areas[sn] += int(np.count_nonzero(_mask(f, sn, seg_type, threshold)))
            main = max(numbers, key=lambda n: (areas[n], -n)) if numbers else None
            records.append(MaskRecord(cls, uid, sop, image_uid, frame, mask, tuple(numbers),
                                      tuple(sorted(set(seg_frames))), main, observer, spacing,
                                      _frame_position(ds, min(seg_frames) - 1) if seg_frames else None))
    return records, issues
