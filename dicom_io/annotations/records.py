"""The records of reading annotations: samples, their provenance, issue records (plain data).

``read_study`` (``dicom_io.annotations.read``) turns a study into an :class:`AnnotationSet`: one
:class:`Sample` per annotated image frame and one :class:`IssueRecord` for whatever could not become a
sample. Issue codes are the defined terms of :class:`IssueCode`. With ``volumes=True`` a SEG over a
series also gives one :class:`MaskVolume` per segment on the series' grid (``dicom_io.volumes``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from dicom_io.geometry import Geometry, ImageVolume

__all__ = [
    "IssueCode", "ISSUE_CODES", "IssueDict", "Provenance", "Sample", "IssueRecord", "AnnotationSet", "LabelRecord",
    "UNREADABLE_FILE", "UNSUPPORTED_SOP_CLASS", "UNKNOWN_CODE", "NO_LABEL", "MISSING_REFERENCE",
    "NO_IMAGE_REFERENCE", "UNREADABLE_PIXELS", "CONFLICTING_LABELS", "MALFORMED_ANNOTATION", "OTHER_STUDY",
    "MaskProvenance", "MaskSample", "MaskRecord", "NO_PLANE_GEOMETRY", "INCONSISTENT_GEOMETRY", "IRREGULAR_SPACING",
    "MISSING_SLICE", "DUPLICATE_POSITION", "SINGLE_SLICE", "MaskVolumeProvenance", "MaskVolume",
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
    NO_PLANE_GEOMETRY = "no_plane_geometry"
    """A series (or SEG) without Image Position/Orientation (Patient), Pixel Spacing: not a volume."""
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    """Slices of one series differ in orientation (a tilted slice), pixel spacing, size or Frame of
    Reference, or are not stacked along their normal (gantry tilt, shear)."""
    IRREGULAR_SPACING = "irregular_spacing"
    """The distances between consecutive slices differ (mixed slice spacing)."""
    MISSING_SLICE = "missing_slice"
    """A gap of whole slice spacings in a series: slices are missing."""
    DUPLICATE_POSITION = "duplicate_position"
    """Two slices of one series at the same position."""
    SINGLE_SLICE = "single_slice"
    """A series of one slice is not a volume (its SEG is read frame by frame)."""
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
NO_PLANE_GEOMETRY = IssueCode.NO_PLANE_GEOMETRY
INCONSISTENT_GEOMETRY = IssueCode.INCONSISTENT_GEOMETRY
IRREGULAR_SPACING = IssueCode.IRREGULAR_SPACING
MISSING_SLICE = IssueCode.MISSING_SLICE
DUPLICATE_POSITION = IssueCode.DUPLICATE_POSITION
SINGLE_SLICE = IssueCode.SINGLE_SLICE
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

    def to_json_dict(self) -> dict[str, object]:
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
class MaskVolumeProvenance:
    """Where a mask volume came from: the SEG, the image series whose grid it is on, and per slice of
    that grid the source image (SOP Instance UID, frame number for a multi-frame image, else None)
    and the SEG frames (1-based) placed there (empty: the SEG stores nothing there, or it was resampled)."""

    study_uid: str
    annotation_uid: str
    annotation_sop_class_uid: str
    series_uid: str
    slice_uids: tuple[str, ...]
    slice_frames: tuple[int | None, ...]
    seg_frames: tuple[tuple[int, ...], ...]
    segmentation_type: str
    observer: str | None = None
    resampled: bool = False
    """True when the SEG's frames are on another grid and were resampled onto the series' grid."""


@dataclass
class MaskVolume:
    """One segment of a SEG over a series, on the series' grid: bool (slices, rows, columns).

    ``label``: the class name through the vocabulary (the Segment Label when read without one);
    ``segment_label``: the SEG's own Segment Label. ``geometry``: the series' grid (the same object as
    the :class:`~dicom_io.volumes.ImageVolume` of that series): affine, spacing (slice, row, column) mm,
    direction, origin, Frame of Reference. FRACTIONAL pixels count from ``seg.min_fraction`` of the
    Maximum Fractional Value on; LABELMAP pixel values are segment numbers.
    """

    segment_number: int
    label: str
    segment_label: str
    mask: np.ndarray
    geometry: Geometry
    provenance: MaskVolumeProvenance

    @property
    def voxels(self) -> int:
        """Number of voxels in the mask."""
        return int(np.count_nonzero(self.mask))

    def to_json_dict(self) -> dict[str, object]:
        """The entry `labelqa inspect --json` prints for this segment."""
        p = self.provenance
        return {
            "segment_number": self.segment_number,
            "label": self.label,
            "segment_label": self.segment_label,
            "dims": 3,
            "shape": [int(n) for n in self.mask.shape],
            "voxels": self.voxels,
            "spacing_mm": [round(float(v), 6) for v in self.geometry.spacing],
            "annotation_uid": p.annotation_uid,
            "series_uid": p.series_uid,
            "segmentation_type": p.segmentation_type,
            "resampled": p.resampled,
        }


IssueDict = dict[str, str | None]
"""An issue record as plain data (``IssueRecord.to_dict``): code, message, annotation_uid, image_uid, ..."""


@dataclass
class IssueRecord:
    """Something in the study that could not become a sample, and why."""

    code: str
    message: str
    annotation_uid: str | None = None
    image_uid: str | None = None

    def to_dict(self) -> IssueDict:
        return asdict(self)


@dataclass
class AnnotationSet:
    """The samples and issue records of one study."""

    study_uid: str | None
    samples: list[Sample] = field(default_factory=list)
    issues: list[IssueRecord] = field(default_factory=list)
    mask_samples: list[MaskSample] = field(default_factory=list)
    """Filled by ``read_study(..., masks=True)``: one per (SEG-referenced source frame, class)."""
    volumes: dict[str, ImageVolume] = field(default_factory=dict)
    """Filled by ``read_study(..., volumes=True)``: Series Instance UID -> the series as a volume, for
    every series a SEG of the study is over."""
    mask_volumes: list[MaskVolume] = field(default_factory=list)
    """Filled by ``read_study(..., volumes=True)``: one per (SEG over a series, segment)."""

    def to_json_dict(self) -> dict[str, object]:
        """The shape `labelqa inspect --json` prints for one study."""
        out: dict[str, object] = {
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
        if self.mask_samples:
            out["mask_samples"] = [m.to_json_dict() for m in self.mask_samples]
        if self.mask_volumes:
            out["mask_volumes"] = [m.to_json_dict() for m in self.mask_volumes]
        return out


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
