"""Persistence: SQLAlchemy models, Alembic migrations and the repository the app uses."""

from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallChannel,
    CallStatus,
    HandoffStatus,
    HandoffTicket,
    SmsKind,
    SmsMessage,
    SmsReportLog,
    SmsStatus,
    Turn,
    User,
    UserRole,
)

__all__ = [
    "Call", "CallChannel", "CallStatus", "Database", "HandoffStatus", "HandoffTicket",
    "SmsKind", "SmsMessage", "SmsReportLog", "SmsStatus", "Turn", "User", "UserRole",
]
