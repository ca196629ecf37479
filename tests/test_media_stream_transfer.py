"""handoff_mode=pbx on the Twilio-compatible media stream: the stream cannot move a call, so the hotline asks the
gateway's transfer webhook (a real HTTP server on 127.0.0.1 here, standing in for the bureau's relay to Twilio's Calls
API). Accepted: the assistant steps back and the record ends 'transferred'. Refused: the caller hears the apology and
is left a callback ticket. The hotline server, its store and the websocket are real; ASR and TTS are scripted."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets

from telephony.calls import prompts
from telephony.settings import Settings
from telephony.store import CallStatus, Database
from telephony.transports.twilio.protocol import dtmf_message, inbound_media_message, start_message, stop_message
from telephony.web.app import create_app
from tests.conftest import _free_port, office_calendar
from tests.test_call_runner import ToneTts
from voice.audio import ulaw_encode
from voice.testing.fakes import SequenceAsrEngine

TOKEN = "test-media-token-0123456789"
WEBHOOK_TOKEN = "relay-secret-0123456789"
TARGET = "8001"


@dataclass
class Webhook:
    """The gateway's call control: records each POST and answers `status`, `delay_s` after it was recorded (a relay
    that moves the call before it answers)."""

    port: int
    status: int = 200
    delay_s: float = 0.0
    requests: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/calls/transfer"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(_free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                  "body": json.loads(body)})
            time.sleep(hook.delay_s)
            reply = b'{"ok": true}' if hook.status < 300 else b'{"error": "no such call"}'
            self.send_response(hook.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", hook.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class Hotline:
    base: str
    database: Database
    tts: ToneTts

    def stream_url(self) -> str:
        return f"ws{self.base[4:]}/media-stream?token={TOKEN}"

    def call_of(self, caller: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            calls = [call for call in self.database.recent_calls(limit=20)
                     if call.caller_number == caller and call.status is not CallStatus.ACTIVE]
            if calls:
                return self.database.get_call(calls[0].id)
            time.sleep(0.05)  # polling the database the server writes to
        raise AssertionError(f"the call from {caller} was not closed")


@pytest.fixture
def hotline(tmp_path: Path, webhook: Webhook) -> Iterator[Hotline]:
    settings = Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False, kb_watch=False, media_stream_token=TOKEN,
                        office_hours_file=office_calendar(tmp_path / "hours.yaml", ["00:00-24:00"]),
                        handoff_mode="pbx", handoff_transfer_target=TARGET,
                        twilio_transfer_webhook=webhook.url, twilio_transfer_token=WEBHOOK_TOKEN)
    tts = ToneTts(wait_for="")
    app = create_app(settings, asr=SequenceAsrEngine([]), tts=tts)
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
    try:
        yield Hotline(base, database, tts)
    finally:
        database.close()
        server.should_exit = True
        thread.join(10)


async def _press_zero(url: str, stream: str, caller: str, webhook: Webhook) -> str:
    """Call, press 0 over the greeting, send the line's silence until the webhook was asked (then stop, as a gateway
    that moved the call does) or the hotline closes the stream. Returns how the stream ended."""
    silence = ulaw_encode(bytes(320))
    async with websockets.connect(url, max_size=1 << 20) as socket:
        await socket.send(start_message(stream, f"CA{stream}", {"from": caller}))
        await socket.recv()  # the greeting is playing
        await socket.send(dtmf_message(stream, "0"))
        for index in range(1500):  # 30 s of line time at most
            if webhook.status < 300 and webhook.requests:
                await socket.send(stop_message(stream, f"CA{stream}"))
                return "stopped by the gateway"
            try:
                await socket.send(inbound_media_message(stream, index, index * 20, silence))
                with_timeout = asyncio.wait_for(socket.recv(), 0.02)
                try:
                    await with_timeout
                except asyncio.TimeoutError:
                    pass
            except websockets.ConnectionClosed:
                return "closed by the hotline"
    return "still open"


def test_an_accepted_transfer_hands_the_call_to_the_gateway(hotline: Hotline, webhook: Webhook) -> None:
    ended = asyncio.run(asyncio.wait_for(_press_zero(hotline.stream_url(), "MZok", "13800000001", webhook), 60))
    assert ended == "stopped by the gateway"
    assert len(webhook.requests) == 1
    request = webhook.requests[0]
    assert request["path"] == "/calls/transfer"
    assert request["authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert request["body"] == {"call_sid": "CAMZok", "stream_sid": "MZok", "target": TARGET, "caller": "13800000001",
                               "twiml": f"<Response><Dial>{TARGET}</Dial></Response>"}

    call = hotline.call_of("13800000001")
    assert call.end_reason == "transferred" and call.status is CallStatus.ENDED
    assert call.handoff_tickets == []  # a person has the caller: no callback ticket
    assert prompts.TRANSFER_FAILED not in hotline.tts.said
    line = httpx.get(f"{hotline.base}/readyz", timeout=5).json()["voice"]["lines"]["media-stream"]
    assert "1 done, 0 failed" in line["detail"]


def test_a_stream_stopped_before_the_webhook_answers_is_still_a_transfer(hotline: Hotline, webhook: Webhook) -> None:
    """A relay may have Twilio move the call (which stops the stream) before its own HTTP answer is back: that stop
    is the transfer, not the caller hanging up."""
    webhook.delay_s = 1.0
    ended = asyncio.run(asyncio.wait_for(_press_zero(hotline.stream_url(), "MZearly", "13800000004", webhook), 60))
    assert ended == "stopped by the gateway"
    call = hotline.call_of("13800000004")
    assert call.end_reason == "transferred" and call.status is CallStatus.ENDED
    assert call.handoff_tickets == []
    assert prompts.TRANSFER_FAILED not in hotline.tts.said


def test_a_refused_transfer_leaves_the_caller_an_apology_and_a_ticket(hotline: Hotline, webhook: Webhook) -> None:
    webhook.status = 404
    ended = asyncio.run(asyncio.wait_for(_press_zero(hotline.stream_url(), "MZno", "13800000002", webhook), 60))
    assert ended == "closed by the hotline"  # the assistant said its closing and hung up
    assert [request["body"]["call_sid"] for request in webhook.requests] == ["CAMZno"]

    call = hotline.call_of("13800000002")
    assert call.end_reason == "handoff"
    assert [ticket.callback_number for ticket in call.handoff_tickets] == ["13800000002"]
    assert prompts.TRANSFER_FAILED in hotline.tts.said
    line = httpx.get(f"{hotline.base}/readyz", timeout=5).json()["voice"]["lines"]["media-stream"]
    assert "0 done, 1 failed" in line["detail"]


def test_the_webhook_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="HOTLINE_TWILIO_TRANSFER_WEBHOOK must be an http"):
        Settings(twilio_transfer_webhook="ftp://relay.example/transfer")
