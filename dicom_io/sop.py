"""SOP classes labelqa treats specially, by their ``pydicom.uid`` names, in one place.

Annotation objects are what labelqa reads labels and masks from (structured reports and
segmentations); everything else with rows and columns is an image. Label Map Segmentation Storage
(Supplement 243, 2024) is not yet named by pydicom 3.0, so its UID is spelled out here once.
"""

from __future__ import annotations

from pydicom import uid

__all__ = [
    "SR_STORAGE",
    "SEG_STORAGE",
    "ANNOTATION_STORAGE",
    "LABEL_MAP_SEGMENTATION_STORAGE",
    "NON_IMAGE_PREFIXES",
    "is_annotation",
    "is_non_image",
]

LABEL_MAP_SEGMENTATION_STORAGE = uid.UID("1.2.840.10008.5.1.4.1.1.66.7")
"""Label Map Segmentation Storage (PS3.4 B.5, Supplement 243)."""

SR_STORAGE: dict[str, str] = {
    uid.BasicTextSRStorage: "Basic Text SR",
    uid.EnhancedSRStorage: "Enhanced SR",
    uid.ComprehensiveSRStorage: "Comprehensive SR",
    uid.Comprehensive3DSRStorage: "Comprehensive 3D SR",
    uid.ExtensibleSRStorage: "Extensible SR",
}
"""Structured report SOP classes whose content labelqa reads (TID 1500 and text SRs)."""

SEG_STORAGE: dict[str, str] = {
    uid.SegmentationStorage: "Segmentation",
    LABEL_MAP_SEGMENTATION_STORAGE: "Label Map Segmentation",
}
"""Segmentation SOP classes (binary, fractional and label-map segments)."""

ANNOTATION_STORAGE: frozenset[str] = frozenset(SR_STORAGE) | frozenset(SEG_STORAGE)
"""Every SOP class that can carry an annotation labelqa audits."""

NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.66.")
"""SOP class UID prefixes of objects with Rows/Columns that are not images to audit: structured
documents (SR, KOS: .88), presentation states (.11) and segmentations / surfaces (.66)."""


def is_annotation(sop_class_uid: str, modality: str | None = None) -> bool:
    """Whether an instance may carry annotations labelqa reads (a SEG or a structured report)."""
    return str(sop_class_uid) in ANNOTATION_STORAGE or (modality or "").upper() in {"SEG", "SR"}


def is_non_image(sop_class_uid: str) -> bool:
    """Whether the SOP class is a document, presentation state or segmentation rather than an image."""
    return str(sop_class_uid).startswith(NON_IMAGE_PREFIXES)
