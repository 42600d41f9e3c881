"""The DICOM listener: a pynetdicom C-ECHO / C-STORE SCP in front of the durable study store.

The C-STORE handler validates and persists, nothing else: it takes the bytes exactly as the peer
sent them (``event.encoded_dataset()``: no decode, no transcoding), hands them to
``StudyStore.put`` and answers Success only once the instance is on disk and indexed.

Statuses (PS3.4 Annex B.2.3):

| status  | meaning                                                                      |
|---------|------------------------------------------------------------------------------|
| 0x0000  | stored (or an identical copy was already stored)                             |
| 0xA700  | out of resources: the disk or the index failed; nothing was indexed          |
| 0xA900  | the dataset's SOP Class/Instance UID disagrees with the request              |
| 0xC000  | cannot understand: the bytes do not parse as a DICOM dataset                 |
| 0xC001  | cannot understand: SOP Class/Instance, Study or Series Instance UID missing  |
| 0xC002  | cannot understand: the listener failed unexpectedly (logged with a trace)    |

Associations are refused (A-ASSOCIATE-RJ) for an unknown called AE title, a calling AE title or
host outside the allow-lists, too many simultaneous associations, a data dir below the free-space
watermark, and while shutting down. Every accepted socket gets TCP_NODELAY.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

from dicom_io.part10 import InvalidInstance, MissingUID, SOPClassMismatch, UnreadableDataset
from dicom_io.store import StudyStore

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
_RJ_LOCAL_LIMIT = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class ListenerConfig:
    """The listener's settings (the fields of ``service.settings.ListenerSettings``)."""

    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "LABELQA"
    require_called_ae: bool = True
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_associations: int = 10
    max_pdu: int = 262144
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client_cert: bool = False
    min_free_disk_mb: int = 512
    shutdown_grace_s: float = 10.0
    poll_interval_s: float = 0.0002

    @classmethod
    def from_settings(cls, s: Any) -> ListenerConfig:
        """Build from a pydantic ``ListenerSettings`` (or anything with the same attributes)."""
        kw = {}
        for name in cls.__dataclass_fields__:
            if hasattr(s, name):
                v = getattr(s, name)
                kw[name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)


class _ShortSleepTime:
    """Stand-in for the ``time`` module inside ``pynetdicom.association``: caps its reactor's sleep."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def shorten_reactor_sleep(interval_s: float) -> None:
    """pynetdicom's association and DUL loops poll with a 1 ms sleep; a C-STORE waits for several.

    Capping the association loop's sleep (and the DUL's ``_run_loop_delay``, set per association)
    at ``interval_s`` cuts that latency; the cost is more wake-ups while an association is open.
    Process-wide (it also speeds up our outgoing associations). No-op if pynetdicom changes shape.
    """
    import pynetdicom.association as pa

    current = getattr(pa, "time", None)
    if isinstance(current, _ShortSleepTime):
        current.cap = interval_s
    elif current is time:
        pa.time = _ShortSleepTime(interval_s)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class UID pynetdicom knows (images, SEG, all SR kinds, KOS, SC, ...)."""
    return sorted(set(_STORAGE_CLASSES.values()))


def make_ssl_context(cfg: ListenerConfig) -> ssl.SSLContext | None:
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


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:  # LO: no backslash (value separator), at most 64 characters
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


class _AssocStats:
    __slots__ = ("calling_ae", "host", "stored", "duplicate", "replaced", "failed", "started")

    def __init__(self, calling_ae: str, host: str) -> None:
        self.calling_ae, self.host = calling_ae, host
        self.stored = self.duplicate = self.replaced = self.failed = 0
        self.started = time.monotonic()


class Listener:
    """C-ECHO / C-STORE SCP writing into a ``StudyStore``; ``start()`` returns once it listens."""

    def __init__(self, config: ListenerConfig | Any, store: StudyStore) -> None:
        self.cfg = config if isinstance(config, ListenerConfig) else ListenerConfig.from_settings(config)
        self.store = store
        self._server = None
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
        self.ae = ae

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return self._server.server_address[1] if self._server else self.cfg.port

    def start(self) -> None:
        """Bind and serve in background threads."""
        shorten_reactor_sleep(self.cfg.poll_interval_s)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        self._server = self.ae.start_server(
            (self.cfg.host, self.cfg.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=make_ssl_context(self.cfg),
        )
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
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as e:  # pragma: no cover - platform specific
            log.debug("could not set TCP_NODELAY: %s", e)
        if hasattr(event.assoc.dul, "_run_loop_delay"):
            event.assoc.dul._run_loop_delay = self.cfg.poll_interval_s

    def _reject(self, event: evt.Event, rsd: tuple[int, int, int], why: str) -> None:
        assoc = event.assoc
        log.warning(
            "rejecting association from %s (AE %s): %s",
            assoc.requestor.address,
            assoc.requestor.primitive.calling_ae_title,
            why,
        )
        assoc.acse.send_reject(*rsd)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_requested(self, event: evt.Event) -> None:
        cfg = self.cfg
        host = event.assoc.requestor.address
        rq = event.assoc.requestor.primitive
        if self._draining.is_set():
            return self._reject(event, _RJ_CONGESTION, "shutting down")
        if cfg.require_called_ae and rq.called_ae_title.strip() != cfg.ae_title.strip():
            return self._reject(event, _RJ_CALLED_AE, f"called AE {rq.called_ae_title!r} is not ours")
        if cfg.allowed_calling_aes and rq.calling_ae_title.strip() not in [a.strip() for a in cfg.allowed_calling_aes]:
            return self._reject(event, _RJ_CALLING_AE, "calling AE not in allowed_calling_aes")
        if cfg.allowed_hosts and host not in cfg.allowed_hosts:
            return self._reject(event, _RJ_NO_REASON, f"host {host} not in allowed_hosts")
        if cfg.min_free_disk_mb:
            free_mb = shutil.disk_usage(self.store.data_dir).free / 2**20
            if free_mb < cfg.min_free_disk_mb:
                return self._reject(
                    event,
                    _RJ_LOCAL_LIMIT,
                    f"only {free_mb:.0f} MiB free in {self.store.data_dir} (< min_free_disk_mb={cfg.min_free_disk_mb})",
                )
        return None

    def _on_accepted(self, event: evt.Event) -> None:
        a = event.assoc
        with self._stats_lock:
            self._stats[id(a)] = _AssocStats(a.requestor.ae_title, a.requestor.address)
        log.info("association accepted from %s (AE %s)", a.requestor.address, a.requestor.ae_title)

    @staticmethod
    def _on_rejected(event: evt.Event) -> None:
        a = event.assoc
        log.info("association rejected from %s (AE %s)", a.requestor.address, a.requestor.primitive.calling_ae_title)

    def _on_closed(self, event: evt.Event) -> None:
        with self._stats_lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
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
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        st = self._stats.get(id(event.assoc))
        try:
            raw = event.encoded_dataset(include_meta=True)
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
        log.debug("C-STORE %s sop=%s study=%s", res.status, res.sop_instance_uid, res.study_uid)
        return STATUS_SUCCESS
