"""`labelqa demo --task segmentation --dims 3`: CT series with a SEG each, routed to the service by C-STORE,
audited per segment by 3-D members; a planted 3-D error of every kind comes back as one verdict for its
segment, with its kind, its slices, a suggestion SEG over the series and the key slices in a KOS."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.commands import labelqa_cmd, labelqa_env


@pytest.mark.slow
def test_demo_volumes_finds_every_planted_3d_error_per_segment(tmp_path):
    from models.volume.corruption import DEFAULT_VOLUME_KINDS, VOLUME_CORRUPTIONS

    # the volume demo's defaults: 18 studies (24^3 voxels, ball and slab), half with a planted error (each
    # kind in turn), 36 training volumes, 20 epochs, three tiny 3-D members
    r = subprocess.run([*labelqa_cmd(), "demo", "--task", "segmentation", "--dims", "3", "--json", "--data-dir",
                        str(tmp_path), "--device", "cpu"],
                       env=labelqa_env(), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    rows = report["rows"]
    assert len(rows) == 36 and len({(row["study_uid"], row["class"]) for row in rows}) == 36  # one per segment
    assert {row["verdict"] for row in rows} <= {"suspected_mask_error", "hard_case", "consistent"}
    assert all({"verdict", "kind", "planted_error", "predicted_dice"} <= set(row) for row in rows)
    s = report["summary"]
    assert s["task"] == "segmentation" and s["planted_errors"] >= 9
    assert s["flagged_and_planted"] >= s["planted_errors"] - 1, s  # at most one planted segment missed
    assert s["precision"] is not None and s["precision"] >= 0.8, s
    typed = {row["planted_kind"] for row in rows if row["verdict"] == "suspected_mask_error" and row["planted_error"]
             and row["kind"] == row["planted_kind"]}
    assert len(typed) >= len(DEFAULT_VOLUME_KINDS) - 2, typed  # the kind of (nearly) every planted error named
    assert typed <= {str(VOLUME_CORRUPTIONS[k]) for k in DEFAULT_VOLUME_KINDS}
    for row in rows:
        if row["verdict"] == "suspected_mask_error" and row["slice_range"] is not None:
            assert row["key_slices"] and all(0 <= k < 24 for k in row["key_slices"])
    kinds = {f["modality"] for f in report["outputs"]["result_files"]}
    assert {"SR", "SEG", "KO", "OT"} <= kinds  # QA report, suggestion SEG, key slices, key-slice overlays


def test_demo_dims_must_be_offered_for_the_task(tmp_path):
    r = subprocess.run([*labelqa_cmd(), "demo", "--task", "labels", "--dims", "3", "--data-dir", str(tmp_path)],
                       env=labelqa_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--dims 3 is not offered for --task labels" in r.stderr
