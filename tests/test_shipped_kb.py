"""The knowledge base as shipped: every item valid, the 87 catalogue services (plus the added ones) covered, limits and sources kept."""

from __future__ import annotations

import re

import pytest

from kb.check import PHONE_PLACEHOLDER, check_knowledge_base
from kb.loader import KnowledgeBase, load_knowledge_base
from kb.schema import SMS_MAX_CHARS, SPOKEN_MAX_CHARS, ItemKind
from kb.sms_text import compose_sms

# Local phone numbers must come from settings; only national service numbers may appear in items.
NATIONAL_NUMBERS = {"12333", "12345", "12366", "12393", "12329", "12351", "110", "120"}


@pytest.fixture(scope="module")
def shipped() -> KnowledgeBase:
    return load_knowledge_base()


def test_every_item_loads_and_the_checker_finds_no_error(shipped: KnowledgeBase) -> None:
    assert [str(error) for error in shipped.errors] == []
    report = check_knowledge_base(shipped)
    assert report.errors == []


def test_the_87_services_and_the_referrals_are_covered(shipped: KnowledgeBase) -> None:
    numbers = sorted(item.service_no for item in shipped.items if item.kind is ItemKind.SERVICE)
    # 1-87: the catalogue's services; 88-90: items added after the 2026-12 audit (no gaps, no repeats).
    assert numbers == list(range(1, 91))
    referrals = {item.id for item in shipped.items if item.kind is ItemKind.REFERRAL}
    assert {"referral-medical-insurance", "referral-maternity", "referral-tax-collection", "referral-wage-arrears",
            "referral-housing-fund", "referral-employment-services"} <= referrals


def test_authored_text_reaches_150000_characters(shipped: KnowledgeBase) -> None:
    assert check_knowledge_base(shipped).characters >= 150_000


def test_each_item_has_citations_sources_and_texts_within_limits(shipped: KnowledgeBase) -> None:
    for item in shipped.items:
        assert item.policy_basis and all(basis.document for basis in item.policy_basis), item.id
        assert all(source.url.startswith(("http://", "https://")) for source in item.sources), item.id
        assert all(source.supports for source in item.sources), f"{item.id}: every source says what it supports"
        assert len(item.spoken) <= SPOKEN_MAX_CHARS, item.id
        assert len(compose_sms(item, PHONE_PLACEHOLDER, "桂林社保")) <= SMS_MAX_CHARS, item.id
        assert len(set(item.aliases)) >= 5, item.id


def test_no_local_phone_number_is_written_into_an_item(shipped: KnowledgeBase) -> None:
    for item in shipped.items:
        for number in re.findall(r"(?<!\d)\d[\d-]{4,}\d(?!\d)", item.authored_text()):
            digits = number.replace("-", "")
            if re.fullmatch(r"(19|20)\d{2}", digits[:4]) and len(digits) <= 8:
                continue  # dates such as 2025-01-01 or 20250101
            assert digits in NATIONAL_NUMBERS or len(digits) < 5, f"{item.id}: number {number}"
