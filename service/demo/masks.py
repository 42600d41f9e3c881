"""`labelqa demo --task segmentation`: the mask half of the demo (data, bundle, the rows it prints).

Synthetic images with shapes to segment (``models.seg.synthetic``: discs and striped boxes), some
masks corrupted on purpose by ``models.seg.corruption`` (eroded, dilated, shifted, a component
dropped, a false blob added, a segment of the wrong type), written as image + DICOM SEG studies
by ``dicom_io.dicomize``. The bundle trains on separate shape images whose masks carry the same
kinds of errors at the same rate, as a hospital's would. The service part is the label demo's.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dicom_io.dicomize import StudyItem, write_studies
from dicom_io.vocabulary import Vocabulary
from models.bundles import SEGMENTATION
from models.corruption import check_noise_rate
from models.preprocess import to_stored_grey
from models.seg.corruption import corrupt_masks
from models.seg.data import SegDataset
from models.seg.synthetic import make_shape_masks
from models.verdict import FLAGGED
from service.demo.common import (
    DEMO_ARCHS,
    DemoConfig,
    DemoData,
    DemoError,
    DemoReport,
    collect_mask_rows,
    register_demo,
)
from service.demo.dicomize import corruption_note

if TYPE_CHECKING:  # annotation-only types
    from service.runtime.jobs import JobStore

__all__ = ["DEMO_SEG_ARCHS", "MaskDemo", "make_seg_demo_data"]

DEMO_SEG_ARCHS = "unet-tiny,segresnet-tiny,attentionunet-tiny"


def make_seg_demo_data(cfg: DemoConfig, work: Path) -> DemoData:
    """Training set (images/ + masks/, some masks wrong) and the DICOM studies (image + SEG) to audit."""
    try:
        check_noise_rate(cfg.noise_rate)
    except ValueError as e:
        raise DemoError(f"--noise-rate: {e}") from None
    if not 1 <= cfg.classes <= 2:
        raise DemoError("--task segmentation has 1 or 2 shape classes (disc, box)")
    train = make_shape_masks(cfg.train_images, cfg.image_size, seed=cfg.seed, n_classes=cfg.classes)
    noisy, _ = corrupt_masks(train.masks, cfg.noise_rate, seed=cfg.seed + 1, n_classes=cfg.classes)
    train_dir = work / "data" / "seg-train.npz"
    train_dir.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(train_dir, images=train.images, masks=noisy, class_names=np.asarray(train.class_names))
    audit = make_shape_masks(cfg.studies, cfg.image_size, seed=cfg.seed + 1000, n_classes=cfg.classes)
    written, records = corrupt_masks(audit.masks, cfg.noise_rate, seed=cfg.seed, n_classes=cfg.classes)
    notes = {r.index: corruption_note(r.op, audit.masks[r.index], written[r.index], audit.class_names)
             for r in records}
    names = list(audit.class_names)
    items = [
        StudyItem(f"{audit.stems[i]}.png", "", "", partial(to_stored_grey, audit.images[i]),
                  mask=written[i], mask_classes=names, mask_corruption=notes.get(i, ""))
        for i in range(len(audit))
    ]
    studies_dir = work / "studies"
    if studies_dir.exists():
        shutil.rmtree(studies_dir)
    studies_dir.mkdir(parents=True)
    vocabulary = Vocabulary.from_class_names(names)
    vocab_path = studies_dir / "vocabulary.toml"
    vocabulary.to_toml(vocab_path)
    res = write_studies(items, studies_dir, vocabulary=vocabulary, dataset_name="demo-shapes-seg", modality="OT",
                        vocabulary_path=vocab_path)
    with open(res.manifest, newline="") as f:
        manifest = list(csv.DictReader(f))
    return DemoData(studies_dir, manifest, vocab_path, train_dir, names)


def _train(cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
    """Fit the demo's segmenters (3-fold crossfit: the cut comes from out-of-fold masks) into ``out``."""
    # torch and MONAI: loaded only when the demo trains its bundle
    from models.seg.bundle import train_seg_bundle
    from models.seg.train import SegTrainConfig

    z = np.load(data.train_npz)
    train = SegDataset(z["images"], z["masks"], [str(c) for c in z["class_names"]])
    archs = cfg.archs if cfg.archs != DEMO_ARCHS else DEMO_SEG_ARCHS
    echo(f"training a {len(archs.split(','))}-member segmentation bundle on {len(train)} synthetic images "
         f"({cfg.image_size} px, {cfg.epochs} epochs, masks with the same error rate; cached for the next run) ...")
    path = train_seg_bundle(None, out, image_size=cfg.image_size, archs=archs, folds=3, epochs=cfg.epochs,
                            seed=cfg.seed, device=cfg.device, data=train, progress=False,
                            cfg=SegTrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size))
    return Path(path)


def _mask_row_extra(row: Mapping[str, object], _manifest_row: dict[str, str], _planted: bool) -> dict[str, object]:
    """What a 2-D mask row adds: its source frame and the number of regions of disagreement."""
    regions = row.get("regions")
    return {"image_uid": row.get("image_uid"), "regions": len(regions) if isinstance(regions, list) else 0}


def _render_rows(report: DemoReport) -> list[str]:
    """The per-mask table of the text output."""
    head = f"{'study':<14} {'class':<6} {'verdict':<22} {'kind':<20} {'dice':>5} {'agree':>6}  planted"
    lines = [head, "-" * len(head)]
    for r in sorted(report.rows, key=lambda r: (r["verdict"] not in FLAGGED, not r["planted_error"],
                                                r["study_uid"], r["class"])):
        dice = "" if r.get("dice") is None else f"{r['dice']:.2f}"
        agr = "" if r.get("agreement") is None else f"{r['agreement']:.2f}"
        lines.append(f"...{r['study_uid'][-11:]:<11} {r['class']:<6} {r['verdict']:<22} {str(r.get('kind') or ''):<20} "
                     f"{dice:>5} {agr:>6}  {r.get('planted') or ''}")
    return lines


class MaskDemo:
    """The mask demo task (``--task segmentation``)."""

    name: ClassVar[str] = SEGMENTATION
    dimension: ClassVar[int] = 2
    noun: ClassVar[str] = "masks"
    defaults: ClassVar[dict[str, Any]] = {"studies": 24, "train_images": 64, "image_size": 32, "epochs": 10,
                                           "noise_rate": 0.25, "archs": DEMO_SEG_ARCHS}
    errors: ClassVar[str] = "mask errors"

    def make_data(self, cfg: DemoConfig, work: Path) -> DemoData:
        return make_seg_demo_data(cfg, work)

    def describe_data(self, cfg: DemoConfig, data: DemoData) -> str:
        n_planted = sum(1 for r in data.manifest if r.get("mask_corruption"))
        return (f"made {len(data.manifest)} DICOM studies (synthetic {cfg.image_size} px images of "
                f"{', '.join(data.class_names)}; DICOM SEG masks, {n_planted} corrupted on purpose) in "
                f"{data.studies_dir}")

    def train_bundle(self, cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
        return _train(cfg, data, out, echo)

    def collect(self, report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str]) -> None:
        collect_mask_rows(report, jobs, data, study_uids, self.name, _mask_row_extra)

    def render_rows(self, report: DemoReport) -> list[str]:
        return _render_rows(report)


register_demo(MaskDemo())
