"""The agent desk end to end, as people use it: headless Chromium (Debian's) against the real server.

Two browsers with fake microphones: a caller on /phone and an agent on /desk. In hours the caller says 转人工, hears
the hold message, the agent signs in, sees the context card, accepts, and each side receives the other's audio; the
agent hangs up. After hours the call leaves a callback ticket, which the agent claims, records a call back on and
closes. Recognition is scripted (the tiny test model recognises nothing); VAD, endpointing, the dialogue, the queue,
the audio bridge, SQLite and the pages are real. Screenshots land in the test's data dir (var/*.png).
"""

from __future__ import annotations

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

from telephony.handoff.accounts import Accounts
from telephony.settings import Settings
from telephony.store import Database, HandoffStatus
from telephony.web.app import create_app
from tests.conftest import _free_port, office_calendar
from tests.test_call_runner import ToneTts
from tests.test_softphone import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, playwright_sync
from tests.voicefixtures import synthesize_mandarin
from voice.testing.fakes import SequenceAsrEngine

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

WAV_RATE_HZ = 48000
AGENT = ("agent01", "李坐席", "desk-password-01")
# Audible speech: RMS of 16-bit PCM above this (silence and Chromium's comfort noise stay far below).
SPEECH_RMS = 300
# Records every websocket frame a page receives, so the test reads what really arrived (binary as base64).
CAPTURE_FRAMES = """
(() => {
  window.__frames = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string") { window.__frames.push({t: Date.now(), text: event.data}); return; }
        const data = event.data instanceof ArrayBuffer ? event.data : null;
        if (data) {
          let binary = ""; const bytes = new Uint8Array(data);
          for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
          window.__frames.push({t: Date.now(), binary: btoa(binary)});
        }
      });
    }
  };
})();
"""


def _wav(path: Path, parts: list[np.ndarray]) -> Path:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(WAV_RATE_HZ)
        writer.writeframes(np.concatenate(parts).astype("<i2").tobytes())
    return path


def _speech(text: str) -> np.ndarray:
    return np.frombuffer(synthesize_mandarin(text, rate_hz=WAV_RATE_HZ), dtype="<i2")


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * WAV_RATE_HZ), dtype="<i2")


@dataclass
class Server:
    base: str
    settings: Settings
    database: Database


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("desk-wavs")
    talk = [_speech("喂你好我想问一下养老保险的事情"), _silence(1.0)] * 8
    caller = _wav(folder / "caller.wav", [_silence(2), _speech("我要转人工"), _silence(4), *talk, _silence(60)])
    agent = _wav(folder / "agent.wav", [_silence(0.5), *([_speech("您好这里是人工服务请讲"), _silence(0.8)] * 12)])
    return {"caller": caller, "agent": agent}


def _serve(tmp_path: Path, open_hours: list[str]) -> Iterator[Server]:
    settings = Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False, kb_watch=False, speculative_final=False, no_speech_timeout_ms=20000,
                        media_stream_token="test-media-token-0123456789",
                        office_hours_file=office_calendar(tmp_path / "hours.yaml", open_hours),
                        handoff_queue_timeout_s=120, handoff_offer_timeout_s=60)
    app = create_app(settings, asr=SequenceAsrEngine(["我要转人工"]), tts=ToneTts(wait_for=""))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {}).get("asr") == "ready":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)  # the server thread is loading the answer stack and the VAD
    else:
        raise AssertionError("the server did not become ready")
    database = Database(settings.resolved_database_url)
    Accounts(database).create(*AGENT[:2], "agent", AGENT[2])
    try:
        yield Server(base, settings, database)
    finally:
        database.close()
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def in_hours(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, ["00:00-24:00"])


@pytest.fixture
def after_hours(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, ["00:00-00:01"])  # open one minute a day: a run at midnight would be in hours


def _browser(playwright, wav: Path):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])


def _sign_in(page, base: str) -> None:
    page.goto(f"{base}/desk")
    assert page.url.endswith("/desk/login")  # no session: the login page
    page.get_by_label("用户名").fill(AGENT[0])
    page.get_by_label("密码").fill(AGENT[2])
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{base}/desk", timeout=WAIT_MS)
    page.wait_for_function("() => window.desk && window.desk.ws && window.desk.ws.readyState === 1", timeout=WAIT_MS)


def _received_pcm(page, since_ms: float, binary: bool) -> np.ndarray:
    """The audio a page received after `since_ms` (epoch ms): desk binary frames, or the softphone's μ-law media."""
    import base64
    import json

    from voice.audio import ULAW_DECODE_TABLE

    chunks = []
    for frame in page.evaluate("() => window.__frames"):
        if frame["t"] < since_ms:
            continue
        if binary and "binary" in frame:
            chunks.append(np.frombuffer(base64.b64decode(frame["binary"]), dtype="<i2"))
        elif not binary and "text" in frame:
            message = json.loads(frame["text"])
            if message.get("event") == "media":
                payload = np.frombuffer(base64.b64decode(message["media"]["payload"]), dtype=np.uint8)
                chunks.append(ULAW_DECODE_TABLE[payload])
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0


def test_in_hours_the_caller_reaches_an_agent_and_both_hear_each_other(in_hours: Server, wavs) -> None:
    base, data = in_hours.base, in_hours.settings.data_dir
    with playwright_sync.sync_playwright() as playwright:
        agent_browser, caller_browser = _browser(playwright, wavs["agent"]), _browser(playwright, wavs["caller"])
        try:
            desk = agent_browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            desk.add_init_script(CAPTURE_FRAMES)
            _sign_in(desk, base)
            desk.get_by_role("button", name="就绪").click()
            desk.wait_for_function("() => window.desk.state === 'ready'", timeout=WAIT_MS)

            phone = caller_browser.new_context().new_page()
            phone.add_init_script(CAPTURE_FRAMES)
            phone.goto(f"{base}/phone")
            phone.get_by_role("button", name="拨打").click()
            desk.wait_for_function("() => window.desk.state === 'offered'", timeout=60_000)
            card = desk.get_by_label("来电信息")
            assert card.get_by_text("来电人要求转人工").count() >= 1  # the trigger, before accepting
            assert card.get_by_text("我要转人工").count() >= 1  # the caller's words
            desk.screenshot(path=str(data / "desk-offer.png"))

            desk.get_by_role("button", name="接听").click()
            desk.wait_for_function("() => window.desk.state === 'talking'", timeout=WAIT_MS)
            connected_at = desk.evaluate("() => Date.now()")
            time.sleep(8)  # both keep talking: eight seconds of each side's speech crosses the bridge
            to_agent = _received_pcm(desk, connected_at, binary=True)
            to_caller = _received_pcm(phone, connected_at + 500, binary=False)
            desk.locator("#notes").fill("来电人咨询养老保险转移，已口头答复")
            desk.get_by_role("button", name="保存为通话备注").click()
            desk.get_by_text("已保存到本次通话记录").wait_for(timeout=WAIT_MS)
            desk.screenshot(path=str(data / "desk-talking.png"))
            assert to_agent.size > 8000 * 4 and _rms(to_agent) > SPEECH_RMS, (to_agent.size, _rms(to_agent))
            assert to_caller.size > 8000 * 4 and _rms(to_caller) > SPEECH_RMS, (to_caller.size, _rms(to_caller))

            desk.get_by_role("button", name="挂断").click()
            desk.wait_for_function("() => window.desk.state === 'away'", timeout=WAIT_MS)  # after-call work
            phone.wait_for_function("() => window.softphone.state === 'ended'", timeout=WAIT_MS)
        finally:
            agent_browser.close()
            caller_browser.close()
    deadline = time.monotonic() + 20
    calls = []
    while time.monotonic() < deadline:
        with in_hours.database.session() as session:
            from sqlalchemy import select

            from telephony.store import Call

            calls = list(session.scalars(select(Call)))
        if calls and calls[0].end_reason:
            break
        time.sleep(0.2)  # the server closes the record after the line drops
    [call] = calls
    assert call.end_reason == "agent"  # talked to a person: no callback ticket
    assert in_hours.database.get_call(call.id).handoff_tickets == []
    agent = Accounts(in_hours.database).get(AGENT[0])
    assert call.agent_id == agent.id  # the record names who took it, with their signed note
    assert call.agent_notes.endswith(f"{AGENT[0]}] 来电人咨询养老保险转移，已口头答复")


def test_after_hours_a_ticket_is_left_and_the_agent_closes_it(after_hours: Server, wavs) -> None:
    base, data = after_hours.base, after_hours.settings.data_dir
    with playwright_sync.sync_playwright() as playwright:
        agent_browser, caller_browser = _browser(playwright, wavs["agent"]), _browser(playwright, wavs["caller"])
        try:
            phone = caller_browser.new_context().new_page()
            phone.goto(f"{base}/phone")
            phone.get_by_role("button", name="拨打").click()
            # the ticket's sentence is said and the hotline hangs up
            phone.wait_for_function("() => window.softphone.state === 'ended'", timeout=60_000)
            desk = agent_browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            _sign_in(desk, base)
            worklist = desk.get_by_role("listbox", name="工作单列表")
            row = worklist.get_by_text("来电人要求转人工").first
            row.wait_for(timeout=WAIT_MS)
            row.click()
            desk.get_by_role("button", name="领取", exact=True).click()
            desk.get_by_role("button", name="记录回拨").wait_for(timeout=WAIT_MS)
            desk.wait_for_function("() => !document.querySelector('#btn-attempt')"
                                   " || !document.querySelector('#btn-attempt').disabled", timeout=WAIT_MS)
            desk.locator("#notes").fill("已回电，来电人询问养老保险缴费年限")
            desk.get_by_role("button", name="记录回拨").click()
            desk.wait_for_function("() => !document.querySelector('#btn-resolve')"
                                   " || !document.querySelector('#btn-resolve').disabled", timeout=WAIT_MS)
            desk.screenshot(path=str(data / "desk-ticket-attempted.png"))
            desk.locator("#notes").fill("已答复，办结")
            desk.get_by_role("button", name="办结").click()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _ticket(after_hours).status is not HandoffStatus.RESOLVED:
                time.sleep(0.2)  # the page posts; the server writes
            desk.screenshot(path=str(data / "desk-ticket-closed.png"))
        finally:
            agent_browser.close()
            caller_browser.close()
    ticket = _ticket(after_hours)
    assert ticket.status is HandoffStatus.RESOLVED and ticket.trigger == "asked_for_human"
    assert ticket.attempts == 1 and ticket.assigned_user_id is not None


def _ticket(server: Server):
    from sqlalchemy import select

    from telephony.store import HandoffTicket

    with server.database.session() as session:
        [ticket] = list(session.scalars(select(HandoffTicket)))
        session.expunge(ticket)
        return ticket
