"""A real DICOM study to write results for: two CT images, a SEG on one and an annotation SR on the other,
and audited annotations with every kind of verdict (the result writer's inputs, for tests and benchmarks)."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
from pydicom.sr.coding import Code

from dicom_io.results import AlgorithmInfo, AuditedAnnotation

__all__ = ["ALGORITHM", "COHORT", "NORMAL", "PNEUMONIA", "heatmap_blob", "make_study"]

NORMAL = Code("17621005", "SCT", "Normal")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
ALGORITHM = AlgorithmInfo(
    name="labelqa-ensemble",
    version="0.1.0",
    bundle_hash="sha256:" + "ab" * 32,
    parameters={"agreement_threshold": 0.5, "members": "densenet121,resnet18,efficientnet-b0"},
)


def heatmap_blob(h: int, w: int, cy: float, cx: float) -> np.ndarray:
    """A Gaussian blob (float32, peak 1 at (cy, cx)): a stand-in Grad-CAM heatmap."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (min(h, w) / 6) ** 2)).astype(np.float32)


def make_study() -> tuple[dict, dict, list[AuditedAnnotation]]:
    """A real CT image (pydicom test file) twice in one study, a SEG on one, an annotation SR on the other."""
    import highdicom as hd
    from pydicom.data import get_testdata_file
    from pydicom.sr.codedict import codes as dcm

    ct_small = get_testdata_file("CT_small.dcm")
    if not isinstance(ct_small, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing")
    img_a = pydicom.dcmread(ct_small)
    img_b = copy.deepcopy(img_a)
    img_b.SOPInstanceUID = img_a.SOPInstanceUID + ".2"
    img_b.InstanceNumber = 2
    img_b.PixelData = np.ascontiguousarray(np.flipud(img_a.pixel_array)).tobytes()
    mask = np.zeros((1, img_a.Rows, img_a.Columns), dtype=bool)
    mask[0, 40:80, 30:70] = True
    seg = hd.seg.Segmentation(
        source_images=[img_a],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="pneumonia",
                segmented_property_category=dcm.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=PNEUMONIA,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="annotator",
        manufacturer_model_name="hand",
        software_versions="1",
        device_serial_number="1",
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image label"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(dcm.DCM.Finding, NORMAL)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(img_b)],
    )
    ann_report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=dcm.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    ann_sr = hd.sr.Comprehensive3DSR(
        evidence=[img_b], content=ann_report[0], series_instance_uid=hd.UID(), series_number=51,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="annotator",
    )
    sources = {img_a.SOPInstanceUID: img_a, img_b.SOPInstanceUID: img_b}
    annotations = {seg.SOPInstanceUID: seg, ann_sr.SOPInstanceUID: ann_sr}
    study = img_a.StudyInstanceUID
    audited = [
        AuditedAnnotation(
            study_uid=study, annotation_uid=seg.SOPInstanceUID, annotation_sop_class_uid=seg.SOPClassUID,
            source="seg", segment_number=1, image_uid=img_a.SOPInstanceUID, given_label=PNEUMONIA,
            consensus_label=NORMAL, verdict="suspected_label_error", agreement=0.81, p_given=0.07,
            priority=2.31, n_disagree=3, n_members=3, consensus_prob=0.93, heatmap=heatmap_blob(16, 16, 6, 9),
        ),
        AuditedAnnotation(
            study_uid=study, annotation_uid=ann_sr.SOPInstanceUID, annotation_sop_class_uid=ann_sr.SOPClassUID,
            source="sr", content_path="1.2", image_uid=img_b.SOPInstanceUID, given_label=NORMAL,
            consensus_label=PNEUMONIA, verdict="hard_case", agreement=0.22, p_given=0.31, priority=0.9,
            n_disagree=3, n_members=3, consensus_prob=0.69, heatmap=heatmap_blob(16, 16, 10, 4),
        ),
        AuditedAnnotation(
            study_uid=study, annotation_uid=ann_sr.SOPInstanceUID, annotation_sop_class_uid=ann_sr.SOPClassUID,
            source="sr", content_path="1.3", image_uid=img_a.SOPInstanceUID, given_label="normal",
            consensus_label="normal", verdict="consistent", agreement=None, p_given=0.88, priority=0.05,
            n_disagree=0, n_members=3,
        ),
    ]
    return sources, annotations, audited


COHORT = ["test/NORMAL: 34% of images called pneumonia by every member (cohort shift, not individual errors)"]
