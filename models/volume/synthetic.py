"""Synthetic volumes for tests and the demo: a bright ellipsoid (``ball``) and a striped slab (``slab``) in noise.

Each case has both structures at random places and sizes, on a grid with the given spacing, origin
and an axis-aligned direction, so the 3-D members learn them in a few epochs on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.volume.data import Geometry, Spacing, VolumeCase, VolumeDataset, write_volume

__all__ = ["make_volume_set", "write_volume_set", "SYNTHETIC_CLASSES"]

SYNTHETIC_CLASSES = ["ball", "slab"]


def _case(rng: np.random.Generator, shape: tuple[int, int, int], spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = shape
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij")
    ext = np.array(shape) * np.array(spacing)
    img = rng.normal(0.3, 0.06, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    # the slab: a box with stripes along the rows, in one half of the volume
    half = int(rng.integers(2))
    lo = ext * np.array([rng.uniform(0.2, 0.3), rng.uniform(0.15, 0.3), 0.1 + 0.45 * half])
    size = ext * np.array([rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.38)])
    box = (zz >= lo[0]) & (zz < lo[0] + size[0]) & (yy >= lo[1]) & (yy < lo[1] + size[1]) \
        & (xx >= lo[2]) & (xx < lo[2] + size[2])
    img[box] = 0.6 + 0.05 * np.sin(yy[box] * 2.0)
    lab[box] = 2
    # the ball: in the other half
    r = ext * np.array([rng.uniform(0.18, 0.26), rng.uniform(0.14, 0.2), rng.uniform(0.12, 0.16)])
    c = ext * np.array([rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.7), 0.72 - 0.45 * half])
    ball = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1.0
    img[ball] = 0.9
    lab[ball] = 1
    img += rng.normal(0, 0.05, shape).astype(np.float32)
    return (img * 1000).astype(np.float32), lab


def make_volume_set(n: int, shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0, *,
                    spacing: Spacing = (1.0, 1.0, 1.0), origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
                    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> VolumeDataset:
    """``n`` synthetic cases (classes ``ball`` and ``slab``) on a grid of ``shape`` (slices, rows, columns)."""
    rng = np.random.default_rng(seed)
    geo = Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),  # type: ignore[arg-type]
                   tuple(float(d) for d in direction))
    cases = []
    for i in range(n):
        img, lab = _case(rng, shape, geo.spacing)
        cases.append(VolumeCase(f"case_{i:03d}", img, lab, geo))
    return VolumeDataset(cases, list(SYNTHETIC_CLASSES), [1, 2], "arrays")


def write_volume_set(data: VolumeDataset, root: str | Path, *, layout: str = "msd",
                     labels: list[np.ndarray] | None = None) -> Path:
    """Write a data set as NIfTI in the MSD / nnU-Net layout (``msd``: imagesTr/case_0000.nii.gz,
    labelsTr/case.nii.gz, dataset.json) or as ``images/`` + ``masks/`` (with classes.txt).
    ``labels``: write these label maps instead of the data set's (e.g. corrupted ones)."""
    import json

    root = Path(root)
    labs = labels if labels is not None else [c.labels for c in data.cases]
    for case, lab in zip(data.cases, labs, strict=True):
        lut = np.array([0] + list(data.label_values), np.int64)
        if layout == "msd":
            write_volume(root / "imagesTr" / f"{case.stem}_0000.nii.gz", case.image, case.geometry)
            write_volume(root / "labelsTr" / f"{case.stem}.nii.gz", lut[lab].astype(np.uint8), case.geometry)
        else:
            write_volume(root / "images" / f"{case.stem}.nii.gz", case.image, case.geometry)
            write_volume(root / "masks" / f"{case.stem}.nii.gz", lut[lab].astype(np.uint8), case.geometry)
    if layout == "msd":
        meta = {"name": "labelqa synthetic volumes", "channel_names": {"0": "synthetic"},
                "labels": {"background": 0, **{n: v for n, v in zip(data.class_names, data.label_values, strict=True)}},
                "numTraining": len(data), "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    else:
        (root / "classes.txt").write_text("\n".join(data.class_names) + "\n")
    return root
