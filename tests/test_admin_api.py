"""Accounts administration and the audit log over the app on SQLite: who may see /admin and /admin/audit, CSRF on every
POST, each account change with its audit entry, the refusals in Chinese (self-demotion, weak passwords, taken names,
unknown roles); and the `hotline users` commands."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from kb.builds import BuildStore
from telephony import app as telephony_app
from telephony.answers import AnswerStack
from telephony.cli import app as cli_app
from telephony.handoff.accounts import (
    Accounts,
    LastAdminError,
    SelfChangeError,
    UnknownRoleError,
    UsernameTakenError,
    WeakPasswordError,
    check_password,
)
from telephony.review import audit
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import Database
from telephony.store.models import UserRole
from telephony.web.app import create_app

PASSWORD = "correct-horse-9"
CSRF_IN_PAGE = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')
NO_ADMIN = "您的账号没有管理员权限"
CSRF_MESSAGE = "请求校验失败（CSRF），请刷新页面后重试"


@dataclass
class Env:
    client: TestClient
    database: Database

    def user(self, username: str, role: UserRole = UserRole.AGENT, display_name: str | None = None) -> int:
        hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests only
        return Accounts(self.database, hasher).create(username, display_name or username.title(), role, PASSWORD).id

    def sign_in(self, username: str, password: str = PASSWORD, page: str | None = "/admin/audit") -> dict[str, str]:
        """Sign in as `username` and return the headers a POST needs (the CSRF token, read from `page`)."""
        self.client.cookies.clear()
        token = CSRF_IN_PAGE.search(self.client.get("/desk/login").text).group(1)
        response = self.client.post("/desk/login", data={"username": username, "password": password,
                                                         "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        if page is None:
            return {}
        return {"X-CSRF-Token": CSRF_META.search(self.client.get(page).text).group(1)}

    def entries(self, action: str | None = "user") -> list[audit.AuditView]:
        return audit.entries(self.database, action)[0]


@pytest.fixture(scope="module")
def answer_stack(tmp_path_factory: pytest.TempPathFactory) -> AnswerStack:
    """The shipped KB's answer stack, built once for this module (building it is most of an app's start)."""
    root = tmp_path_factory.mktemp("stack")
    settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        embedding_backend=EmbeddingBackend.NONE)
    return telephony_app.stack_loader(settings, BuildStore(root / "builds"))()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch, answer_stack: AnswerStack):
    monkeypatch.setattr(telephony_app, "stack_loader", lambda *_args, **_kwargs: lambda: answer_stack)
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE})
    with TestClient(create_app(settings, voice=False), raise_server_exceptions=False) as client:
        yield Env(client, client.app.state.hotline_state.hotline.database)


@pytest.fixture
def admin(env: Env) -> dict[str, str]:
    """The boss signed in as admin: the POST headers."""
    env.user("boss", UserRole.ADMIN, "陈主任")
    return env.sign_in("boss", page="/admin")


# -- who may see what --------------------------------------------------------------------------------------------


def test_the_pages_need_the_right_role(env: Env) -> None:
    env.user("boss", UserRole.ADMIN, "陈主任")
    env.user("zhao", UserRole.SUPERVISOR)
    env.user("wang", UserRole.AGENT)
    env.user("qian", UserRole.KB_EDITOR)
    env.client.cookies.clear()
    for path in ("/admin", "/admin/audit"):
        redirect = env.client.get(path, follow_redirects=False)
        assert redirect.status_code == 303 and redirect.headers["location"] == f"/desk/login?next={path}"
    for path in ("/admin/api/users", "/admin/api/audit"):
        assert env.client.get(path).json()["detail"] == "请先登录"

    for username in ("wang", "qian"):
        env.sign_in(username, page=None)
        for path in ("/admin", "/admin/api/users"):
            response = env.client.get(path)
            assert response.status_code == 403 and NO_ADMIN in response.text
        for path in ("/admin/audit", "/admin/api/audit"):
            response = env.client.get(path)
            assert response.status_code == 403 and "您的账号没有查看审计日志的权限" in response.text

    env.sign_in("zhao")
    assert env.client.get("/admin").status_code == 403 and env.client.get("/admin/api/users").status_code == 403
    page = env.client.get("/admin/audit")
    assert page.status_code == 200 and "<title>审计日志 · 社保热线</title>" in page.text
    assert env.client.get("/admin/api/audit").status_code == 200

    env.sign_in("boss", page="/admin")
    page = env.client.get("/admin")
    assert page.status_code == 200 and "<title>用户管理 · 社保热线</title>" in page.text
    for label, href in (("通话审查", "/review"), ("看板", "/review/dashboard"), ("知识缺口", "/review/gaps"),
                        ("知识库修改", "/review/kb"), ("用户管理", "/admin"), ("审计日志", "/admin/audit")):
        assert re.search(rf'<a href="{href}"[^>]*>{label}</a>', page.text), label
    assert 'action="/desk/logout"' in page.text and "陈主任" in page.text and 'data-role="admin"' in page.text
    nonce = re.search(r'<script nonce="([^"]+)">', page.text).group(1)
    assert f"script-src 'nonce-{nonce}'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_every_post_needs_the_csrf_token(env: Env, admin: dict[str, str]) -> None:
    wang = env.user("wang")
    new_user = {"username": "li", "display_name": "李", "role": "agent", "password": "another-horse-7"}
    for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
        for path, body in (("/admin/api/users", new_user), (f"/admin/api/users/{wang}/role", {"role": "admin"}),
                           (f"/admin/api/users/{wang}/password", {"password": "another-horse-7"}),
                           (f"/admin/api/users/{wang}/active", {"active": False})):
            response = env.client.post(path, json=body, headers=headers)
            assert response.status_code == 403 and response.json()["detail"] == CSRF_MESSAGE
    assert [account.username for account in Accounts(env.database).list()] == ["boss", "wang"]
    assert Accounts(env.database).get("wang").role is UserRole.AGENT and env.entries() == []


def test_an_agent_with_a_valid_token_still_cannot_change_accounts(env: Env) -> None:
    env.user("boss", UserRole.ADMIN)
    wang = env.user("wang")
    headers = env.sign_in("wang", page="/desk")  # the desk page carries the agent's token
    for path, body in (("/admin/api/users", {"username": "li", "display_name": "李", "role": "admin",
                                             "password": "another-horse-7"}),
                       (f"/admin/api/users/{wang}/role", {"role": "admin"})):
        response = env.client.post(path, json=body, headers=headers)
        assert response.status_code == 403 and response.json()["detail"] == NO_ADMIN
    assert Accounts(env.database).get("wang").role is UserRole.AGENT and env.entries() == []


# -- the account actions -----------------------------------------------------------------------------------------


def test_add_a_user_then_they_sign_in(env: Env, admin: dict[str, str]) -> None:
    response = env.client.post("/admin/api/users", headers=admin, json={
        "username": "zhao", "display_name": "赵主管", "role": "supervisor", "password": "Quality-check-21"})
    assert response.status_code == 201, response.text
    user = response.json()["user"]
    assert {key: user[key] for key in ("username", "display_name", "role", "role_label", "active")} == {
        "username": "zhao", "display_name": "赵主管", "role": "supervisor", "role_label": "质检主管", "active": True}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", user["created_label"])
    listed = env.client.get("/admin/api/users").json()
    assert [row["username"] for row in listed["users"]] == ["boss", "zhao"]
    assert [role["label"] for role in listed["roles"]] == ["坐席", "质检主管", "知识库编辑", "管理员"]
    assert all("password" not in json.dumps(row) for row in listed["users"])
    [entry] = env.entries()
    assert (entry.username, entry.target, entry.detail["change"], entry.detail["role"]) == (
        "boss", "user:zhao", "create", "supervisor")
    assert "Quality-check-21" not in json.dumps(entry.detail) and "argon2" not in json.dumps(entry.detail)
    env.sign_in("zhao", "Quality-check-21")  # the new supervisor signs in
    assert env.client.get("/admin/api/audit").status_code == 200


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"username": "boss", "display_name": "重名", "role": "agent", "password": "another-horse-7"}, 409,
     "用户名 boss 已被使用，请换一个"),
    ({"username": "BOSS", "display_name": "重名", "role": "agent", "password": "another-horse-7"}, 409,
     "用户名 BOSS 已被使用，请换一个"),
    ({"username": "li", "display_name": "李", "role": "agent", "password": "short"}, 422, "密码太短：至少8个字符"),
    ({"username": "lixiao", "display_name": "李", "role": "agent", "password": "lixiao2026"}, 422,
     "密码不能包含用户名"),
    ({"username": "li", "display_name": "李", "role": "agent", "password": "12345678"}, 422, "密码太简单"),
    ({"username": "li", "display_name": "李", "role": "agent", "password": "88888888"}, 422, "密码太简单"),
    ({"username": "li", "display_name": "李", "role": "agent", "password": "woaini1314"}, 422, "密码太常见"),
    ({"username": "li", "display_name": "李", "role": "boss", "password": "another-horse-7"}, 422,
     "角色无效，可选：坐席（agent）、质检主管（supervisor）、知识库编辑（kb_editor）、管理员（admin）"),
    ({"username": "li", "display_name": "李", "role": "", "password": "another-horse-7"}, 422, "请选择角色"),
    ({"username": "李", "display_name": "李", "role": "agent", "password": "another-horse-7"}, 422, "用户名须为"),
    ({"username": "li", "display_name": "  ", "role": "agent", "password": "another-horse-7"}, 422, "请填写姓名"),
])
def test_bad_new_users_are_refused_in_chinese(env: Env, admin: dict[str, str], body: dict, status: int,
                                              detail: str) -> None:
    response = env.client.post("/admin/api/users", headers=admin, json=body)
    assert response.status_code == status and response.json()["detail"].startswith(detail), response.text
    assert [account.username for account in Accounts(env.database).list()] == ["boss"]
    assert env.entries() == []


def test_a_body_that_is_not_json_is_refused(env: Env, admin: dict[str, str]) -> None:
    response = env.client.post("/admin/api/users", headers=admin | {"Content-Type": "application/json"},
                               content=b"{not json")
    assert response.status_code == 400 and response.json()["detail"] == "请求格式错误，请刷新页面后重试"
    wang = env.user("wang")
    response = env.client.post(f"/admin/api/users/{wang}/active", headers=admin, json={"active": "maybe"})
    assert response.status_code == 422 and response.json()["detail"] == "请求格式错误，请刷新页面后重试"


def test_reset_a_password(env: Env, admin: dict[str, str]) -> None:
    wang = env.user("wang")
    weak = env.client.post(f"/admin/api/users/{wang}/password", headers=admin, json={"password": "password123"})
    assert weak.status_code == 422
    assert weak.json() == {"error": "invalid request", "detail": "密码太常见，很容易被猜到，请换一个",
                           "reason": "common"}
    response = env.client.post(f"/admin/api/users/{wang}/password", headers=admin, json={"password": "new-horse-44"})
    assert response.status_code == 200 and response.json()["user"]["username"] == "wang"
    [entry] = env.entries()
    assert (entry.username, entry.target, entry.detail) == (
        "boss", "user:wang", {"change": "password", "user_id": wang})
    accounts = Accounts(env.database)
    assert accounts.verify("wang", "new-horse-44").id == wang
    client = TestClient(env.client.app, raise_server_exceptions=False)
    token = CSRF_IN_PAGE.search(client.get("/desk/login").text).group(1)
    old = client.post("/desk/login", data={"username": "wang", "password": PASSWORD, "csrf_token": token})
    assert old.status_code == 401 and "用户名或密码错误" in old.text
    missing = env.client.post("/admin/api/users/9999/password", headers=admin, json={"password": "new-horse-44"})
    assert missing.status_code == 404 and missing.json()["detail"] == "该用户不存在，请刷新列表"


def test_change_a_role_takes_effect_at_once(env: Env, admin: dict[str, str]) -> None:
    wang = env.user("wang")
    wang_browser = TestClient(env.client.app, raise_server_exceptions=False)
    token = CSRF_IN_PAGE.search(wang_browser.get("/desk/login").text).group(1)
    wang_browser.post("/desk/login", data={"username": "wang", "password": PASSWORD, "csrf_token": token})
    assert wang_browser.get("/admin/api/audit").status_code == 403
    response = env.client.post(f"/admin/api/users/{wang}/role", headers=admin, json={"role": "supervisor"})
    assert response.status_code == 200 and response.json()["user"]["role_label"] == "质检主管"
    assert wang_browser.get("/admin/api/audit").status_code == 200  # the next request sees the new role
    same = env.client.post(f"/admin/api/users/{wang}/role", headers=admin, json={"role": "supervisor"})
    assert same.status_code == 200  # no change: no entry
    unknown = env.client.post(f"/admin/api/users/{wang}/role", headers=admin, json={"role": "root"})
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith("角色无效")
    [entry] = env.entries()
    assert (entry.target, entry.detail["change"], entry.detail["before"], entry.detail["after"]) == (
        "user:wang", "role", "agent", "supervisor")
    listed = env.client.get("/admin/api/audit?action=user").json()
    assert listed["entries"][0]["summary"] == "更改角色：坐席 → 质检主管"
    assert listed["entries"][0]["action_label"] == "账号管理"


def test_an_admin_cannot_demote_or_deactivate_themselves(env: Env, admin: dict[str, str]) -> None:
    boss = Accounts(env.database).get("boss").id
    demote = env.client.post(f"/admin/api/users/{boss}/role", headers=admin, json={"role": "supervisor"})
    assert demote.status_code == 409 and demote.json()["detail"] == "不能取消自己的管理员角色：请让另一位管理员操作"
    deactivate = env.client.post(f"/admin/api/users/{boss}/active", headers=admin, json={"active": False})
    assert deactivate.status_code == 409 and deactivate.json()["detail"] == "不能停用自己的账号：请让另一位管理员操作"
    account = Accounts(env.database).get("boss")
    assert account.role is UserRole.ADMIN and account.active and env.entries() == []
    # Another admin may do it.
    env.user("chen", UserRole.ADMIN)
    other = env.sign_in("chen", page="/admin")
    demoted = env.client.post(f"/admin/api/users/{boss}/role", headers=other, json={"role": "supervisor"})
    assert demoted.status_code == 200
    assert Accounts(env.database).get("boss").role is UserRole.SUPERVISOR


def test_deactivate_ends_the_session_and_reactivate_restores_it(env: Env, admin: dict[str, str]) -> None:
    wang = env.user("wang")
    wang_browser = TestClient(env.client.app, raise_server_exceptions=False)
    token = CSRF_IN_PAGE.search(wang_browser.get("/desk/login").text).group(1)
    wang_browser.post("/desk/login", data={"username": "wang", "password": PASSWORD, "csrf_token": token})
    assert wang_browser.get("/desk/api/me").status_code == 200
    off = env.client.post(f"/admin/api/users/{wang}/active", headers=admin, json={"active": False})
    assert off.status_code == 200 and off.json()["user"]["active"] is False
    gone = wang_browser.get("/desk/api/me")
    assert gone.status_code == 401 and gone.json()["detail"] == "账号不存在或已停用，请重新登录"
    on = env.client.post(f"/admin/api/users/{wang}/active", headers=admin, json={"active": True})
    assert on.status_code == 200 and on.json()["user"]["active"] is True
    env.sign_in("wang", page=None)
    assert env.client.get("/desk/api/me").json()["username"] == "wang"
    assert [entry.detail["change"] for entry in env.entries()] == ["reactivate", "deactivate"]


# -- the audit log -----------------------------------------------------------------------------------------------


def test_the_audit_log_reads_in_pages_and_filters(env: Env, admin: dict[str, str]) -> None:
    env.user("zhao", UserRole.SUPERVISOR)
    for number in range(60):
        audit.write(env.database, audit.Operator("zhao", 2), audit.AuditAction.LISTEN, f"call:{number:032x}",
                    track="caller")
    audit.write(env.database, audit.SYSTEM, audit.AuditAction.RETENTION, "calls before 2026-06-10", days=180,
                calls=12, turns=40, recordings=24, sms_blanked=3, dry_run=False)
    env.sign_in("zhao")
    first = env.client.get("/admin/api/audit").json()
    assert (first["total"], first["page"], first["pages"], len(first["entries"])) == (61, 1, 2, 50)
    assert first["entries"][0]["summary"] == "保留 180 天；通话 12 通，对话轮次 40 条，录音 24 个，短信 3 条"
    assert first["entries"][0]["action_label"] == "到期数据清理" and first["entries"][0]["username"] == "system"
    assert first["entries"][1]["summary"] == "track=caller" and first["entries"][1]["target"] == f"call:{59:032x}"
    second = env.client.get("/admin/api/audit?page=2").json()
    assert len(second["entries"]) == 11 and second["entries"][-1]["target"] == f"call:{0:032x}"
    only = env.client.get("/admin/api/audit?action=retention").json()
    assert only["total"] == 1 and only["entries"][0]["action"] == "retention"
    bad = env.client.get("/admin/api/audit?action=delete")
    assert bad.status_code == 422 and bad.json()["detail"].startswith("操作类型无效，可选：收听录音（listen）")
    for page in ("0", "x"):
        assert env.client.get(f"/admin/api/audit?page={page}").json()["detail"] == "页码无效"


def test_the_audit_log_cannot_be_changed_over_http(env: Env, admin: dict[str, str]) -> None:
    audit.write(env.database, audit.Operator("zhao", 2), audit.AuditAction.EXPORT, "calls", rows=10)
    [entry] = env.entries("export")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/admin/api/audit", f"/admin/api/audit/{entry.id}"):
            response = env.client.request(method, path, headers=admin)
            assert response.status_code in (404, 405), (method, path)
    assert env.entries("export") == [entry]


# -- the rules in Accounts, and the commands ---------------------------------------------------------------------


def test_password_rules() -> None:
    check_password("correct-horse-9", "wang")
    for password, reason in (("short", "short"), ("x" * 257, "long"), ("wang-1234567", "username"),
                             ("abcdefgh", "simple"), ("12121212", "simple"), ("Password123", "common")):
        with pytest.raises(WeakPasswordError) as raised:
            check_password(password, "wang")
        assert raised.value.reason == reason


def test_the_last_active_admin_keeps_the_role(settings: Settings) -> None:
    database = Database(settings.resolved_database_url)
    database.migrate()
    accounts = Accounts(database, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    boss = accounts.create("boss", "陈主任", "admin", PASSWORD)
    cli = audit.Operator("cli")
    with pytest.raises(LastAdminError, match="last active admin"):
        accounts.set_role("boss", "agent", cli)
    with pytest.raises(LastAdminError):
        accounts.deactivate("boss", cli)
    with pytest.raises(SelfChangeError):
        accounts.deactivate(boss.id, audit.Operator("boss", boss.id))
    with pytest.raises(UnknownRoleError):
        accounts.set_role("boss", "root", cli)
    accounts.create("chen", "陈", "editor", PASSWORD)  # the role's old name still works
    assert accounts.get("chen").role is UserRole.KB_EDITOR
    with pytest.raises(UsernameTakenError):
        accounts.create("Chen", "陈", "agent", PASSWORD)
    assert audit.entries(database)[1] == 0  # no actor given: nothing recorded
    database.close()


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("HOTLINE_DATA_DIR", str(settings.data_dir))
    database = Database(settings.resolved_database_url)
    yield database
    database.close()


def test_the_first_admin_is_made_with_the_command(cli: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(cli_app, ["users", "add", "boss", "--name", "陈主任", "--role", "admin", "--password-stdin"],
                          input="first-admin-pass\n")
    assert added.exit_code == 0, added.output
    assert "已创建用户 boss（陈主任，admin）" in added.output and "first-admin-pass" not in added.output
    assert Accounts(cli).verify("boss", "first-admin-pass").role is UserRole.ADMIN
    prompted = runner.invoke(cli_app, ["users", "add", "wang", "--name", "王", "--role", "agent"],
                             input="agent-horse-12\nagent-horse-12\n")
    assert prompted.exit_code == 0, prompted.output
    reset = runner.invoke(cli_app, ["users", "reset-password", "wang"], input="agent-horse-13\nagent-horse-13\n")
    assert reset.exit_code == 0 and "已重置用户 wang 的密码" in reset.output
    assert Accounts(cli).verify("wang", "agent-horse-13").username == "wang"
    mismatch = runner.invoke(cli_app, ["users", "reset-password", "wang"], input="agent-horse-14\nother-horse-1\n"
                             "agent-horse-14\nagent-horse-14\n")
    assert mismatch.exit_code == 0 and "Error: The two entered values do not match." in mismatch.output
    weak = runner.invoke(cli_app, ["users", "reset-password", "wang", "--password-stdin"], input="12345678\n")
    assert weak.exit_code == 1 and "错误：the password is too simple" in weak.output
    role = runner.invoke(cli_app, ["users", "role", "wang", "supervisor"])
    assert role.exit_code == 0 and "用户 wang 的角色现在是 supervisor" in role.output
    last = runner.invoke(cli_app, ["users", "role", "boss", "agent"])
    assert last.exit_code == 1 and "错误：user 'boss' is the last active admin" in last.output
    unknown = runner.invoke(cli_app, ["users", "role", "wang", "root"])
    assert unknown.exit_code == 1 and "错误：role 'root' is not one of" in unknown.output
    assert runner.invoke(cli_app, ["users", "deactivate", "wang"]).exit_code == 0
    assert runner.invoke(cli_app, ["users", "reactivate", "wang"]).exit_code == 0
    entries = audit.entries(cli, "user")[0]
    assert [(entry.username, entry.target, entry.detail["change"]) for entry in entries] == [
        ("cli", "user:wang", "reactivate"), ("cli", "user:wang", "deactivate"), ("cli", "user:wang", "role"),
        ("cli", "user:wang", "password"), ("cli", "user:wang", "password"), ("cli", "user:wang", "create"),
        ("cli", "user:boss", "create")]
