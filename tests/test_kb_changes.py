"""The KB-gap loop's change proposals (telephony.review.kb_changes) on a temporary copy of the shipped KB: proposals
validated against the turn, the item and the KB; applying one edits the item file (every other byte kept), checks,
builds and publishes; a failed check or build puts the files back; double applies and duplicates are refused; the
lifecycle on SQLite and PostgreSQL; `hotline kb changes`; and, once, the evaluation gate and the answer stack on the
build an applied change made."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from typer.testing import CliRunner

from kb.authoring import append_question, normalize_question, render_item
from kb.builds import BuildStore
from kb.loader import DEFAULT_ITEMS_DIR, load_knowledge_base, parse_item
from telephony.handoff.accounts import Accounts
from telephony.review.audit import Operator
from telephony.review.kb_changes import (
    AlreadyDecidedError,
    DuplicateProposalError,
    InvalidDraftError,
    InvalidNoteError,
    InvalidQuestionError,
    ItemFileError,
    KbChanges,
    KbCheckFailedError,
    QuestionExistsError,
    UnknownChangeError,
    UnknownItemError,
    UnknownTurnError,
)
from telephony.settings import Settings
from telephony.store import CallChannel, Database
from telephony.store.models import AuditEntry, KbChange, UserRole

SUPERVISOR = Operator("zhang.sup", 7)
EDITOR = Operator("li.editor", 8)
ITEM = "unemployment-benefit-stop-resume"
ITEM_FILE = "unemployment/unemployment-benefit-stop-resume.md"
CALLER_WORDS = "领失业金期间能不能打零工"  # the shipped KB asks 停发与续发 or 失业人员死亡 for this (a clarifying question)
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def shipped_items(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of kb/items per module; each test copies it again (the source tree is never written)."""
    return Path(shutil.copytree(DEFAULT_ITEMS_DIR, tmp_path_factory.mktemp("shipped") / "items"))


@dataclass
class Env:
    settings: Settings
    database: Database
    changes: KbChanges
    call_id: str

    @property
    def kb_dir(self) -> Path:
        return Path(self.settings.kb_dir)

    @property
    def builds(self) -> BuildStore:
        return BuildStore(self.settings.data_dir / "kb-builds")

    def audit(self) -> list[dict]:
        with self.database.session() as session:
            return [dict(entry.detail, username=entry.username, target=entry.target)
                    for entry in session.scalars(select(AuditEntry).where(AuditEntry.action == "kb_change")
                                                 .order_by(AuditEntry.id))]


def make_env(settings: Settings, items: Path, url: str) -> Env:
    settings = settings.model_copy(update={"kb_dir": items})
    database = Database(url)
    database.migrate()
    call = database.start_call(CallChannel.SIP, caller_number="13800000000")
    database.add_turn(call.id, caller_text="喂你好", spoken_text="您好，请问您要咨询什么？", action="clarify")
    database.add_turn(call.id, caller_text=CALLER_WORDS, spoken_text="您问的是失业保险金停发与续发，还是失业人员死亡待遇？",
                      item_ids=[], offered_item_ids=[ITEM, "unemployed-death-benefit"], confidence=0.45,
                      action="clarify")
    return Env(settings, database, KbChanges(database, settings, lock_timeout_s=30), call.id)


@pytest.fixture
def env(settings: Settings, tmp_path: Path, shipped_items: Path):
    items = Path(shutil.copytree(shipped_items, tmp_path / "items"))
    made = make_env(settings, items, f"sqlite:///{tmp_path / 'review.sqlite'}")
    yield made
    made.database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_env(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path, shipped_items: Path):
    items = Path(shutil.copytree(shipped_items, tmp_path / "items"))
    url = (f"sqlite:///{tmp_path / 'review.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    made = make_env(settings, items, url)
    yield made
    made.database.close()


# -- the file edit -------------------------------------------------------------------------------------------

TRICKY = (
    "\ufeff---\r\n"
    "id: demo   # the id never changes\r\n"
    "title: 演示\r\n"
    "aliases: [甲, 乙]\r\n"
    "questions:\r\n"
    "  # 常见问法, longest last\r\n"
    "  - '单引号: 的问法'\r\n"
    "  - \"双引号的问法\"\r\n"
    "  - 跨行的\r\n"
    "    一个问法\r\n"
    "\r\n"
    "# comment before the next key\r\n"
    "spoken: 好的\r\n"
    "---\r\n"
    "## 注意事项\r\n"
    "正文\r\n"
)


def inserted(before: str, after: str) -> str:
    """What `after` adds to `before`, asserting it only adds one contiguous piece."""
    prefix = 0
    while prefix < len(before) and before[prefix] == after[prefix]:
        prefix += 1
    added = after[prefix:len(after) - (len(before) - prefix)]
    assert after[:prefix] + after[prefix + len(added):] == before
    return added


def test_the_question_is_appended_and_every_other_byte_kept() -> None:
    after = append_question(TRICKY, "单位不交社保: 咋办 #急")
    assert inserted(TRICKY, after) == '  - "单位不交社保: 咋办 #急"\r\n'  # quoted where plain would not read back
    assert after.index("跨行的\r\n    一个问法\r\n  - ") > 0  # after the last entry, before the blank line
    plain = append_question(TRICKY, "社保卡丢了咋办")
    assert inserted(TRICKY, plain) == "  - 社保卡丢了咋办\r\n"
    # A flow list, a list at column 0, no list at all (after the aliases).
    flow = TRICKY.replace("questions:\r\n  # 常见问法, longest last\r\n  - '单引号: 的问法'\r\n  - \"双引号的问法\"\r\n"
                          "  - 跨行的\r\n    一个问法\r\n", "questions: [a, b]  # two\r\n")
    assert inserted(flow, append_question(flow, "新问法")) == ", 新问法"
    assert inserted(flow, append_question(flow, "有,逗号")) == ', "有,逗号"'
    column0 = "---\nid: x\nquestions:\n- 一\n- 二\nspoken: s\n---\n"
    assert append_question(column0, "三") == "---\nid: x\nquestions:\n- 一\n- 二\n- 三\nspoken: s\n---\n"
    none = "---\nid: x\naliases:\n  - 甲\n  - 乙\nspoken: s\n---\n"
    assert append_question(none, "三") == "---\nid: x\naliases:\n  - 甲\n  - 乙\nquestions:\n  - 三\nspoken: s\n---\n"


def test_shipped_items_take_a_question_and_render_back_as_themselves() -> None:
    kb = load_knowledge_base()
    one_per_category = {item.category: item for item in kb.items}.values()
    for item in one_per_category:
        text = (DEFAULT_ITEMS_DIR / item.path).read_bytes().decode("utf-8")
        after = append_question(text, "一个新的问法")
        assert inserted(text, after) == "  - 一个新的问法\n"
        assert parse_item(after, item.path).questions == (*item.questions, "一个新的问法")
        assert parse_item(render_item(item), item.path).model_dump(exclude={"path"}) == item.model_dump(exclude={"path"})
    assert normalize_question("社保卡丢了，怎么办？ ") == normalize_question("社保卡丢了怎么办") == "社保卡丢了怎么办"


# -- proposing a question --------------------------------------------------------------------------------------


def test_a_question_proposal_is_checked_against_the_turn_the_item_and_the_kb(env: Env) -> None:
    changes, call = env.changes, env.call_id
    with pytest.raises(UnknownTurnError, match="找不到通话 nope"):
        changes.propose_question(SUPERVISOR, "nope", 1, ITEM, CALLER_WORDS)
    with pytest.raises(UnknownTurnError, match="没有第 9 轮"):
        changes.propose_question(SUPERVISOR, call, 9, ITEM, CALLER_WORDS)
    with pytest.raises(UnknownItemError, match="知识库中没有事项 no-such-item"):
        changes.propose_question(SUPERVISOR, call, 2, "no-such-item", CALLER_WORDS)
    for short_or_long in ("好", "问" * 201, "  ？！  "):
        with pytest.raises(InvalidQuestionError):
            changes.propose_question(SUPERVISOR, call, 2, ITEM, short_or_long)
    with pytest.raises(InvalidQuestionError, match="个人信息"):
        changes.propose_question(SUPERVISOR, call, 2, ITEM, "我的手机号13812345678领失业金能打零工吗")
    item = changes.knowledge_base().get(ITEM)
    with pytest.raises(QuestionExistsError, match="已是事项「失业保险金停发与续发」的常见问法或说法"):
        changes.propose_question(SUPERVISOR, call, 2, ITEM, f" {item.questions[3]}？！ ")  # punctuation and spaces
    with pytest.raises(QuestionExistsError):
        changes.propose_question(SUPERVISOR, call, 2, ITEM, item.aliases[0])
    other = changes.knowledge_base().get("card-loss-report")
    with pytest.raises(QuestionExistsError, match="同一问法只能属于一个事项"):
        changes.propose_question(SUPERVISOR, call, 2, ITEM, other.questions[0])

    change = changes.propose_question(SUPERVISOR, call, 2, ITEM, f"  {CALLER_WORDS}？ ")
    data = change.to_json()
    assert data["kind"] == "add_question" and data["status"] == "proposed" and data["question"] == CALLER_WORDS + "？"
    assert data["item_title"] == "失业保险金停发与续发" and data["proposed_by"] == "zhang.sup"
    assert data["source"] == {"call_id": call, "turn_seq": 2, "caller_text": CALLER_WORDS, "action": "clarify",
                              "item_ids": [], "confidence": 0.45, "url": f"/review/calls/{call}#turn-2"}
    with pytest.raises(DuplicateProposalError, match=f"#{change.id}"):
        changes.propose_question(SUPERVISOR, call, 2, ITEM, CALLER_WORDS + "!")
    assert env.audit() == [{"op": "proposed", "kind": "add_question", "item_id": ITEM, "call_id": call, "turn_seq": 2,
                            "question": CALLER_WORDS + "？", "username": "zhang.sup",
                            "target": f"kb_change/{change.id}"}]
    assert (env.kb_dir / ITEM_FILE).read_bytes() == (DEFAULT_ITEMS_DIR / ITEM_FILE).read_bytes()  # nothing written yet


# -- applying ------------------------------------------------------------------------------------------------


def test_applying_edits_the_file_checks_builds_and_publishes(env: Env) -> None:
    change = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    before = (env.kb_dir / ITEM_FILE).read_bytes()
    applied = env.changes.apply(EDITOR, change.id)

    after = (env.kb_dir / ITEM_FILE).read_bytes()
    assert inserted(before.decode(), after.decode()) == f"  - {CALLER_WORDS}\n"
    assert applied.status == "applied" and applied.decided_by == "li.editor" and applied.decided_at is not None
    assert applied.kb_version == env.builds.current() and not applied.applying
    build = env.builds.load()
    assert build.kb.get(ITEM).questions[-1] == CALLER_WORDS
    assert env.builds.versions() == [applied.kb_version]
    assert env.audit()[-1] == {"op": "applied", "kind": "add_question", "item_id": ITEM, "call_id": env.call_id,
                               "turn_seq": 2, "kb_version": applied.kb_version, "previous_version": None,
                               "question": CALLER_WORDS, "username": "li.editor",
                               "target": f"kb_change/{change.id}"}
    assert not (env.settings.data_dir / "kb-changes.journal.json").exists()

    with pytest.raises(AlreadyDecidedError, match=f"修改 #{change.id} 已应用（li.editor），不能再处理"):
        env.changes.apply(EDITOR, change.id)
    with pytest.raises(AlreadyDecidedError):
        env.changes.reject(EDITOR, change.id, "晚了")
    with pytest.raises(UnknownChangeError, match="没有编号为 999 的知识库修改"):
        env.changes.apply(EDITOR, 999)
    # The next change builds on this one: the diff names the one field each time.
    second = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, "领失业金的时候可以去打短工吗")
    newer = env.changes.apply(EDITOR, second.id).kb_version
    assert env.builds.diff(applied.kb_version, newer).changed == {ITEM: ["questions"]}


def test_two_editors_applying_at_once_apply_it_once(env: Env) -> None:
    change = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    other_worker = KbChanges(env.database, env.settings)  # same data dir: the same lock file
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def apply(changes: KbChanges, editor: Operator) -> None:
        start.wait()
        try:
            outcomes.append(changes.apply(editor, change.id).kb_version)
        except AlreadyDecidedError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=apply, args=(env.changes, EDITOR)),
               threading.Thread(target=apply, args=(other_worker, Operator("wang.editor", 9)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["AlreadyDecidedError", "str"]
    text = (env.kb_dir / ITEM_FILE).read_text(encoding="utf-8")
    assert text.count(CALLER_WORDS) == 1
    assert [entry["op"] for entry in env.audit()] == ["proposed", "applied"]


def test_a_failed_check_puts_the_file_back_and_leaves_the_change_proposed(env: Env) -> None:
    change = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    # Meanwhile someone gave another item the same question by hand: the edit would list it twice.
    other = env.kb_dir / "survivor/unemployed-death-benefit.md"
    other.write_text(append_question(other.read_text(encoding="utf-8"), CALLER_WORDS), encoding="utf-8")
    before = (env.kb_dir / ITEM_FILE).read_bytes()
    with pytest.raises(KbCheckFailedError, match="知识库检查未通过（1 处错误），文件已恢复") as failed:
        env.changes.apply(EDITOR, change.id)
    assert failed.value.errors == [(f"caller question '{CALLER_WORDS}' is listed 2 times "
                                    f"(unemployed-death-benefit, {ITEM})")]
    assert (env.kb_dir / ITEM_FILE).read_bytes() == before
    assert env.changes.get(change.id).status == "proposed" and env.changes.get(change.id).decided_by is None
    assert env.builds.current() is None  # nothing was built
    assert [entry["op"] for entry in env.audit()] == ["proposed"]
    assert not (env.settings.data_dir / "kb-changes.journal.json").exists()


def test_a_refused_build_puts_the_file_back_too(env: Env) -> None:
    change = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    env.settings.data_dir.mkdir(parents=True, exist_ok=True)
    (env.settings.data_dir / "calibration.json").write_text("{}", encoding="utf-8")  # does not load
    with pytest.raises(KbCheckFailedError, match="知识库版本未生成：not built: calibration"):
        env.changes.apply(EDITOR, change.id)
    assert (env.kb_dir / ITEM_FILE).read_bytes() == (DEFAULT_ITEMS_DIR / ITEM_FILE).read_bytes()
    assert env.changes.get(change.id).status == "proposed"
    (env.settings.data_dir / "calibration.json").unlink()
    assert env.changes.apply(EDITOR, change.id).status == "applied"  # fixed: it goes through


def test_an_interrupted_apply_is_settled_by_the_next_one(env: Env) -> None:
    """A worker that dies between editing the file and publishing leaves its journal; the next apply puts the file
    back and proposes the change again. One that died after publishing is recorded as applied."""
    first = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    second = env.changes.propose_question(SUPERVISOR, env.call_id, 2, "card-loss-report", "取款机把我的社保卡吞了")
    original = (env.kb_dir / ITEM_FILE).read_bytes()

    def die(*_args, **_kwargs):
        raise SystemExit("killed")  # stands in for the process dying: nothing below runs

    dying = KbChanges(env.database, env.settings, publish=die)
    dying._undo = lambda edit: None  # a dead process puts nothing back, releases no claim, keeps its journal
    dying._unclaim = lambda change_id, username: None
    dying._drop_journal = lambda: None
    journal = env.settings.data_dir / "kb-changes.journal.json"
    with pytest.raises(SystemExit):
        dying.apply(EDITOR, first.id)
    assert journal.exists() and (env.kb_dir / ITEM_FILE).read_bytes() != original
    assert env.changes.get(first.id).applying

    env.changes.apply(EDITOR, second.id)  # settles the first, then applies the second
    assert (env.kb_dir / ITEM_FILE).read_bytes() == original
    assert env.changes.get(first.id).status == "proposed" and not journal.exists()
    assert env.changes.apply(EDITOR, first.id).status == "applied"

    # Died after publishing: the journal names the version, and the change is recorded with it.
    third = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, "领失业金的时候可以去打短工吗")
    env.changes._claim(EDITOR, third.id)
    journal.write_text(json.dumps({"change_id": third.id, "actor": "li.editor", "user_id": 8, "files": {},
                                   "published": "abc123abc123", "previous": None}), encoding="utf-8")
    env.changes._recover()  # what the next apply does first, under the lock
    settled = env.changes.get(third.id)
    assert settled.status == "applied" and settled.kb_version == "abc123abc123" and not journal.exists()


# -- rejecting and listing -----------------------------------------------------------------------------------------


def test_the_lifecycle_on_each_database(any_env: Env) -> None:
    """The SQL that matters on both dialects: pending first, the conditional claim, rejection, counts, audit."""
    changes, call = any_env.changes, any_env.call_id
    first = changes.propose_question(SUPERVISOR, call, 2, ITEM, CALLER_WORDS)
    second = changes.propose_question(SUPERVISOR, call, 2, "card-loss-report", "取款机把我的社保卡吞了")
    third = changes.propose_question(SUPERVISOR, call, 2, "card-reissue", "社保卡洗衣机洗坏了能补吗")
    with pytest.raises(InvalidNoteError, match="请填写驳回理由"):
        changes.reject(EDITOR, second.id, "  ")
    rejected = changes.reject(EDITOR, second.id, "吞卡找银行取回，不是挂失")
    assert (rejected.status, rejected.decided_by, rejected.decision_note) == ("rejected", "li.editor",
                                                                              "吞卡找银行取回，不是挂失")
    with pytest.raises(AlreadyDecidedError, match="已驳回"):
        changes.reject(EDITOR, second.id, "再驳回一次")
    with pytest.raises(AlreadyDecidedError, match="已驳回"):
        changes.apply(EDITOR, second.id)
    changes._claim(EDITOR, third.id)  # the conditional UPDATE: only one claim of a proposed change succeeds
    with pytest.raises(AlreadyDecidedError):
        changes._claim(Operator("wang.editor"), third.id)
    changes._unclaim(third.id, "li.editor")
    applied = changes.apply(EDITOR, first.id)

    rows, total = changes.list()
    assert total == 3 and [row.id for row in rows] == [third.id, second.id, first.id]  # pending, then latest first
    assert [row.status for row in rows] == ["proposed", "rejected", "applied"]
    assert rows[2].kb_version == applied.kb_version and rows[2].item_title == "失业保险金停发与续发"
    pending, count = changes.list("proposed")
    assert count == 1 and [row.id for row in pending] == [third.id]
    page, total = changes.list(limit=1, offset=1)
    assert total == 3 and [row.id for row in page] == [second.id]
    assert [(entry["op"], entry["target"]) for entry in any_env.audit()] == [
        ("proposed", f"kb_change/{first.id}"), ("proposed", f"kb_change/{second.id}"),
        ("proposed", f"kb_change/{third.id}"), ("rejected", f"kb_change/{second.id}"),
        ("applied", f"kb_change/{first.id}")]


def test_the_listing_masks_personal_data_in_the_callers_words(env: Env) -> None:
    turn = env.database.add_turn(env.call_id, caller_text="我身份证11010519491231002X领失业金能打零工吗",
                                 action="clarify")
    change = env.changes.propose_question(SUPERVISOR, env.call_id, turn.seq, ITEM, "领失业金能不能去打零工")
    assert env.changes.get(change.id).caller_text == "我身份证110105************领失业金能打零工吗"


# -- a new item's draft ------------------------------------------------------------------------------------------

DRAFT = {
    "id": "card-swallowed-by-atm",
    "service_no": 99,
    "title": "社会保障卡被自助机吞卡",
    "category": "社会保障卡",
    "aliases": ["社保卡被吞了", "取款机吞卡", "自助机把社保卡吞了", "社保卡被机器吃了", "ATM吞了社保卡"],
    "channels": {"offline": ["社保卡合作银行网点"]},
    "spoken": "社保卡被自助机吞了，请记下机器所属银行和网点，本人带身份证到该网点申请取回，取不回的再办理补卡。",
    "sms": "社保卡被自助机吞卡：\n1.记下自助机所属银行和网点。\n2.本人带身份证到该网点申请取回。\n3.取不回的，按补卡办法补办。",
    "policy_basis": [{"document": "关于推广应用具有金融功能的第三代社会保障卡的通知", "number": "人社厅发〔2020〕101号"}],
    "sources": [{"url": "https://592gupiao.com/ask/thread/20200115/2883207.html", "supports": "社保卡的金融功能由合作银行提供"}],
    "verify": [{"field": "steps", "note": "桂林各合作银行吞卡后保留多久、能否由家人代取，未找到官方依据"}],
    "sections": {
        "办理条件": "社保卡在自助取款机、自助服务终端上被吞，持卡人本人可以申请取回。",
        "所需材料": "- 持卡人本人的居民身份证。",
        "办理渠道": "- 线下：吞卡机器所属银行的营业网点。",
        "办理流程": "1. 记下机器编号、所属银行和网点。\n2. 本人带身份证到该网点申请取回。\n"
                    "3. 桂林各银行吞卡保留的天数以网点告知为准〔待核实〕，过期未取的卡会被退回发卡行。",
        "注意事项": "- 取不回或卡已损坏的，按补卡办法补办。",
    },
}


def test_a_draft_is_checked_field_by_field(env: Env) -> None:
    changes, call = env.changes, env.call_id
    with pytest.raises(InvalidDraftError) as schema:
        changes.propose_item(SUPERVISOR, call, 2, {"id": "Bad Id", "title": "吞卡", "category": "社会保障卡"})
    assert {"id", "aliases", "spoken", "sms", "policy_basis", "sources"} <= set(schema.value.errors)
    assert schema.value.errors["aliases"] == ["必填"]
    assert str(schema.value).startswith("条目草稿有") and "处问题" in str(schema.value)

    broken = json.loads(json.dumps(DRAFT))
    broken["id"] = "card-loss-report"  # taken
    broken["spoken"] = "社保卡被吞了，到桂林银行网点取回，工本费20元。"  # local facts the ear cannot hear as unconfirmed
    broken["sections"]["办理流程"] = "1. 到桂林银行七星支行3号窗口取卡。"  # unmarked local facts
    broken["policy_basis"].append({"document": "桂林市社会保障卡管理办法", "scope": "guilin"})  # unverified local rule
    broken["questions"] = ["我的卡号6222021234567890123被吞了"]  # personal data (a bank card, Luhn-valid)
    del broken["sections"]["所需材料"]
    broken["sections"]["温馨提示"] = "没有这一节"
    with pytest.raises(InvalidDraftError) as kb_level:
        changes.propose_item(SUPERVISOR, call, 2, broken)
    errors = kb_level.value.errors
    assert "已被「社会保障卡挂失与解挂」使用" in errors["id"][0]
    assert "桂林" in errors["spoken"][0] and "20元" in errors["spoken"][0]
    assert "〔待核实〕" in errors["sections.steps"][0] and "3号窗口" in errors["sections.steps"][0]
    assert errors["policy_basis.1.verify"] == ["本地政策文件在草稿中须写 verify: true，由中心核实文号和条款"]
    assert errors["questions.0"] == ["含有个人信息（身份证号、手机号、银行卡号等），请删去"]
    assert errors["sections.materials"] == ["missing or empty section '## 所需材料'"]
    assert errors["sections.温馨提示"][0].startswith("没有这一节；可用的节：办理条件、所需材料")


def test_a_draft_becomes_an_item_file_when_applied(env: Env) -> None:
    change = env.changes.propose_item(SUPERVISOR, env.call_id, 2, DRAFT)
    data = change.to_json()
    assert data["kind"] == "new_item" and data["item_id"] == "card-swallowed-by-atm"
    assert data["item_title"] == "社会保障卡被自助机吞卡" and data["question"] == CALLER_WORDS  # the caller's words
    assert data["draft"]["questions"] == [CALLER_WORDS] and data["draft"]["sections"]["conditions"]
    with pytest.raises(DuplicateProposalError):
        env.changes.propose_item(SUPERVISOR, env.call_id, 2, DRAFT)

    applied = env.changes.apply(EDITOR, change.id)
    path = env.kb_dir / "card" / "card-swallowed-by-atm.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\nid: card-swallowed-by-atm\nservice_no: 99\nkind: service\n")
    assert "sms: |\n  社保卡被自助机吞卡：\n" in text and "\n## 办理流程\n\n1. 记下机器编号" in text
    item = parse_item(text, "card/card-swallowed-by-atm.md")
    assert item.questions == (CALLER_WORDS,) and item.verify[0].field == "steps"
    assert env.builds.load(applied.kb_version).kb.get("card-swallowed-by-atm").title == "社会保障卡被自助机吞卡"
    assert env.audit()[-1]["op"] == "applied" and env.audit()[0]["path"] == "card/card-swallowed-by-atm.md"


def test_a_draft_whose_file_appeared_meanwhile_is_refused_and_nothing_is_touched(env: Env) -> None:
    change = env.changes.propose_item(SUPERVISOR, env.call_id, 2, DRAFT)
    path = env.kb_dir / "card" / "card-swallowed-by-atm.md"
    path.write_text("an editor's own file\n", encoding="utf-8")
    with pytest.raises(ItemFileError, match="已存在"):
        env.changes.apply(EDITOR, change.id)
    assert path.read_text(encoding="utf-8") == "an editor's own file\n"
    assert env.changes.get(change.id).status == "proposed"


# -- the command line ------------------------------------------------------------------------------------------------


def test_the_kb_changes_commands(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from telephony.cli import app

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = Accounts(env.database, hasher)
    accounts.create("li.editor", "李编辑", UserRole.KB_EDITOR, PASSWORD)
    accounts.create("zhang.sup", "张主管", UserRole.SUPERVISOR, PASSWORD)
    first = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    second = env.changes.propose_question(SUPERVISOR, env.call_id, 2, "card-loss-report", "取款机把我的社保卡吞了")
    for key, value in {"HOTLINE_DATA_DIR": env.settings.data_dir, "HOTLINE_KB_DIR": env.kb_dir,
                       "HOTLINE_DATABASE_URL": env.database.url, "HOTLINE_CENTRE_PHONE": "0773-0000000",
                       "HOTLINE_SMS_SIGNATURE": "测试社保"}.items():
        monkeypatch.setenv(key, str(value))
    runner = CliRunner()

    listed = runner.invoke(app, ["kb", "changes", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [row["id"] for row in json.loads(listed.stdout)] == [first.id, second.id]
    text = runner.invoke(app, ["kb", "changes", "list"]).stdout
    assert f"#{first.id}  待处理  加为常见问法  {ITEM}「失业保险金停发与续发」  问法：{CALLER_WORDS}" in text

    refused = runner.invoke(app, ["kb", "changes", "apply", str(first.id), "--as", "zhang.sup"])
    assert refused.exit_code == 1 and "只有知识库编辑（kb_editor）和管理员（admin）可以应用或驳回修改" in refused.output
    unknown = runner.invoke(app, ["kb", "changes", "apply", str(first.id), "--as", "nobody"])
    assert unknown.exit_code == 1 and "错误：" in unknown.output

    applied = runner.invoke(app, ["kb", "changes", "apply", str(first.id), "--as", "li.editor"])
    assert applied.exit_code == 0, applied.output
    version = env.builds.current()
    assert f"已应用修改 #{first.id}（加为常见问法 {ITEM}）：知识库版本 {version} 已发布" in applied.stdout
    again = runner.invoke(app, ["kb", "changes", "apply", str(first.id), "--as", "li.editor"])
    assert again.exit_code == 1 and "已应用" in again.output

    rejected = runner.invoke(app, ["kb", "changes", "reject", str(second.id), "--as", "li.editor",
                                   "--note", "吞卡找银行取回"])
    assert rejected.exit_code == 0 and f"已驳回修改 #{second.id}：吞卡找银行取回" in rejected.stdout
    states = {row["id"]: row["status"] for row in json.loads(
        runner.invoke(app, ["kb", "changes", "list", "--json", "--status", "applied"]).stdout)}
    assert states == {first.id: "applied"}
    with env.database.session() as session:
        decided = {change.id: change.decided_by for change in session.scalars(select(KbChange))}
    assert decided == {first.id: "li.editor", second.id: "li.editor"}
    audit = env.audit()
    assert audit[-1]["username"] == "li.editor" and audit[-1]["op"] == "rejected"


# -- the evaluation gate and the answer stack on the new build -----------------------------------------------------

# The targets of docs/eval.md ("Before and after answering the middle band by name", row "target"): what `hotline
# eval` must still meet after a change. `hotline eval` itself prints the table and exits 0; this is its gate.
EVAL_TARGETS = {"answer_fact_accuracy": (">=", 0.90), "fact_accuracy_after_clarify": (">=", 0.97),
                "clarify_rate": ("<=", 0.08), "confidently_wrong_rate": ("<=", 0.01), "handoff_recall": (">=", 0.95)}
ASR_NOISE_HIT_AT_1 = 0.93


def test_an_applied_question_is_answered_and_the_evaluation_gate_still_passes(env: Env) -> None:
    """The acceptance of the KB-gap loop: an editor applies the caller's words to the right item; the answer stack
    reloads onto the new build and answers those words with that item, and the full `hotline eval` set (with its
    homophone-noise copies, as the command runs it) still meets its targets on that build. About a minute, the
    slowest test here: two answer stacks with their vector indexes (the offline sentence encoder embeds each version's
    texts once, about 15 s and 7 s) and the evaluation of 1,059 questions (about 20 s, as `hotline eval`)."""
    from rag.evaluation import DEFAULT_EVAL_SET, evaluate, load_eval_set, with_asr_noise
    from telephony.answers import Answers
    from telephony.app import stack_loader

    answers = Answers(stack_loader(env.settings, env.builds))  # serving the items directory: nothing built yet
    before = asyncio.run(answers.ask(CALLER_WORDS))
    assert not (before.action.value == "answer" and before.items[:1] == (ITEM,)), before.reason

    change = env.changes.propose_question(SUPERVISOR, env.call_id, 2, ITEM, CALLER_WORDS)
    version = env.changes.apply(EDITOR, change.id).kb_version
    old, new = answers.reload()
    assert new == version != old and answers.stack.source == f"build {version}"
    after = asyncio.run(answers.ask(CALLER_WORDS))
    assert after.action.value == "answer" and after.items[0] == ITEM, after.reason

    stack = answers.stack
    cases = load_eval_set(DEFAULT_EVAL_SET)
    cases += with_asr_noise(cases, (item.authored_text() for item in stack.kb.items))
    report = asyncio.run(evaluate(cases, stack.retriever, stack.answerer))
    misses = {}
    for name, (direction, target) in EVAL_TARGETS.items():
        value = getattr(report.overall, name)
        if (value < target) if direction == ">=" else (value > target):
            misses[name] = value
    noise = report.by_category["asr_noise"].hit_at_1
    if noise < ASR_NOISE_HIT_AT_1:
        misses["asr_noise.hit_at_1"] = noise
    assert misses == {}, report.failures[:20]


def test_an_incomplete_draft_is_kept_for_an_editor_to_complete(env: Env) -> None:
    """A supervisor knows the caller's question and what the service is, rarely the policy basis and sources: the
    draft is kept with its problems, cannot be applied, and an editor completes it on /review/kb."""
    partial = {"id": "card-swallowed-by-atm", "title": "社会保障卡被自助机吞卡", "category": "社会保障卡",
               "spoken": ""}
    change = env.changes.propose_item(SUPERVISOR, env.call_id, 2, partial).to_json()
    assert change["item_id"] == "card-swallowed-by-atm" and change["draft"]["questions"] == [CALLER_WORDS]
    assert {"aliases", "sms", "policy_basis", "sources"} <= set(change["draft"]["problems"])
    with pytest.raises(InvalidDraftError) as refused:
        env.changes.apply(EDITOR, change["id"])
    assert "policy_basis" in refused.value.errors
    assert not (env.kb_dir / "card" / "card-swallowed-by-atm.md").exists()
    assert env.changes.get(change["id"]).status == "proposed"
    with pytest.raises(InvalidDraftError, match="处问题") as other_id:
        env.changes.update_draft(EDITOR, change["id"], {**DRAFT, "id": "card-other"})
    assert "不能修改" in other_id.value.errors["id"][0]
    with pytest.raises(InvalidDraftError):  # personal data is never stored, even in a draft
        env.changes.update_draft(EDITOR, change["id"], {**partial, "questions": ["我的电话13812345678"]})

    completed = env.changes.update_draft(EDITOR, change["id"], DRAFT).to_json()
    assert completed["draft"]["problems"] == {} and completed["draft"]["aliases"] == DRAFT["aliases"]
    applied = env.changes.apply(EDITOR, change["id"])
    assert applied.status == "applied" and (env.kb_dir / "card" / "card-swallowed-by-atm.md").exists()
    assert [entry["op"] for entry in env.audit()] == ["proposed", "edited", "applied"]
    with pytest.raises(InvalidDraftError):  # a draft without an id or a title cannot even be kept
        env.changes.propose_item(SUPERVISOR, env.call_id, 2, {"category": "社会保障卡"})
