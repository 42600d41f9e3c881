"""The QA report: a Comprehensive 3D SR with a TID 1500 Measurement Report (highdicom).

Content (PS3.16 TID 1500): title and procedure reported "Annotation quality audit" (99LABELQA),
device observer context (labelqa), the image library, and one measurement group per audited
annotation:

- SEG annotations: TID 1411 Volumetric ROI group whose ROI is the audited segment
  (``ReferencedSegment``, with the source image and frame as the segment's source);
- SR annotations: TID 1501 group with the source image and frame as ``Source`` and a COMPOSITE
  reference to the annotation SR (TID 1501 is extensible).

Each group carries a tracking identifier + UID, the verdict as ``Finding`` (99LABELQA), the given and
consensus labels as qualitative evaluations, the scores as TID 300 measurements (UCUM "{score}", counts
"{count}") and the algorithm identification (TID 4019: name and version; the bundle hash and thresholds
once, in the summary group). The saliency agreement
measurement names the heatmap Secondary Capture as its ``Source of Measurement``.

Audited masks (``AuditedMask``) get one TID 1411 group each: ``ReferencedSegment`` = the SEG and its
segment number (no SEG frame numbers: PS3.3 10.4 allows a Referenced Segment Number only without a
Referenced Frame Number), with the source image (and frame) as the segment's source
(a class the SEG has no segment for: TID 1501 with the source image and a COMPOSITE reference to the
SEG); the verdict as ``Finding``, the class and the mask error kind as qualitative evaluations, Dice
and HD95 (mm) to the consensus, inter-model agreement, priority, score, the number and area of the
disagreement regions (the Dice names the overlay SC as its ``Source of Measurement``), one TEXT item
per region, and a COMPOSITE reference to the suggested-correction SEG.

One more TID 1501 group summarises the study: counts per verdict (with the suspected mask error
count whenever masks were audited), each systematic-disagreement (cohort) finding once, each
"cannot judge" finding (LQA-0206: the models are too weak on a class's masks to flag any of them),
the algorithm's parameters and a COMPOSITE reference to the SR that draws the flags (``roi_sr``).
Every container is SEPARATE, so text views print each value with its concept name.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes
from dicom_io.results.geometry import library_header

if TYPE_CHECKING:
    from dicom_io.results.records import AlgorithmInfo, AuditedAnnotation, AuditedMask, AuditedVolumeMask

__all__ = [
    "SERIES_DESCRIPTION", "algorithm_identification", "separate_containers", "comprehensive_3d_sr",
    "measurement_group", "region_text",
    "mask_group", "volume_region_text", "volume_group", "summary_group", "qa_report_sr", "read_report",
]

SERIES_DESCRIPTION = "labelqa annotation QA report"


def algorithm_identification(algorithm: AlgorithmInfo, *, parameters: bool = True):
    """TID 4019 for the bundle: name, version and, with ``parameters``, 'key=value' items (bundle hash first).

    The QA report states the parameters once, in its study summary group; every other group names the
    algorithm and its version only (so a text view is not filled with the same thresholds again and again).
    """
    import highdicom as hd

    params = None
    if parameters:
        params = [f"bundle_hash={algorithm.bundle_hash}"]
        params += [f"{k}={v}" for k, v in sorted(algorithm.parameters.items())]
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version, parameters=params)


def separate_containers(item: Dataset) -> Dataset:
    """Set Continuity Of Content SEPARATE on ``item`` and every CONTAINER below it (highdicom's default is
    CONTINUOUS, and text views such as OHIF's and dcmtk ``dsr2html`` then print a CONTINUOUS container's
    values as one run of words without their concept names). Returns ``item``."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence") or []:
        separate_containers(child)
    return item


def _pickle_copy(item: Dataset, base: type) -> Dataset:
    """An independent copy of the content tree ``item`` made by a pickle round trip (the bytes pydicom
    and highdicom themselves define for their objects), as an instance of ``base``."""
    cls = item.__class__
    item.__class__ = base
    try:
        return pickle.loads(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        item.__class__ = cls


def comprehensive_3d_sr(*, content: Dataset, **kwargs: Any) -> Any:
    """``highdicom.sr.Comprehensive3DSR(content=content, **kwargs)``, the same document made faster.

    highdicom's SR constructor deep-copies the content tree with ``copy.deepcopy``, which walks pydicom's
    element-by-element ``__deepcopy__``: for a 50-annotation QA report (about 10,000 elements) that alone
    took a quarter of a second, a fifth of the whole audit. For that one call the root item copies itself
    by a pickle round trip instead (the same independent copy, about 4x faster); the document is
    byte-for-byte the one highdicom makes otherwise (``tests/dicom_io/test_sr_fast_copy.py``).
    """
    import highdicom as hd

    base = content.__class__

    class _PickleCopied(base):  # type: ignore[misc, valid-type]
        def __deepcopy__(self, memo: dict[int, Any]) -> Dataset:
            return _pickle_copy(self, base)

    content.__class__ = _PickleCopied
    try:
        return hd.sr.Comprehensive3DSR(content=content, **kwargs)
    finally:
        content.__class__ = base


def _measurement(name, value: float, referenced_images=None, unit=codes.UNIT_SCORE):
    import highdicom as hd

    return hd.sr.Measurement(
        name=name, value=float(value), unit=unit, referenced_images=referenced_images or None
    )


def _composite(name, ds: Dataset):
    import highdicom as hd

    return hd.sr.CompositeContentItem(
        name=name,
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def measurement_group(
    item: AuditedAnnotation,
    source: Dataset,
    annotation: Dataset,
    heatmap: Dataset | None,
    tracking_uid: str,
    tracking_id: str,
    algorithm_id,
):
    """The measurement group of one audited annotation (TID 1411 for a SEG segment, else TID 1501)."""
    import highdicom as hd

    multi = int(getattr(source, "NumberOfFrames", 1) or 1) > 1
    frames = [int(item.frame)] if (multi and item.frame is not None) else None
    heat_ref = None
    if heatmap is not None:
        heat_ref = [hd.sr.SourceImageForMeasurement(heatmap.SOPClassUID, heatmap.SOPInstanceUID)]
    measurements = []
    if item.agreement is not None:
        measurements.append(_measurement(codes.SALIENCY_AGREEMENT, item.agreement, heat_ref))
    measurements += [
        _measurement(codes.P_GIVEN_LABEL, item.p_given),
        _measurement(codes.REANNOTATION_PRIORITY, item.priority),
        _measurement(codes.N_MEMBERS_DISAGREEING, item.n_disagree, unit=codes.UNIT_COUNT),
        _measurement(codes.N_MEMBERS, item.n_members, unit=codes.UNIT_COUNT),
    ]
    if item.consensus_prob is not None:
        measurements.append(_measurement(codes.CONSENSUS_PROBABILITY, item.consensus_prob))
    if item.agreement is None and heat_ref is not None:
        # keep the heatmap referenced even when no agreement was computed
        measurements[0] = _measurement(codes.P_GIVEN_LABEL, item.p_given, heat_ref)
    qualitative = [
        hd.sr.QualitativeEvaluation(codes.GIVEN_LABEL, item.given_code()),
        hd.sr.QualitativeEvaluation(codes.CONSENSUS_LABEL, item.consensus_code()),
    ]
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id)
    finding = codes.VERDICT_CODES[item.verdict]
    if item.source == "seg":
        if item.segment_number is None:
            raise ValueError(f"SEG annotation {item.annotation_uid} has no segment number")
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=annotation.SOPClassUID,
            sop_instance_uid=annotation.SOPInstanceUID,
            segment_number=int(item.segment_number),
            source_images=[
                hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID, frames)
            ],
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=segment,
            finding_type=finding,
            algorithm_id=algorithm_id,
            measurements=measurements,
            qualitative_evaluations=qualitative,
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=finding,
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=qualitative,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID, frames)],
    )
    group[0].ContentSequence.append(_composite(codes.ANNOTATION_OBJECT, annotation))
    return group


def region_text(i: int, r: dict) -> str:
    """One line per disagreement region: number, kind, area, bounding box (rows r0..r1-1, columns c0..c1-1)."""
    r0, c0, r1, c1 = (int(v) for v in r["bbox"])
    kind = str(r["kind"] or "disagreement").replace("_", " ")
    mm2 = f", {float(r['area_mm2']):.1f} mm2" if r.get("area_mm2") is not None else ""
    return f"region {i}: {kind}, {int(r['area_px'])} px{mm2}, rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}"


def mask_group(
    item: AuditedMask,
    source: Dataset,
    annotation: Dataset,
    overlay: Dataset | None,
    suggestion: tuple[Dataset, int] | None,
    tracking_uid: str,
    tracking_id: str,
    algorithm_id,
    suggestion_note: str | None = None,
):
    """The measurement group of one audited mask (TID 1411 on its SEG segment, else TID 1501).

    ``suggestion_note``: why a flagged mask has no suggestion SEG (a TEXT item LQA-0405)."""
    import math

    import highdicom as hd

    multi = int(getattr(source, "NumberOfFrames", 1) or 1) > 1
    frames = [int(item.frame)] if (multi and item.frame is not None) else None
    overlay_ref = None
    if overlay is not None:
        overlay_ref = [hd.sr.SourceImageForMeasurement(overlay.SOPClassUID, overlay.SOPInstanceUID)]
    measurements = []
    if item.dice is not None and math.isfinite(item.dice):
        measurements.append(_measurement(codes.DICE_TO_CONSENSUS, item.dice, overlay_ref))
        overlay_ref = None
    if item.hd95_mm is not None and math.isfinite(item.hd95_mm):
        measurements.append(_measurement(codes.HD95_TO_CONSENSUS, item.hd95_mm, unit=codes.UNIT_MM))
    if item.agreement is not None and math.isfinite(item.agreement):
        measurements.append(_measurement(codes.MASK_AGREEMENT, item.agreement))
    measurements.append(_measurement(codes.REANNOTATION_PRIORITY, item.priority, overlay_ref))
    if item.score is not None and math.isfinite(item.score):
        measurements.append(_measurement(codes.MASK_ERROR_SCORE, item.score))
    measurements.append(_measurement(codes.N_DISAGREEMENT_REGIONS, len(item.regions), unit=codes.UNIT_COUNT))
    areas = [float(r["area_mm2"]) for r in item.regions if r.get("area_mm2") is not None]
    if item.regions and len(areas) == len(item.regions):
        measurements.append(_measurement(codes.DISAGREEMENT_AREA, sum(areas), unit=codes.UNIT_MM2))
    qualitative = [hd.sr.QualitativeEvaluation(codes.GIVEN_LABEL, item.class_concept())]
    if item.kind is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(codes.MASK_ERROR_KIND, codes.MASK_ERROR_KIND_CODES[item.kind]))
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id)
    finding = codes.VERDICT_CODES[item.verdict]
    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    if item.segment_number is not None:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=annotation.SOPClassUID,
            sop_instance_uid=annotation.SOPInstanceUID,
            segment_number=int(item.segment_number),  # no SEG frame numbers: PS3.3 10.4 forbids both
            source_images=[hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID, frames)],
        )
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=segment, finding_type=finding,
            algorithm_id=algorithm_id, measurements=measurements, qualitative_evaluations=qualitative,
        )
    else:  # the SEG has no segment of this class: the group names the image and the SEG
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm_id,
            measurements=measurements, qualitative_evaluations=qualitative,
            source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID, frames)],
        )
        group[0].ContentSequence.append(_composite(codes.ANNOTATION_OBJECT, annotation))
    for i, r in enumerate(item.regions, start=1):
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DISAGREEMENT_REGION, value=region_text(i, r)[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if suggestion is not None:
        group[0].ContentSequence.append(_composite(codes.SUGGESTED_CORRECTION, suggestion[0]))
    elif suggestion_note:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.SUGGESTION_NOT_AS_SEG, value=suggestion_note[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def volume_region_text(i: int, r: dict) -> str:
    """One 3-D region of disagreement as a line: kind, size, slices, box and centre."""
    kind = (r.get("kind") or "disagreement").replace("_", " ")
    z0, y0, x0, z1, y1, x1 = (int(v) for v in r["bbox"])
    first, last = (int(v) for v in r["slices"])
    size = f"{float(r['volume_mm3']):.1f} mm3 ({int(r['voxels'])} voxels)" if r.get("volume_mm3") is not None \
        else f"{int(r['voxels'])} voxels"
    where = ""
    if r.get("center_mm") is not None:
        x, y, z = (float(v) for v in r["center_mm"])
        where = f", centre ({x:.1f}, {y:.1f}, {z:.1f}) mm patient (LPS)"
    return (f"region {i}: {kind}, {size}, slices {first + 1}-{last + 1}, rows {y0}-{y1 - 1}, columns {x0}-{x1 - 1}"
            f"{where}")


def volume_group(
    item: AuditedVolumeMask,
    annotation: Dataset,
    overlays: Sequence[Dataset],
    suggestion: tuple[Dataset, int] | None,
    tracking_uid: str,
    tracking_id: str,
    algorithm_id,
):
    """The measurement group of one audited segment of a SEG over a series (TID 1411 on the segment and its
    series): Dice, HD95 (mm) and volumes (mm3) against the consensus, the predicted Dice, the slice range,
    the regions with their slices, the key-slice overlays and the suggestion SEG."""
    import math

    import highdicom as hd

    def finite(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    overlay_refs = [hd.sr.SourceImageForMeasurement(o.SOPClassUID, o.SOPInstanceUID) for o in overlays] or None
    measurements = []
    if finite(item.dice):
        measurements.append(_measurement(codes.DICE_TO_CONSENSUS, float(item.dice), overlay_refs))  # type: ignore[arg-type]
        overlay_refs = None
    if finite(item.predicted_dice):
        measurements.append(_measurement(codes.PREDICTED_DICE, float(item.predicted_dice)))  # type: ignore[arg-type]
    if finite(item.hd95_mm):
        measurements.append(_measurement(codes.HD95_TO_CONSENSUS, float(item.hd95_mm), unit=codes.UNIT_MM))  # type: ignore[arg-type]
    if finite(item.given_mm3):
        measurements.append(_measurement(codes.GIVEN_MASK_VOLUME, float(item.given_mm3), unit=codes.UNIT_MM3))  # type: ignore[arg-type]
    if finite(item.consensus_mm3):
        measurements.append(_measurement(codes.CONSENSUS_MASK_VOLUME, float(item.consensus_mm3),  # type: ignore[arg-type]
                                         unit=codes.UNIT_MM3))
    if finite(item.agreement):
        measurements.append(_measurement(codes.MASK_AGREEMENT, float(item.agreement)))  # type: ignore[arg-type]
    measurements.append(_measurement(codes.REANNOTATION_PRIORITY, item.priority, overlay_refs))
    if finite(item.score):
        measurements.append(_measurement(codes.MASK_ERROR_SCORE, float(item.score)))  # type: ignore[arg-type]
    measurements.append(_measurement(codes.N_DISAGREEMENT_REGIONS, len(item.regions), unit=codes.UNIT_COUNT))
    volumes = [float(r["volume_mm3"]) for r in item.regions if r.get("volume_mm3") is not None]
    if item.regions and len(volumes) == len(item.regions):
        measurements.append(_measurement(codes.DISAGREEMENT_VOLUME, sum(volumes), unit=codes.UNIT_MM3))
    if item.slice_range is not None:
        measurements.append(_measurement(codes.FIRST_SLICE, item.slice_range[0] + 1, unit=codes.UNIT_COUNT))
        measurements.append(_measurement(codes.LAST_SLICE, item.slice_range[1] + 1, unit=codes.UNIT_COUNT))
    qualitative = [hd.sr.QualitativeEvaluation(codes.GIVEN_LABEL, item.class_concept())]
    if item.kind is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(codes.MASK_ERROR_KIND, codes.MASK_ERROR_KIND_CODES[item.kind]))
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id)
    finding = codes.VERDICT_CODES[item.verdict]
    series = hd.sr.SourceSeriesForSegmentation(item.series_uid)
    group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    if item.segment_number is not None:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=annotation.SOPClassUID, sop_instance_uid=annotation.SOPInstanceUID,
            segment_number=int(item.segment_number), source_series=series)
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=segment, finding_type=finding,
            algorithm_id=algorithm_id, measurements=measurements, qualitative_evaluations=qualitative)
    else:  # the SEG has no segment of this class: the group names the SEG
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm_id,
            measurements=measurements, qualitative_evaluations=qualitative)
        group[0].ContentSequence.append(_composite(codes.ANNOTATION_OBJECT, annotation))
    for i, r in enumerate(item.regions, start=1):
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DISAGREEMENT_REGION, value=volume_region_text(i, r)[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for o in overlays:
        group[0].ContentSequence.append(_composite(codes.KEY_SLICE_OVERLAY, o))
    if suggestion is not None:
        group[0].ContentSequence.append(_composite(codes.SUGGESTED_CORRECTION, suggestion[0]))
    return group


def summary_group(audited: Sequence[AuditedAnnotation], cohort_findings: Sequence[str], tracking_uid: str,
                  algorithm_id, masks: Sequence[AuditedMask | AuditedVolumeMask] = (), drawn: Dataset | None = None,
                  cannot_judge: Sequence[str] = ()):
    """TID 1501 group for the whole study: counts per verdict, the cohort findings, the classes the models
    cannot judge, the algorithm with its parameters and the SR that draws the flags (``drawn``, a COMPOSITE
    LQA-0404), each stated once."""
    import highdicom as hd

    counts = {v: 0 for v in codes.VERDICT_CODES}
    for verdict in [a.verdict for a in audited] + [m.verdict for m in masks]:
        counts[verdict] += 1
    if not audited:
        del counts["suspected_label_error"]  # only masks audited
    if not counts["suspected_mask_error"] and not masks:
        del counts["suspected_mask_error"]  # no mask audited: a zero here would only confuse
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="labelqa study summary"),
        finding_type=codes.AUDIT_SUMMARY,
        algorithm_id=algorithm_id,
        measurements=[_measurement(codes.VERDICT_COUNT_CODES[v], n, unit=codes.UNIT_COUNT) for v, n in counts.items()],
    )
    for name, texts in ((codes.SYSTEMATIC_DISAGREEMENT, cohort_findings), (codes.MODELS_CANNOT_JUDGE, cannot_judge)):
        for text in texts:
            group[0].ContentSequence.append(
                hd.sr.TextContentItem(
                    name=name,
                    value=str(text),
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            )
    if drawn is not None:
        group[0].ContentSequence.append(_composite(codes.FLAGS_DRAWN, drawn))
    return group


def qa_report_sr(
    *,
    sources: dict[str, Dataset],
    annotations: dict[str, Dataset],
    audited: Sequence[AuditedAnnotation],
    heatmaps: dict[int, Dataset],
    tracking_uids: Sequence[str],
    summary_uid: str,
    algorithm: AlgorithmInfo,
    cohort_findings: Sequence[str],
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    device_uid: str,
    manufacturer: str,
    masks: Sequence[AuditedMask] = (),
    mask_tracking_uids: Sequence[str] = (),
    overlays: dict[int, Dataset] | None = None,
    suggestions: dict[int, tuple[Dataset, int]] | None = None,
    suggestion_notes: dict[int, str] | None = None,
    drawn: Dataset | None = None,
    series_description: str = SERIES_DESCRIPTION,
    volumes: Sequence[AuditedVolumeMask] = (),
    volume_tracking_uids: Sequence[str] = (),
    volume_overlays: dict[int, list[Dataset]] | None = None,
    volume_suggestions: dict[int, tuple[Dataset, int]] | None = None,
    cannot_judge: Sequence[str] = (),
) -> Dataset:
    """The Comprehensive 3D SR (TID 1500) for one study's audited annotations (and masks: ``overlays``,
    ``suggestions`` and ``suggestion_notes`` by index into ``masks``); ``drawn``: the SR that draws the
    flags, referenced from the summary group; ``cannot_judge``: one sentence per class the models
    cannot judge. Every container is SEPARATE (:func:`separate_containers`)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    overlays = overlays or {}
    suggestions = suggestions or {}
    suggestion_notes = suggestion_notes or {}
    algorithm_id = algorithm_identification(algorithm, parameters=False)
    groups = []
    for i, item in enumerate(audited):
        groups.append(
            measurement_group(
                item,
                sources[item.image_uid],
                annotations[item.annotation_uid],
                heatmaps.get(i),
                tracking_uids[i],
                f"annotation {i + 1}",
                algorithm_id,
            )
        )
    for i, m in enumerate(masks):
        groups.append(
            mask_group(
                m,
                sources[m.image_uid],
                annotations[m.annotation_uid],
                overlays.get(i),
                suggestions.get(i),
                mask_tracking_uids[i],
                f"mask {i + 1}",
                algorithm_id,
                suggestion_notes.get(i),
            )
        )
    volume_overlays = volume_overlays or {}
    volume_suggestions = volume_suggestions or {}
    for i, v in enumerate(volumes):
        groups.append(volume_group(v, annotations[v.annotation_uid], volume_overlays.get(i, []),
                                   volume_suggestions.get(i), volume_tracking_uids[i], f"segment {i + 1}",
                                   algorithm_id))
    groups.append(summary_group(audited, cohort_findings, summary_uid, algorithm_identification(algorithm),
                                [*masks, *volumes], drawn, cannot_judge))
    observer = hd.sr.ObserverContext(
        observer_type=dcm.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=algorithm.name, manufacturer_name=manufacturer, model_name=algorithm.version
        ),
    )
    library_images = [h for h in (library_header(ds) for ds in sources.values()) if h is not None]
    key_overlays = [o for os in volume_overlays.values() for o in os]
    library_images += list(heatmaps.values()) + list(overlays.values()) + key_overlays
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.ANNOTATION_QUALITY_AUDIT,
        imaging_measurements=groups,
        title=codes.ANNOTATION_QUALITY_AUDIT,
        referenced_images=library_images,
    )
    suggestion_segs = list({ds.SOPInstanceUID: ds for ds, _ in [*suggestions.values(),
                                                                 *volume_suggestions.values()]}.values())
    evidence = (list(sources.values()) + list(heatmaps.values()) + list(overlays.values()) + key_overlays
                + list(annotations.values()) + suggestion_segs + ([drawn] if drawn is not None else []))
    sr = comprehensive_3d_sr(
        evidence=evidence,
        content=separate_containers(report[0]),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=series_description[:64],
    )
    return sr


def read_report(ds: Dataset) -> dict:
    """Read a labelqa QA report SR back (highdicom): per-annotation verdicts and scores, the summary.

    Returns ``{"title", "items": [{tracking_uid, tracking_id, verdict, verdict_code, given_label,
    consensus_label, measurements: {meaning: value}, source_image_uid, annotation_uid, segment_number,
    heatmap_uid}], "masks": [{tracking_uid, tracking_id, verdict, verdict_code, class_label, kind,
    measurements, source_image_uid, frame, annotation_uid, segment_number, overlay_uid,
    suggestion_uid, regions: [str]}], "summary": {meaning: value}, "cohort_findings": [str],
    "cannot_judge": [str]}``.
    """
    import highdicom as hd

    # an SR highdicom just built keeps a plain content sequence: parse a copy to get the template view
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=isinstance(ds, hd.sr.Comprehensive3DSR))
    content: Any = sr.content  # a MeasurementReport (highdicom types it as its base, ContentSequence)
    meaning_to_verdict = {c.value: v for v, c in codes.VERDICT_CODES.items()}
    items: list[dict] = []
    mask_items: list[dict] = []
    summary: dict = {}
    cohort: list[str] = []
    cannot: list[str] = []
    groups = list(content.get_volumetric_roi_measurement_groups()) + list(content.get_image_measurement_groups())
    for g in groups:
        finding = g.finding_type
        measurements = {m.name.meaning: float(m.value) for m in g.get_measurements()}
        if finding is not None and finding.value == codes.AUDIT_SUMMARY.value:
            summary = measurements
            texts = [(it.ConceptNameCodeSequence[0].CodeValue, str(it.TextValue)) for it in g[0].ContentSequence
                     if it.ValueType == "TEXT"]
            cohort = [t for c, t in texts if c == codes.SYSTEMATIC_DISAGREEMENT.value]
            cannot = [t for c, t in texts if c == codes.MODELS_CANNOT_JUDGE.value]
            continue
        qual = {q.name.value: Code(q.value.value, q.value.scheme_designator, q.value.meaning)
                for q in g.get_qualitative_evaluations()}
        if codes.N_DISAGREEMENT_REGIONS.meaning in measurements:
            mask_items.append(_read_mask_group(g, finding, measurements, qual, meaning_to_verdict))
            continue
        heatmap_uid = None
        for m in g.get_measurements():
            for ref in m.referenced_images:
                heatmap_uid = ref.referenced_sop_instance_uid
        item = {
            "tracking_uid": g.tracking_uid,
            "tracking_id": g.tracking_identifier,
            "verdict": meaning_to_verdict.get(finding.value) if finding is not None else None,
            "verdict_code": finding.meaning if finding is not None else None,
            "given_label": qual.get(codes.GIVEN_LABEL.value),
            "consensus_label": qual.get(codes.CONSENSUS_LABEL.value),
            "measurements": measurements,
            "source_image_uid": None,
            "annotation_uid": None,
            "segment_number": None,
            "heatmap_uid": heatmap_uid,
            "frame": None,
        }
        for it in g[0].ContentSequence:
            name = it.ConceptNameCodeSequence[0].CodeValue
            if it.ValueType == "IMAGE":
                ref = it.ReferencedSOPSequence[0]
                if "ReferencedSegmentNumber" in ref:
                    item["annotation_uid"] = ref.ReferencedSOPInstanceUID
                    item["segment_number"] = int(ref.ReferencedSegmentNumber)
                else:
                    item["source_image_uid"] = ref.ReferencedSOPInstanceUID
                    if "ReferencedFrameNumber" in ref:
                        item["frame"] = int(ref.ReferencedFrameNumber)
            elif it.ValueType == "COMPOSITE" and name == codes.ANNOTATION_OBJECT.value:
                item["annotation_uid"] = it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        items.append(item)
    items.sort(key=lambda it: _tracking_order(it["tracking_id"]))
    mask_items.sort(key=lambda it: _tracking_order(it["tracking_id"]))
    title = sr.ConceptNameCodeSequence[0].CodeMeaning
    return {"title": title, "items": items, "masks": mask_items, "summary": summary, "cohort_findings": cohort,
            "cannot_judge": cannot}


def _read_mask_group(g, finding, measurements: dict, qual: dict, meaning_to_verdict: dict) -> dict:
    kinds = {c.value: k for k, c in codes.MASK_ERROR_KIND_CODES.items()}
    kind_code = qual.get(codes.MASK_ERROR_KIND.value)
    overlay_uid = None
    for m in g.get_measurements():
        for ref in m.referenced_images:
            overlay_uid = ref.referenced_sop_instance_uid
    item: dict = {
        "tracking_uid": g.tracking_uid,
        "tracking_id": g.tracking_identifier,
        "verdict": meaning_to_verdict.get(finding.value) if finding is not None else None,
        "verdict_code": finding.meaning if finding is not None else None,
        "class_label": qual.get(codes.GIVEN_LABEL.value),
        "kind": kinds.get(kind_code.value) if kind_code is not None else None,
        "measurements": measurements,
        "source_image_uid": None,
        "frame": None,
        "annotation_uid": None,
        "segment_number": None,
        "overlay_uid": overlay_uid,
        "suggestion_uid": None,
        "regions": [],
    }
    for it in g[0].ContentSequence:
        name = it.ConceptNameCodeSequence[0].CodeValue
        if it.ValueType == "IMAGE":
            ref = it.ReferencedSOPSequence[0]
            if "ReferencedSegmentNumber" in ref:
                item["annotation_uid"] = ref.ReferencedSOPInstanceUID
                item["segment_number"] = int(ref.ReferencedSegmentNumber)
                for sub in it.get("ContentSequence") or []:  # the segment's source image
                    if sub.ValueType == "IMAGE":
                        _source_of(item, sub.ReferencedSOPSequence[0])
            else:
                _source_of(item, ref)
        elif it.ValueType == "COMPOSITE" and name == codes.ANNOTATION_OBJECT.value:
            item["annotation_uid"] = it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        elif it.ValueType == "COMPOSITE" and name == codes.SUGGESTED_CORRECTION.value:
            item["suggestion_uid"] = it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        elif it.ValueType == "TEXT" and name == codes.DISAGREEMENT_REGION.value:
            item["regions"].append(str(it.TextValue))
    return item


def _source_of(item: dict, ref) -> None:
    item["source_image_uid"] = ref.ReferencedSOPInstanceUID
    if "ReferencedFrameNumber" in ref:
        item["frame"] = int(ref.ReferencedFrameNumber)


def _tracking_order(tracking_id: str) -> tuple[int, str]:
    tail = tracking_id.rsplit(" ", 1)[-1]
    return (int(tail), tracking_id) if tail.isdigit() else (1 << 30, tracking_id)
