"""`hotline bench soak`: many simulated callers for many minutes against a real server process; what drifts.

`concurrency` slots each place calls back to back over the Media Streams websocket, in real time (each call: 2 or 3
of the bench's known questions, then it hangs up), with the slots' first calls spread over the first seconds. When
`minutes` are up no new call starts and the calls in flight finish; a hard deadline ends everything (calls
cancelled, then the server processes terminated and killed) whatever hangs. Reported: the calls and turns, latency
per minute, frames, the server's memory and open files over the run, and whether the database holds exactly the
turns and calls the callers made, all closed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

from telephony.bench.known_questions import BENCH_QUESTIONS, synthesize_questions
from telephony.bench.simulated_caller import CallReport, simulated_call
from telephony.bench.turn_latency import (
    _free_port,
    _rss_mb,
    _run_event_loop,
    _start_asr_server,
    _start_server,
    _wait_port,
    _wait_ready,
    dropped_caller_frames,
    dropped_frames_warning,
    in_fresh_workdir,
    percentile,
    recorded_caller_frames,
    stop_processes,
)
from telephony.store import Call, Database, Turn

SAMPLE_EVERY_S = 5.0  # server memory and open files
RAMP_S = 10.0  # the slots' first calls arrive spread over this long
WARM_UP_S = 60.0  # memory growth is measured from here (or from half the run, if shorter)
DRAIN_LIMIT_S = 120.0  # after the last minute: how long the calls in flight get to finish (a call takes ~10-20 s)
SETTLE_LIMIT_S = 30.0  # then: how long the server gets to close its last call records and write their turns
WATCHDOG_MARGIN_S = 60.0  # past drain and settle: the server processes are killed from a thread, whatever hangs
QUESTIONS_PER_CALL = (2, 3)
CALLER_PREFIX = "soak-"
# Memory bound: the server's RSS at the end (no call open) may exceed its RSS after the warm-up (all slots busy)
# by at most this share. Past the warm-up every cache (TTS, answers, SQLAlchemy statements) is filled by the
# handful of questions, and the calls open at warm-up hold ~0.15 MB each (docs/voice.md), which are freed by the end;
# what is left is allocator fragmentation, a few MB. 5 % of a ~700 MB server is ~35 MB: a leak of 7 KB per call
# over the ~5,000 calls of a 10-minute run at 100 slots exceeds it.
MEMORY_GROWTH_BOUND = 0.05
FD_GROWTH_BOUND = 10  # open files at the end over those at the start (sockets closing late, the log, the database)


@dataclass
class PlacedCall:
    slot: int
    caller: str
    questions: int
    placed_at: float  # seconds from the start of the calls
    report: CallReport | None = None
    error: str | None = None

    @property
    def completed(self) -> bool:
        """Every question spoken and answered, then the caller hung up."""
        return (self.report is not None and len(self.report.turns) == self.questions
                and all(turn.first_reply_at is not None for turn in self.report.turns))


@dataclass
class Sample:
    at_s: float  # from the start of the calls; negative: before it
    rss_mb: float | None
    fds: int | None
    asr_rss_mb: float | None = None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


_TCP_STATES = {"01": "established", "06": "time_wait", "07": "close", "08": "close_wait", "09": "last_ack",
               "0A": "listen", "04": "fin_wait1", "05": "fin_wait2", "0B": "closing"}


def _sockets(pid: int) -> dict[str, str]:
    """Socket inode → what it is: 'tcp <state> in on :port' (accepted on a port this process listens on), 'tcp
    <state> out to :port', 'tcp listen', or 'unix'."""
    tcp = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                tcp.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    listening = {local for local, _remote, state, _inode in tcp if state == "0A"}
    kinds = {}
    for local, remote, state, inode in tcp:
        name = _TCP_STATES.get(state, state)
        kinds[inode] = ("tcp listen" if state == "0A" else f"tcp {name} in on :{local}" if local in listening
                        else f"tcp {name} out to :{remote}")
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 7:
                kinds.setdefault(fields[6], "unix")
    return kinds


def open_fd_kinds(pid: int) -> dict[str, int]:
    """The server's open files by kind: sockets (TCP by state and direction, unix), pipe, anon_inode:[eventfd], or a
    file by its suffix (*.wav)."""
    kinds: Counter[str] = Counter()
    sockets = _sockets(pid)
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/"):
                    name = Path(target.removesuffix(" (deleted)"))
                    target = f"file *{''.join(name.suffixes[-1:])}" if name.suffix else f"file {name.name}"
                elif target.startswith("socket:["):
                    target = "socket " + sockets.get(target[8:-1], "other")
                elif not target.startswith("anon_inode"):
                    target = target.split(":[")[0]
                kinds[target] += 1
    return dict(sorted(kinds.items()))


def _sample(at_s: float, pid: int, asr_pid: int | None) -> Sample:
    def rss(process_id: int | None) -> float | None:
        if process_id is None:
            return None
        try:
            return round(_rss_mb(process_id), 1)
        except OSError:
            return None  # the process is gone

    return Sample(round(at_s, 1), rss(pid), open_fds(pid), rss(asr_pid))


def run_soak(concurrency: int = 100, minutes: float = 10.0, known_transcripts: bool = True, asr_server: bool = True,
             keep_workdir: bool = False, prerender: bool = True, server_settings: dict[str, str] | None = None,
             questions: tuple[str, ...] = BENCH_QUESTIONS) -> dict:
    """Run the soak in a fresh folder (server data, database, recordings: ~0.5 MB per call), removed afterwards
    unless `keep_workdir`. `prerender=False` starts the server without filling its TTS cache (minutes of espeak on
    a small machine): replies are rendered when first needed, which only short test runs should do.
    `server_settings`: further HOTLINE_ variables for the server (a test's cheaper engines). `questions`: which of
    the bench's questions the callers ask (the known-transcript server knows all of them)."""
    unknown = set(questions) - set(BENCH_QUESTIONS)
    if unknown or len(questions) < max(QUESTIONS_PER_CALL):
        raise ValueError(f"questions: at least {max(QUESTIONS_PER_CALL)} of {BENCH_QUESTIONS}, not {sorted(unknown)}")
    return in_fresh_workdir("hotline-soak-", keep_workdir, lambda workdir: _soak_in(
        workdir, concurrency, minutes, known_transcripts, asr_server, prerender, server_settings or {}, questions))


def _soak_in(workdir: Path, concurrency: int, minutes: float, known_transcripts: bool, asr_server: bool,
             prerender: bool, server_settings: dict[str, str], asked: tuple[str, ...]) -> dict:
    from voice.testing.tiny_models import build_tiny_paraformer

    setup_started = time.monotonic()
    model = build_tiny_paraformer(workdir / "tiny-paraformer")
    audio = dict(zip(BENCH_QUESTIONS, asyncio.run(synthesize_questions()), strict=True))
    questions = [audio[text] for text in asked]
    token = secrets.token_urlsafe(16)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    asr_process = server = None
    deadline_hit = threading.Event()
    watchdog: threading.Timer | None = None
    try:
        asr_url = None
        if asr_server:
            asr_port = _free_port()
            asr_process = _start_asr_server(model, asr_port)
            _wait_port(asr_port, asr_process)
            asr_url = f"ws://127.0.0.1:{asr_port}"
        settings = {**server_settings, **({} if prerender else {"HOTLINE_TTS_PRERENDER": "false"})}
        server = _start_server(workdir, model, token, port, asr_url, known_transcripts, settings=settings)
        _wait_ready(base, server, prerendered=prerender)
        asr_pid = asr_process.pid if asr_process else None
        start = _sample(0.0, server.pid, asr_pid)
        start_fd_kinds = open_fd_kinds(server.pid)
        setup_s = time.monotonic() - setup_started

        duration_s = minutes * 60

        def hard_stop() -> None:
            deadline_hit.set()
            stop_processes(server, asr_process, grace_s=5)

        watchdog = threading.Timer(duration_s + DRAIN_LIMIT_S + SETTLE_LIMIT_S + WATCHDOG_MARGIN_S, hard_stop)
        watchdog.daemon = True
        watchdog.start()
        samples: list[Sample] = []
        started, placed, cut_by_deadline, calls_s = _run_event_loop(_soak_calls(
            f"ws://127.0.0.1:{port}/media-stream?token={token}", questions, concurrency, duration_s,
            min(RAMP_S, duration_s / 2), samples, server.pid, asr_pid))
        settle_s = _settle(base, workdir, server)
        end = _sample(calls_s + settle_s, server.pid, asr_pid)
        fd_kinds = {"start": start_fd_kinds, "end": open_fd_kinds(server.pid)}
        stored = _stored(workdir)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        stop_processes(server, asr_process)
    result = _report(started, placed, samples, start, end, stored, concurrency, minutes, calls_s, cut_by_deadline,
                     deadline_hit.is_set(), known_transcripts)
    result["wall_s"]["setup"] = round(setup_s, 1)
    result["memory"]["server_fd_kinds"] = fd_kinds
    result["engines"] = {
        "asr": f"tiny random streaming Paraformer ({model}): plumbing cost, not the real model's",
        "asr_process": "separate FunASR 2pass server (1 engine)" if asr_server else "in process",
        "asr_text": ("the known question (correct-transcript assumption); decoding still runs"
                     if known_transcripts else "the model's own output"),
        "tts": "espeak-ng, prerendered cache" if prerender else "espeak-ng, rendered when first needed (no prerender)",
        "answers": "extractive", "database": "SQLite", "server_settings": server_settings,
        "questions": list(asked)}
    return result


async def _soak_calls(url: str, questions: list[bytes], concurrency: int, duration_s: float, ramp_s: float,
                      samples: list[Sample], pid: int,
                      asr_pid: int | None) -> tuple[float, list[PlacedCall], int, float]:
    """The calls phase: (its start on the monotonic clock, every call placed, slots cut by the hard deadline, seconds
    from its start to the last call closed)."""
    started = time.monotonic()
    stop_at = started + duration_s
    placed: list[PlacedCall] = []
    arrivals = random.Random(7)
    first_at = [arrivals.uniform(0, ramp_s) for _ in range(concurrency)]

    async def slot(index: int) -> None:
        await asyncio.sleep(first_at[index])  # the slot's first arrival
        choices = random.Random(index)
        while time.monotonic() < stop_at:
            chosen = choices.sample(questions, choices.choice(QUESTIONS_PER_CALL))
            call = PlacedCall(index, f"{CALLER_PREFIX}{index:03d}-{len(placed):06d}", len(chosen),
                              round(time.monotonic() - started, 1))
            placed.append(call)
            try:
                call.report = await simulated_call(url, chosen, caller=call.caller)
            except asyncio.CancelledError:
                call.error = "cancelled at the hard deadline"
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of one call is counted, the slot goes on
                call.error = f"{type(exc).__name__}: {exc}"[:200]
                await asyncio.sleep(1.0)  # a refused call is retried after a pause, not in a tight loop

    async def sample() -> None:
        while True:
            samples.append(_sample(time.monotonic() - started, pid, asr_pid))
            await asyncio.sleep(SAMPLE_EVERY_S)  # the sampling interval

    sampler = asyncio.create_task(sample())
    slots = [asyncio.create_task(slot(index)) for index in range(concurrency)]
    _done, pending = await asyncio.wait(slots, timeout=duration_s + DRAIN_LIMIT_S)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=15)  # cancelled calls close their sockets
    calls_s = time.monotonic() - started
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    return started, placed, len(pending), calls_s


def _settle(base: str, workdir: Path, server) -> float:
    """After the last call closed: until the server has no active call and its calls and turns rows stop changing
    (the turn log writes in the background), at most SETTLE_LIMIT_S. Returns the seconds waited."""
    started = time.monotonic()
    previous = None
    while time.monotonic() - started < SETTLE_LIMIT_S and server.poll() is None:
        try:
            active = httpx.get(f"{base}/readyz", timeout=5).json().get("voice", {}).get("active_calls")
        except (httpx.HTTPError, ValueError):
            active = None
        counts = _stored(workdir, with_recordings=False)
        if active == 0 and counts["calls_not_ended"] == 0 and counts == previous:
            break
        previous = counts
        time.sleep(1.0)  # polling the server and the database it writes to
    return time.monotonic() - started


def _stored(workdir: Path, with_recordings: bool = True) -> dict:
    database = Database(f"sqlite:///{workdir / 'bench.db'}")
    try:
        with database.session() as session:
            soak = Call.caller_number.like(f"{CALLER_PREFIX}%")
            counts = {
                "calls_rows": session.scalar(select(func.count()).select_from(Call).where(soak)),
                "calls_not_ended": session.scalar(select(func.count()).select_from(Call)
                                                  .where(soak, Call.ended_at.is_(None))),
                "turns_rows": session.scalar(select(func.count()).select_from(Turn).join(Call).where(soak)),
            }
            if with_recordings:
                counts["recordings"] = [tuple(row) for row in session.execute(
                    select(Call.caller_number, Call.recording_caller_path).where(soak))]
                counts["calls"] = {caller: (reason, rows) for caller, reason, rows in session.execute(
                    select(Call.caller_number, Call.end_reason, func.count(Turn.id)).outerjoin(Turn).where(soak)
                    .group_by(Call.id)).all()}
        return counts
    finally:
        database.close()


def _call_detail(call: PlacedCall, stored_calls: dict) -> dict:
    """One call whose rows differ from its turns: what the caller timed, turn by turn, beside what was stored."""
    reason, rows = stored_calls.get(call.caller, (None, 0))
    turns = call.report.turns if call.report else []
    return {"caller": call.caller, "end_reason": reason, "rows": rows, "spoken": len(turns),
            "reply_latency_ms": [turn.latency_ms for turn in turns],
            "barge_in_clear_ms": [turn.barge_in_clear_ms for turn in turns]}


def _latency(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95)}


def _report(started: float, placed: list[PlacedCall], samples: list[Sample], start: Sample, end: Sample, stored: dict,
            concurrency: int, minutes: float, calls_s: float, cut_by_deadline: int, killed: bool,
            known_transcripts: bool) -> dict:
    reports = [call.report for call in placed if call.report is not None]
    last_minute = max(0, -(-int(minutes * 60) // 60) - 1)

    def minute(at: float) -> int:  # turns of the drain after the last minute count in the last minute
        return min(last_minute, max(0, int((at - started) // 60)))

    turns = [turn for report in reports for turn in report.turns]
    latencies = [turn.latency_ms for turn in turns if turn.latency_ms is not None]
    per_minute = []
    for index in range(last_minute + 1):
        values = [turn.latency_ms for turn in turns
                  if turn.latency_ms is not None and minute(turn.speech_end_sent_at) == index]
        in_minute = [sample for sample in samples if index * 60 <= sample.at_s < (index + 1) * 60]
        per_minute.append({
            "minute": index + 1, "turns_answered": len(values), **_latency(values),
            "calls_placed": sum(1 for call in placed if minute(started + call.placed_at) == index),
            "server_rss_mb": in_minute[-1].rss_mb if in_minute else None,
            "server_fds": in_minute[-1].fds if in_minute else None})

    frames_sent = sum(report.frames_sent for report in reports)
    dropped = dropped_caller_frames(reports, stored["recordings"])
    memory = _memory(samples, start, end, minutes)
    answered = len(latencies)
    spoken = len(turns)
    # A call the server ended (a handoff's goodbye, then it hangs up) may have heard one more question from its
    # caller, spoken over the goodbye: not a turn for the dialogue, so no row. Every other call: one row a turn.
    lost: list[str] = []
    after_server_end: list[str] = []
    whole = {caller for caller, path in stored["recordings"]  # calls whose every frame reached the server
             if dropped_caller_frames(reports, [(caller, path)]) == 0 and recorded_caller_frames(path) is not None}
    lost_whole = 0
    for call in placed:
        if call.report is None:
            continue
        reason, rows = stored["calls"].get(call.caller, (None, 0))
        lost_whole += call.caller in whole and rows != len(call.report.turns)
        if rows != len(call.report.turns):
            (lost if reason == "caller_hangup" or rows > len(call.report.turns) else after_server_end).append(
                call.caller)
    database = {
        "turns_rows": stored["turns_rows"], "turns_spoken": spoken, "turns_answered": answered,
        "rows_match_turns_spoken": stored["turns_rows"] == spoken,
        "calls_with_other_row_count": len(lost) + len(after_server_end),
        "calls_hung_up_by_caller_with_other_row_count": len(lost),
        "calls_ended_by_server_with_fewer_rows": len(after_server_end),
        "calls_with_other_row_count_sample": [_call_detail(call, stored["calls"]) for call in placed
                                               if call.caller in set(sorted(lost + after_server_end)[:10])],
        # Attribution: a turn the server never heard whole (frames dropped) has no row by design.
        "calls_without_dropped_frames": len(whole),
        "calls_without_dropped_frames_with_other_row_count": lost_whole,
        "calls_rows": stored["calls_rows"], "calls_placed": len(placed),
        "calls_connected": len(reports),
        "calls_not_ended": stored["calls_not_ended"],
        "end_reasons": dict(Counter(reason or "none" for reason, _rows in stored["calls"].values()))}

    warnings = list(filter(None, [dropped_frames_warning(dropped, frames_sent)]))
    if spoken - answered:
        warnings.append(f"{spoken - answered} turns got no reply the callers could time")
    if lost:
        warnings.append(f"{len(lost)} calls the caller hung up have another number of turn rows than turns spoken "
                        f"(the database holds {stored['turns_rows']} turns for {spoken} spoken in all)")
    if after_server_end:
        warnings.append(f"{len(after_server_end)} calls the server ended (end reasons: {database['end_reasons']}) "
                        "heard questions after it had ended the dialogue: those are not turns, and the callers "
                        "timed the goodbye as their reply")
    if stored["calls_not_ended"]:
        warnings.append(f"{stored['calls_not_ended']} calls have no ended_at after the last call closed")
    if memory["memory_ok"] is False:
        warnings.append(f"server memory grew {memory['growth_mb']} MB from the warm-up to the end, over the bound "
                        f"of {memory['bound_mb']} MB")
    if end.fds is not None and start.fds is not None and end.fds - start.fds > FD_GROWTH_BOUND:
        warnings.append(f"the server had {end.fds} open files at the end, {start.fds} at the start")
    if cut_by_deadline or killed:
        warnings.append(f"the hard deadline cut {cut_by_deadline} calls in flight"
                        + (" and killed the server processes" if killed else ""))
    failures = Counter((call.error or "").split(":")[0] for call in placed if call.error)
    return {
        "concurrency": concurrency, "minutes": minutes,
        "transcripts": "known" if known_transcripts else "model",
        "calls": {"placed": len(placed), "completed": sum(call.completed for call in placed),
                  "cut_short": sum(1 for call in placed if call.report is not None and not call.completed),
                  "failed": sum(1 for call in placed if call.report is None),
                  "failures": dict(failures),
                  "cut_by_deadline": cut_by_deadline},
        # Each question is spoken over the assistant: with no clear from the server, the server did not hear it as a
        # barge-in, and the "reply" its caller timed may be the earlier reply still playing.
        "turns": {"spoken": spoken, "answered": answered, "no_reply": spoken - answered,
                  "without_barge_in_clear": sum(turn.barge_in_clear_ms is None for turn in turns)},
        "latency_ms": {**_latency(latencies), "per_minute": per_minute,
                       "measured": "end of the caller's speech → first reply audio the caller received"},
        "frames": {"caller_frames_sent": frames_sent, "dropped_caller_frames": dropped,
                   "late_caller_sends": sum(report.late_sends for report in reports),
                   "reply_chunks": sum(report.reply_chunks for report in reports),
                   "late_reply_chunks": sum(report.late_reply_chunks for report in reports)},
        "memory": memory,
        "database": database,
        "wall_s": {"calls": round(calls_s, 1), "settle": round(end.at_s - calls_s, 1)},
        "warnings": warnings,
    }


def _memory(samples: list[Sample], start: Sample, end: Sample, minutes: float) -> dict:
    warm_up_at = min(WARM_UP_S, minutes * 60 / 2)
    warm = next((sample for sample in samples if sample.at_s >= warm_up_at and sample.rss_mb is not None), None)
    if warm is None:  # the run ended before: its last sample
        warm = next((sample for sample in reversed(samples) if sample.rss_mb is not None), start)
    measured = [sample.rss_mb for sample in [start, *samples, end] if sample.rss_mb is not None]
    growth = bound = None
    memory_ok = None
    if warm.rss_mb is not None and end.rss_mb is not None:
        growth = round(end.rss_mb - warm.rss_mb, 1)
        bound = round(MEMORY_GROWTH_BOUND * warm.rss_mb, 1)
        memory_ok = growth <= bound
    asr = [sample.asr_rss_mb for sample in samples if sample.asr_rss_mb is not None]
    return {
        "server_rss_mb": {"start": start.rss_mb, "warm_up": warm.rss_mb, "peak": max(measured, default=None),
                          "end": end.rss_mb},
        "warm_up_at_s": warm.at_s, "end_at_s": end.at_s,
        "growth_mb": growth, "bound_mb": bound, "memory_ok": memory_ok,
        "bound": f"RSS at the end (no call open) ≤ RSS after the warm-up (all slots busy) + "
                 f"{MEMORY_GROWTH_BOUND:.0%} of it",
        "server_fds": {"start": start.fds, "warm_up": warm.fds,
                       "peak": max((sample.fds for sample in samples if sample.fds is not None), default=None),
                       "end": end.fds},
        "asr_server_rss_mb": {"start": start.asr_rss_mb, "peak": max(asr, default=None), "end": end.asr_rss_mb}
        if start.asr_rss_mb is not None else None,
        "samples": [[sample.at_s, sample.rss_mb, sample.fds] for sample in samples],
        "sampled_every_s": SAMPLE_EVERY_S,
    }
