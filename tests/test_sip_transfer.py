"""Transfers on the SIP line with real peers on loopback: a baresip caller talks to the real hotline server (pjsua2
engines, Silero VAD, espeak-ng TTS, SQLite; scripted ASR) and the live call is handed to an "agent" baresip, both ways
the line supports:

- `sip_transfer_mode=refer`: the engine sends a blind REFER to the caller's UA, which dials the agent itself; the
  hotline's leg ends on the final NOTIFY.
- `sip_transfer_mode=bridge`: the engine calls the agent on a second leg and bridges the two inside its conference
  bridge (the audio crosses the hotline both ways); either side leaving ends both legs.

The transfer is started the way the call's runner would: `SipCallTransport.transfer()` on the server's event loop.
The caller sends a 1000 Hz tone and the agent a 440 Hz tone, so each recording tells whose audio reached whom.

Two tests guard engine bugs found here: a failed bridged leg must not hang up the caller, and a transfer must not
leave a pj.Call behind whose destruction hangs up a later call in the same pjsua slot.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from telephony.calls.base import TransferUnavailable
from telephony.settings import Settings
from telephony.store import CallStatus, Database
from telephony.store.models import HandoffTicket
from telephony.transports.sip.agent import SipCallTransport, SipLine
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.peers import needs
from tests.peers.baresip import Baresip, _wav_pcm16, baresip_binary, free_rtp_range, free_sip_port, tone_pcm16
from tests.voicefixtures import require_espeak
from voice.audio import silence, write_wav
from voice.testing.fakes import SequenceAsrEngine

pytestmark = needs(baresip_binary() is not None, "baresip-core")

CALLER_MOBILE = "13800000000"
AGENT_USER = "agent8001"
CALLER_HZ = 1000.0
AGENT_HZ = 440.0
WAIT_S = 40  # generous: the machine may be busy with other suites; nothing here asserts a duration
TRANSFER_WAIT_S = 60  # the line gives up on an engine's answer after 35 s; this only bounds a hung loop
ENGINE_TRANSFER_TIMEOUT_S = 30  # telephony.transports.sip.engine.TRANSFER_TIMEOUT_S (not imported: it loads pjsua2)
PEER_LIFETIME_S = 180  # baresip's -t: a forgotten phone still ends
# The line tells the runner (a Transferred event): the record ends as "transferred", not as a dropped line, and a
# bridged conversation is not cut short by the assistant's silence timer.
END_REASON_AFTER_TRANSFER = "transferred"

REFER = pytest.mark.parametrize("server", ["refer"], indirect=True)
BRIDGE = pytest.mark.parametrize("server", ["bridge"], indirect=True)


@dataclass
class SipServer:
    mode: str
    app: FastAPI
    base: str
    settings: Settings
    database: Database
    sip_port: int

    @property
    def uri(self) -> str:
        return f"sip:hotline@127.0.0.1:{self.sip_port}"

    def line(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()["voice"]["lines"]["sip"]

    def counters(self) -> dict[str, int]:
        return self.line()["counters"]

    def calls_from(self, caller: str) -> list:
        return [call for call in self.database.recent_calls(limit=50) if call.caller_number == caller]

    def wait_for(self, condition, what: str, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(0.1)  # polling the database and the line the server thread writes to
        raise AssertionError(f"timed out waiting for {what}")

    def sip_line(self) -> SipLine:
        voice = self.app.state.hotline_state.hotline.voice
        return next(line for line in voice.served if isinstance(line, SipLine))

    def on_loop(self, coroutine, timeout_s: float = TRANSFER_WAIT_S) -> Any:
        """Run `coroutine` on the server's event loop (where the line and its calls live) and return its result."""
        loop = self.sip_line()._loop
        assert loop is not None, "the SIP line has not started"
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout_s)

    def transfer(self, target: str) -> SipCallTransport:
        """`transfer(target)` on the one live SIP call, as the call's runner would; returns its transport."""
        line = self.sip_line()

        async def transfer() -> SipCallTransport:
            live = [transport for engine in line.engines for transport in engine.calls.values() if not transport.ended]
            assert len(live) == 1, f"expected one live SIP call, found {len(live)}"
            await live[0].transfer(target)
            return live[0]

        return self.on_loop(transfer())

    def wait_closed(self, call_id: str):
        return self.wait_for(lambda: (c := self.database.get_call(call_id)).status is not CallStatus.ACTIVE and c,
                             "the call record to close")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipServer]:
    """The hotline with its SIP line in `request.param` transfer mode (one server per mode, one at a time)."""
    require_espeak()
    mode = request.param
    root = tmp_path_factory.mktemp(f"sip-transfer-{mode}")
    sip_port = free_sip_port(span=2)
    rtp_low, rtp_high = free_rtp_range()
    settings = Settings(data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_engine="espeak", tts_prerender=False, kb_watch=False, speculative_final=False,
                        no_speech_timeout_ms=20000, sip_enabled=True, sip_port=sip_port, sip_rtp_port=rtp_low,
                        sip_rtp_port_range=rtp_high - rtp_low, sip_max_calls=4, sip_codecs=["PCMU", "PCMA"],
                        sip_transfer_mode=mode)
    app = create_app(settings, asr=SequenceAsrEngine([]))
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    running = SipServer(mode, app, base, settings, Database(settings.resolved_database_url), sip_port)
    try:
        running.wait_for(lambda: _ready(base), "the server and its SIP line", timeout_s=120)
        yield running
    finally:
        uvicorn_server.should_exit = True
        thread.join(30)


def _ready(base: str) -> bool:
    try:
        voice = httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {})
    except (httpx.HTTPError, ValueError):
        return False
    line = voice.get("lines", {}).get("sip", {})
    if line.get("state") == "failed":
        raise AssertionError(f"the SIP line failed: {line}")
    return voice.get("asr") == "ready" and line.get("state") == "listening"


def _idle(server: SipServer) -> None:
    server.wait_for(lambda: server.counters()["calls_now"] == 0, "the line to be idle")


# --- audio -----------------------------------------------------------------------------------------------------------

def _tone_wav(path: Path, frequency_hz: float, seconds: float) -> Path:
    write_wav(path, tone_pcm16(seconds, frequency_hz))
    return path


def _quiet_wav(path: Path) -> Path:
    write_wav(path, silence(1000))
    return path


def _segment(path: Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """Samples of a 16-bit WAV between `start_s` and `end_s` (negative: from its end)."""
    pcm16, rate = _wav_pcm16(path.read_bytes())
    samples = np.frombuffer(pcm16, "<i2").astype(np.float64)
    start, end = (int(round(t * rate)) for t in (start_s, end_s))
    return samples[start:end if end else None], rate


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency above 100 Hz (a Hann-windowed FFT)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    frequencies = np.fft.rfftfreq(samples.size, 1 / rate)
    spectrum[frequencies < 100] = 0
    return float(frequencies[int(np.argmax(spectrum))])


def _assert_tone(path: Path, start_s: float, end_s: float, frequency_hz: float, whose: str) -> None:
    samples, rate = _segment(path, start_s, end_s)
    assert samples.size >= rate, f"{path.name}: under a second of audio in [{start_s}, {end_s}] s"
    rms = float(np.sqrt(np.mean(samples * samples))) / 32768
    assert rms > 0.02, f"{path.name}: silence where {whose} tone should be (rms {rms:.4f})"
    dominant = _dominant_hz(samples, rate)
    assert abs(dominant - frequency_hz) < 15, f"{path.name}: dominant {dominant:.0f} Hz, not {whose} {frequency_hz} Hz"


# --- helpers ---------------------------------------------------------------------------------------------------------

def _connect(server: SipServer, caller: Baresip) -> tuple[dict, str]:
    """The caller dials the hotline; returns the caller's CALL_ESTABLISHED event and the call record's id."""
    known = {call.id for call in server.calls_from(CALLER_MOBILE)}
    caller.dial(server.uri)
    established = caller.wait_event("CALL_ESTABLISHED", timeout=15)
    server.wait_for(lambda: server.counters()["calls_now"] == 1, "the call to be on the line")
    calls = server.wait_for(lambda: [c for c in server.calls_from(CALLER_MOBILE) if c.id not in known],
                            "the call record")
    time.sleep(1.0)  # a second of the greeting
    return established, calls[0].id


def _closed_ids(phone: Baresip) -> list[str]:
    return [event.get("id") for event in phone.events if event.get("type") == "CALL_CLOSED"]


def _transfers(server: SipServer) -> dict[str, int]:
    counters = server.counters()
    return {kind: counters.get(f"transfers_{kind}", 0) for kind in ("refer", "bridge", "failed")}


def _still_with_the_assistant(server: SipServer, caller: Baresip, hotline_call: dict, call_id: str) -> None:
    """The caller's call to the hotline is up and its dialogue still hears the caller: key 0 opens a handoff ticket
    (the caller then hangs up rather than wait for the handoff sentences)."""
    time.sleep(1.0)  # a BYE after the failure would have arrived by now
    closed = [event for event in caller.events
              if event.get("type") == "CALL_CLOSED" and event.get("id") == hotline_call["id"]]
    assert not closed, f"the hotline hung up on the caller: {closed}"
    assert server.counters()["calls_now"] == 1
    caller.send_dtmf("0")
    server.wait_for(lambda: _tickets(server, call_id), "key 0 to reach the dialogue (a handoff ticket)")
    caller.hangup()
    server.wait_for(lambda: hotline_call["id"] in _closed_ids(caller), "the caller's call to close")
    assert server.wait_closed(call_id).end_reason == "handoff"


def _tickets(server: SipServer, call_id: str) -> list[HandoffTicket]:
    with server.database.session() as session:
        return list(session.scalars(select(HandoffTicket).where(HandoffTicket.call_id == call_id)))


# --- refer -----------------------------------------------------------------------------------------------------------

@REFER
def test_refer_hands_the_caller_to_the_agent_and_the_hotline_leaves(server: SipServer, tmp_path: Path) -> None:
    before = _transfers(server)
    caller_wav = _tone_wav(tmp_path / "caller.wav", CALLER_HZ, 60)
    agent_wav = _tone_wav(tmp_path / "agent.wav", AGENT_HZ, 60)
    with Baresip(tmp_path, "agent", user=AGENT_USER, source_wav=agent_wav, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=caller_wav,
                    lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, call_id = _connect(server, caller)

        transport = server.transfer(f"sip:{AGENT_USER}@127.0.0.1:{agent.sip_port}")
        assert transport.transferred_to == agent.uri

        caller.wait_event("TRANSFER", timeout=10)  # the REFER reached the caller's UA …
        at_agent = agent.wait_event("CALL_ESTABLISHED", timeout=WAIT_S)  # … which called the agent itself
        assert at_agent["direction"] == "incoming"
        assert at_agent["peeruri"].startswith(f"sip:{CALLER_MOBILE}@127.0.0.1"), at_agent
        to_agent = caller.wait_event("CALL_ESTABLISHED", timeout=WAIT_S)
        assert to_agent["peeruri"].startswith(f"sip:{AGENT_USER}@127.0.0.1:{agent.sip_port}"), to_agent
        assert to_agent["id"] != hotline_call["id"]
        server.wait_for(lambda: hotline_call["id"] in _closed_ids(caller),
                        "the hotline's leg to the caller to close")  # its BYE after the final NOTIFY
        _idle(server)
        assert _transfers(server) == {**before, "refer": before["refer"] + 1}
        assert server.wait_closed(call_id).end_reason == END_REASON_AFTER_TRANSFER

        time.sleep(2.0)  # caller and agent talk, without the hotline
        assert to_agent["id"] not in _closed_ids(caller)
        agent.hangup()
        agent.wait_event("CALL_CLOSED", timeout=10)
        server.wait_for(lambda: to_agent["id"] in _closed_ids(caller), "the caller's call to the agent to close")
        agent_heard = agent.wait_recordings(1)[0]
        caller_heard = caller.wait_recordings(2)[-1]  # the caller's second call: the one to the agent
    _assert_tone(agent_heard, 0.5, -0.3, CALLER_HZ, "the caller's")  # straight from the caller's UA
    _assert_tone(caller_heard, 0.5, -0.3, AGENT_HZ, "the agent's")
    assert server.counters()["calls_now"] == 0


@REFER
def test_refer_to_an_unknown_extension_fails_and_the_caller_stays_with_the_assistant(server: SipServer,
                                                                                      tmp_path: Path) -> None:
    before = _transfers(server)
    with Baresip(tmp_path, "agent", user=AGENT_USER, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=_quiet_wav(tmp_path / "quiet.wav"),
                    lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, call_id = _connect(server, caller)

        with pytest.raises(TransferUnavailable, match="404"):  # the agent's UA has no such user: 404 Not Found
            server.transfer(f"sip:nobody@127.0.0.1:{agent.sip_port}")

        assert _transfers(server) == {**before, "failed": before["failed"] + 1}
        assert not [event for event in agent.events if event.get("type") == "CALL_ESTABLISHED"]
        _still_with_the_assistant(server, caller, hotline_call, call_id)
    _idle(server)


# --- bridge ----------------------------------------------------------------------------------------------------------

@BRIDGE
def test_bridge_connects_caller_and_agent_through_the_hotline(server: SipServer, tmp_path: Path) -> None:
    before = _transfers(server)
    caller_wav = _tone_wav(tmp_path / "caller.wav", CALLER_HZ, 60)
    agent_wav = _tone_wav(tmp_path / "agent.wav", AGENT_HZ, 60)
    with Baresip(tmp_path, "agent", user=AGENT_USER, source_wav=agent_wav, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=caller_wav,
                    lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, call_id = _connect(server, caller)

        transport = server.transfer(agent.uri)
        assert transport.transferred_to == agent.uri

        at_agent = agent.wait_event("CALL_ESTABLISHED", timeout=WAIT_S)
        assert at_agent["direction"] == "incoming"
        assert at_agent["peeruri"].startswith("sip:hotline@127.0.0.1"), at_agent  # the hotline's 2nd leg
        assert _transfers(server) == {**before, "bridge": before["bridge"] + 1}
        assert server.counters()["calls_now"] == 1  # the caller's call; the agent's leg is not a call of the line
        assert not [event for event in caller.events if event.get("type") == "TRANSFER"]  # no REFER for the caller

        time.sleep(3.0)  # caller and agent talk through the hotline
        assert hotline_call["id"] not in _closed_ids(caller)
        agent.hangup()  # the agent leaves: the hotline ends the caller's leg too
        agent.wait_event("CALL_CLOSED", timeout=10)
        server.wait_for(lambda: hotline_call["id"] in _closed_ids(caller), "the caller's call to close")
        _idle(server)
        assert server.wait_closed(call_id).end_reason == END_REASON_AFTER_TRANSFER
        agent_heard = agent.wait_recordings(1)[0]
        caller_heard = caller.wait_recordings(1)[0]
    _assert_tone(agent_heard, 0.5, -0.3, CALLER_HZ, "the caller's")
    _assert_tone(caller_heard, -2.5, -0.5, AGENT_HZ, "the agent's")  # the call's end is well after the transfer


@BRIDGE
def test_the_caller_leaving_ends_the_agents_leg(server: SipServer, tmp_path: Path) -> None:
    with Baresip(tmp_path, "agent", user=AGENT_USER, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=_quiet_wav(tmp_path / "quiet.wav"),
                    lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, call_id = _connect(server, caller)
        server.transfer(agent.uri)
        agent.wait_event("CALL_ESTABLISHED", timeout=WAIT_S)
        time.sleep(1.0)
        caller.hangup()
        caller.wait_event("CALL_CLOSED", timeout=10)
        agent.wait_event("CALL_CLOSED", timeout=WAIT_S)  # the hotline's BYE on the agent's leg
        _idle(server)
        assert server.wait_closed(call_id).end_reason == END_REASON_AFTER_TRANSFER  # the agent had the caller


@BRIDGE
def test_bridge_to_an_unknown_extension_fails_and_the_caller_stays_with_the_assistant(server: SipServer,
                                                                                       tmp_path: Path) -> None:
    before = _transfers(server)
    with Baresip(tmp_path, "agent", user=AGENT_USER, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=_quiet_wav(tmp_path / "quiet.wav"),
                    lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, call_id = _connect(server, caller)
        try:
            with pytest.raises(TransferUnavailable, match="404"):
                server.transfer(f"sip:nobody@127.0.0.1:{agent.sip_port}")
            assert _transfers(server) == {**before, "failed": before["failed"] + 1}
            _still_with_the_assistant(server, caller, hotline_call, call_id)
        finally:
            if hotline_call["id"] not in _closed_ids(caller):
                caller.hangup()
                caller.wait_event("CALL_CLOSED", timeout=10)
    _idle(server)


# --- what a transfer leaves behind -----------------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["refer", "bridge"], indirect=True)
def test_calls_after_a_transfer_are_left_alone(server: SipServer, tmp_path: Path) -> None:
    quiet = _quiet_wav(tmp_path / "quiet.wav")
    with Baresip(tmp_path, "agent", user=AGENT_USER, lifetime_s=PEER_LIFETIME_S) as agent, \
            Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=quiet, lifetime_s=PEER_LIFETIME_S) as caller:
        hotline_call, _call_id = _connect(server, caller)
        server.transfer(agent.uri)
        transferred_at = time.monotonic()
        agent.wait_event("CALL_ESTABLISHED", timeout=WAIT_S)
        if server.mode == "refer":
            server.wait_for(lambda: hotline_call["id"] in _closed_ids(caller), "the hotline's leg to close")
        agent.hangup()
        agent.wait_event("CALL_CLOSED", timeout=10)
        _idle(server)
    with ExitStack() as stack:  # one engine, 4 pjsua call slots: these calls take every slot, the stale one too
        phones = []
        for index in range(4):
            phone = stack.enter_context(Baresip(tmp_path, f"later{index}", user=f"1390000000{index}",
                                                source_wav=quiet, lifetime_s=PEER_LIFETIME_S))
            phone.dial(server.uri)
            phones.append((phone, phone.wait_event("CALL_ESTABLISHED", timeout=15)))
            server.wait_for(lambda count=index + 1: server.counters()["calls_now"] == count, "the later calls")
        if time.monotonic() > transferred_at + ENGINE_TRANSFER_TIMEOUT_S - 3:
            pytest.skip("the machine is too slow to set the later calls up before the transfer's timer runs out")
        time.sleep(max(0.0, transferred_at + ENGINE_TRANSFER_TIMEOUT_S + 4 - time.monotonic()))  # past the timer
        dropped = {phone.user: [event.get("param") for event in phone.events if event.get("type") == "CALL_CLOSED"]
                   for phone, _established in phones}
        assert not any(dropped.values()), f"the hotline hung up later calls: {dropped}"
        assert server.counters()["calls_now"] == 4
        for phone, _established in phones:
            phone.hangup()
            phone.wait_event("CALL_CLOSED", timeout=10)
    _idle(server)
