"""The review workbench's store: audited annotations ranked for review, reviewers' decisions, their trail.

Three tables on the service database (on ``dicom_io.db.Base``; migration 0002):

- ``annotations_audited``: one row per audited annotation (SR content item, or SEG segment on one
  source frame: ``frame_key``, migration 0003), kept in step with the newest finished audit of each
  study by :meth:`ReviewStore.sync` (it reads the job table incrementally, so it needs no hook in the
  pipeline and catches up after a restart). Indexed on ``priority`` (with the id as tie-break) so the
  worklist pages by keyset at 100,000 rows.
- ``review_decisions``: the current decision per annotation ("label_wrong" with a corrected label
  and/or, for a flagged mask, ``corrected_mask`` "suggestion" (migration 0004), "label_right",
  "unsure"), who made it and when, and the state of its write-back to the PACS.
- ``review_decision_audit``: every change of a decision (append-only), so nothing a reviewer did is lost.

:meth:`ReviewStore.decide` is idempotent: the same decision again changes nothing (no trail row, no
new write-back). Logs carry UIDs and reviewer names only.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from dicom_io.db import Base, ensure_schema
from dicom_io.results.revision import MASK_CORRECTIONS as REVISION_MASK_CORRECTIONS
from models.verdict import FLAGGED, Verdict

log = logging.getLogger("labelqa.review")

__all__ = [
    "Decision",
    "DecisionError",
    "DecisionOutcome",
    "ReviewStore",
    "ReviewService",
    "ReviewCollector",
    "WorklistFilter",
    "WorklistPage",
    "AuditedRow",
    "DecisionRow",
    "DecisionAuditRow",
]


class Decision(StrEnum):
    """What a reviewer says about a flagged (or any audited) annotation."""

    LABEL_WRONG = "label_wrong"
    """The label is wrong; ``corrected_label`` says what it should be, and/or, for a SEG mask,
    ``corrected_mask`` how the mask is corrected ("suggestion": labelqa's suggested mask)."""
    LABEL_RIGHT = "label_right"
    """The label is right (the flag was a false alarm)."""
    UNSURE = "unsure"
    """The reviewer cannot tell."""


class DecisionError(ValueError):
    """A decision that cannot be recorded as given (the message says why)."""


MASK_CORRECTIONS = tuple(REVISION_MASK_CORRECTIONS)
"""What ``corrected_mask`` may say (``dicom_io.results.revision`` writes each): "suggestion", the
suggested (consensus) mask of the audit replaces the given one on the item's source frame."""


class AuditedRow(Base):
    """One audited annotation, as the newest finished audit of its study saw it."""

    __tablename__ = "annotations_audited"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    segment_number: Mapped[int] = mapped_column(Integer, default=0)  # 0: not a SEG segment
    content_path: Mapped[str] = mapped_column(String(128), default="")
    # SEG rows: the source image/frame (a segment spans many frames, each its own item); '' for SR rows
    frame_key: Mapped[str] = mapped_column(String(160), default="", server_default="")
    study_uid: Mapped[str] = mapped_column(String(64))
    image_uid: Mapped[str | None] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(8), default="sr")  # sr | seg
    job_id: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    given_label: Mapped[str | None] = mapped_column(String(64))
    consensus_label: Mapped[str | None] = mapped_column(String(64))
    agreement: Mapped[float | None] = mapped_column(Float)
    p_given: Mapped[float | None] = mapped_column(Float)
    consensus_prob: Mapped[float | None] = mapped_column(Float)
    n_disagree: Mapped[int | None] = mapped_column(Integer)
    n_members: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    modality: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(16))
    series_uid: Mapped[str | None] = mapped_column(String(64))  # the image's series (data set / series filter)
    series_description: Mapped[str | None] = mapped_column(String(64))
    report_uid: Mapped[str | None] = mapped_column(String(64))  # the QA report SR of the audit
    heatmap_uid: Mapped[str | None] = mapped_column(String(64))
    extra_json: Mapped[str | None] = mapped_column(Text)  # per-member probabilities etc., when the audit gave them
    current: Mapped[bool] = mapped_column(Boolean, default=True)  # False: no longer in the study's newest audit
    audited_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("annotation_uid", "segment_number", "content_path", "frame_key", name="uq_audited_annotation"),
        # the worklist order (current rows by priority, id) for each common filter: pages are index walks
        Index("ix_audited_priority", "current", "priority", "id"),
        Index("ix_audited_verdict_priority", "current", "verdict", "priority", "id"),
        Index("ix_audited_flagged_priority", "current", "flagged", "priority", "id"),
        Index("ix_audited_label_priority", "current", "given_label", "priority", "id"),
        Index("ix_audited_study", "study_uid"),
    )


class DecisionRow(Base):
    """The current decision on one audited annotation."""

    __tablename__ = "review_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("annotations_audited.id"), unique=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(64))
    corrected_mask: Mapped[str | None] = mapped_column(String(16))  # "suggestion" (migration 0004)
    comment: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # write-back to the PACS: none (nothing to write) | pending | done | failed
    writeback_state: Mapped[str] = mapped_column(String(16), default="none")
    writeback_json: Mapped[str | None] = mapped_column(Text)  # UIDs / paths of what was written


class DecisionAuditRow(Base):
    """Append-only trail: every decision made or changed, with the previous one."""

    __tablename__ = "review_decision_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(Integer, index=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # created | changed | retracted
    decision: Mapped[str | None] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(64))
    corrected_mask: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    previous_decision: Mapped[str | None] = mapped_column(String(16))
    previous_corrected_label: Mapped[str | None] = mapped_column(String(64))
    previous_corrected_mask: Mapped[str | None] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)


class ReviewSyncRow(Base):
    """How far :meth:`ReviewStore.sync` has read the job table."""

    __tablename__ = "review_sync"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_finished_at: Mapped[float] = mapped_column(Float, default=-1.0)


# -- query shapes ----------------------------------------------------------------------------------


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


@dataclass
class DecisionOutcome:
    """What :meth:`ReviewStore.decide` did: ``changed`` is False for a repeat of the current decision."""

    item: dict[str, Any]
    decision: dict[str, Any]
    changed: bool
    action: str  # created | changed | unchanged


def encode_cursor(priority: float, item_id: int) -> str:
    """An opaque keyset cursor (the last item of a page)."""
    return base64.urlsafe_b64encode(json.dumps([priority, item_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """The (priority, id) of a cursor; DecisionError for a malformed one."""
    try:
        pad = "=" * (-len(cursor) % 4)
        p, i = json.loads(base64.urlsafe_b64decode(cursor + pad))
        return float(p), int(i)
    except (ValueError, TypeError) as e:
        raise DecisionError(f"malformed cursor {cursor!r}") from e


def frame_key(row: dict[str, Any]) -> str:
    """What tells the rows of one SEG segment apart: its source image and frame (a segment spans many
    frames, each one item), and the class when the SEG has no segment of it; '' for SR rows."""
    if str(row.get("source") or "sr") != "seg" or not row.get("image_uid"):
        return ""
    key = f"{row['image_uid']}/{int(row.get('frame') or 0)}"
    if not row.get("segment_number"):
        key += f"#{row.get('class') or row.get('given_label') or ''}"
    return key[:160]


def _item_dict(r: AuditedRow, d: DecisionRow | None) -> dict[str, Any]:
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
        "suggestion_uid": extra.get("suggestion_uid"),
        "decision": _decision_dict(d) if d is not None else None,
    }


def _decision_dict(d: DecisionRow) -> dict[str, Any]:
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


class ReviewStore:
    """Audited annotations, decisions and their trail on the service database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ensure_schema(engine)  # a migrated database already has the tables (service/migrations 0002)
        self._sync_lock = threading.Lock()
        self._decide_lock = threading.Lock()
        self._last_seen_max: tuple[Any, ...] = ()
        self._facets: dict[str, Any] | None = None  # distinct labels / modalities / series; reset on indexing
        self._gen = 0  # bumped on every write through this store (cache stamps)
        self._counts: dict[tuple[Any, ...], int] = {}
        self._stats: tuple[Any, dict[str, Any]] | None = None

    # ---------------------------------------------------------------- indexing audits

    def sync(self, jobs: Any | None = None) -> int:
        """Index the rows of audits finished since the last sync; returns how many audits were read.

        Reads ``audit_jobs`` (service.jobs) directly, by finish time (two workers may finish a newer job
        first); a study's rows that its newest audit no longer has are kept (with their decisions) but
        marked not current. Indexing is an upsert, so reading a job twice is harmless.
        """
        from sqlalchemy.exc import IntegrityError

        from service.jobs import DONE, AuditJobRow

        with Session(self.engine) as s:
            newest = s.execute(select(func.max(AuditJobRow.finished_at), func.count())
                               .where(AuditJobRow.state == DONE)).one()
        if tuple(newest) == self._last_seen_max:
            return 0
        with self._sync_lock:
            with Session(self.engine) as s:
                state = s.get(ReviewSyncRow, 1)
                since = state.last_finished_at if state is not None else -1.0
                new_jobs = s.execute(
                    select(AuditJobRow.id, AuditJobRow.study_uid, AuditJobRow.result_json, AuditJobRow.finished_at)
                    .where(AuditJobRow.state == DONE, AuditJobRow.finished_at >= since)
                    .order_by(AuditJobRow.finished_at, AuditJobRow.id)
                ).all()
            n = 0
            for job_id, study_uid, result_json, finished_at in new_jobs:
                result = json.loads(result_json) if result_json else {}
                args = (job_id, study_uid, result.get("rows", []), result.get("outputs", []))
                try:
                    self.index_audit(*args, audited_at=finished_at or time.time())
                except IntegrityError:  # another process indexed the same rows just now: upsert again
                    self.index_audit(*args, audited_at=finished_at or time.time())
                n += 1
            top = max([since] + [float(j[3] or 0.0) for j in new_jobs])
            with Session(self.engine) as s, s.begin():
                state = s.get(ReviewSyncRow, 1)
                if state is None:
                    s.add(ReviewSyncRow(id=1, last_finished_at=top))
                else:
                    state.last_finished_at = top
            self._last_seen_max = tuple(newest)
            return n

    def index_audit(self, job_id: int, study_uid: str, rows: Sequence[dict[str, Any]],
                    outputs: Sequence[dict[str, Any]] = (), *, audited_at: float | None = None) -> int:
        """Upsert the rows of one finished audit of ``study_uid``; returns the number of rows indexed."""
        audited_at = time.time() if audited_at is None else audited_at
        report = next((o for o in outputs if o.get("modality") == "SR"), None)
        heatmaps, suggestions = _report_refs(report)
        context = self._image_context([str(r.get("image_uid")) for r in rows if r.get("image_uid")])
        with Session(self.engine) as s, s.begin():
            existing = {(r.annotation_uid, r.segment_number, r.content_path, r.frame_key): r
                        for r in s.scalars(select(AuditedRow).where(AuditedRow.study_uid == study_uid))}
            seen: set[int] = set()
            for row in rows:
                key = (str(row["annotation_uid"]), int(row.get("segment_number") or 0),
                       str(row.get("content_path") or ""), frame_key(row))
                rec = existing.get(key)
                legacy = existing.get((*key[:3], ""))  # indexed before frame_key: the same item, if on the same frame
                if rec is None and legacy is not None and legacy.id not in seen and (
                        legacy.image_uid, legacy.frame) == (row.get("image_uid"), row.get("frame")):
                    rec = legacy
                    rec.frame_key = key[3]
                if rec is None:
                    rec = AuditedRow(annotation_uid=key[0], segment_number=key[1], content_path=key[2],
                                     frame_key=key[3], study_uid=study_uid)
                    s.add(rec)
                    existing[key] = rec
                ctx = context.get(str(row.get("image_uid")), {})
                verdict = str(row.get("verdict"))
                extra = {k: row[k] for k in ("member_probs", "kind", "dice", "cannot_judge") if row.get(k) is not None}
                suggestion = suggestions.get((key[0], key[1] or None, row.get("image_uid"), row.get("frame")))
                if suggestion and is_mask_row(row):
                    extra["suggestion_uid"] = suggestion
                rec.image_uid = row.get("image_uid")
                rec.frame = row.get("frame")
                rec.source = str(row.get("source") or "sr")
                rec.job_id = job_id
                rec.verdict = verdict
                rec.flagged = verdict in FLAGGED
                rec.priority = float(row.get("priority") or 0.0)
                rec.given_label = _s(row.get("given_label"))
                rec.consensus_label = _s(row.get("consensus_label"))
                rec.agreement = row.get("agreement")
                rec.p_given = row.get("p_given")
                rec.consensus_prob = row.get("consensus_prob")
                rec.n_disagree = row.get("n_disagree")
                rec.n_members = row.get("n_members")
                rec.score = row.get("score")
                rec.modality = ctx.get("modality")
                rec.study_date = ctx.get("study_date")
                rec.series_uid = ctx.get("series_uid")
                rec.series_description = ctx.get("series_description")
                rec.report_uid = report.get("sop_instance_uid") if report else None
                rec.heatmap_uid = heatmaps.get((key[0], key[1] or None))
                rec.extra_json = json.dumps(extra) if extra else None
                rec.current = True
                rec.audited_at = audited_at
                s.flush()
                seen.add(rec.id)
            stale = [r.id for r in existing.values() if r.id not in seen and r.current]
            if stale:
                s.execute(update(AuditedRow).where(AuditedRow.id.in_(stale)).values(current=False))
        self._facets = None
        self._gen += 1
        return len(rows)

    def bulk_index(self, rows: Iterable[dict[str, Any]], *, job_id: int = 0, chunk: int = 5000) -> int:
        """Insert many new audited rows at once (benchmarks, imports): no upsert, no context lookups."""
        n = 0
        buf: list[dict[str, Any]] = []
        now = time.time()

        def flush() -> None:
            if buf:
                with self.engine.begin() as c:
                    c.execute(AuditedRow.__table__.insert(), buf)  # type: ignore[attr-defined]
                buf.clear()

        for r in rows:
            verdict = str(r["verdict"])
            buf.append({
                "annotation_uid": str(r["annotation_uid"]), "segment_number": int(r.get("segment_number") or 0),
                "content_path": str(r.get("content_path") or ""), "frame_key": frame_key(r),
                "study_uid": str(r["study_uid"]),
                "image_uid": r.get("image_uid"), "frame": r.get("frame"), "source": r.get("source", "sr"),
                "job_id": job_id, "verdict": verdict, "flagged": verdict in FLAGGED,
                "priority": float(r.get("priority") or 0.0), "given_label": _s(r.get("given_label")),
                "consensus_label": _s(r.get("consensus_label")), "agreement": r.get("agreement"),
                "p_given": r.get("p_given"), "consensus_prob": r.get("consensus_prob"),
                "n_disagree": r.get("n_disagree"), "n_members": r.get("n_members"), "score": r.get("score"),
                "modality": r.get("modality"), "study_date": r.get("study_date"), "series_uid": r.get("series_uid"),
                "series_description": r.get("series_description"), "report_uid": r.get("report_uid"),
                "heatmap_uid": r.get("heatmap_uid"), "extra_json": None, "current": True, "audited_at": now,
            })
            n += 1
            if len(buf) >= chunk:
                flush()
        flush()
        self._facets = None
        self._gen += 1
        return n

    def _image_context(self, image_uids: list[str]) -> dict[str, dict[str, Any]]:
        """Modality, study date and series of source images, from the study store's index when present."""
        if not image_uids:
            return {}
        try:
            from dicom_io.store import InstanceRow, SeriesRow, StudyRow

            with self.engine.connect() as c:
                q = (select(InstanceRow.sop_instance_uid, SeriesRow.modality, StudyRow.study_date,
                            SeriesRow.series_uid, SeriesRow.description)
                     .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
                     .join(StudyRow, StudyRow.study_uid == InstanceRow.study_uid)
                     .where(InstanceRow.sop_instance_uid.in_(image_uids)))
                return {r[0]: {"modality": r[1], "study_date": r[2], "series_uid": r[3], "series_description": r[4]}
                        for r in c.execute(q)}
        except Exception as e:  # noqa: BLE001 - no store tables in this database: no context
            log.debug("no image context: %s", e)
            return {}

    # ---------------------------------------------------------------- reading

    def _filtered(self, f: WorklistFilter) -> Any:
        q = select(AuditedRow, DecisionRow).outerjoin(DecisionRow, DecisionRow.item_id == AuditedRow.id)
        conds: list[Any] = []
        if not f.include_stale:
            conds.append(AuditedRow.current.is_(True))
        if f.verdict == "flagged":
            conds.append(AuditedRow.flagged.is_(True))
        elif f.verdict:
            conds.append(AuditedRow.verdict == f.verdict)
        if f.label:
            conds.append(AuditedRow.given_label == f.label)
        if f.modality:
            conds.append(AuditedRow.modality == f.modality)
        if f.date_from:
            conds.append(AuditedRow.study_date >= f.date_from)
        if f.date_to:
            conds.append(AuditedRow.study_date <= f.date_to)
        if f.series_uid:
            conds.append(AuditedRow.series_uid == f.series_uid)
        if f.study_uid:
            conds.append(AuditedRow.study_uid == f.study_uid)
        if f.status == "undecided":
            conds.append(DecisionRow.id.is_(None))
        elif f.status == "decided":
            conds.append(DecisionRow.id.is_not(None))
        elif f.status:
            conds.append(DecisionRow.decision == f.status)
        return q.where(*conds) if conds else q, conds

    def worklist(self, f: WorklistFilter | None = None, *, limit: int = 50, cursor: str | None = None,
                 offset: int = 0, with_total: bool = True) -> WorklistPage:
        """One page of audited annotations, highest priority first (ties: newest id first).

        Keyset paging with ``cursor`` (the ``next_cursor`` of the previous page) stays fast however deep
        one pages; ``offset`` is there for jumping to a page number.
        """
        f = f or WorklistFilter()
        if f.verdict and f.verdict != "flagged" and f.verdict not in set(Verdict):
            raise DecisionError(f"unknown verdict {f.verdict!r}; use flagged or one of {', '.join(Verdict)}")
        if f.status and f.status not in ("undecided", "decided", *Decision):
            raise DecisionError(f"unknown status {f.status!r}; use undecided, decided or one of {', '.join(Decision)}")
        q, conds = self._filtered(f)
        key = tuple_(AuditedRow.priority, AuditedRow.id)
        order = (AuditedRow.priority.desc(), AuditedRow.id.desc())
        with Session(self.engine) as s:
            if cursor:
                p, i = decode_cursor(cursor)
                q = q.where(key < tuple_(p, i))
            elif offset:
                # jump by walking the priority index for ids only, then read the page by keyset
                iq = select(AuditedRow.priority, AuditedRow.id)
                if f.status:
                    iq = iq.outerjoin(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                start = s.execute((iq.where(*conds) if conds else iq).order_by(*order).offset(offset).limit(1)).first()
                if start is None:
                    q = q.where(AuditedRow.id < 0)
                else:
                    q = q.where(key <= tuple_(start[0], start[1]))
            rows = s.execute(q.order_by(*order).limit(limit + 1)).all()
            total = self._count(s, f, conds) if with_total else -1
        more = len(rows) > limit
        rows = rows[:limit]
        items = [_item_dict(r, d) for r, d in rows]
        nxt = encode_cursor(rows[-1][0].priority, rows[-1][0].id) if more and rows else None
        return WorklistPage(items=items, total=total, next_cursor=nxt, offset=offset)

    def _stamp(self, s: Session) -> tuple[Any, ...]:
        """Changes whenever the indexed audits or the decisions change (also from another process)."""
        return (self._gen, s.scalar(select(func.max(DecisionAuditRow.id))), s.scalar(select(func.max(AuditedRow.id))),
                s.scalar(select(ReviewSyncRow.last_finished_at).where(ReviewSyncRow.id == 1)))

    def _count(self, s: Session, f: WorklistFilter, conds: list[Any]) -> int:
        """The number of items under a filter, cached until the next change (counting 100k rows is the slow part)."""
        stamp = self._stamp(s)
        k = (stamp, f.verdict, f.label, f.modality, f.date_from, f.date_to, f.series_uid, f.study_uid, f.status,
             f.include_stale)
        hit = self._counts.get(k)
        if hit is None:
            cq = select(func.count()).select_from(AuditedRow)
            if f.status:
                cq = cq.outerjoin(DecisionRow, DecisionRow.item_id == AuditedRow.id)
            hit = int(s.scalar(cq.where(*conds) if conds else cq) or 0)
            if len(self._counts) > 256 or any(key[0] != stamp for key in self._counts):
                self._counts.clear()
            self._counts[k] = hit
        return hit

    def neighbours(self, item_id: int, f: WorklistFilter | None = None) -> tuple[int | None, int | None]:
        """(previous, next) item ids around ``item_id`` in the worklist order under ``f``."""
        f = f or WorklistFilter()
        with Session(self.engine) as s:
            me = s.get(AuditedRow, item_id)
            if me is None:
                return None, None
            q, _ = self._filtered(f)
            key = tuple_(AuditedRow.priority, AuditedRow.id)
            here = tuple_(me.priority, me.id)
            nxt = s.execute(q.where(key < here).order_by(AuditedRow.priority.desc(), AuditedRow.id.desc())
                            .limit(1)).first()
            prv = s.execute(q.where(key > here).order_by(AuditedRow.priority.asc(), AuditedRow.id.asc())
                            .limit(1)).first()
        return (prv[0].id if prv else None), (nxt[0].id if nxt else None)

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One audited annotation with its decision, or None."""
        with Session(self.engine) as s:
            r = s.get(AuditedRow, item_id)
            if r is None:
                return None
            d = s.scalar(select(DecisionRow).where(DecisionRow.item_id == item_id))
            return _item_dict(r, d)

    def find(self, annotation_uid: str, segment_number: int | None = None,
             content_path: str | None = None) -> list[dict[str, Any]]:
        """The audited rows of an annotation object (several for a SEG with several segments)."""
        q = select(AuditedRow, DecisionRow).outerjoin(DecisionRow, DecisionRow.item_id == AuditedRow.id).where(
            AuditedRow.annotation_uid == annotation_uid)
        if segment_number is not None:
            q = q.where(AuditedRow.segment_number == segment_number)
        if content_path is not None:
            q = q.where(AuditedRow.content_path == content_path)
        with Session(self.engine) as s:
            return [_item_dict(r, d) for r, d in s.execute(q.order_by(AuditedRow.current.desc(), AuditedRow.id))]

    def labels(self) -> list[str]:
        """Every class name seen as a given or consensus label."""
        return list(self.facets()["labels"])

    def facets(self) -> dict[str, Any]:
        """Values offered by the worklist's filters (labels, modalities, verdicts, series) and the audits'
        "cannot judge" findings (mask classes the models were too weak to flag); cached until the next
        audit is indexed."""
        if self._facets is None:
            with Session(self.engine) as s:
                a = set(s.scalars(select(AuditedRow.given_label).distinct()))
                b = set(s.scalars(select(AuditedRow.consensus_label).distinct()))
                mods = sorted(x for x in s.scalars(select(AuditedRow.modality).distinct()) if x)
                series = s.execute(select(AuditedRow.series_uid, AuditedRow.series_description).distinct()
                                   .limit(200)).all()
                unjudged = [x for lab in sorted(x for x in a if x) for x in s.scalars(
                    select(AuditedRow.extra_json).where(AuditedRow.current.is_(True), AuditedRow.given_label == lab,
                                                        AuditedRow.extra_json.like('%"cannot_judge"%')).limit(1))]
            self._facets = {"labels": sorted(x for x in a | b if x), "modalities": mods,
                            "verdicts": [str(v) for v in Verdict],
                            "series": [{"uid": u, "description": d} for u, d in series if u],
                            "cannot_judge": sorted({str(json.loads(x)["cannot_judge"]) for x in unjudged if x})}
        return self._facets

    # ---------------------------------------------------------------- deciding

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
                                        "suspected mask error)")
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
                return DecisionOutcome(_item_dict(item, cur), _decision_dict(cur), False, "unchanged")
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
            out = DecisionOutcome(_item_dict(item, cur), _decision_dict(cur), True, action)
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

    def set_writeback(self, item_id: int, state: str, detail: dict[str, Any] | None = None) -> None:
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
        return [_item_dict(r, d) for r, d in rows]

    def trail(self, item_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
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
                "decided_at": _iso(d.decided_at), "writeback_state": d.writeback_state,
            })
        return out

    # ---------------------------------------------------------------- the loop, measured

    def loop_stats(self, fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> dict[str, Any]:
        """Flag precision and errors confirmed per review from real decisions, and the efficacy curve.

        ``flag_precision``: of the flagged items with a decisive answer (wrong/right), the share confirmed
        wrong. ``errors_per_review``: confirmed errors per decision made. ``efficacy``: for a budget of
        each fraction of the current audited items taken in priority order, the share of all confirmed
        errors it contains.
        """
        with Session(self.engine) as s:
            stamp = (self._stamp(s), tuple(fractions))
            if self._stats is not None and self._stats[0] == stamp:
                return self._stats[1]
            n_items = int(s.scalar(select(func.count()).select_from(AuditedRow).where(AuditedRow.current.is_(True)))
                          or 0)
            by = s.execute(select(AuditedRow.flagged, DecisionRow.decision, func.count())
                           .join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                           .group_by(AuditedRow.flagged, DecisionRow.decision)).all()
            # ranks (0-based, in worklist order) of the confirmed errors among the current items
            wrong = s.execute(select(AuditedRow.priority, AuditedRow.id)
                              .join(DecisionRow, DecisionRow.item_id == AuditedRow.id)
                              .where(DecisionRow.decision == Decision.LABEL_WRONG, AuditedRow.current.is_(True))).all()
            ranks = []
            for p, i in wrong:
                above = s.scalar(select(func.count()).select_from(AuditedRow).where(
                    AuditedRow.current.is_(True),
                    or_(AuditedRow.priority > p, and_(AuditedRow.priority == p, AuditedRow.id > i))))
                ranks.append(int(above or 0))
        counts: dict[str, int] = {str(d): 0 for d in Decision}
        flagged_wrong = flagged_right = 0
        for flagged, dec, n in by:
            counts[dec] = counts.get(dec, 0) + int(n)
            if flagged and dec == Decision.LABEL_WRONG:
                flagged_wrong += int(n)
            if flagged and dec == Decision.LABEL_RIGHT:
                flagged_right += int(n)
        decided = sum(counts.values())
        precision = flagged_wrong / (flagged_wrong + flagged_right) if flagged_wrong + flagged_right else None
        errors = counts[Decision.LABEL_WRONG]
        efficacy = []
        for frac in fractions:
            budget = int(round(frac * n_items))
            found = sum(1 for r in ranks if r < budget)
            efficacy.append({"fraction": frac, "budget": budget,
                             "found": found, "share": (found / len(ranks)) if ranks else None})
        out = {"items": n_items, "decided": decided, "decisions": counts, "flag_precision": precision,
               "errors_confirmed": errors, "errors_per_review": errors / decided if decided else None,
               "efficacy": efficacy}
        self._stats = (stamp, out)
        return out


def is_mask_row(row: dict[str, Any]) -> bool:
    """Whether a verdict row is an audited mask (a SEG class on one source frame), not a class label."""
    return str(row.get("source") or "") == "seg" and "class" in row


def _report_refs(report: dict[str, Any] | None) -> tuple[dict[tuple[str, int | None], str],
                                                         dict[tuple[str, int | None, str | None, int | None], str]]:
    """From the audit's QA report SR (when on disk): (annotation uid, segment) -> heatmap SC uid, and
    (annotation uid, segment, source image uid, frame) -> suggestion SEG uid of each flagged mask."""
    if not report or not report.get("path") or not Path(report["path"]).is_file():
        return {}, {}
    try:
        import pydicom

        from dicom_io.results.sr import read_report

        rep = read_report(pydicom.dcmread(report["path"]))
    except Exception as e:  # noqa: BLE001 - heatmaps and suggestions are optional in the item view
        log.warning("cannot read QA report %s: %s", report.get("sop_instance_uid"), e)
        return {}, {}
    heatmaps = {(str(it["annotation_uid"]), it.get("segment_number")): str(it["heatmap_uid"])
                for it in rep["items"] if it.get("heatmap_uid") and it.get("annotation_uid")}
    suggestions = {(str(m["annotation_uid"]), m.get("segment_number"), m.get("source_image_uid"), m.get("frame")):
                   str(m["suggestion_uid"])
                   for m in rep["masks"] if m.get("suggestion_uid") and m.get("annotation_uid")}
    return heatmaps, suggestions


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- the service: decisions, their write-back to the PACS, images for the item view --------------


class ReviewService:
    """The review workbench's back end: the store kept in step with the audits, and write-back.

    A decision that changes something is written back at once (a superseding annotation for
    "label_wrong", the QA report reissued VERIFIED for every decisive answer) through the outbox; a
    write-back interrupted by a crash is still "pending" in the table and :meth:`resume` redoes it.
    """

    def __init__(self, engine: Engine, *, jobs: Any = None, data_dir: Path | None = None, outbox: Any = None,
                 deliver: bool = True, vocabulary: Any = None, organization: str = "labelqa QA",
                 display_names: dict[str, str] | None = None) -> None:
        self.store = ReviewStore(engine)
        self.engine = engine
        self.jobs = jobs
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.outbox = outbox
        self.deliver = deliver
        self._vocabulary = vocabulary
        self.organization = organization
        self.display_names = display_names or {}
        self._wb_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, engine: Engine, *, jobs: Any = None, outbox: Any = None) -> ReviewService:
        names = {u.name: (u.display_name or u.name) for u in settings.auth.users}
        svc = cls(engine, jobs=jobs, data_dir=Path(settings.store.data_dir), outbox=outbox,
                  deliver=bool(settings.outbox.destinations), organization=settings.auth.organization,
                  display_names=names)
        svc._settings = settings
        return svc

    _settings: Any = None

    # ---------------------------------------------------------------- vocabulary

    def vocabulary(self) -> Any:
        """The label vocabulary (configured file, the bundle's own, else the labels seen), loaded once."""
        if self._vocabulary is None:
            from dicom_io.vocabulary import Vocabulary, load_vocabulary

            vocab = None
            s = self._settings
            if s is not None:
                candidates = [s.audit.vocabulary] if s.audit.vocabulary else []
                if s.audit.bundle:
                    b = Path(s.audit.bundle)
                    candidates += [b / n for n in ("vocabulary.toml", "configs/vocabulary.toml", "vocabulary.json",
                                                   "configs/vocabulary.json")]
                for c in candidates:
                    if c and Path(c).is_file():
                        vocab = load_vocabulary(Path(c))
                        break
            if vocab is None:
                labels = self.store.labels()
                if not labels:
                    return None  # nothing audited yet: try again later
                vocab = Vocabulary.from_class_names(labels)
            self._vocabulary = vocab
        return self._vocabulary

    def class_names(self) -> list[str]:
        v = self.vocabulary()
        names = list(v.class_names) if v is not None else []
        return names + [x for x in self.store.labels() if x not in names]

    def _code(self, label: str) -> Any:
        v = self.vocabulary()
        try:
            return v.code_for(label).to_pydicom() if v is not None else label
        except KeyError:
            return label

    # ---------------------------------------------------------------- reading

    def sync(self) -> int:
        if self.jobs is None:
            return 0
        return self.store.sync(self.jobs)

    def instance_path(self, sop_instance_uid: str | None) -> Path | None:
        """The stored file of an instance (the study store's index), or None."""
        if not sop_instance_uid or self.data_dir is None:
            return None
        from dicom_io.store import InstanceRow

        with Session(self.engine) as s:
            rel = s.scalar(select(InstanceRow.path).where(InstanceRow.sop_instance_uid == sop_instance_uid))
        if rel is not None:
            p = self.data_dir / rel
            return p if p.is_file() else None
        for p in (self.data_dir / "results").glob(f"*/{sop_instance_uid}.dcm"):  # our own result objects
            return p
        return None

    def resolve(self, annotation_uid: str, *, item_id: int | None = None, segment_number: int | None = None,
                content_path: str | None = None) -> dict[str, Any]:
        """The one audited row an annotation UID (and segment / content path) names; DecisionError otherwise."""
        rows = self.store.find(annotation_uid, segment_number, content_path)
        if item_id is not None:
            rows = [r for r in rows if r["id"] == item_id]
        current = [r for r in rows if r["current"]] or rows
        if not current:
            raise LookupError(f"annotation {annotation_uid} has not been audited")
        if len(current) > 1:
            raise DecisionError(f"annotation {annotation_uid} has {len(current)} audited parts: give segment_number "
                                "or content_path (or item_id)")
        return current[0]

    # ---------------------------------------------------------------- deciding and writing back

    def decide(self, item_id: int, decision: str, reviewer: str, *, corrected_label: str | None = None,
               comment: str | None = None, corrected_mask: str | None = None) -> DecisionOutcome:
        """Record a decision; write it back when it changed something."""
        out = self.store.decide(item_id, decision, reviewer, corrected_label=corrected_label, comment=comment,
                                allowed_labels=self.class_names() or None, corrected_mask=corrected_mask)
        if out.changed and out.decision["writeback_state"] == "pending":
            out.decision = self.writeback(item_id) or out.decision
        return out

    def resume(self) -> int:
        """Redo the write-backs still pending (after a restart); returns how many were done."""
        n = 0
        for item_id in self.store.pending_writebacks():
            if self.writeback(item_id) is not None:
                n += 1
        return n

    def _reviewer(self, name: str, at: float) -> Any:
        from datetime import datetime

        from dicom_io.results.revision import Reviewer

        return Reviewer(self.display_names.get(name, name), self.organization,
                        datetime.fromtimestamp(at, tz=UTC))

    def writeback(self, item_id: int) -> dict[str, Any] | None:
        """Write the decision on ``item_id`` back: files under results/<study>/review/, queued in the outbox.

        Returns the decision dict after the write-back (state done or failed), None when there is none.
        """
        import pydicom

        from dicom_io.results.revision import ReviewedItem, RevisionError, verified_report

        with self._wb_lock:
            item = self.store.item(item_id)
            if item is None or item["decision"] is None:
                return None
            d = item["decision"]
            if d["writeback_state"] != "pending":
                return d
            detail: dict[str, Any] = {"version": d["version"]}
            try:
                if self.data_dir is None:
                    raise RevisionError("no data dir: nothing can be written")
                out_dir = self.data_dir / "results" / item["study_uid"] / "review"
                written: list[Path] = []
                reviewer = self._reviewer(d["reviewer"], d["decided_at"])
                corrected = self._corrected_version(item, reviewer, d)
                if corrected is not None:
                    written.append(_save(corrected, out_dir))
                    detail["corrected_uid"] = str(corrected.SOPInstanceUID)
                    detail["corrected_sop_class_uid"] = str(corrected.SOPClassUID)
                    detail["corrected_path"] = str(written[-1])
                report_path = self.instance_path(item["report_uid"])
                if report_path is not None:
                    decided = [x for x in self.store.study_decisions(item["study_uid"])
                               if x["report_uid"] == item["report_uid"]]
                    reviewed = [ReviewedItem(x["annotation_uid"], x["segment_number"], x["decision"]["decision"],
                                             self._code(x["decision"]["corrected_label"])
                                             if x["decision"]["corrected_label"] else None,
                                             x["decision"]["comment"], x["decision"]["reviewer"],
                                             corrected_mask=x["decision"].get("corrected_mask"),
                                             image_uid=x["image_uid"] if x["source"] == "seg" else None,
                                             frame=x["frame"] if x["source"] == "seg" else None)
                                for x in decided]
                    previous = self._previous_reports(decided, item_id)
                    rep = verified_report(pydicom.dcmread(report_path), reviewed, reviewer,
                                          previous=[pydicom.dcmread(p, stop_before_pixels=True) for p in previous[-1:]],
                                          key=[len(previous)], instance_number=2 + len(previous))
                    written.append(_save(rep, out_dir))
                    detail["report_uid"] = str(rep.SOPInstanceUID)
                    detail["report_path"] = str(written[-1])
                detail["files"] = [str(p) for p in written]
                if self.outbox is not None and self.deliver and written:
                    self.outbox.enqueue(written)
                    detail["queued"] = True
                self.store.set_writeback(item_id, "done", detail)
                log.info("review: wrote back item=%d: %s", item_id,
                         ", ".join(k for k in ("corrected_uid", "report_uid") if k in detail))
            except (RevisionError, OSError, ValueError, KeyError) as e:
                log.error("review: write-back of item %d failed: %s", item_id, e)
                detail["error"] = f"{type(e).__name__}: {e}"
                self.store.set_writeback(item_id, "failed", detail)
            return self.store.item(item_id)["decision"]  # type: ignore[index]

    def current_correction(self, annotation_uid: str) -> Path | None:
        """The newest corrected version of ``annotation_uid`` written back (the file the PACS received),
        when every current decision on it has been written back; None otherwise (or when none was needed)."""
        parts = [x for x in self.store.find(annotation_uid) if x["current"] and x["decision"]]
        if not parts or any(x["decision"]["writeback_state"] != "done" for x in parts):
            return None
        written = sorted((x["decision"]["decided_at"], Path(p)) for x in parts
                         if (p := (x["decision"].get("writeback") or {}).get("corrected_path")) and Path(p).is_file())
        return written[-1][1] if written else None

    def _corrected_version(self, item: dict[str, Any], reviewer: Any, d: dict[str, Any]) -> Any:
        """The next version of the annotation object with every current correction on it, or None when
        it needs none (no correction now, and none written before)."""
        import pydicom

        from dicom_io.results.revision import Correction, RevisionError, corrected_annotation

        parts = [x for x in self.store.find(item["annotation_uid"]) if x["current"] and x["decision"]]
        fixes = []
        for x in parts:
            dx = x["decision"]
            if dx["decision"] != Decision.LABEL_WRONG:
                continue
            label = self._code(dx["corrected_label"]) if dx["corrected_label"] else None
            if dx.get("corrected_mask") == "suggestion":
                fixes.append(Correction(label, x["content_path"], x["segment_number"], mask=self.suggested_mask(x),
                                        image_uid=x["image_uid"], frame=x["frame"]))
            elif label is not None:
                fixes.append(Correction(label, x["content_path"], x["segment_number"]))
        before = sorted((x["decision"]["decided_at"], Path(p)) for x in parts
                        if (p := (x["decision"].get("writeback") or {}).get("corrected_path")) and Path(p).is_file())
        if not fixes and not before:
            return None
        src = self.instance_path(item["annotation_uid"])
        if src is None:
            raise RevisionError(f"annotation {item['annotation_uid']} is not in the store")
        original = pydicom.dcmread(src)
        sources = {}
        if any(f.mask is not None for f in fixes):  # the SEG is rebuilt from its source images
            for series in original.get("ReferencedSeriesSequence") or []:
                for ref in series.get("ReferencedInstanceSequence") or []:
                    if (p := self.instance_path(str(ref.ReferencedSOPInstanceUID))) is not None:
                        sources[str(ref.ReferencedSOPInstanceUID)] = pydicom.dcmread(p)
        previous = [pydicom.dcmread(before[-1][1], stop_before_pixels=True)] if before else []
        version = 1 + len({p for _, p in before})
        return corrected_annotation(original, fixes, reviewer, predecessors=previous,
                                    key=[item["id"], d["version"], version], instance_number=version, sources=sources)

    def suggested_mask(self, item: dict[str, Any]) -> Any:
        """The suggested (consensus) mask of a flagged SEG mask item on its source frame: bool (rows,
        columns), read from the audit's suggestion SEG (never recomputed). RevisionError when there is none."""
        import pydicom

        from dicom_io.results.revision import RevisionError
        from dicom_io.results.seg_out import read_suggestion

        uid = item.get("suggestion_uid")
        if not uid:
            raise RevisionError(f"item {item['id']} has no suggested mask")
        path = self.instance_path(uid)
        if path is None:
            raise RevisionError(f"suggestion SEG {uid} of item {item['id']} is not among the results")
        try:
            return read_suggestion(pydicom.dcmread(path), str(item["given_label"]), str(item["image_uid"]),
                                   item["frame"])
        except ValueError as e:
            raise RevisionError(str(e)) from None

    @staticmethod
    def _previous_reports(decided: list[dict[str, Any]], item_id: int) -> list[Path]:
        """Reissued reports of the study written so far, oldest first (the last one is superseded next)."""
        found = []
        for x in decided:
            wb = x["decision"].get("writeback") or {}
            p = wb.get("report_path")
            if p and Path(p).is_file():
                found.append((x["decision"]["decided_at"], Path(p)))
        return [p for _, p in sorted(found)]

    def stats(self) -> dict[str, Any]:
        return self.store.loop_stats()


def _save(ds: Any, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / f"{ds.SOPInstanceUID}.dcm"
    tmp = p.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(p)
    return p


class ReviewCollector:
    """Prometheus gauges of the review loop, read at scrape time (register on the service's registry)."""

    def __init__(self, store: ReviewStore) -> None:
        self.store = store

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        from prometheus_client.core import GaugeMetricFamily

        try:
            st = self.store.loop_stats()
        except Exception as e:  # noqa: BLE001 - a scrape must not fail the service
            log.warning("metrics: cannot read review stats: %s", e)
            return
        g = GaugeMetricFamily("labelqa_review_decisions", "Review decisions by kind.", labels=["decision"])
        for k, v in st["decisions"].items():
            g.add_metric([k], v)
        yield g
        yield GaugeMetricFamily("labelqa_review_items", "Audited annotations in the worklist.", value=st["items"])
        if st["flag_precision"] is not None:
            yield GaugeMetricFamily("labelqa_review_flag_precision",
                                    "Share of reviewed flags confirmed as label errors (wrong / (wrong + right)).",
                                    value=st["flag_precision"])
        if st["errors_per_review"] is not None:
            yield GaugeMetricFamily("labelqa_review_errors_per_review", "Label errors confirmed per decision made.",
                                    value=st["errors_per_review"])
        eff = GaugeMetricFamily("labelqa_review_efficacy",
                                "Share of the confirmed label errors within the top fraction of the worklist.",
                                labels=["fraction"])
        for pt in st["efficacy"]:
            if pt["share"] is not None:
                eff.add_metric([f"{pt['fraction']:g}"], pt["share"])
        yield eff
