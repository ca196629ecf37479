"""Health and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from telephony.app import engine_choices
from telephony.settings import HandoffMode
from telephony.web.deps import StateDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    hotline = state.hotline
    if not state.ready or hotline is None:
        return JSONResponse(status_code=503, content={"status": "starting"})
    database_ok = await asyncio.to_thread(hotline.database.ping)
    voice = (hotline.voice.readiness() if hotline.voice is not None
             else {"asr": f"failed: {hotline.voice_error}"} if hotline.voice_error
             else {"asr": "warming up" if state.voice_enabled else "disabled"})
    body = {
        "status": "ready" if database_ok else "degraded",
        "engines": engine_choices(hotline.settings),
        "database": "ok" if database_ok else "unreachable (turns are journaled locally)",
        "voice": voice,
        "kb": {"items": len(hotline.answers.kb), "version": hotline.answers.kb_version},
        "sms": {"gateway": hotline.sms.gateway_name, "state": hotline.sms.dispatcher.gateway.status()},
        "handoff": {"mode": hotline.settings.handoff_mode.value},
    }
    if hotline.settings.handoff_mode is HandoffMode.DESK:
        body["handoff"]["queue"] = hotline.agents.status()  # this worker's desk queue
    return JSONResponse(status_code=200, content=body)
