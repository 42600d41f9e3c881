"""Pixels of one DICOM frame as a float32 grey image in [0, 1], and resampling to a model input size.

Order of operations (PS3.3 C.11, PS3.4 N.2): decode (any transfer syntax pydicom has a decoder
for, incl. the pylibjpeg extras) -> colour to grey (RGB, YBR_*, PALETTE COLOR) -> modality LUT
(Rescale Slope/Intercept or Modality LUT Sequence, also from Enhanced functional groups) -> VOI
(first Window Center/Width, LINEAR / LINEAR_EXACT / SIGMOID, or VOI LUT Sequence; else the frame's
min..max) -> MONOCHROME1 inversion.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = [
    "PixelError", "n_frames", "frame_to_float", "modality_values", "voi_window", "pixel_spacing", "resample",
    "load_frame",
]


class PixelError(ValueError):
    """The pixel data of a frame cannot be decoded or interpreted."""


def n_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _fg_item(ds: Dataset, frame_index: int, seq_name: str) -> Dataset | None:
    """An item of ``seq_name`` from the per-frame, else the shared functional groups (Enhanced IODs)."""
    for fg_name, idx in (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0)):
        fg = ds.get(fg_name)
        if fg is None or len(fg) <= idx:
            continue
        seq = fg[idx].get(seq_name)
        if seq:
            return seq[0]
    return None


def _first(v: Any) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, (MultiValue, list, tuple)):
        if not v:
            return None
        v = v[0]
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _decode(ds: Dataset, frame_index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        if n_frames(ds) > 1:
            return pixel_array(ds, index=frame_index)
        return ds.pixel_array
    except Exception as e:  # decoders raise many types (ValueError, RuntimeError, NotImplementedError...)
        tsyntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise PixelError(f"cannot decode pixel data (transfer syntax {tsyntax}): {e}") from e


def _to_grey(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool]:
    """Grey values and whether they are already display values (colour input, no LUTs apply)."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds).astype(np.float32)
        maxv = float(2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
        grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return grey / maxv, True
    if spp >= 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] < 3:
            raise PixelError(f"unexpected colour pixel array shape {arr.shape}")
        rgb = arr[..., :3].astype(np.float32)
        # pydicom's decoders convert YBR_FULL / YBR_FULL_422 (and JPEG YBR) to RGB already.
        bits = int(ds.get("BitsStored", 8) or 8)
        grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return grey / float(2**bits - 1), True
    return arr, False


def _modality_lut(arr: np.ndarray, ds: Dataset, frame_index: int) -> np.ndarray:
    pvt = _fg_item(ds, frame_index, "PixelValueTransformationSequence")
    if pvt is not None and "RescaleSlope" in pvt:
        slope = _first(pvt.get("RescaleSlope")) or 1.0
        intercept = _first(pvt.get("RescaleIntercept")) or 0.0
        return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float32)
    rescale_slope = _first(ds.get("RescaleSlope"))
    rescale_intercept = _first(ds.get("RescaleIntercept"))
    out = arr.astype(np.float32)
    if rescale_slope is not None and rescale_slope != 1.0:
        out = out * np.float32(rescale_slope)
    if rescale_intercept:
        out = out + np.float32(rescale_intercept)
    return out


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        w = max(width, 1e-6)
        return np.clip((arr - center) / w + 0.5, 0.0, 1.0)
    w = max(width - 1.0, 1e-6)
    return np.clip((arr - (center - 0.5)) / w + 0.5, 0.0, 1.0)


def voi_window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Values through a VOI window (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID) to [0, 1]."""
    return np.asarray(_window(arr, center, width, function), dtype=np.float32)


def _minmax(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return (arr - lo) / (hi - lo)


def _voi(arr: np.ndarray, ds: Dataset, frame_index: int) -> np.ndarray:
    fvoi = _fg_item(ds, frame_index, "FrameVOILUTSequence")
    src = fvoi if fvoi is not None and "WindowCenter" in fvoi else ds
    center, width = _first(src.get("WindowCenter")), _first(src.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return _window(arr, center, width, str(src.get("VOILUTFunction", "LINEAR")))
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        item = voi_seq[0]
        try:
            desc = item.LUTDescriptor
            first_mapped = int(desc[1])
            n_entries = int(desc[0]) or 65536
            lut = np.asarray(item.LUTData, dtype=np.float32).ravel()
            if lut.size < n_entries:
                raise PixelError("VOI LUT Data shorter than its descriptor")
            idx = np.clip(np.rint(arr).astype(np.int64) - first_mapped, 0, n_entries - 1)
            out = lut[idx]
            maxv = float(2 ** int(desc[2]) - 1) if int(desc[2]) > 0 else float(lut.max() or 1.0)
            return np.clip(out / maxv, 0.0, 1.0)
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise PixelError(f"unusable VOI LUT Sequence: {e}") from e
    return _minmax(arr)


def frame_to_float(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Frame ``frame`` (1-based, DICOM Frame Number; None = the first) as float32 (H, W) in [0, 1].

    Raises PixelError when the pixel data is absent, cannot be decoded, or the frame does not exist.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelError("no pixel data")
    total = n_frames(ds)
    index = 0 if frame is None else int(frame) - 1
    if not 0 <= index < total:
        raise PixelError(f"frame {frame} does not exist (the image has {total} frame(s))")
    arr = _decode(ds, index)
    if total > 1 and arr.ndim >= 3 and arr.shape[0] == total and int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        arr = arr[index]
    grey, display = _to_grey(arr, ds)
    if grey.ndim != 2:
        raise PixelError(f"unexpected pixel array shape {grey.shape}")
    if display:
        out = np.clip(grey, 0.0, 1.0)
    else:
        out = _voi(_modality_lut(grey, ds, index), ds, index)
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def modality_values(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Frame ``frame`` (1-based; None = the first) after the modality LUT, as float32 (H, W): Hounsfield
    units for CT, stored values where no modality LUT applies. No VOI, no inversion (the volume path
    windows a whole series alike). Raises PixelError as :func:`frame_to_float` does, and for colour.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelError("no pixel data")
    total = n_frames(ds)
    index = 0 if frame is None else int(frame) - 1
    if not 0 <= index < total:
        raise PixelError(f"frame {frame} does not exist (the image has {total} frame(s))")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or str(ds.get("PhotometricInterpretation", "")).strip().upper() \
            == "PALETTE COLOR":
        raise PixelError("a colour image has no modality values")
    arr = _decode(ds, index)
    if total > 1 and arr.ndim >= 3 and arr.shape[0] == total:
        arr = arr[index]
    if arr.ndim != 2:
        raise PixelError(f"unexpected pixel array shape {arr.shape}")
    return np.ascontiguousarray(_modality_lut(arr, ds, index), dtype=np.float32)


def pixel_spacing(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    """(row, column) spacing in mm: Pixel Spacing, Imager Pixel Spacing, Pixel Measures; else (1, 1)."""
    pm = _fg_item(ds, 0 if frame is None else int(frame) - 1, "PixelMeasuresSequence")
    for src, name in ((pm, "PixelSpacing"), (ds, "PixelSpacing"), (ds, "ImagerPixelSpacing")):
        if src is None:
            continue
        v = src.get(name)
        try:
            if v is not None and len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0:
                return float(v[0]), float(v[1])
        except (TypeError, ValueError):
            continue
    return 1.0, 1.0


def resample(
    arr: np.ndarray, size: int | tuple[int, int], spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample a (H, W) image to ``size`` with SimpleITK (linear; bin averaging first when shrinking >= 2x).

    Returns the float32 array and its (row, column) spacing in the same units as ``spacing``.
    """
    import SimpleITK as sitk

    if arr.ndim != 2:
        raise ValueError(f"resample expects a 2-D array, got shape {arr.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = arr.shape
    new_spacing = (spacing[0] * h / out_h, spacing[1] * w / out_w)
    if (h, w) == (out_h, out_w):
        return np.ascontiguousarray(arr, dtype=np.float32), (float(spacing[0]), float(spacing[1]))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    img.SetSpacing((float(spacing[1]), float(spacing[0])))  # SimpleITK is (x, y) = (column, row)
    # Extent of the input: output pixel centres sit half an output pixel inside its edges.
    origin = (
        -spacing[1] / 2.0 + new_spacing[1] / 2.0,
        -spacing[0] / 2.0 + new_spacing[0] / 2.0,
    )
    factors = [max(1, int(w // out_w)), max(1, int(h // out_h))]
    if max(factors) > 1:
        # Anti-aliasing: average bins of whole input pixels first (BinShrink is ~50x faster than a
        # Gaussian on large images), then interpolate linearly to the exact grid.
        img = sitk.BinShrink(img, factors)
    res = sitk.ResampleImageFilter()
    res.SetSize((out_w, out_h))
    res.SetOutputSpacing((new_spacing[1], new_spacing[0]))
    res.SetOutputOrigin(origin)
    res.SetOutputDirection(img.GetDirection())
    res.SetInterpolator(sitk.sitkLinear)
    res.SetUseNearestNeighborExtrapolator(True)
    out = sitk.GetArrayFromImage(res.Execute(img)).astype(np.float32)
    if not math.isfinite(float(out.sum())):
        out = np.nan_to_num(out)
    return np.clip(out, 0.0, 1.0) if arr.min() >= 0 and arr.max() <= 1 else out, new_spacing


def load_frame(
    ds: Dataset, frame: int | None = None, size: int | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """``frame_to_float`` then, when ``size`` is given, ``resample`` to (size, size); with the spacing used."""
    arr = frame_to_float(ds, frame)
    spacing = pixel_spacing(ds, frame)
    if size is None:
        return arr, spacing
    return resample(arr, size, spacing)
