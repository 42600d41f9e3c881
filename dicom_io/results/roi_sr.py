"""The flags drawn on their images: a TID 1500 report that viewers such as OHIF draw on the source image.

The QA report (``sr.py``) is labelqa's own document (title LQA-0001) with a group for every audited
annotation and a study summary; viewers show it as text. This second Comprehensive 3D SR carries only
what can be drawn: title (126000, DCM) "Imaging Measurement Report", procedure reported LQA-0001,
device observer labelqa, and one TID 1410 Planar ROI group per flagged annotation:

- Tracking Identifier (112039, "flag N: ...", the message in words) and Tracking Unique Identifier
  (112040);
- the shape: (111030, DCM) "Image Region", a SCOORD POLYLINE (closed outline) SELECTED FROM the
  source image (and frame) -- or, for a region in patient space, a SCOORD3D with its Frame of
  Reference (:class:`PatientOutline`; a volume audit draws its region per slice or in 3-D);
- ``Finding`` (121071): the verdict (99LABELQA);
- at most five TID 300 measurements (:data:`MAX_VALUES`: OHIF prints five lines "meaning: value
  unit" beside the shape, the unit code as it is, so units are UCUM codes that read: ``%``, ``mm``,
  ``mm2``, ``mm3``, ``{score}``);
- qualitative evaluations (given and consensus label, mask error kind) for text views.

Every group has a shape: a report rooted at 126000 with a group without one crashes OHIF 3.13, so
:func:`drawn_flags_sr` refuses it, and the writer makes no drawn report when no flag has a shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.results.geometry import library_header
from dicom_io.results.shapes import hot_region, largest_component, region_outline, scale_outline
from dicom_io.results.sr import comprehensive_3d_sr, separate_containers

if TYPE_CHECKING:
    from dicom_io.results.records import AlgorithmInfo, AuditedAnnotation, AuditedMask

__all__ = [
    "SERIES_DESCRIPTION", "MAX_VALUES", "IMAGE_REGION", "PlanarOutline", "PatientOutline", "DrawnValue",
    "DrawnFlag", "label_flag", "mask_flag", "drawn_flags_sr",
]

SERIES_DESCRIPTION = "labelqa flags drawn on the images"
MAX_VALUES = 5
"""At most this many measurements per flag: OHIF prints five beside a shape."""
IMAGE_REGION = Code("111030", "DCM", "Image Region")


@dataclass(frozen=True, eq=False)
class PlanarOutline:
    """A closed outline on one frame of a source image: (N, 2) points (column, row), SCOORD image coordinates."""

    source: Dataset
    frame: int | None
    points: np.ndarray


@dataclass(frozen=True, eq=False)
class PatientOutline:
    """A closed outline in patient space: (N, 3) points in mm in ``frame_of_reference_uid`` (SCOORD3D);
    ``sources``: the images it lies on (they go into the report's evidence)."""

    frame_of_reference_uid: str
    points: np.ndarray
    sources: tuple[Dataset, ...] = ()


@dataclass(frozen=True)
class DrawnValue:
    """One measurement shown beside the shape: concept, value, UCUM unit."""

    name: Code
    value: float
    unit: Code


@dataclass(frozen=True, eq=False)
class DrawnFlag:
    """One flagged annotation as drawn: tracking identifier and UID, verdict, outline, values, evaluations."""

    tracking_id: str
    tracking_uid: str
    finding: Code
    outline: PlanarOutline | PatientOutline
    values: tuple[DrawnValue, ...] = ()
    evaluations: tuple[tuple[Code, Code], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.values) > MAX_VALUES:
            raise ValueError(f"a drawn flag shows at most {MAX_VALUES} values, got {len(self.values)}")
        pts = np.asarray(self.outline.points, np.float64)
        width = 3 if isinstance(self.outline, PatientOutline) else 2
        if pts.ndim != 2 or pts.shape[1] != width or len(pts) < 2 or not np.isfinite(pts).all():
            raise ValueError(f"an outline is (N >= 2, {width}) finite points, got shape {pts.shape}")


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def _frame(source: Dataset, frame: int | None) -> int | None:
    return int(frame) if frame is not None and int(source.get("NumberOfFrames", 1) or 1) > 1 else None


def label_flag(item: AuditedAnnotation, source: Dataset, *, tracking_uid: str, number: int) -> DrawnFlag | None:
    """The drawn flag of a flagged label: the hot region of its consensus heatmap on the source frame, the
    given label's and the consensus label's probabilities (%), the share of members that disagree (%),
    the saliency agreement and the priority. None without a heatmap or a hot region."""
    if item.heatmap is None:
        return None
    heat = np.asarray(item.heatmap, np.float32)
    if heat.ndim != 2:
        return None
    region = hot_region(heat)
    if not region.any():
        return None
    grid = (int(source.Rows), int(source.Columns))
    points = scale_outline(region_outline(region), heat.shape, grid)
    values = [DrawnValue(codes.GIVEN_LABEL_PROBABILITY, 100.0 * float(item.p_given), codes.UNIT_PERCENT)]
    if _finite(item.consensus_prob):
        values.append(DrawnValue(codes.MODELS_LABEL_PROBABILITY, 100.0 * float(item.consensus_prob),  # type: ignore[arg-type]
                                 codes.UNIT_PERCENT))
    if item.n_members:
        values.append(DrawnValue(codes.MEMBERS_DISAGREEING_SHARE, 100.0 * item.n_disagree / item.n_members,
                                 codes.UNIT_PERCENT))
    if _finite(item.agreement):
        values.append(DrawnValue(codes.MODELS_SALIENCY_AGREEMENT, float(item.agreement), codes.UNIT_SCORE))  # type: ignore[arg-type]
    values.append(DrawnValue(codes.REANNOTATION_PRIORITY, float(item.priority), codes.UNIT_SCORE))
    given, consensus = item.given_code(), item.consensus_code()
    return DrawnFlag(
        tracking_id=f"flag {number}: labelled {given.meaning}, models say {consensus.meaning}",
        tracking_uid=tracking_uid,
        finding=codes.VERDICT_CODES[item.verdict],
        outline=PlanarOutline(source, _frame(source, item.frame), points),
        values=tuple(values[:MAX_VALUES]),
        evaluations=((codes.GIVEN_LABEL, given), (codes.CONSENSUS_LABEL, consensus)),
    )


def _mask_region(m: AuditedMask, given: np.ndarray | None, grid: tuple[int, int]) -> np.ndarray | None:
    """The region to draw for a flagged mask: the largest connected disagreement between the given mask and
    the consensus; else the largest listed region's box; else the given (or consensus) mask itself."""
    consensus = m.consensus
    if given is not None and consensus is not None and given.shape == grid and consensus.shape == grid:
        region = largest_component(np.asarray(given, bool) ^ np.asarray(consensus, bool))
        if region.any():
            return region
    if m.regions:
        r0, c0, r1, c1 = (int(v) for v in max(m.regions, key=lambda r: int(r["area_px"]))["bbox"])
        box = np.zeros(grid, bool)
        box[max(r0, 0):max(r1, r0 + 1), max(c0, 0):max(c1, c0 + 1)] = True
        if box.any():
            return box
    for mask in (given, consensus):
        if mask is not None and mask.shape == grid and np.asarray(mask).any():
            return largest_component(mask)
    return None


def mask_flag(m: AuditedMask, source: Dataset, given: np.ndarray | None, *, tracking_uid: str,
              number: int) -> DrawnFlag | None:
    """The drawn flag of a flagged mask (``given``: its given mask on the source grid, when known): the largest
    region of disagreement, the Dice to the consensus, the region's area (mm2 with a pixel spacing, else
    pixels), the HD95 (mm), the mask error score and the priority. None when nothing can be drawn."""
    grid = (int(source.Rows), int(source.Columns))
    region = _mask_region(m, given if given is not None else m.given, grid)
    if region is None:
        return None
    values: list[DrawnValue] = []
    if _finite(m.dice):
        values.append(DrawnValue(codes.DICE_WITH_MODELS, float(m.dice), codes.UNIT_SCORE))  # type: ignore[arg-type]
    area = float(region.sum())
    if m.spacing is not None and _finite(*m.spacing):
        values.append(DrawnValue(codes.REGION_AREA, area * float(m.spacing[0]) * float(m.spacing[1]), codes.UNIT_MM2))
    else:
        values.append(DrawnValue(codes.REGION_AREA, area, codes.UNIT_PIXELS))
    if _finite(m.hd95_mm):
        values.append(DrawnValue(codes.HD95_TO_MODELS, float(m.hd95_mm), codes.UNIT_MM))  # type: ignore[arg-type]
    if _finite(m.score):
        values.append(DrawnValue(codes.MASK_ERROR_SCORE, float(m.score), codes.UNIT_SCORE))  # type: ignore[arg-type]
    values.append(DrawnValue(codes.REANNOTATION_PRIORITY, float(m.priority), codes.UNIT_SCORE))
    evaluations = [(codes.GIVEN_LABEL, m.class_concept())]
    kind = (m.kind or "").replace("_", " ")
    if m.kind is not None:
        evaluations.append((codes.MASK_ERROR_KIND, codes.MASK_ERROR_KIND_CODES[m.kind]))
    what = f"{m.class_name} mask" + (f", {kind}" if kind else "")
    return DrawnFlag(
        tracking_id=f"flag {number}: {what}, largest disagreement with the models",
        tracking_uid=tracking_uid,
        finding=codes.VERDICT_CODES[m.verdict],
        outline=PlanarOutline(source, _frame(source, m.frame), region_outline(region)),
        values=tuple(values[:MAX_VALUES]),
        evaluations=tuple(evaluations),
    )


def _group(flag: DrawnFlag):
    import highdicom as hd

    outline = flag.outline
    points = np.asarray(outline.points, np.float64)
    region: hd.sr.ImageRegion | hd.sr.ImageRegion3D
    if isinstance(outline, PatientOutline):
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE, graphic_data=points,
                                     frame_of_reference_uid=outline.frame_of_reference_uid)
    else:
        src = outline.source
        frames = [int(outline.frame)] if outline.frame is not None else None
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points.astype(np.float32),
            source_image=hd.sr.SourceImageForRegion(src.SOPClassUID, src.SOPInstanceUID, frames))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=flag.tracking_uid, identifier=flag.tracking_id[:1024]),
        referenced_region=region,
        finding_type=flag.finding,
        measurements=[hd.sr.Measurement(name=v.name, value=round(float(v.value), 3), unit=v.unit)
                      for v in flag.values],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name, value) for name, value in flag.evaluations] or None,
    )


def drawn_flags_sr(
    flags: Sequence[DrawnFlag],
    *,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    device_uid: str,
    manufacturer: str,
    series_description: str = SERIES_DESCRIPTION,
) -> Dataset:
    """The Comprehensive 3D SR drawing ``flags`` (TID 1500 rooted at 126000, one Planar ROI group each, every
    container SEPARATE). Raises ValueError without flags: a drawn report is written only with shapes."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    if not flags:
        raise ValueError("no flag has a shape: a drawn report needs at least one")
    sources: dict[str, Dataset] = {}
    for f in flags:
        outline = f.outline
        for ds in (outline.sources if isinstance(outline, PatientOutline) else (outline.source,)):
            sources.setdefault(str(ds.SOPInstanceUID), ds)
    observer = hd.sr.ObserverContext(
        observer_type=dcm.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=algorithm.name, manufacturer_name=manufacturer, model_name=algorithm.version),
    )
    library = [h for h in (library_header(ds) for ds in sources.values()) if h is not None]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.ANNOTATION_QUALITY_AUDIT,
        imaging_measurements=[_group(f) for f in flags],
        title=codes.IMAGING_MEASUREMENT_REPORT,
        referenced_images=library or None,
    )
    return comprehensive_3d_sr(
        evidence=list(sources.values()),
        content=separate_containers(report[0]),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=series_description[:64],
    )
