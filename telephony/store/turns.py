"""A turn as one typed record, written once: to the database, or to a local journal when the database is down."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock

from rag.base import Answer
from telephony.errors import StorageError
from telephony.store.database import Database
from telephony.store.models import CallChannel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnRecord:
    """The columns of one stored turn (`telephony.store.models.Turn`)."""

    caller_text: str
    action: str  # answer | clarify | handoff, or the dialogue's own: repeat | goodbye | sms
    reason: str = ""
    spoken_text: str = ""
    sms_text: str = ""
    item_ids: tuple[str, ...] = ()
    offered_item_ids: tuple[str, ...] = ()  # a choice the reply left pending (「您问的是A，还是B？」)
    citations: tuple[str, ...] = ()
    confidence: float = 0.0
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    sms_consent: bool | None = None  # the SMS offer: yes / no / not asked
    sms_to: str | None = None  # masked number
    sms_message_id: int | None = None

    @classmethod
    def of_answer(cls, answer: Answer, timings_ms: Mapping[str, float]) -> TurnRecord:
        return cls(caller_text=answer.question, action=answer.action.value, reason=answer.reason,
                   spoken_text=answer.spoken, sms_text=answer.sms, item_ids=answer.items,
                   offered_item_ids=answer.offered_items,
                   citations=tuple(citation.text for citation in answer.citations), confidence=answer.confidence,
                   timings_ms=dict(timings_ms))

    def columns(self) -> dict[str, object]:
        values = asdict(self)
        values["item_ids"] = list(self.item_ids)
        values["offered_item_ids"] = list(self.offered_item_ids)
        values["citations"] = list(self.citations)
        values["timings_ms"] = dict(self.timings_ms)
        return values


class TurnJournal:
    """Turns that could not be stored are appended here and replayed when the database is back: at start, and by the
    writer after its next successful write. Each line keeps its call's id, so a call's turns end up in that call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # this process's writers; the file lock covers workers sharing a data dir
        self._file_lock = FileLock(str(path) + ".lock")

    def append(self, channel: CallChannel, kb_version: str | None, record: TurnRecord,
               call_id: str | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"channel": channel.value, "kb_version": kb_version, "call_id": call_id, **record.columns()}
        with self._lock, self._file_lock, self.path.open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(line, ensure_ascii=False) + "\n")

    @property
    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def replay(self, database: Database) -> int:
        """Store every journaled turn in its call (a new call when the line has none, or its call is not in the
        database); returns how many were flushed. A line that cannot be read stays; the first storage error keeps
        that line and every later one for the next replay (the database is still down)."""
        if not self.path.exists():
            return 0
        with self._lock, self._file_lock:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept, flushed, replaced = [], 0, {}
            for index, line in enumerate(lines):
                try:
                    record = json.loads(line)
                    channel = CallChannel(record.pop("channel"))
                    kb_version = record.pop("kb_version", None)
                    call_id = record.pop("call_id", None)
                    if call_id in replaced:
                        call_id = replaced[call_id]
                    elif call_id is None or database.get_call(call_id) is None:
                        new_id = database.start_call(channel, kb_version=kb_version).id
                        if call_id is not None:
                            replaced[call_id] = new_id
                        call_id = new_id
                    database.add_turn(call_id, **record)
                    flushed += 1
                except StorageError as exc:
                    log.warning("journaled turns not flushed yet: %s", exc)
                    kept += lines[index:]
                    break
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("journaled turn not flushed: %s", exc)
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if flushed:
            log.info("flushed %d journaled turns into the database", flushed)
        return flushed


class TurnWriter:
    """Writes turns (blocking: run it in a thread); a database failure journals the turn instead of losing it."""

    def __init__(self, database: Database, journal: TurnJournal) -> None:
        self.database = database
        self.journal = journal

    def write(self, channel: CallChannel, call_id: str | None, record: TurnRecord,
              kb_version: str | None) -> tuple[str | None, int | None]:
        """Returns (call id, turn number); a new call is started when `call_id` is None. The turn number is None when
        the turn went to the journal."""
        try:
            if self.journal.pending:
                self.journal.replay(self.database)  # the database is back: earlier turns first, in their calls
            if call_id is None:
                call_id = self.database.start_call(channel, kb_version=kb_version).id
            return call_id, self.database.add_turn(call_id, **record.columns()).seq
        except StorageError as exc:
            log.error("turn not stored, journaled for later: %s", exc)
            self.journal.append(channel, kb_version, record, call_id)
            return call_id, None
