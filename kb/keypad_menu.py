"""The keypad (DTMF) menu that KB editors keep in kb/keypad_menu.yaml (docs/keypad_menu.md): service areas by KB
category on the first level, each area's top services (item ids, with short spoken labels) on the second.

`load_menu` reads and checks the file on its own (keys, labels, categories); `menu_problems` checks it against a
knowledge base (item ids, their categories, labels of long titles), as `hotline kb check` does; `resolve_menu` gives
the menu a call plays, with each service's spoken summary taken from the items."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kb.errors import KbFileError
from kb.loader import KnowledgeBase
from kb.schema import CATEGORIES

DEFAULT_MENU_FILE = Path(__file__).resolve().parent / "keypad_menu.yaml"
MENU_KEYS = tuple("12345678")  # at most 8 entries per level
RESERVED_KEYS = {"0": "人工", "9": "返回上一级", "*": "重听", "#": "号码输入结束"}
LABEL_MAX_CHARS = 10
_LABEL_PUNCTUATION = re.compile(r"[，。：；、！？,.:;!?\s\d]")


class KeypadMenuError(KbFileError):
    """The menu file cannot be read or breaks a rule; the message names the file and the entry."""


@dataclass(frozen=True)
class MenuFileService:
    key: str
    item_id: str
    label: str | None  # None: the item's title is said (only when it has at most LABEL_MAX_CHARS characters)


@dataclass(frozen=True)
class MenuFileArea:
    key: str
    label: str
    categories: tuple[str, ...]
    services: tuple[MenuFileService, ...]


@dataclass(frozen=True)
class MenuFile:
    """The menu as the editors wrote it (not yet checked against a KB)."""

    path: str
    areas: tuple[MenuFileArea, ...]


@dataclass(frozen=True)
class MenuService:
    """A service as the call plays it: its key, the label said in the menu and the item's spoken summary."""

    key: str
    item_id: str
    label: str
    spoken: str


@dataclass(frozen=True)
class MenuArea:
    key: str
    label: str
    services: tuple[MenuService, ...]

    def service(self, key: str) -> MenuService | None:
        return next((service for service in self.services if service.key == key), None)


@dataclass(frozen=True)
class Menu:
    areas: tuple[MenuArea, ...]

    def area(self, key: str) -> MenuArea | None:
        return next((area for area in self.areas if area.key == key), None)


def _key(value: object, where: str, path: str) -> str:
    key = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if key in RESERVED_KEYS:
        raise KeypadMenuError(path, f"{where}: key {key} is reserved ({RESERVED_KEYS[key]}); use 1-8")
    if key not in MENU_KEYS:
        raise KeypadMenuError(path, f"{where}: key must be one of 1-8, got {value!r}")
    return key


def _label(value: object, where: str, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KeypadMenuError(path, f"{where}: label must be a non-empty text")
    label = value.strip()
    if len(label) > LABEL_MAX_CHARS:
        raise KeypadMenuError(path, f"{where}: label {label!r} has {len(label)} characters, limit {LABEL_MAX_CHARS}")
    if _LABEL_PUNCTUATION.search(label):
        raise KeypadMenuError(path, f"{where}: label {label!r} must not contain punctuation, spaces or digits "
                                    "(the menu sentence is built around it)")
    return label


def _mapping(value: object, fields: set[str], required: set[str], where: str, path: str) -> dict:
    if not isinstance(value, dict):
        raise KeypadMenuError(path, f"{where}: must be a mapping with {', '.join(sorted(required))}")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise KeypadMenuError(path, f"{where}: unknown field(s) {', '.join(map(str, unknown))}; "
                                    f"known: {', '.join(sorted(fields))}")
    missing = sorted(required - set(value))
    if missing:
        raise KeypadMenuError(path, f"{where}: missing {', '.join(missing)}")
    return value


def _entries(value: object, what: str, where: str, path: str) -> list:
    if not isinstance(value, list) or not value:
        raise KeypadMenuError(path, f"{where}: {what} must be a non-empty list")
    if len(value) > len(MENU_KEYS):
        raise KeypadMenuError(path, f"{where}: {len(value)} {what}, at most {len(MENU_KEYS)} (keys 1-8)")
    return value


def _unique_keys(keys: list[str], where: str, path: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise KeypadMenuError(path, f"{where}: key {key} is used twice")
        seen.add(key)


def parse_menu(data: object, path: str = "keypad_menu.yaml") -> MenuFile:
    """The menu file's content, checked on its own; raises `KeypadMenuError` at the first rule broken."""
    top = _mapping(data, {"areas"}, {"areas"}, "the file", path)
    areas: list[MenuFileArea] = []
    known_categories = set(CATEGORIES.values())
    for number, raw in enumerate(_entries(top["areas"], "areas", "areas", path), start=1):
        where = f"area {number}"
        entry = _mapping(raw, {"key", "label", "categories", "services"}, {"key", "label", "categories", "services"},
                         where, path)
        key = _key(entry["key"], where, path)
        where = f"area {key}"
        label = _label(entry["label"], where, path)
        where = f"area {key} ({label})"
        categories = entry["categories"]
        if isinstance(categories, str):
            categories = [categories]
        if not isinstance(categories, list) or not categories:
            raise KeypadMenuError(path, f"{where}: categories must be a non-empty list of KB categories")
        for category in categories:
            if category not in known_categories:
                raise KeypadMenuError(path, f"{where}: unknown category {category!r}; one of "
                                            f"{', '.join(sorted(known_categories))}")
        services: list[MenuFileService] = []
        for index, raw_service in enumerate(_entries(entry["services"], "services", where, path), start=1):
            service_where = f"{where}, service {index}"
            service = _mapping(raw_service, {"key", "item", "label"}, {"key", "item"}, service_where, path)
            service_key = _key(service["key"], service_where, path)
            service_where = f"{where}, service {service_key}"
            item_id = service["item"]
            if not isinstance(item_id, str) or not item_id.strip():
                raise KeypadMenuError(path, f"{service_where}: item must be an item id")
            spoken_label = (_label(service["label"], service_where, path) if service.get("label") is not None
                            else None)
            services.append(MenuFileService(service_key, item_id.strip(), spoken_label))
        _unique_keys([service.key for service in services], where, path)
        repeated = sorted({s.item_id for s in services if [t.item_id for t in services].count(s.item_id) > 1})
        if repeated:
            raise KeypadMenuError(path, f"{where}: item {repeated[0]} is listed twice")
        areas.append(MenuFileArea(key, label, tuple(dict.fromkeys(categories)), tuple(services)))
    _unique_keys([area.key for area in areas], "areas", path)
    return MenuFile(path, tuple(areas))


def load_menu(path: Path | str = DEFAULT_MENU_FILE) -> MenuFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeypadMenuError(str(path), f"cannot read the keypad menu: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeypadMenuError(str(path), f"not valid YAML: {exc}") from exc
    return parse_menu(data, str(path))


def _service_problems(menu: MenuFile, kb: KnowledgeBase) -> list[tuple[MenuFileArea, MenuFileService, str]]:
    problems = []
    for area in menu.areas:
        for service in area.services:
            where = f"area {area.key} ({area.label}), service {service.key}"
            item = kb.get(service.item_id)
            if item is None:
                problems.append((area, service, f"{where}: item {service.item_id!r} does not exist"))
            elif item.category not in area.categories:
                problems.append((area, service, f"{where}: item {service.item_id} is in category {item.category}, "
                                                f"not in the area's {', '.join(area.categories)}"))
            elif service.label is None and len(item.title) > LABEL_MAX_CHARS:
                problems.append((area, service, f"{where}: item {service.item_id}'s title {item.title!r} is longer "
                                                f"than {LABEL_MAX_CHARS} characters: give the service a label"))
    return problems


def menu_problems(menu: MenuFile, kb: KnowledgeBase) -> list[str]:
    """What `hotline kb check` reports for the menu against `kb`, each message naming the file and the entry."""
    return [f"{menu.path}: {message}" for _area, _service, message in _service_problems(menu, kb)]


def resolve_menu(menu: MenuFile, kb: KnowledgeBase) -> tuple[Menu, list[str]]:
    """The menu a call plays over `kb`, and the problems left out of it: a service that breaks a rule (an item
    removed since the last check) is skipped, and an area left without services with it."""
    problems = _service_problems(menu, kb)
    skipped = {(area.key, service.key) for area, service, _message in problems}
    areas = []
    for area in menu.areas:
        services = []
        for service in area.services:
            if (area.key, service.key) in skipped:
                continue
            item = kb.get(service.item_id)
            assert item is not None
            services.append(MenuService(service.key, item.id, service.label or item.title, item.spoken))
        if services:
            areas.append(MenuArea(area.key, area.label, tuple(services)))
    return Menu(tuple(areas)), [f"{menu.path}: {message}" for _area, _service, message in problems]
