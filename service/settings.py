"""All of labelqa's settings in one pydantic model.

Sources, lowest to highest precedence: defaults below, a TOML file (``labelqa.toml`` in the current
directory, or the path given by ``--config`` / ``LABELQA_CONFIG``), ``LABELQA_*`` environment
variables (nested fields with ``__``, e.g. ``LABELQA_LISTENER__PORT=11113``), then CLI flags.

Each section belongs to one part of the service; every field carries a one-line description, which
``labelqa config show`` and the generated configuration reference (``docs/configuration.md``) use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_io.settings import Destination, ListenerSettings, OutboxSettings, SegSettings, StoreSettings

__all__ = ["ListenerSettings", "StoreSettings", "SegSettings", "AuditSettings", "Destination", "OutboxSettings",
           "ApiSettings",
           "Settings", "load_settings", "settings_reference_markdown"]

DEFAULT_CONFIG_FILE = Path("labelqa.toml")


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
    parametric_maps: bool = Field(
        False, description="Also write each heatmap's raw saliency as a Parametric Map (sources with a Frame of "
        "Reference; for viewers that show them, e.g. OHIF >= 3.9, Weasis, Slicer).")
    key_slices: int = Field(
        3, ge=1, le=50, description="Volumes: overlay Secondary Captures per flagged segment, on the slices where "
        "the given mask and the models' consensus differ most.")
    member_panels: bool = Field(
        False, description="Also write, beside each heatmap SC, one SC with every ensemble member's map.")


class ExecutorSettings(BaseModel):
    """Who runs the audit jobs: worker threads in this process, or actors on a Ray cluster."""

    kind: Literal["inprocess", "ray"] = Field(
        "inprocess", description="inprocess (embedded default) or ray (the model step on Ray actors)."
    )
    address: str | None = Field(
        None, description="Ray cluster: HOST:PORT of the head (GCS), ray://HOST:10001 (Ray Client) or auto; "
        "unset: a local Ray instance on this machine."
    )
    actors: int = Field(
        0, ge=0, description="Audit actors (each keeps the bundle warm); 0: one per GPU or per unit of resources."
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor; unset: 1 when the cluster has GPUs, else 0 (CPU actors)."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor (Ray scheduling).")
    resources: dict[str, float] = Field(
        default_factory=dict, description='Custom Ray resources per actor, e.g. {labelqa_gpu = 1} to pin audits '
        "to nodes started with --resources '{\"labelqa_gpu\": 1}'."
    )
    namespace: str = Field("labelqa", description="Ray namespace of the service's actors.")
    start_timeout_s: float = Field(
        300.0, gt=0, description="Wait this long at start-up for the first actor to load the bundle."
    )


class ApiSettings(BaseModel):
    """The HTTP API (health, metrics, jobs, audit results)."""

    enabled: bool = Field(True, description="Serve the HTTP API beside the DICOM listener.")
    host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    port: int = Field(8787, ge=1, le=65535, description="Port of the HTTP API.")
    token: SecretStr | None = Field(None, description="If set, requests need 'Authorization: Bearer <token>' "
                                    "(an admin named api); at least 16 random characters.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names the API answers to besides its bind address, localhost, "
        "127.0.0.1 and [::1] (*.example.org for a domain); a request naming any other Host gets 400.",
    )
    allow_open: bool = Field(
        False, description="Serve on a non-loopback host with no [auth] users and no [api] token (everybody an "
        "anonymous reviewer), with a warning; off: such settings refuse to start.",
    )


class ReviewUser(BaseModel):
    """A person (or tool) allowed into the review workbench and the JSON API."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$",
                      description="Login name; decisions are attributed to it.")
    role: Literal["reviewer", "admin"] = Field("reviewer", description="reviewer (decide) or admin (also re-run, "
                                               "retract, read the trail).")
    token: SecretStr = Field(description="Secret: the password at the login page and the API bearer token; at "
                             "least 16 random characters.")
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
    max_failures: int = Field(5, ge=1, description="Wrong logins or bearer tokens per client (and per user) "
                              "within failure_window_s that lock it out (429).")
    failure_window_s: float = Field(300.0, gt=0, description="The window in which failures are counted (seconds).")
    lockout_s: float = Field(300.0, gt=0, description="How long a locked-out client or user waits (seconds).")


class Settings(BaseSettings):
    """Effective labelqa settings."""

    model_config = SettingsConfigDict(
        env_prefix="LABELQA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR.")
    listener: ListenerSettings = Field(default_factory=ListenerSettings, description="DICOM listener.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Study store and index.")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit jobs.")
    seg: SegSettings = Field(default_factory=SegSettings, description="Bounds on reading one SEG.")
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings, description="Where audits run.")
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


def _deep_merge(base: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for k, v in over.items():
        prev = out.get(k)
        if isinstance(v, dict) and isinstance(prev, dict):
            out[k] = _deep_merge(prev, v)
        else:
            out[k] = v
    return out


def load_settings(config: Path | None = None, overrides: dict[str, object] | None = None) -> Settings:
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


def _drop_none(d: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
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
