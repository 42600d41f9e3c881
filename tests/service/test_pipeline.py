"""The audit pipeline with real parts: listener, store, bundle, results, outbox, a receiving archive.

- a late instance re-opens a study: the audit runs again and supersedes the old results;
- our own results coming back (a PACS re-routing the whole study) never trigger a new audit;
- a re-run with nothing changed gives identical result UIDs;
- a study without annotations is recorded with its reason, without output;
- ``kill -9`` of ``labelqa serve`` in the middle of a job: after restart the job completes, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from dicom_io.db import make_engine
from dicom_io.hooks import HookDir
from dicom_io.results import save_results, write_results
from dicom_io.results.series import SR_SERIES_NUMBER
from harness.commands import labelqa_cmd, labelqa_env
from harness.studies import ALGORITHM, COHORT, make_study
from service.demo import send_studies
from service.demo.dicomize import dicomize
from service.demo.peers import LocalArchive, free_port
from service.runtime.jobs import DONE, NO_ANNOTATIONS, RUNNING, JobStore
from service.runtime.pipeline import delivery_order
from service.runtime.process import Service
from service.serve import service_components
from service.settings import load_settings
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

TOKEN = "Pq8wLx3Zk6Tn1Vr4"


def _wait(cond, timeout: float, what: str, step: float = 0.1):
    return wait_for(cond, timeout, what, step)


def _settings(tmp: Path, bundle: Path, vocabulary: Path, archive_port: int, **extra):
    over = {
        "store": {"data_dir": tmp / "labelqa", "stable_after_s": 0.5},
        "listener": {"port": free_port(), "min_free_disk_mb": 0},
        "audit": {"bundle": bundle, "vocabulary": vocabulary, "device": "cpu"},
        "outbox": {"destinations": [{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                     "port": archive_port}], "backoff_base_s": 0.2, "poll_interval_s": 0.1},
        "api": {"port": free_port()},
    }
    for k, v in extra.items():
        over.setdefault(k, {}).update(v)
    return load_settings(None, over)


def _split_pair_study(small, tmp: Path) -> tuple[str, Path, Path]:
    """One study with two annotated images: (study uid, folder with image 1 + SR 1, folder with image 2 + SR 2)."""
    out = tmp / "pair"
    dicomize(small.work / "data" / "audit.npz", out, sample=2, group_by=r"(audit)\.npz", seed=3)
    rows = [line.split(",") for line in (out / "manifest.csv").read_text().splitlines()[1:]]
    assert len(rows) == 2 and rows[0][1] == rows[1][1], "both images must be in one study"
    study = rows[0][1]
    parts = []
    for i, row in enumerate(rows):
        d = tmp / f"part{i}"
        d.mkdir()
        for name in (f"IMG_{row[2]}.dcm", f"SR_{row[3]}.dcm"):
            (d / name).write_bytes((out / study / name).read_bytes())
        parts.append(d)
    return study, parts[0], parts[1]


def test_the_qa_report_is_delivered_first(tmp_path):
    written = write_results(*make_study(), ALGORITHM, COHORT)
    paths = save_results(written, tmp_path)
    assert len(paths) > 2 and paths[0].name.startswith("SC_"), "the writer puts the heatmaps first"
    order = delivery_order(written, paths)
    assert order[0].name == f"SR_{written.report_uid}.dcm"
    assert sorted(order) == sorted(paths) and len(order) == len(paths)
    assert [p for p in order[1:]] == [p for p in paths if p != order[0]], "the rest keep the writing order"


def test_late_instance_reruns_and_own_results_do_not(small_demo, tmp_path):
    archive = LocalArchive(tmp_path / "archive", free_port())
    archive.start()
    s = _settings(tmp_path, small_demo.bundle, small_demo.data.vocabulary, archive.port, api={"token": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}  # re-running an audit needs the admin role
    svc = Service(s)
    for spec in service_components(s):
        svc.add(spec)
    audit = svc.components[0]
    jobs: JobStore = audit.jobs
    port = s.listener.port
    study, first, late = _split_pair_study(small_demo, tmp_path)
    svc.start()
    try:
        send_studies(first, "127.0.0.1", port, "LABELQA")
        j1 = _wait(lambda: jobs.latest_for_study(study, (DONE,)), 120, "first audit")
        assert j1.n_samples == 1
        sr1 = j1.result["report_uid"]
        assert sr1 in {o["sop_instance_uid"] for o in j1.result["outputs"] if o["modality"] == "SR"}

        # A late instance (a second annotated image) re-opens the study: audit again, supersede.
        send_studies(late, "127.0.0.1", port, "LABELQA")
        j2 = _wait(lambda: (j := jobs.latest_for_study(study, (DONE,))) and j.id != j1.id and j, 120, "re-audit")
        assert j2.n_samples == 2 and j2.trigger == "reopened"
        assert jobs.get(j1.id).superseded_by == j2.id
        sr2 = j2.result["report_uid"]
        assert sr2 in {o["sop_instance_uid"] for o in j2.result["outputs"]} and sr2 != sr1, \
            "changed results get new UIDs"

        # The results echoed back (a PACS routing the whole study again) do not start an audit.
        n_jobs = len(jobs.list(study_uid=study))
        n_stable = _stable_events(svc.store, study)
        echo = tmp_path / "echo"
        echo.mkdir()
        for o in j2.result["outputs"]:
            (echo / Path(o["path"]).name).write_bytes(Path(o["path"]).read_bytes())
        send_studies(echo, "127.0.0.1", port, "LABELQA")
        _wait(lambda: svc.store.instances(study) and len(svc.store.instances(study)) == 4 + len(j2.result["outputs"]),
              180, "echo stored")
        # the store records a study stable only after every subscriber (the pipeline) took the event
        _wait(lambda: _stable_events(svc.store, study) > n_stable, 180, "the echo's stable event handled")
        assert len(jobs.list(study_uid=study)) == n_jobs

        # A re-run through the API with nothing changed gives identical result UIDs.
        r = httpx.post(f"http://127.0.0.1:{s.api.port}/studies/{study}/audit", headers=auth, timeout=10)
        assert r.status_code == 202
        j3 = _wait(lambda: (j := jobs.latest_for_study(study, (DONE,))) and j.id != j2.id and j, 120, "re-run")
        assert sorted(o["sop_instance_uid"] for o in j3.result["outputs"]) == sorted(
            o["sop_instance_uid"] for o in j2.result["outputs"])
        body = httpx.get(f"http://127.0.0.1:{s.api.port}/studies/{study}/audit", headers=auth, timeout=10).json()
        assert body["result_job_id"] == j3.id and len(body["verdicts"]) == 2

        # Delivered to the archive: the SR of every audit, in the audited study.
        _wait(lambda: audit.outbox.counts().get("pending", 0) == 0, 180, "delivery")
        got = {r.sop_instance_uid for r in archive.store.instances(study)}
        assert {sr1, sr2} <= got

        # A study without annotation objects: recorded, with its reason, no output.
        ct = Path(get_testdata_file("CT_small.dcm"))
        ct_dir = tmp_path / "ct"
        ct_dir.mkdir()
        (ct_dir / "ct.dcm").write_bytes(ct.read_bytes())
        send_studies(ct_dir, "127.0.0.1", port, "LABELQA")
        import pydicom

        ct_study = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
        j = _wait(lambda: jobs.latest_for_study(ct_study), 180, "no-annotation record")
        assert j.state == NO_ANNOTATIONS and "no SEG or SR" in j.reason
        health = httpx.get(f"http://127.0.0.1:{s.api.port}/health", timeout=10).json()
        assert health["status"] == "ok", health
        assert health["listener"]["running"] is True and health["model"]["models_loaded"] is True
        assert health["outbox"]["present"] is True
        metrics = httpx.get(f"http://127.0.0.1:{s.api.port}/metrics", headers=auth, timeout=10).text
        assert 'labelqa_jobs{state="no_annotations"} 1.0' in metrics
        assert "labelqa_audit_duration_seconds_count 3.0" in metrics
        assert "labelqa_audit_latency_seconds_count 2.0" in metrics  # the API re-run has no "last instance"
    finally:
        svc.stop()
        archive.stop()


def test_kill_during_job_then_restart_completes_exactly_once(small_demo, tmp_path):
    archive = LocalArchive(tmp_path / "archive", free_port())
    archive.start()
    s = _settings(tmp_path, small_demo.bundle, small_demo.data.vocabulary, archive.port,
                  api={"enabled": False})
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text(
        f'[store]\ndata_dir = "{s.store.data_dir}"\nstable_after_s = 0.5\n'
        f'[listener]\nport = {s.listener.port}\nmin_free_disk_mb = 0\n'
        f'[audit]\nbundle = "{small_demo.bundle}"\nvocabulary = "{small_demo.data.vocabulary}"\ndevice = "cpu"\n'
        f'[api]\nenabled = false\n'
        f'[outbox]\nbackoff_base_s = 0.2\npoll_interval_s = 0.1\n'
        f'[[outbox.destinations]]\nname = "archive"\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = {archive.port}\n'
    )
    log_path = tmp_path / "serve.log"
    hooks = HookDir(tmp_path / "hooks", ["job-start"])

    def serve(**env: str) -> subprocess.Popen:
        log = open(log_path, "a")  # noqa: SIM115 - closed right after Popen
        p = subprocess.Popen([*labelqa_cmd(), "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                             env=labelqa_env(**env), start_new_session=True)
        log.close()
        return p

    def exited() -> str | None:
        return None if proc.poll() is None else f"serve exited {proc.returncode}: {log_path.read_text()[-3000:]}"

    jobs = JobStore(make_engine(s.store.resolved_database_url()))
    studies = sorted({r["study_uid"] for r in small_demo.data.manifest})[:4]
    src = tmp_path / "send"
    for uid in studies:
        (src / uid).mkdir(parents=True)
        for f in (small_demo.data.studies_dir / uid).glob("*.dcm"):
            (src / uid / f.name).write_bytes(f.read_bytes())
    proc = serve(**hooks.env())  # its first job holds at the job-start hook: claimed, running, not audited
    try:
        _wait(lambda: _listening(s.listener.port), 180, "listener")
        send_studies(src, "127.0.0.1", s.listener.port, "LABELQA")
        hooks.wait_reached("job-start", 1, timeout=600, alive=exited)
        (killed,) = jobs.list(state=RUNNING)  # one worker: the job held in the middle
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert jobs.get(killed.id).state == RUNNING  # left behind by the dead process

        proc = serve()  # no hooks: runs through
        _wait(lambda: all((j := jobs.latest_for_study(u)) and j.state == DONE for u in studies), 180,
              "every study audited after the restart")
        assert jobs.get(killed.id).state == DONE and jobs.get(killed.id).attempts == 2
        for uid in studies:
            done = jobs.list(study_uid=uid, state=DONE)
            assert len(done) == 1, f"study {uid}: {len(done)} finished audits"
            srs = [p for p in (Path(s.store.data_dir) / "results" / uid).glob("*.dcm")]
            outputs = done[0].id and jobs.get(done[0].id).result["outputs"]
            assert len(srs) == len(outputs)
        _wait(lambda: all(sum(r.modality == "SR" and r.series_number == str(SR_SERIES_NUMBER)
                                    for r in archive.store.instances(u)) == 1 for u in studies), 180,
              "one SR per study delivered")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        archive.stop()


def _stable_events(store, study: str) -> int:
    return sum(e["study_uid"] == study for e in store.events("stable"))


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False
