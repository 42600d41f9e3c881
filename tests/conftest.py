"""Shared test fixtures and skip markers: paths, real-tool discovery, PostgreSQL, the small demo bundle.

The helpers behind them (local DICOM peers, network namespaces, PostgreSQL, Ray, free ports, the
labelqa command line, the small demo) live in ``harness``: the demo and the benchmarks use
the same ones. This file only adapts them to pytest.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.commands import REPO
from harness.postgres import PgServer, PgUnavailable, pg_bindir, start_pg_server
from service.demo.peers import free_port, orthanc_binary

if TYPE_CHECKING:
    from harness.small_demo import SmallDemo

SHARED_DATA = Path(os.environ.get("LABELQA_SHARED_DATA", REPO.parent / "shared" / "data"))


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


requires_dcmtk = pytest.mark.skipif(not have("storescu"), reason="dcmtk not installed")
requires_dciodvfy = pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
requires_orthanc = pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed")
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
    from dicom_io.scp import Listener
    from dicom_io.settings import ListenerSettings
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



@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> SmallDemo:
    """The small synthetic data set and its bundle (trained once per session, cached across sessions)."""
    from harness.small_demo import small_demo_for

    return small_demo_for(tmp_path_factory.getbasetemp() / "labelqa-small-demo")


# A real PostgreSQL (harness.postgres: initdb + pg_ctl in a temp dir), one per session; every test
# gets a fresh database. Without PostgreSQL the PostgreSQL cases are skipped, the SQLite ones still run.
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL not installed (initdb/pg_ctl not found)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (pip install 'psycopg[binary]')")
    try:
        server = start_pg_server()
    except PgUnavailable as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL (a ``postgresql+psycopg://`` URL)."""
    name = pg_server.new_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)  # FORCE: engines of the test may still hold connections


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index database of one test: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return request.getfixturevalue("pg_url")


# On a test: its PostgreSQL case is `slow` (full suite only), its SQLite case stays in the quick loop.
postgresql_slow = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)


def record_finished_audit(jobs, study: str, rows: list[dict], datasets, data_dir: Path) -> int:
    """Record an audit the way the pipeline does after a real one: ``datasets`` (a ``ResultSet`` from
    ``write_results`` over the same annotations, in the order of ``rows``) saved under
    ``data_dir/results/<study>/``, each row given the UIDs of its result objects (heatmap; overlay and
    suggestion), and a finished job in ``jobs``; returns the job id."""
    from dicom_io.results import save_results
    from service.runtime.jobs import DONE

    for i, r in enumerate(rows):
        if "class" in r:  # a mask row
            r["overlay_uid"] = datasets.overlays.get(i)
            r["suggestion_uid"], r["suggestion_segment"] = datasets.suggestions.get(i, (None, None))
        else:
            r["heatmap_uid"] = datasets.heatmaps.get(i)
    paths = save_results(datasets, data_dir / "results" / study)
    outputs = [{"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                "modality": str(ds.Modality), "path": str(p)} for ds, p in zip(datasets, paths, strict=True)]
    job = jobs.enqueue(study)
    jobs.claim("test")
    n_flagged = sum(r["verdict"] != "consistent" for r in rows)
    jobs.finish(job.id, "test", DONE, n_samples=len(rows), n_flagged=n_flagged,
                result={"inputs": [], "rows": rows, "outputs": outputs, "report_uid": datasets.report_uid})
    return job.id
