"""The service when its surroundings fail, each produced for real: a second process holding the index
lock, a second `labelqa serve` on the same data dir, a complete study left without a job, dead letters.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_io.db import make_engine
from dicom_io.store import DataDirLocked, StudyStore
from harness.commands import labelqa_cmd, labelqa_env
from service.demo.peers import free_port
from service.runtime.jobs import JobStore
from tests.conftest import wait_for

CT = Path(get_testdata_file("CT_small.dcm"))


def _ct(study: str) -> bytes:
    import io

    ds = pydicom.dcmread(CT)
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_one_store_per_data_dir(tmp_path):
    first = StudyStore(tmp_path / "data")
    try:
        with pytest.raises(DataDirLocked, match="in use"):
            StudyStore(tmp_path / "data")
    finally:
        first.close()
    StudyStore(tmp_path / "data").close()  # released on close


@pytest.mark.slow
def test_second_serve_on_same_data_dir_refuses_before_touching_it(tmp_path):
    data = tmp_path / "data"
    env = labelqa_env(LABELQA_API__ENABLED="false")
    port = free_port()
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen([*labelqa_cmd(), "serve", "--port", str(port), "--data-dir", str(data)],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening on" in (tmp_path / "first.log").read_text(), 120, "first serve listening")
        (data / "studies" / ".probe").write_text("x")  # the second one must not run its repair over this
        second = subprocess.run([*labelqa_cmd(), "serve", "--port", str(port), "--data-dir", str(data)],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert "in use by pid" in second.stderr and str(first.pid) in second.stderr
        assert first.poll() is None
        r = subprocess.run(["echoscu", "-aec", "LABELQA", "127.0.0.1", str(port)], capture_output=True, timeout=30)
        assert r.returncode == 0
    finally:
        first.terminate()
        first.wait(30)


@pytest.mark.slow
def test_index_locked_by_another_process_delays_but_never_loses_the_audit_job(tmp_path):
    """A second process holds the jobs database's write lock longer than SQLite's busy timeout (30 s)."""
    jobs_db = tmp_path / "jobs.sqlite"
    jobs = JobStore(make_engine(f"sqlite:///{jobs_db}"))
    store = StudyStore(tmp_path / "data", stable_after_s=0.3)
    store.retry_base_s = 0.5
    store.subscribe(lambda ev: jobs.enqueue(ev.study_uid))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None);"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]));"
         "c.execute('COMMIT')", str(jobs_db), "33"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store.start()
        study = generate_uid()
        store.put(_ct(study))
        # while the lock is held the study is not marked complete and the store says why
        wait_for(lambda: store.last_error is not None, 60, "the failure to be reported")
        assert study not in store.stable_studies()
        assert "retrying" in store.last_error
        holder.wait(60)
        wait_for(lambda: jobs.latest_for_study(study) is not None, 60, "the job after the lock is released")
        wait_for(lambda: study in store.stable_studies(), 30, "the study marked complete")
        assert store.last_error is None
        assert len(jobs.list(study_uid=study)) == 1
    finally:
        holder.kill()
        store.close()


def test_complete_study_without_a_job_is_queued_at_start(tmp_path):
    from service.audit import AUDITOR
    from service.runtime.pipeline import Pipeline
    from service.settings import load_settings

    data = tmp_path / "data"
    store = StudyStore(data, stable_after_s=0.2)
    store.start()
    study = generate_uid()
    store.put(_ct(study))
    wait_for(lambda: study in store.stable_studies(), 30, "stable")  # no subscriber: no job was made
    settings = load_settings(None, {"store": {"data_dir": data}})
    jobs = JobStore(make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}"))
    pipe = Pipeline(settings, jobs, auditor=AUDITOR, store=store)
    try:
        assert pipe.reconcile() == 1
        job = jobs.latest_for_study(study)
        assert job is not None and job.state == "no_annotations"  # a CT alone: recorded with its reason
        assert pipe.reconcile() == 0  # idempotent
    finally:
        store.close()


def test_health_reports_dead_letters_and_store_errors(tmp_path):
    from dicom_io.outbox import Outbox
    from harness.http import api_client
    from service.http import HttpContext

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    jobs = JobStore(engine)

    class Dest:
        name, kind, ae_title, host, port = "down", "dicom", "NOBODY", "127.0.0.1", free_port()

    from dicom_io.settings import OutboxSettings

    box = Outbox(engine, [Dest], settings=OutboxSettings(max_attempts=1, connect_timeout_s=2))
    sample = tmp_path / "x.dcm"
    sample.write_bytes(_ct(generate_uid()))
    box.enqueue([sample])
    box.deliver_once("down")  # nobody listens on that port: one failed attempt is the last
    assert box.counts()["dead"] == 1
    store = StudyStore(tmp_path / "data")
    try:
        client = api_client(HttpContext(jobs=jobs, outbox=box, store=store, version="t"))
        h = client.get("/health").json()
        assert h["status"] == "degraded"
        assert any("dead-lettered" in r for r in h["reasons"])
        store.last_error = "study-complete handling failed (OperationalError: database is locked); retrying"
        assert any("database is locked" in r for r in client.get("/health").json()["reasons"])
    finally:
        store.close()
