"""`hotline kb check` and `hotline kb build` as functions: the same check over the items directory, and the same
check-build-publish sequence, for the command line and for KB changes an editor applies from the review pages
(`telephony.review.kb_changes`). A published build is picked up by running servers (the build watch or
POST /api/admin/kb/reload)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kb.builds import BuildManifest, BuildStore, calibration_file
from kb.check import CheckReport, check_knowledge_base
from kb.errors import KbError
from kb.ingest import PassageStore
from kb.lexicon import DEFAULT_LEXICON_FILE
from kb.loader import KnowledgeBase, load_knowledge_base
from kb.sms_templates import DEFAULT_TEMPLATES_FILE
from rag.calibration import load_calibration
from rag.errors import CalibrationError
from telephony.settings import Settings


class BuildRefused(KbError):
    """The KB was not built: `errors` are the check's (empty when the calibration would not load)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


@dataclass(frozen=True)
class Published:
    manifest: BuildManifest
    written: bool  # False: this content was already built, and that build is published again
    previous: str | None  # the version published before
    calibration: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.manifest.version


def check_items(settings: Settings, kb: KnowledgeBase | None = None) -> CheckReport:
    """Every rule of `hotline kb check` over `kb` (default: the items in settings.kb_dir), with this deployment's
    SMS signature, template map, centre phone, guide URL and keypad menu."""
    kb = kb if kb is not None else load_knowledge_base(settings.kb_dir)
    return check_knowledge_base(kb, signature=settings.sms_signature,
                                templates=settings.sms_templates_file or DEFAULT_TEMPLATES_FILE,
                                centre_phone=settings.centre_phone, guide_base_url=settings.sms_guide_base_url,
                                keypad_menu=settings.keypad_menu_file)


def build_store(settings: Settings) -> BuildStore:
    return BuildStore(settings.data_dir / "kb-builds")


def passage_store(settings: Settings) -> PassageStore:
    return PassageStore(settings.data_dir / "passages.jsonl")


def build_and_publish(settings: Settings, kb: KnowledgeBase | None = None, progress: bool = False) -> Published:
    """What `hotline kb build` does: check `kb` (default: the items in settings.kb_dir), take the calibration
    `hotline tune` left in the data dir (else the shipped one), write the content-hashed build with the ingested
    passages and publish it. Raises `BuildRefused` with the check's errors, or when the calibration does not load (a
    build whose calibration does not load would never be served)."""
    kb = kb if kb is not None else load_knowledge_base(settings.kb_dir)
    report = check_knowledge_base(kb, signature=settings.sms_signature)
    if not report.ok:
        raise BuildRefused(f"not built: {len(report.errors)} error(s); fix them (hotline kb check) and build again",
                           report.errors)
    calibration = calibration_file(settings.data_dir)
    try:
        load_calibration(calibration)
    except CalibrationError as exc:
        raise BuildRefused(f"not built: {exc}") from None
    store = build_store(settings)
    previous = store.current()
    manifest, written = store.build(kb, passage_store(settings).load(), DEFAULT_LEXICON_FILE, calibration,
                                    progress=progress)
    return Published(manifest, written, previous, calibration, report.warnings)
