"""Results of a 3-D mask audit, per segment: a CT series with a SEG over it (written with real geometry), an
audited segment whose consensus lies two slices lower, and the objects labelqa writes for it.

One QA report group per segment (on the segment and its series, with volumes, Dice, predicted Dice and the
slice range), one suggestion SEG over the whole series that opens as a volume, overlay SCs on the key slices,
a drawn flag on the worst slice, a KOS selecting the key slices; every object passes dciodvfy.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pydicom
import pytest

from dicom_io.annotations import read_study
from dicom_io.dicomize_volume import write_volume_study
from dicom_io.geometry import Geometry
from dicom_io.results import AlgorithmInfo, AuditedVolumeMask, save_results
from dicom_io.results.write_volume import write_volume_results
from dicom_io.vocabulary import Vocabulary
from tests.conftest import requires_dciodvfy

VOCAB = Vocabulary.from_class_names(["liver", "spleen"])
ALGORITHM = AlgorithmInfo(name="labelqa 3-D test", version="0.1", bundle_hash="sha256:" + "0" * 16,
                          parameters={"members": "unet3d-tiny"})


def _region(kind, z0, z1, y0, y1, x0, x1, spacing):
    voxels = (z1 - z0) * (y1 - y0) * (x1 - x0)
    return {"kind": kind, "voxels": voxels, "volume_mm3": voxels * float(np.prod(spacing)),
            "bbox": (z0, y0, x0, z1, y1, x1), "slices": (z0, z1 - 1), "center_mm": (1.0, 2.0, 3.0)}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vol")
    shape, spacing = (10, 16, 14), (2.5, 0.8, 0.7)
    rng = np.random.default_rng(0)
    image = np.round(rng.normal(40, 200, shape)).clip(-1024, 3000)
    liver = np.zeros(shape, bool)
    liver[2:6, 3:10, 2:9] = True
    spleen = np.zeros(shape, bool)
    spleen[3:7, 10:14, 9:13] = True
    geometry = Geometry.from_components(shape, spacing, (-50.0, 20.0, 100.0), None, "1.2.3.4")
    study = write_volume_study(image, geometry, {"liver": liver, "spleen": spleen}, tmp / "study",
                               dataset_name="t", case_key="vol1", modality="CT", vocabulary=VOCAB, body_part="ABDOMEN")
    a = read_study(tmp / "study", VOCAB, volumes=True)
    vol = a.volumes[study.series_uid]
    given = {m.label: m for m in a.mask_volumes}
    consensus = np.roll(given["liver"].mask, 2, axis=0)  # the models put the liver two slices lower
    diff = (consensus ^ given["liver"].mask).sum(axis=(1, 2))
    key = tuple(int(k) for k in np.argsort(-diff, kind="stable") if diff[k] > 0)
    zs = np.flatnonzero(given["liver"].mask.any(axis=(1, 2)))
    common = dict(study_uid=study.study_uid, annotation_uid=study.seg_uid,
                  annotation_sop_class_uid=pydicom.uid.SegmentationStorage, series_uid=study.series_uid,
                  slice_uids=tuple(vol.slice_uids), slice_frames=tuple(vol.slice_frames),
                  spacing=tuple(vol.spacing), agreement=0.9)
    records = [
        AuditedVolumeMask(**common, class_name="liver", class_code=VOCAB.code_for("liver"),
                          verdict="suspected_mask_error", kind="shifted", dice=0.5, hd95_mm=5.0, priority=0.45,
                          score=0.9, predicted_dice=0.55, given_mm3=float(given["liver"].mask.sum() * np.prod(spacing)),
                          consensus_mm3=float(consensus.sum() * np.prod(spacing)),
                          segment_number=given["liver"].segment_number, key_slices=key,
                          slice_range=(int(zs[0]), int(zs[-1])),
                          regions=[_region("missing_structure", 6, 8, 3, 10, 2, 9, spacing)],
                          consensus=consensus, given=given["liver"].mask),
        AuditedVolumeMask(**common, class_name="spleen", class_code=VOCAB.code_for("spleen"), verdict="consistent",
                          kind=None, dice=0.97, hd95_mm=0.8, priority=0.01, score=0.02, predicted_dice=0.95,
                          segment_number=given["spleen"].segment_number),
    ]
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in study.image_paths)}
    seg = pydicom.dcmread(study.seg_path)
    written = write_volume_results(sources, {study.seg_uid: seg}, records, ALGORITHM, key_slices=3)
    paths = save_results(written, tmp / "results")
    return {"study": study, "records": records, "written": written, "paths": paths, "key": key, "volume": vol}


def _by_prefix(paths, prefix):
    return [p for p in paths if p.name.startswith(prefix + "_")]


def test_one_suggestion_seg_overlays_on_key_slices_a_kos_a_report_and_drawn_flags(audited):
    paths = audited["paths"]
    assert [len(_by_prefix(paths, k)) for k in ("SC", "SEG", "KO", "SR", "ROI")] == [3, 1, 1, 1, 1]
    w = audited["written"]
    assert w.overlays.keys() == {0} and w.suggestions[0][1] == 1 and 1 not in w.suggestions
    kos = pydicom.dcmread(_by_prefix(paths, "KO")[0])
    referenced = {str(i.ReferencedSOPInstanceUID) for s in kos.CurrentRequestedProcedureEvidenceSequence
                  for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    vol = audited["volume"]
    assert {vol.slice_uids[k] for k in audited["key"][:3]} <= referenced
    assert w.suggestions[0][0] in referenced and w.overlays[0] in referenced


def test_the_suggestion_seg_opens_as_a_volume_over_the_series(audited):
    import highdicom as hd

    seg = hd.seg.segread(_by_prefix(audited["paths"], "SEG")[0])
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == audited["study"].series_uid
    from dicom_io.annotations.seg_volume import read_seg_volumes

    (m,), issues = read_seg_volumes(pydicom.dcmread(_by_prefix(audited["paths"], "SEG")[0]), audited["volume"], None)
    assert issues == [] and m.segment_label == "SUGGESTION liver"
    assert np.array_equal(m.mask, audited["records"][0].consensus)  # on the series' own grid


def test_the_report_has_one_group_per_segment_with_volumes_and_slices(audited):
    sr = pydicom.dcmread(_by_prefix(audited["paths"], "SR")[0])
    text = json.dumps(sr.to_json_dict())
    for code in ("LQA-0340", "LQA-0341", "LQA-0342", "LQA-0344", "LQA-0345", "LQA-0406", "LQA-0403"):
        assert code in text, code
    groups = [c for c in sr.ContentSequence if c.ValueType == "CONTAINER"]
    items = [g for c in groups for g in c.get("ContentSequence", []) if g.ValueType == "CONTAINER"]
    tracking = [t.TextValue for g in items for t in g.ContentSequence
                if t.ConceptNameCodeSequence[0].CodeValue == "112039"]
    assert tracking[:2] == ["segment 1", "segment 2"]
    assert "slices 7-8" in text and "mm3" in text  # the region, 1-based slices


@requires_dciodvfy
def test_every_object_passes_dciodvfy(audited):
    for p in audited["paths"]:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == [], p.name


def test_the_same_audit_gives_the_same_uids(audited):
    again = write_volume_results({str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p)
                                  for p in audited["study"].image_paths)},
                                 {audited["study"].seg_uid: pydicom.dcmread(audited["study"].seg_path)},
                                 audited["records"], ALGORITHM, key_slices=3)
    assert [str(d.SOPInstanceUID) for d in again] == [str(d.SOPInstanceUID) for d in audited["written"]]


def test_records_off_the_grid_are_refused():
    with pytest.raises(ValueError, match="slices"):
        AuditedVolumeMask(study_uid="1", annotation_uid="2", annotation_sop_class_uid="3", series_uid="4",
                          class_name="x", verdict="consistent", kind=None, dice=1.0, hd95_mm=0.0, agreement=1.0,
                          priority=0.0, slice_uids=("a", "b"), slice_frames=(None, None), spacing=(1, 1, 1),
                          consensus=np.zeros((3, 4, 4), bool))


def test_cannot_judge_findings_are_stated_in_the_summary(audited):
    """Each class the models cannot judge is one TEXT item (LQA-0206) of the QA report's summary; an audit
    without one states none, and the finding is part of the run's identity (new UIDs)."""
    from dicom_io.results.sr import read_report

    text = "the models cannot judge 'spleen' masks here: median out-of-fold Dice 0.31 (< 0.5); member agreement 0.4"
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in audited["study"].image_paths)}
    seg = {audited["study"].seg_uid: pydicom.dcmread(audited["study"].seg_path)}
    again = write_volume_results(sources, seg, audited["records"], ALGORITHM, key_slices=3, cannot_judge=[text])
    (report,) = [d for d in again if d.Modality == "SR" and str(d.SOPInstanceUID) == again.report_uid]
    assert read_report(report)["cannot_judge"] == [text]
    assert "LQA-0206" in str(report.to_json_dict())
    before = pydicom.dcmread(_by_prefix(audited["paths"], "SR")[0])
    assert read_report(before)["cannot_judge"] == []
    assert again.report_uid != audited["written"].report_uid
