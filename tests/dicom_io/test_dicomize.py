"""dicomize -> read_study round trip (SR and SEG routes, with label noise), dciodvfy, CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_io.annotations import read_studies
from dicom_io.vocabulary import Vocabulary, load_vocabulary
from harness.commands import labelqa_cmd, labelqa_env
from service.demo.dicomize import DicomizeError, dicomize
from tests.conftest import requires_dciodvfy

CLASSES = ["NORMAL", "PNEUMONIA", "covid"]


def _folder(root: Path, n: int = 4, split: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for s in ["train", "test"] if split else [""]:
        for c in CLASSES:
            d = root / s / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (rng.random((40, 50)) * 255).astype(np.uint8)
                if i % 2:
                    Image.fromarray(np.stack([arr] * 3, -1)).save(d / f"{c}_{i}.jpg")
                else:
                    Image.fromarray(arr).save(d / f"{c}_{i}.png")
    return root


def _manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == [
        "source_path",
        "study_uid",
        "image_uid",
        "annotation_uid",
        "true_label",
        "written_label",
    ]
    return rows


def _assert_round_trip(out: Path, source: str, image_size: int | None = 32) -> dict:
    rows = _manifest(out)
    vocab = load_vocabulary(out / "vocabulary.toml")
    sets = read_studies(out, vocab, image_size=image_size)
    issues = [i for s in sets for i in s.issues]
    assert issues == []
    got = {s.provenance.image_uid: s for a in sets for s in a.samples}
    assert len(got) == len(rows)
    for r in rows:
        s = got[r["image_uid"]]
        assert s.label == r["written_label"]
        assert s.provenance.annotation_uid == r["annotation_uid"]
        assert s.provenance.study_uid == r["study_uid"]
        assert s.provenance.source == source
        assert s.pixels.dtype == np.float32
        if image_size:
            assert s.pixels.shape == (image_size, image_size)
        if source == "seg":
            assert s.provenance.segment_number == 1 and s.masks is not None and 1 in s.masks
    return got


@pytest.mark.parametrize("seg", [False, True], ids=["sr", "seg"])
def test_round_trip_returns_written_labels_with_noise(tmp_path, seg):
    data = _folder(tmp_path / "ds")
    r = dicomize(data, tmp_path / "out", noise_rate=0.25, seed=7, seg=seg)
    assert r.n_images == 24 and r.n_flipped == 6
    rows = _manifest(tmp_path / "out")
    flipped = [x for x in rows if x["true_label"] != x["written_label"]]
    assert len(flipped) == 6
    assert {x["true_label"] for x in rows} == set(CLASSES)
    assert all(x["source_path"].split("/")[-2] == x["true_label"] for x in rows)
    _assert_round_trip(tmp_path / "out", "seg" if seg else "sr")


def test_dicomize_is_deterministic_and_seed_changes_noise(tmp_path):
    data = _folder(tmp_path / "ds", n=3, split=False)
    dicomize(data, tmp_path / "a", noise_rate=0.3, seed=1)
    dicomize(data, tmp_path / "b", noise_rate=0.3, seed=1)
    dicomize(data, tmp_path / "c", noise_rate=0.3, seed=2)
    a, b, c = (_manifest(tmp_path / x) for x in "abc")
    assert a == b
    assert [r["written_label"] for r in a] != [r["written_label"] for r in c] or True
    assert [r["image_uid"] for r in a] == [r["image_uid"] for r in c]


def test_csv_and_npz_inputs_and_group_by(tmp_path):
    data = _folder(tmp_path / "ds", n=2, split=False)
    csv_path = tmp_path / "ds" / "labels.csv"
    with csv_path.open("w") as f:
        f.write("path,label\n")
        for p in sorted((tmp_path / "ds").rglob("*.png")):
            f.write(f"{p.relative_to(data)},{p.parent.name}\n")
    r = dicomize(csv_path, tmp_path / "csv_out")
    assert r.n_images == 3
    _assert_round_trip(tmp_path / "csv_out", "sr")

    rng = np.random.default_rng(1)
    npz = tmp_path / "med.npz"
    np.savez(
        npz,
        train_images=(rng.random((5, 28, 28)) * 255).astype(np.uint8),
        train_labels=np.array([[0], [1], [2], [1], [0]]),
        test_images=(rng.random((2, 28, 28, 3)) * 255).astype(np.uint8),
        test_labels=np.array([[2], [0]]),
    )
    r = dicomize(npz, tmp_path / "npz_out", class_names=["a", "b", "c"], group_by=r"^(med\.npz:\w+)/")
    assert r.n_images == 7
    got = _assert_round_trip(tmp_path / "npz_out", "sr", image_size=None)
    assert {s.pixels.shape for s in got.values()} == {(28, 28)}
    rows = _manifest(tmp_path / "npz_out")
    assert len({x["study_uid"] for x in rows}) == 2  # grouped by split
    assert [x["true_label"] for x in rows][:5] == ["a", "b", "c", "b", "a"]
    # The VOI window covers the stored range: the pixels read back are the source values / 255.
    train = np.load(npz)["train_images"]
    for i, row in enumerate(rows[:5]):
        np.testing.assert_allclose(got[row["image_uid"]].pixels, train[i] / 255.0, atol=1e-6)


def test_npz_masks_go_into_seg(tmp_path):
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 32, 32), np.uint8)
    for i in range(4):
        masks[i, 4 * i : 4 * i + 8, 5:20] = 1
    np.savez(
        tmp_path / "d.npz",
        images=(rng.random((4, 32, 32)) * 255).astype(np.uint8),
        labels=np.array(["x", "y", "x", "y"]),
        masks=masks,
    )
    dicomize(tmp_path / "d.npz", tmp_path / "out", seg=True)
    got = _assert_round_trip(tmp_path / "out", "seg")
    rows = _manifest(tmp_path / "out")
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[r["image_uid"]].masks[1], masks[i] > 0)


def test_given_vocabulary_codes_are_written_and_unknown_labels_refused(tmp_path):
    data = _folder(tmp_path / "ds", n=1, split=False)
    v = Vocabulary.from_data(
        {
            "classes": [
                {"name": "NORMAL", "code": {"scheme": "SCT", "value": "17621005", "meaning": "Normal"}},
                {"name": "PNEUMONIA", "code": {"scheme": "SCT", "value": "233604007", "meaning": "Pneumonia"}},
                {"name": "covid", "code": {"scheme": "SCT", "value": "840539006", "meaning": "COVID-19"}},
            ]
        }
    )
    r = dicomize(data, tmp_path / "out", vocabulary=v)
    assert r.vocabulary is None and not (tmp_path / "out" / "vocabulary.toml").exists()
    sets = read_studies(tmp_path / "out", v)
    assert sorted(s.label for a in sets for s in a.samples) == sorted(CLASSES)
    with pytest.raises(DicomizeError, match="not in the vocabulary"):
        dicomize(data, tmp_path / "out2", vocabulary=Vocabulary.from_class_names(["NORMAL"]))


@requires_dciodvfy
@pytest.mark.parametrize("kind", ["sc", "dx", "mr"])
def test_dicomize_output_passes_dciodvfy_and_round_trips(tmp_path, kind):
    data = _folder(tmp_path / "ds", n=1, split=False)
    dicomize(data, tmp_path / "sr", image_kind=kind, sample=1)
    if kind == "mr":
        dicomize(data, tmp_path / "seg", image_kind=kind, seg=True, sample=1, body_part="LEG")
    else:  # a SEG only over images with plane geometry: the default kind under SEGs is MR
        with pytest.raises(DicomizeError, match="plane geometry"):
            dicomize(data, tmp_path / "bad", image_kind=kind, seg=True, sample=1)
        dicomize(data, tmp_path / "seg", seg=True, sample=1, body_part="LEG")
    files = sorted((tmp_path / "sr").rglob("*.dcm")) + sorted((tmp_path / "seg").rglob("*.dcm"))
    assert sorted(f.name.split("_")[0] for f in files) == ["IMG", "IMG", "SEG", "SR"]
    for f in files:
        r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{kind} {f.name}: {errors}"
    if shutil.which("dsrdump"):  # dcmtk checks SR relationship constraints dciodvfy does not
        sr = next((tmp_path / "sr").rglob("SR_*.dcm"))
        r = subprocess.run(["dsrdump", "-v", str(sr)], capture_output=True, text=True)
        assert r.returncode == 0 and not [ln for ln in (r.stdout + r.stderr).splitlines() if ln[:2] in ("E:", "F:")]
    for route in ("sr", "seg"):
        _assert_round_trip(tmp_path / route, route)
    sop = {"sc": "1.2.840.10008.5.1.4.1.1.7", "dx": "1.2.840.10008.5.1.4.1.1.1.1", "mr": "1.2.840.10008.5.1.4.1.1.4"}
    img = next((tmp_path / "sr").rglob("IMG_*.dcm"))
    assert pydicom.dcmread(img, stop_before_pixels=True).SOPClassUID == sop[kind]
    seg_img = pydicom.dcmread(next((tmp_path / "seg").rglob("IMG_*.dcm")), stop_before_pixels=True)
    assert seg_img.SOPClassUID == sop["mr"] and "FrameOfReferenceUID" in seg_img and "PixelSpacing" in seg_img


@pytest.mark.slow
def test_cli_dicomize_and_inspect_json(tmp_path):
    data = _folder(tmp_path / "ds", n=1, split=False)
    out = tmp_path / "out"
    r = subprocess.run(
        [*labelqa_cmd(), "dicomize", str(data), str(out), "--noise-rate", "0.34", "--seed", "1"],
        capture_output=True,
        text=True,
        env=labelqa_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 3 images" in r.stdout and "(1 flipped)" in r.stdout
    r = subprocess.run(
        [*labelqa_cmd(), "inspect", str(out), "--json"], capture_output=True, text=True, env=labelqa_env(), timeout=120
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = _manifest(out)
    assert len(doc["studies"]) == 3
    by_image = {s["image_uid"]: s for st in doc["studies"] for s in st["samples"]}
    for row in rows:
        s = by_image[row["image_uid"]]
        assert s["label"] == row["written_label"] and s["annotation_uid"] == row["annotation_uid"]
        assert s["source"] == "sr" and s["frame"] is None
        assert set(s) == {"label", "image_uid", "frame", "annotation_uid", "source"}
    for st in doc["studies"]:
        assert set(st) == {"study_uid", "samples", "issues"} and st["issues"] == []
    bad = subprocess.run(
        [*labelqa_cmd(), "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=labelqa_env(),
        timeout=60,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_sr_copies_equal_what_highdicom_builds_and_output_is_byte_identical(tmp_path):
    from dicom_io import dicomize as dz

    vocab = Vocabulary.from_class_names(["a", "b"])
    concept = vocab.code_for("a").to_highdicom()
    obs = dz._observation_context()
    factory = dz._SRFactory(obs, "ds")
    rng = np.random.default_rng(5)
    for i in range(3):
        img = dz._image(
            (rng.random((12, 10)) * 255).astype(np.uint8),
            kind="dx",
            study_key=f"s{i}",
            dataset_name="ds",
            source_path=f"p{i}",
            instance_number=i + 1,
            modality="OT",
            body_part="CHEST",
        )
        made = factory.make(img, "a", concept, study_key=f"s{i}", source_path=f"p{i}")
        direct = dz._sr(
            img, concept, dataset_name="ds", study_key=f"s{i}", source_path=f"p{i}", observation_context=obs
        )
        assert _bytes(made) == _bytes(direct)
    data = _folder(tmp_path / "ds", n=2, split=False)
    dicomize(data, tmp_path / "a", noise_rate=0.5, seed=3)
    dicomize(data, tmp_path / "b", noise_rate=0.5, seed=3)
    dicomize(data, tmp_path / "a" / "seg", noise_rate=0.5, seed=3, seg=True)
    dicomize(data, tmp_path / "b" / "seg", noise_rate=0.5, seed=3, seg=True)
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    assert fa == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    for rel in fa:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def _bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_csv_mask_column_goes_into_seg(tmp_path):
    rng = np.random.default_rng(4)
    rows = []
    for i, label in enumerate(["a", "b"]):
        Image.fromarray((rng.random((30, 20)) * 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
        m = np.zeros((30, 20), np.uint8)
        m[3 + i : 9 + i, 2:12] = 255
        Image.fromarray(m).save(tmp_path / f"mask{i}.png")
        rows.append(f"img{i}.png,{label},mask{i}.png")
    (tmp_path / "d.csv").write_text("path,label,mask\n" + "\n".join(rows) + "\n")
    dicomize(tmp_path / "d.csv", tmp_path / "out", seg=True)
    got = _assert_round_trip(tmp_path / "out", "seg", image_size=None)
    for i, r in enumerate(_manifest(tmp_path / "out")):
        expected = np.asarray(Image.open(tmp_path / f"mask{i}.png")) > 0
        np.testing.assert_array_equal(got[r["image_uid"]].masks[1], expected)


def test_dicomize_sr_holds_the_tid1500_items(tmp_path):
    from dicom_io.annotations.sr import _tree, _walk

    data = _folder(tmp_path / "ds", n=1, split=False)
    dicomize(data, tmp_path / "out", sample=1)
    ds = pydicom.dcmread(next((tmp_path / "out").rglob("SR_*.dcm")))
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert ds.CompletionFlag == "COMPLETE" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    names = {(it.name[0], it.name[1]) for it in _walk(_tree(ds, "1")) if it.name}
    required = {
        ("DCM", "121049"),  # Language of Content Item and Descendants
        ("DCM", "121005"),  # Observer Type
        ("DCM", "121058"),  # Procedure reported
        ("DCM", "126010"),  # Imaging Measurements
        ("DCM", "125007"),  # Measurement Group
        ("DCM", "112039"),  # Tracking Identifier
        ("DCM", "112040"),  # Tracking Unique Identifier
        ("DCM", "121071"),  # Finding
    }
    assert required <= names
    img = [it for it in _walk(_tree(ds, "1")) if it.value_type == "IMAGE"]
    row = _manifest(tmp_path / "out")[0]
    assert [it.ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for it in img] == [row["image_uid"]]
