"""The accounts page end to end in headless Chromium (Debian's) against the real server on SQLite, at 1366×768: the
admin signs in, is refused a weak password, adds a supervisor, resets the supervisor's password, signs out; the
supervisor signs in with the new password and reads both changes in the audit log. Screenshots land in the test's
data dir (var/admin-*.png)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from telephony.handoff.accounts import Accounts
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import Database
from telephony.store.models import UserRole
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.test_softphone import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, playwright_sync

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

ADMIN = ("boss", "陈主任", "admin-horse-2026")
SUPERVISOR = ("zhaoli", "赵丽")
RESET_PASSWORD = "Review-pass-77"
VIEWPORT = {"width": 1366, "height": 768}


@dataclass
class Server:
    base: str
    settings: Settings
    database: Database


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE, "kb_watch": False})
    app = create_app(settings, voice=False)
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # the server thread is loading the answer stack
    else:
        raise AssertionError("the server did not become ready")
    database = Database(settings.resolved_database_url)
    Accounts(database).create(ADMIN[0], ADMIN[1], UserRole.ADMIN, ADMIN[2])  # as `hotline users add --role admin`
    try:
        yield Server(base, settings, database)
    finally:
        database.close()
        uvicorn_server.should_exit = True
        thread.join(10)


def _sign_in(page, username: str, password: str) -> None:
    page.get_by_label("用户名", exact=True).fill(username)
    page.get_by_label("密码", exact=True).fill(password)
    page.get_by_role("button", name="登录").click()


def _fits(page) -> None:
    """Nothing sticks out sideways at 1366×768."""
    assert page.evaluate("() => document.documentElement.scrollWidth") <= VIEWPORT["width"]


def test_admin_adds_a_supervisor_resets_the_password_and_the_supervisor_signs_in(server: Server) -> None:
    base, shots = server.base, Path(server.settings.data_dir)
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT, locale="zh-CN").new_page()
            page.goto(f"{base}/admin")
            assert "/desk/login" in page.url  # no session: the sign-in page, coming back to /admin
            _sign_in(page, ADMIN[0], ADMIN[2])
            page.wait_for_url(f"{base}/admin", timeout=WAIT_MS)
            page.wait_for_function("() => window.admin && window.admin.loaded", timeout=WAIT_MS)
            users = page.get_by_role("table", name="用户列表")
            me = users.locator("tr[data-username=boss]")
            assert "（我）" in me.inner_text() and me.get_by_role("button", name="停用").is_disabled()
            assert me.get_by_role("combobox").is_disabled()  # an admin cannot demote themselves

            page.get_by_label("用户名", exact=True).fill(SUPERVISOR[0])
            page.get_by_label("姓名", exact=True).fill(SUPERVISOR[1])
            role = page.get_by_label("角色", exact=True)
            assert [text.strip() for text in role.locator("option").all_inner_texts()] == [
                "坐席", "质检主管", "知识库编辑", "管理员"]
            role.select_option(label="质检主管")
            page.get_by_label("初始密码", exact=True).fill("12345678")
            page.get_by_role("button", name="添加用户").click()
            page.get_by_text("密码太简单").wait_for(timeout=WAIT_MS)
            page.screenshot(path=str(shots / "admin-weak-password.png"))

            page.get_by_role("button", name="随机生成").first.click()
            initial = page.get_by_label("初始密码", exact=True).input_value()
            assert len(initial) == 12
            page.get_by_role("button", name="添加用户").click()
            page.get_by_text(f"已添加用户 {SUPERVISOR[1]}（{SUPERVISOR[0]}，质检主管）").wait_for(timeout=WAIT_MS)
            row = users.locator(f"tr[data-username={SUPERVISOR[0]}]")
            row.wait_for(timeout=WAIT_MS)
            assert row.get_by_role("combobox").input_value() == "supervisor" and "在用" in row.inner_text()
            _fits(page)
            page.screenshot(path=str(shots / "admin-users.png"))

            row.get_by_role("button", name="重置密码").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_label("新密码").fill(RESET_PASSWORD)
            page.screenshot(path=str(shots / "admin-reset-dialog.png"))
            dialog.get_by_role("button", name="确定").click()
            page.get_by_text(f"已重置 {SUPERVISOR[1]} 的密码，请当面告知本人").wait_for(timeout=WAIT_MS)
            assert not dialog.is_visible()

            page.get_by_role("button", name="退出").click()
            page.get_by_text("您已退出登录").wait_for(timeout=WAIT_MS)

            page.goto(f"{base}/admin/audit")
            _sign_in(page, SUPERVISOR[0], initial)  # the initial password no longer works
            page.get_by_text("用户名或密码错误").wait_for(timeout=WAIT_MS)
            _sign_in(page, SUPERVISOR[0], RESET_PASSWORD)
            page.wait_for_url(f"{base}/admin/audit", timeout=WAIT_MS)
            page.wait_for_function("() => window.auditLog && window.auditLog.loaded", timeout=WAIT_MS)
            log = page.get_by_role("table", name="审计日志")
            rows = log.locator("tbody tr").all_inner_texts()
            assert len(rows) == 2
            assert "重置密码" in rows[0] and f"user:{SUPERVISOR[0]}" in rows[0] and ADMIN[0] in rows[0]
            assert "新建账号（质检主管）" in rows[1]
            assert not page.get_by_role("link", name="用户管理").is_visible()  # supervisors do not manage accounts
            assert page.get_by_role("link", name="通话审查").is_visible() and SUPERVISOR[1] in page.inner_text("header")
            _fits(page)
            page.screenshot(path=str(shots / "admin-audit.png"))
        finally:
            browser.close()
    account = Accounts(server.database).verify(SUPERVISOR[0], RESET_PASSWORD)
    assert (account.display_name, account.role) == (SUPERVISOR[1], UserRole.SUPERVISOR)
