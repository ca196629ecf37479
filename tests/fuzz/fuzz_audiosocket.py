"""Fuzz the Asterisk AudioSocket framing (`telephony.transports.audiosocket.protocol.AudioSocketParser`).

Input: the bytes of one TCP connection. Property: fed whole or in arbitrary chunks (split points derived from the
input), the parser gives the same typed messages, or raises `AudioSocketProtocolError` (after which it stays broken);
`end_of_stream` raises only that error; any other exception, or a difference between the two feeds, is a crash.

    python tests/fuzz/fuzz_audiosocket.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/audiosocket
"""

import random
import sys
import zlib

import atheris

with atheris.instrument_imports(include=["telephony"]):
    from telephony.transports.audiosocket.protocol import (
        Audio,
        AudioSocketParser,
        AudioSocketProtocolError,
        CallId,
        Dtmf,
        Error,
        Hangup,
        Unknown,
    )

TYPES = (Hangup, CallId, Dtmf, Audio, Error, Unknown)


def run(parser: AudioSocketParser, chunks: list[bytes]) -> tuple[list[object], bool]:
    messages: list[object] = []
    try:
        for chunk in chunks:
            got = parser.feed(chunk)
            assert all(isinstance(message, TYPES) for message in got), got
            messages += got
        parser.end_of_stream()
    except AudioSocketProtocolError:
        try:
            parser.feed(b"\x10\x00\x00")
        except AudioSocketProtocolError:
            return messages, True
        raise AssertionError("the parser took more bytes after a framing error") from None
    return messages, False


def test_one_input(data: bytes) -> None:
    rng = random.Random(zlib.crc32(data))
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 8))))
    chunks = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    for expect_uuid in (True, False):
        whole = run(AudioSocketParser(expect_uuid), [data])
        pieces = run(AudioSocketParser(expect_uuid), chunks)
        if not whole[1]:
            assert whole == pieces, (whole, pieces)
        else:  # messages before the bad frame may or may not be returned, the error must be the same
            assert pieces[1], pieces


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
