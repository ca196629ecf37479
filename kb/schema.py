"""Validated model of one service item, as read from its Markdown + YAML file."""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPOKEN_MAX_CHARS = 80
SMS_MAX_CHARS = 500  # carrier limit for one long SMS, signature included
MIN_ALIASES = 5
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

CATEGORIES: dict[str, str] = {
    "registration": "参保登记",
    "contribution": "缴费",
    "records": "权益记录",
    "pension": "职工养老保险待遇",
    "survivor": "遗属待遇",
    "injury": "工伤保险",
    "unemployment": "失业保险",
    "card": "社会保障卡",
    "transfer": "关系转移接续",
    "certification": "待遇资格认证",
    "resident": "城乡居民养老保险",
    "annuity": "企业年金职业年金",
    "referral": "转介",
}

# Markdown section heading -> field name. Order is the authoring order.
SECTION_FIELDS: dict[str, str] = {
    "办理条件": "conditions",
    "所需材料": "materials",
    "办理渠道": "channels",
    "办理流程": "steps",
    "办理时限": "time_limits",
    "收费标准": "fees",
    "注意事项": "notes",
    "进度查询": "progress",
    "常见问题": "faq",
    "由谁办理": "handled_by",
    "联系方式": "contact",
}
REQUIRED_SECTIONS_SERVICE = ("办理条件", "所需材料", "办理渠道", "办理流程", "注意事项")
REQUIRED_SECTIONS_REFERRAL = ("由谁办理", "联系方式", "办理渠道", "注意事项")


class ItemKind(StrEnum):
    SERVICE = "service"
    REFERRAL = "referral"


class PolicyScope(StrEnum):
    NATIONAL = "national"
    GUANGXI = "guangxi"
    GUILIN = "guilin"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyBasis(_Frozen):
    document: str = Field(min_length=2)
    number: str | None = None
    articles: str | None = None
    scope: PolicyScope = PolicyScope.NATIONAL
    verify: bool = False

    @field_validator("document")
    @classmethod
    def _no_title_marks(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("《") or value.endswith("》"):
            raise ValueError("write the document name without 《》; code adds them")
        return value

    def citation(self) -> str:
        """The citation as printed to callers: 《name》（number）article."""
        text = f"《{self.document}》"
        if self.number:
            text += f"（{self.number}）"
        if self.articles:
            text += self.articles
        return text


class Source(_Frozen):
    url: str
    supports: str = ""

    @field_validator("url")
    @classmethod
    def _is_url(cls, value: str) -> str:
        if not re.match(r"^https?://\S+$", value):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value


class VerifyMark(_Frozen):
    field: str
    note: str = Field(min_length=2)


class Audience(_Frozen):
    key: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    label: str
    phrasings: tuple[str, ...] = ()
    spoken: str | None = None


FACT_MAX_CHARS = 50


class ItemFact(_Frozen):
    """A number or rule a caller asks for outright (「最少交多少年」, 「一级伤残给几个月」): the spoken reply leads with
    `say` when the question contains one of `asks` and, where `about` is given, one of `about` too. The facts of an
    item are tried in order; the first that matches leads. Every number in `say` must be in the item's text
    (`hotline kb check`), so a fact only repeats what the item already states."""

    asks: tuple[str, ...] = Field(min_length=1)
    about: tuple[str, ...] = ()
    say: str

    @field_validator("say")
    @classmethod
    def _say_for_the_ear(cls, value: str) -> str:
        value = value.strip()
        problems = spoken_problems(value)
        if len(value) > FACT_MAX_CHARS:
            problems.append(f"fact has {len(value)} characters, limit {FACT_MAX_CHARS}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    def matches(self, question: str) -> bool:
        return any(ask in question for ask in self.asks) and (not self.about or any(a in question for a in self.about))


class Channels(_Frozen):
    online: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()


class ServiceItem(_Frozen):
    id: str
    service_no: int | None = Field(default=None, ge=1, le=999)
    kind: ItemKind = ItemKind.SERVICE
    title: str = Field(min_length=2)
    category: str
    aliases: tuple[str, ...]
    # Whole questions as callers ask them (常见问法): retrieval training keys, never read out.
    questions: tuple[str, ...] = ()
    audiences: tuple[Audience, ...] = ()
    clarify: str | None = None
    channels: Channels = Channels()
    spoken: str
    facts: tuple[ItemFact, ...] = ()
    sms: str
    policy_basis: tuple[PolicyBasis, ...] = Field(min_length=1)
    sources: tuple[Source, ...] = Field(min_length=1)
    verify: tuple[VerifyMark, ...] = ()
    related: tuple[str, ...] = ()
    # Items a caller must pick between out loud: answering one for the other would mislead (adult vs minor card,
    # enterprise vs 机关事业 transfer), so when they are the top two the hotline asks instead of answering one.
    ask_between: tuple[str, ...] = ()
    last_reviewed: dt.date
    effective_from: dt.date | None = None
    effective_until: dt.date | None = None
    # Markdown sections, keyed by field name (see SECTION_FIELDS).
    sections: dict[str, str] = Field(default_factory=dict)
    path: str = ""

    @field_validator("id")
    @classmethod
    def _id_format(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError(f"id must be lowercase kebab-case, got {value!r}")
        return value

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORIES.values():
            raise ValueError(f"unknown category {value!r}; one of {sorted(CATEGORIES.values())}")
        return value

    @field_validator("aliases")
    @classmethod
    def _enough_aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(alias.strip() for alias in value if alias and alias.strip())
        if len(set(cleaned)) < MIN_ALIASES:
            raise ValueError(f"needs at least {MIN_ALIASES} distinct aliases, has {len(set(cleaned))}")
        return cleaned

    @field_validator("spoken")
    @classmethod
    def _spoken_for_the_ear(cls, value: str) -> str:
        value = value.strip()
        problems = spoken_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("sms")
    @classmethod
    def _sms_body(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("sms guide is empty")
        if re.search(r"https?://", value):
            raise ValueError("sms guide must not contain URLs")
        return value

    @model_validator(mode="after")
    def _consistency(self) -> ServiceItem:
        if self.kind is ItemKind.SERVICE and self.service_no is None:
            raise ValueError("a service item needs service_no")
        if self.kind is ItemKind.REFERRAL and self.category != CATEGORIES["referral"]:
            raise ValueError("a referral item has category 转介")
        if len(self.audiences) >= 2 and not self.clarify:
            raise ValueError("an item with two or more audiences needs a clarify question")
        if self.effective_from and self.effective_until and self.effective_until < self.effective_from:
            raise ValueError("effective_until is before effective_from")
        for audience in self.audiences:
            if audience.spoken is not None and spoken_problems(audience.spoken):
                raise ValueError(f"audience {audience.key}: " + "; ".join(spoken_problems(audience.spoken)))
        return self

    # -- derived views -------------------------------------------------------------------------

    def is_effective(self, on: dt.date) -> bool:
        if self.effective_from and on < self.effective_from:
            return False
        if self.effective_until and on > self.effective_until:
            return False
        return True

    def citations(self) -> list[str]:
        return [basis.citation() for basis in self.policy_basis]

    def fact_for(self, question: str) -> ItemFact | None:
        """The first fact the question asks for (see `ItemFact`)."""
        return next((fact for fact in self.facts if fact.matches(question)), None)

    def section(self, field: str) -> str:
        return self.sections.get(field, "")

    def authored_text(self) -> str:
        """Every piece of text a person wrote for this item (for size statistics and retrieval)."""
        parts = [self.title, *self.aliases, self.spoken, self.sms, self.clarify or ""]
        for audience in self.audiences:
            parts.extend([audience.label, *audience.phrasings, audience.spoken or ""])
        parts.extend(basis.citation() for basis in self.policy_basis)
        parts.extend(source.supports for source in self.sources)
        parts.extend(mark.note for mark in self.verify)
        parts.extend(self.sections.values())
        return "\n".join(part for part in parts if part)


def spoken_problems(text: str) -> list[str]:
    """Why a text is not fit to be read aloud on the phone (empty list when it is)."""
    problems = []
    if len(text) > SPOKEN_MAX_CHARS:
        problems.append(f"spoken summary has {len(text)} characters, limit {SPOKEN_MAX_CHARS}")
    if re.search(r"https?://|www\.", text):
        problems.append("spoken summary must not contain URLs")
    if re.search(r"(^|\n)\s*(\d+[.、]|[-*•])\s", text) or "\n" in text:
        problems.append("spoken summary must be one paragraph without list markers")
    if "《" in text or "〔待核实〕" in text:
        problems.append("spoken summary must not contain 《》 or 〔待核实〕")
    return problems
