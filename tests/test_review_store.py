"""The review index and store on SQLite and PostgreSQL: outcomes, filters, Chinese full-text search, paging, the
call detail, QA marks with their audit entries, the daily QA sample, and the append-only audit log."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from telephony.errors import StorageError
from telephony.review import audit
from telephony.review.audit import Operator
from telephony.review.index import index_all, index_pending, outcome_of
from telephony.review.search import SearchQueryError, fts5_query, index_tokens, query_words
from telephony.review.store import CallQuery, ReviewError, ReviewStore, UnknownTurn, local_day_bounds
from telephony.store.database import Database
from telephony.store.models import (
    AuditEntry,
    Call,
    CallChannel,
    CallOutcome,
    CallReview,
    CallStatus,
    HandoffTicket,
    QaLabel,
    SmsMessage,
    SmsStatus,
)

CATEGORIES = {"injury-recognition": "工伤保险", "card-loss-report": "社会保障卡", "pension-claim": "养老保险"}
SUPERVISOR = Operator("zhao", None)
DAY = dt.date(2026, 11, 20)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'review.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "fresh_postgres_url")
    db = Database(url)
    db.migrate()
    yield db
    db.close()


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    """A China-time moment on `day`, in UTC."""
    return dt.datetime.combine(day, dt.time(hour, minute), dt.timezone(dt.timedelta(hours=8))).astimezone(dt.UTC)


def make_call(db: Database, started: dt.datetime, turns: list[dict], end_reason: str = "caller_hangup",
              number: str | None = "13800001111", ended: bool = True, length_s: float = 60.0) -> str:
    call = db.start_call(CallChannel.SIP, caller_number=number)
    for offset, fields in enumerate(turns):
        turn = {"spoken_text": "", "action": "answer", "confidence": 0.97, "item_ids": []} | fields
        db.add_turn(call.id, **turn)
        with db.session() as session:
            session.execute(text("UPDATE turns SET created_at = :t WHERE call_id = :c AND seq = :s"),
                            {"t": started + dt.timedelta(seconds=10 * (offset + 1)), "c": call.id, "s": offset + 1})
    with db.session() as session:
        row = session.get(Call, call.id)
        row.started_at = started
        if ended:
            row.status, row.end_reason = CallStatus.ENDED, end_reason
            row.ended_at = started + dt.timedelta(seconds=length_s)
    return call.id


@pytest.fixture
def calls(database: Database) -> dict[str, str]:
    made = {
        "answered": make_call(database, at(9), [
            {"caller_text": "工伤认定需要带什么材料", "item_ids": ["injury-recognition"], "confidence": 0.98,
             "timings_ms": {"voice_to_voice_ms": 420.0}}]),
        "clarified": make_call(database, at(10), [
            {"caller_text": "卡丢了怎么办", "action": "clarify", "confidence": 0.6,
             "offered_item_ids": ["card-loss-report"]},
            {"caller_text": "社保卡挂失", "item_ids": ["card-loss-report"], "confidence": 0.96}], length_s=95),
        "handed_off": make_call(database, at(11), [
            {"caller_text": "我要投诉你们窗口的工作人员", "action": "handoff", "confidence": 0.1}],
            end_reason="handoff"),
        "abandoned": make_call(database, at(12), [
            {"caller_text": "喂喂", "action": "clarify", "confidence": 0.0}], length_s=8),
        "next_day": make_call(database, at(9, day=DAY + dt.timedelta(days=1)), [
            {"caller_text": "退休了养老金什么时候开始领", "item_ids": ["pension-claim"], "confidence": 0.8,
             "sms_text": "养老金领取指南"}]),
    }
    with database.session() as session:
        session.add(SmsMessage(reference="r1", call_id=made["answered"], item_id="injury-recognition",
                               phone="13800001111", body="工伤认定指南", length=6, segments=1, gateway="outbox",
                               status=SmsStatus.DELIVERED))
        session.add(HandoffTicket(call_id=made["handed_off"], reason="complaint", trigger="complaint",
                                  context={}))
    return made


def test_outcome_rules() -> None:
    assert outcome_of(["answer", "sms", "goodbye"], "caller_hangup") is CallOutcome.ANSWERED
    assert outcome_of(["clarify", "answer"], "caller_hangup") is CallOutcome.CLARIFIED
    assert outcome_of(["repeat", "answer"], None) is CallOutcome.ANSWERED
    assert outcome_of(["clarify", "answer", "handoff"], "handoff") is CallOutcome.HANDED_OFF
    assert outcome_of(["answer"], "transferred") is CallOutcome.HANDED_OFF
    assert outcome_of(["clarify"], "caller_hangup") is CallOutcome.ABANDONED
    assert outcome_of([], "asr_unavailable") is CallOutcome.ABANDONED


def test_tokens_mask_personal_numbers_and_queries_are_segmented() -> None:
    tokens = index_tokens(["我想问工伤认定，身份证号110101199003077578，电话13812345678"]).split()
    assert {"工伤", "认定", "身份证"} <= set(tokens)
    assert not any("77578" in token or "12345678" in token for token in tokens)
    # The answer stack adds the KB's lexicon to jieba's dictionary: 工伤认定 may then be one word, which matches whole
    # or as 工伤 and 认定 together; either way the query asks for the same calls.
    assert query_words("工伤认定 材料") in ([("工伤", ()), ("认定", ()), ("材料", ())],
                                         [("工伤认定", ("工伤", "认定")), ("材料", ())])
    assert fts5_query([("工伤认定", ("工伤", "认定"))]) == '("工伤认定" OR ("工伤" AND "认定"))'
    with pytest.raises(SearchQueryError):
        query_words("，。！")
    with pytest.raises(SearchQueryError):
        query_words("工伤" * 60)


def test_index_summarises_each_finished_call_once(database: Database, calls: dict[str, str]) -> None:
    ongoing = make_call(database, dt.datetime.now(dt.UTC), [{"caller_text": "在吗"}], ended=False)
    now = at(18, day=DAY + dt.timedelta(days=2))
    assert index_pending(database, CATEGORIES, now=dt.datetime.now(dt.UTC)) == 5
    assert index_pending(database, CATEGORIES, now=dt.datetime.now(dt.UTC)) == 0  # nothing twice; ongoing waits
    with database.session() as session:
        reviews = {r.call_id: r for r in session.query(CallReview)}
    assert ongoing not in reviews
    assert {name: reviews[call_id].outcome.value for name, call_id in calls.items()} == {
        "answered": "answered", "clarified": "clarified", "handed_off": "handed_off", "abandoned": "abandoned",
        "next_day": "answered"}
    clarified = reviews[calls["clarified"]]
    assert clarified.turns == 2 and clarified.duration_s == 95.0 and clarified.min_confidence == 0.6
    assert clarified.item_ids == ["card-loss-report"] and clarified.categories == ["社会保障卡"]
    assert clarified.first_question == "卡丢了怎么办"
    assert reviews[calls["answered"]].latencies_ms == [420.0]
    # A worker that died mid-call leaves it active: indexed once it has been silent for an hour.
    assert index_pending(database, CATEGORIES, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)) == 1
    assert now  # (the fixed clock is only for readability)


def test_filters_search_and_paging(database: Database, calls: dict[str, str]) -> None:
    index_all(database, CATEGORIES)
    store = ReviewStore(database)

    def ids(**filters) -> list[str]:
        return [row.call_id for row in store.list_calls(CallQuery(**filters)).rows]

    assert ids() == [calls[n] for n in ("next_day", "abandoned", "handed_off", "clarified", "answered")]
    start, end = local_day_bounds(DAY)
    assert ids(started_from=start, started_to=end) == [calls[n] for n in ("abandoned", "handed_off", "clarified",
                                                                          "answered")]
    assert ids(outcome=CallOutcome.HANDED_OFF) == [calls["handed_off"]]
    assert ids(confidence="high") == [calls["answered"]]
    assert ids(confidence="medium") == [calls["next_day"], calls["clarified"]]
    assert ids(confidence="low") == [calls["abandoned"], calls["handed_off"]]
    assert ids(item_id="card-loss-report") == [calls["clarified"]]
    assert ids(category="养老保险") == [calls["next_day"]]
    assert ids(min_duration_s=90) == [calls["clarified"]]
    assert ids(max_duration_s=10) == [calls["abandoned"]]
    assert ids(sms_state="delivered") == [calls["answered"]]
    assert calls["answered"] not in ids(sms_state="none")
    assert ids(ticket_state="open") == [calls["handed_off"]]
    # Chinese full text: words, not characters (工 alone is not a word of any call), over the whole transcript.
    assert ids(text="工伤") == [calls["answered"]]
    assert ids(text="工伤认定") == [calls["answered"]]
    assert ids(text="投诉") == [calls["handed_off"]]
    assert ids(text="挂失") == [calls["clarified"]]
    assert ids(text="社保卡 挂失") == [calls["clarified"]]
    assert ids(text="工伤 挂失") == []
    assert ids(text="养老金", outcome=CallOutcome.ANSWERED) == [calls["next_day"]]
    page = store.list_calls(CallQuery(page=2, page_size=2))
    assert page.total == 5 and [row.call_id for row in page.rows] == [calls["handed_off"], calls["clarified"]]
    assert page.to_json()["pages"] == 3
    row = store.list_calls(CallQuery(text="工伤")).rows[0]
    assert row.sms_state == "delivered" and row.caller_number == "13800001111" and row.outcome == "answered"
    with pytest.raises(ReviewError, match="请输入要搜索的词语"):
        store.list_calls(CallQuery(text="？？"))
    with pytest.raises(ReviewError):
        CallQuery(page=0)
    with pytest.raises(ReviewError):
        CallQuery(confidence="sure")


def test_detail_marks_and_their_audit(database: Database, calls: dict[str, str]) -> None:
    index_all(database, CATEGORIES)
    store = ReviewStore(database)
    detail = store.call_detail(calls["clarified"])
    assert [turn.seq for turn in detail.turns] == [1, 2] and detail.outcome == "clarified"
    assert [turn.offset_s for turn in detail.turns] == [10.0, 20.0]
    assert detail.turns[0].offered_item_ids == ["card-loss-report"] and detail.turns[0].action == "clarify"
    assert store.call_detail(calls["answered"]).sms[0]["status"] == "delivered"
    assert store.call_detail(calls["handed_off"]).tickets[0]["status"] == "open"
    store.mark_turn(SUPERVISOR, calls["clarified"], 2, QaLabel.WRONG_ANSWER, "应答成了补卡")
    store.mark_turn(SUPERVISOR, calls["clarified"], 2, "incomplete", "缺少挂失电话")
    detail = store.call_detail(calls["clarified"])
    assert detail.turns[1].qa["label"] == "incomplete" and detail.turns[1].qa["comment"] == "缺少挂失电话"
    assert store.list_calls(CallQuery(item_id="card-loss-report")).rows[0].qa_marks == 1
    with pytest.raises(UnknownTurn):
        store.mark_turn(SUPERVISOR, calls["clarified"], 9, "correct")
    with pytest.raises(ReviewError):
        store.mark_turn(SUPERVISOR, calls["clarified"], 1, "great")
    entries, total = audit.entries(database, action="qa_mark")
    assert total == 2 and [e.detail["label"] for e in entries] == ["incomplete", "wrong_answer"]
    assert entries[0].detail["previous"] == "wrong_answer" and entries[0].target == f"{calls['clarified']}#2"


def test_daily_sample_is_random_fixed_once_drawn_and_measured(database: Database, calls: dict[str, str]) -> None:
    index_all(database, CATEGORIES)
    store = ReviewStore(database)
    first = store.draw_sample(DAY, 2, random.Random(7))
    assert len(first) == 2 and set(first) <= {calls[n] for n in ("answered", "clarified", "handed_off", "abandoned")}
    assert sorted(store.draw_sample(DAY, 2, random.Random(99))) == sorted(first)
    everything = store.draw_sample(DAY, 10)
    assert sorted(everything) == sorted(calls[n] for n in ("answered", "clarified", "handed_off", "abandoned"))
    assert [row.call_id for row in store.list_calls(CallQuery(sampled_on=DAY)).rows] == [
        calls[n] for n in ("abandoned", "handed_off", "clarified", "answered")]
    store.mark_turn(SUPERVISOR, calls["answered"], 1, "correct")
    store.mark_turn(SUPERVISOR, calls["clarified"], 1, "correct")
    store.mark_turn(SUPERVISOR, calls["clarified"], 2, "wrong_answer")
    progress = store.sample_progress(DAY)
    assert progress == {"day": "2026-11-20", "calls": 4, "reviewed": 2, "marked_turns": 3, "correct": 2,
                        "accuracy": 0.6667}


def test_audit_log_refuses_update_and_delete(database: Database) -> None:
    audit.write(database, SUPERVISOR, audit.AuditAction.EXPORT, "calls", rows=3, masked=False)
    for statement in (update(AuditEntry).values(username="someone"), text("DELETE FROM audit_log")):
        with pytest.raises(StorageError, match="append-only"):
            with database.session() as session:
                session.execute(statement)
    entries, total = audit.entries(database)
    assert total == 1 and entries[0].username == "zhao" and entries[0].detail == {"rows": 3, "masked": False}


def test_deleting_a_call_removes_it_from_the_search(database: Database, calls: dict[str, str]) -> None:
    index_all(database, CATEGORIES)
    store = ReviewStore(database)
    assert store.list_calls(CallQuery(text="投诉")).total == 1
    with database.session() as session:
        session.execute(delete(Call).where(Call.id == calls["handed_off"]))  # the database cascades
    assert store.list_calls(CallQuery(text="投诉")).total == 0
    assert store.list_calls(CallQuery()).total == 4


def test_a_service_read_from_the_keypad_menu_counts_as_answered(database: Database) -> None:
    menu_only = make_call(database, at(10), [
        {"caller_text": "按键1", "action": "menu", "item_ids": []},
        {"caller_text": "按键3", "action": "menu", "item_ids": ["card-loss-report"]}], end_reason="no_speech")
    browsed = make_call(database, at(11), [{"caller_text": "按键1", "action": "menu", "item_ids": []}])
    index_all(database, CATEGORIES)
    with database.session() as session:
        outcomes = {review.call_id: review for review in session.query(CallReview)}
    assert outcomes[menu_only].outcome is CallOutcome.ANSWERED
    assert outcomes[menu_only].categories == ["社会保障卡"]
    assert outcomes[browsed].outcome is CallOutcome.ABANDONED
