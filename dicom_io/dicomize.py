"""Write image data sets as DICOM studies: one image + one annotation (TID 1500 SR or SEG) each.

:func:`write_studies` takes items that are already read (``service.demo.dicomize`` reads the data set with
``models.data.scan_dataset`` and plants label errors with ``models.corruption``): pixels as grey
uint8/uint16, the true and the written label, optionally a mask. Each image becomes a Secondary
Capture image (MONOCHROME2, ``Modality`` as chosen), a Digital X-Ray or an MR image (with plane
geometry: Frame of Reference, position, orientation, 1 mm pixels); its label a
highdicom Comprehensive 3D SR (TID 1500, one image-level measurement group whose Finding is the
class code) or, with ``seg=True``, a binary SEG with one segment whose Segmented Property Type is the
class code (mask: the given one, else the whole image). An item with an integer ``mask`` (0 =
background, k = its k-th class) gets a binary SEG with one segment per class instead (Segment Label =
class name, Segmented Property Type = the vocabulary's code for it), and the manifest gets the columns
``mask_classes`` and ``mask_corruption``. Patient and study identity are synthesised
deterministically from the data set name and the source path (or the ``group_by`` match), so the
same input gives the same UIDs; ``manifest.csv`` records the true and the written label.

A SEG is written only over images with plane geometry (MR here): a viewer places a SEG's frames by the
geometry of its source images, and a SEG over a Secondary Capture without it puts OHIF into its error
page. Annotations written as SEGs therefore make MR images unless another kind is asked for, and
asking for an SC or DX image with SEG annotations is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_io.codes import label_code
from dicom_io.vocabulary import Vocabulary

if TYPE_CHECKING:
    import highdicom as hd

__all__ = [
    "SC_IMAGE_STORAGE", "DX_PRESENTATION_STORAGE", "MR_IMAGE_STORAGE", "IMAGE_KINDS", "MANIFEST_COLUMNS",
    "MASK_MANIFEST_COLUMNS", "UID_NAMESPACE", "DicomizeError", "StudyItem", "DicomizeResult", "PAIRED_BODY_PARTS",
    "BODY_PART_CODES", "TRACKING_UID", "SEG_IMAGE_KINDS", "image_kind_for", "write_studies",
]

log = logging.getLogger(__name__)

SC_IMAGE_STORAGE = uid.SecondaryCaptureImageStorage
DX_PRESENTATION_STORAGE = uid.DigitalXRayImageStorageForPresentation
MR_IMAGE_STORAGE = uid.MRImageStorage
IMAGE_KINDS: dict[str, UID] = {"sc": SC_IMAGE_STORAGE, "dx": DX_PRESENTATION_STORAGE, "mr": MR_IMAGE_STORAGE}
"""``image_kind`` -> SOP Class: Secondary Capture, Digital X-Ray (For Presentation), MR Image."""
SEG_IMAGE_KINDS = ("mr",)
"""The image kinds with plane geometry, the only ones a SEG annotation is written over."""
MANIFEST_COLUMNS = ["source_path", "study_uid", "image_uid", "annotation_uid", "true_label", "written_label"]
MASK_MANIFEST_COLUMNS = ["mask_classes", "mask_corruption"]
"""Added to the manifest when any item has a ``mask``: its classes (";"-joined, segment k = class k) and
the planted corruption (empty: none)."""
UID_NAMESPACE = "labelqa-dicomize-v1"


class DicomizeError(ValueError):
    """The data set cannot be read as one of the supported layouts."""


@dataclass
class StudyItem:
    """One image to write as a study (or into one): its pixels, its true and its written label, its mask.

    ``load()`` gives (H, W) uint8 or uint16 grey pixels (``models.preprocess.to_stored_grey`` makes them);
    ``load_mask()`` a bool (H, W) region for class-label SEG annotations (None: the whole image).

    ``mask`` (an array or a loader of one): an integer (H, W) segmentation, 0 = background, k = the class
    ``mask_classes[k - 1]``; the item's annotation is then a binary SEG with one segment per class
    (segment k, Segment Label = class name), whatever ``seg`` says. ``mask_corruption`` says what was
    planted in this mask (e.g. "eroded"; empty: the mask as drawn); it goes into the manifest.
    """

    source_path: str
    true_label: str
    written_label: str
    load: Callable[[], np.ndarray]
    load_mask: Callable[[], np.ndarray] | None = None
    mask: np.ndarray | Callable[[], np.ndarray] | None = None
    mask_classes: Sequence[str] | None = None
    mask_corruption: str = ""

    def label_mask(self) -> np.ndarray | None:
        """The integer segmentation ``mask`` (loaded when it is a loader), or None."""
        if self.mask is None:
            return None
        m = self.mask() if callable(self.mask) else self.mask
        return np.asarray(m)


@dataclass
class DicomizeResult:
    n_images: int
    n_flipped: int
    out: Path
    manifest: Path
    vocabulary: Path | None
    seconds: float


def _uid(*parts: str) -> UID:
    """A deterministic UID under 2.25 (128 bits of SHA-256 of the parts)."""
    h = hashlib.sha256("\x1f".join((UID_NAMESPACE, *parts)).encode()).hexdigest()
    return UID("2.25." + str(int(h[:32], 16)))


def _identity(ds: Dataset, *, dataset_name: str, study_key: str) -> None:
    """Patient and study identity (and content date/time), synthetic and de-identified, the same for the
    same (``dataset_name``, ``study_key``): patient name/ID "LQA..", study UID, date, accession number."""
    h = hashlib.sha256(f"{UID_NAMESPACE}\x1f{dataset_name}\x1f{study_key}".encode()).hexdigest()
    ds.SpecificCharacterSet = "ISO_IR 192"
    day = int(h[10:14], 16) % 28 + 1
    ds.StudyDate = ds.ContentDate = f"202401{day:02d}"
    ds.StudyTime = ds.ContentTime = f"{int(h[14:16], 16) % 24:02d}{int(h[16:18], 16) % 60:02d}00"
    ds.AccessionNumber = "A" + h[18:30].upper()
    ds.Manufacturer = "labelqa"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"labelqa dicomize {dataset_name}"[:64]
    ds.PatientName = f"LQA^{h[:8].upper()}"
    ds.PatientID = "LQA-" + h[:12].upper()
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "labelqa dicomize: synthetic identity"
    ds.StudyInstanceUID = _uid(dataset_name, "study", study_key)
    ds.StudyID = h[:8].upper()


def _image(
    pixels: np.ndarray,
    *,
    kind: str,
    study_key: str,
    dataset_name: str,
    source_path: str,
    instance_number: int,
    modality: str,
    body_part: str,
) -> Dataset:
    """An SC, DX or MR image with a synthetic, de-identified identity."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = IMAGE_KINDS[kind]
    ds.SOPInstanceUID = _uid(dataset_name, "image", source_path)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = IMAGE_KINDS[kind]
    ds.ImageType = ["DERIVED", "SECONDARY"] if kind == "sc" else ["DERIVED", "PRIMARY"]
    _identity(ds, dataset_name=dataset_name, study_key=study_key)
    ds.Modality = {"sc": modality, "dx": "DX", "mr": "MR"}[kind]
    if kind == "sc":
        ds.ConversionType = "WSD"
    ds.SeriesDescription = "dicomized images"
    ds.BodyPartExamined = body_part
    if kind != "dx" and body_part.upper() in PAIRED_BODY_PARTS:
        ds.Laterality = ""  # General Series, Type 2C for paired body parts: unknown
    ds.SeriesInstanceUID = _uid(dataset_name, "series", study_key, "images")
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16 if bits == 16 else np.uint8).tobytes()
    if bits == 8 and len(ds.PixelData) % 2:
        ds.PixelData += b"\0"
    # VOI window over the full stored range: a reader gets value / max back, as the source file had it.
    ds.WindowCenter = (2**bits) // 2
    ds.WindowWidth = 2**bits
    if kind == "dx":
        _dx_modules(ds, pixels)
    elif kind == "mr":
        _mr_modules(ds, pixels, dataset_name, study_key)
    return ds


PAIRED_BODY_PARTS = {
    "ARM", "LEG", "KNEE", "HAND", "FOOT", "BREAST", "EYE", "SHOULDER", "HIP", "ELBOW", "WRIST", "ANKLE", "EAR",
    "KIDNEY", "LUNG", "FEMUR", "HUMERUS", "CLAVICLE", "TIBIA", "FIBULA", "RADIUS", "ULNA", "FINGER", "TOE", "THUMB",
}  # fmt: skip
BODY_PART_CODES = {
    "CHEST": ("51185008", "SCT", "Chest"),
    "HEAD": ("69536005", "SCT", "Head"),
    "BRAIN": ("12738006", "SCT", "Brain"),
    "ABDOMEN": ("818981001", "SCT", "Abdomen"),
    "KNEE": ("72696002", "SCT", "Knee"),
    "HAND": ("85562004", "SCT", "Hand"),
}
"""Body Part Examined -> Anatomic Region (CID 4031) for DX images."""


def _dx_modules(ds: Dataset, pixels: np.ndarray) -> None:
    """DX Series, DX Anatomy Imaged, DX Image, DX Detector, VOI LUT, Acquisition Context (PS3.3 A.26)."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.PatientOrientation = ["L", "F"]  # as a PA chest radiograph is displayed
    region = BODY_PART_CODES.get(str(ds.get("BodyPartExamined", "")).upper())
    if region is None:
        ds.AnatomicRegionSequence = []
        if "BodyPartExamined" in ds:
            del ds.BodyPartExamined  # an empty region sequence means 'unknown'
    else:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = region
        ds.AnatomicRegionSequence = [item]
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.DetectorType = ""
    ds.ImagerPixelSpacing = [1, 1]
    ds.AcquisitionContextSequence = []


def _mr_modules(ds: Dataset, pixels: np.ndarray, dataset_name: str, study_key: str) -> None:
    """MR Image, Image Plane and Frame of Reference modules (PS3.3 A.4); 16-bit pixels as MR requires."""
    if ds.BitsAllocated != 16:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.RepetitionTime = ""
    ds.SliceThickness = 1
    ds.PixelSpacing = [1, 1]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.FrameOfReferenceUID = _uid(dataset_name, "frame-of-reference", study_key)
    ds.PositionReferenceIndicator = ""
    del ds.PatientOrientation


def _has_plane(image: Dataset) -> bool:
    """Whether the image has a plane position (MR here): then its SEG takes the geometry, not Patient Orientation."""
    return "ImagePositionPatient" in image


def _observation_context():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=_uid("device", "labelqa-dicomize"), name="labelqa dicomize")
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _sr(image: Dataset, concept, *, dataset_name: str, study_key: str, source_path: str, observation_context):
    import highdicom as hd

    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid(dataset_name, "tracking", source_path), identifier="image-level label"
        ),
        finding_type=concept,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image],
        content=report,
        series_instance_uid=_uid(dataset_name, "series", study_key, "sr"),
        series_number=100,
        sop_instance_uid=_uid(dataset_name, "sr", source_path),
        instance_number=int(image.InstanceNumber),
        manufacturer="labelqa",
        is_complete=True,
        series_description="dicomized labels",
    )
    _deterministic_times(sr, image)
    return sr


def _deterministic_times(ds: Dataset, image: Dataset) -> None:
    """Content/creation date-times from the image instead of 'now': the same input gives the same bytes."""
    date, time_ = str(image.ContentDate), str(image.ContentTime)
    ds.ContentDate, ds.ContentTime = date, time_
    if "InstanceCreationDate" in ds or "InstanceCreationTime" in ds:
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    for kw in ("SeriesDate", "SeriesTime"):
        if kw in ds:
            setattr(ds, kw, date if kw == "SeriesDate" else time_)
    for eq in ds.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in eq:
            eq.ContributionDateTime = date + time_


def _deterministic_dimension_uid(seg: Dataset) -> None:
    """highdicom draws a random Dimension Organization UID; derive it from the SEG's own UID instead."""
    new = _uid("dimension-organization", str(seg.SOPInstanceUID))
    for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(seq) or []:
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = new


_IDENTITY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
TRACKING_UID = ("DCM", "112040")


class _SRFactory:
    """TID 1500 SRs for many images: highdicom builds one per class, the rest are copies with new identities.

    A copy differs from its template only in what depends on the image (patient/study identity, the
    referenced image, evidence), its own UIDs and times; tests check that a copy equals what highdicom
    builds for the same image.
    """

    def __init__(self, observation_context, dataset_name: str) -> None:
        self._obs = observation_context
        self._dataset_name = dataset_name
        self._templates: dict[str, bytes] = {}

    def make(self, image: Dataset, label: str, concept, *, study_key: str, source_path: str) -> Dataset:
        sr_uid = _uid(self._dataset_name, "sr", source_path)
        template = self._templates.get(label)
        if template is None:
            sr = _sr(
                image,
                concept,
                dataset_name=self._dataset_name,
                study_key=study_key,
                source_path=source_path,
                observation_context=self._obs,
            )
            buf = io.BytesIO()
            sr.save_as(buf)
            self._templates[label] = buf.getvalue()
            return sr
        sr = pydicom.dcmread(io.BytesIO(template))  # parsing the bytes is ~5x faster than deepcopy
        for kw in _IDENTITY:
            if kw in image:
                setattr(sr, kw, image[kw].value)
        sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = sr_uid
        sr.SeriesInstanceUID = _uid(self._dataset_name, "series", study_key, "sr")
        sr.InstanceNumber = int(image.InstanceNumber)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        evidence.StudyInstanceUID = image.StudyInstanceUID
        evidence.ReferencedSeriesSequence[0].SeriesInstanceUID = image.SeriesInstanceUID
        ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        for item in _content_items(sr):
            vt = item.get("ValueType")
            if vt == "UIDREF" and _concept_name(item) == TRACKING_UID:
                item.UID = _uid(self._dataset_name, "tracking", source_path)
            elif vt == "IMAGE":
                r = item.ReferencedSOPSequence[0]
                r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        _deterministic_times(sr, image)
        return sr


def _content_items(ds: Dataset):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _content_items(item)


def _concept_name(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)) if seq else None


def _seg(image: Dataset, concept, label: str, mask: np.ndarray, *, dataset_name: str, study_key: str, source_path: str):
    import highdicom as hd

    if mask.shape != (image.Rows, image.Columns):
        raise DicomizeError(f"{source_path}: mask shape {mask.shape} differs from image {(image.Rows, image.Columns)}")
    if not mask.any():
        mask = np.ones_like(mask, dtype=bool)  # a label needs a region; an empty mask means 'whole image'
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64],
        segmented_property_category=hd.sr.CodedConcept("404684003", "SCT", "Clinical finding"),
        segmented_property_type=concept,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask.astype(bool)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=_uid(dataset_name, "series", study_key, "seg"),
        series_number=200,
        sop_instance_uid=_uid(dataset_name, "seg", source_path),
        instance_number=int(image.InstanceNumber),
        manufacturer="labelqa",
        manufacturer_model_name="labelqa dicomize",
        software_versions="0.1",
        device_serial_number="0",
        series_description="dicomized labels",
    )


def _segment_concepts(vocabulary: Vocabulary, name: str) -> hd.sr.CodedConcept:
    """Segmented Property Type of class ``name``: its first segment property type, else its code, else
    a local label code (99LABELQA) when the vocabulary does not know it."""
    import highdicom as hd

    for c in vocabulary.classes:
        if c.name == name:
            return (c.segment_property_types[0] if c.segment_property_types else c.code).to_highdicom()

    code = label_code(name, name[:64])
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def _mask_seg(
    image: Dataset,
    mask: np.ndarray,
    classes: Sequence[str],
    vocabulary: Vocabulary,
    *,
    dataset_name: str,
    study_key: str,
    source_path: str,
) -> Dataset:
    """A binary SEG of an integer mask (0 = background, k = ``classes[k - 1]``): one segment per class."""
    import highdicom as hd

    if mask.shape != (image.Rows, image.Columns):
        raise DicomizeError(f"{source_path}: mask shape {mask.shape} differs from image {(image.Rows, image.Columns)}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise DicomizeError(f"{source_path}: the mask must hold integers 0..{len(classes)}, got {mask.dtype}")
    values = np.unique(mask)
    if values.min() < 0 or values.max() > len(classes):
        raise DicomizeError(f"{source_path}: mask values {values.tolist()} outside 0..{len(classes)} "
                            f"(classes: {list(classes)})")
    descs = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept("404684003", "SCT", "Clinical finding"),
            segmented_property_type=_segment_concepts(vocabulary, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for k, name in enumerate(classes, start=1)
    ]
    pixels = np.stack([mask == k for k in range(1, len(classes) + 1)], axis=-1)[None]
    return hd.seg.Segmentation(
        source_images=[image],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=_uid(dataset_name, "series", study_key, "seg"),
        series_number=200,
        sop_instance_uid=_uid(dataset_name, "seg", source_path),
        instance_number=int(image.InstanceNumber),
        manufacturer="labelqa",
        manufacturer_model_name="labelqa dicomize",
        software_versions="0.1",
        device_serial_number="0",
        series_description="dicomized masks",
    )


def image_kind_for(image_kind: str | None, *, writes_seg: bool) -> str:
    """The image kind to write: the one asked for, else MR under SEG annotations and SC under SR labels.
    Raises DicomizeError for an unknown kind, or a kind without plane geometry under SEG annotations."""
    kind = image_kind or ("mr" if writes_seg else "sc")
    if kind not in IMAGE_KINDS:
        raise DicomizeError(f"image kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
    if writes_seg and kind not in SEG_IMAGE_KINDS:
        raise DicomizeError(f"SEG annotations need images with plane geometry (Frame of Reference, position, "
                            f"orientation, pixel spacing), which image kind {kind!r} has not: viewers cannot place "
                            f"the SEG on them. Use image kind {' or '.join(SEG_IMAGE_KINDS)}, or SR labels.")
    return kind


def write_studies(
    items: Sequence[StudyItem],
    out: Path,
    *,
    vocabulary: Vocabulary,
    dataset_name: str,
    modality: str = "OT",
    image_kind: str | None = None,
    body_part: str = "CHEST",
    seg: bool = False,
    group_by: str | None = None,
    vocabulary_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomizeResult:
    """Write ``items`` as DICOM studies under ``out`` (one folder per study) and ``out/manifest.csv``.

    Each item becomes an image (SC / DX / MR) and one annotation: a TID 1500 SR labelling the image
    with ``written_label``, or with ``seg`` a binary SEG whose one segment is the item's mask. Identity
    and UIDs are synthetic and deterministic (``dataset_name`` + source path, or the ``group_by`` match,
    which groups images into one study). ``image_kind``: sc, dx or mr; None: mr when SEGs are written
    (``seg`` or items with masks), else sc (:func:`image_kind_for`). Raises DicomizeError for an unknown
    kind or label, or SEG annotations over a kind without plane geometry.
    """
    t0 = time.perf_counter()
    image_kind = image_kind_for(image_kind, writes_seg=seg or any(it.mask is not None for it in items))
    missing = sorted({it.written_label for it in items if it.mask is None} - set(vocabulary.class_names))
    if missing:
        raise DicomizeError(f"labels not in the vocabulary: {', '.join(missing)} (classes: {vocabulary.class_names})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(group_by) if group_by else None
    instance_counter: dict[str, int] = {}
    concepts = {c: vocabulary.code_for(c).to_highdicom() for c in vocabulary.class_names}
    srs = None if seg else _SRFactory(_observation_context(), dataset_name)
    rows = []
    for n, it in enumerate(items):
        key = it.source_path
        if pattern is not None:
            m = pattern.search(it.source_path)
            if m:
                key = m.group(1) if m.groups() else m.group(0)
        instance_counter[key] = instance_counter.get(key, 0) + 1
        pixels = np.asarray(it.load())
        if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
            raise DicomizeError(f"{it.source_path}: pixels must be (H, W) uint8 or uint16, got {pixels.dtype} "
                                f"{pixels.shape}")
        image = _image(
            pixels,
            kind=image_kind,
            study_key=key,
            dataset_name=dataset_name,
            source_path=it.source_path,
            instance_number=instance_counter[key],
            modality=modality,
            body_part=body_part,
        )
        study_dir = out / image.StudyInstanceUID
        study_dir.mkdir(exist_ok=True)
        image.save_as(study_dir / f"IMG_{image.SOPInstanceUID}.dcm", enforce_file_format=True)
        wlabel = it.written_label
        label_mask = it.label_mask()
        if label_mask is not None:
            classes = list(it.mask_classes or [])
            if not classes:
                raise DicomizeError(f"{it.source_path}: a mask needs its class names (mask_classes)")
            ann = _mask_seg(image, label_mask, classes, vocabulary, dataset_name=dataset_name, study_key=key,
                            source_path=it.source_path)
            ann.PatientOrientation = ""  # General Image, Type 2C for images without a plane position
            if _has_plane(image):
                del ann.PatientOrientation
            _deterministic_times(ann, image)
            _deterministic_dimension_uid(ann)
            ann.save_as(study_dir / f"SEG_{ann.SOPInstanceUID}.dcm")
        elif seg:
            mask = it.load_mask() if it.load_mask is not None else np.ones(pixels.shape, bool)
            ann = _seg(
                image,
                concepts[wlabel],
                wlabel,
                np.asarray(mask, dtype=bool),
                dataset_name=dataset_name,
                study_key=key,
                source_path=it.source_path,
            )
            ann.PatientOrientation = ""  # General Image, Type 2C for images without a plane position
            if _has_plane(image):
                del ann.PatientOrientation
            _deterministic_times(ann, image)
            _deterministic_dimension_uid(ann)
            ann.save_as(study_dir / f"SEG_{ann.SOPInstanceUID}.dcm")
        else:
            assert srs is not None
            ann = srs.make(image, wlabel, concepts[wlabel], study_key=key, source_path=it.source_path)
            ann.save_as(study_dir / f"SR_{ann.SOPInstanceUID}.dcm")
        rows.append(
            [it.source_path, image.StudyInstanceUID, image.SOPInstanceUID, ann.SOPInstanceUID, it.true_label, wlabel,
             ";".join(it.mask_classes or []) if label_mask is not None else "", it.mask_corruption]
        )
        if progress is not None:
            progress(n + 1, len(items))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        with_masks = any(it.mask is not None for it in items)
        w.writerow(MANIFEST_COLUMNS + (MASK_MANIFEST_COLUMNS if with_masks else []))
        w.writerows(r if with_masks else r[: len(MANIFEST_COLUMNS)] for r in rows)
    n_flipped = sum(1 for r in rows if r[4] != r[5])
    return DicomizeResult(len(rows), n_flipped, out, manifest, vocabulary_path, time.perf_counter() - t0)
