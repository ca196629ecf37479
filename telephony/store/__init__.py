"""Persistence: SQLAlchemy models, Alembic migrations and the repository the app uses."""

from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallbackAttempt,
    CallbackOutcome,
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
    "Call", "CallbackAttempt", "CallbackOutcome", "CallChannel", "CallStatus", "Database", "HandoffStatus",
    "HandoffTicket", "SmsKind", "SmsMessage", "SmsReportLog", "SmsStatus", "Turn", "User", "UserRole",
]
