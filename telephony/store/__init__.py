"""Persistence: SQLAlchemy models, Alembic migrations and the repository the app uses."""

from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallChannel,
    CallStatus,
    HandoffStatus,
    HandoffTicket,
    SmsMessage,
    SmsStatus,
    Turn,
    User,
    UserRole,
)

__all__ = [
    "Call", "CallChannel", "CallStatus", "Database", "HandoffStatus", "HandoffTicket",
    "SmsMessage", "SmsStatus", "Turn", "User", "UserRole",
]
