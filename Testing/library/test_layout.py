"""The layout's promises: the library is pure Python (no Slicer, VTK or Qt), its files stay small enough
to hold in one's head, and the training loop stays one short function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "MAEAnomalyLib"
SLICER_ONLY = ("slicer", "vtk", "qt", "ctk")
MAX_FILE_LINES = 300
MAX_LOOP_LINES = 150


def library_modules() -> list[str]:
    names = []
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_library_module_imports_with_slicer_vtk_and_qt_blocked() -> None:
    # A finder that refuses these names, as on a machine without Slicer (the slicer-core wheel is installed here).
    code = f"""
import importlib, importlib.abc, sys
BLOCKED = {SLICER_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
for name in {library_modules()!r}:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_library_file_names_a_slicer_only_package() -> None:
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [])
            assert not {n.split(".")[0] for n in names} & set(SLICER_ONLY), f"{path} imports {names}"


def test_library_files_stay_short() -> None:
    long = {str(p.relative_to(ROOT)): n for p in LIBRARY.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert not long, f"over {MAX_FILE_LINES} lines: {long}"


def test_the_stage_loop_is_one_short_function() -> None:
    tree = ast.parse((LIBRARY / "engine" / "loop.py").read_text(encoding="utf-8"))
    loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_stage")
    assert loop.end_lineno - loop.lineno + 1 <= MAX_LOOP_LINES
