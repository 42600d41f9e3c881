"""A series as a volume: the slices of a CT/MR/PT series (or the frames of an enhanced multi-frame
image) as one array with its geometry, or an issue record saying why they are not a volume.

The geometry follows highdicom's volume convention (``highdicom.VolumeGeometry``): array axes
(slice, row, column); the 4 x 4 ``affine`` maps a voxel index (slice, row, column) to the patient
coordinates (LPS, mm) of the voxel centre; slices are ordered so that the three index axes form a
right-handed system (for an axial series with the usual orientation: from head to feet). What is
checked before slices become a volume, from the headers alone: every slice has Image Position and
Orientation (Patient) and Pixel Spacing (``no_plane_geometry``); one orientation, pixel spacing, size
and Frame of Reference, and positions stacked along the slice normal (``inconsistent_geometry``:
a tilted slice, gantry tilt); no two slices at one position (``duplicate_position``); one slice
spacing (``irregular_spacing``), a gap of whole spacings being missing slices (``missing_slice``);
more than one slice (``single_slice``). Pixels are the modality values (``dicom_io.pixels``:
Hounsfield units for CT) as float32; :meth:`ImageVolume.unit` windows them to [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.annotations.records import (
    DUPLICATE_POSITION,
    INCONSISTENT_GEOMETRY,
    IRREGULAR_SPACING,
    MISSING_SLICE,
    NO_PLANE_GEOMETRY,
    SINGLE_SLICE,
    UNREADABLE_PIXELS,
    IssueRecord,
)
from dicom_io.geometry import Geometry, ImageVolume
from dicom_io.pixels import PixelError, _fg_item, _first, modality_values, n_frames
from dicom_io.sop import is_non_image
from dicom_io.study import open_study

if TYPE_CHECKING:
    pass

__all__ = [
    "ORIENTATION_TOLERANCE", "SPACING_RTOL", "Plane", "planes_of", "stack_planes",
    "series_volume", "read_series_volumes", "grid_geometry",
]

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference of direction cosines that still counts as the same orientation."""
SPACING_RTOL = 0.01
"""Relative tolerance on slice spacing and pixel spacing (highdicom's default for regular spacing)."""


@dataclass
class Plane:
    """One slice's geometry, from its header: the source image (and frame), position, orientation,
    (row, column) pixel spacing, size, Frame of Reference. None where the header does not say."""

    sop_instance_uid: str
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    frame_of_reference_uid: str | None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    dataset: Dataset | None = field(default=None, repr=False)


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _pair(v: Any) -> tuple[float, float] | None:
    t = _floats(v, 2)
    return None if t is None else (t[0], t[1])


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def planes_of(ds: Dataset) -> list[Plane]:
    """The planes of one image: one for a single-frame image, one per frame for a multi-frame image
    (Plane Position / Orientation and Pixel Measures from the per-frame, else shared functional groups)."""
    uid = str(ds.SOPInstanceUID)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "") or None
    total = n_frames(ds)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    out = []
    for i in range(total):
        if enhanced:
            pp = _fg_item(ds, i, "PlanePositionSequence")
            po = _fg_item(ds, i, "PlaneOrientationSequence")
            pm = _fg_item(ds, i, "PixelMeasuresSequence")
        else:
            pp = po = pm = ds
        out.append(Plane(
            sop_instance_uid=uid,
            frame=i + 1 if total > 1 else None,
            position=_floats(pp.get("ImagePositionPatient"), 3) if pp is not None else None,  # type: ignore[arg-type]
            orientation=_floats(po.get("ImageOrientationPatient"), 6) if po is not None else None,
            pixel_spacing=_pair(pm.get("PixelSpacing")) if pm is not None else None,
            rows=rows,
            columns=cols,
            frame_of_reference_uid=for_uid,
            slice_thickness=_float(pm.get("SliceThickness")) if pm is not None else None,
            spacing_between_slices=_float(pm.get("SpacingBetweenSlices") if pm is not None and
                                          "SpacingBetweenSlices" in pm else ds.get("SpacingBetweenSlices")),
            dataset=ds,
        ))
    return out


def _where(p: Plane) -> str:
    return f"image {p.sop_instance_uid}" + ("" if p.frame is None else f" frame {p.frame}")


def grid_geometry(position: Sequence[float] | np.ndarray, orientation: Sequence[float] | np.ndarray,
                  pixel_spacing: Sequence[float] | np.ndarray,
                  slice_spacing: float, shape: Sequence[int], frame_of_reference_uid: str | None = None) -> Geometry:
    """The grid whose voxel (0, 0, 0) is at ``position`` with DICOM ``orientation`` (Image Orientation
    (Patient)) and ``pixel_spacing`` (row, column), slices ``slice_spacing`` apart along highdicom's
    (right-handed) slice direction."""
    import highdicom as hd

    g = hd.VolumeGeometry.from_attributes(
        image_position=list(position), image_orientation=list(orientation), rows=int(shape[1]),
        columns=int(shape[2]), pixel_spacing=list(pixel_spacing), spacing_between_slices=float(slice_spacing),
        number_of_frames=int(shape[0]), coordinate_system="PATIENT", frame_of_reference_uid=frame_of_reference_uid)
    return Geometry(np.asarray(g.affine, float), (int(shape[0]), int(shape[1]), int(shape[2])),
                    frame_of_reference_uid)


def stack_planes(planes: Sequence[Plane], what: str) -> tuple[list[int], Geometry] | IssueRecord:
    """The order of ``planes`` along the slice axis and the grid they form, or the issue record that says
    why they do not form a regular volume. ``what`` names them in messages (e.g. "series 1.2.3")."""
    if not planes:
        return IssueRecord(NO_PLANE_GEOMETRY, f"{what}: no slices")
    lacking = [p for p in planes if p.position is None or p.orientation is None or p.pixel_spacing is None]
    if lacking:
        return IssueRecord(NO_PLANE_GEOMETRY, f"{what}: {len(lacking)} of {len(planes)} slice(s) lack Image Position "
                           f"/ Orientation (Patient) or Pixel Spacing (e.g. {_where(lacking[0])}): not a volume",
                           image_uid=lacking[0].sop_instance_uid)
    first = planes[0]
    assert first.orientation is not None and first.pixel_spacing is not None and first.position is not None
    iop = np.asarray(first.orientation)
    ps = np.asarray(first.pixel_spacing)
    for p in planes[1:]:
        assert p.orientation is not None and p.pixel_spacing is not None
        if (p.rows, p.columns) != (first.rows, first.columns):
            return IssueRecord(INCONSISTENT_GEOMETRY, f"{what}: {_where(p)} is {p.rows} x {p.columns}, "
                               f"{_where(first)} {first.rows} x {first.columns}", image_uid=p.sop_instance_uid)
        if p.frame_of_reference_uid != first.frame_of_reference_uid:
            return IssueRecord(INCONSISTENT_GEOMETRY, f"{what}: {_where(p)} has another Frame of Reference "
                               f"({p.frame_of_reference_uid}) than {_where(first)}", image_uid=p.sop_instance_uid)
        if np.abs(np.asarray(p.orientation) - iop).max() > ORIENTATION_TOLERANCE:
            return IssueRecord(INCONSISTENT_GEOMETRY, f"{what}: {_where(p)} is tilted against the others "
                               f"(orientation {list(p.orientation)}, not {iop.tolist()})", image_uid=p.sop_instance_uid)
        if np.abs(np.asarray(p.pixel_spacing) - ps).max() > SPACING_RTOL * ps.min():
            return IssueRecord(INCONSISTENT_GEOMETRY, f"{what}: {_where(p)} has pixel spacing "
                               f"{list(p.pixel_spacing)}, the others {ps.tolist()}", image_uid=p.sop_instance_uid)
    if len(planes) == 1:
        return IssueRecord(SINGLE_SLICE, f"{what}: one slice is not a volume (read it frame by frame)",
                           image_uid=first.sop_instance_uid)
    probe = grid_geometry(first.position, iop, ps, 1.0, (2, first.rows, first.columns))
    axis = probe.direction[:, 0]  # highdicom's slice direction: the normal, signed for a right-handed grid
    pos = np.asarray([p.position for p in planes], float)
    d = pos @ axis
    off = pos - pos[0] - np.outer(d - d[0], axis)  # in-plane offsets: zero when stacked along the normal
    shear = np.linalg.norm(off, axis=1)
    tol_plane = max(1e-2, 1e-2 * float(ps.min()))
    k = int(np.argmax(shear))
    if shear[k] > tol_plane:
        return IssueRecord(INCONSISTENT_GEOMETRY, f"{what}: slices are not stacked along their normal "
                           f"({_where(planes[k])} is {shear[k]:.3g} mm off the line; gantry tilt or shear)",
                           image_uid=planes[k].sop_instance_uid)
    order = [int(i) for i in np.argsort(d, kind="stable")]
    ds_sorted = d[order]
    gaps = np.diff(ds_sorted)
    dup_tol = max(1e-3, 1e-3 * float(ps.min()))
    dups = [i for i, g in enumerate(gaps) if g <= dup_tol]
    if dups:
        a, b = planes[order[dups[0]]], planes[order[dups[0] + 1]]
        return IssueRecord(DUPLICATE_POSITION, f"{what}: {len(dups)} slice(s) share a position with another "
                           f"({_where(a)} and {_where(b)} at {list(np.round(a.position or (), 3))})",
                           image_uid=b.sop_instance_uid)
    step = float(gaps.min())
    if not np.allclose(gaps, step, rtol=SPACING_RTOL, atol=0):
        ratios = gaps / step
        whole = np.abs(ratios - np.round(ratios)) <= SPACING_RTOL * np.round(ratios)
        if whole.all():
            missing = int(np.round(ratios).sum() - len(gaps))
            i = int(np.argmax(ratios))
            return IssueRecord(MISSING_SLICE, f"{what}: {missing} slice(s) missing (spacing {step:.4g} mm; a gap of "
                               f"{gaps[i]:.4g} mm after {_where(planes[order[i]])})",
                               image_uid=planes[order[i]].sop_instance_uid)
        return IssueRecord(IRREGULAR_SPACING, f"{what}: slice spacing varies from {gaps.min():.4g} to "
                           f"{gaps.max():.4g} mm", image_uid=planes[order[int(np.argmax(gaps))]].sop_instance_uid)
    step = float(np.mean(gaps))
    top = planes[order[0]]
    assert top.position is not None
    geometry = grid_geometry(top.position, iop, ps, step, (len(planes), first.rows, first.columns),
                             first.frame_of_reference_uid)
    return order, geometry


def _window_of(ds: Dataset) -> tuple[float, float] | None:
    fvoi = _fg_item(ds, 0, "FrameVOILUTSequence")
    src = fvoi if fvoi is not None and "WindowCenter" in fvoi else ds
    c, w = _first(src.get("WindowCenter")), _first(src.get("WindowWidth"))
    return (c, w) if c is not None and w is not None and w > 0 else None


def series_volume(
    datasets: Sequence[Dataset],
    *,
    load_pixels: bool = True,
    loader: Callable[[Dataset], Dataset] | None = None,
) -> tuple[ImageVolume | None, list[IssueRecord]]:
    """The images of one series as a volume, or None and the issue record that says why not.

    ``datasets``: the series' instances (single-frame slices, or one or more multi-frame images whose
    frames are the slices), in any order; headers are enough for the geometry. With ``load_pixels``
    each slice is decoded (modality LUT, no VOI); a header read without pixels is loaded in full by
    ``loader`` (default: ``pydicom.dcmread`` of the file it was read from). Never raises for bad input.
    """
    if not datasets:
        return None, [IssueRecord(NO_PLANE_GEOMETRY, "no images")]
    first = datasets[0]
    series_uid = str(first.get("SeriesInstanceUID", ""))
    what = f"series {series_uid}"
    planes: list[Plane] = []
    for ds in datasets:
        try:
            planes.extend(planes_of(ds))
        except (AttributeError, TypeError, ValueError) as e:
            return None, [IssueRecord(NO_PLANE_GEOMETRY, f"{what}: unusable plane attributes ({e})",
                                      image_uid=str(ds.get("SOPInstanceUID", "")) or None)]
    stacked = stack_planes(planes, what)
    if isinstance(stacked, IssueRecord):
        return None, [stacked]
    order, geometry = stacked
    ordered = [planes[i] for i in order]
    array = np.zeros((0, 0, 0), np.float32)
    if load_pixels:
        array = np.zeros(geometry.shape, np.float32)
        full: dict[str, Dataset] = {}  # multi-frame images stay loaded while their frames are read
        for k, p in enumerate(ordered):
            try:
                loaded = full.get(p.sop_instance_uid)
                if loaded is None:
                    assert p.dataset is not None
                    loaded = _with_pixels(p.dataset, loader)
                    if p.frame is not None:
                        full[p.sop_instance_uid] = loaded
                array[k] = modality_values(loaded, p.frame)
            except (PixelError, OSError, ValueError) as e:
                return None, [IssueRecord(UNREADABLE_PIXELS, f"{what}: pixels of {_where(p)} unusable: {e}",
                                          image_uid=p.sop_instance_uid)]
    photometric = str(first.get("PhotometricInterpretation", "")).strip().upper()
    volume = ImageVolume(
        geometry=geometry,
        array=array,
        study_uid=str(first.get("StudyInstanceUID", "")),
        series_uid=series_uid,
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        slice_uids=tuple(p.sop_instance_uid for p in ordered),
        slice_frames=tuple(p.frame for p in ordered),
        window=_window_of(first),
        invert=photometric == "MONOCHROME1",
    )
    return volume, []


def _with_pixels(ds: Dataset, loader: Callable[[Dataset], Dataset] | None) -> Dataset:
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return ds
    if loader is not None:
        return loader(ds)
    import pydicom

    name = getattr(ds, "filename", None)
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError("a header without pixel data and no file to load them from")
    return pydicom.dcmread(name)


def read_series_volumes(
    paths: Iterable[Path | str] | Path | str, *, load_pixels: bool = True
) -> tuple[list[ImageVolume], list[IssueRecord]]:
    """Every image series under ``paths`` (files or folders) as a volume, with the issue records of the
    series (and files) that are not one. Non-image instances (SEG, SR, ...) are skipped."""
    series: dict[str, list[Dataset]] = {}
    study = open_study(paths)  # non-DICOM files are skipped, unreadable ones said
    issues: list[IssueRecord] = list(study.issues)
    for inst in study:
        ds = inst.dataset
        if is_non_image(str(ds.SOPClassUID)) or "Rows" not in ds:
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    volumes = []
    for _, dss in sorted(series.items()):
        vol, iss = series_volume(dss, load_pixels=load_pixels)
        issues.extend(iss)
        if vol is not None:
            volumes.append(vol)
    return volumes, issues
