"""Volume data sets: NIfTI / NRRD / MHA read with their geometry; the MSD / nnU-Net layout and images/ + masks/.

:func:`read_volume` reads one file with SimpleITK into an array ``(slices, rows, columns)`` and its
:class:`Geometry` (spacing ``(z, y, x)`` mm, origin and direction as SimpleITK gives them: LPS patient
coordinates, the direction's columns the index axes ``x`` (column), ``y`` (row), ``z`` (slice)).
:func:`load_volume_dataset` reads a folder in either layout:

- the Medical Segmentation Decathlon / nnU-Net layout: ``imagesTr/`` + ``labelsTr/`` + ``dataset.json``
  with its ``labels`` map (MSD ``{"0": "background", "1": "Anterior"}`` or nnU-Net v2
  ``{"background": 0, "Anterior": 1}``); images named like their label or with nnU-Net's channel
  suffix ``_0000`` (only channel 0 is read; other channels are listed in ``notes``);
- ``images/`` + ``masks/`` holding volumes with the same stems (optional ``classes.txt`` naming label
  values 1..K, one per line).

Every label map is checked against its image (same shape, spacing, origin and direction within a
tolerance) and against the label map of the data set (a value that is not a class is an error), and
is stored with class indices 1..K (``VolumeDataset.label_values`` keeps the file values). 2-D image
folders are ``models.seg.data``'s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data import DatasetError

__all__ = ["VOLUME_SUFFIXES", "Spacing", "Geometry", "VolumeCase", "VolumeDataset", "read_volume", "write_volume",
           "volume_stem", "is_volume_dataset", "load_volume_dataset", "read_labels_map"]

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File endings read as volumes (SimpleITK's NIfTI, NRRD and MetaImage readers)."""

Spacing = tuple[float, float, float]
"""(z, y, x) mm: slices, rows, columns."""

SPACING_RTOL, ORIGIN_ATOL_MM, DIRECTION_ATOL = 1e-3, 1e-2, 1e-3
"""How close an image's and its label's geometry must be (float round-off in writers is common)."""


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels lie in the patient: spacing ``(z, y, x)`` mm, origin (x, y, z) mm of voxel
    (0, 0, 0), direction (3 x 3 row-major; column j is the direction of index axis j = x, y, z)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise DatasetError(f"spacing must be three positive numbers (z, y, x) mm, got {self.spacing}")
        if len(self.origin) != 3 or len(self.direction) != 9:
            raise DatasetError(f"origin needs 3 and direction 9 numbers, got {len(self.origin)} and "
                               f"{len(self.direction)}")

    @property
    def matrix(self) -> np.ndarray:
        """The 3 x 3 direction matrix."""
        return np.asarray(self.direction, np.float64).reshape(3, 3)

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_patient(self, zyx: np.ndarray | list | tuple) -> np.ndarray:
        """Voxel indices ``(..., 3)`` as (slice, row, column), fractional allowed -> patient (x, y, z) mm."""
        idx = np.asarray(zyx, np.float64)
        ijk = idx[..., ::-1] * np.asarray(self.spacing[::-1])  # (x, y, z) index times (sx, sy, sz)
        return np.asarray(self.origin) + ijk @ self.matrix.T

    def close_to(self, other: Geometry) -> bool:
        """Same grid within float tolerance (what an image and its label must share)."""
        return (np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0)
                and np.allclose(self.origin, other.origin, atol=ORIGIN_ATOL_MM)
                and np.allclose(self.direction, other.direction, atol=DIRECTION_ATOL))

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(float(v) for v in d["spacing"]), tuple(float(v) for v in d["origin"]),  # type: ignore[arg-type]
                   tuple(float(v) for v in d["direction"]))


@dataclass
class VolumeCase:
    """One image volume and its label map on the same grid."""

    stem: str
    image: np.ndarray
    """(slices, rows, columns) float32, the file's intensities."""
    labels: np.ndarray
    """(slices, rows, columns) uint8/int16 class indices: 0 background, 1..K the data set's classes."""
    geometry: Geometry

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


@dataclass
class VolumeDataset:
    """Cases with class names (class k = label value ``label_values[k - 1]`` in the files)."""

    cases: list[VolumeCase]
    class_names: list[str]
    label_values: list[int] = field(default_factory=list)
    layout: str = "arrays"
    """``msd`` (imagesTr/labelsTr/dataset.json), ``images_masks`` or ``arrays`` (built in memory)."""
    root: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.label_values:
            self.label_values = list(range(1, len(self.class_names) + 1))
        if len(self.label_values) != len(self.class_names):
            raise DatasetError(f"{len(self.class_names)} class names but {len(self.label_values)} label values")
        k = len(self.class_names)
        for c in self.cases:
            if c.image.shape != c.labels.shape or c.image.ndim != 3:
                raise DatasetError(f"{c.stem}: image {c.image.shape} and labels {c.labels.shape} must both be "
                                   "(slices, rows, columns)")
            top = int(c.labels.max(initial=0))
            if top > k or int(c.labels.min(initial=0)) < 0:
                raise DatasetError(f"{c.stem}: class index {top} but only {k} classes {self.class_names}")

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def stems(self) -> list[str]:
        return [c.stem for c in self.cases]

    def subset(self, idx: list[int] | np.ndarray) -> VolumeDataset:
        return VolumeDataset([self.cases[int(i)] for i in idx], list(self.class_names), list(self.label_values),
                             self.layout, self.root, list(self.notes))


def volume_stem(path: Path) -> str | None:
    """The file name without its volume ending, or None when it is not a volume file."""
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return None


def _as_3d(img) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{img.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector "
                           "image); give one channel per file (nnU-Net: case_0000, case_0001, ...)")
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)
    if dim == 2:
        sx, sy = img.GetSpacing()
        ox, oy = img.GetOrigin()
        d = img.GetDirection()
        geo = Geometry((1.0, float(sy), float(sx)), (float(ox), float(oy), 0.0),
                       (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0))
        return arr[None], geo
    if dim == 4:
        if img.GetSize()[3] != 1:
            raise DatasetError(f"a 4-D image with {img.GetSize()[3]} channels; give one channel per file "
                               "(nnU-Net: case_0000, case_0001, ...)")
        img = img[:, :, :, 0]
        arr = sitk.GetArrayFromImage(img)
    elif dim != 3:
        raise DatasetError(f"a {dim}-D image; volumes are 3-D (or 2-D, read as one slice)")
    sp = img.GetSpacing()
    geo = Geometry((float(sp[2]), float(sp[1]), float(sp[0])), tuple(float(v) for v in img.GetOrigin()),  # type: ignore[arg-type]
                   tuple(float(v) for v in img.GetDirection()))
    return arr, geo


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """One volume file -> (array (slices, rows, columns) in the file's dtype, geometry).

    Raises
    ------
    DatasetError
        Unreadable file, vector voxels, more than one channel, fewer than 2 or more than 4 dimensions.
    """
    import SimpleITK as sitk

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise DatasetError(f"cannot read volume {p}: {first}") from e
    try:
        return _as_3d(img)
    except DatasetError as e:
        raise DatasetError(f"{p}: {e}") from e


def write_volume(path: str | Path, array: np.ndarray, geometry: Geometry | None = None) -> Path:
    """Write an array (slices, rows, columns) with its geometry (NIfTI, NRRD or MHA by the file ending)."""
    import SimpleITK as sitk

    geometry = geometry or Geometry()
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in geometry.origin))
    img.SetDirection(tuple(float(v) for v in geometry.direction))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(p), useCompression=True)
    return p


def read_labels_map(labels: dict) -> tuple[list[str], list[int]]:
    """A ``dataset.json`` ``labels`` map -> (class names, label values), background left out.

    Accepts the MSD form ``{"0": "background", "1": "Liver"}`` and nnU-Net v2's ``{"background": 0, "Liver": 1}``.
    """
    if not isinstance(labels, dict) or not labels:
        raise DatasetError("dataset.json: 'labels' must be a non-empty map of label values and names")
    pairs: list[tuple[int, str]] = []
    for key, val in labels.items():
        if isinstance(val, (list, dict)):
            raise DatasetError(f"dataset.json: label {key!r} is a region ({val}); only plain label values are read")
        try:
            pairs.append((int(key), str(val)) if str(key).lstrip("-").isdigit() else (int(val), str(key)))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"dataset.json: cannot read label {key!r}: {val!r}") from e
    values = [v for v, _n in pairs]
    if len(set(values)) != len(values):
        raise DatasetError(f"dataset.json: label values repeat: {sorted(values)}")
    if any(v < 0 for v in values):
        raise DatasetError(f"dataset.json: negative label values {sorted(v for v in values if v < 0)}")
    fg = sorted((v, n) for v, n in pairs if v != 0)
    if not fg:
        raise DatasetError("dataset.json: no foreground labels (only background)")
    return [n for _v, n in fg], [v for v, _n in fg]


def _files(d: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        stem = volume_stem(p)
        if stem is None or p.name.startswith(".") or not p.is_file():
            continue
        if stem in out:
            raise DatasetError(f"{d}: two volumes with stem {stem!r} ({out[stem].name}, {p.name})")
        out[stem] = p
    return out


def _pair(images: dict[str, Path], labels: dict[str, Path], where: str,
          notes: list[str]) -> list[tuple[str, Path, Path]]:
    """(case, image, label): the image named like the label, or with nnU-Net's channel suffix ``_0000``."""
    pairs, used = [], set()
    extra_channels = 0
    for stem in sorted(labels):
        img = images.get(stem) or images.get(f"{stem}_0000")
        if img is None:
            raise DatasetError(f"{where}: label {labels[stem].name} has no image ({stem} or {stem}_0000)")
        used.add(volume_stem(img))
        extra_channels += sum(1 for c in range(1, 10) if f"{stem}_{c:04d}" in images)
        pairs.append((stem, img, labels[stem]))
    left = sorted(s for s in images if s not in used and not (len(s) > 5 and s[-5] == "_" and s[-4:].isdigit()
                                                            and s[:-5] in labels))
    if left:
        raise DatasetError(f"{where}: images without a label: {left[:5]}")
    if extra_channels:
        notes.append(f"{extra_channels} further channel files (_0001, ...) not read: the models take channel 0")
    return pairs


def _read_case(stem: str, img_path: Path, lab_path: Path, value_to_class: dict[int, int] | None) -> VolumeCase:
    img, geo = read_volume(img_path)
    lab, lgeo = read_volume(lab_path)
    if img.shape != lab.shape:
        raise DatasetError(f"{stem}: image {img.shape} and label {lab.shape} differ in shape (slices, rows, columns)")
    if not geo.close_to(lgeo):
        raise DatasetError(f"{stem}: image and label grids differ (spacing {geo.spacing} vs {lgeo.spacing}, origin "
                           f"{geo.origin} vs {lgeo.origin}, direction {geo.direction} vs {lgeo.direction})")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DatasetError(f"{stem}: the label volume has non-integer values (a probability map?)")
    vals = np.unique(lab).astype(np.int64)
    if value_to_class is not None:
        unknown = [int(v) for v in vals if v != 0 and int(v) not in value_to_class]
        if unknown:
            raise DatasetError(f"{stem}: label values {unknown} are not in the data set's labels "
                               f"{sorted(value_to_class)}")
        lut = np.zeros(int(max(vals.max(initial=0), max(value_to_class))) + 1, np.uint8)
        for v, c in value_to_class.items():
            lut[v] = c
        if vals.min(initial=0) < 0:
            raise DatasetError(f"{stem}: negative label values")
        labels = lut[lab.astype(np.int64)]
    else:
        if vals.min(initial=0) < 0:
            raise DatasetError(f"{stem}: negative label values")
        labels = lab.astype(np.int16 if vals.max(initial=0) > 255 else np.uint8)
    return VolumeCase(stem, np.asarray(img, np.float32), labels, geo)


def is_volume_dataset(path: str | Path) -> bool:
    """Whether ``path`` holds volumes (MSD / nnU-Net layout, or images/ + masks/ with volume files)."""
    root = Path(path)
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return True
    m = root / "masks"
    return m.is_dir() and any(volume_stem(p) is not None for p in m.iterdir())


def load_volume_dataset(path: str | Path, *, max_cases: int | None = None) -> VolumeDataset:
    """Read a volume data set (MSD / nnU-Net layout or images/ + masks/), geometry kept.

    Parameters
    ----------
    path : the data set folder.
    max_cases : read only the first this many cases (sorted by name).

    Raises
    ------
    DatasetError
        Missing folders, unpaired files, unreadable volumes, image/label shape or grid mismatch,
        label values outside the data set's labels, a malformed dataset.json.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"volume data set not found: {root} (expected imagesTr/ + labelsTr/ + dataset.json, "
                           "or images/ + masks/)")
    notes: list[str] = []
    value_to_class: dict[int, int] | None
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        layout, img_dir, lab_dir = "msd", root / "imagesTr", root / "labelsTr"
        dj = root / "dataset.json"
        if not dj.is_file():
            raise DatasetError(f"{root}: the MSD / nnU-Net layout needs dataset.json with a 'labels' map")
        try:
            meta = json.loads(dj.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{dj}: not valid JSON ({e})") from e
        names, values = read_labels_map(meta.get("labels") if isinstance(meta, dict) else None)  # type: ignore[arg-type]
        value_to_class = {v: i + 1 for i, v in enumerate(values)}
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        layout, img_dir, lab_dir = "images_masks", root / "images", root / "masks"
        names_file = root / "classes.txt"
        if names_file.is_file():
            names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
            values = list(range(1, len(names) + 1))
            value_to_class = {v: v for v in values}
        else:
            names, values, value_to_class = [], [], None
    else:
        raise DatasetError(f"{root}: a volume data set needs imagesTr/ + labelsTr/ + dataset.json, or images/ + "
                           "masks/ with volume files (.nii, .nii.gz, .nrrd, .mha, .mhd)")
    pairs = _pair(_files(img_dir), _files(lab_dir), str(root), notes)
    if not pairs:
        raise DatasetError(f"{lab_dir}: no label volumes ({', '.join(VOLUME_SUFFIXES)})")
    if max_cases is not None:
        pairs = pairs[:max_cases]
    cases = [_read_case(s, ip, lp, value_to_class) for s, ip, lp in pairs]
    if value_to_class is None:  # images/ + masks/ without classes.txt: the values found are the classes
        found = sorted({int(v) for c in cases for v in np.unique(c.labels) if v > 0}) or [1]
        values = found
        names = ["foreground"] if found == [1] else [f"class_{v}" for v in found]
        lut = np.zeros(max(found) + 1, np.uint8)
        for i, v in enumerate(found):
            lut[v] = i + 1
        for c in cases:
            c.labels = lut[c.labels.astype(np.int64)]
    log.info("read %d volumes (%s layout), classes %s", len(cases), layout, names)
    return VolumeDataset(cases, names, values, layout, str(root), notes)
