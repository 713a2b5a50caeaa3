"""The core owns its vocabulary: it imports no driver and reads no file.

Checked by reading the modules' imports and calls (not by convention), and by importing
the core in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ("core", "interlocks", "sequence", "selection", "charging", "pack_safety", "packml",
        "plan", "image", "events", "pack_commands", "home", "network", "pack_trust")
FORBIDDEN_PACKAGES = ("drivers", "sim_hw", "pymodbus", "can", "cantools", "asyncua",
                      "aiomqtt", "asyncio", "socket", "sqlite3")
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "load",
              "loads"}


def _imports(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


@pytest.mark.parametrize("name", CORE)
def test_core_module_imports_no_driver(name: str) -> None:
    tree = ast.parse((ROOT / "station" / f"{name}.py").read_text())
    bad = [m for m in _imports(tree) if m.split(".")[0] in FORBIDDEN_PACKAGES
           or m in ("tomllib", "importlib.resources")]
    assert not bad, f"station/{name}.py imports {bad}"


@pytest.mark.parametrize("name", CORE)
def test_core_module_reads_no_file(name: str) -> None:
    tree = ast.parse((ROOT / "station" / f"{name}.py").read_text())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else \
                f.attr if isinstance(f, ast.Attribute) else None
            if called in FILE_CALLS:
                calls.append(f"{called}() at line {node.lineno}")
    assert not calls, f"station/{name}.py calls {calls}"


def test_importing_the_core_loads_no_driver() -> None:
    code = ("import sys, json; " + "; ".join(f"import station.{m}" for m in CORE)
            + "; print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    loaded = json.loads(out)
    bad = [m for m in loaded if m.split(".")[0] in ("drivers", "sim_hw", "pymodbus", "can",
                                                    "cantools")]
    assert not bad, f"importing the core loaded {bad}"
