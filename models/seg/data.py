"""Segmentation data sets: images with masks (label maps), read into one model grid.

:func:`load_segmentation_dataset` reads ``DIR/images`` and ``DIR/masks`` (same file stems; PNG, JPEG,
TIFF, GIF; mask 0 = background, 255 or 1..K = classes, optional ``DIR/classes.txt`` naming classes
1..K one per line). :func:`load_retina` reads the DRIVE and CHASE_DB1 vessel sets with either human
observer; :func:`tile_dataset` cuts images into square tiles, the mask unit of the CPU benchmark.
Images go through ``models.preprocess`` (grey, [0, 1], bilinear); label maps are resized by area
(:func:`resize_label_map`, which is ``resize_mask`` for one class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data import IMAGE_SUFFIXES, DatasetError, read_image_file
from models.preprocess import resize_image, size_hw, to_grey, to_model_input

__all__ = ["SegDataset", "load_segmentation_dataset", "read_segmentation_items", "read_label_map", "resize_label_map",
           "load_retina", "tile_dataset", "fold_groups", "dataset_from_items", "RETINA_SETS", "default_data_root"]


@dataclass
class SegDataset:
    """Images (N, H, W) float32 in [0, 1], masks (N, H, W) int64 label maps (0 background, 1..K)."""

    images: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    stems: list[str] = field(default_factory=list)
    spacing: tuple[float, float] | None = None
    """Pixel spacing (row, column) in mm on this grid, when known."""

    def __post_init__(self) -> None:
        if self.images.shape != self.masks.shape or self.images.ndim != 3:
            raise DatasetError(f"images {self.images.shape} and masks {self.masks.shape} must both be (N, H, W)")
        if not self.stems:
            self.stems = [str(i) for i in range(len(self.images))]
        if len(self.stems) != len(self.images):
            raise DatasetError(f"{len(self.images)} images but {len(self.stems)} stems")
        top = int(self.masks.max()) if self.masks.size else 0
        if top > len(self.class_names):
            raise DatasetError(f"mask value {top} but only {len(self.class_names)} class names")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, idx: np.ndarray | list[int]) -> SegDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return SegDataset(self.images[idx], self.masks[idx], list(self.class_names),
                          [self.stems[i] for i in idx], self.spacing)


def default_data_root() -> Path:
    """Where the shared research sets live (``LABELQA_DATA_ROOT`` or ../shared/data/segmentation)."""
    return Path(os.environ.get("LABELQA_DATA_ROOT", "/work/shared/data/segmentation"))


def read_label_map(path: Path, n_classes: int | None = None) -> np.ndarray:
    """A mask file as an int64 (H, W) label map. With ``n_classes`` (the data set's ``classes.txt``), values
    0..K are the classes as they are. Otherwise, or with other values: two values (0/255, 0/1, or a palette's
    3/253) -> {0, 1}, the brighter being the class; one value v > 0 -> all ones; else the values are classes."""
    raw = read_image_file(path).astype(np.int64)
    if n_classes is not None and raw.min(initial=0) >= 0 and raw.max(initial=0) <= n_classes:
        return raw
    vals = np.unique(raw)
    if len(vals) == 2:
        return (raw == vals[1]).astype(np.int64)
    if len(vals) == 1:
        return (raw > 0).astype(np.int64)
    return raw


def resize_label_map(labels: np.ndarray, size: int | tuple[int, int], n_classes: int | None = None) -> np.ndarray:
    """Resize a label map by area: a target pixel takes the class covering most of it, when that class
    covers at least as much as the background (one class: inside where at least half was, as ``resize_mask``)."""
    lab = np.asarray(labels, dtype=np.int64)
    h, w = size_hw(size)
    if lab.shape == (h, w):
        return lab.copy()
    k = int(lab.max(initial=0)) if n_classes is None else n_classes
    out = np.zeros((h, w), np.int64)
    if k == 0:
        return out
    fr = np.stack([resize_image((lab == c).astype(np.float32), (h, w)) for c in range(k + 1)])
    best = 1 + np.argmax(fr[1:], axis=0)
    best_frac = np.take_along_axis(fr, best[None], 0)[0]
    keep = best_frac >= 0.5 if k == 1 else best_frac >= fr[0]  # k == 1: exactly models.preprocess.resize_mask
    out[keep] = best[keep]
    return out


def _by_stem(d: Path) -> dict[str, Path]:
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise DatasetError(f"{d}: two files with stem {p.stem!r} ({out[p.stem].name}, {p.name})")
        out[p.stem] = p
    return out


def read_segmentation_items(path: str | Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """``DIR/images`` + ``DIR/masks`` at native size: ([(stem, grey float32 image, int64 label map)], class names).

    Raises
    ------
    DatasetError
        Missing folders, unmatched stems, image/mask size mismatch, unreadable files.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"segmentation data set not found: {root} (expected a folder with images/ and masks/)")
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise DatasetError(f"{root}: a segmentation data set needs images/ and masks/ folders with the same file stems")
    imgs, masks = _by_stem(root / "images"), _by_stem(root / "masks")
    only_img, only_mask = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
    if only_img or only_mask:
        raise DatasetError(f"{root}: stems without a mask {only_img[:5]}, masks without an image {only_mask[:5]}")
    stems = sorted(imgs)
    if not stems:
        raise DatasetError(f"{root}/images: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names_file = root / "classes.txt"
    names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()] if names_file.is_file() else None
    items = []
    for s in stems:
        try:
            im, lab = to_grey(read_image_file(imgs[s])), read_label_map(masks[s], len(names) if names else None)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {s}: {e}") from e
        if im.shape != lab.shape:
            raise DatasetError(f"{s}: image {im.shape} and mask {lab.shape} differ in size")
        items.append((s, im, lab))
    k = max(int(lab.max(initial=0)) for _s, _im, lab in items)
    if names is not None and len(names) < k:
        raise DatasetError(f"{names_file}: {len(names)} names for mask values up to {k}")
    return items, names or (["foreground"] if k <= 1 else [f"class_{c}" for c in range(1, k + 1)])


def load_segmentation_dataset(path: str | Path, image_size: int | None = None) -> SegDataset:
    """Read ``DIR/images`` + ``DIR/masks`` (same stems) onto one grid.

    Parameters
    ----------
    path : the data set folder (``classes.txt`` optional: the names of classes 1..K, one a line).
    image_size : square model grid; ``None`` keeps the native size, which all images must then share.

    Raises
    ------
    DatasetError
        Missing folders, unmatched stems, image/mask size mismatch, unreadable files, mixed sizes
        without ``image_size``.
    """
    items, class_names = read_segmentation_items(path)
    return dataset_from_items(items, class_names, image_size, path)


def dataset_from_items(items: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str],
                       image_size: int | None = None, path: str | Path = "the data set") -> SegDataset:
    """:func:`read_segmentation_items`' output on one grid (``None``: the native size, which all must share)."""
    out_i = [im for _s, im, _lab in items]
    out_m = [lab for _s, _im, lab in items]
    if image_size is not None:
        out_i = [to_model_input(im, image_size) for im in out_i]
        out_m = [resize_label_map(m, image_size, len(class_names)) for m in out_m]
    shapes = {im.shape for im in out_i}
    if len(shapes) > 1:
        raise DatasetError(f"{path}: images have different sizes {sorted(shapes)[:4]}; "
                           "give an image size (--image-size)")
    return SegDataset(np.stack(out_i).astype(np.float32), np.stack(out_m).astype(np.int64), class_names,
                      [s for s, _im, _lab in items])


RETINA_SETS = {"drive": "retina_vessel_drive_2observers/DRIVE", "chase": "retina_vessel_chasedb1_2observers/CHASEDB1"}
"""The two retinal vessel sets with two human observers (observer 2: DRIVE test half, all of CHASE_DB1)."""


def _retina_pairs(name: str, observer: int, root: Path) -> list[tuple[str, Path, Path]]:
    base = root / RETINA_SETS[name]
    if not base.is_dir():
        raise DatasetError(f"{base}: retina set {name!r} not found (set LABELQA_DATA_ROOT)")
    pairs = []
    if name == "drive":
        for split in ("training", "test"):
            for img in sorted((base / split / "images").glob("*.tif")):
                num = img.stem.split("_")[0]
                m = base / split / f"{'1st' if observer == 1 else '2nd'}_manual" / f"{num}_manual{observer}.gif"
                if m.is_file():
                    pairs.append((img.stem, img, m))
    else:
        for img in sorted(base.glob("Image_*.jpg")):
            m = base / f"{img.stem}_{'1st' if observer == 1 else '2nd'}HO.png"
            if m.is_file():
                pairs.append((img.stem, img, m))
    return pairs


def load_retina(name: str, observer: int = 1, size: int = 256, *, root: Path | None = None,
                stems: list[str] | None = None) -> SegDataset:
    """DRIVE (``drive``: 40 images, observer 2 on the 20 test images) or CHASE_DB1 (``chase``: 28 images,
    both observers) with observer ``observer``'s vessel masks, resized to ``size`` x ``size``.
    The green channel is used (where vessels have their contrast). ``stems`` restricts to those images."""
    if name not in RETINA_SETS:
        raise DatasetError(f"unknown retina set {name!r}; one of {sorted(RETINA_SETS)}")
    if observer not in (1, 2):
        raise DatasetError(f"observer must be 1 or 2, not {observer}")
    from PIL import Image

    pairs = _retina_pairs(name, observer, root or default_data_root())
    if stems is not None:
        pairs = [p for p in pairs if p[0] in set(stems)]
    if not pairs:
        raise DatasetError(f"retina set {name!r}: no images with observer {observer} masks")
    ims, ms = [], []
    for _stem, ip, mp in pairs:
        with Image.open(ip) as im:
            green = np.asarray(im.convert("RGB"))[..., 1]
        ims.append(to_model_input(green, size))
        ms.append(resize_label_map(read_label_map(mp), size, 1))
    return SegDataset(np.stack(ims), np.stack(ms), ["vessel"], [p[0] for p in pairs])


def tile_dataset(ds: SegDataset, tile: int) -> SegDataset:
    """Cut every image (and mask) into non-overlapping ``tile`` x ``tile`` squares (edges dropped);
    stems become ``<stem>@<row>,<col>`` (the tile's top-left pixel)."""
    n, h, w = ds.images.shape
    if tile > min(h, w):
        raise DatasetError(f"tile {tile} is larger than the images ({h}x{w})")
    ims, ms, st = [], [], []
    for i in range(n):
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                ims.append(ds.images[i, y:y + tile, x:x + tile])
                ms.append(ds.masks[i, y:y + tile, x:x + tile])
                st.append(f"{ds.stems[i]}@{y},{x}")
    return SegDataset(np.stack(ims), np.stack(ms), list(ds.class_names), st, ds.spacing)


def fold_groups(ds: SegDataset, key=None) -> list[str]:
    """The cross-fitting group of every sample: its source image (the stem before ``@`` for tiles, or
    ``key(stem)``); groups whose images are identical (same pixels on the model grid, all samples)
    are merged, so that a duplicate pair never sits on both sides of a fold (BUSI has one)."""
    import hashlib

    base = [(key(s) if key is not None else s.split("@")[0]) for s in ds.stems]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(base):
        members.setdefault(g, []).append(i)
    first: dict[bytes, str] = {}
    alias: dict[str, str] = {}
    for g in sorted(members):
        h = hashlib.sha1()
        for i in sorted(members[g], key=lambda j: ds.stems[j]):
            h.update(np.ascontiguousarray(ds.images[i]).tobytes())
        alias[g] = first.setdefault(h.digest(), g)
    return [alias[g] for g in base]
