"""Reviewers' decisions: recorded once (idempotent), changed or retracted with a trail, their write-back state,
and the export of the reviewed label set (a part of :class:`service.review.ReviewStore`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from service.review.items import decision_dict, item_dict
from service.review.tables import (
    MASK_CORRECTIONS,
    AuditedRow,
    Decision,
    DecisionAuditRow,
    DecisionError,
    DecisionRow,
    iso_utc,
)

__all__ = ["DecisionOutcome", "DecisionLog"]

log = logging.getLogger("labelqa.review")


@dataclass
class DecisionOutcome:
    """What :meth:`ReviewStore.decide` did: ``changed`` is False for a repeat of the current decision."""

    item: dict[str, Any]
    decision: dict[str, Any]
    changed: bool
    action: str  # created | changed | unchanged


class DecisionLog:
    """Deciding, retracting and the trail (a part of :class:`service.review.ReviewStore`)."""

    engine: Engine
    _decide_lock: threading.Lock
    _gen: int

    def decide(self, item_id: int, decision: str, reviewer: str, *, corrected_label: str | None = None,
               comment: str | None = None, allowed_labels: Iterable[str] | None = None,
               corrected_mask: str | None = None) -> DecisionOutcome:
        """Record ``reviewer``'s decision on an item; a repeat of the current decision changes nothing.

        Raises DecisionError for an unknown item or decision, a "label_wrong" without a corrected label
        or mask (or with the given label, or one outside ``allowed_labels``), a corrected label or mask
        on another decision, and a ``corrected_mask`` on an item that is not a SEG mask with a
        suggested mask (only "suggestion" is known: :data:`MASK_CORRECTIONS`).
        """
        try:
            dec = Decision(decision)
        except ValueError:
            raise DecisionError(f"unknown decision {decision!r}; use one of {', '.join(Decision)}") from None
        corrected_label = (corrected_label or "").strip() or None
        corrected_mask = (corrected_mask or "").strip() or None
        if corrected_mask is not None and corrected_mask not in MASK_CORRECTIONS:
            raise DecisionError(f"unknown corrected_mask {corrected_mask!r}; use {', '.join(MASK_CORRECTIONS)}")
        comment = (comment or "").strip() or None
        if comment is not None and len(comment) > 4000:
            raise DecisionError("comment is longer than 4000 characters")
        if not reviewer:
            raise DecisionError("a decision needs a reviewer")
        with self._decide_lock, Session(self.engine) as s, s.begin():
            item = s.get(AuditedRow, item_id)
            if item is None:
                raise DecisionError(f"no audited annotation with id {item_id}")
            if corrected_mask is not None:
                if dec is not Decision.LABEL_WRONG:
                    raise DecisionError(f"corrected_mask is only for label_wrong, not {dec.value}")
                if item.source != "seg":
                    raise DecisionError(f"corrected_mask is only for SEG masks; item {item_id} is an SR label")
                if not json.loads(item.extra_json or "{}").get("suggestion_uid"):
                    raise DecisionError(f"item {item_id} has no suggested mask (labelqa writes one for each "
                                        "suspected mask error over an image with plane geometry)")
                if not item.segment_number:
                    raise DecisionError(f"the SEG of item {item_id} has no segment of {item.given_label!r}: "
                                        "accepting the suggestion would add a segment, which is not supported")
            if dec is Decision.LABEL_WRONG:
                if corrected_label is None and corrected_mask is None:
                    raise DecisionError("label_wrong needs corrected_label (the label the annotation should have) "
                                        "or, for a mask, corrected_mask")
                if corrected_label is not None and corrected_label == item.given_label:
                    raise DecisionError(f"corrected_label {corrected_label!r} is the given label; use label_right")
                allowed = set(allowed_labels) if allowed_labels is not None else None
                if corrected_label is not None and allowed is not None and corrected_label not in allowed:
                    raise DecisionError(f"corrected_label {corrected_label!r} is not a class; use one of "
                                        f"{', '.join(sorted(allowed))}")
            elif corrected_label is not None:
                raise DecisionError(f"corrected_label is only for label_wrong, not {dec.value}")
            now = time.time()
            cur = s.scalar(select(DecisionRow).where(DecisionRow.item_id == item_id))
            if cur is not None and (cur.decision, cur.corrected_label, cur.corrected_mask, cur.comment) == (
                    dec.value, corrected_label, corrected_mask, comment):
                return DecisionOutcome(item_dict(item, cur), decision_dict(cur), False, "unchanged")
            # what a decision writes back: a correction and/or a reissued, verified QA report; "unsure"
            # writes nothing unless it replaces a decisive answer (the report is then reissued)
            decisive_before = cur is not None and cur.decision != Decision.UNSURE
            wb = "pending" if dec is not Decision.UNSURE or decisive_before else "none"
            if cur is None:
                cur = DecisionRow(item_id=item_id, annotation_uid=item.annotation_uid, study_uid=item.study_uid,
                                  decision=dec.value, corrected_label=corrected_label, corrected_mask=corrected_mask,
                                  comment=comment, reviewer=reviewer, decided_at=now, version=1, writeback_state=wb)
                s.add(cur)
                action, prev, prev_label, prev_mask = "created", None, None, None
            else:
                action, prev, prev_label, prev_mask = "changed", cur.decision, cur.corrected_label, cur.corrected_mask
                cur.decision, cur.corrected_label, cur.corrected_mask = dec.value, corrected_label, corrected_mask
                cur.comment, cur.reviewer, cur.decided_at, cur.version = comment, reviewer, now, cur.version + 1
                cur.writeback_state = wb
            s.add(DecisionAuditRow(item_id=item_id, annotation_uid=item.annotation_uid, action=action,
                                   decision=dec.value, corrected_label=corrected_label, corrected_mask=corrected_mask,
                                   comment=comment, previous_decision=prev, previous_corrected_label=prev_label,
                                   previous_corrected_mask=prev_mask, reviewer=reviewer, at=now))
            s.flush()
            out = DecisionOutcome(item_dict(item, cur), decision_dict(cur), True, action)
            self._gen += 1
        log.info("review: %s %s item=%d annotation=%s by %s", action, dec.value, item_id, out.item["annotation_uid"],
                 reviewer)
        return out

    def retract(self, item_id: int, reviewer: str) -> bool:
        """Remove the decision on an item (admin); the trail keeps it. False when there was none."""
        with self._decide_lock, Session(self.engine) as s, s.begin():
            cur = s.scalar(select(DecisionRow).where(DecisionRow.item_id == item_id))
            if cur is None:
                return False
            s.add(DecisionAuditRow(item_id=item_id, annotation_uid=cur.annotation_uid, action="retracted",
                                   decision=None, corrected_label=None, comment=None,
                                   previous_decision=cur.decision, previous_corrected_label=cur.corrected_label,
                                   previous_corrected_mask=cur.corrected_mask, reviewer=reviewer, at=time.time()))
            s.delete(cur)
        self._gen += 1
        return True

    def set_writeback(self, item_id: int, state: str, detail: dict[str, object] | None = None) -> None:
        """Record the outcome of a decision's write-back."""
        with Session(self.engine) as s, s.begin():
            s.execute(update(DecisionRow).where(DecisionRow.item_id == item_id).values(
                writeback_state=state, writeback_json=json.dumps(detail) if detail is not None else None))

    def pending_writebacks(self) -> list[int]:
        """Items whose decision still waits for its write-back (e.g. after a crash)."""
        with Session(self.engine) as s:
            return list(s.scalars(select(DecisionRow.item_id).where(DecisionRow.writeback_state == "pending")))

    def study_decisions(self, study_uid: str) -> list[dict[str, Any]]:
        """Every decided item of a study (item + decision), in worklist order."""
        with Session(self.engine) as s:
            rows = s.execute(select(AuditedRow, DecisionRow).join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                             .where(AuditedRow.study_uid == study_uid)
                             .order_by(AuditedRow.priority.desc(), AuditedRow.id.desc())).all()
        return [item_dict(r, d) for r, d in rows]

    def trail(self, item_id: int | None = None, limit: int = 1000) -> list[dict[str, object]]:
        """The decision trail, newest first."""
        q = select(DecisionAuditRow).order_by(DecisionAuditRow.id.desc()).limit(limit)
        if item_id is not None:
            q = q.where(DecisionAuditRow.item_id == item_id)
        with Session(self.engine) as s:
            return [{c.name: getattr(r, c.name) for c in DecisionAuditRow.__table__.columns} for r in s.scalars(q)]

    def export_rows(self) -> list[dict[str, Any]]:
        """One row per decided annotation: original, decision, corrected label, reviewer, time, scores."""
        with Session(self.engine) as s:
            rows = s.execute(select(AuditedRow, DecisionRow).join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                             .order_by(AuditedRow.priority.desc(), AuditedRow.id.desc())).all()
        out = []
        for r, d in rows:
            final = (d.corrected_label if d.decision == Decision.LABEL_WRONG else None) or r.given_label
            out.append({
                "item_id": r.id, "annotation_uid": r.annotation_uid, "segment_number": r.segment_number or "",
                "content_path": r.content_path, "study_uid": r.study_uid, "image_uid": r.image_uid,
                "given_label": r.given_label, "consensus_label": r.consensus_label, "verdict": r.verdict,
                "priority": r.priority, "agreement": r.agreement, "p_given": r.p_given, "score": r.score,
                "decision": d.decision, "corrected_label": d.corrected_label or "",
                "corrected_mask": d.corrected_mask or "", "final_label": final,
                "comment": d.comment or "", "reviewer": d.reviewer,
                "decided_at": iso_utc(d.decided_at), "writeback_state": d.writeback_state,
            })
        return out

    # ---------------------------------------------------------------- the loop, measured
