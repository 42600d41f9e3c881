"""The one path from an image (or mask) to a model input: grey, [0, 1], resized to the input grid.

Training (``models.data``), bundle inference on arrays and DICOM audits (``service.audit`` hands
this as the pixel transform to ``dicom_io.annotations.read_study``) all go through
:func:`to_model_input`, so a DICOM frame and the same image read from a file give the same model
input (``tests`` check it). Colour becomes grey with the ITU-R BT.601 luma weights (as Pillow's
``convert("L")`` and the DICOM reader do), stored as ``dicomize`` stores it (:func:`to_stored_grey`);
resizing is Pillow's bilinear filter on float32 pixels, which widens its support when shrinking
(anti-aliased), with no rounding to 8 bits in between.
Masks are resized by area: a target pixel is inside when at least half of it was.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LUMA", "to_stored_grey", "to_grey", "resize_image", "resize_mask", "to_model_input", "size_hw"]

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights (R, G, B)."""


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a square size or an (h, w) pair; both must be positive."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def to_stored_grey(img: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) array of any dtype -> (H, W) uint8 or uint16 grey pixels, as ``dicomize`` stores them.

    uint8 / uint16 grey stay as they are; RGB(A) -> BT.601 luma, rounded, in the source's bit depth;
    floats in [0, 1] -> 8 bits (x * 255, rounded); any other range (e.g. CT numbers) -> min-max to
    16 bits. :func:`to_grey` is this divided by the full range, so a dicomized image read back
    (window over the stored range) equals what training sees.
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (1, 2):
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] >= 3:
        depth = np.uint16 if a.dtype == np.uint16 else np.uint8
        luma = a[..., :3].astype(np.float64) @ LUMA.astype(np.float64)
        if a.dtype not in (np.uint8, np.uint16):
            return to_stored_grey(luma)
        return np.clip(np.rint(luma), 0, np.iinfo(depth).max).astype(depth)
    if a.ndim != 2:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {np.asarray(img).shape}")
    if a.dtype in (np.uint8, np.uint16):
        return a
    f = np.nan_to_num(a.astype(np.float64))
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if a.dtype == np.bool_ or (lo >= 0.0 and hi <= 1.0):
        return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    if hi <= lo:
        return np.zeros(f.shape, np.uint16)
    return np.clip(np.rint((f - lo) / (hi - lo) * 65535.0), 0, 65535).astype(np.uint16)


def to_grey(img: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) array of any dtype -> (H, W) float32 in [0, 1]: :func:`to_stored_grey` / full range.

    float32 arrays already in [0, 1] (e.g. DICOM frames from ``dicom_io.pixels``) are taken as they are.
    """
    a = np.asarray(img)
    if a.dtype == np.float32 and a.ndim == 2 and a.size and float(np.nanmin(a)) >= 0.0 and float(np.nanmax(a)) <= 1.0:
        return np.nan_to_num(a)
    g = to_stored_grey(a)
    return g.astype(np.float32) / np.float32(np.iinfo(g.dtype).max)


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A float (H, W) image -> ``size`` with Pillow's bilinear filter on float32 (no 8-bit rounding)."""
    from PIL import Image

    h, w = size_hw(size)
    a = np.ascontiguousarray(img, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"resize_image expects a 2-D array, got shape {a.shape}")
    if a.shape == (h, w):
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask -> ``size`` by area: True where at least half of the target pixel was inside."""
    m = np.asarray(mask).astype(bool)
    h, w = size_hw(size)
    if m.shape == (h, w):
        return m.copy()
    return resize_image(m.astype(np.float32), (h, w)) >= 0.5


def to_model_input(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An (H, W) or (H, W, C) image array -> the model input: grey float32 in [0, 1] on the (size x size) grid."""
    return np.clip(resize_image(to_grey(img), size), 0.0, 1.0)
