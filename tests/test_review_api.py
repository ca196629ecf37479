"""The call review over HTTP (TestClient, SQLite): roles, filters and search, masking and audited unmasking, the
two-channel recording and its audit, QA marks, the daily sample, CSV and XLSX export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import text

from kb.builds import BuildStore
from telephony import app as telephony_app
from telephony.answers import AnswerStack
from telephony.handoff.accounts import Accounts
from telephony.review import audit
from telephony.review.index import index_all
from telephony.settings import EmbeddingBackend, Settings
from telephony.store import CallChannel
from telephony.store.models import Call, CallStatus, UserRole
from telephony.web.app import create_app

PASSWORD = "correct-horse-9"
CSRF_IN_PAGE = re.compile(r'name="csrf_token" value="([^"]+)"')
ID_NUMBER = "110101199003077578"  # a valid 身份证号 (check digit right), made up
MOBILE = "13812345678"


@pytest.fixture(scope="module")
def answer_stack(tmp_path_factory: pytest.TempPathFactory) -> AnswerStack:
    root = tmp_path_factory.mktemp("stack")
    settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000", sms_signature="测试社保",
                        embedding_backend=EmbeddingBackend.NONE)
    return telephony_app.stack_loader(settings, BuildStore(root / "builds"))()


class Env:
    def __init__(self, client: TestClient, tmp_path: Path) -> None:
        self.client = client
        self.hotline = client.app.state.hotline_state.hotline
        self.database = self.hotline.database
        self.tmp_path = tmp_path

    def user(self, username: str, role: UserRole) -> None:
        hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests only
        Accounts(self.database, hasher).create(username, username.title(), role, PASSWORD)

    def sign_in(self, username: str) -> dict[str, str]:
        self.client.cookies.clear()
        token = CSRF_IN_PAGE.search(self.client.get("/desk/login").text).group(1)
        response = self.client.post("/desk/login", data={"username": username, "password": PASSWORD,
                                                         "csrf_token": token}, follow_redirects=False)
        assert response.status_code == 303, response.text
        # Signing in makes a new token; the staff pages carry it.
        page = self.client.get("/review")
        found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        return {"X-CSRF-Token": found.group(1) if found else ""}

    def call(self, started: dt.datetime, turns: list[dict], number: str | None = MOBILE, end_reason: str = "caller_hangup",
             recording: bool = False) -> str:
        call_id = self.database.start_call(CallChannel.SIP, caller_number=number).id
        for seq, fields in enumerate(turns, start=1):
            self.database.add_turn(call_id, **({"spoken_text": "", "action": "answer", "confidence": 0.97} | fields))
            with self.database.session() as session:
                session.execute(text("UPDATE turns SET created_at = :t WHERE call_id = :c AND seq = :s"),
                                {"t": started + dt.timedelta(seconds=10 * seq), "c": call_id, "s": seq})
        with self.database.session() as session:
            row = session.get(Call, call_id)
            row.started_at, row.status, row.end_reason = started, CallStatus.ENDED, end_reason
            row.ended_at = started + dt.timedelta(seconds=40)
            if recording:
                row.recording_caller_path = str(self._wav(f"{call_id}-caller.wav", 1000, 16000))
                row.recording_assistant_path = str(self._wav(f"{call_id}-assistant.wav", -2000, 8000))
        return call_id

    def _wav(self, name: str, value: int, frames: int) -> Path:
        path = self.tmp_path / name
        with wave.open(str(path), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(8000)
            writer.writeframes(np.full(frames, value, dtype="<i2").tobytes())
        return path

    def index(self) -> None:
        index_all(self.database, {item.id: item.category for item in self.hotline.answers.kb.items})


@pytest.fixture
def env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer_stack: AnswerStack):
    monkeypatch.setattr(telephony_app, "stack_loader", lambda *_args, **_kwargs: lambda: answer_stack)
    settings = settings.model_copy(update={"embedding_backend": EmbeddingBackend.NONE, "qa_sample_size": 2})
    with TestClient(create_app(settings, voice=False), raise_server_exceptions=False) as client:
        yield Env(client, tmp_path)


def yesterday_at(hour: int) -> dt.datetime:
    china = dt.timezone(dt.timedelta(hours=8))
    day = dt.datetime.now(china).date() - dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(hour), china).astimezone(dt.UTC)


@pytest.fixture
def calls(env: Env) -> dict[str, str]:
    made = {
        "injury": env.call(yesterday_at(9), [
            {"caller_text": f"我在工地受伤了，工伤认定怎么办，我身份证号{ID_NUMBER}", "item_ids": ["injury-recognition"],
             "spoken_text": "工伤认定由用人单位在事故发生之日起30日内提出申请。"}], recording=True),
        "card": env.call(yesterday_at(10), [
            {"caller_text": "社保卡丢了", "action": "clarify", "confidence": 0.6},
            {"caller_text": "要挂失", "item_ids": ["card-loss-report"]}]),
        "complaint": env.call(yesterday_at(11), [
            {"caller_text": "我要投诉", "action": "handoff", "confidence": 0.1}], end_reason="handoff", number=None),
    }
    env.index()
    return made


def test_only_supervisors_and_admins_review(env: Env, calls: dict[str, str]) -> None:
    for name, role in (("agent1", UserRole.AGENT), ("editor1", UserRole.KB_EDITOR)):
        env.user(name, role)
        env.sign_in(name)
        page = env.client.get("/review", follow_redirects=False)
        assert page.status_code == 403 and "您的账号没有质检权限" in page.text
        api = env.client.get("/review/api/calls")
        assert api.status_code == 403 and api.json()["detail"] == "您的账号没有质检权限"
        assert env.client.get(f"/review/api/calls/{calls['injury']}/recording").status_code == 403
    env.client.cookies.clear()
    page = env.client.get("/review/calls/abc", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/desk/login?next=/review/calls/abc"
    assert env.client.get("/review/api/calls").status_code == 401
    env.user("sup", UserRole.SUPERVISOR)
    env.sign_in("sup")
    page = env.client.get("/review")
    assert page.status_code == 200 and "通话审查" in page.text and "{{" not in page.text


def test_list_filters_search_and_masks(env: Env, calls: dict[str, str]) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    env.sign_in("sup")
    listed = env.client.get("/review/api/calls").json()
    assert listed["total"] == 3 and [row["call_id"] for row in listed["rows"]] == [
        calls["complaint"], calls["card"], calls["injury"]]
    injury = listed["rows"][2]
    assert injury["caller_number"] == "138****5678" and ID_NUMBER not in injury["first_question"]
    assert "110101" in injury["first_question"] and injury["outcome"] == "answered"
    found = env.client.get("/review/api/calls", params={"q": "工伤"}).json()
    assert [row["call_id"] for row in found["rows"]] == [calls["injury"]]
    assert env.client.get("/review/api/calls", params={"outcome": "handed_off"}).json()["rows"][0]["call_id"] == \
        calls["complaint"]
    assert env.client.get("/review/api/calls", params={"outcome": "clarified", "category": "社会保障卡"}).json()[
        "total"] == 1
    day = (dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date() - dt.timedelta(days=1)).isoformat()
    assert env.client.get("/review/api/calls", params={"from": day, "to": day}).json()["total"] == 3
    assert env.client.get("/review/api/calls", params={"to": "2020-01-01"}).json()["total"] == 0
    bad = env.client.get("/review/api/calls", params={"confidence": "certain"})
    assert bad.status_code == 400 and "置信度" in bad.json()["detail"]
    assert env.client.get("/review/api/calls", params={"q": "？！"}).json()["detail"] == "请输入要搜索的词语"
    assert env.client.get("/review/api/calls", params={"page_size": 1000}).status_code == 422
    assert audit.entries(env.database, action="unmask")[1] == 0  # masked views leave no trace
    unmasked = env.client.get("/review/api/calls", params={"q": "工伤", "unmask": "1"}).json()["rows"][0]
    assert unmasked["caller_number"] == MOBILE and ID_NUMBER in unmasked["first_question"]
    entries, total = audit.entries(env.database, action="unmask")
    assert total == 1 and entries[0].username == "sup" and entries[0].detail["calls"] == [calls["injury"]]


def test_detail_masks_until_unmasked_and_marks_turns(env: Env, calls: dict[str, str]) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    headers = env.sign_in("sup")
    detail = env.client.get(f"/review/api/calls/{calls['injury']}").json()
    assert detail["masked"] and detail["caller_number"] == "138****5678"
    assert ID_NUMBER not in detail["turns"][0]["caller_text"]
    assert detail["turns"][0]["items"] == [{"id": "injury-recognition", "title": env.hotline.answers.kb.get(
        "injury-recognition").title}]
    assert detail["has_recording"] and detail["outcome"] == "answered" and detail["turns"][0]["offset_s"] == 10.0
    full = env.client.get(f"/review/api/calls/{calls['injury']}", params={"unmask": "1"}).json()
    assert ID_NUMBER in full["turns"][0]["caller_text"] and full["caller_number"] == MOBILE
    assert audit.entries(env.database, action="unmask")[0][0].target == calls["injury"]
    assert env.client.get("/review/api/calls/nope").json()["detail"] == "没有这个通话：nope"
    mark = f"/review/api/calls/{calls['card']}/turns/2/mark"
    assert env.client.post(mark, json={"label": "wrong_answer"}).status_code == 403  # no CSRF token
    saved = env.client.post(mark, json={"label": "wrong_answer", "comment": "挂失答成了补办"}, headers=headers)
    assert saved.status_code == 200 and saved.json()["reviewer"] == "sup"
    turn = env.client.get(f"/review/api/calls/{calls['card']}").json()["turns"][1]
    assert turn["qa"]["label"] == "wrong_answer" and turn["qa"]["comment"] == "挂失答成了补办"
    assert env.client.post(mark, json={"label": "nonsense"}, headers=headers).status_code == 422
    missing = env.client.post(f"/review/api/calls/{calls['card']}/turns/9/mark", json={"label": "correct"},
                              headers=headers)
    assert missing.status_code == 404 and "没有第 9 轮" in missing.json()["detail"]


def test_recording_is_two_channels_and_each_listen_is_audited(env: Env, calls: dict[str, str]) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    env.sign_in("sup")
    response = env.client.get(f"/review/api/calls/{calls['injury']}/recording")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as reader:
        assert reader.getnchannels() == 2 and reader.getframerate() == 8000 and reader.getnframes() == 16000
        samples = np.frombuffer(reader.readframes(16000), dtype="<i2").reshape(-1, 2)
    assert (samples[:, 0] == 1000).all()  # the caller, left
    assert (samples[:8000, 1] == -2000).all() and (samples[8000:, 1] == 0).all()  # the assistant, padded
    entries, total = audit.entries(env.database, action="listen")
    assert total == 1 and entries[0].target == calls["injury"] and entries[0].detail["seconds"] == 2.0
    none = env.client.get(f"/review/api/calls/{calls['card']}/recording")
    assert none.status_code == 404 and none.json()["detail"] == "这个通话没有录音"
    Path(env.tmp_path / f"{calls['injury']}-caller.wav").unlink()
    gone = env.client.get(f"/review/api/calls/{calls['injury']}/recording")
    assert gone.status_code == 404 and "已按保存期限删除" in gone.json()["detail"]
    assert audit.entries(env.database, action="listen")[1] == 1


def test_daily_sample(env: Env, calls: dict[str, str]) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    env.sign_in("sup")
    sample = env.client.get("/review/api/sample").json()
    assert sample["calls"] == 2 and sample["size"] == 2 and sample["accuracy"] is None
    in_sample = env.client.get("/review/api/calls", params={"sample": sample["day"]}).json()
    assert in_sample["total"] == 2 and {row["call_id"] for row in in_sample["rows"]} <= set(calls.values())
    assert env.client.get("/review/api/sample").json()["calls"] == 2  # drawn once
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()
    refused = env.client.get("/review/api/sample", params={"day": today})
    assert refused.status_code == 400 and "当天结束后" in refused.json()["detail"]


def test_exports_are_masked_unless_asked_and_always_audited(env: Env, calls: dict[str, str]) -> None:
    env.user("sup", UserRole.SUPERVISOR)
    env.sign_in("sup")
    masked = env.client.get("/review/api/export", params={"format": "csv"})
    assert masked.status_code == 200 and masked.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(masked.content.decode("utf-8-sig"))))
    assert rows[0][:4] == ["通话编号", "开始时间", "渠道", "来电号码"] and len(rows) == 4
    injury = next(row for row in rows if row[0] == calls["injury"])
    assert injury[3] == "138****5678" and ID_NUMBER not in injury[8] and injury[4] == "首次答复"
    full = env.client.get("/review/api/export", params={"format": "xlsx", "unmask": "1", "q": "工伤"})
    sheet = load_workbook(io.BytesIO(full.content)).active
    values = list(sheet.iter_rows(values_only=True))
    assert len(values) == 2 and values[1][0] == calls["injury"] and values[1][3] == MOBILE
    assert ID_NUMBER in values[1][8]
    entries, total = audit.entries(env.database, action="export")
    assert total == 2
    assert entries[0].detail["masked"] is False and entries[0].detail["rows"] == 1 and entries[0].detail["format"] == \
        "xlsx" and entries[0].detail["filters"]["q"] == "工伤"
    assert entries[1].detail["masked"] is True and entries[1].detail["rows"] == 3
    assert env.client.get("/review/api/export", params={"format": "pdf"}).status_code == 422
