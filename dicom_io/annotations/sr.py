"""Labels from Structured Reports: TID 1500 measurement reports and Basic/Enhanced/Comprehensive text SRs.

One walker reads the content tree of every SR IOD (Basic Text, Enhanced, Comprehensive,
Comprehensive 3D, Extensible), so a report that does not conform to a template still yields what it
can, and everything else becomes an issue record.

- TID 1500: each Measurement Group (TID 1501 image-level, TID 1410/1411 ROI groups; concept
  DCM 125007) is one labelled unit. Its label: the Finding (DCM 121071) / Finding Type and qualitative
  evaluations (CODE items) resolved through the vocabulary; its images: the IMAGE items of the group
  (Source, or the images an SCOORD is SELECTED FROM), with their Referenced Frame Numbers.
- Text SRs without measurement groups: each CONTAINER that holds a resolvable or finding CODE item
  is one unit; when it names no image, the document's IMAGE items outside other units are used.

labelqa's own results (document title 99LABELQA LQA-0001, see ``dicom_io.codes``) are skipped: their
"given label" evaluations are not new annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_io.annotations.records import (
    CONFLICTING_LABELS,
    MALFORMED_ANNOTATION,
    NO_IMAGE_REFERENCE,
    NO_LABEL,
    UNKNOWN_CODE,
    IssueRecord,
    LabelRecord,
)
from dicom_io.sop import SEG_STORAGE, is_non_image

if TYPE_CHECKING:
    from dicom_io.vocabulary import Vocabulary

__all__ = ["MEASUREMENT_GROUP", "FINDING", "FINDING_NAMES", "STRUCTURAL_NAMES", "OWN_RESULT_TITLE", "read_sr"]

MEASUREMENT_GROUP = ("DCM", "125007")
FINDING = ("DCM", "121071")
FINDING_NAMES = {FINDING, ("SCT", "246464006"), ("SRT", "G-D701"), ("DCM", "121073"), ("DCM", "111034")}
"""Concept names whose CODE value is the label: Finding, Finding Type (legacy codes), Impression."""

STRUCTURAL_NAMES = {
    ("SCT", "363698007"),  # Finding Site
    ("SRT", "G-C0E3"),  # (legacy SNOMED-RT codes of the same concepts follow each)
    ("SCT", "272741003"),  # Laterality
    ("SRT", "G-C171"),
    ("SCT", "106233006"),  # Topographical modifier
    ("SRT", "G-A1F8"),
    ("SCT", "370129005"),  # Measurement Method
    ("SRT", "G-C036"),
    ("SCT", "276214006"),  # Finding category
    ("DCM", "121401"),  # Derivation
    ("DCM", "121049"),  # Language of Content Item and Descendants
    ("DCM", "121046"),  # Country of Language
    ("DCM", "121058"),  # Procedure reported
    ("DCM", "121005"),  # Observer Type
    ("DCM", "121024"),  # Subject Class
    ("DCM", "126100"),  # Real World Value Map used for measurement
    ("DCM", "111027"),  # Image Laterality
    ("DCM", "111031"),  # Image View
    ("DCM", "111032"),  # Image View Modifier
    ("DCM", "112700"),  # Patient Orientation (row)
    ("DCM", "112701"),  # Patient Orientation (column)
    ("DCM", "111028"),  # Image Library
    ("DCM", "121232"),  # Source series for segmentation
}
OWN_RESULT_TITLE = ("99LABELQA", "LQA-0001")


def _code_of(seq: Sequence | None) -> tuple[str, str, str] | None:
    """(scheme, value, meaning) of the first item of a code sequence, or None."""
    if not seq:
        return None
    item = seq[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    scheme = item.get("CodingSchemeDesignator") or ("URN" if item.get("URNCodeValue") else None)
    if not value or not scheme:
        return None
    return str(scheme).strip().upper(), str(value).strip(), str(item.get("CodeMeaning", "")).strip()


@dataclass
class _Item:
    path: str
    ds: Dataset
    value_type: str
    name: tuple[str, str, str] | None
    parent_is_group: bool = False
    children: list[_Item] = field(default_factory=list)


def _tree(ds: Dataset, path: str) -> list[_Item]:
    out = []
    seq = ds.get("ContentSequence") or []
    for i, item in enumerate(seq, start=1):
        p = f"{path}.{i}"
        if "ReferencedContentItemIdentifier" in item and "ValueType" not in item:
            continue  # by-reference relationship
        node = _Item(p, item, str(item.get("ValueType", "")).upper(), _code_of(item.get("ConceptNameCodeSequence")))
        node.children = _tree(item, p)
        out.append(node)
    return out


def _walk(items: list[_Item]):
    for it in items:
        yield it
        yield from _walk(it.children)


def _image_refs(items: list[_Item]) -> list[tuple[str, list[int] | None]]:
    refs: list[tuple[str, list[int] | None]] = []
    for it in _walk(items):
        if it.value_type != "IMAGE":
            continue
        seq = it.ds.get("ReferencedSOPSequence")
        if not seq:
            continue
        ref = seq[0]
        uid = ref.get("ReferencedSOPInstanceUID")
        if not uid:
            continue
        if is_non_image(str(ref.get("ReferencedSOPClassUID", ""))):
            continue  # a SEG (Referenced Segment) or another document, not an image
        frames = ref.get("ReferencedFrameNumber")
        flist: list[int] | None = None
        if frames not in (None, ""):
            values = list(frames) if isinstance(frames, (MultiValue, list, tuple)) else [frames]
            try:
                flist = [int(f) for f in values] or None
            except (TypeError, ValueError):
                flist = None
        key = (str(uid), flist)
        if key not in refs:
            refs.append(key)
    return refs


def _segment_refs(items: list[_Item]) -> list[tuple[str, tuple[int, ...]]]:
    """(SEG SOP Instance UID, segment numbers) of Referenced Segment IMAGE items (TID 1411)."""
    refs = []
    for it in _walk(items):
        if it.value_type != "IMAGE":
            continue
        seq = it.ds.get("ReferencedSOPSequence")
        if not seq or str(seq[0].get("ReferencedSOPClassUID", "")) not in SEG_STORAGE:
            continue
        nums = seq[0].get("ReferencedSegmentNumber")
        if nums in (None, "") or not seq[0].get("ReferencedSOPInstanceUID"):
            continue
        values = list(nums) if isinstance(nums, (MultiValue, list, tuple)) else [nums]
        try:
            refs.append((str(seq[0].ReferencedSOPInstanceUID), tuple(int(n) for n in values)))
        except (TypeError, ValueError):
            continue
    return refs


def _observer(ds: Dataset, root_items: list[_Item]) -> str | None:
    for it in root_items:
        if it.name and (it.name[0], it.name[1]) == ("DCM", "121008") and it.ds.get("PersonName"):
            return str(it.ds.PersonName)
    for it in root_items:
        if it.name and (it.name[0], it.name[1]) == ("DCM", "121013") and it.ds.get("TextValue"):
            return str(it.ds.TextValue)
    for it in root_items:
        if it.name and (it.name[0], it.name[1]) == ("DCM", "121012") and it.ds.get("UID"):
            return str(it.ds.UID)
    for seq_name, field_name in (
        ("AuthorObserverSequence", "PersonName"),
        ("VerifyingObserverSequence", "VerifyingObserverName"),
    ):
        seq = ds.get(seq_name)
        if seq and seq[0].get(field_name):
            return str(seq[0].get(field_name))
    return None


def _labels(
    group: _Item | None, items: list[_Item], vocabulary: Vocabulary | None
) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, content path) pairs resolved in ``items``, and descriptions of unknown finding codes."""
    resolved: list[tuple[str, str]] = []
    findings: list[tuple[str, str]] = []
    evaluations: list[tuple[str, str]] = []
    unknown: list[str] = []
    direct = {id(it) for it in items}
    for it in _walk(items):
        if it.value_type != "CODE":
            continue
        name = (it.name[0], it.name[1]) if it.name else None
        if name in STRUCTURAL_NAMES:
            continue
        concept = _code_of(it.ds.get("ConceptCodeSequence"))
        if concept is None:
            continue
        is_finding = name in FINDING_NAMES
        is_evaluation = id(it) in direct and group is not None
        if vocabulary is None:
            if is_finding or is_evaluation:
                (findings if is_finding else evaluations).append((concept[2] or f"{concept[0]}:{concept[1]}", it.path))
            continue
        label = vocabulary.lookup(concept[0], concept[1])
        if label is not None:
            resolved.append((label, it.path))
        elif is_finding or is_evaluation:
            unknown.append(f"{concept[0]} {concept[1]} {concept[2]!r}")
    if vocabulary is None:
        # Without a vocabulary the Finding is the label; evaluations only when there is no Finding.
        resolved = findings or evaluations
    return resolved, unknown


def read_sr(ds: Dataset, vocabulary: Vocabulary | None) -> tuple[list[LabelRecord], list[IssueRecord]]:
    """Label records and issue records of one SR dataset."""
    uid, sop = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    title = _code_of(ds.get("ConceptNameCodeSequence"))
    if title and (title[0], title[1]) == OWN_RESULT_TITLE:
        return [], []
    if str(ds.get("ValueType", "CONTAINER")).upper() != "CONTAINER" or "ContentSequence" not in ds:
        return [], [IssueRecord(MALFORMED_ANNOTATION, "SR has no root CONTAINER with content", uid)]
    root = _tree(ds, "1")
    observer = _observer(ds, root)
    groups = [it for it in _walk(root) if it.value_type == "CONTAINER" and it.name and it.name[:2] == MEASUREMENT_GROUP]
    tid1500 = bool(groups)
    units: list[tuple[_Item | None, list[_Item], str]] = []
    if tid1500:
        units = [(g, g.children, g.path) for g in groups]
    else:
        containers = [it for it in _walk(root) if it.value_type == "CONTAINER"]
        for c in containers:
            direct_codes = [ch for ch in c.children if ch.value_type == "CODE"]
            if direct_codes and _labels(c, c.children, vocabulary) != ([], []):
                units.append((c, c.children, c.path))
        if not units:
            units = [(None, root, "1")]
    records: list[LabelRecord] = []
    issues: list[IssueRecord] = []
    doc_refs = _image_refs(root)
    in_units: set[str] = set()
    for _, items, _ in units:
        in_units.update(u for u, _ in _image_refs(items))
    for group, items, path in units:
        resolved, unknown = _labels(group, items, vocabulary)
        labels = sorted({lab for lab, _ in resolved})
        where = f"content item {path}"
        if len(labels) > 1:
            issues.append(IssueRecord(CONFLICTING_LABELS, f"{where}: more than one class: {', '.join(labels)}", uid))
            continue
        if not labels:
            if unknown:
                issues.append(
                    IssueRecord(UNKNOWN_CODE, f"{where}: code(s) not in the vocabulary: {'; '.join(unknown)}", uid)
                )
            elif tid1500:
                issues.append(IssueRecord(NO_LABEL, f"{where}: measurement group without a coded finding", uid))
            continue
        refs = _image_refs(items)
        if not refs and not tid1500:
            refs = [r for r in doc_refs if r[0] not in in_units] or doc_refs
        if not refs:
            seg_refs = _segment_refs(items)
            if seg_refs:
                label_path = next(p for lab, p in resolved if lab == labels[0])
                for seg_uid, numbers in seg_refs:
                    records.append(
                        LabelRecord(
                            label=labels[0],
                            annotation_uid=uid,
                            annotation_sop_class_uid=sop,
                            source="sr",
                            image_uid="",
                            frame=None,
                            content_path=label_path,
                            observer=observer,
                            via_segment=(seg_uid, numbers),
                        )
                    )
                continue
            issues.append(
                IssueRecord(
                    NO_IMAGE_REFERENCE, f"{where}: label {labels[0]!r} names no image (or only 3-D coordinates)", uid
                )
            )
            continue
        label_path = next(p for lab, p in resolved if lab == labels[0])
        for image_uid, frames in refs:
            frame_choices: list[int | None] = list(frames) if frames else [None]
            for frame in frame_choices:
                records.append(
                    LabelRecord(
                        label=labels[0],
                        annotation_uid=uid,
                        annotation_sop_class_uid=sop,
                        source="sr",
                        image_uid=image_uid,
                        frame=frame,
                        content_path=label_path,
                        observer=observer,
                    )
                )
    if not records and not issues:
        issues.append(IssueRecord(NO_LABEL, "SR holds no coded finding labelqa can use", uid))
    return records, issues
