"""The extension's CMake files list exactly the files in the repository, with complete metadata."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from MAEAnomalyLib import shipped

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "MAEAnomaly"
METADATA = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """The ``set(NAME values...)`` commands of a CMake file, with ``${MODULE_NAME}`` expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    sets: dict[str, list[str]] = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)((?:[^()\"]|\"[^\"]*\")*)\)", text):
        sets[name] = [v.strip('"') for v in re.findall(r"\"[^\"]*\"|\S+", body)]
    module = sets.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module) for v in vs] for k, vs in sets.items()}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_extension_metadata_is_complete() -> None:
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    for name in METADATA:
        assert sets.get(name) and all(sets[name]), f"{name} is missing from CMakeLists.txt"
    assert sets["EXTENSION_DEPENDS"] == ["PyTorch"]
    homepage = sets["EXTENSION_HOMEPAGE"][0]
    assert homepage.startswith("https://")
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(MAEAnomaly)" in text
    # The icon and screenshot the Extension Manager shows are files of this repository.
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in sets["EXTENSION_ICONURL"] + sets["EXTENSION_SCREENSHOTURLS"]:
        assert url.startswith(raw), url
        assert (ROOT / url[len(raw):]).is_file(), f"{url} names a file that is not in the repository"
    # The module's help links to the user guide under the same homepage.
    assert f'USER_GUIDE = "{homepage}/blob/main/docs/slicer.md"' in (MODULE / "MAEAnomaly.py").read_text("utf-8")
    assert (ROOT / "docs" / "slicer.md").is_file()


def test_module_lists_every_script_and_resource() -> None:
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text
    listed = set(sets["MODULE_PYTHON_SCRIPTS"]) | set(sets["MODULE_PYTHON_RESOURCES"])
    present = files_under(MODULE) - {"CMakeLists.txt"}
    assert listed == present, (f"not listed in MAEAnomaly/CMakeLists.txt: {sorted(present - listed)}; "
                               f"listed but missing: {sorted(listed - present)}")
    assert all(name.startswith("Resources/") for name in sets["MODULE_PYTHON_RESOURCES"])


def test_library_is_installed_beside_the_module() -> None:
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    listed = set(sets["MAEANOMALYLIB_PYTHON_SCRIPTS"])
    present = {f"MAEAnomalyLib/{name}" for name in files_under(ROOT / "MAEAnomalyLib")}
    non_python = sorted(p for p in present if not p.endswith(".py"))
    assert not non_python, f"the library must hold Python files only (CMake installs no resources): {non_python}"
    assert listed == present, (f"not listed in MAEAnomaly/CMakeLists.txt: {sorted(present - listed)}; "
                               f"listed but missing: {sorted(listed - present)}")
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", (MODULE / "CMakeLists.txt").read_text("utf-8"), re.S)
    assert call, "MAEAnomalyLib is not installed"
    body = call.group(1)
    assert "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/.." in body
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in body
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in body and "NO_INSTALL_SUBDIR" in body


def test_license_icon_and_screenshot() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "MAEAnomaly contributors" in license_text
    assert png_size(ROOT / "Resources" / "MAEAnomaly.png") == (128, 128)  # the Extension Manager's size
    assert png_size(MODULE / "Resources" / "Icons" / "MAEAnomaly.png") == (128, 128)
    width, height = png_size(ROOT / "Resources" / "Screenshot.png")
    assert width >= 512 and height >= 256


def test_shipped_models_are_installed_beside_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models/ goes where MAEAnomalyLib.shipped looks for it: beside the installed MAEAnomalyLib package."""
    text = (MODULE / "CMakeLists.txt").read_text("utf-8")
    assert "set(MAEANOMALY_MODELS_DIR ${CMAKE_CURRENT_SOURCE_DIR}/../models)" in text
    install = re.search(r"install\(DIRECTORY \$\{MAEANOMALY_MODELS_DIR\}(.*?)\)", text, re.S)
    assert install and "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in install.group(1)
    assert "file(COPY ${MAEANOMALY_MODELS_DIR} DESTINATION ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR})" \
        in text
    # The same folder as the library's: INSTALL_DIR of ctkMacroCompilePythonScript, NO_INSTALL_SUBDIR.
    library = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, re.S).group(1)
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in library
    # An installed layout: <lib>/MAEAnomalyLib/shipped.py and <lib>/models/<name>/.
    lib = tmp_path / "qt-scripted-modules"
    shutil.copytree(ROOT / "MAEAnomalyLib", lib / "MAEAnomalyLib")
    model = lib / "models" / "brain-t1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "MODEL_CARD.md").write_text("# brain-t1\n\nT1-weighted adult brains.\n")
    monkeypatch.delenv("MAEANOMALY_MODELS", raising=False)
    code = "import sys; sys.path.insert(0, sys.argv[1]); from MAEAnomalyLib.shipped import shipped_models; " \
           "print([(m.name, str(m.path), m.summary) for m in shipped_models()])"
    out = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == str([("brain-t1", str(model), "T1-weighted adult brains.")])
    assert shipped.DEFAULT_MODEL == "brain-t1"
