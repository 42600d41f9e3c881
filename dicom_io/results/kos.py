"""Key Object Selection (TID 2010) titled 113010 "Quality Issue": the flagged images and their heatmaps.

Also selected: mask overlays, suggested-correction SEGs and the SR that draws the flags. OHIF has no
Key Object Selection view (it lists the KOS as not supported); PACS and viewers such as Weasis use it.
Flagged frames of a multi-frame image are named (``Referenced Frame Number`` of its IMAGE item); mask
overlays and suggested-correction SEGs are selected beside the images they are about.

Never 113001 "Rejected for Quality Reasons": that title makes a KOS an IHE IOCM rejection note, and
PACS such as dcm4chee then hide the referenced instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydicom.dataset import Dataset

from dicom_io import codes

__all__ = ["SERIES_DESCRIPTION", "quality_issue_kos"]

SERIES_DESCRIPTION = "labelqa quality issues (annotation QA)"


def quality_issue_kos(
    selected: Sequence[Dataset],
    *,
    description: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    manufacturer: str,
    frames: Mapping[str, Sequence[int]] | None = None,
    series_description: str = SERIES_DESCRIPTION,
) -> Dataset:
    """A KOS selecting ``selected`` (flagged source images and their heatmap SCs) as a Quality Issue.

    ``frames``: SOP Instance UID -> the flagged (1-based) frames of that multi-frame image.
    """
    import highdicom as hd

    if not selected:
        raise ValueError("a Quality Issue KOS needs at least one selected instance")
    unique = list({ds.SOPInstanceUID: ds for ds in selected}.values())
    content = hd.ko.KeyObjectSelection(
        document_title=codes.QUALITY_ISSUE, referenced_objects=unique, description=description[:1024]
    )
    for item in content[0].ContentSequence if frames else []:
        if frames is None or item.ValueType != "IMAGE":
            continue
        ref = item.ReferencedSOPSequence[0]
        wanted = sorted({int(f) for f in frames.get(str(ref.ReferencedSOPInstanceUID), [])})
        if wanted:
            ref.ReferencedFrameNumber = wanted if len(wanted) > 1 else wanted[0]
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=unique,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
    )
    kos.SeriesDescription = series_description[:64]
    return kos
