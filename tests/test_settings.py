"""Settings: defaults, environment prefix, .env, validation and production guards."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from telephony.app import engine_choices
from telephony.settings import Environment, Settings


def test_defaults_run_locally_on_embedded_engines(settings: Settings) -> None:
    assert settings.environment is Environment.LOCAL
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("/var/hotline.db")
    choices = engine_choices(settings)
    assert choices["answers"] == "extractive (no LLM key set)"
    assert choices["storage"].startswith("sqlite file (default")


def test_environment_prefix_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HOTLINE_CENTRE_PHONE=0773-1234567\nHOTLINE_PORT=9100\n", encoding="utf-8")
    monkeypatch.setenv("HOTLINE_PORT", "9200")  # the environment wins over .env
    loaded = Settings()
    assert loaded.centre_phone == "0773-1234567"
    assert loaded.port == 9200
    assert "0773-1234567 (HOTLINE_CENTRE_PHONE)" == engine_choices(loaded)["centre phone"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("centre_phone", "call us", "centre_phone must be digits"),
        ("port", 70000, "less than or equal to 65535"),
        ("sms_signature", "【桂林社保】", "code adds 【】"),
        ("log_level", "LOUD", "log_level must be"),
    ],
)
def test_invalid_values_are_rejected_with_a_reason(tmp_path: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(data_dir=tmp_path, **{field: value})
    assert message in str(caught.value)


def test_confidence_gates_must_be_ordered(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="answer_low_confidence must be below"):
        Settings(data_dir=tmp_path, answer_low_confidence=0.7, answer_high_confidence=0.6)


def test_production_refuses_default_secret_and_phone(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="HOTLINE_ADMIN_TOKEN"):
        Settings(data_dir=tmp_path, environment="production", centre_phone="0773-1234567")
    with pytest.raises(ValidationError, match="HOTLINE_CENTRE_PHONE"):
        Settings(data_dir=tmp_path, environment="production", admin_token="x" * 20)
    with pytest.raises(ValidationError, match="HOTLINE_MEDIA_STREAM_TOKEN or HOTLINE_TWILIO_AUTH_TOKEN"):
        Settings(data_dir=tmp_path, environment="production", admin_token="x" * 20, centre_phone="0773-1234567")
    ok = Settings(data_dir=tmp_path, environment="production", admin_token="x" * 20, centre_phone="0773-1234567",
                  media_stream_token="m" * 24)
    assert ok.environment is Environment.PRODUCTION


@pytest.mark.parametrize(("field", "value", "message"), [
    ("asr_engine", "funasr-server", "needs HOTLINE_ASR_SERVER_URL"),
    ("asr_engine", "whisper", "Input should be 'funasr' or 'funasr-server'"),
    ("tts_engine", "azure", "Input should be 'edge' or 'espeak'"),
    ("end_of_turn_silence_ms", 50, "greater than or equal to 200"),
])
def test_voice_settings_are_validated(tmp_path: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(data_dir=tmp_path, **{field: value})
    assert message in str(caught.value)


def test_postgres_url_is_reported_as_the_storage_engine(tmp_path: Path) -> None:
    configured = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u@127.0.0.1/db")
    assert engine_choices(configured)["storage"] == "postgresql (HOTLINE_DATABASE_URL)"
