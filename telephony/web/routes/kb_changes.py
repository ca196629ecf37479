"""The KB-gap loop over HTTP: supervisors propose changes from reviewed turns (POST /review/api/kb-changes, from the
call page), KB editors apply or reject them at /review/kb (「知识库修改」). A staff session, the CSRF token on every
POST, and errors that read in Chinese ({"error", "detail", "errors"?}). docs/review.md ("The KB-gap loop")
describes the flow; `telephony.review.kb_changes` does the work."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from telephony.errors import StorageError, TelephonyError
from telephony.kb_publish import build_store
from telephony.review.kb_changes import (
    DECIDE_ROLES,
    PROPOSE_ROLES,
    VIEW_ROLES,
    AlreadyDecidedError,
    DuplicateProposalError,
    InvalidDraftError,
    InvalidNoteError,
    InvalidQuestionError,
    ItemFileError,
    KbChangeBusyError,
    KbChanges,
    KbCheckFailedError,
    QuestionExistsError,
    UnknownChangeError,
    UnknownItemError,
    UnknownTurnError,
)
from telephony.web.deps import HotlineDep, RowId
from telephony.web.staff_auth import Staff, staff_error, staff_member
from telephony.web.staff_pages import staff_page

log = logging.getLogger(__name__)
router = APIRouter(tags=["review"])

NO_VIEW_ROLE = "您的账号没有查看知识库修改的权限"
NO_PROPOSE_ROLE = "只有质检主管和管理员可以提出知识库修改"
NO_DECIDE_ROLE = "只有知识库编辑和管理员可以应用或驳回知识库修改"
DATABASE_DOWN = "数据库暂时不可用，请稍后重试"
PAGE_CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

Viewer = Annotated[Staff, Depends(staff_member(VIEW_ROLES, denied=NO_VIEW_ROLE))]
Proposer = Annotated[Staff, Depends(staff_member(PROPOSE_ROLES, denied=NO_PROPOSE_ROLE))]
Editor = Annotated[Staff, Depends(staff_member(DECIDE_ROLES, denied=NO_DECIDE_ROLE))]


class QuestionProposal(BaseModel):
    kind: Literal["add_question"]
    call_id: str = Field(min_length=1, max_length=64)
    turn_seq: int = Field(ge=1)
    item_id: str = Field(min_length=1, max_length=128)
    question: str = Field(max_length=2000)


class ItemProposal(BaseModel):
    kind: Literal["new_item"]
    call_id: str = Field(min_length=1, max_length=64)
    turn_seq: int = Field(ge=1)
    draft: dict[str, Any]


Proposal = Annotated[QuestionProposal | ItemProposal, Field(discriminator="kind")]


class Rejection(BaseModel):
    note: str = Field(default="", max_length=2000)


class DraftEdit(BaseModel):
    draft: dict[str, Any]


def service(request: Request, hotline: HotlineDep) -> KbChanges:
    """One service per running hotline (it caches the items directory's titles)."""
    cached = getattr(request.app.state, "kb_changes", None)
    if cached is None or cached.database is not hotline.database:
        cached = KbChanges(hotline.database, hotline.settings)
        request.app.state.kb_changes = cached
    return cached


ServiceDep = Annotated[KbChanges, Depends(service)]


def refusal(exc: TelephonyError) -> JSONResponse:
    """A refusal as the pages show it: `detail` in Chinese, `errors` (strings) listing each problem."""
    if isinstance(exc, UnknownChangeError):
        return staff_error(404, str(exc))
    if isinstance(exc, InvalidDraftError):
        errors = [f"{field}：{message}" for field, messages in exc.errors.items() for message in messages]
        return staff_error(422, str(exc), errors=errors, fields=exc.errors)
    if isinstance(exc, (UnknownTurnError, UnknownItemError, InvalidQuestionError, InvalidNoteError)):
        return staff_error(422, str(exc))
    if isinstance(exc, DuplicateProposalError):
        return staff_error(409, str(exc), change_id=exc.change_id)
    if isinstance(exc, KbCheckFailedError):
        return staff_error(409, str(exc), errors=exc.errors)
    if isinstance(exc, (AlreadyDecidedError, QuestionExistsError, ItemFileError)):
        return staff_error(409, str(exc))
    if isinstance(exc, KbChangeBusyError):
        return staff_error(503, str(exc))
    if isinstance(exc, StorageError):
        log.error("KB changes: %s", exc)
        return staff_error(503, DATABASE_DOWN)
    return staff_error(409, str(exc))


async def _run(call, *args) -> tuple[Any, JSONResponse | None]:
    try:
        return await asyncio.to_thread(call, *args), None
    except TelephonyError as exc:
        return None, refusal(exc)


# -- the page -------------------------------------------------------------------------------------------


@router.get("/review/kb", response_class=HTMLResponse, include_in_schema=False)
async def kb_changes_page(request: Request) -> Response:
    """知识库修改: proposals, pending first; KB editors and admins apply or reject, supervisors see them."""
    nonce = secrets.token_urlsafe(18)
    response = await staff_page(request, VIEW_ROLES, "kb_changes.html", {"nonce": nonce}, denied=NO_VIEW_ROLE)
    if isinstance(response, HTMLResponse) and response.status_code == 200:
        response.headers["Content-Security-Policy"] = PAGE_CSP.format(nonce=nonce)
    return response


# -- the API ---------------------------------------------------------------------------------------------


@router.get("/review/api/kb-changes")
async def list_changes(staff: Viewer, changes: ServiceDep,
                       status: Annotated[Literal["proposed", "applied", "rejected"] | None, Query()] = None,
                       limit: Annotated[int, Query(ge=1, le=200)] = 50,
                       offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    """Changes (pending first), how many match, the published KB version, and what the viewer may do."""
    result, error = await _run(changes.list, status, limit, offset)
    if error is not None:
        return error
    rows, total = result
    current = await asyncio.to_thread(build_store(changes.settings).current)
    return JSONResponse({"changes": [row.to_json() for row in rows], "total": total, "kb_version": current,
                         "can_decide": staff.role in DECIDE_ROLES, "can_propose": staff.role in PROPOSE_ROLES})


@router.get("/review/api/kb-changes/{change_id}")
async def get_change(_staff: Viewer, changes: ServiceDep, change_id: RowId) -> Response:
    row, error = await _run(changes.get, change_id)
    return error or JSONResponse(row.to_json())


@router.post("/review/api/kb-changes", status_code=201)
async def propose(staff: Proposer, changes: ServiceDep, proposal: Annotated[Proposal, Body()]) -> Response:
    """「加为常见问法」 or 「新建条目草稿」 from a turn: 201 with the change."""
    if isinstance(proposal, QuestionProposal):
        row, error = await _run(changes.propose_question, staff, proposal.call_id, proposal.turn_seq,
                                proposal.item_id, proposal.question)
    else:
        row, error = await _run(changes.propose_item, staff, proposal.call_id, proposal.turn_seq, proposal.draft)
    return error or JSONResponse(row.to_json(), status_code=201)


@router.post("/review/api/kb-changes/{change_id}/apply")
async def apply_change(staff: Editor, changes: ServiceDep, change_id: RowId) -> Response:
    """Write it into the item files, check, build and publish: the change with its new `kb_version`; 409 with the
    check's `errors` when the check fails (the files are put back and the change stays proposed)."""
    row, error = await _run(changes.apply, staff, change_id)
    return error or JSONResponse(row.to_json())


@router.post("/review/api/kb-changes/{change_id}/draft")
async def edit_draft(staff: Editor, changes: ServiceDep, change_id: RowId,
                     edit: Annotated[DraftEdit, Body()]) -> Response:
    """A KB editor completes a proposed new item's draft: the change with the draft's remaining `problems` (none:
    it can be applied); 422 with `errors` for what cannot be stored at all (personal data, another id)."""
    row, error = await _run(changes.update_draft, staff, change_id, edit.draft)
    return error or JSONResponse(row.to_json())


@router.post("/review/api/kb-changes/{change_id}/reject")
async def reject_change(staff: Editor, changes: ServiceDep, change_id: RowId,
                        rejection: Annotated[Rejection, Body()]) -> Response:
    row, error = await _run(changes.reject, staff, change_id, rejection.note)
    return error or JSONResponse(row.to_json())
