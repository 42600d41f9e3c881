"""The bundle format that every kind of model bundle shares, and the registry that loads each kind.

Layout (the MONAI bundle layout)::

    BUNDLE/configs/metadata.json   format, task, dims, class names, input grid, thresholds, members
                                   (file + sha256 each), versions, content hash (sha256 of the metadata)
    BUNDLE/configs/inference.json  how to rebuild each member
    BUNDLE/models/*.pt             the members' state dicts

The metadata's ``task`` says what the bundle audits: ``labels`` (class labels of images,
:mod:`models.bundle`) or ``segmentation`` (masks: :mod:`models.seg.bundle` in 2-D, :mod:`models.volume.bundle`
3-D), and ``dims`` in how
many dimensions. :func:`load_bundle` finds the loader for a (task, dims) pair in :data:`LOADERS`;
adding a kind of bundle is one line there and a module with its loader. :class:`BundleInfo` is what
a bundle says about itself without its weights (what reading and writing a study's results need);
every loaded bundle carries one and has the same :class:`Bundle` properties.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BUNDLE_FORMAT", "LABELS", "SEGMENTATION", "LOADERS", "BundleError", "Bundle", "BundleInfo", "task_of",
    "sha256_file", "content_hash", "read_bundle_meta", "read_bundle_info", "member_file", "write_bundle_configs",
    "load_bundle",
]

BUNDLE_FORMAT = "labelqa-bundle/1"
LABELS = "labels"
SEGMENTATION = "segmentation"

LOADERS: dict[tuple[str, int], str] = {
    (LABELS, 2): "models.bundle:load_label_bundle",
    (SEGMENTATION, 2): "models.seg.bundle:load_seg_bundle",
    (SEGMENTATION, 3): "models.volume.bundle:load_volume_bundle",
}
"""(task, dims) -> ``module:function`` that loads such a bundle (imported when first needed)."""


class BundleError(ValueError):
    """The bundle directory is missing, incomplete, altered, or of a kind this labelqa cannot load."""


def task_of(meta: Mapping[str, Any]) -> tuple[str, int]:
    """A bundle's (task, dims) from its metadata.

    Label bundles written before the task registry carry a sentence in ``task``; they are label bundles.
    """
    task = str(meta.get("task", LABELS))
    if task != SEGMENTATION:
        task = LABELS
    return task, int(meta.get("dims", 2))


@runtime_checkable
class Bundle(Protocol):
    """What every bundle, loaded or only described, tells the service about itself."""

    @property
    def path(self) -> Path: ...
    @property
    def meta(self) -> Mapping[str, Any]: ...
    @property
    def task(self) -> str: ...
    @property
    def dimension(self) -> int: ...
    @property
    def class_names(self) -> list[str]: ...
    @property
    def content_hash(self) -> str: ...
    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class BundleInfo:
    """A bundle's description without its weights: its checked metadata and the facts read from it."""

    path: Path
    meta: Mapping[str, Any] = field(repr=False)

    @property
    def task(self) -> str:
        return task_of(self.meta)[0]

    @property
    def dimension(self) -> int:
        return task_of(self.meta)[1]

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.meta["class_names"]]

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "0"))

    @property
    def archs(self) -> list[str]:
        """The member architectures, in order, once each."""
        return list(dict.fromkeys(str(m["arch"]) for m in self.meta.get("members", [])))


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(meta: Mapping[str, object]) -> str:
    """The sha256 of the metadata without its own ``content_hash`` (keys sorted)."""
    body = {k: v for k, v in meta.items() if k != "content_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def read_bundle_meta(path: Path, what: str = "labelqa bundle") -> dict[str, Any]:
    """A bundle's ``configs/metadata.json``, checked: present, a known format, content hash intact."""
    meta_file = Path(path) / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{path}: not a {what} (configs/metadata.json missing); make one with labelqa train")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: configs/metadata.json is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(f"{path}: unsupported bundle format {got!r} (expected {BUNDLE_FORMAT})")
    if content_hash(meta) != meta.get("content_hash"):
        raise BundleError(f"{path}: metadata.json was modified (content hash mismatch)")
    return meta


def read_bundle_info(path: str | Path) -> BundleInfo:
    """A bundle's checked description (no weights are read; :func:`load_bundle` checks the member files)."""
    path = Path(path)
    info = BundleInfo(path, read_bundle_meta(path))
    if (info.task, info.dimension) not in LOADERS:
        raise BundleError(f"{path}: a {info.dimension}-D {info.task} bundle, which this labelqa cannot load "
                          f"(known: {sorted(LOADERS)})")
    return info


def member_file(path: Path, m: Mapping[str, object]) -> Path:
    """A member's weights file, checked against the sha256 the metadata records."""
    f = Path(path) / str(m["file"])
    if not f.is_file():
        raise BundleError(f"{path}: member file {m['file']} missing")
    if sha256_file(f) != m["sha256"]:
        raise BundleError(f"{path}: member file {m['file']} does not match its recorded sha256")
    return f


def write_bundle_configs(out: Path, meta: Mapping[str, object], inference: Mapping[str, object]) -> dict[str, object]:
    """Write ``configs/metadata.json`` (with ``format`` and its content hash) and ``configs/inference.json``;
    returns the metadata as written. The member files must already be in ``out/models``."""
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    meta = {"format": BUNDLE_FORMAT, **{k: v for k, v in meta.items() if k not in ("format", "content_hash")}}
    meta["content_hash"] = content_hash(meta)
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    return meta


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle of any kind (metadata hash, member file hashes) with its task's loader."""
    info = read_bundle_info(path)
    module, _, name = LOADERS[(info.task, info.dimension)].partition(":")
    loader = getattr(importlib.import_module(module), name)
    bundle: Bundle = loader(info)
    return bundle
