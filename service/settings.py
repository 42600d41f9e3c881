"""All of labelqa's settings in one pydantic model.

Sources, lowest to highest precedence: defaults below, a TOML file (``labelqa.toml`` in the current
directory, or the path given by ``--config`` / ``LABELQA_CONFIG``), ``LABELQA_*`` environment
variables (nested fields with ``__``, e.g. ``LABELQA_LISTENER__PORT=11113``), then CLI flags.

Each section belongs to one part of the service; every field carries a one-line description, which
``labelqa config show`` and the generated configuration reference (``deploy/CONFIGURATION.md``) use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = Path("labelqa.toml")


class ListenerSettings(BaseModel):
    """The DICOM listener (C-ECHO / C-STORE SCP)."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes it to the network.")
    port: int = Field(11112, ge=1, le=65535, description="TCP port of the DICOM listener.")
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
    tls_cert: Path | None = Field(None, description="PEM certificate: enables DICOM TLS when set.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    tls_ca: Path | None = Field(None, description="PEM CA bundle used to verify client certificates.")
    tls_require_client_cert: bool = Field(False, description="With TLS, require a client certificate.")
    min_free_disk_mb: int = Field(
        512, ge=0, description="Refuse new associations when the data dir has less free space (MiB)."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, running associations get this long to finish before being aborted."
    )
    poll_interval_s: float = Field(
        0.0002, gt=0, le=0.001, description="Polling interval of pynetdicom's loops while an association is open."
    )


class StoreSettings(BaseModel):
    """The durable study store and its index."""

    data_dir: Path = Field(Path("labelqa-data"), description="Where studies, the index and results live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the index; default: SQLite file index.sqlite in data_dir."
    )
    stable_after_s: float = Field(
        5.0, gt=0, description="A study is stable after this many seconds without a new instance."
    )
    fsync_directory: bool = Field(
        True,
        description="fsync the series directory after each rename (strict POSIX durability); off: one journal "
        "commit per instance, relies on ext4/xfs persisting a new file's name with its fsync + start-up roll-forward.",
    )

    def resolved_database_url(self) -> str:
        """The index URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"


class AuditSettings(BaseModel):
    """Audit jobs: which model bundle and vocabulary, on what device, how many workers."""

    bundle: Path | None = Field(None, description="Model bundle directory (made by `labelqa train`).")
    vocabulary: Path | None = Field(
        None, description="Label vocabulary file (TOML/JSON); default: the bundle's own."
    )
    device: str = Field("auto", description="torch device: auto (cuda if present), cpu, cuda, cuda:N.")
    batch_size: int = Field(64, ge=1, description="Inference batch size.")
    workers: int = Field(1, ge=1, description="In-process audit workers.")
    job_lease_s: float = Field(600.0, gt=0, description="A running job whose lease expired is re-queued.")
    heatmaps_for_hard_cases: bool = Field(False, description="Also write heatmap SCs for hard cases.")


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
    """Durable delivery of results."""

    destinations: list[Destination] = Field(
        default_factory=list, description="Where results are sent; empty: kept locally only."
    )
    calling_ae_title: str = Field("LABELQA", max_length=16, description="Our AE title when we send.")
    max_attempts: int = Field(10, ge=1, description="Attempts before an item is dead-lettered.")
    backoff_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")
    poll_interval_s: float = Field(1.0, gt=0, description="How often the sender looks for due items.")
    batch_size: int = Field(64, ge=1, description="Objects sent per association (or STOW-RS request).")
    jitter: float = Field(0.25, ge=0, le=1, description="Retry delays vary randomly by +- this fraction.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP connect timeout towards a destination (seconds).")
    dimse_timeout_s: float = Field(60.0, gt=0, description="Time to wait for a C-STORE response (seconds).")


class ApiSettings(BaseModel):
    """The HTTP API (health, metrics, jobs, audit results)."""

    enabled: bool = Field(True, description="Serve the HTTP API beside the DICOM listener.")
    host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    port: int = Field(8787, ge=1, le=65535, description="Port of the HTTP API.")
    token: SecretStr | None = Field(None, description="If set, requests need 'Authorization: Bearer <token>'.")


class ReviewUser(BaseModel):
    """A person (or tool) allowed into the review workbench and the JSON API."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$",
                      description="Login name; decisions are attributed to it.")
    role: Literal["reviewer", "admin"] = Field("reviewer", description="reviewer (decide) or admin (also re-run, "
                                               "retract, read the trail).")
    token: SecretStr = Field(description="Secret: the password at the login page and the API bearer token.")
    display_name: str | None = Field(None, max_length=64, description="Person name (DICOM PN, e.g. Doe^Jane) "
                                     "written as the verifying observer; default: the login name.")


class AuthSettings(BaseModel):
    """Who may use the review workbench and the API (login is on when a user or [api] token is set)."""

    users: list[ReviewUser] = Field(default_factory=list, description="Named users with their tokens and roles.")
    session_secret: SecretStr | None = Field(None, description="Key that signs session cookies; default: "
                                             "derived from the users' tokens (sessions survive a restart).")
    session_max_age_s: int = Field(43200, ge=60, description="Seconds a login lasts.")
    cookie_secure: bool = Field(False, description="Mark the session cookie Secure (serve over HTTPS).")
    organization: str = Field("labelqa QA", max_length=64,
                              description="Verifying Organization written into reissued, verified QA reports.")


class Settings(BaseSettings):
    """Effective labelqa settings."""

    model_config = SettingsConfigDict(
        env_prefix="LABELQA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR.")
    listener: ListenerSettings = Field(default_factory=ListenerSettings, description="DICOM listener.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Study store and index.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit jobs.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Result delivery.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="HTTP API.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="Review workbench and API login.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _CONFIG_PATH_OVERRIDE or os.environ.get("LABELQA_CONFIG") or DEFAULT_CONFIG_FILE
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)),
        )


_CONFIG_PATH_OVERRIDE: Path | None = None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from file + environment, then apply CLI overrides (nested dict, None = unset).

    Raises FileNotFoundError when an explicitly given config file does not exist.
    """
    global _CONFIG_PATH_OVERRIDE
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    _CONFIG_PATH_OVERRIDE = Path(config) if config is not None else None
    try:
        base = Settings()
        if not overrides:
            return base
        clean = _drop_none(overrides)
        merged = _deep_merge(base.model_dump(), clean)
        return Settings.model_validate(merged)
    finally:
        _CONFIG_PATH_OVERRIDE = None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out


def settings_reference_markdown() -> str:
    """A configuration reference (every field, its default and description) as Markdown."""
    lines = [
        "# labelqa configuration reference",
        "",
        "Generated from `service/settings.py` (`labelqa config reference`). Set a field in",
        "`labelqa.toml` under its section, or with an environment variable",
        "`LABELQA_<SECTION>__<FIELD>`.",
        "",
    ]

    def emit(model: type[BaseModel], section: str | None) -> None:
        lines.append(f"## [{section}]" if section else "## top level")
        lines.append("")
        lines.append("| field | default | env | description |")
        lines.append("|---|---|---|---|")
        nested: list[tuple[str, type[BaseModel]]] = []
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                nested.append((name, ann))
                continue
            default = f.get_default(call_default_factory=True)
            env = f"LABELQA_{section.upper()}__{name.upper()}" if section else f"LABELQA_{name.upper()}"
            lines.append(f"| `{name}` | `{default!r}` | `{env}` | {f.description or ''} |")
        lines.append("")
        for name, sub in nested:
            emit(sub, name)

    emit(Settings, None)
    return "\n".join(lines) + "\n"
