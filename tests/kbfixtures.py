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


CARD_QUESTIONS = ["我的社保卡掉了咋办", "社保卡丢在出租车上了要先挂失吗", "卡找不到了怕别人拿去用",
                  "喂你好我那个社保卡昨天买菜的时候弄丢了现在要怎么办", "社保卡被偷了去哪里挂失", "丢了卡可以先电话挂失吗"]
PENSION_QUESTIONS = ["我爸的退休金今年还没认证", "养老金认证在手机上咋个弄", "老人家不会刷脸能帮他认证吗",
                     "喂你好我想问一下我妈领养老金每年都要认证吗", "退休工资认证过期了会停发吗", "在外地住的老人怎么认证"]


def with_questions(path: Path, questions: list[str]) -> None:
    """Give an item file callers' questions (`questions:`), right after its aliases."""
    text = path.read_text(encoding="utf-8")
    block = "questions:\n" + "".join(f"  - {question}\n" for question in questions)
    path.write_text(re.sub(r"(aliases:\n(?:  - .*\n)+)", lambda m: m.group(1) + block, text, count=1), encoding="utf-8")


def make_tunable_kb(root: Path) -> Path:
    """The mini KB with six callers' questions per item, enough for `hotline tune` with two folds."""
    make_mini_kb(root)
    with_questions(root / "card" / "card-loss-report.md", CARD_QUESTIONS)
    with_questions(root / "certification" / "pension-certification-test.md", PENSION_QUESTIONS)
    return root
