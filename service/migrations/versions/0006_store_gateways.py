"""gateways sharing an index: store_gateways (leases) and studies.receiver (dicom_io/gateways.py, store.py)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:19:21.621372
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def _has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in sa.inspect(op.get_bind()).get_columns(table))


def upgrade() -> None:
    if not _has_table("store_gateways"):  # else made by a create_all of these models: take it over
        op.create_table('store_gateways',
        sa.Column('gateway_id', sa.String(length=32), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('heartbeat_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('gateway_id')
        )
    if not _has_column("studies", "receiver"):
        with op.batch_alter_table('studies', schema=None) as batch_op:
            batch_op.add_column(sa.Column('receiver', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('receiver')

    op.drop_table('store_gateways')
