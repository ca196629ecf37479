"""Content-hashed, immutable KB builds; a CURRENT pointer switched atomically; diffs between builds.

A build holds the items, the passages, the lexicon and the retrieval calibration (fusion weights and confidence model
that `hotline tune` fitted on this content). The calibration is an opaque file here: the answer stack reads it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from kb.errors import KbError
from kb.ingest import Passage
from kb.loader import KnowledgeBase
from kb.schema import ServiceItem

MANIFEST = "manifest.json"
ITEMS = "items.json"
PASSAGES = "passages.jsonl"
LEXICON = "lexicon.yaml"
CALIBRATION = "calibration.json"
CURRENT = "CURRENT"
HISTORY = "HISTORY"
# Fitted on the shipped KB; `hotline tune` writes a new one to <data_dir>/calibration.json (see `calibration_file`).
DEFAULT_CALIBRATION_FILE = Path(__file__).resolve().parent / CALIBRATION


def calibration_file(data_dir: Path) -> Path:
    """The calibration a new build takes: the one `hotline tune` wrote to `data_dir`, else the shipped one."""
    tuned = data_dir / CALIBRATION
    return tuned if tuned.exists() else DEFAULT_CALIBRATION_FILE


def item_hash(item: ServiceItem) -> str:
    payload = json.dumps(item.model_dump(mode="json", exclude={"path"}), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class BuildManifest:
    version: str
    created_at: str
    item_hashes: dict[str, str]
    passages: int
    lexicon_hash: str
    calibration_hash: str | None = None  # None: built before builds carried their calibration

    def to_json(self) -> dict:
        return {"version": self.version, "created_at": self.created_at, "item_hashes": self.item_hashes,
                "passages": self.passages, "lexicon_hash": self.lexicon_hash,
                "calibration_hash": self.calibration_hash}


@dataclass(frozen=True)
class LoadedBuild:
    manifest: BuildManifest
    kb: KnowledgeBase
    passages: tuple[Passage, ...]
    lexicon_path: Path
    calibration_path: Path | None  # None for a build made before builds carried their calibration


@dataclass
class KbDiff:
    old: str
    new: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)
    passages_delta: int = 0
    lexicon_changed: bool = False
    calibration_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.passages_delta or self.lexicon_changed
                    or self.calibration_changed)


class BuildStore:
    """`root/<version>/` holds one immutable build; `root/CURRENT` names the one being served."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def current(self) -> str | None:
        pointer = self.root / CURRENT
        if not pointer.exists():
            return None
        version = pointer.read_text(encoding="utf-8").strip()
        return version or None

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        history = self.root / HISTORY
        if not history.exists():
            return []
        seen: list[str] = []
        for line in history.read_text(encoding="utf-8").splitlines():
            version = line.split("\t", 1)[0].strip()
            if version and version not in seen and (self.root / version / MANIFEST).exists():
                seen.append(version)
        return seen

    def build(self, kb: KnowledgeBase, passages: list[Passage], lexicon_path: Path, calibration_path: Path,
              progress: bool = False) -> tuple[BuildManifest, bool]:
        """Write a build of `kb` with its lexicon and calibration file (skipped if that content is already built) and
        make it current.

        Returns the manifest and whether a new build directory was written.
        """
        if kb.errors:
            raise KbError(f"the knowledge base has {len(kb.errors)} invalid file(s); run `hotline kb check`")
        hashes: dict[str, str] = {}
        serialized: list[dict] = []
        for item in tqdm(sorted(kb.items, key=lambda i: i.id), desc="items", unit="item", disable=not progress):
            hashes[item.id] = item_hash(item)
            serialized.append(item.model_dump(mode="json"))
        lexicon_bytes = lexicon_path.read_bytes()
        lexicon_hash = hashlib.sha256(lexicon_bytes).hexdigest()[:16]
        calibration_bytes = calibration_path.read_bytes()
        calibration_hash = hashlib.sha256(calibration_bytes).hexdigest()[:16]
        digest = hashlib.sha256()
        for item_id in sorted(hashes):
            digest.update(f"{item_id}={hashes[item_id]}\n".encode())
        for passage in sorted(passages, key=lambda p: p.id):
            digest.update(f"p:{passage.id}:{','.join(passage.items)}\n".encode())
        digest.update(f"lexicon={lexicon_hash}".encode())
        digest.update(f"calibration={calibration_hash}".encode())  # a re-tune is a new version
        version = digest.hexdigest()[:12]
        manifest = BuildManifest(version, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), hashes,
                                 len(passages), lexicon_hash, calibration_hash)
        target = self.root / version
        written = False
        if not (target / MANIFEST).exists():
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".staging-{version}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            (staging / ITEMS).write_text(json.dumps(serialized, ensure_ascii=False), encoding="utf-8")
            (staging / PASSAGES).write_text(
                "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
            (staging / LEXICON).write_bytes(lexicon_bytes)
            (staging / CALIBRATION).write_bytes(calibration_bytes)
            # The manifest is written last: a directory without one is never treated as a build.
            (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            written = True
        else:
            manifest = self.manifest(version)
        self.publish(version)
        return manifest, written

    def publish(self, version: str) -> None:
        """Point CURRENT at `version` with one atomic rename."""
        if not (self.root / version / MANIFEST).exists():
            raise KbError(f"no build {version}")
        temporary = self.root / f".{CURRENT}.{os.getpid()}"
        temporary.write_text(version + "\n", encoding="utf-8")
        temporary.replace(self.root / CURRENT)
        with (self.root / HISTORY).open("a", encoding="utf-8") as history:
            history.write(f"{version}\t{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")

    def manifest(self, version: str) -> BuildManifest:
        path = self.root / version / MANIFEST
        if not path.exists():
            raise KbError(f"no build {version} in {self.root}")
        data = json.loads(path.read_text(encoding="utf-8"))
        return BuildManifest(data["version"], data["created_at"], data["item_hashes"], data["passages"],
                             data["lexicon_hash"], data.get("calibration_hash"))

    def load(self, version: str | None = None) -> LoadedBuild:
        version = version or self.current()
        if version is None:
            raise KbError(f"no published build in {self.root}; run `hotline kb build`")
        manifest = self.manifest(version)
        directory = self.root / version
        items = tuple(ServiceItem.model_validate(raw) for raw in json.loads((directory / ITEMS).read_text(encoding="utf-8")))
        passages = tuple(
            Passage.from_json(json.loads(line))
            for line in (directory / PASSAGES).read_text(encoding="utf-8").splitlines() if line
        )
        kb = KnowledgeBase(root=directory, items=items, content_hash=version)
        calibration = directory / CALIBRATION
        return LoadedBuild(manifest, kb, passages, directory / LEXICON, calibration if calibration.exists() else None)

    def diff(self, old: str, new: str) -> KbDiff:
        before, after = self.load(old), self.load(new)
        result = KbDiff(old, new)
        old_items = {item.id: item for item in before.kb.items}
        new_items = {item.id: item for item in after.kb.items}
        result.added = sorted(set(new_items) - set(old_items))
        result.removed = sorted(set(old_items) - set(new_items))
        for item_id in sorted(set(old_items) & set(new_items)):
            if before.manifest.item_hashes[item_id] == after.manifest.item_hashes[item_id]:
                continue
            a = old_items[item_id].model_dump(mode="json", exclude={"path"})
            b = new_items[item_id].model_dump(mode="json", exclude={"path"})
            fields = [key for key in b if a.get(key) != b.get(key) and key != "sections"]
            fields += [f"sections.{name}" for name in sorted(set(a["sections"]) | set(b["sections"]))
                       if a["sections"].get(name) != b["sections"].get(name)]
            result.changed[item_id] = fields
        result.passages_delta = len(after.passages) - len(before.passages)
        result.lexicon_changed = before.manifest.lexicon_hash != after.manifest.lexicon_hash
        result.calibration_changed = before.manifest.calibration_hash != after.manifest.calibration_hash
        return result
