"""audit head: timestamp of the last anchored line

Why: with only (seq, hash) of the last line, `audit verify` cannot tell a truncated tail from a
line deleted in the middle with the rest re-chained (both end below the head's seq). The last
line's own timestamp tells them apart: after a deletion the log still ends with the head's event.

Revision ID: 0010
Revises: 0004
Create Date: 2026-12-01 15:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_head') as batch:
        batch.add_column(sa.Column('last_ts', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_head') as batch:
        batch.drop_column('last_ts')
