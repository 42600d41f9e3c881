"""The `labelqa` command line.

Each command group registers itself from a module named after it (``service/cli/<command>.py``:
serve, dicom (dicomize, inspect), models (train, audit, evaluate), report, outbox, db, demo) so the
entry point stays small; heavy imports (torch, highdicom) happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from service.cli import db, demo, dicom, export, models, outbox, report, serve
from service.settings import load_settings, settings_reference_markdown

__all__ = ["app", "main"]

app = typer.Typer(
    name="labelqa",
    help="Find likely annotation errors in medical imaging data, inside your DICOM world.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config",
              help="Show the effective settings, or the configuration and HTTP API references.")

ConfigOpt = typer.Option(None, "--config", "-c", help="labelqa.toml to read (default: ./labelqa.toml).")


@config_app.command("show")
def config_show(config: Path | None = ConfigOpt) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    try:
        s = load_settings(config)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(json.loads(s.model_dump_json()), indent=2))


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (every field, default, env variable) as Markdown."""
    typer.echo(settings_reference_markdown(), nl=False)


@config_app.command("api-reference")
def config_api_reference() -> None:
    """Print the HTTP API reference (every endpoint, its parameters and responses) as Markdown."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.http.api import api_reference_markdown

    typer.echo(api_reference_markdown(), nl=False)


for _area in (serve, dicom, models, report, outbox, db, demo, export):
    _area.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="labelqa")
