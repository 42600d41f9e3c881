"""Suggested-correction SEG over a whole series: the model consensus of audited segments, given as mask
volumes on the series' grid (``dicom_io.volumes``), as one binary SEG a viewer overlays on the series.

The 3-D counterpart of :func:`dicom_io.results.seg_out.suggested_segs`, with the same header: Segment
Label "SUGGESTION <class>" (so :func:`~dicom_io.results.seg_out.read_suggestion` finds it), the audited
segment's property category and type, algorithm type AUTOMATIC with the bundle as algorithm, Content
Label "SUGGESTION", series number 9905, Manufacturer "labelqa" (``is_own_output``), deterministic UIDs.
The source images are the series' single-frame slices, or its one multi-frame image; empty frames
are omitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.codes import label_code
from dicom_io.results.seg_out import (
    CONTENT_DESCRIPTION,
    CONTENT_LABEL,
    SERIES_DESCRIPTION,
    _concept,
    _original_segment,
    complete_seg_header,
    n_frames,
    suggestion_segment_label,
)
from dicom_io.results.series import MANUFACTURER, SUGGESTION_SEG_SERIES_NUMBER
from dicom_io.results.uids import derived_uid

if TYPE_CHECKING:
    from dicom_io.results.records import AlgorithmInfo

__all__ = ["suggestion_seg_volume"]


def suggestion_seg_volume(
    sources: Sequence[Dataset],
    slice_uids: Sequence[str],
    slice_frames: Sequence[int | None],
    masks: Mapping[str, np.ndarray],
    *,
    algorithm: AlgorithmInfo,
    run_key: str,
    annotation: Dataset | None = None,
    segment_numbers: Mapping[str, int] | None = None,
    series_number: int = SUGGESTION_SEG_SERIES_NUMBER,
    manufacturer: str = MANUFACTURER,
) -> Dataset:
    """The suggestion SEG of ``masks`` (class -> bool (slices, rows, columns) on the series' grid, slice k =
    ``slice_uids[k]`` frame ``slice_frames[k]``, as an ``ImageVolume`` lists them) over ``sources``
    (the series' images, any order). ``annotation`` and ``segment_numbers`` (class -> its segment in
    the audited SEG) give each segment's property category and type; a class without them gets
    "Clinical finding" and a local label code. Raises ValueError for masks off the grid or sources
    that are neither single-frame slices nor one multi-frame image.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    missing = sorted(set(slice_uids) - set(by_uid))
    if missing:
        raise ValueError(f"source images missing for {len(missing)} slice(s), e.g. {missing[0]}")
    if not masks:
        raise ValueError("no masks to suggest")
    if all(f is None for f in slice_frames):
        srcs = [by_uid[u] for u in slice_uids]
        rows_of = list(range(len(slice_uids)))  # frame of the SEG's pixel array for slice k
    elif len(set(slice_uids)) == 1 and None not in slice_frames:
        srcs = [by_uid[slice_uids[0]]]
        rows_of = [int(f) - 1 for f in slice_frames]  # type: ignore[arg-type]
    else:
        raise ValueError("slices must be single-frame images or the frames of one multi-frame image")
    first = srcs[0]
    shape = (len(slice_uids), int(first.Rows), int(first.Columns))
    total = n_frames(first) if len(srcs) == 1 and slice_frames[0] is not None else len(srcs)
    classes = list(masks)
    pixels = np.zeros((total, shape[1], shape[2], len(classes)), bool)
    for c, name in enumerate(classes):
        m = np.asarray(masks[name])
        if m.shape != shape:
            raise ValueError(f"mask {name!r} {m.shape} is not on the series' grid {shape}")
        pixels[rows_of, :, :, c] = m.astype(bool)
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=dcm.DCM.ArtificialIntelligence, version=algorithm.version[:64])
    descs = []
    for k, name in enumerate(classes, start=1):
        orig = _original_segment(annotation, (segment_numbers or {}).get(name))
        category = _concept(orig.get("SegmentedPropertyCategoryCodeSequence")) if orig is not None else None
        ptype = _concept(orig.get("SegmentedPropertyTypeCodeSequence")) if orig is not None else None
        if ptype is None:
            code = label_code(name, name[:64])
            ptype = hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
        descs.append(hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=suggestion_segment_label(name),
            segmented_property_category=category or hd.sr.CodedConcept("404684003", "SCT", "Clinical finding"),
            segmented_property_type=ptype,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
        ))
    key = f"series:{first.SeriesInstanceUID}"
    seg_uid = derived_uid(run_key, "suggestion-seg", key)
    seg = hd.seg.Segmentation(
        source_images=srcs,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=derived_uid(run_key, "series", "suggestion-seg"),
        series_number=series_number,
        sop_instance_uid=seg_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.bundle_hash.split(":")[-1][:16] or "0",
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=bool(pixels.any()),
    )
    for item in list(seg.get("DimensionOrganizationSequence") or []) + list(seg.get("DimensionIndexSequence") or []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = derived_uid(seg_uid, "dimension-organization")
    complete_seg_header(seg, first, first.get("BodyPartExamined"))
    return seg
