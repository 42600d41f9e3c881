"""The three packages type-check: mypy (config in pyproject.toml [tool.mypy]) reports no error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # mypy over the three packages: tens of seconds

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_reports_no_error_in_service_dicom_io_models():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "service", "dicom_io", "models"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mypy exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}"
