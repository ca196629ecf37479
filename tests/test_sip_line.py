"""The SIP line against real SIP peers on loopback: baresip (Debian) as the caller's phone and SIPp (Debian
`sip-tester`) for the protocol corners, calling the real hotline server (Silero VAD, espeak-ng TTS, SQLite) whose
SIP engines run pjsua2. The ASR is scripted (the tiny model cannot understand speech); everything else is real."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from telephony.settings import Settings
from telephony.store import CallStatus, Database, SmsMessage
from telephony.store.models import HandoffTicket
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.peers import needs
from tests.peers.baresip import Baresip, audio_stats, baresip_binary, free_rtp_range, free_sip_port, make_wav_8k
from tests.peers.sipp import make_alaw, run_sipp, scenario, sipp_binary
from tests.voicefixtures import require_espeak
from voice.audio import silence, write_wav
from voice.testing.fakes import SequenceAsrEngine

pytestmark = needs(baresip_binary() is not None and sipp_binary() is not None, "baresip-core and sip-tester")

QUESTION = "社保卡丢了怎么办"
CALLER_MOBILE = "13800000000"
CAPACITY = 4  # one SIP engine: the flood test fills it
WAIT_S = 40


@dataclass
class SipServer:
    base: str
    settings: Settings
    database: Database
    sip_port: int
    asr: SequenceAsrEngine

    @property
    def uri(self) -> str:
        return f"sip:hotline@127.0.0.1:{self.sip_port}"

    def line(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()["voice"]["lines"]["sip"]

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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipServer]:
    require_espeak()
    root = tmp_path_factory.mktemp("sip-line")
    sip_port = free_sip_port(span=2)
    rtp_low, rtp_high = free_rtp_range()
    settings = Settings(data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_engine="espeak", tts_prerender=False, kb_watch=False, speculative_final=False,
                        no_speech_timeout_ms=20000, sip_enabled=True, sip_port=sip_port, sip_rtp_port=rtp_low,
                        sip_rtp_port_range=rtp_high - rtp_low, sip_max_calls=CAPACITY, sip_codecs=["PCMU", "PCMA"],
                        sip_ring_ms=400)
    asr = SequenceAsrEngine([])
    app = create_app(settings, asr=asr)
    port = _free_port()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    running = SipServer(base, settings, Database(settings.resolved_database_url), sip_port, asr)
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
    server.wait_for(lambda: server.line()["counters"]["calls_now"] == 0, "the line to be idle")


def test_a_softphone_caller_is_greeted_answered_sent_the_guide_and_hangs_up(server: SipServer, tmp_path: Path) -> None:
    question = make_wav_8k(tmp_path / "question.wav", text=QUESTION)
    server.asr.texts[:] = [QUESTION]
    with Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=question, pad_s=40) as phone:
        phone.dial(server.uri)
        phone.wait_event("CALL_ESTABLISHED", timeout=15)
        calls = server.wait_for(lambda: server.calls_from(CALLER_MOBILE), "the call record")
        call_id = calls[0].id

        def answered():
            turns = server.database.get_call(call_id).turns
            return [turn for turn in turns if turn.action == "answer"]

        turn = server.wait_for(answered, "the question to be answered")[0]
        assert turn.caller_text == QUESTION
        assert turn.item_ids[0] == "card-loss-report"
        time.sleep(1.0)  # the SMS offer is being said
        phone.send_dtmf("1")  # consent: the guide goes to the caller ID's mobile, taken from the From header

        def guide():
            with server.database.session() as session:
                return list(session.scalars(select(SmsMessage).where(SmsMessage.call_id == call_id)))

        messages = server.wait_for(guide, "the guide SMS in the outbox")
        assert len(messages) == 1 and messages[0].phone == CALLER_MOBILE
        time.sleep(2.0)  # hear the confirmation
        phone.hangup()
        phone.wait_event("CALL_CLOSED", timeout=10)
        record = server.wait_for(lambda: (c := server.database.get_call(call_id)).status is not CallStatus.ACTIVE
                                 and c, "the call record to close")
        assert record.channel.value == "sip"
        assert record.end_reason == "caller_hangup"
        recordings = phone.recordings()
    stats = audio_stats(recordings[0])
    assert stats.duration_s > 5  # greeting, answer and SMS prompts were heard …
    assert stats.rms > 0.01  # … as speech, not silence
    _idle(server)


def test_key_0_hands_off_and_the_hotline_hangs_up(server: SipServer, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, silence(1000))  # says nothing: only the key
    with Baresip(tmp_path, "presser", user="07732345678", source_wav=quiet, pad_s=30) as phone:
        phone.dial(server.uri)
        phone.wait_event("CALL_ESTABLISHED", timeout=15)
        calls = server.wait_for(lambda: server.calls_from("07732345678"), "the call record")
        time.sleep(1.0)
        phone.send_dtmf("0")
        phone.wait_event("CALL_CLOSED", timeout=30)  # the handoff sentence, then the hotline's BYE
        record = server.wait_for(lambda: (c := server.database.get_call(calls[0].id)).status is not CallStatus.ACTIVE
                                 and c, "the call record to close")
    assert record.end_reason == "handoff"
    with server.database.session() as session:
        tickets = list(session.scalars(select(HandoffTicket).where(HandoffTicket.call_id == record.id)))
    assert len(tickets) == 1 and "pressed 0" in tickets[0].reason
    _idle(server)


def test_pcma_is_negotiated_when_offered_alone(server: SipServer, tmp_path: Path) -> None:
    wav = make_wav_8k(tmp_path / "speech.wav", text=QUESTION)
    make_alaw(wav, tmp_path / "pcma.alaw")
    result = run_sipp(scenario("invite_pcma"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=1)
    assert result.successful == 1, result.describe()
    _idle(server)


def test_a_held_call_is_resumed(server: SipServer, tmp_path: Path) -> None:
    result = run_sipp(scenario("reinvite_hold"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=1)
    assert result.successful == 1, result.describe()
    _idle(server)


def test_cancel_while_ringing_leaves_no_call(server: SipServer, tmp_path: Path) -> None:
    before = server.line()["counters"]["calls_total"]
    records = len(server.database.recent_calls(limit=100))
    result = run_sipp(scenario("cancel_before_answer"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=1)
    assert result.successful == 1, result.describe()
    time.sleep(1.0)  # the ring delay passes: nothing may be answered now
    assert server.line()["counters"]["calls_now"] == 0
    assert server.line()["counters"]["calls_total"] == before + 1  # it rang, and was never answered
    assert len(server.database.recent_calls(limit=100)) == records  # no call record for a call never answered


def test_a_malformed_offer_is_refused_and_the_line_lives_on(server: SipServer, tmp_path: Path) -> None:
    result = run_sipp(scenario("malformed_sdp"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=1)
    assert result.successful == 1, result.describe()
    assert server.line()["state"] == "listening"


def test_sip_info_dtmf_reaches_the_dialogue(server: SipServer, tmp_path: Path) -> None:
    before = server.line()["counters"]["dtmf"]
    result = run_sipp(scenario("info_dtmf"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=1)
    assert result.successful == 1, result.describe()
    server.wait_for(lambda: server.line()["counters"]["dtmf"] > before, "the INFO digit to be counted", 10)
    _idle(server)


def test_a_flood_beyond_capacity_is_answered_busy_not_crashed(server: SipServer, tmp_path: Path) -> None:
    before = server.line()["counters"]["refused_busy"]
    result = run_sipp(scenario("flood"), f"127.0.0.1:{server.sip_port}", tmp_path, calls=CAPACITY + 6,
                      limit=CAPACITY + 6, rate=50, call_duration_ms=4000)
    answered = result.count_logs("ANSWERED")
    refused = result.count_logs("REJECTED 486") + result.count_logs("REJECTED 503")
    assert answered == CAPACITY, result.describe()
    assert refused == 6, result.describe()
    counters = server.wait_for(lambda: (c := server.line()["counters"])["refused_busy"] >= before + 6 and c,
                               "the refusals to be counted", 10)
    assert counters["refused_busy"] == before + 6
    _idle(server)
    assert server.line()["state"] == "listening"
