"""The audit pipeline: study stable -> audit job -> SR/SC/KOS -> outbox.

On a "study stable" event from the store, a study that holds annotation objects (SEG, SR) gets an
audit job in the job table; one without them is recorded as ``no_annotations`` with the reason.
A worker of the executor (in-process by default) reads the study's files, runs
:func:`service.audit.audit_study` (annotations -> bundle ensemble -> results), writes the result
objects under ``<data_dir>/results/<study>/`` and puts them in the outbox; with ``[executor] kind =
"ray"`` only the model step runs on a Ray actor (:mod:`service.executor_ray`). A late instance re-opens
the study and the audit runs again; our own result objects coming back (a PACS that routes the
whole study again) never trigger a new audit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_io.results.series import is_own_output
from dicom_io.sop import is_annotation
from models.verdict import FLAGGED
from service.executor import Executor, InProcessExecutor, Outcome, WorkerContext
from service.jobs import DONE, NO_ANNOTATIONS, Job, JobStore
from service.settings import Settings

if TYPE_CHECKING:
    from service.audit import InferFn

__all__ = ["verdict_rows", "unaudited_reason", "Pipeline", "AuditService", "service_components"]

log = logging.getLogger("labelqa.pipeline")

def verdict_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Verdict rows from :func:`service.audit.audit_study` as plain JSON-ready dicts (NaN -> None)."""
    out = []
    for r in rows:
        d = dict(r) if isinstance(r, dict) else dict(vars(r))
        out.append({k: _plain(v) for k, v in d.items() if not k.startswith("_")})
    return out


def _plain(v: Any) -> Any:
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


def unaudited_reason(issues: list[dict[str, Any]]) -> str:
    """Why a study with annotation objects gave nothing to audit: its read issues, summarised."""
    if not issues:
        return "no annotation in the study could be read with the vocabulary"
    counts: dict[str, int] = {}
    for i in issues:
        counts[str(i.get("code"))] = counts.get(str(i.get("code")), 0) + 1
    first = str(issues[0].get("message", ""))[:200]
    summary = ", ".join(f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"no annotation could be audited: {summary} (first: {first})"


class Pipeline:
    """Wires the store's stable events to audit jobs, the executor, the results and the outbox."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        *,
        store: Any = None,
        outbox: Any = None,
        metrics: Any = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.results_dir = Path(settings.store.data_dir) / "results"
        if executor is None and settings.executor.kind == "ray":
            from service.executor_ray import RayExecutor

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
        from dicom_io.store import StudyStable

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
    def on_study_stable(self, event: Any) -> Job | None:
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
    def load_bundle(self) -> Any:
        """The model bundle named in the settings."""
        if self.settings.audit.bundle is None:
            raise RuntimeError("no model bundle configured: set [audit] bundle (made by `labelqa train`)")
        from models.bundle import load_bundle

        return load_bundle(Path(self.settings.audit.bundle))

    def load_vocabulary(self, bundle: Any) -> Any:
        """The label vocabulary: the configured file, the bundle's own file, or the bundle's class names."""
        from service.audit import resolve_vocabulary

        return resolve_vocabulary(bundle, self.settings.audit.bundle, self.settings.audit.vocabulary)

    def warmup(self, ctx: WorkerContext) -> None:
        """Load the bundle and vocabulary once for this worker; they stay warm for every job."""
        bundle = ctx.cached("bundle", self.load_bundle)
        ctx.cached("vocabulary", lambda: self.load_vocabulary(bundle))
        try:
            from service.audit import warm_up

            warm_up(bundle, self.settings.audit.device)
        except Exception as e:  # noqa: BLE001 - warming is an optimisation only
            log.warning("model warm-up inference failed: %s", e)

    def run_job(self, job: Job, ctx: WorkerContext) -> Outcome:
        """Audit one study here: read, infer with this worker's warm bundle, write, enqueue for delivery."""
        bundle = ctx.cached("bundle", self.load_bundle)
        vocabulary = ctx.cached("vocabulary", lambda: self.load_vocabulary(bundle))
        return self.audit_job(job, bundle, vocabulary)

    def audit_job(self, job: Job, bundle: Any, vocabulary: Any, infer_fn: InferFn | None = None) -> Outcome:
        """Audit one study: read its files, infer (here, or ``infer_fn``: a remote worker), write the
        result objects and enqueue them for delivery. ``bundle`` needs to be loaded only when
        ``infer_fn`` is None; the read and write steps use its description."""
        from service.audit import audit_study

        records = self.store.instances(job.study_uid) if self.store is not None else []
        theirs = [r for r in records if not is_own_output(r.manufacturer, r.series_number)]
        files = [Path(r.path) for r in theirs]
        if not files:
            return Outcome(state=NO_ANNOTATIONS, reason="the study has no stored instances", n_samples=0)
        inputs = sorted(r.sop_instance_uid for r in theirs)
        t0 = time.perf_counter()
        a = self.settings.audit
        sa = audit_study(files, bundle, vocabulary, device=a.device, batch_size=a.batch_size,
                         heatmaps_for_hard_cases=a.heatmaps_for_hard_cases, infer_fn=infer_fn,
                         seg_limits=self.settings.seg)
        datasets = sa.datasets
        audit_s = time.perf_counter() - t0
        rows = verdict_rows(sa.rows)
        if not rows:
            return Outcome(
                state=NO_ANNOTATIONS, n_samples=0, n_flagged=0, reason=unaudited_reason(sa.issues),
                result={"inputs": inputs, "rows": [], "outputs": [], "issues": sa.issues},
            )
        out_dir = self.results_dir / job.study_uid
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = []
        paths = []
        for ds in datasets:
            p = out_dir / f"{ds.SOPInstanceUID}.dcm"
            if not p.exists():
                tmp = p.with_suffix(".tmp")
                ds.save_as(tmp, enforce_file_format=True)
                tmp.replace(p)
            paths.append(p)
            outputs.append({
                "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                "modality": str(getattr(ds, "Modality", "")), "path": str(p),
            })
        if self.outbox is not None and paths and self.settings.outbox.destinations:
            self.outbox.enqueue(paths)
        n_flagged = sum(1 for r in rows if r.get("verdict") in FLAGGED)
        return Outcome(
            state=DONE, n_samples=len(rows), n_flagged=n_flagged,
            result={
                "inputs": inputs, "rows": rows, "outputs": outputs, "audit_s": audit_s,
                "bundle_hash": getattr(bundle, "content_hash", None), "issues": sa.issues,
            },
        )

    def _finished(self, job: Job, outcome: Outcome) -> None:
        if self.metrics is None:
            return
        self.metrics.observe_job(job)


def _make_outbox(settings: Settings, engine: Any) -> Any:
    """The results outbox on the service database, or None when it is not available."""
    try:
        from dicom_io.outbox import Outbox
    except ImportError:
        log.warning("no results outbox available: results are written locally only")
        return None
    return Outbox(engine, settings.outbox.destinations, settings=settings.outbox)


class AuditService:
    """Component for ``service.process.run_service``: job table, audit workers, outbox sender, HTTP API.

    Built from the running ``Service`` (its settings and store); subscribes the pipeline to the
    store's study-stable events. Without a configured model bundle, studies are still queued (and
    survive restarts) but no worker runs until a bundle is configured.
    """

    def __init__(self, service: Any) -> None:
        from dicom_io.db import make_engine

        settings: Settings = service.settings
        self.settings = settings
        self.service = service
        self.engine = make_engine(settings.store.resolved_database_url())
        self.jobs = JobStore(self.engine, lease_s=settings.audit.job_lease_s)
        self.outbox = _make_outbox(settings, self.engine)
        self.metrics = _service_metrics(self.jobs, service.store, self.outbox)
        self.pipeline = Pipeline(settings, self.jobs, store=service.store, outbox=self.outbox, metrics=self.metrics)
        service.store.subscribe(self.pipeline.on_study_stable)
        self._outbox_stop = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self.api = None
        self.review = None
        if settings.api.enabled:
            from service.api import ApiContext, ApiServer, create_app
            from service.auth import Auth
            from service.http_guard import RefusedSettings, allowed_hosts, open_api_problem
            from service.review import ReviewService

            error, warning = open_api_problem(settings)
            if error:
                raise RefusedSettings(error)
            if warning:
                log.warning(warning)
            try:
                auth = Auth.from_settings(settings, self.engine)
            except ValueError as e:  # a weak token, a duplicate user: refused at start with the reason
                raise RefusedSettings(str(e)) from None
            token = settings.api.token.get_secret_value() if settings.api.token else None
            self.review = ReviewService.from_settings(settings, self.engine, jobs=self.jobs, outbox=self.outbox)
            ctx = ApiContext(jobs=self.jobs, token=token, pipeline=self.pipeline, store=service.store,
                             listener=service.listener, outbox=self.outbox, metrics=self.metrics,
                             version=_version(), auth=auth, review=self.review,
                             allowed_hosts=allowed_hosts(settings.api))
            self.api = ApiServer(create_app(ctx), settings.api.host, settings.api.port)

    def start(self) -> None:
        if self.settings.audit.bundle is not None:
            self.pipeline.start()
        else:
            log.warning("no model bundle configured ([audit] bundle): studies are queued but not audited")
        if self.outbox is not None and self.settings.outbox.destinations:
            self._outbox_thread = threading.Thread(
                target=self.outbox.run_forever, args=(self._outbox_stop,), name="labelqa-outbox", daemon=True
            )
            self._outbox_thread.start()
        if self.review is not None:
            try:  # decisions whose write-back a crash interrupted are written now
                self.review.sync()
                self.review.resume()
            except Exception:  # noqa: BLE001 - the service runs on; the items stay pending
                log.exception("review: resuming pending write-backs failed")
        if self.api is not None:
            try:
                self.api.start()
            except RuntimeError as e:  # the DICOM listener must not go down because of the API
                log.error("HTTP API not started: %s", e)
                self.api = None

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self._outbox_stop.set()
        if self._outbox_thread is not None:
            self._outbox_thread.join(30)
        if self.settings.audit.bundle is not None:
            self.pipeline.stop()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("labelqa")
    except Exception:  # noqa: BLE001
        return "0"


def _service_metrics(jobs: JobStore, store: Any, outbox: Any) -> Any:
    from service.api import outbox_counts
    from service.metrics import Metrics

    def instances() -> float:
        from sqlalchemy import func, select

        from dicom_io.store import InstanceRow

        with store.engine.connect() as c:
            return float(c.execute(select(func.count()).select_from(InstanceRow)).scalar_one())

    def depth() -> float:
        c = outbox_counts(outbox)
        return float(sum(v for k, v in c.items() if k in ("pending", "queued", "retrying", "sending")))

    def failed() -> float:
        c = outbox_counts(outbox)
        return float(sum(v for k, v in c.items() if k in ("dead", "dead_letter", "failed")))

    return Metrics(jobs, instances_received=instances, outbox_depth=depth if outbox is not None else None,
                   outbox_failed=failed if outbox is not None else None)


def service_components(settings: Settings) -> list[Any]:
    """The components ``labelqa serve`` plugs into ``run_service``: the audit service."""
    def build(service: Any) -> AuditService:  # a factory (a class would pass for a component itself)
        return AuditService(service)

    return [build]
