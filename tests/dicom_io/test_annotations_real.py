"""read_study on annotation objects made by other software (pydicom-data, highdicom, dcmqi, dicomscope).

Each file either yields the expected samples (count, label, segment numbers, frames) or the expected
issue records; the notes say why.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.annotations import read_study
from dicom_io.vocabulary import Vocabulary
from tests.conftest import SHARED_DATA

DICOM = SHARED_DATA / "dicom"
HD = DICOM / "highdicom_test_files"
DCMQI = DICOM / "dcmqi_data" / "data"
CT3 = DCMQI / "segmentations" / "ct-3slice"
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def _pydicom_data(name: str) -> Path:
    try:
        import data_store

        p = Path(data_store.__file__).parent / "data" / name
    except ImportError:
        pytest.skip("pydicom-data not installed")
    if not p.is_file():
        pytest.skip(f"{name} not in pydicom-data")
    return p


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not present")


def _codes(a) -> dict[str, int]:
    return dict(collections.Counter(i.code for i in a.issues))


LIVER_VOCAB = Vocabulary.from_data(
    {
        "seg": {"absent_class": "normal"},
        "classes": [
            {"name": "normal", "code": {"scheme": "SCT", "value": "17621005", "meaning": "Normal"}},
            {
                "name": "liver",
                "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"},
                "aliases": [{"scheme": "SRT", "value": "T-62000", "meaning": "Liver"}],
            },
        ],
    }
)


@pytest.mark.parametrize("name", ["liver.dcm", "liver_expb.dcm"])
def test_pydicom_data_liver_seg_alone_reports_missing_images(name):
    # The SEG references three CT slices that are not beside it: one missing_reference per slice.
    a = read_study([_pydicom_data(name)], LIVER_VOCAB, load_pixels=False)
    assert a.samples == []
    assert _codes(a) == {"missing_reference": 3}
    assert {i.annotation_uid for i in a.issues} == {pydicom.dcmread(_pydicom_data(name)).SOPInstanceUID}


@pytest.mark.parametrize(
    "path",
    [
        "pydicom-data:liver.dcm",
        "pydicom-data:liver_expb.dcm",
        "pydicom-data_github_extra/liver_rle.dcm",  # 1-bit RLE: decoded here (pydicom cannot)
        "pydicom-data_github_extra/liver_deflate.dcm",  # Deflated Image Frame Compression: decoded here
        "pydicom-data_github_extra/liver_j2k.dcm",
        "pydicom-data_github_extra/liver_nonbyte_aligned.dcm",  # 510 x 510, bits run across frames
        "pydicom-data_github_extra/liver_nonbyte_aligned_rle.dcm",
        "generated_here/liver_dcmqi_made.dcm",
        "dcmqi_data/data/segmentations/liver.dcm",
    ],
)
def test_liver_segs_with_their_ct_slices_give_three_liver_samples(path):
    seg = _pydicom_data(path.split(":")[1]) if path.startswith("pydicom-data:") else DICOM / path
    _need(seg, CT3)
    a = read_study([seg, CT3], LIVER_VOCAB)
    assert a.issues == []
    assert len(a.samples) == 3
    ct_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in CT3.iterdir()}
    assert {s.provenance.image_uid for s in a.samples} == ct_uids
    total = 0
    for s in a.samples:
        assert s.label == "liver" and s.provenance.source == "seg" and s.provenance.segment_number == 1
        assert s.provenance.frame is None and s.pixels.shape == (512, 512) and s.pixels.dtype == np.float32
        assert list(s.masks) == [1]
        total += int(s.masks[1].sum())
    assert total == 107098  # liver voxels over the three slices, the same for every encoding


def test_highdicom_binary_fractional_and_single_frame_segs():
    _need(HD)
    # The CT SEGs reference three highdicom CT slices not in the folder; one frame has no segment.
    for name in ("seg_image_ct_binary.dcm", "seg_image_ct_binary_fractional.dcm", "seg_image_ct_true_fractional.dcm"):
        a = read_study([HD / name], None, load_pixels=False)
        assert a.samples == [] and _codes(a) == {"missing_reference": 3, "no_label": 1}, name
    # Overlapping segments 1 and 2 on every slice: one conflicting_labels per referenced image.
    a = read_study([HD / "seg_image_ct_binary_overlap.dcm"], None, load_pixels=False)
    assert a.samples == [] and _codes(a) == {"conflicting_labels": 4}
    # The single-frame SEG references pydicom's CT_small: with it, one sample, segment 1.
    a = read_study([HD / "seg_image_ct_binary_single_frame.dcm", CT_SMALL], None)
    assert a.issues == [] and len(a.samples) == 1
    s = a.samples[0]
    assert (s.label, s.provenance.segment_number, s.pixels.shape) == ("first segment", 1, (128, 128))
    # CR SEG: its source image (another study) is not here.
    a = read_study([HD / "seg_image_cr_binary.dcm"], None, load_pixels=False)
    assert _codes(a) == {"missing_reference": 1}


@pytest.mark.parametrize(
    "name, expected_samples",
    [
        ("seg_image_sm_control.dcm", 20),  # binary: one segment per tile frame
        ("seg_image_sm_control_labelmap.dcm", 20),  # label map: pixel values are segment numbers
        ("seg_image_sm_control_labelmap_palette_color.dcm", 20),
        ("seg_image_sm_numbers.dcm", 20),
    ],
)
def test_highdicom_slide_microscopy_segs_label_tile_frames(name, expected_samples):
    _need(HD / name, HD / "sm_image_control.dcm")
    a = read_study([HD / name, HD / "sm_image_control.dcm"], None, load_pixels=False)
    assert a.issues == []
    assert len(a.samples) == expected_samples
    frames = sorted(s.provenance.frame for s in a.samples)
    assert len(set(frames)) == expected_samples and all(f >= 1 for f in frames)
    for s in a.samples:
        assert s.provenance.segment_number in s.masks and s.masks[s.provenance.segment_number].any()


def test_highdicom_dots_segs_conflict_per_tile():
    _need(HD / "seg_image_sm_dots.dcm")
    a = read_study([HD / "seg_image_sm_dots.dcm"], None, load_pixels=False)
    # Tiles holding dots of several segments conflict; the rest name a source tile not in the folder.
    assert _codes(a) == {"conflicting_labels": 21, "missing_reference": 3}
    # TILED_FULL (no per-frame groups): segment by frame order, the one referenced slide as a whole.
    a = read_study([HD / "seg_image_sm_dots_tiled_full.dcm"], None, load_pixels=False)
    assert _codes(a) == {"conflicting_labels": 1}


def test_highdicom_tid1500_srs():
    _need(HD / "sr_document.dcm")
    a = read_study([HD / "sr_document.dcm", CT_SMALL], None)
    assert a.issues == [] and len(a.samples) == 1
    s = a.samples[0]
    assert s.label == "Spinal cord" and s.provenance.source == "sr" and s.provenance.content_path.startswith("1.")
    assert s.provenance.observer  # the report's observer context names one
    vocab = Vocabulary.from_data(
        {"classes": [{"name": "cord", "code": {"scheme": "SCT", "value": "2748008", "meaning": "Spinal cord"}}]}
    )
    a = read_study([HD / "sr_document.dcm", CT_SMALL], vocab)
    assert [x.label for x in a.samples] == ["cord"]
    # Four measurement groups (Nodule, Aorta, Vertebra, an anatomical position) on one CT image.
    a = read_study([HD / "sr_document_with_multiple_groups.dcm", CT_SMALL], None)
    assert a.samples == [] and _codes(a) == {"conflicting_labels": 1}
    nodule = Vocabulary.from_data(
        {"classes": [{"name": "nodule", "code": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}}]}
    )
    a = read_study([HD / "sr_document_with_multiple_groups.dcm", CT_SMALL], nodule)
    assert [x.label for x in a.samples] == ["nodule"]
    assert _codes(a) == {"unknown_code": 3}  # Aorta, Vertebra, T4/T5 level: not in this vocabulary


def test_dcmqi_tid1500_srs_reference_seg_segments():
    sr = DICOM / "generated_here" / "sr_tid1500_dcmqi_made.dcm"
    _need(sr, DCMQI / "sr-example")
    # dcmqi's groups reference a SEG segment, not images; that SEG is not among the files we hold.
    a = read_study([sr], None, load_pixels=False)
    assert a.samples == [] and _codes(a) == {"missing_reference": 1}
    assert "segment(s) [1]" in a.issues[0].message
    # sr-example: SR + its SEG (13 segments) + an RWVM; the CT/PET images are not there.
    a = read_study([DCMQI / "sr-example"], None, load_pixels=False)
    codes = _codes(a)
    assert codes["unsupported_sop_class"] == 1  # Real World Value Mapping
    assert codes["missing_reference"] >= 13 and a.samples == []


def test_dicomscope_basic_text_srs_have_no_coded_finding():
    d = DICOM / "debian" / "dicomscope"
    _need(d)
    for p in sorted(d.glob("*.dcm")):
        a = read_study([p], None, load_pixels=False)
        assert a.samples == [], p.name
        assert set(_codes(a)) <= {"no_label", "unsupported_sop_class"}, (p.name, a.issues)


@pytest.mark.parametrize(
    "rel",
    [
        "highdicom_test_files/sr_document.dcm",
        "highdicom_test_files/sr_document_with_multiple_groups.dcm",
        "dcmqi_data/data/sr-example/sr.dcm",
        "generated_here/sr_tid1500_dcmqi_made.dcm",
    ],
)
def test_sr_walker_agrees_with_highdicom_measurement_report(rel):
    """Our content-tree walker finds the same measurement groups and Findings as highdicom's TID 1500 parser."""
    import highdicom as hd

    from dicom_io.annotations.sr import FINDING, MEASUREMENT_GROUP, _labels, _tree, _walk

    path = DICOM / rel
    _need(path)
    report = hd.sr.srread(path).content
    groups = [
        *report.get_image_measurement_groups(),
        *report.get_planar_roi_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
    ]
    expected = sorted(g.finding_type.meaning for g in groups if g.finding_type is not None)
    ds = pydicom.dcmread(path)
    ours = [it for it in _walk(_tree(ds, "1")) if it.value_type == "CONTAINER" and it.name[:2] == MEASUREMENT_GROUP]
    assert len(ours) == len(groups)
    found = []
    for g in ours:
        for it in g.children:
            if it.value_type == "CODE" and it.name[:2] == FINDING:
                found.append(_labels(g, [it], None)[0][0][0])
    assert sorted(found) == expected


@pytest.mark.parametrize(
    "rel",
    [
        "generated_here/liver_dcmqi_made.dcm",
        "highdicom_test_files/seg_image_ct_binary.dcm",
        "highdicom_test_files/seg_image_ct_true_fractional.dcm",
        "highdicom_test_files/seg_image_ct_binary_fractional.dcm",
    ],
)
def test_seg_masks_agree_with_highdicom(rel):
    """Per source image and segment, our masks equal highdicom's get_pixels_by_source_instance."""
    import highdicom as hd

    from dicom_io.annotations.seg import read_seg

    path = DICOM / rel
    _need(path)
    seg = hd.seg.segread(path)
    uids = [u[2] for u in seg.get_source_image_uids()]
    theirs = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, skip_overlap_checks=True, ignore_spatial_locations=True
    )
    records, _ = read_seg(path, None)
    by_image = {r.image_uid: r for r in records if r.masks is not None}
    numbers = list(seg.segment_numbers)
    threshold = 0.5 if seg.SegmentationType == "FRACTIONAL" else 0  # highdicom rescales fractions to [0, 1]
    compared = 0
    for i, uid in enumerate(uids):
        if uid not in by_image:
            assert not (theirs[i] > threshold).any()  # no sample here: nothing there either
            continue
        for j, n in enumerate(numbers):
            ours = by_image[uid].masks.get(n, np.zeros(theirs.shape[1:3], bool))
            np.testing.assert_array_equal(ours, theirs[i, :, :, j] > threshold)
            compared += 1
    assert compared >= 1
