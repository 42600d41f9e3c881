"""The audit job table: one row per audit of a study, durable across restarts.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``no_annotations``; a queued job that a
newer one for the same study makes pointless becomes ``superseded``. A worker owns a running job
through a lease (``lease_until``); a running job whose lease expired, or whose owner process on this
host is gone, is re-queued on start (:meth:`JobStore.requeue_stale`). Claiming is a conditional
UPDATE on SQLite and ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, and a partial unique index
allows one running job per study, so two workers (threads, processes or gateways on one database)
never run one job, nor two audits of one study, at the same time.

The table is declared on the one ``dicom_io.db.Base`` of the service database
(``settings.store.resolved_database_url()``, engine from :func:`dicom_io.db.make_engine`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Engine,
    Float,
    Index,
    Integer,
    Result,
    String,
    Text,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from dicom_io.db import Base, ensure_schema, is_postgresql, make_engine

__all__ = [
    "QUEUED", "RUNNING", "DONE", "FAILED", "NO_ANNOTATIONS", "SUPERSEDED", "STATES", "FINAL_STATES", "AuditJobRow",
    "Job", "owner_id", "JobStore", "open_jobs",
]

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
NO_ANNOTATIONS = "no_annotations"
SUPERSEDED = "superseded"
STATES = (QUEUED, RUNNING, DONE, FAILED, NO_ANNOTATIONS, SUPERSEDED)
FINAL_STATES = (DONE, FAILED, NO_ANNOTATIONS, SUPERSEDED)


class AuditJobRow(Base):
    """One audit of one study."""

    __tablename__ = "audit_jobs"
    __table_args__ = (
        # at most one running audit per study, enforced by the database (several gateways, one table)
        Index("uq_audit_jobs_running_study", "study_uid", unique=True,
              sqlite_where=text("state = 'running'"), postgresql_where=text("state = 'running'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(32), default="stable")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_instance_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_flagged: Mapped[int | None] = mapped_column(Integer, nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)


@dataclass
class Job:
    """A plain copy of a job row (safe to pass between threads)."""

    id: int
    study_uid: str
    state: str
    trigger: str
    reason: str | None
    attempts: int
    owner: str | None
    lease_until: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    last_instance_at: float | None
    n_samples: int | None
    n_flagged: int | None
    superseded_by: int | None
    result: dict[str, Any] | None = field(default=None)

    @property
    def duration_s(self) -> float | None:
        """Seconds the last run took (start to finish)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def wait_s(self) -> float | None:
        """Seconds between queueing and the start of the last run."""
        if self.started_at is None:
            return None
        return self.started_at - self.created_at

    def summary(self) -> dict[str, object]:
        """JSON-ready description without the full result."""
        return {
            "id": self.id,
            "study_uid": self.study_uid,
            "state": self.state,
            "trigger": self.trigger,
            "reason": self.reason,
            "attempts": self.attempts,
            "owner": self.owner,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "wait_s": self.wait_s,
            "duration_s": self.duration_s,
            "n_samples": self.n_samples,
            "n_flagged": self.n_flagged,
            "superseded_by": self.superseded_by,
        }


def _to_job(r: AuditJobRow, with_result: bool = True) -> Job:
    result = json.loads(r.result_json) if (with_result and r.result_json) else None
    return Job(
        id=r.id, study_uid=r.study_uid, state=r.state, trigger=r.trigger, reason=r.reason, attempts=r.attempts,
        owner=r.owner, lease_until=r.lease_until, created_at=r.created_at, started_at=r.started_at,
        finished_at=r.finished_at, last_instance_at=r.last_instance_at, n_samples=r.n_samples,
        n_flagged=r.n_flagged, superseded_by=r.superseded_by, result=result,
    )


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched (``Session.execute`` is typed as returning a Result; for DML it is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


def owner_id(worker: int | str = 0) -> str:
    """An owner name for leases: host, process id and worker index."""
    return f"{socket.gethostname()}:{os.getpid()}:{worker}"


def _owner_process_gone(owner: str | None, startup: bool = False) -> bool:
    """True when ``owner`` names a process on this host that no longer runs.

    At ``startup`` a row owned by this very pid is a leftover of an earlier process that had our pid.
    """
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return startup
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobStore:
    """Durable audit jobs in the service database."""

    def __init__(self, engine: Engine, lease_s: float = 600.0, max_attempts: int = 3) -> None:
        self.engine = engine
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        ensure_schema(engine)

    # -- writing -------------------------------------------------------------------------------
    def enqueue(self, study_uid: str, trigger: str = "stable", last_instance_at: float | None = None) -> Job:
        """Queue an audit of ``study_uid``; an already queued job for it is reused (coalesced)."""
        now = time.time()
        with Session(self.engine) as s, s.begin():
            row = s.scalars(
                select(AuditJobRow).where(AuditJobRow.study_uid == study_uid, AuditJobRow.state == QUEUED)
                .order_by(AuditJobRow.id)
            ).first()
            if row is not None:
                if last_instance_at is not None:
                    row.last_instance_at = max(row.last_instance_at or 0.0, last_instance_at)
                if trigger not in row.trigger.split("+"):
                    row.trigger = f"{row.trigger}+{trigger}"[:32]
            else:
                row = AuditJobRow(
                    study_uid=study_uid, state=QUEUED, trigger=trigger, created_at=now, attempts=0,
                    last_instance_at=last_instance_at,
                )
                s.add(row)
            s.flush()
            return _to_job(row)

    def record(self, study_uid: str, state: str, reason: str, trigger: str = "stable") -> Job:
        """Record a study that gets no audit (e.g. ``no_annotations``) as a finished job with a reason."""
        if state not in FINAL_STATES:
            raise ValueError(f"record() takes a final state, not {state!r}")
        now = time.time()
        with Session(self.engine) as s, s.begin():
            row = AuditJobRow(
                study_uid=study_uid, state=state, trigger=trigger, reason=reason, created_at=now,
                started_at=now, finished_at=now, attempts=0, n_samples=0, n_flagged=0,
            )
            s.add(row)
            s.flush()
            return _to_job(row)

    def claim(self, owner: str) -> Job | None:
        """Take the oldest queued job whose study is not being audited by someone else, or None.

        Older queued jobs of the claimed study are superseded: this run reads the study as it is now.
        SQLite: one conditional UPDATE per candidate (queued, and no running job of the same study).
        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent gateways pass over each
        other's candidates instead of waiting; the unique index on running jobs settles a race for
        two queued jobs of one study.
        """
        if is_postgresql(self.engine):
            return self._claim_skip_locked(owner)
        now = time.time()
        other = aliased(AuditJobRow)
        with Session(self.engine) as s:
            busy = select(AuditJobRow.study_uid).where(AuditJobRow.state == RUNNING)
            candidates = s.execute(
                select(AuditJobRow.id, AuditJobRow.study_uid)
                .where(AuditJobRow.state == QUEUED, AuditJobRow.study_uid.not_in(busy))
                .order_by(AuditJobRow.id).limit(8)
            ).all()
        for job_id, study_uid in candidates:
            try:
                with Session(self.engine) as s, s.begin():
                    study_busy = exists().where(other.study_uid == study_uid, other.state == RUNNING)
                    res = s.execute(
                        update(AuditJobRow)
                        .where(AuditJobRow.id == job_id, AuditJobRow.state == QUEUED, ~study_busy)
                        .values(self._running_values(owner, now))
                        .execution_options(synchronize_session=False)
                    )
                    if _rowcount(res) != 1:
                        continue
                    s.execute(
                        update(AuditJobRow)
                        .where(AuditJobRow.study_uid == study_uid, AuditJobRow.state == QUEUED)
                        .values(state=SUPERSEDED, superseded_by=job_id, finished_at=now)
                        .execution_options(synchronize_session=False)
                    )
                    row = s.get(AuditJobRow, job_id)
                    assert row is not None
                    return _to_job(row)
            except IntegrityError:  # the study got a running job meanwhile
                continue
        return None

    def _running_values(self, owner: str, now: float) -> dict[str, object]:
        return {"state": RUNNING, "owner": owner, "lease_until": now + self.lease_s, "started_at": now,
                "finished_at": None, "attempts": AuditJobRow.attempts + 1}

    def _claim_skip_locked(self, owner: str) -> Job | None:
        """PostgreSQL claim: lock the oldest free candidate row, skipping rows other claimers hold."""
        tried: list[int] = []
        for _ in range(8):
            now = time.time()
            try:
                with Session(self.engine) as s, s.begin():
                    busy = select(AuditJobRow.study_uid).where(AuditJobRow.state == RUNNING)
                    q = (select(AuditJobRow.id, AuditJobRow.study_uid)
                         .where(AuditJobRow.state == QUEUED, AuditJobRow.study_uid.not_in(busy))
                         .order_by(AuditJobRow.id).limit(1).with_for_update(skip_locked=True))
                    if tried:
                        q = q.where(AuditJobRow.id.not_in(tried))
                    cand = s.execute(q).first()
                    if cand is None:
                        return None
                    job_id, study_uid = cand
                    tried.append(job_id)
                    s.execute(update(AuditJobRow).where(AuditJobRow.id == job_id)
                              .values(self._running_values(owner, now))
                              .execution_options(synchronize_session=False))
                    others = s.scalars(
                        select(AuditJobRow.id)
                        .where(AuditJobRow.study_uid == study_uid, AuditJobRow.state == QUEUED,
                               AuditJobRow.id != job_id)
                        .with_for_update(skip_locked=True)
                    ).all()
                    if others:
                        s.execute(update(AuditJobRow).where(AuditJobRow.id.in_(others))
                                  .values(state=SUPERSEDED, superseded_by=job_id, finished_at=now)
                                  .execution_options(synchronize_session=False))
                    row = s.get(AuditJobRow, job_id)
                    assert row is not None
                    return _to_job(row)
            except IntegrityError:  # another gateway started an audit of this study first
                continue
        return None

    def heartbeat(self, job_id: int, owner: str) -> bool:
        """Extend the lease of a running job we own; False when we lost it."""
        with Session(self.engine) as s, s.begin():
            res = s.execute(
                update(AuditJobRow)
                .where(AuditJobRow.id == job_id, AuditJobRow.state == RUNNING, AuditJobRow.owner == owner)
                .values(lease_until=time.time() + self.lease_s)
            )
            return _rowcount(res) == 1

    def finish(
        self,
        job_id: int,
        owner: str,
        state: str,
        *,
        reason: str | None = None,
        n_samples: int | None = None,
        n_flagged: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Close a running job we own with a final state. Returns False when the lease was lost.

        A ``done`` job marks the earlier ``done`` jobs of its study as superseded by it.
        """
        if state not in FINAL_STATES:
            raise ValueError(f"finish() takes a final state, not {state!r}")
        now = time.time()
        with Session(self.engine) as s, s.begin():
            res = s.execute(
                update(AuditJobRow)
                .where(AuditJobRow.id == job_id, AuditJobRow.state == RUNNING, AuditJobRow.owner == owner)
                .values(state=state, reason=reason, finished_at=now, lease_until=None, n_samples=n_samples,
                        n_flagged=n_flagged, result_json=json.dumps(result) if result is not None else None)
            )
            if _rowcount(res) != 1:
                return False
            if state in (DONE, NO_ANNOTATIONS):
                study = s.scalar(select(AuditJobRow.study_uid).where(AuditJobRow.id == job_id))
                s.execute(
                    update(AuditJobRow)
                    .where(AuditJobRow.study_uid == study, AuditJobRow.id != job_id,
                           AuditJobRow.state.in_((DONE, NO_ANNOTATIONS)), AuditJobRow.superseded_by.is_(None))
                    .values(superseded_by=job_id)
                )
            return True

    def release(self, job_id: int, owner: str, reason: str) -> bool:
        """Give a running job back to the queue (e.g. on shutdown), or fail it after too many attempts."""
        with Session(self.engine) as s, s.begin():
            row = s.get(AuditJobRow, job_id)
            if row is None or row.state != RUNNING or row.owner != owner:
                return False
            if row.attempts >= self.max_attempts:
                row.state, row.finished_at = FAILED, time.time()
                row.reason = f"gave up after {row.attempts} attempts: {reason}"
            else:
                row.state, row.reason = QUEUED, reason
            row.owner, row.lease_until = None, None
            return True

    def requeue_stale(self, now: float | None = None, *, startup: bool = False) -> list[int]:
        """Re-queue running jobs whose lease expired or whose owner process on this host is gone.

        Call it with ``startup=True`` once when the service starts (before its workers claim anything).
        Jobs that already used up ``max_attempts`` become ``failed`` instead (a study that kills its
        worker every time must not loop forever).
        """
        now = time.time() if now is None else now
        changed: list[int] = []
        with Session(self.engine) as s:
            rows = s.execute(select(AuditJobRow.id, AuditJobRow.owner, AuditJobRow.lease_until,
                                    AuditJobRow.attempts).where(AuditJobRow.state == RUNNING)).all()
        for job_id, owner, lease_until, attempts in rows:
            expired = lease_until is None or lease_until < now
            if not (expired or _owner_process_gone(owner, startup)):
                continue
            why = "lease expired" if expired else "owner process gone"
            if attempts >= self.max_attempts:
                values: dict[str, object] = {"state": FAILED, "finished_at": now,
                                             "reason": f"gave up after {attempts} attempts ({why})"}
            else:
                values = {"state": QUEUED, "reason": f"re-queued: {why}"}
            # Only if nobody touched the job since we read it (its owner may finish or renew it now).
            same = [AuditJobRow.id == job_id, AuditJobRow.state == RUNNING, AuditJobRow.attempts == attempts,
                    AuditJobRow.owner.is_(None) if owner is None else AuditJobRow.owner == owner,
                    AuditJobRow.lease_until.is_(None) if lease_until is None
                    else AuditJobRow.lease_until == lease_until]
            with Session(self.engine) as s, s.begin():
                res = s.execute(update(AuditJobRow).where(*same)
                                .values(owner=None, lease_until=None, **values))
                if _rowcount(res) == 1:
                    changed.append(job_id)
        return changed

    def supersede_queued(self, study_uid: str, keep_id: int) -> int:
        """Mark queued jobs of a study other than ``keep_id`` superseded; returns how many."""
        with Session(self.engine) as s, s.begin():
            res = s.execute(
                update(AuditJobRow)
                .where(AuditJobRow.study_uid == study_uid, AuditJobRow.state == QUEUED, AuditJobRow.id != keep_id)
                .values(state=SUPERSEDED, superseded_by=keep_id, finished_at=time.time())
            )
            return _rowcount(res)

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        with Session(self.engine) as s:
            row = s.get(AuditJobRow, job_id)
            return _to_job(row) if row is not None else None

    def list(self, state: str | None = None, study_uid: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Job]:
        """Jobs, newest first, without their full results."""
        q = select(AuditJobRow).order_by(AuditJobRow.id.desc()).limit(limit).offset(offset)
        if state:
            q = q.where(AuditJobRow.state == state)
        if study_uid:
            q = q.where(AuditJobRow.study_uid == study_uid)
        with Session(self.engine) as s:
            return [_to_job(r, with_result=False) for r in s.scalars(q)]

    def studies_with_jobs(self) -> set[str]:
        """Every study that has a job (any state) in the table."""
        with Session(self.engine) as s:
            return set(s.scalars(select(AuditJobRow.study_uid).distinct()))

    def latest_for_study(self, study_uid: str, states: tuple[str, ...] | None = None) -> Job | None:
        """The newest job of a study (optionally only in the given states), with its result."""
        q = select(AuditJobRow).where(AuditJobRow.study_uid == study_uid).order_by(AuditJobRow.id.desc())
        if states:
            q = q.where(AuditJobRow.state.in_(states))
        with Session(self.engine) as s:
            row = s.scalars(q.limit(1)).first()
            return _to_job(row) if row is not None else None

    def finished_marker(self) -> tuple[float | None, int]:
        """(newest finish time, number) of the finished audits: it changes whenever one finishes."""
        with Session(self.engine) as s:
            newest, n = s.execute(select(func.max(AuditJobRow.finished_at), func.count())
                                  .where(AuditJobRow.state == DONE)).one()
        return newest, int(n)

    def finished_since(self, since: float) -> Sequence[Job]:
        """The finished audits with their results, finished at or after ``since``, in the order they finished
        (two workers may finish a newer job first: readers keep a high-water mark, not the last id)."""
        q = (select(AuditJobRow).where(AuditJobRow.state == DONE, AuditJobRow.finished_at >= since)
             .order_by(AuditJobRow.finished_at, AuditJobRow.id))
        with Session(self.engine) as s:
            return [_to_job(r) for r in s.scalars(q)]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        with Session(self.engine) as s:
            for state, n in s.execute(select(AuditJobRow.state, func.count()).group_by(AuditJobRow.state)):
                out[state] = n
        return out

    def pending(self) -> int:
        """Jobs queued or running."""
        c = self.counts()
        return c[QUEUED] + c[RUNNING]


def open_jobs(database_url: str, lease_s: float = 600.0) -> JobStore:
    """The job store on the service database (engine from :func:`dicom_io.db.make_engine`)."""
    return JobStore(make_engine(database_url), lease_s=lease_s)
