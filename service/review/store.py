"""The review workbench's store: audited annotations ranked for review, reviewers' decisions, their trail.

One object over the review's tables (:mod:`service.review.tables`), made of its parts: indexing finished
audits and querying the worklist (:mod:`service.review.worklist`), decisions and their trail
(:mod:`service.review.decisions`), the loop's numbers (:mod:`service.review.metrics`). It reads the
finished audits through the runtime's job table API incrementally, so it needs no hook in the pipeline
and catches up after a restart. :meth:`ReviewStore.decide` is idempotent: the same decision again changes
nothing (no trail row, no new write-back). Logs carry UIDs and reviewer names only.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine

from dicom_io.db import ensure_schema
from service.review.decisions import DecisionLog
from service.review.metrics import LoopStats
from service.review.worklist import WorklistIndex

__all__ = ["ReviewStore"]


class ReviewStore(WorklistIndex, DecisionLog, LoopStats):
    """Audited annotations, decisions and their trail on the service database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ensure_schema(engine)  # a migrated database already has the tables (service/migrations 0002)
        self._sync_lock = threading.Lock()
        self._decide_lock = threading.Lock()
        self._jobs = None
        self._last_seen_max = ()
        self._facets: dict[str, Any] | None = None  # distinct labels / modalities / series; reset on indexing
        self._gen = 0  # bumped on every write through this store (cache stamps)
        self._counts: dict[tuple[object, ...], int] = {}
        self._stats: tuple[object, dict[str, Any]] | None = None
