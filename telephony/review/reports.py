"""The supervisors' figures: the dashboard over a date range (calls per hour, outcomes, QA accuracy, top items,
latency, SMS delivery) and the KB-gap report (the questions the assistant was unsure of, clustered by meaning)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import Integer, Text, and_, case, cast, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from rag.engine import RULE_CONFIDENCE
from rag.extractive import AnswerPolicy
from telephony.errors import TelephonyError
from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallOutcome,
    CallReview,
    CallReviewItem,
    QaLabel,
    QaMarkRow,
    QaSample,
    SmsMessage,
    SmsStatus,
    Turn,
)

CHINA = ZoneInfo("Asia/Shanghai")
MAX_RANGE_DAYS = 93  # a quarter: 2,232 hourly bars at most
# Calls are counted per 15 minutes in SQL, then folded into local hours: every time zone's offset from UTC is a
# multiple of 15 minutes, so a quarter-hour never straddles two local hours (Asia/Kathmandu's +05:45 included).
BUCKET_S = 15 * 60
TOP_ITEMS = 10
# The gap report's defaults.
ANSWER_THRESHOLD = AnswerPolicy(centre_phone="", sms_signature="").high_confidence  # below it: not a plain answer
GAP_QUESTIONS_CAP = 5000  # the most recent questions clustered; older ones in the window are left out (and counted)
# Cosine similarity for two questions to be the same question, tuned on the embedded default (USE multilingual v3:
# paraphrases score 0.79-0.93, different services 0.3-0.73). Another embedder (bge-m3 …) may need another value.
GAP_SIMILARITY = 0.75
MAX_GAP_DAYS = 90
SUGGESTED_ITEMS = 3
EMBED_BATCH = 256


class ReportError(TelephonyError, ValueError):
    """A report was asked for with bad parameters; `detail` says why in Chinese, for staff."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite stores a DateTime's fields as written, ignoring tzinfo: every bound value must be UTC, as stored.
    return value.astimezone(dt.UTC)


def _check_range(start: dt.datetime, end: dt.datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ReportError("start and end must be timezone-aware", "时间范围缺少时区")
    if end <= start:
        raise ReportError("end must be after start", "结束日期不能早于开始日期")
    if end - start > dt.timedelta(days=MAX_RANGE_DAYS):
        raise ReportError(f"the range is longer than {MAX_RANGE_DAYS} days", f"时间范围最长{MAX_RANGE_DAYS}天")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# -- the dashboard -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourCount:
    start: dt.datetime  # the local hour's start, aware in the report's time zone
    calls: int


@dataclass(frozen=True)
class Outcomes:
    answered: int = 0  # the first substantive reply answered
    clarified: int = 0  # answered after a clarifying question
    handed_off: int = 0
    abandoned: int = 0

    @property
    def total(self) -> int:
        return self.answered + self.clarified + self.handed_off + self.abandoned

    def to_json(self) -> dict[str, Any]:
        counts = {outcome.value: getattr(self, outcome.value) for outcome in CallOutcome}
        return {"total": self.total, "counts": counts,
                "shares": {name: _ratio(count, self.total) for name, count in counts.items()}}


@dataclass(frozen=True)
class QaAccuracy:
    correct: int
    marked: int  # marked turns

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct, self.marked)

    def to_json(self) -> dict[str, Any]:
        return {"correct": self.correct, "marked": self.marked, "accuracy": self.accuracy}


@dataclass(frozen=True)
class ItemCount:
    item_id: str
    title: str  # the KB title, or the id when the mapping has none
    calls: int


@dataclass(frozen=True)
class Latency:
    turns: int  # spoken turns measured
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class SmsDelivery:
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    pending: int = 0  # queued, sending or submitted: not final yet, so not in the rate

    @property
    def final(self) -> int:
        return self.delivered + self.failed + self.expired

    @property
    def rate(self) -> float | None:
        return _ratio(self.delivered, self.final)

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": self.failed, "expired": self.expired, "pending": self.pending,
                "final": self.final, "rate": self.rate}


@dataclass(frozen=True)
class Dashboard:
    start: dt.datetime
    end: dt.datetime  # exclusive
    timezone: str
    calls_per_hour: tuple[HourCount, ...]  # every local hour of the range, empty ones included
    outcomes: Outcomes
    qa_sample: QaAccuracy  # marks on the calls drawn into the daily QA samples of the range's days
    qa_overall: QaAccuracy  # every mark on a call that started in the range
    top_items: tuple[ItemCount, ...]
    latency: Latency
    sms: SmsDelivery

    @property
    def calls(self) -> int:
        return sum(hour.calls for hour in self.calls_per_hour)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(), "to": self.end.isoformat(), "timezone": self.timezone,
            "calls": self.calls,
            "calls_per_hour": [{"hour": hour.start.isoformat(), "calls": hour.calls} for hour in self.calls_per_hour],
            "outcomes": self.outcomes.to_json(),
            "qa": {"sample": self.qa_sample.to_json(), "overall": self.qa_overall.to_json()},
            "top_items": [{"item_id": item.item_id, "title": item.title, "calls": item.calls}
                          for item in self.top_items],
            "latency": {"turns": self.latency.turns, "p50_ms": self.latency.p50_ms, "p95_ms": self.latency.p95_ms},
            "sms": self.sms.to_json(),
        }


def _quarter_hour(column: Any, dialect: str) -> ColumnElement[int]:
    """The column's UTC quarter-hour as an integer (seconds since the epoch ÷ 900), in the database's own SQL."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer) // BUCKET_S
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / BUCKET_S), Integer)
    raise ReportError(f"no hourly buckets for the {dialect} dialect", "此数据库不支持统计报表")


def _local_hours(start: dt.datetime, end: dt.datetime, tz: dt.tzinfo) -> dict[int, dt.datetime]:
    """Each UTC quarter-hour of [start, end) → the start of its local hour. Walked in UTC, so a day when clocks go
    forward has 23 hours and one when they go back has 25 (the repeated hour twice, told apart by its offset)."""
    first = int(start.timestamp()) // BUCKET_S
    last = -(-int(end.timestamp()) // BUCKET_S)
    hours: dict[int, dt.datetime] = {}
    for bucket in range(first, last):
        local = dt.datetime.fromtimestamp(bucket * BUCKET_S, dt.UTC).astimezone(tz)
        # A fixed-offset tzinfo: aware datetimes sharing a ZoneInfo compare by wall time, which would merge the
        # repeated hour's two halves.
        offset = dt.timezone(local.utcoffset() or dt.timedelta())
        hours[bucket] = local.replace(minute=0, second=0, microsecond=0).astimezone(offset)
    return hours


def dashboard(database: Database, start: dt.datetime, end: dt.datetime, tz: dt.tzinfo = CHINA,
              item_titles: Mapping[str, str] | None = None, top: int = TOP_ITEMS) -> Dashboard:
    """The figures for calls that started in [start, end): aggregates in SQL over one range of the call_reviews
    index, and one pass over the range's latency lists for the percentiles."""
    _check_range(start, end)
    titles = item_titles or {}
    start_utc, end_utc = _utc(start), _utc(end)
    in_range = and_(CallReview.started_at >= start_utc, CallReview.started_at < end_utc)
    first_day, last_day = start.astimezone(tz).date(), (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    correct = func.sum(case((QaMarkRow.label == QaLabel.CORRECT, 1), else_=0))
    with database.session() as session:
        bucket = _quarter_hour(CallReview.started_at, database.dialect).label("bucket")
        grouped = session.execute(select(bucket, CallReview.outcome, func.count())
                                  .where(in_range).group_by(bucket, CallReview.outcome)).all()
        # As JSON text: decoding one joined array is ~10× faster than 100,000 JSON values row by row.
        latencies = session.scalars(select(cast(CallReview.latencies_ms, Text)).where(in_range)).all()
        items = session.execute(
            select(CallReviewItem.item_id, func.count().label("calls"))
            .join(CallReview, CallReview.doc_id == CallReviewItem.doc_id).where(in_range)
            .group_by(CallReviewItem.item_id).order_by(func.count().desc(), CallReviewItem.item_id).limit(top)).all()
        sampled = select(QaSample.call_id).where(QaSample.day >= first_day, QaSample.day <= last_day)
        sample = session.execute(select(correct, func.count()).select_from(QaMarkRow)
                                 .where(QaMarkRow.call_id.in_(sampled))).one()
        overall = session.execute(
            select(correct, func.count()).select_from(QaMarkRow).join(Call, Call.id == QaMarkRow.call_id)
            .where(Call.started_at >= start_utc, Call.started_at < end_utc)).one()
        sms = dict(session.execute(select(SmsMessage.status, func.count())
                                   .where(SmsMessage.created_at >= start_utc, SmsMessage.created_at < end_utc)
                                   .group_by(SmsMessage.status)).all())

    hours = _local_hours(start, end, tz)
    per_hour: dict[dt.datetime, int] = dict.fromkeys(hours.values(), 0)
    outcome_counts: Counter[str] = Counter()
    for quarter, outcome, count in grouped:
        per_hour[hours[int(quarter)]] += count
        outcome_counts[CallOutcome(outcome).value] += count
    lists = (text.strip()[1:-1] for text in latencies if text and text.lstrip().startswith("["))  # not JSON null
    spoken = np.asarray(json.loads("[" + ",".join(filter(None, lists)) + "]"), dtype=np.float64)
    p50, p95 = (np.percentile(spoken, [50, 95]).tolist() if spoken.size else (None, None))
    return Dashboard(
        start=start.astimezone(tz), end=end.astimezone(tz), timezone=str(tz),
        calls_per_hour=tuple(HourCount(hour, count) for hour, count in per_hour.items()),
        outcomes=Outcomes(**outcome_counts),
        qa_sample=QaAccuracy(int(sample[0] or 0), int(sample[1])),
        qa_overall=QaAccuracy(int(overall[0] or 0), int(overall[1])),
        top_items=tuple(ItemCount(item_id, titles.get(item_id, item_id), count) for item_id, count in items),
        latency=Latency(int(spoken.size), p50, p95),
        sms=SmsDelivery(delivered=sms.get(SmsStatus.DELIVERED, 0), failed=sms.get(SmsStatus.FAILED, 0),
                        expired=sms.get(SmsStatus.EXPIRED, 0),
                        pending=sum(count for status, count in sms.items() if not SmsStatus(status).final)),
    )


# -- the KB-gap report ---------------------------------------------------------------------------------------------

Embed = Callable[[list[str]], Sequence[Sequence[float]]]  # a chromadb EmbeddingFunction fits


@dataclass(frozen=True)
class GapQuestion:
    call_id: str
    turn_seq: int
    text: str
    at: dt.datetime
    action: str  # answer (below the threshold) | clarify | handoff
    confidence: float
    item_ids: tuple[str, ...]  # what retrieval suggested: answered and offered items

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "turn_seq": self.turn_seq, "text": self.text, "at": self.at.isoformat(),
                "action": self.action, "confidence": self.confidence, "item_ids": list(self.item_ids)}


@dataclass(frozen=True)
class SuggestedItem:
    item_id: str
    title: str
    questions: int  # questions of the cluster that retrieval matched to it


@dataclass(frozen=True)
class GapCluster:
    size: int  # questions
    calls: int  # distinct calls
    share: float  # of the questions clustered
    representative: GapQuestion  # the medoid: the question most similar to all the others
    examples: tuple[GapQuestion, ...]  # the most recent, one per wording first
    suggested_items: tuple[SuggestedItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "calls": self.calls, "share": self.share,
                "representative": self.representative.to_json(),
                "examples": [example.to_json() for example in self.examples],
                "suggested_items": [{"item_id": item.item_id, "title": item.title, "questions": item.questions}
                                    for item in self.suggested_items]}


@dataclass(frozen=True)
class GapReport:
    since: dt.datetime
    until: dt.datetime
    threshold: float
    similarity: float
    matched: int  # questions in the window that qualify
    clustered: int  # of them, the most recent `cap`
    cap: int
    clusters: tuple[GapCluster, ...] = field(default=())  # the largest `max_clusters` of them
    total_clusters: int = 0

    @property
    def capped(self) -> bool:
        return self.matched > self.cap

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "threshold": self.threshold,
                "similarity": self.similarity, "matched": self.matched, "clustered": self.clustered,
                "cap": self.cap, "capped": self.capped, "total_clusters": self.total_clusters,
                "clusters": [cluster.to_json() for cluster in self.clusters]}


def cluster_by_similarity(vectors: np.ndarray, similarity: float, weights: np.ndarray | None = None,
                          block_rows: int = 1024) -> list[np.ndarray]:
    """Leader clustering by density (Butina, J. Chem. Inf. Comput. Sci. 1999): the row with the most (weighted)
    neighbours at cosine ≥ `similarity` takes them all as a cluster, then the next densest row left, and so on; every
    member is within `similarity` of its cluster's leader. O(n²) time, an n×n boolean matrix of memory; deterministic
    (ties go to the earlier row). Returns the member rows of each cluster, largest clusters first."""
    count = len(vectors)
    if count == 0:
        return []
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
    weights = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    neighbours = np.zeros((count, count), dtype=bool)
    for first in range(0, count, block_rows):
        neighbours[first:first + block_rows] = unit[first:first + block_rows] @ unit.T >= similarity
    np.fill_diagonal(neighbours, True)
    density = neighbours.astype(np.float64) @ weights
    assigned = np.zeros(count, dtype=bool)
    clusters: list[np.ndarray] = []
    for leader in np.lexsort((np.arange(count), -density)):
        if assigned[leader]:
            continue
        members = np.flatnonzero(neighbours[leader] & ~assigned)
        assigned[members] = True
        clusters.append(members)
    return clusters


def _gap_filter(threshold: float) -> ColumnElement[bool]:
    """Turns that show a gap: a clarifying question, an answer below the threshold, or a handoff the retrieval
    decided. Handoffs a rule settled with certainty (转人工, a complaint, abuse, a crisis) say nothing of the KB."""
    return or_(Turn.action == "clarify",
               and_(Turn.action == "answer", Turn.confidence < threshold),
               and_(Turn.action == "handoff", Turn.confidence < RULE_CONFIDENCE))


def gap_report(database: Database, embed: Embed, days: int = 14, now: dt.datetime | None = None,
               limit_examples: int = 5, threshold: float = ANSWER_THRESHOLD, similarity: float = GAP_SIMILARITY,
               cap: int = GAP_QUESTIONS_CAP, item_titles: Mapping[str, str] | None = None,
               max_clusters: int | None = None) -> GapReport:
    """The callers' questions of the last `days` days (calls that started then) that the assistant clarified, handed
    off or answered below `threshold`, clustered by the embedding `embed` (cosine ≥ `similarity`), largest first."""
    if not 1 <= days <= MAX_GAP_DAYS:
        raise ReportError(f"days must be 1..{MAX_GAP_DAYS}", f"天数须在1到{MAX_GAP_DAYS}之间")
    if not 0 < similarity <= 1 or not 0 <= threshold <= 1:
        raise ReportError("similarity must be in (0, 1] and threshold in [0, 1]", "相似度或置信度阈值超出范围")
    until = now or dt.datetime.now(dt.UTC)
    if until.tzinfo is None:
        raise ReportError("now must be timezone-aware", "时间缺少时区")
    since = until - dt.timedelta(days=days)
    window = and_(Call.started_at >= _utc(since), Call.started_at < _utc(until), func.length(Turn.caller_text) > 0,
                  _gap_filter(threshold))
    with database.session() as session:
        matched = session.scalar(select(func.count()).select_from(Turn).join(Call, Call.id == Turn.call_id)
                                 .where(window)) or 0
        rows = session.execute(
            select(Turn.call_id, Turn.seq, Turn.caller_text, Turn.created_at, Turn.action, Turn.confidence,
                   Turn.item_ids, Turn.offered_item_ids)
            .join(Call, Call.id == Turn.call_id).where(window)
            .order_by(Turn.created_at.desc(), Turn.id.desc()).limit(cap)).all()
    questions = [GapQuestion(call_id, seq, text.strip(), at, action, float(confidence),
                             tuple(dict.fromkeys([*(items or ()), *(offered or ())])))
                 for call_id, seq, text, at, action, confidence, items, offered in rows if text.strip()]
    clusters = _clusters(questions, embed, similarity, limit_examples, item_titles or {})
    return GapReport(since, until, threshold, similarity, matched, len(questions), cap,
                     tuple(clusters[:max_clusters] if max_clusters is not None else clusters), len(clusters))


def _clusters(questions: list[GapQuestion], embed: Embed, similarity: float, limit_examples: int,
              titles: Mapping[str, str]) -> list[GapCluster]:
    if not questions:
        return []
    wordings = list(dict.fromkeys(question.text for question in questions))  # each wording embedded once
    by_wording: dict[str, list[GapQuestion]] = {}
    for question in questions:  # newest first, as queried
        by_wording.setdefault(question.text, []).append(question)
    vectors = np.vstack([np.asarray(embed(wordings[first:first + EMBED_BATCH]), dtype=np.float32)
                         for first in range(0, len(wordings), EMBED_BATCH)])
    weights = np.array([len(by_wording[wording]) for wording in wordings], dtype=np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    result = []
    for members in cluster_by_similarity(unit, similarity, weights):
        centre = (unit[members] * weights[members, None]).sum(axis=0)
        medoid = wordings[members[int(np.argmax(unit[members] @ centre))]]
        asked = [question for row in members for question in by_wording[wordings[row]]]
        # Examples: the newest of each wording, newest first; then further askings, when there are few wordings.
        newest = sorted((by_wording[wordings[row]][0] for row in members), key=lambda q: q.at, reverse=True)
        newest += sorted((q for row in members for q in by_wording[wordings[row]][1:]), key=lambda q: q.at,
                         reverse=True)[:max(0, limit_examples - len(newest))]
        items = Counter(item for question in asked for item in question.item_ids)
        result.append(GapCluster(
            size=len(asked), calls=len({question.call_id for question in asked}), share=len(asked) / len(questions),
            representative=by_wording[medoid][0], examples=tuple(newest[:limit_examples]),
            suggested_items=tuple(SuggestedItem(item, titles.get(item, item), count)
                                  for item, count in items.most_common(SUGGESTED_ITEMS))))
    result.sort(key=lambda cluster: (-cluster.size, -cluster.calls, -cluster.representative.at.timestamp()))
    return result


__all__ = [
    "ANSWER_THRESHOLD", "CHINA", "Dashboard", "Embed", "GAP_QUESTIONS_CAP", "GAP_SIMILARITY", "GapCluster",
    "GapQuestion", "GapReport", "HourCount", "ItemCount", "Latency", "Outcomes", "QaAccuracy", "ReportError",
    "SmsDelivery", "SuggestedItem", "cluster_by_similarity", "dashboard", "gap_report",
]
