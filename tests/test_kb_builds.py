"""Versioned builds: content hashing, atomic publish, diffs, and a running server switching versions."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from kb.builds import DEFAULT_CALIBRATION_FILE, BuildStore, calibration_file
from kb.errors import KbError
from kb.ingest import Passage
from kb.lexicon import DEFAULT_LEXICON_FILE
from kb.loader import load_knowledge_base
from telephony.web.app import create_app
from telephony.settings import Settings
from tests.kbfixtures import make_mini_kb

NEW_SPOKEN = "社保卡丢了请马上打12333临时挂失，然后带身份证去银行网点正式挂失和补卡。"


def rewrite_spoken(items: Path, spoken: str) -> None:
    path = items / "card" / "card-loss-report.md"
    lines = [f"spoken: {spoken}" if line.startswith("spoken: ") else line
             for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_build_is_content_hashed_and_idempotent(tmp_path: Path) -> None:
    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(tmp_path / "builds")
    first, written = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    assert written and store.current() == first.version and len(first.version) == 12
    again, written_again = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    assert (again.version, written_again) == (first.version, False)
    assert not list(store.root.glob(".staging-*"))
    loaded = store.load()
    assert {item.id for item in loaded.kb.items} == {"card-loss-report", "pension-certification-test"}
    assert loaded.kb.get("card-loss-report").spoken.startswith("社保卡丢了请先挂失")


def test_diff_names_added_removed_and_changed_fields(tmp_path: Path) -> None:
    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(tmp_path / "builds")
    old, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    rewrite_spoken(items, NEW_SPOKEN)
    (items / "certification" / "pension-certification-test.md").unlink()
    passage = Passage("p1", "社保卡挂失说明", "guide.docx", "docx", "section 1", items=("card-loss-report",))
    new, _ = store.build(load_knowledge_base(items), [passage], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    assert new.version != old.version
    diff = store.diff(old.version, new.version)
    assert diff.removed == ["pension-certification-test"]
    assert diff.added == []
    assert diff.changed == {"card-loss-report": ["spoken"]}
    assert diff.passages_delta == 1 and not diff.lexicon_changed
    assert store.versions() == [old.version, new.version]


def retuned(path: Path) -> Path:
    """A copy of the shipped calibration with another fusion weight, as `hotline tune` could write it."""
    data = json.loads(DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8"))
    data["fusion_weights"]["words_bm25"] += 0.05
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def test_the_calibration_travels_with_the_build_and_a_retune_is_a_new_version(tmp_path: Path) -> None:
    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(tmp_path / "builds")
    old, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    loaded = store.load(old.version)
    assert loaded.calibration_path is not None
    assert loaded.calibration_path.read_bytes() == DEFAULT_CALIBRATION_FILE.read_bytes()
    assert old.calibration_hash == hashlib.sha256(DEFAULT_CALIBRATION_FILE.read_bytes()).hexdigest()[:16]

    calibration = retuned(tmp_path / "calibration.json")
    new, written = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, calibration)
    assert written and new.version != old.version and store.current() == new.version
    assert store.load().calibration_path.read_bytes() == calibration.read_bytes()
    diff = store.diff(old.version, new.version)
    assert diff.calibration_changed and not diff.lexicon_changed and not diff.empty
    assert (diff.added, diff.removed, diff.changed) == ([], [], {})


def test_a_build_made_before_builds_carried_a_calibration_still_loads(tmp_path: Path) -> None:
    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(tmp_path / "builds")
    built, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    directory = store.root / built.version
    (directory / "calibration.json").unlink()
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    del manifest["calibration_hash"]
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    loaded = store.load()
    assert loaded.calibration_path is None and loaded.manifest.calibration_hash is None


def test_calibration_file_prefers_the_one_tune_wrote_to_the_data_dir(tmp_path: Path) -> None:
    assert calibration_file(tmp_path) == DEFAULT_CALIBRATION_FILE
    tuned = retuned(tmp_path / "calibration.json")
    assert calibration_file(tmp_path) == tuned


def test_the_hotline_serves_the_calibration_of_its_build(tmp_path: Path, settings: Settings) -> None:
    from rag.calibration import load_calibration
    from telephony.app import Hotline
    from telephony.store import Database

    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(settings.data_dir / "kb-builds")
    calibration = retuned(tmp_path / "calibration.json")
    store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, calibration)
    (settings.data_dir / "calibration.json").write_text("not what the build serves", encoding="utf-8")
    database = Database("sqlite://")
    try:
        stack = Hotline.open(settings.model_copy(update={"kb_dir": items}), database, migrate=False).answers.stack
        assert stack.retriever.weights == load_calibration(calibration).weights
        assert stack.answerer.confidence == load_calibration(calibration).confidence
    finally:
        database.close()


def test_the_hotline_without_a_build_takes_the_tuned_calibration_from_the_data_dir(tmp_path: Path,
                                                                                  settings: Settings) -> None:
    from rag.calibration import load_calibration
    from telephony.app import Hotline
    from telephony.store import Database

    settings.data_dir.mkdir(parents=True)
    tuned = retuned(settings.data_dir / "calibration.json")
    database = Database("sqlite://")
    try:
        hotline = Hotline.open(settings, database, kb=load_knowledge_base(make_mini_kb(tmp_path / "items")),
                               migrate=False)
        assert hotline.answers.stack.retriever.weights == load_calibration(tuned).weights
        assert hotline.answers.stack.retriever.weights != load_calibration(DEFAULT_CALIBRATION_FILE).weights
    finally:
        database.close()


def test_invalid_kb_is_not_built(tmp_path: Path) -> None:
    items = make_mini_kb(tmp_path / "items")
    (items / "card" / "bad.md").write_text("no front matter", encoding="utf-8")
    with pytest.raises(KbError, match="1 invalid file"):
        BuildStore(tmp_path / "builds").build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE,
                                              DEFAULT_CALIBRATION_FILE)
    assert not (tmp_path / "builds" / "CURRENT").exists()


@pytest.fixture
def served(tmp_path: Path, settings: Settings):
    items = make_mini_kb(tmp_path / "items")
    store = BuildStore(settings.data_dir / "kb-builds")
    first, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    configured = settings.model_copy(update={"kb_dir": items, "admin_token": SecretStr("t" * 20)})
    with TestClient(create_app(configured), raise_server_exceptions=False) as client:
        yield client, store, items, first.version


def ask_spoken(client: TestClient) -> str:
    return client.post("/api/ask", json={"question": "社保卡丢了怎么办"}).json()["spoken"]


def test_admin_reload_switches_to_the_new_build(served) -> None:
    client, store, items, first = served
    assert client.get("/readyz").json()["kb"]["version"] == first
    assert ask_spoken(client).startswith("社保卡丢了请先挂失")
    rewrite_spoken(items, NEW_SPOKEN)
    second, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    headers = {"authorization": "Bearer " + "t" * 20}
    assert client.post("/api/admin/kb/reload").status_code == 401
    assert client.post("/api/admin/kb/reload", headers={"authorization": "Bearer wrong"}).status_code == 403
    response = client.post("/api/admin/kb/reload", headers=headers)
    assert response.json() == {"previous": first, "current": second.version, "items": 2}
    assert ask_spoken(client) == NEW_SPOKEN


def test_a_broken_publish_keeps_serving_the_old_version(served) -> None:
    client, store, _items, first = served
    (store.root / "CURRENT").write_text("doesnotexist\n", encoding="utf-8")
    response = client.post("/api/admin/kb/reload", headers={"authorization": "Bearer " + "t" * 20})
    assert response.status_code == 409
    assert response.json()["error"].startswith(f"build not loaded, still serving {first}")
    assert ask_spoken(client).startswith("社保卡丢了请先挂失")


def test_file_watch_switches_without_an_admin_call(served) -> None:
    client, store, items, first = served
    rewrite_spoken(items, NEW_SPOKEN)
    second, _ = store.build(load_knowledge_base(items), [], DEFAULT_LEXICON_FILE, DEFAULT_CALIBRATION_FILE)
    deadline = time.monotonic() + 30
    while client.get("/readyz").json()["kb"]["version"] != second.version:
        assert time.monotonic() < deadline, "the server did not pick up the published build"
        time.sleep(0.1)
    assert ask_spoken(client) == NEW_SPOKEN


def test_admin_endpoints_are_disabled_without_a_token(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/admin/kb/reload", headers={"authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json() == {"error": "admin endpoints are disabled: set HOTLINE_ADMIN_TOKEN"}
