"""worklist: a covering index for the console's page order (priority, waiting time) and filters

Why: the console pages the worklist in SQL (ORDER BY priority rank, queued_at LIMIT/OFFSET).
Without an index every page load scans the whole worklist_item table, whose rows carry the
findings JSON; with this index SQLite reads only the narrow index (bench/console.py).

Revision ID: 0020
Revises: 0004
Create Date: 2026-12-01 15:00:00
"""
from alembic import op


revision = '0020'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_worklist_order', 'worklist_item', ['priority', 'queued_at', 'assist', 'profile'])


def downgrade() -> None:
    op.drop_index('ix_worklist_order', table_name='worklist_item')
