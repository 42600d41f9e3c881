"""`labelqa export`: the reviewed label set for data scientists, and a corrected copy of the studies.

Reads the service database (``[store]`` of the settings) directly, so it works beside a running
service or after it stopped: one row per decided annotation (original label, decision, corrected
label, reviewer, time, scores) as CSV or JSON; with ``--dicom DIR`` also a copy of every stored
study in which each annotation object a reviewer corrected is replaced by its corrected version
(labelqa's own result objects left out), ready for ``labelqa train`` on DICOM.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from service.settings import load_settings

if TYPE_CHECKING:  # annotation-only types
    from pydicom.dataset import Dataset

    from service.review import ReviewService


def export(
    config: Path | None = typer.Option(None, "--config", "-c", help="labelqa.toml to read (default: ./labelqa.toml)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
    fmt: str = typer.Option("", "--format", help="csv or json (default: from --out's suffix, else csv)."),
    dicom: Path | None = typer.Option(None, "--dicom", help="Also write a corrected copy of the stored studies here."),
) -> None:
    """Export the reviewed labels (CSV/JSON) and, with --dicom, a corrected copy of the studies."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.db import make_engine
    from service.http import export_csv_text
    from service.review import ReviewService
    from service.runtime.jobs import JobStore

    try:
        settings = load_settings(config)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    kind = (fmt or (out.suffix.lstrip(".") if out is not None and out.suffix else "csv")).lower()
    if kind not in ("csv", "json"):
        typer.echo("error: --format must be csv or json", err=True)
        raise typer.Exit(2)
    db = settings.store.resolved_database_url()
    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).is_file():
        typer.echo(f"error: no service database at {db.removeprefix('sqlite:///')}; check [store] data_dir", err=True)
        raise typer.Exit(2)
    engine = make_engine(db)
    review = ReviewService.from_settings(settings, engine, jobs=JobStore(engine))
    review.sync()
    rows = review.store.export_rows()
    text = export_csv_text(rows) if kind == "csv" else json.dumps({"rows": rows}, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {len(rows)} reviewed annotation(s) to {out}", err=True)
    if dicom is not None:
        n_files, n_fixed = corrected_copy(review, dicom)
        typer.echo(f"wrote {n_files} file(s) ({n_fixed} corrected annotation object(s)) under {dicom}", err=True)


def corrected_copy(review: ReviewService, dest: Path) -> tuple[int, int]:
    """Copy every stored study to ``dest/<study>/``, corrected annotation objects in place of the originals.

    Returns (files written, annotation objects replaced).
    """
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from dicom_io.results.revision import RevisionError
    from dicom_io.results.series import is_own_output
    from dicom_io.store import StudyStore

    assert review.data_dir is not None  # a review service made from the settings has the data dir
    store = StudyStore(review.data_dir, review.engine.url.render_as_string(hide_password=False), 3600.0,
                       engine=review.engine, reconcile=False)
    corrected: dict[str, Path | Dataset] = {}  # annotation UID -> the corrected object (a written file, or a Dataset)
    for row in review.store.export_rows():
        uid = row["annotation_uid"]
        if uid in corrected:
            continue
        written = review.current_correction(uid)
        if written is not None:  # the very object the PACS received (same UID), not a new version
            corrected[uid] = written
            continue
        item = review.resolve(uid, item_id=row["item_id"])
        try:
            ds = review._corrected_version(item, review._reviewer(item["decision"]["reviewer"],
                                                                  item["decision"]["decided_at"]), item["decision"])
        except RevisionError as e:
            typer.echo(f"warning: {uid} left as it was: {e}", err=True)
            continue
        if ds is not None:
            corrected[uid] = ds
    n = 0
    for rec in store.instances():
        if is_own_output(rec.manufacturer, rec.series_number):
            continue
        study = rec.path.parent.parent.name
        target = Path(dest) / study
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(fixed := corrected.get(rec.sop_instance_uid), Path):
            shutil.copyfile(fixed, target / fixed.name)
        elif fixed is not None:
            fixed.save_as(target / f"{fixed.SOPInstanceUID}.dcm", enforce_file_format=True)
        else:
            shutil.copyfile(rec.path, target / rec.path.name)
        n += 1
    return n, len(corrected)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("export")(export)
