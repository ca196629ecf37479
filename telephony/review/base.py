"""The values of call review and the seam a store implements to list, search and mark calls."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class QaMark(StrEnum):
    CORRECT = "correct"
    WRONG_ANSWER = "wrong_answer"
    INCOMPLETE = "incomplete"
    SHOULD_HAVE_HANDED_OFF = "should_have_handed_off"
    ASR_ERROR = "asr_error"


@dataclass(frozen=True)
class CallFilter:
    started_from: dt.datetime | None = None
    started_to: dt.datetime | None = None
    outcome: str | None = None  # answered | clarified | handed_off | abandoned
    text: str | None = None  # full-text search over the transcript
    page: int = 1
    page_size: int = 50


@dataclass(frozen=True)
class CallSummary:
    call_id: str
    channel: str
    started_at: dt.datetime
    turns: int
    outcome: str
    first_question: str


@dataclass(frozen=True)
class TurnMark:
    call_id: str
    turn_seq: int
    mark: QaMark
    reviewer: str
    comment: str = ""


class CallReviewStore(Protocol):
    def list_calls(self, query: CallFilter) -> tuple[list[CallSummary], int]:
        """One page of calls, newest first, and the number that match."""

    def mark_turn(self, mark: TurnMark) -> None: ...
