"""Text questions (`POST /api/ask`) and the staff's retrieval hit-test."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rag.base import Action, ConversationContext
from rag.errors import InvalidQuestionError
from telephony.errors import UnknownConversationError
from telephony.store import CallChannel
from telephony.web.deps import AnswersDep, ConversationsDep
from telephony.web.errors import error_response

router = APIRouter()


class AskContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_items: list[str] = Field(default_factory=list, max_length=10, description="Item ids answered before")
    previous_questions: list[str] = Field(default_factory=list, max_length=10, description="Earlier questions")
    offered_items: list[str] = Field(default_factory=list, max_length=5,
                                     description="Item ids the previous reply offered: to choose from after a "
                                                 "clarifying question, to switch to after an answer by name")
    last_action: Action | None = Field(default=None, description="What the previous reply did (answer | clarify | "
                                                                 "handoff): with `answer`, offered_items is a switch")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The caller's question as text (e.g. an ASR transcript)")
    conversation_id: str | None = Field(default=None, max_length=64, description="Continue an earlier conversation")
    context: AskContext | None = Field(default=None, description="Explicit context; else taken from the conversation")


class AskResponse(BaseModel):
    question: str
    action: str = Field(description="answer | clarify | handoff")
    clarify: str | None = Field(default=None, description="choice | confirm | details | repeat, with clarify")
    offered_items: list[str] = Field(default_factory=list, description="Services the caller may pick or switch to")
    spoken: str
    sms: str
    citations: list[str]
    items: list[str]
    confidence: float
    reason: str
    conversation_id: str | None
    turn: int | None


@router.post("/api/ask", response_model=AskResponse, tags=["answers"])
async def ask(body: AskRequest, conversations: ConversationsDep) -> JSONResponse:
    context = None
    if body.context is not None:
        context = ConversationContext(tuple(body.context.previous_items), tuple(body.context.previous_questions),
                                      tuple(body.context.offered_items), body.context.last_action)
    try:
        reply = await conversations.ask(body.question, CallChannel.API, body.conversation_id, context)
    except InvalidQuestionError as exc:
        return error_response(422, str(exc))
    except UnknownConversationError as exc:
        return error_response(404, str(exc))
    return JSONResponse(reply.answer.to_json() | {"conversation_id": reply.conversation_id, "turn": reply.turn_seq})


@router.get("/api/kb/search", tags=["knowledge base"])
async def kb_search(answers: AnswersDep, q: str = Query(min_length=1, max_length=500),
                    limit: int = Query(10, ge=1, le=50)) -> dict:
    """Retrieval hit-test for staff: the ranked items with each channel's score."""
    stack = answers.stack
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
