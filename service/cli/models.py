"""`labelqa train | audit | evaluate`: the model commands (bundle, audit of a data set or DICOM folder, benchmark)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, TypeVar

import typer
from typer.models import OptionInfo

from models.bundles import LABELS, SEGMENTATION

if TYPE_CHECKING:  # annotation-only types
    from models.bundles import BundleInfo

DatasetOpt = typer.Option(..., "--dataset", help="Image folder (root/<class>/* or root/<split>/<class>/*), "
                          "CSV (path,label) or npz (images/labels or MedMNIST-style).")
ImageSizeOpt = typer.Option(None, "--image-size", min=16, help="Square input size in pixels (greyscale); default 64 "
                            "for labels, chosen from the masks for --task segmentation (models/seg/recipe.py).")
LABEL_SIZE, LABEL_EPOCHS, VOLUME_EPOCHS = 64, 12, 12
ArchsOpt = typer.Option("densenet121,resnet18,efficientnet-b0", "--archs",
                        help="Comma-separated ensemble members (see models/ensemble.py ARCHITECTURES).")
EpochsOpt = typer.Option(None, "--epochs", min=1, help="Maximum epochs per member (labels: default 12, early "
                         "stopping on a held-out 10%; --task segmentation: chosen from the data set size, "
                         "models/seg/recipe.py).")
SeedOpt = typer.Option(0, "--seed", help="Seed for folds, noise, initialisation and augmentation.")
DeviceOpt = typer.Option("auto", "--device", help="auto (cuda if present), cpu, cuda, cuda:N.")
ModeOpt = typer.Option("crossfit", "--mode", help="crossfit (K folds, out-of-fold scores) or insample.")
FoldsOpt = typer.Option(4, "--folds", min=2, help="Number of folds for crossfit.")
BatchOpt = typer.Option(64, "--batch-size", min=2, help="Training batch size.")
LrOpt = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, one-cycle cosine schedule).")
ThreadsOpt = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch default).")
MaxOpt = typer.Option(None, "--max-samples", min=10, help="Class-stratified random subsample of this size.")


def _setup(threads: int) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


RepeatsOpt = typer.Option(
    1, "--repeats", min=1,
    help="Seeds per architecture (other folds and initialisations), probabilities averaged: less fit-to-fit noise "
         "for N times the training (benchmarks/results/seed-average-summary.json).")
RayOpt = typer.Option(
    None, "--ray", metavar="ADDRESS",
    help="Run the cross-fit fits as Ray tasks on this cluster (HOST:PORT of the head, ray://..., or auto), one GPU "
         "each when the cluster has GPUs; default: here, one after another.")
TaskOpt = typer.Option("labels", "--task", help="labels (class labels) or segmentation (DIR/images + DIR/masks).")
DimsOpt = typer.Option(None, "--dims", help="--task segmentation: 2 (images) or 3 (volumes: NIfTI/NRRD/MHA, "
                       "imagesTr/ + labelsTr/ + dataset.json or images/ + masks/); default 3 for volumes, else 2.")
PatchOpt = typer.Option(None, "--patch", help="--dims 3: patch size, one edge or slices,rows,columns (default 24).")


def _seg_defaults(archs: str) -> tuple[str, ...]:
    """--task segmentation: the label default of --archs becomes the segmenters' own (--image-size and
    --epochs left out are chosen from the data: models.seg.recipe)."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.seg.ensemble import DEFAULT_SEG_ARCHS

    return DEFAULT_SEG_ARCHS if archs == ArchsOpt.default else tuple(a.strip() for a in archs.split(",") if a.strip())


CutOpt = typer.Option("simulated_flips", "--cut",
                      help="labelqa's cut: simulated_flips (default) or confident_joint (the earlier rule).")


def _ray_map(address: str | None, progress: bool):
    """The fits' map function for ``--ray ADDRESS`` (None: the builtin one, in this process)."""
    if address is None:
        return None
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.runtime.executor_ray import ray_map

    try:
        import ray  # noqa: F401
    except ImportError:
        _fail("--ray needs Ray: pip install 'labelqa[cluster]'")
    return ray_map(address, progress=progress)


def evaluate(
    dataset: Path = DatasetOpt,
    out: Path = typer.Option(..., "--out", help="Output directory (results.json, samples.csv, plots)."),
    noise_rate: float = typer.Option(0.05, "--noise-rate", help="Fraction of labels flipped, in [0, 1)."),
    noise_model: str = typer.Option("uniform", "--noise-model", help="uniform or asymmetric (c -> c+1)."),
    seed: int = SeedOpt,
    mode: str = ModeOpt,
    folds: int = FoldsOpt,
    image_size: int | None = ImageSizeOpt,
    max_samples: int | None = MaxOpt,
    archs: str = ArchsOpt,
    epochs: int | None = EpochsOpt,
    batch_size: int = BatchOpt,
    lr: float = LrOpt,
    device: str = DeviceOpt,
    saliency_weight: float = typer.Option(0.0, "--saliency-weight", help="labelqa: weight of Grad-CAM agreement."),
    cut: str = CutOpt,
    repeats: int = RepeatsOpt,
    threads: int = ThreadsOpt,
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ray: str | None = RayOpt,
    task: str = TaskOpt,
    retrain: bool = typer.Option(
        False, "--retrain", help="Instead: simulate a reviewer working down labelqa's priority list vs a random "
        "order, retrain on the cleaned labels and compare test accuracy (noisy / cleaned by labelqa / cleaned by "
        "random / clean); DIR/retrain.json."),
    budgets: str = typer.Option("0.05,0.1,0.2", "--budgets", help="--retrain: review budgets, fractions of the "
                                "training set."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="--retrain: clean held-out test split."),
    dims: int | None = DimsOpt,
    patch: str | None = PatchOpt,
) -> None:
    """Corrupt labels (or masks), fit the ensemble, score, compare with baselines; write DIR/results.json.

    With --retrain: the review loop closed offline (models/retrain.py); DIR/retrain.json."""
    _setup(threads)
    _task(task, dims, dataset).evaluate(SimpleNamespace(**locals()))


def _evaluate_labels(o: SimpleNamespace) -> None:
    """``labelqa evaluate --task labels``: planted label flips (or the closed review loop with --retrain)."""
    if o.retrain:
        _retrain(o)
        return
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.evaluate import EvalSettings, run_evaluation, summary_table
    from models.train import TrainConfig

    try:
        s = EvalSettings(dataset=str(o.dataset), noise_rate=o.noise_rate, noise_model=o.noise_model, seed=o.seed,
                         mode=o.mode, folds=o.folds, image_size=o.image_size or LABEL_SIZE,
                         max_samples=o.max_samples,
                         archs=tuple(a.strip() for a in o.archs.split(",") if a.strip()), device=o.device,
                         train=TrainConfig(epochs=o.epochs or LABEL_EPOCHS, batch_size=o.batch_size, lr=o.lr),
                         detector=DetectorConfig(saliency_weight=o.saliency_weight, cut=o.cut), repeats=o.repeats)
        results = run_evaluation(s, o.out, progress=o.progress, plots=o.plots, map_fn=_ray_map(o.ray, o.progress))
    except (DatasetError, ValueError) as e:  # RayUnavailable is a ValueError
        _fail(str(e))
    typer.echo(summary_table(results))
    typer.echo(f"wrote {o.out / 'results.json'}")


def _evaluate_masks(o: SimpleNamespace) -> None:
    """``labelqa evaluate --task segmentation``: planted mask errors."""
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.seg.detector import SegDetectorConfig
    from models.seg.evaluate import SegEvalSettings, run_seg_evaluation, seg_summary_table
    from models.seg.train import SegTrainConfig

    names = _seg_defaults(o.archs)
    try:
        lr = o.lr if o.lr != LrOpt.default else SegTrainConfig().lr
        s = SegEvalSettings(dataset=str(o.dataset), noise_rate=o.noise_rate, seed=o.seed, image_size=o.image_size,
                            folds=o.folds, archs=names, epochs=o.epochs, device=o.device,
                            train=SegTrainConfig(batch_size=min(o.batch_size, 16), lr=lr),
                            detector=SegDetectorConfig(seed=o.seed))
        results = run_seg_evaluation(s, o.out, progress=o.progress)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(seg_summary_table(results))
    typer.echo(f"wrote {o.out / 'results.json'}")


def _retrain(o: SimpleNamespace) -> None:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.retrain import RetrainSettings, run_retrain, summary_table
    from models.train import TrainConfig

    try:
        rs = RetrainSettings(
            dataset=str(o.dataset), image_size=o.image_size or LABEL_SIZE, max_samples=o.max_samples,
            test_fraction=o.test_fraction,
            noise_rate=o.noise_rate, noise_model=o.noise_model,
            budgets=tuple(float(b) for b in o.budgets.split(",") if b.strip()),
            archs=tuple(a.strip() for a in o.archs.split(",") if a.strip()), folds=o.folds, seed=o.seed,
            device=o.device,
            train=TrainConfig(epochs=o.epochs or LABEL_EPOCHS, batch_size=o.batch_size, lr=o.lr),
            detector=DetectorConfig(saliency_weight=o.saliency_weight, cut=o.cut))
        res = run_retrain(rs, o.out / "retrain.json")
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(summary_table(res))
    typer.echo(f"wrote {o.out / 'retrain.json'}")


def train(
    dataset: Path = DatasetOpt,
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    image_size: int | None = ImageSizeOpt,
    archs: str = ArchsOpt,
    epochs: int | None = EpochsOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    mode: str = ModeOpt,
    folds: int = FoldsOpt,
    batch_size: int = BatchOpt,
    lr: float = LrOpt,
    max_samples: int | None = MaxOpt,
    cut: str = CutOpt,
    repeats: int = RepeatsOpt,
    verdicts: Path | None = typer.Option(
        None, "--verdicts",
        help="Also audit the training labels themselves: write DIR/verdicts.csv and DIR/audit.json (with crossfit "
             "each label is judged by members that never saw it). Kept outside the bundle: ids are file names."),
    threads: int = ThreadsOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ray: str | None = RayOpt,
    task: str = TaskOpt,
    dims: int | None = DimsOpt,
    patch: str | None = PatchOpt,
) -> None:
    """Fit the ensemble on annotated data (labels, masks with --task segmentation, volumes with --dims 3) and
    write a model bundle."""
    _setup(threads)
    _task(task, dims, dataset).train(SimpleNamespace(**locals()))


def _train_masks(o: SimpleNamespace) -> None:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.data import DatasetError
    from models.seg.bundle import train_seg_bundle
    from models.seg.train import SegTrainConfig

    try:
        path = train_seg_bundle(o.dataset, o.out, image_size=o.image_size, archs=_seg_defaults(o.archs),
                                folds=o.folds, epochs=o.epochs, seed=o.seed, mode=o.mode, device=o.device,
                                progress=o.progress, verdicts_out=o.verdicts,
                                cfg=SegTrainConfig(batch_size=min(o.batch_size, 16)))
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote bundle {path}")


def _train_labels(o: SimpleNamespace) -> None:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.bundle import train_bundle
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.train import TrainConfig

    try:
        path = train_bundle(o.dataset, o.out, image_size=o.image_size or LABEL_SIZE, archs=o.archs, seed=o.seed,
                            device=o.device, mode=o.mode, folds=o.folds,
                            train_cfg=TrainConfig(epochs=o.epochs or LABEL_EPOCHS, batch_size=o.batch_size, lr=o.lr),
                            detector=DetectorConfig(cut=o.cut), max_samples=o.max_samples, progress=o.progress,
                            verdicts_out=o.verdicts, repeats=o.repeats, map_fn=_ray_map(o.ray, o.progress))
    except (DatasetError, ValueError) as e:  # RayUnavailable is a ValueError
        _fail(str(e))
    typer.echo(f"wrote bundle {path}")
    if o.verdicts is not None:
        summary = json.loads((o.verdicts / "audit.json").read_text())
        typer.echo(f"training labels: {summary['verdicts']} -> {o.verdicts / 'verdicts.csv'}")


def audit(
    bundle: Path = typer.Option(..., "--bundle", help="Model bundle directory (from `labelqa train`)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Image folder / CSV / npz to audit."),
    dicom: Path | None = typer.Option(None, "--dicom", help="Folder of DICOM studies with annotations."),
    vocabulary: Path | None = typer.Option(None, "--vocabulary", help="Label vocabulary (DICOM mode)."),
    device: str = DeviceOpt,
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Inference batch size."),
    cut_from: str | None = typer.Option(
        None, "--cut-from",
        help="--dataset only: auto (the default: re-estimate the error count and cut on the data set when every "
             "class has >= min_class_size (100) labels, else the bundle's), bundle, or batch. DICOM audits "
             "always use the bundle's cut, the one their SR records."),
    threads: int = ThreadsOpt,
    dims: int | None = typer.Option(None, "--dims", help="2 or 3: checked against the bundle's, which decides."),
) -> None:
    """Score new data with a bundle: per-sample verdicts (its members never saw these samples)."""
    _setup(threads)
    if (dataset is None) == (dicom is None):
        _fail("give exactly one of --dataset PATH or --dicom DIR")
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.detector import CUT_FROM

    if cut_from is not None and cut_from not in CUT_FROM:
        _fail(f"--cut-from must be one of {', '.join(CUT_FROM)}, not {cut_from!r}")
    if dicom is not None and cut_from not in (None, "bundle"):
        _fail("--cut-from applies to --dataset audits; DICOM audits use the bundle's cut (recorded in the SR)")
    if dicom is not None:
        from service.audit import audit_dicom_dir  # offline DICOM audit; here: keeps `labelqa --help` fast

        summary = audit_dicom_dir(bundle, dicom, out, vocabulary=vocabulary, device=device, batch_size=batch_size)
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.bundles import BundleError, read_bundle_info
    from models.data import DatasetError

    try:
        info = read_bundle_info(bundle)
        if dims is not None and dims != info.dimension:
            _fail(f"--dims {dims}, but {bundle} is a {info.dimension}-D {info.task} bundle")
        summary = _task(info.task, info.dimension).audit_dataset(info, dataset, out, device=device,
                                                                 batch_size=batch_size, cut_from=cut_from or "auto")
    except (DatasetError, BundleError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


def _audit_labels(info: BundleInfo, dataset: Path, out: Path, *, device: str, batch_size: int,
                  cut_from: str) -> dict[str, object]:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.bundle import audit_dataset

    return audit_dataset(info.path, dataset, out, device=device, batch_size=batch_size, cut_from=cut_from)


def _audit_masks(info: BundleInfo, dataset: Path, out: Path, *, device: str, batch_size: int,
                 cut_from: str) -> dict[str, object]:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.seg.bundle import audit_seg_dataset

    return audit_seg_dataset(info.path, dataset, out, device=device)


@dataclass(frozen=True)
class _TaskCommands:
    """What ``train``, ``evaluate`` and ``audit --dataset`` do for one kind of annotation."""

    train: Callable[[SimpleNamespace], None]
    evaluate: Callable[[SimpleNamespace], None]
    audit_dataset: Callable[..., dict[str, object]]  # its summary, printed as JSON


def _train_volumes(o: SimpleNamespace) -> None:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.cli.volumes import train_volumes_cmd

    train_volumes_cmd(o.dataset, o.out, archs=_given_archs(o.archs), folds=_volume_folds(o.folds),
                      epochs=o.epochs or VOLUME_EPOCHS, seed=o.seed, mode=o.mode, device=o.device,
                      batch_size=_given(o.batch_size, BatchOpt), lr=_given(o.lr, LrOpt), patch=o.patch,
                      verdicts=o.verdicts, progress=o.progress, map_fn=_ray_map(o.ray, o.progress))


def _evaluate_volumes(o: SimpleNamespace) -> None:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.cli.volumes import evaluate_volumes_cmd

    evaluate_volumes_cmd(o.dataset, o.out, noise_rate=o.noise_rate, seed=o.seed, folds=_volume_folds(o.folds),
                         archs=_given_archs(o.archs), epochs=o.epochs or VOLUME_EPOCHS,
                         batch_size=_given(o.batch_size, BatchOpt),
                         lr=_given(o.lr, LrOpt), patch=o.patch, device=o.device, progress=o.progress,
                         map_fn=_ray_map(o.ray, o.progress))


def _audit_volumes(info: BundleInfo, dataset: Path, out: Path, *, device: str, batch_size: int,
                   cut_from: str) -> dict[str, object]:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from models.volume.bundle import audit_volume_dataset

    return audit_volume_dataset(info.path, dataset, out, device=device)


def _volume_folds(folds: int) -> int:
    # imported when the command runs, not at the top: keeps `labelqa --help` fast
    from service.cli.volumes import VOLUME_DEFAULT_FOLDS

    return VOLUME_DEFAULT_FOLDS if folds == FoldsOpt.default else folds


def _given_archs(archs: str) -> tuple[str, ...] | None:
    return None if archs == ArchsOpt.default else tuple(a.strip() for a in archs.split(",") if a.strip())


_V = TypeVar("_V")


def _given(value: _V, option: OptionInfo) -> _V | None:
    """The option's value when the user gave one, else None (the volume defaults apply)."""
    return None if value == option.default else value


TASKS = {
    (LABELS, 2): _TaskCommands(_train_labels, _evaluate_labels, _audit_labels),
    (SEGMENTATION, 2): _TaskCommands(_train_masks, _evaluate_masks, _audit_masks),
    (SEGMENTATION, 3): _TaskCommands(_train_volumes, _evaluate_volumes, _audit_volumes),
}
"""``--task`` and ``--dims``: the commands of each kind of annotation (the bundle's task and dims for audits)."""


def _task(name: str, dims: int | None, dataset: Path | None = None) -> _TaskCommands:
    """The commands for ``--task name --dims dims``; without ``--dims``, 3 when ``dataset`` holds volumes."""
    names = sorted({t for t, _ in TASKS})
    if name not in names:
        _fail(f"--task must be one of {', '.join(names)}, not {name!r}")
    if dims is None:
        # imported when the command runs, not at the top: keeps `labelqa --help` fast
        from service.cli.volumes import holds_volumes

        dims = 3 if (name, 3) in TASKS and holds_volumes(dataset) else 2
    if (name, dims) not in TASKS:
        _fail(f"--dims {dims} is not offered for --task {name} (offered: "
              f"{', '.join(str(d) for t, d in sorted(TASKS) if t == name)})")
    return TASKS[(name, dims)]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("train")(train)
    app.command("audit")(audit)
    app.command("evaluate")(evaluate)
