"""Suggested-correction SEG: the model consensus masks of flagged masks, as a Segmentation a viewer overlays.

Only over source images with plane geometry (``geometry.has_plane_geometry``: a Frame of Reference,
pixel spacing, orientation and position): a viewer places a SEG's frames by it, and a SEG without it
puts OHIF into its error page. A flagged mask over any other image gets no SEG; its mask overlay
Secondary Capture shows the suggestion, and the QA report says so (LQA-0405).

One binary SEG (highdicom) per source series (single-frame images), else per source image (a
multi-frame image), derived from the same source images as the audited SEG (Derivation Image Sequence,
Referenced Series Sequence), one segment per class: Segment Label "SUGGESTION <class>", the original
segment's property category and type (else "Clinical finding" and the class code), algorithm type
AUTOMATIC with the labelqa bundle as algorithm. Content Label "SUGGESTION", Content Description and
Series Description say it is a suggestion, not for diagnosis; series number 9905, Manufacturer
"labelqa" (so ``is_own_output`` keeps it from being audited as an annotation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.results.geometry import has_plane_geometry
from dicom_io.results.uids import derived_uid

log = logging.getLogger("dicom_io.results")

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence

    from dicom_io.results.records import AlgorithmInfo, AuditedMask

__all__ = [
    "SERIES_DESCRIPTION", "CONTENT_LABEL", "CONTENT_DESCRIPTION", "suggestion_segment_label", "n_frames",
    "complete_seg_header", "NO_GEOMETRY_NOTE", "suggested_segs", "pixels_on_source_frames", "read_suggestion",
]

SERIES_DESCRIPTION = "labelqa SUGGESTED mask corrections (not for diagnosis)"
CONTENT_LABEL = "SUGGESTION"
CONTENT_DESCRIPTION = "SUGGESTION - NOT FOR DIAGNOSIS: labelqa model consensus"


NO_GEOMETRY_NOTE = ("no suggestion SEG: the source image has no plane geometry (Frame of Reference, position, "
                    "orientation, pixel spacing); the mask overlay image shows the suggested mask")
"""What the QA report says about a flagged mask whose source cannot carry a SEG."""


def suggestion_segment_label(class_name: str) -> str:
    """The Segment Label of a class's segment in a suggestion SEG (how :func:`read_suggestion` finds it)."""
    return f"SUGGESTION {class_name}"[:64]


def n_frames(ds: Dataset) -> int:
    """Number of frames of an image (1 for a single-frame image)."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def complete_seg_header(seg: Dataset, source: Dataset, body_part: str | None) -> None:
    """What highdicom leaves to us on a SEG built over ``source`` images: Patient Orientation (General
    Image, Type 2C) for images without a plane orientation, and Body Part Examined (dciodvfy wants it)."""
    if "PatientOrientation" not in seg and "ImageOrientationPatient" not in source \
            and "SharedFunctionalGroupsSequence" not in source:
        seg.PatientOrientation = ""
    if body_part:
        seg.BodyPartExamined = str(body_part)


def _group_key(ds: Dataset) -> str:
    if n_frames(ds) == 1 and "FrameOfReferenceUID" in ds:
        return f"series:{ds.SeriesInstanceUID}"
    return f"image:{ds.SOPInstanceUID}"


def _original_segment(annotation: Dataset | None, number: int | None) -> Dataset | None:
    if annotation is None or number is None:
        return None
    for item in annotation.get("SegmentSequence") or []:
        if int(item.get("SegmentNumber", -1)) == int(number):
            return item
    return None


def _concept(seq: DicomSequence | None) -> hd.sr.CodedConcept | None:
    import highdicom as hd

    if seq is None:
        return None
    try:
        c = seq[0]
        return hd.sr.CodedConcept(str(c.CodeValue), str(c.CodingSchemeDesignator), str(c.CodeMeaning))
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def suggested_segs(
    sources: Mapping[str, Dataset],
    annotations: Mapping[str, Dataset],
    masks: Sequence[AuditedMask],
    *,
    algorithm: AlgorithmInfo,
    run_key: str,
    series_number: int,
    manufacturer: str,
) -> tuple[list[Dataset], dict[int, tuple[Dataset, int]]]:
    """The suggestion SEGs for ``masks`` (those with a consensus, over a source with plane geometry) and, per
    index into ``masks``, the SEG and segment number holding its consensus. Raises ValueError when a
    consensus is not on its source frame's grid."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    groups: dict[str, list[int]] = {}
    for i, m in enumerate(masks):
        if m.consensus is None:
            continue
        src = sources[m.image_uid]
        if not has_plane_geometry(src):
            log.info("no suggestion SEG for %s: the image has no plane geometry", m.image_uid)
            continue
        if m.consensus.shape != (int(src.Rows), int(src.Columns)):
            raise ValueError(f"consensus mask {m.consensus.shape} of image {m.image_uid} is not on its grid "
                             f"{(int(src.Rows), int(src.Columns))}")
        groups.setdefault(_group_key(src), []).append(i)
    series_uid = derived_uid(run_key, "series", "suggestion-seg")
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=dcm.DCM.ArtificialIntelligence, version=algorithm.version[:64])
    out: list[Dataset] = []
    where: dict[int, tuple[Dataset, int]] = {}
    for n, (key, idx) in enumerate(sorted(groups.items())):
        images = sorted({masks[i].image_uid for i in idx},
                        key=lambda u: (int(sources[u].get("InstanceNumber", 0) or 0), u))
        srcs = [sources[u] for u in images]
        offset, o = {}, 0
        for ds in srcs:
            offset[str(ds.SOPInstanceUID)] = o
            o += n_frames(ds)
        classes: list[str] = []
        for i in idx:
            if masks[i].class_name not in classes:
                classes.append(masks[i].class_name)
        rows, cols = int(srcs[0].Rows), int(srcs[0].Columns)
        pixels = np.zeros((o, rows, cols, len(classes)), bool)
        descs = []
        for k, cls in enumerate(classes, start=1):
            first = next(masks[i] for i in idx if masks[i].class_name == cls)
            orig = _original_segment(annotations.get(first.annotation_uid), first.segment_number)
            category = _concept(orig.get("SegmentedPropertyCategoryCodeSequence")) if orig is not None else None
            ptype = _concept(orig.get("SegmentedPropertyTypeCodeSequence")) if orig is not None else None
            code = first.class_concept()
            descs.append(hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=suggestion_segment_label(cls),
                segmented_property_category=category or hd.sr.CodedConcept("404684003", "SCT", "Clinical finding"),
                segmented_property_type=ptype or hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
            ))
        for i in idx:
            m = masks[i]
            assert m.consensus is not None
            f = offset[m.image_uid] + (0 if m.frame is None else int(m.frame) - 1)
            k = classes.index(m.class_name)
            pixels[f, :, :, k] |= m.consensus
        seg_uid = derived_uid(run_key, "suggestion-seg", key)
        seg = hd.seg.Segmentation(
            source_images=srcs,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descs,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=seg_uid,
            instance_number=n + 1,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm.name[:64],
            software_versions=algorithm.version[:64],
            device_serial_number=algorithm.bundle_hash.split(":")[-1][:16] or "0",
            content_label=CONTENT_LABEL,
            content_description=CONTENT_DESCRIPTION,
            series_description=SERIES_DESCRIPTION,
            omit_empty_frames=bool(pixels.any()),
        )
        for item in list(seg.get("DimensionOrganizationSequence") or []) + list(seg.get("DimensionIndexSequence")
                                                                                or []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = derived_uid(seg_uid, "dimension-organization")
        complete_seg_header(seg, srcs[0], srcs[0].get("BodyPartExamined"))
        out.append(seg)
        for i in idx:
            where[i] = (seg, classes.index(masks[i].class_name) + 1)
    return out, where


def pixels_on_source_frames(
    seg: hd.seg.Segmentation,
    frames: Sequence[tuple[str, int | None]],
    segment_numbers: Sequence[int] | None = None,
    *,
    rescale_fractional: bool = True,
) -> np.ndarray:
    """The pixels of a SEG (a ``highdicom.seg.Segmentation``) on source frames, (frames, rows, columns, segments).

    ``frames``: (source SOP Instance UID, 1-based frame or None for a single-frame image), either all
    single-frame images or frames of one multi-frame image. A frame the SEG stores nothing for is
    zeros (SEGs omit empty frames). ``rescale_fractional`` False gives a fractional SEG's stored
    values (0..Maximum Fractional Value). Raises ValueError for a source the SEG does not refer to.
    """
    kw: dict[str, Any] = {"segment_numbers": None if segment_numbers is None else [int(n) for n in segment_numbers],
                          "assert_missing_frames_are_empty": True, "rescale_fractional": rescale_fractional,
                          "ignore_spatial_locations": True}
    uids = [u for u, _ in frames]
    numbers = {f for _, f in frames}
    try:
        if numbers == {None}:
            return np.asarray(seg.get_pixels_by_source_instance(uids, **kw))
        if len(set(uids)) == 1 and None not in numbers:
            return np.asarray(seg.get_pixels_by_source_frame(uids[0], [int(f) for _, f in frames if f is not None],
                                                             **kw))
    except (KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"the SEG has no pixels for source frames {frames}: {e}") from None
    raise ValueError("source frames must be single-frame images or frames of one multi-frame image")


def read_suggestion(suggestion: Dataset, class_name: str, image_uid: str, frame: int | None) -> np.ndarray:
    """The suggested (consensus) mask of ``class_name`` on one source frame, read from a suggestion SEG
    written by :func:`suggested_segs`: bool (rows, columns). Raises ValueError when it has none there."""
    import highdicom as hd

    label = suggestion_segment_label(class_name)
    numbers = [int(s.SegmentNumber) for s in suggestion.get("SegmentSequence") or []
               if str(s.get("SegmentLabel", "")) == label]
    if not numbers:
        raise ValueError(f"suggestion SEG {suggestion.get('SOPInstanceUID')} has no segment {label!r}")
    try:
        seg = hd.seg.Segmentation.from_dataset(suggestion, copy=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"suggestion SEG {suggestion.get('SOPInstanceUID')} cannot be read: {e}") from None
    return pixels_on_source_frames(seg, [(image_uid, frame)], numbers[:1])[0, ..., 0] > 0
