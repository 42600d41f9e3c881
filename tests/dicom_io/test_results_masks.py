"""Results for audited masks: TID 1411 groups in the QA report, suggested-correction SEG, overlay SC, KOS.

Every object passes dciodvfy (and the SR dsrdump -v) when the tools are installed; the content the
tools do not check is asserted here: the SR references the SEG, segment and SEG frames, verdicts,
kinds, Dice/HD95 round-trip; the suggested SEG holds the consensus pixel for pixel on the right
source frames; the overlay shows given, consensus and disagreement; the KOS selects the flagged
frames; UIDs are deterministic; the HTML report shows the overlays.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.annotations import read_study
from dicom_io.dicomize import StudyItem, write_studies
from dicom_io.results import AlgorithmInfo, AuditedMask, save_results, write_results
from dicom_io.results.series import OVERLAY_SERIES_NUMBER, SUGGESTION_SEG_SERIES_NUMBER, is_own_output_dataset
from dicom_io.results.sr import read_report
from dicom_io.vocabulary import Vocabulary
from tests.conftest import have, requires_dciodvfy, requires_dcmtk

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
ALGORITHM = AlgorithmInfo("labelqa-seg-ensemble", "0.2.0", "sha256:" + "ef" * 32, {"dice_cut": 0.7})
LIVER = Code("10200004", "SCT", "Liver")
SPLEEN = Code("78961009", "SCT", "Spleen")
VOCAB = Vocabulary.from_data({"classes": [
    {"name": "liver", "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}},
    {"name": "spleen", "code": {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"}},
    {"name": "kidney", "code": {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}},
]})


def _ct_series(n: int) -> list[pydicom.Dataset]:
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
        ds.SliceThickness = 5.0
        out.append(ds)
    return out


def _seg(sources, pixels) -> hd.seg.Segmentation:
    descs = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=name, segmented_property_category=hd.sr.CodedConcept("85756007", "SCT",
                                                                                             "Tissue"),
        segmented_property_type=code, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, (name, code) in enumerate((("Liver", LIVER), ("Spleen", SPLEEN)), start=1)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="annotator", manufacturer_model_name="hand", software_versions="1", device_serial_number="1")


def _rect(shape, r0, c0, r1, c1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def _regions(given: np.ndarray, consensus: np.ndarray, spacing=(1.0, 1.0)) -> list[dict]:
    from scipy import ndimage

    out = []
    for diff, kind in ((consensus & ~given, "missing_structure"), (given & ~consensus, "spurious_structure")):
        lab, n = ndimage.label(diff)
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            area = int((lab[sl] == k).sum())
            out.append({"kind": kind, "area_px": area, "area_mm2": area * spacing[0] * spacing[1],
                        "bbox": (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)})
    return out


def _audit(sample, verdict, kind, consensus, dice, hd95, **kw) -> AuditedMask:
    return AuditedMask.from_sample(sample, verdict=verdict, kind=kind, dice=dice, hd95_mm=hd95, agreement=0.9,
                                   priority=kw.pop("priority", 1.0), score=0.8, consensus=consensus,
                                   regions=_regions(sample.given_mask, consensus, sample.spacing),
                                   class_code=VOCAB.code_for(sample.class_name), **kw)


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory) -> dict:
    """Two CT slices + a SEG (liver, spleen), read as mask samples, audited by hand."""
    d = tmp_path_factory.mktemp("ctmask")
    cts = _ct_series(2)
    shape = (128, 128)
    liver = np.stack([_rect(shape, 30, 30, 60, 60), _rect(shape, 40, 40, 70, 80)])
    spleen = np.stack([_rect(shape, 80, 80, 100, 110), _rect(shape, 90, 20, 100, 30)])
    seg = _seg(cts, np.stack([liver, spleen], -1))
    for i, ds in enumerate([*cts, seg]):
        ds.save_as(d / f"{i}.dcm", enforce_file_format=True)
    a = read_study(d, VOCAB, masks=True)
    s = {(m.provenance.image_uid, m.class_name): m for m in a.mask_samples}
    u0, u1 = cts[0].SOPInstanceUID, cts[1].SOPInstanceUID
    big_liver = _rect(shape, 30, 30, 60, 90)  # the given liver on slice 0 misses its right part
    masks = [
        _audit(s[(u0, "liver")], "suspected_mask_error", "missing_structure", big_liver, 0.67, 28.0, priority=3.0),
        _audit(s[(u0, "spleen")], "consistent", None, s[(u0, "spleen")].given_mask, 0.98, 1.0),
        _audit(s[(u1, "liver")], "hard_case", "boundary_too_loose", _rect(shape, 42, 42, 68, 78), 0.81, 3.0),
        _audit(s[(u1, "spleen")], "suspected_mask_error", "spurious_structure", np.zeros(shape, bool), 0.0,
               float("inf"), priority=2.0),
        _audit(s[(u0, "kidney")], "consistent", None, np.zeros(shape, bool), None, None, priority=0.1),
    ]
    sources = {ds.SOPInstanceUID: ds for ds in cts}
    anns = {seg.SOPInstanceUID: seg}
    datasets = write_results(sources, anns, [], ALGORITHM, masks=masks)
    paths = save_results(datasets, d / "results")
    return {"dir": d, "cts": cts, "seg": seg, "masks": masks, "datasets": datasets, "paths": paths,
            "sources": sources, "anns": anns}


def _kind(datasets, kind: str) -> list[pydicom.Dataset]:
    return [ds for ds in datasets if {"SR": ds.Modality == "SR" and ds.SeriesNumber == 9901,
                                      "ROI": ds.Modality == "SR" and ds.SeriesNumber == 9908,
                                      "KO": ds.Modality == "KO", "SEG": ds.Modality == "SEG",
                                      "SC": ds.Modality == "OT"}[kind]]


def _dciodvfy_errors(p: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def test_objects_written(ct_study):
    ds = ct_study["datasets"]
    assert [len(_kind(ds, k)) for k in ("SC", "SEG", "KO", "SR", "ROI")] == [2, 1, 1, 1, 1]  # 2 flagged masks
    assert [d.SeriesNumber for d in ds[-2:]] == [9901, 9908]  # the QA report, then the flags drawn
    assert {p.name.split("_")[0] for p in ct_study["paths"]} == {"SR", "ROI", "SC", "SEG", "KO"}


@requires_dciodvfy
def test_every_object_passes_dciodvfy(ct_study):
    for p in ct_study["paths"]:
        assert _dciodvfy_errors(p) == [], p.name


@requires_dcmtk
def test_sr_passes_dsrdump_verbose(ct_study):
    (sr,) = [p for p in ct_study["paths"] if p.name.startswith("SR_")]
    r = subprocess.run(["dsrdump", "-v", str(sr)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("E:", "W:"))] == []


def test_sr_has_one_tid1411_group_per_segment_mask_with_references(ct_study):
    (sr,) = _kind(ct_study["datasets"], "SR")
    masks, seg = ct_study["masks"], ct_study["seg"]
    (container,) = [it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = list(container.ContentSequence)
    assert len(groups) == len(masks) + 1
    tids = [g.ContentTemplateSequence[0].TemplateIdentifier if "ContentTemplateSequence" in g else None
            for g in groups]
    for g, m in zip(groups, masks, strict=False):
        images = [it for it in g.ContentSequence if it.ValueType == "IMAGE"]
        segrefs = [it.ReferencedSOPSequence[0] for it in images if "ReferencedSegmentNumber"
                   in it.ReferencedSOPSequence[0]]
        if m.segment_number is None:  # kidney: no segment in the SEG -> image + composite SEG reference
            assert not segrefs
            comps = [it for it in g.ContentSequence if it.ValueType == "COMPOSITE"]
            assert comps[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
            continue
        (ref,) = segrefs
        assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(ref.ReferencedSegmentNumber) == m.segment_number
        assert "ReferencedFrameNumber" not in ref  # PS3.3 10.4: a segment number, no SEG frame numbers
        # the segment's source: the audited image
        src = [it.ReferencedSOPSequence[0] for it in images if "ReferencedSegmentNumber" not in
               it.ReferencedSOPSequence[0]]
        assert [r.ReferencedSOPInstanceUID for r in src] == [m.image_uid]
        # the mask sample's SEG frames really are this segment on this image
        for f in m.seg_frames:
            fg = seg.PerFrameFunctionalGroupsSequence[f - 1]
            assert fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber == m.segment_number
            assert fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == m.image_uid
    assert tids.count("1411") == 4 and tids.count("1501") == 2  # 4 segments, kidney, summary


def test_report_round_trip_verdicts_kinds_scores_regions(ct_study):
    (sr_path,) = [p for p in ct_study["paths"] if p.name.startswith("SR_")]
    report = read_report(hd.sr.srread(sr_path))
    assert report["items"] == []
    got, masks = report["masks"], ct_study["masks"]
    assert len(got) == len(masks)
    scs = {ds.SOPInstanceUID for ds in _kind(ct_study["datasets"], "SC")}
    (sugg,) = _kind(ct_study["datasets"], "SEG")
    for g, m in zip(got, masks, strict=True):
        assert g["verdict"] == m.verdict and g["kind"] == m.kind
        assert g["class_label"] == m.class_concept()
        assert (g["source_image_uid"], g["annotation_uid"], g["segment_number"]) == (
            m.image_uid, m.annotation_uid, m.segment_number)
        meas = g["measurements"]
        if m.dice is None:
            assert codes.DICE_TO_CONSENSUS.meaning not in meas
        else:
            assert meas[codes.DICE_TO_CONSENSUS.meaning] == pytest.approx(m.dice)
        if m.hd95_mm is not None and np.isfinite(m.hd95_mm):
            assert meas[codes.HD95_TO_CONSENSUS.meaning] == pytest.approx(m.hd95_mm)
        else:
            assert codes.HD95_TO_CONSENSUS.meaning not in meas  # inf (empty consensus): not a number to write
        assert meas[codes.MASK_AGREEMENT.meaning] == pytest.approx(0.9)
        assert meas[codes.REANNOTATION_PRIORITY.meaning] == pytest.approx(m.priority)
        assert meas[codes.N_DISAGREEMENT_REGIONS.meaning] == len(m.regions)
        assert len(g["regions"]) == len(m.regions)
        if m.flagged:
            assert g["overlay_uid"] in scs and g["suggestion_uid"] == sugg.SOPInstanceUID
        else:
            assert g["overlay_uid"] is None and g["suggestion_uid"] is None
    first = got[0]
    assert first["regions"] == ["region 1: missing structure, 900 px, 393.8 mm2, rows 30-59, columns 60-89"]
    assert report["summary"] == {codes.COUNT_SUSPECTED_MASK.meaning: 2.0, codes.COUNT_HARD.meaning: 1.0,
                                 codes.COUNT_CONSISTENT.meaning: 2.0}


def test_suggested_seg_holds_the_consensus_on_the_right_source_frames(ct_study):
    (sugg,) = _kind(ct_study["datasets"], "SEG")
    assert sugg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert sugg.SeriesNumber == SUGGESTION_SEG_SERIES_NUMBER and sugg.Manufacturer == "labelqa"
    assert is_own_output_dataset(sugg)
    assert sugg.ContentLabel == "SUGGESTION" and "NOT FOR DIAGNOSIS" in sugg.ContentDescription
    assert "SUGGESTED" in sugg.SeriesDescription and "not for diagnosis" in sugg.SeriesDescription
    assert [s.SegmentLabel for s in sugg.SegmentSequence] == ["SUGGESTION liver", "SUGGESTION spleen"]
    assert sugg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert sugg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == LIVER.value
    assert sugg.StudyInstanceUID == ct_study["cts"][0].StudyInstanceUID
    assert sugg.FrameOfReferenceUID == ct_study["cts"][0].FrameOfReferenceUID
    # derived from the same source images; frames name their source image
    refs = {r.ReferencedSOPInstanceUID for s in sugg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == set(ct_study["sources"])
    (path,) = [p for p in ct_study["paths"] if p.name.startswith("SEG_")]
    back = hd.seg.segread(path)
    flagged = [m for m in ct_study["masks"] if m.flagged]
    for m in flagged:
        k = 1 if m.class_name == "liver" else 2
        px = back.get_pixels_by_source_instance([m.image_uid], segment_numbers=[k],
                                                ignore_spatial_locations=True)[0, ..., 0]
        assert np.array_equal(px > 0, m.consensus), m.class_name
    # labelqa's own suggestion is never read as an annotation
    a = read_study([*ct_study["dir"].glob("*.dcm"), path], VOCAB, masks=True)
    assert {m.provenance.annotation_uid for m in a.mask_samples} == {ct_study["seg"].SOPInstanceUID}


def test_overlay_sc_shows_given_consensus_and_disagreement(ct_study):
    scs = _kind(ct_study["datasets"], "SC")
    m = ct_study["masks"][0]
    sc = next(ds for ds in scs if ds.SourceImageSequence[0].ReferencedSOPInstanceUID == m.image_uid)
    assert sc.SeriesNumber == OVERLAY_SERIES_NUMBER and sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB" and "NOT FOR DIAGNOSIS" in sc.SeriesDescription
    px = sc.pixel_array.astype(int)

    def count(rgb, tol=40):
        return int((np.abs(px - np.asarray(rgb)).sum(-1) < tol).sum())

    from dicom_io.results.overlay import CONSENSUS_RGB, GIVEN_RGB

    assert count(GIVEN_RGB, 5) > 100 and count(CONSENSUS_RGB, 5) > 100
    # the missing part (columns 60-89 of rows 30-59) is tinted red: more red than green or blue there
    scale = 256 / 128
    band = 0  # the picture starts at the top; the text band is below it
    r0, r1, c0, c1 = (int(v * scale) for v in (32, 58, 62, 88))
    patch = px[band + r0 : band + r1, c0:c1]
    assert (patch[..., 0] > patch[..., 1] + 60).mean() > 0.9


def test_kos_selects_flagged_images_overlays_and_suggestion(ct_study):
    (kos,) = _kind(ct_study["datasets"], "KO")
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113010"
    sel = {it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for it in kos.ContentSequence
           if it.ValueType in ("IMAGE", "COMPOSITE")}
    flagged = {m.image_uid for m in ct_study["masks"] if m.flagged}
    others = {ds.SOPInstanceUID for ds in ct_study["datasets"] if ds.Modality in ("OT", "SEG")}
    (drawn,) = _kind(ct_study["datasets"], "ROI")
    assert sel == flagged | others | {drawn.SOPInstanceUID}


def test_uids_are_deterministic_and_change_with_the_results(ct_study):
    again = write_results(ct_study["sources"], ct_study["anns"], [], ALGORITHM, masks=ct_study["masks"])
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in ct_study["datasets"]]
    changed = [copy.copy(m) for m in ct_study["masks"]]
    changed[0].consensus = changed[0].consensus.copy()
    changed[0].consensus[0, 0] = True
    other = write_results(ct_study["sources"], ct_study["anns"], [], ALGORITHM, masks=changed)
    assert not {d.SOPInstanceUID for d in other} & {d.SOPInstanceUID for d in ct_study["datasets"]}


def test_bad_mask_records_give_clear_errors(ct_study):
    m = ct_study["masks"][0]
    with pytest.raises(ValueError, match="unknown mask verdict"):
        AuditedMask(**{**m.__dict__, "verdict": "suspected_label_error"})
    with pytest.raises(ValueError, match="unknown mask error kind"):
        AuditedMask(**{**m.__dict__, "kind": "wobbly"})
    with pytest.raises(ValueError, match="differ in shape"):
        AuditedMask(**{**m.__dict__, "consensus": np.zeros((3, 3), bool)})
    with pytest.raises(ValueError, match="was not given"):
        write_results({}, ct_study["anns"], [], ALGORITHM, masks=[m])
    bad = AuditedMask(**{**m.__dict__, "consensus": np.zeros((3, 3), bool), "given": None})
    with pytest.raises(ValueError, match="not on its grid"):
        write_results(ct_study["sources"], ct_study["anns"], [], ALGORITHM, masks=[bad])


@pytest.mark.skipif(not have("dsr2html"), reason="dcmtk dsr2html not installed")
def test_html_report_shows_the_overlays(ct_study, tmp_path):
    from dicom_io.results.report_html import render_html

    (sr,) = [p for p in ct_study["paths"] if p.name.startswith("SR_")]
    text = render_html(sr)
    assert text.count("alt='mask overlay'") == 2
    assert "Suspected segmentation mask error" in text and "missing structure" in text
    assert "region 1: missing structure" in text
    assert "Audited annotations" not in text  # a mask-only report has no (empty) label table


def test_multi_frame_source_flagged_frame_is_named_everywhere(tmp_path):
    cts = _ct_series(3)
    enh = hd.legacy.LegacyConvertedEnhancedCTImage(cts, hd.UID(), 10, hd.UID(), 1)
    shape = (128, 128)
    liver = np.stack([_rect(shape, 30, 30, 60, 60)] * 3)
    seg = _seg([enh], np.stack([liver, np.zeros_like(liver)], -1))
    for i, ds in enumerate([enh, seg]):
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
    a = read_study(tmp_path, VOCAB, masks=True, mask_classes=["liver"])
    s = {m.provenance.frame: m for m in a.mask_samples}
    assert sorted(s) == [1, 2, 3]
    masks = [_audit(s[2], "suspected_mask_error", "boundary_too_tight", _rect(shape, 25, 25, 65, 65), 0.56, 7.1),
             _audit(s[1], "consistent", None, s[1].given_mask, 1.0, 0.0)]
    datasets = write_results({enh.SOPInstanceUID: enh}, {seg.SOPInstanceUID: seg}, [], ALGORITHM, masks=masks)
    paths = save_results(datasets, tmp_path / "out")
    (kos,) = _kind(datasets, "KO")
    img = next(it for it in kos.ContentSequence if it.ValueType == "IMAGE"
               and it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == enh.SOPInstanceUID)
    assert int(img.ReferencedSOPSequence[0].ReferencedFrameNumber) == 2
    (sc,) = _kind(datasets, "SC")
    assert int(sc.SourceImageSequence[0].ReferencedFrameNumber) == 2
    report = read_report(pydicom.dcmread(next(p for p in paths if p.name.startswith("SR_"))))
    assert [(g["frame"], g["segment_number"]) for g in report["masks"]] == [(2, 1), (1, 1)]
    (sugg,) = _kind(datasets, "SEG")
    srcs = {(d.SourceImageSequence[0].ReferencedSOPInstanceUID, int(d.SourceImageSequence[0].ReferencedFrameNumber))
            for fg in sugg.PerFrameFunctionalGroupsSequence for d in fg.DerivationImageSequence}
    assert srcs == {(enh.SOPInstanceUID, 2)}  # only the flagged frame has a consensus pixel
    if have("dciodvfy"):
        for p in paths:
            assert _dciodvfy_errors(p) == [], p.name


@requires_dciodvfy
def _dicomized_mask_study(tmp_path):
    """A dicomized MR study (image + SEG) and one flagged mask on it, its given mask left to be read back."""
    rng = np.random.default_rng(0)
    vocab = Vocabulary.from_class_names(["vessel"])
    mask = _rect((40, 48), 10, 10, 30, 30).astype(np.uint8)
    img = (rng.random((40, 48)) * 255).astype(np.uint8)
    write_studies([StudyItem("a.png", "vessel", "vessel", lambda: img, mask=mask, mask_classes=["vessel"])],
                  tmp_path / "in", vocabulary=vocab, dataset_name="t")
    study = next(p for p in (tmp_path / "in").iterdir() if p.is_dir())
    a = read_study(study, vocab, masks=True)
    (sample,) = a.mask_samples
    shifted = np.roll(sample.given_mask, 6, axis=1)
    m = AuditedMask.from_sample(sample, verdict="suspected_mask_error", kind="shifted", dice=0.7, hd95_mm=6.0,
                                agreement=0.95, priority=2.0, score=0.9, consensus=shifted,
                                regions=_regions(sample.given_mask, shifted), given=None)
    files = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in study.glob("*.dcm")}
    return m, files, shifted


def test_dicomized_study_round_trip_without_given_masks(tmp_path):
    """A dicomized MR study (plane geometry): overlay (given read back from the SEG), suggestion SEG, KOS, drawn SR."""
    m, files, shifted = _dicomized_mask_study(tmp_path)
    datasets = write_results({m.image_uid: files[m.image_uid]}, {m.annotation_uid: files[m.annotation_uid]}, [],
                             ALGORITHM, masks=[m])
    assert [len(_kind(datasets, k)) for k in ("SC", "SEG", "KO", "SR", "ROI")] == [1, 1, 1, 1, 1]
    for p in save_results(datasets, tmp_path / "out"):
        assert _dciodvfy_errors(p) == [], p.name
    (sugg,) = _kind(datasets, "SEG")
    assert "PixelMeasuresSequence" in sugg.SharedFunctionalGroupsSequence[0]  # a viewer can place it
    back = hd.seg.segread(next((tmp_path / "out").glob("SEG_*.dcm")))
    px = back.get_pixels_by_source_instance([m.image_uid], segment_numbers=[1], ignore_spatial_locations=True)
    assert np.array_equal(px[0, ..., 0] > 0, shifted)


def test_no_suggestion_seg_over_an_image_without_plane_geometry(tmp_path):
    """A hospital's SEG over a Secondary Capture without geometry: no suggestion SEG (a viewer could not place
    it); the overlay SC carries the suggestion and the QA report says so."""
    from dicom_io.results.seg_out import NO_GEOMETRY_NOTE
    from dicom_io.results.sr import read_report

    m, files, _ = _dicomized_mask_study(tmp_path)
    image = copy.deepcopy(files[m.image_uid])
    for kw in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        del image[kw]
    datasets = write_results({m.image_uid: image}, {m.annotation_uid: files[m.annotation_uid]}, [], ALGORITHM,
                             masks=[m])
    assert [len(_kind(datasets, k)) for k in ("SC", "SEG", "KO", "SR", "ROI")] == [1, 0, 1, 1, 1]
    (sr,) = _kind(datasets, "SR")
    (item,) = read_report(sr)["masks"]
    assert item["suggestion_uid"] is None
    notes = [it.TextValue for it in _walk(sr) if it.get("ValueType") == "TEXT"
             and it.ConceptNameCodeSequence[0].CodeValue == codes.SUGGESTION_NOT_AS_SEG.value]
    assert notes == [NO_GEOMETRY_NOTE]
    for p in save_results(datasets, tmp_path / "out"):
        assert _dciodvfy_errors(p) == [], p.name


def _walk(ds):
    for it in ds.get("ContentSequence") or []:
        yield it
        yield from _walk(it)


def test_mask_kinds_and_verdicts_match_models_verdict():
    """dicom_io keeps its own copy of the names (no models import there); this keeps the two in step."""
    from dicom_io.results import MASK_ERROR_KINDS, MASK_VERDICTS

    verdict = pytest.importorskip("models.verdict")
    assert set(MASK_VERDICTS) <= {v.value for v in verdict.Verdict}
    if not hasattr(verdict, "MaskErrorKind"):
        pytest.skip("models.verdict.MaskErrorKind not there yet")
    assert set(MASK_ERROR_KINDS) == {k.value for k in verdict.MaskErrorKind}


def test_cannot_judge_findings_are_stated_in_the_summary_and_the_html(ct_study, tmp_path):
    """Each class the models cannot judge is one TEXT item (LQA-0206) of the study summary, read back and shown
    in the HTML report; the SR stays valid, and a report without findings has none."""
    from dicom_io.results.report_html import render_html

    text = "the models cannot judge 'spleen' masks here: median out-of-fold Dice 0.41 (< 0.5); member agreement 0.3"
    masks = [copy.copy(m) for m in ct_study["masks"]]
    for m in masks:
        if m.class_name == "spleen" and m.verdict == "suspected_mask_error":
            m.verdict = "hard_case"  # a class the models cannot judge is never flagged
    datasets = write_results(ct_study["sources"], ct_study["anns"], [], ALGORITHM, masks=masks, cannot_judge=[text])
    (sr,) = _kind(datasets, "SR")
    report = read_report(sr)
    assert report["cannot_judge"] == [text] and report["cohort_findings"] == []
    paths = save_results(datasets, tmp_path / "out")
    (sr_path,) = [p for p in paths if p.name.startswith("SR_")]
    if have("dciodvfy"):
        assert _dciodvfy_errors(sr_path) == []
    html = render_html(sr_path)
    assert "cannot judge &#x27;spleen&#x27; masks here" in html
    assert read_report(_kind(ct_study["datasets"], "SR")[0])["cannot_judge"] == []
