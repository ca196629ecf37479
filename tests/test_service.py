"""The text question path: a database outage never loses a turn or silences the answer."""

from __future__ import annotations

from pathlib import Path

from telephony.app import Hotline
from telephony.settings import Settings
from telephony.store import CallChannel, Database


async def test_turns_are_journaled_while_the_database_is_down_and_flushed_later(
    settings: Settings, tmp_path: Path
) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    hotline = Hotline.open(settings, down, migrate=False)
    reply = await hotline.conversations.ask("社保卡丢了怎么办", CallChannel.CLI)
    assert reply.answer.action.value == "answer"  # the caller still gets the answer
    assert reply.conversation_id is None and reply.turn_seq is None
    journal = settings.data_dir / "turn-journal.jsonl"
    assert "社保卡丢了怎么办" in journal.read_text(encoding="utf-8")

    up = Database(f"sqlite:///{tmp_path / 'back.db'}")
    up.migrate()
    assert hotline.journal.replay(up) == 1
    assert journal.read_text(encoding="utf-8") == ""
    calls = up.recent_calls()
    assert len(calls) == 1 and calls[0].channel is CallChannel.CLI
    stored = up.get_call(calls[0].id)
    assert stored is not None and stored.turns[0].item_ids == ["card-loss-report"]
    up.close()
