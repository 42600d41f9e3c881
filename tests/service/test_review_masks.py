"""Reviewing a flagged mask: accept labelqa's suggested mask, through the API, the page and the export.

A real two-slice CT study with a hand-made SEG (liver, spleen) is stored and audited by hand (no
model): the liver is flagged on both slices (slice 1 has no liver drawn at all, so its SEG frame is
missing), with consensus masks that ``write_results`` puts into the suggestion SEG. Accepting the
suggestion must write a corrected SEG whose liver equals the suggestion on that slice and nothing
else changed, pass dciodvfy, and put the decision into the VERIFIED QA report.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import codes
from dicom_io.db import make_engine
from dicom_io.store import StudyStore
from service.runtime.jobs import JobStore
from tests.conftest import record_finished_audit
from tests.dicom_io.test_results_masks import ALGORITHM, VOCAB, _ct_series, _rect, _seg
from tests.service.test_review import READER, Audited, _app, _bearer, _dciodvfy_clean, _login

SHAPE = (128, 128)
CONSENSUS = {0: _rect(SHAPE, 30, 30, 60, 90), 1: _rect(SHAPE, 40, 40, 70, 80)}  # liver, slice 0 and 1


@pytest.fixture(scope="module")
def mask_template(tmp_path_factory) -> Audited:
    from dicom_io.annotations import read_study
    from dicom_io.results import AuditedMask, write_results

    root = tmp_path_factory.mktemp("maskreview")
    cts = _ct_series(2)
    liver = np.stack([_rect(SHAPE, 30, 30, 60, 60), np.zeros(SHAPE, bool)])
    spleen = np.stack([_rect(SHAPE, 80, 80, 100, 110), _rect(SHAPE, 90, 20, 100, 30)])
    seg = _seg(cts, np.stack([liver, spleen], -1))
    data_dir = root / "labelqa"
    store = StudyStore(data_dir, None, 3600.0)
    for i, ds in enumerate([*cts, seg]):
        ds.save_as(root / f"{i}.dcm", enforce_file_format=True)
        store.put((root / f"{i}.dcm").read_bytes())
    (study,) = store.studies()
    files = store.study_files(study)
    aset = read_study(files, VOCAB, masks=True)
    slice_of = {ds.SOPInstanceUID: i for i, ds in enumerate(cts)}
    masks, rows = [], []
    for m in aset.mask_samples:
        pv, k = m.provenance, slice_of[m.provenance.image_uid]
        flagged = m.class_name == "liver"
        consensus = CONSENSUS[k] if flagged else m.given_mask
        verdict = "suspected_mask_error" if flagged else "consistent"
        kind = ("boundary_too_tight" if k == 0 else "missing_structure") if flagged else None
        masks.append(AuditedMask.from_sample(m, verdict=verdict, kind=kind, dice=0.5 if flagged else 1.0, hd95_mm=None,
                                             agreement=0.9, priority=(5.0 - k) if flagged else 0.1, score=0.9,
                                             consensus=consensus, regions=[], class_code=VOCAB.code_for(m.class_name)))
        rows.append({"study_uid": pv.study_uid, "annotation_uid": pv.annotation_uid, "source": "seg",
                     "segment_number": pv.segment_number, "image_uid": pv.image_uid, "frame": pv.frame,
                     "class": m.class_name, "given_label": m.class_name, "verdict": verdict, "kind": kind,
                     "dice": 0.5 if flagged else 1.0, "agreement": 0.9, "priority": masks[-1].priority,
                     "score": 0.9})
    loaded = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    datasets = write_results({u: loaded[u] for u in slice_of}, {seg.SOPInstanceUID: loaded[seg.SOPInstanceUID]}, [],
                             ALGORITHM, masks=masks)
    jobs = JobStore(make_engine(f"sqlite:///{data_dir / 'index.sqlite'}"))
    record_finished_audit(jobs, study, rows, datasets, data_dir)
    store.close()
    vocab = root / "vocabulary.toml"
    VOCAB.to_toml(vocab)
    return Audited(data_dir, f"sqlite:///{data_dir / 'index.sqlite'}", vocab, [study], rows)


@pytest.fixture
def masked(mask_template, tmp_path) -> Audited:
    """A private copy: decisions change the database and the results folder."""
    return mask_template.copy_to(tmp_path / "labelqa")


def _masks(paths: list[Path]) -> dict[tuple[str, str], np.ndarray]:
    from dicom_io.annotations import read_study

    return {(m.provenance.image_uid, m.class_name): m.given_mask
            for m in read_study(paths, VOCAB, masks=True).mask_samples}


def _sources(review, item) -> list[Path]:
    seg = pydicom.dcmread(review.instance_path(item["annotation_uid"]), stop_before_pixels=True)
    return [review.instance_path(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence]


def _decide(c, item, **body):
    return c.post(f"/api/annotations/{item['annotation_uid']}/decision", json={"item_id": item["id"], **body},
                  headers=_bearer(READER))


@pytest.mark.slow
def test_accepting_the_suggested_mask_writes_a_corrected_seg(masked):
    from dicom_io.results.sr import read_report
    from service.cli.export import corrected_copy

    c, review, outbox = _app(masked)
    flagged = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "flagged"}).json()["items"]
    assert len(flagged) == 2 and all(it["suggestion_uid"] and it["source"] == "seg" for it in flagged)
    assert len({it["annotation_uid"] for it in flagged}) == 1  # one segment, two source frames: two items
    first, second = flagged  # slice 0 (priority 5), slice 1 (no liver drawn there)
    assert first["mask_kind"] == "boundary_too_tight" and second["mask_kind"] == "missing_structure"
    _login(c, READER)
    page = c.get(f"/review/items/{first['id']}").text
    assert 'id="btn-accept-mask"' in page and 'id="suggestion"' in page and "<kbd>a</kbd>" in page
    for pic in ("mask.png", "suggestion.png"):
        r = c.get(f"/api/items/{first['id']}/{pic}")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", pic
    sources = _sources(review, first)
    original = review.instance_path(first["annotation_uid"])
    before = _masks([*sources, original])
    u0, u1 = first["image_uid"], second["image_uid"]
    assert np.array_equal(review.suggested_mask(first), CONSENSUS[0])  # read back from the suggestion SEG

    r = _decide(c, first, decision="label_wrong", corrected_mask="suggestion", comment="misses the right lobe")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["changed"] and d["corrected_mask"] == "suggestion" and d["writeback_state"] == "done", d
    wb = d["writeback"]
    assert len(outbox.list()) == 2  # the corrected SEG and the verified report
    seg = pydicom.dcmread(wb["corrected_path"])
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and int(seg.SeriesNumber) == 9907
    after = _masks([*sources, Path(wb["corrected_path"])])
    assert np.array_equal(after[(u0, "liver")], CONSENSUS[0])
    assert all(np.array_equal(after[k], before[k]) for k in before if k != (u0, "liver"))
    rep = pydicom.dcmread(wb["report_path"])
    text = json.dumps(rep.to_json_dict())
    assert codes.CORRECTED_MASK.value in text and codes.ERROR_CONFIRMED.value in text
    assert codes.CORRECTED_LABEL.value not in text and read_report(rep)["masks"]
    _dciodvfy_clean([Path(p) for p in wb["files"]])
    # the same decision again writes nothing
    again = _decide(c, first, decision="label_wrong", corrected_mask="suggestion", comment="misses the right lobe")
    assert again.json()["changed"] is False and len(outbox.list()) == 2 and len(review.store.trail(first["id"])) == 1

    # the other slice, where no liver was drawn: its frame is added; both corrections in one next version
    r2 = _decide(c, second, decision="label_wrong", corrected_mask="suggestion")
    wb2 = r2.json()["writeback"]
    assert r2.json()["writeback_state"] == "done" and wb2["corrected_uid"] != wb["corrected_uid"]
    seg2 = pydicom.dcmread(wb2["corrected_path"])
    assert int(seg2.NumberOfFrames) == int(pydicom.dcmread(original).NumberOfFrames) + 1
    after2 = _masks([*sources, Path(wb2["corrected_path"])])
    assert np.array_equal(after2[(u0, "liver")], CONSENSUS[0]) and np.array_equal(after2[(u1, "liver")], CONSENSUS[1])
    assert all(np.array_equal(after2[k], before[k]) for k in before if k[1] != "liver")
    assert len(read_report(pydicom.dcmread(wb2["report_path"]))["masks"]) == len(before)
    text2 = json.dumps(pydicom.dcmread(wb2["report_path"]).to_json_dict())
    assert text2.count(f'"{codes.CORRECTED_MASK.value}"') == 2  # one per reviewed frame
    _dciodvfy_clean([Path(p) for p in wb2["files"]])

    # the export says so, and the corrected copy holds the corrected SEG in place of the original
    rows = list(csv.DictReader(io.StringIO(c.get("/api/export.csv", headers=_bearer(READER)).text)))
    assert [(x["decision"], x["corrected_mask"], x["corrected_label"], x["final_label"]) for x in rows] == \
        [("label_wrong", "suggestion", "", "liver")] * 2
    dest = masked.data_dir.parent / "corrected"
    n_files, n_fixed = corrected_copy(review, dest)
    assert n_fixed == 1 and n_files == 3
    copied = sorted(dest.rglob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in copied]
    assert first["annotation_uid"] not in {str(h.SOPInstanceUID) for h in headers}
    assert [int(h.SeriesNumber) for h in headers if h.Modality == "SEG"] == [9907]
    exported = _masks(copied)
    assert all(np.array_equal(exported[k], after2[k]) for k in after2)

    # a change of mind on slice 1: the next version keeps slice 0's accepted suggestion only
    r3 = _decide(c, second, decision="label_right")
    after3 = _masks([*sources, Path(r3.json()["writeback"]["corrected_path"])])
    assert np.array_equal(after3[(u0, "liver")], CONSENSUS[0]) and not after3[(u1, "liver")].any()


def test_corrected_mask_is_refused_with_a_reason(masked):
    c, review, outbox = _app(masked)
    items = c.get("/api/worklist", headers=_bearer(READER), params={"limit": 50}).json()["items"]
    plain = next(it for it in items if it["given_label"] == "spleen")  # consistent: no suggestion
    absent = next(it for it in items if it["given_label"] == "kidney")  # no kidney segment in the SEG
    flagged = next(it for it in items if it["suggestion_uid"])
    for item, body, message in (
        (plain, {"decision": "label_wrong", "corrected_mask": "suggestion"}, "no suggested mask"),
        (absent, {"decision": "label_wrong", "corrected_mask": "suggestion"}, "no suggested mask"),
        (flagged, {"decision": "label_right", "corrected_mask": "suggestion"}, "only for label_wrong"),
        (flagged, {"decision": "label_wrong"}, "corrected_mask"),
        (flagged, {"decision": "label_wrong", "corrected_mask": "drawn"}, "suggestion"),
    ):
        r = _decide(c, item, **body)
        assert r.status_code == 422, (body, r.text)
        assert message in r.text, (message, r.text)
    assert c.get(f"/api/items/{plain['id']}/suggestion.png", headers=_bearer(READER)).status_code == 404
    assert outbox.list() == [] and all(it["decision"] is None for it in review.store.find(flagged["annotation_uid"]))
    # the item page's form: the CSRF token as always, and the accepted suggestion recorded
    csrf = _login(c, READER)
    form = {"decision": "label_wrong", "corrected_mask": "suggestion", "corrected_label": "", "verdict": "flagged"}
    assert c.post(f"/review/items/{flagged['id']}/decision", data=form, follow_redirects=False).status_code == 403
    r = c.post(f"/review/items/{flagged['id']}/decision", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    d = c.get(f"/api/items/{flagged['id']}").json()["decision"]
    assert d["corrected_mask"] == "suggestion" and d["writeback_state"] == "done"
    assert review.store.trail(flagged["id"])[0]["corrected_mask"] == "suggestion"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
                    reason="chromium / chromedriver not installed")
def test_reviewer_accepts_the_suggested_mask_with_the_key_a(masked, tmp_path):
    """Debian's chromium (headless): log in, open the flagged mask, hide and show the suggestion (s), press a."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from service.demo.peers import free_port
    from service.http import ApiServer
    from tests.service.test_review_browser import _browser

    c, review, outbox = _app(masked)
    item = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "flagged"}).json()["items"][0]
    server = ApiServer(c.app, "127.0.0.1", free_port())
    server.start()
    driver = _browser(tmp_path / "downloads")
    try:
        wait = WebDriverWait(driver, 30)
        base = f"http://127.0.0.1:{server.port}"
        driver.get(f"{base}/review/items/{item['id']}")
        wait.until(EC.presence_of_element_located((By.ID, "login-form")))
        driver.find_element(By.ID, "name").send_keys(READER[0])
        driver.find_element(By.ID, "token").send_keys(READER[1] + Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "item").get_attribute("data-item") == str(item["id"]))
        wait.until(lambda d: d.execute_script(
            "var i = document.getElementById('suggestion'); return i.complete && i.naturalWidth > 0;"))
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("s")
        assert "hidden" in driver.find_element(By.ID, "suggestion").get_attribute("class")
        body.send_keys("s")
        assert "hidden" not in driver.find_element(By.ID, "suggestion").get_attribute("class")
        shots = Path(os.environ.get("LABELQA_TEST_ARTIFACTS", tmp_path / "artifacts")) / "review-browser"
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "10-mask-item.png"))
        body.send_keys("a")
        wait.until(EC.presence_of_element_located((By.ID, "saved")))
    finally:
        driver.quit()
        server.stop()
    d = review.store.item(item["id"])["decision"]
    assert (d["decision"], d["corrected_mask"], d["corrected_label"], d["reviewer"]) == \
        ("label_wrong", "suggestion", None, READER[0])
    assert d["writeback_state"] == "done" and len(outbox.list()) == 2


def test_mask_picture_of_a_seg_it_cannot_draw_is_a_clear_422(masked):
    """The item's SEG replaced (same UID) by one highdicom cannot draw: a fractional SEG whose Maximum
    Fractional Value is 0, then a label map declaring 65,535 segments (refused from its header, before
    highdicom parses it). Each answers 422 with the reason; a fresh app each time (pictures are cached)."""
    import highdicom as hd

    from tests.dicom_io.test_seg_masks import _labelmap_declaring
    from tests.service.test_review import _app

    c, review, _ = _app(masked)
    item = next(i for i in c.get("/api/worklist?verdict=any", headers=_bearer(READER)).json()["items"]
                if i["source"] == "seg")
    path = review.instance_path(item["annotation_uid"])
    cts = [pydicom.dcmread(p) for p in _sources(review, item)]
    pixels = np.zeros((len(cts), *SHAPE, 2), np.float32)
    pixels[:, 30:60, 30:60, 0] = 0.8
    frac = hd.seg.Segmentation(
        source_images=cts, pixel_array=pixels, segmentation_type="FRACTIONAL", max_fractional_value=255,
        segment_descriptions=[hd.seg.SegmentDescription.from_dataset(d) for d in pydicom.dcmread(path).SegmentSequence],
        series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=item["annotation_uid"], instance_number=1, manufacturer="annotator",
        manufacturer_model_name="hand", software_versions="1", device_serial_number="1")
    frac.MaximumFractionalValue = 0
    frac.save_as(path, enforce_file_format=True)
    r = c.get(f"/api/items/{item['id']}/mask.png", headers=_bearer(READER))
    assert r.status_code == 422 and r.json()["detail"].startswith("cannot draw the mask"), r.text
    _labelmap_declaring(cts, np.zeros((len(cts), *SHAPE), np.uint16), ["liver", "spleen"] * 32767 + ["liver"], path,
                        sop_instance_uid=item["annotation_uid"])
    c, review, _ = _app(masked)
    r = c.get(f"/api/items/{item['id']}/mask.png", headers=_bearer(READER))
    assert r.status_code == 422 and "max_segments" in r.json()["detail"], r.text
