"""The SIP line in register mode: the hotline as extension 8100 of a PBX, against a real registrar with digest
authentication (Kamailio 5.6 running tests/kamailio/registrar.cfg) and a baresip caller who dials the extension
through the PBX. The ASR is scripted (as in test_sip_line.py); the SIP stack, the PBX, the TTS and the store are real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from telephony.settings import Settings
from telephony.store import CallStatus, Database
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.peers import needs
from tests.peers.baresip import Baresip, audio_stats, baresip_binary, free_rtp_range, free_sip_port, make_wav_8k
from tests.peers.kamailio import Kamailio, KamailioError, kamailio_binary, kamcmd_binary
from tests.voicefixtures import require_espeak
from voice.testing.fakes import SequenceAsrEngine

pytestmark = needs(baresip_binary() is not None and kamailio_binary() is not None and kamcmd_binary() is not None,
                   "baresip-core and kamailio")

REGISTRAR_CFG = Path(__file__).resolve().parent / "kamailio" / "registrar.cfg"
EXTENSION = "8100"
PASSWORD = "ext-8100-pw"
QUESTION = "社保卡丢了怎么办"
CALLER_MOBILE = "13800000000"
WAIT_S = 40


@dataclass
class Hotline:
    base: str
    settings: Settings
    database: Database
    asr: SequenceAsrEngine

    def line(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()["voice"]["lines"]["sip"]

    def calls_from(self, caller: str) -> list:
        return [call for call in self.database.recent_calls(limit=50) if call.caller_number == caller]


def wait_for(condition, what: str, timeout_s: float = WAIT_S, seen=None):
    """Poll `condition` until it is truthy; on timeout, the error shows `seen()` (the last state observed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)  # polling the database, /readyz and kamailio's location table
    raise AssertionError(f"timed out waiting for {what}" + (f"; last seen: {seen()}" if seen else ""))


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[Kamailio]:
    """Kamailio as a PBX that knows one extension, EXTENSION with PASSWORD (a fresh one, empty location table)."""
    with Kamailio(tmp_path, [], name="registrar", config=REGISTRAR_CFG,
                  extra_defines=(f'REG_USER="{EXTENSION}"', f'REG_PASSWORD="{PASSWORD}"')) as kamailio:
        yield kamailio


@contextmanager
def hotline(root: Path, registrar: str, password: str) -> Iterator[Hotline]:
    """The hotline app in a uvicorn thread, its SIP line registering as EXTENSION at `registrar`."""
    sip_port = free_sip_port(span=2)
    rtp_low, rtp_high = free_rtp_range()
    settings = Settings(data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_engine="espeak", tts_prerender=False, kb_watch=False, speculative_final=False,
                        no_speech_timeout_ms=20000, sip_enabled=True, sip_mode="register", sip_registrar=registrar,
                        sip_auth_user=EXTENSION, sip_password=password, sip_realm="*",
                        sip_port=sip_port, sip_rtp_port=rtp_low, sip_rtp_port_range=rtp_high - rtp_low,
                        sip_max_calls=4, sip_codecs=["PCMU", "PCMA"])
    asr = SequenceAsrEngine([])
    app = create_app(settings, asr=asr)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = Hotline(f"http://127.0.0.1:{port}", settings, Database(settings.resolved_database_url), asr)
    try:
        wait_for(lambda: _voice_up(running.base), "the server and its voice side", timeout_s=120)
        yield running
    finally:
        server.should_exit = True
        thread.join(30)


def _voice_up(base: str) -> bool:
    try:
        voice = httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {})
    except (httpx.HTTPError, ValueError):
        return False
    return voice.get("asr") == "ready" and "sip" in voice.get("lines", {})


def _registered_contacts(pbx: Kamailio) -> str | None:
    """The location table's entry for EXTENSION (kamcmd output), None when it has none."""
    try:
        return pbx.rpc("ul.lookup", "location", f"s:{EXTENSION}")  # s: keeps kamcmd from reading 8100 as an int
    except KamailioError as exc:
        if "AOR not found" in str(exc):
            return None
        raise


def _settled(line: dict) -> dict | None:
    """The line once registration has an outcome (registered or failed), else None."""
    return line if line.get("state") in ("registered", "failed") else None


def test_the_extension_registers_and_takes_a_call_through_the_pbx(pbx: Kamailio, tmp_path: Path) -> None:
    require_espeak()
    question = make_wav_8k(tmp_path / "question.wav", text=QUESTION)
    with hotline(tmp_path / "hotline", f"sip:127.0.0.1:{pbx.port}", PASSWORD) as server:
        line = wait_for(lambda: _settled(server.line()), "the registration's outcome", seen=server.line)
        assert line["state"] == "registered", line
        assert f"at sip:127.0.0.1:{pbx.port}" in line["detail"]
        contact = _registered_contacts(pbx)
        assert contact is not None and f"sip:{EXTENSION}@127.0.0.1:{server.settings.sip_port}" in contact, contact

        server.asr.texts[:] = [QUESTION]
        with Baresip(tmp_path, "caller", user=CALLER_MOBILE, source_wav=question, pad_s=40) as phone:
            phone.dial(f"sip:{EXTENSION}@127.0.0.1:{pbx.port}")
            phone.wait_event("CALL_ESTABLISHED", timeout=15)
            calls = wait_for(lambda: server.calls_from(CALLER_MOBILE), "the call record")
            call_id = calls[0].id
            assert calls[0].channel.value == "sip"
            # the PBX looked the extension up and relayed the INVITE to the contact the hotline registered
            assert f"relayed to sip:{EXTENSION}@127.0.0.1:{server.settings.sip_port}" in pbx.log()

            def answered():
                turns = server.database.get_call(call_id).turns
                return [turn for turn in turns if turn.action == "answer"]

            turn = wait_for(answered, "the question to be answered")[0]
            assert turn.caller_text == QUESTION
            assert turn.item_ids[0] == "card-loss-report"
            time.sleep(2.0)  # let the answer play for a while before hanging up
            phone.hangup()
            phone.wait_event("CALL_CLOSED", timeout=10)
            record = wait_for(lambda: (c := server.database.get_call(call_id)).status is not CallStatus.ACTIVE
                              and c, "the call record to close")
            assert record.channel.value == "sip"
            assert record.caller_number == CALLER_MOBILE
            assert record.end_reason == "caller_hangup"
            recordings = phone.wait_recordings(1)
        stats = audio_stats(recordings[0])
        assert stats.duration_s > 3  # the greeting and the answer were heard through the PBX …
        assert stats.rms > 0.01  # … as speech, not silence
        wait_for(lambda: server.line()["counters"]["calls_now"] == 0, "the line to be idle")
        assert server.line()["state"] == "registered"
    # on shutdown the hotline un-registers (REGISTER with Expires: 0): the PBX no longer rings a stopped extension
    wait_for(lambda: not _registered_contacts(pbx), "the extension to be unregistered", timeout_s=10,
             seen=lambda: pbx.rpc("ul.dump"))


def test_a_wrong_password_is_refused_and_the_line_says_why(pbx: Kamailio, tmp_path: Path) -> None:
    require_espeak()
    with hotline(tmp_path / "hotline", f"sip:127.0.0.1:{pbx.port}", "not-the-password") as server:
        line = wait_for(lambda: _settled(server.line()), "the registration's outcome", seen=server.line)
        assert line["state"] == "failed", line
        assert f"registrar sip:127.0.0.1:{pbx.port} answered 403 Forbidden" in line["detail"], line
        assert _registered_contacts(pbx) is None  # nothing was saved
    assert "REGISTER of 8100 from 127.0.0.1" in pbx.log() and "auth code -2" in pbx.log()  # -2: wrong password
