"""Staff sign-in (sessions, CSRF, roles, throttling) and the agent desk's REST API, over the app on SQLite."""

from __future__ import annotations

import datetime as dt
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher
from fastapi import Depends, WebSocket
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update
from starlette.websockets import WebSocketDisconnect

from kb.builds import BuildStore
from telephony import app as telephony_app
from telephony.answers import AnswerStack
from telephony.handoff.accounts import Accounts
from telephony.handoff.tickets import TicketDesk
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import CallChannel, HandoffStatus
from telephony.store.models import SmsKind, SmsMessage, User, UserRole
from telephony.web import staff_auth
from telephony.web.app import create_app
from telephony.web.routes import desk as desk_routes

PASSWORD = "correct-horse-9"
CSRF_MESSAGE = "请求校验失败（CSRF），请刷新页面后重试"
CSRF_IN_PAGE = re.compile(r'name="csrf_token" value="([^"]+)"')
DESK_TEMPLATE = ('<meta name="csrf-token" content="{{csrf_token}}"><p id="who">{{display_name}} / {{username}} / '
                 "{{role}}</p>")


@dataclass
class Env:
    client: TestClient
    hotline: object

    @property
    def database(self):
        return self.hotline.database

    def user(self, username: str, role: UserRole = UserRole.AGENT, display_name: str | None = None) -> int:
        hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests only
        return Accounts(self.database, hasher).create(username, display_name or username.title(), role, PASSWORD).id

    def call(self, number: str | None = "13800000000") -> str:
        return self.database.start_call(CallChannel.SIP, caller_number=number).id


@pytest.fixture(scope="module")
def answer_stack(tmp_path_factory: pytest.TempPathFactory) -> AnswerStack:
    """The shipped KB's answer stack, built once for this module (building it is most of an app's start)."""
    root = tmp_path_factory.mktemp("stack")
    settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        embedding_backend=EmbeddingBackend.NONE)
    return telephony_app.stack_loader(settings, BuildStore(root / "builds"))()


@pytest.fixture
def env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer_stack: AnswerStack):
    monkeypatch.setattr(telephony_app, "stack_loader", lambda *_args, **_kwargs: lambda: answer_stack)
    page = tmp_path / "desk.html"  # the real desk.html is another change's; a stand-in with its placeholders
    page.write_text(DESK_TEMPLATE, encoding="utf-8")
    monkeypatch.setattr(desk_routes, "DESK_PAGE", page)
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE})  # lexical: a fast start
    with TestClient(create_app(settings, voice=False), raise_server_exceptions=False) as client:
        yield Env(client, client.app.state.hotline_state.hotline)


def login(client: TestClient, username: str, password: str = PASSWORD):
    client.cookies.clear()  # a browser without a session
    token = CSRF_IN_PAGE.search(client.get("/desk/login").text).group(1)
    return client.post("/desk/login", data={"username": username, "password": password, "csrf_token": token},
                       follow_redirects=False)


def signed_in(client: TestClient, username: str) -> dict[str, str]:
    """Sign in and return the headers a desk POST needs (the CSRF token, read from the desk page)."""
    response = login(client, username)
    assert response.status_code == 303, response.text
    page = client.get("/desk")
    assert page.status_code == 200
    return {"X-CSRF-Token": re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)}


def second_client(env: Env) -> TestClient:
    """Another browser on the same running app (ticket calls only: it has its own event loop)."""
    return TestClient(env.client.app, raise_server_exceptions=False)


# -- signing in --------------------------------------------------------------------------------------


def test_sign_in_page_then_desk_with_the_agent_filled_in(env: Env) -> None:
    env.user("alice", display_name="王小丽")
    page = env.client.get("/desk/login")
    assert page.status_code == 200
    assert "<title>坐席登录 · 社保热线</title>" in page.text
    assert "用户名" in page.text and "密码" in page.text and "登录" in page.text
    assert page.headers["cache-control"] == "no-store"

    response = login(env.client, "alice")
    assert response.status_code == 303
    assert response.headers["location"] == "/desk"
    cookie = response.headers["set-cookie"].lower()
    assert "hotline_staff=" in cookie and "samesite=strict" in cookie and "httponly" in cookie
    desk = env.client.get("/desk")
    assert desk.status_code == 200
    assert '<p id="who">王小丽 / alice / agent</p>' in desk.text
    token = re.search(r'content="([^"]+)"', desk.text).group(1)
    assert len(token) >= 40 and token not in page.text  # a fresh token at sign-in
    me = env.client.get("/desk/api/me").json()
    assert me["username"] == "alice" and me["display_name"] == "王小丽" and me["role"] == "agent"
    assert env.client.get("/desk/login", follow_redirects=False).headers["location"] == "/desk"


def test_desk_page_escapes_the_display_name(env: Env) -> None:
    env.user("mallory", display_name="<script>x</script>")
    signed_in(env.client, "mallory")
    page = env.client.get("/desk").text
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_wrong_password_and_unknown_user_read_the_same(env: Env) -> None:
    env.user("alice")
    for username, password in (("alice", "not-the-password"), ("nobody", PASSWORD)):
        response = login(env.client, username, password)
        assert response.status_code == 401
        assert "用户名或密码错误" in response.text
    assert env.client.get("/desk/api/me").status_code == 401


def test_five_failures_lock_the_username_for_fifteen_minutes(env: Env) -> None:
    env.user("alice")
    env.user("bob")
    throttle = env.client.app.state.staff_login_throttle
    now = [1000.0]
    throttle.clock = lambda: now[0]
    for _ in range(4):
        assert login(env.client, "alice", "wrong-password").status_code == 401
    fifth = login(env.client, "alice", "wrong-password")
    assert fifth.status_code == 429 and "登录失败次数过多，请15分钟后再试" in fifth.text
    refused = login(env.client, "Alice")  # the right password does not help while locked
    assert refused.status_code == 429 and "登录失败次数过多，请15分钟后再试" in refused.text
    assert login(env.client, "bob").status_code == 303  # others are not locked out
    now[0] += 14 * 60
    assert login(env.client, "alice").status_code == 429
    now[0] += 61
    assert login(env.client, "alice").status_code == 303


def test_failures_older_than_the_window_do_not_count(env: Env) -> None:
    env.user("alice")
    throttle = env.client.app.state.staff_login_throttle
    now = [0.0]
    throttle.clock = lambda: now[0]
    for _ in range(4):
        login(env.client, "alice", "wrong-password")
    now[0] += 16 * 60
    assert login(env.client, "alice", "wrong-password").status_code == 401  # the first four fell out
    assert login(env.client, "alice").status_code == 303


def test_sign_in_form_needs_the_csrf_token(env: Env) -> None:
    env.user("alice")
    env.client.get("/desk/login")
    response = env.client.post("/desk/login", data={"username": "alice", "password": PASSWORD,
                                                    "csrf_token": "forged"}, follow_redirects=False)
    assert response.status_code == 403 and CSRF_MESSAGE in response.text
    assert env.client.get("/desk/api/me").status_code == 401


def test_deactivated_accounts_cannot_sign_in_and_editors_cannot_use_the_desk(env: Env) -> None:
    env.user("gone")
    Accounts(env.database).deactivate("gone")
    env.user("writer", UserRole.KB_EDITOR)
    deactivated = login(env.client, "gone")
    assert deactivated.status_code == 403 and "账号已停用，请联系管理员" in deactivated.text
    assert env.client.get("/desk/api/me").status_code == 401
    # One sign-in for all staff: a KB editor lands on the KB changes page, and the desk refuses them.
    editor = login(env.client, "writer")
    assert editor.status_code == 303 and editor.headers["location"] == "/review/kb"
    me = env.client.get("/desk/api/me")
    assert me.status_code == 403 and me.json()["detail"] == "您的账号没有坐席权限"
    page = env.client.get("/desk", follow_redirects=False)
    assert page.status_code == 403 and "您的账号没有坐席权限" in page.text


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(env: Env) -> None:
    env.user("alice")
    for asked, landed in (("/desk?tab=tickets", "/desk?tab=tickets"), ("https://evil.example/x", "/desk"),
                          ("//evil.example", "/desk"), ("/api/admin/kb/reload", "/desk")):
        env.client.cookies.clear()
        page = env.client.get("/desk/login", params={"next": asked})
        token = CSRF_IN_PAGE.search(page.text).group(1)
        response = env.client.post("/desk/login", data={"username": "alice", "password": PASSWORD,
                                                         "csrf_token": token, "next": asked},
                                   follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == landed, asked


def test_supervisor_and_admin_may_use_the_desk(env: Env) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    env.user("root", UserRole.ADMIN)
    for name, role in (("sup", "supervisor"), ("root", "admin")):
        signed_in(env.client, name)
        assert env.client.get("/desk/api/me").json()["role"] == role


def test_without_a_session_the_desk_redirects_and_the_api_says_sign_in(env: Env) -> None:
    response = env.client.get("/desk", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/desk/login"
    for path in ("/desk/api/me", "/desk/api/tickets", "/desk/api/tickets/1", "/desk/api/items?q=社保卡"):
        response = env.client.get(path)
        assert response.status_code == 401
        assert response.json()["detail"] == "请先登录"
    assert env.client.post("/desk/api/tickets/1/claim").json()["detail"] == "请先登录"


def test_a_post_without_the_csrf_token_is_refused(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    ticket = TicketDesk(env.database).open(env.call(), "caller pressed 0", callback_number="13800000000")
    for sent in ({}, {"X-CSRF-Token": "forged"}):
        response = env.client.post(f"/desk/api/tickets/{ticket.id}/claim", headers=sent)
        assert response.status_code == 403
        assert response.json()["detail"] == CSRF_MESSAGE
    assert TicketDesk(env.database).get(ticket.id).status is HandoffStatus.OPEN
    assert env.client.post(f"/desk/api/tickets/{ticket.id}/claim", headers=headers).status_code == 200


def test_a_role_taken_away_closes_the_desk(env: Env) -> None:
    user_id = env.user("alice")
    signed_in(env.client, "alice")
    with env.database.session() as session:
        session.execute(update(User).where(User.id == user_id).values(role=UserRole.KB_EDITOR))
    response = env.client.get("/desk/api/me")
    assert response.status_code == 403 and response.json()["detail"] == "您的账号没有坐席权限"


def test_a_deactivated_user_loses_an_existing_session(env: Env) -> None:
    env.user("alice")
    signed_in(env.client, "alice")
    Accounts(env.database).deactivate("alice")
    response = env.client.get("/desk/api/me")
    assert response.status_code == 401
    assert response.json()["detail"] == "账号不存在或已停用，请重新登录"
    assert env.client.get("/desk", follow_redirects=False).headers["location"] == "/desk/login"  # session cleared


def test_a_deleted_user_whose_id_was_reused_loses_the_session(env: Env) -> None:
    user_id = env.user("alice")
    signed_in(env.client, "alice")
    with env.database.session() as session:
        session.execute(update(User).where(User.id == user_id).values(username="someone-else"))
    response = env.client.get("/desk/api/me")
    assert response.status_code == 401 and response.json()["detail"] == "账号不存在或已停用，请重新登录"


def test_sign_out_ends_the_session(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    assert env.client.post("/desk/logout", follow_redirects=False).status_code == 403  # no token: not signed out
    response = env.client.post("/desk/logout", headers=headers, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/desk/login")
    assert env.client.get("/desk/api/me").json()["detail"] == "请先登录"
    assert "您已退出登录" in env.client.get(response.headers["location"]).text


# -- the worklist and ticket operations --------------------------------------------------------------


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 12, 7, hour, minute, tzinfo=dt.UTC)  # in the past


def open_at(env: Env, when: dt.datetime, number: str = "13800000000", **context) -> int:
    desk = TicketDesk(env.database, clock=lambda: when)
    return desk.open(env.call(number), "caller pressed 0", callback_number=number, context=context).id


def test_the_worklist_is_sorted_by_due_time_and_shows_numbers(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    late = open_at(env, at(3), "13911112222")
    first = open_at(env, at(1), "13800001234", question="社保卡丢了怎么办")
    middle = open_at(env, at(2))
    done = open_at(env, at(0))
    TicketDesk(env.database).claim(middle, 1)
    operator = TicketDesk(env.database)
    operator.claim(done, 1)
    operator.record_attempt(done, 1, "reached")
    operator.resolve(done, 1, "已解答")

    tickets = env.client.get("/desk/api/tickets").json()["tickets"]
    assert [ticket["id"] for ticket in tickets] == [first, middle, late]
    head = tickets[0]
    assert head["status"] == "open" and head["trigger"] == "key_0" and head["reason"] == "caller pressed 0"
    assert head["callback_number"] == "138****1234" and head["callback_number_full"] == "13800001234"
    assert head["due_at"] == "2025-12-07T01:00:00+00:00" and head["due_label"] == "12月7日 09:00"
    assert head["context"] == {"question": "社保卡丢了怎么办"} and head["overdue"] is True
    assert head["owner"] is None and head["attempts"] == 0 and head["notes"] == ""
    assert tickets[1]["owner"] == "alice" and tickets[1]["status"] == "assigned"

    mine = env.client.get("/desk/api/tickets?mine=true").json()["tickets"]
    assert [ticket["id"] for ticket in mine] == [middle]
    resolved = env.client.get("/desk/api/tickets?status=resolved").json()["tickets"]
    assert [ticket["id"] for ticket in resolved] == [done]
    assert len(env.client.get("/desk/api/tickets?status=all").json()["tickets"]) == 4
    bad = env.client.get("/desk/api/tickets?status=closed")
    assert bad.status_code == 422 and "状态 closed 无效" in bad.json()["detail"]
    assert headers  # signed in with a token, unused by GETs


def test_a_second_agent_cannot_claim_a_claimed_ticket(env: Env) -> None:
    env.user("alice", display_name="王小丽")
    env.user("bob")
    alice = signed_in(env.client, "alice")
    other = second_client(env)
    bob = signed_in(other, "bob")
    ticket = open_at(env, at(1))

    claimed = env.client.post(f"/desk/api/tickets/{ticket}/claim", headers=alice)
    assert claimed.status_code == 200
    assert claimed.json()["status"] == "assigned" and claimed.json()["owner"] == "alice"
    refused = other.post(f"/desk/api/tickets/{ticket}/claim", headers=bob)
    assert refused.status_code == 409
    assert refused.json()["detail"] == "该回访单已被 王小丽 领取"
    assert refused.json()["owner"] == "alice"
    not_owner = other.post(f"/desk/api/tickets/{ticket}/attempts", json={"outcome": "reached"}, headers=bob)
    assert not_owner.status_code == 403 and "只有负责人可以操作" in not_owner.json()["detail"]


def test_attempt_then_resolve(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    ticket = open_at(env, at(1))
    early = env.client.post(f"/desk/api/tickets/{ticket}/attempts", json={"outcome": "busy"}, headers=headers)
    assert early.status_code == 409 and early.json()["detail"].endswith("不能记录回访（请先领取）")
    env.client.post(f"/desk/api/tickets/{ticket}/claim", headers=headers)

    premature = env.client.post(f"/desk/api/tickets/{ticket}/resolve", json={"note": "已解答"}, headers=headers)
    assert premature.status_code == 409
    assert premature.json()["detail"] == f"回访单 {ticket} 当前状态为「已领取」，不能办结（请先记录一次回访）"
    invalid = env.client.post(f"/desk/api/tickets/{ticket}/attempts", json={"outcome": "maybe"}, headers=headers)
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("回访结果无效")

    attempt = env.client.post(f"/desk/api/tickets/{ticket}/attempts",
                              json={"outcome": "no_answer", "note": "无人接听"}, headers=headers)
    assert attempt.status_code == 200
    assert attempt.json()["status"] == "attempted" and attempt.json()["attempts"] == 1
    reached = env.client.post(f"/desk/api/tickets/{ticket}/attempts", json={"outcome": "reached"}, headers=headers)
    assert reached.json()["attempts"] == 2
    note = env.client.post(f"/desk/api/tickets/{ticket}/notes", json={"note": "来电人下午有空"}, headers=headers)
    assert note.status_code == 200 and "alice] 来电人下午有空" in note.json()["notes"]
    empty = env.client.post(f"/desk/api/tickets/{ticket}/resolve", json={"note": " "}, headers=headers)
    assert empty.status_code == 422 and empty.json()["detail"] == "请填写办结说明"

    resolved = env.client.post(f"/desk/api/tickets/{ticket}/resolve", json={"note": "已告知补卡流程"},
                               headers=headers)
    assert resolved.status_code == 200
    body = resolved.json()
    assert body["status"] == "resolved" and body["resolved_at"] is not None and "已告知补卡流程" in body["notes"]
    assert [(a["outcome"], a["by"], a["note"]) for a in body["attempt_list"]] == [
        ("no_answer", "alice", "无人接听"), ("reached", "alice", "")]
    detail = env.client.get(f"/desk/api/tickets/{ticket}").json()
    assert detail["attempt_list"][0]["outcome_label"] == "无人接听"
    assert env.client.get("/desk/api/tickets").json()["tickets"] == []
    again = env.client.post(f"/desk/api/tickets/{ticket}/release", headers=headers)
    assert again.status_code == 409 and "已办结" in again.json()["detail"]


def test_release_puts_the_ticket_back(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    ticket = open_at(env, at(1))
    env.client.post(f"/desk/api/tickets/{ticket}/claim", headers=headers)
    released = env.client.post(f"/desk/api/tickets/{ticket}/release", json={"note": "下班"}, headers=headers)
    assert released.status_code == 200
    assert released.json()["status"] == "open" and released.json()["owner"] is None


def test_unknown_ticket_is_404(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    for response in (env.client.get("/desk/api/tickets/999"),
                     env.client.post("/desk/api/tickets/999/claim", headers=headers),
                     env.client.post("/desk/api/tickets/999/notes", json={"note": "x"}, headers=headers)):
        assert response.status_code == 404
        assert response.json()["detail"] == "回访单 999 不存在"


# -- notes on a call taken at the desk -------------------------------------------------------------------


def test_the_agent_who_took_a_call_keeps_signed_notes_on_it(env: Env) -> None:
    alice, _ = env.user("alice"), env.user("bob")
    env.user("sue", UserRole.SUPERVISOR)
    call = env.call()
    assert env.database.set_call_agent(call, alice) is True
    assert env.database.set_call_agent("no-such-call", alice) is False

    headers = signed_in(env.client, "alice")
    first = env.client.post(f"/desk/api/calls/{call}/notes", json={"note": "咨询养老保险转移"}, headers=headers)
    assert first.status_code == 200, first.text
    second = env.client.post(f"/desk/api/calls/{call}/notes", json={"note": "  已口头答复  "}, headers=headers)
    lines = second.json()["notes"].split("\n")
    assert [line.split("] ", 1)[1] for line in lines] == ["咨询养老保险转移", "已口头答复"]
    assert all(re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\dZ alice\] ", line) for line in lines)
    assert env.client.post(f"/desk/api/calls/{call}/notes", json={"note": " "}, headers=headers).json()["detail"] \
        == "请填写备注内容"
    assert env.client.post("/desk/api/calls/nope/notes", json={"note": "x"}, headers=headers).status_code == 404

    bob = signed_in(env.client, "bob")  # another agent: not their call
    refused = env.client.post(f"/desk/api/calls/{call}/notes", json={"note": "我来补充"}, headers=bob)
    assert refused.status_code == 403 and refused.json()["detail"] == "这通来电不是您接听的，不能添加备注"
    sue = signed_in(env.client, "sue")  # a supervisor may add to any call's notes
    assert env.client.post(f"/desk/api/calls/{call}/notes", json={"note": "已抽检"}, headers=sue).status_code == 200
    stored = env.database.get_call(call)
    assert stored.agent_id == alice and stored.agent_notes.count("\n") == 2 and "sue] 已抽检" in stored.agent_notes

    env.client.cookies.clear()  # no session: nothing is written
    assert env.client.post(f"/desk/api/calls/{call}/notes", json={"note": "x"}).status_code == 401


# -- guides by SMS ---------------------------------------------------------------------------------------


def test_items_are_found_by_title_or_alias(env: Env) -> None:
    env.user("alice")
    signed_in(env.client, "alice")
    items = env.client.get("/desk/api/items", params={"q": "社保卡"}).json()["items"]
    assert "card-loss-report" in {item["id"] for item in items}
    assert all(set(item) == {"id", "title"} for item in items) and len(items) <= 20
    assert len(env.client.get("/desk/api/items").json()["items"]) == 20


def sms_rows(env: Env) -> list[SmsMessage]:
    with env.database.session() as session:
        return list(session.scalars(select(SmsMessage).order_by(SmsMessage.id)))


def test_a_guide_sms_for_a_ticket_goes_to_its_callback_number(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    ticket = open_at(env, at(1), "13912345678")
    response = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "ticket_id": ticket},
                               headers=headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["to"] == "139****5678" and body["segments"] >= 1 and body["state"] in ("queued", "sending",
                                                                                      "submitted")
    [row] = sms_rows(env)
    assert row.id == body["id"] and row.phone == "13912345678" and row.item_id == "card-loss-report"
    assert row.kind is SmsKind.GUIDE and row.call_id == TicketDesk(env.database).get(ticket).call_id
    assert row.reference.startswith(f"desk:alice:ticket-{ticket}:card-loss-report:")


def test_a_guide_sms_for_a_call_or_a_number(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    call = env.call("13700001111")
    by_call = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "call_id": call},
                              headers=headers)
    assert by_call.status_code == 202 and by_call.json()["to"] == "137****1111"
    by_number = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "to": "+8613600002222"},
                                headers=headers)
    assert by_number.status_code == 202
    assert [(row.phone, row.call_id) for row in sms_rows(env)] == [("13700001111", call), ("13600002222", None)]


def test_sms_refusals_read_in_chinese(env: Env) -> None:
    env.user("alice")
    headers = signed_in(env.client, "alice")
    landline = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "to": "0773-2822222"},
                               headers=headers)
    assert landline.status_code == 422 and landline.json()["detail"] == "号码不是有效的手机号"
    unknown = env.client.post("/desk/api/sms", json={"item_id": "no-such-item", "to": "13800000000"},
                              headers=headers)
    assert unknown.status_code == 422 and unknown.json()["detail"] == "办事指南 no-such-item 不存在"
    missing = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "ticket_id": 999},
                              headers=headers)
    assert missing.status_code == 404 and missing.json()["detail"] == "回访单 999 不存在"
    no_csrf = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "to": "13800000000"})
    assert no_csrf.status_code == 403
    for _ in range(5):  # the per-number hourly limit (5 by default)
        env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "to": "13500000000"}, headers=headers)
    limited = env.client.post("/desk/api/sms", json={"item_id": "card-loss-report", "to": "13500000000"},
                              headers=headers)
    assert limited.status_code == 429 and limited.json()["reason"] == "number_hourly_limit"
    assert "上限" in limited.json()["detail"]
    assert {row.phone for row in sms_rows(env)} == {"13500000000"}


# -- pieces ----------------------------------------------------------------------------------------------


def test_the_session_key_is_made_once_and_private(settings: Settings) -> None:
    first = staff_auth.session_secret(settings)
    path = settings.data_dir / "staff_session.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert staff_auth.session_secret(settings) == first and len(first) >= 32
    given = settings.model_copy(update={"staff_session_secret": SecretStr("x" * 40)})
    assert staff_auth.session_secret(given) == "x" * 40
    with pytest.raises(ValueError, match="HOTLINE_STAFF_SESSION_SECRET"):
        Settings(data_dir=settings.data_dir, staff_session_secret="short")


@pytest.mark.parametrize(("origin", "host", "ok"), [
    ("http://desk.example:8000", "desk.example:8000", True),
    ("https://desk.example", "desk.example", True),
    ("https://desk.example:443", "desk.example", True),
    ("https://evil.example", "desk.example", False),
    ("http://desk.example:8001", "desk.example:8000", False),
    (None, "desk.example", False),
    ("null", "desk.example", False),
])
def test_websocket_origin_check(origin: str | None, host: str, ok: bool) -> None:
    headers = {"host": host} | ({"origin": origin} if origin else {})
    assert staff_auth.websocket_origin_ok(SimpleNamespace(headers=headers)) is ok


def test_staff_member_guards_a_websocket(env: Env) -> None:
    app = env.client.app

    @app.websocket("/desk/test-ws")
    async def probe(websocket: WebSocket, staff=Depends(staff_auth.staff_member())) -> None:  # noqa: B008
        await websocket.accept()
        await websocket.send_json(staff.to_json())
        await websocket.close()

    with pytest.raises(WebSocketDisconnect) as refused:
        with env.client.websocket_connect("/desk/test-ws"):
            pass
    assert refused.value.code == 1008
    env.user("alice")
    signed_in(env.client, "alice")
    with env.client.websocket_connect("/desk/test-ws") as websocket:
        assert websocket.receive_json()["username"] == "alice"
