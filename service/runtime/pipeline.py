"""The audit pipeline: study stable -> audit job -> SR/SC/KOS -> outbox.

On a "study stable" event from the store, a study that holds annotation objects (SEG, SR) gets an
audit job in the job table; one without them is recorded as ``no_annotations`` with the reason.
A worker of the executor (in-process by default) reads the study's files, runs
its auditor (``service.audit``: annotations -> bundle ensemble -> results), writes the result
objects under ``<data_dir>/results/<study>/`` and puts them in the outbox; with ``[executor] kind =
"ray"`` only the model step runs on a Ray actor (:mod:`service.runtime.executor_ray`). A late instance re-opens
the study and the audit runs again; our own result objects coming back (a PACS that routes the
whole study again) never trigger a new audit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_io.annotations.records import IssueDict
from dicom_io.results import ResultSet, save_results
from dicom_io.results.series import is_own_output
from dicom_io.sop import is_annotation
from dicom_io.store import StudyStable, StudyStore
from dicom_io.vocabulary import Vocabulary
from models.bundles import Bundle, load_bundle
from models.verdict import FLAGGED
from service.runtime.auditor import Auditor, InferFn
from service.runtime.executor import Executor, InProcessExecutor, Outcome, WorkerContext
from service.runtime.executor_ray import RayExecutor
from service.runtime.jobs import DONE, NO_ANNOTATIONS, Job, JobStore
from service.settings import Settings

if TYPE_CHECKING:  # annotation-only types
    from dicom_io.outbox import Outbox
    from service.runtime.metrics import Metrics

__all__ = ["verdict_rows", "unaudited_reason", "delivery_order", "Pipeline"]

log = logging.getLogger("labelqa.pipeline")


def verdict_rows(rows: Iterable[object]) -> list[dict[str, object]]:
    """Verdict rows (``to_dict()`` of the audit's typed rows) as plain JSON-ready dicts (NaN -> None)."""
    out = []
    for r in rows:
        d = dict(r) if isinstance(r, dict) else dict(vars(r))
        out.append({k: _plain(v) for k, v in d.items() if not k.startswith("_")})
    return out


def _plain(v: object) -> object:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def unaudited_reason(issues: list[IssueDict]) -> str:
    """Why a study with annotation objects gave nothing to audit: its read issues, summarised."""
    if not issues:
        return "no annotation in the study could be read with the vocabulary"
    counts: dict[str, int] = {}
    for i in issues:
        counts[str(i.get("code"))] = counts.get(str(i.get("code")), 0) + 1
    first = str(issues[0].get("message", ""))[:200]
    summary = ", ".join(f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"no annotation could be audited: {summary} (first: {first})"


def delivery_order(datasets: ResultSet, paths: Sequence[Path]) -> list[Path]:
    """The saved result files in the order they go to the PACS: the QA report first (what a reader
    opens first arrives first), then the rest as written."""
    first = [p for ds, p in zip(datasets, paths, strict=True) if str(ds.SOPInstanceUID) == datasets.report_uid]
    return first + [p for p in paths if p not in first]


class Pipeline:
    """Wires the store's stable events to audit jobs, the executor, the results and the outbox."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        *,
        store: StudyStore | None = None,
        outbox: Outbox | None = None,
        auditor: Auditor,
        metrics: Metrics | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.auditor = auditor
        self.jobs = jobs
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.results_dir = Path(settings.store.data_dir) / "results"
        if executor is None and settings.executor.kind == "ray":
            executor = RayExecutor(jobs, self, settings.executor)
        self.executor: Executor = executor or InProcessExecutor(
            jobs, self.run_job, workers=settings.audit.workers, warmup=self.warmup,
            on_finished=self._finished,
        )
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.reconcile()
        self.executor.start()

    def reconcile(self) -> int:
        """Queue the studies that are complete (stable) but have no job at all; returns how many.

        A study marked complete whose job could not be recorded (an older version, a restored index)
        would otherwise never be audited.
        """
        if self.store is None or not hasattr(self.store, "stable_studies"):
            return 0
        handled = 0
        for uid in sorted(set(self.store.stable_studies()) - self.jobs.studies_with_jobs()):
            instances = self.store.instances(uid)
            if not instances:  # its files are gone (the store's own start-up repair dropped them)
                continue
            self.on_study_stable(StudyStable(uid, instances, reopened=False))
            handled += 1
        if handled:
            log.info("start-up: %d complete studies had no audit job; handled now", handled)
        return handled

    def stop(self, timeout: float = 30.0) -> None:
        self.executor.stop(timeout)

    # -- events --------------------------------------------------------------------------------
    def on_study_stable(self, event: StudyStable) -> Job | None:
        """Handle a ``StudyStable`` event: queue an audit, record why not, or ignore our own echo."""
        study = event.study_uid
        if self.metrics is not None:
            self.metrics.studies_stable.inc()
        theirs = [i for i in event.instances if not is_own_output(i.manufacturer, i.series_number)]
        inputs = sorted(i.sop_instance_uid for i in theirs)
        if not any(is_annotation(i.sop_class_uid, i.modality) for i in theirs):
            job = self.jobs.record(study, NO_ANNOTATIONS, "the study holds no SEG or SR annotation object",
                                   trigger="reopened" if event.reopened else "stable")
            log.info("study %s: no annotation objects; nothing to audit", study)
            return job
        last = self.jobs.latest_for_study(study, (DONE, NO_ANNOTATIONS))
        if last is not None and last.result and last.result.get("inputs") == inputs:
            log.info("study %s: stable again with the same inputs (job %d); not re-audited", study, last.id)
            return None
        trigger = "reopened" if event.reopened else "stable"
        last_at = time.time() - float(self.settings.store.stable_after_s)
        job = self.jobs.enqueue(study, trigger=trigger, last_instance_at=last_at)
        log.info("study %s: audit job %d queued (%s)", study, job.id, trigger)
        self.executor.notify()
        return job

    def request_audit(self, study_uid: str, trigger: str = "api") -> Job:
        """Queue a (re-)audit of a stored study on request."""
        job = self.jobs.enqueue(study_uid, trigger=trigger)
        self.executor.notify()
        return job

    # -- the work ------------------------------------------------------------------------------
    def load_bundle(self) -> Bundle:
        """The model bundle named in the settings."""
        if self.settings.audit.bundle is None:
            raise RuntimeError("no model bundle configured: set [audit] bundle (made by `labelqa train`)")
        return load_bundle(Path(self.settings.audit.bundle))

    def load_vocabulary(self, bundle: Bundle) -> Vocabulary:
        """The label vocabulary: the configured file, the bundle's own file, or the bundle's class names."""
        return self.auditor.vocabulary(bundle, self.settings.audit.bundle, self.settings.audit.vocabulary)

    def warmup(self, ctx: WorkerContext) -> None:
        """Load the bundle and vocabulary once for this worker; they stay warm for every job."""
        bundle = ctx.cached("bundle", self.load_bundle)
        ctx.cached("vocabulary", lambda: self.load_vocabulary(bundle))
        try:
            self.auditor.warm_up(bundle, self.settings.audit.device)
        except Exception as e:  # noqa: BLE001 - warming is an optimisation only
            log.warning("model warm-up inference failed: %s", e)

    def run_job(self, job: Job, ctx: WorkerContext) -> Outcome:
        """Audit one study here: read, infer with this worker's warm bundle, write, enqueue for delivery."""
        bundle = ctx.cached("bundle", self.load_bundle)
        vocabulary = ctx.cached("vocabulary", lambda: self.load_vocabulary(bundle))
        return self.audit_job(job, bundle, vocabulary)

    def audit_job(self, job: Job, bundle: Bundle, vocabulary: Vocabulary, infer_fn: InferFn | None = None) -> Outcome:
        """Audit one study: read its files, infer (here, or ``infer_fn``: a remote worker), write the
        result objects and enqueue them for delivery. ``bundle`` needs to be loaded only when
        ``infer_fn`` is None; the read and write steps use its description."""
        records = self.store.instances(job.study_uid) if self.store is not None else []
        theirs = [r for r in records if not is_own_output(r.manufacturer, r.series_number)]
        files = [Path(r.path) for r in theirs]
        if not files:
            return Outcome(state=NO_ANNOTATIONS, reason="the study has no stored instances", n_samples=0)
        inputs = sorted(r.sop_instance_uid for r in theirs)
        t0 = time.perf_counter()
        sa = self.auditor.audit(files, bundle, vocabulary, settings=self.settings.audit,
                                seg_limits=self.settings.seg, infer_fn=infer_fn)
        audit_s = time.perf_counter() - t0
        rows = verdict_rows(r.to_dict() for r in sa.rows)
        if not rows:
            return Outcome(
                state=NO_ANNOTATIONS, n_samples=0, n_flagged=0, reason=unaudited_reason(sa.issues),
                result={"inputs": inputs, "rows": [], "outputs": [], "issues": sa.issues},
            )
        paths = save_results(sa.datasets, self.results_dir / job.study_uid)
        outputs = [{"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                    "modality": str(getattr(ds, "Modality", "")), "path": str(p)}
                   for ds, p in zip(sa.datasets, paths, strict=True)]
        if self.outbox is not None and paths and self.settings.outbox.destinations:
            self.outbox.enqueue(delivery_order(sa.datasets, paths))
        n_flagged = sum(1 for r in sa.rows if r.verdict in FLAGGED)
        return Outcome(
            state=DONE, n_samples=len(rows), n_flagged=n_flagged,
            result={
                "inputs": inputs, "rows": rows, "outputs": outputs, "audit_s": audit_s,
                "report_uid": sa.datasets.report_uid, "kos_uid": sa.datasets.kos_uid,
                "bundle_hash": bundle.content_hash, "issues": sa.issues,
            },
        )

    def _finished(self, job: Job, outcome: Outcome) -> None:
        if self.metrics is None:
            return
        self.metrics.observe_job(job)
