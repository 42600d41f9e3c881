"""The worklist's side of the review store: audits indexed as items (from the runtime's finished jobs) and
the queries that rank, filter and page them."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_io.store import InstanceRow, SeriesRow, StudyRow
from models.verdict import FLAGGED, Verdict
from service.audit.rows import is_mask_row
from service.review.items import (
    WorklistFilter,
    WorklistPage,
    decode_cursor,
    encode_cursor,
    frame_key,
    item_dict,
)
from service.review.tables import (
    AuditedRow,
    Decision,
    DecisionAuditRow,
    DecisionError,
    DecisionRow,
    ReviewSyncRow,
    text_or_none,
)
from service.review.volume import volume_extra
from service.runtime.jobs import JobStore

__all__ = ["WorklistIndex"]

log = logging.getLogger("labelqa.review")


class WorklistIndex:
    """Indexing finished audits and querying the worklist (a part of :class:`service.review.ReviewStore`)."""

    engine: Engine
    _jobs: JobStore | None
    _sync_lock: threading.Lock
    _last_seen_max: tuple[float | None, int] | tuple[()]
    _facets: dict[str, Any] | None
    _gen: int
    _counts: dict[tuple[object, ...], int]

    # ---------------------------------------------------------------- indexing audits

    def sync(self, jobs: JobStore | None = None) -> int:
        """Index the rows of audits finished since the last sync; returns how many audits were read.

        Reads the finished jobs through the runtime's job table (``jobs``; default: the one on this store's
        database), by finish time (two workers may finish a newer job first); a study's rows that its
        newest audit no longer has are kept (with their decisions) but marked not current. Indexing is an
        upsert, so reading a job twice is harmless.
        """
        jobs = jobs if jobs is not None else self._job_table()
        newest = jobs.finished_marker()
        if newest == self._last_seen_max:
            return 0
        with self._sync_lock:
            with Session(self.engine) as s:
                state = s.get(ReviewSyncRow, 1)
                since = state.last_finished_at if state is not None else -1.0
            new_jobs = jobs.finished_since(since)
            for job in new_jobs:
                result = job.result or {}
                for attempt in (1, 2):
                    try:
                        self.index_audit(job.id, job.study_uid, result.get("rows", []), result.get("outputs", []),
                                         audited_at=job.finished_at or time.time(),
                                         report_uid=result.get("report_uid"))
                        break
                    except IntegrityError:  # another process indexed the same rows just now: upsert again
                        if attempt == 2:
                            raise
            top = max([since] + [float(j.finished_at or 0.0) for j in new_jobs])
            with Session(self.engine) as s, s.begin():
                state = s.get(ReviewSyncRow, 1)
                if state is None:
                    s.add(ReviewSyncRow(id=1, last_finished_at=top))
                else:
                    state.last_finished_at = top
            self._last_seen_max = newest
            return len(new_jobs)

    def _job_table(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore(self.engine)
        return self._jobs

    def index_audit(self, job_id: int, study_uid: str, rows: Sequence[dict[str, Any]],
                    outputs: Sequence[dict[str, Any]] = (), *, audited_at: float | None = None,
                    report_uid: str | None = None) -> int:
        """Upsert the rows of one finished audit of ``study_uid``; returns the number of rows indexed."""
        audited_at = time.time() if audited_at is None else audited_at
        if report_uid is None:  # an audit recorded before its job named the QA report: its first SR
            report_uid = next((o["sop_instance_uid"] for o in outputs if o.get("modality") == "SR"), None)
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
                extra = {k: row[k] for k in ("member_probs", "kind", "dice", "cannot_judge", "shape_typical")
                         if row.get(k) is not None}
                if row.get("suggestion_uid") and is_mask_row(row):
                    extra["suggestion_uid"] = row["suggestion_uid"]
                extra.update(volume_extra(row))  # a segment audited in 3-D: its slices, key slices, volumes
                rec.image_uid = row.get("image_uid")
                rec.frame = row.get("frame")
                rec.source = str(row.get("source") or "sr")
                rec.job_id = job_id
                rec.verdict = verdict
                rec.flagged = verdict in FLAGGED
                rec.priority = float(row.get("priority") or 0.0)
                rec.given_label = text_or_none(row.get("given_label"))
                rec.consensus_label = text_or_none(row.get("consensus_label"))
                rec.agreement = row.get("agreement")
                rec.p_given = row.get("p_given")
                rec.consensus_prob = row.get("consensus_prob")
                rec.n_disagree = row.get("n_disagree")
                rec.n_members = row.get("n_members")
                rec.score = row.get("score")
                rec.modality = ctx.get("modality")
                rec.study_date = ctx.get("study_date")
                rec.series_uid = ctx.get("series_uid") or row.get("series_uid")
                rec.series_description = ctx.get("series_description")
                rec.report_uid = report_uid
                rec.heatmap_uid = row.get("heatmap_uid")
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
                "priority": float(r.get("priority") or 0.0), "given_label": text_or_none(r.get("given_label")),
                "consensus_label": text_or_none(r.get("consensus_label")), "agreement": r.get("agreement"),
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

    def _filtered(self, f: WorklistFilter
                  ) -> tuple[Select[AuditedRow, DecisionRow], list[ColumnElement[bool]]]:
        q = select(AuditedRow, DecisionRow).outerjoin(DecisionRow, DecisionRow.item_id == AuditedRow.id)
        conds: list[ColumnElement[bool]] = []
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
        items = [item_dict(r, d, slices=False) for r, d in rows]
        nxt = encode_cursor(rows[-1][0].priority, rows[-1][0].id) if more and rows else None
        return WorklistPage(items=items, total=total, next_cursor=nxt, offset=offset)

    def _stamp(self, s: Session) -> tuple[object, ...]:
        """Changes whenever the indexed audits or the decisions change (also from another process)."""
        return (self._gen, s.scalar(select(func.max(DecisionAuditRow.id))), s.scalar(select(func.max(AuditedRow.id))),
                s.scalar(select(ReviewSyncRow.last_finished_at).where(ReviewSyncRow.id == 1)))

    def _count(self, s: Session, f: WorklistFilter, conds: list[ColumnElement[bool]]) -> int:
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
            return item_dict(r, d)

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
            return [item_dict(r, d) for r, d in s.execute(q.order_by(AuditedRow.current.desc(), AuditedRow.id))]

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
