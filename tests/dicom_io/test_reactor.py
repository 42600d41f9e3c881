"""The listener's fast path: the Part 10 bytes it writes, and its event-driven association loops."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_io import reactor
from dicom_io.part10 import part10_bytes, read_header

CT = Path(get_testdata_file("CT_small.dcm"))


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "ts"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2"),  # even and odd UI lengths
        ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.33", "1.2.840.10008.1.2.1.99"),
        ("1.2.840.10008.5.1.4.1.1.88.34", generate_uid(), "1.2.840.10008.1.2.4.90"),
        ("1." + "2" * 61, "9" * 64, "1.2.840.10008.1.2.2"),  # 63 and 64 characters
    ],
)
def test_part10_bytes_are_pynetdicoms_file_meta_byte_for_byte(sop_class, sop_instance, ts):
    dataset = CT.read_bytes()[512:]  # any byte string: it is appended as is
    want = b"\x00" * 128 + b"DICM" + encode_file_meta(
        create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=ts)
    ) + dataset
    got = part10_bytes(
        dataset,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=ts,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    assert got == want
    meta = pydicom.dcmread(io.BytesIO(got[: len(got) - len(dataset)])).file_meta
    assert str(meta.TransferSyntaxUID) == ts and str(meta.MediaStorageSOPInstanceUID) == sop_instance


def test_attach_refuses_an_object_of_another_shape():
    class NotAnAssociation:
        dul = object()

    assert reactor.attach(NotAnAssociation()) is False


def _ct(uid: str, study: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = study
    return ds


@pytest.mark.slow
def test_event_driven_associations_store_release_and_abort(listener_factory):
    """Many C-STOREs on one association, several associations at once, a release and an abort:
    every instance is stored with the bytes sent, each association ends, the listener keeps serving."""
    lst, store = listener_factory()
    study = generate_uid()
    sent: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def sender(k: int, n: int, abort: bool) -> None:
        ae = AE(ae_title=f"SENDER{k}")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LABELQA")
        if not assoc.is_established:
            errors.append(f"sender {k}: not established")
            return
        for i in range(n):
            uid = generate_uid()
            ds = _ct(uid, study)
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                errors.append(f"sender {k} instance {i}: status {status}")
            with lock:
                sent[uid] = ds.PixelData
        if abort:
            assoc.abort()
        else:
            assoc.release()
        if assoc.is_established:
            errors.append(f"sender {k}: association still open")

    threads = [threading.Thread(target=sender, args=(k, 15, k == 2)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    records = {r.sop_instance_uid: r for r in store.instances(study)}
    assert set(records) == set(sent)
    for uid, pixels in sent.items():
        stored = records[uid].path.read_bytes()
        assert read_header(stored).sop_instance_uid == uid
        assert pydicom.dcmread(records[uid].path).PixelData == pixels
    # still serving after the abort
    sender(9, 1, False)
    assert not errors and len(store.instances(study)) == len(sent)
