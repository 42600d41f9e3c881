"""A voxel grid in patient space and an image on it: what a series becomes (:mod:`dicom_io.volumes`) and what
a mask volume lies on (:mod:`dicom_io.annotations`). Plain data: numpy, no DICOM parsing here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dicom_io.pixels import voi_window

if TYPE_CHECKING:
    import highdicom as hd
    import SimpleITK as sitk

__all__ = ["Geometry", "ImageVolume"]


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid in patient space: (slice, row, column) index -> LPS mm, as highdicom defines it.

    ``affine``: 4 x 4, column k = the step of index axis k in mm (direction times spacing), last column
    = the centre of voxel (0, 0, 0). ``shape``: (slices, rows, columns).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    frame_of_reference_uid: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def direction(self) -> np.ndarray:
        """3 x 3: column k = the unit vector of index axis k (slice, row, column) in LPS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        o = self.affine[:3, 3]
        return float(o[0]), float(o[1]), float(o[2])

    @classmethod
    def from_components(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float],
        direction: np.ndarray | Sequence[Sequence[float]] | None = None,
        frame_of_reference_uid: str | None = None,
    ) -> Geometry:
        """A grid from (slice, row, column) ``spacing``, the ``origin`` of voxel (0, 0, 0) and ``direction``
        (3 x 3, column k = unit vector of index axis k; default: slices along +z, rows along +y,
        columns along +x). Raises ValueError for a direction that is not orthonormal."""
        d = np.eye(3)[:, ::-1] if direction is None else np.asarray(direction, float)
        if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"direction must be an orthonormal 3 x 3 matrix, got {d.tolist()}")
        sp = np.asarray(spacing, float)
        if sp.shape != (3,) or not (sp > 0).all():
            raise ValueError(f"spacing must be three positive numbers, got {list(spacing)}")
        affine = np.eye(4)
        affine[:3, :3] = d * sp[None, :]
        affine[:3, 3] = np.asarray(origin, float)
        return cls(affine, (int(shape[0]), int(shape[1]), int(shape[2])), frame_of_reference_uid)

    @classmethod
    def from_simpleitk(cls, image: sitk.Image, frame_of_reference_uid: str | None = None) -> Geometry:
        """The grid of a 3-D SimpleITK image, whose array (``GetArrayFromImage``) is (z, y, x): (slice, row,
        column)."""
        if image.GetDimension() != 3:
            raise ValueError(f"a 3-D image is needed, got {image.GetDimension()}-D")
        size = image.GetSize()
        d = np.asarray(image.GetDirection(), float).reshape(3, 3)  # columns: x, y, z axes
        sx, sy, sz = image.GetSpacing()
        return cls.from_components((size[2], size[1], size[0]), (sz, sy, sx), image.GetOrigin(), d[:, ::-1],
                                   frame_of_reference_uid)

    def to_simpleitk(self, array: np.ndarray) -> sitk.Image:
        """``array`` (slices, rows, columns) on this grid as a SimpleITK image with spacing, origin, direction."""
        import SimpleITK as sitk

        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array {array.shape} is not on the grid {self.shape}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        s = self.spacing
        img.SetSpacing((s[2], s[1], s[0]))
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(v) for v in self.direction[:, ::-1].ravel()))
        return img

    def to_highdicom(self) -> hd.VolumeGeometry:
        """The same grid as a ``highdicom.VolumeGeometry`` (patient coordinate system)."""
        import highdicom as hd

        return hd.VolumeGeometry(self.affine, self.shape, coordinate_system="PATIENT",
                                 frame_of_reference_uid=self.frame_of_reference_uid)

    def index_to_patient(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) (slice, row, column) indices -> (N, 3) LPS mm."""
        idx = np.atleast_2d(np.asarray(indices, float))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm -> (N, 3) fractional (slice, row, column) indices."""
        p = np.atleast_2d(np.asarray(points, float))
        return np.linalg.solve(self.affine[:3, :3], (p - self.affine[:3, 3]).T).T

    def same_grid(self, other: Geometry, *, atol_mm: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape and voxel positions (within ``atol_mm``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))


@dataclass
class ImageVolume:
    """A series (or an enhanced multi-frame image) as one volume on its grid.

    ``array``: float32 (slices, rows, columns) modality values (Hounsfield units for CT; stored values
    where no modality LUT applies); empty (0, 0, 0) when read without pixels. ``slice_uids`` /
    ``slice_frames``: per slice, the source SOP Instance UID and its frame number (None for a
    single-frame instance). ``window``: the first slice's VOI window (centre, width) if it has one.
    """

    geometry: Geometry
    array: np.ndarray
    study_uid: str
    series_uid: str
    modality: str
    sop_class_uid: str
    slice_uids: tuple[str, ...]
    slice_frames: tuple[int | None, ...]
    window: tuple[float, float] | None = None
    invert: bool = False
    """MONOCHROME1: :meth:`unit` inverts, so that high values are bright as for MONOCHROME2."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def frame_of_reference_uid(self) -> str | None:
        return self.geometry.frame_of_reference_uid

    def slice_index(self, sop_instance_uid: str, frame: int | None = None) -> int | None:
        """The slice of a source image (frame), or None when it is not in this volume."""
        return self._index().get((sop_instance_uid, frame))

    def _index(self) -> dict[tuple[str, int | None], int]:
        cache = self.__dict__.get("_slice_index")
        if cache is None:
            cache = {(u, f): k for k, (u, f) in enumerate(zip(self.slice_uids, self.slice_frames, strict=True))}
            self.__dict__["_slice_index"] = cache
        return cache

    def unit(self, window: tuple[float, float] | None = None) -> np.ndarray:
        """The array as float32 in [0, 1]: through ``window`` (centre, width), else the series' own
        window, else its 0.5-99.5 percentile range; MONOCHROME1 inverted."""
        if self.array.size == 0:
            return np.zeros(self.array.shape, np.float32)
        w = window or self.window
        if w is not None and w[1] > 0:
            out = voi_window(self.array, w[0], w[1])
        else:
            lo, hi = (float(v) for v in np.percentile(self.array, [0.5, 99.5]))
            out = np.clip((self.array - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(self.array)
        out = out.astype(np.float32, copy=False)
        return 1.0 - out if self.invert else out
