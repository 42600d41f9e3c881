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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicom_io import pixels as px
from dicom_io import study as _study  # the module, not its names: dicom_io.study imports this package's records
from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    MALFORMED_ANNOTATION,
    MISSING_REFERENCE,
    NO_IMAGE_REFERENCE,
    ODD_HEADER_VALUE,
    OTHER_STUDY,
    TOO_LARGE,
    UNREADABLE_PIXELS,
    UNSUPPORTED_SOP_CLASS,
    AnnotationSet,
    IssueCode,
    IssueRecord,
    LabelRecord,
    MaskProvenance,
    MaskRecord,
    MaskSample,
    MaskVolume,
    Provenance,
    Sample,
)
from dicom_io.annotations.seg import _source_refs, read_seg, read_seg_masks, seg_limit_issue, segment_frames
from dicom_io.annotations.sr import read_sr
from dicom_io.header import odd_values
from dicom_io.pixels import _fg_item, n_frames
from dicom_io.settings import SegSettings
from dicom_io.sop import SEG_STORAGE, SR_STORAGE, is_non_image

if TYPE_CHECKING:
    from dicom_io.geometry import ImageVolume
    from dicom_io.study import Study, StudyFile
    from dicom_io.vocabulary import Vocabulary

__all__ = ["read_study", "read_studies", "SR_SOP_CLASSES", "SEG_SOP_CLASSES"]

log = logging.getLogger("dicom_io.annotations")


SR_SOP_CLASSES = SR_STORAGE
SEG_SOP_CLASSES = SEG_STORAGE


def _is_image(ds: Dataset) -> bool:
    if is_non_image(str(ds.get("SOPClassUID", ""))):
        return False
    return "Rows" in ds and "Columns" in ds


def read_studies(
    paths: list[Study] | Iterable[Path] | Path | str,
    vocabulary: Vocabulary | None,
    *,
    image_size: int | None = None,
    load_pixels: bool = True,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    volumes: bool = False,
    seg_limits: SegSettings | None = None,
) -> list[AnnotationSet]:
    """``read_study`` for every study found under ``paths`` (unreadable files: a study_uid None set), or for
    each of the given studies."""
    if isinstance(paths, list) and paths and all(isinstance(s, _study.Study) for s in paths):
        studies: list[Study] = list(paths)
    else:
        studies = _study.open_studies(paths)  # type: ignore[arg-type]  # files or folders
    return [read_study(s, vocabulary, image_size=image_size, load_pixels=load_pixels, pixel_transform=pixel_transform,
                       masks=masks, mask_classes=mask_classes, volumes=volumes, seg_limits=seg_limits)
            for s in studies]


def read_study(
    paths: Study | Iterable[Path] | Path | str,
    vocabulary: Vocabulary | None,
    *,
    image_size: int | None = None,
    load_pixels: bool = True,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    volumes: bool = False,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    """Labelled samples and issue records of one study (a :class:`~dicom_io.study.Study`, files or folders).

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

    ``volumes`` adds, for every SEG over a series (single-frame slices or an enhanced multi-frame
    image), the series as an ``ImageVolume`` (``AnnotationSet.volumes``, by Series Instance UID; pixels
    only with ``load_pixels``) and one ``MaskVolume`` per segment on its grid
    (``AnnotationSet.mask_volumes``); a series that is not a volume (``dicom_io.volumes``: missing
    slice, tilted slice, mixed spacing, duplicate positions) is an issue record for that SEG. A SEG
    over one image or over images without plane geometry is a 2-D annotation: no volume, no issue.
    The frame-by-frame ``samples`` and ``mask_samples`` are read as without it.

    ``seg_limits`` (``[seg]``) bounds the work of one SEG: one beyond it is a ``too_large`` issue. Header
    values pydicom cannot convert (dates, times, Patient's Sex) are ``odd_header_value`` issues: the
    results are written with them normalised or left out.
    """
    study = paths if isinstance(paths, _study.Study) else _study.open_study(paths)
    if study.uid is None and not study.files:
        return AnnotationSet(None, [], list(study.issues))
    return _read_instances(list(study), list(study.issues), vocabulary, image_size=image_size, load_pixels=load_pixels,
                           pixel_transform=pixel_transform, masks=masks, mask_classes=mask_classes,
                           volumes=volumes, seg_limits=seg_limits)


def _read_instances(
    instances: list[StudyFile],
    issues: list[IssueRecord],
    vocabulary: Vocabulary | None,
    *,
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    volumes: bool = False,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    try:
        return _read_instances_unguarded(instances, issues, vocabulary, image_size=image_size, load_pixels=load_pixels,
                                         pixel_transform=pixel_transform, masks=masks, mask_classes=mask_classes,
                                         volumes=volumes, seg_limits=seg_limits)
    except Exception as e:  # a bug or an input nobody foresaw: say so, do not stop the caller
        log.exception("reading a study failed")
        study = str(instances[0].dataset.get("StudyInstanceUID", "")) if instances else None
        return AnnotationSet(
            study or None,
            [],
            [*issues, IssueRecord(MALFORMED_ANNOTATION, f"study could not be read: {type(e).__name__}: {e}")],
        )


def _read_instances_unguarded(
    instances: list[StudyFile],
    issues: list[IssueRecord],
    vocabulary: Vocabulary | None,
    *,
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: bool = False,
    mask_classes: Sequence[str] | None = None,
    volumes: bool = False,
    seg_limits: SegSettings | None = None,
) -> AnnotationSet:
    if not instances:
        return AnnotationSet(None, [], issues)
    counts: dict[str, int] = defaultdict(int)
    for inst in instances:
        counts[str(inst.dataset.get("StudyInstanceUID", ""))] += 1
    study_uid = max(counts, key=lambda k: counts[k])
    images: dict[str, StudyFile] = {}
    seg_headers: dict[str, Dataset] = {}
    records: list[LabelRecord] = []
    mask_records: list[MaskRecord] = []
    seg_datasets: dict[str, Dataset] = {}
    series_images: dict[str, list[str]] = defaultdict(list)
    for inst in instances:
        ds = inst.dataset
        if str(ds.get("StudyInstanceUID", "")) == study_uid and str(ds.SOPClassUID) not in SR_SOP_CLASSES \
                and _is_image(ds) and int(ds.get("NumberOfFrames", 1) or 1) == 1:
            series_images[str(ds.get("SeriesInstanceUID", ""))].append(str(ds.SOPInstanceUID))
    for inst in instances:
        ds = inst.dataset
        uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        image = _is_image(ds)
        for odd in odd_values(ds):  # the results are written with these normalised or left out
            issues.append(IssueRecord(ODD_HEADER_VALUE, odd.message(uid), None if image else uid,
                                      uid if image else None))
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
                recs, iss = read_sr(ds, vocabulary)
            elif sop in SEG_SOP_CLASSES:
                over = seg_limit_issue(ds, seg_limits)
                if over:  # decided from the header: nothing of it is decoded
                    issues.append(IssueRecord(TOO_LARGE, f"SEG not read: {over}", uid))
                    continue
                full_seg = ds
                recs, iss = read_seg(full_seg, vocabulary, series_images=series_images, limits=seg_limits)
                if masks:
                    mrecs, miss = read_seg_masks(full_seg, vocabulary, series_images=series_images,
                                                 classes=None if mask_classes is None else list(mask_classes),
                                                 limits=seg_limits)
                    mask_records.extend(mrecs)
                    seen = {(i.code, i.message, i.annotation_uid) for i in iss}
                    iss = [*iss, *(i for i in miss if (i.code, i.message, i.annotation_uid) not in seen)]
                if volumes:
                    seg_datasets[uid] = full_seg
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

    samples = _attach(records, images, study_uid, vocabulary, issues, image_size, load_pixels, pixel_transform)
    mask_samples = _attach_masks(mask_records, images, study_uid, issues, load_pixels) if masks else []
    image_volumes: dict[str, ImageVolume] = {}
    mask_volumes: list[MaskVolume] = []
    if volumes:
        image_volumes, mask_volumes = _read_volumes(seg_datasets, images, study_uid, vocabulary, issues, load_pixels)
    return AnnotationSet(study_uid, samples, issues, mask_samples, image_volumes, mask_volumes)


_TWO_D = (IssueCode.SINGLE_SLICE, IssueCode.NO_PLANE_GEOMETRY)


def _referenced_slices(seg: Dataset, series: str, images: dict[str, StudyFile]) -> int:
    """How many image frames of ``series`` a SEG refers to (per-frame source references and the Referenced
    Series Sequence; a referenced multi-frame image counts all its frames)."""

    uids: set[str] = set()
    for item in seg.get("ReferencedSeriesSequence") or []:
        if str(item.get("SeriesInstanceUID", "")) == series:
            for inst in item.get("ReferencedInstanceSequence") or []:
                uids.add(str(inst.get("ReferencedSOPInstanceUID", "")))
    for i in range(int(seg.get("NumberOfFrames", 1) or 1)):
        uids.update(u for u, _ in _source_refs(seg, i))
    mine = [u for u in uids if u in images and str(images[u].dataset.get("SeriesInstanceUID", "")) == series]
    return sum(n_frames(images[u].dataset) for u in mine)


def _read_volumes(
    segs: dict[str, Dataset],
    images: dict[str, StudyFile],
    study_uid: str,
    vocabulary: Vocabulary | None,
    issues: list[IssueRecord],
    load_pixels: bool,
) -> tuple[dict[str, ImageVolume], list[MaskVolume]]:
    """Per SEG: the series it is over as a volume (read once per series) and its segments as mask volumes."""
    from dataclasses import replace

    # import cycle: dicom_io.volumes imports dicom_io.annotations, whose package imports this module
    from dicom_io.annotations.seg_volume import read_seg_volumes, seg_series_uids
    from dicom_io.volumes import series_volume

    series_of_image = {uid: str(inst.dataset.get("SeriesInstanceUID", "")) for uid, inst in images.items()}
    members: dict[str, list[Dataset]] = defaultdict(list)
    for uid, inst in images.items():
        members[series_of_image[uid]].append(inst.dataset)

    def load(header: Dataset) -> Dataset:  # the study's own dataset: every file is parsed once
        return images[str(header.SOPInstanceUID)].dataset

    said = {(i.code, i.message, i.annotation_uid) for i in issues}

    def issue(i: IssueRecord) -> None:
        if (i.code, i.message, i.annotation_uid) not in said:
            said.add((i.code, i.message, i.annotation_uid))
            issues.append(i)

    read: dict[str, tuple[ImageVolume | None, list[IssueRecord]]] = {}
    out_volumes: dict[str, ImageVolume] = {}
    out_masks: list[MaskVolume] = []
    for seg_uid, ds in segs.items():
        try:
            candidates = seg_series_uids(ds, series_of_image)
            present = [s for s in candidates if s in members]
            if not present:
                issue(IssueRecord(MISSING_REFERENCE, f"SEG is over series {candidates[0]}, which is not in the "
                                  "study: no mask volumes", seg_uid) if candidates else
                      IssueRecord(NO_IMAGE_REFERENCE, "SEG names no image series: no mask volumes", seg_uid))
                continue
            series = present[0]
            if _referenced_slices(ds, series, images) <= 1:
                continue  # a SEG over one image (frame) is a 2-D annotation: the frame-by-frame path reads it
            if series not in read:
                read[series] = series_volume(members[series], load_pixels=load_pixels, loader=load)
            volume, volume_issues = read[series]
            if volume is None and all(i.code in _TWO_D for i in volume_issues):
                continue  # a SEG over one image, or images without plane geometry: a 2-D annotation
            for i in volume_issues:
                issue(replace(i, annotation_uid=seg_uid))
            if volume is None:
                continue
            out_volumes[series] = volume
            masks, mask_issues = read_seg_volumes(ds, volume, vocabulary, study_uid=study_uid,
                                                  study_images=images.keys())
        except Exception as e:  # a SEG or series too broken for the volume path: say so, go on
            log.warning("SEG %s could not be read as volumes: %s", seg_uid, e)
            issue(IssueRecord(MALFORMED_ANNOTATION, f"cannot read the SEG as mask volumes: {type(e).__name__}: {e}",
                              seg_uid))
            continue
        out_masks.extend(masks)
        for i in mask_issues:
            issue(i)
    return out_volumes, out_masks


def _resolve_segment_references(
    records: list[LabelRecord], seg_headers: dict[str, Dataset], issues: list[IssueRecord]
) -> list[LabelRecord]:
    """Replace SR records that name a SEG segment by one record per image frame that segment covers."""
    from dataclasses import replace

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
    images: dict[str, StudyFile],
    study_uid: str,
    vocabulary: Vocabulary | None,
    issues: list[IssueRecord],
    image_size: int | None,
    load_pixels: bool,
    pixel_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Sample]:
    # One label per image frame: duplicates collapse, disagreement is a conflict.
    by_key: dict[tuple[str, int | None], list[LabelRecord]] = defaultdict(list)
    for r in records:
        by_key[(r.image_uid, r.frame)].append(r)
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
                ds = inst.dataset
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
        hdr = inst.dataset
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
    hdr: Dataset, frame: int | None, seg_position: tuple[float, float, float] | None, spacing: tuple[float, float]
) -> tuple[int, int] | None:
    """(row, column) of the SEG frame's first pixel on the source frame, from both Image Positions and the
    source's orientation; None when either position is unknown or the offset is not a whole pixel."""
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
    images: dict[str, StudyFile],
    study_uid: str,
    issues: list[IssueRecord],
    load_pixels: bool,
) -> list[MaskSample]:
    """Mask records + their source frames -> mask samples on the source grid (one per frame and class)."""

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
        nframes = px.n_frames(inst.dataset)
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
        hdr = inst.dataset
        shape = (int(hdr.Rows), int(hdr.Columns))
        spacing = px.pixel_spacing(hdr, rec.frame)
        arr = np.zeros((0, 0), np.float32)
        if load_pixels:
            try:
                if (rec.image_uid, rec.frame) not in frames:
                    ds = inst.dataset
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
