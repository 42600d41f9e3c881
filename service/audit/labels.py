"""The label audit task: class labels (SR findings, SEG segment types) judged by a label bundle.

Read: one :class:`~dicom_io.annotations.Sample` per labelled image frame, its pixels already on the
bundle's input grid (``models.preprocess.to_model_input``, the same path as training). Model step:
the members' probabilities, verdicts and Grad-CAM heatmaps of the candidates, and cohort findings
when more than one annotator is in the batch. Write: the QA report, heatmap SCs and the KOS
(:func:`dicom_io.results.write_results`) and a :class:`~service.audit.rows.LabelRow` per label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dicom_io.annotations import Sample, read_study
from dicom_io.annotations.records import IssueDict
from dicom_io.results import AuditedAnnotation, ResultSet, write_results
from dicom_io.settings import SegSettings
from dicom_io.study import Study
from dicom_io.vocabulary import Vocabulary
from models.bundles import LABELS, Bundle
from models.preprocess import to_model_input
from models.verdict import LABEL_VERDICTS
from service.audit.rows import LabelRow
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
    from models.bundle import LabelBundle, SampleVerdict  # noqa: F401 - SampleVerdict: in a quoted base class

__all__ = ["LabelInput", "LabelBatch", "LabelResult", "LabelTask", "LABEL_TASK"]

log = logging.getLogger("labelqa.audit")


@dataclass
class LabelInput:
    """The read step's output for one study: the samples the bundle can judge, issues for the rest."""

    study: Study
    samples: list[Sample] = field(default_factory=list)
    issues: list[IssueDict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class LabelBatch:
    """What the model step needs: arrays and labels only (it travels through Ray's object store)."""

    images: np.ndarray  # (N, H, W) float32 in [0, 1], the bundle's input size
    given: list[str]  # given label (class name) per image
    groups: list[str]  # annotator per image (cohort findings need more than one)

    def __len__(self) -> int:
        return len(self.given)


@dataclass
class LabelResult(StepResult["SampleVerdict"]):
    """The model step's output: a ``SampleVerdict`` per image of the batch (scores, Grad-CAM heatmaps), in
    order, and the cohort findings per (annotator, class)."""

    cohort: dict[tuple[str, str], str] = field(default_factory=dict)


def _image_size(bundle: Bundle) -> int:
    return int(bundle.meta["image_size"])


def _cohort_text(bundle: LabelBundle, batch: LabelBatch, *, batch_size: int, device: str) -> dict[tuple[str, str], str]:
    """Systematic-disagreement findings per (annotator, given class), as one sentence each.

    Only computed when the annotations come from more than one annotator (it costs a second pass).
    """
    if len(set(batch.groups)) < 2:
        return {}
    try:
        found = bundle.cohort_findings(batch.images, batch.given, batch.groups, batch_size=batch_size, device=device)
    except Exception as e:  # noqa: BLE001 - optional; the verdicts stand without it
        log.warning("cohort findings unavailable: %s", e)
        return {}
    out = {}
    for c in found:
        out[(str(c["group"]), str(c["given_class"]))] = (
            f"annotator group {c['group']!r}, given label {c['given_class']!r}: every model disagrees with "
            f"{100 * c['unanimous_disagreement_rate']:.0f}% of {c['n']} annotations (rest "
            f"{100 * c['rest_rate']:.0f}%); a systematic difference, not individual errors "
            f"({c['flagged_before']} -> {c['flagged_after']} flagged)"
        )
    return out


class LabelTask:
    """Class labels of 2-D images and frames (bundles with ``"task": "labels"``)."""

    name: ClassVar[str] = LABELS
    dimension: ClassVar[int] = 2
    verdicts: ClassVar[tuple[str, ...]] = LABEL_VERDICTS

    def read(self, study: Study, bundle: Bundle, vocabulary: Vocabulary, *,
             seg_limits: SegSettings | None = None) -> LabelInput:
        size = _image_size(bundle)
        aset = read_study(study, vocabulary, pixel_transform=lambda a: to_model_input(a, size), seg_limits=seg_limits)
        classes = set(bundle.class_names)
        li = LabelInput(study, issues=[i.to_dict() for i in aset.issues])
        for s in aset.samples:
            if s.label not in classes:
                li.issues.append({"code": LABEL_NOT_IN_BUNDLE, "annotation_uid": s.provenance.annotation_uid,
                                  "image_uid": s.provenance.image_uid,
                                  "message": f"label {s.label!r} is not a class of the bundle ({sorted(classes)})"})
                continue
            li.samples.append(s)
        return li

    def batch(self, inputs: Sequence[LabelInput], bundle: Bundle) -> LabelBatch:
        samples = [s for li in inputs for s in li.samples]
        size = _image_size(bundle)
        images = (np.stack([s.pixels for s in samples]).astype(np.float32) if samples
                  else np.zeros((0, size, size), np.float32))
        return LabelBatch(images, [s.label for s in samples],
                          [s.provenance.observer or "unknown observer" for s in samples])

    def infer(self, bundle: LabelBundle, batch: LabelBatch, *, device: str, batch_size: int) -> LabelResult:
        t0 = time.perf_counter()
        verdicts = bundle.audit(batch.images, batch.given, batch_size=batch_size, device=device)
        log.info("audited %d annotation(s) in %.1f s", len(batch), time.perf_counter() - t0)
        cohort = _cohort_text(bundle, batch, batch_size=batch_size, device=device)
        return LabelResult(list(verdicts), time.perf_counter() - t0, cohort=cohort)

    def write(self, inputs: Sequence[LabelInput], result: LabelResult | None, bundle: Bundle,
              vocabulary: Vocabulary, options: ResultOptions) -> list[StudyAudit]:
        out = []
        algorithm = algorithm_info(bundle)
        cohort = result.cohort if isinstance(result, LabelResult) else {}
        for li, sa, verdicts in per_study(inputs, result):
            out.append(sa)
            pairs = list(zip(li.samples, verdicts, strict=True))
            if not pairs:
                continue
            audited, rows = [], []
            for s, v in pairs:
                pv = s.provenance
                audited.append(AuditedAnnotation(
                    study_uid=pv.study_uid, annotation_uid=pv.annotation_uid,
                    annotation_sop_class_uid=pv.annotation_sop_class_uid, source=pv.source, image_uid=pv.image_uid,
                    image_sop_class_uid=pv.image_sop_class_uid, frame=pv.frame, segment_number=pv.segment_number,
                    content_path=pv.content_path, given_label=class_code(vocabulary, v.given_label),
                    consensus_label=class_code(vocabulary, v.consensus_label), verdict=v.verdict, agreement=v.agreement,
                    p_given=v.p_given, priority=v.priority, n_disagree=v.n_disagree, n_members=v.n_members,
                    consensus_prob=v.consensus_prob, heatmap=v.heatmap, member_heatmaps=v.member_heatmaps,
                ))
                rows.append(LabelRow(
                    study_uid=pv.study_uid, annotation_uid=pv.annotation_uid, source=pv.source,
                    segment_number=pv.segment_number, content_path=pv.content_path, image_uid=pv.image_uid,
                    frame=pv.frame, given_label=v.given_label, consensus_label=v.consensus_label,
                    verdict=str(v.verdict), agreement=v.agreement, p_given=v.p_given,
                    consensus_prob=v.consensus_prob, n_disagree=int(v.n_disagree), n_members=int(v.n_members),
                    priority=float(v.priority), score=v.score,
                    member_probs={a: dict(zip(bundle.class_names, map(float, ps), strict=False))
                                  for a, ps in (v.member_probs or {}).items()},
                ))
            needed = {a.image_uid for a in audited} | {a.annotation_uid for a in audited}
            missing = sorted(u for u in needed if u not in li.study)
            if missing:
                raise ValueError(f"study {sa.study_uid}: files of {missing} not found among the inputs")
            observers = {s.provenance.observer or "unknown observer" for s, _ in pairs}
            labels = {v.given_label for _, v in pairs}
            findings = [text for (grp, cls), text in cohort.items() if grp in observers and cls in labels]
            written: ResultSet = write_results(
                li.study.datasets(a.image_uid for a in audited), li.study.datasets(a.annotation_uid for a in audited),
                audited, algorithm, findings, heatmaps_for_hard_cases=options.heatmaps_for_hard_cases,
                parametric_maps=options.parametric_maps, member_panels=options.member_panels)
            for i, row in enumerate(rows):
                row.heatmap_uid = written.heatmaps.get(i)
            sa.datasets, sa.rows = written, list(rows)
        return out

    def warm_up(self, bundle: LabelBundle, device: str) -> None:
        size = _image_size(bundle)
        bundle.audit(np.zeros((1, size, size), np.float32), [bundle.class_names[0]], batch_size=1, device=device)


LABEL_TASK: AuditTask[LabelInput, LabelBatch, LabelBundle, LabelResult] = register(LabelTask())
