"""A real, throw-away PostgreSQL: ``initdb`` + ``pg_ctl`` in a temporary directory, stopped by its PID.

The server (Debian's ``postgresql`` package, any version under ``/usr/lib/postgresql``) runs as the
``postgres`` user (``initdb`` refuses root; ``runuser -u postgres --`` when we are root), listens on a
unix socket in its own directory (reachable from a private network namespace too: it is a file) and
on 127.0.0.1 at a free port. The tests start one per session (fixtures ``pg_server``, ``pg_url``,
``db_url`` in ``tests/conftest.py``) and give every test a fresh database; ``benchmarks/scaleout.py``
starts one with durable settings.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from service.demo.peers import free_port

__all__ = ["PgServer", "PgUnavailable", "pg_bindir", "start_pg_server"]


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (binaries missing, or root without ``runuser``)."""


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with initdb and pg_ctl (or the ones on PATH), else None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                  if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _as_postgres() -> list[str]:
    """Command prefix that runs a PostgreSQL binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise PgUnavailable("running as root without runuser: cannot start PostgreSQL as user postgres")
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PgServer:
    """A running throw-away PostgreSQL server."""

    root: Path
    socket_dir: Path
    port: int
    pid: int
    bindir: Path
    _n = itertools.count()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` over the unix socket."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname=database,
                             autocommit=True) as c:
            c.execute(sql.encode())  # test-only literal SQL (a database name we made)

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._n)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT) of this server's postmaster, by its PID; SIGKILL if it hangs."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)


def start_pg_server(root: Path | None = None, max_connections: int = 200, *, durable: bool = False) -> PgServer:
    """initdb + pg_ctl start in ``root`` (default: a new temp dir); PgUnavailable when it cannot run here,
    RuntimeError when it fails.

    ``durable`` keeps PostgreSQL's defaults (fsync, synchronous commit: for benchmarks); tests run
    without them (faster, and a test database need not survive a power cut)."""
    bindir = pg_bindir()
    if bindir is None:
        raise PgUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(root or tempfile.mkdtemp(prefix="labelqa-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    data, sock = root / "data", root / "sock"
    sock.mkdir(exist_ok=True)
    prefix = _as_postgres()
    if prefix:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    r = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--no-sync"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stderr.strip()[-800:]}")
    port = free_port()
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
            f"-c max_connections={max_connections} -c shared_buffers=64MB")
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    log = root / "postgres.log"
    r = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w",
                        "-t", "120", "start"], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-400:]} {tail}")
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return PgServer(root, sock, port, pid, bindir)
