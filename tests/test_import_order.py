"""Every module of the DICOM layer imports on its own, first in a fresh interpreter (an import circle
through a package's ``__init__`` shows only when the module that starts it is imported first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_each_dicom_io_module_imports_first_in_a_fresh_interpreter():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "dicom_io").rglob("*.py"))
    failed = {}
    for m in modules:
        r = subprocess.run([sys.executable, "-c", f"import {m}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        if r.returncode:
            failed[m] = r.stderr.strip().splitlines()[-1]
    assert not failed, failed
