"""Annotations in: DICOM SR and SEG objects of a study -> labelled samples with exact provenance.

``read_study(paths, vocabulary)`` reads every file of one study, finds the annotation objects (SR:
TID 1500 measurement reports and Basic/Enhanced/Comprehensive text SRs; SEG: binary, fractional,
label-map), resolves their coded findings / segments to class names through the vocabulary, and
returns one ``Sample`` per annotated image frame (its pixels, the given label, where it came from);
with ``masks=True`` also one ``MaskSample`` per (SEG-referenced source frame, class) with the given mask;
with ``volumes=True`` also, for a SEG over a series, the series as an ``ImageVolume`` and one
``MaskVolume`` per segment on its grid.
Whatever cannot become a sample is an ``IssueRecord``; no exception escapes ``read_study``.
"""

from dicom_io.annotations.read import SEG_SOP_CLASSES, SR_SOP_CLASSES, read_studies, read_study
from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    DUPLICATE_POSITION,
    INCONSISTENT_GEOMETRY,
    IRREGULAR_SPACING,
    ISSUE_CODES,
    MALFORMED_ANNOTATION,
    MISSING_REFERENCE,
    MISSING_SLICE,
    NO_IMAGE_REFERENCE,
    NO_LABEL,
    NO_PLANE_GEOMETRY,
    ODD_HEADER_VALUE,
    OTHER_STUDY,
    SINGLE_SLICE,
    TOO_LARGE,
    UNKNOWN_CODE,
    UNREADABLE_FILE,
    UNREADABLE_PIXELS,
    UNSUPPORTED_SOP_CLASS,
    AnnotationSet,
    IssueCode,
    IssueRecord,
    LabelRecord,
    MaskProvenance,
    MaskSample,
    MaskVolume,
    MaskVolumeProvenance,
    Provenance,
    Sample,
)

__all__ = [
    "read_study", "read_studies", "SR_SOP_CLASSES", "SEG_SOP_CLASSES", "IssueCode", "ISSUE_CODES", "Provenance",
    "Sample", "IssueRecord", "AnnotationSet", "LabelRecord", "UNREADABLE_FILE", "UNSUPPORTED_SOP_CLASS",
    "UNKNOWN_CODE", "NO_LABEL", "MISSING_REFERENCE", "NO_IMAGE_REFERENCE", "UNREADABLE_PIXELS", "CONFLICTING_LABELS",
    "MALFORMED_ANNOTATION", "OTHER_STUDY", "MaskSample", "MaskProvenance", "NO_PLANE_GEOMETRY", "INCONSISTENT_GEOMETRY",
    "IRREGULAR_SPACING", "MISSING_SLICE", "DUPLICATE_POSITION", "SINGLE_SLICE", "MaskVolume", "MaskVolumeProvenance",
    "MALFORMED_ANNOTATION", "OTHER_STUDY", "ODD_HEADER_VALUE", "TOO_LARGE", "MaskSample", "MaskProvenance",
]
