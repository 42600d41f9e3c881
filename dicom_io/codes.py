"""labelqa's own coded concepts, in one private coding scheme.

Coding Scheme Designator ``99LABELQA`` (private schemes start with ``99``, PS3.16 section 8.2),
version ``1``, responsible organisation: the labelqa project. Every concept labelqa puts into a
DICOM object that has no standard code is defined here, and only here; ``docs/conformance.md``
lists them. Code values are short (SH, at most 16 characters) and never reused with another meaning.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

__all__ = [
    "SCHEME", "SCHEME_VERSION", "SCHEME_NAME", "SCHEME_RESPONSIBLE", "ANNOTATION_QUALITY_AUDIT",
    "SUSPECTED_ANNOTATION_ERROR", "HARD_CASE", "CONSISTENT_ANNOTATION", "AUDIT_SUMMARY", "SUSPECTED_MASK_ERROR",
    "VERDICT_CODES", "FLAGGED_VERDICTS", "GIVEN_LABEL", "CONSENSUS_LABEL", "SYSTEMATIC_DISAGREEMENT",
    "MASK_ERROR_KIND", "DISAGREEMENT_REGION", "MODELS_CANNOT_JUDGE",
    "MISSING_STRUCTURE", "SPURIOUS_STRUCTURE", "BOUNDARY_TOO_TIGHT",
    "BOUNDARY_TOO_LOOSE", "SHIFTED_MASK", "WRONG_SEGMENT_TYPE", "MISSING_SLICES", "EXTRA_SLICES", "SHIFTED_SLICES",
    "MASK_ERROR_KIND_CODES", "SALIENCY_AGREEMENT",
    "P_GIVEN_LABEL", "REANNOTATION_PRIORITY", "N_MEMBERS_DISAGREEING", "N_MEMBERS", "CONSENSUS_PROBABILITY",
    "DICE_TO_CONSENSUS", "HD95_TO_CONSENSUS", "MASK_AGREEMENT", "MASK_ERROR_SCORE", "N_DISAGREEMENT_REGIONS",
    "DISAGREEMENT_AREA", "COUNT_SUSPECTED", "COUNT_HARD", "COUNT_CONSISTENT", "COUNT_SUSPECTED_MASK",
    "VERDICT_COUNT_CODES", "ANNOTATION_OBJECT", "SALIENCY_HEATMAP", "SUGGESTED_CORRECTION", "REVIEWER_DECISION",
    "CORRECTED_LABEL", "ERROR_CONFIRMED", "LABEL_CONFIRMED", "REVIEWER_UNSURE", "DECISION_CODES", "UNIT_ONE",
    "UNIT_MM", "UNIT_MM2", "UNIT_MM3", "UNIT_PERCENT", "UNIT_SCORE", "UNIT_COUNT", "UNIT_PIXELS", "QUALITY_ISSUE",
    "ALL_CODES", "label_code", "CORRECTED_MASK", "MEMBERS_DISAGREEING_SHARE", "REGION_AREA", "REGION_VOLUME",
    "PREDICTED_DICE", "GIVEN_MASK_VOLUME", "CONSENSUS_MASK_VOLUME", "DISAGREEMENT_VOLUME", "FIRST_SLICE", "LAST_SLICE",
    "KEY_SLICE_OVERLAY",
    "FLAGS_DRAWN", "SUGGESTION_NOT_AS_SEG", "IMAGING_MEASUREMENT_REPORT", "GIVEN_LABEL_PROBABILITY",
    "MODELS_LABEL_PROBABILITY", "MODELS_SALIENCY_AGREEMENT", "DICE_WITH_MODELS", "HD95_TO_MODELS",
]

SCHEME = "99LABELQA"
"""Coding Scheme Designator of labelqa's private concepts."""

SCHEME_VERSION = "1"
SCHEME_NAME = "labelqa annotation quality audit concepts"
SCHEME_RESPONSIBLE = "labelqa project"


def _c(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


# Document and procedure.
ANNOTATION_QUALITY_AUDIT = _c("LQA-0001", "Annotation quality audit")
"""SR document title and the procedure reported (TID 1500 row 'Procedure reported')."""

# Verdicts: the finding of each measurement group.
SUSPECTED_ANNOTATION_ERROR = _c("LQA-0101", "Suspected annotation error")
HARD_CASE = _c("LQA-0102", "Hard case")
CONSISTENT_ANNOTATION = _c("LQA-0103", "Annotation consistent with model consensus")
AUDIT_SUMMARY = _c("LQA-0104", "Annotation audit summary")
"""Finding of the one per-study summary measurement group."""
SUSPECTED_MASK_ERROR = _c("LQA-0105", "Suspected segmentation mask error")

VERDICT_CODES: dict[str, Code] = {
    "suspected_label_error": SUSPECTED_ANNOTATION_ERROR,
    "suspected_mask_error": SUSPECTED_MASK_ERROR,
    "hard_case": HARD_CASE,
    "consistent": CONSISTENT_ANNOTATION,
}
"""Verdict (the values of ``models.verdict.Verdict``; a test keeps the two in step) -> coded finding."""

FLAGGED_VERDICTS: frozenset[str] = frozenset({"suspected_label_error", "suspected_mask_error"})
"""The verdicts that flag an annotation (heatmaps, KOS selection): ``models.verdict.FLAGGED``."""

# Qualitative evaluations (values are label codes from the vocabulary).
GIVEN_LABEL = _c("LQA-0201", "Given label")
CONSENSUS_LABEL = _c("LQA-0202", "Model consensus label")
SYSTEMATIC_DISAGREEMENT = _c("LQA-0203", "Systematic disagreement (cohort finding)")
MASK_ERROR_KIND = _c("LQA-0204", "Segmentation mask error kind")
DISAGREEMENT_REGION = _c("LQA-0205", "Region of disagreement with the model consensus")
MODELS_CANNOT_JUDGE = _c("LQA-0206", "Models cannot judge masks of this class")
"""A TEXT item of the study summary: the ensemble was not competent for a class (too weak on its
masks), so none of that class's masks is flagged; the text names the class and the evidence."""

# Mask error kinds (values of LQA-0204; the values of ``models.verdict.MaskErrorKind``).
MISSING_STRUCTURE = _c("LQA-0501", "Missing structure")
SPURIOUS_STRUCTURE = _c("LQA-0502", "Spurious structure")
BOUNDARY_TOO_TIGHT = _c("LQA-0503", "Boundary too tight")
BOUNDARY_TOO_LOOSE = _c("LQA-0504", "Boundary too loose")
SHIFTED_MASK = _c("LQA-0505", "Shifted mask")
WRONG_SEGMENT_TYPE = _c("LQA-0506", "Wrong segment type")
MISSING_SLICES = _c("LQA-0507", "Missing slices")
EXTRA_SLICES = _c("LQA-0508", "Extra slices")
SHIFTED_SLICES = _c("LQA-0509", "Mask shifted across slices")

MASK_ERROR_KIND_CODES: dict[str, Code] = {
    "missing_structure": MISSING_STRUCTURE,
    "spurious_structure": SPURIOUS_STRUCTURE,
    "boundary_too_tight": BOUNDARY_TOO_TIGHT,
    "boundary_too_loose": BOUNDARY_TOO_LOOSE,
    "shifted": SHIFTED_MASK,
    "wrong_segment_type": WRONG_SEGMENT_TYPE,
    "missing_slices": MISSING_SLICES,
    "extra_slices": EXTRA_SLICES,
    "shifted_slices": SHIFTED_SLICES,
}
"""Mask error kind -> coded value of LQA-0204 (and of each region's kind)."""

# Numeric measurements, unit UCUM "1".
SALIENCY_AGREEMENT = _c("LQA-0301", "Saliency agreement between ensemble members")
P_GIVEN_LABEL = _c("LQA-0302", "Consensus probability of the given label")
REANNOTATION_PRIORITY = _c("LQA-0303", "Re-annotation priority")
N_MEMBERS_DISAGREEING = _c("LQA-0304", "Number of ensemble members disagreeing")
N_MEMBERS = _c("LQA-0305", "Number of ensemble members")
CONSENSUS_PROBABILITY = _c("LQA-0306", "Consensus probability of the consensus label")
DICE_TO_CONSENSUS = _c("LQA-0307", "Dice coefficient of the given mask to the model consensus")
HD95_TO_CONSENSUS = _c("LQA-0308", "95th percentile Hausdorff distance to the model consensus")
MASK_AGREEMENT = _c("LQA-0309", "Mask agreement between ensemble members")
MASK_ERROR_SCORE = _c("LQA-0310", "Segmentation mask error score")
N_DISAGREEMENT_REGIONS = _c("LQA-0320", "Number of regions of disagreement")
DISAGREEMENT_AREA = _c("LQA-0321", "Area of disagreement with the model consensus")
# Short names of the values printed beside a drawn flag (a viewer's text box is one line per value).
MEMBERS_DISAGREEING_SHARE = _c("LQA-0322", "Models disagreeing with the label")
"""The share (percent) of ensemble members whose prediction differs from the annotation."""
REGION_AREA = _c("LQA-0323", "Area of this region")
REGION_VOLUME = _c("LQA-0324", "Volume of this region")
PREDICTED_DICE = _c("LQA-0340", "Predicted Dice coefficient of the given mask")
GIVEN_MASK_VOLUME = _c("LQA-0341", "Volume of the given mask")
CONSENSUS_MASK_VOLUME = _c("LQA-0342", "Volume of the model consensus mask")
DISAGREEMENT_VOLUME = _c("LQA-0343", "Volume of disagreement with the model consensus")
FIRST_SLICE = _c("LQA-0344", "First slice of the given mask")
LAST_SLICE = _c("LQA-0345", "Last slice of the given mask")
KEY_SLICE_OVERLAY = _c("LQA-0406", "Mask overlay on a key slice")
GIVEN_LABEL_PROBABILITY = _c("LQA-0330", "Probability of the given label")
MODELS_LABEL_PROBABILITY = _c("LQA-0331", "Probability of the models' label")
MODELS_SALIENCY_AGREEMENT = _c("LQA-0332", "Saliency agreement of the models")
DICE_WITH_MODELS = _c("LQA-0333", "Dice with the models' mask")
HD95_TO_MODELS = _c("LQA-0334", "Distance to the models' mask (HD95)")
COUNT_SUSPECTED = _c("LQA-0311", "Number of suspected annotation errors")
COUNT_HARD = _c("LQA-0312", "Number of hard cases")
COUNT_CONSISTENT = _c("LQA-0313", "Number of consistent annotations")
COUNT_SUSPECTED_MASK = _c("LQA-0314", "Number of suspected segmentation mask errors")

VERDICT_COUNT_CODES: dict[str, Code] = {
    "suspected_label_error": COUNT_SUSPECTED,
    "suspected_mask_error": COUNT_SUSPECTED_MASK,
    "hard_case": COUNT_HARD,
    "consistent": COUNT_CONSISTENT,
}

# References.
ANNOTATION_OBJECT = _c("LQA-0401", "Audited annotation object")
SALIENCY_HEATMAP = _c("LQA-0402", "Consensus saliency heatmap")
SUGGESTED_CORRECTION = _c("LQA-0403", "Suggested mask correction (model consensus)")
FLAGS_DRAWN = _c("LQA-0404", "Flags drawn on the images (measurement report)")
"""COMPOSITE reference from the QA report to the SR that draws each flag on its source image."""
SUGGESTION_NOT_AS_SEG = _c("LQA-0405", "Suggested mask correction shown only in the mask overlay")
"""TEXT: why a flagged mask has no suggestion SEG (its source image has no plane geometry)."""

# Human review of the flags (the review workbench).
REVIEWER_DECISION = _c("LQA-0601", "Reviewer decision")
CORRECTED_LABEL = _c("LQA-0602", "Corrected label")
CORRECTED_MASK = _c("LQA-0603", "Corrected mask")
"""Value: how the reviewer corrected the mask (LQA-0403: the suggested correction was accepted)."""
ERROR_CONFIRMED = _c("LQA-0611", "Annotation error confirmed by reviewer")
LABEL_CONFIRMED = _c("LQA-0612", "Annotation confirmed correct by reviewer")
REVIEWER_UNSURE = _c("LQA-0613", "Reviewer unsure")

DECISION_CODES: dict[str, Code] = {
    "label_wrong": ERROR_CONFIRMED,
    "label_right": LABEL_CONFIRMED,
    "unsure": REVIEWER_UNSURE,
}

UNIT_ONE = Code("1", "UCUM", "no units")
"""UCUM unity (kept for readers of older reports; new reports name what is counted or scored)."""
UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_SCORE = Code("{score}", "UCUM", "score")
"""A dimensionless score (probability, agreement, Dice, priority): viewers print the unit code as it is."""
UNIT_COUNT = Code("{count}", "UCUM", "count")
UNIT_PIXELS = Code("{pixels}", "UCUM", "pixels")
"""An area in pixels, where the image has no pixel spacing."""

IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
"""Title of the SR that draws the flags: viewers such as OHIF draw only reports with this title."""

QUALITY_ISSUE = Code("113010", "DCM", "Quality Issue")
"""KOS document title (CID 7010). Never 113001 'Rejected for Quality Reasons' (an IOCM rejection)."""

ALL_CODES: tuple[Code, ...] = tuple(
    v for v in globals().values() if isinstance(v, Code) and v.scheme_designator == SCHEME
)
"""Every private concept, for the conformance statement and its test."""


def label_code(value: str, meaning: str | None = None) -> Code:
    """A private code for a class label that has no vocabulary code (value: 'LBL-' + 8 hex of its name)."""
    import hashlib

    digest = hashlib.sha256(value.encode()).hexdigest()[:8].upper()
    return Code(f"LBL-{digest}", SCHEME, meaning or value)
