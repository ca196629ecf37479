"""FastAPI app factory: health, readiness, the ask endpoint, errors mapped to clear JSON."""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import watchfiles
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb.errors import KbError
from rag.base import ConversationContext
from rag.errors import CalibrationError, InvalidQuestionError
from telephony.errors import UnknownConversationError
from telephony.service import HotlineService
from telephony.settings import Settings
from telephony.store import CallChannel, Database

log = logging.getLogger(__name__)


class AskContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_items: list[str] = Field(default_factory=list, max_length=10, description="Item ids answered before")
    previous_questions: list[str] = Field(default_factory=list, max_length=10, description="Earlier questions")
    offered_items: list[str] = Field(default_factory=list, max_length=5,
                                     description="Item ids the previous clarifying question offered to choose from")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The caller's question as text (e.g. an ASR transcript)")
    conversation_id: str | None = Field(default=None, max_length=64, description="Continue an earlier conversation")
    context: AskContext | None = Field(default=None, description="Explicit context; else taken from the conversation")


class AskResponse(BaseModel):
    question: str
    action: str = Field(description="answer | clarify | handoff")
    spoken: str
    sms: str
    citations: list[str]
    items: list[str]
    confidence: float
    reason: str
    conversation_id: str | None
    turn: int | None


def error_response(status: int, message: str, detail: object = None) -> JSONResponse:
    body: dict[str, object] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(status_code=status, content=body)


async def watch_builds(service: HotlineService, stop: asyncio.Event) -> None:
    """Switch to a newly published build when `hotline kb build` moves the CURRENT pointer."""
    root = service.builds.root
    root.mkdir(parents=True, exist_ok=True)
    async for _changes in watchfiles.awatch(root, stop_event=stop, debounce=200, recursive=False):
        current = service.builds.current()
        if current and current != service.stack.version:
            try:
                await asyncio.to_thread(service.reload)
            except (KbError, CalibrationError, OSError, ValueError) as exc:
                log.error("new knowledge-base build %s not loaded, still serving %s: %s", current,
                          service.stack.version, exc)


def admin_denied(request: Request, settings: Settings) -> JSONResponse | None:
    if settings.admin_token is None:
        return error_response(403, "admin endpoints are disabled: set HOTLINE_ADMIN_TOKEN")
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return error_response(401, "missing bearer token")
    if not secrets.compare_digest(header[7:].strip().encode(), settings.admin_token.get_secret_value().encode()):
        return error_response(403, "wrong admin token")
    return None


STATIC_DIR = Path(__file__).resolve().parent / "static"


async def start_voice(app: FastAPI, settings: Settings, service: HotlineService, voice_options: dict) -> None:
    """Warm the voice engines in the background: HTTP is up at once, calls wait for `voice` to be ready."""
    from telephony.voice_gateway import VoiceStack

    try:
        stack = await VoiceStack.start(settings, service, **voice_options)
    except Exception as exc:  # noqa: BLE001 - any engine failure must leave the text API running
        log.exception("voice engines failed to start: %s", exc)
        app.state.voice_error = str(exc)
        return
    app.state.voice = stack
    log.info("voice: ready (%s)", stack.readiness()["asr"])
    if settings.tts_prerender:
        await stack.prerender()


def create_app(settings: Settings | None = None, voice: bool = True, **voice_options) -> FastAPI:
    """The hotline app. `voice_options` (asr=, tts=) inject engines, e.g. the benchmark's."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = False
        database = Database(settings.resolved_database_url)
        await asyncio.to_thread(database.migrate)
        service = await asyncio.to_thread(HotlineService, settings, database)
        flushed = await asyncio.to_thread(service.journal.replay, database)
        if flushed:
            log.info("flushed %d journaled turns into the database", flushed)
        for part, choice in settings.engine_choices().items():
            log.info("%s: %s", part, choice)
        log.info("knowledge base: %d items, version %s from %s", len(service.kb), service.kb_version,
                 service.stack.source)
        app.state.service = service
        app.state.voice = None
        app.state.voice_error = None
        voice_task = asyncio.create_task(start_voice(app, settings, service, voice_options)) if voice else None
        app.state.ready = True
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_builds(service, stop)) if settings.kb_watch else None
        try:
            yield
        finally:
            app.state.ready = False
            stop.set()
            if voice_task is not None and not voice_task.done():
                voice_task.cancel()
                with suppress(asyncio.CancelledError):
                    await voice_task
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            database.close()
            log.info("hotline stopped")

    app = FastAPI(
        title="社保语音热线助手 API",
        description="Social-insurance hotline assistant: text questions, health and readiness.",
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return error_response(400, "request body is not valid JSON")
        detail = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg")} for e in errors]
        return error_response(422, "request body does not match the schema", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return error_response(500, "internal error; the incident was logged")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        if not getattr(request.app.state, "ready", False):
            return JSONResponse(status_code=503, content={"status": "starting"})
        service: HotlineService = request.app.state.service
        database_ok = await asyncio.to_thread(service.database.ping)
        body = {
            "status": "ready" if database_ok else "degraded",
            "engines": settings.engine_choices(),
            "database": "ok" if database_ok else "unreachable (turns are journaled locally)",
            "voice": (request.app.state.voice.readiness() if request.app.state.voice is not None
                      else {"asr": f"failed: {request.app.state.voice_error}"} if request.app.state.voice_error
                      else {"asr": "warming up" if voice else "disabled"}),
            "kb": {"items": len(service.kb), "version": service.kb_version},
        }
        return JSONResponse(status_code=200, content=body)

    @app.post("/api/ask", response_model=AskResponse, tags=["answers"])
    async def ask(request: Request, body: AskRequest) -> JSONResponse:
        service: HotlineService = request.app.state.service
        try:
            context = None
            if body.context is not None:
                context = ConversationContext(tuple(body.context.previous_items), tuple(body.context.previous_questions),
                                              tuple(body.context.offered_items))
            result = await service.ask(body.question, CallChannel.API, body.conversation_id, context)
        except InvalidQuestionError as exc:
            return error_response(422, str(exc))
        except UnknownConversationError as exc:
            return error_response(404, str(exc))
        payload = result.answer.to_json() | {"conversation_id": result.call_id, "turn": result.turn_seq}
        return JSONResponse(payload)

    @app.get("/api/kb/search", tags=["knowledge base"])
    async def kb_search(request: Request, q: str = Query(min_length=1, max_length=500), limit: int = Query(10, ge=1, le=50)) -> dict:
        """Retrieval hit-test for staff: the ranked items with each channel's score."""
        stack = request.app.state.service.stack
        ranked = stack.retriever.retrieve(q, limit=limit)
        return {
            "query": q,
            "kb_version": stack.version,
            "results": [
                {"item": scored.item_id, "title": stack.kb.get(scored.item_id).title, "score": round(scored.score, 4),
                 "channels": {name: round(value, 4) for name, value in scored.channel_scores.items()},
                 "matched": scored.matched_alias}
                for scored in ranked
            ],
        }

    @app.post("/api/admin/kb/reload", tags=["knowledge base"])
    async def kb_reload(request: Request) -> JSONResponse:
        """Switch to the currently published KB build now (the file watch does this by itself)."""
        denied = admin_denied(request, settings)
        if denied is not None:
            return denied
        service: HotlineService = request.app.state.service
        try:
            old, new = await asyncio.to_thread(service.reload)
        except (KbError, CalibrationError, OSError, ValueError) as exc:
            return error_response(409, f"build not loaded, still serving {service.stack.version}: {exc}")
        return JSONResponse({"previous": old, "current": new, "items": len(service.kb)})

    @app.websocket("/media-stream")
    async def media_stream(websocket: WebSocket) -> None:
        """Twilio-compatible bidirectional Media Streams (also used by the /phone softphone)."""
        from telephony.voice_gateway import MediaStreamCall

        stack = websocket.app.state.voice
        if stack is None:
            await websocket.close(code=1013)  # try again later: engines are still warming up
            return
        channel = CallChannel.SOFTPHONE if websocket.query_params.get("channel") == "softphone" else CallChannel.TWILIO
        await MediaStreamCall(stack, websocket, channel).run()

    @app.get("/phone", response_class=HTMLResponse, tags=["voice"])
    async def phone() -> HTMLResponse:
        """Browser softphone: call the hotline from a microphone."""
        return HTMLResponse((STATIC_DIR / "phone.html").read_text(encoding="utf-8"))

    @app.get("/api/phone/session", tags=["voice"])
    async def phone_session(request: Request) -> JSONResponse:
        """A short-lived media-stream URL for the softphone page."""
        stack = request.app.state.voice
        if stack is None:
            return error_response(503, "voice engines are not ready yet")
        return JSONResponse({"websocket_url": f"/media-stream?token={stack.softphone_token()}&channel=softphone"})

    return app
