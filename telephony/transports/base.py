"""How a phone line reports itself for /readyz: listening, registered, or failed and why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class LineState(StrEnum):
    LISTENING = "listening"  # takes calls (a server socket, a trunk accepting INVITEs)
    REGISTERED = "registered"  # registered as a PBX extension
    STARTING = "starting"
    FAILED = "failed"


@dataclass(frozen=True)
class LineStatus:
    state: LineState
    detail: str = ""
    counters: dict[str, int] | None = None  # calls, refusals, RTP packets lost…: for monitoring and the benchmark


class Line(Protocol):
    name: str

    def status(self) -> LineStatus: ...


class CallHandler(Protocol):
    """What a line hands each answered call to (the `CallRunner`)."""

    async def run(self, line) -> str: ...


class ServedLine(Line, Protocol):
    """A line that owns its own listener (SIP agent, AudioSocket server): started once the voice engines are warm,
    it hands every answered call to `calls.run(transport)`, and stops taking calls at `close()`."""

    async def start(self, calls: CallHandler) -> None:
        """Bind and listen (or register); a failure is kept in `status()`, never raised into the server."""

    async def close(self) -> None:
        """Stop taking calls, hang up the calls still on this line, release ports and threads."""
