"""A reviewer accepts labelqa's suggested mask: the corrected SEG and the verified report.

The suggestion is read from the suggestion SEG that ``write_results`` wrote (never recomputed); the
corrected SEG replaces the audited segment on that source frame only, for binary, fractional and
label-map SEGs, adds the frame when the given mask was empty there, passes dciodvfy and reads back
through labelqa's own reader.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io import codes
from dicom_io.annotations import read_study
from dicom_io.results.revision import (
    Correction,
    ReviewedItem,
    Reviewer,
    RevisionError,
    corrected_annotation,
    verified_report,
)
from dicom_io.results.seg_out import pixels_on_source_frames, read_suggestion
from dicom_io.results.series import REVIEWED_LABEL_SERIES_NUMBER, is_own_output_dataset
from tests.conftest import have
from tests.dicom_io.test_results_masks import (
    LIVER,
    SPLEEN,
    VOCAB,
    _ct_series,
    _dciodvfy_errors,
    _kind,
    _rect,
    ct_study,  # noqa: F401 - the audited CT study fixture
)

REVIEWER = Reviewer("Doe^Jane", "labelqa QA", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
SHAPE = (128, 128)


def _given(path: Path, sources: list[pydicom.Dataset], tmp: Path) -> dict[tuple[str, str], np.ndarray]:
    """(image uid, class) -> the given mask, read back with labelqa's own reader."""
    files = []
    for i, ds in enumerate(sources):
        files.append(tmp / f"src{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    a = read_study([*files, path], VOCAB, masks=True)
    return {(m.provenance.image_uid, m.class_name): m.given_mask for m in a.mask_samples}


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_accepted_suggestion_replaces_the_segment_on_that_frame_only(ct_study, tmp_path):  # noqa: F811
    cts, seg = ct_study["cts"], ct_study["seg"]
    liver0 = ct_study["masks"][0]  # liver on slice 0: suspected, its consensus in the suggestion SEG
    (sugg,) = _kind(ct_study["datasets"], "SEG")
    suggestion = read_suggestion(pydicom.dcmread(_save(sugg, tmp_path / "sugg.dcm")), "liver", liver0.image_uid, None)
    assert np.array_equal(suggestion, liver0.consensus)
    with pytest.raises(ValueError, match="no segment"):
        read_suggestion(sugg, "kidney", liver0.image_uid, None)
    original = pydicom.dcmread(_save(seg, tmp_path / "seg.dcm"))
    fix = Correction(None, segment_number=liver0.segment_number, mask=suggestion, image_uid=liver0.image_uid)
    sources = {ds.SOPInstanceUID: ds for ds in cts}
    out = corrected_annotation(original, [fix], REVIEWER, key=[1, 1, 1], sources=sources)
    path = _save(out, tmp_path / "corrected.dcm")
    assert out.SOPClassUID == original.SOPClassUID and out.SOPInstanceUID != original.SOPInstanceUID
    assert out.StudyInstanceUID == original.StudyInstanceUID and out.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert int(out.SeriesNumber) == REVIEWED_LABEL_SERIES_NUMBER and not is_own_output_dataset(out)
    refs = {r.ReferencedSOPInstanceUID for s in out.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == set(sources)  # the same source images
    assert "suggestion accepted" in out.SegmentSequence[0].SegmentDescription
    assert "SegmentDescription" not in out.SegmentSequence[1]
    before, after = _given(tmp_path / "seg.dcm", cts, tmp_path), _given(path, cts, tmp_path)
    assert np.array_equal(after[(liver0.image_uid, "liver")], suggestion)
    assert not np.array_equal(before[(liver0.image_uid, "liver")], suggestion)
    for k in before:  # every other segment and frame exactly as it was
        if k != (liver0.image_uid, "liver"):
            assert np.array_equal(after[k], before[k]), k
    if have("dciodvfy"):
        assert _dciodvfy_errors(path) == []
    # the same decision, the same object
    again = _save(corrected_annotation(original, [fix], REVIEWER, key=[1, 1, 1], sources=sources), tmp_path / "b.dcm")
    assert again.read_bytes() == path.read_bytes()


def test_missing_structure_adds_the_frame_and_combines_with_a_class_correction(ct_study, tmp_path):  # noqa: F811
    cts = ct_study["cts"]
    liver = np.stack([_rect(SHAPE, 30, 30, 60, 60), np.zeros(SHAPE, bool)])  # no liver drawn on slice 1
    spleen = np.stack([_rect(SHAPE, 80, 80, 100, 110), _rect(SHAPE, 90, 20, 100, 30)])
    seg = _seg_of(cts, np.stack([liver, spleen], -1), "BINARY")
    original = pydicom.dcmread(_save(seg, tmp_path / "seg.dcm"))
    assert int(original.NumberOfFrames) == 3  # the empty liver frame is not stored
    new = _rect(SHAPE, 40, 40, 70, 80)
    fixes = [Correction(None, segment_number=1, mask=new, image_uid=cts[1].SOPInstanceUID),
             Correction(VOCAB.code_for("kidney"), segment_number=2)]
    out = corrected_annotation(original, fixes, REVIEWER, key=[7], sources={ds.SOPInstanceUID: ds for ds in cts})
    path = _save(out, tmp_path / "corrected.dcm")
    assert int(out.NumberOfFrames) == 4
    assert out.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Kidney"
    after = _given(path, cts, tmp_path)
    assert np.array_equal(after[(cts[1].SOPInstanceUID, "liver")], new)
    assert np.array_equal(after[(cts[0].SOPInstanceUID, "liver")], liver[0])
    assert np.array_equal(after[(cts[1].SOPInstanceUID, "kidney")], spleen[1])  # the spleen segment, now kidney
    if have("dciodvfy"):
        assert _dciodvfy_errors(path) == []


def _seg_of(sources, pixels, kind: str) -> hd.seg.Segmentation:
    descs = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"), segmented_property_type=code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, (name, code) in enumerate((("Liver", LIVER), ("Spleen", SPLEEN)), start=1)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="annotator", manufacturer_model_name="hand", software_versions="1", device_serial_number="1")


def test_fractional_seg_keeps_its_stored_values_elsewhere(tmp_path):
    cts = _ct_series(2)
    liver = np.stack([_rect(SHAPE, 30, 30, 60, 60), _rect(SHAPE, 40, 40, 70, 80)]).astype(np.float32)
    liver[1, 40:50] = 0.5  # a soft edge on the slice nobody touches
    spleen = np.stack([_rect(SHAPE, 80, 80, 100, 110), _rect(SHAPE, 90, 20, 100, 30)]).astype(np.float32) * 0.8
    original = pydicom.dcmread(_save(_seg_of(cts, np.stack([liver, spleen], -1), "FRACTIONAL"), tmp_path / "s.dcm"))
    new = _rect(SHAPE, 20, 20, 50, 70)
    fix = Correction(None, segment_number=1, mask=new, image_uid=cts[0].SOPInstanceUID)
    out = corrected_annotation(original, [fix], REVIEWER, key=[2], sources={ds.SOPInstanceUID: ds for ds in cts})
    path = _save(out, tmp_path / "corrected.dcm")
    assert out.SegmentationType == "FRACTIONAL" and int(out.MaximumFractionalValue) == 255
    frames = [(ds.SOPInstanceUID, None) for ds in cts]
    was = pixels_on_source_frames(hd.seg.segread(tmp_path / "s.dcm"), frames, rescale_fractional=False)
    now = pixels_on_source_frames(hd.seg.segread(path), frames, rescale_fractional=False)
    assert np.array_equal(now[0, ..., 0], new.astype(np.uint8) * 255)
    assert np.array_equal(now[1], was[1]) and np.array_equal(now[0, ..., 1], was[0, ..., 1])
    assert set(np.unique(was[1, ..., 0])) == {0, 128, 255}  # the soft edge really is stored fractionally
    assert np.array_equal(_given(path, cts, tmp_path)[(cts[0].SOPInstanceUID, "liver")], new)
    if have("dciodvfy"):
        assert _dciodvfy_errors(path) == []


def test_label_map_seg_new_mask_wins_over_the_other_segment(tmp_path):
    """dicom3tools does not know the Label Map Segmentation IOD yet: checked by reading it back only."""
    cts = _ct_series(2)
    liver = np.stack([_rect(SHAPE, 30, 30, 60, 60), _rect(SHAPE, 40, 40, 70, 80)])
    spleen = np.stack([_rect(SHAPE, 80, 80, 100, 110), _rect(SHAPE, 90, 20, 100, 30)])
    original = pydicom.dcmread(_save(_seg_of(cts, np.stack([liver, spleen], -1), "LABELMAP"), tmp_path / "s.dcm"))
    new = _rect(SHAPE, 85, 85, 120, 120)  # over part of the spleen
    fix = Correction(None, segment_number=1, mask=new, image_uid=cts[0].SOPInstanceUID)
    out = corrected_annotation(original, [fix], REVIEWER, key=[3], sources={ds.SOPInstanceUID: ds for ds in cts})
    after = _given(_save(out, tmp_path / "corrected.dcm"), cts, tmp_path)
    assert np.array_equal(after[(cts[0].SOPInstanceUID, "liver")], new)
    assert np.array_equal(after[(cts[0].SOPInstanceUID, "spleen")], spleen[0] & ~new)
    assert np.array_equal(after[(cts[1].SOPInstanceUID, "liver")], liver[1])


def test_multi_frame_source_replaces_the_named_frame(tmp_path):
    cts = _ct_series(3)
    enh = hd.legacy.LegacyConvertedEnhancedCTImage(cts, hd.UID(), 10, hd.UID(), 1)
    liver = np.stack([_rect(SHAPE, 30, 30, 60, 60)] * 3)
    original = pydicom.dcmread(_save(_seg_of([enh], np.stack([liver, np.zeros_like(liver)], -1), "BINARY"),
                                     tmp_path / "s.dcm"))
    new = _rect(SHAPE, 25, 25, 65, 65)
    out = corrected_annotation(original, [Correction(None, segment_number=1, mask=new, image_uid=enh.SOPInstanceUID,
                                                     frame=2)], REVIEWER, key=[4], sources={enh.SOPInstanceUID: enh})
    path = _save(out, tmp_path / "corrected.dcm")
    _save(enh, tmp_path / "enh.dcm")
    got = {m.provenance.frame: m.given_mask for m in read_study([tmp_path / "enh.dcm", path], VOCAB, masks=True,
                                                                  mask_classes=["liver"]).mask_samples}
    assert np.array_equal(got[2], new) and np.array_equal(got[1], liver[0]) and np.array_equal(got[3], liver[2])
    if have("dciodvfy"):
        assert _dciodvfy_errors(path) == []


def test_bad_mask_corrections_are_clear_errors(ct_study, tmp_path):  # noqa: F811
    cts, seg = ct_study["cts"], ct_study["seg"]
    original = pydicom.dcmread(_save(seg, tmp_path / "seg.dcm"))
    sources = {ds.SOPInstanceUID: ds for ds in cts}
    u0 = cts[0].SOPInstanceUID
    m = np.ones(SHAPE, bool)
    cases = [
        (Correction(None, segment_number=1, mask=np.ones((4, 4), bool), image_uid=u0), sources, "does not fit"),
        (Correction(None, segment_number=9, mask=m, image_uid=u0), sources, "segment 9"),
        (Correction(None, segment_number=1, mask=m, image_uid="1.2.3.4"), sources, "does not refer"),
        (Correction(None, segment_number=1, mask=m, image_uid=u0), {u0: cts[0]}, "not in the store"),
        (Correction(None, segment_number=1), sources, "a label or a mask"),
    ]
    for fix, src, message in cases:
        with pytest.raises(RevisionError, match=message):
            corrected_annotation(original, [fix], REVIEWER, sources=src)
    (sr,) = _kind(ct_study["datasets"], "SR")
    with pytest.raises(RevisionError, match="only a SEG"):
        corrected_annotation(sr, [Correction(None, mask=m, image_uid=u0)], REVIEWER)


def test_verified_report_records_the_accepted_suggestion_in_that_frames_group(ct_study):  # noqa: F811
    sr = pydicom.dcmread(next(p for p in ct_study["paths"] if p.name.startswith("SR_")))  # as the service reads it
    liver0 = ct_study["masks"][0]
    liver1 = ct_study["masks"][2]  # the same segment on the other slice: its own group, no decision
    assert (liver1.annotation_uid, liver1.segment_number) == (liver0.annotation_uid, liver0.segment_number)
    d = ReviewedItem(liver0.annotation_uid, liver0.segment_number, "label_wrong", None, "too small", "rita",
                     corrected_mask="suggestion", image_uid=liver0.image_uid, frame=None)
    rep = verified_report(sr, [d], REVIEWER, key=[1])
    assert rep.VerificationFlag == "VERIFIED"
    with_decision = [g for g in _groups(rep) if any(_value(it) == codes.REVIEWER_DECISION.value
                                                    for it in g.ContentSequence)]
    assert len(with_decision) == 1
    items = {_value(it): it for it in with_decision[0].ContentSequence if it.ValueType == "CODE"}
    assert items[codes.REVIEWER_DECISION.value].ConceptCodeSequence[0].CodeValue == codes.ERROR_CONFIRMED.value
    assert items[codes.CORRECTED_MASK.value].ConceptCodeSequence[0].CodeValue == codes.SUGGESTED_CORRECTION.value
    assert codes.CORRECTED_LABEL.value not in items
    text = json.dumps(with_decision[0].to_json_dict())
    assert liver0.image_uid in text and liver1.image_uid not in text
    with pytest.raises(RevisionError, match="unknown mask correction"):
        verified_report(sr, [ReviewedItem(liver0.annotation_uid, 1, "label_wrong", None, None, "rita",
                                          corrected_mask="drawn")], REVIEWER)


def _value(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (container,) = [it for it in sr.ContentSequence if _value(it) == "126010"]
    return list(container.ContentSequence)


def test_no_corrected_seg_over_images_without_plane_geometry(ct_study, tmp_path):  # noqa: F811
    """An accepted suggestion rebuilds the SEG; over images a viewer cannot place it on, none is written."""
    import copy

    cts, seg = ct_study["cts"], ct_study["seg"]
    liver0 = ct_study["masks"][0]
    flat = {}
    for ds in cts:
        ds = copy.deepcopy(ds)
        del ds.ImagePositionPatient
        flat[ds.SOPInstanceUID] = ds
    fix = Correction(None, segment_number=liver0.segment_number, mask=liver0.consensus, image_uid=liver0.image_uid)
    with pytest.raises(RevisionError, match="no plane geometry"):
        corrected_annotation(pydicom.dcmread(_save(seg, tmp_path / "seg.dcm")), [fix], REVIEWER, key=[9],
                             sources=flat)
