"""KB administration: switch to the published build now (the file watch also does it by itself)."""

from __future__ import annotations

import asyncio
import logging

import watchfiles
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kb.builds import BuildStore
from kb.errors import KbError
from rag.errors import CalibrationError
from telephony.answers import Answers
from telephony.web.deps import AdminDep, AnswersDep
from telephony.web.errors import error_response

log = logging.getLogger(__name__)
router = APIRouter(tags=["knowledge base"])
BUILD_WATCH_DEBOUNCE_MS = 200


@router.post("/api/admin/kb/reload", dependencies=[AdminDep])
async def kb_reload(answers: AnswersDep) -> JSONResponse:
    """Switch to the currently published KB build now."""
    try:
        old, new = await asyncio.to_thread(answers.reload)
    except (KbError, CalibrationError, OSError, ValueError) as exc:
        return error_response(409, f"build not loaded, still serving {answers.kb_version}: {exc}")
    return JSONResponse({"previous": old, "current": new, "items": len(answers.kb)})


async def watch_builds(answers: Answers, builds: BuildStore, stop: asyncio.Event) -> None:
    """Switch to a newly published build when `hotline kb build` moves the CURRENT pointer."""
    builds.root.mkdir(parents=True, exist_ok=True)
    async for _changes in watchfiles.awatch(builds.root, stop_event=stop, debounce=BUILD_WATCH_DEBOUNCE_MS,
                                            recursive=False):
        current = builds.current()
        if current and current != answers.kb_version:
            try:
                await asyncio.to_thread(answers.reload)
            except (KbError, CalibrationError, OSError, ValueError) as exc:
                log.error("new knowledge-base build %s not loaded, still serving %s: %s", current,
                          answers.kb_version, exc)
