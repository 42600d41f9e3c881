"""review decisions: ``corrected_mask`` (a reviewer accepted the suggested mask; service/review/)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 02:36:00.600649
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in sa.inspect(op.get_bind()).get_columns(table))


def upgrade() -> None:
    if _has_column("review_decisions", "corrected_mask"):  # made by a create_all of these models: take it over
        return
    with op.batch_alter_table('review_decision_audit', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corrected_mask', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('previous_corrected_mask', sa.String(length=16), nullable=True))

    with op.batch_alter_table('review_decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corrected_mask', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('review_decisions', schema=None) as batch_op:
        batch_op.drop_column('corrected_mask')

    with op.batch_alter_table('review_decision_audit', schema=None) as batch_op:
        batch_op.drop_column('previous_corrected_mask')
        batch_op.drop_column('corrected_mask')
