"""What every staff page shares: one sign-in (/desk/login) for all roles, each role's home page, the safe `next`
redirect after sign-in, the page headers, and serving a page template to a signed-in member of the right roles."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from telephony.store.models import UserRole
from telephony.web.staff_auth import ACCOUNT_GONE, SESSION_EXPIRED, Staff, StaffAuthError, load_staff

STATIC_DIR = Path(__file__).resolve().parent / "static"
ALL_ROLES: frozenset[UserRole] = frozenset(UserRole)
# Where a member lands after signing in without a `next` page.
HOME_PAGES = {UserRole.AGENT: "/desk", UserRole.SUPERVISOR: "/review", UserRole.KB_EDITOR: "/review/kb",
              UserRole.ADMIN: "/admin"}
# The pages' own prefixes: `next` must be one of these (an open redirect would send a signed-in member anywhere).
STAFF_PREFIXES = ("/desk", "/review", "/admin")
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin"}


def home_page(role: UserRole | str) -> str:
    return HOME_PAGES.get(UserRole(role), "/desk")


def safe_next(path: str | None) -> str | None:
    """`path` if it is a page of this site's staff area (no scheme, no host, no backslash), else None."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or "://" in path:
        return None
    if not any(path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")
               for prefix in STAFF_PREFIXES):
        return None
    if path.startswith("/desk/login"):
        return None
    return path


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})


def render(template: str, values: dict[str, str]) -> str:
    """Replace each {{name}} with its value, HTML-escaped (quotes too: values also go into attributes)."""
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value, quote=True))
    return template


def denied_page(message: str, status: int = 403) -> HTMLResponse:
    body = (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>无权访问</title></head>'
            f'<body style="font-family: sans-serif; padding: 40px"><h1>无权访问</h1><p role="alert">'
            f'{html.escape(message)}</p><p><a href="/desk/login">换一个账号登录</a></p></body></html>')
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


async def staff_page(request: Request, roles: Iterable[UserRole], template: str, values: dict[str, str] | None = None,
                     denied: str = "您的账号没有访问此页面的权限") -> Response:
    """`template` (a file in static/) with the signed-in member and `values` filled in; the sign-in page (coming back
    here afterwards) without a session; a 403 page saying `denied` for another role."""
    try:
        staff: Staff = await asyncio.to_thread(load_staff, request, roles, True, denied)
    except StaffAuthError as exc:
        if exc.status == 401:
            reason = {SESSION_EXPIRED: "reason=expired&", ACCOUNT_GONE: "reason=gone&"}.get(exc.detail, "")
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return redirect(f"/desk/login?{reason}next={quote(here, safe='/')}")
        return denied_page(exc.detail, exc.status)
    try:
        page = (STATIC_DIR / template).read_text(encoding="utf-8")
    except FileNotFoundError:
        return HTMLResponse("页面尚未安装", status_code=503, headers=PAGE_HEADERS)
    filled = {"csrf_token": staff.csrf_token, "display_name": staff.display_name, "username": staff.username,
              "role": staff.role.value} | (values or {})
    return HTMLResponse(render(page, filled), headers=PAGE_HEADERS)
