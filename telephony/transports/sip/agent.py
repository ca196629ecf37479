"""The SIP line: a pjsua2 user agent that takes calls from a trunk or as a PBX extension, one `CallTransport` each.

Threads: PJSIP runs in one thread of its own (`_PjWorker`), created here, that polls SIP events and runs every
pjsua2 call the asyncio side asks for (a command queue); PJSIP's media clock thread moves 20 ms frames through
`_FramePort`. Neither thread touches asyncio objects except through `loop.call_soon_threadsafe`, and asyncio code never
calls pjsua2: it puts commands on the queue and awaits their futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from telephony.calls.base import CallerAudio, CallInfo, KeyPressed, LineEvent, TransferUnavailable
from telephony.store.models import CallChannel
from telephony.transports.base import CallHandler, LineState, LineStatus
from telephony.transports.sip.frames import OutgoingAudio, vector_bytes
from telephony.transports.sip.headers import caller_id, header_values, number_of, transfer_uri, uri_of

log = logging.getLogger(__name__)

CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}
TRANSFER_TIMEOUT_S = 30.0
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_MS = 5
_TRANSFERRED = object()  # queue marker: the caller left the assistant (REFER accepted or a bridged leg answered)


@dataclass(frozen=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    transport: str = "udp"
    public_address: str | None = None
    rtp_port: int = 40000
    rtp_port_range: int = 1000
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    max_calls: int = 30
    user: str = "hotline"
    mode: str = "trunk"  # or "register"
    registrar: str | None = None
    auth_user: str | None = None
    password: str | None = None
    realm: str = "*"
    register_expires_s: int = 300
    transfer_mode: str = "refer"  # or "bridge"
    ring_ms: int = 0  # 180 Ringing this long before 200 OK
    pjsip_log_level: int = 1


@dataclass
class SipCounters:
    calls_now: int = 0
    calls_total: int = 0
    refused_busy: int = 0
    frames_in: int = 0
    frames_out: int = 0
    rtp_received: int = 0
    rtp_lost: int = 0
    rtp_discarded: int = 0
    dtmf: int = 0
    transfers: dict[str, int] = field(default_factory=dict)


class SipLine:
    """The SIP line of this worker (`ServedLine`): one pjsua2 endpoint on `config.host:config.port`."""

    name = "sip"

    def __init__(self, config: SipConfig) -> None:
        self.config = config
        self.counters = SipCounters()
        self._status = LineStatus(LineState.STARTING, "not started")
        self._worker: _PjWorker | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._calls: CallHandler | None = None

    def status(self) -> LineStatus:
        status = self._status
        if status.state in (LineState.LISTENING, LineState.REGISTERED):
            c = self.counters
            detail = f"{c.calls_now} calls now, {c.calls_total} taken, {c.refused_busy} refused busy"
            if status.detail:
                detail = f"{status.detail}; {detail}"
            return LineStatus(status.state, detail, self.counter_values())
        return status

    def counter_values(self) -> dict[str, int]:
        c = self.counters
        return {"calls_now": c.calls_now, "calls_total": c.calls_total, "refused_busy": c.refused_busy,
                "frames_in": c.frames_in, "frames_out": c.frames_out, "rtp_received": c.rtp_received,
                "rtp_lost": c.rtp_lost, "rtp_discarded": c.rtp_discarded, "dtmf": c.dtmf,
                **{f"transfers_{kind}": count for kind, count in c.transfers.items()}}

    def _set_status(self, state: LineState, detail: str = "") -> None:
        self._status = LineStatus(state, detail)

    async def start(self, calls: CallHandler) -> None:
        loop = asyncio.get_running_loop()
        self._calls = calls
        ready: asyncio.Future[str | None] = loop.create_future()
        self._worker = _PjWorker(self, loop, ready)
        self._thread = threading.Thread(target=self._worker.run, name="pjsip", daemon=True)
        self._thread.start()
        try:
            error = await asyncio.wait_for(ready, START_TIMEOUT_S)
        except TimeoutError:
            error = f"PJSIP did not start within {START_TIMEOUT_S:.0f} s"
            self._worker.stop()
        if error:
            self._set_status(LineState.FAILED, error)
            log.error("SIP line failed to start: %s", error)
            return
        address = f"{self.config.transport}:{self.config.host}:{self.config.port}"
        if self.config.mode == "register":
            self._set_status(LineState.STARTING, f"registering at {self.config.registrar} from {address}")
        else:
            self._set_status(LineState.LISTENING, address)
        log.info("SIP line: %s on %s (codecs %s, up to %d calls)", self.config.mode, address,
                 "/".join(self.config.codecs), self.config.max_calls)

    def _spawn(self, transport: SipCallTransport) -> None:
        """Loop thread: a call was answered; run it."""
        if self._calls is None:
            return
        task = asyncio.get_running_loop().create_task(self._calls.run(transport),
                                                      name=f"sip-{transport.info.line_call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        worker, thread = self._worker, self._thread
        if worker is None or thread is None:
            return
        worker.stop()  # hangs up the calls still up; their runners end as their lines drop
        await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
        self._set_status(LineState.FAILED, "stopped")
        self._worker = self._thread = None


class SipCallTransport:
    """One answered SIP call, as the call runner sees it (`CallTransport`). Lives on the asyncio side; every action
    on the call goes to the PJSIP thread as a command."""

    def __init__(self, worker: _PjWorker, call_id: int, info: CallInfo, audio_out: OutgoingAudio,
                 peer_uri: str) -> None:
        self.worker = worker
        self.pj_call_id = call_id
        self.info = info
        self.audio_out = audio_out
        self.peer_uri = peer_uri
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.ended = False
        self.transferred_to: str | None = None
        self.on_hold = False
        self.rtp: dict[str, int] = {}

    async def events(self) -> AsyncIterator[LineEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if event is _TRANSFERRED or self.transferred_to is not None:
                continue  # with an agent now: the assistant hears nothing more; the call ends when the caller leaves
            yield event  # type: ignore[misc]

    async def send_audio(self, pcm16: bytes) -> None:
        if not self.ended and self.transferred_to is None:
            self.audio_out.write(pcm16)

    async def clear(self) -> None:
        self.audio_out.clear()

    async def transfer(self, target: str) -> None:
        if self.ended:
            raise TransferUnavailable("the caller has already hung up")
        try:
            uri = transfer_uri(target, self.peer_uri)
        except ValueError as exc:
            raise TransferUnavailable(str(exc)) from exc
        await self.worker.transfer(self, uri)

    async def hang_up(self) -> None:
        if self.ended:
            return
        if self.transferred_to is not None:
            log.info("SIP call %s is with %s: the assistant leaves it up", self.info.line_call_id, self.transferred_to)
            return
        with contextlib.suppress(Exception):
            await self.worker.submit(lambda: self.worker.hangup(self.pj_call_id, 200))

    # -- called on the loop thread by the worker ----------------------------------------------------

    def _ended(self) -> None:
        self.ended = True
        self.queue.put_nowait(None)


# ------------------------------------------------------------------------------------------------
# Everything below runs on PJSIP threads.

try:  # pjsua2 is a dependency of the SIP line only: the rest of the hotline imports without it
    import pjsua2 as pj
except ImportError:  # pragma: no cover - setup installs it
    pj = None  # type: ignore[assignment]


def _post(loop: asyncio.AbstractEventLoop, callback: Callable, *args) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
        loop.call_soon_threadsafe(callback, *args)


if pj is not None:

    class _FramePort(pj.AudioMediaPort):
        """A conference-bridge port: frames from the caller go to `on_audio`, frames to the caller come from `out`."""

        def __init__(self, on_audio: Callable[[bytes], None], out: OutgoingAudio) -> None:
            super().__init__()
            self.on_audio = on_audio
            self.out = out
            self.frames_in = 0

        def onFrameReceived(self, frame) -> None:
            if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
                return
            data = vector_bytes(frame.buf)
            if data:
                self.frames_in += 1
                self.on_audio(data)

        def onFrameRequested(self, frame) -> None:
            data = self.out.next_frame()
            if data is None:
                frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
                frame.size = 0
                return
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(data)
            frame.size = len(data)

    class _Call(pj.Call):
        def __init__(self, worker: _PjWorker, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
            super().__init__(account, call_id)
            self.worker = worker
            self.transport: SipCallTransport | None = None  # the assistant's side of a caller's leg
            self.port: _FramePort | None = None
            self.partner: _Call | None = None  # the other leg of a bridged transfer
            self.bridged = False
            self.answered = False
            self.transfer_future: asyncio.Future | None = None
            self.leg_future: asyncio.Future | None = None  # an outgoing leg waiting to be answered

        def onCallState(self, prm) -> None:
            self.worker.on_call_state(self)

        def onCallMediaState(self, prm) -> None:
            self.worker.on_media_state(self)

        def onDtmfDigit(self, prm) -> None:
            self.worker.on_dtmf(self, prm.digit)

        def onCallTransferStatus(self, prm) -> None:
            self.worker.on_transfer_status(self, prm)

        def onStreamDestroyed(self, prm) -> None:
            self.worker.on_stream_destroyed(self, prm.streamIdx)

    class _Account(pj.Account):
        def __init__(self, worker: _PjWorker) -> None:
            super().__init__()
            self.worker = worker

        def onIncomingCall(self, prm) -> None:
            self.worker.on_incoming(_Call(self.worker, self, prm.callId), prm.rdata.wholeMsg)

        def onRegState(self, prm) -> None:
            self.worker.on_reg_state(self, prm.code, prm.reason)


class _PjWorker:
    """Owns the pjsua2 endpoint: started, polled and destroyed on its own thread."""

    def __init__(self, line: SipLine, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        self.line = line
        self.config = line.config
        self.loop = loop
        self.ready = ready
        self.commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.stopping = False
        self.endpoint = None
        self.account = None
        self.calls: dict[int, _Call] = {}  # every pj.Call we hold, by pjsua call id, until it is disconnected
        self.released: list[_Call] = []  # disconnected, dropped on the next poll (not inside their own callback)

    # -- lifecycle ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping = True

    def run(self) -> None:
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - pj.Error and friends: report, never kill the server
            reason = exc.info() if pj is not None and isinstance(exc, pj.Error) else str(exc)
            _post(self.loop, _resolve, self.ready, reason.strip() or repr(exc))
            self._destroy()
            return
        _post(self.loop, _resolve, self.ready, None)
        try:
            while not self.stopping:
                self._poll()
            self._hang_up_all()
        finally:
            self._destroy()

    def _start(self) -> None:
        if pj is None:
            raise RuntimeError("pjsua2 is not installed (pip install pjsua2-python)")
        config = self.config
        endpoint = pj.Endpoint()
        endpoint.libCreate()
        self.endpoint = endpoint
        ep_config = pj.EpConfig()
        ep_config.uaConfig.threadCnt = 0  # this thread polls; no PJSIP worker threads calling into Python
        ep_config.uaConfig.mainThreadOnly = False
        ep_config.uaConfig.maxCalls = config.max_calls + 8  # room to answer the excess with 486 ourselves
        ep_config.uaConfig.userAgent = "hotline-sip"
        ep_config.medConfig.clockRate = 8000
        ep_config.medConfig.sndClockRate = 8000
        ep_config.medConfig.channelCount = 1
        ep_config.medConfig.audioFramePtime = 20
        ep_config.medConfig.maxMediaPorts = 3 * (config.max_calls + 8) + 4
        ep_config.medConfig.noVad = True
        ep_config.medConfig.ecTailLen = 0
        ep_config.medConfig.jbInit = 0
        ep_config.medConfig.jbMinPre = 0
        ep_config.medConfig.jbMaxPre = 6
        ep_config.logConfig.level = config.pjsip_log_level
        ep_config.logConfig.consoleLevel = config.pjsip_log_level
        endpoint.libInit(ep_config)

        transport_config = pj.TransportConfig()
        transport_config.port = config.port
        transport_config.boundAddress = config.host
        if config.public_address:
            transport_config.publicAddress = config.public_address
        kind = pj.PJSIP_TRANSPORT_TCP if config.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
        endpoint.transportCreate(kind, transport_config)
        endpoint.libStart()
        endpoint.audDevManager().setNullDev()  # no sound card: the conference bridge runs on a null clock
        for codec in endpoint.codecEnum2():
            endpoint.codecSetPriority(codec.codecId, 0)
        for rank, name in enumerate(config.codecs):
            endpoint.codecSetPriority(CODEC_IDS[name], 255 - rank)

        account_config = pj.AccountConfig()
        media = account_config.mediaConfig.transportConfig
        media.port = config.rtp_port
        media.portRange = config.rtp_port_range
        media.boundAddress = config.host
        if config.public_address:
            media.publicAddress = config.public_address
        if config.mode == "register":
            registrar_host = config.registrar.split(":", 1)[1].split(";", 1)[0]
            account_config.idUri = f"sip:{config.auth_user}@{registrar_host.split(':', 1)[0]}"
            account_config.regConfig.registrarUri = config.registrar
            account_config.regConfig.timeoutSec = config.register_expires_s
            account_config.regConfig.retryIntervalSec = 30
            account_config.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", config.realm, config.auth_user, 0, config.password or ""))
        else:
            account_config.idUri = f"sip:{config.user}@{config.public_address or config.host}:{config.port}"
            account_config.regConfig.registerOnAdd = False
        account = _Account(self)
        account.create(account_config, True)
        self.account = account

    def _poll(self) -> None:
        self.endpoint.libHandleEvents(POLL_MS)
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                break
            command()
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            callback()
        self.released.clear()

    def _hang_up_all(self) -> None:
        for call_id in list(self.calls):
            self.hangup(call_id, 503)
        deadline = time.monotonic() + 2.0
        while self.calls and time.monotonic() < deadline:
            self._poll()

    def _destroy(self) -> None:
        self.calls.clear()
        self.released.clear()
        self.account = None
        gc.collect()  # every pj.Call and port must be gone before libDestroy, or pjsua asserts
        if self.endpoint is not None:
            with contextlib.suppress(Exception):
                self.endpoint.libDestroy()
            self.endpoint = None

    def later(self, delay_s: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay_s, next(self._sequence), callback))

    def submit(self, action: Callable[[], object]) -> asyncio.Future:
        """Loop thread: run `action` on the PJSIP thread; its result or error comes back in the future."""
        future = self.loop.create_future()
        if self.stopping:
            future.set_exception(TransferUnavailable("the SIP line is stopping"))
            return future

        def run() -> None:
            try:
                result = action()
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                _post(self.loop, _fail, future, exc)
            else:
                _post(self.loop, _resolve, future, result)

        self.commands.put(run)
        return future

    # -- calls (PJSIP thread) -----------------------------------------------------------------------

    def on_incoming(self, call: _Call, invite: str) -> None:
        call_id = call.getId()
        self.calls[call_id] = call
        counters = self.line.counters
        if self.stopping or counters.calls_now >= self.config.max_calls:
            counters.refused_busy += 1
            log.warning("SIP INVITE refused: %s", "the line is stopping" if self.stopping
                        else f"{counters.calls_now} calls already (capacity {self.config.max_calls})")
            self.hangup(call_id, 503 if self.stopping else 486)
            return
        counters.calls_now += 1
        counters.calls_total += 1
        info = call.getInfo()
        called = header_values(invite, "to")
        transport = SipCallTransport(
            self, call_id,
            CallInfo(CallChannel.SIP, caller_number=caller_id(invite),
                     called_number=number_of(uri_of(called[0])) if called else None,
                     line_call_id=info.callIdString),
            OutgoingAudio(), info.remoteContact or info.remoteUri)
        call.transport = transport
        self._answer(call, 180)
        if self.config.ring_ms > 0:
            self.later(self.config.ring_ms / 1000, lambda: self._answer(call, 200))
        else:
            self._answer(call, 200)

    def _answer(self, call: _Call, code: int) -> None:
        if call.getId() not in self.calls or call.answered:
            return  # cancelled while ringing
        parameters = pj.CallOpParam(True)
        parameters.statusCode = code
        try:
            call.answer(parameters)
        except pj.Error as exc:
            log.warning("SIP answer %d failed: %s", code, exc.info().strip())

    def hangup(self, call_id: int, code: int) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        parameters = pj.CallOpParam(True)
        parameters.statusCode = code
        with contextlib.suppress(pj.Error):
            call.hangup(parameters)

    def on_call_state(self, call: _Call) -> None:
        info = call.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not call.answered:
            call.answered = True
            if call.transport is not None:
                _post(self.loop, self.line._spawn, call.transport)
            if call.leg_future is not None:
                _post(self.loop, _resolve, call.leg_future, True)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._disconnected(call, info)

    def _disconnected(self, call: _Call, info) -> None:
        call_id = info.id
        self.calls.pop(call_id, None)
        self.released.append(call)  # keep it alive until this callback has returned
        transport = call.transport
        if transport is not None:
            self.line.counters.calls_now -= 1
            if call.port is not None:
                self.line.counters.frames_in += call.port.frames_in
                self.line.counters.frames_out += call.port.out.frames_sent
            _post(self.loop, transport._ended)
        if call.leg_future is not None:
            _post(self.loop, _fail, call.leg_future,
                  TransferUnavailable(f"{info.remoteUri} answered {info.lastStatusCode} {info.lastReason}"))
        if call.transfer_future is not None:
            _post(self.loop, _fail, call.transfer_future, TransferUnavailable("the call ended during the transfer"))
        partner = call.partner
        if partner is not None:
            call.partner = partner.partner = None
            self.hangup(partner.getId(), 200)  # a bridged transfer ends when either side leaves
        call.port = None

    def on_media_state(self, call: _Call) -> None:
        info = call.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if call.transport is not None:
                call.transport.on_hold = media.status in (pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
                                                          pj.PJSUA_CALL_MEDIA_LOCAL_HOLD)
            if media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = call.getAudioMedia(index)
            partner = call.partner
            if call.bridged and partner is not None and partner.hasMedia():
                other = partner.getAudioMedia(-1)
                audio.startTransmit(other)
                other.startTransmit(audio)
            elif call.transport is not None and not call.bridged:
                if call.port is None:
                    call.port = self._port_for(call.transport)
                audio.startTransmit(call.port)
                call.port.startTransmit(audio)
            break

    def _port_for(self, transport: SipCallTransport) -> _FramePort:
        loop = self.loop
        queue_put = transport.queue.put_nowait

        def on_audio(data: bytes) -> None:
            _post(loop, queue_put, CallerAudio(data))

        port = _FramePort(on_audio, transport.audio_out)
        audio_format = pj.MediaFormatAudio()
        audio_format.type = pj.PJMEDIA_TYPE_AUDIO
        audio_format.clockRate = 8000
        audio_format.channelCount = 1
        audio_format.bitsPerSample = 16
        audio_format.frameTimeUsec = 20000
        port.createPort(f"call-{transport.pj_call_id}", audio_format)
        return port

    def on_dtmf(self, call: _Call, digit: str) -> None:
        transport = call.transport
        if transport is None or not digit:
            return
        self.line.counters.dtmf += 1
        _post(self.loop, transport.queue.put_nowait, KeyPressed(digit[:1].upper()))

    def on_stream_destroyed(self, call: _Call, index: int) -> None:
        with contextlib.suppress(Exception):
            stat = call.getStreamStat(index)
            received = stat.rtcp.rxStat
            counters = self.line.counters
            counters.rtp_received += received.pkt
            counters.rtp_lost += received.loss
            counters.rtp_discarded += received.discard
            if call.transport is not None:
                call.transport.rtp = {"received": received.pkt, "lost": received.loss, "discarded": received.discard}

    def on_reg_state(self, account: _Account, code: int, reason: str) -> None:
        info = account.getInfo()
        if info.regIsActive:
            self.line._set_status(LineState.REGISTERED, f"at {self.config.registrar} ({info.regExpiresSec} s)")
        elif 200 <= code < 300:
            self.line._set_status(LineState.STARTING, "unregistered")
        else:
            self.line._set_status(LineState.FAILED, f"registrar {self.config.registrar} answered {code} {reason}")
            log.error("SIP registration failed: %s %s", code, reason)

    # -- transfer -----------------------------------------------------------------------------------

    async def transfer(self, transport: SipCallTransport, uri: str) -> None:
        """Loop thread: blind transfer by REFER, or a second leg bridged here, by `config.transfer_mode`."""
        mode = self.config.transfer_mode
        counters = self.line.counters
        try:
            if mode == "bridge":
                await self._bridge(transport, uri)
            else:
                await self._refer(transport, uri)
        except TransferUnavailable:
            counters.transfers["failed"] = counters.transfers.get("failed", 0) + 1
            raise
        counters.transfers[mode] = counters.transfers.get(mode, 0) + 1
        transport.transferred_to = uri
        transport.queue.put_nowait(_TRANSFERRED)

    async def _refer(self, transport: SipCallTransport, uri: str) -> None:
        future = self.loop.create_future()

        def send_refer() -> None:
            call = self.calls.get(transport.pj_call_id)
            if call is None:
                raise TransferUnavailable("the caller has already hung up")
            call.transfer_future = future
            try:
                call.xfer(uri, pj.CallOpParam(True))
            except pj.Error as exc:
                call.transfer_future = None
                raise TransferUnavailable(f"REFER to {uri} not sent: {exc.info().strip()}") from None

        await self.submit(send_refer)
        try:
            await asyncio.wait_for(future, TRANSFER_TIMEOUT_S)
        except TimeoutError:
            raise TransferUnavailable(f"no final answer to the REFER to {uri} within {TRANSFER_TIMEOUT_S:.0f} s") \
                from None
        # The target answered: the peer connected the caller there; our leg is done (RFC 5589 §6).
        await self.submit(lambda: self.hangup(transport.pj_call_id, 200))

    def on_transfer_status(self, call: _Call, prm) -> None:
        future = call.transfer_future
        if not prm.finalNotify or future is None:
            return
        call.transfer_future = None
        code = prm.statusCode
        if 200 <= code < 300:
            _post(self.loop, _resolve, future, code)
        else:
            _post(self.loop, _fail, future, TransferUnavailable(f"transfer refused: {code} {prm.reason}"))
        prm.cont = False

    async def _bridge(self, transport: SipCallTransport, uri: str) -> None:
        leg_answered = self.loop.create_future()

        def dial() -> int:
            caller = self.calls.get(transport.pj_call_id)
            if caller is None:
                raise TransferUnavailable("the caller has already hung up")
            leg = _Call(self, self.account)
            leg.leg_future = leg_answered
            try:
                leg.makeCall(uri, pj.CallOpParam(True))
            except pj.Error as exc:
                raise TransferUnavailable(f"could not call {uri}: {exc.info().strip()}") from None
            self.calls[leg.getId()] = leg
            return leg.getId()

        leg_id = await self.submit(dial)
        try:
            await asyncio.wait_for(leg_answered, TRANSFER_TIMEOUT_S)
        except TimeoutError:
            await self.submit(lambda: self.hangup(leg_id, 487))
            raise TransferUnavailable(f"{uri} did not answer within {TRANSFER_TIMEOUT_S:.0f} s") from None

        def connect() -> None:
            caller, leg = self.calls.get(transport.pj_call_id), self.calls.get(leg_id)
            if caller is None or leg is None:
                if leg is not None:
                    self.hangup(leg_id, 200)
                raise TransferUnavailable("a leg ended before the bridge was made")
            transport.audio_out.clear()
            if caller.port is not None and caller.hasMedia():
                audio = caller.getAudioMedia(-1)
                with contextlib.suppress(pj.Error):
                    audio.stopTransmit(caller.port)
                    caller.port.stopTransmit(audio)
            caller.partner, leg.partner = leg, caller
            caller.bridged = leg.bridged = True
            if caller.hasMedia() and leg.hasMedia():
                mine, theirs = caller.getAudioMedia(-1), leg.getAudioMedia(-1)
                mine.startTransmit(theirs)
                theirs.startTransmit(mine)

        await self.submit(connect)


def _resolve(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
