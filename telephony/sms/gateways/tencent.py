"""Tencent Cloud SMS: `SendSms` of API version 2021-01-11 signed with TC3-HMAC-SHA256, and the delivery-status
callback. Only approved templates are sent: the SDK app, the signature name, the template ID and its parameters in
the template's order ({1}, {2}, …).

Signing: 签名方法 v3, published alike under every product's API docs, e.g.
https://cloud.tencent.com/document/api/362/4208 (its worked example is the test vector in tests/test_sms_cloud.py).
SendSms: https://cloud.tencent.com/document/api/382/55981. Errors: https://cloud.tencent.com/document/api/382/52075
and https://cloud.tencent.com/document/api/382/59177. Callback: https://cloud.tencent.com/document/product/382/5807
and https://www.tencentcloud.com/document/product/382/43547 (短信下发状态通知: `sid` is the SerialNo; the body has no
session context, so reports carry no outbox reference)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import ClassVar

import httpx

from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    OutgoingSms,
    ReportError,
    ReportRequest,
    SmsError,
    SmsReceipt,
)
from telephony.sms.compose import mask
from telephony.sms.gateways.cloud import CloudSmsGateway

API_VERSION = "2021-01-11"
SERVICE = "sms"
ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
DEFAULT_ENDPOINT = "https://sms.tencentcloudapi.com"

# Codes the outbox should retry: Tencent's internal errors and timeouts, frequency and daily limits (they reset),
# API rate limits, and an empty package/balance. The balance is a deliberate choice, as for Aliyun: buying a package
# or paying arrears is routine operations work and changes nothing in the message, so a guide queued meanwhile goes
# out afterwards; the outbox's bounded attempts and queue TTL keep it from retrying forever.
RETRYABLE_CODES = frozenset({
    "FailedOperation.InsufficientBalanceInSmsPackage",
    "UnauthorizedOperation.SerivceSuspendDueToArrears",  # sic, as the SDKs spell it
    "UnauthorizedOperation.ServiceSuspendDueToArrears",
    "LimitExceeded.DeliveryFrequencyLimit",
    "LimitExceeded.PhoneNumberDailyLimit",
    "LimitExceeded.PhoneNumberOneHourLimit",
    "LimitExceeded.PhoneNumberThirtySecondLimit",
    "LimitExceeded.PhoneNumberSameContentDailyLimit",
    "LimitExceeded.DailyLimit",
    "LimitExceeded.AppDailyLimit",
    "LimitExceeded.AppMainlandChinaDailyLimit",
    "LimitExceeded.AppGlobalDailyLimit",
    "LimitExceeded.AppCountryOrRegionDailyLimit",
    "RequestLimitExceeded",
    "ResourceUnavailable",
    "InternalError",
})
# Codes that are limits but not frequency limits: the request is malformed or barred, retrying changes nothing.
FINAL_LIMITS = frozenset({
    "LimitExceeded.PhoneNumberCountLimit",  # more than 200 numbers in one request
    "LimitExceeded.AppCountryOrRegionInBlacklist",
})
FINAL_PREFIXES = ("AuthFailure", "InvalidParameter", "MissingParameter", "UnauthorizedOperation",
                  "UnsupportedOperation", "FailedOperation", "InvalidAction", "NoSuchVersion", "ActionOffline")
ACTION_HINTS = {
    "FailedOperation.InsufficientBalanceInSmsPackage": "the SMS package is used up: buy one; queued messages are "
                                                       "retried",
    "FailedOperation.TemplateIncorrectOrUnapproved": "the template ID is unknown or not approved, or the parameters "
                                                     "do not match it: check kb/sms_templates.yaml",
    "FailedOperation.SignatureIncorrectOrUnapproved": "the signature name is not approved: check the configured name",
    "AuthFailure.SignatureFailure": "the SecretKey is wrong",
    "AuthFailure.SecretIdNotFound": "the SecretId is wrong or deleted",
    "AuthFailure.SignatureExpire": "this machine's clock is more than 5 minutes off",
    "UnauthorizedOperation.SmsSdkAppIdVerifyFail": "the SmsSdkAppId does not belong to this account",
}


def is_retryable(code: str) -> bool:
    """Whether the outbox should try a message again after Tencent answered `code` (for the whole request or for
    the number). Unknown codes under a caller-side prefix (AuthFailure, InvalidParameter*, FailedOperation, …) are
    final; anything else unknown is retried, since a bounded retry costs little and a final error loses the guide."""
    if code in RETRYABLE_CODES or code.startswith(("InternalError", "RequestLimitExceeded")):
        return True
    if code in FINAL_LIMITS:
        return False
    if code.startswith("LimitExceeded"):
        return True
    return not code.startswith(FINAL_PREFIXES)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def canonical_request(method: str, headers: dict[str, str], signed_headers: Sequence[str], payload: bytes,
                      query: str = "") -> str:
    """Method, "/", the query string, the signed headers as lowercase `key:value` lines (values lowercased and
    trimmed), their names, and the payload's SHA-256."""
    lower = {key.lower(): value.strip().lower() for key, value in headers.items()}
    canonical_headers = "".join(f"{name}:{lower[name]}\n" for name in signed_headers)
    return "\n".join([method.upper(), "/", query, canonical_headers, ";".join(signed_headers), _sha256_hex(payload)])


def credential_date(timestamp: int) -> str:
    """The credential scope's date: the UTC date of the timestamp (not the local one)."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d")


def string_to_sign(timestamp: int, service: str, canonical: str) -> str:
    scope = f"{credential_date(timestamp)}/{service}/tc3_request"
    return "\n".join([ALGORITHM, str(timestamp), scope, _sha256_hex(canonical.encode("utf-8"))])


def signature(secret_key: str, timestamp: int, service: str, canonical: str) -> str:
    """HexEncode(HMAC_SHA256(SecretSigning, StringToSign)) with SecretSigning derived from "TC3" + key, the date,
    the service and "tc3_request"."""
    secret_date = _hmac_sha256(f"TC3{secret_key}".encode(), credential_date(timestamp))
    secret_service = _hmac_sha256(secret_date, service)
    secret_signing = _hmac_sha256(secret_service, "tc3_request")
    return hmac.new(secret_signing, string_to_sign(timestamp, service, canonical).encode("utf-8"),
                    hashlib.sha256).hexdigest()


def authorization(secret_id: str, secret_key: str, timestamp: int, service: str, canonical: str,
                  signed_headers: Sequence[str]) -> str:
    scope = f"{credential_date(timestamp)}/{service}/tc3_request"
    return (f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={';'.join(signed_headers)}, "
            f"Signature={signature(secret_key, timestamp, service, canonical)}")


class TencentSmsGateway(CloudSmsGateway):
    """Sends approved templates through Tencent Cloud SMS; `parse_reports` reads its status callbacks."""

    product = "Tencent SendSms"
    SIGNED_HEADERS: ClassVar[tuple[str, ...]] = ("content-type", "host", "x-tc-action")

    def __init__(self, secret_id: str, secret_key: str, sdk_app_id: str, sign_name: str, *,
                 region: str = "ap-guangzhou", endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 10,
                 name: str = "tencent") -> None:
        if not secret_id or not secret_key:
            raise ValueError("Tencent Cloud SMS needs a SecretId and SecretKey")
        if not sdk_app_id:
            raise ValueError("Tencent Cloud SMS needs the SmsSdkAppId of the application")
        if not sign_name or any(mark in sign_name for mark in "【】"):
            raise ValueError("the Tencent sign name is the approved name without 【】")
        super().__init__(name, endpoint, timeout_s)
        self.secret_id = secret_id
        self._secret_key = secret_key
        self.sdk_app_id = str(sdk_app_id)
        self.sign_name = sign_name
        self.region = region
        self.host = httpx.URL(self.endpoint).netloc.decode("ascii")

    def status(self) -> str:
        return f"{super().status()} ({self.region})" if not self._last_error else super().status()

    def payload(self, message: OutgoingSms) -> bytes:
        body = {
            "PhoneNumberSet": [f"+86{message.to_number}"],
            "SmsSdkAppId": self.sdk_app_id,
            "SignName": self.sign_name,
            "TemplateId": message.template_code or "",
            "TemplateParamSet": [value for _, value in message.template_variables],
            "SessionContext": message.reference,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def signed_headers(self, payload: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The request headers of one SendSms call, Authorization included."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": CONTENT_TYPE, "Host": self.host, "X-TC-Action": "SendSms"}
        canonical = canonical_request("POST", headers, self.SIGNED_HEADERS, payload)
        headers.update({
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": API_VERSION,
            "X-TC-Region": self.region,
            "Authorization": authorization(self.secret_id, self._secret_key, timestamp, SERVICE, canonical,
                                           self.SIGNED_HEADERS),
        })
        return headers

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        if not message.template_code:
            raise SmsError(f"{self.name}: message {message.reference} has no template ID; Tencent Cloud sends only "
                           "approved templates (fill the item's code in kb/sms_templates.yaml)", retryable=False)
        payload = self.payload(message)
        who = f"{self.name} SendSms to {mask(message.to_number)}"
        response, answer = await self._post(who, content=payload, headers=self.signed_headers(payload))
        body = answer.get("Response") if isinstance(answer, dict) else None
        if not isinstance(body, dict):
            raise self._unreadable(who, response)
        error = body.get("Error")
        if isinstance(error, dict) and isinstance(error.get("Code"), str):
            raise self._refused(who, error["Code"], str(error.get("Message", "")), response.status_code,
                                retryable=is_retryable(error["Code"]), hint=ACTION_HINTS.get(error["Code"]))
        statuses = body.get("SendStatusSet")
        status = statuses[0] if isinstance(statuses, list) and statuses else None
        if not isinstance(status, dict) or not isinstance(status.get("Code"), str):
            raise self._failed(f"{who}: answer without a send status ({response.text[:120]!r})", retryable=True)
        if status["Code"] != "Ok":
            raise self._refused(who, status["Code"], str(status.get("Message", "")), response.status_code,
                                retryable=is_retryable(status["Code"]), hint=ACTION_HINTS.get(status["Code"]))
        serial = status.get("SerialNo")
        if not isinstance(serial, str) or not serial:
            # Accepted, so not retried (a retry could deliver twice); staff can look it up by RequestId.
            raise self._failed(f"{who}: accepted without a SerialNo (RequestId {body.get('RequestId')})",
                               retryable=False, code="Ok")
        fee = status.get("Fee")
        self._last_error = None
        return SmsReceipt(self.name, serial, DeliveryState.SUBMITTED,
                          segments=fee if isinstance(fee, int) and fee > 0 else 1)

    def parse_reports(self, request: ReportRequest) -> list[DeliveryReport]:
        """The status callback: a JSON array of {user_receive_time, nationcode, mobile, report_status
        (SUCCESS/FAIL), errmsg, description, sid}; one callback may carry several reports."""
        reports = []
        for index, entry in enumerate(self._report_entries(request)):
            sid, status = entry.get("sid"), entry.get("report_status")
            if not isinstance(sid, str) or not sid:
                raise ReportError(f"{self.name} report #{index}: no sid")
            if status not in ("SUCCESS", "FAIL"):
                raise ReportError(f"{self.name} report #{index}: report_status is {status!r}, not SUCCESS/FAIL")
            errmsg = entry.get("errmsg")
            reports.append(DeliveryReport(
                gateway=self.name,
                message_id=sid,
                state=DeliveryState.DELIVERED if status == "SUCCESS" else DeliveryState.FAILED,
                error_code=errmsg if status == "FAIL" and isinstance(errmsg, str) and errmsg else None,
                detail=str(entry.get("description") or ""),
            ))
        return reports
