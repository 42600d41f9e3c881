"""The mask audit task: SEG masks judged by a segmentation bundle, per source frame and class (2-D).

Read: every (SEG, source frame) a SEG refers to, with one :class:`~dicom_io.annotations.MaskSample`
per class of the bundle (the given mask, empty when the SEG has no pixel of the class there) on the
frame's native grid. Model step: the members' consensus against each given mask (Dice, HD95,
agreement, the verdict, how it is wrong, the regions). Write: a TID 1500 group per mask in the QA
report, an overlay SC and the consensus as a suggested-correction SEG for each suspected mask error,
the flagged frames in the KOS (:func:`dicom_io.results.write_results`), and a
:class:`~service.audit.rows.MaskRow` per mask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dicom_io.annotations import MaskSample, read_study
from dicom_io.annotations.records import IssueDict
from dicom_io.results import AuditedMask, ResultSet, write_results
from dicom_io.settings import SegSettings
from dicom_io.study import Study
from dicom_io.vocabulary import Vocabulary
from models.bundles import SEGMENTATION, Bundle
from models.seg.competence import cannot_judge
from models.verdict import MASK_VERDICTS
from service.audit.rows import MaskRow, RegionRow
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

if TYPE_CHECKING:  # torch and MONAI come with them: only the model step needs them loaded
    from models.seg.bundle import SegBundle
    from models.seg.detector import MaskVerdict  # noqa: F401 - in a quoted base class

__all__ = ["MaskInput", "MaskBatch", "MaskResult", "MaskTask", "MASK_TASK"]

log = logging.getLogger("labelqa.audit")


@dataclass
class MaskInput:
    """The read step's output for one study: per audited (SEG, source frame) its mask samples, one per class."""

    study: Study
    frames: list[list[MaskSample]] = field(default_factory=list)
    issues: list[IssueDict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class MaskBatch:
    """What the mask model step needs: each frame's pixels on its native grid, the given masks, spacing."""

    images: list[np.ndarray]
    given: list[dict[str, np.ndarray]]  # class name -> bool mask of the image's size
    spacings: list[tuple[float, float] | None]

    def __len__(self) -> int:
        return len(self.images)


class MaskResult(StepResult["list[MaskVerdict]"]):
    """The mask model step's output: per frame of the batch, in order, a ``MaskVerdict`` per class of the bundle
    (consensus mask, regions, Dice, HD95)."""


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


class MaskTask:
    """Masks of a SEG, frame by frame (bundles with ``"task": "segmentation"``, ``"dims": 2``)."""

    name: ClassVar[str] = SEGMENTATION
    dimension: ClassVar[int] = 2
    verdicts: ClassVar[tuple[str, ...]] = MASK_VERDICTS

    def read(self, study: Study, bundle: Bundle, vocabulary: Vocabulary, *,
             seg_limits: SegSettings | None = None) -> MaskInput:
        classes = list(bundle.class_names)
        aset = read_study(study, vocabulary, masks=True, mask_classes=classes, seg_limits=seg_limits)
        mi = MaskInput(study, issues=[i.to_dict() for i in aset.issues])
        frames: dict[tuple[str, str, int | None], list[MaskSample]] = {}
        for m in aset.mask_samples:
            if m.class_name not in classes:
                mi.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": m.provenance.annotation_uid,
                                  "image_uid": m.provenance.image_uid,
                                  "message": f"class {m.class_name!r} is not a class of the bundle ({classes})"})
                continue
            if m.pixels.size == 0:
                continue
            key = (m.provenance.annotation_uid, m.provenance.image_uid, m.provenance.frame)
            frames.setdefault(key, []).append(m)
        mi.frames = list(frames.values())
        return mi

    def batch(self, inputs: Sequence[MaskInput], bundle: Bundle) -> MaskBatch:
        groups = [g for mi in inputs for g in mi.frames]
        return MaskBatch([g[0].pixels for g in groups], [{m.class_name: m.given_mask for m in g} for g in groups],
                         [g[0].spacing for g in groups])

    def infer(self, bundle: SegBundle, batch: MaskBatch, *, device: str, batch_size: int) -> MaskResult:
        t0 = time.perf_counter()
        verdicts = bundle.audit(batch.images, batch.given, batch.spacings, device=device)
        log.info("audited %d mask(s) on %d frame(s) in %.1f s", sum(map(len, batch.given)), len(batch),
                 time.perf_counter() - t0)
        return MaskResult(list(verdicts), time.perf_counter() - t0)

    def write(self, inputs: Sequence[MaskInput], result: MaskResult | None, bundle: Bundle,
              vocabulary: Vocabulary, options: ResultOptions) -> list[StudyAudit]:
        out = []
        algorithm = algorithm_info(bundle)
        # from the bundle's description: a step run elsewhere (Ray) leaves only that here, no loaded bundle
        unjudged = cannot_judge(dict(bundle.meta.get("thresholds") or {}).get("competence"), list(bundle.class_names))
        for mi, sa, verdicts in per_study(inputs, result):
            out.append(sa)
            if not mi.frames:
                continue
            audited, rows = [], []
            for g, vs in zip(mi.frames, verdicts, strict=True):
                by_class = {v.class_name: v for v in vs}
                for m in g:
                    v = by_class[m.class_name]
                    regions = [{**r.to_row(), "bbox": tuple(r.bbox)} for r in v.regions]
                    hd95 = _finite(v.hd95_consensus) if v.distance_unit == "mm" else None
                    kind = None if v.kind is None else str(v.kind)
                    audited.append(AuditedMask.from_sample(
                        m, verdict=str(v.verdict), kind=kind, dice=_finite(v.dice_consensus), hd95_mm=hd95,
                        agreement=_finite(v.agreement_dice), priority=float(v.priority), score=_finite(v.score),
                        consensus=v.consensus, regions=regions, class_code=class_code(vocabulary, m.class_name),
                    ))
                    pv = m.provenance
                    rows.append(MaskRow(
                        study_uid=pv.study_uid, annotation_uid=pv.annotation_uid, segment_number=pv.segment_number,
                        image_uid=pv.image_uid, frame=pv.frame, class_name=m.class_name, given_label=m.class_name,
                        verdict=str(v.verdict), kind=kind, dice=v.dice_consensus, hd95=v.hd95_consensus,
                        distance_unit=v.distance_unit, agreement=v.agreement_dice, priority=float(v.priority),
                        score=v.score, given_area_px=int(v.given_area_px), consensus_area_px=int(v.consensus_area_px),
                        regions=[RegionRow(r["kind"], int(r["area_px"]), _finite(r.get("area_mm2")),
                                           [int(b) for b in r["bbox"]]) for r in regions],
                        cannot_judge=unjudged.get(m.class_name), shape_typical=v.shape_typical,
                    ))
            written: ResultSet = write_results(
                mi.study.datasets(a.image_uid for a in audited), mi.study.datasets(a.annotation_uid for a in audited),
                [], algorithm, masks=audited,
                cannot_judge=[t for c, t in unjudged.items() if c in {m.class_name for g in mi.frames for m in g}])
            for i, row in enumerate(rows):
                row.overlay_uid = written.overlays.get(i)
                if i in written.suggestions:
                    row.suggestion_uid, row.suggestion_segment = written.suggestions[i]
            sa.datasets, sa.rows = written, list(rows)
        return out

    def warm_up(self, bundle: SegBundle, device: str) -> None:
        size = int(bundle.meta["image_size"])
        bundle.audit([np.zeros((size, size), np.float32)], [{}], [None], device=device)


MASK_TASK: AuditTask[MaskInput, MaskBatch, SegBundle, MaskResult] = register(MaskTask())
