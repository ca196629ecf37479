"""The seam every SMS gateway implements, and the values that cross it.

The outbox (`telephony.sms.outbox`) owns persistence, retries, idempotency and rate limits; a gateway only submits
one message and turns the provider's delivery reports into `DeliveryReport`s. Reports arrive either on the gateway's
own connection (SMPP `deliver_sm`: the gateway calls the `ReportSink` given to `start`) or as HTTP callbacks to
`/api/sms/receipts/{gateway}` (Kannel `dlr-url`, Aliyun and Tencent pushes: the route hands the request to
`parse_reports`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from telephony.errors import TelephonyError


class SmsError(TelephonyError):
    """A gateway refused or could not take a message; `retryable` says whether the outbox should try again."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None,
                 outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code  # the provider's own error code, when it gave one
        # The request may have reached the provider (no answer after it was sent): resending could deliver twice, so
        # the outbox does not resend it by itself (at most once) and shows it to staff.
        self.outcome_unknown = outcome_unknown


class ReportError(TelephonyError):
    """A delivery-report callback that cannot be read (malformed body, missing fields)."""


@dataclass(frozen=True)
class OutgoingSms:
    """One message as the outbox hands it to a gateway."""

    reference: str  # the outbox's key for this message (call id + item id); echoed back where the provider allows
    to_number: str  # 11-digit mainland mobile number, no prefix
    body: str  # the composed text, 【signature】 included
    sender: str | None = None  # source address / extension number, when the operator assigned one
    template_code: str | None = None  # for template-only gateways (Aliyun, Tencent Cloud)
    template_variables: tuple[tuple[str, str], ...] = ()  # in the template's order
    # Where the gateway should send its delivery report (Kannel dlr-url); None when reports come another way.
    report_url: str | None = None

    @property
    def idempotency_key(self) -> str:
        return self.reference


class DeliveryState(StrEnum):
    SUBMITTED = "submitted"  # the gateway accepted it; a delivery report may follow
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"  # the network gave up (validity period passed), or no report came in time


@dataclass(frozen=True)
class SmsReceipt:
    """What `send` returns once the gateway accepted the message."""

    gateway: str
    message_id: str  # the gateway's id, matched against later delivery reports
    state: DeliveryState
    segments: int = 1
    # SMPP gives one id per segment and a receipt may name any of them; every id a report may carry is listed here.
    part_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeliveryReport:
    """One delivery report, in the outbox's terms."""

    gateway: str
    message_id: str | None  # the gateway's id (as in `SmsReceipt.message_id` or `part_ids`)
    state: DeliveryState  # DELIVERED, FAILED or EXPIRED (SUBMITTED for an intermediate "accepted by the SMSC")
    reference: str | None = None  # the outbox reference, when the provider echoes it (Kannel dlr-url, Aliyun OutId)
    error_code: str | None = None
    detail: str = ""


ReportSink = Callable[[DeliveryReport], Awaitable[None]]


@dataclass(frozen=True)
class ReportRequest:
    """An HTTP delivery-report callback as the web route received it (already authenticated)."""

    method: str
    query: Mapping[str, str]
    body: bytes
    content_type: str = ""


class SmsGateway(Protocol):
    name: str
    uses_templates: bool  # True: only `template_code` + variables are sent, never free text

    async def start(self, reports: ReportSink) -> None:
        """Connect (bind, open a client); delivery reports that arrive on the gateway's own connection go to
        `reports`. Must not raise when the provider is unreachable: the gateway reconnects by itself and `send`
        raises a retryable `SmsError` meanwhile."""

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        """Submit one message; raises `SmsError` when it was not accepted (retryable or final)."""

    async def close(self) -> None:
        """Unbind and release connections; idempotent."""

    def status(self) -> str:
        """One line for /readyz: "bound", "ready", "reconnecting: …"."""


@runtime_checkable
class HttpReportParser(Protocol):
    """Gateways whose delivery reports come as HTTP callbacks."""

    def parse_reports(self, request: ReportRequest) -> list[DeliveryReport]:
        """The reports in one callback; raises `ReportError` when the request cannot be read."""
