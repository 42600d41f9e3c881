"""``labelqa serve`` assembled: the runtime (job table, workers, outbox sender), the review and the HTTP API.

The one module above the wings that wires them together: the runtime never imports the review or
HTTP; this module builds all three from the settings and hands them to
:func:`service.runtime.process.run_service` as one component.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.audit import AUDITOR
from service.runtime.jobs import JobStore
from service.runtime.pipeline import Pipeline
from service.settings import Settings

__all__ = ["AuditService", "service_components"]

log = logging.getLogger("labelqa.serve")


def _make_outbox(settings: Settings, engine: Any) -> Any:
    """The results outbox on the service database, or None when it is not available."""
    try:
        from dicom_io.outbox import Outbox
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

    def __init__(self, service: Any) -> None:
        from dicom_io.db import make_engine

        settings: Settings = service.settings
        self.settings = settings
        self.service = service
        self.engine = make_engine(settings.store.resolved_database_url())
        self.jobs = JobStore(self.engine, lease_s=settings.audit.job_lease_s)
        self.outbox = _make_outbox(settings, self.engine)
        self.metrics = _service_metrics(self.jobs, service.store, self.outbox)
        self.pipeline = Pipeline(settings, self.jobs, auditor=AUDITOR, store=service.store, outbox=self.outbox,
                                 metrics=self.metrics)
        service.store.subscribe(self.pipeline.on_study_stable)
        self._outbox_stop = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self.api = None
        self.review = None
        if settings.api.enabled:
            from service.http.api import ApiContext, ApiServer, create_app
            from service.http.auth import Auth
            from service.http.guard import RefusedSettings, allowed_hosts, open_api_problem
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
    from service.http.api import outbox_counts
    from service.runtime.metrics import Metrics

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
