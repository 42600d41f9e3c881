"""`labelqa demo` and the deployment files: the demo's table matches the planted errors; the
configuration reference is up to date; the Orthanc configuration and routing script are consistent."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import REPO, labelqa_cmd, labelqa_env


def test_configuration_reference_is_up_to_date():
    r = subprocess.run([*labelqa_cmd(), "config", "reference"], capture_output=True, text=True, env=labelqa_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    committed = (REPO / "deploy" / "CONFIGURATION.md").read_text()
    assert committed == r.stdout, "regenerate: labelqa config reference > deploy/CONFIGURATION.md"


def test_orthanc_example_routes_to_labelqa_with_the_lua_script():
    cfg = json.loads((REPO / "deploy" / "orthanc" / "orthanc.json").read_text())
    assert cfg["DicomModalities"]["labelqa"]["AET"] == "LABELQA"
    assert any(p.endswith("labelqa-route.lua") for p in cfg["LuaScripts"])
    lua = (REPO / "deploy" / "orthanc" / "labelqa-route.lua").read_text()
    assert "function OnStableStudy" in lua and "/modalities/" in lua and "'labelqa'" in lua
