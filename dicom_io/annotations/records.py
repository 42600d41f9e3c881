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
    "ODD_HEADER_VALUE", "TOO_LARGE",
    "MaskProvenance", "MaskSample", "MaskRecord",
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
    ODD_HEADER_VALUE = "odd_header_value"
    TOO_LARGE = "too_large"


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
ODD_HEADER_VALUE = IssueCode.ODD_HEADER_VALUE
TOO_LARGE = IssueCode.TOO_LARGE
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
class MaskProvenance(Provenance):
    """A mask sample's provenance: a :class:`Provenance` (``segment_number``: the main segment, the one
    with the largest area here, else the first of ``segment_numbers``, None when the SEG has no segment
    of the class) plus every segment number of the class and the (1-based) SEG frame numbers read."""

    segment_numbers: tuple[int, ...] = ()
    seg_frames: tuple[int, ...] = ()


@dataclass
class MaskSample:
    """One (source image frame, class) of a SEG: the source pixels and the given mask on the SOURCE grid.

    ``pixels``: float32 (rows, columns) in [0, 1] of the source frame at its native grid (the pixel
    path of the label samples, without resizing), empty (0, 0) when pixels were not loaded; the
    samples of one frame share one array (do not modify it in place).
    ``given_mask``: bool (rows, columns) on the source frame's grid (a SEG on another grid covering the
    same extent is resampled, nearest neighbour); all False when the SEG has no pixel of the class in
    this frame (an empty mask can be an error too). ``spacing``: (row, column) Pixel Spacing in mm of
    the source frame ((1, 1) when the image does not say).
    """

    class_name: str
    pixels: np.ndarray
    given_mask: np.ndarray
    spacing: tuple[float, float]
    provenance: MaskProvenance

    @property
    def label(self) -> str:
        return self.class_name

    @property
    def is_empty(self) -> bool:
        return not bool(self.given_mask.any())

    def to_json_dict(self) -> dict[str, Any]:
        p = self.provenance
        return {
            "class": self.class_name,
            "image_uid": p.image_uid,
            "frame": p.frame,
            "annotation_uid": p.annotation_uid,
            "segment_numbers": list(p.segment_numbers),
            "seg_frames": list(p.seg_frames),
            "area_px": int(self.given_mask.sum()),
            "shape": list(self.given_mask.shape),
        }


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
    mask_samples: list[MaskSample] = field(default_factory=list)
    """Filled by ``read_study(..., masks=True)``: one per (SEG-referenced source frame, class)."""

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
        } | ({"mask_samples": [m.to_json_dict() for m in self.mask_samples]} if self.mask_samples else {})


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


@dataclass
class MaskRecord:
    """A SEG's mask of one class on one source image frame, before pixels are attached (internal).

    ``mask``: bool on the SEG frame grid; ``seg_spacing``: the SEG's Pixel Spacing when it says one.
    A source frame named by no SEG frame has an all-False mask and no ``seg_position``.
    """

    class_name: str
    annotation_uid: str
    annotation_sop_class_uid: str
    image_uid: str
    frame: int | None
    mask: np.ndarray
    segment_numbers: tuple[int, ...]
    seg_frames: tuple[int, ...]
    main_segment: int | None
    observer: str | None = None
    seg_spacing: tuple[float, float] | None = None
    seg_position: tuple[float, float, float] | None = None
    """Image Position (Patient) of the (first) SEG frame read, when the SEG says one."""
