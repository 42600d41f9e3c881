"""The one model-input path for volumes: intensity scaling and resampling to the model spacing and back.

A volume reaches the 3-D members as float32 in [0, 1] (per-volume 0.5 / 99.5 percentiles, robust for
CT and MR alike) on the model grid: the spacing recorded in the bundle (by default the data set's
median spacing per axis, as nnU-Net chooses it). The model grid covers the same extent as the
native one (``round(n * native / model)`` voxels per axis); images go there trilinearly, label maps
per class (trilinear, then > 0.5), and probabilities come back to the native grid (or a box of it)
by separable linear interpolation, so a segment is scored on the voxels the annotator drew.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERCENTILES", "normalise_intensity", "model_spacing", "grid_shape", "to_model_grid",
           "labels_to_model_grid", "axis_coords", "resample_box", "pad_to"]

PERCENTILES = (0.5, 99.5)


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: the volume's 0.5 / 99.5 percentiles map to 0 / 1 (constant volumes -> 0)."""
    a = np.asarray(image, np.float32)
    lo, hi = np.percentile(a, PERCENTILES) if a.size else (0.0, 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def model_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The median spacing per axis (z, y, x) of a data set: the default model spacing."""
    if not spacings:
        raise ValueError("no spacings")
    med = np.median(np.asarray(spacings, np.float64), axis=0)
    return (float(med[0]), float(med[1]), float(med[2]))


def grid_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...] | None) -> tuple[int, ...]:
    """Voxels per axis on the model grid covering the same extent (native when ``target`` is None or equal)."""
    if target is None:
        return tuple(int(n) for n in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def to_model_grid(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (Z, Y, X) or (C, Z, Y, X) float volume resampled trilinearly to ``shape`` (the same extent)."""
    a = np.asarray(volume, np.float32)
    if tuple(a.shape[-3:]) == tuple(shape):
        return a
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t[None, None] if a.ndim == 3 else t[None]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
    return out[0, 0].numpy() if a.ndim == 3 else out[0].numpy()


def labels_to_model_grid(labels: np.ndarray, n_classes: int, shape: tuple[int, ...]) -> np.ndarray:
    """A label map (Z, Y, X) (0 background, 1..K) -> bool channels (K, *shape): each class resampled, > 0.5."""
    lab = np.asarray(labels)
    if tuple(lab.shape) == tuple(shape):
        return np.stack([lab == c for c in range(1, n_classes + 1)])
    return np.stack([to_model_grid((lab == c).astype(np.float32), shape) > 0.5 for c in range(1, n_classes + 1)])


def axis_coords(start: int, stop: int, n_native: int, n_model: int) -> np.ndarray:
    """Model-grid coordinates of native voxels ``start..stop-1`` on one axis (voxel centres, same extent)."""
    i = np.arange(start, stop, dtype=np.float64)
    return (i + 0.5) * (n_model / n_native) - 0.5


def _interp_axis(a: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    n = a.shape[axis]
    c = np.clip(coords, 0, n - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (c - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w


def resample_box(model: np.ndarray, model_start: tuple[int, int, int], native_box: tuple[slice, slice, slice],
                 native_shape: tuple[int, int, int], model_shape: tuple[int, int, int]) -> np.ndarray:
    """Values on a native box from an array that holds the model grid from ``model_start`` on (leading axes
    kept: ``model`` is (..., z, y, x)); separable linear interpolation, edges clamped."""
    out = np.asarray(model, np.float32)
    lead = out.ndim - 3
    for ax in range(3):
        s = native_box[ax]
        coords = axis_coords(s.start, s.stop, native_shape[ax], model_shape[ax]) - model_start[ax]
        if native_shape[ax] == model_shape[ax]:
            out = np.take(out, np.clip(np.rint(coords).astype(np.int64), 0, out.shape[lead + ax] - 1), axis=lead + ax)
        else:
            out = _interp_axis(out, lead + ax, coords)
    return out


def pad_to(volume: np.ndarray, minimum: tuple[int, int, int], value: float = 0.0) -> np.ndarray:
    """Pad the last three axes at their ends up to ``minimum`` (a patch must fit)."""
    pads = [(0, 0)] * (volume.ndim - 3) + [(0, max(0, m - n)) for n, m in zip(volume.shape[-3:], minimum, strict=True)]
    if not any(p[1] for p in pads):
        return volume
    return np.pad(volume, pads, constant_values=value)
