"""Mask overlay Secondary Capture: the given mask, the model consensus and where they disagree.

One RGB Secondary Capture per flagged mask (PS3.3 A.8.1, built like the heatmap SCs by
``heatmap.secondary_capture``): the windowed source frame in grey, the disagreement filled in colour
(red: in the consensus, not in the given mask, i.e. missing; blue: in the given mask, not in the
consensus, i.e. spurious), the given mask's outline in green (just inside it), the consensus outline in
magenta (just outside it, so a shared edge shows both lines), each
region's bounding box numbered in white, a legend line and, below it, the burned-in "NOT FOR
DIAGNOSIS" line and caption (``heatmap.burn_in_band``: centred, away from viewers' controls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.results.heatmap import _BAND_H, burn_in_band, secondary_capture, source_frame_float

__all__ = [
    "SERIES_DESCRIPTION", "GIVEN_RGB", "CONSENSUS_RGB", "MISSING_RGB", "SPURIOUS_RGB", "outline",
    "render_mask_overlay", "mask_overlay_sc",
]

SERIES_DESCRIPTION = "labelqa mask overlays (NOT FOR DIAGNOSIS)"
GIVEN_RGB = (0, 230, 0)
CONSENSUS_RGB = (255, 0, 255)
MISSING_RGB = (255, 40, 40)
SPURIOUS_RGB = (40, 110, 255)
_LEGEND_H = 16


def outline(mask: np.ndarray, *, outer: bool = False, width: int = 1) -> np.ndarray:
    """The boundary of a bool mask, ``width`` pixels thick: inside it (its pixels with a 4-neighbour
    outside; the image edge counts), or with ``outer`` just outside it."""
    m = np.asarray(mask, bool)
    grown = m.copy() if outer else ~m
    for _ in range(max(1, width)):
        p = np.pad(grown, 1, constant_values=not outer)
        grown = grown | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return grown & ~m if outer else grown & m


def _resize_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(int), mask.shape[1] - 1)
    return np.asarray(mask, bool)[np.ix_(rows, cols)]


def render_mask_overlay(
    base: np.ndarray,
    given: np.ndarray,
    consensus: np.ndarray,
    caption: str = "",
    regions: Sequence[dict[str, Any]] = (),
) -> np.ndarray:
    """RGB uint8 picture of grey ``base`` ([0, 1]) with the given and consensus masks (bool, same grid)."""
    from PIL import Image, ImageDraw, ImageFont

    bilinear = Image.Resampling.BILINEAR

    if given.shape != base.shape or consensus.shape != base.shape:
        raise ValueError(f"masks {given.shape}/{consensus.shape} must be on the image grid {base.shape}")
    h0, w0 = base.shape
    scale = min(512 / max(h0, w0), max(1.0, 256 / max(h0, w0)))
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    grey = np.asarray(Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).resize((w, h), bilinear))
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    g, c = _resize_mask(given, h, w), _resize_mask(consensus, h, w)
    for region, colour in ((c & ~g, MISSING_RGB), (g & ~c, SPURIOUS_RGB)):
        rgb[region] = 0.45 * rgb[region] + 0.55 * np.asarray(colour, np.float32)
    width = 2 if scale >= 2 else 1
    rgb[outline(c, outer=True, width=width)] = CONSENSUS_RGB  # just outside the consensus,
    rgb[outline(g, width=width)] = GIVEN_RGB  # just inside the given mask: shared edges show both
    canvas = np.zeros((h + _LEGEND_H + _BAND_H, max(w, 300), 3), np.uint8)
    canvas[:h, :w] = np.clip(rgb, 0, 255).round().astype(np.uint8)
    img = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, r in enumerate(regions, start=1):
        r0, c0, r1, c1 = (float(v) for v in r["bbox"])
        box = (c0 * w / w0, r0 * h / h0, max(c0 + 1, c1) * w / w0 - 1, max(r0 + 1, r1) * h / h0 - 1)
        draw.rectangle(box, outline=(255, 255, 255))
        draw.text((box[0] + 2, box[1] + 1), str(i), fill=(255, 255, 255), font=font)
    burn_in_band(draw, h + _LEGEND_H, canvas.shape[1], caption)
    y, x = h + 2, 4
    for text, colour in (("given", GIVEN_RGB), ("consensus", CONSENSUS_RGB), ("missing", MISSING_RGB),
                         ("spurious", SPURIOUS_RGB)):
        draw.rectangle((x, y + 2, x + 8, y + 10), fill=colour)
        draw.text((x + 11, y), text, fill=(255, 255, 255), font=font)
        x += 16 + 7 * len(text)
    return np.asarray(img, dtype=np.uint8)


def mask_overlay_sc(
    source: Dataset,
    frame: int | None,
    given: np.ndarray,
    consensus: np.ndarray,
    *,
    caption: str,
    regions: Sequence[dict[str, Any]] = (),
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    series_description: str = SERIES_DESCRIPTION,
) -> Dataset:
    """The overlay Secondary Capture of one audited mask (``given``/``consensus``: bool on the frame's grid)."""
    base = source_frame_float(source, frame)
    pixels = render_mask_overlay(base, np.asarray(given, bool), np.asarray(consensus, bool), caption, regions)
    return secondary_capture(
        source, frame, pixels, series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=manufacturer,
        series_description=series_description[:64],
        derivation_description="Given segmentation mask (green), labelqa model consensus (magenta) and their "
        "disagreement (red: missing, blue: spurious) over the source frame",
    )
