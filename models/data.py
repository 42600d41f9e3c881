"""One loader for labelled 2-D image data sets: image folders, CSV, npz / MedMNIST.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.preprocess import to_model_input

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


def _read_image(path: Path, size: int) -> np.ndarray:
    return to_model_input(read_image_file(path), size)


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folders(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """(paths, class names, groups) for ``root/<class>/*`` or ``root/<split>/<class>/*``."""
    while not _images_in(root) and len(_subdirs(root)) == 1:
        root = _subdirs(root)[0]
    subs = _subdirs(root)
    if not subs:
        raise DatasetError(f"{root}: no class folders (expected root/<class>/* or root/<split>/<class>/*)")
    paths: list[Path] = []
    classes: list[str] = []
    groups: list[str] = []
    if any(_images_in(s) for s in subs):  # root/<class>/*
        for s in subs:
            for p in _images_in(s):
                paths.append(p)
                classes.append(s.name)
                groups.append("all")
    else:  # root/<split>/<class>/*
        for split in subs:
            for s in _subdirs(split):
                for p in _images_in(s):
                    paths.append(p)
                    classes.append(s.name)
                    groups.append(split.name)
    if not paths:
        raise DatasetError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in class folders")
    return paths, classes, groups


def _scan_csv(path: Path) -> tuple[list[Path], list[str], list[str]]:
    paths: list[Path] = []
    classes: list[str] = []
    groups: list[str] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.lower(): c for c in (reader.fieldnames or [])}
        if "path" not in cols or "label" not in cols:
            raise DatasetError(f"{path}: CSV needs columns 'path' and 'label' (found {reader.fieldnames})")
        for row in reader:
            p = Path(row[cols["path"]])
            paths.append(p if p.is_absolute() else path.parent / p)
            classes.append(str(row[cols["label"]]))
            groups.append(str(row.get(cols.get("group", ""), "") or "all"))
    if not paths:
        raise DatasetError(f"{path}: CSV has no rows")
    return paths, classes, groups


def _load_npz(path: Path, size: int) -> LabelledImages:
    z = np.load(path, allow_pickle=False)
    keys = set(z.files)
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []
    if {"images", "labels"} <= keys:
        parts.append(("all", z["images"], z["labels"]))
    else:
        for split in ("train", "val", "test"):
            if f"{split}_images" in keys and f"{split}_labels" in keys:
                parts.append((split, z[f"{split}_images"], z[f"{split}_labels"]))
    if not parts:
        raise DatasetError(f"{path}: npz needs 'images'/'labels' or MedMNIST '{{train,val,test}}_{{images,labels}}'")
    imgs, labels, groups = [], [], []
    for split, x, y in parts:
        y = np.asarray(y).reshape(len(y), -1)[:, 0]
        for i in range(len(x)):
            imgs.append(to_model_input(x[i], size))
        labels.extend(y.tolist())
        groups.extend([split] * len(y))
    names = [str(c) for c in sorted(set(labels))]
    lookup = {c: i for i, c in enumerate(sorted(set(labels)))}
    if "class_names" in keys and len(z["class_names"]) == len(names):
        names = [str(c) for c in z["class_names"]]
    return LabelledImages(np.stack(imgs), np.array([lookup[v] for v in labels], dtype=np.int64), names, groups,
                          [f"{g}/{i}" for i, g in enumerate(groups)])


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
    if path.is_file() and path.suffix.lower() == ".npz":
        data = _load_npz(path, image_size)
    else:
        if path.is_file() and path.suffix.lower() == ".csv":
            paths, classes, groups = _scan_csv(path)
            base = path.parent
        elif path.is_dir():
            paths, classes, groups = _scan_folders(path)
            base = path
        else:
            raise DatasetError(f"{path}: expected an image folder, a .csv (path,label) or a .npz file")
        names = sorted(set(classes))
        lookup = {c: i for i, c in enumerate(names)}
        imgs = np.empty((len(paths), image_size, image_size), dtype=np.float32)
        it = range(len(paths))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="decode", unit="img")
        for i in it:
            try:
                imgs[i] = _read_image(paths[i], image_size)
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot read image {paths[i]}: {e}") from e
        ids = []
        for p in paths:
            try:
                ids.append(str(p.relative_to(base)))
            except ValueError:
                ids.append(str(p))
        data = LabelledImages(imgs, np.array([lookup[c] for c in classes], dtype=np.int64), names, groups, ids)
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
