"""Simulated callers over real SIP and RTP (pjsua2 in this process, on loopback): each call waits for the assistant,
speaks its questions over it in real time (the conference bridge's clock paces the frames), and measures end of its
speech → first reply audio, as `simulated_caller` does over the media stream."""

from __future__ import annotations

import contextlib
import gc
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from telephony.bench.simulated_caller import VOICED_RMS, CallReport, TurnMeasurement, last_voiced_frame
from telephony.transports.sip.endpoint import configure_logging, create_endpoint
from telephony.transports.sip.frames import vector_bytes
from voice.base import FRAME_BYTES, FRAME_MS

CALLS_PER_PROCESS = 4  # PJSUA_MAX_CALLS of PyPI's pjsua2 builds
REPLY_WAIT_S = 10.0
INTERRUPT_AFTER_MS = 800


def _voiced(frame: bytes) -> bool:
    samples = np.frombuffer(frame[: len(frame) - len(frame) % 2], dtype=np.int16).astype(np.float64)
    return bool(samples.size) and float(np.sqrt((samples ** 2).mean())) > VOICED_RMS


@dataclass
class _Script:
    """One caller's side of the conversation, advanced 20 ms at a time by the media clock."""

    questions: list[bytes]
    report: CallReport
    phase: str = "wait_assistant"  # → interrupting → speaking → wait_reply → … → done
    question: int = 0
    frame: int = 0
    phase_since: float = 0.0
    heard_at: float | None = None
    turn: TurnMeasurement | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_voiced: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last_voiced = [last_voiced_frame(audio) for audio in self.questions]

    def next_frame(self, now: float) -> bytes:
        with self.lock:
            if self.phase == "wait_assistant" and now - self.phase_since > REPLY_WAIT_S:
                self.phase = "done"
            if self.phase == "interrupting" and now - (self.heard_at or now) >= INTERRUPT_AFTER_MS / 1000:
                self.phase, self.frame, self.turn = "speaking", 0, None
            if self.phase == "speaking":
                audio = self.questions[self.question]
                frame = audio[self.frame * FRAME_BYTES:(self.frame + 1) * FRAME_BYTES]
                if self.frame == self.last_voiced[self.question]:
                    self.turn = TurnMeasurement(now)
                    self.report.turns.append(self.turn)
                self.frame += 1
                if len(frame) < FRAME_BYTES:
                    self.phase, self.phase_since = "wait_reply", now
                    if self.turn is None:
                        self.phase = "done"
                else:
                    self.report.frames_sent += 1
                    return frame
            if self.phase == "wait_reply" and now - self.phase_since > REPLY_WAIT_S:
                self.phase = "done"
            self.report.frames_sent += 1
            return bytes(FRAME_BYTES)

    def heard(self, frame: bytes, now: float) -> None:
        with self.lock:
            self.report.received_audio.extend(frame)
            if not _voiced(frame):
                return
            self.report.media_received_ms += FRAME_MS
            if self.phase == "wait_assistant":
                self.phase, self.heard_at = "interrupting", now
            elif self.phase == "wait_reply" and self.turn is not None and now > self.turn.speech_end_sent_at:
                self.turn.first_reply_at = now
                self.question += 1
                if self.question >= len(self.questions):
                    self.phase = "done"
                else:
                    self.phase, self.heard_at = "interrupting", now


def run_sip_callers(targets: list[str], questions: list[bytes], calls: int, concurrency: int, turns_per_call: int,
                    ramp_s: float, local_port: int, rtp_port: int) -> tuple[list[CallReport], dict, float]:
    """Place `calls` calls, at most `concurrency` at once, arriving spread over `ramp_s`. A pjsua2 endpoint holds 4
    calls (PJSUA_MAX_CALLS of the PyPI builds), so the calls are shared among ceil(concurrency / 4) caller processes;
    caller process k calls `targets[k % len(targets)]` (the hotline's SIP engines, as a dispatcher would spread
    them). Returns the reports, the callers' RTP counters and their CPU time."""
    import multiprocessing

    arrivals = random.Random(7)
    schedule = sorted((arrivals.uniform(0, ramp_s), index) for index in range(calls))
    processes = max(1, -(-concurrency // CALLS_PER_PROCESS))
    shares = [schedule[offset::processes] for offset in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        results = pool.starmap(run_sip_calls, [
            (targets[number % len(targets)], questions, share, min(CALLS_PER_PROCESS, concurrency), turns_per_call, 0,
             rtp_port + number * 4 * (CALLS_PER_PROCESS + 4)) for number, share in enumerate(shares) if share])
    reports = [report for part, _, _ in results for report in part]
    rtp = {name: sum(part[name] for _, part, _ in results) for name in ("received", "lost", "discarded")}
    return reports, rtp, sum(cpu for _, _, cpu in results)


def run_sip_calls(target: str, questions: list[bytes], schedule: list[tuple[float, int]], concurrency: int,
                  turns_per_call: int, local_port: int, rtp_port: int) -> tuple[list[CallReport], dict, float]:
    """One caller process: the calls of `schedule` ((arrival s, index) pairs), at most `concurrency` at once."""
    import pjsua2 as pj

    cpu_start = time.process_time()

    class Port(pj.AudioMediaPort):
        def __init__(self, script: _Script) -> None:
            super().__init__()
            self.script = script

        # getattr: the bridge may call a port that Python is tearing down
        def onFrameRequested(self, frame) -> None:
            script = getattr(self, "script", None)
            if script is None:
                frame.type, frame.size = pj.PJMEDIA_FRAME_TYPE_NONE, 0
                return
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(script.next_frame(time.monotonic()))
            frame.size = FRAME_BYTES

        def onFrameReceived(self, frame) -> None:
            script = getattr(self, "script", None)
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and script is not None:
                script.heard(vector_bytes(frame.buf), time.monotonic())

    class Call(pj.Call):
        def __init__(self, account, script: _Script) -> None:
            super().__init__(account)
            self.script = script
            self.port: Port | None = None
            self.ended = False
            self.rtp = (0, 0, 0)

        def onCallMediaState(self, prm) -> None:
            info = self.getInfo()
            for index, media in enumerate(info.media):
                if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    if self.port is None:
                        self.port = Port(self.script)
                        audio_format = pj.MediaFormatAudio()
                        audio_format.type = pj.PJMEDIA_TYPE_AUDIO
                        audio_format.clockRate, audio_format.channelCount = 8000, 1
                        audio_format.bitsPerSample, audio_format.frameTimeUsec = 16, 20000
                        self.port.createPort(f"caller-{self.script.report.caller}", audio_format)
                    audio = self.getAudioMedia(index)
                    audio.startTransmit(self.port)
                    self.port.startTransmit(audio)
                    self.script.phase_since = time.monotonic()

        def onStreamDestroyed(self, prm) -> None:
            with contextlib.suppress(Exception):
                received = self.getStreamStat(prm.streamIdx).rtcp.rxStat
                self.rtp = (received.pkt, received.loss, received.discard)

        def onCallState(self, prm) -> None:
            if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.ended = True
                self.script.report.closed_by_server = self.script.phase != "done"
                self.script.report.ended_at = time.monotonic()

    endpoint = create_endpoint()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = False
    config.uaConfig.maxCalls = concurrency + 4
    config.medConfig.clockRate = config.medConfig.sndClockRate = 8000
    config.medConfig.channelCount = 1
    config.medConfig.maxMediaPorts = 3 * (concurrency + 4) + 4
    config.medConfig.noVad = True
    config.medConfig.ecTailLen = 0
    config.medConfig.jbInit = 0
    config.medConfig.jbMinPre = 0
    config.medConfig.jbMaxPre = 6
    writer = configure_logging(config, 1)  # noqa: F841 - must outlive the endpoint
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.port, transport.boundAddress = local_port, "127.0.0.1"
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    for codec in endpoint.codecEnum2():
        endpoint.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU") else 0)
    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:bench@127.0.0.1:{local_port}"
    account_config.regConfig.registerOnAdd = False
    account_config.mediaConfig.transportConfig.port = rtp_port
    account_config.mediaConfig.transportConfig.portRange = 4 * (concurrency + 4)
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account = pj.Account()
    account.create(account_config, True)

    start = time.monotonic()
    pending = list(schedule)
    ramp_s = schedule[-1][0] if schedule else 0.0
    calls = len(schedule)
    live: list[Call] = []
    finished: list[Call] = []
    reports: list[CallReport] = []
    deadline = start + ramp_s + calls / max(1, concurrency) * (turns_per_call * 25 + 20) + 60
    try:
        while (pending or live) and time.monotonic() < deadline:
            endpoint.libHandleEvents(5)
            now = time.monotonic()
            while pending and pending[0][0] <= now - start and len(live) < concurrency:
                _, index = pending.pop(0)
                chosen = [questions[(index + turn) % len(questions)] for turn in range(turns_per_call)]
                report = CallReport(f"sip-{index}", caller=f"1380000{index:04d}", started_at=now)
                script = _Script(chosen, report, phase_since=now)
                call = Call(account, script)
                parameters = pj.CallOpParam(True)
                header = pj.SipHeader()
                header.hName, header.hValue = "P-Asserted-Identity", f"<sip:{report.caller}@127.0.0.1>"
                parameters.txOption.headers.append(header)
                call.makeCall(target, parameters)
                live.append(call)
                reports.append(report)
            for call in list(live):
                if call.ended:
                    live.remove(call)
                    finished.append(call)
                elif call.script.phase == "done":
                    with contextlib.suppress(pj.Error):
                        call.hangup(pj.CallOpParam(True))
        for call in live:  # past the deadline
            with contextlib.suppress(pj.Error):
                call.hangup(pj.CallOpParam(True))
        settle = time.monotonic() + 3
        while any(not call.ended for call in live) and time.monotonic() < settle:
            endpoint.libHandleEvents(10)
        for call in finished + live:
            if not call.script.report.ended_at:
                call.script.report.ended_at = time.monotonic()
        rtp = {"received": sum(c.rtp[0] for c in finished + live), "lost": sum(c.rtp[1] for c in finished + live),
               "discarded": sum(c.rtp[2] for c in finished + live)}
    finally:
        live = finished = []  # every pj.Call reference must be gone before libDestroy
        call = None
        account.shutdown()
        del account
        gc.collect()
        endpoint.libDestroy()
    for report in reports:
        report.received_audio = bytearray()  # not needed by the benchmark; keeps the result small to pass back
    return reports, rtp, time.process_time() - cpu_start
