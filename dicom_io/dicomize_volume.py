"""Write volumes as DICOM studies: a CT- or MR-like series of single-frame slices with real geometry,
and one binary SEG over that series per case.

:func:`write_volume_study` takes a volume array (slices, rows, columns), its grid
(:class:`dicom_io.volumes.Geometry`: spacing, origin, direction; e.g. ``Geometry.from_simpleitk`` of a
NIfTI image) and the masks of the case (segment label -> bool volume on the same grid). Each slice k
becomes a CT Image or MR Image with Image Position (Patient) = the centre of voxel (k, 0, 0), Image
Orientation (Patient) from the direction, Pixel Spacing, Slice Thickness and Spacing Between Slices =
the slice spacing, one Frame of Reference for the case; CT values are stored with Rescale Slope and
Intercept (exact for integer values in the int16 range, else 16-bit quantised), MR values as
unsigned (or signed) 16-bit integers (exact for integers, else scaled to 0..65535). The SEG
(highdicom) is BINARY, one segment per label (segment k = the k-th label; Segmented Property Type
from the vocabulary), empty frames omitted, over the whole series. Patient, study and every UID are
synthetic and deterministic (``dataset_name`` + ``case_key``), as in :mod:`dicom_io.dicomize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.dicomize import (
    PAIRED_BODY_PARTS,
    DicomizeError,
    _deterministic_dimension_uid,
    _deterministic_times,
    _identity,
    _segment_concepts,
    _uid,
)
from dicom_io.geometry import Geometry
from dicom_io.vocabulary import Vocabulary

if TYPE_CHECKING:
    import highdicom as hd

__all__ = ["VOLUME_IMAGE_CLASSES", "VolumeStudy", "encode_values", "volume_slices", "series_seg",
           "write_volume_study"]

VOLUME_IMAGE_CLASSES = {"CT": uid.CTImageStorage, "MR": uid.MRImageStorage}
"""Modality -> SOP Class of the slices written."""


@dataclass
class VolumeStudy:
    """What :func:`write_volume_study` wrote for one case."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    image_paths: list[Path]
    seg_uid: str | None = None
    seg_path: Path | None = None
    segment_numbers: dict[str, int] = field(default_factory=dict)
    """Segment label -> segment number in the SEG."""


def _ds(v: float) -> str:
    """A Decimal String of at most 16 characters."""
    for digits in range(12, 4, -1):
        s = format(float(v), f".{digits}g")
        if len(s) <= 16:
            return s
    return format(float(v), ".4g")


def encode_values(array: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Stored 16-bit values, Rescale Slope and Rescale Intercept for a volume's ``array``.

    Integer values that fit are stored as they are (int16 when some are negative, else uint16;
    slope 1, intercept 0). Otherwise CT values are quantised to uint16 with slope = range / 65535 and
    intercept = minimum (values come back within half a step); MR values, which have no rescale in
    the MR Image IOD, are scaled to 0..65535 (slope and intercept returned say how, but are not written).
    """
    a = np.asarray(array)
    if a.size == 0:
        raise DicomizeError("empty volume")
    if not np.isfinite(a).all():
        raise DicomizeError("the volume has values that are not finite")
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(np.equal(np.mod(a, 1), 0)))
    if integral and lo >= -32768 and hi <= 32767 and lo < 0:
        return a.astype(np.int16), 1.0, 0.0
    if integral and lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    if modality == "CT":  # the values as written (Decimal Strings of at most 16 characters) decode them
        slope, lo = float(_ds(slope)), float(_ds(lo))
    stored = np.rint((a.astype(np.float64) - lo) / slope).clip(0, 65535).astype(np.uint16)
    return stored, slope, lo


def volume_slices(
    image: np.ndarray,
    geometry: Geometry,
    *,
    modality: str = "CT",
    dataset_name: str,
    case_key: str,
    body_part: str | None = None,
    series_description: str = "dicomized volume",
    series_number: int = 1,
) -> list[Dataset]:
    """The slices of ``image`` (slices, rows, columns) on ``geometry`` as CT or MR Image datasets
    (slice k = the k-th dataset). Raises DicomizeError for a bad modality, shape or grid."""
    modality = modality.upper()
    if modality not in VOLUME_IMAGE_CLASSES:
        raise DicomizeError(f"modality must be one of {', '.join(VOLUME_IMAGE_CLASSES)}, got {modality!r}")
    arr = np.asarray(image)
    if arr.ndim != 3 or tuple(arr.shape) != geometry.shape:
        raise DicomizeError(f"the volume {arr.shape} is not on its grid {geometry.shape}")
    d = geometry.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise DicomizeError(f"the grid's axes are not orthogonal (sheared grid): {d.round(4).tolist()}")
    stored, slope, intercept = encode_values(arr, modality)
    signed = stored.dtype == np.int16
    shown = arr.astype(np.float64) if modality == "CT" else stored.astype(np.float64)
    lo, hi = float(shown.min()), float(shown.max())
    sop_class = VOLUME_IMAGE_CLASSES[modality]
    series_uid = _uid(dataset_name, "series", case_key, "volume")
    for_uid = _uid(dataset_name, "frame-of-reference", case_key)
    spacing = geometry.spacing
    iop = [float(v) for v in (*d[:, 2], *d[:, 1])]  # row direction (columns), then column direction (rows)
    normal = np.cross(d[:, 2], d[:, 1])
    out = []
    for k in range(arr.shape[0]):
        pos = geometry.index_to_patient(np.array([[k, 0, 0]]))[0]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(dataset_name, "volume-slice", case_key,
                                                                           str(k))
        _identity(ds, dataset_name=dataset_name, study_key=case_key)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description[:64]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        if body_part:
            ds.BodyPartExamined = body_part.upper()
            if body_part.upper() in PAIRED_BODY_PARTS:
                ds.Laterality = ""  # General Series, Type 2C for paired body parts: unknown
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
        ds.SliceThickness = _ds(spacing[0])
        ds.SpacingBetweenSlices = _ds(spacing[0])
        ds.SliceLocation = _ds(float(pos @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = _ds((lo + hi) / 2)
        ds.WindowWidth = _ds(max(hi - lo, 1.0))
        if modality == "CT":
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU"
            ds.KVP = ""
        else:
            ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
            ds.ScanningSequence = "RM"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = ""
            ds.EchoTrainLength = ""
            ds.RepetitionTime = ""
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


def series_seg(
    slices: Sequence[Dataset],
    masks: Mapping[str, np.ndarray],
    *,
    vocabulary: Vocabulary,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 200,
    series_description: str = "dicomized masks",
    manufacturer: str = "labelqa",
    algorithm: hd.AlgorithmIdentificationSequence | None = None,
    content_label: str | None = None,
    content_description: str | None = None,
    segment_label_prefix: str = "",
) -> Dataset:
    """A binary SEG (highdicom) over a series: ``slices`` in volume order, ``masks`` label -> bool
    (slices, rows, columns) on their grid, segment k = the k-th label (Segment Label = prefix +
    label, Segmented Property Type from ``vocabulary``); empty frames omitted. ``algorithm`` (a
    ``highdicom.AlgorithmIdentificationSequence``) makes the segments AUTOMATIC, else MANUAL.
    UIDs and times are deterministic. Raises DicomizeError for a mask not on the slices' grid."""
    import highdicom as hd

    shape = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    labels = list(masks)
    if not labels:
        raise DicomizeError("a SEG needs at least one mask")
    pixels = np.zeros((*shape, len(labels)), bool)
    for k, name in enumerate(labels):
        m = np.asarray(masks[name])
        if m.shape != shape:
            raise DicomizeError(f"mask {name!r} {m.shape} is not on the series' grid {shape}")
        pixels[..., k] = m.astype(bool)
    descs = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=(segment_label_prefix + name)[:64],
            segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            segmented_property_type=_segment_concepts(vocabulary, name),
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm is not None
                            else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(labels, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(slices),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="labelqa dicomize",
        software_versions="0.1",
        device_serial_number="0",
        series_description=series_description,
        content_label=content_label or "SEGMENTATION",
        content_description=content_description,
        omit_empty_frames=bool(pixels.any()),
    )
    first = slices[0]
    if "BodyPartExamined" in first:
        seg.BodyPartExamined = first.BodyPartExamined
    _deterministic_times(seg, first)
    _deterministic_dimension_uid(seg)
    return seg


def write_volume_study(
    image: np.ndarray,
    geometry: Geometry,
    masks: Mapping[str, np.ndarray],
    out: Path,
    *,
    dataset_name: str,
    case_key: str,
    modality: str = "CT",
    vocabulary: Vocabulary | None = None,
    body_part: str | None = None,
) -> VolumeStudy:
    """Write one case: the series of ``image`` on ``geometry`` and, when ``masks`` has any, one SEG
    over it, under ``out/<StudyInstanceUID>/`` (``IMG_<uid>.dcm`` per slice, ``SEG_<uid>.dcm``).

    ``vocabulary`` gives the segments' Segmented Property Types (default: derived from the labels).
    The same input gives the same bytes. Raises DicomizeError for bad input.
    """
    slices = volume_slices(image, geometry, modality=modality, dataset_name=dataset_name, case_key=case_key,
                           body_part=body_part)
    study_dir = Path(out) / str(slices[0].StudyInstanceUID)
    study_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in slices:
        p = study_dir / f"IMG_{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    result = VolumeStudy(str(slices[0].StudyInstanceUID), str(slices[0].SeriesInstanceUID),
                         str(slices[0].FrameOfReferenceUID), paths)
    if masks:
        vocab = vocabulary or Vocabulary.from_class_names(list(masks))
        seg = series_seg(slices, masks, vocabulary=vocab,
                         sop_instance_uid=_uid(dataset_name, "seg", case_key, "volume"),
                         series_instance_uid=_uid(dataset_name, "series", case_key, "seg"))
        result.seg_uid = str(seg.SOPInstanceUID)
        result.seg_path = study_dir / f"SEG_{seg.SOPInstanceUID}.dcm"
        seg.save_as(result.seg_path)
        result.segment_numbers = {name: k for k, name in enumerate(masks, start=1)}
    return result
