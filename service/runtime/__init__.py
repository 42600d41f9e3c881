"""The runtime wing: the service process, the audit job table, executors (in-process, Ray), the
pipeline from a stable study to results in the outbox, metrics. It imports neither the audit, the
review nor HTTP: its :class:`Auditor` is handed in."""

from service.runtime.auditor import (
    Auditor,
    AuditOutput,
    InferFn,
)
from service.runtime.executor import (
    Executor,
    InProcessExecutor,
    JobFunction,
    JobRetry,
    Outcome,
    WorkerContext,
)
from service.runtime.jobs import (
    DONE,
    FAILED,
    FINAL_STATES,
    NO_ANNOTATIONS,
    QUEUED,
    RUNNING,
    STATES,
    SUPERSEDED,
    AuditJobRow,
    Job,
    JobStore,
    open_jobs,
    owner_id,
)
from service.runtime.metrics import (
    LATENCY_BUCKETS,
    Metrics,
)
from service.runtime.pipeline import (
    Pipeline,
    unaudited_reason,
    verdict_rows,
)
from service.runtime.process import (
    Component,
    ComponentSpec,
    Service,
    configure_logging,
    run_service,
    thread_component,
)

__all__ = [
    "Component", "ComponentSpec", "thread_component", "Service", "configure_logging", "run_service", "QUEUED",
    "RUNNING", "DONE", "FAILED", "NO_ANNOTATIONS", "SUPERSEDED", "STATES", "FINAL_STATES", "AuditJobRow", "Job",
    "owner_id", "JobStore", "open_jobs", "Outcome", "WorkerContext", "JobFunction", "JobRetry", "Executor",
    "InProcessExecutor", "InferFn", "AuditOutput", "Auditor", "verdict_rows", "unaudited_reason", "Pipeline",
    "LATENCY_BUCKETS", "Metrics",
]
