"""Masks end to end: images + masks -> image + SEG studies (planted errors in the manifest) -> a
segmentation bundle audits the DICOM studies -> TID 1500 SR groups, suggested SEG, overlay SC, KOS.
"""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pydicom
import pytest
import torch

from dicom_io.annotations import read_study
from harness.commands import labelqa_cmd, labelqa_env
from models.seg.synthetic import write_shape_dataset
from service.demo.dicomize import dicomize_masks, planted_classes
from tests.conftest import have


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def seg_studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("segds")
    data = write_shape_dataset(root / "shapes", 12, size=32, seed=4)
    res = dicomize_masks(root / "shapes", root / "studies", noise_rate=0.5, seed=2)
    with open(res.manifest, newline="") as f:
        manifest = list(csv.DictReader(f))
    return data, root, res, manifest


def test_dicomize_masks_reads_back_pixel_for_pixel_with_planted_errors_recorded(seg_studies):
    data, root, res, manifest = seg_studies
    assert res.n_images == 12 and len(manifest) == 12
    planted = [m for m in manifest if m["mask_corruption"]]
    assert len(planted) == 6  # noise_rate 0.5 of 12
    assert all(planted_classes(m["mask_corruption"]) <= set(data.class_names) for m in planted)
    assert {m["mask_corruption"].split("[")[0] for m in planted} == {
        "erode", "dilate", "shift", "drop_component", "add_blob", "wrong_class"}
    for m in manifest:
        i = data.stems.index(m["source_path"].split("/")[-1])
        aset = read_study(root / "studies" / m["study_uid"], None, masks=True, mask_classes=data.class_names)
        got = {s.class_name: s.given_mask for s in aset.mask_samples}
        changed = planted_classes(m["mask_corruption"])
        for k, name in enumerate(data.class_names, start=1):
            truth = data.masks[i] == k
            if name in changed:
                assert not np.array_equal(got[name], truth), (m, name)  # the planted error is in the SEG
            else:
                assert np.array_equal(got[name], truth), (m, name)  # everything else exactly as drawn


@pytest.mark.slow
def test_offline_audit_of_seg_studies_writes_valid_mask_results(seg_studies, tmp_path):
    from models.seg.bundle import train_seg_bundle
    from models.seg.synthetic import make_shape_masks
    from models.seg.train import SegTrainConfig
    from service.audit import audit_dicom_dir

    _data, root, _res, _manifest = seg_studies
    train = make_shape_masks(24, 32, seed=9)
    bundle = train_seg_bundle(None, tmp_path / "bundle", image_size=32, archs="unet-tiny,segresnet-tiny", folds=2,
                              epochs=2, data=train, device="cpu", progress=False,
                              cfg=SegTrainConfig(epochs=2, batch_size=8))
    summary = audit_dicom_dir(bundle, root / "studies", tmp_path / "out", device="cpu")
    assert summary["studies"] == 12 and summary["annotations"] == 24  # 12 frames x 2 classes
    items = json.loads((tmp_path / "out" / "verdicts.json").read_text())["items"]
    assert {r["verdict"] for r in items} <= {"suspected_mask_error", "hard_case", "consistent"}
    assert all(r["source"] == "seg" and r["segment_number"] is not None or r["given_area_px"] == 0 for r in items)
    files = sorted((tmp_path / "out" / "dicom").rglob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    mods = [str(h.Modality) for h in headers if int(h.SeriesNumber) != 9908]  # 9908: the SR drawing the flags
    assert mods.count("SR") == 12
    flagged = sum(r["verdict"] == "suspected_mask_error" for r in items)
    assert mods.count("SEG") == len({r["study_uid"] for r in items if r["verdict"] == "suspected_mask_error"})
    assert (mods.count("OT") >= flagged) if flagged else True
    if have("dciodvfy"):
        for f in files:
            r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=120)
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
            assert not errors, (f.name, errors[:5])


@pytest.mark.slow
def test_demo_segmentation_finds_the_planted_mask_errors(tmp_path):
    # the mask demo's defaults: 24 studies, a quarter of the masks corrupted (one of each kind), 64 training
    # images at 32 px, 10 epochs
    r = subprocess.run([*labelqa_cmd(), "demo", "--task", "segmentation", "--json", "--data-dir", str(tmp_path),
                        "--device", "cpu"],
                       env=labelqa_env(), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    rows = report["rows"]
    assert len(rows) == 48 and {row["verdict"] for row in rows} <= {"suspected_mask_error", "hard_case", "consistent"}
    assert all({"verdict", "kind", "planted_error", "dice"} <= set(row) for row in rows)
    s = report["summary"]
    assert s["task"] == "segmentation" and s["planted_errors"] >= 6
    # at most two planted masks neither flagged nor a hard case (the detector caps its flags at the error count
    # it estimates, so a planted error the members are unsure of can come back as a hard case or below the cut;
    # with the current mask score the demo notices 5 of its 7 and flags 4, none wrongly: docs/segmentation.md)
    noticed = sum(row["planted_error"] and row["verdict"] in ("suspected_mask_error", "hard_case") for row in rows)
    assert noticed >= s["planted_errors"] - 2, s
    assert s["flagged_and_planted"] >= s["planted_errors"] - 3, s
    assert s["precision"] is not None and s["precision"] >= 0.7, s
    flagged = [row for row in rows if row["verdict"] == "suspected_mask_error"]
    assert all(row["kind"] for row in flagged)  # every flag says how the mask is wrong
    kinds = {f["modality"] for f in report["outputs"]["result_files"]}
    assert {"SR", "SEG", "KO"} <= kinds  # QA report, suggested correction, key images


@pytest.mark.slow
def test_a_bundle_too_weak_for_a_class_says_so_in_the_report_and_flags_nothing(seg_studies, tmp_path):
    """Members trained on noise (no image says where the masks are) cannot judge any class: the QA report's
    summary states it (LQA-0206) per class, every row carries the sentence, nothing is flagged."""
    from dicom_io import codes
    from dicom_io.results.sr import read_report
    from models.seg.bundle import load_seg_bundle, train_seg_bundle
    from models.seg.data import SegDataset
    from models.seg.train import SegTrainConfig
    from service.audit import audit_dicom_dir

    data, root, _res, _manifest = seg_studies
    rng = np.random.default_rng(0)
    noise = SegDataset(rng.random((16, 32, 32)).astype(np.float32),
                       np.stack([np.roll(data.masks[i % len(data.masks)], rng.integers(32), axis=1)
                                 for i in range(16)]), list(data.class_names))
    bundle = train_seg_bundle(None, tmp_path / "bundle", image_size=32, archs="unet-tiny,segresnet-tiny", folds=2,
                              epochs=1, data=noise, device="cpu", progress=False,
                              cfg=SegTrainConfig(epochs=1, batch_size=8))
    unjudged = load_seg_bundle(bundle).thresholds.cannot_judge(data.class_names)
    assert set(unjudged) == set(data.class_names)
    summary = audit_dicom_dir(bundle, root / "studies", tmp_path / "out", device="cpu")
    assert summary["cannot_judge"] == sorted(unjudged.values())
    assert summary["verdicts"].get("suspected_mask_error", 0) == 0
    items = json.loads((tmp_path / "out" / "verdicts.json").read_text())["items"]
    assert all(r["cannot_judge"] == unjudged[r["class"]] for r in items)
    mods = {}
    for p in (tmp_path / "out" / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        mods[str(ds.Modality)] = mods.get(str(ds.Modality), 0) + 1
        if ds.Modality == "SR":  # every study has masks of both classes: both sentences in its summary
            assert sorted(read_report(ds)["cannot_judge"]) == sorted(unjudged.values())
    assert mods.get("SR") == 12 and "KO" not in mods and "SEG" not in mods
    assert codes.MODELS_CANNOT_JUDGE in codes.ALL_CODES
