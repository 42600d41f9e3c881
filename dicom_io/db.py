"""The one way to open the index database: an SQLAlchemy engine tuned for concurrent use.

SQLite (the default, a file in the data dir) gets write-ahead logging, a 30 s busy timeout and
foreign keys on every connection; PostgreSQL (``postgresql+psycopg://user@host/db``, or a unix
socket: ``postgresql+psycopg://user@/db?host=/run/postgresql``) gets pre-pinged pooled connections.
Code that must differ between the two asks :func:`is_postgresql` (row locks with ``SKIP LOCKED``)
or uses :func:`insert_ignore` (``INSERT ... ON CONFLICT DO NOTHING``, both dialects).

Every table of the service database is declared on the one :class:`Base` (store index, jobs,
outbox, review decisions), so one metadata describes the whole schema. The service applies its
Alembic migrations (``service/migrations``) at start-up; :func:`ensure_schema` leaves a database
that carries them alone and only creates missing tables where no migration ever ran (this layer
used on its own, e.g. a test's store or the demo's stand-in archive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

__all__ = ["SqliteSync", "MIGRATIONS_TABLE", "Base", "ensure_schema", "make_engine", "is_postgresql", "insert_ignore"]

SqliteSync = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

MIGRATIONS_TABLE = "alembic_version"


class Base(DeclarativeBase):
    """The declarative base of every table of the service database (one metadata, one migration history)."""


def ensure_schema(engine: Engine) -> None:
    """Create missing tables of :class:`Base` unless the database is managed by migrations.

    A database with Alembic's version table got its schema from ``labelqa db upgrade`` (which the
    service runs at start-up): nothing is created behind the migrations' back.
    """
    if inspect(engine).has_table(MIGRATIONS_TABLE):
        return
    Base.metadata.create_all(engine)


def make_engine(url: str, *, sqlite_synchronous: SqliteSync = "FULL") -> Engine:
    """Create an engine for ``url``; SQLite files get WAL, busy_timeout=30 s and foreign keys.

    ``sqlite_synchronous`` is SQLite's ``PRAGMA synchronous`` for this engine's connections. FULL
    (default) fsyncs the WAL at every commit, so a committed row survives a power cut. The study
    store passes NORMAL: in WAL mode a commit then survives a crash of the process (the WAL is in
    the OS page cache), and after a power cut the store rebuilds missing rows from its fsync'd
    files at start-up (see ``StudyStore.reconcile``).
    """
    is_sqlite = url.startswith("sqlite")
    kwargs: dict = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.close()

    return engine


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    """Whether ``bind`` talks to PostgreSQL (else SQLite: one writer at a time, no row locks)."""
    b = bind.get_bind() if isinstance(bind, Session) else bind
    return b.dialect.name == "postgresql"


def insert_ignore(bind: Engine | Connection | Session, table: Table | type[Base]) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table`` (a Table or mapped class) on either dialect.

    Two gateways on one database may create the same patient, study or series row at once; the
    second insert then does nothing instead of failing.
    """
    t = cast(Table, getattr(table, "__table__", table))  # a mapped class stands for its table
    b = bind.get_bind() if isinstance(bind, Session) else bind
    dialect = postgresql if b.dialect.name == "postgresql" else sqlite
    return dialect.insert(t).on_conflict_do_nothing()
