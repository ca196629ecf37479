"""calls.agent_id and calls.agent_notes: which agent talked to the caller (handoff in hours, the desk) and the notes
they kept during or after the call

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, never a batch: on SQLite a batch copies and drops `calls`, and dropping it cascades to every
    # turn, SMS and ticket that references it. SQLite takes a foreign key only inline in ADD COLUMN.
    if op.get_bind().dialect.name == 'sqlite':
        op.execute('ALTER TABLE calls ADD COLUMN agent_id INTEGER REFERENCES users (id) ON DELETE SET NULL')
    else:
        op.add_column('calls', sa.Column('agent_id', sa.Integer(), nullable=True))
        op.create_foreign_key('fk_calls_agent_id_users', 'calls', 'users', ['agent_id'], ['id'], ondelete='SET NULL')
    op.add_column('calls', sa.Column('agent_notes', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    op.drop_column('calls', 'agent_notes')
    if op.get_bind().dialect.name == 'sqlite':
        # SQLite cannot drop a column a foreign key uses, and rebuilding `calls` would cascade to its turns: the
        # (nullable, unused by older code) agent_id column stays.
        return
    op.drop_constraint('fk_calls_agent_id_users', 'calls', type_='foreignkey')
    op.drop_column('calls', 'agent_id')
