"""The FastAPI app: builds the hotline through the composition root in its lifespan, mounts the routers, maps errors."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from telephony.app import Hotline, engine_choices
from telephony.review import index as review_index
from telephony.review import retention
from telephony.settings import Settings
from telephony.sms.base import SmsGateway
from telephony.web.deps import AppState
from telephony.web.errors import install_error_handlers
from telephony.web.routes import (admin, ask, desk, desk_ws, kb_admin, kb_changes, ops, phone, review, review_reports,
                                   sms)
from telephony.web.staff_auth import install_staff_sessions
from voice.base import AsrEngine, TtsEngine

log = logging.getLogger(__name__)


async def start_voice(hotline: Hotline, asr: AsrEngine | None, tts: TtsEngine | None) -> None:
    """Warm the voice engines in the background: HTTP is up at once, calls wait for the voice side to be ready."""
    try:
        voice = await hotline.start_voice(asr, tts)
    except Exception as exc:  # noqa: BLE001 - any engine failure must leave the text API running
        log.exception("voice engines failed to start: %s", exc)
        hotline.voice_error = str(exc)
        return
    log.info("voice: ready (%s)", voice.readiness()["asr"])
    if hotline.settings.tts_prerender:
        await voice.prerender(hotline.answers.kb)


async def _cancel(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def create_app(settings: Settings | None = None, voice: bool = True, asr: AsrEngine | None = None,
               tts: TtsEngine | None = None, sms_gateway: SmsGateway | None = None) -> FastAPI:
    """The hotline app. `asr`, `tts` and `sms_gateway` inject engines (e.g. the benchmark's, a test's)."""
    settings = settings or Settings()
    state = AppState(voice_enabled=voice)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        hotline = await asyncio.to_thread(Hotline.open, settings, sms_gateway=sms_gateway)
        flushed = await asyncio.to_thread(hotline.journal.replay, hotline.database)
        if flushed:
            log.info("flushed %d journaled turns into the database", flushed)
        for part, choice in engine_choices(settings).items():
            log.info("%s: %s", part, choice)
        log.info("knowledge base: %d items, version %s from %s", len(hotline.answers.kb), hotline.answers.kb_version,
                 hotline.answers.stack.source)
        state.hotline = hotline
        await hotline.sms.dispatcher.start()  # never raises for an unreachable gateway: it reconnects by itself
        voice_task = asyncio.create_task(start_voice(hotline, asr, tts)) if voice else None
        state.ready = True
        stop = asyncio.Event()
        watcher = (asyncio.create_task(kb_admin.watch_builds(hotline.answers, hotline.builds, stop))
                   if settings.kb_watch else None)
        purger = asyncio.create_task(retention.run_daily(hotline.database, settings, stop), name="retention")
        indexer = asyncio.create_task(review_index.run_indexer(
            hotline.database, lambda: {item.id: item.category for item in hotline.answers.kb.items}, stop,
            settings.qa_sample_size), name="review-index")
        try:
            yield
        finally:
            state.ready = False
            stop.set()
            await _cancel(voice_task)
            await _cancel(watcher)
            await _cancel(purger)
            await _cancel(indexer)
            if hotline.voice is not None:
                await hotline.voice.close_lines()
            await hotline.sms.dispatcher.close()
            hotline.close()
            log.info("hotline stopped")

    app = FastAPI(
        title="社保语音热线助手 API",
        description="Social-insurance hotline assistant: text questions, health and readiness.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.hotline_state = state
    install_error_handlers(app)
    install_staff_sessions(app, settings)
    for module in (ops, ask, kb_admin, phone, sms, desk, desk_ws, admin, review_reports, review, kb_changes):
        app.include_router(module.router)
    return app
