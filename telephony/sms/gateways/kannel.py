"""Kannel gateway: smsbox's HTTP sendsms interface (`/cgi-bin/sendsms`), and the delivery reports Kannel fetches
from the `dlr-url` given with each message.

The text goes as UTF-8 with coding=2: Kannel sends it as UCS-2, a long one as UDH-concatenated parts of 67 characters
(its sendsms-user needs `concatenation = true` and a `max-messages` of at least 8 for a 500-character guide).
Kannel returns no message id, so the outbox reference travels in the dlr-url and names the message in its reports.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

import httpx

from telephony.sms.base import (
    DeliveryReport,
    DeliveryState,
    OutgoingSms,
    ReportError,
    ReportRequest,
    ReportSink,
    SmsError,
    SmsReceipt,
)
from telephony.sms.compose import segment_count

log = logging.getLogger(__name__)

ACCEPTED = ("0:", "3:")  # "0: Accepted for delivery", "3: Queued for later delivery"
DLR_MASK = 31  # every report: delivered, failed, buffered, SMSC ack, SMSC reject
# Kannel's DLR types (the %d of the dlr-url), in the outbox's terms.
DLR_TYPES = {
    1: (DeliveryState.DELIVERED, "delivered to the phone"),
    2: (DeliveryState.FAILED, "not delivered to the phone"),
    4: (DeliveryState.SUBMITTED, "buffered by the SMSC"),
    8: (DeliveryState.SUBMITTED, "accepted by the SMSC"),
    16: (DeliveryState.FAILED, "rejected by the SMSC"),
}
# Appended to the report URL; Kannel fills them in when it calls it.
DLR_PLACEHOLDERS = "type=%d&status=%A&smsc=%i&ts=%T"
_RECEIPT_ERROR = re.compile(r"\berr:(\w+)")
_NACK = re.compile(r"^NACK/([^/]+)")


def dlr_url(report_url: str, reference: str) -> str:
    """The dlr-url for one message: `report_url` (which may carry a query, a token say) with the reference and
    Kannel's placeholders. Kannel expands `%x` escapes in it, keeps unknown ones and turns `%%` into `%`, so every
    `%` of the URL's own escapes and of the encoded reference is doubled."""
    separator = "" if report_url.endswith(("?", "&")) else "&" if "?" in report_url else "?"
    fixed = f"{report_url}{separator}ref={quote(reference, safe='')}"
    return fixed.replace("%", "%%") + "&" + DLR_PLACEHOLDERS


class KannelGateway:
    """Kannel's smsbox: `sendsms_url` is its sendsms interface (`http://host:13013/cgi-bin/sendsms`), `username` and
    `password` a sendsms-user; `sender` the default `from` (an `OutgoingSms.sender` overrides it)."""

    uses_templates = False

    def __init__(self, sendsms_url: str, username: str, password: str, *, sender: str | None = None,
                 timeout_s: float = 10, name: str = "kannel") -> None:
        self.name = name
        self._sendsms_url = sendsms_url
        self._username = username
        self._password = password
        self._sender = sender
        self._timeout_s = float(timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def start(self, reports: ReportSink) -> None:
        """Opens the HTTP client; reports come to `parse_reports` through the web route, so `reports` is unused."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        self._closed = False

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        if not message.body:
            raise SmsError("empty message", retryable=False)
        params = {
            "username": self._username, "password": self._password, "to": message.to_number,
            "text": message.body, "charset": "UTF-8", "coding": "2", "dlr-mask": str(DLR_MASK),
        }
        sender = message.sender or self._sender
        if sender:
            params["from"] = sender
        if message.report_url:
            params["dlr-url"] = dlr_url(message.report_url, message.reference)
        if self._client is None:
            await self.start(_no_reports)
        assert self._client is not None
        try:
            response = await self._client.get(self._sendsms_url, params=params)
        except (httpx.ConnectTimeout, httpx.PoolTimeout):
            raise SmsError(f"cannot connect to Kannel {self.name} within {self._timeout_s:g} s",
                           retryable=True) from None
        except httpx.TimeoutException:
            raise SmsError(f"Kannel {self.name} did not answer within {self._timeout_s:g} s after the request was "
                           "sent; it may have been accepted, so it is not resent automatically", retryable=True,
                           outcome_unknown=True) from None
        except httpx.HTTPError as error:  # the URL (and its password) stays out of the message
            raise SmsError(f"cannot reach Kannel {self.name}: {type(error).__name__}: {error}",
                           retryable=True) from None
        answer = response.text.strip()
        status = response.status_code
        if status in (200, 202) and answer.startswith(ACCEPTED):
            return SmsReceipt(gateway=self.name, message_id=message.reference, state=DeliveryState.SUBMITTED,
                              segments=segment_count(message.body))
        if status == 403:
            raise SmsError(f"Kannel {self.name} refused the credentials: {answer[:200]}", retryable=False,
                           code="403")
        if status == 400:
            raise SmsError(f"Kannel {self.name} rejected the request: {answer[:200]}", retryable=False, code="400")
        if status >= 500:
            raise SmsError(f"Kannel {self.name} failed (HTTP {status}): {answer[:200]}", retryable=True,
                           code=str(status))
        raise SmsError(f"unexpected answer from Kannel {self.name} (HTTP {status}): {answer[:200]!r}",
                       retryable=True, code=str(status))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._closed = True

    def status(self) -> str:
        if self._client is not None:
            return "ready"
        return "closed" if self._closed else "not started"

    def parse_reports(self, request: ReportRequest) -> list[DeliveryReport]:
        """A dlr-url call: `ref` (the outbox reference), `type` (Kannel's DLR type), `status` (the SMSC's answer or
        receipt text), `smsc`, `ts`."""
        query = request.query
        reference = (query.get("ref") or "").strip()
        raw_type = (query.get("type") or "").strip()
        if not reference:
            raise ReportError("Kannel delivery report without ref")
        try:
            state, meaning = DLR_TYPES[int(raw_type)]
        except (ValueError, KeyError):
            raise ReportError(f"Kannel delivery report with an unknown type {raw_type[:20]!r}") from None
        answer = (query.get("status") or "").strip()
        error_code = _error_code(answer) if state is DeliveryState.FAILED else None
        smsc = (query.get("smsc") or "").strip()
        detail = f"DLR {raw_type} ({meaning})" + (f" via {smsc}" if smsc else "") + (f": {answer}" if answer else "")
        return [DeliveryReport(gateway=self.name, message_id=reference, state=state, reference=reference,
                               error_code=error_code, detail=detail[:300])]


def _error_code(answer: str) -> str | None:
    """The SMSC's error in a failure report: `err:` of a forwarded SMPP receipt, or the status of a `NACK/…`."""
    receipt = _RECEIPT_ERROR.search(answer)
    if receipt and receipt.group(1).strip("0"):
        return receipt.group(1)
    nack = _NACK.match(answer)
    return nack.group(1) if nack else None


async def _no_reports(report: DeliveryReport) -> None:
    log.warning("Kannel gateway: a report was pushed although Kannel's come by HTTP: %s", report)
