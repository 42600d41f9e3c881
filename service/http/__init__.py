"""The HTTP wing: the API and the review workbench (FastAPI), login and tokens.

``context`` (the one typed context on ``app.state`` and the role dependencies), ``api`` (the service's
endpoints; ``create_app`` assembles the app), ``review_api`` (the review's JSON API under /api),
``pages`` (the review pages), ``pictures`` (the item view's PNGs), ``auth`` (users, tokens, sessions,
CSRF), ``guard`` (Host header, open API, weak tokens), ``ratelimit``, ``sessions``.
"""

from service.http.api import (  # noqa: F401
    UID_PATTERN,
    ApiServer,
    Completion,
    Health,
    JobList,
    JobSummary,
    Queued,
    StudyAuditResponse,
    api_reference_html,
    api_reference_markdown,
    create_app,
    outbox_counts,
    reference_app,
)
from service.http.auth import (  # noqa: F401
    CSRF_FIELD,
    CSRF_HEADER,
    ROLES,
    SESSION_COOKIE,
    Auth,
    LoginRequired,
    Principal,
)
from service.http.context import HttpContext, admin, context, page_user, reviewer  # noqa: F401
from service.http.pages import HERE, STATIC, TEMPLATES  # noqa: F401
from service.http.review_api import EXPORT_FIELDS, DecisionBody, export_csv_text, json_response, safe_cell  # noqa: F401

__all__ = [
    "Auth",
    "Principal",
    "LoginRequired",
    "SESSION_COOKIE",
    "CSRF_HEADER",
    "CSRF_FIELD",
    "ROLES",
    "HttpContext",
    "context",
    "reviewer",
    "admin",
    "page_user",
    "UID_PATTERN",
    "JobSummary",
    "JobList",
    "StudyAuditResponse",
    "Queued",
    "Completion",
    "Health",
    "outbox_counts",
    "create_app",
    "ApiServer",
    "reference_app",
    "api_reference_markdown",
    "api_reference_html",
    "HERE",
    "TEMPLATES",
    "STATIC",
    "EXPORT_FIELDS",
    "DecisionBody",
    "export_csv_text",
    "safe_cell",
    "json_response",
]
