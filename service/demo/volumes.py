"""`labelqa demo --task segmentation --dims 3`: the volume half of the demo (data, bundle, the rows it prints).

Synthetic volumes (``models.volume.synthetic``: a bright ellipsoid ``ball`` and a striped ``slab`` in
noise, on a grid with real spacing), written as CT series with one SEG over each
(:func:`service.demo.dicomize.dicomize_volumes`), a share of them with a planted 3-D error of each
kind in turn (eroded, dilated, shifted in-plane, shifted by slices, slices dropped, slices added, a
component dropped, a blob added, the wrong segment type). The bundle's 3-D members train on separate
synthetic volumes, a quarter of whose masks carry the same kinds of errors. The service audits each
routed study per segment; one row per (study, segment).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from models.bundles import SEGMENTATION
from models.corruption import check_noise_rate
from models.verdict import FLAGGED
from models.volume.corruption import DEFAULT_VOLUME_KINDS, corrupt_volumes
from models.volume.data import Geometry, VolumeCase, VolumeDataset
from models.volume.synthetic import make_volume_set
from service.demo.common import (
    DemoConfig,
    DemoData,
    DemoError,
    DemoReport,
    collect_mask_rows,
    register_demo,
)
from service.demo.dicomize import DicomizeError, dicomize_volumes

if TYPE_CHECKING:  # annotation-only types
    from service.runtime.jobs import JobStore

__all__ = ["DEMO_VOLUME_ARCHS", "VolumeDemo", "make_volume_demo_data"]

DEMO_VOLUME_ARCHS = "unet3d-tiny,segresnet3d-tiny,attentionunet3d-tiny"
TRAIN_NOISE = 0.25
"""The share of the training volumes' masks that are wrong (the audited studies use ``--noise-rate``)."""
SPACING = (2.0, 1.0, 1.0)
"""Slice, row, column spacing (mm) of the demo's volumes: thicker slices than pixels, as in a CT."""


def make_volume_demo_data(cfg: DemoConfig, work: Path) -> DemoData:
    """Training volumes (a quarter of the masks wrong) and the DICOM studies (CT series + SEG) to audit."""
    try:
        check_noise_rate(cfg.noise_rate)
    except ValueError as e:
        raise DemoError(f"--noise-rate: {e}") from None
    if cfg.classes != 2:
        raise DemoError("--task segmentation --dims 3 has 2 structures (ball, slab)")
    shape = (cfg.image_size, cfg.image_size, cfg.image_size)
    train = make_volume_set(cfg.train_images, shape, seed=cfg.seed, spacing=SPACING)
    noisy, _ = corrupt_volumes([c.labels for c in train.cases], TRAIN_NOISE, DEFAULT_VOLUME_KINDS,
                               seed=cfg.seed + 1, n_classes=2, spacings=[c.geometry.spacing for c in train.cases])
    train_npz = work / "data" / "volume-train.npz"
    train_npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(train_npz, images=np.stack([c.image for c in train.cases]), labels=np.stack(noisy),
                        class_names=np.asarray(train.class_names), spacing=np.asarray(SPACING))
    audit = make_volume_set(cfg.studies, shape, seed=cfg.seed + 1000, spacing=SPACING, origin=(-40.0, -60.0, 120.0))
    studies_dir = work / "studies"
    if studies_dir.exists():
        shutil.rmtree(studies_dir)
    try:
        res = dicomize_volumes(audit, studies_dir, noise_rate=cfg.noise_rate, seed=cfg.seed, modality="CT",
                               dataset_name="demo-volumes")
    except DicomizeError as e:
        raise DemoError(str(e)) from None
    with open(res.manifest, newline="") as f:
        manifest = list(csv.DictReader(f))
    assert res.vocabulary is not None  # written beside the studies: the demo passes none
    return DemoData(studies_dir, manifest, res.vocabulary, train_npz, list(audit.class_names))


def _train(cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
    """Fit the demo's 3-D members (3-fold crossfit by case: the cut comes from out-of-fold masks) into ``out``."""
    # torch and MONAI: loaded only when the demo trains its bundle
    from models.volume.bundle import train_volume_bundle
    from models.volume.train import VolumeTrainConfig

    z = np.load(data.train_npz)
    geo = Geometry(tuple(float(v) for v in z["spacing"]))  # type: ignore[arg-type]
    names = [str(c) for c in z["class_names"]]
    train = VolumeDataset([VolumeCase(f"train_{i:03d}", img, lab, geo)
                           for i, (img, lab) in enumerate(zip(z["images"], z["labels"], strict=True))],
                          names, list(range(1, len(names) + 1)), "arrays")
    echo(f"training a {len(cfg.archs.split(','))}-member 3-D segmentation bundle on {len(train)} synthetic volumes "
         f"({cfg.image_size}^3 voxels, {cfg.epochs} epochs, a quarter of the masks wrong; cached for the next "
         f"run) ...")
    edge = min(16, cfg.image_size)
    path = train_volume_bundle(None, out, archs=cfg.archs, folds=3, epochs=cfg.epochs, seed=cfg.seed,
                               device=cfg.device, data=train, progress=False,
                               cfg=VolumeTrainConfig(epochs=cfg.epochs, patch=(edge, edge, edge), lr=1e-2))
    return Path(path)


def _volume_row_extra(row: Mapping[str, object], manifest_row: dict[str, str], planted: bool) -> dict[str, object]:
    """What a segment's row adds: its case, predicted Dice, key slices, slice range, 3-D regions, planted kind."""
    return {"case": manifest_row.get("case"), "predicted_dice": row.get("predicted_dice"),
            "key_slices": row.get("key_slices"), "slice_range": row.get("slice_range"),
            "regions": len(r) if isinstance(r := row.get("regions_3d"), list) else 0,
            "planted_kind": (manifest_row.get("planted_kind") or None) if planted else None}


def _render_rows(report: DemoReport) -> list[str]:
    """The per-segment table of the text output."""
    head = (f"{'study':<14} {'class':<6} {'verdict':<22} {'kind':<20} {'dice':>5} {'pred':>5} {'slices':>7}  "
            f"planted")
    lines = [head, "-" * len(head)]
    for r in sorted(report.rows, key=lambda r: (r["verdict"] not in FLAGGED, not r["planted_error"],
                                                r["study_uid"], r["class"])):
        dice = "" if r.get("dice") is None else f"{r['dice']:.2f}"
        pred = "" if r.get("predicted_dice") is None else f"{r['predicted_dice']:.2f}"
        sr = r.get("slice_range")
        slices = f"{sr[0]}-{sr[1]}" if sr else ""
        lines.append(f"...{r['study_uid'][-11:]:<11} {r['class']:<6} {r['verdict']:<22} "
                     f"{str(r.get('kind') or ''):<20} {dice:>5} {pred:>5} {slices:>7}  {r.get('planted') or ''}")
    return lines


class VolumeDemo:
    """The volume demo task (``--task segmentation --dims 3``)."""

    name: ClassVar[str] = SEGMENTATION
    dimension: ClassVar[int] = 3
    noun: ClassVar[str] = "segments"
    defaults: ClassVar[dict[str, Any]] = {"studies": 18, "train_images": 36, "image_size": 24, "epochs": 20,
                                           "noise_rate": 0.5, "archs": DEMO_VOLUME_ARCHS}
    errors: ClassVar[str] = "3-D mask errors"

    def make_data(self, cfg: DemoConfig, work: Path) -> DemoData:
        return make_volume_demo_data(cfg, work)

    def describe_data(self, cfg: DemoConfig, data: DemoData) -> str:
        n_planted = sum(1 for r in data.manifest if r.get("mask_corruption"))
        return (f"made {len(data.manifest)} DICOM studies (a synthetic CT series of {cfg.image_size}^3 voxels "
                f"with {', '.join(data.class_names)} and one SEG over it; {n_planted} SEGs with a planted 3-D error) "
                f"in {data.studies_dir}")

    def train_bundle(self, cfg: DemoConfig, data: DemoData, out: Path, echo: Callable[[str], None]) -> Path:
        return _train(cfg, data, out, echo)

    def collect(self, report: DemoReport, jobs: JobStore, data: DemoData, study_uids: list[str]) -> None:
        collect_mask_rows(report, jobs, data, study_uids, self.name, _volume_row_extra)

    def render_rows(self, report: DemoReport) -> list[str]:
        return _render_rows(report)


register_demo(VolumeDemo())
