"""``labelqa serve`` assembled: the runtime (job table, workers, outbox sender), the review and the HTTP API.

The one module above the wings that wires them together: the runtime never imports the review or
HTTP; this module builds all three from the settings and hands them to
:func:`service.runtime.process.run_service` as one component.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from dicom_io.db import make_engine
from dicom_io.store import InstanceRow
from service.audit import AUDITOR
from service.http import ApiServer, Auth, HttpContext, create_app, outbox_counts
from service.http.guard import RefusedSettings, allowed_hosts, open_api_problem
from service.review import ReviewService
from service.runtime.jobs import JobStore
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Pipeline
from service.settings import Settings

if TYPE_CHECKING:
    from dicom_io.outbox import Outbox
    from dicom_io.scp import Listener
    from dicom_io.store import StudyStable, StudyStore
    from service.runtime.process import ComponentSpec, Service

__all__ = ["AuditService", "http_context", "service_components"]

log = logging.getLogger("labelqa.serve")


def _make_outbox(settings: Settings, engine: Engine) -> Outbox | None:
    """The results outbox on the service database, or None when it is not available."""
    try:
        from dicom_io.outbox import Outbox  # guarded: without it results are written locally only
    except ImportError:
        log.warning("no results outbox available: results are written locally only")
        return None
    return Outbox(engine, settings.outbox.destinations, settings=settings.outbox)


class AuditService:
    """Component for ``service.runtime.process.run_service``: job table, audit workers, outbox sender, HTTP API.

    Built from the running ``Service`` (its settings and store); subscribes the pipeline to the
    store's study-stable events. Without a configured model bundle, studies are still queued (and
    survive restarts) but no worker runs until a bundle is configured.
    """

    def __init__(self, service: Service) -> None:
        settings: Settings = service.settings
        self.settings = settings
        self.service = service
        self.engine = make_engine(settings.store.resolved_database_url())
        self.jobs = JobStore(self.engine, lease_s=settings.audit.job_lease_s)
        self.outbox = _make_outbox(settings, self.engine)
        self.metrics = _service_metrics(self.jobs, service.store, self.outbox)
        self.pipeline = Pipeline(settings, self.jobs, auditor=AUDITOR, store=service.store, outbox=self.outbox,
                                 metrics=self.metrics)
        pipeline = self.pipeline

        def on_stable(event: StudyStable) -> None:  # the store's subscribers return nothing
            pipeline.on_study_stable(event)

        service.store.subscribe(on_stable)
        self._outbox_stop = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self.api: ApiServer | None = None
        self.review: ReviewService | None = None
        if settings.api.enabled:
            error, warning = open_api_problem(settings)
            if error:
                raise RefusedSettings(error)
            if warning:
                log.warning(warning)
            ctx = http_context(settings, self.engine, self.jobs, outbox=self.outbox, metrics=self.metrics,
                               pipeline=self.pipeline, store=service.store, listener=service.listener)
            self.review = ctx.review
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


def http_context(settings: Settings, engine: Engine, jobs: JobStore, *, outbox: Outbox | None = None,
                 metrics: Metrics | None = None, pipeline: Pipeline | None = None, store: StudyStore | None = None,
                 listener: Listener | None = None) -> HttpContext:
    """The HTTP API's context over these parts, as ``labelqa serve`` builds it: users and tokens from the
    settings (logouts recorded in ``engine``), the review workbench on the service database, the Host
    header values of ``[api]``. A weak token or a user listed twice raises :class:`RefusedSettings` with
    the reason."""
    try:
        auth = Auth.from_settings(settings, engine)
    except ValueError as e:  # a weak token, a duplicate user: refused at start with the reason
        raise RefusedSettings(str(e)) from None
    review = ReviewService.from_settings(settings, engine, jobs=jobs, outbox=outbox)
    return HttpContext(jobs=jobs, auth=auth, pipeline=pipeline, store=store, listener=listener, outbox=outbox,
                       metrics=metrics, review=review, version=_version(), allowed_hosts=allowed_hosts(settings.api))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("labelqa")
    except Exception:  # noqa: BLE001
        return "0"


def _service_metrics(jobs: JobStore, store: StudyStore, outbox: Outbox | None) -> Metrics:
    def instances() -> float:
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


def service_components(settings: Settings) -> list[ComponentSpec]:
    """The components ``labelqa serve`` plugs into ``run_service``: the audit service."""
    def build(service: Service) -> AuditService:  # a factory (a class would pass for a component itself)
        return AuditService(service)

    return [build]
