"""The 3-D mask audit task: segments of SEGs over CT/MR series judged by a 3-D segmentation bundle, per segment.

Read: every SEG over a series of the study as (the series as one volume with its geometry, one mask
volume per segment) through :func:`dicom_io.annotations.read_study` (``volumes=True``); a segment whose
class the bundle does not know is an issue record, a class the bundle knows but the SEG lacks is an
empty given mask (a missing structure can be the error). Model step: the bundle's members on each
volume (patches, sliding windows) and the detector per (case, segment): Dice, HD95 and volumes against
the consensus, the predicted Dice, the kind, 3-D regions, the key slices. Write: one QA report group
per segment, a suggestion SEG over the series, overlays on the key slices, the KOS
(:func:`dicom_io.results.write_volume_results`), and a :class:`~service.audit.rows.VolumeRow` per
segment (one review item each). A class the bundle's members cannot judge (its thresholds'
competence, learnt with the cut) is stated in the QA report's summary (LQA-0206) and on each of its rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dicom_io.annotations import read_study
from dicom_io.annotations.records import IssueDict, MaskVolume
from dicom_io.geometry import ImageVolume
from dicom_io.results import AuditedVolumeMask, ResultSet, write_volume_results
from dicom_io.settings import SegSettings
from dicom_io.study import Study
from dicom_io.vocabulary import Vocabulary
from models.bundles import SEGMENTATION, Bundle
from models.seg.competence import cannot_judge
from models.verdict import MASK_VERDICTS
from models.volume.data import Geometry, Spacing
from service.audit.rows import VolumeRow
from service.audit.task import (
    LABEL_NOT_IN_BUNDLE,
    AuditTask,
    ResultOptions,
    StepResult,
    StudyAudit,
    algorithm_info,
    class_code,
    per_study,
    register,
)

if TYPE_CHECKING:  # torch and MONAI come with it: only the model step needs them loaded
    from models.volume.bundle import VolumeBundle
    from models.volume.detector import VolumeVerdict

__all__ = ["VolumeCase", "VolumeInput", "VolumeBatch", "VolumeResult", "VolumeTask", "VOLUME_TASK"]

log = logging.getLogger("labelqa.audit")


@dataclass
class VolumeCase:
    """One SEG over one series: the series as a volume and the given mask of each segment, by class."""

    annotation_uid: str
    annotation_sop_class_uid: str
    volume: ImageVolume
    masks: dict[str, MaskVolume] = field(default_factory=dict)


@dataclass
class VolumeInput:
    """The read step's output for one study: its cases (SEG, series) and issues."""

    study: Study
    cases: list[VolumeCase] = field(default_factory=list)
    issues: list[IssueDict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)


@dataclass
class VolumeBatch:
    """What the model step needs: each volume's values, its given masks by class, its grid (plain numbers)."""

    images: list[np.ndarray]  # (slices, rows, columns) float32, the modality's values (CT: HU)
    given: list[dict[str, np.ndarray]]  # class name -> bool mask on the volume's grid
    spacings: list[tuple[float, float, float]]  # (slice, row, column) mm
    origins: list[tuple[float, float, float]]  # LPS mm of voxel (0, 0, 0)
    directions: list[tuple[float, ...]]  # 3 x 3 row-major, columns the x (column), y (row), z (slice) axes

    def __len__(self) -> int:
        return len(self.images)


class VolumeResult(StepResult["list[VolumeVerdict]"]):
    """The model step's output: per volume of the batch, in order, a ``VolumeVerdict`` per class of the bundle."""


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


class VolumeTask:
    """Segments of SEGs over series (bundles with ``"task": "segmentation"``, ``"dims": 3``)."""

    name: ClassVar[str] = SEGMENTATION
    dimension: ClassVar[int] = 3
    verdicts: ClassVar[tuple[str, ...]] = MASK_VERDICTS

    def read(self, study: Study, bundle: Bundle, vocabulary: Vocabulary, *,
             seg_limits: SegSettings | None = None) -> VolumeInput:
        classes = list(bundle.class_names)
        aset = read_study(study, vocabulary, volumes=True, seg_limits=seg_limits)
        vi = VolumeInput(study, issues=[i.to_dict() for i in aset.issues])
        cases: dict[tuple[str, str], VolumeCase] = {}
        for m in aset.mask_volumes:
            pv = m.provenance
            if m.label not in classes:
                vi.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": pv.annotation_uid,
                                  "message": f"segment {m.segment_number} ({m.label!r}) is not a class of the bundle "
                                             f"({classes})"})
                continue
            volume = aset.volumes.get(pv.series_uid)
            if volume is None:
                continue
            case = cases.setdefault((pv.annotation_uid, pv.series_uid),
                                    VolumeCase(pv.annotation_uid, pv.annotation_sop_class_uid, volume))
            if m.label in case.masks:  # two segments of one class: one mask, both segments' voxels
                first = case.masks[m.label]
                case.masks[m.label] = MaskVolume(first.segment_number, first.label, first.segment_label,
                                                 first.mask | m.mask, first.geometry, first.provenance)
            else:
                case.masks[m.label] = m
        vi.cases = list(cases.values())
        return vi

    def batch(self, inputs: Sequence[VolumeInput], bundle: Bundle) -> VolumeBatch:
        cases = [c for vi in inputs for c in vi.cases]
        geos = [c.volume.geometry for c in cases]
        return VolumeBatch(
            images=[np.asarray(c.volume.array, np.float32) for c in cases],
            given=[{name: m.mask for name, m in c.masks.items()} for c in cases],
            spacings=[g.spacing for g in geos], origins=[g.origin for g in geos],
            directions=[tuple(float(v) for v in g.direction[:, ::-1].ravel()) for g in geos])

    def infer(self, bundle: VolumeBundle, batch: VolumeBatch, *, device: str, batch_size: int) -> VolumeResult:
        t0 = time.perf_counter()
        geometries: list[Geometry | Spacing] = [
            Geometry(spacing=s, origin=o, direction=d)
            for s, o, d in zip(batch.spacings, batch.origins, batch.directions, strict=True)]
        given: list[dict[str, np.ndarray] | np.ndarray] = list(batch.given)
        verdicts = bundle.audit(batch.images, given, geometries, device=device)
        log.info("audited %d segment(s) of %d volume(s) in %.1f s", sum(map(len, verdicts)), len(batch),
                 time.perf_counter() - t0)
        return VolumeResult(list(verdicts), time.perf_counter() - t0)

    def write(self, inputs: Sequence[VolumeInput], result: VolumeResult | None, bundle: Bundle,
              vocabulary: Vocabulary, options: ResultOptions) -> list[StudyAudit]:
        out = []
        algorithm = algorithm_info(bundle)
        # from the bundle's description: a step run elsewhere (Ray) leaves only that here, no loaded bundle
        unjudged = cannot_judge(dict(bundle.meta.get("thresholds") or {}).get("competence"), list(bundle.class_names))
        for vi, sa, verdicts in per_study(inputs, result):
            out.append(sa)
            if not vi.cases:
                continue
            audited: list[AuditedVolumeMask] = []
            rows: list[VolumeRow] = []
            for case, vs in zip(vi.cases, verdicts, strict=True):
                audited_case, rows_case = self._case(vi.study, case, vs, vocabulary, unjudged)
                audited += audited_case
                rows += rows_case
            slices = {u for a in audited for u in a.slice_uids}
            written: ResultSet = write_volume_results(
                vi.study.datasets(slices), vi.study.datasets({a.annotation_uid for a in audited}), audited, algorithm,
                key_slices=options.key_slices,
                cannot_judge=[t for c, t in unjudged.items() if c in {a.class_name for a in audited}])
            for i, row in enumerate(rows):
                row.overlay_uid = written.overlays.get(i)
                if i in written.suggestions:
                    row.suggestion_uid, row.suggestion_segment = written.suggestions[i]
            sa.datasets, sa.rows = written, list(rows)
        return out

    def _case(self, study: Study, case: VolumeCase, verdicts: Sequence[VolumeVerdict], vocabulary: Vocabulary,
              unjudged: dict[str, str]) -> tuple[list[AuditedVolumeMask], list[VolumeRow]]:
        vol = case.volume
        shape = vol.shape
        slice_uids, slice_frames = tuple(vol.slice_uids), tuple(vol.slice_frames)
        audited, rows = [], []
        for v in verdicts:
            given = case.masks.get(v.class_name)
            kind = None if v.kind is None else str(v.kind)
            consensus = v.consensus_volume(shape) if v.consensus is not None else None
            regions: list[dict[str, Any]] = [{"kind": None if r.kind is None else str(r.kind), "voxels": int(r.voxels),
                        "volume_mm3": float(r.volume_mm3), "bbox": tuple(int(b) for b in r.bbox),
                        "slices": (int(r.slices[0]), int(r.slices[1])),
                        "center_mm": tuple(float(c) for c in r.centroid_patient_mm)} for r in v.regions]
            key = tuple(int(k) for k in v.key_slices if 0 <= int(k) < shape[0])
            hd95 = _finite(v.hd95_consensus) if v.distance_unit == "mm" else None
            segment = None if given is None else int(given.segment_number)
            audited.append(AuditedVolumeMask(
                study_uid=str(study.uid), annotation_uid=case.annotation_uid,
                annotation_sop_class_uid=case.annotation_sop_class_uid, series_uid=vol.series_uid,
                class_name=v.class_name, class_code=class_code(vocabulary, v.class_name), verdict=str(v.verdict),
                kind=kind, dice=_finite(v.dice_consensus), hd95_mm=hd95, agreement=_finite(v.agreement_dice),
                priority=float(v.priority), score=_finite(v.score), predicted_dice=_finite(v.predicted_dice),
                given_mm3=_finite(v.given_mm3), consensus_mm3=_finite(v.consensus_mm3), segment_number=segment,
                slice_uids=slice_uids, slice_frames=slice_frames, spacing=vol.spacing, key_slices=key,
                slice_range=None if v.given_slices is None else (int(v.given_slices[0]), int(v.given_slices[1])),
                regions=regions, consensus=consensus,
                given=given.mask if given is not None else np.zeros(shape, bool) if consensus is not None else None,
            ))
            worst = key[0] if key else (int(v.given_slices[0]) if v.given_slices is not None else 0)
            rows.append(VolumeRow(
                study_uid=str(study.uid), annotation_uid=case.annotation_uid, segment_number=segment,
                image_uid=slice_uids[worst], frame=slice_frames[worst], class_name=v.class_name,
                given_label=v.class_name, verdict=str(v.verdict), kind=kind, dice=v.dice_consensus,
                hd95=v.hd95_consensus, distance_unit=v.distance_unit, agreement=v.agreement_dice,
                priority=float(v.priority), score=v.score, given_area_px=int(v.given_voxels),
                consensus_area_px=int(v.consensus_voxels), series_uid=vol.series_uid,
                predicted_dice=v.predicted_dice, given_mm3=v.given_mm3, consensus_mm3=v.consensus_mm3,
                slice_range=None if v.given_slices is None else [int(v.given_slices[0]), int(v.given_slices[1])],
                key_slices=list(key), slices=[[u, f] for u, f in zip(slice_uids, slice_frames, strict=True)],
                regions_3d=[{**r, "bbox": list(r["bbox"]), "slices": list(r["slices"]),
                             "center_mm": list(r["center_mm"])} for r in regions],
                cannot_judge=unjudged.get(v.class_name),
            ))
        return audited, rows

    def warm_up(self, bundle: VolumeBundle, device: str) -> None:
        size = tuple(int(s) for s in bundle.meta.get("patch_size") or (16, 16, 16))
        bundle.audit([np.zeros(size, np.float32)], [{}], [Geometry()], device=device)


VOLUME_TASK: AuditTask[VolumeInput, VolumeBatch, VolumeBundle, VolumeResult] = register(VolumeTask())
