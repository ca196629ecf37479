"""Fuzz the Twilio Media Streams parser (`telephony.transports.twilio.protocol.parse_message`).

Property: any websocket frame (a text frame, or a binary one as the gateway decodes it) gives a typed inbound event
with typed fields, or `MediaStreamProtocolError`; any other exception is a crash.

    python tests/fuzz/fuzz_media_stream.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/media_stream
"""

import sys

import atheris
from json_mutator import mutate_json

with atheris.instrument_imports(include=["telephony"]):
    from telephony.transports.twilio.protocol import (
        DTMF_DIGITS,
        Connected,
        Dtmf,
        Mark,
        Media,
        MediaStreamProtocolError,
        Start,
        Stop,
        parse_message,
    )


def check(event: object) -> None:
    if isinstance(event, Start):
        assert isinstance(event.stream_sid, str) and isinstance(event.call_sid, str)
        assert isinstance(event.tracks, tuple) and all(isinstance(track, str) for track in event.tracks)
        assert isinstance(event.sample_rate_hz, int) and isinstance(event.channels, int)
        assert all(isinstance(key, str) and isinstance(value, str) for key, value in event.custom_parameters.items())
    elif isinstance(event, Media):
        assert isinstance(event.payload, bytes) and isinstance(event.stream_sid, str)
        assert isinstance(event.chunk, int) and isinstance(event.timestamp_ms, int)
    elif isinstance(event, Dtmf):
        assert event.digit in DTMF_DIGITS
    elif isinstance(event, Connected):
        assert isinstance(event.protocol, str) and isinstance(event.version, str)
    elif isinstance(event, Mark | Stop):
        assert isinstance(event.stream_sid, str)
    else:
        raise AssertionError(f"untyped result {event!r}")


def test_one_input(data: bytes) -> None:
    # Text frames arrive as str; binary frames as bytes the gateway decodes with errors="replace"; both are fed raw too.
    for frame in (data, data.decode("utf-8", errors="replace"), data.decode("utf-8", errors="surrogateescape")):
        try:
            event = parse_message(frame)
        except MediaStreamProtocolError:
            continue
        check(event)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate_json)
    atheris.Fuzz()
