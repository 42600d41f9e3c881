"""Volumes: a series (or an enhanced multi-frame image) as one volume with its geometry, a SEG over it as one
mask volume per segment on its grid, and volume studies written with real geometry.

Real data where the shared data has it (dcmqi's CT slices, SEGs and the NRRD label maps they were made
from; the MSD hippocampus NIfTI volumes, read with SimpleITK), small synthetic volumes elsewhere; the
written series and SEGs pass dciodvfy. Bad geometry and broken references are issue records, never
exceptions.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io.annotations import read_study
from dicom_io.annotations.seg_volume import read_seg_volumes
from dicom_io.dicomize_volume import encode_values, series_seg, volume_slices, write_volume_study
from dicom_io.geometry import Geometry
from dicom_io.vocabulary import Vocabulary
from dicom_io.volumes import read_series_volumes, series_volume
from tests.conftest import SHARED_DATA, have, requires_dciodvfy

SEGS = SHARED_DATA / "dicom" / "dcmqi_data" / "data" / "segmentations"
MADE = SHARED_DATA / "dicom" / "generated_here"
HIPPO = SHARED_DATA / "segmentation_3d" / "msd_hippocampus"
VOCAB = Vocabulary.from_class_names(["liver", "spleen"])


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not present (shared data)")


def _on(src: Geometry, array: np.ndarray, dst: Geometry) -> np.ndarray:
    """``array`` (on grid ``dst``) in the voxel order of grid ``src``; asserts that the two grids hold the same
    voxel centres (one is the other with axes permuted or reversed)."""
    m = np.linalg.solve(dst.affine, src.affine)  # src index -> dst index
    r, t = np.rint(m[:3, :3]), np.rint(m[:3, 3])
    assert np.allclose(m[:3, :3], r, atol=1e-4) and np.allclose(m[:3, 3], t, atol=1e-3), "voxel centres differ"
    assert sorted(np.abs(r).sum(axis=0).tolist()) == [1, 1, 1] and sorted(np.abs(r).sum(axis=1).tolist()) == [1, 1, 1]
    perm = [int(np.argmax(np.abs(r[:, a]))) for a in range(3)]
    out = np.transpose(array, perm)
    assert out.shape == src.shape
    for a in range(3):
        reverse = r[perm[a], a] < 0
        assert t[perm[a]] == (src.shape[a] - 1 if reverse else 0)
        if reverse:
            out = np.flip(out, a)
    return out


def _sitk_geometry_and_array(path: Path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return Geometry.from_simpleitk(img), sitk.GetArrayFromImage(img)


def _oblique() -> np.ndarray:
    """A direction 20 degrees off axial about x then 10 about z (columns: slice, row, column axes)."""
    a, b = np.radians(20), np.radians(10)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)


def _case(shape=(6, 12, 10), spacing=(2.5, 0.8, 0.7), direction=None, seed=0):
    """A small CT-like volume in HU and two masks (a box of liver, a ball of spleen missing from the last slice)."""
    rng = np.random.default_rng(seed)
    image = np.round(rng.normal(40, 200, shape)).clip(-1024, 3000)
    liver = np.zeros(shape, bool)
    liver[1:4, 2:7, 1:6] = True
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    spleen = ((zz - 2) ** 2 + (yy - 8) ** 2 + (xx - 7) ** 2 <= 5) & (zz < shape[0] - 1)
    geometry = Geometry.from_components(shape, spacing, (-50.0, 20.0, 100.0), direction, "1.2.3.4")
    return image, geometry, {"liver": liver, "spleen": spleen}


def _written(tmp_path: Path, modality: str = "CT", **kw):
    image, geometry, masks = _case(**kw)
    study = write_volume_study(image, geometry, masks, tmp_path / "out", dataset_name="t", case_key="case1",
                               modality=modality, vocabulary=VOCAB, body_part="ABDOMEN")
    return image, geometry, masks, study


def _only(a, label: str):
    found = [m for m in a.mask_volumes if m.label == label]
    assert len(found) == 1, [m.label for m in a.mask_volumes]
    return found[0]


def _volume_issues(a) -> list:
    """Issues but those of the frame-by-frame class-label reading (two classes in one slice is a normal mask)."""
    return [i for i in a.issues if i.code not in ("conflicting_labels", "no_label")]


# ---- series -> volume -----------------------------------------------------------------------------


def test_ct_series_reads_as_highdicom_reads_it():
    _need(SEGS / "ct-3slice")
    files = sorted((SEGS / "ct-3slice").glob("*.dcm"))
    (vol,), issues = read_series_volumes(SEGS / "ct-3slice")
    assert issues == []
    ref = hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
    assert np.allclose(vol.geometry.affine, ref.affine, atol=1e-4)
    assert np.array_equal(vol.array, ref.array)  # Hounsfield units: the modality LUT applied, no window
    assert vol.shape == (3, 512, 512) and vol.spacing == pytest.approx((1.0, 0.810547, 0.810547))
    assert vol.window == (40.0, 400.0) and vol.modality == "CT"
    # slices ordered along highdicom's slice axis; each slice names its source image
    for k, uid in enumerate(vol.slice_uids):
        ds = next(pydicom.dcmread(f, stop_before_pixels=True) for f in files
                  if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == uid)
        assert np.allclose(vol.geometry.index_to_patient([[k, 0, 0]])[0], [float(v) for v in ds.ImagePositionPatient])
    u = vol.unit()
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() <= 1


def test_enhanced_multiframe_image_is_the_volume_of_its_single_frame_series():
    _need(SEGS / "24x38x3")
    singles, i1 = read_series_volumes(SEGS / "24x38x3" / "image")
    multi, i2 = read_series_volumes(SEGS / "24x38x3" / "multiframe")
    assert i1 == i2 == []
    (a,), (b,) = singles, multi
    assert a.geometry.same_grid(b.geometry)
    assert np.array_equal(a.array, b.array)
    assert set(b.slice_uids) == {b.slice_uids[0]} and sorted(b.slice_frames) == [1, 2, 3]  # type: ignore[type-var]
    assert set(a.slice_frames) == {None}
    ref = hd.imread(str(SEGS / "24x38x3" / "multiframe" / "mf.dcm")).get_volume(dtype=np.float32)
    assert np.allclose(b.geometry.affine, ref.affine, atol=1e-4) and np.array_equal(b.array, ref.array)


def test_geometry_round_trips_through_simpleitk():
    _, geometry, _ = _case(direction=_oblique())
    arr = np.arange(np.prod(geometry.shape), dtype=np.float32).reshape(geometry.shape)
    img = geometry.to_simpleitk(arr)
    back = Geometry.from_simpleitk(img)
    assert np.allclose(back.affine, geometry.affine) and back.shape == geometry.shape
    import SimpleITK as sitk

    # SimpleITK's own index -> physical point agrees with the affine
    assert np.allclose(img.TransformIndexToPhysicalPoint((3, 5, 4)), geometry.index_to_patient([[4, 5, 3]])[0])
    assert np.array_equal(sitk.GetArrayFromImage(img), arr)


# ---- SEG over a series -> one mask volume per segment -------------------------------------------------------


@pytest.mark.parametrize("seg", ["generated_here/liver_dcmqi_made.dcm", "dcmqi:liver.dcm"])
def test_dcmqi_liver_seg_is_one_volume_matching_its_nrrd_voxel_for_voxel(seg):
    path = SEGS / "liver.dcm" if seg.startswith("dcmqi:") else SHARED_DATA / "dicom" / seg
    _need(SEGS / "ct-3slice", SEGS / "liver_seg.nrrd", path)
    a = read_study([SEGS / "ct-3slice", path], None, volumes=True)
    assert _volume_issues(a) == []
    m = _only(a, "Liver")
    assert m.segment_number == 1 and m.mask.shape == (3, 512, 512) and m.mask.dtype == bool
    assert m.geometry is a.volumes[m.provenance.series_uid].geometry
    g, truth = _sitk_geometry_and_array(SEGS / "liver_seg.nrrd")  # the label map the SEG was made from
    assert np.array_equal(_on(g, m.mask, m.geometry), truth > 0)
    assert m.voxels == int((truth > 0).sum())
    p = m.provenance
    assert p.annotation_uid == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert p.slice_uids == a.volumes[p.series_uid].slice_uids and all(len(f) == 1 for f in p.seg_frames)
    assert not p.resampled and p.segmentation_type == "BINARY"
    # the frame-by-frame reading is there as without volumes
    plain = read_study([SEGS / "ct-3slice", path], None)
    assert [s.provenance.image_uid for s in a.samples] == [s.provenance.image_uid for s in plain.samples]
    assert plain.mask_volumes == [] and plain.volumes == {}


@pytest.mark.parametrize(("seg", "nrrd"), [("24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd"),
                                           ("sparse-labelmap-ppv5.dcm", "sparse_labelmap_ppv5_seg.nrrd")])
def test_dcmqi_binary_and_sparse_label_map_segs_match_their_nrrd(seg, nrrd):
    _need(SEGS / seg, SEGS / nrrd)
    a = read_study([SEGS / "24x38x3" / "image", SEGS / seg], None, volumes=True)
    assert _volume_issues(a) == []
    m = _only(a, "Liver")  # the label map's segment 0 ("Background") is not a segment to audit
    g, truth = _sitk_geometry_and_array(SEGS / nrrd)
    assert np.array_equal(_on(g, m.mask, m.geometry), truth == 1)
    assert sum(1 for f in m.provenance.seg_frames if f) == (2 if "sparse" in seg else 1)  # empty slices omitted


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_hippocampus_written_as_a_series_with_a_seg_reads_back_voxel_for_voxel(tmp_path, modality):
    image_path = HIPPO / "imagesTr" / "hippocampus_001.nii.gz"
    label_path = HIPPO / "labelsTr" / "hippocampus_001.nii.gz"
    _need(image_path, label_path)
    g, image = _sitk_geometry_and_array(image_path)
    _, labels = _sitk_geometry_and_array(label_path)
    masks = {"Anterior": labels == 1, "Posterior": labels == 2}
    study = write_volume_study(image, g, masks, tmp_path, dataset_name="msd", case_key="hippocampus_001",
                               modality=modality, body_part="BRAIN")
    assert len(study.image_paths) == image.shape[0] and study.segment_numbers == {"Anterior": 1, "Posterior": 2}
    a = read_study(tmp_path, None, volumes=True)
    assert _volume_issues(a) == []
    vol = a.volumes[study.series_uid]
    assert vol.shape == g.shape and vol.spacing == pytest.approx(g.spacing) and vol.modality == modality
    assert vol.frame_of_reference_uid == study.frame_of_reference_uid
    assert np.array_equal(_on(g, vol.array, vol.geometry), image.astype(np.float32))
    # the direction is kept: the same voxel centres; this NIfTI's axes are left-handed, so the reader
    # (right-handed, as highdicom) runs the slices the other way
    assert np.allclose(np.abs(vol.geometry.direction), np.abs(g.direction))
    assert np.allclose(vol.geometry.direction[:, 1:], g.direction[:, 1:])
    for name, n in study.segment_numbers.items():
        m = _only(a, name)
        assert m.segment_number == n and m.provenance.series_uid == study.series_uid
        assert np.array_equal(_on(g, m.mask, m.geometry), masks[name])


def test_oblique_anisotropic_ct_keeps_its_geometry_and_values(tmp_path):
    image, geometry, masks = _case(direction=_oblique(), spacing=(3.0, 0.8, 0.7))
    image = image + 0.25  # not integers: stored 16-bit with Rescale Slope/Intercept
    study = write_volume_study(image, geometry, masks, tmp_path, dataset_name="t", case_key="oblique",
                               vocabulary=VOCAB)
    a = read_study(tmp_path, VOCAB, volumes=True)
    assert _volume_issues(a) == []
    vol = a.volumes[study.series_uid]
    slope = float(pydicom.dcmread(study.image_paths[0], stop_before_pixels=True).RescaleSlope)
    assert np.abs(_on(geometry, vol.array, vol.geometry) - image).max() <= slope / 2 + 1e-3
    for name in masks:
        assert np.array_equal(_on(geometry, _only(a, name).mask, vol.geometry), masks[name])


def test_encoded_values_are_exact_for_integers():
    for arr, dtype in ((np.array([[[-1024, 0, 3071]]]), np.int16), (np.array([[[0, 255, 4095]]]), np.uint16)):
        stored, slope, intercept = encode_values(arr, "CT")
        assert stored.dtype == dtype and (slope, intercept) == (1.0, 0.0) and np.array_equal(stored, arr)


def _seg_frames_permuted(seg: pydicom.Dataset, order: list[int]) -> pydicom.Dataset:
    out = copy.deepcopy(seg)
    frames = seg.pixel_array if int(seg.NumberOfFrames) > 1 else seg.pixel_array[None]
    out.PerFrameFunctionalGroupsSequence = [copy.deepcopy(seg.PerFrameFunctionalGroupsSequence[i]) for i in order]
    out.PixelData = pydicom.pixels.pack_bits(frames[order])
    return out


def test_seg_frames_in_any_order_give_the_same_masks(tmp_path):
    image, geometry, masks, study = _written(tmp_path)
    seg = pydicom.dcmread(study.seg_path)
    n = int(seg.NumberOfFrames)
    order = list(np.random.default_rng(3).permutation(n))
    assert order != list(range(n))
    _seg_frames_permuted(seg, order).save_as(study.seg_path)
    a = read_study(tmp_path / "out", VOCAB, volumes=True)
    assert _volume_issues(a) == []
    for name in masks:
        m = _only(a, name)
        assert np.array_equal(_on(geometry, m.mask, m.geometry), masks[name])


def _hd_seg(slices, masks, seg_type="BINARY", **kw) -> hd.seg.Segmentation:
    descs = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
        segmented_property_type=VOCAB.code_for(name).to_highdicom(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for k, name in enumerate(masks, start=1)]
    if seg_type == "LABELMAP":
        pixels = np.zeros(next(iter(masks.values())).shape, np.uint8)
        for k, name in enumerate(masks, start=1):
            pixels[masks[name]] = k
    else:
        pixels = np.stack([np.asarray(m) for m in masks.values()], -1)
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=pixels, segmentation_type=seg_type, segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1", **kw)


@pytest.mark.parametrize("kind", ["dense", "fractional", "labelmap"])
def test_dense_fractional_and_label_map_segs_give_the_sparse_segs_masks(tmp_path, kind):
    image, geometry, masks = _case()
    slices = volume_slices(image, geometry, dataset_name="t", case_key="k")
    if kind == "dense":
        seg = _hd_seg(slices, masks, omit_empty_frames=False)
        assert int(seg.NumberOfFrames) == 2 * image.shape[0]
    elif kind == "fractional":
        # occupancy 0.75 inside, 0.25 on a one-voxel rim outside: only the inside reaches min_fraction 0.5
        frac = {}
        for name, m in masks.items():
            rim = np.zeros_like(m)
            rim[:, 1:, :] |= m[:, :-1, :]
            frac[name] = np.where(m, 0.75, np.where(rim, 0.25, 0.0)).astype(np.float32)
        seg = _hd_seg(slices, frac, "FRACTIONAL", max_fractional_value=200)
    else:
        seg = _hd_seg(slices, masks, "LABELMAP")
    folder = tmp_path / kind
    folder.mkdir()
    for ds in slices:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    seg.save_as(folder / "seg.dcm")
    a = read_study(folder, VOCAB, volumes=True)
    assert _volume_issues(a) == []
    for name in masks:
        m = _only(a, name)
        assert m.provenance.segmentation_type == {"dense": "BINARY", "fractional": "FRACTIONAL",
                                                  "labelmap": "LABELMAP"}[kind]
        assert np.array_equal(_on(geometry, m.mask, m.geometry), masks[name])


def test_seg_on_a_coarser_grid_is_resampled_onto_the_series(tmp_path):
    # the series at 0.5 mm in plane; the SEG at 1 mm (its voxel covers 2 x 2 series voxels), same slices
    image, geometry, masks = _case(shape=(4, 16, 12), spacing=(2.0, 0.5, 0.5))
    slices = volume_slices(image, geometry, dataset_name="t", case_key="fine")
    coarse = {name: m[:, ::2, ::2] for name, m in masks.items()}
    d = geometry.direction
    positions = [hd.PlanePositionSequence("PATIENT", geometry.index_to_patient([[k, 0.5, 0.5]])[0].tolist())
                 for k in range(4)]
    seg = _hd_seg(slices, coarse, plane_positions=positions,
                  plane_orientation=hd.PlaneOrientationSequence("PATIENT", [*d[:, 2], *d[:, 1]]),
                  pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=[1.0, 1.0], slice_thickness=2.0))
    for ds in slices:
        ds.save_as(tmp_path / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    seg.save_as(tmp_path / "seg.dcm")
    a = read_study(tmp_path, VOCAB, volumes=True)
    assert _volume_issues(a) == []
    for name in masks:
        m = _only(a, name)
        assert m.provenance.resampled and m.mask.shape == geometry.shape
        want = np.repeat(np.repeat(coarse[name], 2, 1), 2, 2)  # each SEG voxel covers 2 x 2 series voxels
        assert np.array_equal(_on(geometry, m.mask, m.geometry), want)
    # frames that form no regular grid cannot be resampled: an issue, no mask volumes
    odd = pydicom.dcmread(tmp_path / "seg.dcm")
    pp = odd.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    pp.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(pp.ImagePositionPatient, float) - 0.7 * d[:, 0]]
    odd.save_as(tmp_path / "seg.dcm")
    a = read_study(tmp_path, VOCAB, volumes=True)
    assert a.mask_volumes == []
    assert [i.code for i in _volume_issues(a) if "cannot be resampled" in i.message] == ["malformed_annotation"]


def test_seg_referencing_images_not_in_the_study_is_an_issue_not_a_mask(tmp_path):
    _, _, masks, study = _written(tmp_path)
    seg = pydicom.dcmread(study.seg_path)
    spleen_frames = [fg for fg in seg.PerFrameFunctionalGroupsSequence
                     if int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == 2]
    spleen_frames[0].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.999"
    seg.save_as(study.seg_path)
    a = read_study(tmp_path / "out", VOCAB, volumes=True)
    assert [m.label for m in a.mask_volumes] == ["liver"]  # a partial spleen would look like an annotation error
    (issue,) = [i for i in a.issues if i.code == "missing_reference" and "segment 2" in i.message]
    assert "not in the study" in issue.message and issue.image_uid == "1.2.3.999"
    assert issue.annotation_uid == study.seg_uid


def test_seg_over_a_series_not_in_the_study_is_an_issue(tmp_path):
    _, _, _, study = _written(tmp_path)
    for p in study.image_paths[1:]:
        p.unlink()
    study.image_paths[0].rename(tmp_path / "elsewhere.dcm")
    a = read_study(tmp_path / "out", VOCAB, volumes=True)
    assert a.mask_volumes == [] and "missing_reference" in {i.code for i in a.issues}
    assert any("which is not in the study" in i.message for i in a.issues)


def _edit(paths: list[Path], k: int, **values) -> None:
    ds = pydicom.dcmread(paths[k])
    for name, v in values.items():
        setattr(ds, name, v)
    ds.save_as(paths[k])


def _position(paths: list[Path], k: int) -> list[float]:
    return [float(v) for v in pydicom.dcmread(paths[k], stop_before_pixels=True).ImagePositionPatient]


@pytest.mark.parametrize(("fault", "code"), [
    ("missing_slice", "missing_slice"),
    ("tilted_slice", "inconsistent_geometry"),
    ("mixed_spacing", "irregular_spacing"),
    ("duplicate_position", "duplicate_position"),
    ("shifted_in_plane", "inconsistent_geometry"),
    ("other_pixel_spacing", "inconsistent_geometry"),
])
def test_malformed_series_geometry_gives_an_issue_record_and_no_volume(tmp_path, fault, code):
    image, geometry, _, study = _written(tmp_path)
    paths = study.image_paths  # slice order
    step = geometry.affine[:3, 0]
    if fault == "missing_slice":
        paths[3].unlink()
    elif fault == "tilted_slice":
        _edit(paths, 2, ImageOrientationPatient=[1, 0, 0, 0, 0.9848, 0.1736])
    elif fault == "mixed_spacing":
        for k in range(3, len(paths)):
            _edit(paths, k, ImagePositionPatient=(np.asarray(_position(paths, k)) + 0.4 * step).tolist())
    elif fault == "duplicate_position":
        _edit(paths, 4, ImagePositionPatient=_position(paths, 3))
    elif fault == "shifted_in_plane":
        _edit(paths, 2, ImagePositionPatient=(np.asarray(_position(paths, 2)) + [3.0, 0, 0]).tolist())
    else:
        _edit(paths, 1, PixelSpacing=[0.9, 0.7])
    a = read_study(tmp_path / "out", VOCAB, volumes=True)
    assert a.mask_volumes == [] and a.volumes == {}
    (issue,) = [i for i in a.issues if i.code == code]
    assert issue.annotation_uid == study.seg_uid and study.series_uid in issue.message
    assert a.samples  # the frame-by-frame reading goes on
    vol, issues = series_volume([pydicom.dcmread(p, stop_before_pixels=True) for p in paths if p.exists()])
    assert vol is None and [i.code for i in issues] == [code]


def test_single_slice_and_2d_images_are_no_volume(tmp_path):
    _, _, _, study = _written(tmp_path, shape=(1, 12, 10))
    vol, issues = series_volume([pydicom.dcmread(study.image_paths[0])])
    assert vol is None and [i.code for i in issues] == ["single_slice"]
    a = read_study(tmp_path / "out", VOCAB, volumes=True)
    assert a.mask_volumes == [] and not {"single_slice", "no_plane_geometry"} & {i.code for i in a.issues}
    ds = pydicom.dcmread(study.image_paths[0])
    del ds.ImagePositionPatient
    vol, issues = series_volume([ds])
    assert vol is None and [i.code for i in issues] == ["no_plane_geometry"]


def test_seg_pixels_beyond_the_series_are_dropped_with_an_issue(tmp_path):
    _, geometry, masks, study = _written(tmp_path)
    vol, _ = series_volume([pydicom.dcmread(p) for p in study.image_paths])
    assert vol is not None
    seg = pydicom.dcmread(study.seg_path)
    step = geometry.affine[:3, 0]
    for fg in seg.PerFrameFunctionalGroupsSequence:  # one slice further on: the last slice's pixels fall off
        pp = fg.PlanePositionSequence[0]
        pp.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(pp.ImagePositionPatient, float) + step]
        del fg.DerivationImageSequence
    got, issues = read_seg_volumes(seg, vol, VOCAB)
    liver = next(m for m in got if m.label == "liver")
    want = np.zeros_like(masks["liver"])
    want[1:] = masks["liver"][:-1]
    assert np.array_equal(_on(geometry, liver.mask, liver.geometry), want)
    spleen = next(m for m in got if m.label == "spleen")  # the spleen is not on the last slice: nothing lost
    assert [i.code for i in issues] == [] or all("segment 2" not in i.message for i in issues)
    assert spleen.voxels == int(masks["spleen"].sum())
    assert [i.code for i in issues if "segment 1" in i.message] == (["malformed_annotation"]
                                                                     if masks["liver"][-1].any() else [])


def test_one_segment_at_a_time(tmp_path):
    _, geometry, masks, study = _written(tmp_path)
    vol, _ = series_volume([pydicom.dcmread(p) for p in study.image_paths])
    assert vol is not None
    got, issues = read_seg_volumes(study.seg_path, vol, VOCAB, segment_numbers=[2])
    assert issues == [] and [m.label for m in got] == ["spleen"]
    assert np.array_equal(_on(geometry, got[0].mask, got[0].geometry), masks["spleen"])


# ---- written studies -------------------------------------------------------------------------------


@requires_dciodvfy
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_series_and_seg_pass_dciodvfy_and_are_deterministic(tmp_path, modality):
    _written(tmp_path / "a", modality, direction=_oblique())
    *_, study = _written(tmp_path / "b", modality, direction=_oblique())
    files_a = sorted((tmp_path / "a").rglob("*.dcm"))
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in sorted((tmp_path / "b").rglob("*.dcm"))]
    assert study.seg_path is not None
    for f in (study.image_paths[0], study.image_paths[-1], study.seg_path):
        r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{modality} {f.name}: {errors}"
    ds = pydicom.dcmread(study.image_paths[1], stop_before_pixels=True)
    assert ds.Modality == modality and ds.FrameOfReferenceUID == study.frame_of_reference_uid
    assert float(ds.SpacingBetweenSlices) == float(ds.SliceThickness) == 2.5
    seg = hd.seg.segread(study.seg_path)
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 2
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid


def test_series_seg_rejects_masks_off_the_grid(tmp_path):
    from dicom_io.dicomize import DicomizeError

    image, geometry, masks = _case()
    slices = volume_slices(image, geometry, dataset_name="t", case_key="k")
    with pytest.raises(DicomizeError, match="not on the series' grid"):
        series_seg(slices, {"liver": masks["liver"][:, :-1]}, vocabulary=VOCAB, sop_instance_uid="1.2.3",
                   series_instance_uid="1.2.4")


def test_inspect_json_lists_one_entry_per_segment(tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    _, geometry, masks, _ = _written(tmp_path)
    r = CliRunner().invoke(app, ["inspect", str(tmp_path / "out"), "--json", "--no-pixels"])
    assert r.exit_code == 0, r.output
    (study,) = json.loads(r.output)["studies"]
    entries = {e["label"]: e for e in study["mask_volumes"]}
    assert set(entries) == set(masks)
    for n, name in enumerate(masks, start=1):
        e = entries[name]
        assert e["segment_number"] == n and e["dims"] == 3 and e["shape"] == list(geometry.shape)
        assert e["voxels"] == int(masks[name].sum()) and e["spacing_mm"] == pytest.approx(list(geometry.spacing))
    text = CliRunner().invoke(app, ["inspect", str(tmp_path / "out"), "--no-pixels"])
    assert text.exit_code == 0 and "volume 6 x 12 x 10" in text.output


def _enhanced(slices: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The slices converted to one Legacy Converted Enhanced CT image (highdicom), frames in reverse order."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    return LegacyConvertedEnhancedCTImage(list(reversed(slices)), series_instance_uid=hd.UID(), series_number=5,
                                          sop_instance_uid=hd.UID(), instance_number=1)


def test_seg_over_an_enhanced_multiframe_image_is_one_volume_per_segment(tmp_path):
    image, geometry, masks = _case(direction=_oblique())
    mf = _enhanced(volume_slices(image, geometry, dataset_name="t", case_key="mf"))
    vol, issues = series_volume([mf])
    assert issues == [] and vol is not None
    assert np.array_equal(_on(geometry, vol.array, vol.geometry), image)
    assert set(vol.slice_uids) == {str(mf.SOPInstanceUID)} and sorted(vol.slice_frames) == list(range(1, 7))
    # a SEG over the multi-frame image: its pixel array runs over the image's own frames
    frames = {}
    for name, m in masks.items():
        on_vol = _on(vol.geometry, m, geometry)
        frames[name] = np.zeros_like(on_vol)
        for k, f in enumerate(vol.slice_frames):
            frames[name][int(f) - 1] = on_vol[k]  # type: ignore[arg-type]
    seg = _hd_seg([mf], frames)
    mf.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    seg.save_as(tmp_path / "seg.dcm")
    a = read_study(tmp_path, VOCAB, volumes=True)
    assert _volume_issues(a) == []
    for name in masks:
        m = _only(a, name)
        assert m.provenance.slice_frames == vol.slice_frames
        assert np.array_equal(_on(geometry, m.mask, m.geometry), masks[name])


@pytest.mark.parametrize("source", ["series", "enhanced"])
def test_suggestion_seg_over_a_series_opens_as_a_volume_and_reads_back(tmp_path, source):
    from dicom_io.results.records import AlgorithmInfo
    from dicom_io.results.seg_out import read_suggestion
    from dicom_io.results.seg_volume_out import suggestion_seg_volume

    image, geometry, masks = _case()
    slices = volume_slices(image, geometry, dataset_name="t", case_key="sugg", body_part="ABDOMEN")
    sources = [_enhanced(slices)] if source == "enhanced" else slices
    vol, _ = series_volume(sources)
    assert vol is not None
    shifted = np.zeros_like(masks["liver"])
    shifted[:, :, 1:] = masks["liver"][:, :, :-1]  # the "consensus": the liver one column over
    suggested = {"liver": _on(vol.geometry, shifted, geometry)}
    algorithm = AlgorithmInfo("labelqa-test", "1", "sha256:abc")
    seg = suggestion_seg_volume(sources, vol.slice_uids, vol.slice_frames, suggested, algorithm=algorithm,
                                run_key="run")
    again = suggestion_seg_volume(sources, vol.slice_uids, vol.slice_frames, suggested, algorithm=algorithm,
                                  run_key="run")
    assert seg.SOPInstanceUID == again.SOPInstanceUID and seg.SeriesNumber == 9905
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid
    # it opens as a volume with highdicom, whose voxels are the series' voxels (sparse: fewer slices)
    hv = hd.seg.Segmentation.from_dataset(seg).get_volume()
    to_series = np.linalg.solve(vol.geometry.affine, hv.affine)
    assert np.allclose(to_series[:3, :3], np.eye(3), atol=1e-4)
    assert np.allclose(to_series[:3, 3], np.rint(to_series[:3, 3]), atol=1e-3)
    got, issues = read_seg_volumes(seg, vol, None)
    assert issues == [] and [m.label for m in got] == ["SUGGESTION liver"]
    assert np.array_equal(got[0].mask, suggested["liver"])
    k = 2  # the frame-by-frame reader of suggestions reads it too
    assert np.array_equal(read_suggestion(seg, "liver", vol.slice_uids[k], vol.slice_frames[k]), suggested["liver"][k])
    with pytest.raises(ValueError, match="not on the series' grid"):
        suggestion_seg_volume(sources, vol.slice_uids, vol.slice_frames, {"liver": suggested["liver"][1:]},
                              algorithm=algorithm, run_key="run")
    if have("dciodvfy"):
        p = tmp_path / "seg.dcm"
        seg.save_as(p)
        r = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, timeout=60)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []
