"""read_study behaviour: issue records for everything unusable, text SRs, SEG absent class, dcmqi SEGs,
randomly broken SRs (hypothesis), and the shared classification sets round trip."""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io.annotations import ISSUE_CODES, read_studies, read_study
from dicom_io.vocabulary import Vocabulary, load_vocabulary
from service.demo.dicomize import dicomize
from tests.conftest import SHARED_DATA

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """One dicomized study (image + SR) per class, two classes."""
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "src" / c).mkdir(parents=True)
        Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(root / "src" / c / f"{c}.png")
    dicomize(root / "src", root / "out")
    with (root / "out" / "manifest.csv").open() as f:
        rows = {r["true_label"]: r for r in csv.DictReader(f)}
    files = {}
    for label, r in rows.items():
        d = root / "out" / r["study_uid"]
        files[label] = {
            "image": next(d.glob("IMG_*.dcm")),
            "sr": next(d.glob("SR_*.dcm")),
            "row": r,
        }
    return {"vocab": load_vocabulary(root / "out" / "vocabulary.toml"), "files": files, "root": root}


def _codes(a) -> list[str]:
    return sorted(i.code for i in a.issues)


def test_sr_alone_reports_missing_reference(study):
    f = study["files"]["cat"]
    a = read_study([f["sr"]], study["vocab"])
    assert a.samples == [] and _codes(a) == ["missing_reference"]
    assert a.issues[0].image_uid == f["row"]["image_uid"] and a.issues[0].annotation_uid == f["row"]["annotation_uid"]


def test_unknown_code_is_an_issue_not_a_label(study):
    f = study["files"]["cat"]
    other = Vocabulary.from_class_names(["bird", "fish"])
    a = read_study([f["sr"], f["image"]], other)
    assert a.samples == [] and _codes(a) == ["unknown_code"]
    assert "99LABELQA" in a.issues[0].message


def test_conflicting_labels_from_two_srs_for_one_image(study, tmp_path):
    cat, dog = study["files"]["cat"], study["files"]["dog"]
    ds = pydicom.dcmread(dog["sr"])
    # Point the dog SR at the cat image (same study, new UID): two different labels for one image.
    cat_img = pydicom.dcmread(cat["image"], stop_before_pixels=True)
    ds.StudyInstanceUID = cat_img.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234567"
    for item in _walk(ds):
        if "ReferencedSOPSequence" in item:
            item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = cat_img.SOPInstanceUID
    ds.save_as(tmp_path / "dog_on_cat.dcm")
    a = read_study([cat["sr"], cat["image"], tmp_path / "dog_on_cat.dcm"], study["vocab"])
    assert a.samples == [] and _codes(a) == ["conflicting_labels"]
    assert "cat" in a.issues[0].message and "dog" in a.issues[0].message


def test_unreadable_pixels_unreadable_file_and_unsupported_class(study, tmp_path):
    f = study["files"]["cat"]
    img = pydicom.dcmread(f["image"])
    img.PixelData = img.PixelData[:10]
    img.save_as(tmp_path / "img.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 10)
    (tmp_path / "notes.txt").write_text("not DICOM, not named like DICOM: skipped without an issue")
    kos = Dataset()
    kos.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection
    kos.SOPInstanceUID = "2.25.99"
    kos.StudyInstanceUID = img.StudyInstanceUID
    kos.Modality = "KO"
    kos.file_meta = pydicom.dataset.FileMetaDataset()
    kos.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    kos.save_as(tmp_path / "kos.dcm", enforce_file_format=True)
    shutil.copy(f["sr"], tmp_path / "sr.dcm")
    a = read_study(tmp_path, study["vocab"])
    assert a.samples == []
    assert _codes(a) == ["unreadable_file", "unreadable_pixels", "unsupported_sop_class"]
    by = {i.code: i for i in a.issues}
    assert by["unsupported_sop_class"].annotation_uid == "2.25.99"
    assert by["unreadable_pixels"].image_uid == f["row"]["image_uid"]


@pytest.mark.slow
def test_inspect_cli_reports_issues_and_exits_zero(study, tmp_path):
    f = study["files"]["cat"]
    shutil.copy(f["sr"], tmp_path / "sr.dcm")
    from harness.commands import labelqa_cmd, labelqa_env

    r = subprocess.run(
        [
            *labelqa_cmd(),
            "inspect",
            str(tmp_path),
            "--json",
            "--vocabulary",
            str(study["root"] / "out" / "vocabulary.toml"),
        ],
        capture_output=True,
        text=True,
        env=labelqa_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (st_,) = doc["studies"]
    assert st_["samples"] == []
    assert [(i["code"], i["annotation_uid"]) for i in st_["issues"]] == [
        ("missing_reference", f["row"]["annotation_uid"])
    ]
    r = subprocess.run(
        [*labelqa_cmd(), "inspect", str(tmp_path)], capture_output=True, text=True, env=labelqa_env(), timeout=120
    )
    assert r.returncode == 0 and "ISSUE missing_reference" in r.stdout
    (tmp_path / "bad.toml").write_text("[[classes]]\nname = 1\n")
    r = subprocess.run(
        [*labelqa_cmd(), "inspect", str(tmp_path), "--vocabulary", str(tmp_path / "bad.toml")],
        capture_output=True,
        text=True,
        env=labelqa_env(),
        timeout=120,
    )
    assert r.returncode == 2 and "classes[0]" in r.stderr


def _code_item(scheme, value, meaning):
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return Sequence([c])


def _text_sr(sop_class: str, image: Dataset, finding: tuple[str, str, str]) -> Dataset:
    """A Basic Text / Enhanced SR: a Findings section with a coded Finding and an image reference."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.Modality = image.StudyInstanceUID, "SR"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code_item("LN", "18748-4", "Diagnostic imaging report")
    section = Dataset()
    section.RelationshipType, section.ValueType, section.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    section.ConceptNameCodeSequence = _code_item("DCM", "121070", "Findings")
    find = Dataset()
    find.RelationshipType, find.ValueType = "CONTAINS", "CODE"
    find.ConceptNameCodeSequence = _code_item("DCM", "121071", "Finding")
    find.ConceptCodeSequence = _code_item(*finding)
    img = Dataset()
    img.RelationshipType, img.ValueType = "INFERRED FROM", "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    img.ReferencedSOPSequence = Sequence([ref])
    find.ContentSequence = Sequence([img])
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "free text"
    text.ConceptNameCodeSequence = _code_item("DCM", "121073", "Impression")
    section.ContentSequence = Sequence([text, find])
    ds.ContentSequence = Sequence([section])
    return ds


@pytest.mark.parametrize(
    "sop", ["1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22"], ids=["basic", "enhanced"]
)
def test_basic_and_enhanced_text_srs_with_coded_findings(tmp_path, sop):
    image = pydicom.dcmread(CT_SMALL)
    vocab = Vocabulary.from_data(
        {"classes": [{"name": "pneumonia", "code": {"scheme": "SCT", "value": "233604007", "meaning": "Pneumonia"}}]}
    )
    _text_sr(sop, image, ("SCT", "233604007", "Pneumonia")).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    a = read_study([tmp_path / "sr.dcm", CT_SMALL], vocab, image_size=32)
    assert a.issues == [] and len(a.samples) == 1
    s = a.samples[0]
    assert s.label == "pneumonia" and s.provenance.image_uid == image.SOPInstanceUID and s.pixels.shape == (32, 32)
    assert s.provenance.content_path == "1.1.2"
    _text_sr(sop, image, ("SCT", "999", "Other")).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    a = read_study([tmp_path / "sr.dcm", CT_SMALL], vocab)
    assert a.samples == [] and _codes(a) == ["unknown_code"]


def _walk(ds):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _walk(item)


_MUTATIONS = [
    "drop_item",
    "drop_refs",
    "bad_code",
    "drop_name",
    "bad_value_type",
    "bad_frame",
    "empty_seq",
    "drop_root",
]


@settings(
    max_examples=int(os.environ.get("LQA_HYPOTHESIS_EXAMPLES", 40)),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(st.tuples(st.sampled_from(_MUTATIONS), st.integers(0, 1000)), min_size=1, max_size=4))
def test_randomly_broken_srs_never_raise(study, tmp_path_factory, ops):
    f = study["files"]["dog"]
    ds = pydicom.dcmread(f["sr"])
    for op, n in ops:
        items = list(_walk(ds))
        it = items[n % len(items)] if items else ds
        rnd = random.Random(n)
        if op == "drop_item" and items:
            parent = next((p for p in [ds, *items] if it in (p.get("ContentSequence") or [])), ds)
            parent.ContentSequence = Sequence([x for x in parent.ContentSequence if x is not it])
        elif op == "drop_refs":
            for x in items:
                if "ReferencedSOPSequence" in x and rnd.random() < 0.7:
                    del x.ReferencedSOPSequence
        elif op == "bad_code":
            for x in items:
                if "ConceptCodeSequence" in x:
                    x.ConceptCodeSequence[0].CodeValue = "XX" + str(n)
        elif op == "drop_name" and "ConceptNameCodeSequence" in it:
            del it.ConceptNameCodeSequence
        elif op == "bad_value_type":
            it.ValueType = rnd.choice(["IMAGE", "CODE", "CONTAINER", "NUM", "BOGUS"])
        elif op == "bad_frame":
            for x in items:
                if "ReferencedSOPSequence" in x:
                    x.ReferencedSOPSequence[0].ReferencedFrameNumber = rnd.choice([0, 7, -1]) if n % 2 else 2
        elif op == "empty_seq" and "ContentSequence" in it:
            it.ContentSequence = Sequence([])
        elif op == "drop_root" and "ContentSequence" in ds:
            del ds.ContentSequence
    d = tmp_path_factory.mktemp("broken")
    ds.save_as(d / "sr.dcm")
    shutil.copy(f["image"], d / "img.dcm")
    a = read_study(d, study["vocab"])  # must not raise
    assert all(i.code in ISSUE_CODES and i.message for i in a.issues)
    assert all(s.label in study["vocab"].class_names for s in a.samples)
    assert len(a.samples) + len(a.issues) >= 1  # every outcome is said: a sample or an issue
    for s in a.samples:
        assert s.label == "dog" and s.provenance.image_uid == f["row"]["image_uid"]


def _ct_series(out: Path, n: int = 3) -> list[Path]:
    """n CT slices derived from pydicom's CT_small (one study/series, stacked 5 mm apart)."""
    base = pydicom.dcmread(CT_SMALL)
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    paths = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
        ds.SliceLocation = pos[2] + 5.0 * i
        ds.SliceThickness = 5.0
        p = out / f"ct{i}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths


def _dcmqi_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        import dcmqi

        p = Path(dcmqi.__file__).parent / "bin" / name
        return str(p) if p.is_file() else None
    except ImportError:
        return None


def test_dcmqi_itkimage2segimage_seg_gives_per_frame_labels(tmp_path):
    tool = _dcmqi_tool("itkimage2segimage")
    if tool is None:
        pytest.skip("dcmqi itkimage2segimage not installed")
    import SimpleITK as sitk

    ct_dir = tmp_path / "ct"
    ct_dir.mkdir()
    ct = _ct_series(ct_dir, 3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ct])
    img = reader.Execute()
    lab = np.zeros(sitk.GetArrayFromImage(img).shape, np.uint8)  # (z, y, x)
    lab[0, 20:60, 30:70] = 1  # slice 0: liver
    lab[1, 40:90, 40:80] = 2  # slice 1: spleen
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(img)
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))
    meta = {
        "ContentCreatorName": "Reader^One",
        "SeriesDescription": "Segmentation",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "segmentAttributes": [
            [
                _segment_attr(1, "Liver", "10200004"),
                _segment_attr(2, "Spleen", "78961009"),
            ]
        ],
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    r = subprocess.run(
        [
            tool,
            "--inputImageList",
            str(tmp_path / "labels.nrrd"),
            "--inputDICOMDirectory",
            str(ct_dir),
            "--inputMetadata",
            str(tmp_path / "meta.json"),
            "--outputDICOM",
            str(tmp_path / "seg.dcm"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    vocab = Vocabulary.from_data(
        {
            "seg": {"absent_class": "normal"},
            "classes": [
                {"name": "normal", "code": {"scheme": "SCT", "value": "17621005", "meaning": "Normal"}},
                {"name": "liver", "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}},
                {"name": "spleen", "code": {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"}},
            ],
        }
    )
    a = read_study([tmp_path / "seg.dcm", ct_dir], vocab, image_size=64)
    assert a.issues == []
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct]
    got = {s.provenance.image_uid: s for s in a.samples}
    assert [got[u].label for u in uids] == ["liver", "spleen", "normal"]
    assert [got[u].provenance.segment_number for u in uids] == [1, 2, None]
    assert int(got[uids[0]].masks[1].sum()) == 40 * 40 and int(got[uids[1]].masks[2].sum()) == 50 * 40
    assert got[uids[0]].provenance.observer == "Reader^One"
    assert got[uids[0]].pixels.shape == (64, 64)
    # Without an absent class the empty slice is one no_label issue.
    vocab.seg.absent_class = None
    a = read_study([tmp_path / "seg.dcm", ct_dir], vocab)
    assert sorted(s.label for s in a.samples) == ["liver", "spleen"] and _codes(a) == ["no_label"]


def _segment_attr(label_id: int, name: str, sct: str) -> dict:
    return {
        "labelID": label_id,
        "SegmentDescription": name,
        "SegmentLabel": name,
        "SegmentedPropertyCategoryCodeSequence": {
            "CodeValue": "85756007",
            "CodingSchemeDesignator": "SCT",
            "CodeMeaning": "Tissue",
        },
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": sct, "CodingSchemeDesignator": "SCT", "CodeMeaning": name},
        "SegmentAlgorithmType": "MANUAL",
        "recommendedDisplayRGBValue": [200, 100, 50 * label_id],
    }


@pytest.mark.parametrize(
    "name, seg",
    [pytest.param("chest_xray_pneumonia_kermany_224", False, marks=pytest.mark.slow),  # 200 real images each
     pytest.param("brain_tumor_mri_4class_224", True, marks=pytest.mark.slow)],
    ids=["xray-sr", "mri-seg"],
)
def test_shared_classification_sample_round_trip(tmp_path, name, seg):
    src = SHARED_DATA / "classification" / name
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    if name.startswith("chest"):
        src = src / "dataset"
    r = dicomize(
        src,
        tmp_path / "out",
        sample=200,
        seed=11,
        noise_rate=0.1,
        seg=seg,
        body_part="CHEST" if "chest" in name else "HEAD",
    )
    assert r.n_images == 200 and r.n_flipped == 20
    with (tmp_path / "out" / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(x["source_path"].split("/")[-2] == x["true_label"] for x in rows)
    vocab = load_vocabulary(tmp_path / "out" / "vocabulary.toml")
    sets = read_studies(tmp_path / "out", vocab, image_size=64)
    assert [i for s in sets for i in s.issues] == []
    got = {s.provenance.image_uid: s for a in sets for s in a.samples}
    assert len(got) == 200
    assert all(got[x["image_uid"]].label == x["written_label"] for x in rows)
    assert sum(x["true_label"] != x["written_label"] for x in rows) == 20
    assert all(s.pixels.shape == (64, 64) and 0 <= s.pixels.min() <= s.pixels.max() <= 1 for s in got.values())


def test_labelqa_result_srs_are_not_read_as_annotations(study, tmp_path):
    f = study["files"]["cat"]
    ds = pydicom.dcmread(f["sr"])
    ds.ConceptNameCodeSequence = _code_item("99LABELQA", "LQA-0001", "Annotation quality audit")
    ds.save_as(tmp_path / "result.dcm")
    a = read_study([tmp_path / "result.dcm", f["image"]], study["vocab"])
    assert a.samples == [] and a.issues == []


_SEG_MUTATIONS = ["drop_pffg", "drop_segment", "renumber", "truncate_pixels", "fractional", "labelmap", "drop_refs"]


@settings(
    max_examples=int(os.environ.get("LQA_HYPOTHESIS_EXAMPLES", 25)),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(st.sampled_from(_SEG_MUTATIONS), min_size=1, max_size=3, unique=True))
def test_randomly_broken_segs_never_raise(seg_study, tmp_path_factory, ops):
    ds = pydicom.dcmread(seg_study["seg"])
    for op in ops:
        if op == "drop_pffg" and "PerFrameFunctionalGroupsSequence" in ds:
            del ds.PerFrameFunctionalGroupsSequence
        elif op == "drop_segment":
            ds.SegmentSequence = Sequence([])
        elif op == "renumber" and ds.SegmentSequence:
            ds.SegmentSequence[0].SegmentNumber = 7
        elif op == "truncate_pixels":
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        elif op == "fractional":
            ds.SegmentationType = "FRACTIONAL"
        elif op == "labelmap":
            ds.SegmentationType = "LABELMAP"
        elif op == "drop_refs":
            for fg in ds.get("PerFrameFunctionalGroupsSequence") or []:
                if "DerivationImageSequence" in fg:
                    del fg.DerivationImageSequence
    d = tmp_path_factory.mktemp("brokenseg")
    ds.save_as(d / "seg.dcm")
    shutil.copy(seg_study["image"], d / "img.dcm")
    a = read_study(d, seg_study["vocab"])  # must not raise
    assert all(i.code in ISSUE_CODES and i.message for i in a.issues)
    assert len(a.samples) + len(a.issues) >= 1
    for s in a.samples:
        assert s.label in seg_study["vocab"].class_names and s.provenance.source == "seg"


@pytest.fixture(scope="module")
def seg_study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("segds")
    rng = np.random.default_rng(3)
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[:, 5:12, 4:15] = 1
    np.savez(
        root / "d.npz",
        images=(rng.random((2, 20, 20)) * 255).astype(np.uint8),
        labels=np.array(["x", "y"]),
        masks=masks,
    )
    dicomize(root / "d.npz", root / "out", seg=True)
    study_dir = next(p for p in (root / "out").iterdir() if p.is_dir())
    return {
        "seg": next(study_dir.glob("SEG_*.dcm")),
        "image": next(study_dir.glob("IMG_*.dcm")),
        "vocab": load_vocabulary(root / "out" / "vocabulary.toml"),
    }
