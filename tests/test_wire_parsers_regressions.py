"""Inputs that crashed a wire parser (found by the atheris harnesses in tests/fuzz/, or of the same kind found by
auditing the other decoders after them): each must now end in the parser's own protocol error.

The files in tests/fuzz/regressions/ are the exact crash files libFuzzer wrote (docs/fuzzing.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from starlette.requests import Request

from telephony.handoff.acd import AgentQueue, DeskError, Seat
from telephony.sms.base import ReportError, ReportRequest
from telephony.sms.gateways.aliyun import AliyunSmsGateway
from telephony.sms.gateways.tencent import TencentSmsGateway
from telephony.transports.twilio.protocol import MediaStreamProtocolError, Start, parse_message, start_message
from telephony.web.routes import admin
from telephony.web.routes.desk_ws import _apply
from voice.funasr.protocol import (
    AsrProtocolError,
    StreamConfig,
    is_end_of_speech,
    parse_client_message,
    parse_server_message,
)

CRASHES = Path(__file__).resolve().parent / "fuzz" / "regressions"
DEEP = "[" * 5000 + "]" * 5000  # past the JSON decoder's recursion limit: RecursionError, not a JSONDecodeError
HUGE_NUMBER = "9" * 4301  # past CPython's int digit limit: a ValueError that is not a JSONDecodeError


def crash(name: str) -> bytes:
    return (CRASHES / name).read_bytes()


# -- Twilio Media Streams ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["media_stream-crash-8ae75e04adc31ea861c97762ffc0e8e75d13917b",  # RecursionError
                                  "media_stream-crash-14198c1de355031aab22639ce0f89f2f40dc7e80"])  # channels: "…"
def test_media_stream_crash_files_are_protocol_errors(name: str) -> None:
    data = crash(name)
    for frame in (data, data.decode("utf-8")):
        with pytest.raises(MediaStreamProtocolError):
            parse_message(frame)


@pytest.mark.parametrize(("start", "error"), [
    ({"tracks": 5}, "'tracks' must be a list"),
    ({"mediaFormat": {"sampleRate": "x"}}, "'sampleRate' and 'channels' must be integers"),
    ({"mediaFormat": {"channels": float("inf")}}, "'sampleRate' and 'channels' must be integers"),
    ({"mediaFormat": {"sampleRate": [8000]}}, "'sampleRate' and 'channels' must be integers"),
])
def test_a_start_with_fields_of_the_wrong_type_is_a_protocol_error(start: dict, error: str) -> None:
    with pytest.raises(MediaStreamProtocolError, match=error):
        parse_message(json.dumps({"event": "start", "streamSid": "MZ1", "start": start}))


@pytest.mark.parametrize("text", [
    DEEP,
    '{"event": "media", "media": {"payload": "", "chunk": ' + HUGE_NUMBER + "}}",
    '{"event": "media", "media": {"payload": "", "chunk": Infinity}}',
    '{"event": "media", "media": {"payload": "", "timestamp": -Infinity}}',
])
def test_unreadable_numbers_and_nesting_are_protocol_errors(text: str) -> None:
    with pytest.raises(MediaStreamProtocolError):
        parse_message(text)


def test_a_well_formed_start_still_parses() -> None:
    event = parse_message(start_message("MZ1", "CA1", {"caller": "13800001111"}))
    assert isinstance(event, Start)
    assert (event.tracks, event.sample_rate_hz, event.channels) == (("inbound",), 8000, 1)
    assert event.custom_parameters == {"caller": "13800001111"}


# -- FunASR 2pass --------------------------------------------------------------------------------------------------


def test_funasr_crash_file_of_deep_nesting_is_a_protocol_error_both_ways() -> None:
    text = crash("funasr-crash-09b41cc58ffdbd03cb29e0c06cb4d0e3e794d249").decode("utf-8")
    with pytest.raises(AsrProtocolError, match="RecursionError"):
        parse_server_message(text)
    with pytest.raises(AsrProtocolError, match="RecursionError"):
        parse_client_message(text)
    assert is_end_of_speech(text) is False


def test_funasr_crash_file_of_a_non_integer_chunk_interval_is_a_protocol_error() -> None:
    text = crash("funasr-crash-e23c31bb81a0b37929a5c0750347efd22057a81a").decode("utf-8")
    with pytest.raises(AsrProtocolError, match="chunk_interval must be an integer"):
        parse_client_message(text)


@pytest.mark.parametrize("config", [
    {"mode": "2pass", "chunk_size": [float("inf"), 10, 5]},
    {"mode": "2pass", "chunk_interval": float("nan")},
    {"mode": "2pass", "chunk_interval": None},
])
def test_configurations_with_unusable_numbers_are_protocol_errors(config: dict) -> None:
    with pytest.raises(AsrProtocolError):
        parse_client_message(json.dumps(config))


def test_a_number_past_the_digit_limit_is_a_protocol_error() -> None:
    with pytest.raises(AsrProtocolError, match="ValueError"):
        parse_server_message('{"mode": "2pass-online", "text": "", "n": ' + HUGE_NUMBER + "}")


def test_a_configuration_with_a_string_chunk_interval_is_still_read() -> None:
    config = parse_client_message('{"mode": "offline", "chunk_interval": "5", "audio_fs": 8000}')
    assert config == StreamConfig(mode="offline", chunk_interval=5, wav_name="", audio_fs=8000)


# -- SMS delivery reports -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", [AliyunSmsGateway("testId", "testSecret", "测试社保"),
                                     TencentSmsGateway("testId", "testKey", "1400000000", "测试社保")])
def test_a_report_push_nested_too_deep_is_a_report_error(gateway) -> None:
    body = crash("sms_reports-crash-577c26a7dc1d34365a71500ef9e0ab4a2c7c1d79")
    with pytest.raises(ReportError, match="not JSON \\(RecursionError"):
        gateway.parse_reports(ReportRequest("POST", {}, body, "application/json"))


# -- the same decoder in the staff pages (audited after the harnesses found it) ----------------------------------


def test_a_desk_message_nested_too_deep_is_a_desk_error() -> None:
    text = "[" * 1000 + "]" * 1000  # within the desk's 2000 characters
    with pytest.raises(DeskError, match="不是JSON"):
        _apply(AgentQueue(), Seat(1, "alice", "Alice"), text)


def test_an_admin_body_nested_too_deep_is_a_400() -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": DEEP.encode(), "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/admin/api/users", "headers": []}, receive)
    response = asyncio.run(admin._body(request, admin.ActiveBody))
    assert response.status_code == 400
    assert json.loads(response.body) == json.loads(admin.staff_error(400, admin.BAD_REQUEST).body)
