"""Mask samples from SEG (``read_study(..., masks=True)``) and dicomize with masks: exact masks back.

highdicom-made SEGs (binary, fractional, label map; single-frame SC sources, a CT series, a
multi-frame enhanced CT), dcmqi-made SEGs from label maps (skipped when dcmqi is absent), the real
SEGs in the shared data (skipped when absent), broken SEGs (issue records, never an exception), and
``dicom_io.dicomize.write_studies`` with an integer mask: the SEG reads back pixel for pixel.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io.annotations import ISSUE_CODES, read_studies, read_study
from dicom_io.dicomize import DicomizeError, StudyItem, _image, write_studies
from dicom_io.vocabulary import Vocabulary
from tests.conftest import SHARED_DATA

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
DICOM = SHARED_DATA / "dicom"
CT3 = DICOM / "dcmqi_data" / "data" / "segmentations" / "ct-3slice"

VOCAB = Vocabulary.from_data(
    {
        "seg": {"absent_class": "normal", "min_fraction": 0.5},
        "classes": [
            {"name": "normal", "code": {"scheme": "SCT", "value": "17621005", "meaning": "Normal"}},
            {"name": "liver", "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"},
             "aliases": [{"scheme": "SRT", "value": "T-62000", "meaning": "Liver"}]},
            {"name": "spleen", "code": {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"}},
        ],
    }
)


def _desc(n: int, name: str, value: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=n,
        segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
        segmented_property_type=hd.sr.CodedConcept(value, "SCT", name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


DESCS = [_desc(1, "Liver", "10200004"), _desc(2, "Spleen", "78961009")]


def _seg(sources, pixels, seg_type="BINARY", descs=DESCS, **kw) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=seg_type, segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1", **kw,
    )


def _sc(rng, shape=(20, 24), key="s") -> pydicom.Dataset:
    img = _image((rng.random(shape) * 255).astype(np.uint8), kind="sc", study_key=key, dataset_name="t",
                 source_path=f"{key}.png", instance_number=1, modality="OT", body_part="CHEST")
    img.PatientOrientation = ""
    return img


def _ct_series(n: int = 3) -> list[pydicom.Dataset]:
    """n CT slices derived from pydicom's CT_small (one study/series, stacked 5 mm apart)."""
    base = pydicom.dcmread(CT_SMALL)
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    out = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 5.0 * i]
        ds.SliceLocation = pos[2] + 5.0 * i
        ds.SliceThickness = 5.0
        out.append(ds)
    return out


def _write(folder: Path, *datasets: pydicom.Dataset) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return folder


def _mask_issues(a) -> list:
    """Issues but the class-label reading's conflicting_labels (two classes in one frame is a normal mask)."""
    return [i for i in a.issues if i.code != "conflicting_labels"]


def _by(a, *, frames: bool = False) -> dict:
    return {(m.provenance.image_uid, m.provenance.frame, m.class_name) if frames else
            (m.provenance.image_uid, m.class_name): m for m in a.mask_samples}


def _blobs(shape, n, seed=0) -> np.ndarray:
    """(n, H, W) int masks 0/1/2: a liver rectangle and a spleen disc (the last slice without spleen)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, *shape), np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(n):
        r0, c0 = rng.integers(2, shape[0] // 3), rng.integers(2, shape[1] // 3)
        out[i, r0 : r0 + shape[0] // 3, c0 : c0 + shape[1] // 4] = 1
        if i < n - 1:
            cy, cx = shape[0] * 2 // 3, shape[1] * 2 // 3
            out[i][(yy - cy) ** 2 + (xx - cx) ** 2 < (shape[0] // 6) ** 2] = 2
    return out


# ---- highdicom-made SEGs ----------------------------------------------------------------------------


def test_binary_seg_on_a_single_frame_image_gives_exact_masks_and_an_empty_one(tmp_path):
    rng = np.random.default_rng(0)
    img = _sc(rng)
    truth = _blobs((20, 24), 2)[-1]  # liver only
    seg = _seg([img], np.stack([truth == 1, truth == 2], -1)[None])
    a = read_study(_write(tmp_path, img, seg), VOCAB, masks=True)
    assert a.issues == []
    got = _by(a)
    assert set(got) == {(img.SOPInstanceUID, "liver"), (img.SOPInstanceUID, "spleen")}  # 'normal' is absent_class
    liver, spleen = got[(img.SOPInstanceUID, "liver")], got[(img.SOPInstanceUID, "spleen")]
    assert np.array_equal(liver.given_mask, truth == 1) and liver.given_mask.dtype == bool
    assert not spleen.given_mask.any() and spleen.is_empty and spleen.given_mask.shape == (20, 24)
    p = liver.provenance
    assert (p.annotation_uid, p.segment_number, p.segment_numbers, p.seg_frames, p.frame) == (
        seg.SOPInstanceUID, 1, (1,), (1,), None)
    # the spleen segment exists (number 2) but highdicom wrote no frame for it: no SEG frame read
    assert spleen.provenance.segment_numbers == (2,) and spleen.provenance.seg_frames == ()
    assert liver.pixels.shape == (20, 24) and liver.pixels.dtype == np.float32
    assert np.allclose(liver.pixels, img.pixel_array / 256.0, atol=1 / 255)  # full-range window
    assert liver.spacing == (1.0, 1.0)
    # the class-label samples are unchanged by masks=True
    assert [s.label for s in a.samples] == ["liver"]
    assert [s.label for s in read_study(tmp_path, VOCAB).samples] == ["liver"]
    assert read_study(tmp_path, VOCAB).mask_samples == []


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_ct_series_segs_give_exact_masks_per_slice(tmp_path, seg_type):
    cts = _ct_series(3)
    truth = _blobs((128, 128), 3, seed=1)
    if seg_type == "LABELMAP":
        pixels = truth
    elif seg_type == "FRACTIONAL":
        # fractions around the 0.5 cut: 0.6 inside, 0.4 in a ring outside (below min_fraction)
        pixels = np.zeros((3, 128, 128, 2), np.float32)
        for k in (1, 2):
            pixels[..., k - 1] = np.where(truth == k, 0.6, 0.0)
            pixels[:, :2, :, k - 1] = 0.4
    else:
        pixels = np.stack([truth == 1, truth == 2], -1)
    seg = _seg(cts, pixels, seg_type)
    a = read_study(_write(tmp_path, *cts, seg), VOCAB, masks=True)
    assert _mask_issues(a) == []
    got = _by(a)
    assert len(got) == 6
    for i, ct in enumerate(cts):
        for k, name in ((1, "liver"), (2, "spleen")):
            m = got[(ct.SOPInstanceUID, name)]
            assert np.array_equal(m.given_mask, truth[i] == k), (i, name)
            assert m.provenance.segment_numbers == (k,) and m.provenance.frame is None
            assert m.spacing == tuple(float(v) for v in ct.PixelSpacing)
            assert m.pixels.shape == (128, 128)
    assert got[(cts[2].SOPInstanceUID, "spleen")].is_empty
    # the SEG frame numbers are real: the frames that hold this slice's segment
    ref = hd.seg.segread(tmp_path / "003.dcm")
    for m in a.mask_samples:
        for f in m.provenance.seg_frames:
            item = ref.PerFrameFunctionalGroupsSequence[f - 1]
            assert item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == \
                m.provenance.image_uid


def test_fractional_threshold_follows_the_vocabulary(tmp_path):
    cts = _ct_series(1)
    frac = np.zeros((1, 128, 128, 1), np.float32)
    frac[0, 10:20, 10:20, 0] = 0.3
    frac[0, 30:40, 30:40, 0] = 0.8
    seg = _seg(cts, frac, "FRACTIONAL", descs=DESCS[:1])
    _write(tmp_path, *cts, seg)
    low = VOCAB.model_copy(deep=True)
    low.seg.min_fraction = 0.25
    for vocab, area in ((VOCAB, 100), (low, 200)):
        a = read_study(tmp_path, vocab, masks=True)
        assert int(_by(a)[(cts[0].SOPInstanceUID, "liver")].given_mask.sum()) == area


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_multi_frame_source_gives_one_sample_per_frame_and_class(tmp_path, seg_type):
    cts = _ct_series(3)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(cts, hd.UID(), 10, hd.UID(), 1)
    truth = _blobs((128, 128), 3, seed=2)
    seg = _seg([enhanced], truth if seg_type == "LABELMAP" else np.stack([truth == 1, truth == 2], -1), seg_type)
    a = read_study(_write(tmp_path, enhanced, seg), VOCAB, masks=True)
    assert _mask_issues(a) == []
    got = _by(a, frames=True)
    assert len(got) == 6
    ref = hd.seg.segread(tmp_path / "001.dcm")
    for f in (1, 2, 3):
        for k, name in ((1, "liver"), (2, "spleen")):
            m = got[(enhanced.SOPInstanceUID, f, name)]
            # independent check: highdicom's own reader, by source frame
            expected = ref.get_pixels_by_source_frame(enhanced.SOPInstanceUID, [f], segment_numbers=[k])[0, ..., 0]
            assert np.array_equal(m.given_mask, expected > 0), (f, name)
            assert m.pixels.shape == (128, 128)
    assert got[(enhanced.SOPInstanceUID, 1, "liver")].pixels is got[(enhanced.SOPInstanceUID, 1, "spleen")].pixels
    # the enhanced image's frames are the CT slices in order of position
    assert {int(got[(enhanced.SOPInstanceUID, f, "liver")].given_mask.sum()) for f in (1, 2, 3)} == {
        int((t == 1).sum()) for t in truth}


def test_frames_of_the_series_the_seg_omits_get_empty_masks(tmp_path):
    # dcmqi-style: the SEG names only the slices with a segment; the series' other slices are empty masks.
    cts = _ct_series(3)
    truth = _blobs((128, 128), 1, seed=3)
    seg = _seg(cts[:1], np.stack([truth == 1, truth == 2], -1))
    a = read_study(_write(tmp_path, *cts, seg), VOCAB, masks=True)
    got = _by(a)
    assert len(got) == 6 and _mask_issues(a) == []
    assert all(got[(c.SOPInstanceUID, n)].is_empty for c in cts[1:] for n in ("liver", "spleen"))
    assert np.array_equal(got[(cts[0].SOPInstanceUID, "liver")].given_mask, truth[0] == 1)


def test_mask_classes_and_no_vocabulary(tmp_path):
    rng = np.random.default_rng(4)
    img = _sc(rng)
    truth = _blobs((20, 24), 2)[0]
    seg = _seg([img], np.stack([truth == 1, truth == 2], -1)[None])
    _write(tmp_path, img, seg)
    a = read_study(tmp_path, VOCAB, masks=True, mask_classes=["spleen"])
    assert [m.class_name for m in a.mask_samples] == ["spleen"]
    a = read_study(tmp_path, None, masks=True)  # classes are the segment labels
    assert sorted(m.class_name for m in a.mask_samples) == ["Liver", "Spleen"]
    a = read_study(tmp_path, VOCAB, masks=True, load_pixels=False)
    assert all(m.pixels.shape == (0, 0) and m.given_mask.shape == (20, 24) for m in a.mask_samples)
    assert a.to_json_dict()["mask_samples"][0]["segment_numbers"] in ([1], [2])


def test_two_segments_of_one_class_unite(tmp_path):
    rng = np.random.default_rng(5)
    img = _sc(rng)
    a_ = np.zeros((20, 24), bool)
    b_ = np.zeros((20, 24), bool)
    a_[2:5, 2:5] = True
    b_[10:18, 10:20] = True
    descs = [_desc(1, "Liver", "10200004"), _desc(2, "Liver left", "10200004")]
    seg = _seg([img], np.stack([a_, b_], -1)[None], descs=descs)
    a = read_study(_write(tmp_path, img, seg), VOCAB, masks=True)
    m = _by(a)[(img.SOPInstanceUID, "liver")]
    assert np.array_equal(m.given_mask, a_ | b_)
    assert m.provenance.segment_numbers == (1, 2) and m.provenance.segment_number == 2  # the larger
    assert m.provenance.seg_frames == (1, 2)


def test_seg_on_a_coarser_grid_is_resampled_to_the_source(tmp_path):
    rng = np.random.default_rng(6)
    img = _sc(rng, shape=(20, 24))
    small = np.zeros((10, 12), bool)
    small[2:6, 3:9] = True
    seg = _seg([img], np.stack([np.repeat(np.repeat(small, 2, 0), 2, 1)], -1)[None], descs=DESCS[:1])
    seg.Rows, seg.Columns = 10, 12
    seg.PixelData = pydicom.pixels.pack_bits(small)
    a = read_study(_write(tmp_path, img, seg), VOCAB, masks=True)
    m = _by(a)[(img.SOPInstanceUID, "liver")]
    assert m.given_mask.shape == (20, 24)
    assert np.array_equal(m.given_mask, np.repeat(np.repeat(small, 2, 0), 2, 1))
    # a grid whose Pixel Spacing says it covers another extent: an issue, no mask sample
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = [pydicom.Dataset()]
    pm = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    pm.PixelSpacing, pm.SliceThickness = [5, 5], 1
    _write(tmp_path, img, seg)
    a = read_study(tmp_path, VOCAB, masks=True)
    assert a.mask_samples == []  # the SEG grid fits neither class's mask onto the image
    assert [i.code for i in a.issues] == ["malformed_annotation"]


@pytest.mark.parametrize("op", ["truncate", "no_segments", "bad_frame", "no_refs", "unknown_segment",
                                "missing_image", "bad_segment_number", "garbage"])
def test_broken_segs_give_issue_records(tmp_path, op):
    cts = _ct_series(2)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(cts, hd.UID(), 10, hd.UID(), 1)
    truth = _blobs((128, 128), 2, seed=7)
    seg = _seg([enhanced], np.stack([truth == 1, truth == 2], -1))
    files = [enhanced, seg]
    if op == "truncate":
        seg.PixelData = seg.PixelData[:100]
    elif op == "no_segments":
        del seg.SegmentSequence
    elif op == "bad_frame":
        seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]\
            .ReferencedFrameNumber = 9
    elif op == "no_refs":
        for fg in seg.PerFrameFunctionalGroupsSequence:
            del fg.DerivationImageSequence
    elif op == "unknown_segment":
        seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue = "999999"
        seg.SegmentSequence[1].SegmentLabel = "Kidney"
    elif op == "missing_image":
        files = [seg]
    elif op == "bad_segment_number":
        seg.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 7
    _write(tmp_path, *files)
    if op == "garbage":
        (tmp_path / "001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    a = read_study(tmp_path, VOCAB, masks=True)  # never raises
    assert _mask_issues(a), op
    assert all(i.code in ISSUE_CODES and i.message for i in a.issues)
    for m in a.mask_samples:
        assert m.given_mask.shape == (128, 128) and m.given_mask.dtype == bool
    codes = {i.code for i in a.issues}
    expect = {"truncate": "malformed_annotation", "no_segments": "malformed_annotation",
              "bad_frame": "malformed_annotation", "no_refs": "no_image_reference", "unknown_segment": "unknown_code",
              "missing_image": "missing_reference", "bad_segment_number": "malformed_annotation",
              "garbage": "unreadable_file"}[op]
    assert expect in codes or (op == "truncate" and "unreadable_pixels" in codes), (op, a.issues)
    if op == "unknown_segment":  # the known segment is still read, the unknown one is said once
        assert {m.class_name for m in a.mask_samples} == {"liver", "spleen"}
        assert sum(i.code == "unknown_code" for i in a.issues) == 1


def test_own_suggestion_seg_is_not_an_annotation(tmp_path):
    rng = np.random.default_rng(8)
    img = _sc(rng)
    seg = _seg([img], np.stack([_blobs((20, 24), 1)[0] == 1], -1)[None], descs=DESCS[:1])
    seg.Manufacturer, seg.SeriesNumber = "labelqa", 9905
    a = read_study(_write(tmp_path, img, seg), VOCAB, masks=True)
    assert a.mask_samples == [] and a.samples == [] and a.issues == []


# ---- real SEG files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "generated_here/liver_dcmqi_made.dcm",
        "dcmqi_data/data/segmentations/liver.dcm",
        "pydicom-data_github_extra/liver_rle.dcm",
        "pydicom-data_github_extra/liver_deflate.dcm",
        "pydicom-data_github_extra/liver_nonbyte_aligned.dcm",
    ],
)
def test_real_liver_segs_give_the_masks_highdicom_reads(path):
    seg_path = DICOM / path
    if not seg_path.exists() or not CT3.is_dir():
        pytest.skip(f"{seg_path} or {CT3} not present")
    a = read_study([seg_path, CT3], VOCAB, masks=True)
    assert a.issues == []
    got = _by(a)
    ct_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sorted(CT3.iterdir())]
    assert set(got) == {(u, c) for u in ct_uids for c in ("liver", "spleen")}
    assert all(got[(u, "spleen")].is_empty and got[(u, "spleen")].provenance.segment_numbers == () for u in ct_uids)
    assert sum(int(got[(u, "liver")].given_mask.sum()) for u in ct_uids) == 107098
    def hd_masks(p: Path) -> np.ndarray:
        return hd.seg.segread(p).get_pixels_by_source_instance(
            ct_uids, segment_numbers=[1], ignore_spatial_locations=True)[..., 0] > 0

    try:
        expected = hd_masks(seg_path)
    except Exception:  # highdicom cannot decode 1-bit RLE / deflated frames: compare with the plain encoding
        expected = hd_masks(DICOM / "dcmqi_data" / "data" / "segmentations" / "liver.dcm")
    for i, u in enumerate(ct_uids):
        m = got[(u, "liver")]
        r, c = expected[i].shape  # 510 x 510 for the non-byte-aligned SEG: the same origin, the top left
        assert np.array_equal(m.given_mask[:r, :c], expected[i]) and not m.given_mask[r:, c:].any()
        assert m.pixels.shape == m.given_mask.shape == (512, 512)
        assert m.provenance.segment_numbers == (1,) and len(m.provenance.seg_frames) == 1


@pytest.mark.slow
def test_real_highdicom_test_segs():
    hdf = DICOM / "highdicom_test_files"
    if not hdf.is_dir():
        pytest.skip(f"{hdf} not present")
    a = read_study([hdf / "seg_image_ct_binary_single_frame.dcm", CT_SMALL], None, masks=True)
    assert a.issues == [] and len(a.mask_samples) == 1
    m = a.mask_samples[0]
    ref = hd.seg.segread(hdf / "seg_image_ct_binary_single_frame.dcm")
    uid = pydicom.dcmread(CT_SMALL, stop_before_pixels=True).SOPInstanceUID
    assert np.array_equal(m.given_mask, ref.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, ..., 0] > 0)
    # label-map and tiled slide-microscopy SEGs never raise; their sources are another study
    for name in ("seg_image_sm_control_labelmap.dcm", "seg_image_sm_dots_tiled_full.dcm", "seg_image_ct_binary.dcm",
                 "seg_image_ct_true_fractional.dcm", "seg_image_ct_binary_overlap.dcm"):
        a = read_study([hdf / name], None, masks=True, load_pixels=False)
        assert all(i.code in ISSUE_CODES for i in a.issues), name


# ---- dcmqi-made SEGs --------------------------------------------------------------------------------


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


def _attr(label_id: int, name: str, sct: str) -> dict:
    code = {"CodeValue": sct, "CodingSchemeDesignator": "SCT", "CodeMeaning": name}
    return {"labelID": label_id, "SegmentDescription": name, "SegmentLabel": name,
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": "Tissue"},
            "SegmentedPropertyTypeCodeSequence": code, "SegmentAlgorithmType": "MANUAL",
            "recommendedDisplayRGBValue": [200, 100, 50 * label_id]}


def test_dcmqi_seg_from_a_label_map_reads_back_exactly(tmp_path):
    tool = _dcmqi_tool("itkimage2segimage")
    if tool is None:
        pytest.skip("dcmqi itkimage2segimage not installed")
    import SimpleITK as sitk

    ct_dir = _write(tmp_path / "ct", *_ct_series(3))
    files = sorted(ct_dir.iterdir())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in files])
    img = reader.Execute()
    lab = _blobs((128, 128), 3, seed=9)
    lab[2] = 0  # the last slice empty: dcmqi leaves it out of the SEG
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(img)
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))
    meta = {"ContentCreatorName": "Reader^One", "SeriesDescription": "Segmentation", "SeriesNumber": "300",
            "InstanceNumber": "1",
            "segmentAttributes": [[_attr(1, "Liver", "10200004"), _attr(2, "Spleen", "78961009")]]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    r = subprocess.run([tool, "--inputImageList", str(tmp_path / "labels.nrrd"), "--inputDICOMDirectory", str(ct_dir),
                        "--inputMetadata", str(tmp_path / "meta.json"), "--outputDICOM", str(tmp_path / "seg.dcm")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    a = read_study([tmp_path / "seg.dcm", ct_dir], VOCAB, masks=True)
    assert _mask_issues(a) == []
    got = _by(a)
    # slices by position (the label map is in ITK's z order)
    order = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    for i, p in enumerate(order):
        u = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for k, name in ((1, "liver"), (2, "spleen")):
            assert np.array_equal(got[(u, name)].given_mask, lab[i] == k), (i, name)
            assert got[(u, name)].provenance.observer == "Reader^One"
    assert len(got) == 6


# ---- dicomize: image + SEG with an integer mask -------------------------------------------------------


def test_dicomize_mask_items_read_back_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(10)
    vocab = Vocabulary.from_class_names(["liver", "spleen"])
    masks = _blobs((30, 26), 3, seed=11)
    masks[1, masks[1] == 2] = 0  # no spleen in image 1
    items = []
    for i in range(3):
        img = (rng.random((30, 26)) * 255).astype(np.uint8)
        items.append(StudyItem(f"img{i}.png", "liver", "liver", lambda img=img: img,
                               mask=masks[i], mask_classes=["liver", "spleen"],
                               mask_corruption="eroded" if i == 2 else ""))
    r = write_studies(items, tmp_path / "out", vocabulary=vocab, dataset_name="t")
    assert r.n_images == 3
    rows = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["mask_classes", "mask_corruption"]
    assert rows[3].endswith("liver;spleen,eroded")
    sets = read_studies(tmp_path / "out", vocab, masks=True)
    got = {(m.provenance.image_uid, m.class_name): m for s in sets for m in s.mask_samples}
    assert [i for s in sets for i in _mask_issues(s)] == []
    with (tmp_path / "out" / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    for i, row in enumerate(manifest):
        for k, name in ((1, "liver"), (2, "spleen")):
            m = got[(row["image_uid"], name)]
            assert np.array_equal(m.given_mask, masks[i] == k), (i, name)
            assert m.provenance.annotation_uid == row["annotation_uid"]
            assert m.provenance.segment_numbers == (k,)
    seg = pydicom.dcmread(next((tmp_path / "out" / manifest[0]["study_uid"]).glob("SEG_*.dcm")))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
    code = vocab.code_for("spleen")
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == code.value
    # the same input gives the same files
    write_studies(items, tmp_path / "again", vocabulary=vocab, dataset_name="t")
    for p in (tmp_path / "out").rglob("*.dcm"):
        assert p.read_bytes() == (tmp_path / "again" / p.relative_to(tmp_path / "out")).read_bytes()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dicomized_mask_seg_passes_dciodvfy(tmp_path):
    rng = np.random.default_rng(12)
    vocab = Vocabulary.from_class_names(["vessel"])
    mask = _blobs((32, 32), 1, seed=13)[0] == 1
    img = (rng.random((32, 32)) * 255).astype(np.uint8)
    items = [StudyItem("a.png", "vessel", "vessel", lambda: img, mask=mask.astype(np.uint8), mask_classes=["vessel"])]
    with pytest.raises(DicomizeError, match="plane geometry"):  # no SEG over an SC: viewers cannot place it
        write_studies(items, tmp_path / "sc", vocabulary=vocab, dataset_name="t", image_kind="sc")
    for kind in (None, "mr"):
        out = tmp_path / str(kind)
        write_studies(items, out, vocabulary=vocab, dataset_name="t", image_kind=kind)
        seg = next(out.rglob("SEG_*.dcm"))
        r = subprocess.run(["dciodvfy", str(seg)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], errors


# ---- bounded work per SEG ----------------------------------------------------------------------------


def _labelmap_declaring(cts, pixels: np.ndarray, classes: list[str], path: Path, *,
                        sop_instance_uid: str | None = None) -> Path:
    """A label-map SEG over ``cts`` whose Segment Sequence declares ``len(classes)`` segments (segment n of
    class ``classes[n - 1]``: liver or spleen) and whose frames are ``pixels`` (uint8/uint16 label values).

    highdicom makes the object with two segments; the Segment Sequence is then written as bytes (pydicom
    takes minutes to write tens of thousands of items).
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    seg = _seg(cts, (np.arange(pixels[0].size).reshape(pixels[0].shape) % 3)[None].repeat(len(cts), 0)
               .astype(np.uint8), "LABELMAP", descs=[_desc(1, "Liver", "10200004"), _desc(2, "Spleen", "78961009")])
    templates = {}
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) in (1, 2):
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, False
            write_dataset(buf, item)
            templates[str(item.SegmentLabel).lower()] = buf.getvalue()
    key = b"\x62\x00\x04\x00US\x02\x00"  # (0062,0004) Segment Number, US, 2 bytes
    items = []
    for n, cls in enumerate(classes, start=1):
        body = templates[cls]
        k = body.index(key) + len(key)
        body = body[:k] + n.to_bytes(2, "little") + body[k + 2:]
        items.append(b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body)
    value = b"".join(items)
    bits = pixels.dtype.itemsize * 8
    seg.BitsAllocated, seg.BitsStored, seg.HighBit = bits, bits, bits - 1
    seg.PixelData = pixels.astype(f"<u{pixels.dtype.itemsize}").tobytes()
    seg["SegmentSequence"].is_undefined_length = False
    if sop_instance_uid:
        seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    out = io.BytesIO()
    seg.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    head = b"\x62\x00\x02\x00SQ\x00\x00"
    at = raw.index(head)
    old = int.from_bytes(raw[at + 8 : at + 12], "little")
    path.write_bytes(raw[:at] + head + len(value).to_bytes(4, "little") + value + raw[at + 12 + old:])
    return path


def test_label_map_declaring_65535_segments_is_refused_from_its_header(tmp_path):
    """A 12 MB label-map SEG declaring 65,535 segments (every value present) is a too_large issue
    decided from its header; the study's other SEG is read as usual."""
    cts = _ct_series(16)
    values = np.random.default_rng(0).integers(0, 65536, size=(16, 128, 128), dtype=np.uint16)
    folder = _write(tmp_path / "study", *cts, _seg(cts, _blobs((128, 128), 16), "LABELMAP"))
    big = _labelmap_declaring(cts, values, ["liver", "spleen"] * 32767 + ["liver"], folder / "big.dcm")
    assert big.stat().st_size > 11e6
    a = read_study(folder, VOCAB, masks=True)
    big_uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    too_large = [i for i in a.issues if i.code == "too_large"]
    assert [(i.annotation_uid, "max_segments" in i.message) for i in too_large] == [(big_uid, True)]
    assert all(s.provenance.annotation_uid != big_uid for s in [*a.samples, *a.mask_samples])
    assert len(a.mask_samples) == 16 * 2 and "too_large" in ISSUE_CODES


def test_seg_beyond_the_pixel_bounds_is_refused(tmp_path):
    """Decoded pixels beyond [seg] max_pixels: refused from the header; masks that would expand beyond
    it: refused while reading. Within both, the same SEG reads."""
    from dicom_io.settings import SegSettings

    cts = _ct_series(3)
    folder = _write(tmp_path, *cts, _seg(cts, _blobs((128, 128), 3, seed=1), "LABELMAP"))
    decoded = 3 * 128 * 128
    for limit, why in [(decoded - 1, "max_pixels"), (decoded + 128 * 128, "expand")]:
        a = read_study(folder, VOCAB, masks=True, seg_limits=SegSettings(max_pixels=limit))
        assert [i.code for i in a.issues if i.code == "too_large"] == ["too_large"] * len(
            [i for i in a.issues if i.code == "too_large"]) and a.mask_samples == []
        assert any(why in i.message for i in a.issues if i.code == "too_large"), a.issues
    a = read_study(folder, VOCAB, masks=True, seg_limits=SegSettings(max_pixels=20 * decoded))
    assert len(a.mask_samples) == 3 * 2 and not [i for i in a.issues if i.code == "too_large"]


def test_label_map_expands_per_class_not_per_declared_segment(tmp_path):
    """200 segments (100 liver, 100 spleen), all present on each frame: the masks are exact, read within a
    pixel bound that one mask per declared segment would pass 12 times over."""
    from dicom_io.settings import SegSettings

    cts = _ct_series(4)
    rng = np.random.default_rng(1)
    pixels = np.zeros((4, 128, 128), np.uint8)
    pixels[:, :, :64] = rng.integers(1, 101, size=(4, 128, 64))  # liver values, left half
    pixels[:, 32:96, 64:] = rng.integers(101, 201, size=(4, 64, 64))  # spleen values, a block on the right
    folder = _write(tmp_path, *cts)
    _labelmap_declaring(cts, pixels, ["liver"] * 100 + ["spleen"] * 100, folder / "seg.dcm")
    frame = 128 * 128
    limits = SegSettings(max_pixels=4 * frame * 200 // 12)
    a = read_study(folder, VOCAB, masks=True, seg_limits=limits)
    assert not [i for i in a.issues if i.code == "too_large"], a.issues
    got = _by(a)
    for ct, px in zip(cts, pixels, strict=True):
        liver, spleen = got[(ct.SOPInstanceUID, "liver")], got[(ct.SOPInstanceUID, "spleen")]
        assert np.array_equal(liver.given_mask, (px >= 1) & (px <= 100))
        assert np.array_equal(spleen.given_mask, px >= 101)
        assert liver.provenance.segment_numbers == tuple(range(1, 101))
