"""`hotline bench soak`, for real but tiny: a server process, three callers placing calls back to back for half a
minute; what the report says must match what the database holds."""

from __future__ import annotations

import numbers

from telephony.bench.known_questions import BENCH_QUESTIONS
from telephony.bench.soak import run_soak
from tests.voicefixtures import require_espeak


def test_a_short_soak_stores_every_spoken_turn_and_closes_every_call() -> None:
    require_espeak()
    # Cheaper than the real soak's server, to keep this test near a minute: no TTS prerender (filling the cache is
    # minutes of espeak on a small machine; replies render when first needed), no sentence encoder, the ASR in
    # process. Lexical retrieval alone hands 灵活就业怎么交社保 off (the call ends there), so it is not asked.
    asked = tuple(question for question in BENCH_QUESTIONS if question != "灵活就业怎么交社保")
    result = run_soak(concurrency=3, minutes=0.5, asr_server=False, prerender=False,
                      server_settings={"HOTLINE_EMBEDDING_BACKEND": "none"}, questions=asked)

    assert set(result) >= {"concurrency", "minutes", "calls", "turns", "latency_ms", "frames", "memory", "database",
                           "warnings", "engines", "wall_s"}
    calls, turns, database = result["calls"], result["turns"], result["database"]
    assert calls["completed"] > 0
    assert calls["placed"] == calls["completed"] + calls["cut_short"] + calls["failed"]
    assert calls["cut_by_deadline"] == 0
    assert turns["spoken"] >= 2 * calls["completed"]
    assert turns["answered"] + turns["no_reply"] == turns["spoken"]

    # One row per turn spoken, but for a last question the server never heard as a barge-in over its previous reply
    # before the caller hung up (docs/soak.md: the caller timed that reply still playing): no turn, so no row.
    differ = database["calls_with_other_row_count_sample"]
    assert database["calls_with_other_row_count"] == len(differ)
    for call in differ:
        assert call["rows"] == call["spoken"] - 1 and call["barge_in_clear_ms"][-1] is None, call
    assert database["turns_rows"] == turns["spoken"] - len(differ)
    assert database["rows_match_turns_spoken"] is (not differ)
    assert database["calls_not_ended"] == 0
    assert database["end_reasons"] == {"caller_hangup": database["calls_rows"]}
    assert database["calls_rows"] == database["calls_connected"] == calls["placed"] - calls["failed"]

    memory = result["memory"]
    for key in ("start", "warm_up", "peak", "end"):
        assert isinstance(memory["server_rss_mb"][key], numbers.Real) and memory["server_rss_mb"][key] > 0
        assert isinstance(memory["server_fds"][key], int) and memory["server_fds"][key] > 0
    assert memory["server_rss_mb"]["peak"] >= max(memory["server_rss_mb"]["start"], memory["server_rss_mb"]["end"])
    assert isinstance(memory["growth_mb"], numbers.Real) and isinstance(memory["bound_mb"], numbers.Real)
    assert isinstance(memory["memory_ok"], bool)
    assert memory["samples"] and memory["warm_up_at_s"] >= 15.0

    latency = result["latency_ms"]
    assert [row["minute"] for row in latency["per_minute"]] == [1]
    assert latency["per_minute"][0]["turns_answered"] == turns["answered"]
    assert isinstance(latency["p95_ms"], numbers.Real)
    frames = result["frames"]
    assert frames["caller_frames_sent"] > 0 and frames["reply_chunks"] > 0
    assert set(frames) == {"caller_frames_sent", "dropped_caller_frames", "late_caller_sends", "reply_chunks",
                           "late_reply_chunks"}
    assert "workdir" not in result
