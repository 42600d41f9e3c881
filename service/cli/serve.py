"""`labelqa serve`: the service process (DICOM listener + store, audit workers, outbox, HTTP API)."""

from __future__ import annotations

from pathlib import Path

import typer

from service.settings import load_settings


def serve(
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="DICOM port (default 11112)."),
    ae_title: str | None = typer.Option(None, "--ae-title", help="Our AE title (default LABELQA)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data directory (default ./labelqa-data)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="labelqa.toml to read."),
) -> None:
    """Run the service until SIGTERM: DICOM listener + durable store, audit workers, outbox, HTTP API."""
    from pydantic import ValidationError

    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.runtime.process import configure_logging, run_service

    overrides = {"listener": {"host": host, "port": port, "ae_title": ae_title}, "store": {"data_dir": data_dir}}
    try:
        settings = load_settings(config, overrides)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as e:
        typer.echo(f"error: invalid settings:\n{e}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.store import DataDirLocked
    from service.http.guard import RefusedSettings

    try:
        from service.serve import service_components  # audit jobs, workers, outbox sender, HTTP API

        code = run_service(settings, components=service_components(settings))
    except DataDirLocked as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except RefusedSettings as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except OSError as e:
        typer.echo(
            f"error: cannot start the listener on {settings.listener.host}:{settings.listener.port}: {e}", err=True
        )
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("serve")(serve)
