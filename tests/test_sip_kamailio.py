"""Several hotline workers behind Kamailio (deploy/kamailio/kamailio.cfg), sharing one PostgreSQL.

Two real worker processes (the tiny FunASR model decodes; the known benchmark question is the transcript) each run
their SIP line; baresip callers dial the dispatcher, which spreads the calls round-robin. One worker is SIGKILLed while
every call is up: its calls end (its SIP engine sees the worker gone and hangs up), their records keep the turns they
had, the other worker's calls go on to a normal end, and a new call is answered by the survivor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from telephony.bench.known_questions import BENCH_QUESTIONS
from telephony.store import CallStatus, Database
from tests.peers import needs
from tests.peers.baresip import Baresip, baresip_binary, free_rtp_range, make_wav_8k
from tests.peers.kamailio import Kamailio, kamailio_binary, kamcmd_binary
from tests.peers.workers import Worker, start_worker
from tests.voicefixtures import require_espeak
from voice.testing.tiny_models import build_tiny_paraformer

pytestmark = needs(baresip_binary() is not None and kamailio_binary() is not None and kamcmd_binary() is not None,
                   "baresip-core and kamailio")

CALLERS = [f"1390000000{index}" for index in range(1, 5)]
WAIT_S = 90


def wait_for(condition, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)  # polling the shared database and the workers' /readyz
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def workers(tmp_path: Path, fresh_postgres_url: str) -> Iterator[list[Worker]]:
    require_espeak()
    model = build_tiny_paraformer(tmp_path / "tiny-paraformer")
    started: list[Worker] = []
    try:
        rtp_low, _high = free_rtp_range(400)
        for index, name in enumerate(("worker1", "worker2")):  # started together: they migrate in turn
            started.append(start_worker(name, tmp_path, fresh_postgres_url, model, rtp_low + 200 * index,
                                        {"HOTLINE_SIP_MAX_CALLS": "4", "HOTLINE_NO_SPEECH_TIMEOUT_MS": "60000"}))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


def calls_now(worker: Worker) -> int:
    return worker.sip_line()["counters"]["calls_now"]


def test_a_killed_worker_takes_only_its_own_calls_and_they_keep_their_turns(
        workers: list[Worker], fresh_postgres_url: str, tmp_path: Path) -> None:
    first, second = workers
    database = Database(fresh_postgres_url)
    question = make_wav_8k(tmp_path / "question.wav", text=BENCH_QUESTIONS[0])
    with ExitStack() as stack:
        balancer = stack.enter_context(Kamailio(tmp_path, [first.uri, second.uri], ping_interval_s=1,
                                                fr_timer_ms=1500, extra_defines=("WITH_BUSY_FAILOVER",)))
        balancer.wait_flags(first.uri, "A")
        balancer.wait_flags(second.uri, "A")
        phones = {number: stack.enter_context(Baresip(tmp_path, f"caller-{number}", user=number,
                                                      source_wav=question, pad_s=90, lifetime_s=240))
                  for number in CALLERS}
        for phone in phones.values():
            phone.dial(balancer.uri)
            phone.wait_event("CALL_ESTABLISHED", timeout=20)
        # round-robin over the two workers
        wait_for(lambda: (calls_now(first), calls_now(second)) == (2, 2), "two calls on each worker", timeout_s=10)

        def records():
            by_number = {call.caller_number: call for call in database.recent_calls(limit=50)}
            return by_number if set(CALLERS) <= set(by_number) else None

        def answered():
            calls = {number: database.get_call(call.id) for number, call in records().items()}
            return calls if all(call.turns for call in calls.values()) else None

        wait_for(records, "a record for each call in the shared database")
        before = wait_for(answered, "every caller's question to be answered")
        for call in before.values():
            assert call.turns[0].caller_text in BENCH_QUESTIONS and call.turns[0].action == "answer"

        first.kill()  # SIGKILL mid-call: no chance to close its records or say goodbye
        # The killed worker's SIP engine finds its worker gone and hangs up its callers: no dead air.
        wait_for(lambda: [number for number, phone in phones.items()
                                 if any(event.get("type") == "CALL_CLOSED" for event in phone.events)] or None,
                        "the killed worker's callers to be hung up", timeout_s=20)
        time.sleep(2.0)  # let any further (wrong) hang-up arrive before counting
        lost = [number for number, phone in phones.items()
                if any(event.get("type") == "CALL_CLOSED" for event in phone.events)]
        kept = [number for number in CALLERS if number not in lost]
        assert len(lost) == 2 and len(kept) == 2, (lost, kept)
        assert calls_now(second) == 2  # the survivor's calls are untouched

        for number in lost:  # records up to their last turn; nobody was left to close them
            record = database.get_call(before[number].id)
            assert record.status is CallStatus.ACTIVE
            assert [turn.caller_text for turn in record.turns] == [turn.caller_text for turn in before[number].turns]
        for number in kept:  # the survivor's callers hang up as usual and their records close
            phones[number].hangup()
            phones[number].wait_event("CALL_CLOSED", timeout=10)
        for number in kept:
            record = wait_for(lambda n=number: (c := database.get_call(before[n].id)).status is not CallStatus.ACTIVE
                              and c, "the survivor's record to close")
            assert record.end_reason == "caller_hangup" and record.turns

        balancer.wait_flags(first.uri, "I", timeout=15)  # the probes took the dead worker out of the rotation
        late = stack.enter_context(Baresip(tmp_path, "late-caller", user="13900000009", source_wav=question,
                                           pad_s=60))
        late.dial(balancer.uri)
        late.wait_event("CALL_ESTABLISHED", timeout=20)
        late_record = wait_for(lambda: next((call for call in database.recent_calls(limit=50)
                                             if call.caller_number == "13900000009"), None), "the new call's record")
        wait_for(lambda: database.get_call(late_record.id).turns, "the new call to be answered")
        assert calls_now(second) == 1
        late.hangup()
        late.wait_event("CALL_CLOSED", timeout=10)
    database.close()
