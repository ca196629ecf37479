"""SMS over HTTP and the command line: staff sends (admin token), listing, resend, authenticated delivery reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from telephony.settings import Settings
from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    OutgoingSms,
    ReportError,
    ReportRequest,
    SmsReceipt,
)
from telephony.sms.compose import compose_guide
from telephony.web.app import create_app
from tests.test_cli import run as run_cli

ADMIN = "admin-token-0123456789"
RECEIPTS = "receipt-token-0123456789"
AUTH = {"authorization": f"Bearer {ADMIN}"}


class CallbackGateway:
    """A gateway whose delivery reports come as HTTP callbacks: `?ref=…&state=…` (the shape Kannel's dlr-url has)."""

    name = "callback"
    uses_templates = False

    def __init__(self) -> None:
        self.sent: list[OutgoingSms] = []

    async def start(self, reports) -> None:
        return None

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        self.sent.append(message)
        return SmsReceipt(self.name, message.reference, DeliveryState.SUBMITTED, segments=1)

    async def close(self) -> None:
        return None

    def status(self) -> str:
        return "ready"

    def parse_reports(self, request: ReportRequest) -> list[DeliveryReport]:
        try:
            return [DeliveryReport(self.name, None, DeliveryState(request.query["state"]),
                                   reference=request.query["ref"])]
        except (KeyError, ValueError) as exc:
            raise ReportError(f"unreadable report: {exc}") from exc


@pytest.fixture
def gateway() -> CallbackGateway:
    return CallbackGateway()


@pytest.fixture
def client(settings: Settings, gateway: CallbackGateway):
    settings = settings.model_copy(update={"admin_token": SecretStr(ADMIN), "sms_receipt_token": SecretStr(RECEIPTS),
                                           "sms_public_url": "http://127.0.0.1:9"})
    with TestClient(create_app(settings, voice=False, sms_gateway=gateway), raise_server_exceptions=False) as test:
        yield test


def wait_for_state(client: TestClient, message_id: int, state: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        body = client.get(f"/api/sms/{message_id}", headers=AUTH).json()
        if body["state"] == state or time.monotonic() > deadline:
            return body
        time.sleep(0.05)  # the worker runs in the app's event loop


def test_staff_send_is_queued_sent_by_the_worker_and_reported_delivered(client: TestClient,
                                                                        gateway: CallbackGateway) -> None:
    response = client.post("/api/sms", json={"to": "13800000000", "item": "card-loss-report", "key": "k1"},
                           headers=AUTH)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["to"] == "138****0000" and created["state"] == "queued" and created["created"] is True
    assert created["segments"] == (created["length"] + 66) // 67 and created["length"] > 70
    sent = wait_for_state(client, created["id"], "submitted")
    assert sent["state"] == "submitted" and sent["gateway"] == "callback"
    [outgoing] = gateway.sent
    assert outgoing.report_url == f"http://127.0.0.1:9/api/sms/receipts/callback?token={RECEIPTS}"
    # The same key again: the same message, nothing new sent.
    again = client.post("/api/sms", json={"to": "+8613800000000", "item": "card-loss-report", "key": "k1"},
                        headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == created["id"] and again.json()["created"] is False
    report = {"ref": outgoing.reference, "state": "delivered"}
    assert client.get("/api/sms/receipts/callback", params=report).status_code == 403  # no token
    assert client.get("/api/sms/receipts/callback", params=report | {"token": "wrong"}).status_code == 403
    assert client.get("/api/sms/receipts/kannel", params=report | {"token": RECEIPTS}).status_code == 404
    assert client.get("/api/sms/receipts/callback", params={"token": RECEIPTS, "x": "1"}).status_code == 400
    delivered = client.get("/api/sms/receipts/callback", params=report | {"token": RECEIPTS})
    assert delivered.status_code == 200 and delivered.json()["outcomes"] == ["applied"]
    replayed = client.post("/api/sms/receipts/callback", params=report | {"token": RECEIPTS})
    assert replayed.json()["outcomes"] == ["replayed"]
    assert client.get(f"/api/sms/{created['id']}", headers=AUTH).json()["state"] == "delivered"
    listing = client.get("/api/sms", headers=AUTH).json()
    assert listing["counts"] == {"delivered": 1} and "text" not in listing["messages"][0]
    assert len(gateway.sent) == 1


def test_resend_puts_the_same_message_out_again(client: TestClient, gateway: CallbackGateway) -> None:
    created = client.post("/api/sms", json={"to": "13800000001", "item": "card-loss-report"}, headers=AUTH).json()
    wait_for_state(client, created["id"], "submitted")
    resent = client.post(f"/api/sms/{created['id']}/resend", headers=AUTH)
    assert resent.status_code == 200 and resent.json()["id"] == created["id"]
    deadline = time.monotonic() + 10
    while len(gateway.sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [message.reference for message in gateway.sent] == [created["reference"]] * 2
    assert client.post("/api/sms/9999/resend", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"to": "0773-2822222", "item": "card-loss-report"}, 422, "landline"),
    ({"to": "+14155550100", "item": "card-loss-report"}, 422, "mainland"),
    ({"to": "13800000000", "item": "no-such-item"}, 404, "no KB item"),
    ({"to": "13800000000", "item": ""}, 422, "schema"),
    ({"to": "13800000000"}, 422, "schema"),
])
def test_bad_sends_get_clear_errors_and_store_nothing(client: TestClient, payload: dict, status: int,
                                                      message: str) -> None:
    response = client.post("/api/sms", json=payload, headers=AUTH)
    assert response.status_code == status and message in response.json()["error"]
    assert client.get("/api/sms", headers=AUTH).json()["messages"] == []


def test_sms_endpoints_need_the_admin_token(client: TestClient) -> None:
    payload = {"to": "13800000000", "item": "card-loss-report"}
    assert client.post("/api/sms", json=payload).status_code == 401
    assert client.post("/api/sms", json=payload, headers={"authorization": "Bearer nope"}).status_code == 403
    assert client.get("/api/sms").status_code == 401
    ready = client.get("/readyz").json()
    assert ready["sms"] == {"gateway": "callback", "state": "ready"}


def test_cli_send_prints_the_message_id_segments_and_state(tmp_path: Path) -> None:
    result = run_cli(["sms", "send", "--to", "13800000000", "--item", "card-loss-report", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["id"] == 1 and data["state"] == "submitted" and data["gateway"] == "outbox"
    assert data["to"] == "138****0000" and data["segments"] == (data["length"] + 66) // 67
    assert data["text"].endswith("咨询电话：0773-0000000【桂林社保】")
    listed = run_cli(["sms", "list", "--json"], tmp_path)
    assert json.loads(listed.stdout)["counts"] == {"submitted": 1}
    bad = run_cli(["sms", "send", "--to", "12345", "--item", "card-loss-report", "--json"], tmp_path)
    assert bad.returncode == 1 and "not an 11-digit mobile number" in json.loads(bad.stdout)["error"]
    unknown = run_cli(["sms", "send", "--to", "13800000000", "--item", "nope"], tmp_path)
    assert unknown.returncode == 1 and "no KB item" in unknown.stderr


def test_a_5000_character_guide_is_shortened_deterministically_not_sent_whole(settings: Settings) -> None:
    from kb.loader import load_knowledge_base

    item = load_knowledge_base().get("card-loss-report")
    long = item.model_copy(update={"sms": "\n".join(["第一步，带身份证办理。"] + ["补充说明：例如某种情形。" * 20] * 20)})
    composed = compose_guide(long, "0773-0000000", "测试社保", cap=500)
    assert composed.shortened and composed.length <= 500
    assert composed == compose_guide(long, "0773-0000000", "测试社保", cap=500)
    assert "依据：" in composed.body and composed.body.endswith("【测试社保】")
