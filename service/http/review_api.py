"""The review workbench's JSON API, under ``/api`` (bearer token, or session cookie + CSRF header).

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
- Pictures for the item view (``service.http.pictures``): ``/api/items/{id}/image.png`` (``wc``/``ww``
  window), ``heatmap.png``, ``mask.png`` (SEG: the given segment as an overlay), ``suggestion.png`` (a
  flagged mask: the suggested one). A volume item (a segment audited in 3-D: ``dims`` 3) takes
  ``slice=k`` on the three (0-based, the k-th of its ``slices``; default the worst key slice); a slice
  out of range, or one asked of a 2-D item, is a 422 that says so.

The pages (``service.http.pages``) share :func:`synced`, :func:`item_or_404` and :func:`worklist_filter`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service.http.auth import Principal
from service.http.context import admin, pictures, review_service, reviewer
from service.http.pictures import Pictures
from service.review import MAX_ID, Decision, DecisionError, ReviewService, WorklistFilter, why_flagged
from service.review.volume import is_volume_item

__all__ = [
    "router", "EXPORT_FIELDS", "ItemId", "ItemIdQuery", "DecisionBody", "synced", "item_or_404", "worklist_filter",
    "safe_cell", "export_csv_text", "json_response",
]

log = logging.getLogger("labelqa.web")

EXPORT_FIELDS = ["annotation_uid", "segment_number", "content_path", "study_uid", "image_uid", "given_label",
                 "consensus_label", "verdict", "priority", "agreement", "p_given", "score", "decision",
                 "corrected_label", "corrected_mask", "final_label", "comment", "reviewer", "decided_at",
                 "writeback_state"]

ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="A worklist item id.")]
ItemIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID, description="A worklist item id.")]
# characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

router = APIRouter(prefix="/api", tags=["review"])


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


def synced(review: ReviewService) -> ReviewService:
    """``review`` with the audits finished since the last look indexed (a failure is logged: a stale
    worklist is better than none)."""
    try:
        review.sync()
    except Exception as e:  # noqa: BLE001 - a stale worklist is better than none
        log.warning("review: sync failed: %s", e)
    return review


def item_or_404(review: ReviewService, item_id: int) -> dict[str, Any]:
    """The worklist item ``item_id``, or 404."""
    it = review.store.item(item_id)
    if it is None:
        raise HTTPException(404, f"no audited annotation with id {item_id}")
    return it


def worklist_filter(verdict: str | None = None, label: str | None = None, modality: str | None = None,
                    date_from: str | None = None, date_to: str | None = None, series_uid: str | None = None,
                    study_uid: str | None = None, status: str | None = None) -> WorklistFilter:
    """The worklist filter of request parameters: "" and "any" mean no filter."""
    def clean(v: str | None) -> str | None:
        v = v.strip() if isinstance(v, str) else None
        return None if not v or v == "any" else v

    return WorklistFilter(verdict=clean(verdict), label=clean(label), modality=clean(modality),
                          date_from=clean(date_from), date_to=clean(date_to), series_uid=clean(series_uid),
                          study_uid=clean(study_uid), status=clean(status))


@router.get("/worklist", summary="Audited annotations, highest re-annotation priority first")
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
    review: ReviewService = Depends(review_service),
) -> dict[str, object]:
    r = synced(review)
    try:
        pg = r.store.worklist(worklist_filter(verdict, label, modality, date_from, date_to, series_uid, study_uid,
                                              status),
                              limit=limit, cursor=cursor, offset=offset)
    except DecisionError as e:
        raise HTTPException(422, str(e)) from None
    return {"items": pg.items, "total": pg.total, "next_cursor": pg.next_cursor, "offset": pg.offset}


@router.get("/items/{item_id}", summary="One audited annotation with its decision and why it was flagged")
def item(item_id: ItemId, _p: Principal = Depends(reviewer),
         review: ReviewService = Depends(review_service)) -> dict[str, object]:
    it = item_or_404(review, item_id)
    prev, nxt = review.store.neighbours(item_id)
    return {**it, "why": why_flagged(it), "previous_id": prev, "next_id": nxt, "labels": review.class_names()}


@router.get("/annotations/{annotation_uid}", summary="The audited rows of an annotation object")
def annotation(annotation_uid: str, _p: Principal = Depends(reviewer),
               review: ReviewService = Depends(review_service)) -> dict[str, object]:
    rows = synced(review).store.find(annotation_uid)
    if not rows:
        raise HTTPException(404, f"annotation {annotation_uid} has not been audited")
    return {"items": rows}


@router.post("/annotations/{annotation_uid}/decision", summary="Record a decision (idempotent)")
def decide(annotation_uid: str, body: DecisionBody, p: Principal = Depends(reviewer),
           review: ReviewService = Depends(review_service)) -> dict[str, object]:
    r = synced(review)
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


@router.delete("/annotations/{annotation_uid}/decision", summary="Retract a decision (admin)")
def retract(annotation_uid: str, item_id: ItemIdQuery = None, p: Principal = Depends(admin),
            review: ReviewService = Depends(review_service)) -> dict[str, object]:
    try:
        row = review.resolve(annotation_uid, item_id=item_id)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    except DecisionError as e:
        raise HTTPException(422, str(e)) from None
    return {"retracted": review.store.retract(row["id"], p.name)}


@router.get("/decisions/trail", summary="Every decision made or changed, newest first (admin)")
def trail(item_id: ItemIdQuery = None, limit: int = Query(1000, ge=1, le=100000),
          _p: Principal = Depends(admin), review: ReviewService = Depends(review_service)) -> dict[str, object]:
    return {"trail": review.store.trail(item_id, limit)}


@router.get("/export.csv", summary="The reviewed label set as CSV", response_class=Response)
def export_csv(_p: Principal = Depends(reviewer), review: ReviewService = Depends(review_service)) -> Response:
    return Response(export_csv_text(synced(review).store.export_rows()), media_type="text/csv",
                    headers={"Content-Disposition": "attachment; filename=labelqa-reviewed-labels.csv"})


@router.get("/export.json", summary="The reviewed label set as JSON")
def export_json(_p: Principal = Depends(reviewer),
                review: ReviewService = Depends(review_service)) -> dict[str, object]:
    return {"rows": synced(review).store.export_rows()}


@router.get("/review/stats", summary="The loop measured: flag precision, errors per review, efficacy")
def stats(_p: Principal = Depends(reviewer), review: ReviewService = Depends(review_service)) -> dict[str, object]:
    return synced(review).stats()


_SLICE = Query(None, ge=0, le=100000, alias="slice",
               description="A volume item: the slice (0-based, in its series' order); default the worst.")


@router.get("/items/{item_id}/image.png", response_class=Response, summary="The source frame (windowed)")
def image(item_id: ItemId, wc: float | None = None, ww: float | None = None, k: int | None = _SLICE,
          _p: Principal = Depends(reviewer), review: ReviewService = Depends(review_service),
          pics: Pictures = Depends(pictures)) -> Response:
    it = item_or_404(review, item_id)
    return pics.image(pics.at_slice(it, k) if k is not None or is_volume_item(it) else it, wc, ww)


@router.get("/items/{item_id}/heatmap.png", response_class=Response, summary="The heatmap overlay (SC)")
def heatmap(item_id: ItemId, _p: Principal = Depends(reviewer), review: ReviewService = Depends(review_service),
            pics: Pictures = Depends(pictures)) -> Response:
    return pics.heatmap(item_or_404(review, item_id))


@router.get("/items/{item_id}/mask.png", response_class=Response, summary="The given SEG mask as an overlay")
def mask(item_id: ItemId, k: int | None = _SLICE, _p: Principal = Depends(reviewer),
         review: ReviewService = Depends(review_service), pics: Pictures = Depends(pictures)) -> Response:
    it = item_or_404(review, item_id)
    if is_volume_item(it):
        return pics.volume_mask(it, k, suggested=False)
    return pics.mask(pics.at_slice(it, k))


@router.get("/items/{item_id}/suggestion.png", response_class=Response,
            summary="The suggested mask of a flagged SEG mask as an overlay")
def suggestion(item_id: ItemId, k: int | None = _SLICE, _p: Principal = Depends(reviewer),
               review: ReviewService = Depends(review_service), pics: Pictures = Depends(pictures)) -> Response:
    it = item_or_404(review, item_id)
    if is_volume_item(it) and it.get("suggestion_uid"):
        return pics.volume_mask(it, k, suggested=True)
    return pics.suggestion(pics.at_slice(it, k))


def safe_cell(v: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with =, +, -, @, tab or CR gets a
    leading apostrophe (OWASP); numbers and everything else are left as they are."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def export_csv_text(rows: Iterable[Mapping[str, object]]) -> str:
    """The export rows as CSV text (header always present); text cells neutralised by :func:`safe_cell`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: safe_cell(v) for k, v in r.items()})
    return buf.getvalue()


def json_response(data: object) -> JSONResponse:
    """``data`` as a JSON response, with whatever JSON cannot hold (dates, paths) as text."""
    return JSONResponse(json.loads(json.dumps(data, default=str)))
