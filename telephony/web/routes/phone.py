"""Phone lines served by the web app: the Twilio-compatible media stream and the browser softphone."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse

from telephony.store import CallChannel
from telephony.transports.twilio.gateway import MediaStreamTransport
from telephony.web.deps import HotlineDep, websocket_hotline
from telephony.web.errors import error_response

log = logging.getLogger(__name__)
router = APIRouter(tags=["voice"])
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
WEBSOCKET_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
WEBSOCKET_TRY_AGAIN_LATER = 1013  # engines are still warming up


@router.websocket("/media-stream")
async def media_stream(websocket: WebSocket) -> None:
    """Twilio-compatible bidirectional Media Streams (also used by the /phone softphone)."""
    hotline = websocket_hotline(websocket)
    voice = hotline.voice if hotline is not None else None
    if hotline is None or voice is None:
        await websocket.close(code=WEBSOCKET_TRY_AGAIN_LATER)
        return
    token = websocket.query_params.get("token", "")
    if not hotline.auth.authorized(token, websocket.headers.get("x-twilio-signature"), str(websocket.url)):
        log.warning("media stream refused: missing or wrong token/signature from %s", websocket.client)
        await websocket.close(code=WEBSOCKET_POLICY_VIOLATION)
        return
    await websocket.accept()
    channel = CallChannel.SOFTPHONE if websocket.query_params.get("channel") == "softphone" else CallChannel.TWILIO
    transport = MediaStreamTransport(websocket, channel, voice.line)
    try:
        if await transport.answer():
            await voice.runner.run(transport)
    finally:
        await transport.hang_up()


@router.get("/phone", response_class=HTMLResponse)
async def phone() -> HTMLResponse:
    """Browser softphone: call the hotline from a microphone."""
    return HTMLResponse((STATIC_DIR / "phone.html").read_text(encoding="utf-8"))


@router.get("/api/phone/session")
async def phone_session(hotline: HotlineDep) -> JSONResponse:
    """A short-lived media-stream URL for the softphone page."""
    if hotline.voice is None:
        return error_response(503, "voice engines are not ready yet")
    return JSONResponse({"websocket_url": f"/media-stream?token={hotline.auth.softphone_token()}&channel=softphone"})
