"""Results on real third-party DICOM (shared data): dcmqi's CT slices and liver SEG, read by the annotations reader."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from dicom_io.results import AuditedAnnotation, save_results, write_results
from harness.studies import ALGORITHM, heatmap_blob
from tests.conftest import SHARED_DATA, requires_dciodvfy, requires_dcmtk, requires_shared_data

CT_DIR = SHARED_DATA / "dicom" / "dcmqi_data" / "data" / "segmentations" / "ct-3slice"
SEG = SHARED_DATA / "dicom" / "generated_here" / "liver_dcmqi_made.dcm"


@requires_shared_data
@requires_dciodvfy
@requires_dcmtk
def test_real_ct_and_dcmqi_seg_give_valid_results_that_read_back(tmp_path):
    from dicom_io.annotations import read_study
    from dicom_io.results.sr import read_report

    if not (CT_DIR.is_dir() and SEG.is_file()):
        pytest.skip("dcmqi example files not in the shared data")
    files = [*sorted(CT_DIR.glob("*.dcm")), SEG]
    aset = read_study(files, None, image_size=64)
    assert len(aset.samples) == 3
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    verdicts = ["suspected_label_error", "hard_case", "consistent"]
    audited = []
    for s, verdict in zip(aset.samples, verdicts, strict=True):
        pv = s.provenance
        audited.append(AuditedAnnotation(
            study_uid=pv.study_uid, annotation_uid=pv.annotation_uid,
            annotation_sop_class_uid=pv.annotation_sop_class_uid,
            source=pv.source, image_uid=pv.image_uid, frame=pv.frame, segment_number=pv.segment_number,
            content_path=pv.content_path, given_label=s.label, consensus_label="background", verdict=verdict,
            agreement=0.6, p_given=0.2, priority=1.0, n_disagree=3, n_members=3, heatmap=heatmap_blob(8, 8, 3, 3),
        ))
    needed = {a.image_uid for a in audited} | {a.annotation_uid for a in audited}
    loaded = {u: pydicom.dcmread(by_uid[u]) for u in needed}
    datasets = write_results({a.image_uid: loaded[a.image_uid] for a in audited},
                             {a.annotation_uid: loaded[a.annotation_uid] for a in audited}, audited, ALGORITHM,
                             heatmaps_for_hard_cases=True)
    paths = save_results(datasets, tmp_path)
    assert sorted(ds.Modality for ds in datasets) == ["KO", "OT", "OT", "SR", "SR"]  # QA report, flags drawn
    assert sorted(p.name.split("_")[0] for p in paths if p.name.startswith(("SR_", "ROI_"))) == ["ROI", "SR"]
    for p in paths:
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == [], p.name
    sr = next(p for p in paths if p.name.startswith("SR_"))
    for p in (sr, next(p for p in paths if p.name.startswith("ROI_"))):
        r = subprocess.run(["dsrdump", "-v", str(p)], capture_output=True, text=True)
        assert not [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("E:")]
    items = read_report(pydicom.dcmread(sr))["items"]
    assert [(it["annotation_uid"], it["segment_number"], it["source_image_uid"], it["verdict"]) for it in items] == [
        (a.annotation_uid, a.segment_number, a.image_uid, a.verdict) for a in audited]
    sc = next(ds for ds in datasets if ds.Modality == "OT")
    assert sc.PatientID == loaded[audited[0].image_uid].PatientID
    assert np.asarray(sc.pixel_array).shape[2] == 3

