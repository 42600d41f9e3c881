"""The review wing: audited annotations as worklist items, reviewers' decisions and their trail, write-back
to the PACS, the loop's metrics.

``tables`` (what the database holds), ``items`` (what the worklist shows), ``worklist`` (indexing finished
audits, the worklist queries), ``decisions`` (deciding, the trail, the export), ``metrics`` (the loop
measured), ``store`` (``ReviewStore``: those parts over one engine), ``writeback`` (``ReviewService``: the
store, the write-back and the item pictures' sources), ``volume`` (items of segments audited in 3-D).
"""

from service.review.decisions import DecisionOutcome
from service.review.items import MAX_ID, WorklistFilter, WorklistPage, frame_key, why_flagged
from service.review.metrics import ReviewCollector
from service.review.store import ReviewStore
from service.review.tables import (
    MASK_CORRECTIONS,
    AuditedRow,
    Decision,
    DecisionAuditRow,
    DecisionError,
    DecisionRow,
)
from service.review.writeback import ReviewService

__all__ = [
    "Decision", "DecisionError", "DecisionOutcome", "ReviewStore", "ReviewService", "ReviewCollector",
    "WorklistFilter", "WorklistPage", "AuditedRow", "DecisionRow", "DecisionAuditRow", "why_flagged", "frame_key",
    "MASK_CORRECTIONS", "MAX_ID",
]
