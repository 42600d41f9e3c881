"""The review's tables and the terms a decision is made in: one module for what the database holds.

Four tables on the service database (on ``dicom_io.db.Base``; migrations 0002-0004):
``annotations_audited`` (one row per audited annotation: SR content item, SEG segment on one source
frame, or SEG segment audited in 3-D over its series), ``review_decisions`` (the current decision per
annotation and the state of its write-back), ``review_decision_audit`` (every change of a decision,
append-only) and ``review_sync`` (how far the index has read the finished audits).
"""

from __future__ import annotations

import time
from enum import StrEnum

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_io.db import Base
from dicom_io.results.revision import MASK_CORRECTIONS as REVISION_MASK_CORRECTIONS

__all__ = ["Decision", "DecisionError", "MASK_CORRECTIONS", "AuditedRow", "DecisionRow", "DecisionAuditRow",
           "ReviewSyncRow", "text_or_none", "iso_utc"]


class Decision(StrEnum):
    """What a reviewer says about a flagged (or any audited) annotation."""

    LABEL_WRONG = "label_wrong"
    """The label is wrong; ``corrected_label`` says what it should be, and/or, for a SEG mask,
    ``corrected_mask`` how the mask is corrected ("suggestion": labelqa's suggested mask)."""
    LABEL_RIGHT = "label_right"
    """The label is right (the flag was a false alarm)."""
    UNSURE = "unsure"
    """The reviewer cannot tell."""


class DecisionError(ValueError):
    """A decision that cannot be recorded as given (the message says why)."""


MASK_CORRECTIONS = tuple(REVISION_MASK_CORRECTIONS)
"""What ``corrected_mask`` may say (``dicom_io.results.revision`` writes each): "suggestion", the
suggested (consensus) mask of the audit replaces the given one on the item's source frame."""


class AuditedRow(Base):
    """One audited annotation, as the newest finished audit of its study saw it."""

    __tablename__ = "annotations_audited"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    segment_number: Mapped[int] = mapped_column(Integer, default=0)  # 0: not a SEG segment
    content_path: Mapped[str] = mapped_column(String(128), default="")
    # SEG rows: the source image/frame (a segment spans many frames, each its own item); '' for SR rows
    frame_key: Mapped[str] = mapped_column(String(160), default="", server_default="")
    study_uid: Mapped[str] = mapped_column(String(64))
    image_uid: Mapped[str | None] = mapped_column(String(64))
    frame: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(8), default="sr")  # sr | seg
    job_id: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    given_label: Mapped[str | None] = mapped_column(String(64))
    consensus_label: Mapped[str | None] = mapped_column(String(64))
    agreement: Mapped[float | None] = mapped_column(Float)
    p_given: Mapped[float | None] = mapped_column(Float)
    consensus_prob: Mapped[float | None] = mapped_column(Float)
    n_disagree: Mapped[int | None] = mapped_column(Integer)
    n_members: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    modality: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(16))
    series_uid: Mapped[str | None] = mapped_column(String(64))  # the image's series (data set / series filter)
    series_description: Mapped[str | None] = mapped_column(String(64))
    report_uid: Mapped[str | None] = mapped_column(String(64))  # the QA report SR of the audit
    heatmap_uid: Mapped[str | None] = mapped_column(String(64))
    extra_json: Mapped[str | None] = mapped_column(Text)  # per-member probabilities etc., when the audit gave them
    current: Mapped[bool] = mapped_column(Boolean, default=True)  # False: no longer in the study's newest audit
    audited_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("annotation_uid", "segment_number", "content_path", "frame_key", name="uq_audited_annotation"),
        # the worklist order (current rows by priority, id) for each common filter: pages are index walks
        Index("ix_audited_priority", "current", "priority", "id"),
        Index("ix_audited_verdict_priority", "current", "verdict", "priority", "id"),
        Index("ix_audited_flagged_priority", "current", "flagged", "priority", "id"),
        Index("ix_audited_label_priority", "current", "given_label", "priority", "id"),
        Index("ix_audited_study", "study_uid"),
    )


class DecisionRow(Base):
    """The current decision on one audited annotation."""

    __tablename__ = "review_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("annotations_audited.id"), unique=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(64))
    corrected_mask: Mapped[str | None] = mapped_column(String(16))  # "suggestion" (migration 0004)
    comment: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # write-back to the PACS: none (nothing to write) | pending | done | failed
    writeback_state: Mapped[str] = mapped_column(String(16), default="none")
    writeback_json: Mapped[str | None] = mapped_column(Text)  # UIDs / paths of what was written


class DecisionAuditRow(Base):
    """Append-only trail: every decision made or changed, with the previous one."""

    __tablename__ = "review_decision_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(Integer, index=True)
    annotation_uid: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # created | changed | retracted
    decision: Mapped[str | None] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(64))
    corrected_mask: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    previous_decision: Mapped[str | None] = mapped_column(String(16))
    previous_corrected_label: Mapped[str | None] = mapped_column(String(64))
    previous_corrected_mask: Mapped[str | None] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)


class ReviewSyncRow(Base):
    """How far :meth:`ReviewStore.sync` has read the job table."""

    __tablename__ = "review_sync"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_finished_at: Mapped[float] = mapped_column(Float, default=-1.0)


# -- query shapes ----------------------------------------------------------------------------------


def text_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def iso_utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
