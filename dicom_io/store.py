"""The durable study store: received DICOM bytes on disk, indexed in a database.

``StudyStore.put`` is the promise behind a C-STORE Success: the bytes are written to a temporary
file next to their final place, fsync'd, atomically renamed to
``<data_dir>/studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, the directory is fsync'd, and
the patient/study/series/instance rows are committed; only then does ``put`` return. The file is
the source of truth: ``reconcile`` (run at start-up) removes leftovers of interrupted writes
(``*.tmp``), drops index rows whose file is gone and indexes files that have no row.

A study becomes *stable* after ``stable_after_s`` seconds without a new instance, or at once when a
sender says it is complete (:meth:`StudyStore.complete`); subscribers get a ``StudyStable`` event
from the store's timer thread. A late instance re-opens the study and it is emitted again
(``reopened=True``). Study state is in the index, so a restart re-emits studies whose stable event
was never delivered.

Several gateways may share the data dir and a PostgreSQL index (``dicom_io.gateways``): a starting
gateway's reconciliation never touches what a live one may be writing, and a study is declared
stable only by the gateway that stored its latest instance (a dead gateway's studies are taken
over), never before its quiet period has passed since that instance.

Logs carry UIDs only, never patient names or IDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from dicom_io.db import Base, ensure_schema, insert_ignore, make_engine
from dicom_io.gateways import GatewayRegistry, new_gateway_id
from dicom_io.hooks import checkpoint
from dicom_io.part10 import (  # noqa: F401 - re-exported: the listener maps these errors to statuses
    UID_RE,
    Header,
    InflateBudget,
    InvalidInstance,
    MissingUID,
    SOPClassMismatch,
    TooLarge,
    UnreadableDataset,
    check_structure,
    path_component,
    read_header,
)

__all__ = [
    "InstanceRecord", "StudyStable", "PutResult", "ReconcileReport", "PatientRow", "StudyRow", "SeriesRow",
    "InstanceRow", "StoreEventRow", "DataDirLocked", "StudyStore", "MissingUID", "SOPClassMismatch", "UID_RE",
    "UnreadableDataset", "check_structure", "read_header",
]

log = logging.getLogger("labelqa.store")


# --------------------------------------------------------------------------------------------
# plain records handed to subscribers


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    modality: str | None
    path: Path
    series_number: str | None = None
    manufacturer: str | None = None


@dataclass(frozen=True)
class StudyStable:
    """A study had no new instance for the quiet period; ``reopened`` when emitted before."""

    study_uid: str
    instances: list[InstanceRecord]
    reopened: bool


@dataclass(frozen=True)
class PutResult:
    """Outcome of ``StudyStore.put``: ``status`` is stored, duplicate or replaced."""

    status: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    path: Path


@dataclass
class ReconcileReport:
    """What start-up reconciliation found and did."""

    tmp_removed: int = 0
    tmp_recovered: int = 0
    rows_removed: int = 0
    files_indexed: int = 0
    files_unreadable: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# index tables (on the service database's one Base)


class PatientRow(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of ID + issuer
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))


class StudyRow(Base):
    __tablename__ = "studies"
    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_pk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    study_date: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    first_received: Mapped[float] = mapped_column(Float)
    last_received: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="receiving")  # receiving | stable
    stable_count: Mapped[int] = mapped_column(Integer, default=0)
    stable_at: Mapped[float | None] = mapped_column(Float)
    receiver: Mapped[str | None] = mapped_column(String(32))  # the gateway that stored the latest instance


class SeriesRow(Base):
    __tablename__ = "series"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    manufacturer: Mapped[str | None] = mapped_column(String(64))


class InstanceRow(Base):
    __tablename__ = "instances"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"))
    study_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to data_dir
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    calling_ae: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_instances_study", "study_uid"), Index("ix_instances_series", "series_uid"))


class StoreEventRow(Base):
    """Audit trail of what changed the store other than a plain new instance."""

    __tablename__ = "store_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))  # replaced | nonconforming | stable | reconcile_* | tmp_removed
    study_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


# .<final>.<size>.<sha256[:32]>.<gateway id>-<random>.tmp (older versions: no gateway id)
_TMP_RE = re.compile(
    r"^\.(?P<final>.+\.dcm)\.(?P<size>[0-9]+)\.(?P<sha>[0-9a-f]{32})\.(?:(?P<gw>[0-9a-f]{12})-)?[0-9a-f]+\.tmp$")

# prepared statements of the hot path (plain SQL: no ORM overhead per instance)
_SQL_LOOKUP = text("SELECT sha256, path, study_uid FROM instances WHERE sop_instance_uid = :sop")
_SQL_STUDY_EXISTS = text("SELECT 1 FROM studies WHERE study_uid = :study")
_SQL_SERIES_EXISTS = text("SELECT 1 FROM series WHERE series_uid = :series")
_SQL_INSERT_INSTANCE = text(
    "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid, path,"
    " size, sha256, received_at, calling_ae) VALUES (:sop, :series, :study, :cls, :ts, :path, :size, :sha, :now, :ae)"
)
_SQL_UPDATE_INSTANCE = text(
    "UPDATE instances SET series_uid = :series, study_uid = :study, sop_class_uid = :cls, transfer_syntax_uid = :ts,"
    " path = :path, size = :size, sha256 = :sha, received_at = :now, calling_ae = :ae WHERE sop_instance_uid = :sop"
)
_SQL_TOUCH_STUDY = text(
    "UPDATE studies SET last_received = :now, state = 'receiving', receiver = :gw WHERE study_uid = :study")


# --------------------------------------------------------------------------------------------
# filesystem helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path, stop: Path) -> None:
    """Create ``path`` (and parents up to ``stop``) and fsync each parent that got a new entry."""
    if path.is_dir():
        return
    missing: list[Path] = []
    p = path
    while not p.is_dir() and p != stop and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


# --------------------------------------------------------------------------------------------


class DataDirLocked(RuntimeError):
    """Another process (or store) holds the data directory."""


def _lock_data_dir(data_dir: Path, shared: bool = False) -> int:
    """Lock ``data_dir/.lock`` (flock; released when the process dies), or raise DataDirLocked.

    Exclusive with the embedded SQLite index: one service per data dir. ``shared`` (an index in a
    server database such as PostgreSQL, where several gateways share one data dir by design): any
    number of shared holders, but not beside an exclusive one.
    """
    import fcntl

    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DataDirLocked(
            f"data dir {data_dir} is in use by {holder}; one labelqa service per data dir with the SQLite "
            "index (gateways that share a data dir need a shared database_url, e.g. PostgreSQL)"
        ) from None
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


class StudyStore:
    """Durable on-disk study store with an SQL index and study-stability events."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        stable_after_s: float = 5.0,
        *,
        engine: Engine | None = None,
        reconcile: bool = True,
        fsync_directory: bool = True,
        max_inflated_mb: int = 64,
        inflate_budget_mb: int = 16,
        gateway_lease_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.max_inflated_bytes = int(max_inflated_mb) * 2**20
        self.inflate_budget = InflateBudget(int(inflate_budget_mb) * 2**20)
        """Inflated bytes that all concurrent ``put`` calls may hold while checking deflated instances."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shared_index = bool(database_url) and not str(database_url).startswith("sqlite")
        self._lock_fd: int | None = _lock_data_dir(self.data_dir, shared=shared_index)  # before anything else
        self.gateway_id = new_gateway_id()
        """This store's id among the gateways of a shared index (in its temp file names and ``receiver``)."""
        self.gateway_lease_s = float(gateway_lease_s)
        self.studies_dir = self.data_dir / "studies"
        self.studies_dir.mkdir(parents=True, exist_ok=True)
        self.stable_after_s = float(stable_after_s)
        self.fsync_directory = fsync_directory
        url = database_url or f"sqlite:///{self.data_dir / 'index.sqlite'}"
        # NORMAL is enough for the index: the fsync'd files are the truth and reconcile() rebuilds
        # rows a power cut may have lost (see dicom_io.db.make_engine).
        self.engine = engine or make_engine(url, sqlite_synchronous="NORMAL")
        ensure_schema(self.engine)
        # other gateways exist only beside a shared index (SQLite: one service per data dir, flock'd)
        self._gateways = GatewayRegistry(self.engine, self.gateway_id, gateway_lease_s) if shared_index else None
        self._gateway_thread: threading.Thread | None = None
        self._gateway_stop = threading.Event()
        self._reconcile_again_at: float | None = None  # wall time of a second pass over deferred files
        self._db_lock = threading.Lock()  # one writer at a time (SQLite); cheap for others too
        self._wconn: Connection | None = None
        self._sop_locks = [threading.Lock() for _ in range(64)]
        self._known_series: set[str] = set()
        self._known_studies: set[str] = set()
        self._subscribers: list[Callable[[StudyStable], None]] = []
        self._cv = threading.Condition()
        self._deadlines: dict[str, float] = {}  # study uid -> monotonic time it becomes stable
        self._emit_failures: dict[str, int] = {}  # study uid -> failed deliveries of its stable event
        self._owed: dict[str, set[int]] = {}  # study uid -> subscribers (by index) that still owe handling
        self._complete_now: set[str] = set()  # studies a sender said are complete: no quiet period
        self._expected: dict[str, set[str]] = {}  # study uid -> SOP instances to wait for before completing
        self.retry_base_s, self.retry_max_s = 1.0, 60.0
        self.last_error: str | None = None
        """Why the store is degraded (a stable event that could not be handled), or None."""
        self._timer: threading.Thread | None = None
        self._stopping = False
        if reconcile:
            self.reconcile()
        self._load_pending()

    # ---------------------------------------------------------------- paths and queries

    def study_dir(self, study_uid: str) -> Path:
        """Directory holding a study's series folders."""
        return self.studies_dir / study_uid

    def study_files(self, study_uid: str) -> list[Path]:
        """Files of the indexed instances of a study, sorted by path."""
        with self.engine.connect() as c:
            rows = c.execute(select(InstanceRow.path).where(InstanceRow.study_uid == study_uid)).scalars()
            return sorted(self.data_dir / p for p in rows)

    def studies(self) -> list[str]:
        """Study Instance UIDs in the index."""
        with self.engine.connect() as c:
            return sorted(c.execute(select(StudyRow.study_uid)).scalars())

    def instances(self, study_uid: str | None = None) -> list[InstanceRecord]:
        """Indexed instances (of one study, or all)."""
        q = select(
            InstanceRow.sop_instance_uid,
            InstanceRow.sop_class_uid,
            InstanceRow.series_uid,
            SeriesRow.modality,
            InstanceRow.path,
            SeriesRow.series_number,
            SeriesRow.manufacturer,
        ).join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        if study_uid is not None:
            q = q.where(InstanceRow.study_uid == study_uid)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(InstanceRow.series_uid, InstanceRow.sop_instance_uid)).all()
        return [InstanceRecord(r[0], r[1], r[2], r[3], self.data_dir / r[4], r[5], r[6]) for r in rows]

    def studies_of(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """The studies of the indexed instances among ``sop_instance_uids``."""
        uids = sorted(set(sop_instance_uids))
        out: set[str] = set()
        with self.engine.connect() as c:
            for i in range(0, len(uids), 500):
                q = select(InstanceRow.study_uid).where(InstanceRow.sop_instance_uid.in_(uids[i:i + 500]))
                out |= set(c.execute(q).scalars())
        return out

    def events(self, kind: str | None = None) -> list[dict]:
        """Store events (replacements, stability, reconciliation) as dicts, oldest first."""
        q = select(StoreEventRow).order_by(StoreEventRow.id)
        if kind:
            q = q.where(StoreEventRow.kind == kind)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q).all()]

    # ---------------------------------------------------------------- writing

    @staticmethod
    def _rel_path(h: Header) -> str:
        return (
            f"studies/{path_component(h.study_uid)}/{path_component(h.series_uid)}/"
            f"{path_component(h.sop_instance_uid)}.dcm"
        )

    def _final_path(self, h: Header) -> Path:
        return self.data_dir / self._rel_path(h)

    def _writer(self) -> Connection:
        """The one connection that writes the index (call with ``_db_lock`` held)."""
        if self._wconn is None or self._wconn.closed:
            self._wconn = self.engine.connect()
        return self._wconn

    def _lookup(self, sop_instance_uid: str):
        with self._db_lock:
            c = self._writer()
            try:
                return c.execute(_SQL_LOOKUP, {"sop": sop_instance_uid}).first()
            finally:
                c.rollback()

    def put(
        self,
        raw: bytes,
        *,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        calling_ae: str | None = None,
    ) -> PutResult:
        """Store one instance given as DICOM Part 10 bytes; returns once it is durable and indexed.

        Raises an ``InvalidInstance`` subclass when the bytes cannot be stored as sent, OSError /
        SQLAlchemyError when the disk or the index fail (nothing is indexed then).
        """
        h = read_header(raw, max_inflated_bytes=self.max_inflated_bytes, budget=self.inflate_budget)
        if expected_sop_class_uid and h.sop_class_uid != expected_sop_class_uid:
            raise SOPClassMismatch(
                f"dataset SOP Class {h.sop_class_uid} differs from the request's {expected_sop_class_uid}"
            )
        if expected_sop_instance_uid and h.sop_instance_uid != expected_sop_instance_uid:
            # a PACS stores it under the dataset's own UID (the file meta of some real files disagrees
            # with the dataset); so do we, and record it
            h = dataclasses.replace(h, nonconforming=(
                *h.nonconforming,
                f"the request's Affected SOP Instance UID {expected_sop_instance_uid} differs from the dataset's",
            ))
        digest = hashlib.sha256(raw).hexdigest()
        final = self._final_path(h)
        rel = self._rel_path(h)
        lock = self._sop_locks[hash(h.sop_instance_uid) % len(self._sop_locks)]
        with lock:
            old = self._lookup(h.sop_instance_uid)
            if old is not None and old.sha256 == digest and old.path == rel and final.is_file():
                log.debug("duplicate sop=%s study=%s", h.sop_instance_uid, h.study_uid)
                return PutResult("duplicate", h.sop_instance_uid, h.study_uid, h.series_uid, final)
            self._write_file(final, raw, digest)
            status = "stored" if old is None else ("duplicate" if old.sha256 == digest else "replaced")
            self._index(h, rel, len(raw), digest, calling_ae, old)
            if old is not None and old.path != rel:
                (self.data_dir / old.path).unlink(missing_ok=True)
        if status == "replaced":
            log.info("replaced sop=%s study=%s (different bytes)", h.sop_instance_uid, h.study_uid)
        if status != "duplicate":
            self._touch_study(h.study_uid, h.sop_instance_uid)
        return PutResult(status, h.sop_instance_uid, h.study_uid, h.series_uid, final)

    def _write_file(self, final: Path, raw: bytes, digest: str) -> None:
        """Temp file (named with its size and hash) -> fsync -> atomic rename -> fsync of the directory.

        The name lets start-up recovery tell a complete, fsync'd temp file (rolled forward) from a
        partial one (removed), so an instance acknowledged just before a power cut is never lost,
        even when ``fsync_directory`` is off and the rename itself did not reach the disk.
        """
        _makedirs_durable(final.parent, self.studies_dir)
        tmp = final.parent / f".{final.name}.{len(raw)}.{digest[:32]}.{self.gateway_id}-{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(raw)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            checkpoint("store-before-fsync")  # test hook (dicom_io.hooks); inert unless configured
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)
        if self.fsync_directory:
            _fsync_dir(final.parent)

    def _recover_tmp(self, tmp: Path) -> Path | None:
        """Roll a complete temp file forward to its final name; None (and removed) when it is partial."""
        m = _TMP_RE.match(tmp.name)
        try:
            if m:
                raw = tmp.read_bytes()
                if len(raw) == int(m["size"]) and hashlib.sha256(raw).hexdigest().startswith(m["sha"]):
                    final = tmp.parent / m["final"]
                    os.replace(tmp, final)
                    _fsync_dir(final.parent)
                    return final
        except FileNotFoundError:  # another gateway starting at the same moment rolled it forward
            moved = tmp.parent / m["final"] if m else None
            return moved if moved is not None and moved.is_file() else None
        tmp.unlink(missing_ok=True)
        return None

    def _index(self, h: Header, rel: str, size: int, digest: str, calling_ae: str | None, old) -> None:
        """Insert/update the rows of one instance in one transaction."""
        now = time.time()
        params = {
            "sop": h.sop_instance_uid,
            "series": h.series_uid,
            "study": h.study_uid,
            "cls": h.sop_class_uid,
            "ts": h.transfer_syntax_uid,
            "path": rel,
            "size": size,
            "sha": digest,
            "now": now,
            "ae": calling_ae,
            "gw": self.gateway_id,
        }
        with self._db_lock:
            c = self._writer()
            try:
                if h.study_uid not in self._known_studies:
                    if c.execute(_SQL_STUDY_EXISTS, {"study": h.study_uid}).first() is None:
                        c.execute(
                            insert_ignore(c, StudyRow).values(
                                study_uid=h.study_uid,
                                patient_pk=self._patient_pk(c, h),
                                study_date=h.study_date,
                                accession_number=h.accession_number,
                                description=h.study_description,
                                first_received=now,
                                last_received=now,
                                state="receiving",
                                stable_count=0,
                                receiver=self.gateway_id,
                            )
                        )
                if h.series_uid not in self._known_series:
                    if c.execute(_SQL_SERIES_EXISTS, {"series": h.series_uid}).first() is None:
                        c.execute(
                            insert_ignore(c, SeriesRow).values(
                                series_uid=h.series_uid,
                                study_uid=h.study_uid,
                                modality=h.modality,
                                series_number=h.series_number,
                                description=h.series_description,
                                manufacturer=h.manufacturer,
                            )
                        )
                if old is None:
                    c.execute(_SQL_INSERT_INSTANCE, params)
                else:
                    c.execute(_SQL_UPDATE_INSTANCE, params)
                    if old.sha256 != digest:
                        c.execute(
                            insert(StoreEventRow).values(
                                at=now,
                                kind="replaced",
                                study_uid=h.study_uid,
                                sop_instance_uid=h.sop_instance_uid,
                                detail=f"sha256 {old.sha256} -> {digest}; path {old.path} -> {rel}",
                            )
                        )
                if h.nonconforming and (old is None or old.sha256 != digest):
                    c.execute(
                        insert(StoreEventRow).values(
                            at=now,
                            kind="nonconforming",
                            study_uid=h.study_uid,
                            sop_instance_uid=h.sop_instance_uid,
                            detail="; ".join(h.nonconforming),
                        )
                    )
                c.execute(_SQL_TOUCH_STUDY, params)
                c.commit()
            except BaseException:
                c.rollback()
                raise
            self._known_studies.add(h.study_uid)
            self._known_series.add(h.series_uid)

    @staticmethod
    def _patient_pk(c, h: Header) -> int:
        key = hashlib.sha256(f"{h.patient_id or ''}\x00{h.issuer or ''}".encode()).hexdigest()
        q = select(PatientRow.id).where(PatientRow.patient_key == key)
        pk = c.execute(q).scalar()
        if pk is None:  # another gateway on the same database may insert it at the same moment
            c.execute(insert_ignore(c, PatientRow).values(
                patient_key=key, patient_id=h.patient_id, issuer=h.issuer, patient_name=h.patient_name))
            pk = c.execute(q).scalar_one()
        return pk

    # ---------------------------------------------------------------- reconciliation

    def reconcile(self, *, second_pass: bool = False) -> ReconcileReport:
        """Make the index agree with the files: drop temp leftovers, stale rows; index orphan files.

        Beside live gateways on a shared index nothing they may be writing is touched: their temp files
        (named with their gateway id) are left, and files without a row that are younger than the
        gateway lease are left for a second pass one lease later (they may be renamed but not yet
        indexed). Rows are read before the files are listed, so a row committed meanwhile is never
        taken for stale; a row is removed only while it still names the missing file. The second pass
        defers nothing further: what is still young then belongs to a gateway that is writing it.
        """
        rep = ReconcileReport()
        live = self._gateways.live_others() if self._gateways is not None else set()
        if self._gateways is not None and self._timer is not None:  # a pass while this gateway runs: its own
            live.add(self.gateway_id)  # writes in progress are left alone too
        with self.engine.connect() as c:
            q = select(InstanceRow.sop_instance_uid, InstanceRow.path, InstanceRow.size)
            rows = {r.path: r for r in c.execute(q)}
        if not second_pass:
            checkpoint("reconcile")  # test hook (dicom_io.hooks): another gateway ingests here
        listed_at = time.time()
        on_disk: dict[str, Path] = {}
        rolled: set[str] = set()
        deferred = 0
        for dirpath, _dirs, files in os.walk(self.studies_dir):
            for name in sorted(files, key=lambda n: not n.endswith(".tmp")):  # temp files first
                p = Path(dirpath) / name
                if name.endswith(".tmp"):
                    m = _TMP_RE.match(name)
                    if live and (m is None or m["gw"] is None or m["gw"] in live):
                        deferred += 1  # a live gateway's write in progress (or an old one's: cannot tell)
                        continue
                    final = self._recover_tmp(p)
                    if final is None:
                        rep.tmp_removed += 1
                        continue
                    rep.tmp_recovered += 1
                    rolled.add(final.relative_to(self.data_dir).as_posix())
                    on_disk[final.relative_to(self.data_dir).as_posix()] = final
                elif name.endswith(".dcm"):
                    on_disk[p.relative_to(self.data_dir).as_posix()] = p
        now = time.time()
        stale = [r for path, r in rows.items() if path not in on_disk]  # the file is gone
        if stale:
            with self._db_lock, self.engine.begin() as c:
                for r in stale:
                    gone = c.execute(delete(InstanceRow).where(
                        InstanceRow.sop_instance_uid == r.sop_instance_uid, InstanceRow.path == r.path,
                        InstanceRow.size == r.size)).rowcount
                    if not gone:  # replaced meanwhile: the row names another file now
                        continue
                    rep.rows_removed += 1
                    c.execute(
                        insert(StoreEventRow).values(
                            at=now, kind="reconcile_row_removed", sop_instance_uid=r.sop_instance_uid, detail=r.path
                        )
                    )
        for rel, p in sorted(on_disk.items()):
            try:
                if rel in rows and rel not in rolled and p.stat().st_size == rows[rel].size:
                    continue
            except FileNotFoundError:  # replaced meanwhile
                continue
            if live and rel not in rolled:
                try:
                    young = p.stat().st_mtime > listed_at - self.gateway_lease_s
                except FileNotFoundError:
                    continue
                if young:  # maybe a live gateway's, renamed but not yet indexed
                    deferred += 1
                    continue
            self._reconcile_file(rel, p, rep, now)
        if deferred and not second_pass:
            self._reconcile_again_at = time.time() + self.gateway_lease_s
            log.info("reconcile: %d file(s) live gateways may be writing left for a second pass in %.0f s",
                     deferred, self.gateway_lease_s)
        if rep.tmp_removed or rep.tmp_recovered or rep.rows_removed or rep.files_indexed or rep.files_unreadable:
            log.info(
                "reconcile: %d complete temp files rolled forward, removed %d partial ones and %d stale rows; "
                "indexed %d files; %d unreadable",
                rep.tmp_recovered,
                rep.tmp_removed,
                rep.rows_removed,
                rep.files_indexed,
                len(rep.files_unreadable),
            )
        return rep

    def _reconcile_file(self, rel: str, p: Path, rep: ReconcileReport, now: float) -> None:
        """Index one file found without a matching row (its row added, or updated to match the file)."""
        from sqlalchemy.exc import IntegrityError

        try:
            raw = p.read_bytes()
        except FileNotFoundError:  # replaced meanwhile
            return
        try:  # a file once accepted is indexed whatever it inflates to (the walk holds a chunk at a time)
            h = read_header(raw, max_inflated_bytes=1 << 62, budget=self.inflate_budget)
        except InvalidInstance as e:
            log.warning("reconcile: unreadable file %s left unindexed (%s)", rel, e.reason)
            rep.files_unreadable.append(rel)
            return
        if self._final_path(h) != p:
            log.warning("reconcile: file %s is not where its UIDs say; left unindexed", rel)
            rep.files_unreadable.append(rel)
            return
        digest = hashlib.sha256(raw).hexdigest()
        with self.engine.connect() as c:
            old = c.execute(
                select(InstanceRow.sha256, InstanceRow.path, InstanceRow.study_uid).where(
                    InstanceRow.sop_instance_uid == h.sop_instance_uid
                )
            ).first()
        if old is not None and old.path == rel and old.sha256 == digest:
            return  # indexed meanwhile (by the gateway that wrote it)
        try:
            self._index(h, rel, len(raw), digest, None, old)
        except IntegrityError:  # another gateway indexed it at this very moment
            return
        with self._db_lock, self.engine.begin() as c:
            c.execute(
                insert(StoreEventRow).values(
                    at=now,
                    kind="reconcile_file_indexed",
                    study_uid=h.study_uid,
                    sop_instance_uid=h.sop_instance_uid,
                    detail=rel,
                )
            )
        rep.files_indexed += 1

    # ---------------------------------------------------------------- stability

    def subscribe(self, callback: Callable[[StudyStable], None]) -> None:
        """Call ``callback(StudyStable)`` (from the store's timer thread) whenever a study becomes stable.

        Keep callbacks short (enqueue work); an exception is logged and does not stop other subscribers.
        """
        self._subscribers.append(callback)

    def _touch_study(self, study_uid: str, sop_instance_uid: str | None = None) -> None:
        with self._cv:
            expected = self._expected.get(study_uid)
            if expected is not None and sop_instance_uid is not None:
                expected.discard(sop_instance_uid)
                if not expected:  # the last instance a sender announced has arrived: complete now
                    del self._expected[study_uid]
                    self._complete_now.add(study_uid)
                    self._deadlines[study_uid] = time.monotonic()
                    self._cv.notify()
                    return
            if study_uid in self._complete_now:
                self._deadlines[study_uid] = time.monotonic()
                self._cv.notify()
                return
            new = study_uid not in self._deadlines
            self._deadlines[study_uid] = time.monotonic() + self.stable_after_s
            if new:  # a later deadline for a pending study needs no wake-up: the timer re-checks
                self._cv.notify()

    def complete(self, study_uid: str, expected: Iterable[str] = ()) -> str:
        """A sender says ``study_uid`` is complete: emit it as stable now, without the quiet period.

        ``expected``: SOP Instance UIDs the sender names as part of the study (e.g. an MPPS): the study
        is complete once the last of them is stored (at once when they all are). Returns ``unknown``
        (no instance of the study is stored and none is expected), ``complete`` (already stable, no
        new instance since), ``waiting`` (for expected instances) or ``completing``.
        """
        with self.engine.connect() as c:
            state = c.execute(select(StudyRow.state).where(StudyRow.study_uid == study_uid)).scalar()
            missing = set(expected)
            if missing:
                stored = c.execute(select(InstanceRow.sop_instance_uid).where(
                    InstanceRow.sop_instance_uid.in_(sorted(missing)))).scalars()
                missing -= set(stored)
        if missing:
            with self._cv:
                self._expected[study_uid] = missing
            log.info("study %s: complete once %d more instance(s) arrive", study_uid, len(missing))
            return "waiting"
        if state is None:
            return "unknown"
        if state != "receiving":
            return "complete"
        with self._cv:
            self._complete_now.add(study_uid)
            self._deadlines[study_uid] = time.monotonic()
            self._cv.notify()
        log.info("study %s: complete by the sender's word", study_uid)
        return "completing"

    def _live_others(self, *, refresh: bool = False) -> set[str]:
        return self._gateways.live_others(refresh=refresh) if self._gateways is not None else set()

    def _load_pending(self) -> None:
        """Schedule the studies still receiving that no live gateway is receiving (after a restart, or the
        studies of a gateway that died)."""
        live = self._live_others(refresh=True)
        with self.engine.connect() as c:
            rows = c.execute(select(StudyRow.study_uid, StudyRow.last_received, StudyRow.receiver).where(
                StudyRow.state == "receiving")).all()
        now_wall, now_mono = time.time(), time.monotonic()
        with self._cv:
            for uid, last, receiver in rows:
                if receiver is not None and receiver in live:
                    continue  # that gateway declares it complete
                wait = max(0.0, last + self.stable_after_s - now_wall)
                self._deadlines.setdefault(uid, now_mono + wait)

    def start(self) -> None:
        """Start the stability timer thread (idempotent); with a shared index, register this gateway."""
        if self._timer is not None and self._timer.is_alive():
            return
        self._stopping = False
        if self._gateways is not None:
            self._gateways.renew()
            self._gateway_stop.clear()
            self._gateway_thread = threading.Thread(target=self._gateway_loop, name="labelqa-gateway", daemon=True)
            self._gateway_thread.start()
        self._timer = threading.Thread(target=self._timer_loop, name="labelqa-stability", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer thread; pending studies stay 'receiving' in the index for the next start."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._timer is not None:
            self._timer.join(timeout=10)
            self._timer = None
        if self._gateway_thread is not None:
            self._gateway_stop.set()
            self._gateway_thread.join(timeout=10)
            self._gateway_thread = None
            try:
                self._gateways.deregister()  # type: ignore[union-attr]  # set with the thread
            except Exception as e:  # noqa: BLE001 - its lease runs out anyway
                log.warning("gateway %s: could not deregister (%s)", self.gateway_id, type(e).__name__)

    def _gateway_loop(self) -> None:
        """Renew the lease, take over the studies of dead gateways, and run the deferred second reconcile."""
        assert self._gateways is not None
        while not self._gateway_stop.wait(self.gateway_lease_s / 3):
            try:
                self._gateways.renew()
                self._load_pending()  # studies whose gateway died (its lease ran out) are ours now
                if self._reconcile_again_at is not None and time.time() >= self._reconcile_again_at:
                    self._reconcile_again_at = None
                    self.reconcile(second_pass=True)
            except Exception as e:  # noqa: BLE001 - the database may be down for a while: try again
                log.warning("gateway %s: lease renewal failed (%s: %s)", self.gateway_id, type(e).__name__, e)

    def close(self) -> None:
        """Stop the timer and release the database connections."""
        self.stop()
        with self._db_lock:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _timer_loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping:
                    now = time.monotonic()
                    due = [uid for uid, t in self._deadlines.items() if t <= now]
                    if due:
                        for uid in due:
                            del self._deadlines[uid]
                        break
                    nxt = min(self._deadlines.values(), default=None)
                    self._cv.wait(timeout=None if nxt is None else max(0.0, nxt - now) + 0.005)
                if self._stopping:
                    return
            for uid in due:
                try:
                    self._emit_stable(uid)
                except Exception as e:  # e.g. the index locked by another writer: try again later
                    self.last_error = f"could not mark a study complete ({type(e).__name__}); retrying"
                    log.exception("stability: could not emit study=%s; retry in %.0f s", uid, self.retry_max_s / 4)
                    with self._cv:
                        self._deadlines.setdefault(uid, time.monotonic() + self.retry_max_s / 4)

    def _emit_stable(self, study_uid: str) -> None:
        """Deliver a stable event, then mark the study stable (so a crash in between re-emits).

        Never before the quiet period has passed since the study's latest instance (whichever gateway
        stored it), unless a sender said it is complete; a study a live gateway is receiving is left to
        it; one whose gateway died is claimed first (one taker).
        """
        now = time.time()
        with self.engine.connect() as c:
            row = c.execute(
                select(StudyRow.state, StudyRow.stable_count, StudyRow.last_received, StudyRow.receiver).where(
                    StudyRow.study_uid == study_uid
                )
            ).first()
        if row is None or row.state != "receiving":
            self._complete_now.discard(study_uid)
            return
        if study_uid not in self._complete_now:
            if row.receiver not in (None, self.gateway_id) and row.receiver in self._live_others():
                return  # another gateway stored its latest instance: that one declares it complete
            wait = row.last_received + self.stable_after_s - now
            if wait > 0:  # an instance arrived since this deadline was set (here or at another gateway)
                with self._cv:
                    self._deadlines[study_uid] = min(self._deadlines.get(study_uid, math.inf),
                                                     time.monotonic() + wait)
                    self._cv.notify()
                return
        if row.receiver != self.gateway_id and self._gateways is not None:
            with self._db_lock, self.engine.begin() as c:
                claimed = c.execute(update(StudyRow).where(
                    StudyRow.study_uid == study_uid, StudyRow.last_received == row.last_received,
                    StudyRow.receiver == row.receiver if row.receiver is not None else StudyRow.receiver.is_(None),
                ).values(receiver=self.gateway_id)).rowcount
            if not claimed:  # changed meanwhile: whoever changed it has its own deadline
                return
        instances = self.instances(study_uid)
        event = StudyStable(study_uid, instances, reopened=row.stable_count > 0)
        log.info("study stable study=%s instances=%d reopened=%s", study_uid, len(instances), event.reopened)
        subscribers = list(self._subscribers)
        owed = self._owed.get(study_uid) or set(range(len(subscribers)))
        failed: set[int] = set()
        for i in sorted(owed):
            if i >= len(subscribers):
                continue
            try:
                subscribers[i](event)
            except Exception as e:
                failed.add(i)
                self.last_error = f"study-complete handling failed ({type(e).__name__}: {e}); retrying"
                log.exception("stability subscriber failed for study=%s", study_uid)
        if failed:
            # not marked stable: the event goes again to the subscribers that failed (with backoff, and
            # to every subscriber after a restart) until each took it; subscribers are idempotent
            self._owed[study_uid] = failed
            n = self._emit_failures.get(study_uid, 0) + 1
            self._emit_failures[study_uid] = n
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** (n - 1))
            log.warning("study=%s: %d subscriber(s) failed (attempt %d); retry in %.0f s", study_uid, len(failed),
                        n, delay)
            with self._cv:
                self._deadlines[study_uid] = time.monotonic() + delay
                self._cv.notify()
            return
        self._owed.pop(study_uid, None)
        self._emit_failures.pop(study_uid, None)
        self._complete_now.discard(study_uid)
        if not self._emit_failures:
            self.last_error = None
        with self._db_lock, self.engine.begin() as c:
            # only if no instance arrived meanwhile; otherwise the new deadline emits again
            c.execute(
                update(StudyRow)
                .where(StudyRow.study_uid == study_uid, StudyRow.last_received == row.last_received)
                .values(state="stable", stable_count=row.stable_count + 1, stable_at=now)
            )
            c.execute(
                insert(StoreEventRow).values(
                    at=now,
                    kind="stable",
                    study_uid=study_uid,
                    detail=f"{len(instances)} instances; reopened={event.reopened}",
                )
            )

    def stable_studies(self) -> list[str]:
        """The studies marked stable (complete)."""
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(select(StudyRow.study_uid).where(StudyRow.state == "stable"))]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no study is pending stability (for tests and the demo); True when idle."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cv:
                if not self._deadlines:
                    return True
            time.sleep(0.05)
        return False
