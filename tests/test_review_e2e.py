"""Call review end to end, as supervisors and KB editors use it: headless Chromium (Debian's) against the real
server on SQLite, with the real background indexer, a real KB build and the audit log.

A supervisor signs in, filters the call list, searches 工伤, opens the call, plays its two-channel recording (the
turn being heard is highlighted), marks a turn wrong, and turns the caller's words into a question of the right item;
an unmasked export lands in the audit log. A KB editor applies the change through the KB build: the item file gains
the question, a new KB version is published and the running server switches to it. An agent cannot open /review.
Screenshots land in the test's data dir (var/review-*.png).
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from openpyxl import load_workbook
from sqlalchemy import text

from kb.loader import DEFAULT_ITEMS_DIR
from telephony.handoff.accounts import Accounts
from telephony.review import audit
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import Database
from telephony.store.models import Call, CallChannel, CallStatus, UserRole
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.test_softphone import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, playwright_sync

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

PASSWORD = "review-pass-2026"
MOBILE = "13912345678"
WORDS = "在车间出事了，公司不认，我想让社保那边给我定个性"  # the caller's words that become a question of the item
ITEM = "injury-recognition"


@dataclass
class Server:
    base: str
    settings: Settings
    database: Database
    calls: dict[str, str]


def _wav(path: Path, seconds: float, tone_hz: float, amplitude: int) -> str:
    t = np.arange(int(seconds * 8000)) / 8000
    samples = (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(samples.tobytes())
    return str(path)


def _call(database: Database, recordings: Path, started: dt.datetime, turns: list[dict], end_reason: str,
          recorded: bool = False) -> str:
    call_id = database.start_call(CallChannel.SIP, caller_number=MOBILE).id
    for seq, fields in enumerate(turns, start=1):
        database.add_turn(call_id, **({"spoken_text": "", "action": "answer", "confidence": 0.97} | fields))
        with database.session() as session:
            session.execute(text("UPDATE turns SET created_at = :t WHERE call_id = :c AND seq = :s"),
                            {"t": started + dt.timedelta(seconds=2 + 3 * (seq - 1)), "c": call_id, "s": seq})
    with database.session() as session:
        row = session.get(Call, call_id)
        row.started_at, row.status, row.end_reason = started, CallStatus.ENDED, end_reason
        row.ended_at = started + dt.timedelta(seconds=8)
        if recorded:
            row.recording_caller_path = _wav(recordings / f"{call_id}-caller.wav", 8, 300, 6000)
            row.recording_assistant_path = _wav(recordings / f"{call_id}-assistant.wav", 8, 500, 6000)
    return call_id


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    kb_dir = tmp_path / "kb-items"
    shutil.copytree(DEFAULT_ITEMS_DIR, kb_dir)  # the editor's change is written here, never to the repository
    settings = Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False, kb_dir=kb_dir, embedding_backend=EmbeddingBackend.NONE)
    database = Database(settings.resolved_database_url)
    database.migrate()
    accounts = Accounts(database)
    for username, name, role in (("zhao", "赵主管", UserRole.SUPERVISOR), ("qian", "钱编辑", UserRole.KB_EDITOR),
                                 ("sun", "孙坐席", UserRole.AGENT)):
        accounts.create(username, name, role, PASSWORD)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    calls = {
        "injury": _call(database, recordings, now - dt.timedelta(minutes=30), [
            {"caller_text": WORDS, "action": "clarify", "confidence": 0.41, "offered_item_ids": ["injury-accident-report"],
             "spoken_text": "您是想问工伤事故备案吗？"},
            {"caller_text": "不是，我要转人工", "action": "handoff", "confidence": 1.0, "spoken_text": "好的，正在为您转接人工。"}],
            "handoff", recorded=True),
        "card": _call(database, recordings, now - dt.timedelta(minutes=20), [
            {"caller_text": "社保卡丢了怎么挂失", "item_ids": ["card-loss-report"], "spoken_text": "社保卡丢失可以电话挂失。"}],
            "caller_hangup"),
        "pension": _call(database, recordings, now - dt.timedelta(minutes=10), [
            {"caller_text": "养老金每个月什么时候发", "item_ids": ["pension-calculation"], "spoken_text": "养老金按月发放。"}],
            "caller_hangup"),
    }
    app = create_app(settings, voice=False)
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the server did not become ready")
    try:
        yield Server(base, settings, database, calls)
    finally:
        database.close()
        uv.should_exit = True
        thread.join(10)


def _sign_in(page, base: str, username: str, asked: str) -> None:
    page.goto(f"{base}{asked}")
    page.wait_for_url("**/desk/login?**", timeout=WAIT_MS)  # no session: the sign-in page, coming back afterwards
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()


def test_supervisor_reviews_a_call_and_an_editor_fixes_the_kb(server: Server) -> None:
    base, data = server.base, server.settings.data_dir
    item_file = next(server.settings.kb_dir.rglob(f"{ITEM}.md"))
    assert WORDS not in item_file.read_text(encoding="utf-8")
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # An agent signs in but cannot open the review.
            agent = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            _sign_in(agent, base, "sun", "/review")
            agent.wait_for_load_state()
            assert agent.get_by_role("alert").inner_text() == "您的账号没有质检权限"

            context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
            page = context.new_page()
            _sign_in(page, base, "zhao", "/review")
            page.wait_for_url(f"{base}/review**", timeout=WAIT_MS)
            # The background indexer lists the three calls within seconds of the server's start.
            for _ in range(40):
                if page.locator("#count").inner_text() == "共 3 个通话":
                    break
                page.wait_for_timeout(500)
                page.get_by_role("button", name="查询").click()
            assert page.locator("#count").inner_text() == "共 3 个通话"

            page.get_by_label("结果").select_option(label="转人工")
            page.get_by_role("button", name="查询").click()
            page.wait_for_function("() => document.querySelector('#count').textContent === '共 1 个通话'")
            page.get_by_role("button", name="清空条件").click()
            page.wait_for_function("() => document.querySelector('#count').textContent === '共 3 个通话'")
            page.get_by_label("搜索通话内容").fill("工伤")
            page.get_by_role("button", name="查询").click()
            page.wait_for_function("() => document.querySelector('#count').textContent === '共 1 个通话'")
            row = page.locator("#rows tr")
            assert row.count() == 1 and "139****5678" in row.inner_text() and WORDS[:6] in row.inner_text()
            page.screenshot(path=str(data / "review-list.png"))

            row.click()
            page.wait_for_url(f"{base}/review/calls/{server.calls['injury']}", timeout=WAIT_MS)
            turn1 = page.locator("#turn-1")
            turn1.wait_for(timeout=WAIT_MS)
            assert WORDS in turn1.inner_text() and "工伤事故备案" in turn1.inner_text()

            page.get_by_role("button", name="播放录音").click()
            page.wait_for_function("() => document.querySelector('#audio').currentTime > 2.5", timeout=WAIT_MS)
            assert page.evaluate("() => document.querySelector('#audio').duration") == pytest.approx(8, abs=0.1)
            page.wait_for_function("() => document.querySelector('#turn-1').classList.contains('playing')",
                                   timeout=WAIT_MS)
            page.wait_for_function("() => document.querySelector('#audio').currentTime > 5.2", timeout=WAIT_MS)
            page.wait_for_function("() => document.querySelector('#turn-2').classList.contains('playing') && "
                                   "!document.querySelector('#turn-1').classList.contains('playing')", timeout=WAIT_MS)

            turn1.get_by_label("第1轮质检标记").select_option(label="回答错误")
            turn1.get_by_placeholder("备注（可选）").fill("应答成了事故备案，来电人问的是工伤认定")
            turn1.get_by_role("button", name="保存标记").click()
            page.get_by_role("status").filter(has_text="第 1 轮已标记为「回答错误」").wait_for(timeout=WAIT_MS)

            turn1.get_by_role("button", name="加为常见问法").click()
            turn1.get_by_label("归入事项").select_option(ITEM)
            assert turn1.get_by_label("问法", exact=True).input_value() == WORDS
            turn1.get_by_role("button", name="提交给知识库编辑").click()
            page.get_by_role("status").filter(has_text="已提交修改建议").wait_for(timeout=WAIT_MS)
            page.screenshot(path=str(data / "review-call.png"), full_page=True)

            # An unmasked export, from the list.
            page.goto(f"{base}/review")
            page.wait_for_function("() => document.querySelector('#count').textContent === '共 3 个通话'")
            page.get_by_label("显示完整号码（记入审计日志）").check()
            with page.expect_download() as download:
                page.get_by_role("button", name="导出Excel").click()
            sheet = load_workbook(io.BytesIO(Path(download.value.path()).read_bytes())).active
            numbers = [row[3] for row in sheet.iter_rows(min_row=2, values_only=True)]
            assert numbers == [MOBILE] * 3
            page.goto(f"{base}/admin/audit")
            exported = page.locator("#entries tr").filter(has_text="导出通话").first
            exported.wait_for(timeout=WAIT_MS)
            assert "赵主管" in exported.inner_text() or "zhao" in exported.inner_text()
            page.screenshot(path=str(data / "review-audit.png"))

            # The KB editor applies the change through the KB build.
            editor = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            _sign_in(editor, base, "qian", "/review/kb")
            editor.wait_for_url(f"{base}/review/kb", timeout=WAIT_MS)
            editor.get_by_text(WORDS).first.wait_for(timeout=WAIT_MS)
            editor.screenshot(path=str(data / "review-kb-proposed.png"))
            editor.get_by_role("button", name="应用到知识库").click()
            editor.get_by_text("修改 #1 已应用：知识库新版本").wait_for(timeout=120_000)
            editor.screenshot(path=str(data / "review-kb-applied.png"))
        finally:
            browser.close()

    assert WORDS in item_file.read_text(encoding="utf-8")
    # The running server switched to the new build, and answers the caller's words with the item now.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = httpx.post(f"{base}/api/ask", json={"question": WORDS}, timeout=30).json()
        if answer.get("items") == [ITEM]:
            break
        time.sleep(0.5)
    assert answer["items"] == [ITEM] and answer["action"] == "answer", answer
    logged = audit.entries(server.database, limit=50)[0]
    entries = {entry.action: entry for entry in reversed(logged)}  # the newest of each action
    assert entries["export"].detail["masked"] is False and entries["export"].username == "zhao"
    assert entries["listen"].target == server.calls["injury"]
    assert entries["qa_mark"].detail["label"] == "wrong_answer"
    assert [(e.username, e.detail.get("op")) for e in logged if e.action == "kb_change"] == [
        ("qian", "applied"), ("zhao", "proposed")]
