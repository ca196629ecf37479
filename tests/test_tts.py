"""TTS engines against a local fake edge-tts service and the real espeak-ng: streaming, fallback, cache, prerender."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import edge_tts.communicate
import edge_tts.constants
import numpy as np
import pytest

from telephony.bench.doubles.edge_tts_server import MP3_BITRATE_BPS, FakeEdgeTtsServer, render_mp3
from voice.base import TELEPHONY_RATE_HZ, TtsUnavailable
from voice.tts import (
    EdgeTtsEngine,
    EspeakTtsEngine,
    PrerenderReport,
    ResilientTts,
    SynthesisOutcome,
    TtsCache,
    TtsStatus,
    clauses,
    normalize_text_for_speech,
)

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")

GREETING = "您好，这里是社保热线，请问有什么可以帮您？"
BYTES_PER_SECOND = TELEPHONY_RATE_HZ * 2
SHORT_DEADLINE_MS = 200


@pytest.fixture
async def edge_server() -> AsyncIterator[FakeEdgeTtsServer]:
    async with FakeEdgeTtsServer() as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> TtsCache:
    return TtsCache(tmp_path / "tts-cache")


def resilient(server: FakeEdgeTtsServer, cache: TtsCache | None, **options) -> ResilientTts:
    primary = EdgeTtsEngine(rate="+0%", endpoint_url=server.endpoint_url, receive_timeout_s=2.0)
    options.setdefault("first_audio_deadline_ms", SHORT_DEADLINE_MS)
    return ResilientTts(primary, EspeakTtsEngine(), cache, **options)


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def spoken(tts: ResilientTts, text: str) -> tuple[bytes, SynthesisOutcome | None]:
    """One utterance's audio and the outcome that synthesis reported."""
    synthesis = tts.synthesize(text)
    return b"".join(await collect(synthesis)), synthesis.outcome


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype="<i2").astype(np.float64) ** 2)))


# --- EdgeTtsEngine ---------------------------------------------------------------------------------------------------


async def test_edge_engine_streams_8khz_pcm_as_long_as_the_served_mp3(edge_server: FakeEdgeTtsServer) -> None:
    engine = EdgeTtsEngine("zh-CN-YunxiNeural", rate="+10%", endpoint_url=edge_server.endpoint_url)

    chunks = await collect(engine.synthesize(GREETING))

    mp3_seconds = len(render_mp3(GREETING, "+10%")) * 8 / MP3_BITRATE_BPS  # CBR: duration from the byte count
    assert len(chunks) > 1, "audio should arrive in several chunks, not in one piece at the end"
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    assert abs(sum(map(len, chunks)) / BYTES_PER_SECOND - mp3_seconds) < 0.06
    assert rms(b"".join(chunks)) > 300
    [request] = edge_server.requests
    assert (request.voice, request.rate, request.text) == ("zh-CN-YunxiNeural", "+10%", GREETING)
    assert request.service_voice == "Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiNeural)"
    assert request.output_format == "audio-24khz-48kbitrate-mono-mp3"


async def test_edge_engines_with_different_endpoints_run_concurrently_without_leaking() -> None:
    async with FakeEdgeTtsServer() as first_server, FakeEdgeTtsServer() as second_server:
        first = EdgeTtsEngine(endpoint_url=first_server.endpoint_url)
        second = EdgeTtsEngine(endpoint_url=second_server.endpoint_url)

        first_audio, second_audio = await asyncio.gather(collect(first.synthesize("第一句")), collect(second.synthesize("第二句")))

        assert first_audio and second_audio
        assert [request.text for request in first_server.requests] == ["第一句"]
        assert [request.text for request in second_server.requests] == ["第二句"]
    assert f"{edge_tts.communicate.WSS_URL}" == edge_tts.constants.WSS_URL  # code outside an engine sees the real URL


# The double renders its MP3 with espeak-ng before sending: only the hang is timed by the short receive timeout, the
# others get one a loaded machine cannot reach.
@pytest.mark.parametrize(("behaviour", "message", "receive_timeout_s"), [
    ("error_before_audio", "NoAudioReceived", 10.0),
    ("error_mid_stream", "ended before turn.end", 10.0),
    ("hang", "sent no audio for 0.3 s", 0.3),
])
async def test_edge_engine_failures_raise_tts_unavailable(edge_server: FakeEdgeTtsServer, behaviour: str, message: str,
                                                          receive_timeout_s: float) -> None:
    edge_server.behaviour = behaviour
    engine = EdgeTtsEngine(endpoint_url=edge_server.endpoint_url, receive_timeout_s=receive_timeout_s)

    with pytest.raises(TtsUnavailable, match=message):
        await collect(engine.synthesize(GREETING))


async def test_edge_engine_unreachable_host_raises_tts_unavailable() -> None:
    engine = EdgeTtsEngine(endpoint_url="ws://edge-tts.invalid/v1?TrustedClientToken=x", connect_timeout_s=1)

    with pytest.raises(TtsUnavailable, match="edge-tts failed at ws://edge-tts.invalid/v1: ClientConnector"):
        await collect(engine.synthesize(GREETING))


def test_edge_engine_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="rate"):
        EdgeTtsEngine(rate="fast")
    with pytest.raises(ValueError, match="query string"):
        EdgeTtsEngine(endpoint_url="ws://127.0.0.1:1/v1")


# --- EspeakTtsEngine -------------------------------------------------------------------------------------------------


async def test_espeak_engine_produces_audible_8khz_speech() -> None:
    pcm = b"".join(await collect(EspeakTtsEngine().synthesize("您好，这里是社保热线")))

    assert 1.0 < len(pcm) / BYTES_PER_SECOND < 4.0  # ten syllables at 200 words per minute
    assert rms(pcm) > 300


def _open_pipes_and_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(("pipe:", "socket:"))
    return count


async def test_a_cut_espeak_render_is_reaped_and_leaves_no_pipe_open() -> None:
    """A reply cut short (barge-in, hang-up) once espeak-ng has filled its stdout: closing the stream ends the
    process and closes its pipes. Before, `Process.wait()` (Python < 3.12) waited for a pipe that nobody would read
    again: the close hung and each cut reply kept its pipes and socket pair (the soak's growing unix sockets)."""
    text = "失业保险累计缴费满三年的，失业保险金最长可以领十二个月，还要符合非本人意愿失业等条件。" * 6
    engine = EspeakTtsEngine()
    before = _open_pipes_and_sockets()
    for _ in range(3):
        stream = engine.synthesize(text)
        await anext(stream)
        await asyncio.sleep(1.0)  # espeak-ng writes ahead until its stdout pipe is full (~40 s of audio here)
        await asyncio.wait_for(stream.aclose(), 20)
    assert _open_pipes_and_sockets() == before


async def test_espeak_engine_missing_binary_names_the_install_command() -> None:
    engine = EspeakTtsEngine(binary="espeak-ng-not-installed")

    with pytest.raises(TtsUnavailable, match="apt-get install espeak-ng"):
        await collect(engine.synthesize("您好"))


@pytest.mark.parametrize(("text", "spoken"), [
    ("12345678", "幺二三四 五六七八"),
    ("请拨打13812345678咨询", "请拨打幺三八 幺二三四 五六七八咨询"),
    ("电话0773-1234567", "电话零七七三 幺二三 四五六七"),
    ("社保热线12333", "社保热线幺二三三三"),
    ("补缴1500元，共2000000元", "补缴1500元，共2000000元"),
    ("单位缴费比例16%", "单位缴费比例百分之16"),
    ("费率0.5%", "费率百分之0点五"),
    ("详见https://example.gov.cn/a?b=1。", "详见。"),
    ("## 办理材料\n- **身份证**\n- `社保卡`", "办理材料 身份证 社保卡"),
    ("点击[这里](http://x.cn)查询", "点击这里查询"),
])
def test_normalize_text_for_speech(text: str, spoken: str) -> None:
    assert normalize_text_for_speech(text) == spoken


# --- TtsCache --------------------------------------------------------------------------------------------------------


def test_cache_round_trip_and_corrupted_files(cache: TtsCache) -> None:
    key = TtsCache.key_for("edge", "zh-CN-XiaoxiaoNeural", "+0%", GREETING)
    assert cache.get(key) is None
    cache.put(key, b"\x01\x02" * 800)
    assert cache.get(key) == b"\x01\x02" * 800

    [stored] = list(cache.directory.iterdir())
    stored.write_bytes(stored.read_bytes()[:-100])  # a torn write
    assert cache.get(key) is None
    cache.put(key, b"\x03\x04" * 10)
    assert cache.get(key) == b"\x03\x04" * 10
    assert TtsCache.key_for("edge", "zh-CN-XiaoxiaoNeural", "+10%", GREETING) != key


def test_cache_size_cap_evicts_oldest(tmp_path: Path) -> None:
    cache = TtsCache(tmp_path, max_bytes=5000)
    keys = [TtsCache.key_for("edge", "voice", "+0%", str(index)) for index in range(3)]
    for key in keys:
        cache.put(key, bytes(2000))

    assert cache.get(keys[0]) is None
    assert cache.get(keys[2]) == bytes(2000)


# --- ResilientTts ----------------------------------------------------------------------------------------------------


async def test_resilient_uses_primary_and_serves_the_second_request_from_cache(edge_server: FakeEdgeTtsServer, cache: TtsCache) -> None:
    tts = resilient(edge_server, cache)

    first_synthesis = tts.synthesize(GREETING)
    first = await collect(first_synthesis)
    assert first_synthesis.outcome == SynthesisOutcome("edge", from_cache=False, complete=True)
    second_synthesis = tts.synthesize(GREETING)
    second = await collect(second_synthesis)

    assert len(edge_server.requests) == 1
    assert second_synthesis.outcome == SynthesisOutcome("edge", from_cache=True, complete=True)
    assert b"".join(second) == b"".join(first)
    assert {len(chunk) for chunk in second[:-1]} == {640}  # 40 ms chunks


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("slow_first_audio", f"no audio within {SHORT_DEADLINE_MS} ms"),
    ("hang", f"no audio within {SHORT_DEADLINE_MS} ms"),
    ("error_before_audio", "NoAudioReceived"),
])
async def test_resilient_falls_back_to_espeak_for_the_whole_utterance(
        edge_server: FakeEdgeTtsServer, cache: TtsCache, behaviour: str, reason: str) -> None:
    edge_server.behaviour, edge_server.first_audio_delay_s = behaviour, 2.0
    tts = resilient(edge_server, cache)

    pcm, outcome = await spoken(tts, GREETING)

    assert outcome.engine == "espeak"
    assert reason in outcome.fallback_reason
    assert len(pcm) / BYTES_PER_SECOND > 1.0 and rms(pcm) > 300
    assert cache.get(TtsCache.key_for("edge", "zh-CN-XiaoxiaoNeural", "+0%", GREETING)) is None
    assert list(cache.directory.iterdir()) == []  # fallback audio is never cached


async def test_resilient_ends_early_and_caches_nothing_when_primary_fails_mid_stream(
        edge_server: FakeEdgeTtsServer, cache: TtsCache) -> None:
    edge_server.behaviour = "error_mid_stream"
    tts = resilient(edge_server, cache)

    pcm, outcome = await spoken(tts, GREETING)

    assert pcm
    assert outcome == SynthesisOutcome("edge", from_cache=False, complete=False)
    assert list(cache.directory.iterdir()) == []


async def test_closing_the_stream_early_stops_the_primary_and_caches_nothing(edge_server: FakeEdgeTtsServer, cache: TtsCache) -> None:
    edge_server.frame_interval_s = 0.05  # the caller barges in while audio is still arriving
    tts = resilient(edge_server, cache)
    stream = tts.synthesize(GREETING)

    first = await anext(stream)
    await stream.aclose()

    assert first and stream.outcome.engine == "edge"
    assert list(cache.directory.iterdir()) == []


async def test_resilient_rerenders_a_corrupted_cache_file(edge_server: FakeEdgeTtsServer, cache: TtsCache) -> None:
    tts = resilient(edge_server, cache)
    first, _ = await spoken(tts, GREETING)
    for path in cache.directory.iterdir():
        path.write_bytes(b"garbage")

    second, outcome = await spoken(tts, GREETING)

    assert len(edge_server.requests) == 2
    assert second == first
    assert outcome.from_cache is False
    assert cache.get(TtsCache.key_for("edge", "zh-CN-XiaoxiaoNeural", "+0%", GREETING)) == first


async def test_resilient_skips_a_failing_primary_during_its_cooldown(edge_server: FakeEdgeTtsServer) -> None:
    now = [0.0]
    edge_server.behaviour = "error_before_audio"
    # A generous deadline: this is about the cooldown, and a busy machine must not turn edge's answer into a miss.
    tts = resilient(edge_server, None, failures_before_cooldown=2, primary_cooldown_s=30.0, clock=lambda: now[0],
                    first_audio_deadline_ms=3000)

    for _ in range(3):
        _, outcome = await spoken(tts, "请稍等")
    assert len(edge_server.requests) == 2
    assert "cooling down" in outcome.fallback_reason

    now[0] = 31.0
    edge_server.behaviour = "normal"
    _, outcome = await spoken(tts, "请稍等")
    assert (len(edge_server.requests), outcome.engine) == (3, "edge")


async def test_status_says_since_and_until_when_the_primary_is_skipped(edge_server: FakeEdgeTtsServer) -> None:
    now = [100.0]
    edge_server.behaviour = "error_before_audio"
    # A generous deadline: this is about the cooldown, and a busy machine must not turn edge's answer into a miss.
    tts = resilient(edge_server, None, failures_before_cooldown=2, primary_cooldown_s=30.0, clock=lambda: now[0],
                    first_audio_deadline_ms=3000)
    assert tts.status() == TtsStatus("edge", "espeak") and tts.status().primary_available

    await spoken(tts, "请稍等")
    assert tts.status().primary_available  # one failure is not a cooldown yet
    now[0] = 101.0
    await spoken(tts, "请稍等")
    status = tts.status()
    assert status == TtsStatus("edge", "espeak", primary_cooling_down_since=101.0, primary_cooling_down_until=131.0)
    assert not status.primary_available

    now[0] = 131.0
    assert tts.status() == TtsStatus("edge", "espeak")  # the cooldown is over: the primary is tried again


async def test_concurrent_syntheses_each_report_their_own_outcome(edge_server: FakeEdgeTtsServer,
                                                                  cache: TtsCache) -> None:
    tts = resilient(edge_server, cache)
    await tts.prerender(["您好"])
    edge_server.behaviour = "error_before_audio"

    cached, falling_back = tts.synthesize("您好"), tts.synthesize(GREETING)
    assert (cached.outcome, falling_back.outcome) == (None, None)  # nothing known before the first chunk
    assert await anext(cached) and await anext(falling_back)  # both under way: the second must not overwrite the first
    await asyncio.gather(collect(cached), collect(falling_back))

    assert cached.outcome == SynthesisOutcome("edge", from_cache=True, complete=True)
    assert falling_back.outcome.engine == "espeak" and "NoAudioReceived" in falling_back.outcome.fallback_reason


async def test_prerender_reports_rendered_cached_and_failed(edge_server: FakeEdgeTtsServer, cache: TtsCache) -> None:
    tts = resilient(edge_server, cache)
    await collect(tts.synthesize("您好"))

    report = await tts.prerender(["您好", "请稍等", "再见", "请稍等", " "], concurrency=2)

    assert report == PrerenderReport(rendered=2, cached=1, failed=0)
    assert len(edge_server.requests) == 3
    edge_server.behaviour = "error_before_audio"
    report = await tts.prerender(["再见", "转人工"])
    assert report == PrerenderReport(rendered=0, cached=1, failed=1, failed_texts=("转人工",))
    _, outcome = await spoken(tts, "请稍等")
    assert outcome.from_cache is True


async def test_a_reply_whose_clauses_are_cached_is_stitched_without_the_engine(edge_server: FakeEdgeTtsServer,
                                                                                cache: TtsCache) -> None:
    tts = resilient(edge_server, cache)
    await tts.prerender(["请问您问的是“失业保险金申领”，", "还是“社会保障卡挂失与解挂”？"])
    first = b"".join(await collect(tts.synthesize("请问您问的是“失业保险金申领”，")))
    second = b"".join(await collect(tts.synthesize("还是“社会保障卡挂失与解挂”？")))
    rendered = len(edge_server.requests)

    stitched, outcome = await spoken(tts, "请问您问的是“失业保险金申领”，还是“社会保障卡挂失与解挂”？")

    assert first and second and stitched == first + second and len(edge_server.requests) == rendered  # no new render
    assert outcome == SynthesisOutcome("edge", from_cache=True, complete=True)
    # One clause missing: the whole text is rendered by the engine, not a partial stitch.
    _, outcome = await spoken(tts, "请问您问的是“失业保险金申领”，还是“养老金资格认证”？")
    assert len(edge_server.requests) == rendered + 1 and outcome.from_cache is False


def test_clauses_keep_their_marks_and_drop_empty_parts() -> None:
    assert clauses("请问您问的是“甲”，还是“乙”？") == ["请问您问的是“甲”，", "还是“乙”？"]
    assert clauses("好的。请稍候！ ") == ["好的。", "请稍候！"]
    assert clauses("没有标点") == ["没有标点"]


def test_engines_carry_the_identity_their_renders_are_cached_under() -> None:
    edge = EdgeTtsEngine(voice="zh-CN-YunxiNeural", rate="+5%")
    espeak = EspeakTtsEngine(speed_wpm=180)

    assert (edge.name, edge.voice, edge.rate) == ("edge", "zh-CN-YunxiNeural", "+5%")
    assert (espeak.name, espeak.voice, espeak.rate, espeak.speed_wpm) == ("espeak", "cmn-latn-pinyin", "180wpm", 180)


class _HungEngine:
    """An engine that never sends its first audio (espeak-ng stopped, a frozen disk)."""

    name, voice, rate = "hung", "v", "+0%"

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""  # pragma: no cover - never reached


async def test_a_hung_fallback_fails_the_utterance_instead_of_holding_dead_air() -> None:
    """`hotline bench faults`, tts-espeak stall: primary and fallback both hang; the utterance fails after the
    fallback's deadline, so the call goes on to its next sentence."""
    tts = ResilientTts(_HungEngine(), _HungEngine(), None, first_audio_deadline_ms=50, fallback_deadline_ms=100)
    synthesis = tts.synthesize("社保卡丢了怎么办")
    with pytest.raises(TtsUnavailable, match="both TTS engines failed: hung: no audio within 50 ms; hung: no audio "
                                             "within 100 ms"):
        await asyncio.wait_for(collect(synthesis), 10)
