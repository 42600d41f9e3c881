"""The verdicts labelqa gives an annotation: the one definition, used by every layer.

A ``Verdict`` is a ``str`` (``StrEnum``), so records that cross layers stay plain data: the DICOM
writers key their coded concepts (``dicom_io.codes.VERDICT_CODES``) on the same values.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Verdict", "FLAGGED", "LABEL_VERDICTS", "MASK_VERDICTS", "MaskErrorKind"]


class Verdict(StrEnum):
    """What the ensemble says about one annotation (a class label or a mask)."""

    SUSPECTED_LABEL_ERROR = "suspected_label_error"
    """Every model disagrees with the class label, and they agree with each other."""
    SUSPECTED_MASK_ERROR = "suspected_mask_error"
    """Every segmenter overlaps poorly with the mask, and their masks agree with each other."""
    HARD_CASE = "hard_case"
    """Some models disagree, but not enough (or not consistently enough) to flag."""
    CONSISTENT = "consistent"
    """The models agree with the annotation."""

    @property
    def flagged(self) -> bool:
        """Whether this verdict asks for a re-annotation (a suspected error of either kind)."""
        return self in FLAGGED


FLAGGED = frozenset({Verdict.SUSPECTED_LABEL_ERROR, Verdict.SUSPECTED_MASK_ERROR})
"""The verdicts that flag an annotation for review."""

LABEL_VERDICTS = (Verdict.SUSPECTED_LABEL_ERROR, Verdict.HARD_CASE, Verdict.CONSISTENT)
"""The verdicts a class label can get, in the order flagged / hard / consistent."""
MASK_VERDICTS = (Verdict.SUSPECTED_MASK_ERROR, Verdict.HARD_CASE, Verdict.CONSISTENT)
"""The verdicts a mask can get, in the order flagged / hard / consistent."""


class MaskErrorKind(StrEnum):
    """How a mask (or one region of it) differs from what the segmenters agree on."""

    MISSING_STRUCTURE = "missing_structure"
    """A structure the segmenters find is absent from the mask (a component dropped)."""
    SPURIOUS_STRUCTURE = "spurious_structure"
    """The mask carries a structure the segmenters do not find (a false blob)."""
    BOUNDARY_TOO_TIGHT = "boundary_too_tight"
    """The mask's outline lies inside the structure (under-segmented, eroded)."""
    BOUNDARY_TOO_LOOSE = "boundary_too_loose"
    """The mask's outline lies outside the structure (over-segmented, dilated)."""
    SHIFTED = "shifted"
    """The mask has the right shape but sits displaced from the structure."""
    WRONG_SEGMENT_TYPE = "wrong_segment_type"
    """The mask outlines a structure of another class (drawn on the wrong segment)."""
    MISSING_SLICES = "missing_slices"
    """Volumes: whole slices of the structure are absent from the mask (it stops early, or has a gap)."""
    EXTRA_SLICES = "extra_slices"
    """Volumes: the mask continues on slices where the structure has ended."""
    SHIFTED_SLICES = "shifted_slices"
    """Volumes: the mask has the right shape but sits displaced across slices (through-plane)."""
