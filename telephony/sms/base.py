"""The seam every SMS gateway implements, and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from telephony.errors import TelephonyError


class SmsError(TelephonyError):
    """A gateway refused or could not take a message; `retryable` says whether the outbox should try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class OutgoingSms:
    """One message as the outbox hands it to a gateway."""

    idempotency_key: str  # the same key is never delivered twice (call id + item id)
    to_number: str
    body: str  # the composed text, signature included
    template_code: str | None = None  # for template-only gateways (Aliyun, Tencent Cloud)
    template_variables: tuple[tuple[str, str], ...] = ()


class DeliveryState(StrEnum):
    SUBMITTED = "submitted"  # the gateway accepted it; a delivery report may follow
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class SmsReceipt:
    gateway: str
    message_id: str  # the gateway's id, matched against later delivery reports
    state: DeliveryState
    segments: int = 1


class SmsGateway(Protocol):
    name: str

    async def send(self, message: OutgoingSms) -> SmsReceipt:
        """Submit one message; raises `SmsError` when it was not accepted."""
