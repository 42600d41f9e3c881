"""The seam every kind of annotation is audited through: one protocol, one registry keyed by the bundle's task.

An audit of a study is five steps, the same for class labels and for masks: **read** the study's
annotations of the task's kind (:meth:`AuditTask.read`, on the gateway), **batch** them as arrays
(:meth:`AuditTask.batch`), the **model step** (:meth:`AuditTask.infer`, wherever the models are: here,
or a Ray actor through ``infer_fn``), **write** the result objects and the verdict rows
(:meth:`AuditTask.write`, on the gateway), and the rows become **review items** (each row knows its
annotation, frame and result objects). The read and write steps need the bundle's description only
(:class:`models.bundles.BundleInfo`), not its weights.

Tasks register themselves by (``task``, ``dimension``) of the bundles they audit (:func:`register`);
:func:`task_for` finds the one for a bundle. Adding a kind of annotation is one task module beside
:mod:`service.audit.labels` and :mod:`service.audit.masks` (imported by the wing's face) and its
model wing; nothing else branches on the kind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from dicom_io.annotations.records import IssueDict
from dicom_io.results import AlgorithmInfo, ResultSet
from dicom_io.settings import SegSettings
from dicom_io.study import Study, open_study
from dicom_io.vocabulary import CodedConcept, Vocabulary, load_vocabulary
from models.bundles import Bundle
from service.audit.rows import AuditRow
from service.runtime.auditor import InferFn
from service.settings import AuditSettings

__all__ = [
    "LABEL_NOT_IN_BUNDLE", "ResultOptions", "StudyAudit", "TaskInput", "StepResult", "per_study", "AuditTask",
    "InferFn", "register",
    "task_for", "registered_tasks", "resolve_vocabulary", "class_code", "algorithm_info", "audit_inputs", "audit_study",
    "model_step", "warm_up", "StudyAuditor", "AUDITOR",
]

log = logging.getLogger("labelqa.audit")

LABEL_NOT_IN_BUNDLE = "label_not_in_bundle"
"""Issue code: an annotation names a class the bundle does not know."""


@dataclass(frozen=True)
class ResultOptions:
    """Which optional result objects an audit writes (from ``[audit]`` settings: :meth:`from_settings`)."""

    heatmaps_for_hard_cases: bool = False
    parametric_maps: bool = False
    member_panels: bool = False
    key_slices: int = 3

    @classmethod
    def from_settings(cls, audit: AuditSettings) -> ResultOptions:
        """From ``service.settings.AuditSettings`` (or anything with the same fields)."""
        base = cls()
        return cls(**{f.name: getattr(audit, f.name, getattr(base, f.name)) for f in fields(cls)})


@dataclass
class StudyAudit:
    """What one study's audit produced: result objects (and which belongs to which row), rows, issues."""

    study_uid: str | None
    datasets: ResultSet = field(default_factory=ResultSet)
    rows: list[AuditRow] = field(default_factory=list)
    issues: list[IssueDict] = field(default_factory=list)

    @property
    def report_uid(self) -> str | None:
        return self.datasets.report_uid


class TaskInput(Protocol):
    """A task's read step output for one study: what to judge (``len``: how many model inputs), the study
    it came from (the write step takes its datasets from there) and issues."""

    study: Study
    issues: list[IssueDict]

    def __len__(self) -> int: ...


InputT = TypeVar("InputT", bound=TaskInput)
"""A task's read-step output (one study's annotations of its kind)."""
BatchT = TypeVar("BatchT")
"""A task's model inputs (arrays; what travels to a Ray actor)."""
BundleT = TypeVar("BundleT", bound=Bundle, contravariant=True)
"""The loaded bundle a task's model step needs (its kind's subclass of :class:`models.bundles.Bundle`)."""
ResultT = TypeVar("ResultT", bound="StepResult[Any]")
"""A task's model-step output (its subclass of :class:`StepResult`)."""
VerdictT = TypeVar("VerdictT")
"""What a model step gives per batch item: a verdict, or a list of them (per class of an image or volume)."""


@dataclass
class StepResult(Generic[VerdictT]):
    """What a model step returns: one entry per item of its batch, in order (a task's verdict type, or a
    list of them per image or volume), how long it took and where it ran when not in this process."""

    verdicts: list[VerdictT]
    seconds: float = 0.0
    worker: dict[str, object] | None = None


def per_study(inputs: Sequence[InputT], result: StepResult[VerdictT] | None
              ) -> Iterator[tuple[InputT, StudyAudit, list[VerdictT]]]:
    """Each input with a new :class:`StudyAudit` (its issues) and its share of the step's ``verdicts``, in order.

    Raises
    ------
    ValueError
        The step returned another number of results than the inputs have items.
    """
    n = sum(len(i) for i in inputs)
    got = 0 if result is None else len(result.verdicts)
    if got != n:
        raise ValueError(f"the model step returned {got} results for {n} items")
    start = 0
    for i in inputs:
        share: list[VerdictT] = [] if result is None else result.verdicts[start:start + len(i)]
        start += len(i)
        yield i, StudyAudit(i.study.uid, issues=list(i.issues)), share


class AuditTask(Protocol[InputT, BatchT, BundleT, ResultT]):
    """One kind of annotation, audited: read -> batch -> model step -> write (see the module docstring).

    Typed by what flows between the steps: the read step's ``InputT``, the batch ``BatchT``, the loaded
    bundle ``BundleT`` the model step needs and its result ``ResultT``."""

    name: ClassVar[str]
    """The bundle ``task`` this audits (``labels``, ``segmentation``)."""
    dimension: ClassVar[int]
    """The bundle ``dims`` this audits (2: images or frames, 3: volumes)."""
    verdicts: ClassVar[tuple[str, ...]]
    """The verdicts this task gives (flagged, hard case, consistent)."""

    def read(self, study: Study, bundle: Bundle, vocabulary: Vocabulary, *,
             seg_limits: SegSettings | None = None) -> InputT:
        """The study's annotations of this kind that the bundle can judge; issues for the others
        (``seg_limits``: the ``[seg]`` bounds on reading one SEG)."""
        ...

    def batch(self, inputs: Sequence[InputT], bundle: Bundle) -> BatchT:
        """The inputs' model inputs, in order, as arrays (what travels to a Ray actor)."""
        ...

    def infer(self, bundle: BundleT, batch: BatchT, *, device: str, batch_size: int) -> ResultT:
        """The model step with a loaded bundle: a result per item of the batch, in order."""
        ...

    def write(self, inputs: Sequence[InputT], result: ResultT | None, bundle: Bundle, vocabulary: Vocabulary,
              options: ResultOptions) -> list[StudyAudit]:
        """Each study's result objects and verdict rows (``result`` None when there was nothing to infer)."""
        ...

    def warm_up(self, bundle: BundleT, device: str) -> None:
        """One tiny inference, so that the first study does not pay for lazy initialisation."""
        ...


AnyTask = AuditTask[Any, Any, Any, Any]
"""A registered task of any kind (the registry holds every kind; a caller gets the one its bundle names)."""

_REGISTRY: dict[tuple[str, int], AnyTask] = {}

TaskT = TypeVar("TaskT", bound=AnyTask)


def register(task: TaskT) -> TaskT:
    """Make ``task`` the audit of bundles with its (name, dimension); returns it."""
    _REGISTRY[(task.name, task.dimension)] = task
    return task


def registered_tasks() -> list[AnyTask]:
    return list(_REGISTRY.values())


def task_for(bundle: Bundle) -> AnyTask:
    """The audit task of a bundle (ValueError when no task audits its kind)."""
    try:
        return _REGISTRY[(bundle.task, int(bundle.dimension))]
    except KeyError:
        raise ValueError(f"no audit task for {bundle.dimension}-D {bundle.task!r} bundles "
                         f"(known: {sorted(_REGISTRY)})") from None


def resolve_vocabulary(bundle: Bundle, bundle_path: Path | str | None = None,
                       vocabulary: Vocabulary | Path | str | None = None) -> Vocabulary:
    """The vocabulary: the one given (object or file), the bundle's own file, or its class names."""
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    if vocabulary is not None:
        return load_vocabulary(Path(vocabulary))
    if bundle_path is not None:
        for name in ("vocabulary.toml", "configs/vocabulary.toml", "vocabulary.json", "configs/vocabulary.json"):
            p = Path(bundle_path) / name
            if p.is_file():
                return load_vocabulary(p)
    return Vocabulary.from_class_names(list(bundle.class_names))


def class_code(vocabulary: Vocabulary, name: str) -> CodedConcept | str:
    """The vocabulary's code for a class name (the name itself when the vocabulary has none)."""
    try:
        return vocabulary.code_for(name)
    except KeyError:
        return name


def algorithm_info(bundle: Bundle) -> AlgorithmInfo:
    """TID 4019 description of a bundle: name, version, content hash, grid, classes, thresholds, members."""
    meta = bundle.meta
    params: dict[str, object] = {"image_size": meta.get("image_size"), "classes": ",".join(bundle.class_names)}
    for k, v in sorted(dict(meta.get("thresholds") or {}).items()):
        if k in ("precision_steps", "score_knots", "competence", "shape_reference"):  # in the bundle; too long for
            continue  # the SR (the competence is stated as "cannot judge" findings)
        params[f"threshold.{k}"] = json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v
    archs = list(dict.fromkeys(str(m["arch"]) for m in meta.get("members", [])))
    if archs:
        params["members"] = ",".join(archs)
    name = str(meta.get("name") or "labelqa annotation-error detector")
    return AlgorithmInfo(name=name[:64], version=bundle.version, bundle_hash=str(bundle.content_hash),
                         parameters=params)


def audit_inputs(task: AuditTask[InputT, BatchT, BundleT, ResultT], inputs: Sequence[InputT], bundle: BundleT,
                 vocabulary: Vocabulary, *, infer_fn: InferFn | None = None, device: str = "auto",
                 batch_size: int = 64, options: ResultOptions = ResultOptions()) -> list[StudyAudit]:
    """One model step over every input of ``inputs`` (here, or with ``infer_fn``), then each study's results.

    ``infer_fn`` (a Ray actor's step) returns what this task's :meth:`AuditTask.infer` returned there."""
    result: ResultT | None = None
    if sum(len(i) for i in inputs):
        batch = task.batch(inputs, bundle)
        result = (cast(ResultT, infer_fn(batch)) if infer_fn is not None
                  else task.infer(bundle, batch, device=device, batch_size=batch_size))
    return task.write(inputs, result, bundle, vocabulary, options)


def audit_study(study: Study | Iterable[Path], bundle: Bundle, vocabulary: Vocabulary, *, device: str = "auto",
                batch_size: int = 64, options: ResultOptions = ResultOptions(),
                seg_limits: SegSettings | None = None, infer_fn: InferFn | None = None) -> StudyAudit:
    """Audit one study (a :class:`~dicom_io.study.Study` or its files) with the bundle's task.

    ``infer_fn`` runs the model step elsewhere (default: with ``bundle`` here); then ``bundle`` needs
    only its description, not its weights.
    """
    if not isinstance(study, Study):
        study = open_study([Path(f) for f in study])
    task = task_for(bundle)
    (sa,) = audit_inputs(task, [task.read(study, bundle, vocabulary, seg_limits=seg_limits)], bundle, vocabulary,
                         infer_fn=infer_fn,
                         device=device, batch_size=batch_size, options=options)
    for issue in sa.issues:
        log.info("study %s: %s (%s)", sa.study_uid, issue.get("code"), issue.get("message"))
    return sa


def model_step(bundle: Bundle, batch: object, *, device: str = "auto", batch_size: int = 64) -> StepResult:
    """The model step for a loaded bundle's task (in process, or on a Ray actor)."""
    return task_for(bundle).infer(bundle, batch, device=device, batch_size=batch_size)


def warm_up(bundle: Bundle, device: str = "auto") -> None:
    """The bundle's task's warm-up inference."""
    task_for(bundle).warm_up(bundle, device)


class StudyAuditor:
    """The audit wing as the runtime sees it (:class:`service.runtime.pipeline.Auditor`); :data:`AUDITOR`."""

    def vocabulary(self, bundle: Bundle, bundle_path: Path | str | None,
                   vocabulary: Vocabulary | Path | str | None) -> Vocabulary:
        return resolve_vocabulary(bundle, bundle_path, vocabulary)

    def warm_up(self, bundle: Bundle, device: str) -> None:
        warm_up(bundle, device)

    def audit(self, files: Sequence[Path], bundle: Bundle, vocabulary: Vocabulary, *, settings: AuditSettings,
              seg_limits: SegSettings | None = None, infer_fn: InferFn | None = None) -> StudyAudit:
        """One study's audit with the ``[audit]`` settings (device, batch size, result options) and the
        ``[seg]`` bounds."""
        return audit_study(files, bundle, vocabulary, device=settings.device, batch_size=settings.batch_size,
                           options=ResultOptions.from_settings(settings), seg_limits=seg_limits, infer_fn=infer_fn)

    def model_step(self, bundle: Bundle, batch: object, *, device: str, batch_size: int) -> StepResult:
        return model_step(bundle, batch, device=device, batch_size=batch_size)


AUDITOR = StudyAuditor()
"""The one auditor: what ``labelqa serve``, the demo and the tests hand to the runtime's pipeline."""
