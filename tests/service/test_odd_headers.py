"""Odd header values never fail an audit: the results are written with the value normalised or left
out, and an issue record names the attribute and the instance (never the value).

Real files: a demo study (image + TID 1500 SR) whose headers carry what a PACS stores without
complaint and highdicom refuses to copy into the QA report; audited by the pipeline's own job
function with the small demo bundle, as a worker does it.
"""

from __future__ import annotations

import io

import pydicom
import pytest

from dicom_io.db import make_engine
from dicom_io.store import StudyStore
from service.audit import AUDITOR
from service.runtime.jobs import DONE, JobStore
from service.runtime.pipeline import Pipeline
from service.settings import load_settings

pytestmark = pytest.mark.slow

# attribute -> (value as stored, what the QA report carries)
CASES = {
    "StudyDate": [("2024-01-19", "20240119"), ("20241301", "")],
    "StudyTime": [("10:00:00", "100000"), ("256199", "")],
    "PatientBirthDate": [("19xx0101", "")],
    "PatientSex": [("Q", ""), ("m", "M")],
}


@pytest.fixture(scope="module")
def bundle_and_vocabulary(small_demo):
    from models.bundles import load_bundle
    from service.audit import resolve_vocabulary

    bundle = load_bundle(small_demo.bundle)
    return bundle, resolve_vocabulary(bundle, small_demo.bundle, small_demo.data.vocabulary)


@pytest.mark.parametrize("keyword,stored,written", [(k, s, w) for k, vs in CASES.items() for s, w in vs])
def test_odd_header_value_is_audited_with_an_issue_record(small_demo, bundle_and_vocabulary, tmp_path, keyword,
                                                          stored, written):
    bundle, vocabulary = bundle_and_vocabulary
    study = sorted(p for p in small_demo.data.studies_dir.iterdir() if p.is_dir())[0]
    store = StudyStore(tmp_path / "data", stable_after_s=3600)
    uids = []
    try:
        for f in sorted(study.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            tag = pydicom.datadict.tag_for_keyword(keyword)
            ds[tag] = pydicom.DataElement(tag, pydicom.datadict.dictionary_VR(tag), stored)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            store.put(buf.getvalue())
            uids.append(str(ds.SOPInstanceUID))
        settings = load_settings(None, {"store": {"data_dir": tmp_path / "data"}, "audit": {"device": "cpu"}})
        jobs = JobStore(make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}"))
        job = jobs.enqueue(study.name)
        outcome = Pipeline(settings, jobs, auditor=AUDITOR, store=store).audit_job(job, bundle, vocabulary)
    finally:
        store.close()
    assert outcome.state == DONE and outcome.n_samples, outcome.reason
    assert outcome.result is not None
    odd = [i for i in outcome.result["issues"] if i["code"] == "odd_header_value"]
    assert sorted((i["image_uid"] or i["annotation_uid"]) for i in odd) == sorted(uids), "one per instance"
    for i in odd:
        assert i["message"].startswith(f"{keyword} (") and stored not in i["message"].split()
    sr = next(pydicom.dcmread(o["path"]) for o in outcome.result["outputs"] if o["modality"] == "SR")
    assert str(sr.get(keyword, "") or "") == written
