"""Grad-CAM maps of ensemble members, computed with ``monai.visualize.GradCAM``, done carefully.

- Samples are grouped by target class and each group gets one integer ``class_idx``: a per-sample
  index tensor makes MONAI build a BxB score matrix, and ``class_idx=None`` mixes all targets.
- We take the raw map (``compute_map``: ReLU of the gradient-weighted activations at the target
  layer) and do our own resizing and per-map min-max normalisation to [0, 1] with 1 = most attention
  (MONAI's default post-processing maps the highest attention to 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["member_cams", "normalise_maps"]


def member_cams(model: nn.Module, layer: str, images: np.ndarray, classes: np.ndarray, *, grid: int,
                batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """(N, grid, grid) float32 Grad-CAM maps in [0, 1] of ``model`` for each image's target class."""
    from monai.visualize import GradCAM

    device = torch.device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    cam = GradCAM(nn_module=model, target_layers=layer)
    out = np.zeros((len(images), grid, grid), dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64)
    try:
        for c in np.unique(classes):
            idx = np.flatnonzero(classes == c)
            for s in range(0, len(idx), batch_size):
                b = idx[s:s + batch_size]
                x = torch.from_numpy(np.ascontiguousarray(images[b][:, None], dtype=np.float32)).to(device)
                raw = cam.compute_map(x, class_idx=int(c)).detach().float()
                raw = F.interpolate(raw, size=(grid, grid), mode="bilinear", align_corners=False)[:, 0]
                out[b] = normalise_maps(raw.cpu().numpy())
    finally:
        # ModelWithHooks registered hooks on the model's layer; remove them so the model stays clean.
        _remove_hooks(model)
    model.zero_grad(set_to_none=True)
    return out


def _remove_hooks(model: nn.Module) -> None:
    for m in model.modules():
        m._forward_hooks.clear()
        m._backward_hooks.clear()
        if hasattr(m, "_forward_pre_hooks"):
            m._forward_pre_hooks.clear()
        if hasattr(m, "_backward_pre_hooks"):
            m._backward_pre_hooks.clear()


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max normalisation to [0, 1] (1 = highest attention); flat maps become 0."""
    m = maps.reshape(len(maps), -1).astype(np.float32)
    lo = m.min(axis=1, keepdims=True)
    span = m.max(axis=1, keepdims=True) - lo
    m = np.where(span > 1e-12, (m - lo) / np.maximum(span, 1e-12), 0.0)
    return m.reshape(maps.shape).astype(np.float32)
