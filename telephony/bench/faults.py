"""`hotline bench faults`: each engine killed, stalled or made to answer garbage in the middle of a call.

For every row: a call over the Media Streams websocket in real time (the simulated caller below), the fault injected
at a stated moment, what the caller then heard (the prompts, named), how long after the reference moment the first
reply audio reached the caller, what was stored (turns, SMS), and whether a fresh call after the engine is back is
normal (greeting, the known question answered with its item, the turn stored). docs/reliability.md explains each
row and figure.

Two hotline servers run, one after the other, each the product's app with the bench's switches
(`telephony/bench/fault_server.py`):

- `network`: ASR on a `hotline asr-server` process, edge-tts (the double), the LLM (the double), chromadb
  (`chroma run`), PostgreSQL (a throwaway cluster) and SMPP (the SMSC double), each behind a `FaultProxy`;
- `local`: the in-process Paraformer and espeak-ng behind the control-file switches, SQLite, no LLM or vectors; the
  media-stream rows run here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from rag.hybrid import VECTOR_RETRY_S
from telephony.bench.fault_proxy import FaultProxy
from telephony.bench.fault_server import CONTROL_ENV, SPOKEN_LOG_ENV, write_control
from telephony.bench.turn_latency import _free_port, _start_asr_server, _wait_port
from telephony.calls import prompts
from telephony.transports.twilio.protocol import connected_message, inbound_media_message, start_message, stop_message
from voice.audio import ulaw_encode
from voice.base import FRAME_BYTES, FRAME_MS

TARGET_MS = 1500  # the caller hears speech within this long after the reference moment
QUESTION = "社保卡丢了怎么办"  # answered from the prerendered cache: the known question of every "next call"
LLM_QUESTION = "打零工的能按灵活就业人员参保吗"  # middle confidence: the LLM composes it, edge renders it live
CONSENT = "需要"
REPLY_WAIT_S = 10.0  # dead air longer than this is reported as no fallback
LISTEN_S = 1.5  # how long the caller listens to a prompt before speaking over it (barge-in) or hanging up


# -- the caller --------------------------------------------------------------------------------------


class FaultCaller:
    """A phone caller over Media Streams: a paced sender (silence unless it speaks), a receiver that keeps each reply
    frame's arrival time, and the faults a caller's own line can have (garbage frames, a dropped socket)."""

    def __init__(self, url: str, number: str) -> None:
        self.url = url
        self.number = number
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.media_times: list[float] = []
        self.closed_by_server = False
        self._frames: list[bytes] = []
        self._voiced_last: int | None = None
        self._spoken = asyncio.Event()
        self._speech_end_at = 0.0
        self._garbage_every = 0
        self._socket = None
        self._tasks: list[asyncio.Task] = []
        self._sent = 0

    async def __aenter__(self) -> FaultCaller:
        self._socket = await websockets.connect(self.url, max_size=2 ** 20)
        await self._socket.send(connected_message())
        await self._socket.send(start_message(self.stream_sid, self.call_sid, {"from": self.number}))
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send())]
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.hang_up()

    async def _receive(self) -> None:
        try:
            async for raw in self._socket:
                message = json.loads(raw)
                if message.get("event") == "media":
                    self.media_times.append(time.monotonic())
        except (websockets.ConnectionClosed, OSError):
            pass
        finally:
            self.closed_by_server = True

    async def _send(self) -> None:
        silence = bytes(FRAME_BYTES)
        started = time.monotonic()
        try:
            while True:
                due = started + self._sent * FRAME_MS / 1000
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # a phone line's real-time pacing
                frame = self._frames.pop(0) if self._frames else silence
                payload = inbound_media_message(self.stream_sid, self._sent, self._sent * FRAME_MS, ulaw_encode(frame))
                await self._socket.send(payload)
                if self._garbage_every and self._sent % self._garbage_every == 0:
                    for junk in GARBAGE_FRAMES:
                        await self._socket.send(junk)
                self._sent += 1
                if self._voiced_last is not None:
                    self._voiced_last -= 1
                    if self._voiced_last < 0:
                        self._voiced_last = None
                        self._speech_end_at = time.monotonic()
                        self._spoken.set()
        except (websockets.ConnectionClosed, OSError):
            self._spoken.set()

    async def speak(self, pcm16: bytes, garbage_every: int = 0) -> float:
        """Say it in real time; returns when its last voiced frame went out (the end of the caller's speech)."""
        from telephony.bench.simulated_caller import last_voiced_frame

        frames = [pcm16[i:i + FRAME_BYTES] for i in range(0, len(pcm16) - FRAME_BYTES + 1, FRAME_BYTES)]
        self._spoken.clear()
        self._garbage_every = garbage_every
        self._voiced_last = last_voiced_frame(pcm16)
        self._frames.extend(frames)
        await self._spoken.wait()
        self._garbage_every = 0
        return self._speech_end_at

    async def first_audio_after(self, moment: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.closed_by_server:
            later = [at for at in self.media_times if at > moment]
            if later:
                return later[0]
            await asyncio.sleep(0.01)
        later = [at for at in self.media_times if at > moment]
        return later[0] if later else None

    async def ask(self, pcm16: bytes) -> tuple[float, float | None]:
        """Say it, wait for the reply and hear it: (end of the caller's speech, the reply's first audio or None)."""
        end = await self.speak(pcm16)
        replied = await self.first_audio_after(end, REPLY_WAIT_S)
        if replied is not None:
            await self.listen(replied)
        return end, replied

    async def greeting(self, limit_s: float = 20.0) -> bool:
        """The greeting started; the caller listens a moment and then speaks over it, as callers do."""
        heard = await self.first_audio_after(0.0, limit_s)
        await asyncio.sleep(LISTEN_S)
        return heard is not None

    async def listen(self, since: float) -> None:
        """Hear a reply that started at `since` for LISTEN_S (the caller then speaks over it or hangs up)."""
        await asyncio.sleep(max(0.0, since + LISTEN_S - time.monotonic()))

    def drop(self) -> None:
        """The caller's line dies: the TCP connection is aborted, no close frame, no stop message."""
        transport = getattr(self._socket, "transport", None)
        if transport is not None:
            transport.abort()
        self.closed_by_server = True

    async def hang_up(self) -> None:
        if self._socket is None:
            return
        for task in self._tasks[1:]:
            task.cancel()
        if not self.closed_by_server:
            with contextlib.suppress(websockets.ConnectionClosed, OSError):
                await self._socket.send(stop_message(self.stream_sid, self.call_sid))
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            await asyncio.wait_for(self._socket.close(), 5)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._socket = None


# What a broken media gateway sends between good frames: not JSON, JSON of no known event, a media message whose
# payload is not base64, a media message without a payload.
GARBAGE_FRAMES = (
    "{this is not json",
    json.dumps({"event": "nonsense", "x": 1}),
    json.dumps({"event": "media", "streamSid": "MZ0", "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                                                  "payload": "###not base64###"}}),
    json.dumps({"event": "media", "media": {}}),
)


# -- the engines and the servers ---------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (as root, run as the postgres user, as tests/conftest.py does)."""

    def __init__(self, root: Path) -> None:
        bin_dir = _postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries are missing (scripts/setup.sh test installs them)")
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.run_as: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(root, user="postgres")
            root.chmod(0o700)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.run_as, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "hotline",
                        "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True)
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://hotline@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                        "-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -F", "start"],
                       check=True, capture_output=True)

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every server process quits at once, no shutdown checkpoint (a crash)."""
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)

    def pids(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def signal(self, which: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, which)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.signal(signal.SIGCONT)  # a stopped cluster cannot shut down
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


class Chroma:
    """`chroma run` on a folder; kill is SIGKILL, heal starts it again on the same folder and port."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        binary = Path(sys.executable).with_name("chroma")
        self.process = subprocess.Popen([str(binary), "run", "--path", str(self.path), "--host", "127.0.0.1",
                                         "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, 60)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                self.process.kill()


class AsrServer:
    """`hotline asr-server` on the tiny model; kill is SIGKILL, stall SIGSTOP (SIGCONT heals)."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.start(wait=False)  # it loads its model while the other engines start

    def start(self, wait: bool = True) -> None:
        self.process = _start_asr_server(self.model, self.port)
        if wait:
            self.wait()

    def wait(self) -> None:
        assert self.process is not None
        _wait_port(self.port, self.process)

    def signal(self, which: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, which)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


@dataclass
class Stack:
    """One hotline server and the engines around it."""

    kind: str  # network | local
    workdir: Path
    model: Path
    port: int = 0
    token: str = ""
    database_url: str = ""
    control: Path = Path()
    spoken_log: Path = Path()
    process: subprocess.Popen | None = None
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    asr: AsrServer | None = None
    chroma: Chroma | None = None
    postgres: Postgres | None = None
    smsc: object | None = None
    numbers: int = 0
    expected_item: str | None = None
    edge: bool = False  # edge-tts (the double) is the primary TTS
    current_number: str = ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream?token={self.token}"

    def next_number(self) -> str:
        self.numbers += 1
        return f"1390000{self.numbers:04d}"

    def set(self, **values: str) -> None:
        write_control(self.control, **values)

    def proxy(self, name: str, upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port).start()
        self.proxies[name] = proxy
        self.closers.append(proxy.close)
        return proxy

    def spoken(self) -> list[dict]:
        if not self.spoken_log.exists():
            return []
        return [json.loads(line) for line in self.spoken_log.read_text(encoding="utf-8").splitlines() if line]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()


def start_stack(kind: str, workdir: Path, model: Path, engines: set[str] | None = None) -> Stack:
    stack = Stack(kind, workdir / kind, model)
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.control = stack.workdir / "control.json"
    stack.spoken_log = stack.workdir / "spoken.jsonl"
    stack.set(asr="pass", tts="pass", transcript=QUESTION)
    stack.token = secrets.token_urlsafe(16)
    stack.port = _free_port()
    env = {**os.environ, "HOTLINE_DATA_DIR": str(stack.workdir / "var"), "HOTLINE_ASR_MODEL": str(model),
           "HOTLINE_MEDIA_STREAM_TOKEN": stack.token, "HOTLINE_PORT": str(stack.port), "HOTLINE_HOST": "127.0.0.1",
           "HOTLINE_KB_WATCH": "false", "HOTLINE_LOG_LEVEL": "WARNING", "HOTLINE_CENTRE_PHONE": "0773-12333",
           "HOTLINE_TTS_PRERENDER": "false",
           CONTROL_ENV: str(stack.control), SPOKEN_LOG_ENV: str(stack.spoken_log)}
    try:
        if kind == "network":
            env |= _network_engines(stack, engines if engines is not None else {row.engine for row in ROWS})
        else:
            stack.database_url = f"sqlite:///{stack.workdir / 'hotline.db'}"
            env |= {"HOTLINE_TTS_ENGINE": "espeak", "HOTLINE_DATABASE_URL": stack.database_url,
                    "HOTLINE_EMBEDDING_BACKEND": "none"}
        asyncio.run(seed_cache(stack.workdir / "var" / "tts-cache", stack.edge))
        if stack.asr is not None:
            stack.asr.wait()
        command = [sys.executable, "-c", "from telephony.bench.fault_server import serve_fault_target as s; s()"]
        with (stack.workdir / "server.log").open("ab") as log:
            stack.process = subprocess.Popen(command, env=env, cwd=stack.workdir, stdout=log, stderr=subprocess.STDOUT)
        _wait_up(f"http://127.0.0.1:{stack.port}", stack.process)
    except BaseException:
        stack.close()
        raise
    return stack


def _network_engines(stack: Stack, engines: set[str]) -> dict[str, str]:
    """Start the networked engines the chosen rows fault, each behind a proxy; the others take their local default
    (in-process ASR, espeak-ng, no LLM, no vectors, SQLite, the outbox), so a run of a few rows starts quickly."""
    from telephony.bench.doubles.edge_tts_server import FakeEdgeTtsServer
    from telephony.bench.doubles.openai_server import FakeOpenAiServer
    from telephony.bench.doubles.smsc import FakeSmsc

    env: dict[str, str] = {"HOTLINE_TTS_ENGINE": "espeak", "HOTLINE_EMBEDDING_BACKEND": "none"}
    if "asr-server" in engines:
        stack.asr = AsrServer(stack.model)
        stack.closers.append(stack.asr.close)
        asr = stack.proxy("asr", stack.asr.port)
        env |= {"HOTLINE_ASR_ENGINE": "funasr-server", "HOTLINE_ASR_SERVER_URL": f"ws://127.0.0.1:{asr.port}"}
    if "llm" in engines or "tts-edge" in engines:  # the LLM's replies are the sentences edge-tts renders live
        llm_double = FakeOpenAiServer().__enter__()
        stack.closers.append(lambda: llm_double.__exit__(None, None, None))
        llm = stack.proxy("llm", llm_double.port)
        env |= {"HOTLINE_LLM_API_KEY": "bench", "HOTLINE_LLM_BASE_URL": f"http://127.0.0.1:{llm.port}/v1",
                "HOTLINE_LLM_MODEL": "grounded"}
    if "tts-edge" in engines:
        edge_double = FakeEdgeTtsServer().start()
        stack.closers.append(edge_double.stop)
        edge = stack.proxy("tts", edge_double.port)
        stack.edge = True
        env |= {"HOTLINE_TTS_ENGINE": "edge",
                "HOTLINE_TTS_EDGE_URL": re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{edge.port}", edge_double.endpoint_url)}
    if "vector" in engines:
        stack.chroma = Chroma(stack.workdir / "chroma")
        stack.closers.append(stack.chroma.close)
        chroma = stack.proxy("vector", stack.chroma.port)
        env |= {"HOTLINE_CHROMA_HOST": "127.0.0.1", "HOTLINE_CHROMA_PORT": str(chroma.port)}
        env.pop("HOTLINE_EMBEDDING_BACKEND")
    if "database" in engines or "sms-smpp" in engines:  # the outbox rows are counted on PostgreSQL too
        stack.postgres = Postgres(Path(tempfile.mkdtemp(prefix="hotline-faults-pg-")))
        stack.closers.append(stack.postgres.close)
        stack.database_url = stack.postgres.url
        database = stack.proxy("database", stack.postgres.port)
        env["HOTLINE_DATABASE_URL"] = f"postgresql+psycopg://hotline@127.0.0.1:{database.port}/postgres"
    else:
        stack.database_url = f"sqlite:///{stack.workdir / 'hotline.db'}"
        env["HOTLINE_DATABASE_URL"] = stack.database_url
    if "sms-smpp" in engines:
        smsc = FakeSmsc(lifetime_s=3600).start()
        stack.smsc = smsc
        stack.closers.append(smsc.stop)
        sms = stack.proxy("sms", smsc.port)
        env |= {"HOTLINE_SMS_GATEWAY": "smpp", "HOTLINE_SMS_SMPP_HOST": "127.0.0.1",
                "HOTLINE_SMS_SMPP_PORT": str(sms.port), "HOTLINE_SMS_SMPP_SYSTEM_ID": "hotline",
                "HOTLINE_SMS_SMPP_PASSWORD": "secret"}
    return env


# Items whose sentences are cached before the server starts, besides the fixed prompts: the answers of the bench's
# questions and the services those answers offer instead. `hotline serve` prerenders every item (minutes with
# espeak-ng on a shared 2-core machine); the bench caches what its calls say, so the cache holds for these calls what
# it would hold in production.
SEED_ITEMS = ("card-loss-report", "card-reissue", "flexible-worker-enrollment", "flexible-worker-contribution",
              "unemployment-benefit-application")


class _SeedVoice:
    """espeak-ng audio filed under another engine's name, voice and rate: the edge-tts double speaks espeak-ng audio
    too (through MP3), so the seeded edge cache holds what the double would have sent, rendered in a fraction of the
    time (the double encodes and the client decodes MP3 for every sentence)."""

    def __init__(self, inner, name: str, voice: str, rate: str) -> None:
        self.inner, self.name, self.voice, self.rate = inner, name, voice, rate

    def synthesize(self, text: str):
        return self.inner.synthesize(text)


async def seed_cache(cache_dir: Path, edge: bool) -> None:
    from kb.loader import load_knowledge_base
    from rag import phrases
    from rag.extractive import short_title
    from telephony.calls.prerender import fixed_prompts
    from telephony.settings import Settings
    from voice.tts import EspeakTtsEngine, ResilientTts, TtsCache, clauses

    settings = Settings()
    kb = load_knowledge_base(settings.kb_dir)
    texts = fixed_prompts(settings.centre_name)
    texts += [value for name, value in vars(prompts).items()
              if name.isupper() and isinstance(value, str) and "{" not in value]
    for item in kb.items:
        if item.id in SEED_ITEMS:
            texts += clauses(phrases.NAMED_ANSWER.format(title=short_title(item), spoken=""))
            texts += clauses(phrases.OFFER_OTHER.format(title=short_title(item)))
            texts += [item.spoken, *clauses(item.spoken)]
            texts += [clause for fact in item.facts for clause in clauses(fact.say)]
    espeak = EspeakTtsEngine()
    primary = _SeedVoice(espeak, "edge", settings.tts_voice, settings.tts_rate) if edge else espeak
    await ResilientTts(primary, espeak, TtsCache(cache_dir)).prerender(texts)


def _wait_up(base: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    """Until the server's ASR is warm and its media-stream line listens (the TTS cache was seeded before)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the hotline server exited (server.log in the run folder; keep it with --keep)")
        try:
            voice = httpx.get(f"{base}/readyz", timeout=2).json().get("voice", {})
            line = voice.get("lines", {}).get("media-stream", {})
            if voice.get("asr") == "ready" and line.get("state") == "listening":
                return
            if str(voice.get("asr", "")).startswith(("unavailable", "failed")):
                raise RuntimeError(f"server voice engines failed: {voice}")
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)  # polling a child process that is loading its engines
    raise RuntimeError("the hotline server did not become ready")


# -- what was heard and stored ---------------------------------------------------------------------


def _prompt_patterns() -> list[tuple[str, re.Pattern]]:
    patterns = []
    for name, value in vars(prompts).items():
        if name.isupper() and isinstance(value, str):
            pattern = re.escape(value)
            pattern = re.sub(r"\\\{\w*\\\}", ".*?", pattern) if "\\{" in pattern else pattern
            pattern = re.sub(r"\\{\w*\\}|\{\w*\}", ".*?", pattern)
            patterns.append((name, re.compile(f"^{pattern}$", re.DOTALL)))
    return patterns


PROMPTS = _prompt_patterns()


def prompt_name(text: str) -> str:
    for name, pattern in PROMPTS:
        if pattern.match(text):
            return name
    return "reply"


def heard_after(stack: Stack, moment: float, until: float) -> list[dict]:
    """The utterances whose first audio went out between `moment` and `until` (the server's spoken log)."""
    heard = []
    for entry in stack.spoken():
        first = entry.get("first_at")
        if first is None or not moment - 0.05 <= first <= until:
            continue
        item = {"prompt": prompt_name(entry["text"]), "text": entry["text"][:40], "engine": entry.get("engine")}
        if entry.get("fallback_reason"):
            item["fallback_reason"] = entry["fallback_reason"][:80]
        heard.append(item)
    return heard


def silent_failures(stack: Stack, moment: float, until: float) -> list[str]:
    """Utterances the server tried to say after `moment` that produced no audio at all."""
    return [entry["text"][:40] for entry in stack.spoken()
            if moment - 0.05 <= entry.get("requested_at", 0) <= until and entry.get("first_at") is None]


def stored_call(stack: Stack, number: str):
    from telephony.store import Database

    database = Database(stack.database_url)
    try:
        for call in database.recent_calls(limit=200):
            if call.caller_number == number:
                return database.get_call(call.id)
        return None
    finally:
        database.close()


async def sms_settled(stack: Stack, number: str, limit_s: float = 40.0) -> None:
    """Until no outbox row for the number is queued or being sent (a retry after the gateway came back, 15 s ×
    2^(attempt-1) later, would be a second message)."""
    from sqlalchemy import select

    from telephony.store import Database, SmsStatus
    from telephony.store.models import SmsMessage

    def open_rows() -> int:
        database = Database(stack.database_url)
        try:
            with database.session() as session:
                return len(list(session.scalars(select(SmsMessage.id).where(
                    SmsMessage.phone.contains(number[-8:]),
                    SmsMessage.status.in_([SmsStatus.QUEUED, SmsStatus.SENDING])))))
        finally:
            database.close()

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and await asyncio.to_thread(open_rows):
        await asyncio.sleep(0.5)  # the outbox worker runs in the server process


def sms_counts(stack: Stack, number: str) -> tuple[int, int, int]:
    """(outbox rows, largest number of rows for one (call, item), times the SMSC received a message for the number)."""
    from sqlalchemy import select

    from telephony.store import Database
    from telephony.store.models import SmsMessage

    database = Database(stack.database_url)
    try:
        with database.session() as session:
            rows = list(session.scalars(select(SmsMessage).where(SmsMessage.phone.contains(number[-8:]))))
    finally:
        database.close()
    per_item: dict[tuple, int] = {}
    for row in rows:
        per_item[(row.call_id, row.item_id)] = per_item.get((row.call_id, row.item_id), 0) + 1
    received = 0
    if stack.smsc is not None:
        from telephony.bench.doubles.smsc import reassemble

        # Whole messages (a guide goes as several UCS-2 parts) each time the SMSC received one, answered or not: a
        # submit_sm the SMSC holds when the link dies may reach the phone.
        received = len(reassemble(stack.smsc.submits_to(number)))
    return len(rows), max(per_item.values(), default=0), received


# -- the scenarios -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    engine: str
    fault: str
    stack: str  # network | local | any (the caller's own line: the first stack that runs)
    scenario: str  # question | llm-question | sms | drop | garbage-frames | call-start
    inject: Callable[[Stack], None]
    heal: Callable[[Stack], None]
    how: str  # how the fault is injected
    reference: str = "the end of the caller's question (its last voiced frame sent)"
    heal_before_hangup: bool = True
    question: str = ""  # what the caller asks (default: the scenario's)
    settle_s: float = 0.0  # wait before the row, so an earlier row's back-off (the vector channel's 30 s) is over

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.fault}"


def _noop(_stack: Stack) -> None:
    return None


def _proxy(name: str, mode: str) -> Callable[[Stack], None]:
    return lambda stack: stack.proxies[name].set_mode(mode)


def _switch(name: str, mode: str) -> Callable[[Stack], None]:
    return lambda stack: stack.set(**{name: mode})


def _asr_kill(stack: Stack) -> None:
    stack.asr.kill()


def _asr_restart(stack: Stack) -> None:
    stack.asr.start()


def _asr_stop(stack: Stack) -> None:
    stack.asr.signal(signal.SIGSTOP)


def _asr_cont(stack: Stack) -> None:
    stack.asr.signal(signal.SIGCONT)


def _chroma_kill(stack: Stack) -> None:
    stack.chroma.kill()


def _chroma_restart(stack: Stack) -> None:
    stack.chroma.start()


def _pg_crash(stack: Stack) -> None:
    stack.postgres.crash()


def _pg_start(stack: Stack) -> None:
    stack.postgres.start()


def _pg_stop(stack: Stack) -> None:
    stack.postgres.signal(signal.SIGSTOP)


def _pg_cont(stack: Stack) -> None:
    stack.postgres.signal(signal.SIGCONT)


def _sms_in_flight_kill(stack: Stack) -> None:
    """Reset the SMSC connection while a submit_sm waits for its response (the SMSC has the message)."""
    stack.smsc.wait_for(lambda smsc: any(s.destination_addr == stack.current_number for s in smsc.submits), 10)
    stack.proxies["sms"].set_mode("kill")


def _sms_in_flight_garbage(stack: Stack) -> None:
    stack.proxies["sms"].set_mode("garbage")


ROWS: tuple[Row, ...] = (
    Row("asr-server", "kill", "network", "question", _asr_kill, _asr_restart,
        "SIGKILL the `hotline asr-server` process as the caller starts the question; heal: start it again"),
    Row("asr-server", "stall", "network", "question", _asr_stop, _asr_cont,
        "SIGSTOP the `hotline asr-server` process as the caller starts the question; heal: SIGCONT"),
    Row("asr-server", "garbage", "network", "question", _proxy("asr", "garbage"), _proxy("asr", "pass"),
        "fault proxy: the server's bytes to the hotline replaced by random bytes, from the question's start"),
    Row("tts-edge", "kill", "network", "llm-question", _proxy("tts", "kill"), _proxy("tts", "pass"),
        "fault proxy: every edge-tts connection reset, new ones refused, from the question's start"),
    Row("tts-edge", "stall", "network", "llm-question", _proxy("tts", "stall"), _proxy("tts", "pass"),
        "fault proxy: edge-tts connections accepted but nothing forwarded, from the question's start"),
    Row("tts-edge", "garbage", "network", "llm-question", _proxy("tts", "garbage"), _proxy("tts", "pass"),
        "fault proxy: edge-tts bytes replaced by random bytes, from the question's start"),
    Row("llm", "kill", "network", "llm-question", _proxy("llm", "kill"), _proxy("llm", "pass"),
        "fault proxy: LLM API connections reset and refused, from the question's start"),
    Row("llm", "stall", "network", "llm-question", _proxy("llm", "stall"), _proxy("llm", "pass"),
        "fault proxy: LLM API connections accepted, nothing answered, from the question's start"),
    Row("llm", "garbage", "network", "llm-question", _proxy("llm", "garbage"), _proxy("llm", "pass"),
        "fault proxy: the LLM API's response bytes replaced by random bytes, from the question's start"),
    Row("vector", "kill", "network", "question", _chroma_kill, _chroma_restart,
        "SIGKILL the `chroma run` server as the caller starts the question; heal: start it again"),
    Row("vector", "stall", "network", "question", _proxy("vector", "stall"), _proxy("vector", "pass"),
        "fault proxy: chromadb connections accepted, nothing answered, from the question's start",
        settle_s=VECTOR_RETRY_S + 1),
    Row("vector", "garbage", "network", "question", _proxy("vector", "garbage"), _proxy("vector", "pass"),
        "fault proxy: chromadb's response bytes replaced by random bytes, from the question's start",
        settle_s=VECTOR_RETRY_S + 1),
    Row("database", "kill", "network", "question", _pg_crash, _pg_start,
        "`pg_ctl stop -m immediate` (every PostgreSQL process quits, as in a crash) as the caller starts the "
        "question; heal: `pg_ctl start` (crash recovery)"),
    Row("database", "stall", "network", "question", _pg_stop, _pg_cont,
        "SIGSTOP every PostgreSQL process as the caller starts the question; heal: SIGCONT"),
    Row("database", "stall-at-start", "network", "call-start", _pg_stop, _pg_cont,
        "SIGSTOP every PostgreSQL process before the call connects; the caller hears the greeting and asks the "
        "question with the database stopped; heal: SIGCONT before the caller hangs up",
        reference="the call's start message sent (the time to fallback is the time to the greeting's first audio)"),
    Row("database", "garbage", "network", "question", _proxy("database", "garbage"), _proxy("database", "pass"),
        "fault proxy: PostgreSQL's bytes to the hotline replaced by random bytes, from the question's start"),
    Row("sms-smpp", "kill", "network", "sms", _sms_in_flight_kill, _proxy("sms", "pass"),
        "the SMSC answers this number's submit_sm after 1.5 s; the fault proxy resets the SMPP connection once the "
        "SMSC has the submit_sm and before its response (the outcome is unknown to the hotline)",
        reference="the end of the caller's 「需要」 (consent to the SMS)"),
    Row("sms-smpp", "stall", "network", "sms", _proxy("sms", "stall"), _proxy("sms", "pass"),
        "fault proxy: the SMPP connection forwards nothing, from the caller's 「需要」 until 12 s after the call",
        reference="the end of the caller's 「需要」 (consent to the SMS)"),
    Row("sms-smpp", "garbage", "network", "sms", _sms_in_flight_garbage, _proxy("sms", "pass"),
        "fault proxy: the SMSC's bytes replaced by random bytes, from the caller's 「需要」",
        reference="the end of the caller's 「需要」 (consent to the SMS)"),
    Row("asr-inprocess", "kill", "local", "question", _switch("asr", "kill"), _switch("asr", "pass"),
        "control switch: the in-process engine's push and finish raise AsrUnavailable from the question's start"),
    Row("asr-inprocess", "stall", "local", "question", _switch("asr", "stall"), _switch("asr", "pass"),
        "control switch: the in-process engine's push and finish wait without end from the question's start"),
    Row("asr-inprocess", "garbage", "local", "question", _switch("asr", "garbage"), _switch("asr", "pass"),
        "control switch: the in-process engine's final text is random characters"),
    Row("tts-espeak", "kill", "local", "question", _switch("tts", "kill"), _switch("tts", "pass"),
        "control switch: espeak-ng (primary and fallback) raises TtsUnavailable; prerendered prompts stay cached",
        question="失业金能领几个月，我交了三年"),
    Row("tts-espeak", "stall", "local", "question", _switch("tts", "stall"), _switch("tts", "pass"),
        "control switch: espeak-ng waits without end before its first audio", question="失业金能领几个月，我交了五年"),
    Row("tts-espeak", "garbage", "local", "question", _switch("tts", "garbage"), _switch("tts", "pass"),
        "control switch: espeak-ng's audio replaced by noise of the same length",
        question="失业金能领几个月，我交了两年"),
    Row("media-stream", "drop", "any", "drop", _noop, _noop,
        "the caller's TCP connection is aborted (no close frame, no stop message) 0.5 s into the reply",
        reference="not applicable: the caller is gone"),
    Row("media-stream", "garbage", "any", "garbage-frames", _noop, _noop,
        "four malformed messages (not JSON, an unknown event, bad base64, no payload) after every 10th caller "
        "frame of the question"),
)



async def _speech(text: str) -> bytes:
    from voice.tts import EspeakTtsEngine

    engine = EspeakTtsEngine()
    return b"".join([chunk async for chunk in engine.synthesize(text)])


async def run_row(stack: Stack, row: Row, audio: dict[str, bytes]) -> dict:
    row_started = time.monotonic()
    await asyncio.sleep(row.settle_s)
    number = stack.next_number()
    stack.current_number = number
    notes: list[str] = []
    spoken = 0
    fallback_at = reference = None
    if row.scenario == "sms" and row.fault == "kill":
        from telephony.bench.doubles.smsc import Rule

        stack.smsc.rules[number] = Rule(submit_delay_s=1.5)
    question = row.question or (LLM_QUESTION if row.scenario == "llm-question" else QUESTION)
    if row.scenario == "call-start":
        stack.set(transcript=question)
        fault_at = time.monotonic()
        await asyncio.to_thread(row.inject, stack)
    async with FaultCaller(stack.ws_url, number) as caller:
        if row.scenario == "call-start":
            reference = caller.started_at
        elif not await caller.greeting():
            notes.append("no greeting")
        if row.scenario == "call-start":
            fallback_at = await caller.first_audio_after(reference, REPLY_WAIT_S)
            if fallback_at is None:
                notes.append(f"no greeting within {REPLY_WAIT_S:g} s: dead air")
            await asyncio.sleep(LISTEN_S)
            end, answered = await caller.ask(audio[question])
            spoken += 1
            notes.append("the question asked with the database stopped got no reply" if answered is None else
                         f"the question asked with the database stopped was answered in "
                         f"{round((answered - end) * 1000)} ms")
            await asyncio.to_thread(row.heal, stack)
        elif row.scenario == "sms":
            stack.set(transcript=QUESTION)
            _end, answered = await caller.ask(audio[QUESTION])
            spoken += 1
            if answered is None:
                notes.append("the question before the SMS offer got no reply")
            stack.set(transcript=CONSENT)
            fault_at = time.monotonic()
            if row.fault == "kill":
                speaking = asyncio.create_task(caller.speak(audio[CONSENT]))
                await asyncio.to_thread(row.inject, stack)
                reference = await speaking
            else:
                await asyncio.to_thread(row.inject, stack)
                reference = await caller.speak(audio[CONSENT])
            spoken += 1
        else:
            stack.set(transcript=question)
            fault_at = time.monotonic()
            await asyncio.to_thread(row.inject, stack)
            reference = await caller.speak(audio[question], garbage_every=10 if row.scenario == "garbage-frames" else 0)
            spoken += 1
        if row.scenario == "drop":
            first = await caller.first_audio_after(reference, REPLY_WAIT_S)
            await asyncio.sleep(0.5)
            caller.drop()
            fallback_at = first
        elif row.scenario != "call-start":  # that scenario heard its greeting and reply above
            fallback_at = await caller.first_audio_after(reference, REPLY_WAIT_S)
            if fallback_at is None:
                notes.append(f"no reply audio within {REPLY_WAIT_S:g} s: dead air")
            if row.heal_before_hangup:
                await asyncio.to_thread(row.heal, stack)
                healed_at = time.monotonic()
                if fallback_at is None:
                    late = await caller.first_audio_after(reference, REPLY_WAIT_S)
                    if late is not None:
                        notes.append(f"after the engine was healed the reply came {round((late - healed_at) * 1000)} "
                                     "ms later")
                        await caller.listen(late)
            if fallback_at is not None:
                await caller.listen(fallback_at)
        ended_at = time.monotonic()
    if row.scenario == "sms":
        await asyncio.sleep(12 if row.fault == "stall" else 2)  # the outbox's first attempt meets the fault
        await asyncio.to_thread(row.heal, stack)
    heard = heard_after(stack, reference, ended_at)
    failed = silent_failures(stack, reference, ended_at)
    if failed:
        notes.append("no audio at all for: " + "; ".join(failed))
    next_ok, next_note = await normal_call(stack, audio)
    if next_note:
        notes.append(next_note)
    if row.scenario == "sms":
        await sms_settled(stack, number)
    call = await asyncio.to_thread(stored_call, stack, number)
    stored = len(call.turns) if call is not None else 0
    if call is None:
        notes.append("no call record")
    turns = [{"caller_text": turn.caller_text, "action": turn.action, "reason": (turn.reason or "")[:400],
              "item_ids": list(turn.item_ids or []), "spoken": (turn.spoken_text or "")[:40]}
             for turn in (call.turns if call is not None else [])]
    result = {
        "engine": row.engine, "fault": row.fault, "heard": heard,
        "fallback_ms": round((fallback_at - reference) * 1000) if fallback_at and reference else None,
        "within_target": bool(fallback_at and reference and (fallback_at - reference) * 1000 <= TARGET_MS),
        "reference": row.reference, "injected": row.how,
        "fault_to_reference_ms": round((reference - fault_at) * 1000) if reference else None,
        "turns_spoken": spoken, "turns_stored": stored, "stored": turns,
        "sms_sent": None, "sms_duplicates": None, "next_call_normal": next_ok, "notes": notes,
    }
    result["row_s"] = round(time.monotonic() - row_started, 1)
    if row.scenario == "drop":
        result["within_target"] = None
        result["fallback_ms"] = None
    if row.scenario in ("drop", "call-start") and call is not None:
        result["call_status"] = f"{call.status.value}: {call.end_reason}"
    if stack.smsc is not None and row.scenario == "sms":
        rows, most, received = await asyncio.to_thread(sms_counts, stack, number)
        result["sms_sent"] = received
        result["sms_duplicates"] = max(0, received - 1) + max(0, most - 1)
        result["sms_outbox_rows"] = rows
    return result


async def normal_call(stack: Stack, audio: dict[str, bytes]) -> tuple[bool, str]:
    """A fresh call once the engine is back: greeting, the known question, the reply heard, the turn stored with
    the item the healthy stack answered."""
    number = stack.next_number()
    stack.set(transcript=QUESTION)
    async with FaultCaller(stack.ws_url, number) as caller:
        if not await caller.greeting():
            return False, "next call: no greeting"
        _end, replied = await caller.ask(audio[QUESTION])
    if replied is None:
        return False, "next call: no reply"
    for _ in range(50):
        call = await asyncio.to_thread(stored_call, stack, number)
        if call is not None and call.turns:
            break
        await asyncio.sleep(0.2)  # the turn is written in the background after the reply's first audio
    else:
        return False, "next call: turn not stored"
    turn = call.turns[0]
    if stack.expected_item is None:
        stack.expected_item = turn.item_ids[0] if turn.action == "answer" and turn.item_ids else None
    if stack.expected_item is None or stack.expected_item not in turn.item_ids:
        return False, f"next call: answered {turn.action} {turn.item_ids}, expected {stack.expected_item}"
    return True, ""


def select_rows(only: list[str] | None) -> list[Row]:
    if not only:
        return list(ROWS)
    chosen = [row for row in ROWS if row.engine in only or row.key in only]
    unknown = [name for name in only if not any(name in (row.engine, row.key) for row in ROWS)]
    if unknown:
        engines = ", ".join(dict.fromkeys(row.engine for row in ROWS))
        raise ValueError(f"unknown rows: {', '.join(unknown)} (engines: {engines})")
    return chosen


def run_faults(only: list[str] | None = None, keep_workdir: bool = False) -> dict:
    """Every chosen row, stack by stack; the JSON report."""
    rows = select_rows(only)
    workdir = Path(tempfile.mkdtemp(prefix="hotline-faults-"))
    started = time.monotonic()
    results: list[dict] = []
    startup: dict[str, float] = {}
    try:
        from voice.testing.tiny_models import build_tiny_paraformer

        model = build_tiny_paraformer(workdir / "tiny-paraformer")
        audio = asyncio.run(_all_speech(rows))
        kinds = [kind for kind in ("network", "local") if any(row.stack == kind for row in rows)] or ["local"]
        for kind in kinds:
            chosen = [row for row in rows if row.stack == kind or (row.stack == "any" and kind == kinds[0])]
            if not chosen:
                continue
            starting = time.monotonic()
            stack = start_stack(kind, workdir, model, {row.engine for row in chosen})
            startup[kind] = round(time.monotonic() - starting, 1)
            try:
                results += asyncio.run(_run_rows(stack, chosen, audio))
            finally:
                stack.close()
    finally:
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"rows": results, "target_ms": TARGET_MS, "wall_s": round(time.monotonic() - started, 1),
              "startup_s": startup,
              "summary": summarise(results)}
    if keep_workdir:
        report["workdir"] = str(workdir)
    return report


async def _all_speech(rows: list[Row]) -> dict[str, bytes]:
    texts = dict.fromkeys((QUESTION, LLM_QUESTION, CONSENT, *(row.question for row in rows if row.question)))
    return {text: await _speech(text) for text in texts}


async def _run_rows(stack: Stack, rows: list[Row], audio: dict[str, bytes]) -> list[dict]:
    ok, note = await normal_call(stack, audio)  # the baseline: the healthy stack's item for the known question
    if not ok:
        raise RuntimeError(f"the {stack.kind} stack is not healthy before any fault: {note}")
    results = []
    for row in rows:
        try:
            results.append(await run_row(stack, row, audio))
        except Exception as exc:  # noqa: BLE001 - one broken row is reported, the others still run
            results.append({"engine": row.engine, "fault": row.fault, "error": f"{type(exc).__name__}: {exc}"})
            with contextlib.suppress(Exception):
                await asyncio.to_thread(row.heal, stack)
    return results


def summarise(results: list[dict]) -> dict:
    measured = [r for r in results if r.get("within_target") is not None and "error" not in r]
    return {
        "rows": len(results),
        "within_target": sum(1 for r in measured if r["within_target"]),
        "measured": len(measured),
        "lost_turns": sum(max(0, r.get("turns_spoken", 0) - r.get("turns_stored", 0)) for r in results),
        "sms_duplicates": sum(r.get("sms_duplicates") or 0 for r in results),
        "next_call_not_normal": [f"{r['engine']}:{r['fault']}" for r in results if not r.get("next_call_normal")],
        "errors": [f"{r['engine']}:{r['fault']}" for r in results if "error" in r],
    }

