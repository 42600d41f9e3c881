"""What every HTTP route reads from: one typed context on ``app.state``, and the dependencies built on it.

:func:`service.http.api.create_app` keeps an :class:`HttpContext` on ``app.state``; a route takes it with
``ctx: HttpContext = Depends(context)`` and its caller with ``p: Principal = Depends(reviewer)`` (or
:func:`admin`, or :func:`page_user` for the HTML pages, which redirect to /login instead of answering 401).
The routers themselves are module-level (``api``, ``review_api``, ``pages``): nothing is a closure over
the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials

from service.http.auth import BEARER, Auth, Principal
from service.http.guard import allowed_hosts
from service.http.pictures import Pictures
from service.runtime.jobs import JobStore

if TYPE_CHECKING:  # types only: the runtime parts are built by the serve wiring, not here
    from dicom_io.outbox import Outbox
    from dicom_io.scp import Listener
    from dicom_io.store import StudyStore
    from service.review import ReviewService
    from service.runtime.metrics import Metrics
    from service.runtime.pipeline import Pipeline

__all__ = ["HttpContext", "context", "reviewer", "admin", "page_user", "review_service", "pictures"]


@dataclass
class _Loopback:
    """The API settings of a loopback-only app (for ``allowed_hosts``)."""

    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()


def _loopback_hosts() -> list[str]:
    return allowed_hosts(_Loopback())


@dataclass
class HttpContext:
    """The job table, who may call, and the live parts of the service that are present in this process.

    Each optional part is None when it does not run here (a test app, ``labelqa config api-reference``);
    the endpoints that need it answer 503 or 404 then, and ``/health`` reports it absent.
    """

    jobs: JobStore
    auth: Auth = field(default_factory=Auth)
    """Users, tokens and sessions; the default has no user (login off: everybody the anonymous reviewer)."""
    pipeline: Pipeline | None = None
    """The audit pipeline: re-runs (``POST /studies/{uid}/audit``) and the model's status in ``/health``."""
    store: StudyStore | None = None
    """The study store: which studies exist, ``POST /studies/{uid}/complete``."""
    listener: Listener | None = None
    """The DICOM listener (running, port, low disk) for ``/health``."""
    outbox: Outbox | None = None
    """The results outbox (pending and dead-lettered items) for ``/health``."""
    metrics: Metrics | None = None
    """The service's Prometheus registry (``/metrics``; 404 without)."""
    review: ReviewService | None = None
    """The review workbench (its JSON API under /api and the pages); absent: neither is served."""
    version: str = "0"
    allowed_hosts: list[str] = field(default_factory=_loopback_hosts)
    """Host header values answered (``service.http.guard.allowed_hosts``); default the loopback names."""
    pictures: Pictures | None = field(default=None, init=False, repr=False)
    """The item view's PNG renderings (with their cache of decoded datasets), when the review is present."""

    def __post_init__(self) -> None:
        if self.review is not None:
            self.pictures = Pictures(self.review)


def context(request: Request) -> HttpContext:
    """The app's :class:`HttpContext` (a FastAPI dependency)."""
    ctx = request.app.state.http
    if not isinstance(ctx, HttpContext):  # an app not made by create_app
        raise RuntimeError("the app has no HttpContext on app.state.http; build it with create_app")
    return ctx


def reviewer(request: Request, ctx: HttpContext = Depends(context),
             _creds: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Principal:
    """A JSON API caller with the reviewer role (or above): 401 without credentials, 403 without the role."""
    return ctx.auth.authorize(request, "reviewer")


def admin(request: Request, ctx: HttpContext = Depends(context),
          _creds: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Principal:
    """A JSON API caller with the admin role."""
    return ctx.auth.authorize(request, "admin")


def page_user(request: Request, ctx: HttpContext = Depends(context)) -> Principal:
    """A browser user of the review pages; without a session the page redirects to /login."""
    return ctx.auth.page_principal(request, "reviewer")


def review_service(ctx: HttpContext = Depends(context)) -> ReviewService:
    """The review service of the workbench's routes (404 in an app without it)."""
    if ctx.review is None:
        raise HTTPException(404, "the review workbench is not enabled")
    return ctx.review


def pictures(ctx: HttpContext = Depends(context)) -> Pictures:
    """The item view's picture renderer (404 in an app without the review)."""
    if ctx.pictures is None:
        raise HTTPException(404, "the review workbench is not enabled")
    return ctx.pictures
