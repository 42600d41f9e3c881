"""Key Object Selection (TID 2010) titled 113010 "Quality Issue": the flagged images and their heatmaps.

Never 113001 "Rejected for Quality Reasons": that title makes a KOS an IHE IOCM rejection note, and
PACS such as dcm4chee then hide the referenced instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_io import codes

SERIES_DESCRIPTION = "labelqa quality issues (annotation QA)"


def quality_issue_kos(
    selected: Sequence[Dataset],
    *,
    description: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    manufacturer: str,
) -> Dataset:
    """A KOS selecting ``selected`` (flagged source images and their heatmap SCs) as a Quality Issue."""
    import highdicom as hd

    if not selected:
        raise ValueError("a Quality Issue KOS needs at least one selected instance")
    unique = list({ds.SOPInstanceUID: ds for ds in selected}.values())
    content = hd.ko.KeyObjectSelection(
        document_title=codes.QUALITY_ISSUE, referenced_objects=unique, description=description[:1024]
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=unique,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
    )
    kos.SeriesDescription = SERIES_DESCRIPTION
    return kos
