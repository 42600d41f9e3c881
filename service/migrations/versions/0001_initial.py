"""initial: the store index, the outbox and the audit jobs

Every table as labelqa made it with ``create_all`` before migrations, plus the partial unique index
that allows one running audit per study. Idempotent: a database made by an earlier labelqa (tables
without a version table) is taken over, only what is missing is created.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RUNNING_ONLY = sa.text("state = 'running'")


def _has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def _index(table: str, name: str, columns: list[str], *, unique: bool = False, **kw: Any) -> None:
    if name not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns, unique=unique, **kw)


def upgrade() -> None:
    if not _has_table("patients"):
        op.create_table(
            "patients",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("patient_key", sa.String(length=64), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=True),
            sa.Column("issuer", sa.String(length=64), nullable=True),
            sa.Column("patient_name", sa.String(length=324), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("patient_key"),
        )
    if not _has_table("studies"):
        op.create_table(
            "studies",
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("patient_pk", sa.Integer(), nullable=True),
            sa.Column("study_date", sa.String(length=16), nullable=True),
            sa.Column("accession_number", sa.String(length=64), nullable=True),
            sa.Column("description", sa.String(length=64), nullable=True),
            sa.Column("first_received", sa.Float(), nullable=False),
            sa.Column("last_received", sa.Float(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("stable_count", sa.Integer(), nullable=False),
            sa.Column("stable_at", sa.Float(), nullable=True),
            sa.ForeignKeyConstraint(["patient_pk"], ["patients.id"]),
            sa.PrimaryKeyConstraint("study_uid"),
        )
    if not _has_table("series"):
        op.create_table(
            "series",
            sa.Column("series_uid", sa.String(length=64), nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("modality", sa.String(length=16), nullable=True),
            sa.Column("series_number", sa.String(length=16), nullable=True),
            sa.Column("description", sa.String(length=64), nullable=True),
            sa.Column("manufacturer", sa.String(length=64), nullable=True),
            sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
            sa.PrimaryKeyConstraint("series_uid"),
        )
    _index("series", "ix_series_study_uid", ["study_uid"])
    if not _has_table("instances"):
        op.create_table(
            "instances",
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("series_uid", sa.String(length=64), nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
            sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=True),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("size", sa.Integer(), nullable=False),
            sa.Column("sha256", sa.String(length=64), nullable=False),
            sa.Column("received_at", sa.Float(), nullable=False),
            sa.Column("calling_ae", sa.String(length=16), nullable=True),
            sa.ForeignKeyConstraint(["series_uid"], ["series.series_uid"]),
            sa.PrimaryKeyConstraint("sop_instance_uid"),
        )
    _index("instances", "ix_instances_series", ["series_uid"])
    _index("instances", "ix_instances_study", ["study_uid"])
    if not _has_table("store_events"):
        op.create_table(
            "store_events",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("kind", sa.String(length=32), nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=True),
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
    if not _has_table("outbox_items"):
        op.create_table(
            "outbox_items",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("destination", sa.String(length=64), nullable=False),
            sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
            sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
            sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("last_status", sa.Integer(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("delivered_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_dest_sop"),
        )
    _index("outbox_items", "ix_outbox_items_destination", ["destination"])
    _index("outbox_items", "ix_outbox_items_state", ["state"])
    if not _has_table("audit_jobs"):
        op.create_table(
            "audit_jobs",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("study_uid", sa.String(length=64), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("trigger", sa.String(length=32), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("owner", sa.String(length=128), nullable=True),
            sa.Column("lease_until", sa.Float(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=True),
            sa.Column("finished_at", sa.Float(), nullable=True),
            sa.Column("last_instance_at", sa.Float(), nullable=True),
            sa.Column("n_samples", sa.Integer(), nullable=True),
            sa.Column("n_flagged", sa.Integer(), nullable=True),
            sa.Column("superseded_by", sa.Integer(), nullable=True),
            sa.Column("result_json", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
    _index("audit_jobs", "ix_audit_jobs_state", ["state"])
    _index("audit_jobs", "ix_audit_jobs_study_uid", ["study_uid"])
    _index("audit_jobs", "uq_audit_jobs_running_study", ["study_uid"], unique=True, sqlite_where=RUNNING_ONLY,
           postgresql_where=RUNNING_ONLY)


def downgrade() -> None:
    for table in ("audit_jobs", "outbox_items", "store_events", "instances", "series", "studies", "patients"):
        op.drop_table(table)
