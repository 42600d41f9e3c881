"""``labelqa demo`` (``--task labels``): class labels, the label half of the demo.

Synthetic images whose class is a visible shape in a known place (``models.synthetic``), turned into
DICOM studies with TID 1500 SR labels by ``dicom_io.dicomize``, a fraction of the labels deliberately
flipped (recorded in the manifest). The bundle trains on separate shape images whose labels carry the
same error rate (``models.bundle.train_bundle``, 3-fold crossfit, so the score cut is learned on
out-of-fold predictions).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from models.bundles import LABELS
from models.corruption import check_noise_rate, corrupt_labels
from models.synthetic import make_shapes
from models.verdict import FLAGGED
from service.demo.common import DemoConfig, DemoData, DemoError, DemoReport, register_demo, tally
from service.demo.dicomize import dicomize
from service.runtime.jobs import DONE

if TYPE_CHECKING:  # annotation-only types
    from service.runtime.jobs import JobStore

__all__ = ["SHAPE_NAMES", "LabelDemo", "make_demo_data", "shapes_npz"]

SHAPE_NAMES = ("square", "disc", "bar", "cross")  # models.synthetic.shape_mask classes 0..3


def shapes_npz(path: Path, n: int, cfg: DemoConfig, seed: int, noise_rate: float = 0.0) -> list[str]:
    """Synthetic shape images as an npz data set; ``noise_rate`` of the labels flipped to another class."""
    import numpy as np

    data = make_shapes(n, n_classes=cfg.classes, size=cfg.image_size, seed=seed)
    names = list(SHAPE_NAMES[: cfg.classes])
    images = (np.clip(data.images, 0, 1) * 255).round().astype(np.uint8)
    labels, _ = corrupt_labels(np.asarray(data.labels, dtype=np.int64), cfg.classes, noise_rate, "uniform", seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, labels=labels, class_names=np.asarray(names))
    return names


def make_demo_data(cfg: DemoConfig, work: Path) -> DemoData:
    """Training images (clean labels) and the DICOM studies to audit (some labels flipped)."""
    if not 2 <= cfg.classes <= len(SHAPE_NAMES):
        raise DemoError(f"--classes must be between 2 and {len(SHAPE_NAMES)}")
    try:
        check_noise_rate(cfg.noise_rate)
    except ValueError as e:
        raise DemoError(f"--noise-rate: {e}") from None
    train_npz = work / "data" / "train.npz"
    # The bundle learns from annotated data with its own label errors, as a hospital's would be: the
    # detector sets its cut from the error rate it estimates there (without knowing which are wrong).
    names = shapes_npz(train_npz, cfg.train_images, cfg, seed=cfg.seed, noise_rate=cfg.noise_rate)
    audit_npz = work / "data" / "audit.npz"
    shapes_npz(audit_npz, cfg.studies, cfg, seed=cfg.seed + 1000)
    studies_dir = work / "studies"
    if studies_dir.exists():
        shutil.rmtree(studies_dir)
    # MR images (plane geometry): the drawn flags land where a viewer puts them
    res = dicomize(audit_npz, studies_dir, noise_rate=cfg.noise_rate, seed=cfg.seed, modality="OT", image_kind="mr")
    with open(res.manifest, newline="") as f:
        manifest = list(csv.DictReader(f))
    vocab = res.vocabulary or studies_dir / "vocabulary.toml"
    return DemoData(studies_dir, manifest, Path(vocab), train_npz, names)


def _train(cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
    # torch and MONAI: loaded only when the demo trains its bundle
    from models.bundle import train_bundle
    from models.train import TrainConfig

    echo(f"training a {len(cfg.archs.split(','))}-member bundle on {cfg.train_images} annotated synthetic images "
         f"({cfg.image_size} px, {cfg.epochs} epochs, labels with the same error rate; cached for the next run) ...")
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=3e-3, patience=cfg.epochs)
    return Path(train_bundle(data.train_npz, out, image_size=cfg.image_size, archs=cfg.archs, seed=cfg.seed,
                             device=cfg.device, mode="crossfit", folds=3, train_cfg=train_cfg, progress=False))


def _collect(report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str]) -> None:
    by_ann = {r["annotation_uid"]: r for r in data.manifest}
    for uid in study_uids:
        job = jobs.latest_for_study(uid)
        result = (job.result or {}) if job is not None else {}
        rows = result.get("rows", []) if job is not None and job.state == DONE else []
        if job is None or job.state != DONE:
            for m in (r for r in data.manifest if r["study_uid"] == uid):
                report.rows.append({"study_uid": uid, "annotation_uid": m["annotation_uid"],
                                    "given_label": m["written_label"], "consensus_label": None,
                                    "verdict": job.state if job else "missing", "agreement": None,
                                    "planted_error": m["true_label"] != m["written_label"],
                                    "reason": job.reason if job else None})
            continue
        for row in rows:
            ann = str(row.get("annotation_uid"))
            m = by_ann.get(ann, {})
            planted = bool(m) and m["true_label"] != m["written_label"]
            verdict = str(row.get("verdict"))
            report.rows.append({
                "study_uid": uid, "annotation_uid": ann, "image_uid": row.get("image_uid"),
                "given_label": row.get("given_label"), "consensus_label": row.get("consensus_label"),
                "verdict": verdict, "agreement": row.get("agreement"), "priority": row.get("priority"),
                "planted_error": planted, "true_label": m.get("true_label"),
            })
        report.outputs.setdefault("result_files", []).extend(result.get("outputs", []))
    tally(report, len(study_uids), LabelDemo.name)


class LabelDemo:
    """The label demo task."""

    name: ClassVar[str] = LABELS
    dimension: ClassVar[int] = 2
    noun: ClassVar[str] = "annotations"
    defaults: ClassVar[dict[str, Any]] = {}
    errors: ClassVar[str] = "label errors"

    def make_data(self, cfg: DemoConfig, work: Path) -> DemoData:
        return make_demo_data(cfg, work)

    def describe_data(self, cfg: DemoConfig, data: DemoData) -> str:
        n_planted = sum(1 for r in data.manifest if r["true_label"] != r["written_label"])
        return (f"made {len(data.manifest)} DICOM studies (synthetic {cfg.image_size} px images of "
                f"{', '.join(data.class_names)}; TID 1500 SR labels, {n_planted} flipped on purpose) in "
                f"{data.studies_dir}")

    def train_bundle(self, cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
        return _train(cfg, data, out, echo)

    def collect(self, report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str]) -> None:
        _collect(report, jobs, data, study_uids)

    def render_rows(self, report: DemoReport) -> list[str]:
        head = f"{'study':<14} {'annotation':<14} {'given':<8} {'consensus':<10} {'verdict':<22} {'agree':>6}  planted"
        lines = [head, "-" * len(head)]
        for r in sorted(report.rows, key=lambda r: (r["verdict"] not in FLAGGED, not r["planted_error"],
                                                    r["study_uid"])):
            agr = "" if r.get("agreement") is None else f"{r['agreement']:.2f}"
            lines.append(f"...{r['study_uid'][-11:]:<11} ...{str(r['annotation_uid'])[-11:]:<11} "
                         f"{str(r['given_label']):<8} {str(r['consensus_label']):<10} {r['verdict']:<22} {agr:>6}  "
                         f"{'YES' if r['planted_error'] else ''}")
        return lines


register_demo(LabelDemo())
