"""A SEG over a series as one mask volume per segment, on the series' grid.

Each SEG frame is placed by its geometry when it has one: Plane Position (Patient) of the frame, the
SEG's Plane Orientation and Pixel Measures, in the series' Frame of Reference. Frames whose pixels
fall on the series' voxels (same orientation and pixel spacing, whole-voxel offsets) are copied to
their slice, in any frame order; slices the SEG omits (sparse SEGs leave out empty frames) are
empty. A SEG on another grid (other pixel spacing, slice positions between the series' slices,
another orientation) is resampled onto the series' grid with SimpleITK (linear interpolation of
the segment's occupancy, then the threshold). A SEG without plane positions (or in another Frame of
Reference) is placed through its source references (Derivation Image Sequence), which then must
name the series' images on the same pixel grid.

BINARY pixels > 0, FRACTIONAL pixels >= ``seg.min_fraction`` of the Maximum Fractional Value and
LABELMAP pixels equal to the segment number are the segment. What cannot be placed is an issue
record: a segment with pixels on frames that reference images not in the series (``missing_reference``;
the segment is not read, a partial mask would look like an annotation error), pixels beyond the
series' grid (``malformed_annotation``, the rest is read), frames with neither a position nor a usable
reference (``no_image_reference``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.annotations.records import (
    MALFORMED_ANNOTATION,
    MISSING_REFERENCE,
    NO_IMAGE_REFERENCE,
    UNKNOWN_CODE,
    UNREADABLE_PIXELS,
    IssueRecord,
    MaskVolume,
    MaskVolumeProvenance,
)
from dicom_io.annotations.seg import (
    _fg,
    _frame_position,
    _frame_segment,
    _observer,
    _seg_pixels,
    _segment_classes,
    _source_refs,
    seg_pixel_spacing,
)
from dicom_io.geometry import Geometry, ImageVolume
from dicom_io.volumes import ORIENTATION_TOLERANCE, SPACING_RTOL, grid_geometry

if TYPE_CHECKING:
    from dicom_io.vocabulary import Vocabulary

__all__ = ["GRID_TOLERANCE", "seg_series_uids", "read_seg_volumes"]

GRID_TOLERANCE = 0.05
"""Largest distance (in voxels) of a SEG frame's pixels from the series' voxels that still counts as on the grid."""


def seg_series_uids(ds: Dataset, series_of_image: dict[str, str]) -> list[str]:
    """The series a SEG is over, most referenced first: the series of the images its frames derive from
    (``series_of_image``: SOP Instance UID -> Series Instance UID of the study's images), then the
    Referenced Series Sequence."""
    counts: dict[str, int] = {}
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    for i in range(nframes):
        for uid, _ in _source_refs(ds, i):
            s = series_of_image.get(uid)
            if s is not None:
                counts[s] = counts.get(s, 0) + 1
    out = sorted(counts, key=lambda s: -counts[s])
    for item in ds.get("ReferencedSeriesSequence") or []:
        s = str(item.get("SeriesInstanceUID", "") or "")
        if s and s not in out:
            out.append(s)
    return out


def _decode(ds: Dataset, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) for the SEG frames ``indices`` (0-based): one at a time when pydicom can, else all
    at once through the SEG reader's own decoders (1-bit RLE, Deflated Image Frame Compression)."""
    from pydicom.pixels import iter_pixels

    wanted = sorted(set(indices))
    if not wanted:
        return
    try:
        it = iter_pixels(ds, indices=wanted)
        frames = [next(it)]
    except Exception:  # decoders raise many types; the fallback says what is wrong if it fails too
        arr = _seg_pixels(ds)
        if arr.ndim == 2:
            arr = arr[None]
        for i in wanted:
            yield i, arr[i]
        return
    yield wanted[0], frames[0]
    for i, frame in zip(wanted[1:], it, strict=True):
        yield i, frame


def _orientation(ds: Dataset) -> np.ndarray | None:
    po = _fg(ds, 0, "PlaneOrientationSequence")
    if po is None:
        return None
    try:
        v = np.asarray([float(x) for x in po[0].ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return v if v.shape == (6,) else None


def _slice_thickness(ds: Dataset) -> float | None:
    pm = _fg(ds, 0, "PixelMeasuresSequence")
    if pm is None:
        return None
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            v = float(pm[0].get(name))
            if v > 0:
                return v
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
    return None


def _seg_grid(ds: Dataset, positions: dict[int, np.ndarray], iop: np.ndarray, ps: tuple[float, float],
              for_uid: str | None) -> tuple[Geometry, dict[int, int]] | str:
    """The SEG's own grid (its frames' positions, gaps of whole slices allowed: sparse SEGs) and the slice
    of each frame, or why the frames do not form one."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    first = next(iter(positions.values()))
    probe = grid_geometry(first, iop, ps, 1.0, (2, rows, cols))
    axis = probe.direction[:, 0]
    d = {i: float(p @ axis) for i, p in positions.items()}
    for i, p in positions.items():
        off = p - first - (d[i] - float(first @ axis)) * axis
        if np.linalg.norm(off) > max(1e-2, 1e-2 * min(ps)):
            return f"SEG frame {i + 1} is {np.linalg.norm(off):.3g} mm off the line of the other frames"
    levels = np.unique(np.round(np.asarray(sorted(d.values())), 3))
    if len(levels) == 1:
        step = _slice_thickness(ds) or 1.0
    else:
        gaps = np.diff(levels)
        step = float(gaps.min())
        ratios = gaps / step
        if not (np.abs(ratios - np.round(ratios)) <= SPACING_RTOL * np.round(ratios)).all():
            return f"the SEG's frame positions are irregularly spaced ({gaps.min():.4g} to {gaps.max():.4g} mm)"
    index = {i: int(round((v - levels[0]) / step)) for i, v in d.items()}
    top = next(p for i, p in positions.items() if index[i] == 0)
    n = max(index.values()) + 1
    return grid_geometry(top, iop, ps, step, (n, rows, cols), for_uid), index


def _resample(seg_geometry: Geometry, occupancy: np.ndarray, target: Geometry, threshold: float) -> np.ndarray:
    """``occupancy`` (float, on ``seg_geometry``) on the ``target`` grid: linear interpolation, >= threshold."""
    import SimpleITK as sitk

    src = seg_geometry.to_simpleitk(occupancy.astype(np.float32))
    s = target.spacing
    out = sitk.Resample(src, (target.shape[2], target.shape[1], target.shape[0]), sitk.Transform(), sitk.sitkLinear,
                        target.origin, (s[2], s[1], s[0]), tuple(float(v) for v in target.direction[:, ::-1].ravel()),
                        0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out) >= threshold - 1e-6


def read_seg_volumes(
    seg: Dataset | Path | str,
    volume: ImageVolume,
    vocabulary: Vocabulary | None,
    *,
    study_uid: str | None = None,
    study_images: Collection[str] = (),
    segment_numbers: Sequence[int] | None = None,
) -> tuple[list[MaskVolume], list[IssueRecord]]:
    """One :class:`MaskVolume` per segment of ``seg`` on the grid of ``volume`` (the series it is over),
    and issue records. Segments resolve to classes as in the frame-by-frame reader (``read_seg``);
    segments the vocabulary does not know are ``unknown_code`` issues, not volumes.

    ``study_images``: the study's image SOP Instance UIDs (messages then tell an image of another
    series from one missing from the study). ``segment_numbers``: read only these (one segment at a
    time keeps memory to one mask volume). Never raises for a broken SEG.
    """
    import pydicom

    ds = pydicom.dcmread(seg) if isinstance(seg, (str, Path)) else seg
    uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    issues: list[IssueRecord] = []
    if not ds.get("SegmentSequence"):
        return [], [IssueRecord(MALFORMED_ANNOTATION, "SEG has no Segment Sequence", uid)]
    segments = _segment_classes(ds, vocabulary, issues)
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or "") for s in ds.SegmentSequence
              if "SegmentNumber" in s}
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    threshold, scale = 0.5, 1.0
    if seg_type == "FRACTIONAL":
        scale = float(ds.get("MaximumFractionalValue", 255) or 255)
        threshold = vocabulary.seg.min_fraction if vocabulary is not None else 0.5
    geometry = volume.geometry
    shape = geometry.shape
    what = f"SEG over series {volume.series_uid}"

    # Which frames carry which segments.
    frame_segments: dict[int, list[int]] = {}
    unnamed = 0
    for i in range(nframes):
        if seg_type == "LABELMAP":
            frame_segments[i] = sorted(segments)
            continue
        n = _frame_segment(ds, i, nframes)
        if n is None:
            unnamed += 1
            continue
        frame_segments[i] = [n]
    if unnamed:
        issues.append(IssueRecord(NO_IMAGE_REFERENCE, f"{unnamed} SEG frame(s) name no segment: not read", uid))
    used = {n for ns in frame_segments.values() for n in ns}
    for n in sorted(used - set(segments)):
        issues.append(IssueRecord(
            MALFORMED_ANNOTATION, f"frames use segment {n}, which the Segment Sequence does not describe", uid))
    for n in sorted(n for n in used & set(segments) if segments[n][1] is None and seg_type != "LABELMAP"):
        issues.append(IssueRecord(UNKNOWN_CODE, f"{segments[n][0]} is not in the vocabulary", uid))
    wanted = [n for n in sorted(segments) if n > 0 and segments[n][1] is not None
              and (segment_numbers is None or n in segment_numbers)]
    if not wanted:
        return [], issues
    frames = [i for i, ns in frame_segments.items() if any(n in wanted for n in ns)]

    # How frames reach the series' grid: by position on it, by resampling, or by source reference.
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "") or None
    iop = _orientation(ds)
    ps = seg_pixel_spacing(ds)
    positions = {i: np.asarray(p, float) for i in frames if (p := _frame_position(ds, i)) is not None}
    geometric = (bool(frames) and len(positions) == len(frames) and iop is not None and ps is not None
                 and (for_uid is None or for_uid == geometry.frame_of_reference_uid))
    place: dict[int, tuple[int, int, int]] = {}
    seg_grid: tuple[Geometry, dict[int, int]] | None = None
    if geometric:
        assert iop is not None and ps is not None
        same_plane = (np.abs(iop[:3] - geometry.direction[:, 2]).max() <= ORIENTATION_TOLERANCE
                      and np.abs(iop[3:] - geometry.direction[:, 1]).max() <= ORIENTATION_TOLERANCE
                      and abs(ps[0] - geometry.spacing[1]) <= 1e-3 * geometry.spacing[1]
                      and abs(ps[1] - geometry.spacing[2]) <= 1e-3 * geometry.spacing[2])
        idx = {i: geometry.patient_to_index(p[None])[0] for i, p in positions.items()}
        if same_plane and all(np.abs(v - np.round(v)).max() <= GRID_TOLERANCE for v in idx.values()):
            place = {i: (int(round(v[0])), int(round(v[1])), int(round(v[2]))) for i, v in idx.items()}
        else:
            grid = _seg_grid(ds, positions, iop, ps, for_uid)
            if isinstance(grid, str):
                return [], [*issues, IssueRecord(MALFORMED_ANNOTATION, f"{what}: the SEG is on another grid, which "
                                                 f"cannot be resampled: {grid}", uid)]
            seg_grid = grid
    elif frames:
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (rows, cols) != shape[1:]:
            return [], [*issues, IssueRecord(
                MALFORMED_ANNOTATION, f"{what}: the SEG frames have no plane position and another size ({rows} x "
                f"{cols}) than the series ({shape[1]} x {shape[2]}): cannot be placed", uid)]
    # Source references: every frame's reference must be an image of this series.
    bad_refs: dict[int, list[str]] = {}
    unplaced: list[int] = []
    for i in frames:
        refs = _source_refs(ds, i)
        slices = []
        for ref_uid, ref_frame in refs:
            k = volume.slice_index(ref_uid, ref_frame)
            if k is None and ref_frame == 1:
                k = volume.slice_index(ref_uid, None)
            if k is None:
                bad_refs.setdefault(i, []).append(ref_uid)
            else:
                slices.append(k)
        if not geometric and i not in bad_refs:
            if len(set(slices)) == 1:
                place[i] = (slices[0], 0, 0)
            else:
                unplaced.append(i)
    if unplaced:
        issues.append(IssueRecord(NO_IMAGE_REFERENCE, f"{what}: {len(unplaced)} SEG frame(s) have neither a plane "
                                  "position nor one source image of the series: not read", uid))

    # Pixels, segment by segment.
    occupancy: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = {n: np.zeros(shape, bool) for n in wanted}
    seg_frames: dict[int, list[list[int]]] = {n: [[] for _ in range(shape[0])] for n in wanted}
    outside: dict[int, int] = {}
    broken: dict[int, list[str]] = {}
    if seg_grid is not None:
        occupancy = {n: np.zeros(seg_grid[0].shape, np.float32) for n in wanted}
    decoded = _decode(ds, frames)
    while True:
        try:
            i, frame = next(decoded)
        except StopIteration:
            break
        except Exception as e:  # decoders raise many types
            return [], [*issues, IssueRecord(UNREADABLE_PIXELS, f"SEG pixel data cannot be decoded: {e}", uid)]
        if frame.shape != (int(ds.Rows), int(ds.Columns)):
            return [], [*issues, IssueRecord(MALFORMED_ANNOTATION, f"SEG frame {i + 1} decodes to {frame.shape}", uid)]
        for n in frame_segments[i]:
            if n not in masks:
                continue
            if seg_type == "LABELMAP":
                m = frame == n
                value = m.astype(np.float32)
            elif seg_type == "FRACTIONAL":
                value = frame.astype(np.float32) / scale
                m = value >= threshold - 1e-6
            else:
                m = frame > 0
                value = m.astype(np.float32)
            if not m.any():
                continue
            if i in bad_refs:
                broken.setdefault(n, []).extend(bad_refs[i])
                continue
            if seg_grid is not None:
                k = seg_grid[1][i]
                occupancy[n][k] = np.maximum(occupancy[n][k], value)
                continue
            if i not in place:
                continue
            s, r0, c0 = place[i]
            if not 0 <= s < shape[0]:
                outside[n] = outside.get(n, 0) + int(m.sum())
                continue
            rs, cs = max(0, r0), max(0, c0)
            re, ce = min(shape[1], r0 + m.shape[0]), min(shape[2], c0 + m.shape[1])
            inside = m[rs - r0 : re - r0, cs - c0 : ce - c0] if re > rs and ce > cs else np.zeros((0, 0), bool)
            lost = int(m.sum()) - int(inside.sum())
            if lost:
                outside[n] = outside.get(n, 0) + lost
            if inside.size:
                masks[n][s, rs:re, cs:ce] |= inside
            seg_frames[n][s].append(i + 1)

    observer = _observer(ds)
    out: list[MaskVolume] = []
    for n in wanted:
        if n in broken:
            named = sorted(set(broken[n]))
            where = "another series of the study" if all(r in study_images for r in named) else "not in the study"
            issues.append(IssueRecord(
                MISSING_REFERENCE, f"{what}: segment {n} has pixels on frames that reference {len(named)} image(s) "
                f"{where} (e.g. {named[0]}): segment not read", uid, named[0]))
            continue
        if n in outside:
            issues.append(IssueRecord(
                MALFORMED_ANNOTATION, f"{what}: {outside[n]} pixel(s) of segment {n} lie beyond the series' grid "
                "and were dropped", uid))
        mask = masks[n]
        if seg_grid is not None:
            mask = _resample(seg_grid[0], occupancy[n], geometry, threshold)
        prov = MaskVolumeProvenance(
            study_uid=study_uid or str(ds.get("StudyInstanceUID", "")),
            annotation_uid=uid,
            annotation_sop_class_uid=sop,
            series_uid=volume.series_uid,
            slice_uids=volume.slice_uids,
            slice_frames=volume.slice_frames,
            seg_frames=tuple(tuple(sorted(f)) for f in seg_frames[n]),
            segmentation_type=seg_type,
            observer=observer,
            resampled=seg_grid is not None,
        )
        label = segments[n][1]
        assert label is not None
        out.append(MaskVolume(n, label, labels.get(n, ""), mask, geometry, prov))
    return out, issues
