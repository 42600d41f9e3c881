"""The listener at the DICOM edge: what a PACS accepts is stored, every request is answered at once.

Each case is produced for real: retired and non-conforming files, a C-STORE request whose command
lacks its Affected SOP Instance UID (sent as raw DIMSE by pynetdicom), a real deflated instance that
inflates beyond the cap, 5000 nested sequences, a real TCP socket that never sends a TLS hello.
"""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom_io.scp import storage_sop_classes
from dicom_io.settings import ListenerSettings
from tests.conftest import SHARED_DATA, have
from tests.dicom_io.test_listener import _send_files_raw, echoscu, storescu

pytestmark = [pytest.mark.dcmtk, pytest.mark.skipif(not have("storescu"), reason="dcmtk not installed")]

CT = Path(get_testdata_file("CT_small.dcm"))
RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"


def _ct(tmp: Path, name: str, **attrs) -> Path:
    ds = pydicom.dcmread(CT)
    uid = attrs.pop("SOPInstanceUID", generate_uid())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    for k, v in attrs.items():
        setattr(ds, k, v)
        if k == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = v
    p = tmp / name
    ds.save_as(p, enforce_file_format=True)
    return p


def test_retired_and_trial_storage_classes_are_accepted():
    classes = set(storage_sop_classes())
    assert RETIRED_US in classes  # Ultrasound Image Storage (Retired)
    assert "1.2.840.10008.5.1.4.1.1.88.1" in classes  # Text SR Storage - Trial (Retired)
    assert "1.2.840.10008.1.20.1" not in classes  # Storage Commitment Push Model is not a storage class


def test_retired_class_and_nonconforming_uid_are_stored_and_recorded(listener_factory, tmp_path):
    lst, store = listener_factory()
    retired = _ct(tmp_path, "us.dcm", SOPClassUID=RETIRED_US, Modality="US")
    bad_uid = "1.2.840.ABC.007."  # letters, a leading zero, a trailing dot: not a UID string, still indexable
    nonconforming = _ct(tmp_path, "bad-uid.dcm", SOPInstanceUID=bad_uid)
    assert storescu(lst.port, [retired], "-R").returncode == 0  # -R: propose the class the file needs
    assert _send_files_raw(lst.port, [nonconforming]) == [0x0000]
    stored = {r.sop_instance_uid: r for r in store.instances()}
    assert set(stored) == {pydicom.dcmread(retired).SOPInstanceUID, bad_uid}
    path = store.data_dir / stored[bad_uid].path
    assert path.is_file() and bad_uid not in str(path)  # never a raw non-UID string as a file name
    events = store.events("nonconforming")
    assert [e["sop_instance_uid"] for e in events] == [bad_uid]
    assert "SOPInstanceUID is not a valid UID string" in events[0]["detail"]
    # an instance UID that cannot be indexed at all (a space, too long) is still refused with 0xC001
    unindexable = _ct(tmp_path, "unindexable.dcm", SOPInstanceUID="1.2 3")
    assert _send_files_raw(lst.port, [unindexable]) == [0xC001]


def _raw_c_store(port: int, ds: Dataset, instance_uid: str, timeout: float = 10.0):
    """Send a C-STORE request with the given Affected SOP Instance UID in its command (raw DIMSE)."""
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE("PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.dimse_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="LABELQA")
    assert assoc.is_established
    req = C_STORE()
    req.MessageID, req.Priority = 7, 2
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = instance_uid
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    req.DataSet = io.BytesIO(buf.getvalue())
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID)
    # pause the requestor's reactor as pynetdicom's own send_* methods do, so it leaves the answer to us
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        start = time.monotonic()
        assoc.dimse.send_msg(req, cx.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
        elapsed = time.monotonic() - start
    finally:
        assoc._reactor_checkpoint.set()
    return assoc, rsp, elapsed


def test_c_store_request_without_affected_sop_instance_uid_is_answered_at_once(listener_factory):
    lst, store = listener_factory()
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = generate_uid()
    assoc, rsp, elapsed = _raw_c_store(lst.port, ds, "", timeout=20)
    try:
        assert rsp is not None, "no answer: the peer would wait for its DIMSE timeout"
        assert elapsed < 5
        assert int(rsp.Status) == 0xC001
        assert int(rsp.MessageIDBeingRespondedTo) == 7
        assert assoc.send_c_echo().Status == 0  # the association still serves
    finally:
        assoc.release()
    assert store.instances() == []
    assert echoscu(lst.port).returncode == 0


def _deflated_file(path: Path, payload_mb: int) -> Path:
    """A real Deflated Explicit VR Little Endian instance whose dataset holds ``payload_mb`` of zeros."""
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    ds.SOPInstanceUID = generate_uid()
    ds.add_new(0x00091010, "LO", "LABELQA TEST")  # private creator
    ds.add_new(0x00091011, "OB", b"\x00" * (payload_mb * 2**20))
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = comp.compress(body.getvalue()) + comp.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    out.write(deflated)
    path.write_bytes(out.getvalue())
    return path


def test_deflate_bomb_is_refused_before_it_is_inflated(tmp_path):
    from dicom_io.scp import Listener
    from dicom_io.store import StudyStore
    from service.demo.peers import free_port

    store = StudyStore(tmp_path / "data", max_inflated_mb=8)
    lst = Listener(ListenerSettings(port=free_port(), min_free_disk_mb=0), store)
    store.start()
    lst.start()
    try:
        bomb = _deflated_file(tmp_path / "bomb.dcm", payload_mb=64)
        small = _deflated_file(tmp_path / "small.dcm", payload_mb=1)
        assert bomb.stat().st_size < 2**20  # 64 MiB of dataset in well under 1 MiB on the wire
        assert _send_files_raw(lst.port, [bomb, small]) == [0xA700, 0x0000]
        assert [r.sop_instance_uid for r in store.instances()] == [pydicom.dcmread(small).SOPInstanceUID]
    finally:
        lst.stop(grace_s=1)
        store.close()


def test_deeply_nested_sequences_are_refused_cleanly(listener_factory, tmp_path):
    lst, store = listener_factory()
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(300):  # undefined lengths, as dcmtk writes them: the walker must descend (cap: 64)
        inner.is_undefined_length_sequence_item = True
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        outer["ContentSequence"].is_undefined_length = True
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    ds["ContentSequence"].is_undefined_length = True
    p = tmp_path / "nested.dcm"
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # pydicom itself needs it to write the file
    try:
        ds.save_as(p, enforce_file_format=True)
    finally:
        sys.setrecursionlimit(old)
    assert _send_files_raw(lst.port, [p]) == [0xC000]
    assert store.instances() == []
    assert echoscu(lst.port).returncode == 0


@pytest.mark.skipif(not have("openssl"), reason="openssl not installed")
@pytest.mark.slow
def test_idle_tcp_socket_does_not_block_tls_associations(listener_factory, tmp_path):
    from pynetdicom import AE

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    lst, _ = listener_factory(tls_cert=cert, tls_key=key, tls_handshake_timeout_s=10)
    # connected (the kernel's accept queue is first in, first out: the listener takes it first), never says hello
    idle = socket.create_connection(("127.0.0.1", lst.port))
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.check_hostname = False
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = 30
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LABELQA", tls_args=(client, None))
        assert assoc.is_established, "a TLS peer was blocked by an idle socket"
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        # served while the idle socket still waits for its handshake: an order, not a stopwatch
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):
            idle.recv(1)  # still open (closed would read b"")
        # the idle socket itself is closed by the listener after its handshake timeout
        idle.settimeout(60)
        assert idle.recv(1) == b""
    finally:
        idle.close()


def test_exposed_listener_without_allow_lists_warns(listener_factory, caplog):
    assert not ListenerSettings().exposed
    assert ListenerSettings(host="0.0.0.0").exposed
    assert not ListenerSettings(host="::1").exposed
    from dicom_io.scp import exposure_warning

    assert exposure_warning(ListenerSettings(host="0.0.0.0")) is not None
    assert exposure_warning(ListenerSettings(host="0.0.0.0", allowed_calling_aes=["PACS"])) is None
    assert exposure_warning(ListenerSettings()) is None


def _shared_dicom_files() -> list[Path]:
    root = SHARED_DATA / "dicom"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with p.open("rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    out.append(p)
    return out


@pytest.mark.slow
def test_every_real_shared_file_is_stored(listener_factory):
    files = _shared_dicom_files()
    if not files:
        pytest.skip("../shared/data/dicom not present")
    lst, store = listener_factory()
    by_ts: dict[str, list[Path]] = {}
    for f in files:
        by_ts.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID), []).append(f)
    statuses: dict[Path, int] = {}
    for group in by_ts.values():
        for i in range(0, len(group), 100):
            chunk = group[i : i + 100]
            statuses.update(zip(chunk, _send_files_raw(lst.port, chunk), strict=True))
    def indexable(f: Path) -> bool:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        return all(ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))

    # refused only what cannot be indexed at all (HTJ2KLossless_08_RGB.dcm has no Study/Series UID)
    refused = {f.name: hex(s) for f, s in statuses.items() if s != 0}
    assert refused == {f.name: "0xc001" for f in files if not indexable(f)}
    assert len(refused) <= 1
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files if indexable(f)}
    assert uids <= {r.sop_instance_uid for r in store.instances()}
    # the slide-microscopy files whose file meta names another instance UID are stored under their own
    assert any("differs from the dataset's" in (e["detail"] or "") for e in store.events("nonconforming"))


def _bomb(path: Path, inflated_mib: int) -> Path:
    """A real Deflated Explicit VR Little Endian instance of about 1 MB inflating to ``inflated_mib`` MiB.

    The CT header (UIDs first, as a real file) and then a private OB element of zeros, deflated as a
    stream so that the test never holds the inflated bytes itself.
    """
    if path.exists():
        return path
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    ds.SOPInstanceUID = generate_uid()
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    payload = inflated_mib * 2**20 - len(head.getvalue()) - 36
    creator = b"LABELQA TEST"
    tail = (b"\xe1\x7f\x10\x00LO" + len(creator).to_bytes(2, "little") + creator
            + b"\xe1\x7f\x00\x10OB\x00\x00" + payload.to_bytes(4, "little"))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(head.getvalue() + tail)]
    zeros = b"\x00" * 2**24
    left = payload
    while left:
        n = min(left, len(zeros))
        parts.append(comp.compress(zeros[:n]))
        left -= n
    parts.append(comp.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path.write_bytes(out.getvalue() + b"".join(parts))
    return path


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM in /proc/<pid>/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
@pytest.mark.parametrize("at_once", [1, 3])
def test_deflate_bomb_leaves_the_listener_memory_flat(tmp_path_factory, at_once):
    """With the default settings, 1 MB bombs inflating to 1000 MiB each (one, or three on three
    associations at once) raise the peak RSS of a real ``labelqa serve`` by less than 100 MB; each is
    refused with 0xA700, and a small deflated instance sent afterwards is stored."""
    import threading

    from tests.dicom_io.test_listener import Serve

    cache = tmp_path_factory.getbasetemp() / "bombs"
    cache.mkdir(exist_ok=True)
    bombs = [_bomb(cache / f"bomb{i}.dcm", 1000) for i in range(at_once)]
    assert all(b.stat().st_size < 1.1e6 for b in bombs)
    work = tmp_path_factory.mktemp("serve")
    srv = Serve(work).start()
    try:
        assert srv.proc is not None
        warm = _deflated_file(work / "warm.dcm", payload_mb=1)  # the code paths of a deflated store, warmed
        assert _send_files_raw(srv.port, [warm]) == [0x0000]
        before = _peak_rss_mb(srv.proc.pid)
        statuses: list[list[int]] = [[] for _ in bombs]

        def send(i: int) -> None:
            statuses[i] = _send_files_raw(srv.port, [bombs[i]], aet=f"SENDER{i + 1}")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bombs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        after = _peak_rss_mb(srv.proc.pid)
        small = _deflated_file(work / "small.dcm", payload_mb=1)
        assert _send_files_raw(srv.port, [small]) == [0x0000]
        assert after - before < 100, f"peak RSS {before:.0f} MB -> {after:.0f} MB"
        assert statuses == [[0xA700]] * len(bombs)
        assert "reason=too_large" in srv.log()
        assert set(srv.rows()) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in (warm, small)}
    finally:
        srv.stop()
        srv.close()


def _nested_defined_length(depth: int) -> bytes:
    """Content Sequence elements nested ``depth`` deep, every sequence and item with a defined length
    (explicit VR little endian; built by hand: pydicom takes minutes to write thousands of levels)."""
    body = b"\x08\x00\x00\x01SH\x02\x001 "  # (0008,0100) Code Value "1"
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body
        body = b"\x40\x00\x30\xa7SQ\x00\x00" + len(item).to_bytes(4, "little") + item
    return body


def test_deeply_nested_defined_length_sequences_are_refused_cleanly(listener_factory, tmp_path):
    """5000 sequences nested with defined lengths (pydicom's default): refused like undefined ones;
    20 levels (real SRs nest a few) are stored."""
    lst, store = listener_factory()
    files = []
    for depth in (5000, 20):
        ds = pydicom.dcmread(CT, stop_before_pixels=True)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        p = tmp_path / f"nested{depth}.dcm"
        ds.save_as(p, enforce_file_format=True)
        p.write_bytes(p.read_bytes() + _nested_defined_length(depth))  # the last element, as tags go
        files.append(p)
    assert len(pydicom.dcmread(files[1]).ContentSequence[0].ContentSequence) == 1
    assert _send_files_raw(lst.port, files) == [0xC000, 0x0000]
    assert [r.sop_instance_uid for r in store.instances()] == [str(pydicom.dcmread(files[1]).SOPInstanceUID)]
    assert echoscu(lst.port).returncode == 0


def test_deflated_header_is_read_while_inflating_and_the_budget_is_shared(tmp_path):
    """The identifying values behind a 3 MiB element (many inflate steps) are read as pydicom reads
    them; a truncated stream is unreadable; walks that find the process-wide budget used up are refused."""
    from dicom_io.part10 import INFLATE_CHUNK, InflateBudget, TooLarge, UnreadableDataset, read_header

    f = _deflated_file(tmp_path / "d.dcm", payload_mb=3)
    raw = f.read_bytes()
    ds = pydicom.dcmread(f)
    h = read_header(raw)
    assert 3 * 2**20 > 10 * INFLATE_CHUNK
    assert (h.sop_instance_uid, h.study_uid, h.series_uid) == (ds.SOPInstanceUID, ds.StudyInstanceUID,
                                                               ds.SeriesInstanceUID)
    assert (h.patient_name, h.study_date, h.modality) == (str(ds.PatientName), ds.StudyDate, ds.Modality)
    with pytest.raises(UnreadableDataset):
        read_header(raw[:-2000])
    with pytest.raises(TooLarge, match="max_inflated_mb"):
        read_header(raw, max_inflated_bytes=2**20)
    budget = InflateBudget(3 * INFLATE_CHUNK, wait_s=0.2)
    budget.acquire(2 * INFLATE_CHUNK)  # another association inflating
    with pytest.raises(TooLarge, match="inflate_budget_mb"):
        read_header(raw, budget=budget)
    budget.release(2 * INFLATE_CHUNK)
    assert read_header(raw, budget=budget).sop_instance_uid == h.sop_instance_uid
    assert budget.in_use == 0
