"""Pause points for tests: a process stops at a named point until the test lets it go.

Races between processes (a gateway starting while another one ingests) must be made to happen in
tests, not hoped for. A test starts the process with ``LABELQA_TEST_PAUSE=<dir>`` and creates the
FIFOs ``<dir>/<point>.paused`` and ``<dir>/<point>.resume``; at :func:`pause_point` the process
writes a byte into the first (the test's read returns: the process is there) and waits for a byte
from the second. Unset, or with the FIFOs absent, a pause point does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pause_point"]


def pause_point(name: str) -> None:
    """Stop here until the test resumes us, when the test armed ``name`` (see the module docstring)."""
    where = os.environ.get("LABELQA_TEST_PAUSE")
    if not where:
        return
    paused, resume = Path(where) / f"{name}.paused", Path(where) / f"{name}.resume"
    if not paused.exists() or not resume.exists():
        return
    with paused.open("wb") as f:  # blocks until the test opens it for reading
        f.write(b"1")
    with resume.open("rb") as f:  # blocks until the test writes
        f.read(1)
