"""Kill the server between submit and receipt, restart it: no message is sent twice and none is lost. A real
`hotline serve` process with the SMPP gateway against the fake SMSC on loopback, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from telephony.bench.doubles.smsc import FakeSmsc, Rule, reassemble
from tests.conftest import _free_port

ADMIN = "admin-token-0123456789"
AUTH = {"authorization": f"Bearer {ADMIN}"}
FIRST, SECOND = "13800000001", "13800000002"


class Server:
    def __init__(self, root: Path, smsc: FakeSmsc) -> None:
        self.root = root
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("HOTLINE_")} | {
            "HOTLINE_DATA_DIR": str(root / "var"), "HOTLINE_CENTRE_PHONE": "0773-0000000",
            "HOTLINE_ADMIN_TOKEN": ADMIN, "HOTLINE_KB_WATCH": "false", "HOTLINE_TTS_PRERENDER": "false",
            "HOTLINE_TTS_ENGINE": "espeak", "HOTLINE_ASR_MODEL": str(root / "no-model"),
            "HOTLINE_SMS_GATEWAY": "smpp", "HOTLINE_SMS_SMPP_HOST": "127.0.0.1",
            "HOTLINE_SMS_SMPP_PORT": str(smsc.port), "HOTLINE_SMS_SMPP_SYSTEM_ID": smsc.system_id,
            "HOTLINE_SMS_SMPP_PASSWORD": smsc.password, "HOTLINE_SMS_SENDER": "10655"}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "telephony.cli", "serve", "--port", str(self.port)],
                                        cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "server.log").read_text(errors="replace")[-3000:]
            try:
                body = httpx.get(f"{self.base}/readyz", timeout=2).json()
                if body.get("sms", {}).get("state") == "bound":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)  # the server is starting in its own process
        raise AssertionError("the server did not become ready with its SMPP link bound")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def message(self, message_id: int) -> dict:
        return httpx.get(f"{self.base}/api/sms/{message_id}", headers=AUTH, timeout=5).json()

    def wait_for(self, message_id: int, state: str, timeout_s: float = 30) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.message(message_id)
            if body["state"] == state or time.monotonic() > deadline:
                return body
            time.sleep(0.1)  # the server's worker and the SMSC are in other threads/processes


@pytest.fixture
def smsc() -> Iterator[FakeSmsc]:
    with FakeSmsc(lifetime_s=240) as fake:
        yield fake


def test_a_server_killed_between_submit_and_receipt_sends_nothing_twice_and_loses_nothing(
        tmp_path: Path, smsc: FakeSmsc) -> None:
    # The receipt comes 4 s after the submit: the server is killed in between.
    smsc.rules[FIRST] = Rule(receipt_delay_s=4.0)
    server = Server(tmp_path, smsc)
    server.start()
    try:
        sent = httpx.post(f"{server.base}/api/sms", headers=AUTH, timeout=10,
                          json={"to": FIRST, "item": "card-loss-report", "key": "restart-1"}).json()
        submitted = server.wait_for(sent["id"], "submitted")
        assert submitted["state"] == "submitted" and submitted["segments"] > 1
        server.kill()
        # While the server is down, staff queue a second guide from the command line (the server's worker sends it).
        queued = subprocess.run([sys.executable, "-m", "telephony.cli", "sms", "send", "--to", SECOND, "--item",
                                 "unemployment-benefit-application", "--queue-only", "--json"], cwd=tmp_path,
                                env=server.env, capture_output=True, text=True, timeout=120)
        assert queued.returncode == 0, queued.stderr
        server.start()
        delivered = server.wait_for(sent["id"], "delivered")
        assert delivered["state"] == "delivered", delivered
        second = server.wait_for(int(json.loads(queued.stdout)["id"]), "delivered")
        assert second["state"] == "delivered", second
        # The same request again after the restart is the same message, not a new send.
        again = httpx.post(f"{server.base}/api/sms", headers=AUTH, timeout=10,
                           json={"to": FIRST, "item": "card-loss-report", "key": "restart-1"}).json()
        assert again["id"] == sent["id"] and again["created"] is False
    finally:
        server.stop()
    assert len(reassemble(smsc.submits_to(FIRST))) == 1 and len(smsc.submits_to(FIRST)) == submitted["segments"]
    assert len(reassemble(smsc.submits_to(SECOND))) == 1
    [text] = reassemble(smsc.submits_to(FIRST))
    assert text == delivered["text"]
    # The first receipt went to a dead link and was taken by the restarted server.
    first_ids = {submit.message_id for submit in smsc.submits_to(FIRST)}
    outcomes = [receipt.acknowledged for receipt in smsc.receipts if receipt.message_id in first_ids]
    assert False in outcomes and True in outcomes
