"""Records handed to the result writers: what was audited and what made the verdicts (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.results.uids import digest

if TYPE_CHECKING:
    import highdicom as hd

    from dicom_io.annotations.records import MaskSample
    from dicom_io.vocabulary import CodedConcept

__all__ = ["VERDICTS", "MASK_VERDICTS", "MASK_ERROR_KINDS", "REGION_KEYS", "VOLUME_REGION_KEYS", "as_code",
           "CodedLabel", "AlgorithmInfo", "AuditedAnnotation", "AuditedMask", "AuditedVolumeMask"]

VERDICTS = tuple(codes.VERDICT_CODES)
"""The verdict values a result record may carry (``models.verdict.Verdict``'s values)."""

MASK_VERDICTS = ("suspected_mask_error", "hard_case", "consistent")
"""The verdicts of an audited mask."""

MASK_ERROR_KINDS = tuple(codes.MASK_ERROR_KIND_CODES)
"""Mask error kinds (``models.verdict.MaskErrorKind``'s values)."""

REGION_KEYS = ("kind", "area_px", "area_mm2", "bbox")
"""Keys of a region dict: kind (a mask error kind), area in pixels and mm2, bbox (r0, c0, r1, c1),
rows r0..r1-1 and columns c0..c1-1 of the source frame (exclusive ends, as numpy slices)."""


VOLUME_REGION_KEYS = ("kind", "voxels", "volume_mm3", "bbox", "slices", "center_mm")
"""Keys of a 3-D region dict: kind, voxel count, volume in mm3, bbox (z0, y0, x0, z1, y1, x1; exclusive ends
on the series' grid), slices (first, last; inclusive), center_mm (x, y, z patient coordinates, LPS) or None."""


CodedLabel: TypeAlias = "Code | CodedConcept | hd.sr.CodedConcept | str"
"""A class as the result writers take it: a pydicom ``Code``, a vocabulary or highdicom ``CodedConcept``, or a
plain name."""


def as_code(label: object) -> Code:
    """A pydicom ``Code`` for a label given as a Code, a CodedConcept-like object or a plain name."""
    if isinstance(label, Code):
        return label
    for scheme_attr, value_attr, meaning_attr in (
        ("scheme_designator", "value", "meaning"),
        ("scheme", "value", "meaning"),
    ):
        if all(hasattr(label, a) for a in (scheme_attr, value_attr, meaning_attr)):
            value, scheme, meaning = (str(getattr(label, a)) for a in (value_attr, scheme_attr, meaning_attr))
            return Code(value, scheme, meaning)
    if isinstance(label, str) and label:
        return codes.label_code(label)
    raise TypeError(f"cannot turn {label!r} into a coded concept (give a Code, a CodedConcept or a name)")


@dataclass
class AlgorithmInfo:
    """What made the verdicts (TID 4019): bundle name, version, content hash and parameters (thresholds...)."""

    name: str
    version: str
    bundle_hash: str
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass
class AuditedAnnotation:
    """One audited annotation: where it came from (provenance) and what the detector said about it.

    ``frame`` is the 1-based frame number in a multi-frame source image (None for single-frame).
    ``given_label``/``consensus_label``: vocabulary codes (Code or CodedConcept-like) or plain names.
    """

    study_uid: str
    annotation_uid: str
    annotation_sop_class_uid: str
    source: str  # "seg" or "sr"
    image_uid: str
    given_label: CodedLabel
    consensus_label: CodedLabel
    verdict: str
    agreement: float | None
    p_given: float
    priority: float
    n_disagree: int
    n_members: int
    frame: int | None = None
    segment_number: int | None = None
    content_path: str | None = None
    image_sop_class_uid: str | None = None
    consensus_prob: float | None = None
    heatmap: np.ndarray | None = None
    member_heatmaps: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")
        if self.source not in ("seg", "sr"):
            raise ValueError(f"annotation source must be 'seg' or 'sr', got {self.source!r}")

    def given_code(self) -> Code:
        return as_code(self.given_label)

    def consensus_code(self) -> Code:
        return as_code(self.consensus_label)

    def key(self) -> dict[str, object]:
        """What identifies the audited item and its result, for deterministic UIDs."""
        return {
            "annotation": [self.annotation_uid, self.segment_number, self.content_path],
            "image": [self.image_uid, self.frame],
            "labels": [str(self.given_code()), str(self.consensus_code())],
            "verdict": self.verdict,
            "scores": [_round(self.agreement), _round(self.p_given), _round(self.priority),
                       self.n_disagree, self.n_members, _round(self.consensus_prob)],
            "heatmap": None if self.heatmap is None else digest(np.round(np.asarray(self.heatmap, np.float32), 4)),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


@dataclass
class AuditedMask:
    """One audited mask (a SEG's class on one source frame): its provenance and the detector's word on it.

    Provenance as the mask sample had it (``dicom_io.annotations.MaskSample``; :meth:`from_sample`):
    the SEG (``annotation_uid``), its ``segment_number`` (the main one; None when the SEG has no segment
    of the class), all ``segment_numbers`` and the SEG frame numbers, the source image and its 1-based
    ``frame`` (None: single-frame). ``verdict``: one of :data:`MASK_VERDICTS`; ``kind``: one of
    :data:`MASK_ERROR_KINDS` or None. ``dice``/``hd95_mm``: the given mask against the consensus;
    ``agreement``: between the ensemble members; ``score``: the detector's mask error score.
    ``consensus``/``given``: bool (rows, columns) masks on the source frame's grid (``given`` None:
    read from the SEG); ``regions``: dicts with :data:`REGION_KEYS`. ``class_code``: the vocabulary's
    code of the class (a Code or CodedConcept-like), default a local label code of ``class_name``.
    """

    study_uid: str
    annotation_uid: str
    annotation_sop_class_uid: str
    image_uid: str
    class_name: str
    verdict: str
    kind: str | None
    dice: float | None
    hd95_mm: float | None
    agreement: float | None
    priority: float
    score: float | None = None
    frame: int | None = None
    segment_number: int | None = None
    segment_numbers: tuple[int, ...] = ()
    seg_frames: tuple[int, ...] = ()
    image_sop_class_uid: str | None = None
    class_code: CodedLabel | None = None
    consensus: np.ndarray | None = None
    given: np.ndarray | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    spacing: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.verdict not in MASK_VERDICTS:
            raise ValueError(f"unknown mask verdict {self.verdict!r}; expected one of {MASK_VERDICTS}")
        if self.kind is not None and self.kind not in MASK_ERROR_KINDS:
            raise ValueError(f"unknown mask error kind {self.kind!r}; expected one of {MASK_ERROR_KINDS}")
        for r in self.regions:
            missing = [k for k in REGION_KEYS if k not in r]
            if missing or (r["kind"] is not None and r["kind"] not in MASK_ERROR_KINDS):
                raise ValueError(f"region {r!r}: needs {REGION_KEYS} with a known kind")
        for name in ("consensus", "given"):
            m = getattr(self, name)
            if m is not None:
                m = np.asarray(m)
                if m.ndim != 2:
                    raise ValueError(f"{name} mask must be 2-D (rows, columns), got shape {m.shape}")
                setattr(self, name, m.astype(bool))
        if self.consensus is not None and self.given is not None and self.consensus.shape != self.given.shape:
            raise ValueError(f"consensus {self.consensus.shape} and given {self.given.shape} masks differ in shape")
        if self.segment_number is None and self.segment_numbers:
            self.segment_number = self.segment_numbers[0]

    @classmethod
    def from_sample(cls, sample: MaskSample, **detector: Any) -> AuditedMask:
        """From a ``dicom_io.annotations.MaskSample`` and the detector's fields (verdict, kind, dice...)."""
        p = sample.provenance
        fields: dict[str, Any] = {  # the constructor's keywords; the detector's override them
            "study_uid": p.study_uid, "annotation_uid": p.annotation_uid,
            "annotation_sop_class_uid": p.annotation_sop_class_uid, "image_uid": p.image_uid,
            "class_name": sample.class_name, "frame": p.frame, "segment_number": p.segment_number,
            "segment_numbers": tuple(p.segment_numbers), "seg_frames": tuple(p.seg_frames),
            "image_sop_class_uid": p.image_sop_class_uid, "given": sample.given_mask, "spacing": sample.spacing,
        }
        return cls(**{**fields, **detector})

    def class_concept(self) -> Code:
        return as_code(self.class_code if self.class_code is not None else self.class_name)

    @property
    def flagged(self) -> bool:
        return self.verdict in codes.FLAGGED_VERDICTS

    def key(self) -> dict[str, object]:
        """What identifies the audited mask and its result, for deterministic UIDs."""
        return {
            "annotation": [self.annotation_uid, self.segment_number, list(self.segment_numbers)],
            "image": [self.image_uid, self.frame],
            "class": [self.class_name, str(self.class_concept())],
            "verdict": [self.verdict, self.kind],
            "scores": [_round(self.dice), _round(self.hd95_mm), _round(self.agreement), _round(self.priority),
                       _round(self.score)],
            "consensus": None if self.consensus is None else [list(self.consensus.shape),
                                                               digest(np.packbits(self.consensus))],
            "regions": [[r["kind"], int(r["area_px"]), [int(v) for v in r["bbox"]]] for r in self.regions],
        }


@dataclass
class AuditedVolumeMask:
    """One audited segment of a SEG over a series (a 3-D mask): its provenance and the detector's word on it.

    ``slice_uids[k]`` / ``slice_frames[k]``: the source image (and 1-based frame of a multi-frame image, else
    None) of slice k of the series' grid, as :class:`dicom_io.geometry.ImageVolume` orders them.
    ``consensus`` / ``given``: bool (slices, rows, columns) on that grid (``given`` None: not kept).
    ``key_slices``: the slices where the given mask and the consensus differ most, worst first;
    ``slice_range``: the given mask's first and last slice. Volumes in mm3, distances in mm; ``regions``:
    dicts with :data:`VOLUME_REGION_KEYS`. ``predicted_dice``: the detector's estimate of the given mask's
    Dice against the (unknown) truth. ``segment_number`` None: the SEG has no segment of the class.
    """

    study_uid: str
    annotation_uid: str
    annotation_sop_class_uid: str
    series_uid: str
    class_name: str
    verdict: str
    kind: str | None
    dice: float | None
    hd95_mm: float | None
    agreement: float | None
    priority: float
    slice_uids: tuple[str, ...]
    slice_frames: tuple[int | None, ...]
    spacing: tuple[float, float, float]
    score: float | None = None
    predicted_dice: float | None = None
    given_mm3: float | None = None
    consensus_mm3: float | None = None
    segment_number: int | None = None
    class_code: CodedLabel | None = None
    key_slices: tuple[int, ...] = ()
    slice_range: tuple[int, int] | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    consensus: np.ndarray | None = None
    given: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.verdict not in MASK_VERDICTS:
            raise ValueError(f"unknown mask verdict {self.verdict!r}; expected one of {MASK_VERDICTS}")
        if self.kind is not None and self.kind not in MASK_ERROR_KINDS:
            raise ValueError(f"unknown mask error kind {self.kind!r}; expected one of {MASK_ERROR_KINDS}")
        if len(self.slice_uids) != len(self.slice_frames) or not self.slice_uids:
            raise ValueError("slice_uids and slice_frames name every slice of the series' grid, once each")
        shape = (len(self.slice_uids),)
        for name in ("consensus", "given"):
            m = getattr(self, name)
            if m is not None:
                m = np.asarray(m, bool)
                if m.ndim != 3 or m.shape[:1] != shape:
                    raise ValueError(f"{name} must be (slices, rows, columns) with {shape[0]} slices, got {m.shape}")
                setattr(self, name, m)
        if self.consensus is not None and self.given is not None and self.consensus.shape != self.given.shape:
            raise ValueError(f"consensus {self.consensus.shape} and given {self.given.shape} differ in shape")
        for r in self.regions:
            missing = [k for k in VOLUME_REGION_KEYS if k not in r]
            if missing or (r["kind"] is not None and r["kind"] not in MASK_ERROR_KINDS):
                raise ValueError(f"region {r!r}: needs {VOLUME_REGION_KEYS} with a known kind")
        if any(not 0 <= k < shape[0] for k in self.key_slices):
            raise ValueError(f"key slices {self.key_slices} outside the {shape[0]} slices")

    @property
    def flagged(self) -> bool:
        return self.verdict in codes.FLAGGED_VERDICTS

    def class_concept(self) -> Code:
        return as_code(self.class_code if self.class_code is not None else self.class_name)

    def slice_source(self, k: int) -> tuple[str, int | None]:
        """The source image (and frame) of slice ``k``."""
        return self.slice_uids[k], self.slice_frames[k]

    def key(self) -> dict[str, object]:
        """What identifies the audited segment and its result, for deterministic UIDs."""
        return {
            "annotation": [self.annotation_uid, self.segment_number, self.series_uid],
            "class": [self.class_name, str(self.class_concept())],
            "verdict": [self.verdict, self.kind],
            "scores": [_round(self.dice), _round(self.hd95_mm), _round(self.agreement), _round(self.priority),
                       _round(self.score), _round(self.predicted_dice)],
            "consensus": None if self.consensus is None else [list(self.consensus.shape),
                                                               digest(np.packbits(self.consensus))],
            "key_slices": list(self.key_slices),
        }
