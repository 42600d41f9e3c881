"""Deterministic UIDs for result objects.

The same study audited with the same model bundle gives the same results and therefore the same
UIDs: a re-sent study re-sends identical objects instead of making duplicates. A change in the
inputs, the bundle or the results gives new UIDs. UIDs live under the ``2.25`` root (PS3.5 B.2):
the decimal value of 128 bits of a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

__all__ = ["digest", "derived_uid"]


def digest(*parts: object) -> str:
    """A stable hex SHA-256 of JSON-able parts; numpy arrays hash by shape, dtype and bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"ndarray:{arr.dtype.str}:{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str, separators=(",", ":")).encode())
        h.update(b"\x00")
    return h.hexdigest()


def derived_uid(*parts: object) -> str:
    """A ``2.25.<int>`` UID (at most 44 characters) derived from the parts, always the same for the same parts."""
    value = int(digest(*parts)[:32], 16)
    return f"2.25.{value}"
