"""The house rules, read from the source with `ast`: which package may import which, and no import circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kb", "rag", "voice", "telephony")
# Which of our packages each package may import (docs/architecture.md).
ALLOWED = {"kb": set(), "voice": set(), "rag": {"kb"}, "telephony": {"kb", "rag", "voice"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Our modules that `name` imports, at any depth in the file (function-local imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield _known(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in MODULES else _known(source)


def _known(module: str) -> str:
    while module not in MODULES and "." in module:
        module = module.rpartition(".")[0]
    return module


GRAPH = {name: sorted(set(_imports(name, path)) - {name}) for name, path in MODULES.items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_layers_allow(package: str) -> None:
    wrong = [f"{module} imports {target}" for module, targets in GRAPH.items() if module.split(".")[0] == package
             for target in targets if target.split(".")[0] not in ALLOWED[package] | {package}]
    assert wrong == []


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_circle() -> None:
    assert _cycles(GRAPH) == []


# Tooling: benchmarks, simulated callers, evaluation, tuning, test doubles. The CLI may run it; the product never
# imports it.
TOOLING = ("telephony.bench", "rag.evaluation", "voice.testing")
# The faces of the house: only they (and tooling, which starts servers) may import them.
FACES = ("telephony.web", "telephony.cli")
# Concrete engines are named in the composition root only (and inside their own package, and by tooling).
CONCRETE_ENGINES = {
    "FunAsrEngine", "FunAsrServerEngine", "FunAsrEnginePool", "EdgeTtsEngine", "EspeakTtsEngine", "ResilientTts",
    "TtsCache", "SileroModel", "SileroVad", "HybridRetriever", "AnswerEngine", "LlmComposer", "CuratedComposer",
    "VectorIndex", "chroma_client", "MultilingualUseEmbedding", "NgramHashEmbedding", "OpenAICompatibleEmbedding",
    "LocalModelEmbedding", "CallbackTickets", "OutboxOnlyGateway", "SmppGateway", "KannelGateway", "AliyunSmsGateway",
    "TencentSmsGateway", "SipLine", "AudioSocketLine",
}
COMPOSITION_ROOT = "telephony.app"


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_the_product_never_imports_tooling() -> None:
    wrong = [f"{module} imports {target}" for module, targets in GRAPH.items()
             if not _within(module, TOOLING) and module != "telephony.cli"
             for target in targets if _within(target, TOOLING)]
    assert wrong == []


def test_only_the_faces_and_tooling_import_the_faces() -> None:
    wrong = [f"{module} imports {target}" for module, targets in GRAPH.items()
             if not _within(module, FACES + TOOLING)
             for target in targets if _within(target, FACES)]
    assert wrong == []


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_concrete_engines_are_named_in_the_composition_root_only() -> None:
    wrong = [f"{module} names {name}" for module, path in MODULES.items()
             if module.startswith("telephony.") and module != COMPOSITION_ROOT and not _within(module, TOOLING)
             for name in sorted(_imported_names(path) & CONCRETE_ENGINES)]
    assert wrong == []


def test_the_cycle_finder_finds_a_circle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _cycles(graph) == [["a", "b", "c"]]
