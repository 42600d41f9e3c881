"""`labelqa db upgrade|current|revision`: the service database's schema migrations (Alembic)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from service.settings import load_settings

ConfigOpt = typer.Option(None, "--config", "-c", help="labelqa.toml to read (default: ./labelqa.toml).")
UrlOpt = typer.Option(None, "--database-url", help="Database URL (default: [store] database_url of the settings).")

db_app = typer.Typer(help="The service database: apply and inspect schema migrations.", no_args_is_help=True)


def _url(config: Path | None, database_url: str | None) -> str:
    if database_url:
        return database_url
    try:
        return load_settings(config).store.resolved_database_url()
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Option("head", "--revision", help="Target revision (default: the newest)."),
    config: Path | None = ConfigOpt,
    database_url: str | None = UrlOpt,
) -> None:
    """Migrate the database to the newest schema (the service also does this at start-up)."""
    from sqlalchemy.exc import OperationalError

    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.migrations import upgrade

    url = _url(config, database_url)
    try:
        rev = upgrade(url, revision)
    except OperationalError as e:
        typer.echo(f"error: cannot reach the database {_safe(url)}: {e.orig}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{_safe(url)}: at revision {rev}")


@db_app.command("current")
def db_current(config: Path | None = ConfigOpt, database_url: str | None = UrlOpt) -> None:
    """Print the database's revision and whether it is the newest one (exit 1 when behind)."""
    from sqlalchemy.exc import OperationalError

    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.migrations import current, head

    url = _url(config, database_url)
    try:
        rev = current(url)
    except OperationalError as e:
        typer.echo(f"error: cannot reach the database {_safe(url)}: {e.orig}", err=True)
        raise typer.Exit(1) from None
    newest = head()
    state = "up to date" if rev == newest else f"behind (newest {newest}; run labelqa db upgrade)"
    typer.echo(f"{_safe(url)}: revision {rev or 'none'}, {state}")
    if rev != newest:
        raise typer.Exit(1)


@db_app.command("revision")
def db_revision(message: str = typer.Option(..., "--message", "-m", help="What the revision changes.")) -> None:
    """Write a new migration from the models (autogenerate; for developers adding tables)."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.migrations import new_revision

    path = new_revision(message)
    typer.echo(f"wrote {path}; read it before committing")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.add_typer(db_app, name="db", help="The service database: schema migrations.")
