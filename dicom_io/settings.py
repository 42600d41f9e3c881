"""The DICOM layer's settings: the listener, the study store and the results outbox.

``service.settings`` composes them as ``[listener]``, ``[store]`` and ``[outbox]``. They live apart
from the modules that use them so that reading a configuration (``labelqa config show``, every CLI
start) costs no pydicom, pynetdicom or SQLAlchemy import.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Destination", "ListenerSettings", "OutboxSettings", "SegSettings", "StoreSettings"]


class ListenerSettings(BaseModel):
    """The DICOM listener (C-ECHO / C-STORE SCP); ``service.settings`` composes it as ``[listener]``."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes it to the network.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port of the DICOM listener (0: any free port).")
    ae_title: str = Field("LABELQA", max_length=16, description="Our AE title; calls to others are rejected.")
    require_called_ae: bool = Field(True, description="Reject associations whose called AE title is not ours.")
    allowed_calling_aes: list[str] = Field(
        default_factory=list, description="If not empty, only these calling AE titles may associate."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="If not empty, only peers from these IP addresses may associate."
    )
    max_associations: int = Field(10, ge=1, description="Simultaneous associations accepted.")
    max_pdu: int = Field(262144, ge=0, description="Maximum PDU size we receive (bytes, 0 = unlimited).")
    acse_timeout_s: float = Field(30.0, gt=0, description="Association negotiation timeout (seconds).")
    dimse_timeout_s: float = Field(60.0, gt=0, description="DIMSE message timeout (seconds).")
    network_timeout_s: float = Field(120.0, gt=0, description="Idle network timeout (seconds).")
    accept_unknown_sop_classes: bool = Field(
        False,
        description="Also accept private or unknown SOP classes as storage (every public storage SOP class, "
        "retired ones included, is always accepted).",
    )
    whole_study_aes: list[str] = Field(
        default_factory=list, description="Calling AE titles that send each study whole over one association (a "
        "routing rule): the release of such an association completes the studies it carried, without the quiet "
        "period.",
    )
    accept_mpps: bool = Field(
        True, description="Accept Modality Performed Procedure Steps (N-CREATE, N-SET): COMPLETED completes the "
        "study once the instances it names are stored.",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: enables DICOM TLS when set.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    tls_ca: Path | None = Field(None, description="PEM CA bundle used to verify client certificates.")
    tls_require_client_cert: bool = Field(False, description="With TLS, require a client certificate.")
    tls_handshake_timeout_s: float = Field(
        10.0, gt=0, description="A TLS peer must finish its handshake within this time (per connection)."
    )
    min_free_disk_mb: int = Field(
        512, ge=0, description="Below this much free space in the data dir (MiB), C-STORE answers 0xA700 "
        "(C-ECHO still succeeds, so monitors see the node up but full).",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, running associations get this long to finish before being aborted."
    )
    poll_interval_s: float = Field(
        0.001,
        gt=0,
        le=0.01,
        description="Longest wait of an association's loops for what does not wake them (a release, an abort); "
        "requests and responses wake them at once.",
    )

    @property
    def exposed(self) -> bool:
        """Bound to something other than loopback."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name
            return True


class StoreSettings(BaseModel):
    """The durable study store and its index; ``service.settings`` composes it as ``[store]``."""

    data_dir: Path = Field(Path("labelqa-data"), description="Where studies, the index and results live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the index, jobs and outbox: default SQLite file index.sqlite in "
        "data_dir; postgresql+psycopg://user:password@host/db for several processes or gateways (they share data_dir)."
    )
    stable_after_s: float = Field(
        5.0, gt=0, description="A study is stable after this many seconds without a new instance."
    )
    fsync_directory: bool = Field(
        True,
        description="fsync the series directory after each rename (strict POSIX durability); off: one journal "
        "commit per instance, relies on ext4/xfs persisting a new file's name with its fsync + start-up roll-forward.",
    )

    max_inflated_mb: int = Field(
        64, ge=1, description="A Deflated Explicit VR instance that inflates beyond this (MiB) is refused with "
        "0xA700 (it is checked while it inflates, a chunk at a time, and never held whole).",
    )
    gateway_lease_s: float = Field(
        30.0, gt=0, description="With a shared database_url: a gateway that has not renewed its lease for this "
        "long is taken for dead (its unfinished files are reconciled, its studies taken over); renewed every third.",
    )
    inflate_budget_mb: int = Field(
        16, ge=1, description="Inflated bytes (MiB) that all associations together may hold while they check "
        "deflated instances; one that finds it used up for 10 s is refused with 0xA700.",
    )

    def resolved_database_url(self) -> str:
        """The index URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"


class SegSettings(BaseModel):
    """Bounds on the work one SEG may cause (audits and the review's mask pictures); ``[seg]``.

    A SEG beyond them is not read: the audit records a ``too_large`` issue and goes on with the rest
    of the study, and the review's ``mask.png`` answers 422.
    """

    max_segments: int = Field(
        1000, ge=1, description="Segments a SEG may declare (its Segment Sequence); more: not read."
    )
    max_pixels: int = Field(
        1 << 28, ge=1, description="Pixels a SEG may decode (frames x rows x columns), and pixels its masks may "
        "expand to, each; more: not read.",
    )


class Destination(BaseModel):
    """A place results are delivered to: a DICOM C-STORE SCP or a DICOMweb STOW-RS endpoint."""

    name: str = Field(description="Short unique name, used in logs and `labelqa outbox`.")
    kind: Literal["dicom", "dicomweb"] = Field("dicom", description="dicom (C-STORE) or dicomweb (STOW-RS).")
    ae_title: str | None = Field(None, description="Called AE title of a DICOM destination.")
    host: str | None = Field(None, description="Host of a DICOM destination.")
    port: int | None = Field(None, description="Port of a DICOM destination.")
    url: str | None = Field(None, description="STOW-RS base URL of a DICOMweb destination.")
    tls: bool = Field(False, description="Use DICOM TLS towards this destination.")
    tls_ca: Path | None = Field(None, description="PEM CA bundle that signs the destination's certificate.")
    tls_cert: Path | None = Field(None, description="PEM client certificate we present (mutual TLS).")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")


class OutboxSettings(BaseModel):
    """Durable delivery of results; ``service.settings`` composes it as ``[outbox]``."""

    destinations: list[Destination] = Field(
        default_factory=list, description="Where results are sent; empty: kept locally only."
    )
    calling_ae_title: str = Field("LABELQA", max_length=16, description="Our AE title when we send.")
    max_attempts: int = Field(10, ge=1, description="Attempts before an item is dead-lettered.")
    backoff_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")
    poll_interval_s: float = Field(1.0, gt=0, description="How often the sender looks for due items (results of "
                                   "this process wake it at once).")
    batch_size: int = Field(64, ge=1, description="Objects sent per association (or STOW-RS request).")
    jitter: float = Field(0.25, ge=0, le=1, description="Retry delays vary randomly by +- this fraction.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP connect timeout towards a destination (seconds).")
    dimse_timeout_s: float = Field(60.0, gt=0, description="Time to wait for a C-STORE response (seconds).")
