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
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    MALFORMED_ANNOTATION,
    NO_IMAGE_REFERENCE,
    NO_LABEL,
    UNKNOWN_CODE,
    UNREADABLE_PIXELS,
    IssueRecord,
    LabelRecord,
)
from dicom_io.annotations.sr import _code_of


def _fg(ds: Any, i: int, name: str) -> Any | None:
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    if pffg is not None and len(pffg) > i and name in pffg[i]:
        return pffg[i].get(name)
    sfg = ds.get("SharedFunctionalGroupsSequence")
    if sfg and name in sfg[0]:
        return sfg[0].get(name)
    return None


def _source_refs(ds: Any, i: int) -> list[tuple[str, int | None]]:
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


def _referenced_instances(ds: Any) -> list[str]:
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


def _seg_pixels(ds: Any) -> np.ndarray:
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


def _frame_segment(ds: Any, i: int, nframes: int) -> int | None:
    """The segment number of SEG frame ``i`` (0-based); TILED_FULL without per-frame groups: by frame order."""
    sid = _fg(ds, i, "SegmentIdentificationSequence")
    try:
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


def segment_frames(ds: Any) -> dict[int, list[tuple[str, int | None]]]:
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


def _observer(ds: Any) -> str | None:
    name = ds.get("ContentCreatorName")
    return str(name) if name else None


def read_seg(
    path: Path | Any, vocabulary: Any | None, *, series_images: dict[str, list[str]] | None = None
) -> tuple[list[LabelRecord], list[IssueRecord]]:
    """Label records (with masks) and issue records of one SEG file (or dataset).

    ``series_images`` (series UID -> single-frame image UIDs in the study): images of a series the SEG
    references but that no SEG frame names (tools such as dcmqi omit empty slices from the SEG and
    its references) count as referenced with no segment present.
    """
    import pydicom

    ds = pydicom.dcmread(path) if isinstance(path, (str, Path)) else path
    uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    issues: list[IssueRecord] = []
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if not ds.get("SegmentSequence"):
        return [], [IssueRecord(MALFORMED_ANNOTATION, "SEG has no Segment Sequence", uid)]

    # Segments -> classes.
    segments: dict[int, tuple[str, str | None]] = {}  # number -> (description, class)
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
    if seg_type == "FRACTIONAL":
        maxv = float(ds.get("MaximumFractionalValue", 255) or 255)
        threshold = (vocabulary.seg.min_fraction if vocabulary is not None else 0.5) * maxv
    referenced = _referenced_instances(ds)

    # frame groups: (image uid, frame) -> segment number -> mask
    groups: dict[tuple[str, int | None], dict[int, np.ndarray]] = defaultdict(dict)
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
            present = {int(v): frame == v for v in np.unique(frame) if int(v) in segments and int(v) != 0}
        else:
            n = _frame_segment(ds, i, nframes)
            if n is None:
                unreferenced += 1
                continue
            mask = frame >= threshold if seg_type == "FRACTIONAL" else frame > 0
            present = {n: mask} if mask.any() else {}
        for ref in refs:
            g = groups[ref]
            for n, m in present.items():
                g[n] = (g[n] | m) if n in g and g[n].shape == m.shape else m
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
    records: list[LabelRecord] = []
    unknown_present: set[int] = set()
    empty_without_class = 0
    for (image_uid, frame), present in groups.items():
        classes = {segments[n][1] for n in present if segments.get(n, ("", None))[1] is not None}
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
        mine = [n for n in present if segments[n][1] == cls]
        best = max(mine, key=lambda n: int(present[n].sum()))
        masks = None if whole_image == image_uid and frame is None else {n: m.astype(bool) for n, m in present.items()}
        records.append(LabelRecord(cls, uid, sop, "seg", image_uid, frame, None, best, observer, masks))
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
