"""The packages import downward only: a picture of the imports has no arrow running back up.

    skewless_cli/                        the command line and the demo
    training/  serving/  monitoring/     the stages: each imports the core, never a sibling
    feature_repo/                        declarations: the core's types only
    skewless/                            the core: settings, declaration types, stores,
                                         model runtime

Every import statement counts, those inside functions and under TYPE_CHECKING included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEVEL = {"skewless": 0, "feature_repo": 1, "training": 2, "serving": 2, "monitoring": 2}
LEVEL["skewless_cli"] = 3
ENTRY_POINTS = {Path("skewless/__main__.py")}
"""Run by `python -m`, never imported: they may name the command line above them."""
SERVING_NEVER = {"torch", "onnx", "training", "monitoring"}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative ones are skipped."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _import_arrows() -> Iterator[tuple[str, int, str, str]]:
    """(file, line, its package, imported package) for imports between our packages."""
    for package in LEVEL:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in ENTRY_POINTS:
                continue
            for line, module in _imports(path):
                yield str(relative), line, package, module


def test_no_import_runs_up_or_sideways() -> None:
    wrong = [
        f"{file}:{line} imports {module}"
        for file, line, package, module in _import_arrows()
        if (target := module.split(".")[0]) in LEVEL
        and target != package
        and LEVEL[target] >= LEVEL[package]
    ]
    assert wrong == []


def test_serving_names_neither_torch_nor_training_nor_monitoring() -> None:
    wrong = [
        f"{file}:{line} imports {module}"
        for file, line, package, module in _import_arrows()
        if package == "serving" and module.split(".")[0] in SERVING_NEVER
    ]
    assert wrong == []


def test_the_check_sees_the_imports() -> None:
    arrows = {(package, module.split(".")[0]) for _, _, package, module in _import_arrows()}
    assert {("serving", "skewless"), ("skewless_cli", "training"), ("skewless", "numpy")} <= arrows
