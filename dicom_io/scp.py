"""The DICOM listener: a pynetdicom C-ECHO / C-STORE SCP in front of the durable study store.

The C-STORE handler validates and persists, nothing else: it takes the bytes exactly as the peer
sent them (the request's dataset stream behind a file meta group: no decode, no transcoding), hands them to
``StudyStore.put`` and answers Success only once the instance is on disk and indexed.

Statuses (PS3.4 Annex B.2.3):

| status  | meaning                                                                      |
|---------|------------------------------------------------------------------------------|
| 0x0000  | stored (or an identical copy was already stored)                             |
| 0xA700  | out of resources: disk or index failed, disk below the watermark, or a deflated |
|         | dataset inflates beyond max_inflated_mb; nothing was indexed                 |
| 0xA900  | the dataset's SOP Class/Instance UID disagrees with the request              |
| 0xC000  | cannot understand: the bytes do not parse as a DICOM dataset                 |
| 0xC001  | cannot understand: a UID missing or unindexable, or the request lacks one     |
| 0xC002  | cannot understand: the listener failed unexpectedly (logged with a trace)    |

A study is complete after the store's quiet period, or as soon as a sender says so: an MPPS set
COMPLETED (``dicom_io.mpps``: the Modality Performed Procedure Step SOP class is accepted too), or the
release of an association from a calling AE listed in ``whole_study_aes`` (a router that sends each
study whole over one association) completes the studies it carried.

Associations are refused (A-ASSOCIATE-RJ) for an unknown called AE title, a calling AE title or
host outside the allow-lists, too many simultaneous associations, and while shutting down. Below the
free-space watermark C-ECHO still succeeds and C-STORE answers 0xA700. A C-STORE request whose
command lacks a required field is answered 0xC001 at once (pynetdicom alone would leave the peer
waiting for its timeout). Every accepted socket gets TCP_NODELAY; a TLS handshake runs in the
connection's own thread with a timeout, so an idle socket cannot block the accept loop.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import threading
import time
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    evt,
    register_uid,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    _STORAGE_CLASSES,
    ModalityPerformedProcedureStep,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io import reactor
from dicom_io.mpps import MppsScp
from dicom_io.part10 import InvalidInstance, MissingUID, SOPClassMismatch, TooLarge, UnreadableDataset, part10_bytes
from dicom_io.settings import ListenerSettings
from dicom_io.store import StudyStore

__all__ = [
    "STATUS_SUCCESS", "STATUS_OUT_OF_RESOURCES", "STATUS_SOP_CLASS_MISMATCH", "STATUS_UNREADABLE",
    "STATUS_MISSING_UID", "STATUS_INTERNAL", "exposure_warning", "storage_sop_classes", "make_ssl_context",
    "Listener",
]

log = logging.getLogger("labelqa.scp")

# The standard per-PDU/per-DIMSE log handlers cost time per instance and say nothing we need.
_config.LOG_HANDLER_LEVEL = "none"

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_UNREADABLE = 0xC000
STATUS_MISSING_UID = 0xC001
STATUS_INTERNAL = 0xC002

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_RJ_NO_REASON = (0x01, 0x01, 0x01)
_RJ_CALLING_AE = (0x01, 0x01, 0x03)
_RJ_CALLED_AE = (0x01, 0x01, 0x07)
_RJ_CONGESTION = (0x02, 0x03, 0x01)


def exposure_warning(cfg: ListenerSettings) -> str | None:
    """What to warn about when the listener is reachable from the network with no allow-list."""
    if cfg.exposed and not cfg.allowed_calling_aes and not cfg.allowed_hosts:
        return (
            f"listening on {cfg.host} with no allowed_calling_aes and no allowed_hosts: any peer on the network "
            "that knows the AE title can store studies here"
        )
    return None


def storage_sop_classes() -> list[str]:
    """Every storage SOP class UID pynetdicom or pydicom knows, retired and trial ones included.

    A PACS stores a retired class (e.g. the retired Ultrasound Image Storage still sent by old
    modalities) like any other; so do we.
    """
    known = set(_STORAGE_CLASSES.values())
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind == "SOP Class" and "Storage" in name and "Commitment" not in name and uid not in known:
            # pynetdicom serves only the classes it has registered: add the rest to its storage service
            register_uid(uid, keyword or "Storage_" + uid.replace(".", "_"), StorageServiceClass)
            known.add(uid)
    return sorted(known)


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved off the accept thread.

    pynetdicom wraps each accepted socket in TLS inside ``get_request`` (the accept loop), so one
    peer that connects and never sends a ClientHello blocks every new association. Here the accept
    loop only wraps the socket; each connection's own thread runs the handshake, with a timeout.
    """

    handshake_timeout_s: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout_s)
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ssl.SSLError) as e:
                log.warning("TLS handshake with %s failed: %s", client_address[0] if client_address else "?", e)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def make_ssl_context(cfg: ListenerSettings) -> ssl.SSLContext | None:
    """Server-side TLS context from the certificate settings; None when TLS is off."""
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key) if cfg.tls_key else None)
    if cfg.tls_ca:
        ctx.load_verify_locations(cafile=str(cfg.tls_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.tls_require_client_cert else ssl.CERT_OPTIONAL
    if not cfg.tls_ca and not cfg.tls_require_client_cert:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _received_part10(event: evt.Event, req: C_STORE) -> bytes:
    """The dataset as received, as a Part 10 file: what ``event.encoded_dataset()`` returns, faster."""
    stream = req.DataSet
    if not isinstance(stream, BytesIO):  # pragma: no cover - pynetdicom changed shape
        return event.encoded_dataset(include_meta=True)
    return part10_bytes(
        stream.getvalue(),
        sop_class_uid=str(req.AffectedSOPClassUID or ""),
        sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    )


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:  # LO: no backslash (value separator), at most 64 characters
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


class _AssocStats:
    __slots__ = ("calling_ae", "host", "stored", "duplicate", "replaced", "failed", "started", "studies")

    def __init__(self, calling_ae: str, host: str) -> None:
        self.calling_ae, self.host = calling_ae, host
        self.stored = self.duplicate = self.replaced = self.failed = 0
        self.started = time.monotonic()
        self.studies: set[str] = set()  # the studies this association stored instances of


class Listener:
    """C-ECHO / C-STORE SCP writing into a ``StudyStore``; ``start()`` returns once it listens."""

    def __init__(self, config: ListenerSettings, store: StudyStore) -> None:
        self.cfg = config
        self.store = store
        self._server: _Server | None = None
        self._low_disk_checked = 0.0
        self._low_disk: str | None = None
        self._draining = threading.Event()
        self._stats: dict[int, _AssocStats] = {}
        self._stats_lock = threading.Lock()
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = self.cfg.max_associations
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.acse_timeout = self.cfg.acse_timeout_s
        ae.dimse_timeout = self.cfg.dimse_timeout_s
        ae.network_timeout = self.cfg.network_timeout_s
        ae.require_called_aet = self.cfg.require_called_ae
        ae.require_calling_aet = list(self.cfg.allowed_calling_aes)
        ts = list(ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ts)
        for uid in storage_sop_classes():
            ae.add_supported_context(uid, ts)
        self.mpps = MppsScp(self._complete) if self.cfg.accept_mpps else None
        if self.mpps is not None:
            ae.add_supported_context(ModalityPerformedProcedureStep, ts)
        self._whole_study_aes = {a.strip() for a in self.cfg.whole_study_aes}
        self.ae = ae

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return self._server.server_address[1] if self._server else self.cfg.port

    def start(self) -> None:
        """Bind and serve in background threads."""
        reactor.install(self.cfg.poll_interval_s)
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        if self.mpps is not None:
            handlers += [(evt.EVT_N_CREATE, self._on_n_create), (evt.EVT_N_SET, self._on_n_set)]
        if self.cfg.accept_unknown_sop_classes:
            _config.UNRESTRICTED_STORAGE_SERVICE = True  # process-wide; affects only the SCP side
        handlers.append((evt.EVT_DIMSE_RECV, self._on_dimse_recv))
        server = cast(
            _Server,
            self.ae.make_server(
                (self.cfg.host, self.cfg.port),
                evt_handlers=handlers,
                ssl_context=make_ssl_context(self.cfg),
                server_class=_Server,
            ),
        )
        server.handshake_timeout_s = self.cfg.tls_handshake_timeout_s
        threading.Thread(target=server.serve_forever, name="labelqa-scp-accept", daemon=True).start()
        self.ae._servers.append(server)
        self._server = server
        warning = exposure_warning(self.cfg)
        if warning:
            log.warning(warning)
        log.info(
            "listening on %s:%d as %s (tls=%s)", self.cfg.host, self.port, self.cfg.ae_title, bool(self.cfg.tls_cert)
        )

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new associations, let running ones finish for ``grace_s``, then abort the rest."""
        if self._server is None:
            return
        self._draining.set()
        server, self._server = self._server, None
        server.shutdown()  # stops accepting; running association threads continue
        end = time.monotonic() + (self.cfg.shutdown_grace_s if grace_s is None else grace_s)
        # connections that never completed association negotiation are not worth waiting for
        while time.monotonic() < end and any(a.is_established for a in server.active_associations):
            time.sleep(0.05)
        for assoc in server.active_associations:
            if assoc.is_established:
                log.warning("shutdown: aborting association from %s", assoc.requestor.ae_title)
            assoc.abort()
        self.ae.shutdown()
        log.info("listener stopped")

    # ---------------------------------------------------------------- event handlers

    def _on_conn_open(self, event: evt.Event) -> None:
        try:
            assoc_socket = event.assoc.dul.socket
            if assoc_socket is None or assoc_socket.socket is None:
                raise AttributeError("the association has no socket")
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as e:  # pragma: no cover - platform specific
            log.debug("could not set TCP_NODELAY: %s", e)
        if not reactor.attach(event.assoc):  # pragma: no cover - pynetdicom changed shape
            log.debug("pynetdicom's loops keep polling on this association")

    def _reject(self, event: evt.Event, rsd: tuple[int, int, int], why: str) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        assert rq is not None  # set before EVT_REQUESTED
        log.warning(
            "rejecting association from %s (AE %s): %s",
            assoc.requestor.address,
            rq.calling_ae_title,
            why,
        )
        assoc.acse.send_reject(*rsd)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_requested(self, event: evt.Event) -> None:
        cfg = self.cfg
        host = event.assoc.requestor.address
        rq = event.assoc.requestor.primitive
        assert rq is not None  # the A-ASSOCIATE-RQ being answered
        if self._draining.is_set():
            return self._reject(event, _RJ_CONGESTION, "shutting down")
        if cfg.require_called_ae and rq.called_ae_title.strip() != cfg.ae_title.strip():
            return self._reject(event, _RJ_CALLED_AE, f"called AE {rq.called_ae_title!r} is not ours")
        if cfg.allowed_calling_aes and rq.calling_ae_title.strip() not in [a.strip() for a in cfg.allowed_calling_aes]:
            return self._reject(event, _RJ_CALLING_AE, "calling AE not in allowed_calling_aes")
        if cfg.allowed_hosts and host not in cfg.allowed_hosts:
            return self._reject(event, _RJ_NO_REASON, f"host {host} not in allowed_hosts")
        return None

    def low_disk(self) -> str | None:
        """Why the data dir is too full to store (checked at most every 0.5 s), or None."""
        if not self.cfg.min_free_disk_mb:
            return None
        now = time.monotonic()
        if now - self._low_disk_checked > 0.5:
            free_mb = shutil.disk_usage(self.store.data_dir).free / 2**20
            self._low_disk = (
                f"only {free_mb:.0f} MiB free (< min_free_disk_mb={self.cfg.min_free_disk_mb})"
                if free_mb < self.cfg.min_free_disk_mb
                else None
            )
            self._low_disk_checked = now
        return self._low_disk

    def _on_dimse_recv(self, event: evt.Event) -> None:
        """Answer a C-STORE request that pynetdicom would drop silently (the peer would wait for its timeout).

        pynetdicom ignores a request whose command lacks a required field (e.g. an empty Affected SOP
        Instance UID): no response, the peer waits for its DIMSE timeout. We answer at once with a
        failure status and log why; the association stays usable.
        """
        msg = event.message
        cmd = getattr(msg, "command_set", None)
        if cmd is None or cmd.get("CommandField") != 0x0001:  # C-STORE-RQ
            return
        missing = [k for k in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID") if not cmd.get(k)]
        if not missing:
            return
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int(cmd.get("MessageID") or 0)
        if cmd.get("AffectedSOPClassUID"):
            rsp.AffectedSOPClassUID = cmd.AffectedSOPClassUID
        rsp.Status = STATUS_MISSING_UID
        rsp.ErrorComment = f"C-STORE request without {', '.join(missing)}"[:64]  # type: ignore[assignment]  # pynetdicom infers None
        log.warning(
            "C-STORE refused from %s: the request command has no %s; answered 0x%04X",
            event.assoc.requestor.address, ", ".join(missing), STATUS_MISSING_UID,
        )
        st = self._stats.get(id(event.assoc))
        if st:
            st.failed += 1
        assert msg.context_id is not None  # a decoded message carries its presentation context
        event.assoc.dimse.send_msg(rsp, msg.context_id)

    def _on_accepted(self, event: evt.Event) -> None:
        a = event.assoc
        with self._stats_lock:
            self._stats[id(a)] = _AssocStats(a.requestor.ae_title, a.requestor.address)
        log.info("association accepted from %s (AE %s)", a.requestor.address, a.requestor.ae_title)

    @staticmethod
    def _on_rejected(event: evt.Event) -> None:
        a = event.assoc
        rq = a.requestor.primitive
        assert rq is not None  # rejected in answer to a request
        log.info("association rejected from %s (AE %s)", a.requestor.address, rq.calling_ae_title)

    def _complete(self, studies: set[str], instances: set[str]) -> None:
        """A sender says these studies (or the studies of these instances) are complete."""
        if not studies and instances:  # no study named: the studies of the instances already stored
            studies = self.store.studies_of(instances)
        for study in sorted(studies):
            how = self.store.complete(study, expected=instances)
            log.info("study %s: completion signalled (%s)", study, how)

    def _on_n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        assert self.mpps is not None
        req = event.request
        uid = str(getattr(req, "AffectedSOPInstanceUID", "") or "")
        if not uid:
            return 0x0106, None
        return self.mpps.on_n_create(uid, event.attribute_list)

    def _on_n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        assert self.mpps is not None
        uid = str(getattr(event.request, "RequestedSOPInstanceUID", "") or "")
        return self.mpps.on_n_set(uid, event.modification_list)

    def _on_closed(self, event: evt.Event) -> None:
        with self._stats_lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        if event.event is evt.EVT_RELEASED and st.studies and st.calling_ae.strip() in self._whole_study_aes:
            for study in sorted(st.studies):  # a whole-study router has sent all of each study: complete
                try:
                    log.info("study %s: complete at the release of %s's association (%s)", study, st.calling_ae,
                             self.store.complete(study))
                except Exception:  # noqa: BLE001 - the quiet period still completes it
                    log.exception("study %s: completing at association release failed", study)
        log.info(
            "association %s from %s (AE %s): %d stored, %d duplicate, %d replaced, %d failed in %.1f s",
            event.event.name.removeprefix("EVT_").lower(),
            st.host,
            st.calling_ae,
            st.stored,
            st.duplicate,
            st.replaced,
            st.failed,
            time.monotonic() - st.started,
        )

    def _on_c_store(self, event: evt.Event) -> Dataset | int:
        req = cast(C_STORE, event.request)  # the EVT_C_STORE handler
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        st = self._stats.get(id(event.assoc))
        full = self.low_disk()
        if full:
            log.warning("C-STORE refused sop=%s status=0x%04X: %s", sop_uid, STATUS_OUT_OF_RESOURCES, full)
            if st:
                st.failed += 1
            return _status(STATUS_OUT_OF_RESOURCES, full)
        try:
            raw = _received_part10(event, req)
            res = self.store.put(
                raw,
                expected_sop_class_uid=str(event.context.abstract_syntax),
                expected_sop_instance_uid=sop_uid or None,
                calling_ae=event.assoc.requestor.ae_title,
            )
        except InvalidInstance as e:
            code = {
                UnreadableDataset: STATUS_UNREADABLE,
                MissingUID: STATUS_MISSING_UID,
                SOPClassMismatch: STATUS_SOP_CLASS_MISMATCH,
                TooLarge: STATUS_OUT_OF_RESOURCES,
            }.get(type(e), STATUS_UNREADABLE)
            log.warning("C-STORE refused sop=%s status=0x%04X reason=%s: %s", sop_uid, code, e.reason, e)
            if st:
                st.failed += 1
            return _status(code, str(e))
        except OSError as e:
            log.error("C-STORE failed sop=%s: storage error %s", sop_uid, e)
            if st:
                st.failed += 1
            return _status(STATUS_OUT_OF_RESOURCES, f"storage error: {e.strerror or e}")
        except Exception as e:
            log.exception("C-STORE failed sop=%s: unexpected error", sop_uid)
            if st:
                st.failed += 1
            code = STATUS_OUT_OF_RESOURCES if type(e).__module__.startswith("sqlalchemy") else STATUS_INTERNAL
            return _status(code, f"internal error: {type(e).__name__}")
        if st:
            setattr(st, res.status, getattr(st, res.status) + 1)
            st.studies.add(res.study_uid)
        log.debug("C-STORE %s sop=%s study=%s", res.status, res.sop_instance_uid, res.study_uid)
        return STATUS_SUCCESS
