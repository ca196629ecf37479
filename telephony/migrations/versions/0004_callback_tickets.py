"""Callback tickets: the handoff ticket lifecycle (open → assigned → attempted → resolved | unreachable), its trigger,
due time, context, attempt counter and version, and the callback_attempts table

The status column is a non-native enum (VARCHAR(24), no CHECK constraint), so the new states need no type change;
the rows stored before this revision are moved to the new states: claimed and callback_scheduled become assigned
(open when nobody is assigned), closed becomes resolved. Old tickets are due when they were created and have an
empty context.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

CALLBACK_OUTCOME = ('reached', 'no_answer', 'busy', 'wrong_number', 'other')


def upgrade() -> None:
    with op.batch_alter_table('handoff_tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trigger', sa.String(length=32), server_default='other', nullable=False))
        batch_op.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('context', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='1', nullable=False))
    # A quoted literal, not a bound parameter: PostgreSQL casts an untyped literal to json, not a varchar parameter.
    op.execute("UPDATE handoff_tickets SET due_at = created_at, context = '{}'")
    op.execute("UPDATE handoff_tickets SET status = 'assigned' "
               "WHERE status IN ('claimed', 'callback_scheduled') AND assigned_user_id IS NOT NULL")
    op.execute("UPDATE handoff_tickets SET status = 'open' "
               "WHERE status IN ('claimed', 'callback_scheduled') AND assigned_user_id IS NULL")
    op.execute("UPDATE handoff_tickets SET status = 'resolved', resolved_at = updated_at WHERE status = 'closed'")
    with op.batch_alter_table('handoff_tickets', schema=None) as batch_op:
        batch_op.alter_column('due_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column('context', existing_type=sa.JSON(), nullable=False)
        batch_op.create_index('ix_handoff_tickets_due', ['status', 'due_at'], unique=False)
    op.create_table(
        'callback_attempts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('outcome', sa.Enum(*CALLBACK_OUTCOME, name='callback_outcome', native_enum=False, length=24),
                  nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['ticket_id'], ['handoff_tickets.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('callback_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_attempts_ticket_id'), ['ticket_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('callback_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_callback_attempts_ticket_id'))
    op.drop_table('callback_attempts')
    op.execute("UPDATE handoff_tickets SET status = 'claimed' WHERE status IN ('assigned', 'attempted')")
    op.execute("UPDATE handoff_tickets SET status = 'closed' WHERE status IN ('resolved', 'unreachable')")
    with op.batch_alter_table('handoff_tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_handoff_tickets_due')
        batch_op.drop_column('version')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('context')
        batch_op.drop_column('due_at')
        batch_op.drop_column('trigger')
