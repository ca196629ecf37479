"""The automatic call distributor inside the hotline (the embedded default for in-hours handoffs).

A caller handed to people waits in `AgentQueue`; agents sit at the desk (`/desk`, one websocket each = one `Seat`).
The longest-waiting call is offered to the ready agent who has been ready longest; that agent reads the context card
and accepts (or the offer moves on after `offer_timeout_s` and the agent is set away). Once accepted, the hotline
bridges the audio: the caller's line audio goes to the agent's websocket, the agent's microphone to the caller.

The queue lives in one worker's memory: agents and callers meet only when both are on the same worker. With several
workers behind a dispatcher, hand calls to the bureau's PBX instead (`handoff_mode=pbx`, docs/handoff.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from telephony.calls import prompts
from telephony.errors import TelephonyError
from telephony.handoff.base import TRIGGER_LABELS, HandoffRequest

log = logging.getLogger(__name__)

OFFER_TIMEOUT_S = 20.0  # an offered call rings this long at one agent before it moves on
POSITION_REFRESH_S = 30.0  # the caller hears their place in the queue this often
AUDIO_BACKLOG_FRAMES = 50  # caller audio waiting for a slow desk beyond this (1 s) is dropped, oldest first
TONE_HZ = 425.0  # the comfort tone: China's dial-tone frequency, short and soft, every 4 s
TONE_ON_S = 0.4
TONE_PERIOD_S = 4.0
TONE_LEVEL = 0.08
RATE_HZ = 8000
FRAME_BYTES = 320  # 20 ms at 8 kHz, 16-bit


class DeskError(TelephonyError):
    """An agent's request the queue cannot carry out; the message is shown on the desk as it is."""


class SeatState(StrEnum):
    AWAY = "away"  # signed in, not taking calls (小休, after-call work)
    READY = "ready"
    OFFERED = "offered"  # a call rings at this seat
    TALKING = "talking"
    HELD = "held"


class CallState(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"
    CONNECTED = "connected"
    HELD = "held"
    ENDED = "ended"


class EndedBy(StrEnum):
    CALLER = "caller"  # hung up (waiting or talking)
    AGENT = "agent"  # the agent hung up after the conversation
    AGENT_LOST = "agent_lost"  # the agent's desk dropped mid-call
    TIMEOUT = "timeout"  # nobody accepted within the queue timeout


class Seat:
    """One agent at the desk. Messages for the desk (dicts as JSON, bytes as audio) wait in `outbox`, which the
    desk's websocket sends in order."""

    def __init__(self, user_id: int, username: str, display_name: str) -> None:
        self.user_id = user_id
        self.username = username
        self.display_name = display_name
        self.state = SeatState.AWAY
        self.ready_since = 0.0
        self.call: QueuedCall | None = None
        self.outbox: asyncio.Queue[dict[str, Any] | bytes | None] = asyncio.Queue()
        self.closed = False
        self._offer_timer: asyncio.TimerHandle | None = None

    def post(self, message: dict[str, Any] | bytes) -> None:
        if self.closed:
            return
        if isinstance(message, bytes) and self.outbox.qsize() > AUDIO_BACKLOG_FRAMES:
            return  # a desk that cannot keep up loses audio, never the control messages
        self.outbox.put_nowait(message)

    def _state(self, state: SeatState) -> None:
        self.state = state
        self.post({"type": "state", "state": state.value})


@dataclass(eq=False)
class QueuedCall:
    """A caller waiting for (or talking to) an agent."""

    call_id: str
    card: dict[str, Any]  # the context card, JSON-ready, without queue position and waiting time
    send_audio: Callable[[bytes], Awaitable[None]]  # to the caller's line
    enqueued_at: float = 0.0
    seq: int = 0
    state: CallState = CallState.WAITING
    seat: Seat | None = None
    ended_by: EndedBy | None = None
    agent: str | None = None  # the username of the agent who took it
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    declined: set[int] = field(default_factory=set)  # seats that let this call ring out

    def caller_audio(self, pcm16: bytes) -> None:
        """The caller's audio from the line: to the agent while they talk (not while held)."""
        if self.state is CallState.CONNECTED and self.seat is not None:
            self.seat.post(pcm16)


class AgentQueue:
    def __init__(self, offer_timeout_s: float = OFFER_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.offer_timeout_s = offer_timeout_s
        self.clock = clock
        self.seats: dict[int, Seat] = {}
        self.waiting: list[QueuedCall] = []  # waiting and offered calls, oldest first
        self._seq = itertools.count(1)
        self.counters = {"queued": 0, "connected": 0, "timed_out": 0, "abandoned": 0, "offers_unanswered": 0}

    # -- status ------------------------------------------------------------------------------------

    def signed_in(self) -> int:
        return len(self.seats)

    def status(self) -> dict[str, Any]:
        """This worker's queue for /readyz: agents by state, calls waiting, and the counters since start."""
        agents = {state.value: 0 for state in SeatState}
        for seat in self.seats.values():
            agents[seat.state.value] += 1
        oldest = min((call.enqueued_at for call in self.waiting), default=None)
        return {"agents_signed_in": len(self.seats), "agents": agents, "calls_waiting": len(self.waiting),
                "longest_wait_s": round(self.clock() - oldest, 1) if oldest is not None else 0.0,
                "counters": dict(self.counters)}

    def position(self, call: QueuedCall) -> int:
        """1 for the call at the head; 0 once it has left the queue."""
        for index, waiting in enumerate(self.waiting, 1):
            if waiting is call:
                return index
        return 0

    def card(self, call: QueuedCall) -> dict[str, Any]:
        return {**call.card, "call_id": call.call_id, "position": self.position(call),
                "waited_s": round(self.clock() - call.enqueued_at)}

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.card(call) for call in self.waiting]

    # -- agents ------------------------------------------------------------------------------------

    def sign_in(self, seat: Seat) -> None:
        previous = self.seats.get(seat.user_id)
        if previous is not None:  # the same agent opened the desk again: the newer page wins
            previous.post({"type": "error", "message": "您已在其他页面登录工作台，本页面已断开"})
            self.sign_out(previous)
        self.seats[seat.user_id] = seat
        seat.post({"type": "hello", "agent": {"username": seat.username, "display_name": seat.display_name},
                   "state": seat.state.value})
        seat.post({"type": "queue", "calls": self.snapshot()})
        log.info("desk: %s signed in (%d agents)", seat.username, len(self.seats))

    def sign_out(self, seat: Seat) -> None:
        if self.seats.get(seat.user_id) is seat:
            del self.seats[seat.user_id]
        self._cancel_offer(seat)
        call = seat.call
        if call is not None:
            if call.state is CallState.OFFERED:
                self._back_to_queue(call)
            elif call.state in (CallState.CONNECTED, CallState.HELD):
                self._end(call, EndedBy.AGENT_LOST)
        seat.closed = True
        seat.outbox.put_nowait(None)
        log.info("desk: %s signed out (%d agents)", seat.username, len(self.seats))
        self._dispatch()

    def set_ready(self, seat: Seat, ready: bool) -> None:
        if seat.state in (SeatState.TALKING, SeatState.HELD, SeatState.OFFERED):
            if ready:
                raise DeskError("通话或振铃中，不能切换状态")
            raise DeskError("请先挂断或拒接当前来电，再切换为小休")
        if ready and seat.state is not SeatState.READY:
            seat.ready_since = self.clock()
            seat._state(SeatState.READY)
            self._dispatch()
        elif not ready and seat.state is not SeatState.AWAY:
            seat._state(SeatState.AWAY)

    def accept(self, seat: Seat, call_id: str) -> QueuedCall:
        call = seat.call
        if call is None or call.call_id != call_id or call.state is not CallState.OFFERED:
            raise DeskError("该来电已被其他坐席接听或来电人已挂断")
        self._cancel_offer(seat)
        self.waiting.remove(call)
        call.state = CallState.CONNECTED
        call.agent = seat.username
        call.connected.set()
        seat._state(SeatState.TALKING)
        seat.post({"type": "connected", "call": self.card(call)})
        self.counters["connected"] += 1
        log.info("call %s: connected to agent %s after %.0f s", call.call_id, seat.username,
                 self.clock() - call.enqueued_at)
        self._broadcast()
        return call

    def hold(self, seat: Seat, held: bool) -> None:
        call = seat.call
        if call is None or call.state not in (CallState.CONNECTED, CallState.HELD):
            raise DeskError("当前没有通话")
        call.state = CallState.HELD if held else CallState.CONNECTED
        seat._state(SeatState.HELD if held else SeatState.TALKING)

    def hang_up(self, seat: Seat) -> None:
        call = seat.call
        if call is None or call.state not in (CallState.CONNECTED, CallState.HELD):
            raise DeskError("当前没有通话")
        self._end(call, EndedBy.AGENT)

    async def agent_audio(self, seat: Seat, pcm16: bytes) -> None:
        """The agent's microphone: to the caller while talking; dropped while held or between calls."""
        call = seat.call
        if call is not None and call.state is CallState.CONNECTED and seat.state is SeatState.TALKING:
            await call.send_audio(pcm16)

    # -- callers -----------------------------------------------------------------------------------

    def enqueue(self, call: QueuedCall) -> int:
        call.enqueued_at = self.clock()
        call.seq = next(self._seq)
        self.waiting.append(call)
        self.counters["queued"] += 1
        self._dispatch()
        self._broadcast()
        return self.position(call)

    def leave(self, call: QueuedCall, by: EndedBy) -> None:
        """The caller's side is done with the queue (hung up, timed out): nothing of it stays at any seat."""
        if call.state is CallState.ENDED:
            return
        if call in self.waiting:
            self.counters["timed_out" if by is EndedBy.TIMEOUT else "abandoned"] += 1
        self._end(call, by)

    # -- inside ------------------------------------------------------------------------------------

    def _end(self, call: QueuedCall, by: EndedBy) -> None:
        previous = call.state
        call.state = CallState.ENDED
        call.ended_by = call.ended_by or by
        if call in self.waiting:
            self.waiting.remove(call)
        seat = call.seat
        if seat is not None and seat.call is call:
            self._cancel_offer(seat)
            seat.call = None
            if previous is CallState.OFFERED:
                seat.post({"type": "offer_withdrawn", "call_id": call.call_id,
                           "reason": "来电人已挂断" if by is EndedBy.CALLER else "来电已转为回访登记"})
                seat._state(SeatState.READY)
            else:
                seat.post({"type": "ended", "call_id": call.call_id,
                           "by": "caller" if by is EndedBy.CALLER else "agent"})
                if not seat.closed:
                    seat._state(SeatState.AWAY)  # after-call work: notes first, then 就绪 again
        call.ended.set()
        call.connected.set()  # wakes a caller still waiting for an agent
        self._dispatch()
        self._broadcast()

    def _back_to_queue(self, call: QueuedCall) -> None:
        seat = call.seat
        call.state = CallState.WAITING
        call.seat = None
        if seat is not None:
            call.declined.add(seat.user_id)
            seat.call = None

    def _dispatch(self) -> None:
        """Offer each waiting call, oldest first, to the ready agent who has been ready longest."""
        for call in self.waiting:
            if call.state is not CallState.WAITING:
                continue
            ready = [seat for seat in self.seats.values() if seat.state is SeatState.READY and seat.call is None]
            if not ready:
                return
            fresh = [seat for seat in ready if seat.user_id not in call.declined] or ready
            seat = min(fresh, key=lambda candidate: candidate.ready_since)
            call.state = CallState.OFFERED
            call.seat = seat
            seat.call = call
            seat._state(SeatState.OFFERED)
            seat.post({"type": "offer", "call": self.card(call), "timeout_s": self.offer_timeout_s})
            with contextlib.suppress(RuntimeError):
                seat._offer_timer = asyncio.get_running_loop().call_later(self.offer_timeout_s, self._offer_expired,
                                                                          seat, call)

    def _offer_expired(self, seat: Seat, call: QueuedCall) -> None:
        if seat.call is not call or call.state is not CallState.OFFERED:
            return
        seat._offer_timer = None
        self.counters["offers_unanswered"] += 1
        log.info("call %s: agent %s did not accept in %.0f s; set away", call.call_id, seat.username,
                 self.offer_timeout_s)
        self._back_to_queue(call)
        seat.post({"type": "offer_withdrawn", "call_id": call.call_id, "reason": "未及时接听，已为您切换为小休"})
        seat._state(SeatState.AWAY)
        self._dispatch()
        self._broadcast()

    @staticmethod
    def _cancel_offer(seat: Seat) -> None:
        if seat._offer_timer is not None:
            seat._offer_timer.cancel()
            seat._offer_timer = None

    def _broadcast(self) -> None:
        calls = self.snapshot()
        for seat in self.seats.values():
            seat.post({"type": "queue", "calls": calls})


# -- the caller's side ------------------------------------------------------------------------------


def comfort_tone(seconds: float) -> list[bytes]:
    """`seconds` of the comfort tone between announcements, in 20 ms frames: a soft 425 Hz beep every 4 s."""
    samples = int(seconds * RATE_HZ)
    t = np.arange(samples) / RATE_HZ
    on = (t % TONE_PERIOD_S) < TONE_ON_S
    ramp = np.minimum(1.0, np.minimum(t % TONE_PERIOD_S, TONE_ON_S - (t % TONE_PERIOD_S)) / 0.02)  # no clicks
    wave = np.where(on, np.sin(2 * np.pi * TONE_HZ * t) * TONE_LEVEL * np.clip(ramp, 0, 1), 0.0)
    pcm = (wave * 32767).astype("<i2").tobytes()
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def queue_announcement(position: int) -> str:
    if position <= 1:
        return prompts.QUEUE_NEXT
    return prompts.QUEUE_POSITION.format(ahead=position - 1)


@dataclass(frozen=True)
class AgentOutcome:
    """How a handoff to a person went: `connected` (an agent talked to the caller, or the PBX took the call), else
    `apology`, what the caller hears before the callback ticket's sentence."""

    connected: bool
    ended_by: EndedBy | None = None
    agent: str | None = None
    apology: str = ""


class CallerWait:
    """One caller's time in the queue: the hold message with their place, refreshed every `refresh_s`, the comfort
    tone between, until an agent accepts (then the conversation, until either side ends it) or `timeout_s`."""

    def __init__(self, queue: AgentQueue, call: QueuedCall, announce: Callable[[str], Awaitable[object]],
                 play: Callable[[list[bytes]], Awaitable[object]], stop_playback: Callable[[], Awaitable[None]],
                 timeout_s: float, refresh_s: float = POSITION_REFRESH_S) -> None:
        self.queue = queue
        self.call = call
        self.announce = announce
        self.play = play
        self.stop_playback = stop_playback
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s

    async def run(self) -> AgentOutcome:
        queue, call = self.queue, self.call
        queue.enqueue(call)
        hold = asyncio.create_task(self._hold(), name=f"hold-{call.call_id}")
        try:
            try:
                await asyncio.wait_for(call.connected.wait(), self.timeout_s)
            except TimeoutError:
                queue.leave(call, EndedBy.TIMEOUT)
            finally:
                hold.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hold
                await self.stop_playback()
            if call.state is CallState.ENDED and call.agent is None:
                return AgentOutcome(False, call.ended_by, apology=prompts.QUEUE_TIMEOUT)
            await call.ended.wait()
            if call.ended_by is EndedBy.AGENT_LOST:  # the desk dropped: the caller is not left in silence
                return AgentOutcome(False, call.ended_by, call.agent, apology=prompts.AGENT_LOST)
            return AgentOutcome(True, call.ended_by, call.agent)
        except asyncio.CancelledError:  # the caller hung up
            queue.leave(call, EndedBy.CALLER)
            raise

    async def _hold(self) -> None:
        while self.call.state in (CallState.WAITING, CallState.OFFERED):
            started = asyncio.get_running_loop().time()
            await self.announce(queue_announcement(self.queue.position(self.call)))
            left = self.refresh_s - (asyncio.get_running_loop().time() - started)
            if left > 0:
                await self.play(comfort_tone(left))


def context_card(context: dict[str, Any], request: HandoffRequest, titles: Callable[[str], str | None]
                 ) -> dict[str, Any]:
    """The desk's context card from a ticket context (`telephony.handoff.callback.ticket_context`)."""
    transcript: list[dict[str, str]] = []
    for turn in context.get("answers", []):
        if turn.get("question"):
            transcript.append({"who": "caller", "text": turn["question"]})
        if turn.get("spoken"):
            transcript.append({"who": "assistant", "text": turn["spoken"]})
    if not transcript:
        transcript = [{"who": "caller", "text": text} for text in context.get("transcript", [])]
    answer = request.last_answer
    spoken = answer.spoken if answer is not None else next(
        (line["text"] for line in reversed(transcript) if line["who"] == "assistant"), "")
    items = [{"id": item_id, "title": titles(item_id) or item_id} for item_id in context.get("item_ids", [])]
    caller = context.get("caller_number") or ""
    if not any(character.isdigit() for character in caller):  # the softphone's "softphone", a withheld number
        caller = "无来电号码"
    return {
        "caller": caller,
        "trigger": request.kind.value,
        "trigger_label": TRIGGER_LABELS[request.kind],
        "reason": request.trigger,
        "question": context.get("question", ""),
        "transcript": transcript,
        "answer": spoken,
        "items": items,
        "confidence": context.get("confidence"),
        "sms": [{"item_id": sms.get("item_id"), "title": titles(sms["item_id"]) if sms.get("item_id") else "回访登记号",
                 "state": sms.get("state"), "to": sms.get("to")} for sms in context.get("sms_sent", [])],
    }
