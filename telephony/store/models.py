"""Tables: calls, turns, SMS messages, handoff tickets and their callback attempts, users (SQLAlchemy 2 typed
mappings)."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Enum, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex


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
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    EDITOR = "editor"
    ADMIN = "admin"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    channel: Mapped[CallChannel] = mapped_column(_enum(CallChannel, "call_channel"))
    caller_number: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[CallStatus] = mapped_column(_enum(CallStatus, "call_status"), default=CallStatus.ACTIVE)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
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
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

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
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # 0004: why the handoff happened as a short machine value (HandoffTrigger: key_0, asked_for_human, ...), when
    # the callback is due (the next duty period's start after hours), what the agent reads before calling back,
    # calls made, and a counter every change bumps (conditional updates compare it).
    trigger: Mapped[str] = mapped_column(String(32), default="other", server_default="other")
    due_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
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
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    outcome: Mapped[CallbackOutcome] = mapped_column(_enum(CallbackOutcome, "callback_outcome"))
    note: Mapped[str] = mapped_column(Text, default="")

    ticket: Mapped[HandoffTicket] = relationship(back_populates="callback_attempts")
