"""The agent desk's live connection, `/desk/ws`: the queue, offers, call control and the call's audio both ways.

Text frames are JSON (protocol in docs/handoff.md, "The agent desk"); binary frames are the call's audio, 16-bit
little-endian mono PCM at 8 kHz: the caller's to the desk, the agent's microphone to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from telephony.errors import StorageError
from telephony.handoff.acd import AgentQueue, DeskError, QueuedCall, Seat
from telephony.web.deps import app_state
from telephony.web.staff_auth import DESK_ROLES, StaffAuthError, load_staff, websocket_origin_ok

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_NOT_SIGNED_IN = 4401  # the page goes to /desk/login
CLOSE_FORBIDDEN = 4403
CLOSE_STARTING = 1013  # try again later
MAX_AUDIO_FRAME_BYTES = 3200  # 200 ms at 8 kHz; a desk sends 20 ms frames
MAX_TEXT_CHARS = 2000


async def _send(websocket: WebSocket, seat: Seat) -> None:
    while True:
        message = await seat.outbox.get()
        if message is None:
            with contextlib.suppress(RuntimeError):
                await websocket.close()
            return
        if isinstance(message, bytes):
            await websocket.send_bytes(message)
        else:
            await websocket.send_text(json.dumps(message, ensure_ascii=False))


def _apply(queue: AgentQueue, seat: Seat, text: str) -> QueuedCall | None:
    """One control message from the desk (the call, when it was accepted); `DeskError` for a request that cannot be
    carried out now."""
    if len(text) > MAX_TEXT_CHARS:
        raise DeskError("消息过长")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested past the decoder's limit
        raise DeskError("无法识别的消息（不是JSON）") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "ready":
        queue.set_ready(seat, True)
    elif kind == "away":
        queue.set_ready(seat, False)
    elif kind == "accept":
        call_id = message.get("call_id")
        if not isinstance(call_id, str):
            raise DeskError("接听请求缺少来电编号")
        return queue.accept(seat, call_id)
    elif kind == "hold":
        queue.hold(seat, True)
    elif kind == "resume":
        queue.hold(seat, False)
    elif kind == "hangup":
        queue.hang_up(seat)
    else:
        raise DeskError(f"无法识别的操作：{str(kind)[:40]}")
    return None


async def _record_agent(hotline, call: QueuedCall, seat: Seat) -> None:
    """The call's record names the agent who took it (their notes and the supervisors' review need it)."""
    try:
        if not await asyncio.to_thread(hotline.database.set_call_agent, call.call_id, seat.user_id):
            log.warning("call %s: no call record to name agent %s in", call.call_id, seat.username)
    except StorageError as exc:
        log.error("call %s: agent %s not recorded: %s", call.call_id, seat.username, exc)


@router.websocket("/desk/ws")
async def desk_socket(websocket: WebSocket) -> None:
    if not websocket_origin_ok(websocket):  # another site's page: refused at the handshake
        await websocket.close(CLOSE_FORBIDDEN, "origin not allowed")
        return
    try:
        staff = await asyncio.to_thread(load_staff, websocket, DESK_ROLES)
    except StaffAuthError as exc:
        # Accepted, then closed: a handshake refused before accept reaches the page as 1006, without the reason
        await websocket.accept()
        code = {401: CLOSE_NOT_SIGNED_IN, 403: CLOSE_FORBIDDEN}.get(exc.status, CLOSE_STARTING)
        await websocket.close(code, exc.detail)
        return
    hotline = app_state(websocket).hotline
    await websocket.accept()
    if hotline is None:
        await websocket.close(CLOSE_STARTING, "系统正在启动，请稍后再试")
        return
    queue = hotline.agents
    seat = Seat(staff.id, staff.username, staff.display_name)
    queue.sign_in(seat)
    sender = asyncio.create_task(_send(websocket, seat), name=f"desk-{staff.username}")
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            audio, text = message.get("bytes"), message.get("text")
            if audio is not None:
                if len(audio) % 2 or len(audio) > MAX_AUDIO_FRAME_BYTES:
                    seat.post({"type": "error", "message": "音频帧格式不对（应为8kHz 16位PCM，每帧20毫秒）"})
                    continue
                await queue.agent_audio(seat, audio)
            elif text is not None:
                try:
                    accepted = _apply(queue, seat, text)
                except DeskError as exc:
                    seat.post({"type": "error", "message": str(exc)})
                else:
                    if accepted is not None:
                        await _record_agent(hotline, accepted, seat)
            if sender.done():
                break
    except WebSocketDisconnect:
        pass
    finally:
        queue.sign_out(seat)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, RuntimeError):
            await asyncio.wait_for(sender, 2)
        if not sender.done():
            sender.cancel()
