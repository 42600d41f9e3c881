"""A study is complete when its sender says so, without waiting for the quiet period.

The quiet period is an hour in every test here: a stable event can only come from the signal. Real
peers: the listener with dcmtk ``storescu`` (a whole-study router's association release), pynetdicom
as the MPPS SCU, the HTTP API (``POST /studies/{uid}/complete``). Each event is awaited where the
signal makes it (a queue fed by the store's subscriber), never by sleeping.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.store import StudyStable
from tests.conftest import requires_dcmtk
from tests.dicom_io.test_listener import make_ct_series, storescu

HOUR = 3600.0


@pytest.fixture
def events():
    return queue.Queue()


def _listen(listener_factory, events: queue.Queue, **cfg):
    lst, store = listener_factory(stable_after_s=HOUR, min_free_disk_mb=0, **cfg)
    store.subscribe(events.put)
    return lst, store


def _next(events: queue.Queue, timeout: float = 60) -> StudyStable:
    return events.get(timeout=timeout)


@requires_dcmtk
def test_release_of_a_whole_study_routers_association_completes_its_studies(listener_factory, events, tmp_path):
    lst, store = _listen(listener_factory, events, whole_study_aes=["ROUTER"])
    other = make_ct_series(tmp_path / "other", 2)  # from an ordinary sender first: its release says nothing
    assert storescu(lst.port, other, aet="STORESCU").returncode == 0
    study = make_ct_series(tmp_path / "routed", 3)
    assert storescu(lst.port, study, aet="ROUTER").returncode == 0
    ev = _next(events)
    assert ev.study_uid == str(pydicom.dcmread(study[0]).StudyInstanceUID) and len(ev.instances) == 3
    assert events.empty()


def _mpps(port: int, requests: list[tuple[str, str, Dataset]]) -> list[int]:
    """Send (N-CREATE|N-SET, MPPS instance UID, dataset) with pynetdicom; the statuses."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="LABELQA")
    assert assoc.is_established
    out = []
    try:
        for kind, uid, ds in requests:
            if kind == "create":
                status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
            else:
                status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
            out.append(int(status.Status))
    finally:
        assoc.release()
    return out


def _described(text: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepDescription = text
    return ds


def _step(study: str, images: list[Path], status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    sched = Dataset()
    sched.StudyInstanceUID = study
    ds.ScheduledStepAttributesSequence = [sched]
    if not images:
        return ds
    series = Dataset()
    series.SeriesInstanceUID = str(pydicom.dcmread(images[0]).SeriesInstanceUID)
    refs = []
    for p in images:
        r = Dataset()
        h = pydicom.dcmread(p, stop_before_pixels=True)
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
        refs.append(r)
    series.ReferencedImageSequence = refs
    ds.PerformedSeriesSequence = [series]
    return ds


@requires_dcmtk
def test_mpps_completed_completes_the_study_once_its_instances_are_stored(listener_factory, events, tmp_path):
    """N-CREATE (IN PROGRESS), two of three images stored, N-SET COMPLETED naming all three: the study
    completes when the third arrives, with all three (not before, with two)."""
    lst, store = _listen(listener_factory, events)
    images = make_ct_series(tmp_path / "s", 3)
    study = str(pydicom.dcmread(images[0]).StudyInstanceUID)
    mpps = generate_uid()
    assert _mpps(lst.port, [("create", mpps, _step(study, [], "IN PROGRESS"))]) == [0x0000]
    assert storescu(lst.port, images[:2]).returncode == 0
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedSeriesSequence = _step(study, images, "COMPLETED").PerformedSeriesSequence
    assert _mpps(lst.port, [("set", mpps, done)]) == [0x0000]
    assert storescu(lst.port, images[2:]).returncode == 0
    ev = _next(events)
    assert ev.study_uid == study and len(ev.instances) == 3
    # the step is final now; a duplicate step and a step nobody knows are refused with their statuses
    assert _mpps(lst.port, [("set", mpps, done), ("create", mpps, _step(study, [], "IN PROGRESS")),
                            ("set", generate_uid(), _described("nothing to go by"))]) == [0x0110, 0x0111, 0x0112]


@requires_dcmtk
def test_mpps_completed_after_the_images_completes_at_once(listener_factory, events, tmp_path):
    lst, _ = _listen(listener_factory, events)
    images = make_ct_series(tmp_path / "s", 2)
    study = str(pydicom.dcmread(images[0]).StudyInstanceUID)
    assert storescu(lst.port, images).returncode == 0
    assert _mpps(lst.port, [("create", generate_uid(), _step(study, images, "COMPLETED"))]) == [0x0000]
    ev = _next(events)
    assert ev.study_uid == study and len(ev.instances) == 2


@requires_dcmtk
def test_rest_complete_audits_without_the_quiet_period(listener_factory, events, tmp_path):
    from harness.http import api_client
    from service.http import HttpContext
    from service.runtime.jobs import JobStore

    lst, store = _listen(listener_factory, events)
    images = make_ct_series(tmp_path / "s", 2)
    study = str(pydicom.dcmread(images[0]).StudyInstanceUID)
    assert storescu(lst.port, images).returncode == 0
    c = api_client(HttpContext(jobs=JobStore(store.engine), store=store))
    r = c.post(f"/studies/{study}/complete")
    assert r.status_code == 202 and r.json()["state"] == "completing", r.text
    ev = _next(events)
    assert ev.study_uid == study and len(ev.instances) == 2
    assert c.post(f"/studies/{study}/complete").json()["state"] == "complete"  # nothing new since
    assert c.post("/studies/1.2.3.4/complete").status_code == 404
    assert c.post("/studies/not-a-uid/complete").status_code == 422
