"""SMS for staff (`POST /api/sms`, listing, resend; admin token) and the gateways' delivery-report callbacks."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from telephony.errors import StorageError
from telephony.sms.base import HttpReportParser, ReportError, ReportRequest, SmsError
from telephony.sms.compose import InvalidNumberError
from telephony.sms.outbox import SmsRefused, UnknownSmsError, message_summary
from telephony.sms.service import UnknownItemError
from telephony.store.models import SmsStatus
from telephony.web.deps import AdminDep, HotlineDep, RowId
from telephony.web.errors import error_response

router = APIRouter(tags=["sms"])
log = logging.getLogger(__name__)


class SendSmsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=32, description="Mainland mobile number (+86 / 0086 prefixes accepted)")
    item: str = Field(min_length=1, max_length=128, description="KB item whose full guide is sent")
    call_id: str | None = Field(default=None, max_length=32, description="The call this belongs to, if any")
    key: str | None = Field(default=None, min_length=1, max_length=120,
                            description="Idempotency key: the same key never sends twice (a fresh one when unset)")


@router.post("/api/sms", dependencies=[AdminDep], status_code=202)
async def send_sms(body: SendSmsRequest, hotline: HotlineDep) -> JSONResponse:
    """Queue an item's guide for a number; the server's worker sends it through the configured gateway."""
    reference = f"staff:{body.key}" if body.key else f"staff:{uuid.uuid4().hex}"
    try:
        enqueued = await hotline.sms.send_guide(body.to, body.item, reference, call_id=body.call_id)
    except InvalidNumberError as exc:
        return error_response(422, str(exc))
    except UnknownItemError as exc:
        return error_response(404, str(exc))
    except SmsRefused as exc:
        return error_response(429, str(exc), {"reason": exc.reason})
    except SmsError as exc:
        return error_response(422, str(exc))
    except StorageError as exc:
        return error_response(503, str(exc))
    return JSONResponse(status_code=202 if enqueued.created else 200,
                        content=message_summary(enqueued.message) | {"created": enqueued.created})


@router.get("/api/sms", dependencies=[AdminDep])
async def list_sms(hotline: HotlineDep, state: SmsStatus | None = None, call_id: str | None = None,
                   limit: int = Query(50, ge=1, le=500)) -> dict:
    messages = await asyncio.to_thread(hotline.sms.outbox.listing, state, limit, call_id)
    counts = await asyncio.to_thread(hotline.sms.outbox.counts)
    return {"gateway": hotline.sms.gateway_name, "counts": counts,
            "messages": [message_summary(message, body=False) for message in messages]}


@router.get("/api/sms/{message_id}", dependencies=[AdminDep])
async def get_sms(message_id: RowId, hotline: HotlineDep) -> JSONResponse:
    message = await asyncio.to_thread(hotline.sms.outbox.get, message_id)
    if message is None:
        return error_response(404, f"no SMS message {message_id}")
    return JSONResponse(message_summary(message))


@router.post("/api/sms/{message_id}/resend", dependencies=[AdminDep])
async def resend_sms(message_id: RowId, hotline: HotlineDep) -> JSONResponse:
    try:
        message = await hotline.sms.resend(message_id)
    except SmsRefused as exc:
        return error_response(429, str(exc), {"reason": exc.reason})
    except UnknownSmsError as exc:
        return error_response(404, str(exc))
    except StorageError as exc:
        return error_response(503, str(exc))
    return JSONResponse(message_summary(message))


# Kannel calls its dlr-url with GET, Aliyun and Tencent push with POST: two routes on one handler, each with its own
# operation id (one route with both methods gives FastAPI's duplicate operation-id warning and an unordered schema).
@router.get("/api/sms/receipts/{gateway}", operation_id="sms_delivery_reports_get")
@router.post("/api/sms/receipts/{gateway}", operation_id="sms_delivery_reports_post")
async def delivery_reports(gateway: str, request: Request, hotline: HotlineDep) -> JSONResponse:
    """Delivery-report callbacks (Kannel dlr-url, Aliyun and Tencent pushes), authenticated by the shared token."""
    settings = hotline.settings
    expected = settings.sms_receipt_token
    given = request.query_params.get("token") or request.headers.get("x-hotline-token", "")
    if expected is None:
        return error_response(403, "delivery reports are off: set HOTLINE_SMS_RECEIPT_TOKEN")
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        log.warning("sms delivery report with a wrong token from %s", request.client.host if request.client else "?")
        return error_response(403, "wrong token")
    parser = hotline.sms.dispatcher.gateway
    if gateway != parser.name or not isinstance(parser, HttpReportParser):
        return error_response(404, f"gateway {gateway!r} takes no HTTP delivery reports here")
    query = {key: value for key, value in request.query_params.items() if key != "token"}
    report_request = ReportRequest(request.method, query, await request.body(),
                                   request.headers.get("content-type", ""))
    try:
        reports = parser.parse_reports(report_request)
    except ReportError as exc:
        log.warning("sms delivery report from %s not readable: %s", gateway, exc)
        return error_response(400, str(exc))
    outcomes = [await hotline.sms.dispatcher.on_report(report) for report in reports]
    # Aliyun reads {"code": 0}, Tencent {"result": 0}; Kannel any 2xx.
    return JSONResponse({"code": 0, "msg": "成功", "result": 0, "errmsg": "OK", "outcomes": outcomes})
