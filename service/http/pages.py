"""The review workbench's pages, rendered on the server: ``/login``, ``/logout``, ``/review`` (the worklist),
``/review/items/{id}`` (one item, and its decision form), and ``/`` (to the worklist).

A page needs a session cookie (``service.http.context.page_user``: without one it redirects to /login),
and every form carries the session's CSRF token. Pages answer with ``Cache-Control: no-store``, no
framing and a Content-Security-Policy that allows nothing from elsewhere; the scripts and styles are
the static files under ``/static/review``. Templates are Jinja2 with autoescape on.
"""

from __future__ import annotations

import logging
from pathlib import Path as FilePath
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.http.auth import CSRF_FIELD, SESSION_COOKIE, Principal, client_key, safe_next
from service.http.context import HttpContext, context, page_user, review_service
from service.http.review_api import ItemId, item_or_404, synced, worklist_filter
from service.review import Decision, DecisionError, ReviewService, WorklistFilter, why_flagged
from service.review.volume import is_volume_item, opening_slice

__all__ = ["router", "HERE", "TEMPLATES", "STATIC", "PAGE_HEADERS", "templates", "render", "worklist_context",
           "item_context"]

log = logging.getLogger("labelqa.web")

HERE = FilePath(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                           "form-action 'self'"}
"""Headers of every page: never cached, never framed, nothing loaded or posted elsewhere."""

router = APIRouter(include_in_schema=False)


def templates() -> Environment:
    """The pages' Jinja2 environment (autoescape on) with the filters ``fmt`` (a number with n decimals)
    and ``short`` (the tail of a long UID)."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters["fmt"] = lambda v, n=2: "" if v is None else (f"{v:.{n}f}" if isinstance(v, float) else str(v))
    env.filters["short"] = lambda v: "" if not v else ("…" + str(v)[-10:] if len(str(v)) > 12 else str(v))
    return env


_ENV = templates()


def render(ctx: HttpContext, name: str, request: Request, p: Principal | None, **values: object) -> HTMLResponse:
    """Template ``name`` with ``values`` and what every page shows (the user, the CSRF token, whether login
    is on), with :data:`PAGE_HEADERS`."""
    html = _ENV.get_template(name).render(request=request, user=p, csrf=p.csrf if p else None,
                                          csrf_field=CSRF_FIELD, auth_on=ctx.auth.enabled, **values)
    return HTMLResponse(html, headers=PAGE_HEADERS)


def worklist_context(review: ReviewService, f: WorklistFilter, page_no: int, per_page: int) -> dict[str, Any]:
    """What worklist.html shows: one page of items under filter ``f``, the facets of the filter form, the
    loop's numbers in the header, and the query that the paging links repeat."""
    try:
        pg = review.store.worklist(f, limit=per_page, offset=(page_no - 1) * per_page)
    except DecisionError as e:
        raise HTTPException(422, str(e)) from None
    query = {k: v for k, v in dict(verdict=f.verdict or "any", label=f.label, modality=f.modality,
                                      date_from=f.date_from, date_to=f.date_to, series_uid=f.series_uid,
                                      status=f.status).items() if v is not None}
    return {
        "page": pg,
        "f": f,
        "facets": review.store.facets(),
        "stats": review.stats(),
        "query": query,
        "page_no": page_no,
        "pages": max(1, -(-pg.total // per_page)),
        "per_page": per_page,
        "decisions": [d.value for d in Decision],
    }


def item_context(review: ReviewService, item_id: int, f: WorklistFilter, k: int | None,
                 saved: str | None) -> dict[str, Any]:
    """What item.html shows: the item, why it was flagged, its neighbours under ``f``, the labels to choose
    from, the members' probabilities, its decision trail and, for a volume item, the slices to scroll."""
    it = item_or_404(review, item_id)
    volume = None
    if is_volume_item(it):  # a segment over a series: the page scrolls through its slices
        n = len(it.get("slices") or [])
        start = k if k is not None and k < n else opening_slice(it)
        volume = {"n": n, "start": start, "key": [int(x) for x in it.get("key_slices") or [] if 0 <= int(x) < n],
                  "range": it.get("slice_range"), "regions": it.get("regions_3d") or []}
    prev, nxt = review.store.neighbours(item_id, f)
    return {
        "item": it,
        "why": why_flagged(it),
        "prev_id": prev,
        "next_id": nxt,
        "labels": review.class_names(),
        "query": {k: v for k, v in dict(verdict=f.verdict or "any", status=f.status).items() if v is not None},
        "saved": saved,
        "members": sorted((it.get("member_probs") or {}).items()),
        "trail": review.store.trail(item_id, 20),
        "volume": volume,
    }


@router.get("/login")
def login_page(request: Request, next: str = "/review", error: str | None = None,  # noqa: A002
               ctx: HttpContext = Depends(context)) -> Response:
    auth = ctx.auth
    if not auth.enabled:  # login off: an anonymous session (it carries the CSRF token of the forms)
        resp = RedirectResponse(safe_next(next), status_code=303)
        auth.set_cookie(resp, auth.make_session("anonymous"))
        return resp
    return render(ctx, "login.html", request, None, next=safe_next(next), error=error)


@router.post("/login")
def login(request: Request, name: str = Form(..., max_length=64), token: str = Form(..., max_length=512),
          next: str = Form("/review"), ctx: HttpContext = Depends(context)) -> Response:  # noqa: A002
    auth = ctx.auth
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "cross-site login refused")
    known = name.strip() in auth.users  # only a user's own name is ever logged (never a token typed there)
    keys = [client_key(request), *([f"user {name.strip()}"] if known else [])]
    try:
        auth.locked_out(keys)
    except HTTPException as e:
        page = render(ctx, "login.html", request, None, next=safe_next(next), error=str(e.detail))
        page.status_code, page.headers["Retry-After"] = 429, (e.headers or {}).get("Retry-After", "60")
        return page
    u = auth.login(name, token)
    if u is None:
        auth.limiter.fail(keys, "login")
        log.info("review: failed login for %s from %s", f"user {name.strip()}" if known else "an unknown name",
                 keys[0].removeprefix("client "))
        return render(ctx, "login.html", request, None, next=safe_next(next), error="wrong name or token")
    auth.limiter.succeed(keys)
    resp = RedirectResponse(safe_next(next), status_code=303)
    auth.set_cookie(resp, auth.make_session(u.name))
    return resp


@router.post("/logout")
def logout(request: Request, csrf_token: str | None = Form(None), p: Principal = Depends(page_user),
           ctx: HttpContext = Depends(context)) -> Response:
    ctx.auth.check_csrf(request, p, csrf_token)
    ctx.auth.revoke(request.cookies.get(SESSION_COOKIE))  # refused from now on, even if a copy was kept
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/review")
def worklist_page(
    request: Request,
    verdict: str | None = "flagged", label: str | None = None, modality: str | None = None,
    date_from: str | None = None, date_to: str | None = None, series_uid: str | None = None,
    status: str | None = None, page_no: int = Query(1, alias="page", ge=1, le=10**6),
    per_page: int = Query(50, ge=5, le=500), p: Principal = Depends(page_user),
    ctx: HttpContext = Depends(context), review: ReviewService = Depends(review_service),
) -> Response:
    f = worklist_filter(verdict, label, modality, date_from, date_to, series_uid, None, status)
    return render(ctx, "worklist.html", request, p, **worklist_context(synced(review), f, page_no, per_page))


@router.get("/review/items/{item_id}")
def item_page(request: Request, item_id: ItemId, verdict: str | None = "flagged", status: str | None = None,
              saved: str | None = None, k: int | None = Query(None, ge=0, le=100000, alias="slice"),
              p: Principal = Depends(page_user), ctx: HttpContext = Depends(context),
              review: ReviewService = Depends(review_service)) -> Response:
    f = worklist_filter(verdict, status=status)
    return render(ctx, "item.html", request, p, **item_context(review, item_id, f, k, saved))


@router.post("/review/items/{item_id}/decision")
def item_decide(request: Request, item_id: ItemId, decision: str = Form(...),
                corrected_label: str | None = Form(None), corrected_mask: str | None = Form(None),
                comment: str | None = Form(None), csrf_token: str | None = Form(None),
                verdict: str | None = Form("flagged"), status: str | None = Form(None), go: str = Form("next"),
                p: Principal = Depends(page_user), ctx: HttpContext = Depends(context),
                review: ReviewService = Depends(review_service)) -> Response:
    ctx.auth.check_csrf(request, p, csrf_token)
    it = item_or_404(review, item_id)
    wrong = decision == Decision.LABEL_WRONG
    try:
        review.decide(it["id"], decision, p.name, corrected_label=corrected_label if wrong else None,
                      comment=comment, corrected_mask=corrected_mask if wrong else None)
    except DecisionError as e:
        raise HTTPException(422, str(e)) from None
    f = worklist_filter(verdict, status=status)
    _, nxt = review.store.neighbours(item_id, f)
    q = urlencode({k: v for k, v in dict(verdict=f.verdict or "any", status=f.status or "any").items()})
    target = nxt if (go == "next" and nxt is not None) else item_id
    return RedirectResponse(f"/review/items/{target}?{q}&saved={item_id}", status_code=303)


@router.get("/")
def root() -> Response:
    return RedirectResponse("/review", status_code=307)
