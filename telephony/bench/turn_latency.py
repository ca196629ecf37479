"""`hotline bench turn-latency`: simulated callers over the Media Streams websocket against a real server process,
in real time; end of caller speech → first reply audio, per stage, under concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import httpx

from telephony.bench.known_questions import synthesize_questions
from telephony.bench.simulated_caller import CallReport, simulated_call
from telephony.store import Database

STAGES = ("endpoint_wait_ms", "asr_final_ms", "answer_ms", "tts_first_audio_ms", "voice_to_voice_ms")


def _run_event_loop(coroutine):
    """The simulated callers share the machine with the server: uvloop keeps their own overhead down."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return round(ordered[index], 1)


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "mean": round(statistics.fmean(values), 1) if values else None}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_port_span(count: int) -> int:
    """The first of `count` consecutive ports free for UDP and TCP on 127.0.0.1."""
    for _ in range(200):
        first = _free_port()
        if first + count > 65000:
            continue
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_asr_server(model: Path, port: int, engines: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-c", "from telephony.cli import main; main()", "asr-server", "--model", str(model),
               "--port", str(port), "--engines", str(engines)]
    return subprocess.Popen(command, env={**os.environ, "HOTLINE_LOG_LEVEL": "WARNING"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ASR server exited: {process.stderr.read().decode(errors='replace')[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)  # polling a child process that is loading its model
    raise RuntimeError("ASR server did not start")


def _start_server(workdir: Path, model: Path, token: str, port: int, asr_url: str | None,
                  known_transcripts: bool = False, sip: dict[str, str] | None = None,
                  settings: dict[str, str] | None = None) -> subprocess.Popen:
    """`settings`: further HOTLINE_ variables, over the bench's own."""
    env = {**(sip or {}), **os.environ, "HOTLINE_DATA_DIR": str(workdir / "var"), "HOTLINE_ASR_MODEL": str(model),
           "HOTLINE_TTS_ENGINE": "espeak", "HOTLINE_MEDIA_STREAM_TOKEN": token, "HOTLINE_PORT": str(port),
           "HOTLINE_HOST": "127.0.0.1", "HOTLINE_KB_WATCH": "false", "HOTLINE_LOG_LEVEL": "WARNING",
           "HOTLINE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}", **(settings or {})}
    if asr_url is not None:
        env |= {"HOTLINE_ASR_ENGINE": "funasr-server", "HOTLINE_ASR_SERVER_URL": asr_url}
    command = [sys.executable, "-c", "from telephony.cli import main; main()", "serve"]
    if known_transcripts:
        command = [sys.executable, "-c", "from telephony.bench.known_questions import serve_known_questions as s; s()"]
    with (workdir / "server.log").open("wb") as log:  # kept with --keep
        return subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(base: str, process: subprocess.Popen, timeout_s: float = 600, line: str = "media-stream",
                prerendered: bool = True) -> None:
    """Until the voice engines and `line` are ready (and, with `prerendered`, the TTS cache filled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited (its log is server.log in the run folder; keep it with --keep)")
        try:
            voice = httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {})
            state = voice.get("lines", {}).get(line, {})
            if state.get("state") == "failed":
                raise RuntimeError(f"the {line} line failed: {state.get('detail')}")
            cache_ready = voice.get("tts_prerendered") or not prerendered
            if voice.get("asr") == "ready" and cache_ready and state.get("state") == "listening":
                return
            if str(voice.get("asr", "")).startswith(("unavailable", "failed")):
                raise RuntimeError(f"server voice engines failed: {voice}")
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)  # polling a child process that is loading models
    raise RuntimeError("server did not become ready")


async def _run_calls(url: str, questions: list[bytes], calls: int, concurrency: int,
                     turns_per_call: int, ramp_s: float) -> list[CallReport]:
    """Calls arrive spread over `ramp_s` (as real traffic does, not all in the same 20 ms), at most
    `concurrency` at once."""
    gate = asyncio.Semaphore(concurrency)
    reports: list[CallReport] = []
    arrivals = random.Random(7)

    async def one(index: int) -> None:
        await asyncio.sleep(arrivals.uniform(0, ramp_s))  # the call's arrival time
        async with gate:
            chosen = [questions[(index + turn) % len(questions)] for turn in range(turns_per_call)]
            try:
                reports.append(await simulated_call(url, chosen, caller=f"bench-{index}"))
            except (OSError, asyncio.TimeoutError) as exc:
                print(f"bench call {index} failed: {exc}", file=sys.stderr)

    await asyncio.gather(*(one(index) for index in range(calls)))
    return reports


def peak_overlap(reports: list[CallReport]) -> int:
    edges = sorted([(r.started_at, 1) for r in reports] + [(r.ended_at, -1) for r in reports])
    current = peak = 0
    for _time, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def run_turn_latency(concurrency: int = 1, calls: int | None = None, turns_per_call: int = 2,
                     asr_model: Path | None = None, ramp_s: float | None = None, asr_server: bool = False,
                     known_transcripts: bool = False, asr_engines: int = 1, keep_workdir: bool = False,
                     line: str = "media-stream") -> dict:
    """Run the benchmark in a fresh folder (server data, database, recordings; about 150 MB), removed afterwards
    unless `keep_workdir`: then its path is in the result as `workdir`."""
    return in_fresh_workdir("hotline-bench-", keep_workdir, lambda workdir: _run_in(
        workdir, concurrency, calls, turns_per_call, asr_model, ramp_s, asr_server, known_transcripts, asr_engines,
        line))


def in_fresh_workdir(prefix: str, keep: bool, run: Callable[[Path], dict]) -> dict:
    """`run(workdir)` in a new temporary folder, removed afterwards (also when the run fails) unless `keep`: then
    its path is in the result as `workdir`."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        result = run(workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if keep:
        result["workdir"] = str(workdir)
    return result


def stop_processes(*processes: subprocess.Popen | None, grace_s: float = 20) -> None:
    """Terminate each child, then kill any that has not exited within `grace_s`."""
    for child in filter(None, processes):
        if child.poll() is None:
            child.terminate()
    for child in filter(None, processes):
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _run_in(workdir: Path, concurrency: int, calls: int | None, turns_per_call: int, asr_model: Path | None,
            ramp_s: float | None, asr_server: bool, known_transcripts: bool, asr_engines: int, line: str) -> dict:
    from voice.testing.tiny_models import build_tiny_paraformer

    calls = calls or max(10, concurrency)
    ramp = ramp_s if ramp_s is not None else (0.0 if concurrency == 1 else 5.0)
    model = asr_model or build_tiny_paraformer(workdir / "tiny-paraformer")
    token = secrets.token_urlsafe(16)
    port = _free_port()
    questions = asyncio.run(synthesize_questions())
    asr_process = None
    asr_url = None
    if asr_server:
        asr_port = _free_port()
        asr_process = _start_asr_server(model, asr_port, asr_engines)
        _wait_port(asr_port, asr_process)
        asr_url = f"ws://127.0.0.1:{asr_port}"
    engines = -(-concurrency // 4)  # 4 calls per SIP engine process (and per caller process)
    sip_port, rtp_port, caller_port, caller_rtp = _free_port_span(engines), 30000, 0, 34000
    sip = None
    if line == "sip":
        sip = {"HOTLINE_SIP_ENABLED": "true", "HOTLINE_SIP_PORT": str(sip_port), "HOTLINE_SIP_HOST": "127.0.0.1",
               "HOTLINE_SIP_RTP_PORT": str(rtp_port), "HOTLINE_SIP_RTP_PORT_RANGE": str(40 * engines),
               "HOTLINE_SIP_MAX_CALLS": str(4 * engines)}
    process = _start_server(workdir, model, token, port, asr_url, known_transcripts, sip)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, line=line)
        idle_rss = _rss_mb(process.pid)
        peak = [idle_rss]
        if line == "sip":
            targets = [f"sip:hotline@127.0.0.1:{sip_port + index}" for index in range(engines)]
            return _sip_run(workdir, process, base, questions, calls, concurrency, turns_per_call, ramp, targets,
                            caller_port, caller_rtp, idle_rss, model, asr_model is None)

        async def measure() -> list[CallReport]:
            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], _rss_mb(process.pid))
                    await asyncio.sleep(0.5)  # memory sampling interval

            sampler = asyncio.create_task(sample())
            try:
                return await _run_calls(f"ws://127.0.0.1:{port}/media-stream?token={token}", questions, calls,
                                        concurrency, turns_per_call, ramp)
            finally:
                sampler.cancel()

        started = time.monotonic()
        reports = _run_event_loop(measure())
        wall_s = time.monotonic() - started
        time.sleep(1.0)  # let the server close the last call records
    finally:
        stop_processes(process, asr_process)
    result = _report(reports, workdir, concurrency, calls, wall_s, idle_rss, peak[0], model, asr_model is None)
    result["engines"]["asr_process"] = (f"separate FunASR 2pass server ({asr_url}, {asr_engines} engine(s))"
                                        if asr_url else "in process")
    result["engines"]["asr_text"] = ("the known question (correct-transcript assumption); decoding still runs"
                                     if known_transcripts else "the model's own output")
    return result


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _server_cpu_s(pid: int) -> float:
    """The server and its children alive now (the SIP engines)."""
    total = _cpu_s(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            total += _cpu_s(int(child))
    return total


def _sip_run(workdir: Path, process: subprocess.Popen, base: str, questions: list[bytes], calls: int,
             concurrency: int, turns_per_call: int, ramp: float, targets: list[str], caller_port: int, caller_rtp: int,
             idle_rss: float, model: Path, tiny: bool) -> dict:
    """The SIP mode: this process places the calls with its own pjsua2 endpoint; the server answers on its SIP line.
    CPU is measured on both sides: the callers' process does nothing but SIP, RTP and G.711, so its CPU per call is
    the SIP stack's cost; the server's is the whole hotline's."""
    import threading

    from telephony.bench.sip_caller import run_sip_callers

    peak = [idle_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):  # memory sampling interval
            if process.poll() is None:
                peak[0] = max(peak[0], _rss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    server_cpu, started = _server_cpu_s(process.pid), time.monotonic()
    reports, caller_rtp_stats, caller_cpu = run_sip_callers(targets, questions, calls, concurrency, turns_per_call,
                                                            ramp, caller_port, caller_rtp)
    wall_s = time.monotonic() - started
    server_cpu = _server_cpu_s(process.pid) - server_cpu
    stop.set()
    time.sleep(1.5)  # let the server close the last call records and count their RTP
    line = httpx.get(f"{base}/readyz", timeout=5).json().get("voice", {}).get("lines", {}).get("sip", {})
    result = _report(reports, workdir, concurrency, calls, wall_s, idle_rss, peak[0], model, tiny)
    call_seconds = sum(max(0.0, r.ended_at - r.started_at) for r in reports) or 1.0
    counters = line.get("counters", {})
    result["line"] = "sip"
    result["rtp"] = {"server_received": counters.get("rtp_received"), "server_lost": counters.get("rtp_lost"),
                     "server_discarded": counters.get("rtp_discarded"),
                     "callers_received": caller_rtp_stats["received"], "callers_lost": caller_rtp_stats["lost"],
                     "callers_discarded": caller_rtp_stats["discarded"], "refused_busy": counters.get("refused_busy")}
    result["cpu"] = {
        "server_cpu_s": round(server_cpu, 1), "callers_cpu_s": round(caller_cpu, 1),
        "server_cores_per_call": round(server_cpu / call_seconds, 4),
        "sip_stack_cores_per_call": round(caller_cpu / call_seconds, 4),
        "note": "cores busy per simultaneous call: CPU seconds / call seconds; the callers' process runs only "
                "pjsua2 (SIP, RTP, G.711, the conference bridge) and a voice detector, so its figure is the SIP "
                "stack's own cost per call"}
    return result


DROPPED_FRAMES_TOLERANCE = 0.005  # a few frames at call start and end are normal; more means CPU starvation


def recorded_caller_frames(path: str | None) -> int | None:
    """20 ms frames in a call's caller recording: what the server received; None without a recording."""
    if not path or not Path(path).exists():
        return None
    with wave.open(path, "rb") as recording:
        return recording.getnframes() // 160


def dropped_caller_frames(reports: list[CallReport], recordings: list[tuple[str | None, str | None]]) -> int:
    """Caller frames sent but not in the server's caller recording, over the stored calls given as
    (caller_number, recording_caller_path), matched to the callers' reports by caller."""
    by_caller = {report.caller: report for report in reports}
    dropped = 0
    for caller, path in recordings:
        received = recorded_caller_frames(path)
        match = by_caller.get(caller or "")
        if received is not None and match is not None:
            dropped += max(0, match.frames_sent - received)
    return dropped


def dropped_frames_warning(dropped: int, sent: int) -> str | None:
    if dropped > DROPPED_FRAMES_TOLERANCE * max(1, sent):
        return (f"{dropped} of {sent} caller frames never reached the server: this machine could not keep the "
                "callers and the hotline in real time, so the latencies are not valid")
    return None


def _report(reports: list[CallReport], workdir: Path, concurrency: int, calls: int, wall_s: float,
            idle_rss: float, peak_rss: float, model: Path, tiny: bool) -> dict:
    latencies = [turn.latency_ms for report in reports for turn in report.turns if turn.latency_ms is not None]
    barge_ins = [turn.barge_in_clear_ms for report in reports for turn in report.turns
                 if turn.barge_in_clear_ms is not None]
    database = Database(f"sqlite:///{workdir / 'bench.db'}")
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    recordings = []
    for call in database.recent_calls(limit=calls * 2):
        stored = database.get_call(call.id)
        for turn in stored.turns:
            for stage in STAGES:
                if stage in (turn.timings_ms or {}):
                    stages[stage].append(float(turn.timings_ms[stage]))
        recordings.append((stored.caller_number, stored.recording_caller_path))
    database.close()
    dropped_frames = dropped_caller_frames(reports, recordings)
    frames_sent = sum(report.frames_sent for report in reports)
    unheard = [turn for report in reports for turn in report.turns if turn.latency_ms is None]
    warnings = list(filter(None, [dropped_frames_warning(dropped_frames, frames_sent)]))
    if unheard:
        warnings.append(f"{len(unheard)} turns got no reply the callers could time")
    return {
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "turns": len(latencies),
        "calls": len(reports),
        "concurrency": concurrency,
        "peak_concurrent_calls": peak_overlap(reports),
        "stages": {stage: summary(values) for stage, values in stages.items()},
        "barge_in_clear_ms": summary(barge_ins),
        "frames": {"caller_frames_sent": frames_sent, "dropped_caller_frames": dropped_frames,
                   "late_caller_sends": sum(report.late_sends for report in reports),
                   "reply_chunks": sum(report.reply_chunks for report in reports),
                   "late_reply_chunks": sum(report.late_reply_chunks for report in reports)},
        "memory_mb": {"server_idle": round(idle_rss, 1), "server_peak": round(peak_rss, 1),
                      "per_call": round((peak_rss - idle_rss) / max(1, concurrency), 2)},
        "wall_s": round(wall_s, 1),
        "warnings": warnings,
        "engines": {"asr": f"tiny random streaming Paraformer ({model}): plumbing cost, not the real model's"
                    if tiny else f"FunASR model {model}", "tts": "espeak-ng, prerendered cache",
                    "answers": "extractive"},
    }
