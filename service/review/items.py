"""What the worklist shows of an audited annotation: filters, pages, keyset cursors, item dicts, why it was
flagged."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from models.verdict import Verdict
from service.review.tables import (
    AuditedRow,
    DecisionError,
    DecisionRow,
)
from service.review.volume import volume_item_fields

__all__ = ["MAX_ID", "WorklistFilter", "WorklistPage", "encode_cursor", "decode_cursor", "frame_key", "item_dict",
           "decision_dict", "why_flagged"]


@dataclass
class WorklistFilter:
    """Filters of the worklist; None means 'any'.

    ``verdict`` may also be "flagged" (every suspected error). ``status``: "undecided", "decided" or a
    decision value. ``label`` matches the given label; ``date_from``/``date_to`` are YYYYMMDD study dates.
    """

    verdict: str | None = None
    label: str | None = None
    modality: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    status: str | None = None
    include_stale: bool = False


@dataclass
class WorklistPage:
    items: list[dict[str, Any]]
    total: int
    next_cursor: str | None
    offset: int = 0


MAX_ID = 2**63 - 1
"""The largest item id (a signed 64-bit integer in the database)."""


def encode_cursor(priority: float, item_id: int) -> str:
    """An opaque keyset cursor (the last item of a page)."""
    return base64.urlsafe_b64encode(json.dumps([priority, item_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """The (priority, id) of a cursor; DecisionError for a malformed one."""
    try:
        pad = "=" * (-len(cursor) % 4)
        p, i = json.loads(base64.urlsafe_b64decode(cursor + pad))
        p, i = float(p), int(i)
        if not math.isfinite(p) or not 0 <= i <= MAX_ID:  # what the database can compare
            raise ValueError("out of range")
        return p, i
    except (ValueError, TypeError) as e:
        raise DecisionError(f"malformed cursor {cursor!r}") from e


def frame_key(row: dict[str, Any]) -> str:
    """What tells the rows of one SEG segment apart: its source image and frame (a 2-D audit: a segment spans
    many frames, each one item) or its series (a 3-D audit: one item per segment), and the class when the
    SEG has no segment of it; '' for SR rows."""
    if str(row.get("source") or "sr") != "seg" or not row.get("image_uid"):
        return ""
    if int(row.get("dims") or 2) == 3:  # a segment of a SEG over a series: one item for the whole segment
        key = f"series/{row.get('series_uid')}"
    else:
        key = f"{row['image_uid']}/{int(row.get('frame') or 0)}"
    if not row.get("segment_number"):
        key += f"#{row.get('class') or row.get('given_label') or ''}"
    return key[:160]


def item_dict(r: AuditedRow, d: DecisionRow | None, *, slices: bool = True) -> dict[str, Any]:
    """An item as the API gives it; ``slices`` False leaves a volume item's per-slice list out (worklist pages)."""
    extra = json.loads(r.extra_json) if r.extra_json else {}
    return {
        "id": r.id,
        "annotation_uid": r.annotation_uid,
        "segment_number": r.segment_number or None,
        "content_path": r.content_path or None,
        "study_uid": r.study_uid,
        "image_uid": r.image_uid,
        "frame": r.frame,
        "source": r.source,
        "job_id": r.job_id,
        "verdict": r.verdict,
        "flagged": r.flagged,
        "priority": r.priority,
        "given_label": r.given_label,
        "consensus_label": r.consensus_label,
        "agreement": r.agreement,
        "p_given": r.p_given,
        "consensus_prob": r.consensus_prob,
        "n_disagree": r.n_disagree,
        "n_members": r.n_members,
        "score": r.score,
        "modality": r.modality,
        "study_date": r.study_date,
        "series_uid": r.series_uid,
        "series_description": r.series_description,
        "report_uid": r.report_uid,
        "heatmap_uid": r.heatmap_uid,
        "current": r.current,
        "audited_at": r.audited_at,
        "member_probs": extra.get("member_probs"),
        "mask_kind": extra.get("kind"),
        "dice": extra.get("dice"),
        "shape_atypical": extra.get("shape_typical") is False,
        "suggestion_uid": extra.get("suggestion_uid"),
        **volume_item_fields(extra, slices=slices),
        "decision": decision_dict(d) if d is not None else None,
    }


def decision_dict(d: DecisionRow) -> dict[str, Any]:
    return {
        "decision": d.decision,
        "corrected_label": d.corrected_label,
        "corrected_mask": d.corrected_mask,
        "comment": d.comment,
        "reviewer": d.reviewer,
        "decided_at": d.decided_at,
        "version": d.version,
        "writeback_state": d.writeback_state,
        "writeback": json.loads(d.writeback_json) if d.writeback_json else None,
    }


def why_flagged(item: dict[str, Any]) -> str:
    """One sentence on why the ensemble flagged (or did not flag) an item, from its scores."""
    v = item.get("verdict")
    n, k = item.get("n_members"), item.get("n_disagree")
    given, cons = item.get("given_label"), item.get("consensus_label")
    members = f"{k} of {n} models" if n is not None and k is not None else "the models"
    if v == Verdict.SUSPECTED_LABEL_ERROR:
        p = item.get("p_given")
        ptxt = f" (mean probability of the given label {p:.2f})" if isinstance(p, float) else ""
        return f"{members} disagree with the label {given!r} and agree on {cons!r}{ptxt}."
    if v == Verdict.SUSPECTED_MASK_ERROR:
        return f"{members} overlap poorly with the given mask and agree with each other."
    if v == Verdict.HARD_CASE:
        return f"{members} disagree with the label, but not enough or not consistently enough to flag."
    return "The models agree with the annotation."


# -- the store ---------------------------------------------------------------------------------------
