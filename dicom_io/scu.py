"""C-STORE SCU: send DICOM files to a peer over one association per batch.

The association proposes exactly the SOP classes of the files sent, each with exactly the transfer
syntax the file is encoded in (one presentation context per pair, Comprehensive 3D SR included), so
the peer never has to convert and never sees an unexpected context. Files are sent as their raw
bytes (pynetdicom's chunked path mode): what the peer receives is byte-equal to what we wrote.
TCP_NODELAY is set on the socket (pynetdicom never does; without it each C-STORE stalls ~40 ms).
Statuses 0x0000 and the warnings 0xB000, 0xB006, 0xB007 count as delivered.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DELIVERED_STATUSES", "MAX_CONTEXTS", "AssociationError", "FileInfo", "StoreOutcome", "file_info",
    "presentation_contexts", "tls_context", "store_files",
]

log = logging.getLogger(__name__)

DELIVERED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""C-STORE statuses that mean the peer has the instance (success, and the three storage warnings)."""

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class AssociationError(ConnectionError):
    """The peer could not be reached, rejected or aborted the association: nothing in the batch was stored."""


@dataclass(frozen=True)
class FileInfo:
    """What the SCU needs to know about a file: its SOP class, instance and transfer syntax."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoreOutcome:
    """The peer's answer for one file: delivered or not, the status (None when none came), why not."""

    sop_instance_uid: str
    delivered: bool
    status: int | None
    error: str | None = None


def file_info(path: Path) -> FileInfo:
    """Read a DICOM file's meta information; ValueError with the reason when it is not a usable Part 10 file."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except (InvalidDicomError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable DICOM file ({e})") from e
    meta = ds.file_meta
    try:
        return FileInfo(
            Path(path),
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except AttributeError as e:
        raise ValueError(f"{path}: DICOM file without complete file meta information ({e})") from e


def presentation_contexts(files: Sequence[FileInfo]) -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) pairs to propose: exactly those of the files, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for f in files:
        seen.setdefault((f.sop_class_uid, f.transfer_syntax_uid), None)
    return list(seen)


def tls_context(ca: str | Path | None = None, cert: str | Path | None = None,
                key: str | Path | None = None) -> ssl.SSLContext:
    """Client TLS context: verify the server against ``ca`` (default: system CAs), optional client cert."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def store_files(
    files: Sequence[FileInfo],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "LABELQA",
    connect_timeout_s: float = 10.0,
    acse_timeout_s: float = 30.0,
    dimse_timeout_s: float = 60.0,
    tls: bool = False,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tcp_nodelay: bool = True,
) -> list[StoreOutcome]:
    """Send ``files`` over one association; one outcome per file, in order.

    Raises AssociationError when no association could be made (nothing was sent). If the association
    breaks mid-batch, the files not confirmed get ``delivered=False`` with the reason.
    ``tls``: DICOM TLS, verifying the peer's certificate for ``host`` against ``tls_ca`` (default: the
    system CAs), presenting ``tls_cert``/``tls_key`` when given. ``tcp_nodelay=False`` exists only to
    measure what TCP_NODELAY is worth (benchmarks/).
    """
    from pynetdicom import AE, _config

    if not files:
        return []
    contexts = presentation_contexts(files)
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP class/transfer syntax pairs in one batch; at most {MAX_CONTEXTS}")
    _config.STORE_SEND_CHUNKED_DATASET = True  # send files' own bytes (only affects path arguments)
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = connect_timeout_s
    ae.acse_timeout = acse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    ae.network_timeout = max(dimse_timeout_s, acse_timeout_s)
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    tls_args = (tls_context(tls_ca, tls_cert, tls_key), host) if tls else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    except (OSError, ssl.SSLError) as e:
        raise AssociationError(f"association to {called_ae}@{host}:{port} failed: {e}") from e
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise AssociationError(f"association to {called_ae}@{host}:{port} {why}")
    try:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is not None and tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        out: list[StoreOutcome] = []
        for f in files:
            if not assoc.is_established:
                out.append(StoreOutcome(f.sop_instance_uid, False, None, "association lost before sending"))
                continue
            if (f.sop_class_uid, f.transfer_syntax_uid) not in accepted:
                why = f"peer refused presentation context {f.sop_class_uid} / {f.transfer_syntax_uid}"
                out.append(StoreOutcome(f.sop_instance_uid, False, None, why))
                continue
            try:
                rsp = assoc.send_c_store(f.path)
            except (OSError, ValueError, AttributeError, RuntimeError) as e:
                out.append(StoreOutcome(f.sop_instance_uid, False, None, f"{type(e).__name__}: {e}"))
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            if status is None:
                out.append(StoreOutcome(f.sop_instance_uid, False, None, "no response (timeout or abort)"))
            elif status in DELIVERED_STATUSES:
                out.append(StoreOutcome(f.sop_instance_uid, True, status))
            else:
                comment = str(rsp.get("ErrorComment", "") or "")
                out.append(StoreOutcome(f.sop_instance_uid, False, status, f"status 0x{status:04X} {comment}".strip()))
        return out
    finally:
        if assoc.is_established:
            assoc.release()
