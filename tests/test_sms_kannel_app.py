"""The whole chain through the real Kannel: the hotline server queues a guide, its worker submits it to Kannel's
sendsms, fakesmsc receives the exact text in UDH parts, and Kannel's dlr-url call to the server's authenticated
receipts route marks it delivered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from telephony.settings import Settings
from telephony.web.app import create_app
from tests.conftest import _free_port
from tests.fakes.kannel import Kannel, reassemble
from tests.test_sms_kannel import kannel  # noqa: F401 - the real Kannel on loopback (module fixture)

ADMIN = "admin-token-0123456789"
RECEIPTS = "receipt%token+0123456789"  # characters Kannel's dlr-url expansion must keep
AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def server(tmp_path: Path, kannel: Kannel) -> Iterator[str]:  # noqa: F811 - the imported fixture
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(data_dir=tmp_path / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        tts_prerender=False, kb_watch=False, admin_token=ADMIN, sms_gateway="kannel",
                        sms_kannel_url=kannel.sendsms_url, sms_kannel_username=kannel.username,
                        sms_kannel_password=kannel.password, sms_sender="10655", sms_public_url=base,
                        sms_receipt_token=RECEIPTS, asr_model=str(tmp_path / "no-model"), tts_engine="espeak")
    uvicorn_server = uvicorn.Server(uvicorn.Config(create_app(settings, voice=False), host="127.0.0.1", port=port,
                                                   log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # the server thread builds the answer stack
    else:
        raise AssertionError("server did not start")
    yield base
    uvicorn_server.should_exit = True
    thread.join(10)


def test_a_guide_goes_through_kannel_and_its_delivery_report_comes_back(server: str, kannel: Kannel) -> None:  # noqa: F811
    number = "13800000077"
    created = httpx.post(f"{server}/api/sms", headers=AUTH, timeout=10,
                         json={"to": number, "item": "card-loss-report", "key": "kannel-e2e"}).json()
    assert created["state"] == "queued" and created["segments"] > 1
    deadline = time.monotonic() + 30
    body = created
    while time.monotonic() < deadline:
        body = httpx.get(f"{server}/api/sms/{created['id']}", headers=AUTH, timeout=5).json()
        if body["state"] == "delivered":
            break
        time.sleep(0.1)  # Kannel, fakesmsc and the server's worker run in other processes and threads
    assert body["state"] == "delivered", body
    texts = reassemble([message for message in kannel.received() if message.receiver == number])
    assert texts == [body["text"]]
    assert sum(1 for message in kannel.received() if message.receiver == number) == body["segments"]
