"""The HTTP API: health, Prometheus metrics, audit jobs and per-study audit results.

FastAPI app served by uvicorn on 127.0.0.1 by default; every request must name an allowed host
(``service.http_guard``: 400 otherwise). When ``[auth] users`` or ``[api] token`` are
set, every endpoint except ``/health`` needs a user
(``Authorization: Bearer <token>``, or the review workbench's session cookie; see ``service.auth``);
re-running an audit needs the admin role. With a review service in the context the app also serves
the review workbench (``service.web``). The OpenAPI schema is at ``/openapi.json`` and a reference page
at ``/docs`` (rendered here, no scripts from elsewhere); ``docs/api.md`` is the same reference, generated
by :func:`api_reference_markdown`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from service.jobs import DONE, NO_ANNOTATIONS, STATES, Job, JobStore

__all__ = [
    "UID_PATTERN", "ApiContext", "JobSummary", "JobList", "StudyAuditResponse", "Queued", "Health", "outbox_counts",
    "create_app", "ApiServer", "reference_app", "api_reference_markdown", "api_reference_html",
]

log = logging.getLogger("labelqa.api")

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
_UID_RE = re.compile(UID_PATTERN)


@dataclass
class ApiContext:
    """What the API reads from: the job table, and optional live parts of the service."""

    jobs: JobStore
    token: str | None = None
    pipeline: Any = None  # service.pipeline.Pipeline: request_audit(), executor.status()
    store: Any = None  # dicom_io.store.StudyStore
    listener: Any = None  # dicom_io.scp.Listener
    outbox: Any = None  # the results outbox
    metrics: Any = None  # service.metrics.Metrics
    version: str = "0"
    auth: Any = None  # service.auth.Auth; default: the legacy [api] token as the one admin
    review: Any = None  # service.review.ReviewService: the review workbench (worklist, decisions, export)
    allowed_hosts: list[str] | None = None  # Host header values answered (service.http_guard.allowed_hosts);
    # default: the loopback names only


class JobSummary(BaseModel):
    id: int
    study_uid: str
    state: str = Field(description=f"One of {', '.join(STATES)}.")
    trigger: str
    reason: str | None = None
    attempts: int
    owner: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    wait_s: float | None = None
    duration_s: float | None = None
    n_samples: int | None = None
    n_flagged: int | None = None
    superseded_by: int | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]
    counts: dict[str, int] = Field(description="Number of jobs per state.")


class StudyAuditResponse(BaseModel):
    study_uid: str
    state: str = Field(description="State of the newest job of the study.")
    reason: str | None = None
    job: JobSummary = Field(description="The newest job of the study.")
    result_job_id: int | None = Field(None, description="The job whose results are shown (newest finished audit).")
    bundle_hash: str | None = None
    verdicts: list[dict[str, Any]] = Field(default_factory=list, description="One row per audited annotation.")
    outputs: list[dict[str, Any]] = Field(default_factory=list, description="Result objects (SR, SC, KOS) written.")
    issues: list[dict[str, Any]] = Field(default_factory=list, description="What could not be read, or was odd and "
                                         "normalised (code, message, annotation or image UID).")


class Queued(BaseModel):
    job: JobSummary


class Health(BaseModel):
    status: str = Field(description="ok when every present component is healthy, else degraded.")
    listener: dict[str, Any]
    database: dict[str, Any]
    outbox: dict[str, Any]
    model: dict[str, Any]
    version: str
    reasons: list[str] = Field(default_factory=list, description="Why the status is degraded (empty when ok).")


def _summary(job: Job) -> JobSummary:
    return JobSummary(**job.summary())


def _listener_status(listener: Any) -> dict[str, Any]:
    if listener is None:
        return {"present": False}
    running = getattr(listener, "running", None)
    if callable(running):
        running = running()
    if running is None:
        running = getattr(listener, "is_running", None)
        running = running() if callable(running) else running
    if running is None and hasattr(listener, "_server"):
        running = listener._server is not None  # dicom_io.scp.Listener: set while serving
    out: dict[str, Any] = {"present": True, "running": bool(running) if running is not None else True}
    for k in ("port", "ae_title", "host"):
        v = getattr(listener, k, None)
        if isinstance(v, (str, int)):
            out[k] = v
    return out


def outbox_counts(outbox: Any) -> dict[str, Any]:
    """Pending and dead-lettered items of the outbox (by whatever counting it offers)."""
    if outbox is None:
        return {"present": False}
    for name in ("counts", "stats"):
        fn = getattr(outbox, name, None)
        if callable(fn):
            c = dict(fn())
            return {"present": True, **c}
    items = outbox.list()
    states: dict[str, int] = {}
    for it in items:
        st = it.get("state") if isinstance(it, dict) else getattr(it, "state", "pending")
        states[str(st)] = states.get(str(st), 0) + 1
    return {"present": True, **states}


@dataclass
class _Loopback:
    """API settings of a loopback-only app (for ``allowed_hosts``)."""

    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over ``ctx``."""
    # The schema and the reference page need a login like everything else (not FastAPI's open
    # defaults), and the page is rendered here: Swagger UI would load its scripts from a CDN.
    app = FastAPI(
        title="labelqa",
        version=ctx.version,
        description="Annotation quality audits of DICOM studies: health, metrics, jobs and results.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    from service.auth import Auth

    if ctx.auth is None:
        ctx.auth = Auth(api_token=ctx.token)
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from service.http_guard import allowed_hosts

    # DNS rebinding: a request naming another host (a page elsewhere, re-pointed at us) gets 400
    hosts = ctx.allowed_hosts if ctx.allowed_hosts is not None else allowed_hosts(_Loopback())
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    auth = ctx.auth.require("reviewer")
    admin = ctx.auth.require("admin")

    protected = [Depends(auth)]

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    def openapi_schema() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", dependencies=protected, include_in_schema=False, response_class=HTMLResponse)
    def reference_page() -> HTMLResponse:
        return HTMLResponse(api_reference_html(app.openapi()))

    @app.get("/health", response_model=Health, summary="Liveness and readiness of every component")
    def health(response: Response) -> Health:
        db: dict[str, Any] = {"ok": True}
        try:
            db["jobs"] = ctx.jobs.counts()
        except Exception as e:  # noqa: BLE001
            db = {"ok": False, "error": type(e).__name__}
        listener = _listener_status(ctx.listener)
        try:
            outbox = outbox_counts(ctx.outbox)
        except Exception as e:  # noqa: BLE001
            outbox = {"present": True, "error": type(e).__name__}
        model: dict[str, Any] = {"present": False}
        if ctx.pipeline is not None:
            bundle = ctx.pipeline.settings.audit.bundle
            model = {"present": True, "bundle": str(bundle) if bundle else None, **ctx.pipeline.executor.status()}
        reasons: list[str] = []
        if not db["ok"]:
            reasons.append(f"index database unreachable ({db['error']})")
        if not listener.get("running", True):
            reasons.append("DICOM listener not running")
        low_disk = getattr(ctx.listener, "low_disk", None)
        full = low_disk() if callable(low_disk) else None
        if full:
            listener["low_disk"] = full
            reasons.append(f"data dir nearly full: {full}; C-STORE refused with 0xA700")
        store_error = getattr(ctx.store, "last_error", None)
        if isinstance(store_error, str):
            reasons.append(store_error)
        if "error" in outbox:
            reasons.append(f"outbox unreadable ({outbox['error']})")
        dead = outbox.get("dead") or 0
        if isinstance(dead, int) and dead > 0:
            reasons.append(f"{dead} outbox item(s) dead-lettered (see `labelqa outbox list --state dead`)")
        if model.get("present") and not model.get("models_loaded"):
            reasons.append("model bundle not loaded")
        if not db["ok"]:
            response.status_code = 503
        return Health(status="degraded" if reasons else "ok", listener=listener, database=db, outbox=outbox,
                      model=model, version=ctx.version, reasons=reasons)

    @app.get("/metrics", dependencies=protected, summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if ctx.metrics is None:
            raise HTTPException(404, "metrics are not enabled")
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/jobs", response_model=JobList, dependencies=protected, summary="Audit jobs, newest first")
    def list_jobs(
        state: str | None = Query(None, description=f"Only jobs in this state: {', '.join(STATES)}."),
        study_uid: str | None = Query(None, max_length=64, pattern=UID_PATTERN),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=10**9),
    ) -> JobList:
        if state is not None and state not in STATES:
            raise HTTPException(422, f"unknown state {state!r}; use one of {', '.join(STATES)}")
        jobs = ctx.jobs.list(state=state, study_uid=study_uid, limit=limit, offset=offset)
        return JobList(jobs=[_summary(j) for j in jobs], counts=ctx.jobs.counts())

    @app.get("/studies/{study_uid}/audit", response_model=StudyAuditResponse, dependencies=protected,
             summary="Verdicts and scores of the newest audit of a study",
             responses={404: {"description": "No audit of this study is known."}})
    def study_audit(study_uid: str = Path(..., max_length=64, pattern=UID_PATTERN)) -> StudyAuditResponse:
        latest = ctx.jobs.latest_for_study(study_uid)
        if latest is None:
            raise HTTPException(404, f"no audit of study {study_uid} is known")
        result_job = ctx.jobs.latest_for_study(study_uid, (DONE, NO_ANNOTATIONS))
        res = (result_job.result or {}) if result_job is not None else {}
        return StudyAuditResponse(
            study_uid=study_uid, state=latest.state, reason=latest.reason, job=_summary(latest),
            result_job_id=result_job.id if result_job is not None else None,
            bundle_hash=res.get("bundle_hash"), verdicts=res.get("rows", []), outputs=res.get("outputs", []),
            issues=res.get("issues", []),
        )

    @app.post("/studies/{study_uid}/audit", response_model=Queued, status_code=202, dependencies=[Depends(admin)],
              summary="Queue a new audit of a stored study",
              responses={404: {"description": "The study is not in the store."},
                         503: {"description": "The pipeline is not running."}})
    def rerun(study_uid: str = Path(..., max_length=64, pattern=UID_PATTERN)) -> Queued:
        if ctx.pipeline is None:
            raise HTTPException(503, "the audit pipeline is not running in this process")
        if ctx.store is not None and study_uid not in set(ctx.store.studies()):
            raise HTTPException(404, f"study {study_uid} is not in the store")
        job = ctx.pipeline.request_audit(study_uid, trigger="api")
        return Queued(job=_summary(job))

    if ctx.review is not None:
        from service.web import install

        install(app, ctx.review, ctx.auth)
        if ctx.metrics is not None:
            from service.review import ReviewCollector

            ctx.metrics.registry.register(ReviewCollector(ctx.review.store))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover - safety net
        log.exception("API error on %s", request.url.path)
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app


class ApiServer:
    """uvicorn serving an app in a background thread (started and stopped with the service)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8787) -> None:
        import uvicorn

        self.host, self.port = host, port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="labelqa-api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the HTTP API could not start on {self.host}:{self.port} (port in use?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP API did not start on {self.host}:{self.port} within {timeout} s")
            time.sleep(0.02)
        log.info("HTTP API on http://%s:%d (OpenAPI at /openapi.json)", self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


# -- the API reference: docs/api.md and the /docs page, from the OpenAPI schema ---------------------------
def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every documented endpoint, in path order."""
    out = []
    for path in sorted(schema.get("paths", {})):
        for method, op in schema["paths"][path].items():
            out.append((method.upper(), path, op))
    return out


def _type(sch: dict[str, Any]) -> str:
    if "$ref" in sch:
        return str(sch["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in sch:
        return " or ".join(_type(x) for x in sch["anyOf"] if x.get("type") != "null") or "any"
    if sch.get("type") == "array":
        return f"list of {_type(sch.get('items', {}))}"
    return str(sch.get("type", "any"))


def _parameters(op: dict[str, Any], schemas: dict[str, Any] | None = None) -> list[str]:
    """One line per parameter and request-body field: ``name`` (where, type): description."""
    lines = []
    for p in op.get("parameters", []):
        desc = (p.get("description") or "").strip()
        req = ", required" if p.get("required") else ""
        lines.append(f"`{p['name']}` ({p['in']}, {_type(p.get('schema', {}))}{req})" + (f": {desc}" if desc else ""))
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        name = _type(content.get("schema", {}))
        model = (schemas or {}).get(name, {})
        required = set(model.get("required", []))
        for field, sch in model.get("properties", {}).items():
            desc = (sch.get("description") or "").strip()
            lines.append(f"`{field}` (body {media}, {_type(sch)}{', required' if field in required else ''})"
                         + (f": {desc}" if desc else ""))
        if not model.get("properties"):
            lines.append(f"body ({media}, {name})")
    return lines


def reference_app() -> FastAPI:
    """The full HTTP API (service and review workbench) over throw-away in-memory databases: its schema
    is the same as a running ``labelqa serve``'s."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    from service.review import ReviewService

    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    jobs = JobStore(engine)
    return create_app(ApiContext(jobs=jobs, review=ReviewService(engine, jobs=jobs)))


def api_reference_markdown(schema: dict[str, Any] | None = None) -> str:
    """docs/api.md: every endpoint with its method, summary, parameters and who may call it."""
    schema = schema or reference_app().openapi()
    out = [
        "# HTTP API reference",
        "",
        "Generated from the OpenAPI schema of `labelqa serve` (`labelqa config api-reference > docs/api.md`;",
        "a test checks it is current). The service answers on `[api] host`:`port` (default 127.0.0.1:8787).",
        "With users (`[auth] users`) or a token (`[api] token`) configured, every endpoint but `/health` needs",
        "`Authorization: Bearer <token>` or the review workbench's session cookie; writes with the cookie also",
        "need the page's CSRF token in `X-CSRF-Token`. Admin-only endpoints say so. A running service serves",
        "the schema at `/openapi.json` and this reference at `/docs` (both behind the same login).",
        "",
        "| method | path | what |",
        "|---|---|---|",
    ]
    ops = _operations(schema)
    for method, path, op in ops:
        out.append(f"| {method} | `{path}` | {op.get('summary', '').strip()} |")
    for method, path, op in ops:
        out += ["", f"## {method} `{path}`", ""]
        if op.get("summary"):
            out.append(op["summary"].strip() + ".")
        desc = (op.get("description") or "").strip()
        if desc and desc != op.get("summary"):
            out += ["", desc]
        params = _parameters(op, schema.get("components", {}).get("schemas"))
        if params:
            out += ["", *[f"- {p}" for p in params]]
        codes = ", ".join(f"{c} {r.get('description', '').strip()}" for c, r in sorted(op.get("responses", {}).items()))
        if codes:
            out += ["", f"Responses: {codes}."]
    return "\n".join(out) + "\n"


def api_reference_html(schema: dict[str, Any]) -> str:
    """The /docs page: the same reference as docs/api.md, as plain HTML (no scripts)."""
    from html import escape

    rows = []
    for method, path, op in _operations(schema):
        params = "".join(f"<li>{escape(p)}</li>"
                         for p in _parameters(op, schema.get("components", {}).get("schemas")))
        rows.append(f"<tr><td>{method}</td><td><code>{escape(path)}</code></td>"
                    f"<td>{escape(op.get('summary', ''))}{f'<ul>{params}</ul>' if params else ''}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>labelqa HTTP API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;padding:4px 8px;"
            "border-bottom:1px solid #ddd}</style></head><body><h1>labelqa HTTP API</h1>"
            "<p>Schema: <a href='/openapi.json'>/openapi.json</a>.</p><table><tr><th>method</th><th>path</th>"
            f"<th>what</th></tr>{''.join(rows)}</table></body></html>")
