"""`hotline bench review`: a month of a busy hotline (100,000 calls, 500,000 turns by default) generated into a
fresh database, indexed by the real review indexer, then the review list and search timed as the /review page
asks for them. Prints JSON; a `--database-url` runs it on PostgreSQL (the database must be empty: it is migrated).

The callers' words and the replies come from the KB's own 常见问法, titles and spoken answers, so the searched words
(工伤, 社保卡, 养老金 …) occur about as often as a real hotline's mix of questions makes them occur.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from kb.loader import KnowledgeBase
from telephony.review.index import index_all
from telephony.review.store import CallQuery, ReviewStore
from telephony.store.database import Database
from telephony.store.models import Call, CallChannel, CallStatus, Turn

OPENERS = ("", "喂你好，", "你好，我想问一下，", "那个，", "请问")
CHANNELS = (CallChannel.SIP, CallChannel.SIP, CallChannel.SIP, CallChannel.TWILIO, CallChannel.AUDIOSOCKET)
INSERT_BATCH = 5000


def _generate(database: Database, kb: KnowledgeBase, calls: int, turns_per_call: float, days: int,
              rng: random.Random, end: dt.datetime) -> tuple[int, int]:
    items = [item for item in kb.items if item.questions]
    start = end - dt.timedelta(days=days)
    span_s = (end - start).total_seconds()
    call_rows: list[dict[str, Any]] = []
    turn_rows: list[dict[str, Any]] = []
    total_turns = 0

    def flush() -> None:
        with database.engine.begin() as connection:
            if call_rows:
                connection.execute(insert(Call), call_rows)
            if turn_rows:
                connection.execute(insert(Turn), turn_rows)
        call_rows.clear()
        turn_rows.clear()

    for _ in range(calls):
        call_id = uuid.uuid4().hex
        started = start + dt.timedelta(seconds=rng.random() * span_s)
        n_turns = max(1, min(12, round(rng.expovariate(1 / turns_per_call))))
        item = rng.choice(items)
        roll = rng.random()
        ending = "handoff" if roll < 0.06 else "caller_hangup"
        at = started
        for seq in range(1, n_turns + 1):
            at += dt.timedelta(seconds=rng.uniform(6, 25))
            if seq > 1 and rng.random() < 0.2:
                item = rng.choice(items)
            action = "answer"
            if seq == 1 and roll < 0.25:
                action = "clarify"
            if seq == n_turns and ending == "handoff":
                action = "handoff"
            confidence = round(rng.uniform(0.3, 0.94) if action != "answer" else rng.uniform(0.9, 1.0), 3)
            turn_rows.append({
                "call_id": call_id, "seq": seq, "created_at": at,
                "caller_text": rng.choice(OPENERS) + rng.choice(item.questions),
                "spoken_text": item.spoken if action == "answer" else f"您是想问{item.title}吗？",
                "sms_text": "", "item_ids": [item.id] if action == "answer" else [],
                "offered_item_ids": [item.id] if action == "clarify" else [], "citations": [],
                "confidence": confidence, "action": action, "reason": "bench",
                "timings_ms": {"voice_to_voice_ms": round(rng.lognormvariate(5.9, 0.25), 1)}})
        total_turns += n_turns
        number = f"13{rng.randrange(10**9):09d}"
        call_rows.append({"id": call_id, "channel": rng.choice(CHANNELS), "caller_number": number,
                          "status": CallStatus.ENDED, "end_reason": ending, "started_at": started,
                          "ended_at": at + dt.timedelta(seconds=rng.uniform(2, 8)), "agent_notes": ""})
        if len(turn_rows) >= INSERT_BATCH:
            flush()
    flush()
    return calls, total_turns


def _time(run: Callable[[], Any], repeats: int) -> dict[str, float]:
    run()  # warm the caches once: the page is used all day, not cold
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 1), "max_ms": round(samples[-1], 1)}


def run_review_bench(kb: KnowledgeBase, calls: int = 100_000, turns_per_call: float = 5.0, days: int = 30,
                     database_url: str | None = None, repeats: int = 9, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="hotline-review-bench-") as workdir:
        url = database_url or f"sqlite:///{Path(workdir) / 'review.db'}"
        database = Database(url)
        try:
            database.migrate()
            end = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
            began = time.perf_counter()
            n_calls, n_turns = _generate(database, kb, calls, turns_per_call, days, rng, end)
            generated_s = time.perf_counter() - began
            categories = {item.id: item.category for item in kb.items}
            began = time.perf_counter()
            indexed = index_all(database, categories, now=end + dt.timedelta(days=1))
            index_s = time.perf_counter() - began
            store = ReviewStore(database)
            day = end - dt.timedelta(days=3)
            week = end - dt.timedelta(days=7)
            category = kb.items[0].category
            item_id = next(item.id for item in kb.items if item.category.startswith("工伤"))
            queries = {
                "list_newest": CallQuery(),
                "list_page_100": CallQuery(page=100),
                "one_day": CallQuery(started_from=day, started_to=day + dt.timedelta(days=1)),
                "outcome_handed_off": CallQuery(outcome="handed_off"),
                "low_confidence_week": CallQuery(confidence="low", started_from=week),
                "category": CallQuery(category=category),
                "item": CallQuery(item_id=item_id),
                "long_calls": CallQuery(min_duration_s=180),
                "search_工伤": CallQuery(text="工伤"),
                "search_社保卡_挂失": CallQuery(text="社保卡挂失"),
                "search_养老金_week_answered": CallQuery(text="养老金", started_from=week, outcome="answered"),
                "search_rare": CallQuery(text="工亡"),
                "search_工伤_page_20": CallQuery(text="工伤", page=20),
            }
            results: dict[str, Any] = {}
            for name, query in queries.items():
                found = store.list_calls(query)
                results[name] = {"matches": found.total, "rows": len(found.rows)} | _time(
                    lambda query=query: store.list_calls(query), repeats)
            slowest = max(result["max_ms"] for result in results.values())
            return {"database": database.dialect, "calls": n_calls, "turns": n_turns, "days": days,
                    "generate_s": round(generated_s, 1), "index_s": round(index_s, 1), "indexed": indexed,
                    "index_calls_per_s": round(indexed / index_s, 1) if index_s else None,
                    "page_size": CallQuery().page_size, "repeats": repeats, "queries": results,
                    "slowest_ms": slowest, "target_ms": 300, "within_target": slowest < 300}
        finally:
            database.close()
