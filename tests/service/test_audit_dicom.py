"""Offline `labelqa audit --bundle B --dicom DIR --out OUT`: real bundle, real DICOM studies, valid results."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pydicom
import pytest

from harness.commands import labelqa_cmd, labelqa_env
from tests.conftest import requires_dciodvfy, requires_dcmtk

# every test uses the module's bundle, trained by `labelqa train` (~20 s on 2 cores)
pytestmark = pytest.mark.slow

SIZE = 32


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny bundle trained on noisy synthetic shapes; 24 clean ones dicomized (SR labels, 25% flipped), audited."""
    from models.synthetic import make_shapes

    tmp = tmp_path_factory.mktemp("audit_dicom")
    data = make_shapes(120, n_classes=2, size=SIZE, seed=11)
    npz = tmp / "shapes.npz"
    noisy = data.labels.copy()
    flip = np.random.default_rng(0).choice(len(noisy), 18, replace=False)  # 15% label noise: the bundle
    noisy[flip] = 1 - noisy[flip]  # learns a finite flagging threshold only from data with errors
    np.savez(npz, images=(data.images * 255).astype(np.uint8), labels=noisy, class_names=np.array(["disc", "bar"]))
    env = labelqa_env(LABELQA_CACHE_DIR=str(tmp / "cache"))
    r = subprocess.run([*labelqa_cmd(), "train", "--dataset", str(npz), "--out", str(tmp / "bundle"), "--mode",
                        "insample", "--image-size", str(SIZE), "--archs", "densenet-tiny,resnet-tiny", "--epochs", "3",
                        "--threads", "2", "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    small = tmp / "small.npz"
    np.savez(small, images=(data.images[:24] * 255).astype(np.uint8), labels=data.labels[:24],
             class_names=np.array(["disc", "bar"]))
    r = subprocess.run([*labelqa_cmd(), "dicomize", str(small), str(tmp / "studies"), "--noise-rate", "0.25",
                        "--group-by", r":(\d)"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*labelqa_cmd(), "audit", "--bundle", str(tmp / "bundle"), "--dicom", str(tmp / "studies"),
                        "--vocabulary", str(tmp / "studies" / "vocabulary.toml"), "--out", str(tmp / "out"),
                        "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp


def test_audit_dicom_writes_verdicts_for_every_annotation(audited):
    doc = json.loads((audited / "out" / "verdicts.json").read_text())
    items = doc["items"]
    assert len(items) == 24 and doc["annotations"] == 24
    assert doc["studies"] == len({it["study_uid"] for it in items}) > 1
    for it in items:
        assert {"study_uid", "annotation_uid", "image_uid", "frame", "given_label", "consensus_label", "verdict",
                "agreement", "priority"} <= set(it)
        assert it["verdict"] in ("suspected_label_error", "hard_case", "consistent")
        assert it["given_label"] in ("disc", "bar") and it["consensus_label"] in ("disc", "bar")
    assert sum(doc["verdicts"].values()) == 24


def test_audit_dicom_writes_one_valid_sr_per_study_and_kos_sc_for_flags(audited):
    from dicom_io.results.sr import read_report

    doc = json.loads((audited / "out" / "verdicts.json").read_text())
    files = sorted((audited / "out" / "dicom").glob("*.dcm"))
    by_mod: dict[str, list] = {}
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_mod.setdefault("ROI" if ds.SeriesNumber == 9908 else ds.Modality, []).append(p)  # the drawn flags: SR too
    assert len(by_mod["SR"]) == doc["studies"]
    flagged = [it for it in doc["items"] if it["verdict"] == "suspected_label_error"]
    assert flagged, "with 25% flipped labels some annotation should be flagged"
    studies_flagged = {it["study_uid"] for it in flagged}
    assert len(by_mod.get("KO", [])) == len(studies_flagged)
    assert len(by_mod.get("OT", [])) == len(flagged)  # one heatmap per suspected error (all are candidates)
    assert len(by_mod.get("ROI", [])) == len(studies_flagged)  # each flag drawn on its image (hot heatmap region)
    verdicts = {}
    for p in by_mod["SR"]:
        for it in read_report(pydicom.dcmread(p))["items"]:
            verdicts[(it["annotation_uid"], it["source_image_uid"])] = it["verdict"]
    assert verdicts == {(it["annotation_uid"], it["image_uid"]): it["verdict"] for it in doc["items"]}


@requires_dciodvfy
@requires_dcmtk
def test_audit_dicom_outputs_pass_dciodvfy_and_dsrdump(audited):
    for p in sorted((audited / "out" / "dicom").glob("*.dcm")):
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{p.name}: {errors}"
        if p.name.startswith(("SR_", "ROI_")):
            r = subprocess.run(["dsrdump", "-v", str(p)], capture_output=True, text=True)
            assert r.returncode == 0 and not [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("E:")]


def test_audit_dicom_again_gives_the_same_uids(audited, tmp_path):
    r = subprocess.run([*labelqa_cmd(), "audit", "--bundle", str(audited / "bundle"), "--dicom",
                        str(audited / "studies"), "--vocabulary", str(audited / "studies" / "vocabulary.toml"),
                        "--out", str(tmp_path / "again"), "--device", "cpu"],
                       env=labelqa_env(LABELQA_CACHE_DIR=str(audited / "cache")), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    first = sorted(p.name for p in (audited / "out" / "dicom").glob("*.dcm"))
    again = sorted(p.name for p in (tmp_path / "again" / "dicom").glob("*.dcm"))
    assert first == again  # file names carry the SOP Instance UIDs
