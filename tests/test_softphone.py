"""The /phone softphone page end to end: headless Chromium with a fake microphone against a loopback media stream."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import warnings
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse

from voice.audio import ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")

CHROMIUM = Path("/usr/bin/chromium")
PHONE_PAGE = Path(__file__).resolve().parent.parent / "telephony" / "web" / "static" / "phone.html"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")

TELEPHONY_RATE_HZ = 8000
FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz
FRAME_MS = 20
CALLER_PHRASE = "社保卡丢了怎么办"
CALLER_WAV_RATE_HZ = 48000
CALLER_SILENCE_S = 2.0
REPLY_AFTER_FRAMES = 50  # 1 s of caller audio
REPLY_MESSAGE_MS = 100
FIRST_REPLY_MS = 1000
SECOND_REPLY_MS = 3000  # cleared right after it is sent
TONE_HZ = 440
TONE_AMPLITUDE = 0.3
RMS_WINDOW_SAMPLES = 1600  # 200 ms at 8 kHz
# Measured 0.80 (Chromium's audio processing changes gain and adds noise suppression); a 2 % rate error gives 0.14.
MIN_SPEECH_SIMILARITY = 0.5
WAIT_MS = 30_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


# --- caller audio -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def caller_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng saying the caller's question, with 2 s of silence before and after, as 48 kHz 16-bit mono."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed; it speaks the fake microphone's question")
    import soxr

    folder = tmp_path_factory.mktemp("softphone")
    spoken = folder / "spoken.wav"
    subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-s", "200", "-w", str(spoken), CALLER_PHRASE],
                   check=True, capture_output=True)
    with wave.open(str(spoken)) as reader:
        rate_hz = reader.getframerate()
        speech = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float32)
    speech = soxr.resample(speech, rate_hz, CALLER_WAV_RATE_HZ)
    silence = np.zeros(int(CALLER_SILENCE_S * CALLER_WAV_RATE_HZ), dtype=np.float32)
    samples = np.clip(np.concatenate([silence, speech, silence]), -32768, 32767).astype("<i2")
    path = folder / "caller.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(CALLER_WAV_RATE_HZ)
        writer.writeframes(samples.tobytes())
    return path


def wav_duration_ms(path: Path) -> int:
    with wave.open(str(path)) as reader:
        return reader.getnframes() * 1000 // reader.getframerate()


def tone_mulaw(duration_ms: int) -> bytes:
    seconds = np.arange(duration_ms * TELEPHONY_RATE_HZ // 1000) / TELEPHONY_RATE_HZ
    pcm = np.round(np.sin(2 * np.pi * TONE_HZ * seconds) * TONE_AMPLITUDE * 32767).astype("<i2")
    return ULAW_ENCODE_TABLE[pcm.view("<u2")].tobytes()


# --- the server side of Twilio Media Streams, minimal -----------------------------------------------------------------

@dataclass
class StreamLog:
    """Everything one softphone call sent, readable from the test thread while the server thread appends."""

    condition: threading.Condition = field(default_factory=threading.Condition)
    events: list[dict] = field(default_factory=list)
    mulaw: bytearray = field(default_factory=bytearray)
    frame_sizes: list[int] = field(default_factory=list)
    reply_mark_sent_at: float | None = None
    reply_mark_echoed_at: float | None = None

    def record(self, message: dict) -> None:
        with self.condition:
            self.events.append(message)
            if message.get("event") == "media":
                payload = base64.b64decode(message["media"]["payload"], validate=True)
                self.frame_sizes.append(len(payload))
                self.mulaw.extend(payload)
            self.condition.notify_all()

    def named(self, event: str) -> list[dict]:
        with self.condition:
            return [message for message in self.events if message.get("event") == event]

    def wait_for(self, predicate: Callable[[StreamLog], bool], timeout_s: float = 10) -> bool:
        with self.condition:
            return self.condition.wait_for(lambda: predicate(self), timeout_s)


class MediaStreamServer:
    """Serves phone.html, the session URL and /media-stream on a loopback port from a background thread."""

    def __init__(self) -> None:
        self.streams: list[StreamLog] = []
        self.streams_changed = threading.Condition()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()  # connections queue from here on, so no wait for uvicorn's startup is needed
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/phone")
        async def phone() -> HTMLResponse:
            return HTMLResponse(PHONE_PAGE.read_text(encoding="utf-8"))

        @app.get("/api/phone/session")
        async def session() -> JSONResponse:
            return JSONResponse({"websocket_url": "/media-stream?token=test-token&channel=softphone"})

        @app.websocket("/media-stream")
        async def media_stream(websocket: WebSocket) -> None:
            if websocket.query_params.get("token") != "test-token":
                await websocket.close(code=1008)
                return
            await websocket.accept()
            log = StreamLog()
            with self.streams_changed:
                self.streams.append(log)
                self.streams_changed.notify_all()
            await self.converse(websocket, log)

        return app

    async def converse(self, websocket: WebSocket, log: StreamLog) -> None:
        stream_sid = ""
        while True:
            try:
                message = json.loads(await websocket.receive_text())
            except WebSocketDisconnect:
                return
            log.record(message)
            event = message.get("event")
            if event == "start":
                stream_sid = message["start"]["streamSid"]
            elif event == "media" and len(log.frame_sizes) == REPLY_AFTER_FRAMES:
                await self.send_audio(websocket, stream_sid, FIRST_REPLY_MS)
                await websocket.send_text(json.dumps({"event": "mark", "streamSid": stream_sid,
                                                      "mark": {"name": "reply-1"}}))
                log.reply_mark_sent_at = time.monotonic()
            elif event == "mark" and message["mark"]["name"] == "reply-1":
                log.reply_mark_echoed_at = time.monotonic()
                # A reply the caller interrupts: queued audio and its mark, then barge-in.
                await self.send_audio(websocket, stream_sid, SECOND_REPLY_MS)
                await websocket.send_text(json.dumps({"event": "mark", "streamSid": stream_sid,
                                                      "mark": {"name": "reply-2"}}))
                await websocket.send_text(json.dumps({"event": "clear", "streamSid": stream_sid}))
            elif event == "dtmf" and message["dtmf"]["digit"] == "#":
                await websocket.close()  # the hotline hangs up
                return
            elif event == "stop":
                return

    @staticmethod
    async def send_audio(websocket: WebSocket, stream_sid: str, duration_ms: int) -> None:
        audio = tone_mulaw(duration_ms)
        step = REPLY_MESSAGE_MS * TELEPHONY_RATE_HZ // 1000
        for offset in range(0, len(audio), step):
            payload = base64.b64encode(audio[offset:offset + step]).decode()
            await websocket.send_text(json.dumps({"event": "media", "streamSid": stream_sid,
                                                  "media": {"payload": payload}}))
            await asyncio.sleep(0)  # let the receive side run between messages, as a paced sender would

    def stream(self, index: int, timeout_s: float = 10) -> StreamLog:
        with self.streams_changed:
            assert self.streams_changed.wait_for(lambda: len(self.streams) > index, timeout_s), "no media stream opened"
            return self.streams[index]

    def __enter__(self) -> MediaStreamServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.listener.close()


@pytest.fixture(scope="module")
def media_server() -> Iterator[MediaStreamServer]:
    with MediaStreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def browser(caller_wav: Path) -> Iterator[object]:
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={caller_wav}"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageWatch:
    """A page plus what it asked the network for and any script errors it raised."""

    page: object
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def phone(browser, media_server: MediaStreamServer) -> Iterator[PageWatch]:
    context = browser.new_context()
    page = context.new_page()
    watch = PageWatch(page)
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("console", lambda message: watch.errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{media_server.base_url}/phone")
    try:
        yield watch
    finally:
        context.close()


def softphone(page) -> dict:
    return page.evaluate("() => { const { codec, ...state } = window.softphone; return state; }")


def window_rms(pcm: np.ndarray) -> np.ndarray:
    windows = pcm[: len(pcm) // RMS_WINDOW_SAMPLES * RMS_WINDOW_SAMPLES].astype(np.float64)
    return np.sqrt((windows.reshape(-1, RMS_WINDOW_SAMPLES) ** 2).mean(axis=1))


def reference_speech(path: Path) -> np.ndarray:
    """The spoken part of the fake microphone's file, at 8 kHz."""
    import soxr

    with wave.open(str(path)) as reader:
        rate_hz = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").astype(np.float64)
    speech = soxr.resample(samples, rate_hz, TELEPHONY_RATE_HZ)
    voiced = np.flatnonzero(np.abs(speech) > 1)
    return speech[voiced[0]:voiced[-1] + 1]


def best_match(received: np.ndarray, reference: np.ndarray) -> float:
    """Largest normalised correlation between the reference and any equally long stretch of the received audio."""
    from scipy.signal import correlate

    products = correlate(received, reference, mode="valid", method="fft")
    stretch_energy = np.convolve(received**2, np.ones(len(reference)), mode="valid")
    return float((products / np.sqrt(stretch_energy * np.dot(reference, reference) + 1e-9)).max())


# --- tests ------------------------------------------------------------------------------------------------------------

def test_call_carries_speech_replies_marks_clear_dtmf_and_hang_up(phone: PageWatch, media_server: MediaStreamServer,
                                                                   caller_wav: Path) -> None:
    page = phone.page
    assert page.title() == "社保热线 网页电话"
    assert page.locator("#status").inner_text() == "未连接"
    streams_before = len(media_server.streams)
    # One whole loop of the fake microphone's file, so both the spoken question and the silence come through.
    frames_needed = wav_duration_ms(caller_wav) // FRAME_MS + 10

    page.get_by_role("button", name="拨打").click()
    log = media_server.stream(streams_before)
    page.wait_for_function("() => window.softphone.state === 'in_call'", timeout=WAIT_MS)
    assert page.locator("#status").inner_text() == "通话中"
    page.wait_for_function(
        """n => { const s = window.softphone; return s.framesSent >= n && s.audioReceivedMs >= 900
                  && s.marksEchoed >= 2 && s.cleared >= 1; }""", arg=frames_needed, timeout=WAIT_MS)
    assert log.wait_for(lambda stream: len(stream.frame_sizes) >= frames_needed)

    page.locator('#keypad button[data-digit="*"]').click()
    assert log.wait_for(lambda stream: any(event["dtmf"]["digit"] == "*" for event in stream.named("dtmf")))
    page.get_by_role("button", name="挂断").click()
    assert log.wait_for(lambda stream: bool(stream.named("stop")))
    state = softphone(page)
    assert state["state"] == "ended" and page.locator("#status").inner_text() == "已挂断"
    assert state["microphoneLive"] is False and state["lastError"] is None

    events = [event["event"] for event in log.events]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    start = log.named("start")[0]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["customParameters"] == {"from": "softphone"}
    assert start["streamSid"].startswith("MZ") and start["start"]["callSid"].startswith("CA")
    assert log.named("stop")[0]["stop"]["callSid"] == start["start"]["callSid"]
    assert set(log.frame_sizes) == {FRAME_BYTES}
    media = log.named("media")
    assert [int(event["media"]["chunk"]) for event in media] == list(range(1, len(media) + 1))
    assert [int(event["media"]["timestamp"]) for event in media] == [FRAME_MS * index for index in range(len(media))]
    assert {event["streamSid"] for event in log.events[1:]} == {start["streamSid"]}
    assert log.named("dtmf")[0]["dtmf"] == {"track": "inbound_track", "digit": "*"}

    # The espeak question comes through the microphone, the encoder and the wire: loud windows and near-silent ones.
    caller_pcm = ULAW_DECODE_TABLE[np.frombuffer(bytes(log.mulaw), dtype=np.uint8)]
    rms = window_rms(caller_pcm)
    assert rms.max() > 1000, f"no speech in the caller audio (loudest 200 ms window RMS {rms.max():.0f})"
    assert rms.max() > 10 * max(rms.min(), 1.0), f"speech RMS {rms.max():.0f} vs silence RMS {rms.min():.0f}"
    # ...and it is the same waveform at the right rate: a 2 % rate error or a skipped low-pass would ruin the match.
    similarity = best_match(caller_pcm.astype(np.float64), reference_speech(caller_wav))
    assert similarity > MIN_SPEECH_SIMILARITY, f"caller audio matches the spoken question only {similarity:.2f}"

    # reply-1 came back only after its second of audio had played; reply-2 came back when clear dropped its audio.
    assert [event["mark"]["name"] for event in log.named("mark")] == ["reply-1", "reply-2"]
    assert log.reply_mark_echoed_at - log.reply_mark_sent_at >= 0.8 * FIRST_REPLY_MS / 1000
    assert state["audioReceivedMs"] == FIRST_REPLY_MS + SECOND_REPLY_MS
    assert state["cleared"] == 1 and state["lastClearDroppedMs"] >= SECOND_REPLY_MS - 1000
    assert state["marksEchoed"] == 2

    assert all(url.startswith(media_server.base_url) for url in phone.requests), phone.requests
    assert phone.errors == []


def test_server_hang_up_ends_the_call_and_releases_the_microphone(phone: PageWatch,
                                                                  media_server: MediaStreamServer) -> None:
    page = phone.page
    streams_before = len(media_server.streams)
    page.get_by_role("button", name="拨打").click()
    log = media_server.stream(streams_before)
    page.wait_for_function("() => window.softphone.state === 'in_call'", timeout=WAIT_MS)
    assert page.get_by_role("button", name="拨打").is_disabled()

    page.keyboard.press("#")  # the keyboard works as a keypad; the test server hangs up on '#'
    page.wait_for_function("() => window.softphone.state === 'ended'", timeout=WAIT_MS)
    state = softphone(page)
    assert page.locator("#status").inner_text() == "已挂断"
    assert state["microphoneLive"] is False and state["lastError"] is None
    assert page.get_by_role("button", name="拨打").is_enabled()
    assert page.get_by_role("button", name="挂断").is_disabled()
    assert log.named("dtmf")[0]["dtmf"]["digit"] == "#" and log.named("stop") == []
    assert phone.errors == []


def test_refused_token_shows_a_chinese_error(browser, media_server: MediaStreamServer) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("**/api/phone/session", lambda route: route.fulfill(
            json={"websocket_url": "/media-stream?token=expired&channel=softphone"}))
        page.goto(f"{media_server.base_url}/phone")
        page.get_by_role("button", name="拨打").click()
        page.wait_for_function("() => window.softphone.state === 'error'", timeout=WAIT_MS)
        # A refused handshake reaches the page as close code 1006, indistinguishable from a network failure.
        assert page.locator("#status").inner_text() == "无法连接热线服务器，请稍后再拨"
        assert softphone(page)["microphoneLive"] is False
    finally:
        context.close()


def test_page_mulaw_codec_is_bit_exact_with_g711(phone: PageWatch) -> None:
    every_int16 = np.arange(-32768, 32768, dtype=np.int32)
    encoded = phone.page.evaluate(
        "() => { const out = []; for (let s = -32768; s < 32768; s++) out.push(softphone.codec.linearToUlaw(s));"
        " return out; }")
    decoded = phone.page.evaluate(
        "() => Array.from({ length: 256 }, (_, code) => softphone.codec.ulawToLinear(code))")
    # The server's tables, indexed by the int16 bit pattern.
    assert encoded == ULAW_ENCODE_TABLE[every_int16.astype("<i2").view("<u2")].tolist()
    assert decoded == ULAW_DECODE_TABLE.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # removed in Python 3.13; the server's tables above are checked against it elsewhere
            return
    pcm = every_int16.astype("<i2").tobytes()
    assert bytes(encoded) == audioop.lin2ulaw(pcm, 2)
    assert decoded == np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2").tolist()


# --- against the real hotline server ----------------------------------------------------------------------------------

from tests.test_voice_call import server  # noqa: E402,F401 - the real server (tiny ASR, Silero, espeak, SQLite)


def test_softphone_call_reaches_the_real_hotline(browser, server) -> None:
    """The page's microphone question interrupts the real greeting, is recognised, answered and stored."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{server.base}/phone")
        page.get_by_role("button", name="拨打").click()
        page.wait_for_function("() => window.softphone.state === 'in_call'", timeout=WAIT_MS)
        # The greeting plays, the fake microphone's question barges in (clear), and a reply follows it.
        page.wait_for_function("() => window.softphone.cleared >= 1 && window.softphone.audioReceivedMs > 3000",
                               timeout=WAIT_MS)
        deadline = time.monotonic() + WAIT_MS / 1000
        stored = None
        while time.monotonic() < deadline:
            calls = [c for c in server.database.recent_calls(limit=20) if c.channel.value == "softphone"]
            stored = server.database.get_call(calls[0].id) if calls else None
            if stored is not None and stored.turns:
                break
            time.sleep(0.1)  # polling the database the server writes to
        assert stored is not None and stored.turns, "no turn stored for the softphone call"
        assert stored.caller_number == "softphone" and stored.turns[0].caller_text
        if page.get_by_role("button", name="挂断").is_enabled():
            page.get_by_role("button", name="挂断").click()
        page.wait_for_function("() => window.softphone.state === 'ended'", timeout=WAIT_MS)
        ended = server.wait_for_call_end("softphone", timeout_s=20)
        assert ended.recording_caller_path and Path(ended.recording_caller_path).exists()
    finally:
        context.close()
