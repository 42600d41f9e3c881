"""The records of reading annotations: samples, their provenance, issue records (plain data).

``read_study`` (``dicom_io.annotations.read``) turns a study into an :class:`AnnotationSet`: one
:class:`Sample` per annotated image frame and one :class:`IssueRecord` for whatever could not become a
sample. Issue codes are the defined terms of :class:`IssueCode`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

__all__ = [
    "IssueCode", "ISSUE_CODES", "Provenance", "Sample", "IssueRecord", "AnnotationSet", "LabelRecord",
    "UNREADABLE_FILE", "UNSUPPORTED_SOP_CLASS", "UNKNOWN_CODE", "NO_LABEL", "MISSING_REFERENCE",
    "NO_IMAGE_REFERENCE", "UNREADABLE_PIXELS", "CONFLICTING_LABELS", "MALFORMED_ANNOTATION", "OTHER_STUDY",
]


class IssueCode(StrEnum):
    """Why something in a study could not become a sample (machine-readable; the message says the rest)."""

    UNREADABLE_FILE = "unreadable_file"
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
    UNKNOWN_CODE = "unknown_code"
    NO_LABEL = "no_label"
    MISSING_REFERENCE = "missing_reference"
    NO_IMAGE_REFERENCE = "no_image_reference"
    UNREADABLE_PIXELS = "unreadable_pixels"
    CONFLICTING_LABELS = "conflicting_labels"
    MALFORMED_ANNOTATION = "malformed_annotation"
    OTHER_STUDY = "other_study"


UNREADABLE_FILE = IssueCode.UNREADABLE_FILE
UNSUPPORTED_SOP_CLASS = IssueCode.UNSUPPORTED_SOP_CLASS
UNKNOWN_CODE = IssueCode.UNKNOWN_CODE
NO_LABEL = IssueCode.NO_LABEL
MISSING_REFERENCE = IssueCode.MISSING_REFERENCE
NO_IMAGE_REFERENCE = IssueCode.NO_IMAGE_REFERENCE
UNREADABLE_PIXELS = IssueCode.UNREADABLE_PIXELS
CONFLICTING_LABELS = IssueCode.CONFLICTING_LABELS
MALFORMED_ANNOTATION = IssueCode.MALFORMED_ANNOTATION
OTHER_STUDY = IssueCode.OTHER_STUDY
ISSUE_CODES = tuple(IssueCode)


@dataclass
class Provenance:
    """Where a sample's label came from and which image frame it labels."""

    study_uid: str
    annotation_uid: str
    annotation_sop_class_uid: str
    source: Literal["sr", "seg"]
    content_path: str | None
    segment_number: int | None
    image_uid: str
    image_sop_class_uid: str | None
    frame: int | None
    observer: str | None
    series_uid_of_image: str | None


@dataclass
class Sample:
    """One labelled image frame: float32 (H, W) pixels in [0, 1], the given label, its provenance.

    ``masks`` (SEG only): segment number -> bool (rows, columns) mask on the SEG frame grid, for the
    segments present in this frame.
    """

    label: str
    pixels: np.ndarray
    provenance: Provenance
    masks: dict[int, np.ndarray] | None = None
    spacing: tuple[float, float] | None = None


@dataclass
class IssueRecord:
    """Something in the study that could not become a sample, and why."""

    code: str
    message: str
    annotation_uid: str | None = None
    image_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AnnotationSet:
    """The samples and issue records of one study."""

    study_uid: str | None
    samples: list[Sample] = field(default_factory=list)
    issues: list[IssueRecord] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """The shape `labelqa inspect --json` prints for one study."""
        return {
            "study_uid": self.study_uid,
            "samples": [
                {
                    "label": s.label,
                    "image_uid": s.provenance.image_uid,
                    "frame": s.provenance.frame,
                    "annotation_uid": s.provenance.annotation_uid,
                    "source": s.provenance.source,
                }
                for s in self.samples
            ],
            "issues": [{"code": i.code, "message": i.message, "annotation_uid": i.annotation_uid} for i in self.issues],
        }


@dataclass
class LabelRecord:
    """An annotation parser's finding before pixels are attached (internal)."""

    label: str
    annotation_uid: str
    annotation_sop_class_uid: str
    source: Literal["sr", "seg"]
    image_uid: str
    frame: int | None
    content_path: str | None = None
    segment_number: int | None = None
    observer: str | None = None
    masks: dict[int, np.ndarray] | None = None
    via_segment: tuple[str, tuple[int, ...]] | None = None
    """SR groups that reference a SEG segment (TID 1411) instead of images: resolved through that SEG."""
