"""review decisions: the review workbench's tables (service/review/)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:24:22.039255
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _has_table("annotations_audited"):  # made by an earlier create_all (before migrations): take it over
        return
    op.create_table('annotations_audited',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('annotation_uid', sa.String(length=64), nullable=False),
    sa.Column('segment_number', sa.Integer(), nullable=False),
    sa.Column('content_path', sa.String(length=128), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('image_uid', sa.String(length=64), nullable=True),
    sa.Column('frame', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=32), nullable=False),
    sa.Column('flagged', sa.Boolean(), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('given_label', sa.String(length=64), nullable=True),
    sa.Column('consensus_label', sa.String(length=64), nullable=True),
    sa.Column('agreement', sa.Float(), nullable=True),
    sa.Column('p_given', sa.Float(), nullable=True),
    sa.Column('consensus_prob', sa.Float(), nullable=True),
    sa.Column('n_disagree', sa.Integer(), nullable=True),
    sa.Column('n_members', sa.Integer(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('study_date', sa.String(length=16), nullable=True),
    sa.Column('series_uid', sa.String(length=64), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('report_uid', sa.String(length=64), nullable=True),
    sa.Column('heatmap_uid', sa.String(length=64), nullable=True),
    sa.Column('extra_json', sa.Text(), nullable=True),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.Column('audited_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('annotation_uid', 'segment_number', 'content_path', name='uq_audited_annotation')
    )
    with op.batch_alter_table('annotations_audited', schema=None) as batch_op:
        batch_op.create_index('ix_audited_flagged_priority', ['current', 'flagged', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_audited_label_priority', ['current', 'given_label', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_audited_priority', ['current', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_audited_study', ['study_uid'], unique=False)
        batch_op.create_index('ix_audited_verdict_priority', ['current', 'verdict', 'priority', 'id'], unique=False)

    op.create_table('review_decision_audit',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('annotation_uid', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('corrected_label', sa.String(length=64), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('previous_decision', sa.String(length=16), nullable=True),
    sa.Column('previous_corrected_label', sa.String(length=64), nullable=True),
    sa.Column('reviewer', sa.String(length=64), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('review_decision_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_decision_audit_item_id'), ['item_id'], unique=False)

    op.create_table('review_sync',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_finished_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('review_decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('annotation_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('corrected_label', sa.String(length=64), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('reviewer', sa.String(length=64), nullable=False),
    sa.Column('decided_at', sa.Float(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('writeback_state', sa.String(length=16), nullable=False),
    sa.Column('writeback_json', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['item_id'], ['annotations_audited.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id')
    )
    with op.batch_alter_table('review_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_decisions_study_uid'), ['study_uid'], unique=False)

    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table('review_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_decisions_study_uid'))

    op.drop_table('review_decisions')
    op.drop_table('review_sync')
    with op.batch_alter_table('review_decision_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_decision_audit_item_id'))

    op.drop_table('review_decision_audit')
    with op.batch_alter_table('annotations_audited', schema=None) as batch_op:
        batch_op.drop_index('ix_audited_verdict_priority')
        batch_op.drop_index('ix_audited_study')
        batch_op.drop_index('ix_audited_priority')
        batch_op.drop_index('ix_audited_label_priority')
        batch_op.drop_index('ix_audited_flagged_priority')

    op.drop_table('annotations_audited')
    # ### end Alembic commands ###
