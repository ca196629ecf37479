"""The composition root: the only module that names concrete engines (database, retrieval and answer stack, ASR, TTS,
VAD, handoff target) and wires them into a `Hotline`. The web app and the CLI build everything through here."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from kb.builds import BuildStore, calibration_file
from kb.ingest import Passage
from kb.keypad_menu import KeypadMenuError, MenuFile, load_menu, resolve_menu
from kb.lexicon import DEFAULT_LEXICON_FILE, load_lexicon
from kb.loader import KnowledgeBase, load_knowledge_base
from kb.schema import ServiceItem
from kb.sms_templates import (
    DEFAULT_TEMPLATES_FILE,
    load_templates,
    template_message,
    ticket_template_message,
)
from rag.calibration import Calibration, load_calibration
from rag.embeddings import (
    LocalModelEmbedding,
    MultilingualUseEmbedding,
    NgramHashEmbedding,
    OpenAICompatibleEmbedding,
)
from rag.engine import AnswerEngine
from rag.errors import RetrievalError
from rag.extractive import AnswerPolicy, CuratedComposer
from rag.hybrid import VECTOR_CHANNELS, HybridRetriever
from rag.llm import LlmComposer, LlmConfig
from rag.text import TextProcessor
from rag.vector import VectorIndex, chroma_client
from telephony.answers import Answers, AnswerStack, TextConversations
from telephony.calls.dialogue import DialogueConfig
from telephony.calls.prerender import prerender_texts
from telephony.calls.runner import CallConfig, CallRunner, PersonHandoff, VoiceEngines
from telephony.handoff.acd import AgentQueue
from telephony.handoff.callback import CallbackTickets
from telephony.handoff.office_hours import OfficeHours, OfficeHoursError
from telephony.settings import (
    NATIONAL_HOTLINE,
    AsrChoice,
    EmbeddingBackend,
    HandoffMode,
    Settings,
    SipMode,
    SmsGatewayChoice,
    TtsChoice,
)
from telephony.sms.base import SmsGateway
from telephony.sms.dispatcher import DispatchConfig, SmsDispatcher
from telephony.sms.gateways.local import OutboxOnlyGateway
from telephony.sms.outbox import SmsLimits, SmsOutbox
from telephony.sms.service import SmsConfig, SmsService, TemplateLookup
from telephony.store import Database
from telephony.store.models import utcnow
from telephony.store.turns import TurnJournal, TurnWriter
from telephony.transports.audiosocket.server import AudioSocketLine
from telephony.transports.auth import MediaStreamAuth
from telephony.transports.base import ServedLine
from telephony.transports.sip.agent import SipLine
from telephony.transports.sip.config import SipConfig
from telephony.transports.twilio.gateway import MediaStreamLine, TransferWebhook
from voice.base import AsrEngine, AsrUnavailable, TtsEngine, VoiceError
from voice.funasr import FunAsrEngine, FunAsrServerEngine
from voice.session import EndpointConfig
from voice.tts import EdgeTtsEngine, EspeakTtsEngine, ResilientTts, TtsCache
from voice.vad import DetectorConfig, SileroModel, SileroVad

log = logging.getLogger(__name__)

# -- the answer stack ----------------------------------------------------------------------------


def embedding_function(settings: Settings):
    if settings.embedding_backend is EmbeddingBackend.OPENAI:
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else "unused"
        return OpenAICompatibleEmbedding(settings.embedding_base_url, settings.embedding_model, api_key=key)
    if settings.embedding_backend is EmbeddingBackend.LOCAL:
        return LocalModelEmbedding(str(settings.embedding_model_dir))
    if settings.embedding_backend is EmbeddingBackend.NGRAM:
        return NgramHashEmbedding()
    return MultilingualUseEmbedding()


def uses_vectors(settings: Settings) -> bool:
    return settings.embedding_backend is not EmbeddingBackend.NONE and any(
        settings.retrieval_weights.get(name, 1) != 0 for name in VECTOR_CHANNELS)


def open_vector_index(settings: Settings, retriever: HybridRetriever, version: str) -> VectorIndex:
    """The chromadb collection for this KB version and embedding function, filled on first use."""
    embedding = embedding_function(settings)
    client = chroma_client(
        path=None if settings.chroma_host else str(settings.data_dir / "chroma"),
        host=settings.chroma_host, port=settings.chroma_port,
    )
    index = VectorIndex(client, f"kb-{version}-{embedding.name()}", embedding)
    texts, item_ids = retriever.vector_documents()
    index.populate(texts, item_ids)
    return index


def answer_policy(settings: Settings) -> AnswerPolicy:
    return AnswerPolicy(
        centre_phone=settings.centre_phone,
        sms_signature=settings.sms_signature,
        high_confidence=settings.answer_high_confidence,
        low_confidence=settings.answer_low_confidence,
        named_confidence=settings.answer_named_confidence,
        max_question_chars=settings.max_question_chars,
    )


def build_stack(settings: Settings, kb: KnowledgeBase, version: str, source: str, lexicon_path: Path,
                calibration: Calibration, passages: tuple[Passage, ...] = ()) -> AnswerStack:
    for error in kb.errors:
        log.error("knowledge base: %s (item skipped)", error)
    lexicon = load_lexicon(lexicon_path)
    text = TextProcessor(lexicon)
    weights = calibration.weights.with_overrides(settings.retrieval_weights)
    retriever = HybridRetriever(kb, text, weights)
    if weights.uses_vectors and settings.embedding_backend is not EmbeddingBackend.NONE:
        try:
            retriever.vector = open_vector_index(settings, retriever, version)
        except (RetrievalError, OSError, ValueError) as exc:
            log.error("vector channel off, lexical channels only: %s", exc)
    policy = answer_policy(settings)
    llm = None
    if settings.llm_api_key is not None:
        llm = LlmComposer(
            LlmConfig(
                base_url=settings.llm_base_url, model=settings.llm_model,
                api_key=settings.llm_api_key.get_secret_value(),
                first_token_timeout_s=settings.llm_first_token_timeout_ms / 1000,
                total_timeout_s=settings.llm_total_timeout_ms / 1000, centre_name=settings.centre_name,
            ),
            CuratedComposer(policy),
        )
    answerer = AnswerEngine(kb, retriever, policy, calibration.confidence, llm=llm, lexicon=lexicon)
    retriever.retrieve("社保卡")  # warm jieba and the indexes before the stack serves anyone
    return AnswerStack(version, source, kb, passages, retriever, answerer, tuple(lexicon.hotwords))


def stack_loader(settings: Settings, builds: BuildStore, kb: KnowledgeBase | None = None):
    """What `Answers` loads (and reloads): a given KB, else the published build, else the items directory."""

    def load() -> AnswerStack:
        # A build serves the calibration it was built with; a KB read from files, the one `hotline kb build` would take.
        calibration_path = calibration_file(settings.data_dir)
        if kb is not None:
            return build_stack(settings, kb, kb.content_hash[:12], "given", DEFAULT_LEXICON_FILE,
                               load_calibration(calibration_path))
        if builds.current() is not None:
            build = builds.load()
            return build_stack(settings, build.kb, build.manifest.version, f"build {build.manifest.version}",
                               build.lexicon_path, load_calibration(build.calibration_path or calibration_path),
                               build.passages)
        directory_kb = load_knowledge_base(settings.kb_dir)
        return build_stack(settings, directory_kb, directory_kb.content_hash[:12], f"directory {settings.kb_dir}",
                           DEFAULT_LEXICON_FILE, load_calibration(calibration_path))

    return load


def _vector_choice(settings: Settings) -> str:
    if not uses_vectors(settings):
        return "no vector channel"
    where = (f"chromadb server {settings.chroma_host}:{settings.chroma_port}" if settings.chroma_host
             else "chromadb folder")
    what = {
        EmbeddingBackend.USE: "offline multilingual sentence encoder (default; no model download)",
        EmbeddingBackend.NGRAM: "offline n-gram embeddings",
        EmbeddingBackend.OPENAI: f"embeddings {settings.embedding_model} at {settings.embedding_base_url}",
        EmbeddingBackend.LOCAL: f"local embedding model {settings.embedding_model_dir}",
    }[settings.embedding_backend]
    return f"vectors in {where}, {what}"


def engine_choices(settings: Settings) -> dict[str, str]:
    """Which engine each part runs, and why: logged at start and shown by /readyz."""
    url = settings.resolved_database_url
    storage = (
        "postgresql (HOTLINE_DATABASE_URL)" if url.startswith("postgresql")
        else "sqlite file (default; set HOTLINE_DATABASE_URL for PostgreSQL)" if settings.database_url is None
        else f"{url.split(':', 1)[0]} (HOTLINE_DATABASE_URL)"
    )
    answers = (
        f"llm {settings.llm_model} at {settings.llm_base_url} for middle-confidence questions, curated above the high "
        f"gate, curated fallback after {settings.llm_first_token_timeout_ms} ms (HOTLINE_LLM_API_KEY set)"
        if settings.llm_api_key else "extractive (no LLM key set)"
    )
    phone = (
        "national 12333 (HOTLINE_CENTRE_PHONE not set: set the centre's own number)"
        if settings.centre_phone == NATIONAL_HOTLINE else f"{settings.centre_phone} (HOTLINE_CENTRE_PHONE)"
    )
    return {
        "storage": storage,
        "retrieval": "hybrid: BM25 on jieba words, character and pinyin bigrams, alias matching; "
                     + _vector_choice(settings),
        "answers": answers,
        "centre phone": phone,
        "asr": (f"FunASR 2pass server at {settings.asr_server_url} (HOTLINE_ASR_SERVER_URL)"
                if settings.asr_engine is AsrChoice.FUNASR_SERVER
                else f"FunASR streaming Paraformer in process, model {settings.asr_model} (HOTLINE_ASR_MODEL)"),
        "tts": (f"edge-tts {settings.tts_voice}, espeak-ng fallback after {settings.tts_first_audio_deadline_ms} ms "
                "without audio (default)" if settings.tts_engine is TtsChoice.EDGE
                else "espeak-ng only (HOTLINE_TTS_ENGINE=espeak; offline, robotic)"),
        "media streams": ("Twilio signature check (HOTLINE_TWILIO_AUTH_TOKEN)" if settings.twilio_auth_token
                          else "token in the URL (HOTLINE_MEDIA_STREAM_TOKEN)" if settings.media_stream_token
                          else "token in the URL, random for this run (HOTLINE_MEDIA_STREAM_TOKEN not set)"),
        "sms": ("outbox only: messages are stored and listed, nothing is sent (default; set HOTLINE_SMS_GATEWAY)"
                if settings.sms_gateway is SmsGatewayChoice.OUTBOX
                else f"{settings.sms_gateway.value} (HOTLINE_SMS_GATEWAY), delivery reports "
                     + ("at " + settings.sms_public_url if settings.sms_public_url else "on the gateway's connection")),
    }


# -- SMS -------------------------------------------------------------------------------------------


def _secret(value) -> str:
    return value.get_secret_value() if value is not None else ""


def build_sms_gateway(settings: Settings) -> SmsGateway:
    choice = settings.sms_gateway
    if choice is SmsGatewayChoice.SMPP:
        from telephony.sms.gateways.smpp import SmppGateway
        return SmppGateway(settings.sms_smpp_host or "", settings.sms_smpp_port, settings.sms_smpp_system_id or "",
                           _secret(settings.sms_smpp_password), system_type=settings.sms_smpp_system_type,
                           source_addr=settings.sms_sender)
    if choice is SmsGatewayChoice.KANNEL:
        from telephony.sms.gateways.kannel import KannelGateway
        return KannelGateway(settings.sms_kannel_url or "", settings.sms_kannel_username or "",
                             _secret(settings.sms_kannel_password), sender=settings.sms_sender)
    if choice is SmsGatewayChoice.ALIYUN:
        from telephony.sms.gateways.aliyun import AliyunSmsGateway
        return AliyunSmsGateway(settings.sms_aliyun_access_key_id or "", _secret(settings.sms_aliyun_access_key_secret),
                                settings.sms_signature, endpoint=settings.sms_aliyun_endpoint)
    if choice is SmsGatewayChoice.TENCENT:
        from telephony.sms.gateways.tencent import TencentSmsGateway
        return TencentSmsGateway(settings.sms_tencent_secret_id or "", _secret(settings.sms_tencent_secret_key),
                                 settings.sms_tencent_sdk_app_id or "", settings.sms_signature,
                                 region=settings.sms_tencent_region, endpoint=settings.sms_tencent_endpoint)
    return OutboxOnlyGateway()


def sms_report_url(settings: Settings, gateway: str) -> str | None:
    """The delivery-report callback URL a gateway is given (Kannel dlr-url), token included; None without a
    public URL."""
    if not settings.sms_public_url or settings.sms_receipt_token is None:
        return None
    return (f"{settings.sms_public_url.rstrip('/')}/api/sms/receipts/{gateway}"
            f"?token={quote(settings.sms_receipt_token.get_secret_value(), safe='')}")


def build_sms(settings: Settings, database: Database, kb: Callable[[], KnowledgeBase],
              gateway: SmsGateway | None = None) -> SmsService:
    """The SMS service; `kb` gives the knowledge base the guides come from (the one answering, where there is one)."""
    gateway = gateway or build_sms_gateway(settings)
    limits = SmsLimits(per_number_per_hour=settings.sms_per_number_per_hour,
                       per_number_per_day=settings.sms_per_number_per_day,
                       global_per_minute=settings.sms_global_per_minute,
                       failures_per_day=settings.sms_failures_per_day, max_attempts=settings.sms_max_attempts)
    outbox = SmsOutbox(database, limits)
    dispatcher = SmsDispatcher(outbox, gateway, DispatchConfig(sender=settings.sms_sender,
                                                               report_url=sms_report_url(settings, gateway.name)))
    config = SmsConfig(signature=settings.sms_signature, centre_phone=settings.centre_phone,
                       cap=settings.sms_cap_chars, guide_base_url=settings.sms_guide_base_url)
    templates = sms_templates(settings) if gateway.uses_templates else None
    return SmsService(outbox, dispatcher, config, kb, templates)


def sms_templates(settings: Settings) -> TemplateLookup:
    """Item → approved template (kb/sms_templates.yaml unless HOTLINE_SMS_TEMPLATES_FILE), for Aliyun and Tencent."""
    loaded = load_templates(settings.sms_templates_file or DEFAULT_TEMPLATES_FILE)
    provider = settings.sms_gateway.value

    def lookup(item: ServiceItem | None, ticket: int | None) -> tuple[str, tuple[tuple[str, str], ...]]:
        if item is None:
            return ticket_template_message(provider, str(ticket), settings.centre_phone, templates=loaded)
        return template_message(item, provider, settings.centre_phone, settings.sms_guide_base_url,
                                templates=loaded)

    return lookup


def open_sms(settings: Settings, database: Database, gateway: SmsGateway | None = None) -> SmsService:
    """SMS without the answer stack (the CLI): guides from the published KB build, else the items directory."""
    builds = BuildStore(settings.data_dir / "kb-builds")
    kb = builds.load().kb if builds.current() is not None else load_knowledge_base(settings.kb_dir)
    return build_sms(settings, database, lambda: kb, gateway)


# -- voice engines and calls ---------------------------------------------------------------------


def sip_config(settings: Settings) -> SipConfig:
    # The agent's SIP user: as set; else a PBX extension's number is its auth user, and a trunk's agent "hotline".
    registering = settings.sip_mode is SipMode.REGISTER
    user = settings.sip_user or (settings.sip_auth_user if registering else None) or "hotline"
    return SipConfig(
        host=settings.sip_host, port=settings.sip_port, transport=settings.sip_transport,
        public_address=settings.sip_public_address, rtp_port=settings.sip_rtp_port,
        rtp_port_range=settings.sip_rtp_port_range, codecs=tuple(settings.sip_codecs), max_calls=settings.sip_max_calls,
        user=user, mode=settings.sip_mode.value, registrar=settings.sip_registrar,
        auth_user=settings.sip_auth_user, password=_secret(settings.sip_password), realm=settings.sip_realm,
        register_expires_s=settings.sip_register_expires_s, transfer_mode=settings.sip_transfer_mode.value,
        ring_ms=settings.sip_ring_ms)


def load_office_hours(settings: Settings) -> OfficeHours | None:
    """The agents' calendar, for ticket due times; a broken file is logged and tickets fall due at once (a caller's
    handoff never fails on it; `hotline hours check` says what is wrong)."""
    try:
        return OfficeHours.load(settings.office_hours_file)
    except OfficeHoursError as exc:
        log.error("office hours not loaded, callback tickets fall due at once: %s", exc)
        return None


def load_keypad_menu(settings: Settings) -> MenuFile | None:
    """The keypad menu (kb/keypad_menu.yaml unless HOTLINE_KEYPAD_MENU_FILE); a broken file is logged and calls go on
    without it (no ASR: straight to a person; `hotline kb check` says what is wrong)."""
    try:
        return load_menu(settings.keypad_menu_file)
    except KeypadMenuError as exc:
        log.error("keypad menu not loaded, calls go on without it: %s", exc)
        return None


def open_now(calendar: OfficeHours | None) -> Callable[[], bool] | None:
    """Whether agents are on duty at this moment, asked by the dialogue when a caller is in crisis (after hours it says
    the emergency numbers first); None without a calendar, which the dialogue takes as open."""
    if calendar is None:
        return None
    return lambda: calendar.is_open(utcnow())


def person_handoff(settings: Settings, agents: AgentQueue) -> PersonHandoff:
    """How an in-hours handoff reaches a person (settings `handoff_*`, docs/handoff.md)."""
    return PersonHandoff(settings.handoff_mode, agents if settings.handoff_mode is HandoffMode.DESK else None,
                         settings.handoff_queue_timeout_s, settings.handoff_transfer_target)


def transfer_webhook(settings: Settings) -> TransferWebhook | None:
    """The media-stream line's way to transfer a call (handoff_mode=pbx), when the bureau set one."""
    if settings.twilio_transfer_webhook is None:
        return None
    return TransferWebhook(settings.twilio_transfer_webhook, _secret(settings.twilio_transfer_token) or None)


def build_lines(settings: Settings) -> list[ServedLine]:
    """The phone lines that listen on their own ports (the media stream is served by the web app)."""
    lines: list[ServedLine] = []
    if settings.sip_enabled:
        lines.append(SipLine(sip_config(settings)))
    if settings.audiosocket_enabled:
        lines.append(AudioSocketLine(settings.audiosocket_host, settings.audiosocket_port,
                                     settings.audiosocket_max_calls))
    return lines


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


def call_config(settings: Settings) -> CallConfig:
    return CallConfig(
        dialogue=DialogueConfig(no_speech_timeout_ms=settings.no_speech_timeout_ms,
                                no_speech_reprompts=settings.no_speech_reprompts, max_call_s=settings.max_call_s,
                                centre_name=settings.centre_name),
        detector=DetectorConfig(threshold=settings.vad_threshold, min_speech_ms=settings.barge_in_min_speech_ms,
                                min_silence_ms=min(settings.complete_question_silence_ms,
                                                   settings.short_reply_silence_ms)),
        endpoint=EndpointConfig(end_of_turn_silence_ms=settings.end_of_turn_silence_ms,
                                complete_question_silence_ms=settings.complete_question_silence_ms,
                                short_reply_silence_ms=settings.short_reply_silence_ms,
                                max_utterance_ms=settings.max_utterance_ms,
                                speculative_final=settings.speculative_final,
                                final_deadline_ms=settings.asr_final_deadline_ms),
        recordings_dir=settings.data_dir / "recordings" if settings.recordings else None,
    )


async def start_voice_engines(settings: Settings, asr: AsrEngine | None = None,
                              tts: TtsEngine | None = None) -> VoiceEngines:
    """Load and warm the engines every call shares. An ASR that cannot load leaves `asr` None (calls then get the
    keypad menu), never a failed start."""
    vad_model = SileroModel()
    engines = VoiceEngines(new_vad=lambda: SileroVad(vad_model), tts=tts or build_tts(settings), asr=None)
    engine = asr or build_asr(settings)
    try:
        await engine.warm_up()
        engines.asr = engine
    except AsrUnavailable as exc:
        engines.asr_error = str(exc)
        log.error("voice: ASR unavailable, calls get the keypad menu: %s", exc)
    return engines


@dataclass
class Voice:
    """The phone side of a running hotline: shared engines, the call runner and the media-stream line."""

    settings: Settings
    engines: VoiceEngines
    runner: CallRunner
    line: MediaStreamLine
    served: list[ServedLine] = field(default_factory=list)  # SIP, AudioSocket: lines with listeners of their own
    prerendered: bool = False

    async def start_lines(self) -> None:
        for line in self.served:
            await line.start(self.runner)  # a line that cannot bind reports it in /readyz; the others still start

    async def close_lines(self) -> None:
        for line in self.served:
            try:
                await line.close()
            except Exception as exc:  # noqa: BLE001 - one line's shutdown error must not keep the others up
                log.error("line %s did not close cleanly: %s", line.name, exc)

    async def prerender(self, kb: KnowledgeBase) -> None:
        """Fill the TTS cache with the fixed prompts, every item's spoken summary and the keypad menu (runs in the
        background)."""
        tts = self.engines.tts
        if not isinstance(tts, ResilientTts):
            self.prerendered = True
            return
        menu_file = self.runner.keypad_menu
        menu = resolve_menu(menu_file, kb)[0] if menu_file is not None else None
        texts = prerender_texts(self.settings.centre_name, kb, menu)
        try:
            probe = await tts.prerender(texts[:1])
            if probe.failed:
                # Offline or the service is down: do not log hundreds of failures; calls use the fallback.
                log.warning("TTS prerender skipped: the primary engine could not render a test sentence; replies "
                            "are rendered when needed (fallback after %s ms)",
                            self.settings.tts_first_audio_deadline_ms)
                return
            report = await tts.prerender(texts)
        except (VoiceError, OSError) as exc:
            log.error("TTS prerender stopped, replies are rendered when first needed: %s", exc)
            return
        finally:
            self.prerendered = True  # done trying: readiness must not wait on a cache that will not fill
        log.info("TTS prerender: %s rendered, %s already cached, %s failed", report.rendered, report.cached,
                 report.failed)

    def readiness(self) -> dict[str, object]:
        engines = self.engines
        body: dict[str, object] = {
            "asr": "ready" if engines.asr is not None else f"unavailable: {engines.asr_error}",
            "tts_prerendered": self.prerendered, "active_calls": self.runner.active_calls,
            "bad_messages": self.line.bad_messages}
        if isinstance(engines.tts, ResilientTts):
            status = engines.tts.status()
            body["tts"] = {"primary": status.primary, "fallback": status.fallback,
                           "primary_available": status.primary_available}
        body["lines"] = {line.name: {"state": status.state.value, "detail": status.detail,
                                     **({"counters": status.counters} if status.counters else {})}
                         for line in (self.line, *self.served) for status in (line.status(),)}
        return body


# -- the hotline ---------------------------------------------------------------------------------


@dataclass
class Hotline:
    """Everything a running hotline holds: storage, answers, the text path and, once warmed, the voice side."""

    settings: Settings
    database: Database
    builds: BuildStore
    answers: Answers
    journal: TurnJournal
    writer: TurnWriter
    conversations: TextConversations
    auth: MediaStreamAuth
    sms: SmsService
    voice: Voice | None = None
    voice_error: str | None = None
    line: MediaStreamLine = field(default_factory=MediaStreamLine)
    agents: AgentQueue = field(default_factory=AgentQueue)  # the desk's queue (handoff_mode=desk)

    @classmethod
    def open(cls, settings: Settings, database: Database | None = None, kb: KnowledgeBase | None = None,
             migrate: bool = True, sms_gateway: SmsGateway | None = None) -> Hotline:
        """Blocking: opens (and migrates) the database and builds the answer stack."""
        database = database or Database(settings.resolved_database_url)
        if migrate:
            database.migrate()
        builds = BuildStore(settings.data_dir / "kb-builds")
        answers = Answers(stack_loader(settings, builds, kb))
        journal = TurnJournal(settings.data_dir / "turn-journal.jsonl")
        writer = TurnWriter(database, journal)
        media_token = (settings.media_stream_token.get_secret_value() if settings.media_stream_token is not None
                       else secrets.token_urlsafe(24))
        twilio = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token is not None else None
        return cls(settings, database, builds, answers, journal, writer, TextConversations(answers, database, writer),
                   MediaStreamAuth(media_token, twilio),
                   build_sms(settings, database, lambda: answers.kb, sms_gateway),
                   line=MediaStreamLine(transfer_webhook(settings)),
                   agents=AgentQueue(offer_timeout_s=settings.handoff_offer_timeout_s))

    async def start_voice(self, asr: AsrEngine | None = None, tts: TtsEngine | None = None) -> Voice:
        engines = await start_voice_engines(self.settings, asr, tts)
        calendar = load_office_hours(self.settings)
        runner = CallRunner(engines, call_config(self.settings), self.answers, self.database, self.writer,
                            CallbackTickets(self.database, self.sms, office_hours=calendar), sms=self.sms,
                            is_open=open_now(calendar), person=person_handoff(self.settings, self.agents),
                            keypad_menu=load_keypad_menu(self.settings))
        self.voice = Voice(self.settings, engines, runner, self.line, build_lines(self.settings))
        await self.voice.start_lines()
        return self.voice

    def close(self) -> None:
        self.database.close()
