"""audit head: the hash of the line about to be written

Why: the head row is committed after the line's fsync, so a process killed between the two
leaves one line after the head. Without more, `audit verify` cannot tell that line from one a
forger appended. The writer now commits the coming line's hash first (``pending_hash``); a line
after the head whose hash is the pending one is the node's own, and is accepted.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-01 18:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_head') as batch:
        batch.add_column(sa.Column('pending_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_head') as batch:
        batch.drop_column('pending_hash')
