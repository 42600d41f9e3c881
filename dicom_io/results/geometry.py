"""Plane geometry of source images: whether an image has it, and its header for an SR image library.

A SEG is written only over images with plane geometry (a Frame of Reference, Pixel Spacing, Image
Orientation and Position (Patient), at the top level or in the functional groups): viewers place a
SEG's frames by that geometry, and a SEG without Pixel Measures puts OHIF 3.13 into its error page.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["PLANE_ATTRIBUTES", "has_plane_geometry", "library_header"]

PLANE_ATTRIBUTES = (
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient"),
)
"""(functional group sequence, attribute) of an image's plane geometry."""

_REQUIRED = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")


def _in_groups(ds: Dataset, attr: str) -> bool:
    seq = next(s for s, a in PLANE_ATTRIBUTES if a == attr)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if shared is not None and shared.get(seq) and attr in shared.get(seq)[0]:
        return True
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    return bool(per) and all(g.get(seq) and attr in g.get(seq)[0] for g in per)


def has_plane_geometry(ds: Dataset) -> bool:
    """Whether an image has a Frame of Reference and, for each frame, pixel spacing, orientation and position."""
    if not ds.get("FrameOfReferenceUID"):
        return False
    return all(attr in ds or _in_groups(ds, attr) for attr in _REQUIRED)


def _cross_sectional_complete(ds: Dataset) -> bool:
    if str(ds.get("Modality", "")) not in ("CT", "MR", "PT"):
        return True
    return all(a in ds for a in _REQUIRED)


def library_header(ds: Dataset) -> Dataset | None:
    """The header highdicom's Image Library entry needs: an enhanced multi-frame image keeps its geometry
    in functional groups, so copy it (from the shared groups, else the first frame's) to the top level.
    None when a cross-sectional image has no geometry at all (it is then left out of the library)."""
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return ds if _cross_sectional_complete(ds) else None
    out = Dataset()
    skip = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence",
            "SharedFunctionalGroupsSequence"}
    for elem in ds:
        if elem.keyword not in skip:
            out.add(elem)
    groups = [g for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
              for g in (ds.get(key) or [])[:1]]
    for seq, attr in PLANE_ATTRIBUTES:
        if attr in out:
            continue
        for g in groups:
            items = g.get(seq)
            if items and attr in items[0]:
                setattr(out, attr, items[0][attr].value)
                break
    return out if _cross_sectional_complete(out) else None
