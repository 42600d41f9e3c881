"""The review workbench: JSON API and server-rendered pages on the service's FastAPI app.

JSON (bearer token or session cookie + CSRF header):

- ``GET /api/worklist`` -> ``{"items": [...], "total": N, "next_cursor": ...}``, highest priority first;
  filters ``verdict`` (or "flagged"), ``label``, ``modality``, ``date_from``/``date_to`` (YYYYMMDD),
  ``series_uid``, ``study_uid``, ``status`` (undecided, decided, or a decision); paging ``limit`` with
  ``cursor`` (keyset) or ``offset``.
- ``GET /api/items/{id}``, ``GET /api/annotations/{annotation_uid}``;
  ``POST /api/annotations/{annotation_uid}/decision`` ``{"decision", "corrected_label", "corrected_mask",
  "comment"}`` (``"corrected_mask": "suggestion"`` with label_wrong: a flagged SEG mask is replaced by
  labelqa's suggested mask); ``DELETE`` of it (admin); ``GET /api/decisions/trail`` (admin).
- ``GET /api/export.csv`` / ``/api/export.json``: one row per decided annotation.
- ``GET /api/review/stats``: flag precision, errors per review, efficacy curve.
- Pictures for the item view: ``/api/items/{id}/image.png`` (``wc``/``ww`` window), ``heatmap.png``,
  ``mask.png`` (SEG: the given segment as an overlay), ``suggestion.png`` (a flagged mask: the suggested one).
  A volume item (a segment audited in 3-D: ``dims`` 3) takes ``slice=k`` on the three (0-based, the
  k-th of its ``slices``; default the worst key slice); a slice out of range, or one asked of a 2-D
  item, is a 422 that says so.

Pages (session cookie, CSRF token in every form): ``/login``, ``/review`` (worklist), ``/review/items/{id}``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import OrderedDict
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from service.http.auth import CSRF_FIELD, SESSION_COOKIE, Auth, LoginRequired, Principal, client_key, safe_next
from service.review import MAX_ID, Decision, DecisionError, ReviewService, WorklistFilter, why_flagged
from service.review.volume import VolumeItemError, is_volume_item, opening_slice, slice_source

__all__ = [
    "HERE", "TEMPLATES", "STATIC", "EXPORT_FIELDS", "ItemId", "ItemIdQuery", "DecisionBody", "install", "safe_cell",
    "export_csv_text", "json_response",
]

log = logging.getLogger("labelqa.web")

HERE = FilePath(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
EXPORT_FIELDS = ["annotation_uid", "segment_number", "content_path", "study_uid", "image_uid", "given_label",
                 "consensus_label", "verdict", "priority", "agreement", "p_given", "score", "decision",
                 "corrected_label", "corrected_mask", "final_label", "comment", "reviewer", "decided_at",
                 "writeback_state"]


ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="A worklist item id.")]
ItemIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID, description="A worklist item id.")]
# characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class DecisionBody(BaseModel):
    decision: Decision = Field(description="label_wrong, label_right or unsure.")
    corrected_label: str | None = Field(None, max_length=64, description="The right label (label_wrong only).")
    corrected_mask: Literal["suggestion"] | None = Field(
        None, description="label_wrong on a flagged SEG mask: 'suggestion' replaces the mask on its source frame "
                          "by labelqa's suggested (consensus) mask; with or without corrected_label.")
    comment: str | None = Field(None, max_length=4000)
    segment_number: int | None = Field(None, ge=1, description="Which segment of a SEG (when it has several).")
    content_path: str | None = Field(None, max_length=128, description="Which content item of an SR.")
    item_id: int | None = Field(None, ge=1, le=MAX_ID, description="The worklist item id (alternative to the two "
                                "above).")


def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters["fmt"] = lambda v, n=2: "" if v is None else (f"{v:.{n}f}" if isinstance(v, float) else str(v))
    env.filters["short"] = lambda v: "" if not v else ("…" + str(v)[-10:] if len(str(v)) > 12 else str(v))
    return env


def _filter(verdict: str | None, label: str | None, modality: str | None, date_from: str | None,
            date_to: str | None, series_uid: str | None, study_uid: str | None, status: str | None) -> WorklistFilter:
    def clean(v: str | None) -> str | None:  # "" and "any" mean no filter
        v = v.strip() if isinstance(v, str) else None
        return None if not v or v == "any" else v

    return WorklistFilter(verdict=clean(verdict), label=clean(label), modality=clean(modality),
                          date_from=clean(date_from), date_to=clean(date_to), series_uid=clean(series_uid),
                          study_uid=clean(study_uid), status=clean(status))


class _Pictures:
    """PNG renderings for the item view, with a small cache of decoded datasets."""

    def __init__(self, review: ReviewService, size: int = 32) -> None:
        self.review = review
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._size = size

    def dataset(self, uid: str | None) -> Any:
        import pydicom

        if not uid:
            raise HTTPException(404, "no such object")
        if uid in self._cache:
            self._cache.move_to_end(uid)
            return self._cache[uid]
        p = self.review.instance_path(uid)
        if p is None:
            raise HTTPException(404, f"object {uid} is not in the store")
        ds = pydicom.dcmread(p)
        self._cache[uid] = ds
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return ds

    @staticmethod
    def png(arr: Any) -> Response:
        import numpy as np
        from PIL import Image

        a = np.asarray(arr)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    def image(self, item: dict[str, Any], wc: float | None, ww: float | None) -> Response:
        from dicom_io.pixels import PixelError, _modality_lut, _window, frame_to_float

        ds = self.dataset(item["image_uid"])
        try:
            if wc is not None and ww is not None and ww > 0:
                import numpy as np

                index = int(item["frame"] or 1) - 1
                arr = ds.pixel_array
                if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
                    arr = arr[index]
                out = _window(_modality_lut(np.asarray(arr), ds, index), wc, ww, "LINEAR")
            else:
                out = frame_to_float(ds, item["frame"])
        except PixelError as e:
            raise HTTPException(422, f"cannot show the image: {e}") from None
        return self.png(out)

    def heatmap(self, item: dict[str, Any]) -> Response:
        ds = self.dataset(item["heatmap_uid"])
        return self.png(ds.pixel_array)

    def mask(self, item: dict[str, Any]) -> Response:
        """The given SEG segment on the item's source frame: red, with a yellow outline."""
        if item["source"] != "seg" or not item["segment_number"]:
            raise HTTPException(404, "this annotation has no mask")
        import highdicom as hd

        from dicom_io.annotations.seg import seg_limit_issue
        from dicom_io.results.seg_out import pixels_on_source_frames

        ds = self.dataset(item["annotation_uid"])
        over = seg_limit_issue(ds, self.review.seg_limits)  # from the header: bounded time whatever the SEG
        if over:
            raise HTTPException(422, f"cannot draw the mask: the SEG is too large ({over})")
        try:
            seg = hd.seg.Segmentation.from_dataset(ds, copy=True)
            px = pixels_on_source_frames(seg, [(item["image_uid"], item["frame"])], [int(item["segment_number"])])
        except Exception as e:  # noqa: BLE001 - highdicom raises many kinds for SEGs it cannot draw
            raise HTTPException(422, f"cannot draw the mask: {type(e).__name__}: {e}"[:500]) from None
        return self.png(self.outline(px[0, ..., 0] > 0, (255, 40, 40, 110), (255, 220, 0, 255)))

    def suggestion(self, item: dict[str, Any]) -> Response:
        """The suggested (consensus) mask of a flagged mask: a cyan outline over a faint fill."""
        from dicom_io.results.revision import RevisionError

        if not item.get("suggestion_uid"):
            raise HTTPException(404, "this annotation has no suggested mask")
        try:
            m = self.review.suggested_mask(item)
        except RevisionError as e:
            raise HTTPException(422, f"cannot read the suggested mask: {e}") from None
        return self.png(self.outline(m, (0, 200, 255, 50), (0, 230, 255, 255)))

    def at_slice(self, item: dict[str, Any], k: int | None) -> dict[str, Any]:
        """The item on slice ``k`` of its series (a volume item; None: where its page opens); 422 for a
        slice out of range or asked of a one-frame item."""
        if k is None and not is_volume_item(item):
            return item
        try:
            uid, frame = slice_source(item, opening_slice(item) if k is None else k)
        except VolumeItemError as e:
            raise HTTPException(e.status, str(e)) from None
        return {**item, "image_uid": uid, "frame": frame}

    def volume_mask(self, item: dict[str, Any], k: int | None, suggested: bool) -> Response:
        """The given (or suggested) segment of a volume item on slice ``k``, drawn as the 2-D ones are."""
        k = opening_slice(item) if k is None else k
        try:
            m = (self.review.volume_masks.suggested if suggested else self.review.volume_masks.given)(item, k)
        except VolumeItemError as e:
            raise HTTPException(e.status, f"cannot read the {'suggested' if suggested else 'given'} mask: {e}") \
                from None
        if suggested:
            return self.png(self.outline(m, (0, 200, 255, 50), (0, 230, 255, 255)))
        return self.png(self.outline(m, (255, 40, 40, 110), (255, 220, 0, 255)))

    @staticmethod
    def outline(m: Any, fill: tuple[int, ...], edge: tuple[int, ...]) -> Any:
        """An RGBA overlay of a bool mask: ``fill`` inside, ``edge`` on its boundary."""
        import numpy as np

        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[m] = fill
        rim = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgba[rim] = edge
        return rgba


def install(app: FastAPI, review: ReviewService, auth: Auth, *, stats_extra: Any = None) -> None:
    """Add the review API, the pages and the static files to ``app``."""
    env = _templates()
    pics = _Pictures(review)
    reviewer = auth.require("reviewer")
    admin = auth.require("admin")
    page = auth.page_user("reviewer")
    api = APIRouter(prefix="/api", tags=["review"])

    def synced() -> ReviewService:
        try:
            review.sync()
        except Exception as e:  # noqa: BLE001 - a stale worklist is better than none
            log.warning("review: sync failed: %s", e)
        return review

    def item_or_404(item_id: int) -> dict[str, Any]:
        it = review.store.item(item_id)
        if it is None:
            raise HTTPException(404, f"no audited annotation with id {item_id}")
        return it

    @api.get("/worklist", summary="Audited annotations, highest re-annotation priority first")
    def worklist(
        verdict: str | None = Query(None, description="flagged, or a verdict."),
        label: str | None = Query(None, max_length=64, description="Given label."),
        modality: str | None = Query(None, max_length=16),
        date_from: str | None = Query(None, pattern=r"^[0-9]{8}$"),
        date_to: str | None = Query(None, pattern=r"^[0-9]{8}$"),
        series_uid: str | None = Query(None, max_length=64),
        study_uid: str | None = Query(None, max_length=64),
        status: str | None = Query(None, description="undecided, decided, or a decision."),
        limit: int = Query(50, ge=1, le=500),
        cursor: str | None = Query(None, max_length=200, description="next_cursor of the previous page."),
        offset: int = Query(0, ge=0, le=10**7),
        _p: Principal = Depends(reviewer),
    ) -> dict[str, Any]:
        r = synced()
        try:
            pg = r.store.worklist(_filter(verdict, label, modality, date_from, date_to, series_uid, study_uid, status),
                                  limit=limit, cursor=cursor, offset=offset)
        except DecisionError as e:
            raise HTTPException(422, str(e)) from None
        return {"items": pg.items, "total": pg.total, "next_cursor": pg.next_cursor, "offset": pg.offset}

    @api.get("/items/{item_id}", summary="One audited annotation with its decision and why it was flagged")
    def item(item_id: ItemId, _p: Principal = Depends(reviewer)) -> dict[str, Any]:
        it = item_or_404(item_id)
        prev, nxt = review.store.neighbours(item_id)
        return {**it, "why": why_flagged(it), "previous_id": prev, "next_id": nxt, "labels": review.class_names()}

    @api.get("/annotations/{annotation_uid}", summary="The audited rows of an annotation object")
    def annotation(annotation_uid: str, _p: Principal = Depends(reviewer)) -> dict[str, Any]:
        rows = synced().store.find(annotation_uid)
        if not rows:
            raise HTTPException(404, f"annotation {annotation_uid} has not been audited")
        return {"items": rows}

    @api.post("/annotations/{annotation_uid}/decision", summary="Record a decision (idempotent)")
    def decide(annotation_uid: str, body: DecisionBody, p: Principal = Depends(reviewer)) -> dict[str, Any]:
        r = synced()
        try:
            row = r.resolve(annotation_uid, item_id=body.item_id, segment_number=body.segment_number,
                            content_path=body.content_path)
            out = r.decide(row["id"], body.decision.value, p.name, corrected_label=body.corrected_label,
                           comment=body.comment, corrected_mask=body.corrected_mask)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        except DecisionError as e:
            raise HTTPException(422, str(e)) from None
        return {"item_id": out.item["id"], "annotation_uid": annotation_uid, "changed": out.changed,
                "action": out.action, **out.decision}

    @api.delete("/annotations/{annotation_uid}/decision", summary="Retract a decision (admin)")
    def retract(annotation_uid: str, item_id: ItemIdQuery = None, p: Principal = Depends(admin)) -> dict[str, Any]:
        try:
            row = review.resolve(annotation_uid, item_id=item_id)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        except DecisionError as e:
            raise HTTPException(422, str(e)) from None
        return {"retracted": review.store.retract(row["id"], p.name)}

    @api.get("/decisions/trail", summary="Every decision made or changed, newest first (admin)")
    def trail(item_id: ItemIdQuery = None, limit: int = Query(1000, ge=1, le=100000),
              _p: Principal = Depends(admin)) -> dict[str, Any]:
        return {"trail": review.store.trail(item_id, limit)}

    @api.get("/export.csv", summary="The reviewed label set as CSV", response_class=Response)
    def export_csv(_p: Principal = Depends(reviewer)) -> Response:
        return Response(export_csv_text(synced().store.export_rows()), media_type="text/csv",
                        headers={"Content-Disposition": "attachment; filename=labelqa-reviewed-labels.csv"})

    @api.get("/export.json", summary="The reviewed label set as JSON")
    def export_json(_p: Principal = Depends(reviewer)) -> dict[str, Any]:
        return {"rows": synced().store.export_rows()}

    @api.get("/review/stats", summary="The loop measured: flag precision, errors per review, efficacy")
    def stats(_p: Principal = Depends(reviewer)) -> dict[str, Any]:
        return synced().stats()

    slice_q = Query(None, ge=0, le=100000, alias="slice",
                    description="A volume item: the slice (0-based, in its series' order); default the worst.")

    @api.get("/items/{item_id}/image.png", response_class=Response, summary="The source frame (windowed)")
    def image(item_id: ItemId, wc: float | None = None, ww: float | None = None, k: int | None = slice_q,
              _p: Principal = Depends(reviewer)) -> Response:
        it = item_or_404(item_id)
        return pics.image(pics.at_slice(it, k) if k is not None or is_volume_item(it) else it, wc, ww)

    @api.get("/items/{item_id}/heatmap.png", response_class=Response, summary="The heatmap overlay (SC)")
    def heatmap(item_id: ItemId, _p: Principal = Depends(reviewer)) -> Response:
        return pics.heatmap(item_or_404(item_id))

    @api.get("/items/{item_id}/mask.png", response_class=Response, summary="The given SEG mask as an overlay")
    def mask(item_id: ItemId, k: int | None = slice_q, _p: Principal = Depends(reviewer)) -> Response:
        it = item_or_404(item_id)
        if is_volume_item(it):
            return pics.volume_mask(it, k, suggested=False)
        return pics.mask(pics.at_slice(it, k))

    @api.get("/items/{item_id}/suggestion.png", response_class=Response,
             summary="The suggested mask of a flagged SEG mask as an overlay")
    def suggestion(item_id: ItemId, k: int | None = slice_q, _p: Principal = Depends(reviewer)) -> Response:
        it = item_or_404(item_id)
        if is_volume_item(it) and it.get("suggestion_uid"):
            return pics.volume_mask(it, k, suggested=True)
        return pics.suggestion(pics.at_slice(it, k))

    app.include_router(api)

    # ------------------------------------------------------------------------------ pages
    web = APIRouter(include_in_schema=False)

    def render(name: str, request: Request, p: Principal | None, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, user=p, csrf=p.csrf if p else None,
                                             csrf_field=CSRF_FIELD, auth_on=auth.enabled, **ctx)
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                           "frame-ancestors 'none'; form-action 'self'"})

    @web.get("/login")
    def login_page(request: Request, next: str = "/review", error: str | None = None) -> Response:  # noqa: A002
        if not auth.enabled:  # login off: an anonymous session (it carries the CSRF token of the forms)
            resp = RedirectResponse(safe_next(next), status_code=303)
            auth.set_cookie(resp, auth.make_session("anonymous"))
            return resp
        return render("login.html", request, None, next=safe_next(next), error=error)

    @web.post("/login")
    def login(request: Request, name: str = Form(..., max_length=64), token: str = Form(..., max_length=512),
              next: str = Form("/review")) -> Response:  # noqa: A002
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise HTTPException(403, "cross-site login refused")
        known = name.strip() in auth.users  # only a user's own name is ever logged (never a token typed there)
        keys = [client_key(request), *([f"user {name.strip()}"] if known else [])]
        try:
            auth.locked_out(keys)
        except HTTPException as e:
            page = render("login.html", request, None, next=safe_next(next), error=str(e.detail))
            page.status_code, page.headers["Retry-After"] = 429, (e.headers or {}).get("Retry-After", "60")
            return page
        u = auth.login(name, token)
        if u is None:
            auth.limiter.fail(keys, "login")
            log.info("review: failed login for %s from %s", f"user {name.strip()}" if known else "an unknown name",
                     keys[0].removeprefix("client "))
            return render("login.html", request, None, next=safe_next(next), error="wrong name or token")
        auth.limiter.succeed(keys)
        resp = RedirectResponse(safe_next(next), status_code=303)
        auth.set_cookie(resp, auth.make_session(u.name))
        return resp

    @web.post("/logout")
    def logout(request: Request, csrf_token: str | None = Form(None), p: Principal = Depends(page)) -> Response:
        auth.check_csrf(request, p, csrf_token)
        auth.revoke(request.cookies.get(SESSION_COOKIE))  # refused from now on, even if a copy was kept
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @web.get("/review")
    def worklist_page(
        request: Request,
        verdict: str | None = "flagged", label: str | None = None, modality: str | None = None,
        date_from: str | None = None, date_to: str | None = None, series_uid: str | None = None,
        status: str | None = None, page_no: int = Query(1, alias="page", ge=1, le=10**6),
        per_page: int = Query(50, ge=5, le=500), p: Principal = Depends(page),
    ) -> Response:
        r = synced()
        f = _filter(verdict, label, modality, date_from, date_to, series_uid, None, status)
        try:
            pg = r.store.worklist(f, limit=per_page, offset=(page_no - 1) * per_page)
        except DecisionError as e:
            raise HTTPException(422, str(e)) from None
        query = {k: v for k, v in dict(verdict=f.verdict or "any", label=f.label, modality=f.modality,
                                          date_from=f.date_from, date_to=f.date_to, series_uid=f.series_uid,
                                          status=f.status).items() if v is not None}
        pages = max(1, -(-pg.total // per_page))
        return render("worklist.html", request, p, page=pg, f=f, facets=r.store.facets(), stats=r.stats(),
                      query=query, page_no=page_no, pages=pages, per_page=per_page,
                      decisions=[d.value for d in Decision])

    @web.get("/review/items/{item_id}")
    def item_page(request: Request, item_id: ItemId, verdict: str | None = "flagged", status: str | None = None,
                  saved: str | None = None, k: int | None = Query(None, ge=0, le=100000, alias="slice"),
                  p: Principal = Depends(page)) -> Response:
        it = item_or_404(item_id)
        volume = None
        if is_volume_item(it):  # a segment over a series: the page scrolls through its slices
            n = len(it.get("slices") or [])
            start = k if k is not None and k < n else opening_slice(it)
            volume = {"n": n, "start": start, "key": [int(x) for x in it.get("key_slices") or [] if 0 <= int(x) < n],
                      "range": it.get("slice_range"), "regions": it.get("regions_3d") or []}
        f = _filter(verdict, None, None, None, None, None, None, status)
        prev, nxt = review.store.neighbours(item_id, f)
        query = {k: v for k, v in dict(verdict=f.verdict or "any", status=f.status).items() if v is not None}
        return render("item.html", request, p, item=it, why=why_flagged(it), prev_id=prev, next_id=nxt,
                      labels=review.class_names(), query=query, saved=saved,
                      members=sorted((it.get("member_probs") or {}).items()),
                      trail=review.store.trail(item_id, 20), volume=volume)

    @web.post("/review/items/{item_id}/decision")
    def item_decide(request: Request, item_id: ItemId, decision: str = Form(...),
                    corrected_label: str | None = Form(None), corrected_mask: str | None = Form(None),
                    comment: str | None = Form(None), csrf_token: str | None = Form(None),
                    verdict: str | None = Form("flagged"), status: str | None = Form(None), go: str = Form("next"),
                    p: Principal = Depends(page)) -> Response:
        auth.check_csrf(request, p, csrf_token)
        it = item_or_404(item_id)
        wrong = decision == Decision.LABEL_WRONG
        try:
            review.decide(it["id"], decision, p.name, corrected_label=corrected_label if wrong else None,
                          comment=comment, corrected_mask=corrected_mask if wrong else None)
        except DecisionError as e:
            raise HTTPException(422, str(e)) from None
        f = _filter(verdict, None, None, None, None, None, None, status)
        _, nxt = review.store.neighbours(item_id, f)
        from urllib.parse import urlencode

        q = urlencode({k: v for k, v in dict(verdict=f.verdict or "any", status=f.status or "any").items()})
        target = nxt if (go == "next" and nxt is not None) else item_id
        return RedirectResponse(f"/review/items/{target}?{q}&saved={item_id}", status_code=303)

    @web.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/review", status_code=307)

    app.include_router(web)
    app.mount("/static/review", StaticFiles(directory=str(STATIC)), name="review-static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)


def safe_cell(v: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with =, +, -, @, tab or CR gets a
    leading apostrophe (OWASP); numbers and everything else are left as they are."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def export_csv_text(rows: list[dict[str, Any]]) -> str:
    """The export rows as CSV text (header always present); text cells neutralised by :func:`safe_cell`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: safe_cell(v) for k, v in r.items()})
    return buf.getvalue()


def json_response(data: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(data, default=str)))
