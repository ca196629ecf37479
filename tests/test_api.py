"""The HTTP API: health, readiness, answers, stored turns, and every error path as clear JSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from telephony.web.app import create_app
from telephony.settings import Settings
from telephony.store import Database


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_health_and_readiness_report_engines(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["engines"]["answers"] == "extractive (no LLM key set)"
    assert body["kb"]["items"] >= 1 and len(body["kb"]["version"]) == 12
    assert body["handoff"] == {"mode": "desk", "queue": {
        "agents_signed_in": 0, "agents": {"away": 0, "ready": 0, "offered": 0, "talking": 0, "held": 0},
        "calls_waiting": 0, "longest_wait_s": 0.0,
        "counters": {"queued": 0, "connected": 0, "timed_out": 0, "abandoned": 0, "offers_unanswered": 0}}}


def test_lost_card_question_gets_the_item_citations_and_phone(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/ask", json={"question": "社保卡丢了怎么办"})
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) >= {"question", "action", "spoken", "sms", "citations", "items", "confidence", "reason"}
    assert answer["action"] == "answer"
    assert answer["items"][0] == "card-loss-report"
    assert "挂失" in answer["spoken"]
    assert any("人社厅发〔2020〕101号" in citation for citation in answer["citations"])
    assert answer["sms"].endswith("咨询电话：0773-0000000【测试社保】")
    assert "依据：《" in answer["sms"]
    assert 0.55 <= answer["confidence"] <= 1

    database = Database(settings.resolved_database_url)
    call = database.get_call(answer["conversation_id"])
    assert call is not None and call.channel.value == "api"
    assert [(turn.seq, turn.caller_text, turn.action) for turn in call.turns] == [(1, "社保卡丢了怎么办", "answer")]
    assert call.turns[0].item_ids == ["card-loss-report"]
    assert "answer_ms" in call.turns[0].timings_ms
    database.close()


def test_conversation_continues_in_the_same_call(client: TestClient) -> None:
    first = client.post("/api/ask", json={"question": "社保卡丢了怎么办"}).json()
    second = client.post("/api/ask", json={"question": "转人工", "conversation_id": first["conversation_id"]}).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert second["turn"] == 2
    assert second["action"] == "handoff" and second["citations"] == []


def test_a_choice_offered_over_the_api_is_resolved_in_the_next_request(client: TestClient, settings: Settings) -> None:
    asked = client.post("/api/ask", json={"question": "我想办社保卡"}).json()
    assert asked["action"] == "clarify" and asked["clarify"] == "choice"
    assert len(asked["offered_items"]) == 2 and asked["offered_items"] == asked["items"]
    chosen = client.post("/api/ask", json={"question": "第一个", "conversation_id": asked["conversation_id"]}).json()
    assert chosen["action"] == "answer" and chosen["items"] == [asked["offered_items"][0]]
    assert chosen["clarify"] is None and chosen["offered_items"] == []

    database = Database(settings.resolved_database_url)
    call = database.get_call(asked["conversation_id"])
    assert [turn.offered_item_ids for turn in call.turns] == [asked["offered_items"], []]
    database.close()


def test_out_of_scope_question_is_handed_off_not_answered(client: TestClient) -> None:
    answer = client.post("/api/ask", json={"question": "明天桂林天气好不好"}).json()
    assert answer["action"] == "handoff"
    assert answer["sms"] == "" and answer["citations"] == []


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"question": ""}, 422, "question is empty"),
        ({"question": "   "}, 422, "question is empty"),
        ({"question": "问" * 10_000}, 422, "question is 10000 characters; the limit is 500"),
        ({}, 422, "request body does not match the schema"),
        ({"question": 42}, 422, "request body does not match the schema"),
        ({"question": "社保卡", "extra": 1}, 422, "request body does not match the schema"),
        ({"question": "社保卡", "conversation_id": "no-such-call"}, 404, "no conversation no-such-call"),
    ],
)
def test_bad_questions_get_clear_errors(client: TestClient, payload: dict, status: int, message: str) -> None:
    response = client.post("/api/ask", json=payload)
    assert response.status_code == status
    assert response.json()["error"] == message
    assert "Traceback" not in response.text


def test_invalid_json_and_unknown_routes(client: TestClient) -> None:
    response = client.post("/api/ask", content=b'{"question": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not valid JSON"}
    assert client.get("/api/nothing-here").json() == {"error": "not found"}
    assert client.get("/api/nothing-here").status_code == 404
    assert client.get("/api/ask").status_code == 405


def test_openapi_documents_the_ask_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/ask" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_an_answer_by_name_offers_a_switch_that_explicit_context_can_carry(client: TestClient) -> None:
    named = client.post("/api/ask", json={"question": "领失业金要什么条件"}).json()
    assert named["action"] == "answer" and named["clarify"] is None and len(named["offered_items"]) == 1
    context = {"previous_items": named["items"], "previous_questions": [named["question"]],
               "offered_items": named["offered_items"], "last_action": "answer"}
    switched = client.post("/api/ask", json={"question": "不是这个", "context": context}).json()
    assert switched["action"] == "answer" and switched["items"] == named["offered_items"]
    bad = client.post("/api/ask", json={"question": "不是这个", "context": context | {"last_action": "maybe"}})
    assert bad.status_code == 422
