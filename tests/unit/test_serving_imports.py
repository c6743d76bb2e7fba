"""Serving's modules import neither torch nor the training package (nor monitoring).

Each import runs in a fresh interpreter, since this test process may already hold torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "training", "monitoring")
"""Top-level packages a serving process must not load (`onnx` is the exporter, not the
runtime: `onnxruntime` is what scores)."""

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_import(module: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    modules: list[str] = json.loads(result.stdout)
    return modules


@pytest.mark.parametrize("module", ["serving.worker", "serving.http"])
def test_serving_imports_neither_torch_nor_training(module: str) -> None:
    modules = _modules_after_import(module)
    assert module in modules  # the probe imported what it should
    assert "onnxruntime" in modules  # and the scorer came with it
    loaded = {name for name in modules if name.split(".")[0] in FORBIDDEN}
    assert loaded == set(), f"{module} pulls in {sorted(loaded)[:20]}"
