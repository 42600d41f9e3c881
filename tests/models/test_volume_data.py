"""Volumes in: NIfTI / NRRD / MHA with their geometry, the MSD / nnU-Net layout, images/ + masks/, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from models.data import DatasetError
from models.volume.data import Geometry, is_volume_dataset, load_volume_dataset, read_labels_map, read_volume
from models.volume.preprocess import grid_shape, labels_to_model_grid, model_spacing, normalise_intensity
from models.volume.probs import CaseProbs, SparseBuilder, load_case_probs, merge_members, save_case_probs
from models.volume.synthetic import make_volume_set, write_volume_set

HIPPO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "segmentation_3d" / "msd_hippocampus"

# a rotation about z by 30 degrees (columns: the x, y, z index axes in patient coordinates)
C, S = np.cos(np.pi / 6), np.sin(np.pi / 6)
ROTATED = (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0)


def _write(path: Path, arr: np.ndarray, spacing_xyz=(0.7, 0.8, 3.0), origin=(-12.5, 40.0, 7.25),
           direction=ROTATED) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    if arr.ndim == 3:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_reading_keeps_anisotropic_spacing_origin_and_direction(tmp_path, suffix):
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    p = _write(tmp_path / f"v{suffix}", arr)
    got, geo = read_volume(p)
    np.testing.assert_array_equal(got, arr)  # (slices, rows, columns)
    assert geo.spacing == pytest.approx((3.0, 0.8, 0.7))  # (z, y, x)
    assert geo.origin == pytest.approx((-12.5, 40.0, 7.25))
    assert geo.direction == pytest.approx(ROTATED, abs=1e-6)
    ref = sitk.ReadImage(str(p))
    for zyx in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        want = ref.TransformIndexToPhysicalPoint((zyx[2], zyx[1], zyx[0]))
        assert geo.index_to_patient(zyx) == pytest.approx(want, abs=1e-4)


def test_one_slice_volumes_and_2d_files_read_as_one_slice(tmp_path):
    one, geo = read_volume(_write(tmp_path / "one.nii.gz", np.ones((1, 4, 3), np.uint8)))
    assert one.shape == (1, 4, 3) and geo.spacing == pytest.approx((3.0, 0.8, 0.7))
    img = sitk.GetImageFromArray(np.ones((4, 3), np.uint8))
    img.SetSpacing((0.5, 0.25))
    sitk.WriteImage(img, str(tmp_path / "flat.nii.gz"))
    flat, fgeo = read_volume(tmp_path / "flat.nii.gz")
    assert flat.shape == (1, 4, 3) and fgeo.spacing == pytest.approx((1.0, 0.25, 0.5))
    assert fgeo.index_to_patient((0, 3, 2)) == pytest.approx((1.0, 0.75, 0.0))


def test_msd_layout_with_nnunet_channel_suffix_and_labels_map(tmp_path):
    data = make_volume_set(3, (6, 8, 8), seed=1, spacing=(2.5, 0.9, 0.9), origin=(1.0, 2.0, 3.0), direction=ROTATED)
    data.label_values = [1, 3]  # value 3 in the files is the second class
    write_volume_set(data, tmp_path / "set")
    (tmp_path / "set" / "imagesTr" / "case_000_0001.nii.gz").write_bytes(
        (tmp_path / "set" / "imagesTr" / "case_000_0000.nii.gz").read_bytes())  # a second channel: not read
    assert is_volume_dataset(tmp_path / "set")
    got = load_volume_dataset(tmp_path / "set")
    assert got.layout == "msd" and got.class_names == ["ball", "slab"] and got.label_values == [1, 3]
    assert got.stems == ["case_000", "case_001", "case_002"] and got.notes
    for a, b in zip(got.cases, data.cases, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)  # file value 3 -> class index 2
        np.testing.assert_allclose(a.image, b.image)
        assert a.geometry.spacing == pytest.approx((2.5, 0.9, 0.9))
        assert a.geometry.direction == pytest.approx(ROTATED, abs=1e-6)


def test_images_masks_layout_and_msd_labels_forms(tmp_path):
    data = make_volume_set(2, (4, 8, 8), seed=2)
    write_volume_set(data, tmp_path / "im", layout="images_masks")
    got = load_volume_dataset(tmp_path / "im")
    assert got.layout == "images_masks" and got.class_names == ["ball", "slab"]
    np.testing.assert_array_equal(got.cases[1].labels, data.cases[1].labels)
    msd = {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert read_labels_map(msd) == (["Anterior", "Posterior"], [1, 2])
    assert read_labels_map({"background": 0, "liver": 1, "tumour": 2}) == (["liver", "tumour"], [1, 2])
    with pytest.raises(DatasetError, match="region"):
        read_labels_map({"background": 0, "whole": [1, 2]})


def _pair(tmp_path: Path, lab: np.ndarray, **kw) -> Path:
    root = tmp_path / "bad"
    _write(root / "imagesTr" / "a.nii.gz", np.zeros((4, 5, 6), np.float32))
    _write(root / "labelsTr" / "a.nii.gz", lab, **kw)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))
    return root


def test_bad_input_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="differ in shape"):
        load_volume_dataset(_pair(tmp_path / "1", np.zeros((4, 5, 7), np.uint8)))
    with pytest.raises(DatasetError, match="grids differ"):
        load_volume_dataset(_pair(tmp_path / "2", np.zeros((4, 5, 6), np.uint8), origin=(0.0, 0.0, 0.0)))
    with pytest.raises(DatasetError, match=r"label values \[2\]"):
        load_volume_dataset(_pair(tmp_path / "3", np.full((4, 5, 6), 2, np.uint8)))
    with pytest.raises(DatasetError, match="non-integer"):
        load_volume_dataset(_pair(tmp_path / "4", np.full((4, 5, 6), 0.5, np.float32)))
    root = _pair(tmp_path / "5", np.zeros((4, 5, 6), np.uint8))
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="dataset.json"):
        load_volume_dataset(root)
    root = _pair(tmp_path / "6", np.zeros((4, 5, 6), np.uint8))
    _write(root / "imagesTr" / "b.nii.gz", np.zeros((4, 5, 6), np.float32))
    with pytest.raises(DatasetError, match="without a label"):
        load_volume_dataset(root)
    (tmp_path / "7" / "imagesTr").mkdir(parents=True)
    (tmp_path / "7" / "imagesTr" / "x.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DatasetError):
        read_volume(tmp_path / "7" / "imagesTr" / "x.nii.gz")
    with pytest.raises(DatasetError, match="not found"):
        load_volume_dataset(tmp_path / "nowhere")


@pytest.mark.skipif(not HIPPO.is_dir(), reason="the shared data set is not here")
def test_the_real_msd_hippocampus_set_reads_with_its_geometry():
    data = load_volume_dataset(HIPPO, max_cases=5)
    assert data.layout == "msd" and data.class_names == ["Anterior", "Posterior"] and data.label_values == [1, 2]
    for c in data.cases:
        ref = sitk.ReadImage(str(HIPPO / "imagesTr" / f"{c.stem}.nii.gz"))
        assert c.shape == tuple(reversed(ref.GetSize()))
        assert c.geometry.spacing == pytest.approx(tuple(reversed(ref.GetSpacing())))
        assert c.geometry.direction == pytest.approx(ref.GetDirection())
        assert set(np.unique(c.labels)) <= {0, 1, 2} and (c.labels > 0).any()


def test_model_grid_and_intensities():
    assert model_spacing([(3.0, 0.7, 0.7), (5.0, 0.8, 0.8), (3.0, 0.9, 0.9)]) == (3.0, 0.8, 0.8)
    assert grid_shape((10, 100, 80), (3.0, 0.5, 0.5), (1.5, 1.0, 1.0)) == (20, 50, 40)
    assert grid_shape((10, 100, 80), (3.0, 0.5, 0.5), None) == (10, 100, 80)
    a = normalise_intensity(np.linspace(-1000, 3000, 1000).reshape(10, 10, 10))
    assert a.dtype == np.float32 and a.min() == 0.0 and a.max() == 1.0
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[1:3, 2:6, 2:6] = 2
    ch = labels_to_model_grid(lab, 2, (8, 8, 8))
    assert ch.shape == (2, 8, 8, 8) and not ch[0].any() and ch[1].sum() == 2 * 2 * 4 * 4


def test_case_probs_are_stored_per_segment_in_boxes_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    p = np.zeros((3, 2, 12, 16, 16), np.float32)
    p[:, 0, 2:5, 3:9, 4:7] = rng.uniform(0.3, 1.0, (3, 3, 6, 3))
    p[1, 1, 8:11, 10:14, 1:3] = 0.9
    cp = CaseProbs.from_dense(p)
    assert cp.boxes == [(2, 3, 4, 5, 9, 7), (8, 10, 1, 11, 14, 3)]
    assert cp.nbytes == 3 * (3 * 6 * 3 + 3 * 4 * 2)  # uint8, only the boxes
    np.testing.assert_allclose(cp.dense(0), p[:, 0], atol=0.5 / 255)
    # slab by slab, one member at a time, gives the same storage
    parts = []
    for j in range(3):
        b = SparseBuilder((12, 16, 16), 2)
        for z in range(0, 12, 5):
            b.add(z, p[j, :, z:z + 5])
        parts.append(b.build())
    merged = merge_members(parts)
    for c in range(2):
        np.testing.assert_array_equal(merged.dense(c), cp.dense(c))
    save_case_probs(tmp_path / "p.npz", [cp, merged], extra=np.arange(3))
    back, extra = load_case_probs(tmp_path / "p.npz")
    np.testing.assert_array_equal(back[1].dense(1), cp.dense(1))
    np.testing.assert_array_equal(extra["extra"], np.arange(3))


def test_probabilities_on_a_coarser_model_grid_come_back_to_the_native_grid():
    # a linear ramp along the rows survives linear resampling exactly (away from the clamped edges)
    model = np.broadcast_to(np.linspace(0.1, 0.9, 10, dtype=np.float32)[None, :, None], (1, 10, 10)).copy()
    cp = CaseProbs.from_dense(model[None, None], native_shape=(2, 20, 20))
    native = cp.crop(0, (0, 0, 0, 2, 20, 20))[0]
    centres = (np.arange(20) + 0.5) / 2 - 0.5  # model coordinates of native voxel centres
    want = np.interp(centres, np.arange(10), np.linspace(0.1, 0.9, 10))
    np.testing.assert_allclose(native[0, :, 5], want, atol=1.0 / 255)
    box = cp.crop(0, (1, 4, 6, 2, 9, 8))
    np.testing.assert_allclose(box, cp.crop(0, (0, 0, 0, 2, 20, 20))[:, 1:2, 4:9, 6:8])


def test_geometry_round_trips_as_a_dict():
    g = Geometry((2.0, 0.5, 0.5), (1.0, 2.0, 3.0), ROTATED)
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(DatasetError):
        Geometry((0.0, 1.0, 1.0))
