"""Durable outbox: result objects are delivered to every destination, surviving outages and restarts.

Each (object, destination) pair is a row in ``outbox_items`` (on the service database) *before* the
first attempt, and is marked ``delivered`` only after the peer confirmed it (C-STORE success or a
storage warning; STOW-RS ``ReferencedSOPSequence``). Failures are retried with exponential backoff
and jitter; after ``max_attempts`` a row is ``dead`` with its last error, visible to
``labelqa outbox list`` and re-queued by ``labelqa outbox retry``. Every destination is served by its
own worker thread, so a destination that is down never delays the others. A restart resumes the
pending rows (delivery is at-least-once: re-sending the same SOP Instance UID is harmless).

On PostgreSQL several gateways may serve one outbox: a batch is taken with
``SELECT ... FOR UPDATE SKIP LOCKED`` and its row locks are held until the outcome is recorded, so
two senders never send the same row at once (a sender that dies releases its locks with its
connection; the rows are then sent again, at-least-once as above). SQLite keeps one sender.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import Engine, Float, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from dicom_io.db import Base, ensure_schema, is_postgresql
from dicom_io.hooks import checkpoint
from dicom_io.scu import AssociationError, FileInfo, StoreOutcome, file_info, store_files
from dicom_io.settings import Destination, OutboxSettings

__all__ = [
    "DEAD", "DELIVERED", "PENDING", "OutboxItem", "backoff_delay", "Sender", "dicom_sender", "dicomweb_sender",
    "Outbox",
]

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


class OutboxItem(Base):
    """One result object to deliver to one destination."""

    __tablename__ = "outbox_items"
    __table_args__ = (UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_dest_sop"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True, default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def backoff_delay(attempts: int, cfg: OutboxSettings, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after ``attempts`` failures: base * 2^(n-1), capped, +-jitter."""
    base = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** max(0, attempts - 1)))
    r = (rng or random).uniform(-cfg.jitter, cfg.jitter)
    return max(0.0, base * (1.0 + r))


Sender = Callable[[Destination, Sequence[FileInfo]], list[StoreOutcome]]


def dicom_sender(cfg: OutboxSettings) -> Sender:
    """Send a batch to a DICOM destination over one association (``dicom_io.scu``)."""

    def send(dest: Destination, files: Sequence[FileInfo]) -> list[StoreOutcome]:
        if dest.host is None or dest.port is None or dest.ae_title is None:
            raise TypeError(f"DICOM destination {dest.name!r} needs host, port and ae_title")
        return store_files(
            files, host=dest.host, port=int(dest.port), called_ae=dest.ae_title, calling_ae=cfg.calling_ae_title,
            connect_timeout_s=cfg.connect_timeout_s, dimse_timeout_s=cfg.dimse_timeout_s,
            tls=bool(getattr(dest, "tls", False)), tls_ca=getattr(dest, "tls_ca", None),
            tls_cert=getattr(dest, "tls_cert", None), tls_key=getattr(dest, "tls_key", None),
        )

    return send


def dicomweb_sender(cfg: OutboxSettings) -> Sender:
    """Send a batch to a DICOMweb destination with one STOW-RS request (dicomweb-client)."""

    def send(dest: Destination, files: Sequence[FileInfo]) -> list[StoreOutcome]:
        import requests
        from dicomweb_client.api import DICOMwebClient
        from pydicom import dcmread

        if dest.url is None:
            raise TypeError(f"DICOMweb destination {dest.name!r} needs a url")
        client = DICOMwebClient(url=dest.url)
        try:
            rsp = client.store_instances(datasets=[dcmread(f.path) for f in files])
        except requests.exceptions.HTTPError as e:
            code = getattr(e.response, "status_code", None)
            if code is not None and 400 <= code < 500 and code not in (408, 429):
                return [StoreOutcome(f.sop_instance_uid, False, code, f"STOW-RS HTTP {code}") for f in files]
            raise AssociationError(f"STOW-RS to {dest.url} failed: HTTP {code}") from e
        except requests.exceptions.RequestException as e:
            raise AssociationError(f"STOW-RS to {dest.url} failed: {type(e).__name__}") from e
        ok = {str(it.ReferencedSOPInstanceUID) for it in (rsp.get("ReferencedSOPSequence") or [])}
        failed = {str(it.ReferencedSOPInstanceUID): int(it.get("FailureReason", 0xC000))
                  for it in (rsp.get("FailedSOPSequence") or [])}
        out = []
        for f in files:
            if f.sop_instance_uid in ok:
                out.append(StoreOutcome(f.sop_instance_uid, True, 0))
            else:
                code = failed.get(f.sop_instance_uid)
                out.append(StoreOutcome(f.sop_instance_uid, False, code,
                                        f"STOW-RS failure 0x{code:04X}" if code is not None else "not confirmed"))
        return out

    return send


class Outbox:
    """The durable outbox on ``engine`` for ``destinations`` (objects with name, kind, ae_title, host, port, url)."""

    def __init__(
        self,
        engine: Engine,
        destinations: Iterable[Destination],
        *,
        settings: OutboxSettings | None = None,
        spool_dir: Path | None = None,
        senders: dict[str, Sender] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.destinations = {d.name: d for d in destinations}
        self.cfg = settings if settings is not None else OutboxSettings()
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.senders = senders or {"dicom": dicom_sender(self.cfg), "dicomweb": dicomweb_sender(self.cfg)}
        self.clock = clock
        self._rng = random.Random()
        self._wake = {name: threading.Event() for name in self.destinations}  # set by enqueue: send now
        ensure_schema(engine)

    # ---- enqueue -------------------------------------------------------------------------------
    def _spool(self, ds: Dataset) -> Path:
        if self.spool_dir is None:
            raise ValueError("enqueueing datasets needs a spool_dir (or enqueue files that are already written)")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        p = self.spool_dir / f"{ds.SOPInstanceUID}.dcm"
        tmp = p.with_suffix(".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(p)
        return p

    def enqueue(self, paths_or_datasets: Iterable[Path | str | Dataset], destination: str | None = None) -> list[int]:
        """Record objects for delivery to ``destination`` (default: every destination); returns row ids.

        An object already queued for a destination is re-queued (same row), not duplicated.
        Raises ValueError for an unknown destination or a file that is not DICOM.
        """
        if destination is not None and destination not in self.destinations:
            raise ValueError(f"unknown destination {destination!r}; configured: {sorted(self.destinations)}")
        names = [destination] if destination else list(self.destinations)
        infos = []
        for obj in paths_or_datasets:
            path = self._spool(obj) if isinstance(obj, Dataset) else Path(obj).resolve()
            infos.append(file_info(path))
        now = self.clock()
        ids: list[int] = []
        with Session(self.engine) as s, s.begin():
            for name in names:
                for info in infos:
                    row = s.scalar(select(OutboxItem).where(
                        OutboxItem.destination == name, OutboxItem.sop_instance_uid == info.sop_instance_uid))
                    if row is None:
                        row = OutboxItem(destination=name, sop_instance_uid=info.sop_instance_uid, created_at=now)
                        s.add(row)
                    row.sop_class_uid = info.sop_class_uid
                    row.transfer_syntax_uid = info.transfer_syntax_uid
                    row.path = str(info.path)
                    row.state, row.attempts, row.next_attempt_at = PENDING, 0, now
                    row.last_error, row.last_status, row.delivered_at, row.updated_at = None, None, None, now
                    s.flush()
                    ids.append(row.id)
        for name in names:  # the destination's worker sends now instead of at its next poll
            self._wake[name].set()
        log.info("outbox: %d object(s) queued for %s", len(infos), ", ".join(names) or "no destination")
        return ids

    # ---- inspection ----------------------------------------------------------------------------
    def list(self, state: str | None = None, destination: str | None = None) -> list[dict[str, object]]:
        """Rows as dicts (id, destination, sop_instance_uid, sop_class_uid, state, attempts, last_error...)."""
        q = select(OutboxItem).order_by(OutboxItem.id)
        if state:
            q = q.where(OutboxItem.state == state)
        if destination:
            q = q.where(OutboxItem.destination == destination)
        with Session(self.engine) as s:
            return [_row_dict(r) for r in s.scalars(q)]

    def counts(self) -> dict[str, int]:
        """Number of rows per state (pending, delivered, dead)."""
        with Session(self.engine) as s:
            rows = s.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all()
        out = {PENDING: 0, DELIVERED: 0, DEAD: 0}
        out.update({k: int(v) for k, v in rows})
        return out

    def retry(self, item_id: int | None = None, *, destination: str | None = None) -> int:
        """Re-queue dead (or pending) rows now with a fresh attempt budget: one row, or all dead rows
        (of one destination). Returns how many rows were re-queued."""
        q = update(OutboxItem).values(state=PENDING, attempts=0, next_attempt_at=self.clock(), updated_at=self.clock())
        if item_id is not None:
            q = q.where(OutboxItem.id == item_id, OutboxItem.state != DELIVERED)
        else:
            q = q.where(OutboxItem.state == DEAD)
            if destination:
                q = q.where(OutboxItem.destination == destination)
        with self.engine.begin() as c:
            return int(c.execute(q).rowcount or 0)

    # ---- delivery ------------------------------------------------------------------------------
    def _due(self, s: Session, name: str, limit: int, *, lock: bool = False) -> Sequence[OutboxItem]:
        """Due rows of ``name``; ``lock``: row-locked for this transaction, skipping rows others hold."""
        now = self.clock()
        q = (select(OutboxItem)
             .where(OutboxItem.destination == name, OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now)
             .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
             .limit(limit))
        if lock:
            q = q.with_for_update(skip_locked=True)
        return s.scalars(q).all()

    def _next_due_in(self, name: str) -> float | None:
        with Session(self.engine) as s:
            t = s.scalar(select(func.min(OutboxItem.next_attempt_at)).where(
                OutboxItem.destination == name, OutboxItem.state == PENDING))
        return None if t is None else max(0.0, float(t) - self.clock())

    def _failed(self, s: Session, row_id: int, error: str, status: int | None, now: float) -> bool:
        row = s.get(OutboxItem, row_id)
        if row is None or row.state != PENDING:
            return False
        row.attempts += 1
        row.last_error, row.last_status, row.updated_at = error[:2000], status, now
        if row.attempts >= self.cfg.max_attempts:
            row.state = DEAD
            log.warning("outbox: %s -> %s dead-lettered after %d attempts: %s",
                        row.sop_instance_uid, row.destination, row.attempts, error)
            return True
        row.next_attempt_at = now + backoff_delay(row.attempts, self.cfg, self._rng)
        log.info("outbox: %s -> %s not delivered (attempt %d: %s); next try in %.1f s", row.sop_instance_uid,
                 row.destination, row.attempts, error, row.next_attempt_at - now)
        return False

    def deliver_once(self, name: str) -> int:
        """Send one batch of due rows to destination ``name``; returns how many were delivered."""
        if is_postgresql(self.engine):
            # The batch's row locks are held while sending: no other gateway takes these rows.
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                rows = self._due(s, name, self.cfg.batch_size, lock=True)
                return self._send_batch(name, rows, s) if rows else 0
        with Session(self.engine, expire_on_commit=False) as s:
            rows = self._due(s, name, self.cfg.batch_size)
        if not rows:
            return 0
        with Session(self.engine) as s, s.begin():
            return self._send_batch(name, rows, s)

    def _send_batch(self, name: str, rows: Sequence[OutboxItem], s: Session) -> int:
        """Send ``rows`` to ``name`` and record each outcome in ``s`` (an open transaction)."""
        dest = self.destinations[name]
        sender = self.senders[getattr(dest, "kind", "dicom")]
        prior_attempts = max(r.attempts for r in rows)
        files, missing = [], []
        for r in rows:
            if Path(r.path).is_file():
                files.append(FileInfo(Path(r.path), r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid))
            else:
                missing.append(r)
        outcomes: list[StoreOutcome] = []
        batch_error: str | None = None
        if files:
            try:
                outcomes = sender(dest, files)
            except (AssociationError, OSError) as e:
                batch_error = str(e) or type(e).__name__
            else:
                checkpoint("outbox-after-send")  # test hook (dicom_io.hooks); inert unless configured
        now = self.clock()
        by_uid = {r.sop_instance_uid: r for r in rows}
        delivered = 0
        for r in missing:
            self._failed(s, r.id, f"file missing: {r.path}", None, now)
        if batch_error is not None:
            # the destination is unreachable: back off this batch and rest the whole destination
            for f in files:
                self._failed(s, by_uid[f.sop_instance_uid].id, batch_error, None, now)
            rest = now + backoff_delay(prior_attempts + 1, self.cfg, self._rng)
            rested = select(OutboxItem.id).where(
                OutboxItem.destination == name, OutboxItem.state == PENDING, OutboxItem.next_attempt_at < rest)
            if is_postgresql(s):  # leave rows another gateway is sending alone
                rested = rested.with_for_update(skip_locked=True)
            ids = list(s.scalars(rested))
            if ids:
                s.execute(update(OutboxItem).where(OutboxItem.id.in_(ids)).values(next_attempt_at=rest)
                          .execution_options(synchronize_session=False))
            log.warning("outbox: destination %s unavailable (%s); next try in %.1f s", name, batch_error,
                        rest - now)
        for o in outcomes:
            row_id = by_uid[o.sop_instance_uid].id
            if o.delivered:
                row = s.get(OutboxItem, row_id)
                assert row is not None
                row.state, row.delivered_at, row.updated_at = DELIVERED, now, now
                row.last_status, row.last_error = o.status, None
                row.attempts += 1
                delivered += 1
            else:
                self._failed(s, row_id, o.error or "not delivered", o.status, now)
        if delivered:
            log.info("outbox: %d object(s) delivered to %s", delivered, name)
        return delivered

    def _worker(self, name: str, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sent = self.deliver_once(name)
            except Exception:  # noqa: BLE001 - keep the worker alive; the rows stay pending
                log.exception("outbox: delivery to %s failed unexpectedly", name)
                sent = 0
            if sent:
                continue
            wait = self._next_due_in(name)
            woken = self._wake[name].wait(self.cfg.poll_interval_s if wait is None else
                                          min(self.cfg.poll_interval_s, wait))
            if woken:
                self._wake[name].clear()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Deliver until ``stop_event`` is set: one worker thread per destination (no head-of-line blocking)."""
        threads = [threading.Thread(target=self._worker, args=(n, stop_event), name=f"labelqa-outbox-{n}",
                                    daemon=True) for n in self.destinations]
        for t in threads:
            t.start()
        stop_event.wait()
        for event in self._wake.values():  # the workers see the stop at once
            event.set()
        for t in threads:
            t.join(timeout=max(30.0, self.cfg.dimse_timeout_s))

    def run_until_idle(self, timeout_s: float | None = None) -> dict[str, int]:
        """Deliver until no row is pending (waiting out backoffs) or ``timeout_s`` passed; returns counts."""
        stop = threading.Event()
        runner = threading.Thread(target=self.run_forever, args=(stop,), daemon=True)
        runner.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while self.counts()[PENDING] and (deadline is None or time.monotonic() < deadline):
                time.sleep(min(0.2, self.cfg.poll_interval_s))
        finally:
            stop.set()
            runner.join()
        return self.counts()


def _row_dict(r: OutboxItem) -> dict[str, object]:
    return {
        "id": r.id, "destination": r.destination, "sop_instance_uid": r.sop_instance_uid,
        "sop_class_uid": r.sop_class_uid, "transfer_syntax_uid": r.transfer_syntax_uid, "path": r.path,
        "state": r.state, "attempts": r.attempts, "next_attempt_at": r.next_attempt_at,
        "last_error": r.last_error, "last_status": r.last_status, "created_at": r.created_at,
        "delivered_at": r.delivered_at,
    }
