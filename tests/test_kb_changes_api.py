"""The KB-gap loop over HTTP (TestClient, SQLite, a temporary copy of the shipped KB): the /review/kb page, who may
list, propose, apply and reject, the CSRF token, and the 201/403/404/409/422 answers in Chinese."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from kb.builds import BuildStore
from kb.loader import DEFAULT_ITEMS_DIR
from telephony import app as telephony_app
from telephony.answers import AnswerStack
from telephony.handoff.accounts import Accounts
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import CallChannel
from telephony.store.models import UserRole
from telephony.web.app import create_app
from telephony.web.staff_pages import STATIC_DIR

PASSWORD = "correct-horse-9"
CSRF_IN_FORM = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_IN_META = re.compile(r'name="csrf-token" content="([^"]+)"')
ITEM = "unemployment-benefit-stop-resume"
CALLER_WORDS = "领失业金期间能不能打零工"


@pytest.fixture(scope="module")
def answer_stack(tmp_path_factory: pytest.TempPathFactory) -> AnswerStack:
    """The shipped KB's answer stack, lexical only, built once for this module (building it is most of a start)."""
    root = tmp_path_factory.mktemp("stack")
    settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        embedding_backend=EmbeddingBackend.NONE)
    return telephony_app.stack_loader(settings, BuildStore(root / "builds"))()


@pytest.fixture(scope="module")
def shipped_items(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(DEFAULT_ITEMS_DIR, tmp_path_factory.mktemp("shipped") / "items"))


class Env:
    def __init__(self, client: TestClient, kb_dir: Path) -> None:
        self.client = client
        self.hotline = client.app.state.hotline_state.hotline
        self.database = self.hotline.database
        self.kb_dir = kb_dir
        hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests only
        accounts = Accounts(self.database, hasher)
        for username, role in (("sup", UserRole.SUPERVISOR), ("editor", UserRole.KB_EDITOR),
                               ("boss", UserRole.ADMIN), ("agent", UserRole.AGENT)):
            accounts.create(username, {"sup": "张主管", "editor": "李编辑", "boss": "王管理", "agent": "赵坐席"}[username],
                            role, PASSWORD)
        call = self.database.start_call(CallChannel.SIP, caller_number="13800000000")
        self.database.add_turn(call.id, caller_text=CALLER_WORDS, spoken_text="您问的是哪一项？",
                               offered_item_ids=[ITEM, "unemployed-death-benefit"], confidence=0.45, action="clarify")
        self.call_id = call.id

    def sign_in(self, username: str) -> dict[str, str]:
        """Sign in and return the header a POST needs (the token from /review/kb, or the desk for an agent)."""
        self.client.cookies.clear()
        token = CSRF_IN_FORM.search(self.client.get("/desk/login").text).group(1)
        response = self.client.post("/desk/login", data={"username": username, "password": PASSWORD,
                                                         "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        page = self.client.get("/desk" if username == "agent" else "/review/kb")
        return {"X-CSRF-Token": CSRF_IN_META.search(page.text).group(1)}

    def propose(self, headers: dict[str, str], question: str = CALLER_WORDS, item_id: str = ITEM):
        return self.client.post("/review/api/kb-changes", headers=headers, json={
            "kind": "add_question", "call_id": self.call_id, "turn_seq": 1, "item_id": item_id, "question": question})


@pytest.fixture
def env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer_stack: AnswerStack,
        shipped_items: Path):
    monkeypatch.setattr(telephony_app, "stack_loader", lambda *_args, **_kwargs: lambda: answer_stack)
    kb_dir = Path(shutil.copytree(shipped_items, tmp_path / "items"))
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE, "kb_dir": kb_dir})
    with TestClient(create_app(settings, voice=False), raise_server_exceptions=False) as client:
        yield Env(client, kb_dir)


def test_the_page_for_editors_and_supervisors(env: Env) -> None:
    assert env.client.get("/review/kb", follow_redirects=False).headers["location"] == "/desk/login?next=/review/kb"
    env.sign_in("editor")
    page = env.client.get("/review/kb")
    assert page.status_code == 200 and "<title>知识库修改 · 社保热线</title>" in page.text
    for link in ('href="/review"', 'href="/review/dashboard"', 'href="/review/gaps"', 'href="/review/kb"',
                 'href="/admin"'):
        assert link in page.text
    assert "李编辑" in page.text and 'action="/desk/logout"' in page.text and "退出" in page.text
    assert CSRF_IN_FORM.search(page.text).group(1) == CSRF_IN_META.search(page.text).group(1)
    nonce = re.search(r'<script nonce="([^"]+)">', page.text).group(1)
    assert f"script-src 'nonce-{nonce}'" in page.headers["content-security-policy"]
    assert "应用到知识库" in page.text and "驳回" in page.text
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # everything from this app, no CDN
    assert env.client.get("/review/kb", follow_redirects=False).status_code == 200
    env.sign_in("sup")
    assert env.client.get("/review/kb").status_code == 200  # read-only for supervisors (the page asks the API)
    env.sign_in("agent")
    denied = env.client.get("/review/kb")
    assert denied.status_code == 403 and "您的账号没有查看知识库修改的权限" in denied.text


def test_who_may_do_what_and_the_csrf_token(env: Env) -> None:
    headers = env.sign_in("agent")
    refused = env.client.get("/review/api/kb-changes")
    assert refused.status_code == 403 and refused.json()["detail"] == "您的账号没有查看知识库修改的权限"

    headers = env.sign_in("editor")
    refused = env.propose(headers)
    assert refused.status_code == 403 and refused.json()["detail"] == "只有质检主管和管理员可以提出知识库修改"

    headers = env.sign_in("sup")
    assert env.propose({}).json()["detail"] == "请求校验失败（CSRF），请刷新页面后重试"
    assert env.propose({"X-CSRF-Token": "forged"}).status_code == 403
    created = env.propose(headers)
    assert created.status_code == 201, created.text
    change = created.json()
    assert change["status"] == "proposed" and change["item_title"] == "失业保险金停发与续发"
    assert change["source"]["url"] == f"/review/calls/{env.call_id}#turn-1" and change["proposed_by"] == "sup"
    listed = env.client.get("/review/api/kb-changes").json()
    assert listed["total"] == 1 and listed["can_propose"] and not listed["can_decide"]
    refused = env.client.post(f"/review/api/kb-changes/{change['id']}/apply", headers=headers)
    assert refused.status_code == 403 and refused.json()["detail"] == "只有知识库编辑和管理员可以应用或驳回知识库修改"

    headers = env.sign_in("editor")
    assert env.client.post(f"/review/api/kb-changes/{change['id']}/apply").status_code == 403  # no CSRF token
    listed = env.client.get("/review/api/kb-changes").json()
    assert listed["can_decide"] and not listed["can_propose"] and listed["kb_version"] is None
    applied = env.client.post(f"/review/api/kb-changes/{change['id']}/apply", headers=headers)
    assert applied.status_code == 200, applied.text
    version = applied.json()["kb_version"]
    assert applied.json()["status"] == "applied" and applied.json()["decided_by"] == "editor"
    assert env.hotline.builds.current() == version
    assert f"  - {CALLER_WORDS}\n" in (env.kb_dir / "unemployment" / f"{ITEM}.md").read_text(encoding="utf-8")
    again = env.client.post(f"/review/api/kb-changes/{change['id']}/apply", headers=headers)
    assert again.status_code == 409 and again.json()["detail"] == f"修改 #{change['id']} 已应用（editor），不能再处理"
    assert env.client.get("/review/api/kb-changes").json()["kb_version"] == version
    assert env.client.get(f"/review/api/kb-changes/{change['id']}").json()["kb_version"] == version
    assert env.client.get("/review/api/kb-changes/999").status_code == 404


def test_refusals_read_in_chinese_with_their_problems_listed(env: Env) -> None:
    headers = env.sign_in("boss")  # an admin may propose and decide
    unknown_item = env.propose(headers, item_id="no-such-item")
    assert unknown_item.status_code == 422 and unknown_item.json()["detail"] == "知识库中没有事项 no-such-item"
    unknown_turn = env.client.post("/review/api/kb-changes", headers=headers, json={
        "kind": "add_question", "call_id": env.call_id, "turn_seq": 5, "item_id": ITEM, "question": CALLER_WORDS})
    assert unknown_turn.status_code == 422 and "没有第 5 轮" in unknown_turn.json()["detail"]
    assert env.propose(headers, question="好").status_code == 422
    existing = env.propose(headers, question="社保卡弄丢了咋个挂失", item_id="card-loss-report")
    assert existing.status_code == 409 and "已是事项「社会保障卡挂失与解挂」的常见问法" in existing.json()["detail"]
    first = env.propose(headers).json()
    duplicate = env.propose(headers, question=CALLER_WORDS + "？")
    assert duplicate.status_code == 409 and duplicate.json()["change_id"] == first["id"]
    draft = env.client.post("/review/api/kb-changes", headers=headers, json={
        "kind": "new_item", "call_id": env.call_id, "turn_seq": 1,
        "draft": {"id": "Unemployed Side Job", "title": "领失业金期间打零工", "category": "失业保险",
                  "questions": [CALLER_WORDS], "spoken": "领失业金期间找到工作的要停发。"}})
    assert draft.status_code == 422  # a malformed id: not even kept as an incomplete draft; every problem listed
    body = draft.json()
    assert body["detail"].startswith("条目草稿有") and "aliases" in body["fields"] and "aliases：必填" in body["errors"]
    kept = env.client.post("/review/api/kb-changes", headers=headers, json={
        "kind": "new_item", "call_id": env.call_id, "turn_seq": 1,
        "draft": {"id": "unemployed-side-job", "title": "领失业金期间打零工", "category": "失业保险",
                  "questions": [CALLER_WORDS], "spoken": "领失业金期间找到工作的要停发。"}})
    assert kept.status_code == 201 and "aliases" in kept.json()["draft"]["problems"]  # for an editor to complete
    kept_id = kept.json()["id"]
    unfinished = env.client.post(f"/review/api/kb-changes/{kept_id}/apply", headers=headers)
    assert unfinished.status_code == 422 and "aliases：必填" in unfinished.json()["errors"]
    edited = env.client.post(f"/review/api/kb-changes/{kept_id}/draft", headers=headers, json={
        "draft": {"id": "unemployed-side-job", "title": "领失业金期间打零工", "category": "失业保险",
                  "aliases": ["领失业金能打零工吗"]}})
    assert edited.status_code == 200 and "aliases" in edited.json()["draft"]["problems"]  # still too few
    assert edited.json()["draft"]["aliases"] == ["领失业金能打零工吗"]
    assert env.client.post("/review/api/kb-changes", headers=headers, json={"kind": "other"}).status_code == 422

    # The check fails after the edit (another item got the same question by hand): 409 with the check's errors.
    other = env.kb_dir / "survivor" / "unemployed-death-benefit.md"
    other.write_text(other.read_text(encoding="utf-8").replace("questions:\n", f"questions:\n  - {CALLER_WORDS}\n", 1),
                     encoding="utf-8")
    failed = env.client.post(f"/review/api/kb-changes/{first['id']}/apply", headers=headers)
    assert failed.status_code == 409
    assert failed.json()["detail"].startswith("知识库检查未通过（1 处错误），文件已恢复")
    assert failed.json()["errors"] == [(f"caller question '{CALLER_WORDS}' is listed 2 times "
                                        f"(unemployed-death-benefit, {ITEM})")]
    assert env.client.get(f"/review/api/kb-changes/{first['id']}").json()["status"] == "proposed"

    no_note = env.client.post(f"/review/api/kb-changes/{first['id']}/reject", headers=headers, json={"note": " "})
    assert no_note.status_code == 422 and no_note.json()["detail"] == "请填写驳回理由，提出修改的人会看到它"
    rejected = env.client.post(f"/review/api/kb-changes/{first['id']}/reject", headers=headers,
                               json={"note": "另一个事项已有这句"})
    assert rejected.status_code == 200 and rejected.json()["decision_note"] == "另一个事项已有这句"
    again = env.client.post(f"/review/api/kb-changes/{first['id']}/reject", headers=headers, json={"note": "再驳"})
    assert again.status_code == 409 and "已驳回" in again.json()["detail"]
    assert [row["status"] for row in env.client.get("/review/api/kb-changes?status=rejected").json()["changes"]] == \
        ["rejected"]


def test_the_page_template_has_the_placeholders_the_server_fills() -> None:
    page = (STATIC_DIR / "kb_changes.html").read_text(encoding="utf-8")
    for name in ("csrf_token", "display_name", "role", "nonce"):
        assert "{{" + name + "}}" in page
    assert "/review/api/kb-changes" in page and "应用到知识库" in page and "驳回" in page
