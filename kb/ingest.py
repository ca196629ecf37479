"""Turn the bureau's own documents (docx, pdf, xlsx FAQ sheets, md, txt) into linked, deduplicated passages."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kb.errors import KbError
from kb.loader import KnowledgeBase

MAX_PASSAGE_CHARS = 600
MIN_PASSAGE_CHARS = 8
SUPPORTED_SUFFIXES = (".docx", ".pdf", ".xlsx", ".md", ".markdown", ".txt")
_QUESTION_HEADERS = ("问题", "问", "question", "q", "常见问题", "咨询内容")
_ANSWER_HEADERS = ("答复", "回答", "答案", "答", "answer", "a", "解答", "回复")


class IngestError(KbError):
    """One document could not be read; the others are still ingested."""


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    source: str
    source_type: str
    location: str
    heading: str = ""
    items: tuple[str, ...] = ()
    ingested_at: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Passage:
        return cls(**{**data, "items": tuple(data.get("items", ()))})


@dataclass
class IngestReport:
    files: int = 0
    passages_added: int = 0
    duplicates_skipped: int = 0
    linked: int = 0
    errors: list[str] = field(default_factory=list)


def fingerprint(text: str) -> str:
    """Identity of a passage for de-duplication: whitespace, punctuation and width folded."""
    folded = unicodedata.normalize("NFKC", text).lower()
    folded = re.sub(r"[\W_]+", "", folded)
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()[:16]


def chunk(text: str, limit: int = MAX_PASSAGE_CHARS) -> Iterator[str]:
    """Split text at paragraph, then sentence boundaries into pieces of at most `limit` characters."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n|\r\n\s*\r\n", text) if p.strip()]
    buffer = ""
    for paragraph in paragraphs:
        pieces = [paragraph] if len(paragraph) <= limit else re.findall(r"[^。！？；!?;]+[。！？；!?;]?", paragraph)
        for piece in pieces:
            while len(piece) > limit:
                yield piece[:limit]
                piece = piece[limit:]
            if buffer and len(buffer) + len(piece) + 1 > limit:
                yield buffer
                buffer = ""
            buffer = f"{buffer}\n{piece}" if buffer else piece
    if buffer:
        yield buffer


# -- readers: each yields (location, heading, text) -------------------------------------------

def read_docx(path: Path) -> Iterator[tuple[str, str, str]]:
    import docx

    document = docx.Document(str(path))
    heading, lines, section = "", [], 0
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        style = (paragraph.style.name or "").lower() if paragraph.style is not None else ""
        if style.startswith("heading") or style.startswith("title") or style.startswith("标题"):
            if lines:
                yield f"section {section}", heading, "\n\n".join(lines)
            heading, lines, section = text, [], section + 1
        elif text:
            lines.append(text)
    if lines:
        yield f"section {section}", heading, "\n\n".join(lines)
    for index, table in enumerate(document.tables, start=1):
        rows = ["｜".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        yield f"table {index}", heading, "\n".join(row for row in rows if row.strip("｜"))


def read_pdf(path: Path) -> Iterator[tuple[str, str, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        for number, page in enumerate(reader.pages, start=1):
            yield f"page {number}", "", page.extract_text() or ""
    except PdfReadError as exc:
        raise IngestError(f"{path.name}: not a readable PDF ({exc})") from exc


def read_xlsx(path: Path) -> Iterator[tuple[str, str, str]]:
    from openpyxl import load_workbook

    workbook = load_workbook(str(path), read_only=True, data_only=True)
    try:
        for sheet in workbook.worksheets:
            rows = [[("" if cell is None else str(cell).strip()) for cell in row] for row in sheet.iter_rows(values_only=True)]
            rows = [row for row in rows if any(row)]
            if not rows:
                continue
            header = [cell.lower() for cell in rows[0]]
            question_col = next((i for i, h in enumerate(header) if h in _QUESTION_HEADERS), None)
            answer_col = next((i for i, h in enumerate(header) if h in _ANSWER_HEADERS), None)
            if question_col is not None and answer_col is not None:
                for number, row in enumerate(rows[1:], start=2):
                    question = row[question_col] if question_col < len(row) else ""
                    answer = row[answer_col] if answer_col < len(row) else ""
                    if question and answer:
                        yield f"{sheet.title}!row {number}", question, f"问：{question}\n答：{answer}"
            else:
                for number, row in enumerate(rows, start=1):
                    yield f"{sheet.title}!row {number}", "", "｜".join(cell for cell in row if cell)
    finally:
        workbook.close()


def read_markdown(path: Path) -> Iterator[tuple[str, str, str]]:
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"^(#{1,6}[ \t]+.+)$", text, flags=re.MULTILINE)
    heading, section = "", 0
    if parts[0].strip():
        yield "section 0", "", parts[0]
    for index in range(1, len(parts), 2):
        heading = parts[index].lstrip("#").strip()
        section += 1
        yield f"section {section}", heading, parts[index + 1]


def read_text(path: Path) -> Iterator[tuple[str, str, str]]:
    yield "text", "", path.read_text(encoding="utf-8")


READERS = {".docx": read_docx, ".pdf": read_pdf, ".xlsx": read_xlsx, ".md": read_markdown,
           ".markdown": read_markdown, ".txt": read_text}


# -- linking and the passage store -------------------------------------------------------------

def link_items(text: str, kb: KnowledgeBase, limit: int = 3) -> tuple[str, ...]:
    """Items a passage is about: their titles, aliases or cited documents appear in it."""
    scores: dict[str, int] = {}
    for item in kb.items:
        score = 0
        if item.title in text:
            score += 3
        score += sum(2 for alias in item.aliases if len(alias) >= 4 and alias in text)
        score += sum(1 for basis in item.policy_basis if basis.document in text)
        if score:
            scores[item.id] = score
    ranked = sorted(scores, key=lambda item_id: (-scores[item_id], item_id))
    return tuple(ranked[:limit])


class PassageStore:
    """Ingested passages as JSON lines; ids are content fingerprints, so re-ingesting adds nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Passage]:
        if not self.path.exists():
            return []
        return [Passage.from_json(json.loads(line)) for line in self.path.read_text(encoding="utf-8").splitlines() if line]

    def save(self, passages: Iterable[Passage]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text("".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
        temporary.replace(self.path)


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            yield path


def ingest(paths: Iterable[Path], kb: KnowledgeBase, store: PassageStore) -> IngestReport:
    report = IngestReport()
    passages = store.load()
    known = {passage.id for passage in passages}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for path in expand_paths(paths):
        report.files += 1
        suffix = path.suffix.lower()
        reader = READERS.get(suffix)
        if reader is None:
            report.errors.append(f"{path}: unsupported file type '{suffix or 'none'}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
            continue
        if not path.is_file():
            report.errors.append(f"{path}: no such file")
            continue
        try:
            new = list(_passages_of(path, reader, kb, now))
        except IngestError as exc:
            report.errors.append(str(exc))
            continue
        except UnicodeDecodeError:
            report.errors.append(f"{path}: text is not UTF-8; save the file as UTF-8 and ingest it again")
            continue
        except Exception as exc:  # noqa: BLE001 - third-party parsers raise anything on a corrupt file
            report.errors.append(f"{path}: cannot read {suffix[1:]} file ({exc.__class__.__name__}: {exc})")
            continue
        for passage in new:
            if passage.id in known:
                report.duplicates_skipped += 1
                continue
            known.add(passage.id)
            passages.append(passage)
            report.passages_added += 1
            report.linked += 1 if passage.items else 0
    store.save(passages)
    return report


def _passages_of(path: Path, reader, kb: KnowledgeBase, now: str) -> Iterator[Passage]:
    for location, heading, text in reader(path):
        for piece in chunk(text):
            if len(piece) < MIN_PASSAGE_CHARS:
                continue
            body = f"{heading}\n{piece}" if heading and not piece.startswith("问：") else piece
            yield Passage(
                id=fingerprint(piece), text=piece, source=str(path), source_type=path.suffix.lower().lstrip("."),
                location=location, heading=heading, items=link_items(body, kb), ingested_at=now,
            )
