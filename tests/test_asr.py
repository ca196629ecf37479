"""FunASR streaming ASR: tiny model on disk, in-process engine, 2pass websocket server and client on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voice.audio import float_to_pcm16, pcm16_to_float
from voice.base import FRAME_BYTES, AsrUnavailable, AudioFormatError
from voice.funasr import (
    DecodeQueue, FunAsrEngine, FunAsrEnginePool, FunAsrServerEngine, FunAsrWebsocketServer, is_hub_name,
)
from voice.funasr.protocol import (
    AsrProtocolError, EndOfSpeech, RecognitionResult, ServerError, SessionState, StreamConfig, next_state,
    parse_chunk_size, parse_client_message, parse_server_message,
)
from voice.testing.tiny_models import DEFAULT_TOKENS, PUNCTUATION_MARKS, build_tiny_paraformer, build_tiny_punctuation

FRAMES_PER_STRIDE = 30  # 600 ms stride (chunk_size[1] = 10) / 20 ms frames
# soxr's HQ resampler hands out 16 kHz audio in blocks of about 100 ms, so a stride completes a few frames late.
RESAMPLER_LAG_FRAMES = 15


def speech_like_pcm(seconds: float, rate_hz: int = 8000, seed: int = 1) -> bytes:
    """A deterministic voiced signal with a gliding pitch, syllable-rate envelope and a little noise."""
    time_s = np.arange(int(seconds * rate_hz)) / rate_hz
    pitch_hz = 150 + 50 * np.sin(2 * np.pi * 0.7 * time_s)
    phase = 2 * np.pi * np.cumsum(pitch_hz) / rate_hz
    voiced = sum(np.sin(harmonic * phase) / harmonic for harmonic in range(1, 8))
    signal = voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time_s))
    noise = np.random.default_rng(seed).standard_normal(len(time_s))
    signal = 0.2 * signal / np.abs(signal).max() + 0.01 * noise
    return (signal * 32767).astype("<i2").tobytes()


def frames(pcm: bytes, frame_bytes: int = FRAME_BYTES) -> Iterator[bytes]:
    for start in range(0, len(pcm), frame_bytes):
        yield pcm[start:start + frame_bytes]


AUDIO_8K = speech_like_pcm(3.3)  # 5 whole strides and a 300 ms tail
AUDIO_16K = speech_like_pcm(3.3, rate_hz=16000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_paraformer(tmp_path_factory.mktemp("tiny-paraformer"))


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Iterator[FunAsrEngine]:
    """One loaded engine for the whole session (importing funasr takes about 10 s)."""
    loaded = FunAsrEngine(tiny_model_dir)
    asyncio.run(loaded.warm_up())
    yield loaded
    asyncio.run(loaded.close())


async def transcribe(engine: FunAsrEngine | FunAsrServerEngine, pcm: bytes, **options) -> str:
    stream = engine.open_stream(**options)
    await stream.push(pcm)
    final = await stream.finish()
    await stream.close()
    return final.text


async def until(condition: Callable[[], bool], passes: int = 100) -> None:
    """Let the other tasks run, one event-loop pass at a time (no wall-clock wait), until `condition` holds."""
    for _ in range(passes):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached after {passes} event-loop passes")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- tiny model -----------------------------------------------------------------------------------------------

def test_tiny_model_is_deterministic_and_rebuilt_only_when_changed(tiny_model_dir: Path, tmp_path: Path) -> None:
    second = build_tiny_paraformer(tmp_path / "second")
    names = ["config.yaml", "model.pt", "tokens.json", "am.mvn"]
    for name in names:
        assert (second / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert json.loads((second / "tokens.json").read_text(encoding="utf-8")) == list(DEFAULT_TOKENS)
    modified = {name: (second / name).stat().st_mtime_ns for name in names}
    assert build_tiny_paraformer(second) == second
    assert {name: (second / name).stat().st_mtime_ns for name in names} == modified

    other_seed = build_tiny_paraformer(tmp_path / "seed1", seed=1)
    assert (other_seed / "model.pt").read_bytes() != (second / "model.pt").read_bytes()
    (second / "model.pt").write_bytes(b"damaged")
    build_tiny_paraformer(second)
    assert (second / "model.pt").read_bytes() == (tiny_model_dir / "model.pt").read_bytes()


def test_tiny_model_rejects_token_lists_paraformer_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first three tokens"):
        build_tiny_paraformer(tmp_path, tokens=["你", "<s>", "</s>", "<unk>"])
    with pytest.raises(ValueError, match="<unk>"):
        build_tiny_paraformer(tmp_path, tokens=["<blank>", "<s>", "</s>", "你"])


# --- in-process engine -----------------------------------------------------------------------------------------

async def test_partials_arrive_exactly_at_stride_boundaries_for_16k_input(engine: FunAsrEngine) -> None:
    stream = engine.open_stream(sample_rate_hz=16000)
    partial_frames = []
    for index, frame in enumerate(frames(AUDIO_16K, 2 * FRAME_BYTES), start=1):
        transcript = await stream.push(frame)
        if transcript is not None:
            assert not transcript.is_final
            partial_frames.append(index)
    final = await stream.finish()
    assert partial_frames and all(index % FRAMES_PER_STRIDE == 0 for index in partial_frames)
    assert final.is_final and final.text == await transcribe(engine, AUDIO_16K, sample_rate_hz=16000)


async def test_8k_frames_give_the_same_text_as_one_piece(engine: FunAsrEngine) -> None:
    stream = engine.open_stream()
    partials: list[tuple[int, str]] = []
    for index, frame in enumerate(frames(AUDIO_8K), start=1):
        transcript = await stream.push(frame)
        if transcript is not None:
            partials.append((index, transcript.text))
    final = await stream.finish()

    assert final.is_final and final.text
    assert final.text == await transcribe(engine, AUDIO_8K)
    strides = [index // FRAMES_PER_STRIDE for index, _ in partials]
    assert partials and len(set(strides)) == len(strides)  # at most one partial per stride
    assert all(index >= FRAMES_PER_STRIDE and index % FRAMES_PER_STRIDE < RESAMPLER_LAG_FRAMES
               for index, _ in partials)
    texts = [text for _, text in partials]
    assert all(final.text.startswith(text) for text in texts)  # cumulative
    assert texts == sorted(set(texts), key=len)  # each partial adds text


async def test_stream_is_reusable_after_finish(engine: FunAsrEngine) -> None:
    stream = engine.open_stream(hotwords=["养老金"])
    assert stream.hotwords == ("养老金",)
    texts = []
    for _ in range(2):
        for frame in frames(AUDIO_8K):
            await stream.push(frame)
        texts.append((await stream.finish()).text)
    empty = await stream.finish()
    await stream.close()
    assert texts[0] == texts[1] != ""
    assert empty.text == "" and empty.is_final


async def test_peek_gives_the_final_text_without_ending_the_utterance(engine: FunAsrEngine) -> None:
    pcm = speech_like_pcm(2.0)
    stream = engine.open_stream()
    for frame in frames(pcm):
        await stream.push(frame)
    peeked = await stream.peek()
    final = await stream.finish()  # the peek left the stream's own state untouched
    assert peeked.text and not peeked.is_final
    assert final.text == await transcribe(engine, pcm)
    assert peeked.text == final.text  # only the resampler's last milliseconds differ, not the words
    for frame in frames(pcm):
        await stream.push(frame)
    await stream.discard()
    assert (await stream.finish()).text == ""  # discarded: nothing left to decode
    await stream.close()


async def test_odd_byte_count_is_an_audio_format_error(engine: FunAsrEngine) -> None:
    stream = engine.open_stream()
    with pytest.raises(AudioFormatError, match="even byte count, got 3 bytes"):
        await stream.push(b"\x00\x01\x02")


async def test_punctuation_model_only_adds_marks(engine: FunAsrEngine, tmp_path: Path, tiny_model_dir: Path) -> None:
    punctuated_engine = FunAsrEngine(tiny_model_dir, punctuation_model=build_tiny_punctuation(tmp_path / "punc"))
    await punctuated_engine.warm_up()
    try:
        punctuated = await transcribe(punctuated_engine, AUDIO_8K)
    finally:
        await punctuated_engine.close()
    plain = await transcribe(engine, AUDIO_8K)
    marks = set("".join(PUNCTUATION_MARKS[2:]))
    assert punctuated != plain and set(punctuated) & marks
    assert "".join(character for character in punctuated if character not in marks) == plain


# --- model loading failures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_model", [
    lambda root: root / "absent",
    lambda root: str(root / "absent"),
    lambda root: "./absent/paraformer",
])
async def test_missing_model_directory_fails_at_once_without_the_network(make_model, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = make_model(tmp_path)
    assert not is_hub_name(model)
    unavailable = FunAsrEngine(model)
    started = time.perf_counter()
    with pytest.raises(AsrUnavailable, match=r"ASR model directory .*absent.* does not exist"):
        await unavailable.warm_up()
    await unavailable.close()
    assert time.perf_counter() - started < 1.0


async def test_broken_model_directories_name_the_directory_and_the_reason(tmp_path: Path) -> None:
    cases = {
        "empty": ({}, "has no config.yaml"),
        "no-weights": ({"config.yaml": "model: ParaformerStreaming\n"}, "has config.yaml but no model.pt"),
        "unknown-class": ({"config.yaml": "model: NoSuchModel\nmodel_conf: {}\n", "model.pt": ""},
                          "RuntimeError: model 'NoSuchModel' is not registered"),
        "bad-yaml": ({"config.yaml": "model: [unclosed\n", "model.pt": ""}, "ParserError"),
    }
    for name, (files, reason) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        for file_name, content in files.items():
            (directory / file_name).write_text(content)
        broken = FunAsrEngine(directory)
        with pytest.raises(AsrUnavailable) as caught:
            await broken.warm_up()
        await broken.close()
        assert str(directory) in str(caught.value) and reason in str(caught.value), name


async def test_hub_download_failure_says_the_name_is_not_a_local_directory(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import funasr

    def offline_auto_model(**options):
        raise RuntimeError(f"model '{options['model']}' is not registered.\nRegistered model keys ...")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(funasr, "AutoModel", offline_auto_model)
    assert is_hub_name("paraformer-zh-streaming") and is_hub_name("iic/speech_paraformer")
    hub_engine = FunAsrEngine("paraformer-zh-streaming")
    with pytest.raises(AsrUnavailable, match=r"'paraformer-zh-streaming' is not a local directory, so funasr tried "
                                             r"to download it from ModelScope, and that failed"):
        await hub_engine.warm_up()
    await hub_engine.close()


def test_engines_check_their_options_when_built(tiny_model_dir: Path) -> None:
    url = "ws://127.0.0.1:10095"
    assert FunAsrServerEngine(url, audio_fs=16000).piece_bytes == 1920  # 60 ms at 16 kHz
    assert FunAsrServerEngine(url).piece_bytes == 960  # 60 ms at 8 kHz
    with pytest.raises(ValueError, match="mode must be one of 2pass, online, offline, got 'batch'"):
        FunAsrServerEngine(url, mode="batch")
    with pytest.raises(ValueError, match="audio_fs must be 8000 or 16000, got 44100"):
        FunAsrServerEngine(url, audio_fs=44100)
    for build in (lambda: FunAsrServerEngine(url, chunk_size=(5, 0, 5)),
                  lambda: FunAsrEngine(tiny_model_dir, chunk_size=(0, 10))):
        with pytest.raises(ValueError, match="chunk_size must be three non-negative integers with a positive middle"):
            build()


@pytest.mark.parametrize(("value", "sizes"), [
    ([5, 10, 5], (5, 10, 5)), ("0,8,4", (0, 8, 4)), ((0, 10, 0), (0, 10, 0)),
    ((5, 0, 5), None), ((0, 10), None), ((-1, 10, 5), None), ("5,x,5", None), (None, None),
])
def test_one_chunk_size_rule(value: object, sizes: tuple[int, int, int] | None) -> None:
    assert parse_chunk_size(value) == sizes


# --- 2pass protocol messages -----------------------------------------------------------------------------------

def test_parses_the_funasr_python_client_configuration() -> None:
    frame = ('{"mode": "2pass", "chunk_size": [5, 10, 5], "chunk_interval": 10, "encoder_chunk_look_back": 4, '
             '"decoder_chunk_look_back": 0, "audio_fs": 16000, "wav_name": "microphone", "wav_format": "pcm", '
             '"is_speaking": true, "hotwords": "{\\"养老金\\": 20, \\"社保卡\\": 30}", "itn": true}')
    assert parse_client_message(frame) == StreamConfig(
        mode="2pass", chunk_size=(5, 10, 5), chunk_interval=10, wav_name="microphone", audio_fs=16000,
        hotwords=("养老金", "社保卡"), encoder_chunk_look_back=4, decoder_chunk_look_back=0)
    config = parse_client_message('{"mode": "online", "chunk_size": "0,8,4", "audio_fs": 8000, "hotwords": "a b"}')
    assert config.chunk_size == (0, 8, 4) and config.audio_fs == 8000 and config.hotwords == ("a", "b")
    assert parse_client_message(config.to_json()) == config
    assert parse_client_message('{"is_speaking": false}') == EndOfSpeech()
    assert parse_client_message('{"is_finished": true}') == EndOfSpeech()


@pytest.mark.parametrize(("frame", "message"), [
    ("hello", "text frame is not JSON: Expecting value at character 0"),
    ("[1, 2]", "text frame must be a JSON object, got list"),
    ('{"is_speaking": true}', 'expected a configuration with "mode" or {"is_speaking": false}'),
    ('{"mode": "batch"}', "mode must be one of 2pass, online, offline, got 'batch'"),
    ('{"mode": "2pass", "audio_fs": 44100}', "audio_fs must be 8000 or 16000, got 44100"),
    ('{"mode": "2pass", "chunk_size": "5,x,5"}', "chunk_size must be three non-negative integers like [5, 10, 5], got '5,x,5'"),
    ('{"mode": "2pass", "encoder_chunk_look_back": -1}', "encoder_chunk_look_back must be a non-negative integer, got -1"),
])
def test_rejects_malformed_client_frames_with_exact_messages(frame: str, message: str) -> None:
    with pytest.raises(AsrProtocolError) as caught:
        parse_client_message(frame)
    assert str(caught.value) == message


def test_server_messages_round_trip() -> None:
    online = RecognitionResult("2pass-online", "你好", "hotline-1", False)
    assert online.to_json() == '{"mode": "2pass-online", "text": "你好", "wav_name": "hotline-1", "is_final": false}'
    assert parse_server_message(online.to_json()) == online
    assert parse_server_message(ServerError("bad").to_json()) == ServerError("bad")
    with pytest.raises(AsrProtocolError, match="server result needs string mode and text"):
        parse_server_message('{"text": "x"}')


def test_session_state_table() -> None:
    assert next_state(SessionState.AWAITING_CONFIG, "config") is SessionState.CONFIGURED
    assert next_state(SessionState.CONFIGURED, "audio") is SessionState.SPEAKING
    assert next_state(SessionState.SPEAKING, "end") is SessionState.CONFIGURED
    with pytest.raises(AsrProtocolError, match="binary audio before the JSON configuration frame"):
        next_state(SessionState.AWAITING_CONFIG, "audio")
    with pytest.raises(AsrProtocolError, match="new configuration in the middle of an utterance"):
        next_state(SessionState.SPEAKING, "config")


# --- server and client on loopback -----------------------------------------------------------------------------

@pytest.fixture
async def server(engine: FunAsrEngine):
    running = FunAsrWebsocketServer(engine, "127.0.0.1", 0, max_message_bytes=64 * 1024)
    await running.start()
    yield running
    await running.stop()


async def test_client_and_server_give_the_in_process_text(engine: FunAsrEngine, server: FunAsrWebsocketServer) -> None:
    client = FunAsrServerEngine(server.url, hotwords=["社保卡"])
    await client.warm_up()
    stream = client.open_stream(hotwords=["养老金"])
    finals = []
    for _ in range(2):  # the stream is reused: a new connection per utterance
        for frame in frames(AUDIO_8K):
            transcript = await stream.push(frame)
            assert transcript is None or not transcript.is_final
        finals.append(await stream.finish())
    await stream.close()
    await client.close()
    expected = await transcribe(engine, AUDIO_8K, chunk_size=(5, 10, 5))  # the client's chunk_size
    assert [final.text for final in finals] == [expected, expected] and expected
    assert all(final.is_final for final in finals)


@pytest.mark.parametrize("mode", ["online", "offline"])
async def test_online_and_offline_modes_end_with_the_same_text(mode: str, engine: FunAsrEngine,
                                                              server: FunAsrWebsocketServer) -> None:
    stream = FunAsrServerEngine(server.url, mode=mode, chunk_size=(0, 10, 5)).open_stream()
    finals = []
    for _ in range(2):
        for frame in frames(AUDIO_8K):
            await stream.push(frame)
        finals.append((await stream.finish()).text)
    assert finals == [await transcribe(engine, AUDIO_8K)] * 2


async def test_client_upsamples_for_16k_servers(engine: FunAsrEngine, server: FunAsrWebsocketServer) -> None:
    client = FunAsrServerEngine(server.url, audio_fs=16000, chunk_size=(0, 10, 5))
    stream = client.open_stream()
    for frame in frames(AUDIO_8K):
        await stream.push(frame)
    final = await stream.finish()
    resampler = soxr.ResampleStream(8000, 16000, 1, dtype="float32")
    audio_16k = float_to_pcm16(resampler.resample_chunk(pcm16_to_float(AUDIO_8K), last=True))
    assert final.text and final.text == await transcribe(engine, audio_16k, sample_rate_hz=16000)


async def test_server_speaks_the_2pass_protocol_to_a_raw_client(engine: FunAsrEngine,
                                                                server: FunAsrWebsocketServer) -> None:
    config = {"mode": "2pass", "chunk_size": "0,10,5", "chunk_interval": 10, "wav_name": "raw", "audio_fs": 16000,
              "is_speaking": True, "hotwords": ""}
    async with connect(server.url, subprotocols=["binary"]) as websocket:
        assert websocket.subprotocol == "binary"
        await websocket.send(json.dumps(config))
        for frame in frames(AUDIO_16K, 1920):
            await websocket.send(frame)
        await websocket.send('{"is_speaking": false}')
        results = []
        while not results or results[-1]["mode"] != "2pass-offline":
            results.append(json.loads(await websocket.recv()))
    online = [result for result in results if result["mode"] == "2pass-online"]
    assert online and all(result["wav_name"] == "raw" and result["is_final"] is False for result in online)
    final = results[-1]
    assert final["is_final"] is True and final["wav_name"] == "raw"
    assert final["text"].startswith("".join(result["text"] for result in online))  # online texts are increments
    assert final["text"] == await transcribe(engine, AUDIO_16K, sample_rate_hz=16000)


async def test_malformed_frames_get_errors_and_the_server_keeps_serving(engine: FunAsrEngine,
                                                                        server: FunAsrWebsocketServer) -> None:
    async with connect(server.url, subprotocols=["binary"]) as websocket:
        await websocket.send("{not json")
        assert json.loads(await websocket.recv()) == {
            "mode": "error", "message": "text frame is not JSON: Expecting property name enclosed in double quotes "
                                        "at character 1"}
        await websocket.send(b"\x00\x00" * 160)
        assert json.loads(await websocket.recv()) == {
            "mode": "error", "message": "binary audio before the JSON configuration frame"}
        await websocket.send('{"mode": "2pass", "audio_fs": 8000}')
        await websocket.send(b"\x00\x00\x00")
        assert json.loads(await websocket.recv())["message"] == "16-bit PCM must have an even byte count, got 3 bytes"
        await websocket.send(bytes(64 * 1024 + 2))
        assert json.loads(await websocket.recv()) == {
            "mode": "error", "message": "message of 65538 bytes exceeds the limit of 65536"}
        with pytest.raises(ConnectionClosed) as closed:
            await websocket.recv()
        assert closed.value.rcvd.code == 1009
    assert await transcribe(FunAsrServerEngine(server.url), AUDIO_8K) == await transcribe(
        engine, AUDIO_8K, chunk_size=(5, 10, 5))


async def test_closed_port_is_unavailable_at_once() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    client = FunAsrServerEngine(url, connect_timeout_s=3.0)
    started = time.perf_counter()
    with pytest.raises(AsrUnavailable, match=f"cannot connect to the FunASR server at {url}"):
        await client.warm_up()
    stream = client.open_stream()
    with pytest.raises(AsrUnavailable, match=url):
        await stream.push(bytes(FRAME_BYTES))
    assert time.perf_counter() - started < 1.0
    assert (await stream.finish()).text == ""


async def test_hotline_asr_server_command_serves_the_in_process_text(engine: FunAsrEngine, tiny_model_dir: Path) -> None:
    """`hotline asr-server` as its own process (how ASR runs on another machine) with two model copies serving two
    calls at once, then stopped by SIGTERM."""
    import subprocess
    import sys
    import time

    port = free_port()
    command = [sys.executable, "-c", "from telephony.cli import main; main()", "asr-server",
               "--model", str(tiny_model_dir), "--port", str(port), "--engines", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = FunAsrServerEngine(f"ws://127.0.0.1:{port}", chunk_size=(0, 10, 5), connect_timeout_s=2.0)
        deadline = time.monotonic() + 120
        while True:
            try:
                await client.warm_up()
                break
            except AsrUnavailable:
                assert process.poll() is None, process.stderr.read().decode(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "asr-server did not start listening"
                await asyncio.sleep(0.2)  # polling a child process that is importing funasr
        pcm = speech_like_pcm(2.0)
        other = speech_like_pcm(2.0, seed=5)
        served = await asyncio.gather(transcribe(client, pcm), transcribe(client, other))
        assert list(served) == [await transcribe(engine, pcm), await transcribe(engine, other)]
        await client.close()
    finally:
        process.terminate()
        assert process.wait(30) == 0  # SIGTERM is a clean stop


async def test_capacity_benchmark_reports_real_time_streams(tiny_model_dir: Path) -> None:
    from voice.testing.capacity import measure_capacity

    report = await measure_capacity(tiny_model_dir, device="cpu", streams=[1, 3], engines=[1], seconds=1.3,
                                    utterance_chunks=2)
    assert report["chunk_ms"] == 600 and report["load_s"][0] > 0
    assert report["single_stream"]["chunk_ms_p50"] > 0 and report["single_stream"]["final_ms_p50"] > 0
    one, three = report["runs"]
    assert (one["streams"], three["streams"]) == (1, 3)
    # Every stream pushes a chunk at once and then every 600 ms until 1.3 s have passed: 3 chunks (t = 0, 0.6,
    # 1.2 s after its start offset), except a late starter whose third slot falls after the end.
    assert one["chunks"] == 3 and one["finals"] == 1
    assert 3 * 2 <= three["chunks"] <= 3 * 3 and three["finals"] == 3
    # The tiny model decodes a chunk in milliseconds: nothing falls behind real time.
    assert one["behind_real_time"] == 0 and three["behind_real_time"] == 0


async def test_engine_pool_spreads_streams_and_gives_each_engines_text(tiny_model_dir: Path, engine: FunAsrEngine) -> None:
    pool = FunAsrEnginePool.of(2, tiny_model_dir)
    try:
        await pool.warm_up()
        assert all(member.load_seconds is not None for member in pool.engines)
        streams = [pool.open_stream() for _ in range(3)]
        assert pool.open_streams() == [2, 1]
        await streams[0].close()
        assert pool.open_streams() == [1, 1]
        fourth = pool.open_stream()
        assert pool.open_streams() == [2, 1] and fourth.engine is pool.engines[0]
        # Every copy of the model decodes as the single engine does.
        pcm = speech_like_pcm(2.0)
        expected = await transcribe(engine, pcm)
        assert [await transcribe(member, pcm) for member in pool.engines] == [expected, expected]
    finally:
        await pool.close()


def test_engine_pool_needs_an_engine() -> None:
    with pytest.raises(ValueError, match="at least one engine"):
        FunAsrEnginePool([])


# --- decode scheduling: finals before streaming chunks -----------------------------------------------------------

def test_decode_queue_runs_urgent_work_first_and_expedites_one_owner() -> None:
    import threading

    queue = DecodeQueue()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []
    blocker = queue.submit(lambda: started.set() or release.wait(10))
    assert started.wait(5)
    first, second = object(), object()
    jobs = [queue.submit(ran.append, "a1", owner=first), queue.submit(ran.append, "b1", owner=second),
            queue.submit(ran.append, "a2", owner=first), queue.submit(ran.append, "final", urgent=True)]
    cancelled = queue.submit(ran.append, "cancelled")
    assert cancelled.cancel()
    queue.expedite(second)
    assert queue.depth() == (2, 2)
    release.set()
    for job in [blocker, *jobs]:
        job.result(timeout=5)
    assert ran == ["final", "b1", "a1", "a2"]  # expedited work joins the end of the urgent lane
    failing = queue.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    queue.submit(ran.append, "after shutdown was asked")
    queue.shutdown()  # runs what was queued, then stops
    assert ran[-1] == "after shutdown was asked"
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit(ran.append, "too late")


async def test_a_final_overtakes_chunks_of_other_streams(engine: FunAsrEngine) -> None:
    import threading

    expected = await transcribe(engine, AUDIO_8K)
    talking, ending = engine.open_stream(), engine.open_stream()
    await ending.push(AUDIO_8K[: len(AUDIO_8K) // 2])
    await ending.push(AUDIO_8K[len(AUDIO_8K) // 2:])
    started, release = threading.Event(), threading.Event()
    busy = asyncio.wrap_future(engine.queue.submit(lambda: started.set() or release.wait(10)))
    assert started.wait(5)
    done: list[str] = []

    async def run(name: str, work) -> object:
        result = await work
        done.append(name)
        return result

    chunk = asyncio.create_task(run("other stream's chunk", talking.push(AUDIO_8K)))
    await until(lambda: engine.queue.depth() == (0, 1))
    final = asyncio.create_task(run("final", ending.finish()))
    await until(lambda: engine.queue.depth() == (1, 1))
    release.set()
    await busy
    assert (await final).text == expected
    await chunk
    assert done == ["final", "other stream's chunk"]
    assert (await talking.finish()).text == expected
    await talking.close()
    await ending.close()


async def test_server_expedites_a_stream_as_soon_as_its_end_of_speech_arrives(
        engine: FunAsrEngine, server: FunAsrWebsocketServer) -> None:
    import threading

    started, release = threading.Event(), threading.Event()
    busy = asyncio.wrap_future(engine.queue.submit(lambda: started.set() or release.wait(10)))
    assert started.wait(5)
    config = json.dumps({"mode": "2pass", "chunk_size": [0, 10, 5], "audio_fs": 16000, "wav_name": "w"})
    stride = AUDIO_16K[: 9600 * 2]
    async with connect(server.url, subprotocols=["binary"]) as talking, \
            connect(server.url, subprotocols=["binary"]) as ending:
        for websocket in (talking, ending):
            await websocket.send(config)
            await websocket.send(stride)
        await ending.send('{"is_speaking": false}')
        for _ in range(100):
            if engine.queue.depth() == (1, 1):  # the ending stream's chunk moved to the urgent lane
                break
            await asyncio.sleep(0.02)
        assert engine.queue.depth() == (1, 1)
        release.set()
        await busy
        final = json.loads(await ending.recv())
        while final["mode"] != "2pass-offline":
            final = json.loads(await ending.recv())
        assert final["text"] == await transcribe(engine, stride, sample_rate_hz=16000)


async def test_audio_backlog_merges_only_audio_that_piled_up_and_keeps_order() -> None:
    from voice.base import AudioBacklog

    queue: asyncio.Queue = asyncio.Queue()
    for item in [b"a", b"b", b"c", "end", b"d", b"e", b"f", b"g"]:
        queue.put_nowait(item)
    backlog = AudioBacklog(queue, lambda item: item if isinstance(item, bytes) else None, max_items=2)
    taken = [await backlog.next() for _ in range(5)]
    assert taken == [(b"a", b"ab"), (b"c", b"c"), ("end", None), (b"d", b"de"), (b"f", b"fg")]
    queue.put_nowait(b"h")
    assert await backlog.next() == (b"h", b"h")  # nothing behind it: waits for the queue, not merged
