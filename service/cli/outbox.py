"""`labelqa outbox list|retry|enqueue|send`: the durable results outbox."""

from __future__ import annotations

from pathlib import Path

import typer

from service.settings import load_settings

ConfigOpt = typer.Option(None, "--config", "-c", help="labelqa.toml to read (default: ./labelqa.toml).")

outbox_app = typer.Typer(help="The durable results outbox: list, retry, enqueue, send.", no_args_is_help=True)


def _outbox(config: Path | None):
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.db import make_engine
    from dicom_io.outbox import Outbox

    try:
        s = load_settings(config)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from service.migrations import upgrade  # as above: only when the command runs

    engine = make_engine(s.store.resolved_database_url())
    upgrade(engine)
    return Outbox(engine, s.outbox.destinations, settings=s.outbox, spool_dir=s.store.data_dir / "outbox"), s


@outbox_app.command("list")
def outbox_list(
    state: str | None = typer.Option(None, "--state", help="Only rows in this state: pending, delivered, dead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    config: Path | None = ConfigOpt,
) -> None:
    """List outbox rows (default: everything not yet delivered) and counts per state."""
    import json

    box, _ = _outbox(config)
    rows = box.list(state=state) if state else [r for r in box.list() if r["state"] != "delivered"]
    if as_json:
        typer.echo(json.dumps({"counts": box.counts(), "items": rows}, indent=2))
        return
    typer.echo(" ".join(f"{k}={v}" for k, v in box.counts().items()))
    for r in rows:
        err = f"  last error: {r['last_error']}" if r["last_error"] else ""
        typer.echo(f"{r['id']:>6}  {r['state']:<9} {r['destination']:<12} attempts={r['attempts']:<3} "
                   f"{r['sop_instance_uid']}{err}")


@outbox_app.command("retry")
def outbox_retry(
    item_id: int | None = typer.Argument(None, help="Row id to re-queue (default: every dead row)."),
    destination: str | None = typer.Option(None, "--destination", help="Only dead rows of this destination."),
    config: Path | None = ConfigOpt,
) -> None:
    """Re-queue dead-lettered rows now, with a fresh attempt budget."""
    box, _ = _outbox(config)
    n = box.retry(item_id, destination=destination)
    typer.echo(f"re-queued {n} item(s)")
    if item_id is not None and n == 0:
        raise typer.Exit(1)


@outbox_app.command("enqueue")
def outbox_enqueue(
    files: list[Path] = typer.Argument(..., help="DICOM files to deliver."),
    destination: str | None = typer.Option(None, "--destination", help="Only this destination (default: all)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Queue DICOM files for delivery (the files must stay where they are until delivered)."""
    box, s = _outbox(config)
    if not s.outbox.destinations:
        typer.echo("error: no destinations configured ([outbox] destinations)", err=True)
        raise typer.Exit(2)
    try:
        ids = box.enqueue(files, destination=destination)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"queued {len(ids)} item(s)")


@outbox_app.command("send")
def outbox_send(
    timeout: float = typer.Option(0, "--timeout", help="Stop after this many seconds (0: until nothing is pending)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Deliver pending rows now (waiting out retry delays) until none is pending; exit 1 if any is left or dead."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    box, _ = _outbox(config)
    counts = box.run_until_idle(timeout or None)
    typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["pending"] or counts["dead"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the outbox command group to the top-level app."""
    app.add_typer(outbox_app, name="outbox", help="The durable results outbox: list, retry, enqueue, send.")
