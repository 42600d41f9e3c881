"""Reviewing a segment audited in 3-D: one worklist item per (SEG, segment), a page that scrolls through
the series' slices, and accepting the suggestion replaces the segment on every slice.

A real CT-like series with real geometry (``write_volume_study``: 12 slices of 64 x 64) and a SEG over it
(liver, spleen) is stored in a study store and audited by hand (no model): the liver is flagged as
shifted (the consensus lies two slices lower, so it covers two slices where the SEG has no liver
frame), the kidney, which the SEG lacks, is flagged as a missing structure, the spleen is consistent.
``write_volume_results`` writes the real result objects (a suggestion SEG over the series, overlays on
the key slices, the QA report) and the verdict rows are ``VolumeRow``s, as the volume audit task gives
them. The review must index one item per segment, draw each slice's given and suggested mask exactly as
the SEGs hold them, and, when the suggestion is accepted, write a corrected SEG whose liver equals the
suggestion voxel for voxel over the series while the spleen stays as it was.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import codes
from dicom_io.db import make_engine
from dicom_io.store import StudyStore
from dicom_io.vocabulary import Vocabulary
from service.runtime.jobs import JobStore
from tests.conftest import record_finished_audit
from tests.service.test_review import READER, Audited, _app, _bearer, _dciodvfy_clean, _login
from tests.service.test_review_masks import mask_template  # noqa: F401 - a 2-D mask item, for the contrast

VOCAB = Vocabulary.from_class_names(["liver", "spleen", "kidney"])
SHAPE = (12, 64, 64)
SPACING = (2.5, 0.8, 0.8)


def _ellipsoid(center, radii) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + \
        ((x - center[2]) / radii[2]) ** 2 <= 1.0


def _region(kind: str, mask: np.ndarray) -> dict:
    zs, ys, xs = np.nonzero(mask)
    return {"kind": kind, "voxels": int(mask.sum()), "volume_mm3": float(mask.sum() * np.prod(SPACING)),
            "bbox": [int(zs.min()), int(ys.min()), int(xs.min()), int(zs.max()) + 1, int(ys.max()) + 1,
                     int(xs.max()) + 1],
            "slices": [int(zs.min()), int(zs.max())], "center_mm": [1.0, 2.0, 3.0]}


@pytest.fixture(scope="module")
def volume_template(tmp_path_factory) -> Audited:
    from dicom_io.annotations import read_study
    from dicom_io.dicomize_volume import write_volume_study
    from dicom_io.geometry import Geometry
    from dicom_io.results import AlgorithmInfo, AuditedVolumeMask, write_volume_results
    from service.audit.rows import VolumeRow

    root = tmp_path_factory.mktemp("volreview")
    rng = np.random.default_rng(3)
    liver = np.zeros(SHAPE, bool)
    liver[2:8] = _ellipsoid((4.5, 26, 24), (4.0, 14, 12))[2:8]
    spleen = _ellipsoid((6, 30, 48), (3.0, 8, 6))
    body = _ellipsoid((6, 32, 32), (40, 29, 30))
    image = np.where(body, 40.0, -1000.0) + 50.0 * liver + 25.0 * spleen + rng.normal(0, 6, SHAPE)
    head_to_feet = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]  # right-handed: the reader keeps the order
    geometry = Geometry.from_components(SHAPE, SPACING, (-25.0, -25.0, 100.0), head_to_feet,
                                        "1.2.826.0.1.3680043.8.498.77")
    written = write_volume_study(np.round(image), geometry, {"liver": liver, "spleen": spleen}, root / "study",
                                 dataset_name="volreview", case_key="case1", modality="CT", vocabulary=VOCAB,
                                 body_part="ABDOMEN")
    data_dir = root / "labelqa"
    store = StudyStore(data_dir, None, 3600.0)
    for p in [*written.image_paths, written.seg_path]:
        store.put(Path(p).read_bytes())
    (study,) = store.studies()
    files = store.study_files(study)
    aset = read_study(files, VOCAB, volumes=True)
    vol = aset.volumes[written.series_uid]
    given = {m.label: m for m in aset.mask_volumes}
    assert np.array_equal(given["liver"].mask, liver) and np.array_equal(given["spleen"].mask, spleen)
    liver_consensus = np.roll(liver, (2, 3), axis=(0, 2))  # the models: two slices lower, 3 px to the right
    kidney_consensus = _ellipsoid((5, 44, 20), (2.0, 6, 5))
    slices = [[u, f] for u, f in zip(vol.slice_uids, vol.slice_frames, strict=True)]
    common = dict(study_uid=study, annotation_uid=written.seg_uid, annotation_sop_class_uid=str(pydicom.uid.
                  SegmentationStorage), series_uid=written.series_uid, slice_uids=tuple(vol.slice_uids),
                  slice_frames=tuple(vol.slice_frames), spacing=tuple(vol.spacing), agreement=0.9)
    voxel = float(np.prod(SPACING))

    def key_slices(g, c):
        diff = (g ^ c).sum(axis=(1, 2))
        return tuple(int(k) for k in np.argsort(-diff, kind="stable") if diff[k] > 0)

    def zrange(m):
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        return (int(zs[0]), int(zs[-1])) if zs.size else None

    cases = [  # class, verdict, kind, given, consensus, dice, predicted Dice, priority, regions
        ("liver", "suspected_mask_error", "shifted", liver, liver_consensus, 0.52, 0.55, 0.45,
         [_region("spurious_structure", liver & ~liver_consensus), _region("missing_structure",
                                                                            liver_consensus & ~liver)]),
        ("kidney", "suspected_mask_error", "missing_structure", np.zeros(SHAPE, bool), kidney_consensus, 0.0, 0.05,
         0.30, [_region("missing_structure", kidney_consensus)]),
        ("spleen", "consistent", None, spleen, spleen, 0.97, 0.95, 0.01, []),
    ]
    records, rows = [], []
    for name, verdict, kind, g, c, dice, pdice, priority, regions in cases:
        segment = given[name].segment_number if name in given else None
        flagged = verdict != "consistent"
        key = key_slices(g, c) if flagged else ()
        records.append(AuditedVolumeMask(
            **common, class_name=name, class_code=VOCAB.code_for(name), verdict=verdict, kind=kind, dice=dice,
            hd95_mm=5.0 if flagged else 0.8, priority=priority, score=0.9 if flagged else 0.02, predicted_dice=pdice,
            given_mm3=float(g.sum() * voxel), consensus_mm3=float(c.sum() * voxel), segment_number=segment,
            key_slices=key, slice_range=zrange(g), regions=regions, consensus=c if flagged else None,
            given=g if flagged else None))
        worst = key[0] if key else 0
        rows.append(VolumeRow(
            study_uid=study, annotation_uid=written.seg_uid, image_uid=slices[worst][0], frame=slices[worst][1],
            given_label=name, verdict=verdict, priority=priority, score=0.9 if flagged else 0.02, agreement=0.9,
            segment_number=segment, class_name=name, kind=kind, dice=dice, hd95=5.0 if flagged else 0.8,
            distance_unit="mm", given_area_px=int(g.sum()), consensus_area_px=int(c.sum()),
            series_uid=written.series_uid, predicted_dice=pdice, given_mm3=float(g.sum() * voxel),
            consensus_mm3=float(c.sum() * voxel), slice_range=list(zrange(g)) if zrange(g) else None,
            key_slices=list(key), slices=slices, regions_3d=regions).to_dict())
    loaded = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    algorithm = AlgorithmInfo(name="labelqa 3-D test", version="0.1", bundle_hash="sha256:" + "0" * 16,
                              parameters={"members": "unet3d-tiny"})
    datasets = write_volume_results({u: loaded[u] for u in vol.slice_uids}, {written.seg_uid: loaded[written.seg_uid]},
                                    records, algorithm, key_slices=3)
    jobs = JobStore(make_engine(f"sqlite:///{data_dir / 'index.sqlite'}"))
    record_finished_audit(jobs, study, rows, datasets, data_dir)
    store.close()
    vocab = root / "vocabulary.toml"
    VOCAB.to_toml(vocab)
    np.savez(data_dir / "truth.npz", liver=liver, spleen=spleen, liver_consensus=liver_consensus,
             kidney_consensus=kidney_consensus)
    return Audited(data_dir, f"sqlite:///{data_dir / 'index.sqlite'}", vocab, [study], rows)


@pytest.fixture
def volumes(volume_template, tmp_path) -> Audited:
    """A private copy: decisions change the database and the results folder."""
    return volume_template.copy_to(tmp_path / "labelqa")


def _truth(a: Audited) -> dict[str, np.ndarray]:
    return dict(np.load(a.data_dir / "truth.npz"))  # what the SEG and the suggestion were made from


def _items(c) -> dict[str, dict]:
    items = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "any"}).json()["items"]
    return {it["given_label"]: it for it in items}


def _overlay(r) -> np.ndarray:
    """Where an overlay PNG draws anything (alpha > 0)."""
    from PIL import Image

    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    a = np.asarray(Image.open(io.BytesIO(r.content)))
    assert a.ndim == 3 and a.shape[2] == 4
    return a[..., 3] > 0


def _decide(c, item, **body):
    return c.post(f"/api/annotations/{item['annotation_uid']}/decision", json={"item_id": item["id"], **body},
                  headers=_bearer(READER))


def _segments(path, series_volume) -> dict[str, np.ndarray]:
    """A SEG's segments by class, read as volumes on the series' grid."""
    from dicom_io.annotations.seg_volume import read_seg_volumes

    found, issues = read_seg_volumes(pydicom.dcmread(path), series_volume, VOCAB)
    assert issues == [], issues
    return {m.label: m.mask for m in found}


def _series_volume(review, item):
    return review.volume_masks.grid(item).volume


def test_a_volume_audit_is_one_item_per_segment_with_its_facts(volumes):
    c, review, _ = _app(volumes)
    listed = c.get("/api/worklist", headers=_bearer(READER), params={"verdict": "any"}).json()
    assert listed["total"] == 3  # three segments, not 12 slices x 3
    items = {it["given_label"]: it for it in listed["items"]}
    liver, kidney, spleen = items["liver"], items["kidney"], items["spleen"]
    row = next(r for r in volumes.rows if r["class"] == "liver")
    assert liver["dims"] == 3 and liver["n_slices"] == 12 and "slices" not in liver  # pages stay small
    assert liver["verdict"] == "suspected_mask_error" and liver["mask_kind"] == "shifted"
    assert liver["dice"] == 0.52 and liver["predicted_dice"] == 0.55 and liver["slice_range"] == [2, 7]
    assert liver["key_slices"] == row["key_slices"] and liver["key_slices"][0] in (2, 3, 8, 9)
    assert liver["given_mm3"] == pytest.approx(row["given_mm3"]) and liver["consensus_mm3"] > 0
    assert [r["kind"] for r in liver["regions_3d"]] == ["spurious_structure", "missing_structure"]
    assert liver["suggestion_uid"] == row["suggestion_uid"] and liver["suggestion_segment"] == 1
    assert liver["volume_series_uid"] == liver["series_uid"] == row["series_uid"]
    assert liver["segment_number"] and kidney["segment_number"] is None and kidney["suggestion_segment"] == 2
    assert spleen["suggestion_uid"] is None and spleen["dims"] == 3
    one = c.get(f"/api/items/{liver['id']}", headers=_bearer(READER)).json()
    assert one["slices"] == row["slices"] and len(one["slices"]) == 12 and one["image_uid"] == row["image_uid"]
    # indexing the same audit again changes nothing: still one item per segment
    assert review.store.sync() == 0 and c.get("/api/worklist", headers=_bearer(READER),
                                              params={"verdict": "any"}).json()["total"] == 3

    _login(c, READER)
    page = c.get("/review", params={"verdict": "any"}).text
    assert page.count('data-dims="3"') == 3
    cells = re.findall(r'<td class="mask-facts">(.*?)</td>', page, re.S)
    first = " ".join(cells[0].split())
    assert first.startswith("shifted") and "Dice 0.52" in first and "predicted Dice 0.55" in first
    assert "slices 3&ndash;8 of 12" in first and "3-D" in first

    r = c.get(f"/review/items/{liver['id']}")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    worst = liver["key_slices"][0]
    assert f'data-slice="{worst}"' in html and 'data-slices="12"' in html
    assert f'/api/items/{liver["id"]}/image.png?slice={worst}' in html
    assert f'/api/items/{liver["id"]}/suggestion.png?slice={worst}' in html
    assert 'id="slice"' in html and len(re.findall(r'class="tick( worst)?"', html)) == len(liver["key_slices"])
    assert "key slice (worst)" in html and 'id="btn-accept-mask"' in html and "(all slices)" in html
    assert "predicted Dice" in html and "spurious structure" in html
    # the page may be opened on another slice
    assert 'data-slice="5"' in c.get(f"/review/items/{liver['id']}", params={"slice": 5}).text


def test_slice_pictures_are_the_segments_on_that_slice(volumes, mask_template):  # noqa: F811
    from PIL import Image

    from dicom_io.pixels import frame_to_float

    c, review, _ = _app(volumes)
    truth = _truth(volumes)
    items = _items(c)
    liver, kidney, spleen = items["liver"], items["kidney"], items["spleen"]
    slices = c.get(f"/api/items/{liver['id']}", headers=_bearer(READER)).json()["slices"]
    worst = liver["key_slices"][0]
    h = _bearer(READER)
    for k in sorted({0, worst, 5, 9}):  # nothing, the worst, both masks, the suggestion only
        given = _overlay(c.get(f"/api/items/{liver['id']}/mask.png", params={"slice": k}, headers=h))
        assert np.array_equal(given, truth["liver"][k]), k
        suggested = _overlay(c.get(f"/api/items/{liver['id']}/suggestion.png", params={"slice": k}, headers=h))
        assert np.array_equal(suggested, truth["liver_consensus"][k]), k
        r = c.get(f"/api/items/{liver['id']}/image.png", params={"slice": k}, headers=h)
        shown = np.asarray(Image.open(io.BytesIO(r.content)))
        ds = pydicom.dcmread(review.instance_path(slices[k][0]))
        assert np.array_equal(shown, (np.clip(frame_to_float(ds, slices[k][1]), 0, 1) * 255).round().astype(np.uint8))
        windowed = c.get(f"/api/items/{liver['id']}/image.png", params={"slice": k, "wc": 40, "ww": 400}, headers=h)
        assert windowed.status_code == 200 and windowed.content != r.content
        assert np.array_equal(_overlay(c.get(f"/api/items/{spleen['id']}/mask.png", params={"slice": k}, headers=h)),
                              truth["spleen"][k])
        # the kidney the SEG lacks: nothing given on any slice, the suggestion where the models put it
        assert not _overlay(c.get(f"/api/items/{kidney['id']}/mask.png", params={"slice": k}, headers=h)).any()
        assert np.array_equal(_overlay(c.get(f"/api/items/{kidney['id']}/suggestion.png", params={"slice": k},
                                             headers=h)), truth["kidney_consensus"][k])
    # without a slice: the worst key slice, where the page opens
    assert np.array_equal(_overlay(c.get(f"/api/items/{liver['id']}/mask.png", headers=h)), truth["liver"][worst])
    # a slice out of range, or not a number, is a 4xx that says so; the consistent spleen has no suggestion
    for bad in (12, 1000, -1, "x"):
        r = c.get(f"/api/items/{liver['id']}/mask.png", params={"slice": bad}, headers=h)
        assert r.status_code == 422, (bad, r.text)
    assert "out of range" in c.get(f"/api/items/{liver['id']}/image.png", params={"slice": 12}, headers=h).text
    assert c.get(f"/api/items/{spleen['id']}/suggestion.png", params={"slice": 3}, headers=h).status_code == 404
    assert c.get(f"/api/items/{liver['id']}/mask.png", params={"slice": 3}).status_code == 401  # login as always

    # a 2-D mask item is one frame: its pictures as before, and no slices
    c2, _, _ = _app(mask_template)
    flat = c2.get("/api/worklist", headers=h, params={"verdict": "flagged"}).json()["items"][0]
    assert flat["dims"] == 2 and "slices" not in flat
    for pic in ("image.png", "mask.png", "suggestion.png"):
        assert c2.get(f"/api/items/{flat['id']}/{pic}", headers=h).status_code == 200, pic
        r = c2.get(f"/api/items/{flat['id']}/{pic}", params={"slice": 0}, headers=h)
        assert r.status_code == 422 and "no slices" in r.text, pic
    _login(c2, READER)
    assert 'data-dims="2"' in (page := c2.get(f"/review/items/{flat['id']}").text) and 'id="slice"' not in page


@pytest.mark.slow
def test_accepting_the_suggestion_replaces_the_whole_segment(volumes):
    from dicom_io.results.revision import MASK_VOLUME_REPLACED_NOTE
    from dicom_io.results.sr import read_report

    c, review, outbox = _app(volumes)
    truth = _truth(volumes)
    items = _items(c)
    liver, kidney, spleen = items["liver"], items["kidney"], items["spleen"]
    full = review.store.item(liver["id"])
    grid = _series_volume(review, full)
    original = review.instance_path(liver["annotation_uid"])
    before = _segments(original, grid)
    # refused with a reason: a segment the SEG lacks, a segment without a suggestion
    r = _decide(c, kidney, decision="label_wrong", corrected_mask="suggestion")
    assert r.status_code == 422 and "has no segment of 'kidney'" in r.text
    r = _decide(c, spleen, decision="label_wrong", corrected_mask="suggestion")
    assert r.status_code == 422 and "no suggested mask" in r.text
    assert outbox.list() == []

    r = _decide(c, liver, decision="label_wrong", corrected_mask="suggestion", comment="two slices too high")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["changed"] and d["corrected_mask"] == "suggestion" and d["writeback_state"] == "done", d
    wb = d["writeback"]
    assert len(outbox.list()) == 2  # the corrected SEG and the verified report
    seg = pydicom.dcmread(wb["corrected_path"])
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and int(seg.SeriesNumber) == 9907
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == {liver["series_uid"]}
    after = _segments(wb["corrected_path"], grid)
    assert np.array_equal(after["liver"], truth["liver_consensus"])  # voxel for voxel, every slice
    assert np.array_equal(after["liver"], review.volume_masks.suggested_volume(full))
    assert np.array_equal(after["spleen"], before["spleen"]) and after.keys() == before.keys()
    notes = {str(s.SegmentLabel): str(s.get("SegmentDescription", "")) for s in seg.SegmentSequence}
    assert notes["liver"] == MASK_VOLUME_REPLACED_NOTE and "suggestion" not in notes["spleen"]
    rep = pydicom.dcmread(wb["report_path"])
    text = json.dumps(rep.to_json_dict())
    assert text.count(f'"{codes.CORRECTED_MASK.value}"') == 1 and codes.ERROR_CONFIRMED.value in text
    assert rep.VerificationFlag == "VERIFIED" and read_report(rep)
    _dciodvfy_clean([Path(p) for p in wb["files"]])
    # the same decision again writes nothing
    again = _decide(c, liver, decision="label_wrong", corrected_mask="suggestion", comment="two slices too high")
    assert again.json()["changed"] is False and len(outbox.list()) == 2

    # a change of mind: the next version has the liver as it was drawn
    r2 = _decide(c, liver, decision="label_right")
    wb2 = r2.json()["writeback"]
    assert r2.json()["writeback_state"] == "done" and wb2["corrected_uid"] != wb["corrected_uid"]
    restored = _segments(wb2["corrected_path"], grid)
    assert np.array_equal(restored["liver"], truth["liver"]) and np.array_equal(restored["spleen"], truth["spleen"])


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
                    reason="chromium / chromedriver not installed")
def test_reviewer_scrolls_a_volume_and_accepts_the_suggestion(volumes, tmp_path):
    """Debian's chromium (headless): log in, open the flagged liver, which opens on its worst slice; scroll
    with the keyboard and the slider, hide and show the suggestion (s), accept it (a)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from service.demo.peers import free_port
    from service.http import ApiServer
    from tests.service.test_review_browser import _browser

    c, review, outbox = _app(volumes)
    item = _items(c)["liver"]
    worst, n = item["key_slices"][0], item["n_slices"]
    server = ApiServer(c.app, "127.0.0.1", free_port())
    server.start()
    driver = _browser(tmp_path / "downloads")
    shots = Path(os.environ.get("LABELQA_TEST_ARTIFACTS", tmp_path / "artifacts")) / "review-browser"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        wait = WebDriverWait(driver, 30)
        base = f"http://127.0.0.1:{server.port}"
        driver.get(f"{base}/review/items/{item['id']}")
        wait.until(EC.presence_of_element_located((By.ID, "login-form")))
        driver.find_element(By.ID, "name").send_keys(READER[0])
        driver.find_element(By.ID, "token").send_keys(READER[1] + Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "item").get_attribute("data-item") == str(item["id"]))

        def on(k: int) -> None:  # every picture shows slice k (their load events say so), the page says so
            wait.until(lambda d: d.find_element(By.ID, "stack").get_attribute("data-loaded") == str(k))
            assert driver.find_element(By.ID, "slice").get_attribute("value") == str(k)
            assert driver.find_element(By.ID, "slice-no").text == str(k + 1)
            for pic in ("image", "mask", "suggestion"):
                assert f"slice={k}" in driver.find_element(By.ID, pic).get_attribute("src"), pic

        on(worst)  # opens on the worst key slice
        assert driver.find_element(By.ID, "key-badge").text == "key slice (worst)"
        ticks = driver.find_elements(By.CSS_SELECTOR, "#ticks .tick")
        assert len(ticks) == len(item["key_slices"]) and all("left" in t.get_attribute("style") for t in ticks)
        assert len({t.location["x"] for t in ticks}) == len(ticks)  # placed along the slider (the script, not CSS)
        # a window applied stays while one scrolls
        driver.find_element(By.ID, "wc").send_keys("60")
        driver.find_element(By.ID, "ww").send_keys("200")
        driver.find_element(By.ID, "apply-window").click()
        wait.until(lambda d: "ww=200" in d.find_element(By.ID, "image").get_attribute("src"))
        on(worst)
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ARROW_DOWN)
        on(min(worst + 1, n - 1))
        assert "wc=60" in driver.find_element(By.ID, "image").get_attribute("src")
        body.send_keys("[")
        on(worst)
        body.send_keys(Keys.PAGE_UP)
        on(max(worst - 10, 0))
        assert "hidden" in driver.find_element(By.ID, "key-badge").get_attribute("class") or \
            max(worst - 10, 0) in item["key_slices"]
        body.send_keys(Keys.PAGE_DOWN)
        on(min(max(worst - 10, 0) + 10, n - 1))
        body.send_keys(Keys.END)
        on(n - 1)
        body.send_keys("n")  # the next key slice from one that is none: the worst
        on(worst)
        body.send_keys("n")
        on(item["key_slices"][1])
        # the slider, moved with the keyboard while it has the focus, scrolls the same way
        slider = driver.find_element(By.ID, "slice")
        slider.send_keys(Keys.HOME)
        on(0)
        slider.send_keys(Keys.ARROW_DOWN)
        on(1)
        driver.find_element(By.CSS_SELECTOR, f"button.key-slice[data-slice='{worst}']").click()
        on(worst)
        both = 5  # a slice where the given liver and the suggestion both show, apart
        for _ in range(abs(both - worst)):
            body.send_keys("]" if both > worst else "[")
        on(both)
        driver.save_screenshot(str(shots / "11-volume-item.png"))
        body.send_keys("s")
        assert "hidden" in driver.find_element(By.ID, "suggestion").get_attribute("class")
        body.send_keys("s")
        assert "hidden" not in driver.find_element(By.ID, "suggestion").get_attribute("class")
        body.send_keys("a")
        wait.until(EC.presence_of_element_located((By.ID, "saved")))
    finally:
        driver.quit()
        server.stop()
    d = review.store.item(item["id"])["decision"]
    assert (d["decision"], d["corrected_mask"], d["corrected_label"], d["reviewer"]) == \
        ("label_wrong", "suggestion", None, READER[0])
    assert d["writeback_state"] == "done" and len(outbox.list()) == 2
