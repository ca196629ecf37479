"""One call on any line: composes a `CallTransport` with the speech session, the dialogue, the recorder, the turn log
and the call record, once for every transport."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kb.keypad_menu import Menu, MenuFile, resolve_menu
from telephony.answers import Answers
from telephony.calls import prompts
from telephony.calls.base import CallerAudio, CallTransport, KeyPressed, Transferred, TransferUnavailable
from telephony.calls.dialogue import (
    AfterAnswer,
    CallParty,
    CallSession,
    DialogueConfig,
    ask_anything_else,
)
from telephony.calls.keypad import KeypadMenu
from telephony.calls.recording import CallRecorder, RecordingTransport
from telephony.calls.sms_offer import OutboxSender, SmsOfferFlow
from telephony.calls.turn_log import TurnLog
from telephony.errors import StorageError
from telephony.handoff.acd import AgentOutcome, AgentQueue, CallerWait, QueuedCall, context_card
from telephony.handoff.base import HandoffRequest, HandoffTarget
from telephony.handoff.callback import ticket_context
from telephony.settings import HandoffMode
from telephony.sms.compose import mask
from telephony.sms.service import SmsService
from telephony.store import CallStatus, Database
from telephony.store.models import new_id, utcnow
from telephony.store.turns import TurnWriter
from voice.base import AsrEngine, TtsEngine, Vad, VoiceError
from voice.noasr import NoAsrStream
from voice.session import EndpointConfig, SpeechSession
from voice.vad import DetectorConfig, SpeechDetector

log = logging.getLogger(__name__)

# At hang-up, turn writes still in flight get this long before the call record is closed without them (they are
# journaled if the database is down, so this only bounds a database that hangs).
TURN_FLUSH_LIMIT_S = 5.0
CALL_RECORD_LIMIT_S = 1.0  # the greeting waits at most this long for the database to create the call's record


@dataclass(frozen=True)
class CallConfig:
    dialogue: DialogueConfig
    detector: DetectorConfig
    endpoint: EndpointConfig
    recordings_dir: Path | None  # None: no recordings


@dataclass(frozen=True)
class PersonHandoff:
    """How an in-hours handoff reaches a person: the hotline's own queue (`agents`, the desk) or the PBX."""

    mode: HandoffMode = HandoffMode.TICKET
    agents: AgentQueue | None = None  # mode desk
    queue_timeout_s: float = 180.0
    transfer_target: str | None = None  # mode pbx


@dataclass
class VoiceEngines:
    """The engines every call shares, warmed once at start. `asr` is None when no ASR could be loaded: calls then get
    the keypad menu (or, without one, a person) instead of speech recognition."""

    new_vad: Callable[[], Vad]  # VAD state is per call; the model behind it is shared
    tts: TtsEngine
    asr: AsrEngine | None
    asr_error: str | None = None


class CallRunner:
    """Runs calls to the end; `active_calls` is how many are on the line now."""

    def __init__(self, engines: VoiceEngines, config: CallConfig, answers: Answers, database: Database,
                 writer: TurnWriter, handoff: HandoffTarget, after_answer: AfterAnswer = ask_anything_else,
                 sms: SmsService | None = None, is_open: Callable[[], bool] | None = None,
                 person: PersonHandoff | None = None, keypad_menu: MenuFile | None = None) -> None:
        self.engines = engines
        self.config = config
        self.answers = answers
        self.database = database
        self.writer = writer
        self.handoff = handoff
        self.after_answer = after_answer
        self.sms = sms  # None: no SMS is offered
        self.is_open = is_open  # whether agents are on duty now (the office-hours calendar); None: always
        self.person = person or PersonHandoff()
        self.keypad_menu = keypad_menu  # kb/keypad_menu.yaml as loaded; None: no keypad menu is offered
        self._menus: dict[str, Menu] = {}  # the menu resolved against each KB version served
        self.active_calls = 0
        self.late_records: set[asyncio.Task] = set()  # records of ended calls, ended when the database answers

    def menu(self) -> Menu | None:
        """The keypad menu over the KB served now (services of items it no longer has are left out, and logged)."""
        if self.keypad_menu is None:
            return None
        version = self.answers.kb_version
        if version not in self._menus:
            menu, problems = resolve_menu(self.keypad_menu, self.answers.kb)
            for problem in problems:
                log.error("keypad menu over KB %s: %s (left out; run hotline kb check)", version, problem)
            self._menus = {version: menu}
        menu = self._menus[version]
        return menu if menu.areas else None

    async def run(self, line: CallTransport) -> str:
        """Serve the call until the line drops or the dialogue hangs up; returns why it ended."""
        self.active_calls += 1
        try:
            return await _Call(self, line).run()
        finally:
            self.active_calls -= 1


class _Call:
    def __init__(self, runner: CallRunner, line: CallTransport) -> None:
        self.runner = runner
        self.line = line
        self.call_id: str | None = None
        self.recorder: CallRecorder | None = None
        self.speech: SpeechSession | None = None
        self.session: CallSession | None = None
        self.turn_log: TurnLog | None = None
        self.dialogue: asyncio.Task | None = None
        self.end_reason = "caller_hangup"
        self.transferred = False
        self.queued: QueuedCall | None = None  # waiting for or talking to an agent: the caller's audio goes there
        self.listening = True  # caller audio goes to the speech session (not while no ASR could hear it)
        self.ended_at: dt.datetime | None = None  # the line dropped, or the hang-up after the last paced audio
        self.planned_id = ""  # the id the call's record gets (`call_id` once the record exists in time)
        self.record: asyncio.Task | None = None  # creates the call's record
        self.record_failed = False

    async def run(self) -> str:
        try:
            await self._start()
            # Read the line until it drops or the dialogue is over, in every mode: the recorder tees the caller's
            # audio as it is read.
            async for event in self.line.events():
                if self.queued is not None and isinstance(event, CallerAudio):
                    self.queued.caller_audio(event.pcm16)
                elif self.speech is not None:
                    if isinstance(event, CallerAudio):
                        if self.listening:
                            await self.speech.push_audio(event.pcm16)
                    elif isinstance(event, KeyPressed):
                        await self.speech.push_dtmf(event.digit)
                if isinstance(event, Transferred):
                    log.info("call %s transferred to %s", self.call_id, event.target)
                    self.transferred = True
                    break
                if self.dialogue is not None and self.dialogue.done():
                    break
            self._ended()  # the line dropped (or was hung up, or the call was transferred)
        finally:
            self._ended()
            await self._close()
        return self.end_reason

    def _ended(self) -> None:
        """The call's end time, taken once, when it happened (not when the record is written after clean-up)."""
        if self.ended_at is None:
            self.ended_at = utcnow()

    async def _hang_up(self) -> None:
        """The dialogue's hang-up: its last audio was paced out and played, so the call ends now."""
        self._ended()
        await self.line.hang_up()

    async def _start(self) -> None:
        runner, info = self.runner, self.line.info
        # The call's record is created in the background under an id chosen here: a slow database must not keep the
        # greeting waiting. Within CALL_RECORD_LIMIT_S the call is recorded as usual; later, the call goes on, its
        # turns wait for the record (they are written in the background anyway) and the record is ended at hang-up.
        # SMS and a ticket of a call whose record came late are stored without the call's id.
        self.planned_id = new_id()
        recordings = runner.config.recordings_dir
        if recordings is not None:
            self.recorder = CallRecorder(recordings, self.planned_id)
            self.line = RecordingTransport(self.line, self.recorder)
        paths = (str(self.recorder.caller_path), str(self.recorder.assistant_path)) if self.recorder else None
        self.record = asyncio.create_task(asyncio.to_thread(
            runner.database.start_call, info.channel, info.caller_number, runner.answers.kb_version,
            call_id=self.planned_id, recordings=paths), name=f"call-record-{self.planned_id}")
        await asyncio.wait({self.record}, timeout=CALL_RECORD_LIMIT_S)
        if self.record.done():
            self.call_id = await self._recorded_id()
        else:
            log.error("call %s: the database did not create the call's record within %.1f s; the call goes on and "
                      "is recorded when the database answers", self.planned_id, CALL_RECORD_LIMIT_S)
        engines = runner.engines
        asr_unavailable = None
        if engines.asr is None:
            # No recogniser: the caller chooses with keys. Caller audio is recorded but not listened to (noise could
            # only cut the menu short); keys still interrupt it, and every sentence is paced out as in any call.
            asr_unavailable = engines.asr_error or "no ASR engine"
            self.listening = False
            stream = NoAsrStream()
        else:
            stream = engines.asr.open_stream(runner.answers.hotwords)
        detector = SpeechDetector(engines.new_vad(), runner.config.detector)
        self.speech = SpeechSession(detector, stream, self.line, runner.config.endpoint)
        self.speech.start()
        self.turn_log = TurnLog(runner.writer, info.channel, self.call_id,
                                record=None if self.record.done() else self._recorded_id)
        sms = None
        if runner.sms is not None:
            sender = OutboxSender(runner.sms, runner.sms.config.centre_phone)
            sms = SmsOfferFlow(sender, self.call_id, info.caller_number)
        menu = runner.menu()
        self.session = CallSession(
            CallParty(self.call_id, info.caller_number), self.speech, engines.tts, runner.answers,
            runner.config.dialogue, runner.handoff, observers=(self.turn_log,), after_answer=runner.after_answer,
            hangup=self._hang_up, sms=sms, is_open=runner.is_open,
            agents=self._to_person if runner.person.mode is not HandoffMode.TICKET else None,
            keypad=KeypadMenu(menu) if menu is not None else None, asr_unavailable=asr_unavailable)
        self.dialogue = asyncio.create_task(self.session.run(), name=f"call-{self.call_id}")

    async def _to_person(self, request: HandoffRequest) -> AgentOutcome:
        """In hours: transfer to the PBX, or wait in the desk's queue (hold message, comfort tone) and talk to the
        agent who accepts, the hotline bridging the audio. Not connected: the dialogue registers a ticket."""
        person = self.runner.person
        if person.mode is HandoffMode.PBX:
            assert person.transfer_target is not None
            try:
                await self.line.transfer(person.transfer_target)
            except TransferUnavailable as exc:
                log.warning("call %s: transfer to %s failed: %s", self.call_id, person.transfer_target, exc)
                return AgentOutcome(False, apology=prompts.TRANSFER_FAILED)
            return AgentOutcome(True)
        queue = person.agents
        if queue is None or queue.signed_in() == 0:
            return AgentOutcome(False, apology=prompts.NO_AGENT)
        assert self.session is not None and self.speech is not None
        card = await self._card(request)
        self.queued = QueuedCall(self.call_id or self.line.info.line_call_id or "call", card, self.line.send_audio)
        speech = self.speech

        async def frames(chunks: list[bytes]):
            for chunk in chunks:
                yield chunk

        try:
            wait = CallerWait(queue, self.queued, self.session.announce, lambda chunks: speech.play(frames(chunks)),
                              speech.stop_playback, person.queue_timeout_s)
            return await wait.run()
        finally:
            self.queued = None

    async def _card(self, request: HandoffRequest) -> dict:
        call = None
        if request.call_id is not None:
            try:
                call = await asyncio.to_thread(self.runner.database.get_call, request.call_id)
            except StorageError as exc:
                log.warning("call %s: context card without the stored turns: %s", self.call_id, exc)
        if call is not None:
            context = ticket_context(call, request)
        else:
            context = {"question": request.transcript[-1] if request.transcript else "",
                       "transcript": list(request.transcript), "caller_number": None}
            if request.caller_number:
                context["caller_number"] = mask(request.caller_number)
        kb = self.runner.answers.kb

        def title(item_id: str) -> str | None:
            item = kb.get(item_id)
            return item.title if item is not None else None

        return context_card(context, request, title)

    async def _close(self) -> None:
        dialogue = self.dialogue
        if dialogue is not None and not dialogue.done():
            dialogue.cancel()
            with contextlib.suppress(asyncio.CancelledError, VoiceError):
                await dialogue
        if self.turn_log is not None:
            self.turn_log.close()  # a turn answered but cut off before its reply was heard is still stored
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.turn_log.flush(), TURN_FLUSH_LIMIT_S)
        if self.transferred:
            self.end_reason = "transferred"
        elif self.session is not None and self.session.end_reason:
            self.end_reason = self.session.end_reason
        elif dialogue is not None and dialogue.done() and not dialogue.cancelled() and dialogue.exception():
            log.error("call %s: dialogue failed: %r", self.call_id, dialogue.exception())
            self.end_reason = "error"
        if self.speech is not None:
            await self.speech.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.record is not None and not self.record.done():
            await asyncio.wait({self.record}, timeout=TURN_FLUSH_LIMIT_S)
            if not self.record.done():  # the database still does not answer: the record is ended when it does
                end = asyncio.create_task(self._end_record(), name=f"call-record-end-{self.planned_id}")
                self.runner.late_records.add(end)
                end.add_done_callback(self.runner.late_records.discard)
                return
        await self._end_record()

    async def _recorded_id(self) -> str | None:
        """The call's id once its record exists; None when it could not be created (the call goes on unrecorded:
        its turns start a record of their own)."""
        assert self.record is not None
        try:
            await asyncio.shield(self.record)
        except StorageError as exc:
            if not self.record_failed:
                self.record_failed = True
                log.error("call %s: record not created, the call goes on unrecorded: %s", self.planned_id, exc)
            return None
        return self.planned_id

    async def _end_record(self) -> None:
        call_id = self.call_id or (await self._recorded_id() if self.record is not None else None)
        if call_id is None:
            return
        status = CallStatus.FAILED if self.end_reason == "error" else CallStatus.ENDED
        try:
            await asyncio.to_thread(self.runner.database.end_call, call_id, self.end_reason, status, self.ended_at)
        except StorageError as exc:
            log.error("call %s: end not stored: %s", call_id, exc)
