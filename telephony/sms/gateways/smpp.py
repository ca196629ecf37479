"""SMPP 3.4 gateway (smpplib): a transceiver bind that submits UCS-2 messages, a long one as UDH-concatenated parts
of 67 characters, and turns the SMSC's delivery receipts (deliver_sm) into `DeliveryReport`s.

smpplib is synchronous and not safe for concurrent reads, so one thread owns the connection: it binds, rebinds with
backoff when the link fails, sends enquire_link while the link is idle, writes the submit_sm PDUs that `send` queues
and reads every PDU. `send` awaits futures which that thread resolves with each part's submit_sm_resp; receipts reach
the `ReportSink` on the caller's event loop and are acknowledged (deliver_sm_resp) once the sink has taken them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
import smpplib.smpp

from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    OutgoingSms,
    ReportSink,
    SmsError,
    SmsReceipt,
)

log = logging.getLogger(__name__)

ESME_ROK = 0x00000000
ESME_RX_T_APPN = 0x00000064  # deliver_sm_resp: "temporary application error", the SMSC delivers the receipt again
# submit_sm_resp / generic_nack statuses worth another try later: the SMSC is busy or had a transient fault.
# Every other status (invalid source or destination, message too long, bad parameters…) is final.
RETRYABLE_STATUSES = frozenset({
    0x00000004,  # ESME_RINVBNDSTS: incorrect bind status (the link is being re-established)
    0x00000008,  # ESME_RSYSERR: system error
    0x00000014,  # ESME_RMSGQFUL: message queue full
    0x00000045,  # ESME_RSUBMITFAIL: submit_sm failed
    0x00000058,  # ESME_RTHROTTLED: throttling error
    0x00000064,  # ESME_RX_T_APPN: temporary application error
})
# Bind refusals that no retry fixes without a change of configuration: /readyz and each send's error say so.
CREDENTIAL_STATUSES = frozenset({0x0000000D, 0x0000000E, 0x0000000F, 0x00000053})  # bind failed, password, id, type
# The receipt's stat: (SMPP 3.4 appendix B) and the message_state TLV, in the outbox's terms.
RECEIPT_STATES = {
    "DELIVRD": DeliveryState.DELIVERED, "EXPIRED": DeliveryState.EXPIRED, "UNDELIV": DeliveryState.FAILED,
    "REJECTD": DeliveryState.FAILED, "DELETED": DeliveryState.FAILED, "UNKNOWN": DeliveryState.FAILED,
    "ACCEPTD": DeliveryState.SUBMITTED, "ENROUTE": DeliveryState.SUBMITTED,
}
MESSAGE_STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD", 7: "UNKNOWN",
                  8: "REJECTD"}
RECEIPT_ESM_TYPES = (0x04, 0x20)  # esm_class message type: SMSC delivery receipt, intermediate notification
REPORT_TIMEOUT_S = 5.0  # how long a receipt waits for the sink before the SMSC is told to deliver it again
_RECEIPT_FIELD = re.compile(r"\b(id|stat|err):(\S*)", re.IGNORECASE)
_STOP = object()


def status_code(status: int) -> str:
    return f"0x{status:08X}"


def describe_status(status: int) -> str:
    return f"{smpplib.consts.DESCRIPTIONS.get(status, 'unknown status')} ({status_code(status)})"


@dataclass
class _Submit:
    parts: list[bytes]
    fields: dict[str, Any]  # the submit_sm fields every part shares
    futures: list[concurrent.futures.Future]


class SmppGateway:
    """An SMPP 3.4 transceiver. `source_addr` is the default sender (an `OutgoingSms.sender` overrides it);
    `reconnect_min_s`/`reconnect_max_s` bound the backoff between bind attempts."""

    uses_templates = False

    def __init__(self, host: str, port: int, system_id: str, password: str, *, system_type: str = "",
                 source_addr: str | None = None, enquire_link_s: float = 30, submit_timeout_s: float = 10,
                 name: str = "smpp", reconnect_min_s: float = 1.0, reconnect_max_s: float = 60.0) -> None:
        # SMPP 3.4 C-octet strings, NUL included: smpplib would cut longer values silently.
        for label, value, limit in (("system_id", system_id, 16), ("password", password, 9),
                                    ("system_type", system_type, 13)):
            if len(value.encode("latin-1")) >= limit:
                raise ValueError(f"SMPP {label} is limited to {limit - 1} characters")
        self.name = name
        self._host = host
        self._port = int(port)
        self._system_id = system_id
        self._password = password
        self._system_type = system_type
        self._source_addr = source_addr
        self._enquire_link_s = float(enquire_link_s)
        self._submit_timeout_s = float(submit_timeout_s)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = max(reconnect_max_s, reconnect_min_s)
        self._status = "not started"
        self._bound = False
        self._refusal: tuple[str, str] | None = None  # (message, code) of a credential refusal at the last bind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: ReportSink | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pending: dict[int, concurrent.futures.Future] = {}  # sequence_number -> part; I/O thread only

    # --- the SmsGateway seam (event loop side) ----------------------------------------------------------------

    async def start(self, reports: ReportSink) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._reports = reports
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping.clear()
        self._status = "connecting"
        self._thread = threading.Thread(target=self._run, name=f"smpp-{self.name}", daemon=True)
        self._thread.start()

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        if not self._bound:
            if self._refusal is not None:
                # Nothing was submitted, so a retry is safe: queued guides go out once the operator fixes the
                # credentials (within the outbox's queue TTL) instead of all failing meanwhile. /readyz shows why.
                text, code = self._refusal
                raise SmsError(text, retryable=True, code=code)
            raise SmsError(f"SMPP {self.name} is not bound ({self._status})", retryable=True)
        if not message.body:
            raise SmsError("empty message", retryable=False)
        try:
            parts, data_coding, esm_class = smpplib.gsm.make_parts(
                message.body, encoding=smpplib.consts.SMPP_ENCODING_ISO10646)
        except smpplib.exceptions.MessageTooLong:
            raise SmsError("message too long: more than 255 parts", retryable=False) from None
        source = message.sender or self._source_addr or ""
        source_ton, source_npi = _address_type(source)
        fields = {
            "source_addr": source, "source_addr_ton": source_ton, "source_addr_npi": source_npi,
            "destination_addr": message.to_number, "dest_addr_ton": smpplib.consts.SMPP_TON_UNK,
            "dest_addr_npi": smpplib.consts.SMPP_NPI_ISDN, "data_coding": data_coding, "esm_class": esm_class,
            "registered_delivery": 1,  # a final receipt for every part, success or failure
        }
        futures = [concurrent.futures.Future() for _ in parts]
        self._commands.put(_Submit(parts, fields, futures))
        self._wake()
        try:
            async with asyncio.timeout(self._submit_timeout_s):
                results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        except TimeoutError:
            raise SmsError(f"SMPP {self.name}: no submit_sm_resp within {self._submit_timeout_s:g} s; the SMSC may "
                           "have taken it, so it is not resent automatically", retryable=True,
                           outcome_unknown=True) from None
        finally:
            for future in futures:
                future.cancel()  # a part not written yet is skipped; a late response is ignored
        ids: list[str] = []
        for number, result in enumerate(results, start=1):
            if isinstance(result, BaseException):
                if isinstance(result, SmsError):
                    raise result
                raise SmsError(f"SMPP {self.name}: {result!r}", retryable=True) from result
            status, message_id = result
            if status != ESME_ROK:
                raise SmsError(f"SMPP {self.name} refused part {number}/{len(parts)}: {describe_status(status)}",
                               retryable=status in RETRYABLE_STATUSES, code=status_code(status))
            ids.append(message_id)
        return SmsReceipt(gateway=self.name, message_id=ids[0], state=DeliveryState.SUBMITTED, segments=len(parts),
                          part_ids=tuple(ids))

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._stopping.set()
        self._commands.put(_STOP)
        self._wake()
        await asyncio.to_thread(thread.join, self._submit_timeout_s + 5)
        if thread.is_alive():
            log.warning("SMPP %s: the I/O thread did not stop in time", self.name)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._bound = False
        self._status = "closed"

    def status(self) -> str:
        return self._status

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the buffer is full of wake-ups already, or the gateway is closing

    # --- the I/O thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._reconnect_min_s
        try:
            while not self._stopping.is_set():
                try:
                    reason, was_bound = self._session()
                except Exception as error:  # a bug here must not end the thread: log it, bind again
                    log.exception("SMPP %s: session failed", self.name)
                    reason, was_bound = f"internal error: {error!r}", False
                if self._stopping.is_set():
                    break
                if was_bound:
                    delay = self._reconnect_min_s
                self._status = f"reconnecting: {reason}"
                log.warning("SMPP %s: %s; binding again in %.1f s", self.name, reason, delay)
                if self._backoff(delay):
                    break
                delay = min(delay * 2, self._reconnect_max_s)
        finally:
            self._bound = False
            self._fail_pending("the SMPP gateway stopped")
            self._drain_commands()

    def _session(self) -> tuple[str, bool]:
        """One connection: bind, serve until it ends. Returns why it ended and whether it was bound."""
        client = smpplib.client.Client(self._host, self._port, timeout=self._submit_timeout_s,
                                       allow_unknown_opt_params=True, logger_name=f"{__name__}.{self.name}")
        try:
            client.connect()
            client.bind_transceiver(system_id=self._system_id, password=self._password,
                                    system_type=self._system_type)
        except Exception as error:  # noqa: BLE001 - any failure to bind: tell why, then bind again later
            _disconnect(client)
            reason, self._refusal = self._bind_failure(error)
            return reason, False
        self._refusal = None
        self._bound = True
        self._status = "bound"
        log.info("SMPP %s: bound to %s:%s as %s", self.name, self._host, self._port, self._system_id)
        try:
            reason = self._serve(client)
        except (smpplib.exceptions.ConnectionError, OSError) as error:
            reason = f"connection lost: {error}" if str(error) else "connection lost"
        except Exception as error:  # noqa: BLE001 - PDUError, UnknownCommandError, a parse error…: start over
            reason = f"protocol error: {type(error).__name__}: {error}"
        finally:
            self._bound = False
            self._fail_pending("the SMPP connection closed before the SMSC answered")
        if self._stopping.is_set():
            _unbind(client)
        _disconnect(client)
        return reason, True

    def _bind_failure(self, error: Exception) -> tuple[str, tuple[str, str] | None]:
        """Why a bind failed, and the (message, code) that sends fail with as final when it was the credentials."""
        if isinstance(error, smpplib.exceptions.PDUError) and len(error.args) > 1:
            status = error.args[1]
            reason = f"bind refused: {describe_status(status)}"
            refusal = (f"SMPP {self.name}: {reason}", status_code(status)) if status in CREDENTIAL_STATUSES else None
            return reason, refusal
        if isinstance(error, (smpplib.exceptions.ConnectionError, OSError)):
            return f"cannot bind to {self._host}:{self._port}: {error or 'connection refused or timed out'}", None
        return f"bind failed: {type(error).__name__}: {error}", None

    def _serve(self, client: smpplib.client.Client) -> str:
        # smpplib has no public accessor for its socket; select() on it lets one thread both read and write.
        sock = client._socket
        last_received = time.monotonic()
        enquire_sent: float | None = None
        while True:
            self._drain_wake()
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                if command is _STOP:
                    return "closed"
                self._write(client, command)
            now = time.monotonic()
            if enquire_sent is not None:
                wait = enquire_sent + self._submit_timeout_s - now
                if wait <= 0:
                    return f"no enquire_link_resp within {self._submit_timeout_s:g} s"
            else:
                wait = last_received + self._enquire_link_s - now
                if wait <= 0:
                    client.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=client))
                    enquire_sent = now
                    continue
            readable, _, _ = select.select([sock, self._wake_r], [], [], wait)
            if sock in readable:
                pdu = client.read_pdu()
                last_received = time.monotonic()
                enquire_sent = None
                ended = self._dispatch(client, pdu)
                if ended:
                    return ended

    def _write(self, client: smpplib.client.Client, job: _Submit) -> None:
        for sequence in [s for s, f in self._pending.items() if f.done()]:
            del self._pending[sequence]  # callers that gave up
        for index, (part, future) in enumerate(zip(job.parts, job.futures, strict=True)):
            if future.done():
                continue
            try:
                pdu = client.send_message(short_message=part, **job.fields)
            except Exception:
                for later in job.futures[index:]:
                    _reject(later, "the SMPP connection failed while sending")
                raise
            self._pending[pdu.sequence] = future

    def _dispatch(self, client: smpplib.client.Client, pdu: Any) -> str | None:
        command = pdu.command
        if command in ("submit_sm_resp", "generic_nack"):
            future = self._pending.pop(pdu.sequence, None)
            message_id = getattr(pdu, "message_id", None)
            if isinstance(message_id, bytes):
                message_id = message_id.decode("ascii", errors="replace")
            if future is None or future.done():
                log.warning("SMPP %s: %s for sequence %s came after its sender gave up (%s, id %s)", self.name,
                            command, pdu.sequence, describe_status(pdu.status), message_id)
            else:
                _resolve(future, (pdu.status, message_id or ""))
        elif command == "deliver_sm":
            _answer(client, "deliver_sm_resp", pdu, status=self._receipt(pdu))
        elif command == "enquire_link":
            _answer(client, "enquire_link_resp", pdu)
        elif command == "unbind":
            _answer(client, "unbind_resp", pdu)
            return "the SMSC unbound"
        elif command != "enquire_link_resp":
            log.info("SMPP %s: ignoring %s", self.name, command)
        return None

    def _receipt(self, pdu: Any) -> int:
        """The status for the deliver_sm_resp: ROK once the sink took the report (or for anything that is not a
        receipt), a temporary error when the sink failed, so that the SMSC delivers the receipt again."""
        if (pdu.esm_class or 0) & 0x3C not in RECEIPT_ESM_TYPES:
            log.info("SMPP %s: ignoring a mobile-originated message", self.name)
            return ESME_ROK
        text = pdu.short_message or getattr(pdu, "message_payload", None) or b""
        report = parse_receipt(self.name, text, receipted_message_id=getattr(pdu, "receipted_message_id", None),
                               message_state=getattr(pdu, "message_state", None))
        if report is None:
            log.warning("SMPP %s: unreadable delivery receipt %r", self.name, text[:200])
            return ESME_ROK
        loop, sink = self._loop, self._reports
        if loop is None or sink is None:
            return ESME_RX_T_APPN

        async def push() -> None:
            await sink(report)

        coroutine = push()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            return ESME_RX_T_APPN
        try:
            future.result(timeout=REPORT_TIMEOUT_S)
        except Exception:  # any sink failure: the SMSC keeps the receipt and delivers it again
            future.cancel()
            log.exception("SMPP %s: the report sink failed; the SMSC will deliver the receipt again", self.name)
            return ESME_RX_T_APPN
        return ESME_ROK

    def _backoff(self, delay: float) -> bool:
        """Waits `delay` seconds between binds, failing any send queued meanwhile. True when asked to stop."""
        deadline = time.monotonic() + delay
        while True:
            self._drain_wake()
            if self._drain_commands() or self._stopping.is_set():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self._wake_r], [], [], left)

    def _drain_commands(self) -> bool:
        stop = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return stop
            if command is _STOP:
                stop = True
            else:
                for future in command.futures:
                    _reject(future, f"SMPP {self.name} is not bound ({self._status})")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r is not None and self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _fail_pending(self, reason: str) -> None:
        """The connection ended with submits written and unanswered: the SMSC may have taken them, so their outcome
        is unknown (failed for staff, not resent: a resend could reach the caller twice)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            _reject(future, f"SMPP {self.name}: {reason}; the SMSC may have taken it, so it is not resent "
                            "automatically", outcome_unknown=True)


def parse_receipt(gateway: str, text: bytes, *, receipted_message_id: bytes | str | None = None,
                  message_state: int | None = None) -> DeliveryReport | None:
    """A delivery receipt (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`, SMPP 3.4 appendix B)
    as a `DeliveryReport`; the receipted_message_id and message_state TLVs win over the text. None when it names
    no message or no known state."""
    body = text.decode("latin-1") if isinstance(text, bytes) else str(text)
    head = re.split(r"\btext:", body, maxsplit=1, flags=re.IGNORECASE)[0]
    fields = {key.lower(): value for key, value in _RECEIPT_FIELD.findall(head)}
    if isinstance(receipted_message_id, bytes):
        receipted_message_id = receipted_message_id.rstrip(b"\0").decode("ascii", errors="replace")
    message_id = receipted_message_id or fields.get("id")
    stat = fields.get("stat", "").upper() or MESSAGE_STATES.get(message_state or 0, "")
    state = RECEIPT_STATES.get(stat)
    if not message_id or state is None:
        return None
    error = fields.get("err", "")
    return DeliveryReport(gateway=gateway, message_id=message_id, state=state,
                          error_code=error if error.strip("0") else None, detail=head.strip()[:200])


def _address_type(address: str) -> tuple[int, int]:
    if not address:
        return smpplib.consts.SMPP_TON_UNK, smpplib.consts.SMPP_NPI_UNK
    if address.isdigit():
        return smpplib.consts.SMPP_TON_UNK, smpplib.consts.SMPP_NPI_ISDN
    return smpplib.consts.SMPP_TON_ALNUM, smpplib.consts.SMPP_NPI_UNK


def _answer(client: smpplib.client.Client, command: str, request: Any, status: int = ESME_ROK) -> None:
    response = smpplib.smpp.make_pdu(command, client=client, status=status)
    response.sequence = request.sequence
    client.send_pdu(response)


def _resolve(future: concurrent.futures.Future, value: object) -> None:
    try:
        future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # the caller gave up (timeout) meanwhile


def _reject(future: concurrent.futures.Future, reason: str, outcome_unknown: bool = False) -> None:
    try:
        future.set_exception(SmsError(reason, retryable=True, outcome_unknown=outcome_unknown))
    except concurrent.futures.InvalidStateError:
        pass


def _unbind(client: smpplib.client.Client) -> None:
    try:
        client._socket.settimeout(2)  # bound the wait for unbind_resp
        client.unbind()
    except (smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError, AttributeError):
        pass  # some SMSCs (smpp34 among them) close the socket instead of answering unbind


def _disconnect(client: smpplib.client.Client) -> None:
    client.state = smpplib.consts.SMPP_CLIENT_STATE_OPEN  # done with the bind: no "disconnecting while bound" warning
    try:
        client.disconnect()
    except OSError:
        pass
