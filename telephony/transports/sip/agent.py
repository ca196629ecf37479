"""The SIP line: pjsua2 user agents that take calls from a trunk or as a PBX extension, one `CallTransport` each.

PJSIP never runs in the hotline's process: each engine (`engine.py`) is a process of its own with one pjsua2 endpoint,
which PyPI's builds limit to 4 simultaneous calls, so the line runs ceil(max_calls / 4) engines on consecutive ports
(a front such as Kamailio, `deploy/kamailio/`, spreads a trunk's calls over them). PJSIP's threads are thus off the
event loop by construction, and a PJSIP crash costs that engine's calls only: the line restarts it.

Here, one reader thread per engine takes its messages off the pipe and hands them to the event loop with
`call_soon_threadsafe`; commands go down the pipe from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from telephony.calls.base import CallerAudio, CallInfo, KeyPressed, LineEvent, Transferred, TransferUnavailable
from telephony.store.models import CallChannel
from telephony.transports.base import CallHandler, LineState, LineStatus
from telephony.transports.sip.config import SipConfig
from telephony.transports.sip.headers import transfer_uri

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
TRANSFER_TIMEOUT_S = 35.0  # the engine gives up on its own after 30 s
RESTART_DELAY_S = 1.0
MAX_RESTARTS = 5
_TRANSFERRED = object()  # queue marker: the caller left the assistant (REFER accepted or a bridged leg answered)


class SipCallTransport:
    """One answered SIP call, as the call runner sees it (`CallTransport`); its actions go to its engine."""

    def __init__(self, engine: _EngineHandle, key: int, info: CallInfo, peer_uri: str) -> None:
        self.engine = engine
        self.key = key
        self.info = info
        self.peer_uri = peer_uri
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.ended = False
        self.transferred_to: str | None = None
        self.on_hold = False
        self.stats: dict = {}

    async def events(self) -> AsyncIterator[LineEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if event is _TRANSFERRED:  # with a person now: the assistant's part ends, the engine keeps the call
                yield Transferred(self.transferred_to or "")
                return
            yield event  # type: ignore[misc]

    async def send_audio(self, pcm16: bytes) -> None:
        if not self.ended and self.transferred_to is None:
            self.engine.send(("audio", self.key, pcm16))

    async def clear(self) -> None:
        if not self.ended:
            self.engine.send(("clear", self.key))

    async def transfer(self, target: str) -> None:
        if self.ended:
            raise TransferUnavailable("the caller has already hung up")
        try:
            uri = transfer_uri(target, self.peer_uri)
        except ValueError as exc:
            raise TransferUnavailable(str(exc)) from exc
        await self.engine.transfer(self, uri)  # on success the engine's reply has already marked the call

    def _transferred(self, uri: str) -> None:
        """The engine reports the transfer done. Called from the message handler, in the order the engine's
        messages came, so a BYE that follows the REFER's final NOTIFY can never be read as the caller hanging up."""
        if self.transferred_to is None:
            self.transferred_to = uri
            self.queue.put_nowait(_TRANSFERRED)

    async def hang_up(self) -> None:
        if self.ended:
            return
        if self.transferred_to is not None:
            log.info("SIP call %s is with %s: the assistant leaves it up", self.info.line_call_id, self.transferred_to)
            return
        self.engine.send(("hangup", self.key, 200))

    def _ended(self, stats: dict | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.stats = stats or {}
            self.queue.put_nowait(None)


@dataclass
class _EngineHandle:
    """The hotline's side of one engine process."""

    line: SipLine
    index: int
    config: SipConfig
    process: multiprocessing.Process | None = None
    connection: object = None
    state: str = "starting"
    detail: str = ""
    counters: dict = field(default_factory=dict)
    counters_before: dict = field(default_factory=dict)  # of earlier incarnations (restarts)
    calls: dict[int, SipCallTransport] = field(default_factory=dict)
    requests: dict[int, asyncio.Future] = field(default_factory=dict)
    transfers: dict[int, tuple[SipCallTransport, str]] = field(default_factory=dict)  # request -> (call, target)
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: tuple) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            with self.lock:
                connection.send(message)
        except (OSError, ValueError) as exc:
            log.warning("SIP engine %d unreachable: %s", self.index, exc)

    async def transfer(self, transport: SipCallTransport, uri: str) -> None:
        request = next(self.line.requests)
        future = asyncio.get_running_loop().create_future()
        self.requests[request] = future
        self.transfers[request] = (transport, uri)
        self.send(("transfer", request, transport.key, uri))
        try:
            error = await asyncio.wait_for(future, TRANSFER_TIMEOUT_S)
        except TimeoutError:
            error = f"the SIP engine did not answer the transfer to {uri}"
        finally:
            self.requests.pop(request, None)
            self.transfers.pop(request, None)
        counters = self.line.transfers
        if error:
            counters["failed"] = counters.get("failed", 0) + 1
            raise TransferUnavailable(error)
        counters[self.config.transfer_mode] = counters.get(self.config.transfer_mode, 0) + 1


class SipLine:
    """The SIP line of this worker (`ServedLine`): `config.engines` engine processes from `config.port` on."""

    name = "sip"

    def __init__(self, config: SipConfig) -> None:
        self.config = config
        self.engines: list[_EngineHandle] = []
        self.requests = itertools.count(1)
        self.transfers: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._calls: CallHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._started = False
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads and models

    # -- status -------------------------------------------------------------------------------------

    def status(self) -> LineStatus:
        if not self._started:
            return LineStatus(LineState.STARTING, "not started")
        states = {engine.state for engine in self.engines}
        failed = [f"engine {e.index} (port {e.config.port}): {e.detail}" for e in self.engines if e.state == "failed"]
        counters = self.counter_values()
        if failed and len(failed) == len(self.engines):
            return LineStatus(LineState.FAILED, "; ".join(failed), counters)
        address = f"{self.config.transport}:{self.config.host}:{self.config.ports}"
        detail = (f"{address}, {len(self.engines)} engine(s); {counters['calls_now']} calls now, "
                  f"{counters['calls_total']} taken, {counters['refused_busy']} refused busy")
        if failed:
            detail += "; " + "; ".join(failed)
        if self.config.mode == "register":
            engine = self.engines[0]
            state = LineState.REGISTERED if engine.state == "registered" else LineState.STARTING
            return LineStatus(state, f"{engine.detail}; {detail}", counters)
        state = LineState.LISTENING if "listening" in states else LineState.STARTING
        return LineStatus(state, detail, counters)

    def counter_values(self) -> dict[str, int]:
        totals = {"calls_now": 0, "calls_total": 0, "refused_busy": 0, "rejected": 0, "frames_in": 0, "frames_out": 0,
                  "rtp_received": 0, "rtp_lost": 0, "rtp_discarded": 0, "dtmf": 0}
        for engine in self.engines:
            for source in (engine.counters_before, engine.counters):
                for name, value in source.items():
                    if name in totals and not (name == "calls_now" and source is engine.counters_before):
                        totals[name] += value
        totals["engine_restarts"] = sum(engine.restarts for engine in self.engines)
        totals.update({f"transfers_{kind}": count for kind, count in self.transfers.items()})
        return totals

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self, calls: CallHandler) -> None:
        self._calls = calls
        self._loop = asyncio.get_running_loop()
        self.engines = [_EngineHandle(self, index, self.config.for_engine(index))
                        for index in range(self.config.engines)]
        self._started = True
        await asyncio.gather(*(self._start_engine(engine) for engine in self.engines))
        status = self.status()
        if status.state is LineState.FAILED:
            log.error("SIP line failed to start: %s", status.detail)
        else:
            log.info("SIP line: %s on %s:%s (%d engines, codecs %s, up to %d calls)", self.config.mode,
                     self.config.host, self.config.ports, len(self.engines), "/".join(self.config.codecs),
                     self.config.max_calls)

    async def _start_engine(self, engine: _EngineHandle) -> None:
        from telephony.transports.sip.engine import run_engine  # imports pjsua2: only where the line runs

        ours, theirs = self._context.Pipe(duplex=True)
        ready = self._loop.create_future()
        process = self._context.Process(target=run_engine, args=(engine.config, theirs, logging.WARNING),
                                        name=f"sip-engine-{engine.index}", daemon=True)
        try:
            process.start()
        except OSError as exc:
            engine.state, engine.detail = "failed", f"could not start the engine process: {exc}"
            return
        theirs.close()
        engine.process, engine.connection = process, ours
        engine.counters_before = _add(engine.counters_before, engine.counters)
        engine.counters = {}
        # Before the reader runs: a registrar's answer may come right behind "ready" and must not be overwritten.
        engine.state, engine.detail = "starting", f"port {engine.config.port}"
        reader = threading.Thread(target=self._read, args=(engine, ours, ready), name=f"sip-engine-{engine.index}",
                                  daemon=True)
        reader.start()
        try:
            error = await asyncio.wait_for(ready, START_TIMEOUT_S)
        except TimeoutError:
            error = f"PJSIP did not start within {START_TIMEOUT_S:.0f} s"
        if error:
            engine.state, engine.detail = "failed", error
            engine.send(("stop",))
            return
        if self.config.mode != "register":  # registered or failed comes from the engine's status messages
            engine.state, engine.detail = "listening", f"port {engine.config.port}"

    def _read(self, engine: _EngineHandle, connection, ready: asyncio.Future) -> None:
        """Reader thread of one engine: every message goes to the loop, in order."""
        loop = self._loop
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            try:
                loop.call_soon_threadsafe(self._on_message, engine, message, ready)
            except RuntimeError:  # the loop has closed
                return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_engine_gone, engine, connection, ready)

    def _on_message(self, engine: _EngineHandle, message: tuple, ready: asyncio.Future) -> None:
        kind = message[0]
        if kind == "audio":
            transport = engine.calls.get(message[1])
            if transport is not None:
                transport.queue.put_nowait(CallerAudio(message[2]))
        elif kind == "dtmf":
            transport = engine.calls.get(message[1])
            if transport is not None:
                transport.queue.put_nowait(KeyPressed(message[2]))
        elif kind == "call":
            self._answered(engine, *message[1:])
        elif kind == "ended":
            transport = engine.calls.pop(message[1], None)
            if transport is not None:
                transport._ended(message[2])
        elif kind == "hold":
            transport = engine.calls.get(message[1])
            if transport is not None:
                transport.on_hold = message[2]
        elif kind == "done":
            future = engine.requests.get(message[1])
            if future is not None and not future.done():
                transfer = engine.transfers.get(message[1])
                if transfer is not None and not message[2]:
                    transfer[0]._transferred(transfer[1])
                future.set_result(message[2])
        elif kind == "counters":
            engine.counters = message[1]
        elif kind == "status":
            engine.state, engine.detail = message[1], message[2]
            if message[1] == "failed":
                log.error("SIP engine %d: %s", engine.index, message[2])
        elif kind == "ready":
            if not ready.done():
                ready.set_result(message[1])

    def _answered(self, engine: _EngineHandle, key: int, caller: str | None, called: str | None, call_id: str,
                  peer_uri: str) -> None:
        transport = SipCallTransport(engine, key, CallInfo(CallChannel.SIP, caller_number=caller,
                                                          called_number=called, line_call_id=call_id), peer_uri)
        engine.calls[key] = transport
        if self._calls is None or self._closing:
            engine.send(("hangup", key, 503))
            return
        task = asyncio.get_running_loop().create_task(self._calls.run(transport), name=f"sip-{call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_engine_gone(self, engine: _EngineHandle, connection, ready: asyncio.Future) -> None:
        if connection is not engine.connection:
            return  # an earlier incarnation
        engine.connection = None
        if not ready.done():
            ready.set_result("the engine process exited while starting")
        for transport in engine.calls.values():
            transport._ended({"error": "SIP engine exited"})
        engine.calls.clear()
        for future in engine.requests.values():
            if not future.done():
                future.set_result("the SIP engine exited")
        if self._closing:
            engine.state, engine.detail = "stopped", "stopped"
            return
        code = engine.process.exitcode if engine.process is not None else None
        engine.state, engine.detail = "failed", f"engine process exited (code {code})"
        log.error("SIP engine %d (port %d) exited with code %s; its calls ended", engine.index, engine.config.port,
                  code)
        if engine.restarts < MAX_RESTARTS:
            engine.restarts += 1
            task = asyncio.get_running_loop().create_task(self._restart(engine))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _restart(self, engine: _EngineHandle) -> None:
        await asyncio.sleep(RESTART_DELAY_S)  # let the port be released
        if engine.process is not None:
            await asyncio.to_thread(engine.process.join, 2)
        if not self._closing:
            await self._start_engine(engine)

    async def close(self) -> None:
        self._closing = True
        for engine in self.engines:
            engine.send(("stop",))  # each engine hangs up its calls; their runners end as their lines drop
        for engine in self.engines:
            if engine.process is not None:
                await asyncio.to_thread(engine.process.join, STOP_TIMEOUT_S)
                if engine.process.is_alive():
                    engine.process.kill()
                    await asyncio.to_thread(engine.process.join, 2)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
        for engine in self.engines:
            for transport in engine.calls.values():
                transport._ended()
            engine.calls.clear()
            if engine.connection is not None:
                with contextlib.suppress(OSError):
                    engine.connection.close()
                engine.connection = None


def _add(first: dict, second: dict) -> dict:
    return {name: first.get(name, 0) + second.get(name, 0) for name in set(first) | set(second)}
