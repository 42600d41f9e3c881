"""The verdicts labelqa gives an annotation: the one definition, used by every layer.

A ``Verdict`` is a ``str`` (``StrEnum``), so records that cross layers stay plain data: the DICOM
writers key their coded concepts (``dicom_io.codes.VERDICT_CODES``) on the same values.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Verdict", "FLAGGED"]


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
