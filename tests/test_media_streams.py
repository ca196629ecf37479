"""Twilio Media Streams wire format: byte fixtures in, typed events out, exact errors, messages back."""

from __future__ import annotations

import base64
import json

import pytest

from telephony.transports.twilio.protocol import (
    MAX_MESSAGE_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaStreamProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
    signature_valid,
    twilio_signature,
)

# Shapes as Twilio documents them (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
START = (
    '{"event":"start","sequenceNumber":"1","start":{"accountSid":"ACxxx","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"callSid":"CAxxx","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    '"customParameters":{"from":"caller-7"}},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
MEDIA = (
    '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5",'
    '"payload":"' + base64.b64encode(bytes(range(160))).decode() + '"},"streamSid":"MZ1"}'
)


def test_inbound_events_parse_to_typed_values() -> None:
    assert parse_message('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected("Call", "1.0.0")
    start = parse_message(START)
    assert isinstance(start, Start)
    assert start.stream_sid == "MZ18ad3ab5a668481ce02b83e7395059f0" and start.call_sid == "CAxxx"
    assert (start.encoding, start.sample_rate_hz, start.channels) == ("audio/x-mulaw", 8000, 1)
    assert start.custom_parameters == {"from": "caller-7"} and start.tracks == ("inbound",)
    media = parse_message(MEDIA)
    assert media == Media("MZ1", "inbound", 1, 5, bytes(range(160)))
    assert parse_message('{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"*"}}') == Dtmf("MZ1", "*")
    assert parse_message('{"event":"mark","streamSid":"MZ1","mark":{"name":"reply-1"}}') == Mark("MZ1", "reply-1")
    assert parse_message('{"event":"stop","streamSid":"MZ1","stop":{"callSid":"CA1"}}') == Stop("MZ1", "CA1")


@pytest.mark.parametrize(("raw", "message"), [
    ("not json", "not JSON"),
    ("[1, 2]", "message must be a JSON object"),
    ('{"event":"hello"}', "unknown event 'hello'"),
    ('{"event":"media","media":{"payload":"***"}}', "media payload is not base64"),
    ('{"event":"media","media":"x"}', "'media' must be a dict"),
    ('{"event":"media","media":{"payload":"AAAA","chunk":"x"}}', "media chunk and timestamp must be integers"),
    ('{"event":"dtmf","dtmf":{"digit":"X"}}', "unknown DTMF digit 'X'"),
    ('{"event":"start"}', "'start' must be a dict"),
])
def test_malformed_messages_get_exact_errors(raw: str, message: str) -> None:
    with pytest.raises(MediaStreamProtocolError, match=message.replace("*", r"\*")):
        parse_message(raw)


def test_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(MediaStreamProtocolError, match="exceeds the 65536-byte limit"):
        parse_message("x" * (MAX_MESSAGE_BYTES + 1))


def test_outbound_messages_round_trip() -> None:
    media = json.loads(media_message("MZ9", b"\x7f\x00\xff"))
    assert media == {"event": "media", "streamSid": "MZ9", "media": {"payload": base64.b64encode(b"\x7f\x00\xff").decode()}}
    assert json.loads(clear_message("MZ9")) == {"event": "clear", "streamSid": "MZ9"}
    assert json.loads(mark_message("MZ9", "end")) == {"event": "mark", "streamSid": "MZ9", "mark": {"name": "end"}}


def test_twilio_signature_matches_the_documented_example() -> None:
    # Twilio's published example (TwilioDevEd/api-snippets, signature_validation): token 12345, URL, parameters.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234", "From": "+14158675310",
              "To": "+18005551212"}
    assert twilio_signature("12345", url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert signature_valid("12345", url, "GvWf1cFY/Q7PnoempGyD5oXAezc=", params)
    assert not signature_valid("wrong", url, "GvWf1cFY/Q7PnoempGyD5oXAezc=", params)
