"""image embeddings kept per image, weights and preprocessing version; worklist calibration (issue 13)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 14:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_embedding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('preprocessing_version', sa.String(length=32), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('patient_sex', sa.String(length=16), nullable=False),
    sa.Column('patient_age_years', sa.Float(), nullable=True),
    sa.Column('manufacturer', sa.String(length=64), nullable=False),
    sa.Column('manufacturer_model', sa.String(length=64), nullable=False),
    sa.Column('station_name', sa.String(length=64), nullable=False),
    sa.Column('institution_name', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('view_position', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid', 'weights_sha256', 'preprocessing_version', name='uq_embedding_key')
    )
    with op.batch_alter_table('image_embedding', schema=None) as batch_op:
        batch_op.create_index('ix_embedding_model', ['weights_sha256', 'preprocessing_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_embedding_study_instance_uid'), ['study_instance_uid'],
                              unique=False)
    with op.batch_alter_table('worklist_item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('calibration', sa.String(length=200), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('worklist_item', schema=None) as batch_op:
        batch_op.drop_column('calibration')
    with op.batch_alter_table('image_embedding', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_embedding_study_instance_uid'))
        batch_op.drop_index('ix_embedding_model')
    op.drop_table('image_embedding')
