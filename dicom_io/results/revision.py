"""Write-back of a human review: a superseding annotation with the corrected label, a verified QA report.

- :func:`corrected_annotation`: a copy of the reviewed annotation object whose label is the
  reviewer's. For an SR the coded finding at the audited content item is replaced, the reviewer is
  added as person observer (TID 1002), the document is VERIFIED by the reviewer and its Predecessor
  Documents Sequence (PS3.3 C.17.2) names the annotation it supersedes. For a SEG the audited
  segment's Segmented Property Type (and label) is replaced, and/or its mask on one source frame or,
  for a segment audited in 3-D, on every slice of its series (a reviewer accepted labelqa's
  suggested mask): the SEG is then rebuilt with highdicom from the same source images, every other
  segment and frame as it was. Both go into labelqa's reviewed-label
  series (``REVIEWED_LABEL_SERIES_NUMBER``): an annotation like any other (the reviewer's), so
  labelqa's reader reads it and a PACS that routes it back has the correction audited too.
- :func:`verified_report`: the study's QA report SR reissued with, in each reviewed measurement
  group, the decision (LQA-0601), the corrected label (LQA-0602), the corrected mask (LQA-0603) and
  the comment, VERIFIED with the reviewer as Verifying Observer (PS3.3 C.17.2.1) and the earlier
  versions as predecessors.

UIDs are derived from the inputs (``uids.derived_uid``): writing the same decision again gives the
same objects. No torch, no database here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import UID

from dicom_io import codes
from dicom_io.results.geometry import has_plane_geometry
from dicom_io.results.records import CodedLabel, as_code
from dicom_io.results.seg_out import complete_seg_header, n_frames, pixels_on_source_frames
from dicom_io.results.series import MANUFACTURER, REVIEWED_LABEL_SERIES_NUMBER
from dicom_io.results.uids import derived_uid, digest
from dicom_io.results.write import clean_header
from dicom_io.sop import SEG_STORAGE

__all__ = [
    "MASK_CORRECTIONS", "MASK_REPLACED_NOTE", "MASK_VOLUME_REPLACED_NOTE", "Reviewer", "ReviewedItem", "Correction",
    "corrected_annotation", "verified_report", "RevisionError",
]

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


MASK_CORRECTIONS: dict[str, Code] = {"suggestion": codes.SUGGESTED_CORRECTION}
"""How a reviewer corrected a mask -> the value of LQA-0603 in the verified report."""


@dataclass(frozen=True)
class ReviewedItem:
    """A decision on one audited annotation, for the verified report.

    ``image_uid``/``frame``: the source frame of a SEG mask item (a segment has one report group per
    frame); None matches any group of the annotation (and segment).
    """

    annotation_uid: str
    segment_number: int | None
    decision: str  # label_wrong | label_right | unsure
    corrected_label: CodedLabel | None  # label_wrong only
    comment: str | None
    reviewer: str
    corrected_mask: str | None = None  # "suggestion": the suggested mask was accepted (label_wrong only)
    image_uid: str | None = None
    frame: int | None = None


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


@dataclass(frozen=True, eq=False)
class Correction:
    """One correction of an annotation object: the SR content item or SEG segment, and its new label
    and/or (SEG) its new mask on one source frame or on every slice of a series.

    ``mask``: bool (rows, columns) on the grid of source image ``image_uid``, 1-based ``frame`` (None:
    a single-frame image); or, with ``slices`` (the series' slices as (SOP Instance UID, frame or
    None), in the order of the mask's first axis), bool (slices, rows, columns): the segment's whole
    mask over the series, which replaces it on every one of those slices. ``label`` None keeps the label.
    """

    label: CodedLabel | None = None
    content_path: str | None = None
    segment_number: int | None = None
    mask: np.ndarray | None = None
    image_uid: str | None = None
    frame: int | None = None
    slices: tuple[tuple[str, int | None], ...] | None = None

    def key(self) -> list[str | int | list[int]]:
        """What identifies the correction, for deterministic UIDs (a label-only one as before masks existed)."""
        code = as_code(self.label) if self.label is not None else None
        out: list[str | int | list[int]] = [self.content_path or "", self.segment_number or 0,
                                            code.value if code else "", code.scheme_designator if code else ""]
        if self.mask is not None:
            out += [self.image_uid or "", self.frame or 0, list(np.shape(self.mask)),
                    digest(np.packbits(np.asarray(self.mask, bool)))]
        if self.slices is not None:
            out += [digest([[u, f or 0] for u, f in self.slices])]
        return out


def corrected_annotation(
    original: Dataset,
    corrections: Sequence[Correction],
    reviewer: Reviewer,
    *,
    predecessors: Sequence[Dataset] = (),
    key: object = None,
    instance_number: int = 1,
    sources: Mapping[str, Dataset] | None = None,
) -> Dataset:
    """A new annotation object that supersedes ``original`` with every correction applied.

    SR: the CODE item at each correction's ``content_path`` (default: the first Finding) gets the
    corrected concept; the document is VERIFIED by ``reviewer`` and names ``original`` and
    ``predecessors`` (earlier corrected versions) in its Predecessor Documents Sequence. SEG: each
    correction's segment gets its label as Segmented Property Type (a SEG has no predecessor
    attribute), and its mask, when given, on its source frame or over its series (:func:`_seg_with_masks`:
    ``sources``, the SEG's source images by SOP Instance UID, and for a whole-segment correction every
    slice of the series, are needed then). ``key`` (anything JSON-able) makes
    the UIDs: same key and corrections, same UIDs. With no corrections but ``predecessors``, the
    result restores the original labels and masks (a reviewer took a correction back). Raises
    RevisionError when a path, segment, source frame or source image does not exist, or a mask does
    not fit.
    """
    if not corrections and not predecessors:
        raise RevisionError("no correction given (none is needed when no corrected version exists)")
    for c in corrections:
        if c.label is None and c.mask is None:
            raise RevisionError("a correction needs a label or a mask")
    fixes = [(c, as_code(c.label)) for c in corrections if c.label is not None]
    masks = [c for c in corrections if c.mask is not None]
    sop_class = str(original.SOPClassUID)
    base = derived_uid("labelqa-review", str(original.SOPInstanceUID), key, sorted(c.key() for c in corrections))
    series_uid = derived_uid("labelqa-review-series", str(original.StudyInstanceUID))
    if sop_class in SEG_STORAGE:
        out = (_seg_with_masks(original, masks, sources or {}, sop_instance_uid=base, series_instance_uid=series_uid,
                               instance_number=instance_number, when=reviewer.dicom_datetime())
               if masks else copy.deepcopy(original))
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
        if "InstanceCreationDate" in out:
            out.InstanceCreationDate, out.InstanceCreationTime = dt[:8], dt[8:]
        if "DimensionOrganizationSequence" in out:
            dim = derived_uid("labelqa-review-dimension", base)
            for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
                for item in out.get(seq) or []:
                    if "DimensionOrganizationUID" in item:
                        item.DimensionOrganizationUID = dim
        return out
    if masks:
        raise RevisionError(f"{original.SOPInstanceUID} is not a SEG: only a SEG has masks to correct")
    out = copy.deepcopy(original)
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


MASK_REPLACED_NOTE = "mask: labelqa suggestion accepted in review on {n} frame(s)"
"""Segment Description (LO, 64 characters) of a segment whose mask a reviewer replaced."""

MASK_VOLUME_REPLACED_NOTE = "mask: labelqa suggestion accepted in review over the series"
"""Segment Description of a segment whose whole mask over its series a reviewer replaced."""


def _seg_with_masks(original: Dataset, masks: Sequence[Correction], sources: Mapping[str, Dataset], *,
                    sop_instance_uid: str, series_instance_uid: str, instance_number: int, when: str) -> Dataset:
    """``original`` rebuilt (highdicom) from its source images with each correction's mask on its
    segment and source frame (or, with ``slices``, on every slice of its series); every other segment
    and frame as stored (binary, fractional and label-map SEGs). A frame the original omitted (the mask
    was empty there) is added, and so is a slice of the series the original did not refer to at all."""
    import highdicom as hd

    uid = str(original.SOPInstanceUID)
    try:
        seg = hd.seg.Segmentation.from_dataset(original, copy=True)
        refs = [str(sop) for _study, _series, sop in seg.get_source_image_uids()]
        kind = seg.segmentation_type
        numbers = [int(n) for n in seg.segment_numbers]
        descriptions = [hd.seg.SegmentDescription.from_dataset(item, copy=True) for item in original.SegmentSequence
                        if int(item.SegmentNumber) in numbers]  # a label map's background (0) is highdicom's own
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise RevisionError(f"SEG {uid} cannot be read for a mask correction: {e}") from None
    # a whole-segment correction covers every slice of its series: slices the SEG never referenced (tools
    # omit empty slices from a SEG and from its references) become source images of the corrected SEG
    added = list(dict.fromkeys(u for c in masks if c.slices is not None for u, f in c.slices
                               if f is None and u not in refs))
    missing = [u for u in refs + added if u not in sources]
    if missing:
        raise RevisionError(f"source image(s) {', '.join(missing)} of SEG {uid} are not in the store")
    flat = [u for u in refs + added if not has_plane_geometry(sources[u])]
    if flat:
        raise RevisionError(f"source image(s) {', '.join(flat)} of SEG {uid} have no plane geometry: a SEG over them "
                            "cannot be placed by a viewer, so no corrected SEG is written")
    images = [clean_header(sources[u]) for u in refs + added]
    frames: list[tuple[str, int | None]] = []
    for ds in images:
        n = n_frames(ds)
        frames += [(str(ds.SOPInstanceUID), None)] if n == 1 else [(str(ds.SOPInstanceUID), f) for f in
                                                                     range(1, n + 1)]
    at_frame = {f: i for i, f in enumerate(frames)}
    stored = len(frames) - len(added)  # the frames of the images the SEG refers to come first
    fractional = kind == hd.seg.SegmentationTypeValues.FRACTIONAL
    labelmap = kind == hd.seg.SegmentationTypeValues.LABELMAP
    top = int(original.get("MaximumFractionalValue", 255) or 255)
    size = (int(original.Rows), int(original.Columns))
    # every correction as (segment index, frame index, plane), all checked before any pixel is read
    edits: list[tuple[int, int, np.ndarray]] = []
    replaced: dict[int, int] = {}
    whole: set[int] = set()
    for c in masks:
        if c.segment_number is None or int(c.segment_number) not in numbers:
            raise RevisionError(f"segment {c.segment_number} is not in SEG {uid}")
        k = numbers.index(int(c.segment_number))
        m = np.asarray(c.mask, bool)
        if c.slices is not None:
            if m.ndim != 3 or m.shape[0] != len(c.slices):
                raise RevisionError(f"mask {m.shape} of segment {c.segment_number} does not have one plane for each "
                                    f"of the {len(c.slices)} slices of its series")
            planes = [((str(u), None if f is None else int(f)), m[z]) for z, (u, f) in enumerate(c.slices)]
            whole.add(k)
        else:
            planes = [((str(c.image_uid), None if c.frame is None else int(c.frame)), m)]
        for at, plane in planes:
            if at not in at_frame:
                raise RevisionError(f"SEG {uid} does not refer to source image {at[0]} frame {at[1]}")
            if plane.shape != size:
                raise RevisionError(f"mask {plane.shape} does not fit source frame {size} of SEG {uid}")
            edits.append((k, at_frame[at], plane))
            replaced[k] = replaced.get(k, 0) + 1
    for k, n in replaced.items():
        note = MASK_VOLUME_REPLACED_NOTE if k in whole else MASK_REPLACED_NOTE.format(n=n)
        descriptions[k].SegmentDescription = note[:64]

    def segment(j: int) -> np.ndarray:
        """Segment ``j``'s stored values on every frame with the corrections applied (one segment in memory:
        a SEG over a long series with many segments is large)."""
        try:
            known = pixels_on_source_frames(seg, frames[:stored], [numbers[j]], rescale_fractional=False)
        except ValueError as e:
            raise RevisionError(f"SEG {uid}: {e}") from None
        out = np.zeros((len(frames), *size), np.uint16 if fractional else np.uint8)
        out[:stored] = known[..., 0]
        del known
        for k, i, plane in edits:  # in order: a later correction wins
            if k == j:
                out[i] = plane * (top if fractional else 1)
            elif labelmap:  # one segment per pixel: the corrected mask takes its pixels
                out[i][plane] = 0
        return out

    array: np.ndarray
    done = 0  # segments in the label map so far
    if not fractional and len(numbers) > 1:  # label-map style: one byte per pixel, not one per pixel and segment
        lm = np.zeros((len(frames), *size), np.uint8 if max(numbers) < 256 else np.uint16)
        pending: np.ndarray | None = None
        for j, n in enumerate(numbers):
            m = segment(j) > 0
            if lm[m].any():  # overlapping segments (a binary SEG may have them): stacked after all
                pending = m
                break
            lm[m] = n
            done += 1
        if pending is None:
            array = lm
        else:
            array = np.zeros((len(frames), *size, len(numbers)), bool)
            for j in range(done):
                array[..., j] = lm == numbers[j]
            del lm
            array[..., done] = pending
            done += 1
    else:
        array = np.zeros((len(frames), *size, len(numbers)), np.float32 if fractional else bool)
    if array.ndim == 4:
        for j in range(done, len(numbers)):
            array[..., j] = segment(j) / top if fractional else segment(j) > 0
    software = original.get("SoftwareVersions") or "1"
    versions: str | tuple[str, ...] = software if isinstance(software, str) else tuple(str(v) for v in software)
    try:
        out = hd.seg.Segmentation(
            source_images=images,
            pixel_array=array,
            segmentation_type=kind,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=REVIEWED_LABEL_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=str(original.get("ManufacturerModelName") or "labelqa review")[:64],
            software_versions=versions,  # type: ignore[arg-type]  # highdicom annotates tuple[str]: any length works
            device_serial_number=str(original.get("DeviceSerialNumber") or "0")[:64],
            fractional_type=seg.segmentation_fractional_type if fractional else None,
            max_fractional_value=top,
            content_label=str(original.get("ContentLabel") or "REVIEWED")[:16],
            content_description=original.get("ContentDescription") or None,
            content_creator_name=original.get("ContentCreatorName") or None,
            series_description=REVIEWED_SERIES_DESCRIPTION,
            omit_empty_frames=bool(array.any()),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise RevisionError(f"SEG {uid} cannot be rebuilt with the corrected mask: {e}") from None
    complete_seg_header(out, images[0], original.get("BodyPartExamined"))
    for item in out.get("ContributingEquipmentSequence") or []:  # the same decision, the same object
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when
    return out


def _group_annotation(group: Dataset) -> tuple[str | None, int | None, str | None, int | None]:
    """(annotation uid, segment, source image uid, source frame) a QA report measurement group is about."""
    ann: str | None = None
    segment: int | None = None
    image: tuple[str | None, int | None] = (None, None)

    def source(ref: Dataset) -> tuple[str | None, int | None]:
        frames = ref.get("ReferencedFrameNumber")
        frame = None if frames in (None, "") else int(frames if isinstance(frames, (int, str)) else frames[0])
        return str(ref.ReferencedSOPInstanceUID), frame

    own = (codes.ANNOTATION_OBJECT.scheme_designator, codes.ANNOTATION_OBJECT.value)
    for it in group.get("ContentSequence") or []:
        vt = it.get("ValueType")
        if vt == "COMPOSITE" and _name(it) == own:
            ann = str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif vt == "IMAGE":
            ref = it.ReferencedSOPSequence[0]
            if "ReferencedSegmentNumber" in ref:
                ann, segment = str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber)
                for sub in it.get("ContentSequence") or []:  # the segment's source image
                    if sub.get("ValueType") == "IMAGE":
                        image = source(sub.ReferencedSOPSequence[0])
            elif image[0] is None:
                image = source(ref)
    return ann, segment, image[0], image[1]


def _decision_for(decisions: Sequence[ReviewedItem], ann: str, segment: int | None, image: str | None,
                  frame: int | None) -> ReviewedItem | None:
    """The decision a report group carries: the one naming its segment and source frame, else its segment,
    else its annotation (a decision without segment or source frame covers every group of it)."""
    fits = [d for d in decisions if d.annotation_uid == ann
            and (d.segment_number is None or d.segment_number == segment)
            and (d.image_uid is None or image is None or (d.image_uid, d.frame) == (image, frame))]
    fits.sort(key=lambda d: (d.image_uid is None, d.segment_number is None))
    return fits[0] if fits else None


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
    if d.decision == "label_wrong" and d.corrected_mask is not None:
        if d.corrected_mask not in MASK_CORRECTIONS:
            raise RevisionError(f"unknown mask correction {d.corrected_mask!r}; use {', '.join(MASK_CORRECTIONS)}")
        mask = Dataset()
        mask.RelationshipType = "CONTAINS"
        mask.ValueType = "CODE"
        mask.ConceptNameCodeSequence = DicomSequence([_code_item(codes.CORRECTED_MASK)])
        mask.ConceptCodeSequence = DicomSequence([_code_item(MASK_CORRECTIONS[d.corrected_mask])])
        out.append(mask)
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
    key: object = None,
    instance_number: int | None = None,
) -> Dataset:
    """The QA report SR ``report`` reissued VERIFIED by ``reviewer`` with the ``decisions`` in its groups.

    ``previous``: earlier reissued versions it supersedes (with ``report`` itself, they form the
    Predecessor Documents Sequence). Raises RevisionError when a decision names an annotation the
    report has no group for.
    """
    out = copy.deepcopy(report)
    done: set[int] = set()
    for item in _walk(out):
        if item.get("ValueType") != "CONTAINER" or _name(item) != _GROUP:
            continue
        ann, segment, image, frame = _group_annotation(item)
        if ann is None:
            continue
        d = _decision_for(decisions, ann, segment, image, frame)
        if d is None:
            continue
        for x in _decision_items(d):
            item.ContentSequence.append(x)
        done.add(id(d))
    missing = [(d.annotation_uid, d.segment_number, d.image_uid, d.frame) for d in decisions if id(d) not in done]
    if missing:
        raise RevisionError(f"the QA report has no measurement group for {missing}")

    def decision_key(d: ReviewedItem) -> tuple[str | int, ...]:
        k = (d.annotation_uid, d.segment_number or 0, d.decision, str(d.corrected_label or ""), d.comment or "",
             d.reviewer)
        return k if d.corrected_mask is None and d.image_uid is None else (*k, d.corrected_mask or "",
                                                                           d.image_uid or "", d.frame or 0)

    uid = derived_uid("labelqa-verified-report", str(report.SOPInstanceUID), key,
                      sorted(decision_key(d) for d in decisions))
    if instance_number is None:
        instance_number = int(report.get("InstanceNumber", 1) or 1) + len(previous) + 1
    _new_identity(out, uid, str(report.SeriesInstanceUID), int(report.SeriesNumber), instance_number, None)
    _stamp(out, reviewer, new_series=False)
    _verify(out, reviewer, [report, *previous])
    return out
