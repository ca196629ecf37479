"""Tables: calls, turns, SMS messages, handoff tickets and their callback attempts, users, and the supervisors' call
review (review rows and their search index, QA marks, the daily QA sample, proposed KB changes, the audit log)
(SQLAlchemy 2 typed mappings)."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Enum, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UtcDateTime(TypeDecorator):
    """A timezone-aware timestamp that reads back aware on every database: SQLite keeps no zone and hands back naive
    values (written as UTC), and would store an aware non-UTC value's wall-clock fields as if they were UTC. Bound
    values are converted to UTC, values read are marked UTC, so callers never see a naive datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.UTC)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


def _enum(enum_class: type[StrEnum], name: str) -> Enum:
    # Stored as short strings with a CHECK constraint, so adding a value is a plain migration.
    return Enum(enum_class, name=name, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class CallChannel(StrEnum):
    API = "api"
    CLI = "cli"
    TWILIO = "twilio"
    SOFTPHONE = "softphone"
    SIP = "sip"
    AUDIOSOCKET = "audiosocket"


class CallStatus(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"
    FAILED = "failed"


class SmsStatus(StrEnum):
    """queued → sending → submitted → delivered | failed | expired (docs/sms.md draws the machine)."""

    QUEUED = "queued"  # waiting for a worker (or for its next attempt after a retryable error)
    SENDING = "sending"  # a worker claimed it and is submitting it now
    SUBMITTED = "submitted"  # the gateway accepted it; a delivery report may follow
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"  # not sent in time, or no delivery report within the validity period

    @property
    def final(self) -> bool:
        return self in (SmsStatus.DELIVERED, SmsStatus.FAILED, SmsStatus.EXPIRED)


class SmsKind(StrEnum):
    GUIDE = "guide"  # an item's full guide, after the caller said yes
    TICKET = "ticket"  # a callback ticket's number and next step
    MANUAL = "manual"  # sent by staff (POST /api/sms, hotline sms send)


class HandoffStatus(StrEnum):
    """open → assigned → attempted → resolved | unreachable, and assigned | attempted → open when an agent releases
    the ticket; `telephony.handoff.tickets.TRANSITIONS` is the table (docs/handoff.md draws it)."""

    OPEN = "open"  # waiting for an agent
    ASSIGNED = "assigned"  # an agent claimed it and has not called yet
    ATTEMPTED = "attempted"  # called at least once (`attempts`), not yet resolved
    RESOLVED = "resolved"
    UNREACHABLE = "unreachable"  # given up after the configured number of failed calls

    @property
    def final(self) -> bool:
        return self in (HandoffStatus.RESOLVED, HandoffStatus.UNREACHABLE)


class CallbackOutcome(StrEnum):
    """How one call back to the caller went."""

    REACHED = "reached"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    WRONG_NUMBER = "wrong_number"
    OTHER = "other"

    @property
    def failed(self) -> bool:
        return self is not CallbackOutcome.REACHED


class UserRole(StrEnum):
    AGENT = "agent"  # takes handed-off calls and callback tickets (/desk)
    SUPERVISOR = "supervisor"  # reviews calls, marks turns, proposes KB changes (/review); also works the desk
    KB_EDITOR = "kb_editor"  # reviews and applies proposed KB changes (/review/kb); before 0006: "editor"
    ADMIN = "admin"  # everything, and the accounts (/admin)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    channel: Mapped[CallChannel] = mapped_column(_enum(CallChannel, "call_channel"))
    caller_number: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[CallStatus] = mapped_column(_enum(CallStatus, "call_status"), default=CallStatus.ACTIVE)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    kb_version: Mapped[str | None] = mapped_column(String(64))
    recording_caller_path: Mapped[str | None] = mapped_column(String(512))
    recording_assistant_path: Mapped[str | None] = mapped_column(String(512))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))  # who took it (desk)
    agent_notes: Mapped[str] = mapped_column(Text, default="", server_default="")  # dated, signed lines

    turns: Mapped[list[Turn]] = relationship(back_populates="call", order_by="Turn.seq", cascade="all, delete-orphan")
    sms_messages: Mapped[list[SmsMessage]] = relationship(back_populates="call")
    handoff_tickets: Mapped[list[HandoffTicket]] = relationship(back_populates="call")


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("call_id", "seq", name="uq_turns_call_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    caller_text: Mapped[str] = mapped_column(Text)
    spoken_text: Mapped[str] = mapped_column(Text, default="")
    sms_text: Mapped[str] = mapped_column(Text, default="")
    item_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The services a clarifying reply offered to choose from or confirm (Answer.offered_items); NULL before 0002.
    offered_item_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    citations: Mapped[list[str]] = mapped_column(JSON, default=list)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # The SMS offer (0003): the caller's consent (None: nothing was offered), the masked number, the outbox message.
    sms_consent: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    sms_to: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sms_message_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    call: Mapped[Call] = relationship(back_populates="turns")


class SmsMessage(Base):
    """One message in the outbox. `reference` is the idempotency key: (call, item) for a guide, the ticket for a
    ticket SMS, the caller's key for staff sends; the same reference is never stored twice."""

    __tablename__ = "sms_messages"
    __table_args__ = (
        Index("ix_sms_messages_due", "status", "next_attempt_at"),
        Index("ix_sms_messages_phone_created", "phone", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(160), unique=True)
    kind: Mapped[SmsKind] = mapped_column(_enum(SmsKind, "sms_kind"), default=SmsKind.GUIDE)
    call_id: Mapped[str | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"), index=True)
    item_id: Mapped[str | None] = mapped_column(String(128))
    phone: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    length: Mapped[int] = mapped_column(Integer)
    segments: Mapped[int] = mapped_column(Integer)
    template_code: Mapped[str | None] = mapped_column(String(64))
    template_variables: Mapped[list[list[str]] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[SmsStatus] = mapped_column(_enum(SmsStatus, "sms_status"), default=SmsStatus.QUEUED)
    gateway: Mapped[str] = mapped_column(String(32))
    gateway_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    part_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sends: Mapped[int] = mapped_column(Integer, default=0)  # times the gateway accepted it (「再发一遍」 adds one)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)

    call: Mapped[Call | None] = relationship(back_populates="sms_messages")


class SmsReportLog(Base):
    """Every delivery report received, applied or not (unknown and replayed ones are kept here for staff)."""

    __tablename__ = "sms_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(32))
    gateway_message_id: Mapped[str | None] = mapped_column(String(128))
    reference: Mapped[str | None] = mapped_column(String(160))
    state: Mapped[str] = mapped_column(String(24))
    error_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("sms_messages.id", ondelete="SET NULL"))
    outcome: Mapped[str] = mapped_column(String(24))  # applied | unknown | replayed | ignored
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class HandoffTicket(Base):
    """A callback ticket: a caller handed to people, called back by an agent (lifecycle in handoff/tickets.py)."""

    __tablename__ = "handoff_tickets"
    __table_args__ = (Index("ix_handoff_tickets_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text)  # the handoff's reason as the dialogue gave it (free text)
    status: Mapped[HandoffStatus] = mapped_column(
        _enum(HandoffStatus, "handoff_status"), default=HandoffStatus.OPEN, index=True
    )
    callback_number: Mapped[str | None] = mapped_column(String(32))
    assigned_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    # 0004: why the handoff happened as a short machine value (HandoffTrigger: key_0, asked_for_human, ...), when
    # the callback is due (the next duty period's start after hours), what the agent reads before calling back,
    # calls made, and a counter every change bumps (conditional updates compare it).
    trigger: Mapped[str] = mapped_column(String(32), default="other", server_default="other")
    due_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    call: Mapped[Call] = relationship(back_populates="handoff_tickets")
    assigned_user: Mapped[User | None] = relationship()
    callback_attempts: Mapped[list[CallbackAttempt]] = relationship(
        back_populates="ticket", order_by="CallbackAttempt.id", cascade="all, delete-orphan"
    )


class CallbackAttempt(Base):
    """One call an agent made to a ticket's caller (0004)."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("handoff_tickets.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    outcome: Mapped[CallbackOutcome] = mapped_column(_enum(CallbackOutcome, "callback_outcome"))
    note: Mapped[str] = mapped_column(Text, default="")

    ticket: Mapped[HandoffTicket] = relationship(back_populates="callback_attempts")


class CallOutcome(StrEnum):
    """How a call ended, for review (computed when the call is indexed; telephony.review.index)."""

    ANSWERED = "answered"  # the first substantive reply was an answer
    CLARIFIED = "clarified"  # answered after one or more clarifying questions
    HANDED_OFF = "handed_off"  # went to a person: transfer, desk, or a callback ticket
    ABANDONED = "abandoned"  # ended with no answer and no handoff


class CallReview(Base):
    """One ended call as the review list shows and filters it: a summary computed once from its turns when the call
    is indexed. `doc_id` is the row id of the full-text index over `search_text` (jieba tokens of the transcript):
    an FTS5 table on SQLite, a GIN-indexed tsvector on PostgreSQL (telephony.review.search)."""

    __tablename__ = "call_reviews"
    __table_args__ = (
        Index("ix_call_reviews_started", "started_at"),
        Index("ix_call_reviews_outcome_started", "outcome", "started_at"),
    )

    doc_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), unique=True)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    channel: Mapped[str] = mapped_column(String(24))
    outcome: Mapped[CallOutcome] = mapped_column(_enum(CallOutcome, "call_outcome"))
    end_reason: Mapped[str | None] = mapped_column(String(64))
    turns: Mapped[int] = mapped_column(Integer, default=0)
    min_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)  # answer, clarify, handoff turns
    first_question: Mapped[str] = mapped_column(Text, default="")
    item_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    latencies_ms: Mapped[list[float]] = mapped_column(JSON, default=list)  # voice-to-voice, per spoken turn
    search_text: Mapped[str] = mapped_column(Text, default="")
    indexed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CallReviewItem(Base):
    """The items (and their categories) a call's turns answered or offered: the item and category filters."""

    __tablename__ = "call_review_items"
    __table_args__ = (Index("ix_call_review_items_category", "category", "doc_id"),)

    doc_id: Mapped[int] = mapped_column(ForeignKey("call_reviews.doc_id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), default="")


Index("ix_call_review_items_item", CallReviewItem.item_id, CallReviewItem.doc_id)


class QaLabel(StrEnum):
    CORRECT = "correct"
    WRONG_ANSWER = "wrong_answer"
    INCOMPLETE = "incomplete"
    SHOULD_HAVE_HANDED_OFF = "should_have_handed_off"
    ASR_ERROR = "asr_error"


class QaMarkRow(Base):
    """A supervisor's QA mark on one turn (the latest mark replaces the earlier one; the audit log keeps both)."""

    __tablename__ = "qa_marks"
    __table_args__ = (UniqueConstraint("call_id", "turn_seq", name="uq_qa_marks_turn"),
                      Index("ix_qa_marks_marked_at", "marked_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    turn_seq: Mapped[int] = mapped_column(Integer)
    label: Mapped[QaLabel] = mapped_column(_enum(QaLabel, "qa_label"))
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewer: Mapped[str] = mapped_column(String(64))
    marked_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class QaSample(Base):
    """The calls drawn at random for QA on one day (China time), so accuracy is measured on a fair sample."""

    __tablename__ = "qa_samples"

    day: Mapped[dt.date] = mapped_column(primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True)
    drawn_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class KbChangeKind(StrEnum):
    ADD_QUESTION = "add_question"  # the caller's words become a question of an existing item
    NEW_ITEM = "new_item"  # a draft of a new item


class KbChangeStatus(StrEnum):
    PROPOSED = "proposed"
    APPLIED = "applied"  # written to the item files and built into a published KB version
    REJECTED = "rejected"


class KbChange(Base):
    """A change to the KB proposed from a reviewed turn; a KB editor applies it through the KB build or rejects it."""

    __tablename__ = "kb_changes"
    __table_args__ = (Index("ix_kb_changes_status", "status", "proposed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[KbChangeKind] = mapped_column(_enum(KbChangeKind, "kb_change_kind"))
    status: Mapped[KbChangeStatus] = mapped_column(_enum(KbChangeStatus, "kb_change_status"),
                                                   default=KbChangeStatus.PROPOSED)
    item_id: Mapped[str] = mapped_column(String(128))  # the item to extend, or the new item's id
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"question": ...} or the draft's fields
    call_id: Mapped[str | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"))
    turn_seq: Mapped[int | None] = mapped_column(Integer)
    proposed_by: Mapped[str] = mapped_column(String(64))
    proposed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    decision_note: Mapped[str] = mapped_column(Text, default="")
    kb_version: Mapped[str | None] = mapped_column(String(64))  # the build that first carried it


class AuditEntry(Base):
    """Who listened to, exported, unmasked or changed what, and when. Append-only: the database refuses UPDATE and
    DELETE on this table (triggers in migration 0006), whatever the application does."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    user_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: the log outlives accounts
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))  # listen | export | unmask | qa_mark | kb_change | user | retention
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
