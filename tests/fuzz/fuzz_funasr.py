"""Fuzz both directions of the FunASR 2pass protocol (`voice.funasr.protocol`).

The server parses the client's text frames (`parse_client_message`, `is_end_of_speech`); the client parses the
server's (`parse_server_message`). Property: each gives a typed value or `AsrProtocolError` (`is_end_of_speech` a bool,
never an exception); any other exception is a crash.

    python tests/fuzz/fuzz_funasr.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/funasr
"""

import sys

import atheris
from json_mutator import mutate_json

with atheris.instrument_imports(include=["voice"]):
    from voice.funasr.protocol import (
        CLIENT_MODES,
        SUPPORTED_AUDIO_RATES_HZ,
        AsrProtocolError,
        EndOfSpeech,
        RecognitionResult,
        ServerError,
        StreamConfig,
        is_end_of_speech,
        parse_client_message,
        parse_server_message,
    )


def check_client(event: object) -> None:
    if isinstance(event, EndOfSpeech):
        return
    assert isinstance(event, StreamConfig), event
    assert event.mode in CLIENT_MODES and event.audio_fs in SUPPORTED_AUDIO_RATES_HZ
    assert len(event.chunk_size) == 3 and all(type(size) is int and size >= 0 for size in event.chunk_size)
    assert event.chunk_size[1] > 0
    assert type(event.chunk_interval) is int and isinstance(event.wav_name, str)
    assert all(isinstance(word, str) for word in event.hotwords)
    for look_back in (event.encoder_chunk_look_back, event.decoder_chunk_look_back):
        assert look_back is None or (isinstance(look_back, int) and look_back >= 0)
    assert isinstance(event.is_speaking, bool)
    event.to_json()  # what a client built from it would send


def check_server(result: object) -> None:
    if isinstance(result, ServerError):
        assert isinstance(result.message, str)
        return
    assert isinstance(result, RecognitionResult), result
    assert isinstance(result.mode, str) and isinstance(result.text, str) and isinstance(result.wav_name, str)
    assert isinstance(result.is_final, bool) and isinstance(result.is_offline, bool)


def test_one_input(data: bytes) -> None:
    # websockets hands text frames over as str (valid UTF-8); surrogateescape keeps every fuzzed byte reachable.
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        check_client(parse_client_message(text))
    except AsrProtocolError:
        pass
    assert isinstance(is_end_of_speech(text), bool)
    try:
        check_server(parse_server_message(text))
    except AsrProtocolError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate_json)
    atheris.Fuzz()
