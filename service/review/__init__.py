"""The review wing: audited annotations as worklist items, reviewers' decisions, write-back, metrics."""

from service.review.store import (  # noqa: F401
    AuditedRow,
    Decision,
    DecisionAuditRow,
    DecisionError,
    DecisionOutcome,
    DecisionRow,
    ReviewCollector,
    ReviewService,
    ReviewStore,
    WorklistFilter,
    WorklistPage,
    frame_key,
    is_mask_row,
    why_flagged,
)

__all__ = [
    "Decision",
    "DecisionError",
    "DecisionOutcome",
    "ReviewStore",
    "ReviewService",
    "ReviewCollector",
    "WorklistFilter",
    "WorklistPage",
    "AuditedRow",
    "DecisionRow",
    "DecisionAuditRow",
    "why_flagged",
    "frame_key",
    "is_mask_row",
]
