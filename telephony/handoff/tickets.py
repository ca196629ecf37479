"""The callback ticket lifecycle: one transition table, and the desk agents work tickets through (open, list, claim,
record attempts, resolve, release, notes). Blocking (SQLAlchemy): call it from a thread in async code.

    open ─claim─▶ assigned ─attempt─▶ attempted ─resolve─▶ resolved
                                        attempted ─attempt─▶ attempted, or unreachable at the failed-call limit
    assigned | attempted ─release─▶ open

Every change is one conditional UPDATE (`WHERE status = … AND version = …`), so two agents acting on one ticket at
the same moment cannot both succeed: the second gets `TicketAlreadyClaimed` or `TicketChangedError`. `claim_next`
reads with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so workers pass over a ticket another is taking; SQLite has one
writer at a time and the conditional UPDATE decides there.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from telephony.errors import StorageError, TelephonyError
from telephony.handoff.accounts import CALLBACK_ROLES, require_active_user
from telephony.handoff.base import HandoffTrigger
from telephony.handoff.office_hours import OfficeHours
from telephony.sms.compose import mask
from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallbackAttempt,
    CallbackOutcome,
    HandoffStatus,
    HandoffTicket,
    User,
    UserRole,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILED_ATTEMPTS = 3  # failed calls after which a ticket is given up as unreachable
MAX_NOTE_CHARS = 2000
# Who may release a ticket another agent holds (the agent went home, fell ill).
RELEASE_OVERRIDE_ROLES = frozenset({UserRole.SUPERVISOR, UserRole.ADMIN})

_S = HandoffStatus
TRANSITIONS: dict[HandoffStatus, frozenset[HandoffStatus]] = {
    _S.OPEN: frozenset({_S.ASSIGNED}),
    _S.ASSIGNED: frozenset({_S.ATTEMPTED, _S.OPEN}),
    _S.ATTEMPTED: frozenset({_S.ATTEMPTED, _S.RESOLVED, _S.UNREACHABLE, _S.OPEN}),
    _S.RESOLVED: frozenset(),
    _S.UNREACHABLE: frozenset(),
}


# Reasons given as prose only (an old caller of `TicketDesk.open`, a `HandoffRequest` without `kind`): these prefixes
# of the texts rag/engine.py and telephony/calls write map them to the machine value.
_TRIGGER_PREFIXES: tuple[tuple[str, HandoffTrigger], ...] = (
    ("caller pressed 0", HandoffTrigger.KEY_0),
    ("caller asked for a human", HandoffTrigger.ASKED_FOR_HUMAN),
    ("low confidence", HandoffTrigger.LOW_CONFIDENCE),
    ("misunderstood", HandoffTrigger.MISUNDERSTOOD_TWICE),
    ("complaint", HandoffTrigger.COMPLAINT),
    ("crisis", HandoffTrigger.CRISIS),
    ("out of scope", HandoffTrigger.OUT_OF_SCOPE),
    ("abusive", HandoffTrigger.ABUSE),
    ("asr unavailable", HandoffTrigger.ASR_UNAVAILABLE),
)


def classify_trigger(reason: str) -> HandoffTrigger:
    """The machine value of a handoff reason: a value itself ("key_0"), or the dialogue's prose ("caller pressed 0")."""
    text = reason.strip().lower()
    try:
        return HandoffTrigger(text)
    except ValueError:
        pass
    return next((trigger for prefix, trigger in _TRIGGER_PREFIXES if text.startswith(prefix)), HandoffTrigger.OTHER)


class TicketError(TelephonyError):
    """A ticket operation was refused."""


class UnknownTicketError(TicketError):
    def __init__(self, ticket_id: int) -> None:
        super().__init__(f"no ticket {ticket_id}")
        self.ticket_id = ticket_id


class InvalidTicketTransition(TicketError):
    def __init__(self, ticket_id: int, current: HandoffStatus, target: HandoffStatus) -> None:
        allowed = ", ".join(sorted(state.value for state in TRANSITIONS[current])) or "none, it is final"
        super().__init__(f"ticket {ticket_id} cannot go from {current.value} to {target.value} "
                         f"(from {current.value}: {allowed})")
        self.ticket_id, self.current, self.target = ticket_id, current, target


class TicketAlreadyClaimed(TicketError):
    def __init__(self, ticket_id: int, owner: str | None) -> None:
        super().__init__(f"ticket {ticket_id} is already claimed" + (f" by {owner}" if owner else ""))
        self.ticket_id, self.owner = ticket_id, owner


class NotTicketOwnerError(TicketError):
    def __init__(self, ticket_id: int, username: str, owner: str | None) -> None:
        held = f"held by {owner}" if owner else "not held by anyone"
        super().__init__(f"ticket {ticket_id} is {held}, not by {username}: only its owner may do this")
        self.ticket_id, self.username, self.owner = ticket_id, username, owner


class TicketChangedError(TicketError):
    """Someone changed the ticket between reading and writing it; reload and try again."""

    def __init__(self, ticket_id: int) -> None:
        super().__init__(f"ticket {ticket_id} was changed by someone else at the same moment; reload it and try again")
        self.ticket_id = ticket_id


class NotAllowedError(TicketError):
    def __init__(self, username: str, role: UserRole) -> None:
        roles = ", ".join(sorted(role.value for role in CALLBACK_ROLES))
        super().__init__(f"user {username} is {role.value}: tickets are worked by {roles}")


def check_transition(ticket_id: int, current: HandoffStatus, target: HandoffStatus) -> None:
    """The one place a move is judged legal; `InvalidTicketTransition` otherwise."""
    if target not in TRANSITIONS[current]:
        raise InvalidTicketTransition(ticket_id, current, target)


def due_time(created: dt.datetime, calendar: OfficeHours | None) -> dt.datetime:
    """When the callback is due: at once in office hours (or without a calendar), else at the next duty period's
    start; a calendar with no opening ahead leaves it due at once, for whoever looks first."""
    if calendar is None or calendar.is_open(created):
        return created
    return calendar.next_opening(created) or created


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def ticket_summary(ticket: HandoffTicket) -> dict[str, Any]:
    """A ticket as the CLI and the desk show it: the number masked, the owner by username."""
    context = ticket.context or {}
    owner = ticket.assigned_user.username if ticket.assigned_user_id and ticket.assigned_user else None
    return {
        "id": ticket.id, "state": ticket.status.value, "trigger": ticket.trigger,
        "due_at": _aware(ticket.due_at).isoformat(), "number": mask(ticket.callback_number or ""),
        "attempts": ticket.attempts, "owner": owner, "question": context.get("question", ""),
        "call_id": ticket.call_id, "created_at": _aware(ticket.created_at).isoformat(),
        "resolved_at": _aware(ticket.resolved_at).isoformat() if ticket.resolved_at else None,
    }


class TicketDesk:
    """Callback tickets over a `Database`: open them (the after-hours handoff) and work them (agents)."""

    def __init__(self, database: Database, office_hours: OfficeHours | None = None,
                 max_failed_attempts: int = DEFAULT_MAX_FAILED_ATTEMPTS,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        if max_failed_attempts < 1:
            raise ValueError("max_failed_attempts must be at least 1")
        self.database = database
        self.office_hours = office_hours
        self.max_failed_attempts = max_failed_attempts
        self.clock = clock

    def _now(self) -> dt.datetime:
        # UTC: SQLite stores the wall-clock digits without the offset, so every stored time must be in one zone.
        return self.clock().astimezone(dt.UTC)

    # -- opening and reading -------------------------------------------------------------------

    def open(self, call_id: str, reason: str, *, trigger: HandoffTrigger | str | None = None,
             callback_number: str | None = None, context: dict[str, Any] | None = None,
             turn_id: int | None = None) -> HandoffTicket:
        now = self._now()
        due = due_time(now, self.office_hours).astimezone(dt.UTC)
        with self.database.session() as session:
            if session.get(Call, call_id) is None:
                raise StorageError(f"no call {call_id}")
            ticket = HandoffTicket(call_id=call_id, turn_id=turn_id, reason=reason,
                                   trigger=str(trigger or classify_trigger(reason)), callback_number=callback_number,
                                   context=dict(context or {}), created_at=now, updated_at=now, due_at=due)
            session.add(ticket)
        log.info("call %s: ticket %s opened (%s), due %s", call_id, ticket.id, ticket.trigger, due.isoformat())
        return ticket

    def get(self, ticket_id: int) -> HandoffTicket:
        with self.database.session() as session:
            return self._load(session, ticket_id)

    def list(self, status: HandoffStatus | str | None = None, owner: int | None = None,
             due_before: dt.datetime | None = None, limit: int | None = None) -> list[HandoffTicket]:
        """Tickets, the earliest due first; `owner` is a user id."""
        query = (select(HandoffTicket).options(selectinload(HandoffTicket.assigned_user))
                 .order_by(HandoffTicket.due_at, HandoffTicket.id))
        if status is not None:
            query = query.where(HandoffTicket.status == HandoffStatus(status))
        if owner is not None:
            query = query.where(HandoffTicket.assigned_user_id == owner)
        if due_before is not None:
            query = query.where(HandoffTicket.due_at <= due_before.astimezone(dt.UTC))
        if limit is not None:
            query = query.limit(limit)
        with self.database.session() as session:
            return list(session.scalars(query))

    def attempts_of(self, ticket_id: int) -> list[CallbackAttempt]:
        with self.database.session() as session:
            self._load(session, ticket_id)
            return list(session.scalars(select(CallbackAttempt).where(CallbackAttempt.ticket_id == ticket_id)
                                        .order_by(CallbackAttempt.id)))

    # -- claiming ------------------------------------------------------------------------------

    def claim(self, ticket_id: int, user_id: int) -> HandoffTicket:
        """Assign an open ticket to this agent; `TicketAlreadyClaimed` when another agent (or this one) holds it."""
        now = self._now()
        with self.database.session() as session:
            self._worker(session, user_id)
            if self._take(session, ticket_id, user_id, now):
                return self._load(session, ticket_id)
            ticket = self._load(session, ticket_id)
            if ticket.status in (HandoffStatus.ASSIGNED, HandoffStatus.ATTEMPTED):
                raise TicketAlreadyClaimed(ticket_id, ticket.assigned_user.username if ticket.assigned_user else None)
            check_transition(ticket_id, ticket.status, HandoffStatus.ASSIGNED)
            raise TicketChangedError(ticket_id)  # open again by now: it was claimed and released meanwhile

    def claim_next(self, user_id: int, due_before: dt.datetime | None = None) -> HandoffTicket | None:
        """Take the open ticket due earliest; None when none is open (or none is due by `due_before`)."""
        now = self._now()
        with self.database.session() as session:
            self._worker(session, user_id)
            while True:
                query = (select(HandoffTicket.id).where(HandoffTicket.status == HandoffStatus.OPEN)
                         .order_by(HandoffTicket.due_at, HandoffTicket.id).limit(1)
                         .with_for_update(skip_locked=True))  # ignored on SQLite, where `_take` alone decides
                if due_before is not None:
                    query = query.where(HandoffTicket.due_at <= due_before.astimezone(dt.UTC))
                ticket_id = session.scalar(query)
                if ticket_id is None:
                    return None
                if self._take(session, ticket_id, user_id, now):
                    return self._load(session, ticket_id)
                # Another worker took it between our read and our write (SQLite): look again.

    # -- working a claimed ticket --------------------------------------------------------------

    def record_attempt(self, ticket_id: int, user_id: int, outcome: CallbackOutcome | str,
                       note: str = "") -> HandoffTicket:
        """Record a call to the caller (only the owner). When the failed calls reach `max_failed_attempts` the
        ticket becomes unreachable; otherwise it is attempted, to be resolved or called again."""
        outcome = CallbackOutcome(outcome)
        note = self._checked_note(note, required=False)
        now = self._now()
        with self.database.session() as session:
            user = self._worker(session, user_id)
            ticket = self._owned(session, ticket_id, user)
            check_transition(ticket_id, ticket.status, HandoffStatus.ATTEMPTED)
            failed = session.scalar(select(func.count(CallbackAttempt.id)).where(
                CallbackAttempt.ticket_id == ticket_id, CallbackAttempt.outcome != CallbackOutcome.REACHED))
            failed += 1 if outcome.failed else 0
            target = HandoffStatus.ATTEMPTED
            if outcome.failed and failed >= self.max_failed_attempts:
                check_transition(ticket_id, HandoffStatus.ATTEMPTED, HandoffStatus.UNREACHABLE)
                target = HandoffStatus.UNREACHABLE
            self._move(session, ticket, target, now, attempts=HandoffTicket.attempts + 1)
            session.add(CallbackAttempt(ticket_id=ticket_id, user_id=user.id, at=now, outcome=outcome, note=note))
            session.flush()
            log.info("ticket %s: attempt by %s: %s (%s failed) -> %s", ticket_id, user.username, outcome.value,
                     failed, target.value)
            return self._load(session, ticket_id)

    def resolve(self, ticket_id: int, user_id: int, note: str) -> HandoffTicket:
        """Close the ticket as done (only the owner, after at least one attempt); the note says what was agreed."""
        note = self._checked_note(note, required=True)
        now = self._now()
        with self.database.session() as session:
            user = self._worker(session, user_id)
            ticket = self._owned(session, ticket_id, user)
            check_transition(ticket_id, ticket.status, HandoffStatus.RESOLVED)
            self._move(session, ticket, HandoffStatus.RESOLVED, now, resolved_at=now,
                       note=_append(ticket.note, now, user.username, note))
            return self._load(session, ticket_id)

    def release(self, ticket_id: int, user_id: int, note: str = "") -> HandoffTicket:
        """Give the ticket back to the queue (its owner, or a supervisor or admin for anyone's)."""
        note = self._checked_note(note, required=False)
        now = self._now()
        with self.database.session() as session:
            user = self._worker(session, user_id)
            ticket = self._owned(session, ticket_id, user, override=user.role in RELEASE_OVERRIDE_ROLES)
            check_transition(ticket_id, ticket.status, HandoffStatus.OPEN)
            self._move(session, ticket, HandoffStatus.OPEN, now, assigned_user_id=None,
                       note=_append(ticket.note, now, user.username, note or "released"))
            return self._load(session, ticket_id)

    def add_note(self, ticket_id: int, user_id: int, note: str) -> HandoffTicket:
        """Append a dated, signed line to the ticket's notes (any active staff member, in any state)."""
        note = self._checked_note(note, required=True)
        now = self._now()
        with self.database.session() as session:
            user = require_active_user(session, user_id)
            ticket = self._load(session, ticket_id)
            self._move(session, ticket, ticket.status, now, note=_append(ticket.note, now, user.username, note))
            return self._load(session, ticket_id)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _load(session: Session, ticket_id: int) -> HandoffTicket:
        ticket = session.scalar(select(HandoffTicket).where(HandoffTicket.id == ticket_id)
                                .options(selectinload(HandoffTicket.assigned_user))
                                .execution_options(populate_existing=True))
        if ticket is None:
            raise UnknownTicketError(ticket_id)
        return ticket

    @staticmethod
    def _worker(session: Session, user_id: int) -> User:
        user = require_active_user(session, user_id)
        if user.role not in CALLBACK_ROLES:
            raise NotAllowedError(user.username, user.role)
        return user

    def _owned(self, session: Session, ticket_id: int, user: User, override: bool = False) -> HandoffTicket:
        ticket = self._load(session, ticket_id)
        if ticket.status.final or ticket.status is HandoffStatus.OPEN:
            return ticket  # the transition check names what is wrong
        if ticket.assigned_user_id != user.id and not override:
            owner = ticket.assigned_user.username if ticket.assigned_user else None
            raise NotTicketOwnerError(ticket_id, user.username, owner)
        return ticket

    @staticmethod
    def _take(session: Session, ticket_id: int, user_id: int, now: dt.datetime) -> bool:
        result = session.execute(
            update(HandoffTicket)
            .where(HandoffTicket.id == ticket_id, HandoffTicket.status == HandoffStatus.OPEN)
            .values(status=HandoffStatus.ASSIGNED, assigned_user_id=user_id, updated_at=now,
                    version=HandoffTicket.version + 1)
            .execution_options(synchronize_session=False))
        return result.rowcount == 1

    @staticmethod
    def _move(session: Session, ticket: HandoffTicket, target: HandoffStatus, now: dt.datetime, **values) -> None:
        result = session.execute(
            update(HandoffTicket)
            .where(HandoffTicket.id == ticket.id, HandoffTicket.version == ticket.version,
                   HandoffTicket.status == ticket.status)
            .values(status=target, updated_at=now, version=HandoffTicket.version + 1, **values)
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise TicketChangedError(ticket.id)

    @staticmethod
    def _checked_note(note: str, required: bool) -> str:
        note = (note or "").strip()
        if required and not note:
            raise TicketError("the note is empty")
        if len(note) > MAX_NOTE_CHARS:
            raise TicketError(f"the note is too long: at most {MAX_NOTE_CHARS} characters")
        return note


class UnknownCallError(TicketError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call {call_id}")
        self.call_id = call_id


class NotCallAgentError(TicketError):
    def __init__(self, call_id: str, username: str) -> None:
        super().__init__(f"call {call_id} was not taken by {username}: only its agent (or a supervisor) adds notes")
        self.call_id, self.username = call_id, username


def add_call_note(database: Database, call_id: str, user_id: int, note: str,
                  now: dt.datetime | None = None) -> str:
    """Append a dated, signed line to the notes of a call an agent took at the desk (during it or after); returns
    all the call's notes. Only the call's agent, a supervisor or an admin may."""
    note = TicketDesk._checked_note(note, required=True)
    with database.session() as session:
        user = require_active_user(session, user_id)
        call = session.scalar(select(Call).where(Call.id == call_id).with_for_update())
        if call is None:
            raise UnknownCallError(call_id)
        if call.agent_id != user.id and user.role not in RELEASE_OVERRIDE_ROLES:
            raise NotCallAgentError(call_id, user.username)
        call.agent_notes = _append(call.agent_notes or "", now or utcnow(), user.username, note)
        return call.agent_notes


def _append(notes: str, now: dt.datetime, username: str, note: str) -> str:
    if not note:
        return notes
    line = f"[{now.astimezone(dt.UTC):%Y-%m-%d %H:%M}Z {username}] {note}"
    return f"{notes}\n{line}" if notes else line
