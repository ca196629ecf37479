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


class Line(Protocol):
    name: str

    def status(self) -> LineStatus: ...
