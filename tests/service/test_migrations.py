"""Alembic migrations: they build exactly the models' schema, on SQLite and PostgreSQL; the CLI; take-over.

Every test runs on SQLite and on a real PostgreSQL (``db_url``).
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess

import pytest
from sqlalchemy import create_engine, inspect

from dicom_io.db import Base, make_engine
from harness.commands import labelqa_cmd, labelqa_env
from service.migrations import current, head, schema_diff, target_metadata, upgrade


def test_migrations_produce_the_schema_of_the_models(db_url):
    assert current(db_url) is None
    assert upgrade(db_url) == head()
    assert schema_diff(db_url) == []  # alembic autogenerate finds nothing to change
    tables = set(inspect(make_engine(db_url)).get_table_names())
    assert set(target_metadata().tables) <= tables
    assert upgrade(db_url) == head()  # idempotent


def test_a_database_made_by_create_all_is_taken_over(db_url):
    """An index made by labelqa before migrations (create_all, no version table, no partial index)."""
    engine = make_engine(db_url)
    meta = target_metadata()
    running = meta.tables["audit_jobs"].indexes
    partial = next(ix for ix in running if ix.name == "uq_audit_jobs_running_study")
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        partial.drop(c)
    assert schema_diff(engine), "the missing index is a difference"
    assert upgrade(engine) == head()
    assert schema_diff(engine) == []
    engine.dispose()


def test_an_sqlite_upgrade_waits_out_a_lock_held_past_the_busy_timeout(tmp_path):
    """Another process holds SQLite's write lock longer than the busy timeout (a loaded machine): the
    upgrade says so and tries again instead of failing. The lock is let go when the warning is logged."""
    path = tmp_path / "index.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    released: list[str] = []

    class LetGo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "locked by another process" in record.getMessage() and not released:
                holder.execute("COMMIT")
                released.append(record.getMessage())

    handler = LetGo(logging.WARNING)
    logging.getLogger("labelqa.migrations").addHandler(handler)
    try:
        assert upgrade(engine) == head()
    finally:
        logging.getLogger("labelqa.migrations").removeHandler(handler)
        holder.close()
        engine.dispose()
    assert len(released) == 1
    assert schema_diff(f"sqlite:///{path}") == []


@pytest.mark.slow
def test_concurrent_upgrades_take_turns(db_url):
    """Two gateways starting at once on one empty database: both upgrades succeed, one schema."""
    procs = [subprocess.Popen([*labelqa_cmd(), "db", "upgrade", "--database-url", db_url], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=labelqa_env()) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert current(db_url) == head() and schema_diff(db_url) == []


@pytest.mark.slow
def test_labelqa_db_current_and_upgrade(db_url):
    def db(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*labelqa_cmd(), "db", *args, "--database-url", db_url], capture_output=True,
                              text=True, env=labelqa_env(), timeout=120)

    before = db("current")
    assert before.returncode == 1 and "revision none, behind" in before.stdout
    up = db("upgrade")
    assert up.returncode == 0 and f"at revision {head()}" in up.stdout, up.stderr
    after = db("current")
    assert after.returncode == 0 and "up to date" in after.stdout
    bad = subprocess.run([*labelqa_cmd(), "db", "current", "--database-url",
                          "postgresql+psycopg://nobody@/x?host=/nonexistent"], capture_output=True, text=True,
                         env=labelqa_env(), timeout=120)
    assert bad.returncode == 1 and "cannot reach the database" in bad.stderr
