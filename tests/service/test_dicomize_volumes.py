"""`labelqa dicomize` of a volume set: a CT series with real geometry and one SEG per case, planted 3-D
errors recorded in the manifest, read back per segment voxel for voxel."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.commands import labelqa_cmd, labelqa_env


@pytest.fixture(scope="module")
def volume_set(tmp_path_factory) -> tuple[Path, object]:
    from models.volume.synthetic import make_volume_set, write_volume_set

    data = make_volume_set(6, (12, 14, 16), seed=5, spacing=(2.5, 0.8, 0.8), origin=(-20.0, 10.0, 50.0))
    root = tmp_path_factory.mktemp("vset") / "msd"
    write_volume_set(data, root, layout="msd")
    return root, data


def _masks_by_study(out: Path) -> dict[str, dict[str, np.ndarray]]:
    from dicom_io.annotations import read_study

    found: dict[str, dict[str, np.ndarray]] = {}
    for study in sorted(p for p in out.iterdir() if p.is_dir()):
        a = read_study(sorted(study.glob("*.dcm")), None, volumes=True)
        # the frame-by-frame (class label) reading has its own findings; the volume reading must have none
        geometry = {"no_plane_geometry", "inconsistent_geometry", "irregular_spacing", "missing_slice",
                    "duplicate_position", "single_slice"}
        assert not [i for i in a.issues if str(i.code) in geometry], a.issues
        assert len(a.volumes) == 1  # the series as one volume
        vol = next(iter(a.volumes.values()))
        found[study.name] = {m.label: m.mask for m in a.mask_volumes}
        for m in a.mask_volumes:
            assert m.mask.shape == vol.shape and m.geometry.spacing == pytest.approx(vol.spacing)
    return found


def test_dicomize_writes_a_series_and_a_seg_per_case_with_the_planted_errors_in_the_manifest(volume_set, tmp_path):
    root, data = volume_set
    out = tmp_path / "dicom"
    r = subprocess.run([*labelqa_cmd(), "dicomize", str(root), str(out), "--noise-rate", "0.5", "--seed", "1"],
                       env=labelqa_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 series with a SEG each (3 with a planted 3-D error)" in r.stdout
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["case"] for row in rows] == [c.stem for c in data.cases]
    planted = [row for row in rows if row["mask_corruption"]]
    assert len(planted) == 3 and all(row["planted_kind"] and int(row["changed_voxels"]) > 0 for row in planted)
    assert {row["modality"] for row in rows} == {"CT"} and {row["slices"] for row in rows} == {"12"}
    masks = _masks_by_study(out)
    by_case = {c.stem: c for c in data.cases}
    for row in rows:
        got = masks[row["study_uid"]]
        clean = by_case[row["case"]].labels
        for k, name in enumerate(data.class_names, start=1):
            given = got.get(name, np.zeros(clean.shape, bool))
            # the series may come back in the other slice order (right-handed axes): compare both ways
            same = np.array_equal(given, clean == k) or np.array_equal(given[::-1], clean == k)
            changed = name in row["mask_corruption"]
            assert same != changed, (row["case"], name, row["mask_corruption"])


def test_dicomize_volumes_refuses_bad_input_with_a_clear_error(volume_set, tmp_path):
    root, _data = volume_set
    r = subprocess.run([*labelqa_cmd(), "dicomize", str(root), str(tmp_path / "x"), "--modality", "OT", "--dims",
                        "3", "--noise-rate", "1.5"], env=labelqa_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([*labelqa_cmd(), "dicomize", str(empty), str(tmp_path / "y"), "--dims", "3"],
                       env=labelqa_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
