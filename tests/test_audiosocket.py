"""The Asterisk AudioSocket line: the wire format, the TCP server against a client that speaks the protocol as
Asterisk does (tests/fakes/audiosocket_client.py), and whole calls through the real `CallRunner` (real Silero VAD,
a scripted ASR, the real answer engine and SQLite). Everything on 127.0.0.1; every wait has a timeout."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import uuid

import numpy as np
import pytest

from telephony.app import Hotline
from telephony.calls import prompts
from telephony.calls.base import CallerAudio, KeyPressed, TransferUnavailable
from telephony.settings import Settings
from telephony.store import CallChannel, CallStatus
from telephony.transports.audiosocket.protocol import (
    Audio,
    AudioSocketParser,
    AudioSocketProtocolError,
    CallId,
    Dtmf,
    Error,
    Hangup,
    Unknown,
    audio_frames,
    describe_error,
    encode,
    encode_audio,
    encode_dtmf,
    encode_error,
    encode_hangup,
    encode_uuid,
)
from telephony.transports.audiosocket.server import AudioSocketLine, AudioSocketTransport
from telephony.transports.base import LineState
from tests.conftest import _free_port
from tests.fakes.audiosocket_client import AudioSocketClient, message
from tests.test_call_runner import QUESTION, ScriptedAsrEngine, runner_for
from tests.voicefixtures import padded, synthesize_mandarin
from voice.base import FRAME_BYTES
from voice.vad import SileroModel

HOST = "127.0.0.1"
CALL_ID = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")
BYTES_PER_S = 16000


def tone(ms: int, amplitude: int = 6000, hz: float = 440.0) -> bytes:
    samples = np.arange(ms * 8)
    return (amplitude * np.sin(2 * math.pi * hz * samples / 8000)).astype("<i2").tobytes()


def rms(pcm16: bytes) -> float:
    samples = np.frombuffer(bytes(pcm16), "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0


# -- the wire format ------------------------------------------------------------------------------------------------

def _stream() -> tuple[bytes, list]:
    pcm = tone(20)
    data = (encode_uuid(CALL_ID) + encode_audio(pcm) + encode_dtmf("0") + encode(0x12, b"\x01\x02")
            + encode_audio(pcm[:100]) + encode_error(0x01) + encode_hangup())
    expected = [CallId(CALL_ID), Audio(pcm), Dtmf("0"), Unknown(0x12, b"\x01\x02"), Audio(pcm[:100]), Error(1),
                Hangup()]
    return data, expected


def test_each_message_type_is_parsed() -> None:
    data, expected = _stream()
    parser = AudioSocketParser()
    assert parser.feed(data) == expected
    assert parser.pending == 0
    parser.end_of_stream()  # nothing cut short
    assert str(expected[0]) == str(CALL_ID)
    assert Error(1).caller_hung_up and not Error(2).caller_hung_up


@pytest.mark.parametrize("seed", range(20))
def test_messages_split_across_any_chunk_boundaries_parse_the_same(seed: int) -> None:
    data, expected = _stream()
    rng = random.Random(seed)
    parser = AudioSocketParser()
    got, offset = [], 0
    while offset < len(data):
        size = rng.choice([1, 2, 3, 4, 7, 50, 321, 1000])
        got += parser.feed(data[offset:offset + size])
        offset += size
    assert got == expected


def test_byte_by_byte_parsing_keeps_a_partial_message_pending() -> None:
    data, expected = _stream()
    parser = AudioSocketParser()
    got = []
    for index in range(len(data)):
        got += parser.feed(data[index:index + 1])
        if index == 1:
            assert parser.pending == 2 and got == []
    assert got == expected


@pytest.mark.parametrize(("data", "complaint"), [
    (encode_audio(bytes(320)), "not the UUID"),
    (encode_hangup(), "not the UUID"),
    (encode(0x01, bytes(15)), "expected 16"),
    (encode_uuid(CALL_ID) + encode(0x10, bytes(321)), "odd length"),
    (encode_uuid(CALL_ID) + encode(0x03, b"12"), "DTMF"),
    (encode_uuid(CALL_ID) + encode(0x03, b"\x00"), "DTMF"),
])
def test_malformed_streams_raise_and_the_parser_stays_broken(data: bytes, complaint: str) -> None:
    parser = AudioSocketParser()
    with pytest.raises(AudioSocketProtocolError, match=complaint):
        parser.feed(data)
    with pytest.raises(AudioSocketProtocolError):
        parser.feed(encode_hangup())


def test_a_first_message_that_is_not_the_uuid_is_refused_from_its_header_alone() -> None:
    parser = AudioSocketParser()
    with pytest.raises(AudioSocketProtocolError, match="type 0x10"):
        parser.feed(b"\x10\x01")  # not even the whole header yet: the type is enough
    assert AudioSocketParser(expect_uuid=False).feed(encode_audio(bytes(4))) == [Audio(bytes(4))]


@pytest.mark.parametrize("tail", [b"\x10", b"\x10\x01", b"\x10\x01\x40" + bytes(100)])
def test_a_stream_that_ends_inside_a_message_is_malformed(tail: bytes) -> None:
    parser = AudioSocketParser()
    assert parser.feed(encode_uuid(CALL_ID) + tail) == [CallId(CALL_ID)]
    with pytest.raises(AudioSocketProtocolError, match="closed inside a message"):
        parser.end_of_stream()


def test_error_codes_are_decoded_bit_by_bit() -> None:
    assert describe_error(0x01) == ("caller hung up",)
    assert describe_error(0x06) == ("frame forwarding error", "memory error")
    assert describe_error(0x00) == ("no error code",)
    assert describe_error(0x11) == ("caller hung up", "unknown error bits 0x10")
    assert encode_error() == b"\xff\x00\x00" and encode_error(0x01) == b"\xff\x00\x01\x01"
    assert AudioSocketParser().feed(encode_uuid(CALL_ID) + encode(0xFF)) == [CallId(CALL_ID), Error(0)]


def test_encoders_frame_the_audio_in_20_ms() -> None:
    assert encode_hangup() == b"\x00\x00\x00"
    assert encode_uuid(CALL_ID)[:3] == b"\x01\x00\x10" and encode_uuid(CALL_ID)[3:] == CALL_ID.bytes
    assert encode_audio(b"\x01\x02") == b"\x10\x00\x02\x01\x02"
    assert encode_dtmf("#") == b"\x03\x00\x01#"
    with pytest.raises(ValueError):
        encode_audio(b"\x01")
    with pytest.raises(ValueError):
        encode_audio(bytes(0x10000))
    frames = list(audio_frames(tone(50) + b"\x01"))
    assert [len(frame) for frame in frames] == [FRAME_BYTES] * 3
    assert frames[-1][-FRAME_BYTES // 2:] == bytes(FRAME_BYTES // 2)  # the last 10 ms padded with silence


# -- the line, with a small call handler ----------------------------------------------------------------------------

class EchoCalls:
    """A `CallHandler`: greets every call with 100 ms of tone, keeps its events, hangs up on '#'."""

    def __init__(self) -> None:
        self.transports: list[AudioSocketTransport] = []
        self.events: dict[str, list] = {}
        self.ended: dict[str, str | None] = {}
        self.started = asyncio.Event()
        self.finished = asyncio.Event()

    async def run(self, line: AudioSocketTransport) -> str:
        call_id = line.info.line_call_id
        self.transports.append(line)
        self.events[call_id] = []
        self.started.set()
        await line.send_audio(tone(100))
        async for event in line.events():
            self.events[call_id].append(event)
            if event == KeyPressed("#"):
                await line.hang_up()
        await line.send_audio(tone(20))  # the line is gone: a no-op, never an exception
        self.ended[call_id] = line.end_reason
        self.finished.set()
        return "caller_hangup"


async def _started_line(max_calls: int = 5, **kwargs) -> tuple[AudioSocketLine, EchoCalls, int]:
    port = _free_port()
    line = AudioSocketLine(HOST, port, max_calls, **kwargs)
    calls = EchoCalls()
    await line.start(calls)
    assert line.status().state is LineState.LISTENING
    return line, calls, port


async def _until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_call_gets_its_uuid_audio_keys_and_hangup_and_unknown_types_are_skipped() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port, CALL_ID).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    [transport] = calls.transports
    assert transport.info.channel is CallChannel.AUDIOSOCKET
    assert (transport.info.caller_number, transport.info.line_call_id) == (None, str(CALL_ID))
    await client.stream(tone(60), paced=False)
    await client.send(message(0x12, bytes(640)))  # slin16 audio: a type this line does not take, skipped
    await client.press("5")
    await client.hang_up()
    await asyncio.wait_for(calls.finished.wait(), 5)
    events = calls.events[str(CALL_ID)]
    assert [event for event in events if isinstance(event, KeyPressed)] == [KeyPressed("5")]
    assert b"".join(event.pcm16 for event in events if isinstance(event, CallerAudio)) == tone(60)
    assert calls.ended[str(CALL_ID)] == "hangup"
    await _until(lambda: line.counters.calls_now == 0)
    counters = line.status().counters
    assert counters["calls_total"] == 1 and counters["unknown_messages"] == 1 and counters["dtmf"] == 1
    assert counters["malformed"] == 0
    await line.close()


async def test_audio_out_is_framed_in_320_bytes_and_paced_in_real_time() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    await client.wait_for_audio(100 * 16, 5)  # the handler's 100 ms greeting
    [transport] = calls.transports
    loop = asyncio.get_running_loop()
    started = loop.time()
    await transport.send_audio(tone(1000))  # returns at once: the line's writer paces it
    assert loop.time() - started < 0.1
    await client.wait_for_audio(1100 * 16, 5)
    elapsed = loop.time() - started
    assert 0.9 <= elapsed < 2.0, elapsed
    assert set(client.frame_sizes) == {FRAME_BYTES} and len(client.frame_sizes) == 55
    assert bytes(client.received[100 * 16:]) == tone(1000)
    await client.hang_up()
    await line.close()


async def test_clear_drops_the_queued_audio_for_barge_in() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    [transport] = calls.transports
    await client.wait_for_audio(100 * 16, 5)
    await transport.send_audio(tone(2000))
    await asyncio.sleep(0.3)
    await transport.clear()
    await asyncio.sleep(0.3)
    assert 100 * 16 < len(client.received) < 600 * 16
    await client.hang_up()
    await line.close()


async def test_an_asterisk_error_ends_the_call_with_its_reason() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port, CALL_ID).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    await client.error(0x01)
    await asyncio.wait_for(calls.finished.wait(), 5)
    assert calls.ended[str(CALL_ID)] == "error: caller hung up"
    await line.close()


async def test_the_server_hangs_up_with_0x00_and_transfer_is_unavailable() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    with pytest.raises(TransferUnavailable):
        await calls.transports[0].transfer("8001")
    await client.press("#")
    await asyncio.wait_for(client.closed_by_server.wait(), 5)
    assert client.hangup_received.is_set() and len(client.received) == 100 * 16  # the greeting went out first
    await _until(lambda: line.counters.calls_now == 0)
    await line.close()


async def test_calls_over_the_limit_are_refused_at_once_and_counted() -> None:
    line, calls, port = await _started_line(max_calls=1)
    first = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    second = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(second.closed_by_server.wait(), 2)
    # An error, not a hangup: Asterisk fails AudioSocket() and the dialplan can queue the caller for an agent.
    assert second.other_messages == [(0xFF, b"")] and not second.hangup_received.is_set() and not second.received
    status = line.status()
    assert status.counters["refused_busy"] == 1 and status.counters["calls_now"] == 1
    assert "1 refused busy" in status.detail
    await first.press("7")  # the call on the line is untouched
    await _until(lambda: calls.events[str(first.call_id)] and
                 calls.events[str(first.call_id)][-1] == KeyPressed("7"))
    await first.hang_up()
    await _until(lambda: line.counters.calls_now == 0)
    third = await AudioSocketClient(HOST, port).connect()
    await _until(lambda: len(calls.transports) == 2)
    assert not third.closed_by_server.is_set()
    await third.hang_up()
    await line.close()
    assert line.counters.calls_total == 2 and line.counters.refused_busy == 1


async def test_a_malformed_first_message_closes_only_that_connection() -> None:
    line, calls, port = await _started_line()
    good = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    bad = await AudioSocketClient(HOST, port).connect(send_uuid=False)
    await bad.stream(tone(20), paced=False)  # audio before the UUID
    await asyncio.wait_for(bad.closed_by_server.wait(), 2)
    await good.press("3")
    await _until(lambda: KeyPressed("3") in calls.events[str(good.call_id)])
    assert line.counters.malformed == 1 and len(calls.transports) == 1 and line.counters.calls_now == 1
    truncated = await AudioSocketClient(HOST, port).connect(send_uuid=False)
    await truncated.send(b"\x01\x00")  # half a header, then the socket closes
    await truncated.close()
    await _until(lambda: line.counters.no_uuid == 1)
    assert line.status().state is LineState.LISTENING
    await good.hang_up()
    await line.close()


async def test_malformed_audio_mid_call_closes_that_call() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port, CALL_ID).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    await client.send(message(0x10, bytes(321)))
    await asyncio.wait_for(client.closed_by_server.wait(), 5)
    await asyncio.wait_for(calls.finished.wait(), 5)
    assert calls.ended[str(CALL_ID)].startswith("malformed: audio payload of odd length 321")
    assert line.counters.malformed == 1
    await line.close()


async def test_a_connection_that_never_names_its_call_is_dropped() -> None:
    line, calls, port = await _started_line(uuid_timeout_s=0.2)
    silent = await AudioSocketClient(HOST, port).connect(send_uuid=False)
    await asyncio.wait_for(silent.closed_by_server.wait(), 3)
    assert line.counters.no_uuid == 1 and not calls.transports and line.counters.calls_now == 0
    await line.close()


async def test_a_port_in_use_leaves_the_line_failed_with_the_reason() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = AudioSocketLine(HOST, port, 5)
        await line.start(EchoCalls())  # never raises
        status = line.status()
    assert status.state is LineState.FAILED
    assert f"{HOST}:{port}" in status.detail and "in use" in status.detail
    await line.close()


async def test_close_hangs_up_the_calls_on_the_line_and_stops_listening() -> None:
    line, calls, port = await _started_line()
    client = await AudioSocketClient(HOST, port).connect()
    await asyncio.wait_for(calls.started.wait(), 5)
    await line.close()
    await asyncio.wait_for(client.closed_by_server.wait(), 5)
    assert client.other_messages == [(0xFF, b"")]  # AudioSocket() fails: the dialplan's fallback takes the caller
    assert line.status().state is LineState.FAILED and line.counters.calls_now == 0
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, port)


# -- whole calls through the CallRunner -----------------------------------------------------------------------------

class SineTts:
    """Says the greeting as 1.2 s of a 440 Hz tone and every other sentence as 0.4 s; keeps what was said."""

    name = "sine"
    voice = "none"

    def __init__(self, greeting: str, wait_for: str) -> None:
        self.greeting = greeting
        self.said: list[str] = []
        self.wait_for = wait_for
        self.said_event = asyncio.Event()

    async def synthesize(self, text: str):
        self.said.append(text)
        if text == self.wait_for:
            self.said_event.set()
        yield tone(1200 if text == self.greeting else 400)


@pytest.fixture(scope="module")
def vad_model() -> SileroModel:
    return SileroModel()


async def _served(settings: Settings, vad_model: SileroModel) -> tuple[Hotline, SineTts, AudioSocketLine, int]:
    hotline = Hotline.open(settings)
    tts = SineTts(prompts.GREETING.format(centre=settings.centre_name), wait_for=prompts.ANYTHING_ELSE)
    runner = runner_for(hotline, vad_model, tts, ScriptedAsrEngine(QUESTION))
    port = _free_port()
    line = AudioSocketLine(HOST, port, max_calls=2)
    await line.start(runner)
    return hotline, tts, line, port


async def _ended_call(hotline: Hotline):
    async with asyncio.timeout(15):
        while True:
            calls = hotline.database.recent_calls()
            if calls and calls[0].status is not CallStatus.ACTIVE:
                return hotline.database.get_call(calls[0].id)
            await asyncio.sleep(0.05)


async def test_a_caller_is_greeted_answered_and_handed_off_with_key_0(settings: Settings,
                                                                      vad_model: SileroModel) -> None:
    hotline, tts, line, port = await _served(settings, vad_model)
    client = await AudioSocketClient(HOST, port, CALL_ID).connect()
    await client.silence(1600)  # Asterisk streams the line's audio all along, silence while the greeting plays
    greeting = bytes(client.received)
    assert len(greeting) >= 1200 * 16 and rms(greeting) > 3000
    assert tts.said == [tts.greeting]

    await client.stream(padded(synthesize_mandarin(QUESTION), before_ms=300, after_ms=1500))
    await asyncio.wait_for(tts.said_event.wait(), 30)
    await client.wait_for_silence(0.5, 10)
    assert "挂失" in tts.said[1] and tts.said[2] == prompts.ANYTHING_ELSE
    assert len(client.received) >= (1200 + 400 * 2) * 16  # the answer and 「还有其他问题吗」 were heard

    await client.press("0")
    await asyncio.wait_for(client.closed_by_server.wait(), 15)
    # AudioSocket gives no caller ID: the ticket's number is read and the caller asked to call again with it
    assert client.hangup_received.is_set() and tts.said[-1].startswith("已为您登记人工服务，登记号是")
    assert tts.said[-1].endswith(prompts.HANDOFF_NO_CALLER_ID.split("。", 1)[1])
    assert set(client.frame_sizes) == {FRAME_BYTES}

    stored = await _ended_call(hotline)
    assert stored.channel is CallChannel.AUDIOSOCKET and stored.caller_number is None
    assert stored.status is CallStatus.ENDED and stored.end_reason == "handoff"
    [turn] = stored.turns
    assert (turn.caller_text, turn.action, turn.item_ids) == (QUESTION, "answer", ["card-loss-report"])
    assert [(ticket.reason, ticket.callback_number) for ticket in stored.handoff_tickets] == [
        ("caller pressed 0", None)]
    await _until(lambda: line.counters.calls_now == 0)
    assert line.counters.calls_total == 1 and line.counters.dtmf == 1
    await line.close()
    hotline.close()


@pytest.mark.parametrize("ending", ["hangup", "error"])
async def test_the_call_record_closes_when_asterisk_hangs_up(settings: Settings, vad_model: SileroModel,
                                                            ending: str) -> None:
    hotline, tts, line, port = await _served(settings, vad_model)
    client = await AudioSocketClient(HOST, port).connect()
    await client.silence(600)
    assert len(client.received) > 0 and tts.said == [tts.greeting]  # the greeting is under way
    await (client.hang_up() if ending == "hangup" else client.error(0x01))
    stored = await _ended_call(hotline)
    assert stored.status is CallStatus.ENDED and stored.end_reason == "caller_hangup"
    assert stored.channel is CallChannel.AUDIOSOCKET and not stored.turns
    await _until(lambda: line.counters.calls_now == 0)
    await line.close()
    hotline.close()


def test_the_fake_client_speaks_the_documented_framing() -> None:
    # The fake is written from the protocol text; this pins it to the bytes the documentation gives.
    assert message(0x00) == b"\x00\x00\x00"
    assert struct.unpack(">BH", message(0x10, bytes(320))[:3]) == (0x10, 320)


def test_the_settings_switch_the_line_on_with_its_address_and_limit(settings: Settings) -> None:
    from telephony.app import build_lines

    assert build_lines(settings) == []
    port = _free_port()
    [line] = build_lines(settings.model_copy(update={"audiosocket_enabled": True, "audiosocket_port": port,
                                                     "audiosocket_max_calls": 7}))
    assert isinstance(line, AudioSocketLine)
    assert (line.host, line.port, line.max_calls) == ("127.0.0.1", port, 7)
    assert line.status().state is LineState.STARTING
