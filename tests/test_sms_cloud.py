"""Aliyun and Tencent Cloud SMS gateways: their signatures against the providers' published worked examples, sends
through loopback doubles that verify the signature independently, the retryable/final split, and delivery reports."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kb.loader import load_knowledge_base
from kb.sms_templates import (
    DEFAULT_TEMPLATES_FILE,
    load_templates,
    parse_templates,
    template_message,
)
from telephony.sms.base import (
    DeliveryState,
    HttpReportParser,
    OutgoingSms,
    ReportError,
    ReportRequest,
    SmsError,
)
from telephony.sms.gateways import aliyun, tencent
from telephony.sms.gateways.aliyun import AliyunSmsGateway
from telephony.sms.gateways.tencent import TencentSmsGateway
from tests.fakes import aliyun_sms_server, tencent_sms_server
from tests.fakes.aliyun_sms_server import FakeAliyunSmsServer
from tests.fakes.tencent_sms_server import FakeTencentSmsServer

NUMBER = "13800138000"
VARIABLES = (("title", "社会保障卡挂失与解挂"), ("basis", "人社厅发〔2020〕101号"), ("phone", "0773-0000000"))


def message(number: str = NUMBER, *, code: str | None = "SMS_000000001", reference: str = "call:c1:item:card-loss-report",
            variables: tuple[tuple[str, str], ...] = VARIABLES) -> OutgoingSms:
    return OutgoingSms(reference=reference, to_number=number, body="【测试社保】…", template_code=code,
                       template_variables=variables)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- Aliyun -----------------------------------------------------------------------------------------------------

# The worked example of Aliyun's SMS signature document (help.aliyun.com/document_detail/101343, "HTTP协议及签名"):
# AccessKeyId testId, secret testSecret, these parameters, GET; published signature zJDF%2BLrzhj%2FThnlvIToysFRq6t4%3D.
ALIYUN_EXAMPLE = {
    "SignatureMethod": "HMAC-SHA1", "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466", "AccessKeyId": "testId",
    "SignatureVersion": "1.0", "Timestamp": "2017-07-12T02:42:19Z", "Format": "XML", "Action": "SendSms",
    "Version": "2017-05-25", "RegionId": "cn-hangzhou", "PhoneNumbers": "15300000001", "SignName": "阿里云短信测试专用",
    "TemplateParam": '{"customer":"test"}', "TemplateCode": "SMS_71390007", "OutId": "123",
}


def test_aliyun_signature_reproduces_the_documented_example() -> None:
    signature = aliyun.sign("GET", ALIYUN_EXAMPLE, "testSecret")
    assert signature == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert aliyun.percent_encode(signature) == "zJDF%2BLrzhj%2FThnlvIToysFRq6t4%3D"
    assert aliyun.string_to_sign("GET", ALIYUN_EXAMPLE).startswith(
        "GET&%2F&AccessKeyId%3DtestId%26Action%3DSendSms%26Format%3DXML%26OutId%3D123%26PhoneNumbers%3D15300000001")
    # The double's verifier, written separately from the document's Java-flavoured steps, agrees.
    assert aliyun_sms_server.documented_signature("GET", ALIYUN_EXAMPLE, "testSecret") == signature


def test_aliyun_percent_encoding_follows_rfc3986() -> None:
    assert aliyun.percent_encode("a b*c~d/é") == "a%20b%2Ac~d%2F%C3%A9"


def aliyun_gateway(server: FakeAliyunSmsServer, *, secret: str = "testSecret", timeout_s: float = 5) -> AliyunSmsGateway:
    return AliyunSmsGateway("testId", secret, "测试社保", endpoint=server.endpoint, timeout_s=timeout_s)


async def test_aliyun_send_reaches_the_double_signed_with_template_variables_and_reference() -> None:
    with FakeAliyunSmsServer() as server:
        gateway = aliyun_gateway(server)
        await gateway.start(lambda report: None)
        receipt = await gateway.send(message())
        await gateway.close()
    assert server.verified == [True]
    [sent] = server.sends
    assert receipt.message_id == sent["BizId"] and receipt.state is DeliveryState.SUBMITTED
    assert receipt.gateway == "aliyun"
    assert sent["PhoneNumbers"] == NUMBER and sent["SignName"] == "测试社保"
    assert sent["TemplateCode"] == "SMS_000000001" and sent["OutId"] == "call:c1:item:card-loss-report"
    assert json.loads(sent["TemplateParam"]) == dict(VARIABLES)
    assert sent["Version"] == "2017-05-25" and sent["SignatureMethod"] == "HMAC-SHA1"
    assert isinstance(gateway, HttpReportParser)


async def test_aliyun_wrong_secret_is_refused_for_good() -> None:
    with FakeAliyunSmsServer() as server:
        gateway = aliyun_gateway(server, secret="not-the-secret")
        with pytest.raises(SmsError) as caught:
            await gateway.send(message())
        await gateway.close()
    assert server.verified == [False] and server.sends == []
    assert caught.value.code == "SignatureDoesNotMatch" and not caught.value.retryable
    assert "secret is wrong" in str(caught.value)
    assert gateway.status().startswith("closed: last send failed") and "SignatureDoesNotMatch" in gateway.status()


def test_aliyun_double_refuses_a_parameter_changed_after_signing() -> None:
    server = FakeAliyunSmsServer()  # not started: handle() is called directly
    params = AliyunSmsGateway("testId", "testSecret", "测试社保").request_params(message())
    assert json.loads(server.handle("POST", params)[1])["Code"] == "OK"
    tampered = {**params, "TemplateCode": "SMS_999999999", "SignatureNonce": "another"}
    status, body, _ = server.handle("POST", tampered)
    assert status == 400 and json.loads(body)["Code"] == "SignatureDoesNotMatch"
    assert json.loads(server.handle("GET", params)[1])["Code"] == "SignatureDoesNotMatch"  # the method is signed too
    assert server.verified == [True, False, False]
    server.stop()


@pytest.mark.parametrize(("code", "retryable"), [
    ("isv.BUSINESS_LIMIT_CONTROL", True),
    ("isv.DAY_LIMIT_CONTROL", True),
    ("isp.SYSTEM_ERROR", True),
    ("isv.AMOUNT_NOT_ENOUGH", True),
    ("isv.MOBILE_NUMBER_ILLEGAL", False),
    ("isv.TEMPLATE_MISSING_PARAMETERS", False),
    ("isv.SMS_TEMPLATE_ILLEGAL", False),
    ("isv.SMS_SIGNATURE_ILLEGAL", False),
])
async def test_aliyun_documented_codes_are_retryable_or_final(code: str, retryable: bool) -> None:
    with FakeAliyunSmsServer() as server:
        server.fail(NUMBER, code)
        gateway = aliyun_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message())
        await gateway.close()
    assert caught.value.code == code and caught.value.retryable is retryable
    assert "138****8000" in str(caught.value) and NUMBER not in str(caught.value)


@pytest.mark.parametrize(("code", "retryable"), [
    ("Throttling.User", True), ("isp.SOMETHING_NEW", True), ("isv.SOMETHING_NEW", False), ("Brand.New", True),
    ("InvalidAccessKeyId.NotFound", False), ("SignatureDoesNotMatch", False),
])
def test_aliyun_code_table_and_the_rule_for_unknown_codes(code: str, retryable: bool) -> None:
    assert aliyun.is_retryable(code) is retryable


@pytest.mark.parametrize("trouble", ["garbage", "http_500"])
async def test_aliyun_garbage_and_server_errors_are_retryable(trouble: str) -> None:
    with FakeAliyunSmsServer() as server:
        getattr(server, trouble)(NUMBER)
        gateway = aliyun_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message())
        await gateway.close()
    assert caught.value.retryable
    assert ("HTTP 500" if trouble == "http_500" else "unreadable answer") in str(caught.value)


async def test_aliyun_timeout_and_refused_connection_are_retryable() -> None:
    with FakeAliyunSmsServer() as server:
        server.stall(NUMBER, 5)
        gateway = aliyun_gateway(server, timeout_s=0.3)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message())
        await gateway.close()
    # Sent, but no answer: it may have been accepted, so the outbox does not resend it by itself.
    assert caught.value.outcome_unknown and "no answer within 0.3 s" in str(caught.value)
    closed = AliyunSmsGateway("testId", "testSecret", "测试社保", endpoint=f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(SmsError) as caught:
        await closed.send(message())
    await closed.close()
    assert caught.value.retryable and not caught.value.outcome_unknown and "cannot reach" in str(caught.value)


async def test_aliyun_message_without_template_code_is_final_and_never_sent() -> None:
    with FakeAliyunSmsServer() as server:
        gateway = aliyun_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code=None))
        await gateway.close()
    assert not caught.value.retryable and "no template code" in str(caught.value)
    assert server.verified == []


# The request example of Aliyun's SmsReport document (help.aliyun.com/document_detail/101867), verbatim.
ALIYUN_REPORT = """[
  {
    "phone_number" : "1381111****",
    "send_time" : "2017-01-01 00:00:00",
    "report_time" : "2017-01-01 00:00:00",
    "success" : true,
    "err_code" : "DELIVERED",
    "err_msg" : "用户接收成功",
    "sms_size" : "1",
    "biz_id" : "12345********",
    "out_id" : "67890**"
  }
]"""


def test_aliyun_report_of_the_documented_example_is_delivered() -> None:
    gateway = AliyunSmsGateway("testId", "testSecret", "测试社保")
    [report] = gateway.parse_reports(ReportRequest("POST", {}, ALIYUN_REPORT.encode(), "application/json"))
    assert report.state is DeliveryState.DELIVERED and report.message_id == "12345********"
    assert report.reference == "67890**" and report.error_code is None and report.detail == "用户接收成功"
    failed = json.loads(ALIYUN_REPORT)
    failed[0].update(success=False, err_code="UNDELIV", err_msg="用户接收失败", out_id="")
    failed.append({**failed[0], "biz_id": "54321", "success": True})
    first, second = gateway.parse_reports(ReportRequest("POST", {}, json.dumps(failed).encode()))
    assert first.state is DeliveryState.FAILED and first.error_code == "UNDELIV" and first.reference is None
    assert second.state is DeliveryState.DELIVERED and second.message_id == "54321"


@pytest.mark.parametrize("body", [b"not json", b'{"biz_id": "1"}', b'[{"success": true}]',
                                  b'[{"biz_id": "1", "success": "maybe"}]', b"[1]", b"\xff\xfe"])
def test_aliyun_malformed_report_is_refused(body: bytes) -> None:
    with pytest.raises(ReportError):
        AliyunSmsGateway("testId", "testSecret", "测试社保").parse_reports(ReportRequest("POST", {}, body))


# -- Tencent ----------------------------------------------------------------------------------------------------

# The worked example of Tencent's 签名方法 v3 (CVM DescribeInstances, POST JSON): SecretKey as the document prints
# it, timestamp 1551113065 (2019-02-26 00:44:25 in UTC+8, so the credential date is the UTC 2019-02-25).
TC3_SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******"
TC3_SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3*******"
TC3_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
TC3_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Host": "cvm.tencentcloudapi.com"}


def test_tencent_signature_reproduces_the_documented_example() -> None:
    canonical = tencent.canonical_request("POST", TC3_HEADERS, ["content-type", "host"], TC3_PAYLOAD)
    assert canonical == ("POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n"
                         "content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064")
    assert tencent.credential_date(1551113065) == "2019-02-25"
    assert tencent.string_to_sign(1551113065, "cvm", canonical) == (
        "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031")
    signature = "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
    assert tencent.signature(TC3_SECRET_KEY, 1551113065, "cvm", canonical) == signature
    assert tencent.authorization(TC3_SECRET_ID, TC3_SECRET_KEY, 1551113065, "cvm", canonical,
                                 ["content-type", "host"]) == (
        f"TC3-HMAC-SHA256 Credential={TC3_SECRET_ID}/2019-02-25/cvm/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={signature}")
    lower = {name.lower(): value for name, value in TC3_HEADERS.items()}
    assert tencent_sms_server.documented_signature(TC3_SECRET_KEY, "POST", lower, "content-type;host", TC3_PAYLOAD,
                                                   "1551113065", "2019-02-25", "cvm") == signature


def tencent_gateway(server: FakeTencentSmsServer, *, key: str = "test-secret-key", app: str = "1400006666",
                    timeout_s: float = 5) -> TencentSmsGateway:
    return TencentSmsGateway("AKIDtest", key, app, "测试社保", endpoint=server.endpoint, timeout_s=timeout_s)


async def test_tencent_send_reaches_the_double_signed_with_parameters_in_order_and_session_context() -> None:
    with FakeTencentSmsServer() as server:
        gateway = tencent_gateway(server)
        await gateway.start(lambda report: None)
        receipt = await gateway.send(message(code="1234567"))
        await gateway.close()
    assert server.verified == [True]
    [sent] = server.sends
    [headers] = server.headers
    assert receipt.message_id.startswith("5000:") and receipt.state is DeliveryState.SUBMITTED
    assert receipt.gateway == "tencent" and receipt.segments == 1
    assert sent == {"PhoneNumberSet": [f"+86{NUMBER}"], "SmsSdkAppId": "1400006666", "SignName": "测试社保",
                    "TemplateId": "1234567", "TemplateParamSet": [value for _, value in VARIABLES],
                    "SessionContext": "call:c1:item:card-loss-report"}
    assert headers["x-tc-action"] == "SendSms" and headers["x-tc-version"] == "2021-01-11"
    assert headers["x-tc-region"] == "ap-guangzhou" and "SignedHeaders=content-type;host;x-tc-action" in \
        headers["authorization"]
    assert isinstance(gateway, HttpReportParser)


def test_tencent_double_refuses_a_body_changed_after_signing() -> None:
    server = FakeTencentSmsServer()  # not started: handle() is called directly
    gateway = TencentSmsGateway("AKIDtest", "test-secret-key", "1400006666", "测试社保", endpoint="http://sms.test")
    payload = gateway.payload(message(code="1234567"))
    headers = {name.lower(): value for name, value in gateway.signed_headers(payload).items()}
    ok = json.loads(server.handle("POST", headers, payload)[1])["Response"]
    assert ok["SendStatusSet"][0]["Code"] == "Ok"
    refused = json.loads(server.handle("POST", headers, payload.replace(b"1234567", b"7654321"))[1])["Response"]
    assert refused["Error"]["Code"] == "AuthFailure.SignatureFailure"
    stale = {**headers, "x-tc-timestamp": str(int(headers["x-tc-timestamp"]) - 600)}
    expired = json.loads(server.handle("POST", stale, payload)[1])["Response"]
    assert expired["Error"]["Code"] == "AuthFailure.SignatureExpire"
    assert server.verified == [True, False]
    server.stop()


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"key": "not-the-key"}, "AuthFailure.SignatureFailure"),
    ({"app": "1400000000"}, "UnauthorizedOperation.SmsSdkAppIdVerifyFail"),
])
async def test_tencent_wrong_secret_or_app_is_refused_for_good(kwargs: dict, code: str) -> None:
    with FakeTencentSmsServer() as server:
        gateway = tencent_gateway(server, **kwargs)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code="1234567"))
        await gateway.close()
    assert server.sends == [] and caught.value.code == code and not caught.value.retryable
    assert server.verified == ([False] if "key" in kwargs else [True])


@pytest.mark.parametrize(("code", "whole_request", "retryable"), [
    ("LimitExceeded.PhoneNumberThirtySecondLimit", False, True),
    ("LimitExceeded.DeliveryFrequencyLimit", False, True),
    ("LimitExceeded.PhoneNumberDailyLimit", False, True),
    ("InternalError.Timeout", True, True),
    ("FailedOperation.InsufficientBalanceInSmsPackage", True, True),
    ("InvalidParameterValue.IncorrectPhoneNumber", False, False),
    ("FailedOperation.PhoneNumberInBlacklist", False, False),
    ("FailedOperation.TemplateIncorrectOrUnapproved", True, False),
    ("FailedOperation.SignatureIncorrectOrUnapproved", True, False),
    ("UnauthorizedOperation.RequestIpNotInWhitelist", True, False),
])
async def test_tencent_documented_codes_are_retryable_or_final(code: str, whole_request: bool,
                                                               retryable: bool) -> None:
    with FakeTencentSmsServer() as server:
        server.fail(NUMBER, code, whole_request=whole_request)
        gateway = tencent_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code="1234567"))
        await gateway.close()
    assert caught.value.code == code and caught.value.retryable is retryable
    assert NUMBER not in str(caught.value)


@pytest.mark.parametrize(("code", "retryable"), [
    ("RequestLimitExceeded.IPLimitExceeded", True), ("LimitExceeded.PhoneNumberCountLimit", False),
    ("AuthFailure.SecretIdNotFound", False), ("FailedOperation.SomethingNew", False), ("Brand.New", True),
])
def test_tencent_code_table_and_the_rule_for_unknown_codes(code: str, retryable: bool) -> None:
    assert tencent.is_retryable(code) is retryable


@pytest.mark.parametrize("trouble", ["garbage", "http_500"])
async def test_tencent_garbage_and_server_errors_are_retryable(trouble: str) -> None:
    with FakeTencentSmsServer() as server:
        getattr(server, trouble)(NUMBER)
        gateway = tencent_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code="1234567"))
        await gateway.close()
    assert caught.value.retryable and caught.value.code is None


async def test_tencent_timeout_and_refused_connection_are_retryable() -> None:
    with FakeTencentSmsServer() as server:
        server.stall(NUMBER, 5)
        gateway = tencent_gateway(server, timeout_s=0.3)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code="1234567"))
        await gateway.close()
    # Sent, but no answer: it may have been accepted, so the outbox does not resend it by itself.
    assert caught.value.outcome_unknown and "no answer within 0.3 s" in str(caught.value)
    closed = TencentSmsGateway("AKIDtest", "k", "1400006666", "测试社保", endpoint=f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(SmsError) as caught:
        await closed.send(message(code="1234567"))
    await closed.close()
    assert caught.value.retryable and not caught.value.outcome_unknown and "cannot reach" in str(caught.value)


async def test_tencent_message_without_template_id_is_final_and_never_sent() -> None:
    with FakeTencentSmsServer() as server:
        gateway = tencent_gateway(server)
        with pytest.raises(SmsError) as caught:
            await gateway.send(message(code=""))
        await gateway.close()
    assert not caught.value.retryable and "no template ID" in str(caught.value) and server.verified == []


# The request example of Tencent's status callback (cloud.tencent.com/document/product/382/5807), verbatim.
TENCENT_REPORT = """[
  {
      "user_receive_time": "2015-10-17 08:03:04",
      "nationcode": "86",
      "mobile": "13xxxxxxxxx",
      "report_status": "SUCCESS",
      "errmsg": "DELIVRD",
      "description": "用户短信送达成功",
      "sid": "xxxxxxx"
  }
]"""


def test_tencent_report_of_the_documented_example_is_delivered() -> None:
    gateway = TencentSmsGateway("AKIDtest", "k", "1400006666", "测试社保")
    [report] = gateway.parse_reports(ReportRequest("POST", {}, TENCENT_REPORT.encode(), "application/json"))
    assert report.state is DeliveryState.DELIVERED and report.message_id == "xxxxxxx"
    assert report.reference is None and report.error_code is None and report.detail == "用户短信送达成功"
    failed = json.loads(TENCENT_REPORT)
    failed[0].update(report_status="FAIL", errmsg="MK:0001", description="用户短信接收失败")
    [report] = gateway.parse_reports(ReportRequest("POST", {}, json.dumps(failed).encode()))
    assert report.state is DeliveryState.FAILED and report.error_code == "MK:0001"


@pytest.mark.parametrize("body", [b"", b"{}", b'[{"report_status": "SUCCESS"}]',
                                  b'[{"sid": "1", "report_status": "DELIVERED"}]', b'["x"]'])
def test_tencent_malformed_report_is_refused(body: bytes) -> None:
    with pytest.raises(ReportError):
        TencentSmsGateway("AKIDtest", "k", "1400006666", "测试社保").parse_reports(ReportRequest("POST", {}, body))


# -- a shipped item, end to end ---------------------------------------------------------------------------------

async def test_a_shipped_item_goes_out_as_its_approved_template_through_both_providers() -> None:
    item = load_knowledge_base().get("card-loss-report")
    shipped = load_templates()
    data = {"limits": {"aliyun": 35, "tencent": None},
            "variables": [{"name": v.name, "source": v.source} for v in shipped.variables],
            "items": {"card-loss-report": {"aliyun": "SMS_000000001", "tencent": "1234567"}}}
    templates = parse_templates(data)
    with FakeAliyunSmsServer() as ali, FakeTencentSmsServer() as ten:
        code, variables = template_message(item, "aliyun", "0773-0000000", templates=templates)
        gateway = aliyun_gateway(ali)
        await gateway.send(message(code=code, variables=variables))
        await gateway.close()
        code, variables = template_message(item, "tencent", "0773-0000000", templates=templates)
        other = tencent_gateway(ten)
        await other.send(message(code=code, variables=variables))
        await other.close()
    assert json.loads(ali.sends[0]["TemplateParam"]) == dict(VARIABLES)
    assert ten.sends[0]["TemplateParamSet"] == [value for _, value in VARIABLES]


# -- through the hotline: the outbox, the template map, the report push ------------------------------------------------

def test_the_hotline_sends_an_items_approved_template_through_aliyun_and_takes_its_report_push(
        tmp_path: Path, settings) -> None:
    import time

    import yaml
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from telephony.settings import SmsGatewayChoice
    from telephony.web.app import create_app

    shipped = yaml.safe_load(DEFAULT_TEMPLATES_FILE.read_text(encoding="utf-8"))
    shipped["items"]["card-loss-report"]["aliyun"] = "SMS_000000001"
    shipped["ticket"]["aliyun"] = "SMS_000000002"
    templates_file = tmp_path / "sms_templates.yaml"
    templates_file.write_text(yaml.safe_dump(shipped, allow_unicode=True), encoding="utf-8")
    admin = {"authorization": "Bearer admin-token-0123456789"}
    with FakeAliyunSmsServer() as ali:
        configured = settings.model_copy(update={
            "admin_token": SecretStr("admin-token-0123456789"), "sms_gateway": SmsGatewayChoice.ALIYUN,
            "sms_aliyun_access_key_id": "testId", "sms_aliyun_access_key_secret": SecretStr("testSecret"),
            "sms_aliyun_endpoint": ali.endpoint, "sms_templates_file": templates_file,
            "sms_receipt_token": SecretStr("receipt-token-0123456789")})
        with TestClient(create_app(configured, voice=False)) as client:
            created = client.post("/api/sms", headers=admin, json={"to": "13800000000", "item": "card-loss-report"})
            assert created.status_code == 202, created.text
            message_id = created.json()["id"]
            deadline = time.monotonic() + 10
            while client.get(f"/api/sms/{message_id}", headers=admin).json()["state"] != "submitted":
                assert time.monotonic() < deadline, client.get(f"/api/sms/{message_id}", headers=admin).json()
                time.sleep(0.05)  # the worker runs in the app's loop
            [sent] = ali.sends
            assert sent["TemplateCode"] == "SMS_000000001" and sent["OutId"] == created.json()["reference"]
            variables = json.loads(sent["TemplateParam"])
            assert variables["title"] == load_knowledge_base().get("card-loss-report").title
            assert variables["phone"] == "0773-0000000"
            # An item without an approved code is refused at once with the reason, never sent as free text.
            missing = client.post("/api/sms", headers=admin, json={"to": "13800000000", "item": "unemployment-benefit-application"})
            assert missing.status_code == 422 and "aliyun" in missing.json()["error"]
            push = [{"phone_number": "13800000000", "send_time": "2026-12-05 10:00:00",
                     "report_time": "2026-12-05 10:00:05", "success": True, "err_code": "DELIVERED",
                     "err_msg": "用户接收成功", "sms_size": "1", "biz_id": sent["BizId"], "out_id": sent["OutId"]}]
            answered = client.post("/api/sms/receipts/aliyun", params={"token": "receipt-token-0123456789"},
                                   json=push)
            assert answered.status_code == 200 and answered.json()["code"] == 0
            assert answered.json()["outcomes"] == ["applied"]
            assert client.get(f"/api/sms/{message_id}", headers=admin).json()["state"] == "delivered"
