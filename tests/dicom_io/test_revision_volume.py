"""A reviewer's whole-segment correction of a SEG over a series (``Correction`` with ``slices``).

A CT-like series with real geometry and a SEG over it (liver, spleen; apart or overlapping) are written
with ``write_volume_study``; the SEG is then made to look like one from a tool that leaves empty slices out
of its references. Replacing the liver by a mask two slices lower must give a SEG, rebuilt with highdicom
from the series' headers, whose liver is that mask voxel for voxel (on slices the original never
referred to as well), whose spleen is unchanged, and that passes dciodvfy.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest

from dicom_io.annotations import read_study
from dicom_io.annotations.seg_volume import read_seg_volumes
from dicom_io.dicomize_volume import write_volume_study
from dicom_io.geometry import Geometry
from dicom_io.results.revision import (
    MASK_VOLUME_REPLACED_NOTE,
    Correction,
    Reviewer,
    RevisionError,
    corrected_annotation,
)
from dicom_io.vocabulary import Vocabulary
from tests.conftest import have

VOCAB = Vocabulary.from_class_names(["liver", "spleen"])
SHAPE = (8, 24, 20)
REVIEWER = Reviewer("Doe^Jane", "labelqa QA", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture(params=["apart", "overlapping"])
def case(request, tmp_path):
    liver = np.zeros(SHAPE, bool)
    liver[2:5, 4:14, 3:12] = True
    spleen = np.zeros(SHAPE, bool)
    spleen[3:6, 15:21, 13:18] = True
    if request.param == "overlapping":  # a binary SEG's segments may overlap: no label map then
        spleen[3:6, 10:21, 8:18] = True
    image = np.where(liver, 60.0, 0.0) + np.where(spleen, 40.0, 0.0) - 20.0
    head_to_feet = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    geometry = Geometry.from_components(SHAPE, (3.0, 0.9, 0.9), (-10.0, -10.0, 40.0), head_to_feet, "1.2.3.44")
    study = write_volume_study(image, geometry, {"liver": liver, "spleen": spleen}, tmp_path / "study",
                               dataset_name="rev", case_key="v1", modality="CT", vocabulary=VOCAB, body_part="ABDOMEN")
    aset = read_study(tmp_path / "study", VOCAB, volumes=True)
    volume = aset.volumes[study.series_uid]
    seg = pydicom.dcmread(study.seg_path)
    # as some tools write them: the slices without a frame are left out of the references too
    framed = {str(r.ReferencedSOPInstanceUID) for f in seg.PerFrameFunctionalGroupsSequence
              for d in f.DerivationImageSequence for r in d.SourceImageSequence}
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = pydicom.Sequence(
        [r for r in refs if str(r.ReferencedSOPInstanceUID) in framed])
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) < SHAPE[0]
    headers = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                    for p in study.image_paths)}
    numbers = {m.label: m.segment_number for m in aset.mask_volumes}
    slices = tuple(zip(volume.slice_uids, volume.slice_frames, strict=True))
    return {"seg": seg, "volume": volume, "headers": headers, "numbers": numbers, "slices": slices,
            "liver": liver, "spleen": spleen, "tmp": tmp_path}


def _read(ds, volume):
    found, issues = read_seg_volumes(ds, volume, VOCAB)
    assert issues == []
    return {m.label: m.mask for m in found}


def test_a_whole_segment_correction_replaces_it_on_every_slice(case):
    new = np.roll(case["liver"], 2, axis=0)  # slices 4-6: two of them the original SEG never referred to
    fix = Correction(None, None, case["numbers"]["liver"], mask=new, slices=case["slices"])
    out = corrected_annotation(case["seg"], [fix], REVIEWER, key=[1], sources=case["headers"])
    got = _read(out, case["volume"])
    assert np.array_equal(got["liver"], new) and np.array_equal(got["spleen"], case["spleen"])
    assert {str(r.ReferencedSOPInstanceUID) for r in out.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        >= {u for u, _ in case["slices"] if new[case["slices"].index((u, None))].any()}
    notes = {str(s.SegmentLabel): str(s.get("SegmentDescription", "")) for s in out.SegmentSequence}
    assert notes["liver"] == MASK_VOLUME_REPLACED_NOTE and notes["spleen"] != MASK_VOLUME_REPLACED_NOTE
    assert int(out.SeriesNumber) == 9907 and out.SOPInstanceUID != case["seg"].SOPInstanceUID
    # deterministic: the same correction again, the same object; another mask, another UID
    again = corrected_annotation(case["seg"], [fix], REVIEWER, key=[1], sources=case["headers"])
    assert again.SOPInstanceUID == out.SOPInstanceUID
    other = Correction(None, None, case["numbers"]["liver"], mask=np.roll(case["liver"], 1, axis=0),
                       slices=case["slices"])
    assert corrected_annotation(case["seg"], [other], REVIEWER, key=[1],
                                sources=case["headers"]).SOPInstanceUID != out.SOPInstanceUID
    if have("dciodvfy"):
        path = case["tmp"] / "corrected.dcm"
        out.save_as(path, enforce_file_format=True)
        r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []


def test_a_whole_segment_correction_that_does_not_fit_is_refused(case):
    n = case["numbers"]["liver"]
    short = Correction(None, None, n, mask=case["liver"][:-1], slices=case["slices"])
    with pytest.raises(RevisionError, match="one plane for each"):
        corrected_annotation(case["seg"], [short], REVIEWER, key=[1], sources=case["headers"])
    absent = dict(case["headers"])
    gone = next(u for u, _ in case["slices"] if u not in {str(r.ReferencedSOPInstanceUID) for r in
                case["seg"].ReferencedSeriesSequence[0].ReferencedInstanceSequence})
    del absent[gone]
    fix = Correction(None, None, n, mask=case["liver"], slices=case["slices"])
    with pytest.raises(RevisionError, match="not in the store"):
        corrected_annotation(case["seg"], [fix], REVIEWER, key=[1], sources=absent)
    with pytest.raises(RevisionError, match="segment 9"):
        corrected_annotation(case["seg"], [Correction(None, None, 9, mask=case["liver"], slices=case["slices"])],
                             REVIEWER, key=[1], sources=case["headers"])
