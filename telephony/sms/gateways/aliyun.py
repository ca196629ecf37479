"""Aliyun SMS (dysmsapi): `SendSms` of API version 2017-05-25 as a signed RPC request, and the SmsReport HTTP push
of delivery reports. Only approved templates are sent: the signature name, the template code and its variables.

Signing is Aliyun's RPC signature version 1.0 (HMAC-SHA1), as documented at
https://help.aliyun.com/document_detail/101343.htm (SMS «HTTP协议及签名»; its worked example is the test vector in
tests/test_sms_cloud.py) and https://help.aliyun.com/en/document_detail/145075.html (RPC signature mechanism).
Error codes: https://help.aliyun.com/document_detail/101346.html (SendSms API errors). Reports:
https://help.aliyun.com/document_detail/101867.html (SmsReport, HTTP batch push)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from urllib.parse import quote

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

API_VERSION = "2017-05-25"
REGION_ID = "cn-hangzhou"  # the region the SMS API documents for SendSms
DEFAULT_ENDPOINT = "https://dysmsapi.aliyuncs.com"

# Codes the outbox should retry: flow control and quotas that reset by themselves (per minute/hour/day, the console's
# daily/monthly caps), the platform's own failures, and an empty balance. The balance is a deliberate choice: topping
# up is routine operations work and changes nothing in the message, so a guide queued meanwhile goes out once the
# account is paid; a final error would silently drop every guide sent while the balance was out. The outbox's
# bounded attempts and queue TTL keep this from retrying forever, and the error text says what staff must do.
RETRYABLE_CODES = frozenset({
    "isv.BUSINESS_LIMIT_CONTROL",  # per-number flow control (e.g. 1/min, 5/h, 10/day for one signature)
    "isv.DAY_LIMIT_CONTROL",  # the daily total set in the console
    "isv.MONTH_LIMIT_CONTROL",  # the monthly total set in the console
    "isv.AMOUNT_NOT_ENOUGH",  # balance too low (see above)
    "isv.OUT_OF_SERVICE",  # service stopped for arrears: as the balance
    "isp.SYSTEM_ERROR",
    "isp.GATEWAY_ERROR",
    "isp.UNKNOWN",
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "ServiceUnavailable",
    "InternalError",
    "SignatureNonceUsed",  # a retry signs with a fresh nonce
})
# Codes that say the request itself, the credentials, the signature name or the template are wrong: sending the same
# message again fails the same way until a person changes something.
FINAL_CODES = frozenset({
    "isv.MOBILE_NUMBER_ILLEGAL",
    "isv.MOBILE_COUNT_OVER_LIMIT",
    "isv.TEMPLATE_MISSING_PARAMETERS",
    "isv.TEMPLATE_PARAMS_ILLEGAL",
    "isv.SMS_TEMPLATE_ILLEGAL",
    "isv.SMS_SIGNATURE_ILLEGAL",
    "isv.SMS_SIGN_ILLEGAL",
    "isv.SIGN_STATE_ILLEGAL",
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL",
    "isv.SMS_CONTENT_ILLEGAL",
    "isv.BLACK_KEY_CONTROL_LIMIT",
    "isv.PARAM_LENGTH_LIMIT",
    "isv.PARAM_NOT_SUPPORT_URL",
    "isv.INVALID_PARAMETERS",
    "isv.INVALID_JSON_PARAM",
    "isv.EXTEND_CODE_ERROR",
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED",
    "isv.DENY_IP_RANGE",
    "isv.PRODUCT_UN_SUBSCRIPT",
    "isv.PRODUCT_UNSUBSCRIBE",
    "isv.ACCOUNT_NOT_EXISTS",
    "isv.ACCOUNT_ABNORMAL",
    "isp.RAM_PERMISSION_DENY",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidAccessKeyId.NotFound",
    "InvalidAccessKeyId.Inactive",
    "InvalidTimeStamp.Expired",  # this machine's clock is off by more than Aliyun accepts
    "InvalidTimeStamp.Format",
    "MissingParameter",
    "MissingPhoneNumbers",
    "MissingSignName",
    "MissingTemplateCode",
    "InvalidVersion",
    "InvalidAction.NotFound",
    "Forbidden.RAM",
})
# What staff should do, for the codes whose fix is on the bureau's side (shown in the outbox's error text).
ACTION_HINTS = {
    "isv.AMOUNT_NOT_ENOUGH": "the Aliyun account balance is too low: top it up; queued messages are retried",
    "isv.OUT_OF_SERVICE": "the Aliyun SMS service is stopped for arrears: pay the account; queued messages are retried",
    "isv.DAY_LIMIT_CONTROL": "the daily total set in the Aliyun console is reached",
    "isv.MONTH_LIMIT_CONTROL": "the monthly total set in the Aliyun console is reached",
    "isv.SMS_TEMPLATE_ILLEGAL": "the template code is unknown or not approved: check kb/sms_templates.yaml",
    "isv.TEMPLATE_MISSING_PARAMETERS": "the template needs variables the message does not carry: check "
                                       "kb/sms_templates.yaml against the approved template",
    "isv.SMS_SIGNATURE_ILLEGAL": "the signature name is not approved: check the configured sign name",
    "SignatureDoesNotMatch": "the AccessKey secret is wrong",
    "InvalidAccessKeyId.NotFound": "the AccessKey ID is wrong or deleted",
}


def is_retryable(code: str) -> bool:
    """Whether the outbox should try a message again after Aliyun answered `code`. Unknown codes: `isv.*` (the
    caller's side in Aliyun's naming) are final, since another identical request would be refused alike; everything
    else (`isp.*`, the platform's side, and codes Aliyun may add) is retried, because a bounded retry costs little
    and a final error would lose the guide for good."""
    if code in RETRYABLE_CODES:
        return True
    if code in FINAL_CODES:
        return False
    if code.startswith(("Throttling", "isp.")):
        return True
    return not code.startswith("isv.")


def percent_encode(value: str) -> str:
    """RFC 3986 encoding of UTF-8 as the signature requires: A-Z a-z 0-9 - _ . ~ unencoded, everything else %XY
    (space is %20, never +)."""
    return quote(value, safe="-_.~")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """HTTPMethod & percentEncode("/") & percentEncode(canonicalized query string), parameters sorted by name."""
    canonical = "&".join(f"{percent_encode(key)}={percent_encode(params[key])}" for key in sorted(params))
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical)}"


def sign(method: str, params: Mapping[str, str], access_key_secret: str) -> str:
    """Base64(HMAC-SHA1(secret + "&", StringToSign)); `params` without Signature."""
    digest = hmac.new(f"{access_key_secret}&".encode(), string_to_sign(method, params).encode(), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode("ascii")


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AliyunSmsGateway(CloudSmsGateway):
    """Sends approved templates through Aliyun SMS; `parse_reports` reads its SmsReport pushes."""

    product = "Aliyun SendSms"

    def __init__(self, access_key_id: str, access_key_secret: str, sign_name: str, *,
                 endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 10, name: str = "aliyun") -> None:
        if not access_key_id or not access_key_secret:
            raise ValueError("Aliyun SMS needs an AccessKey ID and secret")
        if not sign_name or any(mark in sign_name for mark in "【】"):
            raise ValueError("the Aliyun sign name is the approved name without 【】")
        super().__init__(name, endpoint, timeout_s)
        self.access_key_id = access_key_id
        self._secret = access_key_secret
        self.sign_name = sign_name

    def request_params(self, message: OutgoingSms, *, nonce: str | None = None,
                       timestamp: str | None = None) -> dict[str, str]:
        """The signed request parameters of one SendSms call (Signature included)."""
        params = {
            "AccessKeyId": self.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "RegionId": REGION_ID,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": nonce or uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": timestamp or _timestamp(),
            "Version": API_VERSION,
            "PhoneNumbers": message.to_number,
            "SignName": self.sign_name,
            "TemplateCode": message.template_code or "",
            "TemplateParam": json.dumps(dict(message.template_variables), ensure_ascii=False, separators=(",", ":")),
            "OutId": message.reference,
        }
        params["Signature"] = sign("POST", params, self._secret)
        return params

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        if not message.template_code:
            raise SmsError(f"{self.name}: message {message.reference} has no template code; Aliyun sends only approved "
                           "templates (fill the item's code in kb/sms_templates.yaml)", retryable=False)
        params = self.request_params(message)
        who = f"{self.name} SendSms to {mask(message.to_number)}"
        response, answer = await self._post(who, data=params)
        if not isinstance(answer, dict) or not isinstance(answer.get("Code"), str):
            raise self._unreadable(who, response)
        code = answer["Code"]
        if code == "OK":
            biz_id = answer.get("BizId")
            if not isinstance(biz_id, str) or not biz_id:
                # Accepted, so not retried (a retry could deliver twice); staff can look it up by RequestId.
                raise self._failed(f"{who}: accepted without a BizId (RequestId {answer.get('RequestId')})",
                                   retryable=False, code=code)
            self._last_error = None
            return SmsReceipt(self.name, biz_id, DeliveryState.SUBMITTED)
        raise self._refused(who, code, str(answer.get("Message", "")), response.status_code,
                            retryable=is_retryable(code), hint=ACTION_HINTS.get(code))

    def parse_reports(self, request: ReportRequest) -> list[DeliveryReport]:
        """SmsReport: a JSON array of {phone_number, send_time, report_time, success, err_code, err_msg, sms_size,
        biz_id, out_id}; one push may carry several reports."""
        reports = []
        for index, entry in enumerate(self._report_entries(request)):
            biz_id, success = entry.get("biz_id"), entry.get("success")
            if not isinstance(biz_id, str) or not biz_id:
                raise ReportError(f"{self.name} report #{index}: no biz_id")
            if isinstance(success, str) and success.lower() in ("true", "false"):
                success = success.lower() == "true"
            if not isinstance(success, bool):
                raise ReportError(f"{self.name} report #{index}: success is {success!r}, not true/false")
            err_code = entry.get("err_code")
            out_id = entry.get("out_id")
            reports.append(DeliveryReport(
                gateway=self.name,
                message_id=biz_id,
                state=DeliveryState.DELIVERED if success else DeliveryState.FAILED,
                reference=out_id if isinstance(out_id, str) and out_id else None,
                error_code=None if success or not isinstance(err_code, str) else err_code,
                detail=str(entry.get("err_msg") or ""),
            ))
        return reports
