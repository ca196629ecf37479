"""Small knowledge bases for tests, derived from the shipped example item."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLE_ITEM = Path(__file__).resolve().parent.parent / "kb" / "items" / "card" / "card-loss-report.md"


def example_text() -> str:
    """The shipped example item without cross-references (the mini KB holds no other items) and without its
    callers' questions (the mini KB's two items are copies of it; a question may belong to one item only)."""
    text = re.sub(r"^related: .*\n", "", EXAMPLE_ITEM.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return re.sub(r"^questions:\n(?:  - .*\n)+", "", text, flags=re.MULTILINE)


def make_mini_kb(root: Path) -> Path:
    """Two valid items: the lost-card item and a pension-certification item written for tests."""
    (root / "card").mkdir(parents=True, exist_ok=True)
    (root / "card" / "card-loss-report.md").write_text(example_text(), encoding="utf-8")
    certification = (
        example_text()
        .replace("id: card-loss-report", "id: pension-certification-test")
        .replace("service_no: 70", "service_no: 82")
        .replace("title: 社会保障卡挂失与解挂", "title: 领取养老保险待遇资格认证")
        .replace("category: 社会保障卡", "category: 待遇资格认证")
    )
    certification = re.sub(
        r"aliases:\n(  - .*\n)+",
        "aliases:\n  - 养老认证怎么弄\n  - 帮老人刷脸认证\n  - 退休金认证\n  - 每年认证一次\n  - 手机上怎么认证\n",
        certification,
    )
    certification = re.sub(r"^spoken: .*$", "spoken: 领养老金的人每年认证一次，可以在手机上刷脸，也可以帮家里老人代为认证。",
                           certification, flags=re.MULTILINE)
    (root / "certification").mkdir(parents=True, exist_ok=True)
    (root / "certification" / "pension-certification-test.md").write_text(certification, encoding="utf-8")
    return root
