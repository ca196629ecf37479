"""The agent desk over HTTP: the sign-in page, the desk page, and the REST API agents work callback tickets and send
guides through (/desk/api/…; a staff session, and the CSRF token on every POST). docs/handoff.md describes it."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from telephony.app import Hotline
from telephony.errors import StorageError
from telephony.handoff.accounts import (
    MAX_PASSWORD_CHARS,
    AccountError,
    Accounts,
    InactiveUserError,
    UnknownUserError,
    WrongPasswordError,
)
from telephony.handoff.base import TRIGGER_LABELS, HandoffTrigger
from telephony.handoff.tickets import (
    MAX_NOTE_CHARS,
    InvalidTicketTransition,
    NotAllowedError,
    NotCallAgentError,
    NotTicketOwnerError,
    TicketAlreadyClaimed,
    TicketChangedError,
    TicketDesk,
    TicketError,
    UnknownCallError,
    UnknownTicketError,
    add_call_note,
)
from telephony.sms.base import SmsError
from telephony.sms.compose import GuideTooLongError, InvalidNumberError, mask
from telephony.sms.outbox import SmsRefused
from telephony.sms.service import UnknownItemError
from telephony.store.models import (
    Call,
    CallbackAttempt,
    CallbackOutcome,
    HandoffStatus,
    HandoffTicket,
    SmsKind,
    User,
)
from telephony.web.deps import HotlineDep, RowId
from telephony.web.staff_auth import (
    ACCOUNT_GONE,
    CSRF_FAILED,
    CSRF_FIELD,
    CSRF_HEADER,
    DESK_ROLES,
    NO_DESK_ROLE,
    SESSION_EXPIRED,
    STARTING,
    TOO_MANY_FAILURES,
    Staff,
    StaffAuthError,
    csrf_ok,
    csrf_token,
    end_session,
    load_staff,
    login_throttle,
    staff_error,
    staff_member,
    start_session,
)
from telephony.web.staff_pages import ALL_ROLES, PAGE_HEADERS, home_page, render, safe_next
from telephony.web.staff_pages import redirect as _redirect

log = logging.getLogger(__name__)
router = APIRouter(tags=["desk"])
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
LOGIN_PAGE = STATIC_DIR / "desk_login.html"
DESK_PAGE = STATIC_DIR / "desk.html"
LOCAL_TIME = ZoneInfo("Asia/Shanghai")
OVERDUE_AFTER = dt.timedelta(hours=1)  # a ticket this long past its due time is shown as overdue
MAX_ITEMS = 20
MAX_TICKETS = 500

DeskStaff = Annotated[Staff, Depends(staff_member(DESK_ROLES))]

WRONG_CREDENTIALS = "用户名或密码错误"
ACCOUNT_DEACTIVATED = "账号已停用，请联系管理员"
MISSING_CREDENTIALS = "请输入用户名和密码"
SIGNED_OUT = "您已退出登录"
DATABASE_DOWN = "数据库暂时不可用，请稍后重试"
TICKET_CHANGED = "回访单已被他人更新，请刷新"
LOGIN_NOTICES = {"signed_out": SIGNED_OUT, "expired": SESSION_EXPIRED, "gone": ACCOUNT_GONE}

STATUS_LABELS = {HandoffStatus.OPEN: "待领取", HandoffStatus.ASSIGNED: "已领取", HandoffStatus.ATTEMPTED: "已回访",
                 HandoffStatus.RESOLVED: "已办结", HandoffStatus.UNREACHABLE: "无法联系"}
ACTION_LABELS = {HandoffStatus.ASSIGNED: "领取", HandoffStatus.ATTEMPTED: "记录回访", HandoffStatus.RESOLVED: "办结",
                 HandoffStatus.OPEN: "退回", HandoffStatus.UNREACHABLE: "记录回访"}
OUTCOME_LABELS = {CallbackOutcome.REACHED: "已联系上", CallbackOutcome.NO_ANSWER: "无人接听",
                  CallbackOutcome.BUSY: "占线", CallbackOutcome.WRONG_NUMBER: "号码错误", CallbackOutcome.OTHER: "其他"}
ACTIVE_STATUSES = (HandoffStatus.OPEN, HandoffStatus.ASSIGNED, HandoffStatus.ATTEMPTED)
SMS_REFUSALS = {"number_hourly_limit": "该号码一小时内的短信已达上限，请稍后再试",
                "number_daily_limit": "该号码今天的短信已达上限，请明天再试",
                "number_blocked": "该号码今天多次发送失败，今天不再发送"}

_LOGIN_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
              "base-uri 'none'")


# -- pages -----------------------------------------------------------------------------------------


def login_page(request: Request, status: int = 200, error: str = "", username: str = "",
               next_page: str = "") -> HTMLResponse:
    page = render(LOGIN_PAGE.read_text(encoding="utf-8"), {
        "csrf_token": csrf_token(request), "error": error, "error_hidden": "" if error else "hidden",
        "username": username, "next": next_page})
    return HTMLResponse(page, status_code=status, headers=PAGE_HEADERS | {"Content-Security-Policy": _LOGIN_CSP})




@router.get("/desk/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(request: Request, reason: str | None = None, next: str | None = None) -> Response:
    """The sign-in page for all staff (a signed-in member goes straight to `next` or their role's home page)."""
    try:
        staff = await asyncio.to_thread(load_staff, request, ALL_ROLES)
        return _redirect(safe_next(next) or home_page(staff.role))
    except StaffAuthError:
        pass
    return login_page(request, error=LOGIN_NOTICES.get(reason or "", ""), next_page=safe_next(next) or "")


@router.post("/desk/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request) -> Response:
    """Form post from the sign-in page: a fresh session and 303 to `next` or the role's home page (the desk for
    agents, /review for supervisors, /review/kb for KB editors, /admin for admins), or the page again with why not."""
    form = await request.form()
    username = str(form.get("username") or "").strip()[:64]
    password = str(form.get("password") or "")
    next_page = safe_next(str(form.get("next") or "")) or ""
    if not csrf_ok(request, str(form.get(CSRF_FIELD) or "")):
        return login_page(request, 403, CSRF_FAILED, username, next_page)
    hotline: Hotline | None = request.app.state.hotline_state.hotline
    if hotline is None:
        return login_page(request, 503, STARTING, username, next_page)
    if not username or not password:
        return login_page(request, 401, MISSING_CREDENTIALS, username, next_page)
    throttle = login_throttle(request)
    if throttle.locked(username):
        log.warning("desk sign-in refused for %r: too many failures", username)
        return login_page(request, 429, TOO_MANY_FAILURES, username, next_page)
    try:
        if len(password) > MAX_PASSWORD_CHARS:
            raise WrongPasswordError(username)
        account = await asyncio.to_thread(Accounts(hotline.database).verify, username, password)
    except (UnknownUserError, WrongPasswordError):
        locked = throttle.failed(username)
        log.warning("desk sign-in failed for %r from %s%s", username, request.client.host if request.client else "?",
                    " (now locked)" if locked else "")
        if locked:
            return login_page(request, 429, TOO_MANY_FAILURES, username, next_page)
        return login_page(request, 401, WRONG_CREDENTIALS, username, next_page)
    except InactiveUserError:
        log.warning("desk sign-in refused for %r: deactivated", username)
        return login_page(request, 403, ACCOUNT_DEACTIVATED, username, next_page)
    except AccountError:
        return login_page(request, 401, WRONG_CREDENTIALS, username, next_page)
    except StorageError:
        return login_page(request, 503, DATABASE_DOWN, username, next_page)
    throttle.succeeded(username)
    start_session(request, account.id, account.username)
    log.info("staff: %s (%s) signed in", account.username, account.role.value)
    return _redirect(next_page or home_page(account.role))


@router.post("/desk/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """End the session (CSRF token in the form field or the header) and go to the sign-in page."""
    if "csrf_token" not in request.session:
        return _redirect("/desk/login")  # nothing to end
    form = await request.form()
    given = str(form.get(CSRF_FIELD) or "") or request.headers.get(CSRF_HEADER, "")
    if not csrf_ok(request, given):
        return staff_error(403, CSRF_FAILED)
    username = request.session.get("staff_username")
    end_session(request)
    if username:
        log.info("desk: %s signed out", username)
    return _redirect("/desk/login?reason=signed_out")


@router.get("/desk", response_class=HTMLResponse, include_in_schema=False)
async def desk_page(request: Request) -> Response:
    """The agent desk (desk.html with the signed-in agent filled in); the sign-in page without a session."""
    try:
        staff = await asyncio.to_thread(load_staff, request)
    except StaffAuthError as exc:
        if exc.status == 401:
            reason = {SESSION_EXPIRED: "?reason=expired", ACCOUNT_GONE: "?reason=gone"}.get(exc.detail, "")
            return _redirect("/desk/login" + reason)
        if exc.status == 403:
            return login_page(request, 403, exc.detail)
        return HTMLResponse(html.escape(exc.detail), status_code=exc.status, headers=PAGE_HEADERS)
    try:
        template = DESK_PAGE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return HTMLResponse("坐席工作台页面尚未安装", status_code=503, headers=PAGE_HEADERS)
    page = render(template, {"csrf_token": staff.csrf_token, "display_name": staff.display_name,
                             "username": staff.username, "role": staff.role.value})
    return HTMLResponse(page, headers=PAGE_HEADERS)


# -- tickets as JSON ---------------------------------------------------------------------------------


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _iso(value: dt.datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value is not None else None


def local_label(value: dt.datetime | None) -> str | None:
    """「12月7日 09:00」 in Asia/Shanghai."""
    value = _aware(value)
    if value is None:
        return None
    local = value.astimezone(LOCAL_TIME)
    return f"{local.month}月{local.day}日 {local:%H:%M}"


def trigger_label(trigger: str) -> str:
    try:
        return TRIGGER_LABELS[HandoffTrigger(trigger)]
    except (KeyError, ValueError):
        return trigger


def ticket_json(ticket: HandoffTicket, now: dt.datetime) -> dict[str, Any]:
    """A ticket for the desk: the number masked and in full (agents dial it; this API is staff-only)."""
    due = _aware(ticket.due_at)
    owner = ticket.assigned_user if ticket.assigned_user_id else None
    number = ticket.callback_number or ""
    return {
        "id": ticket.id, "status": ticket.status.value, "status_label": STATUS_LABELS[ticket.status],
        "trigger": ticket.trigger, "trigger_label": trigger_label(ticket.trigger), "reason": ticket.reason,
        "call_id": ticket.call_id, "due_at": _iso(due), "due_label": local_label(due),
        "callback_number": mask(number) if number else None, "callback_number_full": number or None,
        "owner": owner.username if owner else None, "owner_name": owner.display_name if owner else None,
        "attempts": ticket.attempts, "notes": ticket.note or "", "context": ticket.context or {},
        "created_at": _iso(ticket.created_at), "updated_at": _iso(ticket.updated_at),
        "resolved_at": _iso(ticket.resolved_at),
        "overdue": bool(not ticket.status.final and due is not None and now - due > OVERDUE_AFTER),
    }


def attempt_json(attempt: CallbackAttempt, users: dict[int, tuple[str, str]]) -> dict[str, Any]:
    username, display_name = users.get(attempt.user_id or -1, (None, None))
    return {"id": attempt.id, "at": _iso(attempt.at), "at_label": local_label(attempt.at),
            "outcome": attempt.outcome.value, "outcome_label": OUTCOME_LABELS[attempt.outcome],
            "note": attempt.note, "by": username, "by_name": display_name}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _desk(hotline: Hotline) -> TicketDesk:
    # The desk only works existing tickets; due times (the office-hours calendar) matter only when one is opened.
    return TicketDesk(hotline.database)


def _users(hotline: Hotline, ids: set[int]) -> dict[int, tuple[str, str]]:
    if not ids:
        return {}
    with hotline.database.session() as session:
        rows = session.execute(select(User.id, User.username, User.display_name).where(User.id.in_(ids)))
        return {row.id: (row.username, row.display_name) for row in rows}


def _display_name(hotline: Hotline, username: str | None) -> str | None:
    if not username:
        return None
    with hotline.database.session() as session:
        return session.scalar(select(User.display_name).where(User.username == username)) or username


def ticket_detail(hotline: Hotline, ticket_id: int) -> dict[str, Any]:
    """Blocking: one ticket with its attempts."""
    desk = _desk(hotline)
    ticket = desk.get(ticket_id)
    attempts = desk.attempts_of(ticket_id)
    users = _users(hotline, {attempt.user_id for attempt in attempts if attempt.user_id is not None})
    return ticket_json(ticket, _now()) | {"attempt_list": [attempt_json(attempt, users) for attempt in attempts]}


def _transition_message(exc: InvalidTicketTransition) -> str:
    message = (f"回访单 {exc.ticket_id} 当前状态为「{STATUS_LABELS[exc.current]}」，"
               f"不能{ACTION_LABELS.get(exc.target, '这样操作')}")
    if exc.current is HandoffStatus.OPEN:
        return message + "（请先领取）"
    if exc.current is HandoffStatus.ASSIGNED and exc.target is HandoffStatus.RESOLVED:
        return message + "（请先记录一次回访）"
    if exc.current.final:
        return message + "（已结束）"
    return message


def ticket_error(exc: Exception, ticket_id: int, hotline: Hotline | None = None) -> JSONResponse:
    """A ticket operation's refusal as the desk shows it."""
    if isinstance(exc, UnknownTicketError):
        return staff_error(404, f"回访单 {ticket_id} 不存在")
    if isinstance(exc, TicketAlreadyClaimed):
        name = _display_name(hotline, exc.owner) if hotline is not None else exc.owner
        return staff_error(409, f"该回访单已被 {name} 领取" if name else "该回访单已被他人领取", owner=exc.owner)
    if isinstance(exc, InvalidTicketTransition):
        return staff_error(409, _transition_message(exc), current=exc.current.value)
    if isinstance(exc, TicketChangedError):
        return staff_error(409, TICKET_CHANGED)
    if isinstance(exc, NotTicketOwnerError):
        return staff_error(403, f"该回访单由 {exc.owner or '他人'} 负责，只有负责人可以操作", owner=exc.owner)
    if isinstance(exc, NotAllowedError):
        return staff_error(403, NO_DESK_ROLE)
    if isinstance(exc, AccountError):
        return staff_error(401, ACCOUNT_GONE)
    if isinstance(exc, StorageError):
        log.error("desk: ticket %s: %s", ticket_id, exc)
        return staff_error(503, DATABASE_DOWN)
    return staff_error(422, f"操作未完成：{exc}")


_TICKET_ERRORS = (TicketError, AccountError, StorageError)


async def _ticket_operation(hotline: Hotline, ticket_id: int, operation) -> JSONResponse:
    """Run a blocking desk operation, then answer the ticket as it is now (with its attempts)."""

    def work() -> dict[str, Any]:
        operation(_desk(hotline))
        return ticket_detail(hotline, ticket_id)

    try:
        return JSONResponse(await asyncio.to_thread(work))
    except _TICKET_ERRORS as exc:
        return await asyncio.to_thread(ticket_error, exc, ticket_id, hotline)


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    note: str = ""


class AttemptBody(NoteBody):
    outcome: str = ""


def _note(body: NoteBody | None, required: str | None) -> str | JSONResponse:
    note = (body.note if body is not None else "").strip()
    if required and not note:
        return staff_error(422, required)
    if len(note) > MAX_NOTE_CHARS:
        return staff_error(422, f"备注过长：最多{MAX_NOTE_CHARS}字")
    return note


# -- the API ---------------------------------------------------------------------------------------


@router.get("/desk/api/me")
async def me(staff: DeskStaff) -> dict[str, object]:
    """The signed-in agent."""
    return staff.to_json()


@router.get("/desk/api/tickets")
async def list_tickets(staff: DeskStaff, hotline: HotlineDep, status: str | None = None,
                       mine: bool = False) -> JSONResponse:
    """The callback worklist: tickets not yet final (or of `status`; `all` for every one), the earliest due first;
    `mine=true`: only the signed-in agent's."""
    if status in (None, "", "active"):
        statuses: tuple[HandoffStatus | None, ...] = ACTIVE_STATUSES
    elif status == "all":
        statuses = (None,)
    else:
        try:
            statuses = (HandoffStatus(status),)
        except ValueError:
            known = "、".join(member.value for member in HandoffStatus)
            return staff_error(422, f"状态 {status} 无效，可选：{known}、active、all")
    desk = _desk(hotline)
    owner = staff.id if mine else None

    def work() -> list[HandoffTicket]:
        found: list[HandoffTicket] = []
        for one in statuses:
            found.extend(desk.list(status=one, owner=owner, limit=MAX_TICKETS))
        return found

    try:
        tickets = await asyncio.to_thread(work)
    except StorageError as exc:
        log.error("desk: ticket list: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    tickets.sort(key=lambda ticket: (_aware(ticket.due_at) or never, ticket.id))  # no due time: last
    now = _now()
    return JSONResponse({"tickets": [ticket_json(ticket, now) for ticket in tickets[:MAX_TICKETS]],
                         "now": now.isoformat()})


@router.get("/desk/api/tickets/{ticket_id}")
async def get_ticket(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep) -> JSONResponse:
    """One ticket with its attempts (`attempt_list`)."""
    try:
        return JSONResponse(await asyncio.to_thread(ticket_detail, hotline, ticket_id))
    except _TICKET_ERRORS as exc:
        return await asyncio.to_thread(ticket_error, exc, ticket_id, hotline)


@router.post("/desk/api/tickets/{ticket_id}/claim")
async def claim_ticket(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep) -> JSONResponse:
    """Take an open ticket; 409 with the owner's name when someone holds it."""
    response = await _ticket_operation(hotline, ticket_id, lambda desk: desk.claim(ticket_id, staff.id))
    if response.status_code == 200:
        log.info("desk: %s claimed ticket %s", staff.username, ticket_id)
    return response


@router.post("/desk/api/tickets/{ticket_id}/attempts")
async def record_attempt(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep,
                         body: AttemptBody | None = None) -> JSONResponse:
    """Record a call to the caller: {outcome: reached | no_answer | busy | wrong_number | other, note}."""
    try:
        outcome = CallbackOutcome((body.outcome if body is not None else "").strip())
    except ValueError:
        choices = "、".join(f"{member.value}（{label}）" for member, label in OUTCOME_LABELS.items())
        return staff_error(422, f"回访结果无效，可选：{choices}")
    note = _note(body, None)
    if isinstance(note, JSONResponse):
        return note
    return await _ticket_operation(hotline, ticket_id,
                                   lambda desk: desk.record_attempt(ticket_id, staff.id, outcome, note))


@router.post("/desk/api/tickets/{ticket_id}/resolve")
async def resolve_ticket(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep,
                         body: NoteBody | None = None) -> JSONResponse:
    """Close the ticket as done; the note (required) says what was agreed."""
    note = _note(body, "请填写办结说明")
    if isinstance(note, JSONResponse):
        return note
    return await _ticket_operation(hotline, ticket_id, lambda desk: desk.resolve(ticket_id, staff.id, note))


@router.post("/desk/api/tickets/{ticket_id}/release")
async def release_ticket(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep,
                         body: NoteBody | None = None) -> JSONResponse:
    """Give the ticket back to the queue (its owner; a supervisor or admin for anyone's)."""
    note = _note(body, None)
    if isinstance(note, JSONResponse):
        return note
    return await _ticket_operation(hotline, ticket_id, lambda desk: desk.release(ticket_id, staff.id, note))


@router.post("/desk/api/tickets/{ticket_id}/notes")
async def add_note(ticket_id: RowId, staff: DeskStaff, hotline: HotlineDep,
                   body: NoteBody | None = None) -> JSONResponse:
    """Append a dated, signed note (in any state)."""
    note = _note(body, "请填写备注内容")
    if isinstance(note, JSONResponse):
        return note
    return await _ticket_operation(hotline, ticket_id, lambda desk: desk.add_note(ticket_id, staff.id, note))


@router.post("/desk/api/calls/{call_id}/notes")
async def add_call_notes(call_id: str, staff: DeskStaff, hotline: HotlineDep,
                         body: NoteBody | None = None) -> JSONResponse:
    """Notes on a call the agent took at the desk (during it or after): a dated, signed line appended to the call's
    record, where supervisors read them → {call_id, notes}."""
    note = _note(body, "请填写备注内容")
    if isinstance(note, JSONResponse):
        return note
    try:
        notes = await asyncio.to_thread(add_call_note, hotline.database, call_id, staff.id, note)
    except UnknownCallError:
        return staff_error(404, "找不到这通来电的记录，备注未保存")
    except NotCallAgentError:
        return staff_error(403, "这通来电不是您接听的，不能添加备注")
    except AccountError:
        return staff_error(401, ACCOUNT_GONE)
    except StorageError as exc:
        log.error("desk: call %s notes: %s", call_id, exc)
        return staff_error(503, DATABASE_DOWN)
    log.info("desk: %s added a note to call %s", staff.username, call_id)
    return JSONResponse({"call_id": call_id, "notes": notes})


# -- guides by SMS -------------------------------------------------------------------------------------


@router.get("/desk/api/items")
async def find_items(staff: DeskStaff, hotline: HotlineDep, q: str = "") -> dict[str, object]:
    """KB items whose title or an alias contains `q` (at most 20; the first 20 without `q`), to pick a guide."""
    query = q.strip().lower()
    found = []
    for item in hotline.answers.kb.items:
        if not query or query in item.title.lower() or any(query in alias.lower() for alias in item.aliases):
            found.append({"id": item.id, "title": item.title})
            if len(found) >= MAX_ITEMS:
                break
    return {"items": found}


class SmsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    item_id: str = ""
    ticket_id: int | None = None
    call_id: str | None = None
    to: str | None = None


def _sms_target(hotline: Hotline, body: SmsBody) -> tuple[str | None, str | None, str] | JSONResponse:
    """Blocking: (number, call id, reference part) for a send, or the refusal. The number: `to` when given, else
    the ticket's callback number (its call's caller number if it has none), else the call's caller number."""
    number = (body.to or "").strip() or None
    if body.ticket_id is not None:
        try:
            ticket = _desk(hotline).get(body.ticket_id)
        except UnknownTicketError:
            return staff_error(404, f"回访单 {body.ticket_id} 不存在")
        call_id, part = ticket.call_id, f"ticket-{ticket.id}"
        if number is None:
            number = ticket.callback_number
        if number is None:
            with hotline.database.session() as session:
                number = session.scalar(select(Call.caller_number).where(Call.id == ticket.call_id))
    elif body.call_id:
        with hotline.database.session() as session:
            call = session.get(Call, body.call_id.strip())
            if call is None:
                return staff_error(404, f"通话 {body.call_id} 不存在")
            call_id, part = call.id, f"call-{call.id}"
            if number is None:
                number = call.caller_number
    else:
        call_id, part = None, "manual"
        if number is None:
            return staff_error(422, "请填写手机号码，或选择回访单或通话")
    if not number:
        return staff_error(422, "没有可用的手机号码，请填写号码")
    return number, call_id, part


@router.post("/desk/api/sms", status_code=202)
async def send_guide(staff: DeskStaff, hotline: HotlineDep, body: SmsBody | None = None) -> JSONResponse:
    """发送办事指南短信: {item_id, ticket_id? | call_id? | to?} → the queued message {id, state, to (masked),
    segments}. The same click twice queues two messages (each send has its own reference)."""
    body = body or SmsBody()
    item_id = body.item_id.strip()
    if not item_id:
        return staff_error(422, "请选择要发送的办事指南")
    try:
        target = await asyncio.to_thread(_sms_target, hotline, body)
    except StorageError as exc:
        log.error("desk: sms: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    if isinstance(target, JSONResponse):
        return target
    number, call_id, part = target
    reference = f"desk:{staff.username}:{part}:{item_id[:40]}:{uuid.uuid4().hex[:8]}"
    try:
        enqueued = await hotline.sms.send_guide(number, item_id, reference, call_id=call_id, kind=SmsKind.GUIDE)
    except InvalidNumberError:
        return staff_error(422, "号码不是有效的手机号")
    except UnknownItemError:
        return staff_error(422, f"办事指南 {item_id} 不存在")
    except GuideTooLongError:
        return staff_error(422, "该办事指南内容过长，无法用短信发送")
    except SmsRefused as exc:
        return staff_error(429, SMS_REFUSALS.get(exc.reason, "发送过于频繁，请稍后再试"), reason=exc.reason)
    except SmsError as exc:
        return staff_error(422, f"短信无法发送：{exc}")
    except StorageError as exc:
        log.error("desk: sms: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    message = enqueued.message
    log.info("desk: %s sent guide %s to %s (%s)", staff.username, message.item_id, mask(message.phone), part)
    return JSONResponse(status_code=202 if enqueued.created else 200, content={
        "id": message.id, "state": message.status.value, "to": mask(message.phone), "segments": message.segments,
        "item_id": message.item_id, "call_id": message.call_id})
