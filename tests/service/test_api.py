"""The HTTP API: health, metrics, jobs, per-study results, re-run, bearer token, OpenAPI schema."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_io.db import make_engine
from harness.http import api_client
from service.audit import AUDITOR
from service.demo.peers import free_port
from service.http import ApiServer, Auth, HttpContext, create_app
from service.runtime.jobs import DONE, QUEUED, JobStore
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Pipeline
from service.settings import Settings

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def jobs(tmp_path):
    return JobStore(make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}"))


def _done_job(jobs: JobStore, study: str = STUDY) -> int:
    j = jobs.enqueue(study)
    jobs.claim("w")
    rows = [{"annotation_uid": "1.2.3.4", "given_label": "circle", "consensus_label": "square",
             "verdict": "suspected_label_error", "agreement": 0.8}]
    jobs.finish(j.id, "w", DONE, n_samples=1, n_flagged=1,
                result={"rows": rows, "outputs": [{"sop_instance_uid": "1.2.3.5", "modality": "SR"}],
                        "bundle_hash": "abc"})
    return j.id


TOKEN = "Sk3t9Qw2Lz7Xc4Vb"


def _client(jobs, tmp_path, token=None, pipeline=True):
    s = Settings(store={"data_dir": tmp_path})
    pipe = Pipeline(s, jobs, auditor=AUDITOR) if pipeline else None
    metrics = Metrics(jobs, instances_received=lambda: 7)
    return api_client(HttpContext(jobs=jobs, auth=Auth(api_token=token), pipeline=pipe, metrics=metrics))


def test_health_reports_components(jobs, tmp_path):
    r = _client(jobs, tmp_path, pipeline=False).get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["database"]["ok"] is True
    assert body["listener"] == {"present": False}


def test_study_audit_returns_verdicts_of_latest_done_job(jobs, tmp_path):
    job_id = _done_job(jobs)
    c = _client(jobs, tmp_path)
    r = c.get(f"/studies/{STUDY}/audit")
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == DONE and body["result_job_id"] == job_id
    assert body["verdicts"][0]["verdict"] == "suspected_label_error"
    assert body["outputs"][0]["modality"] == "SR"
    assert c.get("/studies/1.2.3.999/audit").status_code == 404
    assert c.get("/studies/not-a-uid/audit").status_code == 422


def test_post_queues_a_rerun_and_jobs_lists_it(jobs, tmp_path):
    _done_job(jobs)
    c = _client(jobs, tmp_path)
    assert c.post(f"/studies/{STUDY}/audit").status_code == 403  # login off: the anonymous caller is a reviewer
    c = _client(jobs, tmp_path, token=TOKEN)
    c.headers["Authorization"] = f"Bearer {TOKEN}"
    r = c.post(f"/studies/{STUDY}/audit")
    assert r.status_code == 202
    assert r.json()["job"]["state"] == QUEUED and r.json()["job"]["trigger"] == "api"
    listed = c.get("/jobs", params={"study_uid": STUDY}).json()
    assert [j["state"] for j in listed["jobs"]] == [QUEUED, DONE]
    assert listed["counts"][QUEUED] == 1
    # While the re-run waits, the previous results stay visible.
    body = c.get(f"/studies/{STUDY}/audit").json()
    assert body["state"] == QUEUED and body["verdicts"]
    assert c.get("/jobs", params={"state": "bogus"}).status_code == 422


def test_metrics_are_prometheus_text(jobs, tmp_path):
    _done_job(jobs)
    r = _client(jobs, tmp_path).get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'labelqa_jobs{state="done"} 1.0' in r.text
    assert "labelqa_instances_received 7.0" in r.text
    assert "labelqa_audit_latency_seconds_bucket" in r.text


def test_bearer_token_protects_everything_but_health(jobs, tmp_path):
    c = _client(jobs, tmp_path, token=TOKEN)
    for path in ("/jobs", "/metrics", f"/studies/{STUDY}/audit", "/openapi.json", "/docs", "/redoc"):
        assert c.get(path).status_code in (401, 404), path
    for path in ("/jobs", "/metrics", f"/studies/{STUDY}/audit", "/redoc"):  # fewer than lock a client out
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code in (401, 404), path
    assert c.get("/openapi.json").status_code == 401 and c.get("/docs").status_code == 401
    assert c.post(f"/studies/{STUDY}/audit").status_code == 401
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/jobs", headers=ok).status_code == 200
    assert c.get("/health").status_code == 200
    assert c.get("/openapi.json", headers=ok).json()["info"]["title"] == "labelqa"
    page = c.get("/docs", headers=ok)
    assert page.status_code == 200 and "/studies/{study_uid}/audit" in page.text
    assert "<script" not in page.text.lower()  # nothing loaded from elsewhere (Swagger UI would use a CDN)


def test_api_reference_is_up_to_date():
    from service.http.api import api_reference_markdown

    committed = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert committed == api_reference_markdown(), "regenerate: labelqa config api-reference > docs/api.md"
    assert "## POST `/api/annotations/{annotation_uid}/decision`" in committed
    assert "`decision` (body application/json, Decision, required)" in committed


def test_openapi_schema_lists_the_endpoints(jobs, tmp_path):
    schema = _client(jobs, tmp_path).get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for p in ("/health", "/metrics", "/jobs", "/studies/{study_uid}/audit"):
        assert p in paths, p
    assert {"get", "post"} <= set(paths["/studies/{study_uid}/audit"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uid=st.text(min_size=1, max_size=80), state=st.one_of(st.none(), st.text(max_size=12)),
       limit=st.integers(-5, 5000))
def test_any_input_gets_a_clean_answer_never_a_500(jobs, tmp_path, uid, state, limit):
    c = _client(jobs, tmp_path)
    path = f"/studies/{quote(uid, safe='')}/audit"
    for r in (c.get(path), c.post(path),
              c.get("/jobs", params={k: v for k, v in {"state": state, "limit": limit}.items() if v is not None})):
        assert r.status_code < 500, (uid, r.status_code, r.text)


def test_server_binds_loopback_and_answers(jobs, tmp_path):
    port = free_port()
    app = create_app(HttpContext(jobs=jobs))
    server = ApiServer(app, "127.0.0.1", port)
    server.start()
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    finally:
        server.stop()
    assert not server.thread.is_alive()
