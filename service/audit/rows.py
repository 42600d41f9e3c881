"""The verdict row of one audited annotation, typed: what the writer hands to the job table, the review and the API.

A :class:`LabelRow` is one class label (an SR finding or a SEG segment's type) on one image frame; a
:class:`MaskRow` is one SEG class mask on one source frame. Both carry where the result objects of
their annotation are (``heatmap_uid``; ``overlay_uid``, ``suggestion_uid`` and ``suggestion_segment``),
as the writer knew them: nobody parses the QA report to learn them. In the job table and the API they
travel as JSON (:meth:`to_dict`; :func:`row_from_dict` reads them back); the keys are the ones the
API documents.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, SupportsFloat

from models.verdict import FLAGGED

__all__ = ["AuditRow", "LabelRow", "MaskRow", "RegionRow", "VolumeRow", "row_from_dict", "is_mask_row"]


def _num(v: SupportsFloat | str | None) -> float | None:
    """A finite float, or None (NaN and infinities are not JSON)."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass
class AuditRow:
    """What every verdict row has: the annotation, the image frame, the given label and the verdict."""

    kind_of_row: ClassVar[str] = ""

    study_uid: str
    annotation_uid: str
    image_uid: str
    frame: int | None
    given_label: str
    verdict: str
    priority: float
    score: float | None
    agreement: float | None
    source: str = "sr"
    segment_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the API's keys)."""
        return asdict(self)

    @property
    def flagged(self) -> bool:
        return self.verdict in FLAGGED


@dataclass
class LabelRow(AuditRow):
    """One audited class label: the members' consensus, probabilities and Grad-CAM agreement."""

    kind_of_row: ClassVar[str] = "label"

    content_path: str | None = None
    consensus_label: str = ""
    p_given: float | None = None
    consensus_prob: float | None = None
    n_disagree: int = 0
    n_members: int = 0
    member_probs: dict[str, dict[str, float]] = field(default_factory=dict)
    heatmap_uid: str | None = None

    def __post_init__(self) -> None:
        for name in ("priority", "score", "agreement", "p_given", "consensus_prob"):
            v = _num(getattr(self, name))
            setattr(self, name, 0.0 if v is None and name == "priority" else v)


@dataclass
class RegionRow:
    """One connected region where the given mask and the consensus differ."""

    kind: str | None
    area_px: int
    area_mm2: float | None
    bbox: list[int]


@dataclass
class MaskRow(AuditRow):
    """One audited mask (a SEG class on one source frame): how it differs from the members' consensus."""

    kind_of_row: ClassVar[str] = "mask"

    class_name: str = ""
    kind: str | None = None
    dice: float | None = None
    hd95: float | None = None
    distance_unit: str = "px"
    given_area_px: int = 0
    consensus_area_px: int = 0
    regions: list[RegionRow] = field(default_factory=list)
    overlay_uid: str | None = None
    suggestion_uid: str | None = None
    suggestion_segment: int | None = None
    cannot_judge: str | None = None
    """The "cannot judge" sentence when the bundle's members are too weak on this class (never flagged then)."""
    shape_typical: bool | None = None
    """False: the flag's suggested mask is shaped unlike the class's masks, so the flag ranks among the masks not
    flagged (``models.seg.detector.SegDetectorConfig.shape_check``); None: not checked (not flagged)."""

    def __post_init__(self) -> None:
        self.source = "seg"
        for name in ("priority", "score", "agreement", "dice", "hd95"):
            v = _num(getattr(self, name))
            setattr(self, name, 0.0 if v is None and name == "priority" else v)
        self.regions = [r if isinstance(r, RegionRow) else RegionRow(**r) for r in self.regions]

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["class"] = d.pop("class_name")
        return d


@dataclass
class VolumeRow(MaskRow):
    """One audited segment of a SEG over a series (a 3-D mask): one review item per (SEG, segment).

    ``image_uid`` / ``frame``: the worst key slice's source (where a viewer opens); ``slices``: every slice
    of the series' grid as [source UID, frame]; ``key_slices``: slice indices, worst first;
    ``slice_range``: the given mask's first and last slice; volumes in mm3; ``regions_3d``: the 3-D regions
    of disagreement (kind, voxels, volume_mm3, bbox, slices, center_mm); ``regions`` (2-D) stays empty.
    """

    kind_of_row: ClassVar[str] = "volume"

    dims: int = 3
    series_uid: str = ""
    predicted_dice: float | None = None
    given_mm3: float | None = None
    consensus_mm3: float | None = None
    slice_range: list[int] | None = None
    key_slices: list[int] = field(default_factory=list)
    slices: list[list[str | int | None]] = field(default_factory=list)  # [source UID, frame or None]
    regions_3d: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("predicted_dice", "given_mm3", "consensus_mm3"):
            setattr(self, name, _num(getattr(self, name)))


_LABEL_FIELDS = {f.name for f in fields(LabelRow)}
_MASK_FIELDS = {f.name for f in fields(MaskRow)}
_VOLUME_FIELDS = {f.name for f in fields(VolumeRow)}


def is_mask_row(row: Mapping[str, object] | AuditRow) -> bool:
    """Whether a verdict row (typed, or as stored) is an audited mask rather than a class label."""
    if isinstance(row, AuditRow):
        return isinstance(row, MaskRow)
    return str(row.get("source") or "") == "seg" and "class" in row


def row_from_dict(d: Mapping[str, Any]) -> LabelRow | MaskRow:
    """A stored verdict row (``to_dict``) as its type; keys it does not know are ignored."""
    if is_mask_row(d) and int(d.get("dims") or 2) == 3:
        kw = {k: v for k, v in d.items() if k in _VOLUME_FIELDS}
        kw["class_name"] = str(d["class"])
        return VolumeRow(**kw)
    if is_mask_row(d):
        kw = {k: v for k, v in d.items() if k in _MASK_FIELDS}
        kw["class_name"] = str(d["class"])
        return MaskRow(**kw)
    return LabelRow(**{k: v for k, v in d.items() if k in _LABEL_FIELDS})
