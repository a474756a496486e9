"""worklist priority over time: the order's priority, the AI raise that holds, who cleared it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('worklist_item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_priority', sa.String(length=8), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('raised_by_sr_uid', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('raised_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('priority_kept', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('images', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('cleared_by', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('cleared_reason', sa.Text(), nullable=False, server_default=''))
    # Rows written before this revision: a HIGH row was raised by its own SR.
    op.execute("UPDATE worklist_item SET raised_by_sr_uid = sr_sop_instance_uid WHERE priority = 'HIGH'")


def downgrade() -> None:
    with op.batch_alter_table('worklist_item', schema=None) as batch_op:
        for name in ('cleared_reason', 'cleared_by', 'cleared_at', 'images', 'priority_kept', 'raised_at',
                     'raised_by_sr_uid', 'order_priority'):
            batch_op.drop_column(name)
