"""End to end with a real Orthanc (Debian) in a private network namespace (loopback only).

1. Orthanc is down while labelqa has results ready: they wait in the outbox and arrive once Orthanc
   is up.
2. Studies sent with dcmtk ``storescu`` to Orthanc are auto-routed by ``deploy/orthanc/labelqa-route.lua``
   (OnStableStudy -> /modalities/labelqa/store) to ``labelqa serve``; labelqa audits them and its SR
   (and SC/KOS for flagged images) appear in the same studies in Orthanc; the SR carries the verdict
   for every annotation, and the results coming back do not make Orthanc route the study again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dicom_io.db import make_engine
from dicom_io.results.sr import read_report
from harness.commands import labelqa_cmd, labelqa_env
from service.demo.peers import can_unshare_net, free_port
from service.runtime.jobs import DONE, JobStore
from tests.conftest import REPO, requires_dcmtk, requires_orthanc, wait_for

pytestmark = [
    pytest.mark.slow, pytest.mark.orthanc, pytest.mark.dcmtk, requires_orthanc, requires_dcmtk,
    pytest.mark.skipif(not can_unshare_net(), reason="needs a private network namespace (unshare -n)"),
]

LUA = REPO / "deploy" / "orthanc" / "labelqa-route.lua"


def _wait(cond, timeout: float, what: str, step: float = 0.2):
    return wait_for(cond, timeout, what, step)


def _copy_studies(small, uids: list[str], dest: Path) -> Path:
    for uid in uids:
        (dest / uid).mkdir(parents=True)
        for f in (small.data.studies_dir / uid).glob("*.dcm"):
            (dest / uid / f.name).write_bytes(f.read_bytes())
    return dest


def _labelqa_series(orthanc, study_uid: str) -> dict[str, list[str]]:
    """Modality -> instance ids of labelqa's own series in the study, as Orthanc has them ("ROI": the SR that
    draws the flags, series 9908; "SR": the QA report)."""
    out: dict[str, list[str]] = {}
    for s in orthanc.study_series(study_uid):
        tags = s["MainDicomTags"]
        number = int(tags.get("SeriesNumber") or 0)
        if tags.get("Manufacturer") == "labelqa" and 9901 <= number <= 9909:
            out.setdefault("ROI" if number == 9908 else tags["Modality"], []).extend(s["Instances"])
    return out


def test_orthanc_routes_annotated_studies_and_gets_results_back(small_demo, tmp_path):
    from service.demo.peers import NetNamespace, start_orthanc

    ns = NetNamespace()
    o_dicom, o_http, lq_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "labelqa"
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text(
        f'[store]\ndata_dir = "{data_dir}"\nstable_after_s = 1.0\n'
        f'[listener]\nport = {lq_port}\nmin_free_disk_mb = 0\n'
        f'[audit]\nbundle = "{small_demo.bundle}"\nvocabulary = "{small_demo.data.vocabulary}"\ndevice = "cpu"\n'
        f'[api]\nenabled = false\n'
        f'[outbox]\nbackoff_base_s = 0.5\nbackoff_max_s = 2.0\npoll_interval_s = 0.2\nmax_attempts = 1000\n'
        f'[[outbox.destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {o_dicom}\n'
    )
    jobs = JobStore(make_engine(f"sqlite:///{data_dir / 'index.sqlite'}"))
    uids = sorted({r["study_uid"] for r in small_demo.data.manifest})
    planted = {r["study_uid"] for r in small_demo.data.manifest if r["true_label"] != r["written_label"]}
    early = [u for u in uids if u not in planted][:2]
    routed = [u for u in uids if u not in early]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    serve = ns.popen([*labelqa_cmd(), "serve", "--config", str(cfg)], env=labelqa_env(), stdout=log,
                     stderr=subprocess.STDOUT)
    orthanc = None
    try:
        ns.wait_port(lq_port, timeout=60)

        # 1. Orthanc down: results are ready but cannot be delivered ...
        src = _copy_studies(small_demo, early, tmp_path / "early")
        r = ns.run(["storescu", "-aet", "PACS", "-aec", "LABELQA", "-R", "+sd", "+r", "+sp", "*.dcm",
                    "127.0.0.1", str(lq_port), str(src)])
        assert r.returncode == 0, r.stderr
        _wait(lambda: all((j := jobs.latest_for_study(u)) and j.state == DONE for u in early), 120, "early audits")
        from dicom_io.outbox import Outbox

        outbox = Outbox(jobs.engine, [])
        _wait(lambda: any(it.get("attempts", 0) >= 1 for it in outbox.list()), 30, "a failed delivery attempt")
        assert outbox.counts().get("pending", 0) > 0 and outbox.counts().get("delivered", 0) == 0

        # ... Orthanc comes up (with the routing script) and they arrive.
        orthanc = start_orthanc(
            ns, tmp_path / "orthanc", o_dicom, o_http, modalities={"labelqa": ["LABELQA", "127.0.0.1", lq_port]},
            dicomweb=False, extra_config={"LuaScripts": [str(LUA)], "StableAge": 1},
        )
        _wait(lambda: outbox.counts().get("pending", 0) == 0, 60, "delivery after Orthanc came up")
        for uid in early:
            assert len(_labelqa_series(orthanc, uid).get("SR", [])) == 1

        # 2. Studies sent to Orthanc are routed to labelqa; results come back into the same studies.
        src = _copy_studies(small_demo, routed, tmp_path / "routed")
        r = ns.run(["storescu", "-aet", "MODALITY", "-aec", "ORTHANC", "-R", "+sd", "+r", "+sp", "*.dcm",
                    "127.0.0.1", str(o_dicom), str(src)])
        assert r.returncode == 0, r.stderr
        _wait(lambda: all((j := jobs.latest_for_study(u)) and j.state == DONE for u in routed), 180,
              "routed studies audited")
        _wait(lambda: outbox.counts().get("pending", 0) == 0, 60, "results delivered to Orthanc")
        manifest = {r["annotation_uid"]: r for r in small_demo.data.manifest}
        planted_seen = clean_seen = flagged = 0
        for uid in routed:
            ours = _labelqa_series(orthanc, uid)
            assert len(ours.get("SR", [])) == 1, f"study {uid}: {ours}"
            raw = ns.run(["curl", "-s", "-f", f"{orthanc.url}/instances/{ours['SR'][0]}/file"], text=False)
            assert raw.returncode == 0
            sr_path = tmp_path / f"{uid}.dcm"
            sr_path.write_bytes(raw.stdout)
            report = read_report(pydicom.dcmread(sr_path))
            job = jobs.latest_for_study(uid, (DONE,))
            by_ann = {row["annotation_uid"]: row for row in job.result["rows"]}
            assert report["items"], "the SR has one group per audited annotation"
            for item in report["items"]:
                m = manifest[item["annotation_uid"]]
                row = by_ann[item["annotation_uid"]]
                assert item["verdict"] == row["verdict"]
                planted = m["true_label"] != m["written_label"]
                assert item["given_label"].meaning == m["written_label"]
                if planted:
                    planted_seen += 1
                    # The models see the true shape: the flipped label is questioned in the SR.
                    assert item["consensus_label"].meaning == m["true_label"], (uid, row)
                    assert item["verdict"] != "consistent", (uid, row)
                else:
                    clean_seen += 1
                    assert item["verdict"] != "suspected_label_error", f"false alarm in {uid}: {row}"
                if item["verdict"] == "suspected_label_error":
                    flagged += 1
                    assert ours.get("KO") and len(ours) >= 3, f"flagged: SR + heatmap SC + KOS expected, got {ours}"
        assert planted_seen >= 1 and clean_seen >= 1 and flagged >= 1
        # The results coming back made the studies stable again in Orthanc: not routed a second time.
        # (A study whose series Orthanc sent with a gap longer than the quiet period may also have an
        # earlier no_annotations record; what counts is one audit and nothing new after the results.)
        before = {uid: len(jobs.list(study_uid=uid)) for uid in routed}
        time.sleep(4.0)
        for uid in routed:
            assert len(jobs.list(study_uid=uid)) == before[uid], f"study {uid} was routed again by its results"
            assert len(jobs.list(study_uid=uid, state=DONE)) == 1, f"study {uid} was audited more than once"
        sends = [j for j in orthanc.rest_get("/jobs?expand") if j.get("Type") == "DicomModalityStore"]
        assert len(sends) == len(routed), f"Orthanc routed {len(sends)} times for {len(routed)} studies"
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        log.close()
        if orthanc is not None:
            orthanc.stop()
        ns.stop()


def test_orthanc_says_a_routed_study_is_complete_and_labelqa_audits_without_waiting(small_demo, tmp_path):
    """labelqa's quiet period is ten minutes here: the routed studies are audited only because the
    routing script, once Orthanc's send job succeeded, posted /studies/<uid>/complete (with a token)."""
    from service.demo.peers import NetNamespace, start_orthanc

    ns = NetNamespace()
    o_dicom, o_http, lq_port, lq_api = free_port(), free_port(), free_port(), free_port()
    token = "Or7hancR0uterTk9x"
    data_dir = tmp_path / "labelqa"
    cfg = tmp_path / "labelqa.toml"
    cfg.write_text(
        f'[store]\ndata_dir = "{data_dir}"\nstable_after_s = 600.0\n'
        f'[listener]\nport = {lq_port}\nmin_free_disk_mb = 0\n'
        f'[audit]\nbundle = "{small_demo.bundle}"\nvocabulary = "{small_demo.data.vocabulary}"\ndevice = "cpu"\n'
        f'[api]\nport = {lq_api}\n'
        f'[[auth.users]]\nname = "orthanc"\nrole = "reviewer"\ntoken = "{token}"\n'
        f'[outbox]\nbackoff_base_s = 0.5\nbackoff_max_s = 2.0\npoll_interval_s = 0.2\n'
        f'[[outbox.destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {o_dicom}\n'
    )
    settings = tmp_path / "labelqa-settings.lua"  # listed before the routing script: its settings
    settings.write_text(f"LABELQA_API = 'http://127.0.0.1:{lq_api}'\nLABELQA_TOKEN = '{token}'\n")
    jobs = JobStore(make_engine(f"sqlite:///{data_dir / 'index.sqlite'}"))
    routed = sorted({r["study_uid"] for r in small_demo.data.manifest})[:3]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    serve = ns.popen([*labelqa_cmd(), "serve", "--config", str(cfg)], env=labelqa_env(), stdout=log,
                     stderr=subprocess.STDOUT)
    orthanc = None
    try:
        ns.wait_port(lq_port, timeout=60)
        ns.wait_port(lq_api, timeout=60)
        orthanc = start_orthanc(
            ns, tmp_path / "orthanc", o_dicom, o_http, modalities={"labelqa": ["LABELQA", "127.0.0.1", lq_port]},
            dicomweb=False, extra_config={"LuaScripts": [str(settings), str(LUA)], "StableAge": 1},
        )
        src = _copy_studies(small_demo, routed, tmp_path / "routed")
        r = ns.run(["storescu", "-aet", "MODALITY", "-aec", "ORTHANC", "-R", "+sd", "+r", "+sp", "*.dcm",
                    "127.0.0.1", str(o_dicom), str(src)])
        assert r.returncode == 0, r.stderr
        _wait(lambda: all((j := jobs.latest_for_study(u)) and j.state == DONE for u in routed), 180,
              "routed studies audited (only the completion signal can start them: the quiet period is 10 min)")
        _wait(lambda: all(_labelqa_series(orthanc, u).get("SR") for u in routed), 60, "QA reports in Orthanc")
        text = (tmp_path / "serve.log").read_text()
        assert text.count("complete by the sender's word") >= len(routed), text[-3000:]
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        log.close()
        if orthanc is not None:
            orthanc.stop()
        ns.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
