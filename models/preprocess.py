"""The one path from an image (or mask) to a model input: grey, [0, 1], resized to the input grid.

Training (``models.data``), bundle inference on arrays and DICOM audits (``service.audit`` hands
this as the pixel transform to ``dicom_io.annotations.read_study``) all go through
:func:`to_model_input`, so a DICOM frame and the same image read from a file give the same model
input (``tests`` check it). Colour becomes grey with the ITU-R BT.601 luma weights (as Pillow's
``convert("L")`` and the DICOM reader do); resizing is Pillow's bilinear filter on float32 pixels,
which widens its support when shrinking (anti-aliased), with no rounding to 8 bits in between.
Masks are resized by area: a target pixel is inside when at least half of it was.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LUMA", "to_grey", "resize_image", "resize_mask", "to_model_input", "size_hw"]

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights (R, G, B)."""


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a square size or an (h, w) pair; both must be positive."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def to_grey(img: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) array of any dtype -> (H, W) float32 in [0, 1].

    uint8 / uint16 are scaled by their full range; floats already in [0, 1] are kept; other floats
    and integers are min-max scaled. RGB(A) -> luma (BT.601); one channel -> itself.
    """
    a = np.asarray(img)
    if a.ndim == 3:
        if a.shape[-1] >= 3:
            a = a[..., :3].astype(np.float32) @ LUMA if a.dtype != np.float32 else a[..., :3] @ LUMA
        elif a.shape[-1] in (1, 2):
            a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {np.asarray(img).shape}")
    src = np.asarray(img).dtype
    if src == np.uint8:
        out = a.astype(np.float32) / 255.0
    elif src == np.uint16:
        out = a.astype(np.float32) / 65535.0
    else:
        out = a.astype(np.float32)
        lo, hi = float(np.nanmin(out)) if out.size else 0.0, float(np.nanmax(out)) if out.size else 0.0
        if lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return np.clip(np.nan_to_num(out), 0.0, 1.0).astype(np.float32)


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A float (H, W) image -> ``size`` with Pillow's bilinear filter on float32 (no 8-bit rounding)."""
    from PIL import Image

    h, w = size_hw(size)
    a = np.ascontiguousarray(img, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"resize_image expects a 2-D array, got shape {a.shape}")
    if a.shape == (h, w):
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask -> ``size`` by area: True where at least half of the target pixel was inside."""
    m = np.asarray(mask).astype(bool)
    h, w = size_hw(size)
    if m.shape == (h, w):
        return m.copy()
    return resize_image(m.astype(np.float32), (h, w)) >= 0.5


def to_model_input(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Any image array -> the model input: grey float32 in [0, 1] on the (size x size) grid."""
    return np.clip(resize_image(to_grey(img), size), 0.0, 1.0)
