"""labelqa's result series: their numbers, and the one rule that recognises our own outputs.

Every object labelqa writes into a study carries ``Manufacturer`` "labelqa" and a series number from
the reserved block 9901-9909 (high, so viewers sort them after the acquired series). The *results*
of an audit (QA report, heatmaps, KOS, parametric maps, suggested corrections, overlays) are our own
outputs: a PACS that routes the whole study back must not trigger a new audit with them, nor have
them audited as annotations. A reviewer's corrected annotation (series 9907) is different: it is an
annotation (the reviewer's, written by labelqa), read and audited like any other, and it is what a
corrected data set exported with ``labelqa export --dicom`` holds. :func:`is_own_output` is the one
test, with that one meaning, used by the study reader (:mod:`dicom_io.study`), the pipeline, the
export and the demo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "MANUFACTURER",
    "SR_SERIES_NUMBER",
    "HEATMAP_SERIES_NUMBER",
    "KOS_SERIES_NUMBER",
    "PMAP_SERIES_NUMBER",
    "SUGGESTION_SEG_SERIES_NUMBER",
    "OVERLAY_SERIES_NUMBER",
    "REVIEWED_LABEL_SERIES_NUMBER",
    "DRAWN_SR_SERIES_NUMBER",
    "RESERVED_SERIES_NUMBERS",
    "OWN_SERIES_NUMBERS",
    "found_text",
    "is_own_output",
    "is_own_output_dataset",
]

MANUFACTURER = "labelqa"
"""Manufacturer (0008,0070) of every object labelqa writes."""

SR_SERIES_NUMBER = 9901
HEATMAP_SERIES_NUMBER = 9902
KOS_SERIES_NUMBER = 9903
PMAP_SERIES_NUMBER = 9904
SUGGESTION_SEG_SERIES_NUMBER = 9905
OVERLAY_SERIES_NUMBER = 9906
REVIEWED_LABEL_SERIES_NUMBER = 9907
"""Annotations corrected by a reviewer (superseding SR / SEG written by the review workbench)."""

DRAWN_SR_SERIES_NUMBER = 9908
"""The flags drawn on their source images (a TID 1500 report that viewers such as OHIF draw)."""

RESERVED_SERIES_NUMBERS = range(9901, 9910)
"""The reserved block of labelqa's series numbers (9901-9909)."""
OWN_SERIES_NUMBERS = frozenset(RESERVED_SERIES_NUMBERS) - {REVIEWED_LABEL_SERIES_NUMBER}
"""The series of labelqa's own results: the reserved block but the reviewed annotations."""


def is_own_output(manufacturer: object, series_number: object) -> bool:
    """Whether an instance with this Manufacturer and Series Number is one of labelqa's result objects (a
    reviewer's corrected annotation is not: it is an annotation)."""
    if str(manufacturer or "").strip() != MANUFACTURER:
        return False
    try:
        return int(str(series_number).strip()) in OWN_SERIES_NUMBERS
    except (TypeError, ValueError):
        return False


def is_own_output_dataset(ds: Dataset) -> bool:
    """:func:`is_own_output` on a pydicom dataset (header only is enough)."""
    return is_own_output(ds.get("Manufacturer", ""), ds.get("SeriesNumber"))


def found_text(n_label_errors: int, n_mask_errors: int = 0, n_hard: int = 0) -> str:
    """What an audit found, in a few words for a series description: "2 suspected errors",
    "1 suspected label error, 1 suspected mask error", "no suspected errors, 3 hard cases"."""
    def n(k: int, word: str) -> str:
        return f"{k} {word}" + ("" if k == 1 else "s")

    if n_label_errors and n_mask_errors:
        found = f"{n(n_label_errors, 'suspected label error')}, {n(n_mask_errors, 'suspected mask error')}"
    elif n_label_errors or n_mask_errors:
        found = n(n_label_errors + n_mask_errors, "suspected error")
    else:
        found = "no suspected errors"
    return found + (f", {n(n_hard, 'hard case')}" if n_hard else "")
