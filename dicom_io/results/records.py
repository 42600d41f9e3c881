"""Records handed to the result writers: what was audited and what made the verdicts (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.results.uids import digest

__all__ = ["VERDICTS", "as_code", "AlgorithmInfo", "AuditedAnnotation"]

VERDICTS = tuple(codes.VERDICT_CODES)
"""The verdict values a result record may carry (``models.verdict.Verdict``'s values)."""


def as_code(label: Any) -> Code:
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
    parameters: dict[str, Any] = field(default_factory=dict)


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
    given_label: Any
    consensus_label: Any
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

    def key(self) -> dict[str, Any]:
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
