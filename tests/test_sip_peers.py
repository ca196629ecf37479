"""The SIP test peers themselves (tests/peers/): baresip phones, SIPp scenarios (tests/sipp/) and the Kamailio
dispatcher of deploy/kamailio/, checked against one another on 127.0.0.1 so that a failing SIP test of the hotline
agent points at the agent, not at the harness. scripts/setup.sh test installs the binaries."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import needs
from tests.peers.baresip import Baresip, audio_stats, tone_pcm16
from tests.peers.kamailio import Kamailio, kamailio_binary, kamcmd_binary
from tests.peers.sipp import ALAW_FILE, make_alaw, run_sipp, scenario
from voice.audio import silence, write_wav

needs_baresip = needs(shutil.which("baresip") is not None, "baresip (baresip-core)")
needs_sipp = needs(shutil.which("sipp") is not None, "sipp (sip-tester)")
needs_sox = needs(shutil.which("sox") is not None, "sox")
needs_kamailio = needs(kamailio_binary() is not None and kamcmd_binary() is not None, "kamailio")

PeerFactory = Callable[..., Baresip]


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[PeerFactory]:
    """Start baresip phones under tmp_path; every one is stopped at teardown, whatever the test did."""
    started: list[Baresip] = []

    def start(name: str, **options: object) -> Baresip:
        phone = Baresip(tmp_path, name, lifetime_s=60, **options)
        started.append(phone)
        return phone.start()

    yield start
    for phone in started:
        phone.stop()


def established_calls(phone: Baresip) -> int:
    return sum(1 for event in phone.events if event.get("type") == "CALL_ESTABLISHED")


def call_and_hang_up(caller: Baresip, uri: str, talk_s: float = 0.5) -> dict:
    caller.dial(uri)
    established = caller.wait_event("CALL_ESTABLISHED", timeout=10)
    time.sleep(talk_s)  # let some audio flow
    caller.hangup()
    caller.wait_event("CALL_CLOSED", timeout=5)
    return established


@needs_baresip
def test_baresip_call_carries_audio_and_dtmf(phones: PeerFactory) -> None:
    callee = phones("callee")
    caller = phones("caller", user="caller", answermode="manual")
    caller.dial(callee.uri)
    caller.wait_event("CALL_ESTABLISHED", timeout=5)
    callee.wait_event("CALL_ESTABLISHED", timeout=5)
    time.sleep(1.5)  # the 3 s tone is playing
    caller.send_dtmf("1#")
    callee.wait_event("CALL_DTMF_START", timeout=5)
    callee.wait_event("CALL_DTMF_START", timeout=5)
    caller.hangup()
    callee.wait_event("CALL_CLOSED", timeout=5)
    assert callee.dtmf_digits() == "1#"
    [recording] = callee.wait_recordings(1)
    stats = audio_stats(recording)
    assert stats.duration_s > 1.0
    assert stats.rms > 0.05, stats  # the caller's tone is at 0.3 peak, 0.21 RMS


@pytest.fixture
def alaw_dir(tmp_path: Path) -> Path:
    """A SIPp working directory holding the a-law file that invite_pcma.xml streams."""
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone_pcm16(3.0) + silence(1000))
    make_alaw(wav, workdir / ALAW_FILE)
    return workdir


@needs_baresip
@needs_sipp
@needs_sox
def test_sipp_invite_pcma_against_baresip(phones: PeerFactory, alaw_dir: Path) -> None:
    callee = phones("pcma", codecs="PCMA")
    result = run_sipp(scenario("invite_pcma"), f"127.0.0.1:{callee.sip_port}", alaw_dir, timeout_s=20)
    assert (result.returncode, result.successful, result.failed) == (0, 1, 0), result.describe()
    assert result.count_logs("ANSWER m=audio") == 1
    callee.wait_event("CALL_CLOSED", timeout=5)
    [recording] = callee.wait_recordings(1)
    assert audio_stats(recording).rms > 0.05  # SIPp's a-law stream arrived

    # The SDP check is real: a callee that only has PCMU refuses the PCMA-only offer and the call fails.
    pcmu_only = phones("pcmu", codecs="PCMU")
    refused = run_sipp(scenario("invite_pcma"), f"127.0.0.1:{pcmu_only.sip_port}", alaw_dir, timeout_s=10)
    assert (refused.returncode, refused.successful, refused.failed) == (1, 0, 1), refused.describe()
    assert "488" in refused.errors


@needs_baresip
@needs_sipp
@pytest.mark.parametrize(("name", "answermode", "logs"), [
    ("reinvite_hold", "auto", ["HOLD a=recvonly", "RESUME a=sendrecv"]),
    ("info_dtmf", "auto", ["INFO 200"]),
    ("cancel_before_answer", "manual", ["CANCELLED 487"]),
])
def test_sipp_scenarios_against_baresip(phones: PeerFactory, tmp_path: Path, name: str, answermode: str,
                                        logs: list[str]) -> None:
    callee = phones(name, answermode=answermode)
    result = run_sipp(scenario(name), f"127.0.0.1:{callee.sip_port}", tmp_path / "sipp", timeout_s=15)
    assert (result.returncode, result.successful, result.failed) == (0, 1, 0), result.describe()
    assert result.log_lines == logs


@needs_baresip
@needs_sipp
def test_sipp_flood_counts_answered_and_busy(phones: PeerFactory, tmp_path: Path) -> None:
    callee = phones("busy", max_calls=2)  # baresip answers 486 Busy Here beyond call_max_calls
    result = run_sipp(scenario("flood"), f"127.0.0.1:{callee.sip_port}", tmp_path / "sipp", calls=4, rate=20,
                      call_duration_ms=2000, timeout_s=15)
    assert (result.returncode, result.successful, result.failed) == (0, 4, 0), result.describe()
    assert result.count_logs("ANSWERED") == 2
    assert result.count_logs("REJECTED 486") == 2


@needs_baresip
@needs_kamailio
def test_kamailio_spreads_calls_and_survives_a_dead_worker(phones: PeerFactory, tmp_path: Path) -> None:
    first, second = phones("worker1"), phones("worker2")
    caller = phones("caller", user="caller", answermode="manual")
    with Kamailio(tmp_path, [first.uri, second.uri], ping_interval_s=1, fr_timer_ms=1500) as balancer:
        balancer.wait_flags(first.uri, "A")
        balancer.wait_flags(second.uri, "A")
        for _ in range(2):
            call_and_hang_up(caller, balancer.uri)
        assert (established_calls(first), established_calls(second)) == (1, 1)  # round-robin

        first.kill()
        for _ in range(2):  # whichever call is sent to the dead worker fails over (or probing already removed it)
            call_and_hang_up(caller, balancer.uri)
        assert established_calls(second) == 3
        balancer.wait_flags(first.uri, "I")  # the OPTIONS probes took it out of the rotation
        assert balancer.dispatcher_list()[second.uri].startswith("A")
        assert len(second.wait_recordings(3)) == 3


@needs_baresip
@needs_sipp
@needs_kamailio
def test_kamailio_relays_in_dialog_requests_and_cancel(phones: PeerFactory, tmp_path: Path) -> None:
    answering, ringing = phones("answering"), phones("ringing", answermode="manual")
    with Kamailio(tmp_path, [answering.uri], ping_interval_s=1) as balancer:
        balancer.wait_flags(answering.uri, "A")
        for name, logs in [("reinvite_hold", ["HOLD a=recvonly", "RESUME a=sendrecv"]), ("info_dtmf", ["INFO 200"])]:
            result = run_sipp(scenario(name), balancer.address, tmp_path / name, timeout_s=15)
            assert (result.returncode, result.successful, result.log_lines) == (0, 1, logs), result.describe()
        assert "Record-Route:" in (tmp_path / "info_dtmf" / "messages.log").read_text()

        balancer.workers = [ringing.uri]
        balancer.write_dispatcher_list()
        balancer.reload()
        balancer.wait_flags(ringing.uri, "A")
        result = run_sipp(scenario("cancel_before_answer"), balancer.address, tmp_path / "cancel", timeout_s=15)
        assert (result.returncode, result.successful, result.log_lines) == (0, 1, ["CANCELLED 487"]), result.describe()
        ringing.wait_event("CALL_CLOSED", timeout=5)  # the CANCEL reached the ringing phone
