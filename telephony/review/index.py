"""The review index: one `call_reviews` row per finished call, summarised from its turns, with its items and the
search tokens of its transcript. A background task in every server indexes the calls that ended since it last
looked (`index_pending`); several workers may run it at once (a call indexed twice is skipped by its unique key).

A call counts as finished when it ended, or when it is still marked active an hour after its last turn (its worker
died mid-call: the record is kept up to its last turn, issue 17) — such a call is indexed with what it has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from telephony.review.search import index_tokens
from telephony.store.database import Database
from telephony.store.models import Call, CallOutcome, CallReview, CallReviewItem, CallStatus, Turn

log = logging.getLogger(__name__)

HANDOFF_END_REASONS = frozenset({"handoff", "transferred", "agent"})
SUBSTANTIVE_ACTIONS = ("answer", "clarify", "handoff")
ABANDONED_AFTER = dt.timedelta(hours=1)  # an "active" call this long after its last sign of life is over
BATCH = 200


def outcome_of(actions: Sequence[str], end_reason: str | None) -> CallOutcome:
    """handed_off: any handoff (or the call ended with a person); answered: the first substantive reply answered;
    clarified: an answer came after a clarifying question; abandoned: no answer and no handoff."""
    if "handoff" in actions or (end_reason or "") in HANDOFF_END_REASONS:
        return CallOutcome.HANDED_OFF
    if "answer" not in actions:
        return CallOutcome.ABANDONED
    first = next(action for action in actions if action in SUBSTANTIVE_ACTIONS)
    return CallOutcome.ANSWERED if first == "answer" else CallOutcome.CLARIFIED


def summarize(call: Call, turns: Sequence[Turn], categories: Mapping[str, str]) -> tuple[CallReview, list[str]]:
    """The review row of `call` (not yet added to a session) and the items its turns answered or offered."""
    # A service read from the keypad menu (a "menu" turn naming its item) answered the caller like a spoken answer.
    actions = ["answer" if turn.action == "menu" and turn.item_ids else turn.action for turn in turns]
    confidences = [turn.confidence for turn in turns if turn.action in SUBSTANTIVE_ACTIONS]
    items: dict[str, None] = {}
    for turn in turns:
        for item_id in (*(turn.item_ids or ()), *(turn.offered_item_ids or ())):
            items[item_id] = None
    started = call.started_at
    if call.ended_at is not None:
        ended = call.ended_at
    elif turns:
        ended = turns[-1].created_at
    else:
        ended = started
    latencies = [float(turn.timings_ms["voice_to_voice_ms"]) for turn in turns
                 if isinstance(turn.timings_ms, dict) and isinstance(turn.timings_ms.get("voice_to_voice_ms"),
                                                                     (int, float))]
    first_question = next((turn.caller_text for turn in turns if turn.caller_text.strip()), "")
    review = CallReview(
        call_id=call.id, started_at=started, duration_s=round(max(0.0, (ended - started).total_seconds()), 3),
        channel=call.channel.value if hasattr(call.channel, "value") else str(call.channel),
        outcome=outcome_of(actions, call.end_reason), end_reason=call.end_reason, turns=len(turns),
        min_confidence=min(confidences) if confidences else None, first_question=first_question[:500],
        item_ids=list(items), categories=sorted({categories[i] for i in items if i in categories}),
        latencies_ms=latencies,
        search_text=index_tokens(text for turn in turns for text in (turn.caller_text, turn.spoken_text)))
    return review, list(items)


def _pending(session: Session, now: dt.datetime, limit: int) -> list[Call]:
    last_turn = select(func.max(Turn.created_at)).where(Turn.call_id == Call.id).scalar_subquery()
    stale = now - ABANDONED_AFTER
    finished = or_(Call.status != CallStatus.ACTIVE,
                   and_(Call.started_at < stale, or_(last_turn.is_(None), last_turn < stale)))
    query = (select(Call).outerjoin(CallReview, CallReview.call_id == Call.id)
             .where(CallReview.doc_id.is_(None), finished)
             .order_by(Call.started_at).limit(limit)
             .options(selectinload(Call.turns)))
    return list(session.scalars(query))


def _add(session: Session, calls: Sequence[Call], categories: Mapping[str, str]) -> None:
    summaries = [summarize(call, call.turns, categories) for call in calls]
    session.add_all(review for review, _items in summaries)
    session.flush()  # one INSERT … RETURNING for the batch gives every doc_id
    session.add_all(CallReviewItem(doc_id=review.doc_id, item_id=item_id, category=categories.get(item_id, ""))
                    for review, items in summaries for item_id in items)
    session.flush()


def index_pending(database: Database, categories: Mapping[str, str], now: dt.datetime | None = None,
                  limit: int = BATCH) -> int:
    """Index up to `limit` finished calls that have no review row yet; how many were indexed."""
    now = now or dt.datetime.now(dt.UTC)
    with database.session() as session:
        calls = _pending(session, now, limit)
        if not calls:
            return 0
        try:
            with session.begin_nested():
                _add(session, calls, categories)
            return len(calls)
        except IntegrityError:
            pass  # another worker indexed some of them: go one by one, skipping those
    done = 0
    for call_id in [call.id for call in calls]:
        try:
            with database.session() as session:
                call = session.get(Call, call_id, options=[selectinload(Call.turns)])
                if call is not None and session.scalar(
                        select(CallReview.doc_id).where(CallReview.call_id == call_id)) is None:
                    _add(session, [call], categories)
                    done += 1
        except IntegrityError:
            continue
    return done


def index_all(database: Database, categories: Mapping[str, str], now: dt.datetime | None = None) -> int:
    """Index every finished call that is not indexed yet (the CLI and the benchmark)."""
    total = 0
    while True:
        done = index_pending(database, categories, now, limit=1000)
        total += done
        if done == 0:
            return total


async def run_indexer(database: Database, categories: Callable[[], Mapping[str, str]], stop: asyncio.Event,
                      sample_size: int = 0, interval_s: float = 5.0) -> None:
    """The server's background task: index finished calls every `interval_s`, and once a day draw yesterday's QA
    sample (`sample_size` calls). A database error is logged and tried again next round; it never ends the task."""
    from telephony.review.store import LOCAL_TIME, ReviewStore

    sampled: dt.date | None = None
    while not stop.is_set():
        try:
            while await asyncio.to_thread(index_pending, database, categories()) >= BATCH:
                if stop.is_set():
                    return
            yesterday = dt.datetime.now(LOCAL_TIME).date() - dt.timedelta(days=1)
            if sample_size and sampled != yesterday:
                await asyncio.to_thread(ReviewStore(database).draw_sample, yesterday, sample_size)
                sampled = yesterday
        except Exception as exc:  # noqa: BLE001 - the next round tries again; the server must not lose this task
            log.warning("review index: %s", exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
