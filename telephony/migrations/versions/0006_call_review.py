"""Call review: call_reviews (one summary row per ended call) with its full-text index, call_review_items, qa_marks,
qa_samples, kb_changes and the append-only audit_log; the role "editor" becomes "kb_editor"

The full-text index is dialect-specific: an FTS5 table over call_reviews.search_text (external content, rowid =
doc_id) on SQLite; on PostgreSQL a GIN index over search_vector, a stored generated column
to_tsvector('simple', search_text) that the ORM model does not map. search_text holds jieba tokens separated by
spaces, so both index plain space-separated words (telephony.review.search).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=24)


def upgrade() -> None:
    op.execute("UPDATE users SET role = 'kb_editor' WHERE role = 'editor'")
    op.create_table(
        'call_reviews',
        sa.Column('doc_id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('duration_s', sa.Float(), nullable=False),
        sa.Column('channel', sa.String(length=24), nullable=False),
        sa.Column('outcome', _enum('call_outcome', 'answered', 'clarified', 'handed_off', 'abandoned'),
                  nullable=False),
        sa.Column('end_reason', sa.String(length=64), nullable=True),
        sa.Column('turns', sa.Integer(), nullable=False),
        sa.Column('min_confidence', sa.Float(), nullable=True),
        sa.Column('first_question', sa.Text(), nullable=False),
        sa.Column('item_ids', sa.JSON(), nullable=False),
        sa.Column('categories', sa.JSON(), nullable=False),
        sa.Column('latencies_ms', sa.JSON(), nullable=False),
        sa.Column('search_text', sa.Text(), nullable=False),
        sa.Column('indexed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('doc_id'),
        sa.UniqueConstraint('call_id'),
    )
    op.create_index('ix_call_reviews_started', 'call_reviews', ['started_at'])
    op.create_index('ix_call_reviews_outcome_started', 'call_reviews', ['outcome', 'started_at'])
    op.create_table(
        'call_review_items',
        sa.Column('doc_id', sa.Integer(), nullable=False),
        sa.Column('item_id', sa.String(length=128), nullable=False),
        sa.Column('category', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['doc_id'], ['call_reviews.doc_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('doc_id', 'item_id'),
    )
    op.create_index('ix_call_review_items_category', 'call_review_items', ['category', 'doc_id'])
    op.create_index('ix_call_review_items_item', 'call_review_items', ['item_id', 'doc_id'])
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        op.execute("CREATE VIRTUAL TABLE call_search USING fts5(search_text, content='call_reviews', "
                   "content_rowid='doc_id', tokenize='unicode61')")
        # Keep the external-content index in step with call_reviews whatever writes or deletes the rows.
        op.execute("CREATE TRIGGER call_reviews_ai AFTER INSERT ON call_reviews BEGIN "
                   "INSERT INTO call_search(rowid, search_text) VALUES (new.doc_id, new.search_text); END")
        op.execute("CREATE TRIGGER call_reviews_ad AFTER DELETE ON call_reviews BEGIN "
                   "INSERT INTO call_search(call_search, rowid, search_text) "
                   "VALUES ('delete', old.doc_id, old.search_text); END")
        op.execute("CREATE TRIGGER call_reviews_au AFTER UPDATE ON call_reviews BEGIN "
                   "INSERT INTO call_search(call_search, rowid, search_text) "
                   "VALUES ('delete', old.doc_id, old.search_text); "
                   "INSERT INTO call_search(rowid, search_text) VALUES (new.doc_id, new.search_text); END")
    elif dialect == 'postgresql':
        # A stored tsvector, not an expression index: a search combined with other filters makes the planner recheck
        # rows, and recomputing to_tsvector for each of them cost seconds on 100,000 calls.
        op.execute("ALTER TABLE call_reviews ADD COLUMN search_vector tsvector "
                   "GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED")
        op.execute("CREATE INDEX ix_call_reviews_search ON call_reviews USING gin (search_vector)")
    op.create_table(
        'qa_marks',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=False),
        sa.Column('turn_seq', sa.Integer(), nullable=False),
        sa.Column('label', _enum('qa_label', 'correct', 'wrong_answer', 'incomplete', 'should_have_handed_off',
                                 'asr_error'), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('reviewer_id', sa.Integer(), nullable=True),
        sa.Column('reviewer', sa.String(length=64), nullable=False),
        sa.Column('marked_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('call_id', 'turn_seq', name='uq_qa_marks_turn'),
    )
    op.create_index('ix_qa_marks_marked_at', 'qa_marks', ['marked_at'])
    op.create_table(
        'qa_samples',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=False),
        sa.Column('drawn_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('day', 'call_id'),
    )
    op.create_table(
        'kb_changes',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', _enum('kb_change_kind', 'add_question', 'new_item'), nullable=False),
        sa.Column('status', _enum('kb_change_status', 'proposed', 'applied', 'rejected'), nullable=False),
        sa.Column('item_id', sa.String(length=128), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('call_id', sa.String(length=32), nullable=True),
        sa.Column('turn_seq', sa.Integer(), nullable=True),
        sa.Column('proposed_by', sa.String(length=64), nullable=False),
        sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.String(length=64), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('decision_note', sa.Text(), nullable=False),
        sa.Column('kb_version', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_kb_changes_status', 'kb_changes', ['status', 'proposed_at'])
    op.create_table(
        'audit_log',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=200), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'])
    if dialect == 'sqlite':
        for event in ('UPDATE', 'DELETE'):
            op.execute(f"CREATE TRIGGER audit_log_no_{event.lower()} BEFORE {event} ON audit_log BEGIN "
                       "SELECT RAISE(ABORT, 'audit_log is append-only'); END")
    elif dialect == 'postgresql':
        op.execute("CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'audit_log is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == 'postgresql':
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    op.drop_table('audit_log')
    op.drop_table('kb_changes')
    op.drop_table('qa_samples')
    op.drop_table('qa_marks')
    if dialect == 'sqlite':
        op.execute("DROP TABLE call_search")
    op.drop_table('call_review_items')
    op.drop_table('call_reviews')
    op.execute("UPDATE users SET role = 'editor' WHERE role = 'kb_editor'")
