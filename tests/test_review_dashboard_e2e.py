"""The supervisors' dashboard and gap report in headless Chromium (Debian's) against the real server on SQLite.

A supervisor signs in at /desk/login, opens /review/dashboard for 2-3 March 2026: the three charts are drawn in
their canvases (pixels of each series' colour), the figures are the ones worked out by hand in
test_review_reports.py, and the date picker narrows the range. The gap page lists the clusters with links to the
turns. An agent gets the 403 page. Screenshots at 1366×768 land in the test's tmp dir (dashboard.png, gaps.png).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher

from telephony.handoff.accounts import Accounts
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import Database
from telephony.store.models import UserRole
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.test_review_reports import PENSION, dashboard_rows, gap_rows
from tests.test_softphone import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, playwright_sync

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

PASSWORD = "review-password-01"
SUPERVISOR = ("qa01", "王质检")
AGENT = ("agent01", "李坐席")
VIEWPORT = {"width": 1366, "height": 768}
# Real KB items, so the top-items chart shows their titles.
PENSION_ITEM = ("insufficient-years-options", "到龄缴费年限不够：几种办法比较和选择")
CARD_ITEM = ("flexible-early-retirement", "弹性提前退休申请")
# Each series' colour in the page (RGB): the hourly bars, the four outcomes, the top-item bars.
BLUE, GREEN, ORANGE, GREY = (31, 111, 235), (45, 164, 78), (251, 143, 68), (140, 149, 159)
# Pixels of one colour (±8 per channel) in a canvas.
COUNT_COLOUR = """
([id, rgb]) => {
  const canvas = document.getElementById(id);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0, painted = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] > 0) painted++;
    if (Math.abs(pixels[i] - rgb[0]) <= 8 && Math.abs(pixels[i + 1] - rgb[1]) <= 8 &&
        Math.abs(pixels[i + 2] - rgb[2]) <= 8 && pixels[i + 3] > 200) count++;
  }
  return {count, painted, total: pixels.length / 4};
}
"""


@dataclass
class Server:
    base: str
    database: Database


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var", centre_phone="0773-0000000",
                        sms_signature="测试社保", tts_prerender=False, kb_watch=False,
                        embedding_backend=EmbeddingBackend.NONE)  # lexical retrieval: a fast start
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
    accounts = Accounts(database, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.create(*SUPERVISOR, UserRole.SUPERVISOR, PASSWORD)
    accounts.create(*AGENT, UserRole.AGENT, PASSWORD)
    try:
        yield Server(base, database)
    finally:
        database.close()
        uvicorn_server.should_exit = True
        thread.join(10)


def _sign_in(page, base: str, username: str, next_page: str) -> None:
    page.goto(f"{base}{next_page}")  # no session: the sign-in page, coming back here afterwards
    page.wait_for_selector("input[name=username]", timeout=WAIT_MS)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def _text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def test_dashboard_and_gaps_in_the_browser(server: Server, tmp_path: Path) -> None:
    dashboard_rows(server.database, pension=PENSION_ITEM[0], card=CARD_ITEM[0])
    gap_rows(server.database, now=dt.datetime.now(dt.UTC))
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, locale="zh-CN")
            _sign_in(page, server.base, SUPERVISOR[0], "/review/dashboard?from=2026-03-02&to=2026-03-03")
            page.wait_for_selector("body[data-state=ready]", timeout=WAIT_MS)
            assert page.url.endswith("/review/dashboard?from=2026-03-02&to=2026-03-03")
            assert _text(page, "#who-name") == SUPERVISOR[1]

            assert _text(page, "#fig-calls") == "5通"
            assert _text(page, "#fig-calls-note") == "转人工 1 通（20.0%）"
            assert _text(page, "#fig-latency") == "900 / 2,550毫秒"
            assert _text(page, "#fig-qa-sample") == "66.7%"
            assert _text(page, "#fig-qa-sample-note") == "正确 2 / 已标注 3 轮"
            assert _text(page, "#fig-qa-overall") == "60.0%"
            assert _text(page, "#fig-sms") == "60.0%"
            assert _text(page, "#fig-sms-note") == "送达 3 / 已有结果 5 条，2 条待回执"
            assert _text(page, "#outcome-legend li[data-outcome=answered] .share") == "40.0%"
            assert _text(page, "#range-note") == "2026-03-02 至 2026-03-03（北京时间，含首尾两天）"

            for canvas, colours in (("chart-hours", [BLUE]), ("chart-outcomes", [GREEN, BLUE, ORANGE, GREY]),
                                    ("chart-items", [GREEN])):
                for colour in colours:
                    drawn = page.evaluate(COUNT_COLOUR, [canvas, list(colour)])
                    assert drawn["count"] > 50, (canvas, colour, drawn)
            assert page.evaluate("Chart.getChart('chart-items').data.labels") == [PENSION_ITEM[1], CARD_ITEM[1]]
            bars = page.evaluate("Chart.getChart('chart-hours').data.datasets[0].data")
            assert (len(bars), sum(bars), bars[9]) == (48, 5, 2)
            assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]
            page.screenshot(path=str(tmp_path / "dashboard.png"))

            page.fill("#date-from", "2026-03-02")
            page.fill("#date-to", "2026-03-02")
            page.click("#range-form button[type=submit]")
            page.wait_for_function("document.getElementById('fig-calls').textContent === '3通'", timeout=WAIT_MS)
            assert page.evaluate("Chart.getChart('chart-hours').data.datasets[0].data.length") == 24
            assert page.url.endswith("?from=2026-03-02&to=2026-03-02")

            page.click("nav a[href='/review/gaps']")
            page.wait_for_selector("body[data-state=ready]", timeout=WAIT_MS)
            clusters = page.locator("#clusters > li.cluster")
            assert clusters.count() == 3
            assert [_text(page, f"#clusters > li:nth-child({n}) .count") for n in (1, 2, 3)] == ["5", "2", "1"]
            first_question = page.inner_text("#clusters > li:first-child .question")
            assert first_question.startswith("#1") and any(text in first_question for text in PENSION)
            links = page.eval_on_selector_all("#clusters > li:first-child .examples a",
                                              "links => links.map(link => link.getAttribute('href'))")
            assert links == ["/review/calls/p4#turn-2", "/review/calls/p4#turn-1", "/review/calls/p3#turn-1",
                             "/review/calls/p2#turn-1", "/review/calls/p1#turn-1"]
            assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]
            page.screenshot(path=str(tmp_path / "gaps.png"))

            page.click("button:text('退出')")
            page.wait_for_selector("input[name=username]", timeout=WAIT_MS)
            _sign_in(page, server.base, AGENT[0], "/review/dashboard")
            page.wait_for_selector("[role=alert]", timeout=WAIT_MS)
            assert "您的账号没有质检权限" in page.inner_text("body")
        finally:
            browser.close()
