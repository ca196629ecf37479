"""KannelGateway against the real Kannel (bearerbox + smsbox + fakesmsc) on 127.0.0.1, and its dlr-url reports."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    HttpReportParser,
    OutgoingSms,
    ReportError,
    ReportRequest,
    SmsError,
)
from telephony.sms.gateways.kannel import KannelGateway, dlr_url
from tests.fakes.kannel import Kannel, missing_binaries, start_kannel

SIGNATURE = "【测试社保】"
GUIDE = (SIGNATURE + "失业保险金申领：参保满一年、非因本人意愿中断就业、已办理失业登记并有求职要求的人员，"
         "可在离职之日起六十日内携带身份证、社保卡和离职证明到户籍所在地或常住地的社保经办机构申请，"
         "也可以通过手机应用线上办理。") * 3
GUIDE = GUIDE[:300]
SHORT = (SIGNATURE + "您的社保卡已制作完成，请携带身份证到申领网点领取。咨询电话0773-0000000。" + "谢" * 70)[:70]


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Web:
    """A loopback HTTP server: records Kannel's dlr-url calls; /garbage and /busy play a broken sendsms."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                url = urlsplit(self.path)
                calls.append((url.path, dict(parse_qsl(url.query, keep_blank_values=True))))
                status, body = {"/garbage": (200, "<html>Welcome to nginx!</html>"),
                                "/busy": (503, "Temporal failure, try again later.")}.get(url.path, (200, ""))
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def reports_for(self, reference: str) -> list[dict[str, str]]:
        return [query for path, query in self.calls if path == "/receipts" and query.get("ref") == reference]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kannel]:
    missing = missing_binaries()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Kannel is missing ({', '.join(missing)}); scripts/setup.sh test installs it")
        pytest.skip("Kannel not installed (scripts/setup.sh test installs kannel and kannel-extras)")
    running = start_kannel(Path(tmp_path_factory.mktemp("kannel")))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    server = Web()
    try:
        yield server
    finally:
        server.close()


async def _no_reports(report: DeliveryReport) -> None:
    raise AssertionError("Kannel's reports come by HTTP")


@pytest.fixture
async def gateway(kannel: Kannel) -> AsyncIterator[KannelGateway]:
    gateway = KannelGateway(kannel.sendsms_url, kannel.username, kannel.password, sender="10655", timeout_s=5)
    await gateway.start(_no_reports)
    yield gateway
    await gateway.close()


def outgoing(to: str, body: str = SHORT, reference: str = "call-1:item-1", report_url: str | None = None):
    return OutgoingSms(reference=reference, to_number=to, body=body, report_url=report_url)


async def test_a_300_character_guide_arrives_as_five_udh_parts_that_reassemble(kannel: Kannel,
                                                                               gateway: KannelGateway):
    assert len(GUIDE) == 300
    receipt = await gateway.send(outgoing("13900000001", GUIDE, reference="call-1:guide"))
    assert (receipt.gateway, receipt.message_id, receipt.state, receipt.segments) == (
        "kannel", "call-1:guide", DeliveryState.SUBMITTED, 5)

    await until(lambda: len(kannel.received_by("13900000001")) == 5, what="5 parts at fakesmsc")
    parts = kannel.received_by("13900000001")
    assert {p.kind for p in parts} == {"udh"} and {p.sender for p in parts} == {"10655"}
    assert all(p.udh[:3] == b"\x05\x00\x03" and p.udh[4] == 5 for p in parts)
    assert len({p.udh[3] for p in parts}) == 1 and sorted(p.udh[5] for p in parts) == [1, 2, 3, 4, 5]
    assert sorted(len(p.data) for p in parts) == [64, 134, 134, 134, 134]  # 67 UCS-2 characters a part
    assert kannel.texts_to("13900000001") == [GUIDE]


async def test_seventy_characters_arrive_as_one_part(kannel: Kannel, gateway: KannelGateway):
    assert len(SHORT) == 70
    receipt = await gateway.send(outgoing("13900000002"))
    assert receipt.segments == 1
    await until(lambda: kannel.received_by("13900000002"), what="the message at fakesmsc")
    [part] = kannel.received_by("13900000002")
    assert (part.kind, part.udh, part.text) == ("ucs-2", b"", SHORT)


async def test_the_dlr_url_callback_parses_to_a_delivered_report(kannel: Kannel, gateway: KannelGateway, web: Web):
    reference = "call 7:养老/item%3"  # needs escaping in the dlr-url, and Kannel must not expand its %
    report_url = f"{web.base}/receipts?token=a%2Bb"
    await gateway.send(outgoing("13900000003", GUIDE, reference=reference, report_url=report_url))

    await until(lambda: {q.get("type") for q in web.reports_for(reference)} >= {"1", "8"}, what="DLRs 1 and 8")
    calls = web.reports_for(reference)
    assert all(query["token"] == "a+b" and query["smsc"] == "FAKE" and query["ts"].isdigit() for query in calls)
    assert len([q for q in calls if q["type"] == "1"]) == 1  # one report for the whole concatenated message
    reports = {}
    for query in calls:
        [report] = gateway.parse_reports(ReportRequest(method="GET", query=query, body=b""))
        reports[query["type"]] = report
    delivered = reports["1"]
    assert (delivered.state, delivered.reference, delivered.message_id) == (DeliveryState.DELIVERED, reference,
                                                                          reference)
    assert delivered.gateway == "kannel" and "FAKE" in delivered.detail
    assert reports["8"].state is DeliveryState.SUBMITTED and "ACK" in reports["8"].detail


async def test_a_wrong_password_is_final(kannel: Kannel):
    gateway = KannelGateway(kannel.sendsms_url, kannel.username, "wrong", timeout_s=5)
    await gateway.start(_no_reports)
    try:
        with pytest.raises(SmsError, match="Authorization failed") as refused:
            await gateway.send(outgoing("13900000004"))
    finally:
        await gateway.close()
    assert refused.value.retryable is False and refused.value.code == "403"
    assert kannel.received_by("13900000004") == []


async def test_a_bad_request_is_final(gateway: KannelGateway):
    with pytest.raises(SmsError, match="receiver number") as refused:
        await gateway.send(outgoing(""))
    assert refused.value.retryable is False and refused.value.code == "400"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_kannel_not_running_is_retryable():
    gateway = KannelGateway(f"http://127.0.0.1:{_closed_port()}/cgi-bin/sendsms", "hotline", "secret", timeout_s=2)
    await gateway.start(_no_reports)
    try:
        with pytest.raises(SmsError, match="cannot reach") as down:
            await gateway.send(outgoing("13900000005"))
    finally:
        await gateway.close()
    assert down.value.retryable is True
    assert "secret" not in str(down.value)


async def test_no_answer_in_time_is_retryable():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cgi-bin/sendsms"
        gateway = KannelGateway(url, "hotline", "secret", timeout_s=0.3)
        try:
            with pytest.raises(SmsError, match="did not answer") as late:
                await gateway.send(outgoing("13900000006"))
        finally:
            await gateway.close()
    assert late.value.retryable is True


@pytest.mark.parametrize(("path", "why"), [("/garbage", "unexpected answer"), ("/busy", "HTTP 503")])
async def test_a_broken_answer_is_retryable(web: Web, path: str, why: str):
    gateway = KannelGateway(web.base + path, "hotline", "secret", timeout_s=2)
    try:
        with pytest.raises(SmsError, match=why) as broken:
            await gateway.send(outgoing("13900000007"))
    finally:
        await gateway.close()
    assert broken.value.retryable is True


def test_dlr_url_keeps_the_report_urls_query_and_escapes_percent_signs():
    assert dlr_url("http://h/r?token=a%2B", "c 1/2") == (
        "http://h/r?token=a%%2B&ref=c%%201%%2F2&type=%d&status=%A&smsc=%i&ts=%T")
    assert dlr_url("http://h/r", "x").startswith("http://h/r?ref=x&type=%d")


@pytest.mark.parametrize(("query", "state", "error_code"), [
    ({"ref": "r", "type": "1", "status": ""}, DeliveryState.DELIVERED, None),
    ({"ref": "r", "type": "2", "status": "id:1 stat:UNDELIV err:005"}, DeliveryState.FAILED, "005"),
    ({"ref": "r", "type": "4"}, DeliveryState.SUBMITTED, None),
    ({"ref": "r", "type": "8", "status": "ACK/"}, DeliveryState.SUBMITTED, None),
    ({"ref": "r", "type": "16", "status": "NACK/0x0000000b/Invalid Destination Address"}, DeliveryState.FAILED,
     "0x0000000b"),
])
def test_report_types(query: dict[str, str], state: DeliveryState, error_code: str | None):
    gateway = KannelGateway("http://127.0.0.1:1/cgi-bin/sendsms", "u", "p")
    assert isinstance(gateway, HttpReportParser)
    [report] = gateway.parse_reports(ReportRequest(method="GET", query=query, body=b""))
    assert (report.state, report.error_code, report.reference, report.message_id) == (state, error_code, "r", "r")


@pytest.mark.parametrize("query", [
    {}, {"ref": "r"}, {"type": "1"}, {"ref": "", "type": "1"}, {"ref": "r", "type": "%d"}, {"ref": "r", "type": "3"},
    {"ref": "r", "type": "delivered"},
])
def test_unreadable_reports_raise(query: dict[str, str]):
    gateway = KannelGateway("http://127.0.0.1:1/cgi-bin/sendsms", "u", "p")
    with pytest.raises(ReportError):
        gateway.parse_reports(ReportRequest(method="GET", query=query, body=b"garbage"))
