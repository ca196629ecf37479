"""The supervisors' call review over HTTP: the call list page and a call's page, and their JSON API under
/review/api (a staff session with role supervisor or admin; the CSRF token on every POST). Personal data is masked
unless the page asks for it unmasked, and every unmasking, listen and export is written to the audit log.
docs/review.md describes it."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import wave
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from telephony.app import Hotline
from telephony.errors import StorageError
from telephony.review import audit
from telephony.review.privacy import mask_personal
from telephony.review.store import (
    LOCAL_TIME,
    CallDetail,
    CallQuery,
    CallRow,
    ReviewError,
    ReviewStore,
)
from telephony.sms.compose import mask
from telephony.store.models import CallOutcome, QaLabel, UserRole
from telephony.web.deps import HotlineDep, RowId
from telephony.web.staff_auth import Staff, staff_error, staff_member
from telephony.web.staff_pages import staff_page

router = APIRouter(tags=["review"])
REVIEW_ROLES = frozenset({UserRole.SUPERVISOR, UserRole.ADMIN})
NO_REVIEW_ROLE = "您的账号没有质检权限"
ReviewStaff = Annotated[Staff, Depends(staff_member(REVIEW_ROLES, denied=NO_REVIEW_ROLE))]
DATABASE_DOWN = "数据库暂时不可用，请稍后重试"

OUTCOME_LABELS = {"answered": "首次答复", "clarified": "澄清后答复", "handed_off": "转人工", "abandoned": "未答复挂断"}
CONFIDENCE_LABELS = {"high": "高", "medium": "中", "low": "低"}
SMS_LABELS = {"none": "无短信", "queued": "排队中", "sending": "发送中", "submitted": "已提交", "delivered": "已送达",
              "failed": "失败", "expired": "已过期"}
TICKET_LABELS = {"none": "无回访单", "open": "待领取", "assigned": "已领取", "attempted": "已回访", "resolved": "已办结",
                 "unreachable": "无法联系"}
QA_LABELS = {"correct": "回答正确", "wrong_answer": "回答错误", "incomplete": "回答不完整",
             "should_have_handed_off": "应转人工", "asr_error": "语音识别错误"}
CHANNEL_LABELS = {"sip": "SIP中继", "twilio": "媒体流", "audiosocket": "AudioSocket", "softphone": "网页电话",
                  "api": "文字接口", "cli": "命令行"}
EXPORT_COLUMNS = (("call_id", "通话编号"), ("started_at", "开始时间"), ("channel", "渠道"), ("caller_number", "来电号码"),
                  ("outcome", "结果"), ("turns", "轮数"), ("min_confidence", "最低置信度"), ("duration_s", "时长（秒）"),
                  ("first_question", "首个问题"), ("item_ids", "事项"), ("categories", "类别"), ("sms_state", "短信"),
                  ("ticket_state", "回访单"), ("qa_marks", "质检标记数"))


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, ReviewError):
        return staff_error(exc.status, exc.detail)
    return staff_error(503, DATABASE_DOWN)


def _categories(hotline: Hotline) -> dict[str, str]:
    return {item.id: item.category for item in hotline.answers.kb.items}


def _titles(hotline: Hotline) -> dict[str, str]:
    return {item.id: item.title for item in hotline.answers.kb.items}


# -- the filters as query parameters ------------------------------------------------------------------


def _day_start(day: dt.date | None) -> dt.datetime | None:
    return dt.datetime.combine(day, dt.time(), LOCAL_TIME).astimezone(dt.UTC) if day else None


class ListParams(BaseModel):
    """The call list's filters as the page sends them (dates are China-time days, `to` inclusive)."""

    model_config = ConfigDict(extra="forbid")

    date_from: dt.date | None = Field(default=None, alias="from")
    date_to: dt.date | None = Field(default=None, alias="to")
    outcome: CallOutcome | None = None
    confidence: str | None = None
    item: str | None = Field(default=None, max_length=128)
    category: str | None = Field(default=None, max_length=64)
    min_duration: float | None = Field(default=None, ge=0)
    max_duration: float | None = Field(default=None, ge=0)
    sms: str | None = None
    ticket: str | None = None
    channel: str | None = Field(default=None, max_length=24)
    q: str | None = Field(default=None, max_length=200)
    sample: dt.date | None = None
    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=50, ge=1, le=200)

    def query(self) -> CallQuery:
        return CallQuery(
            started_from=_day_start(self.date_from),
            started_to=_day_start(self.date_to + dt.timedelta(days=1)) if self.date_to else None,
            outcome=self.outcome, confidence=self.confidence or None, item_id=self.item or None,
            category=self.category or None, min_duration_s=self.min_duration, max_duration_s=self.max_duration,
            sms_state=self.sms or None, ticket_state=self.ticket or None, channel=self.channel or None,
            text=self.q or None, sampled_on=self.sample, page=self.page, page_size=self.page_size)


def list_params(request: Request) -> ListParams:
    values = {key: value for key, value in request.query_params.items() if value != "" and key not in (
        "unmask", "format")}
    try:
        return ListParams.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


Params = Annotated[ListParams, Depends(list_params)]


# -- masking -------------------------------------------------------------------------------------------


def _masked_number(number: str | None) -> str | None:
    return mask(number) if number else number


def row_json(row: CallRow, unmask: bool) -> dict[str, Any]:
    values = row.to_json()
    if not unmask:
        values["caller_number"] = _masked_number(row.caller_number)
        values["first_question"] = mask_personal(row.first_question)
    return values


def detail_json(detail: CallDetail, unmask: bool, titles: dict[str, str]) -> dict[str, Any]:
    values = detail.to_json()
    for turn in values["turns"]:
        turn["items"] = [{"id": item_id, "title": titles.get(item_id, item_id)} for item_id in turn["item_ids"]]
        turn["offered_items"] = [{"id": item_id, "title": titles.get(item_id, item_id)}
                                 for item_id in turn["offered_item_ids"]]
        if not unmask:
            for key in ("caller_text", "spoken_text", "sms_text"):
                turn[key] = mask_personal(turn[key])
    if not unmask:
        values["caller_number"] = _masked_number(detail.caller_number)
        values["agent_notes"] = mask_personal(detail.agent_notes)
        for message in values["sms"]:
            message["phone"] = _masked_number(message["phone"])
            message["body"] = mask_personal(message["body"])
        for ticket in values["tickets"]:
            ticket["callback_number"] = _masked_number(ticket["callback_number"])
            ticket["note"] = mask_personal(ticket["note"])
            ticket["reason"] = mask_personal(ticket["reason"])
    values["masked"] = not unmask
    return values


# -- pages ---------------------------------------------------------------------------------------------


@router.get("/review", include_in_schema=False)
async def review_page(request: Request) -> Response:
    """The call list: filters, search, paging, export."""
    return await staff_page(request, REVIEW_ROLES, "review.html", denied=NO_REVIEW_ROLE)


@router.get("/review/calls/{call_id}", include_in_schema=False)
async def call_page(request: Request, call_id: str) -> Response:
    """One call: the recording, the turn timeline, QA marks, and the KB-gap actions."""
    return await staff_page(request, REVIEW_ROLES, "review_call.html", {"call_id": call_id[:64]},
                            denied=NO_REVIEW_ROLE)


# -- the API -------------------------------------------------------------------------------------------


@router.get("/review/api/facets")
async def facets(hotline: HotlineDep, staff: ReviewStaff) -> JSONResponse:
    """What the filters offer, with the labels the page shows, and the KB's items (for the item filter)."""
    store = ReviewStore(hotline.database)
    choices = store.facets(_categories(hotline))
    return JSONResponse(choices | {
        "labels": {"outcome": OUTCOME_LABELS, "confidence": CONFIDENCE_LABELS, "sms": SMS_LABELS,
                   "ticket": TICKET_LABELS, "qa": QA_LABELS, "channel": CHANNEL_LABELS},
        "items": [{"id": item.id, "title": item.title, "category": item.category}
                  for item in hotline.answers.kb.items],
        "sample_size": hotline.settings.qa_sample_size, "me": staff.to_json()})


@router.get("/review/api/calls")
async def list_calls(hotline: HotlineDep, staff: ReviewStaff, params: Params,
                     unmask: Annotated[bool, Query()] = False) -> JSONResponse:
    """One page of calls, newest first: {rows, total, page, page_size, pages}."""
    store = ReviewStore(hotline.database)
    try:
        page = await asyncio.to_thread(store.list_calls, params.query())
        if unmask:
            await asyncio.to_thread(audit.write, hotline.database, staff, audit.AuditAction.UNMASK, "call list",
                                    calls=[row.call_id for row in page.rows])
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    result = page.to_json()
    result["rows"] = [row_json(row, unmask) for row in page.rows]
    return JSONResponse(result)


@router.get("/review/api/calls/{call_id}")
async def call_detail(hotline: HotlineDep, staff: ReviewStaff, call_id: str,
                      unmask: Annotated[bool, Query()] = False) -> JSONResponse:
    """The call with its turns, SMS, tickets and QA marks (personal data masked unless `unmask`, audited)."""
    store = ReviewStore(hotline.database)
    try:
        detail = await asyncio.to_thread(store.call_detail, call_id)
        if unmask:
            await asyncio.to_thread(audit.write, hotline.database, staff, audit.AuditAction.UNMASK, call_id)
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    return JSONResponse(detail_json(detail, unmask, _titles(hotline)))


def stereo_wav(caller_path: Path, assistant_path: Path) -> bytes:
    """The two mono tracks as one two-channel WAV (caller left, assistant right), the shorter padded."""
    tracks, rate = [], 8000
    for path in (caller_path, assistant_path):
        with wave.open(str(path), "rb") as reader:
            rate = reader.getframerate()
            tracks.append(np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2"))
    length = max(len(track) for track in tracks)
    stereo = np.zeros((length, 2), dtype="<i2")
    for channel, track in enumerate(tracks):
        stereo[:len(track), channel] = track
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(stereo.tobytes())
    return out.getvalue()


@router.get("/review/api/calls/{call_id}/recording")
async def recording(hotline: HotlineDep, staff: ReviewStaff, call_id: str) -> Response:
    """The call's recording as one two-channel WAV (caller left, assistant right); the listen is audited."""
    store = ReviewStore(hotline.database)
    try:
        paths = await asyncio.to_thread(store.recording_paths, call_id)
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    if paths is None:
        return staff_error(404, "这个通话没有录音")
    try:
        body = await asyncio.to_thread(stereo_wav, Path(paths[0]), Path(paths[1]))
    except (OSError, wave.Error, EOFError):
        return staff_error(404, "录音文件不存在或已按保存期限删除")
    try:
        await asyncio.to_thread(audit.write, hotline.database, staff, audit.AuditAction.LISTEN, call_id,
                                seconds=round(len(body) / 4 / 8000, 1))
    except StorageError as exc:
        return _error(exc)  # no audit entry, no audio
    return Response(body, media_type="audio/wav", headers={"Cache-Control": "no-store",
                                                           "Content-Disposition": f'inline; filename="{call_id}.wav"'})


class MarkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: QaLabel
    comment: str = Field(default="", max_length=1000)


@router.post("/review/api/calls/{call_id}/turns/{seq}/mark")
async def mark_turn(hotline: HotlineDep, staff: ReviewStaff, call_id: str, seq: RowId, body: MarkBody) -> JSONResponse:
    """Mark one turn (correct / wrong answer / incomplete / should have handed off / ASR error) with a comment."""
    store = ReviewStore(hotline.database)
    try:
        await asyncio.to_thread(store.mark_turn, staff, call_id, seq, body.label, body.comment)
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    return JSONResponse({"call_id": call_id, "seq": seq, "label": body.label.value, "comment": body.comment.strip(),
                         "reviewer": staff.username})


def _yesterday() -> dt.date:
    return dt.datetime.now(LOCAL_TIME).date() - dt.timedelta(days=1)


@router.get("/review/api/sample")
async def qa_sample(hotline: HotlineDep, staff: ReviewStaff, day: dt.date | None = None) -> JSONResponse:
    """The day's random QA sample (yesterday by default; drawn the first time it is asked for) and its progress."""
    day = day or _yesterday()
    if day >= dt.datetime.now(LOCAL_TIME).date():
        return staff_error(400, "抽检样本在当天结束后生成，请选择昨天或更早的日期")
    store = ReviewStore(hotline.database)
    try:
        await asyncio.to_thread(store.draw_sample, day, hotline.settings.qa_sample_size)
        progress = await asyncio.to_thread(store.sample_progress, day)
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    return JSONResponse(progress | {"size": hotline.settings.qa_sample_size})


# -- export --------------------------------------------------------------------------------------------


def _export_values(row: dict[str, Any]) -> list[Any]:
    values = []
    for key, _label in EXPORT_COLUMNS:
        value = row[key]
        if key == "started_at":
            value = dt.datetime.fromisoformat(value).astimezone(LOCAL_TIME).strftime("%Y-%m-%d %H:%M:%S")
        elif key == "outcome":
            value = OUTCOME_LABELS.get(value, value)
        elif key == "channel":
            value = CHANNEL_LABELS.get(value, value)
        elif key == "sms_state":
            value = SMS_LABELS.get(value or "none", value)
        elif key == "ticket_state":
            value = TICKET_LABELS.get(value or "none", value)
        elif isinstance(value, list):
            value = "、".join(value)
        values.append("" if value is None else value)
    return values


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([label for _key, label in EXPORT_COLUMNS])
    for row in rows:
        writer.writerow(_export_values(row))
    return ("\ufeff" + out.getvalue()).encode("utf-8")  # the BOM: Excel opens UTF-8 Chinese correctly


def _xlsx(rows: list[dict[str, Any]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("通话记录")
    sheet.append([label for _key, label in EXPORT_COLUMNS])
    for row in rows:
        sheet.append(_export_values(row))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


@router.get("/review/api/export")
async def export(hotline: HotlineDep, staff: ReviewStaff, params: Params,
                 format: Annotated[str, Query(pattern="^(csv|xlsx)$")] = "csv",
                 unmask: Annotated[bool, Query()] = False) -> Response:
    """Every call matching the filters (up to 100,000) as CSV or XLSX, masked unless `unmask`; audited."""
    store = ReviewStore(hotline.database)
    try:
        rows = await asyncio.to_thread(lambda: [row_json(row, unmask) for row in store.iter_calls(params.query())])
        await asyncio.to_thread(audit.write, hotline.database, staff, audit.AuditAction.EXPORT, "call list",
                                format=format, rows=len(rows), masked=not unmask,
                                filters=params.model_dump(mode="json", exclude_none=True, by_alias=True))
    except (ReviewError, StorageError) as exc:
        return _error(exc)
    body = await asyncio.to_thread(_csv if format == "csv" else _xlsx, rows)
    stamp = dt.datetime.now(LOCAL_TIME).strftime("%Y%m%d-%H%M")
    name = f"通话记录-{stamp}.{format}"
    media = "text/csv; charset=utf-8" if format == "csv" else (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    return Response(body, media_type=media, headers={
        "Cache-Control": "no-store",
        "Content-Disposition": f"attachment; filename=\"calls.{format}\"; filename*=UTF-8''{quote(name)}"})
