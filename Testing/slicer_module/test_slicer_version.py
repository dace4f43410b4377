"""The minimum Slicer version: the module file imports on an old Slicer's Python (3.9 in Slicer 5.8) up to
its version check and then says, in one line, what is needed; the metadata and documents agree."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MAEAnomaly" / "MAEAnomaly.py"
OLD_PYTHONS = [Path("/root/.pyenv/versions/3.9.18/bin/python3.9"), shutil.which("python3.9")]

# A stand-in for the parts of Slicer's own Python package the module file imports before its check; the
# application provides them (its slicer.app carries the version).
FAKE_SLICER = {
    "slicer/__init__.py": "",
    "slicer/ScriptedLoadableModule.py": (
        "class ScriptedLoadableModule:\n"
        "    def __init__(self, parent):\n        self.parent = parent\n"
        "class ScriptedLoadableModuleWidget:\n    pass\n"),
}
PROBE = """
import importlib.util, json, sys, types
sys.path.insert(0, {fake!r}); sys.path.insert(1, {module!r})
import slicer
slicer.app = types.SimpleNamespace(majorVersion={app!r}[0], minorVersion={app!r}[1])
spec = importlib.util.spec_from_file_location("MAEAnomaly", {path!r})
module = importlib.util.module_from_spec(spec)
try:
    spec.loader.exec_module(module)
    error = ""
except Exception as exc:  # past the check on a supported Slicer: the panel needs the application
    error = repr(exc)
parent = types.SimpleNamespace()
module.MAEAnomaly(parent)
print(json.dumps({{"unsupported": module.UNSUPPORTED, "help": parent.helpText, "error": error,
                  "widget": getattr(module, "MAEAnomalyWidget", type).__module__,
                  "lib": sorted(m for m in sys.modules if m.startswith(("SlicerMAEAnomalyLib", "MAEAnomalyLib")))}}))
"""


def module_constant(name: str) -> tuple[int, int]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name)
    return ast.literal_eval(node.value)


def probe(python: str, tmp_path: Path, app: tuple[int, int]) -> dict:
    for name, text in FAKE_SLICER.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    code = PROBE.format(fake=str(tmp_path), module=str(MODULE_FILE.parent), app=app, path=str(MODULE_FILE))
    out = subprocess.run([python, "-c", code], capture_output=True, encoding="utf-8", cwd=tmp_path, check=True)
    return json.loads(out.stdout)


def test_module_file_parses_as_python_39() -> None:
    ast.parse(MODULE_FILE.read_text(encoding="utf-8"), feature_version=(3, 9))


def test_slicer_58_gets_one_clear_message(tmp_path: Path) -> None:
    python = next((str(p) for p in OLD_PYTHONS if p and Path(p).is_file()), None)
    if python is None:
        pytest.skip("no Python 3.9 here (Slicer 5.8's Python)")
    result = probe(python, tmp_path, app=(5, 8))
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, encoding="utf-8", check=True).stdout.strip()
    assert result["unsupported"] == (f"MAEAnomaly needs 3D Slicer 5.10 or later; this is Slicer 5.8 with Python "
                                     f"{version}. Install the current Slicer from https://download.slicer.org")
    assert "\n" not in result["unsupported"] and result["unsupported"] in result["help"]
    assert result["widget"] == "MAEAnomaly" and result["lib"] == [], "nothing beyond the check was imported"


@pytest.mark.parametrize("minor", [10, 12])
def test_supported_slicers_pass_the_check(tmp_path: Path, minor: int) -> None:
    result = probe(sys.executable, tmp_path, app=(5, minor))
    assert result["unsupported"] == "" and "needs 3D Slicer" not in result["help"]
    assert result["lib"], "past the check the module imports its logic"


def test_minimum_version_is_stated_everywhere() -> None:
    major, minor = module_constant("MINIMUM_SLICER")
    assert (major, minor) == (5, 10)
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(rf'set\(MAEANOMALY_MINIMUM_SLICER_VERSION "{major}\.{minor}"\)', cmake)
    assert "if(Slicer_VERSION VERSION_LESS MAEANOMALY_MINIMUM_SLICER_VERSION)" in cmake
    assert f"Needs Slicer {major}.{minor} or later." in cmake  # in the description the Extension Manager shows
    for doc in ("README.md", "docs/slicer.md"):
        assert f"Slicer {major}.{minor} or later" in (ROOT / doc).read_text(encoding="utf-8"), doc
