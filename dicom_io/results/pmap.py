"""Parametric Map of the raw consensus saliency (optional, for viewers that show them: OHIF >= 3.9, Slicer, Weasis).

One single-frame Parametric Map per heatmap, on the source frame's pixel grid (the coarse Grad-CAM grid
resampled bilinearly), float values in [0, 1] with a Real World Value Mapping (unit UCUM "1",
quantity 99LABELQA LQA-0402). highdicom needs the source to have a Frame of Reference (CT, MR, PET...);
for other sources (e.g. secondary captures, most DX) ``saliency_map`` returns None and the heatmap SC
remains the only picture.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicom_io import codes

__all__ = ["SERIES_DESCRIPTION", "supports_parametric_map", "saliency_map"]

SERIES_DESCRIPTION = "labelqa raw saliency (NOT FOR DIAGNOSIS)"


def supports_parametric_map(source: Dataset) -> bool:
    """Whether a Parametric Map can be made on this source image (single frame with a Frame of Reference)."""
    return "FrameOfReferenceUID" in source and int(getattr(source, "NumberOfFrames", 1) or 1) == 1


def saliency_map(
    source: Dataset,
    heat: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    software_version: str,
) -> Dataset | None:
    """The Parametric Map of ``heat`` (float (h, w) in [0, 1]) on ``source``'s grid, or None if unsupported."""
    import highdicom as hd
    from PIL import Image

    if not supports_parametric_map(source):
        return None
    rows, cols = int(source.Rows), int(source.Columns)
    img = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32), mode="F").resize(
        (cols, rows), Image.Resampling.BILINEAR
    )
    values = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation="consensus Grad-CAM saliency", unit=codes.UNIT_ONE,
        value_range=(0.0, 1.0), slope=1.0, intercept=0.0, quantity_definition=codes.SALIENCY_HEATMAP,
    )
    pm = hd.pm.ParametricMap(
        [source], values, series_instance_uid, series_number, sop_instance_uid, instance_number, manufacturer,
        "labelqa", software_version, "0", False, [mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="SALIENCY", content_description="NOT FOR DIAGNOSIS - annotation QA",
    )
    pm.SeriesDescription = SERIES_DESCRIPTION
    if source.get("BodyPartExamined"):
        pm.BodyPartExamined = str(source.BodyPartExamined)
    laterality = source.get("Laterality")
    if laterality in ("R", "L"):
        pm.Laterality = str(laterality)
    elif not source.get("BodyPartExamined"):
        pm.Laterality = ""  # General Series 2C: unknown
    return pm
