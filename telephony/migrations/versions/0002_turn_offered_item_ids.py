"""turns.offered_item_ids: the services a clarifying reply offered (typed, instead of a reason prefix)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 08:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered_item_ids', sa.JSON(), nullable=True))
    # Turns stored before this revision said "choice pending" only in prose: a clarifying reply whose reason began
    # with "middle" offered its items. Written once here so stored conversations continue as they would have.
    op.execute("UPDATE turns SET offered_item_ids = item_ids WHERE action = 'clarify' AND reason LIKE 'middle%'")


def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_column('offered_item_ids')
