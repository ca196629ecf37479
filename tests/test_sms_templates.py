"""The item → approved-template map for template-only gateways (kb/sms_templates.yaml) and its `kb check` rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.check import check_knowledge_base
from kb.loader import load_knowledge_base
from kb.sms_templates import (
    TemplateError,
    basis_short_name,
    item_variables,
    load_templates,
    parse_templates,
    template_message,
    ticket_template_message,
)
from tests.kbfixtures import make_mini_kb

PHONE = "0773-0000000"
SCHEME = [{"name": "title", "source": "item.title"}, {"name": "basis", "source": "item.basis"},
          {"name": "phone", "source": "settings.centre_phone"}]


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


def templates(codes: dict[str, dict[str, str]], **limits):
    return parse_templates({"limits": {"aliyun": 35, "tencent": 12, **limits}, "variables": SCHEME, "items": codes},
                           "test.yaml")


def test_the_shipped_map_lists_every_item_and_fills_variables_from_a_real_item(kb) -> None:
    shipped = load_templates()
    assert {item.id for item in kb.items} <= set(shipped.items)
    assert shipped.limits == {"aliyun": 35, "tencent": 12}
    item = kb.get("card-loss-report")
    assert item_variables(shipped, item, PHONE) == (
        ("title", "社会保障卡挂失与解挂"), ("basis", "人社厅发〔2020〕101号"), ("phone", PHONE))
    # A document without a number is named in 《》.
    assert basis_short_name(kb.get("contribution-back-payment")) == "《中华人民共和国社会保险法》"


def test_an_approved_code_gives_the_message_and_a_missing_one_a_clear_error(kb) -> None:
    item = kb.get("card-loss-report")
    mapped = templates({"card-loss-report": {"aliyun": "SMS_000000001", "tencent": ""}})
    code, variables = template_message(item, "aliyun", PHONE, templates=mapped)
    assert code == "SMS_000000001" and dict(variables)["title"] == "社会保障卡挂失与解挂"
    with pytest.raises(TemplateError, match=r"card-loss-report: no approved tencent template code in test.yaml; "
                                            r"the bureau must copy it from the tencent console"):
        template_message(item, "tencent", PHONE, templates=mapped)
    with pytest.raises(TemplateError, match="no approved aliyun template code in kb/sms_templates.yaml"):
        template_message(item, "aliyun", PHONE)  # as shipped: every code is left for the bureau
    with pytest.raises(TemplateError, match="unknown SMS provider 'huawei'"):
        template_message(item, "huawei", PHONE, templates=mapped)


def test_a_value_over_the_provider_limit_is_refused_when_sending(kb) -> None:
    item = kb.get("card-loss-report")
    mapped = templates({"card-loss-report": {"aliyun": "", "tencent": "1234567"}}, tencent=8)
    with pytest.raises(TemplateError, match="card-loss-report: title has 10 characters; basis has 14 characters; phone has 12 "
                                            "characters, tencent allows 1-8 per variable"):
        template_message(item, "tencent", PHONE, templates=mapped)


def test_the_ticket_confirmation_has_its_own_template() -> None:
    mapped = parse_templates({"limits": {}, "variables": SCHEME, "ticket": {
        "aliyun": "SMS_000000009", "variables": [{"name": "ticket", "source": "ticket"},
                                                 {"name": "phone", "source": "settings.centre_phone"}]}})
    assert ticket_template_message("aliyun", "1024", PHONE, templates=mapped) == (
        "SMS_000000009", (("ticket", "1024"), ("phone", PHONE)))
    with pytest.raises(TemplateError, match="ticket confirmation: no approved tencent template code"):
        ticket_template_message("tencent", "1024", PHONE, templates=mapped)


@pytest.mark.parametrize(("data", "message"), [
    ({"variables": [{"name": "title", "source": "item.colour"}]}, "unknown source 'item.colour'"),
    ({"variables": [{"name": "ti tle", "source": "item.title"}]}, "must be letters, digits and _"),
    ({"variables": SCHEME + SCHEME[:1]}, "variable 'title' is listed twice"),
    ({"variables": SCHEME, "limits": {"tencent": 0}}, "limits.tencent must be a positive number"),
    ({"variables": SCHEME, "items": {"card-loss-report": {"aliyun": "", "huawei": "1"}}}, "unknown key(s) ['huawei']"),
    ({"variables": []}, "'variables' must be a non-empty list"),
])
def test_a_malformed_map_says_what_is_wrong(data: dict, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_templates(data, "test.yaml")
    assert message in str(caught.value) and str(caught.value).startswith("test.yaml: ")


def test_kb_check_reports_an_over_long_variable_as_error_and_missing_codes_as_a_warning(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    mapped = templates({"card-loss-report": {"aliyun": "SMS_000000001", "tencent": "1234567"}}, tencent=8)
    report = check_knowledge_base(kb, signature="桂林社保", templates=mapped)
    assert report.errors == [
        ("card/card-loss-report.md: SMS template variable 'title' is 10 characters ('社会保障卡挂失与解挂'), "
         "tencent allows at most 8"),
        ("card/card-loss-report.md: SMS template variable 'basis' is 14 characters ('人社厅发〔2020〕101号'), "
         "tencent allows at most 8"),
    ]
    warnings = [warning for warning in report.warnings if warning.startswith("test.yaml")]
    assert warnings == [
        ("test.yaml: 1 of 2 items have no approved aliyun template code (copy them from the aliyun console; needed "
         "only when SMS goes through aliyun)"),
        ("test.yaml: 1 of 2 items have no approved tencent template code (copy them from the tencent console; needed "
         "only when SMS goes through tencent); 1 of them have a variable longer than tencent's limit of 8 "
         "characters, e.g. pension-certification-test"),
    ]
    # With the limits as documented, the same codes pass; a centre phone too long for a variable does not.
    assert check_knowledge_base(kb, templates=templates({"card-loss-report": {"aliyun": "SMS_1"}})).errors == []
    long_phone = check_knowledge_base(kb, templates=templates({}), centre_phone="0773-12345678-123")
    assert long_phone.errors == [("test.yaml: the centre phone '0773-12345678-123' has 17 characters, tencent "
                                  "allows at most 12 per variable")]


def test_kb_check_reads_the_map_file_and_reports_one_that_cannot_be_read(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    broken = tmp_path / "sms_templates.yaml"
    broken.write_text("variables: [unclosed\n", encoding="utf-8")
    report = check_knowledge_base(kb, templates=broken)
    assert len(report.errors) == 1 and "sms_templates.yaml: cannot be read" in report.errors[0]
    # The shipped map against the mini KB: the codes are empty, so only warnings, among them the unlisted ids.
    shipped = check_knowledge_base(kb)
    assert shipped.errors == []
    assert any("kb/sms_templates.yaml names" in warning and "not in the KB" in warning for warning in shipped.warnings)
    assert check_knowledge_base(kb, templates=None).warnings == []


def test_kb_check_reports_a_variable_source_the_message_cannot_fill(tmp_path: Path) -> None:
    kb = load_knowledge_base(make_mini_kb(tmp_path / "items"))
    mapped = parse_templates({"variables": SCHEME, "items": {"card-loss-report": {
        "aliyun": "SMS_1", "variables": [{"name": "ticket", "source": "ticket"}]}}, "ticket": {
        "aliyun": "SMS_2", "variables": [{"name": "title", "source": "item.title"}]}}, "test.yaml")
    assert check_knowledge_base(kb, templates=mapped).errors == [
        ("card/card-loss-report.md: SMS template variable 'ticket' uses the ticket number, which only the ticket "
         "confirmation has"),
        ("test.yaml: the ticket confirmation's variable 'title' uses item.title, which the ticket confirmation has "
         "no item for"),
    ]
