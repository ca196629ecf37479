"""Whole-KB validation: per-file schema errors plus cross-item rules (`hotline kb check`)."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from kb.keypad_menu import KeypadMenuError, MenuFile, load_menu, menu_problems
from kb.loader import KnowledgeBase
from kb.schema import (
    REQUIRED_SECTIONS_REFERRAL,
    REQUIRED_SECTIONS_SERVICE,
    SECTION_FIELDS,
    SMS_MAX_CHARS,
    ItemKind,
    ServiceItem,
)
from kb.sms_templates import (
    DEFAULT_TEMPLATES_FILE,
    PROVIDERS,
    SmsTemplates,
    TemplateError,
    load_templates,
    too_long,
    variable_value,
)
from kb.sms_text import compose_sms

CHANNELS_FILE = Path(__file__).resolve().parent / "channels.yaml"
# Longest phone number an operator is expected to configure (e.g. "0773-12345678-123").
PHONE_PLACEHOLDER = "0" * 17
UNVERIFIED_MARK = "〔待核实〕"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class CheckReport:
    items: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    characters: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    unverified: int = 0
    referrals: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self)


def load_channels(path: Path = CHANNELS_FILE) -> dict[str, set[str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {kind: set((data.get(kind) or {}).keys()) for kind in ("online", "offline")}


def periods_overlap(a: ServiceItem, b: ServiceItem) -> bool:
    """Whether two items can be served on the same day (a staged policy change replaces, not overlaps)."""
    a_start, b_start = a.effective_from or dt.date.min, b.effective_from or dt.date.min
    a_end, b_end = a.effective_until or dt.date.max, b.effective_until or dt.date.max
    return a_start <= b_end and b_start <= a_end


def check_knowledge_base(kb: KnowledgeBase, signature: str = "桂林社保", *,
                         templates: SmsTemplates | Path | None = DEFAULT_TEMPLATES_FILE,
                         centre_phone: str | None = None, guide_base_url: str | None = None,
                         keypad_menu: MenuFile | Path | None = None) -> CheckReport:
    """Every rule below over `kb`. `templates` is the SMS template map (kb/sms_templates.yaml by default; None skips
    its checks); `centre_phone` and `guide_base_url`, when given, are checked against the template variable limits
    too; `keypad_menu` (the keypad menu file, or its path; None skips it) is checked on its own and against `kb`."""
    report = CheckReport(items=len(kb.items))
    report.errors.extend(str(error) for error in kb.errors)
    channels = load_channels()
    alias_owners: dict[str, list[str]] = defaultdict(list)
    question_owners: dict[str, list[str]] = defaultdict(list)
    ids = Counter(item.id for item in kb.items)
    by_id = {item.id: item for item in kb.items}
    service_owners: dict[int, list[str]] = defaultdict(list)
    known_ids = set(ids)

    for item in kb.items:
        where = item.path or item.id
        report.characters += len(item.authored_text())
        report.categories[item.category] = report.categories.get(item.category, 0) + 1
        if item.kind is ItemKind.REFERRAL:
            report.referrals += 1
        for alias in item.aliases:
            alias_owners[alias].append(item.id)
        for question in item.questions:
            question_owners[question].append(item.id)
        if item.service_no is not None:
            service_owners[item.service_no].append(item.id)
        required = REQUIRED_SECTIONS_REFERRAL if item.kind is ItemKind.REFERRAL else REQUIRED_SECTIONS_SERVICE
        for heading in required:
            if not item.section(SECTION_FIELDS[heading]):
                report.errors.append(f"{where}: missing or empty section '## {heading}'")
        sms_length = len(compose_sms(item, PHONE_PLACEHOLDER, signature))
        if sms_length > SMS_MAX_CHARS:
            report.errors.append(f"{where}: SMS as sent is {sms_length} characters, limit {SMS_MAX_CHARS}")
        if UNVERIFIED_MARK in item.sms:
            report.errors.append(f"{where}: the SMS guide must not carry unverified facts ({UNVERIFIED_MARK})")
        for kind, names in (("online", item.channels.online), ("offline", item.channels.offline)):
            for name in names:
                if name not in channels[kind]:
                    report.errors.append(f"{where}: unknown {kind} channel {name!r} (see kb/channels.yaml)")
        for related in item.related:
            if related not in known_ids:
                report.errors.append(f"{where}: related item {related!r} does not exist")
        for other in item.ask_between:
            if other not in known_ids:
                report.errors.append(f"{where}: ask_between item {other!r} does not exist")
            elif item.id not in by_id[other].ask_between:
                report.errors.append(f"{where}: ask_between {other!r} must be mutual (add {item.id} to its list)")
        for audience in item.audiences:
            if not any(f"### {audience.label}" in text for text in item.sections.values()):
                report.warnings.append(f"{where}: audience {audience.label!r} has no '### {audience.label}' subsection")
        # A fact repeats what the item states as verified: the SMS, or section lines without 〔待核实〕.
        stated = item.sms + "\n" + "\n".join(line for text in item.sections.values() for line in text.splitlines()
                                              if UNVERIFIED_MARK not in line)
        for fact in item.facts:
            for number in NUMBER.findall(fact.say):
                if number not in stated:
                    report.errors.append(f"{where}: fact {fact.say!r} says {number}, which the item's SMS and "
                                         "sections do not state (as verified)")
        marks = sum(text.count(UNVERIFIED_MARK) for text in item.sections.values())
        if marks and not item.verify:
            report.errors.append(f"{where}: text carries {UNVERIFIED_MARK} but the item has no verify entries")
        report.unverified += len(item.verify) + sum(1 for basis in item.policy_basis if basis.verify)

    for item_id, count in ids.items():
        if count > 1:
            report.errors.append(f"duplicate item id {item_id!r} ({count} files)")
    for number, owners in sorted(service_owners.items()):
        clashes = _overlapping(owners, by_id)
        if clashes:
            report.errors.append(f"service_no {number} is used by items in effect at the same time: {', '.join(clashes)}")
    for alias, owners in sorted(alias_owners.items()):
        clashes = _overlapping(owners, by_id)
        if clashes:
            report.errors.append(f"alias {alias!r} is shared by items {', '.join(clashes)}")
    for question, owners in sorted(question_owners.items()):
        if len(owners) > 1:
            report.errors.append(f"caller question {question!r} is listed {len(owners)} times ({', '.join(sorted(owners))})")
    if templates is not None:
        _check_templates(kb, templates, report, centre_phone, guide_base_url)
    if keypad_menu is not None:
        try:
            menu = load_menu(keypad_menu) if isinstance(keypad_menu, Path) else keypad_menu
        except KeypadMenuError as exc:
            report.errors.append(str(exc))
        else:
            report.errors.extend(menu_problems(menu, kb))
    return report


def _check_templates(kb: KnowledgeBase, templates: SmsTemplates | Path, report: CheckReport,
                     centre_phone: str | None, guide_base_url: str | None) -> None:
    """Template-only gateways: a variable longer than the provider allows is an error for an item that has an
    approved code (the message would be refused); items without a code are counted in one warning per provider."""
    try:
        if isinstance(templates, Path):
            templates = load_templates(templates)
    except TemplateError as exc:
        report.errors.append(str(exc))
        return
    source_file = templates.path or "the SMS template map"
    unknown = sorted(set(templates.items) - {item.id for item in kb.items})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        report.warnings.append(f"{source_file} names {len(unknown)} item(s) not in the KB: {shown}")
    for item in kb.items:
        for variable in templates.entry(item.id).variables:
            if variable.source == "ticket":
                report.errors.append(f"{item.path or item.id}: SMS template variable {variable.name!r} uses the "
                                     "ticket number, which only the ticket confirmation has")
    for variable in templates.ticket.variables if templates.ticket else ():
        if variable.source.startswith("item.") or variable.source == "settings.guide_url":
            report.errors.append(f"{source_file}: the ticket confirmation's variable {variable.name!r} uses "
                                 f"{variable.source}, which the ticket confirmation has no item for")
    for provider in PROVIDERS:
        if centre_phone is not None and too_long(templates, provider, (("phone", centre_phone),)):
            report.errors.append(f"{source_file}: the centre phone {centre_phone!r} has {len(centre_phone)} characters,"
                                 f" {provider} allows at most {templates.limits[provider]} per variable")
    for provider in PROVIDERS:
        missing, would_not_fit = [], []
        for item in kb.items:
            where = item.path or item.id
            has_code = bool(templates.code(item.id, provider))
            variables = []
            for variable in templates.entry(item.id).variables:
                if variable.source in ("ticket", "settings.centre_phone") or (variable.source == "settings.guide_url"
                                                                              and not guide_base_url):
                    continue  # reported above, or the phone checked once above, or no base URL to measure
                variables.append((variable.name, variable_value(variable.source, item, "", guide_base_url)))
            problems = too_long(templates, provider, tuple(variables))
            if not has_code:
                missing.append(item.id)
                if problems:
                    would_not_fit.append(item.id)
                continue
            for name, value, limit in problems:
                report.errors.append(f"{where}: SMS template variable {name!r} is {len(value)} characters "
                                     f"({value!r}), {provider} allows at most {limit}")
        if missing:
            text = (f"{source_file}: {len(missing)} of {len(kb.items)} items have no approved {provider} template "
                    f"code (copy them from the {provider} console; needed only when SMS goes through {provider})")
            if would_not_fit:
                text += (f"; {len(would_not_fit)} of them have a variable longer than {provider}'s limit of "
                         f"{templates.limits[provider]} characters, e.g. {', '.join(would_not_fit[:3])}")
            report.warnings.append(text)


def _overlapping(owners: list[str], by_id: dict[str, ServiceItem]) -> list[str]:
    """The owners that clash: two different items whose effective periods overlap."""
    unique = sorted(set(owners))
    clashing = {
        first for first in unique for second in unique
        if first != second and periods_overlap(by_id[first], by_id[second])
    }
    return sorted(clashing)
