"""Pixels of real pydicom test files: LUTs, VOI, MONOCHROME1, colour, multi-frame, compressed, resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.pixels import PixelError, frame_to_float, load_frame, n_frames, pixel_spacing, resample

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _data_store() -> Path | None:
    try:
        import data_store  # pydicom-data

        return Path(data_store.__file__).parent / "data"
    except ImportError:
        return None


def _file(name: str) -> Path:
    for d in (TEST_FILES, _data_store()):
        if d is not None and (d / name).is_file():
            return d / name
    pytest.skip(f"{name} not installed (pydicom test data / pydicom-data)")


def _check(a: np.ndarray, shape):
    assert a.dtype == np.float32 and a.shape == shape
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0


def test_ct_modality_lut_then_minmax_without_window():
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    assert "WindowCenter" not in ds
    a = frame_to_float(ds)
    _check(a, (128, 128))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(a, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-5)
    assert pixel_spacing(ds) == pytest.approx((0.661468, 0.661468))
    assert float(a.mean()) == pytest.approx(0.3766, abs=1e-3)


def test_mr_window_linear_formula():
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    a = frame_to_float(ds)
    _check(a, (64, 64))
    np.testing.assert_allclose(a, expected, atol=1e-5)


def test_cr_monochrome1_is_inverted_after_window():
    ds = pydicom.dcmread(_file("RG3_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    c, w = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter), None
    w = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    expected = 1.0 - np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    a = frame_to_float(ds)
    _check(a, ds.pixel_array.shape)
    np.testing.assert_allclose(a, expected, atol=1e-5)


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # JPEG 2000 lossless, CR
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("emri_small_RLE.dcm", "emri_small.dcm"),  # RLE, multi-frame
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),  # RLE colour
    ],
)
def test_compressed_equals_uncompressed(compressed, reference):
    a_ds, b_ds = pydicom.dcmread(_file(compressed)), pydicom.dcmread(_file(reference))
    for f in range(1, min(n_frames(a_ds), 3) + 1):
        frame = f if n_frames(a_ds) > 1 else None
        np.testing.assert_allclose(frame_to_float(a_ds, frame), frame_to_float(b_ds, frame), atol=1e-5)


def test_jpeg2000_lossy_close_to_uncompressed():
    a = frame_to_float(pydicom.dcmread(_file("RG1_J2KI.dcm")))
    b = frame_to_float(pydicom.dcmread(_file("RG1_UNCI.dcm")))
    assert float(np.abs(a - b).mean()) < 0.01


def test_colour_rgb_and_ybr_become_the_same_grey():
    rgb = pydicom.dcmread(_file("US1_UNCR.dcm"))
    ybr_j2k = pydicom.dcmread(_file("US1_J2KR.dcm"))  # YBR_RCT in JPEG 2000
    a, b = frame_to_float(rgb), frame_to_float(ybr_j2k)
    _check(a, (480, 640))
    np.testing.assert_allclose(a, b, atol=1e-5)
    raw = rgb.pixel_array.astype(np.float64)
    np.testing.assert_allclose(a, (raw @ [0.299, 0.587, 0.114]) / 255.0, atol=1e-4)
    sc_ybr = frame_to_float(pydicom.dcmread(_file("SC_ybr_full_uncompressed.dcm")))
    sc_rgb = frame_to_float(pydicom.dcmread(_file("SC_rgb.dcm")))
    assert float(np.abs(sc_ybr - sc_rgb).max()) < 0.02  # YBR_FULL rounding only


def test_jpeg_baseline_ybr_multiframe_and_palette():
    ds = pydicom.dcmread(_file("color3d_jpeg_baseline.dcm"))
    assert n_frames(ds) == 120
    a = frame_to_float(ds, 60)
    _check(a, (480, 640))
    assert not np.array_equal(a, frame_to_float(ds, 1)) or a.std() == 0
    pal = frame_to_float(pydicom.dcmread(_file("OBXXXX1A.dcm")))
    _check(pal, (600, 800))
    assert 0.01 < float(pal.mean()) < 0.5


def test_multiframe_rtdose_frames_differ_and_bad_frame_is_a_pixel_error():
    ds = pydicom.dcmread(_file("rtdose.dcm"))
    frames = [frame_to_float(ds, f) for f in (1, 8, 15)]
    for f in frames:
        _check(f, (10, 10))
    with pytest.raises(PixelError, match="frame 16 does not exist"):
        frame_to_float(ds, 16)


def test_undecodable_pixels_raise_pixel_error():
    ds = pydicom.dcmread(_file("JPEG-lossy.dcm"))  # 12-bit JPEG extended: no decoder here
    with pytest.raises(PixelError, match="cannot decode"):
        frame_to_float(ds)
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    del ds.PixelData
    with pytest.raises(PixelError, match="no pixel data"):
        frame_to_float(ds)


def test_resample_keeps_range_extent_and_reports_spacing():
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    a, spacing = load_frame(ds, None, 64)
    _check(a, (64, 64))
    assert spacing == pytest.approx((0.661468 * 2, 0.661468 * 2))
    full = frame_to_float(ds)
    assert float(a.mean()) == pytest.approx(float(full.mean()), abs=0.02)
    up, sp = resample(np.eye(8, dtype=np.float32), (16, 32), (1.0, 2.0))
    assert up.shape == (16, 32) and sp == pytest.approx((0.5, 0.5))
    same, sp = resample(full, 128, (0.5, 0.5))
    assert np.array_equal(same, full) and sp == (0.5, 0.5)
