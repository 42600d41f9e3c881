"""The labelqa CLI of this checkout as a subprocess: its command line and its environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["REPO", "labelqa_cmd", "labelqa_env"]

REPO = Path(__file__).resolve().parents[1]


def labelqa_cmd() -> list[str]:
    """The labelqa CLI as a subprocess command line, using this interpreter and this checkout."""
    return [sys.executable, "-m", "service"]


def labelqa_env(**extra: str) -> dict[str, str]:
    """Environment for labelqa subprocesses: this checkout first on the path, TCP_NODELAY for dcmtk."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TCP_NODELAY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
