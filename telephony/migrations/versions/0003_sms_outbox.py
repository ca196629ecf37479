"""SMS outbox: sms_messages rebuilt as a persistent outbox (idempotency key, segments, retries, claims), sms_reports,
and the SMS offer's consent, masked number and message on each turn

Nothing before this revision wrote sms_messages (no gateway existed), so the table is rebuilt rather than altered.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 17:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

SMS_STATUS = ('queued', 'sending', 'submitted', 'delivered', 'failed', 'expired')


def upgrade() -> None:
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_messages_status'))
        batch_op.drop_index(batch_op.f('ix_sms_messages_call_id'))
    op.drop_table('sms_messages')
    op.create_table(
        'sms_messages',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('reference', sa.String(length=160), nullable=False),
        sa.Column('kind', sa.Enum('guide', 'ticket', 'manual', name='sms_kind', native_enum=False, length=24),
                  nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=True),
        sa.Column('item_id', sa.String(length=128), nullable=True),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('length', sa.Integer(), nullable=False),
        sa.Column('segments', sa.Integer(), nullable=False),
        sa.Column('template_code', sa.String(length=64), nullable=True),
        sa.Column('template_variables', sa.JSON(), nullable=True),
        sa.Column('status', sa.Enum(*SMS_STATUS, name='sms_status', native_enum=False, length=24), nullable=False),
        sa.Column('gateway', sa.String(length=32), nullable=False),
        sa.Column('gateway_message_id', sa.String(length=128), nullable=True),
        sa.Column('part_ids', sa.JSON(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('sends', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_by', sa.String(length=64), nullable=True),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('error_code', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('reference'),
    )
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_messages_call_id'), ['call_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_messages_gateway_message_id'), ['gateway_message_id'], unique=False)
        batch_op.create_index('ix_sms_messages_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_sms_messages_phone_created', ['phone', 'created_at'], unique=False)
    op.create_table(
        'sms_reports',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('gateway', sa.String(length=32), nullable=False),
        sa.Column('gateway_message_id', sa.String(length=128), nullable=True),
        sa.Column('reference', sa.String(length=160), nullable=True),
        sa.Column('state', sa.String(length=24), nullable=False),
        sa.Column('error_code', sa.String(length=64), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('outcome', sa.String(length=24), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['sms_messages.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sms_consent', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('sms_to', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('sms_message_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_column('sms_message_id')
        batch_op.drop_column('sms_to')
        batch_op.drop_column('sms_consent')
    op.drop_table('sms_reports')
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_messages_phone_created')
        batch_op.drop_index('ix_sms_messages_due')
        batch_op.drop_index(batch_op.f('ix_sms_messages_gateway_message_id'))
        batch_op.drop_index(batch_op.f('ix_sms_messages_call_id'))
    op.drop_table('sms_messages')
    op.create_table(
        'sms_messages',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=True),
        sa.Column('turn_id', sa.Integer(), nullable=True),
        sa.Column('phone', sa.String(length=32), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.Enum('queued', 'sent', 'delivered', 'failed', name='sms_status', native_enum=False,
                                    length=24), nullable=False),
        sa.Column('gateway', sa.String(length=32), nullable=False),
        sa.Column('gateway_message_id', sa.String(length=128), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['turn_id'], ['turns.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_messages_call_id'), ['call_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_messages_status'), ['status'], unique=False)
