"""Storage round trips on SQLite and PostgreSQL, migrations from nothing, failure translation."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from telephony.errors import StorageError
from telephony.store import (
    CallChannel,
    CallStatus,
    Database,
    HandoffStatus,
    HandoffTicket,
    SmsMessage,
    SmsStatus,
    User,
    UserRole,
)
from telephony.store.database import MIGRATIONS_DIR
from telephony.store.turns import TurnJournal, TurnRecord, TurnWriter


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty SQLite file or PostgreSQL database, nothing migrated yet."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    db = Database(url)
    yield db
    db.close()


@pytest.fixture
def database(empty_database: Database):
    empty_database.migrate()
    return empty_database


def test_migration_creates_every_table_and_is_idempotent(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert {"calls", "turns", "sms_messages", "sms_reports", "handoff_tickets", "users", "alembic_version"} <= tables
    database.migrate()  # a second run is a no-op, not an error
    assert set(inspect(database.engine).get_table_names()) == tables


def test_workers_starting_together_on_one_postgresql_migrate_in_turn(fresh_postgres_url: str) -> None:
    # Several workers share one PostgreSQL and start at once; unserialised, both would CREATE TABLE and one fail.
    from concurrent.futures import ThreadPoolExecutor

    # lock_timeout: a migration blocked behind another fails the test instead of hanging it
    url = make_url(fresh_postgres_url).update_query_dict({"options": "-c lock_timeout=20000"})
    databases = [Database(url.render_as_string(hide_password=False)) for _ in range(3)]
    try:
        with ThreadPoolExecutor(len(databases)) as pool:
            list(pool.map(Database.migrate, databases))
        tables = set(inspect(databases[0].engine).get_table_names())
        assert {"calls", "turns", "alembic_version"} <= tables
        with databases[0].engine.connect() as connection:
            assert len(connection.execute(text("SELECT version_num FROM alembic_version")).all()) == 1
    finally:
        for database in databases:
            database.close()


def test_call_and_turns_round_trip(database: Database) -> None:
    call = database.start_call(CallChannel.TWILIO, caller_number="13800000000", kb_version="abc123")
    first = database.add_turn(
        call.id, caller_text="社保卡丢了怎么办", spoken_text="请先挂失。", sms_text="短信正文",
        item_ids=["card-loss-report"], citations=["《某通知》"], confidence=0.91, action="answer",
        reason="top item", timings_ms={"asr_final_ms": 120.5, "answer_ms": 3.25},
    )
    second = database.add_turn(call.id, caller_text="转人工", action="handoff", confidence=1.0)
    database.end_call(call.id, reason="caller hung up")

    stored = database.get_call(call.id)
    assert stored is not None
    assert stored.status is CallStatus.ENDED and stored.end_reason == "caller hung up"
    assert stored.ended_at is not None and stored.caller_number == "13800000000"
    assert [turn.seq for turn in stored.turns] == [1, 2]
    assert (first.seq, second.seq) == (1, 2)
    turn = stored.turns[0]
    assert turn.item_ids == ["card-loss-report"]
    assert turn.timings_ms == {"asr_final_ms": 120.5, "answer_ms": 3.25}
    assert turn.confidence == pytest.approx(0.91)
    assert stored.turns[1].action == "handoff" and stored.turns[1].item_ids == []


def test_a_turn_stores_the_services_it_offered(database: Database) -> None:
    call = database.start_call(CallChannel.API)
    database.add_turn(call.id, caller_text="我想办社保卡", action="clarify", item_ids=["card-apply", "card-reissue"],
                      offered_item_ids=["card-apply", "card-reissue"])
    database.add_turn(call.id, caller_text="第一个", action="answer", item_ids=["card-apply"], offered_item_ids=[])
    stored = database.get_call(call.id)
    assert [turn.offered_item_ids for turn in stored.turns] == [["card-apply", "card-reissue"], []]


@pytest.fixture
def database_at_0001(empty_database: Database):
    """A database migrated only to the first revision, as deployments were before 0002."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with empty_database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    return empty_database


def test_migration_0005_adds_the_agent_and_notes_and_keeps_every_turn(empty_database: Database) -> None:
    db = empty_database
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO calls (id, channel, status, started_at) "
                                "VALUES ('c5', 'sip', 'ended', CURRENT_TIMESTAMP)"))
        connection.execute(text(
            "INSERT INTO turns (call_id, seq, created_at, caller_text, spoken_text, sms_text, item_ids, citations, "
            "confidence, action, reason, timings_ms) VALUES ('c5', 1, CURRENT_TIMESTAMP, '转人工', '', '', '[]', "
            "'[]', 0.5, 'handoff', 'caller asked', '{}')"))
    db.migrate()  # a rebuilt `calls` table would have cascaded to the turn
    stored = db.get_call("c5")
    assert [turn.caller_text for turn in stored.turns] == ["转人工"]
    assert stored.agent_id is None and stored.agent_notes == ""
    with db.session() as session:
        agent = User(username="agent1", display_name="坐席一", role=UserRole.AGENT)
        session.add(agent)
        session.flush()
        agent_id = agent.id
    assert db.set_call_agent("c5", agent_id) is True
    assert db.get_call("c5").agent_id == agent_id


def test_migration_0002_adds_offered_items_and_carries_pending_choices_over(database_at_0001: Database) -> None:
    db = database_at_0001
    assert "offered_item_ids" not in {column["name"] for column in inspect(db.engine).get_columns("turns")}
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO calls (id, channel, status, started_at) "
                                "VALUES ('c1', 'api', 'active', CURRENT_TIMESTAMP)"))
        for seq, (action, items, reason) in enumerate([
            ("clarify", '["card-apply", "card-reissue"]', "middle, choose between the two closest"),
            ("clarify", '["retirement-age"]', "calculator: needs the birth month"),
            ("answer", '["card-apply"]', "middle, LLM confidence 0.80"),
        ], start=1):
            connection.execute(text(
                "INSERT INTO turns (call_id, seq, created_at, caller_text, spoken_text, sms_text, item_ids, citations, "
                "confidence, action, reason, timings_ms) VALUES ('c1', :seq, CURRENT_TIMESTAMP, 'q', '', '', :items, "
                "'[]', 0.5, :action, :reason, '{}')"), {"seq": seq, "items": items, "action": action, "reason": reason})
    db.migrate()
    assert "offered_item_ids" in {column["name"] for column in inspect(db.engine).get_columns("turns")}
    stored = db.get_call("c1")
    assert [turn.offered_item_ids for turn in stored.turns] == [["card-apply", "card-reissue"], None, None]
    db.add_turn("c1", caller_text="第一个", action="answer", item_ids=["card-apply"], offered_item_ids=[])
    assert db.get_call("c1").turns[-1].offered_item_ids == []


def test_sms_handoff_and_user_rows_link_to_the_call(database: Database) -> None:
    call = database.start_call(CallChannel.SOFTPHONE)
    turn = database.add_turn(call.id, caller_text="我要投诉", action="handoff")
    with database.session() as session:
        agent = User(username="agent1", display_name="李工号", role=UserRole.AGENT)
        session.add(agent)
        session.flush()
        session.add(SmsMessage(call_id=call.id, reference=f"{call.id}:card-apply", item_id="card-apply",
                               phone="13800000000", body="办理指南", length=4, segments=1, gateway="outbox"))
        session.add(HandoffTicket(call_id=call.id, turn_id=turn.id, reason="caller asked", assigned_user_id=agent.id))
    stored = database.get_call(call.id)
    assert stored is not None
    assert [message.status for message in stored.sms_messages] == [SmsStatus.QUEUED]
    assert stored.sms_messages[0].body == "办理指南"
    assert [ticket.status for ticket in stored.handoff_tickets] == [HandoffStatus.OPEN]
    with database.session() as session:
        assert session.scalar(select(User.role).where(User.username == "agent1")) is UserRole.AGENT


def test_unknown_call_is_a_storage_error(database: Database) -> None:
    with pytest.raises(StorageError, match="no call nope"):
        database.add_turn("nope", caller_text="x", action="answer")


def test_duplicate_username_is_translated_to_storage_error(database: Database) -> None:
    with database.session() as session:
        session.add(User(username="sup", display_name="A", role=UserRole.SUPERVISOR))
    with pytest.raises(StorageError, match="IntegrityError"):
        with database.session() as session:
            session.add(User(username="sup", display_name="B", role=UserRole.SUPERVISOR))


def test_unreachable_database_raises_storage_error() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert db.ping() is False
    with pytest.raises(StorageError, match="cannot migrate database"):
        db.migrate()


def test_sqlite_file_runs_in_wal_mode_with_normal_sync_and_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        db.migrate()
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.close()


def test_journaled_turns_go_back_into_their_call_when_the_database_returns(database: Database, tmp_path: Path) -> None:
    """A database that dies mid-call (`hotline bench faults`, database rows): the turns written meanwhile are
    journaled with their call's id and, at the next successful write, stored in that call before the new turn;
    a journaled turn whose call is not in the database starts one new call for all its turns."""
    journal = TurnJournal(tmp_path / "turn-journal.jsonl")
    call = database.start_call(CallChannel.TWILIO, caller_number="13900000001")
    up = TurnWriter(database, journal)
    assert up.write(CallChannel.TWILIO, call.id, TurnRecord("第一句", "answer"), "v1") == (call.id, 1)

    down = TurnWriter(Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"), journal)
    assert down.write(CallChannel.TWILIO, call.id, TurnRecord("第二句", "answer"), "v1") == (call.id, None)
    assert down.write(CallChannel.TWILIO, "lost-call", TurnRecord("别的电话一", "repeat"), "v1") == ("lost-call", None)
    assert down.write(CallChannel.TWILIO, "lost-call", TurnRecord("别的电话二", "answer"), "v1") == ("lost-call", None)
    assert journal.pending

    assert up.write(CallChannel.TWILIO, call.id, TurnRecord("第三句", "answer"), "v1") == (call.id, 3)
    assert not journal.pending
    stored = database.get_call(call.id)
    assert [turn.caller_text for turn in stored.turns] == ["第一句", "第二句", "第三句"]
    others = [database.get_call(other.id) for other in database.recent_calls() if other.id != call.id]
    assert [[turn.caller_text for turn in other.turns] for other in others] == [["别的电话一", "别的电话二"]]
