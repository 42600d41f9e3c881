"""`labelqa report`: a QA report SR as HTML for QA officers."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    sr: Path = typer.Argument(..., help="A labelqa QA report SR (.dcm)."),
    html_out: Path = typer.Option(..., "--html", help="Write the HTML report here."),
    heatmaps: list[Path] = typer.Option(
        [], "--heatmaps", help="Folders holding the heatmap SCs (default: the SR's own folder)."
    ),
) -> None:
    """Render a QA report SR as HTML for QA officers (verdicts, scores, heatmaps inline, dsr2html)."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.results.report_html import render_html

    if not sr.is_file():
        typer.echo(f"error: {sr} is not a file", err=True)
        raise typer.Exit(2)
    try:
        text = render_html(sr, heatmaps)
    except Exception as e:  # noqa: BLE001 - report what was wrong with the input
        typer.echo(f"error: {sr} is not a readable labelqa QA report SR ({type(e).__name__}: {e})", err=True)
        raise typer.Exit(2) from None
    html_out.parent.mkdir(parents=True, exist_ok=True)
    html_out.write_text(text, encoding="utf-8")
    typer.echo(str(html_out))


def register(app: typer.Typer) -> None:
    """Add the report command to the top-level app."""
    app.command("report")(report)
