"""Read item files (YAML front matter + Markdown sections) into validated `ServiceItem`s."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from kb.errors import KbFileError
from kb.schema import SECTION_FIELDS, ServiceItem

DEFAULT_ITEMS_DIR = Path(__file__).resolve().parent / "items"
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*\r?\n?(.*)\Z", re.DOTALL)
_SECTION_HEADING = re.compile(r"^##[ \t]+(.+?)[ \t]*$", re.MULTILINE)
# libyaml's parser with the safe constructor when PyYAML was built with it: the same values, about 13 times faster
# than the pure-Python parser (loading the shipped KB: 1.1 s of YAML becomes 0.09 s).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class KnowledgeBase:
    """All items of one KB directory, plus the files that failed to load."""

    root: Path
    items: tuple[ServiceItem, ...]
    errors: tuple[KbFileError, ...] = ()
    content_hash: str = ""
    _by_id: dict[str, ServiceItem] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update({item.id: item for item in self.items})

    def get(self, item_id: str) -> ServiceItem | None:
        return self._by_id.get(item_id)

    def __len__(self) -> int:
        return len(self.items)

    def effective_items(self, on: dt.date | None = None) -> list[ServiceItem]:
        day = on or dt.date.today()
        return [item for item in self.items if item.is_effective(day)]


def split_front_matter(text: str, path: str) -> tuple[dict, str]:
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not match:
        raise KbFileError(path, "missing YAML front matter between two '---' lines at the top")
    try:
        meta = yaml.load(match.group(1), Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        raise KbFileError(path, f"front matter is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(meta, dict):
        raise KbFileError(path, "front matter must be a YAML mapping")
    return meta, match.group(2)


def parse_sections(body: str, path: str) -> dict[str, str]:
    """Split the Markdown body at `## ` headings; unknown headings are an error."""
    sections: dict[str, str] = {}
    headings = list(_SECTION_HEADING.finditer(body))
    for index, heading in enumerate(headings):
        title = heading.group(1).strip()
        if title not in SECTION_FIELDS:
            raise KbFileError(path, f"unknown section '## {title}'; known: {', '.join(SECTION_FIELDS)}")
        end = headings[index + 1].start() if index + 1 < len(headings) else len(body)
        field_name = SECTION_FIELDS[title]
        if field_name in sections:
            raise KbFileError(path, f"section '## {title}' appears twice")
        sections[field_name] = body[heading.end():end].strip()
    return sections


def parse_item(text: str, path: str) -> ServiceItem:
    meta, body = split_front_matter(text, path)
    meta = dict(meta)
    meta["sections"] = parse_sections(body, path)
    meta["path"] = path
    try:
        return ServiceItem.model_validate(meta)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'item'}: {error['msg']}" for error in exc.errors()
        )
        raise KbFileError(path, problems) from exc


def item_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.md") if path.is_file() and not path.name.startswith("_"))


def load_knowledge_base(root: Path | str = DEFAULT_ITEMS_DIR) -> KnowledgeBase:
    """Load every item under `root`; a bad file is reported, never fatal to the rest."""
    root = Path(root)
    items: list[ServiceItem] = []
    errors: list[KbFileError] = []
    digest = hashlib.sha256()
    if not root.is_dir():
        raise KbFileError(str(root), "knowledge-base directory does not exist")
    for path in item_files(root):
        relative = str(path.relative_to(root))
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(KbFileError(relative, f"cannot read file as UTF-8: {exc}"))
            continue
        digest.update(relative.encode() + b"\0" + raw + b"\0")
        try:
            items.append(parse_item(text, relative))
        except KbFileError as exc:
            errors.append(exc)
    return KnowledgeBase(root=root, items=tuple(items), errors=tuple(errors), content_hash=digest.hexdigest())
