"""drift streams: frozen reference windows and alert state per stream (issue 9)

Revision ID: 0030
Revises: 0021
Create Date: 2026-12-01 15:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0030'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('drift_stream',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stream_key', sa.String(length=300), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('preprocessing_version', sa.String(length=32), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reference_first_id', sa.Integer(), nullable=True),
    sa.Column('reference_last_id', sa.Integer(), nullable=True),
    sa.Column('frozen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('alert', sa.Boolean(), nullable=False),
    sa.Column('alert_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reasons', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream_key', 'weights_sha256', 'preprocessing_version', name='uq_drift_stream')
    )


def downgrade() -> None:
    op.drop_table('drift_stream')
