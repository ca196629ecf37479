"""Staff sign-in for the agent desk: signed session cookies, a CSRF token per session, roles, sign-in throttling.

Sessions are Starlette's `SessionMiddleware`: the session (user id, username, CSRF token, sign-in time) lives in a
cookie signed with HOTLINE_STAFF_SESSION_SECRET, or with a random key kept in `data_dir/staff_session.key` so every
worker on that data dir accepts the others' cookies. The user is loaded from the database on every request, so a
deactivated (or deleted) account loses access at once; a signed-out cookie is cleared in the browser, but a copy of
it would stay valid until the session's 12 hours are up (the cookie holds no server-side state).

CSRF: the synchronizer token pattern. The token is made at the first visit and again at sign-in; every
state-changing request under /desk carries it, in `X-CSRF-Token` (the JSON API) or the `csrf_token` form field (the
sign-in form). The cookie is also SameSite=Strict.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket, WebSocketException
from fastapi.responses import JSONResponse
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection

from telephony.handoff.accounts import CALLBACK_ROLES, AccountError, require_active_user
from telephony.settings import Environment, Settings
from telephony.store.models import UserRole

log = logging.getLogger(__name__)

SESSION_COOKIE = "hotline_staff"
SESSION_MAX_AGE_S = 12 * 3600
SESSION_KEY_FILE = "staff_session.key"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Who may use the agent desk: those who call tickets' callers back (editors maintain the KB and take no tickets).
DESK_ROLES: frozenset[UserRole] = frozenset(CALLBACK_ROLES)

# Session keys.
_USER_ID = "staff_user_id"
_USERNAME = "staff_username"
_SIGNED_IN_AT = "staff_signed_in_at"
_CSRF = "csrf_token"

WEBSOCKET_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
WEBSOCKET_TRY_AGAIN_LATER = 1013

# What staff read (error `detail`s and the sign-in page).
NOT_SIGNED_IN = "请先登录"
SESSION_EXPIRED = "登录已过期，请重新登录"
ACCOUNT_GONE = "账号不存在或已停用，请重新登录"
NO_DESK_ROLE = "您的账号没有坐席权限"
CSRF_FAILED = "请求校验失败（CSRF），请刷新页面后重试"
STARTING = "系统正在启动，请稍后再试"
TOO_MANY_FAILURES = "登录失败次数过多，请15分钟后再试"

_ENGLISH = {400: "bad request", 401: "not signed in", 403: "forbidden", 404: "not found", 409: "conflict",
            422: "invalid request", 429: "too many requests", 503: "unavailable"}


def staff_error(status: int, detail: str, **extra: object) -> JSONResponse:
    """The desk's error shape: the API's {"error": …} plus the Chinese `detail` staff read."""
    return JSONResponse(status_code=status, content={"error": _ENGLISH.get(status, "error"), "detail": detail} | extra)


class StaffAuthError(Exception):
    """The connection has no usable staff session (401), the wrong role or a bad CSRF token (403), or the hotline is
    not up yet (503); the desk's error handler answers {"error", "detail"}."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Staff:
    """The signed-in staff member of a request or websocket."""

    id: int
    username: str
    display_name: str
    role: UserRole
    csrf_token: str

    @property
    def user_id(self) -> int:  # the audit log's Actor
        return self.id

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "username": self.username, "display_name": self.display_name,
                "role": self.role.value}


# -- the session secret and the middleware ---------------------------------------------------------


def session_secret(settings: Settings) -> str:
    """HOTLINE_STAFF_SESSION_SECRET, else the key in data_dir/staff_session.key, made once (mode 0600). Workers
    starting together race to create it: each writes a private file and hard-links it into place, and the first
    link wins, so all of them read the same key."""
    if settings.staff_session_secret is not None:
        return settings.staff_session_secret.get_secret_value()
    path = Path(settings.data_dir) / SESSION_KEY_FILE
    key = _read_key(path)
    if key:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{SESSION_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(48) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(draft, path)
        log.info("staff sessions: new signing key in %s", path)
    except FileExistsError:
        pass  # another worker made it first: use theirs
    except OSError:  # a file system without hard links
        if not path.exists():
            os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    key = _read_key(path)
    if not key:
        raise RuntimeError(f"staff session key {path} is empty: delete it and restart")
    return key


def _read_key(path: Path) -> str | None:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if key and path.stat().st_mode & 0o077:
        log.warning("staff session key %s was readable by others: mode set to 0600", path)
        path.chmod(0o600)
    return key or None


def install_staff_sessions(app: FastAPI, settings: Settings) -> None:
    """Signed session cookies for staff, the sign-in throttle and the handler of `StaffAuthError`."""
    app.add_middleware(SessionMiddleware, secret_key=session_secret(settings), session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE_S, same_site="strict",
                       https_only=settings.environment is Environment.PRODUCTION)
    app.state.staff_login_throttle = LoginThrottle()
    app.add_exception_handler(StaffAuthError, _staff_auth_error)


async def _staff_auth_error(connection: HTTPConnection, exc: StaffAuthError):
    if isinstance(connection, WebSocket):  # a websocket route called `load_staff` itself and let it raise
        code = WEBSOCKET_TRY_AGAIN_LATER if exc.status == 503 else WEBSOCKET_POLICY_VIOLATION
        await connection.close(code, exc.detail)
        return None
    return staff_error(exc.status, exc.detail)


# -- sign-in throttling ------------------------------------------------------------------------------


class LoginThrottle:
    """After `max_failures` failed sign-ins for one username within `window_s`, that username is refused for
    `lockout_s`. Kept in this process's memory (one per app): a restart forgets it, and each worker counts its own
    failures, so with N workers an attacker gets up to N × `max_failures` tries per window; that still stops
    password guessing at any useful rate."""

    MAX_TRACKED = 10_000  # usernames remembered at most (failures for made-up names must not fill the memory)

    def __init__(self, max_failures: int = 5, window_s: float = 15 * 60, lockout_s: float = 15 * 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str) -> str:
        return username.strip().lower()

    def locked(self, username: str) -> bool:
        key, now = self._key(username), self.clock()
        with self._lock:
            until = self._locked_until.get(key)
            if until is None:
                return False
            if until > now:
                return True
            del self._locked_until[key]
            return False

    def failed(self, username: str) -> bool:
        """Count a failure; True when it locks the username."""
        key, now = self._key(username), self.clock()
        with self._lock:
            if len(self._failures) >= self.MAX_TRACKED:
                self._forget_old(now)
            recent = [at for at in self._failures.get(key, ()) if now - at < self.window_s]
            recent.append(now)
            if len(recent) >= self.max_failures:
                self._failures.pop(key, None)
                self._locked_until[key] = now + self.lockout_s
                return True
            self._failures[key] = recent
            return False

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(self._key(username), None)

    def _forget_old(self, now: float) -> None:
        self._failures = {key: times for key, times in self._failures.items() if now - times[-1] < self.window_s}
        self._locked_until = {key: until for key, until in self._locked_until.items() if until > now}
        while len(self._failures) >= self.MAX_TRACKED:  # still full: drop the oldest entries
            self._failures.pop(next(iter(self._failures)))


def login_throttle(connection: HTTPConnection) -> LoginThrottle:
    return connection.app.state.staff_login_throttle


# -- the session -----------------------------------------------------------------------------------


def csrf_token(connection: HTTPConnection) -> str:
    """This session's CSRF token, made on first use (the sign-in page needs one before anyone signs in)."""
    session = connection.session
    token = session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_CSRF] = token
    return token


def csrf_ok(connection: HTTPConnection, given: str | None) -> bool:
    expected = connection.session.get(_CSRF)
    if not isinstance(expected, str) or not expected or not given:
        return False
    return secrets.compare_digest(given.encode(), expected.encode())


def start_session(connection: HTTPConnection, user_id: int, username: str) -> str:
    """A fresh session for a signed-in user (whatever the old one held is dropped); the new CSRF token."""
    session = connection.session
    session.clear()
    session.update({_USER_ID: user_id, _USERNAME: username, _SIGNED_IN_AT: int(time.time())})
    return csrf_token(connection)


def end_session(connection: HTTPConnection) -> None:
    connection.session.clear()


def signed_in_user_id(connection: HTTPConnection) -> int | None:
    """The session's user id when it has one and its 12 hours are not up (unchecked against the database)."""
    user_id = connection.session.get(_USER_ID)
    since = connection.session.get(_SIGNED_IN_AT)
    if not isinstance(user_id, int) or not isinstance(since, int):
        return None
    if time.time() - since > SESSION_MAX_AGE_S:
        return None
    return user_id


def load_staff(connection: HTTPConnection, roles: Iterable[UserRole | str] = DESK_ROLES,
               check_csrf: bool = True, denied: str = NO_DESK_ROLE) -> Staff:
    """The signed-in staff member, checked against the database now; `StaffAuthError` otherwise. Blocking (one
    query). For an HTTP request with an unsafe method the `X-CSRF-Token` header must match the session's token."""
    allowed = frozenset(UserRole(role) for role in roles)
    session = connection.session
    user_id = session.get(_USER_ID)
    if user_id is None:
        raise StaffAuthError(401, NOT_SIGNED_IN)
    if signed_in_user_id(connection) is None:
        session.clear()
        raise StaffAuthError(401, SESSION_EXPIRED)
    if (check_csrf and connection.scope["type"] == "http" and connection.scope["method"] not in SAFE_METHODS
            and not csrf_ok(connection, connection.headers.get(CSRF_HEADER))):
        raise StaffAuthError(403, CSRF_FAILED)
    hotline = connection.app.state.hotline_state.hotline
    if hotline is None:
        raise StaffAuthError(503, STARTING)
    try:
        with hotline.database.session() as db:
            user = require_active_user(db, user_id)
            if user.username != session.get(_USERNAME):  # the id was deleted and given to someone else
                raise AccountError("the session's username does not match")
            staff = Staff(user.id, user.username, user.display_name, user.role, csrf_token(connection))
    except AccountError:
        session.clear()
        raise StaffAuthError(401, ACCOUNT_GONE) from None
    if staff.role not in allowed:
        raise StaffAuthError(403, denied)
    return staff


def staff_member(roles: Iterable[UserRole | str] = DESK_ROLES,
                 denied: str = NO_DESK_ROLE) -> Callable[[HTTPConnection], Staff]:
    """A dependency giving the signed-in `Staff` whose role is one of `roles`, for HTTP routes and websockets alike.

    HTTP: 401/403/503 JSON ({"error", "detail"}) through the handler `install_staff_sessions` adds; unsafe methods
    (POST, PUT, PATCH, DELETE) also need the `X-CSRF-Token` header. WebSocket: the connection is closed before it is
    accepted (a websocket has no CSRF token; check `websocket_origin_ok` in the route)."""
    allowed = frozenset(UserRole(role) for role in roles)

    def dependency(connection: HTTPConnection) -> Staff:  # sync: FastAPI runs it in a thread (one DB query)
        try:
            return load_staff(connection, allowed, denied=denied)
        except StaffAuthError as exc:
            if connection.scope["type"] == "websocket":
                code = WEBSOCKET_TRY_AGAIN_LATER if exc.status == 503 else WEBSOCKET_POLICY_VIOLATION
                raise WebSocketException(code, exc.detail) from None
            raise

    return dependency


def websocket_origin_ok(websocket: HTTPConnection) -> bool:
    """Whether a websocket's Origin is this site (host:port of Origin equals the Host header); browsers always send
    Origin, so a missing one is refused. Cross-site websocket hijacking is also stopped by the SameSite=Strict
    cookie; this holds where a browser does not honour SameSite. Behind a proxy, the proxy must keep the Host."""
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host")
    if not origin or not host:
        return False
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = parts.hostname, parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not origin_host:
        return False
    default = 443 if parts.scheme == "https" else 80
    try:
        host_parts = urlsplit(f"//{host}")
        host_name, host_port = host_parts.hostname, host_parts.port
    except ValueError:
        return False
    return origin_host == host_name and (origin_port or default) == (host_port or default)


__all__ = [
    "CSRF_FIELD", "CSRF_HEADER", "DESK_ROLES", "LoginThrottle", "SESSION_COOKIE", "Staff", "StaffAuthError",
    "csrf_ok", "csrf_token", "end_session", "install_staff_sessions", "load_staff", "login_throttle",
    "staff_error", "staff_member", "start_session", "websocket_origin_ok",
]
