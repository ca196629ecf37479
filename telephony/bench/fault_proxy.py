"""A Toxiproxy-style TCP fault proxy on 127.0.0.1 for `hotline bench faults`: it sits between the hotline and one
networked engine and, on command, kills, stalls or garbles the traffic.

Modes:

- `pass`: bytes are forwarded both ways.
- `kill`: every open connection is reset (RST, not a polite FIN) and the listening socket is closed, so new
  connections are refused (ECONNREFUSED) until the mode changes: a crashed engine or a dead host.
- `stall`: connections stay open and nothing is forwarded either way; new connections are accepted and then hear
  nothing: a hung engine, a full network buffer, a stopped process behind a live kernel.
- `garbage`: upstream→client bytes are replaced by random bytes of the same length: a corrupted stream or the
  wrong service on the port.

The proxy runs its own event loop in a daemon thread, so both synchronous orchestration (the benchmark) and async
tests can drive it with `set_mode`. It stops with `close()` or when the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("pass", "kill", "stall", "garbage")
BUFFER_BYTES = 65536


@dataclass(eq=False)  # hashed by identity: the proxy keeps a set of them
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST: SO_LINGER 0, as a crashed peer's kernel would answer."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """`FaultProxy(upstream_port).start()`; `.port` is where the hotline connects; `.set_mode("kill")`."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.mode = "pass"
        self.connections = 0  # accepted in all
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{upstream_port}",
                                        daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._mode_changed: asyncio.Event | None = None

    # -- control (any thread) ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the loop's side ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._mode_changed = asyncio.Event()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: str) -> None:
        previous, self.mode = self.mode, mode
        assert self._mode_changed is not None
        self._mode_changed.set()
        self._mode_changed = asyncio.Event()
        if mode == "kill":
            if self._server is not None:
                self._server.close()
                self._server = None
            for link in list(self._links):
                self._drop(link)
        elif previous == "kill":
            await self._listen()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        _reset(link.client)
        _reset(link.upstream)
        for task in link.tasks:
            task.cancel()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writer)
        if self.mode == "kill":
            _reset(writer)
            return
        self._links.add(link)
        try:
            while self.mode == "stall":  # a new connection to a hung engine: accepted, then silence
                await self._wait_mode_change()
            if self.mode == "kill" or link not in self._links:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._drop(link)
                return
            link.upstream = up_writer
            link.tasks = [asyncio.create_task(self._pump(reader, up_writer, link, garble=False)),
                          asyncio.create_task(self._pump(up_reader, writer, link, garble=True))]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            if link in self._links:
                self._links.discard(link)
                with contextlib.suppress(Exception):
                    writer.close()
                if link.upstream is not None:
                    with contextlib.suppress(Exception):
                        link.upstream.close()

    async def _wait_mode_change(self) -> None:
        assert self._mode_changed is not None
        await self._mode_changed.wait()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link,
                    garble: bool) -> None:
        try:
            while True:
                data = await source.read(BUFFER_BYTES)
                while self.mode == "stall":
                    await self._wait_mode_change()  # hold the bytes: nothing goes either way
                if self.mode == "kill":
                    return
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        sink.write_eof()
                    return
                if garble and self.mode == "garbage":
                    data = os.urandom(len(data))
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            if link in self._links:
                self._drop(link)  # one side broke: the other hears it as a reset too
