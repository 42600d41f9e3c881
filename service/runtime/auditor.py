"""What the runtime needs from the audit wing, as a protocol: the runtime knows jobs, workers and files,
not kinds of annotation. ``service.audit.AUDITOR`` implements it; whoever assembles the service
(``service.serve``, the demo, the tests) hands it to the pipeline, which hands it to the Ray actors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from dicom_io.annotations.records import IssueDict
from dicom_io.results import ResultSet
from dicom_io.settings import SegSettings
from dicom_io.vocabulary import Vocabulary
from models.bundles import Bundle
from service.settings import AuditSettings

__all__ = ["StepOutput", "InferFn", "VerdictRow", "AuditOutput", "Auditor"]


class StepOutput(Protocol):
    """A model step's result as the runtime sees it (``service.audit.StepResult``): where it ran."""

    worker: dict[str, object] | None


InferFn = Callable[[object], StepOutput]
"""The model step run elsewhere (a Ray actor): a task's batch in (passed through untouched), its result out."""


class VerdictRow(Protocol):
    """One typed verdict row as the runtime sees it (``service.audit.AuditRow``)."""

    @property
    def verdict(self) -> str: ...

    def to_dict(self) -> dict[str, object]: ...


class AuditOutput(Protocol):
    """What auditing one study gives the pipeline (``service.audit.StudyAudit``)."""

    @property
    def datasets(self) -> ResultSet: ...  # the result objects, with report_uid and kos_uid
    @property
    def rows(self) -> Sequence[VerdictRow]: ...
    @property
    def issues(self) -> list[IssueDict]: ...


class Auditor(Protocol):
    """The audit of one study, its model step and its warm-up (``service.audit.AUDITOR``)."""

    def vocabulary(self, bundle: Bundle, bundle_path: Path | str | None,
                   vocabulary: Vocabulary | Path | str | None) -> Vocabulary: ...

    def warm_up(self, bundle: Bundle, device: str) -> None: ...

    def audit(self, files: Sequence[Path], bundle: Bundle, vocabulary: Vocabulary, *, settings: AuditSettings,
              seg_limits: SegSettings | None = None, infer_fn: InferFn | None = None) -> AuditOutput: ...

    def model_step(self, bundle: Bundle, batch: object, *, device: str, batch_size: int) -> StepOutput: ...
