"""The HTTP app as the tests and the benchmarks build it: over an ``HttpContext``, addressed as the loopback API."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from dicom_io.outbox import Outbox
from service.http import HttpContext, create_app
from service.runtime.jobs import JobStore
from service.runtime.metrics import Metrics
from service.serve import http_context
from service.settings import Settings

__all__ = ["BASE_URL", "api_client", "review_context"]

BASE_URL = "http://127.0.0.1:8787"
"""Where a test client sends its requests (a Host the API answers)."""


def api_client(ctx: HttpContext, base_url: str = BASE_URL) -> TestClient:
    """A test client of the app over ``ctx`` (in process, no socket)."""
    return TestClient(create_app(ctx), base_url=base_url)


def review_context(settings: Settings, engine: Engine) -> HttpContext:
    """The context of a service on ``engine`` as ``labelqa serve`` wires it (job table, results outbox,
    metrics, users from the settings, the review workbench), without the DICOM listener, store or
    pipeline."""
    jobs = JobStore(engine)
    outbox = Outbox(engine, settings.outbox.destinations, settings=settings.outbox)
    return http_context(settings, engine, jobs, outbox=outbox, metrics=Metrics(jobs))
