"""review rows per SEG source frame: ``annotations_audited.frame_key`` in the unique key (service/review/)

A SEG segment spans many source frames, and each (segment, frame) is its own audited item; before
this revision two frames of one segment collided on the unique key and the study could not be indexed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 02:27:54.895476
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in sa.inspect(op.get_bind()).get_columns(table))


def upgrade() -> None:
    if _has_column("annotations_audited", "frame_key"):  # made by a create_all of these models: take it over
        return
    with op.batch_alter_table('annotations_audited', schema=None) as batch_op:
        batch_op.add_column(sa.Column('frame_key', sa.String(length=160), server_default='', nullable=False))
        batch_op.drop_constraint('uq_audited_annotation', type_='unique')
        batch_op.create_unique_constraint('uq_audited_annotation',
                                          ['annotation_uid', 'segment_number', 'content_path', 'frame_key'])


def downgrade() -> None:
    with op.batch_alter_table('annotations_audited', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audited_annotation', type_='unique')
        batch_op.create_unique_constraint('uq_audited_annotation', ['annotation_uid', 'segment_number', 'content_path'])
        batch_op.drop_column('frame_key')
