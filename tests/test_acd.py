"""The hotline's call distributor (telephony/handoff/acd.py) on its own: who gets which call, offers that ring out,
callers who leave, the hold announcements, and audio crossing only while the agent talks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from telephony.calls import prompts
from telephony.handoff.acd import (
    AgentQueue,
    CallerWait,
    CallState,
    DeskError,
    EndedBy,
    QueuedCall,
    Seat,
    SeatState,
    comfort_tone,
    context_card,
    queue_announcement,
)
from telephony.handoff.base import HandoffRequest, HandoffTrigger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Line:
    """The caller's side: what reached the caller."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []

    async def send_audio(self, pcm16: bytes) -> None:
        self.audio.append(pcm16)


def drain(seat: Seat) -> list[dict | bytes]:
    messages = []
    while not seat.outbox.empty():
        messages.append(seat.outbox.get_nowait())
    return messages


def of_type(messages: list, kind: str) -> list[dict]:
    return [m for m in messages if isinstance(m, dict) and m.get("type") == kind]


def queued(call_id: str, line: Line | None = None) -> QueuedCall:
    return QueuedCall(call_id, {"caller": "138****0000", "question": "社保卡丢了"}, (line or Line()).send_audio)


async def test_the_longest_waiting_call_goes_to_the_agent_ready_longest() -> None:
    clock = Clock()
    queue = AgentQueue(clock=clock)
    first, second = Seat(1, "li", "李"), Seat(2, "wang", "王")
    queue.sign_in(first)
    queue.sign_in(second)
    queue.set_ready(second, True)
    clock.now += 5
    queue.set_ready(first, True)  # ready later than wang
    old, new = queued("call-old"), queued("call-new")
    assert queue.enqueue(old) == 1
    assert (old.state, old.seat) == (CallState.OFFERED, second)  # wang has waited longest
    assert queue.enqueue(new) == 2
    assert (new.state, new.seat) == (CallState.OFFERED, first)
    offers = of_type(drain(second), "offer")
    assert offers[-1]["call"]["call_id"] == "call-old" and offers[-1]["call"]["question"] == "社保卡丢了"
    assert queue.accept(second, "call-old") is old and old.connected.is_set()
    assert second.state is SeatState.TALKING and queue.position(old) == 0 and queue.position(new) == 1


async def test_a_call_taken_by_another_agent_or_gone_cannot_be_accepted() -> None:
    queue = AgentQueue()
    li, wang = Seat(1, "li", "李"), Seat(2, "wang", "王")
    for seat in (li, wang):
        queue.sign_in(seat)
    queue.set_ready(li, True)
    call = queued("call-1")
    queue.enqueue(call)
    with pytest.raises(DeskError, match="已被其他坐席接听或来电人已挂断"):
        queue.accept(wang, "call-1")
    queue.leave(call, EndedBy.CALLER)  # the caller hangs up while it rings at li's desk
    withdrawn = of_type(drain(li), "offer_withdrawn")
    assert withdrawn and withdrawn[-1]["reason"] == "来电人已挂断" and li.state is SeatState.READY
    with pytest.raises(DeskError):
        queue.accept(li, "call-1")
    assert queue.counters["abandoned"] == 1


async def test_an_offer_that_rings_out_moves_on_and_sets_the_agent_away() -> None:
    queue = AgentQueue(offer_timeout_s=20)
    li, wang = Seat(1, "li", "李"), Seat(2, "wang", "王")
    for seat in (li, wang):
        queue.sign_in(seat)
    queue.set_ready(li, True)
    queue.set_ready(wang, True)
    call = queued("call-1")
    queue.enqueue(call)
    assert call.seat is li
    timer = li._offer_timer
    assert timer is not None and 19 < timer.when() - asyncio.get_running_loop().time() <= 20
    timer._run()  # the 20 s pass (the loop's own timer callback, run now)
    assert li.state is SeatState.AWAY and call.seat is wang and call.state is CallState.OFFERED
    assert of_type(drain(li), "offer_withdrawn")[-1]["reason"] == "未及时接听，已为您切换为小休"
    assert queue.counters["offers_unanswered"] == 1


async def test_audio_crosses_only_while_the_agent_talks() -> None:
    queue = AgentQueue()
    seat = Seat(1, "li", "李")
    queue.sign_in(seat)
    queue.set_ready(seat, True)
    line = Line()
    call = queued("call-1", line)
    queue.enqueue(call)
    call.caller_audio(b"\x01\x00" * 160)  # still ringing: the agent hears nothing yet
    await queue.agent_audio(seat, b"\x02\x00" * 160)
    assert [m for m in drain(seat) if isinstance(m, bytes)] == [] and line.audio == []
    queue.accept(seat, "call-1")
    call.caller_audio(b"\x03\x00" * 160)
    await queue.agent_audio(seat, b"\x04\x00" * 160)
    assert [m for m in drain(seat) if isinstance(m, bytes)] == [b"\x03\x00" * 160]
    assert line.audio == [b"\x04\x00" * 160]
    queue.hold(seat, True)
    call.caller_audio(b"\x05\x00" * 160)
    await queue.agent_audio(seat, b"\x06\x00" * 160)
    assert [m for m in drain(seat) if isinstance(m, bytes)] == [] and len(line.audio) == 1
    queue.hold(seat, False)
    queue.hang_up(seat)
    assert call.ended_by is EndedBy.AGENT and seat.state is SeatState.AWAY and seat.call is None
    with pytest.raises(DeskError, match="当前没有通话"):
        queue.hang_up(seat)


async def test_state_changes_that_make_no_sense_are_refused_clearly() -> None:
    queue = AgentQueue()
    seat = Seat(1, "li", "李")
    queue.sign_in(seat)
    queue.set_ready(seat, True)
    queue.enqueue(queued("call-1"))
    with pytest.raises(DeskError, match="请先挂断或拒接当前来电"):
        queue.set_ready(seat, False)
    with pytest.raises(DeskError, match="当前没有通话"):
        queue.hold(seat, True)


async def test_the_same_agent_opening_the_desk_twice_keeps_the_newer_page() -> None:
    queue = AgentQueue()
    old, new = Seat(1, "li", "李"), Seat(1, "li", "李")
    queue.sign_in(old)
    queue.sign_in(new)
    assert queue.seats == {1: new} and old.closed
    messages = drain(old)
    assert of_type(messages, "error")[-1]["message"] == "您已在其他页面登录工作台，本页面已断开"
    assert messages[-1] is None  # the old page's socket is closed


async def test_a_caller_waits_hears_the_place_in_the_queue_and_talks_to_the_agent() -> None:
    queue = AgentQueue()
    seat = Seat(1, "li", "李")
    queue.sign_in(seat)
    other = queued("call-0")
    queue.enqueue(other)  # someone is ahead: nobody is ready yet
    said: list[str] = []
    tones: list[int] = []

    async def announce(text: str) -> None:
        said.append(text)

    async def play(frames: list[bytes]) -> None:
        tones.append(len(frames))
        await asyncio.sleep(len(frames) * 0.02 / 1000)  # a thousand times faster than real time

    async def stop() -> None:
        return None

    call = queued("call-1")
    wait = asyncio.create_task(CallerWait(queue, call, announce, play, stop, timeout_s=30, refresh_s=2).run())
    await asyncio.sleep(0.01)
    assert said[0] == prompts.QUEUE_POSITION.format(ahead=1) and tones and tones[0] > 90  # ~2 s of tone
    queue.leave(other, EndedBy.CALLER)
    await asyncio.sleep(0.01)
    assert prompts.QUEUE_NEXT in said  # refreshed: now at the head
    queue.set_ready(seat, True)
    queue.accept(seat, "call-1")
    await asyncio.sleep(0)
    queue.hang_up(seat)
    outcome = await asyncio.wait_for(wait, 5)
    assert outcome.connected and outcome.ended_by is EndedBy.AGENT and outcome.agent == "li"


async def test_nobody_accepting_in_time_ends_the_wait_with_an_apology() -> None:
    queue = AgentQueue()
    queue.sign_in(Seat(1, "li", "李"))  # signed in, but away

    async def quiet(*_args) -> None:
        await asyncio.sleep(0.001)

    call = queued("call-1")
    outcome = await CallerWait(queue, call, quiet, quiet, quiet, timeout_s=0.05, refresh_s=1).run()
    assert not outcome.connected and outcome.ended_by is EndedBy.TIMEOUT and outcome.apology == prompts.QUEUE_TIMEOUT
    assert queue.waiting == [] and queue.counters["timed_out"] == 1


async def test_a_desk_that_drops_mid_call_leaves_the_caller_an_apology_not_silence() -> None:
    queue = AgentQueue()
    seat = Seat(1, "li", "李")
    queue.sign_in(seat)
    queue.set_ready(seat, True)

    async def quiet(*_args) -> None:
        await asyncio.sleep(0.001)

    call = queued("call-1")
    wait = asyncio.create_task(CallerWait(queue, call, quiet, quiet, quiet, timeout_s=5, refresh_s=1).run())
    await asyncio.sleep(0.01)
    queue.accept(seat, "call-1")
    queue.sign_out(seat)  # the browser tab closed
    outcome = await asyncio.wait_for(wait, 5)
    assert not outcome.connected and outcome.ended_by is EndedBy.AGENT_LOST and outcome.apology == prompts.AGENT_LOST


async def test_a_caller_hanging_up_while_waiting_leaves_nothing_behind() -> None:
    queue = AgentQueue()

    async def quiet(*_args) -> None:
        await asyncio.sleep(0.001)

    call = queued("call-1")
    wait = asyncio.create_task(CallerWait(queue, call, quiet, quiet, quiet, timeout_s=5, refresh_s=1).run())
    await asyncio.sleep(0.01)
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
    assert queue.waiting == [] and call.ended_by is EndedBy.CALLER


def test_the_comfort_tone_is_soft_short_and_regular() -> None:
    frames = comfort_tone(8)
    assert len(frames) == 400 and all(len(frame) == 320 for frame in frames)
    pcm = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64) / 32767
    on = np.abs(pcm) > 0.001
    assert 0.05 < np.abs(pcm).max() <= 0.08 + 1e-3
    assert 0.08 < on.mean() < 0.12  # 0.4 s in every 4 s
    assert queue_announcement(1) == prompts.QUEUE_NEXT and "3位" in queue_announcement(4)


def test_the_context_card_reads_the_conversation_in_order() -> None:
    context = {"question": "失业金怎么领", "transcript": ["失业金怎么领"], "caller_number": "138****0000",
               "answers": [{"question": "失业金怎么领", "spoken": "请问您问的是失业保险金申领，还是…", "action": "clarify",
                            "item_ids": ["unemployment-benefit"], "confidence": 0.4}],
               "item_ids": ["unemployment-benefit"], "confidence": 0.4,
               "sms_sent": [{"id": 3, "kind": "guide", "item_id": "unemployment-benefit", "state": "submitted",
                             "to": "138****0000"}]}
    request = HandoffRequest("call-1", "13800000000", "caller asked for a human", kind=HandoffTrigger.ASKED_FOR_HUMAN)
    card = context_card(context, request, {"unemployment-benefit": "失业保险金申领"}.get)
    assert card["trigger_label"] == "来电人要求转人工" and card["caller"] == "138****0000"
    assert card["transcript"] == [{"who": "caller", "text": "失业金怎么领"},
                                  {"who": "assistant", "text": "请问您问的是失业保险金申领，还是…"}]
    assert card["items"] == [{"id": "unemployment-benefit", "title": "失业保险金申领"}]
    assert card["sms"] == [{"item_id": "unemployment-benefit", "title": "失业保险金申领", "state": "submitted",
                            "to": "138****0000"}]
    assert card["answer"] == "请问您问的是失业保险金申领，还是…" and card["confidence"] == 0.4


async def test_the_queue_status_counts_agents_by_state_and_the_longest_wait() -> None:
    clock = Clock()
    queue = AgentQueue(clock=clock)
    li, wang = Seat(1, "li", "李"), Seat(2, "wang", "王")
    queue.sign_in(li)
    queue.sign_in(wang)
    queue.set_ready(li, True)
    queue.enqueue(queued("call-1"))  # offered to li
    clock.now += 4
    queue.enqueue(queued("call-2"))  # nobody else is ready: waits
    clock.now += 3
    status = queue.status()
    assert status["agents_signed_in"] == 2
    assert status["agents"] == {"away": 1, "ready": 0, "offered": 1, "talking": 0, "held": 0}
    assert status["calls_waiting"] == 2 and status["longest_wait_s"] == 7.0
    assert status["counters"]["queued"] == 2
    queue.accept(li, "call-1")
    assert queue.status()["agents"]["talking"] == 1 and queue.status()["calls_waiting"] == 1
