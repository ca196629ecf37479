"""The item format and `kb check` rules, each with the exact message a bureau editor sees."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from kb.builds import DEFAULT_CALIBRATION_FILE
from kb.check import check_knowledge_base
from kb.errors import KbFileError
from kb.loader import load_knowledge_base, parse_item
from rag.calibration import load_calibration
from rag.hybrid import HybridRetriever
from rag.text import TextProcessor
from kb.lexicon import load_lexicon
from tests.kbfixtures import example_text, make_mini_kb


def edit(text: str, pattern: str, replacement: str) -> str:
    changed, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, pattern
    return changed


@pytest.mark.parametrize(
    ("pattern", "replacement", "message"),
    [
        (r"^---\n", "", "missing YAML front matter"),
        (r"^title: .*$", "title: [unclosed", "front matter is not valid YAML"),
        (r"^spoken: .*$", "spoken: " + "很长" * 41, "spoken summary has 82 characters, limit 80"),
        (r"^spoken: .*$", "spoken: 详见 https://example.org 网站", "spoken summary must not contain URLs"),
        (r"^category: .*$", "category: 医保", "unknown category '医保'"),
        (r"^## 常见问题$", "## 随便写写", "unknown section '## 随便写写'"),
        (r"^policy_basis:\n(  .*\n)+", "policy_basis: []\n", "at least 1 item"),
        (r"^  - document: 关于推广", "  - document: 《关于推广", "write the document name without 《》"),
        (r"^  - url: https://592gupiao.com.*$", "  - url: not-a-url", "not an http(s) URL"),
    ],
)
def test_format_errors_name_the_file_and_the_problem(pattern: str, replacement: str, message: str) -> None:
    with pytest.raises(KbFileError) as caught:
        parse_item(edit(example_text(), pattern, replacement), "card/x.md")
    assert str(caught.value).startswith("card/x.md: ")
    assert message in str(caught.value)


def write(root: Path, name: str, text: str) -> None:
    (root / "card" / name).write_text(text, encoding="utf-8")


def test_cross_item_rules(tmp_path: Path) -> None:
    root = make_mini_kb(tmp_path / "items")
    clone = edit(example_text(), r"^id: .*$", "id: card-loss-copy")
    clone = edit(clone, r"^service_no: .*$", "service_no: 71")
    clone = edit(clone, r"^  online: .*$", "  online: [某某App]")
    clone = edit(clone, r"^sms: \|\n", "sms: |\n  " + "很长的短信" * 80 + "\n")
    clone = re.sub(r"## 办理流程\n.*?(?=## 办理时限)", "", clone, flags=re.DOTALL)
    write(root, "card-loss-copy.md", clone.replace("last_reviewed:", "related: [nowhere]\nlast_reviewed:"))
    report = check_knowledge_base(load_knowledge_base(root), signature="桂林社保")
    errors = "\n".join(report.errors)
    assert "card/card-loss-copy.md: unknown online channel '某某App'" in errors
    assert "card/card-loss-copy.md: SMS as sent is" in errors and "limit 500" in errors
    assert "card/card-loss-copy.md: related item 'nowhere' does not exist" in errors
    assert "card/card-loss-copy.md: missing or empty section '## 办理流程'" in errors
    assert "alias '社保卡丢了怎么办' is shared by items card-loss-copy, card-loss-report" in errors


def test_a_staged_policy_change_may_reuse_aliases(tmp_path: Path) -> None:
    root = make_mini_kb(tmp_path / "items")
    current = edit(example_text(), r"^last_reviewed: .*$", "last_reviewed: 2026-11-24\neffective_until: 2099-12-31")
    write(root, "card-loss-report.md", current)
    staged = edit(example_text(), r"^id: .*$", "id: card-loss-report-2100")
    staged = edit(staged, r"^last_reviewed: .*$", "last_reviewed: 2026-11-24\neffective_from: 2100-01-01")
    staged = edit(staged, r"^spoken: .*$", "spoken: 新规定下社保卡丢了直接在手机上挂失补卡。")
    write(root, "card-loss-report-2100.md", staged)
    kb = load_knowledge_base(root)
    assert check_knowledge_base(kb).errors == []
    retriever = HybridRetriever(kb, TextProcessor(load_lexicon()), load_calibration(DEFAULT_CALIBRATION_FILE).weights)
    assert retriever.retrieve("社保卡丢了怎么办")[0].item_id == "card-loss-report"
    later = retriever.retrieve("社保卡丢了怎么办", on=dt.date(2100, 6, 1))
    assert later[0].item_id == "card-loss-report-2100"
    assert "card-loss-report" not in [scored.item_id for scored in later]


def test_unverified_marks_must_be_listed(tmp_path: Path) -> None:
    root = make_mini_kb(tmp_path / "items")
    text = re.sub(r"^verify:\n(  .*\n)+", "", example_text(), flags=re.MULTILINE)
    write(root, "card-loss-report.md", text)
    report = check_knowledge_base(load_knowledge_base(root))
    assert "card/card-loss-report.md: text carries 〔待核实〕 but the item has no verify entries" in report.errors


def test_a_caller_question_belongs_to_one_item(tmp_path: Path) -> None:
    root = make_mini_kb(tmp_path)
    for path in (root / "card" / "card-loss-report.md", root / "certification" / "pension-certification-test.md"):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("aliases:\n", "questions:\n  - 这个要去哪里办\n  - 我想问一下那个卡\naliases:\n", 1),
                        encoding="utf-8")
    kb = load_knowledge_base(root)
    assert not kb.errors and [len(item.questions) for item in kb.items] == [2, 2]
    report = check_knowledge_base(kb)
    clashes = [error for error in report.errors if error.startswith("caller question")]
    assert clashes == [
        "caller question '我想问一下那个卡' is listed 2 times (card-loss-report, pension-certification-test)",
        "caller question '这个要去哪里办' is listed 2 times (card-loss-report, pension-certification-test)",
    ]


def test_a_fact_may_only_repeat_numbers_the_item_states_and_ask_between_is_mutual(tmp_path: Path) -> None:
    root = make_mini_kb(tmp_path / "items")
    clone = edit(example_text(), r"^id: .*$", "id: card-loss-copy")
    clone = edit(clone, r"^service_no: .*$", "service_no: 71")
    clone = re.sub(r"^aliases:\n(  - .*\n)+", "aliases: [挂失一, 挂失二, 挂失三, 挂失四, 挂失五]\n", clone, flags=re.MULTILINE)
    clone = re.sub(r"^questions:\n(  - .*\n)+", "", clone, flags=re.MULTILINE)
    clone = edit(clone, r"^sms: ", "facts:\n  - {asks: [多少钱], say: 补卡工本费是999元。}\n"
                                    "  - {asks: [几天], about: [挂失], say: 临时挂失立即生效。}\nsms: ")
    clone = clone.replace("last_reviewed:", "ask_between: [card-loss-report]\nlast_reviewed:")
    write(root, "card-loss-copy.md", clone)
    kb = load_knowledge_base(root)
    errors = "\n".join(check_knowledge_base(kb, signature="桂林社保").errors)
    assert "card/card-loss-copy.md: fact '补卡工本费是999元。' says 999, which the item's SMS and sections do not state" in errors
    assert "ask_between 'card-loss-report' must be mutual (add card-loss-copy to its list)" in errors
    item = kb.get("card-loss-copy")
    assert item.fact_for("补卡要多少钱").say == "补卡工本费是999元。"
    assert item.fact_for("挂失要几天") .say == "临时挂失立即生效。"
    assert item.fact_for("补办要几天") is None  # `about` narrows the second fact to 挂失
