"""Heatmap Secondary Capture: the consensus Grad-CAM over the windowed source frame.

One RGB Secondary Capture Image (highdicom ``SCImage``, PS3.3 A.8.1) per flagged annotation: the
source frame (windowed, grey) with the saliency map blended on top, a colour bar, and the burned-in
line "NOT FOR DIAGNOSIS - annotation QA" with a caption (``BurnedInAnnotation`` YES), centred in a band
below the image: viewers put their controls at the top (OHIF's cine bar) and their text in the corners.
Same patient and study as the source, its own series; ``SourceImageSequence`` points at the source image and frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.pixels import frame_to_float

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = [
    "NOT_FOR_DIAGNOSIS", "source_frame_float", "burn_in_band", "render_overlay", "render_panel", "heatmap_sc",
    "secondary_capture",
]

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS - annotation QA"
_BAR_W = 56
_BAND_H = 30


def source_frame_float(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """The (1-based) frame of a source image as float32 (H, W) in [0, 1], windowed as the models saw it."""
    return frame_to_float(ds, frame)


def burn_in_band(draw: ImageDraw.ImageDraw, top: int, width: int, caption: str = "") -> None:
    """Write the warning line and ``caption``, centred, into the band of ``_BAND_H`` rows from row ``top``
    of a picture ``width`` pixels wide."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    for y, text, colour in ((top + 2, NOT_FOR_DIAGNOSIS, (255, 255, 0)), (top + 15, caption, (255, 255, 255))):
        if text:
            x = max(2, (width - int(draw.textlength(text, font=font))) // 2)
            draw.text((x, y), text, fill=colour, font=font)


def render_overlay(base: np.ndarray, heat: np.ndarray, caption: str = "") -> np.ndarray:
    """RGB uint8 picture: grey ``base`` with ``heat`` (both [0, 1]) blended, a colour bar and the warning line."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    bilinear = Image.Resampling.BILINEAR

    cmap = matplotlib.colormaps["jet"]
    h0, w0 = base.shape
    scale = min(512 / max(h0, w0), max(1.0, 256 / max(h0, w0)))
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    grey = np.asarray(Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).resize((w, h), bilinear))
    heat_img = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32), mode="F").resize((w, h), bilinear)
    hm = np.clip(np.asarray(heat_img, dtype=np.float32), 0, 1)
    colour = cmap(hm)[..., :3]
    alpha = (0.15 + 0.45 * hm)[..., None]
    grey_rgb = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    blended = (1 - alpha) * grey_rgb + alpha * colour

    canvas = np.zeros((h + _BAND_H, w + _BAR_W, 3), dtype=np.float32)
    canvas[:h, :w] = blended
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)
    canvas[:h, w + 8 : w + 22] = cmap(ramp)[:, None, :3]
    img = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    burn_in_band(draw, h, w + _BAR_W, caption)
    draw.text((w + 24, 0), "1.0", fill=(255, 255, 255), font=font)
    draw.text((w + 24, h - 12), "0.0", fill=(255, 255, 255), font=font)
    return np.asarray(img, dtype=np.uint8)


def _unit(a: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] if it is not already in that range."""
    lo, hi = float(np.min(a)), float(np.max(a))
    if lo >= 0.0 and hi <= 1.0:
        return a
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def render_panel(base: np.ndarray, maps: dict[str, np.ndarray], caption: str = "") -> np.ndarray:
    """Several saliency maps over the same frame side by side (e.g. consensus, then each ensemble member)."""
    tiles = [render_overlay(base, heat, f"{name}: {caption}" if caption else name) for name, heat in maps.items()]
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    return np.concatenate(tiles, axis=1)


def _orientation(source: Dataset) -> tuple[str, str]:
    po = source.get("PatientOrientation")
    if po is not None and len(po) == 2 and all(str(v) for v in po):
        return (str(po[0]), str(po[1]))
    iop = source.get("ImageOrientationPatient")
    if iop is None:  # enhanced multi-frame images keep it in the shared functional groups
        try:
            iop = source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError):
            iop = None
    if iop is not None and len(iop) == 6:
        letters = (("L", "R"), ("P", "A"), ("H", "F"))

        def axis(vec: Sequence[float]) -> str:
            i = int(np.argmax(np.abs(vec)))
            return letters[i][0] if vec[i] > 0 else letters[i][1]

        return (axis([float(v) for v in iop[:3]]), axis([float(v) for v in iop[3:]]))
    return ("L", "F")  # a projection radiograph's usual orientation; informational only


def heatmap_sc(
    source: Dataset,
    frame: int | None,
    heat: np.ndarray,
    *,
    caption: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    series_description: str = "labelqa saliency heatmaps (NOT FOR DIAGNOSIS)",
    members: dict[str, np.ndarray] | None = None,
) -> Dataset:
    """The heatmap Secondary Capture of one annotation (``heat``: float (h, w) in [0, 1]).

    With ``members`` (name -> map), the picture is a panel: the consensus map, then each member's.
    """
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heat.shape}")
    base = source_frame_float(source, frame)
    if members:
        maps = {"consensus": heat, **{str(k): _unit(np.asarray(v, dtype=np.float32)) for k, v in members.items()}}
        pixels = render_panel(base, maps)
    else:
        pixels = render_overlay(base, heat, caption)
    return secondary_capture(
        source, frame, pixels, series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=manufacturer,
        series_description=series_description[:64],
        derivation_description="Consensus Grad-CAM saliency of the labelqa model ensemble over the source frame",
    )


def secondary_capture(
    source: Dataset,
    frame: int | None,
    pixels: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    series_description: str,
    derivation_description: str,
) -> Dataset:
    """An RGB Secondary Capture of ``pixels`` (uint8 (h, w, 3), burned-in text) derived from ``source``'s frame:
    same patient and study, Source Image Sequence -> the source (and frame), body part/laterality copied."""
    from highdicom.sc import SCImage

    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=_orientation(source),
    )
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    # General Series: Laterality is 2C on the body part; copy what the source says, else "unknown" (empty).
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = str(source.BodyPartExamined)
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality in ("R", "L"):
        sc.Laterality = str(laterality)
    elif not source.get("BodyPartExamined"):
        sc.Laterality = ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = series_description
    sc.DerivationDescription = derivation_description
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None and int(getattr(source, "NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = int(frame)
    sc.SourceImageSequence = [ref]
    return sc
