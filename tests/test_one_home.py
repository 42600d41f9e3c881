"""One definition of each shared thing: verdicts, model-input preprocessing, our own outputs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_io import codes
from dicom_io.results.series import is_own_output
from dicom_io.sop import ANNOTATION_STORAGE, is_annotation
from models.preprocess import to_model_input
from models.verdict import FLAGGED, Verdict


def test_the_dicom_code_table_covers_exactly_the_verdicts():
    assert set(codes.VERDICT_CODES) == {v.value for v in Verdict}
    assert codes.FLAGGED_VERDICTS == {v.value for v in FLAGGED}
    assert len({c.value for c in codes.VERDICT_CODES.values()}) == len(Verdict)
    assert set(codes.VERDICT_COUNT_CODES) == set(codes.VERDICT_CODES)


def test_annotation_sop_classes_include_extensible_sr_and_label_map_seg():
    assert "1.2.840.10008.5.1.4.1.1.88.35" in ANNOTATION_STORAGE  # the pipeline's old copy lacked it
    assert is_annotation("1.2.840.10008.5.1.4.1.1.66.7")
    assert not is_annotation("1.2.840.10008.5.1.4.1.1.88.59")  # KOS carries no label


@pytest.mark.parametrize(("manufacturer", "series", "own"), [
    ("labelqa", 9901, True), ("labelqa", "9906", True), ("labelqa", 1, False), ("labelqa", 200, False),
    ("ACME", 9901, False), (None, None, False), ("labelqa", "x", False),
])
def test_own_output_rule(manufacturer, series, own):
    assert is_own_output(manufacturer, series) is own


def test_a_dicom_read_frame_and_the_same_file_read_for_training_give_the_same_model_input(tmp_path):
    """The train/serve skew check: training reads the PNG, the audit reads the dicomized image."""
    from dicom_io.annotations import read_study
    from models.data import load_dataset
    from service.dicomize import dicomize

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            # non-square, smooth + noise, so that any difference in filtering or rounding shows
            yy, xx = np.mgrid[:70, :53]
            img = (127 + 100 * np.sin(xx / 5.0 + i) * np.cos(yy / 7.0) + rng.normal(0, 10, (70, 53))).clip(0, 255)
            Image.fromarray(img.astype(np.uint8), mode="L").save(tmp_path / "data" / cls / f"{i}.png")
    size = 32
    train = load_dataset(tmp_path / "data", size, cache_dir=None)
    by_id = {i: train.images[k] for k, i in enumerate(train.ids)}
    res = dicomize(tmp_path / "data", tmp_path / "dcm")
    manifest = (tmp_path / "dcm" / "manifest.csv").read_text().splitlines()[1:]
    n = 0
    for line in manifest:
        src, study, image_uid = line.split(",")[:3]
        aset = read_study(tmp_path / "dcm" / study, None, pixel_transform=lambda a: to_model_input(a, size))
        (sample,) = aset.samples
        assert sample.provenance.image_uid == image_uid
        np.testing.assert_allclose(sample.pixels, by_id[src], atol=1e-5)
        n += 1
    assert n == res.n_images == 4
    ds = pydicom.dcmread(next((tmp_path / "dcm").rglob("IMG_*.dcm")))
    assert (ds.Rows, ds.Columns) == (70, 53)


def test_every_private_code_value_is_defined_once():
    import re

    from dicom_io import codes

    text = open(codes.__file__).read()
    values = re.findall(r'_c\("(LQA-[0-9]+)"', text)
    assert values and len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)
