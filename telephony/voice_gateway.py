"""Phone calls over the Twilio-compatible Media Streams websocket: authentication, engines shared by all calls,
and the per-call wiring of transport, speech session, dialogue, recordings and the call record."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field

from fastapi import WebSocket, WebSocketDisconnect

from kb.loader import KnowledgeBase
from rag import phrases
from telephony import prompts
from telephony.call import CallSession, DialogueConfig
from telephony.errors import StorageError
from telephony.media_streams import (
    Dtmf,
    Media,
    MediaStreamProtocolError,
    Start,
    Stop,
    clear_message,
    media_message,
    parse_message,
    signature_valid,
)
from telephony.recording import CallRecorder
from telephony.service import HotlineService
from telephony.settings import AsrChoice, Settings, TtsChoice
from telephony.store import CallChannel, CallStatus
from voice.audio import ulaw_decode, ulaw_encode
from voice.base import AsrEngine, AsrUnavailable, TtsEngine, VoiceError
from voice.funasr import FunAsrEngine, FunAsrServerEngine
from voice.session import EndpointConfig, SpeechSession
from voice.tts import EdgeTtsEngine, EspeakTtsEngine, ResilientTts, TtsCache, clauses
from voice.vad import DetectorConfig, SileroModel, SileroVad, SpeechDetector

log = logging.getLogger(__name__)

SOFTPHONE_TOKEN_TTL_S = 600
WEBSOCKET_POLICY_VIOLATION = 1008


def fixed_prompts(settings: Settings) -> list[str]:
    return [
        prompts.GREETING.format(centre=settings.centre_name), prompts.ANYTHING_ELSE, prompts.REPEAT_PLEASE,
        prompts.SILENCE_REPROMPT, prompts.SILENCE_GOODBYE, prompts.GOODBYE, prompts.MAX_LENGTH_GOODBYE,
        prompts.NOTHING_TO_REPEAT, prompts.HANDOFF_REGISTERED, prompts.VOICE_UNAVAILABLE,
        phrases.HANDOFF_REQUESTED, phrases.NOT_SURE, phrases.OUT_OF_SCOPE, phrases.EMPTY_QUESTION, phrases.REPHRASE,
    ]


def build_tts(settings: Settings) -> ResilientTts:
    cache = TtsCache(settings.data_dir / "tts-cache")
    espeak = EspeakTtsEngine()
    if settings.tts_engine is TtsChoice.ESPEAK:
        return ResilientTts(espeak, espeak, cache, settings.tts_first_audio_deadline_ms)
    edge = EdgeTtsEngine(settings.tts_voice, settings.tts_rate, endpoint_url=settings.tts_edge_url)
    return ResilientTts(edge, espeak, cache, settings.tts_first_audio_deadline_ms)


def build_asr(settings: Settings) -> AsrEngine:
    if settings.asr_engine is AsrChoice.FUNASR_SERVER:
        return FunAsrServerEngine(settings.asr_server_url or "")
    return FunAsrEngine(settings.asr_model, punctuation_model=settings.asr_punctuation_model)


@dataclass
class VoiceStack:
    """Engines every call shares, warmed once at start."""

    settings: Settings
    service: HotlineService
    vad_model: SileroModel
    tts: TtsEngine
    asr: AsrEngine | None = None
    asr_error: str | None = None
    media_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    active_calls: int = 0
    bad_messages: int = 0
    prerendered: bool = False

    @classmethod
    async def start(cls, settings: Settings, service: HotlineService, asr: AsrEngine | None = None,
                    tts: TtsEngine | None = None) -> VoiceStack:
        stack = cls(settings, service, SileroModel(), tts or build_tts(settings))
        if settings.media_stream_token is not None:
            stack.media_token = settings.media_stream_token.get_secret_value()
        engine = asr or build_asr(settings)
        try:
            await engine.warm_up()
            stack.asr = engine
        except AsrUnavailable as exc:
            stack.asr_error = str(exc)
            log.error("voice: ASR unavailable, calls get an apology and a callback ticket: %s", exc)
        return stack

    async def prerender(self) -> None:
        """Fill the TTS cache with the fixed prompts and every item's spoken summary (runs in the background)."""
        if not isinstance(self.tts, ResilientTts):
            self.prerendered = True
            return
        texts = prerender_texts(self.settings, self.service.kb)
        try:
            probe = await self.tts.prerender(texts[:1])
            if probe.failed:
                # Offline or the service is down: do not log hundreds of failures; calls use the fallback.
                log.warning("TTS prerender skipped: the primary engine could not render a test sentence; replies "
                            "are rendered when needed (fallback after %s ms)", self.settings.tts_first_audio_deadline_ms)
                return
            report = await self.tts.prerender(texts)
        except (VoiceError, OSError) as exc:
            log.error("TTS prerender stopped, replies are rendered when first needed: %s", exc)
            return
        finally:
            self.prerendered = True  # done trying: readiness must not wait on a cache that will not fill
        log.info("TTS prerender: %s rendered, %s already cached, %s failed", report.rendered, report.cached,
                 report.failed)

    def readiness(self) -> dict[str, object]:
        return {"asr": "ready" if self.asr is not None else f"unavailable: {self.asr_error}",
                "tts_prerendered": self.prerendered, "active_calls": self.active_calls,
                "bad_messages": self.bad_messages}

    # -- authentication ------------------------------------------------------------------------

    def softphone_token(self, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SOFTPHONE_TOKEN_TTL_S)
        mac = hmac.new(self.media_token.encode(), f"softphone.{expiry}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"sp.{expiry}.{mac}"

    def authorized(self, websocket: WebSocket) -> bool:
        token = websocket.query_params.get("token", "")
        if token and hmac.compare_digest(token.encode(), self.media_token.encode()):
            return True
        if token.startswith("sp."):
            parts = token.split(".")
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) >= time.time():
                expected = hmac.new(self.media_token.encode(), f"softphone.{parts[1]}".encode(),
                                    hashlib.sha256).hexdigest()[:32]
                return hmac.compare_digest(parts[2].encode(), expected.encode())
        signature = websocket.headers.get("x-twilio-signature")
        if signature and self.settings.twilio_auth_token is not None:
            secret = self.settings.twilio_auth_token.get_secret_value()
            url = str(websocket.url)
            candidates = {url, url.replace("ws://", "wss://", 1), url.replace("ws://", "https://", 1)}
            return any(signature_valid(secret, candidate, signature) for candidate in candidates)
        return False


class MediaStreamSink:
    """The assistant's audio out over the websocket as μ-law media messages; `clear` for barge-in."""

    def __init__(self, websocket: WebSocket, stream_sid: str) -> None:
        self.websocket = websocket
        self.stream_sid = stream_sid
        self.closed = False

    async def send_audio(self, pcm16: bytes) -> None:
        if not self.closed:
            try:
                await self.websocket.send_text(media_message(self.stream_sid, ulaw_encode(pcm16)))
            except (WebSocketDisconnect, RuntimeError):
                self.closed = True

    async def clear(self) -> None:
        if not self.closed:
            try:
                await self.websocket.send_text(clear_message(self.stream_sid))
            except (WebSocketDisconnect, RuntimeError):
                self.closed = True


class MediaStreamCall:
    """One websocket connection: reads events until stop or disconnect, then closes the call record."""

    def __init__(self, stack: VoiceStack, websocket: WebSocket, channel: CallChannel) -> None:
        self.stack = stack
        self.websocket = websocket
        self.channel = channel
        self.call_id: str | None = None
        self.speech: SpeechSession | None = None
        self.recorder: CallRecorder | None = None
        self.dialogue: asyncio.Task | None = None
        self.session: CallSession | None = None
        self.end_reason = "caller_hangup"

    async def run(self) -> None:
        if not self.stack.authorized(self.websocket):
            log.warning("media stream refused: missing or wrong token/signature from %s", self.websocket.client)
            await self.websocket.close(code=WEBSOCKET_POLICY_VIOLATION)
            return
        await self.websocket.accept()
        self.stack.active_calls += 1
        try:
            await self._receive()
        finally:
            self.stack.active_calls -= 1
            await self._close()

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
            try:
                event = parse_message(raw)
            except MediaStreamProtocolError as exc:
                self.stack.bad_messages += 1
                log.warning("call %s: bad media-stream message ignored: %s", self.call_id, exc)
                continue
            if isinstance(event, Start):
                await self._start(event)
            elif isinstance(event, Media):
                if self.speech is None:
                    log.warning("media before start ignored")
                    continue
                pcm = ulaw_decode(event.payload)
                if self.recorder is not None:
                    self.recorder.caller(pcm)
                await self.speech.push_audio(pcm)
            elif isinstance(event, Dtmf) and self.speech is not None:
                await self.speech.push_dtmf(event.digit)
            elif isinstance(event, Stop):
                return
            if self.dialogue is not None and self.dialogue.done():
                return

    async def _start(self, start: Start) -> None:
        if self.call_id is not None:
            log.warning("call %s: second start event ignored", self.call_id)
            return
        stack, settings = self.stack, self.stack.settings
        caller = start.custom_parameters.get("from") or start.custom_parameters.get("caller") or None
        try:
            call = await asyncio.to_thread(stack.service.database.start_call, self.channel, caller,
                                           stack.service.kb_version)
            self.call_id = call.id
        except StorageError as exc:
            log.error("call record not created, the call goes on unrecorded: %s", exc)
            self.call_id = None
        sink = MediaStreamSink(self.websocket, start.stream_sid)
        if settings.recordings and self.call_id is not None:
            self.recorder = CallRecorder(settings.data_dir / "recordings", self.call_id)
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(stack.service.database.set_recordings, self.call_id,
                                        str(self.recorder.caller_path), str(self.recorder.assistant_path))
        detector = SpeechDetector(SileroVad(stack.vad_model), DetectorConfig(
            threshold=settings.vad_threshold, min_speech_ms=settings.barge_in_min_speech_ms,
            min_silence_ms=min(settings.complete_question_silence_ms, settings.short_reply_silence_ms)))
        endpoint = EndpointConfig(
            end_of_turn_silence_ms=settings.end_of_turn_silence_ms,
            complete_question_silence_ms=settings.complete_question_silence_ms,
            short_reply_silence_ms=settings.short_reply_silence_ms, max_utterance_ms=settings.max_utterance_ms,
            speculative_final=settings.speculative_final)
        if stack.asr is None:
            self.dialogue = asyncio.create_task(self._apologise(sink))
            return
        lexicon = stack.service.stack.retriever.text.lexicon
        hotwords = lexicon.hotwords
        self.speech = SpeechSession(detector, stack.asr.open_stream(hotwords), sink, endpoint)
        self.speech.start()
        self.session = CallSession(
            self.call_id or "", self.channel, self.speech, stack.tts, stack.service,
            DialogueConfig(settings.no_speech_timeout_ms, settings.no_speech_reprompts, settings.max_call_s,
                           settings.centre_name),
            recorder=self.recorder, caller_number=caller, hangup=self._hang_up)
        self.dialogue = asyncio.create_task(self.session.run(), name=f"call-{self.call_id}")

    async def _apologise(self, sink: MediaStreamSink) -> None:
        """No ASR: say so, leave a callback ticket, hang up. Never dead air."""
        self.end_reason = "asr_unavailable"
        async for chunk in self.stack.tts.synthesize(prompts.VOICE_UNAVAILABLE):
            if self.recorder is not None:
                self.recorder.assistant(chunk)
            await sink.send_audio(chunk)
        if self.call_id is not None:
            with contextlib.suppress(StorageError):
                await asyncio.to_thread(self.stack.service.database.open_handoff_ticket, self.call_id,
                                        f"ASR unavailable: {self.stack.asr_error}")
        await self._hang_up()

    async def _hang_up(self) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.websocket.close()

    async def _close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.flush(), 5)
        if self.dialogue is not None and not self.dialogue.done():
            self.dialogue.cancel()
            with contextlib.suppress(asyncio.CancelledError, VoiceError):
                await self.dialogue
        if self.session is not None and self.session.end_reason:
            self.end_reason = self.session.end_reason
        elif self.dialogue is not None and self.dialogue.done() and not self.dialogue.cancelled():
            if self.dialogue.exception() is not None:
                log.error("call %s: dialogue failed: %r", self.call_id, self.dialogue.exception())
                self.end_reason = "error"
        if self.speech is not None:
            await self.speech.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.call_id is not None:
            status = CallStatus.FAILED if self.end_reason == "error" else CallStatus.ENDED
            try:
                await asyncio.to_thread(self.stack.service.database.end_call, self.call_id, self.end_reason, status)
            except StorageError as exc:
                log.error("call %s: end not stored: %s", self.call_id, exc)


def prerender_texts(settings: Settings, kb: KnowledgeBase) -> list[str]:
    """What the TTS cache is filled with at start: the fixed prompts, every item's spoken summary, and every
    clarifying question the engine can ask.

    「请问您问的是A，还是B？」 can pair any two services that rank close, so each item's two clauses (「请问您问的是A，」
    and 「还是A？」) are cached and any pair is stitched from them (`ResilientTts`); so are the clauses of 「那您问的是C，
    还是D？…」, offered after the caller turns the first two down. Pairs of related items, the
    common case, are also rendered whole, in both orders, for the more natural reading."""
    texts = fixed_prompts(settings) + [item.spoken for item in kb.items]
    texts += [phrases.CONFIRM_ITEM.format(title=item.title) for item in kb.items]
    for item in kb.items:
        texts += clauses(phrases.CHOOSE_ITEMS.format(first=item.title, second=item.title))
        texts += clauses(phrases.CHOOSE_NEXT.format(first=item.title, second=item.title))  # after "都不是"
    for item in kb.items:
        for other in filter(None, (kb.get(related) for related in item.related)):
            texts.append(phrases.CHOOSE_ITEMS.format(first=item.title, second=other.title))
            texts.append(phrases.CHOOSE_ITEMS.format(first=other.title, second=item.title))
    return list(dict.fromkeys(texts))
