"""The review workbench without a browser: worklist, decisions, auth, write-back, export, metrics, restart.

The audits here are real result objects (``dicom_io.results.write_results``) over real dicomized
studies in a real study store and job table, with verdicts set by the test (no model needed), so
every assertion about what is written back runs against genuine DICOM.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from dicom_io.db import make_engine
from dicom_io.store import StudyStore
from harness.commands import labelqa_cmd, labelqa_env
from service.runtime.jobs import DONE, JobStore
from tests.conftest import record_finished_audit

CLASSES = ["square", "disc"]
READER = ("reader", "Rq7xLm2p9Kt4Wz8v")
ADMIN = ("boss", "B3nHc8sQ1dVy6Tf0")


@dataclass
class Audited:
    data_dir: Path
    db_url: str
    vocabulary: Path
    studies: list[str]
    rows: list[dict]  # every verdict row, as the pipeline stores them

    def copy_to(self, dst: Path) -> Audited:
        """A private copy under ``dst`` (decisions change the database and the results folder)."""
        import shutil

        from sqlalchemy import text

        shutil.copytree(self.data_dir, dst)
        eng = make_engine(f"sqlite:///{dst / 'index.sqlite'}")
        with eng.begin() as c:  # the job results name the result files by absolute path
            for jid, rj in c.execute(text("SELECT id, result_json FROM audit_jobs")).all():
                c.execute(text("UPDATE audit_jobs SET result_json = :r WHERE id = :i"),
                          {"r": rj.replace(str(self.data_dir), str(dst)), "i": jid})
        eng.dispose()
        rows = json.loads(json.dumps(self.rows).replace(str(self.data_dir), str(dst)))
        return Audited(dst, f"sqlite:///{dst / 'index.sqlite'}", self.vocabulary, self.studies, rows)


def build_audited(root: Path, n: int = 8, seed: int = 0, seg: bool = False) -> Audited:
    """``n`` one-image studies with SR (or SEG) labels, stored, audited (verdicts: every other one flagged)."""
    from dicom_io.annotations import read_study
    from dicom_io.results import AlgorithmInfo, AuditedAnnotation, write_results
    from dicom_io.vocabulary import load_vocabulary
    from models.synthetic import make_shapes
    from service.demo.dicomize import dicomize

    data = make_shapes(n, n_classes=2, size=32, seed=seed)
    npz = root / "shapes.npz"
    images = (np.clip(data.images, 0, 1) * 255).round().astype(np.uint8)
    np.savez_compressed(npz, images=images, labels=np.asarray(data.labels), class_names=np.asarray(CLASSES))
    res = dicomize(npz, root / "studies", seed=seed, modality="OT", seg=seg)
    vocab_path = Path(res.vocabulary or root / "studies" / "vocabulary.toml")
    vocab = load_vocabulary(vocab_path)
    data_dir = root / "labelqa"
    store = StudyStore(data_dir, None, 3600.0)
    for p in sorted((root / "studies").rglob("*.dcm")):
        store.put(p.read_bytes())
    db_url = f"sqlite:///{data_dir / 'index.sqlite'}"
    jobs = JobStore(make_engine(db_url))
    algorithm = AlgorithmInfo(name="test detector", version="1", bundle_hash="abc123")
    all_rows: list[dict] = []
    studies = store.studies()
    for k, study in enumerate(studies):
        files = store.study_files(study)
        aset = read_study(files, vocab)
        by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        audited, rows = [], []
        for s in aset.samples:
            pv = s.provenance
            flagged = k % 2 == 0
            other = CLASSES[1 - CLASSES.index(s.label)]
            priority = float(n - k) + (10.0 if flagged else 0.0)
            verdict = "suspected_label_error" if flagged else "consistent"
            cons = other if flagged else s.label
            audited.append(AuditedAnnotation(
                study_uid=pv.study_uid, annotation_uid=pv.annotation_uid,
                annotation_sop_class_uid=pv.annotation_sop_class_uid, source=pv.source, image_uid=pv.image_uid,
                image_sop_class_uid=pv.image_sop_class_uid, frame=pv.frame, segment_number=pv.segment_number,
                content_path=pv.content_path, given_label=vocab.code_for(s.label).to_pydicom(),
                consensus_label=vocab.code_for(cons).to_pydicom(), verdict=verdict, agreement=0.8 if flagged else None,
                p_given=0.05 if flagged else 0.9, priority=priority, n_disagree=3 if flagged else 0, n_members=3,
                consensus_prob=0.9, heatmap=np.outer(np.hanning(32), np.hanning(32)).astype(np.float32)))
            rows.append({"study_uid": pv.study_uid, "annotation_uid": pv.annotation_uid, "source": pv.source,
                         "segment_number": pv.segment_number, "content_path": pv.content_path,
                         "image_uid": pv.image_uid, "frame": pv.frame, "given_label": s.label,
                         "consensus_label": cons, "verdict": verdict, "agreement": 0.8 if flagged else None,
                         "p_given": 0.05 if flagged else 0.9, "consensus_prob": 0.9,
                         "n_disagree": 3 if flagged else 0, "n_members": 3, "priority": priority, "score": priority})
        needed = {a.image_uid for a in audited} | {a.annotation_uid for a in audited}
        loaded = {u: pydicom.dcmread(by_uid[u]) for u in needed}
        datasets = write_results({a.image_uid: loaded[a.image_uid] for a in audited},
                                 {a.annotation_uid: loaded[a.annotation_uid] for a in audited}, audited, algorithm)
        record_finished_audit(jobs, study, rows, datasets, data_dir)
        all_rows += rows
    store.close()
    return Audited(data_dir, db_url, vocab_path, studies, all_rows)


@pytest.fixture(scope="module")
def audited_template(tmp_path_factory) -> Audited:
    return build_audited(tmp_path_factory.mktemp("audited"))


@pytest.fixture
def audited(audited_template, tmp_path) -> Audited:
    """A private copy (decisions change the database and the results folder)."""
    return audited_template.copy_to(tmp_path / "labelqa")


def _settings(a: Audited, users: bool = True, destinations: bool = True):
    from service.settings import load_settings

    over: dict = {"store": {"data_dir": a.data_dir}, "audit": {"vocabulary": a.vocabulary}}
    if users:
        over["auth"] = {"users": [{"name": READER[0], "token": READER[1], "role": "reviewer",
                                   "display_name": "Reader^Rita"},
                                  {"name": ADMIN[0], "token": ADMIN[1], "role": "admin"}]}
    if destinations:
        over["outbox"] = {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]}
    return load_settings(None, over)


def _app(a: Audited, **kw):
    """(TestClient, ReviewService, Outbox) over the audited workspace, as AuditService wires them."""
    from harness.http import api_client, review_context

    ctx = review_context(_settings(a, **kw), make_engine(a.db_url))
    assert ctx.review is not None and ctx.outbox is not None
    return api_client(ctx), ctx.review, ctx.outbox


def _bearer(user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user[1]}"}


def _login(client: TestClient, user: tuple[str, str]) -> str:
    """Log in with the form; returns the CSRF token of the session."""
    r = client.post("/login", data={"name": user[0], "token": user[1], "next": "/review"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/review")
    assert page.status_code == 200
    import re

    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


# ------------------------------------------------------------------------------------------ worklist


def test_worklist_ranks_by_priority_filters_and_pages(audited):
    c, _, _ = _app(audited)
    r = c.get("/api/worklist", headers=_bearer(READER), params={"limit": 500})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == len(audited.rows) == len(body["items"])
    pr = [it["priority"] for it in body["items"]]
    assert pr == sorted(pr, reverse=True)
    for key in ("annotation_uid", "study_uid", "verdict", "priority", "given_label", "consensus_label"):
        assert all(key in it for it in body["items"])
    flagged = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "flagged"}).json()
    assert flagged["total"] == sum(r["verdict"] == "suspected_label_error" for r in audited.rows)
    assert {it["verdict"] for it in flagged["items"]} == {"suspected_label_error"}
    sq = c.get("/api/worklist", headers=_bearer(READER), params={"label": "square"}).json()
    assert sq["total"] == sum(r["given_label"] == "square" for r in audited.rows)
    assert c.get("/api/worklist", headers=_bearer(READER), params={"modality": "OT"}).json()["total"] == body["total"]
    assert c.get("/api/worklist", headers=_bearer(READER), params={"modality": "CT"}).json()["total"] == 0
    # keyset paging: every item once, in order
    seen, cursor = [], None
    while True:
        pg = c.get("/api/worklist", headers=_bearer(READER),
                   params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [it["id"] for it in pg["items"]]
        cursor = pg["next_cursor"]
        if not cursor:
            break
    assert seen == [it["id"] for it in body["items"]]
    assert c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "nope"}).status_code == 422


# ------------------------------------------------------------------------------------------ auth


def test_auth_no_token_401_reviewer_not_admin_cross_site_refused(audited):
    c, _, _ = _app(audited)
    assert c.get("/health").status_code == 200
    for path in ("/api/worklist", "/api/export.csv", "/metrics", "/jobs"):
        assert c.get(path).status_code == 401, path
    assert c.get("/api/worklist", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    item = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "flagged"}).json()["items"][0]
    uid = item["annotation_uid"]
    # a reviewer cannot do admin things; an admin can
    assert c.post(f"/studies/{item['study_uid']}/audit", headers=_bearer(READER)).status_code == 403
    assert c.get("/api/decisions/trail", headers=_bearer(READER)).status_code == 403
    assert c.delete(f"/api/annotations/{uid}/decision", headers=_bearer(READER)).status_code == 403
    assert c.get("/api/decisions/trail", headers=_bearer(ADMIN)).status_code == 200
    # pages redirect to the login
    r = c.get("/review", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    bad = c.post("/login", data={"name": READER[0], "token": "nope-nope"})
    assert bad.status_code == 200 and "wrong name or token" in bad.text
    csrf = _login(c, READER)
    form = {"decision": "label_right", "verdict": "flagged"}
    # a cross-site form post (another Origin, no CSRF token) is refused, and so is one without the token
    r = c.post(f"/review/items/{item['id']}/decision", data=form, headers={"Origin": "http://evil.example"},
               follow_redirects=False)
    assert r.status_code == 403
    r = c.post(f"/review/items/{item['id']}/decision", data=form, follow_redirects=False)
    assert r.status_code == 403
    r = c.post(f"/review/items/{item['id']}/decision", data={**form, "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    # the JSON API with the session cookie needs the CSRF header too
    r = c.post(f"/api/annotations/{uid}/decision", json={"decision": "label_right"})
    assert r.status_code == 403
    assert c.get(f"/api/items/{item['id']}").json()["decision"] is None
    # with the token the same form post works and is attributed to the logged-in reviewer
    r = c.post(f"/review/items/{item['id']}/decision", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    d = c.get(f"/api/items/{item['id']}").json()["decision"]
    assert d["decision"] == "label_right" and d["reviewer"] == READER[0]


# ------------------------------------------------------------------------------------------ decisions


def _flagged(c) -> list[dict]:
    return c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "flagged"}).json()["items"]


def test_decision_is_idempotent_and_written_back_once(audited):
    from sqlalchemy import func, select

    from dicom_io.outbox import OutboxItem

    c, review, outbox = _app(audited)
    item = _flagged(c)[0]
    uid, corrected = item["annotation_uid"], item["consensus_label"]
    body = {"decision": "label_wrong", "corrected_label": corrected, "comment": "clearly a disc"}
    r1 = c.post(f"/api/annotations/{uid}/decision", json=body, headers=_bearer(READER))
    assert r1.status_code == 200, r1.text
    d1 = r1.json()
    assert d1["changed"] and d1["action"] == "created" and d1["writeback_state"] == "done", d1
    n_out = len(outbox.list())
    assert n_out == 2  # the corrected SR and the verified report
    r2 = c.post(f"/api/annotations/{uid}/decision", json=body, headers=_bearer(READER))
    assert r2.json()["changed"] is False and r2.json()["action"] == "unchanged"
    assert len(outbox.list()) == n_out, "a repeated decision must not write back again"
    assert len(review.store.trail(item["id"])) == 1
    with review.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OutboxItem)).scalar_one() == n_out
    # bad decisions are refused with a reason
    for bad in ({"decision": "label_wrong"}, {"decision": "label_wrong", "corrected_label": item["given_label"]},
                {"decision": "label_wrong", "corrected_label": "banana"},
                {"decision": "label_right", "corrected_label": corrected}):
        r = c.post(f"/api/annotations/{uid}/decision", json=bad, headers=_bearer(READER))
        assert r.status_code == 422, (bad, r.text)
    assert c.post("/api/annotations/1.2.3.999/decision", json={"decision": "unsure"},
                  headers=_bearer(READER)).status_code == 404
    r = c.post(f"/api/annotations/{uid}/decision", json={"decision": "label_wrong", "corrected_mask": "suggestion"},
               headers=_bearer(READER))
    assert r.status_code == 422 and "only for SEG masks" in r.text  # an SR label has no mask to replace
    # changing one's mind is a second trail row and a new write-back
    r3 = c.post(f"/api/annotations/{uid}/decision", json={"decision": "label_right"}, headers=_bearer(READER))
    assert r3.json()["action"] == "changed" and r3.json()["version"] == 2
    trail = review.store.trail(item["id"])
    assert [t["action"] for t in trail] == ["changed", "created"]
    assert trail[0]["previous_decision"] == "label_wrong" and trail[0]["previous_corrected_label"] == corrected


def test_corrected_sr_and_verified_report_are_valid_and_reference_what_they_supersede(audited):
    from dicom_io.annotations import read_study
    from dicom_io.results.series import REVIEWED_LABEL_SERIES_NUMBER, is_own_output_dataset
    from dicom_io.vocabulary import load_vocabulary

    c, review, outbox = _app(audited)
    item = _flagged(c)[0]
    corrected = item["consensus_label"]
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision",
               json={"decision": "label_wrong", "corrected_label": corrected}, headers=_bearer(READER))
    wb = r.json()["writeback"]
    files = [Path(p) for p in wb["files"]]
    assert all(p.is_file() for p in files) and {str(Path(o["path"])) for o in outbox.list()} == {str(p) for p in files}
    sr = pydicom.dcmread(next(p for p in files if wb["corrected_uid"] in p.name))
    original = pydicom.dcmread(review.instance_path(item["annotation_uid"]))
    assert sr.StudyInstanceUID == original.StudyInstanceUID and sr.SOPClassUID == original.SOPClassUID
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Rita"
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert int(sr.SeriesNumber) == REVIEWED_LABEL_SERIES_NUMBER and not is_own_output_dataset(sr)
    # read back with labelqa's own annotation reader: the label is the corrected one, the reviewer the observer
    vocab = load_vocabulary(audited.vocabulary)
    image = review.instance_path(item["image_uid"])
    (sample,) = read_study([image, next(p for p in files if wb["corrected_uid"] in p.name)], vocab).samples
    assert sample.label == corrected and sample.provenance.observer == "Reader^Rita"
    rep = pydicom.dcmread(wb["report_path"])
    assert rep.VerificationFlag == "VERIFIED"
    assert str(rep.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Rita"
    assert rep.VerifyingObserverSequence[0].VerifyingOrganization == "labelqa QA"
    assert rep.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == item["report_uid"]
    assert rep.SeriesInstanceUID == pydicom.dcmread(review.instance_path(item["report_uid"])).SeriesInstanceUID
    text = json.dumps(rep.to_json_dict())
    assert "LQA-0611" in text and "LQA-0602" in text
    from dicom_io.results.sr import read_report

    assert read_report(rep)["items"], "the verified report still reads as a QA report"
    _dciodvfy_clean(files)


def _dciodvfy_clean(files: list[Path]) -> None:
    import shutil

    if shutil.which("dciodvfy") is None:
        return
    for p in files:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{p.name}: {errors}"


def test_decisions_survive_restart_and_pending_writebacks_resume(audited):
    c, review, outbox = _app(audited)
    items = _flagged(c)
    c.post(f"/api/annotations/{items[0]['annotation_uid']}/decision",
           json={"decision": "label_wrong", "corrected_label": items[0]["consensus_label"]}, headers=_bearer(READER))
    # a decision whose write-back was interrupted (crash between commit and write): pending in the table
    out = review.store.decide(items[1]["id"], "label_right", READER[0])
    assert out.decision["writeback_state"] == "pending"
    n_out = len(outbox.list())
    c.close()
    review.engine.dispose()
    # "restart": new engine, new service, same files
    c2, review2, outbox2 = _app(audited)
    d0 = c2.get(f"/api/items/{items[0]['id']}", headers=_bearer(READER)).json()["decision"]
    assert d0["decision"] == "label_wrong" and d0["writeback_state"] == "done"
    assert review2.resume() == 1
    d1 = c2.get(f"/api/items/{items[1]['id']}", headers=_bearer(READER)).json()["decision"]
    assert d1["decision"] == "label_right" and d1["writeback_state"] == "done"
    assert len(outbox2.list()) == n_out + 1  # only the reissued report of the second study
    assert review2.resume() == 0


# ------------------------------------------------------------------------------------------ export, metrics


@pytest.mark.slow
def test_export_csv_json_and_cli(audited):
    c, review, _ = _app(audited)
    items = _flagged(c)
    c.post(f"/api/annotations/{items[0]['annotation_uid']}/decision",
           json={"decision": "label_wrong", "corrected_label": items[0]["consensus_label"]}, headers=_bearer(READER))
    c.post(f"/api/annotations/{items[1]['annotation_uid']}/decision", json={"decision": "label_right"},
           headers=_bearer(ADMIN))
    r = c.get("/api/export.csv", headers=_bearer(READER))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 2
    by = {x["annotation_uid"]: x for x in rows}
    a, b = by[items[0]["annotation_uid"]], by[items[1]["annotation_uid"]]
    assert a["decision"] == "label_wrong" and a["corrected_label"] == items[0]["consensus_label"]
    assert a["given_label"] == items[0]["given_label"] and a["reviewer"] == READER[0] and a["decided_at"]
    assert b["decision"] == "label_right" and b["corrected_label"] == "" and b["reviewer"] == ADMIN[0]
    assert b["final_label"] == items[1]["given_label"]
    assert len(c.get("/api/export.json", headers=_bearer(READER)).json()["rows"]) == 2
    # the CLI reads the same database
    cfg = audited.data_dir.parent / "labelqa.toml"
    cfg.write_text(f'[store]\ndata_dir = "{audited.data_dir}"\n')
    out = audited.data_dir.parent / "export.csv"
    p = subprocess.run([*labelqa_cmd(), "export", "--config", str(cfg), "--out", str(out)], capture_output=True,
                       text=True, env=labelqa_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert list(csv.DictReader(out.open())) == rows
    corrected_dir = audited.data_dir.parent / "corrected"
    p = subprocess.run([*labelqa_cmd(), "export", "--config", str(cfg), "--out", str(out), "--dicom",
                        str(corrected_dir)], capture_output=True, text=True, env=labelqa_env(), timeout=120)
    assert p.returncode == 0, p.stderr
    got = sorted(corrected_dir.rglob("*.dcm"))
    assert got, "the corrected copy holds the studies"
    from dicom_io.annotations import read_studies
    from dicom_io.vocabulary import load_vocabulary

    labels = {s.provenance.image_uid: s.label for st in read_studies(got, load_vocabulary(audited.vocabulary))
              for s in st.samples}
    assert labels[items[0]["image_uid"]] == items[0]["consensus_label"]
    assert labels[items[1]["image_uid"]] == items[1]["given_label"]
    assert len(labels) == len(audited.rows), "every annotation once: the superseded one left out"
    sent = review.store.item(items[0]["id"])["decision"]["writeback"]["corrected_uid"]
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in got}
    assert sent in uids, "the exported corrected object is the one written back to the PACS, not a new version"


def test_metrics_and_stats_show_the_loop(audited):
    c, review, _ = _app(audited)
    items = _flagged(c)
    c.post(f"/api/annotations/{items[0]['annotation_uid']}/decision",
           json={"decision": "label_wrong", "corrected_label": items[0]["consensus_label"]}, headers=_bearer(READER))
    c.post(f"/api/annotations/{items[1]['annotation_uid']}/decision", json={"decision": "label_right"},
           headers=_bearer(READER))
    c.post(f"/api/annotations/{items[2]['annotation_uid']}/decision", json={"decision": "unsure"},
           headers=_bearer(READER))
    st = c.get("/api/review/stats", headers=_bearer(READER)).json()
    assert st["decided"] == 3 and st["flag_precision"] == pytest.approx(0.5)
    assert st["errors_per_review"] == pytest.approx(1 / 3)
    top = [e for e in st["efficacy"] if e["fraction"] == 1.0][0]
    assert top["share"] == 1.0 and top["found"] == 1
    m = c.get("/metrics", headers=_bearer(READER)).text
    assert "labelqa_review_flag_precision 0.5" in m
    assert 'labelqa_review_decisions{decision="label_wrong"} 1.0' in m
    assert "labelqa_review_errors_per_review" in m and 'labelqa_review_efficacy{fraction="1"} 1.0' in m
    page = c.get("/review", headers={}, follow_redirects=False)
    assert page.status_code == 303  # the header stats are behind the login too
    _login(c, READER)
    html = c.get("/review").text
    assert "flag precision 0.50" in html and "3 reviewed" in html
    assert "confirmed errors in the top" in html and "50%: 100%" in html


def test_item_view_serves_image_and_heatmap(audited):
    c, _, _ = _app(audited)
    _login(c, READER)
    item = _flagged(c)[0]
    page = c.get(f"/review/items/{item['id']}")
    assert page.status_code == 200 and item["given_label"] in page.text and "why" in page.text
    img = c.get(f"/api/items/{item['id']}/image.png")
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get(f"/api/items/{item['id']}/image.png", params={"wc": 128, "ww": 64}).status_code == 200
    heat = c.get(f"/api/items/{item['id']}/heatmap.png")
    assert heat.status_code == 200 and heat.content[:4] == b"\x89PNG"
    assert c.get(f"/api/items/{item['id']}/mask.png").status_code == 404  # an SR label has no mask


def test_seg_item_shows_its_mask_and_a_correction_is_a_new_seg(tmp_path):
    a = build_audited(tmp_path, n=4, seg=True)
    c, review, outbox = _app(a)
    _login(c, READER)
    item = _flagged(c)[0]
    assert item["source"] == "seg" and item["segment_number"] == 1
    m = c.get(f"/api/items/{item['id']}/mask.png")
    assert m.status_code == 200 and m.content[:4] == b"\x89PNG"
    assert 'id="mask"' in c.get(f"/review/items/{item['id']}").text
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision",
               json={"decision": "label_wrong", "corrected_label": item["consensus_label"]}, headers=_bearer(READER))
    wb = r.json()["writeback"]
    seg = pydicom.dcmread(wb["corrected_path"])
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SOPInstanceUID != item["annotation_uid"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == item["consensus_label"]
    from dicom_io.annotations import read_study
    from dicom_io.vocabulary import load_vocabulary

    (sample,) = read_study([review.instance_path(item["image_uid"]), Path(wb["corrected_path"])],
                           load_vocabulary(a.vocabulary)).samples
    assert sample.label == item["consensus_label"]
    _dciodvfy_clean([Path(p) for p in wb["files"]])


def test_login_off_attributes_to_anonymous_and_still_checks_origin(audited):
    c, _, _ = _app(audited, users=False)
    item = c.get("/api/worklist", params={"verdict": "flagged"}).json()["items"][0]
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision", json={"decision": "unsure"})
    assert r.status_code == 200 and r.json()["reviewer"] == "anonymous"
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision", json={"decision": "label_right"},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_worklist_query_stays_fast_with_many_rows(tmp_path):
    """20,000 rows: a deep keyset page and a filtered count stay well under a second each."""
    from service.review import ReviewStore, WorklistFilter

    store = ReviewStore(make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}"))
    rng = np.random.default_rng(0)
    store.bulk_index({"annotation_uid": f"1.2.{i}", "study_uid": f"1.3.{i // 4}", "verdict":
                      ("suspected_label_error" if i % 20 == 0 else "consistent"), "priority": float(rng.random()),
                      "given_label": CLASSES[i % 2], "consensus_label": CLASSES[i % 2]} for i in range(20000))
    pg = store.worklist(limit=50)
    for _ in range(100):
        pg = store.worklist(limit=50, cursor=pg.next_cursor, with_total=False)
    t = time.perf_counter()
    deep = store.worklist(limit=50, cursor=pg.next_cursor)
    flagged = store.worklist(WorklistFilter(verdict="flagged"), limit=50)
    assert time.perf_counter() - t < 1.0
    assert deep.total == 20000 and flagged.total == 1000 and len(deep.items) == 50


@pytest.mark.slow
def test_evaluate_retrain_cli_compares_orders_on_cleaned_labels(tmp_path):
    """`labelqa evaluate --retrain` on a tiny synthetic set: labelqa's order finds at least as many errors
    as random review at the same budget, and the JSON has every label set's test accuracy."""
    from models.synthetic import make_shapes

    d = make_shapes(80, n_classes=2, size=32, seed=1)
    npz = tmp_path / "shapes.npz"
    np.savez_compressed(npz, images=(np.clip(d.images, 0, 1) * 255).astype(np.uint8), labels=np.asarray(d.labels),
                        class_names=np.asarray(CLASSES))
    out = tmp_path / "out"
    p = subprocess.run([*labelqa_cmd(), "evaluate", "--retrain", "--dataset", str(npz), "--out", str(out),
                        "--noise-rate", "0.2", "--budgets", "0.25", "--archs", "resnet-tiny,densenet-tiny",
                        "--epochs", "1", "--folds", "3", "--image-size", "32", "--device", "cpu", "--batch-size",
                        "16", "--no-progress"],
                       capture_output=True, text=True, env=labelqa_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((out / "retrain.json").read_text())
    (b,) = r["budgets"]
    assert b["reviews"] == round(0.25 * r["n_train"])
    assert b["errors_found"]["labelqa"] >= b["errors_found"]["random"]
    for key in ("noisy", "clean"):
        assert 0.0 <= r[key]["accuracy"] <= 1.0
    assert 0.0 <= b["labelqa"]["accuracy"] <= 1.0 and 0.0 <= b["random"]["accuracy"] <= 1.0
    assert "labelqa" in p.stdout and "random" in p.stdout


def test_sync_indexes_audits_that_finish_out_of_order_and_reaudits_replace_rows(tmp_path):
    from service.review import ReviewStore

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    jobs, store = JobStore(engine), ReviewStore(engine)

    def row(ann: str, verdict: str = "consistent", priority: float = 0.1) -> dict:
        return {"annotation_uid": ann, "study_uid": "1.9", "verdict": verdict, "priority": priority,
                "given_label": "disc", "consensus_label": "disc", "source": "sr", "content_path": "1.4"}

    a, b = jobs.enqueue("1.1"), jobs.enqueue("1.2")
    ja, jb = jobs.claim("w1"), jobs.claim("w2")
    assert {ja.id, jb.id} == {a.id, b.id}
    jobs.finish(b.id, "w2", DONE, result={"rows": [{**row("1.2.1"), "study_uid": "1.2"}], "outputs": []})
    assert store.sync() == 1
    time.sleep(0.01)
    jobs.finish(a.id, "w1", DONE, result={"rows": [{**row("1.1.1"), "study_uid": "1.1"}], "outputs": []})
    store.sync()
    assert {it["annotation_uid"] for it in store.worklist().items} == {"1.1.1", "1.2.1"}
    assert store.sync() == 0  # nothing new: nothing read
    # a re-audit of study 1.1 that no longer has 1.1.1 but a new annotation: the old row is kept, not current
    c = jobs.enqueue("1.1")
    jobs.claim("w1")
    jobs.finish(c.id, "w1", DONE, result={"rows": [{**row("1.1.2", "suspected_label_error", 3.0), "study_uid": "1.1"}],
                                          "outputs": []})
    store.sync()
    items = store.worklist().items
    assert [it["annotation_uid"] for it in items] == ["1.1.2", "1.2.1"]
    assert store.find("1.1.1")[0]["current"] is False


def test_a_seg_segment_on_two_source_frames_is_two_items(tmp_path):
    """One segment over two source images (a CT series SEG): two worklist items, not a unique-key clash;
    a row indexed before the frame key existed is taken over by its frame's row."""
    from sqlalchemy import update

    from service.review import AuditedRow, ReviewStore

    store = ReviewStore(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))

    def row(image: str, segment: int | None = 1, cls: str = "liver") -> dict:
        return {"annotation_uid": "1.5.1", "study_uid": "1.5", "source": "seg", "segment_number": segment,
                "image_uid": image, "frame": None, "class": cls, "given_label": cls,
                "verdict": "suspected_mask_error", "priority": 1.0}

    assert store.index_audit(1, "1.5", [row("1.5.9.1"), row("1.5.9.2"), row("1.5.9.1", None, "spleen"),
                                        row("1.5.9.1", None, "kidney")]) == 4
    items = store.worklist().items
    assert len(items) == 4 and {it["image_uid"] for it in items} == {"1.5.9.1", "1.5.9.2"}
    with store.engine.begin() as c:  # as an older labelqa indexed it
        c.execute(update(AuditedRow).where(AuditedRow.image_uid == "1.5.9.2").values(frame_key=""))
    before = {it["image_uid"]: it["id"] for it in items if it["segment_number"] == 1}
    store.index_audit(2, "1.5", [row("1.5.9.1"), row("1.5.9.2")])
    after = {it["image_uid"]: it["id"] for it in store.worklist().items if it["segment_number"] == 1}
    assert after == before


def test_worklist_header_states_the_mask_classes_the_models_cannot_judge(audited):
    c, review, _ = _app(audited, users=False)
    text = "the models cannot judge 'lesion <b>' masks here: median out-of-fold Dice 0.41 (< 0.5)"
    row = {"annotation_uid": "1.9.1", "study_uid": "1.9", "source": "seg", "segment_number": 1, "image_uid": "1.9.2",
           "frame": None, "class": "lesion <b>", "given_label": "lesion <b>", "verdict": "hard_case", "priority": 0.5,
           "cannot_judge": text}
    html = c.get("/review").text
    assert 'id="cannot-judge"' not in html
    review.store.index_audit(99, "1.9", [row])
    html = c.get("/review").text
    banner = html.split('id="cannot-judge"')[1].split("</ul>")[0]
    assert "the models cannot judge" in banner and "lesion &lt;b&gt;" in banner and "<b>" not in banner
    assert review.store.facets()["cannot_judge"] == [text]


def test_a_flag_whose_suggested_mask_is_shaped_unlike_the_class_says_so_on_its_page(audited):
    c, review, _ = _app(audited, users=False)
    base = {"study_uid": "1.8", "source": "seg", "segment_number": 1, "frame": None, "class": "head",
            "given_label": "head", "verdict": "suspected_mask_error", "kind": "boundary_too_tight", "dice": 0.6}
    review.store.index_audit(98, "1.8", [
        {**base, "annotation_uid": "1.8.1", "image_uid": "1.8.2", "priority": 0.2, "shape_typical": False},
        {**base, "annotation_uid": "1.8.3", "image_uid": "1.8.4", "priority": 0.9, "shape_typical": True}])
    items = {it["annotation_uid"]: it for it in review.store.worklist().items if it["study_uid"] == "1.8"}
    assert items["1.8.1"]["shape_atypical"] is True and items["1.8.3"]["shape_atypical"] is False
    page = c.get(f"/review/items/{items['1.8.1']['id']}")
    assert page.status_code == 200 and 'id="shape-note"' in page.text
    assert 'id="shape-note"' not in c.get(f"/review/items/{items['1.8.3']['id']}").text
