"""A fake SMSC on 127.0.0.1 for the SMPP gateway tests, built on the `smpp34` server.

smpp34's `Server` speaks SMPP 3.4 (binds, enquire_link, submit_sm, deliver_sm and their responses) but takes any
credentials, so a small front end owns the public port: it reads each connection's first PDU, refuses a bind with
the wrong system_id or password (bind_*_resp ESME_RINVSYSID / ESME_RINVPASWD, then closes), and relays a good one
byte for byte to the smpp34 server on a private port. The front end can also drop every connection on demand.

What happens to a submit_sm depends on its destination number (`Rule`): accepted with a delivery receipt
(stat:DELIVRD by default, or UNDELIV, EXPIRED, REJECTD), refused with a command_status, or answered late.
Everything runs on one asyncio loop in a daemon thread, which stops by itself after `lifetime_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import smpp34

BIND_COMMANDS = {0x00000001: "bind_receiver", 0x00000002: "bind_transmitter", 0x00000009: "bind_transceiver"}
ESME_RINVPASWD = 0x0000000E
ESME_RINVSYSID = 0x0000000F
# SMPP 3.4 message_state values for the receipt's TLV, by the receipt's stat: text.
MESSAGE_STATES = {"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7,
                  "REJECTD": 8}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Rule:
    """How the SMSC treats a submit_sm to one destination."""

    receipt: str | None = "DELIVRD"  # stat: of the delivery receipt (when requested); None sends none
    refuse: int | None = None  # command_status to refuse the submit with (e.g. smpp34.ESME_RTHROTTLED)
    submit_delay_s: float = 0.0  # wait before the submit_sm_resp
    receipt_delay_s: float = 0.0  # wait between the submit_sm_resp and the receipt
    error: str = "000"  # err: of the receipt


@dataclass(frozen=True)
class Submit:
    """One submit_sm as the SMSC received it."""

    session: str
    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    message_id: str | None  # None when refused
    status: int

    @property
    def udh(self) -> bytes:
        if not self.esm_class & 0x40 or not self.short_message:
            return b""
        return self.short_message[: self.short_message[0] + 1]

    @property
    def payload(self) -> bytes:
        return self.short_message[len(self.udh):]


@dataclass(frozen=True)
class Receipt:
    message_id: str
    stat: str
    acknowledged: bool  # the ESME answered the deliver_sm with ESME_ROK


@dataclass
class _State:
    submits: list[Submit] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    binds: list[tuple[str, bool]] = field(default_factory=list)  # (system_id, accepted)


class FakeSmsc:
    """Start with `start()` (or as a context manager); `port=None` picks a free one. `rules` maps a destination number
    to its `Rule`; others get `default_rule`."""

    def __init__(self, *, port: int | None = None, system_id: str = "hotline", password: str = "secret",
                 lifetime_s: float = 60.0, default_rule: Rule | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.system_id = system_id
        self.password = password
        self.lifetime_s = lifetime_s
        self.default_rule = default_rule or Rule()
        self.rules: dict[str, Rule] = {}
        self._state = _State()
        self._lock = threading.Lock()
        self._ids = itertools.count(0x3E8)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._relays: set[asyncio.StreamWriter] = set()
        self._esmes: dict[str, smpp34.Esme] = {}
        # Receipts no ESME acknowledged (it was gone): kept and sent to the next receiver that binds, as an SMSC's
        # store-and-forward does.
        self._pending: list[tuple] = []  # (message_id, stat, text, tlvs, to, source)

    # --- control, from the test's thread ----------------------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> Self:
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name=f"fake-smsc-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("fake SMSC did not start")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops listening and closes every connection; the recorded traffic stays readable."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already closed (lifetime over)
                pass
            self._thread.join(timeout_s)
        self._thread = None

    def drop_connections(self) -> None:
        """Closes every ESME connection (no unbind), as a network failure or an SMSC restart would."""
        if self._loop is None:
            return
        done = threading.Event()

        def drop() -> None:
            for writer in list(self._relays):
                writer.transport.abort()
            self._relays.clear()
            done.set()

        self._loop.call_soon_threadsafe(drop)
        done.wait(5)

    def unbind_all(self) -> None:
        """Sends unbind to every bound ESME, as an SMSC going down for maintenance does."""
        if self._loop is None:
            return

        async def unbind() -> None:
            for esme in list(self._esmes.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(esme.unbind(), 2)

        asyncio.run_coroutine_threadsafe(unbind(), self._loop).result(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def submits(self) -> list[Submit]:
        with self._lock:
            return list(self._state.submits)

    @property
    def receipts(self) -> list[Receipt]:
        with self._lock:
            return list(self._state.receipts)

    @property
    def binds(self) -> list[tuple[str, bool]]:
        with self._lock:
            return list(self._state.binds)

    def wait_for(self, predicate: Callable[[FakeSmsc], bool], timeout_s: float = 5.0) -> bool:
        """Blocks the calling thread until `predicate(self)` holds; False on timeout. (From a coroutine, run it
        with `asyncio.to_thread`: the gateway under test may need the caller's loop meanwhile.)"""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def submits_to(self, destination: str) -> list[Submit]:
        return [submit for submit in self.submits if submit.destination_addr == destination]

    def texts_to(self, destination: str) -> list[str]:
        """The accepted messages to `destination`, each reassembled from its parts by UDH reference and sequence
        (parts may have arrived in any order); incomplete concatenations are left out."""
        return reassemble([s for s in self.submits_to(destination) if s.message_id is not None])

    # --- the SMSC, on its own loop ----------------------------------------------------------------------------

    def _record(self, update: Callable[[_State], None]) -> None:
        with self._lock:
            update(self._state)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:  # noqa: BLE001 - reported to start() or dropped at shutdown
            if not self._ready.is_set():
                self._startup_error = error
                self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        inner_port = free_port()
        server = smpp34.Server(self.host, inner_port, system_id="FAKESMSC")
        await server.start()
        front = await asyncio.start_server(lambda r, w: self._relay(r, w, inner_port), self.host, self.port)
        tasks: set[asyncio.Task] = set()
        events = asyncio.create_task(self._events(server, tasks))
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), self.lifetime_s)
        except TimeoutError:
            pass
        finally:
            front.close()
            for writer in list(self._relays):
                writer.transport.abort()
            self._relays.clear()
            events.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(events, *tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # best effort at shutdown
                await asyncio.wait_for(server.stop(), 5)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inner_port: int) -> None:
        """Checks the bind's credentials, then pipes the connection to the smpp34 server."""
        self._relays.add(writer)
        inner_writer: asyncio.StreamWriter | None = None
        try:
            header = await asyncio.wait_for(reader.readexactly(16), 10)
            length, command_id, _status, sequence = struct.unpack(">LLLL", header)
            body = await asyncio.wait_for(reader.readexactly(length - 16), 10)
            if command_id in BIND_COMMANDS:
                system_id, password = (part.decode("latin-1") for part in body.split(b"\0")[:2])
                status = 0
                if system_id != self.system_id:
                    status = ESME_RINVSYSID
                elif password != self.password:
                    status = ESME_RINVPASWD
                self._record(lambda state: state.binds.append((system_id, status == 0)))
                if status:
                    writer.write(struct.pack(">LLLL", 16, command_id | 0x80000000, status, sequence))
                    await writer.drain()
                    return
            inner_reader, inner_writer = await asyncio.open_connection(self.host, inner_port)
            self._relays.add(inner_writer)
            inner_writer.write(header + body)
            await asyncio.gather(_pipe(reader, inner_writer), _pipe(inner_reader, writer))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            for w in (writer, inner_writer):
                if w is not None:
                    self._relays.discard(w)
                    w.transport.abort()

    async def _events(self, server: smpp34.Server, tasks: set[asyncio.Task]) -> None:
        esmes = self._esmes
        esmes.clear()
        while True:
            event = await server.next()
            if isinstance(event, smpp34.Esme):
                esmes[event.session_id] = event
                if self._pending and event.can_receive:
                    pending, self._pending = self._pending, []
                    task = asyncio.create_task(self._redeliver(event, pending))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            elif isinstance(event, smpp34.Unbound):
                esmes.pop(event.session_id, None)
            elif isinstance(event, smpp34.SubmitSmEvent):
                task = asyncio.create_task(self._submit(event, esmes))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _submit(self, event: smpp34.SubmitSmEvent, esmes: dict[str, smpp34.Esme]) -> None:
        rule = self.rules.get(event.destination_addr, self.default_rule)
        message_id = None if rule.refuse else f"{next(self._ids):08X}"
        submit = Submit(session=event.session_id, source_addr=event.source_addr,
                        destination_addr=event.destination_addr, esm_class=event.esm_class,
                        data_coding=event.data_coding, registered_delivery=event.registered_delivery,
                        short_message=bytes(event.short_message), message_id=message_id, status=rule.refuse or 0)
        self._record(lambda state: state.submits.append(submit))
        if rule.submit_delay_s:
            await asyncio.sleep(rule.submit_delay_s)
        if message_id is None:
            event.reject(rule.refuse)
            return
        event.accept(message_id)
        if not (event.registered_delivery & 1) or rule.receipt is None:
            return
        await asyncio.sleep(rule.receipt_delay_s or 0.01)  # after the submit_sm_resp, as a real SMSC would
        esme = esmes.get(event.session_id)  # looked up now: the ESME may have gone meanwhile
        now = time.strftime("%y%m%d%H%M")
        text = (f"id:{message_id} sub:001 dlvrd:{'001' if rule.receipt == 'DELIVRD' else '000'} submit date:{now} "
                f"done date:{now} stat:{rule.receipt} err:{rule.error} text:")
        tlvs = [smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, message_id.encode() + b"\0"),
                smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes([MESSAGE_STATES.get(rule.receipt, 7)]))]
        if esme is None or not esme.can_receive:
            self._pending.append((message_id, rule.receipt, text.encode(), tlvs, event.source_addr,
                                  event.destination_addr))
            self._record(lambda state: state.receipts.append(Receipt(message_id, rule.receipt, False)))
            return
        await self._deliver_receipt(esme, message_id, rule.receipt, text.encode(), tlvs, event.source_addr,
                                    event.destination_addr)

    async def _deliver_receipt(self, esme: smpp34.Esme, message_id: str, stat: str, text: bytes, tlvs: list,
                               to: str, source: str) -> None:
        try:
            response = await asyncio.wait_for(esme.deliver_sm(to, text, source_addr=source, esm_class=0x04,
                                                              tlvs=tlvs), 5)
            acknowledged = response.is_success
        except Exception:  # noqa: BLE001 - the ESME went away; recorded as not acknowledged
            acknowledged = False
        if not acknowledged:
            self._pending.append((message_id, stat, text, tlvs, to, source))
        self._record(lambda state: state.receipts.append(Receipt(message_id, stat, acknowledged)))

    async def _redeliver(self, esme: smpp34.Esme, pending: list) -> None:
        await asyncio.sleep(0.2)  # let the new session settle, as an SMSC's retry timer would
        for message_id, stat, text, tlvs, to, source in pending:
            await self._deliver_receipt(esme, message_id, stat, text, tlvs, to, source)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


def reassemble(submits: list[Submit]) -> list[str]:
    """UCS-2 texts from submit_sm parts: single messages as they are, concatenated ones (UDH IEI 0x00, 8-bit
    reference, or 0x08, 16-bit) joined by sequence number once every part is there, in order of first arrival."""
    texts: list[tuple[int, str]] = []
    groups: dict[tuple, dict[int, bytes]] = {}
    first_seen: dict[tuple, int] = {}
    totals: dict[tuple, int] = {}
    for index, submit in enumerate(submits):
        udh = submit.udh
        if not udh:
            texts.append((index, submit.payload.decode("utf-16-be")))
            continue
        if udh[1] == 0x00:
            ref, total, seq = udh[3], udh[4], udh[5]
        elif udh[1] == 0x08:
            ref, total, seq = int.from_bytes(udh[3:5], "big"), udh[5], udh[6]
        else:
            raise ValueError(f"no concatenation element in UDH {udh.hex()}")
        key = (submit.destination_addr, ref, total)
        groups.setdefault(key, {})[seq] = submit.payload
        first_seen.setdefault(key, index)
        totals[key] = total
    for key, parts in groups.items():
        if len(parts) == totals[key]:
            texts.append((first_seen[key], b"".join(parts[seq] for seq in sorted(parts)).decode("utf-16-be")))
    return [text for _, text in sorted(texts)]
