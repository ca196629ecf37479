"""The audit log: who listened to, exported, unmasked or changed what. Rows are only ever added (the database itself
refuses UPDATE and DELETE on audit_log, migration 0006); reading it is for supervisors and admins."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from telephony.store.database import Database
from telephony.store.models import AuditEntry


class Actor(Protocol):
    """Who did it: a signed-in staff member (`telephony.web.staff_auth.Staff`) or a CLI operator."""

    @property
    def user_id(self) -> int | None: ...

    @property
    def username(self) -> str: ...


@dataclass(frozen=True)
class Operator:
    """An actor outside the web pages: `hotline` commands run by a named operator, or the system itself."""

    username: str
    user_id: int | None = None


SYSTEM = Operator("system")


class AuditAction:
    LISTEN = "listen"  # played a call's recording
    EXPORT = "export"  # exported the call list (detail: format, rows, masked)
    UNMASK = "unmask"  # showed a call's personal data unmasked
    QA_MARK = "qa_mark"
    KB_CHANGE = "kb_change"  # proposed, applied or rejected a KB change
    USER = "user"  # added an account, reset a password, changed a role, deactivated
    RETENTION = "retention"  # deleted old recordings and transcripts


def record(session: Session, actor: Actor, action: str, target: str = "", **detail: Any) -> None:
    """Add an entry in `session`'s transaction: it is written with the change it records, or not at all."""
    session.add(AuditEntry(user_id=actor.user_id, username=actor.username, action=action, target=target[:200],
                           detail=detail))


def write(database: Database, actor: Actor, action: str, target: str = "", **detail: Any) -> None:
    """Add an entry in a transaction of its own (for reads: a listen, an export)."""
    with database.session() as session:
        record(session, actor, action, target, **detail)


@dataclass(frozen=True)
class AuditView:
    id: int
    at: dt.datetime
    username: str
    action: str
    target: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "username": self.username, "action": self.action,
                "target": self.target, "detail": self.detail}


def entries(database: Database, action: str | None = None, limit: int = 100,
            offset: int = 0) -> tuple[list[AuditView], int]:
    """Newest first, and how many there are."""
    query = select(AuditEntry)
    count = select(func.count()).select_from(AuditEntry)
    if action:
        query = query.where(AuditEntry.action == action)
        count = count.where(AuditEntry.action == action)
    with database.session() as session:
        rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)).all()
        total = session.scalar(count) or 0
        return [AuditView(r.id, r.at, r.username, r.action, r.target, dict(r.detail or {})) for r in rows], total
