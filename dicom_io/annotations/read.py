"""Reading annotations: DICOM SR and SEG objects of a study -> labelled samples with exact provenance.

``read_study(paths, vocabulary)`` reads every file of one study, finds the annotation objects (SR:
TID 1500 measurement reports and Basic/Enhanced/Comprehensive text SRs; SEG: binary, fractional,
label-map), resolves their coded findings / segments to class names through the vocabulary, and
returns one ``Sample`` per annotated image frame (its pixels, the given label, where it came from).
With ``masks=True`` it also returns one ``MaskSample`` per (SEG-referenced source frame, class): the
source pixels at their native grid and the given mask on that grid (``AnnotationSet.mask_samples``).
Whatever cannot become a sample is an ``IssueRecord``; no exception escapes ``read_study``.
labelqa's own result objects (``dicom_io.results.series.is_own_output``) are not annotations: skipped.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    MALFORMED_ANNOTATION,
    MISSING_REFERENCE,
    NO_IMAGE_REFERENCE,
    ODD_HEADER_VALUE,
    OTHER_STUDY,
    TOO_LARGE,
    UNREADABLE_FILE,
    UNREADABLE_PIXELS,
    UNSUPPORTED_SOP_CLASS,
    AnnotationSet,
    IssueRecord,
    LabelRecord,
    MaskProvenance,
    MaskRecord,
    MaskSample,
    Provenance,
    Sample,
)
from dicom_io.header import odd_values
from dicom_io.settings import SegSettings
from dicom_io.sop import SEG_STORAGE, SR_STORAGE, is_non_image

__all__ = ["read_study", "read_studies", "SR_SOP_CLASSES", "SEG_SOP_CLASSES"]

log = logging.getLogger("dicom_io.annotations")


@dataclass
class _Instance:
    path: Path
    ds: Any  # header-only pydicom Dataset (SEG/SR read in full)


SR_SOP_CLASSES = SR_STORAGE
SEG_SOP_CLASSES = SEG_STORAGE


def _iter_files(paths: Iterable[Path] | Path | str) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        else:
            out.append(p)
    return out


def _is_image(ds: Any) -> bool:
    if is_non_image(str(ds.get("SOPClassUID", ""))):
        return False
    return "Rows" in ds and "Columns" in ds


_UID_NAME = re.compile(r"^[0-9.]+$")


def _looks_like_dicom(p: Path) -> bool:
    """A DICM preamble, or a name that promises DICOM (.dcm/.dicom, or a bare UID as stores name files)."""
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError:
        return True  # let the reader report it
    if head[128:132] == b"DICM":
        return True
    return p.suffix.lower() in (".dcm", ".dicom") or bool(_UID_NAME.match(p.name))


def _read_headers(files: list[Path], issues: list[IssueRecord]) -> list[_Instance]:
    """Headers of the DICOM files; other files (no preamble, no DICOM-like name) are skipped silently."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for p in files:
        if p.name == "DICOMDIR" or not _looks_like_dicom(p):
            continue
        try:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except InvalidDicomError:  # no preamble / file meta (older writers): read the data set as is
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            uid, _ = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except Exception as e:  # pydicom raises assorted errors on damaged files
            issues.append(IssueRecord(UNREADABLE_FILE, f"{p.name}: not a readable DICOM instance ({e})"))
            continue
        image = _is_image(ds)
        for odd in odd_values(ds):  # the results are written with these normalised or left out
            issues.append(IssueRecord(ODD_HEADER_VALUE, odd.message(uid), None if image else uid,
                                      uid if image else None))
        out.append(_Instance(p, ds))
    return out


def read_studies(
    paths: Iterable[Path] | Path | str,
    vocabulary: Any | None,
    *,
    image_size: int | None = None,
    load_pixels: bool = True,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    seg_limits: SegSettings | None = None,
) -> list[AnnotationSet]:
    """``read_study`` for every study found under ``paths`` (unreadable files: a study_uid None set)."""
    issues: list[IssueRecord] = []
    groups: dict[str, list[_Instance]] = defaultdict(list)
    try:
        instances = _read_headers(_iter_files(paths), issues)
    except Exception as e:  # e.g. a folder we may not list
        return [AnnotationSet(None, [], [*issues, IssueRecord(UNREADABLE_FILE, f"cannot list the files: {e}")])]
    for inst in instances:
        groups[str(inst.ds.get("StudyInstanceUID", ""))].append(inst)
    sets = [
        _read_instances(insts, [], vocabulary, image_size=image_size, load_pixels=load_pixels,
                        pixel_transform=pixel_transform, masks=masks, mask_classes=mask_classes,
                        seg_limits=seg_limits)
        for _, insts in sorted(groups.items())
    ]
    if issues:
        sets.append(AnnotationSet(study_uid=None, issues=issues))
    return sets


def read_study(
    paths: Iterable[Path] | Path | str,
    vocabulary: Any | None,
    *,
    image_size: int | None = None,
    load_pixels: bool = True,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    """Labelled samples and issue records of one study (files or folders).

    ``vocabulary`` None resolves every finding to its code meaning (segment label for SEG): useful to
    look at foreign data; with a vocabulary, codes not in it are ``unknown_code`` issues.
    ``image_size`` resamples the pixels to (size, size) with SimpleITK (for looking at them);
    ``pixel_transform`` is applied to each frame's float [0, 1] pixels instead (a model bundle's
    ``prepare_frame``: the same resize path as training). ``load_pixels`` False leaves ``pixels``
    empty (shape (0, 0)) and skips decoding (for listing only).

    ``masks`` adds ``mask_samples``: per SEG, per referenced source image frame, per expected class
    (``mask_classes``, else the vocabulary's classes but ``seg.absent_class``), a ``MaskSample`` with
    the native-grid source pixels (``image_size``/``pixel_transform`` do not apply: models resize
    image and mask together) and the given mask on the source grid (empty when the class has no pixel
    there). The class-label ``samples`` are read as without it.

    ``seg_limits`` (``[seg]``) bounds the work of one SEG: one beyond it is a ``too_large`` issue.
    """
    issues: list[IssueRecord] = []
    try:
        instances = _read_headers(_iter_files(paths), issues)
    except Exception as e:  # never let a study stop on us
        return AnnotationSet(None, [], [IssueRecord(UNREADABLE_FILE, f"cannot list the study files: {e}")])
    return _read_instances(instances, issues, vocabulary, image_size=image_size, load_pixels=load_pixels,
                           pixel_transform=pixel_transform, masks=masks, mask_classes=mask_classes,
                           seg_limits=seg_limits)


def _read_instances(
    instances: list[_Instance],
    issues: list[IssueRecord],
    vocabulary: Any | None,
    *,
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    try:
        return _read_instances_unguarded(instances, issues, vocabulary, image_size=image_size, load_pixels=load_pixels,
                                         pixel_transform=pixel_transform, masks=masks, mask_classes=mask_classes,
                                         seg_limits=seg_limits)
    except Exception as e:  # a bug or an input nobody foresaw: say so, do not stop the caller
        log.exception("reading a study failed")
        study = str(instances[0].ds.get("StudyInstanceUID", "")) if instances else None
        return AnnotationSet(
            study or None,
            [],
            [*issues, IssueRecord(MALFORMED_ANNOTATION, f"study could not be read: {type(e).__name__}: {e}")],
        )


def _read_instances_unguarded(
    instances: list[_Instance],
    issues: list[IssueRecord],
    vocabulary: Any | None,
    *,
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    if not instances:
        return AnnotationSet(None, [], issues)
    counts: dict[str, int] = defaultdict(int)
    for inst in instances:
        counts[str(inst.ds.get("StudyInstanceUID", ""))] += 1
    study_uid = max(counts, key=lambda k: counts[k])
    images: dict[str, _Instance] = {}
    seg_headers: dict[str, Any] = {}
    records: list[LabelRecord] = []
    mask_records: list[MaskRecord] = []
    series_images: dict[str, list[str]] = defaultdict(list)
    for inst in instances:
        sop = str(inst.ds.SOPClassUID)
        if str(inst.ds.get("StudyInstanceUID", "")) == study_uid and sop not in SR_SOP_CLASSES and _is_image(inst.ds):
            if int(inst.ds.get("NumberOfFrames", 1) or 1) == 1:
                series_images[str(inst.ds.get("SeriesInstanceUID", ""))].append(str(inst.ds.SOPInstanceUID))
    for inst in instances:
        ds = inst.ds
        uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            issues.append(
                IssueRecord(
                    OTHER_STUDY,
                    f"instance of another study ignored (study {ds.get('StudyInstanceUID')})",
                    uid if not _is_image(ds) else None,
                    uid if _is_image(ds) else None,
                )
            )
            continue
        try:
            if sop in SR_SOP_CLASSES:
                from dicom_io.annotations.sr import read_sr

                recs, iss = read_sr(ds, vocabulary)
            elif sop in SEG_SOP_CLASSES:
                from dicom_io.annotations.seg import read_seg, read_seg_masks, seg_limit_issue
                from dicom_io.results.series import REVIEWED_LABEL_SERIES_NUMBER, is_own_output_dataset

                if is_own_output_dataset(ds) and str(ds.get("SeriesNumber")) != str(REVIEWED_LABEL_SERIES_NUMBER):
                    continue  # labelqa's suggested-correction SEG: a result, not an annotation (a reviewer's is)
                over = seg_limit_issue(ds, seg_limits)
                if over:  # decided from the header: nothing of it is decoded
                    issues.append(IssueRecord(TOO_LARGE, f"SEG not read: {over}", uid))
                    continue
                import pydicom

                full_seg = pydicom.dcmread(inst.path)
                recs, iss = read_seg(full_seg, vocabulary, series_images=series_images, limits=seg_limits)
                if masks:
                    mrecs, miss = read_seg_masks(full_seg, vocabulary, series_images=series_images,
                                                 classes=None if mask_classes is None else list(mask_classes),
                                                 limits=seg_limits)
                    mask_records.extend(mrecs)
                    seen = {(i.code, i.message, i.annotation_uid) for i in iss}
                    iss = [*iss, *(i for i in miss if (i.code, i.message, i.annotation_uid) not in seen)]
            elif _is_image(ds):
                images[uid] = inst
                continue
            else:
                name = getattr(ds.SOPClassUID, "name", sop)
                issues.append(
                    IssueRecord(UNSUPPORTED_SOP_CLASS, f"{name} ({sop}) carries no labels labelqa reads", uid)
                )
                continue
        except Exception as e:  # a parser bug or a wildly broken object: record it, go on
            log.warning("annotation %s could not be read: %s", uid, e)
            issues.append(IssueRecord(MALFORMED_ANNOTATION, f"cannot read annotation: {type(e).__name__}: {e}", uid))
            continue
        if sop in SEG_SOP_CLASSES:
            seg_headers[uid] = ds
        records.extend(recs)
        issues.extend(iss)
    try:
        records = _resolve_segment_references(records, seg_headers, issues)
    except Exception as e:  # a SEG header too broken to map segments to frames
        issues.append(IssueRecord(MALFORMED_ANNOTATION, f"SR -> SEG segment references unusable: {e}"))
        records = [r for r in records if r.via_segment is None]

    full: dict[str, Any] = {}
    samples = _attach(records, images, study_uid, vocabulary, issues, image_size, load_pixels, pixel_transform,
                      full)
    mask_samples = _attach_masks(mask_records, images, study_uid, issues, load_pixels, full) if masks else []
    return AnnotationSet(study_uid, samples, issues, mask_samples)


def _resolve_segment_references(
    records: list[LabelRecord], seg_headers: dict[str, Any], issues: list[IssueRecord]
) -> list[LabelRecord]:
    """Replace SR records that name a SEG segment by one record per image frame that segment covers."""
    from dataclasses import replace

    from dicom_io.annotations.seg import segment_frames

    out = []
    for r in records:
        if r.via_segment is None:
            out.append(r)
            continue
        seg_uid, numbers = r.via_segment
        header = seg_headers.get(seg_uid)
        if header is None:
            issues.append(
                IssueRecord(
                    MISSING_REFERENCE,
                    f"content item {r.content_path}: label {r.label!r} refers to segment(s) {list(numbers)} of "
                    f"segmentation {seg_uid}, which is not in the study",
                    r.annotation_uid,
                )
            )
            continue
        frames = segment_frames(header)
        targets = sorted({t for n in numbers for t in frames.get(n, [])}, key=lambda t: (t[0], t[1] or 0))
        if not targets:
            issues.append(
                IssueRecord(
                    NO_IMAGE_REFERENCE,
                    f"content item {r.content_path}: segment(s) {list(numbers)} of {seg_uid} cover no referenced image",
                    r.annotation_uid,
                )
            )
            continue
        for image_uid, frame in targets:
            out.append(replace(r, image_uid=image_uid, frame=frame, segment_number=numbers[0], via_segment=None))
    return out


def _attach(
    records: list[LabelRecord],
    images: dict[str, _Instance],
    study_uid: str,
    vocabulary: Any | None,
    issues: list[IssueRecord],
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    full: dict[str, Any] | None = None,
) -> list[Sample]:
    from dicom_io import pixels as px

    # One label per image frame: duplicates collapse, disagreement is a conflict.
    by_key: dict[tuple[str, int | None], list[LabelRecord]] = defaultdict(list)
    for r in records:
        by_key[(r.image_uid, r.frame)].append(r)
    full = {} if full is None else full
    samples: list[Sample] = []
    for (image_uid, frame), recs in by_key.items():
        labels = sorted({r.label for r in recs})
        if len(labels) > 1:
            where = ", ".join(f"{r.label!r} from {r.annotation_uid}" for r in recs)
            issues.append(
                IssueRecord(
                    CONFLICTING_LABELS,
                    f"image {image_uid}{'' if frame is None else f' frame {frame}'} has conflicting labels: {where}",
                    recs[0].annotation_uid,
                    image_uid,
                )
            )
            continue
        rec = recs[0]
        inst = images.get(image_uid)
        if inst is None:
            issues.append(
                IssueRecord(
                    MISSING_REFERENCE,
                    f"label {rec.label!r} refers to image {image_uid} which is not in the study",
                    rec.annotation_uid,
                    image_uid,
                )
            )
            continue
        arr = np.zeros((0, 0), np.float32)
        spacing = None
        if load_pixels:
            try:
                ds = full.get(image_uid)
                if ds is None:
                    import pydicom

                    ds = full[image_uid] = pydicom.dcmread(inst.path)
                arr, spacing = px.load_frame(ds, frame, None if pixel_transform is not None else image_size)
                if pixel_transform is not None:
                    arr = pixel_transform(arr)
            except Exception as e:
                issues.append(
                    IssueRecord(
                        UNREADABLE_PIXELS, f"pixels of image {image_uid} unusable: {e}", rec.annotation_uid, image_uid
                    )
                )
                continue
        hdr = inst.ds
        prov = Provenance(
            study_uid=study_uid,
            annotation_uid=rec.annotation_uid,
            annotation_sop_class_uid=rec.annotation_sop_class_uid,
            source=rec.source,
            content_path=rec.content_path,
            segment_number=rec.segment_number,
            image_uid=image_uid,
            image_sop_class_uid=str(hdr.get("SOPClassUID", "")) or None,
            frame=frame,
            observer=rec.observer,
            series_uid_of_image=str(hdr.get("SeriesInstanceUID", "")) or None,
        )
        samples.append(Sample(rec.label, arr, prov, rec.masks, spacing))
    return samples


def _to_source_grid(
    mask: np.ndarray,
    shape: tuple[int, int],
    seg_spacing: tuple[float, float] | None,
    spacing: tuple[float, float],
    offset: tuple[int, int] | None,
) -> np.ndarray | None:
    """A SEG-grid mask on the source grid ``shape`` (None when it cannot be placed there).

    Same Pixel Spacing: the SEG grid is placed at ``offset`` (source row, column of the SEG's first
    pixel, from the plane positions; (0, 0) when unknown), cropped or padded. Another spacing covering
    the same extent (within 2 %), or a SEG that says no spacing: nearest-neighbour resampling.
    """
    same_spacing = seg_spacing is not None and all(
        abs(seg_spacing[k] - spacing[k]) <= 1e-3 * max(spacing[k], 1e-9) for k in (0, 1))
    if mask.shape == shape and (offset in (None, (0, 0)) or not same_spacing):
        return mask
    if same_spacing:
        r0, c0 = offset or (0, 0)
        out = np.zeros(shape, bool)
        rs, cs = max(0, r0), max(0, c0)
        re, ce = min(shape[0], r0 + mask.shape[0]), min(shape[1], c0 + mask.shape[1])
        if re > rs and ce > cs:
            out[rs:re, cs:ce] = mask[rs - r0 : re - r0, cs - c0 : ce - c0]
        return out
    if seg_spacing is not None:
        for k in (0, 1):
            a, b = mask.shape[k] * seg_spacing[k], shape[k] * spacing[k]
            if abs(a - b) > 0.02 * max(a, b):
                return None
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return np.ascontiguousarray(mask[np.ix_(rows, cols)])


def _grid_offset(
    hdr: Any, frame: int | None, seg_position: tuple[float, float, float] | None, spacing: tuple[float, float]
) -> tuple[int, int] | None:
    """(row, column) of the SEG frame's first pixel on the source frame, from both Image Positions and the
    source's orientation; None when either position is unknown or the offset is not a whole pixel."""
    from dicom_io.pixels import _fg_item

    if seg_position is None:
        return None
    index = 0 if frame is None else frame - 1
    pp, po = _fg_item(hdr, index, "PlanePositionSequence"), _fg_item(hdr, index, "PlaneOrientationSequence")
    try:
        pos = np.asarray((pp or hdr).ImagePositionPatient, float)
        iop = np.asarray((po or hdr).ImageOrientationPatient, float)
    except (AttributeError, TypeError, ValueError):
        return None
    if pos.shape != (3,) or iop.shape != (6,):
        return None
    d = np.asarray(seg_position, float) - pos
    col, row = float(d @ iop[:3]) / spacing[1], float(d @ iop[3:]) / spacing[0]
    if abs(col - round(col)) > 0.1 or abs(row - round(row)) > 0.1:
        return None
    return round(row), round(col)


def _attach_masks(
    records: list[MaskRecord],
    images: dict[str, _Instance],
    study_uid: str,
    issues: list[IssueRecord],
    load_pixels: bool,
    full: dict[str, Any],
) -> list[MaskSample]:
    """Mask records + their source frames -> mask samples on the source grid (one per frame and class)."""
    from dicom_io import pixels as px

    said = {(i.code, i.annotation_uid, i.image_uid) for i in issues}

    def issue(code: str, message: str, rec: MaskRecord) -> None:
        if (code, rec.annotation_uid, rec.image_uid) not in said:
            said.add((code, rec.annotation_uid, rec.image_uid))
            issues.append(IssueRecord(code, message, rec.annotation_uid, rec.image_uid))

    # Normalise frames (a single-frame source named as frame 1 is frame None) and unite duplicates.
    merged: dict[tuple[str, str, int | None, str], MaskRecord] = {}
    for rec in records:
        inst = images.get(rec.image_uid)
        if inst is None:
            issue(MISSING_REFERENCE, f"segmentation refers to image {rec.image_uid} which is not in the study", rec)
            continue
        nframes = px.n_frames(inst.ds)
        frame = rec.frame
        if nframes == 1 and frame == 1:
            frame = None
        if nframes > 1 and frame is None:
            issue(NO_IMAGE_REFERENCE, f"segmentation names multi-frame image {rec.image_uid} without a frame "
                  "number: no mask sample", rec)
            continue
        if frame is not None and not 1 <= frame <= nframes:
            issue(MALFORMED_ANNOTATION, f"segmentation names frame {frame} of image {rec.image_uid}, which has "
                  f"{nframes} frame(s)", rec)
            continue
        key = (rec.annotation_uid, rec.image_uid, frame, rec.class_name)
        prev = merged.get(key)
        if prev is None:
            merged[key] = MaskRecord(**{**rec.__dict__, "frame": frame})
        elif prev.mask.shape == rec.mask.shape:
            prev.mask = prev.mask | rec.mask
            prev.segment_numbers = tuple(sorted(set(prev.segment_numbers) | set(rec.segment_numbers)))
            prev.seg_frames = tuple(sorted(set(prev.seg_frames) | set(rec.seg_frames)))
    out: list[MaskSample] = []
    frames: dict[tuple[str, int | None], tuple[np.ndarray, tuple[float, float]]] = {}  # decoded once per frame
    for rec in merged.values():
        inst = images[rec.image_uid]
        hdr = inst.ds
        shape = (int(hdr.Rows), int(hdr.Columns))
        spacing = px.pixel_spacing(hdr, rec.frame)
        arr = np.zeros((0, 0), np.float32)
        if load_pixels:
            try:
                if (rec.image_uid, rec.frame) not in frames:
                    ds = full.get(rec.image_uid)
                    if ds is None:
                        import pydicom

                        ds = full[rec.image_uid] = pydicom.dcmread(inst.path)
                    frames[(rec.image_uid, rec.frame)] = (px.frame_to_float(ds, rec.frame),
                                                          px.pixel_spacing(ds, rec.frame))
                arr, spacing = frames[(rec.image_uid, rec.frame)]  # the classes of a frame share its pixels
                shape = (int(arr.shape[0]), int(arr.shape[1]))
            except Exception as e:  # decoders raise many types
                issue(UNREADABLE_PIXELS, f"pixels of image {rec.image_uid} unusable: {e}", rec)
                continue
        mask = _to_source_grid(rec.mask.astype(bool), shape, rec.seg_spacing, spacing,
                               _grid_offset(hdr, rec.frame, rec.seg_position, spacing))
        if mask is None:
            issue(MALFORMED_ANNOTATION, f"SEG grid {rec.mask.shape} (spacing {rec.seg_spacing}) does not cover "
                  f"image {rec.image_uid} ({shape}, spacing {spacing}): no mask sample", rec)
            continue
        prov = MaskProvenance(
            study_uid=study_uid,
            annotation_uid=rec.annotation_uid,
            annotation_sop_class_uid=rec.annotation_sop_class_uid,
            source="seg",
            content_path=None,
            segment_number=rec.main_segment,
            image_uid=rec.image_uid,
            image_sop_class_uid=str(hdr.get("SOPClassUID", "")) or None,
            frame=rec.frame,
            observer=rec.observer,
            series_uid_of_image=str(hdr.get("SeriesInstanceUID", "")) or None,
            segment_numbers=rec.segment_numbers,
            seg_frames=rec.seg_frames,
        )
        out.append(MaskSample(rec.class_name, arr, mask, spacing, prov))
    return out
