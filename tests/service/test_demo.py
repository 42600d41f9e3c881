"""`labelqa demo` and the deployment files: the demo's table matches the planted errors; the
configuration reference is up to date; the Orthanc configuration and routing script are consistent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.commands import labelqa_cmd, labelqa_env
from tests.conftest import REPO, requires_dcmtk


def test_configuration_reference_is_up_to_date():
    r = subprocess.run([*labelqa_cmd(), "config", "reference"], capture_output=True, text=True, env=labelqa_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == r.stdout, "regenerate: labelqa config reference > docs/configuration.md"


def test_orthanc_example_routes_to_labelqa_with_the_lua_script():
    cfg = json.loads((REPO / "deploy" / "orthanc" / "orthanc.json").read_text())
    assert cfg["DicomModalities"]["labelqa"]["AET"] == "LABELQA"
    assert any(p.endswith("labelqa-route.lua") for p in cfg["LuaScripts"])
    lua = (REPO / "deploy" / "orthanc" / "labelqa-route.lua").read_text()
    assert "function OnStableStudy" in lua and "/modalities/" in lua and "'labelqa'" in lua


@pytest.mark.slow
@requires_dcmtk
def test_demo_table_matches_the_planted_errors(small_demo):
    cfg = small_demo.cfg
    args = ["demo", "--json", "--data-dir", str(small_demo.work), "--studies", str(cfg.studies),
            "--train-images", str(cfg.train_images), "--image-size", str(cfg.image_size), "--classes",
            str(cfg.classes), "--noise-rate", str(cfg.noise_rate), "--epochs", str(cfg.epochs), "--seed",
            str(cfg.seed), "--device", "cpu", "--timeout", "300"]
    r = subprocess.run([*labelqa_cmd(), *args], capture_output=True, text=True, env=labelqa_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(cached)" in r.stderr, "the bundle trained by the fixture is reused"
    report = json.loads(r.stdout)
    rows = report["rows"]
    truth = {m["annotation_uid"]: m for m in small_demo.data.manifest}
    assert len(rows) == cfg.studies == len(truth)
    for row in rows:
        m = truth[row["annotation_uid"]]
        assert row["planted_error"] == (m["true_label"] != m["written_label"])
        assert row["given_label"] == m["written_label"]
        if row["planted_error"]:
            # Every model sees the shape: the consensus is the true class, and the crossfit-calibrated cut flags it.
            assert row["consensus_label"] == m["true_label"] and row["verdict"] == "suspected_label_error", row
        else:
            assert row["verdict"] != "suspected_label_error", f"false alarm: {row}"
    flagged = [row for row in rows if row["verdict"] == "suspected_label_error"]
    assert len(flagged) == sum(row["planted_error"] for row in rows), "every planted error is flagged"
    s = report["summary"]
    assert s["planted_errors"] == sum(row["planted_error"] for row in rows) >= 1
    assert s["flagged_not_planted"] == 0 and s["flagged_and_planted"] == len(flagged)
    out = report["outputs"]
    assert out["archive"]["instances"] >= cfg.studies  # one SR per study at least, delivered by C-STORE
    assert Path(out["html_report"]).is_file()
