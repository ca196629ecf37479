"""A softphone call that says yes gets one message in the outbox with the right text: headless Chromium's fake
microphone speaks four utterances into /phone on the real server; recognition is scripted (the tiny test model
recognises nothing), everything else is real (Silero VAD, endpointing, dialogue, SQLite outbox)."""

from __future__ import annotations

import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from telephony.settings import Settings
from telephony.sms.compose import compose_guide
from telephony.store import Database
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.test_call_runner import ToneTts
from tests.test_softphone import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, playwright_sync
from tests.voicefixtures import synthesize_mandarin
from voice.testing.fakes import SequenceAsrEngine

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

# What the caller says, in order: the question, yes, a mobile number (the softphone has no caller ID), "right".
SCRIPT = ["社保卡丢了怎么办", "需要", "幺三八零零零零幺幺幺幺", "对"]
WAV_RATE_HZ = 48000
GAP_S = 3.5


@pytest.fixture(scope="module")
def caller_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four utterances spoken by espeak-ng, 3.5 s apart, as 48 kHz mono (what Chromium's fake microphone plays)."""
    gap = np.zeros(int(GAP_S * WAV_RATE_HZ), dtype="<i2")
    parts = [np.zeros(int(2 * WAV_RATE_HZ), dtype="<i2")]
    for text in SCRIPT:
        parts += [np.frombuffer(synthesize_mandarin(text, rate_hz=WAV_RATE_HZ), dtype="<i2"), gap]
    parts.append(np.zeros(int(30 * WAV_RATE_HZ), dtype="<i2"))  # then silence, so the file's loop says nothing more
    path = tmp_path_factory.mktemp("sms-softphone") / "caller.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(WAV_RATE_HZ)
        writer.writeframes(np.concatenate(parts).tobytes())
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    settings = Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False, kb_watch=False, speculative_final=False, no_speech_timeout_ms=20000,
                        media_stream_token="test-media-token-0123456789")
    app = create_app(settings, asr=SequenceAsrEngine(SCRIPT), tts=ToneTts(wait_for=""))
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    import httpx

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
    yield base, settings
    uvicorn_server.should_exit = True
    thread.join(10)


def test_a_softphone_caller_who_says_yes_gets_one_message_with_the_guide(caller_wav: Path, server) -> None:
    base, settings = server
    database = Database(settings.resolved_database_url)
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={caller_wav}"])
        try:
            page = chromium.new_context().new_page()
            page.goto(f"{base}/phone")
            page.get_by_role("button", name="拨打").click()
            page.wait_for_function("() => window.softphone.state === 'in_call'", timeout=WAIT_MS)
            deadline = time.monotonic() + 60
            rows = []
            while time.monotonic() < deadline:
                with database.session() as session:
                    from sqlalchemy import select

                    from telephony.store import SmsMessage

                    rows = list(session.scalars(select(SmsMessage)))
                if rows:
                    break
                time.sleep(0.2)  # polling the database the server writes to
            page.screenshot(path=str(settings.data_dir / "softphone-sms.png"))
            if page.get_by_role("button", name="挂断").is_enabled():
                page.get_by_role("button", name="挂断").click()
        finally:
            chromium.close()
    try:
        assert len(rows) == 1, "no SMS in the outbox after the caller said yes"
        [message] = rows
        from kb.loader import load_knowledge_base

        expected = compose_guide(load_knowledge_base().get("card-loss-report"), "0773-0000000", "测试社保")
        assert message.phone == "13800001111" and message.body == expected.body
        assert message.item_id == "card-loss-report" and message.reference.endswith(":item:card-loss-report")
        call = database.get_call(message.call_id)
        assert call.channel.value == "softphone"
        sms_turns = [turn for turn in call.turns if turn.action == "sms"]
        assert sms_turns[-1].sms_consent is True and sms_turns[-1].sms_message_id == message.id
        assert sms_turns[-1].sms_to == "138****1111"
    finally:
        database.close()
