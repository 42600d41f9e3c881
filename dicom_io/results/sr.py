"""The QA report: a Comprehensive 3D SR with a TID 1500 Measurement Report (highdicom).

Content (PS3.16 TID 1500): title and procedure reported "Annotation quality audit" (99LABELQA),
device observer context (labelqa), the image library, and one measurement group per audited
annotation:

- SEG annotations: TID 1411 Volumetric ROI group whose ROI is the audited segment
  (``ReferencedSegment``, with the source image and frame as the segment's source);
- SR annotations: TID 1501 group with the source image and frame as ``Source`` and a COMPOSITE
  reference to the annotation SR (TID 1501 is extensible).

Each group carries a tracking identifier + UID, the verdict as ``Finding`` (99LABELQA), the given and
consensus labels as qualitative evaluations, the scores as TID 300 measurements (UCUM "1") and the
algorithm identification (TID 4019: name, version, bundle hash, thresholds). The saliency agreement
measurement names the heatmap Secondary Capture as its ``Source of Measurement``. One more TID 1501
group summarises the study: counts per verdict and each systematic-disagreement (cohort) finding once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_io import codes

if TYPE_CHECKING:
    from dicom_io.results.records import AlgorithmInfo, AuditedAnnotation

SERIES_DESCRIPTION = "labelqa annotation QA report"


def algorithm_identification(algorithm: AlgorithmInfo):  # -> highdicom.sr.AlgorithmIdentification
    """TID 4019 for the bundle: name, version, and parameters 'key=value' (bundle hash first)."""
    import highdicom as hd

    params = [f"bundle_hash={algorithm.bundle_hash}"]
    params += [f"{k}={v}" for k, v in sorted(algorithm.parameters.items())]
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version, parameters=params)


def _measurement(name, value: float, referenced_images=None):
    import highdicom as hd

    return hd.sr.Measurement(
        name=name, value=float(value), unit=codes.UNIT_ONE, referenced_images=referenced_images or None
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
        _measurement(codes.N_MEMBERS_DISAGREEING, item.n_disagree),
        _measurement(codes.N_MEMBERS, item.n_members),
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


def summary_group(audited: Sequence[AuditedAnnotation], cohort_findings: Sequence[str], tracking_uid: str,
                  algorithm_id):
    """TID 1501 group for the whole study: counts per verdict and the cohort findings, stated once."""
    import highdicom as hd

    counts = {v: 0 for v in codes.VERDICT_CODES}
    for a in audited:
        counts[a.verdict] += 1
    if not counts["suspected_mask_error"]:
        del counts["suspected_mask_error"]  # no mask audited or none flagged: a zero here would only confuse
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="labelqa study summary"),
        finding_type=codes.AUDIT_SUMMARY,
        algorithm_id=algorithm_id,
        measurements=[_measurement(codes.VERDICT_COUNT_CODES[v], n) for v, n in counts.items()],
    )
    for text in cohort_findings:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.SYSTEMATIC_DISAGREEMENT,
                value=str(text),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


_GEOMETRY = (
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PlanePositionSequence", "ImagePositionPatient"),
)


def _library_header(ds: Dataset) -> Dataset | None:
    """The header highdicom's Image Library entry needs: an enhanced multi-frame image keeps its geometry
    in functional groups, so copy it (from the shared groups, else the first frame's) to the top level.
    None when a cross-sectional image has no geometry at all (it is then left out of the library)."""
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return ds if _has_geometry(ds) else None
    out = Dataset()
    skip = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence",
            "SharedFunctionalGroupsSequence"}
    for elem in ds:
        if elem.keyword not in skip:
            out.add(elem)
    groups = [g for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
              for g in (ds.get(key) or [])[:1]]
    for seq, attr in _GEOMETRY:
        if attr in out:
            continue
        for g in groups:
            items = g.get(seq)
            if items and attr in items[0]:
                setattr(out, attr, items[0][attr].value)
                break
    return out if _has_geometry(out) else None


def _has_geometry(ds: Dataset) -> bool:
    if str(ds.get("Modality", "")) not in ("CT", "MR", "PT"):
        return True
    return all(a in ds for a in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"))


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
) -> Dataset:
    """The Comprehensive 3D SR (TID 1500) for one study's audited annotations."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    algorithm_id = algorithm_identification(algorithm)
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
    groups.append(summary_group(audited, cohort_findings, summary_uid, algorithm_id))
    observer = hd.sr.ObserverContext(
        observer_type=dcm.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=algorithm.name, manufacturer_name=manufacturer, model_name=algorithm.version
        ),
    )
    library_images = [h for h in (_library_header(ds) for ds in sources.values()) if h is not None]
    library_images += list(heatmaps.values())
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.ANNOTATION_QUALITY_AUDIT,
        imaging_measurements=groups,
        title=codes.ANNOTATION_QUALITY_AUDIT,
        referenced_images=library_images,
    )
    evidence = list(sources.values()) + list(heatmaps.values()) + list(annotations.values())
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
    )
    return sr


def read_report(ds: Dataset) -> dict:
    """Read a labelqa QA report SR back (highdicom): per-annotation verdicts and scores, the summary.

    Returns ``{"title", "items": [{tracking_uid, tracking_id, verdict, verdict_code, given_label,
    consensus_label, measurements: {meaning: value}, source_image_uid, annotation_uid, segment_number,
    heatmap_uid}], "summary": {meaning: value}, "cohort_findings": [str]}``.
    """
    import highdicom as hd

    sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=False) if not isinstance(ds, hd.sr.Comprehensive3DSR) else ds
    content = sr.content
    meaning_to_verdict = {c.value: v for v, c in codes.VERDICT_CODES.items()}
    items: list[dict] = []
    summary: dict = {}
    cohort: list[str] = []
    groups = list(content.get_volumetric_roi_measurement_groups()) + list(content.get_image_measurement_groups())
    for g in groups:
        finding = g.finding_type
        measurements = {m.name.meaning: float(m.value) for m in g.get_measurements()}
        if finding is not None and finding.value == codes.AUDIT_SUMMARY.value:
            summary = measurements
            cohort = [str(it.TextValue) for it in g[0].ContentSequence
                      if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue
                      == codes.SYSTEMATIC_DISAGREEMENT.value]
            continue
        qual = {q.name.value: Code(q.value.value, q.value.scheme_designator, q.value.meaning)
                for q in g.get_qualitative_evaluations()}
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
    title = sr.ConceptNameCodeSequence[0].CodeMeaning
    return {"title": title, "items": items, "summary": summary, "cohort_findings": cohort}


def _tracking_order(tracking_id: str) -> tuple[int, str]:
    tail = tracking_id.rsplit(" ", 1)[-1]
    return (int(tail), tracking_id) if tail.isdigit() else (1 << 30, tracking_id)
