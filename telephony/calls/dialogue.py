"""The phone dialogue: greeting, listen, answer or clarify, "还有其他问题吗", goodbye, as an explicit state machine.

It speaks through a `SpeechPort` (the voice session), asks `Answers`, hands off through a `HandoffTarget` and
reports each turn's events to its observers; it stores nothing itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from rag.base import Action, Answer, ClarifyKind, ConversationContext, ConversationTurn, HandoffCause
from rag.errors import InvalidQuestionError
from telephony.calls import prompts
from telephony.calls.keypad import KeypadMenu
from telephony.calls.sms_offer import ABSORBED, FlowReply, SmsOfferFlow
from telephony.calls.turn_log import (
    AnswerReady,
    CallerTurnEnded,
    QuestionAsked,
    ReplyAudioStarted,
    ReplyEnded,
    TurnEvent,
    TurnObserver,
    TurnSettled,
)
from telephony.errors import TelephonyError
from telephony.handoff.acd import AgentOutcome, EndedBy
from telephony.handoff.base import HandoffRequest, HandoffTarget, HandoffTrigger
from voice.base import TtsEngine, VoiceError
from voice.session import (
    CallerSpeechStarted,
    DtmfPressed,
    PartialTranscript,
    PlaybackResult,
    ReplyKind,
    SpeechEvent,
    TurnTimings,
    UtteranceEnded,
)

log = logging.getLogger(__name__)

GOODBYE_INTENT = re.compile(r"^(没有了?|没了|没得了?|不用了?|没事了?|就这些|就这样|再见|拜拜|好的?谢谢|谢谢你?|可以了|行了|好了)")
# Text an ASR gives for noise: nothing, or one syllable that is not an answer word.
SHORT_ANSWER_WORDS = re.compile(r"^(是|对|嗯|好|不|没|要|行)$")
# Two misunderstandings in a row go to a person: the second reply that would ask the caller to say it again (words
# with no meaning, 「都不是」 with nothing left to offer, a question the engine refuses) hands off instead. Noise with
# no words in it (empty text, one syllable) is asked again without counting: the caller may not have spoken at all.
MISUNDERSTOOD_LIMIT = 2
MISUNDERSTOOD = frozenset({ClarifyKind.REPEAT, ClarifyKind.REPHRASE})
# The second caller turn in a row with nothing recognised in it opens the keypad menu instead of asking again; a
# question recognised later is answered as usual and leaves the menu.
UNHEARD_LIMIT = 2


AgentLink = Callable[[HandoffRequest], Awaitable[AgentOutcome]]  # the call's way to a person (CallRunner builds it)


class DialogueState(StrEnum):
    GREETING = "greeting"
    LISTENING = "listening"
    RESPONDING = "responding"
    ENDING = "ending"
    ENDED = "ended"


TRANSITIONS: dict[DialogueState, frozenset[DialogueState]] = {
    DialogueState.GREETING: frozenset({DialogueState.LISTENING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.LISTENING: frozenset({DialogueState.RESPONDING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.RESPONDING: frozenset({DialogueState.LISTENING, DialogueState.ENDING, DialogueState.ENDED}),
    DialogueState.ENDING: frozenset({DialogueState.ENDED}),
    DialogueState.ENDED: frozenset(),
}


class IllegalTransition(TelephonyError):
    pass


def next_state(current: DialogueState, target: DialogueState) -> DialogueState:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"dialogue cannot go from {current.value} to {target.value}")
    return target


@dataclass(frozen=True)
class DialogueConfig:
    no_speech_timeout_ms: int
    no_speech_reprompts: int  # reprompts before a polite hang-up
    max_call_s: int
    centre_name: str


class SpeechPort(Protocol):
    """What the dialogue needs of the voice session (`voice.session.SpeechSession`)."""

    events: asyncio.Queue[SpeechEvent]

    @property
    def playing(self) -> bool: ...

    @property
    def expects_short_reply(self) -> bool: ...

    def expect_reply(self, kind: ReplyKind) -> None: ...

    async def play(self, chunks: AsyncIterator[bytes],
                   on_first_audio: Callable[[float], None] | None = None) -> PlaybackResult: ...


class AnswerSource(Protocol):
    async def ask_versioned(self, question: str,
                            context: ConversationContext | None = None) -> tuple[Answer, str]: ...


# What is said after an answer when no SMS is offered.
AfterAnswer = Callable[[Answer], Awaitable[str]]


async def ask_anything_else(_answer: Answer) -> str:
    return prompts.ANYTHING_ELSE


@dataclass(frozen=True)
class CallParty:
    """The call as the dialogue knows it."""

    call_id: str | None
    caller_number: str | None


class CallSession:
    """Runs one call over a speech session until goodbye, hang-up or the maximum length; returns why it ended."""

    def __init__(self, party: CallParty, speech: SpeechPort, tts: TtsEngine, answers: AnswerSource,
                 config: DialogueConfig, handoff: HandoffTarget, *, observers: Sequence[TurnObserver] = (),
                 after_answer: AfterAnswer = ask_anything_else, hangup: Callable[[], Awaitable[None]] | None = None,
                 sms: SmsOfferFlow | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 is_open: Callable[[], bool] | None = None, agents: AgentLink | None = None,
                 keypad: KeypadMenu | None = None, asr_unavailable: str | None = None) -> None:
        self.party = party
        self.speech = speech
        self.tts = tts
        self.answers = answers
        self.config = config
        self.handoff = handoff
        self.observers = tuple(observers)
        self.after_answer = after_answer
        self.hangup = hangup
        self.sms = sms
        self.clock = clock
        self.sleep = sleep
        self.is_open = is_open  # whether agents are on duty now (office hours); None: always
        self.agents = agents  # in hours, hands the live call to a person (the desk's queue, the PBX); None: tickets
        self.keypad = keypad  # the keypad menu (kb/keypad_menu.yaml); None: none is offered
        self.asr_unavailable = asr_unavailable  # why no speech can be recognised in this call; None: ASR works
        self.in_menu = False  # the caller is choosing with keys (the menu's replies, the SMS offer by key)
        self.state = DialogueState.GREETING
        self.end_reason: str | None = None
        self.last_spoken = ""
        self.turns = 0
        self._asked_anything_else = False
        self._started = clock()
        self._caller_mid_utterance = False
        self._conversation: list[ConversationTurn] = []
        self._heard: list[str] = []
        self._misunderstood = 0  # replies in a row that asked the caller to say it again
        self._unheard = 0  # caller turns in a row with nothing recognised in them

    def _move(self, target: DialogueState) -> None:
        self.state = next_state(self.state, target)

    def _emit(self, event: TurnEvent) -> None:
        for observer in self.observers:
            observer.on_turn_event(event)

    # -- speaking --------------------------------------------------------------------------------

    async def _audio(self, texts: tuple[str, ...]) -> AsyncIterator[bytes]:
        """The sentences' audio one after another. A sentence no engine could render at all is replaced by
        SPEECH_FAILED (prerendered), never by silence. Each synthesis is closed when playback stops reading (a
        barge-in, a hang-up): an engine's stream and process do not outlive the sentence."""
        for text in texts:
            if not text:
                continue
            spoken = False
            try:
                async with contextlib.aclosing(self.tts.synthesize(text)) as audio:
                    async for chunk in audio:
                        spoken = True
                        yield chunk
            except VoiceError as exc:
                log.error("call %s: no audio for %r: %s", self.party.call_id, text, exc)
                if not spoken and text != prompts.SPEECH_FAILED:
                    try:
                        async with contextlib.aclosing(self.tts.synthesize(prompts.SPEECH_FAILED)) as audio:
                            async for chunk in audio:
                                yield chunk
                    except VoiceError as again:
                        log.error("call %s: no audio for the apology either: %s", self.party.call_id, again)

    async def say(self, *texts: str) -> PlaybackResult:
        """Speak sentences one after another; each is synthesized (and cached) on its own. The turn's observers hear
        when its first audio went out and when it ended."""
        self.last_spoken = "".join(texts)

        def first_audio(at: float) -> None:
            self._emit(ReplyAudioStarted(at))

        result = await self.speech.play(self._audio(texts), first_audio)
        self._emit(ReplyEnded())
        return result

    async def announce(self, text: str) -> PlaybackResult:
        """Speak outside any turn (the queue's hold messages): the turn log hears nothing of it."""
        return await self.speech.play(self._audio((text,)))

    # -- the dialogue ----------------------------------------------------------------------------

    async def run(self) -> str:
        """Returns why the call ended."""
        try:
            if self.asr_unavailable is None:
                await self.say(prompts.GREETING.format(centre=self.config.centre_name))
            elif self.keypad is None:  # nothing the caller could choose: straight to a person
                await self._hand_off(None, f"ASR unavailable: {self.asr_unavailable}", HandoffTrigger.ASR_UNAVAILABLE,
                                     spoken_first=prompts.VOICE_UNAVAILABLE.format(centre=self.config.centre_name))
                return self.end_reason or "handoff"
            else:
                self.in_menu = True
                await self.say(*self.keypad.open(prompts.GREETING_KEYPAD.format(centre=self.config.centre_name)))
            self._move(DialogueState.LISTENING)
            silent_prompts = 0
            while self.state is DialogueState.LISTENING:
                remaining_s = self.config.max_call_s - (self.clock() - self._started)
                if remaining_s <= 0:
                    await self._finish(prompts.MAX_LENGTH_GOODBYE, "max_call_length")
                    break
                event = await self._next_event(min(self.config.no_speech_timeout_ms / 1000, remaining_s))
                if event is None:
                    if self.speech.playing or self._caller_mid_utterance:
                        continue
                    if self.clock() - self._started >= self.config.max_call_s:
                        continue  # handled at the top of the loop
                    silent_prompts += 1
                    if silent_prompts > self.config.no_speech_reprompts:
                        await self._finish(prompts.SILENCE_GOODBYE, "no_speech")
                        break
                    if self.in_menu and self.keypad is not None:
                        await self._respond_with(*self.keypad.prompt())
                    else:
                        await self._respond_with(prompts.SILENCE_REPROMPT)
                    continue
                if isinstance(event, CallerSpeechStarted):
                    self._caller_mid_utterance = True
                elif isinstance(event, PartialTranscript):
                    continue
                elif isinstance(event, DtmfPressed):
                    silent_prompts = 0
                    await self._on_key(event.digit)
                elif isinstance(event, UtteranceEnded):
                    self._caller_mid_utterance = False
                    silent_prompts = 0
                    await self._on_utterance(event)
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "caller_hangup"
            raise
        finally:
            if self.state is not DialogueState.ENDED:
                self.state = DialogueState.ENDED
        return self.end_reason or "caller_hangup"

    async def _next_event(self, timeout_s: float) -> SpeechEvent | None:
        """The next speech event, or None after `timeout_s` of the dialogue's own `sleep` (virtual time in tests)."""
        getter = asyncio.ensure_future(self.speech.events.get())
        timer = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not getter.done():
                getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None

    async def _respond_with(self, *texts: str) -> None:
        self._move(DialogueState.RESPONDING)
        await self.say(*texts)
        if self.state is DialogueState.RESPONDING:
            self._move(DialogueState.LISTENING)

    async def _finish(self, text: str, reason: str) -> None:
        self.end_reason = reason
        self._move(DialogueState.ENDING)
        await self.say(text)
        self._move(DialogueState.ENDED)
        if self.hangup is not None:
            await self.hangup()

    def _key_turn(self, digit: str) -> None:
        """A key press begins a turn of its own in the call record (「按键1」)."""
        now = self.clock()
        self._emit(CallerTurnEnded(UtteranceEnded(f"按键{digit}", "dtmf", TurnTimings(now, now, now, now))))

    async def _on_key(self, digit: str) -> None:
        self._unheard = 0
        if self.sms is not None and self.sms.pending:
            reply = await self.sms.on_key(digit)
            if reply is ABSORBED:
                return
            if reply is not None:
                self._key_turn(digit)
                await self._sms_reply(reply)
                return
            if self.in_menu:
                self.sms.lapse()  # a menu key ends the offer: a later 1 chooses from the menu again
        if self.in_menu and self.keypad is not None:
            await self._menu_key(digit)
            return
        if digit == "*":
            await self._respond_with(self.last_spoken or prompts.NOTHING_TO_REPEAT)
        elif digit == "0":
            await self._hand_off(None, "caller pressed 0", HandoffTrigger.KEY_0)

    async def _menu_key(self, digit: str) -> None:
        """A key in the keypad menu: an area, a service (its spoken summary, then the SMS offer by key), back, repeat,
        or 0 for a person. Each key is a turn of the call record."""
        assert self.keypad is not None
        step = self.keypad.on_key(digit)
        self._key_turn(digit)
        if step.person:
            self._emit(TurnSettled("handoff", "caller pressed 0 in the keypad menu"))
            if self.asr_unavailable is not None:
                await self._hand_off(None, f"caller pressed 0 in the keypad menu (ASR unavailable: "
                                           f"{self.asr_unavailable})", HandoffTrigger.ASR_UNAVAILABLE)
            else:
                await self._hand_off(None, "caller pressed 0 in the keypad menu", HandoffTrigger.KEY_0)
            return
        if step.service is None:
            self._emit(TurnSettled("menu", step.reason, "".join(step.texts)))
            self.speech.expect_reply(ReplyKind.QUESTION)
            await self._respond_with(*step.texts)
            return
        service = step.service
        # The same spoken summary the engine answers the item with; a follow-up question by voice goes on from it.
        answer = Answer(f"按键{digit}", Action.ANSWER, service.spoken, "", (), (service.item_id,), 1.0, step.reason)
        self._conversation.append(answer.as_turn())
        offer = self.sms.offer(answer) if self.sms is not None else None
        follow = prompts.SMS_OFFER_KEYS if offer is not None else prompts.MENU_AFTER_SERVICE
        self.speech.expect_reply(ReplyKind.SHORT if offer is not None else ReplyKind.QUESTION)
        self._emit(TurnSettled("menu", step.reason, service.spoken + follow, (service.item_id,)))
        await self._respond_with(service.spoken, follow)

    async def _on_utterance(self, event: UtteranceEnded) -> None:
        text = event.text.strip()
        self._emit(CallerTurnEnded(event))
        if not usable(text, self.speech.expects_short_reply):
            self._unheard += 1
            if self.keypad is not None and (self.in_menu or self._unheard >= UNHEARD_LIMIT):
                await self._open_menu_unheard()
                return
            self._emit(TurnSettled("repeat", "no usable speech recognised"))
            await self._respond_with(prompts.REPEAT_PLEASE)
            return
        self._unheard = 0
        self._heard.append(text)
        if self.sms is not None:
            reply = await self.sms.on_utterance(text)
            if reply is not None:
                self._misunderstood = 0
                await self._sms_reply(reply)
                return
        self.in_menu = False  # a question recognised is answered as usual, out of the menu
        if self._asked_anything_else and GOODBYE_INTENT.search(text):
            self._emit(TurnSettled("goodbye", "caller has no more questions"))
            await self._finish(prompts.GOODBYE, "caller_done")
            return
        self._move(DialogueState.RESPONDING)
        self._emit(QuestionAsked(self.clock()))
        try:
            answer, version = await self.answers.ask_versioned(text, self.context())
        except InvalidQuestionError as exc:
            self._misunderstood += 1
            if self._misunderstood >= MISUNDERSTOOD_LIMIT:
                reason = f"misunderstood twice in a row: {exc}"
                self._emit(TurnSettled("handoff", reason, prompts.MISUNDERSTOOD_HANDOFF))
                await self._hand_off(None, reason, HandoffTrigger.MISUNDERSTOOD_TWICE,
                                     spoken_first=prompts.MISUNDERSTOOD_HANDOFF)
                return
            await self.say(prompts.REPEAT_PLEASE)
            self._move(DialogueState.LISTENING)
            return
        kind = HandoffTrigger.of(answer.handoff)
        if answer.action is Action.CLARIFY and answer.clarify in MISUNDERSTOOD:
            self._misunderstood += 1
            if self._misunderstood >= MISUNDERSTOOD_LIMIT:
                answer = replace(answer, action=Action.HANDOFF, spoken=prompts.MISUNDERSTOOD_HANDOFF, clarify=None,
                                 reason=f"misunderstood twice in a row: {answer.reason}")
                kind = HandoffTrigger.MISUNDERSTOOD_TWICE
        else:
            self._misunderstood = 0
        emergency = self._emergency_prompt(answer.handoff) if answer.action is Action.HANDOFF else ""
        # The turn stores what the caller heard, the emergency numbers included.
        heard = replace(answer, spoken=answer.spoken + emergency) if emergency else answer
        self._emit(AnswerReady(heard, version, self.clock()))
        self.turns += 1
        self._conversation.append(answer.as_turn())
        self.speech.expect_reply(ReplyKind.SHORT if answer.action is Action.CLARIFY else ReplyKind.QUESTION)
        self._asked_anything_else = False
        if answer.action is Action.HANDOFF:
            await self._hand_off(answer, answer.reason, kind, spoken_first=answer.spoken, emergency=emergency)
            return
        follow = ""
        offer = self.sms.offer(answer) if self.sms is not None else None
        if offer is not None:
            follow = offer
            self.speech.expect_reply(ReplyKind.SHORT)
        elif answer.action is Action.ANSWER:
            follow = await self.after_answer(answer)
            self._asked_anything_else = True
        await self.say(answer.spoken, follow)
        if self.state is DialogueState.RESPONDING:
            self._move(DialogueState.LISTENING)

    async def _open_menu_unheard(self) -> None:
        """Nothing recognised a second time in a row (or again in the menu): 「抱歉，我没有听清。请用电话按键选择：
        …」."""
        assert self.keypad is not None
        if self.in_menu:
            texts, reason = self.keypad.prompt(prompts.MENU_UNHEARD), "nothing recognised in the keypad menu"
        else:
            texts, reason = self.keypad.open(prompts.MENU_UNHEARD), "nothing recognised twice in a row: keypad menu"
            self.in_menu = True
            if self.sms is not None:
                self.sms.lapse()  # key 1 chooses from the menu now, not the SMS offer
        self._emit(TurnSettled("menu", reason, "".join(texts)))
        self.speech.expect_reply(ReplyKind.QUESTION)
        await self._respond_with(*texts)

    async def _sms_reply(self, reply: FlowReply) -> None:
        """Say the SMS offer's reply (then 「还有其他问题吗」, or in the keypad menu how to go on, once the exchange is
        over) and log it as a turn."""
        self._emit(TurnSettled("sms", reply.reason, reply.spoken, reply.item_ids, reply.consent, reply.sms_to,
                               reply.message_id, reply.caller_text))
        self.speech.expect_reply(reply.expect)
        self._asked_anything_else = reply.done and not self.in_menu
        self._move(DialogueState.RESPONDING)
        follow = (prompts.MENU_AFTER_SERVICE if self.in_menu else prompts.ANYTHING_ELSE) if reply.done else ""
        await self.say(reply.spoken, follow)
        if self.state is DialogueState.RESPONDING:
            self._move(DialogueState.LISTENING)

    def context(self) -> ConversationContext:
        return ConversationContext.from_turns(self._conversation)

    def _agents_on_duty(self) -> bool:
        if self.is_open is None:
            return True
        try:
            return self.is_open()
        except Exception:  # a broken calendar must not cost a caller in crisis the emergency numbers
            log.exception("call %s: office hours unknown, taken as closed", self.party.call_id)
            return False

    def _emergency_prompt(self, cause: HandoffCause | None) -> str:
        """After hours, a crisis hears the emergency numbers before the ticket's closing; in hours, nothing."""
        if cause is None or not cause.crisis or self._agents_on_duty():
            return ""
        if cause is HandoffCause.SELF_HARM:
            return prompts.CRISIS_SELF_HARM_AFTER_HOURS
        return prompts.CRISIS_ACCIDENT_AFTER_HOURS

    async def _hand_off(self, answer: Answer | None, trigger: str, kind: HandoffTrigger, spoken_first: str = "",
                        emergency: str = "") -> None:
        """Say the handoff sentence (and after hours a crisis's emergency numbers) at once; the handoff is arranged
        meanwhile, then its closing is said."""
        self.end_reason = "handoff"
        if self.state is not DialogueState.ENDING:
            self._move(DialogueState.ENDING)
        request = HandoffRequest(self.party.call_id, self.party.caller_number, trigger, answer, tuple(self._heard),
                                 kind)
        log.info("call %s: handoff (%s): %s", self.party.call_id, kind.value, trigger)
        live = self.agents is not None and not emergency and self._agents_on_duty()
        arranging = None if live else asyncio.create_task(self.handoff.offer(request))
        if spoken_first or emergency:
            await self.say(spoken_first, emergency)
        apology = ""
        if self.agents is not None and live:
            result = await self.agents(request)
            if result.connected:  # a person had the caller: nothing more to say
                self.end_reason = "agent" if result.agent else "transferred"
                self._move(DialogueState.ENDED)
                if result.ended_by is EndedBy.AGENT and self.hangup is not None:
                    await self.hangup()
                return
            apology = result.apology
            arranging = asyncio.create_task(self.handoff.offer(request))
        assert arranging is not None
        outcome = await arranging
        await self.say(apology, outcome.spoken)
        self._move(DialogueState.ENDED)
        if self.hangup is not None:
            await self.hangup()


def usable(text: str, expect_short_reply: bool) -> bool:
    """Whether an ASR result is worth answering (not empty noise); short words count only as replies."""
    letters = re.sub(r"[\W_]+", "", text)
    if not letters:
        return False
    if len(letters) == 1:
        return expect_short_reply and bool(SHORT_ANSWER_WORDS.match(letters))
    return True
