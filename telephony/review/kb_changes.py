"""The KB-gap loop's change proposals: from a reviewed turn a supervisor proposes 「加为常见问法」 (the caller's words
become a question of an existing item) or 「新建条目草稿」 (a draft of a new item); a KB editor applies it to the item
files through the KB build, or rejects it.

Applying never edits what a server is serving: it edits the item's file in settings.kb_dir (appending to the front
matter's `questions:` and leaving every other byte alone, or writing the new item's file), runs the check of `hotline
kb check`, and builds and publishes a new version as `hotline kb build` does (`telephony.kb_publish`); running
servers switch to it by themselves. A failed check or build puts the files back byte for byte and leaves the change
proposed.

Concurrency: applies take a file lock in data_dir (every worker serving a KB shares its data_dir, where the builds
live), so two editors or two workers never interleave their edits and builds; the change is claimed with a
conditional UPDATE (proposed → applied) before any file is touched, so a second apply of the same change is refused
whatever process runs it. A journal in data_dir records the files' bytes before the edit until the apply is
finished: if the process dies in between, the next apply puts the files back (or, when the build was already
published, records the change as applied with that version).

Blocking (SQLAlchemy, file I/O, the build): web code calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from filelock import FileLock
from filelock import Timeout as LockTimeout
from pydantic import ValidationError
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from kb.authoring import (
    ItemEditError,
    append_question,
    clean_question,
    draft_local_facts,
    item_path,
    normalize_question,
    render_item,
)
from kb.errors import KbError
from kb.loader import KnowledgeBase, item_files, load_knowledge_base
from kb.schema import ID_PATTERN, SECTION_FIELDS, ServiceItem
from telephony.errors import TelephonyError
from telephony.kb_publish import BuildRefused, Published, build_and_publish, check_items
from telephony.review import audit
from telephony.review.audit import Actor, AuditAction
from telephony.review.privacy import find_personal, mask_personal
from telephony.settings import Settings
from telephony.store.database import Database
from telephony.store.models import Call, KbChange, KbChangeKind, KbChangeStatus, Turn, UserRole

log = logging.getLogger(__name__)

# Who may do what (the web pages and the CLI check these; the service records who did it).
VIEW_ROLES = frozenset({UserRole.SUPERVISOR, UserRole.KB_EDITOR, UserRole.ADMIN})
PROPOSE_ROLES = frozenset({UserRole.SUPERVISOR, UserRole.ADMIN})
DECIDE_ROLES = frozenset({UserRole.KB_EDITOR, UserRole.ADMIN})

QUESTION_MIN_CHARS = 2
QUESTION_MAX_CHARS = 200
NOTE_MAX_CHARS = 500
LOCK_FILE = "kb-changes.lock"
PROPOSE_LOCK_FILE = "kb-changes.propose.lock"
JOURNAL_FILE = "kb-changes.journal.json"
# A new item's draft proposed incomplete is stored as {DRAFT_INCOMPLETE: fields, DRAFT_PROBLEMS: {field: [problem]}}
# until an editor completes it; a complete draft is stored as the item itself.
DRAFT_INCOMPLETE = "incomplete_draft"
DRAFT_PROBLEMS = "problems"
BUREAU_TIME = ZoneInfo("Asia/Shanghai")


# -- errors: str() is the Chinese message staff read -------------------------------------------------------


class KbChangeError(TelephonyError):
    """A proposal or a decision was refused."""


class UnknownTurnError(KbChangeError):
    pass


class UnknownItemError(KbChangeError):
    pass


class InvalidQuestionError(KbChangeError):
    pass


class QuestionExistsError(KbChangeError):
    """The question is already the item's question or alias, or another item's question."""


class DuplicateProposalError(KbChangeError):
    def __init__(self, message: str, change_id: int) -> None:
        super().__init__(message)
        self.change_id = change_id


class InvalidDraftError(KbChangeError):
    """`errors`: field (e.g. "aliases", "sections.materials", "policy_basis.0.document") → problems."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        count = sum(len(problems) for problems in errors.values())
        super().__init__(f"条目草稿有 {count} 处问题，请按字段修改后再提交")
        self.errors = errors


class InvalidNoteError(KbChangeError):
    pass


class UnknownChangeError(KbChangeError):
    def __init__(self, change_id: int) -> None:
        super().__init__(f"没有编号为 {change_id} 的知识库修改")
        self.change_id = change_id


class AlreadyDecidedError(KbChangeError):
    def __init__(self, change_id: int, status: str, decided_by: str | None) -> None:
        what = {"applied": "已应用", "rejected": "已驳回"}.get(status, status)
        by = f"（{decided_by}）" if decided_by else ""
        super().__init__(f"修改 #{change_id} {what}{by}，不能再处理")
        self.change_id = change_id
        self.status = status


class ItemFileError(KbChangeError):
    """The item's file cannot be edited as proposed (the item is gone, the question is there already, a new item's
    file exists, a form the editor must change by hand)."""


class KbCheckFailedError(KbChangeError):
    """The check (or the build) refused the edited KB; the files were put back. `errors` are the check's."""

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


class KbChangeBusyError(KbChangeError):
    pass


# -- the view of a change ----------------------------------------------------------------------------------------


def _utc(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).isoformat()


@dataclass(frozen=True)
class KbChangeView:
    id: int
    kind: str
    status: str
    item_id: str
    item_title: str  # add_question: the item's title in the items dir now ("" if it is gone); new_item: the draft's
    question: str  # add_question: the proposed question; new_item: the draft's first question
    draft: dict[str, Any] | None  # new_item: the validated draft
    call_id: str | None
    turn_seq: int | None
    caller_text: str  # the turn's caller text as the ASR heard it, personal data masked ("" when the call is gone)
    turn_action: str
    turn_item_ids: tuple[str, ...]  # what the hotline answered or offered on that turn
    turn_confidence: float | None
    proposed_by: str
    proposed_at: dt.datetime
    decided_by: str | None
    decided_at: dt.datetime | None
    decision_note: str
    kb_version: str | None  # the build that first carried it

    @property
    def applying(self) -> bool:
        """Claimed by an editor whose apply has not finished (or died: the next apply settles it)."""
        return self.status == KbChangeStatus.APPLIED.value and self.kb_version is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "applying": self.applying,
            "item_id": self.item_id, "item_title": self.item_title, "question": self.question, "draft": self.draft,
            "source": {"call_id": self.call_id, "turn_seq": self.turn_seq, "caller_text": self.caller_text,
                       "action": self.turn_action, "item_ids": list(self.turn_item_ids),
                       "confidence": self.turn_confidence,
                       "url": f"/review/calls/{self.call_id}#turn-{self.turn_seq}" if self.call_id else None},
            "proposed_by": self.proposed_by, "proposed_at": _utc(self.proposed_at),
            "decided_by": self.decided_by, "decided_at": _utc(self.decided_at),
            "decision_note": self.decision_note, "kb_version": self.kb_version,
        }


# -- helpers -------------------------------------------------------------------------------------------


def _clean_note(note: str | None) -> str:
    note = (note or "").strip()
    if not note:
        raise InvalidNoteError("请填写驳回理由，提出修改的人会看到它")
    if len(note) > NOTE_MAX_CHARS:
        raise InvalidNoteError(f"驳回理由最多 {NOTE_MAX_CHARS} 个字")
    return note


def _check_question(question: str) -> str:
    question = clean_question(question or "")
    if not QUESTION_MIN_CHARS <= len(question) <= QUESTION_MAX_CHARS:
        raise InvalidQuestionError(f"常见问法须为 {QUESTION_MIN_CHARS} 到 {QUESTION_MAX_CHARS} 个字（现在 {len(question)} 个）")
    if not normalize_question(question):
        raise InvalidQuestionError("常见问法不能只有标点或空格")
    if find_personal(question):
        raise InvalidQuestionError("问法里有个人信息（身份证号、手机号、银行卡号等），请删去后再提交")
    return question


_SECTION_HEADING = re.compile(r"section '## (.+?)'")
# Which draft field a `hotline kb check` error is about (the first phrase found in it).
_CHECK_FIELDS = (("SMS template", "sms"), ("SMS", "sms"), ("channel", "channels"), ("related item", "related"),
                 ("ask_between", "ask_between"), ("alias ", "aliases"), ("caller question", "questions"),
                 ("fact ", "facts"), ("no verify entries", "verify"), ("service_no", "service_no"),
                 ("audience", "audiences"))


def _check_field(error: str) -> str:
    heading = _SECTION_HEADING.search(error)
    if heading and heading.group(1) in SECTION_FIELDS:
        return f"sections.{SECTION_FIELDS[heading.group(1)]}"
    return next((field for phrase, field in _CHECK_FIELDS if phrase in error), "item")


def _pydantic_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "item"
        message = "必填" if error["type"] == "missing" else re.sub(r"^Value error, ", "", error["msg"])
        errors.setdefault(field, []).append(message)
    return errors


def _draft_texts(item: ServiceItem) -> Iterable[tuple[str, str]]:
    """(field, text) for every text a person writes in an item."""
    yield "title", item.title
    for index, alias in enumerate(item.aliases):
        yield f"aliases.{index}", alias
    for index, question in enumerate(item.questions):
        yield f"questions.{index}", question
    yield "spoken", item.spoken
    yield "sms", item.sms
    yield "clarify", item.clarify or ""
    for index, mark in enumerate(item.verify):
        yield f"verify.{index}.note", mark.note
    for name, text in item.sections.items():
        yield f"sections.{name}", text


def _normalized_draft(draft: Mapping[str, Any], caller_words: str) -> dict[str, Any]:
    """The draft as ServiceItem takes it: sections keyed by field name (a heading such as 办理条件 is accepted too)
    and trimmed, questions cleaned (the caller's words when none are given), kind and last_reviewed defaulted."""
    data = {key: value for key, value in dict(draft).items() if key != "path"}
    sections = data.get("sections") or {}
    if isinstance(sections, Mapping):
        data["sections"] = {SECTION_FIELDS.get(str(name).strip().lstrip("#").strip(), str(name).strip()):
                            str(text or "").strip() for name, text in sections.items() if str(text or "").strip()}
    questions = data.get("questions")
    if questions in (None, "", []):
        data["questions"] = [caller_words] if caller_words else []
    elif isinstance(questions, list):
        data["questions"] = [clean_question(str(question)) for question in questions if clean_question(str(question))]
    data.setdefault("kind", "service")
    data.setdefault("last_reviewed", dt.datetime.now(BUREAU_TIME).date().isoformat())
    return data


def _strings(value: Any, field: str = "") -> Iterable[tuple[str, str]]:
    """Every text in a JSON-like draft, with its field path (questions.0, sections.steps, …)."""
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _strings(inner, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{field}.{index}" if field else str(index))


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename (keeping the old file's mode), so a reader sees old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class _Edit:
    """The files one apply writes: relative path → bytes before (None: a new file) and after."""

    before: dict[str, bytes | None]
    after: dict[str, bytes]


# -- the service -----------------------------------------------------------------------------------------------


class KbChanges:
    def __init__(self, database: Database, settings: Settings, lock_timeout_s: float = 60.0,
                 publish: Callable[..., Published] = build_and_publish) -> None:
        self.database = database
        self.settings = settings
        self.lock_timeout_s = lock_timeout_s
        self._publish = publish  # `build_and_publish`; a test may wrap it
        self._kb_cache: tuple[tuple, KnowledgeBase] | None = None

    # -- paths and the items directory

    @property
    def kb_dir(self) -> Path:
        return Path(self.settings.kb_dir)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    def _lock(self, name: str) -> FileLock:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.data_dir / name), timeout=self.lock_timeout_s)

    def knowledge_base(self) -> KnowledgeBase:
        """The items in settings.kb_dir, loaded again only when a file changed (size and mtime)."""
        try:
            signature = self._signature(item_files(self.kb_dir))
        except OSError as exc:
            raise KbChangeError(f"读不了知识库目录 {self.kb_dir}：{exc}") from exc
        if self._kb_cache is None or self._kb_cache[0] != signature:
            try:
                self._kb_cache = (signature, load_knowledge_base(self.kb_dir))
            except KbError as exc:
                raise KbChangeError(f"读不了知识库目录 {self.kb_dir}：{exc}") from exc
        return self._kb_cache[1]

    @staticmethod
    def _signature(files: list[Path]) -> tuple:
        return tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files)

    # -- reading

    def _turn(self, session: Session, call_id: str, turn_seq: int) -> Turn:
        if session.get(Call, call_id) is None:
            raise UnknownTurnError(f"找不到通话 {call_id}")
        turn = session.scalar(select(Turn).where(Turn.call_id == call_id, Turn.seq == turn_seq))
        if turn is None:
            raise UnknownTurnError(f"通话 {call_id} 没有第 {turn_seq} 轮")
        return turn

    def _view(self, change: KbChange, turn: Turn | None, kb: KnowledgeBase | None) -> KbChangeView:
        payload = dict(change.payload or {})
        if change.kind == KbChangeKind.NEW_ITEM:
            draft = dict(payload.get(DRAFT_INCOMPLETE) or payload)
            draft["problems"] = payload.get(DRAFT_PROBLEMS) or {}
            title = str(draft.get("title") or "")
            questions = draft.get("questions") or [""]
            question = str(questions[0])
        else:
            item = kb.get(change.item_id) if kb is not None else None
            title, question, draft = (item.title if item else ""), str(payload.get("question") or ""), None
        return KbChangeView(
            change.id, KbChangeKind(change.kind).value, KbChangeStatus(change.status).value, change.item_id, title,
            question, draft, change.call_id, change.turn_seq,
            mask_personal(turn.caller_text) if turn is not None else "",
            turn.action if turn is not None else "", tuple(turn.item_ids or ()) if turn is not None else (),
            turn.confidence if turn is not None else None, change.proposed_by, change.proposed_at,
            change.decided_by, change.decided_at, change.decision_note or "", change.kb_version)

    def _titles(self) -> KnowledgeBase | None:
        try:
            return self.knowledge_base()
        except KbChangeError as exc:  # the list still shows, without titles
            log.warning("KB changes: %s", exc)
            return None

    def list(self, status: str | KbChangeStatus | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[KbChangeView], int]:
        """Proposed changes first (oldest first: the queue), then decided ones (latest first); and how many match."""
        query = (select(KbChange, Turn)
                 .outerjoin(Turn, (Turn.call_id == KbChange.call_id) & (Turn.seq == KbChange.turn_seq)))
        count = select(func.count()).select_from(KbChange)
        if status:
            try:
                wanted = KbChangeStatus(status)
            except ValueError:
                raise KbChangeError(f"未知状态 {status}（可选：proposed、applied、rejected）") from None
            query = query.where(KbChange.status == wanted)
            count = count.where(KbChange.status == wanted)
        pending = case((KbChange.status == KbChangeStatus.PROPOSED, 0), else_=1)
        order = case((KbChange.status == KbChangeStatus.PROPOSED, KbChange.id), else_=-KbChange.id)
        query = query.order_by(pending, order).limit(max(1, min(limit, 500))).offset(max(0, offset))
        kb = self._titles()
        with self.database.session() as session:
            rows = session.execute(query).all()
            total = session.scalar(count) or 0
            return [self._view(change, turn, kb) for change, turn in rows], total

    def get(self, change_id: int) -> KbChangeView:
        with self.database.session() as session:
            change = session.get(KbChange, change_id)
            if change is None:
                raise UnknownChangeError(change_id)
            turn = (session.scalar(select(Turn).where(Turn.call_id == change.call_id, Turn.seq == change.turn_seq))
                    if change.call_id else None)
            return self._view(change, turn, self._titles() if change.kind == KbChangeKind.ADD_QUESTION else None)

    # -- proposing

    def _record(self, session: Session, actor: Actor, change: KbChange, op: str, **detail: Any) -> None:
        audit.record(session, actor, AuditAction.KB_CHANGE, f"kb_change/{change.id}", op=op,
                     kind=KbChangeKind(change.kind).value, item_id=change.item_id, call_id=change.call_id,
                     turn_seq=change.turn_seq, **detail)

    def propose_question(self, actor: Actor, call_id: str, turn_seq: int, item_id: str, question: str) -> KbChangeView:
        """「加为常见问法」: `question` (the caller's words, as the supervisor corrected them) as a question of
        `item_id`."""
        question = _check_question(question)
        kb = self.knowledge_base()
        item = kb.get(item_id)
        if item is None:
            raise UnknownItemError(f"知识库中没有事项 {item_id}")
        key = normalize_question(question)
        if key in {normalize_question(text) for text in (*item.questions, *item.aliases)}:
            raise QuestionExistsError(f"「{question}」已是事项「{item.title}」的常见问法或说法")
        for other in kb.items:
            if other.id != item.id and key in {normalize_question(text) for text in other.questions}:
                raise QuestionExistsError(f"「{question}」已是事项「{other.title}」（{other.id}）的常见问法；"
                                          "同一问法只能属于一个事项")
        try:
            with self._lock(PROPOSE_LOCK_FILE), self.database.session() as session:
                turn = self._turn(session, call_id, turn_seq)
                pending = session.scalars(select(KbChange).where(
                    KbChange.kind == KbChangeKind.ADD_QUESTION, KbChange.status == KbChangeStatus.PROPOSED,
                    KbChange.item_id == item.id)).all()
                for other_change in pending:
                    if normalize_question(str((other_change.payload or {}).get("question", ""))) == key:
                        raise DuplicateProposalError(f"已有相同的待处理提议（#{other_change.id}）", other_change.id)
                change = KbChange(kind=KbChangeKind.ADD_QUESTION, status=KbChangeStatus.PROPOSED, item_id=item.id,
                                  payload={"question": question}, call_id=call_id, turn_seq=turn_seq,
                                  proposed_by=actor.username, decision_note="")
                session.add(change)
                session.flush()
                self._record(session, actor, change, "proposed", question=question)
                return self._view(change, turn, kb)
        except LockTimeout:
            raise KbChangeBusyError("系统繁忙，请稍后再提交") from None

    def validate_draft(self, draft: Mapping[str, Any], caller_words: str = "") -> ServiceItem:
        """The draft as an item, or `InvalidDraftError` listing every problem by field: the item schema, the rules of
        `hotline kb check` with the KB it would join, personal data, and local facts stated as if confirmed (they
        belong in the sections, marked 〔待核实〕 for the bureau to confirm; docs/kb-format.md)."""
        if not isinstance(draft, Mapping):
            raise InvalidDraftError({"draft": ["草稿须为一个对象（字段 → 值）"]})
        data = _normalized_draft(draft, caller_words)
        try:
            item = ServiceItem.model_validate(data)
        except ValidationError as exc:
            raise InvalidDraftError(_pydantic_errors(exc)) from None
        item = item.model_copy(update={"path": item_path(item)})
        errors: dict[str, list[str]] = {}

        def problem(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        kb = self.knowledge_base()
        if kb.get(item.id) is not None:
            problem("id", f"事项编号 {item.id} 已被「{kb.get(item.id).title}」使用")
        if (self.kb_dir / item.path).exists():
            problem("id", f"文件 {item.path} 已存在")
        if not item.questions:
            problem("questions", "至少要有一句常见问法（来电人的原话）")
        for index, question in enumerate(item.questions):
            if not QUESTION_MIN_CHARS <= len(question) <= QUESTION_MAX_CHARS:
                problem(f"questions.{index}", f"常见问法须为 {QUESTION_MIN_CHARS} 到 {QUESTION_MAX_CHARS} 个字")
        for name in item.sections:
            if name not in SECTION_FIELDS.values():
                problem(f"sections.{name}", f"没有这一节；可用的节：{'、'.join(SECTION_FIELDS)}")
        if item.ask_between:
            problem("ask_between", "ask_between 要同时修改另一个事项，草稿中不能填写；应用后由知识库编辑补上")
        for field, text in _draft_texts(item):
            if find_personal(text):
                problem(field, "含有个人信息（身份证号、手机号、银行卡号等），请删去")
        for field, message in draft_local_facts(item):
            problem(field, message)
        joined = KnowledgeBase(root=kb.root, items=(*kb.items, item), errors=kb.errors)
        for error in check_items(self.settings, joined).errors:
            if item.path in error or re.search(rf"(?<![\w-]){re.escape(item.id)}(?![\w-])", error):
                problem(_check_field(error), error.replace(f"{item.path}: ", ""))
        if not errors:
            try:
                render_item(item)
            except ItemEditError as exc:
                problem("item", str(exc))
        if errors:
            raise InvalidDraftError(errors)
        return item

    def _draft_payload(self, draft: Mapping[str, Any], caller_words: str = "") -> tuple[str, str, dict[str, Any]]:
        """(id, title, payload) of a new item's draft. A complete draft is stored as the item; an incomplete one (a
        supervisor knows the caller's question, rarely the policy basis, the sources and the five aliases) is kept
        with its problems listed by field, for a KB editor to complete (`update_draft`) before it can be applied.
        Refused outright: no id or title, an id already taken, personal data."""
        try:
            item = self.validate_draft(draft, caller_words)
            return item.id, item.title, item.model_dump(mode="json", exclude={"path"})
        except InvalidDraftError as exc:
            data = json.loads(json.dumps(_normalized_draft(draft, caller_words), ensure_ascii=False, default=str))
            item_id, title = str(data.get("id") or "").strip(), str(data.get("title") or "").strip()
            hard = {field: problems for field, problems in exc.errors.items()
                    if field == "id" or any("个人信息" in problem for problem in problems)}
            for field, text in _strings(data):  # the schema failed first: personal data is looked for here
                message = "含有个人信息（身份证号、手机号、银行卡号等），请删去"
                if find_personal(text) and message not in hard.get(field, []):
                    hard.setdefault(field, []).append(message)
            if not ID_PATTERN.match(item_id):
                hard.setdefault("id", []).append("请填写事项编号：小写字母、数字和连字符，例如 injury-new-topic")
            if len(title) < 2:
                hard.setdefault("title", []).append("请填写事项名称（至少2个字）")
            if hard:  # every problem listed, so the supervisor fixes the draft in one go
                merged = {field: list(problems) for field, problems in exc.errors.items()}
                for field, problems in hard.items():
                    merged.setdefault(field, []).extend(p for p in problems if p not in merged[field])
                raise InvalidDraftError(merged) from None
            return item_id, title, {DRAFT_INCOMPLETE: data, DRAFT_PROBLEMS: exc.errors}

    def update_draft(self, actor: Actor, change_id: int, draft: Mapping[str, Any]) -> KbChangeView:
        """A KB editor completes or corrects a proposed new item's draft (the id stays: it names the proposal)."""
        if not isinstance(draft, Mapping):
            raise InvalidDraftError({"draft": ["草稿须为一个对象（字段 → 值）"]})
        with self.database.session() as session:
            change = session.get(KbChange, change_id)
            if change is None:
                raise UnknownChangeError(change_id)
            if change.kind != KbChangeKind.NEW_ITEM:
                raise InvalidDraftError({"draft": ["只有「新建条目草稿」可以修改草稿"]})
            if change.status != KbChangeStatus.PROPOSED:
                raise AlreadyDecidedError(change_id, KbChangeStatus(change.status).value, change.decided_by)
            if str(draft.get("id") or "") != change.item_id:
                raise InvalidDraftError({"id": [f"事项编号不能修改（{change.item_id}）；要换编号，请驳回后重新提交"]})
            turn = session.scalar(select(Turn).where(Turn.call_id == change.call_id, Turn.seq == change.turn_seq))
            caller_words = clean_question(turn.caller_text or "") if turn is not None else ""
        if find_personal(caller_words):
            caller_words = ""
        item_id, title, payload = self._draft_payload(draft, caller_words)
        with self.database.session() as session:
            change = session.get(KbChange, change_id)
            if change is None or change.status != KbChangeStatus.PROPOSED:
                raise AlreadyDecidedError(change_id, "applied", None)
            change.payload = payload
            self._record(session, actor, change, "edited", title=title,
                         problems=sum(len(v) for v in payload.get(DRAFT_PROBLEMS, {}).values()))
            turn = session.scalar(select(Turn).where(Turn.call_id == change.call_id, Turn.seq == change.turn_seq))
            return self._view(change, turn, None)

    def propose_item(self, actor: Actor, call_id: str, turn_seq: int, draft: Mapping[str, Any]) -> KbChangeView:
        """「新建条目草稿」: a new item, validated now (`validate_draft`); its questions default to the caller's
        words."""
        with self.database.session() as session:
            caller_words = clean_question(self._turn(session, call_id, turn_seq).caller_text or "")
        if find_personal(caller_words):
            caller_words = ""  # never copied into the KB: the supervisor writes the question themselves
        item_id, title, payload = self._draft_payload(draft, caller_words)
        try:
            with self._lock(PROPOSE_LOCK_FILE), self.database.session() as session:
                turn = self._turn(session, call_id, turn_seq)
                same = session.scalar(select(KbChange).where(
                    KbChange.kind == KbChangeKind.NEW_ITEM, KbChange.status == KbChangeStatus.PROPOSED,
                    KbChange.item_id == item_id))
                if same is not None:
                    raise DuplicateProposalError(f"已有编号为 {item_id} 的待处理条目草稿（#{same.id}）", same.id)
                change = KbChange(kind=KbChangeKind.NEW_ITEM, status=KbChangeStatus.PROPOSED, item_id=item_id,
                                  payload=payload, call_id=call_id, turn_seq=turn_seq, proposed_by=actor.username,
                                  decision_note="")
                session.add(change)
                session.flush()
                complete = DRAFT_INCOMPLETE not in payload
                self._record(session, actor, change, "proposed", title=title,
                             path=item_path(ServiceItem.model_validate(payload)) if complete else None,
                             problems=sum(len(v) for v in payload.get(DRAFT_PROBLEMS, {}).values()))
                return self._view(change, turn, None)
        except LockTimeout:
            raise KbChangeBusyError("系统繁忙，请稍后再提交") from None

    # -- deciding

    def reject(self, actor: Actor, change_id: int, note: str) -> KbChangeView:
        note = _clean_note(note)
        with self.database.session() as session:
            done = session.execute(
                update(KbChange).where(KbChange.id == change_id, KbChange.status == KbChangeStatus.PROPOSED)
                .values(status=KbChangeStatus.REJECTED, decided_by=actor.username, decided_at=dt.datetime.now(dt.UTC),
                        decision_note=note).execution_options(synchronize_session=False))
            change = session.get(KbChange, change_id)
            if change is None:
                raise UnknownChangeError(change_id)
            if done.rowcount != 1:
                raise AlreadyDecidedError(change_id, KbChangeStatus(change.status).value, change.decided_by)
            session.refresh(change)
            self._record(session, actor, change, "rejected", note=note)
        return self.get(change_id)

    def apply(self, actor: Actor, change_id: int) -> KbChangeView:
        """Write the change into the item files, check, build and publish; the change is then applied with the new
        version. `KbCheckFailedError` (files put back, change still proposed) when the check or the build refuses."""
        try:
            with self._lock(LOCK_FILE):
                self._recover()
                return self._apply_locked(actor, change_id)
        except LockTimeout:
            raise KbChangeBusyError("另一位编辑正在应用修改、生成知识库版本，请稍后再试") from None

    def _edit_for(self, change: KbChange) -> _Edit:
        kb = self.knowledge_base()
        payload = dict(change.payload or {})
        if change.kind == KbChangeKind.ADD_QUESTION:
            item = kb.get(change.item_id)
            if item is None:
                raise ItemFileError(f"事项 {change.item_id} 已不在知识库中，不能添加问法")
            question = str(payload.get("question") or "")
            if normalize_question(question) in {normalize_question(text) for text in item.questions}:
                raise ItemFileError(f"「{question}」已在事项「{item.title}」的常见问法中（有人已手工添加），请驳回此修改")
            path = self.kb_dir / item.path
            before = path.read_bytes()
            try:
                after = append_question(before.decode("utf-8"), question).encode("utf-8")
            except (ItemEditError, UnicodeDecodeError) as exc:
                raise ItemFileError(f"不能自动修改 {item.path}，请手工添加：{exc}") from exc
            return _Edit({item.path: before}, {item.path: after})
        if DRAFT_INCOMPLETE in payload:
            problems = payload.get(DRAFT_PROBLEMS) or {}
            raise InvalidDraftError(problems or {"draft": ["草稿尚未补全，请先保存补全后的草稿"]})
        try:
            item = ServiceItem.model_validate(payload)
            relative = item_path(item)
            item = item.model_copy(update={"path": relative})
            text = render_item(item)
        except (ValidationError, ItemEditError) as exc:
            raise ItemFileError(f"条目草稿不能写成文件：{exc}") from exc
        if kb.get(item.id) is not None or (self.kb_dir / relative).exists():
            raise ItemFileError(f"事项 {item.id}（{relative}）已存在，草稿不能再新建")
        return _Edit({relative: None}, {relative: text.encode("utf-8")})

    def _apply_locked(self, actor: Actor, change_id: int) -> KbChangeView:
        with self.database.session() as session:
            change = session.get(KbChange, change_id)
            if change is None:
                raise UnknownChangeError(change_id)
            if change.status != KbChangeStatus.PROPOSED:
                raise AlreadyDecidedError(change_id, KbChangeStatus(change.status).value, change.decided_by)
            session.expunge(change)
        edit = self._edit_for(change)
        self._write_journal({"change_id": change_id, "actor": actor.username, "user_id": actor.user_id,
                             "published": None,
                             "files": {path: {"before": None if data is None else data.decode("utf-8"),
                                              "after": edit.after[path].decode("utf-8")}
                                       for path, data in edit.before.items()}})
        try:
            self._claim(actor, change_id)
        except BaseException:
            self._drop_journal()
            raise
        try:
            for path, data in edit.after.items():
                _write_atomically(self.kb_dir / path, data)
            files = item_files(self.kb_dir)
            signature = self._signature(files)
            kb = load_knowledge_base(self.kb_dir)
            report = check_items(self.settings, kb)
            if not report.ok:
                raise KbCheckFailedError(f"知识库检查未通过（{len(report.errors)} 处错误），文件已恢复，修改仍待处理",
                                         report.errors)
            try:
                published = self._publish(self.settings, kb=kb)
            except BuildRefused as exc:
                raise KbCheckFailedError(f"知识库版本未生成：{exc}；文件已恢复，修改仍待处理", exc.errors) from exc
        except BaseException:
            self._undo(edit)
            self._unclaim(change_id, actor.username)
            self._drop_journal()
            raise
        self._kb_cache = (signature, kb)  # what was just loaded and checked: the titles need no second load
        journal = self._read_journal() or {}
        self._write_journal(journal | {"published": published.version, "previous": published.previous})
        try:
            self._finish(actor, change_id, published.version, published.previous)
        except TelephonyError as exc:  # the journal stays: the next apply records it
            raise KbChangeError(f"新版本 {published.version} 已发布，但修改记录未能写入数据库（{exc}）；"
                                "下次应用修改时会补记") from exc
        self._drop_journal()
        log.info("KB change #%d applied by %s: version %s (previous %s)", change_id, actor.username,
                 published.version, published.previous)
        return self.get(change_id)

    def _claim(self, actor: Actor, change_id: int) -> None:
        """proposed → applied (no version yet), only if it is still proposed: exactly one apply goes on."""
        with self.database.session() as session:
            done = session.execute(
                update(KbChange).where(KbChange.id == change_id, KbChange.status == KbChangeStatus.PROPOSED)
                .values(status=KbChangeStatus.APPLIED, decided_by=actor.username, decided_at=dt.datetime.now(dt.UTC),
                        kb_version=None).execution_options(synchronize_session=False))
            if done.rowcount != 1:
                change = session.get(KbChange, change_id)
                raise AlreadyDecidedError(change_id, KbChangeStatus(change.status).value if change else "?",
                                          change.decided_by if change else None)

    def _unclaim(self, change_id: int, username: str) -> None:
        with self.database.session() as session:
            session.execute(
                update(KbChange).where(KbChange.id == change_id, KbChange.status == KbChangeStatus.APPLIED,
                                       KbChange.kb_version.is_(None), KbChange.decided_by == username)
                .values(status=KbChangeStatus.PROPOSED, decided_by=None, decided_at=None)
                .execution_options(synchronize_session=False))

    def _finish(self, actor: Actor, change_id: int, version: str, previous: str | None) -> None:
        with self.database.session() as session:
            done = session.execute(
                update(KbChange).where(KbChange.id == change_id, KbChange.status == KbChangeStatus.APPLIED,
                                       KbChange.kb_version.is_(None))
                .values(kb_version=version).execution_options(synchronize_session=False))
            change = session.get(KbChange, change_id)
            if change is None or done.rowcount != 1:
                return
            detail: dict[str, Any] = {"kb_version": version, "previous_version": previous}
            if change.kind == KbChangeKind.ADD_QUESTION:
                detail["question"] = (change.payload or {}).get("question")
            self._record(session, actor, change, "applied", **detail)

    def _undo(self, edit: _Edit) -> None:
        for path, data in edit.before.items():
            target = self.kb_dir / path
            if data is None:
                target.unlink(missing_ok=True)
            else:
                _write_atomically(target, data)

    # -- the journal of an apply in progress

    @property
    def _journal_path(self) -> Path:
        return self.data_dir / JOURNAL_FILE

    def _write_journal(self, journal: dict[str, Any]) -> None:
        _write_atomically(self._journal_path, json.dumps(journal, ensure_ascii=False).encode("utf-8"))

    def _drop_journal(self) -> None:
        self._journal_path.unlink(missing_ok=True)

    def _read_journal(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._journal_path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None

    def _recover(self) -> None:
        """Settle an apply that died (called under the lock, so none is running on this data dir): when it had
        published its build, record the change as applied with that version; otherwise put back each file that still
        holds what it wrote, and return the change to proposed."""
        journal = self._read_journal()
        if journal is None:
            return
        change_id, username = int(journal["change_id"]), str(journal["actor"])
        actor = audit.Operator(username, journal.get("user_id"))
        if journal.get("published"):
            self._finish(actor, change_id, journal["published"], journal.get("previous"))
            log.warning("KB change #%d: an interrupted apply had published %s; recorded as applied", change_id,
                        journal["published"])
        else:
            for path, files in journal.get("files", {}).items():
                target = self.kb_dir / path
                now = target.read_bytes().decode("utf-8") if target.exists() else None
                if now == files["before"]:
                    continue
                if now != files["after"]:
                    log.error("KB change #%d: %s was changed since an interrupted apply; left as it is", change_id,
                              path)
                    continue
                if files["before"] is None:
                    target.unlink()
                else:
                    _write_atomically(target, files["before"].encode("utf-8"))
            self._unclaim(change_id, username)
            log.warning("KB change #%d: an interrupted apply was undone; the change is proposed again", change_id)
        self._drop_journal()
