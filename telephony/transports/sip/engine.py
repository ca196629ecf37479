"""A SIP engine: one process holding one pjsua2 endpoint (up to `CALLS_PER_ENGINE` calls), driven by the hotline
over a pipe. The hotline runs as many engines as its SIP capacity needs (`SipLine`).

Inside the process: the main thread polls PJSIP and runs the hotline's commands; PJSIP's media clock thread moves
20 ms frames through `_FramePort`; a reader thread takes commands off the pipe. A PJSIP crash (pjsua aborts the process
on a failed assertion) takes this engine's calls only, never the hotline.

Messages, as tuples (`Connection.send`):
  engine → hotline: ("ready", error | None) · ("call", key, caller, called, call_id, peer_uri) when a call is answered ·
                    ("audio", key, pcm) · ("dtmf", key, digit) · ("hold", key, on_hold) · ("ended", key, stats) ·
                    ("done", request, error | None) · ("status", state, detail) · ("counters", {…})
  hotline → engine: ("audio", key, pcm) · ("clear", key) · ("hangup", key, code) ·
                    ("transfer", request, key, uri) · ("stop",)
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable

from telephony.transports.sip.config import SipConfig
from telephony.transports.sip.endpoint import configure_logging, create_endpoint
from telephony.transports.sip.frames import OutgoingAudio, vector_bytes
from telephony.transports.sip.headers import caller_id, header_values, number_of, uri_of

log = logging.getLogger("telephony.sip.engine")

CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}
POLL_MS = 5
COUNTERS_EVERY_S = 1.0
TRANSFER_TIMEOUT_S = 30.0

import pjsua2 as pj  # noqa: E402 - after the stdlib: this module is the only one that needs PJSIP


class _Pipe:
    """The engine's end of the pipe: sends from any thread, one message at a time."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.lock = threading.Lock()
        self.broken = False

    def send(self, message: tuple) -> None:
        if self.broken:
            return
        try:
            with self.lock:
                self.connection.send(message)
        except (OSError, ValueError):
            self.broken = True  # the hotline is gone; the poll loop stops


class _FramePort(pj.AudioMediaPort):
    """A conference-bridge port: frames from the caller go up the pipe, frames to the caller come from `out`."""

    def __init__(self, key: int, pipe: _Pipe, out: OutgoingAudio) -> None:
        super().__init__()
        self.key = key
        self.pipe = pipe
        self.out = out
        self.frames_in = 0

    # The bridge may call a port while Python tears it down (attributes gone): such a call is silence.
    def onFrameReceived(self, frame) -> None:
        pipe = getattr(self, "pipe", None)
        if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO or pipe is None:
            return
        data = vector_bytes(frame.buf)
        if data:
            self.frames_in += 1
            pipe.send(("audio", self.key, data))

    def onFrameRequested(self, frame) -> None:
        out = getattr(self, "out", None)
        data = out.next_frame() if out is not None else None
        if data is None:
            frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
            frame.size = 0
            return
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = pj.ByteVector(data)
        frame.size = len(data)


_SERIALS = itertools.count(1)


class _Call(pj.Call):
    def __init__(self, engine: _Engine, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.engine = engine
        self.key = -1
        self.caller = False  # a caller's leg (the hotline runs a dialogue on it), not a transfer leg
        self.out = OutgoingAudio()
        self.port: _FramePort | None = None
        # pjsua reuses call slots, and a pj.Call object that outlives its call hangs up (and steals) whichever call
        # holds its slot next when it is destroyed: timers and waiting legs refer to calls by (slot, serial), never
        # by object, and look them up in engine.calls.
        self.serial = next(_SERIALS)
        self.partner: _Call | None = None  # the other leg of a bridged transfer, once both are up
        self.leg_for: tuple[int, int] | None = None  # a transfer leg: the caller it will join when answered
        self.bridged = False
        self.answered = False
        self.transfer_request: int | None = None  # waiting for the REFER's final NOTIFY
        self.leg_request: int | None = None  # an outgoing leg waiting to be answered
        self.rtp = {"received": 0, "lost": 0, "discarded": 0}
        self.invite = ""

    def onCallState(self, prm) -> None:
        self.engine.on_call_state(self)

    def onCallMediaState(self, prm) -> None:
        self.engine.on_media_state(self)

    def onDtmfDigit(self, prm) -> None:
        self.engine.on_dtmf(self, prm.digit)

    def onCallTransferStatus(self, prm) -> None:
        self.engine.on_transfer_status(self, prm)

    def onStreamDestroyed(self, prm) -> None:
        with contextlib.suppress(Exception):
            received = self.getStreamStat(prm.streamIdx).rtcp.rxStat
            self.rtp = {"received": received.pkt, "lost": received.loss, "discarded": received.discard}


class _Endpoint(pj.Endpoint):
    engine: _Engine | None = None

    def onRejectedIncomingCall(self, prm) -> None:
        # pjsua refused an INVITE before any call existed: every call slot taken, or an offer it cannot answer.
        engine = self.engine
        if engine is not None:
            engine.on_rejected(prm.statusCode, prm.reason)


class _Account(pj.Account):
    def __init__(self, engine: _Engine) -> None:
        super().__init__()
        self.engine = engine

    def onIncomingCall(self, prm) -> None:
        self.engine.on_incoming(_Call(self.engine, self, prm.callId), prm.rdata.wholeMsg)

    def onRegState(self, prm) -> None:
        self.engine.on_reg_state(self, prm.code, prm.reason)


class _Engine:
    def __init__(self, config: SipConfig, pipe: _Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.stopping = False
        self.endpoint = None
        self.log_writer = None
        self.account: _Account | None = None
        self.calls: dict[int, _Call] = {}  # by pjsua call id, until disconnected
        self.released: list[_Call] = []  # disconnected: dropped on the next poll, not inside their own callback
        self.outgoing: dict[int, OutgoingAudio] = {}  # by call id, for the reader thread (audio bypasses the poll)
        self.counters = {"calls_now": 0, "calls_total": 0, "refused_busy": 0, "rejected": 0, "frames_in": 0,
                         "frames_out": 0,
                         "rtp_received": 0, "rtp_lost": 0, "rtp_discarded": 0, "dtmf": 0}
        self.counters_sent = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - pj.Error and friends: reported to the hotline
            reason = exc.info() if isinstance(exc, pj.Error) else str(exc)
            self.pipe.send(("ready", reason.strip() or repr(exc)))
            self._destroy()
            return
        self.pipe.send(("ready", None))
        reader = threading.Thread(target=self._read, name="sip-engine-reader", daemon=True)
        reader.start()
        try:
            while not self.stopping and not self.pipe.broken:
                self._poll()
            self._hang_up_all()
        finally:
            self._send_counters()
            self._destroy()

    def _read(self) -> None:
        while True:
            try:
                message = self.pipe.connection.recv()
            except (EOFError, OSError):
                self.commands.put(("stop",))
                return
            kind = message[0]
            if kind == "audio":  # straight into the call's buffer: the media thread drains it
                out = self.outgoing.get(message[1])
                if out is not None:
                    out.write(message[2])
            elif kind == "clear":
                out = self.outgoing.get(message[1])
                if out is not None:
                    out.clear()
            else:
                self.commands.put(message)

    def _start(self) -> None:
        config = self.config
        endpoint = create_endpoint(_Endpoint)
        endpoint.engine = self
        self.endpoint = endpoint
        ep_config = pj.EpConfig()
        ep_config.uaConfig.threadCnt = 0  # the main thread polls; no PJSIP worker threads calling into Python
        ep_config.uaConfig.mainThreadOnly = False
        ep_config.uaConfig.maxCalls = 4  # PJSUA_MAX_CALLS of the PyPI builds: one more INVITE gets 486 from pjsua
        ep_config.uaConfig.userAgent = "hotline-sip"
        ep_config.medConfig.clockRate = 8000
        ep_config.medConfig.sndClockRate = 8000
        ep_config.medConfig.channelCount = 1
        ep_config.medConfig.audioFramePtime = 20
        ep_config.medConfig.noVad = True
        ep_config.medConfig.ecTailLen = 0
        ep_config.medConfig.jbInit = 1  # a short adaptive jitter buffer: the reply must start soon after the caller
        ep_config.medConfig.jbMinPre = 1
        ep_config.medConfig.jbMaxPre = 6
        self.log_writer = configure_logging(ep_config, config.pjsip_log_level)
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
            account_config.idUri = f"sip:{config.user}@{registrar_host}"  # the extension; auth_user signs
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
            self._run(command)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            callback()
        self.released.clear()
        if now - self.counters_sent >= COUNTERS_EVERY_S:
            self._send_counters()

    def _run(self, command: tuple) -> None:
        kind = command[0]
        try:
            if kind == "stop":
                self.stopping = True
            elif kind == "hangup":
                self.hangup(command[1], command[2])
            elif kind == "transfer":
                self._transfer(command[1], command[2], command[3])
            else:
                log.warning("unknown command %r ignored", kind)
        except Exception as exc:  # noqa: BLE001 - a failed command is answered, the engine goes on
            log.error("command %s failed: %s", kind, exc)
            if kind == "transfer":
                self.pipe.send(("done", command[1], str(exc)))

    def _send_counters(self) -> None:
        self.counters_sent = time.monotonic()
        live_in = sum(call.port.frames_in for call in self.calls.values() if call.port is not None)
        live_out = sum(call.out.frames_sent for call in self.calls.values())
        counters = dict(self.counters)
        counters["frames_in"] += live_in
        counters["frames_out"] += live_out
        self.pipe.send(("counters", counters))

    def _hang_up_all(self) -> None:
        for call_id in list(self.calls):
            self.hangup(call_id, 503)
        deadline = time.monotonic() + 2.0
        while self.calls and time.monotonic() < deadline:
            self.endpoint.libHandleEvents(POLL_MS)
            self.released.clear()

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

    def live(self, ref: tuple[int, int]) -> _Call | None:
        """The call `ref` = (slot, serial) names, if it is still up (not a later call in the same slot)."""
        call = self.calls.get(ref[0])
        return call if call is not None and call.serial == ref[1] else None

    # -- calls --------------------------------------------------------------------------------------

    def on_incoming(self, call: _Call, invite: str) -> None:
        call_id = call.getId()
        self.calls[call_id] = call
        counters = self.counters
        if self.stopping or counters["calls_now"] >= self.config.max_calls:
            counters["refused_busy"] += 1
            log.warning("INVITE refused: %s", "stopping" if self.stopping
                        else f"{counters['calls_now']} calls already (capacity {self.config.max_calls})")
            self.hangup(call_id, 503 if self.stopping else 486)
            return
        counters["calls_now"] += 1
        counters["calls_total"] += 1
        call.key = call_id
        call.caller = True
        call.invite = invite
        self.outgoing[call_id] = call.out
        self._answer(call, 180)
        if self.config.ring_ms > 0:
            ref = (call_id, call.serial)
            self.later(self.config.ring_ms / 1000, lambda: self._answer_ref(ref, 200))
        else:
            self._answer(call, 200)

    def on_rejected(self, code: int, reason: str) -> None:
        if code in (486, 503, 600):
            self.counters["refused_busy"] += 1
        else:
            self.counters["rejected"] += 1
        log.warning("INVITE rejected by the SIP stack: %d %s", code, reason)

    def _answer_ref(self, ref: tuple[int, int], code: int) -> None:
        call = self.live(ref)
        if call is not None:  # else cancelled while ringing
            self._answer(call, code)

    def _answer(self, call: _Call, code: int) -> None:
        if call.answered:
            return
        parameters = pj.CallOpParam(True)
        parameters.statusCode = code
        try:
            call.answer(parameters)
        except pj.Error as exc:
            log.warning("answer %d failed: %s", code, exc.info().strip())

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
            if call.caller:
                called = header_values(call.invite, "to")
                self.pipe.send(("call", call.key, caller_id(call.invite),
                                number_of(uri_of(called[0])) if called else None, info.callIdString,
                                info.remoteContact or info.remoteUri))
                call.invite = ""
            if call.leg_request is not None:
                self._leg_answered(call)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._disconnected(call, info)

    def _disconnected(self, call: _Call, info) -> None:
        self.calls.pop(info.id, None)
        self.released.append(call)  # kept alive until this callback has returned
        if call.caller:
            self.outgoing.pop(call.key, None)
            self.counters["calls_now"] -= 1
            frames_in = call.port.frames_in if call.port is not None else 0
            self.counters["frames_in"] += frames_in
            self.counters["frames_out"] += call.out.frames_sent
            for name, value in call.rtp.items():
                self.counters[f"rtp_{name}"] += value
            if call.answered:
                self.pipe.send(("ended", call.key, {"rtp": call.rtp, "frames_in": frames_in,
                                                    "frames_out": call.out.frames_sent,
                                                    "code": info.lastStatusCode}))
        if call.leg_request is not None:
            self.pipe.send(("done", call.leg_request,
                            f"{info.remoteUri} answered {info.lastStatusCode} {info.lastReason}"))
            call.leg_request = None
        if call.transfer_request is not None:
            self.pipe.send(("done", call.transfer_request, "the call ended during the transfer"))
            call.transfer_request = None
        if call.caller:  # a transfer leg still ringing for this caller is cancelled
            for other in list(self.calls.values()):
                if other.leg_for == (info.id, call.serial):
                    self.hangup(other.getId(), 487)
        call.leg_for = None
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
            if call.caller:
                on_hold = media.status in (pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD)
                self.pipe.send(("hold", call.key, on_hold))
            if media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = call.getAudioMedia(index)
            partner = call.partner
            if call.bridged:
                if partner is not None and partner.hasMedia():
                    other = partner.getAudioMedia(-1)
                    audio.startTransmit(other)
                    other.startTransmit(audio)
            elif call.caller:
                if call.port is None:
                    call.port = self._port_for(call)
                audio.startTransmit(call.port)
                call.port.startTransmit(audio)
            break

    def _port_for(self, call: _Call) -> _FramePort:
        port = _FramePort(call.key, self.pipe, call.out)
        audio_format = pj.MediaFormatAudio()
        audio_format.type = pj.PJMEDIA_TYPE_AUDIO
        audio_format.clockRate = 8000
        audio_format.channelCount = 1
        audio_format.bitsPerSample = 16
        audio_format.frameTimeUsec = 20000
        port.createPort(f"call-{call.key}", audio_format)
        return port

    def on_dtmf(self, call: _Call, digit: str) -> None:
        if call.caller and digit:
            self.counters["dtmf"] += 1
            self.pipe.send(("dtmf", call.key, digit[:1].upper()))

    def on_reg_state(self, account: _Account, code: int, reason: str) -> None:
        info = account.getInfo()
        if info.regIsActive:
            self.pipe.send(("status", "registered", f"at {self.config.registrar} ({info.regExpiresSec} s)"))
        elif 200 <= code < 300:
            self.pipe.send(("status", "starting", "unregistered"))
        else:
            self.pipe.send(("status", "failed", f"registrar {self.config.registrar} answered {code} {reason}"))

    # -- transfer -----------------------------------------------------------------------------------

    def _transfer(self, request: int, key: int, uri: str) -> None:
        call = self.calls.get(key)
        if call is None:
            self.pipe.send(("done", request, "the caller has already hung up"))
            return
        if self.config.transfer_mode == "bridge":
            self._dial_leg(request, call, uri)
            return
        call.transfer_request = request
        try:
            call.xfer(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            call.transfer_request = None
            self.pipe.send(("done", request, f"REFER to {uri} not sent: {exc.info().strip()}"))
            return
        ref = (key, call.serial)
        self.later(TRANSFER_TIMEOUT_S, lambda: self._transfer_timeout(ref, request, uri))

    def _transfer_timeout(self, ref: tuple[int, int], request: int, uri: str) -> None:
        call = self.live(ref)
        if call is None:
            return  # it ended, and its end answered the request
        if call.transfer_request == request:
            call.transfer_request = None
            self.pipe.send(("done", request, f"no final answer to the REFER to {uri} in {TRANSFER_TIMEOUT_S:.0f} s"))
        if call.leg_request == request:  # a bridged leg that did not answer
            call.leg_request = None
            self.hangup(call.getId(), 487)
            self.pipe.send(("done", request, f"{uri} did not answer within {TRANSFER_TIMEOUT_S:.0f} s"))

    def on_transfer_status(self, call: _Call, prm) -> None:
        request = call.transfer_request
        if not prm.finalNotify or request is None:
            return
        call.transfer_request = None
        code = prm.statusCode
        if 200 <= code < 300:
            self.pipe.send(("done", request, None))
            self.hangup(call.getId(), 200)  # the target answered: our leg is done (RFC 5589 §6)
        else:
            self.pipe.send(("done", request, f"transfer refused: {code} {prm.reason}"))
        prm.cont = False

    def _dial_leg(self, request: int, caller: _Call, uri: str) -> None:
        leg = _Call(self, self.account)
        leg.leg_request = request
        leg.leg_for = (caller.getId(), caller.serial)  # not yet a partner: a leg that fails leaves the caller be
        try:
            leg.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            self.pipe.send(("done", request, f"could not call {uri}: {exc.info().strip()}"))
            return
        self.calls[leg.getId()] = leg
        ref = (leg.getId(), leg.serial)
        self.later(TRANSFER_TIMEOUT_S, lambda: self._transfer_timeout(ref, request, uri))

    def _leg_answered(self, leg: _Call) -> None:
        request = leg.leg_request
        caller = self.live(leg.leg_for) if leg.leg_for is not None else None
        leg.leg_request, leg.leg_for = None, None
        if caller is None:
            self.hangup(leg.getId(), 200)
            self.pipe.send(("done", request, "the caller left before the transfer target answered"))
            return
        caller.out.clear()
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
        self.pipe.send(("done", request, None))


def run_engine(config: SipConfig, connection, log_level: int = logging.WARNING) -> None:
    """Process entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hotline stops its engines itself, in order
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s sip-engine[{os.getpid()}] %(name)s: %(message)s")
    _Engine(config, _Pipe(connection)).run()
