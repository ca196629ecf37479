"""What the cloud SMS gateways (Aliyun, Tencent) share: one httpx client opened on start or first send, a POST whose
transport failures map to retryable or unknown-outcome errors, and the last error for /readyz."""

from __future__ import annotations

import json
from typing import Any

import httpx

from telephony.sms.base import ReportError, ReportRequest, ReportSink, SmsError


class CloudSmsGateway:
    name: str
    uses_templates = True
    product = "SendSms"  # how status() names the API

    def __init__(self, name: str, endpoint: str, timeout_s: float) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._last_error: str | None = None
        self._closed = False

    async def start(self, reports: ReportSink) -> None:
        # Reports come as HTTP pushes (parse_reports), not on a connection; nothing to reach until the first send.
        self._client_or_new()

    def _client_or_new(self) -> httpx.AsyncClient:
        self._closed = False
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s))
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._closed = True
        if client is not None:
            await client.aclose()

    def status(self) -> str:
        state = "closed" if self._closed else "ready" if self._client is not None else "not started"
        if self._last_error:
            return f"{state}: last send failed: {self._last_error}"
        return f"{state}: {self.product} at {self.endpoint}"

    async def _post(self, who: str, **request: Any) -> tuple[httpx.Response, Any]:
        """POST to the endpoint; returns the response and its JSON (None when it is not JSON)."""
        try:
            response = await self._client_or_new().post(self.endpoint, **request)
        except (httpx.ConnectTimeout, httpx.PoolTimeout):
            raise self._failed(f"{who}: cannot connect within {self.timeout_s:g} s", retryable=True) from None
        except httpx.TimeoutException:
            error = self._failed(f"{who}: no answer within {self.timeout_s:g} s after sending; it may have been "
                                 "accepted, so it is not resent automatically", retryable=True)
            error.outcome_unknown = True
            raise error from None
        except httpx.TransportError as exc:
            raise self._failed(f"{who}: cannot reach {self.endpoint} ({type(exc).__name__})", retryable=True) from None
        try:
            return response, response.json()
        except ValueError:
            return response, None

    def _unreadable(self, who: str, response: httpx.Response) -> SmsError:
        kind = f"HTTP {response.status_code}" if response.status_code >= 400 else "an unreadable answer"
        return self._failed(f"{who}: {kind} ({response.text[:120]!r})", retryable=True)

    def _failed(self, text: str, *, retryable: bool, code: str | None = None) -> SmsError:
        self._last_error = text
        return SmsError(text, retryable=retryable, code=code)

    def _refused(self, who: str, code: str, text: str, http_status: int, *, retryable: bool,
                 hint: str | None) -> SmsError:
        http = f" (HTTP {http_status})" if http_status >= 400 else ""
        return self._failed(f"{who}: {code}{http}: {text}" + (f" ({hint})" if hint else ""),
                            retryable=retryable or http_status >= 500, code=code)

    def _report_entries(self, request: ReportRequest) -> list[dict]:
        """A report push's JSON array of objects; `ReportError` for anything else."""
        try:
            data = json.loads(request.body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # also bytes not UTF-8 and nesting past the recursion limit
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise ReportError(f"{self.name} report: body is not JSON ({reason})") from None
        if not isinstance(data, list):
            raise ReportError(f"{self.name} report: expected a JSON array, got {type(data).__name__}")
        for index, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise ReportError(f"{self.name} report #{index}: not an object")
        return data
