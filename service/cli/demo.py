"""`labelqa demo`: the whole loop on embedded defaults (data, bundle, service, C-STORE, results)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    data_dir: Path = typer.Option(Path("labelqa-demo"), "--data-dir", help="Where the demo keeps its data, "
                                  "cached bundle and service state."),
    studies: int = typer.Option(40, "--studies", min=4, help="DICOM studies to make and audit (one image each)."),
    train_images: int = typer.Option(320, "--train-images", min=20, help="Synthetic images the bundle trains on."),
    image_size: int = typer.Option(48, "--image-size", min=32, max=256, help="Image size in pixels."),
    classes: int = typer.Option(2, "--classes", min=2, max=4, help="Number of shape classes."),
    noise_rate: float = typer.Option(0.125, "--noise-rate", help="Fraction of labels flipped, in [0, 1)."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Training epochs per ensemble member."),
    archs: str = typer.Option("densenet-tiny,resnet-tiny,efficientnet-tiny", "--archs",
                              help="Ensemble members (comma-separated MONAI architectures)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the flips and the training."),
    device: str = typer.Option("auto", "--device", help="torch device: auto (cuda if present), cpu, cuda."),
    orthanc: bool = typer.Option(False, "--orthanc", help="Route through a local Orthanc (Debian package)."),
    viewer: bool = typer.Option(False, "--viewer", help="With --orthanc: serve OHIF on 127.0.0.1 over Orthanc's "
                                "DICOMweb, print a URL that opens a flagged study, and keep running."),
    sender: str = typer.Option("auto", "--sender", help="C-STORE client: auto, storescu, pynetdicom."),
    timeout: float = typer.Option(900.0, "--timeout", help="Give up waiting for results after this many seconds."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Keep the service (and Orthanc) up at the end."),
    database_url: str | None = typer.Option(
        None, "--database-url", help="Index, jobs and outbox in this database (e.g. postgresql+psycopg://...): one "
        "for the demo alone; its earlier demo jobs are deleted. Default: SQLite in the data dir."),
    executor: str = typer.Option("inprocess", "--executor", help="inprocess (default) or ray (model steps on Ray "
                                 "actors)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="HOST:PORT of a running Ray head for "
                                           "--executor ray (default: a local Ray instance)."),
    task: str = typer.Option("labels", "--task", help="labels (TID 1500 SR class labels) or segmentation (DICOM SEG "
                             "masks: synthetic shapes, some masks corrupted on purpose; its own smaller sizes unless "
                             "given)."),
    dims: int = typer.Option(2, "--dims", help="--task segmentation: 2 (one image per study) or 3 (a synthetic CT "
                             "series per study with one SEG over it, audited per segment by 3-D members)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the service's log lines."),
) -> None:
    """Run the whole loop on embedded defaults: annotated studies, a small bundle, the service, flagged labels."""
    import sys

    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.demo import DemoError, demo_config, quiet_logging, render_text, report_json, run_demo

    if sender not in ("auto", "storescu", "pynetdicom"):
        typer.echo("error: --sender must be auto, storescu or pynetdicom", err=True)
        raise typer.Exit(2)
    if executor not in ("inprocess", "ray"):
        typer.echo("error: --executor must be inprocess or ray", err=True)
        raise typer.Exit(2)
    if ray_address and executor != "ray":
        typer.echo("error: --ray-address needs --executor ray", err=True)
        raise typer.Exit(2)
    if viewer and not orthanc:
        typer.echo("error: --viewer shows the results in OHIF over Orthanc's DICOMweb: add --orthanc", err=True)
        raise typer.Exit(2)
    try:
        cfg = demo_config(data_dir=data_dir, studies=studies, train_images=train_images, image_size=image_size,
                          classes=classes, noise_rate=noise_rate, epochs=epochs, archs=archs, seed=seed,
                          device=device, orthanc=orthanc, sender=sender, timeout_s=timeout, keep_running=keep_running,
                          database_url=database_url, executor=executor, ray_address=ray_address, task=task,
                          viewer=viewer, dims=dims)
    except DemoError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    quiet_logging(verbose)

    def echo(msg: str) -> None:
        # Progress goes to stderr with --json so stdout stays one JSON document.
        print(msg, file=sys.stderr if as_json else sys.stdout, flush=True)

    try:
        report = run_demo(cfg, echo=echo)
    except DemoError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(report_json(report))
    elif not (keep_running or viewer):
        typer.echo(render_text(report))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("demo")(demo)
