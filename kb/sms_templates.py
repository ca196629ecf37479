"""Approved SMS templates for template-only gateways (Aliyun, Tencent Cloud): which template each KB item is sent
with, and where each template variable's value comes from (kb/sms_templates.yaml, edited by the bureau).

Such gateways never send free text: only an approved template code plus short variables. Per-variable limits:
Aliyun 1-35 characters (help.aliyun.com/document_detail/108088); Tencent differs by account type and document
version (individual accounts 12, an older FAQ 6, none stated for enterprise accounts), so it is set in the file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kb.errors import KbError
from kb.schema import ServiceItem

DEFAULT_TEMPLATES_FILE = Path(__file__).resolve().parent / "sms_templates.yaml"
PROVIDERS = ("aliyun", "tencent")
# Where a variable's value comes from. `ticket` only in the ticket confirmation.
SOURCES = {
    "item.title": "the item's title",
    "item.id": "the item's id",
    "item.basis": "the first policy document's short name: its number (文号) when it has one, else 《name》",
    "settings.centre_phone": "the centre's phone number",
    "settings.guide_url": "the item's public guide page (guide base URL + / + item id)",
    "ticket": "the ticket number (ticket confirmation only)",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TemplateError(KbError):
    """The template map cannot be read, or has no approved code / a value that does not fit for a message."""


@dataclass(frozen=True)
class TemplateVariable:
    name: str  # ${name} in an Aliyun template; Tencent's {1}, {2}, … follow the order of the list
    source: str  # a key of SOURCES


@dataclass(frozen=True)
class TemplateEntry:
    codes: Mapping[str, str]  # provider -> approved template code ("" = none yet)
    variables: tuple[TemplateVariable, ...]


@dataclass(frozen=True)
class SmsTemplates:
    limits: Mapping[str, int | None]  # provider -> most characters per variable (None: no stated limit)
    variables: tuple[TemplateVariable, ...]  # the scheme every item's template uses unless it names its own
    items: Mapping[str, TemplateEntry] = field(default_factory=dict)
    ticket: TemplateEntry | None = None
    path: str = ""

    def entry(self, item_id: str) -> TemplateEntry:
        return self.items.get(item_id) or TemplateEntry({}, self.variables)

    def code(self, item_id: str, provider: str) -> str:
        """The item's approved code for `provider`, or "" when the bureau has not filled it in."""
        return (self.entry(item_id).codes.get(provider) or "").strip()


def _variables(raw: object, where: str) -> tuple[TemplateVariable, ...]:
    if not isinstance(raw, list) or not raw:
        raise TemplateError(f"{where}: 'variables' must be a non-empty list of {{name, source}}")
    result, seen = [], set()
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"name", "source"}:
            raise TemplateError(f"{where}: each variable is {{name: …, source: …}}, got {entry!r}")
        name, source = str(entry["name"]), str(entry["source"])
        if not _NAME.match(name):
            raise TemplateError(f"{where}: variable name {name!r} must be letters, digits and _ (starting with a letter)")
        if name in seen:
            raise TemplateError(f"{where}: variable {name!r} is listed twice (a template may use a variable once)")
        if source not in SOURCES:
            raise TemplateError(f"{where}: variable {name!r} has unknown source {source!r}; one of {sorted(SOURCES)}")
        seen.add(name)
        result.append(TemplateVariable(name, source))
    return tuple(result)


def _codes(raw: dict, where: str) -> dict[str, str]:
    codes = {}
    for provider in PROVIDERS:
        value = raw.get(provider, "")
        if value is None:
            value = ""
        if not isinstance(value, (str, int)):
            raise TemplateError(f"{where}: the {provider} code must be text, got {value!r}")
        codes[provider] = str(value).strip()
    unknown = set(raw) - set(PROVIDERS) - {"variables"}
    if unknown:
        raise TemplateError(f"{where}: unknown key(s) {sorted(unknown)}; use {', '.join(PROVIDERS)} and variables")
    return codes


def parse_templates(data: object, path: str = "sms_templates.yaml") -> SmsTemplates:
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping with limits, variables, ticket and items")
    limits_raw = data.get("limits") or {}
    if not isinstance(limits_raw, dict):
        raise TemplateError(f"{path}: 'limits' must map each provider to a number of characters (or null)")
    limits: dict[str, int | None] = {}
    for provider in PROVIDERS:
        limit = limits_raw.get(provider)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise TemplateError(f"{path}: limits.{provider} must be a positive number of characters or null")
        limits[provider] = limit
    variables = _variables(data.get("variables"), f"{path}: variables")
    items: dict[str, TemplateEntry] = {}
    raw_items = data.get("items") or {}
    if not isinstance(raw_items, dict):
        raise TemplateError(f"{path}: 'items' must map item ids to their codes")
    for item_id, raw in raw_items.items():
        where = f"{path}: items.{item_id}"
        if not isinstance(raw, dict):
            raise TemplateError(f"{where}: expected {{aliyun: …, tencent: …}}")
        own = _variables(raw["variables"], where) if "variables" in raw else variables
        items[str(item_id)] = TemplateEntry(_codes(raw, where), own)
    ticket = None
    if data.get("ticket") is not None:
        raw = data["ticket"]
        if not isinstance(raw, dict):
            raise TemplateError(f"{path}: ticket: expected {{aliyun: …, tencent: …, variables: […]}}")
        ticket = TemplateEntry(_codes(raw, f"{path}: ticket"), _variables(raw.get("variables"), f"{path}: ticket"))
    return SmsTemplates(limits=limits, variables=variables, items=items, ticket=ticket, path=path)


def load_templates(path: Path = DEFAULT_TEMPLATES_FILE) -> SmsTemplates:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path.name}: cannot be read ({exc})") from None
    label = f"kb/{path.name}" if path == DEFAULT_TEMPLATES_FILE else str(path)
    return parse_templates(data, label)


def basis_short_name(item: ServiceItem) -> str:
    """The first policy document as a template variable: its number (文号) when it has one, else 《name》."""
    first = item.policy_basis[0]
    return first.number.strip() if first.number and first.number.strip() else f"《{first.document}》"


def variable_value(source: str, item: ServiceItem | None, centre_phone: str, guide_base_url: str | None = None,
                   ticket: str | None = None) -> str:
    if source == "settings.centre_phone":
        return centre_phone
    if source == "ticket":
        if ticket is None:
            raise TemplateError("the ticket variable is only filled in the ticket confirmation")
        return ticket
    if item is None:
        raise TemplateError(f"source {source!r} needs an item")
    if source == "item.title":
        return item.title
    if source == "item.id":
        return item.id
    if source == "item.basis":
        return basis_short_name(item)
    if source == "settings.guide_url":
        if not guide_base_url:
            raise TemplateError(f"{item.id}: the template uses guide_url but no guide base URL is configured")
        return f"{guide_base_url.rstrip('/')}/{item.id}"
    raise TemplateError(f"unknown variable source {source!r}")


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise TemplateError(f"unknown SMS provider {provider!r}; one of {', '.join(PROVIDERS)}")


def item_variables(templates: SmsTemplates, item: ServiceItem, centre_phone: str,
                   guide_base_url: str | None = None) -> tuple[tuple[str, str], ...]:
    """The item's variables as (name, value) pairs in the template's order, whatever the code."""
    return tuple((variable.name, variable_value(variable.source, item, centre_phone, guide_base_url))
                 for variable in templates.entry(item.id).variables)


def too_long(templates: SmsTemplates, provider: str,
             variables: tuple[tuple[str, str], ...]) -> list[tuple[str, str, int]]:
    """(name, value, limit) for each variable longer than `provider` allows."""
    limit = templates.limits.get(provider)
    if limit is None:
        return []
    return [(name, value, limit) for name, value in variables if len(value) > limit or not value]


def template_message(item: ServiceItem, provider: str, centre_phone: str, guide_base_url: str | None = None, *,
                     templates: SmsTemplates | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(approved code, ((name, value), …)) for sending the item's guide through `provider`. Raises `TemplateError`
    when the item has no approved code for it or a value does not fit the provider's limit."""
    _check_provider(provider)
    templates = templates or load_templates()
    code = templates.code(item.id, provider)
    if not code:
        raise TemplateError(f"{item.id}: no approved {provider} template code in {templates.path or 'the template map'}"
                            f"; the bureau must copy it from the {provider} console once the template is approved")
    variables = item_variables(templates, item, centre_phone, guide_base_url)
    _raise_if_too_long(templates, provider, item.id, variables)
    return code, variables


def ticket_template_message(provider: str, ticket: str, centre_phone: str, *,
                            templates: SmsTemplates | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(approved code, variables) of the ticket confirmation (人工服务登记号) through `provider`."""
    _check_provider(provider)
    templates = templates or load_templates()
    entry = templates.ticket
    code = (entry.codes.get(provider) or "").strip() if entry else ""
    if entry is None or not code:
        raise TemplateError(f"ticket confirmation: no approved {provider} template code in "
                            f"{templates.path or 'the template map'}; copy it from the {provider} console")
    variables = tuple((variable.name, variable_value(variable.source, None, centre_phone, ticket=ticket))
                      for variable in entry.variables)
    _raise_if_too_long(templates, provider, "ticket confirmation", variables)
    return code, variables


def _raise_if_too_long(templates: SmsTemplates, provider: str, what: str,
                       variables: tuple[tuple[str, str], ...]) -> None:
    problems = too_long(templates, provider, variables)
    if problems:
        detail = "; ".join(f"{name} has {len(value)} characters" for name, value, _ in problems)
        raise TemplateError(f"{what}: {detail}, {provider} allows 1-{problems[0][2]} per variable")
