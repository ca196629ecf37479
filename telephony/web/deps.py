"""Typed dependencies the routes declare: the running hotline, its parts, and the admin check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, WebSocket
from starlette.requests import HTTPConnection

from telephony.answers import Answers, TextConversations
from telephony.app import Hotline


class AppState:
    """What `app.state` holds, typed: the hotline once its lifespan has built it."""

    def __init__(self, voice_enabled: bool) -> None:
        self.hotline: Hotline | None = None
        self.ready = False
        self.voice_enabled = voice_enabled


def app_state(connection: HTTPConnection) -> AppState:
    return connection.app.state.hotline_state


def hotline(connection: HTTPConnection) -> Hotline:
    state = app_state(connection)
    if state.hotline is None:
        raise HTTPException(503, "the hotline is starting")
    return state.hotline


def answers(hotline: Annotated[Hotline, Depends(hotline)]) -> Answers:
    return hotline.answers


def conversations(hotline: Annotated[Hotline, Depends(hotline)]) -> TextConversations:
    return hotline.conversations


def require_admin(request: Request, hotline: Annotated[Hotline, Depends(hotline)]) -> None:
    """Bearer token check for admin endpoints (403 when none is configured: they are off)."""
    token = hotline.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: set HOTLINE_ADMIN_TOKEN")
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise HTTPException(401, "missing bearer token")
    if not secrets.compare_digest(header[7:].strip().encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token")


StateDep = Annotated[AppState, Depends(app_state)]
HotlineDep = Annotated[Hotline, Depends(hotline)]
AnswersDep = Annotated[Answers, Depends(answers)]
ConversationsDep = Annotated[TextConversations, Depends(conversations)]
AdminDep = Depends(require_admin)
# A row id in a path (/api/sms/{message_id}, …): the database's signed 64-bit range, so a larger number is a 422
# and not an OverflowError from the driver (a 500).
RowId = Annotated[int, Path(ge=-(2**63), le=2**63 - 1)]


def websocket_hotline(websocket: WebSocket) -> Hotline | None:
    return app_state(websocket).hotline
