"""End-to-end phone calls over the Twilio-compatible Media Streams websocket, against the real server:
tiny FunASR model built on disk, Silero VAD, espeak-ng TTS, SQLite, recordings."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets

from telephony.bench.simulated_caller import simulated_call
from telephony.settings import Settings
from telephony.store import CallStatus, Database
from telephony.transports.twilio.protocol import (
    connected_message,
    dtmf_message,
    inbound_media_message,
    start_message,
)
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.voicefixtures import require_espeak, synthesize_mandarin
from voice.audio import ulaw_encode
from voice.testing.tiny_models import build_tiny_paraformer

TOKEN = "test-media-token-0123456789"


@dataclass
class RunningServer:
    base: str
    settings: Settings
    database: Database

    def stream_url(self, token: str = TOKEN) -> str:
        return f"ws{self.base[4:]}/media-stream?token={token}"

    def readiness(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()

    def wait_for_call_end(self, caller_number: str, timeout_s: float = 10.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            calls = self.database.recent_calls(limit=20)
            matching = [call for call in calls
                        if call.caller_number == caller_number and call.status is not CallStatus.ACTIVE]
            if matching:
                return self.database.get_call(matching[0].id)
            time.sleep(0.05)  # polling the database the server writes to
        raise AssertionError("the call record was not closed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_espeak()
    root = tmp_path_factory.mktemp("voice")
    model = build_tiny_paraformer(root / "tiny-paraformer")
    settings = Settings(data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        asr_model=str(model), tts_engine="espeak", tts_prerender=False, kb_watch=False,
                        media_stream_token=TOKEN, no_speech_timeout_ms=4000)
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                                   log_level="warning", ws_max_size=1 << 20))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {}).get("asr") == "ready":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)  # waiting for the model to load in the server thread
    else:
        raise AssertionError("voice engines did not become ready")
    database = Database(settings.resolved_database_url)
    yield RunningServer(base, settings, database)
    uvicorn_server.should_exit = True
    thread.join(10)
    database.close()


def wav_duration_ms(path: str) -> float:
    with wave.open(path, "rb") as recording:
        return recording.getnframes() / recording.getframerate() * 1000


def test_a_caller_interrupts_the_greeting_asks_and_hears_a_reply(server: RunningServer) -> None:
    question = synthesize_mandarin("社保卡丢了怎么办")
    report = asyncio.run(simulated_call(server.stream_url(), [question], interrupt_after_ms=600, caller="test-caller"))
    assert len(report.turns) == 1
    turn = report.turns[0]
    assert turn.barge_in_clear_ms is not None and turn.barge_in_clear_ms < 600  # the greeting stopped
    assert turn.latency_ms is not None and turn.latency_ms > 0
    assert report.clears >= 1 and report.late_reply_chunks == 0

    call = server.wait_for_call_end("test-caller")
    assert call.channel.value == "twilio" and call.caller_number == "test-caller"
    stored = call.turns[0]
    assert stored.caller_text  # what the (tiny) ASR heard
    assert stored.action in {"answer", "clarify", "handoff"}
    for stage in ("speech_ms", "endpoint_wait_ms", "asr_final_ms", "answer_ms", "voice_to_voice_ms"):
        assert stage in stored.timings_ms, stage
    assert stored.timings_ms["endpoint_wait_ms"] >= 250
    # Both sides are recorded on one timeline; the caller's track holds every frame sent.
    assert Path(call.recording_caller_path).exists() and Path(call.recording_assistant_path).exists()
    assert abs(wav_duration_ms(call.recording_caller_path) - report.frames_sent * 20) <= 40
    assert wav_duration_ms(call.recording_assistant_path) > 500


def test_readiness_reports_the_voice_engines_and_the_line(server: RunningServer) -> None:
    voice = server.readiness()["voice"]
    assert voice["asr"] == "ready"
    assert voice["tts"] == {"primary": "espeak", "fallback": "espeak", "primary_available": True}
    assert voice["lines"]["media-stream"]["state"] == "listening"


def test_connections_without_the_token_are_refused(server: RunningServer) -> None:
    async def attempt(url: str) -> int:
        try:
            async with websockets.connect(url):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(attempt(server.stream_url("wrong-token"))) == 403
    assert asyncio.run(attempt(f"ws{server.base[4:]}/media-stream")) == 403


def test_bad_frames_are_survived_and_a_dropped_socket_closes_the_call(server: RunningServer) -> None:
    before = server.readiness()["voice"]["bad_messages"]

    async def call() -> None:
        async with websockets.connect(server.stream_url(), max_size=1 << 20) as socket:
            await socket.send(connected_message())
            await socket.send("this is not json")
            await socket.send(json.dumps({"event": "ringing"}))
            await socket.send(json.dumps({"event": "media", "media": {"payload": "%%%"}}))
            await socket.send("x" * 70_000)
            await socket.send(start_message("MZdrop", "CAdrop", {"from": "dropper"}))
            for index in range(25):
                await socket.send(inbound_media_message("MZdrop", index, index * 20, ulaw_encode(bytes(320))))
            await socket.recv()  # the greeting is playing: the call is alive after the bad frames
            socket.transport.abort()  # the line drops: no stop event, no close handshake

    asyncio.run(call())
    stored = server.wait_for_call_end("dropper")
    assert stored.caller_number == "dropper" and stored.status is CallStatus.ENDED
    assert stored.end_reason == "caller_hangup"
    assert Path(stored.recording_caller_path).exists()
    assert server.readiness()["voice"]["bad_messages"] - before == 4


def test_caller_audio_sent_before_the_start_message_is_the_start_of_the_recording(server: RunningServer) -> None:
    early, after = 12, 25

    async def call() -> None:
        async with websockets.connect(server.stream_url(), max_size=1 << 20) as socket:
            await socket.send(connected_message())
            for index in range(early):  # a client that streams at once, before it names the call
                await socket.send(inbound_media_message("MZearly", index, index * 20, ulaw_encode(bytes(320))))
            await socket.send(start_message("MZearly", "CAearly", {"from": "early-bird"}))
            for index in range(early, early + after):
                await socket.send(inbound_media_message("MZearly", index, index * 20, ulaw_encode(bytes(320))))
            await socket.recv()  # the greeting is playing
            await asyncio.sleep(0.3)  # the frames reach the recorder before the line drops
            socket.transport.abort()

    asyncio.run(call())
    stored = server.wait_for_call_end("early-bird")
    with wave.open(stored.recording_caller_path, "rb") as recording:
        assert recording.getnframes() == (early + after) * 160


def test_keypad_zero_registers_a_callback_and_the_assistant_hangs_up(server: RunningServer) -> None:
    async def call() -> list[str]:
        events = []
        async with websockets.connect(server.stream_url(), max_size=1 << 20) as socket:
            await socket.send(start_message("MZkey", "CAkey", {"from": "keypad-caller"}))
            await socket.recv()  # greeting audio
            await socket.send(dtmf_message("MZkey", "0"))
            silence = ulaw_encode(bytes(320))
            index = 0
            try:
                while True:
                    await socket.send(inbound_media_message("MZkey", index, index * 20, silence))
                    index += 1
                    try:
                        message = await asyncio.wait_for(socket.recv(), 0.02)
                        events.append(json.loads(message)["event"])
                    except asyncio.TimeoutError:
                        pass
            except websockets.ConnectionClosed:
                return events
        return events

    events = asyncio.run(asyncio.wait_for(call(), 60))
    assert "clear" in events  # the key press cut the greeting
    stored = server.wait_for_call_end("keypad-caller", timeout_s=30)
    assert stored.caller_number == "keypad-caller" and stored.end_reason == "handoff"
    assert [ticket.reason for ticket in stored.handoff_tickets] == ["caller pressed 0"]
    assert stored.handoff_tickets[0].callback_number == "keypad-caller"


async def test_prerender_gives_up_quietly_when_the_tts_service_is_unreachable(settings: Settings) -> None:
    from telephony.app import Hotline
    from voice.tts import EdgeTtsEngine, EspeakTtsEngine, ResilientTts, TtsCache

    database = Database(f"sqlite:///{settings.data_dir / 'prerender.db'}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = settings.data_dir / "tts-cache"
    unreachable = EdgeTtsEngine(endpoint_url=f"ws://127.0.0.1:{_free_port()}/edge?TrustedClientToken=x",
                                connect_timeout_s=1.0)
    tts = ResilientTts(unreachable, EspeakTtsEngine(), TtsCache(cache_dir), first_audio_deadline_ms=500)
    hotline = Hotline.open(settings, database)
    voice = await hotline.start_voice(tts=tts)
    await voice.prerender(hotline.answers.kb)
    assert voice.prerendered  # readiness does not wait for a cache that cannot fill
    assert not any(path.is_file() for path in cache_dir.rglob("*"))  # fallback audio is never cached as edge's
    database.close()


def test_every_clarifying_question_the_engine_can_ask_is_prerendered() -> None:
    """A clarifying question read live by the TTS would be the one slow reply. Any two services can be offered
    (the two closest), so each such question must be stitchable from cached clauses; the related pairs (either order,
    either direction of `related`) are also cached whole."""
    from kb.loader import load_knowledge_base
    from rag import phrases
    from telephony.calls.prerender import prerender_texts
    from voice.tts import clauses

    kb = load_knowledge_base()
    texts = set(prerender_texts(Settings().centre_name, kb))
    unstitchable = [(top.id, second.id) for top in kb.items for second in kb.items if top.id != second.id
                    for question in (phrases.CHOOSE_ITEMS, phrases.CHOOSE_NEXT)
                    if not set(clauses(question.format(first=top.title, second=second.title))) <= texts]
    assert unstitchable == []
    askable = [(top, second) for top in kb.items for second in kb.items
               if top.id != second.id and top.category == second.category
               and (second.id in top.related or top.id in second.related)]
    one_way = [(top, second) for top, second in askable if top.id not in second.related]
    assert askable and one_way  # the shipped KB has related lists on one side only, the case this guards
    missing = [phrases.CHOOSE_ITEMS.format(first=top.title, second=second.title) for top, second in askable
               if phrases.CHOOSE_ITEMS.format(first=top.title, second=second.title) not in texts]
    assert missing == []
    assert all(item.spoken in texts and phrases.CONFIRM_ITEM.format(title=item.title) in texts for item in kb.items)


def test_every_answer_by_name_and_every_fact_led_answer_is_stitchable_from_the_cache() -> None:
    """「关于A，…如果您问的是B，请说“另一个”。」 can pair any two services, and a fact can lead any item's summary: each
    must play from cached clauses, not be read live."""
    from kb.loader import load_knowledge_base
    from rag import phrases
    from rag.extractive import CuratedComposer, short_title
    from telephony.calls.prerender import prerender_texts
    from voice.tts import clauses

    kb = load_knowledge_base()
    texts = set(prerender_texts(Settings().centre_name, kb))
    replies = []
    for item in kb.items:
        spoken = [item.spoken] + [CuratedComposer.spoken_for(ask, item) for fact in item.facts for ask in fact.asks
                                  if not fact.about]
        for other in kb.items:
            if other.id != item.id:
                replies += [phrases.NAMED_ANSWER.format(title=short_title(item), spoken=text)
                            + phrases.OFFER_OTHER.format(title=short_title(other)) for text in spoken[:2]]
    assert replies and [reply for reply in replies if not set(clauses(reply)) <= texts] == []
    assert phrases.NOT_HEARD in texts
