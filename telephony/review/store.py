"""The supervisors' view of calls: the filtered, searched, paged call list; a call's detail (turns, SMS, tickets,
QA marks, recordings); QA marks; the daily random QA sample. One API over SQLite and PostgreSQL (the search is
dialect-specific underneath: telephony.review.search). Blocking: call it from a thread in async code.

Texts come back as stored; masking personal data for a role is the caller's (`telephony.review.privacy`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session, defer

from rag.extractive import AnswerPolicy
from telephony.errors import TelephonyError
from telephony.review import audit
from telephony.review.audit import Actor
from telephony.review.search import matches
from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallOutcome,
    CallReview,
    CallReviewItem,
    HandoffStatus,
    HandoffTicket,
    QaLabel,
    QaMarkRow,
    QaSample,
    SmsMessage,
    SmsStatus,
    Turn,
)

LOCAL_TIME = ZoneInfo("Asia/Shanghai")
MAX_PAGE_SIZE = 200
EXPORT_MAX_ROWS = 100_000
MAX_COMMENT_CHARS = 1000
_POLICY = AnswerPolicy(centre_phone="", sms_signature="")  # only its default thresholds
# Confidence bands over a call's lowest answer/clarify confidence, at the answer policy's own thresholds.
CONFIDENCE_BANDS = {"high": (_POLICY.high_confidence, None), "medium": (_POLICY.named_confidence,
                                                                          _POLICY.high_confidence),
                    "low": (None, _POLICY.named_confidence)}
SMS_STATES = ("none", *(status.value for status in SmsStatus))
TICKET_STATES = ("none", *(status.value for status in HandoffStatus))


class ReviewError(TelephonyError):
    """A review request that cannot be served; `detail` is what staff read."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownCall(ReviewError):
    status = 404

    def __init__(self, call_id: str) -> None:
        super().__init__(f"没有这个通话：{call_id}")


class UnknownTurn(ReviewError):
    status = 404

    def __init__(self, call_id: str, seq: int) -> None:
        super().__init__(f"通话 {call_id} 没有第 {seq} 轮")


class NotIndexedYet(ReviewError):
    status = 409


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class CallQuery:
    """The call list's filters (all optional) and page."""

    started_from: dt.datetime | None = None
    started_to: dt.datetime | None = None  # exclusive
    outcome: CallOutcome | None = None
    confidence: str | None = None  # high | medium | low (CONFIDENCE_BANDS)
    item_id: str | None = None
    category: str | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    sms_state: str | None = None  # none | queued | … | delivered | failed | expired
    ticket_state: str | None = None  # none | open | assigned | attempted | resolved | unreachable
    channel: str | None = None
    text: str | None = None  # full-text search over the transcript
    sampled_on: dt.date | None = None  # only the QA sample of this day
    page: int = 1
    page_size: int = 50

    def __post_init__(self) -> None:
        if self.page < 1:
            raise ReviewError("页码从1开始")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ReviewError(f"每页条数应在1到{MAX_PAGE_SIZE}之间")
        if self.confidence is not None and self.confidence not in CONFIDENCE_BANDS:
            raise ReviewError("置信度档位应为 high、medium 或 low")
        if self.sms_state is not None and self.sms_state not in SMS_STATES:
            raise ReviewError(f"短信状态应为：{'、'.join(SMS_STATES)}")
        if self.ticket_state is not None and self.ticket_state not in TICKET_STATES:
            raise ReviewError(f"回访单状态应为：{'、'.join(TICKET_STATES)}")
        if (self.started_from and self.started_to and self.started_from >= self.started_to):
            raise ReviewError("开始日期应早于结束日期")


@dataclass(frozen=True)
class CallRow:
    """One line of the call list."""

    call_id: str
    started_at: dt.datetime
    duration_s: float
    channel: str
    outcome: str
    turns: int
    min_confidence: float | None
    first_question: str
    item_ids: list[str]
    categories: list[str]
    caller_number: str | None
    sms_state: str | None = None  # the call's latest message, if any
    ticket_state: str | None = None
    qa_marks: int = 0

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["started_at"] = _iso(self.started_at)
        return values


@dataclass(frozen=True)
class CallPage:
    rows: list[CallRow]
    total: int
    page: int
    page_size: int

    def to_json(self) -> dict[str, Any]:
        return {"rows": [row.to_json() for row in self.rows], "total": self.total, "page": self.page,
                "page_size": self.page_size, "pages": max(1, -(-self.total // self.page_size))}


@dataclass(frozen=True)
class TurnDetail:
    seq: int
    at: dt.datetime
    offset_s: float  # from the call's start: where the turn is in the recording
    caller_text: str
    spoken_text: str
    sms_text: str
    action: str
    reason: str
    confidence: float
    item_ids: list[str]
    offered_item_ids: list[str]
    citations: list[str]
    timings_ms: dict[str, float]
    sms_consent: bool | None
    sms_to: str | None
    sms_message_id: int | None
    qa: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["at"] = _iso(self.at)
        return values


@dataclass(frozen=True)
class CallDetail:
    call_id: str
    channel: str
    caller_number: str | None
    status: str
    end_reason: str | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    kb_version: str | None
    agent_notes: str
    has_recording: bool
    outcome: str | None
    turns: list[TurnDetail]
    sms: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[dict[str, Any]] = field(default_factory=list)
    sampled_on: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["started_at"] = _iso(self.started_at)
        values["ended_at"] = _iso(self.ended_at)
        values["turns"] = [turn.to_json() for turn in self.turns]
        return values


def local_day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), LOCAL_TIME)
    return start.astimezone(dt.UTC), (start + dt.timedelta(days=1)).astimezone(dt.UTC)


class ReviewStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # -- the list ------------------------------------------------------------------------------------------

    def _filtered(self, query: CallQuery, base: Select) -> Select:
        review = CallReview
        if query.started_from is not None:
            base = base.where(review.started_at >= query.started_from)
        if query.started_to is not None:
            base = base.where(review.started_at < query.started_to)
        if query.outcome is not None:
            base = base.where(review.outcome == CallOutcome(query.outcome))
        if query.confidence is not None:
            low, high = CONFIDENCE_BANDS[query.confidence]
            if low is not None:
                base = base.where(review.min_confidence >= low)
            if high is not None:
                base = base.where(review.min_confidence < high)
        if query.item_id:
            base = base.where(exists().where(CallReviewItem.doc_id == review.doc_id,
                                             CallReviewItem.item_id == query.item_id))
        if query.category:
            base = base.where(exists().where(CallReviewItem.doc_id == review.doc_id,
                                             CallReviewItem.category == query.category))
        if query.min_duration_s is not None:
            base = base.where(review.duration_s >= query.min_duration_s)
        if query.max_duration_s is not None:
            base = base.where(review.duration_s <= query.max_duration_s)
        if query.channel:
            base = base.where(review.channel == query.channel)
        if query.sms_state:
            any_sms = exists().where(SmsMessage.call_id == review.call_id)
            if query.sms_state == "none":
                base = base.where(~any_sms)
            else:
                base = base.where(exists().where(SmsMessage.call_id == review.call_id,
                                                 SmsMessage.status == SmsStatus(query.sms_state)))
        if query.ticket_state:
            any_ticket = exists().where(HandoffTicket.call_id == review.call_id)
            if query.ticket_state == "none":
                base = base.where(~any_ticket)
            else:
                base = base.where(exists().where(HandoffTicket.call_id == review.call_id,
                                                 HandoffTicket.status == HandoffStatus(query.ticket_state)))
        if query.sampled_on is not None:
            base = base.where(exists().where(QaSample.call_id == review.call_id, QaSample.day == query.sampled_on))
        if query.text and query.text.strip():
            try:
                base = base.where(matches(self.database.dialect, query.text))
            except ValueError as exc:
                raise ReviewError(str(exc)) from None
        return base

    def list_calls(self, query: CallQuery) -> CallPage:
        """One page of matching calls, newest first, and how many match."""
        count_query = self._filtered(query, select(func.count()).select_from(CallReview))
        with self.database.session() as session:
            rows = self._page(session, query)
            return CallPage(rows, session.scalar(count_query) or 0, query.page, query.page_size)

    def iter_calls(self, query: CallQuery, limit: int = EXPORT_MAX_ROWS) -> Iterator[CallRow]:
        """Every matching call, newest first, up to `limit` (the export), fetched a page at a time (no counts)."""
        page, sent = 1, 0
        while sent < limit:
            with self.database.session() as session:
                rows = self._page(session, CallQuery(**{**asdict(query), "page": page, "page_size": MAX_PAGE_SIZE}))
            for row in rows[:limit - sent]:
                yield row
                sent += 1
            if len(rows) < MAX_PAGE_SIZE:
                return
            page += 1

    def _page(self, session: Session, query: CallQuery) -> list[CallRow]:
        # The page's ids first, sorting only (started_at, doc_id) of every match; then those rows in full (a search
        # for a common word matches tens of thousands of calls: sorting whole rows would cost 10x more).
        order = (CallReview.started_at.desc(), CallReview.doc_id.desc())
        ids_query = (self._filtered(query, select(CallReview.doc_id)).order_by(*order)
                     .limit(query.page_size).offset((query.page - 1) * query.page_size))
        doc_ids = list(session.scalars(ids_query))
        if not doc_ids:
            return []
        found = session.execute(
            select(CallReview, Call.caller_number).join(Call, Call.id == CallReview.call_id)
            .where(CallReview.doc_id.in_(doc_ids)).options(defer(CallReview.search_text)).order_by(*order)).all()
        return self._rows(session, found)

    @staticmethod
    def _rows(session: Session, found: list) -> list[CallRow]:
        call_ids = [review.call_id for review, _number in found]
        sms_state: dict[str, str] = {}
        ticket_state: dict[str, str] = {}
        marks: dict[str, int] = {}
        if call_ids:
            for call_id, status in session.execute(select(SmsMessage.call_id, SmsMessage.status)
                                                   .where(SmsMessage.call_id.in_(call_ids))
                                                   .order_by(SmsMessage.id)):
                sms_state[call_id] = status.value
            for call_id, status in session.execute(select(HandoffTicket.call_id, HandoffTicket.status)
                                                   .where(HandoffTicket.call_id.in_(call_ids))
                                                   .order_by(HandoffTicket.id)):
                ticket_state[call_id] = status.value
            marks = dict(session.execute(select(QaMarkRow.call_id, func.count()).where(
                QaMarkRow.call_id.in_(call_ids)).group_by(QaMarkRow.call_id)).all())
        return [CallRow(review.call_id, review.started_at, review.duration_s, review.channel,
                        review.outcome.value, review.turns, review.min_confidence, review.first_question,
                        list(review.item_ids or []), list(review.categories or []), number,
                        sms_state.get(review.call_id), ticket_state.get(review.call_id), marks.get(review.call_id, 0))
                for review, number in found]

    # -- one call ------------------------------------------------------------------------------------------

    def call_detail(self, call_id: str) -> CallDetail:
        with self.database.session() as session:
            call = session.get(Call, call_id)
            if call is None:
                raise UnknownCall(call_id)
            review = session.scalar(select(CallReview).where(CallReview.call_id == call_id))
            marks = {mark.turn_seq: {"label": mark.label.value, "comment": mark.comment, "reviewer": mark.reviewer,
                                     "marked_at": _iso(mark.marked_at)}
                     for mark in session.scalars(select(QaMarkRow).where(QaMarkRow.call_id == call_id))}
            started = call.started_at
            turns = [TurnDetail(
                turn.seq, turn.created_at,
                round(max(0.0, (turn.created_at - started).total_seconds()), 3),
                turn.caller_text, turn.spoken_text, turn.sms_text, turn.action, turn.reason, turn.confidence,
                list(turn.item_ids or []), list(turn.offered_item_ids or []), list(turn.citations or []),
                dict(turn.timings_ms or {}), turn.sms_consent, turn.sms_to, turn.sms_message_id, marks.get(turn.seq))
                for turn in call.turns]
            sms = [{"id": message.id, "kind": message.kind.value, "item_id": message.item_id, "phone": message.phone,
                    "body": message.body, "status": message.status.value, "segments": message.segments,
                    "created_at": _iso(message.created_at), "submitted_at": _iso(message.submitted_at),
                    "finished_at": _iso(message.finished_at), "error_code": message.error_code}
                   for message in call.sms_messages]
            tickets = [{"id": ticket.id, "status": ticket.status.value, "trigger": ticket.trigger,
                        "reason": ticket.reason, "callback_number": ticket.callback_number,
                        "attempts": ticket.attempts, "due_at": _iso(ticket.due_at), "note": ticket.note,
                        "created_at": _iso(ticket.created_at), "resolved_at": _iso(ticket.resolved_at)}
                       for ticket in call.handoff_tickets]
            sampled = [day.isoformat() for day in session.scalars(
                select(QaSample.day).where(QaSample.call_id == call_id).order_by(QaSample.day))]
            return CallDetail(
                call.id, call.channel.value, call.caller_number, call.status.value, call.end_reason, started,
                call.ended_at, call.kb_version, call.agent_notes or "",
                bool(call.recording_caller_path and call.recording_assistant_path),
                review.outcome.value if review else None, turns, sms, tickets, sampled)

    def recording_paths(self, call_id: str) -> tuple[str, str] | None:
        with self.database.session() as session:
            call = session.get(Call, call_id)
            if call is None:
                raise UnknownCall(call_id)
            if not (call.recording_caller_path and call.recording_assistant_path):
                return None
            return call.recording_caller_path, call.recording_assistant_path

    # -- QA ------------------------------------------------------------------------------------------------

    def mark_turn(self, actor: Actor, call_id: str, seq: int, label: QaLabel | str, comment: str = "") -> None:
        """Mark one turn (a later mark replaces the earlier one; the audit log keeps both)."""
        try:
            label = QaLabel(label)
        except ValueError:
            raise ReviewError("质检标记应为：" + "、".join(member.value for member in QaLabel)) from None
        comment = comment.strip()
        if len(comment) > MAX_COMMENT_CHARS:
            raise ReviewError(f"备注最多{MAX_COMMENT_CHARS}字")
        with self.database.session() as session:
            if session.scalar(select(Turn.id).where(Turn.call_id == call_id, Turn.seq == seq)) is None:
                if session.get(Call, call_id) is None:
                    raise UnknownCall(call_id)
                raise UnknownTurn(call_id, seq)
            mark = session.scalar(select(QaMarkRow).where(QaMarkRow.call_id == call_id, QaMarkRow.turn_seq == seq)
                                  .with_for_update())
            previous = mark.label.value if mark else None
            if mark is None:
                session.add(QaMarkRow(call_id=call_id, turn_seq=seq, label=label, comment=comment,
                                      reviewer_id=actor.user_id, reviewer=actor.username))
            else:
                mark.label, mark.comment = label, comment
                mark.reviewer_id, mark.reviewer = actor.user_id, actor.username
                mark.marked_at = dt.datetime.now(dt.UTC)
            audit.record(session, actor, audit.AuditAction.QA_MARK, f"{call_id}#{seq}", label=label.value,
                         previous=previous, comment=comment)

    def draw_sample(self, day: dt.date, size: int, rng: random.Random | None = None) -> list[str]:
        """The day's QA sample (China time): `size` calls drawn at random from those indexed that day, once; a
        second draw the same day returns the first (topped up if the day had fewer calls then)."""
        if size < 0:
            raise ReviewError("抽样数量不能为负")
        start, end = local_day_bounds(day)
        rng = rng or random.SystemRandom()
        with self.database.session() as session:
            have = list(session.scalars(select(QaSample.call_id).where(QaSample.day == day).order_by(QaSample.call_id)))
            wanted = size - len(have)
            if wanted > 0:
                candidates = list(session.scalars(
                    select(CallReview.call_id).where(CallReview.started_at >= start, CallReview.started_at < end,
                                                     CallReview.turns > 0, CallReview.call_id.not_in(have))))
                chosen = rng.sample(candidates, min(wanted, len(candidates)))
                session.add_all(QaSample(day=day, call_id=call_id) for call_id in chosen)
                have += chosen
            return have

    def sample_progress(self, day: dt.date) -> dict[str, Any]:
        """How far the day's QA sample is: calls drawn, calls with every turn marked, accuracy on marked turns."""
        with self.database.session() as session:
            call_ids = list(session.scalars(select(QaSample.call_id).where(QaSample.day == day)))
            if not call_ids:
                return {"day": day.isoformat(), "calls": 0, "reviewed": 0, "marked_turns": 0, "correct": 0,
                        "accuracy": None}
            turns = dict(session.execute(select(Turn.call_id, func.count()).where(Turn.call_id.in_(call_ids))
                                         .group_by(Turn.call_id)).all())
            marked = dict(session.execute(select(QaMarkRow.call_id, func.count()).where(
                QaMarkRow.call_id.in_(call_ids)).group_by(QaMarkRow.call_id)).all())
            correct = session.scalar(select(func.count()).select_from(QaMarkRow).where(
                QaMarkRow.call_id.in_(call_ids), QaMarkRow.label == QaLabel.CORRECT)) or 0
        marked_turns = sum(marked.values())
        return {"day": day.isoformat(), "calls": len(call_ids),
                "reviewed": sum(1 for c in call_ids if turns.get(c, 0) and marked.get(c, 0) >= turns[c]),
                "marked_turns": marked_turns, "correct": correct,
                "accuracy": round(correct / marked_turns, 4) if marked_turns else None}

    def facets(self, categories: Mapping[str, str]) -> dict[str, Any]:
        """The choices the filters offer."""
        return {"outcomes": [outcome.value for outcome in CallOutcome], "confidence": list(CONFIDENCE_BANDS),
                "sms_states": list(SMS_STATES), "ticket_states": list(TICKET_STATES),
                "categories": sorted(set(categories.values())), "qa_labels": [label.value for label in QaLabel]}
