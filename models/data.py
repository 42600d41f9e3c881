"""The one reader of labelled 2-D image data sets: image folders, CSV, npz / MedMNIST.

:func:`scan_dataset` lists a data set's images (labels, subgroups, lazy loaders, optional masks):
``labelqa dicomize``, ``labelqa train|evaluate`` and the demo all read data sets through it.

Every source becomes a :class:`LabelledImages`: greyscale float32 images in [0, 1] resized to a
square size, integer labels, the class vocabulary and a *group* per sample (the split folder such as
``train``/``test``, or ``all``): the subgroup used to report systematic disagreement. The class folder
is never part of the group (it is the label). Decoded arrays are cached in ``cache_dir`` under a key
made of the source path, its modification times and the size, so a second run skips decoding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from models.preprocess import to_model_input

__all__ = [
    "IMAGE_SUFFIXES", "DEFAULT_CACHE_DIR", "DatasetError", "LabelledImages", "read_image_file", "DatasetItem",
    "scan_dataset", "load_dataset", "stratified_subsample",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_CACHE_DIR = Path(os.environ.get("LABELQA_CACHE_DIR", Path.home() / ".cache" / "labelqa"))


class DatasetError(ValueError):
    """The data set path or its content cannot be read as a labelled image data set."""


@dataclass
class LabelledImages:
    """Images (N, H, W) float32 in [0, 1], labels (N,) int64 indexing ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.labels) != n:
            raise DatasetError(f"{n} images but {len(self.labels)} labels")
        if not self.groups:
            self.groups = ["all"] * n
        if not self.ids:
            self.ids = [str(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> LabelledImages:
        idx = np.asarray(idx)
        return LabelledImages(
            self.images[idx], self.labels[idx], list(self.class_names),
            [self.groups[i] for i in idx], [self.ids[i] for i in idx],
        )


def read_image_file(path: Path) -> np.ndarray:
    """An image file as (H, W) grey pixels at full resolution: uint8 (Pillow "L", BT.601 luma), or uint16
    for 16-bit greyscale files. The one image-file reader of training, ``dicomize`` and the demo."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16)
        if im.mode == "I":
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class DatasetItem:
    """One image of a data set, not yet decoded: where it came from, its label, its subgroup, loaders.

    ``load()`` gives the pixels as stored (any dtype, grey or colour, full resolution); ``load_mask()``
    (when the data set has masks) a bool (H, W) region, non-zero = inside.
    """

    source_path: str
    label: str
    group: str
    load: Callable[[], np.ndarray]
    load_mask: Callable[[], np.ndarray] | None = None


def _read_mask_file(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def _scan_folders(root: Path) -> list[DatasetItem]:
    """``root/<class>/*`` or ``root/<split>/<class>/*`` (a chain of single sub-folders is descended first)."""
    while not _images_in(root) and len(_subdirs(root)) == 1:
        root = _subdirs(root)[0]
    subs = _subdirs(root)
    if not subs:
        raise DatasetError(f"{root}: no class folders (expected root/<class>/* or root/<split>/<class>/*)")
    items: list[DatasetItem] = []

    def add(p: Path, cls: str, group: str) -> None:
        items.append(DatasetItem(str(p.relative_to(root)), cls, group, partial(read_image_file, p)))

    if any(_images_in(s) for s in subs):  # root/<class>/*
        for s in subs:
            for p in _images_in(s):
                add(p, s.name, "all")
    else:  # root/<split>/<class>/*
        for split in subs:
            for s in _subdirs(split):
                for p in _images_in(s):
                    add(p, s.name, split.name)
    if not items:
        raise DatasetError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in class folders")
    return items


def _scan_csv(path: Path) -> list[DatasetItem]:
    """A CSV with ``path,label`` (optional ``group`` and ``mask``; relative paths from the CSV's folder)."""
    items: list[DatasetItem] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in cols or "label" not in cols:
            raise DatasetError(f"{path}: CSV needs columns 'path' and 'label' (found {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            rel = (row[cols["path"]] or "").strip()
            label = (row[cols["label"]] or "").strip()
            if not rel or not label:
                raise DatasetError(f"{path} line {n}: empty path or label")
            img = Path(rel) if Path(rel).is_absolute() else path.parent / rel
            if not img.is_file():
                raise DatasetError(f"{path} line {n}: image not found: {rel}")
            mask_loader: Callable[[], np.ndarray] | None = None
            if "mask" in cols and (row[cols["mask"]] or "").strip():
                mp = path.parent / row[cols["mask"]].strip()
                if not mp.is_file():
                    raise DatasetError(f"{path} line {n}: mask not found: {mp}")
                mask_loader = partial(_read_mask_file, mp)
            group = str(row.get(cols.get("group", ""), "") or "all").strip() or "all"
            items.append(DatasetItem(rel, label, group, partial(read_image_file, img), mask_loader))
    if not items:
        raise DatasetError(f"{path}: CSV has no rows")
    return items


def _npz_image(images: np.ndarray, i: int) -> np.ndarray:
    return np.asarray(images[i])


def _npz_mask(masks: np.ndarray, i: int) -> np.ndarray:
    return np.asarray(masks[i]) > 0


def _npz_class_names(z, class_names: list[str] | None) -> list[str] | None:
    if class_names is None and "class_names" in z.files:
        class_names = [str(c) for c in z["class_names"].tolist()]
    return class_names


def _scan_npz(path: Path, class_names: list[str] | None) -> list[DatasetItem]:
    """``images``/``labels`` or MedMNIST ``{train,val,test}_{images,labels}``; optional ``class_names`` and
    ``masks`` / ``{split}_masks`` (N, H, W), non-zero = region. Integer labels without names become
    ``class_<n>``."""
    z = np.load(path, allow_pickle=False)
    keys = set(z.files)
    class_names = _npz_class_names(z, class_names)
    splits: list[tuple[str, str, str, str | None]] = []
    if {"images", "labels"} <= keys:
        splits.append(("", "images", "labels", "masks" if "masks" in keys else None))
    for split in ("train", "val", "test"):
        if f"{split}_images" in keys and f"{split}_labels" in keys:
            splits.append((split, f"{split}_images", f"{split}_labels",
                           f"{split}_masks" if f"{split}_masks" in keys else None))
    if not splits:
        raise DatasetError(f"{path}: npz needs 'images'/'labels' or MedMNIST '{{train,val,test}}_{{images,labels}}' "
                           f"(has {sorted(keys)})")
    items: list[DatasetItem] = []
    for split, ik, lk, mk in splits:
        images, labels = z[ik], np.asarray(z[lk])
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(
                f"{path}: {lk} must be one label per image (shape {labels.shape} vs {len(images)} images)")
        masks = z[mk] if mk else None
        if masks is not None and len(masks) != len(images):
            raise DatasetError(f"{path}: {mk} has {len(masks)} masks for {len(images)} images")
        for i in range(len(images)):
            lab = labels[i]
            if isinstance(lab, (int, np.integer)):
                idx = int(lab)
                if class_names is not None:
                    if not 0 <= idx < len(class_names):
                        raise DatasetError(f"{path}: {lk}[{i}] = {idx} has no class name")
                    name = class_names[idx]
                else:
                    name = f"class_{idx}"
            else:
                name = str(lab)
            items.append(DatasetItem(
                f"{path.name}:{split + '/' if split else ''}{i}", name, split or "all",
                partial(_npz_image, images, i),
                partial(_npz_mask, masks, i) if masks is not None else None,
            ))
    return items


def scan_dataset(path: str | Path, *, class_names: list[str] | None = None) -> list[DatasetItem]:
    """The images of a labelled data set, in a stable order, not yet decoded: the one data-set reader.

    Layouts: image folders ``root/<class>/*`` and ``root/<split>/<class>/*``; a CSV ``path,label``
    (optional ``group``, ``mask``); an npz (``images``/``labels`` or MedMNIST-style splits, optional
    ``class_names`` and masks). ``class_names`` names integer npz labels. Raises DatasetError.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _scan_npz(path, class_names)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _scan_csv(path)
    if path.is_dir():
        return _scan_folders(path)
    raise DatasetError(f"{path}: expected an image folder, a .csv (path,label) or a .npz file")


def _cache_key(path: Path, size: int) -> str:
    h = hashlib.sha256(f"{path.resolve()}|{size}|v2".encode())  # v2: models.preprocess (float resize, BT.601)
    st = path.stat()
    h.update(f"{st.st_mtime_ns}|{st.st_size}".encode())
    if path.is_dir():
        for sub in sorted(path.rglob("*")):
            if sub.is_dir():
                h.update(f"{sub}|{sub.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_dataset(path: str | Path, image_size: int = 64, *, cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 progress: bool = False) -> LabelledImages:
    """Load an image folder, a ``path,label`` CSV or an npz file as greyscale ``image_size`` squares."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    if image_size < 8:
        raise DatasetError(f"image size {image_size} is too small (>= 8)")
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{path.name}-{image_size}-{_cache_key(path, image_size)}.npz"
        if cache_file.is_file():
            z = np.load(cache_file, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            return LabelledImages(z["images"], z["labels"], meta["class_names"], meta["groups"], meta["ids"])
    items = scan_dataset(path)
    names = sorted({it.label for it in items})
    if path.is_file() and path.suffix.lower() == ".npz":
        given = _npz_class_names(np.load(path, allow_pickle=False), None)
        if given is not None and set(names) <= set(given):
            names = [c for c in given if c in set(names)]  # the npz's own class order
    lookup = {c: i for i, c in enumerate(names)}
    imgs = np.empty((len(items), image_size, image_size), dtype=np.float32)
    it = range(len(items))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="decode", unit="img")
    for i in it:
        try:
            imgs[i] = to_model_input(items[i].load(), image_size)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read image {items[i].source_path}: {e}") from e
    data = LabelledImages(imgs, np.array([lookup[x.label] for x in items], dtype=np.int64), names,
                          [x.group for x in items], [x.source_path for x in items])
    if len(data.class_names) < 2:
        raise DatasetError(f"{path}: needs at least 2 classes, found {data.class_names}")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        meta = json.dumps({"class_names": data.class_names, "groups": data.groups, "ids": data.ids})
        np.savez(tmp, images=data.images, labels=data.labels, meta=np.array(meta))
        os.replace(tmp, cache_file)
    return data


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subsample of size ``n`` (sorted)."""
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return np.arange(len(labels))
    idx = []
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    quota[np.argsort(-counts)[: n - quota.sum()]] += 1
    for c, q in zip(classes, quota, strict=True):
        idx.extend(rng.choice(np.flatnonzero(labels == c), size=q, replace=False).tolist())
    return np.sort(np.array(idx))
