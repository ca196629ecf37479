"""Callback tickets on SQLite and PostgreSQL: the transition table, the desk's operations and their errors, two
agents racing for one ticket, due times from the office-hours calendar, migration 0004, agent accounts and the
`hotline tickets` / `hotline users` commands."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.config import Config
from argon2 import PasswordHasher
from sqlalchemy import event, text

from rag.base import Action, Answer
from telephony.handoff.accounts import (
    Accounts,
    InactiveUserError,
    InvalidAccountError,
    UnknownUserError,
    WrongPasswordError,
)
from telephony.handoff.base import HandoffRequest
from telephony.handoff.callback import CallbackTickets
from telephony.handoff.office_hours import OfficeHours
from telephony.handoff.tickets import (
    HandoffTrigger,
    InvalidTicketTransition,
    NotAllowedError,
    NotTicketOwnerError,
    TicketAlreadyClaimed,
    TicketDesk,
    UnknownTicketError,
    check_transition,
    classify_trigger,
)
from telephony.store import CallbackOutcome, CallChannel, Database, HandoffStatus, UserRole
from telephony.store.database import MIGRATIONS_DIR

SHANGHAI = ZoneInfo("Asia/Shanghai")
FRIDAY_EVENING = dt.datetime(2026, 12, 11, 20, 0, tzinfo=SHANGHAI)
MONDAY_MORNING = dt.datetime(2026, 12, 14, 9, 0, tzinfo=SHANGHAI)
MONDAY_IN_HOURS = dt.datetime(2026, 12, 14, 10, 15, tzinfo=SHANGHAI)
CALENDAR = """\
timezone: Asia/Shanghai
weekly:
  mon: ["09:00-12:00", "13:30-17:30"]
  tue: ["09:00-12:00", "13:30-17:30"]
  wed: ["09:00-12:00", "13:30-17:30"]
  thu: ["09:00-12:00", "13:30-17:30"]
  fri: ["09:00-12:00", "13:30-17:30"]
  sat: []
  sun: []
years:
  2026:
    published: false
"""
S = HandoffStatus


def run(args: list[str], tmp_path: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("HOTLINE_")}
    environment |= {"HOTLINE_DATA_DIR": str(tmp_path / "var"), "HOTLINE_CENTRE_PHONE": "0773-0000000"}
    return subprocess.run([sys.executable, "-m", "telephony.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=tmp_path, env=environment, timeout=120)


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests only: production keeps the defaults


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "fresh_postgres_url")
    db = Database(url)
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def accounts(database: Database) -> Accounts:
    return Accounts(database, fast_hasher())


@pytest.fixture
def staff(accounts: Accounts) -> dict[str, int]:
    people = {"wang": UserRole.AGENT, "li": UserRole.AGENT, "zhao": UserRole.SUPERVISOR, "qian": UserRole.KB_EDITOR}
    return {name: accounts.create(name, f"{name}坐席", role, "correct horse 1").id for name, role in people.items()}


@pytest.fixture
def desk(database: Database) -> TicketDesk:
    return TicketDesk(database)


def open_ticket(desk: TicketDesk, number: str = "13800000000", question: str = "养老金怎么领") -> int:
    call = desk.database.start_call(CallChannel.SIP, caller_number=number)
    return desk.open(call.id, "caller pressed 0", callback_number=number, context={"question": question}).id


# -- the transition table ------------------------------------------------------------------------------------

LEGAL = {
    (S.OPEN, S.ASSIGNED),
    (S.ASSIGNED, S.ATTEMPTED), (S.ASSIGNED, S.OPEN),
    (S.ATTEMPTED, S.ATTEMPTED), (S.ATTEMPTED, S.RESOLVED), (S.ATTEMPTED, S.UNREACHABLE), (S.ATTEMPTED, S.OPEN),
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_every_pair_of_states_is_legal_or_raises_naming_the_ticket(current: S, target: S) -> None:
    if (current, target) in LEGAL:
        check_transition(7, current, target)
        return
    with pytest.raises(InvalidTicketTransition, match=f"ticket 7 cannot go from {current.value} to {target.value}"):
        check_transition(7, current, target)


@pytest.mark.parametrize(("reason", "trigger"), [
    ("caller pressed 0", HandoffTrigger.KEY_0),
    ("caller asked for a human", HandoffTrigger.ASKED_FOR_HUMAN),
    ("low confidence 0.21: top card-apply 0.300 (matched '社保卡')", HandoffTrigger.LOW_CONFIDENCE),
    ("out of scope: mentions 公积金", HandoffTrigger.OUT_OF_SCOPE),
    ("ASR unavailable: connection refused", HandoffTrigger.ASR_UNAVAILABLE),
    ("crisis", HandoffTrigger.CRISIS),
    ("something new", HandoffTrigger.OTHER),
])
def test_handoff_reasons_map_to_short_trigger_values(reason: str, trigger: HandoffTrigger) -> None:
    assert classify_trigger(reason) is trigger


# -- the desk ------------------------------------------------------------------------------------------------

def test_a_ticket_goes_from_open_to_resolved(desk: TicketDesk, staff: dict[str, int]) -> None:
    ticket_id = open_ticket(desk)
    assert desk.get(ticket_id).status is S.OPEN
    claimed = desk.claim(ticket_id, staff["wang"])
    assert (claimed.status, claimed.assigned_user.username) == (S.ASSIGNED, "wang")
    missed = desk.record_attempt(ticket_id, staff["wang"], "no_answer", "无人接听")
    assert (missed.status, missed.attempts) == (S.ATTEMPTED, 1)
    reached = desk.record_attempt(ticket_id, staff["wang"], CallbackOutcome.REACHED)
    assert (reached.status, reached.attempts) == (S.ATTEMPTED, 2)
    resolved = desk.resolve(ticket_id, staff["wang"], "已告知领取养老金的材料")
    assert resolved.status is S.RESOLVED and resolved.resolved_at is not None
    assert resolved.note.endswith("wang] 已告知领取养老金的材料")
    assert [(a.outcome, a.user_id, a.note) for a in desk.attempts_of(ticket_id)] == [
        (CallbackOutcome.NO_ANSWER, staff["wang"], "无人接听"), (CallbackOutcome.REACHED, staff["wang"], "")]


@pytest.mark.parametrize("attempts_first", [0, 1])
def test_a_released_ticket_is_open_again_for_anyone(desk: TicketDesk, staff: dict[str, int],
                                                    attempts_first: int) -> None:
    ticket_id = open_ticket(desk)
    desk.claim(ticket_id, staff["wang"])
    for _ in range(attempts_first):
        desk.record_attempt(ticket_id, staff["wang"], "busy")
    released = desk.release(ticket_id, staff["wang"], "下班了")
    assert (released.status, released.assigned_user_id, released.attempts) == (S.OPEN, None, attempts_first)
    assert desk.claim(ticket_id, staff["li"]).assigned_user.username == "li"


def test_illegal_moves_raise_and_change_nothing(desk: TicketDesk, staff: dict[str, int]) -> None:
    ticket_id = open_ticket(desk)
    wang = staff["wang"]
    with pytest.raises(InvalidTicketTransition, match=f"ticket {ticket_id} cannot go from open to attempted"):
        desk.record_attempt(ticket_id, wang, "busy")
    with pytest.raises(InvalidTicketTransition, match="from open to resolved"):
        desk.resolve(ticket_id, wang, "done")
    with pytest.raises(InvalidTicketTransition, match="from open to open"):
        desk.release(ticket_id, wang)
    desk.claim(ticket_id, wang)
    with pytest.raises(InvalidTicketTransition, match="from assigned to resolved"):
        desk.resolve(ticket_id, wang, "never called")
    desk.record_attempt(ticket_id, wang, "reached")
    desk.resolve(ticket_id, wang, "done")
    for move in (lambda: desk.claim(ticket_id, wang), lambda: desk.record_attempt(ticket_id, wang, "reached"),
                 lambda: desk.release(ticket_id, wang), lambda: desk.resolve(ticket_id, wang, "again")):
        with pytest.raises(InvalidTicketTransition, match="from resolved to .* \\(from resolved: none, it is final\\)"):
            move()
    assert desk.get(ticket_id).attempts == 1


def test_only_the_owner_works_a_ticket_and_a_supervisor_may_release_it(desk: TicketDesk,
                                                                       staff: dict[str, int]) -> None:
    ticket_id = open_ticket(desk)
    desk.claim(ticket_id, staff["wang"])
    with pytest.raises(NotTicketOwnerError, match=f"ticket {ticket_id} is held by wang, not by li"):
        desk.record_attempt(ticket_id, staff["li"], "reached")
    with pytest.raises(NotTicketOwnerError):
        desk.release(ticket_id, staff["li"])
    with pytest.raises(TicketAlreadyClaimed, match=f"ticket {ticket_id} is already claimed by wang"):
        desk.claim(ticket_id, staff["li"])
    with pytest.raises(TicketAlreadyClaimed):
        desk.claim(ticket_id, staff["wang"])
    assert desk.release(ticket_id, staff["zhao"]).status is S.OPEN


def test_unknown_tickets_and_users_and_editors_are_refused(desk: TicketDesk, accounts: Accounts,
                                                           staff: dict[str, int]) -> None:
    ticket_id = open_ticket(desk)
    with pytest.raises(UnknownTicketError, match="no ticket 9999"):
        desk.claim(9999, staff["wang"])
    with pytest.raises(UnknownTicketError, match="no ticket 9999"):
        desk.add_note(9999, staff["wang"], "x")
    with pytest.raises(UnknownUserError, match="no user id 4242"):
        desk.claim(ticket_id, 4242)
    with pytest.raises(NotAllowedError, match="user qian is kb_editor"):
        desk.claim(ticket_id, staff["qian"])
    accounts.deactivate("li")
    with pytest.raises(InactiveUserError, match="user 'li' is deactivated"):
        desk.claim_next(staff["li"])
    assert desk.get(ticket_id).status is S.OPEN


def test_notes_are_signed_and_appended(desk: TicketDesk, staff: dict[str, int]) -> None:
    ticket_id = open_ticket(desk)
    desk.add_note(ticket_id, staff["qian"], "知识库缺这一条")
    noted = desk.add_note(ticket_id, staff["wang"], "来电者下午方便")
    assert [line.split("] ", 1)[1] for line in noted.note.splitlines()] == ["知识库缺这一条", "来电者下午方便"]
    assert " qian] " in noted.note.splitlines()[0] and noted.status is S.OPEN


@pytest.mark.parametrize("limit", [1, 3])
def test_failed_calls_up_to_the_limit_make_the_ticket_unreachable(database: Database, staff: dict[str, int],
                                                                  limit: int) -> None:
    desk = TicketDesk(database, max_failed_attempts=limit)
    ticket_id = open_ticket(desk)
    desk.claim(ticket_id, staff["wang"])
    desk.record_attempt(ticket_id, staff["wang"], "reached", "说稍后再打")  # a reached call is not a failure
    outcomes = ["no_answer", "busy", "wrong_number"][:limit]
    states = [desk.record_attempt(ticket_id, staff["wang"], outcome).status for outcome in outcomes]
    assert states == [S.ATTEMPTED] * (limit - 1) + [S.UNREACHABLE]
    ticket = desk.get(ticket_id)
    assert ticket.attempts == limit + 1 and len(desk.attempts_of(ticket_id)) == limit + 1
    with pytest.raises(InvalidTicketTransition, match="from unreachable to attempted"):
        desk.record_attempt(ticket_id, staff["wang"], "reached")


def test_listing_is_by_due_time_and_filters(database: Database, staff: dict[str, int]) -> None:
    clock_at = [MONDAY_IN_HOURS]
    desk = TicketDesk(database, clock=lambda: clock_at[0])
    later = open_ticket(desk, question="later")
    clock_at[0] = MONDAY_IN_HOURS - dt.timedelta(hours=1)
    earlier = open_ticket(desk, question="earlier")
    assert [ticket.id for ticket in desk.list()] == [earlier, later]
    desk.claim(later, staff["li"])
    assert [ticket.id for ticket in desk.list(status="open")] == [earlier]
    assert [ticket.id for ticket in desk.list(owner=staff["li"])] == [later]
    assert [ticket.id for ticket in desk.list(due_before=MONDAY_IN_HOURS - dt.timedelta(minutes=1))] == [earlier]


# -- two agents at once --------------------------------------------------------------------------------------

def test_two_agents_claiming_one_ticket_at_once_exactly_one_wins(database: Database, staff: dict[str, int]) -> None:
    desks = [TicketDesk(Database(database.url)) for _ in range(2)]
    try:
        for _ in range(5):
            ticket_id = open_ticket(TicketDesk(database))
            barrier = threading.Barrier(2)
            results: dict[str, object] = {}

            def claim(desk: TicketDesk, who: str, ticket_id: int = ticket_id, barrier=barrier, results=results):
                barrier.wait()
                try:
                    results[who] = desk.claim(ticket_id, staff[who]).assigned_user.username
                except TicketAlreadyClaimed as exc:
                    results[who] = exc

            threads = [threading.Thread(target=claim, args=(desk, who))
                       for desk, who in zip(desks, ("wang", "li"), strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            winners = [who for who, result in results.items() if result == who]
            losers = [result for result in results.values() if isinstance(result, TicketAlreadyClaimed)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert losers[0].owner == winners[0]
            assert desks[0].get(ticket_id).assigned_user.username == winners[0]
    finally:
        for desk in desks:
            desk.database.close()


def pause_before_taking(connection, cursor, statement: str, parameters, context, executemany) -> None:
    if statement.lstrip().upper().startswith("UPDATE HANDOFF_TICKETS"):
        time.sleep(0.02)


def test_two_workers_taking_the_next_ticket_never_take_the_same_one(database: Database,
                                                                    staff: dict[str, int]) -> None:
    start = MONDAY_IN_HOURS
    ids = []
    for minutes in range(12):
        desk = TicketDesk(database, clock=lambda minutes=minutes: start + dt.timedelta(minutes=minutes))
        ids.append(open_ticket(desk))
    desks = [TicketDesk(Database(database.url)) for _ in range(2)]
    for desk in desks:  # a pause between reading the next ticket and taking it: both workers read the same one
        event.listen(desk.database.engine, "before_cursor_execute", pause_before_taking)
    barrier = threading.Barrier(2)
    taken: dict[str, list[int]] = {"wang": [], "li": []}
    errors: list[BaseException] = []

    def work(desk: TicketDesk, who: str) -> None:
        barrier.wait()
        try:
            while (ticket := desk.claim_next(staff[who])) is not None:
                taken[who].append(ticket.id)
                time.sleep(0.01)  # a moment on the phone, so the other worker takes its turn
        except BaseException as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(desk, who)) for desk, who in zip(desks, ("wang", "li"), strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for desk in desks:
            desk.database.close()
    assert not errors
    assert taken["wang"] and taken["li"], taken
    assert not set(taken["wang"]) & set(taken["li"])
    assert sorted(taken["wang"] + taken["li"]) == sorted(ids)
    assert all(worker == sorted(worker) for worker in taken.values())  # each takes the earliest due first


# -- due times and the handoff -------------------------------------------------------------------------------

@pytest.fixture
def calendar(tmp_path: Path) -> OfficeHours:
    path = tmp_path / "office_hours.yaml"
    path.write_text(CALENDAR, encoding="utf-8")
    return OfficeHours.load(path)


@pytest.mark.parametrize(("created", "due"), [(FRIDAY_EVENING, MONDAY_MORNING), (MONDAY_IN_HOURS, MONDAY_IN_HOURS)])
def test_due_time_is_the_next_duty_period_after_hours_and_at_once_in_hours(
        database: Database, calendar: OfficeHours, created: dt.datetime, due: dt.datetime) -> None:
    desk = TicketDesk(database, calendar, clock=lambda: created)
    ticket = desk.get(open_ticket(desk))
    assert ticket.due_at.replace(tzinfo=ticket.due_at.tzinfo or dt.UTC) == due


async def test_the_callback_handoff_fills_trigger_due_time_and_context(database: Database,
                                                                       calendar: OfficeHours) -> None:
    call = database.start_call(CallChannel.SIP, caller_number="13800000000")
    database.add_turn(call.id, caller_text="养老金怎么领", spoken_text="请问您是哪一年退休？", action="clarify",
                      item_ids=["pension-claim"], confidence=0.55)
    answer = Answer("我要投诉你们", Action.HANDOFF, "为您转人工", "", (), ("pension-claim",), 0.9,
                    "caller asked for a human")
    request = HandoffRequest(call.id, "13800000000", "caller asked for a human", answer,
                             ("养老金怎么领", "我的身份证号是450300199001011234", "我要投诉你们"))
    outcome = await CallbackTickets(database, office_hours=calendar, clock=lambda: FRIDAY_EVENING).offer(request)
    ticket = TicketDesk(database).get(outcome.ticket_id)
    assert (ticket.trigger, ticket.reason, ticket.callback_number) == (
        "asked_for_human", "caller asked for a human", "13800000000")
    assert ticket.due_at.replace(tzinfo=ticket.due_at.tzinfo or dt.UTC) == MONDAY_MORNING
    context = ticket.context
    assert context["question"] == "我要投诉你们" and context["caller_number"] == "138****0000"
    assert context["transcript"][1] == "我的身份证号是450***********1234"
    assert context["answers"] == [{"question": "养老金怎么领", "spoken": "请问您是哪一年退休？", "action": "clarify",
                                   "item_ids": ["pension-claim"], "confidence": 0.55}]
    assert (context["item_ids"], context["confidence"], context["sms_sent"]) == (["pension-claim"], 0.9, [])


# -- migration 0004 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0004_moves_old_tickets_to_the_new_states_and_back(request: pytest.FixtureRequest, tmp_path: Path,
                                                                     backend: str) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
                        else request.getfixturevalue("fresh_postgres_url"))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(text("INSERT INTO calls (id, channel, status, started_at) "
                                "VALUES ('c1', 'sip', 'ended', CURRENT_TIMESTAMP)"))
        connection.execute(text("INSERT INTO users (id, username, display_name, role, active, created_at) "
                                "VALUES (1, 'wang', '王', 'agent', TRUE, CURRENT_TIMESTAMP)"))
        for ticket_id, status, user in [(1, "open", None), (2, "claimed", 1), (3, "claimed", None),
                                        (4, "callback_scheduled", 1), (5, "closed", 1)]:
            connection.execute(text(
                "INSERT INTO handoff_tickets (id, call_id, reason, status, assigned_user_id, note, created_at, "
                "updated_at) VALUES (:id, 'c1', 'caller pressed 0', :status, :user, '', '2026-12-01 08:00:00', "
                "'2026-12-02 08:00:00')"), {"id": ticket_id, "status": status, "user": user})
    database.migrate()
    tickets = TicketDesk(database).list()
    assert [ticket.status for ticket in tickets] == [S.OPEN, S.ASSIGNED, S.OPEN, S.ASSIGNED, S.RESOLVED]
    assert {(ticket.trigger, ticket.attempts, ticket.version) for ticket in tickets} == {("other", 0, 1)}
    assert all(ticket.due_at == ticket.created_at and ticket.context == {} for ticket in tickets)
    assert tickets[4].resolved_at == tickets[4].updated_at and tickets[1].resolved_at is None
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
        states = connection.execute(text("SELECT status FROM handoff_tickets ORDER BY id")).scalars().all()
    assert states == ["open", "claimed", "open", "claimed", "closed"]
    database.close()


# -- accounts ------------------------------------------------------------------------------------------------

def test_accounts_hash_verify_and_deactivate(accounts: Accounts, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = accounts.create("wang", "王小明", "agent", "s3cret-passw0rd")
    assert (created.username, created.display_name, created.role, created.active) == (
        "wang", "王小明", UserRole.AGENT, True)
    with accounts.database.engine.connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM users WHERE username = 'wang'")).scalar_one()
    assert stored.startswith("$argon2id$") and "s3cret" not in stored
    assert accounts.verify("wang", "s3cret-passw0rd").id == created.id
    with pytest.raises(WrongPasswordError, match="wrong password for user 'wang'"):
        accounts.verify("wang", "s3cret-passw0rc")
    with pytest.raises(UnknownUserError, match="no user 'zhang'"):
        accounts.verify("zhang", "s3cret-passw0rd")
    accounts.deactivate("wang")
    with pytest.raises(InactiveUserError, match="user 'wang' is deactivated"):
        accounts.verify("wang", "s3cret-passw0rd")
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(("username", "role", "password", "message"), [
    ("wang", "agent", "short", "the password is too short"),
    ("wang", "boss", "long enough 1", "role 'boss' is not one of: agent, supervisor, kb_editor, admin"),
    ("王", "agent", "long enough 1", "username '王'"),
    ("taken", "agent", "long enough 1", "username 'taken' is taken"),
])
def test_bad_accounts_are_refused(accounts: Accounts, username: str, role: str, password: str, message: str) -> None:
    accounts.create("taken", "已有", "agent", "long enough 1")
    with pytest.raises(InvalidAccountError, match=message):
        accounts.create(username, "名字", role, password)


# -- the commands --------------------------------------------------------------------------------------------

def test_tickets_list_json_shows_an_open_ticket_with_a_masked_number(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'var' / 'hotline.db'}")
    database.migrate()
    ticket_id = open_ticket(TicketDesk(database), number="13800000000", question="养老金怎么领")
    database.close()
    result = run(["tickets", "list", "--status", "open", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    [listed] = json.loads(result.stdout)
    assert {key: listed[key] for key in ("id", "state", "trigger", "number", "attempts", "owner", "question")} == {
        "id": ticket_id, "state": "open", "trigger": "key_0", "number": "138****0000", "attempts": 0,
        "owner": None, "question": "养老金怎么领"}
    assert dt.datetime.fromisoformat(listed["due_at"]).tzinfo is not None
    assert "13800000000" not in result.stdout
    plain = run(["tickets", "list"], tmp_path)
    assert plain.returncode == 0 and "138****0000" in plain.stdout and "养老金怎么领" in plain.stdout


def test_users_add_then_the_password_verifies_and_errors_are_clear(tmp_path: Path) -> None:
    added = run(["users", "add", "wang", "--role", "agent", "--name", "王小明", "--password-stdin"], tmp_path,
                stdin="s3cret-passw0rd\n")
    assert added.returncode == 0, added.stderr
    assert "s3cret" not in added.stdout + added.stderr
    database = Database(f"sqlite:///{tmp_path / 'var' / 'hotline.db'}")
    assert Accounts(database).verify("wang", "s3cret-passw0rd").display_name == "王小明"
    database.close()
    listed = run(["users", "list", "--json"], tmp_path)
    assert [(user["username"], user["role"], user["active"]) for user in json.loads(listed.stdout)] == [
        ("wang", "agent", True)]
    again = run(["users", "add", "wang", "--role", "agent", "--name", "王", "--password-stdin"], tmp_path,
                stdin="another-passw0rd\n")
    assert again.returncode == 1 and "错误：username 'wang' is taken" in again.stderr
    unknown = run(["tickets", "list", "--owner", "zhang"], tmp_path)
    assert unknown.returncode == 1 and "错误：no user 'zhang'" in unknown.stderr
    bad_state = run(["tickets", "list", "--status", "closed"], tmp_path)
    assert bad_state.returncode == 2 and "错误：未知状态 closed" in bad_state.stderr
    assert "Traceback" not in unknown.stderr + bad_state.stderr + again.stderr
