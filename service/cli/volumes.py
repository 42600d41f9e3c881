"""`labelqa train | audit | evaluate --task segmentation --dims 3`: the volume commands of the model commands.

:mod:`service.cli.models` parses the options and hands volume work here (``--dims 3``, or a data set
of volumes when ``--dims`` is not given); the work itself is :mod:`models.volume`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

__all__ = ["holds_volumes", "parse_patch", "evaluate_volumes_cmd", "train_volumes_cmd", "VOLUME_DEFAULT_FOLDS"]

VOLUME_DEFAULT_FOLDS = 3


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def holds_volumes(dataset: Path | None) -> bool:
    """Whether ``dataset`` is a folder of volumes (NIfTI/NRRD/MHA; what ``--dims`` defaults to)."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.volume.data import is_volume_dataset

    return dataset is not None and Path(dataset).is_dir() and is_volume_dataset(dataset)


def parse_patch(patch: str | None) -> tuple[int, int, int] | None:
    """``"24"`` or ``"16,32,32"`` (slices, rows, columns) -> a patch, None when not given."""
    if patch is None:
        return None
    try:
        vals = [int(p) for p in patch.split(",") if p.strip()]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3 or min(vals) < 1:
        _fail(f"--patch must be one size or three (slices,rows,columns), not {patch!r}")
    return (vals[0], vals[1], vals[2])


def _command() -> str:
    return "labelqa " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def evaluate_volumes_cmd(dataset: Path, out: Path, *, noise_rate: float, seed: int, folds: int,
                         archs: tuple[str, ...] | None, epochs: int, batch_size: int | None, lr: float | None,
                         patch: str | None, device: str, progress: bool, map_fn=None) -> None:
    """``labelqa evaluate --task segmentation --dims 3``: results.json with ``dims``, methods, ``predicted_dice``."""
    size = parse_patch(patch)
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.volume.detector import VolumeDetectorConfig
    from models.volume.ensemble import DEFAULT_VOLUME_ARCHS
    from models.volume.evaluate import VolumeEvalSettings, run_volume_evaluation, volume_summary_table
    from models.volume.train import VolumeTrainConfig

    base = VolumeTrainConfig()
    try:
        train = VolumeTrainConfig(epochs=epochs, batch_size=batch_size or base.batch_size, lr=lr or base.lr,
                                  patch=size or base.patch)
        s = VolumeEvalSettings(dataset=str(dataset), noise_rate=noise_rate, seed=seed, folds=folds,
                               archs=archs or DEFAULT_VOLUME_ARCHS, epochs=epochs, device=device, train=train,
                               detector=VolumeDetectorConfig.for_seed(seed))
        results = run_volume_evaluation(s, out, progress=progress, map_fn=map_fn, extra={"command": _command()})
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(volume_summary_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


def train_volumes_cmd(dataset: Path, out: Path, *, archs: tuple[str, ...] | None, folds: int, epochs: int, seed: int,
                      mode: str, device: str, batch_size: int | None, lr: float | None,
                      patch: str | None, verdicts: Path | None, progress: bool, map_fn=None) -> None:
    """``labelqa train --task segmentation --dims 3``: a 3-D segmentation bundle."""
    size = parse_patch(patch)
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.volume.bundle import train_volume_bundle
    from models.volume.detector import VolumeDetectorConfig
    from models.volume.ensemble import DEFAULT_VOLUME_ARCHS
    from models.volume.train import VolumeTrainConfig

    base = VolumeTrainConfig()
    try:
        cfg = VolumeTrainConfig(epochs=epochs, batch_size=batch_size or base.batch_size, lr=lr or base.lr,
                                patch=size or base.patch)
        path = train_volume_bundle(dataset, out, archs=archs or DEFAULT_VOLUME_ARCHS, folds=folds, epochs=epochs,
                                   seed=seed, mode=mode, device=device, cfg=cfg,
                                   detector=VolumeDetectorConfig.for_seed(seed), map_fn=map_fn,
                                   progress=progress, verdicts_out=verdicts)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote bundle {path}")
    if verdicts is not None:
        summary = json.loads((verdicts / "audit.json").read_text())
        typer.echo(f"training masks: {summary['verdicts']} -> {verdicts / 'verdicts.csv'}")
