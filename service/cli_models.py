"""`labelqa train | audit | evaluate`: the model commands (bundle, audit of a data set or DICOM folder, benchmark)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

DatasetOpt = typer.Option(..., "--dataset", help="Image folder (root/<class>/* or root/<split>/<class>/*), "
                          "CSV (path,label) or npz (images/labels or MedMNIST-style).")
ImageSizeOpt = typer.Option(None, "--image-size", min=16, help="Square input size in pixels (greyscale); default 64 "
                            "for labels, chosen from the masks for --task segmentation (models/seg/recipe.py).")
LABEL_SIZE, LABEL_EPOCHS = 64, 12
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
def _seg_defaults(archs: str) -> tuple[str, ...]:
    """--task segmentation: the label default of --archs becomes the segmenters' own (--image-size and
    --epochs left out are chosen from the data: models.seg.recipe)."""
    from models.seg.ensemble import DEFAULT_SEG_ARCHS

    return DEFAULT_SEG_ARCHS if archs == ArchsOpt.default else tuple(a.strip() for a in archs.split(",") if a.strip())


CutOpt = typer.Option("simulated_flips", "--cut",
                      help="labelqa's cut: simulated_flips (default) or confident_joint (the earlier rule).")


def _ray_map(address: str | None, progress: bool):
    """The fits' map function for ``--ray ADDRESS`` (None: the builtin one, in this process)."""
    if address is None:
        return None
    from service.executor_ray import ray_map

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
) -> None:
    """Corrupt labels (or masks), fit the ensemble, score, compare with baselines; write DIR/results.json.

    With --retrain: the review loop closed offline (models/retrain.py); DIR/retrain.json."""
    _setup(threads)
    if task == "segmentation":
        _evaluate_seg(dataset, out, noise_rate, seed, folds, image_size, archs, epochs, batch_size, lr, device,
                      progress)
        return
    if task != "labels":
        _fail(f"--task must be labels or segmentation, not {task!r}")
    if retrain:
        _retrain(dataset, out, noise_rate, noise_model, seed, folds, image_size or LABEL_SIZE, max_samples, archs,
                 epochs or LABEL_EPOCHS,
                 batch_size, lr, device, saliency_weight, cut, budgets, test_fraction)
        return
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.evaluate import EvalSettings, run_evaluation, summary_table
    from models.train import TrainConfig

    try:
        s = EvalSettings(dataset=str(dataset), noise_rate=noise_rate, noise_model=noise_model, seed=seed, mode=mode,
                         folds=folds, image_size=image_size or LABEL_SIZE, max_samples=max_samples,
                         archs=tuple(a.strip() for a in archs.split(",") if a.strip()), device=device,
                         train=TrainConfig(epochs=epochs or LABEL_EPOCHS, batch_size=batch_size, lr=lr),
                         detector=DetectorConfig(saliency_weight=saliency_weight, cut=cut), repeats=repeats)
        results = run_evaluation(s, out, progress=progress, plots=plots, map_fn=_ray_map(ray, progress))
    except (DatasetError, ValueError) as e:  # RayUnavailable is a ValueError
        _fail(str(e))
    typer.echo(summary_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


def _evaluate_seg(dataset: Path, out: Path, noise_rate: float, seed: int, folds: int, image_size: int | None,
                  archs: str, epochs: int | None, batch_size: int, lr: float, device: str, progress: bool) -> None:
    from models.data import DatasetError
    from models.seg.detector import SegDetectorConfig
    from models.seg.evaluate import SegEvalSettings, run_seg_evaluation, seg_summary_table
    from models.seg.train import SegTrainConfig

    names = _seg_defaults(archs)
    try:
        s = SegEvalSettings(dataset=str(dataset), noise_rate=noise_rate, seed=seed, image_size=image_size, folds=folds,
                            archs=names, epochs=epochs, device=device,
                            train=SegTrainConfig(batch_size=min(batch_size, 16), lr=lr if lr != LrOpt.default
                                                 else SegTrainConfig().lr),
                            detector=SegDetectorConfig(seed=seed))
        results = run_seg_evaluation(s, out, progress=progress)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(seg_summary_table(results))
    typer.echo(f"wrote {out / 'results.json'}")


def _retrain(dataset: Path, out: Path, noise_rate: float, noise_model: str, seed: int, folds: int, image_size: int,
             max_samples: int | None, archs: str, epochs: int, batch_size: int, lr: float, device: str,
             saliency_weight: float, cut: str, budgets: str, test_fraction: float) -> None:
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.retrain import RetrainSettings, run_retrain, summary_table
    from models.train import TrainConfig

    try:
        rs = RetrainSettings(
            dataset=str(dataset), image_size=image_size, max_samples=max_samples, test_fraction=test_fraction,
            noise_rate=noise_rate, noise_model=noise_model,
            budgets=tuple(float(b) for b in budgets.split(",") if b.strip()),
            archs=tuple(a.strip() for a in archs.split(",") if a.strip()), folds=folds, seed=seed, device=device,
            train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr),
            detector=DetectorConfig(saliency_weight=saliency_weight, cut=cut))
        res = run_retrain(rs, out / "retrain.json")
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    typer.echo(summary_table(res))
    typer.echo(f"wrote {out / 'retrain.json'}")


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
) -> None:
    """Fit the ensemble on annotated data (labels, or masks with --task segmentation) and write a model bundle."""
    _setup(threads)
    if task == "segmentation":
        from models.data import DatasetError
        from models.seg.bundle import train_seg_bundle
        from models.seg.train import SegTrainConfig

        try:
            path = train_seg_bundle(dataset, out, image_size=image_size, archs=_seg_defaults(archs), folds=folds,
                                    epochs=epochs, seed=seed, mode=mode, device=device, progress=progress,
                                    verdicts_out=verdicts, cfg=SegTrainConfig(batch_size=min(batch_size, 16)))
        except (DatasetError, ValueError) as e:
            _fail(str(e))
        typer.echo(f"wrote bundle {path}")
        return
    if task != "labels":
        _fail(f"--task must be labels or segmentation, not {task!r}")
    from models.bundle import train_bundle
    from models.data import DatasetError
    from models.detector import DetectorConfig
    from models.train import TrainConfig

    try:
        path = train_bundle(dataset, out, image_size=image_size or LABEL_SIZE, archs=archs, seed=seed, device=device,
                            mode=mode, folds=folds,
                            train_cfg=TrainConfig(epochs=epochs or LABEL_EPOCHS, batch_size=batch_size, lr=lr),
                            detector=DetectorConfig(cut=cut), max_samples=max_samples, progress=progress,
                            verdicts_out=verdicts, repeats=repeats, map_fn=_ray_map(ray, progress))
    except (DatasetError, ValueError) as e:  # RayUnavailable is a ValueError
        _fail(str(e))
    typer.echo(f"wrote bundle {path}")
    if verdicts is not None:
        summary = json.loads((verdicts / "audit.json").read_text())
        typer.echo(f"training labels: {summary['verdicts']} -> {verdicts / 'verdicts.csv'}")


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
) -> None:
    """Score new data with a bundle: per-sample verdicts (its members never saw these samples)."""
    _setup(threads)
    if (dataset is None) == (dicom is None):
        _fail("give exactly one of --dataset PATH or --dicom DIR")
    from models.detector import CUT_FROM

    if cut_from is not None and cut_from not in CUT_FROM:
        _fail(f"--cut-from must be one of {', '.join(CUT_FROM)}, not {cut_from!r}")
    if dicom is not None and cut_from not in (None, "bundle"):
        _fail("--cut-from applies to --dataset audits; DICOM audits use the bundle's cut (recorded in the SR)")
    if dicom is not None:
        from service.audit import audit_dicom_dir  # offline DICOM audit

        summary = audit_dicom_dir(bundle, dicom, out, vocabulary=vocabulary, device=device, batch_size=batch_size)
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from models.bundle import BundleError, audit_dataset
    from models.data import DatasetError

    if _bundle_task(bundle) == "segmentation":
        from models.seg.bundle import audit_seg_dataset

        try:
            summary = audit_seg_dataset(bundle, dataset, out, device=device)  # type: ignore[arg-type]
        except (DatasetError, BundleError, ValueError) as e:
            _fail(str(e))
        typer.echo(json.dumps(summary, indent=2))
        return
    try:
        summary = audit_dataset(bundle, dataset, out, device=device, batch_size=batch_size,
                                cut_from=cut_from or "auto")
    except (DatasetError, BundleError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


def _bundle_task(bundle: Path) -> str:
    """``segmentation`` for a segmentation bundle, else ``labels`` (errors are left to the loader)."""
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return "labels"
    return "segmentation" if isinstance(meta, dict) and meta.get("task") == "segmentation" else "labels"


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
    app.command("train")(train)
    app.command("audit")(audit)
    app.command("evaluate")(evaluate)
