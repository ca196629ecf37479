"""Edits the hotline itself makes to item files (the review pages' KB-gap loop, `telephony.review.kb_changes`).

- `append_question`: a caller's question added to the end of an item's `questions:` list. Every other byte of the
  file stays as its author wrote it (comments, key order, quoting, line endings); the front matter is parsed before
  and after to prove the edit changed nothing but the list.
- `render_item`: the file of a new item, from a validated draft, in the documented key and section order
  (docs/kb-format.md); parsed back to prove it loads as the same item.
- `draft_local_facts`: the rule for a draft written from a call (not from an official source): a local fact (a
  Guilin/Guangxi arrangement, a phone number, an address, a window, office hours, an amount) appears only in the
  sections, marked 〔待核实〕 for the bureau to confirm; the spoken summary and the SMS guide, which cannot carry the
  mark, name none.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata

import yaml

from kb.check import UNVERIFIED_MARK
from kb.errors import KbError
from kb.loader import parse_item
from kb.schema import CATEGORIES, SECTION_FIELDS, PolicyScope, ServiceItem

_OPENING = re.compile(r"\A(\ufeff?)---[ \t]*\r?\n")
_CLOSING = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)[ \t]*:(.*)$")
_ITEM = re.compile(r"^([ \t]*)-(?:[ \t]|$)")
CATEGORY_DIRS: dict[str, str] = {name: directory for directory, name in CATEGORIES.items()}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # as kb.loader reads the files


class ItemEditError(KbError):
    """The file cannot be edited safely by the hotline (an editor has to do it by hand)."""


def normalize_question(text: str) -> str:
    """The form two questions are compared in: full-width folded (NFKC), lower case, without spaces, punctuation
    or symbols. 「社保卡丢了，怎么办？」 and 「社保卡丢了怎么办」 are the same question."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return "".join(char for char in folded if unicodedata.category(char)[0] not in "PZSC")


def clean_question(text: str) -> str:
    """A question as it is stored: one line, inner runs of white space made one space, trimmed."""
    return re.sub(r"\s+", " ", text).strip()


# -- appending a question ----------------------------------------------------------------------------


def _scalar(value: str, flow: bool = False) -> str:
    """`value` as a YAML list entry: plain when it reads back as the same string, else double-quoted (JSON's
    escapes are YAML's)."""
    plain_ok = "\n" not in value and value == value.strip() and value != ""
    if plain_ok and flow and any(char in value for char in ",[]{}"):
        plain_ok = False
    if plain_ok:
        try:
            plain_ok = yaml.load(f"[{value}]" if flow else f"- {value}", Loader=_LOADER) == [value]
        except yaml.YAMLError:
            plain_ok = False
    return value if plain_ok else json.dumps(value, ensure_ascii=False)


def _front_matter(text: str) -> tuple[int, int, str]:
    """(start, end) of the front matter's lines in `text` (after the opening `---` line, up to the closing one),
    and the file's line ending."""
    opening = _OPENING.match(text)
    if not opening:
        raise ItemEditError("the file has no YAML front matter between two '---' lines")
    closing = _CLOSING.search(text, opening.end())
    if not closing:
        raise ItemEditError("the front matter has no closing '---' line")
    newline = "\r\n" if "\r\n" in text[:closing.start() + 1] else "\n"
    return opening.end(), closing.start(), newline


def _load(front: str) -> dict:
    try:
        data = yaml.load(front, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise ItemEditError(f"front matter is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ItemEditError("front matter is not a YAML mapping")
    return data


def _block_end(lines: list[str], key_index: int) -> tuple[int, str | None]:
    """For the block list under the key on line `key_index`: the index after its last entry line (or after the key
    when it has none) and the entries' indentation (None when it has none). Blank and comment lines after the last
    entry stay where they are: they may belong to the next key."""
    indent: str | None = None
    end = key_index + 1
    for index in range(key_index + 1, len(lines)):
        line = lines[index].rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        item = _ITEM.match(line)
        if indent is None and item:
            indent = item.group(1)
        if indent is not None and item and item.group(1) == indent:
            end = index + 1
        elif indent is not None and len(line) - len(line.lstrip(" \t")) > len(indent):
            end = index + 1  # a continuation of the entry above
        else:
            break
    return end, indent


def append_question(text: str, question: str) -> str:
    """`text` (an item file) with `question` added as the last entry of its front matter's `questions:` list, or
    a new `questions:` list after the aliases when it has none. Raises `ItemEditError` when the list is written in a
    form this cannot extend safely (a flow list over several lines, a scalar)."""
    question = clean_question(question)
    if not question:
        raise ItemEditError("the question is empty")
    start, end, newline = _front_matter(text)
    front = text[start:end]
    before = _load(front)
    lines = front.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    key_index = next((index for index, line in enumerate(lines)
                      if (match := _KEY.match(line.rstrip("\r\n"))) and match.group(1) == "questions"), None)
    if key_index is not None:
        rest = _KEY.match(lines[key_index].rstrip("\r\n")).group(2)
        value = re.sub(r"(^|[ \t])#.*$", "", rest).strip()
        if value.startswith("["):
            if not value.endswith("]"):
                raise ItemEditError("`questions:` is a [...] list over several lines: add the question by hand")
            line = lines[key_index]
            close = line.rindex("]")
            inner = line[line.index("[") + 1:close].strip()
            entry = _scalar(question, flow=True)
            new_line = line[:close] + (", " if inner else "") + entry + line[close:]
            edited = front[:offsets[key_index]] + new_line + front[offsets[key_index + 1]:]
        elif value not in ("", "null", "~"):
            raise ItemEditError("`questions:` is not a list: add the question by hand")
        else:
            insert_at, indent = _block_end(lines, key_index)
            entry = f"{indent if indent is not None else '  '}- {_scalar(question)}{newline}"
            position = offsets[insert_at]
            if insert_at == key_index + 1 and not lines[key_index].endswith("\n"):
                entry = newline + entry
            edited = front[:position] + entry + front[position:]
    else:
        block = f"questions:{newline}  - {_scalar(question)}{newline}"
        alias_index = next((index for index, line in enumerate(lines)
                            if (match := _KEY.match(line.rstrip("\r\n"))) and match.group(1) == "aliases"), None)
        position = offsets[_block_end(lines, alias_index)[0]] if alias_index is not None else len(front)
        if position == len(front) and front and not front.endswith("\n"):
            block = newline + block
        edited = front[:position] + block + front[position:]
    after = _load(edited)
    expected = dict(before)
    expected["questions"] = [*(before.get("questions") or []), question]
    if after != expected:
        raise ItemEditError("adding the question would change more than the `questions:` list: add it by hand")
    return text[:start] + edited + text[end:]


# -- writing a new item --------------------------------------------------------------------------------


class _ItemDumper(yaml.SafeDumper):
    """Block style with list entries indented under their key (as the shipped items are written), multi-line text as
    `|` blocks, CJK as written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_ItemDumper.add_representer(str, _represent_text)
_DATE_FIELDS = ("last_reviewed", "effective_from", "effective_until")


def item_path(item: ServiceItem) -> str:
    """Where a new item's file goes, relative to the items directory: <category dir>/<id>.md."""
    return f"{CATEGORY_DIRS[item.category]}/{item.id}.md"


def _without_empty(value: object) -> object:
    """`value` without the keys of its mappings that hold None or an empty list or mapping."""
    if isinstance(value, dict):
        cleaned = {key: _without_empty(inner) for key, inner in value.items()}
        return {key: inner for key, inner in cleaned.items() if inner is not None and inner != [] and inner != {}}
    if isinstance(value, list):
        return [_without_empty(inner) for inner in value]
    return value


def _comparable(item: ServiceItem) -> dict:
    data = item.model_dump(exclude={"path"})
    data["sections"] = {name: text.strip() for name, text in item.sections.items() if text.strip()}
    return data


def render_item(item: ServiceItem) -> str:
    """The file of `item`: front matter in the model's (the documented) order without empty optional fields, then
    its sections in the authoring order. Raises `ItemEditError` if the text would not load as the same item."""
    data = _without_empty(item.model_dump(mode="json", exclude={"path", "sections"}))
    for name in _DATE_FIELDS:
        if data.get(name):
            data[name] = dt.date.fromisoformat(data[name])
    data["sms"] = data["sms"].rstrip("\n") + "\n"
    front = yaml.dump(data, Dumper=_ItemDumper, allow_unicode=True, sort_keys=False, default_flow_style=False,
                      width=10_000)
    body = "".join(f"## {heading}\n\n{item.sections[name].strip()}\n\n" for heading, name in SECTION_FIELDS.items()
                   if item.sections.get(name, "").strip())
    text = f"---\n{front}---\n\n{body}".rstrip("\n") + "\n"
    try:
        loaded = parse_item(text, item_path(item))
    except KbError as exc:
        raise ItemEditError(f"the draft does not load as an item: {exc}") from exc
    if _comparable(loaded) != _comparable(item):
        raise ItemEditError("the draft does not read back as the same item")
    return text


# -- local facts in a draft -----------------------------------------------------------------------------

LOCAL_FACT = re.compile(
    r"桂林|广西|本市"  # a local arrangement
    r"|(?<!\d)(?:0\d{2,3}[-－ ]?)?\d{7,8}(?!\d)"  # a phone number (12333 is national and short)
    r"|[路街巷道]\d+号|\d+号楼|\d+楼|\d+层"  # an address
    r"|\d+号?窗口|窗口\d+"  # a window
    r"|\d{1,2}[:：]\d{2}|[上下]午\d{1,2}点"  # office hours
    r"|\d+(?:\.\d+)?\s*(?:元|块钱)"  # an amount
)


def local_facts(text: str) -> list[str]:
    return [match.group() for match in LOCAL_FACT.finditer(text)]


def draft_local_facts(item: ServiceItem) -> list[tuple[str, str]]:
    """(field, problem) for every local fact a draft states as if it were confirmed."""
    problems: list[tuple[str, str]] = []
    for name, text in item.sections.items():
        for line in text.splitlines():
            found = local_facts(line)
            if found and UNVERIFIED_MARK not in line:
                shown = line.strip()[:40]
                message = (f"「{shown}」含本地信息（{'、'.join(dict.fromkeys(found))}），"
                           f"请在句末标注{UNVERIFIED_MARK}并在 verify 中登记，由中心核实")
                problems.append((f"sections.{name}", message))
    spoken_texts = [("spoken", item.spoken), ("sms", item.sms), ("clarify", item.clarify or "")]
    spoken_texts += [(f"facts.{index}.say", fact.say) for index, fact in enumerate(item.facts)]
    spoken_texts += [(f"audiences.{index}.spoken", audience.spoken or "")
                     for index, audience in enumerate(item.audiences)]
    for name, text in spoken_texts:
        found = local_facts(text)
        if found:
            message = (f"念读稿、短信和追问里不能写未经核实的本地信息（{'、'.join(dict.fromkeys(found))}）："
                       f"写进正文并标注{UNVERIFIED_MARK}，这里说“以当地公布为准”")
            problems.append((name, message))
    for index, basis in enumerate(item.policy_basis):
        if basis.scope is not PolicyScope.NATIONAL and not basis.verify:
            problems.append((f"policy_basis.{index}.verify", "本地政策文件在草稿中须写 verify: true，由中心核实文号和条款"))
    return problems
