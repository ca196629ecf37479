"""Tables: calls, turns, SMS messages, handoff tickets, users (SQLAlchemy 2 typed mappings)."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from sqlalchemy import JSON, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
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
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


class HandoffStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    CALLBACK_SCHEDULED = "callback_scheduled"
    CLOSED = "closed"


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

    call: Mapped[Call] = relationship(back_populates="turns")


class SmsMessage(Base):
    __tablename__ = "sms_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"), index=True)
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    phone: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[SmsStatus] = mapped_column(_enum(SmsStatus, "sms_status"), default=SmsStatus.QUEUED, index=True)
    gateway: Mapped[str] = mapped_column(String(32), default="outbox")
    gateway_message_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    call: Mapped[Call | None] = relationship(back_populates="sms_messages")


class HandoffTicket(Base):
    __tablename__ = "handoff_tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[HandoffStatus] = mapped_column(
        _enum(HandoffStatus, "handoff_status"), default=HandoffStatus.OPEN, index=True
    )
    callback_number: Mapped[str | None] = mapped_column(String(32))
    assigned_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    call: Mapped[Call] = relationship(back_populates="handoff_tickets")
