"""What the runtime needs from the audit wing, as a protocol: the runtime knows jobs, workers and files,
not kinds of annotation. ``service.audit.AUDITOR`` implements it; whoever assembles the service
(``service.serve``, the demo, the tests) hands it to the pipeline, which hands it to the Ray actors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dicom_io.results import ResultSet
from models.bundles import Bundle

__all__ = ["InferFn", "AuditOutput", "Auditor"]


InferFn = Callable[[Any], Any]
"""The model step run elsewhere (a Ray actor): a batch in, its result out."""


class AuditOutput(Protocol):
    """What auditing one study gives the pipeline (``service.audit.StudyAudit``)."""

    @property
    def datasets(self) -> ResultSet: ...  # the result objects, with report_uid and kos_uid
    @property
    def rows(self) -> Sequence[Any]: ...  # typed verdict rows: .verdict, .to_dict()
    @property
    def issues(self) -> list[dict[str, Any]]: ...


class Auditor(Protocol):
    """The audit of one study, its model step and its warm-up (``service.audit.AUDITOR``)."""

    def vocabulary(self, bundle: Bundle, bundle_path: Any, vocabulary: Any) -> Any: ...

    def warm_up(self, bundle: Any, device: str) -> None: ...

    def audit(self, files: Sequence[Path], bundle: Bundle, vocabulary: Any, *, settings: Any,
              seg_limits: Any = None, infer_fn: InferFn | None = None) -> AuditOutput: ...

    def model_step(self, bundle: Any, batch: Any, *, device: str, batch_size: int) -> Any: ...
