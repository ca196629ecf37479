"""Ingest of real docx, pdf, xlsx, md and txt files made here; bad files are reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docx
import pytest
from openpyxl import Workbook
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from kb.ingest import PassageStore, chunk, fingerprint, ingest
from kb.loader import load_knowledge_base
from tests.kbfixtures import make_mini_kb


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    document = docx.Document()
    document.add_heading("社会保障卡挂失与解挂", level=1)
    document.add_paragraph("持卡人发现社保卡丢失后，应当先办理临时挂失，再到合作银行网点办理正式挂失。")
    document.add_heading("资格认证", level=1)
    document.add_paragraph("领取养老保险待遇资格认证每年一次，可以帮老人刷脸认证。")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "事项", "渠道"
    table.cell(1, 0).text, table.cell(1, 1).text = "社保卡挂失", "12333服务热线"
    document.save(folder / "guide.docx")

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(folder / "notice.pdf"))
    pdf.setFont("STSong-Light", 12)
    pdf.drawString(40, 800, "关于推广应用具有金融功能的第三代社会保障卡的通知要点说明。")
    pdf.showPage()
    pdf.setFont("STSong-Light", 12)
    pdf.drawString(40, 800, "第二页：补卡后需要到银行激活金融功能。")
    pdf.save()

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "FAQ"
    sheet.append(["问题", "答复"])
    sheet.append(["社保卡丢了怎么挂失？", "先打12333临时挂失，再到银行网点正式挂失。"])
    sheet.append(["养老认证怎么弄？", "每年一次，手机上刷脸即可。"])
    sheet.append([None, None])
    workbook.save(folder / "faq.xlsx")

    (folder / "notes.md").write_text("# 窗口提示\n\n社保卡挂失不收费，补卡费用以公布为准。\n", encoding="utf-8")
    (folder / "plain.txt").write_text("失业保险金申领需要先办理失业登记。\n\n第二段文字内容足够长。", encoding="utf-8")
    (folder / "broken.docx").write_bytes(b"this is not a zip archive")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage without objects")
    (folder / "legacy.txt").write_bytes("社保卡挂失".encode("gbk"))
    return folder


def test_every_format_becomes_passages_with_sources_and_links(tmp_path: Path, documents: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    store = PassageStore(tmp_path / "passages.jsonl")
    files = [documents / name for name in ("guide.docx", "notice.pdf", "faq.xlsx", "notes.md", "plain.txt")]
    report = ingest(files, kb, store)
    assert report.errors == []
    assert report.files == 5
    passages = store.load()
    by_type = {passage.source_type for passage in passages}
    assert by_type == {"docx", "pdf", "xlsx", "md", "txt"}
    faq = [p for p in passages if p.source_type == "xlsx"]
    assert [p.location for p in faq] == ["FAQ!row 2", "FAQ!row 3"]
    assert faq[0].text == "问：社保卡丢了怎么挂失？\n答：先打12333临时挂失，再到银行网点正式挂失。"
    assert faq[1].items == ("pension-certification-test",)
    lost_card = next(p for p in passages if p.source_type == "docx" and p.heading == "社会保障卡挂失与解挂")
    assert lost_card.items[0] == "card-loss-report"
    pdf_pages = sorted(p.location for p in passages if p.source_type == "pdf")
    assert pdf_pages == ["page 1", "page 2"]
    first_page = next(p for p in passages if p.location == "page 1")
    assert "card-loss-report" in first_page.items  # the cited document name links it
    assert any(p.location == "table 1" and "12333服务热线" in p.text for p in passages)


def test_reingesting_adds_nothing(tmp_path: Path, documents: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    store = PassageStore(tmp_path / "passages.jsonl")
    first = ingest([documents / "faq.xlsx", documents / "notes.md"], kb, store)
    second = ingest([documents / "faq.xlsx", documents / "notes.md"], kb, store)
    assert first.passages_added == 3
    assert (second.passages_added, second.duplicates_skipped) == (0, 3)
    assert len(store.load()) == 3


def test_bad_files_are_reported_and_the_rest_still_ingested(tmp_path: Path, documents: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    store = PassageStore(tmp_path / "passages.jsonl")
    (documents / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    report = ingest([documents, tmp_path / "missing.pdf"], kb, store)
    messages = "\n".join(report.errors)
    assert "broken.docx: cannot read docx file" in messages
    assert "broken.pdf" in messages
    assert "legacy.txt: text is not UTF-8" in messages
    assert "missing.pdf: no such file" in messages
    assert len(report.errors) == 4  # old.doc is not picked up from a folder: not a supported type
    assert {p.source_type for p in store.load()} == {"docx", "pdf", "xlsx", "md", "txt"}
    named = ingest([documents / "old.doc"], kb, store)
    assert named.errors == [f"{documents / 'old.doc'}: unsupported file type '.doc' (supported: .docx, .pdf, .xlsx, .md, .markdown, .txt)"]


def test_cli_ingest_reports_and_exits_nonzero_on_a_bad_file(tmp_path: Path, documents: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    environment |= {"HOTLINE_DATA_DIR": str(tmp_path / "var"), "HOTLINE_KB_DIR": str(make_mini_kb(tmp_path / "items"))}
    result = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "kb", "ingest", "--json", str(documents / "faq.xlsx"),
         str(documents / "broken.docx")], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["passages_added"] == 2 and len(report["errors"]) == 1
    assert (tmp_path / "var" / "passages.jsonl").exists()


def test_chunking_and_fingerprints() -> None:
    long_text = "社保卡挂失。" * 200
    pieces = list(chunk(long_text, limit=100))
    assert all(len(piece) <= 100 for piece in pieces)
    assert "".join(pieces).replace("\n", "") == long_text
    assert fingerprint("社保卡 挂失！") == fingerprint("社保卡挂失")
    assert fingerprint("社保卡挂失") != fingerprint("社保卡补卡")
