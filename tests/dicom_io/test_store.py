"""The durable study store on its own: durable writes, duplicates, replacements, reconciliation, stability.

Every test that uses the index runs twice: on SQLite and on a real PostgreSQL (``db_url``).
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_io.db import make_engine
from dicom_io.store import (
    MissingUID,
    SOPClassMismatch,
    StudyStable,
    StudyStore,
    UnreadableDataset,
)
from tests.conftest import wait_for

CT = Path(get_testdata_file("CT_small.dcm"))


def ct_copy(study: str | None = None, series: str | None = None, **attrs) -> bytes:
    """CT_small.dcm with a new SOP Instance UID (and the given study/series), as Part 10 bytes."""
    ds = pydicom.dcmread(CT)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    if study:
        ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path, db_url):
    s = StudyStore(tmp_path / "data", db_url, stable_after_s=0.4)
    yield s
    s.close()


def test_make_engine_sqlite_pragmas(tmp_path):
    from sqlalchemy import text

    eng = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.sqlite'}")
    with eng.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    eng.dispose()


def test_put_writes_file_and_index_atomically(store):
    raw = CT.read_bytes()
    res = store.put(raw)
    assert res.status == "stored"
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    expected = store.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert res.path == expected
    assert expected.read_bytes() == raw
    assert store.studies() == [ds.StudyInstanceUID]
    assert store.study_files(ds.StudyInstanceUID) == [expected]
    [rec] = store.instances()
    assert (rec.sop_instance_uid, rec.sop_class_uid, rec.modality) == (ds.SOPInstanceUID, ds.SOPClassUID, "CT")
    assert not list(store.data_dir.rglob("*.tmp"))


def test_identical_resend_is_success_without_duplicate(store):
    raw = CT.read_bytes()
    store.put(raw)
    assert store.put(raw).status == "duplicate"
    assert len(store.instances()) == 1
    assert len(list((store.data_dir / "studies").rglob("*.dcm"))) == 1
    assert store.events("replaced") == []


def test_resend_with_different_bytes_replaces_and_is_recorded(store):
    raw = CT.read_bytes()
    store.put(raw)
    ds = pydicom.dcmread(CT)
    ds.SeriesDescription = "corrected"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    res = store.put(buf.getvalue())
    assert res.status == "replaced"
    assert res.path.read_bytes() == buf.getvalue()
    assert len(store.instances()) == 1
    [ev] = store.events("replaced")
    assert ev["sop_instance_uid"] == ds.SOPInstanceUID
    assert hashlib.sha256(raw).hexdigest() in ev["detail"]


def test_bad_inputs_raise_typed_errors_and_store_nothing(store):
    raw = CT.read_bytes()
    with pytest.raises(UnreadableDataset):
        store.put(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(UnreadableDataset):
        store.put(b"not dicom at all")
    with pytest.raises(MissingUID):
        ds = pydicom.dcmread(CT)
        del ds.StudyInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        store.put(buf.getvalue())
    with pytest.raises(SOPClassMismatch):
        store.put(raw, expected_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")  # MR, but the dataset is CT
    assert store.instances() == []
    assert not list(store.data_dir.rglob("*.dcm"))
    # a request that names another instance UID than the dataset: stored under the dataset's, recorded
    res = store.put(raw, expected_sop_instance_uid="1.2.3.4")
    assert res.status == "stored" and res.sop_instance_uid == pydicom.dcmread(CT).SOPInstanceUID
    assert [e["sop_instance_uid"] for e in store.events("nonconforming")] == [res.sop_instance_uid]


def test_reconcile_cleans_tmp_drops_missing_rows_and_indexes_orphans(tmp_path, db_url):
    data = tmp_path / "data"
    s = StudyStore(data, db_url)
    study = generate_uid()
    kept, gone = s.put(ct_copy(study)), s.put(ct_copy(study))
    s.close()
    # a crash left: a temp file, a row whose file vanished, and a durable file without a row
    (kept.path.parent / f".{kept.path.name}.abc.tmp").write_bytes(b"half written")
    gone.path.unlink()
    orphan_raw = ct_copy(study)
    h = pydicom.dcmread(io.BytesIO(orphan_raw), stop_before_pixels=True)
    orphan = data / "studies" / study / h.SeriesInstanceUID / f"{h.SOPInstanceUID}.dcm"
    orphan.write_bytes(orphan_raw)

    s2 = StudyStore(data, db_url)
    try:
        uids = {r.sop_instance_uid for r in s2.instances()}
        assert uids == {kept.sop_instance_uid, h.SOPInstanceUID}
        assert not list(data.rglob("*.tmp"))
        kinds = [e["kind"] for e in s2.events()]
        assert "reconcile_row_removed" in kinds and "reconcile_file_indexed" in kinds
        assert s2.reconcile().files_indexed == 0  # idempotent
    finally:
        s2.close()


def test_concurrent_puts_nothing_lost_nothing_duplicated(store):
    study = generate_uid()
    raws = [ct_copy(study) for _ in range(60)]
    errors: list[BaseException] = []

    def worker(chunk):
        try:
            for r in chunk:
                store.put(r)
                store.put(r)  # immediate identical re-send from a "retrying" peer
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(raws[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.instances(study)) == 60
    assert len(list(store.study_dir(study).rglob("*.dcm"))) == 60


def test_stability_two_bursts_one_event_and_late_instance_reopens(tmp_path, db_url):
    # a quiet period 5x the pause between the bursts (plus the puts' fsyncs): a stalled machine does not
    # split the study; the events themselves are waited for, not slept for
    store = StudyStore(tmp_path / "data", db_url, stable_after_s=1.0)
    got: list[StudyStable] = []
    store.subscribe(got.append)
    store.start()
    try:
        study = generate_uid()
        for _ in range(3):
            store.put(ct_copy(study))
        time.sleep(0.2)  # a pause shorter than the quiet period
        for _ in range(2):
            store.put(ct_copy(study))
        wait_for(lambda: got, 120, "the stable event")
        assert store.wait_idle(5)
        assert [(e.study_uid, len(e.instances), e.reopened) for e in got] == [(study, 5, False)]
        assert all(r.path.is_file() for r in got[0].instances)
        store.put(ct_copy(study))  # late instance
        wait_for(lambda: len(got) > 1, 120, "the second stable event")
        assert store.wait_idle(5)
        assert [(len(e.instances), e.reopened) for e in got] == [(5, False), (6, True)]
    finally:
        store.close()


def test_restart_re_emits_studies_never_emitted(tmp_path, db_url):
    data = tmp_path / "data"
    s = StudyStore(data, db_url, stable_after_s=30)  # stops long before the study becomes stable
    study = generate_uid()
    s.put(ct_copy(study))
    s.close()
    s2 = StudyStore(data, db_url, stable_after_s=0.3)
    got: list[StudyStable] = []
    s2.subscribe(got.append)
    s2.start()
    try:
        wait_for(lambda: got, 120, "the re-emitted stable event")
        assert s2.wait_idle(5)
        assert [(e.study_uid, len(e.instances)) for e in got] == [(study, 1)]
    finally:
        s2.close()
    s3 = StudyStore(data, db_url, stable_after_s=0.3)  # already emitted: nothing again
    got3: list[StudyStable] = []
    s3.subscribe(got3.append)
    s3.start()
    try:
        time.sleep(0.6)
        assert got3 == []
    finally:
        s3.close()


def test_failing_subscriber_does_not_stop_others(store):
    got: list[str] = []
    bad_calls: list[str] = []

    def bad(e):
        bad_calls.append(e.study_uid)
        raise RuntimeError("boom")

    store.subscribe(bad)
    store.subscribe(lambda e: got.append(e.study_uid))
    store.retry_base_s = 0.2
    store.start()
    study = generate_uid()
    store.put(ct_copy(study))
    wait_for(lambda: len(bad_calls) >= 3, 120, "several retries of the failing subscriber")
    assert got == [study]  # the healthy subscriber got it once, retries go only to the failing one
    assert study not in store.stable_studies()  # not complete until every subscriber took it
    assert store.last_error and "boom" in store.last_error


def test_header_read_decodes_character_sets_like_pydicom():
    from pydicom.data import get_charset_files

    from dicom_io.store import read_header

    for name in ("chrH31.dcm", "chrRuss.dcm", "chrGerm.dcm", "chrI2.dcm"):
        path = Path(get_charset_files(name)[0])
        h = read_header(path.read_bytes())
        ds = pydicom.dcmread(path)
        assert h.patient_name == str(ds.PatientName), name
        assert (h.study_uid, h.sop_instance_uid) == (ds.StudyInstanceUID, ds.SOPInstanceUID)


def test_reconcile_rolls_complete_temp_files_forward_and_drops_partial_ones(tmp_path, db_url):
    data = tmp_path / "data"
    s = StudyStore(data, db_url, fsync_directory=False)
    study = generate_uid()
    first = s.put(ct_copy(study))
    s.close()
    # a power cut after fsync(temp) but before the rename reached the disk: the temp file is complete
    raw = ct_copy(study, series=str(pydicom.dcmread(first.path, stop_before_pixels=True).SeriesInstanceUID))
    h = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    digest = hashlib.sha256(raw).hexdigest()
    complete = first.path.parent / f".{h.SOPInstanceUID}.dcm.{len(raw)}.{digest[:32]}.0a1b2c3d.tmp"
    complete.write_bytes(raw)
    partial_raw = ct_copy(study)
    partial = first.path.parent / f".{generate_uid()}.dcm.{len(partial_raw)}.{'0' * 32}.0a1b2c3d.tmp"
    partial.write_bytes(partial_raw[: len(partial_raw) // 2])
    s2 = StudyStore(data, db_url)
    try:
        assert {r.sop_instance_uid for r in s2.instances()} == {first.sop_instance_uid, h.SOPInstanceUID}
        recovered = first.path.parent / f"{h.SOPInstanceUID}.dcm"
        assert recovered.read_bytes() == raw
        assert not list(data.rglob("*.tmp"))
    finally:
        s2.close()
