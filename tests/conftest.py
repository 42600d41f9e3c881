"""Shared test fixtures: paths, real-tool discovery, free ports, the labelqa command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LABELQA_SHARED_DATA", REPO.parent / "shared" / "data"))


def labelqa_cmd() -> list[str]:
    """The labelqa CLI as a subprocess command line, using this interpreter and this checkout."""
    return [sys.executable, "-m", "service"]


def labelqa_env(**extra: str) -> dict[str, str]:
    """Environment for labelqa subprocesses: this checkout first on the path, TCP_NODELAY for dcmtk."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TCP_NODELAY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, step: float = 0.1):
    """Poll ``cond()`` until it returns something truthy (returned); AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def can_unshare_net() -> bool:
    """Whether `unshare -n` (a private network namespace with only loopback) works here."""
    if not have("unshare"):
        return False
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return r.returncode == 0


requires_dcmtk = pytest.mark.skipif(not have("storescu"), reason="dcmtk not installed")
requires_dciodvfy = pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
requires_orthanc = pytest.mark.skipif(
    not (have("Orthanc") or Path("/usr/sbin/Orthanc").exists()), reason="Orthanc not installed"
)
requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}"
)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def listener_factory(tmp_path):
    """Make a started listener + store on a free port (``make(stable_after_s, **ListenerSettings fields)``)."""
    from dicom_io.scp import Listener, ListenerSettings
    from dicom_io.store import StudyStore

    made: list[tuple[Listener, StudyStore]] = []

    def make(stable_after_s: float = 5.0, **cfg) -> tuple[Listener, StudyStore]:
        store = StudyStore(tmp_path / f"data{len(made)}", stable_after_s=stable_after_s)
        lst = Listener(ListenerSettings(port=free_port(), **cfg), store)
        store.start()
        lst.start()
        made.append((lst, store))
        return lst, store

    yield make
    for lst, store in made:
        lst.stop(grace_s=2)
        store.close()


# A real PostgreSQL (initdb + pg_ctl in a temp dir) and the sqlite/postgresql parametrised `db_url`.
from tests.pg_fixture import db_url, pg_server, pg_url  # noqa: E402, F401 - fixtures
