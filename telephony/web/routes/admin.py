"""Administration over HTTP: the accounts page and its JSON API (admins only), and the audit log's page and API
(admins and supervisors, read only). A staff session, and the CSRF token on every POST; errors read in Chinese.
docs/review.md ("Roles and accounts", "Audit log") describes them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from telephony.errors import StorageError
from telephony.handoff.accounts import (
    MAX_DISPLAY_NAME_CHARS,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    Account,
    AccountError,
    Accounts,
    InvalidDisplayNameError,
    InvalidUsernameError,
    LastAdminError,
    SelfChangeError,
    UnknownRoleError,
    UnknownUserError,
    UsernameTakenError,
    WeakPasswordError,
)
from telephony.review import audit
from telephony.store.models import UserRole
from telephony.web.deps import HotlineDep, RowId
from telephony.web.staff_auth import Staff, staff_error, staff_member
from telephony.web.staff_pages import staff_page

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin"])
BUREAU_TIME = ZoneInfo("Asia/Shanghai")
AUDIT_PAGE_SIZE = 50
MAX_AUDIT_PAGE = 100_000

NO_ADMIN_ROLE = "您的账号没有管理员权限"
NO_AUDIT_ROLE = "您的账号没有查看审计日志的权限"
DATABASE_DOWN = "数据库暂时不可用，请稍后重试"
BAD_REQUEST = "请求格式错误，请刷新页面后重试"
ADMIN_ROLES = frozenset({UserRole.ADMIN})
AUDIT_ROLES = frozenset({UserRole.ADMIN, UserRole.SUPERVISOR})

AdminStaff = Annotated[Staff, Depends(staff_member(ADMIN_ROLES, denied=NO_ADMIN_ROLE))]
AuditReader = Annotated[Staff, Depends(staff_member(AUDIT_ROLES, denied=NO_AUDIT_ROLE))]

ROLE_LABELS = {UserRole.AGENT: "坐席", UserRole.SUPERVISOR: "质检主管", UserRole.KB_EDITOR: "知识库编辑",
               UserRole.ADMIN: "管理员"}
ACTION_LABELS = {audit.AuditAction.LISTEN: "收听录音", audit.AuditAction.EXPORT: "导出通话",
                 audit.AuditAction.UNMASK: "查看未脱敏信息", audit.AuditAction.QA_MARK: "质检标记",
                 audit.AuditAction.KB_CHANGE: "知识库修改", audit.AuditAction.USER: "账号管理",
                 audit.AuditAction.RETENTION: "到期数据清理"}
USER_CHANGE_LABELS = {"create": "新建账号", "password": "重置密码", "role": "更改角色", "deactivate": "停用账号",
                      "reactivate": "恢复账号"}
WEAK_PASSWORD = {
    "short": f"密码太短：至少{MIN_PASSWORD_CHARS}个字符",
    "long": f"密码太长：最多{MAX_PASSWORD_CHARS}个字符",
    "username": "密码不能包含用户名",
    "simple": "密码太简单：不能是重复字符或 12345678、abcdefgh 这样的连续字符",
    "common": "密码太常见，很容易被猜到，请换一个",
}
# Security headers beyond PAGE_HEADERS: the page's one inline script runs by its nonce, nothing else loads.
PAGE_CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


# -- pages -----------------------------------------------------------------------------------------


async def _page(request: Request, roles: frozenset[UserRole], template: str, denied: str) -> Response:
    nonce = secrets.token_urlsafe(18)
    response = await staff_page(request, roles, template, {"nonce": nonce}, denied=denied)
    if isinstance(response, HTMLResponse) and response.status_code == 200:
        response.headers["Content-Security-Policy"] = PAGE_CSP.format(nonce=nonce)
    return response


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin_page(request: Request) -> Response:
    """用户管理: list, add, reset passwords, change roles, deactivate and reactivate (admins)."""
    return await _page(request, ADMIN_ROLES, "admin.html", NO_ADMIN_ROLE)


@router.get("/admin/audit", response_class=HTMLResponse, include_in_schema=False)
async def audit_page(request: Request) -> Response:
    """审计日志, newest first, filtered by action (admins and supervisors; read only)."""
    return await _page(request, AUDIT_ROLES, "audit.html", NO_AUDIT_ROLE)


# -- accounts as JSON --------------------------------------------------------------------------------


def local_label(value: dt.datetime) -> str:
    """「2026-12-07 09:00」 in China time (SQLite returns naive UTC)."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return f"{aware.astimezone(BUREAU_TIME):%Y-%m-%d %H:%M}"


def user_json(account: Account) -> dict[str, Any]:
    return account.to_json() | {"role_label": ROLE_LABELS[account.role],
                                "created_label": local_label(account.created_at)}


def roles_json() -> list[dict[str, str]]:
    return [{"value": role.value, "label": label} for role, label in ROLE_LABELS.items()]


def account_error(exc: Exception) -> JSONResponse:
    """An account operation's refusal as the admin page shows it."""
    if isinstance(exc, UnknownUserError):
        return staff_error(404, "该用户不存在，请刷新列表")
    if isinstance(exc, UsernameTakenError):
        return staff_error(409, f"用户名 {exc.username} 已被使用，请换一个")
    if isinstance(exc, InvalidUsernameError):
        return staff_error(422, "用户名须为2到64个英文字母、数字、“.”、“_”或“-”，以字母或数字开头")
    if isinstance(exc, InvalidDisplayNameError):
        return staff_error(422, f"请填写姓名（最多{MAX_DISPLAY_NAME_CHARS}个字）")
    if isinstance(exc, UnknownRoleError):
        choices = "、".join(f"{label}（{role.value}）" for role, label in ROLE_LABELS.items())
        return staff_error(422, f"角色无效，可选：{choices}")
    if isinstance(exc, WeakPasswordError):
        return staff_error(422, WEAK_PASSWORD.get(exc.reason, "密码不符合要求"), reason=exc.reason)
    if isinstance(exc, SelfChangeError):
        what = "停用自己的账号" if exc.change == "deactivate" else "取消自己的管理员角色"
        return staff_error(409, f"不能{what}：请让另一位管理员操作")
    if isinstance(exc, LastAdminError):
        return staff_error(409, f"{exc.username} 是最后一个在用的管理员账号，请先把另一位用户设为管理员")
    if isinstance(exc, StorageError):
        log.error("admin: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    return staff_error(422, "操作未完成，请检查填写的内容")


BodyT = TypeVar("BodyT", bound=BaseModel)


class NewUserBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = ""
    display_name: str = ""
    role: str = ""
    password: str = ""


class PasswordBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    password: str = ""


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = ""


class ActiveBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    active: bool


async def _body(request: Request, model: type[BodyT]) -> BodyT | JSONResponse:
    """The JSON body as `model`, or a Chinese 400/422 (the generic handler would answer in English)."""
    try:
        data = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError):  # json.JSONDecodeError, bytes that are not UTF-8, nesting too deep
        return staff_error(400, BAD_REQUEST)
    try:
        return model.model_validate(data)
    except ValidationError:
        return staff_error(422, BAD_REQUEST)


async def _change(operation: Callable[[], Account], staff: Staff, what: str, status: int = 200) -> JSONResponse:
    try:
        account = await asyncio.to_thread(operation)
    except (AccountError, StorageError) as exc:
        return account_error(exc)
    log.info("admin: %s %s %s", staff.username, what, account.username)
    return JSONResponse(status_code=status, content={"user": user_json(account)})


@router.get("/admin/api/users")
async def list_users(staff: AdminStaff, hotline: HotlineDep) -> JSONResponse:
    """Every account (deactivated ones too), by username; never a password or its hash."""
    try:
        accounts = await asyncio.to_thread(Accounts(hotline.database).list)
    except StorageError as exc:
        return account_error(exc)
    return JSONResponse({"users": [user_json(account) for account in accounts], "roles": roles_json(),
                         "me": staff.id})


@router.post("/admin/api/users", status_code=201)
async def add_user(request: Request, staff: AdminStaff, hotline: HotlineDep) -> JSONResponse:
    """{username, display_name, role, password} → 201 {user}; 409 when the username is taken."""
    body = await _body(request, NewUserBody)
    if isinstance(body, JSONResponse):
        return body
    if not body.role.strip():
        return staff_error(422, "请选择角色")
    accounts = Accounts(hotline.database)
    return await _change(lambda: accounts.create(body.username, body.display_name, body.role, body.password, staff),
                         staff, "added", status=201)


@router.post("/admin/api/users/{user_id}/password")
async def reset_password(user_id: RowId, request: Request, staff: AdminStaff, hotline: HotlineDep) -> JSONResponse:
    """{password}: the user's new password (tell them in person; they keep it or ask again)."""
    body = await _body(request, PasswordBody)
    if isinstance(body, JSONResponse):
        return body
    accounts = Accounts(hotline.database)
    return await _change(lambda: accounts.reset_password(user_id, body.password, staff), staff,
                         "reset the password of")


@router.post("/admin/api/users/{user_id}/role")
async def change_role(user_id: RowId, request: Request, staff: AdminStaff, hotline: HotlineDep) -> JSONResponse:
    """{role}: agent | supervisor | kb_editor | admin. An admin cannot demote themselves."""
    body = await _body(request, RoleBody)
    if isinstance(body, JSONResponse):
        return body
    accounts = Accounts(hotline.database)
    return await _change(lambda: accounts.set_role(user_id, body.role, staff), staff, f"set role {body.role} for")


@router.post("/admin/api/users/{user_id}/active")
async def set_active(user_id: RowId, request: Request, staff: AdminStaff, hotline: HotlineDep) -> JSONResponse:
    """{active: false} deactivates (the user's open sessions end at their next request), {active: true}
    reactivates. An admin cannot deactivate themselves."""
    body = await _body(request, ActiveBody)
    if isinstance(body, JSONResponse):
        return body
    accounts = Accounts(hotline.database)
    if body.active:
        return await _change(lambda: accounts.reactivate(user_id, staff), staff, "reactivated")
    return await _change(lambda: accounts.deactivate(user_id, staff), staff, "deactivated")


# -- the audit log -------------------------------------------------------------------------------------


def entry_summary(entry: audit.AuditView) -> str:
    """One line in Chinese for the known kinds of entry; the detail's keys and values for others."""
    detail = entry.detail
    if entry.action == audit.AuditAction.USER:
        change = USER_CHANGE_LABELS.get(str(detail.get("change")), str(detail.get("change", "")))
        if detail.get("change") == "role":
            return f"{change}：{_role_label(detail.get('before'))} → {_role_label(detail.get('after'))}"
        if detail.get("change") == "create":
            return f"{change}（{_role_label(detail.get('role'))}）"
        return change
    if entry.action == audit.AuditAction.RETENTION:
        prefix = "试运行，未删除：" if detail.get("dry_run") else ""
        summary = (f"{prefix}保留 {detail.get('days')} 天；通话 {detail.get('calls', 0)} 通，对话轮次 "
                   f"{detail.get('turns', 0)} 条，录音 {detail.get('recordings', 0)} 个，短信 "
                   f"{detail.get('sms_blanked', 0)} 条")
        return summary + (f"；出错：{detail['error']}" if detail.get("error") else "")
    return "；".join(f"{key}={_short(value)}" for key, value in detail.items())


def _role_label(value: object) -> str:
    try:
        return ROLE_LABELS[UserRole(str(value))]
    except ValueError:
        return str(value)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


@router.get("/admin/api/audit")
async def audit_entries(staff: AuditReader, hotline: HotlineDep, action: str = "", page: str = "1") -> JSONResponse:
    """One page (50 entries) of the audit log, newest first; `action` filters (listen, export, unmask, qa_mark,
    kb_change, user, retention). There is no way to change or delete an entry: the database refuses it too."""
    action = action.strip()
    if action and action not in ACTION_LABELS:
        choices = "、".join(f"{label}（{value}）" for value, label in ACTION_LABELS.items())
        return staff_error(422, f"操作类型无效，可选：{choices}")
    try:
        number = int(page)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_AUDIT_PAGE:
        return staff_error(422, "页码无效")
    try:
        entries, total = await asyncio.to_thread(audit.entries, hotline.database, action or None, AUDIT_PAGE_SIZE,
                                                 (number - 1) * AUDIT_PAGE_SIZE)
    except StorageError as exc:
        log.error("audit log: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    return JSONResponse({
        "entries": [entry.to_json() | {"at_label": local_label(entry.at),
                                       "action_label": ACTION_LABELS.get(entry.action, entry.action),
                                       "summary": entry_summary(entry)} for entry in entries],
        "total": total, "page": number, "page_size": AUDIT_PAGE_SIZE,
        "pages": max(1, -(-total // AUDIT_PAGE_SIZE)),
        "actions": [{"value": value, "label": label} for value, label in ACTION_LABELS.items()],
    })
