"""Write-back of a human review: a superseding annotation with the corrected label, a verified QA report.

- :func:`corrected_annotation`: a copy of the reviewed annotation object whose label is the
  reviewer's. For an SR the coded finding at the audited content item is replaced, the reviewer is
  added as person observer (TID 1002), the document is VERIFIED by the reviewer and its Predecessor
  Documents Sequence (PS3.3 C.17.2) names the annotation it supersedes. For a SEG the audited
  segment's Segmented Property Type (and label) is replaced. Both go into labelqa's reviewed-label
  series (``REVIEWED_LABEL_SERIES_NUMBER``), so an echo from the PACS is never audited again.
- :func:`verified_report`: the study's QA report SR reissued with, in each reviewed measurement
  group, the decision (LQA-0601), the corrected label (LQA-0602) and the comment, VERIFIED with the
  reviewer as Verifying Observer (PS3.3 C.17.2.1) and the earlier versions as predecessors.

UIDs are derived from the inputs (``uids.derived_uid``): writing the same decision again gives the
same objects. No torch, no database here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import UID

from dicom_io import codes
from dicom_io.results.records import as_code
from dicom_io.results.series import MANUFACTURER, REVIEWED_LABEL_SERIES_NUMBER
from dicom_io.results.uids import derived_uid
from dicom_io.sop import SEG_STORAGE

__all__ = ["Reviewer", "ReviewedItem", "Correction", "corrected_annotation", "verified_report", "RevisionError"]

REVIEWED_SERIES_DESCRIPTION = "labelqa reviewed labels"
_FINDING = ("DCM", "121071")
_GROUP = ("DCM", "125007")
_COMMENT = Code("121106", "DCM", "Comment")


class RevisionError(ValueError):
    """The annotation cannot be revised as asked (the message says what is wrong)."""


@dataclass(frozen=True)
class Reviewer:
    """Who verified: a person name (DICOM PN, e.g. ``Doe^Jane``), their organisation, when."""

    name: str
    organization: str
    when: datetime

    def dicom_datetime(self) -> str:
        return self.when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class ReviewedItem:
    """A decision on one audited annotation, for the verified report."""

    annotation_uid: str
    segment_number: int | None
    decision: str  # label_wrong | label_right | unsure
    corrected_label: Any | None  # a Code / CodedConcept / class name (label_wrong only)
    comment: str | None
    reviewer: str


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _name(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)) if seq else None


def _at_path(ds: Dataset, path: str) -> Dataset:
    """The content item at ``path`` ("1.4.2": root, its 4th child, that one's 2nd child)."""
    parts = path.split(".")
    if not parts or parts[0] != "1":
        raise RevisionError(f"content path {path!r} does not start at the root (1)")
    node = ds
    for p in parts[1:]:
        seq = node.get("ContentSequence") or []
        i = int(p)
        if not 1 <= i <= len(seq):
            raise RevisionError(f"content path {path!r} does not exist in the annotation")
        node = seq[i - 1]
    return node


def _walk(ds: Dataset):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _walk(item)


def _stamp(ds: Dataset, reviewer: Reviewer, *, new_series: bool) -> None:
    dt = reviewer.dicom_datetime()
    ds.ContentDate, ds.ContentTime = dt[:8], dt[8:]
    ds.InstanceCreationDate, ds.InstanceCreationTime = dt[:8], dt[8:]
    if new_series:
        ds.SeriesDate, ds.SeriesTime = dt[:8], dt[8:]


def _verify(ds: Dataset, reviewer: Reviewer, predecessors: Sequence[Dataset]) -> None:
    """VERIFIED by ``reviewer`` (SR Document General Module), superseding ``predecessors``."""
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    if "PreliminaryFlag" in ds:
        ds.PreliminaryFlag = "FINAL"
    obs = Dataset()
    obs.VerifyingObserverName = reviewer.name
    obs.VerifyingObserverIdentificationCodeSequence = DicomSequence([])
    obs.VerifyingOrganization = reviewer.organization
    obs.VerificationDateTime = reviewer.dicom_datetime()
    ds.VerifyingObserverSequence = DicomSequence([obs])
    if predecessors:
        ds.PredecessorDocumentsSequence = DicomSequence(_hierarchical_refs(predecessors))


def _hierarchical_refs(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Hierarchical SOP Instance Reference Macro items (study > series > instances)."""
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    for d in datasets:
        by_study.setdefault(str(d.StudyInstanceUID), {}).setdefault(str(d.SeriesInstanceUID), []).append(d)
    out = []
    for study, series in by_study.items():
        st = Dataset()
        st.StudyInstanceUID = study
        st.ReferencedSeriesSequence = DicomSequence()
        for series_uid, items in series.items():
            se = Dataset()
            se.SeriesInstanceUID = series_uid
            se.ReferencedSOPSequence = DicomSequence()
            for d in items:
                ref = Dataset()
                ref.ReferencedSOPClassUID = d.SOPClassUID
                ref.ReferencedSOPInstanceUID = d.SOPInstanceUID
                se.ReferencedSOPSequence.append(ref)
            st.ReferencedSeriesSequence.append(se)
        out.append(st)
    return out


def _new_identity(ds: Dataset, sop_instance_uid: str, series_instance_uid: str, series_number: int,
                  instance_number: int, description: str | None) -> None:
    ds.SOPInstanceUID = UID(sop_instance_uid)
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    if description is not None:
        ds.SeriesDescription = description


def _person_observer(name: str) -> list[Dataset]:
    """TID 1002 observer context for a person: Observer Type = Person, Person Observer Name."""
    t = Dataset()
    t.RelationshipType = "HAS OBS CONTEXT"
    t.ValueType = "CODE"
    t.ConceptNameCodeSequence = DicomSequence([_code_item(Code("121005", "DCM", "Observer Type"))])
    t.ConceptCodeSequence = DicomSequence([_code_item(Code("121006", "DCM", "Person"))])
    n = Dataset()
    n.RelationshipType = "HAS OBS CONTEXT"
    n.ValueType = "PNAME"
    n.ConceptNameCodeSequence = DicomSequence([_code_item(Code("121008", "DCM", "Person Observer Name"))])
    n.PersonName = name
    return [t, n]


@dataclass(frozen=True)
class Correction:
    """One corrected label in an annotation object: the SR content item or SEG segment, and the new label."""

    label: Any  # a Code / CodedConcept / class name
    content_path: str | None = None
    segment_number: int | None = None


def corrected_annotation(
    original: Dataset,
    corrections: Sequence[Correction],
    reviewer: Reviewer,
    *,
    predecessors: Sequence[Dataset] = (),
    key: Any = None,
    instance_number: int = 1,
) -> Dataset:
    """A new annotation object that supersedes ``original`` with every correction applied.

    SR: the CODE item at each correction's ``content_path`` (default: the first Finding) gets the
    corrected concept; the document is VERIFIED by ``reviewer`` and names ``original`` and
    ``predecessors`` (earlier corrected versions) in its Predecessor Documents Sequence. SEG: each
    correction's segment gets it as Segmented Property Type (a SEG has no predecessor attribute).
    ``key`` (anything JSON-able) makes the UIDs: same key and corrections, same UIDs.
    With no corrections but ``predecessors``, the result restores the original labels (a reviewer
    took a correction back). Raises RevisionError when a path or segment does not exist.
    """
    if not corrections and not predecessors:
        raise RevisionError("no correction given (none is needed when no corrected version exists)")
    fixes = [(c, as_code(c.label)) for c in corrections]
    out = copy.deepcopy(original)
    sop_class = str(original.SOPClassUID)
    base = derived_uid("labelqa-review", str(original.SOPInstanceUID), key,
                       sorted([c.content_path or "", c.segment_number or 0, code.value, code.scheme_designator]
                              for c, code in fixes))
    series_uid = derived_uid("labelqa-review-series", str(original.StudyInstanceUID))
    if sop_class in SEG_STORAGE:
        for c, code in fixes:
            if c.segment_number is None:
                raise RevisionError("a SEG correction needs the segment number")
            segs = [s for s in out.get("SegmentSequence") or [] if int(s.SegmentNumber) == int(c.segment_number)]
            if not segs:
                raise RevisionError(f"segment {c.segment_number} is not in SEG {original.SOPInstanceUID}")
            segs[0].SegmentedPropertyTypeCodeSequence = DicomSequence([_code_item(code)])
            segs[0].SegmentLabel = code.meaning[:64]
        _new_identity(out, base, series_uid, REVIEWED_LABEL_SERIES_NUMBER, instance_number,
                      REVIEWED_SERIES_DESCRIPTION)
        out.Manufacturer = MANUFACTURER
        dt = reviewer.dicom_datetime()
        out.ContentDate, out.ContentTime = dt[:8], dt[8:]
        out.SeriesDate, out.SeriesTime = dt[:8], dt[8:]
        if "DimensionOrganizationSequence" in out:
            dim = derived_uid("labelqa-review-dimension", base)
            for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
                for item in out.get(seq) or []:
                    if "DimensionOrganizationUID" in item:
                        item.DimensionOrganizationUID = dim
        return out
    if "ContentSequence" not in out:
        raise RevisionError(f"{original.SOPInstanceUID} is neither a SEG nor an SR with content")
    targets = []
    for c, code in fixes:  # find every target before anything moves
        if c.content_path:
            target = _at_path(out, c.content_path)
            if str(target.get("ValueType", "")).upper() != "CODE" or "ConceptCodeSequence" not in target:
                raise RevisionError(f"content item {c.content_path} is not a coded label")
        else:
            found = [it for it in _walk(out) if it.get("ValueType") == "CODE" and _name(it) == _FINDING]
            if not found:
                raise RevisionError("the SR has no Finding to correct; give the content path")
            target = found[0]
        targets.append((target, code))
    for target, code in targets:
        target.ConceptCodeSequence = DicomSequence([_code_item(code)])
    root = out.ContentSequence
    at = 0
    while at < len(root) and root[at].get("RelationshipType") == "HAS CONCEPT MOD":
        at += 1
    for i, item in enumerate(_person_observer(reviewer.name)):
        root.insert(at + i, item)
    _new_identity(out, base, series_uid, REVIEWED_LABEL_SERIES_NUMBER, instance_number, REVIEWED_SERIES_DESCRIPTION)
    out.Manufacturer = MANUFACTURER
    _stamp(out, reviewer, new_series=True)
    _verify(out, reviewer, [original, *predecessors])
    return out


def _group_annotation(group: Dataset) -> tuple[str | None, int | None]:
    """(annotation uid, segment) a QA report measurement group is about."""
    for it in group.get("ContentSequence") or []:
        vt = it.get("ValueType")
        own = (codes.ANNOTATION_OBJECT.scheme_designator, codes.ANNOTATION_OBJECT.value)
        if vt == "COMPOSITE" and _name(it) == own:
            return str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID), None
        if vt == "IMAGE":
            ref = it.ReferencedSOPSequence[0]
            if "ReferencedSegmentNumber" in ref:
                return str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber)
    return None, None


def _decision_items(d: ReviewedItem) -> list[Dataset]:
    dec = Dataset()
    dec.RelationshipType = "CONTAINS"
    dec.ValueType = "CODE"
    dec.ConceptNameCodeSequence = DicomSequence([_code_item(codes.REVIEWER_DECISION)])
    if d.decision not in codes.DECISION_CODES:
        raise RevisionError(f"unknown decision {d.decision!r}")
    dec.ConceptCodeSequence = DicomSequence([_code_item(codes.DECISION_CODES[d.decision])])
    out = [dec]
    if d.decision == "label_wrong" and d.corrected_label is not None:
        lab = Dataset()
        lab.RelationshipType = "CONTAINS"
        lab.ValueType = "CODE"
        lab.ConceptNameCodeSequence = DicomSequence([_code_item(codes.CORRECTED_LABEL)])
        lab.ConceptCodeSequence = DicomSequence([_code_item(as_code(d.corrected_label))])
        out.append(lab)
    text = f"reviewed by {d.reviewer}" + (f": {d.comment}" if d.comment else "")
    c = Dataset()
    c.RelationshipType = "CONTAINS"
    c.ValueType = "TEXT"
    c.ConceptNameCodeSequence = DicomSequence([_code_item(_COMMENT)])
    c.TextValue = text[:1024]
    out.append(c)
    return out


def verified_report(
    report: Dataset,
    decisions: Sequence[ReviewedItem],
    reviewer: Reviewer,
    *,
    previous: Sequence[Dataset] = (),
    key: Any = None,
    instance_number: int | None = None,
) -> Dataset:
    """The QA report SR ``report`` reissued VERIFIED by ``reviewer`` with the ``decisions`` in its groups.

    ``previous``: earlier reissued versions it supersedes (with ``report`` itself, they form the
    Predecessor Documents Sequence). Raises RevisionError when a decision names an annotation the
    report has no group for.
    """
    out = copy.deepcopy(report)
    by_key = {(d.annotation_uid, d.segment_number): d for d in decisions}
    done: set[tuple[str, int | None]] = set()
    for item in _walk(out):
        if item.get("ValueType") != "CONTAINER" or _name(item) != _GROUP:
            continue
        ann = _group_annotation(item)
        if ann[0] is None:
            continue
        d = by_key.get((ann[0], ann[1])) or by_key.get((ann[0], None))
        if d is None:
            continue
        for x in _decision_items(d):
            item.ContentSequence.append(x)
        done.add((d.annotation_uid, d.segment_number))
    missing = [k for k in by_key if k not in done]
    if missing:
        raise RevisionError(f"the QA report has no measurement group for {missing}")
    uid = derived_uid("labelqa-verified-report", str(report.SOPInstanceUID), key,
                      sorted((d.annotation_uid, d.segment_number or 0, d.decision, str(d.corrected_label or ""),
                              d.comment or "", d.reviewer) for d in decisions))
    if instance_number is None:
        instance_number = int(report.get("InstanceNumber", 1) or 1) + len(previous) + 1
    _new_identity(out, uid, str(report.SeriesInstanceUID), int(report.SeriesNumber), instance_number, None)
    _stamp(out, reviewer, new_series=False)
    _verify(out, reviewer, [report, *previous])
    return out
